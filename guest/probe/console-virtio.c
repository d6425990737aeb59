/*
 * console-virtio.c — the virtio-console workload: write one known line on port 0's transmitq,
 * then (unless probe.vcon.read=0) read one line from its receiveq, with the host's bytes
 * arriving in receive buffers the probe posted up front.
 *
 * The line is echoed in the result (`vcon.rx=…`) so a test can check input crossed intact;
 * characters outside printable ASCII are replaced by '?' to keep result lines one line.
 */
#include "probe.h"

#define VCON_LINE  "PROBE-VCON hello from the probe guest"
#define RX_BUFS    8
#define RX_BUF_LEN 256

int test_vcon(void)
{
    struct virtio_dev d;
    static struct virtqueue rxq, txq;
    if (virtio_find(3, 0, &d) < 0) {
        if (param_str("probe.tests", NULL))
            return test_error("vcon: no virtio-console device");
        return 0;
    }
    if (!virtio_negotiate(&d, 1 /* VIRTIO_CONSOLE_F_SIZE */))
        return test_error("vcon: feature negotiation failed");
    if (virtio_queue_setup(&d, &rxq, 0, 64) < 0 || virtio_queue_setup(&d, &txq, 1, 64) < 0)
        return test_error("vcon: queue setup failed");
    virtio_driver_ok(&d);
    if (d.features & 1)
        result("vcon", "size", "%ux%u", virtio_cfg16(&d, 0), virtio_cfg16(&d, 2));

    u8 *rx = alloc_pages(RX_BUFS * RX_BUF_LEN);
    u8 *tx = alloc_pages(4096);
    if (!rx || !tx)
        return test_error("vcon: out of memory");
    for (int i = 0; i < RX_BUFS; i++) {
        struct vbuf vb = {(u64)(rx + i * RX_BUF_LEN), RX_BUF_LEN, true};
        if (vq_add(&rxq, &vb, 1, (u64)i) < 0)
            return test_error("vcon: cannot post receive buffers");
    }
    vq_kick(&rxq);

    u64 t0 = rdtsc();
    size_t n = strlen(VCON_LINE);
    memcpy(tx, VCON_LINE "\n", n + 1);
    struct vbuf vb = {(u64)tx, (u32)(n + 1), false};
    if (vq_add(&txq, &vb, 1, 0) < 0)
        return test_error("vcon: cannot queue the line");
    vq_kick(&txq);
    if (vq_wait(&txq, NULL, NULL, 5000000) < 0)
        return test_error("vcon: the device did not take the line within 5 s");
    result("vcon", "tx", "ok");
    result("vcon", "tx_us", "%llu", (unsigned long long)cycles_to_us(rdtsc() - t0));

    if (!param_u64("probe.vcon.read", 1)) {
        virtio_reset(&d);
        return 0;
    }
    u64 timeout_ms = param_u64("probe.vcon.timeout_ms", 10000);
    char line[RX_BUF_LEN];
    size_t len = 0;
    bool done = false;
    while (!done) {
        u64 token;
        u32 got;
        if (vq_wait(&rxq, &token, &got, timeout_ms * 1000) < 0) {
            result("vcon", "rx", "timeout");
            virtio_reset(&d);
            return test_error("vcon: no input line within %llu ms", (unsigned long long)timeout_ms);
        }
        if (token >= RX_BUFS || got > RX_BUF_LEN) {
            virtio_reset(&d);
            return test_error("vcon: bad receive completion (buffer %llu, %u bytes)",
                              (unsigned long long)token, got);
        }
        const u8 *b = rx + token * RX_BUF_LEN;
        for (u32 i = 0; i < got && !done; i++) {
            if (b[i] == '\n' || b[i] == '\r')
                done = len > 0;
            else if (len + 1 < sizeof(line))
                line[len++] = (b[i] >= 0x20 && b[i] < 0x7f) ? (char)b[i] : '?';
        }
        struct vbuf again = {(u64)b, RX_BUF_LEN, true}; /* give the buffer back */
        vq_add(&rxq, &again, 1, token);
        vq_kick(&rxq);
    }
    line[len] = 0;
    result("vcon", "rx", "%s", line);
    virtio_reset(&d);
    return 0;
}
