/*
 * lib/vmm/virtio-balloon.c — a virtio memory balloon: the host sets a target in pages, the guest
 * driver hands pages over (inflate) or takes them back (deflate), and posts memory statistics.
 *
 * The idea that makes inflation give memory back: guest RAM is a private anonymous mapping, so
 * madvise(MADV_DONTNEED) on the pages the guest reports frees their host backing at once (the
 * VMM's RSS drops) and a later guest touch simply faults in a zero page — deflate needs no work.
 * Runs of consecutive page numbers are discarded with one madvise. The stats queue follows the
 * spec's handshake: the device keeps the driver's buffer and gives it back to ask for fresh
 * numbers (when the host reads the stats or changes the target).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm/virtio.h"

#define VIRTIO_BALLOON_F_MUST_TELL_HOST (1ULL << 0)
#define VIRTIO_BALLOON_F_STATS_VQ       (1ULL << 1)

#define Q_INFLATE   0
#define Q_DEFLATE   1
#define Q_STATS     2
#define QUEUE_SIZE  64
#define CONFIG_SIZE 8
#define PAGE_SHIFT  12
#define NUM_STATS   16 /* tags the spec defines (0..15) */

struct balloon {
    struct machine *machine;
    struct virtio_pci *vp;
    int kick_fd, stop_fd;
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t lock; /* queues, config, the held stats buffer */
    bool parked;          /* save in progress: leave the queues alone */
    struct virtq_chain *chain;
    uint32_t num_pages; /* host's target */
    uint32_t actual;    /* what the driver says it holds */
    bool stats_held;    /* the driver's stats buffer is with us */
    uint16_t stats_head;
    bool stats_valid;
    uint64_t stats[NUM_STATS];
    _Atomic uint64_t inflated, deflated, discarded_bytes, madvise_errors, stats_updates, bad_pfns;
};

/* Drop the host backing of guest pages [gpa, gpa + len). */
static void balloon_discard(struct balloon *b, uint64_t gpa, uint64_t len)
{
    void *p = guest_mem_ptr(&b->machine->mem, gpa, len);
    if (!p) {
        b->bad_pfns += len >> PAGE_SHIFT;
        return;
    }
    if (madvise(p, len, MADV_DONTNEED) < 0)
        b->madvise_errors++;
    else
        b->discarded_bytes += len;
}

/* An inflate or deflate request: an array of little-endian u32 page frame numbers. */
static void balloon_pages(struct balloon *b, struct virtq_chain *c, bool inflate)
{
    uint64_t n = c->readable / 4, run_start = 0, run_len = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t pfn;
        if (!virtq_chain_read(c, i * 4, &pfn, 4))
            break;
        if (!inflate)
            continue; /* deflated pages fault back in on first touch */
        uint64_t gpa = (uint64_t)pfn << PAGE_SHIFT;
        if (run_len && gpa == run_start + run_len) {
            run_len += 1ULL << PAGE_SHIFT;
            continue;
        }
        if (run_len)
            balloon_discard(b, run_start, run_len);
        run_start = gpa;
        run_len = 1ULL << PAGE_SHIFT;
    }
    if (run_len)
        balloon_discard(b, run_start, run_len);
    if (inflate)
        b->inflated += n;
    else
        b->deflated += n;
}

/* A stats buffer: (u16 tag, u64 value) pairs, packed. Keep it to ask for the next update. */
static void balloon_stats_in(struct balloon *b, struct virtq_chain *c)
{
    uint8_t rec[10];
    for (uint64_t off = 0; off + 10 <= c->readable; off += 10) {
        if (!virtq_chain_read(c, off, rec, 10))
            break;
        uint16_t tag;
        uint64_t val;
        memcpy(&tag, rec, 2);
        memcpy(&val, rec + 2, 8);
        if (tag < NUM_STATS)
            b->stats[tag] = val;
    }
    b->stats_valid = true;
    b->stats_updates++;
    b->stats_held = true;
    b->stats_head = c->head;
}

static void balloon_process(struct balloon *b)
{
    pthread_mutex_lock(&b->lock);
    bool used[3] = {false, false, false};
    for (unsigned qi = 0; qi < 3 && !b->parked; qi++) {
        struct virtq *q = virtio_pci_queue(b->vp, qi);
        if (!q->ready || q->broken)
            continue;
        for (;;) {
            if (qi == Q_STATS && b->stats_held)
                break; /* one buffer at a time, given back on request */
            int rc = virtq_pop(q, b->chain);
            if (rc == 0)
                break;
            if (rc < 0) {
                virtio_pci_needs_reset(b->vp, q->error);
                break;
            }
            if (qi == Q_STATS) {
                balloon_stats_in(b, b->chain);
                continue;
            }
            balloon_pages(b, b->chain, qi == Q_INFLATE);
            virtq_push(q, b->chain->head, 0);
            used[qi] = true;
        }
    }
    pthread_mutex_unlock(&b->lock);
    for (unsigned qi = 0; qi < 2; qi++)
        if (used[qi])
            virtio_pci_interrupt(b->vp, qi);
}

/* Hand the stats buffer back so the driver refills it. Call with b->lock held. */
static bool balloon_stats_request_locked(struct balloon *b)
{
    struct virtq *q = virtio_pci_queue(b->vp, Q_STATS);
    if (!b->stats_held || !q->ready || q->broken)
        return false;
    b->stats_held = false;
    virtq_push(q, b->stats_head, 0);
    return true;
}

static void *balloon_worker(void *arg)
{
    struct balloon *b = arg;
    pthread_setname_np(pthread_self(), "virtio-balloon");
    while (virtio_worker_wait(b->kick_fd, b->stop_fd))
        balloon_process(b);
    return NULL;
}

static void balloon_notify(void *opaque, unsigned q)
{
    struct balloon *b = opaque;
    (void)q;
    virtio_wake(b->kick_fd);
}

static int balloon_queue_eventfd(void *opaque, unsigned q)
{
    struct balloon *b = opaque;
    return q < 3 ? b->kick_fd : -1;
}

static void balloon_park(void *opaque, bool hold)
{
    struct balloon *b = opaque;
    pthread_mutex_lock(&b->lock); /* returns once the worker is between requests */
    b->parked = hold;
    pthread_mutex_unlock(&b->lock);
    if (!hold) {
        balloon_notify(b, 0);
    }
}

static int balloon_save(void *opaque, struct vmstate_writer *w)
{
    struct balloon *b = opaque;
    pthread_mutex_lock(&b->lock);
    vmw_u32(w, b->num_pages);
    vmw_u32(w, b->actual);
    vmw_u8(w, b->stats_held);
    vmw_u16(w, b->stats_head);
    vmw_u8(w, b->stats_valid);
    for (unsigned i = 0; i < NUM_STATS; i++)
        vmw_u64(w, b->stats[i]);
    pthread_mutex_unlock(&b->lock);
    return 0;
}

static int balloon_load(void *opaque, struct vmstate_reader *r)
{
    struct balloon *b = opaque;
    uint32_t num_pages = vmr_u32(r), actual = vmr_u32(r);
    bool held = vmr_bool(r);
    uint16_t head = vmr_u16(r);
    bool valid = vmr_bool(r);
    uint64_t stats[NUM_STATS];
    for (unsigned i = 0; i < NUM_STATS; i++)
        stats[i] = vmr_u64(r);
    if (r->failed)
        return -EINVAL;
    pthread_mutex_lock(&b->lock);
    b->num_pages = num_pages;
    b->actual = actual;
    b->stats_held = held;
    b->stats_head = head;
    b->stats_valid = valid;
    memcpy(b->stats, stats, sizeof(stats));
    pthread_mutex_unlock(&b->lock);
    return 0;
}

static void balloon_reset(void *opaque)
{
    struct balloon *b = opaque;
    pthread_mutex_lock(&b->lock);
    b->stats_held = false;
    b->actual = 0;
    pthread_mutex_unlock(&b->lock);
}

static void balloon_config_read(void *opaque, uint64_t off, uint8_t *data, unsigned size)
{
    struct balloon *b = opaque;
    uint8_t cfg[CONFIG_SIZE];
    pthread_mutex_lock(&b->lock);
    memcpy(cfg, &b->num_pages, 4);
    memcpy(cfg + 4, &b->actual, 4);
    pthread_mutex_unlock(&b->lock);
    memcpy(data, cfg + off, size);
}

static void balloon_config_write(void *opaque, uint64_t off, const uint8_t *data, unsigned size)
{
    struct balloon *b = opaque;
    if (off < 4 || off + size > CONFIG_SIZE)
        return; /* num_pages belongs to the host */
    pthread_mutex_lock(&b->lock);
    uint8_t raw[4];
    memcpy(raw, &b->actual, 4);
    memcpy(raw + (off - 4), data, size);
    memcpy(&b->actual, raw, 4);
    pthread_mutex_unlock(&b->lock);
}

int virtio_balloon_set_target(struct machine *m, uint32_t pages)
{
    struct balloon *b = m->balloon;
    if (!b)
        return vs_error(-ENODEV, "balloon: this VM has no balloon (start it with --balloon)");
    uint64_t max = m->mem.ram_size >> PAGE_SHIFT;
    if (pages > max)
        return vs_error(-EINVAL, "balloon: target %u pages is more than the guest's %llu", pages,
                        (unsigned long long)max);
    pthread_mutex_lock(&b->lock);
    b->num_pages = pages;
    bool asked = balloon_stats_request_locked(b);
    pthread_mutex_unlock(&b->lock);
    if (asked)
        virtio_pci_interrupt(b->vp, Q_STATS);
    virtio_pci_config_changed(b->vp);
    return 0;
}

static void balloon_destroy(void *opaque)
{
    struct balloon *b = opaque;
    if (b->worker_started) {
        virtio_wake(b->stop_fd);
        pthread_join(b->worker, NULL);
    }
    if (b->machine->balloon == b)
        b->machine->balloon = NULL;
    virtio_pci_destroy(b->vp);
    if (b->kick_fd >= 0)
        close(b->kick_fd);
    if (b->stop_fd >= 0)
        close(b->stop_fd);
    free(b->chain);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static void balloon_stats(void *opaque, void *json)
{
    struct balloon *b = opaque;
    pthread_mutex_lock(&b->lock);
    uint64_t s[NUM_STATS];
    memcpy(s, b->stats, sizeof(s));
    bool valid = b->stats_valid;
    uint64_t target = b->num_pages, actual = b->actual;
    bool asked = b->vp ? balloon_stats_request_locked(b) : false; /* fresh numbers next time */
    pthread_mutex_unlock(&b->lock);
    if (asked)
        virtio_pci_interrupt(b->vp, Q_STATS);
    json_stats_add(json, "virtio-balloon", "target_pages", target, "actual_pages", actual,
                   "inflated_pages", (uint64_t)b->inflated, "deflated_pages", (uint64_t)b->deflated,
                   "discarded_bytes", (uint64_t)b->discarded_bytes, "bad_pfns",
                   (uint64_t)b->bad_pfns, "stats_updates", (uint64_t)b->stats_updates, NULL);
    if (valid) {
        /* VIRTIO_BALLOON_S_* tags as the driver last reported them */
        json_stats_add(json, "virtio-balloon:guest", "swap_in", s[0], "swap_out", s[1],
                       "major_faults", s[2], "minor_faults", s[3], "free_memory", s[4],
                       "total_memory", s[5], "available_memory", s[6], "disk_caches", s[7], NULL);
    }
}

static const struct virtio_device_ops balloon_ops = {
    .name = "virtio-balloon",
    .device_id = 5,
    .pci_class = 0x0500, /* memory controller, RAM */
    .config_read = balloon_config_read,
    .config_write = balloon_config_write,
    .queue_notify = balloon_notify,
    .queue_eventfd = balloon_queue_eventfd,
    .reset = balloon_reset,
    .park = balloon_park,
    .save = balloon_save,
    .load = balloon_load,
};

int virtio_balloon_create(struct machine *m)
{
    if (m->balloon)
        return vs_error(-EEXIST, "--balloon: one balloon per VM");
    if (m->config->hugepages)
        return vs_error(-EINVAL, "--balloon: cannot discard 4 KiB pages of --hugepages memory");
    struct balloon *b = vs_calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->machine = m;
    b->kick_fd = b->stop_fd = -1;
    pthread_mutex_init(&b->lock, NULL);
    b->chain = vs_malloc(sizeof(*b->chain));
    int rc = machine_add_device(m, "virtio-balloon", b, balloon_destroy, balloon_stats);
    if (rc < 0) {
        balloon_destroy(b);
        return rc;
    }
    if (!b->chain)
        return -ENOMEM;
    b->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    b->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (b->kick_fd < 0 || b->stop_fd < 0)
        return vs_error_errno(-errno, "virtio-balloon: eventfd");
    struct virtio_pci_params p = {
        .ops = &balloon_ops,
        .dev = b,
        .features = VIRTIO_BALLOON_F_MUST_TELL_HOST | VIRTIO_BALLOON_F_STATS_VQ,
        .num_queues = 3,
        .queue_max = QUEUE_SIZE,
        .config_size = CONFIG_SIZE,
    };
    if ((rc = virtio_pci_create(m, &p, &b->vp)) < 0)
        return rc;
    int e = pthread_create(&b->worker, NULL, balloon_worker, b);
    if (e)
        return vs_error(-e, "virtio-balloon: cannot start the I/O thread");
    b->worker_started = true;
    m->balloon = b;
    return 0;
}
