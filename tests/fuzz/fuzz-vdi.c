/*
 * tests/fuzz/fuzz-vdi.c — libFuzzer target for the VDI driver: the same bounded open / read /
 * block-status / check / repair / write / compact sequence as fuzz-vhd.c, on VDI inputs.
 *
 * The one idea: the harness is fuzz-img-common.h, so VDI's parser gets exactly the same scrutiny
 * as VHD's and VHDX's; only the format name differs.
 */
#include "fuzz-img-common.h"

static const struct fuzz_img_target vdi_target = {
    .format = "vdi",
    .limits = FUZZ_IMG_LIMITS_DEFAULT,
    .discard = true,
    .tail_write = true,
    .compact = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_img_run(&vdi_target, data, size);
}
