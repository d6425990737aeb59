/*
 * tests/unit/test-img.c — the image engine's core with the raw format: create, I/O at unaligned
 * offsets, bounds, block status over holes, locking between writers, read-only enforcement,
 * option checking and format probing.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "vessel/img.h"

static int create_raw(const char *path, uint64_t size, const char *opts_text)
{
    struct vs_opts opts = {0};
    if (opts_text && vs_opts_parse(&opts, opts_text))
        return -EINVAL;
    struct img_create_params p = {
        .filename = path, .format = "raw", .size = size, .size_given = true, .opts = &opts};
    int rc = img_create(&p);
    vs_opts_free(&opts);
    return rc;
}

TEST(raw_create_is_sparse)
{
    const char *path = test_path("a.raw");
    CHECK_OK(create_raw(path, 64 << 20, NULL));
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK(st.st_size == 64 << 20);
    CHECK(st.st_blocks == 0);
}

TEST(raw_create_preallocation_full_allocates)
{
    const char *path = test_path("full.raw");
    CHECK_OK(create_raw(path, 4 << 20, "preallocation=full"));
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK(st.st_blocks * 512 >= 4 << 20);
    CHECK(create_raw(test_path("bad.raw"), 1 << 20, "preallocation=maybe") == -EINVAL);
    CHECK(strstr(vs_error_message(), "maybe") != NULL);
}

TEST(raw_create_unknown_option_is_refused)
{
    const char *path = test_path("opt.raw");
    CHECK(create_raw(path, 1 << 20, "cluster_size=64k") == -EINVAL);
    CHECK(strstr(vs_error_message(), "cluster_size") != NULL);
    CHECK(access(path, F_OK) != 0);
}

TEST(raw_unaligned_io_round_trip)
{
    const char *path = test_path("io.raw");
    CHECK_OK(create_raw(path, 1 << 20, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "raw", IMG_OPEN_RDWR));
    uint8_t buf[5000], back[5000];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 7 + 3);
    CHECK_OK(img_pwrite(img, buf, 12345, sizeof(buf)));
    CHECK_OK(img_pread(img, back, 12345, sizeof(back)));
    CHECK(memcmp(buf, back, sizeof(buf)) == 0);
    /* beyond the end is an error, not a short read */
    CHECK(img_pread(img, back, (1 << 20) - 10, 20) == -EINVAL);
    CHECK(strstr(vs_error_message(), "io.raw") != NULL);
    CHECK(img_size(img) == 1 << 20);
    CHECK(strcmp(img_format(img), "raw") == 0);
    CHECK_OK(img_close(img));
}

TEST(raw_block_status_sees_holes)
{
    const char *path = test_path("holes.raw");
    CHECK_OK(create_raw(path, 8 << 20, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "raw", IMG_OPEN_RDWR));
    uint8_t buf[65536];
    memset(buf, 0xab, sizeof(buf));
    CHECK_OK(img_pwrite(img, buf, 4 << 20, sizeof(buf)));
    CHECK_OK(img_flush(img));
    struct img_extent ext;
    CHECK_OK(img_block_status(img, 0, 8 << 20, &ext));
    CHECK(ext.flags & IMG_STATUS_ZERO);
    CHECK(ext.length == 4 << 20);
    CHECK_OK(img_block_status(img, 4 << 20, 4 << 20, &ext));
    CHECK(ext.flags & IMG_STATUS_DATA);
    CHECK(ext.flags & IMG_STATUS_OFFSET);
    CHECK(ext.host_offset == 4 << 20);
    CHECK(ext.length >= sizeof(buf));
    /* write_zeroes with unmap punches the data away again */
    CHECK_OK(img_write_zeroes(img, 4 << 20, sizeof(buf), IMG_ZERO_MAY_UNMAP));
    CHECK_OK(img_pread(img, buf, 4 << 20, sizeof(buf)));
    CHECK(vs_buffer_is_zero(buf, sizeof(buf)));
    CHECK_OK(img_close(img));
}

TEST(two_writers_are_refused_readers_share)
{
    const char *path = test_path("lock.raw");
    CHECK_OK(create_raw(path, 1 << 20, NULL));
    struct img *w, *w2, *r1, *r2;
    CHECK_OK(img_open(&r1, path, "raw", 0));
    CHECK_OK(img_open(&r2, path, "raw", 0));
    CHECK(img_open(&w, path, "raw", IMG_OPEN_RDWR) == -EBUSY);
    CHECK(strstr(vs_error_message(), "lock.raw") != NULL);
    img_close(r1);
    img_close(r2);
    CHECK_OK(img_open(&w, path, "raw", IMG_OPEN_RDWR));
    CHECK(img_open(&w2, path, "raw", IMG_OPEN_RDWR) == -EBUSY);
    CHECK(img_open(&r1, path, "raw", 0) == -EBUSY);
    /* -U: force share for inspection */
    CHECK_OK(img_open(&r1, path, "raw", IMG_OPEN_NO_LOCK));
    img_close(r1);
    img_close(w);
}

TEST(read_only_open_refuses_writes)
{
    const char *path = test_path("ro.raw");
    CHECK_OK(create_raw(path, 1 << 20, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, 0));
    CHECK(strcmp(img_format(img), "raw") == 0);
    uint8_t b[512] = {1};
    CHECK(img_pwrite(img, b, 0, sizeof(b)) == -EROFS);
    CHECK(strstr(vs_error_message(), "read-only") != NULL);
    img_close(img);
}

TEST(missing_file_and_unknown_format_are_clear)
{
    struct img *img;
    CHECK(img_open(&img, test_path("nope.raw"), NULL, 0) == -ENOENT);
    CHECK(strstr(vs_error_message(), "nope.raw") != NULL);
    CHECK_OK(create_raw(test_path("x.raw"), 4096, NULL));
    CHECK(img_open(&img, test_path("x.raw"), "qcow9", 0) == -EINVAL);
    CHECK(strstr(vs_error_message(), "qcow9") != NULL);
    CHECK(img_open(&img, test_dir(), NULL, 0) < 0);
}

TEST(resize_grow_and_guarded_shrink)
{
    const char *path = test_path("rs.raw");
    CHECK_OK(create_raw(path, 1 << 20, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, "raw", IMG_OPEN_RDWR));
    CHECK_OK(img_resize(img, 2 << 20, 0, NULL));
    CHECK(img_size(img) == 2 << 20);
    CHECK(img_resize(img, 1 << 20, 0, NULL) == -EINVAL);
    CHECK(strstr(vs_error_message(), "--shrink") != NULL);
    CHECK_OK(img_resize(img, 1 << 20, IMG_RESIZE_SHRINK, NULL));
    CHECK(img_size(img) == 1 << 20);
    img_close(img);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size == 1 << 20);
}

TEST(info_json_has_qemu_keys)
{
    const char *path = test_path("info.raw");
    CHECK_OK(create_raw(path, 3 << 20, NULL));
    struct img *img;
    CHECK_OK(img_open(&img, path, NULL, 0));
    struct json_object *o;
    CHECK_OK(img_info_json(img, false, &o));
    struct json_object *v;
    CHECK(json_object_object_get_ex(o, "virtual-size", &v) && json_object_get_int64(v) == 3 << 20);
    CHECK(json_object_object_get_ex(o, "format", &v) &&
          !strcmp(json_object_get_string(v), "raw"));
    CHECK(json_object_object_get_ex(o, "actual-size", &v));
    json_object_put(o);
    img_close(img);
}
