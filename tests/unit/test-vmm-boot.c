/*
 * tests/unit/test-vmm-boot.c — the VMM's parsers of untrusted input, without KVM: ELF/PVH images
 * (valid, and each header field broken), bzImage payload decompression for every supported
 * format, ACPI tables (every checksum, the XSDT → FADT → DSDT walk, one MADT LAPIC per vCPU) and
 * the virtqueue parser facing hostile rings.
 */
#include <bzlib.h>
#include <errno.h>
#include <lz4.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "harness.h"
#include "vmm/boot.h"
#include "vmm/virtqueue.h"

/* ---- ELF ------------------------------------------------------------------------------------- */

/* A minimal ELF64: one PT_LOAD of 16 bytes at 1 MiB, one PT_NOTE with Xen's PHYS32_ENTRY. */
static size_t make_elf(uint8_t *b, size_t cap, uint32_t entry)
{
    memset(b, 0, cap);
    memcpy(b,
           "\x7f"
           "ELF",
           4);
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    uint16_t v16;
    uint64_t v64;
    v16 = 2, memcpy(b + 16, &v16, 2);
    v16 = 62, memcpy(b + 18, &v16, 2);
    v64 = 64, memcpy(b + 32, &v64, 8); /* e_phoff */
    v16 = 56, memcpy(b + 54, &v16, 2); /* e_phentsize */
    v16 = 2, memcpy(b + 56, &v16, 2);  /* e_phnum */
    uint8_t *ph = b + 64;
    uint32_t t = 1;
    memcpy(ph, &t, 4);
    v64 = 256, memcpy(ph + 8, &v64, 8);       /* p_offset */
    v64 = 0x100000, memcpy(ph + 24, &v64, 8); /* p_paddr */
    v64 = 16, memcpy(ph + 32, &v64, 8);       /* p_filesz */
    v64 = 32, memcpy(ph + 40, &v64, 8);       /* p_memsz */
    ph += 56;
    t = 4;
    memcpy(ph, &t, 4);
    v64 = 272, memcpy(ph + 8, &v64, 8);
    v64 = 20, memcpy(ph + 32, &v64, 8);
    uint32_t note[5] = {4, 4, XEN_ELFNOTE_PHYS32_ENTRY, 0, entry};
    memcpy(note + 3, "Xen", 4);
    memcpy(b + 272, note, sizeof(note));
    return 292;
}

TEST(elf_valid_pvh)
{
    uint8_t b[512];
    size_t len = make_elf(b, sizeof(b), 0x100004);
    struct elf_image img;
    CHECK_OK(elf_parse(b, len, "k", &img));
    CHECK(img.has_pvh && img.entry == 0x100004);
    CHECK(img.count == 1 && img.segments[0].paddr == 0x100000 && img.segments[0].memsz == 32);
}

TEST(elf_hostile_headers)
{
    uint8_t b[512];
    size_t len = make_elf(b, sizeof(b), 0x100000);
    struct elf_image img;
    uint8_t c[512];
    /* each mutation must be refused with a message, never read out of bounds */
    struct {
        size_t off;
        uint8_t val;
    } muts[] = {{4, 3},         {5, 2},          {18, 40},
                {54, 55},       {32, 0xf0},      {56 + 0, 0xff},
                {64 + 8, 0xff}, {64 + 33, 0x10}, {64 + 56 + 33, 0x10}};
    for (size_t i = 0; i < VS_ARRAY_SIZE(muts); i++) {
        memcpy(c, b, sizeof(b));
        c[muts[i].off] = muts[i].val;
        int rc = elf_parse(c, len, "bad.elf", &img);
        CHECK(rc < 0);
        CHECK(strstr(vs_error_message(), "bad.elf") != NULL);
    }
    CHECK(elf_parse(b, 40, "short", &img) < 0); /* truncated */
    /* a note whose descsz runs past its segment */
    memcpy(c, b, sizeof(b));
    uint32_t huge = 0x7ffffff0;
    memcpy(c + 276, &huge, 4);
    CHECK(elf_parse(c, len, "note", &img) < 0);
    /* every truncation of a valid image either parses or fails cleanly */
    for (size_t l = 0; l < len; l++)
        (void)elf_parse(b, l, "t", &img);
}

TEST(elf_without_note)
{
    uint8_t b[512];
    size_t len = make_elf(b, sizeof(b), 0x100000);
    memcpy(b + 284, "Lin", 4); /* note name no longer "Xen" */
    struct elf_image img;
    CHECK_OK(elf_parse(b, len, "k", &img));
    CHECK(!img.has_pvh && img.entry == 0);
}

/* A bare vmlinux (an ELF64 without the PVH note) goes through the zero page: segments at their
 * physical addresses, a made-up 2.15 setup header, command line, E820, entered at e_entry. */
TEST(vmlinux_zero_page)
{
    uint8_t b[512];
    size_t len = make_elf(b, sizeof(b), 0x100000);
    memcpy(b + 284, "Lin", 4); /* no PVH note */
    for (int i = 0; i < 16; i++)
        b[256 + i] = (uint8_t)(0xa0 + i); /* the segment's bytes */
    uint64_t e_entry = 0x100008;
    memcpy(b + 24, &e_entry, 8);
    static struct vmm_config cfg = {.cmdline = "console=ttyS0 vessel.test=1"};
    struct machine m;
    memset(&m, 0, sizeof(m));
    m.config = &cfg;
    uint8_t *ram = calloc(1, 32 * MIB);
    CHECK(ram != NULL);
    m.mem.regions[0] = (struct mem_region){0, 32 * MIB, ram};
    m.mem.count = 1;
    m.mem.ram_size = 32 * MIB;
    m.rsdp = 0xe0000;
    /* 16 bytes of data must land over the marks; the 16 of .bss after them are left to the
     * fresh RAM a new machine has (the loader must not fault in pages the guest may never
     * touch), so their marks stay, as does everything past p_memsz. */
    memset(ram + 0x100000, 0xee, 64);
    CHECK_OK(vmlinux_load(&m, b, len, NULL, "vmlinux", NULL));
    CHECK(m.boot.is_64bit && m.boot.entry == 0x100008 && m.boot.boot_param == LAYOUT_ZERO_PAGE);
    CHECK(memcmp(ram + 0x100000, b + 256, 16) == 0);
    for (int i = 16; i < 64; i++)
        CHECK(ram[0x100000 + i] == 0xee);
    const uint8_t *zp = ram + LAYOUT_ZERO_PAGE;
    uint16_t flag, version;
    uint32_t cmd_ptr;
    uint64_t rsdp;
    memcpy(&flag, zp + 0x1fe, 2);
    memcpy(&version, zp + 0x206, 2);
    memcpy(&cmd_ptr, zp + 0x228, 4);
    memcpy(&rsdp, zp + 0x70, 8);
    CHECK(flag == 0xaa55 && memcmp(zp + 0x202, "HdrS", 4) == 0 && version == 0x020f);
    CHECK(zp[0x210] == 0xff && (zp[0x211] & 1) && rsdp == 0xe0000);
    CHECK(cmd_ptr == LAYOUT_CMDLINE && strcmp((char *)ram + cmd_ptr, cfg.cmdline) == 0);
    CHECK(zp[0x1e8] >= 2); /* E820: low RAM, reserved areas, RAM above 1 MiB */
    uint64_t last_addr, last_size;
    uint32_t last_type;
    const uint8_t *e = zp + 0x2d0 + (zp[0x1e8] - 1) * 20;
    memcpy(&last_addr, e, 8);
    memcpy(&last_size, e + 8, 8);
    memcpy(&last_type, e + 16, 4);
    CHECK(last_addr == LAYOUT_HIGH && last_addr + last_size == 32 * MIB && last_type == 1);

    /* an entry that is a virtual address (not a vmlinux) or a segment outside RAM is refused */
    e_entry = 0xffffffff81000000ull;
    memcpy(b + 24, &e_entry, 8);
    CHECK(vmlinux_load(&m, b, len, NULL, "virt.elf", NULL) == -ENOEXEC);
    CHECK(strstr(vs_error_message(), "virt.elf") && strstr(vs_error_message(), "entry"));
    e_entry = 0x100000;
    memcpy(b + 24, &e_entry, 8);
    uint64_t far = 64 * MIB;
    memcpy(b + 64 + 24, &far, 8);
    CHECK(vmlinux_load(&m, b, len, NULL, "far.elf", NULL) == -ENOEXEC);
    CHECK(strstr(vs_error_message(), "outside guest RAM") != NULL);
    free(ram);
}

/* ---- bzImage payloads ------------------------------------------------------------------------ */

static uint8_t *test_payload(size_t *len)
{
    *len = 3 * 1024 * 1024 + 123;
    uint8_t *p = malloc(*len);
    for (size_t i = 0; i < *len; i++)
        p[i] = (uint8_t)((i * 2654435761u) >> 13) & (i % 7 ? 0xff : 0);
    return p;
}

static void append_size(uint8_t *out, size_t *olen, size_t raw)
{
    uint32_t s = (uint32_t)raw;
    memcpy(out + *olen, &s, 4);
    *olen += 4;
}

static void check_round_trip(const uint8_t *comp, size_t clen, const uint8_t *raw, size_t rlen,
                             const char *want)
{
    uint8_t *out;
    size_t olen;
    const char *fmt = NULL;
    CHECK_OK(bzimage_decompress(comp, clen, &out, &olen, &fmt));
    CHECK(fmt && strcmp(fmt, want) == 0);
    CHECK(olen == rlen && memcmp(out, raw, rlen) == 0);
    free(out);
    /* truncated input must fail or yield less, never crash */
    if (bzimage_decompress(comp, clen / 2, &out, &olen, &fmt) == 0) {
        CHECK(olen <= rlen);
        free(out);
    }
}

TEST(decompress_all_formats)
{
    size_t rlen;
    uint8_t *raw = test_payload(&rlen);
    size_t cap = rlen * 2 + 65536;
    uint8_t *c = malloc(cap);
    size_t clen;

    /* gzip */
    z_stream z;
    memset(&z, 0, sizeof(z));
    CHECK(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    z.next_in = raw;
    z.avail_in = (uInt)rlen;
    z.next_out = c;
    z.avail_out = (uInt)cap;
    CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END);
    clen = z.total_out;
    deflateEnd(&z);
    append_size(c, &clen, rlen);
    check_round_trip(c, clen, raw, rlen, "gzip");

    /* zstd */
    clen = ZSTD_compress(c, cap, raw, rlen, 3);
    CHECK(!ZSTD_isError(clen));
    append_size(c, &clen, rlen);
    check_round_trip(c, clen, raw, rlen, "zstd");

    /* xz */
    clen = 0;
    CHECK(lzma_easy_buffer_encode(1, LZMA_CHECK_CRC32, NULL, raw, rlen, c, &clen, cap) == LZMA_OK);
    append_size(c, &clen, rlen);
    check_round_trip(c, clen, raw, rlen, "xz");

    /* lzma (alone) */
    lzma_options_lzma opt;
    lzma_lzma_preset(&opt, 1);
    lzma_stream s = LZMA_STREAM_INIT;
    CHECK(lzma_alone_encoder(&s, &opt) == LZMA_OK);
    s.next_in = raw;
    s.avail_in = rlen;
    s.next_out = c;
    s.avail_out = cap;
    CHECK(lzma_code(&s, LZMA_FINISH) == LZMA_STREAM_END);
    clen = s.total_out;
    lzma_end(&s);
    append_size(c, &clen, rlen);
    check_round_trip(c, clen, raw, rlen, "lzma");

    /* bzip2 */
    unsigned bl = (unsigned)cap;
    CHECK(BZ2_bzBuffToBuffCompress((char *)c, &bl, (char *)raw, (unsigned)rlen, 1, 0, 0) == BZ_OK);
    clen = bl;
    append_size(c, &clen, rlen);
    check_round_trip(c, clen, raw, rlen, "bzip2");

    /* lz4 legacy frame: magic, then [size][block] chunks of up to 8 MiB */
    uint32_t magic = 0x184c2102;
    memcpy(c, &magic, 4);
    clen = 4;
    int n = LZ4_compress_default((const char *)raw, (char *)c + 8, (int)rlen, (int)(cap - 16));
    CHECK(n > 0);
    uint32_t n32 = (uint32_t)n;
    memcpy(c + 4, &n32, 4);
    clen = 8 + (size_t)n;
    append_size(c, &clen, rlen);
    check_round_trip(c, clen, raw, rlen, "lz4");

    /* unknown magic */
    uint8_t *out;
    size_t olen;
    const char *fmt;
    memset(c, 0x42, 64);
    CHECK(bzimage_decompress(c, 64, &out, &olen, &fmt) == -ENOTSUP);
    free(c);
    free(raw);
}

TEST(bzimage_probe_header)
{
    uint8_t b[0x400] = {0};
    CHECK(!bzimage_probe(b, sizeof(b)));
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    memcpy(b + 0x202, "HdrS", 4);
    CHECK(bzimage_probe(b, sizeof(b)));
    CHECK(!bzimage_probe(b, 0x200));
}

/* ---- ACPI ------------------------------------------------------------------------------------ */

static const uint8_t *table_at(const uint8_t *buf, uint64_t base, uint64_t addr)
{
    return buf + (addr - base);
}

static bool table_ok(const uint8_t *t, const char *sig)
{
    uint32_t len;
    memcpy(&len, t + 4, 4);
    return memcmp(t, sig, 4) == 0 && acpi_checksum(t, len) == 0;
}

TEST(acpi_tables)
{
    for (unsigned cpus = 1; cpus <= 64; cpus *= 4) {
        static uint8_t buf[0x20000];
        uint64_t base = 0xe0000, rsdp;
        size_t used;
        CHECK_OK(acpi_build_tables(buf, sizeof(buf), base, cpus, &rsdp, &used));
        const uint8_t *r = table_at(buf, base, rsdp);
        CHECK(memcmp(r, "RSD PTR ", 8) == 0);
        CHECK(acpi_checksum(r, 20) == 0 && acpi_checksum(r, 36) == 0);
        uint64_t xsdt_addr;
        memcpy(&xsdt_addr, r + 24, 8);
        const uint8_t *x = table_at(buf, base, xsdt_addr);
        CHECK(table_ok(x, "XSDT"));
        uint64_t fadt_addr, madt_addr;
        memcpy(&fadt_addr, x + 36, 8);
        memcpy(&madt_addr, x + 44, 8);
        const uint8_t *f = table_at(buf, base, fadt_addr);
        CHECK(table_ok(f, "FACP"));
        uint64_t dsdt_addr;
        memcpy(&dsdt_addr, f + 140, 8);
        const uint8_t *d = table_at(buf, base, dsdt_addr);
        CHECK(table_ok(d, "DSDT"));
        /* the AML names what the guest must find */
        uint32_t dlen;
        memcpy(&dlen, d + 4, 4);
        CHECK(memmem(d, dlen, "_S5_", 4) && memmem(d, dlen, "PCI0", 4) &&
              memmem(d, dlen, "COM1", 4) && memmem(d, dlen, "PWRB", 4));
        const uint8_t *m = table_at(buf, base, madt_addr);
        CHECK(table_ok(m, "APIC"));
        uint32_t mlen;
        memcpy(&mlen, m + 4, 4);
        unsigned lapics = 0;
        for (uint32_t o = 44; o + 2 <= mlen && m[o + 1] >= 2; o += m[o + 1])
            lapics += m[o] == 0;
        CHECK(lapics == cpus);
        uint32_t pm1a;
        memcpy(&pm1a, f + 64, 4);
        CHECK(pm1a == PORT_PM_CNT);
    }
    uint8_t small[64];
    uint64_t rsdp;
    CHECK(acpi_build_tables(small, sizeof(small), 0, 1, &rsdp, NULL) == -ENOSPC);
}

/* ---- virtqueue ------------------------------------------------------------------------------- */

struct fake {
    uint8_t ram[65536];
    struct guest_mem mem;
    struct virtq q;
    struct virtq_chain chain;
};

static void fake_init(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    f->mem.regions[0] = (struct mem_region){0, sizeof(f->ram), f->ram};
    f->mem.count = 1;
    f->q =
        (struct virtq){.mem = &f->mem, .size = 8, .desc = 0x1000, .avail = 0x2000, .used = 0x3000};
    CHECK_OK(virtq_validate(&f->q));
    f->q.ready = true;
}

static void put_desc(struct fake *f, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    uint8_t *d = f->ram + 0x1000 + 16 * i;
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

static void offer(struct fake *f, uint16_t head)
{
    uint16_t idx;
    memcpy(&idx, f->ram + 0x2002, 2);
    memcpy(f->ram + 0x2004 + 2 * (idx % 8), &head, 2);
    idx++;
    memcpy(f->ram + 0x2002, &idx, 2);
}

TEST(virtqueue_good_chain)
{
    static struct fake f;
    fake_init(&f);
    put_desc(&f, 0, 0x4000, 16, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&f, 1, 0x5000, 512, VIRTQ_DESC_F_WRITE, 0);
    offer(&f, 0);
    CHECK(virtq_pop(&f.q, &f.chain) == 1);
    CHECK(f.chain.count == 2 && f.chain.readable == 16 && f.chain.writable == 512);
    CHECK(virtq_pop(&f.q, &f.chain) == 0);
    CHECK_OK(virtq_push(&f.q, 0, 513));
    uint16_t used_idx;
    memcpy(&used_idx, f.ram + 0x3002, 2);
    CHECK(used_idx == 1);
}

TEST(virtqueue_hostile)
{
    static struct fake f;
    /* loop */
    fake_init(&f);
    put_desc(&f, 0, 0x4000, 16, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&f, 1, 0x4000, 16, VIRTQ_DESC_F_NEXT, 0);
    offer(&f, 0);
    CHECK(virtq_pop(&f.q, &f.chain) < 0 && f.q.broken && strstr(f.q.error, "loops"));
    /* out of range buffer */
    fake_init(&f);
    put_desc(&f, 0, 0xfffff000, 4096, 0, 0);
    offer(&f, 0);
    CHECK(virtq_pop(&f.q, &f.chain) < 0 && strstr(f.q.error, "outside"));
    /* head beyond the queue */
    fake_init(&f);
    offer(&f, 9);
    CHECK(virtq_pop(&f.q, &f.chain) < 0);
    /* available index jumps past the queue size */
    fake_init(&f);
    uint16_t idx = 100;
    memcpy(f.ram + 0x2002, &idx, 2);
    CHECK(virtq_pop(&f.q, &f.chain) < 0);
    /* indirect table looping on itself, and a nested indirect */
    fake_init(&f);
    put_desc(&f, 0, 0x6000, 32, VIRTQ_DESC_F_INDIRECT, 0);
    uint8_t *t = f.ram + 0x6000;
    uint64_t a = 0x4000;
    uint32_t l = 8;
    uint16_t fl = VIRTQ_DESC_F_NEXT, nx = 1;
    memcpy(t, &a, 8), memcpy(t + 8, &l, 4), memcpy(t + 12, &fl, 2), memcpy(t + 14, &nx, 2);
    nx = 0;
    memcpy(t + 16, &a, 8), memcpy(t + 24, &l, 4), memcpy(t + 28, &fl, 2), memcpy(t + 30, &nx, 2);
    offer(&f, 0);
    CHECK(virtq_pop(&f.q, &f.chain) < 0);
    /* rings outside memory are refused at enable */
    fake_init(&f);
    f.q.used = sizeof(f.ram) - 8;
    CHECK(virtq_validate(&f.q) < 0);
}
