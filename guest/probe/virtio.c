/*
 * virtio.c — the virtio 1.x modern PCI transport and split virtqueues, driven by polling.
 *
 * The one idea: the device and the probe share the rings in guest memory, so after a kick the
 * probe just watches used->idx — no interrupt, no ring-0 code, no exit other than the notify
 * write itself. Kicks are batched (vq_kick once per batch of vq_add) because every notify is a
 * VM exit.
 */
#include "probe.h"

/* common configuration structure (virtio 1.x §4.1.4.3) */
#define COMMON_DFSELECT  0
#define COMMON_DF        4
#define COMMON_GFSELECT  8
#define COMMON_GF        12
#define COMMON_MSIX      16
#define COMMON_NUMQ      18
#define COMMON_STATUS    20
#define COMMON_Q_SELECT  22
#define COMMON_Q_SIZE    24
#define COMMON_Q_MSIX    26
#define COMMON_Q_ENABLE  28
#define COMMON_Q_NOFF    30
#define COMMON_Q_DESCLO  32
#define COMMON_Q_DESCHI  36
#define COMMON_Q_AVAILLO 40
#define COMMON_Q_AVAILHI 44
#define COMMON_Q_USEDLO  48
#define COMMON_Q_USEDHI  52

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER      2
#define STATUS_DRIVER_OK   4
#define STATUS_FEATURES_OK 8
#define STATUS_FAILED      0x80

static const char *type_name(u16 type)
{
    switch (type) {
    case 1:
        return "net";
    case 2:
        return "blk";
    case 4:
        return "rng";
    case 5:
        return "balloon";
    default:
        return "virtio";
    }
}

/* Modern devices are 0x1040 + type; transitional ones (QEMU's default) are 0x1000-0x103f with
 * the type in the subsystem ID. Both carry the modern capabilities this driver uses. */
int virtio_pci_type(const struct pci_dev *p)
{
    if (p->vendor != 0x1af4)
        return -1;
    if (p->device >= 0x1040 && p->device <= 0x107f)
        return p->device - 0x1040;
    if (p->device >= 0x1000 && p->device <= 0x103f)
        return pci_read16(p, 0x2e);
    return -1;
}

static char name_pool[16][16];
static int name_used;

int virtio_find(u16 type, int nth, struct virtio_dev *out)
{
    int seen = 0;
    for (int i = 0; i < pci_count(); i++) {
        struct pci_dev *p = pci_get(i);
        if (virtio_pci_type(p) != type)
            continue;
        if (seen++ != nth)
            continue;
        memset(out, 0, sizeof(*out));
        out->pci = p;
        out->type = type;
        pci_enable(p);
        /* Walk the capability list for the four virtio structures and MSI-X. */
        if (!(pci_read16(p, 0x06) & 0x10))
            return -1;
        u8 cap = pci_read8(p, 0x34) & 0xfc;
        for (int guard = 0; cap && guard < 48; guard++) {
            u8 id = pci_read8(p, cap);
            if (id == 0x11) {
                out->msix_cap = cap;
                u32 table = pci_read32(p, (u16)(cap + 4));
                u64 bar = pci_bar_address(p, table & 7);
                out->msix_table = bar ? bar + (table & ~7u) : 0;
            } else if (id == 0x09) {
                u8 cfg_type = pci_read8(p, (u16)(cap + 3));
                u8 bar = pci_read8(p, (u16)(cap + 4));
                u32 offset = pci_read32(p, (u16)(cap + 8));
                u64 base = bar < 6 ? pci_bar_address(p, bar) : 0;
                u64 addr = base ? base + offset : 0;
                if (cfg_type == 1 && !out->common)
                    out->common = addr;
                else if (cfg_type == 2 && !out->notify) {
                    out->notify = addr;
                    out->notify_mult = pci_read32(p, (u16)(cap + 16));
                } else if (cfg_type == 3 && !out->isr)
                    out->isr = addr;
                else if (cfg_type == 4 && !out->device)
                    out->device = addr;
            }
            cap = pci_read8(p, (u16)(cap + 1)) & 0xfc;
        }
        if (!out->common || !out->notify) {
            info("virtio %02x:%02x.%x: no common/notify capability", p->bus, p->dev, p->fn);
            return -1;
        }
        pci_enable(p); /* BARs may have been placed just now */
        char *name = name_pool[name_used < 15 ? name_used++ : 15];
        if (nth == 0)
            snprint(name, 16, "%s", type_name(type));
        else
            snprint(name, 16, "%s%d", type_name(type), nth);
        out->name = name;
        return 0;
    }
    return -1;
}

void virtio_reset(struct virtio_dev *d)
{
    mmio_write8(d->common + COMMON_STATUS, 0);
    for (int i = 0; i < 1000000 && mmio_read8(d->common + COMMON_STATUS); i++)
        cpu_relax();
}

u64 virtio_negotiate(struct virtio_dev *d, u64 wanted)
{
    virtio_reset(d);
    mmio_write8(d->common + COMMON_STATUS, STATUS_ACKNOWLEDGE);
    mmio_write8(d->common + COMMON_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    mmio_write32(d->common + COMMON_DFSELECT, 0);
    u64 offered = mmio_read32(d->common + COMMON_DF);
    mmio_write32(d->common + COMMON_DFSELECT, 1);
    offered |= (u64)mmio_read32(d->common + COMMON_DF) << 32;
    u64 accept = offered & (wanted | VIRTIO_F_VERSION_1);
    if (!(accept & VIRTIO_F_VERSION_1)) {
        info("%s: device does not offer VIRTIO_F_VERSION_1", d->name);
        mmio_write8(d->common + COMMON_STATUS, STATUS_FAILED);
        return 0;
    }
    mmio_write32(d->common + COMMON_GFSELECT, 0);
    mmio_write32(d->common + COMMON_GF, (u32)accept);
    mmio_write32(d->common + COMMON_GFSELECT, 1);
    mmio_write32(d->common + COMMON_GF, (u32)(accept >> 32));
    mmio_write8(d->common + COMMON_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(mmio_read8(d->common + COMMON_STATUS) & STATUS_FEATURES_OK)) {
        info("%s: device refused features 0x%llx", d->name, (unsigned long long)accept);
        mmio_write8(d->common + COMMON_STATUS, STATUS_FAILED);
        return 0;
    }
    d->features = accept;
    info("%s: %02x:%02x.%x features offered 0x%llx accepted 0x%llx", d->name, d->pci->bus,
         d->pci->dev, d->pci->fn, (unsigned long long)offered, (unsigned long long)accept);
    return accept;
}

int virtio_queue_setup(struct virtio_dev *d, struct virtqueue *vq, u16 index, u16 max_size)
{
    memset(vq, 0, sizeof(*vq));
    mmio_write16(d->common + COMMON_Q_SELECT, index);
    u16 size = mmio_read16(d->common + COMMON_Q_SIZE);
    if (size == 0)
        return -1;
    if (max_size && size > max_size) {
        /* Sizes need not be powers of two in split rings (virtio 1.1), but keep them so. */
        u16 s = 1;
        while ((u16)(s * 2) <= max_size && s * 2 != 0)
            s = (u16)(s * 2);
        size = s;
        mmio_write16(d->common + COMMON_Q_SIZE, size);
    }
    vq->index = index;
    vq->size = size;
    vq->desc = alloc_pages(16ull * size);
    vq->avail = alloc_pages(6 + 2ull * size);
    vq->used = alloc_pages(6 + 8ull * size);
    vq->token = alloc_pages(8ull * size);
    if (!vq->desc || !vq->avail || !vq->used || !vq->token)
        return -1;
    for (u16 i = 0; i < size; i++)
        vq->desc[i].next = (u16)(i + 1);
    vq->num_free = size;
    vq->free_head = 0;
    u64 desc = (u64)vq->desc, avail = (u64)vq->avail, used = (u64)vq->used;
    mmio_write32(d->common + COMMON_Q_DESCLO, (u32)desc);
    mmio_write32(d->common + COMMON_Q_DESCHI, (u32)(desc >> 32));
    mmio_write32(d->common + COMMON_Q_AVAILLO, (u32)avail);
    mmio_write32(d->common + COMMON_Q_AVAILHI, (u32)(avail >> 32));
    mmio_write32(d->common + COMMON_Q_USEDLO, (u32)used);
    mmio_write32(d->common + COMMON_Q_USEDHI, (u32)(used >> 32));
    mmio_write16(d->common + COMMON_Q_MSIX, 0xffff);
    u16 noff = mmio_read16(d->common + COMMON_Q_NOFF);
    vq->notify_addr = d->notify + (u64)noff * d->notify_mult;
    mmio_write16(d->common + COMMON_Q_ENABLE, 1);
    return 0;
}

void virtio_driver_ok(struct virtio_dev *d)
{
    mmio_write8(d->common + COMMON_STATUS,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

int vq_add(struct virtqueue *vq, const struct vbuf *bufs, int n, u64 token)
{
    if (n <= 0 || vq->num_free < n)
        return -1;
    u16 head = vq->free_head, idx = head, last = head;
    for (int i = 0; i < n; i++) {
        struct vring_desc *dsc = &vq->desc[idx];
        dsc->addr = bufs[i].addr;
        dsc->len = bufs[i].len;
        dsc->flags = (u16)((bufs[i].device_writes ? VRING_DESC_F_WRITE : 0) |
                           (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        last = idx;
        idx = dsc->next;
    }
    vq->free_head = vq->desc[last].next;
    vq->num_free = (u16)(vq->num_free - n);
    vq->token[head] = token;
    vq->avail->ring[vq->avail_idx % vq->size] = head;
    vq->avail_idx++;
    vq->pending++;
    return head;
}

void vq_kick(struct virtqueue *vq)
{
    if (!vq->pending)
        return;
    barrier();
    *(volatile u16 *)&vq->avail->idx = vq->avail_idx;
    mb();
    vq->pending = 0;
    if (!(vq->used->flags & 1)) { /* VRING_USED_F_NO_NOTIFY */
        mmio_write16(vq->notify_addr, vq->index);
        vq->kicks++;
    }
}

bool vq_get(struct virtqueue *vq, u64 *token, u32 *len)
{
    if (vq->last_used == *(volatile u16 *)&vq->used->idx)
        return false;
    barrier();
    struct vring_used_elem e = vq->used->ring[vq->last_used % vq->size];
    vq->last_used++;
    u16 id = (u16)e.id, n = 1;
    if (id >= vq->size)
        return false;
    u16 last = id;
    while (vq->desc[last].flags & VRING_DESC_F_NEXT) {
        last = vq->desc[last].next;
        n++;
    }
    vq->desc[last].next = vq->free_head;
    vq->free_head = id;
    vq->num_free = (u16)(vq->num_free + n);
    if (token)
        *token = vq->token[id];
    if (len)
        *len = e.len;
    return true;
}

int vq_wait(struct virtqueue *vq, u64 *token, u32 *len, u64 timeout_us)
{
    u64 deadline = rdtsc() + us_to_cycles(timeout_us);
    while (!vq_get(vq, token, len)) {
        if (rdtsc() > deadline)
            return -1;
        cpu_relax();
    }
    return 0;
}

u8 virtio_cfg8(struct virtio_dev *d, u32 off)
{
    return mmio_read8(d->device + off);
}
u16 virtio_cfg16(struct virtio_dev *d, u32 off)
{
    return mmio_read16(d->device + off);
}
u32 virtio_cfg32(struct virtio_dev *d, u32 off)
{
    return mmio_read32(d->device + off);
}
u64 virtio_cfg64(struct virtio_dev *d, u32 off)
{
    /* Two halves, retried until the config generation is stable (virtio 1.x §4.1.4.3.1). */
    for (;;) {
        u8 gen = mmio_read8(d->common + 21);
        u64 v = mmio_read32(d->device + off) | (u64)mmio_read32(d->device + off + 4) << 32;
        if (mmio_read8(d->common + 21) == gen)
            return v;
    }
}
void virtio_cfg_write32(struct virtio_dev *d, u32 off, u32 v)
{
    mmio_write32(d->device + off, v);
}

/* Route a queue's interrupt to `vector` on the boot CPU's local APIC through MSI-X entry 0. */
int virtio_msix_route(struct virtio_dev *d, struct virtqueue *vq, u8 vector)
{
    if (!d->msix_cap || !d->msix_table)
        return -1;
    u64 e = d->msix_table;
    mmio_write32(e + 0, 0xfee00000u); /* destination: APIC id 0, physical */
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, vector); /* fixed delivery, edge */
    mmio_write32(e + 12, 0);     /* unmasked */
    u16 ctl = pci_read16(d->pci, (u16)(d->msix_cap + 2));
    pci_write16(d->pci, (u16)(d->msix_cap + 2), (u16)((ctl | 0x8000) & ~0x4000));
    mmio_write16(d->common + COMMON_Q_SELECT, vq->index);
    mmio_write16(d->common + COMMON_Q_MSIX, 0);
    return mmio_read16(d->common + COMMON_Q_MSIX) == 0 ? 0 : -1;
}
