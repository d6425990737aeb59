/*
 * probe.h — declarations shared by every part of the probe guest.
 *
 * The probe is one freestanding x86-64 binary with two halves: a few hundred instructions of
 * ring-0 setup (entry.S, ring0.c — emulated on PVM hosts, so kept tiny) and everything else in
 * ring 3 with IOPL 3 over a user-accessible identity map, where port I/O, MMIO and RDTSC all work
 * without a system call. Physical and virtual addresses are therefore the same number everywhere.
 */
#ifndef PROBE_H
#define PROBE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define ARRAY_SIZE(a)  (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a) (((x) + (a)-1) & ~((u64)(a)-1))
#define barrier()      __asm__ __volatile__("" ::: "memory")

/* ---- port I/O, MMIO, CPU ---------------------------------------------------------------- */

static inline void outb(u16 port, u8 v)
{
    __asm__ __volatile__("outb %0, %1" ::"a"(v), "Nd"(port));
}
static inline void outw(u16 port, u16 v)
{
    __asm__ __volatile__("outw %0, %1" ::"a"(v), "Nd"(port));
}
static inline void outl(u16 port, u32 v)
{
    __asm__ __volatile__("outl %0, %1" ::"a"(v), "Nd"(port));
}
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ __volatile__("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ __volatile__("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u8 mmio_read8(u64 a)
{
    return *(volatile u8 *)a;
}
static inline u16 mmio_read16(u64 a)
{
    return *(volatile u16 *)a;
}
static inline u32 mmio_read32(u64 a)
{
    return *(volatile u32 *)a;
}
static inline void mmio_write8(u64 a, u8 v)
{
    *(volatile u8 *)a = v;
}
static inline void mmio_write16(u64 a, u16 v)
{
    *(volatile u16 *)a = v;
}
static inline void mmio_write32(u64 a, u32 v)
{
    *(volatile u32 *)a = v;
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static inline void cpuid(u32 leaf, u32 sub, u32 r[4])
{
    __asm__ __volatile__("cpuid"
                         : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                         : "a"(leaf), "c"(sub));
}

static inline void cpu_relax(void)
{
    __asm__ __volatile__("pause" ::: "memory");
}

static inline void mb(void)
{
    __asm__ __volatile__("mfence" ::: "memory");
}

/* ---- the boot ABI: Xen's struct hvm_start_info (PVH) -------------------------------------- */

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr; /* version >= 1 */
    u32 memmap_entries;
    u32 reserved;
};

struct hvm_memmap_entry {
    u64 addr;
    u64 size;
    u32 type; /* 1 = RAM, as in e820 */
    u32 reserved;
};

/* ---- ring 0 services (ring0.c), reached from ring 3 through INT3 --------------------------- */

enum probe_syscall {
    SYS_WAIT_IRQ = 0, /* sti; hlt; cli — returns after the next interrupt */
    SYS_IRQ_ENABLE = 1,
    SYS_IRQ_DISABLE = 2,
    SYS_WRMSR = 3,
    SYS_RDMSR = 4,
    SYS_STOP = 5,   /* cli; hlt forever */
    SYS_GET_CS = 6, /* the CS ring 0 runs with: proves the SYSCALL path changes privilege */
};

#define SYSCALL_VECTOR  3 /* #BP: INT3 is our system call */
#define TIMER_VECTOR    0x20
#define MSIX_VECTOR     0x30
#define SPURIOUS_VECTOR 0x3f
#define IDT_VECTORS     64 /* 0..63 get a gate */

u64 syscall3(u64 nr, u64 a, u64 b, u64 c);

/* Interrupts delivered per vector, counted by the ring-0 handler, read by ring 3. */
extern volatile u64 irq_count[IDT_VECTORS];

/* ---- console (console.c): COM1 ------------------------------------------------------------ */

void console_init(void);
void con_putc(char c);
void con_write(const char *s, size_t n);
void con_puts(const char *s);
void con_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void con_vprintf(const char *fmt, va_list ap);
int con_getc_nonblock(void); /* -1 when no byte is waiting */
/* One machine-readable result line: "PROBE result PREFIX.KEY=VALUE" (prefix may be NULL). */
void result(const char *prefix, const char *key, const char *value_fmt, ...)
    __attribute__((format(printf, 3, 4)));
void info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void probe_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
int snprint(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprint(char *buf, size_t size, const char *fmt, va_list ap);

/* ---- libc-like helpers (util.c) ----------------------------------------------------------- */

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
int strcmp(const char *a, const char *b);
/* Parse an unsigned number: decimal or 0x hex, optional K/M/G suffix (powers of 1024). */
bool parse_u64(const char *s, const char **end, u64 *out);

struct sha256 {
    u32 h[8];
    u64 len;
    u8 buf[64];
    size_t fill;
};
void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t n);
void sha256_final(struct sha256 *c, char hex[65]);

u64 rand64(u64 *state); /* xorshift64* */
u64 mix64(u64 x);       /* splitmix64 finaliser */

/* ---- memory (main.c) ---------------------------------------------------------------------- */

void *alloc_pages(u64 bytes); /* page-aligned, zeroed, never freed */
u64 mem_free_bytes(void);

/* ---- command line (main.c) ---------------------------------------------------------------- */

const char *param_str(const char *key, const char *def);
u64 param_u64(const char *key, u64 def);
bool param_list_has(const char *key, const char *item, const char *def);

/* ---- time (main.c) ------------------------------------------------------------------------ */

extern u64 tsc_khz; /* 0 when unknown */
u64 cycles_to_us(u64 cycles);
u64 us_to_cycles(u64 us);

/* ---- ACPI (acpi.c) ------------------------------------------------------------------------ */

void acpi_init(u64 rsdp_hint);
u64 acpi_mcfg_base(void); /* ECAM base of segment 0, 0 if none */
u16 acpi_pm_timer_port(void);
void acpi_power_button_enable(void);
bool acpi_power_button_poll(void); /* true once per press */
void power_off(void) __attribute__((noreturn));
int map_high(u64 addr, u64 size); /* make [addr, addr+size) reachable above 4 GiB */

/* ---- PCI (pci.c) -------------------------------------------------------------------------- */

struct pci_dev {
    u8 bus, dev, fn;
    u16 vendor, device;
    u32 class_code; /* class << 16 | subclass << 8 | prog-if */
};

void pci_init(void);
int pci_count(void);
struct pci_dev *pci_get(int i);
u32 pci_read32(const struct pci_dev *d, u16 off);
u16 pci_read16(const struct pci_dev *d, u16 off);
u8 pci_read8(const struct pci_dev *d, u16 off);
void pci_write32(const struct pci_dev *d, u16 off, u32 v);
void pci_write16(const struct pci_dev *d, u16 off, u16 v);
void pci_write8(const struct pci_dev *d, u16 off, u8 v);
u64 pci_bar_address(const struct pci_dev *d, int bar); /* assigns an unassigned BAR; 0 = none */
void pci_enable(const struct pci_dev *d);              /* memory, I/O decode and bus master */

/* ---- virtio (virtio.c) -------------------------------------------------------------------- */

#define VIRTIO_F_VERSION_1 (1ull << 32)

struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2

struct vring_avail {
    u16 flags;
    u16 idx;
    u16 ring[];
};
struct vring_used_elem {
    u32 id;
    u32 len;
};
struct vring_used {
    u16 flags;
    u16 idx;
    struct vring_used_elem ring[];
};

struct virtqueue {
    u16 index, size;
    struct vring_desc *desc;
    struct vring_avail *avail;
    volatile struct vring_used *used;
    u16 free_head, num_free, last_used, avail_idx;
    u16 pending; /* chains added since the last kick */
    u64 notify_addr;
    u64 *token; /* per head descriptor */
    u64 kicks;
};

struct virtio_dev {
    struct pci_dev *pci;
    u16 type; /* virtio device id: 1 net, 2 blk, 4 rng, 5 balloon */
    u64 common, notify, isr, device;
    u32 notify_mult;
    u64 features;
    int msix_cap;     /* config offset of the MSI-X capability, 0 if none */
    u64 msix_table;   /* address of the MSI-X table */
    const char *name; /* "blk", "blk1", … — the result key prefix */
};

struct vbuf {
    u64 addr;
    u32 len;
    bool device_writes;
};

int virtio_pci_type(const struct pci_dev *p);               /* virtio device type or -1 */
int virtio_find(u16 type, int nth, struct virtio_dev *out); /* 0 found, -1 none */
u64 virtio_negotiate(struct virtio_dev *d, u64 wanted);     /* returns features, 0 on failure */
int virtio_queue_setup(struct virtio_dev *d, struct virtqueue *vq, u16 index, u16 max_size);
void virtio_driver_ok(struct virtio_dev *d);
void virtio_reset(struct virtio_dev *d);
int vq_add(struct virtqueue *vq, const struct vbuf *bufs, int n, u64 token);
void vq_kick(struct virtqueue *vq);
bool vq_get(struct virtqueue *vq, u64 *token, u32 *len);
int vq_wait(struct virtqueue *vq, u64 *token, u32 *len, u64 timeout_us); /* 0 ok, -1 timeout */
u8 virtio_cfg8(struct virtio_dev *d, u32 off);
u16 virtio_cfg16(struct virtio_dev *d, u32 off);
u32 virtio_cfg32(struct virtio_dev *d, u32 off);
u64 virtio_cfg64(struct virtio_dev *d, u32 off);
void virtio_cfg_write32(struct virtio_dev *d, u32 off, u32 v);
int virtio_msix_route(struct virtio_dev *d, struct virtqueue *vq, u8 vector);

/* ---- workloads ---------------------------------------------------------------------------- */

int test_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2))); /* records the first failure, returns -1 */
int test_blk(void);
/* Idle mode's `blksum`: only the probe.blk.checksum reads, on every disk. */
int blk_checksums_again(void);
int test_net(void);
int test_dhcp(void);
int dhcp_run(void); /* DHCP on the first NIC, already set up by net.c */
int net_raw_send(const void *frame, u32 len);
u32 net_raw_recv(void *buf, u32 cap, const u8 **mac);
int test_rng(void);
int test_balloon(void);
int test_vcon(void);
int test_irq(void);
void balloon_idle_init(void);
void balloon_idle_poll(void);

#endif
