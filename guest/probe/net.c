/*
 * net.c — the virtio-net workload: print the MAC, then either ping (send numbered frames with a
 * window in flight, count the echoes, report frames/s and round-trip time) or echo (answer every
 * probe ping with source and destination swapped until told to stop).
 *
 * The idea: with two NICs in one VM (say, both on one QEMU hub, or two taps on a bridge) the
 * probe pings from the first and echoes on the others in the same polling loop, so one guest
 * exercises transmit and receive; across two VMs one runs role=echo, the other role=ping.
 * Probe frames use the local-experimental EtherType 0x88b5; nothing else is ever answered.
 * probe.net.frame_len pads pings (echoes copy the length they got) so the same loop measures
 * bandwidth. The net_raw_* calls lend the first NIC to protocol clients such as dhcp.c.
 */
#include "probe.h"

#define VIRTIO_NET_F_MAC (1ull << 5)
#define NET_HDR_LEN      12 /* struct virtio_net_hdr with num_buffers (VERSION_1) */
#define RX_BUF_LEN       2048
#define RING             128
#define ETHERTYPE_PROBE  0x88b5
#define MAX_NICS         4
#define FRAME_MIN        64   /* sizeof(struct probe_frame) */
#define FRAME_MAX        1514 /* Ethernet without FCS; fits RX_BUF_LEN with the header */

enum { MSG_PING = 0, MSG_PONG = 1, MSG_STOP = 2 };

struct probe_frame {
    u8 dst[6], src[6];
    u8 type_be[2];
    char magic[4]; /* "VPRB" */
    u8 msg;
    u8 pad[3];
    u32 seq;
    u64 tsc;
    u8 fill[30];
} __attribute__((packed));

struct nic {
    struct virtio_dev dev;
    struct virtqueue rx, tx;
    u8 mac[6];
    u8 *rx_bufs, *tx_bufs;
    u32 tx_next;
    u64 rx_frames, tx_frames, echoed;
    bool stop_seen;
};

static struct nic nics[MAX_NICS];
static int nnics;

static int rx_post(struct nic *n, u32 i)
{
    struct vbuf vb = {(u64)(n->rx_bufs + (u64)i * RX_BUF_LEN), RX_BUF_LEN, true};
    return vq_add(&n->rx, &vb, 1, i);
}

static int nic_setup(struct nic *n, int nth)
{
    if (virtio_find(1, nth, &n->dev) < 0)
        return 1;
    u64 f = virtio_negotiate(&n->dev, VIRTIO_NET_F_MAC);
    if (!f)
        return test_error("%s: feature negotiation failed", n->dev.name);
    if (virtio_queue_setup(&n->dev, &n->rx, 0, RING) < 0 ||
        virtio_queue_setup(&n->dev, &n->tx, 1, RING) < 0)
        return test_error("%s: queue setup failed", n->dev.name);
    if (f & VIRTIO_NET_F_MAC) {
        for (int i = 0; i < 6; i++)
            n->mac[i] = virtio_cfg8(&n->dev, (u32)i);
    } else {
        const u8 mac[6] = {0x52, 0x54, 0x00, 0x9b, 0x00, (u8)nth};
        memcpy(n->mac, mac, 6);
    }
    n->rx_bufs = alloc_pages((u64)n->rx.size * RX_BUF_LEN);
    n->tx_bufs = alloc_pages((u64)n->tx.size * RX_BUF_LEN);
    if (!n->rx_bufs || !n->tx_bufs)
        return test_error("%s: out of memory", n->dev.name);
    virtio_driver_ok(&n->dev);
    for (u32 i = 0; i < n->rx.size; i++)
        rx_post(n, i);
    vq_kick(&n->rx);
    char key[32];
    snprint(key, sizeof(key), "mac");
    result(n->dev.name, key, "%02x:%02x:%02x:%02x:%02x:%02x", n->mac[0], n->mac[1], n->mac[2],
           n->mac[3], n->mac[4], n->mac[5]);
    return 0;
}

/* Reclaim finished transmissions; returns how many slots are free. */
static u32 tx_reclaim(struct nic *n)
{
    while (vq_get(&n->tx, NULL, NULL))
        ;
    return n->tx.num_free;
}

/* Queue one frame of `len` bytes (zero-padded beyond `copy`); the caller kicks. */
static int tx_raw(struct nic *n, const void *frame, u32 copy, u32 len)
{
    if (len > FRAME_MAX || copy > len || tx_reclaim(n) < 1)
        return -1;
    u8 *buf = n->tx_bufs + (u64)(n->tx_next++ % n->tx.size) * RX_BUF_LEN;
    memset(buf, 0, NET_HDR_LEN);
    memcpy(buf + NET_HDR_LEN, frame, copy);
    if (len > copy)
        memset(buf + NET_HDR_LEN + copy, 0, len - copy);
    struct vbuf vb = {(u64)buf, NET_HDR_LEN + len, false};
    if (vq_add(&n->tx, &vb, 1, 0) < 0)
        return -1;
    n->tx_frames++;
    return 0;
}

static u32 frame_len = FRAME_MIN; /* probe.net.frame_len, for pings */

static int tx_frame(struct nic *n, const struct probe_frame *fr)
{
    return tx_raw(n, fr, sizeof(*fr), fr->msg == MSG_PING ? frame_len : sizeof(*fr));
}

static void frame_init(struct probe_frame *fr, const u8 *dst, const u8 *src, u8 msg, u32 seq)
{
    memset(fr, 0, sizeof(*fr));
    memcpy(fr->dst, dst, 6);
    memcpy(fr->src, src, 6);
    fr->type_be[0] = ETHERTYPE_PROBE >> 8;
    fr->type_be[1] = ETHERTYPE_PROBE & 0xff;
    memcpy(fr->magic, "VPRB", 4);
    fr->msg = msg;
    fr->seq = seq;
    fr->tsc = rdtsc();
}

/* Poll one NIC's receive ring. Pings are echoed when `echo`; pongs addressed to us are passed to
 * `on_pong`. Returns the number of frames seen. */
static u32 rx_poll(struct nic *n, bool echo, void (*on_pong)(const struct probe_frame *))
{
    u64 token;
    u32 len, seen = 0;
    bool echoed = false;
    while (vq_get(&n->rx, &token, &len)) {
        seen++;
        n->rx_frames++;
        const struct probe_frame *fr =
            (const void *)(n->rx_bufs + token * RX_BUF_LEN + NET_HDR_LEN);
        if (len >= NET_HDR_LEN + 22 && len <= RX_BUF_LEN &&
            fr->type_be[0] == (ETHERTYPE_PROBE >> 8) &&
            fr->type_be[1] == (ETHERTYPE_PROBE & 0xff) && !memcmp(fr->magic, "VPRB", 4)) {
            if (fr->msg == MSG_PING && echo) {
                /* echo as many bytes as arrived (a short frame is padded to the struct) */
                u32 got = len - NET_HDR_LEN, reply_len = got;
                if (reply_len < sizeof(struct probe_frame))
                    reply_len = sizeof(struct probe_frame);
                if (reply_len > FRAME_MAX)
                    reply_len = got = FRAME_MAX;
                struct probe_frame reply;
                memset(&reply, 0, sizeof(reply));
                memcpy(&reply, fr, got < sizeof(reply) ? got : sizeof(reply));
                memcpy(reply.dst, fr->src, 6);
                memcpy(reply.src, n->mac, 6);
                reply.msg = MSG_PONG;
                if (tx_raw(n, &reply, sizeof(reply), reply_len) == 0) {
                    n->echoed++;
                    echoed = true;
                }
            } else if (fr->msg == MSG_PONG && on_pong && !memcmp(fr->dst, n->mac, 6)) {
                on_pong(fr);
            } else if (fr->msg == MSG_STOP) {
                n->stop_seen = true;
            }
        }
        rx_post(n, (u32)token);
    }
    if (seen)
        vq_kick(&n->rx);
    if (echoed)
        vq_kick(&n->tx);
    return seen;
}

static u64 pongs, rtt_sum, last_pong_seq;

static void on_pong(const struct probe_frame *fr)
{
    pongs++;
    rtt_sum += rdtsc() - fr->tsc;
    last_pong_seq = fr->seq;
}

static const u8 broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static int net_ping(void)
{
    struct nic *n = &nics[0];
    u64 count = param_u64("probe.net.count", 1000);
    u64 window = param_u64("probe.net.window", 32);
    u64 timeout = us_to_cycles(param_u64("probe.net.timeout_ms", 5000) * 1000);
    if (window < 1)
        window = 1;
    if (window > n->tx.size / 2)
        window = n->tx.size / 2;
    u64 want_len = param_u64("probe.net.frame_len", FRAME_MIN);
    frame_len = want_len < FRAME_MIN ? FRAME_MIN : want_len > FRAME_MAX ? FRAME_MAX : (u32)want_len;
    pongs = rtt_sum = 0;
    u64 sent = 0, t0 = rdtsc(), last_progress = t0;
    while (pongs < count) {
        bool kicked = false;
        while (sent < count && sent - pongs < window) {
            struct probe_frame fr;
            frame_init(&fr, broadcast, n->mac, MSG_PING, (u32)sent);
            if (tx_frame(n, &fr) < 0)
                break;
            sent++;
            kicked = true;
        }
        if (kicked)
            vq_kick(&n->tx);
        u64 before = pongs;
        rx_poll(n, false, on_pong);
        for (int i = 1; i < nnics; i++) /* local echo responders */
            rx_poll(&nics[i], true, NULL);
        u64 now = rdtsc();
        if (pongs != before)
            last_progress = now;
        else if (now - last_progress > timeout)
            break; /* frames were lost: report what came back */
    }
    u64 cycles = rdtsc() - t0;
    for (int k = 0; k < 3; k++) { /* tell echo peers to stop */
        struct probe_frame fr;
        frame_init(&fr, broadcast, n->mac, MSG_STOP, 0);
        tx_frame(n, &fr);
    }
    vq_kick(&n->tx);
    result("net", "tx_frames", "%llu", (unsigned long long)sent);
    result("net", "rx_replies", "%llu", (unsigned long long)pongs);
    result("net", "us", "%llu", (unsigned long long)cycles_to_us(cycles));
    if (tsc_khz && cycles)
        result("net", "pps", "%llu", (unsigned long long)(pongs * tsc_khz * 1000 / cycles));
    if (pongs)
        result("net", "rtt_us", "%llu", (unsigned long long)cycles_to_us(rtt_sum / pongs));
    if (frame_len != FRAME_MIN) { /* only when asked for: the default output stays as it was */
        result("net", "frame_len", "%u", frame_len);
        if (tsc_khz && cycles) /* echoed payload back at the pinger, one direction */
            result("net", "kbit_s", "%llu",
                   (unsigned long long)(pongs * frame_len * 8 * tsc_khz / cycles));
    }
    for (int i = 1; i < nnics; i++)
        result(nics[i].dev.name, "echoed", "%llu", (unsigned long long)nics[i].echoed);
    if (!pongs)
        return test_error("net: no echo for any of %llu frames", (unsigned long long)sent);
    return 0;
}

static int net_echo(void)
{
    u64 count = param_u64("probe.net.count", 0); /* 0: until a stop frame */
    u64 timeout = us_to_cycles(param_u64("probe.net.timeout_ms", 60000) * 1000);
    u64 t0 = rdtsc(), last = t0, total = 0;
    con_puts("PROBE net echo ready\n");
    for (;;) {
        u64 before = total;
        total = 0;
        bool stop = false;
        for (int i = 0; i < nnics; i++) {
            rx_poll(&nics[i], true, NULL);
            total += nics[i].echoed;
            stop |= nics[i].stop_seen;
        }
        u64 now = rdtsc();
        if (total != before)
            last = now;
        if (stop || (count && total >= count) || now - last > timeout)
            break;
        cpu_relax();
    }
    for (int i = 0; i < nnics; i++) {
        tx_reclaim(&nics[i]);
        result(nics[i].dev.name, "echoed", "%llu", (unsigned long long)nics[i].echoed);
        result(nics[i].dev.name, "rx_frames", "%llu", (unsigned long long)nics[i].rx_frames);
    }
    if (!total)
        return test_error("net: echo role saw no ping");
    return 0;
}

int test_net(void)
{
    nnics = 0;
    for (int i = 0; i < MAX_NICS; i++) {
        int rc = nic_setup(&nics[nnics], i);
        if (rc == 1)
            break;
        if (rc < 0)
            return -1;
        nnics++;
    }
    result(NULL, "net.devices", "%d", nnics);
    if (!nnics) {
        if (param_str("probe.tests", NULL) || !strcmp(param_str("probe.net", "frames"), "dhcp"))
            return test_error("net: no virtio-net device");
        return 0;
    }
    const char *role = param_str("probe.net.role", "ping");
    int rc;
    if (!strcmp(param_str("probe.net", "frames"), "dhcp"))
        rc = dhcp_run();
    else
        rc = !strcmp(role, "echo") ? net_echo() : net_ping();
    for (int i = 0; i < nnics; i++)
        virtio_reset(&nics[i].dev);
    return rc;
}

/* probe.tests=dhcp: only the first NIC, only DHCP. */
int test_dhcp(void)
{
    nnics = 0;
    int rc = nic_setup(&nics[0], 0);
    if (rc == 1)
        return test_error("dhcp: no virtio-net device");
    if (rc < 0)
        return -1;
    nnics = 1;
    rc = dhcp_run();
    virtio_reset(&nics[0].dev);
    return rc;
}

/* ---- raw frames on the first NIC, for dhcp.c ------------------------------------------------ */

int net_raw_send(const void *frame, u32 len)
{
    struct nic *n = &nics[0];
    if (!nnics || tx_raw(n, frame, len, len < 60 ? 60 : len) < 0)
        return -1;
    vq_kick(&n->tx);
    return 0;
}

/* Copy the next received frame (without the virtio header) into buf; 0 when none is waiting.
 * Frames longer than `cap` or shorter than an Ethernet header are dropped here. */
u32 net_raw_recv(void *buf, u32 cap, const u8 **mac)
{
    struct nic *n = &nics[0];
    u64 token;
    u32 len, got = 0;
    if (mac)
        *mac = n->mac;
    if (!nnics)
        return 0;
    tx_reclaim(n);
    while (!got && vq_get(&n->rx, &token, &len)) {
        n->rx_frames++;
        if (token < n->rx.size && len >= NET_HDR_LEN + 14 && len <= RX_BUF_LEN &&
            len - NET_HDR_LEN <= cap) {
            got = len - NET_HDR_LEN;
            memcpy(buf, n->rx_bufs + token * RX_BUF_LEN + NET_HDR_LEN, got);
        }
        if (token < n->rx.size)
            rx_post(n, (u32)token);
        vq_kick(&n->rx);
    }
    return got;
}
