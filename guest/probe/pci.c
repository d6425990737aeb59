/*
 * pci.c — PCI enumeration and BAR placement through configuration mechanism #1 (ports
 * 0xCF8/0xCFC) or, where there is none (microvm,pcie=on), ECAM found through ACPI's MCFG.
 *
 * Firmware (SeaBIOS on q35) usually has placed the BARs already; when it has not (microvm's qboot,
 * a bare VMM), BARs reading zero are sized and placed in a 32-bit window above everything that
 * is already assigned, so the same probe runs on every machine without knowing its memory map.
 */
#include "probe.h"

#define MAX_PCI_DEVS 64

static struct pci_dev devs[MAX_PCI_DEVS];
static int ndevs;
static u64 ecam_base;
static bool use_ports;
static u64 mmio_next, mmio_limit; /* window for unassigned memory BARs */
static u32 io_next = 0xc000;

static u64 ecam_addr(const struct pci_dev *d, u16 off)
{
    return ecam_base + ((u64)d->bus << 20 | (u64)d->dev << 15 | (u64)d->fn << 12 | off);
}

static u32 cf8_addr(const struct pci_dev *d, u16 off)
{
    return 0x80000000u | (u32)d->bus << 16 | (u32)d->dev << 11 | (u32)d->fn << 8 | (off & 0xfc);
}

u32 pci_read32(const struct pci_dev *d, u16 off)
{
    if (use_ports) {
        outl(0xcf8, cf8_addr(d, off));
        return inl(0xcfc);
    }
    return mmio_read32(ecam_addr(d, off));
}

u16 pci_read16(const struct pci_dev *d, u16 off)
{
    if (use_ports) {
        outl(0xcf8, cf8_addr(d, off));
        return inw((u16)(0xcfc + (off & 2)));
    }
    return mmio_read16(ecam_addr(d, off));
}

u8 pci_read8(const struct pci_dev *d, u16 off)
{
    if (use_ports) {
        outl(0xcf8, cf8_addr(d, off));
        return inb((u16)(0xcfc + (off & 3)));
    }
    return mmio_read8(ecam_addr(d, off));
}

void pci_write32(const struct pci_dev *d, u16 off, u32 v)
{
    if (use_ports) {
        outl(0xcf8, cf8_addr(d, off));
        outl(0xcfc, v);
    } else {
        mmio_write32(ecam_addr(d, off), v);
    }
}

void pci_write16(const struct pci_dev *d, u16 off, u16 v)
{
    if (use_ports) {
        outl(0xcf8, cf8_addr(d, off));
        outw((u16)(0xcfc + (off & 2)), v);
    } else {
        mmio_write16(ecam_addr(d, off), v);
    }
}

void pci_write8(const struct pci_dev *d, u16 off, u8 v)
{
    if (use_ports) {
        outl(0xcf8, cf8_addr(d, off));
        outb((u16)(0xcfc + (off & 3)), v);
    } else {
        mmio_write8(ecam_addr(d, off), v);
    }
}

static void scan_bus(u8 bus, int depth);

static void scan_function(u8 bus, u8 dev, u8 fn, int depth)
{
    struct pci_dev d = {.bus = bus, .dev = dev, .fn = fn};
    u32 id = pci_read32(&d, 0);
    if ((id & 0xffff) == 0xffff || id == 0)
        return;
    d.vendor = (u16)id;
    d.device = (u16)(id >> 16);
    d.class_code = pci_read32(&d, 8) >> 8;
    if (ndevs < MAX_PCI_DEVS)
        devs[ndevs++] = d;
    int type = virtio_pci_type(&d);
    const char *what = type == 1   ? " virtio-net"
                       : type == 2 ? " virtio-blk"
                       : type == 3 ? " virtio-console"
                       : type == 4 ? " virtio-rng"
                       : type == 5 ? " virtio-balloon"
                       : type >= 0 ? " virtio"
                                   : "";
    con_printf("PROBE pci %02x:%02x.%x %04x:%04x class %06x%s\n", bus, dev, fn, d.vendor, d.device,
               d.class_code, what);
    u8 header = pci_read8(&d, 0x0e) & 0x7f;
    if (header == 1 && depth < 8) { /* PCI-to-PCI bridge: walk the secondary bus */
        u8 secondary = pci_read8(&d, 0x19);
        if (secondary > bus)
            scan_bus(secondary, depth + 1);
    }
}

static void scan_bus(u8 bus, int depth)
{
    for (u8 dev = 0; dev < 32; dev++) {
        struct pci_dev d = {.bus = bus, .dev = dev, .fn = 0};
        u32 id = pci_read32(&d, 0);
        if ((id & 0xffff) == 0xffff || id == 0)
            continue;
        scan_function(bus, dev, 0, depth);
        if (pci_read8(&d, 0x0e) & 0x80)
            for (u8 fn = 1; fn < 8; fn++)
                scan_function(bus, dev, fn, depth);
    }
}

/* The lowest free address above every memory BAR firmware assigned, below the I/O APIC. */
static void window_init(void)
{
    u64 forced = param_u64("probe.pci.mmio32", 0);
    u64 top = 0;
    for (int i = 0; i < ndevs; i++) {
        for (int b = 0; b < 6; b++) {
            u32 v = pci_read32(&devs[i], (u16)(0x10 + 4 * b));
            if (v & 1)
                continue;
            u64 addr = v & ~0xfull;
            if (((v >> 1) & 3) == 2)
                b++;
            if (addr >= 0x80000000ull && addr < 0xfec00000ull && addr + 0x100000 > top)
                top = addr + 0x100000; /* generous: sizes are not probed here */
        }
    }
    if (forced)
        mmio_next = forced;
    else if (ecam_base == 0xe0000000ull) /* QEMU microvm: gpex window 0xc0000000-0xdfffffff */
        mmio_next = top > 0xc0000000ull ? top : 0xc0000000ull;
    else
        mmio_next = top ? ALIGN_UP(top, 0x100000) : 0xc0000000ull;
    mmio_limit = ecam_base > mmio_next ? ecam_base : 0xfec00000ull;
}

void pci_init(void)
{
    outl(0xcf8, 0x80000000u);
    use_ports = inl(0xcf8) == 0x80000000u;
    ecam_base = param_u64("probe.pci.ecam", acpi_mcfg_base());
    if (!use_ports && !ecam_base) {
        /* QEMU microvm,pcie=on puts ECAM at 0xe0000000 without an MCFG table: try it. */
        u32 id = mmio_read32(0xe0000000ull);
        if (id != 0xffffffffu && id != 0)
            ecam_base = 0xe0000000ull;
    }
    if (!use_ports && !ecam_base) {
        info("pci none (no port 0xcf8 and no ACPI MCFG)");
        return;
    }
    if (!use_ports && ecam_base >= 0x100000000ull && map_high(ecam_base, 256ull << 20) < 0) {
        info("pci ecam 0x%llx not mappable", (unsigned long long)ecam_base);
        return;
    }
    info("pci access=%s ecam=0x%llx", use_ports ? "cf8" : "ecam", (unsigned long long)ecam_base);
    scan_bus(0, 0);
    window_init();
    result(NULL, "pci.devices", "%d", ndevs);
}

int pci_count(void)
{
    return ndevs;
}

struct pci_dev *pci_get(int i)
{
    return i < ndevs ? &devs[i] : NULL;
}

void pci_enable(const struct pci_dev *d)
{
    pci_write16(d, 0x04, (u16)(pci_read16(d, 0x04) | 0x7));
}

u64 pci_bar_address(const struct pci_dev *d, int bar)
{
    u16 off = (u16)(0x10 + 4 * bar);
    u32 lo = pci_read32(d, off);
    bool io = lo & 1, is64 = !io && ((lo >> 1) & 3) == 2;
    u64 addr = io ? (lo & ~3ull) : (lo & ~0xfull);
    if (is64)
        addr |= (u64)pci_read32(d, (u16)(off + 4)) << 32;
    if (addr) {
        if (addr >= 0x100000000ull && map_high(addr, 1) < 0)
            return 0;
        return addr;
    }
    /* Unassigned: size it with decoding off, then place it. */
    u16 cmd = pci_read16(d, 0x04);
    pci_write16(d, 0x04, cmd & ~0x3);
    pci_write32(d, off, 0xffffffffu);
    u32 mask = pci_read32(d, off);
    u64 size = io ? (u64)(~(mask & ~3u) & 0xffff) + 1 : (u64)(~(mask & ~0xfu)) + 1;
    if (is64) {
        pci_write32(d, (u16)(off + 4), 0xffffffffu);
        u64 hi = pci_read32(d, (u16)(off + 4));
        size = ~((hi << 32) | (mask & ~0xfull)) + 1;
    }
    if (mask == 0 || size == 0) {
        pci_write32(d, off, lo);
        pci_write16(d, 0x04, cmd);
        return 0;
    }
    if (io) {
        io_next = (u32)ALIGN_UP(io_next, size);
        addr = io_next;
        io_next += (u32)size;
    } else {
        mmio_next = ALIGN_UP(mmio_next, size);
        addr = mmio_next;
        mmio_next += size;
        if (mmio_next > mmio_limit) {
            info("pci %02x:%02x.%x bar%d: no room in the MMIO window", d->bus, d->dev, d->fn, bar);
            pci_write16(d, 0x04, cmd);
            return 0;
        }
    }
    pci_write32(d, off, (u32)addr | (lo & (io ? 3 : 0xf)));
    if (is64)
        pci_write32(d, (u16)(off + 4), (u32)(addr >> 32));
    pci_write16(d, 0x04, cmd);
    info("pci %02x:%02x.%x bar%d assigned 0x%llx size 0x%llx", d->bus, d->dev, d->fn, bar,
         (unsigned long long)addr, (unsigned long long)size);
    return addr;
}
