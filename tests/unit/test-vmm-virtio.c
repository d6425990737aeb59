/*
 * tests/unit/test-vmm-virtio.c — the virtqueue helpers the virtio devices lean on, over a fake
 * guest memory: giving a chain back (virtio-net keeps a receive buffer when the tap has no frame),
 * kick suppression through the used ring's NO_NOTIFY flag (virtio-blk while busy), and reading a
 * request that spans several descriptors (virtio-balloon page lists).
 */
#include <string.h>

#include "harness.h"
#include "vmm/virtqueue.h"

struct fake {
    uint8_t ram[65536];
    struct guest_mem mem;
    struct virtq q;
    struct virtq_chain chain;
};

static void fake_init(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    f->mem.regions[0] = (struct mem_region){0, sizeof(f->ram), f->ram};
    f->mem.count = 1;
    f->q =
        (struct virtq){.mem = &f->mem, .size = 8, .desc = 0x1000, .avail = 0x2000, .used = 0x3000};
    CHECK_OK(virtq_validate(&f->q));
    f->q.ready = true;
}

static void put_desc(struct fake *f, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    uint8_t *d = f->ram + 0x1000 + 16 * i;
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

static void offer(struct fake *f, uint16_t head)
{
    uint16_t idx;
    memcpy(&idx, f->ram + 0x2002, 2);
    memcpy(f->ram + 0x2004 + 2 * (idx % 8), &head, 2);
    idx++;
    memcpy(f->ram + 0x2002, &idx, 2);
}

static uint16_t used_flags(struct fake *f)
{
    uint16_t v;
    memcpy(&v, f->ram + 0x3000, 2);
    return v;
}

TEST(virtqueue_unpop_gives_the_same_chain_back)
{
    static struct fake f;
    fake_init(&f);
    put_desc(&f, 3, 0x4000, 2048, VIRTQ_DESC_F_WRITE, 0);
    put_desc(&f, 5, 0x5000, 2048, VIRTQ_DESC_F_WRITE, 0);
    offer(&f, 3);
    offer(&f, 5);
    CHECK(virtq_pop(&f.q, &f.chain) == 1 && f.chain.head == 3);
    virtq_unpop(&f.q);
    CHECK(virtq_pop(&f.q, &f.chain) == 1 && f.chain.head == 3 && f.chain.writable == 2048);
    CHECK(virtq_pop(&f.q, &f.chain) == 1 && f.chain.head == 5);
    CHECK(virtq_pop(&f.q, &f.chain) == 0);
}

TEST(virtqueue_notify_suppression)
{
    static struct fake f;
    fake_init(&f);
    CHECK(used_flags(&f) == 0);
    virtq_set_notify(&f.q, false);
    CHECK(used_flags(&f) == VIRTQ_USED_F_NO_NOTIFY);
    /* a request that arrives while kicks are off is still found after re-enabling */
    put_desc(&f, 0, 0x4000, 16, 0, 0);
    offer(&f, 0);
    virtq_set_notify(&f.q, true);
    CHECK(used_flags(&f) == 0);
    CHECK(virtq_pop(&f.q, &f.chain) == 1 && f.chain.readable == 16);
    /* a used ring outside memory is left alone, not a crash */
    f.q.used = 0xffffffff00ULL;
    virtq_set_notify(&f.q, false);
}

TEST(virtqueue_chain_read_across_descriptors)
{
    static struct fake f;
    fake_init(&f);
    uint32_t pfns[6] = {0x100, 0x101, 0x102, 0x200, 0x7, 0x8};
    memcpy(f.ram + 0x4000, pfns, 10); /* 2.5 entries in the first buffer */
    memcpy(f.ram + 0x5000, (uint8_t *)pfns + 10, 14);
    put_desc(&f, 0, 0x4000, 10, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&f, 1, 0x5000, 14, 0, 0);
    offer(&f, 0);
    CHECK(virtq_pop(&f.q, &f.chain) == 1 && f.chain.readable == 24);
    for (unsigned i = 0; i < 6; i++) {
        uint32_t v = 0;
        CHECK(virtq_chain_read(&f.chain, i * 4, &v, 4) && v == pfns[i]);
    }
    uint32_t v;
    CHECK(!virtq_chain_read(&f.chain, 22, &v, 4)); /* runs past the end */
}
