/*
 * vessel/vmm.h — the hypervisor: run one x86-64 virtual machine on Linux KVM.
 *
 * A caller fills a struct vmm_config (kernel, memory, vCPUs, disks, console, API socket), creates
 * the VM and runs it until the guest powers off, asks for a reboot or crashes. The idea that keeps
 * it small: the VMM is a bus of devices. Every port-I/O and MMIO exit of a vCPU is looked up in a
 * range table and handed to the one device that owns the range; devices own their state, their
 * locks and their worker threads, and the vCPU loop knows nothing about any of them.
 *
 * Errors: negative errno with a one-line message in vs_error_message() naming the file, field or
 * register at fault.
 */
#ifndef VESSEL_VMM_H
#define VESSEL_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vessel/util.h"

struct vmm;

/* One --disk: an image of any format the image engine reads. */
struct vmm_disk_config {
    const char *path;
    const char *format; /* NULL probes */
    bool readonly;
    uint64_t iops; /* requests per second, 0 = unlimited */
    uint64_t bps;  /* data bytes per second, 0 = unlimited */
};

/* One --net: a virtio-net NIC on an existing or new tap interface. */
struct vmm_net_config {
    const char *tap; /* interface name (created when absent, if we may) */
    uint8_t mac[6];
    bool mac_set; /* else a locally administered MAC derived from the tap name */
};

/* How --kernel is entered. AUTO: an ELF with a PVH note (or a bzImage whose payload is one) through
 * PVH; another ELF, or a bzImage whose payload decompresses on the host to one, through the zero
 * page and its 64-bit startup_64 (VMLINUX); else the bzImage's own 64-bit boot protocol
 * (BZIMAGE: the guest decompresses itself). The values are kept in state files. */
enum vmm_boot_path {
    VMM_BOOT_AUTO = 0,
    VMM_BOOT_BZIMAGE = 1,
    VMM_BOOT_PVH = 2,
    VMM_BOOT_VMLINUX = 3,
};

struct vmm_config {
    const char *kernel;  /* bzImage or PVH ELF (vmlinux, the probe guest) */
    const char *initrd;  /* optional */
    const char *cmdline; /* optional */
    /* Who the VM is (optional, ≤ 128 bytes each): shown by status, kept in a state file so a moved
     * file still says which VM it holds (vesseld passes its name and uuid). */
    const char *name;
    const char *uuid;
#define VMM_IDENTITY_MAX 128
    unsigned cpus;   /* >= 1 */
    uint64_t memory; /* bytes, >= 16 MiB */
    bool hugepages;  /* back guest memory with MAP_HUGETLB (2 MiB) pages */
    /* stdio | file:PATH | pty | unix:PATH | none. NULL = stdio. */
    const char *console;
    const char *api; /* unix:PATH for the JSON control socket, or NULL */
    /* Comma-separated CPUID feature names to hide from the guest ("xsave,avx,cx16"). */
    const char *cpuid_mask;
    enum vmm_boot_path boot_path; /* how a kernel is entered (VMM_BOOT_AUTO: the fastest) */
    bool restart_on_reboot;       /* guest reboot rebuilds the machine instead of returning */
    struct vmm_disk_config *disks;
    size_t disk_count;
    struct vmm_net_config *nets;
    size_t net_count;
    bool rng;     /* attach virtio-rng (host getrandom) */
    bool balloon; /* attach virtio-balloon (inflate, deflate, stats) */
    /* virtio-console backend (stdio | file:PATH | pty | unix:PATH), NULL = no virtio console. */
    const char *vconsole;
};

/* Why vmm_run returned. vessel-vmm turns these into its documented exit codes. */
enum vmm_exit_reason {
    VMM_EXIT_POWEROFF = 0, /* ACPI S5, API poweroff */
    VMM_EXIT_REBOOT,       /* guest asked for a reset (i8042, 0xcf9, ACPI reset, API reset) */
    VMM_EXIT_CRASH,        /* triple fault, KVM internal error, unhandled fatal exit */
    VMM_EXIT_DEBUG,        /* isa-debug-exit port written: exit_code holds the value */
    VMM_EXIT_SAVED,        /* vmm_save wrote the VM to a state file and stopped it */
};

struct vmm_result {
    enum vmm_exit_reason reason;
    unsigned exit_code; /* VMM_EXIT_DEBUG: the byte written to port 0xf4 */
    char detail[512];   /* crash: registers and the exit that killed the guest */
};

/* Build the machine: open /dev/kvm, create the VM, load the kernel, attach devices. */
int vmm_create(struct vmm **out, const struct vmm_config *config);
/* Run until the guest stops; fills *result. Returns 0 or -errno on a VMM-side failure. */
int vmm_run(struct vmm *vmm, struct vmm_result *result);
void vmm_destroy(struct vmm *vmm);

/* Things the host can ask of a running VM (the control API, signals). Thread-safe. */
enum vmm_request {
    VMM_REQUEST_PAUSE,
    VMM_REQUEST_RESUME,
    VMM_REQUEST_POWERBUTTON, /* ACPI power button: the guest decides to shut down */
    VMM_REQUEST_POWEROFF,    /* pull the plug: vmm_run returns VMM_EXIT_POWEROFF */
    VMM_REQUEST_RESET,       /* hard reset: rebuilt, or VMM_EXIT_REBOOT without restart */
    VMM_REQUEST_CTRL_ALT_DEL,
};
int vmm_request(struct vmm *vmm, enum vmm_request request);
/* Ask the guest's balloon driver to hold PAGES 4 KiB pages (virtio-balloon num_pages).
 * -ENODEV when the VM has no balloon. */
int vmm_balloon_set_target(struct vmm *vmm, uint64_t pages);
/* Save the running VM to PATH (like `xm save`): pause the vCPUs, park every device, write the
 * state file (lib/vmm/vmstate.h, docs/vessel-vmm.md); then vmm_run returns VMM_EXIT_SAVED. On an
 * error the VM keeps running and nothing is left at PATH. Thread-safe. */
int vmm_save(struct vmm *vmm, const char *path);

/* Host-side choices of a restored VM; the machine itself comes from the file. */
struct vmm_restore_options {
    const char *console;  /* NULL = stdio */
    const char *api;      /* NULL = no control socket */
    const char *vconsole; /* NULL = the backend the saved VM had */
};
/* Rebuild the VM saved in PATH (same devices, same disks reopened), load its state; vmm_run then
 * resumes it where it stopped. Errors are one line (bad file, missing or resized disk, …). */
int vmm_restore(struct vmm **out, const char *path, const struct vmm_restore_options *options);
/* What a state file says of itself: the VM's name and uuid as given to the VMM ("" when it had
 * none, or the file predates them) and the save's own random id. */
struct vmm_state_identity {
    char name[VMM_IDENTITY_MAX + 1];
    char uuid[VMM_IDENTITY_MAX + 1];
    char save_id[33];
};
/* Read it, checking the file as a restore would (header, sections, size). 0 or -errno with one
 * line. */
int vmm_state_file_identity(const char *path, struct vmm_state_identity *id);

/* "running", "paused", "stopping" */
const char *vmm_state_name(struct vmm *vmm);
/* The boot path taken ("PVH fast path: lz4 payload …"). */
const char *vmm_boot_description(struct vmm *vmm);
/* Why the VMM paused the VM by itself (a full host disk: free space, then resume), or "". */
void vmm_pause_reason(struct vmm *vmm, char *buf, size_t size);

/* Milliseconds from vmm_create's start to the guest's first serial byte (0 = none yet). */
double vmm_first_output_ms(const struct vmm *vmm);
/* Exits KVM_RUN returned to the VMM for since the VM was created (across reboots), and in *NS the
 * time the vCPU threads spent on them before entering KVM_RUN again: the VMM's own share of the
 * round trips (the rest is KVM's). */
uint64_t vmm_exit_handling(const struct vmm *vmm, uint64_t *ns);

/* ---- host facts (lib/vmm/hostinfo.c) --------------------------------------------------------- */

enum vmm_kvm_kind {
    VMM_KVM_NONE = 0, /* no usable /dev/kvm */
    VMM_KVM_HARDWARE, /* kvm_intel / kvm_amd on bare metal */
    VMM_KVM_NESTED,   /* kvm_intel / kvm_amd inside a VM (hypervisor CPUID bit) */
    VMM_KVM_PVM,      /* kvm_pvm: guest ring 0 is emulated in software */
    VMM_KVM_UNKNOWN,  /* /dev/kvm works but no known module explains it */
};

struct vmm_host_info {
    char cpu_vendor[16];
    char cpu_model[80];
    bool vmx, svm, hypervisor; /* CPU flags seen by the host */
    bool kvm_present;          /* /dev/kvm exists */
    bool kvm_usable;           /* opened and API version 12 */
    char kvm_problem[160];     /* why not usable */
    int kvm_api_version;
    enum vmm_kvm_kind kvm_kind;
    char kvm_module[16]; /* kvm_intel, kvm_amd, kvm_pvm, "" */
    bool nested_enabled; /* kvm_intel/kvm_amd nested=Y */
    int max_vcpus;       /* KVM_CAP_MAX_VCPUS (0 = unknown) */
    int recommended_vcpus;
    uint64_t mem_total, mem_available; /* bytes */
    unsigned host_cpus;
    bool tun;           /* /dev/net/tun usable */
    int cgroup_version; /* 1, 2, 0 = none */
    bool hugepages_available;
};

const char *vmm_kvm_kind_name(enum vmm_kvm_kind kind);
/* Never fails: facts that can't be read stay zero / false. */
void vmm_host_info(struct vmm_host_info *info);
/* Cheap check (one access(2)) for the kvm_pvm module: guest ring 0 is emulated here. */
bool vmm_host_is_pvm(void);

#endif
