/*
 * lib/vmm/hostinfo.c — what this host can run: CPU, KVM and its kind, memory, tun, cgroups.
 *
 * The kind of KVM matters more than its presence: kvm_intel/kvm_amd run guest kernels at native
 * speed, kvm_pvm emulates guest ring 0 in software. /sys/module tells which module is loaded;
 * the CPU's hypervisor flag tells bare metal from nested. Every probe is best-effort: a fact that
 * can't be read stays zero and the summary says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vessel/vmm.h"

const char *vmm_kvm_kind_name(enum vmm_kvm_kind kind)
{
    switch (kind) {
    case VMM_KVM_HARDWARE:
        return "hardware";
    case VMM_KVM_NESTED:
        return "nested";
    case VMM_KVM_PVM:
        return "pvm";
    case VMM_KVM_UNKNOWN:
        return "unknown";
    default:
        return "none";
    }
}

static bool read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = '\0';
    return ok;
}

static bool has_flag(const char *flags, const char *flag)
{
    size_t n = strlen(flag);
    for (const char *p = flags; (p = strstr(p, flag)); p += n)
        if ((p == flags || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0' || p[n] == '\n'))
            return true;
    return false;
}

static void cpu_facts(struct vmm_host_info *info)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[8192];
    bool got_flags = false;
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        char *val = colon + 1;
        while (*val == ' ')
            val++;
        val[strcspn(val, "\n")] = '\0';
        if (!info->cpu_vendor[0] && strncmp(line, "vendor_id", 9) == 0)
            snprintf(info->cpu_vendor, sizeof(info->cpu_vendor), "%s", val);
        else if (!info->cpu_model[0] && strncmp(line, "model name", 10) == 0)
            snprintf(info->cpu_model, sizeof(info->cpu_model), "%s", val);
        else if (!got_flags && strncmp(line, "flags", 5) == 0) {
            got_flags = true;
            info->vmx = has_flag(val, "vmx");
            info->svm = has_flag(val, "svm");
            info->hypervisor = has_flag(val, "hypervisor");
        }
    }
    fclose(f);
}

static void mem_facts(struct vmm_host_info *info)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return;
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            info->mem_total = kb * 1024;
        else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            info->mem_available = kb * 1024;
        else if (sscanf(line, "HugePages_Total: %llu", &kb) == 1)
            info->hugepages_available = kb > 0;
    }
    fclose(f);
}

static void kvm_facts(struct vmm_host_info *info)
{
    static const char *const modules[] = {"kvm_pvm", "kvm_intel", "kvm_amd"};
    char path[96], buf[32];
    for (size_t i = 0; i < sizeof(modules) / sizeof(modules[0]); i++) {
        snprintf(path, sizeof(path), "/sys/module/%s", modules[i]);
        if (access(path, F_OK) == 0) {
            snprintf(info->kvm_module, sizeof(info->kvm_module), "%s", modules[i]);
            break;
        }
    }
    if (info->kvm_module[0] && strcmp(info->kvm_module, "kvm_pvm") != 0) {
        snprintf(path, sizeof(path), "/sys/module/%s/parameters/nested", info->kvm_module);
        if (read_line(path, buf, sizeof(buf)))
            info->nested_enabled = buf[0] == 'Y' || buf[0] == 'y' || buf[0] == '1';
    }
    info->kvm_present = access("/dev/kvm", F_OK) == 0;
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(info->kvm_problem, sizeof(info->kvm_problem), "/dev/kvm: %s",
                 errno == ENOENT ? "not present (no KVM module loaded)" : strerror(errno));
    } else {
        info->kvm_api_version = ioctl(fd, KVM_GET_API_VERSION, 0);
        if (info->kvm_api_version == KVM_API_VERSION) {
            info->kvm_usable = true;
            info->max_vcpus = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
            info->recommended_vcpus = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
        } else {
            snprintf(info->kvm_problem, sizeof(info->kvm_problem),
                     "/dev/kvm: API version %d, expected %d", info->kvm_api_version,
                     KVM_API_VERSION);
        }
        close(fd);
    }
    if (!info->kvm_usable)
        info->kvm_kind = VMM_KVM_NONE;
    else if (strcmp(info->kvm_module, "kvm_pvm") == 0)
        info->kvm_kind = VMM_KVM_PVM;
    else if (info->kvm_module[0])
        info->kvm_kind = info->hypervisor ? VMM_KVM_NESTED : VMM_KVM_HARDWARE;
    else
        info->kvm_kind = VMM_KVM_UNKNOWN;
}

void vmm_host_info(struct vmm_host_info *info)
{
    memset(info, 0, sizeof(*info));
    cpu_facts(info);
    mem_facts(info);
    kvm_facts(info);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    info->host_cpus = n > 0 ? (unsigned)n : 0;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        info->tun = true;
        close(fd);
    }
    if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0)
        info->cgroup_version = 2;
    else if (access("/sys/fs/cgroup/cpu", F_OK) == 0 || access("/sys/fs/cgroup/memory", F_OK) == 0)
        info->cgroup_version = 1;
}

bool vmm_host_is_pvm(void)
{
    return access("/sys/module/kvm_pvm", F_OK) == 0;
}
