#!/bin/bash
# tests/integration/vmm-bootdisk.sh — `vessel-vmm --boot disk` (vessel's pygrub): a raw and a
# qcow2 disk with an msdos table and /boot as ext4 on partition 1 (mkfs.ext4 -d), holding the
# probe guest as the "kernel" and a grub.cfg with `set root='(hd0,msdos1)'` — the VM boots from
# the disk, the probe sees the entry's command line (plus --cmdline), --boot-entry picks another
# entry, and a broken grub.cfg, a missing kernel or a disk without a config give one clear line.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VESSEL=${VESSEL_VMM:-$(dirname "${VESSEL:-$ROOT/build/asan/bin/vessel}")/vessel-vmm}
IT_TIMEOUT=${IT_TIMEOUT:-60}
source "$ROOT/tests/integration/lib.sh"
require_vessel
for t in mkfs.ext4 sfdisk qemu-img; do
    command -v $t >/dev/null || { skip "$t not installed"; finish; }
done
if [ ! -r /dev/kvm ]; then
    skip "no /dev/kvm here"
    finish
fi
PROBE=$ROOT/build/guest/probe.elf
if [ ! -f "$PROBE" ]; then
    skip "probe guest $PROBE not built (make guest)"
    finish
fi

# build_disk OUT GRUBCFG — msdos table, partition 1 (1 MiB..33 MiB) ext4 = /boot
build_disk() {
    local out=$1 cfg=$2
    rm -rf "$T/bootdir" "$T/p1.fs"
    mkdir -p "$T/bootdir/grub"
    cp "$PROBE" "$T/bootdir/vmlinuz-probe"
    cp "$cfg" "$T/bootdir/grub/grub.cfg"
    quiet truncate -s 32M "$T/p1.fs"
    quiet mkfs.ext4 -q -F -d "$T/bootdir" "$T/p1.fs"
    rm -f "$out"
    quiet truncate -s 40M "$out"
    printf 'label: dos\nstart=2048, size=65536, type=83, bootable\n' | quiet sfdisk -q "$out"
    quiet dd if="$T/p1.fs" of="$out" bs=512 seek=2048 conv=notrunc status=none
}

cat >"$T/good.cfg" <<'CFG'
set default="0"
set timeout=5
menuentry 'Probe I/O' --class gnu-linux {
	set root='(hd0,msdos1)'
	linux	/vmlinuz-probe probe.mode=run probe.tests=io probe.iters=100
}
menuentry 'Probe blk' --id probe-blk {
	set root='(hd0,msdos1)'
	linux	/vmlinuz-probe probe.mode=run probe.tests=blk
}
menuentry 'Missing kernel' {
	set root='(hd0,msdos1)'
	linux	/vmlinuz-x quiet
}
CFG
build_disk "$T/disk.raw" "$T/good.cfg"
quiet qemu-img convert -f raw -O qcow2 "$T/disk.raw" "$T/disk.qcow2"

for d in disk.raw disk.qcow2; do
    vs --boot disk --disk "$T/$d" --cmdline "extra.arg=1" -v
    if [ "$VS_RC" -eq 0 ] && grep -q "^PROBE ok" "$VS_OUT"; then
        ok "$d: boots the default grub.cfg entry from partition 1 and prints PROBE ok"
    else
        not_ok "$d: boot from disk (exit $VS_RC)"
        grep -E "PROBE" "$VS_OUT" | tail -5 | diag
    fi
    if grep "cmdline" "$VS_OUT" | grep -q "probe.tests=io probe.iters=100 extra.arg=1"; then
        ok "$d: the guest sees the entry's command line with --cmdline appended"
    else
        not_ok "$d: guest command line"
        grep cmdline "$VS_OUT" | diag
    fi
    if grep -q "boot entry 'Probe I/O'" "$VS_ERR"; then
        ok "$d: -v names the chosen entry on stderr"
    else
        not_ok "$d: -v names the entry"
    fi
done

vs --boot disk --boot-entry probe-blk --disk "$T/disk.qcow2"
if [ "$VS_RC" -eq 0 ] && grep "cmdline" "$VS_OUT" | grep -q "probe.tests=blk" &&
    grep -q "^PROBE result blk.devices=1" "$VS_OUT"; then
    ok "--boot-entry chooses an entry by --id; the guest sees its boot disk"
else
    not_ok "--boot-entry probe-blk (exit $VS_RC)"
fi

# ---- errors: one line, exit 1 ----
expect_error "missing kernel" "disk.raw" "kernel /vmlinuz-x not found on partition 1" \
    --boot disk --boot-entry 'Missing kernel' --disk "$T/disk.raw"
expect_error "unknown entry" "disk.raw" "nosuch" --boot disk --boot-entry nosuch --disk "$T/disk.raw"
printf 'set default=0\nmenuentry "Broken {\n  linux /vmlinuz-probe\n}\n' >"$T/bad.cfg"
build_disk "$T/bad.raw" "$T/bad.cfg"
expect_error "broken grub.cfg names file and line" "bad.raw" "grub/grub.cfg line [0-9]+" \
    --boot disk --disk "$T/bad.raw"
quiet truncate -s 8M "$T/empty.raw"
printf 'label: dos\nstart=2048, size=8192, type=83\n' | quiet sfdisk -q "$T/empty.raw"
expect_error "disk without a boot config" "empty.raw" "no boot configuration found on any partition" \
    --boot disk --disk "$T/empty.raw"
expect_error "--boot disk without --disk" "disk" "needs a --disk" --boot disk
expect_error "--boot disk with --kernel" "kernel" "drop --kernel" --boot disk --kernel "$PROBE" \
    --disk "$T/disk.raw"
finish
