/*
 * lib/mgmt/api.c — the REST API: one HTTP request per connection, routed to the store or the
 * supervisor, answered with JSON (or the definition's text).
 *
 * The idea: a route is (method, path pattern) → handler; handlers return a status and a JSON
 * object, errors are {"error": MESSAGE} with the one-line message of the failing call, and the
 * errno decides the status (ENOENT 404, EEXIST/EBUSY 409, EINVAL 400, ETIMEDOUT 504, else 500).
 * The connection is read under a deadline and the HTTP limits of http.c, so a slow or hostile
 * client holds one thread for at most a few seconds.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "mgmt/mgmt-internal.h"

#define READ_TIMEOUT_MS 10000

struct api_reply {
    int status;
    json_object *json; /* or */
    char *text;        /* a plain-text body (definitions) */
};

static int status_for(int err)
{
    switch (err) {
    case -ENOENT:
        return 404;
    case -EEXIST:
    case -EBUSY:
    case -ENODEV:   /* a NIC's network or bridge is missing */
    case -ENOTCONN: /* a NIC's network is not started */
        return 409;
    case -EINVAL:
    case -ENAMETOOLONG:
    case -E2BIG:
    case -ENOTSUP:
        return 400;
    case -ETIMEDOUT:
        return 504;
    default:
        return 500;
    }
}

static void reply_error(struct api_reply *r, int err)
{
    r->status = status_for(err);
    r->json = json_object_new_object();
    const char *msg = vs_error_message();
    json_object_object_add(r->json, "error", json_object_new_string(msg[0] ? msg : strerror(-err)));
}

static void reply_ok(struct api_reply *r, int err)
{
    if (err) {
        reply_error(r, err);
        return;
    }
    r->status = 200;
    r->json = json_object_new_object();
    json_object_object_add(r->json, "ok", json_object_new_boolean(1));
}

/* A handler's JSON answer: status on success, the error otherwise. (Call the handler first: the
 * order in which arguments are evaluated is unspecified, so o must already be set.) */
static void reply_json(struct api_reply *r, int err, json_object *o, int status)
{
    if (err) {
        json_object_put(o);
        reply_error(r, err);
        return;
    }
    r->status = status;
    r->json = o;
}

static bool query_flag(const char *query, const char *key)
{
    char arg[16];
    return mgmt_http_query_get(query, key, arg, sizeof(arg)) && strcmp(arg, "0") &&
           strcmp(arg, "false") && strcmp(arg, "no");
}

/* POST /v1/vms/VM/clone or /template, the verbs that copy disks: 0 or -errno (with the message);
 * *out the answer object (NULL: {"ok":true}), *status its HTTP status. */
static int copy_job(struct mgmt_daemon *d, const char *vm, const char *action, const char *query,
                    const struct mgmt_progress *progress, json_object **out, int *status)
{
    *out = NULL;
    *status = 200;
    if (!strcmp(action, "clone")) {
        char mode[16] = "overlay", name[256];
        mgmt_http_query_get(query, "mode", mode, sizeof(mode));
        if (!mgmt_http_query_get(query, "name", name, sizeof(name)) || !name[0])
            return vs_error(-EINVAL, "clone: name=NEW required");
        return mgmt_vm_clone(d, vm, name, !strcmp(mode, "copy"), progress);
    }
    char pool[128], volume[256], file[1024];
    bool in_pool = mgmt_http_query_get(query, "pool", pool, sizeof(pool));
    bool named = mgmt_http_query_get(query, "name", volume, sizeof(volume));
    bool at = mgmt_http_query_get(query, "path", file, sizeof(file));
    *status = 201;
    if (in_pool == at)
        return vs_error(-EINVAL, "template: pool=POOL&name=VOL or path=FILE");
    return mgmt_vm_template(d, vm, in_pool ? pool : NULL, named ? volume : NULL, at ? file : NULL,
                            query_flag(query, "compress"), progress, out);
}

/* /v1/pools[/POOL[/volumes[/VOL[/resize]]]] */
static void route_pools(struct mgmt_daemon *d, const struct mgmt_http_request *req, char **seg,
                        size_t n, struct api_reply *r)
{
    const char *m = req->method;
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST"), del = !strcmp(m, "DELETE");
    char name[256], path[1024], size_text[64], format[32], backing[1024];
    json_object *o = NULL;
    int err = 0;
    if (n == 2 && get) {
        err = mgmt_pool_list(d, &o);
        reply_json(r, err, o, 200);
    } else if (n == 2 && post) {
        if (!mgmt_http_query_get(req->query, "name", name, sizeof(name)) ||
            !mgmt_http_query_get(req->query, "path", path, sizeof(path)))
            reply_error(r, vs_error(-EINVAL, "pool define: name=NAME and path=DIR required"));
        else if (!(err = mgmt_pool_define(d, name, path, &o)))
            reply_json(r, err, o, 201);
        else
            reply_error(r, err);
    } else if (n == 3 && get) {
        err = mgmt_pool_info(d, seg[2], &o);
        reply_json(r, err, o, 200);
    } else if (n == 3 && del) {
        reply_ok(r, mgmt_pool_undefine(d, seg[2]));
    } else if (n < 4 || strcmp(seg[3], "volumes")) {
        r->status = 404;
    } else if (n == 4 && get) {
        err = mgmt_volume_list(d, seg[2], &o);
        reply_json(r, err, o, 200);
    } else if (n == 4 && post) {
        struct mgmt_volume_params p = {.pool = seg[2], .name = name};
        err = 0;
        if (!mgmt_http_query_get(req->query, "name", name, sizeof(name)))
            err = vs_error(-EINVAL, "volume create: name=NAME required");
        if (!err && mgmt_http_query_get(req->query, "size", size_text, sizeof(size_text))) {
            p.size_given = true;
            err = vs_parse_size(size_text, &p.size);
        }
        if (mgmt_http_query_get(req->query, "format", format, sizeof(format)))
            p.format = format;
        if (mgmt_http_query_get(req->query, "backing", backing, sizeof(backing)))
            p.backing = backing;
        if (!err)
            err = mgmt_volume_create(d, &p, &o);
        reply_json(r, err, o, 201);
    } else if (n == 5 && del) {
        reply_ok(r, mgmt_volume_delete(d, seg[2], seg[4]));
    } else if (n == 6 && post && !strcmp(seg[5], "resize")) {
        uint64_t size = 0;
        err = 0;
        if (!mgmt_http_query_get(req->query, "size", size_text, sizeof(size_text)))
            err = vs_error(-EINVAL, "volume resize: size=SIZE required");
        else
            err = vs_parse_size(size_text, &size);
        if (!err)
            err = mgmt_volume_resize(d, seg[2], seg[4], size, query_flag(req->query, "shrink"), &o);
        reply_json(r, err, o, 200);
    } else {
        r->status = 404;
    }
}

static json_object *record_json(struct mgmt_daemon *d, const struct mgmt_vm_record *rec,
                                bool details)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(rec->name));
    json_object_object_add(o, "uuid", json_object_new_string(rec->uuid));
    json_object_object_add(o, "state", json_object_new_string(rec->state));
    json_object_object_add(o, "pid", json_object_new_int64(rec->pid));
    json_object_object_add(o, "autostart", json_object_new_boolean(rec->autostart));
    json_object_object_add(o, "generation", json_object_new_int64(rec->generation));
    if (rec->saved_path[0])
        json_object_object_add(o, "saved_path", json_object_new_string(rec->saved_path));
    if (!details)
        return o;
    struct vm_def *def = NULL;
    if (vm_def_parse(rec->definition, strlen(rec->definition), rec->name, &def) == 0) {
        json_object_object_add(o, "vcpus", json_object_new_int((int)def->vcpus));
        json_object_object_add(o, "memory", json_object_new_int64((int64_t)def->memory));
        json_object_object_add(o, "disks", json_object_new_int((int)def->disk_count));
        json_object_object_add(o, "nics", json_object_new_int((int)def->nic_count));
        json_object_object_add(o, "on_poweroff",
                               json_object_new_string(vm_action_name(def->on_poweroff)));
        json_object_object_add(o, "on_reboot",
                               json_object_new_string(vm_action_name(def->on_reboot)));
        json_object_object_add(o, "on_crash",
                               json_object_new_string(vm_action_name(def->on_crash)));
        vm_def_free(def);
    }
    json_object_object_add(o, "keeper_pid", json_object_new_int64(rec->keeper_pid));
    json_object_object_add(o, "boots", json_object_new_int64(rec->boots));
    json_object_object_add(o, "started_at", json_object_new_int64(rec->started_at));
    if (rec->started_at)
        json_object_object_add(o, "uptime_s",
                               json_object_new_int64((int64_t)time(NULL) - rec->started_at));
    json_object_object_add(o, "last_exit", json_object_new_int64(rec->last_exit));
    json_object_object_add(o, "last_error", json_object_new_string(rec->last_error));
    char path[PATH_MAX];
    if (!mgmt_run_path(d, rec->name, NULL, path, sizeof(path)))
        json_object_object_add(o, "run_dir", json_object_new_string(path));
    json_object_object_add(o, "taps", mgmt_nics_json(d, rec->name));
    return o;
}

static void api_list(struct mgmt_daemon *d, struct api_reply *r)
{
    struct mgmt_vm_record *list;
    size_t count;
    int err = mgmt_store_list(d->store, &list, &count);
    if (err) {
        reply_error(r, err);
        return;
    }
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < count; i++) {
        json_object_array_add(arr, record_json(d, &list[i], false));
        mgmt_vm_record_free(&list[i]);
    }
    free(list);
    r->status = 200;
    r->json = json_object_new_object();
    json_object_object_add(r->json, "vms", arr);
}

static void api_define(struct mgmt_daemon *d, const struct mgmt_http_request *req, const char *body,
                       size_t len, struct api_reply *r)
{
    char source[256] = "definition";
    mgmt_http_query_get(req->query, "source", source, sizeof(source));
    struct vm_def *def = NULL;
    int err = vm_def_parse(body, len, source, &def);
    if (!err)
        err = vm_def_check_disks(def);
    if (err) {
        reply_error(r, err == -ENOENT ? -EINVAL : err);
        vm_def_free(def);
        return;
    }
    /* redefining without a uuid keeps the one the VM has */
    struct mgmt_vm_record old;
    bool exists = mgmt_store_get(d->store, def->name, &old) == 0;
    char keep[8] = "";
    mgmt_http_query_get(req->query, "keep_uuid", keep, sizeof(keep));
    if (exists) {
        if (!def->uuid_line || !strcmp(keep, "1"))
            memcpy(def->uuid, old.uuid, sizeof(def->uuid));
        mgmt_vm_record_free(&old);
    }
    vs_error_clear();
    char *text = vm_def_print(def);
    if (!text) {
        reply_error(r, -ENOMEM);
        vm_def_free(def);
        return;
    }
    err = mgmt_store_define(d->store, def->name, def->uuid, text,
                            def->autostart != VM_AUTOSTART_NEVER, true);
    free(text);
    if (err) {
        reply_error(r, err);
    } else {
        r->status = exists ? 200 : 201;
        r->json = json_object_new_object();
        json_object_object_add(r->json, "name", json_object_new_string(def->name));
        json_object_object_add(r->json, "uuid", json_object_new_string(def->uuid));
        json_object_object_add(r->json, "created", json_object_new_boolean(!exists));
    }
    vm_def_free(def);
}

static void api_info(struct mgmt_daemon *d, const char *name, struct api_reply *r)
{
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, name, &rec);
    if (err) {
        reply_error(r, err);
        return;
    }
    r->status = 200;
    r->json = record_json(d, &rec, true);
    mgmt_vm_record_free(&rec);
}

static void api_dumpdef(struct mgmt_daemon *d, const char *name, const char *query,
                        struct api_reply *r)
{
    char format[16] = "vessel";
    mgmt_http_query_get(query, "format", format, sizeof(format));
    struct mgmt_vm_record rec;
    int err = mgmt_store_get(d->store, name, &rec);
    if (err) {
        reply_error(r, err);
        return;
    }
    if (!strcmp(format, "vessel")) {
        r->status = 200;
        r->text = rec.definition;
        rec.definition = NULL;
    } else if (!strcmp(format, "libvirt")) {
        struct vm_def *def = NULL;
        err = vm_def_parse(rec.definition, strlen(rec.definition), name, &def);
        char *xml = err ? NULL : vm_def_to_libvirt(def);
        if (!xml) {
            reply_error(r, err ? err : -ENOMEM);
        } else {
            r->status = 200;
            r->text = xml;
        }
        vm_def_free(def);
    } else {
        reply_error(r, vs_error(-EINVAL, "format '%s' unknown (vessel, libvirt)", format));
    }
    mgmt_vm_record_free(&rec);
}

static void api_stats(struct mgmt_daemon *d, const char *name, struct api_reply *r)
{
    char *status = NULL, *stats = NULL;
    int err = mgmt_vm_query(d, name, "status", &status);
    if (!err)
        err = mgmt_vm_query(d, name, "stats", &stats);
    json_object *st = status ? json_tokener_parse(status) : NULL;
    json_object *sa = stats ? json_tokener_parse(stats) : NULL;
    free(status);
    free(stats);
    if (!err && (!st || !sa))
        err = vs_error(-EIO, "%s: vessel-vmm answered with malformed JSON", name);
    if (err) {
        json_object_put(st);
        json_object_put(sa);
        reply_error(r, err);
        return;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object *v;
    const char *copy[] = {"state", "vcpus", "memory", "pid", "uptime_ms"};
    for (size_t i = 0; i < VS_ARRAY_SIZE(copy); i++)
        if (json_object_object_get_ex(st, copy[i], &v))
            json_object_object_add(o, copy[i], json_object_get(v));
    int64_t cpu_ns = 0;
    json_object *vcpus;
    if (json_object_object_get_ex(sa, "vcpus", &vcpus) &&
        json_object_is_type(vcpus, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(vcpus); i++) {
            json_object *t;
            if (json_object_object_get_ex(json_object_array_get_idx(vcpus, i), "cpu_time_ns", &t))
                cpu_ns += json_object_get_int64(t);
        }
        json_object_object_add(o, "vcpu_stats", json_object_get(vcpus));
    }
    json_object_object_add(o, "cpu_time_ns", json_object_new_int64(cpu_ns));
    int64_t up = json_object_object_get_ex(st, "uptime_ms", &v) ? json_object_get_int64(v) : 0;
    json_object_object_add(o, "cpu_percent",
                           json_object_new_double(up > 0 ? (double)cpu_ns / 1e4 / (double)up : 0));
    if (json_object_object_get_ex(sa, "exits", &v))
        json_object_object_add(o, "exits", json_object_get(v));
    if (json_object_object_get_ex(sa, "devices", &v))
        json_object_object_add(o, "devices", json_object_get(v));
    json_object_put(st);
    json_object_put(sa);
    r->status = 200;
    r->json = o;
}

static void api_snapshots(struct mgmt_daemon *d, const char *name, struct api_reply *r)
{
    char **names;
    size_t count;
    int err = mgmt_store_snapshot_list(d->store, name, &names, &count);
    if (err) {
        reply_error(r, err);
        return;
    }
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < count; i++) {
        json_object_array_add(arr, json_object_new_string(names[i] ? names[i] : ""));
        free(names[i]);
    }
    free(names);
    r->status = 200;
    r->json = json_object_new_object();
    json_object_object_add(r->json, "snapshots", arr);
}

/* The state file of save/restore: ?path=FILE, or a JSON body {"path": FILE}. */
static bool state_file_arg(const struct mgmt_http_request *req, const char *body, char *out,
                           size_t len)
{
    if (mgmt_http_query_get(req->query, "path", out, len))
        return out[0] != 0;
    json_object *o = body && body[0] ? json_tokener_parse(body) : NULL, *p;
    bool ok = o && json_object_object_get_ex(o, "path", &p) &&
              json_object_is_type(p, json_type_string) && strlen(json_object_get_string(p)) < len &&
              json_object_get_string(p)[0];
    if (ok)
        snprintf(out, len, "%s", json_object_get_string(p));
    json_object_put(o);
    return ok;
}

/* POST /v1/vms/NAME/save {"path"}, /v1/vms/NAME/restore, /v1/restore {"path"}. */
static void api_save_restore(struct mgmt_daemon *d, const struct mgmt_http_request *req,
                             const char *body, const char *vm, bool save, struct api_reply *r)
{
    char file[PATH_MAX], done[PATH_MAX], name[VM_DEF_NAME_MAX + 1] = "";
    bool have_file = state_file_arg(req, body, file, sizeof(file));
    int err;
    if (save)
        err = have_file ? mgmt_vm_save(d, vm, file, done, sizeof(done))
                        : vs_error(-EINVAL, "save: path=FILE (an absolute path) required");
    else if (!vm && !have_file)
        err = vs_error(-EINVAL, "restore: path=FILE required");
    else
        err = mgmt_vm_restore(d, vm, vm ? NULL : file, name, sizeof(name), done, sizeof(done));
    if (err) {
        reply_error(r, err);
        return;
    }
    r->status = 200;
    r->json = json_object_new_object();
    json_object_object_add(r->json, "name", json_object_new_string(vm ? vm : name));
    json_object_object_add(r->json, "state", json_object_new_string(save ? "saved" : "running"));
    json_object_object_add(r->json, "path", json_object_new_string(done));
}

/* Split "/v1/vms/NAME/ACTION/SUB/SUB2" into at most 6 segments. */
static size_t split_path(char *path, char *seg[6])
{
    size_t n = 0;
    for (char *tok = strtok(path, "/"); tok && n < 6; tok = strtok(NULL, "/"))
        seg[n++] = tok;
    return strtok(NULL, "/") ? 7 : n;
}

static void route(struct mgmt_daemon *d, const struct mgmt_http_request *req, const char *body,
                  size_t body_len, struct api_reply *r)
{
    char path[sizeof(req->path)];
    memcpy(path, req->path, sizeof(path));
    char *seg[6] = {0};
    size_t n = split_path(path, seg);
    const char *m = req->method;
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST"), del = !strcmp(m, "DELETE");
    char arg[256];
    vs_error_clear();
    if (n < 2 || n > 6 || strcmp(seg[0], "v1")) {
        r->status = 404;
    } else if (n == 2 && !strcmp(seg[1], "ping") && get) {
        reply_ok(r, 0);
    } else if (!strcmp(seg[1], "pools")) {
        route_pools(d, req, seg, n, r);
    } else if (n == 2 && post && !strcmp(seg[1], "restore")) {
        api_save_restore(d, req, body, NULL, false, r);
    } else if (strcmp(seg[1], "vms")) {
        r->status = 404;
    } else if (n == 2 && get) {
        api_list(d, r);
    } else if (n == 2 && post) {
        api_define(d, req, body, body_len, r);
    } else if (n == 3 && get) {
        api_info(d, seg[2], r);
    } else if (n == 3 && del) {
        reply_ok(r, mgmt_vm_undefine(d, seg[2]));
    } else if (n == 4 && get && !strcmp(seg[3], "definition")) {
        api_dumpdef(d, seg[2], req->query, r);
    } else if (n == 4 && get && !strcmp(seg[3], "stats")) {
        api_stats(d, seg[2], r);
    } else if (n == 4 && get && !strcmp(seg[3], "snapshots")) {
        api_snapshots(d, seg[2], r);
    } else if (n == 4 && post) {
        const char *a = seg[3], *vm = seg[2];
        if (!strcmp(a, "start")) {
            bool paused = mgmt_http_query_get(req->query, "paused", arg, sizeof(arg)) &&
                          strcmp(arg, "0") && strcmp(arg, "false");
            reply_ok(r, mgmt_vm_start(d, vm, paused));
        } else if (!strcmp(a, "save") || !strcmp(a, "restore")) {
            api_save_restore(d, req, body, vm, !strcmp(a, "save"), r);
        } else if (!strcmp(a, "destroy")) {
            reply_ok(r, mgmt_vm_destroy(d, vm));
        } else if (!strcmp(a, "shutdown")) {
            reply_ok(r, mgmt_vm_shutdown(d, vm));
        } else if (!strcmp(a, "reboot")) {
            reply_ok(r, mgmt_vm_reboot(d, vm));
        } else if (!strcmp(a, "pause") || !strcmp(a, "resume")) {
            reply_ok(r, mgmt_vm_pause(d, vm, !strcmp(a, "pause")));
        } else if (!strcmp(a, "autostart")) {
            if (!mgmt_http_query_get(req->query, "value", arg, sizeof(arg)) ||
                (strcmp(arg, "on") && strcmp(arg, "off")))
                reply_error(r, vs_error(-EINVAL, "autostart: value=on or value=off"));
            else
                reply_ok(r, mgmt_store_set_autostart(d->store, vm, !strcmp(arg, "on")));
        } else if (!strcmp(a, "clone") || !strcmp(a, "template")) {
            json_object *o = NULL;
            int status;
            int err = copy_job(d, vm, a, req->query, NULL, &o, &status);
            if (o)
                reply_json(r, err, o, status);
            else
                reply_ok(r, err);
        } else if (!strcmp(a, "snapshots")) {
            if (!mgmt_http_query_get(req->query, "name", arg, sizeof(arg)) || !arg[0])
                reply_error(r, vs_error(-EINVAL, "snapshot: name=SNAP required"));
            else
                reply_ok(r, mgmt_vm_snapshot_create(d, vm, arg));
        } else {
            r->status = 404;
        }
    } else if (n == 5 && del && !strcmp(seg[3], "snapshots")) {
        reply_ok(r, mgmt_store_snapshot_delete(d->store, seg[2], seg[4]));
    } else if (n == 6 && post && !strcmp(seg[3], "snapshots") && !strcmp(seg[5], "revert")) {
        reply_ok(r, mgmt_vm_snapshot_revert(d, seg[2], seg[4]));
    } else {
        r->status = 404;
    }
    if (r->status == 404 && !r->json) {
        r->json = json_object_new_object();
        json_object_object_add(r->json, "error",
                               json_object_new_string("no such endpoint (see docs/vesseld.md)"));
    }
}

static void send_all(struct mgmt_conn *c, const char *buf, size_t len)
{
    mgmt_conn_write(c, buf, len);
}

static void send_reply(struct mgmt_conn *fd, struct api_reply *r)
{
    const char *body = "";
    const char *type = "application/json";
    if (r->text) {
        body = r->text;
        type = "text/plain; charset=utf-8";
    } else if (r->json) {
        body = json_object_to_json_string_ext(r->json, JSON_C_TO_STRING_PLAIN);
    }
    size_t blen = strlen(body);
    bool nl = !r->text;
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "%sConnection: close\r\n\r\n",
                     r->status, mgmt_http_reason(r->status), type, blen + nl,
                     r->status == 401 ? "WWW-Authenticate: Bearer realm=\"vesseld\"\r\n" : "");
    send_all(fd, head, (size_t)n);
    send_all(fd, body, blen);
    if (nl)
        send_all(fd, "\n", 1);
}

static void send_error(struct mgmt_conn *fd, int status, const char *msg)
{
    struct api_reply r = {.status = status, .json = json_object_new_object()};
    json_object_object_add(r.json, "error", json_object_new_string(msg));
    send_reply(fd, &r);
    json_object_put(r.json);
}

/* Read more bytes before the deadline; returns bytes now in buf or -1 on timeout/EOF/error. */
static ssize_t read_some(struct mgmt_conn *c, char *buf, size_t len, size_t cap, uint64_t deadline)
{
    uint64_t now = vs_now_ns();
    if (now >= deadline)
        return -1;
    ssize_t n = mgmt_conn_read(c, buf + len, cap - len, (int)((deadline - now) / 1000000) + 1);
    if (n <= 0)
        return -1;
    return (ssize_t)len + n;
}

bool mgmt_token_matches(const char *authorization, const char *token)
{
    /* compare every byte of the longer of the two, so the time says nothing about the token */
    static const char prefix[] = "Bearer ";
    size_t alen = strlen(authorization), tlen = strlen(token);
    size_t want = sizeof(prefix) - 1 + tlen;
    size_t n = alen > want ? alen : want;
    unsigned char diff = (unsigned char)(alen != want) | (unsigned char)(tlen == 0);
    for (size_t i = 0; i < n; i++) {
        unsigned char a = i < alen ? (unsigned char)authorization[i] : 0;
        unsigned char b = i < sizeof(prefix) - 1 ? (unsigned char)prefix[i]
                          : i < want             ? (unsigned char)token[i - (sizeof(prefix) - 1)]
                                                 : 0;
        diff |= a ^ b;
    }
    return diff == 0;
}

static int write_event(struct mgmt_conn *c, const struct mgmt_event *ev)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_int64(ev->id));
    json_object_object_add(o, "time", json_object_new_int64(ev->time));
    json_object_object_add(o, "vm", json_object_new_string(ev->vm));
    json_object_object_add(o, "event", json_object_new_string(ev->event));
    json_object_object_add(o, "detail", json_object_new_string(ev->detail));
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    int err = mgmt_conn_write(c, text, strlen(text));
    if (!err)
        err = mgmt_conn_write(c, "\n", 1);
    json_object_put(o);
    return err;
}

/* GET /v1/events[?since=ID]: newline-delimited JSON, one object per event row, for as long as the
 * client stays (the body ends when the connection closes). Without since, only new events. */
static void api_events(struct mgmt_daemon *d, struct mgmt_conn *c, const char *query)
{
    char arg[32];
    int64_t last = mgmt_store_last_event_id(d->store);
    if (mgmt_http_query_get(query, "since", arg, sizeof(arg))) {
        char *end;
        long long v = strtoll(arg, &end, 10);
        if (!arg[0] || *end || v < 0) {
            send_error(c, 400, "since: an event id (a number >= 0)");
            return;
        }
        last = v;
    }
    /* a client that stops reading is dropped after 10 s instead of holding this thread */
    mgmt_socket_timeouts(c->fd, 10);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                               "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
    if (mgmt_conn_write(c, head, sizeof(head) - 1))
        return;
    while (!atomic_load(&d->stopping)) {
        struct mgmt_event *evs;
        size_t count;
        if (mgmt_store_events_since(d->store, last, 256, &evs, &count))
            return;
        int err = 0;
        for (size_t i = 0; i < count && !err; i++) {
            err = write_event(c, &evs[i]);
            last = evs[i].id;
        }
        free(evs);
        if (err)
            return;
        if (count == 256)
            continue;
        /* wait for the next event (or 1 s, to notice a closed client or a stopping daemon) */
        pthread_mutex_lock(&d->events_lock);
        if (d->last_event <= last) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&d->events_changed, &d->events_lock, &ts);
        }
        pthread_mutex_unlock(&d->events_lock);
        struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
        if (poll(&p, 1, 0) == 1) {
            /* the client sends nothing after its request: anything readable is EOF or junk */
            char sink[256];
            if (mgmt_conn_read(c, sink, sizeof(sink), 0) <= 0 || (p.revents & POLLRDHUP))
                return;
        }
    }
}

/* A copy's progress as lines of its streamed answer, at most five a second (and the last). A
 * client that went away stops the lines, not the copy. */
struct stream_progress {
    struct mgmt_conn *c;
    uint64_t last_ns;
    bool gone;
};

static void stream_progress_fn(void *ctx, uint64_t done, uint64_t total)
{
    struct stream_progress *s = ctx;
    uint64_t now = vs_now_ns();
    if (s->gone || (now - s->last_ns < 200000000ull && done < total))
        return;
    s->last_ns = now;
    char line[96];
    int n = snprintf(line, sizeof(line), "{\"progress\":{\"done\":%llu,\"total\":%llu}}\n",
                     (unsigned long long)done, (unsigned long long)total);
    if (mgmt_conn_write(s->c, line, (size_t)n))
        s->gone = true;
}

/* POST /v1/vms/VM/clone|template?…&progress=1: newline-delimited JSON, {"progress":{"done",
 * "total"}} while the disks are copied, then one last line: {"ok":true,"status":S,"result":{…}}
 * or {"ok":false,"status":S,"error":"…"} — the status the plain request would have answered. */
static void api_copy_stream(struct mgmt_daemon *d, struct mgmt_conn *c, const char *vm,
                            const char *action, const char *query)
{
    mgmt_socket_timeouts(c->fd, 10);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                               "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
    if (mgmt_conn_write(c, head, sizeof(head) - 1))
        return;
    struct stream_progress sp = {.c = c};
    struct mgmt_progress progress = {stream_progress_fn, &sp};
    json_object *o = NULL;
    int status;
    int err = copy_job(d, vm, action, query, &progress, &o, &status);
    json_object *last = json_object_new_object();
    json_object_object_add(last, "ok", json_object_new_boolean(!err));
    json_object_object_add(last, "status", json_object_new_int(err ? status_for(err) : status));
    if (err) {
        const char *msg = vs_error_message();
        json_object_object_add(last, "error",
                               json_object_new_string(msg[0] ? msg : strerror(-err)));
        json_object_put(o);
    } else {
        if (!o) { /* as the plain request answers */
            o = json_object_new_object();
            json_object_object_add(o, "ok", json_object_new_boolean(1));
        }
        json_object_object_add(last, "result", o);
    }
    const char *text = json_object_to_json_string_ext(last, JSON_C_TO_STRING_PLAIN);
    if (!sp.gone && !mgmt_conn_write(c, text, strlen(text)))
        mgmt_conn_write(c, "\n", 1);
    json_object_put(last);
}

/* "/v1/vms/VM/clone" or "…/template": VM and the verb, or false. */
static bool copy_path(const char *path, char *vm, size_t vm_len, const char **action)
{
    static const char prefix[] = "/v1/vms/";
    if (strncmp(path, prefix, sizeof(prefix) - 1))
        return false;
    const char *name = path + sizeof(prefix) - 1, *slash = strchr(name, '/');
    if (!slash || slash == name || (size_t)(slash - name) >= vm_len)
        return false;
    if (strcmp(slash + 1, "clone") && strcmp(slash + 1, "template"))
        return false;
    snprintf(vm, vm_len, "%.*s", (int)(slash - name), name);
    *action = slash + 1;
    return true;
}

void mgmt_api_serve_connection(struct mgmt_daemon *d, struct mgmt_conn *fd)
{
    char head[MGMT_HTTP_MAX_HEAD];
    size_t len = 0;
    struct mgmt_http_request req;
    int status = 0, rc = 0;
    uint64_t deadline = vs_now_ns() + READ_TIMEOUT_MS * 1000000ull;
    while ((rc = mgmt_http_parse_head(head, len, &req, &status)) == 0) {
        ssize_t n = read_some(fd, head, len, sizeof(head), deadline);
        if (n < 0) {
            if (len)
                send_error(fd, 408, "request incomplete or too slow");
            return;
        }
        len = (size_t)n;
    }
    if (rc < 0) {
        send_error(fd, status, vs_error_message());
        return;
    }
    if (fd->need_token && !mgmt_token_matches(req.authorization, d->token)) {
        send_error(fd, 401,
                   req.authorization[0] ? "invalid token"
                                        : "authorization required (Bearer token)");
        return;
    }
    if (!strcmp(req.method, "GET") && !strcmp(req.path, "/v1/events")) {
        if (len > req.head_len)
            send_error(fd, 400, "unexpected request body");
        else
            api_events(d, fd, req.query);
        return;
    }
    char vm[128];
    const char *action;
    if (!strcmp(req.method, "POST") && query_flag(req.query, "progress") &&
        copy_path(req.path, vm, sizeof(vm), &action)) {
        if (len > req.head_len || req.content_length)
            send_error(fd, 400, "unexpected request body");
        else
            api_copy_stream(d, fd, vm, action, req.query);
        return;
    }
    char *body = NULL;
    size_t have = len - req.head_len;
    if (have > req.content_length) {
        send_error(fd, 400, "more bytes than Content-Length (one request per connection)");
        return;
    }
    if (req.content_length) {
        body = malloc(req.content_length + 1);
        if (!body) {
            send_error(fd, 500, "out of memory");
            return;
        }
        memcpy(body, head + req.head_len, have);
        while (have < req.content_length) {
            ssize_t n = read_some(fd, body, have, req.content_length, deadline);
            if (n < 0) {
                send_error(fd, 408, "request body incomplete or too slow");
                free(body);
                return;
            }
            have = (size_t)n;
        }
        body[have] = 0;
        if (memchr(body, 0, have)) {
            send_error(fd, 400, "NUL byte in request body");
            free(body);
            return;
        }
    }
    struct api_reply r = {0};
    route(d, &req, body ? body : "", have, &r);
    send_reply(fd, &r);
    json_object_put(r.json);
    free(r.text);
    free(body);
}
