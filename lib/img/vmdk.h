/*
 * lib/img/vmdk.h — internals shared by the VMDK driver's files (vmdk.c: descriptor, extents,
 * driver ops; vmdk-sparse.c: hosted sparse and streamOptimized extents; vmdk-create.c: create and
 * measure).
 *
 * The idea: a VMDK disk is a text descriptor plus a list of extents laid end to end in the guest
 * address space. Everything above the extent list (backing chain, CID, geometry) is descriptor
 * text; everything below it is one of three kinds of byte store — flat (a plain file at an offset),
 * zero, or sparse (grain directory -> grain tables -> grains, optionally deflated with markers).
 * Guest I/O is cut at extent and grain boundaries and handed to the kind that owns the bytes.
 */
#ifndef VESSEL_IMG_VMDK_H
#define VESSEL_IMG_VMDK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "img/driver.h"

#define VMDK_SECTOR         512u
#define VMDK4_MAGIC         0x564d444bu /* "KDMV" read little-endian */
#define VMDK3_MAGIC         0x44574f43u /* "COWD" read little-endian (ESX vmfsSparse) */
#define VMDK_GD_AT_END      0xffffffffffffffffull
#define VMDK_DESC_MAX       (1u << 20)   /* descriptor text we are willing to parse */
#define VMDK_GRAIN_MAX_SECT 32768u       /* 16 MiB grains; VMware writes 128 sectors */
#define VMDK_GTES_MAX       512u         /* entries per grain table (the spec fixes 512) */
#define VMDK_GD_MAX_ENTRIES (32u << 20)  /* grain directory size bound (qemu's too) */
#define VMDK_GT_CACHE_MAX   16384u       /* clean grain tables kept in memory (32 MiB) */
#define VMDK_SPLIT_SIZE     (2ull << 30) /* twoGbMaxExtent* extent size */
#define VMDK_MARKER_SIZE    12u          /* lba (8) + size (4) before compressed grain data */

/* header flags */
#define VMDK4_FLAG_NL_DETECT  (1u << 0)
#define VMDK4_FLAG_RGD        (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESS   (1u << 16)
#define VMDK4_FLAG_MARKER     (1u << 17)

#define VMDK_GTE_ZEROED 1u

enum vmdk_marker_type {
    VMDK_MARKER_EOS = 0,
    VMDK_MARKER_GT = 1,
    VMDK_MARKER_GD = 2,
    VMDK_MARKER_FOOTER = 3,
};

enum vmdk_extent_type {
    VMDK_EXT_SPARSE, /* hosted sparse (incl. streamOptimized) */
    VMDK_EXT_FLAT,   /* FLAT, VMFS, VMFSRAW, VMFSRDM: plain bytes at an offset */
    VMDK_EXT_ZERO,   /* reads zeros, no file */
};

enum vmdk_access {
    VMDK_ACCESS_RW,
    VMDK_ACCESS_RDONLY,
    VMDK_ACCESS_NOACCESS,
};

/* The 512-byte SparseExtentHeader, decoded. */
struct vmdk_header {
    uint32_t version;
    uint32_t flags;
    uint64_t capacity;      /* sectors */
    uint64_t grain_sectors; /* grainSize */
    uint64_t desc_offset;   /* sectors */
    uint64_t desc_size;     /* sectors */
    uint32_t gtes_per_gt;
    uint64_t rgd_offset; /* sectors */
    uint64_t gd_offset;  /* sectors, or VMDK_GD_AT_END */
    uint64_t overhead;   /* sectors before the first grain */
    uint8_t unclean_shutdown;
    uint8_t check[4]; /* "\n \r\n" */
    uint16_t compress_algorithm;
};

/* A grain allocation under way: other writers of these grains wait. */
struct vmdk_pending {
    const struct vmdk_extent *ext;
    uint64_t first, last; /* grain indexes, inclusive */
};

struct vmdk_sparse {
    struct vmdk_header h;
    bool compressed; /* grains deflated (zlib stream) */
    bool markers;    /* grain markers before compressed data, metadata markers */
    bool zero_grain; /* GTE 1 means "reads zeros" */
    bool stream;     /* gd_offset was GD_AT_END: metadata lives in memory, written on flush */
    bool read_only;  /* version 3 CBT images and RDONLY extents */
    uint64_t grain_bytes;
    uint32_t gd_entries;
    uint32_t gt_bytes; /* gtes_per_gt * 4 */
    uint32_t *gd;      /* sector of each grain table, 0 = none */
    uint32_t *rgd;     /* redundant directory, or NULL */
    uint32_t **gt;     /* loaded tables (host order), NULL = not loaded */
    uint8_t *gt_dirty; /* per table: modified in memory since the last flush */
    uint32_t gt_loaded;
    uint64_t end;       /* bytes: end of the used file (appends go here) */
    uint64_t file_size; /* bytes, at open; with end, bounds every offset read from tables */
    bool keep_tables;   /* stream being written: tables live only in memory, never evicted */
    bool meta_dirty;    /* stream: GTs/GD/footer must be rewritten */
    pthread_mutex_t append_lock; /* orders new grains' writes as their placement */
};

struct vmdk_extent {
    enum vmdk_extent_type type;
    enum vmdk_access access;
    const char *type_name;  /* as written in the descriptor ("" for a monolithic header file) */
    char *filename;         /* as written in the descriptor (may be NULL for ZERO) */
    struct img *file;       /* NULL for ZERO */
    bool own_file;          /* false when it is img->file */
    uint64_t start;         /* guest byte offset */
    uint64_t length;        /* bytes */
    uint64_t flat_offset;   /* FLAT: byte offset in the file */
    struct vmdk_sparse *sp; /* SPARSE */
};

/* One parsed descriptor: its lines are kept verbatim so rewriting CID keeps everything else. */
struct vmdk_desc {
    char **lines;
    size_t line_count;
    long cid_line, parent_cid_line, hint_line; /* index into lines, -1 when absent */
    uint32_t version;
    uint32_t cid, parent_cid;
    bool has_cid, has_parent_cid;
    char *create_type;
    char *parent_hint;
    struct vmdk_desc_extent {
        enum vmdk_access access;
        uint64_t sectors;
        const char *type_name; /* static string */
        enum vmdk_extent_type type;
        char *filename;
        uint64_t offset; /* sectors, FLAT only */
        int line;
    } * extents;
    size_t extent_count;
};

struct vmdk_state {
    struct vmdk_extent *ext;
    size_t ext_count;
    struct vmdk_desc desc;
    bool have_desc;        /* a descriptor was found (monolithic images may lack one) */
    struct img *desc_file; /* where the descriptor lives (img->file) */
    uint64_t desc_offset;  /* bytes */
    uint64_t desc_space;   /* embedded: bytes available; 0: a text file of its own */
    bool cid_updated;
    bool parent_cid_checked;
    pthread_cond_t pending_cond;
    struct vmdk_pending *pending;
    size_t pending_count, pending_cap;
};

static inline uint32_t vmdk_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t vmdk_le64(const uint8_t *p)
{
    return (uint64_t)vmdk_le32(p) | (uint64_t)vmdk_le32(p + 4) << 32;
}
static inline void vmdk_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void vmdk_put64(uint8_t *p, uint64_t v)
{
    vmdk_put32(p, (uint32_t)v);
    vmdk_put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- vmdk.c ---- */
int vmdk_desc_parse(struct img *img, const char *where, const char *text, size_t len,
                    struct vmdk_desc *d);
void vmdk_desc_free(struct vmdk_desc *d);
const char *vmdk_adapter_check(const char *adapter);

/* ---- vmdk-sparse.c ---- */
/* Read and validate the header of a sparse extent (the footer for GD_AT_END streams). NAME is
 * the file named in messages. */
int vmdk_header_read(struct img *file, const char *name, struct vmdk_header *h, bool *stream);
void vmdk_header_encode(const struct vmdk_header *h, uint8_t out[512]);
int vmdk_sparse_open(struct img *img, struct vmdk_extent *e, const struct vmdk_header *h,
                     bool stream);
void vmdk_sparse_close(struct vmdk_extent *e);
int vmdk_sparse_read(struct img *img, struct vmdk_extent *e, uint8_t *buf, uint64_t off,
                     uint64_t len);
int vmdk_sparse_write(struct img *img, struct vmdk_extent *e, const uint8_t *buf, uint64_t off,
                      uint64_t len, bool compress);
int vmdk_sparse_zero(struct img *img, struct vmdk_extent *e, uint64_t off, uint64_t len);
int vmdk_sparse_status(struct img *img, struct vmdk_extent *e, uint64_t off, uint64_t len,
                       uint64_t *pnum, uint64_t *host);
int vmdk_sparse_flush(struct img *img, struct vmdk_extent *e);
int vmdk_sparse_check(struct img *img, struct vmdk_extent *e, struct img_check *r, int fix);
int vmdk_sparse_compact(struct img *img, struct vmdk_extent *e, uint64_t *freed);
int vmdk_sparse_make_empty(struct img *img, struct vmdk_extent *e);
/* Deflate IN into OUT (zlib stream); returns bytes or -errno. */
long vmdk_deflate(uint8_t *out, size_t out_len, const uint8_t *in, size_t in_len);

/* ---- vmdk-create.c ---- */
int vmdk_create(const struct img_create_params *p, struct vs_opts *opts);
int vmdk_measure(struct vs_opts *opts, struct img *source, uint64_t size, uint64_t *required,
                 uint64_t *fully_allocated);
/* The CID of BACKING (relative to IMAGE's directory), read from disk; ffffffff if unknown. */
uint32_t vmdk_parent_cid(const char *image, const char *backing);
/* Write an empty sparse extent of SIZE bytes into FILE (header, descriptor space, tables). */
int vmdk_sparse_init(struct img *file, uint64_t size, bool stream, bool zeroed_grain,
                     uint64_t desc_sectors, const char *desc);

#endif
