/*
 * tests/fuzz/fuzz-vhd.c — libFuzzer target for the VHD driver: each input is opened read-only
 * (reads, block status walk, info), for check, for check-and-repair, and read-write (writes,
 * zeroes, discard, compaction) and must never crash, hang, leak or trip a sanitizer, whatever its
 * footer, dynamic header, BAT or parent locators say.
 *
 * The one idea: the harness is fuzz-img-common.h, shared with fuzz-vdi.c and fuzz-vhdx.c so each
 * of these formats' parsers gets exactly the same scrutiny. The file lives alone in a private
 * directory, so a parent locator can only name the image itself (a loop the core refuses) or
 * nothing.
 */
#include "fuzz-img-common.h"

static const struct fuzz_img_target vhd_target = {
    .format = "vhd",
    .limits = FUZZ_IMG_LIMITS_DEFAULT,
    .discard = true,
    .tail_write = true,
    .compact = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_img_run(&vhd_target, data, size);
}
