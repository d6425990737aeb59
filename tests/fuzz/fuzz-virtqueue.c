/*
 * tests/fuzz/fuzz-virtqueue.c — libFuzzer target for the split-virtqueue parser over fake guest
 * memory: the input is the guest's RAM (rings, descriptors, indirect tables) and the first bytes
 * choose the queue size and ring addresses. Whatever the bytes, popping and pushing must stay
 * inside the buffer and end (ASan/UBSan catch the rest).
 */
#include <stdint.h>
#include <string.h>

#include "vmm/virtqueue.h"

#define RAM_SIZE 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t ram[RAM_SIZE];
    static struct virtq_chain chain;
    if (size < 8)
        return 0;
    memset(ram, 0, sizeof(ram));
    memcpy(ram, data, size < RAM_SIZE ? size : RAM_SIZE);
    struct guest_mem mem = {.count = 1};
    /* a second region with a gap, so cross-region buffers are exercised */
    mem.regions[0] = (struct mem_region){0, RAM_SIZE / 2, ram};
    mem.regions[1] = (struct mem_region){0x100000, RAM_SIZE / 2, ram + RAM_SIZE / 2};
    mem.count = 2;
    struct virtq q = {.mem = &mem};
    q.size = (uint16_t)(1u << (data[0] % 10));
    q.desc = (uint64_t)(data[1] | data[2] << 8) & ~15ULL;
    q.avail = (uint64_t)(data[3] | data[4] << 8) & ~1ULL;
    q.used = (uint64_t)(data[5] | data[6] << 8) & ~3ULL;
    if (data[7] & 1)
        q.desc += 0x100000;
    if (virtq_validate(&q) < 0)
        return 0;
    q.ready = true;
    for (int i = 0; i < 64; i++) {
        int rc = virtq_pop(&q, &chain);
        if (rc <= 0)
            break;
        uint64_t sum = 0;
        for (unsigned s = 0; s < chain.count; s++) {
            if (chain.segs[s].len) {
                sum += chain.segs[s].ptr[0] + chain.segs[s].ptr[chain.segs[s].len - 1];
                if (chain.segs[s].writable)
                    chain.segs[s].ptr[0] = (uint8_t)sum;
            }
        }
        uint8_t hdr[16];
        virtq_chain_read(&chain, 0, hdr, sizeof(hdr));
        virtq_push(&q, chain.head, (uint32_t)chain.writable);
        virtq_should_interrupt(&q);
    }
    return 0;
}
