#!/bin/bash
# tests/integration/vmm-enospc.sh — a full host disk pauses the VM and never corrupts its disk.
# The probe guest writes 32 MiB through virtio-blk to an image on a 20 MiB tmpfs (qcow2, then
# raw). The VMM must pause the VM when the file system fills (status "paused" with the reason,
# one warning line), with nothing reported to the guest as an error; once the tmpfs is grown and
# the VM resumed, the guest finishes its whole workload with every byte verified, powers off
# (exit 0), and the image holds exactly what the guest last read back (its SHA-256 of the region).
# A client that sent {"cmd":"watch"} is told of the pause (with the reason) and of the resume.
set -euo pipefail
IT_TIMEOUT=${IT_TIMEOUT:-120}
source "$(dirname "${BASH_SOURCE[0]}")/vmm-common.bash"

if [ "$(id -u)" -ne 0 ]; then
    skip "the disk-full test needs root to mount a small tmpfs"
    finish
fi

# watch SOCK OUT — in the background: connect as soon as SOCK exists, send watch, copy every line
# the VMM sends to OUT until it hangs up
watch() {
    python3 - "$1" "$2" <<'PY' &
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
end = time.time() + 60
while not os.path.exists(path) and time.time() < end:
    time.sleep(0.02)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(b'{"cmd":"watch"}\n')
with open(out, 'ab', buffering=0) as f:
    while True:
        d = s.recv(65536)
        if not d:
            break
        f.write(d)
PY
}

for fmt in qcow2 raw; do
    small=$T/small-$fmt
    mkdir -p "$small"
    if ! mount -t tmpfs -o size=20M "vessel-enospc-$fmt" "$small" 2>"$T/mount.err"; then
        skip "mount -t tmpfs failed: $(head -1 "$T/mount.err")"
        continue
    fi
    IT_MOUNTS+=("$small")
    disk=$small/disk.$fmt
    "$VESSEL_IMG" img create -q -f "$fmt" "$disk" 64M >/dev/null
    sock=$T/$fmt.sock log=$T/$fmt.log err=$T/$fmt.err
    timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --memory 128M --api "unix:$sock" \
        --disk "$disk,format=$fmt" --console "file:$log" \
        --cmdline "probe.tests=blk probe.blk.size=32M probe.blk.rand_ops=500" 2>"$err" &
    pid=$!
    watch "$sock" "$T/$fmt.watch"
    status=""
    for _ in $(seq 600); do
        if [ -S "$sock" ]; then
            status=$(api "$sock" '{"cmd":"status"}' 2>/dev/null || true)
            case $status in *'"state":"paused"'*) break ;; esac
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ $status == *'"state":"paused"'* && $status == *'"reason":"host disk full writing'*"disk.$fmt"* ]]; then
        ok "$fmt: the full tmpfs paused the VM, status names the disk ($(df -k --output=avail "$small" | tail -1 | tr -d ' ') KiB left)"
    else
        not_ok "$fmt: VM paused on the full disk (status: ${status:-none})"
        diag <"$err"
    fi
    if [ "$(grep -c "VM paused: host disk full" "$err")" -eq 1 ]; then
        ok "$fmt: one warning line on stderr"
    else
        not_ok "$fmt: one 'VM paused: host disk full' line on stderr"
        diag <"$err"
    fi
    if grep -aq "PROBE fail" "$log"; then
        not_ok "$fmt: the guest saw no error while the disk was full"
        grep -a "PROBE fail" "$log" | diag 3
    else
        ok "$fmt: the guest saw no error while the disk was full"
    fi
    # a resume with the disk still full pauses again, with nothing lost
    api "$sock" '{"cmd":"resume"}' >/dev/null || true
    sleep 1
    status=$(api "$sock" '{"cmd":"status"}' 2>/dev/null || true)
    if [[ $status == *'"state":"paused"'* ]] && ! grep -aq "PROBE fail" "$log"; then
        ok "$fmt: resumed with the disk still full: paused again"
    else
        not_ok "$fmt: resumed with the disk still full: paused again (status: ${status:-none})"
    fi
    mount -o remount,size=96M "$small"
    api "$sock" '{"cmd":"resume"}' >/dev/null || true
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" -eq 0 ] && grep -aq "^PROBE result blk.seq_verify=ok" "$log" &&
        grep -aq "^PROBE result blk.rand_verify=ok" "$log" && ! grep -aq "PROBE fail" "$log"; then
        ok "$fmt: after space was freed and resume, the guest finished with every byte verified (exit 0)"
    else
        not_ok "$fmt: guest finished after resume (exit $rc)"
        grep -a "PROBE fail" "$log" | diag 3
        diag <"$err"
    fi
    if grep -q '"event":"state","state":"paused","reason":"host disk full writing' "$T/$fmt.watch" &&
        grep -q '"event":"state","state":"running"' "$T/$fmt.watch"; then
        ok "$fmt: the watching client was told of the pause (with the reason) and the resume"
    else
        not_ok "$fmt: watch events for the pause and the resume"
        diag <"$T/$fmt.watch"
    fi
    region=$(result "$log" blk.region)
    want=$(result "$log" "blk.region.$region")
    s=${region%-*} e=${region#*-}
    got=""
    if [ -n "$region" ]; then
        qemu-img convert -f "$fmt" -O raw "$disk" "$T/out.raw"
        got=$(dd if="$T/out.raw" bs=512 skip="$s" count=$((e - s)) status=none | sha256sum | cut -d' ' -f1)
        rm -f "$T/out.raw"
    fi
    if [ -n "$want" ] && [ "$got" = "$want" ]; then
        ok "$fmt: the image holds what the guest read back last (sectors $region)"
    else
        not_ok "$fmt: image region $region: guest ${want:-none}, image ${got:-none}"
    fi
    if [ "$fmt" = qcow2 ]; then
        assert_qemu_clean "qcow2: qemu-img check finds no corruption after the disk-full pause" "$disk"
    fi
    if grep -qE "$SANITIZER_RE" "$err"; then
        not_ok "$fmt: sanitizer report"
        diag 40 <"$err"
    fi
done
finish
