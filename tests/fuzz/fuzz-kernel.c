/*
 * tests/fuzz/fuzz-kernel.c — libFuzzer target for the kernel loaders: the input is a --kernel
 * file — an ELF (with or without a PVH note) or a bzImage whose payload is decompressed on the
 * host (gzip, bzip2, xz, lzma, lz4, zstd) — loaded into a fake machine's RAM through every boot
 * path, the way vessel-vmm would. Errors are fine; a crash, a hang, a leak or a sanitizer report
 * is a bug.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/boot.h"

#define RAM_SIZE (64 * MIB)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *ram;
    if (!ram && !(ram = calloc(1, RAM_SIZE)))
        return 0;
    static struct vmm_config cfg = {.cmdline = "console=ttyS0 fuzz=1"};
    static const enum vmm_boot_path paths[] = {VMM_BOOT_AUTO, VMM_BOOT_PVH, VMM_BOOT_VMLINUX,
                                               VMM_BOOT_BZIMAGE};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct machine m;
        memset(&m, 0, sizeof(m));
        cfg.boot_path = paths[i];
        m.config = &cfg;
        m.mem.regions[0] = (struct mem_region){0, RAM_SIZE, ram};
        m.mem.count = 1;
        m.mem.ram_size = RAM_SIZE;
        m.rsdp = 0xe0000;
        boot_load_image(&m, data, size, "fuzz");
        vs_error_clear();
    }
    return 0;
}
