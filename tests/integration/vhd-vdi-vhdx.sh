#!/bin/bash
# tests/integration/vhd-vdi-vhdx.sh — the VHD ("vpc"), VDI and VHDX drivers against qemu-img both
# ways: images vessel writes compare equal under `qemu-img compare` and pass `qemu-img check`
# (vdi, vhdx; qemu has no vpc check), images qemu-img writes read equal in vessel (compare and
# convert back to raw + cmp); then VHD differencing chains (read, commit, a moved parent, a
# touched parent) and compaction.
#
# The one idea: every image starts from the same sparse raw file with data at unaligned, block-
# crossing offsets, so both tools meet partial blocks, holes and a size that is no block multiple.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_vessel

MiB=1048576
SRC=$T/src.raw
make_raw "$SRC" $((24 * MiB + 4608)) vhd-vdi-vhdx
ODD=$T/odd.raw # an odd size: CHS rounding and force_size meet it
make_raw "$ODD" 7777777 odd-size

# interop FMT OPTS SRC — vessel writes, qemu reads and checks; qemu writes, vessel reads.
interop() {
    local fmt=$1 opts=$2 src=$3 name tag
    tag="$fmt${opts:+ $opts}"
    if [ "$src" = "$ODD" ]; then tag+=" (odd size)"; fi
    name=$T/v.$fmt
    vs img convert -f raw -O "$fmt" ${opts:+-o "$opts"} "$src" "$name"
    if [ "$VS_RC" -ne 0 ]; then
        not_ok "$tag: vessel convert raw -> $fmt"
        diag 5 <"$VS_ERR"
        return 0
    fi
    run_q "$tag: qemu-img compare equal on vessel's image" \
        qemu-img compare -f raw -F "$fmt" "$src" "$name"
    if [ "$fmt" != vpc ]; then
        run_q "$tag: qemu-img check clean on vessel's image" qemu-img check -f "$fmt" "$name"
    fi
    quiet qemu-img convert -f raw -O "$fmt" ${opts:+-o "$opts"} "$src" "$T/q.$fmt"
    expect_ok "$tag: vessel compare equal on qemu's image" img compare -f raw -F "$fmt" "$src" \
        "$T/q.$fmt"
    expect_ok "$tag: vessel convert qemu's image to raw" img convert -f "$fmt" -O raw \
        "$T/q.$fmt" "$T/back.raw"
    if [ "$VS_RC" -eq 0 ]; then
        # the vpc virtual size may be rounded up to CHS: compare the source's length only
        run_q "$tag: converted back equals the source" cmp -n "$(stat -c %s "$src")" "$src" \
            "$T/back.raw"
    fi
    # both tools agree on the virtual size
    local qs vsz
    qs=$(qemu-img info --output=json -f "$fmt" "$T/q.$fmt" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
    vs img info --output=json -f "$fmt" "$T/q.$fmt"
    vsz=$(sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p' "$VS_OUT")
    if [ "$qs" = "$vsz" ]; then
        ok "$tag: virtual size of qemu's image is $qs in both"
    else
        not_ok "$tag: virtual size of qemu's image: qemu $qs, vessel $vsz"
    fi
    qs=$(qemu-img info --output=json -f "$fmt" "$name" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
    vs img info --output=json -f "$fmt" "$name"
    vsz=$(sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p' "$VS_OUT")
    if [ "$qs" = "$vsz" ]; then
        ok "$tag: virtual size of vessel's image is $qs in both"
    else
        not_ok "$tag: virtual size of vessel's image: qemu $qs, vessel $vsz"
    fi
}

for opts in "subformat=dynamic" "subformat=fixed" "subformat=dynamic,force_size=on" \
    "subformat=fixed,force_size=on"; do
    interop vpc "$opts" "$SRC"
    interop vpc "$opts" "$ODD"
done
interop vdi "static=off" "$SRC"
interop vdi "static=on" "$SRC"
interop vdi "" "$ODD"
interop vhdx "subformat=dynamic" "$SRC"
interop vhdx "subformat=fixed,block_size=1M" "$SRC"
interop vhdx "block_size=1M,log_size=2M" "$ODD"

# ---- VHD differencing: read, commit, moved parent, touched parent --------------------------------
D=$T/chain
mkdir -p "$D/a"
quiet qemu-img convert -f raw -O vpc "$SRC" "$D/a/parent.vhd"
expect_ok "vhd child created on a vhd parent" img create -q -f vpc -b parent.vhd -F vpc \
    "$D/a/child.vhd"
expect_ok "a fresh child reads as its parent" img compare -f vpc -F raw "$D/a/child.vhd" "$SRC"
cp "$SRC" "$D/expect.raw"
expect_ok "write through the child (bench -w)" img bench -q -w -f vpc -c 3 -s 4096 -o 1049088 \
    --pattern=119 "$D/a/child.vhd"
head -c 12288 /dev/zero | tr '\0' 'w' | dd of="$D/expect.raw" bs=4096 oflag=seek_bytes \
    seek=1049088 conv=notrunc status=none
expect_ok "child shows its own writes over the parent" img compare -f vpc -F raw \
    "$D/a/child.vhd" "$D/expect.raw"
run_q "parent is untouched by writes to the child" qemu-img compare -f vpc -F raw \
    "$D/a/parent.vhd" "$SRC"
expect_ok "commit the child into the parent" img commit -q -f vpc "$D/a/child.vhd"
run_q "parent holds the committed data (qemu reads it)" qemu-img compare -f vpc -F raw \
    "$D/a/parent.vhd" "$D/expect.raw"
vs img convert -f vpc -O raw "$D/a/child.vhd" "$T/child.raw"
if [ "$VS_RC" -eq 0 ] && ! grep -q "warning" "$VS_ERR" &&
    cmp -s -n "$(stat -c %s "$D/expect.raw")" "$T/child.raw" "$D/expect.raw"; then
    ok "after commit the emptied child reads the parent, with no time stamp warning"
else
    not_ok "after commit the emptied child reads the parent, with no time stamp warning"
    diag 5 <"$VS_ERR"
fi
# the parent touched: a warning, not a refusal (Virtual Server's behaviour)
touch -d '2001-01-01 00:00:00' "$D/a/parent.vhd"
vs img convert -f vpc -O raw "$D/a/child.vhd" "$T/child.raw"
if [ "$VS_RC" -eq 0 ] && grep -q "warning:.*modified" "$VS_ERR"; then
    ok "a parent with a changed time stamp gives a warning and still opens"
else
    not_ok "a parent with a changed time stamp gives a warning and still opens (exit $VS_RC)"
    diag 5 <"$VS_ERR"
fi
# the child moved elsewhere: the relative locator misses, the absolute one finds the parent
mkdir -p "$D/b"
mv "$D/a/child.vhd" "$D/b/child.vhd"
expect_ok "a moved child finds its parent by the absolute locator" img compare -f vpc -F raw \
    "$D/b/child.vhd" "$D/expect.raw"
# the parent moved too: a clear one-line error naming the child and the paths tried
mv "$D/a/parent.vhd" "$D/a/renamed.vhd"
expect_error "a moved parent is reported" "$D/b/child.vhd" "parent disk not found" \
    img convert -f vpc -O raw "$D/b/child.vhd" "$T/x.raw"
# a different disk under the parent's name: refused on the unique id
quiet qemu-img create -q -f vpc "$D/a/parent.vhd" 24M
expect_error "a different parent is refused on its unique id" "$D/b/child.vhd" "unique id" \
    img convert -f vpc -O raw "$D/b/child.vhd" "$T/x.raw"

# ---- compaction ---------------------------------------------------------------------------------
compact_case() {
    local fmt=$1 opts=$2 f=$T/compact.$1
    quiet qemu-img convert -f raw -O "$fmt" ${opts:+-o "$opts"} "$SRC" "$f"
    # zero the first 8 MiB: the blocks stay allocated, full of zeros
    quiet qemu-io -f "$fmt" -c "write -P 0 0 $((8 * MiB))" "$f"
    cp "$SRC" "$T/zeroed.raw"
    head -c $((8 * MiB)) /dev/zero | dd of="$T/zeroed.raw" conv=notrunc status=none
    local before after
    before=$(stat -c %s "$f")
    vs img compact -f "$fmt" "$f"
    if grep -qiE "unknown (verb|command)|usage:" "$VS_ERR" && [ "$VS_RC" -ne 0 ]; then
        skip "$fmt compaction: this vessel has no 'img compact' verb yet"
        return 0
    fi
    after=$(stat -c %s "$f")
    if [ "$VS_RC" -eq 0 ] && [ "$after" -lt "$before" ]; then
        ok "$fmt compaction shrinks the file ($before -> $after bytes)"
    else
        not_ok "$fmt compaction shrinks the file ($before -> $after bytes, exit $VS_RC)"
        diag 5 <"$VS_ERR"
    fi
    run_q "$fmt compacted image has the same content (qemu-img compare)" \
        qemu-img compare -f raw -F "$fmt" "$T/zeroed.raw" "$f"
    [ "$fmt" = vpc ] || run_q "$fmt compacted image passes qemu-img check" \
        qemu-img check -f "$fmt" "$f"
}
compact_case vpc ""
compact_case vdi ""
compact_case vhdx "block_size=1M"

# ---- bad input: one line naming file and field --------------------------------------------------
quiet qemu-img create -q -f vpc "$T/bad.vhd" 4M
printf '\x12\x34\x56\x78' | dd of="$T/bad.vhd" bs=1 seek=64 conv=notrunc status=none
expect_error "vhd footer checksum" "$T/bad.vhd" "footer checksum" img info -f vpc "$T/bad.vhd"
quiet qemu-img create -q -f vdi "$T/bad.vdi" 4M
printf '\x00\x30\x00\x00' | dd of="$T/bad.vdi" bs=1 seek=376 conv=notrunc status=none
expect_error "vdi block size" "$T/bad.vdi" "block size" img info -f vdi "$T/bad.vdi"
quiet qemu-img create -q -f vhdx "$T/bad.vhdx" 4M
printf 'X' | dd of="$T/bad.vhdx" bs=1 seek=$((192 * 1024 + 40)) conv=notrunc status=none
printf 'X' | dd of="$T/bad.vhdx" bs=1 seek=$((256 * 1024 + 40)) conv=notrunc status=none
expect_error "vhdx region table" "$T/bad.vhdx" "region table" img info -f vhdx "$T/bad.vhdx"

finish
