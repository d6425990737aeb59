/*
 * lib/img/vmdk-sparse.c — hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse, delta
 * links) and their compressed variant, streamOptimized.
 *
 * The idea: a grain's host offset is decided once, under img->lock, by bumping the extent's end
 * of file; the grain's bytes are then written outside the lock, and only afterwards does its
 * grain-table entry change (in memory; the dirty tables reach the file on flush). So a crash
 * leaks grains but never points a table at garbage, and the convert engine's writer threads can
 * fill one extent in any order. A stream (grain directory at the end) is the same machine with
 * deflated grains behind markers, whose tables are written as GT/GD markers plus footer and
 * end-of-stream marker at each flush — at the end of the grains, where the next grain overwrites
 * them again. Grains are deflated with zlib and inflated with libdeflate (whole-buffer, SIMD
 * Adler-32: a streamOptimized read is bound by the copy, not the checksum).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <libdeflate.h>
#include <zlib.h>

#include "img/vmdk.h"

/* ---- header ---------------------------------------------------------------------------------- */

static void vmdk_header_decode(const uint8_t *b, struct vmdk_header *h)
{
    h->version = vmdk_le32(b + 4);
    h->flags = vmdk_le32(b + 8);
    h->capacity = vmdk_le64(b + 12);
    h->grain_sectors = vmdk_le64(b + 20);
    h->desc_offset = vmdk_le64(b + 28);
    h->desc_size = vmdk_le64(b + 36);
    h->gtes_per_gt = vmdk_le32(b + 44);
    h->rgd_offset = vmdk_le64(b + 48);
    h->gd_offset = vmdk_le64(b + 56);
    h->overhead = vmdk_le64(b + 64);
    h->unclean_shutdown = b[72];
    memcpy(h->check, b + 73, 4);
    h->compress_algorithm = (uint16_t)(b[77] | b[78] << 8);
}

void vmdk_header_encode(const struct vmdk_header *h, uint8_t out[512])
{
    memset(out, 0, 512);
    vmdk_put32(out, VMDK4_MAGIC);
    vmdk_put32(out + 4, h->version);
    vmdk_put32(out + 8, h->flags);
    vmdk_put64(out + 12, h->capacity);
    vmdk_put64(out + 20, h->grain_sectors);
    vmdk_put64(out + 28, h->desc_offset);
    vmdk_put64(out + 36, h->desc_size);
    vmdk_put32(out + 44, h->gtes_per_gt);
    vmdk_put64(out + 48, h->rgd_offset);
    vmdk_put64(out + 56, h->gd_offset);
    vmdk_put64(out + 64, h->overhead);
    out[72] = h->unclean_shutdown;
    memcpy(out + 73, "\n \r\n", 4);
    out[77] = (uint8_t)h->compress_algorithm;
    out[78] = (uint8_t)(h->compress_algorithm >> 8);
}

static uint64_t vmdk_gd_entries(const struct vmdk_header *h)
{
    uint64_t per_table = h->grain_sectors * h->gtes_per_gt;
    return (h->capacity + per_table - 1) / per_table;
}

/* Is [sector, sector + bytes) inside a file of FSIZE bytes? (no overflow for any input) */
static bool vmdk_in_file(uint64_t sector, uint64_t bytes, uint64_t fsize)
{
    return sector <= fsize / VMDK_SECTOR && bytes <= fsize - sector * VMDK_SECTOR;
}

int vmdk_header_read(struct img *file, const char *name, struct vmdk_header *h, bool *stream)
{
    int64_t fs = img_file_size(file);
    if (fs < 0)
        return (int)fs;
    uint64_t fsize = (uint64_t)fs;
    if (fsize < VMDK_SECTOR)
        return vs_error(-EINVAL, "%s: header: file is %llu bytes, too small for a sparse header",
                        name, (unsigned long long)fsize);
    uint8_t b[VMDK_SECTOR];
    int rc = file->drv->pread(file, b, 0, sizeof(b));
    if (rc)
        return rc;
    if (vmdk_le32(b) != VMDK4_MAGIC)
        return vs_error(-EINVAL, "%s: header: magic %08x is not KDMV (not a sparse extent)", name,
                        vmdk_le32(b));
    vmdk_header_decode(b, h);
    *stream = false;
    if (h->gd_offset == VMDK_GD_AT_END) {
        uint64_t end = VS_ALIGN_DOWN(fsize, VMDK_SECTOR);
        if (end < 4 * VMDK_SECTOR)
            return vs_error(-EINVAL,
                            "%s: footer: file too small to hold the streamOptimized footer", name);
        uint8_t f[3 * VMDK_SECTOR];
        rc = file->drv->pread(file, f, end - sizeof(f), sizeof(f));
        if (rc)
            return rc;
        if (vmdk_le32(f + 8) != 0 || vmdk_le32(f + 12) != VMDK_MARKER_FOOTER)
            return vs_error(-EINVAL,
                            "%s: footer: marker at offset %llu is not a footer marker "
                            "(type %u)",
                            name, (unsigned long long)(end - sizeof(f)), vmdk_le32(f + 12));
        if (vmdk_le32(f + 512) != VMDK4_MAGIC)
            return vs_error(-EINVAL, "%s: footer: magic is not KDMV", name);
        if (vmdk_le64(f + 1024) != 0 || vmdk_le32(f + 1032) != 0 ||
            vmdk_le32(f + 1036) != VMDK_MARKER_EOS)
            return vs_error(-EINVAL, "%s: footer: end-of-stream marker missing", name);
        vmdk_header_decode(f + 512, h);
        if (h->gd_offset == VMDK_GD_AT_END)
            return vs_error(-EINVAL, "%s: footer: grain directory offset is still 'at end'", name);
        *stream = true;
    }
    if (h->version < 1 || h->version > 3)
        return vs_error(-ENOTSUP, "%s: header: version %u unsupported (1-3)", name, h->version);
    if ((h->flags & VMDK4_FLAG_NL_DETECT) && memcmp(h->check, "\n \r\n", 4))
        return vs_error(-EINVAL,
                        "%s: header: newline check bytes are corrupt (was the file "
                        "copied in text mode?)",
                        name);
    if (h->compress_algorithm > 1)
        return vs_error(-ENOTSUP, "%s: header: compressAlgorithm %u unknown (1 = deflate)", name,
                        h->compress_algorithm);
    if ((h->flags & VMDK4_FLAG_COMPRESS) && h->compress_algorithm != 1)
        return vs_error(-EINVAL,
                        "%s: header: compressed grains flagged but compressAlgorithm is "
                        "%u",
                        name, h->compress_algorithm);
    if (h->desc_offset || h->desc_size) {
        if (h->desc_size > VMDK_DESC_MAX / VMDK_SECTOR)
            return vs_error(-EINVAL, "%s: header: descriptor size %llu sectors is too large", name,
                            (unsigned long long)h->desc_size);
        if (!h->desc_offset || !vmdk_in_file(h->desc_offset, h->desc_size * VMDK_SECTOR, fsize))
            return vs_error(-EINVAL,
                            "%s: header: descriptor at sector %llu (+%llu) is outside "
                            "the file",
                            name, (unsigned long long)h->desc_offset,
                            (unsigned long long)h->desc_size);
    }
    if (h->capacity == 0 && h->desc_offset)
        return 0; /* a descriptor holder: no grains of its own */
    if (h->capacity == 0 || h->capacity > (UINT64_MAX >> 10))
        return vs_error(-EINVAL, "%s: header: capacity %llu sectors invalid", name,
                        (unsigned long long)h->capacity);
    if (!h->grain_sectors || (h->grain_sectors & (h->grain_sectors - 1)) ||
        h->grain_sectors > VMDK_GRAIN_MAX_SECT)
        return vs_error(-EINVAL,
                        "%s: header: grain size %llu sectors is not a power of two in "
                        "1..%u",
                        name, (unsigned long long)h->grain_sectors, VMDK_GRAIN_MAX_SECT);
    if (h->gtes_per_gt == 0 || h->gtes_per_gt > VMDK_GTES_MAX)
        return vs_error(-EINVAL, "%s: header: %u grain table entries per table (expected 512)",
                        name, h->gtes_per_gt);
    uint64_t gd_entries = vmdk_gd_entries(h);
    if (gd_entries > VMDK_GD_MAX_ENTRIES)
        return vs_error(-EFBIG, "%s: header: grain directory of %llu entries is too large", name,
                        (unsigned long long)gd_entries);
    if (!h->gd_offset || !vmdk_in_file(h->gd_offset, gd_entries * 4, fsize))
        return vs_error(-EINVAL,
                        "%s: header: grain directory at sector %llu (%llu entries) is "
                        "outside the file (%llu bytes)",
                        name, (unsigned long long)h->gd_offset, (unsigned long long)gd_entries,
                        (unsigned long long)fsize);
    if ((h->flags & VMDK4_FLAG_RGD) && h->rgd_offset && !*stream &&
        !vmdk_in_file(h->rgd_offset, gd_entries * 4, fsize))
        return vs_error(-EINVAL,
                        "%s: header: redundant grain directory at sector %llu is outside "
                        "the file",
                        name, (unsigned long long)h->rgd_offset);
    if (h->overhead > fsize / VMDK_SECTOR)
        return vs_error(-EINVAL,
                        "%s: header: file truncated: grains start at sector %llu but the "
                        "file has %llu bytes",
                        name, (unsigned long long)h->overhead, (unsigned long long)fsize);
    return 0;
}

/* ---- grain tables ---------------------------------------------------------------------------- */

static uint64_t vmdk_limit(const struct vmdk_sparse *sp)
{
    return VS_MAX(sp->file_size, sp->end);
}

static int vmdk_read_table(struct img *img, struct vmdk_extent *e, uint64_t sector, uint32_t count,
                           uint32_t *out, const char *what, uint64_t index)
{
    struct vmdk_sparse *sp = e->sp;
    if (!vmdk_in_file(sector, (uint64_t)count * 4, vmdk_limit(sp)))
        return vs_error(-EINVAL, "%s: %s %llu: table at sector %llu is beyond the end of the file",
                        e->file->filename, what, (unsigned long long)index,
                        (unsigned long long)sector);
    int rc = e->file->drv->pread(e->file, out, sector * VMDK_SECTOR, (size_t)count * 4);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < count; i++)
        out[i] = vmdk_le32((const uint8_t *)&out[i]);
    return 0;
}

static int vmdk_gt_write(struct vmdk_extent *e, uint32_t gdi)
{
    struct vmdk_sparse *sp = e->sp;
    uint8_t *buf = vs_malloc(sp->gt_bytes);
    if (!buf)
        return -ENOMEM;
    for (uint32_t i = 0; i < sp->h.gtes_per_gt; i++)
        vmdk_put32(buf + 4 * i, sp->gt[gdi][i]);
    int rc = e->file->drv->pwrite(e->file, buf, (uint64_t)sp->gd[gdi] * VMDK_SECTOR, sp->gt_bytes);
    if (!rc && sp->rgd && sp->rgd[gdi])
        rc = e->file->drv->pwrite(e->file, buf, (uint64_t)sp->rgd[gdi] * VMDK_SECTOR, sp->gt_bytes);
    free(buf);
    return rc;
}

static int vmdk_gt_evict(struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    for (uint32_t i = 0; i < sp->gd_entries; i++) {
        if (!sp->gt[i])
            continue;
        if (sp->gt_dirty[i]) {
            int rc = vmdk_gt_write(e, i);
            if (rc)
                return rc;
            sp->gt_dirty[i] = 0;
        }
        free(sp->gt[i]);
        sp->gt[i] = NULL;
    }
    sp->gt_loaded = 0;
    return 0;
}

/* The grain table of directory entry GDI (lock held): *out NULL when none is allocated. */
static int vmdk_gt_get(struct img *img, struct vmdk_extent *e, uint32_t gdi, uint32_t **out)
{
    struct vmdk_sparse *sp = e->sp;
    *out = sp->gt[gdi];
    if (*out || !sp->gd[gdi])
        return 0;
    if (sp->gt_loaded >= VMDK_GT_CACHE_MAX && !sp->keep_tables) {
        int rc = vmdk_gt_evict(e);
        if (rc)
            return rc;
    }
    uint32_t *t = vs_malloc(sp->gt_bytes);
    if (!t)
        return -ENOMEM;
    int rc =
        vmdk_read_table(img, e, sp->gd[gdi], sp->h.gtes_per_gt, t, "grain directory entry", gdi);
    if (rc) {
        free(t);
        return rc;
    }
    sp->gt[gdi] = t;
    sp->gt_loaded++;
    *out = t;
    return 0;
}

static int vmdk_gte_get(struct img *img, struct vmdk_extent *e, uint64_t grain, uint32_t *v)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gdi = grain / sp->h.gtes_per_gt;
    *v = 0;
    if (gdi >= sp->gd_entries)
        return 0;
    uint32_t *t;
    int rc = vmdk_gt_get(img, e, (uint32_t)gdi, &t);
    if (!rc && t)
        *v = t[grain % sp->h.gtes_per_gt];
    return rc;
}

/* Append a zeroed table (and its redundant copy) for directory entry GDI (lock held). */
static int vmdk_gt_allocate(struct img *img, struct vmdk_extent *e, uint32_t gdi)
{
    struct vmdk_sparse *sp = e->sp;
    uint32_t *t = vs_calloc(1, sp->gt_bytes);
    if (!t)
        return -ENOMEM;
    if (sp->keep_tables) { /* stream: placed on flush */
        sp->gt[gdi] = t;
        sp->gt_loaded++;
        sp->gt_dirty[gdi] = 1;
        return 0;
    }
    uint64_t tsize = VS_ALIGN_UP(sp->gt_bytes, VMDK_SECTOR);
    int copies = sp->rgd ? 2 : 1;
    uint64_t pos = VS_ALIGN_UP(sp->end, VMDK_SECTOR);
    if ((pos + copies * tsize) / VMDK_SECTOR > UINT32_MAX) {
        free(t);
        return vs_error(-EFBIG, "%s: extent is full (2 TiB of sectors)", e->file->filename);
    }
    int rc = img_file_write_zeroes(e->file, pos, copies * tsize);
    uint8_t ent[4];
    if (!rc) {
        vmdk_put32(ent, (uint32_t)(pos / VMDK_SECTOR));
        rc = e->file->drv->pwrite(e->file, ent, sp->h.gd_offset * VMDK_SECTOR + gdi * 4ull, 4);
    }
    if (!rc && sp->rgd) {
        vmdk_put32(ent, (uint32_t)((pos + tsize) / VMDK_SECTOR));
        rc = e->file->drv->pwrite(e->file, ent, sp->h.rgd_offset * VMDK_SECTOR + gdi * 4ull, 4);
    }
    if (rc) {
        free(t);
        return rc;
    }
    sp->gd[gdi] = (uint32_t)(pos / VMDK_SECTOR);
    if (sp->rgd)
        sp->rgd[gdi] = (uint32_t)((pos + tsize) / VMDK_SECTOR);
    sp->end = pos + copies * tsize;
    sp->gt[gdi] = t;
    sp->gt_loaded++;
    return 0;
}

static int vmdk_gte_set(struct img *img, struct vmdk_extent *e, uint64_t grain, uint32_t v)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gdi = grain / sp->h.gtes_per_gt;
    if (gdi >= sp->gd_entries)
        return vs_error(-EIO, "%s: grain %llu is beyond the grain directory", e->file->filename,
                        (unsigned long long)grain);
    uint32_t *t;
    int rc = vmdk_gt_get(img, e, (uint32_t)gdi, &t);
    if (!rc && !t) {
        rc = vmdk_gt_allocate(img, e, (uint32_t)gdi);
        t = sp->gt[gdi];
    }
    if (rc)
        return rc;
    t[grain % sp->h.gtes_per_gt] = v;
    sp->gt_dirty[gdi] = 1;
    if (sp->keep_tables)
        sp->meta_dirty = true;
    return 0;
}

/* ---- open / close ---------------------------------------------------------------------------- */

static int vmdk_stream_find_end(struct img *img, struct vmdk_extent *e);

int vmdk_sparse_open(struct img *img, struct vmdk_extent *e, const struct vmdk_header *h,
                     bool stream)
{
    struct vmdk_sparse *sp = vs_calloc(1, sizeof(*sp));
    if (!sp)
        return -ENOMEM;
    e->sp = sp;
    pthread_mutex_init(&sp->append_lock, NULL);
    sp->h = *h;
    sp->compressed = h->compress_algorithm == 1;
    sp->markers = (h->flags & VMDK4_FLAG_MARKER) != 0;
    sp->zero_grain = (h->flags & VMDK4_FLAG_ZERO_GRAIN) != 0;
    sp->stream = stream;
    sp->grain_bytes = h->grain_sectors * VMDK_SECTOR;
    sp->gt_bytes = h->gtes_per_gt * 4;
    sp->gd_entries = (uint32_t)vmdk_gd_entries(h);
    int64_t fs = img_file_size(e->file);
    if (fs < 0)
        return (int)fs;
    sp->file_size = (uint64_t)fs;
    sp->read_only = e->access != VMDK_ACCESS_RW || !(img->flags & IMG_OPEN_RDWR);
    if (h->version == 3 && !sp->compressed && !sp->read_only)
        return img_error(img, -EROFS,
                         "%s: header: version 3 (changed block tracking) can only be opened "
                         "read-only",
                         e->file->filename);
    if (e->length > h->capacity * VMDK_SECTOR)
        return img_error(img, -EINVAL, "%s: header: capacity smaller than the extent",
                         e->file->filename);
    sp->gd = vs_malloc((size_t)sp->gd_entries * 4);
    sp->gt = vs_calloc(sp->gd_entries, sizeof(*sp->gt));
    sp->gt_dirty = vs_calloc(sp->gd_entries, 1);
    if (!sp->gd || !sp->gt || !sp->gt_dirty)
        return -ENOMEM;
    int rc = vmdk_read_table(img, e, h->gd_offset, sp->gd_entries, sp->gd,
                             "grain directory at "
                             "sector",
                             h->gd_offset);
    if (rc)
        return rc;
    if ((h->flags & VMDK4_FLAG_RGD) && h->rgd_offset && !stream) {
        sp->rgd = vs_malloc((size_t)sp->gd_entries * 4);
        if (!sp->rgd)
            return -ENOMEM;
        rc = vmdk_read_table(img, e, h->rgd_offset, sp->gd_entries, sp->rgd,
                             "redundant grain directory at sector", h->rgd_offset);
        if (rc)
            return rc;
    }
    if (stream && !sp->read_only) {
        sp->keep_tables = true;
        return vmdk_stream_find_end(img, e);
    }
    uint64_t end = VS_MAX(VS_ALIGN_UP(sp->file_size, VMDK_SECTOR), h->overhead * VMDK_SECTOR);
    sp->end = sp->compressed ? end : VS_ALIGN_UP(end, sp->grain_bytes);
    return 0;
}

void vmdk_sparse_close(struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    if (!sp)
        return;
    if (sp->gt)
        for (uint32_t i = 0; i < sp->gd_entries; i++)
            free(sp->gt[i]);
    free(sp->gt);
    free(sp->gt_dirty);
    free(sp->gd);
    free(sp->rgd);
    pthread_mutex_destroy(&sp->append_lock);
    free(sp);
    e->sp = NULL;
}

/* ---- compressed grains ----------------------------------------------------------------------- */

/* Does a 4 KiB sample of the grain deflate at all? Random or already-compressed data (a large
 * part of real disks) costs as much CPU to "compress" as anything else and gains nothing. */
static bool vmdk_compressible(const uint8_t *in, size_t in_len)
{
    uint8_t out[4096 + 256];
    size_t n = VS_MIN(in_len, (size_t)4096);
    uLongf out_len = sizeof(out);
    if (compress2(out, &out_len, in, (uLong)n, 1) != Z_OK)
        return true;
    return out_len < n - n / 32;
}

long vmdk_deflate(uint8_t *out, size_t out_len, const uint8_t *in, size_t in_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    /* level 1: grains are small and independent; the ratio gain of higher levels is a few
     * percent for several times the CPU. Incompressible grains are stored (level 0), which
     * every inflater reads the same. */
    if (deflateInit(&z, vmdk_compressible(in, in_len) ? 1 : 0) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    int zr = deflate(&z, Z_FINISH);
    long n = (long)(out_len - z.avail_out);
    deflateEnd(&z);
    return zr == Z_STREAM_END ? n : -ENOSPC;
}

/* Read and inflate grain G (table entry V) into OUT (grain_bytes). */
static int vmdk_read_compressed(struct img *img, struct vmdk_extent *e, uint64_t g, uint32_t v,
                                uint8_t *out)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t limit = vmdk_limit(sp);
    uint64_t pos = (uint64_t)v * VMDK_SECTOR;
    const char *fn = e->file->filename;
    if (pos >= limit)
        return vs_error(-EINVAL,
                        "%s: grain %llu: compressed grain at sector %u is beyond the end "
                        "of the file",
                        fn, (unsigned long long)g, v);
    uint64_t cap = VS_MIN(limit - pos, 2 * sp->grain_bytes + 2 * VMDK_SECTOR);
    uint8_t *buf = vs_malloc(cap);
    if (!buf)
        return -ENOMEM;
    uint64_t first = VS_MIN(cap, VMDK_SECTOR);
    int rc = e->file->drv->pread(e->file, buf, pos, first);
    const uint8_t *data = buf;
    uint64_t size = cap, have = first;
    if (!rc && sp->markers) {
        if (first < VMDK_MARKER_SIZE) {
            rc = vs_error(-EINVAL, "%s: grain %llu: marker at sector %u is truncated", fn,
                          (unsigned long long)g, v);
            goto out;
        }
        uint64_t lba = vmdk_le64(buf);
        size = vmdk_le32(buf + 8);
        uint64_t want = g * sp->h.grain_sectors;
        if (lba != want && lba != want + e->start / VMDK_SECTOR) {
            rc = vs_error(-EINVAL, "%s: grain %llu: marker at sector %u names lba %llu, not %llu",
                          fn, (unsigned long long)g, v, (unsigned long long)lba,
                          (unsigned long long)want);
            goto out;
        }
        if (size == 0 || size > cap - VMDK_MARKER_SIZE) {
            rc = vs_error(-EINVAL, "%s: grain %llu: marker at sector %u has invalid size %llu", fn,
                          (unsigned long long)g, v, (unsigned long long)size);
            goto out;
        }
        data = buf + VMDK_MARKER_SIZE;
        have = first - VMDK_MARKER_SIZE;
    }
    if (!rc && size > have)
        rc = e->file->drv->pread(e->file, buf + first, pos + first, size - have);
    if (rc)
        goto out;
    /* libdeflate: the zlib stream's Adler-32 is checked with SIMD, where zlib's check alone took
     * a third of a streamOptimized read's CPU. A stream that would inflate past the grain, or
     * that is cut short, is corrupt; a shorter grain (the disk's last) reads zeros after it. */
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!d) {
        rc = -ENOMEM;
        goto out;
    }
    size_t got = 0;
    enum libdeflate_result zr =
        libdeflate_zlib_decompress(d, data, size, out, sp->grain_bytes, &got);
    libdeflate_free_decompressor(d);
    if (zr != LIBDEFLATE_SUCCESS) {
        rc = vs_error(-EINVAL, "%s: grain %llu: compressed data at sector %u is corrupt", fn,
                      (unsigned long long)g, v);
        goto out;
    }
    memset(out + got, 0, sp->grain_bytes - got);
out:
    free(buf);
    return rc;
}

/* ---- pending allocations --------------------------------------------------------------------- */

static bool vmdk_pending_overlaps(struct vmdk_state *s, const struct vmdk_extent *e, uint64_t first,
                                  uint64_t last)
{
    for (size_t i = 0; i < s->pending_count; i++)
        if (s->pending[i].ext == e && s->pending[i].first <= last && first <= s->pending[i].last)
            return true;
    return false;
}

static void vmdk_pending_wait(struct img *img, const struct vmdk_extent *e, uint64_t first,
                              uint64_t last)
{
    struct vmdk_state *s = img->state;
    while (vmdk_pending_overlaps(s, e, first, last))
        pthread_cond_wait(&s->pending_cond, &img->lock);
}

static int vmdk_pending_add(struct img *img, const struct vmdk_extent *e, uint64_t first,
                            uint64_t last)
{
    struct vmdk_state *s = img->state;
    if (s->pending_count == s->pending_cap) {
        size_t cap = s->pending_cap ? s->pending_cap * 2 : 16;
        struct vmdk_pending *p = realloc(s->pending, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->pending = p;
        s->pending_cap = cap;
    }
    s->pending[s->pending_count++] = (struct vmdk_pending){e, first, last};
    return 0;
}

static void vmdk_pending_remove(struct img *img, const struct vmdk_extent *e, uint64_t first)
{
    struct vmdk_state *s = img->state;
    for (size_t i = 0; i < s->pending_count; i++) {
        if (s->pending[i].ext == e && s->pending[i].first == first) {
            s->pending[i] = s->pending[--s->pending_count];
            break;
        }
    }
    pthread_cond_broadcast(&s->pending_cond);
}

/* ---- guest I/O ------------------------------------------------------------------------------- */

enum vmdk_grain_kind { VMDK_G_UNALLOC, VMDK_G_ZERO, VMDK_G_DATA, VMDK_G_COMPRESSED };

static enum vmdk_grain_kind vmdk_kind(const struct vmdk_sparse *sp, uint32_t v)
{
    if (v == 0)
        return VMDK_G_UNALLOC;
    if (v == VMDK_GTE_ZEROED && sp->zero_grain)
        return VMDK_G_ZERO;
    return sp->compressed ? VMDK_G_COMPRESSED : VMDK_G_DATA;
}

#define VMDK_RUN_MAX (16u << 20) /* bytes merged into one host request */

int vmdk_sparse_read(struct img *img, struct vmdk_extent *e, uint8_t *buf, uint64_t off,
                     uint64_t len)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    uint8_t *gbuf = NULL;
    int rc = 0;
    while (len && !rc) {
        uint64_t g = off / gb, in = off % gb;
        uint64_t n = VS_MIN(len, gb - in);
        uint32_t v, v2;
        pthread_mutex_lock(&img->lock);
        rc = vmdk_gte_get(img, e, g, &v);
        enum vmdk_grain_kind kind = vmdk_kind(sp, v);
        /* merge following grains of the same kind (and, for data, contiguous on the host) */
        for (uint64_t k = 1; !rc && kind != VMDK_G_COMPRESSED && n < len && n < VMDK_RUN_MAX; k++) {
            rc = vmdk_gte_get(img, e, g + k, &v2);
            if (rc || vmdk_kind(sp, v2) != kind ||
                (kind == VMDK_G_DATA && v2 != v + k * sp->h.grain_sectors))
                break;
            n += VS_MIN(gb, len - n);
        }
        pthread_mutex_unlock(&img->lock);
        if (rc)
            break;
        switch (kind) {
        case VMDK_G_UNALLOC:
            rc = img_read_backing(img, buf, e->start + off, n);
            break;
        case VMDK_G_ZERO:
            memset(buf, 0, n);
            break;
        case VMDK_G_DATA: {
            uint64_t host = (uint64_t)v * VMDK_SECTOR + in;
            if (host >= vmdk_limit(sp)) {
                rc = vs_error(-EINVAL,
                              "%s: grain %llu: data at sector %u is beyond the end of "
                              "the file",
                              e->file->filename, (unsigned long long)g, v);
                break;
            }
            rc = e->file->drv->pread(e->file, buf, host, n);
            break;
        }
        case VMDK_G_COMPRESSED:
            if (in == 0 && n == gb) { /* a whole grain: inflate straight into the caller's */
                rc = vmdk_read_compressed(img, e, g, v, buf);
                break;
            }
            if (!gbuf && !(gbuf = vs_malloc(gb))) {
                rc = -ENOMEM;
                break;
            }
            rc = vmdk_read_compressed(img, e, g, v, gbuf);
            if (!rc)
                memcpy(buf, gbuf + in, n);
            break;
        }
        buf += n;
        off += n;
        len -= n;
    }
    free(gbuf);
    return rc;
}

/* Bytes of grain G inside the extent (the last grain may be cut short). */
static uint64_t vmdk_grain_valid(const struct vmdk_extent *e, uint64_t g)
{
    return VS_MIN(e->sp->grain_bytes, e->length - g * e->sp->grain_bytes);
}

/* The content an unwritten grain G (entry V) has before a partial write: backing or zeros. */
static int vmdk_grain_base(struct img *img, struct vmdk_extent *e, uint64_t g, uint32_t v,
                           uint8_t *out)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t valid = vmdk_grain_valid(e, g);
    memset(out + valid, 0, sp->grain_bytes - valid);
    if (vmdk_kind(sp, v) == VMDK_G_ZERO) {
        memset(out, 0, valid);
        return 0;
    }
    return img_read_backing(img, out, e->start + g * sp->grain_bytes, valid);
}

/* Write grains [g, g + count) which are unallocated (or zeroed) and marked pending. BUF holds
 * bytes [in, in + n) of the run; partial grains are merged with their base content. */
static int vmdk_write_new(struct img *img, struct vmdk_extent *e, uint64_t g, uint64_t count,
                          uint32_t v, const uint8_t *buf, uint64_t in, uint64_t n, bool compress)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    uint8_t *tmp = NULL, *zbuf = NULL;
    const uint8_t *src = buf;
    int rc = 0;
    if (in || n < count * gb) { /* a single partial grain */
        tmp = vs_malloc(gb);
        if (!tmp)
            return -ENOMEM;
        rc = vmdk_grain_base(img, e, g, v, tmp);
        if (rc)
            goto out;
        memcpy(tmp + in, buf, n);
        src = tmp;
    }
    uint64_t host, bytes;
    if (compress) {
        uint64_t valid = vmdk_grain_valid(e, g);
        size_t zcap = VMDK_MARKER_SIZE + compressBound((uLong)gb) + VMDK_SECTOR;
        zbuf = vs_malloc(zcap);
        if (!zbuf) {
            rc = -ENOMEM;
            goto out;
        }
        long z = vmdk_deflate(zbuf + VMDK_MARKER_SIZE, zcap - VMDK_MARKER_SIZE - VMDK_SECTOR, src,
                              valid);
        if (z <= 0) {
            rc = vs_error(-EIO, "%s: grain %llu: deflate failed", e->file->filename,
                          (unsigned long long)g);
            goto out;
        }
        vmdk_put64(zbuf, g * sp->h.grain_sectors);
        vmdk_put32(zbuf + 8, (uint32_t)z);
        bytes = VS_ALIGN_UP(VMDK_MARKER_SIZE + (uint64_t)z, VMDK_SECTOR);
        memset(zbuf + VMDK_MARKER_SIZE + z, 0, bytes - VMDK_MARKER_SIZE - (uint64_t)z);
        src = zbuf;
    } else {
        bytes = count * gb;
    }
    /* appends reach the file in the order they were placed: a strictly growing file, which
     * file systems extend far faster than one filled out of order by several writers */
    pthread_mutex_lock(&sp->append_lock);
    pthread_mutex_lock(&img->lock);
    host = compress ? VS_ALIGN_UP(sp->end, VMDK_SECTOR) : VS_ALIGN_UP(sp->end, gb);
    if ((host + bytes) / VMDK_SECTOR > UINT32_MAX)
        rc = vs_error(-EFBIG, "%s: extent is full (grain offsets are 32-bit sectors)",
                      e->file->filename);
    else
        sp->end = host + bytes;
    pthread_mutex_unlock(&img->lock);
    if (!rc)
        rc = e->file->drv->pwrite(e->file, src, host, bytes);
    pthread_mutex_unlock(&sp->append_lock);
    if (rc)
        goto out;
    pthread_mutex_lock(&img->lock);
    for (uint64_t k = 0; k < count && !rc; k++)
        rc = vmdk_gte_set(img, e, g + k, (uint32_t)(host / VMDK_SECTOR + k * sp->h.grain_sectors));
    pthread_mutex_unlock(&img->lock);
out:
    free(tmp);
    free(zbuf);
    return rc;
}

int vmdk_sparse_write(struct img *img, struct vmdk_extent *e, const uint8_t *buf, uint64_t off,
                      uint64_t len, bool compress)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    if (sp->read_only)
        return img_error(img, -EROFS, "extent '%s' is read-only", e->file->filename);
    if (compress && !sp->compressed)
        return img_error(img, -ENOTSUP,
                         "compressed writes need a streamOptimized image (subformat="
                         "streamOptimized)");
    compress = sp->compressed;
    int rc = 0;
    while (len && !rc) {
        uint64_t g = off / gb, in = off % gb;
        uint64_t n = VS_MIN(len, gb - in);
        uint64_t count = 1;
        uint32_t v, v2;
        pthread_mutex_lock(&img->lock);
        uint64_t last = (off + len - 1) / gb;
        if (last - g > VMDK_RUN_MAX / gb)
            last = g + VMDK_RUN_MAX / gb;
        vmdk_pending_wait(img, e, g, last);
        rc = vmdk_gte_get(img, e, g, &v);
        enum vmdk_grain_kind kind = vmdk_kind(sp, v);
        if (!rc && kind == VMDK_G_DATA) {
            for (uint64_t k = 1; g + k <= last; k++) {
                rc = vmdk_gte_get(img, e, g + k, &v2);
                if (rc || v2 != v + k * sp->h.grain_sectors || vmdk_kind(sp, v2) != kind)
                    break;
                n += VS_MIN(gb, len - n);
            }
        } else if (!rc && kind == VMDK_G_COMPRESSED) {
            rc = img_error(img, -ENOTSUP,
                           "grain %llu of '%s' is already written: compressed grains can only be "
                           "written once",
                           (unsigned long long)g, e->file->filename);
        } else if (!rc && !compress && in == 0 && n == gb) {
            /* whole unallocated grains: allocate them together */
            for (uint64_t k = 1; g + k <= last && len - n >= gb; k++) {
                rc = vmdk_gte_get(img, e, g + k, &v2);
                if (rc || vmdk_kind(sp, v2) != kind)
                    break;
                n += gb;
                count++;
            }
        }
        if (!rc && kind != VMDK_G_DATA)
            rc = vmdk_pending_add(img, e, g, g + count - 1);
        pthread_mutex_unlock(&img->lock);
        if (rc)
            break;
        if (kind == VMDK_G_DATA) {
            uint64_t host = (uint64_t)v * VMDK_SECTOR + in;
            if (host >= vmdk_limit(sp))
                rc = vs_error(-EINVAL,
                              "%s: grain %llu: data at sector %u is beyond the end of "
                              "the file",
                              e->file->filename, (unsigned long long)g, v);
            else
                rc = e->file->drv->pwrite(e->file, buf, host, n);
        } else {
            rc = vmdk_write_new(img, e, g, count, v, buf, in, n, compress);
            pthread_mutex_lock(&img->lock);
            vmdk_pending_remove(img, e, g);
            pthread_mutex_unlock(&img->lock);
        }
        buf += n;
        off += n;
        len -= n;
    }
    return rc;
}

int vmdk_sparse_zero(struct img *img, struct vmdk_extent *e, uint64_t off, uint64_t len)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    bool backing = img->backing_name && img->backing_name[0];
    uint8_t *zeros = NULL;
    int rc = 0;
    if (sp->read_only)
        return img_error(img, -EROFS, "extent '%s' is read-only", e->file->filename);
    while (len && !rc) {
        uint64_t g = off / gb, in = off % gb;
        uint64_t n = VS_MIN(len, gb - in);
        bool whole = in == 0 && (n == gb || off + n == e->length);
        uint32_t v;
        pthread_mutex_lock(&img->lock);
        vmdk_pending_wait(img, e, g, g);
        rc = vmdk_gte_get(img, e, g, &v);
        enum vmdk_grain_kind kind = vmdk_kind(sp, v);
        bool done = rc || kind == VMDK_G_ZERO;
        if (!done && whole && sp->zero_grain && kind == VMDK_G_UNALLOC) {
            rc = vmdk_gte_set(img, e, g, VMDK_GTE_ZEROED);
            done = true;
        }
        done = done || (kind == VMDK_G_UNALLOC && !backing);
        pthread_mutex_unlock(&img->lock);
        if (!done) {
            if (!zeros && !(zeros = vs_calloc(1, gb))) {
                rc = -ENOMEM;
                break;
            }
            rc = vmdk_sparse_write(img, e, zeros, off, n, false);
        }
        off += n;
        len -= n;
    }
    free(zeros);
    return rc;
}

int vmdk_sparse_status(struct img *img, struct vmdk_extent *e, uint64_t off, uint64_t len,
                       uint64_t *pnum, uint64_t *host)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    uint64_t g = off / gb, in = off % gb;
    uint64_t n = VS_MIN(len, gb - in);
    uint32_t v, v2;
    pthread_mutex_lock(&img->lock);
    int rc = vmdk_gte_get(img, e, g, &v);
    enum vmdk_grain_kind kind = vmdk_kind(sp, v);
    uint64_t per_table = (uint64_t)sp->h.gtes_per_gt;
    for (uint64_t k = 1; !rc && n < len && k < (1u << 20);) {
        uint64_t gi = g + k, gdi = gi / per_table;
        if (kind == VMDK_G_UNALLOC && gi % per_table == 0 && gdi < sp->gd_entries && !sp->gd[gdi] &&
            !sp->gt[gdi]) {
            n = VS_MIN(len, n + per_table * gb); /* a whole missing table */
            k += per_table;
            continue;
        }
        rc = vmdk_gte_get(img, e, gi, &v2);
        if (rc || vmdk_kind(sp, v2) != kind ||
            (kind == VMDK_G_DATA && v2 != v + k * sp->h.grain_sectors))
            break;
        n = VS_MIN(len, n + gb);
        k++;
    }
    pthread_mutex_unlock(&img->lock);
    if (rc)
        return rc;
    *pnum = n;
    *host = UINT64_MAX;
    switch (kind) {
    case VMDK_G_UNALLOC:
        return IMG_DS_UNALLOCATED;
    case VMDK_G_ZERO:
        return IMG_DS_ZERO;
    case VMDK_G_COMPRESSED:
        return IMG_DS_COMPRESSED;
    case VMDK_G_DATA:
        if ((uint64_t)v * VMDK_SECTOR >= vmdk_limit(sp))
            return vs_error(-EINVAL,
                            "%s: grain %llu: data at sector %u is beyond the end of the "
                            "file",
                            e->file->filename, (unsigned long long)g, v);
        if (e->file == img->file)
            *host = (uint64_t)v * VMDK_SECTOR + in;
        return IMG_DS_DATA;
    }
    return -EIO;
}

/* ---- flush: tables, and for streams the trailing metadata ------------------------------------ */

static void vmdk_marker(uint8_t *p, uint64_t val, uint32_t type)
{
    memset(p, 0, VMDK_SECTOR);
    vmdk_put64(p, val);
    vmdk_put32(p + 12, type);
}

static int vmdk_stream_write_meta(struct img *img, struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gt_sect = VS_DIV_ROUND_UP(sp->gt_bytes, VMDK_SECTOR);
    uint64_t gd_sect = VS_DIV_ROUND_UP((uint64_t)sp->gd_entries * 4, VMDK_SECTOR);
    uint64_t tables = 0;
    for (uint32_t i = 0; i < sp->gd_entries; i++) {
        bool used = false;
        for (uint32_t j = 0; sp->gt[i] && j < sp->h.gtes_per_gt && !used; j++)
            used = sp->gt[i][j] != 0;
        tables += used;
        if (!used)
            sp->gd[i] = 0;
    }
    uint64_t bytes =
        tables * (1 + gt_sect) * VMDK_SECTOR + (1 + gd_sect) * VMDK_SECTOR + 3 * VMDK_SECTOR;
    uint8_t *buf = vs_calloc(1, bytes);
    if (!buf)
        return -ENOMEM;
    uint64_t base = VS_ALIGN_UP(sp->end, VMDK_SECTOR), p = 0;
    for (uint32_t i = 0; i < sp->gd_entries; i++) {
        bool used = false;
        for (uint32_t j = 0; sp->gt[i] && j < sp->h.gtes_per_gt && !used; j++)
            used = sp->gt[i][j] != 0;
        if (!used)
            continue;
        vmdk_marker(buf + p, gt_sect, VMDK_MARKER_GT);
        p += VMDK_SECTOR;
        sp->gd[i] = (uint32_t)((base + p) / VMDK_SECTOR);
        for (uint32_t j = 0; j < sp->h.gtes_per_gt; j++)
            vmdk_put32(buf + p + 4 * j, sp->gt[i][j]);
        p += gt_sect * VMDK_SECTOR;
    }
    vmdk_marker(buf + p, gd_sect, VMDK_MARKER_GD);
    p += VMDK_SECTOR;
    uint64_t gd_at = (base + p) / VMDK_SECTOR;
    for (uint32_t i = 0; i < sp->gd_entries; i++)
        vmdk_put32(buf + p + 4 * i, sp->gd[i]);
    p += gd_sect * VMDK_SECTOR;
    vmdk_marker(buf + p, 1, VMDK_MARKER_FOOTER);
    p += VMDK_SECTOR;
    struct vmdk_header f = sp->h;
    f.gd_offset = gd_at;
    vmdk_header_encode(&f, buf + p);
    p += VMDK_SECTOR;
    vmdk_marker(buf + p, 0, VMDK_MARKER_EOS);
    p += VMDK_SECTOR;
    int rc = 0;
    if ((base + p) / VMDK_SECTOR > UINT32_MAX)
        rc = vs_error(-EFBIG, "%s: stream is full (offsets are 32-bit sectors)", e->file->filename);
    if (!rc)
        rc = e->file->drv->pwrite(e->file, buf, base, p);
    free(buf);
    if (!rc)
        rc = img_file_truncate(e->file, base + p);
    if (!rc) {
        sp->h.gd_offset = gd_at;
        sp->file_size = base + p;
        sp->meta_dirty = false;
        memset(sp->gt_dirty, 0, sp->gd_entries);
    }
    return rc;
}

int vmdk_sparse_flush(struct img *img, struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    if (sp->read_only)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&img->lock);
    if (sp->keep_tables) {
        if (sp->meta_dirty)
            rc = vmdk_stream_write_meta(img, e);
    } else {
        for (uint32_t i = 0; i < sp->gd_entries && !rc; i++) {
            if (sp->gt[i] && sp->gt_dirty[i]) {
                rc = vmdk_gt_write(e, i);
                if (!rc)
                    sp->gt_dirty[i] = 0;
            }
        }
    }
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* A stream opened for writing: load every table and find where the grains end, so new grains go
 * over the old trailing metadata instead of after it. */
static int vmdk_stream_find_end(struct img *img, struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t meta_start = sp->h.gd_offset * VMDK_SECTOR - (sp->markers ? VMDK_SECTOR : 0);
    uint32_t last = 0;
    uint64_t last_grain = 0;
    for (uint32_t i = 0; i < sp->gd_entries; i++) {
        uint32_t *t;
        int rc = vmdk_gt_get(img, e, i, &t);
        if (rc)
            return rc;
        if (!t)
            continue;
        sp->gt_dirty[i] = 1;
        meta_start =
            VS_MIN(meta_start, sp->gd[i] * (uint64_t)VMDK_SECTOR - (sp->markers ? VMDK_SECTOR : 0));
        for (uint32_t j = 0; j < sp->h.gtes_per_gt; j++) {
            if (t[j] > last && vmdk_kind(sp, t[j]) == VMDK_G_COMPRESSED) {
                last = t[j];
                last_grain = (uint64_t)i * sp->h.gtes_per_gt + j;
            }
        }
    }
    uint64_t grains_end = sp->h.overhead * VMDK_SECTOR;
    if (last) {
        uint8_t m[VMDK_SECTOR];
        uint64_t pos = (uint64_t)last * VMDK_SECTOR;
        if (!sp->markers || pos + VMDK_SECTOR > sp->file_size)
            grains_end = sp->file_size;
        else {
            int rc = e->file->drv->pread(e->file, m, pos, sizeof(m));
            if (rc)
                return rc;
            grains_end = VS_MAX(
                grains_end, VS_ALIGN_UP(pos + VMDK_MARKER_SIZE + vmdk_le32(m + 8), VMDK_SECTOR));
        }
        (void)last_grain;
    }
    uint64_t footer = VS_ALIGN_DOWN(sp->file_size, VMDK_SECTOR) - 3 * VMDK_SECTOR;
    sp->end = (meta_start >= grains_end && meta_start <= footer) ? meta_start : footer;
    sp->end = VS_MAX(sp->end, grains_end <= footer ? grains_end : footer);
    return 0;
}

/* ---- check ----------------------------------------------------------------------------------- */

struct vmdk_range {
    uint64_t start, end; /* sectors */
    uint64_t grain;      /* grain index, or UINT64_MAX for metadata */
};

static int vmdk_range_cmp(const void *a, const void *b)
{
    const struct vmdk_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void vmdk_report(struct img_check *r, const char *fmt, ...) VS_PRINTF(2, 3);
static void vmdk_report(struct img_check *r, const char *fmt, ...)
{
    if (!r->report)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    r->report(r->report_ctx, line);
}

struct vmdk_ranges {
    struct vmdk_range *v;
    size_t n, cap;
};

static int vmdk_ranges_add(struct vmdk_ranges *rs, uint64_t start, uint64_t end, uint64_t grain)
{
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 256;
        struct vmdk_range *v = realloc(rs->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        rs->v = v;
        rs->cap = cap;
    }
    rs->v[rs->n++] = (struct vmdk_range){start, end, grain};
    return 0;
}

static int vmdk_pair_cmp(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    return *x < *y ? -1 : *x > *y;
}

/* Per directory entry: 1 when an earlier entry names the same (non-zero) table. */
static uint8_t *vmdk_duplicates(const uint32_t *gd, uint32_t count)
{
    uint8_t *dup = vs_calloc(count ? count : 1, 1);
    uint64_t *pairs = vs_malloc((count ? count : 1) * sizeof(*pairs));
    if (!dup || !pairs) {
        free(dup);
        free(pairs);
        return NULL;
    }
    for (uint32_t i = 0; i < count; i++)
        pairs[i] = (uint64_t)gd[i] << 32 | i;
    qsort(pairs, count, sizeof(*pairs), vmdk_pair_cmp);
    for (uint32_t i = 1; i < count; i++)
        if ((pairs[i] >> 32) && (pairs[i] >> 32) == (pairs[i - 1] >> 32))
            dup[(uint32_t)pairs[i]] = 1;
    free(pairs);
    return dup;
}

int vmdk_sparse_check(struct img *img, struct vmdk_extent *e, struct img_check *r, int fix)
{
    struct vmdk_sparse *sp = e->sp;
    const char *fn = e->file->filename;
    int rc = vmdk_sparse_flush(img, e);
    if (rc)
        return rc;
    int64_t fs = img_file_size(e->file);
    if (fs < 0)
        return (int)fs;
    uint64_t fsize = (uint64_t)fs, fsect = VS_DIV_ROUND_UP(fsize, VMDK_SECTOR);
    uint64_t gt_sect = VS_DIV_ROUND_UP(sp->gt_bytes, VMDK_SECTOR);
    uint64_t gd_sect = VS_DIV_ROUND_UP((uint64_t)sp->gd_entries * 4, VMDK_SECTOR);
    uint64_t grains = VS_DIV_ROUND_UP(e->length, sp->grain_bytes);
    bool repair = (fix & IMG_CHECK_FIX_ERRORS) && !sp->read_only;
    struct vmdk_ranges rs = {0};
    uint32_t *table = vs_malloc(sp->gt_bytes);
    uint8_t *dup = vmdk_duplicates(sp->gd, sp->gd_entries);
    if (!table || !dup) {
        free(table);
        free(dup);
        return -ENOMEM;
    }
    r->total_clusters += grains;
    pthread_mutex_lock(&img->lock);
    rc = vmdk_ranges_add(&rs, 0, 1, UINT64_MAX);
    if (!rc && sp->h.desc_offset)
        rc = vmdk_ranges_add(&rs, sp->h.desc_offset, sp->h.desc_offset + sp->h.desc_size,
                             UINT64_MAX);
    if (!rc)
        rc = vmdk_ranges_add(&rs, sp->h.gd_offset, sp->h.gd_offset + gd_sect, UINT64_MAX);
    if (!rc && sp->rgd)
        rc = vmdk_ranges_add(&rs, sp->h.rgd_offset, sp->h.rgd_offset + gd_sect, UINT64_MAX);
    uint64_t prev_host = 0;
    bool dirty_tables = false;
    for (uint32_t i = 0; i < sp->gd_entries && !rc; i++) {
        uint32_t copies[2] = {sp->gd[i], sp->rgd ? sp->rgd[i] : 0};
        for (int c = 0; c < 2; c++) {
            if (!copies[c])
                continue;
            if (!vmdk_in_file(copies[c], sp->gt_bytes, fsize)) {
                r->corruptions++;
                vmdk_report(r,
                            "ERROR %s: %sgrain directory entry %u: table at sector %u is "
                            "beyond the end of the file",
                            fn, c ? "redundant " : "", i, copies[c]);
                if (c == 0)
                    copies[0] = 0;
                continue;
            }
            rc = vmdk_ranges_add(&rs, copies[c], copies[c] + gt_sect, UINT64_MAX);
            if (rc)
                break;
        }
        if (rc || !copies[0])
            continue;
        if (dup[i]) {
            r->corruptions++;
            vmdk_report(r,
                        "ERROR %s: grain directory entry %u points at a table another entry "
                        "already uses (sector %u)",
                        fn, i, copies[0]);
            continue;
        }
        uint32_t *t;
        rc = vmdk_gt_get(img, e, i, &t);
        if (rc)
            break;
        memcpy(table, t, sp->gt_bytes);
        if (sp->rgd && sp->rgd[i] && vmdk_in_file(sp->rgd[i], sp->gt_bytes, fsize)) {
            uint32_t *rt = vs_malloc(sp->gt_bytes);
            if (!rt) {
                rc = -ENOMEM;
                break;
            }
            rc = vmdk_read_table(img, e, sp->rgd[i], sp->h.gtes_per_gt, rt,
                                 "redundant grain "
                                 "directory entry",
                                 i);
            if (!rc && memcmp(rt, table, sp->gt_bytes)) {
                r->corruptions++;
                vmdk_report(r, "ERROR %s: grain table %u and its redundant copy differ", fn, i);
                if (repair) {
                    sp->gt_dirty[i] = 1; /* the primary wins, rewritten to both */
                    dirty_tables = true;
                    r->corruptions_fixed++;
                }
            }
            free(rt);
            if (rc)
                break;
        }
        for (uint32_t j = 0; j < sp->h.gtes_per_gt && !rc; j++) {
            uint64_t g = (uint64_t)i * sp->h.gtes_per_gt + j;
            uint32_t v = table[j];
            enum vmdk_grain_kind kind = vmdk_kind(sp, v);
            if (kind == VMDK_G_UNALLOC || kind == VMDK_G_ZERO)
                continue;
            bool bad = false;
            uint64_t len_sect = sp->h.grain_sectors;
            if (g >= grains) {
                bad = true;
                vmdk_report(r,
                            "ERROR %s: grain table %u entry %u maps grain %llu beyond the "
                            "extent's %llu grains",
                            fn, i, j, (unsigned long long)g, (unsigned long long)grains);
            } else if ((uint64_t)v >= fsect ||
                       (kind == VMDK_G_DATA && (uint64_t)v + len_sect > fsect)) {
                bad = true;
                vmdk_report(r, "ERROR %s: grain %llu at sector %u is beyond the end of the file",
                            fn, (unsigned long long)g, v);
            } else if (kind == VMDK_G_COMPRESSED && sp->markers) {
                uint8_t m[VMDK_MARKER_SIZE];
                rc = e->file->drv->pread(e->file, m, (uint64_t)v * VMDK_SECTOR, sizeof(m));
                if (rc)
                    break;
                uint64_t size = vmdk_le32(m + 8);
                uint64_t lba = vmdk_le64(m);
                len_sect = VS_DIV_ROUND_UP(VMDK_MARKER_SIZE + size, VMDK_SECTOR);
                if (size == 0 || (uint64_t)v + len_sect > fsect ||
                    (lba != g * sp->h.grain_sectors &&
                     lba != g * sp->h.grain_sectors + e->start / VMDK_SECTOR)) {
                    bad = true;
                    vmdk_report(r,
                                "ERROR %s: grain %llu: marker at sector %u is invalid (lba "
                                "%llu, size %llu)",
                                fn, (unsigned long long)g, v, (unsigned long long)lba,
                                (unsigned long long)size);
                }
                r->compressed_clusters++;
            } else if (kind == VMDK_G_COMPRESSED) {
                len_sect = 1;
                r->compressed_clusters++;
            }
            if (bad) {
                r->corruptions++;
                if (repair) {
                    rc = vmdk_gte_set(img, e, g, 0);
                    dirty_tables = true;
                    r->corruptions_fixed++;
                }
                continue;
            }
            r->allocated_clusters++;
            if (prev_host && v != prev_host)
                r->fragmented_clusters++;
            prev_host = v + (uint32_t)len_sect;
            rc = vmdk_ranges_add(&rs, v, v + len_sect, g);
        }
    }
    free(table);
    if (!rc) {
        qsort(rs.v, rs.n, sizeof(*rs.v), vmdk_range_cmp);
        uint64_t end = 0;
        size_t owner = 0;
        for (size_t k = 0; k < rs.n && !rc; k++) {
            if (k && rs.v[k].start < end) {
                struct vmdk_range *a = &rs.v[owner], *b = &rs.v[k];
                r->corruptions++;
                if (b->grain != UINT64_MAX)
                    vmdk_report(r, "ERROR %s: grain %llu at sector %llu overlaps %s at sector %llu",
                                fn, (unsigned long long)b->grain, (unsigned long long)b->start,
                                a->grain == UINT64_MAX ? "metadata" : "another grain",
                                (unsigned long long)a->start);
                else
                    vmdk_report(r, "ERROR %s: metadata at sector %llu overlaps %s at sector %llu",
                                fn, (unsigned long long)b->start,
                                a->grain == UINT64_MAX ? "other metadata" : "a grain",
                                (unsigned long long)a->start);
                if (repair && b->grain != UINT64_MAX) {
                    rc = vmdk_gte_set(img, e, b->grain, 0);
                    dirty_tables = true;
                    r->corruptions_fixed++;
                }
                continue;
            }
            if (rs.v[k].end > end) {
                end = rs.v[k].end;
                owner = k;
            }
        }
        if (e->file == img->file && !sp->stream)
            r->image_end_offset = VS_MAX(r->image_end_offset, end * VMDK_SECTOR);
        else if (e->file == img->file)
            r->image_end_offset = VS_MAX(r->image_end_offset, fsize);
    }
    pthread_mutex_unlock(&img->lock);
    free(rs.v);
    free(dup);
    if (!rc && dirty_tables)
        rc = vmdk_sparse_flush(img, e);
    return rc;
}

/* ---- compaction and emptying ----------------------------------------------------------------- */

struct vmdk_slot {
    uint32_t host; /* sector */
    uint64_t grain;
};

static int vmdk_slot_cmp(const void *a, const void *b)
{
    const struct vmdk_slot *x = a, *y = b;
    return x->host < y->host ? -1 : x->host > y->host;
}

/* The end (bytes) of every table and directory: grains may only move above it. */
static uint64_t vmdk_meta_end(const struct vmdk_sparse *sp)
{
    uint64_t gd_bytes = VS_ALIGN_UP((uint64_t)sp->gd_entries * 4, VMDK_SECTOR);
    uint64_t gt = VS_ALIGN_UP(sp->gt_bytes, VMDK_SECTOR);
    uint64_t end = VS_MAX(VMDK_SECTOR, (sp->h.desc_offset + sp->h.desc_size) * VMDK_SECTOR);
    end = VS_MAX(end, sp->h.gd_offset * VMDK_SECTOR + gd_bytes);
    if (sp->rgd)
        end = VS_MAX(end, sp->h.rgd_offset * VMDK_SECTOR + gd_bytes);
    for (uint32_t i = 0; i < sp->gd_entries; i++) {
        end = VS_MAX(end, (uint64_t)sp->gd[i] * VMDK_SECTOR + gt);
        if (sp->rgd)
            end = VS_MAX(end, (uint64_t)sp->rgd[i] * VMDK_SECTOR + gt);
    }
    return end;
}

int vmdk_sparse_compact(struct img *img, struct vmdk_extent *e, uint64_t *freed)
{
    struct vmdk_sparse *sp = e->sp;
    uint64_t gb = sp->grain_bytes;
    if (sp->compressed || sp->read_only)
        return -ENOTSUP;
    bool backing = img->backing_name && img->backing_name[0];
    uint8_t *buf = vs_malloc(gb);
    struct vmdk_slot *slots = NULL;
    size_t n = 0, cap = 0;
    int rc = buf ? 0 : -ENOMEM;
    /* 1. grains that read as zeros leave the tables */
    pthread_mutex_lock(&img->lock);
    for (uint32_t i = 0; i < sp->gd_entries && !rc; i++) {
        for (uint32_t j = 0; j < sp->h.gtes_per_gt && !rc; j++) {
            uint64_t g = (uint64_t)i * sp->h.gtes_per_gt + j;
            uint32_t v;
            rc = vmdk_gte_get(img, e, g, &v);
            if (rc || vmdk_kind(sp, v) != VMDK_G_DATA)
                continue;
            if ((uint64_t)v * VMDK_SECTOR + gb > vmdk_limit(sp)) {
                rc = vs_error(-EINVAL,
                              "%s: grain %llu: data at sector %u is beyond the end of "
                              "the file; run check first",
                              e->file->filename, (unsigned long long)g, v);
                break;
            }
            rc = e->file->drv->pread(e->file, buf, (uint64_t)v * VMDK_SECTOR, gb);
            if (rc)
                break;
            if (vs_buffer_is_zero(buf, gb) && (!backing || sp->zero_grain)) {
                rc = vmdk_gte_set(img, e, g, backing ? VMDK_GTE_ZEROED : 0);
                (*freed)++;
                continue;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                struct vmdk_slot *ns = realloc(slots, cap * sizeof(*ns));
                if (!ns) {
                    rc = -ENOMEM;
                    break;
                }
                slots = ns;
            }
            slots[n++] = (struct vmdk_slot){v, g};
        }
    }
    /* the tables must not point at freed grains before those are overwritten */
    for (uint32_t i = 0; i < sp->gd_entries && !rc; i++)
        if (sp->gt[i] && sp->gt_dirty[i] && !(rc = vmdk_gt_write(e, i)))
            sp->gt_dirty[i] = 0;
    if (!rc)
        rc = e->file->drv->flush(e->file);
    /* 2. slide the remaining grains down over the holes, in host order */
    uint64_t slot = VS_ALIGN_UP(VS_MAX(vmdk_meta_end(sp), sp->h.overhead * VMDK_SECTOR), gb);
    if (!rc && slots)
        qsort(slots, n, sizeof(*slots), vmdk_slot_cmp);
    for (size_t k = 0; k < n && !rc; k++) {
        uint64_t host = (uint64_t)slots[k].host * VMDK_SECTOR;
        if (host < slot) { /* below the data area: leave it where it is */
            continue;
        }
        if (host > slot) {
            rc = e->file->drv->pread(e->file, buf, host, gb);
            if (!rc)
                rc = e->file->drv->pwrite(e->file, buf, slot, gb);
            if (!rc)
                rc = vmdk_gte_set(img, e, slots[k].grain, (uint32_t)(slot / VMDK_SECTOR));
        }
        slot += gb;
    }
    if (!rc) {
        for (uint32_t i = 0; i < sp->gd_entries && !rc; i++)
            if (sp->gt[i] && sp->gt_dirty[i] && !(rc = vmdk_gt_write(e, i)))
                sp->gt_dirty[i] = 0;
        if (!rc)
            rc = e->file->drv->flush(e->file);
        uint64_t end = VS_MAX(slot, vmdk_meta_end(sp));
        if (!rc && end < sp->end) {
            rc = img_file_truncate(e->file, end);
            if (!rc) {
                sp->end = end;
                sp->file_size = end;
            }
        }
    }
    pthread_mutex_unlock(&img->lock);
    free(slots);
    free(buf);
    return rc;
}

int vmdk_sparse_make_empty(struct img *img, struct vmdk_extent *e)
{
    struct vmdk_sparse *sp = e->sp;
    if (sp->read_only)
        return img_error(img, -EROFS, "extent '%s' is read-only", e->file->filename);
    int rc = 0;
    pthread_mutex_lock(&img->lock);
    for (uint32_t i = 0; i < sp->gd_entries && !rc; i++) {
        uint32_t *t;
        rc = vmdk_gt_get(img, e, i, &t);
        if (rc || !t)
            continue;
        memset(t, 0, sp->gt_bytes);
        sp->gt_dirty[i] = 1;
        if (sp->keep_tables)
            sp->meta_dirty = true;
        else
            rc = vmdk_gt_write(e, i);
        if (!rc && !sp->keep_tables)
            sp->gt_dirty[i] = 0;
    }
    if (!rc && !sp->keep_tables && !sp->compressed) {
        uint64_t end =
            VS_ALIGN_UP(VS_MAX(vmdk_meta_end(sp), sp->h.overhead * VMDK_SECTOR), VMDK_SECTOR);
        rc = img_file_truncate(e->file, end);
        if (!rc) {
            sp->end = VS_ALIGN_UP(end, sp->grain_bytes);
            sp->file_size = end;
        }
    } else if (!rc && sp->keep_tables) {
        sp->end = sp->h.overhead * VMDK_SECTOR;
    }
    pthread_mutex_unlock(&img->lock);
    return rc;
}
