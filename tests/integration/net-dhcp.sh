#!/bin/bash
# tests/integration/net-dhcp.sh — a probe guest on a vessel NAT network takes a DHCP lease from
# the network's dnsmasq: `probe.net=dhcp` runs the probe's own DHCP client (DISCOVER, OFFER,
# REQUEST, ACK in raw frames on its virtio-net NIC) through vessel-vmm and a tap that `vessel net
# attach` made; the guest prints the address, router and lease time, the address lies in the
# range, and `vessel net leases` lists the guest's MAC with it. Anti-spoofing of leased addresses:
# dnsmasq's dhcp-script puts the guest's (MAC . lease) into the tap's allowed set, and on a second
# boot the guest (`probe.dhcp.send_from=lease,FORGED`) sends UDP and ARP from its lease, which pass,
# and from a forged address, which vessel's rules drop (counted by a watching table behind them).
# Everything happens inside a private network namespace (a "host") created and removed here.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/net-common.bash"
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || { skip "dnsmasq is not installed"; finish; }
need_probe_vm
MAC=52:56:65:00:50:21

# in_range A — is A inside 10.78.0.100-10.78.0.150?
in_range() {
    case $1 in 10.78.0.1[0-4][0-9] | 10.78.0.150) return 0 ;; *) return 1 ;; esac
}

nv_ok "define nat network dh (10.78.0.0/24, DHCP .100-.150, lease 900 s)" define dh --kind nat \
    --subnet 10.78.0.0/24 --dhcp-range 10.78.0.100-10.78.0.150 --lease-time 900
nv_ok "start dh" start dh
nv_ok "attach tap dg1 with MAC $MAC" attach dh --tap dg1 --mac "$MAC"

# the guest: DHCP only, run mode (prints the lease, PROBE ok, powers off)
rc=0
timeout -k 5 90 ip netns exec "$NS" "$VMM" --kernel "$PROBE" --net "tap=dg1,mac=$MAC" \
    --console "file:$T/guest.log" --cmdline "probe.tests=net probe.net=dhcp" \
    2>"$T/guest.err" || rc=$?
addr=$(result "$T/guest.log" dhcp.address)
router=$(result "$T/guest.log" dhcp.router)
lease=$(result "$T/guest.log" dhcp.lease)
if [ "$rc" -eq 0 ] && grep -aq '^PROBE ok' "$T/guest.log" && in_range "$addr"; then
    ok "the probe guest got $addr from dnsmasq (inside the range) in $(result "$T/guest.log" dhcp.us) us"
else
    not_ok "DHCP lease in the guest (vmm exit $rc, address '$addr')"
    grep -a 'PROBE \(fail\|info error\|result dhcp\)' "$T/guest.log" | diag 8
    diag 8 <"$T/guest.err"
fi
if [ "$router" = 10.78.0.1 ] && [ "$lease" = 900 ]; then
    ok "the lease names router 10.78.0.1 and lasts 900 s"
else
    not_ok "router/lease in the ACK (router '$router', lease '$lease')"
fi
if [ "$(result "$T/guest.log" net.mac)" = "$MAC" ]; then
    ok "the guest's NIC has MAC $MAC"
else
    not_ok "guest MAC (got '$(result "$T/guest.log" net.mac)')"
fi

sleep 0.3
nv leases dh
if [ "$VS_RC" -eq 0 ] && [ -n "$addr" ] && has "^$MAC *$addr " "$VS_OUT"; then
    ok "vessel net leases dh lists $MAC -> $addr"
else
    not_ok "vessel net leases lists the guest (exit $VS_RC)"
    diag 5 <"$VS_OUT"
fi

# anti-spoofing of leased addresses: dnsmasq's dhcp-script (`vessel net lease-event`) put the
# guest's (MAC . lease) pair into the set the tap's IPv4/ARP rules check
set_has_lease() {
    for _ in $(seq 50); do
        ip netns exec "$NS" nft list set bridge vessel_dh leased 2>/dev/null |
            has -F "$MAC . $addr" && return 0
        sleep 0.1
    done
    return 1
}
if [ -n "$addr" ] && set_has_lease; then
    ok "the lease event put $MAC . $addr into set leased of table bridge vessel_dh"
else
    not_ok "lease $addr in the anti-spoofing set"
    ip netns exec "$NS" nft list set bridge vessel_dh leased 2>&1 | diag 8
    diag 8 <"$STATE/dh.run/lease-hook.log" 2>/dev/null || true
fi

# what gets past vessel's rules (priority -200) is counted by a table of the test's own at
# priority 0: datagrams to port 9 and gratuitous ARPs, from the lease and from a forged address
FORGED=10.78.0.99
ip netns exec "$NS" nft -f - <<EOF_NFT
table bridge spoofwatch {
    chain seen {
        type filter hook prerouting priority 0; policy accept;
        iifname "dg1" ip saddr $addr udp dport 9 counter comment "udp-lease"
        iifname "dg1" ip saddr $FORGED udp dport 9 counter comment "udp-forged"
        iifname "dg1" arp saddr ip $addr counter comment "arp-lease"
        iifname "dg1" arp saddr ip $FORGED counter comment "arp-forged"
    }
}
EOF_NFT
seen() { # COMMENT — packets counted by that rule of spoofwatch
    ip netns exec "$NS" nft list chain bridge spoofwatch seen |
        sed -n "s/.*counter packets \([0-9]*\) .*comment \"$1\".*/\1/p"
}
drops() { # the drop counter of vessel's rule "ether saddr . ip saddr != @leased" for dg1 (as nft lists it)
    ip netns exec "$NS" nft list chain bridge vessel_dh guest_in |
        sed -n 's/.*iifname "dg1" ether saddr . ip saddr != @leased counter packets \([0-9]*\) .*/\1/p'
}
drops_before=$(drops)

# the same guest again (probe.tests=dhcp spelling): dnsmasq hands the same MAC the same address;
# then it sends 5 rounds of a UDP datagram and a gratuitous ARP from its lease and from $FORGED
rc=0
timeout -k 5 90 ip netns exec "$NS" "$VMM" --kernel "$PROBE" --net "tap=dg1,mac=$MAC" \
    --console "file:$T/guest2.log" \
    --cmdline "probe.tests=dhcp probe.dhcp.send_from=lease,$FORGED probe.dhcp.send_count=5" \
    2>"$T/guest2.err" || rc=$?
addr2=$(result "$T/guest2.log" dhcp.address)
if [ "$rc" -eq 0 ] && grep -aq '^PROBE ok' "$T/guest2.log" && [ "$addr2" = "$addr" ]; then
    ok "probe.tests=dhcp on a second boot gets the same address $addr2"
else
    not_ok "second lease (vmm exit $rc, address '$addr2', first '$addr')"
    grep -a 'PROBE \(fail\|info error\)' "$T/guest2.log" | diag 4
fi
sent=$(result "$T/guest2.log" dhcp.sent)
u_ok=$(seen udp-lease) u_bad=$(seen udp-forged) a_ok=$(seen arp-lease) a_bad=$(seen arp-forged)
drops_after=$(drops)
echo "# sent $sent; passed: udp lease $u_ok forged $u_bad, arp lease $a_ok forged $a_bad; drops ${drops_before:-?} -> ${drops_after:-?}"
if [ "$sent" = 20 ] && [ "$u_ok" = 5 ] && [ "$a_ok" = 5 ]; then
    ok "all 5 datagrams and 5 ARPs from the leased address $addr got through"
else
    not_ok "traffic from the lease (sent '$sent', udp '$u_ok', arp '$a_ok' of 5)"
fi
if [ "$u_bad" = 0 ] && [ "$a_bad" = 0 ] && [ -n "$drops_after" ] &&
    [ $((drops_after - ${drops_before:-0})) -ge 5 ]; then
    ok "datagrams and ARPs from the forged $FORGED were dropped ($((drops_after - ${drops_before:-0})) IPv4 drops counted)"
else
    not_ok "forged source $FORGED (udp passed '$u_bad', arp passed '$a_bad', drops ${drops_before:-?} -> ${drops_after:-?})"
    ip netns exec "$NS" nft list table bridge vessel_dh 2>&1 | diag 30
fi

# a lease event for an address outside the subnet is refused; "del" takes the pair out again
nv lease-event dh add "$MAC" 192.0.2.7
if [ "$VS_RC" -eq 1 ] && has "not an address of 10.78.0.0/24" "$VS_ERR"; then
    ok "lease-event refuses 192.0.2.7 (outside 10.78.0.0/24)"
else
    not_ok "lease-event outside the subnet (exit $VS_RC)"
fi
nv lease-event dh del "$MAC" "$addr"
if [ "$VS_RC" -eq 0 ] && ! ip netns exec "$NS" nft list set bridge vessel_dh leased | has -F "$addr"; then
    ok "lease-event del takes $MAC . $addr out of the set"
else
    not_ok "lease-event del (exit $VS_RC)"
fi
# a lost table (someone flushed the ruleset) comes back whole with the next lease event
ip netns exec "$NS" nft delete table bridge vessel_dh
nv lease-event dh old "$MAC" "$addr"
if [ "$VS_RC" -eq 0 ] && ip netns exec "$NS" nft list set bridge vessel_dh leased | has -F "$MAC . $addr" &&
    ip netns exec "$NS" nft list chain bridge vessel_dh guest_in | has 'iifname "dg1" ether saddr . ip saddr != @leased'; then
    ok "after the table was deleted, a lease event loads it again with $MAC . $addr"
else
    not_ok "lease event with the table gone (exit $VS_RC)"
fi
if grep -qE "$SANITIZER_RE" "$STATE/dh.run/lease-hook.log" 2>/dev/null; then
    not_ok "sanitizer report from the lease hook"
    diag 30 <"$STATE/dh.run/lease-hook.log"
fi

# idle mode with probe.net=dhcp: lease first, then stays up (poweroff on the console ends it)
rc=0
(sleep 8; echo poweroff) | timeout -k 5 60 ip netns exec "$NS" "$VMM" --kernel "$PROBE" \
    --net "tap=dg1,mac=$MAC" --console stdio --cmdline "probe.mode=idle probe.net=dhcp" \
    >"$T/guest3.log" 2>"$T/guest3.err" || rc=$?
if grep -aq "^PROBE result dhcp.address=$addr\$" "$T/guest3.log" && grep -aq '^PROBE idle' "$T/guest3.log"; then
    ok "idle mode with probe.net=dhcp takes the lease ($addr) and then idles"
else
    not_ok "idle mode with probe.net=dhcp (vmm exit $rc)"
    grep -a '^PROBE' "$T/guest3.log" | tail -n 6 | diag 6
fi

# no DHCP server: the client gives up after its timeout with a clear failure
nv_ok "define internal network quiet (no DHCP server)" define quiet --kind internal
nv_ok "start quiet" start quiet
nv_ok "attach tap dg2 to quiet" attach quiet --tap dg2 --mac 52:56:65:00:50:22
rc=0
timeout -k 5 60 ip netns exec "$NS" "$VMM" --kernel "$PROBE" --net "tap=dg2,mac=52:56:65:00:50:22" \
    --console "file:$T/guest4.log" --cmdline "probe.tests=dhcp probe.dhcp.timeout_ms=2500 probe.dhcp.retry_ms=300" \
    2>"$T/guest4.err" || rc=$?
if grep -aq '^PROBE fail dhcp: no offer within 2500 ms' "$T/guest4.log"; then
    ok "without a server the guest reports: $(grep -a '^PROBE fail' "$T/guest4.log")"
else
    not_ok "DHCP timeout without a server (vmm exit $rc)"
    grep -a '^PROBE' "$T/guest4.log" | tail -n 4 | diag 4
fi

nv_ok "stop dh" stop dh --force
nv_ok "stop quiet" stop quiet --force
for f in "$T"/*.err; do
    if grep -qE "$SANITIZER_RE" "$f"; then
        not_ok "sanitizer report in $(basename "$f")"
        diag 30 <"$f"
    fi
done
finish
