/*
 * lib/vmm/machine.h — what the pieces of the VMM share: guest memory, the I/O buses, the machine
 * (VM fd, vCPUs, stop requests) and the constructors of each device.
 *
 * The shape: struct machine is the board. Devices plug into it by registering address ranges on
 * the port-I/O or MMIO bus and an IRQ line; the vCPU loop turns each exit into a bus dispatch.
 * Every device keeps its own state and lock; nothing here knows a device's registers.
 */
#ifndef VESSEL_VMM_MACHINE_H
#define VESSEL_VMM_MACHINE_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vessel/vmm.h"

/* ---- guest physical layout ------------------------------------------------------------------- */

#define GUEST_PAGE 4096ULL
#define MIB        (1ULL << 20)
#define GIB        (1ULL << 30)

#define LAYOUT_GDT          0x500ULL
#define LAYOUT_START_INFO   0x6000ULL  /* PVH hvm_start_info, modlist */
#define LAYOUT_MEMMAP       0x6400ULL  /* PVH memmap / scratch */
#define LAYOUT_ZERO_PAGE    0x7000ULL  /* Linux boot_params */
#define LAYOUT_PML4         0x9000ULL  /* identity page tables: PML4, PDPT, 4 PDs */
#define LAYOUT_CMDLINE      0x20000ULL /* up to 64 KiB */
#define LAYOUT_CMDLINE_MAX  0x10000ULL
#define LAYOUT_EBDA         0x9fc00ULL /* RAM ends here in the first MiB */
#define LAYOUT_ACPI         0xe0000ULL /* RSDP and tables (the legacy RSDP search area) */
#define LAYOUT_ACPI_END     0x100000ULL
#define LAYOUT_HIGH         0x100000ULL   /* 1 MiB */
#define LAYOUT_PCI_HOLE     0xc0000000ULL /* 3 GiB: RAM stops here, resumes at 4 GiB */
#define LAYOUT_PCI_MMIO_END 0xfec00000ULL
#define LAYOUT_IOAPIC       0xfec00000ULL
#define LAYOUT_LAPIC        0xfee00000ULL
#define LAYOUT_4G           0x100000000ULL

/* Ports of the emulated platform devices. */
#define PORT_COM1       0x3f8
#define IRQ_COM1        4
#define PORT_PM_EVT     0x600 /* PM1a event block: status(2) enable(2) */
#define PORT_PM_CNT     0x604 /* PM1a control block (2) */
#define PORT_PM_TMR     0x608 /* PM timer (4) */
#define PORT_RESET      0xcf9
#define PORT_DEBUG_EXIT 0xf4
#define IRQ_SCI         9
#define ACPI_S5_TYPE    5

/* ---- guest memory ---------------------------------------------------------------------------- */

struct mem_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
};

/* Guest RAM as seen from the host. Also built over plain buffers by tests and the fuzzer. */
struct guest_mem {
    struct mem_region regions[4];
    unsigned count;
    uint64_t ram_size; /* total RAM bytes */
};

/* Host pointer for [gpa, gpa+len) when it lies entirely in one RAM region, else NULL. */
static inline void *guest_mem_ptr(const struct guest_mem *mem, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < mem->count; i++) {
        const struct mem_region *r = &mem->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa))
            return r->host + (gpa - r->gpa);
    }
    return NULL;
}

/* RAM below the PCI hole (what the first region holds). */
uint64_t guest_mem_low_end(const struct guest_mem *mem);

/* ---- buses ----------------------------------------------------------------------------------- */

/* OFFSET is relative to the range base. DATA is SIZE bytes (1, 2, 4, 8), little endian. */
typedef void (*bus_handler_fn)(void *opaque, uint64_t offset, uint8_t *data, unsigned size,
                               bool is_write);

struct bus_range {
    uint64_t base, len;
    bus_handler_fn fn;
    void *opaque;
    const char *name;
};

struct bus {
    pthread_rwlock_t lock;
    struct bus_range *ranges; /* sorted by base, never overlapping */
    size_t count, cap;
    const char *name;
};

int bus_init(struct bus *bus, const char *name);
void bus_destroy(struct bus *bus);
int bus_register(struct bus *bus, uint64_t base, uint64_t len, bus_handler_fn fn, void *opaque,
                 const char *name);
/* Remove the range of OPAQUE starting at BASE (no-op when absent). */
void bus_unregister(struct bus *bus, uint64_t base, void *opaque);
/* False when nobody owns ADDR (reads then return all ones). */
bool bus_dispatch(struct bus *bus, uint64_t addr, uint8_t *data, unsigned size, bool is_write);

/* ---- the machine ----------------------------------------------------------------------------- */

enum vcpu_exit_kind {
    EXIT_KIND_IO,
    EXIT_KIND_MMIO,
    EXIT_KIND_HLT,
    EXIT_KIND_INTR,
    EXIT_KIND_OTHER,
    EXIT_KIND_COUNT,
};

struct vcpu {
    struct machine *machine;
    int index;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    bool thread_started;
    clockid_t cpu_clock;
    _Atomic uint64_t exits[EXIT_KIND_COUNT];
    uint64_t handled;         /* exits KVM_RUN returned to us for (__atomic builtins) */
    uint64_t timed, timed_ns; /* of those, the ones timed and their time to the next KVM_RUN */
    uint64_t paused_cpu_ns;
};

enum machine_state { MACHINE_RUNNING, MACHINE_PAUSED, MACHINE_STOPPING };

struct vmstate_writer;
struct vmstate_reader;

/* How a device takes part in save/restore (snapshot.c): park its worker so nothing is in flight
 * (HOLD) or let it go again, and write/read its state in its own section. */
struct device_persist {
    void (*park)(void *opaque, bool hold);
    int (*save)(void *opaque, struct vmstate_writer *w);
    int (*load)(void *opaque, struct vmstate_reader *r);
};

struct device {
    const char *name;
    void *state;
    void (*destroy)(void *state);
    /* Add "name": {counters} to a stats JSON object (json_object *), optional. */
    void (*stats)(void *state, void *json_object);
    const struct device_persist *persist;
    void *persist_opaque;
    void (*resumed)(void *state); /* the VM runs again after a pause (optional) */
};

struct boot_info {
    bool is_64bit; /* bzImage 64-bit entry; else PVH 32-bit */
    uint64_t entry;
    uint64_t boot_param; /* zero page (rsi) or hvm_start_info (ebx) */
    char how[128];       /* "PVH (vmlinux ELF)", "bzImage boot protocol 2.15", … */
};

struct machine {
    const struct vmm_config *config;
    int kvm_fd, vm_fd;
    int post_fd; /* eventfd sinking port 0x80 writes in the kernel (kvm.c: post_port_sink), or -1 */
    int run_size;
    struct guest_mem mem;
    size_t mmap_size;
    uint8_t *mmap_base;
    struct bus pio, mmio;
    struct vcpu *vcpus;
    unsigned vcpu_count;
    struct kvm_cpuid2 *cpuid;
    pthread_t setup_thread; /* irqchip, PIT, vCPU fds (kvm.c: vm_setup_thread) */
    bool setup_started;
    int setup_rc;
    const char *setup_step;
    pthread_t cpuid_thread; /* the CPUID table, from just after /dev/kvm opens */
    bool cpuid_started;
    int cpuid_rc; /* cpuid_setup, run on the CPUID thread */

    pthread_mutex_t lock; /* state, stop request */
    pthread_cond_t cond;
    enum machine_state state;
    char pause_reason[256]; /* why the VMM paused the VM itself (a full host disk); "" otherwise */
    int state_fd;           /* eventfd signalled after each pause/resume (the vmm's), or -1 */
    unsigned vcpus_paused;
    bool stop_requested;
    struct vmm_result result;

    struct device *devices;
    size_t device_count;

    struct boot_info boot;
    uint64_t rsdp;
    struct serial *serial;
    struct pm *pm;
    struct pci *pci;
    struct i8042 *i8042;
    struct balloon *balloon;
    uint64_t start_ns;
    _Atomic uint64_t first_output_ns;
    bool pvm_host;
    const struct vmstate_file *restore; /* set while the machine is rebuilt from a state file */
};

int machine_add_device(struct machine *m, const char *name, void *state, void (*destroy)(void *),
                       void (*stats)(void *, void *));
/* Give the device whose state is STATE its save/restore hooks (called with OPAQUE). */
void machine_device_persist(struct machine *m, void *state, const struct device_persist *persist,
                            void *opaque);
/* Add DEVICE: {KEY: VALUE, …} to the stats object JSON; pairs of (const char *, uint64_t), NULL
 * after the last. */
void json_stats_add(void *json, const char *device, ...);
/* Set an IRQ line of the in-kernel PIC/IOAPIC (level 0/1). */
void machine_irq_line(struct machine *m, unsigned irq, int level);
/* Deliver an MSI. */
void machine_msi(struct machine *m, uint64_t address, uint32_t data);
/* Ask all vCPUs to stop with REASON (first request wins). Safe from any thread. */
void machine_request_stop(struct machine *m, enum vmm_exit_reason reason, unsigned code,
                          const char *detail);
/* Pause/resume every vCPU; pause returns once all are out of KVM_RUN. Resume clears the pause
 * reason and then calls every device's resumed hook. */
int machine_pause(struct machine *m);
int machine_resume(struct machine *m);
/* A device can't go on until the host does something (a full disk): pause the VM with REASON
 * (kept for the status until resume) and say so once on stderr. Call it holding no device lock:
 * it waits for the vCPUs. */
void machine_pause_for(struct machine *m, const char *reason);
/* Copy the pause reason into BUF ("" when none). */
void machine_pause_reason(struct machine *m, char *buf, size_t size);
/* Give the device whose state is STATE a hook called after each resume. */
void machine_device_on_resume(struct machine *m, void *state, void (*resumed)(void *state));

/* ---- boot (boot-pvh.c, boot-bzimage.c, acpi.c, cpuid.c) -------------------------------------- */

/* Load KERNEL (PVH ELF or bzImage) + initrd + cmdline; fills m->boot. */
int boot_load(struct machine *m);
/* Load a PVH ELF image held in memory, write hvm_start_info. */
int pvh_load(struct machine *m, const uint8_t *elf, size_t len, const char *name);
/* Decompress a bzImage payload by its magic. *out is malloc'd. */
int bzimage_decompress(const uint8_t *in, size_t len, uint8_t **out, size_t *out_len,
                       const char **format);
/* Write the E820 map; returns entries. TYPE is 1 RAM, 2 reserved, 3 ACPI. */
struct e820_entry_host {
    uint64_t addr, size;
    uint32_t type;
};
unsigned machine_e820(const struct machine *m, struct e820_entry_host *out, unsigned max);
int initrd_place(struct machine *m, uint64_t kernel_end, uint64_t limit, uint64_t *addr,
                 uint64_t *size);

/* ACPI tables into guest memory at LAYOUT_ACPI; sets m->rsdp. */
int acpi_build(struct machine *m);
/* Build tables into BUF (guest address BASE) — used by acpi_build and the unit tests. */
int acpi_build_tables(uint8_t *buf, size_t len, uint64_t base, unsigned cpus, uint64_t *rsdp,
                      size_t *used);
uint8_t acpi_checksum(const uint8_t *p, size_t len);

int cpuid_setup(struct machine *m);
/* The cache of KVM's CPUID table (cpuid.c): a file of this head, then nent entries. The head up
 * to nent is the key; a file whose key differs from cpuid_cache_key's is not used. */
#define CPUID_CACHE_MODULES 4
#define CPUID_CACHE_MAX     4096
struct cpuid_cache_head {
    char magic[8];                            /* "VSCPUID1" */
    char release[72];                         /* uname -r */
    char boot_id[40];                         /* /proc/sys/kernel/random/boot_id */
    uint64_t module_ino[CPUID_CACHE_MODULES]; /* /sys/module/{kvm,kvm_intel,kvm_amd,kvm_pvm} */
    uint32_t nent;
    uint32_t reserved;
};
bool cpuid_cache_path(char *buf, size_t size);
void cpuid_cache_key(struct cpuid_cache_head *key);
struct kvm_cpuid2 *cpuid_cache_load(const char *path, const struct cpuid_cache_head *key);
void cpuid_cache_store(const char *path, const struct cpuid_cache_head *key,
                       const struct kvm_cpuid2 *c);
int cpuid_apply_vcpu(struct machine *m, struct vcpu *v);

/* ---- devices --------------------------------------------------------------------------------- */

struct console;
/* Console backends ("stdio", "file:PATH", "pty", "unix:PATH", "none"). */
int console_open(struct console **out, const char *spec);
/* The same, naming FLAG ("--vconsole") in error messages. */
int console_open_as(struct console **out, const char *spec, const char *flag);
void console_close(struct console *c);
void console_write(struct console *c, const uint8_t *buf, size_t len);
/* False while a unix-socket console has no client (console_write would drop the bytes). */
bool console_can_write(struct console *c);
/* Input: the console calls FN from its own thread for each chunk it reads. */
void console_set_input(struct console *c, void (*fn)(void *opaque, const uint8_t *buf, size_t len),
                       void *opaque);

int serial_create(struct machine *m, struct console *console);
int pm_create(struct machine *m);        /* ACPI PM1 blocks, PM timer, reset port, debug exit */
void pm_power_button(struct machine *m); /* raise the fixed power-button event (SCI) */
int i8042_create(struct machine *m);
void i8042_ctrl_alt_del(struct machine *m); /* queue the key presses */
int rtc_create(struct machine *m);
int pci_create(struct machine *m);
int virtio_blk_create(struct machine *m, const struct vmm_disk_config *disk);
int virtio_net_create(struct machine *m, const struct vmm_net_config *net);
int virtio_rng_create(struct machine *m);
int virtio_balloon_create(struct machine *m);
/* A one-port virtio console on CONSOLE (its input goes to the guest). */
int virtio_console_create(struct machine *m, struct console *console);
/* Set the balloon's target (pages) and tell the driver; -ENODEV without a balloon. */
int virtio_balloon_set_target(struct machine *m, uint32_t pages);
/* The size in bytes of the disk behind virtio-blk number N (for the state file). */
uint64_t virtio_blk_disk_size(struct machine *m, size_t n);

/* ---- the VMM object ----------------------------------------------------------------------- */

struct control;
/* The control socket (control.c). Besides requests, a client that sends {"cmd":"watch"} is told
 * {"event":"state","state":…,"reason":…} after every pause and resume, for as long as it stays. */
int control_start(struct control **out, struct vmm *vmm, const char *spec);
void control_stop(struct control *c);

struct vmm {
    struct vmm_config config;
    struct machine *machine;
    struct console *console;
    struct console *vconsole; /* --vconsole backend, or NULL */
    struct control *control;
    int state_fd; /* eventfd: the machine paused or resumed (control.c tells the watchers) */
    pthread_mutex_t machine_lock; /* held while the machine is rebuilt */
    uint64_t created_ns;
    uint64_t first_output_ns;
    uint64_t handled, handled_ns;  /* exit handling of the machines before a reboot */
    struct vmstate_file *restored; /* the state file a --restore came from (owns config strings) */
};

/* RESTORE: rebuild the board of a saved VM (no kernel load, no boot registers) or NULL. */
int machine_create(struct machine **out, const struct vmm_config *config, struct console *console,
                   struct console *vconsole, const struct vmstate_file *restore);
/* snapshot.c: with the vCPUs paused, write the whole machine to PATH. */
int machine_save(struct machine *m, const char *path);
/* snapshot.c: set KVM, device and RAM state of a machine built from F (file FD, named NAME). */
int machine_restore(struct machine *m, const struct vmstate_file *f, int fd, const char *name);
/* kvm.c helpers for snapshot.c. */
int vcpu_state_save(struct vcpu *v, struct vmstate_writer *w);
int vcpu_state_load(struct vcpu *v, struct vmstate_reader *r);
void machine_destroy(struct machine *m);
int machine_run(struct machine *m, struct vmm_result *result);
/* Exits KVM_RUN returned to the VMM for, and the ns the vCPU threads spent on them in the VMM
 * until they entered KVM_RUN again (the VMM's own share of an exit's round trip). */
uint64_t machine_exit_handling(struct machine *m, uint64_t *ns);
/* Stats JSON (json_object *) of the machine: vCPU times, exits, devices. */
void *machine_stats_json(struct machine *m);

#endif
