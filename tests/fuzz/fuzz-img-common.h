/*
 * tests/fuzz/fuzz-img-common.h — the harness shared by the libFuzzer targets for image formats
 * (fuzz-qcow2.c, fuzz-vmdk.c, fuzz-vhd.c, fuzz-vdi.c, fuzz-vhdx.c): each input is written to a
 * file alone in a private directory and opened the ways a user opens an untrusted image —
 * read-only (bounded reads, block-status walks, info, snapshot list), with its backing chain,
 * for check, for check-and-repair, and read-write (small writes, zeroes, flush and, per format,
 * discard, a compressed cluster, compaction) — and must never crash, hang, leak or trip a
 * sanitizer, whatever its headers, tables or descriptors say.
 *
 * The one idea: the work per input is bounded no matter what the image claims (a 2^63 byte disk
 * is sampled at a fixed number of offsets, block-status walks take a fixed number of steps), so a
 * timeout is a real hang in the library, not in the harness. A target only fills in a
 * struct fuzz_img_target: its format, its bounds, and which extra operations it exercises. The
 * header holds static functions because the Makefile builds each fuzz-*.c as its own program.
 */
#ifndef VESSEL_FUZZ_IMG_COMMON_H
#define VESSEL_FUZZ_IMG_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vessel/img.h"
#include "vessel/util.h"

#define FUZZ_IMG_CHUNK (64 * 1024)

/* How much work one input may cause, whatever size the image claims. */
struct fuzz_img_limits {
    uint64_t max_full_read; /* disks up to this size are read entirely */
    uint64_t edge_read;     /* larger ones: this much at the start and at the end... */
    int sample_offsets;     /* ...and this many samples spread over the disk */
    int max_status_steps;   /* block-status calls per walk */
    int max_extent_reads;   /* extents of a walk read back to check their zero flag */
};

#define FUZZ_IMG_LIMITS_DEFAULT                                                                    \
    {                                                                                              \
        .max_full_read = 2 * 1024 * 1024, .edge_read = 256 * 1024, .sample_offsets = 48,           \
        .max_status_steps = 512, .max_extent_reads = 64,                                           \
    }

/* A piece of the input placed at a file offset: formats whose structures lie megabytes apart
 * (VHDX) are fuzzed through a sparse file, so a 64 KiB input still reaches every region. */
struct fuzz_img_window {
    uint64_t input, file, len;
};

struct fuzz_img_target {
    const char *format; /* driver name, also the image file's extension */
    struct fuzz_img_limits limits;
    const struct fuzz_img_window *windows; /* NULL: the input is the file, byte for byte */
    size_t window_count;
    uint64_t file_size;           /* with windows: the sparse file's size */
    bool probe_with_backing;      /* open with the backing chain probing the format (VMDK) */
    bool rdwr_only_without_paths; /* inputs with a '/' anywhere are never opened read-write
                                   * (VMDK descriptors name extent files) */
    uint64_t zero_align;          /* align the zeroes written at a third of the disk (0: none) */
    bool discard;                 /* discard the first chunk */
    bool compressed_write;        /* write one compressed cluster near the end */
    bool tail_write;              /* write the last 700 bytes */
    bool compact;                 /* compact after the writes, then walk and read again */
};

static char fuzz_img_path[256];
static char fuzz_img_dir[220];
static uint8_t *fuzz_img_buf;
static uint8_t *fuzz_img_pattern;
static uint64_t fuzz_img_hash;

static void fuzz_img_quiet_warning(const char *msg)
{
    (void)msg;
}

static void fuzz_img_cleanup(void)
{
    unlink(fuzz_img_path);
    rmdir(fuzz_img_dir);
}

static void fuzz_img_setup(const struct fuzz_img_target *t)
{
    const char *tmp = getenv("TMPDIR");
    char template[200];
    snprintf(template, sizeof(template), "%s/vessel-fuzz-%s-XXXXXX", tmp ? tmp : "/tmp", t->format);
    char *dir = mkdtemp(template);
    if (!dir) {
        snprintf(template, sizeof(template), "/tmp/vessel-fuzz-%s-XXXXXX", t->format);
        dir = mkdtemp(template);
    }
    if (!dir) {
        perror("mkdtemp");
        abort();
    }
    snprintf(fuzz_img_dir, sizeof(fuzz_img_dir), "%s", dir);
    snprintf(fuzz_img_path, sizeof(fuzz_img_path), "%s/image.%s", dir, t->format);
    atexit(fuzz_img_cleanup);
    fuzz_img_buf = malloc(FUZZ_IMG_CHUNK);
    fuzz_img_pattern = malloc(FUZZ_IMG_CHUNK);
    if (!fuzz_img_buf || !fuzz_img_pattern)
        abort();
    for (size_t i = 0; i < FUZZ_IMG_CHUNK; i++)
        fuzz_img_pattern[i] = (uint8_t)(i * 7 + 1);
    vs_warn_set_handler(fuzz_img_quiet_warning);
}

/* A hash of the file's size and data extents (holes skipped: a windowed layout is mostly hole). */
static uint64_t fuzz_img_hash_file(void)
{
    int fd = open(fuzz_img_path, O_RDONLY);
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
        for (off = data; off < hole; off += FUZZ_IMG_CHUNK) {
            size_t n = hole - off < FUZZ_IMG_CHUNK ? (size_t)(hole - off) : FUZZ_IMG_CHUNK;
            if (vs_pread_full(fd, fuzz_img_buf, n, (uint64_t)off))
                break;
            for (size_t i = 0; i < n; i++)
                h = (h ^ fuzz_img_buf[i]) * 1099511628211ull;
        }
        off = hole;
    }
    close(fd);
    return h;
}

static int fuzz_img_write(const struct fuzz_img_target *t, const uint8_t *data, size_t size)
{
    int fd = open(fuzz_img_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    int rc = 0;
    if (!t->windows) {
        rc = vs_pwrite_full(fd, data, size, 0);
    } else {
        for (size_t i = 0; !rc && i < t->window_count && t->windows[i].input < size; i++) {
            size_t n = size - t->windows[i].input;
            if (n > t->windows[i].len)
                n = t->windows[i].len;
            rc = vs_pwrite_full(fd, data + t->windows[i].input, n, t->windows[i].file);
        }
        if (!rc && ftruncate(fd, (off_t)t->file_size) < 0)
            rc = -1;
        fuzz_img_hash = fuzz_img_hash_file();
    }
    close(fd);
    return rc;
}

/* The file is byte for byte what fuzz_img_write left (for windows: same size, extents, data). */
static bool fuzz_img_unchanged(const struct fuzz_img_target *t, const uint8_t *data, size_t size)
{
    if (t->windows)
        return fuzz_img_hash_file() == fuzz_img_hash;
    int fd = open(fuzz_img_path, O_RDONLY);
    if (fd < 0)
        return false;
    bool same = lseek(fd, 0, SEEK_END) == (off_t)size;
    for (size_t off = 0; same && off < size; off += FUZZ_IMG_CHUNK) {
        size_t n = size - off < FUZZ_IMG_CHUNK ? size - off : FUZZ_IMG_CHUNK;
        same = vs_pread_full(fd, fuzz_img_buf, n, off) == 0 &&
               memcmp(fuzz_img_buf, data + off, n) == 0;
    }
    close(fd);
    return same;
}

/* Read [off, off+len) clipped to the disk, in chunks. */
static void fuzz_img_read_range(struct img *img, uint64_t off, uint64_t len)
{
    uint64_t size = img_size(img);
    if (off >= size)
        return;
    if (len > size - off)
        len = size - off;
    while (len > 0) {
        size_t n = len > FUZZ_IMG_CHUNK ? FUZZ_IMG_CHUNK : (size_t)len;
        if (img_pread(img, fuzz_img_buf, off, n) < 0)
            return; /* a clean error is a fine answer to a broken image */
        off += n;
        len -= n;
    }
}

/* Walk the block status from 0; the contract (length > 0, within the request, contiguous) is
 * checked, and zero extents must read back as zeros. */
static void fuzz_img_walk_status(const struct fuzz_img_target *t, struct img *img, bool whole_chain)
{
    uint64_t size = img_size(img), off = 0;
    int reads = 0;
    for (int step = 0; step < t->limits.max_status_steps && off < size; step++) {
        struct img_extent ext;
        memset(&ext, 0, sizeof(ext));
        int rc = whole_chain ? img_block_status(img, off, size - off, &ext)
                             : img_block_status_layer(img, off, size - off, &ext);
        if (rc < 0)
            return;
        if (ext.length == 0 || ext.length > size - off || ext.offset != off)
            __builtin_trap(); /* broken contract: callers would loop or overrun */
        if (reads < t->limits.max_extent_reads) {
            size_t n = ext.length > 4096 ? 4096 : (size_t)ext.length;
            if (img_pread(img, fuzz_img_buf, off, n) == 0 && whole_chain &&
                (ext.flags & IMG_STATUS_ZERO) && !(ext.flags & IMG_STATUS_DATA) &&
                !vs_buffer_is_zero(fuzz_img_buf, n))
                __builtin_trap(); /* block status said zeros, a read says otherwise */
            reads++;
        }
        off += ext.length;
    }
}

static void fuzz_img_read_disk(const struct fuzz_img_target *t, struct img *img)
{
    uint64_t size = img_size(img), edge = t->limits.edge_read;
    int samples = t->limits.sample_offsets;
    if (size <= t->limits.max_full_read) {
        fuzz_img_read_range(img, 0, size);
        return;
    }
    fuzz_img_read_range(img, 0, edge);
    fuzz_img_read_range(img, size - edge, edge);
    for (int i = 1; i < samples; i++) {
        /* spread over the disk, and unaligned so reads straddle clusters */
        uint64_t off = size / (uint64_t)samples * (uint64_t)i + (uint64_t)i * 4099;
        fuzz_img_read_range(img, off, 3 * 4096 + 17);
    }
}

static void fuzz_img_inspect(struct img *img)
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

static void fuzz_img_check(const struct fuzz_img_target *t, int flags, int fix)
{
    struct img *img = NULL;
    if (img_open(&img, fuzz_img_path, t->format,
                 flags | IMG_OPEN_CHECK | IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        struct img_check result;
        memset(&result, 0, sizeof(result));
        (void)img_check(img, &result, fix);
        img_close(img);
    }
}

static void fuzz_img_write_some(const struct fuzz_img_target *t, struct img *img)
{
    uint64_t size = img_size(img);
    if (size == 0)
        return;
    uint64_t len = size < FUZZ_IMG_CHUNK ? size : FUZZ_IMG_CHUNK;
    (void)img_pwrite(img, fuzz_img_pattern, 0, (size_t)(len > 5000 ? 5000 : len));
    if (size > 3 * (uint64_t)FUZZ_IMG_CHUNK) {
        uint64_t mid = size / 2 + 511;
        (void)img_pwrite(img, fuzz_img_pattern, mid, 3000);
        uint64_t align = t->zero_align ? t->zero_align : 1;
        (void)img_write_zeroes(img, size / 3 / align * align, FUZZ_IMG_CHUNK, IMG_ZERO_MAY_UNMAP);
        (void)img_write_zeroes(img, mid, 100, 0);
        if (t->discard)
            (void)img_discard(img, 0, FUZZ_IMG_CHUNK);
    }
    uint32_t cs = img_cluster_size(img);
    if (t->compressed_write && cs && cs <= FUZZ_IMG_CHUNK && size >= cs)
        (void)img_pwrite_compressed(img, fuzz_img_pattern, (size - cs) / cs * cs, cs);
    if (t->tail_write) {
        size_t tail = (size_t)(len > 700 ? 700 : len);
        (void)img_pwrite(img, fuzz_img_pattern, size - tail, tail);
    }
    (void)img_flush(img);
    (void)img_pread(img, fuzz_img_buf, 0, (size_t)len);
}

/* The whole sequence for one input; a target's LLVMFuzzerTestOneInput only calls this. */
static int fuzz_img_run(const struct fuzz_img_target *t, const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        fuzz_img_setup(t);
        ready = true;
    }
    if (fuzz_img_write(t, data, size) < 0)
        return 0;

    /* 1. read-only, without the backing chain */
    struct img *img = NULL;
    bool has_safe_backing = false;
    if (img_open(&img, fuzz_img_path, t->format, IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        const char *b = img_backing_name(img);
        has_safe_backing = b && !strchr(b, '/') && strcmp(b, "..") != 0;
        fuzz_img_read_disk(t, img);
        fuzz_img_walk_status(t, img, false);
        fuzz_img_inspect(img);
        img_close(img);
    }
    vs_error_clear();

    /* 2. read-only with the backing chain: a name can only reach this directory (itself: a
     * loop the core refuses, or nothing) */
    if (has_safe_backing && img_open(&img, fuzz_img_path, t->probe_with_backing ? NULL : t->format,
                                     IMG_OPEN_NO_LOCK) == 0) {
        fuzz_img_read_range(img, 0, 128 * 1024);
        fuzz_img_walk_status(t, img, true);
        img_close(img);
    }

    /* 3. none of the read-only opens, nor a check without repair, may modify the file */
    fuzz_img_check(t, 0, 0);
    if (!fuzz_img_unchanged(t, data, size))
        __builtin_trap();

    /* 4. check with repair, then read-write use, then check again */
    if (!t->rdwr_only_without_paths || !size || !memchr(data, '/', size)) {
        fuzz_img_check(t, IMG_OPEN_RDWR, IMG_CHECK_FIX_LEAKS | IMG_CHECK_FIX_ERRORS);
        if (img_open(&img, fuzz_img_path, t->format,
                     IMG_OPEN_RDWR | IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
            fuzz_img_write_some(t, img);
            fuzz_img_walk_status(t, img, true);
            if (t->compact) {
                struct img_compact compacted;
                (void)img_compact(img, &compacted);
                fuzz_img_walk_status(t, img, true);
                fuzz_img_read_range(img, 0, 64 * 1024);
            }
            img_close(img);
        }
        fuzz_img_check(t, 0, 0);
    }
    vs_error_clear();
    return 0;
}

#endif
