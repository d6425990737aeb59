#!/bin/bash
# tests/integration/interop.sh — qcow2 written by vessel is valid for qemu-img and qcow2 written by
# qemu is read identically by vessel, across compat 0.10/1.1 × cluster sizes 512 B/64 KiB/2 MiB ×
# a size that is a cluster multiple and one that is not, and across qemu's feature variants
# (compression zlib/zstd, extended_l2, lazy_refcounts, refcount_bits 1/8/64, internal snapshots).
source "$(dirname "$0")/lib.sh"
require_vessel

MiB=1048576
SIZES=("$((64 * MiB))" "$((64 * MiB + 12345))")

for size in "${SIZES[@]}"; do
    make_raw "$T/src-$size.raw" "$size" "interop-$size"
done

# The qemu-io script both tools' results are measured against: unaligned writes, writes across
# cluster boundaries, zero writes over holes and over data (with unmap), the last bytes.
qemu_writes() {
    local vsize=$1
    echo "write -P 0xab 0 4096"
    echo "write -P 0xcd 1000 70000"
    echo "write -P 0x5a $((vsize / 2 - 300)) $((2 * MiB + 600))"
    echo "write -z $((8 * MiB)) $((1 * MiB))"
    echo "write -P 0x22 $((16 * MiB)) $((3 * MiB))"
    echo "write -z $((16 * MiB + 512 * 1024)) $((1 * MiB))"
    echo "write -z -u $((18 * MiB)) $((256 * 1024))" # (discard is only a hint: not comparable)
    echo "write -P 0x77 $((30 * MiB + 513)) 1"
    echo "write -P 0x33 $((vsize - 5000)) 5000"
}

apply_writes() { # FMT IMG VSIZE
    local fmt=$1 img=$2 vsize=$3 args=() line
    while IFS= read -r line; do args+=(-c "$line"); done < <(qemu_writes "$vsize")
    quiet qemu-io -f "$fmt" "${args[@]}" "$img"
}

for compat in 0.10 1.1; do
    for cs in 512 65536 2097152; do
        for size in "${SIZES[@]}"; do
            tag="compat=$compat cluster_size=$cs size=$size"
            src=$T/src-$size.raw

            # vessel writes, qemu-img judges
            v=$T/v.qcow2
            rm -f "$v"
            vs img convert -f raw -O qcow2 -o "compat=$compat,cluster_size=$cs" "$src" "$v"
            if [ "$VS_RC" -ne 0 ]; then
                not_ok "vessel convert raw->qcow2 $tag (exit $VS_RC)"
                diag 5 <"$VS_ERR"
            else
                ok "vessel convert raw->qcow2 $tag"
                assert_qemu_clean "vessel-written $tag" "$v"
                assert_same "vessel-written $tag: qemu-img compare equal to source" "$src" "$v"
                got_cs=$(qemu-img info --output=json "$v" | jq -r '.["cluster-size"]')
                got_compat=$(qemu-img info --output=json "$v" | jq -r '.["format-specific"].data.compat')
                if [ "$got_cs" = "$cs" ] && [ "$got_compat" = "$compat" ]; then
                    ok "vessel-written $tag: qemu-img info shows cluster-size and compat"
                else
                    not_ok "vessel-written $tag: qemu-img info shows cluster-size $got_cs compat $got_compat"
                fi
            fi

            # qemu writes (create + qemu-io), vessel reads
            q=$T/q.qcow2
            ref=$T/ref.raw
            quiet qemu-img create -q -f qcow2 -o "compat=$compat,cluster_size=$cs" "$q" "$size"
            vsize=$(qemu-img info --output=json "$q" | jq -r '.["virtual-size"]')
            rm -f "$ref"
            truncate -s "$vsize" "$ref"
            apply_writes qcow2 "$q" "$vsize"
            apply_writes raw "$ref" "$vsize"
            assert_vessel_reads "qemu-written (create+qemu-io) $tag" "$q" "$ref"

            # vessel writes into a qemu-created image (convert -n), qemu-img judges
            vs img convert -n -f raw -O qcow2 "$ref" "$q"
            if [ "$VS_RC" -eq 0 ]; then
                ok "vessel convert -n into a qemu-created image $tag"
                assert_qemu_clean "vessel convert -n $tag" "$q"
                assert_same "vessel convert -n $tag: equal" "$ref" "$q"
            else
                not_ok "vessel convert -n into a qemu-created image $tag (exit $VS_RC)"
                diag 5 <"$VS_ERR"
            fi
        done
    done
done

# ---- qemu's feature variants, read by vessel ------------------------------------------------------
size=${SIZES[1]}
src=$T/src-$size.raw
variant() { # NAME qemu-img-convert-args…
    local name=$1
    shift
    local q=$T/var-$name.qcow2
    quiet qemu-img convert -f raw -O qcow2 "$@" "$src" "$q"
    assert_vessel_reads "qemu convert $name" "$q" "$src"
    vs img check "$q"
    if [ "$VS_RC" -eq 0 ]; then ok "qemu convert $name: vessel img check clean"; else
        not_ok "qemu convert $name: vessel img check clean (exit $VS_RC)"
        diag 5 <"$VS_OUT"
    fi
}
variant plain
variant compat-0.10 -o compat=0.10
variant compressed -c
variant compressed-zstd -c -o compression_type=zstd
variant compressed-512 -c -o cluster_size=512
variant extended-l2 -o extended_l2=on
variant extended-l2-2M -o extended_l2=on,cluster_size=2M
variant lazy-refcounts -o lazy_refcounts=on
variant refcount-1 -o refcount_bits=1
variant refcount-8 -o refcount_bits=8
variant refcount-64 -o refcount_bits=64
variant preallocated-metadata -o preallocation=metadata

# extended L2 with sub-cluster writes (subclusters of 2 KiB in 64 KiB clusters)
q=$T/el2.qcow2
quiet qemu-img create -q -f qcow2 -o extended_l2=on "$q" 32M
rm -f "$ref"
truncate -s 32M "$ref"
for img_fmt in "qcow2 $q" "raw $ref"; do
    set -- $img_fmt
    quiet qemu-io -f "$1" -c "write -P 0x11 2048 2048" -c "write -P 0x22 $((65536 + 6144)) 10000" \
        -c "write -z 0 1024" -c "write -P 0x33 $((1 * MiB)) 65536" -c "write -z $((1 * MiB + 4096)) 2048" \
        -c "write -z -u $((1 * MiB + 32768)) 4096" "$2"
done
assert_vessel_reads "qemu extended_l2 sub-cluster writes" "$q" "$ref"

# lazy_refcounts image that qemu left dirty (killed mid-session): vessel must still read it
q=$T/lazy.qcow2
quiet qemu-img create -q -f qcow2 -o lazy_refcounts=on "$q" 32M
quiet qemu-io -f qcow2 -c "write -P 0x44 0 1M" -c "write -P 0x55 5M 64k" "$q"
rm -f "$ref"
truncate -s 32M "$ref"
quiet qemu-io -f raw -c "write -P 0x44 0 1M" -c "write -P 0x55 5M 64k" "$ref"
assert_vessel_reads "qemu lazy_refcounts image" "$q" "$ref"

# internal snapshot: vessel reads the active state, not the snapshot
q=$T/snap.qcow2
cp --sparse=always "$src" "$ref"
quiet qemu-img convert -f raw -O qcow2 "$src" "$q"
quiet qemu-img snapshot -c s1 "$q"
quiet qemu-io -f qcow2 -c "write -P 0x66 0 128k" -c "write -z 2M 64k" "$q"
quiet qemu-io -f raw -c "write -P 0x66 0 128k" -c "write -z 2M 64k" "$ref"
assert_vessel_reads "qemu image with an internal snapshot" "$q" "$ref"

# ---- vessel's own options, judged by qemu-img ----------------------------------------------------
# (on the cluster-aligned size, so a size-rounding bug seen in the matrix above can't mask these)
src=$T/src-${SIZES[0]}.raw
for opts in refcount_bits=1 refcount_bits=8 refcount_bits=64 lazy_refcounts=on extended_l2=on \
    cluster_size=4k preallocation=metadata; do
    v=$T/vopt.qcow2
    rm -f "$v"
    vs img convert -f raw -O qcow2 -o "$opts" "$src" "$v"
    if [ "$VS_RC" -ne 0 ]; then
        not_ok "vessel convert -o $opts (exit $VS_RC)"
        diag 5 <"$VS_ERR"
        continue
    fi
    ok "vessel convert -o $opts"
    assert_qemu_clean "vessel -o $opts" "$v"
    assert_same "vessel -o $opts: equal to source" "$src" "$v"
done

# qcow2 -> qcow2 through vessel (qemu-written source with snapshot, vessel target)
v=$T/v2.qcow2
rm -f "$v"
expect_ok "vessel convert qcow2->qcow2" img convert -O qcow2 "$T/var-refcount-1.qcow2" "$v"
assert_qemu_clean "vessel qcow2->qcow2" "$v"
assert_same "vessel qcow2->qcow2 equal" "$T/src-${SIZES[1]}.raw" "$v"

# vessel create + unknown option is an error naming the option
expect_error "vessel create -o with an unknown option" "nope.qcow2" "no_such_option" \
    img create -f qcow2 -o no_such_option=1 "$T/nope.qcow2" 1M

finish
