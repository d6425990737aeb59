/*
 * lib/guestfs/ext.c — ext2/3/4 files through libext2fs, on any image the engine can open.
 *
 * The idea: libext2fs does all filesystem work; we only give it an io_manager whose blocks are
 * img_pread/img_pwrite at (partition start + block * block size). So a file written here lands
 * in a qcow2/vmdk/vhd overlay exactly where the guest kernel would put it, and e2fsck agrees.
 * libext2fs opens its channel by name, so the name carries the address of our window struct
 * ("vessel-img:0x…"), which only this file ever produces. A partition that holds FAT instead
 * (an EFI system partition) gets the same public calls answered by fat.c, read-write.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

struct window {
    struct img *img;
    uint64_t start;
    uint64_t size;
    int last_err; /* negative errno of the last failed img call */
};

struct guestfs_fs {
    struct guestfs_fat *fat; /* set: a FAT volume, every call goes to fat.c */
    ext2_filsys fs;
    struct window win;
    char *label;
    bool writable;
};

/* ---- the io_manager ---- */

static errcode_t win_open(const char *name, int flags, io_channel *channel);
static errcode_t win_close(io_channel ch);
static errcode_t win_set_blksize(io_channel ch, int blksize);
static errcode_t win_read_blk64(io_channel ch, unsigned long long block, int count, void *data);
static errcode_t win_write_blk64(io_channel ch, unsigned long long block, int count,
                                 const void *data);
static errcode_t win_read_blk(io_channel ch, unsigned long block, int count, void *data);
static errcode_t win_write_blk(io_channel ch, unsigned long block, int count, const void *data);
static errcode_t win_flush(io_channel ch);
static errcode_t win_write_byte(io_channel ch, unsigned long offset, int count, const void *data);
static errcode_t win_set_option(io_channel ch, const char *option, const char *arg);

static struct struct_io_manager window_manager = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "vessel image window",
    .open = win_open,
    .close = win_close,
    .set_blksize = win_set_blksize,
    .read_blk = win_read_blk,
    .write_blk = win_write_blk,
    .flush = win_flush,
    .write_byte = win_write_byte,
    .set_option = win_set_option,
    .read_blk64 = win_read_blk64,
    .write_blk64 = win_write_blk64,
};

static errcode_t win_open(const char *name, int flags, io_channel *channel)
{
    struct window *w = NULL;
    if (sscanf(name, "vessel-img:%p", (void **)&w) != 1 || !w)
        return EXT2_ET_BAD_DEVICE_NAME;
    io_channel ch = calloc(1, sizeof(*ch));
    if (!ch)
        return EXT2_ET_NO_MEMORY;
    ch->name = strdup(name);
    if (!ch->name) {
        free(ch);
        return EXT2_ET_NO_MEMORY;
    }
    ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
    ch->manager = &window_manager;
    ch->block_size = 1024;
    ch->refcount = 1;
    ch->flags = flags;
    ch->private_data = w;
    *channel = ch;
    return 0;
}

static errcode_t win_close(io_channel ch)
{
    if (--ch->refcount > 0)
        return 0;
    free(ch->name);
    free(ch);
    return 0;
}

static errcode_t win_set_blksize(io_channel ch, int blksize)
{
    if (blksize <= 0 || blksize > 65536)
        return EXT2_ET_INVALID_ARGUMENT;
    ch->block_size = blksize;
    return 0;
}

/* count < 0 means -count bytes (libext2fs's convention). */
static errcode_t win_range(io_channel ch, unsigned long long block, int count, uint64_t *off,
                           size_t *len)
{
    struct window *w = ch->private_data;
    uint64_t bytes = count < 0 ? (uint64_t)(-(int64_t)count) : (uint64_t)count * ch->block_size;
    if (block > UINT64_MAX / ch->block_size)
        return EXT2_ET_LLSEEK_FAILED;
    uint64_t o = block * ch->block_size;
    if (o > w->size || bytes > w->size - o)
        return EXT2_ET_SHORT_READ;
    *off = w->start + o;
    *len = bytes;
    return 0;
}

static errcode_t win_read_blk64(io_channel ch, unsigned long long block, int count, void *data)
{
    struct window *w = ch->private_data;
    uint64_t off;
    size_t len;
    errcode_t e = win_range(ch, block, count, &off, &len);
    if (e) {
        /* reading past the window end: zero-fill like a short device read */
        memset(data, 0, count < 0 ? (size_t)-count : (size_t)count * ch->block_size);
        return e;
    }
    int rc = img_pread(w->img, data, off, len);
    if (rc < 0) {
        w->last_err = rc;
        return EXT2_ET_SHORT_READ;
    }
    return 0;
}

static errcode_t win_write_blk64(io_channel ch, unsigned long long block, int count,
                                 const void *data)
{
    struct window *w = ch->private_data;
    if (!(ch->flags & IO_FLAG_RW))
        return EXT2_ET_RO_FILSYS;
    uint64_t off;
    size_t len;
    errcode_t e = win_range(ch, block, count, &off, &len);
    if (e)
        return EXT2_ET_SHORT_WRITE;
    int rc = img_pwrite(w->img, data, off, len);
    if (rc < 0) {
        w->last_err = rc;
        return EXT2_ET_SHORT_WRITE;
    }
    return 0;
}

static errcode_t win_read_blk(io_channel ch, unsigned long block, int count, void *data)
{
    return win_read_blk64(ch, block, count, data);
}

static errcode_t win_write_blk(io_channel ch, unsigned long block, int count, const void *data)
{
    return win_write_blk64(ch, block, count, data);
}

static errcode_t win_write_byte(io_channel ch, unsigned long offset, int count, const void *data)
{
    struct window *w = ch->private_data;
    if (count < 0 || offset > w->size || (uint64_t)count > w->size - offset)
        return EXT2_ET_SHORT_WRITE;
    int rc = img_pwrite(w->img, data, w->start + offset, (size_t)count);
    if (rc < 0) {
        w->last_err = rc;
        return EXT2_ET_SHORT_WRITE;
    }
    return 0;
}

static errcode_t win_flush(io_channel ch)
{
    struct window *w = ch->private_data;
    if (!(ch->flags & IO_FLAG_RW))
        return 0;
    int rc = img_flush(w->img);
    if (rc < 0) {
        w->last_err = rc;
        return EXT2_ET_SHORT_WRITE;
    }
    return 0;
}

static errcode_t win_set_option(io_channel ch, const char *option, const char *arg)
{
    return EXT2_ET_INVALID_ARGUMENT;
}

/* ---- errors ---- */

static int fs_err(struct guestfs_fs *g, errcode_t e, const char *what, const char *path)
{
    int err = -EIO;
    if (g && g->win.last_err < 0) {
        err = g->win.last_err;
        g->win.last_err = 0;
        return vs_error_prefix(err, "%s: %s%s%s", g->label, path ? path : "", path ? ": " : "",
                               what);
    }
    switch (e) {
    case EXT2_ET_FILE_NOT_FOUND:
        err = -ENOENT;
        break;
    case EXT2_ET_NO_MEMORY:
        err = -ENOMEM;
        break;
    case EXT2_ET_RO_FILSYS:
        err = -EROFS;
        break;
    case EXT2_ET_BLOCK_ALLOC_FAIL:
    case EXT2_ET_INODE_ALLOC_FAIL:
    case EXT2_ET_DIR_NO_SPACE:
        err = -ENOSPC;
        break;
    case EXT2_ET_NO_DIRECTORY:
        err = -ENOTDIR;
        break;
    case EXT2_ET_FILE_EXISTS:
    case EXT2_ET_DIR_EXISTS:
        err = -EEXIST;
        break;
    case EXT2_ET_BAD_MAGIC:
        err = -EINVAL;
        break;
    default:
        break;
    }
    return vs_error(err, "%s: %s%s%s: %s", g ? g->label : "?", path ? path : "", path ? ": " : "",
                    what, error_message(e));
}

/* ---- open / close / probe ---- */

/* fat.c's read callback: offsets inside the window. */
static int window_read(void *ctx, void *buf, uint64_t offset, size_t len)
{
    struct window *w = ctx;
    if (offset > w->size || len > w->size - offset)
        return vs_error(-EIO, "%s: read of %zu bytes at %llu is outside the partition",
                        img_filename(w->img), len, (unsigned long long)offset);
    return img_pread(w->img, buf, w->start + offset, len);
}

static bool has_ext_magic(struct img *img, uint64_t start, uint64_t size)
{
    uint8_t magic[2];
    return size >= 2048 && img_pread(img, magic, start + 1024 + 56, 2) == 0 &&
           (magic[0] | magic[1] << 8) == EXT2_SUPER_MAGIC;
}

static bool is_fat(struct img *img, uint64_t start, uint64_t size,
                   struct guestfs_fat_geometry *geometry)
{
    uint8_t bs[512];
    if (size < 512 || img_pread(img, bs, start, sizeof(bs)) < 0)
        return false;
    char saved[512];
    snprintf(saved, sizeof(saved), "%s", vs_error_message());
    bool ok = guestfs_fat_parse_boot(bs, sizeof(bs), size, "", geometry) == 0;
    vs_error(0, "%s", saved); /* a failed probe leaves no message behind */
    return ok;
}

enum guestfs_fs_kind guestfs_fs_kind(struct img *img, uint64_t start, uint64_t size)
{
    struct guestfs_fat_geometry geometry;
    if (has_ext_magic(img, start, size))
        return GUESTFS_FS_EXT;
    return is_fat(img, start, size, &geometry) ? GUESTFS_FS_FAT : GUESTFS_FS_NONE;
}

static int fat_open(struct img *img, uint64_t start, uint64_t size, const char *label,
                    bool writable, struct guestfs_fs **out)
{
    struct guestfs_fs *g = calloc(1, sizeof(*g));
    if (!g)
        return vs_error(-ENOMEM, "out of memory");
    g->win = (struct window){.img = img, .start = start, .size = size};
    g->label = strdup(label);
    g->writable = writable;
    int rc = !g->label  ? -ENOMEM
             : writable ? guestfs_fat_open_img(img, start, size, label, true, &g->fat)
                        : guestfs_fat_open(window_read, &g->win, size, label, &g->fat);
    if (rc < 0) {
        free(g->label);
        free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int guestfs_fs_open(struct img *img, uint64_t start, uint64_t size, const char *label,
                    bool writable, struct guestfs_fs **out)
{
    *out = NULL;
    if (writable && !img_is_writable(img))
        return vs_error(-EROFS, "%s: image is open read-only", label);
    struct guestfs_fat_geometry geometry;
    if (!has_ext_magic(img, start, size) && is_fat(img, start, size, &geometry))
        return fat_open(img, start, size, label, writable, out);
    struct guestfs_fs *g = calloc(1, sizeof(*g));
    if (!g)
        return vs_error(-ENOMEM, "out of memory");
    g->win = (struct window){.img = img, .start = start, .size = size};
    g->label = strdup(label);
    g->writable = writable;
    char name[64];
    snprintf(name, sizeof(name), "vessel-img:%p", (void *)&g->win);
    int flags = EXT2_FLAG_64BITS | EXT2_FLAG_IGNORE_CSUM_ERRORS;
    if (writable)
        flags |= EXT2_FLAG_RW;
    errcode_t e = ext2fs_open(name, flags, 0, 0, &window_manager, &g->fs);
    if (e) {
        int rc = g->label ? fs_err(g, e, "not an ext2/3/4 filesystem", NULL) : -ENOMEM;
        free(g->label);
        free(g);
        return rc;
    }
    if (writable) {
        e = ext2fs_read_bitmaps(g->fs);
        if (e) {
            int rc = fs_err(g, e, "reading bitmaps", NULL);
            ext2fs_close_free(&g->fs);
            free(g->label);
            free(g);
            return rc;
        }
        if (g->fs->super->s_state & EXT2_ERROR_FS || !(g->fs->super->s_state & EXT2_VALID_FS)) {
            int rc =
                vs_error(-EUCLEAN, "%s: filesystem is marked unclean; run e2fsck first", g->label);
            ext2fs_close_free(&g->fs);
            free(g->label);
            free(g);
            return rc;
        }
    }
    *out = g;
    return 0;
}

int guestfs_fs_close(struct guestfs_fs *g)
{
    if (!g)
        return 0;
    if (g->fat) {
        guestfs_fat_close(g->fat);
        free(g->label);
        free(g);
        return 0;
    }
    int rc = 0;
    errcode_t e = ext2fs_close_free(&g->fs);
    if (e)
        rc = fs_err(g, e, "writing back", NULL);
    free(g->label);
    free(g);
    return rc;
}

bool guestfs_fs_probe(struct img *img, uint64_t start, uint64_t size, char *uuid, size_t uuid_len,
                      char *label, size_t label_len)
{
    struct ext2_super_block sb;
    if (size < 2048 || img_pread(img, &sb, start + 1024, sizeof(sb)) < 0 ||
        ext2fs_le16_to_cpu(sb.s_magic) != EXT2_SUPER_MAGIC) {
        struct guestfs_fat_geometry geometry;
        if (!is_fat(img, start, size, &geometry))
            return false;
        if (uuid && uuid_len)
            snprintf(uuid, uuid_len, "%04X-%04X", geometry.serial >> 16, geometry.serial & 0xffff);
        if (label && label_len)
            snprintf(label, label_len, "%s", geometry.volume_label);
        return true;
    }
    if (uuid && uuid_len) {
        const uint8_t *u = sb.s_uuid;
        snprintf(uuid, uuid_len,
                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                 u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                 u[15]);
    }
    if (label && label_len) {
        size_t n = strnlen((const char *)sb.s_volume_name, sizeof(sb.s_volume_name));
        if (n >= label_len)
            n = label_len - 1;
        memcpy(label, sb.s_volume_name, n);
        label[n] = 0;
    }
    return true;
}

/* ---- paths ---- */

static int lookup(struct guestfs_fs *g, const char *path, ext2_ino_t *ino)
{
    if (!path || path[0] != '/')
        return vs_error(-EINVAL, "%s: %s: paths must be absolute", g->label, path ? path : "");
    errcode_t e = ext2fs_namei_follow(g->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, ino);
    if (e)
        return fs_err(g, e, "lookup", path);
    return 0;
}

/* Split PATH into its parent directory's inode and the last component (a new string). */
static int lookup_parent(struct guestfs_fs *g, const char *path, ext2_ino_t *parent, char **base)
{
    if (!path || path[0] != '/')
        return vs_error(-EINVAL, "%s: %s: paths must be absolute", g->label, path ? path : "");
    char *copy = strdup(path);
    if (!copy)
        return vs_error(-ENOMEM, "out of memory");
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = 0;
    char *slash = strrchr(copy, '/');
    char *name = slash + 1;
    if (!*name || !strcmp(name, ".") || !strcmp(name, "..") || strlen(name) > EXT2_NAME_LEN) {
        free(copy);
        return vs_error(-EINVAL, "%s: %s: not a usable file name", g->label, path);
    }
    *base = strdup(name);
    *slash = 0;
    int rc = lookup(g, slash == copy ? "/" : copy, parent);
    free(copy);
    if (rc == 0) {
        struct ext2_inode inode;
        errcode_t e = ext2fs_read_inode(g->fs, *parent, &inode);
        if (e)
            rc = fs_err(g, e, "reading parent", path);
        else if (!LINUX_S_ISDIR(inode.i_mode))
            rc = vs_error(-ENOTDIR, "%s: %s: parent is not a directory", g->label, path);
    }
    if (rc < 0 || !*base) {
        free(*base);
        *base = NULL;
        return rc < 0 ? rc : vs_error(-ENOMEM, "out of memory");
    }
    return 0;
}

int guestfs_fs_exists(struct guestfs_fs *g, const char *path)
{
    if (g->fat)
        return guestfs_fat_exists(g->fat, path);
    ext2_ino_t ino;
    if (!path || path[0] != '/')
        return vs_error(-EINVAL, "%s: paths must be absolute", g->label);
    errcode_t e = ext2fs_namei(g->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, &ino);
    if (e == EXT2_ET_FILE_NOT_FOUND || e == EXT2_ET_NO_DIRECTORY)
        return 0;
    if (e)
        return fs_err(g, e, "lookup", path);
    return 1;
}

/* ---- listing ---- */

struct list_ctx {
    struct guestfs_fs *g;
    struct guestfs_dirent *v;
    size_t n;
    int err;
};

static int list_cb(struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv)
{
    struct list_ctx *c = priv;
    int len = ext2fs_dirent_name_len(dirent);
    if ((len == 1 && dirent->name[0] == '.') ||
        (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
        return 0;
    if (c->n >= 1000000) {
        c->err = vs_error(-E2BIG, "%s: directory too large", c->g->label);
        return DIRENT_ABORT;
    }
    struct guestfs_dirent *nv = realloc(c->v, (c->n + 1) * sizeof(*nv));
    if (!nv) {
        c->err = vs_error(-ENOMEM, "out of memory");
        return DIRENT_ABORT;
    }
    c->v = nv;
    struct guestfs_dirent *d = &c->v[c->n];
    memset(d, 0, sizeof(*d));
    d->name = strndup(dirent->name, (size_t)len);
    d->ino = dirent->inode;
    c->n++;
    struct ext2_inode_large inode;
    memset(&inode, 0, sizeof(inode));
    if (ext2fs_read_inode_full(c->g->fs, dirent->inode, (struct ext2_inode *)&inode,
                               sizeof(inode)) == 0) {
        d->mode = inode.i_mode;
        d->size = EXT2_I_SIZE(&inode);
        d->mtime = (int64_t)inode.i_mtime;
        if (LINUX_S_ISLNK(inode.i_mode) && d->size < 4096) {
            char target[4096];
            ext2_file_t f;
            unsigned got = 0;
            if (ext2fs_is_fast_symlink((struct ext2_inode *)&inode) &&
                d->size <= sizeof(inode.i_block)) {
                memcpy(target, (char *)inode.i_block, d->size);
                got = (unsigned)d->size;
            } else if (ext2fs_file_open(c->g->fs, dirent->inode, 0, &f) == 0) {
                if (ext2fs_file_read(f, target, (unsigned)d->size, &got))
                    got = 0;
                ext2fs_file_close(f);
            }
            d->link = strndup(target, got);
        }
    }
    return 0;
}

int guestfs_fs_list(struct guestfs_fs *g, const char *path, struct guestfs_dirent **entries,
                    size_t *count)
{
    if (g->fat)
        return guestfs_fat_list(g->fat, path, entries, count);
    *entries = NULL;
    *count = 0;
    ext2_ino_t ino;
    int rc = lookup(g, path, &ino);
    if (rc < 0)
        return rc;
    struct list_ctx c = {.g = g};
    errcode_t e = ext2fs_dir_iterate(g->fs, ino, 0, NULL, list_cb, &c);
    if (e || c.err) {
        guestfs_dirents_free(c.v, c.n);
        return c.err ? c.err : fs_err(g, e, "listing", path);
    }
    *entries = c.v;
    *count = c.n;
    return 0;
}

void guestfs_dirents_free(struct guestfs_dirent *entries, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(entries[i].name);
        free(entries[i].link);
    }
    free(entries);
}

/* ---- reading ---- */

static int open_regular(struct guestfs_fs *g, const char *path, int flags, ext2_file_t *file,
                        uint64_t *size)
{
    ext2_ino_t ino;
    int rc = lookup(g, path, &ino);
    if (rc < 0)
        return rc;
    struct ext2_inode inode;
    errcode_t e = ext2fs_read_inode(g->fs, ino, &inode);
    if (e)
        return fs_err(g, e, "reading inode", path);
    if (LINUX_S_ISDIR(inode.i_mode))
        return vs_error(-EISDIR, "%s: %s: is a directory", g->label, path);
    if (!LINUX_S_ISREG(inode.i_mode))
        return vs_error(-EINVAL, "%s: %s: not a regular file", g->label, path);
    e = ext2fs_file_open(g->fs, ino, flags, file);
    if (e)
        return fs_err(g, e, "open", path);
    *size = EXT2_I_SIZE(&inode);
    return 0;
}

int guestfs_fs_read_file(struct guestfs_fs *g, const char *path, size_t max, char **data,
                         size_t *len)
{
    if (g->fat)
        return guestfs_fat_read_file(g->fat, path, max, data, len);
    *data = NULL;
    *len = 0;
    ext2_file_t f;
    uint64_t size;
    int rc = open_regular(g, path, 0, &f, &size);
    if (rc < 0)
        return rc;
    if (size > max) {
        ext2fs_file_close(f);
        return vs_error(-EFBIG, "%s: %s: %llu bytes is larger than %zu", g->label, path,
                        (unsigned long long)size, max);
    }
    char *buf = malloc(size + 1);
    if (!buf) {
        ext2fs_file_close(f);
        return vs_error(-ENOMEM, "out of memory");
    }
    size_t done = 0;
    while (done < size) {
        unsigned got = 0;
        unsigned want = (unsigned)VS_MIN(size - done, (uint64_t)1 << 20);
        errcode_t e = ext2fs_file_read(f, buf + done, want, &got);
        if (e || got == 0) {
            ext2fs_file_close(f);
            free(buf);
            return e ? fs_err(g, e, "read", path)
                     : vs_error(-EIO, "%s: %s: short read", g->label, path);
        }
        done += got;
    }
    ext2fs_file_close(f);
    buf[size] = 0;
    *data = buf;
    *len = size;
    return 0;
}

int guestfs_fs_read_to_fd(struct guestfs_fs *g, const char *path, int fd)
{
    if (g->fat)
        return guestfs_fat_read_to_fd(g->fat, path, fd);
    ext2_file_t f;
    uint64_t size;
    int rc = open_regular(g, path, 0, &f, &size);
    if (rc < 0)
        return rc;
    size_t bufsize = 1 << 20;
    char *buf = malloc(bufsize);
    if (!buf) {
        ext2fs_file_close(f);
        return vs_error(-ENOMEM, "out of memory");
    }
    uint64_t done = 0;
    while (done < size) {
        unsigned got = 0;
        errcode_t e = ext2fs_file_read(f, buf, (unsigned)VS_MIN(size - done, bufsize), &got);
        if (e || got == 0) {
            rc = e ? fs_err(g, e, "read", path)
                   : vs_error(-EIO, "%s: %s: short read", g->label, path);
            break;
        }
        size_t off = 0;
        while (off < got) {
            ssize_t w = write(fd, buf + off, got - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = vs_error_errno(-errno, "writing %s", path);
                break;
            }
            off += (size_t)w;
        }
        if (rc < 0)
            break;
        done += got;
    }
    free(buf);
    ext2fs_file_close(f);
    return rc;
}

/* ---- writing ---- */

static int need_writable(struct guestfs_fs *g)
{
    if (!g->writable)
        return vs_error(-EROFS, "%s: filesystem opened read-only", g->label);
    return 0;
}

/* Unlink NAME from PARENT and free INO when its last link goes. */
static int remove_inode(struct guestfs_fs *g, ext2_ino_t parent, const char *name, ext2_ino_t ino,
                        const char *path)
{
    struct ext2_inode inode;
    errcode_t e = ext2fs_read_inode(g->fs, ino, &inode);
    if (e)
        return fs_err(g, e, "reading inode", path);
    bool dir = LINUX_S_ISDIR(inode.i_mode);
    e = ext2fs_unlink(g->fs, parent, name, ino, 0);
    if (e)
        return fs_err(g, e, "unlink", path);
    if (dir) {
        inode.i_links_count = 0;
        struct ext2_inode pinode;
        if (ext2fs_read_inode(g->fs, parent, &pinode) == 0 && pinode.i_links_count > 1) {
            pinode.i_links_count--;
            ext2fs_write_inode(g->fs, parent, &pinode);
        }
    } else if (inode.i_links_count > 0) {
        inode.i_links_count--;
    }
    if (inode.i_links_count == 0) {
        if (ext2fs_inode_has_valid_blocks2(g->fs, &inode)) {
            e = ext2fs_punch(g->fs, ino, &inode, NULL, 0, ~0ULL);
            if (e)
                return fs_err(g, e, "freeing blocks", path);
        }
        inode.i_dtime = (uint32_t)time(NULL);
        inode.i_size = 0;
        inode.i_size_high = 0;
        e = ext2fs_write_inode(g->fs, ino, &inode);
        if (e)
            return fs_err(g, e, "writing inode", path);
        ext2fs_inode_alloc_stats2(g->fs, ino, -1, dir);
    } else {
        e = ext2fs_write_inode(g->fs, ino, &inode);
        if (e)
            return fs_err(g, e, "writing inode", path);
    }
    return 0;
}

struct empty_ctx {
    bool empty;
};

static int empty_cb(struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv)
{
    struct empty_ctx *c = priv;
    int len = ext2fs_dirent_name_len(dirent);
    if ((len == 1 && dirent->name[0] == '.') ||
        (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
        return 0;
    c->empty = false;
    return DIRENT_ABORT;
}

int guestfs_fs_remove(struct guestfs_fs *g, const char *path)
{
    if (g->fat)
        return guestfs_fat_remove(g->fat, path);
    int rc = need_writable(g);
    if (rc < 0)
        return rc;
    ext2_ino_t parent, ino;
    char *base;
    rc = lookup_parent(g, path, &parent, &base);
    if (rc < 0)
        return rc;
    errcode_t e = ext2fs_lookup(g->fs, parent, base, (int)strlen(base), NULL, &ino);
    if (e) {
        free(base);
        return fs_err(g, e, "lookup", path);
    }
    struct ext2_inode inode;
    e = ext2fs_read_inode(g->fs, ino, &inode);
    if (!e && LINUX_S_ISDIR(inode.i_mode)) {
        struct empty_ctx c = {true};
        e = ext2fs_dir_iterate(g->fs, ino, 0, NULL, empty_cb, &c);
        if (!e && !c.empty) {
            free(base);
            return vs_error(-ENOTEMPTY, "%s: %s: directory not empty", g->label, path);
        }
    }
    if (e) {
        free(base);
        return fs_err(g, e, "reading", path);
    }
    rc = remove_inode(g, parent, base, ino, path);
    free(base);
    return rc;
}

int guestfs_fs_mkdir(struct guestfs_fs *g, const char *path, mode_t mode)
{
    if (g->fat)
        return guestfs_fat_mkdir(g->fat, path);
    int rc = need_writable(g);
    if (rc < 0)
        return rc;
    ext2_ino_t parent;
    char *base;
    rc = lookup_parent(g, path, &parent, &base);
    if (rc < 0)
        return rc;
    errcode_t e = ext2fs_mkdir(g->fs, parent, 0, base);
    if (e == EXT2_ET_DIR_NO_SPACE) {
        e = ext2fs_expand_dir(g->fs, parent);
        if (!e)
            e = ext2fs_mkdir(g->fs, parent, 0, base);
    }
    if (!e && (mode & 07777) != 0755) {
        ext2_ino_t ino;
        if (ext2fs_lookup(g->fs, parent, base, (int)strlen(base), NULL, &ino) == 0) {
            struct ext2_inode inode;
            if (ext2fs_read_inode(g->fs, ino, &inode) == 0) {
                inode.i_mode = (uint16_t)(LINUX_S_IFDIR | (mode & 07777));
                ext2fs_write_inode(g->fs, ino, &inode);
            }
        }
    }
    free(base);
    if (e)
        return fs_err(g, e, "mkdir", path);
    return 0;
}

/* Source of the bytes to write: an fd or a buffer. */
struct source {
    int fd;
    const char *data;
    size_t len;
    size_t pos;
};

static ssize_t source_read(struct source *s, char *buf, size_t len)
{
    if (s->fd < 0) {
        size_t n = VS_MIN(len, s->len - s->pos);
        memcpy(buf, s->data + s->pos, n);
        s->pos += n;
        return (ssize_t)n;
    }
    for (;;) {
        ssize_t r = read(s->fd, buf, len);
        if (r < 0 && errno == EINTR)
            continue;
        return r < 0 ? -errno : r;
    }
}

static int write_common(struct guestfs_fs *g, const char *path, struct source *src, mode_t mode)
{
    int rc = need_writable(g);
    if (rc < 0)
        return rc;
    ext2_ino_t parent, ino;
    char *base;
    rc = lookup_parent(g, path, &parent, &base);
    if (rc < 0)
        return rc;
    ext2_filsys fs = g->fs;
    /* replacing: drop the old file first (never a directory) */
    errcode_t e = ext2fs_lookup(fs, parent, base, (int)strlen(base), NULL, &ino);
    if (e == 0) {
        struct ext2_inode old;
        e = ext2fs_read_inode(fs, ino, &old);
        if (!e && LINUX_S_ISDIR(old.i_mode)) {
            free(base);
            return vs_error(-EISDIR, "%s: %s: is a directory", g->label, path);
        }
        rc = remove_inode(g, parent, base, ino, path);
        if (rc < 0) {
            free(base);
            return rc;
        }
    }
    e = ext2fs_new_inode(fs, parent, LINUX_S_IFREG | 0644, NULL, &ino);
    if (e) {
        free(base);
        return fs_err(g, e, "allocating inode", path);
    }
    e = ext2fs_link(fs, parent, base, ino, EXT2_FT_REG_FILE);
    if (e == EXT2_ET_DIR_NO_SPACE) {
        e = ext2fs_expand_dir(fs, parent);
        if (!e)
            e = ext2fs_link(fs, parent, base, ino, EXT2_FT_REG_FILE);
    }
    free(base);
    if (e)
        return fs_err(g, e, "linking", path);
    ext2fs_inode_alloc_stats2(fs, ino, +1, 0);

    struct ext2_inode inode;
    memset(&inode, 0, sizeof(inode));
    inode.i_mode = (uint16_t)(LINUX_S_IFREG | (mode & 07777));
    inode.i_atime = inode.i_ctime = inode.i_mtime = (uint32_t)time(NULL);
    inode.i_links_count = 1;
    if (ext2fs_has_feature_extents(fs->super)) {
        ext2_extent_handle_t handle;
        e = ext2fs_extent_open2(fs, ino, &inode, &handle);
        if (e)
            return fs_err(g, e, "initialising extents", path);
        ext2fs_extent_free(handle);
    }
    e = ext2fs_write_new_inode(fs, ino, &inode);
    if (e)
        return fs_err(g, e, "writing inode", path);

    ext2_file_t file;
    e = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &file);
    if (e)
        return fs_err(g, e, "open", path);
    size_t bufsize = 1 << 20;
    char *buf = malloc(bufsize);
    if (!buf) {
        ext2fs_file_close(file);
        return vs_error(-ENOMEM, "out of memory");
    }
    for (;;) {
        ssize_t n = source_read(src, buf, bufsize);
        if (n < 0) {
            rc = vs_error_errno((int)n, "%s: reading the source", path);
            break;
        }
        if (n == 0)
            break;
        size_t off = 0;
        while (off < (size_t)n) {
            unsigned wrote = 0;
            e = ext2fs_file_write(file, buf + off, (unsigned)((size_t)n - off), &wrote);
            if (e || wrote == 0) {
                rc = fs_err(g, e ? e : EXT2_ET_SHORT_WRITE, "write", path);
                break;
            }
            off += wrote;
        }
        if (rc < 0)
            break;
    }
    free(buf);
    e = ext2fs_file_close(file);
    if (rc == 0 && e)
        rc = fs_err(g, e, "close", path);
    return rc;
}

int guestfs_fs_write_from_fd(struct guestfs_fs *g, const char *path, int fd, mode_t mode)
{
    if (g->fat)
        return guestfs_fat_write_from_fd(g->fat, path, fd);
    struct source s = {.fd = fd};
    return write_common(g, path, &s, mode);
}

int guestfs_fs_write_file(struct guestfs_fs *g, const char *path, const void *data, size_t len,
                          mode_t mode)
{
    if (g->fat)
        return guestfs_fat_write_file(g->fat, path, data, len);
    struct source s = {.fd = -1, .data = data, .len = len};
    return write_common(g, path, &s, mode);
}
