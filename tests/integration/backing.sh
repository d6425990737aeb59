#!/bin/bash
# tests/integration/backing.sh — backing chains three deep (base ← mid ← top, each layer written
# at different offsets, zero writes hiding backing data) written by qemu, by vessel and mixed, read
# identically by both tools; backing names resolved relative to the overlay's directory;
# `vessel img commit` (one level and -b base) and `vessel img rebase` (safe, -u, and to no
# backing) give images qemu-img checks clean and compares equal to the expected content.
source "$(dirname "$0")/lib.sh"
require_vessel
need_jq

SIZE=32M
W_BASE=("write -P 0x01 0 8M" "write -P 0x02 20M 4M" "write -P 0x03 30M 2M")
W_MID=("write -P 0x11 4M 8M" "write -z 21M 1M" "write -P 0x12 31M 1M" "write -P 0x13 12345 1000")
W_TOP=("write -P 0x21 6M 1049353" "write -P 0x22 20971620 500" "write -z 0 64k" "write -P 0x23 30M 4k")

qio_list() { # FMT IMG WRITES…
    local fmt=$1 img=$2 args=() w
    shift 2
    for w in "$@"; do args+=(-c "$w"); done
    quiet qemu-io -f "$fmt" "${args[@]}" "$img"
}

# expected contents after each layer
truncate -s $SIZE "$T/s1.raw"
qio_list raw "$T/s1.raw" "${W_BASE[@]}"
cp --sparse=always "$T/s1.raw" "$T/s2.raw"
qio_list raw "$T/s2.raw" "${W_MID[@]}"
cp --sparse=always "$T/s2.raw" "$T/s3.raw"
qio_list raw "$T/s3.raw" "${W_TOP[@]}"

check_chain() { # TAG DIR — top/mid/base of DIR read as s3/s2/s1 in both tools, all clean
    local tag=$1 d=$2 layer want
    for pair in "top s3" "mid s2" "base s1"; do
        set -- $pair
        layer=$d/$1.qcow2
        want=$T/$2.raw
        assert_same "$tag: qemu-img compare $1 == expected" "$want" "$layer"
        assert_qemu_clean "$tag: $1" "$layer"
    done
    assert_vessel_reads "$tag: top (3-deep chain)" "$d/top.qcow2" "$T/s3.raw"
    assert_vessel_reads "$tag: mid" "$d/mid.qcow2" "$T/s2.raw"
    # chain info agrees with qemu's
    vs img info --output=json --backing-chain "$d/top.qcow2"
    if [ "$VS_RC" -eq 0 ] &&
        [ "$(jq -c '[.[] | .["backing-filename"] // null]' "$VS_OUT")" = \
            "$(qemu-img info --output=json --backing-chain "$d/top.qcow2" | jq -c '[.[] | .["backing-filename"] // null]')" ]; then
        ok "$tag: vessel info --backing-chain lists the same backing names as qemu-img"
    else
        not_ok "$tag: vessel info --backing-chain lists the same backing names as qemu-img"
        diag 20 <"$VS_OUT"
    fi
}

# ---- 1. qemu builds the chain (relative names), vessel reads it ----------------------------------
d=$T/qemu
mkdir -p "$d"
(
    cd "$d"
    quiet qemu-img create -q -f qcow2 base.qcow2 $SIZE
    quiet qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    quiet qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
)
qio_list qcow2 "$d/base.qcow2" "${W_BASE[@]}"
qio_list qcow2 "$d/mid.qcow2" "${W_MID[@]}"
qio_list qcow2 "$d/top.qcow2" "${W_TOP[@]}"
cp -a "$d" "$T/qemu-pristine"
cd /
check_chain "qemu chain, vessel run from /" "$d"

# ---- 2. vessel builds the chain: create -b and convert -B --------------------------------------
d=$T/vessel
mkdir -p "$d"
cd "$d"
expect_ok "vessel convert raw -> base" img convert -f raw -O qcow2 "$T/s1.raw" base.qcow2
expect_ok "vessel convert -B base (overlay holding the difference)" \
    img convert -f raw -O qcow2 -B base.qcow2 -F qcow2 "$T/s2.raw" mid.qcow2
expect_ok "vessel create -b mid -F qcow2" img create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio_list qcow2 "$d/top.qcow2" "${W_TOP[@]}"
cd /
check_chain "vessel chain" "$d"
got=$(qemu-img info --output=json "$d/top.qcow2" | jq -r '.["backing-filename"] + " " + .["backing-filename-format"]')
if [ "$got" = "mid.qcow2 qcow2" ]; then ok "vessel create -b stores name and format as given"; else
    not_ok "vessel create -b stores name and format as given (got '$got')"
fi
got=$(qemu-img info --output=json "$d/top.qcow2" | jq -r '.["virtual-size"]')
if [ "$got" = $((32 * 1048576)) ]; then ok "vessel create -b without size takes the backing size"; else
    not_ok "vessel create -b without size takes the backing size (got $got)"
fi

# ---- 3. mixed: vessel overlay on a qemu base, qemu overlay on a vessel mid ------------------------
d=$T/mixed
mkdir -p "$d"
cp "$T/qemu-pristine/base.qcow2" "$d/base.qcow2"
cd "$d"
expect_ok "vessel create overlay on a qemu base" img create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 $SIZE
cd /
qio_list qcow2 "$d/mid.qcow2" "${W_MID[@]}"
(cd "$d" && quiet qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2)
qio_list qcow2 "$d/top.qcow2" "${W_TOP[@]}"
check_chain "mixed chain (qemu base, vessel mid, qemu top)" "$d"

d=$T/mixed2
mkdir -p "$d"
cp "$T/vessel/base.qcow2" "$d/base.qcow2"
(cd "$d" && quiet qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2)
qio_list qcow2 "$d/mid.qcow2" "${W_MID[@]}"
cd "$d"
expect_ok "vessel convert -B mid (vessel top over qemu mid)" \
    img convert -f raw -O qcow2 -B mid.qcow2 -F qcow2 "$T/s3.raw" top.qcow2
cd /
check_chain "mixed chain (vessel base, qemu mid, vessel top)" "$d"

# ---- 4. commit --------------------------------------------------------------------------------------
d=$T/commit1
cp -a "$T/qemu-pristine" "$d"
expect_ok "vessel img commit top" img commit "$d/top.qcow2"
assert_same "after commit: mid == top's content" "$T/s3.raw" "$d/mid.qcow2"
assert_same "after commit: top still reads the same" "$T/s3.raw" "$d/top.qcow2"
assert_same "after commit: base unchanged" "$T/s1.raw" "$d/base.qcow2"
assert_qemu_clean "after commit: mid" "$d/mid.qcow2"
assert_qemu_clean "after commit: top" "$d/top.qcow2"
alloc=$(qemu-img map --output=json "$d/top.qcow2" | jq '[.[] | select(.depth == 0 and (.data or .zero))] | length')
if [ "$alloc" = 0 ]; then ok "after commit: top is emptied (reads through)"; else
    not_ok "after commit: top is emptied (reads through): $alloc extents still allocated in top"
fi

d=$T/commit2
cp -a "$T/qemu-pristine" "$d"
expect_ok "vessel img commit -b base top" img commit -b "$d/base.qcow2" "$d/top.qcow2"
assert_same "after commit -b base: base == top's content" "$T/s3.raw" "$d/base.qcow2"
assert_same "after commit -b base: top still reads the same" "$T/s3.raw" "$d/top.qcow2"
assert_qemu_clean "after commit -b base: base" "$d/base.qcow2"

d=$T/commit3
cp -a "$T/vessel" "$d"
expect_ok "vessel img commit on a vessel-written chain" img commit "$d/top.qcow2"
assert_same "vessel chain after commit: mid == s3" "$T/s3.raw" "$d/mid.qcow2"
assert_qemu_clean "vessel chain after commit: mid" "$d/mid.qcow2"

# ---- 5. rebase ----------------------------------------------------------------------------------
d=$T/rebase-safe
cp -a "$T/qemu-pristine" "$d"
cd "$d"
expect_ok "vessel img rebase -b base (safe, drops mid)" img rebase -b base.qcow2 -F qcow2 top.qcow2
cd /
assert_same "after safe rebase: top reads the same" "$T/s3.raw" "$d/top.qcow2"
assert_qemu_clean "after safe rebase" "$d/top.qcow2"
got=$(qemu-img info --output=json "$d/top.qcow2" | jq -r '.["backing-filename"]')
if [ "$got" = base.qcow2 ]; then ok "after safe rebase: backing-filename is base.qcow2"; else
    not_ok "after safe rebase: backing-filename is base.qcow2 (got $got)"
fi
rm -f "$d/mid.qcow2"
assert_vessel_reads "after safe rebase, mid deleted" "$d/top.qcow2" "$T/s3.raw"

d=$T/rebase-none
cp -a "$T/qemu-pristine" "$d"
expect_ok "vessel img rebase -b '' (flatten)" img rebase -b "" "$d/top.qcow2"
rm -f "$d/mid.qcow2" "$d/base.qcow2"
assert_same "after rebase -b '': standalone top reads the same" "$T/s3.raw" "$d/top.qcow2"
assert_qemu_clean "after rebase -b ''" "$d/top.qcow2"

d=$T/rebase-unsafe
cp -a "$T/qemu-pristine" "$d"
cp -a "$T/qemu-pristine" "$T/rebase-unsafe-qemu"
cd "$d"
expect_ok "vessel img rebase -u -b base" img rebase -u -b base.qcow2 -F qcow2 top.qcow2
cd "$T/rebase-unsafe-qemu"
quiet qemu-img rebase -u -b base.qcow2 -F qcow2 top.qcow2
cd /
assert_same "rebase -u: same content as qemu-img rebase -u" "$T/rebase-unsafe-qemu/top.qcow2" "$d/top.qcow2"
a=$(qemu-img info --output=json "$d/top.qcow2" | jq -c '[.["backing-filename"], .["backing-filename-format"], .["virtual-size"]]')
b=$(qemu-img info --output=json "$T/rebase-unsafe-qemu/top.qcow2" | jq -c '[.["backing-filename"], .["backing-filename-format"], .["virtual-size"]]')
if [ "$a" = "$b" ]; then ok "rebase -u: header as qemu-img writes it ($a)"; else
    not_ok "rebase -u: header as qemu-img writes it (vessel $a, qemu $b)"
fi
assert_qemu_clean "after rebase -u" "$d/top.qcow2"
# only the header may change: the data clusters are where they were
cmp -s -i 65536:65536 "$d/top.qcow2" "$T/qemu-pristine/top.qcow2" &&
    ok "rebase -u changed nothing but the header cluster" ||
    not_ok "rebase -u changed nothing but the header cluster"

# ---- 6. a missing backing file is an error naming it ---------------------------------------------
d=$T/missing
cp -a "$T/qemu-pristine" "$d"
rm "$d/base.qcow2"
expect_error "missing backing file" "base.qcow2" "base\.qcow2|backing|No such file" \
    img convert -O raw "$d/top.qcow2" "$T/out.raw"

finish
