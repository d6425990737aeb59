#!/bin/bash
# tests/integration/sparse-4t.sh — a 4 TiB virtual disk stays fast and small: vessel creates it,
# writes at 0, at 2 TiB and at the very end (convert -n from a sparse raw, which must skip the
# holes rather than read 4 TiB), qemu-img checks it clean and reads the regions back with
# qemu-io read -P; a qemu-written 4 TiB image compares equal and converts to a sparse raw in
# vessel. Every step has a tight timeout and the files must stay a few MiB on disk.
source "$(dirname "$0")/lib.sh"
require_vessel
need_jq
TIMEOUT=${IT_TIMEOUT_4T:-90}

TiB=$((1 << 40))
MiB=1048576
SIZE=$((4 * TiB))
END=$((SIZE - MiB))
MID=$((2 * TiB))

put_pattern() { # FILE OFFSET LEN BYTE(octal)
    head -c "$3" /dev/zero | tr '\0' "\\$4" |
        dd of="$1" bs=1M iflag=fullblock oflag=seek_bytes seek="$2" conv=notrunc status=none
}
small_on_disk() { # DESC FILE
    local kib
    kib=$(du -k "$2" | cut -f1)
    if [ "$kib" -lt $((64 * 1024)) ]; then ok "$1 uses ${kib} KiB on disk"; else
        not_ok "$1 uses ${kib} KiB on disk (want < 64 MiB)"
    fi
}
# timed_ok DESC ARGS… — like expect_ok, and the step must take at most STEP_LIMIT seconds: qemu-img
# does each of these in well under a second, so even the sanitizer build has no excuse for more
STEP_LIMIT=${IT_4T_STEP_LIMIT:-20}
timed_ok() {
    local desc=$1 t0 secs
    shift
    t0=$(date +%s.%N)
    expect_ok "$desc" "$@"
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if awk -v s="$secs" -v l="$STEP_LIMIT" 'BEGIN { exit !(s <= l) }'; then
        ok "$desc took ${secs}s (<= ${STEP_LIMIT}s)"
    else
        not_ok "$desc took ${secs}s (want <= ${STEP_LIMIT}s: it must skip holes, not walk them)"
    fi
}
READS=(-c "read -P 0xab 0 $MiB" -c "read -P 0 $MiB $MiB" -c "read -P 0xcd $MID $MiB"
    -c "read -P 0 $((MID + MiB)) 65536" -c "read -P 0 $((MID - 65536)) 65536"
    -c "read -P 0xef $END $MiB" -c "read -P 0 $((END - 4096)) 4096" -c "read -P 0 $((3 * TiB)) $MiB")

# the sparse raw reference: 3 MiB of data in 4 TiB
raw=$T/big.raw
truncate -s $SIZE "$raw"
put_pattern "$raw" 0 $MiB 253      # 0xab
put_pattern "$raw" $MID $MiB 315   # 0xcd
put_pattern "$raw" $END $MiB 357   # 0xef

# ---- vessel creates and writes ------------------------------------------------------------------
img=$T/v.qcow2
start=$(date +%s)
timed_ok "vessel img create 4T" img create -f qcow2 "$img" 4T
got=$(qemu-img info --output=json "$img" | jq -r '.["virtual-size"]')
[ "$got" = "$SIZE" ] && ok "virtual size is 4 TiB" || not_ok "virtual size is 4 TiB (got $got)"
small_on_disk "empty 4 TiB qcow2" "$img"
timed_ok "vessel convert -n sparse 4 TiB raw into it" img convert -n -f raw -O qcow2 "$raw" "$img"
run_q "4 TiB vessel image: qemu-img check clean" qemu-img check "$img"
run_q "4 TiB vessel image: qemu-io reads the regions back" qemu-io -r -f qcow2 "${READS[@]}" "$img"
small_on_disk "written 4 TiB qcow2" "$img"

img2=$T/v2.qcow2
timed_ok "vessel convert sparse 4 TiB raw -> new qcow2" img convert -f raw -O qcow2 "$raw" "$img2"
run_q "converted 4 TiB image: qemu-img check clean" qemu-img check "$img2"
run_q "converted 4 TiB image: qemu-io reads the regions back" qemu-io -r -f qcow2 "${READS[@]}" "$img2"
run_q "converted 4 TiB image: qemu-img compare with the raw" qemu-img compare "$raw" "$img2"
small_on_disk "converted 4 TiB qcow2" "$img2"

# ---- qemu creates and writes, vessel reads --------------------------------------------------------
q=$T/q.qcow2
quiet qemu-img create -q -f qcow2 "$q" 4T
quiet qemu-io -f qcow2 -c "write -P 0xab 0 $MiB" -c "write -P 0xcd $MID $MiB" -c "write -P 0xef $END $MiB" "$q"
expect_rc 0 "vessel compare of a qemu 4 TiB image with the sparse raw" img compare "$q" "$raw"
out=$T/out.raw
timed_ok "vessel convert 4 TiB qcow2 -> raw" img convert -O raw "$q" "$out"
small_on_disk "4 TiB raw export" "$out"
run_q "raw export equals the reference (qemu-img compare)" qemu-img compare -f raw -F raw "$raw" "$out"
run_q "raw export regions read back" qemu-io -r -f raw "${READS[@]}" "$out"

# a difference near the end is found (not skipped as a hole)
cp "$q" "$T/q2.qcow2"
quiet qemu-io -f qcow2 -c "write -P 0x01 $((SIZE - 512)) 512" "$T/q2.qcow2"
expect_rc 1 "vessel compare finds a difference in the last sector of 4 TiB" img compare "$T/q2.qcow2" "$raw"

# map is a handful of extents, not millions
vs img map --output=json "$q"
n=$(jq length "$VS_OUT" 2>/dev/null || echo -1)
if [ "$n" -ge 3 ] && [ "$n" -le 8 ]; then ok "map of the 4 TiB image has $n extents"; else
    not_ok "map of the 4 TiB image has a handful of extents (got $n)"
fi

elapsed=$(($(date +%s) - start))
if [ "$elapsed" -lt 240 ]; then ok "the whole 4 TiB scenario took ${elapsed}s"; else
    not_ok "the whole 4 TiB scenario took ${elapsed}s (want < 240 s)"
fi

finish
