/*
 * lib/vmm/kvm.c — the machine on KVM: /dev/kvm, the VM, guest memory, vCPU threads and the exit
 * loop.
 *
 * Each vCPU is a thread looping on KVM_RUN. An exit is either bus traffic (port I/O, MMIO) handed
 * to the device owning the address, or an event that ends the run (shutdown = triple fault,
 * internal error, system event). Stopping and pausing use one mechanism: the requester changes
 * machine->state under the lock, sets each vCPU's immediate_exit and signals its thread; a vCPU
 * checks the state before every KVM_RUN, so no request can be missed.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

#define KICK_SIGNAL SIGUSR1

/* ---- small helpers --------------------------------------------------------------------------- */

uint64_t guest_mem_low_end(const struct guest_mem *mem)
{
    return mem->count ? mem->regions[0].gpa + mem->regions[0].size : 0;
}

static uint64_t host_mem_total(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

int machine_add_device(struct machine *m, const char *name, void *state, void (*destroy)(void *),
                       void (*stats)(void *, void *))
{
    struct device *d = realloc(m->devices, (m->device_count + 1) * sizeof(*d));
    if (!d)
        return vs_error(-ENOMEM, "%s: out of memory", name);
    m->devices = d;
    d[m->device_count++] = (struct device){name, state, destroy, stats, NULL, NULL, NULL};
    return 0;
}

void machine_device_persist(struct machine *m, void *state, const struct device_persist *persist,
                            void *opaque)
{
    for (size_t i = 0; i < m->device_count; i++)
        if (m->devices[i].state == state) {
            m->devices[i].persist = persist;
            m->devices[i].persist_opaque = opaque;
        }
}

void machine_device_on_resume(struct machine *m, void *state, void (*resumed)(void *state))
{
    for (size_t i = 0; i < m->device_count; i++)
        if (m->devices[i].state == state)
            m->devices[i].resumed = resumed;
}

void json_stats_add(void *json, const char *device, ...)
{
    json_object *o = json_object_new_object();
    va_list ap;
    va_start(ap, device);
    for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *))
        json_object_object_add(o, k, json_object_new_int64((int64_t)va_arg(ap, uint64_t)));
    va_end(ap);
    json_object_object_add(json, device, o);
}

void machine_irq_line(struct machine *m, unsigned irq, int level)
{
    struct kvm_irq_level l = {.irq = irq, .level = level};
    ioctl(m->vm_fd, KVM_IRQ_LINE, &l);
}

void machine_msi(struct machine *m, uint64_t address, uint32_t data)
{
    struct kvm_msi msi = {
        .address_lo = (uint32_t)address, .address_hi = (uint32_t)(address >> 32), .data = data};
    ioctl(m->vm_fd, KVM_SIGNAL_MSI, &msi);
}

/* ---- /dev/kvm and the VM --------------------------------------------------------------------- */

static void *vm_cpuid_thread(void *arg);

static int kvm_open(struct machine *m)
{
    m->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (m->kvm_fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return vs_error(-ENOENT, "/dev/kvm: not present (KVM module not loaded, or no "
                                     "hardware virtualization; see `vessel host info`)");
        if (e == EACCES || e == EPERM)
            return vs_error(-e, "/dev/kvm: permission denied (add your user to group 'kvm')");
        return vs_error_errno(-e, "/dev/kvm");
    }
    if (pthread_create(&m->cpuid_thread, NULL, vm_cpuid_thread, m) == 0)
        m->cpuid_started = true;
    else
        vm_cpuid_thread(m);
    int version = ioctl(m->kvm_fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION)
        return vs_error(-ENOTSUP, "/dev/kvm: API version %d, vessel needs %d", version,
                        KVM_API_VERSION);
    static const struct {
        int cap;
        const char *name;
    } needed[] = {
        {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
        {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
        {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    };
    for (size_t i = 0; i < VS_ARRAY_SIZE(needed); i++)
        if (ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, needed[i].cap) <= 0)
            return vs_error(-ENOTSUP, "/dev/kvm: missing capability %s", needed[i].name);
    m->run_size = ioctl(m->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (m->run_size <= 0)
        return vs_error_errno(-errno, "/dev/kvm: KVM_GET_VCPU_MMAP_SIZE");
    int max = ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    if (max <= 0)
        max = ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
    if (max > 0 && m->vcpu_count > (unsigned)max)
        return vs_error(-EINVAL, "--cpus %u: this host's KVM allows at most %d vCPUs",
                        m->vcpu_count, max);
    m->pvm_host = access("/sys/module/kvm_pvm", F_OK) == 0;
    return 0;
}

static int memory_setup(struct machine *m)
{
    uint64_t size = m->config->memory;
    if (size < 16 * MIB)
        return vs_error(-EINVAL, "--memory: %llu MiB is too small (at least 16 MiB)",
                        (unsigned long long)(size / MIB));
    if (size % GUEST_PAGE)
        return vs_error(-EINVAL, "--memory: %llu bytes is not a multiple of 4 KiB",
                        (unsigned long long)size);
    uint64_t host = host_mem_total();
    if (host && size > host) {
        char want[32], have[32];
        vs_format_size(size, want, sizeof(want));
        vs_format_size(host, have, sizeof(have));
        return vs_error(-ENOMEM, "--memory %s: more than the host's %s of RAM", want, have);
    }
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (m->config->hugepages) {
        if (size % (2 * MIB))
            return vs_error(-EINVAL, "--memory: hugepages need a multiple of 2 MiB");
        flags |= MAP_HUGETLB;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED)
        return vs_error_errno(-errno, "guest memory: mmap of %llu MiB%s",
                              (unsigned long long)(size / MIB),
                              m->config->hugepages ? " with hugepages (see /proc/sys/vm/"
                                                     "nr_hugepages)"
                                                   : "");
    m->mmap_base = p;
    m->mmap_size = size;
    madvise(p, size, MADV_DONTDUMP);
    uint64_t low = VS_MIN(size, LAYOUT_PCI_HOLE);
    m->mem.regions[0] = (struct mem_region){0, low, p};
    m->mem.count = 1;
    if (size > low) {
        m->mem.regions[1] = (struct mem_region){LAYOUT_4G, size - low, (uint8_t *)p + low};
        m->mem.count = 2;
    }
    m->mem.ram_size = size;
    return 0;
}

/* Give guest RAM to KVM (first of all: see vm_setup). Returns 0 or -errno. */
static int memory_register(struct machine *m)
{
    for (unsigned i = 0; i < m->mem.count; i++) {
        struct kvm_userspace_memory_region r = {
            .slot = i,
            .guest_phys_addr = m->mem.regions[i].gpa,
            .memory_size = m->mem.regions[i].size,
            .userspace_addr = (uintptr_t)m->mem.regions[i].host,
        };
        if (ioctl(m->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
            return -errno;
    }
    return 0;
}

/* Port 0x80 is the POST-code port: firmware and Linux (outb_p, io_delay=0x80, the i8259 and PIT
 * setup) write to it as a delay and nothing ever reads the value back. Each such write would be
 * an exit to the VMM (tens of µs on PVM) that does nothing, so an ioeventfd that no one reads
 * takes it in the kernel instead. Reads of 0x80 still reach the VMM. Best effort: without it the
 * writes go the slow way, to the same no-op. */
static void post_port_sink(struct machine *m)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return;
    struct kvm_ioeventfd e = {.addr = 0x80, .len = 1, .fd = fd, .flags = KVM_IOEVENTFD_FLAG_PIO};
    if (ioctl(m->vm_fd, KVM_IOEVENTFD, &e) < 0) {
        close(fd);
        return;
    }
    m->post_fd = fd;
}

/* The vCPU's fd and kvm_run, on the setup thread (it needs the irqchip; on PVM it costs ~0.3 ms
 * that overlaps the kernel's loading). Returns 0, or -errno with setup_step set. */
static int vcpu_open(struct machine *m, struct vcpu *v)
{
    v->fd = ioctl(m->vm_fd, KVM_CREATE_VCPU, v->index);
    if (v->fd < 0) {
        m->setup_step = "KVM_CREATE_VCPU";
        return -errno;
    }
    void *run = mmap(NULL, m->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (run == MAP_FAILED) {
        m->setup_step = "mmap of kvm_run";
        return -errno;
    }
    v->run = run;
    return 0;
}

/* The in-kernel irqchip, PIT, vCPUs and port 0x80 sink, on a thread of their own while the main
 * thread loads the kernel and builds the devices; machine_vm_ready joins it before the vCPUs are
 * set up. A failure is reported by machine_vm_ready, on the main thread, from setup_rc and
 * setup_step (error messages are per thread). */
static void *vm_setup_thread(void *arg)
{
    struct machine *m = arg;
    struct kvm_pit_config pit = {.flags = 0};
    if (ioctl(m->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
        m->setup_rc = -errno;
        m->setup_step = "KVM_CREATE_IRQCHIP";
    } else if (ioctl(m->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
        m->setup_rc = -errno;
        m->setup_step = "KVM_CREATE_PIT2";
    } else {
        for (unsigned i = 0; i < m->vcpu_count && m->setup_rc == 0; i++)
            m->setup_rc = vcpu_open(m, &m->vcpus[i]);
        post_port_sink(m);
    }
    return NULL;
}

/* The CPUID table on another, started as soon as /dev/kvm is open: KVM_GET_SUPPORTED_CPUID needs
 * only /dev/kvm and costs ~0.7 ms where CPUID instructions trap (a nested host), longer than
 * anything else before the vCPUs, which are the only ones to need it. */
static void *vm_cpuid_thread(void *arg)
{
    struct machine *m = arg;
    m->cpuid_rc = cpuid_setup(m);
    return NULL;
}

static int machine_vm_ready(struct machine *m)
{
    if (m->setup_started)
        pthread_join(m->setup_thread, NULL);
    if (m->cpuid_started)
        pthread_join(m->cpuid_thread, NULL);
    m->setup_started = m->cpuid_started = false;
    if (m->setup_rc < 0)
        return vs_error_errno(m->setup_rc, "%s", m->setup_step);
    if (m->cpuid_rc < 0) {
        int rc = m->cpuid_rc;
        free(m->cpuid);
        m->cpuid = NULL;
        m->cpuid_rc = 0;
        int again = cpuid_setup(m); /* for the message */
        return again < 0 ? again : vs_error(rc, "CPUID setup failed");
    }
    return 0;
}

/* The VM, its memory and, on the setup thread, the rest. The memory slots are registered here,
 * first and on this thread: a slot waits for an expedited SRCU grace period (~0.1 ms), but
 * registering anything on KVM's I/O bus (the irqchip, the PIT, an ioeventfd) starts a normal one
 * that sits a whole timer tick (4 ms at HZ=250) before it runs, and an expedited wait that comes
 * behind it waits that tick too. */
static int vm_setup(struct machine *m)
{
    m->vm_fd = ioctl(m->kvm_fd, KVM_CREATE_VM, 0);
    if (m->vm_fd < 0)
        return vs_error_errno(-errno, "/dev/kvm: KVM_CREATE_VM");
    /* VMX needs these three pages below 4 GiB; other KVM kinds ignore or refuse them. */
    if (ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0)
        ioctl(m->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL);
    if (ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0) {
        uint64_t ident = 0xfffbc000ULL;
        ioctl(m->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident);
    }
    int rc = memory_setup(m);
    if (rc < 0)
        return rc;
    if ((rc = memory_register(m)) < 0)
        return vs_error_errno(rc, "KVM_SET_USER_MEMORY_REGION");
    m->vcpus = vs_calloc(m->vcpu_count, sizeof(*m->vcpus));
    if (!m->vcpus)
        return -ENOMEM;
    for (unsigned i = 0; i < m->vcpu_count; i++) {
        m->vcpus[i].machine = m;
        m->vcpus[i].index = (int)i;
        m->vcpus[i].fd = -1;
    }
    if (pthread_create(&m->setup_thread, NULL, vm_setup_thread, m) == 0)
        m->setup_started = true;
    else
        vm_setup_thread(m); /* no thread: do it inline */
    return 0;
}

/* ---- vCPUs ----------------------------------------------------------------------------------- */

static void kick_handler(int sig)
{
    (void)sig;
}

static void vcpu_kick(struct vcpu *v)
{
    if (!v->run)
        return;
    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (v->thread_started)
        pthread_kill(v->thread, KICK_SIGNAL);
}

static void set_msrs(struct vcpu *v)
{
    static const uint32_t zeroed[] = {
        0x174,      0x175,      0x176,                  /* SYSENTER_CS/ESP/EIP */
        0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, /* STAR LSTAR CSTAR FMASK */
        0xc0000102, 0x10,                               /* KERNEL_GS_BASE, TSC */
    };
    struct kvm_msr_entry e[16];
    memset(e, 0, sizeof(e));
    unsigned n = 0;
    for (size_t i = 0; i < VS_ARRAY_SIZE(zeroed); i++)
        e[n++].index = zeroed[i];
    e[n].index = 0x1a0; /* IA32_MISC_ENABLE: fast strings */
    e[n++].data = 1;
    e[n].index = 0x2ff; /* MTRRdefType: MTRRs on, default write-back */
    e[n++].data = (1 << 11) | 6;
    /* KVM_SET_MSRS stops at the first MSR it refuses and returns how many it set: a KVM that
     * refuses one (PVM) must not lose the others, so go on after it. One call when all are taken.
     * The header and the entries share an aligned buffer (struct kvm_msrs ends in a flexible
     * array). */
    uint64_t buf[(sizeof(struct kvm_msrs) + sizeof(e)) / 8 + 1];
    struct kvm_msrs *msrs = (struct kvm_msrs *)buf;
    for (unsigned i = 0; i < n;) {
        memset(buf, 0, sizeof(buf));
        msrs->nmsrs = n - i;
        memcpy(msrs->entries, e + i, (n - i) * sizeof(e[0]));
        int done = ioctl(v->fd, KVM_SET_MSRS, msrs);
        i += done > 0 ? (unsigned)done : 0;
        if (i < n)
            i++; /* the refused one */
    }
}

static void set_lapic_lints(struct vcpu *v)
{
    struct kvm_lapic_state lapic;
    if (ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0)
        return;
    uint32_t *lint0 = (uint32_t *)&lapic.regs[0x350];
    uint32_t *lint1 = (uint32_t *)&lapic.regs[0x360];
    *lint0 = (*lint0 & ~0x700u & ~0x10000u) | (7u << 8); /* ExtINT: the PIC */
    *lint1 = (*lint1 & ~0x700u & ~0x10000u) | (4u << 8); /* NMI */
    ioctl(v->fd, KVM_SET_LAPIC, &lapic);
}

static void set_segment(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code64)
{
    memset(s, 0, sizeof(*s));
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->s = 1;
    s->g = 1;
    s->db = code64 ? 0 : 1;
    s->l = code64 ? 1 : 0;
}

/* Registers of the boot vCPU per the entry ABI: PVH (32-bit flat, paging off) or the Linux
 * 64-bit boot protocol (long mode, identity map, rsi = zero page). */
static int vcpu_boot_state(struct machine *m, struct vcpu *v)
{
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return vs_error_errno(-errno, "vCPU %d: KVM_GET_SREGS", v->index);
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rflags = 0x2;
    regs.rip = m->boot.entry;
    if (m->boot.is_64bit) {
        set_segment(&sregs.cs, 0x10, 0xb, true);
        set_segment(&sregs.ds, 0x18, 0x3, false);
        sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
        sregs.gdt.base = LAYOUT_GDT;
        sregs.gdt.limit = 5 * 8 - 1;
        sregs.cr3 = LAYOUT_PML4;
        sregs.cr4 = 1u << 5;                 /* PAE */
        sregs.cr0 = 0x80000011u;             /* PG, ET, PE */
        sregs.efer = (1u << 8) | (1u << 10); /* LME, LMA */
        regs.rsi = m->boot.boot_param;
    } else {
        set_segment(&sregs.cs, 0x8, 0xb, false);
        set_segment(&sregs.ds, 0x18, 0x3, false);
        sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
        sregs.gdt.base = LAYOUT_GDT;
        sregs.gdt.limit = 5 * 8 - 1;
        sregs.cr0 = 0x11; /* PE, ET; paging off */
        sregs.cr4 = 0;
        sregs.efer = 0;
        regs.rbx = m->boot.boot_param;
    }
    memset(&sregs.tr, 0, sizeof(sregs.tr));
    sregs.tr.selector = 0x20;
    sregs.tr.limit = 0x67;
    sregs.tr.type = 0xb; /* busy 32-bit TSS */
    sregs.tr.present = 1;
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return vs_error_errno(-errno, "vCPU %d: KVM_SET_SREGS (boot state)", v->index);
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return vs_error_errno(-errno, "vCPU %d: KVM_SET_REGS (boot state)", v->index);
    return 0;
}

/* CPUID, MSRs, LAPIC and (for the boot vCPU) the entry state, once vcpu_open and the CPUID table
 * are done and the kernel is loaded. */
static int vcpu_setup(struct machine *m, struct vcpu *v)
{
    int rc = cpuid_apply_vcpu(m, v);
    if (rc < 0)
        return rc;
    set_msrs(v);
    set_lapic_lints(v);
    if (v->index == 0 && !m->restore)
        return vcpu_boot_state(m, v);
    return 0;
}

/* ---- vCPU state for save/restore ------------------------------------------------------------- */

enum {
    VCPU_BLOB_REGS = 1,
    VCPU_BLOB_SREGS,
    VCPU_BLOB_XSAVE,
    VCPU_BLOB_FPU,
    VCPU_BLOB_XCRS,
    VCPU_BLOB_MSRS,
    VCPU_BLOB_LAPIC,
    VCPU_BLOB_EVENTS,
    VCPU_BLOB_DEBUGREGS,
    VCPU_BLOB_MP_STATE,
};

static void put_blob(struct vmstate_writer *w, uint32_t tag, const void *p, size_t n)
{
    vmw_u32(w, tag);
    vmw_u32(w, (uint32_t)n);
    vmw_bytes(w, p, n);
}

/* The MSRs KVM can save, as read back from this vCPU (one by one: PVM refuses some). */
static int msrs_save(struct vcpu *v, struct vmstate_writer *w)
{
    struct machine *m = v->machine;
    struct kvm_msr_list probe = {.nmsrs = 0};
    if (ioctl(m->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
        return vs_error_errno(-errno, "KVM_GET_MSR_INDEX_LIST");
    struct kvm_msr_list *list = vs_calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
    if (!list)
        return -ENOMEM;
    list->nmsrs = probe.nmsrs;
    if (ioctl(m->kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
        int e = -errno;
        free(list);
        return vs_error_errno(e, "KVM_GET_MSR_INDEX_LIST");
    }
    struct vmstate_writer body = {0};
    uint32_t kept = 0;
    for (uint32_t i = 0; i < list->nmsrs; i++) {
        uint64_t buf[(sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)) / 8 + 1] = {0};
        struct kvm_msrs *one = (struct kvm_msrs *)buf;
        one->nmsrs = 1;
        one->entries[0].index = list->indices[i];
        if (ioctl(v->fd, KVM_GET_MSRS, one) != 1)
            continue;
        vmw_u32(&body, one->entries[0].index);
        vmw_u64(&body, one->entries[0].data);
        kept++;
    }
    free(list);
    vmw_u32(w, VCPU_BLOB_MSRS);
    vmw_u32(w, (uint32_t)(4 + body.len));
    vmw_u32(w, kept);
    vmw_bytes(w, body.buf, body.len);
    int rc = body.failed ? -ENOMEM : 0;
    vmw_free(&body);
    return rc;
}

int vcpu_state_save(struct vcpu *v, struct vmstate_writer *w)
{
    struct machine *m = v->machine;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_debugregs debug;
    struct kvm_mp_state mp;
#define GET(req, what, var)                                                                        \
    if (ioctl(v->fd, req, &var) < 0)                                                               \
        return vs_error_errno(-errno, "vCPU %d: %s", v->index, what);
    GET(KVM_GET_REGS, "KVM_GET_REGS", regs);
    GET(KVM_GET_SREGS, "KVM_GET_SREGS", sregs);
    GET(KVM_GET_LAPIC, "KVM_GET_LAPIC", lapic);
    GET(KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", events);
    GET(KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", debug);
    GET(KVM_GET_MP_STATE, "KVM_GET_MP_STATE", mp);
    put_blob(w, VCPU_BLOB_REGS, &regs, sizeof(regs));
    put_blob(w, VCPU_BLOB_SREGS, &sregs, sizeof(sregs));
    if (ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0) {
        struct kvm_xsave xsave;
        GET(KVM_GET_XSAVE, "KVM_GET_XSAVE", xsave);
        put_blob(w, VCPU_BLOB_XSAVE, &xsave, sizeof(xsave));
    } else {
        struct kvm_fpu fpu;
        GET(KVM_GET_FPU, "KVM_GET_FPU", fpu);
        put_blob(w, VCPU_BLOB_FPU, &fpu, sizeof(fpu));
    }
    if (ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0) {
        struct kvm_xcrs xcrs;
        GET(KVM_GET_XCRS, "KVM_GET_XCRS", xcrs);
        put_blob(w, VCPU_BLOB_XCRS, &xcrs, sizeof(xcrs));
    }
#undef GET
    put_blob(w, VCPU_BLOB_LAPIC, &lapic, sizeof(lapic));
    int rc = msrs_save(v, w);
    if (rc < 0)
        return rc;
    put_blob(w, VCPU_BLOB_EVENTS, &events, sizeof(events));
    put_blob(w, VCPU_BLOB_DEBUGREGS, &debug, sizeof(debug));
    put_blob(w, VCPU_BLOB_MP_STATE, &mp, sizeof(mp));
    return 0;
}

static int msrs_load(struct vcpu *v, struct vmstate_reader *r, unsigned *refused)
{
    uint32_t n = vmr_u32(r);
    if (!vmr_check(r, n <= (r->len - r->pos) / 12))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t buf[(sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)) / 8 + 1] = {0};
        struct kvm_msrs *one = (struct kvm_msrs *)buf;
        one->nmsrs = 1;
        one->entries[0].index = vmr_u32(r);
        one->entries[0].data = vmr_u64(r);
        if (ioctl(v->fd, KVM_SET_MSRS, one) != 1)
            (*refused)++;
    }
    return r->failed ? -EINVAL : 0;
}

int vcpu_state_load(struct vcpu *v, struct vmstate_reader *r)
{
    static const struct {
        uint32_t tag;
        size_t size;
        unsigned long req;
        const char *name;
    } kinds[] = {
        {VCPU_BLOB_REGS, sizeof(struct kvm_regs), KVM_SET_REGS, "KVM_SET_REGS"},
        {VCPU_BLOB_SREGS, sizeof(struct kvm_sregs), KVM_SET_SREGS, "KVM_SET_SREGS"},
        {VCPU_BLOB_XSAVE, sizeof(struct kvm_xsave), KVM_SET_XSAVE, "KVM_SET_XSAVE"},
        {VCPU_BLOB_FPU, sizeof(struct kvm_fpu), KVM_SET_FPU, "KVM_SET_FPU"},
        {VCPU_BLOB_XCRS, sizeof(struct kvm_xcrs), KVM_SET_XCRS, "KVM_SET_XCRS"},
        {VCPU_BLOB_MSRS, 0, 0, "KVM_SET_MSRS"},
        {VCPU_BLOB_LAPIC, sizeof(struct kvm_lapic_state), KVM_SET_LAPIC, "KVM_SET_LAPIC"},
        {VCPU_BLOB_EVENTS, sizeof(struct kvm_vcpu_events), KVM_SET_VCPU_EVENTS,
         "KVM_SET_VCPU_EVENTS"},
        {VCPU_BLOB_DEBUGREGS, sizeof(struct kvm_debugregs), KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS"},
        {VCPU_BLOB_MP_STATE, sizeof(struct kvm_mp_state), KVM_SET_MP_STATE, "KVM_SET_MP_STATE"},
    };
    unsigned seen = 0, refused = 0;
    while (!r->failed && r->pos < r->len) {
        uint32_t tag = vmr_u32(r), len = vmr_u32(r);
        size_t k = 0;
        while (k < VS_ARRAY_SIZE(kinds) && kinds[k].tag != tag)
            k++;
        if (!vmr_check(r, k < VS_ARRAY_SIZE(kinds) && !(seen & (1u << tag)) &&
                              len <= r->len - r->pos &&
                              (kinds[k].size == 0 || len == kinds[k].size)))
            break;
        seen |= 1u << tag;
        struct vmstate_reader sub;
        vmr_init(&sub, r->p + r->pos, len, r->what);
        r->pos += len;
        if (tag == VCPU_BLOB_MSRS) {
            if (msrs_load(v, &sub, &refused) < 0 || vmr_finish(&sub) < 0)
                return -EINVAL;
            continue;
        }
        /* The kernel structs are copied whole: the file comes from this host's KVM (same
         * struct sizes, checked above), and KVM validates what it is given. */
        void *buf = vs_malloc(len);
        if (!buf)
            return -ENOMEM;
        memcpy(buf, sub.p, len);
        int rc = ioctl(v->fd, kinds[k].req, buf) < 0 ? -errno : 0;
        free(buf);
        if (rc < 0)
            return vs_error_errno(rc, "vCPU %d: %s", v->index, kinds[k].name);
    }
    if (r->failed)
        return -EINVAL;
    uint32_t need = 1u << VCPU_BLOB_REGS | 1u << VCPU_BLOB_SREGS | 1u << VCPU_BLOB_LAPIC |
                    1u << VCPU_BLOB_MSRS | 1u << VCPU_BLOB_MP_STATE;
    if ((seen & need) != need)
        return vs_error(-EINVAL, "%s: registers, LAPIC, MSRs or MP state missing", r->what);
    if (refused)
        vs_warn("vCPU %d: KVM refused %u saved MSRs", v->index, refused);
    return 0;
}

static void format_registers(struct vcpu *v, char *buf, size_t len)
{
    struct kvm_regs r;
    struct kvm_sregs s;
    if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s) < 0) {
        snprintf(buf, len, "(registers unavailable)");
        return;
    }
    snprintf(buf, len,
             "rip=%016llx rsp=%016llx rflags=%08llx rax=%016llx rbx=%016llx rcx=%016llx "
             "rdx=%016llx rsi=%016llx rdi=%016llx rbp=%016llx cs=%04x(base %llx, l=%d db=%d) "
             "ss=%04x cr0=%08llx cr2=%016llx cr3=%016llx cr4=%08llx efer=%llx",
             (unsigned long long)r.rip, (unsigned long long)r.rsp, (unsigned long long)r.rflags,
             (unsigned long long)r.rax, (unsigned long long)r.rbx, (unsigned long long)r.rcx,
             (unsigned long long)r.rdx, (unsigned long long)r.rsi, (unsigned long long)r.rdi,
             (unsigned long long)r.rbp, s.cs.selector, (unsigned long long)s.cs.base, s.cs.l,
             s.cs.db, s.ss.selector, (unsigned long long)s.cr0, (unsigned long long)s.cr2,
             (unsigned long long)s.cr3, (unsigned long long)s.cr4, (unsigned long long)s.efer);
}

static void vcpu_crash(struct vcpu *v, const char *what)
{
    char regs[400], detail[512];
    format_registers(v, regs, sizeof(regs));
    snprintf(detail, sizeof(detail), "vCPU %d: %s: %s", v->index, what, regs);
    machine_request_stop(v->machine, VMM_EXIT_CRASH, 0, detail);
}

/* Handle one exit; false ends this vCPU's loop. */
static bool vcpu_handle_exit(struct vcpu *v)
{
    struct machine *m = v->machine;
    struct kvm_run *run = v->run;
    char what[128];
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        v->exits[EXIT_KIND_IO]++;
        uint8_t *data = (uint8_t *)run + run->io.data_offset;
        bool wr = run->io.direction == KVM_EXIT_IO_OUT;
        for (uint32_t i = 0; i < run->io.count; i++)
            bus_dispatch(&m->pio, run->io.port, data + (size_t)i * run->io.size, run->io.size, wr);
        return true;
    }
    case KVM_EXIT_MMIO:
        v->exits[EXIT_KIND_MMIO]++;
        if (run->mmio.len <= 8)
            bus_dispatch(&m->mmio, run->mmio.phys_addr, run->mmio.data, run->mmio.len,
                         run->mmio.is_write);
        return true;
    case KVM_EXIT_HLT:
        v->exits[EXIT_KIND_HLT]++;
        return true;
    case KVM_EXIT_INTR:
        v->exits[EXIT_KIND_INTR]++;
        return true;
    case KVM_EXIT_SHUTDOWN:
        vcpu_crash(v, "triple fault (KVM_EXIT_SHUTDOWN)");
        return false;
    case KVM_EXIT_INTERNAL_ERROR:
        snprintf(what, sizeof(what), "KVM internal error, suberror %u%s", run->internal.suberror,
                 run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? " (emulation failure)"
                                                                        : "");
        vcpu_crash(v, what);
        return false;
    case KVM_EXIT_FAIL_ENTRY:
        snprintf(what, sizeof(what), "VM entry failed, reason 0x%llx",
                 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        vcpu_crash(v, what);
        return false;
    case KVM_EXIT_SYSTEM_EVENT:
        switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
            machine_request_stop(m, VMM_EXIT_POWEROFF, 0, "system event: shutdown");
            break;
        case KVM_SYSTEM_EVENT_RESET:
            machine_request_stop(m, VMM_EXIT_REBOOT, 0, "system event: reset");
            break;
        default:
            vcpu_crash(v, "system event: crash");
        }
        return false;
    default:
        v->exits[EXIT_KIND_OTHER]++;
        snprintf(what, sizeof(what), "unhandled exit reason %u", run->exit_reason);
        vcpu_crash(v, what);
        return false;
    }
}

#define EXIT_SAMPLE 8 /* one exit in this many is timed (vcpu_thread) */

static void *vcpu_thread(void *arg)
{
    struct vcpu *v = arg;
    struct machine *m = v->machine;
    char name[16];
    snprintf(name, sizeof(name), "vcpu%d", v->index);
    pthread_setname_np(pthread_self(), name);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    /* When KVM_RUN last returned, if this exit is one of the timed ones (0 otherwise, and after a
     * pause): what the VMM spends on exits is sampled, one in EXIT_SAMPLE, so that timing costs an
     * exit ~5 ns on average. With the clock: rdtsc read on this thread around KVM_RUN gave
     * near-zero deltas on a PVM host. */
    uint64_t returned = 0;
    unsigned tick = 0;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        if (m->state == MACHINE_PAUSED) {
            returned = 0;
            /* An exit handled just now (an `in` or MMIO read) completes inside the next KVM_RUN;
             * run once with immediate_exit so the registers a save reads hold its result. */
            pthread_mutex_unlock(&m->lock);
            __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
            if (ioctl(v->fd, KVM_RUN, 0) < 0 && errno != EINTR && errno != EAGAIN)
                vs_warn("vCPU %d: completing the last exit before a pause failed: %s", v->index,
                        strerror(errno));
            __atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
            pthread_mutex_lock(&m->lock);
        }
        if (m->state == MACHINE_PAUSED) {
            m->vcpus_paused++;
            pthread_cond_broadcast(&m->cond);
            while (m->state == MACHINE_PAUSED)
                pthread_cond_wait(&m->cond, &m->lock);
            m->vcpus_paused--;
        }
        bool stop = m->state == MACHINE_STOPPING;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            break;
        if (returned) {
            __atomic_fetch_add(&v->timed_ns, vs_now_ns() - returned, __ATOMIC_RELAXED);
            __atomic_fetch_add(&v->timed, 1, __ATOMIC_RELAXED);
        }
        int rc = ioctl(v->fd, KVM_RUN, 0);
        returned = ++tick % EXIT_SAMPLE == 0 ? vs_now_ns() : 0;
        __atomic_fetch_add(&v->handled, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (rc < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                v->exits[EXIT_KIND_INTR]++;
                continue;
            }
            char what[96];
            snprintf(what, sizeof(what), "KVM_RUN failed: %s", strerror(errno));
            vcpu_crash(v, what);
            break;
        }
        if (!vcpu_handle_exit(v))
            break;
    }
    return NULL;
}

/* ---- machine state --------------------------------------------------------------------------- */

void machine_request_stop(struct machine *m, enum vmm_exit_reason reason, unsigned code,
                          const char *detail)
{
    pthread_mutex_lock(&m->lock);
    if (!m->stop_requested) {
        m->stop_requested = true;
        m->result.reason = reason;
        m->result.exit_code = code;
        snprintf(m->result.detail, sizeof(m->result.detail), "%s", detail ? detail : "");
    }
    m->state = MACHINE_STOPPING;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < m->vcpu_count; i++)
        vcpu_kick(&m->vcpus[i]);
}

static void machine_state_changed(struct machine *m)
{
    if (m->state_fd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(m->state_fd, &one, sizeof(one)); /* EAGAIN: already signalled */
        (void)n;
    }
}

int machine_pause(struct machine *m)
{
    pthread_mutex_lock(&m->lock);
    if (m->state != MACHINE_RUNNING) {
        int st = m->state;
        pthread_mutex_unlock(&m->lock);
        return st == MACHINE_PAUSED ? 0 : vs_error(-EINVAL, "the VM is stopping");
    }
    m->state = MACHINE_PAUSED;
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < m->vcpu_count; i++)
        vcpu_kick(&m->vcpus[i]);
    pthread_mutex_lock(&m->lock);
    while (m->state == MACHINE_PAUSED && m->vcpus_paused < m->vcpu_count)
        pthread_cond_wait(&m->cond, &m->lock);
    pthread_mutex_unlock(&m->lock);
    machine_state_changed(m);
    return 0;
}

int machine_resume(struct machine *m)
{
    pthread_mutex_lock(&m->lock);
    bool resumed = m->state == MACHINE_PAUSED;
    if (resumed) {
        m->state = MACHINE_RUNNING;
        m->pause_reason[0] = 0;
    }
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    for (size_t i = 0; resumed && i < m->device_count; i++)
        if (m->devices[i].resumed)
            m->devices[i].resumed(m->devices[i].state);
    if (resumed)
        machine_state_changed(m);
    return 0;
}

void machine_pause_for(struct machine *m, const char *reason)
{
    pthread_mutex_lock(&m->lock);
    bool said = !strcmp(m->pause_reason, reason);
    bool was_paused = m->state == MACHINE_PAUSED;
    if (m->state != MACHINE_STOPPING)
        snprintf(m->pause_reason, sizeof(m->pause_reason), "%s", reason);
    pthread_mutex_unlock(&m->lock);
    if (!said)
        vs_warn("VM paused: %s", reason);
    machine_pause(m); /* a VM already stopping stays so: nothing to wait for */
    if (was_paused && !said)
        machine_state_changed(m); /* paused already (by the host): the reason is news */
}

void machine_pause_reason(struct machine *m, char *buf, size_t size)
{
    pthread_mutex_lock(&m->lock);
    snprintf(buf, size, "%s", m->pause_reason);
    pthread_mutex_unlock(&m->lock);
}

static int machine_build(struct machine *m, const struct vmm_config *config,
                         struct console *console, struct console *vconsole);

int machine_create(struct machine **out, const struct vmm_config *config, struct console *console,
                   struct console *vconsole, const struct vmstate_file *restore)
{
    struct machine *m = vs_calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->config = config;
    m->kvm_fd = m->vm_fd = m->post_fd = m->state_fd = -1;
    m->start_ns = vs_now_ns();
    m->restore = restore;
    m->vcpu_count = config->cpus ? config->cpus : 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    int rc = bus_init(&m->pio, "port I/O");
    if (rc == 0)
        rc = bus_init(&m->mmio, "MMIO");
    if (rc < 0) {
        free(m);
        return rc;
    }
    rc = machine_build(m, config, console, vconsole);
    if (rc < 0) {
        machine_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int machine_build(struct machine *m, const struct vmm_config *config,
                         struct console *console, struct console *vconsole)
{
    int rc;
    struct sigaction sa = {.sa_handler = kick_handler};
    sigemptyset(&sa.sa_mask);
    sigaction(KICK_SIGNAL, &sa, NULL);

    if (m->vcpu_count > 254) /* xAPIC IDs in the MADT are one byte */
        return vs_error(-EINVAL, "--cpus %u: at most 254 vCPUs", m->vcpu_count);
    if ((rc = kvm_open(m)) < 0 || (rc = vm_setup(m)) < 0) /* kvm_open starts cpuid_setup */
        return rc;
    /* Devices first: boot_load builds ACPI tables and needs the platform fixed. */
    if ((rc = serial_create(m, console)) < 0 || (rc = pm_create(m)) < 0 ||
        (rc = i8042_create(m)) < 0 || (rc = rtc_create(m)) < 0 || (rc = pci_create(m)) < 0)
        return rc;
    for (size_t i = 0; i < config->disk_count; i++) {
        if ((rc = virtio_blk_create(m, &config->disks[i])) < 0)
            return rc;
        uint64_t size = virtio_blk_disk_size(m, i);
        if (m->restore && size != m->restore->cfg.disk_sizes[i])
            return vs_error(-EINVAL, "%s: size changed since the save (%llu bytes, was %llu)",
                            config->disks[i].path, (unsigned long long)size,
                            (unsigned long long)m->restore->cfg.disk_sizes[i]);
    }
    for (size_t i = 0; i < config->net_count; i++)
        if ((rc = virtio_net_create(m, &config->nets[i])) < 0)
            return rc;
    if (config->rng && (rc = virtio_rng_create(m)) < 0)
        return rc;
    if (config->balloon && (rc = virtio_balloon_create(m)) < 0)
        return rc;
    if (vconsole && (rc = virtio_console_create(m, vconsole)) < 0)
        return rc;
    if ((!m->restore && (rc = boot_load(m)) < 0) || (rc = machine_vm_ready(m)) < 0)
        return rc;
    for (unsigned i = 0; i < m->vcpu_count; i++)
        if ((rc = vcpu_setup(m, &m->vcpus[i])) < 0)
            return rc;
    return 0;
}

int machine_run(struct machine *m, struct vmm_result *result)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, KICK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &set, &old); /* only vCPU threads take kicks */
    int rc = 0;
    for (unsigned i = 0; i < m->vcpu_count; i++) {
        struct vcpu *v = &m->vcpus[i];
        int e = pthread_create(&v->thread, NULL, vcpu_thread, v);
        if (e) {
            rc = vs_error(-e, "vCPU %u: cannot start thread", i);
            machine_request_stop(m, VMM_EXIT_CRASH, 0, "thread creation failed");
            break;
        }
        v->thread_started = true;
        pthread_getcpuclockid(v->thread, &v->cpu_clock);
    }
    pthread_mutex_lock(&m->lock);
    while (!m->stop_requested)
        pthread_cond_wait(&m->cond, &m->lock);
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < m->vcpu_count; i++)
        vcpu_kick(&m->vcpus[i]);
    for (unsigned i = 0; i < m->vcpu_count; i++) {
        if (m->vcpus[i].thread_started) {
            pthread_join(m->vcpus[i].thread, NULL);
            m->vcpus[i].thread_started = false;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    *result = m->result;
    return rc;
}

void machine_destroy(struct machine *m)
{
    if (!m)
        return;
    machine_vm_ready(m); /* a failed build may leave the setup thread running */
    /* Devices go first: their worker threads touch guest memory. */
    for (size_t i = m->device_count; i-- > 0;)
        if (m->devices[i].destroy)
            m->devices[i].destroy(m->devices[i].state);
    free(m->devices);
    if (m->vcpus) {
        for (unsigned i = 0; i < m->vcpu_count; i++) {
            if (m->vcpus[i].run)
                munmap(m->vcpus[i].run, m->run_size);
            if (m->vcpus[i].fd >= 0)
                close(m->vcpus[i].fd);
        }
        free(m->vcpus);
    }
    free(m->cpuid);
    if (m->vm_fd >= 0)
        close(m->vm_fd);
    if (m->post_fd >= 0)
        close(m->post_fd);
    if (m->kvm_fd >= 0)
        close(m->kvm_fd);
    if (m->mmap_base)
        munmap(m->mmap_base, m->mmap_size);
    bus_destroy(&m->pio);
    bus_destroy(&m->mmio);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
    free(m);
}

static uint64_t clock_ns(clockid_t c)
{
    struct timespec ts;
    if (clock_gettime(c, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The sampled exits' time, scaled to all of them. */
static uint64_t vcpu_exit_handling_ns(struct vcpu *v)
{
    uint64_t timed = __atomic_load_n(&v->timed, __ATOMIC_RELAXED);
    uint64_t ns = __atomic_load_n(&v->timed_ns, __ATOMIC_RELAXED);
    uint64_t all = __atomic_load_n(&v->handled, __ATOMIC_RELAXED);
    return timed ? (uint64_t)((double)ns * (double)all / (double)timed) : 0;
}

uint64_t machine_exit_handling(struct machine *m, uint64_t *ns)
{
    uint64_t n = 0;
    *ns = 0;
    for (unsigned i = 0; m->vcpus && i < m->vcpu_count; i++) {
        n += __atomic_load_n(&m->vcpus[i].handled, __ATOMIC_RELAXED);
        *ns += vcpu_exit_handling_ns(&m->vcpus[i]);
    }
    return n;
}

void *machine_stats_json(struct machine *m)
{
    static const char *const kinds[EXIT_KIND_COUNT] = {"io", "mmio", "hlt", "intr", "other"};
    json_object *root = json_object_new_object();
    json_object *cpus = json_object_new_array();
    uint64_t total[EXIT_KIND_COUNT] = {0};
    for (unsigned i = 0; i < m->vcpu_count; i++) {
        struct vcpu *v = &m->vcpus[i];
        json_object *c = json_object_new_object();
        json_object_object_add(c, "index", json_object_new_int((int)i));
        uint64_t ns = v->thread_started ? clock_ns(v->cpu_clock) : 0;
        json_object_object_add(c, "cpu_time_ns", json_object_new_int64((int64_t)ns));
        json_object *ex = json_object_new_object();
        for (int k = 0; k < EXIT_KIND_COUNT; k++) {
            uint64_t n = v->exits[k];
            total[k] += n;
            json_object_object_add(ex, kinds[k], json_object_new_int64((int64_t)n));
        }
        json_object_object_add(c, "exits", ex);
        json_object_object_add(c, "exit_handling_ns",
                               json_object_new_int64((int64_t)vcpu_exit_handling_ns(v)));
        json_object_array_add(cpus, c);
    }
    json_object_object_add(root, "vcpus", cpus);
    json_object *ex = json_object_new_object();
    for (int k = 0; k < EXIT_KIND_COUNT; k++)
        json_object_object_add(ex, kinds[k], json_object_new_int64((int64_t)total[k]));
    json_object_object_add(root, "exits", ex);
    json_object *devs = json_object_new_object();
    for (size_t i = 0; i < m->device_count; i++)
        if (m->devices[i].stats)
            m->devices[i].stats(m->devices[i].state, devs);
    json_object_object_add(root, "devices", devs);
    return root;
}
