/*
 * lib/net/def.c — network definitions: the `key = value` text format (parse with line numbers,
 * canonical print), validation of one definition on its own, libvirt <network> XML import, and
 * the IPv4 helpers they share.
 *
 * The idea: the text format is the one representation that is stored; the CLI flags and the
 * libvirt import both build the same struct, validation fills the defaults (bridge name,
 * gateway, lease time), and printing then parsing gives back the same struct.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "net/net-internal.h"
#include "vessel/net.h"
#include "vessel/util.h"

static const char *const kind_names[] = {"internal", "bridged", "nat", "vxlan"};

const char *vs_net_kind_name(enum vs_net_kind kind)
{
    return (unsigned)kind < VS_ARRAY_SIZE(kind_names) ? kind_names[kind] : "?";
}

int vs_net_kind_parse(const char *text, enum vs_net_kind *out)
{
    for (size_t i = 0; i < VS_ARRAY_SIZE(kind_names); i++)
        if (!strcmp(text, kind_names[i])) {
            *out = (enum vs_net_kind)i;
            return 0;
        }
    return vs_error(-EINVAL, "kind '%s' unknown (internal, nat, bridged, vxlan)", text);
}

/* ---- IPv4 --------------------------------------------------------------------------------------
 */

int vs_ipv4_parse(const char *text, uint32_t *out)
{
    struct in_addr a;
    if (!text || inet_pton(AF_INET, text, &a) != 1)
        return vs_error(-EINVAL, "'%s': not an IPv4 address", text ? text : "");
    *out = a.s_addr;
    return 0;
}

int vs_cidr_parse(const char *text, uint32_t *addr, uint32_t *prefix)
{
    const char *slash = strchr(text, '/');
    char *end;
    if (!slash || slash - text > 15)
        return vs_error(-EINVAL, "'%s': not a subnet like 10.0.0.0/24", text);
    char a[16];
    memcpy(a, text, (size_t)(slash - text));
    a[slash - text] = 0;
    long p = strtol(slash + 1, &end, 10);
    if (*end || slash[1] == 0 || p < 8 || p > 30)
        return vs_error(-EINVAL, "'%s': prefix length must be 8-30", text);
    uint32_t ip = 0;
    if (vs_ipv4_parse(a, &ip) < 0)
        return vs_error(-EINVAL, "'%s': not a subnet like 10.0.0.0/24", text);
    uint32_t mask = htonl(~0u << (32 - p));
    *addr = ip & mask;
    *prefix = (uint32_t)p;
    return 0;
}

const char *vs_ipv4_format(uint32_t addr, char buf[16])
{
    struct in_addr a = {.s_addr = addr};
    inet_ntop(AF_INET, &a, buf, 16);
    return buf;
}

static uint32_t prefix_mask(uint32_t prefix)
{
    return prefix ? htonl(~0u << (32 - prefix)) : 0;
}

static bool in_subnet(uint32_t ip, uint32_t subnet, uint32_t prefix)
{
    uint32_t m = prefix_mask(prefix);
    return (ip & m) == (subnet & m);
}

/* ---- the struct ------------------------------------------------------------------------------ */

void vs_net_def_free(struct vs_net_def *def)
{
    if (!def)
        return;
    free(def->name);
    free(def->bridge);
    for (size_t i = 0; i < def->n_reservations; i++)
        free(def->reservations[i].hostname);
    free(def->reservations);
    free(def->remotes);
    free(def->vxlan_dev);
    memset(def, 0, sizeof(*def));
}

static int check_net_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > VS_NET_NAME_MAX)
        return vs_error(-EINVAL, "network name '%s': 1-%d characters", name ? name : "",
                        VS_NET_NAME_MAX);
    if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z')))
        return vs_error(-EINVAL, "network name '%s': must start with a letter", name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return vs_error(-EINVAL, "network name '%s': only letters, digits, '-' and '_'", name);
    }
    return 0;
}

/* Interface names and hostnames end up in dnsmasq.conf, the nftables ruleset and the text
 * format, one directive a line: only characters that mean nothing in any of them. */
bool net_word_ok(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return n > 0 && n <= max;
}

int vs_net_def_validate(struct vs_net_def *def)
{
    int rc = check_net_name(def->name);
    if (rc < 0)
        return rc;
    const char *n = def->name;
    char a[16], b[16], c[16];
    if (def->kind == VS_NET_BRIDGED) {
        if (!def->bridge)
            return vs_error(-EINVAL, "network %s: kind bridged needs --bridge (the host bridge)",
                            n);
    } else if (!def->bridge) {
        /* vs-NAME when it fits in IFNAMSIZ, else vs- and a hash of the name */
        if (strlen(n) + 3 <= VS_NET_IFNAME_MAX) {
            def->bridge = vs_asprintf("vs-%s", n);
        } else {
            uint32_t h = 2166136261u;
            for (const char *p = n; *p; p++)
                h = (h ^ (uint8_t)*p) * 16777619u;
            def->bridge = vs_asprintf("vs-%08x", h);
        }
        if (!def->bridge)
            return -ENOMEM;
    }
    if (!net_word_ok(def->bridge, VS_NET_IFNAME_MAX))
        return vs_error(-EINVAL,
                        "network %s: bridge name '%s': 1-%d letters, digits, '-', '_' or '.'", n,
                        def->bridge, VS_NET_IFNAME_MAX);
    if (def->vxlan_dev && !net_word_ok(def->vxlan_dev, VS_NET_IFNAME_MAX))
        return vs_error(-EINVAL,
                        "network %s: vxlan-dev '%s': 1-%d letters, digits, '-', '_' or '.'", n,
                        def->vxlan_dev, VS_NET_IFNAME_MAX);
    if (def->mtu && (def->mtu < 68 || def->mtu > 65535))
        return vs_error(-EINVAL, "network %s: mtu %u out of range (68-65535)", n, def->mtu);
    if (def->kind == VS_NET_NAT && !def->prefix)
        return vs_error(-EINVAL, "network %s: kind nat needs --subnet", n);
    if (def->prefix && (def->prefix < 8 || def->prefix > 30))
        return vs_error(-EINVAL, "network %s: prefix length /%u: must be 8-30", n, def->prefix);
    if (def->prefix) {
        uint32_t m = prefix_mask(def->prefix);
        def->subnet &= m;
        if (!def->gateway && def->kind == VS_NET_NAT)
            def->gateway = htonl(ntohl(def->subnet) + 1);
        if (def->gateway && (!in_subnet(def->gateway, def->subnet, def->prefix) ||
                             def->gateway == def->subnet || (def->gateway | m) == 0xffffffffu))
            return vs_error(-EINVAL, "network %s: gateway %s is not a host address in %s/%u", n,
                            vs_ipv4_format(def->gateway, a), vs_ipv4_format(def->subnet, b),
                            def->prefix);
    }
    if (def->dhcp_first || def->dhcp_last) {
        if (def->kind != VS_NET_NAT)
            return vs_error(-EINVAL, "network %s: a DHCP range needs kind nat", n);
        if (!in_subnet(def->dhcp_first, def->subnet, def->prefix) ||
            !in_subnet(def->dhcp_last, def->subnet, def->prefix))
            return vs_error(-EINVAL, "network %s: DHCP range %s-%s is not inside %s/%u", n,
                            vs_ipv4_format(def->dhcp_first, a), vs_ipv4_format(def->dhcp_last, b),
                            vs_ipv4_format(def->subnet, c), def->prefix);
        if (ntohl(def->dhcp_first) > ntohl(def->dhcp_last))
            return vs_error(-EINVAL, "network %s: DHCP range %s-%s ends before it starts", n,
                            vs_ipv4_format(def->dhcp_first, a), vs_ipv4_format(def->dhcp_last, b));
        if (def->gateway && ntohl(def->gateway) >= ntohl(def->dhcp_first) &&
            ntohl(def->gateway) <= ntohl(def->dhcp_last))
            return vs_error(-EINVAL, "network %s: DHCP range contains the gateway %s", n,
                            vs_ipv4_format(def->gateway, a));
    }
    for (size_t i = 0; i < def->n_reservations; i++) {
        struct vs_net_reservation *r = &def->reservations[i];
        if (r->hostname && !net_word_ok(r->hostname, 63))
            return vs_error(-EINVAL,
                            "network %s: reservation hostname '%s': 1-63 letters, digits, '-', "
                            "'_' or '.'",
                            n, r->hostname);
        if (!in_subnet(r->ip, def->subnet, def->prefix))
            return vs_error(-EINVAL, "network %s: reservation %s is not inside the subnet", n,
                            vs_ipv4_format(r->ip, a));
        for (size_t j = 0; j < i; j++)
            if (vs_mac_equal(&r->mac, &def->reservations[j].mac) ||
                r->ip == def->reservations[j].ip)
                return vs_error(-EEXIST,
                                "network %s: reservation %zu repeats a MAC or an "
                                "address of reservation %zu",
                                n, i + 1, j + 1);
    }
    if (def->kind == VS_NET_VXLAN) {
        if (def->vni == 0 || def->vni > 0xffffff)
            return vs_error(-EINVAL, "network %s: kind vxlan needs --vni 1-16777215", n);
        if (!def->n_remotes && !def->group)
            return vs_error(-EINVAL, "network %s: kind vxlan needs --remote IP or --group MCAST",
                            n);
        if (def->n_remotes && def->group)
            return vs_error(-EINVAL, "network %s: --remote and --group exclude each other", n);
        if (def->group && (ntohl(def->group) >> 28) != 0xe)
            return vs_error(-EINVAL, "network %s: group %s is not a multicast address", n,
                            vs_ipv4_format(def->group, a));
    } else if (def->vni || def->n_remotes || def->group) {
        return vs_error(-EINVAL, "network %s: --vni/--remote/--group need kind vxlan", n);
    }
    if (!def->lease_seconds)
        def->lease_seconds = 3600;
    return 0;
}

/* ---- text format ----------------------------------------------------------------------------- */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = 0;
    return s;
}

static int parse_uint(const char *v, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (!*v || *end || errno || x > max || v[0] == '-')
        return vs_error(-EINVAL, "'%s': expected a number up to %lu", v, max);
    *out = x;
    return 0;
}

static int add_u32(uint32_t **list, size_t *n, uint32_t v)
{
    uint32_t *l = realloc(*list, (*n + 1) * sizeof(*l));
    if (!l)
        return vs_error(-ENOMEM, "out of memory");
    l[(*n)++] = v;
    *list = l;
    return 0;
}

static int parse_ip_list(const char *v, uint32_t **list, size_t *n)
{
    char *copy = vs_strdup(v), *save = NULL;
    if (!copy)
        return -ENOMEM;
    int rc = 0;
    size_t n_before = *n;
    for (char *tok = strtok_r(copy, ", ", &save); tok && rc == 0;
         tok = strtok_r(NULL, ", ", &save)) {
        uint32_t ip = 0;
        rc = vs_ipv4_parse(tok, &ip);
        if (rc == 0)
            rc = add_u32(list, n, ip);
    }
    free(copy);
    if (rc == 0 && *n == n_before)
        rc = vs_error(-EINVAL, "'%s': expected IP[, IP…]", v);
    return rc;
}

int vs_net_def_add_reservation(struct vs_net_def *def, const char *text)
{
    char mac[64], ip[64], host[64] = "", extra[2];
    int n = sscanf(text, "%63s %63s %63s %1s", mac, ip, host, extra);
    if (n < 2 || n > 3)
        return vs_error(-EINVAL, "reservation '%s': expected 'MAC IP [HOSTNAME]'", text);
    struct vs_net_reservation r = {0};
    int rc = vs_mac_parse(mac, &r.mac);
    if (rc == 0)
        rc = vs_ipv4_parse(ip, &r.ip);
    if (rc < 0)
        return rc;
    if (n == 3 && !(r.hostname = vs_strdup(host)))
        return -ENOMEM;
    struct vs_net_reservation *l =
        realloc(def->reservations, (def->n_reservations + 1) * sizeof(*l));
    if (!l) {
        free(r.hostname);
        return vs_error(-ENOMEM, "out of memory");
    }
    l[def->n_reservations++] = r;
    def->reservations = l;
    return 0;
}

/* One key of the text format (also what the CLI flags map onto). */
int vs_net_def_set(struct vs_net_def *def, const char *key, const char *v)
{
    unsigned long x;
    int rc = 0;
    if (!strcmp(key, "name")) {
        free(def->name);
        def->name = vs_strdup(v);
    } else if (!strcmp(key, "kind")) {
        rc = vs_net_kind_parse(v, &def->kind);
    } else if (!strcmp(key, "bridge")) {
        free(def->bridge);
        def->bridge = vs_strdup(v);
    } else if (!strcmp(key, "mtu")) {
        if ((rc = parse_uint(v, 65535, &x)) == 0)
            def->mtu = (unsigned)x;
    } else if (!strcmp(key, "subnet")) {
        rc = vs_cidr_parse(v, &def->subnet, &def->prefix);
    } else if (!strcmp(key, "gateway")) {
        rc = vs_ipv4_parse(v, &def->gateway);
    } else if (!strcmp(key, "dhcp-range")) {
        const char *dash = strchr(v, '-');
        char first[32];
        if (!dash || dash - v >= (long)sizeof(first))
            return vs_error(-EINVAL, "dhcp-range '%s': expected FIRST-LAST", v);
        memcpy(first, v, (size_t)(dash - v));
        first[dash - v] = 0;
        rc = vs_ipv4_parse(first, &def->dhcp_first);
        if (rc == 0)
            rc = vs_ipv4_parse(dash + 1, &def->dhcp_last);
    } else if (!strcmp(key, "dns")) {
        uint32_t *l = NULL;
        size_t n = 0;
        rc = parse_ip_list(v, &l, &n);
        if (rc == 0 && n > VS_ARRAY_SIZE(def->dns))
            rc = vs_error(-EINVAL, "dns: at most %zu servers", VS_ARRAY_SIZE(def->dns));
        if (rc == 0 && n) {
            memcpy(def->dns, l, n * sizeof(*l));
            def->n_dns = n;
        }
        free(l);
    } else if (!strcmp(key, "lease-time")) {
        if ((rc = parse_uint(v, 100000000, &x)) == 0)
            def->lease_seconds = (unsigned)x;
        if (rc == 0 && x < 120)
            rc = vs_error(-EINVAL, "lease-time %lu: at least 120 seconds", x);
    } else if (!strcmp(key, "reservation")) {
        rc = vs_net_def_add_reservation(def, v);
    } else if (!strcmp(key, "vni")) {
        if ((rc = parse_uint(v, 0xffffff, &x)) == 0)
            def->vni = (uint32_t)x;
    } else if (!strcmp(key, "remote")) {
        rc = parse_ip_list(v, &def->remotes, &def->n_remotes);
    } else if (!strcmp(key, "group")) {
        rc = vs_ipv4_parse(v, &def->group);
    } else if (!strcmp(key, "local")) {
        rc = vs_ipv4_parse(v, &def->local);
    } else if (!strcmp(key, "vxlan-dev")) {
        free(def->vxlan_dev);
        def->vxlan_dev = vs_strdup(v);
    } else if (!strcmp(key, "dstport")) {
        if ((rc = parse_uint(v, 65535, &x)) == 0)
            def->dstport = (uint16_t)x;
    } else {
        return vs_error(-EINVAL, "unknown key '%s'", key);
    }
    return rc;
}

int vs_net_def_parse(const char *text, const char *origin, struct vs_net_def *out)
{
    struct vs_net_def def = {0};
    char *copy = vs_strdup(text), *save = NULL;
    if (!copy)
        return -ENOMEM;
    int rc = 0, line_no = 0;
    const char *p = copy;
    while (p && *p && rc == 0) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, len);
        p = nl ? nl + 1 : NULL;
        line_no++;
        if (!line) {
            rc = -ENOMEM;
            break;
        }
        char *s = trim(line);
        if (*s && *s != '#') {
            char *eq = strchr(s, '=');
            if (!eq) {
                rc = vs_error(-EINVAL, "%s:%d: expected 'key = value'", origin, line_no);
            } else {
                *eq = 0;
                char *key = trim(s), *val = trim(eq + 1);
                rc = vs_net_def_set(&def, key, val);
                if (rc < 0)
                    rc = vs_error_prefix(rc, "%s:%d: %s", origin, line_no, key);
            }
        }
        free(line);
    }
    (void)save;
    free(copy);
    if (rc == 0 && !def.name)
        rc = vs_error(-EINVAL, "%s: no 'name = …' line", origin);
    if (rc == 0) {
        rc = vs_net_def_validate(&def);
        if (rc < 0)
            rc = vs_error_prefix(rc, "%s", origin);
    }
    if (rc < 0) {
        vs_net_def_free(&def);
        return rc;
    }
    *out = def;
    return 0;
}

void sb_printf(struct strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *piece = NULL;
    int n = vasprintf(&piece, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->failed = true;
        return;
    }
    if (sb->len + (size_t)n + 1 > sb->cap) {
        size_t cap = (sb->len + (size_t)n + 1) * 2;
        char *s = realloc(sb->s, cap);
        if (!s) {
            free(piece);
            sb->failed = true;
            return;
        }
        sb->s = s;
        sb->cap = cap;
    }
    memcpy(sb->s + sb->len, piece, (size_t)n + 1);
    sb->len += (size_t)n;
    free(piece);
}

char *sb_finish(struct strbuf *sb)
{
    if (sb->failed) {
        free(sb->s);
        vs_error(-ENOMEM, "out of memory");
        return NULL;
    }
    return sb->s ? sb->s : vs_strdup("");
}

char *vs_net_def_print(const struct vs_net_def *def)
{
    struct strbuf sb = {0};
    char a[16], b[16];
    sb_printf(&sb, "# vessel network definition\nname = %s\nkind = %s\n", def->name,
              vs_net_kind_name(def->kind));
    if (def->bridge)
        sb_printf(&sb, "bridge = %s\n", def->bridge);
    if (def->mtu)
        sb_printf(&sb, "mtu = %u\n", def->mtu);
    if (def->prefix)
        sb_printf(&sb, "subnet = %s/%u\n", vs_ipv4_format(def->subnet, a), def->prefix);
    if (def->gateway)
        sb_printf(&sb, "gateway = %s\n", vs_ipv4_format(def->gateway, a));
    if (def->dhcp_first)
        sb_printf(&sb, "dhcp-range = %s-%s\n", vs_ipv4_format(def->dhcp_first, a),
                  vs_ipv4_format(def->dhcp_last, b));
    if (def->n_dns) {
        sb_printf(&sb, "dns = ");
        for (size_t i = 0; i < def->n_dns; i++)
            sb_printf(&sb, "%s%s", i ? ", " : "", vs_ipv4_format(def->dns[i], a));
        sb_printf(&sb, "\n");
    }
    if (def->lease_seconds)
        sb_printf(&sb, "lease-time = %u\n", def->lease_seconds);
    for (size_t i = 0; i < def->n_reservations; i++) {
        char m[18];
        const struct vs_net_reservation *r = &def->reservations[i];
        sb_printf(&sb, "reservation = %s %s%s%s\n", vs_mac_format(&r->mac, m),
                  vs_ipv4_format(r->ip, a), r->hostname ? " " : "", r->hostname ? r->hostname : "");
    }
    if (def->vni)
        sb_printf(&sb, "vni = %u\n", def->vni);
    if (def->n_remotes) {
        sb_printf(&sb, "remote = ");
        for (size_t i = 0; i < def->n_remotes; i++)
            sb_printf(&sb, "%s%s", i ? ", " : "", vs_ipv4_format(def->remotes[i], a));
        sb_printf(&sb, "\n");
    }
    if (def->group)
        sb_printf(&sb, "group = %s\n", vs_ipv4_format(def->group, a));
    if (def->local)
        sb_printf(&sb, "local = %s\n", vs_ipv4_format(def->local, a));
    if (def->vxlan_dev)
        sb_printf(&sb, "vxlan-dev = %s\n", def->vxlan_dev);
    if (def->dstport)
        sb_printf(&sb, "dstport = %u\n", def->dstport);
    return sb_finish(&sb);
}

/* ---- libvirt <network> XML ------------------------------------------------------------------- */

static char *xml_prop(xmlNode *n, const char *name)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    if (!v)
        return NULL;
    char *s = vs_strdup((const char *)v);
    xmlFree(v);
    return s;
}

static xmlNode *xml_child(xmlNode *parent, const char *name)
{
    for (xmlNode *c = parent ? parent->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
            return c;
    return NULL;
}

static int mask_to_prefix(uint32_t mask_be, uint32_t *prefix)
{
    uint32_t m = ntohl(mask_be);
    uint32_t p = 0;
    while (p < 32 && (m & (0x80000000u >> p)))
        p++;
    if (p < 32 && (m << p) != 0)
        return -EINVAL;
    *prefix = p;
    return 0;
}

int vs_net_def_from_libvirt_xml(const char *xml, size_t len, struct vs_net_def *out)
{
    xmlDoc *doc = xmlReadMemory(xml, (int)VS_MIN(len, (size_t)0x7fffffff), "network.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return vs_error(-EINVAL, "libvirt network XML: not well-formed");
    struct vs_net_def def = {.kind = VS_NET_INTERNAL};
    int rc = 0;
    xmlNode *root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "network")) {
        rc = vs_error(-EINVAL, "libvirt network XML: root element is not <network>");
        goto out;
    }
    xmlNode *name = xml_child(root, "name");
    xmlChar *name_text = name ? xmlNodeGetContent(name) : NULL;
    if (!name_text) {
        rc = vs_error(-EINVAL, "libvirt network XML: no <name>");
        goto out;
    }
    def.name = vs_strdup(trim((char *)name_text));
    xmlFree(name_text);
    xmlNode *fwd = xml_child(root, "forward");
    if (fwd) {
        char *mode = xml_prop(fwd, "mode");
        if (!mode || !strcmp(mode, "nat"))
            def.kind = VS_NET_NAT;
        else if (!strcmp(mode, "bridge"))
            def.kind = VS_NET_BRIDGED;
        else if (!strcmp(mode, "none") || !strcmp(mode, "open"))
            def.kind = VS_NET_INTERNAL;
        else
            rc = vs_error(-ENOTSUP,
                          "libvirt network XML: forward mode '%s' not supported "
                          "(nat, bridge, none)",
                          mode);
        free(mode);
        if (rc < 0)
            goto out;
    }
    xmlNode *br = xml_child(root, "bridge");
    if (br)
        def.bridge = xml_prop(br, "name");
    xmlNode *mtu = xml_child(root, "mtu");
    if (mtu) {
        char *size = xml_prop(mtu, "size");
        if (size && (rc = vs_net_def_set(&def, "mtu", size)) < 0)
            rc = vs_error_prefix(rc, "libvirt network XML: <mtu>");
        free(size);
        if (rc < 0)
            goto out;
    }
    for (xmlNode *ip = root->children; ip; ip = ip->next) {
        if (ip->type != XML_ELEMENT_NODE || strcmp((const char *)ip->name, "ip"))
            continue;
        char *family = xml_prop(ip, "family");
        bool v6 = family && strcmp(family, "ipv4");
        free(family);
        if (v6)
            continue;
        char *addr = xml_prop(ip, "address"), *mask = xml_prop(ip, "netmask"),
             *prefix = xml_prop(ip, "prefix");
        uint32_t a = 0, m = 0, p = 0;
        if (!addr || vs_ipv4_parse(addr, &a) < 0)
            rc = vs_error(-EINVAL, "libvirt network XML: <ip address='%s'> invalid",
                          addr ? addr : "");
        else if (mask && (vs_ipv4_parse(mask, &m) < 0 || mask_to_prefix(m, &p) < 0))
            rc = vs_error(-EINVAL, "libvirt network XML: netmask '%s' invalid", mask);
        else if (prefix) {
            unsigned long x = 0;
            if (parse_uint(prefix, 32, &x) < 0 || x == 0)
                rc = vs_error(-EINVAL, "libvirt network XML: prefix '%s' invalid", prefix);
            p = (uint32_t)x;
        }
        free(addr);
        free(mask);
        free(prefix);
        if (rc < 0)
            goto out;
        if (!p)
            p = 24;
        def.gateway = a;
        def.prefix = p;
        def.subnet = a & prefix_mask(p);
        xmlNode *dhcp = xml_child(ip, "dhcp");
        for (xmlNode *c = dhcp ? dhcp->children : NULL; c && rc == 0; c = c->next) {
            if (c->type != XML_ELEMENT_NODE)
                continue;
            if (!strcmp((const char *)c->name, "range")) {
                char *s = xml_prop(c, "start"), *e = xml_prop(c, "end");
                if (!s || !e || vs_ipv4_parse(s, &def.dhcp_first) < 0 ||
                    vs_ipv4_parse(e, &def.dhcp_last) < 0)
                    rc = vs_error_prefix(-EINVAL, "libvirt network XML: <range>");
                free(s);
                free(e);
            } else if (!strcmp((const char *)c->name, "host")) {
                char *mac = xml_prop(c, "mac"), *hip = xml_prop(c, "ip"),
                     *hname = xml_prop(c, "name");
                char *line =
                    vs_asprintf("%s %s %s", mac ? mac : "-", hip ? hip : "-", hname ? hname : "");
                rc = line ? vs_net_def_add_reservation(&def, line) : -ENOMEM;
                if (rc < 0)
                    rc = vs_error_prefix(rc, "libvirt network XML: <host>");
                free(line);
                free(mac);
                free(hip);
                free(hname);
            }
        }
        if (rc < 0)
            goto out;
        break; /* the first IPv4 <ip> only */
    }
    if (def.kind != VS_NET_NAT && def.prefix && !def.dhcp_first) {
        /* an isolated libvirt network with an address but no DHCP: keep the subnet, no gateway */
        def.gateway = 0;
    }
    rc = vs_net_def_validate(&def);
out:
    xmlFreeDoc(doc);
    if (rc < 0) {
        vs_net_def_free(&def);
        return rc;
    }
    *out = def;
    return 0;
}
