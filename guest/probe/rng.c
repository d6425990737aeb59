/*
 * rng.c — the virtio-rng workload: ask for N bytes, check the device returned them and that
 * they are not all one value, and report the rate.
 *
 * The device may return fewer bytes than asked per request, so the loop keeps posting one
 * device-writable buffer until N bytes have arrived.
 */
#include "probe.h"

int test_rng(void)
{
    struct virtio_dev d;
    struct virtqueue vq;
    if (virtio_find(4, 0, &d) < 0) {
        if (param_str("probe.tests", NULL))
            return test_error("rng: no virtio-rng device");
        return 0;
    }
    if (!virtio_negotiate(&d, 0))
        return test_error("rng: feature negotiation failed");
    if (virtio_queue_setup(&d, &vq, 0, 64) < 0)
        return test_error("rng: queue setup failed");
    virtio_driver_ok(&d);

    u64 want = param_u64("probe.rng.bytes", 4096);
    if (want < 16)
        want = 16;
    u8 *buf = alloc_pages(want);
    if (!buf)
        return test_error("rng: out of memory for %llu bytes", (unsigned long long)want);
    u64 got = 0, t0 = rdtsc();
    while (got < want) {
        u32 ask = want - got > 65536 ? 65536 : (u32)(want - got);
        struct vbuf vb = {(u64)buf + got, ask, true};
        if (vq_add(&vq, &vb, 1, 0) < 0)
            return test_error("rng: cannot queue");
        vq_kick(&vq);
        u32 len = 0;
        if (vq_wait(&vq, NULL, &len, 10000000) < 0)
            return test_error("rng: no data after 10 s (%llu of %llu bytes)",
                              (unsigned long long)got, (unsigned long long)want);
        if (len > ask)
            return test_error("rng: device claims %u bytes for a %u-byte buffer", len, ask);
        got += len;
    }
    u64 cycles = rdtsc() - t0;
    u32 seen[256 / 32] = {0};
    int distinct = 0;
    for (u64 i = 0; i < got; i++) {
        if (!(seen[buf[i] / 32] & (1u << (buf[i] % 32)))) {
            seen[buf[i] / 32] |= 1u << (buf[i] % 32);
            distinct++;
        }
    }
    result("rng", "bytes", "%llu", (unsigned long long)got);
    result("rng", "distinct_bytes", "%d", distinct);
    result("rng", "us", "%llu", (unsigned long long)cycles_to_us(cycles));
    virtio_reset(&d);
    if (distinct < 2)
        return test_error("rng: all %llu bytes are 0x%02x", (unsigned long long)got, buf[0]);
    return 0;
}
