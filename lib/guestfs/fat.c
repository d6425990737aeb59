/*
 * lib/guestfs/fat.c — FAT12/16/32 (with VFAT long names), read-only, over any byte source.
 *
 * Why our own reader: Debian has no maintained library that reads FAT through a caller's block
 * callback (`apt-cache search` finds no libfat; mtools, dosfstools and fatcat are programs, not
 * libraries), and the image engine must be the block source so qcow2/vmdk/overlays work the same
 * as with libext2fs. FAT is small enough to read in a few hundred lines.
 *
 * The idea: validate the boot sector once (every size it gives is bounded against the partition
 * before it is used), load the first FAT into memory, and treat every directory — including the
 * fixed FAT12/16 root — as a byte buffer of 32-byte entries. Every cluster chain walk is bounded
 * by the number of clusters on the volume, so a looping or out-of-range chain is an error, never
 * a hang or an out-of-bounds read.
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

enum fat_type { FAT12 = 12, FAT16 = 16, FAT32 = 32 };

struct guestfs_fat {
    guestfs_read_fn read;
    void *ctx;
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
};

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint8_t tolower_ascii(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
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
    const uint8_t *ext = bs + (g->type == 32 ? 64 : 36); /* extended BPB: drive, res, sig */
    if (ext[2] == 0x29 || ext[2] == 0x28) {
        g->serial = le32(ext + 3);
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
    }
    return 0;
}

int guestfs_fat_open(guestfs_read_fn read, void *ctx, uint64_t size, const char *label,
                     struct guestfs_fat **out)
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
    *out = f;
    return 0;
}

void guestfs_fat_close(struct guestfs_fat *f)
{
    if (!f)
        return;
    free(f->table);
    free(f->label);
    free(f);
}

void guestfs_fat_id(const struct guestfs_fat *f, char *uuid, size_t uuid_len, char *label,
                    size_t label_len)
{
    if (uuid && uuid_len)
        snprintf(uuid, uuid_len, "%04X-%04X", f->serial >> 16, f->serial & 0xffff);
    if (label && label_len)
        snprintf(label, label_len, "%s", f->volume_label);
}

/* ---- cluster chains ---- */

/* The FAT entry of CLUSTER (2 .. cluster_count+1), normalised: >= 0x0FFFFFF8 ends a chain,
 * 0x0FFFFFF7 is a bad cluster. */
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

static bool cluster_valid(const struct guestfs_fat *f, uint32_t c)
{
    return c >= 2 && c - 2 < f->cluster_count;
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
        rc = f->read(f->ctx, buf + done,
                     f->data_offset + (uint64_t)(ch.cluster - 2) * f->cluster_size, n);
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

/* A directory's entries as one buffer. CLUSTER 0 = the FAT12/16 root. */
static int read_dir(struct guestfs_fat *f, uint32_t cluster, const char *path, uint8_t **data,
                    size_t *len)
{
    if (cluster == 0 && f->type != FAT32) {
        size_t n = (size_t)f->root_entries * 32;
        uint8_t *buf = malloc(n);
        if (!buf)
            return vs_error(-ENOMEM, "out of memory");
        int rc = f->read(f->ctx, buf, f->root_offset, n);
        if (rc < 0) {
            free(buf);
            return vs_error_prefix(rc, "%s: reading the root directory", f->label);
        }
        *data = buf;
        *len = n;
        return 0;
    }
    if (cluster == 0)
        cluster = f->root_cluster;
    /* count the chain first: a directory has no size field */
    uint64_t bytes = 0;
    struct chain ch;
    int rc = chain_start(&ch, f, cluster, path);
    while (rc == 0 && ch.cluster < 0x0ffffff8) {
        rc = chain_check(&ch, bytes);
        bytes += f->cluster_size;
        if (rc == 0 && bytes > FAT_MAX_DIR)
            rc = vs_error(-EFBIG, "%s: %s: directory larger than 65536 entries", f->label, path);
        chain_next(&ch);
    }
    chain_end(&ch);
    if (rc < 0)
        return rc;
    return read_chain(f, cluster, bytes, path, data, len);
}

/* ---- directory entries ---- */

struct fat_entry {
    char name[1024]; /* UTF-8: the long name when valid, else the 8.3 name */
    char short_name[13];
    uint8_t attr;
    uint32_t cluster;
    uint32_t size;
    int64_t mtime;
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
        uint8_t *buf;
        size_t len;
        int rc = read_dir(f, out->cluster, path, &buf, &len);
        if (rc < 0)
            return rc;
        struct find_ctx c = {.name = p, .name_len = (size_t)(end - p)};
        rc = walk_dir(f, buf, len, find_cb, &c);
        free(buf);
        if (rc == 0)
            return vs_error(-ENOENT, "%s: %s: no such file or directory", f->label, path);
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
    uint8_t *buf;
    size_t len;
    rc = read_dir(f, e.cluster, path, &buf, &len);
    if (rc < 0)
        return rc;
    struct list_ctx c = {0};
    walk_dir(f, buf, len, list_cb, &c);
    free(buf);
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
        rc = f->read(f->ctx, buf, f->data_offset + (uint64_t)(ch.cluster - 2) * f->cluster_size, n);
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
