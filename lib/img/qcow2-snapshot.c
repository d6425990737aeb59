/*
 * lib/img/qcow2-snapshot.c — qcow2 internal snapshots: the snapshot table (read, validated,
 * rewritten), and creating, listing, applying and deleting snapshots.
 *
 * The idea: a snapshot is a copy of the active L1 table plus one more reference on every cluster
 * reachable from it. Each operation raises refcounts before anything new points at clusters and
 * lowers them only after the old pointer is gone (then recomputes the active tables' COPIED
 * flags from the refcounts), so an interruption can only leak clusters.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "img/qcow2.h"

#define SN_EXTRA_KNOWN 24 /* vm_state_size_large, disk_size, icount */

void qcow2_snapshots_free(struct qcow2_snapshot *sn, uint32_t count)
{
    if (!sn)
        return;
    for (uint32_t i = 0; i < count; i++) {
        free(sn[i].id);
        free(sn[i].name);
        free(sn[i].unknown_extra);
    }
    free(sn);
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *s = vs_malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

int qcow2_snapshots_read(struct qcow2_state *s)
{
    struct img *img = s->img;
    if (!s->nb_snapshots)
        return 0;
    int64_t fsize = img_file_size(s->file);
    if (fsize < 0)
        return (int)fsize;
    s->snapshots = vs_calloc(s->nb_snapshots, sizeof(*s->snapshots));
    if (!s->snapshots)
        return -ENOMEM;
    uint8_t *var = vs_malloc(QCOW2_MAX_SNAPSHOT_EXTRA + 2 * 65536);
    if (!var)
        return -ENOMEM;
    uint64_t off = s->snapshots_offset;
    int rc = 0;
    uint32_t i;
    for (i = 0; i < s->nb_snapshots && !rc; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint8_t h[40];
        if (off - s->snapshots_offset + 40 > QCOW2_MAX_SNAPSHOT_TABLE ||
            off + 40 > (uint64_t)fsize) {
            rc = img_error(img, -EINVAL,
                           "snapshot table (snapshots_offset %#llx, nb_snapshots %u) extends "
                           "beyond the end of the file or %u MiB",
                           (unsigned long long)s->snapshots_offset, s->nb_snapshots,
                           QCOW2_MAX_SNAPSHOT_TABLE >> 20);
            break;
        }
        if ((rc = qcow2_file_pread(s, h, off, 40)))
            break;
        sn->l1_offset = qcow2_be64(h);
        sn->l1_size = qcow2_be32(h + 8);
        uint32_t id_len = qcow2_be16(h + 12), name_len = qcow2_be16(h + 14);
        sn->date_sec = qcow2_be32(h + 16);
        sn->date_nsec = qcow2_be32(h + 20);
        sn->vm_clock_nsec = qcow2_be64(h + 24);
        sn->vm_state_size = qcow2_be32(h + 32);
        uint32_t extra = qcow2_be32(h + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
            rc = img_error(img, -EINVAL, "snapshot %u: extra data size %u too large (max %d)", i,
                           extra, QCOW2_MAX_SNAPSHOT_EXTRA);
            break;
        }
        uint64_t var_len = (uint64_t)extra + id_len + name_len;
        uint64_t entry_len = VS_ALIGN_UP(40 + var_len, 8);
        if (off - s->snapshots_offset + entry_len > QCOW2_MAX_SNAPSHOT_TABLE ||
            off + 40 + var_len > (uint64_t)fsize) {
            rc =
                img_error(img, -EINVAL, "snapshot %u: entry extends beyond the end of the file", i);
            break;
        }
        if ((rc = qcow2_file_pread(s, var, off + 40, var_len)))
            break;
        if (extra >= 8)
            sn->vm_state_size = qcow2_be64(var);
        if (extra >= 16) {
            sn->disk_size = qcow2_be64(var + 8);
            sn->has_disk_size = true;
        } else {
            sn->disk_size = img->size;
        }
        if (extra >= 24) {
            sn->icount = qcow2_be64(var + 16);
            sn->has_icount = true;
        }
        if (extra > SN_EXTRA_KNOWN) {
            sn->unknown_extra_size = extra - SN_EXTRA_KNOWN;
            sn->unknown_extra = vs_malloc(sn->unknown_extra_size);
            if (!sn->unknown_extra) {
                rc = -ENOMEM;
                break;
            }
            memcpy(sn->unknown_extra, var + SN_EXTRA_KNOWN, sn->unknown_extra_size);
        }
        sn->id = dup_bytes(var + extra, id_len);
        sn->name = dup_bytes(var + extra + id_len, name_len);
        if (!sn->id || !sn->name) {
            rc = -ENOMEM;
            break;
        }
        if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            rc = img_error(img, -EINVAL, "snapshot '%s': l1_size %u too large", sn->name,
                           sn->l1_size);
            break;
        }
        if (sn->l1_size && ((sn->l1_offset & (s->cluster_size - 1)) ||
                            sn->l1_offset < s->cluster_size || sn->l1_offset > (uint64_t)fsize ||
                            (uint64_t)sn->l1_size * 8 > (uint64_t)fsize - sn->l1_offset)) {
            rc = img_error(img, -EINVAL,
                           "snapshot '%s': l1_table_offset %#llx invalid or beyond end of file",
                           sn->name, (unsigned long long)sn->l1_offset);
            break;
        }
        off += entry_len;
    }
    free(var);
    s->snapshots_size = off - s->snapshots_offset;
    return rc;
}

/* Serialise LIST to a new place in the file and point the header at it; frees the old table. */
static int snapshot_table_write(struct qcow2_state *s, struct qcow2_snapshot *list, uint32_t count)
{
    uint64_t size = 0;
    for (uint32_t i = 0; i < count; i++)
        size += VS_ALIGN_UP(40 + SN_EXTRA_KNOWN + list[i].unknown_extra_size + strlen(list[i].id) +
                                strlen(list[i].name),
                            8);
    uint64_t off = 0;
    int rc = 0;
    if (count) {
        uint64_t clusters = VS_DIV_ROUND_UP(size, s->cluster_size);
        uint8_t *buf = vs_calloc(clusters, s->cluster_size);
        if (!buf)
            return -ENOMEM;
        uint8_t *p = buf;
        for (uint32_t i = 0; i < count; i++) {
            struct qcow2_snapshot *sn = &list[i];
            size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
            uint32_t extra = SN_EXTRA_KNOWN + sn->unknown_extra_size;
            qcow2_put_be64(p, sn->l1_offset);
            qcow2_put_be32(p + 8, sn->l1_size);
            qcow2_put_be16(p + 12, (uint16_t)id_len);
            qcow2_put_be16(p + 14, (uint16_t)name_len);
            qcow2_put_be32(p + 16, sn->date_sec);
            qcow2_put_be32(p + 20, sn->date_nsec);
            qcow2_put_be64(p + 24, sn->vm_clock_nsec);
            qcow2_put_be32(p + 32,
                           sn->vm_state_size > UINT32_MAX ? 0 : (uint32_t)sn->vm_state_size);
            qcow2_put_be32(p + 36, extra);
            qcow2_put_be64(p + 40, sn->vm_state_size);
            qcow2_put_be64(p + 48, sn->disk_size);
            qcow2_put_be64(p + 56, sn->has_icount ? sn->icount : UINT64_MAX);
            if (sn->unknown_extra_size)
                memcpy(p + 64, sn->unknown_extra, sn->unknown_extra_size);
            memcpy(p + 40 + extra, sn->id, id_len);
            memcpy(p + 40 + extra + id_len, sn->name, name_len);
            p += VS_ALIGN_UP(40 + extra + id_len + name_len, 8);
        }
        rc = qcow2_alloc_clusters(s, clusters, &off);
        if (!rc)
            rc = qcow2_file_pwrite(s, buf, off, clusters * s->cluster_size, 0);
        if (!rc)
            rc = s->file->drv->flush(s->file);
        free(buf);
        if (rc) {
            if (off)
                qcow2_free_clusters(s, off, clusters * s->cluster_size);
            return rc;
        }
    }
    uint64_t old_off = s->snapshots_offset, old_size = s->snapshots_size;
    uint32_t old_count = s->nb_snapshots;
    s->snapshots_offset = off;
    s->nb_snapshots = count;
    if ((rc = qcow2_write_header_snapshots(s))) {
        s->snapshots_offset = old_off;
        s->nb_snapshots = old_count;
        if (off)
            qcow2_free_clusters(s, off, VS_ALIGN_UP(size, s->cluster_size));
        return rc;
    }
    s->snapshots_size = size;
    if (old_count && old_size)
        rc = qcow2_free_clusters(s, old_off, VS_ALIGN_UP(old_size, s->cluster_size));
    return rc;
}

/* ---- reference walks ---- */

struct u64vec {
    uint64_t *v;
    size_t n, cap;
};

static int vec_push(struct u64vec *x, uint64_t val)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 1024;
        uint64_t *v = realloc(x->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        x->v = v;
        x->cap = cap;
    }
    x->v[x->n++] = val;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int qcow2_l1_collect_refs(struct qcow2_state *s, const uint64_t *l1, uint32_t l1_size,
                          uint64_t **out, size_t *count)
{
    struct u64vec x = {0};
    struct qcow2_set seen;
    int rc = qcow2_set_init(&seen);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < l1_size && !rc; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        if (l2 & (s->cluster_size - 1)) {
            rc = img_error(s->img, -EIO, "L1 entry %u: L2 offset %#llx is not cluster aligned", i,
                           (unsigned long long)l2);
            break;
        }
        /* one table used twice by one L1 is corruption (and would make this walk explode) */
        if (qcow2_set_get(&seen, l2 >> s->cluster_bits)) {
            rc = img_error(s->img, -EIO, "L1 entry %u: L2 table %#llx is used twice", i,
                           (unsigned long long)l2);
            break;
        }
        if ((rc = qcow2_set_add(&seen, l2 >> s->cluster_bits, 1)))
            break;
        if ((rc = vec_push(&x, l2 >> s->cluster_bits)))
            break;
        uint8_t *t;
        if ((rc = qcow2_l2_load(s, l2, &t)))
            break;
        for (uint32_t j = 0; j < s->l2_entries && !rc; j++) {
            uint64_t e = qcow2_l2_get(s, t, j, NULL);
            switch (qcow2_entry_type(s, e)) {
            case QCOW2_NORMAL:
            case QCOW2_ZERO_ALLOC:
                rc = vec_push(&x, (e & QCOW2_OFFSET_MASK) >> s->cluster_bits);
                break;
            case QCOW2_COMPRESSED: {
                uint64_t coff, csize;
                qcow2_compressed_range(s, e, &coff, &csize);
                for (uint64_t c = coff >> s->cluster_bits;
                     !rc && c <= (coff + csize - 1) >> s->cluster_bits; c++)
                    rc = vec_push(&x, c);
                break;
            }
            default:
                break;
            }
        }
    }
    qcow2_set_free(&seen);
    if (rc) {
        free(x.v);
        return rc;
    }
    if (x.n)
        qsort(x.v, x.n, sizeof(uint64_t), cmp_u64);
    *out = x.v;
    *count = x.n;
    return 0;
}

/* Multiset difference of two sorted lists, in place: A keeps A-B (N_A_ONLY), B keeps B-A. */
static int sorted_difference(uint64_t *a, size_t na, uint64_t *b, size_t nb, size_t *na_only,
                             size_t *nb_only)
{
    size_t i = 0, j = 0, oa = 0, ob = 0;
    while (i < na || j < nb) {
        if (j == nb || (i < na && a[i] < b[j]))
            a[oa++] = a[i++];
        else if (i == na || b[j] < a[i])
            b[ob++] = b[j++];
        else {
            i++;
            j++;
        }
    }
    *na_only = oa;
    *nb_only = ob;
    return 0;
}

static int check_no_overflow(struct qcow2_state *s, const uint64_t *list, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && list[j] == list[i])
            j++;
        uint64_t rc;
        int err = qcow2_refcount_get(s, list[i], &rc);
        if (err)
            return err;
        if (rc > s->refcount_max - (j - i))
            return img_error(s->img, -EINVAL,
                             "refcount of cluster %llu would overflow (refcount_bits=%u); "
                             "use a larger refcount_bits for snapshots",
                             (unsigned long long)list[i], s->refcount_bits);
        i = j;
    }
    return 0;
}

int qcow2_update_copied_flags(struct qcow2_state *s)
{
    int rc = 0;
    for (uint32_t i = 0; i < s->l1_size && !rc; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        uint64_t refs;
        if ((rc = qcow2_refcount_get(s, l2 >> s->cluster_bits, &refs)))
            break;
        uint64_t ne =
            refs == 1 ? (s->l1[i] | QCOW2_OFLAG_COPIED) : (s->l1[i] & ~QCOW2_OFLAG_COPIED);
        if (ne != s->l1[i]) {
            s->l1[i] = ne;
            if ((rc = qcow2_l1_write_entries(s, i, 1)))
                break;
        }
        uint8_t *t;
        if ((rc = qcow2_l2_load(s, l2, &t)))
            break;
        uint32_t lo = UINT32_MAX, hi = 0;
        for (uint32_t j = 0; j < s->l2_entries && !rc; j++) {
            uint64_t bm;
            uint64_t e = qcow2_l2_get(s, t, j, &bm);
            enum qcow2_ctype ty = qcow2_entry_type(s, e);
            uint64_t want = e & ~QCOW2_OFLAG_COPIED;
            if (ty == QCOW2_NORMAL || ty == QCOW2_ZERO_ALLOC) {
                uint64_t r;
                rc = qcow2_refcount_get(s, (e & QCOW2_OFFSET_MASK) >> s->cluster_bits, &r);
                /* refcount lookups may evict the table: reload it */
                if (!rc)
                    rc = qcow2_l2_load(s, l2, &t);
                if (!rc && r == 1)
                    want |= QCOW2_OFLAG_COPIED;
            }
            if (!rc && want != e) {
                qcow2_l2_put(s, t, j, want, bm);
                lo = VS_MIN(lo, j);
                hi = VS_MAX(hi, j + 1);
            }
        }
        if (!rc && lo < hi)
            rc = qcow2_l2_write(s, l2, t, lo, hi - lo);
    }
    return rc;
}

static int load_l1(struct qcow2_state *s, uint64_t offset, uint32_t size, uint64_t **out)
{
    *out = NULL;
    if (!size)
        return 0;
    uint64_t *l1 = vs_malloc((size_t)size * 8);
    if (!l1)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, l1, offset, (size_t)size * 8);
    if (rc) {
        free(l1);
        return rc;
    }
    for (uint32_t i = 0; i < size; i++)
        l1[i] = qcow2_be64((uint8_t *)&l1[i]);
    *out = l1;
    return 0;
}

static int find_snapshot(struct qcow2_state *s, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].id, name))
            return (int)i;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].name, name))
            return (int)i;
    return -1;
}

static int check_writable(struct qcow2_state *s)
{
    if (!s->writable)
        return img_error(s->img, -EROFS, "image is opened read-only");
    if (s->corrupt)
        return img_error(s->img, -EIO, "image is marked corrupt; refusing to write");
    return 0;
}

/* ---- the operations ---- */

static int snapshot_create_locked(struct qcow2_state *s, const char *name)
{
    struct img *img = s->img;
    int rc = check_writable(s);
    if (rc)
        return rc;
    if (!name || !name[0] || strlen(name) > 65535)
        return img_error(img, -EINVAL, "snapshot name must be 1..65535 bytes");
    if (find_snapshot(s, name) >= 0)
        return img_error(img, -EEXIST, "a snapshot named '%s' already exists", name);
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
        return img_error(img, -EFBIG, "too many snapshots (max %d)", QCOW2_MAX_SNAPSHOTS);
    unsigned long long max_id = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long long v = strtoull(s->snapshots[i].id, NULL, 10);
        if (v > max_id)
            max_id = v;
    }
    struct qcow2_snapshot sn;
    memset(&sn, 0, sizeof(sn));
    char idbuf[32];
    snprintf(idbuf, sizeof(idbuf), "%llu", max_id + 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sn.date_sec = (uint32_t)ts.tv_sec;
    sn.date_nsec = (uint32_t)ts.tv_nsec;
    sn.disk_size = img->size;
    sn.has_disk_size = true;
    sn.icount = UINT64_MAX;
    sn.has_icount = true;
    sn.l1_size = s->l1_size;

    /* 1: every cluster reachable from the active L1 gets one more reference */
    uint64_t *refs = NULL;
    size_t nrefs = 0;
    if ((rc = qcow2_l1_collect_refs(s, s->l1, s->l1_size, &refs, &nrefs)))
        return rc;
    if ((rc = check_no_overflow(s, refs, nrefs))) {
        free(refs);
        return rc;
    }
    /* 2: the L1 copy */
    uint64_t l1_bytes = VS_ALIGN_UP((uint64_t)s->l1_size * 8, s->cluster_size);
    if (s->l1_size) {
        uint8_t *buf = vs_calloc(1, l1_bytes);
        if (!buf) {
            free(refs);
            return -ENOMEM;
        }
        for (uint32_t i = 0; i < s->l1_size; i++)
            qcow2_put_be64(buf + i * 8, s->l1[i]);
        rc = qcow2_alloc_clusters(s, l1_bytes >> s->cluster_bits, &sn.l1_offset);
        if (!rc && (rc = qcow2_file_pwrite(s, buf, sn.l1_offset, l1_bytes, 0)))
            qcow2_free_clusters(s, sn.l1_offset, l1_bytes);
        free(buf);
        if (rc) {
            free(refs);
            return rc;
        }
    }
    rc = qcow2_refcount_update_sorted(s, refs, nrefs, 1);
    if (rc) {
        free(refs);
        if (s->l1_size)
            qcow2_free_clusters(s, sn.l1_offset, l1_bytes);
        return rc;
    }
    /* 3: the shared clusters are no longer ours alone */
    rc = qcow2_update_copied_flags(s);
    /* 4: publish */
    struct qcow2_snapshot *list = NULL;
    if (!rc) {
        sn.id = vs_strdup(idbuf);
        sn.name = vs_strdup(name);
        list = vs_calloc(s->nb_snapshots + 1, sizeof(*list));
        if (!sn.id || !sn.name || !list)
            rc = -ENOMEM;
    }
    if (!rc) {
        if (s->nb_snapshots)
            memcpy(list, s->snapshots, s->nb_snapshots * sizeof(*list));
        list[s->nb_snapshots] = sn;
        rc = s->file->drv->flush(s->file);
        if (!rc)
            rc = snapshot_table_write(s, list, s->nb_snapshots + 1);
    }
    if (rc) {
        free(list);
        free(sn.id);
        free(sn.name);
        qcow2_refcount_update_sorted(s, refs, nrefs, -1);
        if (s->l1_size)
            qcow2_free_clusters(s, sn.l1_offset, l1_bytes);
        qcow2_update_copied_flags(s);
        free(refs);
        qcow2_meta_rebuild(s);
        return rc;
    }
    free(refs);
    free(s->snapshots);
    s->snapshots = list;
    return qcow2_meta_rebuild(s);
}

int qcow2_snapshot_create(struct img *img, const char *name)
{
    pthread_mutex_lock(&img->lock);
    int rc = snapshot_create_locked(img->state, name);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

int qcow2_snapshot_list(struct img *img, struct img_snapshot **out, size_t *count)
{
    struct qcow2_state *s = img->state;
    *out = NULL;
    *count = 0;
    if (!s->nb_snapshots)
        return 0;
    struct img_snapshot *l = vs_calloc(s->nb_snapshots, sizeof(*l));
    if (!l)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        snprintf(l[i].id, sizeof(l[i].id), "%s", sn->id);
        l[i].name = vs_strdup(sn->name);
        if (!l[i].name) {
            img_snapshot_list_free(l, i);
            return -ENOMEM;
        }
        l[i].vm_state_size = sn->vm_state_size;
        l[i].date_sec = sn->date_sec;
        l[i].date_nsec = sn->date_nsec;
        l[i].vm_clock_nsec = sn->vm_clock_nsec;
        l[i].disk_size = sn->disk_size;
    }
    *out = l;
    *count = s->nb_snapshots;
    return 0;
}

static int snapshot_apply_locked(struct qcow2_state *s, const char *name)
{
    struct img *img = s->img;
    int rc = check_writable(s);
    if (rc)
        return rc;
    int idx = find_snapshot(s, name);
    if (idx < 0)
        return img_error(img, -ENOENT, "snapshot '%s' not found", name);
    struct qcow2_snapshot *sn = &s->snapshots[idx];
    uint64_t new_size = sn->has_disk_size ? sn->disk_size : img->size;
    if (qcow2_l1_size_for(s, new_size) > sn->l1_size)
        return img_error(img, -EINVAL, "snapshot '%s': L1 table too small for its disk size",
                         sn->name);
    uint64_t *snl1 = NULL, *old_refs = NULL, *new_refs = NULL;
    size_t n_old = 0, n_new = 0;
    if ((rc = load_l1(s, sn->l1_offset, sn->l1_size, &snl1)))
        return rc;
    if ((rc = qcow2_l1_collect_refs(s, snl1, sn->l1_size, &new_refs, &n_new)) ||
        (rc = qcow2_l1_collect_refs(s, s->l1, s->l1_size, &old_refs, &n_old)))
        goto out;
    /* only the difference changes: clusters both tables share keep their count throughout,
     * so a narrow refcount width can't overflow half way */
    size_t n_inc = 0, n_dec = 0;
    if ((rc = sorted_difference(new_refs, n_new, old_refs, n_old, &n_inc, &n_dec)))
        goto out;
    if ((rc = check_no_overflow(s, new_refs, n_inc)))
        goto out;
    if ((rc = qcow2_refcount_update_sorted(s, new_refs, n_inc, 1)))
        goto out;
    if (sn->l1_size > s->l1_size && (rc = qcow2_l1_grow(s, sn->l1_size))) {
        qcow2_refcount_update_sorted(s, new_refs, n_inc, -1);
        goto out;
    }
    for (uint32_t i = 0; i < s->l1_size; i++)
        s->l1[i] = i < sn->l1_size ? snl1[i] : 0;
    if ((rc = qcow2_l1_write_entries(s, 0, s->l1_size)) || (rc = s->file->drv->flush(s->file)))
        goto out; /* the active table is now half old, half new: check -r repairs the counts */
    qcow2_cache_clear(&s->l2_cache);
    if ((rc = qcow2_meta_rebuild(s)))
        goto out;
    if ((rc = qcow2_refcount_update_sorted(s, old_refs, n_dec, -1)))
        goto out;
    if (new_size != img->size) {
        img->size = new_size;
        if ((rc = qcow2_write_header_size(s)))
            goto out;
    }
    rc = qcow2_update_copied_flags(s);
out:
    free(snl1);
    free(old_refs);
    free(new_refs);
    qcow2_meta_rebuild(s);
    return rc;
}

int qcow2_snapshot_apply(struct img *img, const char *name)
{
    pthread_mutex_lock(&img->lock);
    int rc = snapshot_apply_locked(img->state, name);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

static int snapshot_delete_locked(struct qcow2_state *s, const char *name)
{
    struct img *img = s->img;
    int rc = check_writable(s);
    if (rc)
        return rc;
    int idx = find_snapshot(s, name);
    if (idx < 0)
        return img_error(img, -ENOENT, "snapshot '%s' not found", name);
    struct qcow2_snapshot sn = s->snapshots[idx];
    uint64_t *snl1 = NULL, *refs = NULL;
    size_t nrefs = 0;
    if ((rc = load_l1(s, sn.l1_offset, sn.l1_size, &snl1)) ||
        (rc = qcow2_l1_collect_refs(s, snl1, sn.l1_size, &refs, &nrefs))) {
        free(snl1);
        return rc;
    }
    free(snl1);
    struct qcow2_snapshot *list = vs_calloc(s->nb_snapshots, sizeof(*list));
    if (!list) {
        free(refs);
        return -ENOMEM;
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if ((int)i != idx)
            list[n++] = s->snapshots[i];
    /* 1: unpublish */
    if ((rc = snapshot_table_write(s, list, n))) {
        free(list);
        free(refs);
        return rc;
    }
    free(s->snapshots);
    s->snapshots = list;
    free(sn.id);
    free(sn.name);
    free(sn.unknown_extra);
    qcow2_meta_rebuild(s);
    /* 2: drop its references, its L1 copy; the active tables may be ours alone again */
    rc = qcow2_refcount_update_sorted(s, refs, nrefs, -1);
    free(refs);
    if (!rc && sn.l1_size)
        rc = qcow2_free_clusters(s, sn.l1_offset,
                                 VS_ALIGN_UP((uint64_t)sn.l1_size * 8, s->cluster_size));
    if (!rc)
        rc = qcow2_update_copied_flags(s);
    int rc2 = qcow2_meta_rebuild(s);
    return rc ? rc : rc2;
}

int qcow2_snapshot_delete(struct img *img, const char *name)
{
    pthread_mutex_lock(&img->lock);
    int rc = snapshot_delete_locked(img->state, name);
    pthread_mutex_unlock(&img->lock);
    return rc;
}
