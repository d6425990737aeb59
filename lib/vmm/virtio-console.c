/*
 * lib/vmm/virtio-console.c — a virtio console (type 3) with one port, on the same backends as
 * the serial console (stdio, file, pty, unix socket: lib/vmm/console.c).
 *
 * Two queues: the guest posts device-writable buffers on receiveq (0) for input and readable
 * buffers on transmitq (1) for output. One worker thread does both: it writes transmitted bytes
 * to the backend, and moves host input — which the console's reader thread appends to a bounded
 * pending buffer — into receive buffers whenever both exist. The vCPU only writes eventfds.
 * Unlike the UART, output is never dropped for want of a unix-socket client: it waits in the
 * transmit ring until one connects.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "vmm/virtio.h"

#define QUEUE_SIZE            128
#define VIRTIO_CONSOLE_F_SIZE (1ULL << 0)
/* Host input held while the guest has no receive buffer; more is dropped (like a full UART). */
#define PENDING_MAX (64u << 10)
#define CONFIG_SIZE 12 /* cols u16, rows u16, max_nr_ports u32, emerg_wr u32 */

struct vcon {
    struct machine *machine;
    struct console *console;
    struct virtio_pci *vp;
    int kick_fd[2], input_fd, stop_fd;
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t lock; /* queues (worker), reset waits on it */
    bool parked;          /* save in progress: leave the queues alone */
    struct virtq_chain *chain;
    pthread_mutex_t pending_lock; /* host input not yet given to the guest */
    uint8_t *pending;
    size_t pending_len;
    _Atomic uint64_t tx_bytes, rx_bytes, rx_dropped, errors;
};

/* Console reader thread: keep the bytes until the guest has a buffer for them. */
static void vcon_input(void *opaque, const uint8_t *buf, size_t len)
{
    struct vcon *v = opaque;
    pthread_mutex_lock(&v->pending_lock);
    size_t room = PENDING_MAX - v->pending_len, n = VS_MIN(len, room);
    memcpy(v->pending + v->pending_len, buf, n);
    v->pending_len += n;
    v->rx_dropped += len - n;
    pthread_mutex_unlock(&v->pending_lock);
    virtio_wake(v->input_fd);
}

/* Output stays in the ring while a unix-socket backend has no client (virtio's own flow control,
 * unlike the UART which must drop); *blocked tells the worker to look again soon. */
static bool vcon_transmit(struct vcon *v, bool *blocked)
{
    struct virtq *q = virtio_pci_queue(v->vp, 1);
    bool any = false;
    *blocked = q->ready && !console_can_write(v->console);
    while (q->ready && !*blocked) {
        int rc = virtq_pop(q, v->chain);
        if (rc == 0)
            break;
        if (rc < 0) {
            virtio_pci_needs_reset(v->vp, q->error);
            break;
        }
        for (unsigned i = 0; i < v->chain->count; i++) {
            struct virtq_seg *s = &v->chain->segs[i];
            if (!s->writable) {
                console_write(v->console, s->ptr, s->len);
                v->tx_bytes += s->len;
            }
        }
        virtq_push(q, v->chain->head, 0);
        any = true;
    }
    return any;
}

static bool vcon_receive(struct vcon *v)
{
    struct virtq *q = virtio_pci_queue(v->vp, 0);
    bool any = false;
    pthread_mutex_lock(&v->pending_lock);
    while (q->ready && v->pending_len) {
        int rc = virtq_pop(q, v->chain);
        if (rc == 0)
            break; /* no buffer yet: the guest's next kick on receiveq wakes us */
        if (rc < 0) {
            virtio_pci_needs_reset(v->vp, q->error);
            break;
        }
        size_t done = 0;
        for (unsigned i = 0; i < v->chain->count && done < v->pending_len; i++) {
            struct virtq_seg *s = &v->chain->segs[i];
            if (!s->writable)
                continue;
            size_t n = VS_MIN((size_t)s->len, v->pending_len - done);
            memcpy(s->ptr, v->pending + done, n);
            done += n;
        }
        memmove(v->pending, v->pending + done, v->pending_len - done);
        v->pending_len -= done;
        v->rx_bytes += done;
        virtq_push(q, v->chain->head, (uint32_t)done);
        any = true;
    }
    pthread_mutex_unlock(&v->pending_lock);
    return any;
}

static void *vcon_worker(void *arg)
{
    struct vcon *v = arg;
    pthread_setname_np(pthread_self(), "virtio-console");
    bool blocked = false;
    for (;;) {
        struct pollfd p[4] = {{v->stop_fd, POLLIN, 0},
                              {v->kick_fd[0], POLLIN, 0},
                              {v->kick_fd[1], POLLIN, 0},
                              {v->input_fd, POLLIN, 0}};
        int ready = poll(p, 4, blocked ? 20 : -1);
        if (ready < 0)
            continue;
        if (p[0].revents)
            break;
        uint64_t n;
        for (int i = 1; i < 4; i++)
            if (p[i].revents && read(p[i].fd, &n, sizeof(n)) < 0) {
                /* spurious wakeup */
            }
        pthread_mutex_lock(&v->lock);
        if (v->parked) { /* unparking kicks both queues */
            blocked = false;
            pthread_mutex_unlock(&v->lock);
            continue;
        }
        bool tx = vcon_transmit(v, &blocked);
        bool rx = vcon_receive(v);
        pthread_mutex_unlock(&v->lock);
        if (tx)
            virtio_pci_interrupt(v->vp, 1);
        if (rx)
            virtio_pci_interrupt(v->vp, 0);
    }
    return NULL;
}

static void vcon_notify(void *opaque, unsigned q)
{
    struct vcon *v = opaque;
    if (q < 2)
        virtio_wake(v->kick_fd[q]);
}

static int vcon_queue_eventfd(void *opaque, unsigned q)
{
    struct vcon *v = opaque;
    return q < 2 ? v->kick_fd[q] : -1;
}

static void vcon_reset(void *opaque)
{
    struct vcon *v = opaque;
    pthread_mutex_lock(&v->lock); /* wait for the worker to leave the queues */
    pthread_mutex_unlock(&v->lock);
}

static void vcon_park(void *opaque, bool hold)
{
    struct vcon *v = opaque;
    pthread_mutex_lock(&v->lock); /* returns once the worker is between requests */
    v->parked = hold;
    pthread_mutex_unlock(&v->lock);
    if (!hold) {
        virtio_wake(v->kick_fd[0]);
        virtio_wake(v->kick_fd[1]);
    }
}

/* Host input the guest has not taken yet travels with the state. */
static int vcon_save(void *opaque, struct vmstate_writer *w)
{
    struct vcon *v = opaque;
    pthread_mutex_lock(&v->pending_lock);
    vmw_u32(w, (uint32_t)v->pending_len);
    vmw_bytes(w, v->pending, v->pending_len);
    pthread_mutex_unlock(&v->pending_lock);
    return 0;
}

static int vcon_load(void *opaque, struct vmstate_reader *r)
{
    struct vcon *v = opaque;
    uint32_t n = vmr_u32(r);
    if (!vmr_check(r, n <= PENDING_MAX))
        return -EINVAL;
    pthread_mutex_lock(&v->pending_lock);
    vmr_bytes(r, v->pending, n);
    v->pending_len = r->failed ? 0 : n;
    pthread_mutex_unlock(&v->pending_lock);
    return r->failed ? -EINVAL : 0;
}

static void vcon_config_read(void *opaque, uint64_t off, uint8_t *data, unsigned size)
{
    (void)opaque;
    /* 80x25, one port, no emergency write. */
    uint8_t cfg[CONFIG_SIZE] = {80, 0, 25, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    memset(data, 0, size);
    if (off < sizeof(cfg))
        memcpy(data, cfg + off, VS_MIN((size_t)size, sizeof(cfg) - off));
}

static void vcon_destroy(void *opaque)
{
    struct vcon *v = opaque;
    if (v->console)
        console_set_input(v->console, NULL, NULL);
    if (v->worker_started) {
        virtio_wake(v->stop_fd);
        pthread_join(v->worker, NULL);
    }
    virtio_pci_destroy(v->vp);
    int fds[] = {v->kick_fd[0], v->kick_fd[1], v->input_fd, v->stop_fd};
    for (size_t i = 0; i < VS_ARRAY_SIZE(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(v->chain);
    free(v->pending);
    pthread_mutex_destroy(&v->lock);
    pthread_mutex_destroy(&v->pending_lock);
    free(v);
}

static void vcon_stats(void *opaque, void *json)
{
    struct vcon *v = opaque;
    json_stats_add(json, "virtio-console", "tx_bytes", (uint64_t)v->tx_bytes, "rx_bytes",
                   (uint64_t)v->rx_bytes, "rx_dropped", (uint64_t)v->rx_dropped, NULL);
}

static const struct virtio_device_ops vcon_ops = {
    .name = "virtio-console",
    .device_id = 3,
    .pci_class = 0x0780, /* simple communication controller, other */
    .config_read = vcon_config_read,
    .queue_notify = vcon_notify,
    .queue_eventfd = vcon_queue_eventfd,
    .reset = vcon_reset,
    .park = vcon_park,
    .save = vcon_save,
    .load = vcon_load,
};

int virtio_console_create(struct machine *m, struct console *console)
{
    struct vcon *v = vs_calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->machine = m;
    v->kick_fd[0] = v->kick_fd[1] = v->input_fd = v->stop_fd = -1;
    pthread_mutex_init(&v->lock, NULL);
    pthread_mutex_init(&v->pending_lock, NULL);
    v->chain = vs_malloc(sizeof(*v->chain));
    v->pending = vs_malloc(PENDING_MAX);
    int rc = machine_add_device(m, "virtio-console", v, vcon_destroy, vcon_stats);
    if (rc < 0) {
        vcon_destroy(v);
        return rc;
    }
    if (!v->chain || !v->pending)
        return -ENOMEM;
    for (int i = 0; i < 2; i++)
        v->kick_fd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    v->input_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    v->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (v->kick_fd[0] < 0 || v->kick_fd[1] < 0 || v->input_fd < 0 || v->stop_fd < 0)
        return vs_error_errno(-errno, "virtio-console: eventfd");
    struct virtio_pci_params p = {
        .ops = &vcon_ops,
        .dev = v,
        .features = VIRTIO_CONSOLE_F_SIZE,
        .num_queues = 2,
        .queue_max = QUEUE_SIZE,
        .config_size = CONFIG_SIZE,
    };
    if ((rc = virtio_pci_create(m, &p, &v->vp)) < 0)
        return rc;
    int e = pthread_create(&v->worker, NULL, vcon_worker, v);
    if (e)
        return vs_error(-e, "virtio-console: cannot start the I/O thread");
    v->worker_started = true;
    v->console = console;
    console_set_input(console, vcon_input, v);
    return 0;
}
