/*
 * lib/img/driver.h — the contract between the image engine's core (img.c) and its drivers.
 *
 * A node is one layer of an image stack. Protocol drivers (file) own an fd; format drivers (raw,
 * qcow2, …) read and write their container through node->file and leave everything about backing
 * chains to the core: they only report a backing name, and for unallocated ranges call
 * img_read_backing(). One ops table per driver; nothing outside img/ switches on format names.
 */
#ifndef VESSEL_IMG_DRIVER_H
#define VESSEL_IMG_DRIVER_H

#include <pthread.h>
#include <sys/types.h>

#include "vessel/img.h"

struct img_driver;

struct img {
    const struct img_driver *drv;
    void *state;         /* driver private */
    struct img *file;    /* protocol node under a format node; NULL for protocol nodes */
    struct img *backing; /* next image of the chain, NULL if none or not opened */
    char *filename;
    int flags;     /* IMG_OPEN_* */
    uint64_t size; /* virtual size; drivers set it in open and truncate */
    uint32_t cluster_size;
    /* Smallest write that costs no read-modify-write of the rest of its cluster: drivers whose
     * blocks take partial writes cheaply (a fresh block reads as zeros where unwritten) set it
     * below cluster_size so convert skips zeros inside a block; 0 = cluster_size. */
    uint32_t write_unit;
    char *backing_name;   /* driver sets (malloc'd) in open when the image names a backing file */
    char *backing_format; /* likewise, or NULL */
    pthread_mutex_t lock; /* for the driver's metadata; initialised by the core */
    dev_t dev;            /* identity of the underlying file, for backing-loop detection */
    ino_t ino;
};

/* What a driver's block_status returns (>= 0) besides a negative errno. */
enum img_driver_status {
    IMG_DS_UNALLOCATED = 0, /* not in this layer: the backing image decides */
    IMG_DS_DATA = 1,        /* data in this layer; *host_offset valid if != UINT64_MAX */
    IMG_DS_ZERO = 2,        /* this layer says zeros */
    IMG_DS_COMPRESSED = 3,  /* data in this layer, compressed */
};

struct img_info_extra {
    bool dirty;
    struct json_object *format_specific; /* {"type": "qcow2", "data": {...}}; core takes the ref */
};

struct img_driver {
    const char *name;
    const char *const *aliases; /* NULL-terminated, or NULL */
    bool is_protocol;

    /* 0..100: how sure the driver is that BUF (the first LEN bytes of the file) is its format. */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);

    /* Format drivers: img->file is open; set img->size, cluster_size, backing_name/format.
     * Protocol drivers: open img->filename honouring img->flags. On failure the driver frees
     * whatever it allocated (close is not called). */
    int (*open)(struct img *img);
    void (*close)(struct img *img);
    int (*create)(const struct img_create_params *params, struct vs_opts *opts);

    int (*pread)(struct img *img, void *buf, uint64_t offset, size_t len);
    int (*pwrite)(struct img *img, const void *buf, uint64_t offset, size_t len);
    int (*pwrite_compressed)(struct img *img, const void *buf, uint64_t offset, size_t len);
    int (*flush)(struct img *img);
    int (*discard)(struct img *img, uint64_t offset, uint64_t len);
    int (*write_zeroes)(struct img *img, uint64_t offset, uint64_t len, int flags);
    /* Status of [offset, offset+len) in this layer: returns IMG_DS_*, sets *pnum (> 0, <= len) to
     * the length of the run with that status and *host_offset (UINT64_MAX if none). */
    int (*block_status)(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                        uint64_t *host_offset);

    int (*truncate)(struct img *img, uint64_t size, int flags, const char *preallocation);
    int (*info)(struct img *img, struct img_info_extra *extra);
    int (*check)(struct img *img, struct img_check *result, int fix);
    int (*change_backing)(struct img *img, const char *backing_file, const char *backing_format);
    int (*make_empty)(struct img *img);
    /* Reclaim space of blocks that read as zeros (dynamic/sparse formats). */
    int (*compact)(struct img *img, struct img_compact *result);

    int (*snapshot_create)(struct img *img, const char *name);
    int (*snapshot_list)(struct img *img, struct img_snapshot **list, size_t *count);
    int (*snapshot_apply)(struct img *img, const char *name);
    int (*snapshot_delete)(struct img *img, const char *name);

    int (*measure)(struct vs_opts *opts, struct img *source, uint64_t size, uint64_t *required,
                   uint64_t *fully_allocated);

    /* Protocol drivers: bytes used on the host; host file size; raw fd. */
    int64_t (*allocated_size)(struct img *img);
    int64_t (*file_size)(struct img *img);
    int (*get_fd)(struct img *img);
};

/* ---- helpers for drivers (img.c) ------------------------------------------------------------- */

/* Read [offset, offset+len) of IMG's backing chain into buf: zeros where there is no backing
 * image or it is shorter. */
int img_read_backing(struct img *img, void *buf, uint64_t offset, size_t len);
/* Host size of a protocol node (the container file), or -errno. */
/* A format driver's I/O on its own container file (img->file), below any format logic. */
static inline int img_file_pread(struct img *img, void *buf, uint64_t off, size_t len)
{
    return img->file->drv->pread(img->file, buf, off, len);
}
static inline int img_file_pwrite(struct img *img, const void *buf, uint64_t off, size_t len)
{
    return img->file->drv->pwrite(img->file, buf, off, len);
}
int64_t img_file_size(struct img *file);
/* Resize a protocol node. */
int img_file_truncate(struct img *file, uint64_t size);
/* Fill [offset, offset+len) of a protocol node with zeros efficiently. */
int img_file_write_zeroes(struct img *file, uint64_t offset, uint64_t len);
/* Open FILENAME as a protocol node (create: O_CREAT|O_TRUNC, no lock kept). For create(). */
int img_file_open(struct img **out, const char *filename, int flags, bool create);
/* Message prefix helper: returns err after prefixing "FILENAME: ". */
int img_error(struct img *img, int err, const char *fmt, ...) VS_PRINTF(3, 4);

/* Registration: each driver defines `const struct img_driver img_driver_NAME;` and is listed in
 * img.c's table. */
extern const struct img_driver img_driver_file;
extern const struct img_driver img_driver_raw;
extern const struct img_driver img_driver_qcow2;
extern const struct img_driver img_driver_vmdk;
extern const struct img_driver img_driver_vhd; /* "vpc" alias */
extern const struct img_driver img_driver_vdi;
extern const struct img_driver img_driver_vhdx;

#endif
