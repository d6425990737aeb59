/*
 * tests/unit/test-net.c — unit tests of vessel/net.h: MAC parsing, validation and allocation;
 * the definition text format (round trip, errors with file:line: key, defaults); libvirt
 * <network> import; dnsmasq leases parsing; the generated nftables ruleset and dnsmasq config;
 * and, inside a private network namespace of this process (unshare), netlink itself (bridges,
 * taps, vxlan with the VNI check) and the store's cross-network checks.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "vessel/net.h"
#include "vessel/util.h"

static bool message_contains(const char *needle)
{
    const char *m = vs_error_message();
    if (!m || !strstr(m, needle)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", m ? m : "(null)", needle);
        return false;
    }
    return true;
}

/* ---- MAC ------------------------------------------------------------------------------------- */

TEST(mac_parse_format)
{
    struct vs_mac m;
    char s[18];
    CHECK_OK(vs_mac_parse("52:56:65:0A:0b:0c", &m));
    CHECK(!strcmp(vs_mac_format(&m, s), "52:56:65:0a:0b:0c"));
    CHECK_OK(vs_mac_parse("52-56-65-00-00-01", &m));
    CHECK(m.b[5] == 1);
    CHECK(vs_mac_parse("52:56:65:00:00", &m) == -EINVAL);
    CHECK(vs_mac_parse("52:56:65:00:00:01:02", &m) == -EINVAL);
    CHECK(vs_mac_parse("52:56-65:00:00:01", &m) == -EINVAL);
    CHECK(vs_mac_parse("zz:56:65:00:00:01", &m) == -EINVAL);
    CHECK(vs_mac_parse("", &m) == -EINVAL);
    CHECK(vs_mac_parse("01:00:5e:00:00:01", &m) == -EINVAL);
    CHECK(message_contains("multicast"));
    CHECK(vs_mac_parse("00:00:00:00:00:00", &m) == -EINVAL);
    CHECK(message_contains("not a usable"));
    CHECK(vs_mac_parse("ff:ff:ff:ff:ff:ff", &m) == -EINVAL);
}

TEST(mac_tap_host_side)
{
    struct vs_mac g, h;
    CHECK_OK(vs_mac_parse("52:56:65:01:02:03", &g));
    vs_mac_tap_host(&g, &h);
    char s[18];
    CHECK(!strcmp(vs_mac_format(&h, s), "fe:56:65:01:02:03"));
    CHECK(!vs_mac_equal(&g, &h));
}

/* ---- definitions ----------------------------------------------------------------------------- */

TEST(def_round_trip)
{
    const char *text = "name = lan\n"
                       "kind = nat\n"
                       "subnet = 10.1.2.77/24\n"
                       "dhcp-range = 10.1.2.100-10.1.2.200\n"
                       "dns = 1.1.1.1, 9.9.9.9\n"
                       "lease-time = 600\n"
                       "reservation = 52:56:65:00:00:05 10.1.2.5 web\n"
                       "# comment\n\n"
                       "mtu = 1400\n";
    struct vs_net_def d;
    CHECK_OK(vs_net_def_parse(text, "lan.net", &d));
    char a[16];
    CHECK(!strcmp(d.bridge, "vs-lan"));
    CHECK(!strcmp(vs_ipv4_format(d.subnet, a), "10.1.2.0"));
    CHECK(!strcmp(vs_ipv4_format(d.gateway, a), "10.1.2.1"));
    CHECK(d.n_dns == 2 && d.lease_seconds == 600 && d.mtu == 1400 && d.n_reservations == 1);
    char *printed = vs_net_def_print(&d);
    struct vs_net_def d2;
    CHECK_OK(vs_net_def_parse(printed, "printed", &d2));
    char *printed2 = vs_net_def_print(&d2);
    CHECK(printed && printed2 && !strcmp(printed, printed2));
    free(printed);
    free(printed2);
    vs_net_def_free(&d);
    vs_net_def_free(&d2);
}

TEST(def_errors_name_line_and_key)
{
    struct vs_net_def d;
    CHECK(vs_net_def_parse("name = x\nkind = internal\nmtu = big\n", "x.net", &d) == -EINVAL);
    CHECK(message_contains("x.net:3: mtu"));
    CHECK(vs_net_def_parse("name = x\nbogus = 1\n", "x.net", &d) == -EINVAL);
    CHECK(message_contains("x.net:2: bogus: unknown key"));
    CHECK(vs_net_def_parse("name = x\nkind internal\n", "x.net", &d) == -EINVAL);
    CHECK(message_contains("x.net:2: expected 'key = value'"));
    CHECK(vs_net_def_parse("kind = internal\n", "x.net", &d) == -EINVAL);
    CHECK(message_contains("no 'name"));
    CHECK(vs_net_def_parse("name = v\nkind = vxlan\nvni = 9\n", "v.net", &d) == -EINVAL);
    CHECK(message_contains("--remote IP or --group"));
    CHECK(vs_net_def_parse("name = n\nkind = nat\nsubnet = 10.0.0.0/24\n"
                           "dhcp-range = 10.0.0.9-10.0.0.2\n",
                           "n.net", &d) == -EINVAL);
    CHECK(message_contains("ends before it starts"));
    CHECK(vs_net_def_parse("name = i\nkind = internal\ndhcp-range = 10.0.0.2-10.0.0.9\n", "i.net",
                           &d) == -EINVAL);
    CHECK(message_contains("needs kind nat"));
}

/* What the fuzzers found and its neighbours: names that would break the generated configs,
 * empty lists, prefixes outside 8-30, trailing words. */
TEST(def_bad_input)
{
    struct vs_net_def d;
    static const struct {
        const char *text, *message;
    } bad[] = {
        {"name = x\nkind = internal\nbridge = br\x14x\n", "bridge name 'br\x14x'"},
        {"name = x\nkind = internal\nbridge = a\"b\n", "bridge name"},
        {"name = x\nkind = internal\nbridge = a b\n", "bridge name"},
        {"name = x\nkind = internal\nbridge = sixteen-chars-xx\n", "bridge name"},
        {"name = x\nkind = vxlan\nvni = 5\ngroup = 239.1.1.1\nvxlan-dev = e,th\n", "vxlan-dev"},
        {"name = x\nkind = nat\nsubnet = 10.0.0.0/24\nreservation = 52:56:65:00:00:01 "
         "10.0.0.5 a,b\n",
         "reservation hostname 'a,b'"},
        {"name = x\nkind = nat\nsubnet = 10.0.0.0/24\nreservation = 52:56:65:00:00:01 "
         "10.0.0.5 web extra\n",
         "x.net:4: reservation: reservation"},
        {"name = x\nkind = nat\nsubnet = 10.0.0.0/24\ndns =\n", "x.net:4: dns"},
        {"name = x\nkind = vxlan\nvni = 5\nremote = ,\n", "x.net:4: remote"},
        {"name = x\nkind = nat\nsubnet = 10.0.0.0/7\n", "prefix length must be 8-30"},
        {"name = x\nkind = nat\nsubnet = 10.0.0.0/31\n", "prefix length must be 8-30"},
    };
    for (size_t i = 0; i < VS_ARRAY_SIZE(bad); i++) {
        CHECK(vs_net_def_parse(bad[i].text, "x.net", &d) == -EINVAL);
        CHECK(message_contains(bad[i].message));
    }
    static const char *const bad_xml[] = {
        "<network><name>p</name><ip address='10.9.0.1' prefix='07'/></network>",
        "<network><name>p</name><ip address='10.9.0.1' prefix='24x'/></network>",
        "<network><name>p</name><ip address='10.9.0.1' prefix='31'/></network>",
        "<network><name>p</name><bridge name='br&#10;x'/></network>",
        "<network><name>p</name><forward mode='nat'/><ip address='10.9.0.1' prefix='24'><dhcp>"
        "<host mac='52:56:65:00:00:01' ip='10.9.0.5' name='a b'/></dhcp></ip></network>",
        "<network><name>p</name><forward mode='nat'/><ip address='10.9.0.1' prefix='24'><dhcp>"
        "<host mac='52:56:65:00:00:01' ip='10.9.0.5' name='a&#10;dhcp-script=/x'/></dhcp></ip>"
        "</network>",
    };
    for (size_t i = 0; i < VS_ARRAY_SIZE(bad_xml); i++) {
        int rc = vs_net_def_from_libvirt_xml(bad_xml[i], strlen(bad_xml[i]), &d);
        CHECK(rc == -EINVAL);
        if (rc == 0)
            vs_net_def_free(&d);
    }
    /* still fine: a bridged network on a host bridge with a dot, an XML prefix of 16 */
    CHECK_OK(vs_net_def_parse("name = b\nkind = bridged\nbridge = br0.100\n", "b.net", &d));
    vs_net_def_free(&d);
    const char *ok = "<network><name>p</name><ip address='10.9.0.1' prefix='16'/></network>";
    CHECK_OK(vs_net_def_from_libvirt_xml(ok, strlen(ok), &d));
    CHECK(d.prefix == 16);
    vs_net_def_free(&d);
}

TEST(def_long_name_gets_hashed_bridge)
{
    struct vs_net_def d = {0};
    d.name = vs_strdup("a-rather-long-network-name");
    d.kind = VS_NET_INTERNAL;
    CHECK_OK(vs_net_def_validate(&d));
    CHECK(strlen(d.bridge) <= VS_NET_IFNAME_MAX && !strncmp(d.bridge, "vs-", 3));
    vs_net_def_free(&d);
}

TEST(libvirt_network_xml)
{
    const char *xml = "<network><name>default</name><forward mode='nat'/>"
                      "<bridge name='virbr0' stp='on'/><mtu size='9000'/>"
                      "<ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>"
                      "<range start='192.168.122.2' end='192.168.122.254'/>"
                      "<host mac='52:54:00:11:22:33' name='vm1' ip='192.168.122.11'/>"
                      "</dhcp></ip></network>";
    struct vs_net_def d;
    CHECK_OK(vs_net_def_from_libvirt_xml(xml, strlen(xml), &d));
    char a[16];
    CHECK(d.kind == VS_NET_NAT && !strcmp(d.bridge, "virbr0") && d.mtu == 9000);
    CHECK(d.prefix == 24 && !strcmp(vs_ipv4_format(d.gateway, a), "192.168.122.1"));
    CHECK(!strcmp(vs_ipv4_format(d.dhcp_last, a), "192.168.122.254"));
    CHECK(d.n_reservations == 1 && !strcmp(d.reservations[0].hostname, "vm1"));
    vs_net_def_free(&d);
    const char *iso = "<network><name>iso</name></network>";
    CHECK_OK(vs_net_def_from_libvirt_xml(iso, strlen(iso), &d));
    CHECK(d.kind == VS_NET_INTERNAL);
    vs_net_def_free(&d);
    const char *bad = "<network><name>x</name><forward mode='hostdev'/></network>";
    CHECK(vs_net_def_from_libvirt_xml(bad, strlen(bad), &d) == -ENOTSUP);
    CHECK(vs_net_def_from_libvirt_xml("<net", 4, &d) == -EINVAL);
    CHECK(vs_net_def_from_libvirt_xml("<domain/>", 9, &d) == -EINVAL);
}

TEST(leases_parse)
{
    const char *text = "1700000000 52:56:65:00:00:01 10.0.0.100 host1 01:52:56:65:00:00:01\n"
                       "0 52:56:65:00:00:02 10.0.0.101 * *\n"
                       "duid 00:01:00:01:aa:bb\n"
                       "1700000000 1234 fd00::5 * 00:01\n"
                       "garbage\n";
    struct vs_net_lease *l;
    size_t n;
    CHECK_OK(vs_net_leases_parse(text, &l, &n));
    CHECK(n == 2);
    if (n == 2) {
        char a[16];
        CHECK(l[0].expiry == 1700000000 && !strcmp(l[0].hostname, "host1"));
        CHECK(l[1].expiry == 0 && l[1].hostname[0] == 0);
        CHECK(!strcmp(vs_ipv4_format(l[1].ip, a), "10.0.0.101"));
    }
    free(l);
}

/* dnsmasq's file is written by a process that takes hostnames from guests: what is not a
 * unicast lease of a plain name is skipped or blanked, never passed on. */
TEST(leases_bad_input)
{
    const char *text = "1 52:56:65:00:00:01 0.0.0.0 a\n"
                       "1 52:56:65:00:00:02 255.255.255.255 b\n"
                       "1 52:56:65:00:00:03 224.0.0.1 c\n"
                       "1 52:56:65:00:00:04 127.0.0.1 d\n"
                       "1 01:00:5e:00:00:05 10.0.0.5 e\n"
                       "1 00:00:00:00:00:00 10.0.0.6 f\n"
                       "1 52:56:65:00:00:07 10.0.0.7 bad\x01name\n"
                       "1 52:56:65:00:00:08 10.0.0.8 a'b\n"
                       "x 52:56:65:00:00:09 10.0.0.9 g\n"
                       "1 52:56:65:00:00:0a\n"
                       "   \n\n"
                       "9 52:56:65:00:00:0b 10.0.0.11"; /* no newline at the end */
    struct vs_net_lease *l;
    size_t n;
    CHECK_OK(vs_net_leases_parse(text, &l, &n));
    CHECK(n == 3);
    if (n == 3) {
        CHECK(l[0].mac.b[5] == 7 && l[0].hostname[0] == 0);
        CHECK(l[1].mac.b[5] == 8 && l[1].hostname[0] == 0);
        CHECK(l[2].mac.b[5] == 0x0b && l[2].expiry == 9 && l[2].hostname[0] == 0);
    }
    free(l);
    CHECK_OK(vs_net_leases_parse("", &l, &n));
    CHECK(n == 0);
    free(l);
}

TEST(generated_nft_and_dnsmasq)
{
    struct vs_net_def d;
    CHECK_OK(vs_net_def_parse("name = my-nat\nkind = nat\nsubnet = 10.9.0.0/24\n"
                              "dhcp-range = 10.9.0.10-10.9.0.20\n"
                              "reservation = 52:56:65:00:00:07 10.9.0.7\n",
                              "t", &d));
    struct vs_net_tap taps[2] = {{.name = "t1", .rate_mbit = 8}, {.name = "t2"}};
    CHECK_OK(vs_mac_parse("52:56:65:00:00:01", &taps[0].mac));
    CHECK_OK(vs_mac_parse("52:56:65:00:00:07", &taps[1].mac));
    CHECK_OK(vs_ipv4_parse("10.9.0.7", &taps[1].ip));
    struct vs_net_lease leased[2] = {{.expiry = 0}, {.expiry = 1}}; /* the second expired */
    CHECK_OK(vs_mac_parse("52:56:65:00:00:01", &leased[0].mac));
    CHECK_OK(vs_ipv4_parse("10.9.0.15", &leased[0].ip));
    CHECK_OK(vs_mac_parse("52:56:65:00:00:09", &leased[1].mac));
    CHECK_OK(vs_ipv4_parse("10.9.0.16", &leased[1].ip));
    char *nft = vs_net_nft_ruleset(&d, taps, 2, leased, 2);
    CHECK(nft != NULL);
    if (nft) {
        CHECK(strstr(nft, "table bridge vessel_my_nat {"));
        CHECK(strstr(nft, "iifname \"t1\" ether saddr != 52:56:65:00:00:01 counter drop"));
        CHECK(strstr(nft, "iifname \"t1\" limit rate over 1000000 bytes/second counter drop"));
        /* t1 has no address of its own: on a NAT network with DHCP its lease decides */
        CHECK(strstr(nft, "iifname \"t1\" ether type ip ether saddr . ip saddr != @leased "
                          "counter drop"));
        CHECK(strstr(nft, "iifname \"t2\" ether type ip ether saddr . ip saddr != @leased"));
        CHECK(strstr(nft, "iifname \"t2\" arp saddr ip != 0.0.0.0 arp saddr ether . arp saddr "
                          "ip != @leased counter drop"));
        CHECK(strstr(nft, "iifname \"t1\" ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 "
                          "udp dport 67 accept"));
        /* given address and reservation (the same pair once), the current lease, not the
         * expired one */
        CHECK(strstr(nft, "elements = { 52:56:65:00:00:07 . 10.9.0.7, "
                          "52:56:65:00:00:01 . 10.9.0.15 }"));
        CHECK(!strstr(nft, "10.9.0.16"));
        /* the rate limit comes before the DHCP accept, which would otherwise bypass it */
        const char *limit = strstr(nft, "iifname \"t1\" limit rate");
        const char *dhcp = strstr(nft, "iifname \"t1\" ip saddr 0.0.0.0");
        CHECK(limit && dhcp && limit < dhcp);
        CHECK(strstr(nft, "ip saddr 10.9.0.0/24 ip daddr != 10.9.0.0/24 masquerade"));
        CHECK(!strstr(
            nft,
            "limit rate over 1000000 bytes/second counter drop\n        iifname \"t2\" limit"));
    }
    char *conf = vs_net_dnsmasq_config(&d, "/run/x");
    CHECK(conf && strstr(conf, "dhcp-range=10.9.0.10,10.9.0.20,255.255.255.0,3600\n"));
    CHECK(conf && strstr(conf, "dhcp-option=option:router,10.9.0.1\n"));
    CHECK(conf && strstr(conf, "dhcp-host=52:56:65:00:00:07,10.9.0.7\n"));
    CHECK(conf && strstr(conf, "interface=vs-my-nat\n"));
    CHECK(conf && strstr(conf, "dhcp-script=/run/x/lease-hook\nscript-on-renewal\n"));
    free(nft);
    free(conf);
    vs_net_def_free(&d);
}

/* ---- netlink and the store, in a network namespace of our own -------------------------------- */

static bool private_netns(void)
{
    static int state; /* 0 unknown, 1 yes, -1 no */
    if (!state)
        state = unshare(CLONE_NEWNET) == 0 ? 1 : -1;
    if (state < 0)
        fprintf(stderr, "  skipped: cannot unshare a network namespace\n");
    return state > 0;
}

TEST(netlink_bridge_tap_vxlan)
{
    if (!private_netns())
        return;
    CHECK_OK(vs_bridge_create("tbr0", 1400));
    struct vs_link l, b;
    CHECK_OK(vs_link_get("tbr0", &b));
    CHECK(!strcmp(b.kind, "bridge") && b.mtu == 1400);
    CHECK(vs_bridge_create("tbr0", 0) == -EEXIST);
    CHECK(message_contains("already used"));
    struct vs_mac host;
    CHECK_OK(vs_mac_parse("fe:56:65:00:00:01", &host));
    CHECK_OK(vs_tap_create("ttap0", &host, (uid_t)-1, (gid_t)-1));
    CHECK(vs_tap_create("ttap0", NULL, (uid_t)-1, (gid_t)-1) == -EEXIST);
    CHECK_OK(vs_link_set("ttap0", "tbr0", 0, 1));
    CHECK(vs_link_set("ttap0", "nosuchbr", 0, -1) == -ENODEV);
    CHECK_OK(vs_link_get("ttap0", &l));
    CHECK(l.master == b.index && vs_mac_equal(&l.mac, &host) && !strcmp(l.kind, "tun"));
    struct vs_vxlan_config vx = {.name = "tvx0", .vni = 77};
    CHECK_OK(vs_vxlan_create(&vx));
    uint32_t peer;
    CHECK_OK(vs_ipv4_parse("10.0.0.2", &peer));
    CHECK_OK(vs_vxlan_add_peer("tvx0", peer));
    struct vs_vxlan_config vx2 = {.name = "tvx1", .vni = 77};
    CHECK(vs_vxlan_create(&vx2) == -EEXIST);
    CHECK(message_contains("VNI 77 is already used by tvx0"));
    CHECK_OK(vs_link_get("tvx0", &l));
    CHECK(l.vxlan_vni == 77);
    uint32_t addr;
    CHECK_OK(vs_ipv4_parse("10.5.0.1", &addr));
    CHECK_OK(vs_link_add_ipv4("tbr0", addr, 24));
    CHECK(vs_link_get("nope0", &l) == -ENODEV);
    /* allocation skips what is taken and what the host uses */
    struct vs_mac taken[1], got;
    CHECK_OK(vs_mac_parse("52:56:65:00:00:09", &taken[0]));
    for (int i = 0; i < 50; i++) {
        CHECK_OK(vs_mac_allocate(taken, 1, &got));
        CHECK(got.b[0] == 0x52 && got.b[1] == 0x56 && got.b[2] == 0x65);
        CHECK(!vs_mac_equal(&got, &taken[0]));
    }
    CHECK_OK(vs_link_delete("ttap0"));
    CHECK_OK(vs_link_delete("tvx0"));
    CHECK_OK(vs_link_delete("tbr0"));
    CHECK(vs_link_delete("tbr0") == -ENODEV);
}

/* The lease hook's bookkeeping on a defined (not started) network: add/old/del, one lease per
 * MAC and per address, refusals; the set itself is exercised by net-dhcp.sh. */
TEST(store_lease_events)
{
    if (!private_netns())
        return;
    struct vs_net_store *s;
    CHECK_OK(vs_net_store_open(test_path("lease-state"), &s));
    struct vs_net_def a = {0}, i = {0};
    CHECK_OK(vs_net_def_set(&a, "name", "le"));
    CHECK_OK(vs_net_def_set(&a, "kind", "nat"));
    CHECK_OK(vs_net_def_set(&a, "subnet", "10.4.0.0/24"));
    CHECK_OK(vs_net_def_set(&a, "dhcp-range", "10.4.0.50-10.4.0.60"));
    CHECK_OK(vs_net_define(s, &a));
    CHECK_OK(vs_net_def_set(&i, "name", "li"));
    CHECK_OK(vs_net_def_set(&i, "kind", "internal"));
    CHECK_OK(vs_net_define(s, &i));
    struct vs_net_lease l1 = {.expiry = 0}, l2 = {.expiry = 0};
    CHECK_OK(vs_mac_parse("52:56:65:00:40:01", &l1.mac));
    CHECK_OK(vs_ipv4_parse("10.4.0.51", &l1.ip));
    CHECK_OK(vs_mac_parse("52:56:65:00:40:02", &l2.mac));
    CHECK_OK(vs_ipv4_parse("10.4.0.52", &l2.ip));
    CHECK_OK(vs_net_lease_event(s, "le", "add", &l1));
    CHECK_OK(vs_net_lease_event(s, "le", "add", &l2));
    CHECK_OK(vs_net_lease_event(s, "le", "tftp", &l2)); /* ignored */
    /* l2's MAC now gets l1's address: both old entries go, one remains */
    struct vs_net_lease moved = l2;
    moved.ip = l1.ip;
    CHECK_OK(vs_net_lease_event(s, "le", "old", &moved));
    char *run = vs_net_run_dir(s, "le");
    char *path = run ? vs_asprintf("%s/leased", run) : NULL;
    FILE *f = path ? fopen(path, "r") : NULL;
    char buf[512] = "";
    size_t got = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    buf[got] = 0;
    if (f)
        fclose(f);
    CHECK(strstr(buf, "0 52:56:65:00:40:02 10.4.0.51 *\n") != NULL);
    CHECK(!strstr(buf, "52:56:65:00:40:01") && !strstr(buf, "10.4.0.52"));
    CHECK_OK(vs_net_lease_event(s, "le", "del", &moved));
    f = path ? fopen(path, "r") : NULL;
    got = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    buf[got] = 0;
    if (f)
        fclose(f);
    CHECK(!strstr(buf, "10.4.0.51"));
    free(path);
    free(run);
    struct vs_net_lease outside = l1;
    CHECK_OK(vs_ipv4_parse("10.5.0.9", &outside.ip));
    CHECK(vs_net_lease_event(s, "le", "add", &outside) == -EINVAL);
    CHECK(message_contains("not an address of 10.4.0.0/24"));
    CHECK(vs_net_lease_event(s, "li", "add", &l1) == -EINVAL);
    CHECK(message_contains("no DHCP server"));
    CHECK(vs_net_lease_event(s, "zz", "add", &l1) == -ENOENT);
    CHECK_OK(vs_net_undefine(s, "le"));
    CHECK_OK(vs_net_undefine(s, "li"));
    vs_net_def_free(&a);
    vs_net_def_free(&i);
    vs_net_store_close(s);
}

TEST(store_checks_between_networks)
{
    if (!private_netns())
        return;
    struct vs_net_store *s;
    CHECK_OK(vs_net_store_open(test_path("state"), &s));
    struct vs_net_def a = {0}, b = {0}, c = {0};
    CHECK_OK(vs_net_def_set(&a, "name", "a"));
    CHECK_OK(vs_net_def_set(&a, "kind", "nat"));
    CHECK_OK(vs_net_def_set(&a, "subnet", "10.3.0.0/24"));
    CHECK_OK(vs_net_def_set(&a, "dhcp-range", "10.3.0.50-10.3.0.60"));
    CHECK_OK(vs_net_define(s, &a));
    CHECK(vs_net_define(s, &a) == -EEXIST);
    CHECK_OK(vs_net_def_set(&b, "name", "b"));
    CHECK_OK(vs_net_def_set(&b, "kind", "nat"));
    CHECK_OK(vs_net_def_set(&b, "subnet", "10.3.0.128/25"));
    CHECK(vs_net_define(s, &b) == -EEXIST);
    CHECK(message_contains("overlaps network a"));
    CHECK_OK(vs_net_def_set(&c, "name", "c"));
    CHECK_OK(vs_net_def_set(&c, "kind", "bridged"));
    CHECK_OK(vs_net_def_set(&c, "bridge", "missing0"));
    CHECK(vs_net_define(s, &c) == -ENODEV);
    CHECK(message_contains("host bridge missing0 does not exist"));
    char **names;
    size_t n;
    CHECK_OK(vs_net_names(s, &names, &n));
    CHECK(n == 1 && !strcmp(names[0], "a"));
    vs_net_names_free(names, n);
    struct vs_net_def got;
    CHECK_OK(vs_net_get(s, "a", &got));
    CHECK(got.kind == VS_NET_NAT && got.prefix == 24);
    vs_net_def_free(&got);
    CHECK(vs_net_get(s, "zz", &got) == -ENOENT);
    CHECK_OK(vs_net_undefine(s, "a"));
    CHECK(vs_net_undefine(s, "a") == -ENOENT);
    vs_net_def_free(&a);
    vs_net_def_free(&b);
    vs_net_def_free(&c);
    vs_net_store_close(s);
}
