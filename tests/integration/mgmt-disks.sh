#!/bin/bash
# tests/integration/mgmt-disks.sh — disk write locks across VMs, with the probe guest: a disk one
# running VM may write can't be started writable (nor read-only) in another, the error names the
# holder; read-only sharing works; the lock goes with the VM's stop and survives a daemon restart.
# A full host disk: the VMM pauses the VM by itself and the daemon learns it at once (state paused,
# the reason as last_error, a `paused` event for hooks); after space is freed, `vessel resume` lets
# the guest finish its writes and power off.
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

# ---- a full host disk ---------------------------------------------------------------------------
full=$T/full
mkdir -p "$full" "$STATE/hooks"
if [ "$(id -u)" -ne 0 ] || ! mount -t tmpfs -o size=12M vessel-mgmt-full "$full" 2>/dev/null; then
    skip "disk-full pause: needs root to mount a small tmpfs"
else
    IT_MOUNTS+=("$full")
    printf '#!/bin/sh\necho "$1 $2 $3" >>%s\n' "$T/hooks.txt" >"$STATE/hooks/10-record"
    chmod +x "$STATE/hooks/10-record"
    quiet "$VESSEL" img create -q -f qcow2 "$full/f1.qcow2" 64M
    {
        probe_def f1 "probe.mode=run probe.tests=blk probe.blk.size=24M probe.blk.rand_ops=100"
        printf '[disk]\nfile = %s\nformat = qcow2\n' "$full/f1.qcow2"
    } >"$T/f1.vm"
    expect_ok "define f1 (its disk on a 12 MiB tmpfs)" define "$T/f1.vm"
    expect_ok "start f1" start f1
    if wait_state f1 paused 60 && [[ "$(field f1 last_error)" == "host disk full writing $full/f1.qcow2"* ]]; then
        ok "the disk filled: the daemon shows f1 paused, last_error names the disk"
    else
        not_ok "f1 paused on the full disk (state $(field f1 state), last_error $(field f1 last_error))"
    fi
    wait_for "$T/hooks.txt" "^f1 paused host disk full" 10 && ok "a hook saw 'paused' with the reason" ||
        not_ok "hook saw 'f1 paused host disk full…'"
    mount -o remount,size=96M "$full"
    expect_ok "resume f1 once there is space" resume f1
    if wait_state f1 shutoff 60 && grep -aq "^PROBE result blk.rand_verify=ok" "$T/f1.console" &&
        ! grep -aq "PROBE fail" "$T/f1.console"; then
        ok "f1 finished its writes with every byte verified and powered off"
    else
        not_ok "f1 finished after resume (state $(field f1 state))"
        grep -a "PROBE fail" "$T/f1.console" | diag 3
    fi
    assert_qemu_clean "f1's qcow2 after the disk-full pause" "$full/f1.qcow2"
fi
finish
