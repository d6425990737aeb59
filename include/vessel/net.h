/*
 * vessel/net.h — virtual networks: bridges, taps and VXLAN devices through netlink, MAC
 * addresses, network definitions kept under a state directory, NAT with nftables masquerade and a
 * supervised dnsmasq, per-tap anti-spoofing and rate limits.
 *
 * The idea: a network is a definition (a small `key = value` file, NAME.net, under the state
 * directory) plus runtime state (NAME.run/: the attached taps, the generated nftables ruleset,
 * dnsmasq's config, pid and leases). Every operation reads that state, changes the kernel, and
 * writes the state back, so the CLI today and the daemon later drive the same functions and
 * survive restarts of either. All functions return 0 or a negative errno with a one-line message
 * (vs_error_message) naming the network or device.
 */
#ifndef VESSEL_NET_H
#define VESSEL_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VS_NET_DEFAULT_STATE_DIR "/var/lib/vessel/net"
#define VS_NET_IFNAME_MAX        15 /* IFNAMSIZ - 1 */
#define VS_NET_NAME_MAX          32

/* ---- MAC addresses -----------------------------------------------------------------------------
 */

/* vessel's prefix: 52:56:65 ("R", "V", "e"): locally administered (0x02 set), unicast. */
#define VS_MAC_PREFIX0 0x52
#define VS_MAC_PREFIX1 0x56
#define VS_MAC_PREFIX2 0x65

struct vs_mac {
    uint8_t b[6];
};

/* "52:56:65:0a:0b:0c" (also '-' separators, any case). Rejects multicast and all-zero. */
int vs_mac_parse(const char *text, struct vs_mac *out);
/* Lower-case colon form; buf must hold 18 bytes. Returns buf. */
char *vs_mac_format(const struct vs_mac *mac, char *buf);
bool vs_mac_equal(const struct vs_mac *a, const struct vs_mac *b);
/* 0 when usable for a guest NIC, -EINVAL (message names the MAC) when multicast or zero. */
int vs_mac_validate(const struct vs_mac *mac);
/* The MAC the host side of a guest's tap gets: the guest MAC with first octet 0xfe, so the
 * bridge never mistakes the guest's address for one of its own ports (libvirt does the same). */
void vs_mac_tap_host(const struct vs_mac *guest, struct vs_mac *out);
/*
 * Allocate a random MAC under vessel's prefix that is not in taken[] and not used by any
 * interface of this host (nor as the host side of a tap). -EEXIST-free by construction; fails
 * only when the netlink dump fails or 64 draws all collide.
 */
int vs_mac_allocate(const struct vs_mac *taken, size_t n_taken, struct vs_mac *out);

/* ---- netlink (lib/net/netlink.c) --------------------------------------------------------------
 */

struct vs_link {
    char name[VS_NET_IFNAME_MAX + 1];
    int index;
    int master;    /* ifindex of the bridge it is enslaved to, 0 when none */
    char kind[16]; /* "bridge", "vxlan", "tun", "veth", … ("" for plain devices) */
    struct vs_mac mac;
    bool has_mac;
    bool up;      /* IFF_UP */
    bool carrier; /* IFLA_CARRIER: for a tap, a process (a VMM) holds it open */
    unsigned mtu;
    int vxlan_vni; /* -1 when not a vxlan device */
    uint64_t rx_packets, tx_packets;
};

/* Every link in the current network namespace. *out is malloc'd (free it). */
int vs_link_list(struct vs_link **out, size_t *count);
/* Look one up by name: 0, or -ENODEV (message names it). */
int vs_link_get(const char *name, struct vs_link *out);
bool vs_link_exists(const char *name);

int vs_bridge_create(const char *name, unsigned mtu);
/* Delete any link by name; -ENODEV when missing. */
int vs_link_delete(const char *name);
/* master: NULL = leave, "" = release. mtu: 0 = leave. up: -1 leave, 0 down, 1 up. */
int vs_link_set(const char *name, const char *master, unsigned mtu, int up);
int vs_link_set_mac(const char *name, const struct vs_mac *mac);
/* Add an IPv4 address (network byte order) with a prefix length. */
int vs_link_add_ipv4(const char *name, uint32_t addr, int prefix);

/* A persistent tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, TUNSETPERSIST) owned by uid/gid (-1: root),
 * with the given host-side MAC; -EEXIST when the name is taken. Left down and unattached. */
int vs_tap_create(const char *name, const struct vs_mac *host_mac, uid_t uid, gid_t gid);

struct vs_vxlan_config {
    const char *name;
    uint32_t vni;     /* 1 … 2^24-1 */
    uint32_t group;   /* multicast group (network order) or 0 */
    uint32_t local;   /* source address or 0 */
    const char *dev;  /* underlay device, or NULL */
    uint16_t dstport; /* 0 = 4789 */
    unsigned mtu;     /* 0 = kernel default */
};
/* -EEXIST with "VNI N is already used by DEV on this host" when another vxlan device has it. */
int vs_vxlan_create(const struct vs_vxlan_config *cfg);
/* Append an all-zero FDB entry so BUM traffic is flooded to a unicast peer (bridge fdb append). */
int vs_vxlan_add_peer(const char *name, uint32_t peer);

/* ---- network definitions ------------------------------------------------------------------------
 */

enum vs_net_kind {
    VS_NET_INTERNAL, /* a bridge with no uplink: guests only */
    VS_NET_BRIDGED,  /* an existing host bridge */
    VS_NET_NAT,      /* a bridge with a gateway address, masquerade and dnsmasq */
    VS_NET_VXLAN,    /* a bridge with a vxlan port: one L2 across hosts */
};

struct vs_net_reservation {
    struct vs_mac mac;
    uint32_t ip;    /* network order */
    char *hostname; /* may be NULL */
};

struct vs_net_def {
    char *name;
    enum vs_net_kind kind;
    char *bridge;                   /* bridge name (created unless kind is bridged) */
    unsigned mtu;                   /* 0 = default */
    uint32_t subnet, prefix;        /* network order address + prefix length; prefix 0 = none */
    uint32_t gateway;               /* NAT: the bridge's address (default: first host) */
    uint32_t dhcp_first, dhcp_last; /* 0 = no DHCP */
    uint32_t dns[4];
    size_t n_dns;
    unsigned lease_seconds; /* 0 = 3600 */
    struct vs_net_reservation *reservations;
    size_t n_reservations;
    uint32_t vni;      /* vxlan */
    uint32_t *remotes; /* vxlan unicast peers */
    size_t n_remotes;
    uint32_t group;   /* vxlan multicast group */
    uint32_t local;   /* vxlan source address */
    char *vxlan_dev;  /* vxlan underlay device */
    uint16_t dstport; /* vxlan UDP port (0 = 4789) */
};

const char *vs_net_kind_name(enum vs_net_kind kind);
int vs_net_kind_parse(const char *text, enum vs_net_kind *out);
void vs_net_def_free(struct vs_net_def *def);
/* Fill defaults (bridge name, gateway) and check the definition on its own. */
int vs_net_def_validate(struct vs_net_def *def);
/* The text format: parse (errors carry "FILE:LINE: key: …") and print (canonical). */
int vs_net_def_parse(const char *text, const char *origin, struct vs_net_def *out);
char *vs_net_def_print(const struct vs_net_def *def);
/* Set one key of the text format ("subnet", "dhcp-range", "remote", …; the CLI flags map onto
 * these). Lists ("remote", "reservation") append. Call vs_net_def_validate when done. */
int vs_net_def_set(struct vs_net_def *def, const char *key, const char *value);
/* "MAC IP [HOSTNAME]" */
int vs_net_def_add_reservation(struct vs_net_def *def, const char *text);
/* libvirt <network> XML (forward mode nat/bridge/none, bridge, mtu, ip + dhcp range/hosts). */
int vs_net_def_from_libvirt_xml(const char *xml, size_t len, struct vs_net_def *out);

/* IPv4 helpers. */
int vs_ipv4_parse(const char *text, uint32_t *out);                    /* network order */
int vs_cidr_parse(const char *text, uint32_t *addr, uint32_t *prefix); /* a.b.c.d/N */
const char *vs_ipv4_format(uint32_t addr, char buf[16]);

/* ---- the network store (state directory) ----------------------------------------------------- */

struct vs_net_tap {
    char name[VS_NET_IFNAME_MAX + 1];
    struct vs_mac mac;  /* the guest's MAC: the only source address allowed */
    uint32_t ip;        /* NAT: the guest's reserved address (0 = any) */
    unsigned rate_mbit; /* 0 = unlimited; both directions */
};

struct vs_net_status {
    bool started;
    bool bridge_present;
    int dnsmasq_pid; /* 0 = not running */
    struct vs_net_tap *taps;
    size_t n_taps;
};

struct vs_net_lease {
    int64_t expiry; /* unix time, 0 = infinite */
    struct vs_mac mac;
    uint32_t ip;
    char hostname[64];
};

/* state_dir NULL = VS_NET_DEFAULT_STATE_DIR. */
struct vs_net_store;
int vs_net_store_open(const char *state_dir, struct vs_net_store **out);
void vs_net_store_close(struct vs_net_store *store);

/* Store a new definition after checking it against the others (overlapping subnets or DHCP
 * ranges, VNI, bridge) and the host (a bridged network's bridge must exist). -EEXIST when
 * defined already. */
int vs_net_define(struct vs_net_store *store, struct vs_net_def *def);
/* Refused (-EBUSY) while started: stop it first. */
int vs_net_undefine(struct vs_net_store *store, const char *name);
int vs_net_get(struct vs_net_store *store, const char *name, struct vs_net_def *out);
/* Names of all defined networks, sorted. Free with vs_net_names_free. */
int vs_net_names(struct vs_net_store *store, char ***names, size_t *count);
void vs_net_names_free(char **names, size_t count);
int vs_net_status(struct vs_net_store *store, const char *name, struct vs_net_status *out);
void vs_net_status_free(struct vs_net_status *st);

/* Create the bridge (or check the host bridge), vxlan port, addresses, nftables tables and
 * dnsmasq. Starting a started network reconciles: anything missing (a dead dnsmasq, a deleted
 * bridge) is brought back. */
int vs_net_start(struct vs_net_store *store, const char *name);
/* Tear down what start made and delete the network's taps. -EBUSY when a tap is held open by a
 * process (a running VM) unless force, which deletes them anyway (the VM's NIC loses its link). */
int vs_net_stop(struct vs_net_store *store, const char *name, bool force);

struct vs_net_attach {
    const char *tap;          /* tap name (required) */
    const struct vs_mac *mac; /* NULL = allocate from vessel's prefix */
    uint32_t ip;              /* 0 = the reservation for the MAC, if any */
    unsigned rate_mbit;       /* 0 = unlimited */
    uid_t uid;                /* tap owner; (uid_t)-1 = root */
    gid_t gid;
};
/* Create a tap on the started network's bridge for `vessel-vmm --net tap=TAP,mac=MAC`, with the
 * anti-spoofing and rate rules. The MAC used is returned in *mac_out. -EEXIST on MAC collision
 * (with another tap of any network, a reservation of another network, or a host interface). */
int vs_net_attach_tap(struct vs_net_store *store, const char *name, const struct vs_net_attach *a,
                      struct vs_mac *mac_out);
int vs_net_detach_tap(struct vs_net_store *store, const char *name, const char *tap);

/* dnsmasq's leases of a NAT network (NAME.run/dnsmasq.leases). */
int vs_net_leases(struct vs_net_store *store, const char *name, struct vs_net_lease **out,
                  size_t *count);
/* Parse dnsmasq's leases format ("EXPIRY MAC IP HOSTNAME CLIENTID" lines). */
int vs_net_leases_parse(const char *text, struct vs_net_lease **out, size_t *count);

/*
 * dnsmasq's dhcp-script for a NAT network (`vessel net lease-event NAME ACTION MAC IP`): "add"
 * and "old" record that lease->mac holds lease->ip until lease->expiry (0 = infinite), "del"
 * forgets it, and the running set `leased` of table bridge vessel_NAME is brought in line, so
 * the guest may send IPv4 and ARP from that address only. Other actions are ignored. A lease
 * outside the network's subnet is refused (-EINVAL).
 */
int vs_net_lease_event(struct vs_net_store *store, const char *name, const char *action,
                       const struct vs_net_lease *lease);

/* Where things live (for tests and docs): "<dir>/<name>.run". Caller frees. */
char *vs_net_run_dir(struct vs_net_store *store, const char *name);

/* The generated nftables ruleset for a network and its taps (what start/attach load). leases:
 * the addresses dnsmasq leased (vs_net_lease_event's record), pre-loaded into the set of allowed
 * (MAC . IPv4) pairs next to the taps' given addresses and the reservations. */
char *vs_net_nft_ruleset(const struct vs_net_def *def, const struct vs_net_tap *taps, size_t n_taps,
                         const struct vs_net_lease *leases, size_t n_leases);
/* The generated dnsmasq configuration. */
char *vs_net_dnsmasq_config(const struct vs_net_def *def, const char *run_dir);

#endif
