/*
 * lib/vmm/pci.c — the PCI host bridge: configuration mechanism #1 (ports 0xcf8/0xcfc), bus 0
 * with up to 31 devices, and BAR mapping into the 32-bit hole below 4 GiB.
 *
 * Like firmware would, we assign every BAR an address at creation and enable memory decoding, so
 * a guest that trusts the firmware (Linux, the probe) just uses them; a guest that re-sizes or
 * moves a BAR is followed: the BAR is (re)mapped on the MMIO bus whenever its address or the
 * command register's memory-enable bit changes. Port 0xcf9 (reset control, the FADT's reset
 * register) shares this decode range and is handled here too.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/pci.h"
#include "vmm/vmstate.h"

#define PCI_SLOTS          32
#define PCI_COMMAND_MEMORY 0x2

struct pci {
    struct machine *machine;
    pthread_mutex_t lock;
    uint32_t address; /* 0xcf8 */
    struct pci_device *slots[PCI_SLOTS];
    struct pci_device host_bridge;
    uint64_t next_mmio; /* BAR allocator, grows up from the PCI hole */
};

void pci_header_init(struct pci_device *dev, uint16_t vendor, uint16_t device, uint32_t class_code,
                     uint8_t revision, uint16_t subsys_vendor, uint16_t subsys_id)
{
    memset(dev->cfg, 0, sizeof(dev->cfg));
    memcpy(dev->cfg + 0x00, &vendor, 2);
    memcpy(dev->cfg + 0x02, &device, 2);
    dev->cfg[0x08] = revision;
    dev->cfg[0x09] = (uint8_t)class_code;
    dev->cfg[0x0a] = (uint8_t)(class_code >> 8);
    dev->cfg[0x0b] = (uint8_t)(class_code >> 16);
    memcpy(dev->cfg + 0x2c, &subsys_vendor, 2);
    memcpy(dev->cfg + 0x2e, &subsys_id, 2);
}

unsigned pci_add_capability(struct pci_device *dev, uint8_t id, const void *body, unsigned len)
{
    uint8_t *next = &dev->cfg[0x34];
    while (*next)
        next = &dev->cfg[*next + 1];
    unsigned off = dev->cap_end ? dev->cap_end : 0x40;
    if (off + len > 0x100 || len < 2)
        return 0;
    memcpy(dev->cfg + off, body, len);
    dev->cfg[off] = id;
    dev->cfg[off + 1] = 0;
    *next = (uint8_t)off;
    dev->cfg[0x06] |= 0x10; /* status: capability list */
    dev->cap_end = VS_ALIGN_UP(off + len, 4);
    return off;
}

static uint32_t bar_reg(const struct pci_device *dev, int i)
{
    uint32_t v;
    memcpy(&v, dev->cfg + 0x10 + 4 * i, 4);
    return v;
}

/* Map or unmap every BAR of DEV to match its registers and the command register. */
static void pci_update_bars(struct machine *m, struct pci_device *dev)
{
    bool decode = dev->cfg[0x04] & PCI_COMMAND_MEMORY;
    for (int i = 0; i < PCI_BARS; i++) {
        struct pci_bar *b = &dev->bars[i];
        if (!b->size)
            continue;
        uint64_t addr = bar_reg(dev, i) & ~0xfULL;
        if (b->is64)
            addr |= (uint64_t)bar_reg(dev, i + 1) << 32;
        b->addr = addr;
        uint64_t want = decode && addr && addr + b->size > addr &&
                                (addr + b->size <= LAYOUT_PCI_MMIO_END || addr >= LAYOUT_4G)
                            ? addr
                            : 0;
        if (want && addr < LAYOUT_4G && addr < LAYOUT_PCI_HOLE)
            want = 0; /* over RAM: refuse */
        if (want == b->mapped)
            continue;
        uint64_t old = b->mapped;
        if (b->mapped)
            bus_unregister(&m->mmio, b->mapped, b->opaque);
        b->mapped = 0;
        if (want && bus_register(&m->mmio, want, b->size, b->fn, b->opaque, dev->name) == 0)
            b->mapped = want;
        if (dev->bar_moved && old != b->mapped)
            dev->bar_moved(dev, i, old, b->mapped);
    }
}

static void cfg_write(struct pci *p, struct pci_device *dev, unsigned off, const uint8_t *data,
                      unsigned size)
{
    for (unsigned i = 0; i < size; i++) {
        unsigned o = off + i;
        uint8_t v = data[i];
        if (o >= 0x10 && o < 0x28) { /* BARs: keep size alignment and flag bits */
            int bar = (int)(o - 0x10) / 4;
            unsigned byte = (o - 0x10) % 4;
            struct pci_bar *b = &dev->bars[bar];
            bool upper = bar > 0 && dev->bars[bar - 1].is64 && !b->size;
            uint64_t mask;
            if (upper)
                mask = ~((dev->bars[bar - 1].size - 1) >> 32);
            else if (b->size)
                mask = ~(b->size - 1) & 0xffffffffULL;
            else
                mask = 0;
            uint8_t m8 = (uint8_t)(mask >> (8 * byte));
            dev->cfg[o] = (uint8_t)((dev->cfg[o] & ~m8) | (v & m8));
        } else if (o == 0x04) {
            dev->cfg[o] = v & 0x07; /* I/O, memory, bus master */
        } else if (o == 0x05) {
            dev->cfg[o] = v & 0x05; /* SERR, INTx disable */
        } else if (o == 0x0c || o == 0x0d || o == 0x3c) {
            dev->cfg[o] = v; /* cache line, latency, interrupt line */
        } else if (o >= 0x40 && dev->cap_write) {
            dev->cfg[o] = v; /* the device validates and reacts below */
        }
    }
    if (off < 0x28 && off + size > 0x04)
        pci_update_bars(p->machine, dev);
    if (off + size > 0x40 && dev->cap_write)
        dev->cap_write(dev, off, size);
}

static void pci_config_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct pci *p = opaque;
    pthread_mutex_lock(&p->lock);
    if (off < 4) {
        if (off == 1 && size == 1) { /* 0xcf9: reset control */
            if (is_write && (data[0] & 0x04)) {
                pthread_mutex_unlock(&p->lock);
                machine_request_stop(p->machine, VMM_EXIT_REBOOT, 0, "reset via port 0xcf9");
                return;
            }
            if (!is_write)
                data[0] = 0;
        } else if (off == 0 && size == 4) {
            if (is_write)
                memcpy(&p->address, data, 4);
            else
                memcpy(data, &p->address, 4);
        } else if (!is_write) {
            memset(data, 0xff, size);
        }
        pthread_mutex_unlock(&p->lock);
        return;
    }
    uint32_t a = p->address;
    unsigned bus = (a >> 16) & 0xff, slot = (a >> 11) & 0x1f, fn = (a >> 8) & 7;
    unsigned reg = (a & 0xfc) + (unsigned)(off - 4);
    struct pci_device *dev = (a & 0x80000000u) && bus == 0 && fn == 0 ? p->slots[slot] : NULL;
    if (reg + size > 256)
        size = 256 - reg;
    if (!dev) {
        if (!is_write)
            memset(data, 0xff, size);
    } else if (is_write) {
        cfg_write(p, dev, reg, data, size);
    } else {
        memcpy(data, dev->cfg + reg, size);
    }
    pthread_mutex_unlock(&p->lock);
}

int pci_register(struct machine *m, struct pci_device *dev)
{
    struct pci *p = m->pci;
    pthread_mutex_lock(&p->lock);
    unsigned slot = 1;
    while (slot < PCI_SLOTS && p->slots[slot])
        slot++;
    if (slot == PCI_SLOTS) {
        pthread_mutex_unlock(&p->lock);
        return vs_error(-ENOSPC, "%s: PCI bus 0 is full (31 devices)", dev->name);
    }
    for (int i = 0; i < PCI_BARS; i++) {
        struct pci_bar *b = &dev->bars[i];
        if (!b->size)
            continue;
        uint64_t at = VS_ALIGN_UP(p->next_mmio, b->size);
        if (at + b->size > LAYOUT_PCI_MMIO_END) {
            pthread_mutex_unlock(&p->lock);
            return vs_error(-ENOSPC, "%s: no room for BAR %d in the PCI hole", dev->name, i);
        }
        p->next_mmio = at + b->size;
        uint32_t lo = (uint32_t)at | (b->is64 ? 0x4 : 0), hi = (uint32_t)(at >> 32);
        memcpy(dev->cfg + 0x10 + 4 * i, &lo, 4);
        if (b->is64)
            memcpy(dev->cfg + 0x14 + 4 * i, &hi, 4);
    }
    dev->cfg[0x04] |= PCI_COMMAND_MEMORY;
    dev->slot = slot;
    p->slots[slot] = dev;
    pci_update_bars(m, dev);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

void pci_unregister(struct machine *m, struct pci_device *dev)
{
    struct pci *p = m->pci;
    pthread_mutex_lock(&p->lock);
    dev->cfg[0x04] &= (uint8_t)~PCI_COMMAND_MEMORY;
    pci_update_bars(m, dev);
    if (dev->slot && p->slots[dev->slot] == dev)
        p->slots[dev->slot] = NULL;
    pthread_mutex_unlock(&p->lock);
}

void pci_device_save(struct machine *m, struct pci_device *dev, struct vmstate_writer *w)
{
    struct pci *p = m->pci;
    pthread_mutex_lock(&p->lock);
    vmw_u32(w, dev->slot);
    vmw_bytes(w, dev->cfg, sizeof(dev->cfg));
    pthread_mutex_unlock(&p->lock);
}

int pci_device_load(struct machine *m, struct pci_device *dev, struct vmstate_reader *r)
{
    struct pci *p = m->pci;
    uint8_t cfg[256];
    uint32_t slot = vmr_u32(r);
    vmr_bytes(r, cfg, sizeof(cfg));
    /* Identity and capability layout come from the rebuilt device: they must match. */
    if (!vmr_check(r, slot == dev->slot && memcmp(cfg, dev->cfg, 4) == 0 &&
                          memcmp(cfg + 0x34, dev->cfg + 0x34, 1) == 0))
        return -EINVAL;
    pthread_mutex_lock(&p->lock);
    memcpy(dev->cfg, cfg, sizeof(cfg));
    pci_update_bars(m, dev);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int pci_save(void *opaque, struct vmstate_writer *w)
{
    struct pci *p = opaque;
    pthread_mutex_lock(&p->lock);
    vmw_u32(w, p->address);
    vmw_bytes(w, p->host_bridge.cfg, sizeof(p->host_bridge.cfg));
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int pci_load(void *opaque, struct vmstate_reader *r)
{
    struct pci *p = opaque;
    uint32_t address = vmr_u32(r);
    uint8_t cfg[256];
    vmr_bytes(r, cfg, sizeof(cfg));
    if (!vmr_check(r, memcmp(cfg, p->host_bridge.cfg, 4) == 0))
        return -EINVAL;
    pthread_mutex_lock(&p->lock);
    p->address = address;
    memcpy(p->host_bridge.cfg, cfg, sizeof(cfg));
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static const struct device_persist pci_persist = {NULL, pci_save, pci_load};

static void pci_destroy(void *opaque)
{
    struct pci *p = opaque;
    pthread_mutex_destroy(&p->lock);
    free(p);
}

int pci_create(struct machine *m)
{
    struct pci *p = vs_calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->machine = m;
    p->next_mmio = LAYOUT_PCI_HOLE;
    pthread_mutex_init(&p->lock, NULL);
    int rc = machine_add_device(m, "pci", p, pci_destroy, NULL);
    if (rc < 0) {
        pci_destroy(p);
        return rc;
    }
    m->pci = p;
    machine_device_persist(m, p, &pci_persist, p);
    /* 00:00.0 host bridge (Red Hat's generic PCIe host bridge ID) */
    p->host_bridge.name = "host-bridge";
    pci_header_init(&p->host_bridge, 0x1b36, 0x0008, 0x060000, 0, 0x1af4, 0x1100);
    p->slots[0] = &p->host_bridge;
    return bus_register(&m->pio, 0xcf8, 8, pci_config_io, p, "pci-config");
}
