/*
 * src/cli-net.c — `vessel net …`: define, list, inspect, start and stop virtual networks, attach
 * taps for `vessel-vmm --net tap=…`, and read DHCP leases.
 *
 * The idea: every flag of `define` is a key of the definition's text format (--dhcp-range →
 * "dhcp-range"), so the CLI, definition files and the libvirt import all build one struct and
 * lib/net does all checking; this file only parses arguments and prints text or --json.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "vessel/net.h"
#include "vessel/util.h"

int cli_net_main(int argc, char **argv);

static void net_usage(FILE *out)
{
    fprintf(out,
            "usage: vessel net [--state DIR] [--json] VERB …\n\n"
            "  define NAME --kind internal|nat|bridged|vxlan [--bridge BR] [--mtu N]\n"
            "         [--subnet CIDR] [--gateway IP] [--dhcp-range FIRST-LAST] [--dns IP[,IP…]]\n"
            "         [--lease-time SECONDS] [--reserve MAC,IP[,HOSTNAME]]…\n"
            "         [--vni N (--remote IP[,IP…] | --group MCAST) [--local IP] [--dev DEV]\n"
            "          [--dstport PORT]]\n"
            "  define [NAME] --file FILE          a vessel network definition (key = value)\n"
            "  define [NAME] --xml FILE           a libvirt <network> definition\n"
            "  undefine NAME                      refused while started\n"
            "  list | info NAME | dump NAME\n"
            "  start NAME | stop NAME [--force]   stop refuses while a VM holds one of its taps\n"
            "  attach NAME --tap TAP [--mac MAC] [--ip IP] [--rate-mbit N]\n"
            "  detach NAME --tap TAP\n"
            "  leases NAME\n"
            "  lease-event NAME add|old|del MAC IP   dnsmasq's dhcp-script (internal)\n\n"
            "State lives in --state DIR (default %s).\n",
            VS_NET_DEFAULT_STATE_DIR);
}

static int fail(const char *verb)
{
    fprintf(stderr, "vessel net %s: %s\n", verb, vs_error_message());
    return 1;
}

static int read_whole(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return vs_error_errno(-errno, "%s: cannot open", path);
    char *buf = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&buf, &size);
    char chunk[4096];
    size_t n;
    while (mem && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(f);
    if (!mem)
        return -ENOMEM;
    fclose(mem);
    *out = buf;
    *len = size;
    return 0;
}

static json_object *def_to_json(const struct vs_net_def *d, const struct vs_net_status *st)
{
    char a[16], b[16];
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(d->name));
    json_object_object_add(o, "kind", json_object_new_string(vs_net_kind_name(d->kind)));
    json_object_object_add(o, "bridge", json_object_new_string(d->bridge));
    if (d->mtu)
        json_object_object_add(o, "mtu", json_object_new_int((int)d->mtu));
    if (d->prefix) {
        char cidr[24];
        snprintf(cidr, sizeof(cidr), "%s/%u", vs_ipv4_format(d->subnet, a), d->prefix);
        json_object_object_add(o, "subnet", json_object_new_string(cidr));
    }
    if (d->gateway)
        json_object_object_add(o, "gateway", json_object_new_string(vs_ipv4_format(d->gateway, a)));
    if (d->dhcp_first) {
        char r[40];
        snprintf(r, sizeof(r), "%s-%s", vs_ipv4_format(d->dhcp_first, a),
                 vs_ipv4_format(d->dhcp_last, b));
        json_object_object_add(o, "dhcp_range", json_object_new_string(r));
        json_object_object_add(o, "lease_time", json_object_new_int((int)d->lease_seconds));
    }
    if (d->kind == VS_NET_VXLAN) {
        json_object_object_add(o, "vni", json_object_new_int((int)d->vni));
        json_object *r = json_object_new_array();
        for (size_t i = 0; i < d->n_remotes; i++)
            json_object_array_add(r, json_object_new_string(vs_ipv4_format(d->remotes[i], a)));
        json_object_object_add(o, "remotes", r);
        if (d->group)
            json_object_object_add(o, "group", json_object_new_string(vs_ipv4_format(d->group, a)));
    }
    if (st) {
        json_object_object_add(o, "started", json_object_new_boolean(st->started));
        json_object_object_add(o, "bridge_present", json_object_new_boolean(st->bridge_present));
        if (d->kind == VS_NET_NAT)
            json_object_object_add(o, "dnsmasq_pid", json_object_new_int(st->dnsmasq_pid));
        json_object *taps = json_object_new_array();
        for (size_t i = 0; i < st->n_taps; i++) {
            char m[18];
            json_object *t = json_object_new_object();
            json_object_object_add(t, "tap", json_object_new_string(st->taps[i].name));
            json_object_object_add(t, "mac",
                                   json_object_new_string(vs_mac_format(&st->taps[i].mac, m)));
            if (st->taps[i].ip)
                json_object_object_add(t, "ip",
                                       json_object_new_string(vs_ipv4_format(st->taps[i].ip, a)));
            json_object_object_add(t, "rate_mbit", json_object_new_int((int)st->taps[i].rate_mbit));
            struct vs_link l;
            bool present = vs_link_get(st->taps[i].name, &l) == 0;
            json_object_object_add(t, "present", json_object_new_boolean(present));
            json_object_object_add(t, "in_use", json_object_new_boolean(present && l.carrier));
            json_object_array_add(taps, t);
        }
        vs_error_clear();
        json_object_object_add(o, "taps", taps);
    }
    return o;
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
    json_object_put(o);
}

static int verb_define(struct vs_net_store *store, int argc, char **argv, bool json)
{
    static const struct option opts[] = {
        {"kind", required_argument, 0, 'k'},    {"bridge", required_argument, 0, 'b'},
        {"mtu", required_argument, 0, 'm'},     {"subnet", required_argument, 0, 's'},
        {"gateway", required_argument, 0, 'g'}, {"dhcp-range", required_argument, 0, 'r'},
        {"dns", required_argument, 0, 'd'},     {"lease-time", required_argument, 0, 'l'},
        {"reserve", required_argument, 0, 'R'}, {"vni", required_argument, 0, 'v'},
        {"remote", required_argument, 0, 'p'},  {"group", required_argument, 0, 'G'},
        {"local", required_argument, 0, 'L'},   {"dev", required_argument, 0, 'D'},
        {"dstport", required_argument, 0, 'P'}, {"file", required_argument, 0, 'f'},
        {"xml", required_argument, 0, 'x'},     {0, 0, 0, 0}};
    static const struct {
        int opt;
        const char *key;
    } keys[] = {{'k', "kind"},      {'b', "bridge"},     {'m', "mtu"},   {'s', "subnet"},
                {'g', "gateway"},   {'r', "dhcp-range"}, {'d', "dns"},   {'l', "lease-time"},
                {'v', "vni"},       {'p', "remote"},     {'G', "group"}, {'L', "local"},
                {'D', "vxlan-dev"}, {'P', "dstport"}};
    struct vs_net_def def = {0};
    const char *file = NULL, *xml = NULL;
    bool has_flags = false, has_kind = false;
    int c, rc = 0;
    optind = 1;
    while (rc == 0 && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'f') {
            file = optarg;
            continue;
        }
        if (c == 'x') {
            xml = optarg;
            continue;
        }
        if (c == 'R') {
            char *copy = vs_strdup(optarg);
            for (char *p = copy; p && *p; p++)
                if (*p == ',')
                    *p = ' ';
            rc = copy ? vs_net_def_add_reservation(&def, copy) : -ENOMEM;
            free(copy);
            has_flags = true;
            continue;
        }
        if (c == '?') {
            vs_net_def_free(&def);
            return 2;
        }
        for (size_t i = 0; i < VS_ARRAY_SIZE(keys); i++)
            if (keys[i].opt == c) {
                rc = vs_net_def_set(&def, keys[i].key, optarg);
                if (rc < 0)
                    rc = vs_error_prefix(rc, "--%s", keys[i].key);
            }
        has_kind |= c == 'k';
        has_flags = true;
    }
    const char *name = optind < argc ? argv[optind] : NULL;
    if (rc == 0 && (file || xml)) {
        if (has_flags || (file && xml)) {
            rc = vs_error(-EINVAL, "--file/--xml take the whole definition: no other flags");
        } else {
            char *text = NULL;
            size_t len = 0;
            rc = read_whole(file ? file : xml, &text, &len);
            if (rc == 0)
                rc = file ? vs_net_def_parse(text, file, &def)
                          : vs_net_def_from_libvirt_xml(text, len, &def);
            free(text);
            if (rc == 0 && name) {
                free(def.name);
                def.name = vs_strdup(name);
            }
        }
    } else if (rc == 0) {
        if (!name)
            rc = vs_error(-EINVAL, "a network NAME is needed");
        else if (!has_kind)
            rc = vs_error(-EINVAL, "network %s: --kind internal|nat|bridged|vxlan is needed", name);
        else
            def.name = vs_strdup(name);
    }
    if (rc == 0)
        rc = vs_net_define(store, &def);
    if (rc == 0) {
        if (json)
            print_json(def_to_json(&def, NULL));
        else
            printf("network %s defined (%s, bridge %s)\n", def.name, vs_net_kind_name(def.kind),
                   def.bridge);
    }
    vs_net_def_free(&def);
    return rc < 0 ? fail("define") : 0;
}

static int verb_list(struct vs_net_store *store, bool json)
{
    char **names;
    size_t n;
    if (vs_net_names(store, &names, &n) < 0)
        return fail("list");
    json_object *arr = json ? json_object_new_array() : NULL;
    if (!json)
        printf("%-20s %-9s %-15s %-8s %s\n", "NAME", "KIND", "BRIDGE", "STATE", "TAPS");
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct vs_net_def d;
        struct vs_net_status st;
        if (vs_net_get(store, names[i], &d) < 0) {
            fprintf(stderr, "vessel net list: %s\n", vs_error_message());
            rc = 1;
            continue;
        }
        if (vs_net_status(store, names[i], &st) < 0) {
            fprintf(stderr, "vessel net list: %s\n", vs_error_message());
            vs_net_def_free(&d);
            rc = 1;
            continue;
        }
        if (json)
            json_object_array_add(arr, def_to_json(&d, &st));
        else
            printf("%-20s %-9s %-15s %-8s %zu\n", d.name, vs_net_kind_name(d.kind), d.bridge,
                   st.started ? "started" : "stopped", st.n_taps);
        vs_net_status_free(&st);
        vs_net_def_free(&d);
    }
    if (json)
        print_json(arr);
    vs_net_names_free(names, n);
    return rc;
}

static int verb_info(struct vs_net_store *store, const char *name, bool json, bool dump)
{
    struct vs_net_def d;
    struct vs_net_status st;
    if (vs_net_get(store, name, &d) < 0)
        return fail(dump ? "dump" : "info");
    if (dump) {
        char *text = vs_net_def_print(&d);
        if (text)
            fputs(text, stdout);
        free(text);
        vs_net_def_free(&d);
        return 0;
    }
    if (vs_net_status(store, name, &st) < 0) {
        vs_net_def_free(&d);
        return fail("info");
    }
    if (json) {
        print_json(def_to_json(&d, &st));
    } else {
        char *text = vs_net_def_print(&d);
        fputs(text ? text : "", stdout);
        free(text);
        printf("state = %s%s\n", st.started ? "started" : "stopped",
               st.started && !st.bridge_present ? " (bridge missing: run start to repair)" : "");
        if (d.kind == VS_NET_NAT && d.dhcp_first)
            printf("dnsmasq = %s\n", st.dnsmasq_pid ? "running" : "not running");
        for (size_t i = 0; i < st.n_taps; i++) {
            char m[18], a[16];
            struct vs_link l;
            bool present = vs_link_get(st.taps[i].name, &l) == 0;
            printf("tap = %s mac %s%s%s rate %u Mbit/s%s\n", st.taps[i].name,
                   vs_mac_format(&st.taps[i].mac, m), st.taps[i].ip ? " ip " : "",
                   st.taps[i].ip ? vs_ipv4_format(st.taps[i].ip, a) : "", st.taps[i].rate_mbit,
                   !present    ? " (absent)"
                   : l.carrier ? " (in use)"
                               : "");
        }
        vs_error_clear();
    }
    vs_net_status_free(&st);
    vs_net_def_free(&d);
    return 0;
}

static int verb_attach(struct vs_net_store *store, int argc, char **argv, bool json, bool detach)
{
    static const struct option opts[] = {{"tap", required_argument, 0, 't'},
                                         {"mac", required_argument, 0, 'm'},
                                         {"ip", required_argument, 0, 'i'},
                                         {"rate-mbit", required_argument, 0, 'r'},
                                         {0, 0, 0, 0}};
    struct vs_net_attach a = {.uid = (uid_t)-1, .gid = (gid_t)-1};
    struct vs_mac mac;
    int c, rc = 0;
    optind = 1;
    while (rc == 0 && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            a.tap = optarg;
            break;
        case 'm':
            rc = vs_mac_parse(optarg, &mac);
            a.mac = &mac;
            break;
        case 'i':
            rc = vs_ipv4_parse(optarg, &a.ip);
            break;
        case 'r': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || !*optarg || v == 0 || v > 100000)
                rc = vs_error(-EINVAL, "--rate-mbit '%s': expected 1-100000", optarg);
            a.rate_mbit = (unsigned)v;
            break;
        }
        default:
            return 2;
        }
    }
    const char *verb = detach ? "detach" : "attach";
    if (rc < 0)
        return fail(verb);
    if (optind >= argc || !a.tap) {
        vs_error(-EINVAL, "usage: vessel net %s NAME --tap TAP", verb);
        return fail(verb);
    }
    const char *name = argv[optind];
    if (detach) {
        if (vs_net_detach_tap(store, name, a.tap) < 0)
            return fail(verb);
        if (!json)
            printf("tap %s detached from network %s\n", a.tap, name);
        return 0;
    }
    struct vs_mac got;
    if (vs_net_attach_tap(store, name, &a, &got) < 0)
        return fail(verb);
    char m[18];
    vs_mac_format(&got, m);
    if (json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "network", json_object_new_string(name));
        json_object_object_add(o, "tap", json_object_new_string(a.tap));
        json_object_object_add(o, "mac", json_object_new_string(m));
        json_object_object_add(o, "rate_mbit", json_object_new_int((int)a.rate_mbit));
        print_json(o);
    } else {
        printf("tap %s on network %s, mac %s: vessel-vmm --net tap=%s,mac=%s\n", a.tap, name, m,
               a.tap, m);
    }
    return 0;
}

static int verb_leases(struct vs_net_store *store, const char *name, bool json)
{
    struct vs_net_lease *l;
    size_t n;
    if (vs_net_leases(store, name, &l, &n) < 0)
        return fail("leases");
    json_object *arr = json ? json_object_new_array() : NULL;
    if (!json)
        printf("%-17s %-15s %-20s %s\n", "MAC", "IP", "HOSTNAME", "EXPIRES");
    for (size_t i = 0; i < n; i++) {
        char m[18], a[16], when[32] = "never";
        if (l[i].expiry) {
            time_t t = (time_t)l[i].expiry;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        vs_mac_format(&l[i].mac, m);
        vs_ipv4_format(l[i].ip, a);
        if (json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "mac", json_object_new_string(m));
            json_object_object_add(o, "ip", json_object_new_string(a));
            json_object_object_add(o, "hostname", json_object_new_string(l[i].hostname));
            json_object_object_add(o, "expiry", json_object_new_int64(l[i].expiry));
            json_object_array_add(arr, o);
        } else {
            printf("%-17s %-15s %-20s %s\n", m, a, l[i].hostname[0] ? l[i].hostname : "-", when);
        }
    }
    if (json)
        print_json(arr);
    free(l);
    return 0;
}

/* dnsmasq runs NAME.run/lease-hook with ACTION MAC IP [HOSTNAME] and the lease's expiry in its
 * environment (DNSMASQ_LEASE_EXPIRES, or DNSMASQ_LEASE_LENGTH on hosts without a real-time
 * clock). */
static int verb_lease_event(struct vs_net_store *store, int argc, char **argv)
{
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: vessel net lease-event NAME add|old|del MAC IP [HOSTNAME]\n");
        return 2;
    }
    struct vs_net_lease l = {0};
    if (vs_mac_parse(argv[3], &l.mac) < 0 || vs_ipv4_parse(argv[4], &l.ip) < 0)
        return fail("lease-event");
    const char *expires = getenv("DNSMASQ_LEASE_EXPIRES");
    const char *length = getenv("DNSMASQ_LEASE_LENGTH");
    char *end;
    if (expires && *expires) {
        l.expiry = strtoll(expires, &end, 10);
        if (*end || l.expiry < 0)
            l.expiry = 0;
    } else if (length && *length) {
        long long secs = strtoll(length, &end, 10);
        l.expiry = (!*end && secs > 0) ? (int64_t)time(NULL) + secs : 0;
    }
    if (vs_net_lease_event(store, argv[1], argv[2], &l) < 0)
        return fail("lease-event");
    return 0;
}

int cli_net_main(int argc, char **argv)
{
    const char *state = NULL;
    bool json = false, force = false;
    /* pull the global flags out wherever they are; keep the rest in order */
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    if (!args)
        return 1;
    int n = 0;
    args[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--force")) {
            force = true;
        } else if (!strcmp(argv[i], "--state") && i + 1 < argc) {
            state = argv[++i];
        } else if (!strncmp(argv[i], "--state=", 8)) {
            state = argv[i] + 8;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            net_usage(stdout);
            free(args);
            return 0;
        } else {
            args[n++] = argv[i];
        }
    }
    args[n] = NULL;
    if (n < 2) {
        net_usage(stderr);
        free(args);
        return 2;
    }
    const char *verb = args[1];
    struct vs_net_store *store = NULL;
    int rc;
    if (vs_net_store_open(state, &store) < 0) {
        rc = fail(verb);
        goto out;
    }
    /* args + 1: the verb becomes argv[0] for getopt */
    int vargc = n - 1;
    char **vargv = args + 1;
    const char *name = vargc > 1 ? vargv[1] : NULL;
    if (!strcmp(verb, "define")) {
        rc = verb_define(store, vargc, vargv, json);
    } else if (!strcmp(verb, "list")) {
        rc = verb_list(store, json);
    } else if (!strcmp(verb, "attach") || !strcmp(verb, "detach")) {
        rc = verb_attach(store, vargc, vargv, json, verb[0] == 'd');
    } else if (!strcmp(verb, "lease-event")) {
        rc = verb_lease_event(store, vargc, vargv);
    } else if (!name || vargc > 2) {
        fprintf(stderr, "vessel net %s: expected one network NAME\n", verb);
        rc = 2;
    } else if (!strcmp(verb, "info") || !strcmp(verb, "dump")) {
        rc = verb_info(store, name, json, verb[0] == 'd');
    } else if (!strcmp(verb, "undefine")) {
        rc = vs_net_undefine(store, name) < 0 ? fail(verb) : 0;
        if (!rc && !json)
            printf("network %s undefined\n", name);
    } else if (!strcmp(verb, "start")) {
        rc = vs_net_start(store, name) < 0 ? fail(verb) : 0;
        if (!rc && !json)
            printf("network %s started\n", name);
    } else if (!strcmp(verb, "stop")) {
        rc = vs_net_stop(store, name, force) < 0 ? fail(verb) : 0;
        if (!rc && !json)
            printf("network %s stopped\n", name);
    } else if (!strcmp(verb, "leases")) {
        rc = verb_leases(store, name, json);
    } else {
        fprintf(stderr, "vessel net: unknown verb '%s' (try vessel net --help)\n", verb);
        rc = 2;
    }
out:
    vs_net_store_close(store);
    free(args);
    return rc;
}
