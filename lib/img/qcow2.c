/*
 * lib/img/qcow2.c — the qcow2 format driver's entry points: probing, parsing and validating the
 * header, open/close/create, rewriting the header, info, resize, rebasing, measuring.
 *
 * The idea: nothing read from the file is trusted. Every size and offset in the header is checked
 * against the format's limits and the file's real size before it is used to allocate memory or
 * to seek, and each failure is one line naming the file and the field. Cluster mapping and I/O
 * live in qcow2-io.c, allocation in qcow2-refcount.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img/qcow2.h"

#define QCOW2_V2_HEADER    72
#define QCOW2_V3_HEADER    104
#define QCOW2_HEADER_WRITE 112 /* what we write for v3: up to compression_type, padded */

/* ---- container I/O ---- */

int qcow2_file_pread(struct qcow2_state *s, void *buf, uint64_t off, size_t len)
{
    return s->file->drv->pread(s->file, buf, off, len);
}

int qcow2_file_pwrite(struct qcow2_state *s, const void *buf, uint64_t off, size_t len, int allowed)
{
    if (s->corrupt)
        return img_error(s->img, -EIO, "image is marked corrupt; refusing to write");
    int rc = qcow2_check_overlap(s, off, len, allowed);
    if (rc)
        return rc;
    return s->file->drv->pwrite(s->file, buf, off, len);
}

/* Header writes bypass the corrupt flag (they are how it gets set) but not the overlap check. */
static int header_pwrite(struct qcow2_state *s, const void *buf, uint64_t off, size_t len)
{
    int rc = qcow2_check_overlap(s, off, len, QCOW2_META_HEADER);
    if (rc)
        return rc;
    return s->file->drv->pwrite(s->file, buf, off, len);
}

/* ---- header writing ---- */

static const struct {
    uint8_t type, bit;
    const char *name;
} qcow2_feature_table[] = {
    {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
    {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},          {2, 1, "raw external data"},
};

static uint32_t ext_put(uint8_t *buf, uint32_t off, uint32_t type, const void *data, uint32_t len)
{
    qcow2_put_be32(buf + off, type);
    qcow2_put_be32(buf + off + 4, len);
    memcpy(buf + off + 8, data, len);
    return off + 8 + (uint32_t)VS_ALIGN_UP(len, 8);
}

/* Lay out the first cluster: fixed header, extensions, backing file name. Returns the number of
 * bytes used or -ENOSPC when they don't fit. BUF is cluster_size bytes, zeroed. */
static int header_build(const struct qcow2_state *s, uint8_t *buf, const char *backing,
                        const char *backing_fmt, bool with_features)
{
    uint32_t cs = s->cluster_size;
    uint32_t hlen = s->version >= 3 ? VS_MAX(QCOW2_HEADER_WRITE, s->header_length) : 72;
    qcow2_put_be32(buf, QCOW2_MAGIC);
    qcow2_put_be32(buf + 4, s->version);
    qcow2_put_be32(buf + 20, s->cluster_bits);
    qcow2_put_be64(buf + 24, s->img ? s->img->size : 0);
    qcow2_put_be32(buf + 36, s->l1_size);
    qcow2_put_be64(buf + 40, s->l1_offset);
    qcow2_put_be64(buf + 48, s->reftable_offset);
    qcow2_put_be32(buf + 56, s->reftable_clusters);
    qcow2_put_be32(buf + 60, s->nb_snapshots);
    qcow2_put_be64(buf + 64, s->snapshots_offset);
    if (s->version >= 3) {
        qcow2_put_be64(buf + 72, s->incompat);
        qcow2_put_be64(buf + 80, s->compat);
        qcow2_put_be64(buf + 88, s->autoclear);
        qcow2_put_be32(buf + 96, s->refcount_order);
        qcow2_put_be32(buf + 100, hlen);
        buf[104] = (uint8_t)s->compression_type;
        if (s->header_tail_len && QCOW2_HEADER_WRITE + s->header_tail_len <= cs)
            memcpy(buf + QCOW2_HEADER_WRITE, s->header_tail, s->header_tail_len);
    }
    uint64_t need = hlen;
    size_t blen = backing ? strlen(backing) : 0;
    size_t flen = backing_fmt ? strlen(backing_fmt) : 0;
    if (flen)
        need += 8 + VS_ALIGN_UP(flen, 8);
    if (with_features)
        need +=
            8 + VS_ALIGN_UP(sizeof(qcow2_feature_table) / sizeof(qcow2_feature_table[0]) * 48, 8);
    for (uint32_t i = 0; i < s->nb_exts; i++)
        need += 8 + VS_ALIGN_UP(s->exts[i].len, 8);
    need += 8 + blen;
    if (need > cs)
        return -ENOSPC;

    uint32_t off = hlen;
    if (flen)
        off = ext_put(buf, off, QCOW2_EXT_BACKING_FORMAT, backing_fmt, (uint32_t)flen);
    if (with_features) {
        size_t n = VS_ARRAY_SIZE(qcow2_feature_table);
        uint8_t table[VS_ARRAY_SIZE(qcow2_feature_table) * 48];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < n; i++) {
            table[i * 48] = qcow2_feature_table[i].type;
            table[i * 48 + 1] = qcow2_feature_table[i].bit;
            memcpy(table + i * 48 + 2, qcow2_feature_table[i].name,
                   strlen(qcow2_feature_table[i].name));
        }
        off = ext_put(buf, off, QCOW2_EXT_FEATURE_TABLE, table, (uint32_t)sizeof(table));
    }
    for (uint32_t i = 0; i < s->nb_exts; i++)
        off = ext_put(buf, off, s->exts[i].type, s->exts[i].data, s->exts[i].len);
    off += 8; /* end of extensions */
    if (blen) {
        memcpy(buf + off, backing, blen);
        qcow2_put_be64(buf + 8, off);
        qcow2_put_be32(buf + 16, (uint32_t)blen);
        off += (uint32_t)blen;
    }
    return (int)off;
}

static int header_write_full(struct qcow2_state *s, const char *backing, const char *backing_fmt)
{
    uint8_t *buf = vs_calloc(1, s->cluster_size);
    if (!buf)
        return -ENOMEM;
    int n = header_build(s, buf, backing, backing_fmt, s->version >= 3);
    if (n == -ENOSPC && s->version >= 3) {
        memset(buf, 0, s->cluster_size);
        n = header_build(s, buf, backing, backing_fmt, false);
    }
    int rc;
    if (n < 0) {
        rc = img_error(s->img, -ENOSPC,
                       "header extensions and backing file name do not fit in the first "
                       "cluster (%u bytes)",
                       s->cluster_size);
    } else {
        rc = header_pwrite(s, buf, 0, VS_ALIGN_UP((uint32_t)n, 8));
        if (!rc && s->version >= 3)
            s->header_length = VS_MAX(QCOW2_HEADER_WRITE, s->header_length);
    }
    free(buf);
    return rc;
}

int qcow2_write_header(struct qcow2_state *s)
{
    return header_write_full(s, s->img->backing_name, s->img->backing_format);
}

int qcow2_write_header_l1(struct qcow2_state *s)
{
    uint8_t b[12];
    qcow2_put_be32(b, s->l1_size);
    qcow2_put_be64(b + 4, s->l1_offset);
    return header_pwrite(s, b, 36, 12);
}

int qcow2_write_header_reftable(struct qcow2_state *s)
{
    uint8_t b[12];
    qcow2_put_be64(b, s->reftable_offset);
    qcow2_put_be32(b + 8, s->reftable_clusters);
    return header_pwrite(s, b, 48, 12);
}

int qcow2_write_header_snapshots(struct qcow2_state *s)
{
    uint8_t b[12];
    qcow2_put_be32(b, s->nb_snapshots);
    qcow2_put_be64(b + 4, s->snapshots_offset);
    return header_pwrite(s, b, 60, 12);
}

int qcow2_write_header_size(struct qcow2_state *s)
{
    uint8_t b[8];
    qcow2_put_be64(b, s->img->size);
    return header_pwrite(s, b, 24, 8);
}

int qcow2_write_incompat(struct qcow2_state *s)
{
    if (s->version < 3)
        return 0;
    uint8_t b[8];
    qcow2_put_be64(b, s->incompat);
    return header_pwrite(s, b, 72, 8);
}

int qcow2_mark_corrupt(struct qcow2_state *s)
{
    if (s->corrupt)
        return 0;
    s->corrupt = true;
    vs_warn("%s: qcow2 image marked as corrupt; it must be repaired with check before "
            "further writes",
            s->img->filename);
    if (s->version < 3)
        return 0;
    s->incompat |= QCOW2_INCOMPAT_CORRUPT;
    uint8_t b[8];
    qcow2_put_be64(b, s->incompat);
    int rc = s->file->drv->pwrite(s->file, b, 72, 8);
    if (!rc)
        rc = s->file->drv->flush(s->file);
    return rc;
}

int qcow2_mark_dirty(struct qcow2_state *s)
{
    if (!s->lazy_refcounts || (s->incompat & QCOW2_INCOMPAT_DIRTY))
        return 0;
    s->incompat |= QCOW2_INCOMPAT_DIRTY;
    int rc = qcow2_write_incompat(s);
    if (!rc)
        rc = s->file->drv->flush(s->file);
    if (rc) {
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        return rc;
    }
    s->dirty_set_by_us = true;
    return 0;
}

/* ---- geometry ---- */

uint64_t qcow2_l1_size_for(const struct qcow2_state *s, uint64_t virtual_size)
{
    uint32_t shift = s->cluster_bits + s->l2_bits;
    return (virtual_size >> shift) + ((virtual_size & ((1ull << shift) - 1)) != 0);
}

static void set_geometry(struct qcow2_state *s)
{
    s->cluster_size = 1u << s->cluster_bits;
    s->l2_entry_size = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->l2_entries = 1u << s->l2_bits;
    s->subcluster_bits = s->extended_l2 ? s->cluster_bits - 5 : s->cluster_bits;
    s->subcluster_size = 1u << s->subcluster_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (1ull << s->csize_shift) - 1;
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ull << s->refcount_bits) - 1;
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->rb_entries = 1ull << s->rb_bits;
}

/* ---- L1 table ---- */

int qcow2_l1_write_entries(struct qcow2_state *s, uint32_t first, uint32_t count)
{
    if (!count)
        return 0;
    uint8_t stackbuf[512] = {0};
    uint8_t *buf = count * 8 <= sizeof(stackbuf) ? stackbuf : vs_malloc((size_t)count * 8);
    if (!buf)
        return -ENOMEM;
    for (uint32_t i = 0; i < count; i++)
        qcow2_put_be64(buf + i * 8, s->l1[first + i]);
    int rc = qcow2_file_pwrite(s, buf, s->l1_offset + (uint64_t)first * 8, (size_t)count * 8,
                               QCOW2_META_ACTIVE_L1);
    if (buf != stackbuf)
        free(buf);
    return rc;
}

int qcow2_l1_grow(struct qcow2_state *s, uint64_t min_size)
{
    if (min_size <= s->l1_size)
        return 0;
    if (min_size * 8 > QCOW2_MAX_L1_BYTES)
        return img_error(s->img, -EFBIG,
                         "L1 table would need %llu entries (max %u); use a larger cluster size",
                         (unsigned long long)min_size, QCOW2_MAX_L1_BYTES / 8);
    uint64_t bytes = VS_ALIGN_UP(min_size * 8, s->cluster_size);
    uint64_t *l1 = vs_calloc(min_size, sizeof(uint64_t));
    uint8_t *buf = vs_calloc(1, bytes);
    if (!l1 || !buf) {
        free(l1);
        free(buf);
        return -ENOMEM;
    }
    if (s->l1_size)
        memcpy(l1, s->l1, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; i < min_size; i++)
        qcow2_put_be64(buf + i * 8, l1[i]);
    uint64_t off;
    int rc = qcow2_alloc_clusters(s, bytes >> s->cluster_bits, &off);
    if (!rc)
        rc = qcow2_file_pwrite(s, buf, off, bytes, 0);
    if (!rc)
        rc = s->file->drv->flush(s->file);
    free(buf);
    if (rc) {
        free(l1);
        return rc;
    }
    uint64_t old_off = s->l1_offset;
    uint32_t old_size = s->l1_size;
    uint64_t *old_l1 = s->l1;
    s->l1 = l1;
    s->l1_offset = off;
    s->l1_size = (uint32_t)min_size;
    rc = qcow2_write_header_l1(s);
    if (rc) {
        s->l1 = old_l1;
        s->l1_offset = old_off;
        s->l1_size = old_size;
        free(l1);
        qcow2_free_clusters(s, off, bytes);
        return rc;
    }
    free(old_l1);
    if ((rc = qcow2_meta_rebuild(s)))
        return rc;
    if (old_size)
        rc = qcow2_free_clusters(s, old_off, VS_ALIGN_UP((uint64_t)old_size * 8, s->cluster_size));
    return rc;
}

/* ---- open ---- */

static void feature_names_add(struct qcow2_state *s, const uint8_t *data, uint32_t len)
{
    for (uint32_t i = 0; i + 48 <= len; i += 48) {
        uint8_t type = data[i], bit = data[i + 1];
        if (type > 2 || bit > 63)
            continue;
        memcpy(s->feature_names[type][bit], data + i + 2, 46);
        s->feature_names[type][bit][46] = 0;
    }
}

static int parse_extensions(struct qcow2_state *s, const uint8_t *buf, uint32_t start, uint32_t end)
{
    struct img *img = s->img;
    uint32_t off = start;
    while (end >= 8 && off <= end - 8) {
        uint32_t type = qcow2_be32(buf + off);
        uint32_t len = qcow2_be32(buf + off + 4);
        off += 8;
        if (type == QCOW2_EXT_END)
            break;
        if (len > end - off)
            return img_error(img, -EINVAL,
                             "header extension %#x: length %u extends beyond the header area", type,
                             len);
        const uint8_t *data = buf + off;
        if (type == QCOW2_EXT_BACKING_FORMAT) {
            if (len > 255)
                return img_error(img, -EINVAL, "backing format header extension too long (%u)",
                                 len);
            free(img->backing_format);
            img->backing_format = vs_malloc(len + 1);
            if (!img->backing_format)
                return -ENOMEM;
            memcpy(img->backing_format, data, len);
            img->backing_format[len] = 0;
        } else if (type == QCOW2_EXT_FEATURE_TABLE) {
            feature_names_add(s, data, len);
        } else {
            if (type == QCOW2_EXT_BITMAPS && len >= 24) {
                s->nb_bitmaps = qcow2_be32(data);
                s->bitmap_dir_size = qcow2_be64(data + 8);
                s->bitmap_dir_offset = qcow2_be64(data + 16);
            }
            struct qcow2_ext *e = realloc(s->exts, (s->nb_exts + 1) * sizeof(*e));
            if (!e)
                return -ENOMEM;
            s->exts = e;
            e[s->nb_exts].type = type;
            e[s->nb_exts].len = len;
            e[s->nb_exts].data = vs_malloc(len ? len : 1);
            if (!e[s->nb_exts].data)
                return -ENOMEM;
            memcpy(e[s->nb_exts].data, data, len);
            s->nb_exts++;
        }
        off += (uint32_t)VS_MIN((uint64_t)VS_ALIGN_UP(len, 8), (uint64_t)(end - off));
    }
    return 0;
}

static int unknown_incompat_error(struct qcow2_state *s, uint64_t bits)
{
    char list[512] = "";
    size_t n = 0;
    for (int b = 0; b < 64 && n < sizeof(list) - 80; b++) {
        if (!(bits & (1ull << b)))
            continue;
        const char *name = s->feature_names[0][b];
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%sbit %d%s%s%s", n ? ", " : "", b,
                              name[0] ? " (" : "", name, name[0] ? ")" : "");
    }
    return img_error(s->img, -EINVAL, "incompatible_features: unsupported qcow2 feature(s): %s",
                     list);
}

static int validate_table(struct qcow2_state *s, const char *field, uint64_t offset, uint64_t bytes,
                          uint64_t file_size)
{
    if (offset & (s->cluster_size - 1))
        return img_error(s->img, -EINVAL, "%s %#llx is not cluster aligned", field,
                         (unsigned long long)offset);
    if (offset < s->cluster_size)
        return img_error(s->img, -EINVAL, "%s %#llx overlaps the qcow2 header", field,
                         (unsigned long long)offset);
    if (offset > file_size || bytes > file_size - offset)
        return img_error(s->img, -EINVAL,
                         "%s %#llx (+%llu bytes) is beyond the end of the file (%llu bytes)", field,
                         (unsigned long long)offset, (unsigned long long)bytes,
                         (unsigned long long)file_size);
    return 0;
}

static int read_header(struct qcow2_state *s)
{
    struct img *img = s->img;
    int64_t fsize = img_file_size(s->file);
    if (fsize < 0)
        return (int)fsize;
    uint64_t file_size = (uint64_t)fsize;
    if (file_size < QCOW2_V2_HEADER)
        return img_error(img, -EINVAL, "file is too short (%llu bytes) for a qcow2 header",
                         (unsigned long long)file_size);
    uint8_t h[QCOW2_V3_HEADER];
    int rc = qcow2_file_pread(s, h, 0, sizeof(h));
    if (rc)
        return rc;
    if (qcow2_be32(h) != QCOW2_MAGIC)
        return img_error(img, -EINVAL, "not a qcow2 image (bad magic)");
    s->version = qcow2_be32(h + 4);
    if (s->version != 2 && s->version != 3)
        return img_error(img, -ENOTSUP, "qcow2 version %u is not supported (2 or 3)", s->version);
    s->cluster_bits = qcow2_be32(h + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return img_error(img, -EINVAL, "cluster_bits %u out of range (%d..%d)", s->cluster_bits,
                         QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    uint32_t cs = 1u << s->cluster_bits;
    if (s->version == 2) {
        s->header_length = QCOW2_V2_HEADER;
        s->refcount_order = 4;
    } else {
        if (file_size < QCOW2_V3_HEADER)
            return img_error(img, -EINVAL, "file is too short (%llu bytes) for a v3 header",
                             (unsigned long long)file_size);
        s->incompat = qcow2_be64(h + 72);
        s->compat = qcow2_be64(h + 80);
        s->autoclear = qcow2_be64(h + 88);
        s->refcount_order = qcow2_be32(h + 96);
        s->header_length = qcow2_be32(h + 100);
        if (s->header_length < QCOW2_V3_HEADER || s->header_length % 8 || s->header_length > cs)
            return img_error(img, -EINVAL,
                             "header_length %u invalid (a multiple of 8, %d..%u for v3)",
                             s->header_length, QCOW2_V3_HEADER, cs);
        if (s->refcount_order > 6)
            return img_error(img, -EINVAL, "refcount_order %u out of range (0..6)",
                             s->refcount_order);
    }
    uint8_t *buf = vs_calloc(1, cs);
    if (!buf)
        return -ENOMEM;
    rc = qcow2_file_pread(s, buf, 0, (size_t)VS_MIN((uint64_t)cs, file_size));
    if (rc)
        goto out;

    uint64_t backing_off = qcow2_be64(buf + 8);
    uint32_t backing_len = qcow2_be32(buf + 16);
    uint64_t size = qcow2_be64(buf + 24);
    uint32_t crypt = qcow2_be32(buf + 32);
    s->l1_size = qcow2_be32(buf + 36);
    s->l1_offset = qcow2_be64(buf + 40);
    s->reftable_offset = qcow2_be64(buf + 48);
    s->reftable_clusters = qcow2_be32(buf + 56);
    s->nb_snapshots = qcow2_be32(buf + 60);
    s->snapshots_offset = qcow2_be64(buf + 64);
    if (s->version >= 3 && s->header_length > QCOW2_V3_HEADER)
        s->compression_type = buf[104];
    if (s->version >= 3 && s->header_length > QCOW2_HEADER_WRITE) {
        s->header_tail_len = s->header_length - QCOW2_HEADER_WRITE;
        s->header_tail = vs_malloc(s->header_tail_len);
        if (!s->header_tail) {
            rc = -ENOMEM;
            goto out;
        }
        memcpy(s->header_tail, buf + QCOW2_HEADER_WRITE, s->header_tail_len);
    }

    /* extensions first: the feature name table makes the errors below readable */
    uint32_t ext_end = cs;
    if (backing_off) {
        if (backing_len > QCOW2_MAX_BACKING_NAME) {
            rc = img_error(img, -EINVAL, "backing_file_size %u too long (max %d)", backing_len,
                           QCOW2_MAX_BACKING_NAME);
            goto out;
        }
        if (backing_off < s->header_length || backing_off > cs || backing_len > cs - backing_off) {
            rc = img_error(img, -EINVAL,
                           "backing_file_offset %#llx (+%u) is not inside the first cluster "
                           "after the header",
                           (unsigned long long)backing_off, backing_len);
            goto out;
        }
        ext_end = (uint32_t)backing_off;
    }
    if ((rc = parse_extensions(s, buf, s->header_length, ext_end)))
        goto out;
    if (backing_off && backing_len) {
        img->backing_name = vs_malloc(backing_len + 1);
        if (!img->backing_name) {
            rc = -ENOMEM;
            goto out;
        }
        memcpy(img->backing_name, buf + backing_off, backing_len);
        img->backing_name[backing_len] = 0;
        if (strlen(img->backing_name) != backing_len) {
            rc = img_error(img, -EINVAL, "backing file name contains a NUL byte");
            goto out;
        }
    }

    uint64_t unknown = s->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        rc = unknown_incompat_error(s, unknown);
        goto out;
    }
    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
        rc = img_error(img, -ENOTSUP, "external data files are not supported");
        goto out;
    }
    if (crypt) {
        rc =
            img_error(img, -ENOTSUP, "encrypted images are not supported (crypt_method %u)", crypt);
        goto out;
    }
    if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->header_length <= QCOW2_V3_HEADER || s->compression_type != QCOW2_COMPRESSION_ZSTD) {
            rc = img_error(img, -EINVAL, "compression_type %d unknown (1 = zstd)",
                           s->compression_type);
            goto out;
        }
    } else if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        rc = img_error(img, -EINVAL,
                       "compression_type %d set without the compression type feature bit",
                       s->compression_type);
        goto out;
    }
    s->extended_l2 = (s->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    if (s->extended_l2 && s->cluster_bits < 14) {
        rc = img_error(img, -EINVAL, "cluster_bits %u too small for extended L2 entries (min 14)",
                       s->cluster_bits);
        goto out;
    }
    set_geometry(s);

    /* virtual size and L1 */
    if (size > (uint64_t)INT64_MAX) {
        rc = img_error(img, -EINVAL, "size %llu too large", (unsigned long long)size);
        goto out;
    }
    uint64_t l1_needed = qcow2_l1_size_for(s, size);
    if (l1_needed * 8 > QCOW2_MAX_L1_BYTES) {
        rc = img_error(img, -EINVAL,
                       "size %llu needs an L1 table of %llu entries (max %u) at this cluster size",
                       (unsigned long long)size, (unsigned long long)l1_needed,
                       QCOW2_MAX_L1_BYTES / 8);
        goto out;
    }
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        rc = img_error(img, -EINVAL, "l1_size %u too large (max %u entries)", s->l1_size,
                       QCOW2_MAX_L1_BYTES / 8);
        goto out;
    }
    if (s->l1_size < l1_needed) {
        rc = img_error(img, -EINVAL, "l1_size %u too small for size %llu (needs %llu)", s->l1_size,
                       (unsigned long long)size, (unsigned long long)l1_needed);
        goto out;
    }
    if (s->l1_size && (rc = validate_table(s, "l1_table_offset", s->l1_offset,
                                           (uint64_t)s->l1_size * 8, file_size)))
        goto out;

    /* refcounts */
    if (s->reftable_clusters == 0) {
        rc = img_error(img, -EINVAL, "refcount_table_clusters is 0");
        goto out;
    }
    if ((uint64_t)s->reftable_clusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
        rc = img_error(img, -EINVAL, "refcount_table_clusters %u too large (max %u bytes)",
                       s->reftable_clusters, QCOW2_MAX_REFTABLE_BYTES);
        goto out;
    }
    if ((rc = validate_table(s, "refcount_table_offset", s->reftable_offset,
                             (uint64_t)s->reftable_clusters * cs, file_size)))
        goto out;

    /* snapshots */
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        rc = img_error(img, -EINVAL, "nb_snapshots %u too large (max %d)", s->nb_snapshots,
                       QCOW2_MAX_SNAPSHOTS);
        goto out;
    }
    if (s->nb_snapshots &&
        (rc = validate_table(s, "snapshots_offset", s->snapshots_offset, 40, file_size)))
        goto out;

    img->size = size;
    img->cluster_size = cs;
    s->file_size_hint = file_size;
    s->fresh_start = VS_ALIGN_UP(file_size, cs);
    s->lazy_refcounts = s->version >= 3 && (s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
out:
    free(buf);
    return rc;
}

static int load_tables(struct qcow2_state *s)
{
    if (s->l1_size) {
        s->l1 = vs_malloc((size_t)s->l1_size * 8);
        uint8_t *raw = vs_malloc((size_t)s->l1_size * 8);
        if (!s->l1 || !raw) {
            free(raw);
            return -ENOMEM;
        }
        int rc = qcow2_file_pread(s, raw, s->l1_offset, (size_t)s->l1_size * 8);
        for (uint32_t i = 0; !rc && i < s->l1_size; i++)
            s->l1[i] = qcow2_be64(raw + i * 8);
        free(raw);
        if (rc)
            return rc;
    }
    s->reftable_size = (uint64_t)s->reftable_clusters * s->cluster_size / 8;
    s->reftable = vs_malloc(s->reftable_size * 8);
    if (!s->reftable)
        return -ENOMEM;
    uint8_t *raw = vs_malloc(s->reftable_size * 8);
    if (!raw)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, raw, s->reftable_offset, s->reftable_size * 8);
    for (uint64_t i = 0; !rc && i < s->reftable_size; i++)
        s->reftable[i] = qcow2_be64(raw + i * 8);
    free(raw);
    return rc;
}

static void state_free(struct qcow2_state *s)
{
    if (!s)
        return;
    free(s->l1);
    free(s->reftable);
    free(s->header_tail);
    for (uint32_t i = 0; i < s->nb_exts; i++)
        free(s->exts[i].data);
    free(s->exts);
    qcow2_snapshots_free(s->snapshots, s->nb_snapshots);
    qcow2_cache_free(&s->l2_cache);
    qcow2_cache_free(&s->rb_cache);
    qcow2_set_free(&s->meta);
    qcow2_set_free(&s->quarantine);
    pthread_cond_destroy(&s->alloc_done);
    free(s);
}

#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_MAX_BITMAPS       65535
#define QCOW2_MAX_BITMAP_DIR    (64u << 20)

/* The bitmap directory, validated; NULL (and 0) when the image has no usable bitmaps. */
static int bitmaps_load_dir(struct qcow2_state *s, uint8_t **out)
{
    *out = NULL;
    if (!s->nb_bitmaps || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    int64_t fsize = img_file_size(s->file);
    if (fsize < 0)
        return (int)fsize;
    if (s->nb_bitmaps > QCOW2_MAX_BITMAPS || s->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR ||
        s->bitmap_dir_size < 24ull * s->nb_bitmaps ||
        (s->bitmap_dir_offset & (s->cluster_size - 1)) || s->bitmap_dir_offset < s->cluster_size ||
        s->bitmap_dir_offset > (uint64_t)fsize ||
        s->bitmap_dir_size > (uint64_t)fsize - s->bitmap_dir_offset)
        return img_error(s->img, -EINVAL,
                         "bitmaps extension: directory (%u bitmaps, %llu bytes at %#llx) invalid",
                         s->nb_bitmaps, (unsigned long long)s->bitmap_dir_size,
                         (unsigned long long)s->bitmap_dir_offset);
    uint8_t *dir = vs_malloc(s->bitmap_dir_size);
    if (!dir)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, dir, s->bitmap_dir_offset, s->bitmap_dir_size);
    if (rc) {
        free(dir);
        return rc;
    }
    *out = dir;
    return 0;
}

/* Walk the directory entries: calls ENTRY with each entry's start; stops on malformed ones. */
static int bitmaps_for_each(struct qcow2_state *s, uint8_t *dir,
                            int (*entry)(struct qcow2_state *s, uint8_t *e, void *ctx), void *ctx)
{
    uint64_t off = 0;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        if (off + 24 > s->bitmap_dir_size)
            return img_error(s->img, -EINVAL, "bitmap directory entry %u truncated", i);
        uint8_t *e = dir + off;
        uint64_t len = 24 + (uint64_t)qcow2_be32(e + 20) + qcow2_be16(e + 18);
        if (off + len > s->bitmap_dir_size)
            return img_error(s->img, -EINVAL, "bitmap directory entry %u truncated", i);
        int rc = entry(s, e, ctx);
        if (rc)
            return rc;
        off += VS_ALIGN_UP(len, 8);
    }
    return 0;
}

struct bitmap_visit {
    void (*visit)(void *ctx, uint64_t off, uint64_t len);
    void *ctx;
    int64_t file_size;
};

static int bitmap_visit_entry(struct qcow2_state *s, uint8_t *e, void *vctx)
{
    struct bitmap_visit *v = vctx;
    uint64_t table = qcow2_be64(e);
    uint32_t n = qcow2_be32(e + 8);
    if (!n)
        return 0;
    if ((table & (s->cluster_size - 1)) || table < s->cluster_size ||
        table > (uint64_t)v->file_size || (uint64_t)n * 8 > (uint64_t)v->file_size - table)
        return img_error(s->img, -EINVAL, "bitmap table offset %#llx (%u entries) invalid",
                         (unsigned long long)table, n);
    v->visit(v->ctx, table, (uint64_t)n * 8);
    uint8_t *t = vs_malloc((size_t)n * 8);
    if (!t)
        return -ENOMEM;
    int rc = qcow2_file_pread(s, t, table, (size_t)n * 8);
    for (uint32_t i = 0; !rc && i < n; i++) {
        uint64_t d = qcow2_be64(t + (size_t)i * 8) & QCOW2_OFFSET_MASK;
        if (d)
            v->visit(v->ctx, d, s->cluster_size);
    }
    free(t);
    return rc;
}

int qcow2_bitmaps_walk(struct qcow2_state *s, void (*visit)(void *ctx, uint64_t off, uint64_t len),
                       void *ctx)
{
    uint8_t *dir;
    int rc = bitmaps_load_dir(s, &dir);
    if (rc || !dir)
        return rc;
    struct bitmap_visit v = {visit, ctx, img_file_size(s->file)};
    visit(ctx, s->bitmap_dir_offset, s->bitmap_dir_size);
    rc = bitmaps_for_each(s, dir, bitmap_visit_entry, &v);
    free(dir);
    return rc;
}

static int bitmap_mark_entry(struct qcow2_state *s, uint8_t *e, void *ctx)
{
    qcow2_put_be32(e + 12, qcow2_be32(e + 12) | 1); /* in_use */
    return 0;
}

/* We don't track dirty bitmaps: declare them in use (not to be trusted), as qemu does while it
 * has an image open, so they stay well-formed and their clusters accounted for. */
static int bitmaps_mark_in_use(struct qcow2_state *s)
{
    uint8_t *dir;
    int rc = bitmaps_load_dir(s, &dir);
    if (rc || !dir)
        return rc;
    rc = bitmaps_for_each(s, dir, bitmap_mark_entry, NULL);
    if (!rc)
        rc = qcow2_file_pwrite(s, dir, s->bitmap_dir_offset, s->bitmap_dir_size, 0);
    if (!rc)
        rc = s->file->drv->flush(s->file);
    free(dir);
    return rc;
}

static int qcow2_open(struct img *img)
{
    struct qcow2_state *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->img = img;
    s->file = img->file;
    pthread_cond_init(&s->alloc_done, NULL);
    img->state = s;
    int rc = read_header(s);
    if (!rc)
        rc = load_tables(s);
    if (!rc)
        rc = qcow2_snapshots_read(s);
    if (!rc) {
        /* L2 cache: enough for the whole image when that is small, at most 32 MiB */
        size_t l2_slots = VS_MAX((size_t)16, (size_t)s->l1_size + 8);
        l2_slots = VS_MIN(l2_slots, VS_MAX((size_t)16, (size_t)((32u << 20) >> s->cluster_bits)));
        size_t rb_slots = VS_MAX((size_t)8, (size_t)((4u << 20) >> s->cluster_bits));
        rc = qcow2_cache_init(&s->l2_cache, s->cluster_size, l2_slots);
        if (!rc)
            rc = qcow2_cache_init(&s->rb_cache, s->cluster_size, rb_slots);
    }
    if (!rc)
        rc = qcow2_set_init(&s->meta);
    if (!rc)
        rc = qcow2_set_init(&s->quarantine);
    if (!rc)
        rc = qcow2_meta_rebuild(s);
    if (!rc && (img->flags & IMG_OPEN_RDWR)) {
        s->writable = true;
        if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && !(img->flags & IMG_OPEN_CHECK))
            rc = img_error(img, -EACCES,
                           "image is marked corrupt (incompatible_features bit 1); it can only "
                           "be opened read-only or repaired with check -r");
        if (!rc && (s->incompat & QCOW2_INCOMPAT_DIRTY) && !(img->flags & IMG_OPEN_CHECK)) {
            /* refcounts may be stale after a crash with lazy refcounts: rebuild them */
            rc = qcow2_check_repair_all(s);
        }
        if (!rc && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
            if (bitmaps_mark_in_use(s) != 0) {
                vs_error_clear(); /* unusable bitmaps: let them go stale (below) */
                s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
            }
        }
        if (!rc && (s->autoclear & ~QCOW2_AUTOCLEAR_BITMAPS)) {
            /* autoclear features we don't maintain must be declared stale before writing */
            s->autoclear &= QCOW2_AUTOCLEAR_BITMAPS;
            rc = qcow2_write_header(s);
        } else if (!rc && s->nb_bitmaps && !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
            rc = qcow2_write_header(s);
        }
    }
    if (rc) {
        img->state = NULL;
        state_free(s);
        return rc;
    }
    return 0;
}

/* Make sure the file covers every allocated cluster (fresh clusters may have been written only
 * partly). */
static int extend_file(struct qcow2_state *s)
{
    int64_t size = img_file_size(s->file);
    if (size < 0)
        return (int)size;
    uint64_t end;
    int rc = qcow2_refcount_end(s, &end);
    if (rc)
        return rc;
    end <<= s->cluster_bits;
    if (end > (uint64_t)size)
        return img_file_truncate(s->file, end);
    return 0;
}

static int qcow2_flush(struct img *img)
{
    struct qcow2_state *s = img->state;
    int rc = 0;
    if (s->writable && !s->corrupt) {
        pthread_mutex_lock(&img->lock);
        rc = extend_file(s);
        pthread_mutex_unlock(&img->lock);
    }
    int rc2 = s->file->drv->flush(s->file);
    return rc ? rc : rc2;
}

static void qcow2_close(struct img *img)
{
    struct qcow2_state *s = img->state;
    if (!s)
        return;
    if (s->writable && !s->corrupt && s->dirty_set_by_us) {
        if (extend_file(s) == 0 && s->file->drv->flush(s->file) == 0) {
            s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
            if (qcow2_write_incompat(s) == 0)
                s->file->drv->flush(s->file);
        }
    }
    state_free(s);
    img->state = NULL;
}

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && qcow2_be32(buf) == QCOW2_MAGIC) {
        uint32_t v = qcow2_be32(buf + 4);
        return (v == 2 || v == 3) ? 100 : 50;
    }
    return 0;
}

/* ---- create ---- */

struct qcow2_create_opts {
    uint32_t version;
    uint32_t cluster_bits;
    uint32_t refcount_order;
    bool lazy_refcounts;
    bool extended_l2;
    int compression_type;
    const char *prealloc;
};

static int parse_create_opts(struct vs_opts *opts, struct qcow2_create_opts *o,
                             const char *filename)
{
    memset(o, 0, sizeof(*o));
    o->version = 3;
    o->cluster_bits = 16;
    o->refcount_order = 4;
    const char *compat = vs_opts_take(opts, "compat");
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
            o->version = 2;
        else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))
            o->version = 3;
        else
            return vs_error(-EINVAL, "%s: compat '%s' unknown (0.10, v2, 1.1, v3)", filename,
                            compat);
    }
    uint64_t cs = 65536;
    int rc = vs_opts_take_size(opts, "cluster_size", &cs);
    if (rc)
        return rc;
    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
        return vs_error(-EINVAL, "%s: cluster_size %llu invalid (a power of two from 512 to 2M)",
                        filename, (unsigned long long)cs);
    o->cluster_bits = (uint32_t)__builtin_ctzll(cs);
    uint64_t rbits = 16;
    if ((rc = vs_opts_take_uint(opts, "refcount_bits", &rbits)))
        return rc;
    if (rbits == 0 || rbits > 64 || (rbits & (rbits - 1)))
        return vs_error(-EINVAL, "%s: refcount_bits %llu invalid (1, 2, 4, 8, 16, 32 or 64)",
                        filename, (unsigned long long)rbits);
    o->refcount_order = (uint32_t)__builtin_ctzll(rbits);
    if (o->version == 2 && rbits != 16)
        return vs_error(-EINVAL, "%s: refcount_bits must be 16 with compat=0.10", filename);
    if ((rc = vs_opts_take_bool(opts, "lazy_refcounts", &o->lazy_refcounts)))
        return rc;
    if (o->lazy_refcounts && o->version == 2)
        return vs_error(-EINVAL, "%s: lazy_refcounts requires compat=1.1", filename);
    if ((rc = vs_opts_take_bool(opts, "extended_l2", &o->extended_l2)))
        return rc;
    if (o->extended_l2 && o->version == 2)
        return vs_error(-EINVAL, "%s: extended_l2 requires compat=1.1", filename);
    if (o->extended_l2 && o->cluster_bits < 14)
        return vs_error(-EINVAL, "%s: extended_l2 requires cluster_size of at least 16k", filename);
    const char *ct = vs_opts_take(opts, "compression_type");
    if (ct) {
        if (!strcmp(ct, "zlib"))
            o->compression_type = QCOW2_COMPRESSION_ZLIB;
        else if (!strcmp(ct, "zstd"))
            o->compression_type = QCOW2_COMPRESSION_ZSTD;
        else
            return vs_error(-EINVAL, "%s: compression_type '%s' unknown (zlib, zstd)", filename,
                            ct);
        if (o->compression_type != QCOW2_COMPRESSION_ZLIB && o->version == 2)
            return vs_error(-EINVAL, "%s: compression_type %s requires compat=1.1", filename, ct);
    }
    o->prealloc = vs_opts_take(opts, "preallocation");
    if (o->prealloc && strcmp(o->prealloc, "off") && strcmp(o->prealloc, "metadata") &&
        strcmp(o->prealloc, "falloc") && strcmp(o->prealloc, "full"))
        return vs_error(-EINVAL, "%s: preallocation '%s' unknown (off, metadata, falloc, full)",
                        filename, o->prealloc);
    return 0;
}

static int qcow2_create(const struct img_create_params *p, struct vs_opts *opts)
{
    struct qcow2_create_opts o;
    int rc = parse_create_opts(opts, &o, p->filename);
    if (rc)
        return rc;
    const char *backing = p->backing_file;
    const char *backing_fmt = p->backing_format;
    const char *ob = vs_opts_take(opts, "backing_file");
    const char *obf = vs_opts_take(opts, "backing_fmt");
    if (!backing)
        backing = ob;
    if (!backing_fmt)
        backing_fmt = obf;
    if (backing && !backing[0])
        backing = NULL;
    if (!backing)
        backing_fmt = NULL;
    if (backing && strlen(backing) > QCOW2_MAX_BACKING_NAME)
        return vs_error(-EINVAL, "%s: backing file name too long (max %d bytes)", p->filename,
                        QCOW2_MAX_BACKING_NAME);

    struct qcow2_state st;
    memset(&st, 0, sizeof(st));
    struct img fake;
    memset(&fake, 0, sizeof(fake));
    fake.filename = (char *)p->filename;
    st.img = &fake;
    st.version = o.version;
    st.cluster_bits = o.cluster_bits;
    st.refcount_order = o.refcount_order;
    st.extended_l2 = o.extended_l2;
    st.compression_type = o.compression_type;
    set_geometry(&st);
    st.header_length = o.version >= 3 ? QCOW2_HEADER_WRITE : QCOW2_V2_HEADER;
    if (o.lazy_refcounts)
        st.compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    if (o.extended_l2)
        st.incompat |= QCOW2_INCOMPAT_EXTL2;
    if (o.compression_type)
        st.incompat |= QCOW2_INCOMPAT_COMPRESSION;
    uint32_t cs = st.cluster_size;
    st.reftable_offset = cs;
    st.reftable_clusters = 1;
    st.l1_offset = 0;
    st.l1_size = 0;

    uint64_t l1_needed = qcow2_l1_size_for(&st, p->size);
    if (l1_needed * 8 > QCOW2_MAX_L1_BYTES)
        return vs_error(-EINVAL,
                        "%s: size %llu is too large for cluster_size %u (try a larger cluster "
                        "size)",
                        p->filename, (unsigned long long)p->size, cs);

    /* header in cluster 0, refcount table in 1, its first block in 2 */
    uint8_t *buf = vs_calloc(3, cs);
    if (!buf)
        return -ENOMEM;
    int n = header_build(&st, buf, backing, backing_fmt, st.version >= 3);
    if (n == -ENOSPC && st.version >= 3) {
        memset(buf, 0, cs);
        n = header_build(&st, buf, backing, backing_fmt, false);
    }
    if (n < 0) {
        free(buf);
        return vs_error(-EINVAL, "%s: backing file name does not fit in the first cluster",
                        p->filename);
    }
    qcow2_put_be64(buf + 24, 0); /* size set by the resize below */
    qcow2_put_be64(buf + cs, 2ull * cs);
    for (int c = 0; c < 3; c++)
        qcow2_refcount_block_put(&st, buf + 2 * cs, (uint64_t)c, 1);

    struct img *file;
    rc = img_file_open(&file, p->filename, IMG_OPEN_RDWR, true);
    if (rc) {
        free(buf);
        return rc;
    }
    rc = img_file_truncate(file, 0);
    if (!rc)
        rc = file->drv->pwrite(file, buf, 0, 3ull * cs);
    if (!rc)
        rc = file->drv->flush(file);
    img_close(file);
    free(buf);
    if (rc)
        return rc;

    struct img *img;
    rc = img_open(&img, p->filename, "qcow2", IMG_OPEN_RDWR | IMG_OPEN_NO_BACKING);
    if (rc)
        return rc;
    if (p->size)
        rc = qcow2_truncate_internal(img, p->size, 0, o.prealloc);
    int rc2 = img_close(img);
    return rc ? rc : rc2;
}

/* ---- info ---- */

static int qcow2_info(struct img *img, struct img_info_extra *extra)
{
    struct qcow2_state *s = img->state;
    extra->dirty = (s->incompat & QCOW2_INCOMPAT_DIRTY) != 0;
    struct json_object *data = json_object_new_object();
    json_object_object_add(data, "compat",
                           json_object_new_string(s->version >= 3 ? "1.1" : "0.10"));
    json_object_object_add(
        data, "compression-type",
        json_object_new_string(s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib"));
    if (s->version >= 3)
        json_object_object_add(data, "lazy-refcounts", json_object_new_boolean(s->lazy_refcounts));
    json_object_object_add(data, "refcount-bits", json_object_new_int((int)s->refcount_bits));
    if (s->version >= 3) {
        json_object_object_add(
            data, "corrupt",
            json_object_new_boolean((s->incompat & QCOW2_INCOMPAT_CORRUPT) || s->corrupt));
        json_object_object_add(data, "extended-l2", json_object_new_boolean(s->extended_l2));
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("qcow2"));
    json_object_object_add(o, "data", data);
    extra->format_specific = o;
    return 0;
}

/* ---- resize ---- */

static bool prealloc_valid(const char *p)
{
    return !p || !strcmp(p, "off") || !strcmp(p, "metadata") || !strcmp(p, "falloc") ||
           !strcmp(p, "full");
}

/* Fill the data clusters of [offset, offset+len) per preallocation mode after
 * qcow2_preallocate() gave them host clusters. */
static int prealloc_data(struct qcow2_state *s, const char *mode, uint64_t old_file_end)
{
    uint64_t end;
    int rc = qcow2_refcount_end(s, &end);
    if (rc)
        return rc;
    end <<= s->cluster_bits;
    int64_t cur = img_file_size(s->file);
    if (cur < 0)
        return (int)cur;
    if (end <= (uint64_t)cur)
        return 0;
    if (!strcmp(mode, "metadata"))
        return img_file_truncate(s->file, end);
    return s->file->drv->truncate(s->file, end, 0, mode);
}

int qcow2_truncate_internal(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    struct qcow2_state *s = img->state;
    if (!prealloc_valid(prealloc))
        return img_error(img, -EINVAL, "preallocation '%s' unknown (off, metadata, falloc, full)",
                         prealloc);
    bool pre = prealloc && strcmp(prealloc, "off");
    uint64_t old = img->size;
    if (size == old)
        return 0;
    if (s->nb_snapshots && s->version < 3)
        return img_error(img, -ENOTSUP, "cannot resize a compat=0.10 image that has snapshots");
    if (s->nb_bitmaps && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return img_error(img, -ENOTSUP, "cannot resize an image that has persistent bitmaps");
    int rc = 0;
    if (size < old) {
        if (s->nb_snapshots)
            return img_error(img, -ENOTSUP, "cannot shrink an image that has internal snapshots");
        if (pre)
            return img_error(img, -ENOTSUP, "preallocation is only possible when growing");
        uint64_t from = VS_ALIGN_UP(size, s->cluster_size);
        uint64_t to = VS_ALIGN_UP(old, s->cluster_size);
        pthread_mutex_lock(&img->lock);
        if (to > from)
            rc = qcow2_discard_clusters(s, from, to - from, false, true, true);
        /* L2 tables wholly beyond the new end */
        uint64_t keep = qcow2_l1_size_for(s, size);
        for (uint64_t i = keep; !rc && i < s->l1_size; i++) {
            uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
            if (!l2)
                continue;
            s->l1[i] = 0;
            rc = qcow2_l1_write_entries(s, (uint32_t)i, 1);
            if (!rc) {
                qcow2_set_remove_bits(&s->meta, l2 >> s->cluster_bits, QCOW2_META_ACTIVE_L2);
                rc = qcow2_free_clusters(s, l2, s->cluster_size);
            }
        }
        pthread_mutex_unlock(&img->lock);
        /* the part of the last cluster beyond the end must read as zeros if we grow again */
        if (!rc && from > size)
            rc = qcow2_zero_range(img, size, from - size);
        if (rc)
            return rc;
        img->size = size;
        pthread_mutex_lock(&img->lock);
        rc = qcow2_write_header_size(s);
        uint64_t end = 0;
        if (!rc)
            rc = qcow2_refcount_end(s, &end);
        pthread_mutex_unlock(&img->lock);
        int64_t fsize = img_file_size(s->file);
        if (!rc && fsize > 0 && (end << s->cluster_bits) < (uint64_t)fsize) {
            rc = img_file_truncate(s->file, end << s->cluster_bits);
            s->file_size_hint = end << s->cluster_bits;
            s->fresh_start = VS_MIN(s->fresh_start, VS_MAX(s->file_size_hint, s->cluster_size));
        }
        return rc;
    }
    pthread_mutex_lock(&img->lock);
    uint64_t need = qcow2_l1_size_for(s, size);
    if (need > s->l1_size)
        rc = qcow2_l1_grow(s, need);
    int64_t old_file_end = img_file_size(s->file);
    if (!rc && pre)
        rc = qcow2_preallocate(s, old, size - old);
    if (!rc) {
        uint64_t saved = img->size;
        img->size = size;
        rc = qcow2_write_header_size(s);
        if (rc)
            img->size = saved;
    }
    pthread_mutex_unlock(&img->lock);
    if (!rc && pre)
        rc = prealloc_data(s, prealloc, old_file_end < 0 ? 0 : (uint64_t)old_file_end);
    /* a longer backing file must not shine through the new area */
    if (!rc && img->backing && img->backing->size > old)
        rc = qcow2_write_zeroes(img, old, VS_MIN(size, img->backing->size) - old, 0);
    return rc;
}

static int qcow2_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    struct qcow2_state *s = img->state;
    if (s->corrupt)
        return img_error(img, -EIO, "image is marked corrupt; refusing to write");
    return qcow2_truncate_internal(img, size, flags, prealloc);
}

/* ---- change backing ---- */

static int qcow2_change_backing(struct img *img, const char *backing_file,
                                const char *backing_format)
{
    struct qcow2_state *s = img->state;
    if (backing_file && !backing_file[0])
        backing_file = NULL;
    if (!backing_file)
        backing_format = NULL;
    if (backing_file && strlen(backing_file) > QCOW2_MAX_BACKING_NAME)
        return img_error(img, -EINVAL, "backing file name too long (max %d bytes)",
                         QCOW2_MAX_BACKING_NAME);
    if (backing_format && strlen(backing_format) > 255)
        return img_error(img, -EINVAL, "backing format name too long");
    pthread_mutex_lock(&img->lock);
    int rc = header_write_full(s, backing_file, backing_format);
    if (!rc)
        rc = s->file->drv->flush(s->file);
    if (!rc) {
        char *nb = backing_file ? vs_strdup(backing_file) : NULL;
        char *nf = backing_format ? vs_strdup(backing_format) : NULL;
        free(img->backing_name);
        free(img->backing_format);
        img->backing_name = nb;
        img->backing_format = nf;
    }
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* ---- measure ---- */

/* Refcount table + blocks for CLUSTERS clusters, counting the refcount metadata itself: iterate
 * to the fixed point. */
static uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
                                       uint32_t refcount_order)
{
    uint64_t per_table_cluster = cluster_size / 8;
    uint64_t per_block = cluster_size * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, total = 0, prev;
    do {
        prev = total;
        blocks = VS_DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = VS_DIV_ROUND_UP(blocks, per_table_cluster);
        total = clusters + blocks + table;
    } while (total != prev);
    return (blocks + table) * cluster_size;
}

/* Size of a fully preallocated image: header, L2 and L1 tables, refcounts, data. */
static uint64_t prealloc_size(uint64_t size, uint64_t cs, uint32_t refcount_order, bool extended_l2)
{
    uint64_t aligned = VS_ALIGN_UP(size, cs);
    uint64_t l2e = extended_l2 ? 16 : 8;
    uint64_t meta = cs;
    uint64_t l2_entries = VS_ALIGN_UP(aligned / cs, cs / l2e);
    meta += l2_entries * l2e;
    uint64_t l1_entries = VS_ALIGN_UP(l2_entries * l2e / cs, cs / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size((meta + aligned) / cs, cs, refcount_order);
    return meta + aligned;
}

static int qcow2_measure(struct vs_opts *opts, struct img *source, uint64_t size,
                         uint64_t *required, uint64_t *fully_allocated)
{
    struct qcow2_create_opts o;
    int rc = parse_create_opts(opts, &o, "measure");
    if (rc)
        return rc;
    bool has_backing = vs_opts_take(opts, "backing_file") != NULL;
    vs_opts_take(opts, "backing_fmt");
    uint64_t cs = 1ull << o.cluster_bits;
    uint64_t virtual_size = VS_ALIGN_UP(size, cs);
    uint64_t data = 0;
    if (source) {
        uint64_t ssize = img_size(source);
        virtual_size = VS_ALIGN_UP(ssize, cs);
        if (has_backing) {
            data = virtual_size;
        } else {
            for (uint64_t off = 0; off < ssize;) {
                struct img_extent ext;
                if ((rc = img_block_status(source, off, ssize - off, &ext)))
                    return rc;
                uint64_t pnum = ext.length;
                if (ext.flags & IMG_STATUS_ZERO) {
                    /* zeros need no data clusters */
                } else if ((ext.flags & (IMG_STATUS_DATA | IMG_STATUS_ALLOCATED)) ==
                           (IMG_STATUS_DATA | IMG_STATUS_ALLOCATED)) {
                    pnum = VS_ALIGN_UP(off + pnum, cs) - off;
                    data += off % cs + pnum;
                }
                off += pnum;
            }
        }
    }
    uint64_t l2e = o.extended_l2 ? 16 : 8;
    uint64_t l2_tables = VS_DIV_ROUND_UP(virtual_size / cs, cs / l2e);
    if (l2_tables * 8 > QCOW2_MAX_L1_BYTES)
        return vs_error(-EINVAL, "the image size is too large (try using a larger cluster size)");
    if (o.prealloc && (!strcmp(o.prealloc, "full") || !strcmp(o.prealloc, "falloc")))
        data = virtual_size;
    *fully_allocated = prealloc_size(virtual_size, cs, o.refcount_order, o.extended_l2);
    *required = *fully_allocated - virtual_size + data;
    return 0;
}

const struct img_driver img_driver_qcow2 = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create = qcow2_create,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .flush = qcow2_flush,
    .discard = qcow2_discard,
    .write_zeroes = qcow2_write_zeroes,
    .block_status = qcow2_block_status,
    .truncate = qcow2_truncate,
    .info = qcow2_info,
    .check = qcow2_check,
    .change_backing = qcow2_change_backing,
    .make_empty = qcow2_make_empty,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
    .measure = qcow2_measure,
};
