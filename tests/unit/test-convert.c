/*
 * tests/unit/test-convert.c — the whole-image operations: convert, compare, commit, rebase, map
 * and bench, on raw files and (when its driver is built in) qcow2 chains.
 *
 * The idea: every test builds its images with recognisable content — random data, written
 * zeros, holes — and checks what a user relies on: the copy reads back the same (img_compare),
 * holes stay holes (st_blocks, SEEK_DATA), and chains keep their meaning after commit/rebase.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "vessel/img.h"

#define MiB (1024 * 1024ull)

static void quiet_warning(const char *msg)
{
    (void)msg;
}

/* Deterministic "random" bytes. */
static void fill_random(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)(x >> 24);
    }
}

static int create_image(const char *path, const char *format, uint64_t size, const char *backing,
                        const char *backing_format)
{
    struct img_create_params p = {.filename = path,
                                  .format = format,
                                  .size = size,
                                  .size_given = size != 0,
                                  .backing_file = backing,
                                  .backing_format = backing_format,
                                  .quiet = true};
    return img_create(&p);
}

/* Write SEED-random data (or zeros when seed is 0) at [off, off+len) of an image. */
static int write_pattern(const char *path, const char *format, uint64_t off, size_t len,
                         uint64_t seed)
{
    struct img *img;
    int rc = img_open(&img, path, format, IMG_OPEN_RDWR);
    if (rc)
        return rc;
    uint8_t *buf = calloc(1, len);
    if (seed)
        fill_random(buf, len, seed);
    rc = img_pwrite(img, buf, off, len);
    free(buf);
    int crc = img_close(img);
    return rc ? rc : crc;
}

/* A 64 MiB raw image: random data at 8M (1 MiB) and 20M+4k (4 KiB), written zeros at 30M (1 MiB),
 * holes elsewhere. */
static void make_mixed_raw(const char *path)
{
    CHECK_OK(create_image(path, "raw", 64 * MiB, NULL, NULL));
    CHECK_OK(write_pattern(path, "raw", 8 * MiB, MiB, 1));
    CHECK_OK(write_pattern(path, "raw", 20 * MiB + 4096, 4096, 2));
    CHECK_OK(write_pattern(path, "raw", 30 * MiB, MiB, 0));
    CHECK_OK(write_pattern(path, "raw", 64 * MiB - 512, 512, 3)); /* the very end */
}

static int compare_files(const char *a, const char *fa, const char *b, const char *fb,
                         struct img_compare_result *r)
{
    struct img *ia = NULL, *ib = NULL;
    int rc = img_open(&ia, a, fa, 0);
    if (!rc)
        rc = img_open(&ib, b, fb, 0);
    if (!rc)
        rc = img_compare(ia, ib, false, NULL, NULL, r);
    img_close(ia);
    img_close(ib);
    return rc;
}

static bool identical(const char *a, const char *fa, const char *b, const char *fb)
{
    struct img_compare_result r;
    int rc = compare_files(a, fa, b, fb, &r);
    if (rc)
        fprintf(stderr, "  compare: %s\n", vs_error_message());
    return rc == 0 && r.outcome == IMG_COMPARE_IDENTICAL;
}

static int64_t blocks_of(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (int64_t)st.st_blocks * 512;
}

static int convert_simple(const char *src, const char *src_fmt, const char *dst,
                          const char *dst_fmt)
{
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = &src;
    p.source_count = 1;
    p.source_format = src_fmt;
    p.target = dst;
    p.target_format = dst_fmt;
    return img_convert(&p);
}

static bool have_qcow2(void)
{
    vs_warn_set_handler(quiet_warning);
    if (img_format_canonical("qcow2"))
        return true;
    fprintf(stderr, "  the qcow2 driver is not built in; this test needs it\n");
    return false;
}

/* ---- convert --------------------------------------------------------------------------------- */

TEST(convert_raw_to_raw_keeps_holes)
{
    const char *src = test_path("src.raw"), *dst = test_path("dst.raw");
    make_mixed_raw(src);
    CHECK_OK(convert_simple(src, "raw", dst, "raw"));
    CHECK(identical(src, "raw", dst, "raw"));
    /* no more space than the source, and the first 8 MiB are still a hole */
    CHECK(blocks_of(dst) <= blocks_of(src));
    CHECK(blocks_of(dst) < 4 * (int64_t)MiB);
    int fd = open(dst, O_RDONLY);
    CHECK(fd >= 0);
    CHECK(lseek(fd, 0, SEEK_DATA) >= (off_t)(8 * MiB));
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == (off_t)(64 * MiB));
    close(fd);
}

TEST(convert_block_formats_round_trip_sparse)
{
    /* vhd/vdi/vhdx take writes finer than their blocks (img_write_unit): the mixed raw has data,
     * written zeros and holes inside single blocks; the zeros must not be allocated, and the
     * way back reads piecewise from the mapped blocks — both must give the same bytes. */
    const char *src = test_path("src.raw");
    make_mixed_raw(src);
    static const char *const formats[] = {"vhdx", "vdi", "vpc"};
    for (size_t i = 0; i < 3; i++) {
        if (!img_format_canonical(formats[i]))
            continue;
        char name[32], back[32];
        snprintf(name, sizeof(name), "dst.%s", formats[i]);
        snprintf(back, sizeof(back), "back-%s.raw", formats[i]);
        const char *dst = test_path(name), *raw = test_path(back);
        CHECK_OK(convert_simple(src, "raw", dst, formats[i]));
        CHECK(identical(src, "raw", dst, formats[i]));
        /* data is 1 MiB + 4 KiB + 512 B; a block is 1–32 MiB: whole blocks would be >= 3 MiB */
        CHECK(blocks_of(dst) < 3 * (int64_t)MiB);
        if (blocks_of(dst) >= 3 * (int64_t)MiB)
            fprintf(stderr, "  %s: %lld bytes allocated\n", formats[i], (long long)blocks_of(dst));
        /* and back: pieces straight from the mapped blocks */
        CHECK_OK(convert_simple(dst, formats[i], raw, "raw"));
        CHECK(identical(src, "raw", raw, "raw"));
    }
}

TEST(convert_sparse_zero_means_fully_allocated)
{
    const char *src = test_path("src.raw"), *dst = test_path("dst.raw");
    make_mixed_raw(src);
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = &src;
    p.source_count = 1;
    p.source_format = "raw";
    p.target = dst;
    p.target_format = "raw";
    p.sparse_size = 0;
    p.workers = 1;
    CHECK_OK(img_convert(&p));
    CHECK(identical(src, "raw", dst, "raw"));
    CHECK(blocks_of(dst) >= (int64_t)(64 * MiB));
}

TEST(convert_concatenates_sources)
{
    const char *a = test_path("a.raw"), *b = test_path("b.raw"), *dst = test_path("dst.raw");
    CHECK_OK(create_image(a, "raw", 3 * MiB + 512, NULL, NULL));
    CHECK_OK(create_image(b, "raw", 5 * MiB, NULL, NULL));
    CHECK_OK(write_pattern(a, "raw", 3 * MiB - 4096, 4096 + 512, 7));
    CHECK_OK(write_pattern(b, "raw", 0, 8192, 8));
    const char *srcs[] = {a, b};
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = srcs;
    p.source_count = 2;
    p.source_format = "raw";
    p.target = dst;
    p.target_format = "raw";
    p.workers = 3;
    CHECK_OK(img_convert(&p));
    struct img *ia, *ib, *id;
    CHECK_OK(img_open(&ia, a, "raw", 0));
    CHECK_OK(img_open(&ib, b, "raw", 0));
    CHECK_OK(img_open(&id, dst, "raw", 0));
    CHECK(img_size(id) == 8 * MiB + 512);
    uint8_t *x = malloc(16384), *y = malloc(16384);
    CHECK_OK(img_pread(ia, x, 3 * MiB - 4096, 4608));
    CHECK_OK(img_pread(id, y, 3 * MiB - 4096, 4608));
    CHECK(!memcmp(x, y, 4608));
    CHECK_OK(img_pread(ib, x, 0, 16384));
    CHECK_OK(img_pread(id, y, 3 * MiB + 512, 16384));
    CHECK(!memcmp(x, y, 16384));
    free(x);
    free(y);
    img_close(ia);
    img_close(ib);
    img_close(id);
}

TEST(convert_into_existing_target_zeroes_holes)
{
    const char *src = test_path("src.raw"), *dst = test_path("dst.raw");
    make_mixed_raw(src);
    CHECK_OK(create_image(dst, "raw", 64 * MiB, NULL, NULL));
    for (uint64_t off = 0; off < 64 * MiB; off += 4 * MiB)
        CHECK_OK(write_pattern(dst, "raw", off, MiB, 99 + off));
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = &src;
    p.source_count = 1;
    p.source_format = "raw";
    p.target = dst;
    p.target_format = "raw";
    p.target_exists = true;
    CHECK_OK(img_convert(&p));
    CHECK(identical(src, "raw", dst, "raw"));
}

TEST(convert_errors_name_the_file)
{
    const char *src = test_path("missing.raw"), *dst = test_path("dst.raw");
    CHECK(convert_simple(src, NULL, dst, "raw") < 0);
    CHECK(strstr(vs_error_message(), "missing.raw") != NULL);
    CHECK(access(dst, F_OK) != 0);
    const char *real = test_path("real.raw");
    CHECK_OK(create_image(real, "raw", MiB, NULL, NULL));
    CHECK(convert_simple(real, "raw", dst, "nosuchformat") == -EINVAL);
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = &real;
    p.source_count = 1;
    p.target = dst;
    p.target_format = "raw";
    p.compress = true;
    CHECK(img_convert(&p) == -ENOTSUP);
}

TEST(convert_raw_qcow2_roundtrip)
{
    if (!have_qcow2()) {
        CHECK(!"qcow2 driver available");
        return;
    }
    const char *src = test_path("src.raw"), *q = test_path("mid.qcow2"),
               *back = test_path("back.raw");
    make_mixed_raw(src);
    CHECK_OK(convert_simple(src, "raw", q, "qcow2"));
    CHECK(identical(src, "raw", q, "qcow2"));
    /* holes and written zeros are not allocated in the qcow2 */
    CHECK(blocks_of(q) < 4 * (int64_t)MiB);
    CHECK_OK(convert_simple(q, "qcow2", back, "raw"));
    CHECK(identical(src, "raw", back, "raw"));
    CHECK(blocks_of(back) < 4 * (int64_t)MiB);
}

TEST(convert_compressed_qcow2)
{
    if (!have_qcow2()) {
        CHECK(!"qcow2 driver available");
        return;
    }
    const char *src = test_path("src.raw"), *q = test_path("c.qcow2");
    make_mixed_raw(src);
    /* compressible data too: a repeated pattern */
    CHECK_OK(write_pattern(src, "raw", 40 * MiB, 2 * MiB, 0));
    {
        struct img *img;
        CHECK_OK(img_open(&img, src, "raw", IMG_OPEN_RDWR));
        uint8_t *buf = malloc(2 * MiB);
        for (size_t i = 0; i < 2 * MiB; i++)
            buf[i] = (uint8_t)("vessel"[i % 6]);
        CHECK_OK(img_pwrite(img, buf, 40 * MiB, 2 * MiB));
        free(buf);
        img_close(img);
    }
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = &src;
    p.source_count = 1;
    p.source_format = "raw";
    p.target = q;
    p.target_format = "qcow2";
    p.compress = true;
    p.workers = 4;
    CHECK_OK(img_convert(&p));
    CHECK(identical(src, "raw", q, "qcow2"));
    CHECK(blocks_of(q) < 3 * (int64_t)MiB);
}

TEST(convert_with_backing_copies_only_the_top)
{
    if (!have_qcow2()) {
        CHECK(!"qcow2 driver available");
        return;
    }
    const char *base = test_path("base.raw"), *top = test_path("top.qcow2"),
               *out = test_path("out.qcow2");
    make_mixed_raw(base);
    CHECK_OK(create_image(top, "qcow2", 0, "base.raw", "raw"));
    CHECK_OK(write_pattern(top, "qcow2", 2 * MiB, 128 * 1024, 11));
    CHECK_OK(write_pattern(top, "qcow2", 8 * MiB + 4096, 4096, 12)); /* over base data */
    CHECK_OK(write_pattern(top, "qcow2", 30 * MiB, 65536, 0));       /* zeros over zeros */
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.sources = &top;
    p.source_count = 1;
    p.source_format = "qcow2";
    p.target = out;
    p.target_format = "qcow2";
    p.backing_file = "base.raw";
    p.backing_format = "raw";
    CHECK_OK(img_convert(&p));
    CHECK(identical(top, "qcow2", out, "qcow2"));
    /* only the top's clusters were copied */
    struct img *img;
    CHECK_OK(img_open(&img, out, "qcow2", 0));
    uint64_t allocated = 0;
    for (uint64_t off = 0; off < img_size(img);) {
        struct img_extent ext;
        CHECK_OK(img_block_status_layer(img, off, img_size(img) - off, &ext));
        if (ext.length == 0)
            break;
        if (ext.flags & IMG_STATUS_DATA)
            allocated += ext.length;
        off += ext.length;
    }
    CHECK(allocated > 0 && allocated <= 512 * 1024);
    img_close(img);
}

/* ---- compare --------------------------------------------------------------------------------- */

TEST(compare_outcomes)
{
    const char *a = test_path("a.raw"), *b = test_path("b.raw"), *c = test_path("c.raw");
    make_mixed_raw(a);
    CHECK_OK(convert_simple(a, "raw", b, "raw"));
    struct img_compare_result r;
    CHECK_OK(compare_files(a, "raw", b, "raw", &r));
    CHECK(r.outcome == IMG_COMPARE_IDENTICAL && !r.size_mismatch);

    /* one byte differs: reported at its sector */
    struct img *img;
    CHECK_OK(img_open(&img, b, "raw", IMG_OPEN_RDWR));
    uint8_t byte = 0x5a;
    CHECK_OK(img_pwrite(img, &byte, 50 * MiB + 1000, 1));
    img_close(img);
    CHECK_OK(compare_files(a, "raw", b, "raw", &r));
    CHECK(r.outcome == IMG_COMPARE_CONTENT && r.offset == 50 * MiB + 512);

    /* a larger image with a zero tail is identical (with a size warning) */
    CHECK_OK(convert_simple(a, "raw", c, "raw"));
    CHECK_OK(img_open(&img, c, "raw", IMG_OPEN_RDWR));
    CHECK_OK(img_resize(img, 80 * MiB, 0, NULL));
    img_close(img);
    CHECK_OK(compare_files(a, "raw", c, "raw", &r));
    CHECK(r.outcome == IMG_COMPARE_IDENTICAL && r.size_mismatch);
    CHECK_OK(compare_files(c, "raw", a, "raw", &r));
    CHECK(r.outcome == IMG_COMPARE_IDENTICAL && r.size_mismatch);

    /* strict mode refuses the size difference */
    struct img *ia, *ic;
    CHECK_OK(img_open(&ia, a, "raw", 0));
    CHECK_OK(img_open(&ic, c, "raw", 0));
    CHECK_OK(img_compare(ia, ic, true, NULL, NULL, &r));
    CHECK(r.outcome == IMG_COMPARE_SIZE);
    img_close(ia);
    img_close(ic);

    /* data in the tail is a content mismatch there */
    CHECK_OK(write_pattern(c, "raw", 70 * MiB + 4096, 512, 5));
    CHECK_OK(compare_files(a, "raw", c, "raw", &r));
    CHECK(r.outcome == IMG_COMPARE_CONTENT && r.offset == 70 * MiB + 4096);
}

/* ---- map ------------------------------------------------------------------------------------- */

struct map_collect {
    struct img_map_entry entries[16];
    int count;
};

static int map_collect(void *ctx, const struct img_map_entry *e)
{
    struct map_collect *m = ctx;
    if (m->count < 16)
        m->entries[m->count] = *e;
    m->count++;
    return 0;
}

TEST(map_merges_and_covers)
{
    const char *a = test_path("a.raw");
    CHECK_OK(create_image(a, "raw", 16 * MiB, NULL, NULL));
    CHECK_OK(write_pattern(a, "raw", 4 * MiB, MiB, 1));
    CHECK_OK(write_pattern(a, "raw", 5 * MiB, MiB, 2)); /* adjacent: merges */
    struct img *img;
    CHECK_OK(img_open(&img, a, "raw", 0));
    struct map_collect m = {0};
    CHECK_OK(img_map(img, 0, UINT64_MAX, map_collect, &m));
    CHECK(m.count == 3);
    uint64_t end = 0;
    for (int i = 0; i < m.count && i < 16; i++) {
        CHECK(m.entries[i].start == end);
        end += m.entries[i].length;
    }
    CHECK(end == 16 * MiB);
    CHECK(m.entries[1].start == 4 * MiB && m.entries[1].length == 2 * MiB);
    CHECK(m.entries[1].data && !m.entries[1].zero && m.entries[1].has_offset);
    CHECK(m.entries[0].zero && !m.entries[0].data);
    /* a window */
    m.count = 0;
    CHECK_OK(img_map(img, 4 * MiB + 512, MiB, map_collect, &m));
    CHECK(m.count == 1 && m.entries[0].start == 4 * MiB + 512 && m.entries[0].length == MiB);
    img_close(img);
}

/* ---- commit / rebase (qcow2 overlays on raw) ------------------------------------------------- */

TEST(commit_into_raw_backing)
{
    if (!have_qcow2()) {
        CHECK(!"qcow2 driver available");
        return;
    }
    const char *base = test_path("base.raw"), *top = test_path("top.qcow2"),
               *want = test_path("want.raw");
    make_mixed_raw(base);
    CHECK_OK(create_image(top, "qcow2", 0, "base.raw", "raw"));
    CHECK_OK(write_pattern(top, "qcow2", 1 * MiB, 3 * 65536 + 100, 21));
    CHECK_OK(write_pattern(top, "qcow2", 8 * MiB, 4096, 0)); /* zeros over data */
    CHECK_OK(convert_simple(top, "qcow2", want, "raw"));     /* what the chain reads now */
    struct img *img;
    CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
    CHECK_OK(img_commit(img, NULL, false, NULL, NULL));
    /* the overlay is empty now */
    struct img_extent ext;
    CHECK_OK(img_block_status_layer(img, 0, img_size(img), &ext));
    CHECK(!(ext.flags & IMG_STATUS_ALLOCATED) && ext.length == img_size(img));
    CHECK_OK(img_close(img));
    CHECK(identical(base, "raw", want, "raw"));
    CHECK(identical(top, "qcow2", want, "raw"));
}

TEST(commit_keep_top_and_deeper_base)
{
    if (!have_qcow2()) {
        CHECK(!"qcow2 driver available");
        return;
    }
    const char *base = test_path("base.raw"), *mid = test_path("mid.qcow2"),
               *top = test_path("top.qcow2"), *want = test_path("want.raw");
    CHECK_OK(create_image(base, "raw", 8 * MiB, NULL, NULL));
    CHECK_OK(write_pattern(base, "raw", 0, 8 * MiB, 31));
    CHECK_OK(create_image(mid, "qcow2", 0, "base.raw", "raw"));
    CHECK_OK(write_pattern(mid, "qcow2", MiB, 65536, 32));
    CHECK_OK(create_image(top, "qcow2", 0, "mid.qcow2", "qcow2"));
    CHECK_OK(write_pattern(top, "qcow2", 2 * MiB, 65536, 33));
    CHECK_OK(convert_simple(top, "qcow2", want, "raw"));
    struct img *img;
    CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
    struct img *b = img_chain_find(img, base);
    CHECK(b != NULL);
    CHECK_OK(img_commit(img, b, true, NULL, NULL));
    struct img_extent ext;
    CHECK_OK(img_block_status_layer(img, 2 * MiB, 65536, &ext));
    CHECK(ext.flags & IMG_STATUS_ALLOCATED); /* kept */
    CHECK_OK(img_close(img));
    CHECK(identical(base, "raw", want, "raw"));
}

TEST(rebase_safe_keeps_content)
{
    if (!have_qcow2()) {
        CHECK(!"qcow2 driver available");
        return;
    }
    const char *b1 = test_path("b1.raw"), *b2 = test_path("b2.raw"), *top = test_path("top.qcow2"),
               *want = test_path("want.raw");
    CHECK_OK(create_image(b1, "raw", 8 * MiB, NULL, NULL));
    CHECK_OK(write_pattern(b1, "raw", 0, 4 * MiB, 41));
    CHECK_OK(convert_simple(b1, "raw", b2, "raw"));
    CHECK_OK(write_pattern(b2, "raw", MiB, 4096, 42)); /* differs from b1 here */
    CHECK_OK(write_pattern(b2, "raw", 6 * MiB, 4096, 43));
    CHECK_OK(create_image(top, "qcow2", 0, "b1.raw", "raw"));
    CHECK_OK(write_pattern(top, "qcow2", 3 * MiB, 65536, 44));
    CHECK_OK(convert_simple(top, "qcow2", want, "raw"));
    struct img *img;
    CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
    CHECK_OK(img_rebase(img, "b2.raw", "raw", false, 0, NULL, NULL));
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, top, NULL, 0));
    CHECK(img_backing_name(img) && !strcmp(img_backing_name(img), "b2.raw"));
    img_close(img);
    CHECK(identical(top, "qcow2", want, "raw"));

    /* removing the backing copies everything in */
    CHECK_OK(img_open(&img, top, "qcow2", IMG_OPEN_RDWR));
    CHECK_OK(img_rebase(img, "", NULL, false, 0, NULL, NULL));
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, top, NULL, 0));
    CHECK(!img_backing_name(img) || !img_backing_name(img)[0]);
    img_close(img);
    CHECK(identical(top, "qcow2", want, "raw"));
}

/* ---- bench ----------------------------------------------------------------------------------- */

TEST(bench_runs_and_checks_bounds)
{
    const char *a = test_path("a.raw");
    CHECK_OK(create_image(a, "raw", 4 * MiB, NULL, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, a, "raw", IMG_OPEN_RDWR));
    struct img_bench_params p;
    img_bench_params_init(&p);
    p.count = 2000;
    p.depth = 4;
    p.write = true;
    p.pattern = 0xab;
    struct img_bench_result r;
    CHECK_OK(img_bench(img, &p, &r));
    CHECK(r.requests == 2000 && r.bytes == 2000 * 4096 && r.seconds > 0);
    uint8_t buf[4096];
    CHECK_OK(img_pread(img, buf, 4 * MiB - 4096, 4096)); /* wrapped around and covered all */
    CHECK(buf[0] == 0xab && buf[4095] == 0xab);
    p.write = false;
    p.random = true;
    CHECK_OK(img_bench(img, &p, &r));
    p.offset = 4 * MiB - 100;
    CHECK(img_bench(img, &p, &r) == -EINVAL);
    img_close(img);
}
