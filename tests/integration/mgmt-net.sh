#!/bin/bash
# tests/integration/mgmt-net.sh — VM NICs on vessel networks through the daemon. vesseld runs in a
# private network namespace (a "host"), so the bridges and taps it makes live there; `vessel net
# --state STATE/net` (the daemon's network store) defines and starts an internal network. Two
# probe VMs with a NIC on it are started by the daemon and exchange frames (the probe's ping/echo
# test); while they run `vessel net info` lists their taps on the network's bridge and the network
# can be neither stopped nor undefined; when they power off, are destroyed, or die while the daemon
# is killed, their taps are gone. A NIC on an undefined or stopped network makes start fail with
# one line naming the VM, the NIC and the network, and leaves no tap; a NIC on a host bridge gets
# a tap on that bridge. Nothing leaves the namespace.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need ip nft jq curl
# has ARGS… — grep that reads all its input (grep -q can SIGPIPE the writer under pipefail)
has() { grep "$@" >/dev/null; }

NETSTATE=$STATE/net
NS=vmgmt-$$
DAEMON_NS=$NS
ip netns add "$NS" || { skip "cannot create a network namespace"; finish; }
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
mkdir -p "$STATE"

# nv ARGS… — `vessel net --state STATE/net ARGS…` in the namespace (VS_RC/VS_OUT/VS_ERR like vs)
nv() {
    local rc=0
    timeout -k 5 "$TIMEOUT" ip netns exec "$NS" "$VESSEL" net --state "$NETSTATE" "$@" \
        >"$VS_OUT" 2>"$VS_ERR" || rc=$?
    VS_RC=$rc
    echo "# \$ vessel net $* -> $rc"
    [ -s "$VS_ERR" ] && diag 4 <"$VS_ERR"
    if grep -qE "$SANITIZER_RE" "$VS_ERR"; then
        not_ok "sanitizer report from: vessel net $*"
        diag 60 <"$VS_ERR"
    fi
    return 0
}
nv_ok() { # DESC ARGS…
    local desc=$1
    shift
    nv "$@"
    if [ "$VS_RC" -eq 0 ]; then ok "$desc"; else not_ok "$desc (exit $VS_RC)"; fi
}
tap_of() { echo "vs$(field "$1" uuid | tr -d - | cut -c1-8)$2"; } # NAME INDEX
# mkvm NAME CMDLINE NIC-SECTIONS…
mkvm() {
    local name=$1 cmdline=$2
    shift 2
    {
        probe_def "$name" "$cmdline"
        local nic
        for nic in "$@"; do printf '[nic]\n%s\n' "$nic"; done
    } >"$T/$name.vm"
    expect_ok "define $name" define "$T/$name.vm"
}

start_daemon

# ---- an internal network in the daemon's store, two VMs on it -------------------------------------
nv_ok "define internal network lan in the daemon's store (STATE/net)" define lan --kind internal
nv_ok "start lan" start lan
mkvm echo1 "probe.tests=net probe.net.role=echo probe.net.timeout_ms=30000" \
    "network = lan
mac = 52:56:65:00:20:01"
mkvm ping1 "probe.tests=net probe.net.count=200" "network = lan
mac = 52:56:65:00:20:02"
ECHO_TAP=$(tap_of echo1 0)
PING_TAP=$(tap_of ping1 0)

expect_ok "start echo1 (NIC on lan)" start echo1
if wait_for "$T/echo1.console" "PROBE net echo ready" 30; then
    ok "echo1's probe listens on its NIC"
else
    not_ok "echo1's probe came up"
    diag <"$T/echo1.console"
fi
if [ "$(master_of "$ECHO_TAP")" = vs-lan ] &&
    ip netns exec "$NS" ip link show "$ECHO_TAP" | has "fe:56:65:00:20:01"; then
    ok "echo1's tap $ECHO_TAP is a port of lan's bridge vs-lan with host MAC fe:56:65:00:20:01"
else
    not_ok "echo1's tap $ECHO_TAP on vs-lan"
    ip netns exec "$NS" ip -o link show | diag
fi
nv info lan
if has -E "^tap = $ECHO_TAP mac 52:56:65:00:20:01 .*\(in use\)" "$VS_OUT"; then
    ok "vessel net info lan lists echo1's tap, in use"
else
    not_ok "vessel net info lan lists $ECHO_TAP"
    diag <"$VS_OUT"
fi
if [ "$(field echo1 'taps[0].tap')" = "$ECHO_TAP" ] && [ "$(field echo1 'taps[0].network')" = lan ] &&
    "$VESSEL" info echo1 | has -E "^Tap: +$ECHO_TAP on network lan$"; then
    ok "vessel info echo1 names its tap and network"
else
    not_ok "vessel info echo1 taps"
fi
nv stop lan
if [ "$VS_RC" -eq 1 ] && has "$ECHO_TAP" "$VS_ERR" && [ "$(wc -l <"$VS_ERR")" -eq 1 ]; then
    ok "stopping lan while echo1 runs is refused: $(cat "$VS_ERR")"
else
    not_ok "stop lan with a running VM on it (exit $VS_RC)"
fi
nv undefine lan
[ "$VS_RC" -eq 1 ] && ok "undefining lan while it is started (VMs on it) is refused" ||
    not_ok "undefine lan refused (exit $VS_RC)"

expect_ok "start ping1 (NIC on lan)" start ping1
wait_state ping1 shutoff 60 || not_ok "ping1 powered off within 60 s"
wait_state echo1 shutoff 40 || not_ok "echo1 powered off within 40 s"
replies=$(result "$T/ping1.console" net.rx_replies)
echoed=$(result "$T/echo1.console" net.echoed)
if [ "${replies:-0}" -eq 200 ] && [ "${echoed:-0}" -ge 200 ]; then
    ok "the two daemon-started VMs exchanged frames over lan (200 pings, 200 replies, $echoed echoed)"
else
    not_ok "frames between echo1 and ping1 (replies '$replies', echoed '$echoed')"
    grep -a 'PROBE' "$T/ping1.console" "$T/echo1.console" | tail -8 | diag
fi
if ! link_exists "$ECHO_TAP" && ! link_exists "$PING_TAP"; then
    ok "after poweroff both VMs' taps are deleted"
else
    not_ok "taps left after poweroff"
fi
nv info lan
if ! has "^tap = " "$VS_OUT"; then
    ok "vessel net info lan lists no taps once the VMs are off"
else
    not_ok "lan still lists taps"
    diag <"$VS_OUT"
fi

# ---- destroy ---------------------------------------------------------------------------------------
mkvm idle1 "probe.mode=idle" "network = lan
mac = 52:56:65:00:20:03"
IDLE_TAP=$(tap_of idle1 0)
expect_ok "start idle1" start idle1
link_exists "$IDLE_TAP" && ok "idle1's tap exists while it runs" || not_ok "idle1's tap $IDLE_TAP exists"
expect_ok "destroy idle1" destroy idle1
link_exists "$IDLE_TAP" && not_ok "destroy left idle1's tap" || ok "destroy deleted idle1's tap"

# ---- the VMM crashes (killed) under a watching daemon: on_crash = destroy, tap deleted --------------
expect_ok "start idle1 to crash it" start idle1
kill -9 "$(field idle1 pid)"
if wait_state idle1 shutoff 20 && ! link_exists "$IDLE_TAP"; then
    ok "a crashed VM (vessel-vmm killed) is shut off and its tap deleted"
else
    not_ok "crashed idle1: state '$(field idle1 state)', tap present: $(link_exists "$IDLE_TAP" && echo yes || echo no)"
fi

# ---- on_crash = restart: the new vessel-vmm gets its tap again --------------------------------------------
mkvm rs1 "probe.mode=idle" "network = lan
mac = 52:56:65:00:20:04"
echo "on_crash = restart" >>"$T/rs1.vm" # top-level keys may follow sections
expect_ok "redefine rs1 with on_crash = restart" define "$T/rs1.vm"
RS_TAP=$(tap_of rs1 0)
expect_ok "start rs1" start rs1
kill -9 "$(field rs1 pid)"
for _ in $(seq 200); do [ "$(field rs1 boots)" = 2 ] && break; sleep 0.1; done
if [ "$(field rs1 boots)" = 2 ] && [ "$(field rs1 state)" = running ] &&
    [ "$(master_of "$RS_TAP")" = vs-lan ] && [ "$(field rs1 'taps[0].tap')" = "$RS_TAP" ]; then
    ok "after a crash, on_crash = restart runs rs1 again with its tap on vs-lan"
else
    not_ok "rs1 restarted with its tap (boots $(field rs1 boots), state $(field rs1 state), master '$(master_of "$RS_TAP")')"
fi
nv info lan
[ "$(grep -c "^tap = $RS_TAP " "$VS_OUT")" = 1 ] && ok "lan lists rs1's tap once after the restart" ||
    not_ok "lan lists rs1's tap once"
expect_ok "destroy rs1" destroy rs1
link_exists "$RS_TAP" && not_ok "rs1's tap left" || ok "destroy deleted rs1's tap"

# ---- the VM dies while the daemon is away: the restarted daemon deletes its tap ------------------------
expect_ok "start idle1 again" start idle1
pid=$(field idle1 pid)
kpid=$(field idle1 keeper_pid)
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
DPID=
kill -9 "$pid"
# the keeper records the exit and ends: the daemon then finds the VM ended, not running
for _ in $(seq 100); do kill -0 "$kpid" 2>/dev/null || break; sleep 0.1; done
start_daemon
state=$(field idle1 state)
if [ "$state" != running ] && ! link_exists "$IDLE_TAP"; then
    ok "idle1 killed while vesseld was down: the restarted daemon marks it $state and deletes its tap"
else
    not_ok "after daemon restart: state '$state', tap present: $(link_exists "$IDLE_TAP" && echo yes || echo no)"
fi
# a VM that survives the restart keeps its tap until it stops
expect_ok "start idle1 (daemon restart with the VM running)" start idle1
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
DPID=
start_daemon
if [ "$(field idle1 state)" = running ] && [ "$(master_of "$IDLE_TAP")" = vs-lan ]; then
    ok "re-attached idle1 keeps its tap on vs-lan"
else
    not_ok "re-attached idle1 and its tap"
fi
expect_ok "destroy the re-attached idle1" destroy idle1
link_exists "$IDLE_TAP" && not_ok "tap left after destroying a re-attached VM" ||
    ok "destroying the re-attached idle1 deleted its tap"

# ---- undefined and stopped networks: one line, nothing left --------------------------------------------
mkvm bad1 "probe.mode=idle" "network = lan" "network = nonet"
BAD0=$(tap_of bad1 0)
BAD1=$(tap_of bad1 1)
vs start bad1
lines=$(grep -c '' "$VS_ERR" || true)
if [ "$VS_RC" -eq 1 ] && [ "$lines" -eq 1 ] && has "bad1" "$VS_ERR" && has "NIC 1" "$VS_ERR" &&
    has "network nonet is not defined" "$VS_ERR"; then
    ok "a NIC on an undefined network: start fails with one line: $(cat "$VS_ERR")"
else
    not_ok "start bad1 with NIC on nonet (exit $VS_RC, $lines lines)"
    diag <"$VS_ERR"
fi
if ! link_exists "$BAD0" && ! link_exists "$BAD1" && [ "$(field bad1 state)" = shutoff ]; then
    ok "the failed start left no tap (not even NIC 0's on lan) and bad1 is shut off"
else
    not_ok "failed start left a tap or a state"
fi
nv info lan
has "^tap = " "$VS_OUT" && not_ok "lan lists a tap after the failed start" ||
    ok "lan lists no tap after the failed start"
pgrep -f "vessel-vmm .*$STATE/run/bad1/" >/dev/null && not_ok "a vessel-vmm runs for bad1" ||
    ok "no vessel-vmm was started for bad1"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 --unix-socket "$SOCK" -X POST http://v/v1/vms/bad1/start)
[ "$code" = 409 ] && ok "over the API that start is 409 (the host's networks, not the VM, are missing)" ||
    not_ok "API start of bad1: HTTP $code, expected 409"

# a MAC another VM's NIC uses on a network is refused by lib/net
expect_ok "start idle1 (MAC 52:56:65:00:20:03 on lan)" start idle1
mkvm dup1 "probe.mode=idle" "network = lan
mac = 52:56:65:00:20:03"
vs start dup1
if [ "$VS_RC" -eq 1 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] && has "dup1" "$VS_ERR" &&
    has "52:56:65:00:20:03" "$VS_ERR" && ! link_exists "$(tap_of dup1 0)"; then
    ok "a NIC whose MAC another VM uses is refused, no tap left: $(cat "$VS_ERR")"
else
    not_ok "start dup1 with idle1's MAC (exit $VS_RC)"
    diag <"$VS_ERR"
fi
expect_ok "destroy idle1" destroy idle1

nv_ok "define internal network off (not started)" define off --kind internal
mkvm bad2 "probe.mode=idle" "network = off"
vs start bad2
if [ "$VS_RC" -eq 1 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] && has "bad2" "$VS_ERR" &&
    has "NIC 0" "$VS_ERR" && has "network off is not started" "$VS_ERR"; then
    ok "a NIC on a stopped network: one line: $(cat "$VS_ERR")"
else
    not_ok "start bad2 with NIC on a stopped network (exit $VS_RC)"
    diag <"$VS_ERR"
fi
link_exists "$(tap_of bad2 0)" && not_ok "bad2 left a tap" || ok "bad2 left no tap"

# ---- a rate limit from the definition reaches the tap ---------------------------------------------------------
mkvm rate1 "probe.mode=idle" "network = lan
mac = 52:56:65:00:20:04
rate = 8Mb/s"
RATE_TAP=$(tap_of rate1 0)
expect_ok "start rate1 (rate = 8Mb/s)" start rate1
qd=$(ip netns exec "$NS" tc qdisc show dev "$RATE_TAP" 2>&1 || true)
if [[ $qd == *"tbf"*"rate 8Mbit"* ]]; then
    ok "rate1's tap is shaped at 8 Mbit/s towards the guest (tc: ${qd%%burst*})"
else
    not_ok "rate1's tap has a tbf at 8Mbit"
    echo "$qd" | diag
fi
expect_ok "destroy rate1" destroy rate1

# ---- a NIC on a host bridge ------------------------------------------------------------------------------
BR=vsbr$$
ip netns exec "$NS" ip link add "$BR" type bridge
mkvm br1 "probe.mode=idle" "bridge = $BR
mac = 52:56:65:00:20:05"
BR_TAP=$(tap_of br1 0)
expect_ok "start br1 (NIC on host bridge $BR)" start br1
if [ "$(master_of "$BR_TAP")" = "$BR" ]; then
    ok "br1's tap $BR_TAP is a port of host bridge $BR"
else
    not_ok "br1's tap on $BR"
fi
expect_ok "destroy br1" destroy br1
link_exists "$BR_TAP" && not_ok "br1's tap left behind" || ok "destroy deleted br1's tap; bridge $BR stays"
link_exists "$BR" || not_ok "the host bridge $BR must not be deleted"
mkvm br3 "probe.mode=idle" "bridge = $BR
rate = 8"
vs start br3
if [ "$VS_RC" -eq 1 ] && has "needs a vessel network" "$VS_ERR" && ! link_exists "$(tap_of br3 0)"; then
    ok "a rate on a host-bridge NIC is refused at start, no tap left: $(cat "$VS_ERR")"
else
    not_ok "start br3 (bridge NIC with a rate) refused (exit $VS_RC)"
    diag <"$VS_ERR"
fi
mkvm br2 "probe.mode=idle" "bridge = nosuchbr"
vs start br2
if [ "$VS_RC" -eq 1 ] && has "br2" "$VS_ERR" && has "nosuchbr does not exist" "$VS_ERR"; then
    ok "a NIC on a missing host bridge: $(cat "$VS_ERR")"
else
    not_ok "start br2 on a missing bridge (exit $VS_RC)"
fi

# ---- the network can go once no VM uses it -----------------------------------------------------------------
nv_ok "stop lan once its VMs are off" stop lan
nv_ok "undefine lan" undefine lan
nv_ok "undefine off" undefine off
if [ -z "$(ip netns exec "$NS" ip -o link show | grep -o ' vs[0-9a-f]\{8\}[0-9]*' || true)" ]; then
    ok "no vs* tap remains in the namespace"
else
    not_ok "taps remain"
    ip netns exec "$NS" ip -o link show | diag
fi
finish
