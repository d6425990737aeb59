/*
 * lib/img/vhd.c — Microsoft's Virtual Hard Disk format (VHD, qemu-img's "vpc"): fixed, dynamic
 * and differencing disks.
 *
 * A fixed disk is raw data followed by a 512-byte footer. A dynamic disk keeps a copy of that
 * footer at offset 0, a "cxsparse" header, and a block allocation table (BAT) of 32-bit sector
 * numbers; each allocated block is a sector bitmap followed by the block's data, appended at the
 * end of the file, with the footer moved behind it. A differencing disk is a dynamic disk whose
 * bitmap says, sector by sector, which data lives here and which comes from the parent.
 *
 * The one idea that makes concurrent writers cheap: a block is *reserved* under the metadata lock
 * (file space and the footer move) but filled outside it, and only then published in the BAT, so
 * readers never see a half-written block and writers of different blocks never wait on each other.
 *
 * Virtual size follows the rule qemu and Microsoft's tools agree on: Virtual PC derives it from the
 * CHS geometry, Hyper-V and others from the footer's current size; images vessel creates without
 * force_size have both equal, and force_size ones carry the maximum geometry, the marker readers
 * take as "use current size".
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "img/driver.h"
#include "img/vhd-common.h"

#define VHD_SECTOR         512u
#define VHD_FOOTER_SIZE    512u
#define VHD_HEADER_SIZE    1024u
#define VHD_TYPE_FIXED     2
#define VHD_TYPE_DYNAMIC   3
#define VHD_TYPE_DIFF      4
#define VHD_UNALLOCATED    0xffffffffu
#define VHD_TIMESTAMP_BASE 946684800     /* 2000-01-01 00:00:00 UTC */
#define VHD_MAX_SECTORS    0xff000000ull /* 2040 GiB, qemu's and Hyper-V's VHD limit */
#define VHD_CHS_MAX        (65535ull * 16 * 255)
#define VHD_BLOCK_MIN      VHD_SECTOR
#define VHD_BLOCK_MAX      (256u << 20)
#define VHD_BLOCK_DEFAULT  (2u << 20)
#define VHD_LOCATOR_MAX    65536u /* bytes of one parent locator's path */
#define VHD_COPY_CHUNK     (1u << 20)

/* footer field offsets (big-endian) */
#define F_COOKIE      0
#define F_FEATURES    8
#define F_VERSION     12
#define F_DATA_OFFSET 16
#define F_TIMESTAMP   24
#define F_CREATOR_APP 28
#define F_CREATOR_VER 32
#define F_CREATOR_OS  36
#define F_ORIG_SIZE   40
#define F_CUR_SIZE    48
#define F_CYLS        56
#define F_HEADS       58
#define F_SPT         59
#define F_TYPE        60
#define F_CHECKSUM    64
#define F_UUID        68
#define F_SAVED       84

/* dynamic header field offsets */
#define H_COOKIE       0
#define H_DATA_OFFSET  8
#define H_TABLE_OFFSET 16
#define H_VERSION      24
#define H_MAX_ENTRIES  28
#define H_BLOCK_SIZE   32
#define H_CHECKSUM     36
#define H_PARENT_UUID  40
#define H_PARENT_TS    56
#define H_PARENT_NAME  64
#define H_LOCATORS     576
#define H_LOCATOR_SIZE 24

#define PLAT_W2RU 0x57327275u /* "W2ru": relative, UTF-16LE */
#define PLAT_W2KU 0x57326b75u /* "W2ku": absolute, UTF-16LE */
#define PLAT_WI2R 0x57693272u /* "Wi2r": relative, ANSI (deprecated) */
#define PLAT_WI2K 0x5769326bu /* "Wi2k": absolute, ANSI (deprecated) */
#define PLAT_MACX 0x4d616358u /* "MacX": file URL, UTF-8 */

struct vhd_state {
    uint8_t footer[VHD_FOOTER_SIZE];
    uint8_t header[VHD_HEADER_SIZE];
    uint32_t type;
    bool use_current_size; /* size from the footer, not from CHS */
    uint64_t fixed_footer; /* fixed disks: where the footer is (end of file) */
    /* dynamic and differencing */
    uint64_t bat_offset;
    uint32_t max_entries;
    uint32_t *bat;    /* host order; read with atomics, changed under img->lock */
    uint8_t *pending; /* per entry: being allocated right now */
    uint32_t block_size;
    uint32_t bitmap_size;
    uint64_t data_start; /* first byte after header, BAT and locators */
    uint64_t data_end;   /* where the next block goes (the footer sits here) */
    bool tail_clean;     /* nothing but the footer after data_end: new blocks start as holes */
    pthread_cond_t allocated;
    pthread_mutex_t diff_lock;     /* serialises differencing writes (bitmap read-modify-write) */
    struct vhd_extent_cache holes; /* container extents, for block status */
};

/* ---- small helpers --------------------------------------------------------------------------- */

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}
static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, 8);
}

/* One's complement of the byte sum, the checksum field counted as zero. */
static uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t field)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < field || i >= field + 4)
            sum += buf[i];
    return ~sum;
}

static uint32_t vhd_now(void)
{
    time_t t = time(NULL);
    return t > VHD_TIMESTAMP_BASE ? (uint32_t)(t - VHD_TIMESTAMP_BASE) : 0;
}

static uint32_t vhd_mtime_stamp(const struct stat *st)
{
    return st->st_mtime > VHD_TIMESTAMP_BASE ? (uint32_t)(st->st_mtime - VHD_TIMESTAMP_BASE) : 0;
}

static uint32_t bat_get(struct vhd_state *s, uint32_t i)
{
    return __atomic_load_n(&s->bat[i], __ATOMIC_ACQUIRE);
}

static void bat_set(struct vhd_state *s, uint32_t i, uint32_t v)
{
    __atomic_store_n(&s->bat[i], v, __ATOMIC_RELEASE);
}

/* ---- geometry -------------------------------------------------------------------------------- */

/* The spec's CHS algorithm: may round the sector count down. */
static void vhd_geometry(uint64_t sectors, uint16_t *cyls, uint8_t *heads, uint8_t *spt)
{
    uint32_t cth, h, s;
    if (sectors > VHD_CHS_MAX)
        sectors = VHD_CHS_MAX;
    if (sectors >= 65535ull * 16 * 63) {
        s = 255;
        h = 16;
        cth = (uint32_t)(sectors / s);
    } else {
        s = 17;
        cth = (uint32_t)(sectors / s);
        h = (cth + 1023) / 1024;
        if (h < 4)
            h = 4;
        if (cth >= h * 1024 || h > 16) {
            s = 31;
            h = 16;
            cth = (uint32_t)(sectors / s);
        }
        if (cth >= h * 1024) {
            s = 63;
            h = 16;
            cth = (uint32_t)(sectors / s);
        }
    }
    *cyls = (uint16_t)(cth / h);
    *heads = (uint8_t)h;
    *spt = (uint8_t)s;
}

/* The virtual size an image of SIZE bytes gets, and its geometry: rounded up to what CHS can
 * express (so a convert never truncates), or exact with the maximum geometry when FORCE_SIZE
 * or when the size is beyond CHS. */
static int vhd_size_geometry(const char *filename, uint64_t size, bool force_size,
                             uint64_t *out_size, uint16_t *cyls, uint8_t *heads, uint8_t *spt)
{
    uint64_t sectors = VS_DIV_ROUND_UP(size, VHD_SECTOR);
    uint16_t c = 0;
    uint8_t h = 0, s = 0;
    if (force_size) {
        c = 65535;
        h = 16;
        s = 255;
    } else {
        uint64_t want = VS_MIN(sectors, VHD_CHS_MAX);
        for (uint64_t i = 0; want > (uint64_t)c * h * s; i++)
            vhd_geometry(want + i, &c, &h, &s);
    }
    uint64_t chs = (uint64_t)c * h * s;
    if (chs != VHD_CHS_MAX)
        sectors = chs;
    if (sectors > VHD_MAX_SECTORS)
        return vs_error(-EFBIG,
                        "%s: disk size %" PRIu64 " bytes is too large: VHD holds at most 2040 GiB",
                        filename, size);
    *out_size = sectors * VHD_SECTOR;
    *cyls = c;
    *heads = h;
    *spt = s;
    return 0;
}

/* qemu's table: Virtual PC and qemu images size by CHS, Hyper-V, disk2vhd, XenServer and
 * force_size images by the footer's current size. */
static bool vhd_creator_uses_current_size(const uint8_t *footer)
{
    const char *app = (const char *)footer + F_CREATOR_APP;
    return !memcmp(app, "win ", 4) || !memcmp(app, "qem2", 4) || !memcmp(app, "d2v ", 4) ||
           !memcmp(app, "CTXS", 4) || !memcmp(app, "tap\0", 4);
}

static void vhd_footer_seal(uint8_t *footer)
{
    put32(footer + F_CHECKSUM, vhd_checksum(footer, VHD_FOOTER_SIZE, F_CHECKSUM));
}

static void vhd_header_seal(uint8_t *header)
{
    put32(header + H_CHECKSUM, vhd_checksum(header, VHD_HEADER_SIZE, H_CHECKSUM));
}

static bool vhd_dynamic(const struct vhd_state *s)
{
    return s->type != VHD_TYPE_FIXED;
}

/* ---- metadata writes ------------------------------------------------------------------------- */

static int vhd_write_footer(struct img *img, bool head_copy_too)
{
    struct vhd_state *s = img->state;
    vhd_footer_seal(s->footer);
    uint64_t at;
    if (vhd_dynamic(s)) {
        at = s->data_end;
        if (head_copy_too) {
            int rc = img_file_pwrite(img, s->footer, 0, VHD_FOOTER_SIZE);
            if (rc)
                return rc;
        }
    } else {
        at = s->fixed_footer;
    }
    return img_file_pwrite(img, s->footer, at, VHD_FOOTER_SIZE);
}

static int vhd_write_header(struct img *img)
{
    struct vhd_state *s = img->state;
    vhd_header_seal(s->header);
    return img_file_pwrite(img, s->header, get64(s->footer + F_DATA_OFFSET), VHD_HEADER_SIZE);
}

/* Write the BAT sector holding entry I (caller holds the lock or is single-threaded). */
static int vhd_write_bat_sector(struct img *img, uint32_t i)
{
    struct vhd_state *s = img->state;
    uint32_t first = i / 128 * 128;
    uint32_t n = VS_MIN(128u, s->max_entries - first);
    uint32_t buf[128];
    for (uint32_t k = 0; k < n; k++)
        buf[k] = htobe32(bat_get(s, first + k));
    return img_file_pwrite(img, buf, s->bat_offset + (uint64_t)first * 4, n * 4);
}

static int vhd_write_bat(struct img *img)
{
    struct vhd_state *s = img->state;
    for (uint32_t i = 0; i < s->max_entries; i += 128) {
        int rc = vhd_write_bat_sector(img, i);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- parent ---------------------------------------------------------------------------------- */

/* Read a VHD footer from PATH (head copy for dynamic, tail for fixed) without opening an image. */
static int vhd_read_footer_of(const char *path, uint8_t *footer)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s: cannot open", path);
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    if (!rc && st.st_size < (off_t)VHD_FOOTER_SIZE)
        rc = vs_error(-EINVAL, "%s: too small for a VHD footer", path);
    if (!rc)
        rc = vs_pread_full(fd, footer, VHD_FOOTER_SIZE, 0);
    if (!rc && memcmp(footer, "conectix", 8))
        rc = vs_pread_full(fd, footer, VHD_FOOTER_SIZE, (uint64_t)st.st_size - VHD_FOOTER_SIZE);
    close(fd);
    if (!rc && memcmp(footer, "conectix", 8))
        rc = vs_error(-EINVAL, "%s: not a VHD file (no 'conectix' footer)", path);
    return rc;
}

/* One locator's path as UTF-8, or NULL when the entry is unused or unreadable (*err set on a
 * malformed one). */
static char *vhd_locator_path(struct img *img, const uint8_t *loc, int64_t file_size, int *err)
{
    uint32_t code = get32(loc);
    uint32_t len = get32(loc + 8);
    uint64_t off = get64(loc + 16);
    *err = 0;
    if (code == 0 || len == 0)
        return NULL;
    if (code != PLAT_W2RU && code != PLAT_W2KU && code != PLAT_WI2R && code != PLAT_WI2K &&
        code != PLAT_MACX)
        return NULL; /* "Mac " aliases and unknown platforms: not something we can follow */
    if (len > VHD_LOCATOR_MAX || off > (uint64_t)file_size || len > (uint64_t)file_size - off) {
        *err = img_error(img, -EINVAL,
                         "parent locator data (%u bytes at offset %" PRIu64 ") is outside the file",
                         len, off);
        return NULL;
    }
    uint8_t *raw = vs_malloc(len + 1);
    if (!raw) {
        *err = -ENOMEM;
        return NULL;
    }
    int rc = img_file_pread(img, raw, off, len);
    if (rc) {
        free(raw);
        *err = rc;
        return NULL;
    }
    raw[len] = 0;
    char *path;
    if (code == PLAT_W2RU || code == PLAT_W2KU) {
        path = vhd_utf16_to_utf8(raw, len, false);
        free(raw);
        if (!path) {
            *err = img_error(img, -EINVAL, "parent locator: %s", vs_error_message());
            return NULL;
        }
    } else {
        path = (char *)raw;
        path[strnlen(path, len)] = 0;
        if (code == PLAT_MACX && !strncmp(path, "file://", 7)) {
            const char *p = path + 7;
            if (!strncmp(p, "localhost", 9))
                p += 9;
            memmove(path, p, strlen(p) + 1);
        }
    }
    if (code != PLAT_MACX)
        vhd_path_from_windows(path);
    return path;
}

/* Find the parent: relative locators, then absolute ones, as Virtual Server does. Sets
 * img->backing_name to the one that exists, then checks the parent's identity. */
static int vhd_open_parent(struct img *img, int64_t file_size)
{
    struct vhd_state *s = img->state;
    char *rel[8] = {0}, *abs[8] = {0};
    size_t nrel = 0, nabs = 0;
    int rc = 0;
    for (int i = 0; i < 8 && !rc; i++) {
        const uint8_t *loc = s->header + H_LOCATORS + i * H_LOCATOR_SIZE;
        uint32_t code = get32(loc);
        char *path = vhd_locator_path(img, loc, file_size, &rc);
        if (!path)
            continue;
        bool relative =
            code == PLAT_W2RU || code == PLAT_WI2R || (code == PLAT_MACX && path[0] != '/');
        if (relative && nrel < 8)
            rel[nrel++] = path;
        else if (!relative && nabs < 8)
            abs[nabs++] = path;
        else
            free(path);
    }
    char *name = NULL;
    if (!rc) {
        name = vhd_utf16_to_utf8(s->header + H_PARENT_NAME, 512, true);
        if (!name)
            rc = img_error(img, -EINVAL, "parent unicode name: %s", vs_error_message());
    }
    if (rc)
        goto out;
    const char *cands[17];
    size_t n = 0;
    for (size_t i = 0; i < nrel; i++)
        cands[n++] = rel[i];
    for (size_t i = 0; i < nabs; i++)
        cands[n++] = abs[i];
    char *found = NULL;
    int idx = vhd_find_parent(img->filename, cands, n, &found);
    if (idx == -ENOMEM) {
        rc = -ENOMEM;
        goto out;
    }
    if (idx < 0) {
        const char *r = nrel ? rel[0] : (name[0] ? name : "(none)");
        const char *a = nabs ? abs[0] : "(none)";
        if (img->flags & IMG_OPEN_NO_BACKING) {
            /* info and check still work on an orphan; report the name it stores */
            img->backing_name = vs_strdup(nrel ? rel[0] : nabs ? abs[0] : name);
            rc = img->backing_name ? 0 : -ENOMEM;
            goto out;
        }
        rc = img_error(img, -ENOENT,
                       "parent disk not found: tried relative path '%s' and absolute path '%s'", r,
                       a);
        goto out;
    }
    img->backing_name = found;
    img->backing_format = vs_strdup("vhd");
    if (!img->backing_format) {
        rc = -ENOMEM;
        goto out;
    }
    if (img->flags & IMG_OPEN_NO_BACKING)
        goto out;
    /* identity: the parent's unique id must be the one recorded at creation */
    const char *slash = strrchr(img->filename, '/');
    char *path = (found[0] == '/' || !slash)
                     ? vs_strdup(found)
                     : vs_asprintf("%.*s/%s", (int)(slash - img->filename), img->filename, found);
    if (!path) {
        rc = -ENOMEM;
        goto out;
    }
    uint8_t pf[VHD_FOOTER_SIZE];
    rc = vhd_read_footer_of(path, pf);
    if (rc) {
        rc = vs_error_prefix(rc, "%s: parent", img->filename);
    } else if (memcmp(pf + F_UUID, s->header + H_PARENT_UUID, 16)) {
        char want[37], got[37];
        vhd_guid_format(s->header + H_PARENT_UUID, want);
        vhd_guid_format(pf + F_UUID, got);
        rc = img_error(img, -EINVAL,
                       "parent '%s' has unique id %s, but this differencing disk was made for %s",
                       path, got, want);
    } else {
        struct stat st;
        uint32_t stored = get32(s->header + H_PARENT_TS);
        if (stat(path, &st) == 0 && vhd_mtime_stamp(&st) != stored)
            vs_warn("%s: parent '%s' was modified after this differencing disk was last "
                    "synchronised with it (time stamp %u, now %u); its content may not match",
                    img->filename, path, stored, vhd_mtime_stamp(&st));
    }
    free(path);
out:
    for (size_t i = 0; i < nrel; i++)
        free(rel[i]);
    for (size_t i = 0; i < nabs; i++)
        free(abs[i]);
    free(name);
    return rc;
}

/* ---- open ------------------------------------------------------------------------------------ */

/* Dynamic disks start with "conectix"; fixed ones only end with it, so for a file named *.vhd the
 * last sector is looked at too (qemu probes the first only and calls such files raw). */
static int vhd_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && !memcmp(buf, "conectix", 8))
        return 100;
    size_t n = filename ? strlen(filename) : 0;
    if (n < 4 || strcasecmp(filename + n - 4, ".vhd"))
        return 0;
    int fd = open(filename, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint8_t footer[VHD_FOOTER_SIZE];
    struct stat st;
    bool fixed =
        fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= VHD_FOOTER_SIZE &&
        vs_pread_full(fd, footer, VHD_FOOTER_SIZE, (uint64_t)st.st_size - VHD_FOOTER_SIZE) == 0 &&
        !memcmp(footer, "conectix", 8) && get32(footer + F_TYPE) == VHD_TYPE_FIXED;
    close(fd);
    return fixed ? 90 : 0;
}

static void vhd_free_state(struct vhd_state *s)
{
    if (!s)
        return;
    free(s->bat);
    free(s->pending);
    pthread_cond_destroy(&s->allocated);
    pthread_mutex_destroy(&s->diff_lock);
    vhd_extent_cache_destroy(&s->holes);
    free(s);
}

static int vhd_open_dynamic(struct img *img, int64_t file_size)
{
    struct vhd_state *s = img->state;
    bool tolerant = img->flags & IMG_OPEN_CHECK;
    uint64_t hoff = get64(s->footer + F_DATA_OFFSET);
    if (hoff < VHD_FOOTER_SIZE || hoff > (uint64_t)file_size ||
        (uint64_t)file_size - hoff < VHD_HEADER_SIZE)
        return img_error(img, -EINVAL,
                         "footer data offset %" PRIu64 ": dynamic header outside the file", hoff);
    int rc = img_file_pread(img, s->header, hoff, VHD_HEADER_SIZE);
    if (rc)
        return rc;
    if (memcmp(s->header, "cxsparse", 8))
        return img_error(img, -EINVAL, "dynamic header cookie is not 'cxsparse'");
    uint32_t sum = vhd_checksum(s->header, VHD_HEADER_SIZE, H_CHECKSUM);
    if (sum != get32(s->header + H_CHECKSUM) && !tolerant)
        return img_error(img, -EINVAL, "dynamic header checksum 0x%08x, expected 0x%08x",
                         get32(s->header + H_CHECKSUM), sum);
    s->block_size = get32(s->header + H_BLOCK_SIZE);
    if (s->block_size < VHD_BLOCK_MIN || s->block_size > VHD_BLOCK_MAX ||
        (s->block_size & (s->block_size - 1)))
        return img_error(img, -EINVAL,
                         "dynamic header block size %u is not a power of two from 512 to 256 MiB",
                         s->block_size);
    s->bitmap_size = VS_ALIGN_UP(s->block_size / VHD_SECTOR / 8, VHD_SECTOR);
    s->max_entries = get32(s->header + H_MAX_ENTRIES);
    s->bat_offset = get64(s->header + H_TABLE_OFFSET);
    uint64_t bat_bytes = (uint64_t)s->max_entries * 4;
    if ((uint64_t)s->max_entries * s->block_size < img->size)
        return img_error(img, -EINVAL,
                         "dynamic header max table entries %u cover %" PRIu64
                         " bytes, less than the disk size %" PRIu64,
                         s->max_entries, (uint64_t)s->max_entries * s->block_size, img->size);
    if (s->max_entries > VHD_MAX_SECTORS * VHD_SECTOR / s->block_size + 1)
        return img_error(img, -EINVAL, "dynamic header max table entries %u is too large",
                         s->max_entries);
    if (s->bat_offset < VHD_FOOTER_SIZE || s->bat_offset > (uint64_t)file_size ||
        bat_bytes > (uint64_t)file_size - s->bat_offset)
        return img_error(img, -EINVAL,
                         "dynamic header table offset %" PRIu64 ": BAT of %u entries is outside "
                         "the file",
                         s->bat_offset, s->max_entries);
    s->bat = vs_malloc(VS_MAX(bat_bytes, 4));
    s->pending = vs_calloc(VS_MAX(s->max_entries, 1), 1);
    if (!s->bat || !s->pending)
        return -ENOMEM;
    rc = img_file_pread(img, s->bat, s->bat_offset, bat_bytes);
    if (rc)
        return rc;
    /* metadata ends after the BAT, the header and any parent locator data; only the first two
     * are fatal to overlap (the data space of a locator is sectors in the spec but bytes in
     * Hyper-V's files, so only its length counts) */
    uint64_t hard_end =
        VS_ALIGN_UP(VS_MAX(s->bat_offset + bat_bytes, hoff + VHD_HEADER_SIZE), VHD_SECTOR);
    uint64_t meta_end = hard_end;
    for (int i = 0; i < 8; i++) {
        const uint8_t *loc = s->header + H_LOCATORS + i * H_LOCATOR_SIZE;
        uint32_t len = get32(loc + 8);
        uint64_t off = get64(loc + 16);
        if (!get32(loc) || !len || off > (uint64_t)file_size || len > (uint64_t)file_size - off)
            continue;
        meta_end = VS_MAX(meta_end, off + VS_ALIGN_UP(len, VHD_SECTOR));
    }
    s->data_start = VS_ALIGN_UP(meta_end, VHD_SECTOR);
    s->data_end = s->data_start;
    uint64_t block_span = (uint64_t)s->bitmap_size + s->block_size;
    for (uint32_t i = 0; i < s->max_entries; i++) {
        s->bat[i] = be32toh(s->bat[i]);
        if (s->bat[i] == VHD_UNALLOCATED)
            continue;
        uint64_t start = (uint64_t)s->bat[i] * VHD_SECTOR;
        uint64_t end = start + block_span;
        if (!tolerant && start < hard_end)
            return img_error(img, -EINVAL,
                             "BAT entry %u: block at offset %" PRIu64 " overlaps the metadata", i,
                             start);
        s->data_end = VS_MAX(s->data_end, end);
    }
    if (s->data_end > (uint64_t)file_size && !tolerant)
        return img_error(img, -EINVAL,
                         "BAT points %" PRIu64 " bytes beyond the end of the file (%" PRId64
                         " bytes): the image is truncated",
                         s->data_end - (uint64_t)file_size, file_size);
    s->tail_clean = (uint64_t)file_size <= s->data_end + VHD_FOOTER_SIZE;
    img->cluster_size = s->block_size;
    img->write_unit = 512; /* a sector bitmap per block: partial writes are plain writes */
    if (s->type == VHD_TYPE_DIFF) {
        rc = vhd_open_parent(img, file_size);
        if (rc)
            return rc;
    }
    return 0;
}

static int vhd_open(struct img *img)
{
    struct vhd_state *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_cond_init(&s->allocated, NULL);
    pthread_mutex_init(&s->diff_lock, NULL);
    vhd_extent_cache_init(&s->holes);
    img->state = s;
    bool tolerant = img->flags & IMG_OPEN_CHECK;
    int rc;
    int64_t file_size = img_file_size(img->file);
    if (file_size < 0) {
        rc = (int)file_size;
        goto fail;
    }
    if (file_size < VHD_FOOTER_SIZE) {
        rc = img_error(img, -EINVAL, "file of %" PRId64 " bytes is too small for a VHD footer",
                       file_size);
        goto fail;
    }
    rc = img_file_pread(img, s->footer, 0, VHD_FOOTER_SIZE);
    if (rc)
        goto fail;
    bool head = !memcmp(s->footer, "conectix", 8) && get32(s->footer + F_TYPE) != VHD_TYPE_FIXED;
    if (!head) {
        rc = img_file_pread(img, s->footer, (uint64_t)file_size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE);
        if (rc)
            goto fail;
        if (memcmp(s->footer, "conectix", 8)) {
            rc = img_error(img, -EINVAL, "footer cookie is not 'conectix': not a VHD image");
            goto fail;
        }
    }
    uint32_t sum = vhd_checksum(s->footer, VHD_FOOTER_SIZE, F_CHECKSUM);
    if (sum != get32(s->footer + F_CHECKSUM) && !tolerant) {
        rc = img_error(img, -EINVAL, "footer checksum 0x%08x, expected 0x%08x",
                       get32(s->footer + F_CHECKSUM), sum);
        goto fail;
    }
    s->type = get32(s->footer + F_TYPE);
    if (s->type != VHD_TYPE_FIXED && s->type != VHD_TYPE_DYNAMIC && s->type != VHD_TYPE_DIFF) {
        rc = img_error(img, -EINVAL,
                       "footer disk type %u unknown (2 fixed, 3 dynamic, 4 "
                       "differencing)",
                       s->type);
        goto fail;
    }
    if (head != (s->type != VHD_TYPE_FIXED)) {
        rc = img_error(img, -EINVAL, "footer disk type %u does not match the file layout", s->type);
        goto fail;
    }
    uint64_t chs = (uint64_t)get16(s->footer + F_CYLS) * s->footer[F_HEADS] * s->footer[F_SPT];
    uint64_t cur = get64(s->footer + F_CUR_SIZE);
    s->use_current_size = vhd_creator_uses_current_size(s->footer) || chs == VHD_CHS_MAX;
    uint64_t sectors = s->use_current_size ? cur / VHD_SECTOR : chs;
    if (sectors > VHD_MAX_SECTORS) {
        rc = img_error(img, -EFBIG,
                       "footer current size %" PRIu64 " bytes exceeds the 2040 GiB VHD limit", cur);
        goto fail;
    }
    img->size = sectors * VHD_SECTOR;
    if (s->type == VHD_TYPE_FIXED) {
        s->fixed_footer = (uint64_t)file_size - VHD_FOOTER_SIZE;
        if (img->size > (uint64_t)file_size - VHD_FOOTER_SIZE && !tolerant) {
            rc = img_error(img, -EINVAL,
                           "footer size %" PRIu64
                           " bytes, but the fixed disk file holds only %" PRId64,
                           img->size, file_size - VHD_FOOTER_SIZE);
            goto fail;
        }
        return 0;
    }
    rc = vhd_open_dynamic(img, file_size);
    if (rc)
        goto fail;
    return 0;
fail:
    vhd_free_state(s);
    img->state = NULL;
    free(img->backing_name);
    free(img->backing_format);
    img->backing_name = img->backing_format = NULL;
    return rc;
}

static void vhd_close(struct img *img)
{
    vhd_free_state(img->state);
    img->state = NULL;
}

/* ---- read ------------------------------------------------------------------------------------ */

static bool bit_test(const uint8_t *map, uint64_t k)
{
    return map[k / 8] & (0x80 >> (k % 8));
}

static void bit_set_range(uint8_t *map, uint64_t first, uint64_t count)
{
    for (uint64_t k = first; k < first + count; k++)
        map[k / 8] |= (uint8_t)(0x80 >> (k % 8));
}

/* Read a differencing block part sector by sector per its bitmap: own data or the parent's. */
static int vhd_read_diff_block(struct img *img, uint8_t *buf, uint64_t off, size_t len,
                               uint64_t block_off)
{
    struct vhd_state *s = img->state;
    uint8_t *map = vs_malloc(s->bitmap_size);
    if (!map)
        return -ENOMEM;
    int rc = img_file_pread(img, map, block_off, s->bitmap_size);
    uint64_t in = off % s->block_size;
    size_t done = 0;
    while (!rc && done < len) {
        uint64_t sector = (in + done) / VHD_SECTOR;
        bool mine = bit_test(map, sector);
        size_t n = (size_t)VS_MIN((uint64_t)len - done, (sector + 1) * VHD_SECTOR - (in + done));
        while (done + n < len && bit_test(map, (in + done + n) / VHD_SECTOR) == mine)
            n += (size_t)VS_MIN((uint64_t)len - done - n, VHD_SECTOR);
        if (mine)
            rc = img_file_pread(img, buf + done, block_off + s->bitmap_size + in + done, n);
        else
            rc = img_read_backing(img, buf + done, off + done, n);
        done += n;
    }
    free(map);
    return rc;
}

static int vhd_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    struct vhd_state *s = img->state;
    if (!vhd_dynamic(s))
        return img_file_pread(img, buf, offset, len);
    uint8_t *p = buf;
    while (len) {
        uint32_t i = (uint32_t)(offset / s->block_size);
        size_t n = (size_t)VS_MIN((uint64_t)len, s->block_size - offset % s->block_size);
        uint32_t e = i < s->max_entries ? bat_get(s, i) : VHD_UNALLOCATED;
        int rc;
        if (e == VHD_UNALLOCATED) {
            if (s->type == VHD_TYPE_DIFF)
                rc = img_read_backing(img, p, offset, n);
            else {
                memset(p, 0, n);
                rc = 0;
            }
        } else if (s->type == VHD_TYPE_DIFF) {
            rc = vhd_read_diff_block(img, p, offset, n, (uint64_t)e * VHD_SECTOR);
        } else {
            rc = img_file_pread(
                img, p, (uint64_t)e * VHD_SECTOR + s->bitmap_size + offset % s->block_size, n);
        }
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

/* ---- write ----------------------------------------------------------------------------------- */

/* Reserve file space for block I: returns its BAT value, or VHD_UNALLOCATED in *reserved when
 * another thread allocated it meanwhile. */
static int vhd_reserve(struct img *img, uint32_t i, uint32_t *entry, bool *reserved)
{
    struct vhd_state *s = img->state;
    *reserved = false;
    pthread_mutex_lock(&img->lock);
    while (s->pending[i])
        pthread_cond_wait(&s->allocated, &img->lock);
    *entry = bat_get(s, i);
    if (*entry != VHD_UNALLOCATED) {
        pthread_mutex_unlock(&img->lock);
        return 0;
    }
    uint64_t at = s->data_end;
    uint64_t span = (uint64_t)s->bitmap_size + s->block_size;
    if (at / VHD_SECTOR >= VHD_UNALLOCATED || (at + span) / VHD_SECTOR >= VHD_UNALLOCATED) {
        pthread_mutex_unlock(&img->lock);
        return img_error(img, -EFBIG, "file would grow past the 2 TiB a VHD BAT can address");
    }
    s->data_end = at + span;
    int rc = vhd_write_footer(img, false);
    if (rc) {
        s->data_end = at;
        pthread_mutex_unlock(&img->lock);
        return rc;
    }
    s->pending[i] = 1;
    *entry = (uint32_t)(at / VHD_SECTOR);
    *reserved = true;
    pthread_mutex_unlock(&img->lock);
    return 0;
}

/* Publish block I at ENTRY (or drop the reservation on failure). */
static int vhd_publish(struct img *img, uint32_t i, uint32_t entry, bool ok)
{
    struct vhd_state *s = img->state;
    int rc = 0;
    pthread_mutex_lock(&img->lock);
    if (ok) {
        bat_set(s, i, entry);
        rc = vhd_write_bat_sector(img, i);
        if (rc)
            bat_set(s, i, VHD_UNALLOCATED);
    }
    s->pending[i] = 0;
    pthread_cond_broadcast(&s->allocated);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* Differencing write inside one block: whole sectors go straight in, partial edge sectors are
 * completed from the current content, and the bitmap gains the written sectors. */
static int vhd_write_diff_block(struct img *img, const uint8_t *buf, uint64_t off, size_t len,
                                uint32_t entry, bool fresh)
{
    struct vhd_state *s = img->state;
    uint64_t block_off = (uint64_t)entry * VHD_SECTOR;
    uint64_t in = off % s->block_size;
    uint64_t first = in / VHD_SECTOR, last = (in + len - 1) / VHD_SECTOR;
    uint8_t *map = vs_calloc(1, s->bitmap_size);
    uint8_t *sec = vs_malloc(VHD_SECTOR);
    int rc = (!map || !sec) ? -ENOMEM : 0;
    if (!rc && !fresh)
        rc = img_file_pread(img, map, block_off, s->bitmap_size);
    uint64_t data = block_off + s->bitmap_size;
    /* edge sectors */
    uint64_t edges[2] = {first, last};
    for (int k = 0; k < 2 && !rc; k++) {
        uint64_t sn = edges[k];
        if (k == 1 && last == first)
            break;
        uint64_t s0 = sn * VHD_SECTOR;
        uint64_t a = VS_MAX(s0, in), b = VS_MIN(s0 + VHD_SECTOR, in + len);
        if (a == s0 && b == s0 + VHD_SECTOR)
            continue; /* whole sector: written below */
        uint64_t guest = off - in + s0;
        if (bit_test(map, sn))
            rc = img_file_pread(img, sec, data + s0, VHD_SECTOR);
        else
            rc = img_read_backing(img, sec, guest, VHD_SECTOR);
        if (rc)
            break;
        memcpy(sec + (a - s0), buf + (a - in), b - a);
        rc = img_file_pwrite(img, sec, data + s0, VHD_SECTOR);
    }
    /* whole sectors in between */
    uint64_t a = VS_ALIGN_UP(in, VHD_SECTOR), b = VS_ALIGN_DOWN(in + len, VHD_SECTOR);
    if (!rc && b > a)
        rc = img_file_pwrite(img, buf + (a - in), data + a, b - a);
    if (!rc) {
        bit_set_range(map, first, last - first + 1);
        rc = img_file_pwrite(img, map, block_off, s->bitmap_size);
    }
    free(map);
    free(sec);
    return rc;
}

static int vhd_write_block(struct img *img, const uint8_t *buf, uint64_t off, size_t len)
{
    struct vhd_state *s = img->state;
    uint32_t i = (uint32_t)(off / s->block_size);
    if (i >= s->max_entries)
        return img_error(img, -EIO, "write at %" PRIu64 " beyond the BAT", off);
    uint32_t entry = bat_get(s, i);
    bool reserved = false;
    int rc;
    if (entry == VHD_UNALLOCATED) {
        rc = vhd_reserve(img, i, &entry, &reserved);
        if (rc)
            return rc;
    }
    uint64_t block_off = (uint64_t)entry * VHD_SECTOR;
    if (s->type == VHD_TYPE_DIFF) {
        rc = vhd_write_diff_block(img, buf, off, len, entry, reserved);
    } else {
        rc = 0;
        if (reserved) {
            /* every sector in use, as qemu does: unwritten parts are holes that read as zero */
            uint8_t *map = vs_malloc(s->bitmap_size);
            if (!map)
                rc = -ENOMEM;
            else {
                memset(map, 0xff, s->bitmap_size);
                rc = img_file_pwrite(img, map, block_off, s->bitmap_size);
                free(map);
            }
        }
        if (!rc && reserved && s->tail_clean)
            rc = vhd_write_nonzero(img->file, buf, block_off + s->bitmap_size + off % s->block_size,
                                   len);
        else if (!rc)
            rc = img_file_pwrite(img, buf, block_off + s->bitmap_size + off % s->block_size, len);
    }
    if (reserved) {
        int prc = vhd_publish(img, i, entry, rc == 0);
        if (!rc)
            rc = prc;
    }
    return rc;
}

static int vhd_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    struct vhd_state *s = img->state;
    if (!vhd_dynamic(s)) {
        vhd_extent_cache_reset(&s->holes);
        int rc = img_file_pwrite(img, buf, offset, len);
        vhd_extent_cache_reset(&s->holes);
        return rc;
    }
    if (s->type == VHD_TYPE_DIFF)
        pthread_mutex_lock(&s->diff_lock);
    int rc = vhd_pwrite_split(img, &s->holes, s->block_size, buf, offset, len, vhd_write_block);
    if (s->type == VHD_TYPE_DIFF)
        pthread_mutex_unlock(&s->diff_lock);
    return rc;
}

static int vhd_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    struct vhd_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (!vhd_dynamic(s))
        return img->file->drv->write_zeroes(img->file, offset, len, flags);
    uint8_t *zero = NULL;
    int rc = 0;
    while (len && !rc) {
        uint32_t i = (uint32_t)(offset / s->block_size);
        uint64_t n = VS_MIN(len, s->block_size - offset % s->block_size);
        uint32_t e = i < s->max_entries ? bat_get(s, i) : VHD_UNALLOCATED;
        if (e == VHD_UNALLOCATED && s->type == VHD_TYPE_DYNAMIC) {
            /* reads zero already */
        } else if (e != VHD_UNALLOCATED && s->type == VHD_TYPE_DYNAMIC) {
            rc = img->file->drv->write_zeroes(
                img->file, (uint64_t)e * VHD_SECTOR + s->bitmap_size + offset % s->block_size, n,
                flags);
        } else {
            if (!zero && !(zero = vs_calloc(1, s->block_size)))
                return -ENOMEM;
            rc = vhd_pwrite(img, zero, offset, (size_t)n);
        }
        offset += n;
        len -= n;
    }
    free(zero);
    return rc;
}

static int vhd_discard(struct img *img, uint64_t offset, uint64_t len)
{
    struct vhd_state *s = img->state;
    if (s->type == VHD_TYPE_DIFF)
        return 0; /* only a hint: unmapping here would expose the parent's older data */
    return vhd_write_zeroes(img, offset, len, IMG_ZERO_MAY_UNMAP);
}

static int vhd_flush(struct img *img)
{
    return img->file->drv->flush(img->file);
}

/* ---- block status ---------------------------------------------------------------------------- */

static int vhd_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                            uint64_t *host_offset)
{
    struct vhd_state *s = img->state;
    *host_offset = UINT64_MAX;
    if (!vhd_dynamic(s)) {
        *host_offset = offset;
        return vhd_file_status(img->file, &s->holes, offset, len, pnum);
    }
    uint32_t i = (uint32_t)(offset / s->block_size);
    uint64_t in = offset % s->block_size;
    uint64_t n = VS_MIN(len, s->block_size - in);
    uint32_t e = i < s->max_entries ? bat_get(s, i) : VHD_UNALLOCATED;
    if (e == VHD_UNALLOCATED) {
        /* merge a run of unallocated blocks */
        uint64_t done = n;
        while (done < len) {
            uint32_t j = (uint32_t)((offset + done) / s->block_size);
            if (j < s->max_entries && bat_get(s, j) != VHD_UNALLOCATED)
                break;
            done += VS_MIN(len - done, (uint64_t)s->block_size);
        }
        *pnum = done;
        return IMG_DS_UNALLOCATED;
    }
    uint64_t data = (uint64_t)e * VHD_SECTOR + s->bitmap_size;
    if (s->type != VHD_TYPE_DIFF) {
        *host_offset = data + in;
        return vhd_file_status(img->file, &s->holes, data + in, n, pnum);
    }
    uint8_t *map = vs_malloc(s->bitmap_size);
    if (!map)
        return -ENOMEM;
    int rc = img_file_pread(img, map, (uint64_t)e * VHD_SECTOR, s->bitmap_size);
    if (rc) {
        free(map);
        return rc;
    }
    bool mine = bit_test(map, in / VHD_SECTOR);
    uint64_t run = VS_MIN(n, VS_ALIGN_UP(in + 1, VHD_SECTOR) - in);
    while (run < n && bit_test(map, (in + run) / VHD_SECTOR) == mine)
        run += VS_MIN(n - run, (uint64_t)VHD_SECTOR);
    free(map);
    *pnum = run;
    if (!mine)
        return IMG_DS_UNALLOCATED;
    *host_offset = data + in;
    return IMG_DS_DATA;
}

/* ---- create ---------------------------------------------------------------------------------- */

struct vhd_parent_info {
    uint8_t footer[VHD_FOOTER_SIZE];
    uint32_t mtime_stamp;
    char *relative; /* relative to the child's directory */
    char *absolute;
    char *name; /* file name alone */
};

static void vhd_parent_info_free(struct vhd_parent_info *p)
{
    free(p->relative);
    free(p->absolute);
    free(p->name);
}

static int vhd_parent_info(const struct img_create_params *params, struct vhd_parent_info *p)
{
    if (params->backing_format && strcmp(params->backing_format, "vhd") &&
        strcmp(params->backing_format, "vpc"))
        return vs_error(-EINVAL,
                        "%s: a differencing VHD needs a VHD parent, not '%s' (backing format)",
                        params->filename, params->backing_format);
    const char *slash = strrchr(params->filename, '/');
    const char *b = params->backing_file;
    char *path = (b[0] == '/' || !slash)
                     ? vs_strdup(b)
                     : vs_asprintf("%.*s/%s", (int)(slash - params->filename), params->filename, b);
    if (!path)
        return -ENOMEM;
    int rc = vhd_read_footer_of(path, p->footer);
    struct stat st;
    if (!rc && stat(path, &st) < 0)
        rc = vs_error_errno(-errno, "%s: cannot stat", path);
    if (!rc) {
        p->mtime_stamp = vhd_mtime_stamp(&st);
        p->absolute = realpath(path, NULL);
        if (!p->absolute)
            rc = vs_error_errno(-errno, "%s: cannot resolve", path);
    }
    if (!rc) {
        if (b[0] != '/') {
            p->relative = vs_strdup(b);
        } else {
            /* derive a relative path from the child's directory */
            char *dir = slash
                            ? vs_asprintf("%.*s", (int)(slash - params->filename), params->filename)
                            : vs_strdup(".");
            char *rdir = dir ? realpath(dir[0] ? dir : "/", NULL) : NULL;
            p->relative = rdir ? vhd_relative_path(rdir, p->absolute) : NULL;
            free(dir);
            free(rdir);
        }
        const char *base = strrchr(p->absolute, '/');
        p->name = vs_strdup(base ? base + 1 : p->absolute);
        if (!p->relative || !p->name)
            rc = -ENOMEM;
    }
    free(path);
    return rc;
}

/* Store PATH (POSIX) as a locator of CODE at OFF: UTF-16LE with Windows separators. */
static int vhd_make_locator(uint8_t *header, int slot, uint32_t code, const char *path,
                            uint64_t off, uint8_t *data, size_t cap, uint32_t *used)
{
    char *win = NULL;
    if (code == PLAT_W2RU && path[0] != '.')
        win = vs_asprintf(".\\%s", path);
    else
        win = vs_strdup(path);
    if (!win)
        return -ENOMEM;
    for (char *c = win; *c; c++)
        if (*c == '/')
            *c = '\\';
    int n = vhd_utf8_to_utf16(win, data, cap, false);
    free(win);
    if (n < 0)
        return vs_error(-EINVAL, "parent path '%s' is too long or not UTF-8", path);
    uint8_t *loc = header + H_LOCATORS + slot * H_LOCATOR_SIZE;
    uint32_t space = (uint32_t)VS_ALIGN_UP((uint32_t)n, VHD_SECTOR);
    put32(loc, code);
    put32(loc + 4, space); /* bytes, as Hyper-V writes it */
    put32(loc + 8, (uint32_t)n);
    put64(loc + 16, off);
    *used = space;
    return 0;
}

static int vhd_create(const struct img_create_params *params, struct vs_opts *opts)
{
    const char *subformat = vs_opts_take(opts, "subformat");
    bool force_size = false;
    uint64_t block_size = VHD_BLOCK_DEFAULT;
    int rc = vs_opts_take_bool(opts, "force_size", &force_size);
    if (!rc)
        rc = vs_opts_take_size(opts, "block_size", &block_size);
    if (rc)
        return rc;
    const char *prealloc = vs_opts_take(opts, "preallocation");
    if (prealloc && strcmp(prealloc, "off"))
        return vs_error(-ENOTSUP, "%s: preallocation '%s' is not supported for VHD (off)",
                        params->filename, prealloc);
    bool diff = params->backing_file && params->backing_file[0];
    uint32_t type = VHD_TYPE_DYNAMIC;
    if (subformat && !strcmp(subformat, "fixed"))
        type = VHD_TYPE_FIXED;
    else if (subformat && strcmp(subformat, "dynamic"))
        return vs_error(-EINVAL, "%s: subformat '%s' unknown (dynamic, fixed)", params->filename,
                        subformat);
    if (diff && type == VHD_TYPE_FIXED)
        return vs_error(-EINVAL, "%s: a fixed VHD cannot have a parent", params->filename);
    if (diff)
        type = VHD_TYPE_DIFF;
    if (block_size < VHD_BLOCK_MIN || block_size > VHD_BLOCK_MAX || (block_size & (block_size - 1)))
        return vs_error(-EINVAL,
                        "%s: block_size %" PRIu64 " must be a power of two from 512 to 256 MiB",
                        params->filename, block_size);

    struct vhd_parent_info parent = {0};
    uint8_t *locdata = NULL;
    if (diff && (rc = vhd_parent_info(params, &parent)))
        return rc;

    uint64_t size;
    uint16_t cyls;
    uint8_t heads, spt;
    rc = vhd_size_geometry(params->filename, params->size, force_size, &size, &cyls, &heads, &spt);
    if (rc)
        goto out_parent;

    uint8_t footer[VHD_FOOTER_SIZE] = {0};
    memcpy(footer + F_COOKIE, "conectix", 8);
    put32(footer + F_FEATURES, 2);
    put32(footer + F_VERSION, 0x00010000);
    put64(footer + F_DATA_OFFSET, type == VHD_TYPE_FIXED ? UINT64_MAX : VHD_FOOTER_SIZE);
    put32(footer + F_TIMESTAMP, vhd_now());
    memcpy(footer + F_CREATOR_APP, "vsl ", 4);
    put32(footer + F_CREATOR_VER, 0x00010000);
    memcpy(footer + F_CREATOR_OS, "Wi2k", 4);
    put64(footer + F_ORIG_SIZE, size);
    put64(footer + F_CUR_SIZE, size);
    put16(footer + F_CYLS, cyls);
    footer[F_HEADS] = heads;
    footer[F_SPT] = spt;
    put32(footer + F_TYPE, type);
    vhd_guid_generate(footer + F_UUID);
    vhd_footer_seal(footer);

    struct img *file;
    rc = img_file_open(&file, params->filename, IMG_OPEN_RDWR, true);
    if (rc)
        goto out_parent;
    if (type == VHD_TYPE_FIXED) {
        rc = img_file_truncate(file, size + VHD_FOOTER_SIZE);
        if (!rc)
            rc = file->drv->pwrite(file, footer, size, VHD_FOOTER_SIZE);
        goto out_file;
    }
    uint64_t entries = VS_DIV_ROUND_UP(size, block_size);
    uint64_t bat_bytes = VS_ALIGN_UP(entries * 4, VHD_SECTOR);
    uint64_t bat_offset = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
    uint64_t data_start = bat_offset + bat_bytes;
    uint8_t header[VHD_HEADER_SIZE] = {0};
    memcpy(header + H_COOKIE, "cxsparse", 8);
    put64(header + H_DATA_OFFSET, UINT64_MAX);
    put64(header + H_TABLE_OFFSET, bat_offset);
    put32(header + H_VERSION, 0x00010000);
    put32(header + H_MAX_ENTRIES, (uint32_t)entries);
    put32(header + H_BLOCK_SIZE, (uint32_t)block_size);
    uint32_t locbytes = 0;
    if (diff) {
        memcpy(header + H_PARENT_UUID, parent.footer + F_UUID, 16);
        put32(header + H_PARENT_TS, parent.mtime_stamp);
        if (vhd_utf8_to_utf16(parent.name, header + H_PARENT_NAME, 512, true) < 0) {
            rc = vs_error(-EINVAL, "%s: parent file name '%s' is longer than 256 characters",
                          params->filename, parent.name);
            goto out_file;
        }
        size_t cap = 2 * (size_t)VHD_LOCATOR_MAX;
        locdata = vs_calloc(1, cap);
        if (!locdata) {
            rc = -ENOMEM;
            goto out_file;
        }
        uint32_t used;
        rc = vhd_make_locator(header, 0, PLAT_W2RU, parent.relative, data_start, locdata,
                              VHD_LOCATOR_MAX, &used);
        locbytes = used;
        if (!rc)
            rc = vhd_make_locator(header, 1, PLAT_W2KU, parent.absolute, data_start + locbytes,
                                  locdata + locbytes, VHD_LOCATOR_MAX, &used);
        locbytes += used;
        if (rc)
            goto out_file;
    }
    vhd_header_seal(header);
    uint64_t end = data_start + locbytes;
    uint8_t *bat = vs_malloc(bat_bytes);
    if (!bat) {
        rc = -ENOMEM;
        goto out_file;
    }
    memset(bat, 0xff, bat_bytes);
    rc = file->drv->pwrite(file, footer, 0, VHD_FOOTER_SIZE);
    if (!rc)
        rc = file->drv->pwrite(file, header, VHD_FOOTER_SIZE, VHD_HEADER_SIZE);
    if (!rc)
        rc = file->drv->pwrite(file, bat, bat_offset, bat_bytes);
    if (!rc && locbytes)
        rc = file->drv->pwrite(file, locdata, data_start, locbytes);
    if (!rc)
        rc = file->drv->pwrite(file, footer, end, VHD_FOOTER_SIZE);
    free(bat);
out_file:
    free(locdata);
    if (!rc)
        rc = file->drv->flush(file);
    img_close(file);
out_parent:
    vhd_parent_info_free(&parent);
    return rc;
}

/* ---- resize ---------------------------------------------------------------------------------- */

static int vhd_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    struct vhd_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (prealloc && strcmp(prealloc, "off"))
        return img_error(img, -ENOTSUP, "preallocation '%s' is not supported for VHD", prealloc);
    uint64_t new_size;
    uint16_t cyls;
    uint8_t heads, spt;
    int rc =
        vhd_size_geometry(img->filename, size, s->use_current_size, &new_size, &cyls, &heads, &spt);
    if (rc)
        return rc;
    uint64_t old_chs = (uint64_t)get16(s->footer + F_CYLS) * s->footer[F_HEADS] * s->footer[F_SPT];
    if (s->use_current_size && old_chs != VHD_CHS_MAX)
        vhd_geometry(new_size / VHD_SECTOR, &cyls, &heads, &spt); /* Hyper-V style: exact size,
                                                                     geometry for show */
    pthread_mutex_lock(&img->lock);
    if (!vhd_dynamic(s)) {
        rc = img_file_truncate(img->file, new_size + VHD_FOOTER_SIZE);
        if (!rc) {
            put64(s->footer + F_CUR_SIZE, new_size);
            put16(s->footer + F_CYLS, cyls);
            s->footer[F_HEADS] = heads;
            s->footer[F_SPT] = spt;
            img->size = new_size;
            s->fixed_footer = new_size;
            rc = vhd_write_footer(img, false);
        }
        pthread_mutex_unlock(&img->lock);
        return rc;
    }
    uint64_t need = VS_DIV_ROUND_UP(new_size, s->block_size);
    if (need > s->max_entries) {
        /* the BAT can only grow into the slack before the first block */
        uint64_t room = (s->data_start - s->bat_offset) / 4;
        bool blocks_before = false;
        for (uint32_t i = 0; i < s->max_entries; i++) {
            uint32_t e = bat_get(s, i);
            if (e != VHD_UNALLOCATED && (uint64_t)e * VHD_SECTOR < s->bat_offset + need * 4)
                blocks_before = true;
        }
        bool locators_after_bat = false;
        for (int k = 0; k < 8; k++) {
            const uint8_t *loc = s->header + H_LOCATORS + k * H_LOCATOR_SIZE;
            if (get32(loc) && get64(loc + 16) >= s->bat_offset &&
                get64(loc + 16) < s->bat_offset + need * 4)
                locators_after_bat = true;
        }
        if (need > room || blocks_before || locators_after_bat) {
            pthread_mutex_unlock(&img->lock);
            return img_error(img, -ENOTSUP,
                             "cannot grow this dynamic VHD to %" PRIu64 " bytes: its block "
                             "allocation table has room for %" PRIu64
                             " blocks of %u bytes, %" PRIu64
                             " are needed (convert it to a new image instead)",
                             new_size, VS_MIN(room, (uint64_t)UINT32_MAX), s->block_size, need);
        }
        uint32_t *bat = realloc(s->bat, need * 4);
        uint8_t *pending = bat ? realloc(s->pending, need) : NULL;
        if (bat)
            s->bat = bat;
        if (!bat || !pending) {
            pthread_mutex_unlock(&img->lock);
            return -ENOMEM;
        }
        s->pending = pending;
        for (uint64_t i = s->max_entries; i < need; i++) {
            s->bat[i] = VHD_UNALLOCATED;
            s->pending[i] = 0;
        }
        s->max_entries = (uint32_t)need;
        put32(s->header + H_MAX_ENTRIES, s->max_entries);
        rc = vhd_write_bat(img);
        if (!rc)
            rc = vhd_write_header(img);
    } else if (new_size < img->size) {
        /* shrinking: blocks past the end are dropped (their space waits for compact) */
        for (uint64_t i = need; i < s->max_entries; i++)
            if (bat_get(s, (uint32_t)i) != VHD_UNALLOCATED) {
                bat_set(s, (uint32_t)i, VHD_UNALLOCATED);
                if (!rc)
                    rc = vhd_write_bat_sector(img, (uint32_t)i);
            }
    }
    if (!rc) {
        put64(s->footer + F_CUR_SIZE, new_size);
        put16(s->footer + F_CYLS, cyls);
        s->footer[F_HEADS] = heads;
        s->footer[F_SPT] = spt;
        img->size = new_size;
        rc = vhd_write_footer(img, true);
    }
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* ---- compact, make_empty --------------------------------------------------------------------- */

struct vhd_block_ref {
    uint64_t offset;
    uint32_t index;
};

static int vhd_ref_cmp(const void *a, const void *b)
{
    const struct vhd_block_ref *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Move every listed block down to sit contiguously from data_start, then put the footer after the
 * last one and cut the file there. */
static int vhd_pack(struct img *img)
{
    struct vhd_state *s = img->state;
    uint64_t span = (uint64_t)s->bitmap_size + s->block_size;
    struct vhd_block_ref *refs = vs_calloc(VS_MAX(s->max_entries, 1), sizeof(*refs));
    uint8_t *buf = vs_malloc(VHD_COPY_CHUNK);
    int rc = (!refs || !buf) ? -ENOMEM : 0;
    size_t n = 0;
    for (uint32_t i = 0; !rc && i < s->max_entries; i++)
        if (s->bat[i] != VHD_UNALLOCATED)
            refs[n++] = (struct vhd_block_ref){(uint64_t)s->bat[i] * VHD_SECTOR, i};
    qsort(refs, n, sizeof(*refs), vhd_ref_cmp);
    uint64_t at = s->data_start;
    for (size_t k = 0; !rc && k < n; k++) {
        if (refs[k].offset < at) {
            rc = img_error(img, -EINVAL, "BAT entry %u overlaps another block; run check first",
                           refs[k].index);
            break;
        }
        if (refs[k].offset != at) {
            /* copying downwards front to back is safe even when the ranges overlap */
            for (uint64_t done = 0; !rc && done < span; done += VHD_COPY_CHUNK) {
                size_t len = (size_t)VS_MIN((uint64_t)VHD_COPY_CHUNK, span - done);
                rc = img_file_pread(img, buf, refs[k].offset + done, len);
                if (!rc)
                    rc = img_file_pwrite(img, buf, at + done, len);
            }
            s->bat[refs[k].index] = (uint32_t)(at / VHD_SECTOR);
        }
        at += span;
    }
    if (!rc)
        rc = img->file->drv->flush(img->file);
    if (!rc)
        rc = vhd_write_bat(img);
    if (!rc) {
        s->data_end = at;
        rc = vhd_write_footer(img, true);
    }
    if (!rc)
        rc = img_file_truncate(img->file, s->data_end + VHD_FOOTER_SIZE);
    if (!rc)
        rc = img->file->drv->flush(img->file);
    if (!rc)
        s->tail_clean = true;
    free(refs);
    free(buf);
    return rc;
}

static int vhd_compact(struct img *img, struct img_compact *result)
{
    struct vhd_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (!vhd_dynamic(s))
        return img_error(img, -ENOTSUP, "a fixed VHD has no blocks to reclaim");
    uint8_t *buf = vs_malloc(VS_MAX(s->bitmap_size, (uint32_t)VHD_COPY_CHUNK));
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    pthread_mutex_lock(&img->lock);
    for (uint32_t i = 0; !rc && i < s->max_entries; i++) {
        uint32_t e = s->bat[i];
        if (e == VHD_UNALLOCATED)
            continue;
        uint64_t block = (uint64_t)e * VHD_SECTOR;
        rc = img_file_pread(img, buf, block, s->bitmap_size);
        if (rc)
            break;
        /* a differencing block is unused when its bitmap is empty; a dynamic one (whose bitmap
         * readers ignore, as qemu does) when its data is all zeros */
        bool zero = vs_buffer_is_zero(buf, s->bitmap_size);
        if (s->type == VHD_TYPE_DYNAMIC) {
            zero = true;
            for (uint64_t d = 0; zero && !rc && d < s->block_size; d += VHD_COPY_CHUNK) {
                size_t len = (size_t)VS_MIN((uint64_t)VHD_COPY_CHUNK, s->block_size - d);
                rc = img_file_pread(img, buf, block + s->bitmap_size + d, len);
                zero = !rc && vs_buffer_is_zero(buf, len);
            }
        }
        if (!rc && zero) {
            s->bat[i] = VHD_UNALLOCATED;
            result->blocks_freed++;
        }
    }
    free(buf);
    if (!rc)
        rc = vhd_pack(img);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

static int vhd_make_empty(struct img *img)
{
    struct vhd_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (!vhd_dynamic(s))
        return img_error(img, -ENOTSUP, "a fixed VHD cannot be emptied");
    pthread_mutex_lock(&img->lock);
    for (uint32_t i = 0; i < s->max_entries; i++)
        s->bat[i] = VHD_UNALLOCATED;
    int rc = vhd_pack(img);
    /* the child now matches its parent as it is: record the parent's time stamp again */
    if (!rc && s->type == VHD_TYPE_DIFF && img->backing) {
        struct stat st;
        if (stat(img->backing->filename, &st) == 0) {
            put32(s->header + H_PARENT_TS, vhd_mtime_stamp(&st));
            rc = vhd_write_header(img);
        }
    }
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* ---- check ----------------------------------------------------------------------------------- */

static int vhd_check(struct img *img, struct img_check *r, int fix)
{
    struct vhd_state *s = img->state;
    int64_t file_size = img_file_size(img->file);
    if (file_size < 0)
        return (int)file_size;
    uint32_t sum = vhd_checksum(s->footer, VHD_FOOTER_SIZE, F_CHECKSUM);
    if (sum != get32(s->footer + F_CHECKSUM)) {
        r->corruptions++;
        vhd_check_report(r, "footer checksum 0x%08x, expected 0x%08x",
                         get32(s->footer + F_CHECKSUM), sum);
    }
    if (!vhd_dynamic(s)) {
        if ((uint64_t)file_size < img->size + VHD_FOOTER_SIZE) {
            r->corruptions++;
            vhd_check_report(r, "fixed disk file is %" PRId64 " bytes, the disk needs %" PRIu64,
                             file_size, img->size + VHD_FOOTER_SIZE);
        }
        r->image_end_offset = img->size + VHD_FOOTER_SIZE;
        return 0;
    }
    sum = vhd_checksum(s->header, VHD_HEADER_SIZE, H_CHECKSUM);
    if (sum != get32(s->header + H_CHECKSUM)) {
        r->corruptions++;
        vhd_check_report(r, "dynamic header checksum 0x%08x, expected 0x%08x",
                         get32(s->header + H_CHECKSUM), sum);
    }
    uint8_t tail[VHD_FOOTER_SIZE];
    int rc = img_file_pread(img, tail, (uint64_t)file_size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE);
    if (rc)
        return rc;
    if (memcmp(tail, s->footer, VHD_FOOTER_SIZE)) {
        r->corruptions++;
        vhd_check_report(r, "the footer at the end of the file differs from its copy at offset 0");
    }
    uint64_t span = (uint64_t)s->bitmap_size + s->block_size;
    struct vhd_block_ref *refs = vs_calloc(VS_MAX(s->max_entries, 1), sizeof(*refs));
    if (!refs)
        return -ENOMEM;
    size_t n = 0;
    r->total_clusters = VS_DIV_ROUND_UP(img->size, s->block_size);
    uint64_t prev_end = UINT64_MAX;
    for (uint32_t i = 0; i < s->max_entries; i++) {
        uint32_t e = s->bat[i];
        if (e == VHD_UNALLOCATED)
            continue;
        uint64_t off = (uint64_t)e * VHD_SECTOR;
        if (off + span > (uint64_t)file_size - VHD_FOOTER_SIZE) {
            r->corruptions++;
            vhd_check_report(r,
                             "BAT entry %u: block at offset %" PRIu64 " extends beyond the end of "
                             "the file",
                             i, off);
        } else if (off < s->data_start) {
            r->corruptions++;
            vhd_check_report(r,
                             "BAT entry %u: block at offset %" PRIu64 " overlaps the header, BAT "
                             "or parent locators",
                             i, off);
        } else {
            refs[n++] = (struct vhd_block_ref){off, i};
        }
        r->allocated_clusters++;
        if (prev_end != UINT64_MAX && off != prev_end)
            r->fragmented_clusters++;
        prev_end = off + span;
    }
    qsort(refs, n, sizeof(*refs), vhd_ref_cmp);
    uint64_t end = s->data_start;
    for (size_t k = 0; k < n; k++) {
        if (k && refs[k].offset < refs[k - 1].offset + span) {
            r->corruptions++;
            vhd_check_report(
                r, "BAT entries %u and %u: blocks at offsets %" PRIu64 " and %" PRIu64 " overlap",
                refs[k - 1].index, refs[k].index, refs[k - 1].offset, refs[k].offset);
        } else if (refs[k].offset > end) {
            r->leaks += (refs[k].offset - end) / span + ((refs[k].offset - end) % span != 0);
            vhd_check_report(r, "%" PRIu64 " bytes at offset %" PRIu64 " belong to no block",
                             refs[k].offset - end, end);
        }
        end = VS_MAX(end, refs[k].offset + span);
    }
    free(refs);
    r->image_end_offset = end + VHD_FOOTER_SIZE;
    if (fix & IMG_CHECK_FIX_LEAKS && r->leaks && !r->corruptions) {
        uint64_t leaks = r->leaks;
        pthread_mutex_lock(&img->lock);
        rc = vhd_pack(img);
        pthread_mutex_unlock(&img->lock);
        if (!rc) {
            r->leaks_fixed = leaks;
            r->leaks = 0;
            r->image_end_offset = s->data_end + VHD_FOOTER_SIZE;
        }
    }
    return rc;
}

/* ---- measure --------------------------------------------------------------------------------- */

static int vhd_measure(struct vs_opts *opts, struct img *source, uint64_t size, uint64_t *required,
                       uint64_t *fully_allocated)
{
    const char *subformat = vs_opts_take(opts, "subformat");
    bool force_size = false;
    uint64_t block_size = VHD_BLOCK_DEFAULT;
    int rc = vs_opts_take_bool(opts, "force_size", &force_size);
    if (!rc)
        rc = vs_opts_take_size(opts, "block_size", &block_size);
    if (rc)
        return rc;
    vs_opts_take(opts, "preallocation");
    if (block_size < VHD_BLOCK_MIN || block_size > VHD_BLOCK_MAX || (block_size & (block_size - 1)))
        return vs_error(-EINVAL,
                        "block_size %" PRIu64 " must be a power of two from 512 to 256 MiB",
                        block_size);
    if (source)
        size = img_size(source);
    uint64_t vsize;
    uint16_t c;
    uint8_t h, sp;
    rc = vhd_size_geometry("measure", size, force_size, &vsize, &c, &h, &sp);
    if (rc)
        return rc;
    if (subformat && !strcmp(subformat, "fixed")) {
        *required = *fully_allocated = vsize + VHD_FOOTER_SIZE;
        return 0;
    }
    uint64_t entries = VS_DIV_ROUND_UP(vsize, block_size);
    uint64_t bitmap = VS_ALIGN_UP(block_size / VHD_SECTOR / 8, VHD_SECTOR);
    uint64_t meta = 2 * VHD_FOOTER_SIZE + VHD_HEADER_SIZE + VS_ALIGN_UP(entries * 4, VHD_SECTOR);
    uint64_t blocks = 0;
    if (source && (rc = vhd_count_data_blocks(source, size, block_size, &blocks)))
        return rc;
    *required = meta + blocks * (block_size + bitmap);
    *fully_allocated = meta + entries * (block_size + bitmap);
    return 0;
}

const struct img_driver img_driver_vhd = {
    .name = "vhd",
    .aliases = (const char *const[]){"vpc", NULL},
    .probe = vhd_probe,
    .open = vhd_open,
    .close = vhd_close,
    .create = vhd_create,
    .pread = vhd_pread,
    .pwrite = vhd_pwrite,
    .flush = vhd_flush,
    .discard = vhd_discard,
    .write_zeroes = vhd_write_zeroes,
    .block_status = vhd_block_status,
    .truncate = vhd_truncate,
    .check = vhd_check,
    .make_empty = vhd_make_empty,
    .compact = vhd_compact,
    .measure = vhd_measure,
};
