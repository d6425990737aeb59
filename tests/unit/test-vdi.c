/*
 * tests/unit/test-vdi.c — the VDI driver: dynamic and static round trips, block map and allocated
 * count kept consistent (our check and qemu-img's agree), compaction keeping physical indices
 * dense, resize within the map's room, hostile headers, concurrent writers.
 *
 * The idea: a VDI's invariant is "allocated entries are a permutation of 0..allocated-1"; every
 * test that writes ends by asking check for zero corruptions and zero leaks.
 */
#include <endian.h>
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

static int create_vdi(const char *path, uint64_t size, const char *opts_text)
{
    struct vs_opts opts = {0};
    if (opts_text && vs_opts_parse(&opts, opts_text))
        return -EINVAL;
    struct img_create_params p = {.filename = path,
                                  .format = "vdi",
                                  .size = size,
                                  .size_given = true,
                                  .opts = &opts,
                                  .quiet = true};
    int rc = img_create(&p);
    vs_opts_free(&opts);
    return rc;
}

static void poke32(const char *path, uint64_t off, uint32_t v)
{
    v = htole32(v);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0 && pwrite(fd, &v, 4, (off_t)off) == 4);
    close(fd);
}

static int64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static bool clean(const char *path, uint64_t *allocated)
{
    struct img *img;
    if (img_open(&img, path, "vdi", IMG_OPEN_CHECK))
        return false;
    struct img_check r = {0};
    int rc = img_check(img, &r, 0);
    img_close(img);
    if (allocated)
        *allocated = r.allocated_clusters;
    return !rc && !r.corruptions && !r.leaks;
}

static void round_trip(const char *opts)
{
    const char *path = test_path("rt.vdi");
    const uint64_t size = 5 * 1024 * 1024 + 1536;
    CHECK_OK(create_vdi(path, size, opts));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    CHECK(img_size(img) == size && img_cluster_size(img) == 1 << 20);
    uint8_t *expect = calloc(1, size), *got = malloc(size);
    struct {
        uint64_t off;
        size_t len;
    } w[] = {{7, 100}, {(1 << 20) - 3, 9}, {3 << 20, 1 << 20}, {size - 100, 100}};
    for (size_t i = 0; i < 4; i++) {
        fill(expect + w[i].off, w[i].len, i + 3);
        CHECK_OK(img_pwrite(img, expect + w[i].off, w[i].off, w[i].len));
    }
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, NULL, 0));
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 2 << 20, 1 << 20, &ext));
    CHECK(ext.flags & IMG_STATUS_ZERO); /* static too: a hole in its sparse file */
    img_close(img);
    CHECK(clean(path, NULL));
    free(expect);
    free(got);
}

TEST(vdi_dynamic_round_trip)
{
    CHECK(!strcmp(img_driver_vdi.name, "vdi"));
    round_trip(NULL);
    uint64_t n = 0;
    CHECK(clean(test_path("rt.vdi"), &n) && n == 4);
}

TEST(vdi_static_round_trip)
{
    round_trip("static=on");
    CHECK(file_size(test_path("rt.vdi")) == 512 + 512 + 6 * (1 << 20));
}

TEST(vdi_compact_keeps_indices_dense)
{
    const char *path = test_path("c.vdi");
    const uint64_t size = 8 << 20;
    CHECK_OK(create_vdi(path, size, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    uint8_t *data = malloc(size), *got = malloc(size);
    fill(data, size, 1);
    memset(data + (1 << 20), 0, 1 << 20); /* blocks 1 and 4 are zeros but allocated */
    memset(data + (4 << 20), 0, 1 << 20);
    CHECK_OK(img_pwrite(img, data, 0, size));
    struct img_compact res;
    CHECK_OK(img_compact(img, &res));
    CHECK(res.blocks_freed == 2);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, data, size));
    img_close(img);
    CHECK(file_size(path) == 1024 + 6 * (1 << 20));
    uint64_t n = 0;
    CHECK(clean(path, &n) && n == 6);
    /* a write after compaction goes to index 6, not over a moved block */
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    fill(data + (1 << 20), 1 << 20, 5);
    CHECK_OK(img_pwrite(img, data + (1 << 20), 1 << 20, 1 << 20));
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, data, size));
    img_close(img);
    CHECK(clean(path, NULL));
    free(data);
    free(got);
}

TEST(vdi_resize)
{
    const char *path = test_path("r.vdi");
    CHECK_OK(create_vdi(path, 3 << 20, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    CHECK_OK(img_resize(img, 100 << 20, 0, NULL)); /* 128 entries fit the map's sector */
    CHECK(img_size(img) == 100 << 20);
    CHECK(img_resize(img, 1 << 30, 0, NULL) == -ENOTSUP);
    uint8_t b[512];
    fill(b, 512, 2);
    CHECK_OK(img_pwrite(img, b, (100 << 20) - 512, 512));
    img_close(img);
    CHECK(clean(path, NULL));
}

TEST(vdi_hostile_headers)
{
    const char *path = test_path("h.vdi");
    struct img *img;
    struct {
        uint32_t off, value;
        const char *field;
    } cases[] = {
        {68, 0x00020000, "version"}, {76, 7, "image type"},
        {360, 4096, "sector size"},  {376, 3000, "block size"},
        {340, 1 << 30, "block map"}, {344, 100, "data offset"},
        {384, 1, "disk size"},       {388, 99, "allocated block count"},
        {72, 12, "header size"},     {380, 4, "block extra"},
        {440, 1, "parent uuid"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK_OK(create_vdi(path, 4 << 20, NULL));
        poke32(path, cases[i].off, cases[i].value);
        int rc = img_open(&img, path, "vdi", 0);
        CHECK(rc < 0);
        if (rc >= 0) {
            img_close(img);
            continue;
        }
        if (!strstr(vs_error_message(), cases[i].field) || !strstr(vs_error_message(), "h.vdi"))
            fprintf(stderr, "  case %zu: %s\n", i, vs_error_message());
        CHECK(strstr(vs_error_message(), cases[i].field));
    }
    /* a map entry pointing past the allocated blocks */
    CHECK_OK(create_vdi(path, 4 << 20, NULL));
    poke32(path, 512, 3);
    CHECK(img_open(&img, path, "vdi", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "block map entry 0"));
    CHECK_OK(img_open(&img, path, "vdi", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions >= 1);
    img_close(img);
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
        uint64_t off = (uint64_t)(a->index + round * 4) << 20;
        fill(buf, 1 << 20, off);
        if (img_pwrite(a->img, buf, off, 1 << 20))
            break;
    }
    free(buf);
    return NULL;
}

TEST(vdi_concurrent_writers)
{
    const char *path = test_path("cw.vdi");
    CHECK_OK(create_vdi(path, 16 << 20, NULL));
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
    for (uint64_t b = 0; b < 16; b++) {
        fill(buf, 1 << 20, b << 20);
        CHECK_OK(img_pread(img, got, b << 20, 1 << 20));
        CHECK(!memcmp(buf, got, 1 << 20));
    }
    img_close(img);
    uint64_t n = 0;
    CHECK(clean(path, &n) && n == 16);
    free(buf);
    free(got);
}
