#!/bin/bash
# tests/integration/vmm-save.sh — save a running VM to a file and restore it (`xm save` /
# `xm restore`): an idle probe guest with a raw and a qcow2 disk and virtio-rng is saved over the
# API (vessel-vmm exits 5, the state file is sparse: far smaller on disk than guest RAM), then
# restored from the file alone. The restored guest must be the same one, carrying on: it answers
# console input, its idle counter is past the value it had before the save, and it reads back
# through virtio-blk what it had written before. Then poweroff over the API (exit 0). Broken state
# files (truncated, garbage, wrong magic/version/size, missing or resized disk) give one line and
# exit 1, with no sanitizer report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/vmm-common.bash"


truncate -s 32M "$T/disk.raw"
if ! "$VESSEL_IMG" img create -q -f qcow2 "$T/disk.qcow2" 32M >/dev/null 2>&1; then
    qemu-img create -q -f qcow2 "$T/disk.qcow2" 32M
fi
CMDLINE="probe.mode=idle probe.tests=blk,rng probe.blk.size=1M probe.blk.rand_ops=50"
CMDLINE="$CMDLINE probe.blk.offset=2048 probe.blk.checksum=2048-4096"
MEM_MIB=128

# ---- run, then save ---------------------------------------------------------------------------
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --memory $MEM_MIB --rng \
    --disk "$T/disk.raw,format=raw" --disk "$T/disk.qcow2,format=qcow2" \
    --console "unix:$T/con1.sock" --api "unix:$T/api1.sock" --cmdline "$CMDLINE" \
    >"$T/run1.out" 2>"$T/run1.err" &
pid=$!
con "$T/con1.sock" ticks "idle.ticks=" 120 >/dev/null
out=$(con "$T/con1.sock" blksum "idle.blksum=" 60)
sum0=$(value "$out" blk.checksum.2048-4096)
sum1=$(value "$out" blk1.checksum.2048-4096)
if [ -n "$sum0" ] && [ -n "$sum1" ] && [ "$(value "$out" idle.blksum)" = ok ]; then
    ok "idle probe up: it wrote and read back both disks"
else
    not_ok "idle probe up and answering (sums '$sum0' '$sum1')"
    diag 20 <<<"$out"
fi
host_sum=$(dd if="$T/disk.raw" bs=512 skip=2048 count=2048 status=none | sha256sum | cut -d' ' -f1)
[ "$host_sum" = "$sum0" ] && ok "raw disk holds what the guest wrote" ||
    not_ok "raw disk region on the host ($host_sum) = guest's ($sum0)"

reply=$(api "$T/api1.sock" "{\"cmd\":\"save\",\"path\":\"$T/no/such/dir/vm.save\"}")
out=$(con "$T/con1.sock" still-there "PROBE echo still-there" 30)
if echo "$reply" | grep -q '"ok":false' && grep -aq "^PROBE echo still-there" <<<"$out"; then
    ok "a save that cannot write its file fails and the VM keeps running: $reply"
else
    not_ok "failed save: reply '$reply', guest answering: $(tail -n1 <<<"$out")"
fi
sleep 1 # let the idle counter grow, so a restored guest starting from zero would show
out=$(con "$T/con1.sock" ticks "idle.ticks=" 30)
ticks1=$(value "$out" idle.ticks)
reply=$(api "$T/api1.sock" "{\"cmd\":\"save\",\"path\":\"$T/vm.save\"}")
rc=0
wait "$pid" || rc=$?
if echo "$reply" | grep -q '"ok":true' && [ "$rc" -eq 5 ]; then
    ok "save over the API: $reply; vessel-vmm exited 5 (saved)"
else
    not_ok "save: reply '$reply', exit $rc (want 5)"
    diag 10 <"$T/run1.err"
fi
grep -qE "$SANITIZER_RE" "$T/run1.err" && { not_ok "sanitizer report while saving"; diag 40 <"$T/run1.err"; }
if [ -f "$T/vm.save" ]; then
    alloc_kib=$(du -k "$T/vm.save" | cut -f1)
    apparent=$(stat -c %s "$T/vm.save")
    echo "# state file: $alloc_kib KiB on disk, apparent size $apparent bytes, guest RAM $MEM_MIB MiB"
    if [ "$alloc_kib" -lt $((MEM_MIB * 1024 / 8)) ]; then
        ok "state file is sparse: $alloc_kib KiB on disk for $MEM_MIB MiB of RAM"
    else
        not_ok "state file is sparse ($alloc_kib KiB on disk for $MEM_MIB MiB of RAM)"
    fi
else
    not_ok "state file $T/vm.save written"
fi
[ ! -e "$T/vm.save.tmp" ] && ok "no temporary file left behind" || not_ok "vm.save.tmp left behind"

# ---- restore ----------------------------------------------------------------------------------
cp --sparse=always "$T/vm.save" "$T/vm2.save"
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --restore "$T/vm.save" --console "unix:$T/con2.sock" \
    --api "unix:$T/api2.sock" >"$T/run2.out" 2>"$T/run2.err" &
pid=$!
out=$(con "$T/con2.sock" ticks "idle.ticks=" 60)
ticks2=$(value "$out" idle.ticks)
if [ -n "$ticks2" ] && [ -n "$ticks1" ] && [ "$ticks1" -gt 10 ] && [ "$ticks2" -gt "$ticks1" ]; then
    ok "the guest carried on: idle ticks $ticks1 at the save, $ticks2 right after the restore"
else
    not_ok "idle ticks grow across save/restore ('$ticks1' -> '$ticks2')"
    diag 10 <"$T/run2.err"
fi
out=$(con "$T/con2.sock" "hello-again" "PROBE echo hello-again" 60)
if grep -aq "^PROBE echo hello-again" <<<"$out"; then
    ok "restored guest answers console input"
else
    not_ok "restored guest answers console input"
    diag 10 <"$T/run2.err"
fi
out=$(con "$T/con2.sock" blksum "idle.blksum=" 60)
if [ "$(value "$out" blk.checksum.2048-4096)" = "$sum0" ] &&
    [ "$(value "$out" blk1.checksum.2048-4096)" = "$sum1" ]; then
    ok "after restore the guest reads back what it wrote before the save (raw and qcow2)"
else
    not_ok "disk data after restore: '$(value "$out" blk.checksum.2048-4096)' '$(value "$out" blk1.checksum.2048-4096)' vs '$sum0' '$sum1'"
    diag 20 <<<"$out"
fi
st=$(api "$T/api2.sock" '{"cmd":"status"}')
echo "$st" | grep -q '"state":"running"' && echo "$st" | grep -q '"memory":134217728' &&
    ok "status of the restored VM: running, $MEM_MIB MiB" || not_ok "status after restore: $st"
api "$T/api2.sock" '{"cmd":"poweroff"}' >/dev/null
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 0 ] && ok "poweroff of the restored VM: exit 0" || { not_ok "poweroff after restore: exit $rc"; diag 10 <"$T/run2.err"; }
if grep -qE "$SANITIZER_RE" "$T/run2.err"; then
    not_ok "sanitizer report in the restored VMM"
    diag 40 <"$T/run2.err"
fi

# ---- live virtqueues across a restore: two vCPUs and the balloon --------------------------------
# In idle mode the balloon driver keeps its queues running, so after the restore the host's new
# target must reach the guest through the queue state that came out of the file.
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --cpus 2 --memory 256 --balloon \
    --console "file:$T/b1.log" --api "unix:$T/b1.sock" \
    --cmdline "probe.mode=idle probe.balloon.pool_pages=8192" 2>"$T/b1.err" &
pid=$!
for _ in $(seq 300); do grep -aq "^PROBE idle" "$T/b1.log" 2>/dev/null && [ -S "$T/b1.sock" ] && break; sleep 0.1; done
api "$T/b1.sock" '{"cmd":"balloon","pages":1024}' >/dev/null || true
for _ in $(seq 200); do grep -aq "^PROBE balloon pages=1024" "$T/b1.log" && break; sleep 0.1; done
api "$T/b1.sock" "{\"cmd\":\"save\",\"path\":\"$T/b.save\"}" >/dev/null || true
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 5 ] && ok "2 vCPUs + balloon (1024 pages inflated): saved, exit 5" || not_ok "balloon VM save: exit $rc"
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --restore "$T/b.save" --console "file:$T/b2.log" \
    --api "unix:$T/b2.sock" 2>"$T/b2.err" &
pid=$!
for _ in $(seq 300); do [ -S "$T/b2.sock" ] && break; sleep 0.1; done
api "$T/b2.sock" '{"cmd":"balloon","pages":2048}' >/dev/null || true
if wait_ok=$(for _ in $(seq 200); do grep -aq "^PROBE balloon pages=2048" "$T/b2.log" 2>/dev/null && echo y && break; sleep 0.1; done) && [ "$wait_ok" = y ] &&
    api "$T/b2.sock" '{"cmd":"stats"}' | grep -q '"actual_pages":2048'; then
    ok "restored balloon: the guest followed a new target (2048 pages) through its restored queues"
else
    not_ok "restored balloon follows a new target"
    diag 10 <"$T/b2.err"
fi
api "$T/b2.sock" '{"cmd":"poweroff"}' >/dev/null || true
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 0 ] && ok "restored 2-vCPU VM powers off: exit 0" || not_ok "restored 2-vCPU VM poweroff: exit $rc"
if grep -qE "$SANITIZER_RE" "$T/b1.err" "$T/b2.err"; then
    not_ok "sanitizer report (balloon save/restore)"
    cat "$T/b1.err" "$T/b2.err" | diag 40
fi

# ---- a state file is untrusted input ----------------------------------------------------------
size=$(stat -c %s "$T/vm2.save")
head -c $((size / 2)) "$T/vm2.save" >"$T/half.save"
expect_error "truncated state file" half.save "truncated" --restore "$T/half.save" --console none
head -c 3000 "$T/vm2.save" >"$T/short.save"
expect_error "state file cut inside its device state" short.save "truncated" --restore "$T/short.save" --console none
head -c 1048576 /dev/urandom >"$T/garbage.save"
expect_error "garbage state file" garbage.save "not a vessel state file" --restore "$T/garbage.save" --console none
: >"$T/empty.save"
expect_error "empty state file" empty.save "too short" --restore "$T/empty.save" --console none
cp --sparse=always "$T/vm2.save" "$T/version.save"
printf '\x63' | dd of="$T/version.save" bs=1 seek=8 conv=notrunc status=none
expect_error "unknown version" version.save "version 99" --restore "$T/version.save" --console none
cp --sparse=always "$T/vm2.save" "$T/mem.save"
printf '\x00\x00\x00\x10' | dd of="$T/mem.save" bs=1 seek=16 conv=notrunc status=none
expect_error "memory size that disagrees with the file" mem.save "truncated|memory|disagrees" \
    --restore "$T/mem.save" --console none
cp --sparse=always "$T/vm2.save" "$T/flip.save"
printf '\xff\xff\xff\x7f' | dd of="$T/flip.save" bs=1 seek=60 conv=notrunc status=none
expect_error "corrupt section length" flip.save "corrupt|truncated" --restore "$T/flip.save" --console none
mv "$T/disk.qcow2" "$T/moved.qcow2"
expect_error "a disk of the saved VM is missing" disk.qcow2 "no such file" --restore "$T/vm2.save" --console none
mv "$T/moved.qcow2" "$T/disk.qcow2"
truncate -s 64M "$T/disk.raw"
expect_error "a disk of the saved VM changed size" disk.raw "size changed" --restore "$T/vm2.save" --console none
expect_error "restore with machine flags" vessel-vmm "only" --restore "$T/vm2.save" --rng

finish
