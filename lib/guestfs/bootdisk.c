/*
 * lib/guestfs/bootdisk.c — boot from a disk (vessel's pygrub): from a disk image to a kernel,
 * an initrd and a command line the VMM can load.
 *
 * The idea: the boot loader's work is split in two. guestfs_bootinfo() already reads the config
 * and picks the entry; here we only copy the entry's kernel and initrd out of the guest
 * filesystem into anonymous memory files (memfd) and hand their /proc/self/fd paths to the
 * VMM, which then loads them as it loads any host file. Nothing is left behind on the host, and
 * sizes are checked before anything is copied, so a hostile disk can't fill host memory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

#define BOOT_MAX_KERNEL ((size_t)256 << 20)
#define BOOT_MAX_INITRD ((size_t)2048 << 20)

/* Copy PATH of partition PART into a new memfd named WHAT. */
static int copy_out(struct img *img, const struct guestfs_table *t, unsigned part, const char *path,
                    const char *what, size_t max, int *fd_out)
{
    *fd_out = -1;
    const struct guestfs_part *p = guestfs_table_find(t, part);
    if (!p)
        return vs_error(-ENOENT, "%s: %s %s: partition %u does not exist", img_filename(img), what,
                        path, part);
    char *label = vs_asprintf("%s:%u", img_filename(img), part);
    if (!label)
        return vs_error(-ENOMEM, "out of memory");
    struct guestfs_fs *fs;
    int rc = guestfs_fs_open(img, p->start, p->size, label, false, &fs);
    free(label);
    if (rc < 0)
        return rc;
    rc = guestfs_fs_exists(fs, path);
    if (rc == 0)
        rc = vs_error(-ENOENT, "%s: %s %s not found on partition %u", img_filename(img), what, path,
                      part);
    char *data = NULL;
    size_t len = 0;
    if (rc >= 0)
        rc = guestfs_fs_read_file(fs, path, max, &data, &len);
    guestfs_fs_close(fs);
    if (rc < 0)
        return rc;
    int fd = memfd_create(what, MFD_CLOEXEC);
    if (fd < 0) {
        free(data);
        return vs_error_errno(-errno, "memfd for the %s", what);
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = vs_error_errno(n < 0 ? -errno : -EIO, "memfd for the %s", what);
            free(data);
            close(fd);
            return rc;
        }
        done += (size_t)n;
    }
    free(data);
    *fd_out = fd;
    return 0;
}

int guestfs_boot_load(const char *disk, const char *format, const char *entry,
                      const char *extra_cmdline, struct guestfs_bootload *out)
{
    memset(out, 0, sizeof(*out));
    out->kernel_fd = out->initrd_fd = -1;
    struct img *img;
    int rc = img_open(&img, disk, format, 0);
    if (rc < 0)
        return rc;
    struct guestfs_table t;
    rc = guestfs_parts_read(img, &t);
    if (rc < 0) {
        img_close(img);
        return rc;
    }
    rc = guestfs_bootinfo(img, &t, entry, &out->info);
    if (rc == -ENOENT && strstr(vs_error_message(), "no boot configuration found"))
        rc = vs_error(-ENOENT, "%s: no boot configuration found on any partition", disk);
    if (rc == 0)
        rc = copy_out(img, &t, out->info.part, out->info.kernel, "kernel", BOOT_MAX_KERNEL,
                      &out->kernel_fd);
    if (rc == 0 && out->info.initrd)
        rc = copy_out(img, &t, out->info.part, out->info.initrd, "initrd", BOOT_MAX_INITRD,
                      &out->initrd_fd);
    guestfs_table_free(&t);
    img_close(img);
    if (rc == 0) {
        const char *base = out->info.cmdline ? out->info.cmdline : "";
        bool both = *base && extra_cmdline && *extra_cmdline;
        out->cmdline =
            vs_asprintf("%s%s%s", base, both ? " " : "", extra_cmdline ? extra_cmdline : "");
        if (!out->cmdline)
            rc = vs_error(-ENOMEM, "out of memory");
    }
    if (rc < 0) {
        guestfs_bootload_free(out);
        return rc;
    }
    snprintf(out->kernel_path, sizeof(out->kernel_path), "/proc/self/fd/%d", out->kernel_fd);
    if (out->initrd_fd >= 0)
        snprintf(out->initrd_path, sizeof(out->initrd_path), "/proc/self/fd/%d", out->initrd_fd);
    return 0;
}

void guestfs_bootload_free(struct guestfs_bootload *b)
{
    if (b->kernel_fd >= 0)
        close(b->kernel_fd);
    if (b->initrd_fd >= 0)
        close(b->initrd_fd);
    free(b->cmdline);
    guestfs_bootinfo_free(&b->info);
    memset(b, 0, sizeof(*b));
    b->kernel_fd = b->initrd_fd = -1;
}
