/*
 * tests/unit/test-guestfs.c — the partition-table and boot-config parsers on handcrafted and
 * hostile inputs: EBR loops and links outside the extended partition, GPT with a corrupt primary
 * header (backup used) and corrupt entry CRCs, grub.cfg quoting, variables, submenus, defaults,
 * grubenv saved_entry and syntax errors that must name file and line.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "harness.h"
#include "vessel/guestfs.h"
#include "vessel/util.h"

#define DISK (8u << 20)

static int buf_read(void *ctx, void *buf, uint64_t off, size_t len)
{
    if (off > DISK || len > DISK - off)
        return -EIO;
    memcpy(buf, (uint8_t *)ctx + off, len);
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static void mbr_entry(uint8_t *sec, int i, uint8_t type, uint32_t start, uint32_t count)
{
    uint8_t *e = sec + 446 + 16 * i;
    e[4] = type;
    put32(e + 8, start);
    put32(e + 12, count);
    sec[510] = 0x55;
    sec[511] = 0xaa;
}

static void quiet_warn(const char *msg)
{
    (void)msg;
}

TEST(mbr_primary_and_logical)
{
    uint8_t *d = calloc(1, DISK);
    mbr_entry(d, 0, 0x83, 2048, 4096);
    mbr_entry(d, 1, 0x05, 8192, 8192);
    /* EBR 1 at 8192: logical at +63, link to +4096 */
    mbr_entry(d + 8192 * 512, 0, 0x83, 63, 1000);
    mbr_entry(d + 8192 * 512, 1, 0x05, 4096, 4000);
    mbr_entry(d + (8192 + 4096) * 512, 0, 0x82, 63, 2000);
    struct guestfs_table t;
    CHECK_OK(guestfs_parts_parse(buf_read, d, DISK, "t", &t));
    CHECK(t.scheme == GUESTFS_SCHEME_MBR);
    CHECK(t.count == 4);
    CHECK(guestfs_table_find(&t, 5) && guestfs_table_find(&t, 5)->start == (8192 + 63) * 512ull);
    CHECK(guestfs_table_find(&t, 6) && guestfs_table_find(&t, 6)->mbr_type == 0x82);
    guestfs_table_free(&t);
    free(d);
}

TEST(mbr_ebr_loop_is_refused)
{
    uint8_t *d = calloc(1, DISK);
    mbr_entry(d, 0, 0x0f, 2048, 8192);
    mbr_entry(d + 2048 * 512, 0, 0x83, 63, 100);
    mbr_entry(d + 2048 * 512, 1, 0x05, 1024, 100);
    mbr_entry(d + 3072 * 512, 0, 0x83, 63, 100);
    mbr_entry(d + 3072 * 512, 1, 0x05, 0 + 1024, 100); /* links to itself */
    struct guestfs_table t;
    int rc = guestfs_parts_parse(buf_read, d, DISK, "loop.img", &t);
    CHECK(rc == -ELOOP);
    CHECK(strstr(vs_error_message(), "loop.img") != NULL);
    /* a link outside the extended partition */
    mbr_entry(d + 3072 * 512, 1, 0x05, 9000, 100);
    rc = guestfs_parts_parse(buf_read, d, DISK, "out.img", &t);
    CHECK(rc == -EINVAL);
    free(d);
}

TEST(mbr_hostile_entries_are_ignored_or_whole)
{
    vs_warn_set_handler(quiet_warn);
    uint8_t *d = calloc(1, DISK);
    mbr_entry(d, 0, 0x83, 0xfffffff0u, 0xffffffffu); /* past the end */
    mbr_entry(d, 1, 0x83, 2048, 100);
    struct guestfs_table t;
    CHECK_OK(guestfs_parts_parse(buf_read, d, DISK, "t", &t));
    CHECK(t.count == 1 && t.parts[0].number == 2);
    guestfs_table_free(&t);
    /* bad status byte: not a table at all, the whole disk */
    d[446] = 0x12;
    d[446 + 16] = 0x12;
    CHECK_OK(guestfs_parts_parse(buf_read, d, DISK, "t", &t));
    CHECK(t.scheme == GUESTFS_SCHEME_NONE && t.count == 1 && t.parts[0].size == DISK);
    guestfs_table_free(&t);
    /* tiny disk */
    CHECK_OK(guestfs_parts_parse(buf_read, d, 100, "t", &t));
    CHECK(t.scheme == GUESTFS_SCHEME_NONE);
    guestfs_table_free(&t);
    free(d);
}

static void gpt_header(uint8_t *d, uint64_t lba, uint64_t alt, uint64_t entries_lba, uint32_t nent)
{
    uint8_t *h = d + lba * 512;
    memset(h, 0, 512);
    memcpy(h, "EFI PART", 8);
    put32(h + 8, 0x10000);
    put32(h + 12, 92);
    put64(h + 24, lba);
    put64(h + 32, alt);
    put64(h + 40, 34);
    put64(h + 48, DISK / 512 - 34);
    put64(h + 72, entries_lba);
    put32(h + 80, nent);
    put32(h + 84, 128);
    put32(h + 88, nent > 128 ? 0 : (uint32_t)crc32(0, d + entries_lba * 512, nent * 128));
    put32(h + 16, (uint32_t)crc32(0, h, 92));
}

static uint8_t *gpt_disk(void)
{
    uint8_t *d = calloc(1, DISK);
    mbr_entry(d, 0, 0xee, 1, DISK / 512 - 1);
    uint8_t *e = d + 2 * 512;
    for (int i = 0; i < 16; i++)
        e[i] = (uint8_t)(0xa0 + i); /* type */
    e[16] = 1;
    put64(e + 32, 2048);
    put64(e + 40, 4095);
    const char *name = "root";
    for (int i = 0; name[i]; i++)
        e[56 + 2 * i] = (uint8_t)name[i];
    memcpy(d + (DISK / 512 - 33) * 512, e, 128 * 128); /* the backup entry array */
    gpt_header(d, 1, DISK / 512 - 1, 2, 128);
    gpt_header(d, DISK / 512 - 1, 1, DISK / 512 - 33, 128);
    return d;
}

TEST(gpt_primary_backup_and_crc)
{
    vs_warn_set_handler(quiet_warn);
    uint8_t *d = gpt_disk();
    struct guestfs_table t;
    CHECK_OK(guestfs_parts_parse(buf_read, d, DISK, "g", &t));
    CHECK(t.scheme == GUESTFS_SCHEME_GPT && !t.gpt_used_backup);
    CHECK(t.count == 1 && t.parts[0].start == 2048 * 512ull && t.parts[0].size == 2048 * 512ull);
    CHECK(!strcmp(t.parts[0].name, "root"));
    CHECK(!strcmp(t.parts[0].type, "A3A2A1A0-A5A4-A7A6-A8A9-AAABACADAEAF"));
    guestfs_table_free(&t);
    d[512 + 40] ^= 1; /* corrupt the primary header */
    CHECK_OK(guestfs_parts_parse(buf_read, d, DISK, "g", &t));
    CHECK(t.gpt_used_backup && t.count == 1);
    guestfs_table_free(&t);
    d[(DISK / 512 - 33) * 512 + 40] ^= 1; /* and the backup's entries */
    int rc = guestfs_parts_parse(buf_read, d, DISK, "g.img", &t);
    CHECK(rc == -EINVAL && strstr(vs_error_message(), "g.img") != NULL);
    free(d);
    /* absurd entry counts are refused before allocating */
    d = gpt_disk();
    gpt_header(d, 1, DISK / 512 - 1, 2, 0x7fffffff);
    gpt_header(d, DISK / 512 - 1, 1, DISK / 512 - 33, 0x7fffffff);
    rc = guestfs_parts_parse(buf_read, d, DISK, "g", &t);
    CHECK(rc == -EINVAL);
    free(d);
}

static struct guestfs_bootcfg *parse(enum guestfs_boot_kind kind, const char *text, const char *env)
{
    struct guestfs_bootcfg *cfg = NULL;
    int rc = guestfs_bootcfg_parse(kind, text, strlen(text), "grub.cfg", env, env ? strlen(env) : 0,
                                   &cfg);
    if (rc < 0)
        fprintf(stderr, "  parse: %s\n", vs_error_message());
    return cfg;
}

static const struct guestfs_boot_entry *chosen(struct guestfs_bootcfg *cfg, const char *name)
{
    size_t i;
    if (!cfg || guestfs_bootcfg_choose(cfg, name, &i) < 0)
        return NULL;
    return &cfg->entries[i];
}

TEST(grub2_msdos1_and_variables)
{
    struct guestfs_bootcfg *cfg = parse(GUESTFS_BOOT_GRUB2,
                                        "set root='(hd0,msdos1)'\nset vt=vt.handoff=7\n"
                                        "menuentry 'Ubuntu' --class ubuntu {\n"
                                        "  linux /vmlinuz root=/dev/sda2 ro \"quiet  splash\" $vt\n"
                                        "  initrd ($root)/initrd.img\n}\n",
                                        NULL);
    const struct guestfs_boot_entry *e = chosen(cfg, NULL);
    CHECK(e && e->part == 1 && !strcmp(e->kernel, "/vmlinuz"));
    CHECK(e && !strcmp(e->cmdline, "root=/dev/sda2 ro quiet  splash vt.handoff=7"));
    CHECK(e && e->initrd && !strcmp(e->initrd, "/initrd.img"));
    guestfs_bootcfg_free(cfg);
}

TEST(grub2_defaults_submenu_saved_entry)
{
    const char *text = "set default=\"1>1\"\n"
                       "menuentry 'A' { linux /a }\n"
                       "submenu 'Old' {\n"
                       "  menuentry 'B' { set root=(hd0,gpt2); linux16 /b x=1; initrd16 /ib }\n"
                       "  menuentry 'C' --id c-id { linuxefi (hd0,3)/c }\n"
                       "}\n";
    struct guestfs_bootcfg *cfg = parse(GUESTFS_BOOT_GRUB2, text, NULL);
    const struct guestfs_boot_entry *e = chosen(cfg, NULL);
    CHECK(e && !strcmp(e->title, "Old>C") && e->part == 3 && !strcmp(e->kernel, "/c"));
    e = chosen(cfg, "Old>B");
    CHECK(e && e->part == 2 && !strcmp(e->cmdline, "x=1"));
    CHECK(chosen(cfg, "c-id") == chosen(cfg, "1>1"));
    CHECK(chosen(cfg, "nope") == NULL);
    guestfs_bootcfg_free(cfg);
    /* saved_entry from grubenv */
    cfg = parse(GUESTFS_BOOT_GRUB2,
                "load_env\nset default=\"${saved_entry}\"\nmenuentry A { linux /a }\n"
                "menuentry 'B b' { linux /b }\n",
                "# GRUB Environment Block\nsaved_entry=B b\n######\n");
    e = chosen(cfg, NULL);
    CHECK(e && !strcmp(e->kernel, "/b"));
    guestfs_bootcfg_free(cfg);
    /* search --fs-uuid */
    cfg = parse(GUESTFS_BOOT_GRUB2,
                "menuentry A {\n search --no-floppy --fs-uuid --set=root abcd-1234\n"
                " linux /vmlinuz\n}\n",
                NULL);
    e = chosen(cfg, NULL);
    CHECK(e && e->root_uuid && !strcmp(e->root_uuid, "abcd-1234"));
    guestfs_bootcfg_free(cfg);
}

static void expect_error(enum guestfs_boot_kind kind, const char *text, const char *where)
{
    struct guestfs_bootcfg *cfg = NULL;
    int rc = guestfs_bootcfg_parse(kind, text, strlen(text), "grub.cfg", NULL, 0, &cfg);
    CHECK(rc < 0 && cfg == NULL);
    if (rc < 0 && !strstr(vs_error_message(), where)) {
        fprintf(stderr, "  wanted '%s' in '%s'\n", where, vs_error_message());
        CHECK(!"error names file and line");
    }
}

TEST(bootcfg_errors_name_file_and_line)
{
    expect_error(GUESTFS_BOOT_GRUB2, "set a=1\nmenuentry 'x {\n linux /v\n}\n",
                 "grub.cfg line 2: unterminated");
    expect_error(GUESTFS_BOOT_GRUB2, "menuentry x {\n linux /v\n", "grub.cfg line 1:");
    expect_error(GUESTFS_BOOT_GRUB2, "\n\n}\n", "grub.cfg line 3:");
    expect_error(GUESTFS_BOOT_GRUB2, "menuentry x\n", "grub.cfg line 1:");
    expect_error(GUESTFS_BOOT_GRUB2, "menuentry x {\n linux\n}\n", "grub.cfg line 2:");
    expect_error(GUESTFS_BOOT_GRUB_LEGACY, "title a\nroot (hd0,x)\n", "grub.cfg line 2:");
    expect_error(GUESTFS_BOOT_GRUB_LEGACY, "default=abc\n", "grub.cfg line 1:");
    expect_error(GUESTFS_BOOT_EXTLINUX, "LABEL\n", "grub.cfg line 1:");
}

TEST(grub2_hostile_growth_is_bounded)
{
    /* doubling a variable must stop at the value limit, not eat memory */
    char text[4096] = "set a=xxxxxxxxxxxxxxxx\n";
    for (int i = 0; i < 40; i++)
        strcat(text, "set a=$a$a\n");
    struct guestfs_bootcfg *cfg = NULL;
    int rc = guestfs_bootcfg_parse(GUESTFS_BOOT_GRUB2, text, strlen(text), "g", NULL, 0, &cfg);
    CHECK(rc == -E2BIG);
    /* deep nesting */
    char deep[4096] = "";
    for (int i = 0; i < 100; i++)
        strcat(deep, "submenu s {\n");
    rc = guestfs_bootcfg_parse(GUESTFS_BOOT_GRUB2, deep, strlen(deep), "g", NULL, 0, &cfg);
    CHECK(rc == -EINVAL);
    /* NUL bytes and no trailing newline */
    const char nul[] = "menuentry a {\0 linux /k\n}";
    rc = guestfs_bootcfg_parse(GUESTFS_BOOT_GRUB2, nul, sizeof(nul) - 1, "g", NULL, 0, &cfg);
    if (rc == 0)
        guestfs_bootcfg_free(cfg);
}

TEST(legacy_and_extlinux)
{
    struct guestfs_bootcfg *cfg = parse(GUESTFS_BOOT_GRUB_LEGACY,
                                        "default 1\ntimeout 5\nhiddenmenu\n"
                                        "title One\n root (hd0,0)\n kernel /v1 ro\n"
                                        "title Two\n root (hd0,1)\n kernel /v2 ro quiet\n"
                                        " initrd /i2\n",
                                        NULL);
    const struct guestfs_boot_entry *e = chosen(cfg, NULL);
    CHECK(e && e->part == 2 && !strcmp(e->kernel, "/v2") && !strcmp(e->cmdline, "ro quiet"));
    CHECK(e && !strcmp(e->initrd, "/i2") && cfg->timeout == 5);
    e = chosen(cfg, "One");
    CHECK(e && e->part == 1 && !e->initrd);
    guestfs_bootcfg_free(cfg);
    cfg = parse(GUESTFS_BOOT_EXTLINUX,
                "DEFAULT linux\nLABEL rescue\n KERNEL vmlinuz-r\nLABEL linux\n"
                " MENU LABEL Linux\n LINUX ../vmlinuz\n APPEND root=/dev/vda1 initrd=/ird ro\n",
                NULL);
    e = chosen(cfg, NULL);
    CHECK(e && !strcmp(e->kernel, "../vmlinuz") && !strcmp(e->initrd, "/ird"));
    CHECK(e && !strcmp(e->cmdline, "root=/dev/vda1 ro") && !strcmp(e->title, "Linux"));
    guestfs_bootcfg_free(cfg);
}
