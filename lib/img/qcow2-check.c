/*
 * lib/img/qcow2-check.c — consistency check and repair of qcow2 metadata, reported the way
 * `qemu-img check` does (same line formats and counters).
 *
 * The idea: recompute every cluster's reference count from scratch by walking everything that
 * can point at a cluster (header, active and snapshot L1/L2 tables, snapshot table, refcount
 * table and blocks), compare with the stored refcounts, and repair by writing the computed value;
 * while repairing, the allocator is told which clusters are referenced so a new refcount block
 * can never land on live data. Then the active tables' COPIED flags are checked against the
 * (repaired) refcounts.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img/qcow2.h"

#define CHECK_MAX_CLUSTERS   (1ull << 28) /* 1 GiB of counters at most */
#define CHECK_MAX_L1_ENTRIES (1ull << 26) /* L1 entries over all tables, bounds the work */

/* One L2 table the walk found: how many L1 entries point at it in total (walked once, counted
 * that many times), the last L1 table that did (to spot duplicates inside one table), and
 * whether the active table does. */
struct l2_use {
    uint64_t offset; /* 0 = empty slot */
    uint32_t count;
    uint32_t last_l1;
    bool active;
};

struct check_ctx {
    struct qcow2_state *s;
    struct img_check *res;
    uint32_t *refs;
    uint64_t nrefs;
    uint64_t max_refs; /* references beyond this are errors, not counters */
    int fix;           /* IMG_CHECK_FIX_* of this pass */
    bool quiet;
    struct l2_use *uses;
    size_t uses_cap, uses_count;
    uint64_t l1_entries_seen;
};

static void VS_PRINTF(2, 3) report(struct check_ctx *c, const char *fmt, ...)
{
    if (c->quiet || !c->res->report)
        return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->res->report(c->res->report_ctx, line);
}

static int refs_grow(struct check_ctx *c, uint64_t need)
{
    if (need <= c->nrefs)
        return 0;
    if (need > c->max_refs)
        return -EFBIG;
    uint64_t n = VS_MAX(need, c->nrefs + c->nrefs / 2);
    n = VS_MIN(n, c->max_refs);
    uint32_t *r = realloc(c->refs, n * sizeof(uint32_t));
    if (!r)
        return -ENOMEM;
    memset(r + c->nrefs, 0, (n - c->nrefs) * sizeof(uint32_t));
    c->refs = r;
    c->nrefs = n;
    return 0;
}

static void inc_refs_by(struct check_ctx *c, uint64_t offset, uint64_t len, uint32_t times)
{
    if (!len)
        return;
    struct qcow2_state *s = c->s;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    if (refs_grow(c, last + 1)) {
        report(c, "ERROR: cluster %llu (offset %#llx) is beyond the end of the image file",
               (unsigned long long)last, (unsigned long long)offset);
        c->res->corruptions++;
        return;
    }
    for (uint64_t k = first; k <= last; k++)
        c->refs[k] = c->refs[k] > UINT32_MAX - times ? UINT32_MAX : c->refs[k] + times;
}

static void inc_refs(struct check_ctx *c, uint64_t offset, uint64_t len)
{
    inc_refs_by(c, offset, len, 1);
}

static struct l2_use *use_find(struct check_ctx *c, uint64_t offset)
{
    if (c->uses_count * 2 >= c->uses_cap) {
        size_t cap = c->uses_cap ? c->uses_cap * 2 : 1024;
        struct l2_use *n = vs_calloc(cap, sizeof(*n));
        if (!n)
            return NULL;
        for (size_t i = 0; i < c->uses_cap; i++) {
            if (!c->uses[i].offset)
                continue;
            size_t j = (size_t)((c->uses[i].offset >> 9) * 0x9e3779b97f4a7c15ull) & (cap - 1);
            while (n[j].offset)
                j = (j + 1) & (cap - 1);
            n[j] = c->uses[i];
        }
        free(c->uses);
        c->uses = n;
        c->uses_cap = cap;
    }
    size_t j = (size_t)((offset >> 9) * 0x9e3779b97f4a7c15ull) & (c->uses_cap - 1);
    while (c->uses[j].offset && c->uses[j].offset != offset)
        j = (j + 1) & (c->uses_cap - 1);
    if (!c->uses[j].offset) {
        c->uses[j].offset = offset;
        c->uses_count++;
    }
    return &c->uses[j];
}

/* Add the references of one L2 table's entries, TIMES over; statistics for the active table. */
static void walk_l2(struct check_ctx *c, uint64_t l2_offset, uint32_t times, bool stats,
                    uint8_t *table, uint64_t *next_contiguous)
{
    struct qcow2_state *s = c->s;
    struct img_check *res = c->res;
    *next_contiguous = 0; /* like qemu: contiguity is judged inside one L2 table */
    if (qcow2_file_pread(s, table, l2_offset, s->cluster_size)) {
        report(c, "ERROR: I/O error reading L2 table at %#llx", (unsigned long long)l2_offset);
        res->check_errors++;
        return;
    }
    for (uint32_t j = 0; j < s->l2_entries; j++) {
        uint64_t bm;
        uint64_t e = qcow2_l2_get(s, table, j, &bm);
        switch (qcow2_entry_type(s, e)) {
        case QCOW2_COMPRESSED: {
            if (s->extended_l2 && bm && times) {
                report(c, "ERROR compressed cluster %u has a non-zero subcluster bitmap", j);
                res->corruptions++;
            }
            uint64_t coff, csize;
            qcow2_compressed_range(s, e, &coff, &csize);
            if (times)
                inc_refs_by(c, coff, csize, times);
            if (stats) {
                res->allocated_clusters++;
                res->compressed_clusters++;
                res->fragmented_clusters++; /* re-read sectors: fragmented by nature */
            }
            break;
        }
        case QCOW2_NORMAL:
        case QCOW2_ZERO_ALLOC: {
            uint64_t host = e & QCOW2_OFFSET_MASK;
            if (host & (s->cluster_size - 1)) {
                if (times) {
                    report(c,
                           "ERROR offset=%llx: Cluster is not properly aligned; L2 entry "
                           "corrupted.",
                           (unsigned long long)host);
                    res->corruptions++;
                }
                break;
            }
            if (times)
                inc_refs_by(c, host, s->cluster_size, times);
            if (stats) {
                res->allocated_clusters++;
                if (*next_contiguous && host != *next_contiguous)
                    res->fragmented_clusters++;
                *next_contiguous = host + s->cluster_size;
            }
            break;
        }
        default:
            if (s->extended_l2 && (bm & 0xffffffffull) && times) {
                report(c, "ERROR L2 entry %u has allocated subclusters but no host cluster", j);
                res->corruptions++;
            }
            break;
        }
    }
}

/* Count one L1 table and the L2 tables it points at (their entries are walked later, once). */
static int scan_l1(struct check_ctx *c, uint32_t l1_index, uint64_t l1_offset, uint32_t l1_size,
                   const uint64_t *l1, bool active)
{
    struct qcow2_state *s = c->s;
    c->l1_entries_seen += l1_size;
    if (c->l1_entries_seen > CHECK_MAX_L1_ENTRIES) {
        report(c, "ERROR: L1 tables hold more than %llu entries in total; not checked further",
               (unsigned long long)CHECK_MAX_L1_ENTRIES);
        c->res->check_errors++;
        return 0;
    }
    if (l1_size)
        inc_refs(c, l1_offset, (uint64_t)l1_size * 8);
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        if (l2 & (s->cluster_size - 1)) {
            report(c, "ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry corrupted",
                   (unsigned long long)l2);
            c->res->corruptions++;
            continue;
        }
        inc_refs(c, l2, s->cluster_size);
        struct l2_use *u = use_find(c, l2);
        if (!u)
            return -ENOMEM;
        if (u->count && u->last_l1 == l1_index + 1) {
            report(c, "ERROR l2_offset=%llx: L2 table used twice by one L1 table",
                   (unsigned long long)l2);
            c->res->corruptions++;
            continue;
        }
        u->last_l1 = l1_index + 1;
        u->count++;
        u->active |= active;
    }
    return 0;
}

static int load_l1_raw(struct qcow2_state *s, uint64_t off, uint32_t n, uint64_t **out)
{
    *out = NULL;
    if (!n)
        return 0;
    uint64_t *l1 = vs_malloc((size_t)n * 8);
    if (!l1)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, l1, off, (size_t)n * 8);
    if (rc) {
        free(l1);
        return rc;
    }
    for (uint32_t i = 0; i < n; i++)
        l1[i] = qcow2_be64((uint8_t *)&l1[i]);
    *out = l1;
    return 0;
}

static void bitmap_ref(void *ctx, uint64_t off, uint64_t len)
{
    inc_refs(ctx, off, len);
}

/* Recompute references into c->refs. */
static int compute_refs(struct check_ctx *c)
{
    struct qcow2_state *s = c->s;
    int rc;
    inc_refs(c, 0, s->cluster_size);
    if ((rc = scan_l1(c, 0, s->l1_offset, s->l1_size, s->l1, true)))
        return rc;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t *l1;
        if (c->l1_entries_seen + sn->l1_size > CHECK_MAX_L1_ENTRIES) {
            rc = scan_l1(c, i + 1, sn->l1_offset, sn->l1_size, NULL, false);
            break;
        }
        if (load_l1_raw(s, sn->l1_offset, sn->l1_size, &l1)) {
            report(c, "ERROR: cannot read L1 table of snapshot '%s'", sn->name);
            c->res->check_errors++;
            continue;
        }
        rc = scan_l1(c, i + 1, sn->l1_offset, sn->l1_size, l1, false);
        free(l1);
        if (rc)
            return rc;
    }
    /* every distinct L2 table once: the active ones in L1 order (for fragmentation) */
    uint8_t *table = vs_malloc(s->cluster_size);
    if (!table)
        return -ENOMEM;
    uint64_t next_contiguous = 0;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2 || (l2 & (s->cluster_size - 1)))
            continue;
        struct l2_use *u = use_find(c, l2);
        if (!u) {
            free(table);
            return -ENOMEM;
        }
        walk_l2(c, l2, u->count, true, table, &next_contiguous);
        u->count = 0; /* done */
    }
    for (size_t i = 0; i < c->uses_cap; i++)
        if (c->uses[i].offset && c->uses[i].count)
            walk_l2(c, c->uses[i].offset, c->uses[i].count, false, table, &next_contiguous);
    free(table);

    if (s->nb_snapshots)
        inc_refs(c, s->snapshots_offset, s->snapshots_size);
    if (qcow2_bitmaps_walk(s, bitmap_ref, c)) {
        report(c, "ERROR bitmaps: %s", vs_error_message());
        c->res->corruptions++;
    }
    inc_refs(c, s->reftable_offset, (uint64_t)s->reftable_clusters << s->cluster_bits);
    int64_t fsize = img_file_size(s->file);
    uint64_t file_clusters = fsize > 0 ? VS_DIV_ROUND_UP((uint64_t)fsize, s->cluster_size) : 0;
    for (uint64_t r = 0; r < s->reftable_size; r++) {
        uint64_t off = s->reftable[r] & QCOW2_REFT_OFFSET_MASK;
        if (!off)
            continue;
        bool misaligned = off & (s->cluster_size - 1);
        if (misaligned || (off >> s->cluster_bits) >= file_clusters) {
            /* Repair drops the entry: the refcounts it should hold are rebuilt into a fresh
             * block inside the file. Writing to the stale offset instead would grow the file
             * to wherever a hostile table points (qemu extends it, to terabytes). */
            bool repair = (c->fix & IMG_CHECK_FIX_ERRORS) && qcow2_reftable_drop(s, r) == 0;
            report(c,
                   misaligned ? "%s refcount block %llu is not cluster aligned; refcount table "
                                "entry corrupted"
                              : "%s refcount block %llu is outside image",
                   repair ? "Repairing" : "ERROR", (unsigned long long)r);
            c->res->corruptions++;
            if (repair)
                c->res->corruptions_fixed++;
            continue;
        }
        inc_refs(c, off, s->cluster_size);
    }
    return 0;
}

static int compare_refcounts(struct check_ctx *c, int fix, uint64_t *highest)
{
    struct qcow2_state *s = c->s;
    struct img_check *res = c->res;
    *highest = 0;
    bool any = false;
    for (uint64_t i = 0; i < c->nrefs; i++) {
        uint64_t r1;
        if (qcow2_refcount_get(s, i, &r1)) {
            report(c, "ERROR: can't get refcount of cluster %llu", (unsigned long long)i);
            res->check_errors++;
            continue;
        }
        uint64_t r2 = c->refs[i];
        if (r1 != r2) {
            bool leak = r1 > r2;
            bool repair = fix & (leak ? IMG_CHECK_FIX_LEAKS : IMG_CHECK_FIX_ERRORS);
            report(c, "%s cluster %llu refcount=%llu reference=%llu",
                   repair ? "Repairing"
                   : leak ? "Leaked"
                          : "ERROR",
                   (unsigned long long)i, (unsigned long long)r1, (unsigned long long)r2);
            if (repair) {
                if (qcow2_refcount_set(s, i, r2) == 0) {
                    if (leak)
                        res->leaks_fixed++;
                    else
                        res->corruptions_fixed++;
                    r1 = r2;
                } else {
                    res->check_errors++;
                }
            } else if (leak) {
                res->leaks++;
            } else {
                res->corruptions++;
            }
        }
        if (r1 || r2) {
            *highest = i;
            any = true;
        }
    }
    if (!any)
        *highest = UINT64_MAX;
    return 0;
}

static int check_copied(struct check_ctx *c, int fix)
{
    struct qcow2_state *s = c->s;
    struct img_check *res = c->res;
    bool repair = (fix & IMG_CHECK_FIX_ERRORS) != 0;
    int rc = 0;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2 || (l2 & (s->cluster_size - 1)))
            continue;
        uint64_t refs;
        if (qcow2_refcount_get(s, l2 >> s->cluster_bits, &refs)) {
            res->check_errors++;
            continue;
        }
        bool copied = (s->l1[i] & QCOW2_OFLAG_COPIED) != 0;
        if ((refs == 1) != copied) {
            report(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx refcount=%llu",
                   repair ? "Repairing" : "ERROR", i, (unsigned long long)s->l1[i],
                   (unsigned long long)refs);
            if (repair) {
                s->l1[i] ^= QCOW2_OFLAG_COPIED;
                if (qcow2_l1_write_entries(s, i, 1) == 0)
                    res->corruptions_fixed++;
                else
                    res->check_errors++;
            } else {
                res->corruptions++;
            }
        }
        uint8_t *t;
        if (qcow2_l2_load(s, l2, &t)) {
            res->check_errors++;
            continue;
        }
        for (uint32_t j = 0; j < s->l2_entries; j++) {
            uint64_t bm;
            uint64_t e = qcow2_l2_get(s, t, j, &bm);
            enum qcow2_ctype ty = qcow2_entry_type(s, e);
            if (ty != QCOW2_NORMAL && ty != QCOW2_ZERO_ALLOC)
                continue;
            uint64_t host = e & QCOW2_OFFSET_MASK;
            if (host & (s->cluster_size - 1))
                continue;
            uint64_t r;
            if (qcow2_refcount_get(s, host >> s->cluster_bits, &r) || qcow2_l2_load(s, l2, &t)) {
                res->check_errors++;
                continue;
            }
            if ((r == 1) == ((e & QCOW2_OFLAG_COPIED) != 0))
                continue;
            report(c, "%s OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
                   repair && refs == 1 ? "Repairing" : "ERROR", (unsigned long long)e,
                   (unsigned long long)r);
            if (repair && refs == 1) {
                qcow2_l2_put(s, t, j, e ^ QCOW2_OFLAG_COPIED, bm);
                if (qcow2_l2_write(s, l2, t, j, 1) == 0)
                    res->corruptions_fixed++;
                else
                    res->check_errors++;
                if (qcow2_l2_load(s, l2, &t)) {
                    res->check_errors++;
                    break;
                }
            } else {
                res->corruptions++;
            }
        }
    }
    return rc;
}

static int check_pass(struct qcow2_state *s, struct img_check *res, int fix, bool quiet)
{
    struct check_ctx c = {.s = s, .res = res, .fix = fix, .quiet = quiet};
    int64_t fsize = img_file_size(s->file);
    if (fsize < 0)
        return (int)fsize;
    uint64_t nclusters = VS_DIV_ROUND_UP((uint64_t)fsize, s->cluster_size);
    /* a little room past the end for clusters allocated but not yet written (a crash) */
    c.max_refs =
        VS_MIN(CHECK_MAX_CLUSTERS, nclusters + VS_MAX(4096ull, (256ull << 20) >> s->cluster_bits));
    int rc = refs_grow(&c, VS_MAX(nclusters, 1));
    if (rc)
        return img_error(s->img, rc, "image file too large to check");
    rc = compute_refs(&c);
    if (!rc) {
        uint64_t highest;
        if (fix) {
            s->check_refs = c.refs;
            s->check_refs_count = c.nrefs;
        }
        rc = compare_refcounts(&c, fix, &highest);
        s->check_refs = NULL;
        s->check_refs_count = 0;
        res->image_end_offset = highest == UINT64_MAX ? 0 : (highest + 1) << s->cluster_bits;
    }
    if (!rc)
        rc = check_copied(&c, fix);
    res->total_clusters = VS_DIV_ROUND_UP(s->img->size, s->cluster_size);
    free(c.refs);
    free(c.uses);
    return rc;
}

static void reset_counts(struct img_check *r)
{
    r->corruptions = r->leaks = r->check_errors = 0;
    r->corruptions_fixed = r->leaks_fixed = 0;
    r->image_end_offset = r->total_clusters = r->allocated_clusters = 0;
    r->fragmented_clusters = r->compressed_clusters = 0;
}

static int check_locked(struct qcow2_state *s, struct img_check *res, int fix, bool quiet)
{
    reset_counts(res);
    if (fix && (!s->writable))
        return img_error(s->img, -EROFS, "repairing needs the image opened read-write");
    if (fix && s->corrupt)
        s->corrupt = false; /* this is the one writer allowed on a corrupt image */
    int rc = check_pass(s, res, fix, quiet);
    if (rc || !fix)
        return rc;
    uint64_t lf = res->leaks_fixed, cf = res->corruptions_fixed;
    if (lf || cf) {
        qcow2_meta_rebuild(s);
        struct img_check again = *res;
        reset_counts(&again);
        rc = check_pass(s, &again, 0, true);
        if (rc)
            return rc;
        again.leaks_fixed = lf;
        again.corruptions_fixed = cf;
        again.report = res->report;
        again.report_ctx = res->report_ctx;
        *res = again;
    }
    bool changed = false;
    if ((fix & IMG_CHECK_FIX_ERRORS) && !res->corruptions && !res->check_errors &&
        (s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
        s->incompat &= ~QCOW2_INCOMPAT_CORRUPT;
        changed = true;
    }
    if ((fix & IMG_CHECK_FIX_ERRORS) && (fix & IMG_CHECK_FIX_LEAKS) && !res->corruptions &&
        !res->leaks && !res->check_errors && (s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        s->dirty_set_by_us = false;
        changed = true;
    }
    if (changed) {
        rc = s->file->drv->flush(s->file);
        if (!rc)
            rc = qcow2_write_incompat(s);
        if (!rc)
            rc = s->file->drv->flush(s->file);
    }
    return rc;
}

int qcow2_check(struct img *img, struct img_check *result, int fix)
{
    pthread_mutex_lock(&img->lock);
    int rc = check_locked(img->state, result, fix, false);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

int qcow2_check_repair_all(struct qcow2_state *s)
{
    struct img_check res;
    memset(&res, 0, sizeof(res));
    pthread_mutex_lock(&s->img->lock);
    int rc = check_locked(s, &res, IMG_CHECK_FIX_LEAKS | IMG_CHECK_FIX_ERRORS, true);
    pthread_mutex_unlock(&s->img->lock);
    if (!rc && (res.corruptions || res.check_errors))
        rc = img_error(s->img, -EIO,
                       "dirty image could not be repaired (%llu corruptions remain); run check",
                       (unsigned long long)res.corruptions);
    return rc;
}
