/*
 * lib/guestfs/parts.c — partition tables: MBR (with extended/logical chains) and GPT.
 *
 * The idea: the parser never trusts a number it reads. Every LBA is checked against the disk
 * size before it is read, an extended chain is walked with a visited list and a hard bound so a
 * loop or a very long chain ends with an error instead of a hang, and a GPT is believed only when
 * both its header CRC and its entry-array CRC match (else the backup header at the end is tried).
 * Reads go through a callback, so the same code runs over an image, a buffer or a fuzzer input.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

#define MBR_MAX_LOGICAL     256       /* longer EBR chains are refused */
#define GPT_MAX_ENTRY_BYTES (1 << 20) /* the entry array is at most 1 MiB */

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

const char *guestfs_scheme_name(enum guestfs_scheme scheme)
{
    switch (scheme) {
    case GUESTFS_SCHEME_MBR:
        return "mbr";
    case GUESTFS_SCHEME_GPT:
        return "gpt";
    default:
        return "none";
    }
}

static const char *mbr_type_name(uint8_t type)
{
    switch (type) {
    case 0x01:
    case 0x04:
    case 0x06:
    case 0x0b:
    case 0x0c:
    case 0x0e:
        return "FAT";
    case 0x05:
    case 0x0f:
    case 0x85:
        return "Extended";
    case 0x07:
        return "NTFS/exFAT";
    case 0x82:
        return "Linux swap";
    case 0x83:
        return "Linux";
    case 0x8e:
        return "Linux LVM";
    case 0xee:
        return "GPT protective";
    case 0xef:
        return "EFI System";
    case 0xfd:
        return "Linux raid";
    default:
        return "unknown";
    }
}

static bool mbr_is_extended(uint8_t type)
{
    return type == 0x05 || type == 0x0f || type == 0x85;
}

static int table_add(struct guestfs_table *t, const struct guestfs_part *p)
{
    if (t->count >= MBR_MAX_LOGICAL + 4 + 16384)
        return vs_error(-E2BIG, "too many partitions");
    struct guestfs_part *n = realloc(t->parts, (t->count + 1) * sizeof(*n));
    if (!n)
        return vs_error(-ENOMEM, "out of memory");
    t->parts = n;
    t->parts[t->count++] = *p;
    return 0;
}

void guestfs_table_free(struct guestfs_table *table)
{
    if (!table)
        return;
    free(table->parts);
    memset(table, 0, sizeof(*table));
}

const struct guestfs_part *guestfs_table_find(const struct guestfs_table *table, unsigned number)
{
    for (size_t i = 0; i < table->count; i++)
        if (table->parts[i].number == number)
            return &table->parts[i];
    return NULL;
}

static void guid_format(const uint8_t *g, char *out, size_t len)
{
    snprintf(out, len, "%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X", le32(g), le16(g + 4),
             le16(g + 6), g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
}

/* UTF-16LE (BMP and surrogate pairs) to UTF-8, stopping at NUL. */
static void utf16_to_utf8(const uint8_t *in, size_t units, char *out, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < units; i++) {
        uint32_t c = le16(in + 2 * i);
        if (c == 0)
            break;
        if (c >= 0xd800 && c < 0xdc00 && i + 1 < units) {
            uint32_t lo = le16(in + 2 * (i + 1));
            if (lo >= 0xdc00 && lo < 0xe000) {
                c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
                i++;
            } else {
                c = '?';
            }
        } else if (c >= 0xd800 && c < 0xe000) {
            c = '?';
        }
        char tmp[4];
        size_t n;
        if (c < 0x80) {
            tmp[0] = (char)c;
            n = 1;
        } else if (c < 0x800) {
            tmp[0] = (char)(0xc0 | c >> 6);
            tmp[1] = (char)(0x80 | (c & 0x3f));
            n = 2;
        } else if (c < 0x10000) {
            tmp[0] = (char)(0xe0 | c >> 12);
            tmp[1] = (char)(0x80 | ((c >> 6) & 0x3f));
            tmp[2] = (char)(0x80 | (c & 0x3f));
            n = 3;
        } else {
            tmp[0] = (char)(0xf0 | c >> 18);
            tmp[1] = (char)(0x80 | ((c >> 12) & 0x3f));
            tmp[2] = (char)(0x80 | ((c >> 6) & 0x3f));
            tmp[3] = (char)(0x80 | (c & 0x3f));
            n = 4;
        }
        if (o + n + 1 > len)
            break;
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = 0;
}

/* ---- GPT ---- */

struct gpt_ctx {
    guestfs_read_fn read;
    void *ctx;
    uint64_t disk_size;
    uint32_t sector;
    const char *name;
};

/* Validate the header at LBA and load its entries; 0, or -EINVAL when this header is unusable. */
static int gpt_try_header(struct gpt_ctx *g, uint64_t lba, struct guestfs_table *out)
{
    uint32_t ss = g->sector;
    if (lba == 0 || lba > g->disk_size / ss - 1)
        return vs_error(-EINVAL, "%s: GPT header LBA %llu beyond the disk", g->name,
                        (unsigned long long)lba);
    uint8_t *hdr = vs_malloc(ss);
    if (!hdr)
        return -ENOMEM;
    int rc = g->read(g->ctx, hdr, lba * ss, ss);
    if (rc < 0) {
        free(hdr);
        return vs_error_prefix(rc, "%s: GPT header", g->name);
    }
    uint32_t hsize = le32(hdr + 12);
    if (memcmp(hdr, "EFI PART", 8) != 0 || hsize < 92 || hsize > ss) {
        free(hdr);
        return vs_error(-EINVAL, "%s: no GPT header at LBA %llu", g->name, (unsigned long long)lba);
    }
    uint32_t want = le32(hdr + 16);
    memset(hdr + 16, 0, 4);
    uint32_t got = (uint32_t)crc32(0, hdr, hsize);
    if (want != got) {
        free(hdr);
        return vs_error(-EINVAL, "%s: GPT header at LBA %llu: CRC mismatch", g->name,
                        (unsigned long long)lba);
    }
    uint64_t entries_lba = le64(hdr + 72);
    uint32_t nentries = le32(hdr + 80);
    uint32_t esize = le32(hdr + 84);
    uint32_t ecrc = le32(hdr + 88);
    uint64_t first_usable = le64(hdr + 40), last_usable = le64(hdr + 48);
    free(hdr);
    if (esize < 128 || esize % 8 || (uint64_t)nentries * esize > GPT_MAX_ENTRY_BYTES)
        return vs_error(-EINVAL, "%s: GPT header: entry array %u x %u bytes is invalid", g->name,
                        nentries, esize);
    size_t bytes = (size_t)nentries * esize;
    if (entries_lba == 0 || entries_lba > g->disk_size / ss ||
        bytes > g->disk_size - entries_lba * ss)
        return vs_error(-EINVAL, "%s: GPT entry array beyond the disk", g->name);
    uint8_t *ents = vs_malloc(bytes ? bytes : 1);
    if (!ents)
        return -ENOMEM;
    rc = bytes ? g->read(g->ctx, ents, entries_lba * ss, bytes) : 0;
    if (rc < 0) {
        free(ents);
        return vs_error_prefix(rc, "%s: GPT entries", g->name);
    }
    if ((uint32_t)crc32(0, ents, (uInt)bytes) != ecrc) {
        free(ents);
        return vs_error(-EINVAL, "%s: GPT entry array: CRC mismatch", g->name);
    }
    static const uint8_t zero[16];
    for (uint32_t i = 0; i < nentries; i++) {
        const uint8_t *e = ents + (size_t)i * esize;
        if (memcmp(e, zero, 16) == 0)
            continue;
        uint64_t first = le64(e + 32), last = le64(e + 40);
        if (last < first || first < first_usable || last > last_usable ||
            last >= g->disk_size / ss) {
            vs_warn("%s: GPT entry %u: LBA %llu..%llu outside the disk, ignored", g->name, i + 1,
                    (unsigned long long)first, (unsigned long long)last);
            continue;
        }
        struct guestfs_part p = {.number = i + 1};
        p.start = first * ss;
        p.size = (last - first + 1) * ss;
        guid_format(e, p.type, sizeof(p.type));
        guid_format(e + 16, p.guid, sizeof(p.guid));
        utf16_to_utf8(e + 56, (esize - 56 < 72 ? esize - 56 : 72) / 2, p.name, sizeof(p.name));
        rc = table_add(out, &p);
        if (rc < 0) {
            free(ents);
            return rc;
        }
    }
    free(ents);
    return 0;
}

static int gpt_parse(struct gpt_ctx *g, struct guestfs_table *out)
{
    out->scheme = GUESTFS_SCHEME_GPT;
    out->sector_size = g->sector;
    int rc = gpt_try_header(g, 1, out);
    if (rc == 0)
        return 0;
    char first_err[256];
    snprintf(first_err, sizeof(first_err), "%s", vs_error_message());
    free(out->parts);
    out->parts = NULL;
    out->count = 0;
    rc = gpt_try_header(g, g->disk_size / g->sector - 1, out);
    if (rc == 0) {
        out->gpt_used_backup = true;
        vs_warn("%s; using the backup GPT header", first_err);
        return 0;
    }
    return vs_error(-EINVAL, "%s (and the backup header: %s)", first_err, vs_error_message());
}

/* ---- MBR ---- */

static int mbr_walk_extended(guestfs_read_fn read, void *ctx, uint64_t disk_sectors,
                             const char *name, uint64_t ext_start, uint64_t ext_sectors,
                             struct guestfs_table *out)
{
    uint64_t visited[MBR_MAX_LOGICAL];
    size_t nvisited = 0;
    uint64_t ebr = ext_start;
    unsigned number = 5;
    uint8_t sec[512];
    while (ebr) {
        for (size_t i = 0; i < nvisited; i++)
            if (visited[i] == ebr)
                return vs_error(-ELOOP, "%s: extended partition chain loops back to sector %llu",
                                name, (unsigned long long)ebr);
        if (nvisited == MBR_MAX_LOGICAL)
            return vs_error(-E2BIG, "%s: more than %d logical partitions", name, MBR_MAX_LOGICAL);
        visited[nvisited++] = ebr;
        if (ebr >= disk_sectors)
            return vs_error(-EINVAL, "%s: EBR at sector %llu beyond the disk", name,
                            (unsigned long long)ebr);
        int rc = read(ctx, sec, ebr * 512, 512);
        if (rc < 0)
            return vs_error_prefix(rc, "%s: EBR at sector %llu", name, (unsigned long long)ebr);
        if (sec[510] != 0x55 || sec[511] != 0xaa)
            return vs_error(-EINVAL, "%s: EBR at sector %llu has no 55AA signature", name,
                            (unsigned long long)ebr);
        const uint8_t *e0 = sec + 446, *e1 = sec + 462;
        uint64_t start = le32(e0 + 8), count = le32(e0 + 12);
        if (e0[4] && count) {
            uint64_t abs = ebr + start;
            if (abs + count > disk_sectors) {
                vs_warn("%s: logical partition %u runs past the end of the disk, ignored", name,
                        number);
            } else {
                struct guestfs_part p = {.number = number, .mbr_type = e0[4]};
                p.start = abs * 512;
                p.size = count * 512;
                p.bootable = e0[0] == 0x80;
                snprintf(p.type, sizeof(p.type), "0x%02x", e0[4]);
                snprintf(p.name, sizeof(p.name), "%s", mbr_type_name(e0[4]));
                rc = table_add(out, &p);
                if (rc < 0)
                    return rc;
            }
            number++;
        }
        uint64_t next = le32(e1 + 8);
        if (!mbr_is_extended(e1[4]) || next == 0)
            break;
        if (next >= ext_sectors)
            return vs_error(-EINVAL, "%s: EBR link %llu outside the extended partition", name,
                            (unsigned long long)next);
        ebr = ext_start + next;
    }
    return 0;
}

int guestfs_parts_parse(guestfs_read_fn read, void *ctx, uint64_t disk_size, const char *name,
                        struct guestfs_table *out)
{
    memset(out, 0, sizeof(*out));
    out->sector_size = 512;
    uint8_t sec[512];
    int rc = 0;
    bool mbr = false;
    if (disk_size >= 512) {
        rc = read(ctx, sec, 0, 512);
        if (rc < 0)
            return vs_error_prefix(rc, "%s: sector 0", name);
        mbr = sec[510] == 0x55 && sec[511] == 0xaa;
        /* a FAT/NTFS boot sector also ends in 55AA: it is a filesystem, not a table */
        if (mbr && (!memcmp(sec + 54, "FAT", 3) || !memcmp(sec + 82, "FAT32", 5) ||
                    !memcmp(sec + 3, "NTFS", 4)))
            mbr = false;
        bool any = false;
        for (int i = 0; mbr && i < 4; i++) {
            const uint8_t *e = sec + 446 + 16 * i;
            if (e[4] == 0)
                continue;
            any = true;
            if (e[0] != 0 && e[0] != 0x80)
                mbr = false;
        }
        if (!any)
            mbr = false;
    }
    if (!mbr) {
        out->scheme = GUESTFS_SCHEME_NONE;
        struct guestfs_part p = {.number = 0, .start = 0, .size = disk_size};
        snprintf(p.type, sizeof(p.type), "none");
        snprintf(p.name, sizeof(p.name), "whole");
        return table_add(out, &p);
    }
    for (int i = 0; i < 4; i++) {
        if (sec[446 + 16 * i + 4] != 0xee)
            continue;
        for (uint32_t ss = 512; ss <= 4096; ss *= 8) {
            if (disk_size < 3 * (uint64_t)ss)
                break;
            struct gpt_ctx g = {read, ctx, disk_size, ss, name};
            rc = gpt_parse(&g, out);
            if (rc == 0)
                return 0;
            guestfs_table_free(out);
        }
        return rc ? rc : vs_error(-EINVAL, "%s: protective MBR but disk too small for GPT", name);
    }
    out->scheme = GUESTFS_SCHEME_MBR;
    uint64_t disk_sectors = disk_size / 512;
    for (int i = 0; i < 4; i++) {
        const uint8_t *e = sec + 446 + 16 * i;
        uint64_t start = le32(e + 8), count = le32(e + 12);
        if (e[4] == 0 || count == 0)
            continue;
        if (start == 0 || start + count > disk_sectors) {
            vs_warn("%s: partition %d (sectors %llu+%llu) runs past the end of the disk, ignored",
                    name, i + 1, (unsigned long long)start, (unsigned long long)count);
            continue;
        }
        struct guestfs_part p = {.number = (unsigned)i + 1, .mbr_type = e[4]};
        p.start = start * 512;
        p.size = count * 512;
        p.bootable = e[0] == 0x80;
        snprintf(p.type, sizeof(p.type), "0x%02x", e[4]);
        snprintf(p.name, sizeof(p.name), "%s", mbr_type_name(e[4]));
        rc = table_add(out, &p);
        if (rc < 0)
            goto fail;
        if (mbr_is_extended(e[4])) {
            rc = mbr_walk_extended(read, ctx, disk_sectors, name, start, count, out);
            if (rc < 0)
                goto fail;
        }
    }
    return 0;
fail:
    guestfs_table_free(out);
    return rc;
}

static int img_read_cb(void *ctx, void *buf, uint64_t offset, size_t len)
{
    return img_pread(ctx, buf, offset, len);
}

int guestfs_parts_read(struct img *img, struct guestfs_table *out)
{
    return guestfs_parts_parse(img_read_cb, img, img_size(img), img_filename(img), out);
}
