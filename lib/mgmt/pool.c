/*
 * lib/mgmt/pool.c — storage pools (directories) and their volumes (image files in them).
 *
 * The idea: the store keeps only "pool NAME is directory PATH"; a volume is simply a file in that
 * directory, read through the image engine whenever it is asked about, so the answer can never go
 * stale, and a file put there by hand is a volume like any other. Whether a volume is in use is
 * computed the same way: every defined VM's disks are opened (read-only, without taking the image
 * locks a running VM holds) and their whole backing chains compared with the volume by file
 * identity (device, inode), so a VM on an overlay over a gold image still "uses" the gold image.
 * Deleting and shrinking are refused while anything uses the volume, and nothing here ever deletes
 * a file except `vol delete` of that one file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <json-c/json.h>

#include "mgmt/mgmt-internal.h"
#include "vessel/img.h"

/* Serialises volume creation, deletion, resizing and pool undefinition inside the daemon, so two
 * clients can't both pass "nobody uses it" and then race. */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

/* One file some image chain reads: who reads it, and how (the top of a VM's disk or deeper). */
struct pool_user {
    dev_t dev;
    ino_t ino;
    char who[VM_DEF_NAME_MAX + 64]; /* "VM 'web1'" or "volume 'base.qcow2'" */
    char vm[VM_DEF_NAME_MAX + 1];   /* the VM, "" for a volume's chain */
    bool backing;                   /* reached through a backing file, not the disk itself */
};

struct pool_users {
    struct pool_user *items;
    size_t count;
};

static void users_free(struct pool_users *u)
{
    free(u->items);
    u->items = NULL;
    u->count = 0;
}

static int users_add(struct pool_users *u, const char *file, const char *who, const char *vm,
                     bool backing)
{
    struct stat st;
    if (!file || stat(file, &st) < 0)
        return 0;
    struct pool_user *bigger = realloc(u->items, (u->count + 1) * sizeof(*bigger));
    if (!bigger)
        return vs_error(-ENOMEM, "out of memory");
    u->items = bigger;
    struct pool_user *p = &u->items[u->count++];
    p->dev = st.st_dev;
    p->ino = st.st_ino;
    snprintf(p->who, sizeof(p->who), "%s", who);
    snprintf(p->vm, sizeof(p->vm), "%s", vm);
    p->backing = backing;
    return 0;
}

/* Every file of the chain of image FILE (FILE itself, then its backing files). Images a VM holds
 * open are read without locks; a chain that can't be opened still counts with its top file. */
static int users_add_chain(struct pool_users *u, const char *file, const char *format,
                           const char *who, const char *vm)
{
    struct img *img = NULL;
    int err = img_open(&img, file, format, IMG_OPEN_NO_LOCK);
    if (err) {
        vs_error_clear();
        return users_add(u, file, who, vm, false);
    }
    for (struct img *layer = img; layer && !err; layer = img_backing(layer))
        err = users_add(u, img_filename(layer), who, vm, layer != img);
    img_close(img);
    return err;
}

/* What every defined VM's disks read. */
static int users_of_vms(struct mgmt_daemon *d, struct pool_users *u)
{
    struct mgmt_vm_record *list;
    size_t count;
    int err = mgmt_store_list(d->store, &list, &count);
    if (err)
        return err;
    for (size_t i = 0; i < count; i++) {
        struct vm_def *def = NULL;
        if (!err &&
            vm_def_parse(list[i].definition, strlen(list[i].definition), list[i].name, &def) == 0) {
            char who[VM_DEF_NAME_MAX + 8];
            snprintf(who, sizeof(who), "VM '%s'", list[i].name);
            for (size_t k = 0; k < def->disk_count && !err; k++)
                err =
                    users_add_chain(u, def->disks[k].file, def->disks[k].format, who, list[i].name);
        }
        vs_error_clear();
        vm_def_free(def);
        mgmt_vm_record_free(&list[i]);
    }
    free(list);
    return err;
}

/* Someone reading (dev, ino) through a backing chain (not as the top image), or NULL. */
static const struct pool_user *users_find_backing(const struct pool_users *u, const struct stat *st)
{
    for (size_t i = 0; i < u->count; i++)
        if (u->items[i].dev == st->st_dev && u->items[i].ino == st->st_ino && u->items[i].backing)
            return &u->items[i];
    return NULL;
}

static int check_volume_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 200 || name[0] == '.' || name[0] == '-' ||
        strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-") != len)
        return vs_error(-EINVAL,
                        "volume name '%s': use 1-200 of A-Z a-z 0-9 . _ + - (not starting "
                        "with . or -)",
                        name);
    return 0;
}

static int check_pool_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 64 || name[0] == '.' || name[0] == '-' ||
        strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != len)
        return vs_error(-EINVAL, "pool name '%s': use 1-64 of A-Z a-z 0-9 . _ -", name);
    return 0;
}

int mgmt_pool_volume_path(struct mgmt_daemon *d, const char *pool, const char *volume, char *buf,
                          size_t len)
{
    int err = check_volume_name(volume);
    if (err)
        return err;
    struct mgmt_pool_record rec;
    if ((err = mgmt_store_pool_get(d->store, pool, &rec)))
        return err;
    int n = snprintf(buf, len, "%s/%s", rec.path, volume);
    if (n < 0 || (size_t)n >= len)
        return vs_error(-ENAMETOOLONG, "%s/%s: path too long", rec.path, volume);
    return 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of the pool's directory that is not hidden, sorted by name. */
static int pool_files(const char *dir, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    DIR *dp = opendir(dir);
    if (!dp)
        return vs_error_errno(-errno, "%s", dir);
    int err = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        struct stat st;
        if (e->d_name[0] == '.' || fstatat(dirfd(dp), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISREG(st.st_mode))
            continue;
        char **bigger = realloc(*names, (*count + 1) * sizeof(*bigger));
        char *copy = vs_strdup(e->d_name);
        if (!bigger || !copy) {
            if (bigger)
                *names = bigger;
            free(copy);
            err = vs_error(-ENOMEM, "out of memory");
            break;
        }
        *names = bigger;
        (*names)[(*count)++] = copy;
    }
    closedir(dp);
    if (!err && *count)
        qsort(*names, *count, sizeof(**names), compare_names);
    return err;
}

static void names_free(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

/* What every volume of the pool reads through its backing chain (for "is X a backing file"). */
static int users_of_volumes(const char *dir, char **names, size_t count, struct pool_users *u)
{
    int err = 0;
    for (size_t i = 0; i < count && !err; i++) {
        char path[PATH_MAX + 256], who[256];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        snprintf(who, sizeof(who), "volume '%.200s'", names[i]);
        err = users_add_chain(u, path, NULL, who, "");
    }
    return err;
}

/* One volume as JSON: name, path, format, virtual_size, disk_usage, backing, used_by. */
static json_object *volume_json(const char *dir, const char *name, const struct pool_users *u)
{
    char path[PATH_MAX + 256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "path", json_object_new_string(path));
    struct stat st;
    bool have_stat = stat(path, &st) == 0;
    if (have_stat)
        json_object_object_add(o, "disk_usage", json_object_new_int64((int64_t)st.st_blocks * 512));
    struct img *img = NULL;
    if (img_open(&img, path, NULL, IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        json_object_object_add(o, "format", json_object_new_string(img_format(img)));
        json_object_object_add(o, "virtual_size", json_object_new_int64((int64_t)img_size(img)));
        const char *backing = img_backing_name(img);
        json_object_object_add(o, "backing",
                               backing && backing[0] ? json_object_new_string(backing) : NULL);
        img_close(img);
    } else {
        json_object_object_add(o, "format", json_object_new_string("unknown"));
        json_object_object_add(o, "error", json_object_new_string(vs_error_message()));
        vs_error_clear();
    }
    json_object *used = json_object_new_array();
    for (size_t i = 0; have_stat && i < u->count; i++) {
        const struct pool_user *p = &u->items[i];
        if (p->dev != st.st_dev || p->ino != st.st_ino || !p->vm[0])
            continue;
        bool seen = false;
        for (size_t k = 0; k < json_object_array_length(used); k++)
            seen |= !strcmp(json_object_get_string(json_object_array_get_idx(used, k)), p->vm);
        if (!seen)
            json_object_array_add(used, json_object_new_string(p->vm));
    }
    json_object_object_add(o, "used_by", used);
    return o;
}

int mgmt_volume_list(struct mgmt_daemon *d, const char *pool, json_object **out)
{
    struct mgmt_pool_record rec;
    int err = mgmt_store_pool_get(d->store, pool, &rec);
    if (err)
        return err;
    char **names;
    size_t count;
    if ((err = pool_files(rec.path, &names, &count)))
        return vs_error_prefix(err, "pool '%s'", pool);
    struct pool_users u = {0};
    err = users_of_vms(d, &u);
    if (!err) {
        json_object *arr = json_object_new_array();
        for (size_t i = 0; i < count; i++)
            json_object_array_add(arr, volume_json(rec.path, names[i], &u));
        *out = json_object_new_object();
        json_object_object_add(*out, "pool", json_object_new_string(pool));
        json_object_object_add(*out, "volumes", arr);
    }
    users_free(&u);
    names_free(names, count);
    return err;
}

static json_object *pool_json(const struct mgmt_pool_record *rec)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(rec->name));
    json_object_object_add(o, "path", json_object_new_string(rec->path));
    struct statvfs vfs;
    char **names = NULL;
    size_t count = 0;
    if (statvfs(rec->path, &vfs) == 0 && pool_files(rec->path, &names, &count) == 0) {
        json_object_object_add(o, "state", json_object_new_string("available"));
        json_object_object_add(o, "capacity",
                               json_object_new_int64((int64_t)(vfs.f_blocks * vfs.f_frsize)));
        json_object_object_add(o, "available",
                               json_object_new_int64((int64_t)(vfs.f_bavail * vfs.f_frsize)));
        json_object_object_add(
            o, "allocation",
            json_object_new_int64((int64_t)((vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize)));
        json_object_object_add(o, "volumes", json_object_new_int64((int64_t)count));
    } else {
        /* the directory went away or became unreadable: say so instead of failing the listing */
        json_object_object_add(o, "state", json_object_new_string("unavailable"));
        json_object_object_add(
            o, "error",
            json_object_new_string(vs_error_message()[0] ? vs_error_message() : strerror(errno)));
        vs_error_clear();
    }
    names_free(names, count);
    return o;
}

int mgmt_pool_list(struct mgmt_daemon *d, json_object **out)
{
    struct mgmt_pool_record *list;
    size_t count;
    int err = mgmt_store_pool_list(d->store, &list, &count);
    if (err)
        return err;
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < count; i++)
        json_object_array_add(arr, pool_json(&list[i]));
    free(list);
    *out = json_object_new_object();
    json_object_object_add(*out, "pools", arr);
    return 0;
}

int mgmt_pool_info(struct mgmt_daemon *d, const char *name, json_object **out)
{
    struct mgmt_pool_record rec;
    int err = mgmt_store_pool_get(d->store, name, &rec);
    if (err)
        return err;
    *out = pool_json(&rec);
    return 0;
}

int mgmt_pool_define(struct mgmt_daemon *d, const char *name, const char *path, json_object **out)
{
    int err = check_pool_name(name);
    if (err)
        return err;
    if (path[0] != '/')
        return vs_error(-EINVAL, "pool '%s': path '%s' must be absolute", name, path);
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return vs_error_errno(-errno, "pool '%s': %s", name, path);
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(path, real) || stat(real, &st) < 0)
        return vs_error_errno(-errno, "pool '%s': %s", name, path);
    if (!S_ISDIR(st.st_mode))
        return vs_error(-EINVAL, "pool '%s': %s is not a directory", name, real);
    if ((err = mgmt_store_pool_define(d->store, name, real)))
        return err;
    return mgmt_pool_info(d, name, out);
}

/* -EBUSY naming the user when a defined VM (or, with volumes, another volume) reads path. */
static int check_unused(const char *lead, const char *volume, const char *path,
                        const struct pool_users *u, bool only_vms)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return vs_error_errno(-errno, "%s: volume '%s'", lead, volume);
    for (size_t i = 0; i < u->count; i++) {
        const struct pool_user *p = &u->items[i];
        if (p->dev != st.st_dev || p->ino != st.st_ino || (only_vms && !p->vm[0]))
            continue;
        if (!p->vm[0] && !p->backing)
            continue; /* the volume itself, as the top of its own chain */
        return vs_error(-EBUSY, "%s: volume '%s' is %s %s", lead, volume,
                        !p->vm[0]    ? "a backing file of"
                        : p->backing ? "a backing file of a disk of"
                                     : "a disk of",
                        p->who);
    }
    return 0;
}

int mgmt_pool_undefine(struct mgmt_daemon *d, const char *name)
{
    struct mgmt_pool_record rec;
    int err = mgmt_store_pool_get(d->store, name, &rec);
    if (err)
        return err;
    pthread_mutex_lock(&pool_lock);
    char **names = NULL;
    size_t count = 0;
    struct pool_users u = {0};
    /* an unreadable directory has no volumes we could protect: forgetting it is fine */
    if (pool_files(rec.path, &names, &count) < 0)
        vs_error_clear();
    err = users_of_vms(d, &u);
    char lead[128];
    snprintf(lead, sizeof(lead), "pool '%s' can't be undefined", name);
    for (size_t i = 0; i < count && !err; i++) {
        char path[PATH_MAX + 256];
        snprintf(path, sizeof(path), "%s/%s", rec.path, names[i]);
        err = check_unused(lead, names[i], path, &u, true);
    }
    if (!err)
        err = mgmt_store_pool_undefine(d->store, name);
    pthread_mutex_unlock(&pool_lock);
    users_free(&u);
    names_free(names, count);
    return err;
}

int mgmt_reserve_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == EEXIST ? vs_error(-EEXIST, "%s already exists", path)
                               : vs_error_errno(-errno, "%s", path);
    close(fd);
    return 0;
}

int mgmt_volume_create(struct mgmt_daemon *d, const struct mgmt_volume_params *p, json_object **out)
{
    struct mgmt_pool_record rec;
    char path[PATH_MAX + 256], backing_path[PATH_MAX + 256];
    int err = mgmt_store_pool_get(d->store, p->pool, &rec);
    if (!err)
        err = mgmt_pool_volume_path(d, p->pool, p->name, path, sizeof(path));
    if (err)
        return err;
    const char *format = img_format_canonical(p->format ? p->format : "qcow2");
    if (!format)
        return vs_error(-EINVAL, "format '%s' unknown", p->format);
    if (p->backing && !strcmp(format, "raw"))
        return vs_error(-EINVAL, "a raw volume can't have a backing file (use -f qcow2)");
    if (!p->backing && !p->size_given)
        return vs_error(-EINVAL,
                        "volume '%s': a size is needed (or a backing file to take it "
                        "from)",
                        p->name);
    const char *stored_backing = NULL; /* as the overlay will name it */
    if (p->backing) {
        /* a bare name is a volume of the same pool, named relative to the overlay's directory,
         * so the pool can move; anything else must be an absolute path */
        if (!strchr(p->backing, '/')) {
            if ((err = check_volume_name(p->backing)))
                return err;
            snprintf(backing_path, sizeof(backing_path), "%s/%s", rec.path, p->backing);
        } else if (p->backing[0] == '/') {
            snprintf(backing_path, sizeof(backing_path), "%s", p->backing);
        } else {
            return vs_error(-EINVAL, "backing '%s': a volume of pool '%s' or an absolute path",
                            p->backing, p->pool);
        }
        if (access(backing_path, R_OK) < 0)
            return vs_error_errno(-errno, "backing file %s", backing_path);
        stored_backing = p->backing;
    }
    pthread_mutex_lock(&pool_lock);
    if ((err = mgmt_reserve_file(path)))
        goto out;
    struct img_create_params cp = {.filename = path,
                                   .format = format,
                                   .size = p->size,
                                   .size_given = p->size_given,
                                   .backing_file = stored_backing,
                                   .quiet = true};
    if ((err = img_create(&cp))) {
        vs_error_prefix(err, "pool '%s': volume '%s'", p->pool, p->name);
        unlink(path);
        goto out;
    }
    char detail[320];
    snprintf(detail, sizeof(detail), "%s/%s", p->pool, p->name);
    mgmt_store_event(d->store, "", "volume-created", detail);
    struct pool_users none = {0};
    *out = volume_json(rec.path, p->name, &none);
out:
    pthread_mutex_unlock(&pool_lock);
    return err;
}

/* -EBUSY when a running VM holds the file (names it). */
static int check_not_running(struct mgmt_daemon *d, const char *pool, const char *volume,
                             const char *path)
{
    char holder[VM_DEF_NAME_MAX + 1];
    bool writable;
    if (mgmt_disks_holder(d, path, holder, sizeof(holder), &writable))
        return vs_error(-EBUSY, "pool '%s': volume '%s' is in use%s by running VM '%s'", pool,
                        volume, writable ? " writable" : "", holder);
    return 0;
}

int mgmt_volume_delete(struct mgmt_daemon *d, const char *pool, const char *name)
{
    struct mgmt_pool_record rec;
    char path[PATH_MAX + 256];
    int err = mgmt_store_pool_get(d->store, pool, &rec);
    if (!err)
        err = mgmt_pool_volume_path(d, pool, name, path, sizeof(path));
    if (err)
        return err;
    pthread_mutex_lock(&pool_lock);
    char **names = NULL;
    size_t count = 0;
    struct pool_users u = {0};
    struct stat st;
    if (lstat(path, &st) < 0)
        err = errno == ENOENT ? vs_error(-ENOENT, "pool '%s' has no volume '%s'", pool, name)
                              : vs_error_errno(-errno, "%s", path);
    else if (!S_ISREG(st.st_mode))
        err = vs_error(-EINVAL, "%s is not a regular file", path);
    if (!err)
        err = check_not_running(d, pool, name, path);
    if (!err && !(err = users_of_vms(d, &u)) && !(err = pool_files(rec.path, &names, &count)) &&
        !(err = users_of_volumes(rec.path, names, count, &u))) {
        char lead[128];
        snprintf(lead, sizeof(lead), "pool '%s'", pool);
        err = check_unused(lead, name, path, &u, false);
    }
    if (!err && unlink(path) < 0)
        err = vs_error_errno(-errno, "%s", path);
    if (!err) {
        char detail[320];
        snprintf(detail, sizeof(detail), "%s/%s", pool, name);
        mgmt_store_event(d->store, "", "volume-deleted", detail);
    }
    pthread_mutex_unlock(&pool_lock);
    users_free(&u);
    names_free(names, count);
    return err;
}

int mgmt_volume_resize(struct mgmt_daemon *d, const char *pool, const char *name, uint64_t size,
                       bool shrink, json_object **out)
{
    struct mgmt_pool_record rec;
    char path[PATH_MAX + 256];
    int err = mgmt_store_pool_get(d->store, pool, &rec);
    if (!err)
        err = mgmt_pool_volume_path(d, pool, name, path, sizeof(path));
    if (err)
        return err;
    if (access(path, F_OK) < 0)
        return vs_error(-ENOENT, "pool '%s' has no volume '%s'", pool, name);
    pthread_mutex_lock(&pool_lock);
    char **names = NULL;
    size_t count = 0;
    struct pool_users u = {0};
    struct img *img = NULL;
    err = check_not_running(d, pool, name, path);
    /* a backing file's size is part of what its overlays read: leave it alone */
    struct stat st;
    if (!err && !(err = users_of_vms(d, &u)) && !(err = pool_files(rec.path, &names, &count)) &&
        !(err = users_of_volumes(rec.path, names, count, &u)) && stat(path, &st) == 0) {
        const struct pool_user *p = users_find_backing(&u, &st);
        if (p)
            err = vs_error(-EBUSY,
                           "pool '%s': volume '%s' is a backing file of %s%s; resizing it "
                           "would change what its overlays read",
                           pool, name, p->vm[0] ? "a disk of " : "", p->who);
    }
    if (!err && (err = img_open(&img, path, NULL, IMG_OPEN_RDWR)))
        vs_error_prefix(err, "pool '%s'", pool);
    if (!err) {
        if (size < img_size(img) && !shrink)
            err = vs_error(-EINVAL,
                           "volume '%s': %llu bytes is smaller than its size %llu; data beyond "
                           "would be lost (--shrink allows it)",
                           name, (unsigned long long)size, (unsigned long long)img_size(img));
        else if ((err = img_resize(img, size, shrink ? IMG_RESIZE_SHRINK : 0, NULL)))
            vs_error_prefix(err, "pool '%s': resize of volume '%s'", pool, name);
        int cerr = img_close(img);
        if (!err)
            err = cerr;
    }
    pthread_mutex_unlock(&pool_lock);
    if (!err)
        *out = volume_json(rec.path, name, &u);
    users_free(&u);
    names_free(names, count);
    return err;
}
