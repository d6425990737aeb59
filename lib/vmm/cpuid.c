/*
 * lib/vmm/cpuid.c — the CPUID the guest sees: what KVM supports, minus what the user masks, with
 * the topology leaves rewritten per vCPU.
 *
 * KVM_GET_SUPPORTED_CPUID already filters the host CPU down to what KVM can virtualise and adds
 * the KVM paravirt leaves (0x40000000: "KVMKVMKVM", kvmclock). We only set the hypervisor bit,
 * give each vCPU its APIC ID and a flat one-package topology, and clear masked feature bits —
 * named the way /proc/cpuinfo names them, so a user can copy a flag from there.
 *
 * KVM's table is cached in a file (see "the table's cache" below): getting it executes CPUID for
 * every leaf in the kernel, and where CPUID traps (a nested or PVM host) that is ~0.7 ms of a CPU
 * that can't be preempted — a quarter of the VMM's whole start on a 2-CPU host.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "vmm/machine.h"

enum reg { EAX, EBX, ECX, EDX };

struct cpuid_feature {
    const char *name;
    uint32_t leaf, index;
    enum reg reg;
    uint32_t bits;
};

static const struct cpuid_feature features[] = {
    {"sse3", 1, 0, ECX, 1u << 0},
    {"pclmulqdq", 1, 0, ECX, 1u << 1},
    {"vmx", 1, 0, ECX, 1u << 5},
    {"ssse3", 1, 0, ECX, 1u << 9},
    {"fma", 1, 0, ECX, 1u << 12},
    {"cx16", 1, 0, ECX, 1u << 13},
    {"pcid", 1, 0, ECX, 1u << 17},
    {"sse4_1", 1, 0, ECX, 1u << 19},
    {"sse4_2", 1, 0, ECX, 1u << 20},
    {"x2apic", 1, 0, ECX, 1u << 21},
    {"movbe", 1, 0, ECX, 1u << 22},
    {"popcnt", 1, 0, ECX, 1u << 23},
    {"tsc_deadline_timer", 1, 0, ECX, 1u << 24},
    {"aes", 1, 0, ECX, 1u << 25},
    {"xsave", 1, 0, ECX, (1u << 26) | (1u << 28) | (1u << 12)},
    {"avx", 1, 0, ECX, 1u << 28},
    {"f16c", 1, 0, ECX, 1u << 29},
    {"rdrand", 1, 0, ECX, 1u << 30},
    {"mtrr", 1, 0, EDX, 1u << 12},
    {"pge", 1, 0, EDX, 1u << 13},
    {"pat", 1, 0, EDX, 1u << 16},
    {"fxsr", 1, 0, EDX, 1u << 24},
    {"ht", 1, 0, EDX, 1u << 28},
    {"fsgsbase", 7, 0, EBX, 1u << 0},
    {"bmi1", 7, 0, EBX, 1u << 3},
    {"hle", 7, 0, EBX, 1u << 4},
    {"avx2", 7, 0, EBX, 1u << 5},
    {"smep", 7, 0, EBX, 1u << 7},
    {"bmi2", 7, 0, EBX, 1u << 8},
    {"erms", 7, 0, EBX, 1u << 9},
    {"invpcid", 7, 0, EBX, 1u << 10},
    {"rtm", 7, 0, EBX, 1u << 11},
    {"avx512f", 7, 0, EBX, 1u << 16},
    {"rdseed", 7, 0, EBX, 1u << 18},
    {"adx", 7, 0, EBX, 1u << 19},
    {"smap", 7, 0, EBX, 1u << 20},
    {"clflushopt", 7, 0, EBX, 1u << 23},
    {"clwb", 7, 0, EBX, 1u << 24},
    {"sha_ni", 7, 0, EBX, 1u << 29},
    {"umip", 7, 0, ECX, 1u << 2},
    {"pku", 7, 0, ECX, 1u << 3},
    {"la57", 7, 0, ECX, 1u << 16},
    {"rdpid", 7, 0, ECX, 1u << 22},
    {"xsaveopt", 0xd, 1, EAX, 1u << 0},
    {"xsavec", 0xd, 1, EAX, 1u << 1},
    {"xsaves", 0xd, 1, EAX, 1u << 3},
    {"lahf_lm", 0x80000001, 0, ECX, 1u << 0},
    {"abm", 0x80000001, 0, ECX, 1u << 5},
    {"pdpe1gb", 0x80000001, 0, EDX, 1u << 26},
    {"rdtscp", 0x80000001, 0, EDX, 1u << 27},
    {"kvmclock", 0x40000001, 0, EAX, (1u << 0) | (1u << 3)},
};

static struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *c, uint32_t leaf, uint32_t index)
{
    for (uint32_t i = 0; i < c->nent; i++)
        if (c->entries[i].function == leaf &&
            (!(c->entries[i].flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) ||
             c->entries[i].index == index))
            return &c->entries[i];
    return NULL;
}

static uint32_t *reg_of(struct kvm_cpuid_entry2 *e, enum reg r)
{
    switch (r) {
    case EAX:
        return &e->eax;
    case EBX:
        return &e->ebx;
    case ECX:
        return &e->ecx;
    default:
        return &e->edx;
    }
}

/* Clear the bits named in MASK ("xsave,avx"). */
static int cpuid_mask(struct kvm_cpuid2 *c, const char *mask)
{
    char *copy = vs_strdup(mask);
    if (!copy)
        return -ENOMEM;
    int rc = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
        if (*tok == '-')
            tok++;
        const struct cpuid_feature *f = NULL;
        for (size_t i = 0; i < VS_ARRAY_SIZE(features); i++)
            if (strcasecmp(features[i].name, tok) == 0)
                f = &features[i];
        if (!f) {
            rc = vs_error(-EINVAL, "--cpuid-mask: unknown CPU feature '%s'", tok);
            break;
        }
        struct kvm_cpuid_entry2 *e = cpuid_find(c, f->leaf, f->index);
        if (e)
            *reg_of(e, f->reg) &= ~f->bits;
        if (strcasecmp(f->name, "xsave") == 0) {
            /* Without XSAVE the XSAVE leaf and everything built on it must go too. */
            if ((e = cpuid_find(c, 0xd, 0)))
                e->eax = e->ebx = e->ecx = e->edx = 0;
            if ((e = cpuid_find(c, 0xd, 1)))
                e->eax = 0;
            if ((e = cpuid_find(c, 7, 0)))
                e->ebx &= ~((1u << 5) | (1u << 16));
        }
    }
    free(copy);
    return rc;
}

/* ---- the table's cache ----------------------------------------------------------------------
 * What KVM supports changes only when KVM does, so its raw table (before masks and per-vCPU
 * topology) is kept in a file keyed by what could change it: the kernel (release and boot_id)
 * and the loaded KVM modules (the inode numbers of their /sys/module directories, new at every
 * load, so a module reloaded with other parameters misses). The file is read back only if it is
 * ours alone (owner, not writable by others, no symlink) and every field checks out; anything
 * else, or any failure, falls back to the ioctl. It is written whole and renamed into place, so
 * VMMs starting together never see half of one. Best effort both ways: a cache that can't be
 * written costs the ioctl next time, nothing more. Where: $VESSEL_CPUID_CACHE ("off": none),
 * else /run/vessel/cpuid.cache for root, else $XDG_RUNTIME_DIR/vessel-cpuid.cache. */

static const char *const kvm_modules[CPUID_CACHE_MODULES] = {"kvm", "kvm_intel", "kvm_amd",
                                                             "kvm_pvm"};

bool cpuid_cache_path(char *buf, size_t size)
{
    const char *env = getenv("VESSEL_CPUID_CACHE");
    int n;
    if (env)
        n = (*env && strcmp(env, "off") != 0) ? snprintf(buf, size, "%s", env) : -1;
    else if (geteuid() == 0) {
        mkdir("/run/vessel", 0755);
        n = snprintf(buf, size, "/run/vessel/cpuid.cache");
    } else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        n = snprintf(buf, size, "%s/vessel-cpuid.cache", env);
    else
        n = -1;
    return n > 0 && (size_t)n < size;
}

void cpuid_cache_key(struct cpuid_cache_head *key)
{
    memset(key, 0, sizeof(*key));
    memcpy(key->magic, "VSCPUID1", 8);
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(key->release, sizeof(key->release), "%s", u.release);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, key->boot_id, sizeof(key->boot_id) - 1);
        if (n < 0)
            memset(key->boot_id, 0, sizeof(key->boot_id));
        close(fd);
    }
    for (int i = 0; i < CPUID_CACHE_MODULES; i++) {
        char path[64];
        struct stat st;
        snprintf(path, sizeof(path), "/sys/module/%s", kvm_modules[i]);
        if (stat(path, &st) == 0)
            key->module_ino[i] = (uint64_t)st.st_ino;
    }
}

struct kvm_cpuid2 *cpuid_cache_load(const char *path, const struct cpuid_cache_head *key)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    struct kvm_cpuid2 *c = NULL;
    struct cpuid_cache_head h;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
        !(st.st_mode & 022) && vs_pread_full(fd, &h, sizeof(h), 0) == 0 &&
        memcmp(&h, key, offsetof(struct cpuid_cache_head, nent)) == 0 && h.nent > 0 &&
        h.nent <= CPUID_CACHE_MAX &&
        (uint64_t)st.st_size == sizeof(h) + (uint64_t)h.nent * sizeof(struct kvm_cpuid_entry2)) {
        size_t bytes = (size_t)h.nent * sizeof(struct kvm_cpuid_entry2);
        c = vs_calloc(1, sizeof(*c) + bytes);
        if (c && vs_pread_full(fd, c->entries, bytes, sizeof(h)) == 0) {
            c->nent = h.nent;
        } else {
            free(c);
            c = NULL;
        }
    }
    close(fd);
    return c;
}

void cpuid_cache_store(const char *path, const struct cpuid_cache_head *key,
                       const struct kvm_cpuid2 *c)
{
    char tmp[PATH_MAX];
    if (c->nent == 0 || c->nent > CPUID_CACHE_MAX ||
        snprintf(tmp, sizeof(tmp), "%s.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return;
    struct cpuid_cache_head h = *key;
    h.nent = c->nent;
    bool ok =
        vs_pwrite_full(fd, &h, sizeof(h), 0) == 0 &&
        vs_pwrite_full(fd, c->entries, c->nent * sizeof(struct kvm_cpuid_entry2), sizeof(h)) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) < 0)
        unlink(tmp);
}

static int cpuid_from_kvm(struct machine *m)
{
    for (int nent = 128; nent <= 4096; nent *= 2) {
        struct kvm_cpuid2 *c =
            vs_calloc(1, sizeof(*c) + (size_t)nent * sizeof(struct kvm_cpuid_entry2));
        if (!c)
            return -ENOMEM;
        c->nent = (uint32_t)nent;
        if (ioctl(m->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            m->cpuid = c;
            return 0;
        }
        int e = errno;
        free(c);
        if (e != E2BIG)
            return vs_error_errno(-e, "/dev/kvm: KVM_GET_SUPPORTED_CPUID");
    }
    return vs_error(-E2BIG, "/dev/kvm: KVM_GET_SUPPORTED_CPUID: too many entries");
}

int cpuid_setup(struct machine *m)
{
    char path[PATH_MAX];
    struct cpuid_cache_head key;
    bool cached = cpuid_cache_path(path, sizeof(path));
    if (cached) {
        cpuid_cache_key(&key);
        m->cpuid = cpuid_cache_load(path, &key);
    }
    if (!m->cpuid) {
        int rc = cpuid_from_kvm(m);
        if (rc < 0)
            return rc;
        if (cached)
            cpuid_cache_store(path, &key, m->cpuid);
    }
    struct kvm_cpuid_entry2 *e = cpuid_find(m->cpuid, 1, 0);
    if (e)
        e->ecx |= 1u << 31; /* running under a hypervisor */
    if (m->config->cpuid_mask && *m->config->cpuid_mask)
        return cpuid_mask(m->cpuid, m->config->cpuid_mask);
    return 0;
}

static unsigned log2_up(unsigned n)
{
    unsigned s = 0;
    while ((1u << s) < n)
        s++;
    return s;
}

int cpuid_apply_vcpu(struct machine *m, struct vcpu *v)
{
    size_t size = sizeof(*m->cpuid) + m->cpuid->nent * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = vs_malloc(size);
    if (!c)
        return -ENOMEM;
    memcpy(c, m->cpuid, size);
    uint32_t apic = (uint32_t)v->index;
    unsigned n = m->vcpu_count;
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        switch (e->function) {
        case 1:
            e->ebx = (e->ebx & 0xffff) | (apic << 24) | ((n & 0xff) << 16);
            if (n > 1)
                e->edx |= 1u << 28;
            break;
        case 4:
            e->eax = (e->eax & 0x3ff) | ((n - 1) << 26); /* cores per package − 1; no SMT */
            break;
        case 0xb:
        case 0x1f:
            if (e->index == 0) {
                e->eax = 0;
                e->ebx = 1;
                e->ecx = 0x100;
            } else if (e->index == 1) {
                e->eax = log2_up(n);
                e->ebx = n;
                e->ecx = 0x200 | 1;
            } else {
                e->eax = e->ebx = 0;
                e->ecx = e->index;
            }
            e->edx = apic;
            break;
        }
    }
    int rc = 0;
    if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0)
        rc = vs_error_errno(-errno, "vCPU %d: KVM_SET_CPUID2", v->index);
    free(c);
    return rc;
}
