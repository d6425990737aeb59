/*
 * lib/mgmt/daemon.c — vesseld's main loop: state directory, store, re-attach, the API socket and
 * one thread per connection.
 *
 * The idea: the daemon holds nothing that a kill -9 could lose. Everything that matters was
 * committed to SQLite before an API call returned, and every VM runs in its own session; so start
 * up is "open the store, re-attach what runs, serve", and shutdown is just "stop serving" — VMs
 * keep running across daemon restarts by design.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include "mgmt/mgmt-internal.h"

struct connection {
    struct mgmt_daemon *daemon;
    struct mgmt_conn conn;
};

static void *connection_thread(void *arg)
{
    struct connection *c = arg;
    struct mgmt_daemon *d = c->daemon;
    bool ok = true;
    if (c->conn.need_token) {
        /* TCP: a stalled peer must not hold this thread inside the handshake */
        mgmt_socket_timeouts(c->conn.fd, 10);
        ok = mgmt_tls_accept(d->tls, &c->conn) == 0;
    }
    if (ok)
        mgmt_api_serve_connection(d, &c->conn);
    if (c->conn.ssl) {
        mgmt_conn_close(&c->conn);
    } else {
        /* lingering close: read what the client still sends (bounded) so it sees our answer
         * instead of a reset */
        shutdown(c->conn.fd, SHUT_WR);
        char sink[4096];
        for (int i = 0; i < 256; i++) {
            struct pollfd p = {.fd = c->conn.fd, .events = POLLIN};
            if (poll(&p, 1, 200) != 1 || read(c->conn.fd, sink, sizeof(sink)) <= 0)
                break;
        }
        close(c->conn.fd);
    }
    atomic_fetch_sub(&d->clients, 1);
    free(c);
    return NULL;
}

/* Every committed event: wake the event streams, queue the hooks. */
static void daemon_event(void *arg, const struct mgmt_event *ev)
{
    struct mgmt_daemon *d = arg;
    pthread_mutex_lock(&d->events_lock);
    if (ev->id > d->last_event)
        d->last_event = ev->id;
    pthread_cond_broadcast(&d->events_changed);
    pthread_mutex_unlock(&d->events_lock);
    mgmt_hooks_queue(d->hooks, ev->vm, ev->event, ev->detail);
}

/* The bearer token: the first line of the file, which must not be readable by others. */
static int read_token(const char *path, char *out, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 0077)) {
        close(fd);
        return vs_error(-EPERM, "%s: token file is readable by others (chmod 600)", path);
    }
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    if (n < 0)
        return vs_error_errno(-errno, "%s", path);
    out[n] = 0;
    out[strcspn(out, "\r\n")] = 0;
    if (strlen(out) < 16)
        return vs_error(-EINVAL, "%s: token must be at least 16 characters on the first line",
                        path);
    for (const char *p = out; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return vs_error(-EINVAL, "%s: token must be printable ASCII without spaces", path);
    return 0;
}

/* Disk space of the state directory: an event when it falls below 5 % (again after recovery). */
static void check_disk(struct mgmt_daemon *d, bool *low)
{
    struct statvfs sv;
    if (statvfs(d->state_dir, &sv) < 0 || sv.f_blocks == 0)
        return;
    double free_pct = 100.0 * (double)sv.f_bavail / (double)sv.f_blocks;
    bool now_low = free_pct < 5.0;
    if (now_low && !*low) {
        char detail[160];
        snprintf(detail, sizeof(detail), "%.100s: %.1f%% free", d->state_dir, free_pct);
        mgmt_store_event(d->store, "", "host-disk-low", detail);
    }
    *low = now_low;
}

static void *autostart_thread(void *arg)
{
    void **a = arg;
    struct mgmt_daemon *d = a[0];
    struct mgmt_vm_record *list = a[1];
    size_t count = (size_t)(uintptr_t)a[2];
    free(a);
    mgmt_supervisor_autostart(d, list, count);
    return NULL;
}

static int listen_unix(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return vs_error(-ENAMETOOLONG, "%s: socket path too long", path);
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return vs_error_errno(-errno, "socket");
    /* a live daemon answers; a stale socket file from a killed one is replaced */
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
        close(fd);
        return vs_error(-EADDRINUSE, "%s: another vesseld is serving this state directory", path);
    }
    unlink(path);
    mode_t old = umask(0077);
    int err = bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ? -errno : 0;
    umask(old);
    if (!err && listen(fd, 128) < 0)
        err = -errno;
    if (err) {
        close(fd);
        return vs_error_errno(err, "%s", path);
    }
    return fd;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return vs_error_errno(-errno, "%s", path);
    return 0;
}

int mgmt_daemon_run(const struct mgmt_daemon_config *config)
{
    struct mgmt_daemon *d = vs_calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    int err = 0, listen_fd = -1, sfd = -1;
    pthread_t monitor;
    bool monitor_started = false, autostart_started = false;
    pthread_t autostarter;
    d->monitor_wake[0] = d->monitor_wake[1] = -1;
    pthread_mutex_init(&d->vms_lock, NULL);
    pthread_mutex_init(&d->events_lock, NULL);
    pthread_mutex_init(&d->claims_lock, NULL);
    pthread_cond_init(&d->events_changed, NULL);
    int tcp_fd = -1;
    d->max_clients = config->max_clients ? config->max_clients : 64;
    const char *dir = config->state_dir ? config->state_dir : MGMT_DEFAULT_STATE_DIR;
    if (snprintf(d->state_dir, sizeof(d->state_dir), "%s", dir) >= (int)sizeof(d->state_dir) ||
        snprintf(d->run_dir, sizeof(d->run_dir), "%s/run", dir) >= (int)sizeof(d->run_dir) ||
        snprintf(d->disk_dir, sizeof(d->disk_dir), "%s/disks", dir) >= (int)sizeof(d->disk_dir) ||
        snprintf(d->net_dir, sizeof(d->net_dir), "%s/net", dir) >= (int)sizeof(d->net_dir) ||
        snprintf(d->socket_path, sizeof(d->socket_path), "%s/%s", dir, MGMT_SOCKET_NAME) >=
            (int)sizeof(d->socket_path) ||
        snprintf(d->vmm_path, sizeof(d->vmm_path), "%s", config->vmm_path) >=
            (int)sizeof(d->vmm_path)) {
        err = vs_error(-ENAMETOOLONG, "%s: state directory path too long", dir);
        goto out;
    }
    if (access(d->vmm_path, X_OK) < 0) {
        err = vs_error_errno(-errno, "%s: vessel-vmm not executable", d->vmm_path);
        goto out;
    }
    if ((err = make_dir(d->state_dir)) || (err = make_dir(d->run_dir)) ||
        (err = make_dir(d->disk_dir)))
        goto out;
    char db[PATH_MAX + 16];
    snprintf(db, sizeof(db), "%s/vessel.db", d->state_dir);
    if (config->listen) {
        /* never plaintext TCP: a TCP listener needs TLS and a token */
        if (strncmp(config->listen, "tcp:", 4)) {
            err = vs_error(-EINVAL, "--listen %s: expected tcp:HOST:PORT", config->listen);
            goto out;
        }
        if (!config->tls_cert || !config->tls_key || !config->token_file) {
            err = vs_error(-EINVAL,
                           "--listen %s needs --tls-cert, --tls-key and --token-file "
                           "(no plaintext or unauthenticated TCP)",
                           config->listen);
            goto out;
        }
        if ((err = read_token(config->token_file, d->token, sizeof(d->token))) ||
            (err = mgmt_tls_server_context(config->tls_cert, config->tls_key, &d->tls)))
            goto out;
    }
    if ((err = mgmt_store_open(db, &d->store)))
        goto out;
    d->last_event = mgmt_store_last_event_id(d->store);
    if ((err = mgmt_hooks_start(d->state_dir, config->hook_timeout, &d->hooks)))
        goto out;
    mgmt_store_set_notify(d->store, daemon_event, d);
    if (pipe2(d->monitor_wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        err = vs_error_errno(-errno, "pipe");
        goto out;
    }
    /* SIGTERM/SIGINT end the loop; the set is blocked in every thread we create */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        err = vs_error_errno(-errno, "signalfd");
        goto out;
    }
    if ((listen_fd = listen_unix(d->socket_path)) < 0) {
        err = listen_fd;
        goto out;
    }
    if (config->listen && (tcp_fd = mgmt_tcp_listen(config->listen + 4)) < 0) {
        err = tcp_fd;
        goto out;
    }
    struct mgmt_vm_record *before = NULL;
    size_t before_count = 0;
    if ((err = mgmt_store_list(d->store, &before, &before_count)))
        goto out;
    mgmt_supervisor_reattach(d);
    if (pthread_create(&monitor, NULL, mgmt_monitor_thread, d)) {
        err = vs_error(-EAGAIN, "cannot start the monitor thread");
        goto out;
    }
    monitor_started = true;
    void **aa = vs_calloc(3, sizeof(void *));
    if (aa) {
        aa[0] = d;
        aa[1] = before;
        aa[2] = (void *)(uintptr_t)before_count;
        autostart_started = pthread_create(&autostarter, NULL, autostart_thread, aa) == 0;
    }
    if (!autostart_started) {
        free(aa);
        mgmt_supervisor_autostart(d, before, 0);
    }
    fprintf(stderr, "vesseld: serving %s%s%s\n", d->socket_path, tcp_fd >= 0 ? " and tls:" : "",
            tcp_fd >= 0 ? config->listen + 4 : "");
    bool disk_low = false;
    uint64_t next_disk_check = 0;
    while (!atomic_load(&d->stopping)) {
        if (vs_now_ns() >= next_disk_check) {
            check_disk(d, &disk_low);
            next_disk_check = vs_now_ns() + 30000000000ull;
        }
        struct pollfd fds[3] = {{.fd = listen_fd, .events = POLLIN},
                                {.fd = sfd, .events = POLLIN},
                                {.fd = tcp_fd, .events = POLLIN}};
        if (poll(fds, tcp_fd >= 0 ? 3 : 2, 30000) < 0) {
            if (errno == EINTR)
                continue;
            err = vs_error_errno(-errno, "poll");
            break;
        }
        if (fds[1].revents) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo != SIGHUP)
                atomic_store(&d->stopping, true);
            continue;
        }
        bool tcp = tcp_fd >= 0 && fds[2].revents;
        if (!tcp && !fds[0].revents)
            continue;
        int cfd = accept4(tcp ? tcp_fd : listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
            continue;
        if (atomic_fetch_add(&d->clients, 1) >= d->max_clients) {
            atomic_fetch_sub(&d->clients, 1);
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                       "application/json\r\nContent-Length: 32\r\nConnection: "
                                       "close\r\n\r\n{\"error\":\"too many connections\"}\n";
            ssize_t ignored = send(cfd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)ignored;
            close(cfd);
            continue;
        }
        struct connection *c = malloc(sizeof(*c));
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (!c || (c->daemon = d, c->conn.fd = cfd, c->conn.ssl = NULL, c->conn.need_token = tcp,
                   pthread_create(&t, &attr, connection_thread, c))) {
            free(c);
            close(cfd);
            atomic_fetch_sub(&d->clients, 1);
        }
        pthread_attr_destroy(&attr);
    }
    fprintf(stderr, "vesseld: stopping (running VMs keep running)\n");
    /* let requests in flight finish, bounded */
    for (int i = 0; i < 300 && atomic_load(&d->clients); i++)
        usleep(10000);
out:
    atomic_store(&d->stopping, true);
    if (autostart_started)
        pthread_join(autostarter, NULL);
    if (monitor_started) {
        mgmt_monitor_wake(d);
        pthread_join(monitor, NULL);
    }
    if (listen_fd >= 0) {
        close(listen_fd);
        unlink(d->socket_path);
    }
    if (tcp_fd >= 0)
        close(tcp_fd);
    if (d->store)
        mgmt_store_set_notify(d->store, NULL, NULL);
    mgmt_hooks_stop(d->hooks);
    d->hooks = NULL;
    if (sfd >= 0)
        close(sfd);
    if (atomic_load(&d->clients) == 0) {
        /* only free what no connection thread can still touch */
        for (struct mgmt_vm_runtime *rt = d->vms, *next; rt; rt = next) {
            next = rt->next;
            if (rt->keeper_pidfd >= 0)
                close(rt->keeper_pidfd);
            pthread_mutex_destroy(&rt->lock);
            pthread_cond_destroy(&rt->changed);
            free(rt);
        }
        mgmt_store_close(d->store);
        if (d->tls)
            SSL_CTX_free(d->tls);
        pthread_mutex_destroy(&d->events_lock);
        mgmt_disks_release_all(d);
        pthread_mutex_destroy(&d->claims_lock);
        pthread_cond_destroy(&d->events_changed);
        explicit_bzero(d->token, sizeof(d->token));
        for (int i = 0; i < 2; i++)
            if (d->monitor_wake[i] >= 0)
                close(d->monitor_wake[i]);
        free(d);
    }
    return err;
}
