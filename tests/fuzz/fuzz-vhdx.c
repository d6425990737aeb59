/*
 * tests/fuzz/fuzz-vhdx.c — libFuzzer target for the VHDX driver: the same bounded open / read /
 * block-status / check / repair / write / compact sequence as fuzz-vhd.c, on VHDX inputs.
 *
 * The one idea: the harness is fuzz-img-common.h; VHDX's regions lie megabytes apart, so the
 * input is spread over a sparse file in windows placed where qemu-img and vessel put the
 * identifier, both headers, both region tables, the log, the metadata table and items, the BAT
 * and the first data.
 */
#include "fuzz-img-common.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)

static const struct fuzz_img_window vhdx_windows[] = {
    {0, 0, 4 * KiB},
    {4 * KiB, 64 * KiB, 4 * KiB},
    {8 * KiB, 128 * KiB, 4 * KiB},
    {12 * KiB, 192 * KiB, 4 * KiB},
    {16 * KiB, 256 * KiB, 4 * KiB},
    {20 * KiB, 1 * MiB, 12 * KiB},
    {32 * KiB, 2 * MiB, 4 * KiB},
    {36 * KiB, 2 * MiB + 64 * KiB, 4 * KiB},
    {40 * KiB, 3 * MiB, 8 * KiB},
    {48 * KiB, 4 * MiB, 8 * KiB},
    {56 * KiB, 8 * MiB, 8 * KiB},
};

static const struct fuzz_img_target vhdx_target = {
    .format = "vhdx",
    .limits = FUZZ_IMG_LIMITS_DEFAULT,
    .windows = vhdx_windows,
    .window_count = sizeof(vhdx_windows) / sizeof(vhdx_windows[0]),
    .file_size = 16 * MiB,
    .discard = true,
    .tail_write = true,
    .compact = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_img_run(&vhdx_target, data, size);
}
