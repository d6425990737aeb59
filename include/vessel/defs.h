/*
 * vessel/defs.h — VM definitions: the struct every part of vessel agrees on, its plain-text format
 * (parse with line-numbered errors, validate, print canonically), imports of foreign definitions
 * (Xen xl/xm cfg, VMware .vmx, libvirt domain XML) and export to libvirt domain XML.
 *
 * The idea: one struct, many spellings. Every reader fills a struct vm_def and remembers the source
 * line of each field, so one validator serves the native format and every import alike and its
 * messages point at the line the user has to fix. The printer writes the one canonical spelling, so
 * print(parse(print(d))) == print(d) and definitions diff cleanly.
 */
#ifndef VESSEL_DEFS_H
#define VESSEL_DEFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VM_DEF_MAX_VCPUS  1024
#define VM_DEF_MIN_MEMORY (1ULL << 20)  /* 1 MiB */
#define VM_DEF_MAX_MEMORY (16ULL << 40) /* 16 TiB */
#define VM_DEF_NAME_MAX   64

enum vm_action { VM_ACTION_DESTROY, VM_ACTION_RESTART, VM_ACTION_PRESERVE };
enum vm_autostart { VM_AUTOSTART_NEVER, VM_AUTOSTART_ALWAYS, VM_AUTOSTART_WAS_RUNNING };
enum vm_disk_bus { VM_DISK_BUS_VIRTIO, VM_DISK_BUS_IDE, VM_DISK_BUS_SCSI, VM_DISK_BUS_SATA };
enum vm_disk_media { VM_DISK_MEDIA_DISK, VM_DISK_MEDIA_CDROM };
enum vm_nic_model { VM_NIC_MODEL_VIRTIO, VM_NIC_MODEL_E1000, VM_NIC_MODEL_RTL8139 };
enum vm_boot_from { VM_BOOT_FROM_KERNEL, VM_BOOT_FROM_DISK, VM_BOOT_FROM_CDROM };
enum vm_console { VM_CONSOLE_PTY, VM_CONSOLE_NONE, VM_CONSOLE_FILE, VM_CONSOLE_UNIX };

/* Line numbers are 1-based positions in the source text; 0 means "not from a line". */
struct vm_disk {
    char *file;   /* image file or block device */
    char *format; /* raw, qcow2, vmdk, vhd, vhdx, vdi; NULL = probe at open */
    char *target; /* guest device name (vda, hda, sdb); NULL = assigned in order */
    enum vm_disk_bus bus;
    enum vm_disk_media media;
    bool readonly;
    bool undo;          /* writes go to an overlay that is discarded (or committed) at shutdown */
    uint64_t iops, bps; /* I/O limits: requests and data bytes per second, 0 = none */
    int line;           /* the [disk] line */
    int file_line, target_line;
};

struct vm_nic {
    char *network; /* a vessel network name; exactly one of network/bridge is set */
    char *bridge;  /* a host bridge */
    char mac[18];  /* "52:54:00:12:34:56", lower case */
    enum vm_nic_model model;
    unsigned rate_mbit; /* 0 = unlimited; both directions (network NICs only) */
    int line, mac_line, rate_line;
};

struct vm_def {
    char *source; /* file name used in messages ("web1.vm"); may be NULL */
    char *name;
    char uuid[37]; /* lower-case 8-4-4-4-12 */
    unsigned vcpus;
    uint64_t memory; /* bytes */
    struct vm_disk *disks;
    size_t disk_count;
    struct vm_nic *nics;
    size_t nic_count;
    enum vm_boot_from boot_from;
    char *kernel, *initrd; /* boot_from == KERNEL */
    char *cmdline;         /* KERNEL: the command line; DISK: appended to the entry's */
    char *boot_entry;      /* DISK: the menu entry (title, index, Submenu>Entry), NULL = default */
    enum vm_console console;
    char *console_path; /* FILE and UNIX consoles */
    enum vm_action on_poweroff, on_reboot, on_crash;
    enum vm_autostart autostart;
    unsigned autostart_delay; /* seconds */
    unsigned cpu_weight;      /* relative share, 1..65535, default 256 */
    unsigned cpu_cap;         /* percent of one host CPU, 0 = no cap */
    char *cpu_affinity;       /* host CPUs the VM may run on, canonical ("0-3,6"); NULL = any */
    /* where each top-level key was (0 when absent) */
    int name_line, uuid_line, vcpus_line, memory_line, kernel_line, from_line, cpu_cap_line;
};

enum vm_def_format {
    VM_DEF_FORMAT_AUTO,
    VM_DEF_FORMAT_VESSEL,
    VM_DEF_FORMAT_XL, /* Xen xl.cfg and xm cfg */
    VM_DEF_FORMAT_VMX,
    VM_DEF_FORMAT_LIBVIRT,
};

/* A definition with every default set and no name, memory, disk or NIC. NULL on no memory. */
struct vm_def *vm_def_new(void);
void vm_def_free(struct vm_def *def);

/*
 * Parse the vessel text format and validate it. 'source' names the text in messages. A missing
 * uuid or NIC mac is generated. 0, or a negative errno with one message:
 * "web1.vm: line 7: memory: '12Q' is not a size".
 */
int vm_def_parse(const char *text, size_t len, const char *source, struct vm_def **out);
int vm_def_parse_file(const char *path, struct vm_def **out);

/* Cross-field checks (required keys, duplicate MACs and targets, limits); parse and the imports
 * call it. Fills in a missing uuid and missing MACs. 0 or -EINVAL. */
int vm_def_validate(struct vm_def *def);

/* Every disk's file exists (the daemon checks at define time, not the parser). 0 or -ENOENT. */
int vm_def_check_disks(const struct vm_def *def);

/* The canonical text (malloc'd, NUL-terminated), or NULL with the error set. */
char *vm_def_print(const struct vm_def *def);

/* Field-by-field equality (source and line numbers are ignored). */
bool vm_def_equal(const struct vm_def *a, const struct vm_def *b);

/* Imports. Unsupported keys are reported with vs_warn; malformed input is an error naming the
 * source line. The result is validated. */
int vm_def_import_xl(const char *text, size_t len, const char *source, struct vm_def **out);
int vm_def_import_vmx(const char *text, size_t len, const char *source, struct vm_def **out);
int vm_def_import_libvirt(const char *text, size_t len, const char *source, struct vm_def **out);
/* Any of the above; AUTO guesses from the name's extension, then from the content. */
int vm_def_import(const char *text, size_t len, const char *source, enum vm_def_format format,
                  struct vm_def **out);
int vm_def_import_file(const char *path, enum vm_def_format format, struct vm_def **out);
/* "vessel", "xl", "vmx", "libvirt", "auto" -> format; -EINVAL otherwise. */
int vm_def_format_from_name(const char *name, enum vm_def_format *out);

/* libvirt domain XML (malloc'd), accepted by `virt-xml-validate FILE domain`. */
char *vm_def_to_libvirt(const struct vm_def *def);

/* Enum spellings as the text format writes them. */
const char *vm_action_name(enum vm_action a);
const char *vm_autostart_name(enum vm_autostart a);
const char *vm_disk_bus_name(enum vm_disk_bus b);
/* A host CPU list ("0-3,6", ranges and single CPUs, each < VM_CPU_LIST_MAX): 0 with the CPUs as
 * bits of SET (VM_CPU_LIST_MAX / 64 words) and, when CANONICAL is given, the list rewritten in
 * order with ranges merged (malloc'd); -EINVAL with a message naming the bad part otherwise. */
#define VM_CPU_LIST_MAX 1024
int vm_cpu_list_parse(const char *text, uint64_t set[VM_CPU_LIST_MAX / 64], char **canonical);
const char *vm_nic_model_name(enum vm_nic_model m);

/* Helpers the importers share (also useful to the daemon's clone). */
int vm_def_add_disk(struct vm_def *def, struct vm_disk **out); /* zeroed, defaults set */
int vm_def_add_nic(struct vm_def *def, struct vm_nic **out);
int vm_def_set_string(char **field, const char *value); /* replaces, NULL clears */
/* cpu_affinity from a CPU list (vm_cpu_list_parse), kept canonical; -EINVAL with its message. */
int vm_def_set_cpu_affinity(struct vm_def *def, const char *list);
/* Normalise a MAC ("00:16:3E:2b:11:83" -> lower case) into out[18]; -EINVAL if malformed. */
int vm_mac_parse(const char *text, char out[18]);
void vm_mac_generate(char out[18]); /* 52:54:00:xx:xx:xx */
/* A network rate ("8", "8Mb/s", "8mbit", "500Kb/s", "1MB/s" = bytes, "1Gb/s") in whole Mbit/s,
 * rounded up; no unit = Mbit/s. -EINVAL malformed or zero, -ERANGE above 100 Gbit/s. */
int vm_rate_parse(const char *text, unsigned *mbit);
void vm_uuid_generate(char out[37]);
/* Accepts 32 hex digits with any '-' or ' ' separators; writes canonical lower-case form. */
int vm_uuid_parse(const char *text, char out[37]);

#endif
