/*
 * tests/fuzz/fuzz-vmdk.c — libFuzzer target for the VMDK driver: every input is written to
 * image.vmdk in a private directory and opened the ways a user opens an untrusted disk —
 * read-only (bounded reads, a block-status walk, info), for check, for check-and-repair, and
 * read-write (small writes, zeroes, a compressed grain, flush, compaction) — and must never crash,
 * hang, leak or trip a sanitizer, whatever the header, footer or descriptor says.
 *
 * The one idea: the work per input is bounded no matter what the image claims (a 2 TiB disk is
 * sampled at a fixed number of offsets, status walks take a fixed number of steps), so a timeout
 * is a real hang in the library. Descriptors may name extent files: relative names can only reach
 * the private directory (the image itself, or nothing), and an input naming any path with '/' is
 * never opened read-write, so the fuzzer cannot write outside its directory.
 */
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
#define MAX_FULL_READ    (1024 * 1024)
#define SAMPLE_OFFSETS   32
#define MAX_STATUS_STEPS 256
#define MAX_EXTENT_READS 32

static char image_path[256];
static uint8_t *buf;
static uint8_t *pattern;

static void quiet_warning(const char *msg)
{
    (void)msg;
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    char template[200];
    snprintf(template, sizeof(template), "%s/vessel-fuzz-vmdk-XXXXXX", tmp ? tmp : "/tmp");
    char *dir = mkdtemp(template);
    if (!dir) {
        perror("mkdtemp");
        abort();
    }
    snprintf(image_path, sizeof(image_path), "%s/image.vmdk", dir);
    buf = malloc(CHUNK);
    pattern = malloc(CHUNK);
    if (!buf || !pattern)
        abort();
    for (size_t i = 0; i < CHUNK; i++)
        pattern[i] = (uint8_t)(i * 7 + 1);
    vs_warn_set_handler(quiet_warning);
}

static int write_image(const uint8_t *data, size_t size)
{
    int fd = open(image_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    int rc = vs_pwrite_full(fd, data, size, 0);
    close(fd);
    return rc;
}

static bool file_unchanged(const uint8_t *data, size_t size)
{
    int fd = open(image_path, O_RDONLY);
    if (fd < 0)
        return false;
    bool same = lseek(fd, 0, SEEK_END) == (off_t)size;
    for (size_t off = 0; same && off < size; off += CHUNK) {
        size_t n = size - off < CHUNK ? size - off : CHUNK;
        same = vs_pread_full(fd, buf, n, off) == 0 && memcmp(buf, data + off, n) == 0;
    }
    close(fd);
    return same;
}

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
            return;
        off += n;
        len -= n;
    }
}

/* The block-status contract: length > 0, within the request, contiguous; zeros read as zeros. */
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
            __builtin_trap();
        if (reads < MAX_EXTENT_READS) {
            size_t n = ext.length > 4096 ? 4096 : (size_t)ext.length;
            if (img_pread(img, buf, off, n) == 0 && whole_chain && (ext.flags & IMG_STATUS_ZERO) &&
                !(ext.flags & IMG_STATUS_DATA) && !vs_buffer_is_zero(buf, n))
                __builtin_trap();
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
    read_range(img, 0, 128 * 1024);
    read_range(img, size - 128 * 1024, 128 * 1024);
    for (int i = 1; i < SAMPLE_OFFSETS; i++)
        read_range(img, size / SAMPLE_OFFSETS * i + (uint64_t)i * 4099, 3 * 4096 + 17);
}

static void inspect(struct img *img)
{
    struct json_object *info = NULL;
    if (img_info_json(img, true, &info) == 0)
        json_object_put(info);
    (void)img_allocated_size(img);
    (void)img_cluster_size(img);
}

static void check(int flags, int fix)
{
    struct img *img = NULL;
    if (img_open(&img, image_path, "vmdk",
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
    uint64_t len = size < CHUNK ? size : CHUNK;
    (void)img_pwrite(img, pattern, 0, (size_t)(len > 5000 ? 5000 : len));
    if (size > 3 * (uint64_t)CHUNK) {
        uint64_t mid = size / 2 + 511;
        (void)img_pwrite(img, pattern, mid, 3000);
        (void)img_write_zeroes(img, size / 3 / CHUNK * CHUNK, CHUNK, IMG_ZERO_MAY_UNMAP);
        (void)img_write_zeroes(img, mid, 100, 0);
    }
    uint32_t cs = img_cluster_size(img);
    if (cs && cs <= CHUNK && size >= cs)
        (void)img_pwrite_compressed(img, pattern, (size - cs) / cs * cs, cs);
    (void)img_flush(img);
    (void)img_pread(img, buf, 0, (size_t)len);
    struct img_compact res;
    (void)img_compact(img, &res);
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
    bool any_path = memchr(data, '/', size) != NULL;

    /* 1. read-only, without the parent */
    struct img *img = NULL;
    bool safe_parent = false;
    if (img_open(&img, image_path, "vmdk", IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        const char *b = img_backing_name(img);
        safe_parent = b && !strchr(b, '/');
        read_disk(img);
        walk_status(img, false);
        inspect(img);
        img_close(img);
    }
    vs_error_clear();

    /* 2. with the parent: a name can only reach this directory (itself: a loop) */
    if (safe_parent && img_open(&img, image_path, NULL, IMG_OPEN_NO_LOCK) == 0) {
        read_range(img, 0, 128 * 1024);
        walk_status(img, true);
        img_close(img);
    }

    /* 3. read-only opens and a check without repair never modify the file */
    check(0, 0);
    if (!file_unchanged(data, size))
        __builtin_trap();

    /* 4. repair, read-write use, check again — only for inputs that name no paths */
    if (!any_path) {
        check(IMG_OPEN_RDWR, IMG_CHECK_FIX_LEAKS | IMG_CHECK_FIX_ERRORS);
        if (img_open(&img, image_path, "vmdk",
                     IMG_OPEN_RDWR | IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
            write_some(img);
            walk_status(img, true);
            img_close(img);
        }
        check(0, 0);
    }
    vs_error_clear();
    return 0;
}
