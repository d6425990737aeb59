#!/bin/bash
# tests/integration/vmm-default-guest.sh — the minimal Linux default guest that `make demo` boots
# on hardware KVM (scripts/guest-linux.sh: Debian cloud kernel + busybox initramfs with the virtio
# modules) really boots to its /init: first under QEMU's TCG, which needs no KVM at all and so
# checks the guest itself on any host, then under vessel-vmm where hardware KVM exists (on a
# software-assisted kvm_pvm host the kernel's ring-0 code runs emulated for minutes: skipped with
# that reason). Both must print `uname -a`, find the virtio disk, and power off cleanly.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VMM=${VESSEL_VMM:-$(dirname "${VESSEL:-$ROOT/build/asan/bin/vessel}")/vessel-vmm}
IT_TIMEOUT=${IT_TIMEOUT:-240}
source "$ROOT/tests/integration/lib.sh"
require_vessel

if ! out=$(timeout 300 "$ROOT/scripts/guest-linux.sh" 2>"$T/build.err"); then
    if grep -q "apt-get download" "$T/build.err"; then
        skip "the Debian cloud kernel can't be fetched here: $(head -1 "$T/build.err")"
        finish
    fi
    not_ok "scripts/guest-linux.sh builds the default guest"
    diag <"$T/build.err"
    finish
fi
read -r KERNEL INITRD <<<"$out"
ok "default guest built: $(basename "$KERNEL"), initramfs $(du -k "$INITRD" | cut -f1) KiB"

# the initramfs carries the virtio drivers /init loads, each with its dependencies before it
mods=$(zcat "$INITRD" | busybox cpio -i --to-stdout etc/modules 2>/dev/null | tr '\n' ' ')
for m in virtio_pci virtio_blk virtio_net virtio_console virtio_balloon virtio-rng; do
    if [[ " $mods " == *" $m.ko "* ]]; then ok "initramfs loads $m"; else not_ok "initramfs loads $m (has: $mods)"; fi
done
pos() { local i=0 w; for w in $mods; do [ "$w" = "$1.ko" ] && { echo $i; return; }; i=$((i + 1)); done; echo -1; }
if [ "$(pos virtio_ring)" -ge 0 ] && [ "$(pos virtio_ring)" -lt "$(pos virtio_pci)" ] &&
    [ "$(pos failover)" -lt "$(pos net_failover)" ] && [ "$(pos net_failover)" -lt "$(pos virtio_net)" ]; then
    ok "modules come after their dependencies"
else
    not_ok "modules come after their dependencies: $mods"
fi

check_boot() { # LABEL LOG RC
    local label=$1 log=$2 rc=$3
    if grep -q "vessel-guest: uname: Linux .* x86_64" "$log"; then
        ok "$label: /init ran and printed uname -a"
    else
        not_ok "$label: /init ran and printed uname -a (exit $rc)"
        tail -20 "$log" | diag
        return
    fi
    grep -q "insmod .* failed" "$log" && { not_ok "$label: every module loads"; grep "insmod" "$log" | diag; } ||
        ok "$label: every module loads"
    if grep -q "vessel-guest: block: .*vda" "$log"; then ok "$label: virtio disk vda found"; else
        not_ok "$label: virtio disk vda found"
        grep "vessel-guest:" "$log" | diag
    fi
    if grep -q "vessel-guest: powering off" "$log" && [ "$rc" -eq 0 ]; then
        ok "$label: powered off (exit 0)"
    else
        not_ok "$label: powered off (exit $rc)"
    fi
}

truncate -s 64M "$T/disk.raw"
CMDLINE="console=ttyS0 quiet panic=-1"
if command -v qemu-system-x86_64 >/dev/null; then
    rc=0
    timeout -k 5 120 qemu-system-x86_64 -accel tcg -M q35 -m 256 -smp 1 -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE" -nic none \
        -drive "file=$T/disk.raw,format=raw,if=virtio" -device virtio-rng-pci \
        </dev/null >"$T/qemu.log" 2>&1 || rc=$?
    check_boot "QEMU TCG" "$T/qemu.log" "$rc"
else
    not_ok "qemu-system-x86_64 present (make check installs qemu-system-x86)"
fi

if [ ! -e /dev/kvm ]; then
    skip "vessel-vmm boot of the default guest: no /dev/kvm here"
elif [ ! -e /sys/module/kvm_intel ] && [ ! -e /sys/module/kvm_amd ]; then
    skip "vessel-vmm boot of the default guest: KVM here is not hardware-assisted ($("$VESSEL" host info --json 2>/dev/null | sed -n 's/.*"kvm_kind":"\([a-z]*\)".*/\1/p')): a stock kernel's ring-0 code runs emulated for minutes"
else
    rc=0
    timeout -k 5 120 "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$CMDLINE" \
        --memory 256M --disk "$T/disk.raw,format=raw" --rng --no-reboot --console "file:$T/vmm.log" \
        </dev/null 2>"$T/vmm.err" || rc=$?
    check_boot "vessel-vmm" "$T/vmm.log" "$rc"
    if grep -qE "$SANITIZER_RE" "$T/vmm.err"; then not_ok "vessel-vmm: sanitizer report"; diag <"$T/vmm.err"; fi
fi
finish
