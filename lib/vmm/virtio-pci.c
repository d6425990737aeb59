/*
 * lib/vmm/virtio-pci.c — the virtio 1.x modern PCI transport: one memory BAR holding the common,
 * ISR, device-config and notify structures plus the MSI-X table and PBA, described by vendor
 * capabilities in configuration space.
 *
 * The transport owns feature negotiation, device status, queue setup and interrupts; the device
 * behind it (ops table) only sees "notify queue Q", "activate", "reset" and its own config space.
 * Locks: vp->lock guards transport registers and is held while calling the device's reset or
 * activate; vp->msix_lock guards only the MSI-X table so a device worker can interrupt without
 * ever waiting on a vCPU that is inside the device.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vmm/virtio.h"
#include "vmm/vmstate.h"

#define BAR_SIZE       0x8000
#define OFF_COMMON     0x0000
#define OFF_ISR        0x1000
#define OFF_DEVICE     0x2000
#define OFF_NOTIFY     0x3000
#define OFF_MSIX_TABLE 0x4000
#define OFF_MSIX_PBA   0x6000
#define NOTIFY_MULT    4
#define NO_VECTOR      0xffff

struct msix_entry {
    uint32_t addr_lo, addr_hi, data, ctrl;
};

struct virtio_pci {
    struct pci_device pci;
    struct machine *machine;
    struct virtio_pci_params p;
    pthread_mutex_t lock;
    uint32_t dfselect, gfselect;
    uint64_t guest_features;
    uint8_t status;
    uint8_t config_generation;
    uint16_t queue_select;
    uint16_t msix_config;
    uint8_t isr;
    struct virtq *queues;
    uint16_t *queue_vector;
    uint8_t cfg_template[256]; /* read-only capability bytes to restore after writes */
    unsigned msix_cap;

    pthread_mutex_t msix_lock;
    unsigned nvec;
    struct msix_entry *table;
    uint64_t pending; /* PBA bits (we keep at most 64 vectors) */
    bool msix_enabled, msix_masked;
    uint64_t interrupts;
};

/* ---- MSI-X ----------------------------------------------------------------------------------- */

static void msix_fire_locked(struct virtio_pci *vp, unsigned vec)
{
    if (vec >= vp->nvec || !vp->msix_enabled)
        return;
    struct msix_entry *e = &vp->table[vec];
    if (vp->msix_masked || (e->ctrl & 1)) {
        vp->pending |= 1ULL << vec;
        return;
    }
    vp->pending &= ~(1ULL << vec);
    vp->interrupts++;
    machine_msi(vp->machine, (uint64_t)e->addr_hi << 32 | e->addr_lo, e->data);
}

static void msix_deliver_pending_locked(struct virtio_pci *vp)
{
    for (unsigned v = 0; v < vp->nvec; v++)
        if (vp->pending & (1ULL << v))
            msix_fire_locked(vp, v);
}

void virtio_pci_interrupt(struct virtio_pci *vp, unsigned q)
{
    if (q >= vp->p.num_queues || !virtq_should_interrupt(&vp->queues[q]))
        return;
    pthread_mutex_lock(&vp->msix_lock);
    vp->isr |= 1;
    msix_fire_locked(vp, __atomic_load_n(&vp->queue_vector[q], __ATOMIC_RELAXED));
    pthread_mutex_unlock(&vp->msix_lock);
}

void virtio_pci_needs_reset(struct virtio_pci *vp, const char *why)
{
    vs_warn("%s: guest broke a virtqueue, device needs reset: %s", vp->p.ops->name, why);
    pthread_mutex_lock(&vp->msix_lock);
    __atomic_or_fetch(&vp->status, VIRTIO_STATUS_NEEDS_RESET, __ATOMIC_SEQ_CST);
    vp->isr |= 2;
    msix_fire_locked(vp, vp->msix_config);
    pthread_mutex_unlock(&vp->msix_lock);
}

void virtio_pci_config_changed(struct virtio_pci *vp)
{
    pthread_mutex_lock(&vp->lock);
    vp->config_generation++;
    pthread_mutex_unlock(&vp->lock);
    pthread_mutex_lock(&vp->msix_lock);
    vp->isr |= 2;
    msix_fire_locked(vp, vp->msix_config);
    pthread_mutex_unlock(&vp->msix_lock);
}

static void msix_table_io(struct virtio_pci *vp, uint64_t off, uint8_t *data, unsigned size,
                          bool is_write)
{
    pthread_mutex_lock(&vp->msix_lock);
    if (off + size <= (uint64_t)vp->nvec * 16) {
        uint8_t *raw = (uint8_t *)vp->table + off;
        if (is_write) {
            memcpy(raw, data, size);
            msix_deliver_pending_locked(vp);
        } else {
            memcpy(data, raw, size);
        }
    } else if (!is_write) {
        memset(data, 0, size);
    }
    pthread_mutex_unlock(&vp->msix_lock);
}

static void msix_cap_write(struct pci_device *dev, unsigned offset, unsigned size)
{
    struct virtio_pci *vp = dev->owner;
    /* everything in the capability area is read-only except MSI-X enable and function mask */
    uint8_t ctrl_hi = dev->cfg[vp->msix_cap + 3];
    memcpy(dev->cfg + 0x40, vp->cfg_template + 0x40, 256 - 0x40);
    dev->cfg[vp->msix_cap + 3] =
        (uint8_t)((vp->cfg_template[vp->msix_cap + 3] & 0x3f) | (ctrl_hi & 0xc0));
    pthread_mutex_lock(&vp->msix_lock);
    vp->msix_enabled = ctrl_hi & 0x80;
    vp->msix_masked = ctrl_hi & 0x40;
    msix_deliver_pending_locked(vp);
    pthread_mutex_unlock(&vp->msix_lock);
}

/* ---- common configuration -------------------------------------------------------------------- */

static void device_reset_locked(struct virtio_pci *vp)
{
    if (vp->p.ops->reset)
        vp->p.ops->reset(vp->p.dev);
    for (unsigned i = 0; i < vp->p.num_queues; i++) {
        struct virtq *q = &vp->queues[i];
        const struct guest_mem *mem = q->mem;
        memset(q, 0, sizeof(*q));
        q->mem = mem;
        q->size = vp->p.queue_max;
        vp->queue_vector[i] = NO_VECTOR;
    }
    vp->status = 0;
    vp->guest_features = 0;
    vp->dfselect = vp->gfselect = 0;
    vp->queue_select = 0;
    pthread_mutex_lock(&vp->msix_lock);
    vp->msix_config = NO_VECTOR;
    vp->isr = 0;
    pthread_mutex_unlock(&vp->msix_lock);
}

static uint64_t device_features(struct virtio_pci *vp)
{
    return vp->p.features | VIRTIO_F_VERSION_1;
}

static uint64_t common_read(struct virtio_pci *vp, unsigned off)
{
    struct virtq *q = vp->queue_select < vp->p.num_queues ? &vp->queues[vp->queue_select] : NULL;
    switch (off) {
    case 0x00:
        return vp->dfselect;
    case 0x04:
        return vp->dfselect < 2 ? (uint32_t)(device_features(vp) >> (32 * vp->dfselect)) : 0;
    case 0x08:
        return vp->gfselect;
    case 0x0c:
        return vp->gfselect < 2 ? (uint32_t)(vp->guest_features >> (32 * vp->gfselect)) : 0;
    case 0x10:
        return vp->msix_config;
    case 0x12:
        return vp->p.num_queues;
    case 0x14:
        return __atomic_load_n(&vp->status, __ATOMIC_SEQ_CST);
    case 0x15:
        return vp->config_generation;
    case 0x16:
        return vp->queue_select;
    case 0x18:
        return q ? q->size : 0;
    case 0x1a:
        return q ? vp->queue_vector[vp->queue_select] : NO_VECTOR;
    case 0x1c:
        return q ? q->ready : 0;
    case 0x1e:
        return q ? vp->queue_select : 0;
    case 0x20:
        return q ? (uint32_t)q->desc : 0;
    case 0x24:
        return q ? (uint32_t)(q->desc >> 32) : 0;
    case 0x28:
        return q ? (uint32_t)q->avail : 0;
    case 0x2c:
        return q ? (uint32_t)(q->avail >> 32) : 0;
    case 0x30:
        return q ? (uint32_t)q->used : 0;
    case 0x34:
        return q ? (uint32_t)(q->used >> 32) : 0;
    default:
        return 0;
    }
}

static void set_half(uint64_t *v, bool high, uint32_t val)
{
    *v = high ? ((*v & 0xffffffffULL) | (uint64_t)val << 32) : ((*v & ~0xffffffffULL) | val);
}

static void common_write(struct virtio_pci *vp, unsigned off, uint32_t v)
{
    struct virtq *q = vp->queue_select < vp->p.num_queues ? &vp->queues[vp->queue_select] : NULL;
    bool q_live = q && q->ready;
    switch (off) {
    case 0x00:
        vp->dfselect = v;
        break;
    case 0x08:
        vp->gfselect = v;
        break;
    case 0x0c:
        if (vp->gfselect < 2 && !(vp->status & VIRTIO_STATUS_FEATURES_OK))
            set_half(&vp->guest_features, vp->gfselect == 1, v);
        break;
    case 0x10:
        pthread_mutex_lock(&vp->msix_lock);
        vp->msix_config = (uint16_t)v < vp->nvec ? (uint16_t)v : NO_VECTOR;
        pthread_mutex_unlock(&vp->msix_lock);
        break;
    case 0x14: {
        uint8_t s = (uint8_t)v;
        if (s == 0) {
            device_reset_locked(vp);
            break;
        }
        if ((s & VIRTIO_STATUS_FEATURES_OK) && !(vp->status & VIRTIO_STATUS_FEATURES_OK)) {
            uint64_t f = vp->guest_features;
            if ((f & ~device_features(vp)) || !(f & VIRTIO_F_VERSION_1))
                s &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK; /* refuse: driver must read back */
        }
        bool activate = (s & VIRTIO_STATUS_DRIVER_OK) && !(vp->status & VIRTIO_STATUS_DRIVER_OK);
        __atomic_store_n(&vp->status, (uint8_t)(s | (vp->status & VIRTIO_STATUS_NEEDS_RESET)),
                         __ATOMIC_SEQ_CST);
        if (activate && vp->p.ops->activate)
            vp->p.ops->activate(vp->p.dev);
        break;
    }
    case 0x16:
        vp->queue_select = (uint16_t)v;
        break;
    case 0x18:
        if (q && !q_live && v && v <= vp->p.queue_max && !(v & (v - 1)))
            q->size = (uint16_t)v;
        break;
    case 0x1a:
        if (q)
            __atomic_store_n(&vp->queue_vector[vp->queue_select],
                             (uint16_t)v < vp->nvec ? (uint16_t)v : NO_VECTOR, __ATOMIC_RELAXED);
        break;
    case 0x1c:
        if (q && v == 1 && !q_live) {
            if (virtq_validate(q) < 0) {
                virtio_pci_needs_reset(vp, q->error);
                break;
            }
            virtq_set_indices(q, 0, 0);
            q->ready = true;
        }
        break;
    case 0x20:
    case 0x24:
        if (q && !q_live)
            set_half(&q->desc, off == 0x24, v);
        break;
    case 0x28:
    case 0x2c:
        if (q && !q_live)
            set_half(&q->avail, off == 0x2c, v);
        break;
    case 0x30:
    case 0x34:
        if (q && !q_live)
            set_half(&q->used, off == 0x34, v);
        break;
    default:
        break;
    }
}

/* Register widths of the common structure, so odd accesses can be split or ignored. */
static unsigned common_width(unsigned off)
{
    if (off < 0x10)
        return 4;
    if (off == 0x14 || off == 0x15)
        return 1;
    if (off < 0x20)
        return 2;
    if (off < 0x38)
        return 4;
    return 0;
}

static void bar_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct virtio_pci *vp = opaque;
    if (off >= OFF_MSIX_TABLE && off < OFF_MSIX_PBA) {
        msix_table_io(vp, off - OFF_MSIX_TABLE, data, size, is_write);
        return;
    }
    if (off >= OFF_MSIX_PBA) {
        if (!is_write) {
            pthread_mutex_lock(&vp->msix_lock);
            uint64_t pba = off - OFF_MSIX_PBA < 8 ? vp->pending >> (8 * (off - OFF_MSIX_PBA)) : 0;
            pthread_mutex_unlock(&vp->msix_lock);
            memcpy(data, &pba, size);
        }
        return;
    }
    if (off >= OFF_NOTIFY) {
        unsigned q = (unsigned)(off - OFF_NOTIFY) / NOTIFY_MULT;
        if (is_write && q < vp->p.num_queues && vp->queues[q].ready && vp->p.ops->queue_notify)
            vp->p.ops->queue_notify(vp->p.dev, q);
        else if (!is_write)
            memset(data, 0, size);
        return;
    }
    if (off >= OFF_DEVICE) {
        uint64_t o = off - OFF_DEVICE;
        if (o + size > vp->p.config_size) {
            if (!is_write)
                memset(data, 0, size);
        } else if (is_write) {
            if (vp->p.ops->config_write)
                vp->p.ops->config_write(vp->p.dev, o, data, size);
        } else {
            vp->p.ops->config_read(vp->p.dev, o, data, size);
        }
        return;
    }
    if (off >= OFF_ISR) {
        if (!is_write) {
            memset(data, 0, size);
            pthread_mutex_lock(&vp->msix_lock);
            if (off == OFF_ISR) {
                data[0] = vp->isr; /* reading clears it */
                vp->isr = 0;
            }
            pthread_mutex_unlock(&vp->msix_lock);
        }
        return;
    }
    unsigned reg = (unsigned)off;
    unsigned width = common_width(reg & ~3u) == 4 ? 4 : common_width(reg & ~1u) == 2 ? 2 : 1;
    unsigned base = reg & ~(width - 1);
    pthread_mutex_lock(&vp->lock);
    if (!is_write) {
        uint64_t v = common_read(vp, base) >> (8 * (reg - base));
        memcpy(data, &v, size);
    } else if (size == width && base == reg) {
        uint32_t v = 0;
        memcpy(&v, data, size);
        common_write(vp, reg, v);
    } else if (size == 4 && width == 2 && (reg & 3) == 0) { /* two 16-bit registers at once */
        uint32_t v;
        memcpy(&v, data, 4);
        common_write(vp, reg, v & 0xffff);
        if (common_width(reg + 2) == 2)
            common_write(vp, reg + 2, v >> 16);
    }
    pthread_mutex_unlock(&vp->lock);
}

/* ---- ioeventfd: queue kicks that never leave the kernel ---------------------------------------
 */

static void notify_ioeventfd(struct virtio_pci *vp, uint64_t bar_addr, bool assign)
{
    for (unsigned q = 0; q < vp->p.num_queues; q++) {
        int fd = vp->p.ops->queue_eventfd(vp->p.dev, q);
        if (fd < 0)
            continue;
        struct kvm_ioeventfd e = {
            .addr = bar_addr + OFF_NOTIFY + (uint64_t)q * NOTIFY_MULT,
            .len = 0, /* any access width (KVM_CAP_IOEVENTFD_ANY_LENGTH) */
            .fd = fd,
            .flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
        };
        if (ioctl(vp->machine->vm_fd, KVM_IOEVENTFD, &e) < 0) {
            e.len = 2; /* the width the virtio spec uses */
            if (ioctl(vp->machine->vm_fd, KVM_IOEVENTFD, &e) < 0 && assign)
                vs_warn("%s: KVM_IOEVENTFD for queue %u failed: kicks go through the VMM",
                        vp->p.ops->name, q);
        }
    }
}

static void bar_moved(struct pci_device *dev, int bar, uint64_t old_addr, uint64_t new_addr)
{
    struct virtio_pci *vp = dev->owner;
    if (bar != 0 || !vp->p.ops->queue_eventfd)
        return;
    if (old_addr)
        notify_ioeventfd(vp, old_addr, false);
    if (new_addr)
        notify_ioeventfd(vp, new_addr, true);
}

/* ---- save/restore ---------------------------------------------------------------------------- */

static void virtio_pci_park(void *opaque, bool hold)
{
    struct virtio_pci *vp = opaque;
    if (vp->p.ops->park)
        vp->p.ops->park(vp->p.dev, hold);
}

static int virtio_pci_save(void *opaque, struct vmstate_writer *w)
{
    struct virtio_pci *vp = opaque;
    pci_device_save(vp->machine, &vp->pci, w);
    pthread_mutex_lock(&vp->lock);
    pthread_mutex_lock(&vp->msix_lock);
    vmw_u32(w, vp->dfselect);
    vmw_u32(w, vp->gfselect);
    vmw_u64(w, vp->guest_features);
    vmw_u8(w, vp->status);
    vmw_u8(w, vp->config_generation);
    vmw_u16(w, vp->queue_select);
    vmw_u16(w, vp->msix_config);
    vmw_u8(w, vp->isr);
    vmw_u32(w, vp->nvec);
    vmw_bytes(w, vp->table, vp->nvec * sizeof(*vp->table));
    vmw_u64(w, vp->pending);
    vmw_u8(w, vp->msix_enabled);
    vmw_u8(w, vp->msix_masked);
    vmw_u16(w, vp->p.num_queues);
    for (unsigned i = 0; i < vp->p.num_queues; i++) {
        const struct virtq *q = &vp->queues[i];
        vmw_u16(w, q->size);
        vmw_u8(w, q->ready);
        vmw_u8(w, q->broken);
        vmw_u64(w, q->desc);
        vmw_u64(w, q->avail);
        vmw_u64(w, q->used);
        vmw_u16(w, q->last_avail);
        vmw_u16(w, q->used_idx);
        vmw_u16(w, vp->queue_vector[i]);
    }
    pthread_mutex_unlock(&vp->msix_lock);
    pthread_mutex_unlock(&vp->lock);
    size_t mark = vmw_blob_begin(w);
    int rc = vp->p.ops->save ? vp->p.ops->save(vp->p.dev, w) : 0;
    vmw_blob_end(w, mark);
    return rc;
}

static int virtio_pci_load(void *opaque, struct vmstate_reader *r)
{
    struct virtio_pci *vp = opaque;
    int rc = pci_device_load(vp->machine, &vp->pci, r);
    if (rc < 0)
        return rc;
    /* The capabilities are ours, not the file's: keep only the MSI-X enable and mask bits. */
    uint8_t ctrl_hi = vp->pci.cfg[vp->msix_cap + 3];
    memcpy(vp->pci.cfg + 0x40, vp->cfg_template + 0x40, 256 - 0x40);
    vp->pci.cfg[vp->msix_cap + 3] =
        (uint8_t)((vp->cfg_template[vp->msix_cap + 3] & 0x3f) | (ctrl_hi & 0xc0));
    uint32_t dfselect = vmr_u32(r), gfselect = vmr_u32(r);
    uint64_t features = vmr_u64(r);
    uint8_t status = vmr_u8(r), generation = vmr_u8(r);
    uint16_t queue_select = vmr_u16(r), msix_config = vmr_u16(r);
    uint8_t isr = vmr_u8(r);
    if (!vmr_check(r, vmr_u32(r) == vp->nvec))
        return -EINVAL;
    struct msix_entry *table = vs_calloc(vp->nvec, sizeof(*table));
    struct virtq *queues = vs_calloc(vp->p.num_queues, sizeof(*queues));
    uint16_t *vectors = vs_calloc(vp->p.num_queues, sizeof(*vectors));
    if (!table || !queues || !vectors) {
        free(table);
        free(queues);
        free(vectors);
        return -ENOMEM;
    }
    vmr_bytes(r, table, vp->nvec * sizeof(*table));
    uint64_t pending = vmr_u64(r);
    bool enabled = vmr_bool(r), masked = vmr_bool(r);
    vmr_check(r, vmr_u16(r) == vp->p.num_queues);
    vmr_check(r, msix_config < vp->nvec || msix_config == NO_VECTOR);
    vmr_check(r, (features & ~device_features(vp)) == 0 && isr <= 3 && pending >> vp->nvec == 0);
    for (unsigned i = 0; i < vp->p.num_queues && !r->failed; i++) {
        struct virtq *q = &queues[i];
        q->mem = vp->queues[i].mem;
        q->size = vmr_u16(r);
        q->ready = vmr_bool(r);
        q->broken = vmr_bool(r);
        q->desc = vmr_u64(r);
        q->avail = vmr_u64(r);
        q->used = vmr_u64(r);
        uint16_t last_avail = vmr_u16(r);
        virtq_set_indices(q, last_avail, vmr_u16(r));
        vectors[i] = vmr_u16(r);
        vmr_check(r, q->size && q->size <= vp->p.queue_max && !(q->size & (q->size - 1)) &&
                         (vectors[i] < vp->nvec || vectors[i] == NO_VECTOR));
        if (!r->failed && q->ready && virtq_validate(q) < 0)
            vmr_check(r, false); /* rings outside guest RAM */
    }
    struct vmstate_reader dev;
    if (vmr_blob(r, &dev) && vp->p.ops->load) {
        rc = vp->p.ops->load(vp->p.dev, &dev);
        if (rc == 0)
            rc = vmr_finish(&dev);
    } else if (!r->failed) {
        rc = vmr_finish(&dev);
    }
    if (r->failed || rc < 0) {
        free(table);
        free(queues);
        free(vectors);
        return rc < 0 ? rc : -EINVAL;
    }
    pthread_mutex_lock(&vp->lock);
    pthread_mutex_lock(&vp->msix_lock);
    vp->dfselect = dfselect;
    vp->gfselect = gfselect;
    vp->guest_features = features;
    vp->status = status;
    vp->config_generation = generation;
    vp->queue_select = queue_select;
    vp->msix_config = msix_config;
    vp->isr = isr;
    memcpy(vp->table, table, vp->nvec * sizeof(*table));
    vp->pending = pending;
    vp->msix_enabled = enabled;
    vp->msix_masked = masked;
    memcpy(vp->queues, queues, vp->p.num_queues * sizeof(*queues));
    memcpy(vp->queue_vector, vectors, vp->p.num_queues * sizeof(*vectors));
    pthread_mutex_unlock(&vp->msix_lock);
    pthread_mutex_unlock(&vp->lock);
    free(table);
    free(queues);
    free(vectors);
    /* Buffers the driver posted (and kicked) before the save wait in the rings: look now. */
    for (unsigned i = 0; i < vp->p.num_queues; i++)
        if (vp->queues[i].ready && vp->p.ops->queue_notify)
            vp->p.ops->queue_notify(vp->p.dev, i);
    return 0;
}

static const struct device_persist virtio_pci_persist = {virtio_pci_park, virtio_pci_save,
                                                         virtio_pci_load};

/* ---- construction ---------------------------------------------------------------------------- */

static void add_virtio_cap(struct pci_device *dev, uint8_t type, uint32_t off, uint32_t len,
                           uint32_t extra, bool has_extra)
{
    uint8_t cap[20] = {0};
    cap[2] = has_extra ? 20 : 16;
    cap[3] = type;
    cap[4] = 0; /* BAR 0 */
    memcpy(cap + 8, &off, 4);
    memcpy(cap + 12, &len, 4);
    if (has_extra)
        memcpy(cap + 16, &extra, 4);
    pci_add_capability(dev, 0x09, cap, cap[2]);
}

int virtio_pci_create(struct machine *m, const struct virtio_pci_params *params,
                      struct virtio_pci **out)
{
    struct virtio_pci *vp = vs_calloc(1, sizeof(*vp));
    if (!vp)
        return -ENOMEM;
    vp->machine = m;
    vp->p = *params;
    pthread_mutex_init(&vp->lock, NULL);
    pthread_mutex_init(&vp->msix_lock, NULL);
    vp->nvec = VS_MIN((unsigned)params->num_queues + 1, 64u);
    vp->queues = vs_calloc(params->num_queues, sizeof(*vp->queues));
    vp->queue_vector = vs_calloc(params->num_queues, sizeof(*vp->queue_vector));
    vp->table = vs_calloc(vp->nvec, sizeof(*vp->table));
    if (!vp->queues || !vp->queue_vector || !vp->table) {
        virtio_pci_destroy(vp);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < vp->nvec; i++)
        vp->table[i].ctrl = 1; /* masked */
    for (unsigned i = 0; i < params->num_queues; i++)
        vp->queues[i].mem = &m->mem;
    device_reset_locked(vp);

    struct pci_device *dev = &vp->pci;
    dev->name = params->ops->name;
    dev->owner = vp;
    pci_header_init(dev, 0x1af4, (uint16_t)(0x1040 + params->ops->device_id),
                    (uint32_t)params->ops->pci_class << 8, 1, 0x1af4, params->ops->device_id);
    dev->bars[0] = (struct pci_bar){.size = BAR_SIZE, .is64 = true, .fn = bar_io, .opaque = vp};
    add_virtio_cap(dev, 1, OFF_COMMON, 0x38, 0, false);
    add_virtio_cap(dev, 2, OFF_NOTIFY, NOTIFY_MULT * params->num_queues, NOTIFY_MULT, true);
    add_virtio_cap(dev, 3, OFF_ISR, 1, 0, false);
    add_virtio_cap(dev, 4, OFF_DEVICE, VS_MAX(params->config_size, 4u), 0, false);
    add_virtio_cap(dev, 5, 0, 0, 0, true); /* PCI config access (not implemented: reads 0) */
    uint8_t msix[12] = {0};
    uint16_t ctrl = (uint16_t)(vp->nvec - 1);
    uint32_t table = OFF_MSIX_TABLE, pba = OFF_MSIX_PBA;
    memcpy(msix + 2, &ctrl, 2);
    memcpy(msix + 4, &table, 4);
    memcpy(msix + 8, &pba, 4);
    vp->msix_cap = pci_add_capability(dev, 0x11, msix, sizeof(msix));
    memcpy(vp->cfg_template, dev->cfg, sizeof(dev->cfg));
    dev->cap_write = msix_cap_write;
    dev->bar_moved = bar_moved;
    int rc = pci_register(m, dev);
    if (rc < 0) {
        virtio_pci_destroy(vp);
        return rc;
    }
    machine_device_persist(m, params->dev, &virtio_pci_persist, vp);
    *out = vp;
    return 0;
}

void virtio_pci_destroy(struct virtio_pci *vp)
{
    if (!vp)
        return;
    if (vp->pci.slot)
        pci_unregister(vp->machine, &vp->pci);
    free(vp->queues);
    free(vp->queue_vector);
    free(vp->table);
    pthread_mutex_destroy(&vp->lock);
    pthread_mutex_destroy(&vp->msix_lock);
    free(vp);
}

struct virtq *virtio_pci_queue(struct virtio_pci *vp, unsigned q)
{
    return q < vp->p.num_queues ? &vp->queues[q] : NULL;
}

uint64_t virtio_pci_features(struct virtio_pci *vp)
{
    return vp->guest_features;
}

void virtio_wake(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0) {
        /* a saturated counter still wakes the reader */
    }
}

int virtio_worker_wait_for(int kick_fd, int stop_fd, int timeout_ms)
{
    for (;;) {
        struct pollfd p[2] = {{kick_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int n = poll(p, 2, timeout_ms);
        if (n < 0)
            continue;
        if (n == 0)
            return 0;
        if (p[1].revents)
            return -1;
        uint64_t v;
        if (read(kick_fd, &v, sizeof(v)) < 0) {
            /* another reader took it: a spurious wakeup */
        }
        return 1;
    }
}

bool virtio_worker_wait(int kick_fd, int stop_fd)
{
    return virtio_worker_wait_for(kick_fd, stop_fd, -1) > 0;
}
