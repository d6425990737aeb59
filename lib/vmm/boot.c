/*
 * lib/vmm/boot.c — what every boot path shares: reading the kernel, the E820 map, the command
 * line, initrd placement, the GDT and identity page tables, and the choice of boot path.
 *
 * The kernel file is untrusted input: it is mapped whole (bounded by guest memory), and every
 * offset the boot paths take from it is checked against its length before use. Guest memory
 * below 1 MiB is the VMM's: boot structures live at fixed addresses there (machine.h) and no
 * kernel segment may land on them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm/boot.h"
#include "vmm/sigbus.h"

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Map the kernel file PATH read-only (at most MAX bytes). Mapped, not read: the boot paths touch
 * only the parts they load (an ELF's segments, not its symbols), and page-cache pages come in
 * sixteen to a fault instead of being copied once more. */
static int boot_map_file(const char *path, uint64_t max, const uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return vs_error(-EINVAL, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return vs_error(-EFBIG, "%s: %llu MiB is larger than guest memory allows", path,
                        (unsigned long long)st.st_size / MIB);
    }
    if (st.st_size == 0) {
        close(fd);
        return vs_error(-ENOEXEC, "%s: empty file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return vs_error_errno(-e, "%s: mmap", path);
    *out = p;
    *len = (size_t)st.st_size;
    return 0;
}

unsigned machine_e820(const struct machine *m, struct e820_entry_host *out, unsigned max)
{
    unsigned n = 0;
#define ADD(a, s, t)                                                                               \
    do {                                                                                           \
        if (n < max)                                                                               \
            out[n++] = (struct e820_entry_host){(a), (s), (t)};                                    \
    } while (0)
    uint64_t low_end = guest_mem_low_end(&m->mem);
    ADD(0, LAYOUT_EBDA, 1);
    ADD(LAYOUT_EBDA, 0xa0000 - LAYOUT_EBDA, 2);
    ADD(LAYOUT_ACPI, LAYOUT_ACPI_END - LAYOUT_ACPI, 2);
    if (low_end > LAYOUT_HIGH)
        ADD(LAYOUT_HIGH, low_end - LAYOUT_HIGH, 1);
    for (unsigned i = 1; i < m->mem.count; i++)
        ADD(m->mem.regions[i].gpa, m->mem.regions[i].size, 1);
#undef ADD
    return n;
}

int boot_cmdline(struct machine *m, uint64_t limit)
{
    const char *cmdline = m->config->cmdline ? m->config->cmdline : "";
    size_t len = strlen(cmdline);
    limit = VS_MIN(limit, LAYOUT_CMDLINE_MAX);
    if (len + 1 > limit)
        return vs_error(-E2BIG, "--cmdline: %zu bytes, the kernel accepts at most %llu", len,
                        (unsigned long long)limit - 1);
    uint8_t *p = guest_mem_ptr(&m->mem, LAYOUT_CMDLINE, len + 1);
    memcpy(p, cmdline, len + 1);
    return 0;
}

int initrd_place(struct machine *m, uint64_t kernel_end, uint64_t limit, uint64_t *addr,
                 uint64_t *size)
{
    const char *path = m->config->initrd;
    *addr = *size = 0;
    if (!path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "--initrd %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return vs_error(-EINVAL, "--initrd %s: not a regular file", path);
    }
    uint64_t len = (uint64_t)st.st_size;
    uint64_t top = VS_MIN(limit, guest_mem_low_end(&m->mem));
    uint64_t bottom = VS_ALIGN_UP(kernel_end, 2 * MIB);
    if (len == 0 || len > top || VS_ALIGN_DOWN(top - len, GUEST_PAGE) < bottom) {
        close(fd);
        char sz[32], mem[32];
        vs_format_size(len, sz, sizeof(sz));
        vs_format_size(m->mem.ram_size, mem, sizeof(mem));
        if (len == 0)
            return vs_error(-EINVAL, "--initrd %s: file is empty", base_name(path));
        return vs_error(-E2BIG,
                        "--initrd %s: %s does not fit between the kernel (ends at 0x%llx) and "
                        "the initrd limit 0x%llx in %s of guest memory",
                        base_name(path), sz, (unsigned long long)kernel_end,
                        (unsigned long long)top, mem);
    }
    uint64_t at = VS_ALIGN_DOWN(top - len, GUEST_PAGE);
    int rc = vs_pread_full(fd, guest_mem_ptr(&m->mem, at, len), len, 0);
    close(fd);
    if (rc < 0)
        return vs_error_errno(rc, "--initrd %s: read", path);
    *addr = at;
    *size = len;
    return 0;
}

/* One GDT for both entry ABIs: 0x08 code32, 0x10 code64, 0x18 data, 0x20 TSS (base 0). */
static void write_gdt(struct machine *m)
{
    static const uint64_t gdt[5] = {
        0,
        0x00cf9b000000ffffULL,
        0x00af9b000000ffffULL,
        0x00cf93000000ffffULL,
        0x00008b0000000067ULL,
    };
    memcpy(guest_mem_ptr(&m->mem, LAYOUT_GDT, sizeof(gdt)), gdt, sizeof(gdt));
}

/* PML4 → PDPT → four page directories of 2 MiB pages: the first 4 GiB identity-mapped. */
static void write_page_tables(struct machine *m)
{
    uint64_t *pml4 = guest_mem_ptr(&m->mem, LAYOUT_PML4, 6 * GUEST_PAGE);
    memset(pml4, 0, 6 * GUEST_PAGE);
    uint64_t *pdpt = pml4 + 512;
    pml4[0] = (LAYOUT_PML4 + GUEST_PAGE) | 3;
    for (uint64_t i = 0; i < 4; i++) {
        uint64_t *pd = pml4 + 512 * (2 + i);
        pdpt[i] = (LAYOUT_PML4 + (2 + i) * GUEST_PAGE) | 3;
        for (uint64_t j = 0; j < 512; j++)
            pd[j] = ((i * 512 + j) << 21) | 0x83; /* present, writable, 2 MiB */
    }
}

int boot_load_image(struct machine *m, const uint8_t *buf, size_t len, const char *name)
{
    enum vmm_boot_path how = m->config->boot_path;
    if (len >= 4 && memcmp(buf,
                           "\x7f"
                           "ELF",
                           4) == 0) {
        struct elf_image img;
        int rc = elf_parse(buf, len, name, &img);
        if (rc < 0)
            return rc;
        if (how == VMM_BOOT_BZIMAGE)
            return vs_error(-EINVAL, "--boot-path bzimage: %s is an ELF, not a bzImage", name);
        if ((img.has_pvh && how != VMM_BOOT_VMLINUX) || how == VMM_BOOT_PVH)
            return pvh_load(m, buf, len, name);
        return vmlinux_load(m, buf, len, NULL, name, NULL);
    }
    if (bzimage_probe(buf, len))
        return bzimage_load(m, buf, len, name);
    return vs_error(-ENOEXEC,
                    "%s: not a kernel: neither an ELF nor a bzImage (no \"HdrS\" at offset "
                    "0x202)",
                    name);
}

/* boot_load_image under a SIGBUS guard: a file truncated while it is mapped raises SIGBUS on the
 * pages past its new end (`cp` over a kernel while a VM starts): an error, not a dead VMM. */
static int boot_load_guarded(struct machine *m, const uint8_t *buf, size_t len, const char *path)
{
    struct sigbus_guard g;
    int rc;
    if (SIGBUS_GUARDED(g, buf, len))
        rc = boot_load_image(m, buf, len, base_name(path));
    else
        rc = vs_error(-EIO, "--kernel %s: the file shrank while it was being loaded", path);
    sigbus_disarm();
    return rc;
}

int boot_load(struct machine *m)
{
    const char *path = m->config->kernel;
    if (!path)
        return vs_error(-EINVAL, "no --kernel given");
    int rc = acpi_build(m);
    if (rc < 0)
        return rc;
    write_gdt(m);
    write_page_tables(m);
    const uint8_t *buf = NULL;
    size_t len = 0;
    rc = boot_map_file(path, VS_MIN(m->mem.ram_size, 1024 * MIB), &buf, &len);
    if (rc < 0)
        return vs_error_prefix(rc, "--kernel");
    rc = boot_load_guarded(m, buf, len, path);
    munmap((void *)buf, len);
    return rc;
}
