#!/bin/bash
# tests/integration/guestfs-fat.sh — `vessel guest ls|cat|get|put|mkdir|rm|edit` on FAT12, FAT16 and FAT32 volumes
# built with mkfs.vfat and filled with mcopy (the oracle): long (VFAT) and 8.3 names, nested
# directories, files spanning many clusters and a fragmented file, read through raw, a partition
# of an msdos disk (an EFI system partition) and a qcow2 image; a boot config on the ESP is found;
# a damaged FAT gives one line naming the file and cluster. Writing: put/mkdir/rm/edit on FAT12,
# FAT16 and FAT32, raw, through a qcow2 overlay and in an MBR partition; the result passes
# `fsck.fat -n`, mtools reads back what vessel wrote (and vessel what mtools wrote); a full
# volume or a full fixed root fails with one line and stays clean; a dirty volume is refused.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_vessel
for t in mkfs.vfat mcopy mmd mdel mtype mdir fsck.fat sfdisk qemu-img; do
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
expect_error "missing file" "frag.bin" "no such file" guest cat "$T/disk.qcow2:1" /nope/frag.bin

# ---- writing ----
head -c 5000 /dev/urandom >"$S/multi.bin"
printf '#!/bin/sh\necho edited-by-vessel >>"$1"\n' >"$T/ed.sh"
chmod +x "$T/ed.sh"
{
    cat "$S/readme.txt"
    echo edited-by-vessel
} >"$S/edited.txt"

# fsck_ok NAME FSIMAGE — dosfstools finds nothing to fix (exit 0, nothing but the summary)
fsck_ok() {
    local rc=0
    timeout -k 5 60 fsck.fat -n "$2" >"$T/fsck.out" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ] && [ "$(grep -vcE '^fsck.fat |files, .*clusters$' "$T/fsck.out")" -eq 0 ]; then
        ok "$1: fsck.fat -n finds the volume clean"
    else
        not_ok "$1: fsck.fat -n (exit $rc)"
        diag <"$T/fsck.out"
    fi
}

# mtools_is NAME MIMG GUESTPATH HOSTFILE — mtools reads back what vessel wrote
mtools_is() {
    if mtype -i "$2" "::$3" >"$T/mt.out" 2>"$T/mt.err" && cmp -s "$T/mt.out" "$4"; then
        ok "$1: mtype $3 equals what vessel wrote"
    else
        not_ok "$1: mtype $3"
        diag <"$T/mt.err"
    fi
}

# write_checks NAME SPEC MIMG EXPORT — put/mkdir/rm/edit on SPEC (format $FMT, default raw);
# MIMG is what mtools reads; EXPORT (a command) leaves the bare filesystem in $T/check.fs.
write_checks() {
    local name=$1 spec=$2 mimg=$3 export_fs=$4 f=${FMT:-raw}
    expect_ok "$name: put a small file" guest put --format "$f" "$spec" /small.txt "$S/readme.txt"
    expect_ok "$name: put a multi-cluster file with a long name" \
        guest put --format "$f" "$spec" "/Vessel Long Name With Spaces.dat" "$S/multi.bin"
    expect_ok "$name: mkdir a long-named directory" guest mkdir --format "$f" "$spec" "/new dir"
    expect_ok "$name: mkdir a nested directory" guest mkdir --format "$f" "$spec" "/new dir/Sub Directory"
    expect_ok "$name: put a 300 KB file in the new directory" \
        guest put --format "$f" "$spec" "/new dir/Sub Directory/big file.bin" "$S/big.bin"
    expect_ok "$name: put replaces a file mcopy wrote" guest put --format "$f" "$spec" /README.TXT "$S/multi.bin"
    expect_ok "$name: rm a file mcopy wrote" guest rm --format "$f" "$spec" /filler
    VISUAL="$T/ed.sh" expect_ok "$name: edit a file" guest edit --format "$f" "$spec" /small.txt
    expect_error "$name: rm of a non-empty directory" "$(basename "${spec%:[0-9]}")" "not empty" \
        guest rm --format "$f" "$spec" "/new dir"
    eval "$export_fs"
    fsck_ok "$name" "$T/check.fs"
    mtools_is "$name" "$mimg" /small.txt "$S/edited.txt"
    mtools_is "$name" "$mimg" "/Vessel Long Name With Spaces.dat" "$S/multi.bin"
    mtools_is "$name" "$mimg" "/new dir/Sub Directory/big file.bin" "$S/big.bin"
    mtools_is "$name" "$mimg" /README.TXT "$S/multi.bin"
    mdir -i "$mimg" ::/ >"$T/mdir.out" 2>&1 || true
    if grep -qi filler "$T/mdir.out"; then
        not_ok "$name: mdir no longer lists the removed /filler"
    else
        ok "$name: mdir no longer lists the removed /filler"
    fi
    if grep -q "VESSEL~1 DAT .*Vessel Long Name With Spaces.dat" "$T/mdir.out"; then
        ok "$name: mtools sees the long name with its VESSEL~1.DAT alias"
    else
        not_ok "$name: long name and alias in mdir"
        diag <"$T/mdir.out"
    fi
    vs guest get --format "$f" "$spec" /frag.bin "$T/out"
    mtype -i "$mimg" ::/frag.bin >"$T/mt.out" 2>/dev/null || true
    if [ "$VS_RC" -eq 0 ] && [ -s "$T/out" ] && cmp -s "$T/out" "$T/mt.out"; then
        ok "$name: a fragmented file mcopy wrote still reads back equal (vessel = mtype)"
    else
        not_ok "$name: /frag.bin after the writes"
    fi
    # take it all down again
    local p
    for p in "/new dir/Sub Directory/big file.bin" "/new dir/Sub Directory" "/new dir" \
        "/Vessel Long Name With Spaces.dat"; do
        vs guest rm --format "$f" "$spec" "$p"
        [ "$VS_RC" -eq 0 ] || not_ok "$name: rm $p"
    done
    eval "$export_fs"
    fsck_ok "$name, after rm" "$T/check.fs"
    mdir -i "$mimg" ::/ >"$T/mdir.out" 2>&1 || true
    if grep -qE "new dir|Vessel Long" "$T/mdir.out"; then
        not_ok "$name: rm'd entries are gone for mtools"
        diag <"$T/mdir.out"
    else
        ok "$name: rm'd entries are gone for mtools"
    fi
}

for bits in 12 16 32; do
    cp "$T/fat$bits.img" "$T/w$bits.img"
    write_checks "FAT$bits raw" "$T/w$bits.img" "$T/w$bits.img" "cp '$T/w$bits.img' '$T/check.fs'"
done

# through a qcow2 overlay: the backing image stays untouched
cp "$T/fat16.img" "$T/base16.img"
quiet qemu-img create -q -f qcow2 -F raw -b "$T/base16.img" "$T/over16.qcow2"
FMT=qcow2 write_checks "FAT16 qcow2 overlay" "$T/over16.qcow2" "$T/over16.raw" \
    "qemu-img convert -f qcow2 -O raw '$T/over16.qcow2' '$T/over16.raw' && cp '$T/over16.raw' '$T/check.fs'"
if cmp -s "$T/base16.img" "$T/fat16.img"; then
    ok "qcow2 overlay: the backing FAT image is unchanged"
else
    not_ok "qcow2 overlay: the backing FAT image is unchanged"
fi

# partition 1 of an msdos disk (the FAT32 ESP from above)
cp "$T/disk.raw" "$T/wdisk.raw"
write_checks "FAT32 in an MBR partition" "$T/wdisk.raw:1" "$T/wdisk.raw@@1048576" \
    "dd if='$T/wdisk.raw' of='$T/check.fs' bs=512 skip=2048 count=131072 status=none"

# a full volume: one line, nothing half-written, fsck.fat still clean
quiet truncate -s 1M "$T/full.img"
quiet mkfs.vfat -F 12 "$T/full.img"
quiet mcopy -i "$T/full.img" "$S/readme.txt" ::/KEEP.TXT
head -c 2000000 /dev/urandom >"$T/huge.bin"
expect_error "full volume" "full.img" "volume full" guest put --format raw "$T/full.img" /huge.bin "$T/huge.bin"
fsck_ok "full volume, after the failed put" "$T/full.img"
vs guest put --format raw "$T/full.img" "/huge streamed.bin" - <"$T/huge.bin"
if [ "$VS_RC" -ne 0 ] && grep -q "volume full" "$VS_ERR"; then
    ok "full volume: a put from stdin (size unknown up front) fails too"
else
    not_ok "full volume: a put from stdin fails"
fi
fsck_ok "full volume, after the failed put from stdin" "$T/full.img"
vs guest ls --format raw "$T/full.img" /
if [ "$VS_RC" -eq 0 ] && ! grep -qi huge "$VS_OUT" && grep -q KEEP.TXT "$VS_OUT"; then
    ok "full volume: no trace of the failed files"
else
    not_ok "full volume: no trace of the failed files"
    diag <"$VS_OUT"
fi
# the FAT12/16 fixed root directory (16 entries; each of these names takes 3)
quiet truncate -s 1M "$T/root.img"
quiet mkfs.vfat -F 12 -r 16 "$T/root.img"
for i in 1 2 3 4 5; do vs guest put --format raw "$T/root.img" "/a long file name $i.txt" "$S/readme.txt"; done
expect_error "fixed root directory full" "root.img" "root directory full" \
    guest put --format raw "$T/root.img" "/one too many.txt" "$S/readme.txt"
fsck_ok "root directory full" "$T/root.img"
# a volume marked dirty is not written
cp "$T/fat16.img" "$T/dirty.img"
printf '\x01' | dd of="$T/dirty.img" bs=1 seek=37 conv=notrunc status=none
expect_error "dirty volume refused" "dirty.img" "dirty" guest put --format raw "$T/dirty.img" /x "$S/readme.txt"
cp "$T/fat32.img" "$T/dirty32.img"
python3 - "$T/dirty32.img" <<'PY2'
import struct, sys
f = open(sys.argv[1], 'r+b')
bs = f.read(512)
bps, res = struct.unpack_from('<H', bs, 11)[0], struct.unpack_from('<H', bs, 14)[0]
f.seek(res * bps + 4)
v = struct.unpack('<I', f.read(4))[0]
f.seek(res * bps + 4)
f.write(struct.pack('<I', v & ~0x08000000))  # FAT[1]: clear "clean shutdown"
PY2
expect_error "FAT32 with FAT[1]'s clean-shutdown bit cleared refused" "dirty32.img" "dirty" \
    guest put --format raw "$T/dirty32.img" /x "$S/readme.txt"

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
