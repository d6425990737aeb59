/*
 * tests/unit/test-vhd.c — the VHD ("vpc") driver: size rounding against the values qemu-img
 * reports, fixed/dynamic/differencing round trips, parent search (relative, then absolute),
 * identity and time-stamp checks, compaction, resize, check, hostile headers, concurrent writers.
 *
 * The idea: each test builds its images through the public API only and then pokes single bytes
 * of the file to make it hostile, re-sealing checksums where the test wants the *next* field
 * validated, so every check in the driver is reached on its own.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "harness.h"
#include "img/driver.h"
#include "vessel/img.h"

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

static int create_vhd(const char *path, uint64_t size, const char *opts_text, const char *backing)
{
    struct vs_opts opts = {0};
    if (opts_text && vs_opts_parse(&opts, opts_text))
        return -EINVAL;
    struct img_create_params p = {.filename = path,
                                  .format = "vpc",
                                  .size = size,
                                  .size_given = size != 0,
                                  .backing_file = backing,
                                  .opts = &opts,
                                  .quiet = true};
    int rc = img_create(&p);
    vs_opts_free(&opts);
    return rc;
}

static uint64_t vhd_size_of(const char *path)
{
    struct img *img;
    if (img_open(&img, path, "vhd", 0))
        return 0;
    uint64_t s = img_size(img);
    img_close(img);
    return s;
}

static void poke(const char *path, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, bytes, len, (off_t)off) == (ssize_t)len);
    close(fd);
}

static void peek(const char *path, uint64_t off, void *bytes, size_t len)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    CHECK(pread(fd, bytes, len, (off_t)off) == (ssize_t)len);
    close(fd);
}

static void poke32(const char *path, uint64_t off, uint32_t v)
{
    v = htobe32(v);
    poke(path, off, &v, 4);
}

/* Recompute the checksum of the 512-byte footer at OFF or the 1024-byte header at OFF. */
static void reseal(const char *path, uint64_t off, size_t len, size_t field)
{
    uint8_t buf[1024];
    peek(path, off, buf, len);
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < field || i >= field + 4)
            sum += buf[i];
    poke32(path, off + field, ~sum);
}

static int64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static char warned[1024];
static void catch_warning(const char *msg)
{
    snprintf(warned, sizeof(warned), "%s", msg);
}

/* ---- tests ---- */

TEST(vhd_driver_registered)
{
    CHECK(!strcmp(img_driver_vhd.name, "vhd"));
    CHECK(img_format_canonical("vpc") && !strcmp(img_format_canonical("vpc"), "vhd"));
}

/* Virtual sizes qemu-img 7.2 reports for `create -f vpc FILE SIZE` (CHS rounding up). */
TEST(vhd_size_rounding_matches_qemu)
{
    struct {
        uint64_t asked, chs;
    } cases[] = {
        {1 << 20, 1079296},
        {7777777, 7798784},
        {10 << 20, 10514432},
        {100 << 20, 104865792},
        {1ull << 30, 1073995776},
        {3ull << 30, 3221471232ull},
        {130ull << 30, 139586437120ull},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK_OK(create_vhd(test_path("a.vhd"), cases[i].asked, NULL, NULL));
        CHECK(vhd_size_of(test_path("a.vhd")) == cases[i].chs);
        CHECK_OK(create_vhd(test_path("f.vhd"), cases[i].asked, "force_size=on", NULL));
        CHECK(vhd_size_of(test_path("f.vhd")) == (cases[i].asked + 511) / 512 * 512);
    }
    CHECK(create_vhd(test_path("big.vhd"), 3ull << 40, NULL, NULL) == -EFBIG);
}

static void round_trip(const char *opts)
{
    const char *path = test_path("rt.vhd");
    uint64_t size = 9 * 1024 * 1024 + 4567;
    CHECK_OK(create_vhd(path, size, opts, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    size = img_size(img);
    uint8_t *expect = calloc(1, size), *got = malloc(size);
    struct {
        uint64_t off;
        size_t len;
    } w[] = {{0, 512}, {1000, 70000}, {2097152 - 100, 300}, {5 << 20, 1 << 20}, {size - 17, 17}};
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        fill(expect + w[i].off, w[i].len, i + 1);
        CHECK_OK(img_pwrite(img, expect + w[i].off, w[i].off, w[i].len));
    }
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, NULL, 0));
    memset(got, 0xaa, size);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    /* block status: the block at 6 MiB was never written */
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 6 << 20, 1 << 20, &ext));
    CHECK(ext.flags & IMG_STATUS_ZERO); /* fixed too: the hole in its sparse file reads zeros */
    CHECK_OK(img_block_status(img, 0, 4096, &ext));
    CHECK(ext.flags & IMG_STATUS_DATA);
    struct img_check r = {0};
    img_close(img);
    CHECK_OK(img_open(&img, path, "vhd", IMG_OPEN_CHECK));
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 0 && r.leaks == 0);
    img_close(img);
    free(expect);
    free(got);
}

TEST(vhd_dynamic_round_trip)
{
    round_trip(NULL);
}

TEST(vhd_dynamic_small_blocks_round_trip)
{
    round_trip("block_size=64k");
}

TEST(vhd_fixed_round_trip)
{
    round_trip("subformat=fixed");
    CHECK(file_size(test_path("rt.vhd")) == (int64_t)vhd_size_of(test_path("rt.vhd")) + 512);
}

TEST(vhd_force_size_round_trip)
{
    round_trip("force_size=on");
    CHECK(vhd_size_of(test_path("rt.vhd")) == 9 * 1024 * 1024 + 4608);
}

TEST(vhd_bad_options)
{
    CHECK(create_vhd(test_path("x.vhd"), 1 << 20, "subformat=sparse", NULL) == -EINVAL);
    CHECK(create_vhd(test_path("x.vhd"), 1 << 20, "block_size=3000", NULL) == -EINVAL);
    CHECK(create_vhd(test_path("x.vhd"), 1 << 20, "bogus=1", NULL) == -EINVAL);
}

/* A parent with a pattern, a child on it: returns the pattern. */
static uint8_t *make_chain(const char *parent, const char *child, const char *backing_name,
                           uint64_t size)
{
    CHECK_OK(create_vhd(parent, size, NULL, NULL));
    struct img *img;
    uint8_t *data = malloc(size);
    fill(data, size, 77);
    CHECK_OK(img_open(&img, parent, "vpc", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, data, 0, size));
    img_close(img);
    CHECK_OK(create_vhd(child, 0, NULL, backing_name));
    return data;
}

TEST(vhd_differencing_read_write_commit)
{
    const uint64_t size = 4 << 20;
    uint8_t *expect =
        make_chain(test_path("parent.vhd"), test_path("child.vhd"), "parent.vhd", size);
    struct img *img;
    CHECK_OK(img_open(&img, test_path("child.vhd"), NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    CHECK(img_backing(img) != NULL);
    CHECK(!strcmp(img_backing_name(img), "parent.vhd"));
    uint8_t *got = malloc(size);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    /* partial sectors: the rest of each sector must still be the parent's */
    uint8_t patch[3000];
    fill(patch, sizeof(patch), 5);
    CHECK_OK(img_pwrite(img, patch, 1000, sizeof(patch)));
    memcpy(expect + 1000, patch, sizeof(patch));
    CHECK_OK(img_pwrite(img, patch, (2 << 20) + 7, 100));
    memcpy(expect + (2 << 20) + 7, patch, 100);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    /* layer status: sectors 1..7 are the child's, sector 8 on is the parent's */
    struct img_extent ext;
    CHECK_OK(img_block_status_layer(img, 512, 8192, &ext));
    CHECK((ext.flags & IMG_STATUS_ALLOCATED) && ext.length == 3584);
    CHECK_OK(img_block_status(img, 8192, 4096, &ext));
    CHECK(ext.depth == 1);
    /* commit into the parent, child emptied */
    CHECK_OK(img_commit(img, NULL, false, NULL, NULL));
    img_close(img);
    CHECK_OK(img_open(&img, test_path("parent.vhd"), NULL, 0));
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    img_close(img);
    warned[0] = 0;
    vs_warn_set_handler(catch_warning);
    CHECK_OK(img_open(&img, test_path("child.vhd"), NULL, 0));
    vs_warn_set_handler(NULL);
    CHECK(warned[0] == 0); /* commit refreshed the parent time stamp */
    CHECK_OK(img_block_status_layer(img, 0, size, &ext));
    CHECK(!(ext.flags & IMG_STATUS_ALLOCATED) && ext.length == size);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    img_close(img);
    free(got);
    free(expect);
}

TEST(vhd_parent_relative_then_absolute)
{
    char dir_a[600], dir_b[600];
    snprintf(dir_a, sizeof(dir_a), "%s/a", test_dir());
    snprintf(dir_b, sizeof(dir_b), "%s/b", test_dir());
    CHECK(mkdir(dir_a, 0755) == 0 && mkdir(dir_b, 0755) == 0);
    char parent[700], child[700], moved[700];
    snprintf(parent, sizeof(parent), "%s/parent.vhd", dir_a);
    snprintf(child, sizeof(child), "%s/child.vhd", dir_a);
    snprintf(moved, sizeof(moved), "%s/child.vhd", dir_b);
    uint8_t *expect = make_chain(parent, child, parent /* absolute */, 1 << 20);
    struct img *img;
    CHECK_OK(img_open(&img, child, NULL, 0));
    if (img) /* the relative locator is tried first and found */
        CHECK(!strcmp(img_backing_name(img), "parent.vhd"));
    img_close(img);
    /* moved child: its relative locator misses, the absolute one still finds the parent */
    CHECK(rename(child, moved) == 0);
    CHECK_OK(img_open(&img, moved, NULL, 0));
    if (img) {
        CHECK(!strcmp(img_backing_name(img), parent));
        uint8_t got[4096];
        CHECK_OK(img_pread(img, got, 0, sizeof(got)));
        CHECK(!memcmp(got, expect, sizeof(got)));
    }
    img_close(img);
    /* moved parent: a clear error naming both paths tried */
    char gone[700];
    snprintf(gone, sizeof(gone), "%s/elsewhere.vhd", dir_b);
    CHECK(rename(parent, gone) == 0);
    CHECK(img_open(&img, moved, NULL, 0) == -ENOENT);
    CHECK(strstr(vs_error_message(), "parent disk not found"));
    CHECK(strstr(vs_error_message(), "parent.vhd"));
    CHECK(strstr(vs_error_message(), moved));
    /* info-style opens still work on the orphan */
    CHECK_OK(img_open(&img, moved, NULL, IMG_OPEN_NO_BACKING));
    img_close(img);
    free(expect);
}

TEST(vhd_parent_identity_and_time_stamp)
{
    uint8_t *expect =
        make_chain(test_path("parent.vhd"), test_path("child.vhd"), "parent.vhd", 1 << 20);
    free(expect);
    struct img *img;
    /* a touched parent: warning, not refusal */
    struct timeval tv[2] = {{1000000000, 0}, {1000000000, 0}};
    CHECK(utimes(test_path("parent.vhd"), tv) == 0);
    warned[0] = 0;
    vs_warn_set_handler(catch_warning);
    CHECK_OK(img_open(&img, test_path("child.vhd"), NULL, 0));
    vs_warn_set_handler(NULL);
    img_close(img);
    CHECK(strstr(warned, "was modified"));
    /* a different disk under the parent's name: refused, naming both */
    CHECK_OK(create_vhd(test_path("parent.vhd"), 1 << 20, NULL, NULL));
    CHECK(img_open(&img, test_path("child.vhd"), NULL, 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "unique id"));
    CHECK(strstr(vs_error_message(), "child.vhd"));
    CHECK(strstr(vs_error_message(), "parent.vhd"));
}

TEST(vhd_compact_reclaims_zero_blocks)
{
    const char *path = test_path("c.vhd");
    const uint64_t size = 16 << 20;
    CHECK_OK(create_vhd(path, size, NULL, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    uint8_t *buf = malloc(size), *got = malloc(size);
    fill(buf, size, 9);
    CHECK_OK(img_pwrite(img, buf, 0, size));
    /* zero blocks 1, 2 and 6 by writing zeros (still allocated) */
    uint64_t zero_blocks[] = {1, 2, 6};
    for (size_t i = 0; i < 3; i++) {
        memset(buf + zero_blocks[i] * (2 << 20), 0, 2 << 20);
        CHECK_OK(
            img_pwrite(img, buf + zero_blocks[i] * (2 << 20), zero_blocks[i] * (2 << 20), 2 << 20));
    }
    int64_t before = file_size(path);
    struct img_compact res;
    CHECK_OK(img_compact(img, &res));
    CHECK(res.blocks_freed == 3);
    CHECK(file_size(path) == before - 3 * ((2 << 20) + 512));
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, buf, size));
    img_close(img);
    CHECK_OK(img_open(&img, path, "vhd", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 0 && r.leaks == 0 && r.allocated_clusters == 5);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, buf, size));
    img_close(img);
    free(buf);
    free(got);
}

TEST(vhd_resize)
{
    const char *path = test_path("r.vhd");
    CHECK_OK(create_vhd(path, 3 << 20, "subformat=fixed", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    uint8_t tail[512];
    fill(tail, sizeof(tail), 3);
    uint64_t old = img_size(img);
    CHECK_OK(img_pwrite(img, tail, old - 512, 512));
    CHECK_OK(img_resize(img, 8 << 20, 0, NULL));
    CHECK(img_size(img) >= 8 << 20);
    img_close(img);
    CHECK_OK(img_open(&img, path, NULL, 0));
    uint8_t got[512];
    CHECK_OK(img_pread(img, got, old - 512, 512));
    CHECK(!memcmp(got, tail, 512));
    img_close(img);
    /* dynamic: the 512-byte BAT sector of a 3 MiB disk holds 128 entries = 256 MiB */
    CHECK_OK(create_vhd(path, 3 << 20, NULL, NULL));
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, tail, 0, 512));
    CHECK_OK(img_resize(img, 200 << 20, 0, NULL));
    CHECK(img_resize(img, 1ull << 30, 0, NULL) == -ENOTSUP);
    CHECK(strstr(vs_error_message(), "block allocation table"));
    img_close(img);
    CHECK(vhd_size_of(path) >= 200 << 20);
}

TEST(vhd_hostile_headers)
{
    const char *path = test_path("h.vhd");
    struct img *img = NULL;
    /* footer checksum */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 64, 0x12345678);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "footer checksum") && strstr(vs_error_message(), "h.vhd"));
    /* disk type */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 60, 9);
    reseal(path, 0, 512, 64);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "disk type"));
    /* header offset beyond the file */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    uint64_t far = htobe64(1ull << 50);
    poke(path, 16, &far, 8);
    reseal(path, 0, 512, 64);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "data offset"));
    /* header checksum */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 512 + 36, 1);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "dynamic header checksum"));
    /* block size not a power of two */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 512 + 32, 3000000);
    reseal(path, 512, 1024, 36);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "block size"));
    /* max table entries far beyond the file */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 512 + 28, 0x7fffffff);
    reseal(path, 512, 1024, 36);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    /* too few table entries for the disk */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 512 + 28, 1);
    reseal(path, 512, 1024, 36);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "max table entries"));
    /* BAT entry beyond the end of file: refused, but check reports it */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 1536, 0x100000);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "beyond the end"));
    CHECK_OK(img_open(&img, path, "vpc", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 1);
    img_close(img);
    /* BAT entry into the metadata */
    CHECK_OK(create_vhd(path, 4 << 20, NULL, NULL));
    poke32(path, 1536, 1);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "BAT entry 0"));
    /* a file too small to be anything */
    poke(path, 0, "x", 1);
    CHECK(truncate(path, 100) == 0);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    /* a huge parent locator length */
    free(make_chain(test_path("p.vhd"), path, "p.vhd", 1 << 20));
    poke32(path, 512 + 576 + 8, 0x7fffffff);
    reseal(path, 512, 1024, 36);
    CHECK(img_open(&img, path, "vpc", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "parent locator"));
}

struct writer_arg {
    struct img *img;
    int index;
};

static void *writer(void *p)
{
    struct writer_arg *a = p;
    uint8_t *buf = malloc(1 << 20);
    for (int round = 0; round < 4; round++) {
        uint64_t off = ((uint64_t)(a->index + round * 4) << 20) + 512 * (uint64_t)a->index;
        fill(buf, 1 << 20, off);
        if (img_pwrite(a->img, buf, off, (1 << 20) - 4096))
            break;
    }
    free(buf);
    return NULL;
}

TEST(vhd_concurrent_writers)
{
    const char *path = test_path("cw.vhd");
    CHECK_OK(create_vhd(path, 16 << 20, "block_size=1M", NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    pthread_t t[4];
    struct writer_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct writer_arg){img, i};
        pthread_create(&t[i], NULL, writer, &args[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    img_close(img);
    CHECK_OK(img_open(&img, path, NULL, 0));
    uint8_t *buf = malloc(1 << 20), *got = malloc(1 << 20);
    for (int i = 0; i < 4; i++)
        for (int round = 0; round < 4; round++) {
            uint64_t off = ((uint64_t)(i + round * 4) << 20) + 512 * (uint64_t)i;
            fill(buf, 1 << 20, off);
            CHECK_OK(img_pread(img, got, off, (1 << 20) - 4096));
            CHECK(!memcmp(buf, got, (1 << 20) - 4096));
        }
    img_close(img);
    CHECK_OK(img_open(&img, path, "vhd", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 0 && r.leaks == 0 && r.allocated_clusters == 16);
    img_close(img);
    free(buf);
    free(got);
}
