/*
 * tests/unit/test-guestfs-fat.c — the FAT reader on hand-built volumes in memory: a valid FAT12
 * volume (long names, a two-cluster file, a subdirectory, a deleted entry) reads back, and hostile
 * boot sectors, looping or out-of-range cluster chains, lying file sizes and broken long-name
 * checksums are refused with one message or degrade safely — never read out of bounds.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
