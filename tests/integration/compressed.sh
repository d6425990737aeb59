#!/bin/bash
# tests/integration/compressed.sh — compressed qcow2 both ways: `vessel img convert -c` (zlib and
# zstd, several cluster sizes, compressible and incompressible data) yields images qemu-img checks
# clean, compares equal and counts as compressed; images qemu-img compresses read identically in
# vessel, including after qemu overwrites some compressed clusters.
source "$(dirname "$0")/lib.sh"
require_vessel
need_jq

MiB=1048576
src=$T/src.raw
make_raw "$src" $((48 * MiB + 4608)) compressed
# a compressible region too (text repeats) so compressed clusters really are smaller
head -c $((3 * MiB)) < <(yes "vessel compresses this line") |
    dd of="$src" bs=1M iflag=fullblock oflag=seek_bytes seek=$((20 * MiB)) conv=notrunc status=none

for variant in "zlib 65536" "zlib 512" "zlib 2097152" "zstd 65536" "zstd 4096"; do
    set -- $variant
    ct=$1 cs=$2
    tag="vessel convert -c compression_type=$ct cluster_size=$cs"
    v=$T/v.qcow2
    rm -f "$v"
    vs img convert -c -f raw -O qcow2 -o "compression_type=$ct,cluster_size=$cs" "$src" "$v"
    if [ "$VS_RC" -ne 0 ]; then
        not_ok "$tag (exit $VS_RC)"
        diag 5 <"$VS_ERR"
        continue
    fi
    ok "$tag"
    assert_qemu_clean "$tag" "$v"
    assert_same "$tag: qemu-img compare equal" "$src" "$v"
    n=$(qcheck_field "$v" compressed-clusters)
    if [ "$n" -gt 0 ]; then ok "$tag: qemu-img check counts $n compressed clusters"; else
        not_ok "$tag: qemu-img check counts compressed clusters (got $n)"
    fi
    got=$(qemu-img info --output=json "$v" | jq -r '.["format-specific"].data["compression-type"]')
    if [ "$got" = "$ct" ]; then ok "$tag: header compression-type $ct"; else
        not_ok "$tag: header compression-type (got $got)"
    fi
    # qemu overwrites part of a compressed cluster; vessel and qemu must agree afterwards
    cp --sparse=always "$src" "$T/ref.raw"
    quiet qemu-io -f qcow2 -c "write -P 0x9c $((20 * MiB + 1000)) 5000" "$v"
    quiet qemu-io -f raw -c "write -P 0x9c $((20 * MiB + 1000)) 5000" "$T/ref.raw"
    assert_vessel_reads "$tag, then qemu overwrote part of a compressed cluster" "$v" "$T/ref.raw"
done

# compressed output must be smaller than the uncompressed one for compressible data
v=$T/v.qcow2
u=$T/u.qcow2
rm -f "$v" "$u"
vs img convert -c -O qcow2 "$src" "$v"
vs img convert -O qcow2 "$src" "$u"
if [ -f "$v" ] && [ -f "$u" ] && [ "$(stat -c %s "$v")" -lt "$(stat -c %s "$u")" ]; then
    ok "vessel convert -c output is smaller than without -c"
else
    not_ok "vessel convert -c output is smaller than without -c"
fi

# qemu compresses, vessel reads
for variant in "zlib 65536" "zlib 512" "zstd 65536" "zstd 2097152"; do
    set -- $variant
    q=$T/q-$1-$2.qcow2
    quiet qemu-img convert -c -f raw -O qcow2 -o "compression_type=$1,cluster_size=$2" "$src" "$q"
    assert_vessel_reads "qemu convert -c $1 cluster_size=$2" "$q" "$src"
    # qcow2 -> compressed qcow2 with vessel from a compressed qemu image
    v=$T/v2.qcow2
    rm -f "$v"
    vs img convert -c -O qcow2 "$q" "$v"
    if [ "$VS_RC" -eq 0 ]; then
        assert_qemu_clean "vessel re-compress of qemu $1/$2" "$v"
        assert_same "vessel re-compress of qemu $1/$2 equal" "$src" "$v"
    else
        not_ok "vessel convert -c of a compressed qemu image $1/$2 (exit $VS_RC)"
        diag 5 <"$VS_ERR"
    fi
done

# compressed writes through qemu-io (write -c), single clusters at scattered places
q=$T/qc.qcow2
quiet qemu-img create -q -f qcow2 "$q" 16M
rm -f "$T/ref.raw"
truncate -s 16M "$T/ref.raw"
quiet qemu-io -f qcow2 -c "write -c -P 0x41 0 64k" -c "write -c -P 0x42 $((5 * MiB)) 64k" \
    -c "write -c -P 0x43 $((16 * MiB - 65536)) 64k" "$q"
quiet qemu-io -f raw -c "write -P 0x41 0 64k" -c "write -P 0x42 $((5 * MiB)) 64k" \
    -c "write -P 0x43 $((16 * MiB - 65536)) 64k" "$T/ref.raw"
assert_vessel_reads "qemu-io write -c clusters" "$q" "$T/ref.raw"

finish
