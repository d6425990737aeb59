/*
 * src/cli-pool.c — `vessel pool …` and `vessel vol …`: storage pools (directories the daemon
 * knows by name) and the volumes (image files) in them, each verb one request to vesseld's API.
 *
 * The idea: as for the VM verbs, the CLI holds no state; it only turns words into requests and
 * JSON into tables. Paths given on the command line are made absolute here, because the daemon
 * does not share our working directory. The request plumbing (connection, TLS, error printing) is
 * the one of src/cli-vm.c.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "vessel/mgmt.h"

int cli_pool_main(int argc, char **argv);
/* src/cli-vm.c */
int cli_api_call(const char *socket, const char *method, const char *path, const char *type,
                 const char *body, json_object **out, char **text);
char *cli_query_escape(const char *text);
int cli_connect_setup(const char *connect, const char *token_file, const char *cacert,
                      const char **socket);

struct pool_cli {
    const char *socket;
    bool json;
};

static int pool_fail(const char *msg)
{
    fprintf(stderr, "vessel: %s\n", msg);
    return 1;
}

static const char *pool_jstr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static int64_t pool_jint(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static void pool_print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
}

static const char *size_text(int64_t bytes, char *buf, size_t len)
{
    vs_format_size((uint64_t)(bytes < 0 ? 0 : bytes), buf, len);
    return buf;
}

/* A path from the command line, absolute against our working directory (malloc'd). */
static char *absolute(const char *path)
{
    if (path[0] == '/')
        return vs_strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return NULL;
    return vs_asprintf("%s/%s", cwd, path);
}

/* One request; prints the reply as JSON with --json, else calls text_fn. */
static int request(struct pool_cli *c, const char *method, const char *path,
                   void (*text_fn)(json_object *o, const void *arg), const void *arg)
{
    json_object *o = NULL;
    if (!path)
        return pool_fail("out of memory");
    int rc =
        cli_api_call(c->socket, method, path, NULL, !strcmp(method, "POST") ? "" : NULL, &o, NULL);
    if (rc == 0) {
        if (c->json)
            pool_print_json(o);
        else if (text_fn)
            text_fn(o, arg);
    }
    json_object_put(o);
    return rc;
}

static void print_pool_info(json_object *o, const void *arg)
{
    char cap[32], avail[32], alloc[32];
    printf("Name:        %s\nPath:        %s\nState:       %s\n", pool_jstr(o, "name"),
           pool_jstr(o, "path"), pool_jstr(o, "state"));
    if (!strcmp(pool_jstr(o, "state"), "available"))
        printf("Capacity:    %s\nAllocation:  %s\nAvailable:   %s\nVolumes:     %lld\n",
               size_text(pool_jint(o, "capacity"), cap, sizeof(cap)),
               size_text(pool_jint(o, "allocation"), alloc, sizeof(alloc)),
               size_text(pool_jint(o, "available"), avail, sizeof(avail)),
               (long long)pool_jint(o, "volumes"));
    else
        printf("Error:       %s\n", pool_jstr(o, "error"));
}

static void print_pool_defined(json_object *o, const void *arg)
{
    printf("pool %s defined (%s)\n", pool_jstr(o, "name"), pool_jstr(o, "path"));
}

static void print_pool_list(json_object *o, const void *arg)
{
    json_object *pools;
    if (!json_object_object_get_ex(o, "pools", &pools))
        return;
    printf("%-16s %-11s %-9s %-12s %-12s %s\n", "NAME", "STATE", "VOLUMES", "CAPACITY", "AVAILABLE",
           "PATH");
    for (size_t i = 0; i < json_object_array_length(pools); i++) {
        json_object *p = json_object_array_get_idx(pools, i);
        char cap[32] = "-", avail[32] = "-", vols[24] = "-";
        if (!strcmp(pool_jstr(p, "state"), "available")) {
            size_text(pool_jint(p, "capacity"), cap, sizeof(cap));
            size_text(pool_jint(p, "available"), avail, sizeof(avail));
            snprintf(vols, sizeof(vols), "%lld", (long long)pool_jint(p, "volumes"));
        }
        printf("%-16s %-11s %-9s %-12s %-12s %s\n", pool_jstr(p, "name"), pool_jstr(p, "state"),
               vols, cap, avail, pool_jstr(p, "path"));
    }
}

static void print_done(json_object *o, const void *arg)
{
    printf("%s\n", (const char *)arg);
}

/* "vm1,vm2" or "-" */
static void users_text(json_object *v, char *buf, size_t len)
{
    json_object *used;
    size_t o = 0;
    buf[0] = 0;
    if (json_object_object_get_ex(v, "used_by", &used))
        for (size_t k = 0; k < json_object_array_length(used) && o + 1 < len; k++)
            o += (size_t)snprintf(buf + o, len - o, "%s%s", k ? "," : "",
                                  json_object_get_string(json_object_array_get_idx(used, k)));
    if (!buf[0])
        snprintf(buf, len, "-");
}

static void print_volume(json_object *v, const void *arg)
{
    char vsize[32], used[32], users[256];
    users_text(v, users, sizeof(users));
    printf("volume %s: %s, virtual size %s, %s on disk%s%s, used by %s\n  %s\n",
           pool_jstr(v, "name"), pool_jstr(v, "format"),
           size_text(pool_jint(v, "virtual_size"), vsize, sizeof(vsize)),
           size_text(pool_jint(v, "disk_usage"), used, sizeof(used)),
           pool_jstr(v, "backing")[0] ? ", backing " : "", pool_jstr(v, "backing"), users,
           pool_jstr(v, "path"));
}

static void print_volume_list(json_object *o, const void *arg)
{
    json_object *vols;
    if (!json_object_object_get_ex(o, "volumes", &vols))
        return;
    printf("%-24s %-7s %-12s %-12s %-16s %s\n", "NAME", "FORMAT", "VIRTUAL", "DISK USAGE",
           "USED BY", "BACKING");
    for (size_t i = 0; i < json_object_array_length(vols); i++) {
        json_object *v = json_object_array_get_idx(vols, i);
        char vsize[32] = "-", used[32], users[256];
        if (strcmp(pool_jstr(v, "format"), "unknown"))
            size_text(pool_jint(v, "virtual_size"), vsize, sizeof(vsize));
        users_text(v, users, sizeof(users));
        const char *backing = pool_jstr(v, "backing");
        printf("%-24s %-7s %-12s %-12s %-16s %s\n", pool_jstr(v, "name"), pool_jstr(v, "format"),
               vsize, size_text(pool_jint(v, "disk_usage"), used, sizeof(used)), users,
               backing[0] ? backing : "-");
    }
}

static void pool_usage(FILE *out)
{
    fprintf(out,
            "usage: vessel pool VERB … | vessel vol VERB …   [--json] [--connect unix:PATH|"
            "tls:HOST:PORT] [--token-file FILE] [--cacert FILE]\n"
            "  pool define NAME PATH           a directory as a storage pool (created if missing)\n"
            "  pool list                       pools with capacity, free space, volume count\n"
            "  pool info NAME                  path, capacity, allocation, available, volumes\n"
            "  pool undefine NAME              forget the pool (refused while a VM uses one of "
            "its volumes; files stay)\n"
            "  vol create POOL NAME [SIZE] [-f FORMAT] [-b BACKING]\n"
            "                                  a new image (qcow2 by default; SIZE may be left "
            "out with -b); BACKING: a\n"
            "                                  volume of the same pool or a path\n"
            "  vol list POOL                   name, format, virtual size, disk usage, VMs "
            "using it, backing\n"
            "  vol delete POOL NAME            refused while a VM or another volume uses it\n"
            "  vol resize POOL NAME SIZE [--shrink]   refused while a running VM holds it\n");
}

int cli_pool_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"connect", required_argument, NULL, 'c'},
        {"token-file", required_argument, NULL, 'T'},
        {"cacert", required_argument, NULL, 'A'},
        {"format", required_argument, NULL, 'f'},
        {"backing", required_argument, NULL, 'b'},
        {"shrink", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *group = argv[0];
    struct pool_cli c = {0};
    const char *connect = NULL, *token_file = NULL, *cacert = NULL, *format = NULL, *backing = NULL;
    bool shrink = false;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "hjc:f:b:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            c.json = true;
            break;
        case 'c':
            connect = optarg;
            break;
        case 'T':
            token_file = optarg;
            break;
        case 'A':
            cacert = optarg;
            break;
        case 'f':
            format = optarg;
            break;
        case 'b':
            backing = optarg;
            break;
        case 's':
            shrink = true;
            break;
        case 'h':
            pool_usage(stdout);
            return 0;
        default:
            pool_usage(stderr);
            return 1;
        }
    }
    char **ops = argv + optind;
    int nops = argc - optind;
    if (nops < 1) {
        pool_usage(stderr);
        return 1;
    }
    const char *verb = ops[0];
    ops++;
    nops--;
    static const struct {
        const char *group, *verb;
        int min, max;
    } arity[] = {
        {"pool", "define", 2, 2},   {"pool", "list", 0, 0},  {"pool", "info", 1, 1},
        {"pool", "undefine", 1, 1}, {"vol", "create", 2, 3}, {"vol", "list", 1, 1},
        {"vol", "delete", 2, 2},    {"vol", "resize", 3, 3},
    };
    bool known = false;
    for (size_t i = 0; i < VS_ARRAY_SIZE(arity) && !known; i++) {
        if (strcmp(group, arity[i].group) || strcmp(verb, arity[i].verb))
            continue;
        known = true;
        if (nops < arity[i].min || nops > arity[i].max) {
            fprintf(stderr, "vessel %s %s: wrong number of arguments\n", group, verb);
            pool_usage(stderr);
            return 1;
        }
    }
    if (!known) {
        fprintf(stderr, "vessel: unknown verb '%s %s' (vessel %s --help)\n", group, verb, group);
        return 1;
    }
    if ((format || backing) && strcmp(verb, "create"))
        return pool_fail("-f and -b are options of vol create");
    if (shrink && strcmp(verb, "resize"))
        return pool_fail("--shrink is an option of vol resize");
    if (cli_connect_setup(connect, token_file, cacert, &c.socket))
        return 1;

    /* names go into the URL percent-encoded; a name never holds a '/' */
    char *seg[2] = {NULL, NULL};
    int names = !strcmp(verb, "define") ? 1 : nops < 2 ? nops : 2;
    for (int i = 0; i < names; i++) {
        if (strchr(ops[i], '/')) {
            free(seg[0]);
            fprintf(stderr, "vessel: '%s': a pool or volume name holds no '/'\n", ops[i]);
            return 1;
        }
        if (!(seg[i] = cli_query_escape(ops[i]))) {
            free(seg[0]);
            return pool_fail("out of memory");
        }
    }
    int rc = 1;
    char *path = NULL, *e1 = NULL, *e2 = NULL, *e3 = NULL, *e4 = NULL, *msg = NULL;
    if (!strcmp(group, "pool")) {
        if (!strcmp(verb, "define")) {
            char *abs = absolute(ops[1]);
            e1 = cli_query_escape(ops[0]);
            e2 = abs ? cli_query_escape(abs) : NULL;
            free(abs);
            path = e1 && e2 ? vs_asprintf("/v1/pools?name=%s&path=%s", e1, e2) : NULL;
            rc = request(&c, "POST", path, print_pool_defined, NULL);
        } else if (!strcmp(verb, "list")) {
            rc = request(&c, "GET", "/v1/pools", print_pool_list, NULL);
        } else if (!strcmp(verb, "info")) {
            path = vs_asprintf("/v1/pools/%s", seg[0]);
            rc = request(&c, "GET", path, print_pool_info, NULL);
        } else {
            path = vs_asprintf("/v1/pools/%s", seg[0]);
            msg = vs_asprintf("pool %s undefined (its files stay)", ops[0]);
            rc = request(&c, "DELETE", path, print_done, msg);
        }
    } else if (!strcmp(verb, "create")) {
        if (nops < 3 && !backing) {
            rc = pool_fail("vol create POOL NAME SIZE: SIZE missing (it may be left out only "
                           "with -b BACKING)");
            goto out;
        }
        char *abs = backing && strchr(backing, '/') ? absolute(backing) : NULL;
        e1 = cli_query_escape(ops[1]);
        e2 = backing ? cli_query_escape(abs ? abs : backing) : NULL;
        e3 = nops > 2 ? cli_query_escape(ops[2]) : NULL;
        e4 = format ? cli_query_escape(format) : NULL;
        free(abs);
        path = vs_asprintf("/v1/pools/%s/volumes?name=%s%s%s%s%s%s%s", seg[0], e1 ? e1 : "",
                           e3 ? "&size=" : "", e3 ? e3 : "", e4 ? "&format=" : "", e4 ? e4 : "",
                           e2 ? "&backing=" : "", e2 ? e2 : "");
        rc = request(&c, "POST", path, print_volume, NULL);
    } else if (!strcmp(verb, "list")) {
        path = vs_asprintf("/v1/pools/%s/volumes", seg[0]);
        rc = request(&c, "GET", path, print_volume_list, NULL);
    } else if (!strcmp(verb, "delete")) {
        path = vs_asprintf("/v1/pools/%s/volumes/%s", seg[0], seg[1]);
        msg = vs_asprintf("volume %s deleted from pool %s", ops[1], ops[0]);
        rc = request(&c, "DELETE", path, print_done, msg);
    } else {
        e1 = cli_query_escape(ops[2]);
        path = e1 ? vs_asprintf("/v1/pools/%s/volumes/%s/resize?size=%s%s", seg[0], seg[1], e1,
                                shrink ? "&shrink=1" : "")
                  : NULL;
        rc = request(&c, "POST", path, print_volume, NULL);
    }
out:
    free(path);
    free(e1);
    free(e2);
    free(e3);
    free(e4);
    free(seg[0]);
    free(seg[1]);
    free(msg);
    return rc;
}
