/*
 * lib/img/ops.c — the whole-image operations of qemu-img besides convert: compare, commit,
 * rebase and map.
 *
 * The idea: every one of them is a walk over block-status extents in bounded chunks. Ranges that
 * block status already proves equal, zero or irrelevant are never read; everything else goes
 * through a chunk-sized buffer, so a terabyte disk costs the same memory as a megabyte one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vessel/img.h"

#define OPS_CHUNK  (2u << 20)
#define OPS_SECTOR 512u

static void ops_report(img_progress_fn progress, void *ctx, uint64_t done, uint64_t total)
{
    if (progress)
        progress(ctx, done, total);
}

/* Read [off, off+len) of IMG, zeros beyond its end (IMG NULL reads zeros). */
static int ops_read_clipped(struct img *img, uint8_t *buf, uint64_t off, uint64_t len)
{
    uint64_t size = img ? img_size(img) : 0;
    uint64_t n = off < size ? VS_MIN(len, size - off) : 0;
    if (n) {
        int rc = img_pread(img, buf, off, n);
        if (rc)
            return rc;
    }
    memset(buf + n, 0, len - n);
    return 0;
}

/* Does [off, off+len) of IMG read as zeros according to block status alone? len is clipped to
 * the run it knows about. IMG NULL or beyond the end: zeros. */
static int ops_known_zero(struct img *img, uint64_t off, uint64_t *len, bool *zero)
{
    uint64_t size = img ? img_size(img) : 0;
    if (off >= size) {
        *zero = true;
        return 0;
    }
    struct img_extent ext;
    int rc = img_block_status(img, off, VS_MIN(*len, size - off), &ext);
    if (rc)
        return rc;
    *len = ext.length;
    *zero = (ext.flags & IMG_STATUS_ZERO) != 0;
    return 0;
}

/* Offset of the first differing sector of two buffers, or len when equal. */
static uint64_t ops_first_difference(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    uint64_t p = 0;
    while (p < len) {
        uint64_t n = VS_MIN((uint64_t)64 << 10, len - p);
        if (memcmp(a + p, b + p, n)) {
            while (a[p] == b[p])
                p++;
            return VS_ALIGN_DOWN(p, OPS_SECTOR);
        }
        p += n;
    }
    return len;
}

/* Offset of the first non-zero sector of buf, or len. */
static uint64_t ops_first_nonzero(const uint8_t *buf, uint64_t len)
{
    for (uint64_t p = 0; p < len; p += OPS_SECTOR) {
        if (!vs_buffer_is_zero(buf + p, VS_MIN(OPS_SECTOR, len - p)))
            return p;
    }
    return len;
}

/* ---- compare --------------------------------------------------------------------------------- */

int img_compare(struct img *a, struct img *b, bool strict, img_progress_fn progress,
                void *progress_ctx, struct img_compare_result *result)
{
    memset(result, 0, sizeof(*result));
    uint64_t size_a = img_size(a), size_b = img_size(b);
    uint64_t common = VS_MIN(size_a, size_b), total = VS_MAX(size_a, size_b);
    result->size_mismatch = size_a != size_b;
    if (strict && result->size_mismatch) {
        result->outcome = IMG_COMPARE_SIZE;
        return 0;
    }
    uint8_t *buf_a = vs_aligned_alloc(4096, OPS_CHUNK);
    uint8_t *buf_b = vs_aligned_alloc(4096, OPS_CHUNK);
    int rc = 0;
    if (!buf_a || !buf_b) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t off = 0; off < common;) {
        uint64_t len = VS_MIN((uint64_t)OPS_CHUNK, common - off);
        struct img_extent ea, eb;
        if ((rc = img_block_status(a, off, len, &ea)) || (rc = img_block_status(b, off, len, &eb)))
            goto out;
        len = VS_MIN(ea.length, eb.length);
        bool present_a = (ea.flags & IMG_STATUS_ALLOCATED) != 0;
        bool present_b = (eb.flags & IMG_STATUS_ALLOCATED) != 0;
        if (strict && present_a != present_b) {
            result->outcome = IMG_COMPARE_ALLOCATION;
            result->offset = off;
            goto out;
        }
        if (!((ea.flags & IMG_STATUS_ZERO) && (eb.flags & IMG_STATUS_ZERO))) {
            if ((rc = img_pread(a, buf_a, off, len)) || (rc = img_pread(b, buf_b, off, len)))
                goto out;
            uint64_t d = ops_first_difference(buf_a, buf_b, len);
            if (d < len) {
                result->outcome = IMG_COMPARE_CONTENT;
                result->offset = off + d;
                goto out;
            }
        }
        off += len;
        ops_report(progress, progress_ctx, off, total);
    }
    /* the larger image's tail must read as zeros */
    struct img *larger = size_a > size_b ? a : b;
    for (uint64_t off = common; off < total;) {
        uint64_t len = VS_MIN((uint64_t)OPS_CHUNK, total - off);
        bool zero;
        if ((rc = ops_known_zero(larger, off, &len, &zero)))
            goto out;
        if (!zero) {
            if ((rc = img_pread(larger, buf_a, off, len)))
                goto out;
            uint64_t d = ops_first_nonzero(buf_a, len);
            if (d < len) {
                result->outcome = IMG_COMPARE_CONTENT;
                result->offset = off + d;
                goto out;
            }
        }
        off += len;
        ops_report(progress, progress_ctx, off, total);
    }
    result->outcome = IMG_COMPARE_IDENTICAL;
out:
    free(buf_a);
    free(buf_b);
    return rc;
}

/* ---- commit ---------------------------------------------------------------------------------- */

struct img *img_chain_find(struct img *top, const char *name)
{
    struct stat want;
    if (stat(name, &want) < 0) {
        vs_error_errno(-errno, "%s", name);
        return NULL;
    }
    for (struct img *p = top; p; p = img_backing(p)) {
        struct stat st;
        if (stat(img_filename(p), &st) == 0 && st.st_dev == want.st_dev && st.st_ino == want.st_ino)
            return p;
    }
    vs_error(-ENOENT, "'%s' is not in the backing chain of '%s'", name, img_filename(top));
    return NULL;
}

int img_commit(struct img *top, struct img *base, bool keep_top, img_progress_fn progress,
               void *progress_ctx)
{
    struct img *backing = img_backing(top);
    if (!backing) {
        if (img_backing_name(top) && img_backing_name(top)[0])
            return vs_error(-EINVAL, "%s: the backing file '%s' is not open", img_filename(top),
                            img_backing_name(top));
        return vs_error(-EINVAL, "%s: image has no backing file to commit into", img_filename(top));
    }
    if (!base)
        base = backing;
    int base_depth = 0;
    struct img *p = top;
    while (p && p != base) {
        p = img_backing(p);
        base_depth++;
    }
    if (!p || base == top)
        return vs_error(-EINVAL, "%s: the base image is not below it in its backing chain",
                        img_filename(top));
    if (!keep_top && !img_is_writable(top))
        return vs_error(-EACCES, "%s: opened read-only, cannot empty it after commit",
                        img_filename(top));

    /* the chain opened BASE read-only with a shared lock we hold ourselves: a second, unlocked
     * read-write handle writes into it; nothing reads BASE through the chain meanwhile, because
     * only ranges decided above it are copied */
    struct img *dst;
    int rc = img_open(&dst, img_filename(base), img_format(base),
                      IMG_OPEN_RDWR | IMG_OPEN_NO_LOCK | IMG_OPEN_NO_BACKING);
    if (rc)
        return vs_error_prefix(rc, "cannot open the base image for writing");
    uint64_t size = img_size(top);
    uint8_t *buf = NULL;
    if (img_size(dst) < size && (rc = img_resize(dst, size, 0, NULL)))
        goto out;
    buf = vs_aligned_alloc(4096, OPS_CHUNK);
    if (!buf) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t off = 0; off < size;) {
        struct img_extent ext;
        if ((rc = img_block_status(top, off, VS_MIN((uint64_t)OPS_CHUNK, size - off), &ext)))
            goto out;
        bool above = (ext.flags & IMG_STATUS_ALLOCATED) && ext.depth < base_depth;
        if (above && (ext.flags & IMG_STATUS_ZERO)) {
            rc = img_write_zeroes(dst, off, ext.length, 0);
        } else if (above) {
            rc = img_pread(top, buf, off, ext.length);
            if (!rc)
                rc = img_pwrite(dst, buf, off, ext.length);
        }
        if (rc)
            goto out;
        off += ext.length;
        ops_report(progress, progress_ctx, off, size);
    }
    rc = img_flush(dst);
    if (!rc && !keep_top)
        rc = img_make_empty(top);
out:
    free(buf);
    int crc = img_close(dst);
    return rc ? rc : crc;
}

/* ---- rebase ---------------------------------------------------------------------------------- */

static char *ops_relative_to(const char *image, const char *path)
{
    const char *slash = strrchr(image, '/');
    if (path[0] == '/' || !slash)
        return vs_strdup(path);
    return vs_asprintf("%.*s/%s", (int)(slash - image), image, path);
}

int img_rebase(struct img *overlay, const char *backing, const char *backing_format, bool unsafe,
               int open_flags, img_progress_fn progress, void *progress_ctx)
{
    if (backing && !backing[0])
        backing = NULL;
    if (!backing)
        backing_format = NULL;
    if (unsafe)
        return img_change_backing(overlay, backing, backing_format);

    struct img *old = img_backing(overlay);
    if (!old && img_backing_name(overlay) && img_backing_name(overlay)[0])
        return vs_error(-EINVAL, "%s: could not open old backing file '%s'", img_filename(overlay),
                        img_backing_name(overlay));
    struct img *new = NULL;
    int rc;
    if (backing) {
        char *path = ops_relative_to(img_filename(overlay), backing);
        if (!path)
            return -ENOMEM;
        rc = img_open(&new, path, backing_format, open_flags & (IMG_OPEN_NO_LOCK));
        free(path);
        if (rc)
            return vs_error_prefix(rc, "could not open new backing file '%s'", backing);
        if (!backing_format)
            backing_format = img_format(new);
    }
    uint64_t size = img_size(overlay);
    uint32_t unit = img_cluster_size(overlay) ? img_cluster_size(overlay) : 65536;
    uint8_t *buf_old = vs_aligned_alloc(4096, OPS_CHUNK);
    uint8_t *buf_new = vs_aligned_alloc(4096, OPS_CHUNK);
    if (!buf_old || !buf_new) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t off = 0; off < size;) {
        struct img_extent ext;
        uint64_t len = VS_MIN((uint64_t)OPS_CHUNK, size - off);
        if ((rc = img_block_status_layer(overlay, off, len, &ext)))
            goto out;
        len = ext.length;
        if (!(ext.flags & IMG_STATUS_ALLOCATED)) {
            /* split further where both backings are known zeros */
            uint64_t zl = len, nl = len;
            bool old_zero, new_zero;
            if ((rc = ops_known_zero(old, off, &zl, &old_zero)) ||
                (rc = ops_known_zero(new, off, &nl, &new_zero)))
                goto out;
            if (old_zero && new_zero) {
                len = VS_MIN(zl, nl);
            } else {
                if ((rc = ops_read_clipped(old, buf_old, off, len)) ||
                    (rc = ops_read_clipped(new, buf_new, off, len)))
                    goto out;
                /* copy differing units, aligned to the overlay's clusters */
                for (uint64_t p = 0; p < len;) {
                    uint64_t n = VS_MIN(VS_ALIGN_UP(off + p + 1, unit) - (off + p), len - p);
                    if (memcmp(buf_old + p, buf_new + p, n) &&
                        (rc = img_pwrite(overlay, buf_old + p, off + p, n)))
                        goto out;
                    p += n;
                }
            }
        }
        off += len;
        ops_report(progress, progress_ctx, off, size);
    }
    rc = img_flush(overlay);
    if (!rc)
        rc = img_change_backing(overlay, backing, backing_format);
out:
    free(buf_old);
    free(buf_new);
    img_close(new);
    return rc;
}

/* ---- map ------------------------------------------------------------------------------------- */

static bool ops_map_mergeable(const struct img_map_entry *a, const struct img_map_entry *b)
{
    if (a->depth != b->depth || a->present != b->present || a->zero != b->zero ||
        a->data != b->data || a->compressed != b->compressed || a->has_offset != b->has_offset ||
        a->filename != b->filename)
        return false;
    return !a->has_offset || a->offset + a->length == b->offset;
}

int img_map(struct img *img, uint64_t start, uint64_t length,
            int (*fn)(void *ctx, const struct img_map_entry *entry), void *ctx)
{
    uint64_t size = img_size(img);
    if (start > size)
        return 0;
    uint64_t end = VS_MIN(size, start + VS_MIN(length, size - start));
    struct img_map_entry cur = {0};
    bool have = false;
    for (uint64_t off = start; off < end;) {
        struct img_extent ext;
        int rc = img_block_status(img, off, VS_MIN((uint64_t)1 << 30, end - off), &ext);
        if (rc)
            return rc;
        struct img_map_entry e = {
            .start = off,
            .length = ext.length,
            .depth = ext.depth,
            .present = (ext.flags & IMG_STATUS_ALLOCATED) != 0,
            .zero = (ext.flags & IMG_STATUS_ZERO) != 0,
            .data = (ext.flags & IMG_STATUS_DATA) != 0,
            .compressed = (ext.flags & IMG_STATUS_COMPRESSED) != 0,
            .has_offset = (ext.flags & IMG_STATUS_OFFSET) != 0,
            .offset = ext.host_offset,
            .filename =
                ext.layer && (ext.flags & IMG_STATUS_ALLOCATED) ? img_filename(ext.layer) : NULL,
        };
        if (have && ops_map_mergeable(&cur, &e)) {
            cur.length += e.length;
        } else {
            if (have && (rc = fn(ctx, &cur)))
                return rc;
            cur = e;
            have = true;
        }
        off += ext.length;
    }
    if (have)
        return fn(ctx, &cur);
    return 0;
}
