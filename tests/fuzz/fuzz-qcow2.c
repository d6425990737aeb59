/*
 * tests/fuzz/fuzz-qcow2.c — libFuzzer target for the qcow2 driver: every input is a qcow2 file
 * opened the ways a user can open an untrusted image — read-only (reads, block status, info,
 * snapshot list), for check, for check-and-repair, and read-write (small writes, zeroes, discard,
 * a compressed cluster, flush) — and must never crash, hang, leak or trip a sanitizer, whatever
 * the header says.
 *
 * The one idea: the harness is fuzz-img-common.h, shared by every image format; this file only
 * says which format and which of the extra write operations qcow2 supports. A backing name can
 * only resolve to the image itself (a loop the library must detect) or to nothing.
 */
#include "fuzz-img-common.h"

static const struct fuzz_img_target qcow2_target = {
    .format = "qcow2",
    .limits = FUZZ_IMG_LIMITS_DEFAULT,
    .discard = true,
    .compressed_write = true,
    .tail_write = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_img_run(&qcow2_target, data, size);
}
