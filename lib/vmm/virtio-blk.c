/*
 * lib/vmm/virtio-blk.c — a virtio block device on the image engine: any format img_open reads,
 * read-only disks, flush, discard and write-zeroes.
 *
 * The vCPU that kicks the queue only writes an eventfd; a worker thread owned by the device pops
 * chains, does the image I/O straight between guest memory and the image (no bounce buffer),
 * completes them and interrupts the driver. A chain that breaks the ring rules stops the queue
 * (DEVICE_NEEDS_RESET) but never the VMM; a request that is merely wrong (bad sector, short
 * buffers, unknown type) completes with an error status.
 *
 * A full host disk is not the guest's error: a write, write-zeroes or flush that fails with
 * ENOSPC or EDQUOT is given back to the ring (virtq_unpop) instead of failing, the queue stops
 * and the VM is paused with the reason in its status. Resuming retries that request first; a disk
 * still full pauses again. The image is never left half-written: the request is redone whole, and
 * the image engine's allocations are all-or-nothing.
 *
 * A raw image over a file is also mapped, and reads under 64 KiB are a copy from that mapping: no
 * system call and no page-cache lookup per request once a page is mapped (the kernel maps up to
 * 16 cached neighbours per fault), several times the rate of pread for 4 KiB reads from the page
 * cache. Bigger reads keep pread, which a cold mapping's faults would slow (BLK_MAP_MAX). What a
 * read maps stays mapped (the VMM's RSS shows it) until the guest stops reading (map_release).
 * Writes, flushes and discards still go through the image engine (its ENOSPC, fsync and hole
 * handling), which the kernel keeps coherent with the mapping. A read that faults on a page the
 * file no longer has (truncated under us) or can't read (an I/O error) raises SIGBUS, which
 * sigbus.h turns into VIRTIO_BLK_S_IOERR for that request.
 *
 * I/O limits (--disk …,iops=N,bps=SIZE) are two token buckets, requests and bytes, each holding
 * 100 ms of its rate: a request the buckets can't pay for yet goes back to the ring and the worker
 * sleeps until they can, so the limit holds over any window past 100 ms and the guest just sees
 * a slower disk.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vessel/img.h"
#include "vmm/sigbus.h"
#include "vmm/virtio.h"

#define VIRTIO_BLK_F_SEG_MAX        (1ULL << 2)
#define VIRTIO_BLK_F_RO             (1ULL << 5)
#define VIRTIO_BLK_F_BLK_SIZE       (1ULL << 6)
#define VIRTIO_BLK_F_FLUSH          (1ULL << 9)
#define VIRTIO_BLK_F_DISCARD        (1ULL << 13)
#define VIRTIO_BLK_F_WRITE_ZEROES   (1ULL << 14)
#define VIRTIO_RING_F_INDIRECT_DESC (1ULL << 28)

#define T_IN           0
#define T_OUT          1
#define T_FLUSH        4
#define T_GET_ID       8
#define T_DISCARD      11
#define T_WRITE_ZEROES 13
#define S_OK           0
#define S_IOERR        1
#define S_UNSUPP       2
#define S_FULL         0xff /* internal: the host disk is full, retry after resume */

#define QUEUE_SIZE 256
/* How long the worker watches a dry ring before it sleeps and asks for kicks again. */
#define BLK_POLL_NS 50000u
#define CONFIG_SIZE 60
/* Reads this big go through pread even from a mapped raw image: the kernel maps 64 KiB of page
 * cache per fault, so a cold region costs a big read more in faults than the one system call
 * (measured here: 128 KiB copies took 34-53 µs through a cold mapping, ~20 µs by pread). */
#define BLK_MAP_MAX      65536
#define MAX_DISCARD_SEGS 32

struct blk {
    struct machine *machine;
    struct virtio_pci *vp;
    struct img *img;
    const uint8_t *map; /* the raw image's bytes, mapped read-only, or NULL: reads use img_pread */
    size_t map_size;
    uint64_t map_reads; /* reads through the mapping since map_release last dropped it */
    uint64_t map_freed; /* when it did (ns) */
    char *path;
    bool readonly;
    uint64_t capacity; /* sectors */
    uint8_t config[CONFIG_SIZE];
    int kick_fd, stop_fd;
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t lock; /* held by the worker while it touches the queue; reset waits on it */
    bool parked;          /* save in progress: leave the queue alone */
    bool stalled;         /* a request hit a full host disk: wait for resume */
    uint64_t iops, bps;   /* limits, 0 = none */
    double ops_tokens, byte_tokens;
    uint64_t refill_ns;
    struct virtq_chain *chain;
    _Atomic uint64_t reads, writes, flushes, discards, write_zeroes, bytes_read, bytes_written,
        errors, requests;
};

/* Apply FN to the data segments of the chain: the readable bytes after the 16-byte header
 * (writes) or the writable bytes before the status byte (reads). */
static int for_each_data(struct virtq_chain *c, bool writable, uint64_t limit,
                         int (*fn)(struct blk *, uint8_t *, size_t, uint64_t), struct blk *b,
                         uint64_t offset)
{
    uint64_t skip = writable ? 0 : 16, done = 0;
    for (unsigned i = 0; i < c->count && done < limit; i++) {
        struct virtq_seg *s = &c->segs[i];
        if (s->writable != writable)
            continue;
        uint64_t len = s->len, start = 0;
        if (skip) {
            uint64_t k = VS_MIN(skip, len);
            skip -= k;
            start = k;
        }
        len = VS_MIN(len - start, limit - done);
        if (!len)
            continue;
        int rc = fn(b, s->ptr + start, (size_t)len, offset + done);
        if (rc < 0)
            return rc;
        done += len;
    }
    return 0;
}

static int do_read(struct blk *b, uint8_t *p, size_t len, uint64_t off)
{
    if (!b->map || len >= BLK_MAP_MAX || off > b->map_size || len > b->map_size - off)
        return img_pread(b->img, p, off, len);
    struct sigbus_guard g;
    int rc;
    if (SIGBUS_GUARDED(g, b->map, b->map_size)) {
        memcpy(p, b->map + off, len);
        b->map_reads++;
        rc = 0;
    } else {
        rc = -EIO;
    }
    sigbus_disarm();
    return rc;
}

static int do_write(struct blk *b, uint8_t *p, size_t len, uint64_t off)
{
    return img_pwrite(b->img, p, off, len);
}

static uint8_t range_ok(struct blk *b, uint64_t sector, uint64_t bytes)
{
    uint64_t end = sector * 512 + bytes;
    return sector <= b->capacity && bytes <= b->capacity * 512 && end <= b->capacity * 512;
}

static bool host_full(int rc)
{
    return rc == -ENOSPC || rc == -EDQUOT;
}

static uint8_t do_discard_zeroes(struct blk *b, struct virtq_chain *c, bool zeroes)
{
    uint64_t bytes = c->readable - 16;
    if (bytes == 0 || bytes % 16 || bytes / 16 > MAX_DISCARD_SEGS)
        return S_UNSUPP;
    if (b->readonly)
        return S_IOERR;
    for (uint64_t i = 0; i < bytes / 16; i++) {
        uint8_t seg[16];
        if (!virtq_chain_read(c, 16 + i * 16, seg, 16))
            return S_IOERR;
        uint64_t sector;
        uint32_t num, flags;
        memcpy(&sector, seg, 8);
        memcpy(&num, seg + 8, 4);
        memcpy(&flags, seg + 12, 4);
        if (!range_ok(b, sector, (uint64_t)num * 512) || (flags & ~1u) || (!zeroes && flags))
            return S_IOERR;
        int rc = zeroes ? img_write_zeroes(b->img, sector * 512, (uint64_t)num * 512,
                                           (flags & 1) ? IMG_ZERO_MAY_UNMAP : 0)
                        : img_discard(b->img, sector * 512, (uint64_t)num * 512);
        if (zeroes && host_full(rc))
            return S_FULL;
        if (rc < 0 && !(rc == -ENOTSUP && !zeroes))
            return S_IOERR;
    }
    if (zeroes)
        b->write_zeroes++;
    else
        b->discards++;
    return S_OK;
}

/* Handle one request; returns bytes written into the chain (data + status). *FULL: the host disk
 * is full, nothing was reported to the guest and the request must be retried later. */
static uint32_t blk_request(struct blk *b, struct virtq_chain *c, bool *full)
{
    uint8_t hdr[16];
    struct virtq_seg *last = c->count ? &c->segs[c->count - 1] : NULL;
    if (!last || !last->writable || last->len == 0 || !virtq_chain_read(c, 0, hdr, 16)) {
        b->errors++;
        return 0; /* no room for a status: nothing we can report */
    }
    uint8_t *status = last->ptr + last->len - 1;
    uint32_t type, written = 1;
    uint64_t sector;
    memcpy(&type, hdr, 4);
    memcpy(&sector, hdr + 8, 8);
    uint64_t data_in = c->writable - 1, data_out = c->readable - 16;
    uint8_t st = S_OK;
    int rc;
    b->requests++;
    switch (type) {
    case T_IN:
        if (data_in % 512 || !range_ok(b, sector, data_in)) {
            st = S_IOERR;
            break;
        }
        rc = for_each_data(c, true, data_in, do_read, b, sector * 512);
        st = rc < 0 ? S_IOERR : S_OK;
        if (rc == 0) {
            written += (uint32_t)data_in;
            b->reads++;
            b->bytes_read += data_in;
        }
        break;
    case T_OUT:
        if (b->readonly || data_out % 512 || !range_ok(b, sector, data_out)) {
            st = S_IOERR;
            break;
        }
        rc = for_each_data(c, false, data_out, do_write, b, sector * 512);
        if ((*full = host_full(rc)))
            return 0;
        st = rc < 0 ? S_IOERR : S_OK;
        if (rc == 0) {
            b->writes++;
            b->bytes_written += data_out;
        }
        break;
    case T_FLUSH:
        rc = b->readonly ? 0 : img_flush(b->img);
        if ((*full = host_full(rc)))
            return 0;
        st = rc == 0 ? S_OK : S_IOERR;
        b->flushes++;
        break;
    case T_GET_ID: {
        char id[20] = {0};
        const char *base = strrchr(b->path, '/');
        snprintf(id, sizeof(id), "%s", base ? base + 1 : b->path);
        uint64_t n = VS_MIN(data_in, (uint64_t)sizeof(id));
        uint64_t done = 0;
        for (unsigned i = 0; i < c->count && done < n; i++) {
            struct virtq_seg *s = &c->segs[i];
            if (!s->writable)
                continue;
            uint64_t k = VS_MIN((uint64_t)s->len - (s == last ? 1 : 0), n - done);
            memcpy(s->ptr, id + done, k);
            done += k;
        }
        written += (uint32_t)done;
        break;
    }
    case T_DISCARD:
        st = c->readable < 16 ? S_IOERR : do_discard_zeroes(b, c, false);
        break;
    case T_WRITE_ZEROES:
        st = c->readable < 16 ? S_IOERR : do_discard_zeroes(b, c, true);
        if ((*full = st == S_FULL))
            return 0;
        break;
    default:
        st = S_UNSUPP;
    }
    if (st != S_OK)
        b->errors++;
    *status = st;
    return written;
}

static uint64_t blk_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The data bytes of a request: a read's writable part before the status byte, a write's
 * readable part after the header (discard/write-zeroes count their small segment lists). */
static uint64_t chain_bytes(const struct virtq_chain *c)
{
    return (c->readable > 16 ? c->readable - 16 : 0) + (c->writable > 1 ? c->writable - 1 : 0);
}

/* Take one request of BYTES from the buckets: 0, or how long to wait before it fits. */
static uint64_t throttle_take(struct blk *b, uint64_t bytes)
{
    if (!b->iops && !b->bps)
        return 0;
    uint64_t now = blk_now_ns();
    double dt = (double)(now - b->refill_ns) / 1e9;
    b->refill_ns = now;
    double wait = 0;
    if (b->iops) {
        double cap = VS_MAX(1.0, (double)b->iops / 10);
        b->ops_tokens = VS_MIN(cap, b->ops_tokens + dt * (double)b->iops);
        if (b->ops_tokens < 1.0)
            wait = VS_MAX(wait, (1.0 - b->ops_tokens) / (double)b->iops);
    }
    if (b->bps) { /* a request larger than 100 ms of the rate still goes, once the bucket fills */
        double cap = VS_MAX((double)bytes, (double)b->bps / 10);
        b->byte_tokens = VS_MIN(cap, b->byte_tokens + dt * (double)b->bps);
        if (b->byte_tokens < (double)bytes)
            wait = VS_MAX(wait, ((double)bytes - b->byte_tokens) / (double)b->bps);
    }
    if (wait > 0)
        return (uint64_t)(wait * 1e9) + 1;
    b->ops_tokens -= b->iops ? 1.0 : 0;
    b->byte_tokens -= b->bps ? (double)bytes : 0;
    return 0;
}

/* Sleep NS for the buckets to refill; false when the device is being destroyed meanwhile. */
static bool throttle_sleep(struct blk *b, uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    struct pollfd p = {b->stop_fd, POLLIN, 0};
    return ppoll(&p, 1, &ts, NULL) <= 0 || !p.revents;
}

/* The mapping's page-table entries (and the image pages they make count in the VMM's RSS) grow
 * with what the guest reads, so they are dropped (the page cache keeps the data) when the worker
 * goes to sleep at most once a second, and (FORCE) when the guest has then been quiet for a
 * second: a VM that is not reading costs no more than one that never did. */
static void map_release(struct blk *b, bool force)
{
    if (!b->map || !b->map_reads)
        return;
    uint64_t now = blk_now_ns();
    if (!force && now - b->map_freed < 1000000000ull)
        return;
    madvise((void *)b->map, b->map_size, MADV_DONTNEED);
    b->map_reads = 0;
    b->map_freed = now;
}

/* Serve the queue until it has been dry for BLK_POLL_NS. While we work — and while we watch
 * the dry ring — the driver need not kick (each kick is a trap, ~10-70 µs on PVM): a driver
 * that keeps a queue depth resubmits within microseconds, and finds us still looking. Only
 * then are kicks turned back on, and the ring checked once more for a request that raced with
 * the flag. Completions interrupt at once, never held back by the watching. */
static void blk_process(struct blk *b)
{
    uint64_t dry_since = 0;
    for (;;) {
        pthread_mutex_lock(&b->lock);
        struct virtq *q = virtio_pci_queue(b->vp, 0);
        /* kicks may arrive through the ioeventfd before the queue is enabled: check ready */
        if (b->parked || b->stalled || !q->ready || q->broken) {
            pthread_mutex_unlock(&b->lock);
            return;
        }
        virtq_set_notify(q, false);
        bool any = false, sleep = false, full = false;
        uint64_t throttled = 0;
        int rc;
        while ((rc = virtq_pop(q, b->chain)) > 0) {
            if ((throttled = throttle_take(b, chain_bytes(b->chain)))) {
                virtq_unpop(q); /* taken again once the buckets refill */
                break;
            }
            uint32_t len = blk_request(b, b->chain, &full);
            if (full) {
                virtq_unpop(q); /* back to the ring, for the retry after resume */
                b->stalled = true;
                break;
            }
            virtq_push(q, b->chain->head, len);
            any = true;
        }
        /* a full disk or the buckets stopped the loop with a chain still there: rc > 0, so
         * neither of the next two applies to them */
        if (rc == 0 && !any) {
            uint64_t now = blk_now_ns();
            if (!dry_since)
                dry_since = now;
            if (now - dry_since >= BLK_POLL_NS) {
                virtq_set_notify(q, true);
                rc = virtq_pop(q, b->chain);
                if (rc > 0) {
                    virtq_unpop(q); /* go round again: the loop above serves it */
                    dry_since = 0;
                } else {
                    sleep = true;
                }
            }
        }
        if (rc < 0) {
            virtio_pci_needs_reset(b->vp, q->error);
            sleep = true;
        }
        if (any)
            dry_since = 0;
        pthread_mutex_unlock(&b->lock);
        if (any)
            virtio_pci_interrupt(b->vp, 0);
        if (full) {
            char reason[240];
            snprintf(reason, sizeof(reason),
                     "host disk full writing %s (no space or quota left): free space, then resume "
                     "the VM",
                     b->path);
            machine_pause_for(b->machine, reason);
            return;
        }
        if (throttled) {
            if (!throttle_sleep(b, throttled))
                return;
            dry_since = 0;
            continue;
        }
        if (sleep) {
            map_release(b, false);
            return;
        }
        if (!any)
            __builtin_ia32_pause();
    }
}

static void *blk_worker(void *arg)
{
    struct blk *b = arg;
    pthread_setname_np(pthread_self(), "virtio-blk");
    for (;;) {
        /* with mapping entries to drop, wake up to drop them if the guest stays quiet */
        int w = virtio_worker_wait_for(b->kick_fd, b->stop_fd, b->map_reads ? 1000 : -1);
        if (w < 0)
            break;
        if (w == 0)
            map_release(b, true);
        else
            blk_process(b);
    }
    return NULL;
}

static void blk_notify(void *opaque, unsigned q)
{
    struct blk *b = opaque;
    virtio_wake(b->kick_fd);
}

static int blk_queue_eventfd(void *opaque, unsigned q)
{
    struct blk *b = opaque;
    return q == 0 ? b->kick_fd : -1;
}

static void blk_reset(void *opaque)
{
    struct blk *b = opaque;
    pthread_mutex_lock(&b->lock); /* wait for the worker to leave the queue */
    pthread_mutex_unlock(&b->lock);
}

static void blk_destroy(void *opaque);

/* After a resume: a request that found the host disk full is tried again. */
static void blk_resumed(void *opaque)
{
    struct blk *b = opaque;
    pthread_mutex_lock(&b->lock);
    bool retry = b->stalled;
    b->stalled = false;
    pthread_mutex_unlock(&b->lock);
    if (retry)
        virtio_wake(b->kick_fd);
}

static void blk_park(void *opaque, bool hold)
{
    struct blk *b = opaque;
    pthread_mutex_lock(&b->lock); /* returns once the worker is between requests */
    b->parked = hold;
    pthread_mutex_unlock(&b->lock);
    if (!hold) {
        blk_notify(b, 0);
    }
}

uint64_t virtio_blk_disk_size(struct machine *m, size_t n)
{
    for (size_t i = 0; i < m->device_count; i++)
        if (m->devices[i].destroy == blk_destroy && n-- == 0)
            return ((struct blk *)m->devices[i].state)->capacity * 512;
    return 0;
}

static void blk_config_read(void *opaque, uint64_t off, uint8_t *data, unsigned size)
{
    struct blk *b = opaque;
    memcpy(data, b->config + off, size);
}

static void blk_destroy(void *opaque)
{
    struct blk *b = opaque;
    if (b->worker_started) {
        virtio_wake(b->stop_fd);
        pthread_join(b->worker, NULL);
    }
    virtio_pci_destroy(b->vp);
    if (b->kick_fd >= 0)
        close(b->kick_fd);
    if (b->stop_fd >= 0)
        close(b->stop_fd);
    if (b->map)
        munmap((void *)b->map, b->map_size);
    img_close(b->img);
    free(b->chain);
    free(b->path);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static void blk_stats(void *opaque, void *json)
{
    struct blk *b = opaque;
    char name[64];
    const char *base = strrchr(b->path, '/');
    snprintf(name, sizeof(name), "virtio-blk:%s", base ? base + 1 : b->path);
    json_stats_add(json, name, "requests", (uint64_t)b->requests, "reads", (uint64_t)b->reads,
                   "writes", (uint64_t)b->writes, "flushes", (uint64_t)b->flushes, "discards",
                   (uint64_t)b->discards, "write_zeroes", (uint64_t)b->write_zeroes, "bytes_read",
                   (uint64_t)b->bytes_read, "bytes_written", (uint64_t)b->bytes_written, "errors",
                   (uint64_t)b->errors, NULL);
}

static const struct virtio_device_ops blk_ops = {
    .name = "virtio-blk",
    .device_id = 2,
    .pci_class = 0x0100, /* mass storage, SCSI */
    .config_read = blk_config_read,
    .queue_notify = blk_notify,
    .queue_eventfd = blk_queue_eventfd,
    .reset = blk_reset,
    .park = blk_park,
};

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

int virtio_blk_create(struct machine *m, const struct vmm_disk_config *disk)
{
    struct blk *b = vs_calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->machine = m;
    b->kick_fd = b->stop_fd = -1;
    b->readonly = disk->readonly;
    b->iops = disk->iops;
    b->bps = disk->bps;
    b->ops_tokens = VS_MAX(1.0, (double)b->iops / 10); /* full buckets to begin with */
    b->byte_tokens = (double)b->bps / 10;
    b->refill_ns = blk_now_ns();
    pthread_mutex_init(&b->lock, NULL);
    b->path = vs_strdup(disk->path);
    b->chain = vs_malloc(sizeof(*b->chain));
    int rc = machine_add_device(m, "virtio-blk", b, blk_destroy, blk_stats);
    if (rc < 0) {
        blk_destroy(b);
        return rc;
    }
    machine_device_on_resume(m, b, blk_resumed);
    if (!b->path || !b->chain)
        return -ENOMEM;
    rc = img_open(&b->img, disk->path, disk->format, disk->readonly ? 0 : IMG_OPEN_RDWR);
    if (rc < 0)
        return vs_error_prefix(rc, "--disk");
    b->capacity = img_size(b->img) / 512;
    memcpy(b->config, &b->capacity, 8);
    int fd = img_raw_fd(b->img);
    if (fd >= 0 && b->capacity) {
        void *map = mmap(NULL, b->capacity * 512, PROT_READ, MAP_SHARED, fd, 0);
        if (map != MAP_FAILED) { /* else reads use img_pread: as correct, slower */
            b->map = map;
            b->map_size = b->capacity * 512;
        }
    }
    put32(b->config + 12, VIRTQ_MAX_SEGS - 2); /* seg_max */
    put32(b->config + 20, 512);                /* blk_size */
    put32(b->config + 36, 1u << 22);           /* max_discard_sectors */
    put32(b->config + 40, MAX_DISCARD_SEGS);
    put32(b->config + 44, 8); /* discard alignment: 4 KiB */
    put32(b->config + 48, 1u << 22);
    put32(b->config + 52, MAX_DISCARD_SEGS);
    b->config[56] = 1; /* write_zeroes may unmap */
    b->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    b->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (b->kick_fd < 0 || b->stop_fd < 0)
        return vs_error_errno(-errno, "virtio-blk: eventfd");
    uint64_t features = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH |
                        VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES |
                        VIRTIO_RING_F_INDIRECT_DESC;
    if (b->readonly)
        features |= VIRTIO_BLK_F_RO;
    struct virtio_pci_params p = {
        .ops = &blk_ops,
        .dev = b,
        .features = features,
        .num_queues = 1,
        .queue_max = QUEUE_SIZE,
        .config_size = CONFIG_SIZE,
    };
    if ((rc = virtio_pci_create(m, &p, &b->vp)) < 0)
        return rc;
    int e = pthread_create(&b->worker, NULL, blk_worker, b);
    if (e)
        return vs_error(-e, "virtio-blk: cannot start the I/O thread");
    b->worker_started = true;
    return 0;
}
