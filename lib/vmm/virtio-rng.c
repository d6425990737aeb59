/*
 * lib/vmm/virtio-rng.c — a virtio entropy device fed by the host's getrandom(2).
 *
 * One request queue: every chain the driver posts is a set of device-writable buffers, and the
 * device fills them straight from getrandom (no bounce buffer) on its own worker thread. The vCPU
 * that kicks only writes an eventfd, so a guest asking for megabytes never stalls a vCPU.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include "vmm/virtio.h"

#define QUEUE_SIZE 64
/* Bytes handed out per chain at most: a driver asking for more gets a short answer. */
#define MAX_PER_REQUEST (1u << 20)

struct rng {
    struct machine *machine;
    struct virtio_pci *vp;
    int kick_fd, stop_fd;
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t lock; /* held by the worker while it touches the queue; reset waits on it */
    bool parked;          /* save in progress: leave the queue alone */
    struct virtq_chain *chain;
    _Atomic uint64_t requests, bytes, errors;
};

/* Fill the writable segments of C with random bytes; returns the bytes written. */
static uint32_t rng_fill(struct rng *r, struct virtq_chain *c)
{
    uint32_t done = 0;
    for (unsigned i = 0; i < c->count && done < MAX_PER_REQUEST; i++) {
        struct virtq_seg *s = &c->segs[i];
        if (!s->writable)
            continue;
        uint32_t len = VS_MIN(s->len, MAX_PER_REQUEST - done), got = 0;
        while (got < len) {
            ssize_t n = getrandom(s->ptr + got, len - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                r->errors++;
                return done + got;
            }
            got += (uint32_t)n;
        }
        done += got;
    }
    return done;
}

static void rng_process(struct rng *r)
{
    pthread_mutex_lock(&r->lock);
    struct virtq *q = virtio_pci_queue(r->vp, 0);
    bool any = false;
    for (; q->ready &&
           !r->parked;) { /* kicks may arrive through the ioeventfd before the queue is enabled */
        int rc = virtq_pop(q, r->chain);
        if (rc == 0)
            break;
        if (rc < 0) {
            virtio_pci_needs_reset(r->vp, q->error);
            break;
        }
        uint32_t n = rng_fill(r, r->chain);
        r->requests++;
        r->bytes += n;
        virtq_push(q, r->chain->head, n);
        any = true;
    }
    pthread_mutex_unlock(&r->lock);
    if (any)
        virtio_pci_interrupt(r->vp, 0);
}

static void *rng_worker(void *arg)
{
    struct rng *r = arg;
    pthread_setname_np(pthread_self(), "virtio-rng");
    while (virtio_worker_wait(r->kick_fd, r->stop_fd))
        rng_process(r);
    return NULL;
}

static void rng_notify(void *opaque, unsigned q)
{
    struct rng *r = opaque;
    (void)q;
    virtio_wake(r->kick_fd);
}

static int rng_queue_eventfd(void *opaque, unsigned q)
{
    struct rng *r = opaque;
    return q == 0 ? r->kick_fd : -1;
}

static void rng_reset(void *opaque)
{
    struct rng *r = opaque;
    pthread_mutex_lock(&r->lock); /* wait for the worker to leave the queue */
    pthread_mutex_unlock(&r->lock);
}

static void rng_park(void *opaque, bool hold)
{
    struct rng *r = opaque;
    pthread_mutex_lock(&r->lock); /* returns once the worker is between requests */
    r->parked = hold;
    pthread_mutex_unlock(&r->lock);
    if (!hold) {
        rng_notify(r, 0);
    }
}

static void rng_config_read(void *opaque, uint64_t off, uint8_t *data, unsigned size)
{
    (void)opaque;
    (void)off;
    memset(data, 0, size); /* virtio-rng has no config space */
}

static void rng_destroy(void *opaque)
{
    struct rng *r = opaque;
    if (r->worker_started) {
        virtio_wake(r->stop_fd);
        pthread_join(r->worker, NULL);
    }
    virtio_pci_destroy(r->vp);
    if (r->kick_fd >= 0)
        close(r->kick_fd);
    if (r->stop_fd >= 0)
        close(r->stop_fd);
    free(r->chain);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static void rng_stats(void *opaque, void *json)
{
    struct rng *r = opaque;
    json_stats_add(json, "virtio-rng", "requests", (uint64_t)r->requests, "bytes",
                   (uint64_t)r->bytes, "errors", (uint64_t)r->errors, NULL);
}

static const struct virtio_device_ops rng_ops = {
    .name = "virtio-rng",
    .device_id = 4,
    .pci_class = 0x00ff, /* unclassified, other */
    .config_read = rng_config_read,
    .queue_notify = rng_notify,
    .queue_eventfd = rng_queue_eventfd,
    .reset = rng_reset,
    .park = rng_park,
};

int virtio_rng_create(struct machine *m)
{
    struct rng *r = vs_calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->machine = m;
    r->kick_fd = r->stop_fd = -1;
    pthread_mutex_init(&r->lock, NULL);
    r->chain = vs_malloc(sizeof(*r->chain));
    int rc = machine_add_device(m, "virtio-rng", r, rng_destroy, rng_stats);
    if (rc < 0) {
        rng_destroy(r);
        return rc;
    }
    if (!r->chain)
        return -ENOMEM;
    r->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (r->kick_fd < 0 || r->stop_fd < 0)
        return vs_error_errno(-errno, "virtio-rng: eventfd");
    struct virtio_pci_params p = {
        .ops = &rng_ops,
        .dev = r,
        .features = 0,
        .num_queues = 1,
        .queue_max = QUEUE_SIZE,
        .config_size = 0,
    };
    if ((rc = virtio_pci_create(m, &p, &r->vp)) < 0)
        return rc;
    int e = pthread_create(&r->worker, NULL, rng_worker, r);
    if (e)
        return vs_error(-e, "virtio-rng: cannot start the I/O thread");
    r->worker_started = true;
    return 0;
}
