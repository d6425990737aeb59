/*
 * src/cli-vm.c — the VM verbs of `vessel` (define, list, start, shutdown, …): each is one request
 * to vesseld's REST API on its unix socket, printed as text or, with --json, as the API's JSON.
 *
 * The idea: the CLI holds no state and no logic beyond words. It checks a definition locally
 * first (so errors name the user's file and line even before the daemon sees it) and makes its
 * relative paths absolute (the daemon runs elsewhere); everything else is the daemon's job.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vessel/defs.h"
#include "vessel/mgmt.h"

int cli_vm_main(int argc, char **argv);

struct cli {
    const char *socket;
    bool json;
};

static int fail(const char *msg)
{
    fprintf(stderr, "vessel: %s\n", msg);
    return 1;
}

/* One API call to the daemon at socket. On an HTTP error prints the daemon's message and returns
 * 1; *out (may be NULL) gets the parsed JSON of a 2xx reply, *text the raw body. Shared with
 * src/cli-pool.c. */
int cli_api_call(const char *socket, const char *method, const char *path, const char *type,
                 const char *body, json_object **out, char **text);
/* A non-2xx answer: its {"error"} (or the status) as one line on stderr; frees BODY. 1. */
static int http_error(int status, char *body)
{
    json_object *o = body ? json_tokener_parse(body) : NULL;
    json_object *e;
    if (o && json_object_object_get_ex(o, "error", &e))
        fprintf(stderr, "vessel: %s\n", json_object_get_string(e));
    else
        fprintf(stderr, "vessel: HTTP %d %s\n", status, mgmt_http_reason(status));
    json_object_put(o);
    free(body);
    return 1;
}

int cli_api_call(const char *socket, const char *method, const char *path, const char *type,
                 const char *body, json_object **out, char **text)
{
    int status = 0;
    char *resp = NULL;
    size_t len = 0;
    if (out)
        *out = NULL;
    if (text)
        *text = NULL;
    int err = mgmt_client_request(socket, method, path, type, body, body ? strlen(body) : 0,
                                  &status, &resp, &len);
    if (err)
        return fail(vs_error_message());
    if (status < 200 || status > 299)
        return http_error(status, resp);
    if (out)
        *out = json_tokener_parse(resp);
    if (text)
        *text = resp;
    else
        free(resp);
    return 0;
}

static int call(struct cli *c, const char *method, const char *path, const char *type,
                const char *body, json_object **out, char **text)
{
    return cli_api_call(c->socket, method, path, type, body, out, text);
}

/* TEXT percent-encoded for a query value (malloc'd). Shared with src/cli-pool.c. */
char *cli_query_escape(const char *text);
char *cli_query_escape(const char *text)
{
    char *out = malloc(strlen(text) * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (const char *p = text; *p; p++) {
        if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-/", *p))
            out[o++] = *p;
        else
            o += (size_t)snprintf(out + o, 4, "%%%02X", (unsigned char)*p);
    }
    out[o] = 0;
    return out;
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static char *vm_path(const char *name, const char *suffix)
{
    return vs_asprintf("/v1/vms/%s%s", name, suffix ? suffix : "");
}

/* A simple POST verb: start, destroy, reboot, pause, resume. */
static int verb_action(struct cli *c, const char *name, const char *action, const char *query,
                       const char *done)
{
    char *path =
        vs_asprintf("/v1/vms/%s/%s%s%s", name, action, query ? "?" : "", query ? query : "");
    json_object *o;
    int rc = call(c, "POST", path, NULL, "", &o, NULL);
    free(path);
    if (rc == 0) {
        if (c->json)
            print_json(o);
        else
            printf("VM %s %s\n", name, done);
    }
    json_object_put(o);
    return rc;
}

/* Make a definition's relative paths absolute against the directory of its file. */
static int absolutise(char **field, const char *dir)
{
    if (!*field || (*field)[0] == '/')
        return 0;
    char *abs = vs_asprintf("%s/%s", dir, *field);
    if (!abs)
        return -ENOMEM;
    free(*field);
    *field = abs;
    return 0;
}

/* Define the VM in file. Relative paths in it are made absolute against base_dir (NULL: the
 * file's own directory). */
static int verb_define(struct cli *c, const char *file, const char *base_dir)
{
    struct vm_def *def = NULL;
    if (vm_def_parse_file(file, &def))
        return fail(vs_error_message());
    char real[PATH_MAX], dirbuf[PATH_MAX];
    snprintf(dirbuf, sizeof(dirbuf), "%s", file);
    const char *dir = base_dir ? base_dir : realpath(dirname(dirbuf), real) ? real : ".";
    int err = absolutise(&def->kernel, dir) || absolutise(&def->initrd, dir) ||
              absolutise(&def->console_path, dir);
    for (size_t i = 0; i < def->disk_count && !err; i++)
        err = absolutise(&def->disks[i].file, dir);
    if (!err && vm_def_check_disks(def)) {
        vm_def_free(def);
        return fail(vs_error_message());
    }
    char *text = err ? NULL : vm_def_print(def);
    if (!text) {
        vm_def_free(def);
        return fail("out of memory");
    }
    char base[PATH_MAX];
    snprintf(base, sizeof(base), "%s", file);
    char *enc = cli_query_escape(basename(base));
    /* a file without uuid redefines the VM under the uuid it has */
    char *path =
        enc ? vs_asprintf("/v1/vms?source=%s%s", enc, def->uuid_line ? "" : "&keep_uuid=1") : NULL;
    free(enc);
    json_object *reply = NULL;
    int rc = path ? call(c, "POST", path, "text/plain", text, &reply, NULL) : fail("out of memory");
    free(path);
    free(text);
    if (rc == 0) {
        if (c->json)
            print_json(reply);
        else
            printf("VM %s %s (uuid %s)\n", jstr(reply, "name"),
                   jint(reply, "created") ? "defined" : "redefined", jstr(reply, "uuid"));
    }
    json_object_put(reply);
    vm_def_free(def);
    return rc;
}

static char *read_whole_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *bigger = realloc(buf, cap);
            if (!bigger) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = bigger;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Run $VISUAL, else $EDITOR, else vi on file the way git does: through sh, so the variable may
 * carry arguments ("emacs -nw", "sed -i s/a/b/"). Returns the editor's exit status or -1. */
static int run_editor(const char *file)
{
    const char *editor = getenv("VISUAL");
    if (!editor || !editor[0])
        editor = getenv("EDITOR");
    if (!editor || !editor[0])
        editor = "vi";
    char *command = vs_asprintf("%s \"$@\"", editor);
    if (!command)
        return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", command, editor, file, (char *)NULL);
        _exit(127);
    }
    free(command);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Ask on the terminal; false when there is no terminal to ask (non-interactive use). */
static bool ask_yes(const char *question)
{
    if (!isatty(0))
        return false;
    fprintf(stderr, "%s [y/n] ", question);
    char answer[16];
    if (!fgets(answer, sizeof(answer), stdin))
        return false;
    return answer[0] == 'y' || answer[0] == 'Y';
}

/* vessel edit NAME: the definition in an editor, defined again when it changed and is valid. */
static int verb_edit(struct cli *c, const char *name)
{
    char *path = vs_asprintf("/v1/vms/%s/definition?format=vessel", name);
    char *original = NULL;
    int rc = path ? call(c, "GET", path, NULL, NULL, NULL, &original) : fail("out of memory");
    free(path);
    if (rc)
        return rc;
    const char *tmp = getenv("TMPDIR");
    char *file = vs_asprintf("%s/vessel-edit-%s-XXXXXX.vm", tmp && tmp[0] ? tmp : "/tmp", name);
    int fd = file ? mkstemps(file, 3) : -1;
    size_t olen = strlen(original);
    if (fd < 0 || write(fd, original, olen) != (ssize_t)olen) {
        fprintf(stderr, "vessel: %s: %s\n", file ? file : "temporary file", strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(file);
        }
        free(file);
        free(original);
        return 1;
    }
    close(fd);
    char cwd[PATH_MAX];
    const char *base = getcwd(cwd, sizeof(cwd)) ? cwd : "/";
    for (;;) {
        int status = run_editor(file);
        if (status != 0) {
            fprintf(stderr, "vessel: the editor failed (status %d); definition of %s unchanged\n",
                    status, name);
            rc = 1;
            break;
        }
        size_t len = 0;
        char *edited = read_whole_file(file, &len);
        if (!edited) {
            fprintf(stderr, "vessel: %s: %s\n", file, strerror(errno));
            rc = 1;
            break;
        }
        bool same = len == olen && !memcmp(edited, original, len);
        free(edited);
        if (same) {
            if (c->json)
                printf("{\"name\":\"%s\",\"changed\":false}\n", name);
            else
                printf("no changes to VM %s\n", name);
            rc = 0;
            break;
        }
        /* the name is the VM's identity here: a new name would define a second VM */
        struct vm_def *def = NULL;
        if (vm_def_parse_file(file, &def) == 0 && strcmp(def->name, name)) {
            fprintf(stderr,
                    "vessel: %s: line %d: name: edit can't rename VM '%s' to '%s' (use "
                    "clone)\n",
                    file, def->name_line, name, def->name);
            rc = 1;
        } else {
            rc = verb_define(c, file, base);
        }
        vm_def_free(def);
        if (rc == 0)
            break;
        if (!ask_yes("Edit again?")) {
            fprintf(stderr, "vessel: definition of %s unchanged\n", name);
            break;
        }
    }
    unlink(file);
    free(file);
    free(original);
    return rc;
}

/* ---- verbs that copy disks: their progress streamed ------------------------------------------ */

struct copy_stream {
    struct vs_progress bar;
    bool drawn;
    json_object *last; /* the answer's last line */
};

static int copy_line(void *arg, const char *line)
{
    struct copy_stream *s = arg;
    json_object *o = json_tokener_parse(line), *p;
    if (!o)
        return 0;
    if (json_object_object_get_ex(o, "progress", &p)) {
        vs_progress_update(&s->bar, (uint64_t)jint(p, "done"), (uint64_t)jint(p, "total"));
        s->drawn = s->bar.enabled;
        json_object_put(o);
        return 0;
    }
    s->last = o;
    return 1;
}

/* POST PATH (clone, template) with progress=1: a progress bar on stderr while the daemon copies,
 * when stderr is a terminal and the output is not --json; *out the answer, as call() gives it. */
static int call_copy(struct cli *c, const char *path, json_object **out)
{
    *out = NULL;
    char *full = vs_asprintf("%s%sprogress=1", path, strchr(path, '?') ? "&" : "?");
    if (!full)
        return fail("out of memory");
    struct copy_stream s = {.last = NULL};
    vs_progress_init(&s.bar, isatty(STDERR_FILENO) && !c->json, stderr);
    int status = 0;
    char *error_body = NULL;
    int err = mgmt_client_stream(c->socket, "POST", full, &status, &error_body, copy_line, &s);
    free(full);
    json_object *ok, *v;
    bool done = !err && !error_body && s.last && json_object_object_get_ex(s.last, "ok", &ok) &&
                json_object_get_boolean(ok);
    if (s.drawn && !done) /* end the bar's line before the message */
        fputc('\n', stderr);
    if (err) {
        json_object_put(s.last);
        return fail(vs_error_message());
    }
    if (error_body)
        return http_error(status, error_body);
    if (!s.last)
        return fail("the daemon closed the connection before the copy ended");
    if (!done) {
        fprintf(stderr, "vessel: %s\n",
                json_object_object_get_ex(s.last, "error", &v) ? json_object_get_string(v)
                                                               : "the copy failed");
        json_object_put(s.last);
        return 1;
    }
    vs_progress_finish(&s.bar);
    if (json_object_object_get_ex(s.last, "result", &v))
        *out = json_object_get(v);
    json_object_put(s.last);
    return 0;
}

/* vessel template NAME (GOLD | --pool P --name VOL) [--compress] */
static int verb_template(struct cli *c, const char *name, const char *gold, const char *pool,
                         const char *volume, bool compress)
{
    if (!gold == !pool || (pool && !volume) || (gold && volume))
        return fail("template NAME GOLD.qcow2, or template NAME --pool POOL --name VOLUME");
    char *query = NULL;
    if (gold) {
        char cwd[PATH_MAX];
        char *abs = gold[0] == '/'                     ? vs_strdup(gold)
                    : getcwd(cwd, sizeof(cwd)) != NULL ? vs_asprintf("%s/%s", cwd, gold)
                                                       : NULL;
        char *enc = abs ? cli_query_escape(abs) : NULL;
        query = enc ? vs_asprintf("path=%s", enc) : NULL;
        free(enc);
        free(abs);
    } else {
        char *ep = cli_query_escape(pool), *ev = cli_query_escape(volume);
        query = ep && ev ? vs_asprintf("pool=%s&name=%s", ep, ev) : NULL;
        free(ep);
        free(ev);
    }
    char *path =
        query ? vs_asprintf("/v1/vms/%s/template?%s%s", name, query, compress ? "&compress=1" : "")
              : NULL;
    free(query);
    json_object *o = NULL;
    int rc = path ? call_copy(c, path, &o) : fail("out of memory");
    free(path);
    if (rc == 0) {
        if (c->json) {
            print_json(o);
        } else {
            char vsize[32], used[32];
            vs_format_size((uint64_t)jint(o, "virtual_size"), vsize, sizeof(vsize));
            vs_format_size((uint64_t)jint(o, "disk_usage"), used, sizeof(used));
            printf("template of VM %s written to %s (qcow2%s, virtual size %s, %s on disk)\n", name,
                   jstr(o, "path"), compress ? ", compressed" : "", vsize, used);
        }
    }
    json_object_put(o);
    return rc;
}

/* PATH made absolute against the current directory (malloc'd). */
static char *absolute_path(const char *path)
{
    char cwd[PATH_MAX];
    if (path[0] == '/')
        return vs_strdup(path);
    return getcwd(cwd, sizeof(cwd)) ? vs_asprintf("%s/%s", cwd, path) : NULL;
}

/* POST URL with the body {"path": FILE} ({} when FILE is NULL): save and restore. */
static int post_state_file(struct cli *c, const char *url, const char *file, json_object **o)
{
    json_object *body = json_object_new_object();
    if (!body)
        return fail("out of memory");
    if (file)
        json_object_object_add(body, "path", json_object_new_string(file));
    int rc = call(c, "POST", url, "application/json",
                  json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN), o, NULL);
    json_object_put(body);
    return rc;
}

/* save NAME FILE: the VM's memory and device state to FILE, then it stops (xm save). */
static int verb_save(struct cli *c, const char *name, const char *file)
{
    char *abs = absolute_path(file), *path = vm_path(name, "/save");
    json_object *o = NULL;
    int rc = abs && path ? post_state_file(c, path, abs, &o) : fail("out of memory");
    if (rc == 0)
        c->json ? print_json(o) : (void)printf("VM %s saved to %s\n", name, jstr(o, "path"));
    json_object_put(o);
    free(abs);
    free(path);
    return rc;
}

/* restore FILE|NAME: an argument with a '/' or naming an existing file is a state file (the daemon
 * finds the VM saved to it), else the name of a saved VM (xm restore). */
static int verb_restore(struct cli *c, const char *what)
{
    struct stat st;
    bool is_file = strchr(what, '/') || stat(what, &st) == 0;
    char *abs = is_file ? absolute_path(what) : NULL;
    char *path = is_file ? vs_strdup("/v1/restore") : vm_path(what, "/restore");
    json_object *o = NULL;
    int rc = (!is_file || abs) && path ? post_state_file(c, path, abs, &o) : fail("out of memory");
    if (rc == 0)
        c->json ? print_json(o)
                : (void)printf("VM %s restored from %s\n", jstr(o, "name"), jstr(o, "path"));
    json_object_put(o);
    free(abs);
    free(path);
    return rc;
}

static int verb_list(struct cli *c, bool all)
{
    json_object *o, *vms;
    int rc = call(c, "GET", "/v1/vms", NULL, NULL, &o, NULL);
    if (rc)
        return rc;
    if (!json_object_object_get_ex(o, "vms", &vms)) {
        json_object_put(o);
        return fail("malformed answer from vesseld");
    }
    json_object *shown = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(vms); i++) {
        json_object *vm = json_object_array_get_idx(vms, i);
        const char *state = jstr(vm, "state");
        if (all || !strcmp(state, "running") || !strcmp(state, "paused"))
            json_object_array_add(shown, json_object_get(vm));
    }
    if (c->json) {
        print_json(shown);
    } else {
        printf("%-24s %-9s %-8s %s\n", "NAME", "STATE", "PID", "UUID");
        for (size_t i = 0; i < json_object_array_length(shown); i++) {
            json_object *vm = json_object_array_get_idx(shown, i);
            char pid[24] = "-";
            if (jint(vm, "pid"))
                snprintf(pid, sizeof(pid), "%lld", (long long)jint(vm, "pid"));
            printf("%-24s %-9s %-8s %s\n", jstr(vm, "name"), jstr(vm, "state"), pid,
                   jstr(vm, "uuid"));
        }
    }
    json_object_put(shown);
    json_object_put(o);
    return 0;
}

static int verb_info(struct cli *c, const char *name)
{
    char *path = vm_path(name, NULL);
    json_object *o;
    int rc = call(c, "GET", path, NULL, NULL, &o, NULL);
    free(path);
    if (rc)
        return rc;
    if (c->json) {
        print_json(o);
    } else {
        char mem[32];
        vs_format_size((uint64_t)jint(o, "memory"), mem, sizeof(mem));
        printf("Name:        %s\nUUID:        %s\nState:       %s\n", jstr(o, "name"),
               jstr(o, "uuid"), jstr(o, "state"));
        if (jint(o, "pid"))
            printf("PID:         %lld\nUptime:      %lld s\n", (long long)jint(o, "pid"),
                   (long long)jint(o, "uptime_s"));
        printf("vCPUs:       %lld\nMemory:      %s\nDisks:       %lld\nNICs:        %lld\n"
               "Autostart:   %s\nPolicies:    poweroff=%s reboot=%s crash=%s\nBoots:       %lld\n",
               (long long)jint(o, "vcpus"), mem, (long long)jint(o, "disks"),
               (long long)jint(o, "nics"), jint(o, "autostart") ? "on" : "off",
               jstr(o, "on_poweroff"), jstr(o, "on_reboot"), jstr(o, "on_crash"),
               (long long)jint(o, "boots"));
        if (jstr(o, "saved_path")[0])
            printf("Saved to:    %s\n", jstr(o, "saved_path"));
        if (jint(o, "last_exit") >= 0)
            printf("Last exit:   %lld\n", (long long)jint(o, "last_exit"));
        if (jstr(o, "last_error")[0])
            printf("Last error:  %s\n", jstr(o, "last_error"));
        json_object *taps;
        if (json_object_object_get_ex(o, "taps", &taps) &&
            json_object_is_type(taps, json_type_array))
            for (size_t i = 0; i < json_object_array_length(taps); i++) {
                json_object *t = json_object_array_get_idx(taps, i);
                bool bridge = json_object_object_get_ex(t, "bridge", NULL);
                printf("Tap:         %s on %s %s\n", jstr(t, "tap"), bridge ? "bridge" : "network",
                       jstr(t, bridge ? "bridge" : "network"));
            }
    }
    json_object_put(o);
    return 0;
}

static const char *state_of(struct cli *c, const char *name, char *buf, size_t len)
{
    char *path = vm_path(name, NULL);
    json_object *o;
    int status = 0;
    char *resp = NULL;
    size_t rlen;
    buf[0] = 0;
    if (mgmt_client_request(c->socket, "GET", path, NULL, NULL, 0, &status, &resp, &rlen) == 0 &&
        status == 200 && (o = json_tokener_parse(resp))) {
        snprintf(buf, len, "%s", jstr(o, "state"));
        json_object_put(o);
    }
    free(resp);
    free(path);
    return buf;
}

static int verb_shutdown(struct cli *c, const char *name, long timeout)
{
    char *path = vs_asprintf("/v1/vms/%s/shutdown", name);
    json_object *o;
    int rc = call(c, "POST", path, NULL, "", &o, NULL);
    free(path);
    json_object_put(o);
    if (rc)
        return rc;
    if (timeout < 0) {
        if (!c->json)
            printf("VM %s is shutting down (power button pressed)\n", name);
        else
            printf("{\"name\":\"%s\",\"result\":\"power button pressed\"}\n", name);
        return 0;
    }
    char state[16];
    uint64_t deadline = vs_now_ns() + (uint64_t)timeout * 1000000000ull;
    while (vs_now_ns() < deadline) {
        state_of(c, name, state, sizeof(state));
        if (strcmp(state, "running") && strcmp(state, "paused")) {
            if (c->json)
                printf("{\"name\":\"%s\",\"result\":\"shut off\",\"state\":\"%s\"}\n", name, state);
            else
                printf("VM %s shut off\n", name);
            return 0;
        }
        usleep(100000);
    }
    fprintf(stderr, "vessel: %s did not shut down within %ld s; destroying it\n", name, timeout);
    char *dpath = vs_asprintf("/v1/vms/%s/destroy", name);
    rc = call(c, "POST", dpath, NULL, "", &o, NULL);
    free(dpath);
    json_object_put(o);
    if (rc == 0) {
        if (c->json)
            printf("{\"name\":\"%s\",\"result\":\"destroyed\"}\n", name);
        else
            printf("VM %s destroyed\n", name);
    }
    return rc;
}

static int verb_dumpdef(struct cli *c, const char *name, const char *format)
{
    char *path = vs_asprintf("/v1/vms/%s/definition?format=%s", name, format);
    char *text;
    int rc = call(c, "GET", path, NULL, NULL, NULL, &text);
    free(path);
    if (rc)
        return rc;
    if (c->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "format", json_object_new_string(format));
        json_object_object_add(o, "definition", json_object_new_string(text));
        print_json(o);
        json_object_put(o);
    } else {
        fputs(text, stdout);
    }
    free(text);
    return 0;
}

static int verb_stats(struct cli *c, const char *name)
{
    char *path = vm_path(name, "/stats");
    json_object *o;
    int rc = call(c, "GET", path, NULL, NULL, &o, NULL);
    free(path);
    if (rc)
        return rc;
    if (c->json) {
        print_json(o);
    } else {
        char mem[32];
        vs_format_size((uint64_t)jint(o, "memory"), mem, sizeof(mem));
        json_object *v;
        double pct =
            json_object_object_get_ex(o, "cpu_percent", &v) ? json_object_get_double(v) : 0;
        printf("State:       %s\nUptime:      %.1f s\nvCPUs:       %lld\nCPU time:    %.3f s\n"
               "CPU:         %.1f %%\nMemory:      %s\n",
               jstr(o, "state"), (double)jint(o, "uptime_ms") / 1000, (long long)jint(o, "vcpus"),
               (double)jint(o, "cpu_time_ns") / 1e9, pct, mem);
        json_object *devs;
        struct json_object_iter dev, counter;
        if (json_object_object_get_ex(o, "devices", &devs) &&
            json_object_is_type(devs, json_type_object)) {
            json_object_object_foreachC(devs, dev)
            {
                printf("%-12s", dev.key);
                if (json_object_is_type(dev.val, json_type_object))
                    json_object_object_foreachC(dev.val, counter)
                    {
                        printf(" %s=%s", counter.key, json_object_get_string(counter.val));
                    }
                printf("\n");
            }
        }
    }
    json_object_put(o);
    return 0;
}

static int verb_snapshot(struct cli *c, const char *op, const char *name, const char *snap)
{
    char *path = NULL;
    json_object *o = NULL;
    int rc;
    if (!strcmp(op, "list")) {
        path = vm_path(name, "/snapshots");
        rc = call(c, "GET", path, NULL, NULL, &o, NULL);
        json_object *arr;
        if (!rc && c->json)
            print_json(o);
        else if (!rc && json_object_object_get_ex(o, "snapshots", &arr))
            for (size_t i = 0; i < json_object_array_length(arr); i++)
                printf("%s\n", json_object_get_string(json_object_array_get_idx(arr, i)));
    } else if (!snap) {
        rc = fail("snapshot create|revert|delete NAME SNAP: SNAP missing");
    } else {
        const char *method = "POST", *what = "created";
        if (!strcmp(op, "create")) {
            path = vs_asprintf("/v1/vms/%s/snapshots?name=%s", name, snap);
        } else if (!strcmp(op, "revert")) {
            path = vs_asprintf("/v1/vms/%s/snapshots/%s/revert", name, snap);
            what = "reverted to";
        } else if (!strcmp(op, "delete")) {
            path = vs_asprintf("/v1/vms/%s/snapshots/%s", name, snap);
            method = "DELETE";
            what = "deleted";
        } else {
            return fail("snapshot: create, list, revert or delete");
        }
        rc = call(c, method, path, NULL, strcmp(method, "POST") ? NULL : "", &o, NULL);
        if (!rc) {
            if (c->json)
                print_json(o);
            else
                printf("snapshot %s of %s %s\n", snap, name, what);
        }
    }
    free(path);
    json_object_put(o);
    return rc;
}

/* Relay the terminal to the VM's serial console socket until EOF or Ctrl-]. */
static int verb_console(struct cli *c, const char *name)
{
    char *path = vm_path(name, NULL);
    json_object *o;
    int rc = call(c, "GET", path, NULL, NULL, &o, NULL);
    free(path);
    if (rc)
        return rc;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int n = snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/console.sock", jstr(o, "run_dir"));
    json_object_put(o);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (n >= (int)sizeof(addr.sun_path) || fd < 0 ||
        connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "vessel: %s: no console (is the VM running with console = pty?)\n",
                addr.sun_path);
        if (fd >= 0)
            close(fd);
        return 1;
    }
    struct termios saved, raw;
    bool tty = isatty(0) && tcgetattr(0, &saved) == 0;
    if (tty) {
        raw = saved;
        cfmakeraw(&raw);
        tcsetattr(0, TCSANOW, &raw);
        fprintf(stderr, "Connected to %s (Ctrl-] to leave)\r\n", name);
    }
    char buf[4096];
    bool in_open = true;
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
        if (poll(p, in_open ? 2 : 1, -1) < 0 && errno != EINTR)
            break;
        if (p[0].revents) {
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r <= 0 || write(1, buf, (size_t)r) != r)
                break;
        }
        if (in_open && p[1].revents) {
            ssize_t r = read(0, buf, sizeof(buf));
            if (r <= 0) {
                in_open = false;
                shutdown(fd, SHUT_WR);
                continue;
            }
            if (tty && memchr(buf, 0x1d, (size_t)r))
                break;
            if (write(fd, buf, (size_t)r) != r)
                break;
        }
    }
    if (tty)
        tcsetattr(0, TCSANOW, &saved);
    close(fd);
    return 0;
}

static int print_event(void *arg, const char *line)
{
    struct cli *c = arg;
    if (c->json) {
        printf("%s\n", line);
    } else {
        json_object *o = json_tokener_parse(line);
        if (!o)
            return 0;
        time_t t = (time_t)jint(o, "time");
        struct tm tm;
        char when[32];
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
        const char *detail = jstr(o, "detail");
        printf("%s  %-16s %-14s%s%s\n", when, jstr(o, "vm")[0] ? jstr(o, "vm") : "(host)",
               jstr(o, "event"), detail[0] ? " " : "", detail);
        json_object_put(o);
    }
    fflush(stdout);
    return 0;
}

/* Follow GET /v1/events until the daemon closes the stream or we are interrupted. */
static int verb_events(struct cli *c, const char *since)
{
    char *path = vs_asprintf("/v1/events%s%s", since ? "?since=" : "", since ? since : "");
    int status = 0;
    char *error_body = NULL;
    int err = mgmt_client_stream(c->socket, "GET", path, &status, &error_body, print_event, c);
    free(path);
    if (err)
        return fail(vs_error_message());
    return error_body ? http_error(status, error_body) : 0;
}

/* --token-file: the first line of FILE. */
static int read_token_file(const char *path, char *out, size_t len)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "vessel: %s: %s\n", path, strerror(errno));
        return -1;
    }
    bool ok = fgets(out, (int)len, f) != NULL;
    fclose(f);
    out[ok ? strcspn(out, "\r\n") : 0] = 0;
    if (!out[0]) {
        fprintf(stderr, "vessel: %s: no token on the first line\n", path);
        return -1;
    }
    return 0;
}

/* --connect, --token-file, --cacert → the daemon's address and the TLS settings. Shared with
 * src/cli-pool.c. Returns 0, or 1 after printing the error. */
int cli_connect_setup(const char *connect, const char *token_file, const char *cacert,
                      const char **socket);
int cli_connect_setup(const char *connect, const char *token_file, const char *cacert,
                      const char **socket)
{
    *socket = mgmt_client_socket_path(connect);
    if (token_file || cacert) {
        char token[512];
        if (token_file && read_token_file(token_file, token, sizeof(token)))
            return 1;
        int err = mgmt_client_set_tls(cacert, token_file ? token : NULL);
        if (token_file)
            explicit_bzero(token, sizeof(token));
        if (err)
            return fail(vs_error_message());
    }
    return 0;
}

static void usage(FILE *out, const char *verb)
{
    fprintf(out,
            "usage: vessel [--connect unix:PATH|tls:HOST:PORT] [--json] VERB …   (daemon: "
            "--connect, $VESSEL_SOCKET, or %s/%s)\n"
            "  over tls: --token-file FILE (else $VESSEL_TOKEN), --cacert FILE (else "
            "$VESSEL_CACERT or the system's CAs)\n"
            "  define FILE                     add or replace a VM definition\n"
            "  undefine NAME                   remove a shut-off VM's definition\n"
            "  list [--all]                    running VMs (all with --all)\n"
            "  info NAME | stats NAME          state and settings | CPU, memory, device counters\n"
            "  start NAME [--paused] [--console]   start (paused before the first instruction "
            "runs long); then attach the console\n"
            "  shutdown NAME [--timeout N]     ACPI power button; destroy after N s\n"
            "  destroy | reboot | pause | resume NAME   (destroy of a saved VM discards the "
            "saved state)\n"
            "  save NAME FILE                  memory and devices to FILE (a new file), then the "
            "VM stops (xm save)\n"
            "  restore FILE | restore NAME     resume the VM saved to FILE (xm restore)\n"
            "  dumpdef NAME [--format vessel|libvirt]\n"
            "  autostart NAME on|off\n"
            "  clone NAME NEW [--copy]         new uuid and MACs; qcow2 overlays or full copies\n"
            "  snapshot create|list|revert|delete NAME [SNAP]   external qcow2 overlays\n"
            "  console NAME                    serial console (Ctrl-] leaves)\n"
            "  edit NAME                       the definition in $VISUAL/$EDITOR/vi, defined "
            "again when valid\n"
            "  template NAME GOLD.qcow2 | template NAME --pool POOL --name VOLUME [--compress]\n"
            "                                  the first writable disk as a standalone qcow2 "
            "(gold image)\n"
            "  events [--since ID]             follow state changes (one line each)\n",
            MGMT_DEFAULT_STATE_DIR, MGMT_SOCKET_NAME);
    (void)verb;
}

int cli_vm_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},          {"connect", required_argument, NULL, 'c'},
        {"all", no_argument, NULL, 'a'},           {"paused", no_argument, NULL, 'p'},
        {"timeout", required_argument, NULL, 't'}, {"format", required_argument, NULL, 'f'},
        {"copy", no_argument, NULL, 'C'},          {"token-file", required_argument, NULL, 'T'},
        {"cacert", required_argument, NULL, 'A'},  {"since", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},          {"console", no_argument, NULL, 'O'},
        {"pool", required_argument, NULL, 'P'},    {"name", required_argument, NULL, 'N'},
        {"compress", no_argument, NULL, 'Z'},      {NULL, 0, NULL, 0},
    };
    const char *verb = argv[0];
    struct cli c = {0};
    const char *connect = NULL, *format = "vessel", *token_file = NULL, *cacert = NULL,
               *since = NULL, *pool = NULL, *volume = NULL;
    bool all = false, paused = false, copy = false, console = false, compress = false;
    long timeout = -1;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "hjac:t:f:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            c.json = true;
            break;
        case 'c':
            connect = optarg;
            break;
        case 'a':
            all = true;
            break;
        case 'p':
            paused = true;
            break;
        case 'C':
            copy = true;
            break;
        case 't': {
            char *end;
            timeout = strtol(optarg, &end, 10);
            if (*end || timeout < 0 || timeout > 86400)
                return fail("--timeout: seconds, 0-86400");
            break;
        }
        case 'f':
            format = optarg;
            break;
        case 'T':
            token_file = optarg;
            break;
        case 'A':
            cacert = optarg;
            break;
        case 'S':
            since = optarg;
            break;
        case 'O':
            console = true;
            break;
        case 'P':
            pool = optarg;
            break;
        case 'N':
            volume = optarg;
            break;
        case 'Z':
            compress = true;
            break;
        case 'h':
            usage(stdout, verb);
            return 0;
        default:
            usage(stderr, verb);
            return 1;
        }
    }
    if (cli_connect_setup(connect, token_file, cacert, &c.socket))
        return 1;
    /* GNU getopt permutes: options may follow the operands (`vessel start web1 --paused`) */
    char **ops = argv + optind;
    int nops = argc - optind;
    static const struct {
        const char *name;
        int min, max;
    } arity[] = {
        {"define", 1, 1},  {"undefine", 1, 1}, {"list", 0, 0},     {"info", 1, 1},
        {"start", 1, 1},   {"shutdown", 1, 1}, {"destroy", 1, 1},  {"reboot", 1, 1},
        {"pause", 1, 1},   {"resume", 1, 1},   {"dumpdef", 1, 1},  {"autostart", 2, 2},
        {"stats", 1, 1},   {"clone", 2, 2},    {"snapshot", 2, 3}, {"console", 1, 1},
        {"events", 0, 0},  {"edit", 1, 1},     {"template", 1, 2}, {"save", 2, 2},
        {"restore", 1, 1},
    };
    for (size_t i = 0; i < VS_ARRAY_SIZE(arity); i++) {
        if (strcmp(verb, arity[i].name))
            continue;
        if (nops < arity[i].min || nops > arity[i].max) {
            fprintf(stderr, "vessel %s: wrong number of arguments\n", verb);
            usage(stderr, verb);
            return 1;
        }
        if (!strcmp(verb, "define"))
            return verb_define(&c, ops[0], NULL);
        if (!strcmp(verb, "undefine")) {
            char *path = vm_path(ops[0], NULL);
            json_object *o;
            int rc = call(&c, "DELETE", path, NULL, NULL, &o, NULL);
            free(path);
            if (!rc)
                c.json ? print_json(o) : (void)printf("VM %s undefined\n", ops[0]);
            json_object_put(o);
            return rc;
        }
        if (!strcmp(verb, "list"))
            return verb_list(&c, all);
        if (!strcmp(verb, "info"))
            return verb_info(&c, ops[0]);
        if (!strcmp(verb, "start")) {
            int rc = verb_action(&c, ops[0], "start", paused ? "paused=1" : NULL,
                                 paused ? "started (paused)" : "started");
            return rc || !console ? rc : verb_console(&c, ops[0]);
        }
        if (!strcmp(verb, "shutdown"))
            return verb_shutdown(&c, ops[0], timeout);
        if (!strcmp(verb, "save"))
            return verb_save(&c, ops[0], ops[1]);
        if (!strcmp(verb, "restore"))
            return verb_restore(&c, ops[0]);
        if (!strcmp(verb, "destroy"))
            return verb_action(&c, ops[0], "destroy", NULL, "destroyed");
        if (!strcmp(verb, "reboot"))
            return verb_action(&c, ops[0], "reboot", NULL, "rebooted");
        if (!strcmp(verb, "pause"))
            return verb_action(&c, ops[0], "pause", NULL, "paused");
        if (!strcmp(verb, "resume"))
            return verb_action(&c, ops[0], "resume", NULL, "resumed");
        if (!strcmp(verb, "dumpdef"))
            return verb_dumpdef(&c, ops[0], format);
        if (!strcmp(verb, "autostart")) {
            if (strcmp(ops[1], "on") && strcmp(ops[1], "off"))
                return fail("autostart NAME on|off");
            char q[16];
            snprintf(q, sizeof(q), "value=%s", ops[1]);
            return verb_action(&c, ops[0], "autostart", q,
                               !strcmp(ops[1], "on") ? "will autostart" : "will not autostart");
        }
        if (!strcmp(verb, "stats"))
            return verb_stats(&c, ops[0]);
        if (!strcmp(verb, "clone")) {
            char *path = vs_asprintf("/v1/vms/%s/clone?name=%s&mode=%s", ops[0], ops[1],
                                     copy ? "copy" : "overlay");
            json_object *o = NULL;
            int rc = path ? call_copy(&c, path, &o) : fail("out of memory");
            free(path);
            if (rc == 0)
                c.json ? print_json(o) : (void)printf("VM %s cloned\n", ops[0]);
            json_object_put(o);
            return rc;
        }
        if (!strcmp(verb, "snapshot"))
            return verb_snapshot(&c, ops[0], ops[1], nops > 2 ? ops[2] : NULL);
        if (!strcmp(verb, "console"))
            return verb_console(&c, ops[0]);
        if (!strcmp(verb, "events"))
            return verb_events(&c, since);
        if (!strcmp(verb, "edit"))
            return verb_edit(&c, ops[0]);
        if (!strcmp(verb, "template"))
            return verb_template(&c, ops[0], nops > 1 ? ops[1] : NULL, pool, volume, compress);
    }
    fprintf(stderr, "vessel: unknown VM verb '%s'\n", verb);
    return 1;
}
