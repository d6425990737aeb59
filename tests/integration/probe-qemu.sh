#!/bin/bash
# tests/integration/probe-qemu.sh — the probe guest (build/guest/probe.elf) boots under QEMU
# through its PVH note on q35 and on microvm,pcie=on, with KVM when /dev/kvm works and TCG
# otherwise, and does what the VMM tests will rely on: says "PROBE hello" first; enumerates PCI;
# reads a virtio-blk disk and prints a SHA-256 equal to the host's for the same sectors; writes,
# verifies and leaves bytes in the image file that the host reads back identically; gets bytes
# from virtio-rng; sends frames on one virtio-net NIC that another echoes back over a QEMU hub;
# inflates and deflates virtio-balloon; powers off through ACPI (QEMU exits 0). In
# probe.mode=idle it echoes a console line and powers off on the ACPI power button.
source "$(dirname "$0")/lib.sh"

PROBE=$ROOT/build/guest/probe.elf
QEMU=$(command -v qemu-system-x86_64 || true)
if [ -z "$QEMU" ]; then
    skip "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    finish
fi
if [ ! -f "$PROBE" ]; then
    quiet make -C "$ROOT" guest
fi
if [ -f "$PROBE" ]; then ok "probe guest built: $PROBE"; else not_ok "probe guest built"; finish; fi

if [ -n "${PROBE_ACCEL:-}" ]; then
    ACCEL=$PROBE_ACCEL # kvm or tcg, to force one
elif [ -r /dev/kvm ] && [ -w /dev/kvm ] &&
    timeout 20 "$QEMU" -M microvm -accel kvm -display none -nodefaults -S -no-user-config \
        -monitor none -daemonize -pidfile "$T/kvmcheck.pid" >/dev/null 2>&1; then
    kill "$(cat "$T/kvmcheck.pid")" 2>/dev/null || true
    ACCEL=kvm
else
    ACCEL=tcg
fi
echo "# accelerator: $ACCEL"
PROBE_TIMEOUT=${PROBE_TIMEOUT:-120}

# result FILE KEY — the value of "PROBE result KEY=VALUE" (empty when absent).

# expect_result FILE KEY VALUE DESC
expect_result() {
    local got
    got=$(result "$1" "$2")
    if [ "$got" = "$3" ]; then ok "$4 ($2=$got)"; else not_ok "$4 ($2='$got', expected '$3')"; fi
}

# run_probe NAME MACHINE CMDLINE QEMU-ARGS… — boot the probe, output in $T/NAME.out; sets RUN_RC.
run_probe() {
    local name=$1 machine=$2 cmdline=$3
    shift 3
    RUN_RC=0
    timeout -k 5 "$PROBE_TIMEOUT" "$QEMU" -M "$machine" -accel "$ACCEL" -m 128 -display none \
        -nodefaults -no-user-config -no-reboot -serial stdio -kernel "$PROBE" -append "$cmdline" \
        "$@" </dev/null >"$T/$name.out" 2>"$T/$name.err" || RUN_RC=$?
    echo "# $name: qemu exited $RUN_RC"
}

check_common() {
    local name=$1 out=$T/$1.out
    if [ "$RUN_RC" -eq 0 ]; then
        ok "$name: QEMU exited 0 after the probe powered off"
    else
        not_ok "$name: QEMU exited $RUN_RC (124 = timeout)"
        diag 30 <"$T/$name.err"
    fi
    if [ "$(grep -a '^PROBE' "$out" | head -n1)" = "PROBE hello" ]; then
        ok "$name: first probe line is PROBE hello"
    else
        not_ok "$name: first probe line is PROBE hello"
    fi
    if grep -aq '^PROBE ok$' "$out"; then
        ok "$name: PROBE ok"
    else
        not_ok "$name: PROBE ok"
        grep -a 'PROBE fail\|error' "$out" | diag 10
    fi
    grep -aq '^PROBE poweroff$' "$out" && ok "$name: probe powered off" ||
        not_ok "$name: probe powered off"
}

# ---- q35: every device ---------------------------------------------------------------------
DISK=$T/disk.raw
truncate -s 32M "$DISK"
put_random "$DISK" 0 $((2048 * 512)) probe-head
put_random "$DISK" $((30 * 1048576)) 65536 probe-tail
want_head=$(dd if="$DISK" bs=512 count=2048 status=none | sha256sum | cut -d' ' -f1)

run_probe q35 q35 "probe.tests=io,blk,rng,net,balloon probe.iters=2000 probe.blk.checksum=0-2048 \
probe.blk.offset=8192 probe.blk.size=4M probe.blk.rand_ops=500 probe.net.count=200" \
    -drive if=none,id=d0,file="$DISK",format=raw,cache=none,aio=threads \
    -device virtio-blk-pci,drive=d0,serial=probe-disk0 \
    -device virtio-rng-pci \
    -netdev hubport,id=h0,hubid=0 -netdev hubport,id=h1,hubid=0 \
    -device virtio-net-pci,netdev=h0,mac=52:54:00:00:aa:01 \
    -device virtio-net-pci,netdev=h1,mac=52:54:00:00:aa:02 \
    -device virtio-balloon-pci
OUT=$T/q35.out
check_common q35
grep -aq '^PROBE pci 00:..\.. 1af4:.* virtio-blk$' "$OUT" && ok "q35: PCI enumeration lists virtio-blk" ||
    not_ok "q35: PCI enumeration lists virtio-blk"
expect_result "$OUT" blk.checksum.0-2048 "$want_head" "q35: guest SHA-256 of sectors 0-2048 equals the host's"
expect_result "$OUT" blk.serial probe-disk0 "q35: virtio-blk serial (GET_ID)"
expect_result "$OUT" blk.capacity_sectors $((32 * 2048)) "q35: virtio-blk capacity"
expect_result "$OUT" blk.seq_verify ok "q35: sequential write then read-back verified"
expect_result "$OUT" blk.rand_verify ok "q35: 4 KiB random write then read-back verified"
expect_result "$OUT" blk.write_zeroes ok "q35: write-zeroes reads back as zeros"
region=$(result "$OUT" blk.region)
if [ -n "$region" ]; then
    start=${region%-*} end=${region#*-}
    host_region=$(dd if="$DISK" bs=512 skip="$start" count=$((end - start)) status=none | sha256sum | cut -d' ' -f1)
    expect_result "$OUT" "blk.region.$region" "$host_region" "q35: bytes the guest wrote landed in the image file"
else
    not_ok "q35: probe reported its write region"
fi
tail_now=$(dd if="$DISK" bs=65536 skip=480 count=1 status=none | sha256sum)
tail_was=$(prng probe-tail 65536 | sha256sum)
[ "$tail_now" = "$tail_was" ] && ok "q35: bytes outside the write region untouched" ||
    not_ok "q35: bytes outside the write region untouched"
[ "$(result "$OUT" rng.bytes)" = 4096 ] && [ "$(result "$OUT" rng.distinct_bytes)" -gt 1 ] &&
    ok "q35: virtio-rng returned 4096 bytes, $(result "$OUT" rng.distinct_bytes) distinct values" ||
    not_ok "q35: virtio-rng returned varied bytes"
expect_result "$OUT" net.mac 52:54:00:00:aa:01 "q35: virtio-net MAC from config space"
expect_result "$OUT" net.rx_replies 200 "q35: every frame sent on net was echoed by net1 over the hub"
expect_result "$OUT" balloon.inflated_pages 256 "q35: balloon inflated by 256 pages"
expect_result "$OUT" balloon.deflated_pages 256 "q35: balloon deflated again"
cycles=$(result "$OUT" io.exit_cycles)
[ -n "$cycles" ] && [ "$cycles" -gt 0 ] && ok "q35: port-I/O exit benchmark ($cycles cycles/exit)" ||
    not_ok "q35: port-I/O exit benchmark"
echo "# q35 numbers: $(grep -a '^PROBE result' "$OUT" | grep -E 'tsc_khz|exit_ns|kib_per_s|iops|pps' | cut -d' ' -f3 | tr '\n' ' ')"

# ---- microvm with a PCIe host (ECAM, BARs placed by the probe, hardware-reduced ACPI) --------
run_probe microvm microvm,pcie=on "probe.tests=blk,rng probe.blk.checksum=0-2048 probe.blk.write=0 \
probe.blk.size=1M probe.blk.rand_ops=100" \
    -drive if=none,id=d0,file="$DISK",format=raw,readonly=on -device virtio-blk-pci,drive=d0 \
    -device virtio-rng-pci
check_common microvm
expect_result "$T/microvm.out" blk.checksum.0-2048 "$want_head" "microvm: guest SHA-256 of sectors 0-2048 equals the host's"
expect_result "$T/microvm.out" blk.readonly 1 "microvm: read-only disk seen as read-only"

# ---- idle mode: console echo and the ACPI power button --------------------------------------
if command -v python3 >/dev/null; then
    mkfifo "$T/idle.in"
    exec 3<>"$T/idle.in"
    timeout -k 5 "$PROBE_TIMEOUT" "$QEMU" -M q35 -accel "$ACCEL" -m 128 -display none -nodefaults \
        -no-user-config -no-reboot -serial stdio -monitor unix:"$T/mon.sock",server=on,wait=off \
        -kernel "$PROBE" -append "probe.mode=idle" <&3 >"$T/idle.out" 2>"$T/idle.err" &
    qpid=$!
    for _ in $(seq 1 300); do grep -aq '^PROBE idle' "$T/idle.out" && break; sleep 0.1; done
    grep -aq '^PROBE idle' "$T/idle.out" && ok "idle: probe reports PROBE idle" || not_ok "idle: probe reports PROBE idle"
    printf '\nping-4711\n' >&3
    for _ in $(seq 1 100); do grep -aq '^PROBE echo' "$T/idle.out" && break; sleep 0.1; done
    grep -aq '^PROBE echo ping-4711$' "$T/idle.out" && ok "idle: console line echoed" ||
        { not_ok "idle: console line echoed"; grep -a '^PROBE echo' "$T/idle.out" | diag 3; }
    python3 - "$T/mon.sock" <<'PY' || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(0.2)
s.sendall(b"system_powerdown\n")
time.sleep(0.5)
PY
    rc=0
    wait "$qpid" || rc=$?
    exec 3>&-
    grep -aq '^PROBE powerbutton$' "$T/idle.out" && ok "idle: ACPI power button seen" ||
        not_ok "idle: ACPI power button seen"
    [ "$rc" -eq 0 ] && ok "idle: QEMU exited 0 after the power button" ||
        not_ok "idle: QEMU exited $rc after the power button"
else
    skip "python3 missing: idle-mode monitor test not run"
fi

finish
