/*
 * lib/img/file.c — the protocol driver under every format: a host file or block device.
 *
 * It owns the fd and the OFD lock (shared for readers, exclusive for a writer, so two VMs can't
 * write one disk and a reader can't see a disk change under it), and maps the engine's verbs onto
 * the kernel: holes via SEEK_DATA/SEEK_HOLE, discard via PUNCH_HOLE or BLKDISCARD, zeroing via
 * ZERO_RANGE. With O_DIRECT, unaligned requests go through an aligned bounce buffer.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img/driver.h"

#define FILE_DIRECT_ALIGN 4096

struct file_state {
    int fd;
    bool is_block;
    bool direct;
};

static int file_lock(struct img *img, int fd, bool write)
{
    struct flock fl = {
        .l_type = write ? F_WRLCK : F_RDLCK,
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 0,
    };
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
        return 0;
    int err = errno;
    if (err == EAGAIN || err == EACCES) {
        if (write)
            return vs_error(-EBUSY,
                            "%s: image is locked: another process (a VM, vessel or qemu-img) "
                            "has it open",
                            img->filename);
        return vs_error(-EBUSY,
                        "%s: image is locked for writing by another process (a running VM?); "
                        "use -U to read it anyway",
                        img->filename);
    }
    if (err == EINVAL || err == ENOLCK || err == EOPNOTSUPP)
        return 0; /* file system without OFD locks: nothing to enforce with */
    return vs_error_errno(-err, "%s: cannot lock image", img->filename);
}

static int file_open_fd(struct img *img, bool create)
{
    struct file_state *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    int oflags = O_CLOEXEC | ((img->flags & IMG_OPEN_RDWR) ? O_RDWR : O_RDONLY);
    if (create)
        oflags |= O_CREAT | O_TRUNC;
    if (img->flags & IMG_OPEN_DIRECT)
        oflags |= O_DIRECT;
    s->fd = open(img->filename, oflags, 0644);
    if (s->fd < 0) {
        int err = -errno;
        free(s);
        if (err == -EINVAL && (oflags & O_DIRECT))
            return vs_error(err, "%s: the file system does not support O_DIRECT (cache=none)",
                            img->filename);
        return vs_error_errno(err, "%s: cannot open", img->filename);
    }
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        int err = -errno;
        close(s->fd);
        free(s);
        return vs_error_errno(err, "%s: cannot stat", img->filename);
    }
    if (S_ISDIR(st.st_mode)) {
        close(s->fd);
        free(s);
        return vs_error(-EISDIR, "%s: is a directory, not a disk image", img->filename);
    }
    s->is_block = S_ISBLK(st.st_mode);
    s->direct = (oflags & O_DIRECT) != 0;
    img->dev = st.st_dev;
    img->ino = st.st_ino;
    img->state = s;
    if (!create && !(img->flags & IMG_OPEN_NO_LOCK)) {
        int rc = file_lock(img, s->fd, img->flags & IMG_OPEN_RDWR);
        if (rc) {
            close(s->fd);
            free(s);
            img->state = NULL;
            return rc;
        }
    }
    int64_t size = img->drv->file_size(img);
    if (size < 0) {
        close(s->fd);
        free(s);
        img->state = NULL;
        return (int)size;
    }
    img->size = (uint64_t)size;
    return 0;
}

static int file_open(struct img *img)
{
    return file_open_fd(img, false);
}

static void file_close(struct img *img)
{
    struct file_state *s = img->state;
    if (s) {
        close(s->fd);
        free(s);
    }
}

static int64_t file_size(struct img *img)
{
    struct file_state *s = img->state;
    if (s->is_block) {
        uint64_t bytes;
        if (ioctl(s->fd, BLKGETSIZE64, &bytes) < 0)
            return vs_error_errno(-errno, "%s: cannot get block device size", img->filename);
        return (int64_t)bytes;
    }
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return vs_error_errno(-errno, "%s: cannot stat", img->filename);
    return st.st_size;
}

static int64_t file_allocated_size(struct img *img)
{
    struct file_state *s = img->state;
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return vs_error_errno(-errno, "%s: cannot stat", img->filename);
    if (s->is_block)
        return file_size(img);
    return (int64_t)st.st_blocks * 512;
}

static bool file_aligned(const void *buf, uint64_t offset, size_t len)
{
    return ((uintptr_t)buf % FILE_DIRECT_ALIGN) == 0 && offset % FILE_DIRECT_ALIGN == 0 &&
           len % FILE_DIRECT_ALIGN == 0;
}

/* O_DIRECT path for unaligned requests: widen to aligned bounds through a bounce buffer. */
static int file_bounce(struct img *img, void *rbuf, const void *wbuf, uint64_t offset,
                       size_t len)
{
    struct file_state *s = img->state;
    uint64_t start = VS_ALIGN_DOWN(offset, FILE_DIRECT_ALIGN);
    uint64_t end = VS_ALIGN_UP(offset + len, FILE_DIRECT_ALIGN);
    uint8_t *bounce = vs_aligned_alloc(FILE_DIRECT_ALIGN, end - start);
    if (!bounce)
        return -ENOMEM;
    int rc = 0;
    if (rbuf || start != offset || end != offset + len)
        rc = vs_pread_full(s->fd, bounce, end - start, start);
    if (!rc) {
        if (rbuf) {
            memcpy(rbuf, bounce + (offset - start), len);
        } else {
            memcpy(bounce + (offset - start), wbuf, len);
            rc = vs_pwrite_full(s->fd, bounce, end - start, start);
        }
    }
    free(bounce);
    return rc;
}

static int file_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    struct file_state *s = img->state;
    int rc;
    if (s->direct && !file_aligned(buf, offset, len))
        rc = file_bounce(img, buf, NULL, offset, len);
    else
        rc = vs_pread_full(s->fd, buf, len, offset);
    if (rc)
        return vs_error_errno(rc, "%s: read of %zu bytes at offset %llu failed", img->filename,
                              len, (unsigned long long)offset);
    return 0;
}

static int file_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    struct file_state *s = img->state;
    int rc;
    if (s->direct && !file_aligned(buf, offset, len))
        rc = file_bounce(img, NULL, buf, offset, len);
    else
        rc = vs_pwrite_full(s->fd, buf, len, offset);
    if (rc)
        return vs_error_errno(rc, "%s: write of %zu bytes at offset %llu failed", img->filename,
                              len, (unsigned long long)offset);
    return 0;
}

static int file_flush(struct img *img)
{
    struct file_state *s = img->state;
    if (img->flags & IMG_OPEN_NO_FLUSH)
        return 0;
    if (fdatasync(s->fd) < 0)
        return vs_error_errno(-errno, "%s: flush failed", img->filename);
    return 0;
}

static int file_discard(struct img *img, uint64_t offset, uint64_t len)
{
    struct file_state *s = img->state;
    if (s->is_block) {
        uint64_t range[2] = {offset, len};
        if (ioctl(s->fd, BLKDISCARD, range) < 0 && errno != EOPNOTSUPP && errno != ENOTTY)
            return vs_error_errno(-errno, "%s: discard failed", img->filename);
        return 0;
    }
    if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                  (off_t)len) < 0 &&
        errno != EOPNOTSUPP && errno != ENOSYS)
        return vs_error_errno(-errno, "%s: discard failed", img->filename);
    return 0;
}

static int file_write_zeroes_slow(struct img *img, uint64_t offset, uint64_t len)
{
    size_t chunk = (size_t)VS_MIN(len, 1u << 20);
    uint8_t *zero = vs_aligned_alloc(FILE_DIRECT_ALIGN, VS_ALIGN_UP(chunk, FILE_DIRECT_ALIGN));
    if (!zero)
        return -ENOMEM;
    memset(zero, 0, VS_ALIGN_UP(chunk, FILE_DIRECT_ALIGN));
    int rc = 0;
    while (len && !rc) {
        size_t n = (size_t)VS_MIN(len, chunk);
        rc = file_pwrite(img, zero, offset, n);
        offset += n;
        len -= n;
    }
    free(zero);
    return rc;
}

static int file_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    struct file_state *s = img->state;
    if (len == 0)
        return 0;
    if (s->is_block) {
        uint64_t range[2] = {offset, len};
        if (ioctl(s->fd, BLKZEROOUT, range) == 0)
            return 0;
        return file_write_zeroes_slow(img, offset, len);
    }
    int64_t size = file_size(img);
    if (size < 0)
        return (int)size;
    /* Punching a hole is cheapest and reads back zeros; only inside the current size. */
    if ((flags & IMG_ZERO_MAY_UNMAP) && offset + len <= (uint64_t)size &&
        fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                  (off_t)len) == 0)
        return 0;
    if (fallocate(s->fd, FALLOC_FL_ZERO_RANGE, (off_t)offset, (off_t)len) == 0)
        return 0;
    if (errno == ENOSPC)
        return vs_error_errno(-ENOSPC, "%s: cannot zero %llu bytes", img->filename,
                              (unsigned long long)len);
    return file_write_zeroes_slow(img, offset, len);
}

static int file_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                             uint64_t *host_offset)
{
    struct file_state *s = img->state;
    *host_offset = offset;
    if (s->is_block) {
        *pnum = len;
        return IMG_DS_DATA;
    }
    off_t data = lseek(s->fd, (off_t)offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) { /* no data after offset: a hole up to EOF and beyond */
            *pnum = len;
            return IMG_DS_ZERO;
        }
        *pnum = len; /* SEEK_DATA unsupported: everything is data */
        return IMG_DS_DATA;
    }
    if ((uint64_t)data > offset) {
        *pnum = VS_MIN(len, (uint64_t)data - offset);
        return IMG_DS_ZERO;
    }
    off_t hole = lseek(s->fd, (off_t)offset, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= offset) {
        *pnum = len;
        return IMG_DS_DATA;
    }
    *pnum = VS_MIN(len, (uint64_t)hole - offset);
    return IMG_DS_DATA;
}

static int file_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    struct file_state *s = img->state;
    if (s->is_block) {
        int64_t cur = file_size(img);
        if (cur < 0)
            return (int)cur;
        if ((uint64_t)cur < size)
            return vs_error(-EINVAL, "%s: block device is %lld bytes, cannot grow to %llu",
                            img->filename, (long long)cur, (unsigned long long)size);
        img->size = size;
        return 0;
    }
    int64_t old = file_size(img);
    if (old < 0)
        return (int)old;
    if (ftruncate(s->fd, (off_t)size) < 0)
        return vs_error_errno(-errno, "%s: cannot resize to %llu bytes", img->filename,
                              (unsigned long long)size);
    img->size = size;
    if (size > (uint64_t)old && prealloc && strcmp(prealloc, "off") != 0) {
        uint64_t grow = size - (uint64_t)old;
        if (!strcmp(prealloc, "falloc")) {
            if (fallocate(s->fd, 0, old, (off_t)grow) < 0)
                return vs_error_errno(-errno, "%s: cannot preallocate", img->filename);
        } else if (!strcmp(prealloc, "full")) {
            return file_write_zeroes_slow(img, (uint64_t)old, grow);
        } else {
            return vs_error(-EINVAL, "preallocation mode '%s' unknown (off, falloc, full)",
                            prealloc);
        }
    }
    return 0;
}

static int file_get_fd(struct img *img)
{
    struct file_state *s = img->state;
    return s->fd;
}

const struct img_driver img_driver_file = {
    .name = "file",
    .is_protocol = true,
    .open = file_open,
    .close = file_close,
    .pread = file_pread,
    .pwrite = file_pwrite,
    .flush = file_flush,
    .discard = file_discard,
    .write_zeroes = file_write_zeroes,
    .block_status = file_block_status,
    .truncate = file_truncate,
    .allocated_size = file_allocated_size,
    .file_size = file_size,
    .get_fd = file_get_fd,
};

int img_file_open(struct img **out, const char *filename, int flags, bool create)
{
    struct img *img = vs_calloc(1, sizeof(*img));
    if (!img)
        return -ENOMEM;
    img->drv = &img_driver_file;
    img->flags = flags | (create ? IMG_OPEN_RDWR : 0);
    img->filename = vs_strdup(filename);
    pthread_mutex_init(&img->lock, NULL);
    int rc = img->filename ? file_open_fd(img, create) : -ENOMEM;
    if (rc) {
        pthread_mutex_destroy(&img->lock);
        free(img->filename);
        free(img);
        return rc;
    }
    *out = img;
    return 0;
}

int64_t img_file_size(struct img *file)
{
    return file->drv->file_size(file);
}

int img_file_truncate(struct img *file, uint64_t size)
{
    return file->drv->truncate(file, size, 0, NULL);
}

int img_file_write_zeroes(struct img *file, uint64_t offset, uint64_t len)
{
    return file->drv->write_zeroes(file, offset, len, 0);
}
