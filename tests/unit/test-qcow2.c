/*
 * tests/unit/test-qcow2.c — the qcow2 driver: round trips over cluster sizes, compat levels and
 * refcount widths; compression (zlib, zstd); snapshots; discard and zeroing; resize; backing
 * files; check and repair; hostile headers; concurrent writers.
 *
 * The idea: every image a test writes is also run through our own check (no corruptions, no
 * leaks) and, when qemu-img is installed, through `qemu-img check` — the reference
 * implementation is the oracle for "valid qcow2".
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "img/driver.h"
#include "vessel/img.h"

/* ---- helpers ---- */

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
}

static int create_qcow2(const char *path, uint64_t size, const char *opts_text, const char *backing)
{
    struct vs_opts opts = {0};
    if (opts_text && vs_opts_parse(&opts, opts_text))
        return -EINVAL;
    struct img_create_params p = {.filename = path,
                                  .format = "qcow2",
                                  .size = size,
                                  .size_given = size != 0,
                                  .backing_file = backing,
                                  .opts = &opts,
                                  .quiet = true};
    int rc = img_create(&p);
    vs_opts_free(&opts);
    return rc;
}

static bool have_qemu_img(void)
{
    return access("/usr/bin/qemu-img", X_OK) == 0;
}

/* Our check and qemu's: no corruption, no leak. */
static bool image_is_clean(const char *path)
{
    struct img *img;
    if (img_open(&img, path, "qcow2", IMG_OPEN_CHECK | IMG_OPEN_NO_BACKING)) {
        fprintf(stderr, "  open for check: %s\n", vs_error_message());
        return false;
    }
    struct img_check r = {0};
    int rc = img_check(img, &r, 0);
    img_close(img);
    if (rc || r.corruptions || r.leaks || r.check_errors) {
        fprintf(stderr, "  check %s: rc=%d corruptions=%llu leaks=%llu\n", path, rc,
                (unsigned long long)r.corruptions, (unsigned long long)r.leaks);
        return false;
    }
    if (have_qemu_img()) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", path);
        if (system(cmd) != 0) {
            snprintf(cmd, sizeof(cmd), "qemu-img check '%s' 1>&2", path);
            if (system(cmd)) {
            }
            return false;
        }
    }
    return true;
}

static bool qemu_compare_raw(const char *qcow2, const char *raw)
{
    if (!have_qemu_img())
        return true;
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f qcow2 -F raw '%s' '%s' 2>&1", qcow2, raw);
    return system(cmd) == 0;
}

static int write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, buf, len);
    close(fd);
    return n == (ssize_t)len ? 0 : -EIO;
}

static void patch(const char *path, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, bytes, len, (off_t)off) == (ssize_t)len);
    close(fd);
}

static void patch_be32(const char *path, uint64_t off, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    patch(path, off, b, 4);
}

static void patch_be64(const char *path, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
    patch(path, off, b, 8);
}

static uint64_t read_be64(const char *path, uint64_t off)
{
    uint8_t b[8] = {0};
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        if (pread(fd, b, 8, (off_t)off) != 8)
            memset(b, 0, 8);
        close(fd);
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | b[i];
    return v;
}

/* A mixed workload against IMG mirrored into REF. */
static void workload(struct img *img, uint8_t *ref, uint64_t size, int rounds, uint64_t seed)
{
    uint8_t *buf = malloc(3 << 20);
    for (int i = 0; i < rounds; i++) {
        uint64_t off = rnd() % size;
        uint64_t want = (rnd() % 3 == 0 ? rnd() % (3 << 20) : rnd() % 70000) + 1;
        uint64_t len = VS_MIN(want, size - off);
        int op = (int)(rnd() % 10);
        if (op < 6) {
            fill(buf, len, seed + (uint64_t)i);
            CHECK_OK(img_pwrite(img, buf, off, len));
            memcpy(ref + off, buf, len);
        } else if (op < 8) {
            CHECK_OK(img_write_zeroes(img, off, len, op == 7 ? IMG_ZERO_MAY_UNMAP : 0));
            memset(ref + off, 0, len);
        } else {
            CHECK_OK(img_pread(img, buf, off, len));
            CHECK(memcmp(buf, ref + off, len) == 0);
        }
    }
    free(buf);
}

static bool image_equals(struct img *img, const uint8_t *ref, uint64_t size)
{
    uint8_t *buf = malloc(size);
    bool ok = img_pread(img, buf, 0, size) == 0 && memcmp(buf, ref, size) == 0;
    free(buf);
    return ok;
}

/* ---- round trips ---- */

static void round_trip(const char *opts, uint64_t size)
{
    const char *path = test_path("rt.qcow2");
    CHECK_OK(create_qcow2(path, size, opts, NULL));
    uint8_t *ref = calloc(1, size);
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    CHECK(img_size(img) == size);
    workload(img, ref, size, 60, size);
    CHECK(image_equals(img, ref, size));
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, NULL, 0)); /* probed */
    CHECK(strcmp(img_format(img), "qcow2") == 0);
    CHECK(image_equals(img, ref, size));
    CHECK_OK(img_close(img));
    if (!image_is_clean(path)) {
        fprintf(stderr, "  options: %s\n", opts);
        CHECK(!"image is clean");
    }
    const char *raw = test_path("rt.raw");
    CHECK_OK(write_file(raw, ref, size));
    CHECK(qemu_compare_raw(path, raw));
    free(ref);
}

TEST(round_trip_cluster_sizes_and_compat)
{
    const char *cs[] = {"512", "4k", "64k", "2M"};
    const char *compat[] = {"0.10", "1.1"};
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 2; j++) {
            char opts[128];
            snprintf(opts, sizeof(opts), "cluster_size=%s,compat=%s", cs[i], compat[j]);
            round_trip(opts, (12 << 20) + 4608);
        }
    }
}

TEST(round_trip_refcount_widths)
{
    const char *bits[] = {"1", "2", "8", "16", "32", "64"};
    for (int i = 0; i < 6; i++) {
        char opts[128];
        snprintf(opts, sizeof(opts), "refcount_bits=%s,cluster_size=4k", bits[i]);
        round_trip(opts, 8 << 20);
    }
    /* compat=0.10 has 16-bit refcounts only */
    CHECK(create_qcow2(test_path("x.qcow2"), 1 << 20, "compat=0.10,refcount_bits=8", NULL) ==
          -EINVAL);
    CHECK(strstr(vs_error_message(), "refcount_bits") != NULL);
}

TEST(round_trip_extended_l2_and_lazy_refcounts)
{
    round_trip("extended_l2=on", 8 << 20);
    round_trip("extended_l2=on,cluster_size=16k", 8 << 20);
    round_trip("lazy_refcounts=on", 8 << 20);
}

TEST(create_options_are_validated)
{
    const char *p = test_path("bad.qcow2");
    CHECK(create_qcow2(p, 1 << 20, "cluster_size=1000", NULL) == -EINVAL);
    CHECK(strstr(vs_error_message(), "cluster_size") != NULL);
    CHECK(create_qcow2(p, 1 << 20, "cluster_size=4M", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "compat=0.9", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "compat=0.10,lazy_refcounts=on", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "compat=0.10,compression_type=zstd", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "extended_l2=on,cluster_size=4k", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "preallocation=sometimes", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "refcount_bits=3", NULL) == -EINVAL);
    CHECK(create_qcow2(p, 1 << 20, "colour=blue", NULL) == -EINVAL);
    CHECK(strstr(vs_error_message(), "colour") != NULL);
}

TEST(preallocation_modes)
{
    const char *modes[] = {"metadata", "falloc", "full"};
    for (int i = 0; i < 3; i++) {
        const char *p = test_path("pre.qcow2");
        char opts[64];
        snprintf(opts, sizeof(opts), "preallocation=%s", modes[i]);
        CHECK_OK(create_qcow2(p, (5 << 20) + 512, opts, NULL));
        CHECK(image_is_clean(p));
        struct img *img;
        CHECK_OK(img_open(&img, p, "qcow2", IMG_OPEN_RDWR));
        struct img_extent ext;
        CHECK_OK(img_block_status(img, 0, img_size(img), &ext));
        CHECK((ext.flags & IMG_STATUS_DATA) && ext.length == img_size(img));
        uint8_t buf[4096], zero[4096] = {0};
        CHECK_OK(img_pread(img, buf, 5 << 20, 512));
        CHECK(memcmp(buf, zero, 512) == 0);
        if (i) {
            struct stat st;
            CHECK(stat(p, &st) == 0);
            CHECK((uint64_t)st.st_blocks * 512 >= 5 << 20);
        }
        CHECK_OK(img_close(img));
    }
}

/* ---- compression ---- */

static void compressed_round_trip(const char *opts)
{
    const char *path = test_path("c.qcow2");
    const uint64_t size = (4 << 20) + 1024; /* last cluster partial, whole sectors for qemu */
    CHECK_OK(create_qcow2(path, size, opts, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint32_t cs = img_cluster_size(img);
    uint8_t *ref = calloc(1, size);
    /* compressible text, incompressible noise, and the partial last cluster */
    for (uint64_t i = 0; i < (2 << 20); i++)
        ref[i] = "compressible text "[i % 18];
    fill(ref + (2 << 20), 1 << 20, 7);
    memset(ref + (3 << 20), 0x61, size - (3 << 20));
    CHECK_OK(img_pwrite_compressed(img, ref, 0, size));
    CHECK(image_equals(img, ref, size));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 0, cs, &ext));
    CHECK(ext.flags & IMG_STATUS_COMPRESSED);
    if (cs <= (1 << 20)) {
        CHECK_OK(img_block_status(img, 2 << 20, cs, &ext));
        CHECK(!(ext.flags & IMG_STATUS_COMPRESSED)); /* noise is stored plainly */
    }
    /* unaligned compressed write is refused; overwriting a compressed cluster works */
    CHECK(img_pwrite_compressed(img, ref, 1, cs) == -EINVAL);
    uint8_t patchbuf[3000];
    fill(patchbuf, sizeof(patchbuf), 99);
    CHECK_OK(img_pwrite(img, patchbuf, 1000, sizeof(patchbuf)));
    memcpy(ref + 1000, patchbuf, sizeof(patchbuf));
    CHECK_OK(img_pwrite_compressed(img, ref + cs, cs, cs)); /* recompress over compressed */
    CHECK(image_equals(img, ref, size));
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(path));
    CHECK_OK(img_open(&img, path, "qcow2", 0));
    CHECK(image_equals(img, ref, size));
    struct json_object *info;
    CHECK_OK(img_info_json(img, false, &info));
    const char *js = json_object_to_json_string(info);
    CHECK(strstr(js, strstr(opts, "zstd") ? "\"zstd\"" : "\"zlib\"") != NULL);
    json_object_put(info);
    CHECK_OK(img_close(img));
    const char *raw = test_path("c.raw");
    CHECK_OK(write_file(raw, ref, size));
    CHECK(qemu_compare_raw(path, raw));
    free(ref);
}

TEST(compressed_zlib_and_zstd)
{
    compressed_round_trip("compression_type=zlib");
    compressed_round_trip("compression_type=zstd");
    compressed_round_trip("compression_type=zlib,cluster_size=512");
    compressed_round_trip("compression_type=zstd,cluster_size=2M");
    compressed_round_trip("compat=0.10");
}

/* ---- snapshots ---- */

TEST(snapshots_create_apply_delete)
{
    const char *opts[] = {"compat=1.1", "compat=0.10", "refcount_bits=2,cluster_size=4k",
                          "extended_l2=on"};
    for (int o = 0; o < 4; o++) {
        const char *path = test_path("s.qcow2");
        const uint64_t size = 6 << 20;
        CHECK_OK(create_qcow2(path, size, opts[o], NULL));
        struct img *img;
        CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
        uint8_t *a = calloc(1, size), *b;
        workload(img, a, size, 20, 1);
        CHECK_OK(img_snapshot_create(img, "first"));
        CHECK(img_snapshot_create(img, "first") == -EEXIST);
        b = malloc(size);
        memcpy(b, a, size);
        workload(img, b, size, 20, 2);
        CHECK_OK(img_discard(img, 1 << 20, 1 << 20));
        CHECK_OK(img_pread(img, b + (1 << 20), 1 << 20, 1 << 20)); /* discard: either result */
        CHECK_OK(img_snapshot_create(img, "second"));
        struct img_snapshot *list;
        size_t n;
        CHECK_OK(img_snapshot_list(img, &list, &n));
        CHECK(n == 2 && !strcmp(list[0].name, "first") && !strcmp(list[1].id, "2"));
        CHECK(n == 2 && list[1].disk_size == size);
        img_snapshot_list_free(list, n);
        CHECK(image_equals(img, b, size));
        CHECK_OK(img_snapshot_apply(img, "first"));
        CHECK(image_equals(img, a, size));
        workload(img, a, size, 10, 3); /* writes after apply don't touch the snapshots */
        CHECK_OK(img_snapshot_apply(img, "2"));
        CHECK(image_equals(img, b, size));
        CHECK_OK(img_snapshot_delete(img, "first"));
        CHECK(img_snapshot_apply(img, "first") == -ENOENT);
        CHECK(image_equals(img, b, size));
        CHECK_OK(img_close(img));
        CHECK(image_is_clean(path));
        CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
        CHECK(image_equals(img, b, size));
        CHECK_OK(img_snapshot_delete(img, "second"));
        CHECK_OK(img_snapshot_list(img, &list, &n));
        CHECK(n == 0);
        img_snapshot_list_free(list, n);
        CHECK(image_equals(img, b, size));
        CHECK_OK(img_close(img));
        CHECK(image_is_clean(path));
        free(a);
        free(b);
    }
}

TEST(snapshot_refcount_overflow_is_refused_cleanly)
{
    const char *path = test_path("o.qcow2");
    CHECK_OK(create_qcow2(path, 1 << 20, "refcount_bits=1", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint8_t buf[4096];
    fill(buf, sizeof(buf), 5);
    CHECK_OK(img_pwrite(img, buf, 0, sizeof(buf)));
    CHECK(img_snapshot_create(img, "s") == -EINVAL);
    CHECK(strstr(vs_error_message(), "refcount") != NULL);
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(path));
}

/* ---- discard, zeroes, block status ---- */

TEST(discard_and_write_zeroes)
{
    const char *compat[] = {"compat=1.1", "compat=0.10"};
    for (int c = 0; c < 2; c++) {
        const char *base = test_path("base.qcow2");
        const char *top = test_path("top.qcow2");
        const uint64_t size = 4 << 20;
        CHECK_OK(create_qcow2(base, size, compat[c], NULL));
        struct img *img;
        CHECK_OK(img_open(&img, base, "qcow2", IMG_OPEN_RDWR));
        uint8_t *data = malloc(size);
        memset(data, 0xbb, size);
        CHECK_OK(img_pwrite(img, data, 0, size));
        CHECK_OK(img_close(img));
        CHECK_OK(create_qcow2(top, 0, compat[c], "base.qcow2"));
        CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
        CHECK(img_size(img) == size);
        uint8_t *ref = malloc(size);
        memset(ref, 0xbb, size);
        fill(data, size, 3);
        CHECK_OK(img_pwrite(img, data, 0, 2 << 20));
        memcpy(ref, data, 2 << 20);
        /* zeroes must hide the backing file, aligned or not, with or without unmap */
        CHECK_OK(img_write_zeroes(img, 100000, 300000, 0));
        memset(ref + 100000, 0, 300000);
        CHECK_OK(img_write_zeroes(img, (2 << 20) + 5, 1 << 20, IMG_ZERO_MAY_UNMAP));
        memset(ref + (2 << 20) + 5, 0, 1 << 20);
        CHECK(image_equals(img, ref, size));
        struct img_extent ext;
        CHECK_OK(img_block_status(img, 1 << 18, 65536, &ext));
        CHECK(c == 1 || (ext.flags & IMG_STATUS_ZERO)); /* v2 stores real zeros */
        /* discard whole clusters: reads as zeros or backing */
        CHECK_OK(img_discard(img, 1 << 20, 1 << 20));
        uint8_t *back = malloc(1 << 20);
        CHECK_OK(img_pread(img, back, 1 << 20, 1 << 20));
        for (int i = 0; i < (1 << 20); i += 4096)
            CHECK(back[i] == 0 || back[i] == 0xbb);
        memcpy(ref + (1 << 20), back, 1 << 20);
        /* a partial-cluster discard changes nothing */
        CHECK_OK(img_discard(img, 10, 1000));
        CHECK(image_equals(img, ref, size));
        CHECK_OK(img_close(img));
        CHECK(image_is_clean(top));
        free(back);
        free(ref);
        free(data);
    }
}

TEST(block_status_reports_each_kind)
{
    const char *path = test_path("bs.qcow2");
    CHECK_OK(create_qcow2(path, 8 << 20, "cluster_size=64k", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint8_t *buf = malloc(1 << 20);
    fill(buf, 1 << 20, 1);
    CHECK_OK(img_pwrite(img, buf, 1 << 20, 1 << 20));
    CHECK_OK(img_write_zeroes(img, 3 << 20, 1 << 20, 0));
    memset(buf, 'x', 1 << 20);
    CHECK_OK(img_pwrite_compressed(img, buf, 5 << 20, 1 << 20));
    struct img_extent e;
    CHECK_OK(img_block_status_layer(img, 0, 8 << 20, &e));
    CHECK(!(e.flags & IMG_STATUS_ALLOCATED) && e.length == 1 << 20);
    CHECK_OK(img_block_status_layer(img, 1 << 20, 7 << 20, &e));
    CHECK((e.flags & IMG_STATUS_DATA) && (e.flags & IMG_STATUS_OFFSET) && e.length == 1 << 20);
    CHECK(e.host_offset % 65536 == 0);
    CHECK_OK(img_block_status_layer(img, 3 << 20, 5 << 20, &e));
    CHECK((e.flags & IMG_STATUS_ZERO) && e.length == 1 << 20);
    CHECK_OK(img_block_status_layer(img, 5 << 20, 3 << 20, &e));
    CHECK((e.flags & IMG_STATUS_COMPRESSED) && e.length == 1 << 20);
    /* the host offset really holds the data */
    CHECK_OK(img_block_status_layer(img, (1 << 20) + 4096, 4096, &e));
    int fd = open(path, O_RDONLY);
    uint8_t a[4096], b[4096];
    CHECK(pread(fd, a, 4096, (off_t)e.host_offset) == 4096);
    close(fd);
    CHECK_OK(img_pread(img, b, (1 << 20) + 4096, 4096));
    CHECK(memcmp(a, b, 4096) == 0);
    CHECK_OK(img_close(img));
    free(buf);
}

/* ---- resize, backing, make_empty ---- */

TEST(resize_grow_shrink)
{
    const char *path = test_path("r.qcow2");
    CHECK_OK(create_qcow2(path, 1 << 20, "cluster_size=512", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint8_t *buf = malloc(64 << 20);
    fill(buf, 1 << 20, 9);
    CHECK_OK(img_pwrite(img, buf, 0, 1 << 20));
    /* 512-byte clusters: 64 MiB needs the L1 table to grow (and move) */
    CHECK_OK(img_resize(img, 64 << 20, 0, NULL));
    CHECK(img_size(img) == 64 << 20);
    uint8_t tail[4096];
    fill(tail, sizeof(tail), 10);
    CHECK_OK(img_pwrite(img, tail, (64 << 20) - 4096, 4096));
    CHECK_OK(img_pread(img, buf + (2 << 20), 0, 1 << 20));
    CHECK(memcmp(buf, buf + (2 << 20), 1 << 20) == 0);
    /* qemu-img's rule: whole sectors only (qemu would read an odd size rounded down) */
    CHECK(img_resize(img, 700001, IMG_RESIZE_SHRINK, NULL) == -EINVAL);
    CHECK(strstr(vs_error_message(), "multiple of 512") != NULL);
    CHECK(img_size(img) == 64 << 20);
    CHECK_OK(img_resize(img, 700416, IMG_RESIZE_SHRINK, NULL));
    CHECK(img_size(img) == 700416);
    CHECK_OK(img_resize(img, 2 << 20, 0, NULL));
    CHECK_OK(img_pread(img, buf + (4 << 20), 0, 2 << 20));
    CHECK(memcmp(buf, buf + (4 << 20), 700416) == 0);
    bool zero = true;
    for (uint64_t i = 700416; i < (2 << 20); i++)
        zero &= buf[(4 << 20) + i] == 0;
    CHECK(zero);
    CHECK_OK(img_snapshot_create(img, "s"));
    CHECK(img_resize(img, 1 << 20, IMG_RESIZE_SHRINK, NULL) == -ENOTSUP);
    CHECK(strstr(vs_error_message(), "snapshot") != NULL);
    CHECK_OK(img_resize(img, 3 << 20, 0, "metadata"));
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(path));
    free(buf);
}

TEST(backing_chain_cow_and_rebase_and_make_empty)
{
    const char *base = test_path("b.qcow2"), *top = test_path("t.qcow2");
    const uint64_t size = 3 << 20;
    CHECK_OK(create_qcow2(base, size, "cluster_size=4k", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, base, "qcow2", IMG_OPEN_RDWR));
    uint8_t *ref = malloc(size), *buf = malloc(size);
    fill(ref, size, 77);
    CHECK_OK(img_pwrite(img, ref, 0, size));
    CHECK_OK(img_close(img));
    CHECK_OK(create_qcow2(top, 0, NULL, "b.qcow2"));
    CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
    CHECK(img_backing_name(img) && !strcmp(img_backing_name(img), "b.qcow2"));
    CHECK(img_backing_format(img) && !strcmp(img_backing_format(img), "qcow2"));
    /* partial-cluster writes copy the rest of the cluster from the backing file */
    fill(buf, 100, 5);
    CHECK_OK(img_pwrite(img, buf, 65536 + 7, 100));
    memcpy(ref + 65536 + 7, buf, 100);
    CHECK(image_equals(img, ref, size));
    struct img_extent e;
    CHECK_OK(img_block_status(img, 0, size, &e));
    CHECK(e.depth == 1 && e.length == 65536);
    /* rebase -u: the header changes, data stays */
    CHECK_OK(img_change_backing(img, "b.qcow2", "qcow2"));
    char longname[1100];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = 0;
    CHECK(img_change_backing(img, longname, NULL) == -EINVAL);
    CHECK(strstr(img_backing_name(img), "b.qcow2") != NULL);
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(top));
    CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
    CHECK(image_equals(img, ref, size));
    CHECK_OK(img_make_empty(img));
    CHECK_OK(img_block_status_layer(img, 0, size, &e));
    CHECK(!(e.flags & IMG_STATUS_ALLOCATED) && e.length == size);
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(top));
    /* 512-byte clusters leave no room for a long backing name: refused, image intact */
    const char *small = test_path("small.qcow2");
    CHECK_OK(create_qcow2(small, 1 << 20, "cluster_size=512", NULL));
    CHECK_OK(img_open(&img, small, "qcow2", IMG_OPEN_RDWR | IMG_OPEN_NO_BACKING));
    memset(longname, 'n', 600);
    longname[600] = 0;
    CHECK(img_change_backing(img, longname, "raw") == -ENOSPC);
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(small));
    free(ref);
    free(buf);
}

/* ---- check and repair ---- */

struct lines {
    int count;
    char last[256];
};

static void collect(void *ctx, const char *line)
{
    struct lines *l = ctx;
    l->count++;
    snprintf(l->last, sizeof(l->last), "%s", line);
}

TEST(check_finds_and_repairs_leaks_and_errors)
{
    const char *path = test_path("k.qcow2");
    CHECK_OK(create_qcow2(path, 4 << 20, "cluster_size=4k", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint8_t *buf = malloc(1 << 20);
    fill(buf, 1 << 20, 4);
    CHECK_OK(img_pwrite(img, buf, 0, 1 << 20));
    CHECK_OK(img_close(img));
    /* leak: raise the refcount of a data cluster; corruption: zero another one's */
    uint64_t reftable = read_be64(path, 48);
    uint64_t block = read_be64(path, reftable);
    uint8_t two[2] = {0, 2}, zero[2] = {0, 0};
    patch(path, block + 2 * 10, two, 2);
    patch(path, block + 2 * 20, zero, 2);
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_CHECK));
    struct lines l = {0};
    struct img_check r = {.report = collect, .report_ctx = &l};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.leaks == 1 && r.corruptions >= 1);
    CHECK(l.count >= 2);
    CHECK(img_check(img, &r, IMG_CHECK_FIX_LEAKS) == -EROFS);
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_CHECK | IMG_OPEN_RDWR));
    memset(&r, 0, sizeof(r));
    CHECK_OK(img_check(img, &r, IMG_CHECK_FIX_LEAKS));
    CHECK(r.leaks_fixed == 1 && r.leaks == 0 && r.corruptions >= 1);
    CHECK_OK(img_check(img, &r, IMG_CHECK_FIX_LEAKS | IMG_CHECK_FIX_ERRORS));
    CHECK(r.corruptions_fixed >= 1 && r.corruptions == 0 && r.leaks == 0);
    CHECK(r.total_clusters == 1024 && r.allocated_clusters == 256);
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(path));
    free(buf);
}

TEST(dirty_image_is_repaired_on_open)
{
    const char *path = test_path("d.qcow2");
    CHECK_OK(create_qcow2(path, 4 << 20, "lazy_refcounts=on", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint8_t buf[8192];
    fill(buf, sizeof(buf), 1);
    CHECK_OK(img_pwrite(img, buf, 0, sizeof(buf)));
    CHECK((read_be64(path, 72) & 1) == 1); /* dirty while open */
    CHECK_OK(img_close(img));
    CHECK((read_be64(path, 72) & 1) == 0); /* clean after close */
    /* simulate a crash: dirty bit set, a refcount lost */
    patch_be64(path, 72, 1);
    uint64_t block = read_be64(path, read_be64(path, 48));
    uint8_t zero[2] = {0, 0};
    patch(path, block + 2 * 4, zero, 2);
    CHECK_OK(img_open(&img, path, "qcow2", 0)); /* read-only: fine as is */
    struct json_object *info;
    CHECK_OK(img_info_json(img, false, &info));
    CHECK(strstr(json_object_to_json_string(info), "\"dirty-flag\": true") ||
          strstr(json_object_to_json_string(info), "\"dirty-flag\":true"));
    json_object_put(info);
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR)); /* repairs */
    uint8_t back[8192];
    CHECK_OK(img_pread(img, back, 0, sizeof(back)));
    CHECK(memcmp(buf, back, sizeof(buf)) == 0);
    CHECK_OK(img_close(img));
    CHECK((read_be64(path, 72) & 1) == 0);
    CHECK(image_is_clean(path));
}

TEST(overlapping_metadata_write_is_prevented)
{
    const char *path = test_path("ov.qcow2");
    CHECK_OK(create_qcow2(path, 4 << 20, NULL, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    uint8_t buf[4096];
    fill(buf, sizeof(buf), 1);
    CHECK_OK(img_pwrite(img, buf, 0, sizeof(buf)));
    CHECK_OK(img_close(img));
    /* point guest cluster 0 at the refcount table */
    uint64_t l1 = read_be64(path, 40);
    uint64_t l2 = read_be64(path, l1) & 0x00fffffffffffe00ull;
    uint64_t reftable = read_be64(path, 48);
    patch_be64(path, l2, reftable | (1ull << 63));
    uint64_t before = read_be64(path, reftable);
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    CHECK(img_pwrite(img, buf, 0, 512) == -EIO);
    CHECK(strstr(vs_error_message(), "refcount table") != NULL);
    CHECK(img_pwrite(img, buf, 65536, 512) == -EIO); /* now corrupt: no more writes */
    CHECK_OK(img_close(img));
    CHECK(read_be64(path, reftable) == before);
    CHECK((read_be64(path, 72) & 2) == 2); /* corrupt bit */
    CHECK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR) == -EACCES);
    CHECK(strstr(vs_error_message(), "corrupt") != NULL);
    CHECK_OK(img_open(&img, path, "qcow2", 0));
    CHECK_OK(img_close(img));
}

/* ---- hostile headers ---- */

static void expect_open_error(const char *path, const char *field)
{
    struct img *img = NULL;
    int rc = img_open(&img, path, "qcow2", 0);
    if (rc != -EINVAL && rc != -EIO) {
        fprintf(stderr, "  %s: open returned %d (%s)\n", field, rc, vs_error_message());
        CHECK(rc == -EINVAL || rc == -EIO);
    }
    if (!strstr(vs_error_message(), field)) {
        fprintf(stderr, "  expected '%s' in: %s\n", field, vs_error_message());
        CHECK(strstr(vs_error_message(), field) != NULL);
    }
    if (!rc)
        img_close(img);
}

static const char *fresh(void)
{
    const char *p = test_path("h.qcow2");
    unlink(p);
    CHECK_OK(create_qcow2(p, 8 << 20, "cluster_size=4k", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, p, "qcow2", IMG_OPEN_RDWR));
    uint8_t buf[4096] = {1};
    CHECK_OK(img_pwrite(img, buf, 0, sizeof(buf)));
    CHECK_OK(img_close(img));
    return p;
}

TEST(hostile_headers_are_refused_with_the_field_named)
{
    const char *p;
    p = fresh();
    patch_be32(p, 20, 30);
    expect_open_error(p, "cluster_bits");
    p = fresh();
    patch_be32(p, 20, 8);
    expect_open_error(p, "cluster_bits");
    p = fresh();
    patch_be64(p, 40, 1ull << 40);
    expect_open_error(p, "l1_table_offset");
    p = fresh();
    patch_be64(p, 40, 4096 + 8);
    expect_open_error(p, "l1_table_offset");
    p = fresh();
    patch_be32(p, 36, 0x7fffffff);
    expect_open_error(p, "l1_size");
    p = fresh();
    patch_be32(p, 36, 0);
    expect_open_error(p, "l1_size");
    p = fresh();
    patch_be64(p, 48, 0);
    expect_open_error(p, "refcount_table_offset");
    p = fresh();
    patch_be32(p, 56, 100000);
    expect_open_error(p, "refcount_table_clusters");
    p = fresh();
    patch_be32(p, 60, 1u << 20);
    expect_open_error(p, "nb_snapshots");
    p = fresh();
    patch_be32(p, 60, 3);
    patch_be64(p, 64, 1ull << 50);
    expect_open_error(p, "snapshots_offset");
    p = fresh();
    patch_be64(p, 72, 1ull << 20);
    expect_open_error(p, "incompatible_features");
    CHECK(strstr(vs_error_message(), "bit 20") != NULL);
    p = fresh();
    patch_be32(p, 96, 7);
    expect_open_error(p, "refcount_order");
    p = fresh();
    patch_be32(p, 100, 5000);
    expect_open_error(p, "header_length");
    p = fresh();
    patch_be64(p, 8, 200);
    patch_be32(p, 16, 5000);
    expect_open_error(p, "backing_file_size");
    p = fresh();
    patch_be64(p, 8, 4000);
    patch_be32(p, 16, 500);
    expect_open_error(p, "backing_file_offset");
    p = fresh();
    patch_be64(p, 24, 1ull << 62);
    expect_open_error(p, "size");
    /* header extension longer than the cluster */
    p = fresh();
    patch_be32(p, 112, 0x12345678);
    patch_be32(p, 116, 100000);
    expect_open_error(p, "header extension");
    /* truncated files */
    p = fresh();
    CHECK(truncate(p, 50) == 0);
    expect_open_error(p, "too short");
    p = fresh();
    CHECK(truncate(p, 2 * 4096) == 0);
    expect_open_error(p, "beyond the end");
}

TEST(hostile_snapshot_table_and_features)
{
    const char *p = fresh();
    struct img *img;
    CHECK_OK(img_open(&img, p, "qcow2", IMG_OPEN_RDWR));
    CHECK_OK(img_snapshot_create(img, "s"));
    CHECK_OK(img_close(img));
    uint64_t snoff = read_be64(p, 64);
    uint8_t huge_extra[4] = {0x7f, 0xff, 0xff, 0xff};
    patch(p, snoff + 36, huge_extra, 4);
    expect_open_error(p, "extra data");
    /* external data file and unknown features: clear words */
    p = fresh();
    patch_be64(p, 72, 1ull << 2);
    CHECK(img_open(&img, p, "qcow2", 0) == -ENOTSUP);
    CHECK(strstr(vs_error_message(), "external data files are not supported") != NULL);
    /* a corrupt compressed cluster reads as an error, not a crash */
    p = fresh();
    CHECK_OK(img_open(&img, p, "qcow2", IMG_OPEN_RDWR));
    uint8_t buf[4096];
    memset(buf, 'q', sizeof(buf));
    CHECK_OK(img_pwrite_compressed(img, buf, 8192, 4096));
    CHECK_OK(img_close(img));
    uint64_t l2 = read_be64(p, read_be64(p, 40)) & 0x00fffffffffffe00ull;
    uint64_t entry = read_be64(p, l2 + 16);
    uint64_t coff = entry & ((1ull << (62 - 4)) - 1);
    uint8_t junk[64];
    memset(junk, 0xff, sizeof(junk));
    patch(p, coff, junk, sizeof(junk));
    CHECK_OK(img_open(&img, p, "qcow2", 0));
    CHECK(img_pread(img, buf, 8192, 4096) == -EIO);
    CHECK_OK(img_close(img));
}

/* ---- concurrency ---- */

struct writer {
    struct img *img;
    uint8_t *ref;
    uint64_t size;
    int id;
    int errors;
};

#define BLOCK    4096
#define NTHREADS 4

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint8_t buf[BLOCK * 3];
    uint64_t x = (uint64_t)w->id * 7919 + 1;
    uint64_t nblocks = w->size / BLOCK;
    for (int i = 0; i < 1500; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* every thread owns blocks == id (mod NTHREADS): threads share every cluster */
        uint64_t b = (x % (nblocks / NTHREADS)) * NTHREADS + (uint64_t)w->id;
        fill(buf, BLOCK, x);
        if (img_pwrite(w->img, buf, b * BLOCK, BLOCK))
            w->errors++;
        memcpy(w->ref + b * BLOCK, buf, BLOCK);
        if (img_pread(w->img, buf + BLOCK, b * BLOCK, BLOCK) ||
            memcmp(buf, buf + BLOCK, BLOCK) != 0)
            w->errors++;
    }
    return NULL;
}

static void concurrent(const char *opts, bool with_backing)
{
    const char *path = test_path("mt.qcow2");
    const uint64_t size = 16 << 20;
    uint8_t *ref = calloc(1, size);
    if (with_backing) {
        const char *base = test_path("mtb.qcow2");
        CHECK_OK(create_qcow2(base, size, NULL, NULL));
        struct img *b;
        CHECK_OK(img_open(&b, base, "qcow2", IMG_OPEN_RDWR));
        fill(ref, size, 1234);
        CHECK_OK(img_pwrite(b, ref, 0, size));
        CHECK_OK(img_close(b));
        CHECK_OK(create_qcow2(path, size, opts, "mtb.qcow2"));
    } else {
        CHECK_OK(create_qcow2(path, size, opts, NULL));
    }
    struct img *img;
    CHECK_OK(img_open(&img, path, "qcow2", IMG_OPEN_RDWR));
    pthread_t t[NTHREADS];
    struct writer w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct writer){.img = img, .ref = ref, .size = size, .id = i};
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].errors == 0);
    }
    CHECK(image_equals(img, ref, size));
    CHECK_OK(img_close(img));
    CHECK(image_is_clean(path));
    CHECK_OK(img_open(&img, path, "qcow2", 0));
    CHECK(image_equals(img, ref, size));
    CHECK_OK(img_close(img));
    free(ref);
}

TEST(concurrent_writers_four_threads)
{
    concurrent("cluster_size=64k", false);
    concurrent("cluster_size=64k", true);
    concurrent("cluster_size=512", false);
    concurrent("extended_l2=on", true);
    concurrent("compat=0.10,cluster_size=16k", true);
}

TEST(driver_is_linked)
{
    CHECK(!strcmp(img_driver_qcow2.name, "qcow2"));
}
