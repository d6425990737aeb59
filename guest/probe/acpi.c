/*
 * acpi.c — just enough ACPI to find PCI's ECAM window, the PM timer, the power button and the
 * way to power off: RSDP → XSDT/RSDT → FADT (+ DSDT's \_S5 sleep type) and MCFG.
 *
 * The idea: a VMM describes its power registers in the FADT one of two ways — classic PM1a
 * event/control blocks (q35, most VMMs) or the hardware-reduced sleep control register (microvm's
 * GED) — so power off and the power button each try the FADT's own description first and fall
 * back to QEMU's isa-debug-exit port and finally a halt with interrupts off.
 */
#include "probe.h"

struct gas {
    u8 space; /* 0 memory, 1 I/O */
    u8 bit_width, bit_offset, access_size;
    u64 address;
} __attribute__((packed));

static struct {
    bool found;
    bool hw_reduced;
    u16 pm1a_evt, pm1b_evt; /* I/O ports */
    u8 pm1_evt_len;
    u16 pm1a_cnt, pm1b_cnt;
    u16 pm_tmr;
    u8 slp_typ_s5;
    struct gas sleep_ctl;
    u64 ged_event; /* QEMU's GED event selector (hardware-reduced power button) */
    u64 mcfg_base;
    bool pwrbtn_enabled;
} acpi;

static bool checksum_ok(const void *p, u32 len)
{
    u8 sum = 0;
    for (u32 i = 0; i < len; i++)
        sum += ((const u8 *)p)[i];
    return sum == 0;
}

static u32 rd32(const u8 *p)
{
    return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}
static u64 rd64(const u8 *p)
{
    return rd32(p) | (u64)rd32(p + 4) << 32;
}

static const u8 *find_rsdp(u64 hint)
{
    if (hint && !memcmp((const void *)hint, "RSD PTR ", 8))
        return (const u8 *)hint;
    /* The BIOS area, then the first KiB of the EBDA. */
    for (u64 a = 0xe0000; a < 0x100000; a += 16)
        if (!memcmp((const void *)a, "RSD PTR ", 8) && checksum_ok((const void *)a, 20))
            return (const u8 *)a;
    u64 ebda = (u64)(*(volatile u16 *)0x40e) << 4;
    if (ebda >= 0x80000 && ebda < 0xa0000)
        for (u64 a = ebda; a < ebda + 1024; a += 16)
            if (!memcmp((const void *)a, "RSD PTR ", 8) && checksum_ok((const void *)a, 20))
                return (const u8 *)a;
    return NULL;
}

/* \_S5's SLP_TYPa from the DSDT: Name (_S5, Package () { typ, … }) is 08 '_S5_' 12 len n elems. */
static int parse_s5(const u8 *dsdt)
{
    u32 len = rd32(dsdt + 4);
    for (u32 i = 36; i + 8 < len; i++) {
        if (memcmp(dsdt + i, "_S5_", 4) || dsdt[i + 4] != 0x12)
            continue;
        const u8 *p = dsdt + i + 5;
        p += 1 + (*p >> 6); /* PkgLength */
        p++;                /* NumElements */
        if (*p == 0x0a)     /* BytePrefix */
            return p[1];
        if (*p == 0x00 || *p == 0x01)
            return *p;
        return -1;
    }
    return -1;
}

static void parse_fadt(const u8 *f)
{
    u32 len = rd32(f + 4);
    acpi.found = true;
    acpi.pm1a_evt = (u16)rd32(f + 56);
    acpi.pm1b_evt = (u16)rd32(f + 60);
    acpi.pm1a_cnt = (u16)rd32(f + 64);
    acpi.pm1b_cnt = (u16)rd32(f + 68);
    acpi.pm_tmr = (u16)rd32(f + 76);
    acpi.pm1_evt_len = f[88];
    if (len >= 116)
        acpi.hw_reduced = (rd32(f + 112) >> 20) & 1;
    u64 dsdt = rd32(f + 40);
    if (len >= 148 && rd64(f + 140))
        dsdt = rd64(f + 140);
    if (len >= 184) { /* X_PM1a_EVT_BLK / X_PM1a_CNT_BLK, when in I/O space */
        const struct gas *evt = (const void *)(f + 148), *cnt = (const void *)(f + 172);
        if (evt->space == 1 && evt->address)
            acpi.pm1a_evt = (u16)evt->address;
        if (cnt->space == 1 && cnt->address)
            acpi.pm1a_cnt = (u16)cnt->address;
    }
    if (len >= 256)
        memcpy(&acpi.sleep_ctl, f + 244, sizeof(acpi.sleep_ctl));
    int s5 = dsdt && dsdt < 0x100000000ull && !memcmp((const void *)dsdt, "DSDT", 4)
                 ? parse_s5((const u8 *)dsdt)
                 : -1;
    acpi.slp_typ_s5 = s5 >= 0 ? (u8)s5 : (acpi.hw_reduced ? 5 : 0);
    /* QEMU's GED: event selector 0x200 below the sleep control register. */
    if (acpi.sleep_ctl.space == 0 && acpi.sleep_ctl.address >= 0x200)
        acpi.ged_event = acpi.sleep_ctl.address - 0x200;
    info("acpi fadt pm1a_evt=0x%x pm1a_cnt=0x%x pm_tmr=0x%x hw_reduced=%d sleep_ctl=0x%llx "
         "s5=%d",
         acpi.pm1a_evt, acpi.pm1a_cnt, acpi.pm_tmr, acpi.hw_reduced,
         (unsigned long long)acpi.sleep_ctl.address, acpi.slp_typ_s5);
}

static void parse_table(const u8 *t)
{
    if (!memcmp(t, "FACP", 4))
        parse_fadt(t);
    else if (!memcmp(t, "MCFG", 4) && rd32(t + 4) >= 44 + 16) {
        for (u32 off = 44; off + 16 <= rd32(t + 4); off += 16)
            if ((t[off + 8] | t[off + 9] << 8) == 0 && !acpi.mcfg_base)
                acpi.mcfg_base = rd64(t + off);
        info("acpi mcfg ecam=0x%llx", (unsigned long long)acpi.mcfg_base);
    }
}

void acpi_init(u64 rsdp_hint)
{
    u64 ged = param_u64("probe.ged", 0);
    const u8 *rsdp = find_rsdp(rsdp_hint);
    if (!rsdp) {
        info("acpi no RSDP");
        acpi.ged_event = ged;
        return;
    }
    u64 xsdt = rsdp[15] >= 2 ? rd64(rsdp + 24) : 0;
    u64 rsdt = rd32(rsdp + 16);
    if (xsdt && xsdt < 0x100000000ull && !memcmp((const void *)xsdt, "XSDT", 4)) {
        const u8 *x = (const u8 *)xsdt;
        for (u32 off = 36; off + 8 <= rd32(x + 4); off += 8) {
            u64 t = rd64(x + off);
            if (t && t < 0x100000000ull)
                parse_table((const u8 *)t);
        }
    } else if (rsdt && !memcmp((const void *)rsdt, "RSDT", 4)) {
        const u8 *r = (const u8 *)rsdt;
        for (u32 off = 36; off + 4 <= rd32(r + 4); off += 4)
            if (rd32(r + off))
                parse_table((const u8 *)(u64)rd32(r + off));
    }
    if (ged)
        acpi.ged_event = ged;
}

u64 acpi_mcfg_base(void)
{
    return acpi.mcfg_base;
}

u16 acpi_pm_timer_port(void)
{
    return acpi.pm_tmr;
}

void acpi_power_button_enable(void)
{
    if (acpi.pm1a_evt && !acpi.hw_reduced) {
        u16 en = (u16)(acpi.pm1a_evt + (acpi.pm1_evt_len ? acpi.pm1_evt_len / 2 : 2));
        outw(acpi.pm1a_evt, 0x100);       /* clear a stale PWRBTN_STS */
        outw(en, (u16)(inw(en) | 0x100)); /* PWRBTN_EN */
        acpi.pwrbtn_enabled = true;
    }
}

bool acpi_power_button_poll(void)
{
    if (acpi.pwrbtn_enabled) {
        u16 sts = inw(acpi.pm1a_evt);
        if (sts != 0xffff && (sts & 0x100)) {
            outw(acpi.pm1a_evt, 0x100); /* write 1 to clear */
            return true;
        }
    }
    if (acpi.ged_event) {
        u32 sel = mmio_read32(acpi.ged_event); /* reading clears it */
        if (sel != 0xffffffff && (sel & 0x2))
            return true;
    }
    return false;
}

void power_off(void)
{
    con_puts("PROBE poweroff\n");
    if (acpi.sleep_ctl.address && (acpi.hw_reduced || !acpi.pm1a_cnt)) {
        u8 v = (u8)((acpi.slp_typ_s5 & 7) << 2 | 0x20); /* SLP_TYPx | SLP_EN */
        if (acpi.sleep_ctl.space == 1)
            outb((u16)acpi.sleep_ctl.address, v);
        else if (acpi.sleep_ctl.space == 0)
            mmio_write8(acpi.sleep_ctl.address, v);
    }
    if (acpi.pm1a_cnt) {
        u16 cnt = inw(acpi.pm1a_cnt) & ~0x1c00;
        outw(acpi.pm1a_cnt, (u16)(cnt | (acpi.slp_typ_s5 & 7) << 10 | 0x2000));
        if (acpi.pm1b_cnt)
            outw(acpi.pm1b_cnt, (u16)(cnt | (acpi.slp_typ_s5 & 7) << 10 | 0x2000));
    }
    outb(0xf4, 0); /* QEMU isa-debug-exit, when present: exit status 1 */
    u16 cs;
    __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
    if ((cs & 3) == 3)
        syscall3(SYS_STOP, 0, 0, 0);
    for (;;)
        __asm__ __volatile__("cli; hlt");
}

/* ---- mappings above 4 GiB (for 64-bit BARs) --------------------------------------------- */

extern u64 pml4[512];
static u64 spare_tables[8][512] __attribute__((aligned(4096)));
static int spare_used;

static u64 *table_alloc(void)
{
    if (spare_used >= (int)ARRAY_SIZE(spare_tables))
        return NULL;
    return spare_tables[spare_used++];
}

/* Fill not-present entries only: such entries are never cached, so no TLB flush is needed and
 * ring 3 can do it by writing the (user-accessible) tables. */
int map_high(u64 addr, u64 size)
{
    for (u64 gb = addr >> 30; gb <= (addr + size - 1) >> 30; gb++) {
        u64 a = gb << 30;
        u64 *l4e = &pml4[(a >> 39) & 511];
        if (!*l4e) {
            u64 *t = table_alloc();
            if (!t)
                return -1;
            barrier();
            *l4e = (u64)t | 7;
        }
        u64 *pdpt = (u64 *)(*l4e & ~0xfffull);
        u64 *l3e = &pdpt[(a >> 30) & 511];
        if (*l3e)
            continue;
        u64 *pd = table_alloc();
        if (!pd)
            return -1;
        for (int i = 0; i < 512; i++)
            pd[i] = (a + ((u64)i << 21)) | 0x87;
        barrier();
        *l3e = (u64)pd | 7;
    }
    return 0;
}
