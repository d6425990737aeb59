/*
 * src/cli-guest.c — `vessel guest …`: files, partitions and boot entries of a guest disk, from
 * outside the guest (vmware-mount, guestfish and pygrub in one tool).
 *
 * Every subcommand names a disk as IMAGE[:PART]; the image engine opens any format or overlay
 * chain, lib/guestfs does the rest. Only write commands (put, edit, mkdir, rm) open the image
 * read-write, so a running VM's disk can still be read with a shared lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vessel/guestfs.h"
#include "vessel/img.h"
#include "vessel/util.h"

int cli_guest_main(int argc, char **argv);

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: vessel guest COMMAND ...\n"
        "  parts IMAGE [--json]                 list partitions\n"
        "  ls IMAGE[:PART] PATH [-l]            list a directory\n"
        "  cat IMAGE[:PART] PATH                print a file\n"
        "  get IMAGE[:PART] PATH HOSTFILE       copy a file out (HOSTFILE - = stdout)\n"
        "  put IMAGE[:PART] PATH HOSTFILE       copy a host file in (- = stdin)\n"
        "  edit IMAGE[:PART] PATH               edit a file with $EDITOR\n"
        "  mkdir IMAGE[:PART] PATH              make a directory\n"
        "  rm IMAGE[:PART] PATH                 remove a file or empty directory\n"
        "  bootinfo IMAGE [--entry NAME] [--json]  the kernel, initrd and command line a\n"
        "                                       boot loader would use\n"
        "  inspect IMAGE [--json]               operating system, kernels, boot config\n"
        "PART is a partition number from `parts` (0 = a disk without a table); without it the\n"
        "only ext/FAT filesystem on the disk is used. Options: --format FMT (default: probe).\n");
}

static const char *g_format;

struct target {
    struct img *img;
    struct guestfs_table table;
    struct guestfs_fs *fs; /* ext2/3/4 or FAT: guestfs_fs_* answers both */
};

static void target_close(struct target *t)
{
    if (t->fs)
        guestfs_fs_close(t->fs);
    guestfs_table_free(&t->table);
    img_close(t->img);
}

static int err(int rc)
{
    fprintf(stderr, "vessel guest: %s\n", vs_error_message());
    return rc == -ENOENT ? 2 : 1;
}

/* Open IMAGE[:PART] and its filesystem. */
static int target_open(const char *spec, bool write, struct target *t)
{
    memset(t, 0, sizeof(*t));
    char *name = strdup(spec);
    if (!name)
        return -ENOMEM;
    long part = -1;
    char *colon = strrchr(name, ':');
    if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
        access(name, F_OK) != 0) {
        part = strtol(colon + 1, NULL, 10);
        *colon = 0;
    }
    int rc = img_open(&t->img, name, g_format, write ? IMG_OPEN_RDWR : 0);
    free(name);
    if (rc < 0)
        return rc;
    rc = guestfs_parts_read(t->img, &t->table);
    if (rc < 0)
        return rc;
    const struct guestfs_part *p = NULL;
    if (part >= 0) {
        p = guestfs_table_find(&t->table, (unsigned)part);
        if (!p)
            return vs_error(-ENOENT, "%s: no partition %ld", img_filename(t->img), part);
    } else {
        /* ext first, then FAT: a Linux disk's root wins over its EFI system partition */
        for (int pass = 0; pass < 2 && !p; pass++) {
            enum guestfs_fs_kind want = pass == 0 ? GUESTFS_FS_EXT : GUESTFS_FS_FAT;
            for (size_t i = 0; i < t->table.count; i++) {
                const struct guestfs_part *c = &t->table.parts[i];
                if (guestfs_fs_kind(t->img, c->start, c->size) != want)
                    continue;
                if (p)
                    return vs_error(-EINVAL,
                                    "%s: several partitions hold filesystems; say which "
                                    "as IMAGE:N (see `vessel guest parts`)",
                                    img_filename(t->img));
                p = c;
            }
        }
        if (!p)
            return vs_error(-ENOENT, "%s: no ext2/3/4 or FAT filesystem found",
                            img_filename(t->img));
    }
    char *label = vs_asprintf("%s:%u", img_filename(t->img), p->number);
    if (!label)
        return -ENOMEM;
    rc = guestfs_fs_open(t->img, p->start, p->size, label, write, &t->fs);
    free(label);
    return rc;
}

static bool has_flag(int *argc, char **argv, const char *flag)
{
    for (int i = 0; i < *argc; i++)
        if (!strcmp(argv[i], flag)) {
            memmove(argv + i, argv + i + 1, (size_t)(*argc - i) * sizeof(*argv));
            (*argc)--;
            return true;
        }
    return false;
}

static const char *take_option(int *argc, char **argv, const char *opt)
{
    for (int i = 0; i + 1 < *argc; i++)
        if (!strcmp(argv[i], opt)) {
            const char *v = argv[i + 1];
            memmove(argv + i, argv + i + 2, (size_t)(*argc - i - 1) * sizeof(*argv));
            *argc -= 2;
            return v;
        }
    return NULL;
}

static int cmd_parts(int argc, char **argv, bool json)
{
    if (argc != 1) {
        usage(stderr);
        return 1;
    }
    struct img *img;
    int rc = img_open(&img, argv[0], g_format, 0);
    if (rc < 0)
        return err(rc);
    struct guestfs_table t;
    rc = guestfs_parts_read(img, &t);
    if (rc < 0) {
        img_close(img);
        return err(rc);
    }
    if (json) {
        json_object *o = json_object_new_object(), *a = json_object_new_array();
        json_object_object_add(o, "scheme", json_object_new_string(guestfs_scheme_name(t.scheme)));
        json_object_object_add(o, "size", json_object_new_int64((int64_t)img_size(img)));
        for (size_t i = 0; i < t.count; i++) {
            const struct guestfs_part *p = &t.parts[i];
            json_object *j = json_object_new_object();
            json_object_object_add(j, "number", json_object_new_int((int)p->number));
            json_object_object_add(j, "start", json_object_new_int64((int64_t)p->start));
            json_object_object_add(j, "size", json_object_new_int64((int64_t)p->size));
            json_object_object_add(j, "type", json_object_new_string(p->type));
            json_object_object_add(j, "name", json_object_new_string(p->name));
            if (p->guid[0])
                json_object_object_add(j, "guid", json_object_new_string(p->guid));
            if (t.scheme == GUESTFS_SCHEME_MBR)
                json_object_object_add(j, "bootable", json_object_new_boolean(p->bootable));
            json_object_array_add(a, j);
        }
        json_object_object_add(o, "partitions", a);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
        json_object_put(o);
    } else {
        printf("scheme: %s\n", guestfs_scheme_name(t.scheme));
        printf("%-4s %14s %14s  %-38s %s\n", "NUM", "START", "SIZE", "TYPE", "NAME/GUID");
        for (size_t i = 0; i < t.count; i++) {
            const struct guestfs_part *p = &t.parts[i];
            printf("%-4u %14llu %14llu  %-38s %s%s%s\n", p->number, (unsigned long long)p->start,
                   (unsigned long long)p->size, p->type, p->name, p->guid[0] ? " " : "", p->guid);
        }
    }
    guestfs_table_free(&t);
    img_close(img);
    return 0;
}

static int cmd_ls(int argc, char **argv)
{
    bool longfmt = has_flag(&argc, argv, "-l");
    if (argc != 2) {
        usage(stderr);
        return 1;
    }
    struct target t;
    int rc = target_open(argv[0], false, &t);
    struct guestfs_dirent *d = NULL;
    size_t n = 0;
    if (rc == 0)
        rc = guestfs_fs_list(t.fs, argv[1], &d, &n);
    if (rc < 0) {
        int r = err(rc);
        target_close(&t);
        return r;
    }
    for (size_t i = 0; i < n; i++) {
        if (longfmt)
            printf("%06o %12llu %s%s%s\n", d[i].mode, (unsigned long long)d[i].size, d[i].name,
                   d[i].link ? " -> " : "", d[i].link ? d[i].link : "");
        else
            printf("%s\n", d[i].name);
    }
    guestfs_dirents_free(d, n);
    target_close(&t);
    return 0;
}

static int cmd_get(int argc, char **argv, bool cat)
{
    if (argc != (cat ? 2 : 3)) {
        usage(stderr);
        return 1;
    }
    struct target t;
    int rc = target_open(argv[0], false, &t);
    if (rc < 0) {
        int r = err(rc);
        target_close(&t);
        return r;
    }
    int fd = 1;
    if (!cat && strcmp(argv[2], "-") != 0) {
        fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            rc = vs_error_errno(-errno, "%s", argv[2]);
            target_close(&t);
            return err(rc);
        }
    }
    rc = guestfs_fs_read_to_fd(t.fs, argv[1], fd);
    if (fd != 1 && close(fd) < 0 && rc == 0)
        rc = vs_error_errno(-errno, "%s", argv[2]);
    target_close(&t);
    return rc < 0 ? err(rc) : 0;
}

/* Write and close: the close is what flushes the filesystem and the image. */
static int finish_write(struct target *t, int rc)
{
    int rc2 = guestfs_fs_close(t->fs);
    t->fs = NULL;
    if (rc == 0)
        rc = rc2;
    int rc3 = img_close(t->img);
    t->img = NULL;
    if (rc == 0)
        rc = rc3;
    guestfs_table_free(&t->table);
    return rc;
}

static int cmd_put(int argc, char **argv)
{
    if (argc != 3) {
        usage(stderr);
        return 1;
    }
    int fd = 0;
    mode_t mode = 0644;
    if (strcmp(argv[2], "-") != 0) {
        fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return err(vs_error_errno(-errno, "%s", argv[2]));
        struct stat st;
        if (fstat(fd, &st) == 0)
            mode = st.st_mode & 07777;
    }
    struct target t;
    int rc = target_open(argv[0], true, &t);
    if (rc == 0)
        rc = guestfs_fs_write_from_fd(t.fs, argv[1], fd, mode);
    if (fd)
        close(fd);
    if (rc < 0) {
        int r = err(rc);
        target_close(&t);
        return r;
    }
    rc = finish_write(&t, rc);
    return rc < 0 ? err(rc) : 0;
}

static int cmd_edit(int argc, char **argv)
{
    if (argc != 2) {
        usage(stderr);
        return 1;
    }
    struct target t;
    int rc = target_open(argv[0], true, &t);
    if (rc < 0) {
        int r = err(rc);
        target_close(&t);
        return r;
    }
    char tmp[] = "/tmp/vessel-edit.XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0) {
        target_close(&t);
        return err(vs_error_errno(-errno, "temporary file"));
    }
    rc = guestfs_fs_exists(t.fs, argv[1]);
    if (rc == 1)
        rc = guestfs_fs_read_to_fd(t.fs, argv[1], fd);
    close(fd);
    if (rc < 0)
        goto out;
    struct stat before;
    stat(tmp, &before);
    const char *editor = getenv("VISUAL");
    if (!editor || !*editor)
        editor = getenv("EDITOR");
    if (!editor || !*editor)
        editor = "vi";
    char *cmd = vs_asprintf("%s \"$1\"", editor);
    pid_t pid = cmd ? fork() : -1;
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, "sh", tmp, (char *)NULL);
        _exit(127);
    }
    free(cmd);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        rc = vs_error(-ECANCELED, "%s: editor '%s' failed; file not changed", argv[1], editor);
        goto out;
    }
    fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = vs_error_errno(-errno, "%s", tmp);
        goto out;
    }
    rc = guestfs_fs_write_from_fd(t.fs, argv[1], fd, 0644);
    close(fd);
out:
    unlink(tmp);
    if (rc < 0) {
        int r = err(rc);
        target_close(&t);
        return r;
    }
    rc = finish_write(&t, 0);
    return rc < 0 ? err(rc) : 0;
}

static int cmd_mkdir_rm(int argc, char **argv, bool mkdir_cmd)
{
    if (argc != 2) {
        usage(stderr);
        return 1;
    }
    struct target t;
    int rc = target_open(argv[0], true, &t);
    if (rc == 0)
        rc = mkdir_cmd ? guestfs_fs_mkdir(t.fs, argv[1], 0755) : guestfs_fs_remove(t.fs, argv[1]);
    if (rc < 0) {
        int r = err(rc);
        target_close(&t);
        return r;
    }
    rc = finish_write(&t, 0);
    return rc < 0 ? err(rc) : 0;
}

static json_object *jstr(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static int cmd_bootinfo(int argc, char **argv, bool json)
{
    const char *entry = take_option(&argc, argv, "--entry");
    if (argc != 1) {
        usage(stderr);
        return 1;
    }
    struct img *img;
    int rc = img_open(&img, argv[0], g_format, 0);
    if (rc < 0)
        return err(rc);
    struct guestfs_table t;
    struct guestfs_bootinfo bi;
    rc = guestfs_parts_read(img, &t);
    if (rc == 0) {
        rc = guestfs_bootinfo(img, &t, entry, &bi);
        guestfs_table_free(&t);
    }
    img_close(img);
    if (rc < 0)
        return err(rc);
    if (json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "config", jstr(bi.config_path));
        json_object_object_add(o, "config_partition", json_object_new_int((int)bi.config_part));
        json_object_object_add(o, "loader", jstr(guestfs_boot_kind_name(bi.kind)));
        json_object_object_add(o, "title", jstr(bi.title));
        json_object_object_add(o, "partition", json_object_new_int((int)bi.part));
        json_object_object_add(o, "kernel", jstr(bi.kernel));
        json_object_object_add(o, "initrd", jstr(bi.initrd));
        json_object_object_add(o, "cmdline", jstr(bi.cmdline));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
        json_object_put(o);
    } else {
        printf("config:    %s (partition %u, %s)\n", bi.config_path, bi.config_part,
               guestfs_boot_kind_name(bi.kind));
        printf("title:     %s\n", bi.title);
        printf("partition: %u\n", bi.part);
        printf("kernel:    %s\n", bi.kernel);
        printf("initrd:    %s\n", bi.initrd ? bi.initrd : "(none)");
        printf("cmdline:   %s\n", bi.cmdline);
    }
    guestfs_bootinfo_free(&bi);
    return 0;
}

static int cmd_inspect(int argc, char **argv, bool json)
{
    if (argc != 1) {
        usage(stderr);
        return 1;
    }
    struct img *img;
    int rc = img_open(&img, argv[0], g_format, 0);
    if (rc < 0)
        return err(rc);
    struct guestfs_table t;
    rc = guestfs_parts_read(img, &t);
    if (rc < 0) {
        img_close(img);
        return err(rc);
    }
    struct guestfs_os os;
    rc = guestfs_inspect_os(img, &t, &os);
    if (rc < 0) {
        guestfs_table_free(&t);
        img_close(img);
        return err(rc);
    }
    struct guestfs_bootinfo bi;
    int brc = guestfs_bootinfo(img, &t, NULL, &bi);
    char boot_err[512];
    snprintf(boot_err, sizeof(boot_err), "%s", brc < 0 ? vs_error_message() : "");
    if (json) {
        json_object *o = json_object_new_object(), *k = json_object_new_array();
        json_object_object_add(o, "partitions",
                               json_object_new_string(guestfs_scheme_name(t.scheme)));
        json_object_object_add(o, "root_partition", json_object_new_int((int)os.root_part));
        json_object_object_add(o, "id", jstr(os.id));
        json_object_object_add(o, "name", jstr(os.name));
        json_object_object_add(o, "version", jstr(os.version));
        for (size_t i = 0; i < os.kernel_count; i++)
            json_object_array_add(k, json_object_new_string(os.kernels[i]));
        json_object_object_add(o, "kernels", k);
        json_object_object_add(o, "kernel_partition", json_object_new_int((int)os.kernel_part));
        if (brc == 0) {
            json_object *b = json_object_new_object();
            json_object_object_add(b, "config", jstr(bi.config_path));
            json_object_object_add(b, "config_partition", json_object_new_int((int)bi.config_part));
            json_object_object_add(b, "loader", jstr(guestfs_boot_kind_name(bi.kind)));
            json_object_object_add(b, "default_title", jstr(bi.title));
            json_object_object_add(b, "partition", json_object_new_int((int)bi.part));
            json_object_object_add(b, "kernel", jstr(bi.kernel));
            json_object_object_add(b, "initrd", jstr(bi.initrd));
            json_object_object_add(b, "cmdline", jstr(bi.cmdline));
            json_object_object_add(o, "boot", b);
        } else {
            json_object_object_add(o, "boot_error", jstr(boot_err));
        }
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
        json_object_put(o);
    } else {
        printf("os:        %s (%s%s%s)\n", os.name ? os.name : "?", os.id ? os.id : "?",
               os.version ? " " : "", os.version ? os.version : "");
        printf("root:      partition %u\n", os.root_part);
        for (size_t i = 0; i < os.kernel_count; i++)
            printf("kernel:    %s (partition %u)\n", os.kernels[i], os.kernel_part);
        if (brc == 0)
            printf("boot:      %s on partition %u (%s): '%s' -> %s\n", bi.config_path,
                   bi.config_part, guestfs_boot_kind_name(bi.kind), bi.title, bi.kernel);
        else
            printf("boot:      %s\n", boot_err);
    }
    if (brc == 0)
        guestfs_bootinfo_free(&bi);
    guestfs_os_free(&os);
    guestfs_table_free(&t);
    img_close(img);
    return 0;
}

int cli_guest_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    const char *cmd = argv[1];
    int n = argc - 2;
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    if (!args)
        return 1;
    memcpy(args, argv + 2, (size_t)n * sizeof(*args));
    g_format = take_option(&n, args, "--format");
    bool json = has_flag(&n, args, "--json");
    int rc;
    if (!strcmp(cmd, "parts"))
        rc = cmd_parts(n, args, json);
    else if (!strcmp(cmd, "ls"))
        rc = cmd_ls(n, args);
    else if (!strcmp(cmd, "cat"))
        rc = cmd_get(n, args, true);
    else if (!strcmp(cmd, "get"))
        rc = cmd_get(n, args, false);
    else if (!strcmp(cmd, "put"))
        rc = cmd_put(n, args);
    else if (!strcmp(cmd, "edit"))
        rc = cmd_edit(n, args);
    else if (!strcmp(cmd, "mkdir"))
        rc = cmd_mkdir_rm(n, args, true);
    else if (!strcmp(cmd, "rm"))
        rc = cmd_mkdir_rm(n, args, false);
    else if (!strcmp(cmd, "bootinfo"))
        rc = cmd_bootinfo(n, args, json);
    else if (!strcmp(cmd, "inspect"))
        rc = cmd_inspect(n, args, json);
    else {
        fprintf(stderr, "vessel guest: unknown command '%s'\n", cmd);
        usage(stderr);
        rc = 1;
    }
    free(args);
    return rc;
}
