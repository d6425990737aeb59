/*
 * lib/mgmt/mgmt-internal.h — what the daemon's files share: the daemon, the in-memory runtime of
 * each VM (its lock, the keeper's pidfd) and the supervisor's entry points.
 *
 * The idea: SQLite is the record, the runtime is the lock. Every operation on one VM holds that
 * VM's mutex for its whole duration (start, stop, exit handling), so two clients racing on a VM
 * are serialised and every transition is written to the store before the lock is released.
 */
#ifndef VESSEL_MGMT_INTERNAL_H
#define VESSEL_MGMT_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "vessel/defs.h"
#include "vessel/mgmt.h"

struct mgmt_vm_runtime {
    char name[VM_DEF_NAME_MAX + 1];
    pthread_mutex_t lock;
    pthread_cond_t changed;    /* broadcast after every state change */
    char state[16];            /* shutoff, running, paused, crashed */
    pid_t pid, keeper_pid;     /* vessel-vmm and its keeper; 0 when not running */
    int keeper_pidfd;          /* -1 when none; readable when the keeper exited */
    bool stop_requested;       /* destroy/shutdown asked: no policy on this exit */
    uint64_t transitions;      /* bumped on every state change (waiters compare) */
    uint64_t restart_times[5]; /* crash-loop guard: the last policy restarts */
    struct mgmt_vm_runtime *next;
};

struct mgmt_daemon {
    char state_dir[PATH_MAX];
    char run_dir[PATH_MAX];
    char disk_dir[PATH_MAX];
    char socket_path[PATH_MAX];
    char vmm_path[PATH_MAX];
    struct mgmt_store *store;
    pthread_mutex_t vms_lock; /* guards the list, not the entries */
    struct mgmt_vm_runtime *vms;
    int monitor_wake[2];
    atomic_bool stopping;
    atomic_uint clients;
    unsigned max_clients;
};

/* The runtime of NAME, created on first use (never freed before the daemon ends). */
struct mgmt_vm_runtime *mgmt_vm_runtime_get(struct mgmt_daemon *d, const char *name);
bool mgmt_state_is_live(const char *state);

/* supervisor.c — all take the runtime unlocked and lock it themselves. */
int mgmt_vm_start(struct mgmt_daemon *d, const char *name, bool paused);
/* Remove a shut-off VM's definition and its run directory. */
int mgmt_vm_undefine(struct mgmt_daemon *d, const char *name);
int mgmt_vm_destroy(struct mgmt_daemon *d, const char *name);
int mgmt_vm_shutdown(struct mgmt_daemon *d, const char *name);
int mgmt_vm_reboot(struct mgmt_daemon *d, const char *name);
int mgmt_vm_pause(struct mgmt_daemon *d, const char *name, bool pause);
/* Ask the VMM (status or stats); *reply is a JSON text. -EINVAL when not running. */
int mgmt_vm_query(struct mgmt_daemon *d, const char *name, const char *cmd, char **reply);
/* Re-attach to VMs that survived a daemon restart; handle those that ended meanwhile. */
int mgmt_supervisor_reattach(struct mgmt_daemon *d);
/* Start VMs marked autostart (always, or was-running and running before): list is the store as it
 * was before re-attaching, consumed. */
void mgmt_supervisor_autostart(struct mgmt_daemon *d, struct mgmt_vm_record *list, size_t count);
/* The monitor thread: waits on every keeper's pidfd and applies the exit policies. */
void *mgmt_monitor_thread(void *arg);
void mgmt_monitor_wake(struct mgmt_daemon *d);
/* DIR/run/NAME/FILE into buf. */
int mgmt_run_path(struct mgmt_daemon *d, const char *name, const char *file, char *buf, size_t len);

/* api.c: one connection, read → route → respond → close. */
void mgmt_api_serve_connection(struct mgmt_daemon *d, int fd);
/* storage.c: clone and external snapshots. */
int mgmt_vm_clone(struct mgmt_daemon *d, const char *name, const char *new_name, bool full_copy);
int mgmt_vm_snapshot_create(struct mgmt_daemon *d, const char *name, const char *snap);
int mgmt_vm_snapshot_revert(struct mgmt_daemon *d, const char *name, const char *snap);

#endif
