#!/bin/bash
# tests/integration/net-nat.sh — a NAT network in a private netns "host": start brings up the
# bridge with the gateway address, vessel's own nftables table (masquerade) and a dnsmasq for the
# DHCP range; a DHCP client (busybox udhcpc) in a second netns, wired to the bridge by a veth,
# gets an address from the range and the lease shows in `vessel net leases`; a reservation by
# MAC gets its fixed address; dnsmasq's dhcp-script puts each lease into vessel's anti-spoofing
# set; stop takes dnsmasq and the tables down.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/net-common.bash"


command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || { skip "dnsmasq is not installed"; finish; }
BUSYBOX=$(command -v busybox || true)
NSC=vnet-$$-c
cleanup_nat() {
    ip netns pids "$NSC" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NSC" 2>/dev/null || true
    cleanup_ns
}
trap cleanup_nat EXIT

nv_ok "define nat network wan (10.77.0.0/24, DHCP .100-.150, a reservation)" define wan --kind nat \
    --subnet 10.77.0.0/24 --dhcp-range 10.77.0.100-10.77.0.150 --dns 10.77.0.1 --lease-time 600 \
    --reserve 52:56:65:00:40:09,10.77.0.9,fixed
nv_ok "start wan" start wan
if ip netns exec "$NS" ip -4 addr show vs-wan | has "inet 10.77.0.1/24"; then
    ok "bridge vs-wan has the gateway 10.77.0.1/24"
else
    not_ok "gateway address on vs-wan"
fi
if ip netns exec "$NS" nft list table ip vessel_wan | has "ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade"; then
    ok "nftables table ip vessel_wan masquerades 10.77.0.0/24"
else
    not_ok "masquerade table"
fi
pid=$(cat "$STATE/wan.run/dnsmasq.pid" 2>/dev/null || echo 0)
if [ "$pid" -gt 0 ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = dnsmasq ] &&
    ip netns pids "$NS" | has -x "$pid" &&
    has "^dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,600$" "$STATE/wan.run/dnsmasq.conf" &&
    has "^dhcp-host=52:56:65:00:40:09,10.77.0.9,fixed$" "$STATE/wan.run/dnsmasq.conf"; then
    ok "dnsmasq (pid $pid) runs in the netns with the range, lease time and reservation"
else
    not_ok "dnsmasq running with the network's config (pid '$pid')"
    diag 20 <"$STATE/wan.run/dnsmasq.conf" || true
fi
nv info wan --json
if grep -q '"dnsmasq_pid":' "$VS_OUT" && grep -q '"started":true' "$VS_OUT"; then
    ok "info --json reports the network started with its dnsmasq"
else
    not_ok "info --json"
fi

# a DHCP client on the bridge: a veth whose far end is in its own netns
if [ -n "$BUSYBOX" ]; then
    ip netns add "$NSC"
    ip link add "dc$$" netns "$NS" type veth peer name eth0 netns "$NSC"
    ip -n "$NS" link set "dc$$" master vs-wan
    ip -n "$NS" link set "dc$$" up
    ip -n "$NSC" link set eth0 address 52:56:65:00:40:77
    ip -n "$NSC" link set eth0 up
    ip -n "$NSC" link set lo up
    rc=0
    timeout 30 ip netns exec "$NSC" "$BUSYBOX" udhcpc -i eth0 -n -q -t 6 -T 1 -s /bin/true \
        >"$T/udhcpc.out" 2>&1 || rc=$?
    addr=$(sed -n 's/.*lease of \([0-9.]*\) obtained.*/\1/p' "$T/udhcpc.out" | tail -1)
    case $addr in
    10.77.0.1[0-4][0-9] | 10.77.0.150) ok "a DHCP client got $addr from dnsmasq (inside the range)" ;;
    *)
        not_ok "DHCP lease from the range (udhcpc exit $rc, got '$addr')"
        diag 10 <"$T/udhcpc.out"
        ;;
    esac
    sleep 0.3
    nv leases wan
    if [ "$VS_RC" -eq 0 ] && grep -q "^52:56:65:00:40:77 *$addr " "$VS_OUT"; then
        ok "vessel net leases lists 52:56:65:00:40:77 -> $addr"
    else
        not_ok "leases lists the client"
        diag 5 <"$VS_OUT"
    fi
    # dnsmasq's dhcp-script told vessel: the pair is in the anti-spoofing set
    in_set=no
    for _ in $(seq 50); do
        if ip netns exec "$NS" nft list set bridge vessel_wan leased 2>/dev/null |
            has -F "52:56:65:00:40:77 . $addr"; then
            in_set=yes
            break
        fi
        sleep 0.1
    done
    if [ "$in_set" = yes ] && has "52:56:65:00:40:77 $addr" "$STATE/wan.run/leased"; then
        ok "the lease hook recorded 52:56:65:00:40:77 . $addr (file leased and set leased)"
    else
        not_ok "lease hook: 52:56:65:00:40:77 . $addr in the set"
        ip netns exec "$NS" nft list set bridge vessel_wan leased 2>&1 | diag 6
        diag 6 <"$STATE/wan.run/lease-hook.log" 2>/dev/null || true
    fi
    # the reservation: same client, reserved MAC
    ip -n "$NSC" link set eth0 down
    ip -n "$NSC" link set eth0 address 52:56:65:00:40:09
    ip -n "$NSC" link set eth0 up
    timeout 30 ip netns exec "$NSC" "$BUSYBOX" udhcpc -i eth0 -n -q -t 6 -T 1 -s /bin/true \
        >"$T/udhcpc2.out" 2>&1 || true
    if grep -q "lease of 10.77.0.9 obtained" "$T/udhcpc2.out"; then
        ok "the reserved MAC got its fixed address 10.77.0.9"
    else
        not_ok "reservation by MAC"
        diag 10 <"$T/udhcpc2.out"
    fi
else
    skip "busybox is not installed: no DHCP client test"
fi

# a NIC attached on a NAT network may only send from its reserved address (or its lease)
nv_ok "attach tap n1 with the reserved MAC" attach wan --tap n1 --mac 52:56:65:00:40:09
if ip netns exec "$NS" nft list chain bridge vessel_wan guest_in |
    has 'iifname "n1" ether saddr . ip saddr != @leased counter' &&
    ip netns exec "$NS" nft list set bridge vessel_wan leased | has -F '52:56:65:00:40:09 . 10.77.0.9'; then
    ok "tap n1 may only send IPv4 from 10.77.0.9 (its reservation, in set leased)"
else
    not_ok "IP anti-spoofing rule for n1"
    ip netns exec "$NS" nft list table bridge vessel_wan 2>&1 | diag 20
fi

# leases parsed from a dnsmasq leases file (dnsmasq's own format, with a duid line)
printf '%s\n' "1795383029 52:56:65:00:40:10 10.77.0.120 web 01:52:56:65:00:40:10" \
    "0 52:56:65:00:40:11 10.77.0.121 * *" "duid 00:01:00:01:2c:7a:1e:9f:52:56:65:00:40:10" \
    >"$T/leases"
cp "$T/leases" "$STATE/wan.run/dnsmasq.leases"
nv leases wan --json
got=$(python3 -c 'import json,sys; l=json.load(open(sys.argv[1])); print(len(l), l[0]["hostname"], l[1]["expiry"])' "$VS_OUT" || true)
if [ "$got" = "2 web 0" ]; then
    ok "leases parses dnsmasq's file (2 leases, hostname, infinite expiry; duid line skipped)"
else
    not_ok "leases parsing (got '$got')"
    diag 10 <"$VS_OUT"
fi

nv_ok "stop wan" stop wan --force
sleep 0.2
if ! kill -0 "$pid" 2>/dev/null && ! ip netns exec "$NS" nft list table ip vessel_wan >/dev/null 2>&1; then
    ok "stop ended dnsmasq and removed the nftables tables"
else
    not_ok "stop cleanup (dnsmasq $pid still alive or table left)"
fi
finish
