/*
 * lib/img/qcow2-io.c — guest I/O for qcow2: mapping guest offsets through L1/L2 to host runs,
 * reads, writes (in place, or allocating with copy-on-write), compressed writes, discard,
 * zeroing, block status, make_empty and preallocation.
 *
 * The idea: under the lock we only decide — find the longest run of guest bytes that maps to one
 * contiguous host range (or to zeros, backing, compressed data) — and then move the data with the
 * lock dropped. An allocating write reserves its guest clusters as "in flight" so a second writer
 * waits instead of allocating the same cluster twice, writes the data, and only then points the L2
 * entries at it; a cluster freed while other threads' transfers run is quarantined until they end.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "img/qcow2.h"

#define QCOW2_EXT_ALL_ALLOC 0x00000000ffffffffull
#define QCOW2_EXT_ALL_ZERO  0xffffffff00000000ull

/* ---- L2 entries ---- */

enum qcow2_ctype qcow2_entry_type(const struct qcow2_state *s, uint64_t entry)
{
    if (entry & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_COMPRESSED;
    if (!s->extended_l2 && (entry & QCOW2_OFLAG_ZERO))
        return (entry & QCOW2_OFFSET_MASK) ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN;
    if (entry & QCOW2_OFFSET_MASK)
        return QCOW2_NORMAL;
    return QCOW2_UNALLOCATED;
}

uint64_t qcow2_l2_get(const struct qcow2_state *s, const uint8_t *table, uint32_t index,
                      uint64_t *bitmap)
{
    const uint8_t *p = table + (size_t)index * s->l2_entry_size;
    if (bitmap)
        *bitmap = s->extended_l2 ? qcow2_be64(p + 8) : 0;
    return qcow2_be64(p);
}

void qcow2_l2_put(const struct qcow2_state *s, uint8_t *table, uint32_t index, uint64_t entry,
                  uint64_t bitmap)
{
    uint8_t *p = table + (size_t)index * s->l2_entry_size;
    qcow2_put_be64(p, entry);
    if (s->extended_l2)
        qcow2_put_be64(p + 8, bitmap);
}

int qcow2_l2_write(struct qcow2_state *s, uint64_t l2_offset, const uint8_t *table, uint32_t first,
                   uint32_t count)
{
    if (!count)
        return 0;
    size_t es = s->l2_entry_size;
    int rc = qcow2_file_pwrite(s, table + first * es, l2_offset + first * es, count * es,
                               QCOW2_META_ACTIVE_L2);
    if (rc)
        qcow2_cache_drop(&s->l2_cache, l2_offset); /* keep the cache equal to the file */
    return rc;
}

int qcow2_l2_load(struct qcow2_state *s, uint64_t l2_offset, uint8_t **out)
{
    uint8_t *t = qcow2_cache_find(&s->l2_cache, l2_offset);
    if (t) {
        *out = t;
        return 0;
    }
    if (l2_offset & (s->cluster_size - 1))
        return img_error(s->img, -EIO, "L2 table offset %#llx is not cluster aligned",
                         (unsigned long long)l2_offset);
    t = qcow2_cache_insert(&s->l2_cache, l2_offset);
    if (!t)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, t, l2_offset, s->cluster_size);
    if (rc) {
        qcow2_cache_drop(&s->l2_cache, l2_offset);
        return rc;
    }
    *out = t;
    return 0;
}

/* The L2 table covering guest cluster GC, or NULL (and *l2_offset 0) when none is allocated. */
static int l2_table_for(struct qcow2_state *s, uint64_t gc, uint8_t **table, uint64_t *l2_offset)
{
    uint64_t l1i = gc >> s->l2_bits;
    *table = NULL;
    *l2_offset = 0;
    if (l1i >= s->l1_size)
        return 0;
    uint64_t off = s->l1[l1i] & QCOW2_OFFSET_MASK;
    if (!off)
        return 0;
    *l2_offset = off;
    return qcow2_l2_load(s, off, table);
}

/* Whether a write to this cluster must allocate (it is not ours alone, or not plain data). */
static bool needs_alloc(const struct qcow2_state *s, uint64_t entry, uint64_t bitmap)
{
    if (qcow2_entry_type(s, entry) != QCOW2_NORMAL || !(entry & QCOW2_OFLAG_COPIED))
        return true;
    return s->extended_l2 && bitmap != QCOW2_EXT_ALL_ALLOC;
}

/* ---- mapping ---- */

struct qcow2_extent {
    enum qcow2_ctype type; /* ZERO_ALLOC is reported as ZERO_PLAIN */
    uint64_t len;
    uint64_t host;  /* host offset of the first byte, when host_valid */
    bool host_valid; /* NORMAL, and zero/unallocated units of an allocated cluster (as qemu) */
    uint64_t entry; /* COMPRESSED: the L2 entry */
};

/* Status of one unit (a cluster, or a subcluster with extended L2 entries). *host is set (non-zero)
 * whenever the unit lies in an allocated host cluster — also for zero or unallocated subclusters
 * and preallocated zero clusters, which qemu's map reports with their offset too. */
static int unit_state(struct qcow2_state *s, const uint8_t *table, uint32_t idx, uint32_t sc,
                      uint64_t *host, uint64_t *entry_out)
{
    uint64_t bm;
    uint64_t e = qcow2_l2_get(s, table, idx, &bm);
    enum qcow2_ctype t = qcow2_entry_type(s, e);
    *entry_out = e;
    if (t == QCOW2_COMPRESSED)
        return t;
    uint64_t off = e & QCOW2_OFFSET_MASK;
    if (off & (s->cluster_size - 1))
        return img_error(s->img, -EIO, "L2 entry %#llx: data cluster offset is not cluster aligned",
                         (unsigned long long)e);
    if (!s->extended_l2) {
        if (t == QCOW2_ZERO_ALLOC)
            t = QCOW2_ZERO_PLAIN;
        *host = off;
        return t;
    }
    bool alloc = (bm >> sc) & 1, zero = (bm >> (32 + sc)) & 1;
    if (alloc && zero)
        return img_error(s->img, -EIO,
                         "L2 entry %#llx bitmap %#llx: subcluster %u both allocated and zero",
                         (unsigned long long)e, (unsigned long long)bm, sc);
    if (off)
        *host = off + ((uint64_t)sc << s->subcluster_bits);
    if (zero)
        return QCOW2_ZERO_PLAIN;
    if (alloc) {
        if (!off)
            return img_error(s->img, -EIO,
                             "L2 entry %#llx: allocated subcluster without a host cluster",
                             (unsigned long long)e);
        *host = off + ((uint64_t)sc << s->subcluster_bits);
        return QCOW2_NORMAL;
    }
    return QCOW2_UNALLOCATED;
}

/* The longest run starting at OFF (at most LEN bytes, within one L2 table) with one status. */
static int map_extent(struct qcow2_state *s, uint64_t off, uint64_t len, struct qcow2_extent *x)
{
    uint64_t gc = off >> s->cluster_bits;
    uint8_t *table;
    uint64_t l2_offset;
    int rc = l2_table_for(s, gc, &table, &l2_offset);
    if (rc)
        return rc;
    memset(x, 0, sizeof(*x));
    uint32_t span_bits = s->cluster_bits + s->l2_bits;
    uint64_t table_end = ((off >> span_bits) + 1) << span_bits;
    if (!table) {
        x->type = QCOW2_UNALLOCATED;
        x->len = VS_MIN(len, table_end - off);
        return 0;
    }
    uint32_t ub = s->subcluster_bits;
    uint64_t unit = 1ull << ub;
    uint32_t units_per_cluster_bits = s->cluster_bits - ub;
    uint64_t u = off >> ub;
    uint64_t host0 = 0, entry = 0;
    uint32_t idx = (uint32_t)((u >> units_per_cluster_bits) & (s->l2_entries - 1));
    uint32_t sc = (uint32_t)(u & ((1u << units_per_cluster_bits) - 1));
    int t0 = unit_state(s, table, idx, sc, &host0, &entry);
    if (t0 < 0)
        return t0;
    x->type = (enum qcow2_ctype)t0;
    if (t0 == QCOW2_COMPRESSED) {
        x->entry = entry;
        x->len = VS_MIN(len, s->cluster_size - (off & (s->cluster_size - 1)));
        return 0;
    }
    uint64_t in = off & (unit - 1);
    uint64_t n = unit - in;
    uint64_t next_host = host0 + unit;
    uint64_t end_unit = (table_end >> ub);
    while (n < len && ++u < end_unit) {
        uint64_t h = 0;
        idx = (uint32_t)((u >> units_per_cluster_bits) & (s->l2_entries - 1));
        sc = (uint32_t)(u & ((1u << units_per_cluster_bits) - 1));
        int t = unit_state(s, table, idx, sc, &h, &entry);
        if (t < 0)
            return t;
        if (t != t0 || (h != 0) != (host0 != 0) || (host0 && h != next_host))
            break;
        n += unit;
        next_host += unit;
    }
    x->len = VS_MIN(n, len);
    x->host_valid = host0 != 0;
    x->host = host0 ? host0 + in : 0;
    return 0;
}

/* ---- reads ---- */

static int read_compressed(struct qcow2_state *s, uint64_t entry, uint8_t *out)
{
    uint64_t coff, csize;
    qcow2_compressed_range(s, entry, &coff, &csize);
    uint8_t *in = vs_malloc(csize);
    if (!in)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, in, coff, csize);
    if (!rc) {
        rc = qcow2_decompress(s->compression_type, out, s->cluster_size, in, csize);
        if (rc)
            rc = img_error(s->img, -EIO, "compressed cluster at %#llx (%llu bytes) is corrupt",
                           (unsigned long long)coff, (unsigned long long)csize);
    }
    free(in);
    return rc;
}

/* Guest bytes [off, off+len) of the backing chain, zeros beyond this image's own size. */
static int read_backing_clipped(struct img *img, uint8_t *buf, uint64_t off, uint64_t len)
{
    uint64_t n = off >= img->size ? 0 : VS_MIN(len, img->size - off);
    int rc = n ? img_read_backing(img, buf, off, n) : 0;
    if (!rc && n < len)
        memset(buf + n, 0, len - n);
    return rc;
}

int qcow2_pread(struct img *img, void *vbuf, uint64_t offset, size_t len)
{
    struct qcow2_state *s = img->state;
    uint8_t *buf = vbuf;
    while (len) {
        struct qcow2_extent x;
        pthread_mutex_lock(&img->lock);
        int rc = map_extent(s, offset, len, &x);
        if (rc) {
            pthread_mutex_unlock(&img->lock);
            return rc;
        }
        switch (x.type) {
        case QCOW2_NORMAL:
            qcow2_io_begin(s);
            pthread_mutex_unlock(&img->lock);
            rc = qcow2_file_pread(s, buf, x.host, x.len);
            pthread_mutex_lock(&img->lock);
            qcow2_io_end(s);
            pthread_mutex_unlock(&img->lock);
            break;
        case QCOW2_COMPRESSED: {
            qcow2_io_begin(s);
            pthread_mutex_unlock(&img->lock);
            uint8_t *cbuf = vs_malloc(s->cluster_size);
            rc = cbuf ? read_compressed(s, x.entry, cbuf) : -ENOMEM;
            if (!rc)
                memcpy(buf, cbuf + (offset & (s->cluster_size - 1)), x.len);
            free(cbuf);
            pthread_mutex_lock(&img->lock);
            qcow2_io_end(s);
            pthread_mutex_unlock(&img->lock);
            break;
        }
        case QCOW2_UNALLOCATED:
            pthread_mutex_unlock(&img->lock);
            rc = read_backing_clipped(img, buf, offset, x.len);
            break;
        default:
            pthread_mutex_unlock(&img->lock);
            memset(buf, 0, x.len);
            break;
        }
        if (rc)
            return rc;
        buf += x.len;
        offset += x.len;
        len -= x.len;
    }
    return 0;
}

/* The whole current content of guest cluster GC as its (old) L2 entry describes it. Called
 * without the lock: the clusters it reads stay referenced until the caller releases them. */
static int read_cluster_content(struct qcow2_state *s, uint64_t gc, uint64_t entry, uint64_t bitmap,
                                uint8_t *out)
{
    struct img *img = s->img;
    uint64_t goff = gc << s->cluster_bits;
    enum qcow2_ctype t = qcow2_entry_type(s, entry);
    if (t == QCOW2_COMPRESSED)
        return read_compressed(s, entry, out);
    if (!s->extended_l2) {
        switch (t) {
        case QCOW2_NORMAL:
            return qcow2_file_pread(s, out, entry & QCOW2_OFFSET_MASK, s->cluster_size);
        case QCOW2_UNALLOCATED:
            return read_backing_clipped(img, out, goff, s->cluster_size);
        default:
            memset(out, 0, s->cluster_size);
            return 0;
        }
    }
    for (uint32_t sc = 0; sc < 32; sc++) {
        uint8_t *p = out + ((size_t)sc << s->subcluster_bits);
        uint64_t soff = goff + ((uint64_t)sc << s->subcluster_bits);
        int rc = 0;
        if ((bitmap >> (32 + sc)) & 1)
            memset(p, 0, s->subcluster_size);
        else if ((bitmap >> sc) & 1)
            rc = qcow2_file_pread(s, p, (entry & QCOW2_OFFSET_MASK) + (soff - goff),
                                  s->subcluster_size);
        else
            rc = read_backing_clipped(img, p, soff, s->subcluster_size);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- in-flight allocations ---- */

static bool inflight_overlaps(const struct qcow2_state *s, uint64_t first, uint64_t count)
{
    for (int i = 0; i < QCOW2_MAX_INFLIGHT_ALLOCS; i++) {
        const struct qcow2_inflight_alloc *a = &s->allocs[i];
        if (a->used && first < a->first + a->count && a->first < first + count)
            return true;
    }
    return false;
}

static int inflight_add(struct qcow2_state *s, uint64_t first, uint64_t count)
{
    for (int i = 0; i < QCOW2_MAX_INFLIGHT_ALLOCS; i++) {
        if (!s->allocs[i].used) {
            s->allocs[i].used = true;
            s->allocs[i].first = first;
            s->allocs[i].count = count;
            return i;
        }
    }
    return -1;
}

static void inflight_remove(struct qcow2_state *s, int slot)
{
    s->allocs[slot].used = false;
    pthread_cond_broadcast(&s->alloc_done);
}

/* Wait (lock held) until no allocation in flight touches [first, first+count). */
static void inflight_wait(struct qcow2_state *s, uint64_t first, uint64_t count)
{
    while (inflight_overlaps(s, first, count))
        pthread_cond_wait(&s->alloc_done, &s->img->lock);
}

/* ---- L2 table allocation ---- */

/* Make the L2 table for L1 index L1I exist and be ours alone (copying a shared one). */
static int l2_prepare(struct qcow2_state *s, uint64_t l1i, uint64_t *l2_out)
{
    if (l1i >= s->l1_size)
        return img_error(s->img, -EIO, "guest offset beyond the L1 table (index %llu >= %u)",
                         (unsigned long long)l1i, s->l1_size);
    uint64_t e = s->l1[l1i];
    uint64_t old = e & QCOW2_OFFSET_MASK;
    int rc;
    if (old && (e & QCOW2_OFLAG_COPIED)) {
        *l2_out = old;
        return 0;
    }
    uint8_t *copy = vs_malloc(s->cluster_size);
    if (!copy)
        return -ENOMEM;
    if (old) {
        uint64_t refs;
        if ((rc = qcow2_refcount_get(s, old >> s->cluster_bits, &refs)))
            goto out;
        if (refs == 1) {
            s->l1[l1i] = old | QCOW2_OFLAG_COPIED;
            rc = qcow2_l1_write_entries(s, (uint32_t)l1i, 1);
            *l2_out = old;
            goto out;
        }
        uint8_t *t;
        if ((rc = qcow2_l2_load(s, old, &t)))
            goto out;
        memcpy(copy, t, s->cluster_size);
    } else {
        memset(copy, 0, s->cluster_size);
    }
    uint64_t n;
    if ((rc = qcow2_alloc_clusters(s, 1, &n)))
        goto out;
    if (s->fresh_start < n + s->cluster_size)
        s->fresh_start = n + s->cluster_size;
    if ((rc = qcow2_file_pwrite(s, copy, n, s->cluster_size, 0))) {
        qcow2_free_clusters(s, n, s->cluster_size);
        goto out;
    }
    uint8_t *t = qcow2_cache_insert(&s->l2_cache, n);
    if (t)
        memcpy(t, copy, s->cluster_size);
    if ((rc = qcow2_set_add(&s->meta, n >> s->cluster_bits, QCOW2_META_ACTIVE_L2)))
        goto out;
    s->l1[l1i] = n | QCOW2_OFLAG_COPIED;
    if ((rc = qcow2_l1_write_entries(s, (uint32_t)l1i, 1))) {
        s->l1[l1i] = e;
        goto out;
    }
    *l2_out = n;
    if (old) {
        qcow2_set_remove_bits(&s->meta, old >> s->cluster_bits, QCOW2_META_ACTIVE_L2);
        rc = qcow2_free_clusters(s, old, s->cluster_size);
    }
out:
    free(copy);
    return rc;
}

/* ---- writes ---- */

/* In-place run for a write at OFF: bytes of clusters that are ours and plain data. */
static int direct_run(struct qcow2_state *s, uint64_t off, uint64_t len, uint64_t *host,
                      uint64_t *n)
{
    *n = 0;
    uint64_t gc = off >> s->cluster_bits;
    uint8_t *table;
    uint64_t l2;
    int rc = l2_table_for(s, gc, &table, &l2);
    if (rc || !table || !(s->l1[gc >> s->l2_bits] & QCOW2_OFLAG_COPIED))
        return rc;
    uint32_t idx = (uint32_t)(gc & (s->l2_entries - 1));
    uint64_t bm;
    uint64_t e = qcow2_l2_get(s, table, idx, &bm);
    if (needs_alloc(s, e, bm))
        return 0;
    uint64_t h = e & QCOW2_OFFSET_MASK;
    if (h & (s->cluster_size - 1))
        return img_error(s->img, -EIO, "L2 entry %#llx: data cluster offset is not aligned",
                         (unsigned long long)e);
    uint64_t in = off & (s->cluster_size - 1);
    uint64_t got = s->cluster_size - in;
    uint64_t next = h + s->cluster_size;
    while (got < len && ++idx < s->l2_entries) {
        e = qcow2_l2_get(s, table, idx, &bm);
        if (needs_alloc(s, e, bm) || (e & QCOW2_OFFSET_MASK) != next)
            break;
        got += s->cluster_size;
        next += s->cluster_size;
    }
    *host = h + in;
    *n = VS_MIN(got, len);
    return 0;
}

/* Write BUF (NULL: zeros) to guest [off, off+len) of freshly allocated host clusters starting at
 * HOST for guest cluster GC0..; OLD holds the previous entries (entry, bitmap pairs). */
static int write_new_clusters(struct qcow2_state *s, const uint8_t *buf, uint64_t off, uint64_t len,
                              uint64_t gc0, uint64_t k, uint64_t host, const uint64_t *old,
                              bool fresh)
{
    uint64_t cs = s->cluster_size;
    uint64_t end = off + len;
    uint8_t *cbuf = NULL;
    int rc = 0;
    uint64_t j = 0;
    while (j < k && !rc) {
        uint64_t cstart = (gc0 + j) << s->cluster_bits;
        uint64_t cend = cstart + cs;
        uint64_t dstart = VS_MAX(cstart, off), dend = VS_MIN(cend, end);
        uint64_t hoff = host + j * cs;
        if (dstart == cstart && dend == cend) {
            /* whole clusters: one transfer for the run */
            uint64_t m = 1;
            while (j + m < k && ((gc0 + j + m + 1) << s->cluster_bits) <= end)
                m++;
            if (buf)
                rc = s->file->drv->pwrite(s->file, buf + (cstart - off), hoff, m * cs);
            else if (!fresh)
                rc = img_file_write_zeroes(s->file, hoff, m * cs);
            j += m;
            continue;
        }
        enum qcow2_ctype t = qcow2_entry_type(s, old[2 * j]);
        bool old_zero = t == QCOW2_ZERO_PLAIN || t == QCOW2_ZERO_ALLOC ||
                        (t == QCOW2_UNALLOCATED && !s->img->backing);
        if (fresh && old_zero) {
            /* the rest of a never-written cluster reads as zeros already */
            if (buf)
                rc = s->file->drv->pwrite(s->file, buf + (dstart - off), hoff + (dstart - cstart),
                                          dend - dstart);
        } else {
            if (!cbuf && !(cbuf = vs_aligned_alloc(4096, cs)))
                return -ENOMEM;
            if (old_zero)
                memset(cbuf, 0, cs);
            else
                rc = read_cluster_content(s, gc0 + j, old[2 * j], old[2 * j + 1], cbuf);
            if (!rc) {
                if (buf)
                    memcpy(cbuf + (dstart - cstart), buf + (dstart - off), dend - dstart);
                else
                    memset(cbuf + (dstart - cstart), 0, dend - dstart);
                rc = s->file->drv->pwrite(s->file, cbuf, hoff, cs);
            }
        }
        j++;
    }
    free(cbuf);
    return rc;
}

#define QCOW2_MAX_ALLOC_RUN (64u << 20)

/* Allocating write of the clusters at the start of [off, off+len). Called with the lock held;
 * returns with it released, *done = bytes written (0: state changed, look again). */
static int alloc_write(struct qcow2_state *s, const uint8_t *buf, uint64_t off, uint64_t len,
                       uint64_t *done)
{
    struct img *img = s->img;
    *done = 0;
    uint64_t gc0 = off >> s->cluster_bits;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    uint64_t in_table = s->l2_entries - (gc0 & (s->l2_entries - 1));
    uint64_t nclust = VS_MIN(last - gc0 + 1, in_table);
    nclust = VS_MIN(nclust, VS_MAX(1, QCOW2_MAX_ALLOC_RUN >> s->cluster_bits));
    if (inflight_overlaps(s, gc0, 1)) {
        inflight_wait(s, gc0, 1);
        pthread_mutex_unlock(&img->lock);
        return 0;
    }
    uint64_t l2;
    int rc = l2_prepare(s, gc0 >> s->l2_bits, &l2);
    uint8_t *table = NULL;
    if (!rc)
        rc = qcow2_l2_load(s, l2, &table);
    if (rc) {
        pthread_mutex_unlock(&img->lock);
        return rc;
    }
    uint32_t idx0 = (uint32_t)(gc0 & (s->l2_entries - 1));
    uint64_t bm;
    uint64_t e = qcow2_l2_get(s, table, idx0, &bm);
    if (!needs_alloc(s, e, bm)) {
        pthread_mutex_unlock(&img->lock); /* became plain data meanwhile: write in place */
        return 0;
    }
    uint64_t k = 1;
    while (k < nclust) {
        e = qcow2_l2_get(s, table, idx0 + (uint32_t)k, &bm);
        if (!needs_alloc(s, e, bm) || inflight_overlaps(s, gc0 + k, 1))
            break;
        k++;
    }
    int slot = inflight_add(s, gc0, k);
    if (slot < 0) {
        pthread_cond_wait(&s->alloc_done, &img->lock);
        pthread_mutex_unlock(&img->lock);
        return 0;
    }
    uint64_t *old = vs_malloc(k * 2 * sizeof(uint64_t));
    if (!old) {
        inflight_remove(s, slot);
        pthread_mutex_unlock(&img->lock);
        return -ENOMEM;
    }
    for (uint64_t j = 0; j < k; j++)
        old[2 * j] = qcow2_l2_get(s, table, idx0 + (uint32_t)j, &old[2 * j + 1]);
    uint64_t fresh_before = s->fresh_start;
    uint64_t host;
    rc = qcow2_alloc_clusters(s, k, &host);
    if (!rc)
        rc = qcow2_check_overlap(s, host, k * s->cluster_size, 0);
    if (rc) {
        inflight_remove(s, slot);
        pthread_mutex_unlock(&img->lock);
        free(old);
        return rc;
    }
    bool fresh = host >= fresh_before;
    if (s->fresh_start < host + k * s->cluster_size)
        s->fresh_start = host + k * s->cluster_size;
    qcow2_io_begin(s);
    pthread_mutex_unlock(&img->lock);

    uint64_t wlen = VS_MIN(off + len, (gc0 + k) << s->cluster_bits) - off;
    rc = write_new_clusters(s, buf, off, wlen, gc0, k, host, old, fresh);

    pthread_mutex_lock(&img->lock);
    qcow2_io_end(s);
    if (rc) {
        qcow2_free_clusters(s, host, k * s->cluster_size); /* nothing points there yet */
        goto out;
    }
    if ((rc = qcow2_l2_load(s, l2, &table)))
        goto out; /* clusters leak: acceptable */
    for (uint64_t j = 0; j < k; j++)
        qcow2_l2_put(s, table, idx0 + (uint32_t)j,
                     (host + j * s->cluster_size) | QCOW2_OFLAG_COPIED, QCOW2_EXT_ALL_ALLOC);
    if ((rc = qcow2_l2_write(s, l2, table, idx0, (uint32_t)k)))
        goto out;
    for (uint64_t j = 0; j < k; j++) {
        int r2 = qcow2_release_l2_entry(s, old[2 * j]);
        if (r2 && !rc)
            rc = r2;
    }
    *done = wlen;
out:
    inflight_remove(s, slot);
    pthread_mutex_unlock(&img->lock);
    free(old);
    return rc;
}

static int write_internal(struct img *img, const uint8_t *buf, uint64_t offset, uint64_t len)
{
    struct qcow2_state *s = img->state;
    if (!s->writable)
        return img_error(img, -EROFS, "image is opened read-only");
    pthread_mutex_lock(&img->lock);
    int rc = s->corrupt ? img_error(img, -EIO, "image is marked corrupt; refusing to write")
                        : qcow2_mark_dirty(s);
    pthread_mutex_unlock(&img->lock);
    if (rc)
        return rc;
    while (len) {
        pthread_mutex_lock(&img->lock);
        uint64_t host, n;
        rc = direct_run(s, offset, len, &host, &n);
        if (!rc && n)
            rc = qcow2_check_overlap(s, host, n, 0);
        if (rc) {
            pthread_mutex_unlock(&img->lock);
            return rc;
        }
        if (n) {
            qcow2_io_begin(s);
            pthread_mutex_unlock(&img->lock);
            if (buf)
                rc = s->file->drv->pwrite(s->file, buf, host, n);
            else
                rc = img_file_write_zeroes(s->file, host, n);
            pthread_mutex_lock(&img->lock);
            qcow2_io_end(s);
            pthread_mutex_unlock(&img->lock);
        } else {
            rc = alloc_write(s, buf, offset, len, &n);
        }
        if (rc)
            return rc;
        if (buf)
            buf += n;
        offset += n;
        len -= n;
    }
    return 0;
}

int qcow2_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    return write_internal(img, buf, offset, len);
}

int qcow2_zero_range(struct img *img, uint64_t offset, uint64_t len)
{
    return write_internal(img, NULL, offset, len);
}

/* ---- compressed writes ---- */

static int write_compressed_cluster(struct qcow2_state *s, uint64_t gc, const uint8_t *data,
                                    size_t clen)
{
    struct img *img = s->img;
    uint64_t cs = s->cluster_size;
    uint8_t *out = vs_malloc(cs);
    if (!out)
        return -ENOMEM;
    ssize_t n = qcow2_compress(s->compression_type, out, cs - 1, data, cs);
    if (n == -ENOSPC) {
        free(out); /* incompressible: store it plainly */
        return write_internal(img, data, gc << s->cluster_bits, clen);
    }
    if (n < 0) {
        free(out);
        return img_error(img, (int)n, "compressing cluster %llu failed", (unsigned long long)gc);
    }
    pthread_mutex_lock(&img->lock);
    int rc = s->corrupt ? img_error(img, -EIO, "image is marked corrupt; refusing to write")
                        : qcow2_mark_dirty(s);
    if (!rc)
        inflight_wait(s, gc, 1);
    uint64_t l2 = 0, hoff = 0;
    uint8_t *table = NULL;
    if (!rc)
        rc = l2_prepare(s, gc >> s->l2_bits, &l2);
    if (!rc)
        rc = qcow2_alloc_bytes(s, (uint64_t)n, &hoff);
    if (!rc && hoff > s->cluster_offset_mask) {
        qcow2_free_clusters(s, hoff, (uint64_t)n);
        rc = img_error(img, -EFBIG, "compressed data offset %#llx too large for this cluster size",
                       (unsigned long long)hoff);
    }
    if (!rc) {
        if (s->fresh_start < VS_ALIGN_UP(hoff + (uint64_t)n, cs))
            s->fresh_start = VS_ALIGN_UP(hoff + (uint64_t)n, cs);
        rc = qcow2_file_pwrite(s, out, hoff, (size_t)n, 0);
        if (rc)
            qcow2_free_clusters(s, hoff, (uint64_t)n);
    }
    if (!rc)
        rc = qcow2_l2_load(s, l2, &table);
    if (!rc) {
        uint32_t idx = (uint32_t)(gc & (s->l2_entries - 1));
        uint64_t old = qcow2_l2_get(s, table, idx, NULL);
        uint64_t sectors = ((hoff + (uint64_t)n - 1) >> 9) - (hoff >> 9);
        uint64_t entry = QCOW2_OFLAG_COMPRESSED | (sectors << s->csize_shift) | hoff;
        qcow2_l2_put(s, table, idx, entry, 0);
        rc = qcow2_l2_write(s, l2, table, idx, 1);
        if (!rc)
            rc = qcow2_release_l2_entry(s, old);
    }
    pthread_mutex_unlock(&img->lock);
    free(out);
    return rc;
}

int qcow2_pwrite_compressed(struct img *img, const void *vbuf, uint64_t offset, size_t len)
{
    struct qcow2_state *s = img->state;
    const uint8_t *buf = vbuf;
    uint64_t cs = s->cluster_size;
    if (!s->writable)
        return img_error(img, -EROFS, "image is opened read-only");
    if (offset & (cs - 1))
        return img_error(img, -EINVAL, "compressed write at %llu is not cluster aligned",
                         (unsigned long long)offset);
    if ((len & (cs - 1)) && offset + len != img->size)
        return img_error(img, -EINVAL, "compressed write of %zu bytes is not whole clusters", len);
    uint8_t *pad = NULL;
    int rc = 0;
    while (len && !rc) {
        size_t clen = (size_t)VS_MIN((uint64_t)len, cs);
        const uint8_t *data = buf;
        if (clen < cs) {
            pad = vs_calloc(1, cs);
            if (!pad)
                return -ENOMEM;
            memcpy(pad, buf, clen);
            data = pad;
        }
        rc = write_compressed_cluster(s, offset >> s->cluster_bits, data, clen);
        buf += clen;
        offset += clen;
        len -= clen;
    }
    free(pad);
    return rc;
}

/* ---- discard and zeroing ---- */

int qcow2_discard_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len, bool to_zero,
                           bool unmap, bool full)
{
    uint64_t gc = offset >> s->cluster_bits;
    uint64_t count = len >> s->cluster_bits;
    bool zero_flag = s->version >= 3;
    bool backing = s->img->backing_name != NULL;
    int rc = 0;
    while (count && !rc) {
        uint64_t in_table = s->l2_entries - (gc & (s->l2_entries - 1));
        uint64_t n = VS_MIN(count, in_table);
        inflight_wait(s, gc, n);
        uint64_t l1i = gc >> s->l2_bits;
        bool have_table = l1i < s->l1_size && (s->l1[l1i] & QCOW2_OFFSET_MASK);
        bool want_zero = zero_flag && !full && (to_zero || backing);
        if (!have_table && !(want_zero && backing)) {
            gc += n; /* nothing allocated here and nothing would shine through */
            count -= n;
            continue;
        }
        uint64_t l2;
        uint8_t *table;
        if ((rc = l2_prepare(s, l1i, &l2)) || (rc = qcow2_l2_load(s, l2, &table)))
            break;
        uint32_t idx0 = (uint32_t)(gc & (s->l2_entries - 1));
        uint64_t *old = vs_malloc(n * sizeof(uint64_t));
        if (!old)
            return -ENOMEM;
        uint32_t lo = UINT32_MAX, hi = 0;
        for (uint64_t j = 0; j < n; j++) {
            uint32_t idx = idx0 + (uint32_t)j;
            uint64_t bm;
            uint64_t e = qcow2_l2_get(s, table, idx, &bm);
            enum qcow2_ctype t = qcow2_entry_type(s, e);
            uint64_t ne, nbm = 0;
            bool keep = to_zero && !unmap && (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) &&
                        (e & QCOW2_OFLAG_COPIED);
            old[j] = keep ? 0 : e;
            if (want_zero) {
                if (s->extended_l2) {
                    ne = keep ? (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0;
                    nbm = QCOW2_EXT_ALL_ZERO;
                } else {
                    ne = (keep ? (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0) |
                         QCOW2_OFLAG_ZERO;
                }
            } else {
                ne = 0;
            }
            if (ne == e && nbm == bm) {
                old[j] = 0;
                continue;
            }
            qcow2_l2_put(s, table, idx, ne, nbm);
            lo = VS_MIN(lo, idx);
            hi = VS_MAX(hi, idx + 1);
        }
        if (lo < hi)
            rc = qcow2_l2_write(s, l2, table, lo, hi - lo);
        for (uint64_t j = 0; j < n && !rc; j++)
            rc = qcow2_release_l2_entry(s, old[j]);
        free(old);
        gc += n;
        count -= n;
    }
    return rc;
}

/* Whole clusters inside [offset, offset+len); the disk's last partial cluster counts as whole. */
static void whole_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len, uint64_t *start,
                           uint64_t *end)
{
    uint64_t e = offset + len;
    *start = VS_ALIGN_UP(offset, s->cluster_size);
    *end =
        (e == s->img->size) ? VS_ALIGN_UP(e, s->cluster_size) : VS_ALIGN_DOWN(e, s->cluster_size);
    if (*end < *start)
        *end = *start;
}

int qcow2_discard(struct img *img, uint64_t offset, uint64_t len)
{
    struct qcow2_state *s = img->state;
    if (!s->writable)
        return img_error(img, -EROFS, "image is opened read-only");
    uint64_t start, end;
    whole_clusters(s, offset, len, &start, &end);
    if (end <= start)
        return 0;
    pthread_mutex_lock(&img->lock);
    int rc = s->corrupt ? img_error(img, -EIO, "image is marked corrupt; refusing to write")
                        : qcow2_mark_dirty(s);
    if (!rc)
        rc = qcow2_discard_clusters(s, start, end - start, false, true, false);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

int qcow2_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    struct qcow2_state *s = img->state;
    if (!s->writable)
        return img_error(img, -EROFS, "image is opened read-only");
    uint64_t start, end;
    whole_clusters(s, offset, len, &start, &end);
    bool can_meta = s->version >= 3 || !img->backing_name;
    if (end <= start || !can_meta)
        return write_internal(img, NULL, offset, len); /* v2 with backing: real zeros */
    int rc = 0;
    if (offset < start)
        rc = write_internal(img, NULL, offset, start - offset);
    if (!rc) {
        pthread_mutex_lock(&img->lock);
        rc = s->corrupt ? img_error(img, -EIO, "image is marked corrupt; refusing to write")
                        : qcow2_mark_dirty(s);
        if (!rc) {
            if (s->version >= 3)
                rc = qcow2_discard_clusters(s, start, end - start, true,
                                            (flags & IMG_ZERO_MAY_UNMAP) != 0, false);
            else
                rc = qcow2_discard_clusters(s, start, end - start, false, true, true);
        }
        pthread_mutex_unlock(&img->lock);
    }
    if (!rc && offset + len > end)
        rc = write_internal(img, NULL, end, offset + len - end);
    return rc;
}

/* ---- block status ---- */

int qcow2_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                       uint64_t *host_offset)
{
    struct qcow2_state *s = img->state;
    struct qcow2_extent x, y;
    *host_offset = UINT64_MAX;
    pthread_mutex_lock(&img->lock);
    int rc = map_extent(s, offset, len, &x);
    if (rc) {
        pthread_mutex_unlock(&img->lock);
        return rc;
    }
    /* merge following extents of the same kind (they end at L2 table or cluster boundaries) */
    while (x.len < len) {
        if (map_extent(s, offset + x.len, len - x.len, &y) || y.type != x.type ||
            y.host_valid != x.host_valid || (x.host_valid && y.host != x.host + x.len))
            break;
        x.len += y.len;
    }
    pthread_mutex_unlock(&img->lock);
    *pnum = x.len;
    if (x.host_valid && x.type != QCOW2_COMPRESSED)
        *host_offset = x.host;
    switch (x.type) {
    case QCOW2_NORMAL:
        return IMG_DS_DATA;
    case QCOW2_COMPRESSED:
        return IMG_DS_COMPRESSED;
    case QCOW2_UNALLOCATED:
        return IMG_DS_UNALLOCATED;
    default:
        return IMG_DS_ZERO;
    }
}

/* ---- make_empty ---- */

int qcow2_make_empty(struct img *img)
{
    struct qcow2_state *s = img->state;
    if (!s->writable)
        return img_error(img, -EROFS, "image is opened read-only");
    uint8_t *copy = vs_malloc(s->cluster_size);
    if (!copy)
        return -ENOMEM;
    pthread_mutex_lock(&img->lock);
    int rc = s->corrupt ? img_error(img, -EIO, "image is marked corrupt; refusing to write") : 0;
    for (uint32_t i = 0; !rc && i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        inflight_wait(s, (uint64_t)i << s->l2_bits, s->l2_entries);
        uint8_t *t;
        if ((rc = qcow2_l2_load(s, l2, &t)))
            break;
        memcpy(copy, t, s->cluster_size);
        uint64_t saved = s->l1[i];
        s->l1[i] = 0;
        if ((rc = qcow2_l1_write_entries(s, i, 1))) {
            s->l1[i] = saved;
            break;
        }
        qcow2_set_remove_bits(&s->meta, l2 >> s->cluster_bits, QCOW2_META_ACTIVE_L2);
        for (uint32_t j = 0; j < s->l2_entries && !rc; j++)
            rc = qcow2_release_l2_entry(s, qcow2_l2_get(s, copy, j, NULL));
        if (!rc)
            rc = qcow2_free_clusters(s, l2, s->cluster_size);
    }
    pthread_mutex_unlock(&img->lock);
    free(copy);
    return rc;
}

/* ---- preallocation ---- */

int qcow2_preallocate(struct qcow2_state *s, uint64_t offset, uint64_t len)
{
    if (!len)
        return 0;
    uint64_t gc = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    int rc = 0;
    while (gc <= last && !rc) {
        uint64_t in_table = s->l2_entries - (gc & (s->l2_entries - 1));
        uint64_t n = VS_MIN(last - gc + 1, in_table);
        uint64_t l2;
        uint8_t *table;
        if ((rc = l2_prepare(s, gc >> s->l2_bits, &l2)))
            break;
        uint32_t idx0 = (uint32_t)(gc & (s->l2_entries - 1));
        uint64_t j = 0;
        while (j < n && !rc) {
            if ((rc = qcow2_l2_load(s, l2, &table)))
                break;
            uint64_t e = qcow2_l2_get(s, table, idx0 + (uint32_t)j, NULL);
            enum qcow2_ctype t = qcow2_entry_type(s, e);
            if (t != QCOW2_UNALLOCATED && t != QCOW2_ZERO_PLAIN) {
                j++;
                continue;
            }
            uint64_t m = 1;
            while (j + m < n) {
                uint64_t e2 = qcow2_l2_get(s, table, idx0 + (uint32_t)(j + m), NULL);
                enum qcow2_ctype t2 = qcow2_entry_type(s, e2);
                if (t2 != QCOW2_UNALLOCATED && t2 != QCOW2_ZERO_PLAIN)
                    break;
                m++;
            }
            uint64_t fresh_before = s->fresh_start, host;
            if ((rc = qcow2_alloc_clusters(s, m, &host)))
                break;
            uint64_t end = host + m * s->cluster_size;
            if (s->fresh_start < end)
                s->fresh_start = end;
            if (host < fresh_before) /* reused space may hold old data */
                rc = img_file_write_zeroes(s->file, host, VS_MIN(end, fresh_before) - host);
            if (!rc)
                rc = qcow2_l2_load(s, l2, &table);
            if (rc)
                break;
            for (uint64_t k = 0; k < m; k++)
                qcow2_l2_put(s, table, idx0 + (uint32_t)(j + k),
                             (host + k * s->cluster_size) | QCOW2_OFLAG_COPIED,
                             QCOW2_EXT_ALL_ALLOC);
            rc = qcow2_l2_write(s, l2, table, idx0 + (uint32_t)j, (uint32_t)m);
            j += m;
        }
        gc += n;
    }
    return rc;
}
