/*
 * lib/mgmt/storage.c — clones and external snapshots of a VM's disks.
 *
 * The idea: both are "freeze the current image, put a qcow2 overlay on top" (the image engine's
 * one mechanism for undo disks, snapshots and backups). A snapshot freezes the VM's disks and
 * remembers the definition that points at the frozen files; revert puts a fresh overlay on those
 * files. An overlay clone freezes the source's disks and gives *both* VMs an overlay, so neither
 * can write under the other's feet; a full clone copies each disk (img_convert). Read-only and
 * cdrom disks are shared as they are. Only shut-off VMs: the VMM cannot switch images live yet.
 * A template (gold image) is the other direction: a VM's first writable disk, its chain flattened
 * by img_convert into one standalone qcow2 that new VMs' overlays can share as a backing file.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "mgmt/mgmt-internal.h"
#include "vessel/img.h"

static bool disk_is_writable(const struct vm_disk *disk)
{
    return !disk->readonly && disk->media != VM_DISK_MEDIA_CDROM;
}

static int check_name(const char *what, const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > VM_DEF_NAME_MAX || name[0] == '.' || name[0] == '-' ||
        strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != len)
        return vs_error(-EINVAL, "%s '%s': use 1-64 of A-Z a-z 0-9 . _ -", what, name);
    return 0;
}

/* Lock the runtime of a defined, shut-off VM and parse its definition. */
static int load_stopped(struct mgmt_daemon *d, const char *name, struct mgmt_vm_runtime **rt_out,
                        struct vm_def **def_out)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, name, &rec);
    if (err)
        return err;
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, name);
    if (!rt) {
        mgmt_vm_record_free(&rec);
        return -ENOMEM;
    }
    pthread_mutex_lock(&rt->lock);
    if (mgmt_state_is_live(rt->state))
        err = vs_error(-EBUSY, "VM '%s' is %s; shut it off first", name, rt->state);
    else if (!strcmp(rt->state, "saved")) /* its state file needs the disks exactly as they are */
        err = vs_error(-EBUSY,
                       "VM '%s' is saved to %s; restore it, or destroy it to discard the "
                       "saved state, first",
                       name, rec.saved_path);
    else
        err = vm_def_parse(rec.definition, strlen(rec.definition), name, def_out);
    mgmt_vm_record_free(&rec);
    if (err) {
        pthread_mutex_unlock(&rt->lock);
        return err;
    }
    *rt_out = rt;
    return 0;
}

static int vm_disk_dir(struct mgmt_daemon *d, const char *name, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%s", d->disk_dir, name);
    if (n < 0 || (size_t)n >= len)
        return vs_error(-ENAMETOOLONG, "%s/%s: path too long", d->disk_dir, name);
    if (mkdir(buf, 0700) < 0 && errno != EEXIST)
        return vs_error_errno(-errno, "%s", buf);
    return 0;
}

/* Replace disk->file by a new qcow2 overlay at path over the current file. */
static int put_overlay(struct vm_disk *disk, const char *path)
{
    struct img_create_params p = {.filename = path,
                                  .format = "qcow2",
                                  .backing_file = disk->file,
                                  .backing_format = disk->format,
                                  .quiet = true};
    int err = img_create(&p);
    if (err)
        return vs_error_prefix(err, "%s", path);
    if ((err = vm_def_set_string(&disk->file, path)) ||
        (err = vm_def_set_string(&disk->format, "qcow2")))
        return err;
    return 0;
}

static int store_def(struct mgmt_daemon *d, const struct vm_def *def, bool replace)
{
    char *text = vm_def_print(def);
    if (!text)
        return -ENOMEM;
    int err = mgmt_store_define(d->store, def->name, def->uuid, text,
                                def->autostart != VM_AUTOSTART_NEVER, replace);
    free(text);
    return err;
}

/* The progress of a copy of several disks, one img_convert after the other: each reports its own
 * bytes and size; the caller sees the sum over all of them (BASE: the disks already copied). */
struct multi_progress {
    const struct mgmt_progress *to;
    uint64_t base, total, current;
};

static void multi_progress_fn(void *ctx, uint64_t done, uint64_t total)
{
    struct multi_progress *m = ctx;
    m->current = total;
    m->to->fn(m->to->ctx, m->base + done, m->total);
}

/* The virtual size of FILE's top image (0 when it can't be opened: the copy will say why). */
static uint64_t disk_size(const struct vm_disk *disk)
{
    struct img *img;
    if (img_open(&img, disk->file, disk->format, IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK))
        return 0;
    uint64_t n = img_size(img);
    img_close(img);
    vs_error_clear();
    return n;
}

int mgmt_vm_clone(struct mgmt_daemon *d, const char *name, const char *new_name, bool full_copy,
                  const struct mgmt_progress *progress)
{
    int err = check_name("VM name", new_name);
    if (err)
        return err;
    struct mgmt_vm_record existing;
    if (mgmt_store_get(d->store, new_name, &existing) == 0) {
        mgmt_vm_record_free(&existing);
        return vs_error(-EEXIST, "VM '%s' is already defined", new_name);
    }
    struct mgmt_vm_runtime *rt;
    struct vm_def *src = NULL, *clone = NULL;
    if ((err = load_stopped(d, name, &rt, &src)))
        return err;
    char *text = vm_def_print(src);
    err = text ? vm_def_parse(text, strlen(text), new_name, &clone) : -ENOMEM;
    free(text);
    char new_dir[PATH_MAX], src_dir[PATH_MAX], path[PATH_MAX + 64];
    if (!err)
        err = vm_def_set_string(&clone->name, new_name);
    if (!err)
        err = vm_disk_dir(d, new_name, new_dir, sizeof(new_dir));
    if (!err && !full_copy)
        err = vm_disk_dir(d, name, src_dir, sizeof(src_dir));
    if (err)
        goto out;
    vm_uuid_generate(clone->uuid);
    for (size_t i = 0; i < clone->nic_count; i++)
        vm_mac_generate(clone->nics[i].mac);
    long stamp = (long)time(NULL);
    struct multi_progress mp = {.to = progress};
    for (size_t i = 0; full_copy && progress && i < clone->disk_count; i++)
        if (disk_is_writable(&clone->disks[i]))
            mp.total += disk_size(&clone->disks[i]);
    for (size_t i = 0; i < clone->disk_count && !err; i++) {
        struct vm_disk *disk = &clone->disks[i];
        if (!disk_is_writable(disk))
            continue;
        if (full_copy) {
            snprintf(path, sizeof(path), "%s/disk%zu.qcow2", new_dir, i);
            struct img_convert_params p;
            img_convert_params_init(&p);
            const char *sources[1] = {disk->file};
            p.sources = sources;
            p.source_count = 1;
            p.source_format = disk->format;
            p.target = path;
            p.target_format = "qcow2";
            if (progress) {
                p.progress = multi_progress_fn;
                p.progress_ctx = &mp;
            }
            err = img_convert(&p);
            mp.base += mp.current;
            mp.current = 0;
            if (!err && !(err = vm_def_set_string(&disk->file, path)))
                err = vm_def_set_string(&disk->format, "qcow2");
        } else {
            snprintf(path, sizeof(path), "%s/disk%zu.qcow2", new_dir, i);
            err = put_overlay(disk, path);
            if (!err) {
                /* the source moves onto its own overlay: the shared base is frozen */
                snprintf(path, sizeof(path), "%s/disk%zu-%ld.qcow2", src_dir, i, stamp);
                err = put_overlay(&src->disks[i], path);
            }
        }
    }
    if (!err)
        err = store_def(d, clone, false);
    if (!err && !full_copy)
        err = store_def(d, src, true);
out:
    pthread_mutex_unlock(&rt->lock);
    vm_def_free(src);
    vm_def_free(clone);
    return err;
}

int mgmt_vm_snapshot_create(struct mgmt_daemon *d, const char *name, const char *snap)
{
    int err = check_name("snapshot name", snap);
    if (err)
        return err;
    struct mgmt_vm_runtime *rt;
    struct vm_def *def = NULL;
    if ((err = load_stopped(d, name, &rt, &def)))
        return err;
    char *frozen = vm_def_print(def);
    char dir[PATH_MAX], path[PATH_MAX + 128];
    err = frozen ? vm_disk_dir(d, name, dir, sizeof(dir)) : -ENOMEM;
    char *existing = NULL;
    if (!err && mgmt_store_snapshot_get(d->store, name, snap, &existing) == 0) {
        free(existing);
        err = vs_error(-EEXIST, "VM '%s' already has a snapshot '%s'", name, snap);
    }
    vs_error_clear();
    for (size_t i = 0; i < def->disk_count && !err; i++) {
        if (!disk_is_writable(&def->disks[i]))
            continue;
        snprintf(path, sizeof(path), "%s/disk%zu-after-%s.qcow2", dir, i, snap);
        err = put_overlay(&def->disks[i], path);
    }
    if (!err)
        err = mgmt_store_snapshot_add(d->store, name, snap, frozen);
    if (!err)
        err = store_def(d, def, true);
    pthread_mutex_unlock(&rt->lock);
    free(frozen);
    vm_def_free(def);
    return err;
}

int mgmt_vm_snapshot_revert(struct mgmt_daemon *d, const char *name, const char *snap)
{
    struct mgmt_vm_runtime *rt;
    struct vm_def *def = NULL, *at = NULL;
    int err = load_stopped(d, name, &rt, &def);
    if (err)
        return err;
    char *text = NULL;
    char dir[PATH_MAX], path[PATH_MAX + 128];
    if (!(err = mgmt_store_snapshot_get(d->store, name, snap, &text)) &&
        !(err = vm_def_parse(text, strlen(text), name, &at)))
        err = vm_disk_dir(d, name, dir, sizeof(dir));
    long stamp = (long)time(NULL);
    for (size_t i = 0; at && i < at->disk_count && !err; i++) {
        if (!disk_is_writable(&at->disks[i]))
            continue;
        snprintf(path, sizeof(path), "%s/disk%zu-revert-%s-%ld.qcow2", dir, i, snap, stamp);
        err = put_overlay(&at->disks[i], path);
    }
    if (!err) {
        memcpy(at->uuid, def->uuid, sizeof(at->uuid)); /* still the same VM */
        err = store_def(d, at, true);
    }
    pthread_mutex_unlock(&rt->lock);
    free(text);
    vm_def_free(def);
    vm_def_free(at);
    return err;
}

int mgmt_vm_template(struct mgmt_daemon *d, const char *name, const char *pool, const char *volume,
                     const char *path, bool compress, const struct mgmt_progress *progress,
                     struct json_object **out)
{
    char target[PATH_MAX + 256];
    int err = 0;
    if (pool) {
        if (!volume || !volume[0])
            return vs_error(-EINVAL, "template: a volume name is needed with a pool");
        err = mgmt_pool_volume_path(d, pool, volume, target, sizeof(target));
    } else if (!path || path[0] != '/') {
        err = vs_error(-EINVAL, "template: the gold image's path must be absolute");
    } else if (snprintf(target, sizeof(target), "%s", path) >= (int)sizeof(target)) {
        err = vs_error(-ENAMETOOLONG, "template: path too long");
    }
    if (err)
        return err;
    struct mgmt_vm_runtime *rt;
    struct vm_def *def = NULL;
    if ((err = load_stopped(d, name, &rt, &def)))
        return err;
    const struct vm_disk *disk = NULL;
    size_t index = 0;
    for (size_t i = 0; i < def->disk_count && !disk; i++)
        if (disk_is_writable(&def->disks[i]))
            disk = &def->disks[index = i];
    if (!disk) {
        err = vs_error(-EINVAL, "VM '%s' has no writable disk to make a template of", name);
        goto out;
    }
    /* the target is reserved first, so an existing file is never overwritten */
    if ((err = mgmt_reserve_file(target)))
        goto out;
    struct img_convert_params p;
    img_convert_params_init(&p);
    const char *sources[1] = {disk->file};
    p.sources = sources;
    p.source_count = 1;
    p.source_format = disk->format;
    p.target = target;
    p.target_format = "qcow2";
    p.compress = compress;
    if (progress) {
        p.progress = progress->fn;
        p.progress_ctx = progress->ctx;
    }
    if ((err = img_convert(&p))) {
        vs_error_prefix(err, "template of VM '%s'", name);
        unlink(target);
        goto out;
    }
    struct img *img = NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "vm", json_object_new_string(name));
    json_object_object_add(o, "disk", json_object_new_string(disk->file));
    json_object_object_add(o, "disk_index", json_object_new_int64((int64_t)index));
    json_object_object_add(o, "path", json_object_new_string(target));
    json_object_object_add(o, "format", json_object_new_string("qcow2"));
    json_object_object_add(o, "compressed", json_object_new_boolean(compress));
    if (img_open(&img, target, "qcow2", IMG_OPEN_NO_BACKING) == 0) {
        json_object_object_add(o, "virtual_size", json_object_new_int64((int64_t)img_size(img)));
        int64_t used = img_allocated_size(img);
        if (used >= 0)
            json_object_object_add(o, "disk_usage", json_object_new_int64(used));
        img_close(img);
    }
    vs_error_clear();
    *out = o;
    char detail[PATH_MAX + 300];
    snprintf(detail, sizeof(detail), "%s", target);
    mgmt_store_event(d->store, name, "template-created", detail);
out:
    pthread_mutex_unlock(&rt->lock);
    vm_def_free(def);
    return err;
}
