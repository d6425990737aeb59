#!/bin/bash
# tests/integration/mgmt-disks.sh — disk write locks across VMs, with the probe guest: a disk one
# running VM may write can't be started writable (nor read-only) in another, the error names the
# holder; read-only sharing works; the lock goes with the VM's stop and survives a daemon restart.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/integration/lib.sh"
VESSELD=${VESSELD:-$(dirname "$VESSEL")/vesseld}
export VESSEL_VMM=${VESSEL_VMM:-$(dirname "$VESSEL")/vessel-vmm}
PROBE=$ROOT/build/guest/probe.elf
require_vessel
for f in "$VESSELD" "$VESSEL_VMM"; do
    [ -x "$f" ] || { not_ok "$f exists"; finish; }
done
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ] || [ ! -r "$PROBE" ]; then
    skip "no usable /dev/kvm or probe guest"
    finish
fi
command -v curl >/dev/null || { skip "curl not installed"; finish; }

STATE=$T/st
SOCK=$STATE/vesseld.sock
export VESSEL_SOCKET=$SOCK
DPID=
start_daemon() {
    "$VESSELD" --state "$STATE" >>"$T/vesseld.log" 2>&1 &
    DPID=$!
    local i
    for i in $(seq 100); do
        [ -S "$SOCK" ] && curl -sf --max-time 2 --unix-socket "$SOCK" http://v/v1/ping >/dev/null && return 0
        sleep 0.1
    done
    not_ok "vesseld answers"
    finish
}
cleanup_all() {
    local p
    for p in $(pgrep -f "vessel-vmm .*$STATE/run/" || true); do kill -9 "$p" 2>/dev/null || true; done
    if [ -n "$DPID" ]; then
        kill "$DPID" 2>/dev/null || true
        wait "$DPID" 2>/dev/null || true
    fi
    if grep -qE "$SANITIZER_RE" "$T/vesseld.log" 2>/dev/null; then
        echo "not ok - vesseld sanitizer report"
        diag 60 <"$T/vesseld.log"
    fi
    it_cleanup
}
trap cleanup_all EXIT
mkdef() { # NAME DISK-FILE EXTRA-DISK-LINES
    cat >"$T/$1.vm" <<EOF
name = $1
memory = 64M
console = file:$T/$1.console
[boot]
kernel = $PROBE
cmdline = probe.mode=idle
[disk]
file = $2
format = raw
$3
EOF
}
mkdir -p "$STATE"
quiet truncate -s 16M "$T/shared.raw"
ln -s "$T/shared.raw" "$T/alias.raw"
start_daemon
mkdef w1 "$T/shared.raw" ""
mkdef w2 "$T/alias.raw" ""
mkdef r1 "$T/shared.raw" "readonly = yes"
mkdef r2 "$T/shared.raw" "readonly = yes"
mkdef u1 "$T/shared.raw" "undo = yes"
for v in w1 w2 r1 r2 u1; do expect_ok "define $v" define "$T/$v.vm"; done

expect_ok "start w1 (writes shared.raw)" start w1
vs start w2
[ "$VS_RC" -ne 0 ] && grep -q "in use writable by VM 'w1'" "$VS_ERR" &&
    ok "w2 (same file by a symlink) can't start writable: the error names w1" || not_ok "w2 refused, naming w1"
vs start r1
[ "$VS_RC" -ne 0 ] && grep -q "w1" "$VS_ERR" && ok "r1 can't even read a disk w1 writes" || not_ok "r1 refused while w1 writes"
[ "$(curl -s --unix-socket "$SOCK" -X POST -o /dev/null -w '%{http_code}' http://v/v1/vms/w2/start)" = 409 ] &&
    ok "over the API the conflict is 409" || not_ok "API conflict is 409"
# restart of the daemon: the claim is rebuilt from the re-attached VM
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
start_daemon
vs start w2
[ "$VS_RC" -ne 0 ] && grep -q "w1" "$VS_ERR" && ok "after a daemon kill -9 + restart, w1 still holds the disk" || not_ok "claim survives a daemon restart"
expect_ok "destroy w1" destroy w1
expect_ok "start r1 read-only" start r1
expect_ok "start r2 read-only (read-only sharing is fine)" start r2
expect_ok "start u1 (undo disk: the base is only read)" start u1
vs start w1
[ "$VS_RC" -ne 0 ] && grep -q "can't be attached writable" "$VS_ERR" && ok "w1 can't write a disk r1/r2/u1 read" || not_ok "w1 refused while others read"
for v in r1 r2 u1; do expect_ok "destroy $v" destroy "$v"; done
expect_ok "w1 starts once nobody holds the disk" start w1
expect_ok "destroy w1" destroy w1
finish
