/*
 * vessel/mgmt.h — the management side: the daemon's store (SQLite), its HTTP/1.1 + JSON API on a
 * unix socket (and, optionally, TCP with TLS and a bearer token), its event stream and hooks, the
 * supervisor of vessel-vmm processes, and the client the CLI uses.
 *
 * The idea: the daemon owns no VM. Definitions and states live in SQLite (WAL, one transaction per
 * change), each running VM is a vessel-vmm in its own session whose only tie to the daemon is a
 * directory DIR/run/NAME/ (api.sock, console.sock, vmm.log, keeper.pid, exit, nics: its taps on
 * the networks of DIR/net). A small "keeper" process (same session as the VMM) waits for the VMM
 * and writes its exit code to a file, so a daemon that was killed and restarted finds every VM
 * again by that directory and still learns how a VM that died meanwhile ended, and applies its
 * on_poweroff/on_reboot/on_crash policy.
 *
 * Errors: negative errno and a one-line message in vs_error_message().
 */
#ifndef VESSEL_MGMT_H
#define VESSEL_MGMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vessel/util.h"

#define MGMT_DEFAULT_STATE_DIR "/var/lib/vessel"
#define MGMT_SOCKET_NAME       "vesseld.sock"
#define MGMT_SCHEMA_VERSION    4

/* ---- store (lib/mgmt/store.c) ---------------------------------------------------------------- */

struct mgmt_store;

/* What the store remembers of one VM besides its definition text. */
struct mgmt_vm_record {
    char name[65];
    char uuid[37];
    char *definition; /* canonical vessel text (malloc'd) */
    char state[16];   /* shutoff, running, paused, crashed, saved */
    int64_t pid;      /* vessel-vmm, 0 when not running */
    int64_t keeper_pid;
    int64_t started_at; /* unix seconds, 0 when not running */
    int64_t boots;      /* how often it was started (restarts by policy included) */
    int64_t generation; /* bumped by every change: a lost update shows as a missing bump */
    int64_t last_exit;  /* vessel-vmm exit code of the last run, -1 none */
    char last_error[256];
    bool autostart;        /* true when the definition says always or was-running */
    bool was_running;      /* running when the daemon last saw it (autostart = was-running) */
    char saved_path[4096]; /* state 'saved': the state file it was saved to, else "" */
    char saved_id[33];     /* that save's id (the file's own), "" when unknown */
};

void mgmt_vm_record_free(struct mgmt_vm_record *rec); /* frees the members, not rec */

/* Open (creating) DIR/vessel.db: WAL, foreign keys, schema migrated to MGMT_SCHEMA_VERSION. */
int mgmt_store_open(const char *path, struct mgmt_store **out);
void mgmt_store_close(struct mgmt_store *store);
/* Insert or replace a definition (by name); uuid must not belong to another name. -EEXIST when
 * the name exists and replace is false. */
int mgmt_store_define(struct mgmt_store *store, const char *name, const char *uuid,
                      const char *definition, bool autostart, bool replace);
/* -ENOENT unknown, -EBUSY when not shut off. */
int mgmt_store_undefine(struct mgmt_store *store, const char *name);
int mgmt_store_get(struct mgmt_store *store, const char *name, struct mgmt_vm_record *out);
/* All VMs, ordered by name; free each with mgmt_vm_record_free and the array with free. */
int mgmt_store_list(struct mgmt_store *store, struct mgmt_vm_record **out, size_t *count);
/* Record a state change in one transaction (with an event row). pid/keeper_pid 0 clear them. */
int mgmt_store_set_state(struct mgmt_store *store, const char *name, const char *state, int64_t pid,
                         int64_t keeper_pid, int64_t last_exit, const char *error, bool count_boot);
int mgmt_store_set_autostart(struct mgmt_store *store, const char *name, bool on);
/* As mgmt_store_set_state, but the event row is named event (NULL: the state's name). */
int mgmt_store_transition(struct mgmt_store *store, const char *name, const char *state,
                          const char *event, int64_t pid, int64_t keeper_pid, int64_t last_exit,
                          const char *error, bool count_boot);
/* State 'saved' with the state file's path and save id (any other transition forgets both), pid
 * cleared, and the event 'saved' (detail: path) in one transaction. */
int mgmt_store_saved(struct mgmt_store *store, const char *name, const char *path,
                     const char *saved_id, int64_t last_exit);
/* The VM in state 'saved' whose state file is path (as recorded); -ENOENT naming path if none. */
int mgmt_store_find_saved(struct mgmt_store *store, const char *path, char *name, size_t len);
/* Append an event (started, stopped, crashed, rebooted, …). */
int mgmt_store_event(struct mgmt_store *store, const char *name, const char *event,
                     const char *detail);

/* One row of the events table. */
struct mgmt_event {
    int64_t id;
    int64_t time; /* unix seconds */
    char vm[65];
    char event[32];
    char detail[512]; /* truncated */
};

/* Called after every committed event row, outside the store's lock, from the committing thread. */
typedef void (*mgmt_event_notify_fn)(void *arg, const struct mgmt_event *event);
void mgmt_store_set_notify(struct mgmt_store *store, mgmt_event_notify_fn fn, void *arg);
/* Events with id > after, oldest first, at most max; *out is malloc'd (free it). */
int mgmt_store_events_since(struct mgmt_store *store, int64_t after, size_t max,
                            struct mgmt_event **out, size_t *count);
/* The id of the newest event (0 when none). */
int64_t mgmt_store_last_event_id(struct mgmt_store *store);
/* Snapshots: names of external overlays, per VM, in creation order. */
int mgmt_store_snapshot_add(struct mgmt_store *store, const char *vm, const char *snap,
                            const char *definition);
int mgmt_store_snapshot_get(struct mgmt_store *store, const char *vm, const char *snap,
                            char **definition);
int mgmt_store_snapshot_delete(struct mgmt_store *store, const char *vm, const char *snap);
int mgmt_store_snapshot_list(struct mgmt_store *store, const char *vm, char ***names,
                             size_t *count);
/* Storage pools: a name and a directory (its volumes are the files in it). */
struct mgmt_pool_record {
    char name[65];
    char path[4096];
    int64_t created_at; /* unix seconds */
};
/* -EEXIST when the name or the path already belongs to a pool (the message names it). */
int mgmt_store_pool_define(struct mgmt_store *store, const char *name, const char *path);
/* Forgets the pool (its files stay); -ENOENT unknown. */
int mgmt_store_pool_undefine(struct mgmt_store *store, const char *name);
int mgmt_store_pool_get(struct mgmt_store *store, const char *name, struct mgmt_pool_record *out);
/* All pools ordered by name; *out is malloc'd (free it). */
int mgmt_store_pool_list(struct mgmt_store *store, struct mgmt_pool_record **out, size_t *count);
/* PRAGMA integrity_check == "ok": 0, else -EIO with the first complaint. */
int mgmt_store_check(struct mgmt_store *store);

/* ---- HTTP (lib/mgmt/http.c) ------------------------------------------------------------------ */

#define MGMT_HTTP_MAX_HEAD    8192 /* request line + headers */
#define MGMT_HTTP_MAX_HEADERS 32
#define MGMT_HTTP_MAX_BODY    (1 << 20) /* a definition is a few KiB; 1 MiB is generous */

struct mgmt_http_request {
    char method[8];
    char path[1024];  /* percent-decoded, without the query */
    char query[1024]; /* raw, without '?' */
    size_t content_length;
    bool has_body;
    char content_type[64];
    char authorization[256]; /* the Authorization header's value, "" when absent */
    size_t head_len;         /* bytes of request line + headers + blank line */
};

/*
 * Parse the head of a request in buf[0..len). Returns 1 when complete (req filled), 0 when more
 * bytes are needed, or a negative errno with a one-line message and *http_status set (400, 405,
 * 413, 414, 431, 501, 505); no Content-Length means no body. Strict: CRLF line ends, HTTP/1.0
 * or 1.1, no obs-fold, no Transfer-Encoding, one Content-Length of digits, limits above.
 */
int mgmt_http_parse_head(const char *buf, size_t len, struct mgmt_http_request *req,
                         int *http_status);
/* The value of KEY in a query string ("a=1&b=x%20y"), percent-decoded into out. false if absent. */
bool mgmt_http_query_get(const char *query, const char *key, char *out, size_t out_len);
/* Percent-decode; -EINVAL on a bad escape or a NUL byte. */
int mgmt_http_percent_decode(const char *in, size_t len, char *out, size_t out_len);
const char *mgmt_http_reason(int status);

/*
 * Client side: one request to target, one response. target is a unix socket path ("unix:PATH" or
 * a bare path) or "tls:HOST:PORT" (TLS, the server's certificate verified against the CA file set
 * by mgmt_client_set_tls or the system's, the bearer token sent). *response is malloc'd.
 */
int mgmt_client_request(const char *target, const char *method, const char *path,
                        const char *content_type, const char *body, size_t body_len, int *status,
                        char **response, size_t *response_len);
/* A streamed answer (the event stream, a copy's progress): METHOD with no body, then line_fn for
 * every line of a 2xx body until the server closes or line_fn returns non-zero. A non-2xx status
 * sets *status and returns 0 with the body in *error_body (malloc'd). */
int mgmt_client_stream(const char *target, const char *method, const char *path, int *status,
                       char **error_body, int (*line_fn)(void *arg, const char *line), void *arg);
/* TLS client settings: the CA file that signs the daemon's certificate (NULL: system store) and
 * the bearer token (NULL: $VESSEL_TOKEN). Copied. */
int mgmt_client_set_tls(const char *cacert, const char *token);
/* The target a CLI uses: explicit --connect (unix:PATH, a path, or tls:HOST:PORT), else
 * $VESSEL_SOCKET, else the default socket. */
const char *mgmt_client_socket_path(const char *connect);

/* ---- vessel-vmm control socket (lib/mgmt/vmmctl.c) ------------------------------------------- */

/* Send {"cmd":CMD} to the VMM API socket and return the one-line reply (malloc'd JSON text). */
int mgmt_vmm_command(const char *api_socket, const char *cmd, int timeout_ms, char **reply);
/* The same with a whole request object (one line of JSON, without the newline). */
int mgmt_vmm_request(const char *api_socket, const char *request, int timeout_ms, char **reply);

/* ---- the daemon (lib/mgmt/daemon.c, supervisor.c, api.c) ------------------------------------- */

struct mgmt_daemon_config {
    const char *state_dir;  /* DIR: vessel.db, vesseld.sock, run/, disks of clones, net/ */
    const char *vmm_path;   /* the vessel-vmm program */
    unsigned max_clients;   /* concurrent API connections (0 = 64) */
    const char *listen;     /* optional "tcp:HOST:PORT": TLS + token only */
    const char *tls_cert;   /* PEM certificate (chain) for the TCP listener */
    const char *tls_key;    /* its PEM private key */
    const char *token_file; /* the bearer token clients must send over TCP */
    unsigned hook_timeout;  /* seconds before a hook is killed (0 = 10) */
};

/* Run the daemon until SIGTERM/SIGINT: open the store, re-attach running VMs, autostart, serve. */
int mgmt_daemon_run(const struct mgmt_daemon_config *config);

#endif
