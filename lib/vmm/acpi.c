/*
 * lib/vmm/acpi.c — the ACPI tables a stock kernel needs: RSDP → XSDT → FADT (+FACS, DSDT), MADT.
 *
 * The platform they describe is fixed (machine.h): PM1a event/control blocks and the PM timer at
 * ports 0x600..0x60b (pm.c), SCI on IRQ 9, a fixed-feature power button, reset via port 0xcf9,
 * one local APIC per vCPU, one IOAPIC, legacy IRQ overrides. The DSDT is a few hundred bytes of
 * AML written by a tiny encoder below (names, integers, buffers, packages, scopes, devices): a
 * PCI root bridge with its resource windows, COM1, a power button and the \_S5 sleep type that
 * pm.c turns into power-off.
 */
#include <errno.h>
#include <string.h>

#include "vmm/machine.h"

uint8_t acpi_checksum(const uint8_t *p, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return (uint8_t)(0 - sum);
}

static void put16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}
static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static void table_header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
    memcpy(t, sig, 4);
    put32(t + 4, len);
    t[8] = rev;
    memcpy(t + 10, "VESSEL", 6);
    memcpy(t + 16, "VESSELVM", 8);
    put32(t + 24, 1);
    memcpy(t + 28, "VSSL", 4);
    put32(t + 32, 1);
}

static void table_finish(uint8_t *t)
{
    uint32_t len;
    memcpy(&len, t + 4, 4);
    t[9] = 0;
    t[9] = acpi_checksum(t, len);
}

/* Generic Address Structure, system I/O space. */
static void gas_io(uint8_t *p, uint8_t bits, uint16_t port)
{
    p[0] = 1;
    p[1] = bits;
    p[2] = 0;
    p[3] = bits == 8 ? 1 : bits == 16 ? 2 : 3;
    put64(p + 4, port);
}

/* ---- a minimal AML encoder ------------------------------------------------------------------- */

struct aml {
    uint8_t buf[2048];
    size_t len;
    bool overflow;
};

static void aml_bytes(struct aml *a, const void *p, size_t n)
{
    if (a->len + n > sizeof(a->buf)) {
        a->overflow = true;
        return;
    }
    memcpy(a->buf + a->len, p, n);
    a->len += n;
}

static void aml_byte(struct aml *a, uint8_t b)
{
    aml_bytes(a, &b, 1);
}

/* PkgLength covering LEN bytes of body (the encoding counts its own bytes). */
static void aml_pkglen(struct aml *a, size_t len)
{
    if (len + 1 < 64) {
        aml_byte(a, (uint8_t)(len + 1));
        return;
    }
    size_t total = len + 2;
    if (total < (1 << 12)) {
        aml_byte(a, (uint8_t)(0x40 | (total & 0xf)));
        aml_byte(a, (uint8_t)(total >> 4));
        return;
    }
    total = len + 3;
    aml_byte(a, (uint8_t)(0x80 | (total & 0xf)));
    aml_byte(a, (uint8_t)(total >> 4));
    aml_byte(a, (uint8_t)(total >> 12));
}

static void aml_int(struct aml *a, uint64_t v)
{
    if (v == 0) {
        aml_byte(a, 0x00);
    } else if (v == 1) {
        aml_byte(a, 0x01);
    } else if (v <= 0xff) {
        aml_byte(a, 0x0a);
        aml_byte(a, (uint8_t)v);
    } else if (v <= 0xffff) {
        aml_byte(a, 0x0b);
        aml_bytes(a, &(uint16_t){(uint16_t)v}, 2);
    } else if (v <= 0xffffffff) {
        aml_byte(a, 0x0c);
        aml_bytes(a, &(uint32_t){(uint32_t)v}, 4);
    } else {
        aml_byte(a, 0x0e);
        aml_bytes(a, &v, 8);
    }
}

/* NAME is a 4-character segment, optionally preceded by '\'. */
static void aml_namestring(struct aml *a, const char *name)
{
    aml_bytes(a, name, strlen(name));
}

static void aml_name_int(struct aml *a, const char *name, uint64_t v)
{
    aml_byte(a, 0x08);
    aml_namestring(a, name);
    aml_int(a, v);
}

static void aml_name_string(struct aml *a, const char *name, const char *s)
{
    aml_byte(a, 0x08);
    aml_namestring(a, name);
    aml_byte(a, 0x0d);
    aml_bytes(a, s, strlen(s) + 1);
}

static uint32_t eisa_id(const char *id)
{
    uint32_t v = ((uint32_t)(id[0] - 0x40) << 26) | ((uint32_t)(id[1] - 0x40) << 21) |
                 ((uint32_t)(id[2] - 0x40) << 16);
    for (int i = 3; i < 7; i++) {
        char c = id[i];
        v |= (uint32_t)(c <= '9' ? c - '0' : c - 'A' + 10) << (4 * (6 - i));
    }
    return __builtin_bswap32(v);
}

static void aml_name_eisaid(struct aml *a, const char *name, const char *id)
{
    aml_byte(a, 0x08);
    aml_namestring(a, name);
    aml_byte(a, 0x0c);
    aml_bytes(a, &(uint32_t){eisa_id(id)}, 4);
}

/* Name(NAME, Buffer(){resource descriptors…, EndTag}) */
static void aml_name_resources(struct aml *a, const char *name, const uint8_t *res, size_t len)
{
    struct aml body = {.len = 0};
    aml_int(&body, len + 2);
    aml_bytes(&body, res, len);
    aml_byte(&body, 0x79); /* end tag */
    aml_byte(&body, 0x00);
    aml_byte(a, 0x08);
    aml_namestring(a, name);
    aml_byte(a, 0x11);
    aml_pkglen(a, body.len);
    aml_bytes(a, body.buf, body.len);
    a->overflow |= body.overflow;
}

/* OP (0x10 scope, or 0x5b 0x82 device) NAME { BODY } */
static void aml_block(struct aml *a, bool device, const char *name, const struct aml *body)
{
    if (device) {
        aml_byte(a, 0x5b);
        aml_byte(a, 0x82);
    } else {
        aml_byte(a, 0x10);
    }
    aml_pkglen(a, strlen(name) + body->len);
    aml_namestring(a, name);
    aml_bytes(a, body->buf, body->len);
    a->overflow |= body->overflow;
}

/* Word address space descriptor (bus number or I/O range). */
static size_t res_word(uint8_t *p, uint8_t type, uint16_t min, uint16_t max)
{
    p[0] = 0x88;
    put16(p + 1, 13);
    p[3] = type; /* 1 = I/O, 2 = bus number */
    p[4] = 0x0c; /* min and max fixed, producer */
    p[5] = type == 1 ? 3 : 0;
    put16(p + 6, 0); /* granularity */
    put16(p + 8, min);
    put16(p + 10, max);
    put16(p + 12, 0); /* translation */
    put16(p + 14, (uint16_t)(max - min + 1));
    return 16;
}

static size_t res_dword_mem(uint8_t *p, uint32_t min, uint32_t max)
{
    p[0] = 0x87;
    put16(p + 1, 23);
    p[3] = 0; /* memory */
    p[4] = 0x0c;
    p[5] = 0x01; /* read-write, non-cacheable */
    put32(p + 6, 0);
    put32(p + 10, min);
    put32(p + 14, max);
    put32(p + 18, 0);
    put32(p + 22, max - min + 1);
    return 26;
}

static size_t res_io(uint8_t *p, uint16_t port, uint8_t len)
{
    p[0] = 0x47;
    p[1] = 1; /* 16-bit decode */
    put16(p + 2, port);
    put16(p + 4, port);
    p[6] = 1;
    p[7] = len;
    return 8;
}

static size_t res_irq(uint8_t *p, unsigned irq)
{
    p[0] = 0x22;
    put16(p + 1, (uint16_t)(1u << irq));
    return 3;
}

static int build_dsdt(struct aml *out)
{
    struct aml sb = {.len = 0}, dev = {.len = 0};
    uint8_t res[128];
    size_t n = 0;

    /* PCI root bridge: bus 0-255, config ports, I/O around them, the 32-bit MMIO hole. */
    aml_name_eisaid(&dev, "_HID", "PNP0A03");
    aml_name_int(&dev, "_ADR", 0);
    aml_name_int(&dev, "_UID", 0);
    aml_name_int(&dev, "_BBN", 0);
    n += res_word(res + n, 2, 0, 255);
    n += res_io(res + n, 0xcf8, 8);
    n += res_word(res + n, 1, 0x0000, 0x0cf7);
    n += res_word(res + n, 1, 0x0d00, 0xffff);
    n += res_dword_mem(res + n, (uint32_t)LAYOUT_PCI_HOLE, (uint32_t)LAYOUT_PCI_MMIO_END - 1);
    aml_name_resources(&dev, "_CRS", res, n);
    aml_block(&sb, true, "PCI0", &dev);

    /* COM1 */
    dev.len = 0;
    n = 0;
    aml_name_eisaid(&dev, "_HID", "PNP0501");
    aml_name_int(&dev, "_UID", 1);
    aml_name_string(&dev, "_DDN", "COM1");
    n += res_io(res + n, PORT_COM1, 8);
    n += res_irq(res + n, IRQ_COM1);
    aml_name_resources(&dev, "_CRS", res, n);
    aml_block(&sb, true, "COM1", &dev);

    /* Power button (the fixed-feature event in pm.c is what fires). */
    dev.len = 0;
    aml_name_eisaid(&dev, "_HID", "PNP0C0C");
    aml_name_int(&dev, "_UID", 1);
    aml_block(&sb, true, "PWRB", &dev);

    aml_block(out, false, "\\_SB_", &sb);

    /* Name(\_S5, Package() {5, 5, 0, 0}) */
    struct aml pkg = {.len = 0};
    aml_byte(&pkg, 4);
    aml_int(&pkg, ACPI_S5_TYPE);
    aml_int(&pkg, ACPI_S5_TYPE);
    aml_int(&pkg, 0);
    aml_int(&pkg, 0);
    aml_byte(out, 0x08);
    aml_namestring(out, "\\_S5_");
    aml_byte(out, 0x12);
    aml_pkglen(out, pkg.len);
    aml_bytes(out, pkg.buf, pkg.len);
    return out->overflow || sb.overflow || dev.overflow || pkg.overflow ? -ENOSPC : 0;
}

int acpi_build_tables(uint8_t *buf, size_t len, uint64_t base, unsigned cpus, uint64_t *rsdp,
                      size_t *used)
{
    size_t madt_len = 44 + 8 * (size_t)cpus + 12 + 10 * 2 + 6;
    struct aml dsdt = {.len = 0};
    if (build_dsdt(&dsdt) < 0)
        return vs_error(-ENOSPC, "ACPI: DSDT too large");
    size_t off_rsdp = 0, off_xsdt = 0x40, off_fadt = 0x80, off_facs = 0x1c0, off_dsdt = 0x200;
    size_t off_madt = VS_ALIGN_UP(off_dsdt + 36 + dsdt.len, 16);
    size_t end = off_madt + madt_len;
    if (end > len)
        return vs_error(-ENOSPC, "ACPI: tables for %u vCPUs need %zu bytes, %zu available", cpus,
                        end, len);
    memset(buf, 0, end);

    /* DSDT */
    uint8_t *t = buf + off_dsdt;
    table_header(t, "DSDT", (uint32_t)(36 + dsdt.len), 2);
    memcpy(t + 36, dsdt.buf, dsdt.len);
    table_finish(t);

    /* FACS: no checksum, 64 bytes, 64-byte aligned. */
    t = buf + off_facs;
    memcpy(t, "FACS", 4);
    put32(t + 4, 64);
    t[32] = 2; /* version */

    /* FADT, revision 6 */
    t = buf + off_fadt;
    table_header(t, "FACP", 276, 6);
    /* FIRMWARE_CTRL stays 0: X_FIRMWARE_CTRL below is the one to use (ACPI 6 5.2.9) */
    put32(t + 40, (uint32_t)(base + off_dsdt));
    t[45] = 0; /* unspecified PM profile */
    put16(t + 46, IRQ_SCI);
    put32(t + 56, PORT_PM_EVT);
    put32(t + 64, PORT_PM_CNT);
    put32(t + 76, PORT_PM_TMR);
    t[88] = 4;                           /* PM1_EVT_LEN */
    t[89] = 2;                           /* PM1_CNT_LEN */
    t[91] = 4;                           /* PM_TMR_LEN */
    put16(t + 96, 101);                  /* no C2 */
    put16(t + 98, 1001);                 /* no C3 */
    t[108] = 0x32;                       /* RTC century register */
    put16(t + 109, (1 << 0) | (1 << 1)); /* legacy devices, 8042 */
    /* WBINVD, PROC_C1, SLP_BUTTON (none), TMR_VAL_EXT (32-bit), RESET_REG_SUP */
    put32(t + 112, (1u << 0) | (1u << 2) | (1u << 5) | (1u << 8) | (1u << 10));
    gas_io(t + 116, 8, PORT_RESET);
    t[128] = 0x06;
    t[131] = 3;                      /* FADT minor version */
    put64(t + 132, base + off_facs); /* X_FIRMWARE_CTRL */
    put64(t + 140, base + off_dsdt); /* X_DSDT */
    gas_io(t + 148, 32, PORT_PM_EVT);
    gas_io(t + 172, 16, PORT_PM_CNT);
    gas_io(t + 208, 32, PORT_PM_TMR);
    memcpy(t + 268, "VESSEL\0\0", 8);
    table_finish(t);

    /* MADT */
    t = buf + off_madt;
    table_header(t, "APIC", (uint32_t)madt_len, 5);
    put32(t + 36, (uint32_t)LAYOUT_LAPIC);
    put32(t + 40, 1); /* PCAT_COMPAT: 8259s present */
    uint8_t *e = t + 44;
    for (unsigned i = 0; i < cpus; i++, e += 8) {
        e[0] = 0;
        e[1] = 8;
        e[2] = (uint8_t)i;
        e[3] = (uint8_t)i;
        put32(e + 4, 1); /* enabled */
    }
    e[0] = 1; /* IOAPIC */
    e[1] = 12;
    e[2] = 0; /* IOAPIC IDs live apart from LAPIC IDs (KVM's IOAPIC reads 0) */
    put32(e + 4, (uint32_t)LAYOUT_IOAPIC);
    put32(e + 8, 0);
    e += 12;
    e[0] = 2; /* IRQ0 → GSI 2 */
    e[1] = 10;
    e[3] = 0;
    put32(e + 4, 2);
    put16(e + 8, 0);
    e += 10;
    e[0] = 2; /* SCI: IRQ 9 level, active high */
    e[1] = 10;
    e[3] = IRQ_SCI;
    put32(e + 4, IRQ_SCI);
    put16(e + 8, 0x000d);
    e += 10;
    e[0] = 4; /* LAPIC NMI on LINT1 of every processor */
    e[1] = 6;
    e[2] = 0xff;
    put16(e + 3, 0);
    e[5] = 1;
    table_finish(t);

    /* XSDT */
    t = buf + off_xsdt;
    table_header(t, "XSDT", 36 + 16, 1);
    put64(t + 36, base + off_fadt);
    put64(t + 44, base + off_madt);
    table_finish(t);

    /* RSDP, ACPI 2.0+ */
    t = buf + off_rsdp;
    memcpy(t, "RSD PTR ", 8);
    memcpy(t + 9, "VESSEL", 6);
    t[15] = 2;
    put32(t + 20, 36);
    put64(t + 24, base + off_xsdt);
    t[8] = acpi_checksum(t, 20);
    t[32] = acpi_checksum(t, 36);

    *rsdp = base + off_rsdp;
    if (used)
        *used = end;
    return 0;
}

int acpi_build(struct machine *m)
{
    size_t len = LAYOUT_ACPI_END - LAYOUT_ACPI;
    uint8_t *p = guest_mem_ptr(&m->mem, LAYOUT_ACPI, len);
    return acpi_build_tables(p, len, LAYOUT_ACPI, m->vcpu_count, &m->rsdp, NULL);
}
