#!/bin/bash
# tests/integration/mgmt-disks.sh — disk write locks across VMs, with the probe guest: a disk one
# running VM may write can't be started writable (nor read-only) in another, the error names the
# holder; read-only sharing works; the lock goes with the VM's stop and survives a daemon restart.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need curl

mkdef() { # NAME DISK-FILE EXTRA-DISK-LINES
    {
        probe_def "$1"
        printf '[disk]\nfile = %s\nformat = raw\n%s\n' "$2" "$3"
    } >"$T/$1.vm"
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
