/*
 * lib/img/vhd-common.c — shared helpers of the VHD, VHDX and VDI drivers (see vhd-common.h).
 *
 * CRC-32C is a small table-driven implementation here on purpose: zlib's crc32 is the IEEE
 * polynomial, not Castagnoli, and no library in vessel's dependency set exposes CRC-32C
 * conveniently; 1 KiB of table computed once is all VHDX's header and log checksums need.
 */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "img/driver.h"
#include "img/vhd-common.h"
#include "vessel/util.h"

char *vhd_utf16_to_utf8(const uint8_t *src, size_t len, bool big_endian)
{
    size_t units = len / 2;
    char *out = vs_malloc(units * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < units; i++) {
        uint32_t c = big_endian ? (uint32_t)(src[2 * i] << 8 | src[2 * i + 1])
                                : (uint32_t)(src[2 * i + 1] << 8 | src[2 * i]);
        if (c == 0)
            break;
        if (c >= 0xd800 && c < 0xdc00) {
            if (i + 1 >= units)
                goto bad;
            uint32_t d = big_endian ? (uint32_t)(src[2 * i + 2] << 8 | src[2 * i + 3])
                                    : (uint32_t)(src[2 * i + 3] << 8 | src[2 * i + 2]);
            if (d < 0xdc00 || d >= 0xe000)
                goto bad;
            c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
            i++;
        } else if (c >= 0xdc00 && c < 0xe000) {
            goto bad;
        }
        if (c < 0x80) {
            out[o++] = (char)c;
        } else if (c < 0x800) {
            out[o++] = (char)(0xc0 | c >> 6);
            out[o++] = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            out[o++] = (char)(0xe0 | c >> 12);
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (c & 0x3f));
        } else {
            /* 4 bytes for 2 units: still within units * 3 */
            out[o++] = (char)(0xf0 | c >> 18);
            out[o++] = (char)(0x80 | ((c >> 12) & 0x3f));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (c & 0x3f));
        }
    }
    out[o] = 0;
    return out;
bad:
    free(out);
    vs_error(-EINVAL, "malformed UTF-16 text (unpaired surrogate)");
    return NULL;
}

static void vhd_put16(uint8_t *p, uint32_t v, bool big_endian)
{
    p[big_endian ? 0 : 1] = (uint8_t)(v >> 8);
    p[big_endian ? 1 : 0] = (uint8_t)v;
}

int vhd_utf8_to_utf16(const char *src, uint8_t *dst, size_t cap, bool big_endian)
{
    const uint8_t *s = (const uint8_t *)src;
    size_t o = 0;
    while (*s) {
        uint32_t c;
        int n;
        if (*s < 0x80) {
            c = *s;
            n = 0;
        } else if ((*s & 0xe0) == 0xc0) {
            c = *s & 0x1f;
            n = 1;
        } else if ((*s & 0xf0) == 0xe0) {
            c = *s & 0x0f;
            n = 2;
        } else if ((*s & 0xf8) == 0xf0) {
            c = *s & 0x07;
            n = 3;
        } else {
            return -EINVAL;
        }
        s++;
        for (int i = 0; i < n; i++, s++) {
            if ((*s & 0xc0) != 0x80)
                return -EINVAL;
            c = c << 6 | (*s & 0x3f);
        }
        if (c >= 0x10000) {
            if (o + 4 > cap)
                return -EINVAL;
            c -= 0x10000;
            vhd_put16(dst + o, 0xd800 + (c >> 10), big_endian);
            vhd_put16(dst + o + 2, 0xdc00 + (c & 0x3ff), big_endian);
            o += 4;
        } else {
            if (o + 2 > cap)
                return -EINVAL;
            vhd_put16(dst + o, c, big_endian);
            o += 2;
        }
    }
    return (int)o;
}

void vhd_guid_generate(uint8_t guid[16])
{
    size_t got = 0;
    while (got < 16) {
        ssize_t n = getrandom(guid + got, 16 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < 16) { /* no entropy source: time and pid still make collisions unlikely */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
        for (int i = 0; i < 16; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            guid[i] = (uint8_t)(x >> 56);
        }
    }
    guid[6] = (uint8_t)((guid[6] & 0x0f) | 0x40);
    guid[8] = (uint8_t)((guid[8] & 0x3f) | 0x80);
}

void vhd_guid_format(const uint8_t g[16], char buf[37])
{
    snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", g[0],
             g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13],
             g[14], g[15]);
}

static uint32_t vhd_crc32c_table[256];
static pthread_once_t vhd_crc32c_once = PTHREAD_ONCE_INIT;

static void vhd_crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        vhd_crc32c_table[i] = c;
    }
}

uint32_t vhd_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&vhd_crc32c_once, vhd_crc32c_init);
    const uint8_t *p = buf;
    crc = ~crc;
    while (len--)
        crc = vhd_crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

void vhd_path_from_windows(char *path)
{
    for (char *p = path; *p; p++)
        if (*p == '\\')
            *p = '/';
    while (path[0] == '.' && path[1] == '/')
        memmove(path, path + 2, strlen(path + 2) + 1);
}

char *vhd_relative_path(const char *from_dir, const char *to)
{
    /* longest common prefix that ends at a directory boundary */
    size_t common = 0;
    for (size_t i = 0;; i++) {
        bool from_end = from_dir[i] == 0 || from_dir[i] == '/';
        bool to_end = to[i] == '/';
        if (from_end && to_end)
            common = i;
        if (from_dir[i] == 0 || to[i] == 0 || from_dir[i] != to[i])
            break;
    }
    if (!strcmp(from_dir, "/"))
        common = 0;
    size_t ups = 0;
    for (const char *p = from_dir + common; *p; p++)
        if (*p == '/' && p[1] && p[1] != '/')
            ups++;
    size_t len = ups * 3 + strlen(to + common) + 1;
    char *out = vs_malloc(len);
    if (!out)
        return NULL;
    out[0] = 0;
    for (size_t i = 0; i < ups; i++)
        strcat(out, "../");
    strcat(out, to + common + 1);
    return out;
}

int vhd_find_parent(const char *child, const char *const *candidates, size_t count, char **found)
{
    const char *slash = strrchr(child, '/');
    for (size_t i = 0; i < count; i++) {
        const char *c = candidates[i];
        if (!c || !c[0])
            continue;
        char *path = (c[0] == '/' || !slash)
                         ? vs_strdup(c)
                         : vs_asprintf("%.*s/%s", (int)(slash - child), child, c);
        if (!path)
            return -ENOMEM;
        struct stat st;
        bool exists = stat(path, &st) == 0 && S_ISREG(st.st_mode);
        free(path);
        if (exists) {
            *found = vs_strdup(c);
            return *found ? (int)i : -ENOMEM;
        }
    }
    return -ENOENT;
}

void vhd_extent_cache_init(struct vhd_extent_cache *c)
{
    pthread_mutex_init(&c->lock, NULL);
    c->lo = c->hi = 0;
}

void vhd_extent_cache_destroy(struct vhd_extent_cache *c)
{
    pthread_mutex_destroy(&c->lock);
}

void vhd_extent_cache_reset(struct vhd_extent_cache *c)
{
    pthread_mutex_lock(&c->lock);
    c->lo = c->hi = 0;
    pthread_mutex_unlock(&c->lock);
}

int vhd_file_status(struct img *file, struct vhd_extent_cache *c, uint64_t host, uint64_t len,
                    uint64_t *pnum)
{
    pthread_mutex_lock(&c->lock);
    if (host >= c->lo && host < c->hi) {
        *pnum = VS_MIN(len, c->hi - host);
        int st = c->status;
        pthread_mutex_unlock(&c->lock);
        return st;
    }
    pthread_mutex_unlock(&c->lock);
    int64_t size = img_file_size(file);
    uint64_t span = size > 0 && (uint64_t)size > host ? (uint64_t)size - host : len;
    span = VS_MAX(span, len);
    uint64_t n = 0, ignored;
    int st = file->drv->block_status ? file->drv->block_status(file, host, span, &n, &ignored)
                                     : IMG_DS_DATA;
    if (st < 0 || n == 0 || n > span) {
        *pnum = len;
        return IMG_DS_DATA;
    }
    st = st == IMG_DS_ZERO ? IMG_DS_ZERO : IMG_DS_DATA;
    pthread_mutex_lock(&c->lock);
    c->lo = host;
    c->hi = host + n;
    c->status = st;
    pthread_mutex_unlock(&c->lock);
    *pnum = VS_MIN(len, n);
    return st;
}

int vhd_write_nonzero(struct img *file, const uint8_t *buf, uint64_t at, size_t len)
{
    const size_t page = 4096;
    size_t p = 0;
    while (p < len) {
        size_t n = VS_MIN(page - (at + p) % page, len - p);
        bool zero = vs_buffer_is_zero(buf + p, n);
        size_t q = p + n;
        while (q < len) {
            size_t m = VS_MIN(page, len - q);
            if (vs_buffer_is_zero(buf + q, m) != zero)
                break;
            q += m;
        }
        if (!zero) {
            int rc = file->drv->pwrite(file, buf + p, at + p, q - p);
            if (rc)
                return rc;
        }
        p = q;
    }
    return 0;
}

int vhd_count_data_blocks(struct img *source, uint64_t size, uint64_t block_size, uint64_t *count)
{
    *count = 0;
    for (uint64_t off = 0; off < size; off += block_size) {
        uint64_t end = VS_MIN(size, off + block_size);
        for (uint64_t o = off; o < end;) {
            struct img_extent ext;
            int rc = img_block_status(source, o, end - o, &ext);
            if (rc)
                return rc;
            if (!(ext.flags & IMG_STATUS_ZERO)) {
                (*count)++;
                break;
            }
            o += ext.length;
        }
    }
    return 0;
}

void vhd_check_report(struct img_check *r, const char *fmt, ...)
{
    if (!r->report)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    r->report(r->report_ctx, line);
}

int vhd_cover_block_end(struct img *file, uint64_t block, uint64_t block_size, const uint8_t *buf,
                        uint64_t in, size_t len)
{
    uint8_t last = (len && in + len == block_size) ? buf[len - 1] : 0;
    return file->drv->pwrite(file, &last, block + block_size - 1, 1);
}

int vhd_pwrite_split(struct img *img, struct vhd_extent_cache *holes, uint64_t block_size,
                     const void *buf, uint64_t offset, size_t len, vhd_block_write_fn write_block)
{
    vhd_extent_cache_reset(holes);
    const uint8_t *p = buf;
    int rc = 0;
    while (len && !rc) {
        size_t n = (size_t)VS_MIN((uint64_t)len, block_size - offset % block_size);
        rc = write_block(img, p, offset, n);
        p += n;
        offset += n;
        len -= n;
    }
    vhd_extent_cache_reset(holes);
    return rc;
}
