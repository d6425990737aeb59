/*
 * tests/fuzz/fuzz-netdef.c — libFuzzer target for the network definition readers: vessel's
 * `key = value` text format (vs_net_def_parse) and the libvirt <network> XML import. A definition
 * either reader accepts must print to text that parses back to the same definition, and the
 * generated dnsmasq config and nftables ruleset must be one directive per line (a name that
 * smuggles a newline or a quote into them would be a config injection).
 *
 * The one idea: the first byte picks the reader, so one corpus covers both.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/net.h"
#include "vessel/util.h"

static void quiet(const char *msg)
{
    (void)msg;
}

static bool str_equal(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static bool def_equal(const struct vs_net_def *a, const struct vs_net_def *b)
{
    if (!str_equal(a->name, b->name) || a->kind != b->kind || !str_equal(a->bridge, b->bridge) ||
        a->mtu != b->mtu || a->subnet != b->subnet || a->prefix != b->prefix ||
        a->gateway != b->gateway || a->dhcp_first != b->dhcp_first ||
        a->dhcp_last != b->dhcp_last || a->n_dns != b->n_dns ||
        a->lease_seconds != b->lease_seconds || a->n_reservations != b->n_reservations ||
        a->vni != b->vni || a->n_remotes != b->n_remotes || a->group != b->group ||
        a->local != b->local || !str_equal(a->vxlan_dev, b->vxlan_dev) || a->dstport != b->dstport)
        return false;
    if (memcmp(a->dns, b->dns, a->n_dns * sizeof(*a->dns)))
        return false;
    for (size_t i = 0; i < a->n_reservations; i++) {
        const struct vs_net_reservation *x = &a->reservations[i], *y = &b->reservations[i];
        if (!vs_mac_equal(&x->mac, &y->mac) || x->ip != y->ip ||
            !str_equal(x->hostname, y->hostname))
            return false;
    }
    return a->n_remotes == 0 || !memcmp(a->remotes, b->remotes, a->n_remotes * sizeof(uint32_t));
}

/* Every line of a generated config must be free of control characters but the newline. */
static void check_lines(const char *text)
{
    if (!text)
        return;
    for (const char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\n')
            __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    vs_warn_set_handler(quiet);
    struct vs_net_def def = {0}, again = {0};
    int rc;
    if (data[0] & 1) {
        rc = vs_net_def_from_libvirt_xml((const char *)data + 1, size - 1, &def);
    } else {
        char *text = malloc(size);
        if (!text)
            return 0;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = 0;
        rc = vs_net_def_parse(text, "fuzz.net", &def);
        free(text);
    }
    if (rc < 0)
        return 0;
    char *printed = vs_net_def_print(&def);
    if (!printed)
        __builtin_trap();
    if (vs_net_def_parse(printed, "again.net", &again) < 0 || !def_equal(&def, &again))
        __builtin_trap();
    /* the generated files are built from the same fields: they must stay one directive a line */
    if (def.kind == VS_NET_NAT && def.dhcp_first) {
        char *conf = vs_net_dnsmasq_config(&def, "/run/x");
        check_lines(conf);
        free(conf);
    }
    struct vs_net_tap tap = {.name = "t0", .ip = def.gateway, .rate_mbit = 10};
    tap.mac.b[0] = 0x52;
    char *rules = vs_net_nft_ruleset(&def, &tap, 1, NULL, 0);
    check_lines(rules);
    free(rules);
    free(printed);
    vs_net_def_free(&again);
    vs_net_def_free(&def);
    return 0;
}
