/*
 * balloon.c — the virtio-balloon driver: inflate by N pages (the page numbers go to the host on
 * the inflate queue so it can drop their backing), deflate them again, post memory statistics,
 * and in idle mode follow the target the host sets in the config space.
 *
 * The pages handed over are touched first, so the host's RSS drop on inflation is measurable:
 * they were resident, and after inflation the VMM may discard them.
 */
#include "probe.h"

#define VIRTIO_BALLOON_F_MUST_TELL_HOST (1ull << 0)
#define VIRTIO_BALLOON_F_STATS_VQ       (1ull << 1)

#define PFNS_PER_REQ 256

struct balloon {
    struct virtio_dev dev;
    struct virtqueue inflate, deflate, stats;
    bool have_stats, ready;
    u32 *pfn_buf; /* PFNS_PER_REQ entries */
    u64 *pages;   /* base addresses of pages currently in the balloon */
    u64 npages, cap;
    u8 *pool; /* memory the balloon takes pages from */
    u64 pool_pages;
    struct {
        u16 tag;
        u64 val;
    } __attribute__((packed)) * stats_buf;
};

static struct balloon bl;

static int balloon_send(struct virtqueue *vq, u32 n)
{
    struct vbuf vb = {(u64)bl.pfn_buf, n * 4, false};
    if (vq_add(vq, &vb, 1, 0) < 0)
        return -1;
    vq_kick(vq);
    return vq_wait(vq, NULL, NULL, 10000000);
}

static void balloon_set_actual(void)
{
    virtio_cfg_write32(&bl.dev, 4, (u32)bl.npages);
}

/* Move `n` pages into (inflate) or out of (deflate) the balloon. */
static int balloon_move(u64 n, bool inflate)
{
    while (n) {
        u32 batch = n > PFNS_PER_REQ ? PFNS_PER_REQ : (u32)n;
        if (inflate) {
            if (bl.npages + batch > bl.pool_pages)
                return test_error("balloon: pool of %llu pages exhausted",
                                  (unsigned long long)bl.pool_pages);
            for (u32 i = 0; i < batch; i++) {
                u64 page = (u64)bl.pool + (bl.npages + i) * 4096;
                *(volatile u8 *)page = 1; /* resident before the host takes it */
                bl.pfn_buf[i] = (u32)(page >> 12);
            }
            if (balloon_send(&bl.inflate, batch) < 0)
                return test_error("balloon: inflate request timed out");
            bl.npages += batch;
        } else {
            if (batch > bl.npages)
                batch = (u32)bl.npages;
            if (!batch)
                break;
            for (u32 i = 0; i < batch; i++)
                bl.pfn_buf[i] = (u32)(((u64)bl.pool + (bl.npages - 1 - i) * 4096) >> 12);
            if (balloon_send(&bl.deflate, batch) < 0)
                return test_error("balloon: deflate request timed out");
            bl.npages -= batch;
        }
        n -= batch;
    }
    balloon_set_actual();
    return 0;
}

static void stats_post(void)
{
    if (!bl.have_stats)
        return;
    bl.stats_buf[0].tag = 4; /* VIRTIO_BALLOON_S_MEMFREE */
    bl.stats_buf[0].val = mem_free_bytes();
    bl.stats_buf[1].tag = 5; /* VIRTIO_BALLOON_S_MEMTOT */
    bl.stats_buf[1].val = mem_free_bytes() + bl.npages * 4096;
    struct vbuf vb = {(u64)bl.stats_buf, 2 * 10, false};
    vq_add(&bl.stats, &vb, 1, 0);
    vq_kick(&bl.stats);
}

static int balloon_setup(void)
{
    if (bl.ready)
        return 0;
    if (virtio_find(5, 0, &bl.dev) < 0)
        return 1;
    u64 f = virtio_negotiate(&bl.dev, VIRTIO_BALLOON_F_MUST_TELL_HOST | VIRTIO_BALLOON_F_STATS_VQ);
    if (!f)
        return test_error("balloon: feature negotiation failed");
    if (virtio_queue_setup(&bl.dev, &bl.inflate, 0, 64) < 0 ||
        virtio_queue_setup(&bl.dev, &bl.deflate, 1, 64) < 0)
        return test_error("balloon: queue setup failed");
    bl.have_stats =
        (f & VIRTIO_BALLOON_F_STATS_VQ) && virtio_queue_setup(&bl.dev, &bl.stats, 2, 64) == 0;
    bl.pfn_buf = alloc_pages(PFNS_PER_REQ * 4);
    bl.stats_buf = alloc_pages(4096);
    /* The pool: half of the free memory, taken once. */
    bl.pool_pages = param_u64("probe.balloon.pool_pages", mem_free_bytes() / 4096 / 2);
    bl.pool = alloc_pages(bl.pool_pages * 4096);
    if (!bl.pfn_buf || !bl.stats_buf || !bl.pool)
        return test_error("balloon: out of memory");
    virtio_driver_ok(&bl.dev);
    stats_post();
    bl.ready = true;
    return 0;
}

int test_balloon(void)
{
    int rc = balloon_setup();
    if (rc == 1) {
        if (param_str("probe.tests", NULL))
            return test_error("balloon: no virtio-balloon device");
        return 0;
    }
    if (rc < 0)
        return -1;
    u64 n = param_u64("probe.balloon.pages", 256);
    if (n > bl.pool_pages)
        n = bl.pool_pages;
    u64 t0 = rdtsc();
    if (balloon_move(n, true) < 0)
        return -1;
    u64 t1 = rdtsc();
    result("balloon", "inflated_pages", "%llu", (unsigned long long)bl.npages);
    result("balloon", "inflate_us", "%llu", (unsigned long long)cycles_to_us(t1 - t0));
    result("balloon", "target_pages", "%u", virtio_cfg32(&bl.dev, 0));
    u64 hold_ms = param_u64("probe.balloon.hold_ms", 0);
    if (hold_ms) { /* give a host-side test time to measure RSS while inflated */
        con_printf("PROBE balloon inflated\n");
        u64 until = rdtsc() + us_to_cycles(hold_ms * 1000);
        while (rdtsc() < until)
            cpu_relax();
    }
    u64 t2 = rdtsc();
    if (balloon_move(bl.npages, false) < 0)
        return -1;
    result("balloon", "deflated_pages", "%llu", (unsigned long long)n);
    result("balloon", "deflate_us", "%llu", (unsigned long long)cycles_to_us(rdtsc() - t2));
    result("balloon", "stats_vq", "%d", bl.have_stats ? 1 : 0);
    return 0;
}

void balloon_idle_init(void)
{
    if (balloon_setup() != 0)
        return;
    info("balloon: following the host's target (%u pages)", virtio_cfg32(&bl.dev, 0));
}

/* Follow the host's num_pages target; answer statistics requests. */
void balloon_idle_poll(void)
{
    if (!bl.ready)
        return;
    if (bl.have_stats && vq_get(&bl.stats, NULL, NULL))
        stats_post();
    u64 target = virtio_cfg32(&bl.dev, 0);
    if (target > bl.pool_pages)
        target = bl.pool_pages;
    if (target != bl.npages) {
        bool up = target > bl.npages;
        if (balloon_move(up ? target - bl.npages : bl.npages - target, up) == 0)
            con_printf("PROBE balloon pages=%llu\n", (unsigned long long)bl.npages);
    }
}
