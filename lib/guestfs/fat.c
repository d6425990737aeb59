/*
 * lib/guestfs/fat.c — FAT12/16/32 (with VFAT long names), read and write, over any byte source.
 *
 * Why our own code: Debian has no library that reads or writes FAT through a caller's block
 * callback (`apt-cache search` finds no libfat; mtools, dosfstools and fatcat are programs, not
 * libraries), and the image engine must be the block source so qcow2/vmdk/overlays work the same
 * as with libext2fs. FAT is small enough to do here in full.
 *
 * The idea: validate the boot sector once (every size it gives is bounded against the partition
 * before it is used), load the first FAT into memory, and treat every directory — including the
 * fixed FAT12/16 root — as a byte buffer of 32-byte entries that remembers which clusters hold
 * it. Every cluster chain walk is bounded by the number of clusters on the volume, so a looping or
 * out-of-range chain is an error, never a hang or an out-of-bounds read.
 *
 * Writing: every change to the in-memory FAT goes through fat_set(), which keeps an undo log while
 * an operation is open. An operation first writes file data into free clusters, allocates every
 * cluster it needs (directory growth included) and builds its directory entries in memory; only
 * when all of that succeeded is the FAT written to every copy, then the directory entries, and
 * last the old chain of a replaced file is freed. A full volume or a failed read rolls the
 * in-memory FAT back, so the volume on disk never references a half-written file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

#define FAT_MAX_TABLE ((uint64_t)512 << 20) /* the in-memory FAT; a 2 TiB FAT32 at 4 KiB */
#define FAT_MAX_DIR   ((size_t)65536 * 32)  /* the spec's limit on directory entries */
#define FAT_EOC       0x0FFFFFFFu           /* end of chain, as written (masked per type) */
#define FAT_MAX_FILE  0xFFFFFFFFull         /* the size field is 32 bits */

#define ATTR_READONLY 0x01
#define ATTR_VOLUME   0x08
#define ATTR_DIR      0x10
#define ATTR_ARCHIVE  0x20
#define ATTR_LFN      0x0F

enum fat_type { FAT12 = 12, FAT16 = 16, FAT32 = 32 };

/* A FAT entry's value before an open operation changed it. */
struct undo {
    uint32_t cluster;
    uint32_t value;
};

/* The image window of guestfs_fat_open_img(). */
struct fat_window {
    struct img *img;
    uint64_t start;
    uint64_t size;
};

struct guestfs_fat {
    guestfs_read_fn read;
    guestfs_write_fn write; /* NULL: opened read-only */
    void *ctx;
    struct fat_window *window; /* owned, when opened over an image */
    char *label;
    enum fat_type type;
    uint32_t bytes_per_sector;
    uint32_t cluster_size;
    uint64_t data_offset;   /* bytes: cluster 2 */
    uint64_t root_offset;   /* FAT12/16 fixed root: bytes */
    uint32_t root_entries;  /* FAT12/16 */
    uint32_t root_cluster;  /* FAT32 */
    uint32_t cluster_count; /* data clusters: valid numbers are 2 .. cluster_count+1 */
    uint8_t *table;         /* the first FAT */
    size_t table_len;
    uint32_t serial;
    char volume_label[12];
    /* writing */
    uint64_t fat_offset;
    uint64_t fat_stride; /* bytes from one FAT copy to the next */
    uint32_t fat_count;
    uint64_t fsinfo_offset; /* FAT32 FSInfo sector, 0 when there is none (or it is invalid) */
    uint32_t free_count;
    uint32_t next_free;
    size_t dirty_lo, dirty_hi; /* bytes of the table not yet written */
    bool logging;              /* an operation is open: fat_set() records undo entries */
    struct undo *undo;
    size_t undo_len, undo_cap;
    int undo_err;
};

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static uint8_t tolower_ascii(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

static uint8_t toupper_ascii(uint8_t c)
{
    return c >= 'a' && c <= 'z' ? (uint8_t)(c - 32) : c;
}

static bool power_of_two(uint32_t v)
{
    return v && !(v & (v - 1));
}
/* ---- boot sector ---- */

int guestfs_fat_parse_boot(const uint8_t *bs, size_t len, uint64_t part_size, const char *label,
                           struct guestfs_fat_geometry *g)
{
    memset(g, 0, sizeof(*g));
    if (len < 512)
        return vs_error(-EINVAL, "%s: FAT boot sector truncated", label);
    if (!(bs[0] == 0xEB || bs[0] == 0xE9) || le16(bs + 510) != 0xAA55)
        return vs_error(-EINVAL, "%s: not a FAT filesystem (no jump or 55AA signature)", label);
    uint32_t bps = le16(bs + 11);
    uint32_t spc = bs[13];
    uint32_t reserved = le16(bs + 14);
    uint32_t fats = bs[16];
    uint32_t root_entries = le16(bs + 17);
    uint64_t total = le16(bs + 19) ? le16(bs + 19) : le32(bs + 32);
    uint64_t fat_sectors = le16(bs + 22) ? le16(bs + 22) : le32(bs + 36);
    if (bps < 512 || bps > 4096 || !power_of_two(bps))
        return vs_error(-EINVAL, "%s: FAT bytes per sector %u (expected 512..4096, a power of 2)",
                        label, bps);
    if (!power_of_two(spc) || spc * bps > 256 * 1024)
        return vs_error(-EINVAL,
                        "%s: FAT sectors per cluster %u (expected a power of 2, clusters "
                        "up to 256 KiB)",
                        label, spc);
    if (reserved < 1)
        return vs_error(-EINVAL, "%s: FAT reserved sectors 0", label);
    if (fats < 1 || fats > 4)
        return vs_error(-EINVAL, "%s: FAT count %u (expected 1..4)", label, fats);
    if (fat_sectors == 0)
        return vs_error(-EINVAL, "%s: FAT size 0 sectors", label);
    if (total == 0 || total * bps > part_size)
        return vs_error(-EINVAL, "%s: FAT volume of %llu sectors doesn't fit the partition", label,
                        (unsigned long long)total);
    uint64_t root_sectors = ((uint64_t)root_entries * 32 + bps - 1) / bps;
    uint64_t data_start = reserved + fats * fat_sectors + root_sectors;
    if (data_start >= total)
        return vs_error(-EINVAL,
                        "%s: FAT tables and root directory (%llu sectors) fill the "
                        "volume",
                        label, (unsigned long long)data_start);
    uint64_t clusters = (total - data_start) / spc;
    if (clusters == 0 || clusters > 0x0FFFFFF5)
        return vs_error(-EINVAL, "%s: FAT has %llu clusters", label, (unsigned long long)clusters);
    g->type = clusters < 4085 ? 12 : clusters < 65525 ? 16 : 32;
    if (g->type == 32 && (root_entries != 0 || le16(bs + 22) != 0))
        return vs_error(-EINVAL, "%s: FAT32 (by cluster count) with a FAT12/16 root directory",
                        label);
    if (g->type != 32 && root_entries == 0)
        return vs_error(-EINVAL, "%s: FAT%u without root directory entries", label, g->type);
    /* the FAT must have an entry for every cluster */
    uint64_t need_bits = (clusters + 2) * (g->type == 12 ? 12 : g->type == 16 ? 16 : 32);
    if (fat_sectors * bps * 8 < need_bits)
        return vs_error(-EINVAL, "%s: FAT of %llu sectors is too small for %llu clusters", label,
                        (unsigned long long)fat_sectors, (unsigned long long)clusters);
    g->bytes_per_sector = bps;
    g->cluster_size = spc * bps;
    g->fat_offset = (uint64_t)reserved * bps;
    g->fat_bytes = VS_MIN(fat_sectors * bps, (need_bits + 7) / 8);
    g->root_offset = (reserved + fats * fat_sectors) * bps;
    g->root_entries = root_entries;
    g->data_offset = data_start * bps;
    g->cluster_count = (uint32_t)clusters;
    g->fat_count = fats;
    g->fat_stride = fat_sectors * bps;
    const uint8_t *ext = bs + (g->type == 32 ? 64 : 36); /* extended BPB: drive, res, sig */
    if (ext[2] == 0x29 || ext[2] == 0x28) {
        g->serial = le32(ext + 3);
        g->dirty = ext[1] & 1; /* Windows NT / Linux: "volume was not unmounted" */
        if (ext[2] == 0x29) {
            memcpy(g->volume_label, ext + 7, 11);
            for (int i = 10; i >= 0 && g->volume_label[i] == ' '; i--)
                g->volume_label[i] = 0;
            if (!strcmp(g->volume_label, "NO NAME"))
                g->volume_label[0] = 0;
        }
    }
    if (g->type == 32) {
        g->root_cluster = le32(bs + 44);
        if (g->root_cluster < 2 || g->root_cluster >= clusters + 2)
            return vs_error(-EINVAL, "%s: FAT32 root cluster %u out of range", label,
                            g->root_cluster);
        uint32_t fsinfo = le16(bs + 48);
        if (fsinfo >= 1 && fsinfo < reserved)
            g->fsinfo_offset = (uint64_t)fsinfo * bps;
    }
    return 0;
}

static int fat_open_common(guestfs_read_fn read, guestfs_write_fn write, void *ctx, uint64_t size,
                           const char *label, struct guestfs_fat **out);

int guestfs_fat_open(guestfs_read_fn read, void *ctx, uint64_t size, const char *label,
                     struct guestfs_fat **out)
{
    return fat_open_common(read, NULL, ctx, size, label, out);
}

int guestfs_fat_open_rw(guestfs_read_fn read, guestfs_write_fn write, void *ctx, uint64_t size,
                        const char *label, struct guestfs_fat **out)
{
    if (!write)
        return vs_error(-EINVAL, "%s: no write callback", label);
    return fat_open_common(read, write, ctx, size, label, out);
}

/* The FAT entry of CLUSTER (2 .. cluster_count+1), normalised: >= 0x0FFFFFF8 ends a chain,
 * 0x0FFFFFF7 is a bad cluster. Entries 0 and 1 (media byte, flags) read raw. */
static uint32_t fat_entry(const struct guestfs_fat *f, uint32_t cluster)
{
    uint32_t v;
    if (f->type == FAT12) {
        size_t off = cluster + cluster / 2;
        v = le16(f->table + off);
        v = (cluster & 1) ? v >> 4 : v & 0xfff;
        if (v >= 0xff7)
            v |= 0x0ffff000;
    } else if (f->type == FAT16) {
        v = le16(f->table + (size_t)cluster * 2);
        if (v >= 0xfff7)
            v |= 0x0fff0000;
    } else {
        v = le32(f->table + (size_t)cluster * 4) & 0x0fffffff;
    }
    return v;
}

/* A volume that was not unmounted cleanly: the boot sector's flag, or the FAT16/32 "clean
 * shutdown" bit in FAT[1] cleared, or its "no disk error" bit cleared. */
static bool fat_is_dirty(const struct guestfs_fat *f, bool boot_flag)
{
    if (boot_flag)
        return true;
    if (f->type == FAT16) {
        uint16_t v = le16(f->table + 2);
        return !(v & 0x8000) || !(v & 0x4000);
    }
    if (f->type == FAT32) {
        uint32_t v = le32(f->table + 4);
        return !(v & 0x08000000) || !(v & 0x04000000);
    }
    return false;
}

static int fat_open_common(guestfs_read_fn read, guestfs_write_fn write, void *ctx, uint64_t size,
                           const char *label, struct guestfs_fat **out)
{
    *out = NULL;
    uint8_t bs[512];
    int rc = size >= 512 ? read(ctx, bs, 0, sizeof(bs)) : -EINVAL;
    if (rc < 0)
        return vs_error_prefix(rc, "%s: reading the FAT boot sector", label);
    struct guestfs_fat_geometry g;
    rc = guestfs_fat_parse_boot(bs, sizeof(bs), size, label, &g);
    if (rc < 0)
        return rc;
    if (g.fat_bytes > FAT_MAX_TABLE)
        return vs_error(-EFBIG, "%s: FAT of %llu bytes is too large to load", label,
                        (unsigned long long)g.fat_bytes);
    struct guestfs_fat *f = calloc(1, sizeof(*f));
    if (!f)
        return vs_error(-ENOMEM, "out of memory");
    f->read = read;
    f->write = write;
    f->ctx = ctx;
    f->label = strdup(label);
    f->type = (enum fat_type)g.type;
    f->bytes_per_sector = g.bytes_per_sector;
    f->cluster_size = g.cluster_size;
    f->data_offset = g.data_offset;
    f->root_offset = g.root_offset;
    f->root_entries = g.root_entries;
    f->root_cluster = g.root_cluster;
    f->cluster_count = g.cluster_count;
    f->serial = g.serial;
    f->fat_offset = g.fat_offset;
    f->fat_stride = g.fat_stride;
    f->fat_count = g.fat_count;
    memcpy(f->volume_label, g.volume_label, sizeof(f->volume_label));
    f->table_len = (size_t)g.fat_bytes;
    f->table = malloc(f->table_len);
    if (!f->label || !f->table) {
        guestfs_fat_close(f);
        return vs_error(-ENOMEM, "out of memory");
    }
    rc = read(ctx, f->table, g.fat_offset, f->table_len);
    if (rc < 0) {
        guestfs_fat_close(f);
        return vs_error_prefix(rc, "%s: reading the FAT", label);
    }
    if (write) {
        if (fat_is_dirty(f, g.dirty)) {
            guestfs_fat_close(f);
            return vs_error(-EUCLEAN,
                            "%s: FAT volume is marked dirty (not cleanly unmounted); run "
                            "fsck.fat first",
                            label);
        }
        for (uint32_t c = 2; c - 2 < f->cluster_count; c++)
            if (fat_entry(f, c) == 0)
                f->free_count++;
        f->next_free = 2;
        if (g.fsinfo_offset) {
            uint8_t fsi[512];
            if (read(ctx, fsi, g.fsinfo_offset, sizeof(fsi)) == 0 && le32(fsi) == 0x41615252 &&
                le32(fsi + 484) == 0x61417272 && le32(fsi + 508) == 0xAA550000) {
                f->fsinfo_offset = g.fsinfo_offset;
                uint32_t hint = le32(fsi + 492);
                if (hint >= 2 && hint - 2 < f->cluster_count)
                    f->next_free = hint;
            }
        }
        f->dirty_lo = SIZE_MAX;
    }
    *out = f;
    return 0;
}

void guestfs_fat_close(struct guestfs_fat *f)
{
    if (!f)
        return;
    free(f->undo);
    free(f->table);
    free(f->label);
    free(f->window);
    free(f);
}

static int window_read(void *ctx, void *buf, uint64_t offset, size_t len)
{
    struct fat_window *w = ctx;
    if (offset > w->size || len > w->size - offset)
        return vs_error(-EIO, "%s: read of %zu bytes at %llu is outside the partition",
                        img_filename(w->img), len, (unsigned long long)offset);
    return img_pread(w->img, buf, w->start + offset, len);
}

static int window_write(void *ctx, const void *buf, uint64_t offset, size_t len)
{
    struct fat_window *w = ctx;
    if (offset > w->size || len > w->size - offset)
        return vs_error(-EIO, "%s: write of %zu bytes at %llu is outside the partition",
                        img_filename(w->img), len, (unsigned long long)offset);
    return img_pwrite(w->img, buf, w->start + offset, len);
}

int guestfs_fat_open_img(struct img *img, uint64_t start, uint64_t size, const char *label,
                         bool writable, struct guestfs_fat **out)
{
    *out = NULL;
    if (writable && !img_is_writable(img))
        return vs_error(-EROFS, "%s: image is open read-only", label);
    struct fat_window *w = malloc(sizeof(*w));
    if (!w)
        return vs_error(-ENOMEM, "out of memory");
    *w = (struct fat_window){.img = img, .start = start, .size = size};
    int rc = fat_open_common(window_read, writable ? window_write : NULL, w, size, label, out);
    if (rc < 0) {
        free(w);
        return rc;
    }
    (*out)->window = w;
    return 0;
}

void guestfs_fat_id(const struct guestfs_fat *f, char *uuid, size_t uuid_len, char *label,
                    size_t label_len)
{
    if (uuid && uuid_len)
        snprintf(uuid, uuid_len, "%04X-%04X", f->serial >> 16, f->serial & 0xffff);
    if (label && label_len)
        snprintf(label, label_len, "%s", f->volume_label);
}

uint64_t guestfs_fat_free_bytes(const struct guestfs_fat *f)
{
    return f->write ? (uint64_t)f->free_count * f->cluster_size : 0;
}

/* ---- cluster chains ---- */

static bool cluster_valid(const struct guestfs_fat *f, uint32_t c)
{
    return c >= 2 && c - 2 < f->cluster_count;
}

static uint64_t cluster_offset(const struct guestfs_fat *f, uint32_t c)
{
    return f->data_offset + (uint64_t)(c - 2) * f->cluster_size;
}

/* Set the FAT entry of cluster C (valid) to V in memory; the write happens in fat_flush(). */
static void fat_set(struct guestfs_fat *f, uint32_t c, uint32_t v)
{
    uint32_t old = fat_entry(f, c);
    if (f->logging && !f->undo_err) {
        if (f->undo_len == f->undo_cap) {
            size_t cap = f->undo_cap ? f->undo_cap * 2 : 64;
            struct undo *n = realloc(f->undo, cap * sizeof(*n));
            if (!n) {
                f->undo_err = -ENOMEM;
                goto set;
            }
            f->undo = n;
            f->undo_cap = cap;
        }
        f->undo[f->undo_len++] = (struct undo){c, old};
    }
set:;
    size_t off, n;
    if (f->type == FAT12) {
        off = c + c / 2;
        uint16_t w = le16(f->table + off);
        w = (c & 1) ? (uint16_t)((w & 0x000F) | (v & 0xFFF) << 4)
                    : (uint16_t)((w & 0xF000) | (v & 0xFFF));
        put16(f->table + off, w);
        n = 2;
    } else if (f->type == FAT16) {
        off = (size_t)c * 2;
        put16(f->table + off, (uint16_t)v);
        n = 2;
    } else {
        off = (size_t)c * 4;
        put32(f->table + off, (le32(f->table + off) & 0xF0000000) | (v & 0x0FFFFFFF));
        n = 4;
    }
    if (old == 0 && v != 0)
        f->free_count--;
    else if (old != 0 && v == 0)
        f->free_count++;
    f->dirty_lo = VS_MIN(f->dirty_lo, off);
    f->dirty_hi = VS_MAX(f->dirty_hi, off + n);
}

/* Operations: begin, then either commit (fat_flush) or roll back the in-memory FAT. */
static void op_begin(struct guestfs_fat *f)
{
    f->logging = true;
    f->undo_len = 0;
    f->undo_err = 0;
}

static void op_rollback(struct guestfs_fat *f)
{
    f->logging = false;
    while (f->undo_len > 0) {
        struct undo *u = &f->undo[--f->undo_len];
        fat_set(f, u->cluster, u->value);
    }
}

static void op_end(struct guestfs_fat *f)
{
    f->logging = false;
    f->undo_len = 0;
}

/* Write the changed part of the FAT to every copy, and the FSInfo counters. */
static int fat_flush(struct guestfs_fat *f)
{
    if (f->dirty_hi > f->dirty_lo) {
        size_t lo = f->dirty_lo, hi = f->dirty_hi;
        for (uint32_t i = 0; i < f->fat_count; i++) {
            int rc =
                f->write(f->ctx, f->table + lo, f->fat_offset + i * f->fat_stride + lo, hi - lo);
            if (rc < 0)
                return vs_error_prefix(rc, "%s: writing FAT copy %u", f->label, i + 1);
        }
    }
    f->dirty_lo = SIZE_MAX;
    f->dirty_hi = 0;
    if (f->fsinfo_offset) {
        uint8_t v[8];
        put32(v, f->free_count);
        put32(v + 4, f->next_free);
        int rc = f->write(f->ctx, v, f->fsinfo_offset + 488, sizeof(v));
        if (rc < 0)
            return vs_error_prefix(rc, "%s: writing the FAT32 FSInfo sector", f->label);
    }
    return 0;
}

/* Take a free cluster (its entry becomes end-of-chain) and link it after PREV (0: none). */
static int alloc_cluster(struct guestfs_fat *f, uint32_t prev, uint32_t *out)
{
    if (f->free_count > 0) {
        uint32_t start = cluster_valid(f, f->next_free) ? f->next_free : 2;
        for (uint32_t i = 0; i < f->cluster_count; i++) {
            uint32_t c = 2 + (uint32_t)(((uint64_t)start - 2 + i) % f->cluster_count);
            if (fat_entry(f, c) != 0)
                continue;
            fat_set(f, c, FAT_EOC);
            if (prev)
                fat_set(f, prev, c);
            f->next_free = cluster_valid(f, c + 1) ? c + 1 : 2;
            *out = c;
            return f->undo_err ? vs_error(-ENOMEM, "out of memory") : 0;
        }
    }
    return -ENOSPC;
}

/* A walk along one cluster chain. A bitmap of visited clusters makes any loop an error at the
 * first repeated cluster, whatever the file size claims. */
struct chain {
    struct guestfs_fat *f;
    const char *path;
    uint32_t cluster; /* the current one */
    uint64_t *seen;
};

static int chain_start(struct chain *ch, struct guestfs_fat *f, uint32_t first, const char *path)
{
    *ch = (struct chain){.f = f, .path = path, .cluster = first};
    ch->seen = calloc(((size_t)f->cluster_count + 2 + 63) / 64, sizeof(uint64_t));
    return ch->seen ? 0 : vs_error(-ENOMEM, "out of memory");
}

/* Check the current cluster (mark it visited); DONE says how far along we are, for messages. */
static int chain_check(struct chain *ch, uint64_t done)
{
    uint32_t c = ch->cluster;
    struct guestfs_fat *f = ch->f;
    if (c >= 0x0ffffff8)
        return vs_error(-EIO, "%s: %s: cluster chain ends after %llu bytes, before the file does",
                        f->label, ch->path, (unsigned long long)done);
    if (!cluster_valid(f, c))
        return vs_error(-EIO, "%s: %s: cluster chain is broken at cluster %u after %llu bytes",
                        f->label, ch->path, c, (unsigned long long)done);
    if (ch->seen[c / 64] & (1ULL << (c % 64)))
        return vs_error(-EIO, "%s: %s: cluster chain loops at cluster %u after %llu bytes",
                        f->label, ch->path, c, (unsigned long long)done);
    ch->seen[c / 64] |= 1ULL << (c % 64);
    return 0;
}

static void chain_next(struct chain *ch)
{
    ch->cluster = fat_entry(ch->f, ch->cluster);
}

static void chain_end(struct chain *ch)
{
    free(ch->seen);
    ch->seen = NULL;
}

/* Free the chain starting at FIRST; stops quietly where the chain is broken or loops (a damaged
 * chain is not made worse, only what is certainly the file's is freed). */
static int free_chain(struct guestfs_fat *f, uint32_t first, const char *path)
{
    if (!cluster_valid(f, first))
        return 0;
    struct chain ch;
    int rc = chain_start(&ch, f, first, path);
    if (rc < 0)
        return rc;
    while (cluster_valid(f, ch.cluster) &&
           !(ch.seen[ch.cluster / 64] & (1ULL << (ch.cluster % 64)))) {
        uint32_t c = ch.cluster;
        ch.seen[c / 64] |= 1ULL << (c % 64);
        chain_next(&ch);
        if (fat_entry(f, c) != 0)
            fat_set(f, c, 0);
    }
    chain_end(&ch);
    return 0;
}

/* Read the first WANT bytes of the chain starting at FIRST into a new buffer. */
static int read_chain(struct guestfs_fat *f, uint32_t first, uint64_t want, const char *path,
                      uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    uint8_t *buf = malloc(want ? want : 1);
    if (!buf)
        return vs_error(-ENOMEM, "out of memory");
    struct chain ch;
    int rc = chain_start(&ch, f, first, path);
    uint64_t done = 0;
    while (rc == 0 && done < want) {
        rc = chain_check(&ch, done);
        if (rc < 0)
            break;
        size_t n = (size_t)VS_MIN((uint64_t)f->cluster_size, want - done);
        rc = f->read(f->ctx, buf + done, cluster_offset(f, ch.cluster), n);
        if (rc < 0) {
            rc = vs_error_prefix(rc, "%s: %s: reading cluster %u", f->label, path, ch.cluster);
            break;
        }
        done += n;
        chain_next(&ch);
    }
    chain_end(&ch);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *data = buf;
    *len = (size_t)done;
    return 0;
}

/* ---- directories ---- */

/* A directory in memory: its entries and where each cluster of them lives. */
struct dir {
    uint32_t first; /* 0 = the FAT12/16 fixed root */
    uint8_t *buf;
    size_t len;
    uint32_t *clusters;
    size_t count;
};

static void dir_free(struct dir *d)
{
    free(d->buf);
    free(d->clusters);
    memset(d, 0, sizeof(*d));
}

/* Load a directory. CLUSTER 0 = the root. */
static int dir_load(struct guestfs_fat *f, uint32_t cluster, const char *path, struct dir *d)
{
    memset(d, 0, sizeof(*d));
    if (cluster == 0 && f->type != FAT32) {
        size_t n = (size_t)f->root_entries * 32;
        d->buf = malloc(n);
        if (!d->buf)
            return vs_error(-ENOMEM, "out of memory");
        int rc = f->read(f->ctx, d->buf, f->root_offset, n);
        if (rc < 0) {
            dir_free(d);
            return vs_error_prefix(rc, "%s: reading the root directory", f->label);
        }
        d->len = n;
        return 0;
    }
    if (cluster == 0)
        cluster = f->root_cluster;
    d->first = cluster;
    struct chain ch;
    int rc = chain_start(&ch, f, cluster, path);
    size_t cap = 0;
    while (rc == 0 && ch.cluster < 0x0ffffff8) {
        rc = chain_check(&ch, d->len);
        if (rc < 0)
            break;
        if (d->len + f->cluster_size > FAT_MAX_DIR) {
            rc = vs_error(-EFBIG, "%s: %s: directory larger than 65536 entries", f->label, path);
            break;
        }
        if (d->count == cap) {
            cap = cap ? cap * 2 : 4;
            uint32_t *nc = realloc(d->clusters, cap * sizeof(*nc));
            uint8_t *nb = nc ? realloc(d->buf, cap * f->cluster_size) : NULL;
            if (nc)
                d->clusters = nc;
            if (!nb) {
                rc = vs_error(-ENOMEM, "out of memory");
                break;
            }
            d->buf = nb;
        }
        rc = f->read(f->ctx, d->buf + d->len, cluster_offset(f, ch.cluster), f->cluster_size);
        if (rc < 0) {
            rc = vs_error_prefix(rc, "%s: %s: reading directory cluster %u", f->label, path,
                                 ch.cluster);
            break;
        }
        d->clusters[d->count++] = ch.cluster;
        d->len += f->cluster_size;
        chain_next(&ch);
    }
    chain_end(&ch);
    if (rc < 0)
        dir_free(d);
    return rc;
}

/* Write bytes [OFF, OFF+LEN) of a loaded directory back where they came from. */
static int dir_write(struct guestfs_fat *f, const struct dir *d, size_t off, size_t len,
                     const char *path)
{
    while (len > 0) {
        uint64_t at;
        size_t n;
        if (d->first == 0) {
            at = f->root_offset + off;
            n = len;
        } else {
            size_t i = off / f->cluster_size, in = off % f->cluster_size;
            at = cluster_offset(f, d->clusters[i]) + in;
            n = VS_MIN(len, f->cluster_size - in);
        }
        int rc = f->write(f->ctx, d->buf + off, at, n);
        if (rc < 0)
            return vs_error_prefix(rc, "%s: %s: writing the directory", f->label, path);
        off += n;
        len -= n;
    }
    return 0;
}
/* ---- directory entries ---- */

struct fat_entry {
    char name[1024]; /* UTF-8: the long name when valid, else the 8.3 name */
    char short_name[13];
    uint8_t attr;
    uint32_t cluster;
    uint32_t size;
    int64_t mtime;
    size_t offset;       /* of the 8.3 entry in its directory */
    size_t first_offset; /* of its first long-name piece (= offset without one) */
    uint32_t dir;        /* cluster of the directory holding it (0: root) */
};

static uint8_t lfn_checksum(const uint8_t *short_name)
{
    uint8_t sum = 0;
    for (int i = 0; i < 11; i++)
        sum = (uint8_t)(((sum & 1) << 7) + (sum >> 1) + short_name[i]);
    return sum;
}

static size_t utf8_put(char *out, size_t cap, size_t pos, uint32_t cp)
{
    char tmp[4];
    size_t n;
    if (cp < 0x80) {
        tmp[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        tmp[0] = (char)(0xC0 | cp >> 6);
        tmp[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        tmp[0] = (char)(0xE0 | cp >> 12);
        tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        tmp[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        tmp[0] = (char)(0xF0 | cp >> 18);
        tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        tmp[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (pos + n + 1 > cap)
        return pos;
    memcpy(out + pos, tmp, n);
    return pos + n;
}

static int64_t fat_time(uint16_t date, uint16_t time)
{
    struct tm tm = {
        .tm_year = 80 + (date >> 9),
        .tm_mon = ((date >> 5) & 15) - 1,
        .tm_mday = date & 31,
        .tm_hour = time >> 11,
        .tm_min = (time >> 5) & 63,
        .tm_sec = (time & 31) * 2,
    };
    if (tm.tm_mon < 0 || tm.tm_mday == 0)
        return 0;
    return (int64_t)timegm(&tm);
}

/* Walk the entries of a directory buffer; CB returns nonzero to stop (that value is returned). */
typedef int (*entry_fn)(const struct fat_entry *e, void *arg);

static int walk_dir(const struct guestfs_fat *f, const uint8_t *buf, size_t len, entry_fn cb,
                    void *arg)
{
    uint16_t lfn[20 * 13 + 1];
    int lfn_parts = 0; /* sequence numbers still expected, 0 = none collected */
    int lfn_total = 0;
    uint8_t lfn_sum = 0;
    size_t lfn_first = 0;
    for (size_t off = 0; off + 32 <= len; off += 32) {
        const uint8_t *d = buf + off;
        if (d[0] == 0x00)
            break;
        if (d[0] == 0xE5) {
            lfn_parts = 0;
            continue;
        }
        if ((d[11] & 0x3F) == 0x0F) { /* long-name piece, last piece first */
            int seq = d[0] & 0x1F;
            if (d[0] & 0x40) {
                if (seq < 1 || seq > 20) {
                    lfn_parts = 0;
                    continue;
                }
                lfn_total = seq;
                lfn_parts = seq;
                lfn_sum = d[13];
                lfn_first = off;
                for (size_t i = 0; i < VS_ARRAY_SIZE(lfn); i++)
                    lfn[i] = 0xFFFF;
            } else if (lfn_parts == 0 || seq != lfn_parts || d[13] != lfn_sum) {
                lfn_parts = 0;
                continue;
            }
            static const int pos[13] = {1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30};
            for (int i = 0; i < 13; i++)
                lfn[(seq - 1) * 13 + i] = le16(d + pos[i]);
            lfn_parts = seq - 1;
            if (lfn_parts == 0)
                lfn_parts = -1; /* complete; must be followed by its short entry */
            continue;
        }
        bool have_lfn = lfn_parts == -1 && lfn_checksum(d) == lfn_sum;
        lfn_parts = 0;
        if (d[11] & 0x08) /* volume label */
            continue;
        struct fat_entry e;
        memset(&e, 0, sizeof(e));
        /* 8.3 name; NT byte 0x08/0x10 ask for a lower-case base/extension */
        size_t n = 0;
        for (int i = 0; i < 8 && d[i] != ' '; i++) {
            uint8_t ch = (i == 0 && d[0] == 0x05) ? 0xE5 : d[i];
            e.short_name[n++] = (char)((d[12] & 0x08) ? tolower_ascii(ch) : ch);
        }
        if (d[8] != ' ') {
            e.short_name[n++] = '.';
            for (int i = 8; i < 11 && d[i] != ' '; i++)
                e.short_name[n++] = (char)((d[12] & 0x10) ? tolower_ascii(d[i]) : d[i]);
        }
        e.short_name[n] = 0;
        if (have_lfn) {
            size_t p = 0;
            for (int i = 0; i < lfn_total * 13; i++) {
                uint32_t cp = lfn[i];
                if (cp == 0 || cp == 0xFFFF)
                    break;
                if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < lfn_total * 13 && lfn[i + 1] >= 0xDC00 &&
                    lfn[i + 1] < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lfn[i + 1] - 0xDC00);
                    i++;
                }
                if (cp == '/' || cp == 0)
                    cp = '_';
                p = utf8_put(e.name, sizeof(e.name), p, cp);
            }
            e.name[p] = 0;
        }
        if (!e.name[0])
            snprintf(e.name, sizeof(e.name), "%s", e.short_name);
        for (char *c = e.name; *c; c++)
            if (*c == '/')
                *c = '_';
        e.attr = d[11];
        e.cluster = (f->type == FAT32 ? (uint32_t)le16(d + 20) << 16 : 0) | le16(d + 26);
        e.size = le32(d + 28);
        e.mtime = fat_time(le16(d + 24), le16(d + 22));
        e.offset = off;
        e.first_offset = have_lfn ? lfn_first : off;
        int rc = cb(&e, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- paths ---- */

struct find_ctx {
    const char *name;
    size_t name_len;
    struct fat_entry found;
};

static int find_cb(const struct fat_entry *e, void *arg)
{
    struct find_ctx *c = arg;
    if ((strlen(e->name) == c->name_len && !strncasecmp(e->name, c->name, c->name_len)) ||
        (strlen(e->short_name) == c->name_len &&
         !strncasecmp(e->short_name, c->name, c->name_len))) {
        c->found = *e;
        return 1;
    }
    return 0;
}

/* Resolve PATH to an entry; the root is a synthetic directory with cluster 0. */
static int lookup(struct guestfs_fat *f, const char *path, struct fat_entry *out)
{
    if (!path || path[0] != '/')
        return vs_error(-EINVAL, "%s: %s: paths must be absolute", f->label, path ? path : "");
    memset(out, 0, sizeof(*out));
    out->attr = 0x10;
    strcpy(out->name, "/");
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *end = strchrnul(p, '/');
        if (!(out->attr & 0x10))
            return vs_error(-ENOTDIR, "%s: %s: not a directory", f->label, path);
        struct dir d;
        int rc = dir_load(f, out->cluster, path, &d);
        if (rc < 0)
            return rc;
        struct find_ctx c = {.name = p, .name_len = (size_t)(end - p)};
        rc = walk_dir(f, d.buf, d.len, find_cb, &c);
        dir_free(&d);
        if (rc == 0)
            return vs_error(-ENOENT, "%s: %s: no such file or directory", f->label, path);
        c.found.dir = out->cluster;
        *out = c.found;
        /* ".." of a first-level directory points at cluster 0: the root */
        p = end;
    }
    return 0;
}

int guestfs_fat_exists(struct guestfs_fat *f, const char *path)
{
    struct fat_entry e;
    int rc = lookup(f, path, &e);
    if (rc == -ENOENT || rc == -ENOTDIR)
        return 0;
    return rc < 0 ? rc : 1;
}

struct list_ctx {
    struct guestfs_dirent *v;
    size_t n;
    int err;
};

static int list_cb(const struct fat_entry *e, void *arg)
{
    struct list_ctx *c = arg;
    if (!strcmp(e->short_name, ".") || !strcmp(e->short_name, ".."))
        return 0;
    struct guestfs_dirent *nv = realloc(c->v, (c->n + 1) * sizeof(*nv));
    if (!nv) {
        c->err = vs_error(-ENOMEM, "out of memory");
        return 1;
    }
    c->v = nv;
    struct guestfs_dirent *d = &c->v[c->n];
    memset(d, 0, sizeof(*d));
    d->name = strdup(e->name);
    if (!d->name) {
        c->err = vs_error(-ENOMEM, "out of memory");
        return 1;
    }
    d->ino = e->cluster;
    d->mode = (e->attr & 0x10) ? (S_IFDIR | 0755) : (S_IFREG | ((e->attr & 1) ? 0444 : 0644));
    d->size = (e->attr & 0x10) ? 0 : e->size;
    d->mtime = e->mtime;
    c->n++;
    return 0;
}

int guestfs_fat_list(struct guestfs_fat *f, const char *path, struct guestfs_dirent **entries,
                     size_t *count)
{
    *entries = NULL;
    *count = 0;
    struct fat_entry e;
    int rc = lookup(f, path, &e);
    if (rc < 0)
        return rc;
    if (!(e.attr & 0x10))
        return vs_error(-ENOTDIR, "%s: %s: not a directory", f->label, path);
    struct dir d;
    rc = dir_load(f, e.cluster, path, &d);
    if (rc < 0)
        return rc;
    struct list_ctx c = {0};
    walk_dir(f, d.buf, d.len, list_cb, &c);
    dir_free(&d);
    if (c.err) {
        guestfs_dirents_free(c.v, c.n);
        return c.err;
    }
    *entries = c.v;
    *count = c.n;
    return 0;
}

static int open_file(struct guestfs_fat *f, const char *path, struct fat_entry *e)
{
    int rc = lookup(f, path, e);
    if (rc < 0)
        return rc;
    if (e->attr & 0x10)
        return vs_error(-EISDIR, "%s: %s: is a directory", f->label, path);
    if ((uint64_t)e->size > (uint64_t)f->cluster_count * f->cluster_size)
        return vs_error(-EIO, "%s: %s: size %u is larger than the volume", f->label, path, e->size);
    if (e->size && !cluster_valid(f, e->cluster))
        return vs_error(-EIO, "%s: %s: first cluster %u out of range", f->label, path, e->cluster);
    return 0;
}

int guestfs_fat_read_file(struct guestfs_fat *f, const char *path, size_t max, char **data,
                          size_t *len)
{
    *data = NULL;
    *len = 0;
    struct fat_entry e;
    int rc = open_file(f, path, &e);
    if (rc < 0)
        return rc;
    if (e.size > max)
        return vs_error(-EFBIG, "%s: %s: %u bytes is larger than %zu", f->label, path, e.size, max);
    uint8_t *buf;
    size_t n;
    rc = read_chain(f, e.cluster, e.size, path, &buf, &n);
    if (rc < 0)
        return rc;
    char *out = realloc(buf, n + 1);
    if (!out) {
        free(buf);
        return vs_error(-ENOMEM, "out of memory");
    }
    out[n] = 0;
    *data = out;
    *len = n;
    return 0;
}

int guestfs_fat_read_to_fd(struct guestfs_fat *f, const char *path, int fd)
{
    struct fat_entry e;
    int rc = open_file(f, path, &e);
    if (rc < 0)
        return rc;
    uint8_t *buf = malloc(f->cluster_size);
    if (!buf)
        return vs_error(-ENOMEM, "out of memory");
    struct chain ch;
    rc = chain_start(&ch, f, e.cluster, path);
    uint64_t done = 0;
    while (rc == 0 && done < e.size) {
        rc = chain_check(&ch, done);
        if (rc < 0)
            break;
        size_t n = (size_t)VS_MIN((uint64_t)f->cluster_size, e.size - done);
        rc = f->read(f->ctx, buf, cluster_offset(f, ch.cluster), n);
        if (rc < 0) {
            rc = vs_error_prefix(rc, "%s: %s: reading cluster %u", f->label, path, ch.cluster);
            break;
        }
        for (size_t w = 0; w < n;) {
            ssize_t k = write(fd, buf + w, n - w);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                rc = vs_error_errno(k < 0 ? -errno : -EIO, "writing %s", path);
                break;
            }
            w += (size_t)k;
        }
        done += n;
        chain_next(&ch);
    }
    chain_end(&ch);
    free(buf);
    return rc;
}

/* ---- writing ---- */

static int need_writable(struct guestfs_fat *f, const char *path)
{
    if (!f->write)
        return vs_error(-EROFS, "%s: %s: FAT volume opened read-only", f->label, path);
    return 0;
}

/* UTF-8 to UTF-16 (surrogate pairs above U+FFFF); false on bad UTF-8 or more than CAP units. */
static bool utf8_to_utf16(const char *s, uint16_t *out, size_t cap, size_t *len)
{
    size_t n = 0;
    const uint8_t *p = (const uint8_t *)s;
    while (*p) {
        uint32_t cp;
        int more;
        if (*p < 0x80) {
            cp = *p;
            more = 0;
        } else if ((*p & 0xE0) == 0xC0) {
            cp = *p & 0x1F;
            more = 1;
        } else if ((*p & 0xF0) == 0xE0) {
            cp = *p & 0x0F;
            more = 2;
        } else if ((*p & 0xF8) == 0xF0) {
            cp = *p & 0x07;
            more = 3;
        } else {
            return false;
        }
        p++;
        for (int i = 0; i < more; i++, p++) {
            if ((*p & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (*p & 0x3F);
        }
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[more] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
            return false;
        if (cp >= 0x10000) {
            if (n + 2 > cap)
                return false;
            cp -= 0x10000;
            out[n++] = (uint16_t)(0xD800 | cp >> 10);
            out[n++] = (uint16_t)(0xDC00 | (cp & 0x3FF));
        } else {
            if (n + 1 > cap)
                return false;
            out[n++] = (uint16_t)cp;
        }
    }
    *len = n;
    return true;
}

/* Characters allowed in an 8.3 name (besides letters and digits). */
static bool short_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'()-@^_`{}~", c));
}

/* Is NAME a valid 8.3 name as it stands? Each part must be all upper or all lower case; lower
 * case is recorded in the NT case flags (what Windows NT and Linux do) instead of a long name. */
static bool name_is_83(const char *name, uint8_t out[11], uint8_t *nt)
{
    const char *dot = strchr(name, '.');
    size_t blen = dot ? (size_t)(dot - name) : strlen(name);
    const char *ext = dot ? dot + 1 : "";
    size_t elen = strlen(ext);
    if (blen < 1 || blen > 8 || elen > 3 || (dot && elen == 0))
        return false;
    int bcase = 0, ecase = 0; /* 1: upper seen, 2: lower seen */
    memset(out, ' ', 11);
    for (size_t i = 0; i < blen + elen; i++) {
        uint8_t c = (uint8_t)(i < blen ? name[i] : ext[i - blen]);
        if (!short_char(c))
            return false;
        int *cs = i < blen ? &bcase : &ecase;
        if (c >= 'A' && c <= 'Z')
            *cs |= 1;
        if (c >= 'a' && c <= 'z')
            *cs |= 2;
        out[i < blen ? i : 8 + i - blen] = toupper_ascii(c);
    }
    if (bcase == 3 || ecase == 3)
        return false;
    *nt = (uint8_t)((bcase == 2 ? 0x08 : 0) | (ecase == 2 ? 0x10 : 0));
    return true;
}

/* The basis of an 8.3 alias: upper case, spaces and extra dots dropped, other characters that
 * can't be in a short name (one per UTF-8 character) become '_'. */
static void alias_basis(const char *name, char base[9], size_t *blen, char ext[4], size_t *elen)
{
    while (*name == '.' || *name == ' ')
        name++;
    const char *dot = strrchr(name, '.');
    *blen = *elen = 0;
    for (const char *p = name; *p && p != dot; p++) {
        uint8_t c = (uint8_t)*p;
        if (c == ' ' || c == '.' || (c & 0xC0) == 0x80)
            continue;
        if (*blen < 8)
            base[(*blen)++] = short_char(c) ? (char)toupper_ascii(c) : '_';
    }
    for (const char *p = dot ? dot + 1 : ""; *p; p++) {
        uint8_t c = (uint8_t)*p;
        if (c == ' ' || c == '.' || (c & 0xC0) == 0x80)
            continue;
        if (*elen < 3)
            ext[(*elen)++] = short_char(c) ? (char)toupper_ascii(c) : '_';
    }
    if (*blen == 0)
        base[(*blen)++] = '_';
}

/* The alias BASE~N.EXT as an 11-byte directory name. */
static void alias_make(const char *base, size_t blen, const char *ext, size_t elen, unsigned n,
                       uint8_t out[11])
{
    char tail[12];
    int tl = snprintf(tail, sizeof(tail), "~%u", n);
    size_t keep = VS_MIN(blen, 8 - (size_t)tl);
    memset(out, ' ', 11);
    memcpy(out, base, keep);
    memcpy(out + keep, tail, (size_t)tl);
    memcpy(out + 8, ext, elen);
}

/* A new entry's names: the 8.3 name (alias or the name itself) and the long name, if any. */
struct new_name {
    uint8_t short_name[11];
    uint8_t nt;
    uint16_t lfn[255];
    size_t lfn_len; /* 0: the name is a plain 8.3 name */
};

static int make_name(struct guestfs_fat *f, const struct dir *d, const char *name, const char *path,
                     struct new_name *nn)
{
    memset(nn, 0, sizeof(*nn));
    size_t len = strlen(name);
    bool bad = len == 0 || name[len - 1] == '.' || name[len - 1] == ' ';
    for (const char *p = name; *p && !bad; p++)
        bad = (uint8_t)*p < 0x20 || strchr("\"*/:<>?\\|", *p);
    if (bad)
        return vs_error(-EINVAL, "%s: %s: not a valid FAT file name", f->label, path);
    if (!utf8_to_utf16(name, nn->lfn, VS_ARRAY_SIZE(nn->lfn), &nn->lfn_len))
        return vs_error(-ENAMETOOLONG,
                        "%s: %s: name is not UTF-8 or longer than 255 UTF-16 characters", f->label,
                        path);
    if (name_is_83(name, nn->short_name, &nn->nt)) {
        nn->lfn_len = 0;
        return 0;
    }
    char base[9], ext[4];
    size_t blen, elen;
    alias_basis(name, base, &blen, ext, &elen);
    /* one pass over the directory marks which ~N are taken; N beyond entries+1 never is */
    size_t limit = d->len / 32 + 2;
    uint8_t *used = calloc(limit + 1, 1);
    if (!used)
        return vs_error(-ENOMEM, "out of memory");
    for (size_t off = 0; off + 32 <= d->len; off += 32) {
        const uint8_t *e = d->buf + off;
        if (e[0] == 0)
            break;
        if (e[0] == 0xE5 || (e[11] & 0x3F) == ATTR_LFN)
            continue;
        const uint8_t *tilde = memchr(e, '~', 8);
        if (!tilde)
            continue;
        size_t n = 0, i = (size_t)(tilde - e) + 1;
        for (; i < 8 && e[i] >= '0' && e[i] <= '9' && n <= limit; i++)
            n = n * 10 + (e[i] - '0');
        if (n == 0 || n > limit)
            continue;
        uint8_t cand[11];
        alias_make(base, blen, ext, elen, (unsigned)n, cand);
        if (!memcmp(cand, e, 11))
            used[n] = 1;
    }
    size_t n = 1;
    while (used[n])
        n++;
    free(used);
    alias_make(base, blen, ext, elen, (unsigned)n, nn->short_name);
    return 0;
}

static void fat_now(uint16_t *date, uint16_t *clock, uint8_t *tenths)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int year = tm.tm_year + 1900;
    if (year < 1980) {
        tm = (struct tm){.tm_mday = 1};
        year = 1980;
    }
    if (year > 2107)
        year = 2107;
    *date = (uint16_t)((year - 1980) << 9 | (tm.tm_mon + 1) << 5 | tm.tm_mday);
    *clock = (uint16_t)(tm.tm_hour << 11 | tm.tm_min << 5 | tm.tm_sec / 2);
    if (tenths)
        *tenths = (uint8_t)((tm.tm_sec % 2) * 100);
}

/* Fill an 8.3 entry: NAME (11 bytes), ATTR, first cluster, size, all timestamps now. */
static void short_entry(const struct guestfs_fat *f, uint8_t *e, const uint8_t name[11], uint8_t nt,
                        uint8_t attr, uint32_t cluster, uint32_t size)
{
    memset(e, 0, 32);
    memcpy(e, name, 11);
    e[11] = attr;
    e[12] = nt;
    uint16_t date, clock;
    fat_now(&date, &clock, &e[13]);
    put16(e + 14, clock);
    put16(e + 16, date);
    put16(e + 18, date);
    put16(e + 20, f->type == FAT32 ? (uint16_t)(cluster >> 16) : 0);
    put16(e + 22, clock);
    put16(e + 24, date);
    put16(e + 26, (uint16_t)cluster);
    put32(e + 28, size);
}

/* The entries for a new name: long-name pieces (last first), then the 8.3 entry. */
static size_t build_entries(const struct guestfs_fat *f, const struct new_name *nn, uint8_t attr,
                            uint32_t cluster, uint8_t out[21 * 32])
{
    static const int pos[13] = {1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30};
    size_t pieces = (nn->lfn_len + 12) / 13;
    uint8_t sum = lfn_checksum(nn->short_name);
    for (size_t k = 0; k < pieces; k++) {
        size_t seq = pieces - k; /* 1-based piece number */
        uint8_t *e = out + k * 32;
        memset(e, 0, 32);
        e[0] = (uint8_t)(seq | (k == 0 ? 0x40 : 0));
        e[11] = ATTR_LFN;
        e[13] = sum;
        for (size_t i = 0; i < 13; i++) {
            size_t j = (seq - 1) * 13 + i;
            put16(e + pos[i], j < nn->lfn_len ? nn->lfn[j] : j == nn->lfn_len ? 0 : 0xFFFF);
        }
    }
    short_entry(f, out + pieces * 32, nn->short_name, nn->lfn_len ? 0 : nn->nt, attr, cluster, 0);
    return pieces + 1;
}

/* Place COUNT entries in a free run of D (growing it by whole, zeroed clusters when needed; the
 * new clusters are allocated inside the open operation). *AT and *LEN: the bytes to write back. */
static int dir_insert(struct guestfs_fat *f, struct dir *d, const uint8_t *ents, size_t count,
                      const char *path, size_t *at, size_t *len)
{
    size_t run = 0, start = 0, end = d->len;
    bool found = false;
    for (size_t off = 0; off + 32 <= d->len; off += 32) {
        if (d->buf[off] == 0x00 && end == d->len)
            end = off;
        if (off >= end || d->buf[off] == 0xE5) {
            if (run++ == 0)
                start = off;
            if (run == count) {
                found = true;
                break;
            }
        } else {
            run = 0;
        }
    }
    if (!found) {
        if (d->first == 0)
            return vs_error(-ENOSPC, "%s: %s: root directory full (%u entries)", f->label, path,
                            f->root_entries);
        if (d->count == 0)
            return vs_error(-EIO, "%s: %s: directory has no clusters", f->label, path);
        if (run == 0)
            start = d->len;
        size_t need = (count - run) * 32;
        size_t grow = (need + f->cluster_size - 1) / f->cluster_size;
        if (d->len + grow * f->cluster_size > FAT_MAX_DIR)
            return vs_error(-ENOSPC, "%s: %s: directory full (65536 entries)", f->label, path);
        uint8_t *nb = realloc(d->buf, d->len + grow * f->cluster_size);
        if (!nb)
            return vs_error(-ENOMEM, "out of memory");
        d->buf = nb;
        uint32_t *nc = realloc(d->clusters, (d->count + grow) * sizeof(*nc));
        if (!nc)
            return vs_error(-ENOMEM, "out of memory");
        d->clusters = nc;
        for (size_t i = 0; i < grow; i++) {
            uint32_t c;
            int rc = alloc_cluster(f, d->clusters[d->count - 1], &c);
            if (rc == -ENOSPC)
                return vs_error(-ENOSPC, "%s: %s: volume full (no cluster to grow the directory)",
                                f->label, path);
            if (rc < 0)
                return rc;
            uint8_t *fresh = d->buf + d->len;
            memset(fresh, 0, f->cluster_size);
            rc = f->write(f->ctx, fresh, cluster_offset(f, c), f->cluster_size);
            if (rc < 0)
                return vs_error_prefix(rc, "%s: %s: writing directory cluster %u", f->label, path,
                                       c);
            d->clusters[d->count++] = c;
            d->len += f->cluster_size;
        }
    }
    memcpy(d->buf + start, ents, count * 32);
    *at = start;
    *len = count * 32;
    /* entries taken from past the end marker: keep one after them, unless the directory ends */
    size_t after = start + count * 32;
    if (after >= end && after + 32 <= d->len && d->buf[after] != 0) {
        d->buf[after] = 0;
        *len += 32;
    }
    return 0;
}

/* Where a path's last component lives: its parent directory (loaded) and its entry, if any. */
struct slot {
    struct dir dir;
    uint32_t dir_cluster; /* 0: the root */
    char *copy;           /* the path, split at its last '/' */
    const char *base;
    bool exists;
    struct fat_entry entry;
};

static void slot_free(struct slot *s)
{
    dir_free(&s->dir);
    free(s->copy);
}

static int slot_find(struct guestfs_fat *f, const char *path, struct slot *s)
{
    memset(s, 0, sizeof(*s));
    if (!path || path[0] != '/')
        return vs_error(-EINVAL, "%s: %s: paths must be absolute", f->label, path ? path : "");
    s->copy = strdup(path);
    if (!s->copy)
        return vs_error(-ENOMEM, "out of memory");
    size_t n = strlen(s->copy);
    while (n > 1 && s->copy[n - 1] == '/')
        s->copy[--n] = 0;
    char *slash = strrchr(s->copy, '/');
    s->base = slash + 1;
    if (!*s->base || !strcmp(s->base, ".") || !strcmp(s->base, "..")) {
        slot_free(s);
        return vs_error(-EINVAL, "%s: %s: not a usable file name", f->label, path);
    }
    *slash = 0;
    struct fat_entry parent;
    int rc = lookup(f, slash == s->copy ? "/" : s->copy, &parent);
    if (rc == 0 && !(parent.attr & ATTR_DIR))
        rc = vs_error(-ENOTDIR, "%s: %s: parent is not a directory", f->label, path);
    if (rc == 0)
        rc = dir_load(f, parent.cluster, path, &s->dir);
    if (rc == 0 && s->dir.first != 0 && s->dir.count == 0)
        rc = vs_error(-EIO, "%s: %s: parent directory has no clusters", f->label, path);
    if (rc < 0) {
        slot_free(s);
        return rc;
    }
    s->dir_cluster = parent.cluster;
    struct find_ctx c = {.name = s->base, .name_len = strlen(s->base)};
    if (walk_dir(f, s->dir.buf, s->dir.len, find_cb, &c)) {
        s->exists = true;
        s->entry = c.found;
        s->entry.dir = s->dir_cluster;
    }
    return 0;
}

/* Bytes to write: a host fd or a buffer. */
struct source {
    int fd;
    const uint8_t *data;
    size_t len;
    size_t pos;
};

/* Fill up to WANT bytes (fewer only at the end); bytes read or -errno. */
static ssize_t source_fill(struct source *s, uint8_t *buf, size_t want)
{
    if (s->fd < 0) {
        size_t n = VS_MIN(want, s->len - s->pos);
        memcpy(buf, s->data + s->pos, n);
        s->pos += n;
        return (ssize_t)n;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t r = read(s->fd, buf + got, want - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int volume_full(struct guestfs_fat *f, const char *path, uint64_t size)
{
    return vs_error(-ENOSPC,
                    "%s: %s: volume full (%llu bytes needed, %llu free); nothing was written",
                    f->label, path, (unsigned long long)size,
                    (unsigned long long)f->free_count * f->cluster_size);
}

/* Create or replace PATH with the bytes of SRC (SIZE, when known, lets a full volume fail before
 * any data is written). */
static int fat_put(struct guestfs_fat *f, const char *path, struct source *src, uint64_t size,
                   bool size_known)
{
    int rc = need_writable(f, path);
    if (rc < 0)
        return rc;
    if (size_known && size > FAT_MAX_FILE)
        return vs_error(-EFBIG, "%s: %s: %llu bytes is larger than FAT's 4 GiB - 1 limit", f->label,
                        path, (unsigned long long)size);
    if (size_known && (size + f->cluster_size - 1) / f->cluster_size > f->free_count)
        return volume_full(f, path, size);
    struct slot s;
    rc = slot_find(f, path, &s);
    if (rc < 0)
        return rc;
    if (s.exists && (s.entry.attr & ATTR_DIR)) {
        slot_free(&s);
        return vs_error(-EISDIR, "%s: %s: is a directory", f->label, path);
    }
    uint8_t *buf = malloc(f->cluster_size);
    if (!buf) {
        slot_free(&s);
        return vs_error(-ENOMEM, "out of memory");
    }
    op_begin(f);
    uint32_t first = 0, prev = 0;
    uint64_t total = 0;
    for (;;) {
        ssize_t n = source_fill(src, buf, f->cluster_size);
        if (n < 0) {
            rc = vs_error_errno((int)n, "%s: reading the source", path);
            break;
        }
        if (n == 0)
            break;
        if (total + (uint64_t)n > FAT_MAX_FILE) {
            rc = vs_error(-EFBIG, "%s: %s: file is larger than FAT's 4 GiB - 1 limit", f->label,
                          path);
            break;
        }
        memset(buf + n, 0, f->cluster_size - (size_t)n);
        uint32_t c;
        rc = alloc_cluster(f, prev, &c);
        if (rc == -ENOSPC) {
            rc = volume_full(f, path, total + (uint64_t)n);
            break;
        }
        if (rc < 0)
            break;
        rc = f->write(f->ctx, buf, cluster_offset(f, c), f->cluster_size);
        if (rc < 0) {
            rc = vs_error_prefix(rc, "%s: %s: writing cluster %u", f->label, path, c);
            break;
        }
        if (!first)
            first = c;
        prev = c;
        total += (uint64_t)n;
        if ((size_t)n < f->cluster_size)
            break;
    }
    free(buf);
    size_t at = 0, len = 0;
    uint32_t old = 0;
    if (rc == 0 && s.exists) {
        uint8_t *e = s.dir.buf + s.entry.offset;
        old = s.entry.cluster;
        uint16_t date, clock;
        fat_now(&date, &clock, NULL);
        e[11] = (uint8_t)((e[11] & ~ATTR_VOLUME) | ATTR_ARCHIVE);
        put16(e + 18, date);
        put16(e + 20, f->type == FAT32 ? (uint16_t)(first >> 16) : 0);
        put16(e + 22, clock);
        put16(e + 24, date);
        put16(e + 26, (uint16_t)first);
        put32(e + 28, (uint32_t)total);
        at = s.entry.offset;
        len = 32;
    } else if (rc == 0) {
        struct new_name nn;
        uint8_t ents[21 * 32];
        rc = make_name(f, &s.dir, s.base, path, &nn);
        if (rc == 0) {
            size_t count = build_entries(f, &nn, ATTR_ARCHIVE, first, ents);
            put32(ents + (count - 1) * 32 + 28, (uint32_t)total);
            rc = dir_insert(f, &s.dir, ents, count, path, &at, &len);
        }
    }
    if (rc == 0 && f->undo_err)
        rc = vs_error(-ENOMEM, "out of memory");
    if (rc < 0) {
        op_rollback(f);
        slot_free(&s);
        return rc;
    }
    op_end(f);
    /* the chain and any directory growth reach the disk before the entry that links them */
    rc = fat_flush(f);
    if (rc == 0)
        rc = dir_write(f, &s.dir, at, len, path);
    if (rc == 0 && old && old != first) {
        rc = free_chain(f, old, path);
        if (rc == 0)
            rc = fat_flush(f);
    }
    slot_free(&s);
    return rc;
}

int guestfs_fat_write_file(struct guestfs_fat *f, const char *path, const void *data, size_t len)
{
    struct source s = {.fd = -1, .data = data, .len = len};
    return fat_put(f, path, &s, len, true);
}

int guestfs_fat_write_from_fd(struct guestfs_fat *f, const char *path, int fd)
{
    struct source s = {.fd = fd};
    struct stat st;
    bool known = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && lseek(fd, 0, SEEK_CUR) == 0;
    return fat_put(f, path, &s, known ? (uint64_t)st.st_size : 0, known);
}

int guestfs_fat_mkdir(struct guestfs_fat *f, const char *path)
{
    int rc = need_writable(f, path);
    if (rc < 0)
        return rc;
    struct slot s;
    rc = slot_find(f, path, &s);
    if (rc < 0)
        return rc;
    if (s.exists) {
        slot_free(&s);
        return vs_error(-EEXIST, "%s: %s: already exists", f->label, path);
    }
    uint8_t *buf = calloc(1, f->cluster_size);
    if (!buf) {
        slot_free(&s);
        return vs_error(-ENOMEM, "out of memory");
    }
    op_begin(f);
    uint32_t c = 0;
    rc = alloc_cluster(f, 0, &c);
    if (rc == -ENOSPC)
        rc = volume_full(f, path, f->cluster_size);
    if (rc == 0) {
        static const uint8_t dot[11] = ".          ", dotdot[11] = "..         ";
        /* ".." of a directory in the root is 0, FAT32 included */
        uint32_t parent = s.dir_cluster == f->root_cluster && f->type == FAT32 ? 0 : s.dir_cluster;
        short_entry(f, buf, dot, 0, ATTR_DIR, c, 0);
        short_entry(f, buf + 32, dotdot, 0, ATTR_DIR, parent, 0);
        rc = f->write(f->ctx, buf, cluster_offset(f, c), f->cluster_size);
        if (rc < 0)
            rc = vs_error_prefix(rc, "%s: %s: writing cluster %u", f->label, path, c);
    }
    free(buf);
    size_t at = 0, len = 0;
    if (rc == 0) {
        struct new_name nn;
        uint8_t ents[21 * 32];
        rc = make_name(f, &s.dir, s.base, path, &nn);
        if (rc == 0) {
            size_t count = build_entries(f, &nn, ATTR_DIR, c, ents);
            rc = dir_insert(f, &s.dir, ents, count, path, &at, &len);
        }
    }
    if (rc == 0 && f->undo_err)
        rc = vs_error(-ENOMEM, "out of memory");
    if (rc < 0) {
        op_rollback(f);
        slot_free(&s);
        return rc;
    }
    op_end(f);
    rc = fat_flush(f);
    if (rc == 0)
        rc = dir_write(f, &s.dir, at, len, path);
    slot_free(&s);
    return rc;
}

static int nonempty_cb(const struct fat_entry *e, void *arg)
{
    (void)arg;
    return strcmp(e->short_name, ".") && strcmp(e->short_name, "..");
}

int guestfs_fat_remove(struct guestfs_fat *f, const char *path)
{
    int rc = need_writable(f, path);
    if (rc < 0)
        return rc;
    struct slot s;
    rc = slot_find(f, path, &s);
    if (rc < 0)
        return rc;
    if (!s.exists) {
        slot_free(&s);
        return vs_error(-ENOENT, "%s: %s: no such file or directory", f->label, path);
    }
    if (s.entry.attr & ATTR_DIR) {
        if (!cluster_valid(f, s.entry.cluster) || s.entry.cluster == f->root_cluster) {
            slot_free(&s);
            return vs_error(-EIO, "%s: %s: directory entry points at cluster %u", f->label, path,
                            s.entry.cluster);
        }
        struct dir sub;
        rc = dir_load(f, s.entry.cluster, path, &sub);
        if (rc == 0) {
            if (walk_dir(f, sub.buf, sub.len, nonempty_cb, NULL))
                rc = vs_error(-ENOTEMPTY, "%s: %s: directory not empty", f->label, path);
            dir_free(&sub);
        }
        if (rc < 0) {
            slot_free(&s);
            return rc;
        }
    }
    /* the entries go first: a crash in between leaves lost clusters, never a shared chain */
    for (size_t off = s.entry.first_offset; off <= s.entry.offset; off += 32)
        s.dir.buf[off] = 0xE5;
    rc = dir_write(f, &s.dir, s.entry.first_offset, s.entry.offset - s.entry.first_offset + 32,
                   path);
    if (rc == 0)
        rc = free_chain(f, s.entry.cluster, path);
    if (rc == 0)
        rc = fat_flush(f);
    slot_free(&s);
    return rc;
}
