/*
 * vessel/img.h — the image engine: open disk images of any supported format and read, write and
 * inspect them at byte offsets.
 *
 * An opened image is a stack of nodes: a format node (qcow2, raw, …) on top of a protocol node
 * (file or block device), with the backing image — itself such a stack — below it. Overlays, undo
 * disks, snapshots and backup redirects are all this one mechanism. Every call reports failure as
 * a negative errno with a one-line message from vs_error_message() naming file and field.
 *
 * Thread safety: pread/pwrite/flush/discard/write_zeroes/block_status may be called on one image
 * from several threads at once (a VMM's I/O workers); open/close/resize/snapshot/check may not
 * run concurrently with anything else on the same image.
 */
#ifndef VESSEL_IMG_H
#define VESSEL_IMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>

#include "vessel/util.h"

struct img;

/* ---- open / close ---------------------------------------------------------------------------- */

enum img_open_flags {
    IMG_OPEN_RDWR = 1 << 0,       /* default is read-only */
    IMG_OPEN_NO_BACKING = 1 << 1, /* do not open the backing chain (info, rebase -u, check) */
    IMG_OPEN_NO_LOCK = 1 << 2,    /* skip the OFD lock (qemu-img -U, "force share") */
    IMG_OPEN_DIRECT = 1 << 3,     /* O_DIRECT on the protocol layer */
    IMG_OPEN_CHECK = 1 << 4,      /* open for check/repair: tolerate corruption a check reports */
    IMG_OPEN_NO_FLUSH = 1 << 5,   /* cache=unsafe: no fdatasync (convert's default, as qemu-img) */
};

/* Open FILENAME. FORMAT NULL probes it (raw is the fallback). A read-write open takes an exclusive
 * lock, a read-only open a shared one, so two writers can't share an image. Backing images are
 * opened read-only, relative to the directory of the image that names them. */
int img_open(struct img **out, const char *filename, const char *format, int flags);
/* Flush (for read-write images) and free the whole stack; NULL is fine. Returns the flush's. */
int img_close(struct img *img);

/* ---- I/O ------------------------------------------------------------------------------------- */

/* Offsets and lengths are bytes and need no alignment; I/O beyond the virtual size is -EINVAL. */
int img_pread(struct img *img, void *buf, uint64_t offset, size_t len);
int img_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len);
int img_flush(struct img *img);
/* Discard: the range may read back as zeros or as the backing data afterwards (hint). */
int img_discard(struct img *img, uint64_t offset, uint64_t len);

enum img_zero_flags {
    IMG_ZERO_MAY_UNMAP = 1 << 0, /* free the space if the format can still read back zeros */
};
/* After this the range reads as zeros (never as backing data). */
int img_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags);
/* Write whole clusters compressed (offset and len cluster-aligned, or len reaching the end).
 * -ENOTSUP when the format can't. */
int img_pwrite_compressed(struct img *img, const void *buf, uint64_t offset, size_t len);

/* ---- block status ---------------------------------------------------------------------------- */

enum img_status_flags {
    IMG_STATUS_DATA = 1 << 0,      /* reads return data stored somewhere in the chain */
    IMG_STATUS_ZERO = 1 << 1,      /* reads return zeros */
    IMG_STATUS_ALLOCATED = 1 << 2, /* this layer decides the content (not its backing) */
    IMG_STATUS_OFFSET = 1 << 3,    /* host_offset is valid: content is raw at that file offset */
    IMG_STATUS_COMPRESSED = 1 << 4,
};

struct img_extent {
    uint64_t offset;      /* guest offset of the run */
    uint64_t length;      /* bytes in the run, > 0 */
    int flags;            /* IMG_STATUS_* */
    int depth;            /* 0 = the top image decided; n = the n-th backing image */
    uint64_t host_offset; /* with IMG_STATUS_OFFSET: offset in the file of image 'depth' */
    struct img *layer;    /* the image at 'depth' (NULL when no layer holds it: reads zero) */
};

/* Status of the run starting at OFFSET (at most LEN bytes) through the whole backing chain. */
int img_block_status(struct img *img, uint64_t offset, uint64_t len, struct img_extent *ext);
/* Status in this image alone: ALLOCATED clear means "ask the backing image". */
int img_block_status_layer(struct img *img, uint64_t offset, uint64_t len, struct img_extent *ext);

/* ---- facts ----------------------------------------------------------------------------------- */

uint64_t img_size(const struct img *img);              /* virtual size in bytes */
const char *img_filename(const struct img *img);       /* as given to img_open */
const char *img_format(const struct img *img);         /* "qcow2", "raw", … */
struct img *img_backing(const struct img *img);        /* next in chain, or NULL */
const char *img_backing_name(const struct img *img);   /* as stored in the image, or NULL */
const char *img_backing_format(const struct img *img); /* as stored, or NULL */
/* The smallest write the image takes without rewriting the rest of a cluster (<= cluster size;
 * 512 for formats whose blocks fill in sparsely: vhd, vdi, vhdx). */
uint32_t img_write_unit(const struct img *img);
uint32_t img_cluster_size(const struct img *img); /* 0 when the format has none */
bool img_is_writable(const struct img *img);
/* Bytes the image occupies on the host (st_blocks), or -errno. */
int64_t img_allocated_size(struct img *img);
/* When the image's content is plain bytes in a host fd (raw over a file): the fd, else -1. */
int img_raw_fd(struct img *img);
/* The host file that this layer's IMG_STATUS_OFFSET host offsets point into (its protocol
 * node's fd), or -1. Read-only use: the image owns the fd. */
int img_host_fd(struct img *img);

/* qemu-img info as JSON (keys as `qemu-img info --output=json`). With chain, an array of the whole
 * backing chain. *out is a new reference. */
int img_info_json(struct img *img, bool chain, struct json_object **out);

/* ---- create ---------------------------------------------------------------------------------- */

struct img_create_params {
    const char *filename;
    const char *format;       /* NULL = raw */
    uint64_t size;            /* 0 with a backing file = the backing file's size */
    bool size_given;          /* false: take it from the backing file */
    const char *backing_file; /* stored as given; opened relative to filename's directory */
    const char *backing_format;
    struct vs_opts *opts; /* format options (-o); every one must be used by the driver */
    bool quiet;           /* don't print "Formatting ..." */
};

/* Create an image. Options the format doesn't know are an error. Refuses nothing that exists:
 * like qemu-img, an existing file is overwritten. */
int img_create(const struct img_create_params *params);
/* Names of all format drivers, NULL-terminated (for help text). */
const char *const *img_format_names(void);
/* The driver name FORMAT resolves to ("vpc" -> "vhd"), or NULL when unknown. */
const char *img_format_canonical(const char *format);

/* ---- maintenance ----------------------------------------------------------------------------- */

enum img_resize_flags {
    IMG_RESIZE_SHRINK = 1 << 0, /* allow making the image smaller (data beyond is lost) */
};
int img_resize(struct img *img, uint64_t new_size, int flags, const char *preallocation);

/* Point the image at another backing file (rebase -u semantics: only the header changes). */
int img_change_backing(struct img *img, const char *backing_file, const char *backing_format);
/* Drop every allocation of this layer so it reads through to its backing (after commit). */
int img_make_empty(struct img *img);

struct img_compact {
    uint64_t blocks_freed; /* blocks (of the format's allocation unit) given back */
    uint64_t bytes_before; /* host bytes used before and after */
    uint64_t bytes_after;
};
/* Reclaim the space of allocated blocks that read as zeros, as Virtual Server's compaction does
 * for dynamic disks. Needs a read-write open. -ENOTSUP for formats without such blocks. */
int img_compact(struct img *img, struct img_compact *result);

struct img_check {
    /* results */
    uint64_t corruptions;
    uint64_t leaks;
    uint64_t check_errors;
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;
    uint64_t image_end_offset;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    /* each problem found, one line ("Leaked cluster 5 refcount=1 reference=0") */
    void (*report)(void *ctx, const char *line);
    void *report_ctx;
};

enum img_check_fix {
    IMG_CHECK_FIX_LEAKS = 1 << 0,
    IMG_CHECK_FIX_ERRORS = 1 << 1,
};
/* Check consistency; repair per FIX. -ENOTSUP when the format has no check. The image must have
 * been opened with IMG_OPEN_CHECK (and RDWR to repair). */
int img_check(struct img *img, struct img_check *result, int fix);

struct img_snapshot {
    char id[32];
    char *name;
    uint64_t vm_state_size;
    uint64_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t disk_size; /* virtual disk size when taken */
};
int img_snapshot_create(struct img *img, const char *name);
/* *list is malloc'd, free with img_snapshot_list_free. */
int img_snapshot_list(struct img *img, struct img_snapshot **list, size_t *count);
void img_snapshot_list_free(struct img_snapshot *list, size_t count);
/* Find by id or name. */
int img_snapshot_apply(struct img *img, const char *name);
int img_snapshot_delete(struct img *img, const char *name);

/* qemu-img measure: the host size an image of FORMAT/OPTS needs to hold SOURCE (or, when SOURCE
 * is NULL, an empty image of SIZE bytes). */
int img_measure(const char *format, struct vs_opts *opts, struct img *source, uint64_t size,
                uint64_t *required, uint64_t *fully_allocated);

/* ---- operations (convert.c, ops.c, bench.c) ---- */

/* Progress of a long operation: DONE of TOTAL bytes. Always called from the caller's thread. */
typedef void (*img_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* qemu-img convert. Start from img_convert_params_init() (8 workers, 4 KiB sparse size). */
struct img_convert_params {
    const char *const *sources; /* concatenated in order into the target */
    size_t source_count;
    const char *source_format; /* NULL probes each source */
    int source_flags;          /* extra IMG_OPEN_* for the sources (IMG_OPEN_NO_LOCK for -U) */
    const char *target;
    int target_flags;           /* extra IMG_OPEN_* for the target (-t: NO_FLUSH, DIRECT) */
    const char *target_format;  /* NULL = raw */
    const char *backing_file;   /* -B: the target's backing; only data above it is copied */
    const char *backing_format; /* -F */
    struct vs_opts *opts;       /* -o: target format options */
    bool target_exists;         /* -n: don't create, write into the existing target */
    bool compress;              /* -c: img_pwrite_compressed every cluster with data */
    unsigned workers;           /* -m: worker threads, >= 1 */
    uint64_t sparse_size;       /* -S: zero runs this long stay holes; 0 = write everything */
    bool out_of_order;          /* -W: accepted; writes are always unordered for our formats */
    img_progress_fn progress;
    void *progress_ctx;
};
void img_convert_params_init(struct img_convert_params *params);
/* Create (unless target_exists) and fill the target. */
int img_convert(const struct img_convert_params *params);
/* The copy engine alone, on open images: SOURCES concatenated into TARGET (open read-write and at
 * least as large). TARGET_READS_ZERO says ranges never written read back as zeros. */
int img_convert_images(struct img *const *sources, size_t count, struct img *target,
                       bool target_reads_zero, const struct img_convert_params *params);

enum img_compare_outcome {
    IMG_COMPARE_IDENTICAL = 0,
    IMG_COMPARE_CONTENT,    /* content differs at 'offset' (start of the first differing sector) */
    IMG_COMPARE_SIZE,       /* strict mode: sizes differ */
    IMG_COMPARE_ALLOCATION, /* strict mode: allocation differs at 'offset' */
};
struct img_compare_result {
    enum img_compare_outcome outcome;
    uint64_t offset;
    bool size_mismatch; /* sizes differ (non-strict: the larger one's tail was checked for zeros) */
};
/* qemu-img compare: 0 with *result filled, or -errno on I/O failure. */
int img_compare(struct img *a, struct img *b, bool strict, img_progress_fn progress,
                void *progress_ctx, struct img_compare_result *result);

/* The image of TOP's backing chain (TOP itself included) that is the file NAME (same inode), or
 * NULL with the error set. */
struct img *img_chain_find(struct img *top, const char *name);
/* qemu-img commit: copy everything allocated in TOP and the layers above BASE (NULL = TOP's
 * backing) down into BASE, growing BASE if needed; then empty TOP unless KEEP_TOP. TOP must be
 * open read-write when it is to be emptied. */
int img_commit(struct img *top, struct img *base, bool keep_top, img_progress_fn progress,
               void *progress_ctx);
/* qemu-img rebase. BACKING NULL or "" removes the backing file. Safe mode (UNSAFE false) first
 * copies into OVERLAY (open read-write with its chain) every range it doesn't allocate where the
 * old and new backing differ. A relative BACKING is relative to OVERLAY's directory. OPEN_FLAGS
 * are added when opening the new backing (IMG_OPEN_NO_LOCK). */
int img_rebase(struct img *overlay, const char *backing, const char *backing_format, bool unsafe,
               int open_flags, img_progress_fn progress, void *progress_ctx);

/* One run of qemu-img map: adjacent runs with equal attributes are merged. */
struct img_map_entry {
    uint64_t start;
    uint64_t length;
    int depth;
    bool present; /* some layer of the chain allocates it */
    bool zero;
    bool data;
    bool compressed;
    bool has_offset;
    uint64_t offset;      /* host offset in 'filename' when has_offset */
    const char *filename; /* the layer that holds it, or NULL */
};
/* Call FN for each merged run of [start, start+length); FN returning non-zero stops the walk and
 * is returned. */
int img_map(struct img *img, uint64_t start, uint64_t length,
            int (*fn)(void *ctx, const struct img_map_entry *entry), void *ctx);

/* qemu-img bench: COUNT synchronous requests of BUFSIZE from DEPTH threads. */
struct img_bench_params {
    uint64_t count; /* requests */
    unsigned depth; /* worker threads, each with one request in flight */
    size_t bufsize;
    uint64_t offset; /* first request */
    uint64_t step;   /* sequential stride (0 = bufsize); also the alignment with random */
    bool write;
    int pattern; /* byte written */
    bool random; /* uniformly random offsets (seeded) instead of sequential */
    uint64_t seed;
    uint64_t flush_interval; /* writes: flush after every N requests (0 = never) */
};
struct img_bench_result {
    double seconds;
    uint64_t requests;
    uint64_t bytes;
};
void img_bench_params_init(struct img_bench_params *params);
int img_bench(struct img *img, const struct img_bench_params *params,
              struct img_bench_result *result);

#endif
