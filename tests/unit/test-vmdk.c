/*
 * tests/unit/test-vmdk.c — the VMDK driver: round trips for every subformat vessel writes,
 * the geometry rule, descriptor parsing (line endings, comments, ZERO/FLAT/offset extents,
 * access modes) and its errors, hostile headers and tables, streamOptimized footers, delta links
 * with CID checks, zeroed grains, compaction, check, and concurrent grain allocation.
 *
 * Every test builds its images in a private directory; the hostile ones are made by patching a
 * valid image, so each test changes exactly one field and expects an error naming it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "vessel/img.h"

#define MiB (1024 * 1024)

static int create_vmdk(const char *path, uint64_t size, const char *opts_text, const char *backing)
{
    struct vs_opts opts = {0};
    if (opts_text && vs_opts_parse(&opts, opts_text))
        return -EINVAL;
    struct img_create_params p = {.filename = path,
                                  .format = "vmdk",
                                  .size = size,
                                  .size_given = size != 0,
                                  .backing_file = backing,
                                  .backing_format = backing ? "vmdk" : NULL,
                                  .opts = &opts,
                                  .quiet = true};
    int rc = img_create(&p);
    vs_opts_free(&opts);
    return rc;
}

static void fill(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)((i * 131 + seed * 7 + (i >> 9)) ^ seed);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = 0;
    fclose(f);
    if (n > 512 && !memcmp(buf, "KDMV", 4)) /* the descriptor embedded at sector 1 */
        memmove(buf, buf + 512, n - 512 + 1);
    return buf;
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, data, len) == (ssize_t)len);
    close(fd);
}

static void patch(const char *path, off_t off, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, data, len, off) == (ssize_t)len);
    close(fd);
}

static void patch32(const char *path, off_t off, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    patch(path, off, b, 4);
}

static void patch64(const char *path, off_t off, uint64_t v)
{
    patch32(path, off, (uint32_t)v);
    patch32(path, off + 4, (uint32_t)(v >> 32));
}

static uint32_t read32(const char *path, off_t off)
{
    uint8_t b[4] = {0};
    int fd = open(path, O_RDONLY);
    CHECK(pread(fd, b, 4, off) == 4);
    close(fd);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Open must fail with ERR and a message containing WHAT (and the file's name). */
static void expect_open_error(const char *path, int err, const char *what)
{
    struct img *img = NULL;
    int rc = img_open(&img, path, "vmdk", IMG_OPEN_NO_BACKING);
    if (rc != err)
        fprintf(stderr, "  %s: want %d, got %d: %s\n", what, err, rc, vs_error_message());
    CHECK(rc == err);
    if (rc == 0) {
        img_close(img);
        return;
    }
    const char *msg = vs_error_message();
    if (!strstr(msg, what) || !strstr(msg, strrchr(path, '/') + 1)) {
        fprintf(stderr, "  message '%s' lacks '%s'\n", msg, what);
        test_fail(__FILE__, __LINE__, what);
    }
    CHECK(strchr(msg, '\n') == NULL);
}

/* Write a pattern at awkward offsets, reopen, read it all back against a shadow copy. */
static void round_trip(const char *sub, uint64_t size)
{
    const char *path = test_path("rt.vmdk");
    char opts[128];
    snprintf(opts, sizeof(opts), "subformat=%s", sub);
    CHECK_OK(create_vmdk(path, size, opts, NULL));
    uint8_t *shadow = calloc(1, size), *buf = malloc(4 * MiB);
    bool stream = !strcmp(sub, "streamOptimized");
    struct img *img = NULL;
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    if (!img)
        goto out;
    CHECK(img_size(img) == size);
    struct {
        uint64_t off, len;
    } w[] = {
        {0, 4096},                       /* first bytes, partial grain */
        {65536 * 3, 65536 * 5},          /* whole grains */
        {5 * MiB + 1000, 3 * 65536 + 7}, /* unaligned, spanning grains */
        {size - 3 * 65536, 3 * 65536},   /* the last grains */
    };
    for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++) {
        if (stream && i == 2)
            continue; /* streams are write-once per grain: unaligned overlap would rewrite */
        fill(buf, w[i].len, (unsigned)i + 1);
        CHECK_OK(img_pwrite(img, buf, w[i].off, w[i].len));
        memcpy(shadow + w[i].off, buf, w[i].len);
    }
    /* read back before closing (from memory tables), then after reopening */
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t off = 0; off < size; off += 4 * MiB) {
            size_t n = (size_t)VS_MIN(4 * MiB, size - off);
            CHECK_OK(img_pread(img, buf, off, n));
            if (memcmp(buf, shadow + off, n)) {
                fprintf(stderr, "  %s pass %d: mismatch in [%llu, +%zu)\n", sub, pass,
                        (unsigned long long)off, n);
                test_fail(__FILE__, __LINE__, "content");
                break;
            }
        }
        if (pass == 0) {
            CHECK_OK(img_close(img));
            img = NULL;
            CHECK_OK(img_open(&img, path, NULL, 0));
            if (!img)
                goto out;
            CHECK(!strcmp(img_format(img), "vmdk"));
        }
    }
    struct img_check r = {0};
    img_close(img);
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_CHECK));
    if (img) {
        CHECK_OK(img_check(img, &r, 0));
        CHECK(r.corruptions == 0);
    }
out:
    img_close(img);
    free(shadow);
    free(buf);
}

TEST(vmdk_round_trip_monolithic_sparse)
{
    round_trip("monolithicSparse", 64 * MiB);
}

TEST(vmdk_round_trip_stream_optimized)
{
    round_trip("streamOptimized", 64 * MiB);
}

TEST(vmdk_round_trip_monolithic_flat)
{
    round_trip("monolithicFlat", 16 * MiB);
}

TEST(vmdk_round_trip_two_gb_sparse)
{
    round_trip("twoGbMaxExtentSparse", 32 * MiB);
}

TEST(vmdk_round_trip_two_gb_flat)
{
    round_trip("twoGbMaxExtentFlat", 16 * MiB);
}

TEST(vmdk_two_gb_sparse_splits_at_2047_mib)
{
    const char *path = test_path("split.vmdk");
    CHECK_OK(create_vmdk(path, 5ull << 30, "subformat=twoGbMaxExtentSparse", NULL));
    char *text = read_text(path);
    CHECK(text && strstr(text, "RW 4192256 SPARSE \"split-s001.vmdk\""));
    CHECK(text && strstr(text, "RW 4192256 SPARSE \"split-s002.vmdk\""));
    CHECK(text && strstr(text, "SPARSE \"split-s003.vmdk\""));
    free(text);
    struct img *img = NULL;
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    if (!img)
        return;
    CHECK(img_size(img) == 5ull << 30);
    /* a write straddling the first extent boundary lands in two files */
    uint8_t buf[8192], back[8192];
    fill(buf, sizeof(buf), 9);
    uint64_t edge = 4192256ull * 512 - 4096;
    CHECK_OK(img_pwrite(img, buf, edge, sizeof(buf)));
    CHECK_OK(img_pread(img, back, edge, sizeof(back)));
    CHECK(!memcmp(buf, back, sizeof(buf)));
    img_close(img);
}

TEST(vmdk_stream_reopen_appends)
{
    const char *path = test_path("s.vmdk");
    CHECK_OK(create_vmdk(path, 8 * MiB, "subformat=streamOptimized", NULL));
    uint8_t *a = malloc(MiB), *b = malloc(MiB), *back = malloc(MiB);
    fill(a, MiB, 1);
    fill(b, MiB, 2);
    struct img *img = NULL;
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, a, 0, MiB));
    CHECK_OK(img_flush(img)); /* footer written; next grains overwrite it */
    CHECK_OK(img_pwrite(img, b, 4 * MiB, MiB));
    /* write-once: a second write to a grain is refused with a message */
    CHECK(img_pwrite(img, b, 0, 4096) == -ENOTSUP);
    CHECK(strstr(vs_error_message(), "once") != NULL);
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, a, 7 * MiB, MiB));
    CHECK_OK(img_close(img));
    CHECK_OK(img_open(&img, path, "vmdk", 0));
    CHECK_OK(img_pread(img, back, 0, MiB));
    CHECK(!memcmp(back, a, MiB));
    CHECK_OK(img_pread(img, back, 4 * MiB, MiB));
    CHECK(!memcmp(back, b, MiB));
    CHECK_OK(img_pread(img, back, 7 * MiB, MiB));
    CHECK(!memcmp(back, a, MiB));
    CHECK_OK(img_pread(img, back, 2 * MiB, MiB));
    CHECK(vs_buffer_is_zero(back, MiB));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 0, 8 * MiB, &ext));
    CHECK((ext.flags & IMG_STATUS_COMPRESSED) && ext.length == MiB);
    img_close(img);
    /* compressible data is actually compressed */
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size < 3 * MiB);
    free(a);
    free(b);
    free(back);
}

TEST(vmdk_compressed_write_needs_stream)
{
    const char *path = test_path("c.vmdk");
    CHECK_OK(create_vmdk(path, 4 * MiB, NULL, NULL));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    uint8_t buf[65536] = {1};
    CHECK(img_pwrite_compressed(img, buf, 0, sizeof(buf)) == -ENOTSUP);
    CHECK(strstr(vs_error_message(), "streamOptimized") != NULL);
    img_close(img);
    CHECK_OK(create_vmdk(path, 4 * MiB, "subformat=streamOptimized", NULL));
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite_compressed(img, buf, 65536, sizeof(buf)));
    img_close(img);
}

/* ---- geometry and options -------------------------------------------------------------------- */

static void geometry(uint64_t size, const char *adapter, const char *heads, const char *sectors)
{
    const char *path = test_path("geo.vmdk");
    char opts[128];
    snprintf(opts, sizeof(opts), "subformat=twoGbMaxExtentSparse,adapter_type=%s", adapter);
    CHECK_OK(create_vmdk(path, size, opts, NULL));
    char *text = read_text(path);
    char want_h[64], want_s[64], want_a[64];
    snprintf(want_h, sizeof(want_h), "ddb.geometry.heads = \"%s\"", heads);
    snprintf(want_s, sizeof(want_s), "ddb.geometry.sectors = \"%s\"", sectors);
    snprintf(want_a, sizeof(want_a), "ddb.adapterType = \"%s\"", adapter);
    if (!text || !strstr(text, want_h) || !strstr(text, want_s) || !strstr(text, want_a)) {
        fprintf(stderr, "  size %llu %s: want %s / %s in:\n%s\n", (unsigned long long)size, adapter,
                want_h, want_s, text ? text : "(none)");
        test_fail(__FILE__, __LINE__, "geometry");
    }
    free(text);
}

TEST(vmdk_geometry_rule)
{
    geometry(512 * MiB, "lsilogic", "64", "32");
    geometry(1024ull * MiB, "buslogic", "64", "32");
    geometry(1536ull * MiB, "lsilogic", "128", "32");
    geometry(2048ull * MiB, "legacyESX", "128", "32");
    geometry(3072ull * MiB, "lsilogic", "255", "63");
    geometry(512 * MiB, "ide", "16", "63");
    geometry(3072ull * MiB, "ide", "16", "63");
    /* cylinders = (size - 512) / (heads * sectors * 512) */
    const char *path = test_path("geo.vmdk");
    CHECK_OK(create_vmdk(path, 3072ull * MiB,
                         "subformat=twoGbMaxExtentSparse,adapter_type="
                         "lsilogic",
                         NULL));
    char *text = read_text(path);
    CHECK(text && strstr(text, "ddb.geometry.cylinders = \"391\""));
    free(text);
}

TEST(vmdk_create_options_checked)
{
    const char *path = test_path("o.vmdk");
    CHECK(create_vmdk(path, MiB, "adapter_type=scsi", NULL) == -EINVAL);
    CHECK(strstr(vs_error_message(), "adapter_type 'scsi'") != NULL);
    CHECK(create_vmdk(path, MiB, "subformat=monolithicSparsy", NULL) == -EINVAL);
    CHECK(create_vmdk(path, MiB, "compat6=on,hwversion=7", NULL) == -EINVAL);
    CHECK(create_vmdk(path, MiB, "subformat=monolithicFlat,zeroed_grain=on", NULL) == -ENOTSUP);
    CHECK(create_vmdk(path, MiB, "cluster_size=1M", NULL) == -EINVAL);
    CHECK_OK(create_vmdk(path, MiB, "subformat=monolithicFlat,compat6=on,toolsversion=1234", NULL));
    char *text = read_text(path);
    CHECK(text && strstr(text, "ddb.virtualHWVersion = \"6\""));
    CHECK(text && strstr(text, "ddb.toolsVersion = \"1234\""));
    free(text);
}

TEST(vmdk_info_format_specific)
{
    const char *path = test_path("i.vmdk");
    CHECK_OK(create_vmdk(path, 8 * MiB, "subformat=streamOptimized", NULL));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, path, "vmdk", 0));
    struct json_object *o = NULL;
    CHECK_OK(img_info_json(img, false, &o));
    const char *s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : "";
    CHECK(strstr(s, "\"create-type\":\"streamOptimized\"") != NULL);
    CHECK(strstr(s, "\"compressed\":true") != NULL);
    CHECK(strstr(s, "\"parent-cid\":4294967295") != NULL);
    CHECK(strstr(s, "\"cluster-size\":65536") != NULL);
    json_object_put(o);
    img_close(img);
}

TEST(vmdk_resize_refused_clearly)
{
    const char *path = test_path("r.vmdk");
    CHECK_OK(create_vmdk(path, 8 * MiB, NULL, NULL));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, path, "vmdk", IMG_OPEN_RDWR));
    CHECK(img_resize(img, 16 * MiB, 0, NULL) == -ENOTSUP);
    CHECK(strstr(vs_error_message(), "r.vmdk") && strstr(vs_error_message(), "resiz"));
    img_close(img);
}

/* ---- descriptors ----------------------------------------------------------------------------- */

TEST(vmdk_descriptor_crlf_comments_zero_and_offsets)
{
    /* two flat extents in one file at different offsets, a ZERO extent, CRLF, comments */
    uint8_t *data = malloc(3 * MiB);
    fill(data, 3 * MiB, 5);
    write_file(test_path("d.bin"), data, 3 * MiB);
    const char *desc = "# Disk DescriptorFile\r\n"
                       "version=1\r\n"
                       "encoding=\"UTF-8\"\r\n"
                       "CID=fffffffe\r\n"
                       "parentCID=ffffffff\r\n"
                       "createType=\"custom\"\r\n"
                       "\r\n"
                       "   # indented comment\r\n"
                       "RW 2048 FLAT \"d.bin\" 2048\r\n"
                       "RW 1024 ZERO\r\n"
                       "RDONLY 2048 FLAT \"d.bin\"\r\n"
                       "ddb.adapterType = \"lsilogic\"\r\n";
    write_file(test_path("d.vmdk"), desc, strlen(desc));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, test_path("d.vmdk"), NULL, 0));
    if (!img) {
        free(data);
        return;
    }
    CHECK(img_size(img) == 5 * 512 * 1024);
    uint8_t *buf = malloc(5 * 512 * 1024);
    CHECK_OK(img_pread(img, buf, 0, 5 * 512 * 1024));
    CHECK(!memcmp(buf, data + MiB, MiB));
    CHECK(vs_buffer_is_zero(buf + MiB, 512 * 1024));
    CHECK(!memcmp(buf + MiB + 512 * 1024, data, MiB));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, MiB, 512 * 1024, &ext));
    CHECK(ext.flags & IMG_STATUS_ZERO);
    img_close(img);
    /* the RDONLY extent refuses writes even on a read-write open */
    CHECK_OK(img_open(&img, test_path("d.vmdk"), "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, buf, 0, 4096));
    CHECK(img_pwrite(img, buf, MiB + 512 * 1024, 4096) == -EROFS);
    img_close(img);
    free(buf);
    free(data);
}

static void bad_descriptor(const char *body, int err, const char *what)
{
    char *text = malloc(strlen(body) + 256);
    sprintf(text, "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n%s", body);
    write_file(test_path("bad.vmdk"), text, strlen(text));
    expect_open_error(test_path("bad.vmdk"), err, what);
    free(text);
}

TEST(vmdk_descriptor_errors_name_line_and_field)
{
    write_file(test_path("x.bin"), "", 0);
    bad_descriptor("createType=\"monolithicFlat\"\nRW 16 SPARSEX \"x.bin\"\n", -EINVAL,
                   "descriptor line 6: extent type 'SPARSEX' unknown");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 1x6 FLAT \"x.bin\"\n", -EINVAL,
                   "line 6: extent size '1x6'");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 16 FLAT x.bin\n", -EINVAL,
                   "line 6: extent file name");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 16 FLAT \"x.bin\" -5\n", -EINVAL,
                   "line 6: extent offset");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 0 FLAT \"x.bin\"\n", -EINVAL,
                   "extent size '0'");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 16 VMFSSPARSE \"x.bin\"\n", -ENOTSUP,
                   "'VMFSSPARSE' is not supported");
    bad_descriptor("createType=\"weird\"\nRW 16 FLAT \"x.bin\"\n", -EINVAL,
                   "createType 'weird' unknown");
    bad_descriptor("createType=\"monolithicFlat\"\n", -EINVAL, "no extent lines");
    bad_descriptor("RW 16 FLAT \"x.bin\"\n", -EINVAL, "createType missing");
    bad_descriptor("createType=\"monolithicFlat\"\nthis is not a key\n", -EINVAL,
                   "line 6: expected key=value");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 16 FLAT \"missing.bin\"\n", -ENOENT,
                   "extent 'missing.bin'");
    bad_descriptor("createType=\"monolithicFlat\"\nRW 16 SPARSE \"x.bin\"\n", -EINVAL,
                   "too small for a sparse header");
    write_file(test_path("bad.vmdk"), "version=4\ncreateType=\"monolithicFlat\"\n", 38);
    expect_open_error(test_path("bad.vmdk"), -ENOTSUP, "version '4'");
    write_file(test_path("bad.vmdk"), "version=1\nCID=zz\n", 17);
    expect_open_error(test_path("bad.vmdk"), -EINVAL, "CID 'zz'");
    /* an extent sum beyond 2^63 bytes */
    bad_descriptor("createType=\"custom\"\nRW 10000000000000000 ZERO\nRW 10000000000000000 ZERO\n",
                   -EFBIG, "2^63");
}

TEST(vmdk_descriptor_padded_with_nuls_like_qemu)
{
    char text[1024] = "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
                      "RW 8 FLAT \"p.bin\" 0\n";
    write_file(test_path("p.bin"), "hello", 5);
    write_file(test_path("p.vmdk"), text, sizeof(text));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, test_path("p.vmdk"), NULL, 0));
    uint8_t buf[8];
    if (img)
        CHECK_OK(img_pread(img, buf, 0, 8));
    CHECK(img && !memcmp(buf, "hello\0\0\0", 8));
    img_close(img);
    text[900] = 'x'; /* not text after all */
    write_file(test_path("p.vmdk"), text, sizeof(text));
    expect_open_error(test_path("p.vmdk"), -EINVAL, "not a text file");
}

/* ---- hostile sparse headers and tables ------------------------------------------------------- */

static const char *fresh_sparse(void)
{
    const char *path = test_path("h.vmdk");
    CHECK_OK(create_vmdk(path, 64 * MiB, NULL, NULL));
    return path;
}

TEST(vmdk_hostile_headers)
{
    const char *p;
    p = fresh_sparse();
    patch64(p, 20, 3); /* grainSize */
    expect_open_error(p, -EINVAL, "grain size 3 sectors");
    p = fresh_sparse();
    patch64(p, 20, 1ull << 40);
    expect_open_error(p, -EINVAL, "grain size");
    p = fresh_sparse();
    patch32(p, 44, 4096); /* numGTEsPerGT */
    expect_open_error(p, -EINVAL, "4096 grain table entries");
    p = fresh_sparse();
    patch64(p, 56, 1ull << 40); /* gdOffset */
    expect_open_error(p, -EINVAL, "grain directory at sector");
    p = fresh_sparse();
    patch64(p, 12, 1ull << 50); /* capacity: a directory bigger than the file */
    expect_open_error(p, -EFBIG, "grain directory");
    p = fresh_sparse();
    patch64(p, 12, 1ull << 60);
    expect_open_error(p, -EINVAL, "capacity");
    p = fresh_sparse();
    patch(p, 73, "\n \n\n", 4); /* newline detection */
    expect_open_error(p, -EINVAL, "newline check");
    p = fresh_sparse();
    patch(p, 77, "\x07\x00", 2); /* compressAlgorithm */
    expect_open_error(p, -ENOTSUP, "compressAlgorithm 7");
    p = fresh_sparse();
    patch32(p, 4, 9); /* version */
    expect_open_error(p, -ENOTSUP, "version 9");
    p = fresh_sparse();
    patch64(p, 36, 1ull << 30); /* descriptorSize */
    expect_open_error(p, -EINVAL, "descriptor size");
    p = fresh_sparse();
    patch64(p, 64, 1ull << 30); /* overHead beyond the file */
    expect_open_error(p, -EINVAL, "file truncated");
    p = fresh_sparse();
    truncate(p, 300);
    expect_open_error(p, -EINVAL, "too small");
}

TEST(vmdk_hostile_tables_and_check)
{
    const char *p = fresh_sparse();
    struct img *img = NULL;
    uint8_t buf[65536];
    fill(buf, sizeof(buf), 3);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, buf, 0, sizeof(buf)));
    CHECK_OK(img_pwrite(img, buf, 65536, sizeof(buf)));
    img_close(img);
    uint32_t gd = read32(p, 56);
    uint32_t gt = read32(p, (off_t)gd * 512);
    /* grain 1 now points at grain 0's sectors (overlap), grain 2 beyond the end of the file */
    uint32_t g0 = read32(p, (off_t)gt * 512);
    patch32(p, (off_t)gt * 512 + 4, g0);
    patch32(p, (off_t)gt * 512 + 8, 0x7fffff00);
    /* also patch the redundant copy so only the problems above are reported */
    uint32_t rgd = read32(p, 48);
    uint32_t rgt = read32(p, (off_t)rgd * 512);
    patch32(p, (off_t)rgt * 512 + 4, g0);
    patch32(p, (off_t)rgt * 512 + 8, 0x7fffff00);
    CHECK_OK(img_open(&img, p, "vmdk", 0));
    CHECK(img_pread(img, buf, 2 * 65536, 512) == -EINVAL);
    CHECK(strstr(vs_error_message(), "beyond the end"));
    img_close(img);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 2);
    img_close(img);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_CHECK | IMG_OPEN_RDWR));
    memset(&r, 0, sizeof(r));
    CHECK_OK(img_check(img, &r, IMG_CHECK_FIX_ERRORS));
    CHECK(r.corruptions_fixed == 2);
    img_close(img);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_CHECK));
    memset(&r, 0, sizeof(r));
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 0);
    CHECK_OK(img_pread(img, buf, 0, sizeof(buf)));
    img_close(img);
    /* a grain directory entry pointing beyond the end of the file */
    p = fresh_sparse();
    patch32(p, (off_t)read32(p, 56) * 512, 0x7ffffff0);
    CHECK_OK(img_open(&img, p, "vmdk", 0));
    CHECK(img_pread(img, buf, 0, 512) == -EINVAL);
    CHECK(strstr(vs_error_message(), "grain directory entry 0"));
    img_close(img);
}

TEST(vmdk_stream_footer_checked)
{
    const char *p = test_path("f.vmdk");
    CHECK_OK(create_vmdk(p, 4 * MiB, "subformat=streamOptimized", NULL));
    struct stat st;
    CHECK(stat(p, &st) == 0);
    patch32(p, st.st_size - 1536 + 12, 7); /* footer marker type */
    expect_open_error(p, -EINVAL, "footer");
    CHECK_OK(create_vmdk(p, 4 * MiB, "subformat=streamOptimized", NULL));
    patch32(p, st.st_size - 512 + 12, 3); /* EOS marker */
    expect_open_error(p, -EINVAL, "end-of-stream");
    /* a grain marker whose size field is absurd */
    CHECK_OK(create_vmdk(p, 4 * MiB, "subformat=streamOptimized", NULL));
    struct img *img = NULL;
    uint8_t buf[65536];
    fill(buf, sizeof(buf), 1);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, buf, 0, sizeof(buf)));
    img_close(img);
    patch32(p, 128 * 512 + 8, 0x7fffffff);
    CHECK_OK(img_open(&img, p, "vmdk", 0));
    CHECK(img_pread(img, buf, 0, 512) == -EINVAL);
    CHECK(strstr(vs_error_message(), "invalid size"));
    img_close(img);
}

/* ---- delta links, zeroed grains, compaction -------------------------------------------------- */

static const char *last_warning;
static char warning_buf[512];
static void catch_warning(const char *msg)
{
    snprintf(warning_buf, sizeof(warning_buf), "%s", msg);
    last_warning = warning_buf;
}

TEST(vmdk_delta_link_reads_through_and_checks_cid)
{
    const char *base = test_path("base.vmdk"), *child = test_path("child.vmdk");
    CHECK_OK(create_vmdk(base, 8 * MiB, NULL, NULL));
    uint8_t a[65536], b[4096], back[65536];
    fill(a, sizeof(a), 1);
    fill(b, sizeof(b), 2);
    struct img *img = NULL;
    CHECK_OK(img_open(&img, base, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, a, 0, sizeof(a)));
    img_close(img);
    CHECK_OK(create_vmdk(child, 0, NULL, "base.vmdk"));
    char *text = read_text(child);
    CHECK(text && strstr(text, "parentFileNameHint=\"base.vmdk\""));
    free(text);
    CHECK_OK(img_open(&img, child, NULL, IMG_OPEN_RDWR));
    if (!img)
        return;
    CHECK(img_size(img) == 8 * MiB);
    CHECK(img_backing(img) != NULL);
    CHECK(!strcmp(img_backing_name(img), "base.vmdk"));
    CHECK_OK(img_pwrite(img, b, 1000, sizeof(b))); /* partial grain: the rest from the parent */
    CHECK_OK(img_pread(img, back, 0, sizeof(back)));
    CHECK(!memcmp(back, a, 1000) && !memcmp(back + 1000, b, sizeof(b)) &&
          !memcmp(back + 1000 + sizeof(b), a + 1000 + sizeof(b), sizeof(a) - 1000 - sizeof(b)));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 65536, 65536, &ext));
    CHECK(ext.depth == 1 || !(ext.flags & IMG_STATUS_ALLOCATED));
    img_close(img);
    /* modifying the parent changes its CID: the child warns (once), and still reads */
    CHECK_OK(img_open(&img, base, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, b, 2 * MiB, sizeof(b)));
    img_close(img);
    last_warning = NULL;
    vs_warn_set_handler(catch_warning);
    CHECK_OK(img_open(&img, child, NULL, 0));
    CHECK_OK(img_pread(img, back, 0, 512));
    CHECK(last_warning && strstr(last_warning, "parentCID"));
    vs_warn_set_handler(NULL);
    /* commit into the parent, then the child is empty and reads the same */
    img_close(img);
    CHECK_OK(img_open(&img, child, NULL, IMG_OPEN_RDWR));
    vs_warn_set_handler(catch_warning);
    CHECK_OK(img_commit(img, NULL, false, NULL, NULL));
    CHECK_OK(img_pread(img, back, 0, sizeof(back)));
    CHECK(!memcmp(back + 1000, b, sizeof(b)));
    CHECK_OK(img_block_status_layer(img, 0, 65536, &ext));
    CHECK(!(ext.flags & IMG_STATUS_ALLOCATED));
    vs_warn_set_handler(NULL);
    img_close(img);
}

TEST(vmdk_change_backing_rewrites_descriptor)
{
    const char *base = test_path("b1.vmdk"), *child = test_path("c1.vmdk");
    CHECK_OK(create_vmdk(base, 4 * MiB, NULL, NULL));
    CHECK_OK(create_vmdk(child, 4 * MiB, NULL, NULL));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, child, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_change_backing(img, "b1.vmdk", "vmdk"));
    img_close(img);
    CHECK_OK(img_open(&img, child, "vmdk", 0));
    CHECK(img && img_backing(img) && !strcmp(img_backing_name(img), "b1.vmdk"));
    img_close(img);
    CHECK_OK(img_open(&img, child, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_change_backing(img, NULL, NULL));
    img_close(img);
    char *text = read_text(child);
    CHECK(text && !strstr(text, "parentFileNameHint") && strstr(text, "parentCID=ffffffff"));
    free(text);
}

TEST(vmdk_zeroed_grains)
{
    const char *p = test_path("z.vmdk");
    CHECK_OK(create_vmdk(p, 4 * MiB, "zeroed_grain=on", NULL));
    CHECK(read32(p, 4) == 2 && (read32(p, 8) & 4));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_write_zeroes(img, 65536, 2 * 65536, IMG_ZERO_MAY_UNMAP));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 65536, 2 * 65536, &ext));
    CHECK((ext.flags & IMG_STATUS_ZERO) && (ext.flags & IMG_STATUS_ALLOCATED) &&
          ext.length == 2 * 65536);
    /* writing into a zeroed grain allocates it with zeros around the data */
    uint8_t b[100], back[65536];
    memset(b, 0x5a, sizeof(b));
    CHECK_OK(img_pwrite(img, b, 65536 + 300, sizeof(b)));
    CHECK_OK(img_pread(img, back, 65536, sizeof(back)));
    CHECK(vs_buffer_is_zero(back, 300) && back[300] == 0x5a && vs_buffer_is_zero(back + 400, 1000));
    img_close(img);
}

TEST(vmdk_compact_reclaims_zero_grains)
{
    const char *p = test_path("k.vmdk");
    CHECK_OK(create_vmdk(p, 16 * MiB, NULL, NULL));
    struct img *img = NULL;
    uint8_t *buf = calloc(1, MiB), *back = malloc(MiB);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    CHECK_OK(img_pwrite(img, buf, 0, MiB)); /* 16 allocated zero grains */
    fill(buf, MiB, 4);
    CHECK_OK(img_pwrite(img, buf, 8 * MiB, MiB));
    img_close(img);
    struct stat before, after;
    CHECK(stat(p, &before) == 0);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    struct img_compact res;
    CHECK_OK(img_compact(img, &res));
    CHECK(res.blocks_freed == 16);
    img_close(img);
    CHECK(stat(p, &after) == 0);
    CHECK(after.st_size == before.st_size - MiB);
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_CHECK));
    struct img_check r = {0};
    CHECK_OK(img_check(img, &r, 0));
    CHECK(r.corruptions == 0 && r.allocated_clusters == 16);
    CHECK_OK(img_pread(img, back, 8 * MiB, MiB));
    CHECK(!memcmp(back, buf, MiB));
    CHECK_OK(img_pread(img, back, 0, MiB));
    CHECK(vs_buffer_is_zero(back, MiB));
    img_close(img);
    /* streams can't be compacted: a clear refusal */
    CHECK_OK(create_vmdk(p, 4 * MiB, "subformat=streamOptimized", NULL));
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    CHECK(img_compact(img, &res) == -ENOTSUP);
    img_close(img);
    free(buf);
    free(back);
}

/* ---- concurrency ----------------------------------------------------------------------------- */

struct writer {
    struct img *img;
    int id;
    int rc;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint8_t buf[4096];
    /* every thread writes its own 4 KiB slot of the same grains, out of order */
    for (int i = 63; i >= 0 && !w->rc; i--) {
        memset(buf, w->id + 1, sizeof(buf));
        w->rc = img_pwrite(w->img, buf, (uint64_t)i * 65536 + (uint64_t)w->id * 4096, sizeof(buf));
    }
    return NULL;
}

TEST(vmdk_concurrent_partial_grain_allocation)
{
    const char *p = test_path("t.vmdk");
    CHECK_OK(create_vmdk(p, 8 * MiB, NULL, NULL));
    struct img *img = NULL;
    CHECK_OK(img_open(&img, p, "vmdk", IMG_OPEN_RDWR));
    struct writer w[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct writer){img, i, 0};
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].rc == 0);
    }
    img_close(img);
    CHECK_OK(img_open(&img, p, "vmdk", 0));
    uint8_t buf[65536];
    for (int g = 0; g < 64; g++) {
        CHECK_OK(img_pread(img, buf, (uint64_t)g * 65536, sizeof(buf)));
        for (int id = 0; id < 8; id++)
            CHECK(buf[id * 4096] == id + 1 && buf[id * 4096 + 4095] == id + 1);
        CHECK(vs_buffer_is_zero(buf + 8 * 4096, 8 * 4096));
    }
    img_close(img);
    struct stat st;
    CHECK(stat(p, &st) == 0 && st.st_size <= 64 * 65536 + 2 * 65536);
}

TEST(vmdk_esx_vmfs_descriptors_read_as_flat)
{
    uint8_t *data = malloc(MiB), *back = malloc(MiB);
    fill(data, MiB, 11);
    const char *types[] = {"vmfs", "vmfsThin"};
    for (int i = 0; i < 2; i++) {
        write_file(test_path("esx-flat.vmdk"), data, MiB);
        char desc[512];
        snprintf(desc, sizeof(desc),
                 "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\n"
                 "parentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"%s\"\n\n"
                 "# Extent description\nRW 2048 VMFS \"esx-flat.vmdk\"\n\n# The Disk Data Base\n"
                 "#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.thinProvisioned = \"1\"\n"
                 "ddb.uuid = \"60 00 C2 9a\"\n",
                 types[i]);
        write_file(test_path("esx.vmdk"), desc, strlen(desc));
        struct img *img = NULL;
        CHECK_OK(img_open(&img, test_path("esx.vmdk"), NULL, IMG_OPEN_RDWR));
        if (!img)
            continue;
        CHECK(img_size(img) == MiB);
        CHECK_OK(img_pread(img, back, 0, MiB));
        CHECK(!memcmp(back, data, MiB));
        CHECK_OK(img_pwrite(img, data + 512, 0, 512)); /* also bumps the CID in the descriptor */
        img_close(img);
        char *text = read_text(test_path("esx.vmdk"));
        CHECK(text && !strstr(text, "CID=fffffffe") && strstr(text, "ddb.uuid = \"60 00 C2 9a\"") &&
              strstr(text, "isNativeSnapshot"));
        free(text);
    }
    free(data);
    free(back);
}
