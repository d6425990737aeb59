#!/bin/bash
# tests/integration/vmm-boot.sh — vessel-vmm boots PVH guests and ends the way the guest asked:
# tiny hand-made PVH ELFs (serial hello + ACPI poweroff, i8042 reset, isa-debug-exit, triple
# fault), the probe guest (virtio-blk data landing in the image, the control API), and bad inputs
# that must give one clear line of error and no crash.
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
