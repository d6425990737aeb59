/*
 * lib/vmm/control.c — the VM's control socket: JSON lines over a unix stream socket.
 *
 * Each request is one line holding a JSON object {"cmd": NAME}; each answer is one line,
 * {"ok": true, …} or {"ok": false, "error": MESSAGE}. Commands: status, pause, resume,
 * powerbutton (ACPI power button: the guest shuts itself down), poweroff, reset, ctrl-alt-del,
 * balloon (set the balloon target), stats, save (write the VM to a state file and stop it), and
 * watch: the client stays and gets {"event":"state","state":…[,"reason":…]} after every pause and
 * resume — how the daemon learns that the VMM paused the VM by itself (a full host disk). One
 * thread polls the listening socket, every client, the vmm's state eventfd and a wake pipe;
 * requests go through vmm_request, so the socket can never do what a signal or the library caller
 * couldn't.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vmm/machine.h"

#define MAX_CLIENTS    16
#define LINE_MAX_BYTES 4096

struct client {
    int fd;
    bool watch; /* sent "watch": gets a state event after every pause/resume */
    char buf[LINE_MAX_BYTES];
    size_t len;
};

struct control {
    struct vmm *vmm;
    int listen_fd;
    int wake[2];
    char *path;
    pthread_t thread;
    bool started;
    struct client clients[MAX_CLIENTS];
};

static json_object *reply_error(const char *msg)
{
    json_object *r = json_object_new_object();
    json_object_object_add(r, "ok", json_object_new_boolean(0));
    json_object_object_add(r, "error", json_object_new_string(msg));
    return r;
}

/* "state" and, when the VMM paused the VM by itself, "reason". */
static void add_state(struct vmm *v, json_object *r)
{
    json_object_object_add(r, "state", json_object_new_string(vmm_state_name(v)));
    char reason[256];
    vmm_pause_reason(v, reason, sizeof(reason));
    if (reason[0])
        json_object_object_add(r, "reason", json_object_new_string(reason));
}

static json_object *handle(struct control *c, struct client *cl, const char *line)
{
    json_object *req = json_tokener_parse(line);
    json_object *cmd_obj;
    if (!req || !json_object_is_type(req, json_type_object) ||
        !json_object_object_get_ex(req, "cmd", &cmd_obj) ||
        !json_object_is_type(cmd_obj, json_type_string)) {
        json_object_put(req);
        return reply_error("expected a JSON object with a string \"cmd\"");
    }
    const char *cmd = json_object_get_string(cmd_obj);
    struct vmm *v = c->vmm;
    json_object *r = json_object_new_object();
    json_object_object_add(r, "ok", json_object_new_boolean(1));
    static const struct {
        const char *name;
        enum vmm_request req;
    } simple[] = {
        {"pause", VMM_REQUEST_PAUSE},
        {"resume", VMM_REQUEST_RESUME},
        {"powerbutton", VMM_REQUEST_POWERBUTTON},
        {"shutdown", VMM_REQUEST_POWERBUTTON},
        {"poweroff", VMM_REQUEST_POWEROFF},
        {"reset", VMM_REQUEST_RESET},
        {"ctrl-alt-del", VMM_REQUEST_CTRL_ALT_DEL},
    };
    bool done = false;
    for (size_t i = 0; i < VS_ARRAY_SIZE(simple) && !done; i++) {
        if (strcmp(cmd, simple[i].name) == 0) {
            done = true;
            if (vmm_request(v, simple[i].req) < 0) {
                json_object_put(r);
                r = reply_error(vs_error_message());
            }
        }
    }
    if (done) {
    } else if (strcmp(cmd, "watch") == 0) {
        cl->watch = true;
        add_state(v, r);
    } else if (strcmp(cmd, "status") == 0) {
        add_state(v, r);
        json_object_object_add(r, "boot", json_object_new_string(vmm_boot_description(v)));
        if (v->config.name)
            json_object_object_add(r, "name", json_object_new_string(v->config.name));
        if (v->config.uuid)
            json_object_object_add(r, "uuid", json_object_new_string(v->config.uuid));
        json_object_object_add(r, "vcpus", json_object_new_int((int)v->config.cpus));
        json_object_object_add(r, "memory", json_object_new_int64((int64_t)v->config.memory));
        json_object_object_add(r, "pid", json_object_new_int((int)getpid()));
        json_object_object_add(
            r, "uptime_ms",
            json_object_new_int64((int64_t)((vs_now_ns() - v->created_ns) / 1000000)));
    } else if (strcmp(cmd, "balloon") == 0) {
        /* {"cmd":"balloon","pages":N} or {"cmd":"balloon","target_mib":N}: the guest's balloon
         * should hold N pages (the guest gives that memory back to the host). */
        json_object *arg;
        int64_t pages = -1;
        if (json_object_object_get_ex(req, "pages", &arg) &&
            json_object_is_type(arg, json_type_int))
            pages = json_object_get_int64(arg);
        else if (json_object_object_get_ex(req, "target_mib", &arg) &&
                 json_object_is_type(arg, json_type_int))
            pages = json_object_get_int64(arg) * 256;
        if (pages < 0) {
            json_object_put(r);
            r = reply_error("balloon: expected \"pages\" or \"target_mib\" (a number >= 0)");
        } else if (vmm_balloon_set_target(v, (uint64_t)pages) < 0) {
            json_object_put(r);
            r = reply_error(vs_error_message());
        } else {
            json_object_object_add(r, "target_pages", json_object_new_int64(pages));
        }
    } else if (strcmp(cmd, "save") == 0) {
        /* {"cmd":"save","path":FILE}: on success the VM stops and vessel-vmm exits (code 5). */
        json_object *arg;
        if (!json_object_object_get_ex(req, "path", &arg) ||
            !json_object_is_type(arg, json_type_string) || !*json_object_get_string(arg)) {
            json_object_put(r);
            r = reply_error("save: expected \"path\" (the state file to write)");
        } else if (vmm_save(v, json_object_get_string(arg)) < 0) {
            json_object_put(r);
            r = reply_error(vs_error_message());
        } else {
            json_object_object_add(r, "path", json_object_get(arg));
        }
    } else if (strcmp(cmd, "stats") == 0) {
        pthread_mutex_lock(&v->machine_lock);
        if (v->machine) {
            json_object *s = machine_stats_json(v->machine);
            json_object_object_foreach(s, key, val)
            {
                json_object_object_add(r, key, json_object_get(val));
            }
            json_object_put(s);
        }
        pthread_mutex_unlock(&v->machine_lock);
    } else {
        json_object_put(r);
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "unknown command '%.40s' (status, pause, resume, powerbutton, "
                 "poweroff, reset, ctrl-alt-del, balloon, stats, save, watch)",
                 cmd);
        r = reply_error(msg);
    }
    json_object_put(req);
    return r;
}

static void client_close(struct client *cl)
{
    close(cl->fd);
    cl->fd = -1;
    cl->len = 0;
    cl->watch = false;
}

/* The VM paused or resumed: tell every watcher. */
static void state_event(struct control *c)
{
    json_object *e = json_object_new_object();
    json_object_object_add(e, "event", json_object_new_string("state"));
    add_state(c->vmm, e);
    const char *text = json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN);
    size_t tl = strlen(text);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        struct client *cl = &c->clients[i];
        if (cl->fd >= 0 && cl->watch &&
            (send(cl->fd, text, tl, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)tl ||
             send(cl->fd, "\n", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1))
            client_close(cl); /* gone, or not reading: it can ask status when it comes back */
    }
    json_object_put(e);
}

static void client_input(struct control *c, struct client *cl)
{
    ssize_t n = read(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len);
    if (n <= 0) {
        client_close(cl);
        return;
    }
    cl->len += (size_t)n;
    char *nl;
    while (cl->fd >= 0 && (nl = memchr(cl->buf, '\n', cl->len))) {
        *nl = '\0';
        json_object *r = handle(c, cl, cl->buf);
        const char *text = json_object_to_json_string_ext(r, JSON_C_TO_STRING_PLAIN);
        size_t tl = strlen(text);
        if (send(cl->fd, text, tl, MSG_NOSIGNAL) != (ssize_t)tl ||
            send(cl->fd, "\n", 1, MSG_NOSIGNAL) != 1)
            client_close(cl);
        json_object_put(r);
        size_t used = (size_t)(nl - cl->buf) + 1;
        if (cl->fd >= 0) {
            memmove(cl->buf, cl->buf + used, cl->len - used);
            cl->len -= used;
        }
    }
    if (cl->fd >= 0 && cl->len == sizeof(cl->buf)) {
        const char *msg = "{\"ok\":false,\"error\":\"request line too long\"}\n";
        if (send(cl->fd, msg, strlen(msg), MSG_NOSIGNAL) < 0) {
            /* closing anyway */
        }
        client_close(cl);
    }
}

static void *control_thread(void *arg)
{
    struct control *c = arg;
    pthread_setname_np(pthread_self(), "control");
    for (;;) {
        struct pollfd p[MAX_CLIENTS + 3];
        int map[MAX_CLIENTS + 3];
        int n = 0;
        p[n++] = (struct pollfd){c->wake[0], POLLIN, 0};
        p[n++] = (struct pollfd){c->listen_fd, POLLIN, 0};
        p[n++] = (struct pollfd){c->vmm->state_fd, POLLIN, 0};
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (c->clients[i].fd >= 0) {
                map[n] = i;
                p[n++] = (struct pollfd){c->clients[i].fd, POLLIN, 0};
            }
        if (poll(p, (nfds_t)n, -1) < 0)
            continue;
        if (p[0].revents)
            break;
        if (p[1].revents) {
            int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                int slot = -1;
                for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
                    if (c->clients[i].fd < 0)
                        slot = i;
                if (slot < 0) {
                    close(fd);
                } else {
                    c->clients[slot].fd = fd;
                    c->clients[slot].len = 0;
                }
            }
        }
        if (p[2].revents) {
            uint64_t count;
            if (read(c->vmm->state_fd, &count, sizeof(count)) == sizeof(count))
                state_event(c);
        }
        for (int i = 3; i < n; i++)
            if (p[i].revents)
                client_input(c, &c->clients[map[i]]);
    }
    return NULL;
}

int control_start(struct control **out, struct vmm *vmm, const char *spec)
{
    if (strncmp(spec, "unix:", 5) != 0)
        return vs_error(-EINVAL, "--api '%s': expected unix:PATH", spec);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(spec + 5) >= sizeof(sa.sun_path) || !spec[5])
        return vs_error(-ENAMETOOLONG, "--api %s: socket path empty or too long", spec);
    struct control *c = vs_calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->vmm = vmm;
    c->wake[0] = c->wake[1] = -1;
    for (int i = 0; i < MAX_CLIENTS; i++)
        c->clients[i].fd = -1;
    strcpy(sa.sun_path, spec + 5);
    unlink(sa.sun_path);
    c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = 0;
    if (c->listen_fd < 0 || bind(c->listen_fd, (void *)&sa, sizeof(sa)) < 0 ||
        listen(c->listen_fd, 8) < 0)
        rc = vs_error_errno(-errno, "--api %s", spec);
    else if (!(c->path = vs_strdup(sa.sun_path)))
        rc = -ENOMEM;
    else if (pipe2(c->wake, O_CLOEXEC) < 0)
        rc = vs_error_errno(-errno, "--api: pipe");
    else if ((rc = -pthread_create(&c->thread, NULL, control_thread, c)) < 0)
        vs_error(rc, "--api: cannot start its thread");
    else
        c->started = true;
    if (rc < 0) {
        control_stop(c);
        return rc;
    }
    *out = c;
    return 0;
}

void control_stop(struct control *c)
{
    if (!c)
        return;
    if (c->started) {
        if (write(c->wake[1], "x", 1) < 0) {
            /* the thread also wakes on close */
        }
        pthread_join(c->thread, NULL);
    }
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (c->clients[i].fd >= 0)
            close(c->clients[i].fd);
    if (c->listen_fd >= 0) {
        close(c->listen_fd);
        if (c->path)
            unlink(c->path);
    }
    for (int i = 0; i < 2; i++)
        if (c->wake[i] >= 0)
            close(c->wake[i]);
    free(c->path);
    free(c);
}
