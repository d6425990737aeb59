/*
 * lib/util/misc.c — full-length I/O, allocation that fails cleanly, clocks, zero detection.
 *
 * Allocation sizes often come from files users hand us; vs_malloc refuses absurd sizes with a
 * message instead of letting a hostile header exhaust memory.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vessel/util.h"

/* No single allocation of vessel's is legitimately larger than this. */
#define VS_ALLOC_MAX (4ULL << 30)

int vs_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {
            memset(p, 0, len);
            return 0;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int vs_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ENOSPC;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

void *vs_malloc(size_t size)
{
    if (size > VS_ALLOC_MAX) {
        vs_error(-ENOMEM, "refusing to allocate %zu bytes", size);
        return NULL;
    }
    void *p = malloc(size ? size : 1);
    if (!p)
        vs_error(-ENOMEM, "out of memory allocating %zu bytes", size);
    return p;
}

void *vs_calloc(size_t n, size_t size)
{
    if (size && n > VS_ALLOC_MAX / size) {
        vs_error(-ENOMEM, "refusing to allocate %zu x %zu bytes", n, size);
        return NULL;
    }
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        vs_error(-ENOMEM, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *vs_aligned_alloc(size_t align, size_t size)
{
    if (size > VS_ALLOC_MAX) {
        vs_error(-ENOMEM, "refusing to allocate %zu bytes", size);
        return NULL;
    }
    void *p = NULL;
    if (posix_memalign(&p, align, size ? size : align)) {
        vs_error(-ENOMEM, "out of memory allocating %zu bytes", size);
        return NULL;
    }
    return p;
}

char *vs_strdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        vs_error(-ENOMEM, "out of memory");
    return d;
}

char *vs_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        vs_error(-ENOMEM, "out of memory");
        return NULL;
    }
    return s;
}

uint64_t vs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

bool vs_buffer_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    /* check the head byte-wise until aligned, then 64 bytes at a time */
    while (len && ((uintptr_t)p & 7)) {
        if (*p)
            return false;
        p++;
        len--;
    }
    const uint64_t *w = (const uint64_t *)(const void *)p;
    while (len >= 64) {
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
        w += 8;
        len -= 64;
    }
    p = (const uint8_t *)w;
    while (len--) {
        if (*p++)
            return false;
    }
    return true;
}
