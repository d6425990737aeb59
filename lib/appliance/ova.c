/*
 * lib/appliance/ova.c — export a VM definition as OVF/OVA, import OVF/OVA into a definition.
 *
 * The idea: an OVA is an unpacked OVF in a tar, so import first unpacks into a private staging
 * directory inside the target — refusing any entry that is not a plain regular file name, so
 * nothing can land outside it — and then runs the one OVF path: parse the descriptor, check the
 * manifest's digests, convert each disk with the image engine, write NAME.vm. Disk files are
 * opened as streamOptimized/sparse VMDK only when their header says so and never with a backing
 * chain or a descriptor of foreign extents, so a hostile disk cannot make the import read host
 * files; anything else is copied as raw bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "appliance-internal.h"
#include "vessel/appliance.h"
#include "vessel/util.h"

#define DESCRIPTOR_MAX (16u << 20) /* OVF descriptors and manifests are small text */

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static char *dir_name(const char *path)
{
    char *copy = vs_strdup(path);
    if (!copy)
        return NULL;
    char *d = vs_strdup(dirname(copy));
    free(copy);
    return d;
}

/* Read a whole small file (at most MAX bytes) NUL-terminated. */
static int read_small_file(const char *path, const char *label, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", label);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        return vs_error(-EFBIG, "%s: not a regular file of at most %zu bytes", label, max);
    }
    char *buf = vs_malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    int rc = vs_pread_full(fd, buf, (size_t)st.st_size, 0);
    close(fd);
    if (rc < 0) {
        free(buf);
        return vs_error_errno(rc, "%s: read", label);
    }
    buf[st.st_size] = '\0';
    *out = buf;
    *len = (size_t)st.st_size;
    return 0;
}

static int write_file_excl(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    int rc = vs_pwrite_full(fd, text, strlen(text), 0);
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0) {
        unlink(path);
        return vs_error_errno(rc, "%s: write", path);
    }
    return 0;
}

static void hex_digest(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

/* ---- export ---------------------------------------------------------------------------------- */

static int export_disk(const struct vm_disk *disk, const char *def_dir, const char *dst,
                       struct appliance_disk *out, img_progress_fn progress, void *ctx)
{
    char *src =
        disk->file[0] == '/' ? vs_strdup(disk->file) : vs_asprintf("%s/%s", def_dir, disk->file);
    if (!src)
        return -ENOMEM;
    struct img *img;
    int rc = img_open(&img, src, disk->format, IMG_OPEN_NO_LOCK);
    if (rc < 0) {
        free(src);
        return rc;
    }
    out->capacity = img_size(img);
    img_close(img);
    struct vs_opts opts = {0};
    struct img_convert_params p;
    img_convert_params_init(&p);
    const char *sources[1] = {src};
    p.sources = sources;
    p.source_count = 1;
    p.source_format = disk->format;
    p.source_flags = IMG_OPEN_NO_LOCK;
    p.target = dst;
    p.target_format = "vmdk";
    p.opts = &opts;
    p.progress = progress;
    p.progress_ctx = ctx;
    if ((rc = vs_opts_set(&opts, "subformat", "streamOptimized")) == 0)
        rc = img_convert(&p);
    vs_opts_free(&opts);
    free(src);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(dst, &st) < 0)
        return vs_error_errno(-errno, "%s", dst);
    out->file_size = (uint64_t)st.st_size;
    return 0;
}

static int system_from_def(const struct vm_def *def, struct appliance_system *sys)
{
    int rc;
    if (!(sys->name = vs_strdup(def->name)))
        return -ENOMEM;
    sys->vcpus = def->vcpus;
    sys->memory = def->memory;
    for (size_t i = 0; i < def->nic_count; i++) {
        struct appliance_nic *nic;
        if ((rc = appliance_add_nic(sys, &nic)) < 0)
            return rc;
        const char *net = def->nics[i].network ? def->nics[i].network : def->nics[i].bridge;
        if (net && !(nic->network = vs_strdup(net)))
            return -ENOMEM;
        memcpy(nic->mac, def->nics[i].mac, sizeof(nic->mac));
        nic->model = def->nics[i].model;
    }
    return 0;
}

static int archive_add_file(struct archive *a, const char *path, const char *name,
                            const char *label)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    struct stat st;
    fstat(fd, &st);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, st.st_size);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, st.st_mtime, 0);
    int rc = 0;
    size_t bufsize = 1 << 20;
    char *buf = vs_malloc(bufsize);
    if (!buf)
        rc = -ENOMEM;
    else if (archive_write_header(a, e) != ARCHIVE_OK)
        rc = vs_error(-EIO, "%s: entry '%s': %s", label, name, archive_error_string(a));
    for (uint64_t off = 0; rc == 0 && off < (uint64_t)st.st_size;) {
        size_t n = (size_t)VS_MIN((uint64_t)bufsize, (uint64_t)st.st_size - off);
        if ((rc = vs_pread_full(fd, buf, n, off)) < 0) {
            vs_error_errno(rc, "%s: read", path);
            break;
        }
        if (archive_write_data(a, buf, n) != (la_ssize_t)n)
            rc = vs_error(-EIO, "%s: entry '%s': %s", label, name, archive_error_string(a));
        off += n;
    }
    free(buf);
    archive_entry_free(e);
    close(fd);
    return rc;
}

static int write_ova(const char *out, const char *work, const char *const *names, size_t count)
{
    char *tmp = vs_asprintf("%s.partial", out);
    if (!tmp)
        return -ENOMEM;
    struct archive *a = archive_write_new();
    int rc = 0;
    /* ustar headers for every entry; pax extensions only for what ustar can't say (> 8 GiB) */
    if (!a || archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_open_filename(a, tmp) != ARCHIVE_OK)
        rc = vs_error(-EIO, "%s: %s", out, a ? archive_error_string(a) : "out of memory");
    for (size_t i = 0; rc == 0 && i < count; i++) {
        char *path = vs_asprintf("%s/%s", work, names[i]);
        rc = path ? archive_add_file(a, path, names[i], out) : -ENOMEM;
        free(path);
    }
    if (a && rc == 0 && archive_write_close(a) != ARCHIVE_OK)
        rc = vs_error(-EIO, "%s: %s", out, archive_error_string(a));
    archive_write_free(a);
    if (rc == 0 && rename(tmp, out) < 0)
        rc = vs_error_errno(-errno, "%s", out);
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

int appliance_export(const char *def_path, const char *out, bool archive, img_progress_fn progress,
                     void *progress_ctx)
{
    struct vm_def *def = NULL;
    int rc = vm_def_parse_file(def_path, &def);
    if (rc < 0)
        return rc;
    struct appliance_system *sys = calloc(1, sizeof(*sys));
    char *def_dir = dir_name(def_path), *work = NULL, *ovf = NULL;
    char **names = calloc(def->disk_count + 2, sizeof(char *));
    size_t name_count = 0;
    if (!sys || !def_dir || !names) {
        rc = vs_error(-ENOMEM, "out of memory");
        goto out;
    }
    if (archive) {
        work = vs_asprintf("%s.parts.XXXXXX", out);
        if (!work || !mkdtemp(work)) {
            rc = work ? vs_error_errno(-errno, "%s: staging directory", out) : -ENOMEM;
            free(work);
            work = NULL;
            goto out;
        }
    } else {
        if (mkdir(out, 0755) < 0 && errno != EEXIST) {
            rc = vs_error_errno(-errno, "%s", out);
            goto out;
        }
        work = vs_strdup(out);
    }
    if ((rc = system_from_def(def, sys)) < 0)
        goto out;
    names[name_count++] = vs_asprintf("%s.ovf", def->name);
    names[name_count++] = vs_asprintf("%s.mf", def->name);
    for (size_t i = 0; i < def->disk_count; i++) {
        if (def->disks[i].media == VM_DISK_MEDIA_CDROM) {
            vs_warn("%s: disk %zu (%s): CD-ROM not exported", def_path, i + 1, def->disks[i].file);
            continue;
        }
        struct appliance_disk *d;
        if ((rc = appliance_add_disk(sys, &d)) < 0)
            goto out;
        d->bus = def->disks[i].bus;
        d->href = vs_asprintf("%s-disk%zu.vmdk", def->name, sys->disk_count);
        char *dst = d->href ? vs_asprintf("%s/%s", work, d->href) : NULL;
        names[name_count++] = d->href ? vs_strdup(d->href) : NULL;
        if (!dst || !names[name_count - 1]) {
            free(dst);
            rc = -ENOMEM;
            goto out;
        }
        rc = export_disk(&def->disks[i], def_dir, dst, d, progress, progress_ctx);
        free(dst);
        if (rc < 0) {
            vs_error_prefix(rc, "%s: disk %zu", def_path, i + 1);
            goto out;
        }
    }
    if (!(ovf = appliance_ovf_write(sys)) || !names[0] || !names[1]) {
        rc = -ENOMEM;
        goto out;
    }
    char *path = vs_asprintf("%s/%s", work, names[0]);
    unlink(path);
    rc = write_file_excl(path, ovf);
    free(path);
    if (rc < 0)
        goto out;
    /* the manifest: every file but itself, SHA256 as ovftool writes it */
    size_t mf_cap = 256 * name_count, mf_len = 0;
    char *mf = calloc(1, mf_cap);
    for (size_t i = 0; mf && i < name_count; i++) {
        if (i == 1)
            continue;
        unsigned char d[APPLIANCE_DIGEST_MAX];
        size_t dlen;
        char hex[2 * APPLIANCE_DIGEST_MAX + 1];
        path = vs_asprintf("%s/%s", work, names[i]);
        rc = path ? appliance_file_digest(path, APPLIANCE_SHA256, d, &dlen) : -ENOMEM;
        free(path);
        if (rc < 0)
            break;
        hex_digest(d, dlen, hex);
        size_t need = strlen(names[i]) + strlen(hex) + 16;
        if (mf_len + need >= mf_cap) {
            char *grown = realloc(mf, mf_cap = 2 * (mf_len + need));
            if (!grown) {
                rc = -ENOMEM;
                break;
            }
            mf = grown;
        }
        mf_len += (size_t)snprintf(mf + mf_len, mf_cap - mf_len, "SHA256(%s)= %s\n", names[i], hex);
    }
    if (!mf && rc == 0)
        rc = -ENOMEM;
    if (rc == 0) {
        path = vs_asprintf("%s/%s", work, names[1]);
        unlink(path);
        rc = path ? write_file_excl(path, mf) : -ENOMEM;
        free(path);
    }
    free(mf);
    if (rc == 0 && archive)
        rc = write_ova(out, work, (const char *const *)names, name_count);
out:
    if (archive && work) {
        for (size_t i = 0; i < name_count; i++) {
            char *p = names[i] ? vs_asprintf("%s/%s", work, names[i]) : NULL;
            if (p)
                unlink(p);
            free(p);
        }
        rmdir(work);
    }
    for (size_t i = 0; names && i < name_count; i++)
        free(names[i]);
    free(names);
    free(ovf);
    free(work);
    free(def_dir);
    appliance_system_free(sys);
    vm_def_free(def);
    return rc;
}

/* ---- import ---------------------------------------------------------------------------------- */

static const char *disk_extension(const char *format)
{
    return !strcmp(format, "raw") ? "img" : format;
}

/* Which driver may read an appliance's disk file: only a sparse VMDK with its data inside the
 * file (capacity in the header) is opened as vmdk; anything else is plain bytes. */
static const char *appliance_disk_format(const char *path)
{
    unsigned char h[20];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return "raw";
    int rc = vs_pread_full(fd, h, sizeof(h), 0);
    close(fd);
    if (rc < 0 || memcmp(h, "KDMV", 4))
        return "raw";
    uint64_t capacity = 0;
    for (int i = 7; i >= 0; i--)
        capacity = capacity << 8 | h[12 + i];
    return capacity ? "vmdk" : "raw";
}

int appliance_write_import(const struct appliance_system *sys, const char *src_dir,
                           bool sources_raw, const struct appliance_import_params *params,
                           char **def_path)
{
    const char *dir = params->dir ? params->dir : ".";
    const char *format = img_format_canonical(params->format ? params->format : "qcow2");
    if (!format)
        return vs_error(-EINVAL, "--format '%s': unknown image format", params->format);
    char real_dir[PATH_MAX];
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return vs_error_errno(-errno, "%s", dir);
    if (!realpath(dir, real_dir))
        return vs_error_errno(-errno, "%s", dir);
    struct vm_def *def = vm_def_new();
    char *vm_path = vs_asprintf("%s/%s.vm", real_dir, sys->name);
    char **made = calloc(sys->disk_count + 1, sizeof(char *));
    size_t made_count = 0;
    int rc = 0;
    if (!def || !vm_path || !made) {
        rc = vs_error(-ENOMEM, "out of memory");
        goto out;
    }
    if (access(vm_path, F_OK) == 0) {
        rc = vs_error(-EEXIST, "%s: exists; remove it or import into another --dir", vm_path);
        goto out;
    }
    if ((rc = vm_def_set_string(&def->name, sys->name)) < 0)
        goto out;
    def->vcpus = sys->vcpus;
    def->memory = sys->memory;
    for (size_t i = 0; i < sys->disk_count; i++) {
        const struct appliance_disk *d = &sys->disks[i];
        char *dst =
            vs_asprintf("%s/%s-disk%zu.%s", real_dir, sys->name, i + 1, disk_extension(format));
        if (!dst) {
            rc = -ENOMEM;
            goto out;
        }
        if (access(dst, F_OK) == 0) {
            rc = vs_error(-EEXIST, "%s: exists; remove it or import into another --dir", dst);
            free(dst);
            goto out;
        }
        made[made_count++] = dst;
        if (d->href) {
            char *src = vs_asprintf("%s/%s", src_dir, d->href);
            if (!src) {
                rc = -ENOMEM;
                goto out;
            }
            struct img_convert_params p;
            img_convert_params_init(&p);
            const char *sources[1] = {src};
            p.sources = sources;
            p.source_count = 1;
            p.source_format = sources_raw ? "raw" : appliance_disk_format(src);
            p.source_flags = IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK;
            p.target = dst;
            p.target_format = format;
            p.progress = params->progress;
            p.progress_ctx = params->progress_ctx;
            rc = img_convert(&p);
            free(src);
            if (rc < 0) {
                vs_error_prefix(rc, "%s: disk '%s'", base_name(params->file), d->href);
                goto out;
            }
        } else {
            struct img_create_params c = {.filename = dst,
                                          .format = format,
                                          .size = d->capacity,
                                          .size_given = true,
                                          .quiet = true};
            if ((rc = img_create(&c)) < 0)
                goto out;
        }
        struct vm_disk *vd;
        if ((rc = vm_def_add_disk(def, &vd)) < 0 || (rc = vm_def_set_string(&vd->file, dst)) < 0 ||
            (rc = vm_def_set_string(&vd->format, format)) < 0)
            goto out;
        vd->bus = d->bus;
    }
    for (size_t i = 0; i < sys->nic_count; i++) {
        struct vm_nic *vn;
        if ((rc = vm_def_add_nic(def, &vn)) < 0)
            goto out;
        char *net = appliance_sanitize_name(
            sys->nics[i].network && *sys->nics[i].network ? sys->nics[i].network : "default");
        if (!net) {
            rc = -ENOMEM;
            goto out;
        }
        free(vn->network);
        vn->network = net;
        free(vn->bridge);
        vn->bridge = NULL;
        memcpy(vn->mac, sys->nics[i].mac, sizeof(vn->mac));
        vn->model = sys->nics[i].model;
    }
    if ((rc = vm_def_validate(def)) < 0) {
        vs_error_prefix(rc, "%s", base_name(params->file));
        goto out;
    }
    char *text = vm_def_print(def);
    if (!text) {
        rc = -ENOMEM;
        goto out;
    }
    rc = write_file_excl(vm_path, text);
    free(text);
    if (rc == 0) {
        *def_path = vm_path;
        vm_path = NULL;
    }
out:
    if (rc < 0)
        for (size_t i = 0; i < made_count; i++)
            unlink(made[i]);
    for (size_t i = 0; made && i < made_count; i++)
        free(made[i]);
    free(made);
    free(vm_path);
    vm_def_free(def);
    return rc;
}

static int check_manifest(const char *dir, const char *mf_name, const char *label)
{
    char *path = vs_asprintf("%s/%s", dir, mf_name), *text = NULL;
    char *mf_label = vs_asprintf("%s: %s", label, mf_name);
    struct appliance_manifest m = {0};
    size_t len;
    int rc = path && mf_label ? 0 : -ENOMEM;
    if (rc == 0)
        rc = read_small_file(path, mf_label, DESCRIPTOR_MAX, &text, &len);
    if (rc == 0)
        rc = appliance_manifest_parse(text, len, mf_label, &m);
    for (size_t i = 0; rc == 0 && i < m.count; i++) {
        const struct appliance_manifest_entry *e = &m.entries[i];
        if (!appliance_plain_name(e->file)) {
            rc = vs_error(-EINVAL, "%s: line %d: file name '%.200s' is not a plain file name",
                          mf_label, e->line, e->file);
            break;
        }
        char *fp = vs_asprintf("%s/%s", dir, e->file);
        unsigned char d[APPLIANCE_DIGEST_MAX];
        size_t dlen = 0;
        if (!fp) {
            rc = -ENOMEM;
            break;
        }
        if (access(fp, F_OK) < 0) {
            rc = vs_error(-ENOENT, "%s: line %d: file '%.200s' is missing from the appliance",
                          mf_label, e->line, e->file);
        } else if ((rc = appliance_file_digest(fp, e->algo, d, &dlen)) == 0 &&
                   (dlen != e->digest_len || memcmp(d, e->digest, dlen))) {
            char want[2 * APPLIANCE_DIGEST_MAX + 1], got[2 * APPLIANCE_DIGEST_MAX + 1];
            hex_digest(e->digest, e->digest_len, want);
            hex_digest(d, dlen, got);
            rc = vs_error(-EBADMSG,
                          "%s: line %d: %s digest of '%.200s' is %.16s…, manifest says "
                          "%.16s…",
                          mf_label, e->line, appliance_digest_name(e->algo), e->file, got, want);
        }
        free(fp);
    }
    appliance_manifest_free(&m);
    free(text);
    free(path);
    free(mf_label);
    return rc;
}

/* The OVF path shared by .ovf and .ova: DIR holds OVF_NAME, its manifest and its disks. */
static int import_from_dir(const char *dir, const char *ovf_name, const char *label,
                           const struct appliance_import_params *params, char **def_path)
{
    char *path = vs_asprintf("%s/%s", dir, ovf_name);
    char *ovf_label = vs_asprintf("%s: %s", label, ovf_name);
    char *mf_name = strndup(ovf_name, strlen(ovf_name) - 4);
    char *text = NULL, *mf_full = NULL;
    struct appliance_system *sys = NULL;
    size_t len;
    int rc = path && ovf_label && mf_name ? 0 : -ENOMEM;
    if (rc == 0 && (mf_full = vs_asprintf("%s.mf", mf_name)) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = read_small_file(path, ovf_label, DESCRIPTOR_MAX, &text, &len);
    if (rc == 0) {
        char *mf_path = vs_asprintf("%s/%s", dir, mf_full);
        if (mf_path && access(mf_path, F_OK) == 0)
            rc = check_manifest(dir, mf_full, label);
        else if (mf_path)
            vs_warn("%s: no manifest %s: digests not checked", label, mf_full);
        free(mf_path);
    }
    if (rc == 0)
        rc = appliance_ovf_parse(text, len, ovf_label, &sys);
    for (size_t i = 0; rc == 0 && i < sys->disk_count; i++) {
        if (!sys->disks[i].href)
            continue;
        char *fp = vs_asprintf("%s/%s", dir, sys->disks[i].href);
        struct stat st;
        if (!fp)
            rc = -ENOMEM;
        else if (stat(fp, &st) < 0 || !S_ISREG(st.st_mode))
            rc = vs_error(-ENOENT, "%s: References: file '%.200s' (ovf:href) is missing", ovf_label,
                          sys->disks[i].href);
        free(fp);
    }
    if (rc == 0)
        rc = appliance_write_import(sys, dir, false, params, def_path);
    appliance_system_free(sys);
    free(text);
    free(path);
    free(ovf_label);
    free(mf_name);
    free(mf_full);
    return rc;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

int appliance_import_ovf(const struct appliance_import_params *params, char **def_path)
{
    if (!ends_with(params->file, ".ovf"))
        return vs_error(-EINVAL, "%s: file name: an OVF descriptor ends in .ovf", params->file);
    char *dir = dir_name(params->file);
    if (!dir)
        return -ENOMEM;
    int rc =
        import_from_dir(dir, base_name(params->file), base_name(params->file), params, def_path);
    free(dir);
    return rc;
}

/* Unpack the OVA's regular files into STAGING; names listed in *names. */
static int ova_unpack(const char *file, const char *staging, char ***names, size_t *count)
{
    const char *label = base_name(file);
    struct archive *a = archive_read_new();
    if (!a)
        return vs_error(-ENOMEM, "out of memory");
    archive_read_support_format_tar(a);
    int rc = 0;
    if (archive_read_open_filename(a, file, 1 << 16) != ARCHIVE_OK) {
        rc = vs_error(-EINVAL, "%s: %s", label, archive_error_string(a));
        archive_read_free(a);
        return rc;
    }
    struct archive_entry *e;
    while (rc == 0) {
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
            rc = vs_error(-EINVAL, "%s: tar: %s", label, archive_error_string(a));
            break;
        }
        const char *name = archive_entry_pathname(e);
        if (!name)
            name = "";
        while (name[0] == '.' && name[1] == '/')
            name += 2;
        mode_t type = archive_entry_filetype(e);
        if (strstr(name, "..") && (!strcmp(name, "..") || !strncmp(name, "../", 3) ||
                                   strstr(name, "/../") || ends_with(name, "/.."))) {
            rc = vs_error(-EPERM, "%s: tar entry '%.200s': path leaves the target directory", label,
                          name);
            break;
        }
        if (name[0] == '/') {
            rc = vs_error(-EPERM, "%s: tar entry '%.200s': absolute path refused", label, name);
            break;
        }
        if (type == AE_IFLNK || archive_entry_hardlink(e)) {
            rc = vs_error(-EPERM, "%s: tar entry '%.200s': links are refused", label, name);
            break;
        }
        if (type == AE_IFDIR && (!*name || !strcmp(name, ".") || !strcmp(name, "./")))
            continue;
        if (type != AE_IFREG) {
            rc = vs_error(-EPERM, "%s: tar entry '%.200s': only regular files belong in an OVA",
                          label, name);
            break;
        }
        if (!appliance_plain_name(name)) {
            rc = vs_error(-EPERM, "%s: tar entry '%.200s': not a plain file name", label, name);
            break;
        }
        if (*count == 0 && !ends_with(name, ".ovf"))
            vs_warn("%s: first tar entry '%s' is not the .ovf descriptor", label, name);
        char *path = vs_asprintf("%s/%s", staging, name);
        int fd = path ? open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
        if (fd < 0) {
            rc = !path ? -ENOMEM
                 : errno == EEXIST
                     ? vs_error(-EEXIST, "%s: tar entry '%.200s': appears twice", label, name)
                     : vs_error_errno(-errno, "%s", path);
            free(path);
            break;
        }
        free(path);
        char **grown = realloc(*names, (*count + 1) * sizeof(char *));
        if (!grown || !(grown[*count] = vs_strdup(name))) {
            *names = grown ? grown : *names;
            close(fd);
            rc = -ENOMEM;
            break;
        }
        *names = grown;
        (*count)++;
        /* write the data blocks at their offsets: holes in a sparse entry stay holes */
        for (;;) {
            const void *block;
            size_t n;
            la_int64_t off;
            r = archive_read_data_block(a, &block, &n, &off);
            if (r == ARCHIVE_EOF)
                break;
            if (r != ARCHIVE_OK) {
                rc = vs_error(-EIO, "%s: tar entry '%.200s': %s", label, name,
                              archive_error_string(a));
                break;
            }
            if ((rc = vs_pwrite_full(fd, block, n, (uint64_t)off)) < 0) {
                vs_error_errno(rc, "%s: unpacking '%.200s'", label, name);
                break;
            }
        }
        if (rc == 0 && ftruncate(fd, archive_entry_size(e)) < 0)
            rc = vs_error_errno(-errno, "%s: unpacking '%.200s'", label, name);
        close(fd);
    }
    archive_read_free(a);
    return rc;
}

int appliance_import_ova(const struct appliance_import_params *params, char **def_path)
{
    const char *dir = params->dir ? params->dir : ".";
    const char *label = base_name(params->file);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return vs_error_errno(-errno, "%s", dir);
    char *staging = vs_asprintf("%s/.vessel-import.XXXXXX", dir);
    if (!staging)
        return -ENOMEM;
    if (!mkdtemp(staging)) {
        int rc = vs_error_errno(-errno, "%s: staging directory in %s", label, dir);
        free(staging);
        return rc;
    }
    char **names = NULL;
    size_t count = 0;
    int rc = ova_unpack(params->file, staging, &names, &count);
    const char *ovf = NULL;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        if (!ends_with(names[i], ".ovf"))
            continue;
        if (ovf) {
            rc = vs_error(-EINVAL, "%s: tar entry '%.200s': a second .ovf descriptor", label,
                          names[i]);
            break;
        }
        ovf = names[i];
    }
    if (rc == 0 && !ovf)
        rc = vs_error(-EINVAL, "%s: descriptor: no .ovf file in the archive", label);
    if (rc == 0)
        rc = import_from_dir(staging, ovf, label, params, def_path);
    for (size_t i = 0; i < count; i++) {
        char *p = vs_asprintf("%s/%s", staging, names[i]);
        if (p)
            unlink(p);
        free(p);
        free(names[i]);
    }
    free(names);
    rmdir(staging);
    free(staging);
    return rc;
}
