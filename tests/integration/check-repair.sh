#!/bin/bash
# tests/integration/check-repair.sh — `vessel img check` classifies deliberately damaged images the
# way `qemu-img check` does (clean → exit 0, leaks → exit 3 with the same leak count, corruption →
# exit 2), agrees with qemu's statistics on clean images, and repairs: `-r leaks` leaves an image
# qemu-img checks clean, `-r all` repairs a refcount that dropped to 0 under a used cluster.
source "$(dirname "$0")/lib.sh"
require_vessel
need_jq

# A small image: 64 KiB clusters; header, refcount table, refcount block, L1, L2, data clusters.
base=$T/base.qcow2
quiet qemu-img create -q -f qcow2 "$base" 8M
quiet qemu-io -f qcow2 -c "write -P 1 0 64k" -c "write -P 2 1M 128k" -c "write -P 3 5M 64k" "$base"
CS=65536
reftable=$(read_be "$base" 48 8)
refblock=$(read_be "$base" "$reftable" 8)
l1=$(read_be "$base" 40 8)
l2=$(($(read_be "$base" "$l1" 8) & 0x00fffffffffffe00))
data0=$(($(read_be "$base" "$l2" 8) & 0x00fffffffffffe00))
echo "# reftable=$reftable refblock=$refblock l1=$l1 l2=$l2 data0=$data0"

# vcheck IMG [ARGS…] — vessel img check --output=json; sets VC_LEAKS, VC_CORR (or -1)
vcheck() {
    local img=$1
    shift
    vs img check --output=json "$@" "$img"
    VC_LEAKS=$(jq -r '.leaks // 0' "$VS_OUT" 2>/dev/null || true)
    VC_CORR=$(jq -r '.corruptions // 0' "$VS_OUT" 2>/dev/null || true)
    [[ $VC_LEAKS =~ ^[0-9]+$ ]] || VC_LEAKS=-1
    [[ $VC_CORR =~ ^[0-9]+$ ]] || VC_CORR=-1
}
# same_as_qemu TAG IMG — vessel's verdict equals qemu-img's on IMG (exit code; leak count; whether
# corruptions were found). Neither may modify the image.
same_as_qemu() {
    local tag=$1 img=$2 qrc=0 before
    before=$(sha "$img")
    qemu-img check --output=json "$img" >"$T/q.json" 2>/dev/null || qrc=$?
    local qleaks qcorr
    qleaks=$(jq -r '.leaks // 0' "$T/q.json")
    qcorr=$(jq -r '.corruptions // 0' "$T/q.json")
    vcheck "$img"
    if [ "$VS_RC" = "$qrc" ]; then ok "$tag: vessel check exit $VS_RC as qemu-img"; else
        not_ok "$tag: vessel check exit $VS_RC, qemu-img $qrc"
        diag 10 <"$VS_OUT"
    fi
    if [ "$VC_LEAKS" = "$qleaks" ]; then ok "$tag: leaks $qleaks as qemu-img"; else
        not_ok "$tag: leaks: vessel $VC_LEAKS, qemu-img $qleaks"
    fi
    if { [ "$VC_CORR" -gt 0 ] && [ "$qcorr" -gt 0 ]; } || { [ "$VC_CORR" = 0 ] && [ "$qcorr" = 0 ]; }; then
        ok "$tag: corruptions found by both or neither (vessel $VC_CORR, qemu $qcorr)"
    else
        not_ok "$tag: corruptions: vessel $VC_CORR, qemu-img $qcorr"
    fi
    if [ "$(sha "$img")" = "$before" ]; then ok "$tag: check without -r leaves the image untouched"; else
        not_ok "$tag: check without -r leaves the image untouched"
    fi
}

# ---- clean images: verdict and statistics ---------------------------------------------------------
# (qemu-img leaves out counters that are 0)
STATS='{"image-end-offset": (.["image-end-offset"] // 0), "total-clusters": (.["total-clusters"] // 0),
        "allocated-clusters": (.["allocated-clusters"] // 0), "fragmented-clusters": (.["fragmented-clusters"] // 0),
        "compressed-clusters": (.["compressed-clusters"] // 0)}'
make_raw "$T/src.raw" $((24 * 1048576)) check
for v in "plain" "compressed -c" "small-clusters -o cluster_size=512" "refcount1 -o refcount_bits=1" \
    "v2 -o compat=0.10"; do
    set -- $v
    name=$1
    shift
    img=$T/clean-$name.qcow2
    quiet qemu-img convert -O qcow2 "$@" "$T/src.raw" "$img"
    same_as_qemu "clean $name" "$img"
    qemu-img check --output=json "$img" |
        jq -S "$STATS" >"$T/qs.json"
    vs img check --output=json "$img"
    jq -S "$STATS" \
        "$VS_OUT" >"$T/vs.json" 2>/dev/null || true
    if cmp -s "$T/qs.json" "$T/vs.json"; then ok "clean $name: check statistics equal qemu-img's"; else
        not_ok "clean $name: check statistics equal qemu-img's"
        diff "$T/qs.json" "$T/vs.json" | diag 20 || true
    fi
done
# vessel-written image checks clean in vessel too
rm -f "$T/vw.qcow2"
vs img convert -O qcow2 "$T/src.raw" "$T/vw.qcow2"
expect_rc 0 "vessel check of a vessel-written image" img check "$T/vw.qcow2"

# ---- leak: a free cluster (just past the old end) gets refcount 1 --------------------------------
img=$T/leak.qcow2
cp "$base" "$img"
n=$(($(stat -c %s "$img") / CS))
truncate -s +$CS "$img"
patch_be "$img" $((refblock + 2 * n)) 2 1
same_as_qemu "leaked cluster $n" "$img"
# human output mentions the leak
vs img check "$img"
grep -qi leak "$VS_OUT" && ok "leak: human output says leaked" || not_ok "leak: human output says leaked"
vcheck "$img" -r leaks
if [ "$VS_RC" -eq 0 ]; then ok "vessel check -r leaks exits 0 after repairing"; else
    not_ok "vessel check -r leaks exits 0 after repairing (exit $VS_RC)"
    diag 10 <"$VS_OUT"
fi
assert_qemu_clean "after vessel check -r leaks" "$img"
assert_same "after vessel check -r leaks: data intact" "$base" "$img"

# several leaks, counted alike
img=$T/leak3.qcow2
cp "$base" "$img"
n=$(($(stat -c %s "$img") / CS))
truncate -s +$((3 * CS)) "$img"
for i in 0 1 2; do patch_be "$img" $((refblock + 2 * (n + i))) 2 1; done
same_as_qemu "three leaked clusters" "$img"
vs img check -r all "$img"
assert_qemu_clean "after vessel check -r all on leaks" "$img"

# ---- corruption: refcount of a used data cluster patched down to 0 -------------------------------
img=$T/refzero.qcow2
cp "$base" "$img"
patch_be "$img" $((refblock + 2 * (data0 / CS))) 2 0
same_as_qemu "refcount 0 under a used cluster" "$img"
cp "$img" "$T/refzero-leaks-only.qcow2"
vcheck "$T/refzero-leaks-only.qcow2" -r leaks
# qemu-img exits 1 ("need to rebuild refcount structures"); 2 is as honest
if [ "$VS_RC" -eq 1 ] || [ "$VS_RC" -eq 2 ]; then ok "check -r leaks does not claim to fix a corruption (exit $VS_RC)"; else
    not_ok "check -r leaks does not claim to fix a corruption (exit $VS_RC, expected 1 or 2)"
fi
vcheck "$img" -r all
if [ "$VS_RC" -eq 0 ]; then ok "vessel check -r all repairs the refcount (exit 0)"; else
    not_ok "vessel check -r all repairs the refcount (exit $VS_RC)"
    diag 10 <"$VS_OUT"
fi
assert_qemu_clean "after vessel check -r all" "$img"
assert_same "after vessel check -r all: data intact" "$base" "$img"
# writes after repair must not clobber the repaired cluster (qemu would reuse a refcount-0 cluster)
quiet qemu-io -f qcow2 -c "write -P 9 7M 192k" "$img"
run_q "after repair: new writes do not overwrite the repaired cluster" \
    qemu-io -f qcow2 -c "read -P 1 0 64k" -c "read -P 9 7M 192k" "$img"

# ---- corruption: an L2 entry pointing beyond the end of the file ---------------------------------
img=$T/l2eof.qcow2
cp "$base" "$img"
patch_be "$img" "$l2" 8 $(((1 << 63) | (1 << 40)))
same_as_qemu "L2 entry beyond EOF" "$img"
# reading the broken cluster must fail (or read zeros), never crash; vessel check -r all no crash
vs img convert -O raw "$img" "$T/out.raw"
ok "reading an image with an L2 entry beyond EOF: no crash (exit $VS_RC)"
vs img check -r all "$img"
ok "check -r all on an L2 entry beyond EOF: no crash (exit $VS_RC)"
qrc=0
qemu-img check "$img" >/dev/null 2>&1 || qrc=$?
if [ "$qrc" -ne 0 ] && [ "$qrc" -ne 2 ] && [ "$qrc" -ne 3 ]; then
    not_ok "after vessel -r all on L2-beyond-EOF: qemu-img can still check the image (exit $qrc)"
else
    ok "after vessel -r all on L2-beyond-EOF: qemu-img can still check the image (exit $qrc)"
fi

# ---- corruption: two L2 entries share one data cluster (refcount 1, two references) --------------
img=$T/shared.qcow2
cp "$base" "$img"
patch_be "$img" $((l2 + 8 * 2)) 8 $(((1 << 63) | data0))
same_as_qemu "two L2 entries pointing at one cluster" "$img"

# ---- check of a non-qcow2 / unsupported format is a clean error --------------------------------
truncate -s 1M "$T/plain.raw"
vs img check "$T/plain.raw"
if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ]; then ok "check of a raw image is refused (exit $VS_RC)"; else
    not_ok "check of a raw image is refused like qemu-img (exit $VS_RC)"
fi

finish
