#!/bin/bash
# tests/integration/vmdk.sh — VMDK interop with qemu-img both ways: every subformat
# (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized)
# and adapter type (ide, lsilogic, buslogic, legacyESX) written by vessel is equal for
# `qemu-img compare` and clean for `qemu-img check`, and written by qemu-img reads equal in
# vessel; a vmdk delta on a vmdk parent reads and commits; a qcow2 overlay on a vmdk base reads;
# compressed convert; info fields; malformed descriptors and headers fail with one line naming
# file and field.
source "$(dirname "$0")/lib.sh"
require_vessel

MiB=1048576
SIZE=$((24 * MiB + 12288))
SRC=$T/src.raw
make_raw "$SRC" "$SIZE" vmdk

SUBFORMATS=(monolithicSparse streamOptimized monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat)
ADAPTERS=(ide lsilogic buslogic legacyESX)

# combos: monolithicSparse and streamOptimized with every adapter, the others rotate adapters
combos=()
for a in "${ADAPTERS[@]}"; do
    combos+=("monolithicSparse:$a" "streamOptimized:$a")
done
combos+=("monolithicFlat:ide" "monolithicFlat:lsilogic" "twoGbMaxExtentSparse:buslogic"
    "twoGbMaxExtentSparse:ide" "twoGbMaxExtentFlat:legacyESX")

heads_for() { # ADAPTER SIZE — the geometry rule vessel follows
    if [ "$1" = ide ]; then echo 16; elif [ "$2" -le $((1024 * MiB)) ]; then echo 64;
    elif [ "$2" -le $((2048 * MiB)) ]; then echo 128; else echo 255; fi
}

descriptor_of() { # IMG — the descriptor text (embedded at sector 1 for monolithic sparse)
    if [ "$(head -c 4 "$1")" = KDMV ]; then
        dd if="$1" bs=512 skip=1 count=20 status=none | tr -d '\0'
    else
        tr -d '\0' <"$1"
    fi
}

# ---- vessel writes, qemu-img judges -------------------------------------------------------------
for c in "${combos[@]}"; do
    sub=${c%%:*} ad=${c##*:}
    tag="$sub adapter_type=$ad"
    v=$T/v-$sub-$ad.vmdk
    vs img convert -f raw -O vmdk -o "subformat=$sub,adapter_type=$ad" "$SRC" "$v"
    if [ "$VS_RC" -ne 0 ]; then
        not_ok "vessel convert raw->vmdk $tag (exit $VS_RC)"
        continue
    fi
    ok "vessel convert raw->vmdk $tag"
    assert_same "vessel-written $tag: qemu-img compare equal" "$SRC" "$v"
    assert_qemu_clean "vessel-written $tag" "$v"
    desc=$(descriptor_of "$v")
    want_heads=$(heads_for "$ad" "$SIZE")
    if grep -q "createType=\"$sub\"" <<<"$desc" && grep -q "ddb.adapterType = \"$ad\"" <<<"$desc" &&
        grep -q "ddb.geometry.heads = \"$want_heads\"" <<<"$desc"; then
        ok "vessel-written $tag: descriptor has createType, adapterType, heads=$want_heads"
    else
        not_ok "vessel-written $tag: descriptor has createType, adapterType, heads=$want_heads"
        diag <<<"$desc"
    fi
    rm -f "$T"/v-"$sub"-"$ad"*
done

# compressed convert (-c) into a stream, and qemu-io writes into a vessel-made sparse image
v=$T/vc.vmdk
vs img convert -c -f raw -O vmdk -o subformat=streamOptimized "$SRC" "$v"
[ "$VS_RC" -eq 0 ] && ok "vessel convert -c to streamOptimized" || not_ok "vessel convert -c (exit $VS_RC)"
assert_same "vessel -c stream: qemu-img compare equal" "$SRC" "$v"
vs img convert -c -f raw -O vmdk "$SRC" "$T/vc2.vmdk"
if [ "$VS_RC" -ne 0 ] && grep -q "streamOptimized" "$VS_ERR"; then
    ok "convert -c to monolithicSparse is refused, pointing at streamOptimized"
else
    not_ok "convert -c to monolithicSparse is refused (exit $VS_RC)"
fi
vs img create -f vmdk "$T/w.vmdk" 16M
[ "$VS_RC" -eq 0 ] && ok "vessel img create -f vmdk" || not_ok "vessel img create -f vmdk (exit $VS_RC)"
rm -f "$T/w.raw"
truncate -s 16M "$T/w.raw"
WW=(-c "write -P 0x41 1000 70000" -c "write -P 0x42 5M 1M" -c "write -z 5M 64k")
quiet qemu-io -f vmdk "${WW[@]}" "$T/w.vmdk"
quiet qemu-io -f raw "${WW[@]}" "$T/w.raw"
assert_vessel_reads "qemu-io writes into a vessel-made monolithicSparse" "$T/w.vmdk" "$T/w.raw"
assert_qemu_clean "qemu-io-written vessel-made monolithicSparse" "$T/w.vmdk"

# ---- qemu-img writes, vessel judges -------------------------------------------------------------
for c in "${combos[@]}"; do
    sub=${c%%:*} ad=${c##*:}
    tag="$sub adapter_type=$ad"
    q=$T/q-$sub-$ad.vmdk
    quiet qemu-img convert -f raw -O vmdk -o "subformat=$sub,adapter_type=$ad" "$SRC" "$q"
    assert_vessel_reads "qemu-written $tag" "$q" "$SRC"
    expect_rc 0 "qemu-written $tag: vessel img check clean" img check "$q"
    rm -f "$T"/q-"$sub"-"$ad"*
done

# info: the format-specific fields match qemu-img's
q=$T/info.vmdk
quiet qemu-img convert -f raw -O vmdk -o subformat=twoGbMaxExtentSparse "$SRC" "$q"
if command -v jq >/dev/null; then
    vs img info --output=json "$q"
    mine=$(jq -c '.["format-specific"].data | {cid, "parent-cid", "create-type", n: (.extents|length), cs: .extents[0]["cluster-size"], vs: .extents[0]["virtual-size"]}' "$VS_OUT" 2>&1)
    theirs=$(timeout 60 qemu-img info --output=json "$q" | jq -c '.["format-specific"].data | {cid, "parent-cid", "create-type", n: (.extents|length), cs: .extents[0]["cluster-size"], vs: .extents[0]["virtual-size"]}')
    if [ "$mine" = "$theirs" ]; then ok "info format-specific matches qemu-img: $mine"; else
        not_ok "info format-specific matches qemu-img"
        printf 'vessel: %s\nqemu:   %s\n' "$mine" "$theirs" | diag
    fi
else
    skip "jq not installed: info comparison"
fi

# ---- delta links: a vmdk child on a vmdk parent -------------------------------------------------
DSIZE=$((16 * MiB))
head -c "$DSIZE" "$SRC" >"$T/expect.raw"
quiet qemu-img convert -f raw -O vmdk "$T/expect.raw" "$T/base.vmdk"
quiet qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$T/child.vmdk"
W=("write -P 0x61 0 4096" "write -P 0x62 65000 200000" "write -P 0x63 $((9 * MiB)) $((2 * MiB))")
args=()
for w in "${W[@]}"; do args+=(-c "$w"); done
quiet qemu-io -f vmdk "${args[@]}" "$T/child.vmdk"
quiet qemu-io -f raw "${args[@]}" "$T/expect.raw"
assert_vessel_reads "qemu-made vmdk delta on vmdk parent" "$T/child.vmdk" "$T/expect.raw"
vs img info --backing-chain "$T/child.vmdk"
if [ "$VS_RC" -eq 0 ] && grep -q "base.vmdk" "$VS_OUT"; then ok "vessel info shows the parent"; else
    not_ok "vessel info shows the parent (exit $VS_RC)"
fi
expect_ok "vessel img commit of the delta into its parent" img commit "$T/child.vmdk"
assert_same "after commit: parent equals the expected content" "$T/expect.raw" "$T/base.vmdk"
assert_qemu_clean "after commit: parent" "$T/base.vmdk"
assert_same "after commit: child still reads the same" "$T/expect.raw" "$T/child.vmdk"

# a vessel-made delta, written by qemu-io, read by both
vs img create -f vmdk -b base.vmdk -F vmdk "$T/child2.vmdk"
[ "$VS_RC" -eq 0 ] && ok "vessel creates a vmdk delta" || not_ok "vessel creates a vmdk delta (exit $VS_RC)"
quiet qemu-io -f vmdk -c "write -P 0x71 $((3 * MiB + 17)) 100000" "$T/child2.vmdk"
quiet qemu-io -f raw -c "write -P 0x71 $((3 * MiB + 17)) 100000" "$T/expect.raw"
assert_same "vessel-made delta: qemu-img compare equal" "$T/expect.raw" "$T/child2.vmdk"
assert_vessel_reads "vessel-made delta" "$T/child2.vmdk" "$T/expect.raw"

# a qcow2 overlay on a vmdk base
quiet qemu-img create -q -f qcow2 -b base.vmdk -F vmdk "$T/over.qcow2"
quiet qemu-io -f qcow2 -c "write -P 0x81 $((5 * MiB)) 300000" -c "write -z 0 65536" "$T/over.qcow2"
quiet qemu-img convert -f vmdk -O raw "$T/base.vmdk" "$T/base.raw"
quiet qemu-io -f raw -c "write -P 0x81 $((5 * MiB)) 300000" -c "write -z 0 65536" "$T/base.raw"
assert_vessel_reads "qcow2 overlay on a vmdk base" "$T/over.qcow2" "$T/base.raw"

# ---- malformed input: one line naming the file and the field -----------------------------------
quiet qemu-img create -q -f vmdk "$T/good.vmdk" 4M
quiet qemu-img create -q -f vmdk -o subformat=monolithicFlat "$T/flat.vmdk" 4M

printf 'version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8192 FLATX "flat-flat.vmdk" 0\n' >"$T/bad1.vmdk"
expect_error "unknown extent type" "$T/bad1.vmdk" "line 5: extent type 'FLATX' unknown" img info "$T/bad1.vmdk"
printf 'version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8192 FLAT "nothere.vmdk" 0\n' >"$T/bad2.vmdk"
expect_error "missing extent file" "$T/bad2.vmdk" "extent 'nothere.vmdk'" img info "$T/bad2.vmdk"
printf 'version=1\nCID=xyz\ncreateType="monolithicFlat"\n' >"$T/bad3.vmdk"
expect_error "CID not hex" "$T/bad3.vmdk" "line 2: CID 'xyz'" img info "$T/bad3.vmdk"
printf 'version=1\nCID=1\ncreateType="hugeSparse"\n' >"$T/bad4.vmdk"
expect_error "unknown createType" "$T/bad4.vmdk" "createType 'hugeSparse'" img convert -O raw "$T/bad4.vmdk" "$T/out.raw"

le32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($2 & 255)) $((($2 >> 8) & 255)) $((($2 >> 16) & 255)) $((($2 >> 24) & 255)))" | dd of="$1" bs=1 seek="$3" conv=notrunc status=none; }
cp "$T/good.vmdk" "$T/bad5.vmdk"
le32 "$T/bad5.vmdk" 3 20 # grainSize
expect_error "grain size not a power of two" "$T/bad5.vmdk" "grain size 3" img info "$T/bad5.vmdk"
cp "$T/good.vmdk" "$T/bad6.vmdk"
le32 "$T/bad6.vmdk" 1000 44 # numGTEsPerGT
expect_error "grain table size" "$T/bad6.vmdk" "grain table entries" img compare "$T/bad6.vmdk" "$T/good.vmdk"
cp "$T/good.vmdk" "$T/bad7.vmdk"
le32 "$T/bad7.vmdk" 1073741824 56 # gdOffset
expect_error "grain directory beyond EOF" "$T/bad7.vmdk" "grain directory" img info "$T/bad7.vmdk"
quiet qemu-img create -q -f vmdk -o subformat=streamOptimized "$T/bad8.vmdk" 4M
vs img convert -O vmdk -o subformat=streamOptimized "$T/good.vmdk" "$T/bad8.vmdk"
sz=$(stat -c %s "$T/bad8.vmdk")
le32 "$T/bad8.vmdk" 9 $((sz - 1536 + 12)) # footer marker type
expect_error "stream footer" "$T/bad8.vmdk" "footer" img info "$T/bad8.vmdk"
# a grain table entry beyond the end of the file: read fails, check reports it
cp "$T/good.vmdk" "$T/bad9.vmdk"
quiet qemu-io -f vmdk -c "write -P 1 0 64k" "$T/bad9.vmdk"
gd=$(od -An -tu4 -j 56 -N 4 "$T/bad9.vmdk" | tr -d ' ')
gt=$(od -An -tu4 -j $((gd * 512)) -N 4 "$T/bad9.vmdk" | tr -d ' ')
le32 "$T/bad9.vmdk" 2147483000 $((gt * 512))
expect_error "grain beyond EOF" "$T/bad9.vmdk" "grain 0.*beyond the end" img convert -O raw "$T/bad9.vmdk" "$T/out.raw"
vs img check "$T/bad9.vmdk"
if [ "$VS_RC" -eq 2 ] && grep -q "beyond the end of the file" "$VS_OUT" "$VS_ERR"; then
    ok "check reports the grain beyond EOF as corruption (exit 2)"
else
    not_ok "check reports the grain beyond EOF as corruption (exit $VS_RC)"
    diag <"$VS_OUT"
fi

finish
