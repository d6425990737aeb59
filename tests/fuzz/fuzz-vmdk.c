/*
 * tests/fuzz/fuzz-vmdk.c — libFuzzer target for the VMDK driver: every input is written to
 * image.vmdk in a private directory and opened the ways a user opens an untrusted disk —
 * read-only (bounded reads, a block-status walk, info), for check, for check-and-repair, and
 * read-write (small writes, zeroes, a compressed grain, flush, compaction) — and must never crash,
 * hang, leak or trip a sanitizer, whatever the header, footer or descriptor says.
 *
 * The one idea: the harness is fuzz-img-common.h; what is VMDK's own is that descriptors may name
 * extent files. Relative names can only reach the private directory (the image itself, or
 * nothing), and an input naming any path with '/' is never opened read-write, so the fuzzer
 * cannot write outside its directory. Its bounds are tighter: a descriptor can fan out to many
 * extents.
 */
#include "fuzz-img-common.h"

static const struct fuzz_img_target vmdk_target = {
    .format = "vmdk",
    .limits =
        {
            .max_full_read = 1024 * 1024,
            .edge_read = 128 * 1024,
            .sample_offsets = 32,
            .max_status_steps = 256,
            .max_extent_reads = 32,
        },
    .probe_with_backing = true,
    .rdwr_only_without_paths = true,
    .zero_align = FUZZ_IMG_CHUNK,
    .compressed_write = true,
    .compact = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_img_run(&vmdk_target, data, size);
}
