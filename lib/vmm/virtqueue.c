/*
 * lib/vmm/virtqueue.c — the split-virtqueue parser.
 *
 * Guest memory is hostile and changes under our feet: every index and descriptor is read once
 * into a local copy, every address is translated with a length check (guest_mem_ptr), the walk of
 * a chain is bounded by the queue size (a loop can't make it spin) and the total segments by
 * VIRTQ_MAX_SEGS. Anything malformed marks the queue broken with a message; the device then
 * reports DEVICE_NEEDS_RESET and the VMM carries on.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vmm/virtqueue.h"

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

static int virtq_fail(struct virtq *q, const char *fmt, ...) VS_PRINTF(2, 3);
static int virtq_fail(struct virtq *q, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->error, sizeof(q->error), fmt, ap);
    va_end(ap);
    q->broken = true;
    return -EINVAL;
}

int virtq_validate(struct virtq *q)
{
    q->broken = false;
    q->error[0] = '\0';
    if (q->size == 0 || q->size > VIRTQ_MAX_SIZE || (q->size & (q->size - 1)))
        return virtq_fail(q, "queue size %u is not a power of two up to %u", q->size,
                          VIRTQ_MAX_SIZE);
    if ((q->desc & 15) || (q->avail & 1) || (q->used & 3))
        return virtq_fail(q, "misaligned ring addresses");
    if (!guest_mem_ptr(q->mem, q->desc, 16ULL * q->size))
        return virtq_fail(q, "descriptor table 0x%llx outside guest memory",
                          (unsigned long long)q->desc);
    if (!guest_mem_ptr(q->mem, q->avail, 6 + 2ULL * q->size))
        return virtq_fail(q, "available ring 0x%llx outside guest memory",
                          (unsigned long long)q->avail);
    if (!guest_mem_ptr(q->mem, q->used, 6 + 8ULL * q->size))
        return virtq_fail(q, "used ring 0x%llx outside guest memory", (unsigned long long)q->used);
    return 0;
}

static uint16_t load16(const struct guest_mem *mem, uint64_t gpa)
{
    uint16_t *p = guest_mem_ptr(mem, gpa, 2);
    return p ? __atomic_load_n(p, __ATOMIC_ACQUIRE) : 0;
}

static int add_seg(struct virtq *q, struct virtq_chain *c, const struct vring_desc *d)
{
    if (c->count == VIRTQ_MAX_SEGS)
        return virtq_fail(q, "chain at head %u longer than %u buffers", c->head, VIRTQ_MAX_SEGS);
    bool writable = d->flags & VIRTQ_DESC_F_WRITE;
    if (!writable && c->writable)
        return virtq_fail(q, "chain at head %u: readable buffer after a writable one", c->head);
    uint8_t *p = guest_mem_ptr(q->mem, d->addr, d->len);
    if (!p)
        return virtq_fail(q, "chain at head %u: buffer 0x%llx+%u outside guest memory", c->head,
                          (unsigned long long)d->addr, d->len);
    c->segs[c->count++] = (struct virtq_seg){p, d->len, writable};
    if (writable)
        c->writable += d->len;
    else
        c->readable += d->len;
    return 0;
}

static int walk_indirect(struct virtq *q, struct virtq_chain *c, const struct vring_desc *ind)
{
    if (ind->len == 0 || ind->len % 16)
        return virtq_fail(q, "indirect table of %u bytes is not a multiple of 16", ind->len);
    unsigned n = ind->len / 16;
    const struct vring_desc *table = guest_mem_ptr(q->mem, ind->addr, ind->len);
    if (!table)
        return virtq_fail(q, "indirect table 0x%llx outside guest memory",
                          (unsigned long long)ind->addr);
    unsigned i = 0;
    for (unsigned steps = 0;; steps++) {
        if (steps >= n)
            return virtq_fail(q, "indirect chain at head %u loops", c->head);
        struct vring_desc d;
        memcpy(&d, &table[i], sizeof(d));
        if (d.flags & VIRTQ_DESC_F_INDIRECT)
            return virtq_fail(q, "nested indirect descriptor at head %u", c->head);
        int rc = add_seg(q, c, &d);
        if (rc < 0)
            return rc;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return 0;
        if (d.next >= n)
            return virtq_fail(q, "indirect descriptor next %u beyond table of %u", d.next, n);
        i = d.next;
    }
}

int virtq_pop(struct virtq *q, struct virtq_chain *c)
{
    if (!q->ready || q->broken)
        return q->broken ? -EINVAL : 0;
    /* The guest rewrites avail->idx with every request it adds, so each read of it takes the
     * cache line from the guest's CPU: read it only once what it last said is used up. */
    if (q->avail_seen == q->last_avail) {
        uint16_t avail_idx = load16(q->mem, q->avail + 2);
        uint16_t pending = (uint16_t)(avail_idx - q->last_avail);
        if (pending == 0)
            return 0;
        if (pending > q->size)
            return virtq_fail(q, "available index jumped by %u in a queue of %u", pending, q->size);
        q->avail_seen = avail_idx;
    }
    uint16_t head = load16(q->mem, q->avail + 4 + 2ULL * (q->last_avail % q->size));
    if (head >= q->size)
        return virtq_fail(q, "available ring names descriptor %u of %u", head, q->size);
    const struct vring_desc *table = guest_mem_ptr(q->mem, q->desc, 16ULL * q->size);
    if (!table)
        return virtq_fail(q, "descriptor table outside guest memory");
    c->head = head;
    c->count = 0;
    c->readable = c->writable = 0;
    uint16_t i = head;
    for (unsigned steps = 0;; steps++) {
        if (steps >= q->size)
            return virtq_fail(q, "descriptor chain at head %u loops", head);
        struct vring_desc d;
        memcpy(&d, &table[i], sizeof(d));
        int rc;
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (d.flags & VIRTQ_DESC_F_NEXT)
                return virtq_fail(q, "indirect descriptor with NEXT at head %u", head);
            rc = walk_indirect(q, c, &d);
            if (rc < 0)
                return rc;
            break;
        }
        if ((rc = add_seg(q, c, &d)) < 0)
            return rc;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            break;
        if (d.next >= q->size)
            return virtq_fail(q, "descriptor %u: next %u beyond queue of %u", i, d.next, q->size);
        i = d.next;
    }
    q->last_avail++;
    return 1;
}

void virtq_unpop(struct virtq *q)
{
    q->last_avail--;
}

void virtq_set_indices(struct virtq *q, uint16_t last_avail, uint16_t used_idx)
{
    q->last_avail = q->avail_seen = last_avail;
    q->used_idx = used_idx;
}

int virtq_push(struct virtq *q, uint16_t head, uint32_t len)
{
    uint8_t *used = guest_mem_ptr(q->mem, q->used, 6 + 8ULL * q->size);
    if (!used)
        return virtq_fail(q, "used ring outside guest memory");
    uint8_t *elem = used + 4 + 8ULL * (q->used_idx % q->size);
    uint32_t id = head;
    memcpy(elem, &id, 4);
    memcpy(elem + 4, &len, 4);
    q->used_idx++;
    __atomic_store_n((uint16_t *)(used + 2), q->used_idx, __ATOMIC_RELEASE);
    return 0;
}

void virtq_set_notify(struct virtq *q, bool enable)
{
    uint16_t *flags = guest_mem_ptr(q->mem, q->used, 2);
    if (!flags)
        return;
    /* Written only when it changes: the line holds used->idx too, which the guest may be
     * spinning on, and a store takes the line away from its CPU even if the value is the same. */
    uint16_t want = enable ? 0 : VIRTQ_USED_F_NO_NOTIFY;
    if (__atomic_load_n(flags, __ATOMIC_RELAXED) != want)
        __atomic_store_n(flags, want, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* then re-check the avail ring */
}

bool virtq_should_interrupt(struct virtq *q)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return !(load16(q->mem, q->avail) & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

bool virtq_chain_read(const struct virtq_chain *c, uint64_t off, void *dst, size_t len)
{
    uint8_t *out = dst;
    for (unsigned i = 0; i < c->count && len; i++) {
        const struct virtq_seg *s = &c->segs[i];
        if (s->writable)
            break;
        if (off >= s->len) {
            off -= s->len;
            continue;
        }
        size_t n = VS_MIN((size_t)(s->len - off), len);
        memcpy(out, s->ptr + off, n);
        out += n;
        len -= n;
        off = 0;
    }
    return len == 0;
}
