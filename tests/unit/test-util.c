/*
 * tests/unit/test-util.c — unit tests of vessel/util.h: size parsing and qemu-style size printing,
 * -o option lists (escaping, typed getters, unused-option detection), the per-thread error
 * message with its prefixing, warnings, full-length I/O and vs_buffer_is_zero at every length and
 * alignment that matters to its word-at-a-time fast path.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "vessel/util.h"

static bool message_contains(const char *needle)
{
    const char *m = vs_error_message();
    if (!m || !strstr(m, needle)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", m ? m : "(null)", needle);
        return false;
    }
    return true;
}

/* ---- sizes ----------------------------------------------------------------------------------- */

static bool parses_to(const char *text, uint64_t want)
{
    uint64_t got = 12345;
    int rc = vs_parse_size(text, &got);
    if (rc != 0 || got != want) {
        fprintf(stderr, "  vs_parse_size(\"%s\") -> %d, %llu; want %llu\n", text, rc,
                (unsigned long long)got, (unsigned long long)want);
        return false;
    }
    return true;
}

static bool rejects_size(const char *text)
{
    uint64_t got = 777;
    vs_error_clear();
    int rc = vs_parse_size(text, &got);
    if (rc != -EINVAL) {
        fprintf(stderr, "  vs_parse_size(\"%s\") -> %d (%llu); want -EINVAL\n", text, rc,
                (unsigned long long)got);
        return false;
    }
    return true;
}

TEST(parse_size_plain_numbers)
{
    CHECK(parses_to("0", 0));
    CHECK(parses_to("1", 1));
    CHECK(parses_to("512", 512));
    CHECK(parses_to("1048576", 1048576));
    CHECK(parses_to("18446744073709551615", UINT64_MAX));
}

TEST(parse_size_binary_suffixes)
{
    CHECK(parses_to("64k", 64 * 1024));
    CHECK(parses_to("64K", 64 * 1024));
    CHECK(parses_to("100M", 100ULL << 20));
    CHECK(parses_to("100m", 100ULL << 20));
    CHECK(parses_to("2G", 2ULL << 30));
    CHECK(parses_to("4T", 4ULL << 40));
    CHECK(parses_to("4t", 4ULL << 40));
    CHECK(parses_to("1P", 1ULL << 50));
    CHECK(parses_to("1E", 1ULL << 60));
    CHECK(parses_to("15E", 15ULL << 60));
}

TEST(parse_size_trailing_b_and_ib)
{
    CHECK(parses_to("512B", 512));
    CHECK(parses_to("512b", 512));
    CHECK(parses_to("1KB", 1024));
    CHECK(parses_to("1kB", 1024));
    CHECK(parses_to("1KiB", 1024));
    CHECK(parses_to("1kib", 1024));
    CHECK(parses_to("3MiB", 3ULL << 20));
    CHECK(parses_to("2GiB", 2ULL << 30));
    CHECK(parses_to("2GB", 2ULL << 30));
}

TEST(parse_size_fractions)
{
    CHECK(parses_to("1.5G", 3ULL << 29));
    CHECK(parses_to("0.5k", 512));
    CHECK(parses_to("1.5M", 3ULL << 19));
    CHECK(parses_to("2.25T", 9ULL << 38));
}

TEST(parse_size_rejects_garbage)
{
    CHECK(rejects_size(""));
    CHECK(rejects_size("abc"));
    CHECK(rejects_size("12x"));
    CHECK(rejects_size("12kx"));
    CHECK(rejects_size("k"));
    CHECK(rejects_size("-1"));
    CHECK(rejects_size("-5M"));
    CHECK(rejects_size("1..5G"));
    CHECK(rejects_size("1Q"));
}

TEST(parse_size_rejects_overflow)
{
    CHECK(rejects_size("16E"));
    CHECK(rejects_size("18446744073709551616"));
    CHECK(rejects_size("99999999999999999999999"));
    CHECK(rejects_size("17179869184G")); /* 2^34 GiB = 2^64 */
}

TEST(parse_size_error_names_the_text)
{
    uint64_t v = 0;
    vs_error_clear();
    CHECK(vs_parse_size("12zz", &v) == -EINVAL);
    CHECK(message_contains("12zz"));
}

static bool formats_to(uint64_t bytes, const char *want)
{
    char buf[64];
    memset(buf, 'X', sizeof(buf));
    vs_format_size(bytes, buf, sizeof(buf));
    if (strcmp(buf, want) != 0) {
        fprintf(stderr, "  vs_format_size(%llu) -> \"%s\"; want \"%s\"\n",
                (unsigned long long)bytes, buf, want);
        return false;
    }
    return true;
}

TEST(format_size_like_qemu_img)
{
    CHECK(formats_to(0, "0 B"));
    CHECK(formats_to(512, "512 B"));
    CHECK(formats_to(999, "999 B"));
    CHECK(formats_to(1024, "1 KiB"));
    CHECK(formats_to(192 * 1024, "192 KiB"));
    CHECK(formats_to(3ULL << 19, "1.5 MiB"));
    CHECK(formats_to(64ULL << 20, "64 MiB"));
    CHECK(formats_to(1ULL << 30, "1 GiB"));
    CHECK(formats_to(4ULL << 40, "4 TiB"));
    CHECK(formats_to(1ULL << 50, "1 PiB"));
    /* qemu prints three significant digits and moves up a unit from 1000 on:
     * `qemu-img info` of a 1024000-byte raw says "virtual size: 0.977 MiB" */
    CHECK(formats_to(1024000, "0.977 MiB"));
    CHECK(formats_to(1000, "0.977 KiB"));
    CHECK(formats_to((64ULL << 20) + 12345, "64 MiB"));
    CHECK(formats_to(1234567, "1.18 MiB"));
}

TEST(format_size_truncates_safely)
{
    char buf[4];
    memset(buf, 'X', sizeof(buf));
    vs_format_size(1ULL << 30, buf, sizeof(buf));
    CHECK(memchr(buf, '\0', sizeof(buf)) != NULL);
    CHECK(strncmp(buf, "1 G", 3) == 0);
}

TEST(size_round_trip)
{
    /* every power of two a user types with a suffix reads back as that value */
    const char *units = "KMGTPE";
    for (int u = 0; u < 6; u++) {
        for (int n = 1; n < 1000; n *= 3) {
            char text[32];
            snprintf(text, sizeof(text), "%d%c", n, units[u]);
            uint64_t want = (uint64_t)n << (10 * (u + 1));
            if (u == 5 && n > 15)
                continue;
            CHECK(parses_to(text, want));
        }
    }
}

/* ---- option lists ---------------------------------------------------------------------------- */

TEST(opts_parse_basic)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "cluster_size=64k,compat=1.1"));
    CHECK(o.count == 2);
    const char *v = vs_opts_take(&o, "compat");
    CHECK(v && strcmp(v, "1.1") == 0);
    v = vs_opts_take(&o, "cluster_size");
    CHECK(v && strcmp(v, "64k") == 0);
    CHECK(vs_opts_take(&o, "absent") == NULL);
    CHECK_OK(vs_opts_check_all_used(&o, "qcow2"));
    vs_opts_free(&o);
}

TEST(opts_parse_appends)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "a=1"));
    CHECK_OK(vs_opts_parse(&o, "b=2"));
    const char *a = vs_opts_take(&o, "a"), *b = vs_opts_take(&o, "b");
    CHECK(a && strcmp(a, "1") == 0);
    CHECK(b && strcmp(b, "2") == 0);
    vs_opts_free(&o);
}

TEST(opts_parse_escaped_comma)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "backing_file=a,,b.qcow2,backing_fmt=qcow2"));
    const char *v = vs_opts_take(&o, "backing_file");
    CHECK(v && strcmp(v, "a,b.qcow2") == 0);
    v = vs_opts_take(&o, "backing_fmt");
    CHECK(v && strcmp(v, "qcow2") == 0);
    CHECK(o.count == 2);
    vs_opts_free(&o);

    struct vs_opts p = {0};
    CHECK_OK(vs_opts_parse(&p, "x=,,,,"));
    v = vs_opts_take(&p, "x");
    CHECK(v && strcmp(v, ",,") == 0);
    vs_opts_free(&p);
}

TEST(opts_value_may_contain_equals)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "backing_file=dir/a=b.img"));
    const char *v = vs_opts_take(&o, "backing_file");
    CHECK(v && strcmp(v, "dir/a=b.img") == 0);
    vs_opts_free(&o);
}

TEST(opts_set_adds_and_replaces)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_set(&o, "k", "v1"));
    CHECK_OK(vs_opts_set(&o, "k", "v2"));
    CHECK_OK(vs_opts_set(&o, "j", "w"));
    CHECK(o.count == 2);
    const char *v = vs_opts_take(&o, "k");
    CHECK(v && strcmp(v, "v2") == 0);
    vs_opts_free(&o);
}

TEST(opts_take_null_list)
{
    uint64_t u = 9;
    bool b = true;
    CHECK(vs_opts_take(NULL, "x") == NULL);
    CHECK(vs_opts_take_size(NULL, "x", &u) == 0 && u == 9);
    CHECK(vs_opts_take_bool(NULL, "x", &b) == 0 && b == true);
    CHECK(vs_opts_take_uint(NULL, "x", &u) == 0 && u == 9);
}

TEST(opts_unused_option_is_named)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "compat=1.1,foo=bar"));
    CHECK(vs_opts_take(&o, "compat") != NULL);
    vs_error_clear();
    CHECK(vs_opts_check_all_used(&o, "qcow2") == -EINVAL);
    CHECK(message_contains("qcow2"));
    CHECK(message_contains("foo"));
    vs_opts_free(&o);
}

TEST(opts_typed_size)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "cluster_size=64k,bad=12q"));
    uint64_t v = 0;
    CHECK_OK(vs_opts_take_size(&o, "cluster_size", &v));
    CHECK(v == 65536);
    v = 42;
    CHECK_OK(vs_opts_take_size(&o, "missing", &v));
    CHECK(v == 42);
    vs_error_clear();
    CHECK(vs_opts_take_size(&o, "bad", &v) == -EINVAL);
    CHECK(message_contains("bad"));
    vs_opts_free(&o);
}

TEST(opts_typed_bool)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "a=on,b=off,c=true,d=false,e=maybe"));
    bool v = false;
    CHECK_OK(vs_opts_take_bool(&o, "a", &v));
    CHECK(v == true);
    CHECK_OK(vs_opts_take_bool(&o, "b", &v));
    CHECK(v == false);
    CHECK_OK(vs_opts_take_bool(&o, "c", &v));
    CHECK(v == true);
    CHECK_OK(vs_opts_take_bool(&o, "d", &v));
    CHECK(v == false);
    v = true;
    CHECK_OK(vs_opts_take_bool(&o, "zz", &v));
    CHECK(v == true);
    vs_error_clear();
    CHECK(vs_opts_take_bool(&o, "e", &v) == -EINVAL);
    CHECK(message_contains("e"));
    CHECK(message_contains("maybe"));
    vs_opts_free(&o);
}

TEST(opts_typed_uint)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "refcount_bits=16,neg=-1,word=x,big=99999999999999999999999"));
    uint64_t v = 0;
    CHECK_OK(vs_opts_take_uint(&o, "refcount_bits", &v));
    CHECK(v == 16);
    vs_error_clear();
    CHECK(vs_opts_take_uint(&o, "neg", &v) == -EINVAL);
    CHECK(message_contains("neg"));
    CHECK(vs_opts_take_uint(&o, "word", &v) == -EINVAL);
    CHECK(message_contains("word"));
    CHECK(vs_opts_take_uint(&o, "big", &v) == -EINVAL);
    vs_opts_free(&o);
}

TEST(opts_taken_marks_used)
{
    struct vs_opts o = {0};
    CHECK_OK(vs_opts_parse(&o, "a=1,b=2"));
    (void)vs_opts_take(&o, "a");
    int used = 0;
    for (size_t i = 0; i < o.count; i++)
        used += o.items[i].used;
    CHECK(used == 1);
    CHECK(vs_opts_check_all_used(&o, "raw") == -EINVAL);
    CHECK(message_contains("b"));
    vs_opts_free(&o);
}

/* ---- errors ---------------------------------------------------------------------------------- */

TEST(error_sets_message_and_returns_code)
{
    CHECK(vs_error(-EINVAL, "cluster_bits %d out of range", 40) == -EINVAL);
    CHECK(strcmp(vs_error_message(), "cluster_bits 40 out of range") == 0);
    vs_error_clear();
    CHECK(strcmp(vs_error_message(), "") == 0);
}

TEST(error_errno_appends_strerror)
{
    CHECK(vs_error_errno(-ENOENT, "open '%s'", "x.qcow2") == -ENOENT);
    CHECK(strcmp(vs_error_message(), "open 'x.qcow2': No such file or directory") == 0);
}

TEST(error_prefix_builds_one_line)
{
    vs_error(-EINVAL, "L1 table: offset beyond end of file");
    CHECK(vs_error_prefix(-EINVAL, "%s", "disk.qcow2") == -EINVAL);
    CHECK(strcmp(vs_error_message(), "disk.qcow2: L1 table: offset beyond end of file") == 0);
    CHECK(vs_error_prefix(-EINVAL, "top.qcow2: backing") == -EINVAL);
    CHECK(strcmp(vs_error_message(),
                 "top.qcow2: backing: disk.qcow2: L1 table: offset beyond end of file") == 0);
    CHECK(strchr(vs_error_message(), '\n') == NULL);
}

TEST(error_prefix_without_message_uses_strerror)
{
    vs_error_clear();
    CHECK(vs_error_prefix(-ENOSPC, "out.qcow2") == -ENOSPC);
    CHECK(strcmp(vs_error_message(), "out.qcow2: No space left on device") == 0);
}

TEST(error_long_messages_are_bounded)
{
    char big[10000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(vs_error(-EINVAL, "%s", big) == -EINVAL);
    for (int i = 0; i < 50; i++)
        CHECK(vs_error_prefix(-EINVAL, "%s", big) == -EINVAL);
    const char *m = vs_error_message();
    CHECK(m != NULL);
    CHECK(strlen(m) > 0);
}

TEST(error_prefix_can_use_current_message_as_argument)
{
    /* callers sometimes pass the message itself; must not be a use-after-free/overlap */
    vs_error(-EIO, "inner");
    char copy[64];
    snprintf(copy, sizeof(copy), "%s", vs_error_message());
    CHECK(vs_error_prefix(-EIO, "outer(%s)", vs_error_message()) == -EIO);
    CHECK(strcmp(vs_error_message(), "outer(inner): inner") == 0);
}

static void *thread_sets_error(void *arg)
{
    (void)arg;
    vs_error(-EIO, "from thread");
    return strcmp(vs_error_message(), "from thread") == 0 ? (void *)1 : NULL;
}

TEST(error_message_is_per_thread)
{
    vs_error(-EINVAL, "from main");
    pthread_t t;
    void *ok = NULL;
    CHECK(pthread_create(&t, NULL, thread_sets_error, NULL) == 0);
    CHECK(pthread_join(t, &ok) == 0);
    CHECK(ok == (void *)1);
    CHECK(strcmp(vs_error_message(), "from main") == 0);
}

static char warned[256];
static int warn_count;
static void warn_handler(const char *msg)
{
    snprintf(warned, sizeof(warned), "%s", msg);
    warn_count++;
}

TEST(warn_goes_to_handler)
{
    warn_count = 0;
    vs_warn_set_handler(warn_handler);
    vs_warn("refcount %d leaked", 3);
    vs_warn_set_handler(NULL);
    CHECK(warn_count == 1);
    CHECK(strstr(warned, "refcount 3 leaked") != NULL);
}

/* ---- buffer_is_zero -------------------------------------------------------------------------- */

TEST(buffer_is_zero_empty_and_small)
{
    static const uint8_t z[64];
    CHECK(vs_buffer_is_zero(z, 0));
    for (size_t len = 1; len <= 64; len++)
        CHECK(vs_buffer_is_zero(z, len));
}

TEST(buffer_is_zero_every_position_length_alignment)
{
    enum { MAX = 300 };
    uint8_t *buf = calloc(1, MAX + 64);
    CHECK(buf != NULL);
    if (!buf)
        return;
    int bad = 0;
    for (size_t align = 0; align < 16; align++) {
        for (size_t len = 1; len <= MAX; len++) {
            uint8_t *p = buf + align;
            if (!vs_buffer_is_zero(p, len))
                bad++;
            for (size_t pos = 0; pos < len; pos++) {
                p[pos] = (uint8_t)(1u << (pos % 8));
                if (vs_buffer_is_zero(p, len))
                    bad++;
                p[pos] = 0;
            }
            /* a non-zero byte just outside the range must not count */
            p[len] = 0xff;
            if (align > 0)
                p[-1] = 0xff;
            if (!vs_buffer_is_zero(p, len))
                bad++;
            p[len] = 0;
            if (align > 0)
                p[-1] = 0;
        }
    }
    if (bad)
        fprintf(stderr, "  %d wrong answers\n", bad);
    CHECK(bad == 0);
    free(buf);
}

TEST(buffer_is_zero_large)
{
    size_t len = 4u << 20;
    uint8_t *buf = calloc(1, len);
    CHECK(buf != NULL);
    if (!buf)
        return;
    CHECK(vs_buffer_is_zero(buf, len));
    const size_t spots[] = {0, 1, 4095, 4096, 65535, len / 2, len - 4097, len - 2, len - 1};
    for (size_t i = 0; i < VS_ARRAY_SIZE(spots); i++) {
        buf[spots[i]] = 0x80;
        CHECK(!vs_buffer_is_zero(buf, len));
        buf[spots[i]] = 0;
    }
    CHECK(vs_buffer_is_zero(buf, len));
    free(buf);
}

/* ---- full-length I/O, allocation, misc ------------------------------------------------------- */

TEST(pread_full_zero_fills_past_eof)
{
    int fd = open(test_path("f"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    char data[100];
    memset(data, 'x', sizeof(data));
    CHECK_OK(vs_pwrite_full(fd, data, sizeof(data), 1000));
    char out[300];
    memset(out, 'y', sizeof(out));
    CHECK_OK(vs_pread_full(fd, out, sizeof(out), 950));
    bool good = true;
    for (int i = 0; i < 300; i++) {
        char want = (i >= 50 && i < 150) ? 'x' : 0;
        if (out[i] != want)
            good = false;
    }
    CHECK(good);
    memset(out, 'y', sizeof(out));
    CHECK_OK(vs_pread_full(fd, out, sizeof(out), 1 << 20));
    CHECK(vs_buffer_is_zero(out, sizeof(out)));
    close(fd);
}

TEST(pwrite_full_bad_fd)
{
    char b[8] = {0};
    CHECK(vs_pwrite_full(-1, b, sizeof(b), 0) == -EBADF);
    CHECK(vs_pread_full(-1, b, sizeof(b), 0) == -EBADF);
}

TEST(malloc_absurd_size_fails_cleanly)
{
    vs_error_clear();
    void *p = vs_malloc(SIZE_MAX - 10);
    CHECK(p == NULL);
    CHECK(strlen(vs_error_message()) > 0);
    p = vs_calloc(SIZE_MAX / 2, 4); /* overflowing product */
    CHECK(p == NULL);
    void *q = vs_malloc(100);
    CHECK(q != NULL);
    free(q);
    q = vs_calloc(10, 10);
    CHECK(q != NULL && vs_buffer_is_zero(q, 100));
    free(q);
    q = vs_aligned_alloc(4096, 8192);
    CHECK(q != NULL && ((uintptr_t)q & 4095) == 0);
    free(q);
}

TEST(strdup_and_asprintf)
{
    char *s = vs_strdup("hello");
    CHECK(s && strcmp(s, "hello") == 0);
    free(s);
    s = vs_asprintf("%s-%d", "a", 42);
    CHECK(s && strcmp(s, "a-42") == 0);
    free(s);
}

TEST(now_is_monotonic)
{
    uint64_t a = vs_now_ns();
    usleep(2000);
    uint64_t b = vs_now_ns();
    CHECK(b > a);
    CHECK(b - a >= 1000000);
}

TEST(align_macros)
{
    CHECK(VS_ALIGN_UP(0, 512) == 0);
    CHECK(VS_ALIGN_UP(1, 512) == 512);
    CHECK(VS_ALIGN_UP(512, 512) == 512);
    CHECK(VS_ALIGN_DOWN(1023, 512) == 512);
    CHECK(VS_ALIGN_UP((1ULL << 42) + 1, 1ULL << 21) == (1ULL << 42) + (1ULL << 21));
    CHECK(VS_DIV_ROUND_UP(10, 3) == 4);
    CHECK(VS_MIN(3, 4) == 3 && VS_MAX(3, 4) == 4);
}

TEST(progress_disabled_is_noop)
{
    struct vs_progress p;
    vs_progress_init(&p, false, stdout);
    vs_progress_update(&p, 5, 10);
    vs_progress_finish(&p);
    CHECK(true);
}

TEST(progress_enabled_on_file_does_not_crash)
{
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f)
        return;
    struct vs_progress p;
    vs_progress_init(&p, true, f);
    vs_progress_update(&p, 0, 100);
    vs_progress_update(&p, 50, 100);
    vs_progress_update(&p, 100, 100);
    vs_progress_update(&p, 1, 0); /* total 0 must not divide by zero */
    vs_progress_finish(&p);
    fclose(f); /* drawing (or not, on a non-terminal) must not crash */
}
