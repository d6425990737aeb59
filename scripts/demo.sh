#!/bin/bash
# What `make demo` runs: the image engine end to end (raw → compressed qcow2, an overlay taking
# writes, an internal snapshot, commit, check — with qemu-img agreeing when it is installed), then
# vessel-vmm booting the embedded default guest on that very qcow2 disk.
#
# The default guest on hardware KVM is a minimal Linux (scripts/guest-linux.sh: Debian's cloud
# kernel + busybox initramfs) that prints `uname -a` and powers off. On software-assisted KVM
# (kvm_pvm) a stock kernel's ring-0 code is emulated and needs minutes, so there the demo boots the
# probe guest (guest/probe), which does its work in ring 3, and says why in one line.
set -euo pipefail
bin=${1:-build/bin}
vessel=$bin/vessel
vmm=$bin/vessel-vmm
probe=build/guest/probe.elf
work=$(mktemp -d /var/tmp/vessel-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "a 64 MiB raw disk: 8 MiB of data at 4 MiB, holes elsewhere"
dd if=/dev/urandom of="$work/disk.raw" bs=1M count=8 seek=4 conv=notrunc status=none
truncate -s 64M "$work/disk.raw"
run "$vessel" img info "$work/disk.raw"

step "convert it to a compressed qcow2 (holes stay holes)"
run "$vessel" img convert -p -c -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
run "$vessel" img info "$work/disk.qcow2"
run "$vessel" img compare "$work/disk.raw" "$work/disk.qcow2"

step "an overlay (undo disk) takes new writes; the base is untouched"
run "$vessel" img create -q -f qcow2 -b disk.qcow2 -F qcow2 "$work/overlay.qcow2"
run "$vessel" img bench -q -w -c 16 -s 64k -o 32M --pattern=0xab "$work/overlay.qcow2"
run "$vessel" img info --backing-chain "$work/overlay.qcow2" | grep -E '^(image|backing file|disk size)'
run "$vessel" img compare "$work/overlay.qcow2" "$work/disk.qcow2" || echo "(expected: the overlay differs from its base at 32 MiB)"
run "$vessel" img compare "$work/disk.raw" "$work/disk.qcow2"

step "internal snapshot of the base, then a consistency check"
run "$vessel" img snapshot -c before-commit "$work/disk.qcow2"
run "$vessel" img snapshot -l "$work/disk.qcow2"
run "$vessel" img check "$work/disk.qcow2"

step "commit the overlay into the base; both now read the same"
run "$vessel" img commit "$work/overlay.qcow2"
run "$vessel" img compare "$work/overlay.qcow2" "$work/disk.qcow2"

if command -v qemu-img >/dev/null; then
    step "qemu-img agrees"
    run qemu-img check "$work/disk.qcow2"
    run qemu-img compare "$work/overlay.qcow2" "$work/disk.qcow2"
fi

step "boot the default guest on disk.qcow2"
run "$vessel" host info
kind=$("$vessel" host info --json | sed -n 's/.*"kvm_kind":"\([a-z]*\)".*/\1/p')
if [ ! -e /dev/kvm ]; then
    echo "no /dev/kvm on this host: the VMM cannot run here (vessel host info says why)"
    exit 0
fi
if [ "$kind" = hardware ] || [ "$kind" = nested ]; then
    # the minimal Linux default guest: Debian's cloud kernel + a busybox initramfs (built once,
    # cached in build/guest-cache), booted through the PVH fast path with disk.qcow2 as vda
    if guest=$(scripts/guest-linux.sh); then
        read -r kernel initrd <<<"$guest"
        echo "KVM kind: $kind — booting the minimal Linux default guest ($(basename "$kernel"))"
        run timeout 120 "$vmm" --kernel "$kernel" --initrd "$initrd" --memory 256M --rng \
            --disk "$work/disk.qcow2,format=qcow2" --cmdline "console=ttyS0 quiet panic=-1" --no-reboot
        step "demo finished"
        exit 0
    fi
    echo "the Linux default guest could not be built (above) — booting the probe guest instead"
else
    echo "KVM kind: ${kind:-unknown} — booting the probe guest, not Linux: on software-assisted KVM" \
         "a kernel's ring-0 code is emulated (minutes to boot); the probe does its work in ring 3"
fi
"$vessel" img convert -O raw "$work/disk.qcow2" "$work/check.raw"
sum=$(dd if="$work/check.raw" bs=512 skip=8192 count=2048 status=none | sha256sum | cut -d' ' -f1)
run timeout 60 "$vmm" --kernel "$probe" --memory 128M --disk "$work/disk.qcow2,format=qcow2" \
    --rng --cmdline "probe.tests=io,blk,rng probe.iters=2000 probe.blk.checksum=8192-10240 probe.blk.offset=65536 probe.blk.size=4M" \
    | tee "$work/console.log"
grep -q "blk.checksum.8192-10240=$sum" "$work/console.log" &&
    echo "the guest read the committed data through qcow2: checksum matches the host's ($sum)"
run "$vessel" img check "$work/disk.qcow2"
step "demo finished"
