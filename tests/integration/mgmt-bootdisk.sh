#!/bin/bash
# tests/integration/mgmt-bootdisk.sh — `[boot] from = disk` through the daemon: vesseld passes
# `--boot disk` to vessel-vmm, which reads the first disk's grub.cfg (vessel's pygrub). The disk is
# built as in vmm-bootdisk.sh — an msdos table with /boot as ext4 on partition 1 holding the probe
# guest as the "kernel" and a grub.cfg whose default entry runs the probe's block test — and the
# VM is started with `vessel start`: the probe prints PROBE ok on the VM's console and powers off.
# The same disk as a qcow2 undo disk boots through its overlay; a disk without a boot config and
# `from = cdrom` fail to start with one line, and so does a disk on another bus than virtio.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need mkfs.ext4 sfdisk qemu-img jq curl

mkdir -p "$STATE"
start_daemon

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
cat >"$T/grub.cfg" <<'CFG'
set default="0"
set timeout=5
menuentry 'Probe blk' --class gnu-linux {
	set root='(hd0,msdos1)'
	linux	/vmlinuz-probe probe.mode=run probe.tests=blk
}
CFG
build_disk "$T/disk.raw" "$T/grub.cfg"
quiet qemu-img convert -f raw -O qcow2 "$T/disk.raw" "$T/disk.qcow2"

# mkvm NAME DISK-LINES [FROM]
mkvm() {
    printf 'name = %s\nmemory = 64M\nconsole = file:%s/%s.console\n[boot]\nfrom = %s\n[disk]\n%s\n' \
        "$1" "$T" "$1" "${3:-disk}" "$2" >"$T/$1.vm"
    expect_ok "define $1" define "$T/$1.vm"
}

mkvm bd1 "file = $T/disk.raw"
expect_ok "start bd1 (from = disk, raw)" start bd1
if wait_state bd1 shutoff 60 && grep -aq "^PROBE ok" "$T/bd1.console"; then
    ok "bd1 booted the grub.cfg entry from its disk: PROBE ok, then powered off"
else
    not_ok "bd1 booted from disk (state $(field bd1 state))"
    tail -5 "$T/bd1.console" "$STATE/run/bd1/vmm.log" 2>/dev/null | diag
fi
if grep -a "cmdline" "$T/bd1.console" | grep -q "probe.tests=blk" &&
    grep -aq "^PROBE result blk.devices=1" "$T/bd1.console"; then
    ok "the guest got the entry's command line and sees its boot disk"
else
    not_ok "entry command line / boot disk in the guest"
fi
[ "$(field bd1 last_exit)" = 0 ] && ok "bd1's vessel-vmm exited 0 (poweroff)" ||
    not_ok "bd1 last_exit $(field bd1 last_exit)"

mkvm bd2 "file = $T/disk.qcow2
format = qcow2
undo = yes"
before=$(sha "$T/disk.qcow2")
expect_ok "start bd2 (from = disk, qcow2 undo disk)" start bd2
if wait_state bd2 shutoff 60 && grep -aq "^PROBE ok" "$T/bd2.console"; then
    ok "bd2 booted from disk through its undo overlay"
else
    not_ok "bd2 booted from an undo disk (state $(field bd2 state))"
    tail -5 "$T/bd2.console" | diag
fi
[ "$(sha "$T/disk.qcow2")" = "$before" ] && ok "the undo disk's base is unchanged" ||
    not_ok "the undo disk's base changed"

quiet truncate -s 8M "$T/empty.raw"
printf 'label: dos\nstart=2048, size=8192, type=83\n' | quiet sfdisk -q "$T/empty.raw"
mkvm bd3 "file = $T/empty.raw"
vs start bd3
if [ "$VS_RC" -eq 1 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] &&
    grep -q "no boot configuration found on any partition" "$VS_ERR"; then
    ok "a disk without a boot config: start fails with one line: $(cat "$VS_ERR")"
else
    not_ok "start bd3 without a boot config (exit $VS_RC)"
    diag <"$VS_ERR"
fi
[ "$(field bd3 state)" = shutoff ] && ok "bd3 is shut off" || not_ok "bd3 state $(field bd3 state)"

mkvm bd4 "file = $T/disk.raw
media = cdrom" cdrom
vs start bd4
if [ "$VS_RC" -eq 1 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] && grep -q "cdrom" "$VS_ERR"; then
    ok "from = cdrom is refused with one line: $(cat "$VS_ERR")"
else
    not_ok "start bd4 from cdrom (exit $VS_RC)"
fi
# an imported definition keeps its source's bus and NIC model; vessel-vmm runs virtio only, so
# those are refused at start by name instead of being run as virtio without a word
mkvm bd5 "file = $T/disk.raw
bus = ide"
vs start bd5
if [ "$VS_RC" -eq 1 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] && grep -q "bus = ide.*set bus = virtio" "$VS_ERR"; then
    ok "bus = ide is refused with one line: $(cat "$VS_ERR")"
else
    not_ok "start bd5 with bus = ide (exit $VS_RC: $(cat "$VS_ERR"))"
fi
[ "$(field bd5 state)" = shutoff ] && ok "bd5 is shut off" || not_ok "bd5 state $(field bd5 state)"
finish
