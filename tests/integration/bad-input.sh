#!/bin/bash
# tests/integration/bad-input.sh — hostile or broken qcow2 files: a truncated header, cluster_bits
# out of range, L1 table beyond EOF or absurdly large, a refcount table overlapping the header, a
# huge snapshot count, a snapshot table beyond EOF, a backing-file loop, an unknown incompatible
# feature bit, an unsupported version… Each `vessel img info` / `convert` / `compare` must exit
# non-zero with ONE line of error naming the file and the field, without a sanitizer report or a
# hang, and without changing a byte of the image (`check` without -r included).
source "$(dirname "$0")/lib.sh"
require_vessel

# A valid v3 image with data, a snapshot and 64 KiB clusters to damage.
good=$T/good.qcow2
quiet qemu-img create -q -f qcow2 "$good" 8M
quiet qemu-io -f qcow2 -c "write -P 1 0 64k" -c "write -P 2 3M 128k" "$good"
quiet qemu-img snapshot -c snap1 "$good"
quiet qemu-io -f qcow2 -c "write -P 3 0 4k" "$good"
expect_ok "the undamaged image opens" img info "$good"

# bad NAME FIELD_RE [CMDS] — expects $T/NAME.qcow2 to be rejected by info, convert, compare
bad() {
    local name=$1 field=$2 img=$T/$1.qcow2 before
    before=$(sha "$img")
    expect_error "$name: info" "$img" "$field" img info "$img"
    expect_error "$name: convert" "$img" "$field" img convert -O raw "$img" "$T/out.raw"
    expect_error "$name: compare" "$img" "$field" img compare "$img" "$good"
    vs img check "$img"
    if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ]; then ok "$name: check reports a problem (exit $VS_RC)"; else
        not_ok "$name: check reports a problem (exit $VS_RC)"
    fi
    if [ "$(sha "$img")" = "$before" ]; then ok "$name: image bytes unchanged"; else
        not_ok "$name: image bytes unchanged"
    fi
    rm -f "$T/out.raw"
}
damage() { # NAME OFFSET NBYTES VALUE — a copy of the good image with one header field patched
    cp "$good" "$T/$1.qcow2"
    patch_be "$T/$1.qcow2" "$2" "$3" "$4"
}

# truncated inside the header
head -c 50 "$good" >"$T/truncated-header.qcow2"
bad truncated-header "header|truncat|short|end of file|too small|eof"
# truncated inside the metadata (L1/refcount tables gone)
head -c 65536 "$good" >"$T/truncated-metadata.qcow2"
bad truncated-metadata "L1|refcount|snapshot|end of file|beyond|truncat|eof"

# header field offsets (QCOW2 spec): version 4, backing_file_offset 8, backing_file_size 16,
# cluster_bits 20, size 24, crypt_method 32, l1_size 36, l1_table_offset 40, refcount_table_offset
# 48, refcount_table_clusters 56, nb_snapshots 60, snapshots_offset 64, incompatible_features 72,
# refcount_order 96, header_length 100
damage cluster-bits-40 20 4 40
bad cluster-bits-40 "cluster"
damage cluster-bits-8 20 4 8
bad cluster-bits-8 "cluster"
damage version-4 4 4 4
bad version-4 "version"
damage l1-beyond-eof 40 8 $((1 << 40))
bad l1-beyond-eof "L1"
damage l1-size-huge 36 4 $((0x7fffffff))
bad l1-size-huge "L1"
damage l1-unaligned 40 8 $((0x30000 + 8))
bad l1-unaligned "L1"
damage refcount-table-on-header 48 8 0
bad refcount-table-on-header "refcount"
damage refcount-table-beyond-eof 48 8 $((1 << 40))
bad refcount-table-beyond-eof "refcount"
damage refcount-table-clusters-huge 56 4 $((0x7fffffff))
bad refcount-table-clusters-huge "refcount"
damage refcount-order-7 96 4 7
bad refcount-order-7 "refcount"
damage snapshots-huge 60 4 $((0xffffffff))
bad snapshots-huge "snapshot"
damage snapshot-table-beyond-eof 64 8 $((1 << 40))
bad snapshot-table-beyond-eof "snapshot"
damage incompatible-feature 72 8 $((1 << 20))
bad incompatible-feature "incompatible|feature"
damage encrypted 32 4 1
bad encrypted "encrypt|crypt"
damage header-length-huge 100 4 $((0x7fffffff))
bad header-length-huge "header"
damage backing-name-beyond-eof 8 8 $((1 << 40))
patch_be "$T/backing-name-beyond-eof.qcow2" 16 4 100
bad backing-name-beyond-eof "backing"
damage backing-name-huge 8 8 1024
patch_be "$T/backing-name-huge.qcow2" 16 4 $((0x7fffffff))
bad backing-name-huge "backing"

# a backing-file loop a → b → a (and a → a), made with qemu-img rebase -u
cd "$T"
quiet qemu-img create -q -f qcow2 loop-a.qcow2 1M
quiet qemu-img create -q -f qcow2 -b loop-a.qcow2 -F qcow2 loop-b.qcow2
quiet qemu-img rebase -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2
quiet qemu-img create -q -f qcow2 self.qcow2 1M
quiet qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
cd /
for name in loop-a self; do
    img=$T/$name.qcow2
    before=$(sha "$img")
    expect_error "backing loop $name: info --backing-chain" "$img" "loop|backing|chain" \
        img info --backing-chain "$img"
    expect_error "backing loop $name: convert" "$img" "loop|backing|chain" \
        img convert -O raw "$img" "$T/out.raw"
    expect_error "backing loop $name: compare" "$img" "loop|backing|chain" \
        img compare "$img" "$good"
    if [ "$(sha "$img")" = "$before" ]; then ok "backing loop $name: image unchanged"; else
        not_ok "backing loop $name: image unchanged"
    fi
done

# a file that is not qcow2 at all, forced as qcow2
head -c 70000 /dev/urandom >"$T/garbage.bin"
expect_error "random bytes opened with -f qcow2" "garbage.bin" "magic|qcow2|not a" \
    img info -f qcow2 "$T/garbage.bin"
# an empty file forced as qcow2
: >"$T/empty.qcow2"
expect_error "empty file opened with -f qcow2" "empty.qcow2" "header|empty|short|truncat|too small|eof|end of file" \
    img info -f qcow2 "$T/empty.qcow2"
# a missing file
expect_error "missing file" "nonexistent.qcow2" "No such file" img info "$T/nonexistent.qcow2"

# bad command-line values are errors too, never crashes
vs img convert -O nosuchformat "$good" "$T/out.img"
if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ] && grep -q nosuchformat "$VS_ERR" && [ ! -e "$T/out.img" ]; then
    ok "convert -O nosuchformat is refused naming the format, creating nothing"
else
    not_ok "convert -O nosuchformat is refused naming the format, creating nothing (exit $VS_RC)"
fi
vs img create -f qcow2 "$T/x.qcow2" 12qq
if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ] && grep -q 12qq "$VS_ERR"; then
    ok "create with an invalid size names it"
else
    not_ok "create with an invalid size names it (exit $VS_RC)"
fi
vs img create -f qcow2 -o cluster_size=3000 "$T/x.qcow2" 1M
if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ] && grep -qi cluster "$VS_ERR"; then
    ok "create with cluster_size=3000 is refused naming cluster size"
else
    not_ok "create with cluster_size=3000 is refused naming cluster size (exit $VS_RC)"
fi

finish
