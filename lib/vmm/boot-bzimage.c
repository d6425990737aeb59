/*
 * lib/vmm/boot-bzimage.c — Linux bzImage and vmlinux: the PVH fast path, the vmlinux 64-bit
 * entry, else the 64-bit boot protocol.
 *
 * A bzImage's payload (setup header payload_offset/payload_length) is the compressed vmlinux
 * ELF. We decompress it here with the format's library — picked by magic — so the guest skips
 * its own decompressor (on an emulating KVM that decompressor is most of the boot). An ELF with
 * a PVH entry note boots through PVH; without one, the ELF's segments go to their physical
 * addresses and its startup_64 is entered in long mode with a zero page, exactly the state
 * Linux's decompressor leaves behind (the way Firecracker boots a vmlinux). When the payload
 * can't be decompressed, the protected-mode kernel is copied to its preferred address and entered
 * at +0x200, per Documentation/arch/x86/boot.rst. All three share one zero page: setup header,
 * E820, command line, initrd, RSDP.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "vmm/boot.h"

/* Output bound when the payload doesn't say its size. */
#define DECOMPRESS_MAX (512 * MIB)
#define XZ_MEMLIMIT    (128 * MIB) /* liblzma's own memory (the dictionary) */

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p)
{
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

bool bzimage_probe(const uint8_t *buf, size_t len)
{
    return len >= 0x300 && rd16(buf + 0x1fe) == 0xaa55 && memcmp(buf + 0x202, "HdrS", 4) == 0;
}

/* ---- decompression --------------------------------------------------------------------------- */

static int out_grow(uint8_t **out, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    if (need > DECOMPRESS_MAX)
        return vs_error(-EFBIG, "decompressed payload larger than %llu MiB",
                        (unsigned long long)(DECOMPRESS_MAX / MIB));
    size_t n = VS_MAX(need, *cap * 2);
    n = VS_MIN(n, (size_t)DECOMPRESS_MAX);
    uint8_t *p = realloc(*out, n);
    if (!p)
        return vs_error(-ENOMEM, "out of memory decompressing the payload");
    *out = p;
    *cap = n;
    return 0;
}

static int lz4_legacy(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len, size_t hint)
{
    size_t pos = 4, cap = 0, used = 0;
    const size_t chunk_max = 8 * MIB; /* legacy frames hold chunks of at most 8 MiB */
    int rc = out_grow(out, &cap, hint ? hint : 16 * MIB);
    while (rc == 0 && len - pos >= 4) {
        uint32_t csize = rd32(in + pos);
        if (csize == 0x184c2102) { /* another legacy frame follows */
            pos += 4;
            continue;
        }
        if (csize > len - pos - 4)
            break; /* the kernel's 4-byte size trailer, or garbage: end of stream */
        pos += 4;
        if ((rc = out_grow(out, &cap, used + chunk_max)) < 0)
            break;
        int n = LZ4_decompress_safe((const char *)in + pos, (char *)*out + used, (int)csize,
                                    (int)chunk_max);
        if (n < 0)
            return vs_error(-EINVAL, "lz4: corrupt chunk at payload offset %zu", pos);
        used += (size_t)n;
        pos += csize;
    }
    *out_len = used;
    return rc;
}

static int zstd_decode(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len, size_t hint)
{
    ZSTD_DStream *z = ZSTD_createDStream();
    if (!z)
        return vs_error(-ENOMEM, "zstd: out of memory");
    size_t cap = 0, used = 0;
    int rc = out_grow(out, &cap, hint ? hint : 16 * MIB);
    ZSTD_inBuffer ib = {in, len, 0};
    while (rc == 0) {
        if (used == cap && (rc = out_grow(out, &cap, cap + 16 * MIB)) < 0)
            break;
        ZSTD_outBuffer ob = {*out, cap, used};
        size_t r = ZSTD_decompressStream(z, &ob, &ib);
        used = ob.pos;
        if (ZSTD_isError(r)) {
            rc = vs_error(-EINVAL, "zstd: %s", ZSTD_getErrorName(r));
            break;
        }
        if (r == 0)
            break; /* frame complete; what follows is the size trailer */
        if (ib.pos == ib.size && ob.pos < ob.size) {
            rc = vs_error(-EINVAL, "zstd: truncated payload");
            break;
        }
    }
    ZSTD_freeDStream(z);
    *out_len = used;
    return rc;
}

static int xz_decode(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len, size_t hint,
                     bool alone)
{
    /* The stream's header names the dictionary the decoder allocates: a hostile one asks for
     * gigabytes. Kernels use 32 MiB at most (Linux builds with dict=32MiB), so 128 MiB is plenty.
     */
    lzma_stream s = LZMA_STREAM_INIT;
    lzma_ret r =
        alone ? lzma_alone_decoder(&s, XZ_MEMLIMIT) : lzma_stream_decoder(&s, XZ_MEMLIMIT, 0);
    if (r != LZMA_OK)
        return vs_error(-ENOMEM, "xz: decoder init failed (%d)", r);
    size_t cap = 0;
    int rc = out_grow(out, &cap, hint ? hint : 16 * MIB);
    s.next_in = in;
    s.avail_in = len;
    while (rc == 0) {
        if (s.total_out == cap && (rc = out_grow(out, &cap, cap + 16 * MIB)) < 0)
            break;
        s.next_out = *out + s.total_out;
        s.avail_out = cap - s.total_out;
        r = lzma_code(&s, LZMA_FINISH);
        if (r == LZMA_STREAM_END)
            break;
        if (r == LZMA_MEMLIMIT_ERROR) {
            rc = vs_error(-EINVAL, "%s: the payload needs more than %llu MiB to decompress",
                          alone ? "lzma" : "xz", (unsigned long long)(XZ_MEMLIMIT / MIB));
            break;
        }
        if (r != LZMA_OK && r != LZMA_BUF_ERROR) {
            rc = vs_error(-EINVAL, "%s: corrupt data (liblzma error %d)", alone ? "lzma" : "xz", r);
            break;
        }
        if (r == LZMA_BUF_ERROR && s.avail_out) {
            rc = vs_error(-EINVAL, "%s: truncated payload", alone ? "lzma" : "xz");
            break;
        }
    }
    *out_len = s.total_out;
    lzma_end(&s);
    return rc;
}

static int gzip_decode(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len, size_t hint)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return vs_error(-ENOMEM, "gzip: inflateInit failed");
    size_t cap = 0, used = 0;
    int rc = out_grow(out, &cap, hint ? hint : 16 * MIB);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)VS_MIN(len, (size_t)UINT32_MAX);
    while (rc == 0) {
        if (used == cap && (rc = out_grow(out, &cap, cap + 16 * MIB)) < 0)
            break;
        z.next_out = *out + used;
        z.avail_out = (uInt)(cap - used);
        int r = inflate(&z, Z_NO_FLUSH);
        used = cap - z.avail_out;
        if (r == Z_STREAM_END)
            break;
        if (r != Z_OK && !(r == Z_BUF_ERROR && z.avail_out == 0)) {
            rc = vs_error(-EINVAL, "gzip: %s", z.msg ? z.msg : "corrupt or truncated data");
            break;
        }
    }
    inflateEnd(&z);
    *out_len = used;
    return rc;
}

static int bzip2_decode(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len, size_t hint)
{
    bz_stream b;
    memset(&b, 0, sizeof(b));
    if (BZ2_bzDecompressInit(&b, 0, 0) != BZ_OK)
        return vs_error(-ENOMEM, "bzip2: init failed");
    size_t cap = 0, used = 0;
    int rc = out_grow(out, &cap, hint ? hint : 16 * MIB);
    b.next_in = (char *)in;
    b.avail_in = (unsigned)VS_MIN(len, (size_t)UINT32_MAX);
    while (rc == 0) {
        if (used == cap && (rc = out_grow(out, &cap, cap + 16 * MIB)) < 0)
            break;
        b.next_out = (char *)*out + used;
        b.avail_out = (unsigned)(cap - used);
        int r = BZ2_bzDecompress(&b);
        used = cap - b.avail_out;
        if (r == BZ_STREAM_END)
            break;
        if (r != BZ_OK || (b.avail_in == 0 && b.avail_out != 0)) {
            rc = vs_error(-EINVAL, "bzip2: corrupt or truncated data (%d)", r);
            break;
        }
    }
    BZ2_bzDecompressEnd(&b);
    *out_len = used;
    return rc;
}

int bzimage_decompress(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len,
                       const char **format)
{
    *out = NULL;
    *out_len = 0;
    if (len < 8)
        return vs_error(-EINVAL, "payload too short (%zu bytes)", len);
    /* The kernel build appends the decompressed size as 4 bytes: use it to size the buffer. */
    size_t hint = rd32(in + len - 4);
    if (hint > DECOMPRESS_MAX)
        hint = 0;
    int rc;
    if (rd32(in) == 0x184c2102) {
        *format = "lz4";
        rc = lz4_legacy(in, len, out, out_len, hint);
    } else if (rd32(in) == 0xfd2fb528) {
        *format = "zstd";
        rc = zstd_decode(in, len, out, out_len, hint);
    } else if (memcmp(in,
                      "\xfd"
                      "7zXZ\0",
                      6) == 0) {
        *format = "xz";
        rc = xz_decode(in, len, out, out_len, hint, false);
    } else if (in[0] == 0x1f && (in[1] == 0x8b || in[1] == 0x9e)) {
        *format = "gzip";
        rc = gzip_decode(in, len, out, out_len, hint);
    } else if (memcmp(in, "BZh", 3) == 0) {
        *format = "bzip2";
        rc = bzip2_decode(in, len, out, out_len, hint);
    } else if (in[0] == 0x5d && in[1] == 0 && in[2] == 0) {
        *format = "lzma";
        rc = xz_decode(in, len, out, out_len, hint, true);
    } else if (memcmp(in, "\x89LZO", 4) == 0) {
        *format = "lzo";
        return vs_error(-ENOTSUP, "payload compressed with LZO: no decompressor");
    } else {
        *format = "unknown";
        return vs_error(-ENOTSUP, "payload compression not recognised (magic %02x %02x %02x %02x)",
                        in[0], in[1], in[2], in[3]);
    }
    if (rc < 0) {
        free(*out);
        *out = NULL;
        *out_len = 0;
    }
    return rc;
}

/* ---- the zero page -------------------------------------------------------------------------- */

/* Fill the zero page: BZ's setup header (0x1f1 up to its declared end), or for a bare vmlinux
 * (BZ NULL) a made-up 2.15 header; then loader type, command line, initrd, RSDP and E820. */
static int zero_page_fill(struct machine *m, const uint8_t *bz, uint64_t initrd,
                          uint64_t initrd_size)
{
    uint8_t *zp = guest_mem_ptr(&m->mem, LAYOUT_ZERO_PAGE, GUEST_PAGE);
    if (!zp)
        return vs_error(-EFAULT, "zero page outside guest memory");
    memset(zp, 0, GUEST_PAGE);
    if (bz) {
        size_t hdr_end = VS_MIN((size_t)0x202 + bz[0x201], (size_t)0x290);
        memcpy(zp + 0x1f1, bz + 0x1f1, hdr_end - 0x1f1);
    } else {
        memcpy(zp + 0x1fe, &(uint16_t){0xaa55}, 2);                 /* boot_flag */
        memcpy(zp + 0x202, "HdrS", 4);                              /* header */
        memcpy(zp + 0x206, &(uint16_t){0x020f}, 2);                 /* version 2.15 */
        memcpy(zp + 0x22c, &(uint32_t){0x7fffffff}, 4);             /* initrd_addr_max */
        memcpy(zp + 0x230, &(uint32_t){0x200000}, 4);               /* kernel_alignment */
        memcpy(zp + 0x236, &(uint16_t){0x1}, 2);                    /* XLF_KERNEL_64 */
        memcpy(zp + 0x238, &(uint32_t){LAYOUT_CMDLINE_MAX - 1}, 4); /* cmdline_size */
    }
    zp[0x210] = 0xff;  /* type_of_loader: undefined */
    zp[0x211] |= 0x01; /* LOADED_HIGH */
    memcpy(zp + 0x228, &(uint32_t){(uint32_t)LAYOUT_CMDLINE}, 4);
    memcpy(zp + 0x218, &(uint32_t){(uint32_t)initrd}, 4);
    memcpy(zp + 0x21c, &(uint32_t){(uint32_t)initrd_size}, 4);
    memcpy(zp + 0x070, &m->rsdp, 8); /* acpi_rsdp_addr (protocol 2.14) */
    struct e820_entry_host map[16];
    unsigned n = machine_e820(m, map, VS_ARRAY_SIZE(map));
    for (unsigned i = 0; i < n; i++) {
        uint8_t *e = zp + 0x2d0 + i * 20;
        memcpy(e, &map[i].addr, 8);
        memcpy(e + 8, &map[i].size, 8);
        memcpy(e + 16, &map[i].type, 4);
    }
    zp[0x1e8] = (uint8_t)n;
    return 0;
}

/* ---- vmlinux: startup_64 with a zero page ---------------------------------------------------- */

int vmlinux_load(struct machine *m, const uint8_t *elf, size_t len, const uint8_t *bz,
                 const char *name, const char *how)
{
    struct elf_image img;
    int rc = elf_parse(elf, len, name, &img);
    if (rc < 0)
        return rc;
    if (!img.is64)
        return vs_error(-ENOEXEC, "%s: a 32-bit ELF without a PVH note: no way to enter it", name);
    uint64_t entry = img.elf_entry;
    if (entry < LAYOUT_HIGH || entry >= LAYOUT_4G || !guest_mem_ptr(&m->mem, entry, 1))
        return vs_error(-ENOEXEC,
                        "%s: ELF entry 0x%llx is not a physical address in guest RAM below "
                        "4 GiB (not a Linux vmlinux?)",
                        name, (unsigned long long)entry);
    uint64_t kernel_end;
    if ((rc = elf_load(m, elf, name, &img, &kernel_end)) < 0)
        return rc;
    uint32_t cmdline_size = bz ? rd32(bz + 0x238) : 0;
    if ((rc = boot_cmdline(m, cmdline_size ? (uint64_t)cmdline_size + 1 : LAYOUT_CMDLINE_MAX)) < 0)
        return rc;
    uint64_t initrd, initrd_size;
    uint64_t limit = bz ? (uint64_t)rd32(bz + 0x22c) + 1 : 0x80000000ull;
    if ((rc = initrd_place(m, kernel_end, limit, &initrd, &initrd_size)) < 0 ||
        (rc = zero_page_fill(m, bz, initrd, initrd_size)) < 0)
        return rc;
    m->boot.is_64bit = true;
    m->boot.entry = entry;
    m->boot.boot_param = LAYOUT_ZERO_PAGE;
    snprintf(m->boot.how, sizeof(m->boot.how), "%s; vmlinux 64-bit entry 0x%llx with a zero page",
             how ? how : "ELF", (unsigned long long)entry);
    return 0;
}

/* ---- the boot protocol ----------------------------------------------------------------------- */

/* Boot the decompressed payload: through PVH when it has the note (and PVH is allowed), else
 * through vmlinux_load. 0 = booted; -ENOEXEC = not possible, use the bzImage's own protocol
 * (only under VMM_BOOT_AUTO: a path asked for by name fails with its reason instead). */
static int try_payload(struct machine *m, const uint8_t *buf, size_t len, size_t pm_offset,
                       const char *name)
{
    enum vmm_boot_path path = m->config->boot_path;
    if (path == VMM_BOOT_BZIMAGE)
        return -ENOEXEC;
    bool forced = path != VMM_BOOT_AUTO;
    uint16_t version = rd16(buf + 0x206);
    uint64_t off = pm_offset + rd32(buf + 0x248), plen = rd32(buf + 0x24c);
    if (version < 0x208 || plen == 0 || off > len || plen > len - off)
        return forced ? vs_error(-ENOEXEC,
                                 "%s: no payload to decompress (boot protocol %u.%02u, payload "
                                 "%llu bytes at %llu)",
                                 name, version >> 8, version & 0xff, (unsigned long long)plen,
                                 (unsigned long long)off)
                      : -ENOEXEC;
    uint64_t t0 = vs_now_ns();
    uint8_t *elf;
    size_t elf_len;
    const char *format = "?";
    int rc = bzimage_decompress(buf + off, plen, &elf, &elf_len, &format);
    if (rc < 0) /* not fatal unless asked for: the kernel can decompress itself */
        return forced ? vs_error_prefix(rc, "%s", name) : -ENOEXEC;
    char how[96];
    snprintf(how, sizeof(how), "%s payload decompressed on the host in %.0f ms", format,
             (double)(vs_now_ns() - t0) / 1e6);
    struct elf_image img;
    rc = elf_parse(elf, elf_len, name, &img);
    if (rc < 0 && !forced) {
        free(elf);
        vs_error_clear();
        return -ENOEXEC; /* not an ELF: the boot protocol */
    }
    if (rc == 0 && img.has_pvh && path != VMM_BOOT_VMLINUX) {
        rc = pvh_load(m, elf, elf_len, name);
        if (rc == 0)
            snprintf(m->boot.how, sizeof(m->boot.how), "PVH fast path: %s, entry 0x%llx", how,
                     (unsigned long long)img.entry);
    } else if (rc == 0 && !forced &&
               (!img.is64 || img.elf_entry < LAYOUT_HIGH || img.elf_entry >= LAYOUT_4G)) {
        free(elf);
        return -ENOEXEC; /* not a vmlinux we can enter: the boot protocol */
    } else if (rc == 0 && path == VMM_BOOT_PVH) {
        rc = vs_error(-ENOEXEC,
                      "%s: --boot-path pvh: the payload has no PVH entry note (for Linux: "
                      "CONFIG_PVH=y)",
                      name);
    } else if (rc == 0) {
        rc = vmlinux_load(m, elf, elf_len, buf, name, how);
    }
    free(elf);
    if (rc == -ENOEXEC && !forced)
        return -EINVAL; /* a real error (initrd too big, …), not a reason to fall back */
    return rc;
}

int bzimage_load(struct machine *m, const uint8_t *buf, size_t len, const char *name)
{
    uint16_t version = rd16(buf + 0x206);
    if (version < 0x20c)
        return vs_error(-ENOEXEC,
                        "%s: boot protocol %u.%02u is too old (64-bit entry needs "
                        "2.12)",
                        name, version >> 8, version & 0xff);
    unsigned setup_sects = buf[0x1f1] ? buf[0x1f1] : 4;
    size_t pm_offset = (size_t)(setup_sects + 1) * 512;
    if (pm_offset >= len)
        return vs_error(-ENOEXEC, "%s: setup_sects %u points past the end of the file", name,
                        setup_sects);
    int rc = try_payload(m, buf, len, pm_offset, name);
    enum vmm_boot_path path = m->config->boot_path;
    if (rc != -ENOEXEC || (path != VMM_BOOT_AUTO && path != VMM_BOOT_BZIMAGE))
        return rc; /* booted, or failed for a reason worth reporting */

    uint16_t xloadflags = rd16(buf + 0x236);
    if (!(xloadflags & 1))
        return vs_error(-ENOEXEC,
                        "%s: no 64-bit entry point (xloadflags 0x%x lacks "
                        "XLF_KERNEL_64)",
                        name, xloadflags);
    uint64_t load = rd64(buf + 0x258);
    uint32_t init_size = rd32(buf + 0x260);
    size_t pm_len = len - pm_offset;
    if (load < LAYOUT_HIGH || load >= LAYOUT_PCI_HOLE)
        return vs_error(-ENOEXEC, "%s: pref_address 0x%llx unusable", name,
                        (unsigned long long)load);
    uint64_t need = VS_MAX((uint64_t)init_size, (uint64_t)pm_len);
    uint8_t *dst = guest_mem_ptr(&m->mem, load, need);
    if (!dst)
        return vs_error(-ENOMEM, "%s: the kernel needs 0x%llx..0x%llx; give the VM more --memory",
                        name, (unsigned long long)load, (unsigned long long)(load + need));
    memcpy(dst, buf + pm_offset, pm_len);

    uint32_t cmdline_size = rd32(buf + 0x238);
    rc = boot_cmdline(m, cmdline_size ? (uint64_t)cmdline_size + 1 : 256);
    if (rc < 0)
        return rc;
    uint64_t initrd, initrd_size;
    uint64_t limit = (uint64_t)rd32(buf + 0x22c) + 1;
    if ((rc = initrd_place(m, load + need, limit, &initrd, &initrd_size)) < 0)
        return rc;

    if ((rc = zero_page_fill(m, buf, initrd, initrd_size)) < 0)
        return rc;
    m->boot.is_64bit = true;
    m->boot.entry = load + 0x200;
    m->boot.boot_param = LAYOUT_ZERO_PAGE;
    snprintf(m->boot.how, sizeof(m->boot.how), "bzImage 64-bit boot protocol %u.%02u at 0x%llx",
             version >> 8, version & 0xff, (unsigned long long)load);
    return 0;
}
