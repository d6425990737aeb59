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

#include <openssl/ssl.h>

#include "vessel/defs.h"
#include "vessel/mgmt.h"

struct mgmt_vm_runtime {
    char name[VM_DEF_NAME_MAX + 1];
    pthread_mutex_t lock;
    pthread_cond_t changed;    /* broadcast after every state change */
    char state[16];            /* shutoff, running, paused, crashed, saved */
    pid_t pid, keeper_pid;     /* vessel-vmm and its keeper; 0 when not running */
    int keeper_pidfd;          /* -1 when none; readable when the keeper exited */
    bool stop_requested;       /* destroy/shutdown asked: no policy on this exit */
    uint64_t transitions;      /* bumped on every state change (waiters compare) */
    uint64_t restart_times[5]; /* crash-loop guard: the last policy restarts */
    char uuid[37];             /* the running VM's, for its CPU cgroup; "" when not live */
    /* The monitor thread's own (no lock): a {"cmd":"watch"} connection to the running VMM, which
     * says when the VMM paused the VM by itself (a full host disk); -1 when none. */
    int watch_fd;
    uint64_t watch_retry_ns;
    size_t watch_len;
    char watch_buf[2048];
    struct mgmt_vm_runtime *next;
};

/* A byte stream to a peer: a socket, with TLS when ssl is set (tls.c). */
struct mgmt_conn {
    int fd;
    SSL *ssl;
    bool need_token; /* TCP: every request must carry the bearer token */
};

/* Read up to len bytes, waiting at most timeout_ms: bytes, 0 at EOF, or -errno (-ETIMEDOUT). */
ssize_t mgmt_conn_read(struct mgmt_conn *c, void *buf, size_t len, int timeout_ms);
int mgmt_conn_write(struct mgmt_conn *c, const void *buf, size_t len);
void mgmt_conn_close(struct mgmt_conn *c); /* TLS close_notify, then close the socket */
void mgmt_socket_timeouts(int fd, int seconds);
int mgmt_split_host_port(const char *spec, char *host, size_t host_len, char *port,
                         size_t port_len);
/* Listening TCP socket on HOST:PORT (non-blocking, close-on-exec), or -errno. */
int mgmt_tcp_listen(const char *spec);
int mgmt_tls_server_context(const char *cert, const char *key, SSL_CTX **out);
int mgmt_tls_accept(SSL_CTX *ctx, struct mgmt_conn *c);
/* Connect to HOST:PORT and complete a verified TLS handshake. */
int mgmt_tls_connect(const char *spec, const char *cacert, struct mgmt_conn *c);

struct json_object;     /* json-c */
struct mgmt_hooks;      /* hooks.c */
struct mgmt_disk_claim; /* disklock.c */

struct mgmt_daemon {
    char state_dir[PATH_MAX];
    char run_dir[PATH_MAX];
    char disk_dir[PATH_MAX];
    char net_dir[PATH_MAX]; /* DIR/net: the networks' store (vessel net --state DIR/net) */
    char socket_path[PATH_MAX];
    char vmm_path[PATH_MAX];
    struct mgmt_store *store;
    pthread_mutex_t vms_lock; /* guards the list, not the entries */
    struct mgmt_vm_runtime *vms;
    int monitor_wake[2];
    atomic_bool stopping;
    atomic_uint clients;
    unsigned max_clients;
    SSL_CTX *tls;    /* the TCP listener's context; NULL without --listen */
    char token[256]; /* the bearer token for TCP clients */
    /* the event stream: the newest event id, broadcast on every committed event */
    pthread_mutex_t events_lock;
    pthread_cond_t events_changed;
    int64_t last_event;
    struct mgmt_hooks *hooks;
    pthread_mutex_t claims_lock; /* guards claims */
    struct mgmt_disk_claim *claims;
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
/* Save a running or paused VM to path (absolute; never an existing file) like `xm save`: the VMM
 * writes the state file and exits with code 5, the VM ends in state 'saved' (taps and disk claims
 * released, event 'saved'). saved: the file's canonical path. */
int mgmt_vm_save(struct mgmt_daemon *d, const char *name, const char *path, char *saved,
                 size_t saved_len);
/* Resume a saved VM under its keeper (`vessel-vmm --restore`): by name (its recorded file), or by
 * file (name NULL: the VM saved to it). Taps and disk claims first; event 'restored'. A VMM that
 * refuses the file leaves the VM saved and nothing else behind. vm_out/file_out: what was
 * restored. */
int mgmt_vm_restore(struct mgmt_daemon *d, const char *name, const char *file, char *vm_out,
                    size_t vm_len, char *file_out, size_t file_len);
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
/* A stream socket connected to the unix socket PATH (FLAGS: more SOCK_* flags, like
 * SOCK_NONBLOCK): the fd, or -errno (-ENAMETOOLONG: too long for an address); the caller words
 * the message. http.c. */
int mgmt_unix_connect(const char *path, int flags);
/* Write TEXT to DIR/run/NAME/FILE by rename (fsynced), so a reader never sees half of it. */
int mgmt_run_file_write(struct mgmt_daemon *d, const char *name, const char *file,
                        const char *text);

/* api.c: one connection, read → route → respond (the caller closes). */
void mgmt_api_serve_connection(struct mgmt_daemon *d, struct mgmt_conn *c);
/* Constant-time check of an Authorization header value against "Bearer TOKEN". */
bool mgmt_token_matches(const char *authorization, const char *token);

/* disklock.c: claim the disks of def for vm (-EBUSY naming the holder on a conflict; force
 * records the claims anyway, for VMs found running at re-attach); release when vm stops. */
int mgmt_disks_claim(struct mgmt_daemon *d, const char *vm, const struct vm_def *def, bool force);
int mgmt_disks_claim_definition(struct mgmt_daemon *d, const char *vm, bool force);
void mgmt_disks_release(struct mgmt_daemon *d, const char *vm);
void mgmt_disks_release_all(struct mgmt_daemon *d);
/* Whether a running VM claims file (by identity): its name into vm, and whether it writes it. */
bool mgmt_disks_holder(struct mgmt_daemon *d, const char *file, char *vm, size_t vm_len,
                       bool *writable);

/* nics.c: the taps of a VM's NICs. attach makes one per [nic] (on its network through lib/net, or
 * on its host bridge), recorded in DIR/run/VM/nics; on failure nothing is left and the message
 * names the VM, the NIC and the network. release deletes what the record names (idempotent). */
int mgmt_nics_attach(struct mgmt_daemon *d, const struct vm_def *def);
void mgmt_nics_release(struct mgmt_daemon *d, const char *vm);
/* "vs" + the first 8 hex digits of the uuid + the NIC's index. */
void mgmt_nic_tap_name(const struct vm_def *def, size_t index, char out[16]);
/* [{"tap", "network" or "bridge"}…] of the VM's recorded taps (empty when it is not running). */
struct json_object *mgmt_nics_json(struct mgmt_daemon *d, const char *vm);

/* hooks.c: executables in DIR/hooks/ run for each lifecycle event, one at a time, off the
 * committing thread, killed after timeout_s; output to DIR/log/hooks.log. */
int mgmt_hooks_start(const char *state_dir, unsigned timeout_s, struct mgmt_hooks **out);
void mgmt_hooks_queue(struct mgmt_hooks *h, const char *vm, const char *event, const char *detail);
void mgmt_hooks_stop(
    struct mgmt_hooks *h); /* waits for the running hook (bounded by its timeout) */
/* cgroup.c: the VM's CPU cgroup (vessel/UUID under the v2 or v1 cpu controller) with cpu_weight
 * and cpu_cap applied. The keeper joins it through procs_fd and, once its VMM has exited, moves
 * itself to root_procs and removes dir — so a group never outlives its VM, daemon or not.
 * procs_fd is -1 when there is no controller and the definition asks for neither. */
struct mgmt_cgroup {
    int procs_fd;
    char dir[PATH_MAX];
    char root_procs[64];
};
int mgmt_cgroup_prepare(const struct vm_def *def, struct mgmt_cgroup *cg);
void mgmt_cgroup_close(struct mgmt_cgroup *cg); /* the daemon's copy of procs_fd, after the fork */
void mgmt_cgroup_remove(const char *uuid);      /* a group whose keeper could not remove it */

/* storage.c: clone and external snapshots. The copies clone (full) and template make report to
 * PROGRESS when given: bytes done and total over all the disks copied. */
struct mgmt_progress {
    void (*fn)(void *ctx, uint64_t done, uint64_t total); /* an img_progress_fn */
    void *ctx;
};
int mgmt_vm_clone(struct mgmt_daemon *d, const char *name, const char *new_name, bool full_copy,
                  const struct mgmt_progress *progress);
int mgmt_vm_snapshot_create(struct mgmt_daemon *d, const char *name, const char *snap);
int mgmt_vm_snapshot_revert(struct mgmt_daemon *d, const char *name, const char *snap);
/* A gold image: the first writable disk of a shut-off VM, its whole chain converted into one
 * standalone qcow2 at path (absolute), or as volume `volume` of pool `pool` when pool is set. Never
 * overwrites a file. *out: {vm, disk, path, format, virtual_size, disk_usage}. */
int mgmt_vm_template(struct mgmt_daemon *d, const char *name, const char *pool, const char *volume,
                     const char *path, bool compress, const struct mgmt_progress *progress,
                     struct json_object **out);

/* pool.c: storage pools (directories in the store) and their volumes (the files in them). Every
 * answer is a JSON object (*out, a new reference). */
struct mgmt_volume_params {
    const char *pool, *name;
    uint64_t size;
    bool size_given;     /* false: the backing file's size */
    const char *format;  /* NULL: qcow2 */
    const char *backing; /* a volume of the same pool (bare name) or an absolute path; NULL none */
};
int mgmt_pool_define(struct mgmt_daemon *d, const char *name, const char *path,
                     struct json_object **out);
/* Refused (-EBUSY, naming the VM) while a defined VM uses one of its volumes; files stay. */
int mgmt_pool_undefine(struct mgmt_daemon *d, const char *name);
int mgmt_pool_list(struct mgmt_daemon *d, struct json_object **out);
int mgmt_pool_info(struct mgmt_daemon *d, const char *name, struct json_object **out);
/* The file of volume in pool (the name checked: no '/', no leading '.'). */
int mgmt_pool_volume_path(struct mgmt_daemon *d, const char *pool, const char *volume, char *buf,
                          size_t len);
int mgmt_volume_list(struct mgmt_daemon *d, const char *pool, struct json_object **out);
int mgmt_volume_create(struct mgmt_daemon *d, const struct mgmt_volume_params *params,
                       struct json_object **out);
/* Refused (-EBUSY, naming the user) while a defined VM's disk chain or another volume reads it. */
int mgmt_volume_delete(struct mgmt_daemon *d, const char *pool, const char *name);
/* Refused while a running VM holds it or something uses it as a backing file; shrinking only
 * with shrink. */
int mgmt_volume_resize(struct mgmt_daemon *d, const char *pool, const char *name, uint64_t size,
                       bool shrink, struct json_object **out);
/* Reserve path (O_EXCL): new images never overwrite an existing file. */
int mgmt_reserve_file(const char *path);

#endif
