#!/bin/bash
# tests/integration/snapshots.sh — internal qcow2 snapshots interoperate: snapshots vessel creates
# are listed by `qemu-img snapshot -l` and vice versa; vessel's snapshot takes references on the
# shared clusters (qemu's later writes copy-on-write and applying the snapshot in qemu restores the
# data); `vessel img snapshot -a` restores content; `-d` leaves `qemu-img check` clean.
source "$(dirname "$0")/lib.sh"
require_vessel

MiB=1048576
src=$T/src.raw
make_raw "$src" $((16 * MiB)) snapshots
after=$T/after.raw # src with the post-snapshot writes
cp --sparse=always "$src" "$after"
W=(-c "write -P 0x61 0 128k" -c "write -z $((2 * MiB)) 64k" -c "write -P 0x62 $((9 * MiB + 100)) 70000")
quiet qemu-io -f raw "${W[@]}" "$after"

listed() { # IMG NAME TOOL — NAME appears in the snapshot list of TOOL (qemu|vessel)
    if [ "$3" = qemu ]; then
        qemu-img snapshot -l "$1" 2>/dev/null | awk 'NR > 2 {print $2}' | grep -qx "$2"
    else
        vs img snapshot -l "$1"
        [ "$VS_RC" -eq 0 ] && awk 'NR > 2 {print $2}' "$VS_OUT" | grep -qx "$2"
    fi
}

for origin in qemu vessel; do
    img=$T/$origin.qcow2
    rm -f "$img"
    if [ $origin = qemu ]; then
        quiet qemu-img convert -O qcow2 "$src" "$img"
    else
        expect_ok "vessel convert to qcow2 (snapshot base)" img convert -O qcow2 "$src" "$img"
    fi
    tag="$origin-written image"

    # vessel creates, qemu lists; qemu writes (COW), qemu applies → original content
    expect_ok "$tag: vessel snapshot -c s1" img snapshot -c s1 "$img"
    assert_qemu_clean "$tag: after vessel snapshot -c" "$img"
    if listed "$img" s1 qemu; then ok "$tag: qemu-img snapshot -l lists s1"; else
        not_ok "$tag: qemu-img snapshot -l lists s1"
        qemu-img snapshot -l "$img" 2>&1 | diag || true
    fi
    quiet qemu-io -f qcow2 "${W[@]}" "$img"
    assert_same "$tag: qemu's writes after vessel's snapshot land in the active layer" "$after" "$img"
    assert_qemu_clean "$tag: qemu writes after vessel snapshot (COW refcounts right)" "$img"
    cp "$img" "$T/qapply.qcow2"
    quiet qemu-img snapshot -a s1 "$T/qapply.qcow2"
    assert_same "$tag: qemu-img snapshot -a s1 (made by vessel) restores the original" "$src" "$T/qapply.qcow2"

    # qemu creates, vessel lists
    quiet qemu-img snapshot -c s2 "$img"
    if listed "$img" s2 vessel; then ok "$tag: vessel img snapshot -l lists s2 (made by qemu)"; else
        not_ok "$tag: vessel img snapshot -l lists s2 (made by qemu)"
        diag <"$VS_OUT"
    fi
    if listed "$img" s1 vessel; then ok "$tag: vessel img snapshot -l lists s1"; else
        not_ok "$tag: vessel img snapshot -l lists s1"
    fi
    # vessel's list looks like qemu's (same header line, same IDs/names column)
    vs img snapshot -l "$img"
    if [ "$(awk 'NR > 2 {print $1, $2}' "$VS_OUT")" = "$(qemu-img snapshot -l "$img" | awk 'NR > 2 {print $1, $2}')" ]; then
        ok "$tag: vessel snapshot -l shows the same IDs and names as qemu-img"
    else
        not_ok "$tag: vessel snapshot -l shows the same IDs and names as qemu-img"
        diag <"$VS_OUT"
    fi

    # vessel applies: s1 (vessel's) then s2 (qemu's)
    expect_ok "$tag: vessel snapshot -a s1" img snapshot -a s1 "$img"
    assert_same "$tag: after vessel apply s1, content is the original" "$src" "$img"
    assert_qemu_clean "$tag: after vessel apply s1" "$img"
    assert_vessel_reads "$tag: after vessel apply s1" "$img" "$src"
    expect_ok "$tag: vessel snapshot -a s2 (qemu's)" img snapshot -a s2 "$img"
    assert_same "$tag: after vessel apply s2, content is the post-write state" "$after" "$img"
    assert_qemu_clean "$tag: after vessel apply s2" "$img"

    # write after apply must not disturb the snapshots
    quiet qemu-io -f qcow2 -c "write -P 0x70 0 1M" "$img"
    cp "$img" "$T/check-s1.qcow2"
    quiet qemu-img snapshot -a s1 "$T/check-s1.qcow2"
    assert_same "$tag: s1 still intact after writes" "$src" "$T/check-s1.qcow2"

    # delete: vessel deletes qemu's and its own; qemu check clean, no leaks
    expect_ok "$tag: vessel snapshot -d s2" img snapshot -d s2 "$img"
    if listed "$img" s2 qemu; then not_ok "$tag: s2 gone from qemu-img snapshot -l"; else
        ok "$tag: s2 gone from qemu-img snapshot -l"
    fi
    assert_qemu_clean "$tag: after vessel snapshot -d s2" "$img"
    expect_ok "$tag: vessel snapshot -d s1" img snapshot -d s1 "$img"
    assert_qemu_clean "$tag: after deleting every snapshot" "$img"
    n=$(qemu-img snapshot -l "$img" | wc -l)
    if [ "$n" -eq 0 ]; then ok "$tag: no snapshots left"; else not_ok "$tag: no snapshots left ($n lines)"; fi
    # the active data survived all of it
    cp --sparse=always "$after" "$T/final.raw"
    quiet qemu-io -f raw -c "write -P 0x70 0 1M" "$T/final.raw"
    assert_same "$tag: active content after deletes" "$T/final.raw" "$img"
done

# snapshot of a compressed image (compressed clusters get refcount 2), delete → clean
img=$T/comp.qcow2
quiet qemu-img convert -c -O qcow2 "$src" "$img"
expect_ok "compressed image: vessel snapshot -c" img snapshot -c c1 "$img"
assert_qemu_clean "compressed image: after vessel snapshot -c" "$img"
quiet qemu-io -f qcow2 "${W[@]}" "$img"
expect_ok "compressed image: vessel snapshot -a c1" img snapshot -a c1 "$img"
assert_same "compressed image: apply restores" "$src" "$img"
expect_ok "compressed image: vessel snapshot -d c1" img snapshot -d c1 "$img"
assert_qemu_clean "compressed image: after delete" "$img"

# errors: apply/delete of an unknown snapshot name it; a duplicate name is refused like qemu does
img=$T/vessel.qcow2
expect_error "apply an unknown snapshot" "vessel.qcow2" "nosuch" img snapshot -a nosuch "$img"
expect_error "delete an unknown snapshot" "vessel.qcow2" "nosuch" img snapshot -d nosuch "$img"
expect_ok "create snapshot dup" img snapshot -c dup "$img"
vs img snapshot -c dup "$img"
if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ]; then ok "a duplicate snapshot name is refused"; else
    not_ok "a duplicate snapshot name is refused (exit $VS_RC)"
fi
assert_qemu_clean "after the refused duplicate" "$img"

finish
