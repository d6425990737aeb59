/*
 * main.c — ring 3's entry point: command line, memory, TSC calibration, the port-I/O exit
 * benchmark, the test sequence, idle mode and the final "PROBE ok" / "PROBE fail" line.
 *
 * Everything here runs natively even on a PVM host because it never leaves ring 3: devices are
 * reached with IN/OUT (IOPL 3) and plain loads/stores on the identity map, time with RDTSC.
 */
#include "probe.h"

extern char __bss_start[], __bss_end[], __image_end[];

u64 tsc_khz;
static const struct hvm_start_info *start_info;
static char fail_reason[160];

/* ---- memory: a bump allocator over the RAM region the image was loaded into -------------- */

static u64 heap_next, heap_end;

void *alloc_pages(u64 bytes)
{
    u64 size = ALIGN_UP(bytes ? bytes : 1, 4096);
    if (heap_next + size > heap_end || heap_next + size < heap_next)
        return NULL;
    void *p = (void *)heap_next;
    heap_next += size;
    memset(p, 0, size);
    return p;
}

u64 mem_free_bytes(void)
{
    return heap_end - heap_next;
}

static void memory_init(void)
{
    u64 start = (u64)__image_end;
    u64 end = 0;
    if (start_info->version >= 1 && start_info->memmap_paddr && start_info->memmap_entries) {
        const struct hvm_memmap_entry *m = (const void *)start_info->memmap_paddr;
        for (u32 i = 0; i < start_info->memmap_entries; i++) {
            if (m[i].type == 1 && m[i].addr <= start && m[i].addr + m[i].size > start)
                end = m[i].addr + m[i].size;
        }
    }
    if (!end) {
        end = 32ull << 20; /* no memory map: assume the smallest VM anyone boots */
        info("memory: no memmap in hvm_start_info, assuming 32 MiB");
    }
    if (end > 0x100000000ull)
        end = 0x100000000ull;
    heap_next = ALIGN_UP(start, 4096);
    heap_end = end & ~0xfffull;
    result(NULL, "mem.free_kib", "%llu", (unsigned long long)((heap_end - heap_next) >> 10));
}

/* ---- command line: "probe.key=value" words ----------------------------------------------- */

static char cmdline[4096];
static const char *words[128];
static int nwords;

static void cmdline_init(void)
{
    const char *src = start_info->cmdline_paddr ? (const char *)start_info->cmdline_paddr : "";
    size_t n = 0;
    while (n + 1 < sizeof(cmdline) && src[n])
        n++;
    memcpy(cmdline, src, n);
    cmdline[n] = 0;
    info("cmdline %s", cmdline);
    for (char *p = cmdline; *p && nwords < (int)ARRAY_SIZE(words);) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            *p++ = 0;
        if (!*p)
            break;
        words[nwords++] = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n')
            p++;
    }
}

const char *param_str(const char *key, const char *def)
{
    size_t klen = strlen(key);
    const char *found = def;
    for (int i = 0; i < nwords; i++) /* the last occurrence wins, as in Linux */
        if (!strncmp(words[i], key, klen) && words[i][klen] == '=')
            found = words[i] + klen + 1;
    return found;
}

u64 param_u64(const char *key, u64 def)
{
    const char *s = param_str(key, NULL);
    u64 v;
    if (s && parse_u64(s, NULL, &v))
        return v;
    return def;
}

bool param_list_has(const char *key, const char *item, const char *def)
{
    const char *s = param_str(key, def);
    size_t n = strlen(item);
    while (s && *s) {
        const char *e = s;
        while (*e && *e != ',')
            e++;
        if ((size_t)(e - s) == n && !strncmp(s, item, n))
            return true;
        s = *e ? e + 1 : e;
    }
    return false;
}

/* ---- time --------------------------------------------------------------------------------- */

u64 cycles_to_us(u64 cycles)
{
    u64 khz = tsc_khz ? tsc_khz : 2000000;
    return cycles * 1000 / khz;
}

u64 us_to_cycles(u64 us)
{
    u64 khz = tsc_khz ? tsc_khz : 4000000; /* unknown: assume fast, so timeouts stay long */
    return us * khz / 1000;
}

/* KVM's pvclock page states its TSC-to-ns scale: mul and shift (offsets 24 and 28). */
static u64 kvmclock_khz(void)
{
    u32 r[4];
    cpuid(0x40000000, 0, r);
    if (r[1] != 0x4b4d564b || r[2] != 0x564b4d56 || r[3] != 0x4d) /* "KVMKVMKVM\0\0\0" */
        return 0;
    cpuid(0x40000001, 0, r);
    if (!(r[0] & (1u << 3))) /* KVM_FEATURE_CLOCKSOURCE2 */
        return 0;
    static volatile u8 area[64] __attribute__((aligned(64)));
    syscall3(SYS_WRMSR, 0x4b564d01, (u64)area | 1, 0);
    u32 mul = 0;
    int shift = 0;
    for (int i = 0; i < 1000 && !mul; i++) {
        u32 ver = *(volatile u32 *)area;
        if (ver & 1)
            continue;
        mul = *(volatile u32 *)(area + 24);
        shift = *(volatile signed char *)(area + 28);
    }
    syscall3(SYS_WRMSR, 0x4b564d01, 0, 0);
    if (!mul)
        return 0;
    /* ns per cycle = mul * 2^shift / 2^32 */
    u64 khz = (1000000ull << 32) / mul;
    return shift >= 0 ? khz >> shift : khz << -shift;
}

static void time_init(void)
{
    u32 r[4];
    const char *source = "none";
    cpuid(0, 0, r);
    if (r[0] >= 0x15) {
        cpuid(0x15, 0, r);
        if (r[0] && r[1] && r[2]) {
            tsc_khz = (u64)r[2] * r[1] / r[0] / 1000;
            source = "cpuid15";
        }
    }
    if (!tsc_khz) {
        cpuid(0x40000000, 0, r);
        if (r[0] >= 0x40000010 && r[0] < 0x40000100) {
            cpuid(0x40000010, 0, r);
            if (r[0]) {
                tsc_khz = r[0];
                source = "cpuid40000010";
            }
        }
    }
    if (!tsc_khz && (tsc_khz = kvmclock_khz()))
        source = "kvmclock";
    u16 pmt = acpi_pm_timer_port();
    if (!tsc_khz && pmt) {
        /* 3.579545 MHz ACPI PM timer, 24 bits: count ~10 ms of it. */
        u32 t0 = inl(pmt) & 0xffffff, t;
        u64 c0 = rdtsc();
        do
            t = inl(pmt) & 0xffffff;
        while (((t - t0) & 0xffffff) < 35795);
        u64 c1 = rdtsc();
        u64 ticks = (t - t0) & 0xffffff;
        tsc_khz = (c1 - c0) * 3579545ull / ticks / 1000;
        source = "pmtimer";
    }
    result(NULL, "tsc_khz", "%llu", (unsigned long long)tsc_khz);
    info("tsc source %s", source);
}

/* ---- the port-I/O exit benchmark ---------------------------------------------------------- */

static int test_io(void)
{
    u64 iters = param_u64("probe.iters", 10000);
    u16 port = (u16)param_u64("probe.io.port", 0x80);
    if (!iters)
        iters = 1;
    for (int i = 0; i < 100; i++)
        outb(port, 0);
    u64 t0 = rdtsc();
    for (u64 i = 0; i < iters; i++)
        outb(port, 0);
    u64 t1 = rdtsc();
    for (u64 i = 0; i < iters; i++)
        (void)inb(port);
    u64 t2 = rdtsc();
    u64 out_cycles = (t1 - t0) / iters, in_cycles = (t2 - t1) / iters;
    result("io", "iters", "%llu", (unsigned long long)iters);
    result("io", "exit_cycles", "%llu", (unsigned long long)out_cycles);
    result("io", "in_exit_cycles", "%llu", (unsigned long long)in_cycles);
    if (tsc_khz)
        result("io", "exit_ns", "%llu", (unsigned long long)(out_cycles * 1000000 / tsc_khz));
    return 0;
}

/* ---- interrupts: the LAPIC timer through the (emulated, on PVM) ring-0 IDT ---------------- */

#define LAPIC 0xfee00000ull

static bool lapic_timer_start(u64 period_us)
{
    u32 version = mmio_read32(LAPIC + 0x30);
    if (version == 0xffffffffu || version == 0)
        return false;
    mmio_write32(LAPIC + 0xf0, 0x100 | SPURIOUS_VECTOR); /* software enable */
    mmio_write32(LAPIC + 0x3e0, 0xb);                    /* divide by 1 */
    mmio_write32(LAPIC + 0x320, (1u << 17) | TIMER_VECTOR);
    /* KVM and QEMU both count the APIC timer at 1 GHz. */
    mmio_write32(LAPIC + 0x380, (u32)(period_us * 1000));
    u32 a = mmio_read32(LAPIC + 0x390);
    for (int i = 0; i < 1000; i++)
        cpu_relax();
    return mmio_read32(LAPIC + 0x390) != a;
}

static void lapic_timer_stop(void)
{
    mmio_write32(LAPIC + 0x320, 1u << 16); /* masked */
    mmio_write32(LAPIC + 0x380, 0);
}

int test_irq(void)
{
    u64 waits = param_u64("probe.irq.waits", 20);
    if (!lapic_timer_start(param_u64("probe.irq.period_us", 1000)))
        return test_error("irq: no working local APIC timer");
    u64 before = irq_count[TIMER_VECTOR], t0 = rdtsc();
    for (u64 i = 0; i < waits; i++)
        syscall3(SYS_WAIT_IRQ, 0, 0, 0);
    u64 cycles = rdtsc() - t0;
    lapic_timer_stop();
    u64 ticks = irq_count[TIMER_VECTOR] - before;
    result("irq", "timer_ticks", "%llu", (unsigned long long)ticks);
    result("irq", "wait_us", "%llu",
           (unsigned long long)cycles_to_us(cycles / (waits ? waits : 1)));
    if (ticks < waits)
        return test_error("irq: %llu timer interrupts for %llu waits", (unsigned long long)ticks,
                          (unsigned long long)waits);
    return 0;
}

/* ---- the sequence ------------------------------------------------------------------------- */

int test_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[160];
    vsnprint(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    info("error: %s", msg);
    if (!fail_reason[0])
        memcpy(fail_reason, msg, sizeof(fail_reason));
    return -1;
}

#define DEFAULT_TESTS "io,blk,net,rng,balloon"

static void run_tests(const char *def)
{
    static const struct {
        const char *name;
        int (*fn)(void);
    } tests[] = {
        {"io", test_io},   {"blk", test_blk},         {"dhcp", test_dhcp}, {"net", test_net},
        {"rng", test_rng}, {"balloon", test_balloon}, {"vcon", test_vcon}, {"irq", test_irq},
    };
    for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
        if (!param_list_has("probe.tests", tests[i].name, def))
            continue;
        u64 t0 = rdtsc();
        int rc = tests[i].fn();
        info("test %s %s in %llu us", tests[i].name, rc == 0 ? "passed" : "failed",
             (unsigned long long)cycles_to_us(rdtsc() - t0));
    }
}

/* ---- idle mode: stay up, echo console lines, obey the power button ------------------------ */

static void idle(void)
{
    char line[256];
    size_t len = 0;
    u64 ticks = 0; /* idle periods so far: grows across a save/restore of the VM */
    acpi_power_button_enable();
    balloon_idle_init();
    bool timer = lapic_timer_start(param_u64("probe.idle.tick_us", 10000));
    con_printf("PROBE idle%s\n", timer ? "" : " (polling: no APIC timer)");
    for (;;) {
        int c;
        while ((c = con_getc_nonblock()) >= 0) {
            if (c == '\r' || c == '\n') {
                if (!len)
                    continue;
                line[len] = 0;
                con_printf("PROBE echo %s\n", line);
                if (!strcmp(line, "poweroff"))
                    power_off();
                if (!strcmp(line, "ticks"))
                    con_printf("PROBE result idle.ticks=%llu\n", (unsigned long long)ticks);
                if (!strcmp(line, "blksum"))
                    con_printf("PROBE result idle.blksum=%s\n",
                               blk_checksums_again() == 0 ? "ok" : "error");
                len = 0;
            } else if (len + 1 < sizeof(line)) {
                line[len++] = (char)c;
            }
        }
        if (acpi_power_button_poll()) {
            con_puts("PROBE powerbutton\n");
            power_off();
        }
        balloon_idle_poll();
        ticks++;
        if (timer)
            syscall3(SYS_WAIT_IRQ, 0, 0, 0);
        else
            for (int i = 0; i < 100000; i++)
                cpu_relax();
    }
}

void probe_main(u64 start_info_paddr) __attribute__((noreturn));
void probe_main(u64 start_info_paddr)
{
    memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
    console_init();
    /* Mask both 8259s: firmware may leave the PIT's IRQ 0 unmasked at vector 8 (SeaBIOS does),
     * which would arrive as a "double fault" the moment interrupts are enabled. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    start_info = (const struct hvm_start_info *)start_info_paddr;
    if (!start_info || start_info->magic != HVM_START_MAGIC)
        probe_fail("boot: %%ebx=0x%llx is not an hvm_start_info (magic 0x336ec578)",
                   (unsigned long long)start_info_paddr);
    cmdline_init();
    memory_init();
    acpi_init(start_info->rsdp_paddr);
    info("syscall handler cs=0x%llx", (unsigned long long)syscall3(SYS_GET_CS, 0, 0, 0));
    time_init();
    pci_init();

    const char *mode = param_str("probe.mode", "run");
    if (!strcmp(mode, "idle")) {
        /* probe.net=dhcp alone in idle mode: take a lease, then stay up */
        run_tests(strcmp(param_str("probe.net", "frames"), "dhcp") ? "" : "net");
        idle();
    }
    run_tests(DEFAULT_TESTS);
    if (fail_reason[0])
        con_printf("PROBE fail %s\n", fail_reason);
    else
        con_puts("PROBE ok\n");
    power_off();
}
