/*
 * lib/img/qcow2-refcount.c — qcow2 host cluster accounting: reading and changing refcounts,
 * allocating clusters (contiguous runs, bytes for compressed data), growing the refcount table,
 * and the metadata map that every write is checked against.
 *
 * The idea: a refcount goes up on disk before anything points at the cluster and down only
 * after nothing does, so an interrupted operation leaks at worst. New refcount blocks are placed
 * so they describe themselves whenever possible, which keeps allocation free of deep recursion.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "img/qcow2.h"

/* ---- refcount block entries of any width ---- */

uint64_t qcow2_refcount_block_get(const struct qcow2_state *s, const uint8_t *block, uint64_t index)
{
    switch (s->refcount_order) {
    case 0:
    case 1:
    case 2: {
        uint64_t bit = index << s->refcount_order;
        return (block[bit / 8] >> (bit % 8)) & ((1u << s->refcount_bits) - 1);
    }
    case 3:
        return block[index];
    case 4:
        return qcow2_be16(block + index * 2);
    case 5:
        return qcow2_be32(block + index * 4);
    default:
        return qcow2_be64(block + index * 8);
    }
}

void qcow2_refcount_block_put(const struct qcow2_state *s, uint8_t *block, uint64_t index,
                              uint64_t value)
{
    switch (s->refcount_order) {
    case 0:
    case 1:
    case 2: {
        uint64_t bit = index << s->refcount_order;
        uint8_t mask = (uint8_t)(((1u << s->refcount_bits) - 1) << (bit % 8));
        block[bit / 8] = (uint8_t)((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
        break;
    }
    case 3:
        block[index] = (uint8_t)value;
        break;
    case 4:
        qcow2_put_be16(block + index * 2, (uint16_t)value);
        break;
    case 5:
        qcow2_put_be32(block + index * 4, (uint32_t)value);
        break;
    default:
        qcow2_put_be64(block + index * 8, value);
        break;
    }
}

static uint64_t entry_byte(const struct qcow2_state *s, uint64_t index)
{
    return (index << s->refcount_order) / 8;
}

static uint64_t entry_bytes(const struct qcow2_state *s)
{
    return s->refcount_bits >= 8 ? s->refcount_bits / 8 : 1;
}

int qcow2_refcount_load_block(struct qcow2_state *s, uint64_t block_offset, uint8_t **out)
{
    uint8_t *b = qcow2_cache_find(&s->rb_cache, block_offset);
    if (b) {
        *out = b;
        return 0;
    }
    if (block_offset & (s->cluster_size - 1))
        return img_error(s->img, -EIO, "refcount block offset %#llx is not cluster aligned",
                         (unsigned long long)block_offset);
    b = qcow2_cache_insert(&s->rb_cache, block_offset);
    if (!b)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, b, block_offset, s->cluster_size);
    if (rc) {
        qcow2_cache_drop(&s->rb_cache, block_offset);
        return rc;
    }
    *out = b;
    return 0;
}

static uint64_t reftable_block(const struct qcow2_state *s, uint64_t r)
{
    if (r >= s->reftable_size)
        return 0;
    return s->reftable[r] & QCOW2_REFT_OFFSET_MASK;
}

int qcow2_refcount_get(struct qcow2_state *s, uint64_t cluster, uint64_t *rc)
{
    uint64_t off = reftable_block(s, cluster >> s->rb_bits);
    if (!off) {
        *rc = 0;
        return 0;
    }
    uint8_t *b;
    int err = qcow2_refcount_load_block(s, off, &b);
    if (err)
        return err;
    *rc = qcow2_refcount_block_get(s, b, cluster & (s->rb_entries - 1));
    return 0;
}

static int reftable_write_entry(struct qcow2_state *s, uint64_t r)
{
    if (s->reftable_moving)
        return 0;
    uint8_t be[8];
    qcow2_put_be64(be, s->reftable[r]);
    return qcow2_file_pwrite(s, be, s->reftable_offset + r * 8, 8, QCOW2_META_REFTABLE);
}

int qcow2_reftable_drop(struct qcow2_state *s, uint64_t r)
{
    if (r >= s->reftable_size)
        return -EINVAL;
    uint64_t off = s->reftable[r] & QCOW2_REFT_OFFSET_MASK;
    if (off)
        qcow2_cache_drop(&s->rb_cache, off);
    s->reftable[r] = 0;
    return reftable_write_entry(s, r);
}

/* ---- metadata map and overlap checks ---- */

static int meta_add_range(struct qcow2_state *s, uint64_t offset, uint64_t len, uint8_t kind)
{
    if (!len)
        return 0;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    for (uint64_t c = first; c <= last; c++) {
        int rc = qcow2_set_add(&s->meta, c, kind);
        if (rc)
            return rc;
    }
    return 0;
}

static int range_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int qcow2_meta_rebuild(struct qcow2_state *s)
{
    int rc;
    qcow2_set_clear(&s->meta);
    if ((rc = qcow2_set_add(&s->meta, 0, QCOW2_META_HEADER)))
        return rc;
    if (s->l1_size &&
        (rc = meta_add_range(s, s->l1_offset, (uint64_t)s->l1_size * 8, QCOW2_META_ACTIVE_L1)))
        return rc;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (l2 && (rc = qcow2_set_add(&s->meta, l2 >> s->cluster_bits, QCOW2_META_ACTIVE_L2)))
            return rc;
    }
    if ((rc = meta_add_range(s, s->reftable_offset,
                             (uint64_t)s->reftable_clusters << s->cluster_bits,
                             QCOW2_META_REFTABLE)))
        return rc;
    for (uint64_t r = 0; r < s->reftable_size; r++) {
        uint64_t b = reftable_block(s, r);
        if (b && (rc = qcow2_set_add(&s->meta, b >> s->cluster_bits, QCOW2_META_REFBLOCK)))
            return rc;
    }
    if (s->nb_snapshots &&
        (rc = meta_add_range(s, s->snapshots_offset, s->snapshots_size, QCOW2_META_SNAPSHOT_TABLE)))
        return rc;
    /* snapshot L1 tables may overlap each other (hostile files): add their union, so the work
     * is bounded by the file size, not by nb_snapshots * l1_size */
    if (s->nb_snapshots) {
        struct range {
            uint64_t start, end;
        } *r = vs_malloc(s->nb_snapshots * sizeof(*r));
        if (!r)
            return -ENOMEM;
        uint32_t n = 0;
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            struct qcow2_snapshot *sn = &s->snapshots[i];
            if (sn->l1_size) {
                r[n].start = sn->l1_offset >> s->cluster_bits;
                r[n].end = (sn->l1_offset + (uint64_t)sn->l1_size * 8 - 1) >> s->cluster_bits;
                n++;
            }
        }
        qsort(r, n, sizeof(*r), range_cmp);
        uint64_t next = 0;
        for (uint32_t i = 0; i < n && !rc; i++) {
            for (uint64_t c = VS_MAX(r[i].start, next); c <= r[i].end && !rc; c++)
                rc = qcow2_set_add(&s->meta, c, QCOW2_META_INACTIVE_L1);
            next = VS_MAX(next, r[i].end + 1);
        }
        free(r);
    }
    return rc;
}

static const char *meta_kind_name(int bits)
{
    if (bits & QCOW2_META_HEADER)
        return "qcow2 header";
    if (bits & QCOW2_META_ACTIVE_L1)
        return "active L1 table";
    if (bits & QCOW2_META_ACTIVE_L2)
        return "active L2 table";
    if (bits & QCOW2_META_REFTABLE)
        return "refcount table";
    if (bits & QCOW2_META_REFBLOCK)
        return "refcount block";
    if (bits & QCOW2_META_SNAPSHOT_TABLE)
        return "snapshot table";
    return "inactive L1 table";
}

int qcow2_check_overlap(struct qcow2_state *s, uint64_t offset, uint64_t len, int allowed)
{
    if (!len)
        return 0;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    for (uint64_t c = first; c <= last; c++) {
        int bits = qcow2_set_get(&s->meta, c) & ~allowed;
        if (bits) {
            qcow2_mark_corrupt(s);
            return img_error(s->img, -EIO,
                             "preventing invalid write on metadata (overlaps with %s at offset "
                             "%#llx); image marked as corrupt",
                             meta_kind_name(bits), (unsigned long long)(c << s->cluster_bits));
        }
    }
    return 0;
}

/* ---- in-flight guest I/O and quarantined clusters ---- */

void qcow2_io_begin(struct qcow2_state *s)
{
    s->inflight_io++;
}

void qcow2_io_end(struct qcow2_state *s)
{
    if (--s->inflight_io == 0 && s->quarantine.count)
        qcow2_set_clear(&s->quarantine);
}

static bool cluster_usable(struct qcow2_state *s, uint64_t c)
{
    if (c == 0)
        return false;
    if (s->quarantine.count && qcow2_set_get(&s->quarantine, c))
        return false;
    if (s->check_refs && c < s->check_refs_count && s->check_refs[c])
        return false;
    return true;
}

/* ---- the one place refcounts change ---- */

static int refblock_ensure(struct qcow2_state *s, uint64_t r, int depth);

static void cluster_freed(struct qcow2_state *s, uint64_t c)
{
    uint64_t off = c << s->cluster_bits;
    if (c < s->free_cluster_index)
        s->free_cluster_index = c;
    qcow2_cache_drop(&s->l2_cache, off);
    qcow2_cache_drop(&s->rb_cache, off);
    qcow2_set_remove_bits(&s->meta, c, 0xff);
    if (s->free_byte_offset && (s->free_byte_offset >> s->cluster_bits) == c)
        s->free_byte_offset = 0;
    if (s->inflight_io)
        qcow2_set_add(&s->quarantine, c, 1);
    if (s->check_refs && c < s->check_refs_count && s->check_refs[c])
        s->check_refs[c]--; /* repair moved metadata away from here */
}

/* During repair, clusters we allocate must count as referenced for the rest of the pass. */
static void check_refs_note(struct qcow2_state *s, uint64_t first, uint64_t count)
{
    for (uint64_t c = first; s->check_refs && c < first + count && c < s->check_refs_count; c++)
        s->check_refs[c]++;
}

#define CL(i) (list ? list[i] : first + (i))

/* Add DELTA to each listed cluster (LIST sorted ascending, or the range FIRST..FIRST+N-1). All
 * changes inside one refcount block are checked first, then applied and written in one go. */
static int refcount_apply(struct qcow2_state *s, const uint64_t *list, uint64_t first, size_t n,
                          int64_t delta)
{
    size_t i = 0;
    while (i < n) {
        uint64_t r = CL(i) >> s->rb_bits;
        size_t j = i;
        while (j < n && (CL(j) >> s->rb_bits) == r)
            j++;
        int rc;
        if (!reftable_block(s, r)) {
            if (delta < 0)
                return img_error(s->img, -EIO,
                                 "refcount of cluster %llu would drop below zero (no refcount "
                                 "block)",
                                 (unsigned long long)CL(i));
            if ((rc = refblock_ensure(s, r, 0)))
                return rc;
        }
        uint8_t *b;
        if ((rc = qcow2_refcount_load_block(s, reftable_block(s, r), &b)))
            return rc;
        /* validate */
        for (size_t k = i; k < j;) {
            uint64_t c = CL(k);
            size_t m = k;
            while (m < j && CL(m) == c)
                m++;
            int64_t d = delta * (int64_t)(m - k);
            uint64_t old = qcow2_refcount_block_get(s, b, c & (s->rb_entries - 1));
            if (d > 0 && old > s->refcount_max - (uint64_t)d)
                return img_error(s->img, -EINVAL,
                                 "refcount of cluster %llu would overflow (refcount_bits=%u)",
                                 (unsigned long long)c, s->refcount_bits);
            if (d < 0 && old < (uint64_t)-d)
                return img_error(s->img, -EIO,
                                 "refcount of cluster %llu would drop below zero (refcount=%llu)",
                                 (unsigned long long)c, (unsigned long long)old);
            k = m;
        }
        /* apply */
        uint64_t lo = UINT64_MAX, hi = 0;
        for (size_t k = i; k < j;) {
            uint64_t c = CL(k);
            size_t m = k;
            while (m < j && CL(m) == c)
                m++;
            uint64_t idx = c & (s->rb_entries - 1);
            uint64_t old = qcow2_refcount_block_get(s, b, idx);
            qcow2_refcount_block_put(s, b, idx, old + (uint64_t)(delta * (int64_t)(m - k)));
            lo = VS_MIN(lo, entry_byte(s, idx));
            hi = VS_MAX(hi, entry_byte(s, idx) + entry_bytes(s));
            k = m;
        }
        uint64_t boff = reftable_block(s, r);
        if ((rc = qcow2_file_pwrite(s, b + lo, boff + lo, hi - lo, QCOW2_META_REFBLOCK))) {
            qcow2_cache_drop(&s->rb_cache, boff); /* the cache must never differ from the file */
            return rc;
        }
        if (delta < 0) {
            for (size_t k = i; k < j; k++) {
                uint64_t v;
                if (k > i && CL(k) == CL(k - 1))
                    continue;
                if (qcow2_refcount_get(s, CL(k), &v) == 0 && v == 0)
                    cluster_freed(s, CL(k));
            }
        }
        i = j;
    }
    return 0;
}

int qcow2_refcount_update_sorted(struct qcow2_state *s, const uint64_t *clusters, size_t n,
                                 int64_t delta)
{
    return refcount_apply(s, clusters, 0, n, delta);
}

int qcow2_refcount_update_range(struct qcow2_state *s, uint64_t offset, uint64_t len, int64_t delta)
{
    if (!len)
        return 0;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    return refcount_apply(s, NULL, first, last - first + 1, delta);
}

int qcow2_refcount_set(struct qcow2_state *s, uint64_t cluster, uint64_t value)
{
    uint64_t old;
    int rc = qcow2_refcount_get(s, cluster, &old);
    if (rc || old == value)
        return rc;
    /* With refcount_order 6 the distance can exceed what an int64_t delta holds
     * (a hostile image may carry 2^64-1); move there in steps that fit. */
    while (old != value) {
        uint64_t dist = value > old ? value - old : old - value;
        if (dist > INT64_MAX)
            dist = INT64_MAX;
        int64_t d = value > old ? (int64_t)dist : -(int64_t)dist;
        rc = refcount_apply(s, NULL, cluster, 1, d);
        if (rc)
            return rc;
        old = value > old ? old + dist : old - dist;
    }
    return 0;
}

int qcow2_free_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len)
{
    return qcow2_refcount_update_range(s, offset, len, -1);
}

void qcow2_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *coffset,
                            uint64_t *csize)
{
    *coffset = entry & s->cluster_offset_mask;
    uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
    *csize = sectors * 512 - (*coffset & 511);
}

int qcow2_release_l2_entry(struct qcow2_state *s, uint64_t entry)
{
    switch (qcow2_entry_type(s, entry)) {
    case QCOW2_COMPRESSED: {
        uint64_t coff, csize;
        qcow2_compressed_range(s, entry, &coff, &csize);
        return qcow2_refcount_update_range(s, coff, csize, -1);
    }
    case QCOW2_NORMAL:
    case QCOW2_ZERO_ALLOC:
        return qcow2_refcount_update_range(s, entry & QCOW2_OFFSET_MASK, 1, -1);
    default:
        return 0;
    }
}

/* ---- finding free space ---- */

static uint64_t max_clusters(const struct qcow2_state *s)
{
    return 1ull << (56 - s->cluster_bits); /* host offsets must fit in 56 bits */
}

/* First run of COUNT free clusters at or after the hint; *first_free is the first free cluster
 * seen (the hint's next value when the run is taken). */
static int find_free(struct qcow2_state *s, uint64_t count, uint64_t *out, uint64_t *first_free)
{
    uint64_t start = s->free_cluster_index ? s->free_cluster_index : 1;
    uint64_t len = 0;
    *first_free = UINT64_MAX;
    while (len < count) {
        uint64_t c = start + len;
        if (c + (count - len) > max_clusters(s))
            return img_error(s->img, -ENOSPC, "image file would exceed the 64 PiB qcow2 limit");
        uint64_t r = c >> s->rb_bits;
        uint64_t boff = reftable_block(s, r);
        uint64_t in_block = s->rb_entries - (c & (s->rb_entries - 1));
        if (!boff && !s->quarantine.count && !s->check_refs) {
            if (*first_free == UINT64_MAX)
                *first_free = c;
            len += in_block; /* no refcount block: all free */
            continue;
        }
        uint8_t *b = NULL;
        if (boff) {
            int rc = qcow2_refcount_load_block(s, boff, &b);
            if (rc)
                return rc;
        }
        for (uint64_t k = 0; k < in_block && len < count; k++, c++) {
            bool free = (!b || qcow2_refcount_block_get(s, b, c & (s->rb_entries - 1)) == 0) &&
                        cluster_usable(s, c);
            if (free) {
                if (*first_free == UINT64_MAX)
                    *first_free = c;
                len++;
            } else {
                start = c + 1;
                len = 0;
            }
        }
    }
    *out = start;
    return 0;
}

/* ---- refcount blocks and table ---- */

static int reftable_grow(struct qcow2_state *s, uint64_t min_entries);

static int refblock_place(struct qcow2_state *s, uint64_t r, uint64_t c, bool self)
{
    uint64_t off = c << s->cluster_bits;
    uint8_t *b = qcow2_cache_insert(&s->rb_cache, off);
    if (!b)
        return -ENOMEM;
    memset(b, 0, s->cluster_size);
    if (self)
        qcow2_refcount_block_put(s, b, c & (s->rb_entries - 1), 1);
    int rc = qcow2_file_pwrite(s, b, off, s->cluster_size, 0);
    if (rc) {
        qcow2_cache_drop(&s->rb_cache, off);
        return rc;
    }
    if ((rc = qcow2_set_add(&s->meta, c, QCOW2_META_REFBLOCK)))
        return rc;
    check_refs_note(s, c, 1);
    s->reftable[r] = off;
    if (off + s->cluster_size > s->file_size_hint)
        s->file_size_hint = off + s->cluster_size;
    if (s->fresh_start < off + s->cluster_size)
        s->fresh_start = off + s->cluster_size;
    if (c == s->free_cluster_index)
        s->free_cluster_index = c + 1;
    return reftable_write_entry(s, r);
}

static int refblock_ensure(struct qcow2_state *s, uint64_t r, int depth)
{
    int rc;
    if (depth > 4)
        return img_error(s->img, -EIO, "refcount block allocation does not converge");
    if (r >= s->reftable_size && (rc = reftable_grow(s, r + 1)))
        return rc;
    for (int attempt = 0; attempt < 8; attempt++) {
        if (reftable_block(s, r))
            return 0;
        uint64_t c, ff;
        if ((rc = find_free(s, 1, &c, &ff)))
            return rc;
        uint64_t rc_block = c >> s->rb_bits;
        if (rc_block == r)
            return refblock_place(s, r, c, true);
        if (reftable_block(s, rc_block)) {
            if ((rc = refcount_apply(s, NULL, c, 1, 1)))
                return rc;
            if (c == s->free_cluster_index)
                s->free_cluster_index = c + 1;
            return refblock_place(s, r, c, false);
        }
        if ((rc = refblock_ensure(s, rc_block, depth + 1)))
            return rc;
    }
    return img_error(s->img, -EIO, "cannot place refcount block %llu", (unsigned long long)r);
}

static int reftable_grow(struct qcow2_state *s, uint64_t min_entries)
{
    if (s->reftable_moving)
        return img_error(s->img, -EIO, "refcount table needs to grow while it is being moved");
    uint64_t want = VS_MAX(min_entries + 1, s->reftable_size * 2);
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t clusters = VS_DIV_ROUND_UP(want, per_cluster);
    if (clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        clusters = QCOW2_MAX_REFTABLE_BYTES / s->cluster_size;
        if (clusters * per_cluster < min_entries + 1)
            return img_error(s->img, -EFBIG, "refcount table would exceed %u MiB",
                             QCOW2_MAX_REFTABLE_BYTES >> 20);
    }
    uint64_t entries = clusters * per_cluster;
    uint64_t *table = vs_calloc(entries, sizeof(uint64_t));
    if (!table)
        return -ENOMEM;
    memcpy(table, s->reftable, s->reftable_size * sizeof(uint64_t));
    uint64_t *old_table = s->reftable;
    uint64_t old_size = s->reftable_size, old_offset = s->reftable_offset;
    uint32_t old_clusters = s->reftable_clusters;
    s->reftable = table;
    s->reftable_size = entries;
    s->reftable_moving = true;

    uint64_t first, ff;
    int rc = find_free(s, clusters, &first, &ff);
    if (!rc) {
        /* make sure the new table's own refcounts have blocks, then take the clusters */
        for (uint64_t r = first >> s->rb_bits; !rc && r <= (first + clusters - 1) >> s->rb_bits;
             r++)
            if (!reftable_block(s, r))
                rc = refblock_ensure(s, r, 1);
        if (!rc)
            rc = find_free(s, clusters, &first, &ff);
        if (!rc)
            rc = refcount_apply(s, NULL, first, clusters, 1);
        if (!rc)
            check_refs_note(s, first, clusters);
    }
    uint8_t *buf = NULL;
    if (!rc) {
        buf = vs_malloc(clusters * s->cluster_size);
        rc = buf ? 0 : -ENOMEM;
    }
    if (!rc) {
        for (uint64_t i = 0; i < entries; i++)
            qcow2_put_be64(buf + i * 8, s->reftable[i]);
        rc = qcow2_file_pwrite(s, buf, first << s->cluster_bits, clusters * s->cluster_size, 0);
        if (!rc)
            rc = s->file->drv->flush(s->file);
    }
    free(buf);
    if (!rc) {
        s->reftable_offset = first << s->cluster_bits;
        s->reftable_clusters = (uint32_t)clusters;
        rc = qcow2_write_header_reftable(s);
        if (rc) {
            s->reftable_offset = old_offset;
            s->reftable_clusters = old_clusters;
        }
    }
    s->reftable_moving = false;
    if (rc) {
        /* keep what fits in the old table (written back), forget the rest: leaks at worst */
        memcpy(old_table, s->reftable, old_size * sizeof(uint64_t));
        free(s->reftable);
        s->reftable = old_table;
        s->reftable_size = old_size;
        for (uint64_t r = 0; r < old_size; r++)
            reftable_write_entry(s, r);
        qcow2_meta_rebuild(s);
        return rc;
    }
    free(old_table);
    if (s->fresh_start < (first + clusters) << s->cluster_bits)
        s->fresh_start = (first + clusters) << s->cluster_bits;
    if (s->file_size_hint < (first + clusters) << s->cluster_bits)
        s->file_size_hint = (first + clusters) << s->cluster_bits;
    if ((rc = qcow2_meta_rebuild(s)))
        return rc;
    return qcow2_free_clusters(s, old_offset, (uint64_t)old_clusters << s->cluster_bits);
}

/* ---- allocation ---- */

int qcow2_alloc_clusters(struct qcow2_state *s, uint64_t count, uint64_t *offset)
{
    if (!count)
        return img_error(s->img, -EINVAL, "zero-length cluster allocation");
    for (int attempt = 0; attempt < 16; attempt++) {
        uint64_t start, ff;
        int rc = find_free(s, count, &start, &ff);
        if (rc)
            return rc;
        bool changed = false;
        for (uint64_t r = start >> s->rb_bits; r <= (start + count - 1) >> s->rb_bits; r++) {
            if (!reftable_block(s, r)) {
                if ((rc = refblock_ensure(s, r, 0)))
                    return rc;
                changed = true;
            }
        }
        if (changed) {
            uint64_t again;
            if ((rc = find_free(s, count, &again, &ff)))
                return rc;
            if (again != start)
                continue;
        }
        if ((rc = refcount_apply(s, NULL, start, count, 1)))
            return rc;
        check_refs_note(s, start, count);
        s->free_cluster_index = ff == start ? start + count : ff;
        uint64_t end = (start + count) << s->cluster_bits;
        if (end > s->file_size_hint)
            s->file_size_hint = end;
        *offset = start << s->cluster_bits;
        return 0;
    }
    return img_error(s->img, -EIO, "cluster allocation does not converge");
}

int qcow2_alloc_bytes(struct qcow2_state *s, uint64_t size, uint64_t *offset)
{
    int rc;
    if (size > s->cluster_size)
        return img_error(s->img, -EINVAL, "compressed cluster larger than a cluster");
    uint64_t fbo = s->free_byte_offset;
    if (fbo && (fbo & (s->cluster_size - 1)) &&
        size <= s->cluster_size - (fbo & (s->cluster_size - 1))) {
        uint64_t cur;
        if ((rc = qcow2_refcount_get(s, fbo >> s->cluster_bits, &cur)))
            return rc;
        if (cur > 0 && cur < s->refcount_max) {
            if ((rc = qcow2_refcount_update_range(s, fbo, 1, 1)))
                return rc;
            *offset = fbo;
            s->free_byte_offset = fbo + size;
            if (!(s->free_byte_offset & (s->cluster_size - 1)))
                s->free_byte_offset = 0;
            return 0;
        }
    }
    uint64_t off;
    if ((rc = qcow2_alloc_clusters(s, 1, &off)))
        return rc;
    *offset = off;
    s->free_byte_offset = size < s->cluster_size ? off + size : 0;
    return 0;
}

int qcow2_refcount_end(struct qcow2_state *s, uint64_t *end)
{
    *end = 0;
    for (uint64_t r = s->reftable_size; r-- > 0;) {
        uint64_t boff = reftable_block(s, r);
        if (!boff)
            continue;
        uint8_t *b;
        int rc = qcow2_refcount_load_block(s, boff, &b);
        if (rc)
            return rc;
        for (uint64_t i = s->rb_entries; i-- > 0;) {
            if (qcow2_refcount_block_get(s, b, i)) {
                *end = (r << s->rb_bits) + i + 1;
                return 0;
            }
        }
    }
    return 0;
}
