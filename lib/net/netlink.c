/*
 * lib/net/netlink.c — bridges, taps and VXLAN devices through rtnetlink (libmnl), and a dump of
 * every link with the facts vessel decides by (kind, MAC, master, carrier, VNI, counters).
 *
 * The idea: one request at a time on a fresh NETLINK_ROUTE socket, always with NLM_F_ACK, so
 * every call gets the kernel's errno back and turns it into a message naming the device. Taps
 * are the exception: they are made with /dev/net/tun (TUNSETIFF + TUNSETPERSIST), then finished
 * (MAC, master, MTU, up) over netlink like any other link.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>

#include "vessel/net.h"
#include "vessel/util.h"

/* ---- one request, one ack ------------------------------------------------------------------- */

typedef int (*nl_data_cb)(const struct nlmsghdr *nlh, void *data);

/* Send nlh and run cb over every answer until the ack (or NLMSG_DONE for dumps). */
static int nl_request(struct nlmsghdr *nlh, nl_data_cb cb, void *data)
{
    struct mnl_socket *nl = mnl_socket_open(NETLINK_ROUTE);
    if (!nl)
        return vs_error_errno(-errno, "netlink socket");
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        int err = -errno;
        mnl_socket_close(nl);
        return vs_error_errno(err, "netlink bind");
    }
    unsigned portid = mnl_socket_get_portid(nl);
    uint32_t seq = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    nlh->nlmsg_seq = seq;
    nlh->nlmsg_flags |= NLM_F_ACK;
    int rc = 0;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
        rc = vs_error_errno(-errno, "netlink send");
        goto out;
    }
    size_t buf_size = MNL_SOCKET_BUFFER_SIZE * 4;
    char *buf = malloc(buf_size);
    if (!buf) {
        rc = vs_error(-ENOMEM, "netlink: out of memory");
        goto out;
    }
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(nl, buf, buf_size);
        if (n < 0) {
            rc = -errno;
            break;
        }
        int r = mnl_cb_run(buf, (size_t)n, seq, portid, (mnl_cb_t)cb, data);
        if (r == MNL_CB_ERROR) {
            rc = errno ? -errno : -EIO;
            break;
        }
        if (r == MNL_CB_STOP)
            break;
    }
    free(buf);
out:
    mnl_socket_close(nl);
    return rc;
}

/* ---- link dump ------------------------------------------------------------------------------- */

struct link_list {
    struct vs_link *items;
    size_t count, cap;
};

static int link_info_data_cb(const struct nlattr *attr, void *data)
{
    struct vs_link *l = data;
    if (mnl_attr_get_type(attr) == IFLA_VXLAN_ID && mnl_attr_validate(attr, MNL_TYPE_U32) >= 0)
        l->vxlan_vni = (int)mnl_attr_get_u32(attr);
    return MNL_CB_OK;
}

static int link_info_cb(const struct nlattr *attr, void *data)
{
    struct vs_link *l = data;
    switch (mnl_attr_get_type(attr)) {
    case IFLA_INFO_KIND:
        if (mnl_attr_validate(attr, MNL_TYPE_STRING) >= 0)
            snprintf(l->kind, sizeof(l->kind), "%s", mnl_attr_get_str(attr));
        break;
    case IFLA_INFO_DATA:
        if (!strcmp(l->kind, "vxlan"))
            mnl_attr_parse_nested(attr, link_info_data_cb, l);
        break;
    }
    return MNL_CB_OK;
}

static int link_attr_cb(const struct nlattr *attr, void *data)
{
    struct vs_link *l = data;
    switch (mnl_attr_get_type(attr)) {
    case IFLA_IFNAME:
        if (mnl_attr_validate(attr, MNL_TYPE_STRING) >= 0)
            snprintf(l->name, sizeof(l->name), "%s", mnl_attr_get_str(attr));
        break;
    case IFLA_ADDRESS:
        if (mnl_attr_get_payload_len(attr) == 6) {
            memcpy(l->mac.b, mnl_attr_get_payload(attr), 6);
            l->has_mac = true;
        }
        break;
    case IFLA_MASTER:
        if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0)
            l->master = (int)mnl_attr_get_u32(attr);
        break;
    case IFLA_MTU:
        if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0)
            l->mtu = mnl_attr_get_u32(attr);
        break;
    case IFLA_CARRIER:
        if (mnl_attr_validate(attr, MNL_TYPE_U8) >= 0)
            l->carrier = mnl_attr_get_u8(attr) != 0;
        break;
    case IFLA_STATS64:
        if (mnl_attr_get_payload_len(attr) >= sizeof(struct rtnl_link_stats64)) {
            struct rtnl_link_stats64 s;
            memcpy(&s, mnl_attr_get_payload(attr), sizeof(s));
            l->rx_packets = s.rx_packets;
            l->tx_packets = s.tx_packets;
        }
        break;
    case IFLA_LINKINFO:
        mnl_attr_parse_nested(attr, link_info_cb, l);
        break;
    }
    return MNL_CB_OK;
}

static int link_dump_cb(const struct nlmsghdr *nlh, void *data)
{
    struct link_list *list = data;
    if (nlh->nlmsg_type != RTM_NEWLINK)
        return MNL_CB_OK;
    const struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    struct vs_link l = {.index = ifm->ifi_index, .vxlan_vni = -1};
    l.up = (ifm->ifi_flags & IFF_UP) != 0;
    mnl_attr_parse(nlh, sizeof(*ifm), link_attr_cb, &l);
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 16;
        struct vs_link *n = realloc(list->items, cap * sizeof(*n));
        if (!n)
            return MNL_CB_ERROR;
        list->items = n;
        list->cap = cap;
    }
    list->items[list->count++] = l;
    return MNL_CB_OK;
}

int vs_link_list(struct vs_link **out, size_t *count)
{
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_GETLINK;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
    ifm->ifi_family = AF_UNSPEC;
    struct link_list list = {0};
    int rc = nl_request(nlh, link_dump_cb, &list);
    if (rc < 0) {
        free(list.items);
        return vs_error_errno(rc, "listing network interfaces");
    }
    *out = list.items;
    *count = list.count;
    return 0;
}

int vs_link_get(const char *name, struct vs_link *out)
{
    struct vs_link *links;
    size_t n;
    int rc = vs_link_list(&links, &n);
    if (rc < 0)
        return rc;
    rc = vs_error(-ENODEV, "%s: no such network interface", name);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(links[i].name, name)) {
            *out = links[i];
            vs_error_clear();
            rc = 0;
            break;
        }
    }
    free(links);
    return rc;
}

bool vs_link_exists(const char *name)
{
    return if_nametoindex(name) != 0;
}

/* ---- changes --------------------------------------------------------------------------------- */

static int check_ifname(const char *name)
{
    if (!name || !name[0] || strlen(name) > VS_NET_IFNAME_MAX || strchr(name, '/') ||
        strchr(name, ' ') || strchr(name, ':'))
        return vs_error(-EINVAL,
                        "'%s': not a valid interface name (1-%d characters, no '/', ':' "
                        "or spaces)",
                        name ? name : "", VS_NET_IFNAME_MAX);
    return 0;
}

static struct nlmsghdr *newlink_header(char *buf, uint16_t flags, int index)
{
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWLINK;
    nlh->nlmsg_flags = NLM_F_REQUEST | flags;
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
    ifm->ifi_family = AF_UNSPEC;
    ifm->ifi_index = index;
    return nlh;
}

/* vessel's bridges and taps carry guests' traffic only: without this the host gives them IPv6
 * link-local addresses and sends router solicitations and MLD reports into guest networks (an
 * isolated network would see the host's frames). A kernel without IPv6 has no such file. */
static int link_disable_ipv6(const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : vs_error_errno(-errno, "%s: cannot open %s", name, path);
    int rc = write(fd, "1", 1) == 1 ? 0 : vs_error_errno(-errno, "%s: cannot write %s", name, path);
    close(fd);
    return rc;
}

int vs_bridge_create(const char *name, unsigned mtu)
{
    int rc = check_ifname(name);
    if (rc < 0)
        return rc;
    if (vs_link_exists(name))
        return vs_error(-EEXIST, "bridge %s: the name is already used by another interface", name);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = newlink_header(buf, NLM_F_CREATE | NLM_F_EXCL, 0);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    if (mtu)
        mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
    struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
    mnl_attr_nest_end(nlh, info);
    rc = nl_request(nlh, NULL, NULL);
    if (rc < 0)
        return vs_error_errno(rc, "bridge %s: cannot create", name);
    rc = link_disable_ipv6(name);
    if (rc < 0)
        vs_link_delete(name);
    return rc;
}

int vs_link_delete(const char *name)
{
    unsigned index = if_nametoindex(name);
    if (!index)
        return vs_error(-ENODEV, "%s: no such network interface", name);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_DELLINK;
    nlh->nlmsg_flags = NLM_F_REQUEST;
    struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
    ifm->ifi_family = AF_UNSPEC;
    ifm->ifi_index = (int)index;
    int rc = nl_request(nlh, NULL, NULL);
    if (rc < 0)
        return vs_error_errno(rc, "%s: cannot delete", name);
    return 0;
}

int vs_link_set(const char *name, const char *master, unsigned mtu, int up)
{
    unsigned index = if_nametoindex(name);
    if (!index)
        return vs_error(-ENODEV, "%s: no such network interface", name);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = newlink_header(buf, 0, (int)index);
    struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
    if (master) {
        unsigned m = 0;
        if (master[0]) {
            m = if_nametoindex(master);
            if (!m)
                return vs_error(-ENODEV, "%s: bridge %s does not exist", name, master);
        }
        mnl_attr_put_u32(nlh, IFLA_MASTER, m);
    }
    if (mtu)
        mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
    if (up >= 0) {
        ifm->ifi_change = IFF_UP;
        ifm->ifi_flags = up ? IFF_UP : 0;
    }
    int rc = nl_request(nlh, NULL, NULL);
    if (rc < 0)
        return vs_error_errno(rc, "%s: cannot set%s%s%s%s", name, master ? " master " : "",
                              master ? master : "", mtu ? " mtu" : "",
                              up >= 0 ? (up ? " up" : " down") : "");
    return 0;
}

int vs_link_set_mac(const char *name, const struct vs_mac *mac)
{
    unsigned index = if_nametoindex(name);
    if (!index)
        return vs_error(-ENODEV, "%s: no such network interface", name);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = newlink_header(buf, 0, (int)index);
    mnl_attr_put(nlh, IFLA_ADDRESS, 6, mac->b);
    int rc = nl_request(nlh, NULL, NULL);
    if (rc < 0)
        return vs_error_errno(rc, "%s: cannot set its MAC address", name);
    return 0;
}

int vs_link_add_ipv4(const char *name, uint32_t addr, int prefix)
{
    unsigned index = if_nametoindex(name);
    if (!index)
        return vs_error(-ENODEV, "%s: no such network interface", name);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWADDR;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE;
    struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
    ifa->ifa_family = AF_INET;
    ifa->ifa_prefixlen = (uint8_t)prefix;
    ifa->ifa_scope = RT_SCOPE_UNIVERSE;
    ifa->ifa_index = index;
    mnl_attr_put_u32(nlh, IFA_LOCAL, addr);
    mnl_attr_put_u32(nlh, IFA_ADDRESS, addr);
    if (prefix < 31) {
        uint32_t mask = prefix ? htonl(~0u << (32 - prefix)) : 0;
        mnl_attr_put_u32(nlh, IFA_BROADCAST, addr | ~mask);
    }
    int rc = nl_request(nlh, NULL, NULL);
    if (rc < 0) {
        char a[16];
        return vs_error_errno(rc, "%s: cannot add address %s/%d", name, vs_ipv4_format(addr, a),
                              prefix);
    }
    return 0;
}

/* ---- taps ------------------------------------------------------------------------------------ */

int vs_tap_create(const char *name, const struct vs_mac *host_mac, uid_t uid, gid_t gid)
{
    int rc = check_ifname(name);
    if (rc < 0)
        return rc;
    /* TUNSETIFF on an existing tap would attach to it instead of failing: check first. */
    if (vs_link_exists(name))
        return vs_error(-EEXIST, "tap %s: the name is already used by another interface", name);
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "tap %s: cannot open /dev/net/tun", name);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        rc = vs_error_errno(-errno, "tap %s: cannot create (TUNSETIFF)", name);
        goto out;
    }
    if (uid != (uid_t)-1 && ioctl(fd, TUNSETOWNER, (unsigned long)uid) < 0) {
        rc = vs_error_errno(-errno, "tap %s: cannot set owner %u", name, (unsigned)uid);
        goto undo;
    }
    if (gid != (gid_t)-1 && ioctl(fd, TUNSETGROUP, (unsigned long)gid) < 0) {
        rc = vs_error_errno(-errno, "tap %s: cannot set group %u", name, (unsigned)gid);
        goto undo;
    }
    if (ioctl(fd, TUNSETPERSIST, 1UL) < 0) {
        rc = vs_error_errno(-errno, "tap %s: cannot make persistent", name);
        goto out;
    }
    close(fd);
    fd = -1;
    if ((rc = link_disable_ipv6(name)) < 0) {
        int saved = rc;
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", vs_error_message());
        vs_link_delete(name);
        return vs_error(saved, "%s", msg);
    }
    if (host_mac) {
        rc = vs_link_set_mac(name, host_mac);
        if (rc < 0) {
            int saved = rc;
            char msg[256];
            snprintf(msg, sizeof(msg), "%s", vs_error_message());
            vs_link_delete(name);
            return vs_error(saved, "%s", msg);
        }
    }
    return 0;
undo:
    ioctl(fd, TUNSETPERSIST, 0UL);
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ---- vxlan ----------------------------------------------------------------------------------- */

int vs_vxlan_create(const struct vs_vxlan_config *cfg)
{
    int rc = check_ifname(cfg->name);
    if (rc < 0)
        return rc;
    if (cfg->vni == 0 || cfg->vni > 0xffffff)
        return vs_error(-EINVAL, "vxlan %s: VNI %u out of range (1-16777215)", cfg->name, cfg->vni);
    struct vs_link *links;
    size_t n;
    rc = vs_link_list(&links, &n);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (links[i].vxlan_vni == (int)cfg->vni) {
            rc = vs_error(-EEXIST, "vxlan %s: VNI %u is already used by %s on this host", cfg->name,
                          cfg->vni, links[i].name);
            break;
        }
        if (!strcmp(links[i].name, cfg->name)) {
            rc = vs_error(-EEXIST, "vxlan %s: the name is already used by another interface",
                          cfg->name);
            break;
        }
    }
    free(links);
    if (rc < 0)
        return rc;
    unsigned dev_index = 0;
    if (cfg->dev && cfg->dev[0]) {
        dev_index = if_nametoindex(cfg->dev);
        if (!dev_index)
            return vs_error(-ENODEV, "vxlan %s: underlay device %s does not exist", cfg->name,
                            cfg->dev);
    }
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = newlink_header(buf, NLM_F_CREATE | NLM_F_EXCL, 0);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, cfg->name);
    if (cfg->mtu)
        mnl_attr_put_u32(nlh, IFLA_MTU, cfg->mtu);
    struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "vxlan");
    struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
    mnl_attr_put_u32(nlh, IFLA_VXLAN_ID, cfg->vni);
    if (cfg->group)
        mnl_attr_put_u32(nlh, IFLA_VXLAN_GROUP, cfg->group);
    if (cfg->local)
        mnl_attr_put_u32(nlh, IFLA_VXLAN_LOCAL, cfg->local);
    if (dev_index)
        mnl_attr_put_u32(nlh, IFLA_VXLAN_LINK, dev_index);
    mnl_attr_put_u16(nlh, IFLA_VXLAN_PORT, htons(cfg->dstport ? cfg->dstport : 4789));
    mnl_attr_put_u8(nlh, IFLA_VXLAN_LEARNING, 1);
    mnl_attr_nest_end(nlh, data);
    mnl_attr_nest_end(nlh, info);
    rc = nl_request(nlh, NULL, NULL);
    if (rc == -EEXIST)
        return vs_error(rc, "vxlan %s: VNI %u is already in use on this host (same VNI and port)",
                        cfg->name, cfg->vni);
    if (rc < 0)
        return vs_error_errno(rc, "vxlan %s: cannot create (VNI %u)", cfg->name, cfg->vni);
    return 0;
}

int vs_vxlan_add_peer(const char *name, uint32_t peer)
{
    unsigned index = if_nametoindex(name);
    if (!index)
        return vs_error(-ENODEV, "%s: no such network interface", name);
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = RTM_NEWNEIGH;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND;
    struct ndmsg *ndm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ndm));
    ndm->ndm_family = AF_BRIDGE;
    ndm->ndm_ifindex = (int)index;
    ndm->ndm_state = NUD_PERMANENT | NUD_NOARP;
    ndm->ndm_flags = NTF_SELF;
    static const uint8_t zero[6];
    mnl_attr_put(nlh, NDA_LLADDR, 6, zero);
    mnl_attr_put_u32(nlh, NDA_DST, peer);
    int rc = nl_request(nlh, NULL, NULL);
    if (rc < 0) {
        char a[16];
        return vs_error_errno(rc, "vxlan %s: cannot add peer %s", name, vs_ipv4_format(peer, a));
    }
    return 0;
}
