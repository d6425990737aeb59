/*
 * lib/guestfs/inspect.c — look at a whole disk: find its boot config and its OS.
 *
 * The idea: try every partition (or the whole disk) that holds an ext filesystem, in table order,
 * and probe a fixed list of well-known paths, the way a boot loader's own search would. The boot
 * entry's device is then mapped back to our partition: "(hd0,msdos1)" is partition 1, a
 * `search --fs-uuid` is the partition whose superblock has that UUID, and no device at all means
 * the partition the config came from.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

#define MAX_CONFIG (4 << 20)

static const struct {
    const char *path;
    enum guestfs_boot_kind kind;
} config_paths[] = {
    {"/boot/grub/grub.cfg", GUESTFS_BOOT_GRUB2},
    {"/grub/grub.cfg", GUESTFS_BOOT_GRUB2},
    {"/boot/grub2/grub.cfg", GUESTFS_BOOT_GRUB2},
    {"/grub2/grub.cfg", GUESTFS_BOOT_GRUB2},
    {"/boot/grub/menu.lst", GUESTFS_BOOT_GRUB_LEGACY},
    {"/grub/menu.lst", GUESTFS_BOOT_GRUB_LEGACY},
    {"/boot/grub/grub.conf", GUESTFS_BOOT_GRUB_LEGACY},
    {"/grub/grub.conf", GUESTFS_BOOT_GRUB_LEGACY},
    {"/boot/extlinux/extlinux.conf", GUESTFS_BOOT_EXTLINUX},
    {"/extlinux/extlinux.conf", GUESTFS_BOOT_EXTLINUX},
    {"/extlinux.conf", GUESTFS_BOOT_EXTLINUX},
    {"/boot/syslinux/syslinux.cfg", GUESTFS_BOOT_EXTLINUX},
    {"/syslinux/syslinux.cfg", GUESTFS_BOOT_EXTLINUX},
};

static char *part_label(struct img *img, unsigned number)
{
    return vs_asprintf("%s:%u", img_filename(img), number);
}

static int open_part(struct img *img, const struct guestfs_part *p, struct guestfs_fs **fs)
{
    if (!guestfs_fs_probe(img, p->start, p->size, NULL, 0, NULL, 0))
        return -ENODEV;
    char *label = part_label(img, p->number);
    if (!label)
        return -ENOMEM;
    int rc = guestfs_fs_open(img, p->start, p->size, label, false, fs);
    free(label);
    return rc;
}

static int resolve_part(struct img *img, const struct guestfs_table *t,
                        const struct guestfs_boot_entry *e, unsigned config_part, unsigned *out)
{
    if (e->root_uuid || e->root_label) {
        for (size_t i = 0; i < t->count; i++) {
            char uuid[40], label[20];
            const struct guestfs_part *p = &t->parts[i];
            if (!guestfs_fs_probe(img, p->start, p->size, uuid, sizeof(uuid), label, sizeof(label)))
                continue;
            if ((e->root_uuid && !strcasecmp(uuid, e->root_uuid)) ||
                (e->root_label && !strcmp(label, e->root_label))) {
                *out = p->number;
                return 0;
            }
        }
        return vs_error(-ENOENT, "%s: no partition has filesystem %s %s", img_filename(img),
                        e->root_uuid ? "UUID" : "label",
                        e->root_uuid ? e->root_uuid : e->root_label);
    }
    if (e->part < 0) {
        *out = config_part;
        return 0;
    }
    if (e->part == 0 && t->scheme == GUESTFS_SCHEME_NONE) {
        *out = 0;
        return 0;
    }
    if (!guestfs_table_find(t, (unsigned)e->part))
        return vs_error(-ENOENT, "%s: boot entry '%s' names partition %d, which doesn't exist",
                        img_filename(img), e->title, e->part);
    *out = (unsigned)e->part;
    return 0;
}

/* extlinux paths without a leading '/' are relative to the config's directory. */
static char *absolute(const char *path, const char *config_path)
{
    if (!path)
        return NULL;
    if (path[0] == '/')
        return strdup(path);
    const char *slash = strrchr(config_path, '/');
    return vs_asprintf("%.*s/%s", (int)(slash - config_path), config_path, path);
}

int guestfs_bootinfo(struct img *img, const struct guestfs_table *t, const char *entry,
                     struct guestfs_bootinfo *out)
{
    memset(out, 0, sizeof(*out));
    int last_err = 0;
    char last_msg[512] = "";
    for (size_t i = 0; i < t->count; i++) {
        const struct guestfs_part *p = &t->parts[i];
        struct guestfs_fs *fs;
        if (open_part(img, p, &fs) < 0)
            continue;
        for (size_t c = 0; c < VS_ARRAY_SIZE(config_paths); c++) {
            if (guestfs_fs_exists(fs, config_paths[c].path) != 1)
                continue;
            char *text, *env = NULL;
            size_t len, env_len = 0;
            int rc = guestfs_fs_read_file(fs, config_paths[c].path, MAX_CONFIG, &text, &len);
            if (rc < 0) {
                guestfs_fs_close(fs);
                return rc;
            }
            if (config_paths[c].kind == GUESTFS_BOOT_GRUB2) {
                char *envpath = strdup(config_paths[c].path);
                if (envpath) {
                    strcpy(strrchr(envpath, '/'), "/grubenv");
                    if (guestfs_fs_exists(fs, envpath) == 1)
                        guestfs_fs_read_file(fs, envpath, 65536, &env, &env_len);
                    free(envpath);
                }
            }
            char *name =
                vs_asprintf("%s:%u:%s", img_filename(img), p->number, config_paths[c].path);
            struct guestfs_bootcfg *cfg = NULL;
            rc = name ? guestfs_bootcfg_parse(config_paths[c].kind, text, len, name, env, env_len,
                                              &cfg)
                      : -ENOMEM;
            free(text);
            free(env);
            size_t index = 0;
            if (rc == 0) {
                rc = guestfs_bootcfg_choose(cfg, entry, &index);
                if (rc < 0)
                    vs_error_prefix(rc, "%s", name);
            }
            free(name);
            if (rc == 0 && !cfg->entries[index].kernel)
                rc = vs_error(-ENOENT, "%s:%u:%s: entry '%s' has no kernel", img_filename(img),
                              p->number, config_paths[c].path, cfg->entries[index].title);
            if (rc < 0) {
                /* a broken config is the answer unless another one works */
                last_err = rc;
                snprintf(last_msg, sizeof(last_msg), "%s", vs_error_message());
                guestfs_bootcfg_free(cfg);
                continue;
            }
            const struct guestfs_boot_entry *e = &cfg->entries[index];
            unsigned part = 0;
            rc = resolve_part(img, t, e, p->number, &part);
            if (rc < 0) {
                guestfs_bootcfg_free(cfg);
                guestfs_fs_close(fs);
                return rc;
            }
            out->config_path = strdup(config_paths[c].path);
            out->config_part = p->number;
            out->kind = cfg->kind;
            out->title = strdup(e->title);
            out->part = part;
            bool ext = cfg->kind == GUESTFS_BOOT_EXTLINUX;
            out->kernel = ext ? absolute(e->kernel, config_paths[c].path) : strdup(e->kernel);
            out->initrd = ext ? absolute(e->initrd, config_paths[c].path)
                              : (e->initrd ? strdup(e->initrd) : NULL);
            out->cmdline = strdup(e->cmdline);
            guestfs_bootcfg_free(cfg);
            guestfs_fs_close(fs);
            if (!out->config_path || !out->title || !out->kernel || !out->cmdline) {
                guestfs_bootinfo_free(out);
                return vs_error(-ENOMEM, "out of memory");
            }
            return 0;
        }
        guestfs_fs_close(fs);
    }
    if (last_err < 0)
        return vs_error(last_err, "%s", last_msg);
    return vs_error(-ENOENT, "%s: no boot configuration found (grub.cfg, menu.lst, extlinux.conf)",
                    img_filename(img));
}

void guestfs_bootinfo_free(struct guestfs_bootinfo *info)
{
    free(info->config_path);
    free(info->title);
    free(info->kernel);
    free(info->initrd);
    free(info->cmdline);
    memset(info, 0, sizeof(*info));
}

/* Value of KEY= in an os-release text, unquoted, or NULL. */
static char *os_release_value(const char *text, const char *key)
{
    size_t klen = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, klen) != 0 || l[klen] != '=')
            continue;
        const char *v = l + klen + 1, *end = strchr(v, '\n');
        size_t n = end ? (size_t)(end - v) : strlen(v);
        if (n >= 2 && (v[0] == '"' || v[0] == '\'') && v[n - 1] == v[0]) {
            v++;
            n -= 2;
        }
        return strndup(v, n);
    }
    return NULL;
}

static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = 0;
}

static int find_kernels(struct guestfs_fs *fs, const char *dir, struct guestfs_os *os)
{
    struct guestfs_dirent *d;
    size_t n;
    if (guestfs_fs_exists(fs, dir) != 1 || guestfs_fs_list(fs, dir, &d, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(d[i].name, "vmlinuz", 7) && strncmp(d[i].name, "vmlinux", 7))
            continue;
        if (!S_ISREG(d[i].mode))
            continue;
        char **nk = realloc(os->kernels, (os->kernel_count + 1) * sizeof(*nk));
        if (!nk)
            break;
        os->kernels = nk;
        os->kernels[os->kernel_count] =
            vs_asprintf("%s/%s", strcmp(dir, "/") ? dir : "", d[i].name);
        if (os->kernels[os->kernel_count])
            os->kernel_count++;
    }
    guestfs_dirents_free(d, n);
    return 0;
}

int guestfs_inspect_os(struct img *img, const struct guestfs_table *t, struct guestfs_os *out)
{
    memset(out, 0, sizeof(*out));
    bool found = false;
    for (size_t i = 0; i < t->count && !found; i++) {
        const struct guestfs_part *p = &t->parts[i];
        struct guestfs_fs *fs;
        if (open_part(img, p, &fs) < 0)
            continue;
        char *text;
        size_t len;
        if (guestfs_fs_exists(fs, "/etc/os-release") == 1 &&
            guestfs_fs_read_file(fs, "/etc/os-release", 65536, &text, &len) == 0) {
            out->id = os_release_value(text, "ID");
            out->name = os_release_value(text, "PRETTY_NAME");
            if (!out->name)
                out->name = os_release_value(text, "NAME");
            out->version = os_release_value(text, "VERSION_ID");
            free(text);
            found = true;
        } else if (guestfs_fs_exists(fs, "/etc/debian_version") == 1 &&
                   guestfs_fs_read_file(fs, "/etc/debian_version", 4096, &text, &len) == 0) {
            chomp(text);
            out->id = strdup("debian");
            out->name = vs_asprintf("Debian %s", text);
            out->version = text;
            found = true;
        } else if (guestfs_fs_exists(fs, "/etc/redhat-release") == 1 &&
                   guestfs_fs_read_file(fs, "/etc/redhat-release", 4096, &text, &len) == 0) {
            chomp(text);
            out->id = strdup("rhel");
            out->name = text;
            found = true;
        }
        if (found) {
            out->root_part = p->number;
            out->kernel_part = p->number;
            find_kernels(fs, "/boot", out);
        }
        guestfs_fs_close(fs);
    }
    if (!found)
        return vs_error(-ENOENT,
                        "%s: no operating system found (no /etc/os-release, "
                        "/etc/debian_version or /etc/redhat-release)",
                        img_filename(img));
    /* kernels on a separate /boot partition */
    for (size_t i = 0; i < t->count && out->kernel_count == 0; i++) {
        const struct guestfs_part *p = &t->parts[i];
        struct guestfs_fs *fs;
        if (p->number == out->root_part || open_part(img, p, &fs) < 0)
            continue;
        find_kernels(fs, "/", out);
        if (out->kernel_count)
            out->kernel_part = p->number;
        guestfs_fs_close(fs);
    }
    return 0;
}

void guestfs_os_free(struct guestfs_os *os)
{
    free(os->id);
    free(os->name);
    free(os->version);
    for (size_t i = 0; i < os->kernel_count; i++)
        free(os->kernels[i]);
    free(os->kernels);
    memset(os, 0, sizeof(*os));
}
