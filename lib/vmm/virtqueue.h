/*
 * lib/vmm/virtqueue.h — split virtqueues (virtio 1.x §2.7) read from guest memory that is
 * assumed hostile. Works over any struct guest_mem, so the fuzzer drives it over a plain buffer.
 */
#ifndef VESSEL_VMM_VIRTQUEUE_H
#define VESSEL_VMM_VIRTQUEUE_H

#include "vmm/machine.h"

#define VIRTQ_MAX_SIZE 32768
/* The longest chain we accept (direct plus indirect descriptors). */
#define VIRTQ_MAX_SEGS 1024

#define VIRTQ_DESC_F_NEXT          1
#define VIRTQ_DESC_F_WRITE         2
#define VIRTQ_DESC_F_INDIRECT      4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

struct virtq {
    const struct guest_mem *mem;
    uint16_t size; /* entries, power of two */
    bool ready;
    bool broken;                /* the guest corrupted the ring: no more processing until reset */
    uint64_t desc, avail, used; /* guest-physical */
    uint16_t last_avail;
    uint16_t avail_seen; /* avail->idx when last read: read again once last_avail reaches it */
    uint16_t used_idx;
    char error[160]; /* why it broke */
};

struct virtq_seg {
    uint8_t *ptr;
    uint32_t len;
    bool writable;
};

struct virtq_chain {
    uint16_t head;
    unsigned count;
    uint64_t readable, writable; /* bytes */
    struct virtq_seg segs[VIRTQ_MAX_SEGS];
};

/* Check the rings of Q lie in guest memory (at queue enable). 0 or -EFAULT with q->error. */
int virtq_validate(struct virtq *q);
/* Pop the next available chain: 1 popped, 0 ring empty, -EINVAL ring broken (q->error says why,
 * and q->broken stays set). */
int virtq_pop(struct virtq *q, struct virtq_chain *chain);
/* Give back the chain virtq_pop just returned (the device could not use it yet). */
void virtq_unpop(struct virtq *q);
/* Set where the device is in the rings (queue reset, restore). */
void virtq_set_indices(struct virtq *q, uint16_t last_avail, uint16_t used_idx);
/* Put HEAD on the used ring with LEN bytes written. */
int virtq_push(struct virtq *q, uint16_t head, uint32_t len);
/* Ask the driver to kick (ENABLE) or not to bother (device busy, VIRTQ_USED_F_NO_NOTIFY). After
 * enabling, pop again: a buffer added just before the flag changed would otherwise wait. */
void virtq_set_notify(struct virtq *q, bool enable);
/* Does the driver want an interrupt now (no VIRTQ_AVAIL_F_NO_INTERRUPT)? */
bool virtq_should_interrupt(struct virtq *q);

/* Copy bytes [off, off+len) of the chain's readable part into DST; false if it's shorter. */
bool virtq_chain_read(const struct virtq_chain *c, uint64_t off, void *dst, size_t len);

#endif
