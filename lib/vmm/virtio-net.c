/*
 * lib/vmm/virtio-net.c — a virtio network card on a Linux tap interface.
 *
 * The idea that keeps it copy-free: the tap is opened with IFF_VNET_HDR and a 12-byte vnet
 * header, which is exactly the virtio 1.x struct virtio_net_hdr, so a transmit chain goes to the
 * tap with one writev of the guest's own buffers and a received frame lands with one readv
 * straight into the driver's receive buffers — the VMM never copies a packet. No offloads are
 * offered, so the header stays all zeros except num_buffers (1).
 *
 * One I/O thread per NIC polls the tap, the two queue kicks (eventfds written by the vCPU) and a
 * stop fd. Receive only polls the tap while the driver has buffers posted: with none left it
 * waits for the next receive kick, and frames queue up (then drop) in the tap as on a real wire.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vmm/virtio.h"

#define VIRTIO_NET_F_MAC     (1ULL << 5)
#define VIRTIO_NET_F_STATUS  (1ULL << 16)
#define VIRTIO_NET_S_LINK_UP 1

#define Q_RX        0
#define Q_TX        1
#define QUEUE_SIZE  256
#define CONFIG_SIZE 10 /* mac[6], status, max_virtqueue_pairs */
#define VNET_HDR    12 /* struct virtio_net_hdr_v1 */
#define BATCH       64 /* frames per queue before interrupting and polling again */

struct net {
    struct machine *machine;
    struct virtio_pci *vp;
    char ifname[IFNAMSIZ];
    int tap_fd, rx_kick_fd, tx_kick_fd, stop_fd;
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t lock; /* held by the worker while it touches the queues; reset waits on it */
    bool parked;          /* save in progress: leave the queues and the tap alone */
    uint8_t config[CONFIG_SIZE];
    struct virtq_chain *chain;
    struct iovec iov[VIRTQ_MAX_SEGS];
    _Atomic uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes, tx_errors, rx_errors;
};

static unsigned chain_iov(struct net *n, struct virtq_chain *c, bool writable)
{
    unsigned k = 0;
    for (unsigned i = 0; i < c->count; i++)
        if (c->segs[i].writable == writable)
            n->iov[k++] = (struct iovec){c->segs[i].ptr, c->segs[i].len};
    return k;
}

/* Send every pending transmit chain; returns true when some completed. */
static bool net_tx(struct net *n, struct virtq *q, bool *more)
{
    bool any = false;
    *more = false;
    for (unsigned done = 0;; done++) {
        if (done == BATCH) {
            *more = true;
            break;
        }
        int rc = virtq_pop(q, n->chain);
        if (rc == 0)
            break;
        if (rc < 0) {
            virtio_pci_needs_reset(n->vp, q->error);
            break;
        }
        unsigned k = chain_iov(n, n->chain, false);
        if (n->chain->readable <= VNET_HDR || n->chain->readable > VNET_HDR + 65550) {
            n->tx_errors++;
        } else {
            ssize_t w;
            do
                w = writev(n->tap_fd, n->iov, (int)k);
            while (w < 0 && errno == EINTR);
            if (w < 0) {
                n->tx_errors++; /* tap queue full or link down: dropped, as on a wire */
            } else {
                n->tx_frames++;
                n->tx_bytes += n->chain->readable - VNET_HDR;
            }
        }
        virtq_push(q, n->chain->head, 0);
        any = true;
    }
    return any;
}

/* Write num_buffers = 1 at offset 10 of the header, which may straddle segments. */
static void set_num_buffers(struct net *n, unsigned k)
{
    const uint8_t one[2] = {1, 0};
    uint64_t off = 0;
    unsigned put = 0;
    for (unsigned i = 0; i < k && put < 2; i++) {
        uint8_t *p = n->iov[i].iov_base;
        for (size_t j = 0; j < n->iov[i].iov_len && put < 2; j++, off++)
            if (off >= 10)
                p[j] = one[put++];
    }
}

/* Move frames from the tap into posted receive buffers. *starved: no buffers left. */
static bool net_rx(struct net *n, struct virtq *q, bool *starved, bool *more)
{
    bool any = false;
    *starved = *more = false;
    for (unsigned done = 0;; done++) {
        if (done == BATCH) {
            *more = true;
            break;
        }
        int rc = virtq_pop(q, n->chain);
        if (rc == 0) {
            *starved = true;
            break;
        }
        if (rc < 0) {
            virtio_pci_needs_reset(n->vp, q->error);
            *starved = true;
            break;
        }
        if (n->chain->writable < VNET_HDR + 14) {
            n->rx_errors++; /* unusable buffer: give it back empty */
            virtq_push(q, n->chain->head, 0);
            any = true;
            continue;
        }
        unsigned k = chain_iov(n, n->chain, true);
        ssize_t r;
        do
            r = readv(n->tap_fd, n->iov, (int)k);
        while (r < 0 && errno == EINTR);
        if (r <= 0) {
            virtq_unpop(q); /* nothing to read (EAGAIN): keep the buffer for the next frame */
            if (r < 0 && errno != EAGAIN)
                n->rx_errors++;
            break;
        }
        set_num_buffers(n, k);
        n->rx_frames++;
        n->rx_bytes += (uint64_t)r - VNET_HDR;
        virtq_push(q, n->chain->head, (uint32_t)r);
        any = true;
    }
    return any;
}

static void *net_worker(void *arg)
{
    struct net *n = arg;
    char name[16];
    snprintf(name, sizeof(name), "net-%.11s", n->ifname);
    pthread_setname_np(pthread_self(), name);
    bool rx_wanted = true; /* the driver may have receive buffers posted */
    for (;;) {
        struct pollfd p[4] = {
            {n->stop_fd, POLLIN, 0},
            {n->tx_kick_fd, POLLIN, 0},
            {n->rx_kick_fd, POLLIN, 0},
            {n->tap_fd, rx_wanted ? POLLIN : 0, 0},
        };
        if (poll(p, 4, -1) < 0)
            continue;
        if (p[0].revents)
            break;
        uint64_t v;
        bool tx_more = true, rx_more = p[3].revents != 0;
        if (p[1].revents && read(n->tx_kick_fd, &v, sizeof(v)) < 0) {
            /* spurious */
        }
        if (p[2].revents) {
            if (read(n->rx_kick_fd, &v, sizeof(v)) < 0) {
                /* spurious */
            }
            rx_wanted = rx_more = true;
        }
        while (tx_more || rx_more) {
            bool tx_any = false, rx_any = false, starved = false;
            pthread_mutex_lock(&n->lock);
            struct virtq *tq = virtio_pci_queue(n->vp, Q_TX), *rq = virtio_pci_queue(n->vp, Q_RX);
            if (n->parked) { /* unparking kicks both queues */
                tx_more = rx_more = rx_wanted = false;
                pthread_mutex_unlock(&n->lock);
                break;
            }
            if (tx_more && tq->ready && !tq->broken)
                tx_any = net_tx(n, tq, &tx_more);
            else
                tx_more = false;
            if (rx_more && rq->ready && !rq->broken) {
                rx_any = net_rx(n, rq, &starved, &rx_more);
                if (starved)
                    rx_wanted = false;
            } else if (rx_more) {
                rx_more = false;
                rx_wanted = false; /* not set up yet: activate kicks us */
            }
            pthread_mutex_unlock(&n->lock);
            if (tx_any)
                virtio_pci_interrupt(n->vp, Q_TX);
            if (rx_any)
                virtio_pci_interrupt(n->vp, Q_RX);
        }
    }
    return NULL;
}

static void net_notify(void *opaque, unsigned q)
{
    struct net *n = opaque;
    virtio_wake(q == Q_RX ? n->rx_kick_fd : n->tx_kick_fd);
}

static int net_queue_eventfd(void *opaque, unsigned q)
{
    struct net *n = opaque;
    return q == Q_RX ? n->rx_kick_fd : q == Q_TX ? n->tx_kick_fd : -1;
}

static void net_activate(void *opaque)
{
    net_notify(opaque, Q_RX); /* start listening on the tap */
}

static void net_reset(void *opaque)
{
    struct net *n = opaque;
    pthread_mutex_lock(&n->lock); /* wait for the worker to leave the queues */
    pthread_mutex_unlock(&n->lock);
}

static void net_park(void *opaque, bool hold)
{
    struct net *n = opaque;
    pthread_mutex_lock(&n->lock); /* returns once the worker is between requests */
    n->parked = hold;
    pthread_mutex_unlock(&n->lock);
    if (!hold) {
        net_notify(n, Q_RX);
        net_notify(n, Q_TX);
    }
}

static void net_config_read(void *opaque, uint64_t off, uint8_t *data, unsigned size)
{
    struct net *n = opaque;
    memcpy(data, n->config + off, size);
}

static void net_destroy(void *opaque)
{
    struct net *n = opaque;
    if (n->worker_started) {
        virtio_wake(n->stop_fd);
        pthread_join(n->worker, NULL);
    }
    virtio_pci_destroy(n->vp);
    int fds[] = {n->tap_fd, n->rx_kick_fd, n->tx_kick_fd, n->stop_fd};
    for (size_t i = 0; i < VS_ARRAY_SIZE(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(n->chain);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

static void net_stats(void *opaque, void *json)
{
    struct net *n = opaque;
    char name[64];
    snprintf(name, sizeof(name), "virtio-net:%s", n->ifname);
    json_stats_add(json, name, "rx_frames", (uint64_t)n->rx_frames, "rx_bytes",
                   (uint64_t)n->rx_bytes, "tx_frames", (uint64_t)n->tx_frames, "tx_bytes",
                   (uint64_t)n->tx_bytes, "rx_errors", (uint64_t)n->rx_errors, "tx_errors",
                   (uint64_t)n->tx_errors, NULL);
}

static const struct virtio_device_ops net_ops = {
    .name = "virtio-net",
    .device_id = 1,
    .pci_class = 0x0200, /* network, ethernet */
    .config_read = net_config_read,
    .queue_notify = net_notify,
    .queue_eventfd = net_queue_eventfd,
    .activate = net_activate,
    .reset = net_reset,
    .park = net_park,
};

/* Attach to (or create) tap NAME: no packet-info prefix, a virtio-net header on every frame. */
static int tap_open(struct net *n, const char *name)
{
    if (!*name || strlen(name) >= IFNAMSIZ)
        return vs_error(-EINVAL, "--net tap=%s: interface name empty or longer than %d", name,
                        IFNAMSIZ - 1);
    n->tap_fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (n->tap_fd < 0)
        return vs_error_errno(-errno, "--net tap=%s: /dev/net/tun", name);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(n->tap_fd, TUNSETIFF, &ifr) < 0)
        return vs_error_errno(-errno,
                              "--net tap=%s: cannot attach to the tap (TUNSETIFF; a tap "
                              "owned by another user, or not a tap?)",
                              name);
    int hdr = VNET_HDR;
    if (ioctl(n->tap_fd, TUNSETVNETHDRSZ, &hdr) < 0)
        return vs_error_errno(-errno, "--net tap=%s: TUNSETVNETHDRSZ", name);
    if (ioctl(n->tap_fd, TUNSETOFFLOAD, 0) < 0) {
        /* no offloads is the default anyway */
    }
    snprintf(n->ifname, sizeof(n->ifname), "%s", ifr.ifr_name);
    return 0;
}

int virtio_net_create(struct machine *m, const struct vmm_net_config *cfg)
{
    if (!cfg->tap || !*cfg->tap)
        return vs_error(-EINVAL, "--net: tap=NAME is required (the tap interface to use)");
    struct net *n = vs_calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->machine = m;
    n->tap_fd = n->rx_kick_fd = n->tx_kick_fd = n->stop_fd = -1;
    pthread_mutex_init(&n->lock, NULL);
    n->chain = vs_malloc(sizeof(*n->chain));
    int rc = machine_add_device(m, "virtio-net", n, net_destroy, net_stats);
    if (rc < 0) {
        net_destroy(n);
        return rc;
    }
    if (!n->chain)
        return -ENOMEM;
    if ((rc = tap_open(n, cfg->tap)) < 0)
        return rc;
    if (cfg->mac_set) {
        memcpy(n->config, cfg->mac, 6);
    } else { /* stable, locally administered: 52:54:00 + a hash of the tap name */
        uint32_t h = 2166136261u;
        for (const char *s = n->ifname; *s; s++)
            h = (h ^ (uint8_t)*s) * 16777619u;
        const uint8_t mac[6] = {0x52,      0x54, 0x00, (uint8_t)(h >> 16), (uint8_t)(h >> 8),
                                (uint8_t)h};
        memcpy(n->config, mac, 6);
    }
    n->config[6] = VIRTIO_NET_S_LINK_UP;
    n->config[8] = 1; /* max_virtqueue_pairs */
    n->rx_kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    n->tx_kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    n->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (n->rx_kick_fd < 0 || n->tx_kick_fd < 0 || n->stop_fd < 0)
        return vs_error_errno(-errno, "virtio-net: eventfd");
    struct virtio_pci_params p = {
        .ops = &net_ops,
        .dev = n,
        .features = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS,
        .num_queues = 2,
        .queue_max = QUEUE_SIZE,
        .config_size = CONFIG_SIZE,
    };
    if ((rc = virtio_pci_create(m, &p, &n->vp)) < 0)
        return rc;
    int e = pthread_create(&n->worker, NULL, net_worker, n);
    if (e)
        return vs_error(-e, "virtio-net: cannot start the I/O thread");
    n->worker_started = true;
    return 0;
}
