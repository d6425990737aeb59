#!/bin/bash
# tests/integration/vmm-boot.sh — vessel-vmm boots PVH guests and ends the way the guest asked:
# tiny hand-made PVH ELFs (serial hello + ACPI poweroff, i8042 reset, isa-debug-exit, triple
# fault), the probe guest (virtio-blk data landing in the image, the CPUID cache, the control
# API), and bad inputs that must give one clear line of error and no crash.
set -euo pipefail
IT_TIMEOUT=${IT_TIMEOUT:-60}
VMM_NO_PROBE=1 # the hand-made guests below need no probe; the probe's part checks for it
source "$(dirname "${BASH_SOURCE[0]}")/vmm-common.bash"

# mini_guest NAME ASM — a PVH ELF whose 32-bit entry runs ASM after printing "hello NAME".
mini_guest() {
    local name=$1 body=$2
    cat >"$T/$name.S" <<ASM
.section .note.Xen, "a", @note
.align 4
.long 4, 4, 18
.asciz "Xen"
.long _start
.text
.code32
.globl _start
_start:
  mov \$0x3f8, %dx
  mov \$msg, %esi
1: lodsb
  test %al, %al
  jz 2f
  out %al, %dx
  jmp 1b
2:
$body
3: hlt
  jmp 3b
msg: .asciz "hello $name\n"
.align 8
idt0: .word 0
  .long 0
ASM
    quiet gcc -c "$T/$name.S" -o "$T/$name.o"
    quiet ld -m elf_x86_64 -N --no-warn-rwx-segments -Ttext=0x100000 -o "$T/$name.elf" "$T/$name.o"
}

mini_guest poweroff 'mov $0x604, %dx
  mov $0x3400, %ax
  out %ax, %dx'
mini_guest reset 'mov $0xfe, %al
  out %al, $0x64'
mini_guest debugexit 'mov $5, %al
  out %al, $0xf4'
mini_guest crash 'lidt idt0
  int $3'

# ---- exit paths ----
vs --kernel "$T/poweroff.elf" --console stdio
if [ "$VS_RC" -eq 0 ] && grep -q "hello poweroff" "$VS_OUT"; then
    ok "PVH ELF prints on COM1 and ACPI S5 exits 0"
else
    not_ok "PVH hello/poweroff (exit $VS_RC)"
    diag <"$VS_OUT"
fi
expect_rc 2 "i8042 reset with --no-reboot exits 2" --kernel "$T/reset.elf" --no-reboot
expect_rc 21 "isa-debug-exit value 5 exits 16+5" --kernel "$T/debugexit.elf"
vs --kernel "$T/crash.elf"
# Hardware KVM reports a triple fault; kvm_pvm's emulator gives up on the same code first.
if [ "$VS_RC" -eq 3 ] && grep -qE "triple fault|internal error" "$VS_ERR" && grep -q "rip=" "$VS_ERR"; then
    ok "guest crash (empty IDT + int3) exits 3 and reports the registers"
else
    not_ok "triple fault (exit $VS_RC)"
fi
vs --kernel "$T/poweroff.elf" --cpus 2 --memory 64M --console "file:$T/console.log"
if [ "$VS_RC" -eq 0 ] && grep -q "hello poweroff" "$T/console.log"; then
    ok "2 vCPUs, --console file: writes the console to the file"
else
    not_ok "console to file (exit $VS_RC)"
fi

# ---- bad input ----
head -c 100000 /dev/urandom >"$T/garbage.bin"
expect_error "a file that is not a kernel" "$T/garbage.bin" "not a kernel" --kernel "$T/garbage.bin"
expect_error "missing kernel file" "$T/nonexistent" "no such file" --kernel "$T/nonexistent"
truncate -s 300M "$T/big-initrd.img"
expect_error "initrd too big for guest memory" "big-initrd.img" "does not fit" \
    --kernel "$T/poweroff.elf" --memory 128M --initrd "$T/big-initrd.img"
expect_error "memory over the host's" "memory" "more than the host" \
    --kernel "$T/poweroff.elf" --memory 64T
expect_error "unknown console kind" "console" "expected stdio" \
    --kernel "$T/poweroff.elf" --console serial:9
cp "$T/poweroff.elf" "$T/trunc.elf"
truncate -s 100 "$T/trunc.elf"
expect_error "truncated ELF" "trunc.elf" "program header|outside|truncated" --kernel "$T/trunc.elf"

# ---- the probe guest ----
if [ ! -f "$PROBE" ]; then
    skip "probe guest $PROBE not built (make guest)"
    finish
fi
truncate -s 64M "$T/disk.raw"
vs --kernel "$PROBE" --disk "$T/disk.raw" --cmdline "probe.mode=run"
if [ "$VS_RC" -eq 0 ] && grep -q "^PROBE hello" "$VS_OUT" && grep -q "^PROBE ok" "$VS_OUT"; then
    ok "probe boots via PVH, passes its tests and powers off (exit 0)"
else
    not_ok "probe run (exit $VS_RC)"
    grep -E "PROBE (fail|hello|ok)" "$VS_OUT" | diag
fi
if grep -q "^PROBE result blk.devices=1" "$VS_OUT" && [ "$(tr -d '\0' <"$T/disk.raw" | head -c 1 | wc -c)" -eq 1 ]; then
    ok "virtio-blk: bytes the guest wrote landed in the raw image"
else
    not_ok "virtio-blk writes reached the image"
fi
vs --kernel "$PROBE" --disk "$T/disk.raw,readonly" --cmdline "probe.mode=run probe.tests=blk"
if grep -q "^PROBE result blk.readonly=1" "$VS_OUT"; then
    ok "--disk …,readonly shows the guest a read-only disk"
else
    not_ok "read-only disk (exit $VS_RC)"
    grep -E "PROBE" "$VS_OUT" | tail -5 | diag
fi

# ---- a kernel file that shrinks while it is loaded (`cp` over it as a VM starts) ----
# The kernel is mapped: gdb stops the VMM once the mapping exists and truncates the file, so the
# segments past 5000 bytes are gone when they are copied. One line of error, no SIGBUS death.
if command -v gdb >/dev/null; then
    cp "$PROBE" "$T/shrink.elf"
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 timeout -k 5 "$IT_TIMEOUT" gdb -q -batch \
        -ex 'set pagination off' -ex 'handle SIGBUS nostop noprint pass' -ex 'break boot_load_image' \
        -ex run -ex "shell truncate -s 5000 $T/shrink.elf" -ex continue \
        --args "$VESSEL" --kernel "$T/shrink.elf" --memory 128M </dev/null >"$T/gdb.out" 2>&1 || true
    if grep -q "Breakpoint 1, .*boot_load_image" "$T/gdb.out" &&
        grep -q "vessel-vmm: --kernel .*shrink.elf: the file shrank while it was being loaded" "$T/gdb.out" &&
        grep -q "exited with code 01" "$T/gdb.out"; then
        ok "kernel truncated while loading: one line of error, exit 1"
    else
        not_ok "kernel truncated while loading"
        grep -v '^\[' "$T/gdb.out" | tail -8 | diag
    fi
else
    skip "kernel truncated while loading: no gdb to stop the VMM at the right point (apt-get install gdb)"
fi

# ---- the CPUID table's cache (cpuid.c) ----
# poison FILE MODE — rewrite a valid cache so the guest's TSC rate comes from a made-up hypervisor
# leaf 0x40000010 (1234567 kHz; leaf 0x15 blanked), keeping the key: only a VMM that reads the
# cache can show the guest that rate. MODE: the file's mode afterwards.
poison() {
    python3 - "$1" <<'PY'
import struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
head, n = data[:160], struct.unpack_from("<I", data, 152)[0]
entries = [list(struct.unpack_from("<10I", data, 160 + 40 * i)) for i in range(n)]
entries = [e for e in entries if e[0] != 0x40000010]
for e in entries:
    if e[0] == 0x40000000:
        e[3] = 0x40000010
    if e[0] == 0x15:
        e[3:6] = [0, 0, 0]
entries.append([0x40000010, 0, 0, 1234567, 0, 0, 0, 0, 0, 0])
struct.pack_into("<I", head, 152, len(entries))
out = bytes(head) + b"".join(struct.pack("<10I", *e) for e in entries)
open(path, "wb").write(out)
PY
    chmod "$2" "$1"
}
tsc_run() { # what the guest measured its TSC at, with VESSEL_CPUID_CACHE=$1
    VESSEL_CPUID_CACHE=$1 vs --kernel "$PROBE" --cmdline "probe.tests=io probe.iters=10" >&2
    result "$VS_OUT" tsc_khz
}
CACHE=$T/cpuid.cache
first=$(tsc_run "$CACHE")
size=$(stat -c %s "$CACHE" 2>/dev/null || echo 0)
if [ -n "$first" ] && [ "$size" -gt 160 ] && [ $(((size - 160) % 40)) -eq 0 ]; then
    ok "the first VMM writes KVM's CPUID table to the cache ($(((size - 160) / 40)) leaves)"
else
    not_ok "CPUID cache written (size $size, guest tsc '$first')"
fi
poison "$CACHE" 644
if [ "$(tsc_run "$CACHE")" = 1234567 ]; then
    ok "the next VMM takes the table from the cache (a poisoned leaf reaches the guest)"
else
    not_ok "CPUID cache used (guest tsc $(result "$VS_OUT" tsc_khz))"
fi
if [ "$(tsc_run off)" != 1234567 ] && [ "$VS_RC" -eq 0 ]; then
    ok "VESSEL_CPUID_CACHE=off asks KVM instead"
else
    not_ok "VESSEL_CPUID_CACHE=off (exit $VS_RC, tsc $(result "$VS_OUT" tsc_khz))"
fi
poison "$CACHE" 666
t=$(tsc_run "$CACHE")
if [ -n "$t" ] && [ "$t" != 1234567 ] && [ "$(stat -c %a "$CACHE")" = 644 ]; then
    ok "a cache others can write is not trusted, and is replaced"
else
    not_ok "world-writable CPUID cache (tsc $t, mode $(stat -c %a "$CACHE"))"
fi
poison "$CACHE" 644
python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(80); f.write(b"X")' "$CACHE" # boot_id
t=$(tsc_run "$CACHE")
if [ -n "$t" ] && [ "$t" != 1234567 ]; then
    ok "a cache from another boot (different key) is not used"
else
    not_ok "CPUID cache with a foreign key (tsc $t)"
fi
for bad in garbage truncated; do
    poison "$CACHE" 644
    case $bad in
    garbage) head -c 3200 /dev/urandom >"$CACHE" ;;
    truncated) truncate -s -7 "$CACHE" ;;
    esac
    t=$(tsc_run "$CACHE")
    if [ "$VS_RC" -eq 0 ] && [ -n "$t" ] && [ "$t" != 1234567 ] && [ "$(stat -c %s "$CACHE")" -eq "$size" ]; then
        ok "a $bad CPUID cache is ignored and rewritten; the VM boots"
    else
        not_ok "$bad CPUID cache (exit $VS_RC, tsc $t, size $(stat -c %s "$CACHE"))"
    fi
done

# ---- control API on an idle probe ----
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --cmdline "probe.mode=idle" \
    --api "unix:$T/api.sock" --console "file:$T/idle.log" 2>"$T/idle.err" &
pid=$!
for _ in $(seq 100); do [ -S "$T/api.sock" ] && grep -q "PROBE idle" "$T/idle.log" 2>/dev/null && break; sleep 0.1; done
out=$(api "$T/api.sock" status pause status stats resume bogus 2>&1 || true)
echo "$out" | sed -e 's/^/#   /' | cut -c1-200
if echo "$out" | sed -n 1p | grep -q '"state":"running"' && echo "$out" | sed -n 3p | grep -q '"state":"paused"' &&
    echo "$out" | sed -n 4p | grep -q '"cpu_time_ns"' && echo "$out" | sed -n 6p | grep -q '"ok":false'; then
    ok "API: status, pause, stats, resume, unknown command"
else
    not_ok "API answers"
fi
t1=$(api "$T/api.sock" stats | grep -o '"cpu_time_ns":[0-9]*' | head -1 | cut -d: -f2)
api "$T/api.sock" pause >/dev/null
p1=$(api "$T/api.sock" stats | grep -o '"cpu_time_ns":[0-9]*' | head -1 | cut -d: -f2)
sleep 1
p2=$(api "$T/api.sock" stats | grep -o '"cpu_time_ns":[0-9]*' | head -1 | cut -d: -f2)
api "$T/api.sock" resume >/dev/null
if [ -n "$p1" ] && [ "$((p2 - p1))" -lt 20000000 ]; then
    ok "pause stops vCPU time ($((p2 - p1)) ns in 1 s paused; running total $t1)"
else
    not_ok "pause stops vCPU time ($p1 -> $p2)"
fi
# The VMM's own time on exits: some (the console's and PCI's exits were handled), and not the
# second the vCPU thread spent paused between two KVM_RUNs.
h=$(api "$T/api.sock" stats | grep -o '"exit_handling_ns":[0-9]*' | head -1 | cut -d: -f2)
if [ -n "$h" ] && [ "$h" -gt 0 ] && [ "$h" -lt 500000000 ]; then
    ok "stats: exit_handling_ns counts the VMM's time on exits, not a pause ($h ns)"
else
    not_ok "stats: exit_handling_ns '$h'"
fi
api "$T/api.sock" powerbutton >/dev/null
rc=0
wait "$pid" || rc=$?
if [ "$rc" -eq 0 ] && grep -q "PROBE poweroff" "$T/idle.log"; then
    ok "API powerbutton: the guest shuts down, exit 0"
else
    not_ok "powerbutton shutdown (exit $rc)"
    diag <"$T/idle.err"
fi
finish
