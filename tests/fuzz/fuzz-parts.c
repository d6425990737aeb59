/*
 * tests/fuzz/fuzz-parts.c — libFuzzer target for the partition-table parser (MBR, EBR chains,
 * GPT primary and backup). The input is the start of a disk; the claimed disk size is taken from
 * the first byte so that both small and large disks (read as zeros past the input) are tried.
 *
 * The one idea: reads go through a callback over the input buffer, so every LBA the parser
 * believes is exercised without any file I/O, and a loop in an EBR chain would show as a timeout.
 */
#include <stdint.h>
#include <string.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

struct input {
    const uint8_t *data;
    size_t size;
};

static int fuzz_read(void *ctx, void *buf, uint64_t off, size_t len)
{
    const struct input *in = ctx;
    memset(buf, 0, len);
    if (off < in->size)
        memcpy(buf, in->data + off, VS_MIN(len, in->size - (size_t)off));
    return 0;
}

static void quiet(const char *msg)
{
    (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vs_warn_set_handler(quiet);
    struct input in = {data, size};
    uint64_t disk = size;
    if (size && data[size - 1] & 1)
        disk = (uint64_t)1 << (20 + (data[size - 1] >> 3)); /* 1 MiB .. 2^51 */
    struct guestfs_table t;
    if (guestfs_parts_parse(fuzz_read, &in, disk, "fuzz", &t) == 0) {
        for (size_t i = 0; i < t.count; i++)
            (void)guestfs_table_find(&t, t.parts[i].number);
        guestfs_table_free(&t);
    }
    return 0;
}
