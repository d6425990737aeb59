/*
 * lib/mgmt/nics.c — a running VM's NICs: one tap per [nic], on a vessel network (through lib/net,
 * with its anti-spoofing rules and MAC checks) or on a host bridge, made before vessel-vmm starts
 * and deleted whenever the VM stops.
 *
 * The idea: the taps a VM holds are written down in DIR/run/NAME/nics *before* each one is made
 * (an intent record: "TAP network NAME" or "TAP bridge NAME" a line), so whoever ends the VM — an
 * API call, the exit monitor, a daemon restarted after a kill -9 — releases exactly what was made,
 * from the file, without the definition (which may have changed meanwhile). Releasing is
 * idempotent: a tap already gone is not an error. Tap names are vs + the first 8 hex digits of
 * the VM's uuid + the NIC's index, so a VM's taps are recognisable in `ip link` and
 * `vessel net info`. The daemon's networks live in DIR/net (the `vessel net --state` store).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "mgmt/mgmt-internal.h"
#include "vessel/net.h"

#define NICS_FILE "nics"

void mgmt_nic_tap_name(const struct vm_def *def, size_t index, char out[16])
{
    /* index < 16 (build_vmm_argv's limit): at most 12 characters, under IFNAMSIZ */
    snprintf(out, 16, "vs%.8s%u", def->uuid, (unsigned)(index % 100));
}

struct nic_record {
    char tap[16];
    bool bridge;      /* a host bridge, else a vessel network */
    const char *name; /* the network or the bridge (points into the definition) */
};

/* Write the records (all of them, by rename) to DIR/run/VM/nics. */
static int records_save(struct mgmt_daemon *d, const char *vm, const struct nic_record *recs,
                        size_t count)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return -ENOMEM;
    for (size_t i = 0; i < count; i++)
        fprintf(f, "%s %s %s\n", recs[i].tap, recs[i].bridge ? "bridge" : "network", recs[i].name);
    int err = fclose(f) == 0 ? mgmt_run_file_write(d, vm, NICS_FILE, text) : -ENOMEM;
    free(text);
    return err;
}

/* A tap on a host bridge: vessel's tap settings (host-side MAC, the bridge's MTU), no rules. */
static int bridge_tap_create(const char *tap, const char *bridge, const char *guest_mac)
{
    struct vs_link br;
    struct vs_mac mac, host_mac;
    int err = vs_mac_parse(guest_mac, &mac);
    if (err)
        return err;
    if (vs_link_get(bridge, &br) < 0)
        return vs_error(-ENODEV, "bridge %s does not exist", bridge);
    if (strcmp(br.kind, "bridge"))
        return vs_error(-EINVAL, "%s is not a bridge", bridge);
    if (vs_link_exists(tap))
        return vs_error(-EEXIST, "tap %s: the name is already used by another interface", tap);
    vs_mac_tap_host(&mac, &host_mac);
    if ((err = vs_tap_create(tap, &host_mac, (uid_t)-1, (gid_t)-1)))
        return err;
    if ((err = vs_link_set(tap, bridge, br.mtu, 1))) {
        vs_link_delete(tap);
        return vs_error_prefix(err, "tap %s on bridge %s", tap, bridge);
    }
    return 0;
}

/* Detach one recorded tap; a tap already gone is fine. */
static void record_release(struct vs_net_store **store, const char *net_dir, const char *tap,
                           bool bridge, const char *name)
{
    bool orphan = bridge; /* a bridge's tap is ours alone */
    if (!bridge) {
        struct vs_net_def net;
        int err = *store ? 0 : vs_net_store_open(net_dir, store);
        if (!err && (err = vs_net_get(*store, name, &net)) == 0) {
            vs_net_def_free(&net);
            /* -ENOENT: the network does not list it (never made, or stopped --force and
             * forgotten); a same-named link then is not ours to delete */
            err = vs_net_detach_tap(*store, name, tap);
            if (err && err != -ENOENT)
                vs_warn("detaching tap %s from network %s: %s", tap, name, vs_error_message());
        } else if (err == -ENOENT) {
            orphan = true; /* the network was undefined under a stopped-by-force VM */
        } else {
            vs_warn("detaching tap %s from network %s: %s", tap, name, vs_error_message());
        }
    }
    if (orphan && vs_link_exists(tap) && vs_link_delete(tap) < 0)
        vs_warn("deleting tap %s: %s", tap, vs_error_message());
}

void mgmt_nics_release(struct mgmt_daemon *d, const char *vm)
{
    char path[PATH_MAX];
    if (mgmt_run_path(d, vm, NICS_FILE, path, sizeof(path)))
        return;
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    struct vs_net_store *store = NULL;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        char tap[16], kind[16];
        int used = 0;
        if (sscanf(line, "%15s %15s %n", tap, kind, &used) != 2 || !line[used] ||
            (strcmp(kind, "network") && strcmp(kind, "bridge"))) {
            vs_warn("%s: ignoring malformed line '%s'", path, line);
            continue;
        }
        record_release(&store, d->net_dir, tap, !strcmp(kind, "bridge"), line + used);
    }
    fclose(f);
    vs_net_store_close(store);
    unlink(path);
    vs_error_clear();
}

int mgmt_nics_attach(struct mgmt_daemon *d, const struct vm_def *def)
{
    if (!def->nic_count)
        return 0;
    struct nic_record *recs = vs_calloc(def->nic_count, sizeof(*recs));
    if (!recs)
        return -ENOMEM;
    struct vs_net_store *store = NULL;
    int err = 0;
    for (size_t i = 0; i < def->nic_count && !err; i++) {
        const struct vm_nic *nic = &def->nics[i];
        struct nic_record *r = &recs[i];
        mgmt_nic_tap_name(def, i, r->tap);
        r->bridge = nic->bridge != NULL;
        r->name = nic->bridge ? nic->bridge : nic->network ? nic->network : "default";
        /* the intent first: a daemon killed from here on still finds the tap to delete */
        if ((err = records_save(d, def->name, recs, i + 1)))
            break;
        if (r->bridge && nic->rate_mbit) {
            err = vs_error(-ENOTSUP,
                           "bridge %s: rate = %u needs a vessel network (the network shapes its "
                           "taps; a plain host bridge has nothing to do it)",
                           r->name, nic->rate_mbit);
        } else if (r->bridge) {
            err = bridge_tap_create(r->tap, r->name, nic->mac);
        } else {
            struct vs_mac mac;
            err = vs_mac_parse(nic->mac, &mac);
            if (!err && !store)
                err = vs_net_store_open(d->net_dir, &store);
            struct vs_net_attach a = {.tap = r->tap,
                                      .mac = &mac,
                                      .rate_mbit = nic->rate_mbit,
                                      .uid = (uid_t)-1,
                                      .gid = (gid_t)-1};
            if (!err)
                err = vs_net_attach_tap(store, r->name, &a, &mac);
        }
        if (err) {
            vs_error_prefix(err, "VM %s: NIC %zu (%s)", def->name, i, nic->mac);
            /* not made: drop its record so the release below can't touch a same-named tap
             * that belongs to someone else */
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", vs_error_message());
            if (records_save(d, def->name, recs, i) < 0)
                vs_warn("%s", vs_error_message());
            vs_error(err, "%s", msg);
        }
    }
    vs_net_store_close(store);
    if (err) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vs_error_message());
        mgmt_nics_release(d, def->name); /* nothing left behind */
        /* a missing network is the host's state, not a missing VM: 409 over the API, not 404 */
        vs_error(err == -ENOENT ? -ENODEV : err, "%s", msg);
        err = err == -ENOENT ? -ENODEV : err;
    }
    free(recs);
    return err;
}

struct json_object *mgmt_nics_json(struct mgmt_daemon *d, const char *vm)
{
    json_object *list = json_object_new_array();
    char path[PATH_MAX];
    FILE *f =
        list && !mgmt_run_path(d, vm, NICS_FILE, path, sizeof(path)) ? fopen(path, "re") : NULL;
    char line[512];
    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        char tap[16], kind[16];
        int used = 0;
        if (sscanf(line, "%15s %15s %n", tap, kind, &used) != 2 || !line[used])
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "tap", json_object_new_string(tap));
        json_object_object_add(o, kind, json_object_new_string(line + used));
        json_object_array_add(list, o);
    }
    if (f)
        fclose(f);
    return list;
}
