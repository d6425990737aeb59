#!/bin/bash
# tests/integration/net-vxlan.sh — two network namespaces play two hosts joined by a veth pair
# (the underlay, 10.99.0.1 ↔ 10.99.0.2); each defines the same VXLAN network (VNI 4242, the other
# host as remote peer) with its own state directory, and a probe guest on each side exchanges
# frames with the other across the overlay. Then the VNI check: a second network with VNI 4242
# on the same host is refused, and so is one whose VNI a foreign vxlan device already uses.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/integration/lib.sh"
require_vessel
# has ARGS… — grep that reads all its input (grep -q can SIGPIPE the writer under pipefail)
has() { grep "$@" >/dev/null; }
VMM=${VESSEL_VMM:-$(dirname "$VESSEL")/vessel-vmm}
PROBE=${PROBE:-$ROOT/build/guest/probe.elf}
NSA=vnet-$$-a
NSB=vnet-$$-b

for need in ip nft; do
    command -v "$need" >/dev/null || { skip "$need is not installed"; finish; }
done
[ -r /dev/kvm ] || { skip "no /dev/kvm here"; finish; }
[ -x "$VMM" ] || { skip "vessel-vmm $VMM not built"; finish; }
[ -f "$PROBE" ] || { skip "probe guest $PROBE not built (make guest)"; finish; }

cleanup_ns() {
    local ns
    for ns in "$NSA" "$NSB"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    sleep 0.2
    for ns in "$NSA" "$NSB"; do ip netns del "$ns" 2>/dev/null || true; done
    it_cleanup
}
trap cleanup_ns EXIT
ip netns add "$NSA" || { skip "cannot create a network namespace"; finish; }
ip netns add "$NSB"
for ns in "$NSA" "$NSB"; do
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
done
# the underlay: one veth pair between the two "hosts"
ip link add vxu-$$-a netns "$NSA" type veth peer name vxu-$$-b netns "$NSB"
ip -n "$NSA" link set vxu-$$-a name under0
ip -n "$NSB" link set vxu-$$-b name under0
ip -n "$NSA" addr add 10.99.0.1/24 dev under0
ip -n "$NSB" addr add 10.99.0.2/24 dev under0
ip -n "$NSA" link set under0 up
ip -n "$NSB" link set under0 up

# nv NS ARGS… — `vessel net` inside netns NS with that host's own state directory
nv() {
    local ns=$1 rc=0
    shift
    timeout -k 5 "$TIMEOUT" ip netns exec "$ns" "$VESSEL" net --state "$T/state-$ns" "$@" \
        >"$VS_OUT" 2>"$VS_ERR" || rc=$?
    VS_RC=$rc
    echo "# [$ns] \$ vessel net $* -> $rc"
    [ -s "$VS_ERR" ] && diag 4 <"$VS_ERR"
    if grep -qE "$SANITIZER_RE" "$VS_ERR"; then
        not_ok "sanitizer report from: vessel net $*"
        diag 60 <"$VS_ERR"
    fi
    return 0
}
nv_ok() { # DESC NS ARGS…
    local desc=$1
    shift
    nv "$@"
    if [ "$VS_RC" -eq 0 ]; then ok "$desc"; else not_ok "$desc (exit $VS_RC)"; fi
}
wait_for() {
    for _ in $(seq "${3:-300}"); do grep -aq "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

nv_ok "host A: define vxlan network ov (VNI 4242, remote 10.99.0.2)" "$NSA" define ov --kind vxlan \
    --vni 4242 --remote 10.99.0.2 --local 10.99.0.1 --dev under0
nv_ok "host B: define vxlan network ov (VNI 4242, remote 10.99.0.1)" "$NSB" define ov --kind vxlan \
    --vni 4242 --remote 10.99.0.1 --local 10.99.0.2 --dev under0
nv_ok "host A: start ov" "$NSA" start ov
nv_ok "host B: start ov" "$NSB" start ov
nv_ok "host A: attach tap ga" "$NSA" attach ov --tap ga --mac 52:56:65:00:20:01
nv_ok "host B: attach tap gb" "$NSB" attach ov --tap gb --mac 52:56:65:00:20:02
if ip -n "$NSA" -d link show vx-4242 | has "vxlan id 4242" &&
    ip -n "$NSA" link show vx-4242 | has "master vs-ov"; then
    ok "host A: vx-4242 (vxlan id 4242) is a port of bridge vs-ov"
else
    not_ok "host A: vxlan device vx-4242 on vs-ov"
    ip -n "$NSA" -d link show vx-4242 2>&1 | diag 5
fi
under_before=$(ip netns exec "$NSB" cat /sys/class/net/under0/statistics/rx_packets)

timeout -k 5 120 ip netns exec "$NSA" "$VMM" --kernel "$PROBE" --net tap=ga,mac=52:56:65:00:20:01 \
    --console "file:$T/echo.log" \
    --cmdline "probe.tests=net probe.net.role=echo probe.net.timeout_ms=20000" 2>"$T/echo.err" &
echo_pid=$!
if wait_for "$T/echo.log" "PROBE net echo ready"; then
    timeout -k 5 120 ip netns exec "$NSB" "$VMM" --kernel "$PROBE" \
        --net tap=gb,mac=52:56:65:00:20:02 --console "file:$T/ping.log" \
        --cmdline "probe.tests=net probe.net.count=300" 2>"$T/ping.err" || true
else
    not_ok "host A: echo guest came up"
fi
wait "$echo_pid" || true
replies=$(result "$T/ping.log" net.rx_replies)
echoed=$(result "$T/echo.log" net.echoed)
under_after=$(ip netns exec "$NSB" cat /sys/class/net/under0/statistics/rx_packets)
if [ "${replies:-0}" -eq 300 ] && [ "${echoed:-0}" -ge 300 ]; then
    ok "guest frames crossed the VXLAN overlay between hosts A and B (300 pings, 300 replies)"
else
    not_ok "frames across VXLAN (replies '${replies}', echoed '${echoed}')"
    grep -a 'PROBE fail' "$T"/*.log | diag 4
fi
if [ $((under_after - under_before)) -ge 300 ]; then
    ok "the replies came in over the underlay (host B under0 rx_packets +$((under_after - under_before)))"
else
    not_ok "underlay carried the overlay (rx_packets +$((under_after - under_before)))"
fi

# ---- VNI already in use ---------------------------------------------------------------------------
nv "$NSA" define ov2 --kind vxlan --vni 4242 --remote 10.99.0.3
if [ "$VS_RC" -eq 1 ] && grep -q "VNI 4242 is already used by network ov" "$VS_ERR"; then
    ok "a second network with VNI 4242 is refused: $(cat "$VS_ERR")"
else
    not_ok "duplicate VNI between networks (exit $VS_RC)"
fi
ip -n "$NSA" link add foreign7 type vxlan id 7007 dstport 4789 local 10.99.0.1
nv "$NSA" define ov3 --kind vxlan --vni 7007 --remote 10.99.0.2
if [ "$VS_RC" -eq 1 ] && grep -q "VNI 7007 is already used by foreign7 on this host" "$VS_ERR"; then
    ok "a VNI used by a foreign vxlan device is refused: $(cat "$VS_ERR")"
else
    not_ok "VNI used by a host device (exit $VS_RC)"
fi

nv_ok "host A: stop ov" "$NSA" stop ov
nv_ok "host B: stop ov" "$NSB" stop ov
if ! ip -n "$NSA" link show vx-4242 >/dev/null 2>&1; then
    ok "stop removed vx-4242"
else
    not_ok "stop removed vx-4242"
fi
for f in "$T"/*.err; do
    if grep -qE "$SANITIZER_RE" "$f"; then
        not_ok "sanitizer report in $(basename "$f")"
        diag 30 <"$f"
    fi
done
finish
