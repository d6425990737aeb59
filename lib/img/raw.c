/*
 * lib/img/raw.c — the raw format: guest byte N is file byte N.
 *
 * Everything passes straight to the protocol node; sparseness is the host file system's holes,
 * so block status is SEEK_DATA/SEEK_HOLE and discard is hole punching. Create supports
 * preallocation off (sparse), falloc and full.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "img/driver.h"

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return 1; /* anything can be raw: the fallback */
}

static int raw_open(struct img *img)
{
    int64_t size = img_file_size(img->file);
    if (size < 0)
        return (int)size;
    img->size = (uint64_t)size;
    return 0;
}

static void raw_close(struct img *img)
{
}

static int raw_create(const struct img_create_params *p, struct vs_opts *opts)
{
    const char *prealloc = vs_opts_take(opts, "preallocation");
    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "falloc") &&
        strcmp(prealloc, "full"))
        return vs_error(-EINVAL, "%s: preallocation '%s' unknown (off, falloc, full)",
                        p->filename, prealloc);
    if (p->backing_file)
        return vs_error(-EINVAL, "%s: the raw format cannot have a backing file", p->filename);
    struct img *file;
    int rc = img_file_open(&file, p->filename, IMG_OPEN_RDWR, true);
    if (rc)
        return rc;
    rc = img_file_truncate(file, 0);
    if (!rc)
        rc = file->drv->truncate(file, p->size, 0, prealloc);
    if (!rc && prealloc && strcmp(prealloc, "off"))
        rc = file->drv->flush(file);
    img_close(file);
    return rc;
}

static int raw_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    return img->file->drv->pread(img->file, buf, offset, len);
}

static int raw_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    return img->file->drv->pwrite(img->file, buf, offset, len);
}

static int raw_flush(struct img *img)
{
    return img->file->drv->flush(img->file);
}

static int raw_discard(struct img *img, uint64_t offset, uint64_t len)
{
    return img->file->drv->discard(img->file, offset, len);
}

static int raw_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    return img->file->drv->write_zeroes(img->file, offset, len, flags);
}

static int raw_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                            uint64_t *host_offset)
{
    return img->file->drv->block_status(img->file, offset, len, pnum, host_offset);
}

static int raw_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    int rc = img->file->drv->truncate(img->file, size, flags, prealloc);
    if (!rc)
        img->size = size;
    return rc;
}

static int raw_measure(struct vs_opts *opts, struct img *source, uint64_t size,
                       uint64_t *required, uint64_t *fully_allocated)
{
    /* like qemu-img: a raw image needs its whole virtual size, holes or not */
    vs_opts_take(opts, "preallocation");
    if (source)
        size = img_size(source);
    *required = size;
    *fully_allocated = size;
    return 0;
}

static int raw_get_fd(struct img *img)
{
    return img->file->drv->get_fd(img->file);
}

const struct img_driver img_driver_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .flush = raw_flush,
    .discard = raw_discard,
    .write_zeroes = raw_write_zeroes,
    .block_status = raw_block_status,
    .truncate = raw_truncate,
    .measure = raw_measure,
    .get_fd = raw_get_fd,
};
