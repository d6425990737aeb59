/*
 * dhcp.c — a minimal DHCP client (RFC 2131) on the first virtio-net NIC: DISCOVER, OFFER,
 * REQUEST, ACK in raw Ethernet/IPv4/UDP frames, then `PROBE result dhcp.address=…` and friends.
 *
 * The one idea: the probe has no IP stack, so it builds whole frames by hand and treats every
 * received frame as hostile bytes — each header length is checked against what arrived before it
 * is used, the IPv4 and (when present) UDP checksums must hold, and the options walk never reads
 * past the end of the UDP payload. Anything that does not fit is dropped, never half-parsed.
 * Retransmits back off 1, 2, 4, 4… s (probe.dhcp.retry_ms) until probe.dhcp.timeout_ms.
 */
#include "probe.h"

#define ETH_HDR       14
#define IP_HDR        20
#define UDP_HDR       8
#define BOOTP_FIXED   236 /* op … file, before the magic cookie */
#define DHCP_MAGIC    0x63825363u
#define FRAME_CAP     1514
#define CLIENT_PORT   68
#define SERVER_PORT   67
#define OPTIONS_SPACE 312 /* what we send: the classic minimum BOOTP message is 300 bytes */

enum {
    OPT_PAD = 0,
    OPT_SUBNET = 1,
    OPT_ROUTER = 3,
    OPT_DNS = 6,
    OPT_REQUESTED_IP = 50,
    OPT_LEASE = 51,
    OPT_MSG_TYPE = 53,
    OPT_SERVER_ID = 54,
    OPT_PARAM_LIST = 55,
    OPT_END = 255,
};
enum { DHCPDISCOVER = 1, DHCPOFFER = 2, DHCPREQUEST = 3, DHCPACK = 5, DHCPNAK = 6 };

/* What one server message said; zero means "absent". */
struct dhcp_reply {
    u8 type;
    u32 yiaddr, server_id, router, netmask, dns, lease_s;
};

static u16 get16(const u8 *p)
{
    return (u16)(p[0] << 8 | p[1]);
}
static u32 get32(const u8 *p)
{
    return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3];
}
static void put16(u8 *p, u16 v)
{
    p[0] = (u8)(v >> 8);
    p[1] = (u8)v;
}
static void put32(u8 *p, u32 v)
{
    put16(p, (u16)(v >> 16));
    put16(p + 2, (u16)v);
}

/* The Internet checksum's one's-complement sum over n bytes, folded at the end. */
static u32 csum_add(u32 sum, const u8 *p, u32 n)
{
    for (u32 i = 0; i + 1 < n; i += 2)
        sum += get16(p + i);
    if (n & 1)
        sum += (u32)p[n - 1] << 8;
    return sum;
}
static u16 csum_fold(u32 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

/* Build a client message (type DISCOVER or REQUEST) into frame; returns its length. */
static u32 dhcp_build(u8 *frame, const u8 *mac, u32 xid, u16 secs, u8 type, u32 requested,
                      u32 server_id)
{
    u32 udp_len = UDP_HDR + BOOTP_FIXED + 4 + OPTIONS_SPACE;
    u32 ip_len = IP_HDR + udp_len;
    memset(frame, 0, ETH_HDR + ip_len);
    memset(frame, 0xff, 6); /* to everyone: we have no address yet */
    memcpy(frame + 6, mac, 6);
    put16(frame + 12, 0x0800);
    u8 *ip = frame + ETH_HDR;
    ip[0] = 0x45;
    put16(ip + 2, (u16)ip_len);
    put16(ip + 4, (u16)xid);
    ip[8] = 64;
    ip[9] = 17;
    put32(ip + 12, 0);           /* 0.0.0.0 */
    put32(ip + 16, 0xffffffffu); /* 255.255.255.255 */
    put16(ip + 10, csum_fold(csum_add(0, ip, IP_HDR)));
    u8 *udp = ip + IP_HDR;
    put16(udp, CLIENT_PORT);
    put16(udp + 2, SERVER_PORT);
    put16(udp + 4, (u16)udp_len);
    u8 *b = udp + UDP_HDR;
    b[0] = 1; /* BOOTREQUEST */
    b[1] = 1; /* Ethernet */
    b[2] = 6;
    put32(b + 4, xid);
    put16(b + 8, secs);
    put16(b + 10, 0x8000); /* broadcast replies: we cannot answer ARP for an unbound address */
    memcpy(b + 28, mac, 6);
    put32(b + BOOTP_FIXED, DHCP_MAGIC);
    u8 *o = b + BOOTP_FIXED + 4;
    *o++ = OPT_MSG_TYPE;
    *o++ = 1;
    *o++ = type;
    if (requested) {
        *o++ = OPT_REQUESTED_IP;
        *o++ = 4;
        put32(o, requested);
        o += 4;
    }
    if (server_id) {
        *o++ = OPT_SERVER_ID;
        *o++ = 4;
        put32(o, server_id);
        o += 4;
    }
    static const u8 params[] = {OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_LEASE, OPT_SERVER_ID};
    *o++ = OPT_PARAM_LIST;
    *o++ = sizeof(params);
    memcpy(o, params, sizeof(params));
    o += sizeof(params);
    *o = OPT_END; /* the rest is pad (0) */
    /* UDP checksum over the pseudo header (src, dst, proto, length) and the datagram */
    u32 sum = csum_add(0, ip + 12, 8) + 17 + udp_len;
    u16 c = csum_fold(csum_add(sum, udp, udp_len));
    put16(udp + 6, c ? c : 0xffff);
    return ETH_HDR + ip_len;
}

/* Read a 4-byte address option; false when the length is wrong. */
static bool opt_addr(const u8 *v, u32 len, u32 *out)
{
    if (len < 4 || len % 4)
        return false;
    *out = get32(v); /* the first one of a list */
    return true;
}

/* Validate one received frame and parse it as a reply to `xid` for `mac`. false = not ours or
 * malformed. `len` is what the device said arrived; nothing beyond it is read. */
static bool dhcp_parse(const u8 *f, u32 len, const u8 *mac, u32 xid, struct dhcp_reply *r)
{
    memset(r, 0, sizeof(*r));
    if (len < ETH_HDR + IP_HDR || get16(f + 12) != 0x0800)
        return false;
    const u8 *ip = f + ETH_HDR;
    u32 avail = len - ETH_HDR;
    u32 ihl = (u32)(ip[0] & 0xf) * 4;
    u32 total = get16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < IP_HDR || total < ihl || total > avail)
        return false;
    if (csum_fold(csum_add(0, ip, ihl)) != 0) /* a correct header sums to 0xffff */
        return false;
    if ((get16(ip + 6) & 0x3fff) != 0 || ip[9] != 17) /* fragments, or not UDP */
        return false;
    const u8 *udp = ip + ihl;
    u32 udp_avail = total - ihl;
    if (udp_avail < UDP_HDR)
        return false;
    u32 udp_len = get16(udp + 4);
    if (get16(udp) != SERVER_PORT || get16(udp + 2) != CLIENT_PORT || udp_len < UDP_HDR ||
        udp_len > udp_avail)
        return false;
    if (get16(udp + 6)) { /* 0 = sender did not compute one */
        u32 sum = csum_add(0, ip + 12, 8) + 17 + udp_len;
        if (csum_fold(csum_add(sum, udp, udp_len)) != 0)
            return false;
    }
    const u8 *b = udp + UDP_HDR;
    u32 blen = udp_len - UDP_HDR;
    if (blen < BOOTP_FIXED + 4 || b[0] != 2 || b[1] != 1 || b[2] != 6 || get32(b + 4) != xid ||
        memcmp(b + 28, mac, 6) || get32(b + BOOTP_FIXED) != DHCP_MAGIC)
        return false;
    r->yiaddr = get32(b + 16);
    /* options: code, length, value — every length checked against what is left */
    const u8 *o = b + BOOTP_FIXED + 4, *end = b + blen;
    while (o < end) {
        u8 code = *o++;
        if (code == OPT_PAD)
            continue;
        if (code == OPT_END)
            break;
        if (o >= end)
            return false;
        u32 olen = *o++;
        if (olen > (u32)(end - o))
            return false;
        switch (code) {
        case OPT_MSG_TYPE:
            if (olen != 1)
                return false;
            r->type = o[0];
            break;
        case OPT_SERVER_ID:
            if (!opt_addr(o, olen, &r->server_id))
                return false;
            break;
        case OPT_ROUTER:
            if (!opt_addr(o, olen, &r->router))
                return false;
            break;
        case OPT_DNS:
            if (!opt_addr(o, olen, &r->dns))
                return false;
            break;
        case OPT_SUBNET:
            if (olen != 4)
                return false;
            r->netmask = get32(o);
            break;
        case OPT_LEASE:
            if (olen != 4)
                return false;
            r->lease_s = get32(o);
            break;
        default: /* not asked for: skip */
            break;
        }
        o += olen;
    }
    if (r->type != DHCPOFFER && r->type != DHCPACK && r->type != DHCPNAK)
        return false;
    if (!r->server_id) /* RFC 2131 makes it mandatory in OFFER, ACK and NAK */
        return false;
    if (r->type != DHCPNAK) {
        u32 a = r->yiaddr;
        if (!a || a == 0xffffffffu || (a >> 28) >= 14 || (a >> 24) == 127 || (a >> 24) == 0)
            return false; /* no usable unicast address on offer */
    }
    return true;
}

/* "a.b.c.d" at *s up to a ',' or the end; advances *s past it. */
static bool parse_ipv4(const char **s, u32 *out)
{
    u32 a = 0;
    const char *p = *s;
    for (int i = 0; i < 4; i++) {
        u64 part;
        const char *end;
        if (!parse_u64(p, &end, &part) || part > 255 || end == p || (i < 3 && *end != '.'))
            return false;
        a = a << 8 | (u32)part;
        p = i < 3 ? end + 1 : end;
    }
    if (*p && *p != ',')
        return false;
    *s = p;
    *out = a;
    return true;
}

/* A UDP datagram to the router's discard port from `src` (any address: the point is to test
 * the host's anti-spoofing), to the broadcast MAC so no ARP is needed. */
static u32 udp_build(u8 *frame, const u8 *mac, u32 src, u32 dst, u16 id)
{
    static const char payload[] = "VPRB spoof test";
    u32 udp_len = UDP_HDR + sizeof(payload), ip_len = IP_HDR + udp_len;
    memset(frame, 0, ETH_HDR + ip_len);
    memset(frame, 0xff, 6);
    memcpy(frame + 6, mac, 6);
    put16(frame + 12, 0x0800);
    u8 *ip = frame + ETH_HDR;
    ip[0] = 0x45;
    put16(ip + 2, (u16)ip_len);
    put16(ip + 4, id);
    ip[8] = 64;
    ip[9] = 17;
    put32(ip + 12, src);
    put32(ip + 16, dst);
    put16(ip + 10, csum_fold(csum_add(0, ip, IP_HDR)));
    u8 *udp = ip + IP_HDR;
    put16(udp, 40000);
    put16(udp + 2, 9);
    put16(udp + 4, (u16)udp_len);
    memcpy(udp + UDP_HDR, payload, sizeof(payload));
    u32 sum = csum_add(0, ip + 12, 8) + 17 + udp_len;
    u16 c = csum_fold(csum_add(sum, udp, udp_len));
    put16(udp + 6, c ? c : 0xffff);
    return ETH_HDR + ip_len;
}

/* A gratuitous ARP request: "src is at mac", sender and target IP both src. */
static u32 arp_build(u8 *frame, const u8 *mac, u32 src)
{
    memset(frame, 0, 60);
    memset(frame, 0xff, 6);
    memcpy(frame + 6, mac, 6);
    put16(frame + 12, 0x0806);
    u8 *a = frame + ETH_HDR;
    put16(a, 1);          /* Ethernet */
    put16(a + 2, 0x0800); /* IPv4 */
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, 1); /* request */
    memcpy(a + 8, mac, 6);
    put32(a + 14, src);
    put32(a + 24, src);
    return 60;
}

/*
 * probe.dhcp.send_from=IP[,IP…] ("lease" = the address just leased): after the ACK, send
 * probe.dhcp.send_count rounds, probe.dhcp.send_gap_ms apart, of one UDP datagram to the router
 * (else the server) port 9 and one gratuitous ARP from each address. The host counts what got
 * through; the probe only reports what it sent (dhcp.sent).
 */
static int dhcp_send_from(const u8 *mac, u32 lease, u32 router)
{
    const char *list = param_str("probe.dhcp.send_from", NULL);
    if (!list)
        return 0;
    u64 count = param_u64("probe.dhcp.send_count", 5);
    u64 gap_ms = param_u64("probe.dhcp.send_gap_ms", 100);
    static u8 frame[FRAME_CAP];
    u64 sent = 0;
    for (u64 round = 0; round < count; round++) {
        const char *s = list;
        while (*s) {
            u32 src;
            if (!strncmp(s, "lease", 5) && (s[5] == ',' || !s[5])) {
                src = lease;
                s += 5;
            } else if (!parse_ipv4(&s, &src)) {
                return test_error("dhcp: probe.dhcp.send_from '%s': not IPv4 addresses", list);
            }
            if (*s == ',')
                s++;
            u32 n = udp_build(frame, mac, src, router, (u16)(sent + 1));
            if (net_raw_send(frame, n) < 0)
                return test_error("dhcp: cannot queue a frame");
            n = arp_build(frame, mac, src);
            if (net_raw_send(frame, n) < 0)
                return test_error("dhcp: cannot queue a frame");
            sent += 2;
        }
        u64 until = rdtsc() + us_to_cycles(gap_ms * 1000);
        while (rdtsc() < until)
            net_raw_recv(frame, 0, NULL); /* keep the receive ring moving */
    }
    result("dhcp", "sent", "%llu", (unsigned long long)sent);
    return 0;
}

static void put_ip(const char *key, u32 a)
{
    result("dhcp", key, "%u.%u.%u.%u", a >> 24, (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
}

int dhcp_run(void)
{
    static u8 tx[FRAME_CAP], rx[FRAME_CAP];
    const u8 *mac;
    net_raw_recv(rx, 0, &mac); /* learn the MAC (and drop anything queued before we start) */
    u64 timeout_ms = param_u64("probe.dhcp.timeout_ms", 30000);
    u64 retry_ms = param_u64("probe.dhcp.retry_ms", 1000);
    if (!retry_ms)
        retry_ms = 1;
    u64 seed = rdtsc() ^ ((u64)get32(mac + 2) << 16);
    u32 xid = (u32)mix64(seed);
    u64 t0 = rdtsc(), deadline = t0 + us_to_cycles(timeout_ms * 1000);
    u8 state = DHCPDISCOVER;
    u32 offered = 0, server = 0;
    u64 sends = 0, dropped = 0, naks = 0;
    struct dhcp_reply r;
    for (;;) {
        u64 now = rdtsc();
        if (now >= deadline)
            break;
        u16 secs = (u16)(cycles_to_us(now - t0) / 1000000);
        u32 n = dhcp_build(tx, mac, xid, secs, state, state == DHCPREQUEST ? offered : 0,
                           state == DHCPREQUEST ? server : 0);
        if (net_raw_send(tx, n) < 0)
            return test_error("dhcp: cannot queue a frame");
        sends++;
        u64 wait_ms = retry_ms << (sends - 1 < 2 ? sends - 1 : 2); /* 1×, 2×, then 4× */
        u64 until = now + us_to_cycles(wait_ms * 1000);
        if (until > deadline)
            until = deadline;
        bool advanced = false;
        while (!advanced && rdtsc() < until) {
            u32 got = net_raw_recv(rx, sizeof(rx), NULL);
            if (!got) {
                cpu_relax();
                continue;
            }
            if (!dhcp_parse(rx, got, mac, xid, &r)) {
                dropped++;
                continue;
            }
            if (state == DHCPDISCOVER && r.type == DHCPOFFER) {
                offered = r.yiaddr;
                server = r.server_id;
                state = DHCPREQUEST;
                sends = 0;
                advanced = true;
            } else if (state == DHCPREQUEST && r.server_id == server && r.type == DHCPNAK) {
                naks++; /* start over with a new transaction */
                state = DHCPDISCOVER;
                xid++;
                sends = 0;
                advanced = true;
            } else if (state == DHCPREQUEST && r.server_id == server && r.type == DHCPACK &&
                       r.yiaddr == offered) {
                u64 us = cycles_to_us(rdtsc() - t0);
                put_ip("address", r.yiaddr);
                if (r.netmask)
                    put_ip("netmask", r.netmask);
                if (r.router)
                    put_ip("router", r.router);
                if (r.dns)
                    put_ip("dns", r.dns);
                put_ip("server", r.server_id);
                result("dhcp", "lease", "%u", r.lease_s);
                result("dhcp", "us", "%llu", (unsigned long long)us);
                result("dhcp", "dropped", "%llu", (unsigned long long)dropped);
                return dhcp_send_from(mac, r.yiaddr, r.router ? r.router : r.server_id);
            } else {
                dropped++;
            }
        }
    }
    result("dhcp", "dropped", "%llu", (unsigned long long)dropped);
    return test_error("dhcp: no %s within %llu ms (%llu NAKs)",
                      state == DHCPDISCOVER ? "offer" : "ack", (unsigned long long)timeout_ms,
                      (unsigned long long)naks);
}
