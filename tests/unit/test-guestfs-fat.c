/*
 * tests/unit/test-guestfs-fat.c — FAT on hand-built volumes in memory. Reading: a valid FAT12
 * volume (long names, a two-cluster file, a subdirectory, a deleted entry) reads back, and hostile
 * boot sectors, looping or out-of-range cluster chains, lying file sizes and broken long-name
 * checksums are refused with one message or degrade safely — never read out of bounds. Writing:
 * put/mkdir/rm through a write callback on the same volume, checked by reading back through the
 * reader and by looking at the raw entries (aliases, NT case flags, both FAT copies), plus the
 * failure cases a user meets: full volume, full root, dirty volume, bad names.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "vessel/guestfs.h"
#include "vessel/util.h"

#define SECTORS 64
static uint8_t vol[SECTORS * 512];

static int mem_read(void *ctx, void *buf, uint64_t offset, size_t len)
{
    (void)ctx;
    if (offset > sizeof(vol) || len > sizeof(vol) - offset)
        return -EIO;
    memcpy(buf, vol + offset, len);
    return 0;
}

static int mem_write(void *ctx, const void *buf, uint64_t offset, size_t len)
{
    (void)ctx;
    if (offset > sizeof(vol) || len > sizeof(vol) - offset)
        return -EIO;
    memcpy(vol + offset, buf, len);
    return 0;
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

/* FAT12 entry N = V in both FATs (sectors 1 and 2). */
static void fat12_set(unsigned n, unsigned v)
{
    for (int copy = 0; copy < 2; copy++) {
        uint8_t *t = vol + 512 * (1 + copy);
        size_t off = n + n / 2;
        if (n & 1) {
            t[off] = (uint8_t)((t[off] & 0x0F) | (v << 4));
            t[off + 1] = (uint8_t)(v >> 4);
        } else {
            t[off] = (uint8_t)v;
            t[off + 1] = (uint8_t)((t[off + 1] & 0xF0) | ((v >> 8) & 0x0F));
        }
    }
}

static void short_entry(uint8_t *d, const char name83[11], uint8_t attr, uint16_t cluster,
                        uint32_t size)
{
    memset(d, 0, 32);
    memcpy(d, name83, 11);
    d[11] = attr;
    put16(d + 26, cluster);
    put32(d + 28, size);
}

static uint8_t checksum(const uint8_t *n)
{
    uint8_t sum = 0;
    for (int i = 0; i < 11; i++)
        sum = (uint8_t)(((sum & 1) << 7) + (sum >> 1) + n[i]);
    return sum;
}

/* One long-name entry (a name of up to 13 ASCII characters) for the short entry that follows. */
static void lfn_entry(uint8_t *d, const char *name, uint8_t sum)
{
    static const int pos[13] = {1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30};
    memset(d, 0, 32);
    d[0] = 0x41;
    d[11] = 0x0F;
    d[13] = sum;
    size_t n = strlen(name);
    for (size_t i = 0; i < 13; i++)
        put16(d + pos[i], i < n ? (uint16_t)name[i] : i == n ? 0 : 0xFFFF);
}

/* 64 sectors: boot, FAT, FAT, root (16 entries), data from sector 4 = cluster 2, 1 sector each. */
static void build(void)
{
    memset(vol, 0, sizeof(vol));
    uint8_t *bs = vol;
    bs[0] = 0xEB;
    bs[1] = 0x3C;
    bs[2] = 0x90;
    put16(bs + 11, 512);
    bs[13] = 1;
    put16(bs + 14, 1);
    bs[16] = 2;
    put16(bs + 17, 16);
    put16(bs + 19, SECTORS);
    bs[21] = 0xF8;
    put16(bs + 22, 1);
    bs[38] = 0x29;
    put32(bs + 39, 0x1234ABCD);
    memcpy(bs + 43, "TESTVOL    ", 11);
    put16(bs + 510, 0xAA55);
    fat12_set(0, 0xFF8);
    fat12_set(1, 0xFFF);
    uint8_t *root = vol + 3 * 512;
    /* "hello world.txt" (long name) = HELLOW~1.TXT, 600 bytes in clusters 2 -> 3 */
    short_entry(root + 32, "HELLOW~1TXT", 0x20, 2, 600);
    lfn_entry(root, "hello wo.txt", checksum(root + 32));
    fat12_set(2, 3);
    fat12_set(3, 0xFFF);
    memset(vol + 4 * 512, 'a', 512);
    memset(vol + 5 * 512, 'b', 88);
    /* a deleted entry, then a directory SUB in cluster 4 holding FILE.BIN in cluster 5 */
    short_entry(root + 64, "GONE    TXT", 0x20, 6, 10);
    root[64] = 0xE5;
    short_entry(root + 96, "SUB        ", 0x10, 4, 0);
    fat12_set(4, 0xFFF);
    uint8_t *sub = vol + 6 * 512;
    short_entry(sub, ".          ", 0x10, 4, 0);
    short_entry(sub + 32, "..         ", 0x10, 0, 0);
    short_entry(sub + 64, "FILE    BIN", 0x20, 5, 3);
    fat12_set(5, 0xFFF);
    memcpy(vol + 7 * 512, "xyz", 3);
}

static int open_vol(struct guestfs_fat **fat)
{
    return guestfs_fat_open(mem_read, NULL, sizeof(vol), "mem.img:1", fat);
}

TEST(fat12_reads_names_files_and_dirs)
{
    build();
    struct guestfs_fat *fat;
    CHECK_OK(open_vol(&fat));
    struct guestfs_dirent *d;
    size_t n;
    CHECK_OK(guestfs_fat_list(fat, "/", &d, &n));
    CHECK(n == 2);
    CHECK(n >= 1 && !strcmp(d[0].name, "hello wo.txt") && d[0].size == 600);
    CHECK(n >= 2 && !strcmp(d[1].name, "SUB"));
    guestfs_dirents_free(d, n);
    char *data;
    size_t len;
    CHECK_OK(guestfs_fat_read_file(fat, "/HELLO WO.TXT", 1 << 20, &data, &len));
    CHECK(len == 600 && data[0] == 'a' && data[511] == 'a' && data[512] == 'b');
    free(data);
    CHECK_OK(guestfs_fat_read_file(fat, "/hellow~1.txt", 1 << 20, &data, &len));
    free(data);
    CHECK_OK(guestfs_fat_read_file(fat, "/sub/file.bin", 1 << 20, &data, &len));
    CHECK(len == 3 && !memcmp(data, "xyz", 3));
    free(data);
    CHECK(guestfs_fat_exists(fat, "/gone.txt") == 0);
    CHECK(guestfs_fat_exists(fat, "/sub/file.bin/x") == 0);
    CHECK(guestfs_fat_read_file(fat, "/hello wo.txt", 100, &data, &len) == -EFBIG);
    CHECK(guestfs_fat_read_file(fat, "/sub", 100, &data, &len) == -EISDIR);
    char uuid[16], label[16];
    guestfs_fat_id(fat, uuid, sizeof(uuid), label, sizeof(label));
    CHECK(!strcmp(uuid, "1234-ABCD") && !strcmp(label, "TESTVOL"));
    guestfs_fat_close(fat);
}

TEST(fat_hostile_boot_sectors_are_refused)
{
    static const struct {
        unsigned off, width;
        uint32_t value;
        const char *want;
    } cases[] = {
        {11, 2, 0, "bytes per sector"},
        {11, 2, 300, "bytes per sector"},
        {11, 2, 8192, "bytes per sector"},
        {13, 1, 0, "sectors per cluster"},
        {13, 1, 3, "sectors per cluster"},
        {14, 2, 0, "reserved sectors"},
        {16, 1, 0, "FAT count"},
        {16, 1, 200, "FAT count"},
        {22, 2, 0, "FAT size 0"},
        {19, 2, 60000, "doesn't fit"},
        {14, 2, 63, "fill the volume"},
        {17, 2, 0, "root directory entries"},
        {510, 2, 0, "55AA"},
        {0, 1, 0, "55AA"},
    };
    for (size_t i = 0; i < VS_ARRAY_SIZE(cases); i++) {
        build();
        if (cases[i].width == 1)
            vol[cases[i].off] = (uint8_t)cases[i].value;
        else
            put16(vol + cases[i].off, (uint16_t)cases[i].value);
        if (cases[i].off == 22)
            put32(vol + 36, 0); /* else the 32-bit FAT size (FAT32's field) is used */
        struct guestfs_fat *fat = NULL;
        int rc = open_vol(&fat);
        CHECK(rc == -EINVAL && fat == NULL);
        if (rc == 0)
            guestfs_fat_close(fat);
        if (!strstr(vs_error_message(), cases[i].want) || !strstr(vs_error_message(), "mem.img"))
            fprintf(stderr, "  case %zu: '%s' lacks '%s'\n", i, vs_error_message(), cases[i].want);
        CHECK(strstr(vs_error_message(), cases[i].want) != NULL);
    }
    /* a FAT too small for the clusters it must map: 64 sectors of 512 B with 1 FAT sector is
     * fine, but 4 KiB sectors can't fit; claim 16-bit total = 4000 sectors on a bigger window */
    build();
    put16(vol + 19, 4000);
    struct guestfs_fat_geometry g;
    CHECK(guestfs_fat_parse_boot(vol, 512, 4000 * 512, "big", &g) == -EINVAL);
    CHECK(strstr(vs_error_message(), "too small") != NULL);
    CHECK(guestfs_fat_parse_boot(vol, 100, sizeof(vol), "short", &g) == -EINVAL);
    build();
    CHECK_OK(guestfs_fat_parse_boot(vol, 512, sizeof(vol), "ok", &g));
    CHECK(g.type == 12 && g.cluster_count == 60);
}

TEST(fat_bad_chains_are_errors)
{
    struct guestfs_fat *fat;
    char *data;
    size_t len;
    /* a loop: 2 -> 3 -> 2, file claims 3 clusters */
    build();
    fat12_set(3, 2);
    put32(vol + 3 * 512 + 32 + 28, 1500);
    CHECK_OK(open_vol(&fat));
    CHECK(guestfs_fat_read_file(fat, "/hello wo.txt", 1 << 20, &data, &len) == -EIO);
    CHECK(strstr(vs_error_message(), "loops") && strstr(vs_error_message(), "hello wo.txt"));
    guestfs_fat_close(fat);
    /* a chain pointing past the last cluster */
    build();
    fat12_set(2, 0xF00);
    CHECK_OK(open_vol(&fat));
    CHECK(guestfs_fat_read_file(fat, "/hello wo.txt", 1 << 20, &data, &len) == -EIO);
    CHECK(strstr(vs_error_message(), "broken") != NULL);
    guestfs_fat_close(fat);
    /* a chain that ends before the size does */
    build();
    fat12_set(2, 0xFFF);
    CHECK_OK(open_vol(&fat));
    CHECK(guestfs_fat_read_file(fat, "/hello wo.txt", 1 << 20, &data, &len) == -EIO);
    CHECK(strstr(vs_error_message(), "ends") != NULL);
    guestfs_fat_close(fat);
    /* a size larger than the volume */
    build();
    put32(vol + 3 * 512 + 32 + 28, 0xFFFFFFF0);
    CHECK_OK(open_vol(&fat));
    CHECK(guestfs_fat_read_file(fat, "/hello wo.txt", (size_t)-1, &data, &len) == -EIO);
    guestfs_fat_close(fat);
    /* a directory whose chain loops on itself */
    build();
    fat12_set(4, 4);
    CHECK_OK(open_vol(&fat));
    CHECK(guestfs_fat_exists(fat, "/sub/file.bin") == -EIO);
    CHECK(strstr(vs_error_message(), "loops") != NULL);
    guestfs_fat_close(fat);
}

TEST(fat_long_name_with_bad_checksum_falls_back_to_8_3)
{
    build();
    vol[3 * 512 + 13] ^= 0x55;
    struct guestfs_fat *fat;
    CHECK_OK(open_vol(&fat));
    struct guestfs_dirent *d;
    size_t n;
    CHECK_OK(guestfs_fat_list(fat, "/", &d, &n));
    CHECK(n == 2 && !strcmp(d[0].name, "HELLOW~1.TXT"));
    guestfs_dirents_free(d, n);
    guestfs_fat_close(fat);
}

/* ---- writing ---- */

static int open_rw(struct guestfs_fat **fat)
{
    return guestfs_fat_open_rw(mem_read, mem_write, NULL, sizeof(vol), "mem.img:1", fat);
}

static bool file_is(struct guestfs_fat *fat, const char *path, const void *want, size_t want_len)
{
    char *data;
    size_t len;
    if (guestfs_fat_read_file(fat, path, 1 << 20, &data, &len) < 0) {
        fprintf(stderr, "  %s: %s\n", path, vs_error_message());
        return false;
    }
    bool same = len == want_len && !memcmp(data, want, len);
    free(data);
    return same;
}

/* The raw 8.3 entry named NAME11 in the root, or NULL. */
static const uint8_t *root_entry(const char *name11)
{
    for (int i = 0; i < 16; i++) {
        const uint8_t *d = vol + 3 * 512 + i * 32;
        if (!memcmp(d, name11, 11))
            return d;
    }
    return NULL;
}

static size_t count_entries(struct guestfs_fat *fat, const char *path)
{
    struct guestfs_dirent *d;
    size_t n;
    if (guestfs_fat_list(fat, path, &d, &n) < 0)
        return (size_t)-1;
    guestfs_dirents_free(d, n);
    return n;
}

TEST(fat_put_long_names_get_unique_aliases)
{
    build();
    struct guestfs_fat *fat;
    CHECK_OK(open_rw(&fat));
    CHECK_OK(guestfs_fat_write_file(fat, "/My Long Document.txt", "one", 3));
    CHECK_OK(guestfs_fat_write_file(fat, "/My Long Draft.txt", "two", 3));
    CHECK(file_is(fat, "/my long document.txt", "one", 3));
    CHECK(file_is(fat, "/My Long Draft.txt", "two", 3));
    /* the long names come back (the reader checks the LFN checksum), aliases are ~1 and ~2 */
    CHECK(root_entry("MYLONG~1TXT") && root_entry("MYLONG~2TXT"));
    CHECK(file_is(fat, "/MYLONG~1.TXT", "one", 3));
    CHECK(file_is(fat, "/mylong~2.txt", "two", 3));
    /* a valid 8.3 name in lower case: no long name, NT case flags instead */
    CHECK_OK(guestfs_fat_write_file(fat, "/readme.md", "r", 1));
    const uint8_t *e = root_entry("README  MD ");
    CHECK(e && e[12] == 0x18 && e[-32 + 11] != 0x0F);
    CHECK_OK(guestfs_fat_write_file(fat, "/UPPER.TXT", "u", 1));
    e = root_entry("UPPER   TXT");
    CHECK(e && e[12] == 0 && e[-32 + 11] != 0x0F);
    struct guestfs_dirent *d;
    size_t n;
    CHECK_OK(guestfs_fat_list(fat, "/", &d, &n));
    bool seen_readme = false, seen_doc = false;
    for (size_t i = 0; i < n; i++) {
        seen_readme |= !strcmp(d[i].name, "readme.md");
        seen_doc |= !strcmp(d[i].name, "My Long Document.txt") && d[i].size == 3;
    }
    CHECK(seen_readme && seen_doc);
    guestfs_dirents_free(d, n);
    /* both FAT copies agree */
    CHECK(!memcmp(vol + 512, vol + 1024, 512));
    /* names FAT can't hold */
    CHECK(guestfs_fat_write_file(fat, "/a:b", "x", 1) == -EINVAL);
    CHECK(strstr(vs_error_message(), "mem.img:1") && strstr(vs_error_message(), "/a:b"));
    CHECK(guestfs_fat_write_file(fat, "/trailing.", "x", 1) == -EINVAL);
    CHECK(guestfs_fat_write_file(fat, "/", "x", 1) == -EINVAL);
    CHECK(guestfs_fat_write_file(fat, "/nodir/x", "x", 1) == -ENOENT);
    CHECK(guestfs_fat_write_file(fat, "/hello wo.txt/x", "x", 1) == -ENOTDIR);
    guestfs_fat_close(fat);
    /* and a fresh open sees it all */
    CHECK_OK(guestfs_fat_open(mem_read, NULL, sizeof(vol), "mem.img:1", &fat));
    CHECK(file_is(fat, "/My Long Draft.txt", "two", 3));
    guestfs_fat_close(fat);
}

TEST(fat_put_replaces_and_frees_the_old_chain)
{
    build();
    struct guestfs_fat *fat;
    CHECK_OK(open_rw(&fat));
    uint64_t free0 = guestfs_fat_free_bytes(fat);
    CHECK(free0 == 56 * 512); /* 60 clusters, 4 used by build() */
    static uint8_t big[5000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    CHECK_OK(guestfs_fat_write_file(fat, "/hello wo.txt", big, sizeof(big)));
    CHECK(file_is(fat, "/hello wo.txt", big, sizeof(big)));
    CHECK(guestfs_fat_free_bytes(fat) == free0 + 2 * 512 - 10 * 512);
    /* the replaced file keeps its names */
    CHECK(root_entry("HELLOW~1TXT") != NULL);
    CHECK_OK(guestfs_fat_write_file(fat, "/hello wo.txt", "tiny", 4));
    CHECK(file_is(fat, "/hello wo.txt", "tiny", 4));
    CHECK(guestfs_fat_free_bytes(fat) == free0 + 2 * 512 - 512);
    /* empty file: no cluster at all */
    CHECK_OK(guestfs_fat_write_file(fat, "/hello wo.txt", "", 0));
    CHECK(file_is(fat, "/hello wo.txt", "", 0));
    CHECK(guestfs_fat_free_bytes(fat) == free0 + 2 * 512);
    /* from an fd (a pipe: size unknown up front) */
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(write(p[1], big, 3000) == 3000);
    close(p[1]);
    CHECK_OK(guestfs_fat_write_from_fd(fat, "/sub/from pipe.bin", p[0]));
    close(p[0]);
    CHECK(file_is(fat, "/SUB/FROM PIPE.BIN", big, 3000));
    CHECK(guestfs_fat_write_file(fat, "/sub", "x", 1) == -EISDIR);
    guestfs_fat_close(fat);
}

TEST(fat_mkdir_grows_directories_and_rm_frees)
{
    build();
    struct guestfs_fat *fat;
    CHECK_OK(open_rw(&fat));
    uint64_t free0 = guestfs_fat_free_bytes(fat);
    CHECK_OK(guestfs_fat_mkdir(fat, "/New Folder"));
    CHECK(guestfs_fat_mkdir(fat, "/new folder") == -EEXIST);
    /* . and .. */
    CHECK(guestfs_fat_exists(fat, "/New Folder/.") == 1);
    CHECK(count_entries(fat, "/New Folder") == 0);
    /* 12 files with 2-entry names: 36 entries, a 512-byte cluster holds 16 */
    char path[64];
    for (int i = 0; i < 12; i++) {
        snprintf(path, sizeof(path), "/New Folder/file %02d.txt", i);
        CHECK_OK(guestfs_fat_write_file(fat, path, path, strlen(path)));
    }
    CHECK(count_entries(fat, "/New Folder") == 12);
    for (int i = 0; i < 12; i++) {
        snprintf(path, sizeof(path), "/New Folder/file %02d.txt", i);
        CHECK(file_is(fat, path, path, strlen(path)));
    }
    CHECK_OK(guestfs_fat_mkdir(fat, "/New Folder/deeper"));
    CHECK_OK(guestfs_fat_write_file(fat, "/New Folder/deeper/x", "x", 1));
    CHECK(guestfs_fat_remove(fat, "/New Folder") == -ENOTEMPTY);
    CHECK(strstr(vs_error_message(), "not empty") != NULL);
    CHECK(guestfs_fat_remove(fat, "/New Folder/deeper/missing") == -ENOENT);
    CHECK_OK(guestfs_fat_remove(fat, "/New Folder/deeper/x"));
    CHECK_OK(guestfs_fat_remove(fat, "/New Folder/deeper"));
    for (int i = 0; i < 12; i++) {
        snprintf(path, sizeof(path), "/New Folder/file %02d.txt", i);
        CHECK_OK(guestfs_fat_remove(fat, path));
        CHECK(guestfs_fat_exists(fat, path) == 0);
    }
    CHECK_OK(guestfs_fat_remove(fat, "/New Folder"));
    CHECK(guestfs_fat_exists(fat, "/New Folder") == 0);
    CHECK(guestfs_fat_free_bytes(fat) == free0);
    /* rm of the existing long-named file marks its LFN entry deleted too */
    CHECK_OK(guestfs_fat_remove(fat, "/hello wo.txt"));
    CHECK(vol[3 * 512] == 0xE5 && vol[3 * 512 + 32] == 0xE5);
    CHECK(guestfs_fat_free_bytes(fat) == free0 + 2 * 512);
    CHECK(guestfs_fat_remove(fat, "/") == -EINVAL);
    guestfs_fat_close(fat);
}

TEST(fat_full_volume_and_full_root_change_nothing)
{
    build();
    struct guestfs_fat *fat;
    CHECK_OK(open_rw(&fat));
    static uint8_t before[sizeof(vol)];
    memcpy(before, vol, sizeof(vol));
    static uint8_t big[60 * 512];
    memset(big, 'z', sizeof(big));
    CHECK(guestfs_fat_write_file(fat, "/too big.bin", big, sizeof(big)) == -ENOSPC);
    CHECK(strstr(vs_error_message(), "volume full") && strstr(vs_error_message(), "too big"));
    CHECK(!memcmp(before, vol, sizeof(vol)));
    /* unknown size (a pipe): data goes to free clusters, but the FAT and directories stay */
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(write(p[1], big, 57 * 512) == 57 * 512);
    close(p[1]);
    CHECK(guestfs_fat_write_from_fd(fat, "/too big.bin", p[0]) == -ENOSPC);
    close(p[0]);
    CHECK(!memcmp(before, vol, 4 * 512)); /* boot, both FATs, root */
    CHECK(guestfs_fat_free_bytes(fat) == 56 * 512);
    CHECK(guestfs_fat_exists(fat, "/too big.bin") == 0);
    /* exactly the free space fits */
    CHECK_OK(guestfs_fat_write_file(fat, "/fits.bin", big, 56 * 512));
    CHECK(guestfs_fat_free_bytes(fat) == 0);
    CHECK(guestfs_fat_mkdir(fat, "/nope") == -ENOSPC);
    CHECK_OK(guestfs_fat_remove(fat, "/fits.bin"));
    /* the fixed root holds 16 entries: 4 used (LFN+8.3, deleted, SUB) */
    char path[32];
    int made = 0, rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++) {
        snprintf(path, sizeof(path), "/F%d", i);
        rc = guestfs_fat_write_file(fat, path, "x", 1);
        made += rc == 0;
    }
    CHECK(rc == -ENOSPC && strstr(vs_error_message(), "root directory full"));
    CHECK(made == 13); /* 12 free slots plus the deleted one */
    guestfs_fat_close(fat);
}

TEST(fat_write_refusals)
{
    struct guestfs_fat *fat;
    build();
    CHECK_OK(open_vol(&fat));
    CHECK(guestfs_fat_write_file(fat, "/x", "x", 1) == -EROFS);
    CHECK(guestfs_fat_mkdir(fat, "/x") == -EROFS);
    CHECK(guestfs_fat_remove(fat, "/sub/file.bin") == -EROFS);
    guestfs_fat_close(fat);
    /* the boot sector's dirty flag (with an extended boot signature) */
    vol[37] = 1;
    CHECK(open_rw(&fat) == -EUCLEAN);
    CHECK(strstr(vs_error_message(), "dirty") && strstr(vs_error_message(), "mem.img:1"));
    CHECK_OK(open_vol(&fat)); /* reading is still fine */
    guestfs_fat_close(fat);
    /* a hostile directory chain: rm and put report, never crash */
    build();
    fat12_set(4, 4);
    CHECK_OK(open_rw(&fat));
    CHECK(guestfs_fat_remove(fat, "/sub") == -EIO);
    CHECK(guestfs_fat_write_file(fat, "/sub/new", "x", 1) == -EIO);
    guestfs_fat_close(fat);
}
