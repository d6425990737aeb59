/*
 * lib/vmm/boot-pvh.c — ELF kernels. PVH boot: load an ELF kernel (vmlinux, the probe guest) at
 * its physical addresses and enter it in 32-bit protected mode with paging off, EBX pointing at
 * hvm_start_info (command line, memory map, RSDP, initrd as module 0). An ELF without the PVH
 * note goes to vmlinux_load (boot-bzimage.c): the zero page and the 64-bit entry.
 *
 * The ELF is hostile input: headers, program headers and notes are read with explicit bounds
 * checks against the buffer (32- and 64-bit layouts are normalised into one struct), and every
 * segment must land in guest RAM above the VMM's first-MiB boot area.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vmm/boot.h"

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

#define PT_LOAD 1
#define PT_NOTE 4

/* Scan one PT_NOTE segment for Xen's PHYS32_ENTRY note. */
static int scan_notes(const uint8_t *p, uint64_t len, const char *name, struct elf_image *img)
{
    uint64_t off = 0;
    while (len - off >= 12) {
        uint32_t namesz = rd32(p + off), descsz = rd32(p + off + 4), type = rd32(p + off + 8);
        uint64_t name_off = off + 12;
        uint64_t desc_off = name_off + VS_ALIGN_UP((uint64_t)namesz, 4);
        uint64_t next = desc_off + VS_ALIGN_UP((uint64_t)descsz, 4);
        if (desc_off > len || next > len || next <= off)
            return vs_error(-ENOEXEC, "%s: ELF note at offset %llu runs past its segment", name,
                            (unsigned long long)off);
        if (namesz == 4 && memcmp(p + name_off, "Xen", 4) == 0 &&
            type == XEN_ELFNOTE_PHYS32_ENTRY) {
            if (descsz == 4)
                img->entry = rd32(p + desc_off);
            else if (descsz == 8)
                img->entry = rd64(p + desc_off);
            else
                return vs_error(-ENOEXEC, "%s: PVH entry note has %u-byte value", name, descsz);
            img->has_pvh = true;
        }
        off = next;
    }
    return 0;
}

int elf_parse(const uint8_t *buf, size_t len, const char *name, struct elf_image *img)
{
    memset(img, 0, sizeof(*img));
    if (len < 52 || memcmp(buf,
                           "\x7f"
                           "ELF",
                           4) != 0)
        return vs_error(-ENOEXEC, "%s: not an ELF file", name);
    bool is64 = buf[4] == 2;
    if (buf[4] != 1 && buf[4] != 2)
        return vs_error(-ENOEXEC, "%s: ELF class %u unknown", name, buf[4]);
    if (buf[5] != 1)
        return vs_error(-ENOEXEC, "%s: ELF is not little-endian", name);
    uint16_t machine = rd16(buf + 18);
    if (machine != 62 && machine != 3)
        return vs_error(-ENOEXEC, "%s: ELF machine %u is not x86", name, machine);
    if (is64 && len < 64)
        return vs_error(-ENOEXEC, "%s: ELF header truncated", name);
    img->is64 = is64;
    img->elf_entry = is64 ? rd64(buf + 24) : rd32(buf + 24);
    uint64_t phoff = is64 ? rd64(buf + 32) : rd32(buf + 28);
    uint16_t phentsize = rd16(buf + (is64 ? 54 : 42));
    uint16_t phnum = rd16(buf + (is64 ? 56 : 44));
    uint16_t want = is64 ? 56 : 32;
    if (phentsize != want)
        return vs_error(-ENOEXEC, "%s: e_phentsize %u, expected %u", name, phentsize, want);
    if (phnum == 0 || phoff > len || (uint64_t)phnum * phentsize > len - phoff)
        return vs_error(-ENOEXEC,
                        "%s: program headers (e_phoff %llu, %u entries) lie outside "
                        "the file",
                        name, (unsigned long long)phoff, phnum);
    for (unsigned i = 0; i < phnum; i++) {
        const uint8_t *ph = buf + phoff + (uint64_t)i * phentsize;
        uint32_t type = rd32(ph);
        uint64_t offset, paddr, filesz, memsz;
        if (is64) {
            offset = rd64(ph + 8);
            paddr = rd64(ph + 24);
            filesz = rd64(ph + 32);
            memsz = rd64(ph + 40);
        } else {
            offset = rd32(ph + 4);
            paddr = rd32(ph + 12);
            filesz = rd32(ph + 16);
            memsz = rd32(ph + 20);
        }
        if (type != PT_LOAD && type != PT_NOTE)
            continue;
        if (offset > len || filesz > len - offset)
            return vs_error(-ENOEXEC,
                            "%s: program header %u: file range %llu+%llu is past the "
                            "end of the file (%zu bytes)",
                            name, i, (unsigned long long)offset, (unsigned long long)filesz, len);
        if (type == PT_NOTE) {
            int rc = scan_notes(buf + offset, filesz, name, img);
            if (rc < 0)
                return rc;
            continue;
        }
        if (filesz > memsz || paddr + memsz < paddr)
            return vs_error(-ENOEXEC,
                            "%s: program header %u: p_filesz > p_memsz or the segment "
                            "wraps",
                            name, i);
        if (memsz == 0)
            continue;
        if (img->count == VS_ARRAY_SIZE(img->segments))
            return vs_error(-ENOEXEC, "%s: more than %zu loadable segments", name,
                            VS_ARRAY_SIZE(img->segments));
        img->segments[img->count++] = (struct elf_segment){paddr, filesz, memsz, offset};
    }
    if (img->count == 0)
        return vs_error(-ENOEXEC, "%s: no loadable segments", name);
    return 0;
}

int elf_load(struct machine *m, const uint8_t *elf, const char *name, const struct elf_image *img,
             uint64_t *end)
{
    *end = 0;
    for (unsigned i = 0; i < img->count; i++) {
        const struct elf_segment *s = &img->segments[i];
        uint8_t *dst = guest_mem_ptr(&m->mem, s->paddr, s->memsz);
        if (s->paddr < LAYOUT_HIGH || !dst)
            return vs_error(-ENOEXEC, "%s: segment %u at 0x%llx+0x%llx is %s", name, i,
                            (unsigned long long)s->paddr, (unsigned long long)s->memsz,
                            s->paddr < LAYOUT_HIGH ? "below 1 MiB (reserved for boot data)"
                                                   : "outside guest RAM (more --memory?)");
        /* The rest up to memsz (.bss) is left alone: boot_load only ever runs on a machine just
         * built, whose RAM is fresh anonymous memory and reads as zero already (a reboot builds
         * a new machine). Zeroing it would fault in pages the guest may never touch. */
        memcpy(dst, elf + s->offset, s->filesz);
        *end = VS_MAX(*end, s->paddr + s->memsz);
    }
    return 0;
}

int pvh_load(struct machine *m, const uint8_t *elf, size_t len, const char *name)
{
    struct elf_image img;
    int rc = elf_parse(elf, len, name, &img);
    if (rc < 0)
        return rc;
    if (!img.has_pvh)
        return vs_error(-ENOEXEC,
                        "%s: ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY; "
                        "for Linux: CONFIG_PVH=y)",
                        name);
    uint64_t kernel_end;
    if ((rc = elf_load(m, elf, name, &img, &kernel_end)) < 0)
        return rc;
    if (img.entry >= LAYOUT_4G || !guest_mem_ptr(&m->mem, img.entry, 1))
        return vs_error(-ENOEXEC, "%s: PVH entry 0x%llx is not in guest RAM below 4 GiB", name,
                        (unsigned long long)img.entry);
    if ((rc = boot_cmdline(m, LAYOUT_CMDLINE_MAX)) < 0)
        return rc;
    uint64_t initrd, initrd_size;
    if ((rc = initrd_place(m, kernel_end, LAYOUT_4G, &initrd, &initrd_size)) < 0)
        return rc;

    struct hvm_start_info *si = guest_mem_ptr(&m->mem, LAYOUT_START_INFO, 0x400);
    struct hvm_modlist_entry *mod = (void *)((uint8_t *)si + 0x40);
    memset(si, 0, 0x400);
    si->magic = PVH_START_MAGIC;
    si->version = 1;
    si->cmdline_paddr = LAYOUT_CMDLINE;
    si->rsdp_paddr = m->rsdp;
    if (initrd_size) {
        si->nr_modules = 1;
        si->modlist_paddr = LAYOUT_START_INFO + 0x40;
        mod->paddr = initrd;
        mod->size = initrd_size;
    }
    struct e820_entry_host map[16];
    unsigned n = machine_e820(m, map, VS_ARRAY_SIZE(map));
    struct hvm_memmap_table_entry *mm =
        guest_mem_ptr(&m->mem, LAYOUT_MEMMAP, n * sizeof(struct hvm_memmap_table_entry));
    for (unsigned i = 0; i < n; i++)
        mm[i] = (struct hvm_memmap_table_entry){map[i].addr, map[i].size, map[i].type, 0};
    si->memmap_paddr = LAYOUT_MEMMAP;
    si->memmap_entries = n;

    m->boot.is_64bit = false;
    m->boot.entry = img.entry;
    m->boot.boot_param = LAYOUT_START_INFO;
    snprintf(m->boot.how, sizeof(m->boot.how), "PVH entry 0x%llx", (unsigned long long)img.entry);
    return 0;
}
