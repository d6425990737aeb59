/*
 * lib/img/img.c — the image engine's core: the driver registry, opening an image as a stack of
 * nodes (format over protocol, backing chain below), and the public API that checks arguments
 * before handing each call to the top driver.
 *
 * The idea: drivers know only their own layer. The core probes formats, resolves and opens
 * backing files relative to the image that names them, refuses chains that loop (by device and
 * inode, so "./a" and "../x/a" are caught too), and merges block status down the chain, so every
 * format gets overlays, undo disks and snapshots for free.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img/driver.h"

/* Every format driver, in probe order (probing takes the highest score, so order only breaks
 * ties). Adding a format is one line here plus its lib/img/NAME.c. */
static const struct img_driver *const img_driver_table[] = {
    &img_driver_raw,
    &img_driver_qcow2,
    &img_driver_vmdk,
    &img_driver_vhd,
    &img_driver_vdi,
    &img_driver_vhdx,
    NULL,
};

static const struct img_driver *const *img_drivers(void)
{
    return img_driver_table;
}

#define IMG_CHAIN_MAX   256
#define IMG_PROBE_BYTES 4096

static const struct img_driver *img_driver_find(const char *name)
{
    for (const struct img_driver *const *d = img_drivers(); *d; d++) {
        if (!strcmp((*d)->name, name))
            return *d;
        for (const char *const *a = (*d)->aliases; a && *a; a++)
            if (!strcmp(*a, name))
                return *d;
    }
    if (!strcmp(name, "file"))
        return &img_driver_file;
    return NULL;
}

const char *const *img_format_names(void)
{
    static const char *names[16];
    if (!names[0]) {
        size_t n = 0;
        for (const struct img_driver *const *d = img_drivers(); *d && n < 15; d++)
            names[n++] = (*d)->name;
        names[n] = NULL;
    }
    return names;
}

const char *img_format_canonical(const char *format)
{
    const struct img_driver *d = format ? img_driver_find(format) : NULL;
    return d ? d->name : NULL;
}

static int img_unknown_format(const char *format)
{
    char list[256] = "";
    for (const char *const *n = img_format_names(); *n; n++) {
        strncat(list, list[0] ? ", " : "", sizeof(list) - strlen(list) - 1);
        strncat(list, *n, sizeof(list) - strlen(list) - 1);
    }
    return vs_error(-EINVAL, "unknown image format '%s' (known: %s)", format, list);
}

int img_error(struct img *img, int err, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return vs_error(err, "%s: %s", img->filename, msg);
}

/* Make sure the current error message names the file; drivers usually do, this is the net. */
static int img_error_name(const char *filename, int err)
{
    const char *msg = vs_error_message();
    if (!msg[0] || !strstr(msg, filename))
        return vs_error_prefix(err, "%s", filename);
    return err;
}

/* ---- probing and opening --------------------------------------------------------------------- */

static int img_probe(struct img *file, const struct img_driver **out)
{
    uint8_t *buf = vs_malloc(IMG_PROBE_BYTES);
    if (!buf)
        return -ENOMEM;
    int64_t fsize = img_file_size(file);
    size_t len = IMG_PROBE_BYTES;
    if (fsize >= 0 && (uint64_t)fsize < len)
        len = (size_t)fsize;
    int rc = len ? file->drv->pread(file, buf, 0, len) : 0;
    if (rc) {
        free(buf);
        return rc;
    }
    const struct img_driver *best = &img_driver_raw;
    int best_score = 0;
    for (const struct img_driver *const *d = img_drivers(); *d; d++) {
        if (!(*d)->probe)
            continue;
        int score = (*d)->probe(buf, len, file->filename);
        if (score > best_score) {
            best_score = score;
            best = *d;
        }
    }
    free(buf);
    *out = best;
    return 0;
}

struct img_chain_seen {
    dev_t dev;
    ino_t ino;
};

static int img_open_chain(struct img **out, const char *filename, const char *format, int flags,
                          struct img_chain_seen *seen, int depth);

static void img_free_node(struct img *img)
{
    if (!img)
        return;
    if (img->drv && img->state && img->drv->close)
        img->drv->close(img);
    if (img->file)
        img_close(img->file);
    if (img->backing)
        img_close(img->backing);
    pthread_mutex_destroy(&img->lock);
    free(img->filename);
    free(img->backing_name);
    free(img->backing_format);
    free(img);
}

/* Backing file names are relative to the directory of the image that names them. */
static char *img_backing_path(const char *image, const char *backing)
{
    if (backing[0] == '/' || !strchr(image, '/'))
        return vs_strdup(backing);
    char *copy = vs_strdup(image);
    if (!copy)
        return NULL;
    char *path = vs_asprintf("%s/%s", dirname(copy), backing);
    free(copy);
    return path;
}

static int img_open_backing(struct img *img, struct img_chain_seen *seen, int depth)
{
    if (depth + 1 >= IMG_CHAIN_MAX)
        return img_error(img, -ELOOP, "backing chain deeper than %d images", IMG_CHAIN_MAX);
    char *path = img_backing_path(img->filename, img->backing_name);
    if (!path)
        return -ENOMEM;
    struct stat st;
    if (stat(path, &st) == 0) {
        for (int i = 0; i <= depth; i++) {
            if (seen[i].dev == st.st_dev && seen[i].ino == st.st_ino) {
                int rc = img_error(img, -ELOOP,
                                   "backing file loop: '%s' is already in this image's chain",
                                   img->backing_name);
                free(path);
                return rc;
            }
        }
    }
    int bflags = (img->flags & (IMG_OPEN_NO_LOCK | IMG_OPEN_DIRECT));
    int rc = img_open_chain(&img->backing, path, img->backing_format, bflags, seen, depth + 1);
    if (rc)
        rc = vs_error_prefix(rc, "%s: backing file", img->filename);
    free(path);
    return rc;
}

static int img_open_chain(struct img **out, const char *filename, const char *format, int flags,
                          struct img_chain_seen *seen, int depth)
{
    const struct img_driver *drv = NULL;
    if (format) {
        drv = img_driver_find(format);
        if (!drv)
            return img_unknown_format(format);
    }
    struct img *file;
    int rc = img_file_open(&file, filename, flags, false);
    if (rc)
        return rc;
    seen[depth].dev = file->dev;
    seen[depth].ino = file->ino;
    if (drv == &img_driver_file) {
        *out = file;
        return 0;
    }
    if (!drv) {
        rc = img_probe(file, &drv);
        if (rc) {
            img_close(file);
            return rc;
        }
        if (drv == &img_driver_raw && (flags & IMG_OPEN_RDWR) && depth == 0)
            vs_warn("image format was not specified for '%s' and probing guessed raw; "
                    "specify -f raw to silence this",
                    filename);
    }
    struct img *img = vs_calloc(1, sizeof(*img));
    if (!img) {
        img_close(file);
        return -ENOMEM;
    }
    pthread_mutex_init(&img->lock, NULL);
    img->drv = drv;
    img->file = file;
    img->flags = flags;
    img->dev = file->dev;
    img->ino = file->ino;
    img->filename = vs_strdup(filename);
    if (!img->filename) {
        img_free_node(img);
        return -ENOMEM;
    }
    vs_error_clear();
    rc = drv->open(img);
    if (rc) {
        rc = img_error_name(filename, rc);
        img->state = NULL; /* a failed open cleans up after itself */
        img_free_node(img);
        return rc;
    }
    if (img->backing_name && img->backing_name[0] && !(flags & IMG_OPEN_NO_BACKING)) {
        rc = img_open_backing(img, seen, depth);
        if (rc) {
            img_free_node(img);
            return rc;
        }
    }
    *out = img;
    return 0;
}

int img_open(struct img **out, const char *filename, const char *format, int flags)
{
    struct img_chain_seen *seen = vs_calloc(IMG_CHAIN_MAX, sizeof(*seen));
    if (!seen)
        return -ENOMEM;
    int rc = img_open_chain(out, filename, format, flags, seen, 0);
    free(seen);
    return rc;
}

int img_close(struct img *img)
{
    if (!img)
        return 0;
    int rc = 0;
    if ((img->flags & IMG_OPEN_RDWR) && img->state && img->drv->flush)
        rc = img->drv->flush(img);
    img_free_node(img);
    return rc;
}

/* ---- I/O ------------------------------------------------------------------------------------- */

static int img_check_range(struct img *img, uint64_t offset, uint64_t len)
{
    if (img->drv->is_protocol)
        return 0; /* containers grow; drivers bound their own metadata accesses */
    if (offset > img->size || len > img->size - offset)
        return img_error(
            img, -EINVAL, "request [%llu, +%llu) is beyond the end of the disk (%llu bytes)",
            (unsigned long long)offset, (unsigned long long)len, (unsigned long long)img->size);
    return 0;
}

static int img_check_writable(struct img *img)
{
    if (!(img->flags & IMG_OPEN_RDWR))
        return img_error(img, -EROFS, "image is open read-only");
    return 0;
}

int img_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    int rc = img_check_range(img, offset, len);
    if (rc || len == 0)
        return rc;
    return img->drv->pread(img, buf, offset, len);
}

int img_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    int rc = img_check_writable(img);
    if (!rc)
        rc = img_check_range(img, offset, len);
    if (rc || len == 0)
        return rc;
    return img->drv->pwrite(img, buf, offset, len);
}

int img_pwrite_compressed(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    int rc = img_check_writable(img);
    if (!rc)
        rc = img_check_range(img, offset, len);
    if (rc || len == 0)
        return rc;
    if (!img->drv->pwrite_compressed)
        return img_error(img, -ENOTSUP, "the %s format does not support compression",
                         img->drv->name);
    return img->drv->pwrite_compressed(img, buf, offset, len);
}

int img_flush(struct img *img)
{
    if (!(img->flags & IMG_OPEN_RDWR) || !img->drv->flush)
        return 0;
    return img->drv->flush(img);
}

int img_discard(struct img *img, uint64_t offset, uint64_t len)
{
    int rc = img_check_writable(img);
    if (!rc)
        rc = img_check_range(img, offset, len);
    if (rc || len == 0 || !img->drv->discard)
        return rc;
    return img->drv->discard(img, offset, len);
}

int img_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    int rc = img_check_writable(img);
    if (!rc)
        rc = img_check_range(img, offset, len);
    if (rc || len == 0)
        return rc;
    if (img->drv->write_zeroes)
        return img->drv->write_zeroes(img, offset, len, flags);
    /* generic fallback: write zero buffers */
    size_t chunk = (size_t)VS_MIN(len, 1u << 20);
    void *zero = vs_calloc(1, chunk);
    if (!zero)
        return -ENOMEM;
    while (len && !rc) {
        size_t n = (size_t)VS_MIN(len, chunk);
        rc = img->drv->pwrite(img, zero, offset, n);
        offset += n;
        len -= n;
    }
    free(zero);
    return rc;
}

int img_read_backing(struct img *img, void *buf, uint64_t offset, size_t len)
{
    struct img *b = img->backing;
    if (!b || offset >= b->size) {
        memset(buf, 0, len);
        return 0;
    }
    size_t n = (size_t)VS_MIN((uint64_t)len, b->size - offset);
    int rc = b->drv->pread(b, buf, offset, n);
    if (rc)
        return rc;
    if (n < len)
        memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

/* ---- block status ---------------------------------------------------------------------------- */

int img_block_status_layer(struct img *img, uint64_t offset, uint64_t len, struct img_extent *ext)
{
    int rc = img_check_range(img, offset, len);
    if (rc)
        return rc;
    memset(ext, 0, sizeof(*ext));
    ext->offset = offset;
    ext->layer = img;
    if (len == 0)
        return 0;
    uint64_t pnum = 0, host = UINT64_MAX;
    int st;
    if (img->drv->block_status) {
        st = img->drv->block_status(img, offset, len, &pnum, &host);
        if (st < 0)
            return st;
    } else {
        st = IMG_DS_DATA;
        pnum = len;
    }
    if (pnum == 0 || pnum > len)
        return img_error(img, -EIO, "driver returned an invalid block status length");
    ext->length = pnum;
    switch (st) {
    case IMG_DS_UNALLOCATED:
        /* a format may still name where the range would live (qcow2's unallocated subclusters
         * of an allocated cluster); qemu's map shows that offset, and so do we */
        ext->flags = 0;
        if (host != UINT64_MAX) {
            ext->flags |= IMG_STATUS_OFFSET;
            ext->host_offset = host;
        }
        break;
    case IMG_DS_DATA:
        ext->flags = IMG_STATUS_DATA | IMG_STATUS_ALLOCATED;
        if (host != UINT64_MAX) {
            ext->flags |= IMG_STATUS_OFFSET;
            ext->host_offset = host;
        }
        break;
    case IMG_DS_ZERO:
        ext->flags = IMG_STATUS_ZERO | IMG_STATUS_ALLOCATED;
        if (host != UINT64_MAX) {
            ext->flags |= IMG_STATUS_OFFSET;
            ext->host_offset = host;
        }
        break;
    case IMG_DS_COMPRESSED:
        ext->flags = IMG_STATUS_DATA | IMG_STATUS_ALLOCATED | IMG_STATUS_COMPRESSED;
        break;
    default:
        return img_error(img, -EIO, "driver returned unknown block status %d", st);
    }
    return 0;
}

int img_block_status(struct img *img, uint64_t offset, uint64_t len, struct img_extent *ext)
{
    int rc = img_check_range(img, offset, len);
    if (rc)
        return rc;
    struct img *layer = img;
    int depth = 0;
    for (;;) {
        rc = img_block_status_layer(layer, offset, len, ext);
        if (rc)
            return rc;
        ext->depth = depth;
        if (len == 0 || (ext->flags & IMG_STATUS_ALLOCATED))
            return 0;
        len = ext->length;
        struct img *b = layer->backing;
        if (!b || offset >= b->size) {
            /* nothing below: reads return zeros */
            ext->flags = IMG_STATUS_ZERO | (ext->flags & IMG_STATUS_OFFSET);
            return 0;
        }
        len = VS_MIN(len, b->size - offset);
        layer = b;
        depth++;
    }
}

/* ---- facts ----------------------------------------------------------------------------------- */

uint64_t img_size(const struct img *img)
{
    return img->size;
}

const char *img_filename(const struct img *img)
{
    return img->filename;
}

const char *img_format(const struct img *img)
{
    return img->drv->name;
}

struct img *img_backing(const struct img *img)
{
    return img->backing;
}

const char *img_backing_name(const struct img *img)
{
    return img->backing_name;
}

const char *img_backing_format(const struct img *img)
{
    return img->backing_format;
}

uint32_t img_cluster_size(const struct img *img)
{
    return img->cluster_size;
}

uint32_t img_write_unit(const struct img *img)
{
    return img->write_unit && img->write_unit < img->cluster_size ? img->write_unit
                                                                  : img->cluster_size;
}

bool img_is_writable(const struct img *img)
{
    return (img->flags & IMG_OPEN_RDWR) != 0;
}

int64_t img_allocated_size(struct img *img)
{
    struct img *p = img;
    while (p->file)
        p = p->file;
    if (!p->drv->allocated_size)
        return -ENOTSUP;
    return p->drv->allocated_size(p);
}

int img_host_fd(struct img *img)
{
    struct img *file = img->file ? img->file : img;
    if (file->drv->is_protocol && file->drv->get_fd)
        return file->drv->get_fd(file);
    return -1;
}

int img_raw_fd(struct img *img)
{
    if (img->drv->get_fd && !img->backing)
        return img->drv->get_fd(img);
    return -1;
}

static struct json_object *img_snapshots_json(struct img *img)
{
    struct img_snapshot *list;
    size_t count;
    if (!img->drv->snapshot_list || img->drv->snapshot_list(img, &list, &count) || !count)
        return NULL;
    struct json_object *arr = json_object_new_array();
    for (size_t i = 0; i < count; i++) {
        struct json_object *s = json_object_new_object();
        json_object_object_add(s, "icount", json_object_new_int64(0));
        json_object_object_add(s, "vm-state-size",
                               json_object_new_int64((int64_t)list[i].vm_state_size));
        json_object_object_add(s, "date-sec", json_object_new_int64((int64_t)list[i].date_sec));
        json_object_object_add(s, "date-nsec", json_object_new_int64(list[i].date_nsec));
        json_object_object_add(
            s, "vm-clock-sec",
            json_object_new_int64((int64_t)(list[i].vm_clock_nsec / 1000000000ULL)));
        json_object_object_add(
            s, "vm-clock-nsec",
            json_object_new_int64((int64_t)(list[i].vm_clock_nsec % 1000000000ULL)));
        json_object_object_add(s, "id", json_object_new_string(list[i].id));
        json_object_object_add(s, "name", json_object_new_string(list[i].name ? list[i].name : ""));
        json_object_array_add(arr, s);
    }
    img_snapshot_list_free(list, count);
    return arr;
}

static int img_info_one(struct img *img, struct json_object **out)
{
    struct img_info_extra extra = {0};
    if (img->drv->info) {
        int rc = img->drv->info(img, &extra);
        if (rc)
            return rc;
    }
    struct json_object *o = json_object_new_object();
    struct json_object *snaps = img_snapshots_json(img);
    if (snaps)
        json_object_object_add(o, "snapshots", snaps);
    json_object_object_add(o, "virtual-size", json_object_new_int64((int64_t)img->size));
    json_object_object_add(o, "filename", json_object_new_string(img->filename));
    if (img->cluster_size)
        json_object_object_add(o, "cluster-size", json_object_new_int64(img->cluster_size));
    json_object_object_add(o, "format", json_object_new_string(img->drv->name));
    int64_t actual = img_allocated_size(img);
    if (actual >= 0)
        json_object_object_add(o, "actual-size", json_object_new_int64(actual));
    if (extra.format_specific)
        json_object_object_add(o, "format-specific", extra.format_specific);
    if (img->backing_name && img->backing_name[0]) {
        char *full = img_backing_path(img->filename, img->backing_name);
        json_object_object_add(o, "full-backing-filename",
                               json_object_new_string(full ? full : ""));
        free(full);
        json_object_object_add(o, "backing-filename", json_object_new_string(img->backing_name));
        if (img->backing_format)
            json_object_object_add(o, "backing-filename-format",
                                   json_object_new_string(img->backing_format));
    }
    json_object_object_add(o, "dirty-flag", json_object_new_boolean(extra.dirty));
    *out = o;
    return 0;
}

int img_info_json(struct img *img, bool chain, struct json_object **out)
{
    if (!chain)
        return img_info_one(img, out);
    struct json_object *arr = json_object_new_array();
    for (struct img *p = img; p; p = p->backing) {
        struct json_object *o;
        int rc = img_info_one(p, &o);
        if (rc) {
            json_object_put(arr);
            return rc;
        }
        json_object_array_add(arr, o);
    }
    *out = arr;
    return 0;
}

/* ---- create ---------------------------------------------------------------------------------- */

int img_create(const struct img_create_params *params)
{
    const char *format = params->format ? params->format : "raw";
    const struct img_driver *drv = img_driver_find(format);
    if (!drv || drv->is_protocol)
        return img_unknown_format(format);
    if (!drv->create)
        return vs_error(-ENOTSUP, "the %s format cannot create images", drv->name);
    struct img_create_params p = *params;
    p.format = drv->name;
    char *detected_format = NULL;
    int rc = 0;
    if (p.backing_file && p.backing_file[0]) {
        /* open the backing file as the new image will: for its size, and to check it exists */
        char *path = img_backing_path(p.filename, p.backing_file);
        if (!path)
            return -ENOMEM;
        struct img *backing;
        rc = img_open(&backing, path, p.backing_format, IMG_OPEN_NO_LOCK);
        free(path);
        if (rc) {
            if (p.size_given && p.backing_format) {
                vs_warn("%s: could not open backing file to check it (%s); creating anyway",
                        p.filename, vs_error_message());
                rc = 0;
            } else {
                return vs_error_prefix(rc, "%s: backing file", p.filename);
            }
        } else {
            if (!p.size_given)
                p.size = backing->size;
            if (!p.backing_format) {
                detected_format = vs_strdup(backing->drv->name);
                p.backing_format = detected_format;
            }
            img_close(backing);
        }
    } else if (!p.size_given) {
        return vs_error(-EINVAL, "%s: image size required (or a backing file to take it from)",
                        p.filename);
    }
    p.size_given = true;
    /* like qemu-img: disks are whole 512-byte sectors, so an odd size rounds up, never down */
    if (p.size > UINT64_MAX - 511) {
        free(detected_format);
        return vs_error(-EINVAL, "%s: image size %llu is too large", p.filename,
                        (unsigned long long)p.size);
    }
    p.size = VS_ALIGN_UP(p.size, 512);
    rc = drv->create(&p, p.opts);
    if (!rc && p.opts && (rc = vs_opts_check_all_used(p.opts, drv->name)) != 0)
        unlink(p.filename);
    if (rc)
        rc = img_error_name(p.filename, rc);
    free(detected_format);
    return rc;
}

/* ---- maintenance ----------------------------------------------------------------------------- */

static int img_unsupported(struct img *img, const char *what)
{
    return img_error(img, -ENOTSUP, "the %s format does not support %s", img->drv->name, what);
}

int img_resize(struct img *img, uint64_t new_size, int flags, const char *preallocation)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->truncate)
        return img_unsupported(img, "resizing");
    /* like qemu-img: image formats hold whole 512-byte sectors (qemu reads a qcow2 size that is
     * not one as rounded down, losing the tail), so refuse rather than round; raw is exact */
    if (new_size % 512 && img->drv != &img_driver_raw)
        return img_error(img, -EINVAL, "the new size %llu must be a multiple of 512 bytes",
                         (unsigned long long)new_size);
    if (new_size < img->size && !(flags & IMG_RESIZE_SHRINK))
        return img_error(img, -EINVAL,
                         "shrinking from %llu to %llu bytes would discard data; use --shrink if "
                         "that is intended",
                         (unsigned long long)img->size, (unsigned long long)new_size);
    return img->drv->truncate(img, new_size, flags, preallocation);
}

int img_change_backing(struct img *img, const char *backing_file, const char *backing_format)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->change_backing)
        return img_unsupported(img, "backing files");
    return img->drv->change_backing(img, backing_file, backing_format);
}

int img_make_empty(struct img *img)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->make_empty)
        return img_unsupported(img, "emptying");
    return img->drv->make_empty(img);
}

int img_compact(struct img *img, struct img_compact *result)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->compact)
        return img_unsupported(img, "compaction");
    memset(result, 0, sizeof(*result));
    int64_t before = img_allocated_size(img);
    rc = img->drv->compact(img, result);
    if (!rc) {
        int64_t after = img_allocated_size(img);
        result->bytes_before = before > 0 ? (uint64_t)before : 0;
        result->bytes_after = after > 0 ? (uint64_t)after : 0;
    }
    return rc;
}

int img_check(struct img *img, struct img_check *result, int fix)
{
    if (!img->drv->check)
        return img_unsupported(img, "checks");
    if (fix && !(img->flags & IMG_OPEN_RDWR))
        return img_error(img, -EROFS, "repair needs the image open read-write");
    return img->drv->check(img, result, fix);
}

int img_snapshot_create(struct img *img, const char *name)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->snapshot_create)
        return img_unsupported(img, "internal snapshots");
    return img->drv->snapshot_create(img, name);
}

int img_snapshot_list(struct img *img, struct img_snapshot **list, size_t *count)
{
    if (!img->drv->snapshot_list) {
        *list = NULL;
        *count = 0;
        return 0;
    }
    return img->drv->snapshot_list(img, list, count);
}

void img_snapshot_list_free(struct img_snapshot *list, size_t count)
{
    if (!list)
        return;
    for (size_t i = 0; i < count; i++)
        free(list[i].name);
    free(list);
}

int img_snapshot_apply(struct img *img, const char *name)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->snapshot_apply)
        return img_unsupported(img, "internal snapshots");
    return img->drv->snapshot_apply(img, name);
}

int img_snapshot_delete(struct img *img, const char *name)
{
    int rc = img_check_writable(img);
    if (rc)
        return rc;
    if (!img->drv->snapshot_delete)
        return img_unsupported(img, "internal snapshots");
    return img->drv->snapshot_delete(img, name);
}

int img_measure(const char *format, struct vs_opts *opts, struct img *source, uint64_t size,
                uint64_t *required, uint64_t *fully_allocated)
{
    const struct img_driver *drv = img_driver_find(format ? format : "raw");
    if (!drv || drv->is_protocol)
        return img_unknown_format(format);
    if (!drv->measure)
        return vs_error(-ENOTSUP, "the %s format cannot be measured", drv->name);
    int rc = drv->measure(opts, source, size, required, fully_allocated);
    if (!rc)
        rc = vs_opts_check_all_used(opts, drv->name);
    return rc;
}
