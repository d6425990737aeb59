/*
 * lib/mgmt/supervisor.c — starting, stopping and watching vessel-vmm processes.
 *
 * The idea: a VM must outlive the daemon, so the daemon never is its parent. `start` forks an
 * intermediate that calls setsid() and forks the *keeper*, then exits; the keeper forks and execs
 * vessel-vmm and does nothing but wait for it and write its exit status to DIR/run/NAME/exit
 * (atomically, by rename). The daemon watches the keeper through a pidfd, so it learns of the exit
 * without being anyone's parent; after a restart it finds the keeper again from keeper.pid (checked
 * against /proc/PID/comm so a recycled pid is not mistaken for it) and asks the VMM's API socket
 * for its state. A VM that ended while the daemon was away left its exit file behind: the policy
 * (on_poweroff / on_reboot / on_crash) is applied then.
 *
 * Save/restore (`xm save`/`xm restore`) rides on the same exit file: before asking the VMM to save,
 * the daemon writes the target path to DIR/run/NAME/save.path, so exit code 5 — seen by the
 * monitor, or by a restarted daemon — is recorded as state 'saved' with that path, never as a
 * poweroff or crash. A restore is a start whose VMM command line is `--restore FILE`.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "mgmt/mgmt-internal.h"
#include "vessel/img.h"
#include "vessel/vmm.h"

#define KEEPER_COMM     "vessel-keeper"
#define START_TIMEOUT_S 30
#define STOP_TIMEOUT_S  10
#define SAVE_TIMEOUT_S  600 /* writing guest RAM: seconds per GiB on a slow disk */
#define EXIT_SAVED      5   /* vessel-vmm's exit code after a save (docs/vessel-vmm.md) */

/* What remove_run_files keeps. */
#define RUN_KEEP_LOG  1u /* vmm.log: why the VM ended */
#define RUN_KEEP_UNDO 2u /* undo-N.qcow2: a saved VM's disks, needed by its restore */

bool mgmt_state_is_live(const char *state)
{
    return !strcmp(state, "running") || !strcmp(state, "paused");
}

struct mgmt_vm_runtime *mgmt_vm_runtime_get(struct mgmt_daemon *d, const char *name)
{
    pthread_mutex_lock(&d->vms_lock);
    struct mgmt_vm_runtime *rt = d->vms;
    while (rt && strcmp(rt->name, name))
        rt = rt->next;
    if (!rt && strlen(name) <= VM_DEF_NAME_MAX && (rt = vs_calloc(1, sizeof(*rt)))) {
        snprintf(rt->name, sizeof(rt->name), "%s", name);
        pthread_mutex_init(&rt->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&rt->changed, &ca);
        pthread_condattr_destroy(&ca);
        strcpy(rt->state, "shutoff");
        rt->keeper_pidfd = -1;
        rt->watch_fd = -1;
        rt->next = d->vms;
        d->vms = rt;
    }
    pthread_mutex_unlock(&d->vms_lock);
    return rt;
}

int mgmt_run_path(struct mgmt_daemon *d, const char *name, const char *file, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%s%s%s", d->run_dir, name, file ? "/" : "", file ? file : "");
    if (n < 0 || (size_t)n >= len)
        return vs_error(-ENAMETOOLONG, "%s/%s: path too long", d->run_dir, name);
    return 0;
}

void mgmt_monitor_wake(struct mgmt_daemon *d)
{
    char c = 1;
    if (write(d->monitor_wake[1], &c, 1) < 0) {
        /* the pipe is full: the monitor is awake anyway */
    }
}

static int pidfd_open_checked(pid_t pid)
{
    char path[64], comm[32] = "";
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -ESRCH;
    if (!fgets(comm, sizeof(comm), f))
        comm[0] = 0;
    fclose(f);
    comm[strcspn(comm, "\n")] = 0;
    if (strcmp(comm, KEEPER_COMM))
        return -ESRCH;
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : fd;
}

/* Leaving a live state: the disk claims, taps and the keeper go (rt locked). */
static void runtime_drop_live(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt)
{
    mgmt_disks_release(d, rt->name);
    mgmt_nics_release(d, rt->name);
    rt->pid = rt->keeper_pid = 0;
    if (rt->keeper_pidfd >= 0)
        close(rt->keeper_pidfd);
    rt->keeper_pidfd = -1;
    if (rt->uuid[0]) /* its CPU cgroup, named by the uuid it ran with */
        mgmt_cgroup_remove(rt->uuid);
    rt->uuid[0] = 0;
}

/* Record a transition in memory and in the store (the caller holds rt->lock). event NULL: named
 * after the transition (started, resumed, stopped, or the state). */
static int runtime_set_event(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt, const char *state,
                             int64_t last_exit, const char *error, bool count_boot,
                             const char *event_name)
{
    /* the event row (and hook) names the lifecycle step, not just the new state */
    const char *event = state;
    if (event_name)
        event = event_name;
    else if (count_boot)
        event = "started";
    else if (!strcmp(state, "running") && !strcmp(rt->state, "paused"))
        event = "resumed";
    else if (!strcmp(state, "shutoff"))
        event = "stopped";
    snprintf(rt->state, sizeof(rt->state), "%s", state);
    if (!mgmt_state_is_live(state))
        runtime_drop_live(d, rt);
    rt->transitions++;
    pthread_cond_broadcast(&rt->changed);
    return mgmt_store_transition(d->store, rt->name, state, event, rt->pid, rt->keeper_pid,
                                 last_exit, error, count_boot);
}

static int runtime_set(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt, const char *state,
                       int64_t last_exit, const char *error, bool count_boot)
{
    return runtime_set_event(d, rt, state, last_exit, error, count_boot, NULL);
}

/* The VMM saved the VM to path and exited (rt locked): state 'saved', event 'saved'. */
static int runtime_set_saved(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt, const char *path)
{
    struct vmm_state_identity id;
    if (vmm_state_file_identity(path, &id) < 0) { /* restorable by its path still */
        vs_warn("%s: %s", rt->name, vs_error_message());
        id.save_id[0] = 0;
    }
    snprintf(rt->state, sizeof(rt->state), "saved");
    runtime_drop_live(d, rt);
    rt->transitions++;
    pthread_cond_broadcast(&rt->changed);
    return mgmt_store_saved(d->store, rt->name, path, id.save_id, EXIT_SAVED);
}

/* ---- spawning -------------------------------------------------------------------------------- */

struct argv_builder {
    char *items[64 + 8 * 16];
    size_t count;
    bool failed;
};

static void argv_add(struct argv_builder *a, char *s)
{
    if (!s || a->count + 1 >= VS_ARRAY_SIZE(a->items)) {
        a->failed = true;
        free(s);
        return;
    }
    a->items[a->count++] = s;
    a->items[a->count] = NULL;
}

static void argv_free(struct argv_builder *a)
{
    for (size_t i = 0; i < a->count; i++)
        free(a->items[i]);
}

static int add_console_and_api(struct mgmt_daemon *d, const struct vm_def *def,
                               struct argv_builder *a);

/* The vessel-vmm command line for a definition. Undo disks get a fresh overlay in the run dir. */
static int build_vmm_argv(struct mgmt_daemon *d, const struct vm_def *def, struct argv_builder *a)
{
    char path[PATH_MAX];
    if (def->boot_from == VM_BOOT_FROM_CDROM)
        return vs_error(-ENOTSUP,
                        "%s: from = cdrom: vessel-vmm has no firmware to boot an ISO; "
                        "use from = disk (a disk with a grub.cfg, menu.lst or extlinux.conf) "
                        "or a kernel",
                        def->name);
    if (def->boot_from == VM_BOOT_FROM_DISK && !def->disk_count)
        return vs_error(-EINVAL, "%s: from = disk needs a [disk] holding a boot configuration",
                        def->name);
    if (def->boot_from == VM_BOOT_FROM_KERNEL && !def->kernel)
        return vs_error(-EINVAL, "%s: [boot] kernel is required", def->name);
    if (def->disk_count > 16 || def->nic_count > 16)
        return vs_error(-E2BIG, "%s: more than 16 disks or NICs", def->name);
    /* imported definitions keep the source's buses and models (for a round trip); vessel-vmm's
     * devices are virtio, and running an ide disk as virtio-blk without saying so would leave a
     * guest without virtio drivers unbootable for no visible reason */
    for (size_t i = 0; i < def->disk_count; i++)
        if (def->disks[i].bus != VM_DISK_BUS_VIRTIO)
            return vs_error(-ENOTSUP,
                            "%s: disk %zu (%s): bus = %s, but vessel-vmm's disks are virtio-blk: "
                            "set bus = virtio (vessel edit %s) once the guest has virtio drivers",
                            def->name, i + 1, def->disks[i].file,
                            vm_disk_bus_name(def->disks[i].bus), def->name);
    for (size_t i = 0; i < def->nic_count; i++)
        if (def->nics[i].model != VM_NIC_MODEL_VIRTIO)
            return vs_error(-ENOTSUP,
                            "%s: NIC %zu: model = %s, but vessel-vmm's NICs are virtio-net: set "
                            "model = virtio (vessel edit %s) once the guest has virtio drivers",
                            def->name, i + 1, vm_nic_model_name(def->nics[i].model), def->name);
    argv_add(a, vs_strdup(d->vmm_path));
    if (def->boot_from == VM_BOOT_FROM_DISK) {
        /* vessel's pygrub: the VMM reads the first disk's boot config and boots its default
         * entry's kernel and initrd (docs/vessel-vmm.md) */
        argv_add(a, vs_strdup("--boot"));
        argv_add(a, vs_strdup("disk"));
        if (def->boot_entry) {
            argv_add(a, vs_strdup("--boot-entry"));
            argv_add(a, vs_strdup(def->boot_entry));
        }
    } else {
        argv_add(a, vs_strdup("--kernel"));
        argv_add(a, vs_strdup(def->kernel));
    }
    if (def->initrd) {
        argv_add(a, vs_strdup("--initrd"));
        argv_add(a, vs_strdup(def->initrd));
    }
    if (def->cmdline) {
        argv_add(a, vs_strdup("--cmdline"));
        argv_add(a, vs_strdup(def->cmdline));
    }
    argv_add(a, vs_strdup("--name")); /* kept in a state file: a moved one still names its VM */
    argv_add(a, vs_strdup(def->name));
    argv_add(a, vs_strdup("--uuid"));
    argv_add(a, vs_strdup(def->uuid));
    argv_add(a, vs_strdup("--cpus"));
    argv_add(a, vs_asprintf("%u", def->vcpus));
    argv_add(a, vs_strdup("--memory"));
    argv_add(a, vs_asprintf("%lluM", (unsigned long long)(def->memory >> 20)));
    for (size_t i = 0; i < def->disk_count; i++) {
        const struct vm_disk *disk = &def->disks[i];
        const char *file = disk->file, *format = disk->format;
        if (disk->undo) {
            int err = mgmt_run_path(d, def->name, NULL, path, sizeof(path));
            if (err)
                return err;
            char *overlay = vs_asprintf("%s/undo-%zu.qcow2", path, i);
            if (!overlay)
                return -ENOMEM;
            struct img_create_params p = {.filename = overlay,
                                          .format = "qcow2",
                                          .backing_file = disk->file,
                                          .backing_format = disk->format,
                                          .quiet = true};
            err = img_create(&p);
            if (err) {
                free(overlay);
                return vs_error_prefix(err, "%s: undo overlay for %s", def->name, disk->file);
            }
            argv_add(a, vs_strdup("--disk"));
            argv_add(a, vs_asprintf("%s,format=qcow2", overlay));
            free(overlay);
            continue;
        }
        argv_add(a, vs_strdup("--disk"));
        char limits[64] = "";
        if (disk->iops || disk->bps)
            snprintf(limits, sizeof(limits), "%s%.0llu%s%.0llu", disk->iops ? ",iops=" : "",
                     (unsigned long long)disk->iops, disk->bps ? ",bps=" : "",
                     (unsigned long long)disk->bps);
        argv_add(
            a, vs_asprintf("%s%s%s%s%s", file, format ? ",format=" : "", format ? format : "",
                           disk->readonly || disk->media == VM_DISK_MEDIA_CDROM ? ",readonly" : "",
                           limits));
    }
    for (size_t i = 0; i < def->nic_count; i++) {
        /* the tap mgmt_nics_attach made on the NIC's network or bridge */
        char tap[16];
        mgmt_nic_tap_name(def, i, tap);
        argv_add(a, vs_strdup("--net"));
        argv_add(a, vs_asprintf("tap=%s,mac=%s", tap, def->nics[i].mac));
    }
    int err = add_console_and_api(d, def, a);
    if (err)
        return err;
    argv_add(a, vs_strdup("--no-reboot")); /* a reboot comes back to us: on_reboot decides */
    return a->failed ? vs_error(-ENOMEM, "%s: building the vessel-vmm command line", def->name) : 0;
}

/* The host-side flags every VMM of def gets: its console backend and the API socket. */
static int add_console_and_api(struct mgmt_daemon *d, const struct vm_def *def,
                               struct argv_builder *a)
{
    char path[PATH_MAX];
    argv_add(a, vs_strdup("--console"));
    switch (def->console) {
    case VM_CONSOLE_NONE:
        argv_add(a, vs_strdup("none"));
        break;
    case VM_CONSOLE_FILE:
        argv_add(a, vs_asprintf("file:%s", def->console_path));
        break;
    case VM_CONSOLE_UNIX:
        argv_add(a, vs_asprintf("unix:%s", def->console_path));
        break;
    default: /* pty: a socket `vessel console` connects to, so no terminal is needed */
        if (mgmt_run_path(d, def->name, "console.sock", path, sizeof(path)))
            return -ENAMETOOLONG;
        argv_add(a, vs_asprintf("unix:%s", path));
        break;
    }
    if (mgmt_run_path(d, def->name, "api.sock", path, sizeof(path)))
        return -ENAMETOOLONG;
    if (strlen(path) >= 108)
        return vs_error(-ENAMETOOLONG,
                        "%s: socket path longer than 107 bytes; use a shorter "
                        "--state directory",
                        path);
    argv_add(a, vs_strdup("--api"));
    argv_add(a, vs_asprintf("unix:%s", path));
    return 0;
}

/* `vessel-vmm --restore FILE`: the machine (disks, NICs and their taps, --no-reboot) comes from
 * the state file; only the host side is given anew. */
static int build_restore_argv(struct mgmt_daemon *d, const struct vm_def *def, const char *file,
                              struct argv_builder *a)
{
    argv_add(a, vs_strdup(d->vmm_path));
    argv_add(a, vs_strdup("--restore"));
    argv_add(a, vs_strdup(file));
    int err = add_console_and_api(d, def, a);
    if (err)
        return err;
    return a->failed ? vs_error(-ENOMEM, "%s: building the vessel-vmm command line", def->name) : 0;
}

/* U in decimal into BUF (room for 11 bytes); its length. No libc: the keeper runs it after fork. */
static size_t keeper_utoa(unsigned u, char *buf)
{
    char digits[10];
    size_t dn = 0, n = 0;
    do
        digits[dn++] = (char)('0' + u % 10);
    while ((u /= 10) && dn < sizeof(digits));
    while (dn)
        buf[n++] = digits[--dn];
    return n;
}

/* The host CPUs of the definition's cpu_affinity as a cpu_set_t (*use false when it has none);
 * every CPU it names must be one this daemon may run on. */
static int affinity_of(const struct vm_def *def, cpu_set_t *set, bool *use)
{
    *use = false;
    if (!def->cpu_affinity)
        return 0;
    uint64_t want[VM_CPU_LIST_MAX / 64];
    if (vm_cpu_list_parse(def->cpu_affinity, want, NULL) < 0)
        return vs_error_prefix(-EINVAL, "%s: cpu_affinity", def->name);
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) < 0)
        return vs_error_errno(-errno, "sched_getaffinity");
    CPU_ZERO(set);
    for (unsigned c = 0; c < VM_CPU_LIST_MAX && c < CPU_SETSIZE; c++) {
        if (!(want[c / 64] & (1ull << (c % 64))))
            continue;
        if (!CPU_ISSET(c, &allowed))
            return vs_error(-EINVAL,
                            "%s: cpu_affinity %s: CPU %u is not one this host runs VMs on (it has "
                            "%d CPUs online)",
                            def->name, def->cpu_affinity, c, CPU_COUNT(&allowed));
        CPU_SET(c, set);
    }
    *use = true;
    return 0;
}

/* Fork the keeper in its own session; it joins the VM's CPU cgroup (CGROUP_FD: its cgroup.procs,
 * or -1), takes the VM's CPU affinity (AFFINITY, or NULL) and forks and execs the VMM, which
 * inherits both. Only async-signal-safe calls after fork: every path and fd is prepared before. */
static int spawn_detached(char *const argv[], const char *run_dir, const struct mgmt_cgroup *cg,
                          const cpu_set_t *affinity, pid_t *keeper_out, pid_t *vmm_out)
{
    char log_path[PATH_MAX + 16], exit_path[PATH_MAX + 16], exit_tmp[PATH_MAX + 16];
    snprintf(log_path, sizeof(log_path), "%s/vmm.log", run_dir);
    snprintf(exit_path, sizeof(exit_path), "%s/exit", run_dir);
    snprintf(exit_tmp, sizeof(exit_tmp), "%s/exit.tmp", run_dir);
    unlink(exit_path);
    int logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0)
        return vs_error_errno(-errno, "%s", log_path);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int pipefd[2];
    if (nullfd < 0 || pipe2(pipefd, O_CLOEXEC) < 0) {
        int err = vs_error_errno(-errno, "pipe");
        close(logfd);
        if (nullfd >= 0)
            close(nullfd);
        return err;
    }
    pid_t child = fork();
    if (child < 0) {
        int err = vs_error_errno(-errno, "fork");
        close(logfd);
        close(nullfd);
        close(pipefd[0]);
        close(pipefd[1]);
        return err;
    }
    if (child == 0) {
        setsid();
        pid_t keeper = fork();
        if (keeper != 0)
            _exit(keeper < 0 ? 1 : 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGHUP, SIG_IGN); /* the keeper must not die with a terminal */
        prctl(PR_SET_NAME, KEEPER_COMM, 0, 0, 0);
        char self[16];
        size_t self_len = keeper_utoa((unsigned)getpid(), self);
        if (cg->procs_fd >= 0 && write(cg->procs_fd, self, self_len) != (ssize_t)self_len)
            _exit(1); /* the VMM, forked next, is born in the group; else the daemon sees no pids */
        if (affinity && sched_setaffinity(0, sizeof(*affinity), affinity) < 0)
            _exit(1);
        pid_t vmm = fork();
        if (vmm == 0) {
            signal(SIGHUP, SIG_DFL);
            dup2(nullfd, 0);
            dup2(logfd, 1);
            dup2(logfd, 2);
            syscall(SYS_close_range, 3, ~0U, 0);
            execv(argv[0], argv);
            static const char msg[] = "vesseld: cannot execute vessel-vmm\n";
            ssize_t ignored = write(2, msg, sizeof(msg) - 1);
            (void)ignored;
            _exit(1);
        }
        pid_t pids[2] = {getpid(), vmm};
        ssize_t ignored = write(pipefd[1], pids, sizeof(pids));
        (void)ignored;
        syscall(SYS_close_range, 0, ~0U, 0);
        int status = 0;
        if (vmm > 0)
            while (waitpid(vmm, &status, 0) < 0 && errno == EINTR)
                ;
        int code = vmm < 0 ? 4 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        /* the group ends with its VMM, whether the daemon is there or not */
        if (cg->procs_fd >= 0) {
            int root = open(cg->root_procs, O_WRONLY | O_CLOEXEC);
            if (root >= 0 && write(root, self, self_len) == (ssize_t)self_len)
                rmdir(cg->dir);
            if (root >= 0)
                close(root);
        }
        int fd = open(exit_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char buf[16];
            size_t n = keeper_utoa((unsigned)code, buf);
            buf[n++] = '\n';
            ignored = write(fd, buf, n);
            fsync(fd);
            close(fd);
            rename(exit_tmp, exit_path);
        }
        _exit(0);
    }
    close(pipefd[1]);
    close(logfd);
    close(nullfd);
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
        ;
    pid_t pids[2] = {0, 0};
    struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
    ssize_t n = poll(&pfd, 1, 5000) == 1 ? read(pipefd[0], pids, sizeof(pids)) : -1;
    close(pipefd[0]);
    if (n != (ssize_t)sizeof(pids) || pids[1] <= 0)
        return vs_error(-ECHILD, "vessel-vmm: the keeper process did not report");
    *keeper_out = pids[0];
    *vmm_out = pids[1];
    return 0;
}

/* The exit code the keeper recorded, or -1. */
static int read_exit_code(struct mgmt_daemon *d, const char *name)
{
    char path[PATH_MAX];
    if (mgmt_run_path(d, name, "exit", path, sizeof(path)))
        return -1;
    FILE *f = fopen(path, "re");
    int code = -1;
    if (f) {
        if (fscanf(f, "%d", &code) != 1)
            code = -1;
        fclose(f);
    }
    return code;
}

/* The last non-empty line of the VMM's log: the reason it gave for failing. */
static void read_log_tail(struct mgmt_daemon *d, const char *name, char *out, size_t len)
{
    char path[PATH_MAX];
    out[0] = 0;
    if (mgmt_run_path(d, name, "vmm.log", path, sizeof(path)))
        return;
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] && !strstr(line, "warning:")) {
            size_t n = VS_MIN(strlen(line), len - 1); /* long lines are cut, not an error */
            memcpy(out, line, n);
            out[n] = 0;
        }
    }
    fclose(f);
}

static void remove_run_files(struct mgmt_daemon *d, const char *name, unsigned keep)
{
    char dir[PATH_MAX];
    mgmt_nics_release(d, name); /* the taps recorded in the run directory go with it */
    if (mgmt_run_path(d, name, NULL, dir, sizeof(dir)))
        return;
    DIR *dh = opendir(dir);
    if (!dh)
        return;
    struct dirent *e;
    while ((e = readdir(dh))) {
        if (e->d_name[0] == '.' || ((keep & RUN_KEEP_LOG) && !strcmp(e->d_name, "vmm.log")) ||
            ((keep & RUN_KEEP_UNDO) && !strncmp(e->d_name, "undo-", 5)))
            continue;
        char path[PATH_MAX + 256];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(dh);
}

/* Spawn the VMM for rt (locked) and wait until its API answers. restore: the state file to
 * resume (the undo overlays of the saved run are kept), NULL for a fresh boot. */
static int spawn_locked(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt, const char *restore)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, rt->name, &rec);
    if (err)
        return err;
    struct vm_def *def = NULL;
    err = vm_def_parse(rec.definition, strlen(rec.definition), rt->name, &def);
    mgmt_vm_record_free(&rec);
    if (err)
        return err;
    char dir[PATH_MAX], api[PATH_MAX];
    struct argv_builder a = {.count = 0};
    if ((err = mgmt_run_path(d, rt->name, NULL, dir, sizeof(dir))) ||
        (err = mgmt_run_path(d, rt->name, "api.sock", api, sizeof(api))))
        goto out;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        err = vs_error_errno(-errno, "%s", dir);
        goto out;
    }
    remove_run_files(d, rt->name, RUN_KEEP_LOG | (restore ? RUN_KEEP_UNDO : 0));
    err = restore ? build_restore_argv(d, def, restore, &a) : build_vmm_argv(d, def, &a);
    /* a restored VMM reopens the taps by the names it saved: the same names made here */
    if (err || (err = mgmt_nics_attach(d, def)))
        goto out;
    pid_t keeper = 0, vmm = 0;
    struct mgmt_cgroup cg;
    cpu_set_t affinity;
    bool pin;
    if ((err = affinity_of(def, &affinity, &pin)) || (err = mgmt_cgroup_prepare(def, &cg)))
        goto release_nics;
    err = spawn_detached(a.items, dir, &cg, pin ? &affinity : NULL, &keeper, &vmm);
    mgmt_cgroup_close(&cg);
    if (err)
        goto release_nics;
    int pidfd = (int)syscall(SYS_pidfd_open, keeper, 0);
    char pidfile[PATH_MAX];
    if (!mgmt_run_path(d, rt->name, "keeper.pid", pidfile, sizeof(pidfile))) {
        FILE *f = fopen(pidfile, "we");
        if (f) {
            fprintf(f, "%d %d\n", (int)keeper, (int)vmm);
            fclose(f);
        }
    }
    /* wait for the API socket, or for the keeper to report that the VMM died */
    uint64_t deadline = vs_now_ns() + START_TIMEOUT_S * 1000000000ull;
    err = -ETIMEDOUT;
    while (vs_now_ns() < deadline) {
        struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
        if (pidfd >= 0 && poll(&pfd, 1, 0) == 1) {
            char reason[400];
            read_log_tail(d, rt->name, reason, sizeof(reason));
            err = vs_error(-EIO, "%s: vessel-vmm exited with code %d%s%s", rt->name,
                           read_exit_code(d, rt->name), reason[0] ? ": " : "", reason);
            break;
        }
        char *reply = NULL;
        if (access(api, F_OK) == 0 && mgmt_vmm_command(api, "status", 1000, &reply) == 0) {
            free(reply);
            err = 0;
            break;
        }
        usleep(10000);
    }
    if (err) {
        if (err == -ETIMEDOUT) {
            kill(vmm, SIGKILL);
            vs_error(err, "%s: vessel-vmm did not answer on %s within %d s", rt->name, api,
                     START_TIMEOUT_S);
        }
        if (pidfd >= 0)
            close(pidfd);
        goto release_nics;
    }
    rt->pid = vmm;
    rt->keeper_pid = keeper;
    rt->keeper_pidfd = pidfd;
    snprintf(rt->uuid, sizeof(rt->uuid), "%s", def->uuid);
    rt->stop_requested = false;
    goto out;
release_nics : {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", vs_error_message());
    mgmt_nics_release(d, rt->name);
    mgmt_cgroup_remove(def->uuid); /* made for a VMM that never ran: rmdir of an empty group */
    vs_error(err, "%s", msg);
}
out:
    argv_free(&a);
    vm_def_free(def);
    return err;
}

int mgmt_vm_start(struct mgmt_daemon *d, const char *name, bool paused)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, name, &rec);
    if (err)
        return err;
    mgmt_vm_record_free(&rec);
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, name);
    if (!rt)
        return -ENOMEM;
    pthread_mutex_lock(&rt->lock);
    if (mgmt_state_is_live(rt->state)) {
        err = vs_error(-EBUSY, "VM '%s' is already %s", name, rt->state);
        goto out;
    }
    if (!strcmp(rt->state, "saved")) {
        /* a fresh boot would silently throw the saved memory away: make the user choose */
        struct mgmt_vm_record now;
        bool known = mgmt_store_get(d->store, name, &now) == 0;
        err = vs_error(-EBUSY,
                       "VM '%s' was saved to %s: 'vessel restore %s' resumes it, 'vessel "
                       "destroy %s' discards the saved state",
                       name, known ? now.saved_path : "a state file", name, name);
        if (known)
            mgmt_vm_record_free(&now);
        goto out;
    }
    if ((err = mgmt_disks_claim_definition(d, name, false)))
        goto out;
    if ((err = spawn_locked(d, rt, NULL))) {
        char msg[300];
        snprintf(msg, sizeof(msg), "%s", vs_error_message());
        runtime_set(d, rt, "shutoff", -1, msg, false);
        vs_error(err, "%s", msg);
        goto out;
    }
    char api[PATH_MAX], *reply = NULL;
    bool pause_ok = !paused || (!mgmt_run_path(d, name, "api.sock", api, sizeof(api)) &&
                                !mgmt_vmm_command(api, "pause", 5000, &reply));
    free(reply);
    err = runtime_set(d, rt, paused && pause_ok ? "paused" : "running", -1, "", true);
    mgmt_monitor_wake(d);
out:
    pthread_mutex_unlock(&rt->lock);
    return err;
}

static int mgmt_vm_runtime_live_error(struct mgmt_vm_runtime *rt)
{
    if (mgmt_state_is_live(rt->state))
        return vs_error(-EBUSY, "VM '%s' is %s; destroy it first", rt->name, rt->state);
    return 0;
}

int mgmt_vm_undefine(struct mgmt_daemon *d, const char *name)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, name, &rec); /* no runtime for names nobody defined */
    if (err)
        return err;
    mgmt_vm_record_free(&rec);
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, name);
    if (!rt)
        return -ENOMEM;
    /* under the VM's lock, so a start in progress can't leave a VM without a definition */
    pthread_mutex_lock(&rt->lock);
    err = mgmt_vm_runtime_live_error(rt);
    if (!err)
        err = mgmt_store_undefine(d->store, name);
    if (!err) {
        char dir[PATH_MAX];
        remove_run_files(d, name, 0);
        if (!mgmt_run_path(d, name, NULL, dir, sizeof(dir)))
            rmdir(dir);
    }
    pthread_mutex_unlock(&rt->lock);
    return err;
}

/* Wait (rt locked) until the state is no longer live or the deadline passes. */
static bool wait_not_live(struct mgmt_vm_runtime *rt, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += seconds;
    while (mgmt_state_is_live(rt->state))
        if (pthread_cond_timedwait(&rt->changed, &rt->lock, &ts) == ETIMEDOUT)
            break;
    return !mgmt_state_is_live(rt->state);
}

static int live_runtime_locked(struct mgmt_daemon *d, const char *name,
                               struct mgmt_vm_runtime **out)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, name, &rec);
    if (err)
        return err;
    mgmt_vm_record_free(&rec);
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, name);
    if (!rt)
        return -ENOMEM;
    pthread_mutex_lock(&rt->lock);
    if (!mgmt_state_is_live(rt->state)) {
        pthread_mutex_unlock(&rt->lock);
        return vs_error(-EINVAL, "VM '%s' is not running (%s)", name, rt->state);
    }
    *out = rt;
    return 0;
}

static int vmm_simple(struct mgmt_daemon *d, const char *name, const char *cmd)
{
    char api[PATH_MAX], *reply = NULL;
    int err = mgmt_run_path(d, name, "api.sock", api, sizeof(api));
    if (!err)
        err = mgmt_vmm_command(api, cmd, 5000, &reply);
    if (!err && reply && !strstr(reply, "\"ok\":true"))
        err = vs_error(-EIO, "%s: vessel-vmm refused %s: %s", name, cmd, reply);
    free(reply);
    return err;
}

/* destroy of a saved VM: forget the saved state (the file stays; its undo overlays go). */
static int discard_saved(struct mgmt_daemon *d, const char *name)
{
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, name);
    if (!rt)
        return -ENOMEM;
    pthread_mutex_lock(&rt->lock);
    int err = 1;
    if (!strcmp(rt->state, "saved")) {
        remove_run_files(d, name, RUN_KEEP_LOG);
        err = runtime_set_event(d, rt, "shutoff", -1, "", false, "stopped");
    }
    pthread_mutex_unlock(&rt->lock);
    return err;
}

int mgmt_vm_destroy(struct mgmt_daemon *d, const char *name)
{
    struct mgmt_vm_runtime *rt;
    int err = discard_saved(d, name);
    if (err <= 0)
        return err;
    err = live_runtime_locked(d, name, &rt);
    if (err)
        return err;
    rt->stop_requested = true;
    pid_t pid = rt->pid;
    if (vmm_simple(d, name, "poweroff") < 0 || !wait_not_live(rt, STOP_TIMEOUT_S)) {
        if (mgmt_state_is_live(rt->state) && rt->pid == pid && pid > 0)
            kill(pid, SIGKILL);
        if (!wait_not_live(rt, STOP_TIMEOUT_S))
            err = vs_error(-ETIMEDOUT, "VM '%s' did not stop", name);
    }
    pthread_mutex_unlock(&rt->lock);
    return err;
}

int mgmt_vm_shutdown(struct mgmt_daemon *d, const char *name)
{
    struct mgmt_vm_runtime *rt;
    int err = live_runtime_locked(d, name, &rt);
    if (err)
        return err;
    rt->stop_requested = true;
    err = vmm_simple(d, name, "powerbutton");
    pthread_mutex_unlock(&rt->lock);
    return err;
}

int mgmt_vm_reboot(struct mgmt_daemon *d, const char *name)
{
    struct mgmt_vm_runtime *rt;
    int err = live_runtime_locked(d, name, &rt);
    if (err)
        return err;
    uint64_t before = rt->transitions;
    rt->stop_requested = false;
    err = vmm_simple(d, name, "reset");
    /* the VMM exits with 2; the monitor applies on_reboot. Wait for that to happen. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += START_TIMEOUT_S;
    while (!err && rt->transitions == before)
        if (pthread_cond_timedwait(&rt->changed, &rt->lock, &ts) == ETIMEDOUT)
            err = vs_error(-ETIMEDOUT, "VM '%s' did not reboot", name);
    pthread_mutex_unlock(&rt->lock);
    return err;
}

int mgmt_vm_pause(struct mgmt_daemon *d, const char *name, bool pause)
{
    struct mgmt_vm_runtime *rt;
    int err = live_runtime_locked(d, name, &rt);
    if (err)
        return err;
    err = vmm_simple(d, name, pause ? "pause" : "resume");
    if (!err)
        err = runtime_set(d, rt, pause ? "paused" : "running", -1, NULL, false);
    pthread_mutex_unlock(&rt->lock);
    return err;
}

int mgmt_vm_query(struct mgmt_daemon *d, const char *name, const char *cmd, char **reply)
{
    struct mgmt_vm_runtime *rt;
    int err = live_runtime_locked(d, name, &rt);
    if (err)
        return err;
    char api[PATH_MAX];
    err = mgmt_run_path(d, name, "api.sock", api, sizeof(api));
    if (!err)
        err = mgmt_vmm_command(api, cmd, 5000, reply);
    pthread_mutex_unlock(&rt->lock);
    return err;
}

/* ---- save and restore (xm save / xm restore) ------------------------------------------------- */

int mgmt_run_file_write(struct mgmt_daemon *d, const char *name, const char *file, const char *text)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    int err = mgmt_run_path(d, name, file, path, sizeof(path));
    if (err)
        return err;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return vs_error_errno(-errno, "%s", tmp);
    bool ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        err = vs_error_errno(-errno, "%s", path);
        unlink(tmp);
        return err;
    }
    return 0;
}

int mgmt_vm_save(struct mgmt_daemon *d, const char *name, const char *path, char *saved,
                 size_t saved_len)
{
    if (!path || path[0] != '/')
        return vs_error(-EINVAL, "save: the state file must be an absolute path");
    if (strlen(path) >= PATH_MAX - 16 || strchr(path, '\n'))
        return vs_error(-EINVAL, "save: %s: not a usable file name", path);
    struct mgmt_vm_runtime *rt;
    int err = live_runtime_locked(d, name, &rt);
    if (err)
        return err;
    /* claim the name (O_EXCL): an existing file is never overwritten, and two saves can't race
     * for it. The VMM writes PATH.tmp and renames it over this empty file. */
    char canon[PATH_MAX], *reply = NULL, api[PATH_MAX];
    if ((err = mgmt_reserve_file(path)))
        goto out;
    if (!realpath(path, canon)) {
        err = vs_error_errno(-errno, "%s", path);
        unlink(path);
        goto out;
    }
    char *line = vs_asprintf("%s\n", canon);
    json_object *req = json_object_new_object();
    json_object_object_add(req, "cmd", json_object_new_string("save"));
    json_object_object_add(req, "path", json_object_new_string(canon));
    if (!line || !req)
        err = -ENOMEM;
    if (!err)
        err = mgmt_run_file_write(d, name, "save.path", line);
    if (!err)
        err = mgmt_run_path(d, name, "api.sock", api, sizeof(api));
    if (!err)
        err = mgmt_vmm_request(api, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN),
                               SAVE_TIMEOUT_S * 1000, &reply);
    free(line);
    json_object_put(req);
    if (!err && (!reply || !strstr(reply, "\"ok\":true"))) {
        json_object *o = reply ? json_tokener_parse(reply) : NULL, *e;
        err = vs_error(-EIO, "VM '%s': save to %s failed: %s", name, canon,
                       o && json_object_object_get_ex(o, "error", &e) ? json_object_get_string(e)
                                                                      : "no answer");
        json_object_put(o);
    }
    if (err && err != -ETIMEDOUT) {
        /* the VM runs on: drop the reservation and the note (a timed-out VMM may still write) */
        char note[PATH_MAX];
        if (!mgmt_run_path(d, name, "save.path", note, sizeof(note)))
            unlink(note);
        struct stat st;
        if (stat(canon, &st) == 0 && st.st_size == 0)
            unlink(canon);
        goto out;
    }
    if (err)
        goto out;
    /* the VMM exits with code 5 next; the monitor records the VM as saved */
    if (!wait_not_live(rt, STOP_TIMEOUT_S) || strcmp(rt->state, "saved")) {
        err =
            vs_error(-EIO, "VM '%s': the state file was written but the VM is %s", name, rt->state);
        goto out;
    }
    snprintf(saved, saved_len, "%s", canon);
out:
    free(reply);
    pthread_mutex_unlock(&rt->lock);
    return err;
}

int mgmt_vm_restore(struct mgmt_daemon *d, const char *name, const char *file, char *vm_out,
                    size_t vm_len, char *file_out, size_t file_len)
{
    char found[VMM_IDENTITY_MAX + 1], canon[PATH_MAX];
    struct vmm_state_identity id;
    const char *moved = NULL; /* by file, a file other than the one the VM was saved to */
    int err;
    if (!name) {
        /* by file: the VM that was saved to it, else the VM the file names (it was moved) */
        if (!file || file[0] != '/')
            return vs_error(-EINVAL, "restore: the state file must be an absolute path");
        if (!realpath(file, canon))
            return vs_error_errno(-errno, "restore: %s", file);
        err = mgmt_store_find_saved(d->store, canon, found, sizeof(found));
        if (err == -ENOENT) {
            if ((err = vmm_state_file_identity(canon, &id)))
                return err;
            snprintf(found, sizeof(found), "%s", id.name);
            if (!found[0])
                return vs_error(-ENOENT,
                                "%s: no VM was saved to this file, and it names none (saved "
                                "by an older vessel-vmm): restore it by the VM's name",
                                canon);
            moved = canon;
        }
        if (err)
            return err;
        name = found;
    }
    struct mgmt_vm_record rec;
    if ((err = mgmt_store_get(d->store, name, &rec)))
        return err;
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, name);
    if (!rt) {
        mgmt_vm_record_free(&rec);
        return -ENOMEM;
    }
    pthread_mutex_lock(&rt->lock);
    /* the record read before the lock may be stale: read it again under it */
    mgmt_vm_record_free(&rec);
    if ((err = mgmt_store_get(d->store, name, &rec))) {
        pthread_mutex_unlock(&rt->lock);
        return err;
    }
    if (moved && strcmp(rec.uuid, id.uuid)) {
        err = vs_error(-EINVAL,
                       "%s holds VM '%s' with uuid %s, but the VM of that name here has uuid %s",
                       moved, name, id.uuid, rec.uuid);
        goto out;
    }
    if (strcmp(rt->state, "saved") || !rec.saved_path[0]) {
        err = vs_error(mgmt_state_is_live(rt->state) ? -EBUSY : -EINVAL,
                       "VM '%s' is %s, not saved (vessel save %s FILE saves a running VM)", name,
                       rt->state, name);
        goto out;
    }
    const char *state_file = moved ? moved : rec.saved_path;
    struct stat st;
    if (stat(state_file, &st) < 0) {
        err = vs_error_errno(-errno, "VM '%s': state file %s", name, state_file);
        goto out;
    }
    /* only the latest save: an older one would meet disks that have moved on since */
    if (rec.saved_id[0] && (err = vmm_state_file_identity(state_file, &id)) == 0 &&
        strcmp(id.save_id, rec.saved_id))
        err = vs_error(-EINVAL,
                       "%s is not VM '%s''s latest save (that went to %s): restoring it would "
                       "meet disks that have changed since",
                       state_file, name, rec.saved_path);
    if (err)
        goto out;
    if ((err = mgmt_disks_claim_definition(d, name, false)))
        goto out;
    if ((err = spawn_locked(d, rt, state_file))) {
        /* still saved: the file may be fixed or the state discarded with destroy */
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vs_error_message());
        mgmt_disks_release(d, name);
        mgmt_nics_release(d, name);
        vs_error(err, "%s", msg);
        goto out;
    }
    err = runtime_set_event(d, rt, "running", -1, "", true, "restored");
    mgmt_monitor_wake(d);
    snprintf(vm_out, vm_len, "%s", name);
    snprintf(file_out, file_len, "%s", state_file);
out:
    mgmt_vm_record_free(&rec);
    pthread_mutex_unlock(&rt->lock);
    return err;
}

/* ---- exits and policies ---------------------------------------------------------------------- */

static enum vm_action policy_for(struct mgmt_daemon *d, const char *name, int code,
                                 const char **why)
{
    struct mgmt_vm_record rec;
    struct vm_def *def = NULL;
    enum vm_action action = VM_ACTION_DESTROY;
    if (code == 0)
        *why = "poweroff";
    else if (code == 2)
        *why = "rebooted";
    else
        *why = "crashed";
    if (mgmt_store_get(d->store, name, &rec) == 0) {
        if (vm_def_parse(rec.definition, strlen(rec.definition), name, &def) == 0) {
            action = code == 0 ? def->on_poweroff : code == 2 ? def->on_reboot : def->on_crash;
            vm_def_free(def);
        }
        mgmt_vm_record_free(&rec);
    }
    return action;
}

/* The VMM of rt (locked) has ended with code: apply the policy. */
static void handle_exit_locked(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt, int code)
{
    const char *why = "stopped";
    char msg[600] = "";
    if (code == EXIT_SAVED) {
        /* saved, never a policy matter: the path comes from save.path, written before the save */
        char file[PATH_MAX], saved[PATH_MAX] = "";
        if (!mgmt_run_path(d, rt->name, "save.path", file, sizeof(file))) {
            FILE *f = fopen(file, "re");
            if (f) {
                if (!fgets(saved, sizeof(saved), f))
                    saved[0] = 0;
                fclose(f);
            }
            saved[strcspn(saved, "\n")] = 0;
        }
        rt->stop_requested = false;
        remove_run_files(d, rt->name, RUN_KEEP_LOG | (saved[0] ? RUN_KEEP_UNDO : 0));
        if (saved[0] == '/' && access(saved, F_OK) == 0) {
            runtime_set_saved(d, rt, saved);
        } else {
            vs_warn("%s: vessel-vmm saved the VM (exit code 5) to a file vesseld does not know",
                    rt->name);
            runtime_set(d, rt, "shutoff", code,
                        "vessel-vmm saved the VM to a state file vesseld does not know", false);
        }
        return;
    }
    if (rt->stop_requested) {
        rt->stop_requested = false;
        remove_run_files(d, rt->name, RUN_KEEP_LOG);
        runtime_set(d, rt, "shutoff", code, "", false);
        return;
    }
    enum vm_action action = policy_for(d, rt->name, code, &why);
    if (code != 0 && code != 2) {
        char tail[400];
        read_log_tail(d, rt->name, tail, sizeof(tail));
        snprintf(msg, sizeof(msg), "vessel-vmm exited with code %d%s%s", code, tail[0] ? ": " : "",
                 tail);
    }
    /* a preserved crash is reported once, by the state change to crashed below */
    if (!(action == VM_ACTION_PRESERVE && code != 0 && code != 2))
        mgmt_store_event(d->store, rt->name, why, msg);
    if (action == VM_ACTION_RESTART) {
        /* crash-loop guard: five policy restarts within 60 s stop the VM */
        uint64_t now = vs_now_ns();
        bool looping = rt->restart_times[0] && now - rt->restart_times[0] < 60000000000ull;
        memmove(rt->restart_times, rt->restart_times + 1,
                sizeof(rt->restart_times) - sizeof(rt->restart_times[0]));
        rt->restart_times[VS_ARRAY_SIZE(rt->restart_times) - 1] = now;
        if (!looping) {
            rt->pid = rt->keeper_pid = 0;
            if (rt->keeper_pidfd >= 0)
                close(rt->keeper_pidfd);
            rt->keeper_pidfd = -1;
            if (spawn_locked(d, rt, NULL) == 0) {
                runtime_set(d, rt, "running", code, msg, true);
                return;
            }
            snprintf(msg, sizeof(msg), "restart failed: %s", vs_error_message());
        } else {
            snprintf(msg, sizeof(msg), "restarted 5 times within 60 s; left stopped");
        }
        action = VM_ACTION_DESTROY;
    }
    if (action == VM_ACTION_PRESERVE) {
        /* keep the run directory (log, console, undo overlays) for inspection */
        runtime_set(d, rt, code == 0 || code == 2 ? "shutoff" : "crashed", code, msg, false);
        return;
    }
    remove_run_files(d, rt->name, RUN_KEEP_LOG);
    runtime_set(d, rt, "shutoff", code, msg, false);
}

/* ---- watching a VMM for the pauses it makes by itself ------------------------------------------
 */

static void watch_close(struct mgmt_vm_runtime *rt)
{
    if (rt->watch_fd >= 0)
        close(rt->watch_fd);
    rt->watch_fd = -1;
    rt->watch_len = 0;
}

/* Connect to a live VM's control socket and ask to be told of its pauses (at most once a second
 * per VM while it fails: the socket appears only once the VMM runs). */
static void watch_open(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt)
{
    uint64_t now = vs_now_ns();
    if (now < rt->watch_retry_ns)
        return;
    rt->watch_retry_ns = now + 1000000000ull;
    char api[PATH_MAX];
    static const char req[] = "{\"cmd\":\"watch\"}\n";
    if (mgmt_run_path(d, rt->name, "api.sock", api, sizeof(api)))
        return;
    int fd = mgmt_unix_connect(api, SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(req) - 1) {
        close(fd);
        return;
    }
    rt->watch_fd = fd;
    rt->watch_len = 0;
}

/* A line from the VMM: the answer to "watch" or a state event, both {"state":…[,"reason":…]}. A
 * pause with a reason is the VMM's own (a full host disk): record it, reason as the detail. Pauses
 * and resumes the daemon asked for are recorded by the API path that asked. */
static void watch_line(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt, const char *line)
{
    json_object *o = json_tokener_parse(line), *state, *reason;
    if (o && json_object_object_get_ex(o, "state", &state) &&
        json_object_object_get_ex(o, "reason", &reason) &&
        !strcmp(json_object_get_string(state), "paused")) {
        pthread_mutex_lock(&rt->lock);
        if (rt->keeper_pidfd >= 0 && !strcmp(rt->state, "running"))
            runtime_set(d, rt, "paused", -1, json_object_get_string(reason), false);
        pthread_mutex_unlock(&rt->lock);
    }
    json_object_put(o);
}

static void watch_input(struct mgmt_daemon *d, struct mgmt_vm_runtime *rt)
{
    ssize_t n = read(rt->watch_fd, rt->watch_buf + rt->watch_len,
                     sizeof(rt->watch_buf) - 1 - rt->watch_len);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            watch_close(rt); /* the VMM ended (its keeper tells how) or hung up */
        return;
    }
    rt->watch_len += (size_t)n;
    rt->watch_buf[rt->watch_len] = 0;
    char *start = rt->watch_buf, *nl;
    while ((nl = strchr(start, '\n'))) {
        *nl = 0;
        watch_line(d, rt, start);
        start = nl + 1;
    }
    rt->watch_len -= (size_t)(start - rt->watch_buf);
    memmove(rt->watch_buf, start, rt->watch_len);
    if (rt->watch_len == sizeof(rt->watch_buf) - 1)
        watch_close(rt); /* no line ever this long: not our VMM */
}

void *mgmt_monitor_thread(void *arg)
{
    struct mgmt_daemon *d = arg;
    while (!atomic_load(&d->stopping)) {
        struct pollfd fds[2048];
        struct mgmt_vm_runtime *owners[2048];
        bool is_watch[2048];
        size_t n = 1;
        fds[0] = (struct pollfd){.fd = d->monitor_wake[0], .events = POLLIN};
        pthread_mutex_lock(&d->vms_lock);
        for (struct mgmt_vm_runtime *rt = d->vms; rt && n + 1 < VS_ARRAY_SIZE(fds); rt = rt->next) {
            /* keeper_pidfd is only changed under rt->lock; a stale read is harmless: the
             * handler below re-checks it */
            int fd = __atomic_load_n(&rt->keeper_pidfd, __ATOMIC_RELAXED);
            if (fd >= 0) {
                fds[n] = (struct pollfd){.fd = fd, .events = POLLIN};
                is_watch[n] = false;
                owners[n++] = rt;
                if (rt->watch_fd < 0)
                    watch_open(d, rt);
                if (rt->watch_fd >= 0) {
                    fds[n] = (struct pollfd){.fd = rt->watch_fd, .events = POLLIN};
                    is_watch[n] = true;
                    owners[n++] = rt;
                }
            } else if (rt->watch_fd >= 0) {
                watch_close(rt);
            }
        }
        pthread_mutex_unlock(&d->vms_lock);
        int r = poll(fds, n, 1000);
        if (r <= 0)
            continue;
        if (fds[0].revents) {
            char buf[64];
            ssize_t ignored = read(d->monitor_wake[0], buf, sizeof(buf));
            (void)ignored;
        }
        for (size_t i = 1; i < n; i++) {
            if (fds[i].revents && is_watch[i])
                watch_input(d, owners[i]);
        }
        for (size_t i = 1; i < n; i++) {
            if (!fds[i].revents || is_watch[i])
                continue;
            struct mgmt_vm_runtime *rt = owners[i];
            pthread_mutex_lock(&rt->lock);
            struct pollfd again = {.fd = rt->keeper_pidfd, .events = POLLIN};
            if (rt->keeper_pidfd == fds[i].fd && poll(&again, 1, 0) == 1)
                handle_exit_locked(d, rt, read_exit_code(d, rt->name));
            pthread_mutex_unlock(&rt->lock);
        }
    }
    return NULL;
}

/* ---- daemon start: re-attach and autostart ----------------------------------------------------
 */

static void reattach_one(struct mgmt_daemon *d, const struct mgmt_vm_record *rec)
{
    struct mgmt_vm_runtime *rt = mgmt_vm_runtime_get(d, rec->name);
    if (!rt)
        return;
    pthread_mutex_lock(&rt->lock);
    char path[PATH_MAX];
    int keeper = 0, vmm = 0;
    if (!mgmt_run_path(d, rec->name, "keeper.pid", path, sizeof(path))) {
        FILE *f = fopen(path, "re");
        if (f) {
            if (fscanf(f, "%d %d", &keeper, &vmm) != 2)
                keeper = vmm = 0;
            fclose(f);
        }
    }
    int pidfd = keeper > 0 ? pidfd_open_checked(keeper) : -ESRCH;
    if (pidfd >= 0) {
        char api[PATH_MAX], *reply = NULL;
        const char *state = "running";
        if (!mgmt_run_path(d, rec->name, "api.sock", api, sizeof(api)) &&
            !mgmt_vmm_command(api, "status", 3000, &reply)) {
            json_object *o = json_tokener_parse(reply);
            json_object *s;
            if (o && json_object_object_get_ex(o, "state", &s) &&
                !strcmp(json_object_get_string(s), "paused"))
                state = "paused";
            json_object_put(o);
            free(reply);
        }
        rt->pid = vmm;
        rt->keeper_pid = keeper;
        rt->keeper_pidfd = pidfd;
        snprintf(rt->uuid, sizeof(rt->uuid), "%s", rec->uuid);
        snprintf(rt->state, sizeof(rt->state), "%s", state);
        mgmt_disks_claim_definition(d, rec->name, true);
        if (strcmp(rec->state, state) || rec->pid != vmm)
            mgmt_store_set_state(d->store, rec->name, state, vmm, keeper, -1, NULL, false);
        else
            mgmt_store_event(d->store, rec->name, "reattached", NULL);
    } else if (mgmt_state_is_live(rec->state)) {
        /* it ended while we were away: the keeper's exit file says how */
        snprintf(rt->state, sizeof(rt->state), "%s", rec->state);
        snprintf(rt->uuid, sizeof(rt->uuid), "%s", rec->uuid); /* its cgroup goes with it */
        int code = read_exit_code(d, rec->name);
        if (code < 0) {
            rt->stop_requested = false;
            remove_run_files(d, rec->name, RUN_KEEP_LOG);
            runtime_set(d, rt, "crashed", -1, "vessel-vmm vanished while vesseld was away", false);
        } else {
            handle_exit_locked(d, rt, code);
        }
    } else {
        snprintf(rt->state, sizeof(rt->state), "%s", rec->state);
        /* a daemon killed between making the taps and recording the start left them behind */
        mgmt_nics_release(d, rec->name);
    }
    pthread_mutex_unlock(&rt->lock);
}

int mgmt_supervisor_reattach(struct mgmt_daemon *d)
{
    struct mgmt_vm_record *list;
    size_t count;
    int err = mgmt_store_list(d->store, &list, &count);
    if (err)
        return err;
    for (size_t i = 0; i < count; i++) {
        reattach_one(d, &list[i]);
        mgmt_vm_record_free(&list[i]);
    }
    free(list);
    /* run directories of VMs the store doesn't know: report, never kill */
    DIR *dh = opendir(d->run_dir);
    struct dirent *e;
    while (dh && (e = readdir(dh))) {
        if (e->d_name[0] == '.')
            continue;
        struct mgmt_vm_record rec;
        if (mgmt_store_get(d->store, e->d_name, &rec) == 0)
            mgmt_vm_record_free(&rec);
        else
            vs_warn("run directory %s/%s belongs to no defined VM", d->run_dir, e->d_name);
    }
    if (dh)
        closedir(dh);
    vs_error_clear();
    mgmt_monitor_wake(d);
    return 0;
}

void mgmt_supervisor_autostart(struct mgmt_daemon *d, struct mgmt_vm_record *list, size_t count)
{
    for (size_t i = 0; i < count && !atomic_load(&d->stopping); i++) {
        struct vm_def *def = NULL;
        if (list[i].autostart &&
            vm_def_parse(list[i].definition, strlen(list[i].definition), list[i].name, &def) == 0) {
            /* `autostart on` over a definition saying never means always */
            bool go = def->autostart != VM_AUTOSTART_WAS_RUNNING || list[i].was_running;
            for (unsigned s = 0; go && s < def->autostart_delay && !atomic_load(&d->stopping); s++)
                sleep(1);
            /* a saved VM comes back where it was (xendomains' save at shutdown, restore at boot) */
            char vm[VM_DEF_NAME_MAX + 1], file[PATH_MAX];
            int err =
                !go ? 0
                : !strcmp(list[i].state, "saved")
                    ? mgmt_vm_restore(d, list[i].name, NULL, vm, sizeof(vm), file, sizeof(file))
                    : mgmt_vm_start(d, list[i].name, false);
            if (err && err != -EBUSY)
                vs_warn("autostart %s: %s", list[i].name, vs_error_message());
            vm_def_free(def);
        }
    }
    for (size_t i = 0; i < count; i++)
        mgmt_vm_record_free(&list[i]);
    free(list);
}
