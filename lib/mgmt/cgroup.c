/*
 * lib/mgmt/cgroup.c — a VM's CPU weight and cap, Xen's credit scheduler in Linux terms: each VMM
 * runs in a CPU cgroup of its own, `vessel/<uuid>` under the host's CPU controller.
 *
 * The idea: Xen's weight (1–65535, default 256) is a relative share, which is what cgroup CPU
 * shares/weights are, scaled so that 256 lands on the controller's default (cgroup v2 cpu.weight
 * 100, v1 cpu.shares 1024); Xen's cap (percent of one CPU, 0 = none) is a CFS bandwidth quota per
 * 100 ms period. Both hierarchies are supported — v2 (cgroup.controllers lists cpu) first, else
 * the v1 cpu controller — because hosts still mount either. The keeper joins the cgroup before it
 * forks the VMM, so no VMM thread ever runs outside it, and removes it when the VMM has exited (it
 * moves itself back to the root first), so no empty group is left behind by a VM that ended while
 * the daemon was away. Where no CPU controller can be written
 * (no root, none mounted) a VM with the default weight and no cap starts anyway; one that asks for
 * either is refused with the reason, never started with its setting silently ignored.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mgmt/mgmt-internal.h"

#define V2_ROOT   "/sys/fs/cgroup"
#define V1_ROOT   "/sys/fs/cgroup/cpu"
#define PERIOD_US 100000u

static bool file_has(const char *path, const char *word)
{
    char buf[512];
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n"))
        if (!strcmp(tok, word))
            return true;
    return false;
}

static int write_file(const char *dir, const char *name, const char *value)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    ssize_t n = write(fd, value, strlen(value));
    int err = n == (ssize_t)strlen(value) ? 0 : vs_error_errno(n < 0 ? -errno : -EIO, "%s", path);
    close(fd);
    return err;
}

/* Which hierarchy carries the CPU controller: 2, 1, or 0 (none). */
static int cgroup_version(void)
{
    if (file_has(V2_ROOT "/cgroup.controllers", "cpu"))
        return 2;
    if (access(V1_ROOT "/cpu.shares", F_OK) == 0)
        return 1;
    return 0;
}

static void cgroup_dir(int version, const char *uuid, char *out, size_t len)
{
    snprintf(out, len, "%s/vessel/%s", version == 2 ? V2_ROOT : V1_ROOT, uuid);
}

int mgmt_cgroup_prepare(const struct vm_def *def, struct mgmt_cgroup *cg)
{
    cg->procs_fd = -1;
    cg->dir[0] = 0;
    bool asked = def->cpu_weight != 256 || def->cpu_cap != 0;
    int version = cgroup_version();
    if (!version)
        return asked ? vs_error(-ENOTSUP,
                                "VM '%s': cpu_weight/cpu_cap need a cgroup CPU controller, and "
                                "none is mounted (" V2_ROOT " or " V1_ROOT ")",
                                def->name)
                     : 0;
    char base[PATH_MAX], value[64], *dir = cg->dir;
    snprintf(base, sizeof(base), "%s/vessel", version == 2 ? V2_ROOT : V1_ROOT);
    cgroup_dir(version, def->uuid, dir, sizeof(cg->dir));
    int err = 0;
    if (mkdir(base, 0755) < 0 && errno != EEXIST)
        err = vs_error_errno(-errno, "%s", base);
    /* v2: a controller reaches a group only through its parents' subtree_control */
    char control[PATH_MAX + 32];
    snprintf(control, sizeof(control), "%s/cgroup.subtree_control", base);
    if (!err && version == 2 && !file_has(V2_ROOT "/cgroup.subtree_control", "cpu"))
        err = write_file(V2_ROOT, "cgroup.subtree_control", "+cpu");
    if (!err && version == 2 && !file_has(control, "cpu"))
        err = write_file(base, "cgroup.subtree_control", "+cpu");
    if (!err && mkdir(dir, 0755) < 0 && errno != EEXIST)
        err = vs_error_errno(-errno, "%s", dir);
    if (!err) {
        /* 256 is the controller's default: v2 weight 1–10000 (100), v1 shares 2–262144 (1024) */
        unsigned long w = version == 2 ? VS_MAX(1ul, VS_MIN(10000ul, def->cpu_weight * 100ul / 256))
                                       : VS_MAX(2ul, (unsigned long)def->cpu_weight * 4);
        snprintf(value, sizeof(value), "%lu", w);
        err = write_file(dir, version == 2 ? "cpu.weight" : "cpu.shares", value);
    }
    if (!err && version == 2) {
        if (def->cpu_cap)
            snprintf(value, sizeof(value), "%u %u", def->cpu_cap * (PERIOD_US / 100), PERIOD_US);
        else
            snprintf(value, sizeof(value), "max %u", PERIOD_US);
        err = write_file(dir, "cpu.max", value);
    } else if (!err) {
        snprintf(value, sizeof(value), "%u", PERIOD_US);
        err = write_file(dir, "cpu.cfs_period_us", value);
        snprintf(value, sizeof(value), "%ld",
                 def->cpu_cap ? (long)def->cpu_cap * (PERIOD_US / 100) : -1L);
        if (!err)
            err = write_file(dir, "cpu.cfs_quota_us", value);
    }
    if (!err) {
        char procs[PATH_MAX + 16];
        snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
        if ((cg->procs_fd = open(procs, O_WRONLY | O_CLOEXEC)) < 0)
            err = vs_error_errno(-errno, "%s", procs);
        snprintf(cg->root_procs, sizeof(cg->root_procs), "%s/cgroup.procs",
                 version == 2 ? V2_ROOT : V1_ROOT);
    }
    if (err) {
        mgmt_cgroup_close(cg);
        rmdir(dir);
        cg->dir[0] = 0;
    }
    if (err && !asked) { /* nothing was asked for: run without a group of its own */
        vs_error_clear();
        return 0;
    }
    if (err)
        return vs_error_prefix(err, "VM '%s': cpu_weight/cpu_cap", def->name);
    return 0;
}

void mgmt_cgroup_close(struct mgmt_cgroup *cg)
{
    if (cg->procs_fd >= 0)
        close(cg->procs_fd);
    cg->procs_fd = -1;
}

void mgmt_cgroup_remove(const char *uuid)
{
    char dir[PATH_MAX];
    for (int version = 1; version <= 2; version++) {
        cgroup_dir(version, uuid, dir, sizeof(dir));
        rmdir(dir); /* gone already, or still busy with a VMM being reattached: both fine */
    }
}
