#!/bin/bash
# tests/integration/info-map-measure.sh — vessel's reports equal qemu-img's on the same images:
# `info --output=json` (virtual-size, format, cluster-size, backing-filename(-format), dirty-flag,
# the whole format-specific object) and the human info lines; `map --output=json` (same extents:
# start, length, depth, zero, data, offset); `measure` (required and fully-allocated, for files
# and for --size, several formats and options).
source "$(dirname "$0")/lib.sh"
require_vessel
need_jq

MiB=1048576
src=$T/src.raw
make_raw "$src" $((24 * MiB + 4096)) infomap
cd "$T"
quiet qemu-img convert -O qcow2 src.raw plain.qcow2
quiet qemu-img convert -O qcow2 -o compat=0.10 src.raw v2.qcow2
quiet qemu-img convert -c -O qcow2 src.raw compressed.qcow2
quiet qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw zstd.qcow2
quiet qemu-img convert -O qcow2 -o extended_l2=on,lazy_refcounts=on,refcount_bits=8 src.raw features.qcow2
quiet qemu-img convert -O qcow2 -o cluster_size=512 src.raw small.qcow2
quiet qemu-img create -q -f qcow2 -b plain.qcow2 -F qcow2 overlay.qcow2
quiet qemu-io -f qcow2 -c "write -P 0x42 1M 64k" -c "write -z 4M 1M" -c "write -P 0x43 20M 3000" overlay.qcow2
quiet qemu-img create -q -f qcow2 -b overlay.qcow2 -F qcow2 top.qcow2
quiet qemu-io -f qcow2 -c "write -P 0x44 0 512" top.qcow2
quiet qemu-img create -q -f qcow2 empty.qcow2 1G
cp src.raw plain.raw
IMAGES=(plain.qcow2 v2.qcow2 compressed.qcow2 zstd.qcow2 features.qcow2 small.qcow2 overlay.qcow2 top.qcow2 empty.qcow2 plain.raw)

INFO_KEYS='{"virtual-size", "format", "cluster-size", "backing-filename", "backing-filename-format",
            "dirty-flag", "format-specific", "encrypted"}'
for img in "${IMAGES[@]}"; do
    qemu-img info --output=json "$img" | jq -S "$INFO_KEYS" >q.json
    vs img info --output=json "$img"
    if jq -S "$INFO_KEYS" "$VS_OUT" >v.json 2>/dev/null && cmp -s q.json v.json; then
        ok "info --output=json $img: same fields as qemu-img"
    else
        not_ok "info --output=json $img: same fields as qemu-img"
        diff q.json v.json | diag 30 || true
    fi
    # the human output's main lines
    qemu-img info "$img" | grep -E '^(file format|virtual size|cluster_size|backing file|backing file format):' >q.txt
    vs img info "$img"
    grep -E '^(file format|virtual size|cluster_size|backing file|backing file format):' "$VS_OUT" >v.txt || true
    if cmp -s q.txt v.txt; then ok "info $img: human lines as qemu-img"; else
        not_ok "info $img: human lines as qemu-img"
        diff q.txt v.txt | diag 20 || true
    fi
done

# --backing-chain: one entry per layer, same keys
qemu-img info --output=json --backing-chain top.qcow2 | jq -S "[.[] | $INFO_KEYS]" >q.json
vs img info --output=json --backing-chain top.qcow2
if jq -S "[.[] | $INFO_KEYS]" "$VS_OUT" >v.json 2>/dev/null && cmp -s q.json v.json; then
    ok "info --backing-chain --output=json: same as qemu-img"
else
    not_ok "info --backing-chain --output=json: same as qemu-img"
    diff q.json v.json | diag 30 || true
fi

# map: the same extents
MAP_KEYS='[.[] | {start, length, depth, zero, data, offset: (.offset // null)}]'
for img in "${IMAGES[@]}"; do
    qemu-img map --output=json "$img" | jq -S -c "$MAP_KEYS" >q.json
    vs img map --output=json "$img"
    if jq -S -c "$MAP_KEYS" "$VS_OUT" >v.json 2>/dev/null && cmp -s q.json v.json; then
        ok "map --output=json $img: same extents as qemu-img ($(jq length q.json) extents)"
    else
        not_ok "map --output=json $img: same extents as qemu-img"
        diff <(jq -c '.[]' q.json) <(jq -c '.[]' v.json 2>/dev/null) | diag 30 || true
    fi
done
# the human map output (only data with offsets) too
qemu-img map plain.qcow2 >q.txt
vs img map plain.qcow2
cmp -s q.txt "$VS_OUT" && ok "map (human) plain.qcow2 as qemu-img" || {
    not_ok "map (human) plain.qcow2 as qemu-img"
    diff q.txt "$VS_OUT" | diag 20 || true
}

# measure
measure_same() { # DESC ARGS…
    local desc=$1
    shift
    qemu-img measure --output=json "$@" 2>/dev/null | jq -S '{required, "fully-allocated"}' >q.json
    vs img measure --output=json "$@"
    if jq -S '{required, "fully-allocated"}' "$VS_OUT" >v.json 2>/dev/null && cmp -s q.json v.json; then
        ok "measure $desc: $(jq -c . q.json)"
    else
        not_ok "measure $desc: same as qemu-img"
        diff q.json v.json | diag 10 || true
    fi
}
measure_same "--size 10G -O qcow2" --size 10G -O qcow2
measure_same "--size 10G -O qcow2 cluster_size=512" --size 10G -O qcow2 -o cluster_size=512
measure_same "--size 1T -O qcow2 refcount_bits=1" --size 1T -O qcow2 -o refcount_bits=1
measure_same "--size 100G -O qcow2 extended_l2" --size 100G -O qcow2 -o extended_l2=on
measure_same "--size 5G -O raw" --size 5G -O raw
measure_same "src.raw -O qcow2" -O qcow2 src.raw
measure_same "src.raw -O qcow2 cluster_size=2M" -O qcow2 -o cluster_size=2M src.raw
measure_same "plain.qcow2 -O qcow2" -O qcow2 plain.qcow2
measure_same "top.qcow2 (chain) -O qcow2" -O qcow2 top.qcow2
measure_same "plain.qcow2 -O raw" -O raw plain.qcow2
measure_same "empty.qcow2 -O qcow2" -O qcow2 empty.qcow2
# the human form
qemu-img measure --size 10G -O qcow2 >q.txt
vs img measure --size 10G -O qcow2
cmp -s q.txt "$VS_OUT" && ok "measure (human) as qemu-img" || {
    not_ok "measure (human) as qemu-img"
    diff q.txt "$VS_OUT" | diag 10 || true
}
cd /

finish
