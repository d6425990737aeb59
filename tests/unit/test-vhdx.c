/*
 * tests/unit/test-vhdx.c — the VHDX driver: dynamic and fixed round trips, log replay (an entry
 * built here byte by byte, as another writer would leave it), refusing a dirty log read-only,
 * a differencing disk assembled by hand read through its parent, compaction, resize, hostile
 * headers and tables.
 *
 * The idea: vessel never writes log entries or differencing disks itself, so the tests build
 * those structures directly from the specification (MS-VHDX) with their CRC-32C checksums.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "img/driver.h"
#include "img/vhd-common.h"
#include "vessel/img.h"

#define MiB (1024ull * 1024)

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

static int create_vhdx(const char *path, uint64_t size, const char *opts_text)
{
    struct vs_opts opts = {0};
    if (opts_text && vs_opts_parse(&opts, opts_text))
        return -EINVAL;
    struct img_create_params p = {.filename = path,
                                  .format = "vhdx",
                                  .size = size,
                                  .size_given = true,
                                  .opts = &opts,
                                  .quiet = true};
    int rc = img_create(&p);
    vs_opts_free(&opts);
    return rc;
}

static void poke(const char *path, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0 && pwrite(fd, bytes, len, (off_t)off) == (ssize_t)len);
    close(fd);
}

static void peek(const char *path, uint64_t off, void *bytes, size_t len)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, bytes, len, (off_t)off) == (ssize_t)len);
    close(fd);
}

static void put32(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

static void seal(uint8_t *buf, size_t len)
{
    memset(buf + 4, 0, 4);
    put32(buf + 4, vhd_crc32c(0, buf, len));
}

/* The current header's offset (64 or 128 KiB) and its bytes. */
static uint64_t current_header(const char *path, uint8_t h[4096])
{
    uint8_t a[4096], b[4096];
    peek(path, 64 * 1024, a, 4096);
    peek(path, 128 * 1024, b, 4096);
    bool second = get64(b + 8) > get64(a + 8);
    memcpy(h, second ? b : a, 4096);
    return second ? 128 * 1024 : 64 * 1024;
}

static bool clean(const char *path)
{
    struct img *img;
    if (img_open(&img, path, "vhdx", IMG_OPEN_CHECK))
        return false;
    struct img_check r = {0};
    int rc = img_check(img, &r, 0);
    img_close(img);
    return !rc && !r.corruptions;
}

static void round_trip(const char *opts)
{
    const char *path = test_path("rt.vhdx");
    const uint64_t size = 20 * MiB + 512;
    CHECK_OK(create_vhdx(path, size, opts));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    CHECK(img_size(img) == size);
    uint8_t *expect = calloc(1, size), *got = malloc(size);
    struct {
        uint64_t off;
        size_t len;
    } w[] = {{3, 5000}, {MiB - 7, 20}, {9 * MiB, 2 * MiB}, {size - 512, 512}};
    for (size_t i = 0; i < 4; i++) {
        fill(expect + w[i].off, w[i].len, i + 11);
        CHECK_OK(img_pwrite(img, expect + w[i].off, w[i].off, w[i].len));
    }
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, NULL, 0));
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, expect, size));
    img_close(img);
    CHECK(clean(path));
    free(expect);
    free(got);
}

TEST(vhdx_dynamic_round_trip)
{
    CHECK(!strcmp(img_driver_vhdx.name, "vhdx"));
    round_trip(NULL);
}

TEST(vhdx_fixed_round_trip)
{
    round_trip("subformat=fixed,block_size=1M");
}

TEST(vhdx_small_blocks_round_trip)
{
    round_trip("block_size=1M,log_size=2M");
    CHECK(create_vhdx(test_path("x.vhdx"), MiB, "block_size=3M") == -EINVAL);
    CHECK(create_vhdx(test_path("x.vhdx"), MiB, "log_size=100k") == -EINVAL);
}

TEST(vhdx_crc32c_known_value)
{
    /* the CRC-32C check value of "123456789" */
    CHECK(vhd_crc32c(0, "123456789", 9) == 0xe3069283);
}

/* A one-entry log that writes PATTERN over the 4 KiB at TARGET. */
static void write_log_entry(const char *path, uint64_t target, const uint8_t *pattern)
{
    uint8_t h[4096];
    uint64_t hoff = current_header(path, h);
    uint64_t log_offset = get64(h + 72);
    uint8_t guid[16];
    vhd_guid_generate(guid);
    memcpy(h + 48, guid, 16);
    seal(h, 4096);
    poke(path, hoff, h, 4096);
    uint8_t entry[8192] = {0};
    uint64_t seq = 0x100000001ull;
    memcpy(entry, "loge", 4);
    put32(entry + 8, sizeof(entry));
    put32(entry + 12, 0); /* tail: itself */
    put64(entry + 16, seq);
    put32(entry + 24, 1);
    memcpy(entry + 32, guid, 16);
    put64(entry + 48, MiB);
    put64(entry + 56, MiB);
    uint8_t *desc = entry + 64;
    memcpy(desc, "desc", 4);
    memcpy(desc + 4, pattern + 4092, 4);
    memcpy(desc + 8, pattern, 8);
    put64(desc + 16, target);
    put64(desc + 24, seq);
    uint8_t *data = entry + 4096;
    memcpy(data, "data", 4);
    put32(data + 4, (uint32_t)(seq >> 32));
    memcpy(data + 8, pattern + 8, 4084);
    put32(data + 4092, (uint32_t)seq);
    seal(entry, sizeof(entry));
    poke(path, log_offset, entry, sizeof(entry));
}

TEST(vhdx_log_replay)
{
    const char *path = test_path("log.vhdx");
    CHECK_OK(create_vhdx(path, 16 * MiB, "subformat=fixed,block_size=1M"));
    /* find block 0's file offset: the first BAT entry */
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, 0));
    struct img_extent ext;
    CHECK_OK(img_block_status_layer(img, 0, 4096, &ext));
    img_close(img);
    CHECK(ext.flags & IMG_STATUS_OFFSET);
    uint8_t pattern[4096], got[4096];
    fill(pattern, sizeof(pattern), 42);
    write_log_entry(path, ext.host_offset + 8192, pattern);
    /* read-only: refused with a clear message */
    CHECK(img_open(&img, path, NULL, 0) == -EPERM);
    CHECK(strstr(vs_error_message(), "log") && strstr(vs_error_message(), "read-write"));
    /* check-mode read-only: opens, reports it */
    CHECK_OK(img_open(&img, path, "vhdx", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 1);
    img_close(img);
    /* read-write: replayed, the log emptied */
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    img_close(img);
    CHECK_OK(img_open(&img, path, NULL, 0));
    CHECK_OK(img_pread(img, got, 8192, sizeof(got)));
    CHECK(!memcmp(got, pattern, sizeof(got)));
    img_close(img);
    CHECK(clean(path));
}

/* Turn a fresh dynamic VHDX (one 8 MiB... block) into a child of PARENT by hand: HasParent,
 * a parent locator, sector 1 and 3 of block 0 present in the child. */
static void make_child(const char *child, const char *parent_name, const char *parent_path,
                       const uint8_t *child_data)
{
    CHECK_OK(create_vhdx(child, 4 * MiB, "block_size=1M"));
    uint8_t ph[4096];
    current_header(parent_path, ph);
    const uint8_t *g = ph + 32; /* parent's data write GUID */
    char linkage[40];
    snprintf(linkage, sizeof(linkage),
             "{%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x}", g[3], g[2],
             g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14],
             g[15]);
    /* layout of our create: log at 1 MiB (1 MiB), metadata at 2 MiB, BAT at 3 MiB */
    const uint64_t meta = 2 * MiB, bat = 3 * MiB;
    uint8_t table[64 * 1024];
    peek(child, meta, table, sizeof(table));
    /* file parameters are the first item: set HasParent */
    uint32_t item_off;
    memcpy(&item_off, table + 32 + 16, 4);
    uint8_t flags[4] = {2, 0, 0, 0};
    poke(child, meta + le32toh(item_off) + 4, flags, 4);
    /* the parent locator as the sixth item, at 128 KiB into the region */
    uint8_t loc[1024] = {0};
    const uint8_t vhdx_type[16] = {0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a,
                                   0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13};
    memcpy(loc, vhdx_type, 16);
    loc[18] = 2; /* two key-value pairs */
    const char *keys[2] = {"parent_linkage", "relative_path"};
    const char *values[2] = {linkage, parent_name};
    uint32_t at = 20 + 2 * 12;
    for (int i = 0; i < 2; i++) {
        uint8_t *e = loc + 20 + 12 * i;
        int kl = vhd_utf8_to_utf16(keys[i], loc + at, sizeof(loc) - at, false);
        put32(e, at);
        at += (uint32_t)kl;
        int vl = vhd_utf8_to_utf16(values[i], loc + at, sizeof(loc) - at, false);
        put32(e + 4, at);
        at += (uint32_t)vl;
        e[8] = (uint8_t)kl;
        e[10] = (uint8_t)vl;
    }
    const uint8_t loc_guid[16] = {0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
                                  0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c};
    uint8_t *e6 = table + 32 + 32 * 5;
    memcpy(e6, loc_guid, 16);
    put32(e6 + 16, 128 * 1024);
    put32(e6 + 20, at);
    put32(e6 + 24, 4);
    table[10] = 6;
    poke(child, meta, table, sizeof(table));
    poke(child, meta + 128 * 1024, loc, at);
    /* BAT: block 0 partially present at 8 MiB, the chunk's bitmap at 9 MiB (entry 4096) */
    uint8_t e[8];
    put64(e, 8 * MiB | 7);
    poke(child, bat, e, 8);
    put64(e, 9 * MiB | 6);
    poke(child, bat + 8 * 4096, e, 8);
    uint8_t bits = 0x0a; /* sectors 1 and 3 */
    poke(child, 9 * MiB, &bits, 1);
    poke(child, 8 * MiB, child_data, 4096);
    CHECK(truncate(child, 10 * MiB) == 0);
}

TEST(vhdx_differencing_read)
{
    const char *parent = test_path("parent.vhdx"), *child = test_path("child.vhdx");
    CHECK_OK(create_vhdx(parent, 4 * MiB, "block_size=1M"));
    uint8_t *pdata = malloc(4 * MiB), *got = malloc(4 * MiB), cdata[4096];
    fill(pdata, 4 * MiB, 8);
    fill(cdata, sizeof(cdata), 9);
    struct img *img;
    CHECK_OK(img_open(&img, parent, NULL, IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, pdata, 0, 4 * MiB));
    img_close(img);
    make_child(child, "parent.vhdx", parent, cdata);
    CHECK_OK(img_open(&img, child, NULL, 0));
    if (img) {
        CHECK(!strcmp(img_backing_format(img), "vhdx"));
        CHECK_OK(img_pread(img, got, 0, 4 * MiB));
        memcpy(pdata + 512, cdata + 512, 512);
        memcpy(pdata + 1536, cdata + 1536, 512);
        CHECK(!memcmp(got, pdata, 4 * MiB));
        struct img_extent ext;
        CHECK_OK(img_block_status_layer(img, 512, 4096, &ext));
        CHECK((ext.flags & IMG_STATUS_ALLOCATED) && ext.length == 512);
        CHECK_OK(img_block_status_layer(img, 1024, 4096, &ext));
        CHECK(!(ext.flags & IMG_STATUS_ALLOCATED) && ext.length == 512);
        CHECK(img_pwrite(img, cdata, 0, 512) == -EROFS);
        img_close(img);
    }
    /* parent modified since: refused, naming both */
    CHECK_OK(img_open(&img, parent, NULL, IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, cdata, 0, 512));
    img_close(img);
    CHECK(img_open(&img, child, NULL, 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "data write GUID") && strstr(vs_error_message(), "child"));
    /* parent gone: clear error */
    CHECK(unlink(parent) == 0);
    CHECK(img_open(&img, child, NULL, 0) == -ENOENT);
    CHECK(strstr(vs_error_message(), "parent disk not found"));
    free(pdata);
    free(got);
}

TEST(vhdx_compact_and_resize)
{
    const char *path = test_path("c.vhdx");
    const uint64_t size = 8 * MiB;
    CHECK_OK(create_vhdx(path, size, "block_size=1M"));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    uint8_t *data = malloc(size), *got = malloc(size);
    fill(data, size, 4);
    memset(data + 2 * MiB, 0, 3 * MiB);
    CHECK_OK(img_pwrite(img, data, 0, size));
    struct stat st0, st1;
    CHECK(stat(path, &st0) == 0);
    struct img_compact res;
    CHECK_OK(img_compact(img, &res));
    CHECK(res.blocks_freed == 3);
    CHECK(stat(path, &st1) == 0 && st1.st_size == st0.st_size - 3 * (off_t)MiB);
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, data, size));
    CHECK_OK(img_resize(img, 64 * MiB, 0, NULL));
    CHECK(img_size(img) == 64 * MiB);
    CHECK_OK(img_pwrite(img, data, 60 * MiB, MiB));
    img_close(img);
    CHECK(clean(path));
    CHECK_OK(img_open(&img, path, NULL, 0));
    CHECK_OK(img_pread(img, got, 0, size));
    CHECK(!memcmp(got, data, size));
    CHECK_OK(img_pread(img, got, 60 * MiB, MiB));
    CHECK(!memcmp(got, data, MiB));
    img_close(img);
    free(data);
    free(got);
}

TEST(vhdx_hostile_headers)
{
    const char *path = test_path("h.vhdx");
    struct img *img;
    uint8_t h[4096];
    /* identifier */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    poke(path, 0, "vhdxfilX", 8);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "file type identifier"));
    /* both headers broken */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    poke(path, 64 * 1024 + 100, "x", 1);
    poke(path, 128 * 1024 + 100, "x", 1);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "header"));
    /* one header broken: the other one serves */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    poke(path, 128 * 1024 + 100, "x", 1);
    CHECK_OK(img_open(&img, path, "vhdx", 0));
    img_close(img);
    /* log outside the file */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    uint64_t hoff = current_header(path, h);
    put64(h + 72, 1ull << 40);
    seal(h, 4096);
    poke(path, hoff, h, 4096);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "log"));
    /* region tables both bad */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    poke(path, 192 * 1024 + 20, "x", 1);
    poke(path, 256 * 1024 + 20, "x", 1);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "region table"));
    /* block size not a power of two (metadata has no checksum) */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    uint8_t bs[4];
    put32(bs, 3 * 1024 * 1024);
    poke(path, 2 * MiB + 64 * 1024, bs, 4);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "block size"));
    /* virtual size beyond 64 TiB */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    uint8_t vs[8];
    put64(vs, 1ull << 50);
    poke(path, 2 * MiB + 64 * 1024 + 8, vs, 8);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "virtual disk size"));
    /* metadata item outside the region */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    uint8_t off[4];
    put32(off, 0x7fffffff);
    poke(path, 2 * MiB + 32 + 16, off, 4);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "metadata item"));
    /* BAT entry beyond the end of the file: refused; check counts it */
    CHECK_OK(create_vhdx(path, 4 * MiB, NULL));
    uint8_t e[8];
    put64(e, (1ull << 40) | 6);
    poke(path, 3 * MiB, e, 8);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "BAT entry 0"));
    CHECK_OK(img_open(&img, path, "vhdx", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 1);
    img_close(img);
    /* tiny file */
    CHECK(truncate(path, 4096) == 0);
    CHECK(img_open(&img, path, "vhdx", 0) == -EINVAL);
}
