/*
 * lib/vmm/boot.h — the boot paths' shared helpers (boot.c) and their entry points (boot-pvh.c,
 * boot-bzimage.c). Parsers take (buffer, length) so unit tests can feed them crafted images.
 */
#ifndef VESSEL_VMM_BOOT_H
#define VESSEL_VMM_BOOT_H

#include "vmm/machine.h"

#define PVH_START_MAGIC          0x336ec578u
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* The hvm_start_info of the PVH ABI (version 1). */
struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
};

struct hvm_modlist_entry {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

/* Segments of a validated ELF image. */
struct elf_segment {
    uint64_t paddr, filesz, memsz, offset;
};

struct elf_image {
    uint64_t entry; /* PVH entry (0 when no note) */
    bool has_pvh;
    bool is64;          /* ELFCLASS64 */
    uint64_t elf_entry; /* e_entry: for a Linux vmlinux, the physical address of startup_64 */
    unsigned count;
    struct elf_segment segments[32];
};

/* Validate an ELF32/ELF64 x86 image and list its PT_LOAD segments and PVH note. Every field is
 * checked against LEN; NAME prefixes errors. */
int elf_parse(const uint8_t *buf, size_t len, const char *name, struct elf_image *img);

/* Copy IMG's PT_LOAD segments into guest RAM (each above the first MiB); *END = highest end. */
int elf_load(struct machine *m, const uint8_t *elf, const char *name, const struct elf_image *img,
             uint64_t *end);
/* Load a Linux vmlinux ELF and enter its startup_64 in long mode with a zero page, as Linux's
 * own decompressor does. BZ: the bzImage it came from (its setup header goes into the zero
 * page), or NULL for a bare vmlinux (a minimal header is made up). */
int vmlinux_load(struct machine *m, const uint8_t *elf, size_t len, const uint8_t *bz,
                 const char *name, const char *how);
bool bzimage_probe(const uint8_t *buf, size_t len);
int bzimage_load(struct machine *m, const uint8_t *buf, size_t len, const char *name);

/* Load the kernel image BUF (an ELF or a bzImage, LEN bytes, called NAME in messages) into
 * guest memory by the configured boot path: what boot_load does once the file is mapped. */
int boot_load_image(struct machine *m, const uint8_t *buf, size_t len, const char *name);
int boot_cmdline(struct machine *m, uint64_t limit);

#endif
