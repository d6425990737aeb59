/*
 * lib/vmm/virtio.h — the contract between the virtio-pci transport (virtio-pci.c) and each
 * virtio device (virtio-blk.c, …): one ops table per device type.
 */
#ifndef VESSEL_VMM_VIRTIO_H
#define VESSEL_VMM_VIRTIO_H

#include "vmm/pci.h"
#include "vmm/virtqueue.h"
#include "vmm/vmstate.h"

#define VIRTIO_F_VERSION_1        (1ULL << 32)
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

struct virtio_pci;

struct virtio_device_ops {
    const char *name;
    uint16_t device_id; /* virtio device type: 2 = block, 1 = net, 4 = rng, … */
    uint16_t pci_class; /* class << 8 | subclass */
    /* Device config space: reads/writes at OFF (bounded by config_size by the transport). */
    void (*config_read)(void *dev, uint64_t off, uint8_t *data, unsigned size);
    void (*config_write)(void *dev, uint64_t off, const uint8_t *data, unsigned size);
    /* The driver kicked queue Q (vCPU thread: hand the work off, don't do it here). */
    void (*queue_notify)(void *dev, unsigned q);
    /* The eventfd the device's worker waits on for queue Q, or -1. When given, the transport
     * registers it with KVM (ioeventfd) on the queue's notify address, so a kick wakes the worker
     * without the vCPU leaving the kernel; the worker must then check the queue is ready. */
    int (*queue_eventfd)(void *dev, unsigned q);
    /* DRIVER_OK was set: queues are ready to use. */
    void (*activate)(void *dev);
    /* The driver reset the device: stop touching the queues before returning. */
    void (*reset)(void *dev);
    /* Save/restore: HOLD parks the worker (it finishes the request it is on and takes no new
     * one) until called again with false, which also wakes it to look at every queue. */
    void (*park)(void *dev, bool hold);
    /* State of the device beyond the transport's (optional). */
    int (*save)(void *dev, struct vmstate_writer *w);
    int (*load)(void *dev, struct vmstate_reader *r);
};

struct virtio_pci_params {
    const struct virtio_device_ops *ops;
    void *dev;
    uint64_t features; /* device features (VERSION_1 is added) */
    uint16_t num_queues;
    uint16_t queue_max;
    uint32_t config_size;
};

int virtio_pci_create(struct machine *m, const struct virtio_pci_params *params,
                      struct virtio_pci **out);
void virtio_pci_destroy(struct virtio_pci *vp);
/* Queue Q of the device (valid once the driver enabled it; check q->ready). */
struct virtq *virtio_pci_queue(struct virtio_pci *vp, unsigned q);
uint64_t virtio_pci_features(struct virtio_pci *vp); /* negotiated */
/* Used buffers were added to queue Q: interrupt the driver if it wants one. */
void virtio_pci_interrupt(struct virtio_pci *vp, unsigned q);
/* The device config space changed (balloon target, …): bump the generation, config interrupt. */
void virtio_pci_config_changed(struct virtio_pci *vp);
/* The guest broke a ring: set DEVICE_NEEDS_RESET and send a config interrupt. */
void virtio_pci_needs_reset(struct virtio_pci *vp, const char *why);

/* Device worker threads sleep on eventfds: the queue kicks (written by the vCPU or by the
 * ioeventfd) and a stop fd. virtio_wake adds one to an eventfd (a saturated counter still wakes
 * its reader); virtio_worker_wait blocks until KICK_FD or STOP_FD fires, consumes the kick, and
 * returns false when the worker must stop. */
void virtio_wake(int fd);
bool virtio_worker_wait(int kick_fd, int stop_fd);
/* The same with a timeout (-1: none): 1 kicked, 0 timed out, -1 stop. */
int virtio_worker_wait_for(int kick_fd, int stop_fd, int timeout_ms);

#endif
