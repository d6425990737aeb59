/*
 * lib/img/vhdx.c — Microsoft's VHDX format (MS-VHDX): dynamic and fixed images read, written and
 * created; differencing images read; a dirty log replayed on a read-write open.
 *
 * The file is regions found through a checksummed table: two alternating 4 KiB headers (the one
 * with the higher sequence number wins), a circular log of metadata updates, a metadata region of
 * GUID-keyed items (block size, disk size, sector sizes, parent locator) and the BAT, whose 64-bit
 * entries give each payload block a state and a 1 MiB-aligned file offset; every chunk of payload
 * entries is followed by the entry of the sector bitmap block that serves differencing disks.
 *
 * The one idea: vessel never leaves anything in the log. Updates go straight to their place (a
 * new block is filled first and its BAT entry written last), and the header's write GUIDs change
 * on the first write of each open, so a crash leaves at worst an unreferenced block — while logs
 * other writers left behind are replayed exactly as the spec's active-sequence search defines.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "img/driver.h"
#include "img/vhd-common.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

#define VHDX_HEADER1           (64 * KiB)
#define VHDX_HEADER2           (128 * KiB)
#define VHDX_REGION1           (192 * KiB)
#define VHDX_REGION2           (256 * KiB)
#define VHDX_HEADER_SIZE       4096u
#define VHDX_REGION_SIZE       (64 * KiB)
#define VHDX_METADATA_TABLE    (64 * KiB)
#define VHDX_MAX_SIZE          (64 * TiB)
#define VHDX_BLOCK_MIN         (1 * MiB)
#define VHDX_BLOCK_MAX         (256 * MiB)
#define VHDX_LOG_MAX           (256 * MiB)
#define VHDX_LOG_SECTOR        4096u
#define VHDX_REPLAY_GROWTH_MAX (1 * GiB)

enum {
    PAYLOAD_NOT_PRESENT = 0,
    PAYLOAD_UNDEFINED = 1,
    PAYLOAD_ZERO = 2,
    PAYLOAD_UNMAPPED = 3,
    PAYLOAD_FULLY_PRESENT = 6,
    PAYLOAD_PARTIALLY_PRESENT = 7,
    SB_PRESENT = 6,
};

#define BAT_STATE(e)         ((unsigned)((e)&7))
#define BAT_OFFSET(e)        ((e) & ~((1ull << 20) - 1))
#define BAT_MAKE(state, off) ((uint64_t)(off) | (state))

/* GUIDs in their on-disk (Windows mixed-endian) byte order */
typedef uint8_t vhdx_guid[16];

static const char *const GUID_BAT = "2DC27766-F623-4200-9D64-115E9BFD4A08";
static const char *const GUID_METADATA = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
static const char *const GUID_FILE_PARAMS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
static const char *const GUID_DISK_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
static const char *const GUID_PAGE83 = "BECA12AB-B2E6-4523-93EF-C309E000C746";
static const char *const GUID_LOGICAL_SECTOR = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
static const char *const GUID_PHYSICAL_SECTOR = "CDA348C7-445D-4471-9CC9-E9885251C556";
static const char *const GUID_PARENT_LOCATOR = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C";
static const char *const GUID_VHDX_LOCATOR = "B04AEFB7-D19E-4A81-B789-25B8E9445913";

struct vhdx_state {
    uint8_t header[VHDX_HEADER_SIZE]; /* the current header */
    uint64_t header_offset;           /* where it lives (64 or 128 KiB) */
    uint64_t log_offset, log_length;
    uint64_t bat_offset, bat_length;
    uint64_t meta_offset, meta_length;
    uint32_t block_size;
    uint32_t logical_sector;
    uint32_t physical_sector;
    bool has_parent;
    bool leave_allocated;
    uint8_t page83[16];
    uint64_t chunk_ratio;
    uint64_t data_blocks;
    uint64_t bat_entries;
    uint64_t *bat; /* host order; read with atomics, changed under img->lock */
    uint8_t *pending;
    uint64_t file_end;   /* next block goes here (1 MiB aligned) */
    bool header_updated; /* write GUIDs refreshed during this open */
    bool log_dirty;      /* a log sequence waits for replay (check-mode read-only opens only) */
    pthread_cond_t allocated;
    struct vhd_extent_cache holes; /* container extents, for block status */
};

/* ---- byte helpers ---------------------------------------------------------------------------- */

static uint16_t le16_at(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t le32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}
static uint64_t le64_at(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}
static void le16_put(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void le32_put(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}
static void le64_put(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX" (braces allowed) to on-disk bytes. */
static bool vhdx_guid_parse(const char *text, vhdx_guid out)
{
    uint8_t raw[16];
    int n = 0;
    if (*text == '{')
        text++;
    for (const char *p = text; *p && *p != '}' && n < 32; p++) {
        if (*p == '-')
            continue;
        int h = hexval(*p), l = p[1] ? hexval(p[1]) : -1;
        if (h < 0 || l < 0)
            return false;
        raw[n / 2] = (uint8_t)(h << 4 | l);
        n += 2;
        p++;
    }
    if (n != 32)
        return false;
    /* Data1, Data2, Data3 are little-endian on disk */
    out[0] = raw[3], out[1] = raw[2], out[2] = raw[1], out[3] = raw[0];
    out[4] = raw[5], out[5] = raw[4], out[6] = raw[7], out[7] = raw[6];
    memcpy(out + 8, raw + 8, 8);
    return true;
}

static void vhdx_guid_string(const vhdx_guid g, char buf[39])
{
    snprintf(buf, 39, "{%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x}",
             g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13],
             g[14], g[15]);
}

static bool guid_is(const uint8_t *bytes, const char *text)
{
    vhdx_guid g;
    return vhdx_guid_parse(text, g) && !memcmp(bytes, g, 16);
}

static uint64_t bat_get(struct vhdx_state *s, uint64_t i)
{
    return __atomic_load_n(&s->bat[i], __ATOMIC_ACQUIRE);
}

static void bat_set(struct vhdx_state *s, uint64_t i, uint64_t v)
{
    __atomic_store_n(&s->bat[i], v, __ATOMIC_RELEASE);
}

static uint64_t payload_index(const struct vhdx_state *s, uint64_t block)
{
    return block + block / s->chunk_ratio;
}

static uint64_t bitmap_index(const struct vhdx_state *s, uint64_t block)
{
    return block / s->chunk_ratio * (s->chunk_ratio + 1) + s->chunk_ratio;
}

/* Checksum of a structure whose CRC-32C field sits at byte 4. */
static uint32_t vhdx_checksum(const uint8_t *buf, size_t len)
{
    static const uint8_t zero[4];
    uint32_t crc = vhd_crc32c(0, buf, 4);
    crc = vhd_crc32c(crc, zero, 4);
    return vhd_crc32c(crc, buf + 8, len - 8);
}

static void vhdx_seal(uint8_t *buf, size_t len)
{
    le32_put(buf + 4, vhdx_checksum(buf, len));
}

/* ---- headers --------------------------------------------------------------------------------- */

#define HDR_SEQ         8
#define HDR_FILE_WRITE  16
#define HDR_DATA_WRITE  32
#define HDR_LOG_GUID    48
#define HDR_LOG_VERSION 64
#define HDR_VERSION     66
#define HDR_LOG_LENGTH  68
#define HDR_LOG_OFFSET  72

static bool vhdx_header_valid(const uint8_t *h)
{
    return !memcmp(h, "head", 4) && le32_at(h + 4) == vhdx_checksum(h, VHDX_HEADER_SIZE) &&
           le16_at(h + HDR_VERSION) == 1;
}

/* Write the header into the slot that is not current, with the next sequence number: a crash
 * in between leaves the old one in force. */
static int vhdx_write_header(struct img *img)
{
    struct vhdx_state *s = img->state;
    uint8_t h[VHDX_HEADER_SIZE];
    memcpy(h, s->header, sizeof(h));
    le64_put(h + HDR_SEQ, le64_at(s->header + HDR_SEQ) + 1);
    vhdx_seal(h, sizeof(h));
    uint64_t slot = s->header_offset == VHDX_HEADER1 ? VHDX_HEADER2 : VHDX_HEADER1;
    int rc = img_file_pwrite(img, h, slot, sizeof(h));
    if (!rc)
        rc = img->file->drv->flush(img->file);
    if (!rc) {
        memcpy(s->header, h, sizeof(h));
        s->header_offset = slot;
    }
    return rc;
}

/* First change of this open: new file and data write GUIDs (the spec's rule, which also tells
 * a differencing child that its parent changed). Caller holds img->lock. */
static int vhdx_begin_write(struct img *img)
{
    struct vhdx_state *s = img->state;
    if (s->header_updated)
        return 0;
    vhd_guid_generate(s->header + HDR_FILE_WRITE);
    vhd_guid_generate(s->header + HDR_DATA_WRITE);
    int rc = vhdx_write_header(img);
    if (!rc)
        __atomic_store_n(&s->header_updated, true, __ATOMIC_RELEASE);
    return rc;
}

/* ---- log replay ------------------------------------------------------------------------------ */

struct vhdx_log {
    uint8_t *buf; /* the whole log */
    uint64_t len; /* bytes, a multiple of 4 KiB */
    const uint8_t *guid;
};

/* Copy LEN bytes of the circular log from OFF into OUT. */
static void log_copy(const struct vhdx_log *log, uint64_t off, uint8_t *out, uint64_t len)
{
    while (len) {
        off %= log->len;
        uint64_t n = VS_MIN(len, log->len - off);
        memcpy(out, log->buf + off, n);
        out += n;
        off += n;
        len -= n;
    }
}

/* The entry at OFF if it is valid: returns its length (0 if invalid) and its sequence number. */
static uint64_t log_entry_valid(const struct vhdx_log *log, uint64_t off, uint64_t *seq,
                                uint64_t *tail)
{
    uint8_t head[VHDX_LOG_SECTOR];
    log_copy(log, off, head, sizeof(head));
    if (memcmp(head, "loge", 4))
        return 0;
    uint32_t length = le32_at(head + 8);
    uint32_t tl = le32_at(head + 12);
    uint64_t sq = le64_at(head + 16);
    uint32_t count = le32_at(head + 24);
    if (!length || length % VHDX_LOG_SECTOR || length > log->len || tl % VHDX_LOG_SECTOR ||
        tl >= log->len || sq == 0 || memcmp(head + 32, log->guid, 16))
        return 0;
    uint64_t desc_sectors = VS_DIV_ROUND_UP(64 + 32 * (uint64_t)count, VHDX_LOG_SECTOR);
    if (desc_sectors * VHDX_LOG_SECTOR > length)
        return 0;
    uint8_t *entry = vs_malloc(length);
    if (!entry)
        return 0;
    log_copy(log, off, entry, length);
    bool ok = le32_at(entry + 4) == vhdx_checksum(entry, length);
    uint64_t data = 0;
    for (uint32_t d = 0; ok && d < count; d++) {
        const uint8_t *desc = entry + 64 + 32 * (uint64_t)d;
        if (!memcmp(desc, "desc", 4)) {
            uint64_t at = (desc_sectors + data) * VHDX_LOG_SECTOR;
            ok = le64_at(desc + 16) % VHDX_LOG_SECTOR == 0 && le64_at(desc + 24) == sq &&
                 at + VHDX_LOG_SECTOR <= length && !memcmp(entry + at, "data", 4) &&
                 le32_at(entry + at + 4) == (uint32_t)(sq >> 32) &&
                 le32_at(entry + at + 4092) == (uint32_t)sq;
            data++;
        } else if (!memcmp(desc, "zero", 4)) {
            ok = le64_at(desc + 8) % VHDX_LOG_SECTOR == 0 &&
                 le64_at(desc + 16) % VHDX_LOG_SECTOR == 0 && le64_at(desc + 24) == sq;
        } else {
            ok = false;
        }
    }
    free(entry);
    if (!ok)
        return 0;
    *seq = sq;
    *tail = tl;
    return length;
}

struct vhdx_sequence {
    uint64_t start; /* offset of the tail entry */
    uint64_t count; /* entries */
    uint64_t seq;   /* head's sequence number */
    uint64_t head;  /* offset of the head entry */
};

/* The spec's search for the active sequence (MS-VHDX 2.3.3). */
static bool log_find_active(const struct vhdx_log *log, struct vhdx_sequence *active)
{
    memset(active, 0, sizeof(*active));
    uint64_t cur_tail = 0, old_tail = 0;
    for (uint64_t guard = 0; guard <= log->len / VHDX_LOG_SECTOR + 1; guard++) {
        struct vhdx_sequence cur = {.start = cur_tail};
        uint64_t pos = cur_tail, len, seq, tail, head_tail = 0, span = 0;
        while (span < log->len && (len = log_entry_valid(log, pos, &seq, &tail)) != 0) {
            if ((cur.count && seq != cur.seq + 1) || span + len > log->len)
                break;
            cur.head = pos;
            cur.seq = seq;
            cur.count++;
            head_tail = tail;
            pos = (pos + len) % log->len;
            span += len;
        }
        bool valid = false;
        if (cur.count) {
            /* the head's tail must lie within the sequence; the active part starts there */
            uint64_t rel = (head_tail + log->len - cur.start) % log->len;
            valid = rel < span;
            uint64_t p = cur.start;
            while (valid && p != head_tail && cur.count > 1) {
                uint64_t s2, t2, l2 = log_entry_valid(log, p, &s2, &t2);
                if (!l2)
                    break;
                p = (p + l2) % log->len;
                cur.count--;
            }
            valid = valid && p == head_tail;
            cur.start = head_tail;
        }
        if (valid && cur.seq > active->seq)
            *active = cur;
        if (!cur.count || !valid)
            cur_tail = (cur_tail + VHDX_LOG_SECTOR) % log->len;
        else
            cur_tail = pos;
        if (cur_tail <= old_tail)
            break; /* wrapped: the whole log was scanned */
        old_tail = cur_tail;
    }
    return active->count != 0;
}

/* Apply every descriptor of the active sequence, oldest entry first. */
static int log_replay(struct img *img, const struct vhdx_log *log, const struct vhdx_sequence *seq,
                      int64_t file_size)
{
    uint64_t pos = seq->start;
    uint64_t limit = (uint64_t)file_size + VHDX_REPLAY_GROWTH_MAX;
    uint8_t head[VHDX_LOG_SECTOR];
    log_copy(log, seq->head, head, sizeof(head));
    uint64_t flushed = le64_at(head + 48), last = le64_at(head + 56);
    if (flushed > (uint64_t)file_size)
        return img_error(img, -EINVAL,
                         "log: flushed file offset %" PRIu64
                         " is beyond the end of the file (%" PRId64
                         " bytes): the image was truncated",
                         flushed, file_size);
    if (last > limit)
        return img_error(img, -EINVAL, "log: last file offset %" PRIu64 " is implausibly large",
                         last);
    int rc = 0;
    for (uint64_t e = 0; !rc && e < seq->count; e++) {
        uint64_t sq, tail;
        uint64_t len = log_entry_valid(log, pos, &sq, &tail);
        if (!len)
            return img_error(img, -EIO, "log: entry at %" PRIu64 " changed during replay", pos);
        uint8_t *entry = vs_malloc(len);
        if (!entry)
            return -ENOMEM;
        log_copy(log, pos, entry, len);
        uint32_t count = le32_at(entry + 24);
        uint64_t desc_sectors = VS_DIV_ROUND_UP(64 + 32 * (uint64_t)count, VHDX_LOG_SECTOR);
        uint64_t data = 0;
        for (uint32_t d = 0; !rc && d < count; d++) {
            const uint8_t *desc = entry + 64 + 32 * (uint64_t)d;
            uint64_t target = le64_at(desc + 16);
            if (!memcmp(desc, "desc", 4)) {
                if (target + VHDX_LOG_SECTOR > limit) {
                    rc = img_error(img, -EINVAL,
                                   "log: data descriptor writes at offset %" PRIu64
                                   ", far beyond the file",
                                   target);
                    break;
                }
                uint8_t sector[VHDX_LOG_SECTOR];
                const uint8_t *src = entry + (desc_sectors + data++) * VHDX_LOG_SECTOR;
                memcpy(sector, desc + 8, 8);        /* leading bytes */
                memcpy(sector + 8, src + 8, 4084);  /* payload */
                memcpy(sector + 4092, desc + 4, 4); /* trailing bytes */
                rc = img_file_pwrite(img, sector, target, sizeof(sector));
            } else {
                uint64_t zlen = le64_at(desc + 8);
                if (target > limit || zlen > limit - target) {
                    rc = img_error(img, -EINVAL,
                                   "log: zero descriptor [%" PRIu64 ", +%" PRIu64
                                   ") is far beyond the file",
                                   target, zlen);
                    break;
                }
                int64_t now = img_file_size(img->file);
                if (now < 0) {
                    rc = (int)now;
                    break;
                }
                uint64_t inside = target < (uint64_t)now ? VS_MIN(zlen, (uint64_t)now - target) : 0;
                if (inside)
                    rc =
                        img->file->drv->write_zeroes(img->file, target, inside, IMG_ZERO_MAY_UNMAP);
                if (!rc && target + zlen > (uint64_t)now)
                    rc = img_file_truncate(img->file, target + zlen);
            }
        }
        free(entry);
        pos = (pos + len) % log->len;
    }
    if (!rc) {
        int64_t now = img_file_size(img->file);
        if (now < 0)
            rc = (int)now;
        else if ((uint64_t)now < last)
            rc = img_file_truncate(img->file, last);
    }
    if (!rc)
        rc = img->file->drv->flush(img->file);
    return rc;
}

/* A non-zero log GUID may mean updates wait in the log: replay them (read-write) or refuse. */
static int vhdx_open_log(struct img *img, int64_t file_size)
{
    struct vhdx_state *s = img->state;
    if (vs_buffer_is_zero(s->header + HDR_LOG_GUID, 16))
        return 0;
    if (s->log_length > VHDX_LOG_MAX)
        return img_error(img, -EINVAL, "header log length %" PRIu64 " exceeds 256 MiB",
                         s->log_length);
    struct vhdx_log log = {.len = s->log_length, .guid = s->header + HDR_LOG_GUID};
    log.buf = vs_malloc(s->log_length);
    if (!log.buf)
        return -ENOMEM;
    int rc = img_file_pread(img, log.buf, s->log_offset, s->log_length);
    struct vhdx_sequence seq;
    bool found = !rc && log_find_active(&log, &seq);
    if (!rc && found) {
        if (!(img->flags & IMG_OPEN_RDWR)) {
            if (img->flags & IMG_OPEN_CHECK)
                s->log_dirty = true;
            else
                rc = img_error(img, -EPERM,
                               "the log holds %" PRIu64 " unreplayed update(s): open the image "
                               "read-write (e.g. 'vessel img check -r all') to replay it",
                               seq.count);
        } else {
            rc = log_replay(img, &log, &seq, file_size);
        }
    }
    if (!rc && (img->flags & IMG_OPEN_RDWR)) {
        /* replayed, or nothing valid in it: the log is empty from now on */
        memset(s->header + HDR_LOG_GUID, 0, 16);
        rc = vhdx_write_header(img);
    }
    free(log.buf);
    return rc;
}

/* ---- open ------------------------------------------------------------------------------------ */

static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= 8 && !memcmp(buf, "vhdxfile", 8) ? 100 : 0;
}

static void vhdx_free_state(struct vhdx_state *s)
{
    if (!s)
        return;
    free(s->bat);
    free(s->pending);
    pthread_cond_destroy(&s->allocated);
    vhd_extent_cache_destroy(&s->holes);
    free(s);
}

static int vhdx_read_regions(struct img *img, int64_t file_size)
{
    struct vhdx_state *s = img->state;
    uint8_t *rt = vs_malloc(VHDX_REGION_SIZE);
    if (!rt)
        return -ENOMEM;
    int rc = img_file_pread(img, rt, VHDX_REGION1, VHDX_REGION_SIZE);
    bool ok =
        !rc && !memcmp(rt, "regi", 4) && le32_at(rt + 4) == vhdx_checksum(rt, VHDX_REGION_SIZE);
    if (!rc && !ok) {
        rc = img_file_pread(img, rt, VHDX_REGION2, VHDX_REGION_SIZE);
        ok =
            !rc && !memcmp(rt, "regi", 4) && le32_at(rt + 4) == vhdx_checksum(rt, VHDX_REGION_SIZE);
    }
    if (!rc && !ok)
        rc = img_error(img, -EINVAL,
                       "region table: neither copy has a valid signature and "
                       "checksum");
    uint32_t count = rc ? 0 : le32_at(rt + 8);
    if (!rc && count > 2047)
        rc = img_error(img, -EINVAL, "region table entry count %u exceeds 2047", count);
    for (uint32_t i = 0; !rc && i < count; i++) {
        const uint8_t *e = rt + 16 + 32 * (uint64_t)i;
        uint64_t off = le64_at(e + 16);
        uint32_t len = le32_at(e + 24);
        bool required = le32_at(e + 28) & 1;
        bool bat = guid_is(e, GUID_BAT), meta = guid_is(e, GUID_METADATA);
        if (!bat && !meta) {
            if (required)
                rc = img_error(img, -ENOTSUP, "region table entry %u: unknown required region", i);
            continue;
        }
        if (off % MiB || len % MiB || off < MiB || len == 0 || off > (uint64_t)file_size ||
            len > (uint64_t)file_size - off) {
            rc = img_error(img, -EINVAL,
                           "region table: %s region [%" PRIu64 ", +%u) is misaligned or outside "
                           "the file",
                           bat ? "BAT" : "metadata", off, len);
            break;
        }
        if (bat) {
            s->bat_offset = off;
            s->bat_length = len;
        } else {
            s->meta_offset = off;
            s->meta_length = len;
        }
    }
    if (!rc && (!s->bat_length || !s->meta_length))
        rc = img_error(img, -EINVAL, "region table: no %s region",
                       !s->bat_length ? "BAT" : "metadata");
    free(rt);
    return rc;
}

/* Read a metadata item's bytes (LEN exactly) into OUT; *found false when absent. */
static int vhdx_read_metadata(struct img *img, const uint8_t *table, const char *guid, void *out,
                              uint32_t want, bool *found, uint32_t *got_len, uint8_t **alloc)
{
    struct vhdx_state *s = img->state;
    uint16_t count = le16_at(table + 10);
    *found = false;
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = table + 32 + 32 * (uint64_t)i;
        if (!guid_is(e, guid))
            continue;
        uint32_t off = le32_at(e + 16), len = le32_at(e + 20);
        if (off < VHDX_METADATA_TABLE || off > s->meta_length || len > s->meta_length - off)
            return img_error(img, -EINVAL,
                             "metadata item %s at [%u, +%u) is outside the "
                             "metadata region",
                             guid, off, len);
        if (alloc) {
            if (len > 64 * KiB)
                return img_error(img, -EINVAL, "metadata item %s is %u bytes, more than 64 KiB",
                                 guid, len);
            *alloc = vs_malloc(VS_MAX(len, 1));
            if (!*alloc)
                return -ENOMEM;
            *got_len = len;
            *found = true;
            return img_file_pread(img, *alloc, s->meta_offset + off, len);
        }
        if (len < want)
            return img_error(img, -EINVAL, "metadata item %s is %u bytes, expected %u", guid, len,
                             want);
        *found = true;
        return img_file_pread(img, out, s->meta_offset + off, want);
    }
    return 0;
}

/* Parent locator: returns malloc'd relative and absolute paths and the linkage GUID text. */
static int vhdx_parse_locator(struct img *img, const uint8_t *loc, uint32_t len, char **relative,
                              char **absolute, char **linkage, char **linkage2)
{
    if (len < 20)
        return img_error(img, -EINVAL, "parent locator is %u bytes, too short", len);
    if (!guid_is(loc, GUID_VHDX_LOCATOR))
        return img_error(img, -ENOTSUP, "parent locator type is not VHDX");
    uint16_t count = le16_at(loc + 18);
    if (20 + 12 * (uint64_t)count > len)
        return img_error(img, -EINVAL, "parent locator: %u entries overflow its %u bytes", count,
                         len);
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = loc + 20 + 12 * (uint64_t)i;
        uint32_t ko = le32_at(e), vo = le32_at(e + 4);
        uint16_t kl = le16_at(e + 8), vl = le16_at(e + 10);
        if (!ko || !vo || ko > len || kl > len - ko || vo > len || vl > len - vo)
            return img_error(img, -EINVAL, "parent locator entry %u points outside the locator", i);
        char *key = vhd_utf16_to_utf8(loc + ko, kl, false);
        char *value = key ? vhd_utf16_to_utf8(loc + vo, vl, false) : NULL;
        if (!key || !value) {
            free(key);
            return img_error(img, -EINVAL, "parent locator entry %u: %s", i, vs_error_message());
        }
        char **slot = !strcmp(key, "relative_path")         ? relative
                      : !strcmp(key, "absolute_win32_path") ? absolute
                      : !strcmp(key, "parent_linkage")      ? linkage
                      : !strcmp(key, "parent_linkage2")     ? linkage2
                                                            : NULL;
        free(key);
        if (slot && !*slot)
            *slot = value;
        else
            free(value);
    }
    return 0;
}

/* Read the current header of another VHDX file (the parent) for its data write GUID. */
static int vhdx_peek_data_guid(const char *path, uint8_t guid[16])
{
    struct img *file;
    int rc = img_file_open(&file, path, IMG_OPEN_NO_LOCK, false);
    if (rc)
        return rc;
    uint8_t *h = vs_malloc(2 * VHDX_HEADER_SIZE);
    rc = h ? 0 : -ENOMEM;
    if (!rc)
        rc = file->drv->pread(file, h, VHDX_HEADER1, VHDX_HEADER_SIZE);
    if (!rc)
        rc = file->drv->pread(file, h + VHDX_HEADER_SIZE, VHDX_HEADER2, VHDX_HEADER_SIZE);
    if (!rc) {
        bool v1 = vhdx_header_valid(h), v2 = vhdx_header_valid(h + VHDX_HEADER_SIZE);
        const uint8_t *cur = NULL;
        if (v1 && v2)
            cur = le64_at(h + HDR_SEQ) >= le64_at(h + VHDX_HEADER_SIZE + HDR_SEQ)
                      ? h
                      : h + VHDX_HEADER_SIZE;
        else if (v1 || v2)
            cur = v1 ? h : h + VHDX_HEADER_SIZE;
        if (cur)
            memcpy(guid, cur + HDR_DATA_WRITE, 16);
        else
            rc = vs_error(-EINVAL, "%s: not a VHDX file (no valid header)", path);
    }
    free(h);
    img_close(file);
    return rc;
}

static int vhdx_open_parent(struct img *img, const uint8_t *loc, uint32_t len)
{
    char *relative = NULL, *absolute = NULL, *linkage = NULL, *linkage2 = NULL;
    int rc = vhdx_parse_locator(img, loc, len, &relative, &absolute, &linkage, &linkage2);
    if (!rc && !linkage)
        rc = img_error(img, -EINVAL, "parent locator has no parent_linkage");
    if (!rc && !relative && !absolute)
        rc = img_error(img, -EINVAL,
                       "parent locator has neither relative_path nor "
                       "absolute_win32_path");
    if (rc)
        goto out;
    if (relative)
        vhd_path_from_windows(relative);
    if (absolute) {
        if (!strncmp(absolute, "\\\\?\\", 4))
            memmove(absolute, absolute + 4, strlen(absolute + 4) + 1);
        vhd_path_from_windows(absolute);
    }
    const char *cands[2] = {relative, absolute};
    char *found = NULL;
    int idx = vhd_find_parent(img->filename, cands, 2, &found);
    if (idx == -ENOMEM) {
        rc = idx;
        goto out;
    }
    if (idx < 0) {
        if (img->flags & IMG_OPEN_NO_BACKING) {
            img->backing_name = vs_strdup(relative ? relative : absolute);
            rc = img->backing_name ? 0 : -ENOMEM;
        } else {
            rc = img_error(img, -ENOENT,
                           "parent disk not found: tried relative path '%s' and absolute path "
                           "'%s'",
                           relative ? relative : "(none)", absolute ? absolute : "(none)");
        }
        goto out;
    }
    img->backing_name = found;
    img->backing_format = vs_strdup("vhdx");
    if (!img->backing_format) {
        rc = -ENOMEM;
        goto out;
    }
    if (img->flags & IMG_OPEN_NO_BACKING)
        goto out;
    const char *slash = strrchr(img->filename, '/');
    char *path = (found[0] == '/' || !slash)
                     ? vs_strdup(found)
                     : vs_asprintf("%.*s/%s", (int)(slash - img->filename), img->filename, found);
    if (!path) {
        rc = -ENOMEM;
        goto out;
    }
    uint8_t guid[16];
    rc = vhdx_peek_data_guid(path, guid);
    if (!rc) {
        char got[39];
        vhdx_guid_string(guid, got);
        bool match = !strcasecmp(got, linkage) || (linkage2 && !strcasecmp(got, linkage2));
        if (!match)
            rc = img_error(img, -EINVAL,
                           "parent '%s' has data write GUID %s, but this differencing disk was "
                           "made for %s (the parent was modified)",
                           path, got, linkage);
    } else {
        rc = vs_error_prefix(rc, "%s: parent", img->filename);
    }
    free(path);
out:
    free(relative);
    free(absolute);
    free(linkage);
    free(linkage2);
    return rc;
}

static int vhdx_open_metadata(struct img *img)
{
    struct vhdx_state *s = img->state;
    uint8_t *table = vs_malloc(VHDX_METADATA_TABLE);
    if (!table)
        return -ENOMEM;
    int rc = img_file_pread(img, table, s->meta_offset, VHDX_METADATA_TABLE);
    if (!rc && memcmp(table, "metadata", 8))
        rc = img_error(img, -EINVAL, "metadata table signature is not 'metadata'");
    uint16_t count = rc ? 0 : le16_at(table + 10);
    if (!rc && count > 2047)
        rc = img_error(img, -EINVAL, "metadata table entry count %u exceeds 2047", count);
    const char *known[] = {GUID_FILE_PARAMS,    GUID_DISK_SIZE,       GUID_PAGE83,
                           GUID_LOGICAL_SECTOR, GUID_PHYSICAL_SECTOR, GUID_PARENT_LOCATOR};
    for (uint16_t i = 0; !rc && i < count; i++) {
        const uint8_t *e = table + 32 + 32 * (uint64_t)i;
        bool is_known = false;
        for (size_t k = 0; k < VS_ARRAY_SIZE(known); k++)
            is_known |= guid_is(e, known[k]);
        if (!is_known && (le32_at(e + 24) & 4))
            rc = img_error(img, -ENOTSUP, "metadata entry %u: unknown required item", i);
    }
    uint8_t params[8], size[8], ls[4], ps[4];
    bool f1 = false, f2 = false, f3 = false, f4 = false, f5 = false;
    if (!rc)
        rc = vhdx_read_metadata(img, table, GUID_FILE_PARAMS, params, 8, &f1, NULL, NULL);
    if (!rc)
        rc = vhdx_read_metadata(img, table, GUID_DISK_SIZE, size, 8, &f2, NULL, NULL);
    if (!rc)
        rc = vhdx_read_metadata(img, table, GUID_LOGICAL_SECTOR, ls, 4, &f3, NULL, NULL);
    if (!rc)
        rc = vhdx_read_metadata(img, table, GUID_PHYSICAL_SECTOR, ps, 4, &f4, NULL, NULL);
    if (!rc)
        rc = vhdx_read_metadata(img, table, GUID_PAGE83, s->page83, 16, &f5, NULL, NULL);
    if (!rc && !(f1 && f2 && f3 && f4))
        rc = img_error(img, -EINVAL, "metadata: required item '%s' is missing",
                       !f1   ? "file parameters"
                       : !f2 ? "virtual disk size"
                       : !f3 ? "logical sector size"
                             : "physical sector size");
    if (rc)
        goto out;
    s->block_size = le32_at(params);
    s->leave_allocated = le32_at(params + 4) & 1;
    s->has_parent = le32_at(params + 4) & 2;
    s->logical_sector = le32_at(ls);
    s->physical_sector = le32_at(ps);
    uint64_t vsize = le64_at(size);
    if (s->block_size < VHDX_BLOCK_MIN || s->block_size > VHDX_BLOCK_MAX ||
        (s->block_size & (s->block_size - 1))) {
        rc = img_error(img, -EINVAL,
                       "file parameters: block size %u is not a power of two from "
                       "1 MiB to 256 MiB",
                       s->block_size);
        goto out;
    }
    if (s->logical_sector != 512 && s->logical_sector != 4096) {
        rc =
            img_error(img, -EINVAL, "logical sector size %u is not 512 or 4096", s->logical_sector);
        goto out;
    }
    if (s->physical_sector != 512 && s->physical_sector != 4096) {
        rc = img_error(img, -EINVAL, "physical sector size %u is not 512 or 4096",
                       s->physical_sector);
        goto out;
    }
    if (vsize > VHDX_MAX_SIZE || vsize % s->logical_sector || vsize == 0) {
        rc = img_error(img, -EINVAL,
                       "virtual disk size %" PRIu64 " is not a multiple of the "
                       "sector size up to 64 TiB",
                       vsize);
        goto out;
    }
    img->size = vsize;
    s->chunk_ratio = (1ull << 23) * s->logical_sector / s->block_size;
    s->data_blocks = VS_DIV_ROUND_UP(vsize, s->block_size);
    uint64_t bitmap_blocks = VS_DIV_ROUND_UP(s->data_blocks, s->chunk_ratio);
    s->bat_entries = s->has_parent ? bitmap_blocks * (s->chunk_ratio + 1)
                                   : s->data_blocks + (s->data_blocks - 1) / s->chunk_ratio;
    if (s->bat_entries * 8 > s->bat_length) {
        rc = img_error(img, -EINVAL,
                       "BAT region of %" PRIu64 " bytes is too small for %" PRIu64 " entries",
                       s->bat_length, s->bat_entries);
        goto out;
    }
    if (s->has_parent) {
        uint8_t *loc = NULL;
        uint32_t len = 0;
        bool found = false;
        rc = vhdx_read_metadata(img, table, GUID_PARENT_LOCATOR, NULL, 0, &found, &len, &loc);
        if (!rc && !found)
            rc = img_error(img, -EINVAL, "differencing disk without a parent locator");
        if (!rc)
            rc = vhdx_open_parent(img, loc, len);
        free(loc);
    }
out:
    free(table);
    return rc;
}

static int vhdx_open(struct img *img)
{
    struct vhdx_state *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_cond_init(&s->allocated, NULL);
    vhd_extent_cache_init(&s->holes);
    img->state = s;
    bool tolerant = img->flags & IMG_OPEN_CHECK;
    int rc;
    uint8_t *h2 = NULL;
    int64_t file_size = img_file_size(img->file);
    if (file_size < 0) {
        rc = (int)file_size;
        goto fail;
    }
    if ((uint64_t)file_size < MiB) {
        rc = img_error(img, -EINVAL,
                       "file of %" PRId64 " bytes is too small for VHDX (1 MiB of "
                       "headers)",
                       file_size);
        goto fail;
    }
    uint8_t sig[8];
    rc = img_file_pread(img, sig, 0, 8);
    if (!rc && memcmp(sig, "vhdxfile", 8))
        rc = img_error(img, -EINVAL, "file type identifier is not 'vhdxfile'");
    h2 = vs_malloc(VHDX_HEADER_SIZE);
    if (!rc && !h2)
        rc = -ENOMEM;
    if (!rc)
        rc = img_file_pread(img, s->header, VHDX_HEADER1, VHDX_HEADER_SIZE);
    if (!rc)
        rc = img_file_pread(img, h2, VHDX_HEADER2, VHDX_HEADER_SIZE);
    if (rc)
        goto fail;
    bool v1 = vhdx_header_valid(s->header), v2 = vhdx_header_valid(h2);
    if (!v1 && !v2) {
        rc = img_error(img, -EINVAL, "neither header has a valid signature, checksum and version");
        goto fail;
    }
    s->header_offset = VHDX_HEADER1;
    if (!v1 || (v2 && le64_at(h2 + HDR_SEQ) > le64_at(s->header + HDR_SEQ))) {
        memcpy(s->header, h2, VHDX_HEADER_SIZE);
        s->header_offset = VHDX_HEADER2;
    }
    s->log_offset = le64_at(s->header + HDR_LOG_OFFSET);
    s->log_length = le32_at(s->header + HDR_LOG_LENGTH);
    if (le16_at(s->header + HDR_LOG_VERSION) != 0) {
        rc = img_error(img, -ENOTSUP, "header log version %u is not supported (0)",
                       le16_at(s->header + HDR_LOG_VERSION));
        goto fail;
    }
    if (s->log_offset % MiB || s->log_length % MiB || s->log_offset < MiB ||
        s->log_offset > (uint64_t)file_size ||
        s->log_length > (uint64_t)file_size - s->log_offset) {
        rc = img_error(img, -EINVAL,
                       "header log [%" PRIu64 ", +%" PRIu64 ") is misaligned or "
                       "outside the file",
                       s->log_offset, s->log_length);
        goto fail;
    }
    rc = vhdx_read_regions(img, file_size);
    if (!rc)
        rc = vhdx_open_log(img, file_size);
    if (!rc && (img->flags & IMG_OPEN_RDWR))
        file_size = img_file_size(img->file); /* replay may have grown it */
    if (!rc && file_size < 0)
        rc = (int)file_size;
    if (!rc)
        rc = vhdx_open_metadata(img);
    if (rc)
        goto fail;
    img->cluster_size = s->block_size;
    img->write_unit = 512; /* a fresh block is allocated sparse: its unwritten parts read zeros */
    s->bat = vs_malloc(s->bat_entries * 8);
    s->pending = vs_calloc(s->data_blocks, 1);
    if (!s->bat || !s->pending) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = img_file_pread(img, s->bat, s->bat_offset, s->bat_entries * 8);
    if (rc)
        goto fail;
    uint64_t end = VS_MAX(s->bat_offset + s->bat_length, s->meta_offset + s->meta_length);
    end = VS_MAX(end, s->log_offset + s->log_length);
    for (uint64_t i = 0; i < s->bat_entries; i++) {
        s->bat[i] = le64toh(s->bat[i]);
        uint64_t e = s->bat[i];
        bool is_bitmap = (i + 1) % (s->chunk_ratio + 1) == 0;
        unsigned st = BAT_STATE(e);
        bool present = is_bitmap ? st == SB_PRESENT
                                 : (st == PAYLOAD_FULLY_PRESENT || st == PAYLOAD_PARTIALLY_PRESENT);
        if (!present)
            continue;
        uint64_t off = BAT_OFFSET(e), len = is_bitmap ? MiB : s->block_size;
        if (!tolerant && st == PAYLOAD_PARTIALLY_PRESENT && !s->has_parent) {
            rc = img_error(img, -EINVAL,
                           "BAT entry %" PRIu64 ": partially present block in a "
                           "disk without parent",
                           i);
            goto fail;
        }
        if (!tolerant && (off < MiB || off + len > (uint64_t)file_size)) {
            rc = img_error(img, -EINVAL, "BAT entry %" PRIu64 ": block at offset %" PRIu64 " is %s",
                           i, off, off < MiB ? "inside the headers" : "beyond the end of the file");
            goto fail;
        }
        end = VS_MAX(end, off + len);
    }
    s->file_end = VS_ALIGN_UP(VS_MAX(end, (uint64_t)file_size), MiB);
    free(h2);
    return 0;
fail:
    free(h2);
    vhdx_free_state(s);
    img->state = NULL;
    free(img->backing_name);
    free(img->backing_format);
    img->backing_name = img->backing_format = NULL;
    return rc;
}

static void vhdx_close(struct img *img)
{
    vhdx_free_state(img->state);
    img->state = NULL;
}

/* ---- read ------------------------------------------------------------------------------------ */

static bool vhdx_reads_parent(const struct vhdx_state *s, unsigned st)
{
    return s->has_parent &&
           (st == PAYLOAD_NOT_PRESENT || st == PAYLOAD_UNDEFINED || st == PAYLOAD_UNMAPPED);
}

/* Partially present block: per logical sector from this file or the parent. */
static int vhdx_read_partial(struct img *img, uint8_t *buf, uint64_t offset, size_t len,
                             uint64_t block_off)
{
    struct vhdx_state *s = img->state;
    uint64_t bm = bat_get(s, bitmap_index(s, offset / s->block_size));
    if (BAT_STATE(bm) != SB_PRESENT)
        return img_error(img, -EIO, "partially present block at %" PRIu64 " has no sector bitmap",
                         offset);
    uint64_t sector = offset / s->logical_sector;
    uint64_t chunk_first = offset / s->block_size / s->chunk_ratio * s->chunk_ratio *
                           (s->block_size / s->logical_sector);
    uint64_t last = (offset + len - 1) / s->logical_sector;
    uint64_t bit0 = sector - chunk_first, nbits = last - sector + 1;
    uint64_t byte0 = bit0 / 8, nbytes = (bit0 + nbits + 7) / 8 - byte0;
    uint8_t *map = vs_malloc(nbytes);
    if (!map)
        return -ENOMEM;
    int rc = img_file_pread(img, map, BAT_OFFSET(bm) + byte0, nbytes);
    size_t done = 0;
    while (!rc && done < len) {
        uint64_t k = (offset + done) / s->logical_sector - chunk_first - byte0 * 8;
        bool mine = map[k / 8] & (1u << (k % 8));
        size_t n = (size_t)VS_MIN((uint64_t)(len - done),
                                  ((offset + done) / s->logical_sector + 1) * s->logical_sector -
                                      (offset + done));
        while (done + n < len) {
            uint64_t k2 = (offset + done + n) / s->logical_sector - chunk_first - byte0 * 8;
            if (!!(map[k2 / 8] & (1u << (k2 % 8))) != mine)
                break;
            n += (size_t)VS_MIN((uint64_t)(len - done - n), (uint64_t)s->logical_sector);
        }
        if (mine)
            rc = img_file_pread(img, buf + done, block_off + (offset + done) % s->block_size, n);
        else
            rc = img_read_backing(img, buf + done, offset + done, n);
        done += n;
    }
    free(map);
    return rc;
}

static int vhdx_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    struct vhdx_state *s = img->state;
    uint8_t *p = buf;
    while (len) {
        uint64_t block = offset / s->block_size;
        size_t n = (size_t)VS_MIN((uint64_t)len, s->block_size - offset % s->block_size);
        uint64_t e = bat_get(s, payload_index(s, block));
        unsigned st = BAT_STATE(e);
        int rc = 0;
        if (st == PAYLOAD_FULLY_PRESENT)
            rc = img_file_pread(img, p, BAT_OFFSET(e) + offset % s->block_size, n);
        else if (st == PAYLOAD_PARTIALLY_PRESENT && s->has_parent)
            rc = vhdx_read_partial(img, p, offset, n, BAT_OFFSET(e));
        else if (vhdx_reads_parent(s, st))
            rc = img_read_backing(img, p, offset, n);
        else
            memset(p, 0, n);
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

/* ---- write ----------------------------------------------------------------------------------- */

static int vhdx_write_bat_entry(struct img *img, uint64_t i)
{
    struct vhdx_state *s = img->state;
    uint64_t v = htole64(bat_get(s, i));
    return img_file_pwrite(img, &v, s->bat_offset + i * 8, 8);
}

static int vhdx_write_block(struct img *img, const uint8_t *buf, uint64_t offset, size_t len)
{
    struct vhdx_state *s = img->state;
    uint64_t block = offset / s->block_size, in = offset % s->block_size;
    uint64_t idx = payload_index(s, block);
    uint64_t e = bat_get(s, idx);
    if (BAT_STATE(e) == PAYLOAD_FULLY_PRESENT &&
        __atomic_load_n(&s->header_updated, __ATOMIC_ACQUIRE))
        return img_file_pwrite(img, buf, BAT_OFFSET(e) + in, len);
    pthread_mutex_lock(&img->lock);
    int rc = vhdx_begin_write(img);
    while (!rc && s->pending[block])
        pthread_cond_wait(&s->allocated, &img->lock);
    e = bat_get(s, idx);
    if (rc || BAT_STATE(e) == PAYLOAD_FULLY_PRESENT) {
        pthread_mutex_unlock(&img->lock);
        return rc ? rc : img_file_pwrite(img, buf, BAT_OFFSET(e) + in, len);
    }
    /* a new block at the end of the file; its space is a hole, so zeros need no writing */
    uint64_t at = s->file_end;
    s->file_end += s->block_size;
    s->pending[block] = 1;
    pthread_mutex_unlock(&img->lock);

    rc = vhd_write_nonzero(img->file, buf, at + in, len);
    if (!rc)
        rc = vhd_cover_block_end(img->file, at, s->block_size, buf, in, len);

    pthread_mutex_lock(&img->lock);
    if (!rc) {
        bat_set(s, idx, BAT_MAKE(PAYLOAD_FULLY_PRESENT, at));
        rc = vhdx_write_bat_entry(img, idx);
        if (rc)
            bat_set(s, idx, e);
    }
    s->pending[block] = 0;
    pthread_cond_broadcast(&s->allocated);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

static int vhdx_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    struct vhdx_state *s = img->state;
    if (s->has_parent)
        return img_error(img, -ENOTSUP,
                         "writing to a differencing VHDX is not supported; "
                         "convert it first");
    return vhd_pwrite_split(img, &s->holes, s->block_size, buf, offset, len, vhdx_write_block);
}

static int vhdx_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    struct vhdx_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (s->has_parent)
        return img_error(img, -ENOTSUP, "writing to a differencing VHDX is not supported");
    pthread_mutex_lock(&img->lock);
    int rc = vhdx_begin_write(img);
    pthread_mutex_unlock(&img->lock);
    while (!rc && len) {
        uint64_t block = offset / s->block_size, in = offset % s->block_size;
        uint64_t n = VS_MIN(len, s->block_size - in);
        uint64_t e = bat_get(s, payload_index(s, block));
        if (BAT_STATE(e) == PAYLOAD_FULLY_PRESENT)
            rc = img->file->drv->write_zeroes(img->file, BAT_OFFSET(e) + in, n,
                                              s->leave_allocated ? 0 : flags);
        offset += n;
        len -= n;
    }
    return rc;
}

static int vhdx_discard(struct img *img, uint64_t offset, uint64_t len)
{
    struct vhdx_state *s = img->state;
    if (s->has_parent)
        return 0;
    return vhdx_write_zeroes(img, offset, len, IMG_ZERO_MAY_UNMAP);
}

static int vhdx_flush(struct img *img)
{
    return img->file->drv->flush(img->file);
}

static int vhdx_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                             uint64_t *host_offset)
{
    struct vhdx_state *s = img->state;
    uint64_t block = offset / s->block_size, in = offset % s->block_size;
    uint64_t n = VS_MIN(len, s->block_size - in);
    uint64_t e = bat_get(s, payload_index(s, block));
    unsigned st = BAT_STATE(e);
    *host_offset = UINT64_MAX;
    if (st == PAYLOAD_FULLY_PRESENT) {
        *host_offset = BAT_OFFSET(e) + in;
        return vhd_file_status(img->file, &s->holes, *host_offset, n, pnum);
    }
    if (st == PAYLOAD_PARTIALLY_PRESENT && s->has_parent) {
        /* per sector: find the run with the first sector's status */
        uint64_t bm = bat_get(s, bitmap_index(s, block));
        if (BAT_STATE(bm) != SB_PRESENT)
            return img_error(img, -EIO,
                             "partially present block %" PRIu64 " has no sector "
                             "bitmap",
                             block);
        uint64_t chunk_first =
            block / s->chunk_ratio * s->chunk_ratio * (s->block_size / s->logical_sector);
        uint64_t first = offset / s->logical_sector,
                 count = VS_DIV_ROUND_UP(in + n, s->logical_sector) - in / s->logical_sector;
        uint64_t bit0 = first - chunk_first;
        uint64_t nbytes = (bit0 % 8 + count + 7) / 8;
        uint8_t *map = vs_malloc(nbytes);
        if (!map)
            return -ENOMEM;
        int rc = img_file_pread(img, map, BAT_OFFSET(bm) + bit0 / 8, nbytes);
        if (rc) {
            free(map);
            return rc;
        }
        uint64_t b0 = bit0 % 8;
        bool mine = map[0] & (1u << b0);
        uint64_t k = 1;
        while (k < count && !!(map[(b0 + k) / 8] & (1u << ((b0 + k) % 8))) == mine)
            k++;
        free(map);
        uint64_t run = VS_MIN(n, (first + k) * s->logical_sector - offset);
        *pnum = run;
        if (!mine)
            return IMG_DS_UNALLOCATED;
        *host_offset = BAT_OFFSET(e) + in;
        return IMG_DS_DATA;
    }
    int status = st == PAYLOAD_ZERO || (!s->has_parent && st == PAYLOAD_UNMAPPED)
                     ? IMG_DS_ZERO
                     : IMG_DS_UNALLOCATED;
    /* merge following blocks of the same kind */
    while (n < len) {
        uint64_t f = BAT_STATE(bat_get(s, payload_index(s, (offset + n) / s->block_size)));
        int fs = f == PAYLOAD_FULLY_PRESENT || f == PAYLOAD_PARTIALLY_PRESENT ? -1
                 : f == PAYLOAD_ZERO || (!s->has_parent && f == PAYLOAD_UNMAPPED)
                     ? IMG_DS_ZERO
                     : IMG_DS_UNALLOCATED;
        if (fs != status)
            break;
        n += VS_MIN(len - n, (uint64_t)s->block_size);
    }
    *pnum = n;
    return status;
}

/* ---- create ---------------------------------------------------------------------------------- */

static void put_guid(uint8_t *at, const char *text)
{
    vhdx_guid g;
    vhdx_guid_parse(text, g);
    memcpy(at, g, 16);
}

static int vhdx_create(const struct img_create_params *params, struct vs_opts *opts)
{
    const char *subformat = vs_opts_take(opts, "subformat");
    uint64_t block_size = 0, log_size = MiB;
    bool zero_state = true;
    int rc = vs_opts_take_size(opts, "block_size", &block_size);
    if (!rc)
        rc = vs_opts_take_size(opts, "log_size", &log_size);
    if (!rc)
        rc = vs_opts_take_bool(opts, "block_state_zero", &zero_state);
    if (rc)
        return rc;
    const char *prealloc = vs_opts_take(opts, "preallocation");
    if (prealloc && strcmp(prealloc, "off"))
        return vs_error(-EINVAL, "%s: preallocation '%s' is not supported for VHDX (off)",
                        params->filename, prealloc);
    bool fixed = false;
    if (subformat && !strcmp(subformat, "fixed"))
        fixed = true;
    else if (subformat && strcmp(subformat, "dynamic"))
        return vs_error(-EINVAL, "%s: subformat '%s' unknown (dynamic, fixed)", params->filename,
                        subformat);
    if (params->backing_file && params->backing_file[0])
        return vs_error(-ENOTSUP, "%s: creating differencing VHDX images is not supported",
                        params->filename);
    uint64_t size = VS_ALIGN_UP(params->size, 512);
    if (size > VHDX_MAX_SIZE || size == 0)
        return vs_error(-EINVAL, "%s: size %" PRIu64 " must be from 512 bytes to 64 TiB",
                        params->filename, size);
    if (block_size == 0)
        block_size = size > 32 * TiB    ? 64 * MiB
                     : size > 100 * GiB ? 32 * MiB
                     : size > GiB       ? 16 * MiB
                                        : 8 * MiB;
    if (block_size < VHDX_BLOCK_MIN || block_size > VHDX_BLOCK_MAX ||
        (block_size & (block_size - 1)))
        return vs_error(-EINVAL,
                        "%s: block_size %" PRIu64 " must be a power of two from 1 MiB "
                        "to 256 MiB",
                        params->filename, block_size);
    if (log_size < MiB || log_size % MiB || log_size > VHDX_LOG_MAX)
        return vs_error(-EINVAL,
                        "%s: log_size %" PRIu64 " must be a multiple of 1 MiB from 1 "
                        "MiB to 256 MiB",
                        params->filename, log_size);

    uint64_t chunk_ratio = (1ull << 23) * 512 / block_size;
    uint64_t blocks = VS_DIV_ROUND_UP(size, block_size);
    uint64_t entries = blocks + (blocks - 1) / chunk_ratio;
    uint64_t log_offset = MiB;
    uint64_t meta_offset = log_offset + log_size, meta_length = MiB;
    uint64_t bat_offset = meta_offset + meta_length;
    uint64_t bat_length = VS_ALIGN_UP(entries * 8, MiB);
    uint64_t data_start = bat_offset + bat_length;

    uint8_t *buf = vs_calloc(1, VHDX_REGION_SIZE);
    uint64_t *bat = vs_calloc(entries, 8);
    struct img *file = NULL;
    if (!buf || !bat) {
        rc = -ENOMEM;
        goto out;
    }
    rc = img_file_open(&file, params->filename, IMG_OPEN_RDWR, true);
    if (rc)
        goto out;
    /* file type identifier */
    memcpy(buf, "vhdxfile", 8);
    vhd_utf8_to_utf16("vessel", buf + 8, 512, false);
    rc = file->drv->pwrite(file, buf, 0, VHDX_HEADER1);
    /* headers: both valid, the second current */
    for (int k = 0; !rc && k < 2; k++) {
        memset(buf, 0, VHDX_HEADER_SIZE);
        memcpy(buf, "head", 4);
        le64_put(buf + HDR_SEQ, (uint64_t)k + 1);
        vhd_guid_generate(buf + HDR_FILE_WRITE);
        vhd_guid_generate(buf + HDR_DATA_WRITE);
        le16_put(buf + HDR_LOG_VERSION, 0);
        le16_put(buf + HDR_VERSION, 1);
        le32_put(buf + HDR_LOG_LENGTH, (uint32_t)log_size);
        le64_put(buf + HDR_LOG_OFFSET, log_offset);
        vhdx_seal(buf, VHDX_HEADER_SIZE);
        rc = file->drv->pwrite(file, buf, k ? VHDX_HEADER2 : VHDX_HEADER1, VHDX_HEADER_SIZE);
    }
    /* region tables */
    if (!rc) {
        memset(buf, 0, VHDX_REGION_SIZE);
        memcpy(buf, "regi", 4);
        le32_put(buf + 8, 2);
        put_guid(buf + 16, GUID_BAT);
        le64_put(buf + 32, bat_offset);
        le32_put(buf + 40, (uint32_t)bat_length);
        le32_put(buf + 44, 1);
        put_guid(buf + 48, GUID_METADATA);
        le64_put(buf + 64, meta_offset);
        le32_put(buf + 72, (uint32_t)meta_length);
        le32_put(buf + 76, 1);
        vhdx_seal(buf, VHDX_REGION_SIZE);
        rc = file->drv->pwrite(file, buf, VHDX_REGION1, VHDX_REGION_SIZE);
        if (!rc)
            rc = file->drv->pwrite(file, buf, VHDX_REGION2, VHDX_REGION_SIZE);
    }
    /* metadata: table, then the items from 64 KiB on */
    if (!rc) {
        memset(buf, 0, VHDX_REGION_SIZE);
        memcpy(buf, "metadata", 8);
        struct {
            const char *guid;
            uint32_t len, flags;
        } items[] = {
            {GUID_FILE_PARAMS, 8, 4},    {GUID_DISK_SIZE, 8, 6},       {GUID_PAGE83, 16, 6},
            {GUID_LOGICAL_SECTOR, 4, 6}, {GUID_PHYSICAL_SECTOR, 4, 6},
        };
        uint8_t data[64] = {0};
        uint32_t at = 0;
        for (size_t i = 0; i < VS_ARRAY_SIZE(items); i++) {
            uint8_t *e = buf + 32 + 32 * i;
            put_guid(e, items[i].guid);
            le32_put(e + 16, (uint32_t)VHDX_METADATA_TABLE + at);
            le32_put(e + 20, items[i].len);
            le32_put(e + 24, items[i].flags);
            uint8_t *d = data + at;
            if (i == 0) {
                le32_put(d, (uint32_t)block_size);
                le32_put(d + 4, fixed ? 1 : 0);
            } else if (i == 1) {
                le64_put(d, size);
            } else if (i == 2) {
                vhd_guid_generate(d);
            } else {
                le32_put(d, 512);
            }
            at += items[i].len;
        }
        le16_put(buf + 10, (uint16_t)VS_ARRAY_SIZE(items));
        rc = file->drv->pwrite(file, buf, meta_offset, VHDX_METADATA_TABLE);
        if (!rc)
            rc = file->drv->pwrite(file, data, meta_offset + VHDX_METADATA_TABLE, at);
    }
    /* BAT: fixed disks get every block, in order, after the BAT */
    if (!rc && fixed) {
        for (uint64_t b = 0; b < blocks; b++)
            bat[b + b / chunk_ratio] =
                htole64(BAT_MAKE(PAYLOAD_FULLY_PRESENT, data_start + b * block_size));
    }
    if (!rc)
        rc = file->drv->pwrite(file, bat, bat_offset, entries * 8);
    if (!rc)
        rc = img_file_truncate(file, fixed ? data_start + blocks * block_size : data_start);
    if (!rc)
        rc = file->drv->flush(file);
out:
    if (file)
        img_close(file);
    free(buf);
    free(bat);
    return rc;
}

/* ---- resize ---------------------------------------------------------------------------------- */

static int vhdx_write_disk_size(struct img *img, uint64_t size)
{
    struct vhdx_state *s = img->state;
    uint8_t *table = vs_malloc(VHDX_METADATA_TABLE);
    if (!table)
        return -ENOMEM;
    int rc = img_file_pread(img, table, s->meta_offset, VHDX_METADATA_TABLE);
    uint16_t count = rc ? 0 : le16_at(table + 10);
    rc = rc ? rc : img_error(img, -EINVAL, "metadata: virtual disk size item not found");
    for (uint16_t i = 0; i < count && i < 2047; i++) {
        const uint8_t *e = table + 32 + 32 * (uint64_t)i;
        if (guid_is(e, GUID_DISK_SIZE)) {
            uint8_t v[8];
            le64_put(v, size);
            rc = img_file_pwrite(img, v, s->meta_offset + le32_at(e + 16), 8);
            break;
        }
    }
    free(table);
    return rc;
}

static int vhdx_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    struct vhdx_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (prealloc && strcmp(prealloc, "off"))
        return img_error(img, -ENOTSUP, "preallocation '%s' is not supported for VHDX", prealloc);
    if (s->has_parent)
        return img_error(img, -ENOTSUP, "a differencing VHDX cannot be resized");
    size = VS_ALIGN_UP(size, s->logical_sector);
    if (size == 0 || size > VHDX_MAX_SIZE)
        return img_error(img, -EINVAL, "size %" PRIu64 " must be from 1 sector to 64 TiB", size);
    uint64_t blocks = VS_DIV_ROUND_UP(size, s->block_size);
    uint64_t entries = blocks + (blocks - 1) / s->chunk_ratio;
    if (entries * 8 > s->bat_length)
        return img_error(img, -ENOTSUP,
                         "cannot grow to %" PRIu64 " bytes: the BAT region (%" PRIu64 " bytes) "
                         "has room for %" PRIu64 " entries, %" PRIu64 " are needed (convert the "
                         "image instead)",
                         size, s->bat_length, s->bat_length / 8, entries);
    pthread_mutex_lock(&img->lock);
    int rc = vhdx_begin_write(img);
    uint64_t *bat = rc ? NULL : realloc(s->bat, entries * 8);
    uint8_t *pending = bat ? realloc(s->pending, blocks) : NULL;
    if (bat)
        s->bat = bat;
    if (pending)
        s->pending = pending;
    if (!rc && (!bat || !pending))
        rc = -ENOMEM;
    /* entries that are new become "not present" (zeros); dropped ones are forgotten */
    for (uint64_t i = s->bat_entries; !rc && i < entries; i++)
        s->bat[i] = 0;
    for (uint64_t b = s->data_blocks; !rc && b < blocks; b++)
        s->pending[b] = 0;
    if (!rc) {
        uint64_t old_entries = s->bat_entries;
        s->bat_entries = entries;
        s->data_blocks = blocks;
        /* a fixed disk keeps every block allocated */
        for (uint64_t b = 0; !rc && s->leave_allocated && b < blocks; b++) {
            uint64_t i = payload_index(s, b);
            if (BAT_STATE(s->bat[i]) == PAYLOAD_FULLY_PRESENT)
                continue;
            s->bat[i] = BAT_MAKE(PAYLOAD_FULLY_PRESENT, s->file_end);
            s->file_end += s->block_size;
            rc = img_file_truncate(img->file, s->file_end);
        }
        uint64_t span = VS_MAX(old_entries, entries);
        uint64_t *le = vs_calloc(span, 8);
        if (!le)
            rc = -ENOMEM;
        for (uint64_t i = 0; !rc && i < entries; i++)
            le[i] = htole64(s->bat[i]);
        if (!rc)
            rc = img_file_pwrite(img, le, s->bat_offset, span * 8);
        free(le);
    }
    if (!rc)
        rc = vhdx_write_disk_size(img, size);
    if (!rc) {
        img->size = size;
        rc = img->file->drv->flush(img->file);
    }
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* ---- compact --------------------------------------------------------------------------------- */

struct vhdx_slot {
    uint64_t offset;
    uint64_t index; /* BAT index using it, or UINT64_MAX when free */
};

static int vhdx_slot_cmp(const void *a, const void *b)
{
    const struct vhdx_slot *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Zero payload blocks become ZERO entries; the last blocks of the file move into the slots they
 * leave, and the file is cut after the last block still in use. */
static int vhdx_compact(struct img *img, struct img_compact *result)
{
    struct vhdx_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (s->leave_allocated)
        return img_error(img, -ENOTSUP, "a fixed VHDX keeps all its blocks allocated");
    if (s->has_parent)
        return img_error(img, -ENOTSUP, "compacting a differencing VHDX is not supported");
    uint8_t *buf = vs_malloc(MiB);
    struct vhdx_slot *slots = vs_calloc(VS_MAX(s->data_blocks, 1), sizeof(*slots));
    if (!buf || !slots) {
        free(buf);
        free(slots);
        return -ENOMEM;
    }
    pthread_mutex_lock(&img->lock);
    int rc = vhdx_begin_write(img);
    size_t n = 0;
    for (uint64_t b = 0; !rc && b < s->data_blocks; b++) {
        uint64_t i = payload_index(s, b), e = s->bat[i];
        if (BAT_STATE(e) != PAYLOAD_FULLY_PRESENT)
            continue;
        bool zero = true;
        for (uint64_t d = 0; zero && !rc && d < s->block_size; d += MiB) {
            rc = img_file_pread(img, buf, BAT_OFFSET(e) + d, MiB);
            zero = !rc && vs_buffer_is_zero(buf, MiB);
        }
        slots[n++] = (struct vhdx_slot){BAT_OFFSET(e), zero ? UINT64_MAX : i};
        if (!rc && zero) {
            s->bat[i] = BAT_MAKE(PAYLOAD_ZERO, 0);
            rc = vhdx_write_bat_entry(img, i);
            result->blocks_freed++;
        }
    }
    qsort(slots, n, sizeof(*slots), vhdx_slot_cmp);
    size_t lo = 0, hi = n;
    while (!rc) {
        while (lo < hi && slots[lo].index != UINT64_MAX)
            lo++;
        while (hi > lo && slots[hi - 1].index == UINT64_MAX)
            hi--;
        if (lo >= hi)
            break;
        struct vhdx_slot *from = &slots[hi - 1], *to = &slots[lo];
        for (uint64_t d = 0; !rc && d < s->block_size; d += MiB) {
            rc = img_file_pread(img, buf, from->offset + d, MiB);
            if (!rc)
                rc = img_file_pwrite(img, buf, to->offset + d, MiB);
        }
        if (!rc)
            rc = img->file->drv->flush(img->file);
        if (!rc) {
            s->bat[from->index] = BAT_MAKE(PAYLOAD_FULLY_PRESENT, to->offset);
            rc = vhdx_write_bat_entry(img, from->index);
        }
        to->index = from->index;
        from->index = UINT64_MAX;
    }
    if (!rc) {
        /* the file ends after the metadata and the highest block still used */
        uint64_t end = VS_MAX(s->bat_offset + s->bat_length, s->meta_offset + s->meta_length);
        end = VS_MAX(end, s->log_offset + s->log_length);
        for (uint64_t i = 0; i < s->bat_entries; i++) {
            unsigned st = BAT_STATE(s->bat[i]);
            bool bitmap = (i + 1) % (s->chunk_ratio + 1) == 0;
            if ((bitmap && st == SB_PRESENT) || (!bitmap && st == PAYLOAD_FULLY_PRESENT))
                end = VS_MAX(end, BAT_OFFSET(s->bat[i]) + (bitmap ? MiB : s->block_size));
        }
        rc = img->file->drv->flush(img->file);
        if (!rc)
            rc = img_file_truncate(img->file, end);
        if (!rc) {
            s->file_end = VS_ALIGN_UP(end, MiB);
            rc = img->file->drv->flush(img->file);
        }
    }
    pthread_mutex_unlock(&img->lock);
    free(buf);
    free(slots);
    return rc;
}

/* ---- check ----------------------------------------------------------------------------------- */

static int vhdx_check(struct img *img, struct img_check *r, int fix)
{
    struct vhdx_state *s = img->state;
    int64_t file_size = img_file_size(img->file);
    if (file_size < 0)
        return (int)file_size;
    uint8_t *buf = vs_malloc(VHDX_REGION_SIZE);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    uint64_t hdr_off[2] = {VHDX_HEADER1, VHDX_HEADER2};
    for (int k = 0; !rc && k < 2; k++) {
        rc = img_file_pread(img, buf, hdr_off[k], VHDX_HEADER_SIZE);
        if (!rc && !vhdx_header_valid(buf)) {
            r->corruptions++;
            vhd_check_report(r,
                             "header %d (offset %" PRIu64 ") has a bad signature, checksum or "
                             "version",
                             k + 1, hdr_off[k]);
        }
    }
    uint64_t reg_off[2] = {VHDX_REGION1, VHDX_REGION2};
    for (int k = 0; !rc && k < 2; k++) {
        rc = img_file_pread(img, buf, reg_off[k], VHDX_REGION_SIZE);
        if (!rc &&
            (memcmp(buf, "regi", 4) || le32_at(buf + 4) != vhdx_checksum(buf, VHDX_REGION_SIZE))) {
            r->corruptions++;
            vhd_check_report(r,
                             "region table %d (offset %" PRIu64 ") has a bad signature or checksum",
                             k + 1, reg_off[k]);
        }
    }
    free(buf);
    if (rc)
        return rc;
    if (s->log_dirty) {
        r->corruptions++;
        vhd_check_report(r, "the log holds updates that were never replayed (repair with -r all)");
    }
    struct vhdx_slot *slots = vs_calloc(VS_MAX(s->bat_entries, 1), sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    size_t n = 0;
    uint64_t meta_end = VS_MAX(s->bat_offset + s->bat_length, s->meta_offset + s->meta_length);
    meta_end = VS_MAX(meta_end, s->log_offset + s->log_length);
    uint64_t end = meta_end, prev = UINT64_MAX;
    r->total_clusters = s->data_blocks;
    for (uint64_t i = 0; i < s->bat_entries; i++) {
        uint64_t e = s->bat[i];
        bool bitmap = (i + 1) % (s->chunk_ratio + 1) == 0;
        unsigned st = BAT_STATE(e);
        bool present = bitmap ? st == SB_PRESENT
                              : st == PAYLOAD_FULLY_PRESENT || st == PAYLOAD_PARTIALLY_PRESENT;
        if (!bitmap && st != PAYLOAD_NOT_PRESENT && st != PAYLOAD_UNDEFINED && st != PAYLOAD_ZERO &&
            st != PAYLOAD_UNMAPPED && st != PAYLOAD_FULLY_PRESENT &&
            !(st == PAYLOAD_PARTIALLY_PRESENT && s->has_parent)) {
            r->corruptions++;
            vhd_check_report(r, "BAT entry %" PRIu64 ": invalid state %u", i, st);
            continue;
        }
        if (!present)
            continue;
        uint64_t off = BAT_OFFSET(e), len = bitmap ? MiB : s->block_size;
        if (!bitmap) {
            r->allocated_clusters++;
            if (prev != UINT64_MAX && off != prev)
                r->fragmented_clusters++;
            prev = off + len;
        }
        if (off + len > (uint64_t)file_size) {
            r->corruptions++;
            vhd_check_report(r,
                             "BAT entry %" PRIu64 ": block at offset %" PRIu64 " extends beyond "
                             "the end of the file",
                             i, off);
            continue;
        }
        bool overlaps_meta =
            off < MiB || (off < s->log_offset + s->log_length && off + len > s->log_offset) ||
            (off < s->meta_offset + s->meta_length && off + len > s->meta_offset) ||
            (off < s->bat_offset + s->bat_length && off + len > s->bat_offset);
        if (overlaps_meta) {
            r->corruptions++;
            vhd_check_report(r,
                             "BAT entry %" PRIu64 ": block at offset %" PRIu64 " overlaps the "
                             "headers, log, metadata or BAT",
                             i, off);
            continue;
        }
        slots[n++] = (struct vhdx_slot){off, i};
        end = VS_MAX(end, off + len);
    }
    qsort(slots, n, sizeof(*slots), vhdx_slot_cmp);
    for (size_t k = 1; k < n; k++) {
        uint64_t plen = (slots[k - 1].index + 1) % (s->chunk_ratio + 1) == 0 ? MiB : s->block_size;
        if (slots[k].offset < slots[k - 1].offset + plen) {
            r->corruptions++;
            vhd_check_report(r,
                             "BAT entries %" PRIu64 " and %" PRIu64 ": blocks at %" PRIu64
                             " and %" PRIu64 " overlap",
                             slots[k - 1].index, slots[k].index, slots[k - 1].offset,
                             slots[k].offset);
        }
    }
    free(slots);
    r->image_end_offset = end;
    return 0;
}

static int vhdx_measure(struct vs_opts *opts, struct img *source, uint64_t size, uint64_t *required,
                        uint64_t *fully_allocated)
{
    const char *subformat = vs_opts_take(opts, "subformat");
    uint64_t block_size = 0, log_size = MiB;
    int rc = vs_opts_take_size(opts, "block_size", &block_size);
    if (!rc)
        rc = vs_opts_take_size(opts, "log_size", &log_size);
    if (rc)
        return rc;
    vs_opts_take(opts, "block_state_zero");
    vs_opts_take(opts, "preallocation");
    if (source)
        size = img_size(source);
    if (block_size == 0)
        block_size = size > 32 * TiB    ? 64 * MiB
                     : size > 100 * GiB ? 32 * MiB
                     : size > GiB       ? 16 * MiB
                                        : 8 * MiB;
    if (block_size < VHDX_BLOCK_MIN || block_size > VHDX_BLOCK_MAX ||
        (block_size & (block_size - 1)))
        return vs_error(-EINVAL,
                        "block_size %" PRIu64 " must be a power of two from 1 MiB to 256 MiB",
                        block_size);
    uint64_t blocks = VS_DIV_ROUND_UP(VS_MAX(size, 1), block_size);
    uint64_t entries = blocks + (blocks - 1) / ((1ull << 23) * 512 / block_size);
    uint64_t meta = MiB + VS_ALIGN_UP(log_size, MiB) + MiB + VS_ALIGN_UP(entries * 8, MiB);
    uint64_t used = 0;
    if (source && (rc = vhd_count_data_blocks(source, size, block_size, &used)))
        return rc;
    *fully_allocated = meta + blocks * block_size;
    *required =
        subformat && !strcmp(subformat, "fixed") ? *fully_allocated : meta + used * block_size;
    return 0;
}

const struct img_driver img_driver_vhdx = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .create = vhdx_create,
    .pread = vhdx_pread,
    .pwrite = vhdx_pwrite,
    .flush = vhdx_flush,
    .discard = vhdx_discard,
    .write_zeroes = vhdx_write_zeroes,
    .block_status = vhdx_block_status,
    .truncate = vhdx_truncate,
    .check = vhdx_check,
    .compact = vhdx_compact,
    .measure = vhdx_measure,
};
