/*
 * tests/fuzz/fuzz-vhd.c — libFuzzer target for the VHD driver (and, included with FUZZ_FORMAT set,
 * for VDI and VHDX): each input is opened read-only (reads, block status walk, info), for check,
 * for check-and-repair, and read-write (writes, zeroes, discard, compaction) and must never
 * crash, hang, leak or trip a sanitizer, whatever its footer, headers, tables or log say.
 *
 * The one idea: the work per input is bounded no matter what the image claims (a 2 TiB disk is
 * sampled at a fixed number of offsets, block-status walks take a fixed number of steps), so a
 * timeout is a real hang in the driver. The file lives alone in a private directory, so a parent
 * locator can only name the image itself (a loop the core refuses) or nothing.
 */
#ifndef FUZZ_FORMAT
#define FUZZ_FORMAT "vhd"
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vessel/img.h"
#include "vessel/util.h"

#define CHUNK            (64 * 1024)
#define MAX_FULL_READ    (2 * 1024 * 1024) /* read disks up to this size entirely */
#define SAMPLE_OFFSETS   48
#define MAX_STATUS_STEPS 512
#define MAX_EXTENT_READS 64

static char image_path[256];
static uint8_t *buf;
static uint8_t *pattern;

static void quiet_warning(const char *msg)
{
    (void)msg;
}

static void setup(void)
{
    static char dir_template[] = "/tmp/vessel-fuzz-" FUZZ_FORMAT "-XXXXXX";
    const char *tmp = getenv("TMPDIR");
    char template[200];
    snprintf(template, sizeof(template), "%s/vessel-fuzz-" FUZZ_FORMAT "-XXXXXX",
             tmp ? tmp : "/tmp");
    char *dir = mkdtemp(template);
    if (!dir)
        dir = mkdtemp(dir_template);
    if (!dir) {
        perror("mkdtemp");
        abort();
    }
    snprintf(image_path, sizeof(image_path), "%s/image." FUZZ_FORMAT, dir);
    buf = malloc(CHUNK);
    pattern = malloc(CHUNK);
    if (!buf || !pattern)
        abort();
    for (size_t i = 0; i < CHUNK; i++)
        pattern[i] = (uint8_t)(i * 7 + 1);
    vs_warn_set_handler(quiet_warning);
}

/* With FUZZ_WINDOWS (VHDX, whose structures sit megabytes apart), the input is cut into windows
 * placed at their file offsets in a sparse file, so a 64 KiB input still reaches every region. */
#ifdef FUZZ_WINDOWS
static const struct {
    uint64_t input, file, len;
} windows[] = FUZZ_WINDOWS;
#endif

static uint64_t image_hash;

/* A hash of the file's size and data extents (holes skipped: the VHDX layout is mostly hole). */
static uint64_t hash_file(void)
{
    int fd = open(image_path, O_RDONLY);
    if (fd < 0)
        return 0;
    uint64_t h = 1469598103934665603ull;
    off_t end = lseek(fd, 0, SEEK_END);
    h = (h ^ (uint64_t)end) * 1099511628211ull;
    off_t off = 0;
    while (off < end) {
        off_t data = lseek(fd, off, SEEK_DATA);
        if (data < 0)
            break;
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            hole = end;
        h = (h ^ (uint64_t)data) * 1099511628211ull;
        for (off = data; off < hole; off += CHUNK) {
            size_t n = hole - off < CHUNK ? (size_t)(hole - off) : CHUNK;
            if (vs_pread_full(fd, buf, n, (uint64_t)off))
                break;
            for (size_t i = 0; i < n; i++)
                h = (h ^ buf[i]) * 1099511628211ull;
        }
        off = hole;
    }
    close(fd);
    return h;
}

static int write_image(const uint8_t *data, size_t size)
{
    int fd = open(image_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    int rc = 0;
#ifdef FUZZ_WINDOWS
    for (size_t i = 0; !rc && i < sizeof(windows) / sizeof(windows[0]); i++) {
        if (windows[i].input >= size)
            break;
        size_t n = size - windows[i].input;
        if (n > windows[i].len)
            n = windows[i].len;
        rc = vs_pwrite_full(fd, data + windows[i].input, n, windows[i].file);
    }
    if (!rc && ftruncate(fd, FUZZ_FILE_SIZE) < 0)
        rc = -1;
#else
    rc = vs_pwrite_full(fd, data, size, 0);
#endif
    close(fd);
    image_hash = hash_file();
    return rc;
}

static bool file_unchanged(void)
{
    return hash_file() == image_hash;
}

/* Read [off, off+len) clipped to the disk, in CHUNK pieces. */
static void read_range(struct img *img, uint64_t off, uint64_t len)
{
    uint64_t size = img_size(img);
    if (off >= size)
        return;
    if (len > size - off)
        len = size - off;
    while (len > 0) {
        size_t n = len > CHUNK ? CHUNK : (size_t)len;
        if (img_pread(img, buf, off, n) < 0)
            return; /* a clean error is a fine answer to a broken image */
        off += n;
        len -= n;
    }
}

/* Walk the block status from 0; the contract (length > 0, within the request, contiguous) is
 * checked, and zero extents must read back as zeros. */
static void walk_status(struct img *img, bool whole_chain)
{
    uint64_t size = img_size(img), off = 0;
    int reads = 0;
    for (int step = 0; step < MAX_STATUS_STEPS && off < size; step++) {
        struct img_extent ext;
        memset(&ext, 0, sizeof(ext));
        int rc = whole_chain ? img_block_status(img, off, size - off, &ext)
                             : img_block_status_layer(img, off, size - off, &ext);
        if (rc < 0)
            return;
        if (ext.length == 0 || ext.length > size - off || ext.offset != off)
            __builtin_trap(); /* broken contract: callers would loop or overrun */
        if (reads < MAX_EXTENT_READS) {
            size_t n = ext.length > 4096 ? 4096 : (size_t)ext.length;
            if (img_pread(img, buf, off, n) == 0 && whole_chain && (ext.flags & IMG_STATUS_ZERO) &&
                !(ext.flags & IMG_STATUS_DATA) && !vs_buffer_is_zero(buf, n))
                __builtin_trap(); /* block status said zeros, a read says otherwise */
            reads++;
        }
        off += ext.length;
    }
}

static void read_disk(struct img *img)
{
    uint64_t size = img_size(img);
    if (size <= MAX_FULL_READ) {
        read_range(img, 0, size);
        return;
    }
    read_range(img, 0, 256 * 1024);
    read_range(img, size - 256 * 1024, 256 * 1024);
    for (int i = 1; i < SAMPLE_OFFSETS; i++) {
        /* spread over the disk, and unaligned so reads straddle clusters */
        uint64_t off = size / SAMPLE_OFFSETS * i + (uint64_t)i * 4099;
        read_range(img, off, 3 * 4096 + 17);
    }
}

static void inspect(struct img *img)
{
    struct json_object *info = NULL;
    if (img_info_json(img, true, &info) == 0)
        json_object_put(info);
    struct img_snapshot *snaps = NULL;
    size_t count = 0;
    if (img_snapshot_list(img, &snaps, &count) == 0)
        img_snapshot_list_free(snaps, count);
    (void)img_allocated_size(img);
    (void)img_cluster_size(img);
    (void)img_backing_name(img);
    (void)img_backing_format(img);
}

static void check(int flags, int fix)
{
    struct img *img = NULL;
    if (img_open(&img, image_path, FUZZ_FORMAT,
                 flags | IMG_OPEN_CHECK | IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        struct img_check result;
        memset(&result, 0, sizeof(result));
        (void)img_check(img, &result, fix);
        img_close(img);
    }
}

static void write_some(struct img *img)
{
    uint64_t size = img_size(img);
    if (size == 0)
        return;
    uint32_t cs = img_cluster_size(img);
    uint64_t len = size < CHUNK ? size : CHUNK;
    (void)img_pwrite(img, pattern, 0, (size_t)(len > 5000 ? 5000 : len));
    if (size > 3 * (uint64_t)CHUNK) {
        uint64_t mid = size / 2 + 511;
        (void)img_pwrite(img, pattern, mid, 3000);
        (void)img_write_zeroes(img, size / 3, CHUNK, IMG_ZERO_MAY_UNMAP);
        (void)img_write_zeroes(img, mid, 100, 0);
        (void)img_discard(img, 0, CHUNK);
    }
    (void)cs;
    (void)img_pwrite(img, pattern, size - (len > 700 ? 700 : len), (size_t)(len > 700 ? 700 : len));
    (void)img_flush(img);
    (void)img_pread(img, buf, 0, (size_t)len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (write_image(data, size) < 0)
        return 0;

    /* 1. read-only, without the backing chain */
    struct img *img = NULL;
    bool has_safe_backing = false;
    if (img_open(&img, image_path, FUZZ_FORMAT, IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        const char *b = img_backing_name(img);
        has_safe_backing = b && !strchr(b, '/') && strcmp(b, "..") != 0;
        read_disk(img);
        walk_status(img, false);
        inspect(img);
        img_close(img);
    }
    vs_error_clear();

    /* 2. read-only with the backing chain: a name can only reach this directory */
    if (has_safe_backing && img_open(&img, image_path, FUZZ_FORMAT, IMG_OPEN_NO_LOCK) == 0) {
        read_range(img, 0, 128 * 1024);
        walk_status(img, true);
        img_close(img);
    }

    /* 3. none of the read-only opens, nor a check without repair, may modify the file */
    check(0, 0);
    if (!file_unchanged())
        __builtin_trap();

    /* 4. check with repair, then read-write use, then check again */
    check(IMG_OPEN_RDWR, IMG_CHECK_FIX_LEAKS | IMG_CHECK_FIX_ERRORS);
    if (img_open(&img, image_path, FUZZ_FORMAT,
                 IMG_OPEN_RDWR | IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        write_some(img);
        walk_status(img, true);
        struct img_compact compacted;
        (void)img_compact(img, &compacted);
        read_range(img, 0, 64 * 1024);
        img_close(img);
    }
    check(0, 0);
    vs_error_clear();
    return 0;
}
