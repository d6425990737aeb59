#!/bin/bash
# tests/integration/resize.sh — `vessel img resize` grows (relative and absolute sizes, far enough
# that the L1 table must grow, on v2 and v3 images and raw) and shrinks only with --shrink; after
# each step qemu-img checks the image clean, reports the new virtual size, and the data below the
# old end is intact while the new space reads as zeros.
source "$(dirname "$0")/lib.sh"
require_vessel
need_jq

MiB=1048576
src=$T/src.raw
make_raw "$src" $((32 * MiB)) resize

vsize() { qemu-img info --output=json "$1" | jq -r '.["virtual-size"]'; }
# expect_size DESC IMG BYTES [CUT] — virtual size, qemu check clean, content = src cut to CUT
# (default BYTES; the smallest size the image had) and extended with zeros to BYTES
expect_size() {
    local desc=$1 img=$2 want=$3 cut=${4:-$3} got
    got=$(vsize "$img")
    if [ "$got" = "$want" ]; then ok "$desc: virtual size $want"; else
        not_ok "$desc: virtual size $want (got $got)"
    fi
    assert_qemu_clean "$desc" "$img"
    cp --sparse=always "$src" "$T/ref.raw"
    [ "$cut" -lt "$(stat -c %s "$T/ref.raw")" ] && truncate -s "$cut" "$T/ref.raw"
    truncate -s "$want" "$T/ref.raw"
    assert_same "$desc: content is the source cut/extended to $want" "$T/ref.raw" "$img"
}

for compat in 1.1 0.10; do
    img=$T/r-$compat.qcow2
    quiet qemu-img convert -O qcow2 -o compat=$compat "$src" "$img"
    tag="compat=$compat"
    expect_ok "$tag: resize +16M" img resize "$img" +16M
    expect_size "$tag: after +16M" "$img" $((48 * MiB))
    expect_ok "$tag: resize 64M (absolute)" img resize "$img" 64M
    expect_size "$tag: after 64M" "$img" $((64 * MiB))
    # the grown area is writable and reads back
    quiet qemu-io -f qcow2 -c "write -P 0x5e $((60 * MiB)) 1M" "$img"
    run_q "$tag: qemu writes into the grown area" qemu-io -r -f qcow2 -c "read -P 0x5e $((60 * MiB)) 1M" "$img"
    quiet qemu-io -f qcow2 -c "write -z $((60 * MiB)) 1M" "$img"
    # grow so far the L1 table (one entry per 512 MiB) must be enlarged and moved
    expect_ok "$tag: resize to 3T (L1 grows)" img resize "$img" 3T
    expect_size "$tag: after 3T" "$img" $((3 << 40))
    # shrinking needs --shrink
    before=$(sha "$img")
    vs img resize "$img" 16M
    if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ] && grep -qi shrink "$VS_ERR"; then
        ok "$tag: shrinking without --shrink is refused, pointing at --shrink"
    else
        not_ok "$tag: shrinking without --shrink is refused, pointing at --shrink (exit $VS_RC)"
    fi
    [ "$(sha "$img")" = "$before" ] && ok "$tag: refused shrink changed nothing" ||
        not_ok "$tag: refused shrink changed nothing"
    expect_ok "$tag: resize --shrink 24M" img resize --shrink "$img" 24M
    expect_size "$tag: after --shrink 24M" "$img" $((24 * MiB))
    expect_ok "$tag: resize --shrink -4M (relative)" img resize --shrink "$img" -4M
    expect_size "$tag: after -4M" "$img" $((20 * MiB))
    assert_vessel_reads "$tag: vessel reads the shrunk image" "$img" "$T/ref.raw"
    # growing again after a shrink: the old data beyond 20M must not reappear
    expect_ok "$tag: grow back to 32M" img resize "$img" 32M
    expect_size "$tag: regrown (old data beyond 20M stays gone)" "$img" $((32 * MiB)) $((20 * MiB))
done

# a vessel-written image, grown and shrunk
img=$T/v.qcow2
rm -f "$img"
vs img convert -O qcow2 "$src" "$img"
expect_ok "vessel-written: resize +1G" img resize "$img" +1G
expect_size "vessel-written: after +1G" "$img" $((32 * MiB + (1 << 30)))
expect_ok "vessel-written: resize --shrink 8M" img resize --shrink "$img" 8M
expect_size "vessel-written: after --shrink 8M" "$img" $((8 * MiB))

# raw files
r=$T/r.raw
cp --sparse=always "$src" "$r"
expect_ok "raw: resize +1M" img resize -f raw "$r" +1M
[ "$(stat -c %s "$r")" = $((33 * MiB)) ] && ok "raw: file is 33 MiB" || not_ok "raw: file is 33 MiB"
expect_ok "raw: resize --shrink 1M" img resize -f raw --shrink "$r" 1M
[ "$(stat -c %s "$r")" = $((1 * MiB)) ] && ok "raw: file is 1 MiB" || not_ok "raw: file is 1 MiB"
cmp -s -n $MiB "$r" "$src" && ok "raw: first MiB intact" || not_ok "raw: first MiB intact"

# an image with an internal snapshot: growing keeps the snapshot usable
img=$T/snap.qcow2
quiet qemu-img convert -O qcow2 "$src" "$img"
quiet qemu-img snapshot -c s1 "$img"
expect_ok "image with a snapshot: resize +8M" img resize "$img" +8M
assert_qemu_clean "image with a snapshot, grown" "$img"
quiet qemu-img snapshot -a s1 "$img"
assert_same "snapshot still restores the original after resize" "$src" "$img"

# invalid sizes
before=$(sha "$img")
vs img resize "$img" 12q
if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ] && grep -q 12q "$VS_ERR" && [ "$(sha "$img")" = "$before" ]; then
    ok "resize to an invalid size is refused naming it"
else
    not_ok "resize to an invalid size is refused naming it (exit $VS_RC)"
fi

finish
