# tests/integration/mgmt-common.bash — the shared setup of the mgmt-*.sh scripts: vesseld and
# vessel-vmm found next to $VESSEL (VESSELD / VESSEL_VMM override), the probe guest, the daemon's
# state dir STATE=$T/st with its socket SOCK (exported as VESSEL_SOCKET for the CLI), and an EXIT
# trap that kills every VM the test started, stops the daemon, removes the namespace NS if the
# script made one, and reports a sanitizer line in vesseld's log as a failure. Helpers:
# need_kvm_probe, need TOOL…, start_daemon, field, wait_state, wait_for, link_exists and master_of
# (a link in NS), probe_def.
# Sourced, not run (the runner only runs *.sh).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/integration/lib.sh"
VESSELD=${VESSELD:-$(dirname "$VESSEL")/vesseld}
export VESSEL_VMM=${VESSEL_VMM:-$(dirname "$VESSEL")/vessel-vmm}
PROBE=$ROOT/build/guest/probe.elf
require_vessel
for f in "$VESSELD" "$VESSEL_VMM"; do
    [ -x "$f" ] || { not_ok "$f exists"; finish; }
done

STATE=$T/st
SOCK=$STATE/vesseld.sock
export VESSEL_SOCKET=$SOCK
DPID=
NS=         # a script that runs vesseld in a network namespace sets this once it has made it
DAEMON_NS=  # set to run start_daemon's vesseld inside that namespace

mgmt_cleanup() {
    # VMs outlive the daemon by design: stop every one this test started
    local p
    for p in $(pgrep -f "vessel-vmm .*$STATE/run/" || true); do kill -9 "$p" 2>/dev/null || true; done
    if [ -n "$DPID" ]; then
        kill "$DPID" 2>/dev/null || true
        wait "$DPID" 2>/dev/null || true
    fi
    if [ -n "$NS" ]; then
        ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        sleep 0.2
        ip netns del "$NS" 2>/dev/null || true
    fi
    if grep -qE "$SANITIZER_RE" "$T/vesseld.log" 2>/dev/null; then
        echo "not ok - vesseld sanitizer report"
        diag 60 <"$T/vesseld.log"
    fi
    it_cleanup
}
trap mgmt_cleanup EXIT

# need_kvm_probe — skip the script without a usable /dev/kvm or the probe guest
need_kvm_probe() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || { skip "no usable /dev/kvm here"; finish; }
    [ -r "$PROBE" ] || { skip "no probe guest (make guest)"; finish; }
}
# need TOOL… — skip the script when one of the tools is not installed
need() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || { skip "$t is not installed"; finish; }
    done
}

# start_daemon [VESSELD-ARGS…] — vesseld --state STATE (in the namespace DAEMON_NS when set), its
# output appended to $T/vesseld.log; waits up to 10 s for it to answer on SOCK, else fails the script
start_daemon() {
    local run=() i
    [ -z "$DAEMON_NS" ] || run=(ip netns exec "$DAEMON_NS")
    "${run[@]}" "$VESSELD" --state "$STATE" "$@" >>"$T/vesseld.log" 2>&1 &
    DPID=$!
    for i in $(seq 100); do
        [ -S "$SOCK" ] && curl -sf --max-time 2 --unix-socket "$SOCK" http://v/v1/ping >/dev/null && return 0
        sleep 0.1
    done
    not_ok "vesseld answers on $SOCK"
    diag <"$T/vesseld.log"
    finish
}

field() { # NAME KEY — a field of `vessel info --json`
    "$VESSEL" info "$1" --json 2>/dev/null | jq -r ".$2"
}
wait_state() { # NAME STATE SECONDS
    local i
    for i in $(seq $(($3 * 10))); do
        [ "$(field "$1" state)" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
wait_for() { # FILE PATTERN SECONDS — the file has a line matching PATTERN
    local i
    for i in $(seq $(($3 * 10))); do
        grep -aq "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
link_exists() { ip netns exec "$NS" ip link show "$1" >/dev/null 2>&1; } # LINK — exists in NS
master_of() { ip netns exec "$NS" ip -o link show "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }

# probe_def NAME [CMDLINE] [CONSOLE] [TOP-LEVEL-LINES] — the head of a probe VM's definition on
# stdout: name, 64M, the console (default file:$T/NAME.console), the top-level lines (when given,
# even empty), then [boot] with the probe and CMDLINE (default probe.mode=idle); the caller appends
# its sections.
probe_def() {
    printf 'name = %s\nmemory = 64M\nconsole = %s\n' "$1" "${3:-file:$T/$1.console}"
    [ $# -lt 4 ] || printf '%s\n' "$4"
    printf '[boot]\nkernel = %s\ncmdline = %s\n' "$PROBE" "${2:-probe.mode=idle}"
}
