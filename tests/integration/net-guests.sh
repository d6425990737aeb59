#!/bin/bash
# tests/integration/net-guests.sh — probe guests on vessel networks inside a private network
# namespace (a "host"): two guests on an internal network exchange frames; a tap on another
# network sees none of them; a guest sending from a MAC other than its tap's is dropped by the
# anti-spoofing rules (its frames never reach the other guest, the drop counter counts them).
# Every `vessel net` command runs inside the netns; no traffic leaves it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/net-common.bash"
command -v tcpdump >/dev/null || { skip "tcpdump is not installed"; finish; }
need_probe_vm

# ---- two guests on an internal network, a third tap on another network ----------------------
nv_ok "define internal network lan" define lan --kind internal
nv_ok "define internal network other" define other --kind internal
nv_ok "start lan" start lan
nv_ok "start other" start other
nv_ok "attach tap g1 to lan" attach lan --tap g1 --mac 52:56:65:00:10:01
nv_ok "attach tap g2 to lan" attach lan --tap g2 --mac 52:56:65:00:10:02
nv_ok "attach tap g3 to other (allocated MAC)" attach other --tap g3 --json
mac3=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mac"])' "$VS_OUT")
case $mac3 in 52:56:65:*) ok "allocated MAC $mac3 is under vessel's prefix 52:56:65" ;;
*) not_ok "allocated MAC '$mac3' is under 52:56:65" ;; esac

vm echo g1 52:56:65:00:10:01 "probe.net.role=echo probe.net.timeout_ms=20000"
echo_pid=$VM_PID
# the third guest listens on the other network: it must never see lan's frames
vm iso g3 "$mac3" "probe.net.role=echo probe.net.timeout_ms=4000"
iso_pid=$VM_PID
wait_for "$T/iso.log" "PROBE net echo ready" || not_ok "guest on other network came up"
g3_tx_before=$(stat_of g3 tx_packets)
# what reaches g3 during the exchange, by source MAC: a frame from a lan guest is a leak; the
# counter alone can't tell one from the host's own chatter on bridge "other" (seen once a run)
ip netns exec "$NS" tcpdump -n -e -i g3 -Q out -U -w "$T/g3.pcap" 2>"$T/g3.tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 50); do grep -q listening "$T/g3.tcpdump.err" 2>/dev/null && break; sleep 0.1; done
if wait_for "$T/echo.log" "PROBE net echo ready"; then
    vm ping g2 52:56:65:00:10:02 "probe.net.count=500"
    wait "$VM_PID" || true
else
    not_ok "echo guest came up"
fi
wait "$echo_pid" || true
replies=$(result "$T/ping.log" net.rx_replies)
echoed=$(result "$T/echo.log" net.echoed)
if [ "${replies:-0}" -eq 500 ] && [ "${echoed:-0}" -ge 500 ]; then
    ok "two guests on internal network lan exchanged frames (500 pings, 500 replies, $echoed echoed)"
else
    not_ok "frames between guests on lan (replies '${replies}', echoed '${echoed}')"
    grep -a 'PROBE fail' "$T"/*.log | diag 4
fi
g3_tx_after=$(stat_of g3 tx_packets)
sleep 0.3
kill "$TCPDUMP_PID" 2>/dev/null || true
wait "$TCPDUMP_PID" 2>/dev/null || true
wait "$iso_pid" || true
iso_echoed=$(result "$T/iso.log" net.echoed)
from_lan=$(tcpdump -n -e -r "$T/g3.pcap" \
    'ether src 52:56:65:00:10:01 or ether src 52:56:65:00:10:02' 2>/dev/null | wc -l)
if [ "$((g3_tx_after - g3_tx_before))" -ne 0 ]; then
    echo "# g3 received $((g3_tx_after - g3_tx_before)) frame(s) during the exchange:"
    tcpdump -n -e -r "$T/g3.pcap" 2>/dev/null | diag 5
fi
if [ "$from_lan" -eq 0 ] && [ "${iso_echoed:-x}" = 0 ]; then
    ok "nothing leaked to network other (no frame from lan's guests reached tap g3, its guest saw 0 probe pings)"
else
    not_ok "leak to network other: $from_lan frame(s) from lan's guests on g3, guest echoed '${iso_echoed}'"
fi

# ---- a guest sending from a MAC that is not its tap's gets nothing through -----------------------
nv_ok "attach tap g4 to lan with MAC 52:56:65:00:10:04" attach lan --tap g4 --mac 52:56:65:00:10:04
drops_before=$(ip netns exec "$NS" nft list chain bridge vessel_lan guest_in |
    sed -n 's/.*iifname "g4" ether saddr != .* counter packets \([0-9]*\).*/\1/p')
vm echo2 g1 52:56:65:00:10:01 "probe.net.role=echo probe.net.timeout_ms=8000"
echo_pid=$VM_PID
if wait_for "$T/echo2.log" "PROBE net echo ready"; then
    # the probe uses 52:56:65:00:66:66 while vessel only allows 52:56:65:00:10:04 on g4
    vm spoof g4 52:56:65:00:66:66 "probe.net.count=50 probe.net.timeout_ms=2000"
    wait "$VM_PID" || true
fi
wait "$echo_pid" || true
drops=$(ip netns exec "$NS" nft list chain bridge vessel_lan guest_in |
    sed -n 's/.*iifname "g4" ether saddr != .* counter packets \([0-9]*\).*/\1/p')
sp_replies=$(result "$T/spoof.log" net.rx_replies)
sp_echoed=$(result "$T/echo2.log" net.echoed)
sp_sent=$(result "$T/spoof.log" net.tx_frames)
if [ "${sp_sent:-0}" -gt 0 ] && [ "${sp_echoed:-0}" -eq 0 ] && [ "${sp_replies:-0}" -eq 0 ] &&
    [ "$((${drops:-0} - ${drops_before:-0}))" -ge "$sp_sent" ]; then
    ok "spoofed source MAC dropped: the guest sent $sp_sent frames, 0 reached the other guest, $((drops - drops_before)) dropped by the g4 rule"
else
    not_ok "spoofed MAC (sent '${sp_sent}', echoed '${sp_echoed}', replies '${sp_replies}', drops ${drops_before:-?}->${drops:-?})"
fi

# ---- stop refuses while a VM holds a tap; a clean stop removes the bridge and taps ---------------
vm hold g2 52:56:65:00:10:02 "probe.net.role=echo probe.net.timeout_ms=6000"
hold_pid=$VM_PID
wait_for "$T/hold.log" "PROBE net echo ready" || true
nv stop lan
if [ "$VS_RC" -eq 1 ] && grep -q "in use by a running VM (g2)" "$VS_ERR" && [ "$(wc -l <"$VS_ERR")" -eq 1 ]; then
    ok "stop lan is refused while a VM holds tap g2: $(cat "$VS_ERR")"
else
    not_ok "stop lan with a tap in use (exit $VS_RC)"
fi
nv undefine lan
if [ "$VS_RC" -eq 1 ] && grep -q "is started: stop it first" "$VS_ERR"; then
    ok "undefine of the started network lan is refused"
else
    not_ok "undefine of a started network (exit $VS_RC)"
fi
wait "$hold_pid" || true
nv_ok "stop lan once the VM is gone" stop lan
if ! ip netns exec "$NS" ip link show vs-lan >/dev/null 2>&1 && ! ip netns exec "$NS" ip link show g1 >/dev/null 2>&1 &&
    ! ip netns exec "$NS" nft list table bridge vessel_lan >/dev/null 2>&1; then
    ok "stop removed bridge vs-lan, its taps and its nftables table"
else
    not_ok "stop left the bridge, a tap or the table behind"
fi
nv_ok "start lan again re-creates its taps with the same MACs" start lan
if ip netns exec "$NS" ip link show g1 2>/dev/null | has "fe:56:65:00:10:01"; then
    ok "tap g1 is back with host MAC fe:56:65:00:10:01 (guest MAC kept across stop/start)"
else
    not_ok "tap g1 re-created with its MAC"
fi
nv_ok "stop lan" stop lan
nv_ok "undefine lan" undefine lan
nv_ok "stop other" stop other
for f in "$T"/*.err; do
    if grep -qE "$SANITIZER_RE" "$f"; then
        not_ok "sanitizer report in $(basename "$f")"
        diag 30 <"$f"
    fi
done
finish
