# tests/integration/net-common.bash — the shared setup of the net-*.sh scripts: one private
# network namespace (NS) per run, removed on exit, with IPv6 off so counters count guest frames;
# `nv` runs `vessel net --state STATE` inside it; `vm` starts a probe guest on a tap there and
# `need_probe_vm` skips a script where that can't run.
# Sourced, not run (the runner only runs *.sh). Needs ip, nft and python3, else the script skips.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/integration/lib.sh"
require_vessel
# has ARGS… — grep that reads all its input (grep -q can SIGPIPE the writer under pipefail)
has() { grep "$@" >/dev/null; }
VMM=${VESSEL_VMM:-$(dirname "$VESSEL")/vessel-vmm}
PROBE=${PROBE:-$ROOT/build/guest/probe.elf}
NS=vnet-$$-a
STATE=$T/state

for need in ip nft python3; do
    command -v "$need" >/dev/null || { skip "$need is not installed"; finish; }
done
# need_probe_vm — skip (with the reason) unless probe guests can run here
need_probe_vm() {
    [ -r /dev/kvm ] || { skip "no /dev/kvm here"; finish; }
    [ -x "$VMM" ] || { skip "vessel-vmm $VMM not built"; finish; }
    [ -f "$PROBE" ] || { skip "probe guest $PROBE not built (make guest)"; finish; }
}

cleanup_ns() {
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
    sleep 0.2
    ip netns del "$NS" 2>/dev/null || true
    it_cleanup
}
trap cleanup_ns EXIT
ip netns add "$NS" || { skip "cannot create a network namespace"; finish; }
# no IPv6 chatter from the host side of the bridges: counters then count guest frames only
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1

# nv ARGS… — `vessel net --state STATE ARGS…` inside the netns (VS_RC/VS_OUT/VS_ERR like vs).
nv() {
    local rc=0
    timeout -k 5 "$TIMEOUT" ip netns exec "$NS" "$VESSEL" net --state "$STATE" "$@" \
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
wait_for() { # FILE PATTERN [TENTHS]
    for _ in $(seq "${3:-300}"); do grep -aq "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
stat_of() { ip netns exec "$NS" cat "/sys/class/net/$1/statistics/$2"; }
# vm NAME TAP MAC CMDLINE — run a probe guest in the netns (background; pid in VM_PID)
vm() {
    timeout -k 5 120 ip netns exec "$NS" "$VMM" --kernel "$PROBE" --net "tap=$2,mac=$3" \
        --console "file:$T/$1.log" --cmdline "probe.tests=net $4" 2>"$T/$1.err" &
    VM_PID=$!
}
