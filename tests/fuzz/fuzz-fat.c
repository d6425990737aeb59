/*
 * tests/fuzz/fuzz-fat.c — libFuzzer target for the FAT12/16/32 layer (lib/guestfs/fat.c): the
 * input is the start of a FAT volume. It is opened read-only and walked (root, one level of
 * subdirectories, file reads), then a private copy is opened read-write and changed the ways
 * `vessel guest put|mkdir|rm` change it (new long names, a replaced file, a new directory with a
 * file in it, removals), and the result is opened and listed again.
 *
 * The one idea: reads and writes go through callbacks over memory. The volume claims up to
 * 256 MiB but only the input is backed by bytes (reads past it are zeros), and the writable copy
 * is a fixed 2 MiB window (writes past it fail like a bad disk would), so the work and memory per
 * input stay bounded whatever the boot sector claims, and both the happy and the I/O-error paths
 * of the writer are exercised.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

#define WINDOW ((size_t)2 << 20) /* the writable copy */

struct volume {
    const uint8_t *data; /* read-only input, or the writable copy */
    uint8_t *mutable_data;
    size_t size; /* bytes backed by DATA */
};

static int mem_read(void *ctx, void *buf, uint64_t off, size_t len)
{
    const struct volume *v = ctx;
    memset(buf, 0, len);
    if (off < v->size)
        memcpy(buf, v->data + off, VS_MIN(len, v->size - (size_t)off));
    return 0;
}

static int mem_write(void *ctx, const void *buf, uint64_t off, size_t len)
{
    struct volume *v = ctx;
    if (off > v->size || len > v->size - off)
        return -5; /* -EIO: past the window */
    memcpy(v->mutable_data + off, buf, len);
    return 0;
}

static void quiet(const char *msg)
{
    (void)msg;
}

/* List PATH; remember up to two names (files or directories) for the write phase. */
static void walk(struct guestfs_fat *fat, const char *path, int depth, char names[2][300],
                 int *named)
{
    struct guestfs_dirent *d;
    size_t n;
    if (guestfs_fat_list(fat, path, &d, &n) < 0)
        return;
    for (size_t i = 0; i < n && i < 8; i++) {
        char child[300];
        snprintf(child, sizeof(child), "%s/%s", strcmp(path, "/") ? path : "", d[i].name);
        if (depth == 0 && *named < 2)
            snprintf(names[(*named)++], 300, "%s", child);
        if (S_ISDIR(d[i].mode)) {
            if (depth == 0)
                walk(fat, child, 1, names, named);
        } else {
            char *data;
            size_t len;
            if (guestfs_fat_read_file(fat, child, 1 << 20, &data, &len) == 0)
                free(data);
        }
    }
    guestfs_dirents_free(d, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vs_warn_set_handler(quiet);
    /* a last byte of 0xFF: the partition is exactly the input (exercises "doesn't fit") */
    uint64_t part = size && data[size - 1] == 0xFF ? size : (uint64_t)256 << 20;
    struct volume in = {.data = data, .size = size};
    struct guestfs_fat *fat;
    char names[2][300];
    int named = 0;
    if (guestfs_fat_open(mem_read, &in, part, "fuzz", &fat) < 0)
        return 0;
    walk(fat, "/", 0, names, &named);
    (void)guestfs_fat_exists(fat, "/EFI/BOOT/BOOTX64.EFI");
    char uuid[16], label[16];
    guestfs_fat_id(fat, uuid, sizeof(uuid), label, sizeof(label));
    guestfs_fat_close(fat);

    /* the writable copy */
    struct volume rw = {.size = WINDOW};
    rw.mutable_data = calloc(1, WINDOW);
    if (!rw.mutable_data)
        return 0;
    rw.data = rw.mutable_data;
    memcpy(rw.mutable_data, data, VS_MIN(size, WINDOW));
    if (guestfs_fat_open_rw(mem_read, mem_write, &rw, part, "fuzz", &fat) == 0) {
        static uint8_t payload[5000];
        for (size_t i = 0; i < sizeof(payload); i++)
            payload[i] = (uint8_t)i;
        (void)guestfs_fat_write_file(fat, "/fuzz long name.txt", payload, 100);
        (void)guestfs_fat_write_file(fat, "/SHORT.TXT", payload, 1);
        if (named > 0)
            (void)guestfs_fat_write_file(fat, names[0], payload, 10);
        (void)guestfs_fat_mkdir(fat, "/New Directory");
        (void)guestfs_fat_write_file(fat, "/New Directory/a file with a long name.bin", payload,
                                     sizeof(payload));
        (void)guestfs_fat_write_file(fat, "/New Directory/a file with a long name 2.bin", payload,
                                     1);
        if (named > 1)
            (void)guestfs_fat_remove(fat, names[1]);
        (void)guestfs_fat_remove(fat, "/New Directory/a file with a long name.bin");
        (void)guestfs_fat_remove(fat, "/New Directory");
        (void)guestfs_fat_free_bytes(fat);
        guestfs_fat_close(fat);
        /* what was written must read back without trouble */
        if (guestfs_fat_open(mem_read, &rw, part, "fuzz", &fat) == 0) {
            named = 0;
            walk(fat, "/", 0, names, &named);
            guestfs_fat_close(fat);
        }
    }
    free(rw.mutable_data);
    return 0;
}
