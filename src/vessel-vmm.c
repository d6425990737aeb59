/*
 * src/vessel-vmm.c — run one VM by hand: parse the flags into a struct vmm_config, create the VM,
 * run it, turn the way it ended into an exit code.
 *
 * Exit codes (docs/vessel-vmm.md):
 *   0            the guest powered off (ACPI S5, or poweroff over the API / SIGTERM)
 *   1            usage or setup error (bad flag, unreadable kernel, no /dev/kvm, …)
 *   2            the guest asked for a reboot and --no-reboot was given
 *   3            the guest crashed (triple fault, KVM internal error); registers on stderr
 *   4            the VMM failed while running
 *   5            the VM was saved to a state file (API "save") and stopped
 *   16 + (v&63)  the guest wrote v to the isa-debug-exit port 0xf4
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"
#include "vessel/vmm.h"

enum {
    EXIT_POWEROFF = 0,
    EXIT_SETUP = 1,
    EXIT_REBOOT = 2,
    EXIT_CRASH = 3,
    EXIT_VMM = 4,
    EXIT_SAVED = 5,
    EXIT_DEBUG_BASE = 16,
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: vessel-vmm --kernel FILE [options]\n"
            "       vessel-vmm --boot disk --disk FILE [options]\n"
            "       vessel-vmm --restore FILE [--console …] [--vconsole …] [--api …] [-v]\n"
            "  --kernel FILE        bzImage or PVH ELF (vmlinux, the probe guest)\n"
            "  --boot disk          take kernel, initrd and command line from the first disk's\n"
            "                       boot config (grub.cfg, menu.lst, extlinux.conf)\n"
            "  --boot-entry NAME    with --boot disk: this entry instead of the default\n"
            "  --initrd FILE        initial ramdisk\n"
            "  --cmdline STR        kernel command line\n"
            "  --cpus N             vCPUs (default 1)\n"
            "  --memory SIZE        guest RAM: 512 (MiB), 2G, … (default 256M)\n"
            "  --disk FILE[,format=FMT][,readonly][,iops=N][,bps=SIZE]   virtio-blk disk\n"
            "                       (repeatable); iops/bps: requests and bytes per second\n"
            "  --net tap=NAME[,mac=MAC]   virtio-net NIC on tap NAME (repeatable)\n"
            "  --rng                virtio-rng (entropy from the host's getrandom)\n"
            "  --balloon            virtio-balloon (target via the API \"balloon\" command)\n"
            "  --vconsole stdio|file:PATH|pty|unix:PATH   virtio-console (one port)\n"
            "  --console stdio|file:PATH|pty|unix:PATH|none   serial console (default stdio)\n"
            "  --api unix:PATH      JSON control socket\n"
            "  --cpuid-mask LIST    hide CPU features from the guest (xsave,avx,cx16,…)\n"
            "  --hugepages          back guest RAM with 2 MiB huge pages\n"
            "  --no-reboot          exit with code 2 when the guest reboots\n"
            "  --boot-path auto|pvh|vmlinux|bzimage   how the kernel is entered (default auto:\n"
            "                       PVH when it has the note, else the zero page and startup_64\n"
            "                       of the payload decompressed on the host, else the bzImage's\n"
            "                       own boot protocol)\n"
            "  --no-pvh             the same as --boot-path bzimage\n"
            "  --restore FILE       resume a VM saved with the API \"save\" command\n"
            "  --name NAME, --uuid UUID   who the VM is: shown by the API's status, kept in\n"
            "                       state files (vesseld finds a moved state file's VM by them)\n"
            "  -v, --verbose        print the boot path and timings on stderr\n"
            "exit codes: 0 poweroff, 1 usage/setup error, 2 reboot (--no-reboot), 3 guest crash,\n"
            "            4 VMM failure, 5 saved (API \"save\"), 16+N isa-debug-exit value N\n"
            "environment: VESSEL_CPUID_CACHE=PATH|off  the cache of KVM's CPUID table (default\n"
            "            /run/vessel/cpuid.cache for root, else "
            "$XDG_RUNTIME_DIR/vessel-cpuid.cache)\n");
}

static int parse_disk(const char *arg, struct vmm_disk_config *disk)
{
    char *copy = vs_strdup(arg);
    if (!copy)
        return -ENOMEM;
    char *save = NULL;
    char *path = strtok_r(copy, ",", &save);
    memset(disk, 0, sizeof(*disk));
    if (!path || !*path) {
        free(copy);
        return vs_error(-EINVAL, "--disk '%s': no file name", arg);
    }
    disk->path = vs_strdup(path);
    for (char *opt = strtok_r(NULL, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
        if (strncmp(opt, "format=", 7) == 0) {
            disk->format = vs_strdup(opt + 7);
        } else if (strcmp(opt, "readonly") == 0 || strcmp(opt, "readonly=on") == 0 ||
                   strcmp(opt, "ro") == 0) {
            disk->readonly = true;
        } else if (strncmp(opt, "iops=", 5) == 0 || strncmp(opt, "bps=", 4) == 0) {
            bool iops = opt[0] == 'i';
            uint64_t v = 0;
            char *end = NULL;
            int rc = 0;
            if (iops) {
                errno = 0;
                v = strtoull(opt + 5, &end, 10);
                rc = errno || end == opt + 5 || *end || opt[5] == '-' ? -EINVAL : 0;
            } else {
                rc = vs_parse_size(opt + 4, &v);
            }
            if (rc < 0 || v == 0) {
                rc = vs_error(-EINVAL, "--disk '%s': %s wants a positive %s", arg,
                              iops ? "iops" : "bps", iops ? "number" : "size per second");
                free(copy);
                return rc;
            }
            *(iops ? &disk->iops : &disk->bps) = v;
        } else {
            int rc = vs_error(-EINVAL,
                              "--disk '%s': unknown option '%s' (format=FMT, readonly, iops=N, "
                              "bps=SIZE)",
                              arg, opt);
            free(copy);
            return rc;
        }
    }
    free(copy);
    return 0;
}

static int parse_net(const char *arg, struct vmm_net_config *net)
{
    char *copy = vs_strdup(arg);
    if (!copy)
        return -ENOMEM;
    char *save = NULL;
    int rc = 0;
    memset(net, 0, sizeof(*net));
    for (char *opt = strtok_r(copy, ",", &save); opt && rc == 0; opt = strtok_r(NULL, ",", &save)) {
        if (strncmp(opt, "tap=", 4) == 0 && opt[4]) {
            free((char *)net->tap);
            net->tap = vs_strdup(opt + 4);
        } else if (strncmp(opt, "mac=", 4) == 0) {
            unsigned b[6];
            char end;
            if (sscanf(opt + 4, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4],
                       &b[5], &end) != 6 ||
                (b[0] & 1))
                rc = vs_error(-EINVAL,
                              "--net '%s': mac '%s' is not a unicast MAC like "
                              "52:54:00:12:34:56",
                              arg, opt + 4);
            for (int i = 0; i < 6; i++)
                net->mac[i] = (uint8_t)b[i];
            net->mac_set = true;
        } else {
            rc = vs_error(-EINVAL, "--net '%s': unknown option '%s' (tap=NAME, mac=MAC)", arg, opt);
        }
    }
    if (rc == 0 && !net->tap)
        rc = vs_error(-EINVAL,
                      "--net '%s': tap=NAME is required (the tap interface to attach; "
                      "created when absent)",
                      arg);
    free(copy);
    return rc;
}

/* The parsed configuration; freed at exit whichever way main returns. */
static struct vmm_config cfg = {.cpus = 1, .memory = 256ULL << 20, .restart_on_reboot = true};

/* --boot disk: the kernel and initrd copied out of the disk. */
static struct guestfs_bootload bootload = {.kernel_fd = -1, .initrd_fd = -1};

static void config_free(void)
{
    guestfs_bootload_free(&bootload);
    for (size_t i = 0; i < cfg.disk_count; i++) {
        free((char *)cfg.disks[i].path);
        free((char *)cfg.disks[i].format);
    }
    free(cfg.disks);
    for (size_t i = 0; i < cfg.net_count; i++)
        free((char *)cfg.nets[i].tap);
    free(cfg.nets);
}

static struct vmm *the_vmm;

static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0)
            continue;
        if (the_vmm)
            vmm_request(the_vmm, VMM_REQUEST_POWEROFF);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    /* clang-format off */
    static const struct option options[] = {
        {"kernel", required_argument, NULL, 'k'},  {"initrd", required_argument, NULL, 'i'},
        {"cmdline", required_argument, NULL, 'c'}, {"cpus", required_argument, NULL, 'n'},
        {"memory", required_argument, NULL, 'm'},  {"disk", required_argument, NULL, 'd'},
        {"net", required_argument, NULL, 'N'},     {"console", required_argument, NULL, 'C'},
        {"api", required_argument, NULL, 'a'},     {"cpuid-mask", required_argument, NULL, 'M'},
        {"hugepages", no_argument, NULL, 'H'},     {"no-reboot", no_argument, NULL, 'R'},
        {"no-pvh", no_argument, NULL, 'P'},        {"verbose", no_argument, NULL, 'v'},
        {"rng", no_argument, NULL, 'r'},           {"balloon", no_argument, NULL, 'B'},
        {"boot", required_argument, NULL, 'b'},    {"boot-entry", required_argument, NULL, 'e'},
        {"help", no_argument, NULL, 'h'},          {"vconsole", required_argument, NULL, 'V'},
        {"restore", required_argument, NULL, 'S'}, {"boot-path", required_argument, NULL, 'p'},
        {"name", required_argument, NULL, 'x'},    {"uuid", required_argument, NULL, 'u'},
        {NULL, 0, NULL, 0},
    };
    /* clang-format on */
    atexit(config_free);
    bool verbose = false;
    bool boot_disk = false;
    const char *boot_entry = NULL;
    const char *restore = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
        switch (opt) {
        case 'k':
            cfg.kernel = optarg;
            break;
        case 'i':
            cfg.initrd = optarg;
            break;
        case 'c':
            cfg.cmdline = optarg;
            break;
        case 'n': {
            char *end;
            unsigned long n = strtoul(optarg, &end, 10);
            if (*end || n == 0 || n > 254) {
                fprintf(stderr, "vessel-vmm: --cpus '%s': expected 1..254\n", optarg);
                return EXIT_SETUP;
            }
            cfg.cpus = (unsigned)n;
            break;
        }
        case 'm': {
            uint64_t size;
            char *end;
            strtoull(optarg, &end, 10);
            if (end != optarg && *end == '\0') {
                size = strtoull(optarg, NULL, 10) << 20; /* bare number: MiB, like QEMU */
            } else if (vs_parse_size(optarg, &size) < 0) {
                fprintf(stderr, "vessel-vmm: --memory: %s\n", vs_error_message());
                return EXIT_SETUP;
            }
            cfg.memory = size;
            break;
        }
        case 'd': {
            struct vmm_disk_config *d =
                realloc(cfg.disks, (cfg.disk_count + 1) * sizeof(*cfg.disks));
            if (!d)
                return EXIT_SETUP;
            cfg.disks = d;
            if (parse_disk(optarg, &cfg.disks[cfg.disk_count++]) < 0) { /* counted: freed at exit */
                fprintf(stderr, "vessel-vmm: %s\n", vs_error_message());
                return EXIT_SETUP;
            }
            break;
        }
        case 'N': {
            struct vmm_net_config *nv = realloc(cfg.nets, (cfg.net_count + 1) * sizeof(*cfg.nets));
            if (!nv)
                return EXIT_SETUP;
            cfg.nets = nv;
            if (parse_net(optarg, &cfg.nets[cfg.net_count++]) < 0) { /* counted: freed at exit */
                fprintf(stderr, "vessel-vmm: %s\n", vs_error_message());
                return EXIT_SETUP;
            }
            break;
        }
        case 'r':
            cfg.rng = true;
            break;
        case 'B':
            cfg.balloon = true;
            break;
        case 'V':
            cfg.vconsole = optarg;
            break;
        case 'C':
            cfg.console = optarg;
            break;
        case 'a':
            cfg.api = optarg;
            break;
        case 'M':
            cfg.cpuid_mask = optarg;
            break;
        case 'H':
            cfg.hugepages = true;
            break;
        case 'R':
            cfg.restart_on_reboot = false;
            break;
        case 'P':
            cfg.boot_path = VMM_BOOT_BZIMAGE;
            break;
        case 'p': {
            static const char *const paths[] = {[VMM_BOOT_AUTO] = "auto",
                                                [VMM_BOOT_BZIMAGE] = "bzimage",
                                                [VMM_BOOT_PVH] = "pvh",
                                                [VMM_BOOT_VMLINUX] = "vmlinux"};
            bool found = false;
            for (size_t i = 0; i < VS_ARRAY_SIZE(paths) && !found; i++)
                if (!strcmp(optarg, paths[i])) {
                    cfg.boot_path = (enum vmm_boot_path)i;
                    found = true;
                }
            if (!found) {
                fprintf(stderr,
                        "vessel-vmm: --boot-path '%s': expected auto, pvh, vmlinux or bzimage\n",
                        optarg);
                return 1;
            }
            break;
        }
        case 'b':
            if (strcmp(optarg, "disk") != 0 && strcmp(optarg, "kernel") != 0) {
                fprintf(stderr, "vessel-vmm: --boot '%s': expected disk or kernel\n", optarg);
                return EXIT_SETUP;
            }
            boot_disk = strcmp(optarg, "disk") == 0;
            break;
        case 'e':
            boot_entry = optarg;
            break;
        case 'S':
            restore = optarg;
            break;
        case 'x':
        case 'u':
            if (strlen(optarg) > VMM_IDENTITY_MAX || !*optarg) {
                fprintf(stderr, "vessel-vmm: --%s: 1 to %d bytes\n", opt == 'x' ? "name" : "uuid",
                        VMM_IDENTITY_MAX);
                return 1;
            }
            *(opt == 'x' ? &cfg.name : &cfg.uuid) = optarg;
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return EXIT_SETUP;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vessel-vmm: unexpected argument '%s' (see --help)\n", argv[optind]);
        return EXIT_SETUP;
    }
    if (restore && (cfg.kernel || cfg.initrd || cfg.cmdline || cfg.disk_count || cfg.net_count ||
                    cfg.rng || cfg.balloon || boot_disk || cfg.cpuid_mask)) {
        fprintf(stderr, "vessel-vmm: --restore takes the machine from the state file; only "
                        "--console, --vconsole, --api and -v go with it\n");
        return EXIT_SETUP;
    }
    if (boot_entry && !boot_disk) {
        fprintf(stderr, "vessel-vmm: --boot-entry needs --boot disk\n");
        return EXIT_SETUP;
    }
    if (boot_disk) {
        if (cfg.kernel || cfg.initrd) {
            fprintf(stderr, "vessel-vmm: --boot disk takes the kernel and initrd from the disk; "
                            "drop --kernel/--initrd\n");
            return EXIT_SETUP;
        }
        if (cfg.disk_count == 0) {
            fprintf(stderr, "vessel-vmm: --boot disk needs a --disk to boot from\n");
            return EXIT_SETUP;
        }
        if (guestfs_boot_load(cfg.disks[0].path, cfg.disks[0].format, boot_entry, cfg.cmdline,
                              &bootload) < 0) {
            fprintf(stderr, "vessel-vmm: %s\n", vs_error_message());
            return EXIT_SETUP;
        }
        cfg.kernel = bootload.kernel_path;
        cfg.initrd = bootload.initrd_fd >= 0 ? bootload.initrd_path : NULL;
        cfg.cmdline = bootload.cmdline;
        if (verbose)
            fprintf(stderr,
                    "vessel-vmm: boot entry '%s' from %s on partition %u: kernel %s, initrd %s "
                    "(partition %u), cmdline '%s'\n",
                    bootload.info.title, bootload.info.config_path, bootload.info.config_part,
                    bootload.info.kernel, bootload.info.initrd ? bootload.info.initrd : "(none)",
                    bootload.info.part, bootload.cmdline);
    }
    if (!cfg.kernel && !restore) {
        fprintf(stderr, "vessel-vmm: --kernel FILE is required (see --help)\n");
        return EXIT_SETUP;
    }

    /* SIGINT/SIGTERM power the VM off; a thread takes them so vCPU threads never do. */
    static sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct vmm *vmm;
    struct vmm_restore_options ropt = {cfg.console, cfg.api, cfg.vconsole};
    int rc = restore ? vmm_restore(&vmm, restore, &ropt) : vmm_create(&vmm, &cfg);
    if (rc < 0) {
        fprintf(stderr, "vessel-vmm: %s\n", vs_error_message());
        return EXIT_SETUP;
    }
    the_vmm = vmm;
    pthread_t sig_thread;
    pthread_create(&sig_thread, NULL, signal_thread, &sigs);
    if (vmm_host_is_pvm())
        fprintf(stderr, "vessel-vmm: warning: KVM here is software-assisted (kvm_pvm): guest "
                        "kernel code runs emulated, expect slow boots\n");
    if (verbose)
        fprintf(stderr, "vessel-vmm: boot: %s\n", vmm_boot_description(vmm));

    struct vmm_result result;
    rc = vmm_run(vmm, &result);
    int code;
    if (rc < 0) {
        fprintf(stderr, "vessel-vmm: %s\n", vs_error_message());
        code = EXIT_VMM;
    } else {
        switch (result.reason) {
        case VMM_EXIT_POWEROFF:
            code = EXIT_POWEROFF;
            break;
        case VMM_EXIT_REBOOT:
            code = EXIT_REBOOT;
            break;
        case VMM_EXIT_DEBUG:
            code = EXIT_DEBUG_BASE + (int)(result.exit_code & 63);
            break;
        case VMM_EXIT_SAVED:
            code = EXIT_SAVED;
            break;
        default:
            fprintf(stderr, "vessel-vmm: guest crashed: %s\n", result.detail);
            code = EXIT_CRASH;
        }
    }
    if (verbose) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        uint64_t ns, n = vmm_exit_handling(vmm, &ns);
        fprintf(stderr,
                "vessel-vmm: stopped: %s; first serial byte after %.2f ms; max RSS %ld KiB; "
                "%llu exits handled in the VMM, %.0f ns each\n",
                rc < 0 ? "error" : result.detail, vmm_first_output_ms(vmm), ru.ru_maxrss,
                (unsigned long long)n, n ? (double)ns / (double)n : 0.0);
    }
    the_vmm = NULL;
    vmm_destroy(vmm);
    return code;
}
