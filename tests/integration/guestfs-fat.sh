#!/bin/bash
# tests/integration/guestfs-fat.sh — `vessel guest ls|cat|get` on FAT12, FAT16 and FAT32 volumes
# built with mkfs.vfat and filled with mcopy (the oracle): long (VFAT) and 8.3 names, nested
# directories, files spanning many clusters and a fragmented file, read through raw, a partition
# of an msdos disk (an EFI system partition) and a qcow2 image; a boot config on the ESP is found;
# a FAT volume refuses writes; a damaged FAT gives one line naming the file and cluster.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_vessel
for t in mkfs.vfat mcopy mmd mdel sfdisk qemu-img; do
    command -v $t >/dev/null || { skip "$t not installed"; finish; }
done
export MTOOLS_SKIP_CHECK=1

S=$T/src
mkdir -p "$S"
head -c 300000 /dev/urandom >"$S/big.bin"
echo "hello from fat" >"$S/readme.txt"
head -c 5000 /dev/urandom >"$S/Long File Name With Spaces.dat"
echo grub >"$S/grub.cfg"

# fill IMG[@@OFFSET] — the same tree in any FAT image
fill() {
    local i=$1
    quiet mmd -i "$i" ::/EFI ::/EFI/BOOT ::/boot ::/boot/grub ::/deep ::/deep/er ::/deep/er/est
    quiet mcopy -i "$i" "$S/readme.txt" ::/README.TXT
    quiet mcopy -i "$i" "$S/Long File Name With Spaces.dat" "::/EFI/BOOT/Long File Name With Spaces.dat"
    quiet mcopy -i "$i" "$S/big.bin" ::/deep/er/est/big.bin
    # fragment: a small file, a filler, delete the small one, then a file that must span the gap
    head -c 3000 /dev/urandom >"$T/small"
    quiet mcopy -i "$i" "$T/small" ::/gap1
    quiet mcopy -i "$i" "$S/readme.txt" ::/filler
    quiet mdel -i "$i" ::/gap1
    head -c 70000 /dev/urandom >"$S/frag.bin"
    quiet mcopy -i "$i" "$S/frag.bin" ::/frag.bin
    printf 'set default=0\nmenuentry "ESP entry" {\n  linux /vmlinuz root=/dev/vda2\n}\n' >"$T/esp.cfg"
    quiet mcopy -i "$i" "$T/esp.cfg" ::/boot/grub/grub.cfg
    quiet mcopy -i "$i" "$S/readme.txt" ::/vmlinuz
}

check_image() {
    local name=$1 spec=$2
    vs guest ls "$spec" /
    if [ "$VS_RC" -eq 0 ] && grep -qx "README.TXT" "$VS_OUT" && grep -qx "deep" "$VS_OUT" &&
        ! grep -qx "gap1" "$VS_OUT" && grep -qx "frag.bin" "$VS_OUT"; then
        ok "$name: ls / lists the root (8.3 and long names, deleted entries skipped)"
    else
        not_ok "$name: ls /"
        diag <"$VS_OUT"
    fi
    vs guest ls "$spec" /EFI/BOOT -l
    if grep -q "Long File Name With Spaces.dat" "$VS_OUT" && grep -q " 5000 " "$VS_OUT"; then
        ok "$name: a VFAT long file name with spaces, with its size"
    else
        not_ok "$name: long file name"
        diag <"$VS_OUT"
    fi
    vs guest cat "$spec" /readme.txt
    if [ "$VS_RC" -eq 0 ] && cmp -s "$VS_OUT" "$S/readme.txt"; then
        ok "$name: cat finds README.TXT case-insensitively"
    else
        not_ok "$name: cat /readme.txt"
    fi
    local f
    for f in "deep/er/est/big.bin:big.bin" "frag.bin:frag.bin" "EFI/BOOT/long file name with spaces.dat:Long File Name With Spaces.dat"; do
        vs guest get "$spec" "/${f%%:*}" "$T/out"
        if [ "$VS_RC" -eq 0 ] && cmp -s "$T/out" "$S/${f#*:}"; then
            ok "$name: get /${f%%:*} equals what mcopy wrote"
        else
            not_ok "$name: get /${f%%:*}"
        fi
    done
}

for bits in 12 16 32; do
    case $bits in 12) size=4M ;; 16) size=32M ;; 32) size=64M ;; esac
    rm -f "$T/fat$bits.img"
    quiet truncate -s $size "$T/fat$bits.img"
    quiet mkfs.vfat -F $bits -n "VOL$bits" "$T/fat$bits.img"
    fill "$T/fat$bits.img"
    check_image "FAT$bits raw" "$T/fat$bits.img"
done

# ---- an EFI system partition on an msdos disk, also through qcow2 ----
quiet truncate -s 80M "$T/disk.raw"
printf 'label: dos\nstart=2048, size=131072, type=ef\n' | quiet sfdisk -q "$T/disk.raw"
quiet dd if="$T/fat32.img" of="$T/disk.raw" bs=512 seek=2048 conv=notrunc status=none
quiet qemu-img convert -f raw -O qcow2 "$T/disk.raw" "$T/disk.qcow2"
check_image "ESP in qcow2" "$T/disk.qcow2:1"
vs guest cat "$T/disk.qcow2" /frag.bin
if [ "$VS_RC" -eq 0 ] && cmp -s "$VS_OUT" "$S/frag.bin"; then
    ok "without :PART the only (FAT) filesystem is used"
else
    not_ok "FAT found without :PART"
fi
vs guest bootinfo "$T/disk.qcow2"
if [ "$VS_RC" -eq 0 ] && grep -q "ESP entry" "$VS_OUT" && grep -q "root=/dev/vda2" "$VS_OUT"; then
    ok "bootinfo finds /boot/grub/grub.cfg on a FAT partition"
else
    not_ok "bootinfo on FAT"
fi
expect_error "writes to FAT are refused" "disk.qcow2" "read-only" guest put "$T/disk.qcow2:1" /new "$S/readme.txt"
expect_error "missing file" "frag.bin" "no such file" guest cat "$T/disk.qcow2:1" /nope/frag.bin

# ---- a UEFI Linux disk: ESP (FAT32) on 1, ext4 root on 2 ----
command -v mkfs.ext4 >/dev/null || { skip "mkfs.ext4 not installed"; finish; }
mkdir -p "$T/root/etc"
echo uefi-host >"$T/root/etc/hostname"
quiet truncate -s 32M "$T/root.fs"
quiet mkfs.ext4 -q -F -d "$T/root" "$T/root.fs"
quiet truncate -s 120M "$T/uefi.raw"
printf 'label: gpt
start=2048, size=131072, type=U
start=133120, size=65536, type=L
' |
    quiet sfdisk -q "$T/uefi.raw"
quiet dd if="$T/fat32.img" of="$T/uefi.raw" bs=512 seek=2048 conv=notrunc status=none
quiet dd if="$T/root.fs" of="$T/uefi.raw" bs=512 seek=133120 conv=notrunc status=none
vs guest cat "$T/uefi.raw" /etc/hostname
if [ "$VS_RC" -eq 0 ] && grep -qx uefi-host "$VS_OUT"; then
    ok "GPT disk with ESP + ext4: without :PART the ext root is used"
else
    not_ok "ext root preferred over the ESP"
fi
vs guest cat "$T/uefi.raw:1" /readme.txt
if [ "$VS_RC" -eq 0 ] && cmp -s "$VS_OUT" "$S/readme.txt"; then
    ok "GPT disk: :1 reads the ESP"
else
    not_ok "ESP as :1 on GPT"
fi

# ---- a damaged FAT: the chain of big.bin loops back on itself ----
cp "$T/fat16.img" "$T/loop.img"
python3 - "$T/loop.img" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
bs = f.read(512)
bps, spc, res = struct.unpack_from('<HBH', bs, 11)
nroot = struct.unpack_from('<H', bs, 17)[0]
fatsz = struct.unpack_from('<H', bs, 22)[0]
nfats = bs[16]
fat_off = res * bps
f.seek(fat_off)
fat = bytearray(f.read(fatsz * bps))
# every cluster pointing at itself: any chain longer than one cluster loops
for c in range(2, len(fat) // 2):
    v = struct.unpack_from('<H', fat, c * 2)[0]
    if 2 <= v < 0xfff0:
        struct.pack_into('<H', fat, c * 2, c)
for i in range(nfats):
    f.seek(fat_off + i * fatsz * bps)
    f.write(fat)
PY
expect_error "a looping cluster chain" "big.bin" "cluster chain loops" guest cat "$T/loop.img" /deep/er/est/big.bin
finish
