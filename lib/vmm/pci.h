/*
 * lib/vmm/pci.h — PCI bus 0 for the devices behind the host bridge (pci.c): a device is a 256-byte
 * configuration space plus memory BARs that pci.c maps onto the MMIO bus wherever the guest
 * (or our own initial assignment) places them.
 */
#ifndef VESSEL_VMM_PCI_H
#define VESSEL_VMM_PCI_H

#include "vmm/machine.h"

#define PCI_BARS 6

struct pci_bar {
    uint64_t size; /* power of two, >= 4 KiB; 0 = unused */
    bool is64;
    uint64_t addr;   /* current guest address (as programmed) */
    uint64_t mapped; /* where it sits on the MMIO bus now (0 = not mapped) */
    bus_handler_fn fn;
    void *opaque;
};

struct pci_device {
    const char *name;
    uint8_t cfg[256];
    struct pci_bar bars[PCI_BARS];
    unsigned slot;
    unsigned cap_end; /* where the next capability goes */
    /* Writes to the capability area (offset >= 0x40) after cfg[] was updated. Optional. */
    void (*cap_write)(struct pci_device *dev, unsigned offset, unsigned size);
    /* BAR N moved on the MMIO bus from OLD to NEW (0 = unmapped). Optional. */
    void (*bar_moved)(struct pci_device *dev, int bar, uint64_t old_addr, uint64_t new_addr);
    void *owner;
};

/* Fill the standard header: IDs, class, subsystem. */
void pci_header_init(struct pci_device *dev, uint16_t vendor, uint16_t device, uint32_t class_code,
                     uint8_t revision, uint16_t subsys_vendor, uint16_t subsys_id);
/* Append a capability of LEN bytes (id, next filled in); returns its offset or 0 when full. */
unsigned pci_add_capability(struct pci_device *dev, uint8_t id, const void *body, unsigned len);
/* Give the device a slot on bus 0 and addresses for its BARs, and map them. */
int pci_register(struct machine *m, struct pci_device *dev);
void pci_unregister(struct machine *m, struct pci_device *dev);
struct vmstate_writer;
struct vmstate_reader;
/* A device's configuration space (BARs, command, MSI-X control) into/out of a state file; the
 * load maps the BARs where the saved registers put them. */
void pci_device_save(struct machine *m, struct pci_device *dev, struct vmstate_writer *w);
int pci_device_load(struct machine *m, struct pci_device *dev, struct vmstate_reader *r);

#endif
