#!/bin/bash
# tests/integration/enospc-lock.sh — a disk that fills up mid-write gives one clean "No space"
# error naming the target and never a corrupt image (a partial qcow2 still opens and qemu-img check
# finds no corruption — leaks allowed); an image open read-write by one vessel process can't be
# opened read-write by another ("locked", naming the file), while read-only opens still work.
source "$(dirname "$0")/lib.sh"
require_vessel

MiB=1048576
# incompressible data, larger than the small filesystem
src=$T/src.raw
truncate -s $((32 * MiB)) "$src"
put_random "$src" 0 $((20 * MiB)) enospc

# ---- disk full ---------------------------------------------------------------------------------------
small=$T/small
mkdir -p "$small"
if [ "$(id -u)" -ne 0 ]; then
    skip "disk-full tests need root to mount an 8 MiB tmpfs"
elif ! mount -t tmpfs -o size=8M vessel-enospc "$small" 2>"$T/mount.err"; then
    skip "disk-full tests: mount -t tmpfs failed: $(head -1 "$T/mount.err")"
else
    IT_MOUNTS+=("$small")
    for fmt in qcow2 raw; do
        dst=$small/out.$fmt
        expect_error "convert -O $fmt onto a full disk" "out.$fmt" "space" \
            img convert -O "$fmt" "$src" "$dst"
        if [ "$fmt" = qcow2 ] && [ -e "$dst" ] && [ "$(stat -c %s "$dst")" -ge 512 ]; then
            qrc=0
            qemu-img check "$dst" >"$T/qc.out" 2>&1 || qrc=$?
            if [ "$qrc" -eq 0 ] || [ "$qrc" -eq 3 ]; then
                ok "partial qcow2 target: qemu-img check finds no corruption (exit $qrc)"
            else
                not_ok "partial qcow2 target: qemu-img check finds no corruption (exit $qrc)"
                diag <"$T/qc.out"
            fi
        elif [ "$fmt" = qcow2 ]; then
            ok "partial qcow2 target was removed or never got a header"
        fi
        rm -f "$dst"
    done

    # an existing image on the full disk: writes that run out of space leave it consistent
    img=$small/existing.qcow2
    quiet qemu-img create -q -f qcow2 "$img" 32M
    quiet qemu-io -f qcow2 -c "write -P 0x11 0 1M" "$img"
    expect_error "convert -n into an image that runs out of space" "existing.qcow2" "space" \
        img convert -n -O qcow2 "$src" "$img"
    qrc=0
    qemu-img check "$img" >"$T/qc.out" 2>&1 || qrc=$?
    if [ "$qrc" -eq 0 ] || [ "$qrc" -eq 3 ]; then
        ok "image that hit ENOSPC: qemu-img check finds no corruption (exit $qrc)"
    else
        not_ok "image that hit ENOSPC: qemu-img check finds no corruption (exit $qrc)"
        diag <"$T/qc.out"
    fi
    vs img check "$img"
    if [ "$VS_RC" -eq 0 ] || [ "$VS_RC" -eq 3 ]; then ok "image that hit ENOSPC: vessel check agrees (exit $VS_RC)"; else
        not_ok "image that hit ENOSPC: vessel check finds no corruption (exit $VS_RC)"
    fi
    # with space again, the image is still fully usable
    rm -f "$small"/out.*
    umount "$small"
    IT_MOUNTS=()
fi

# ---- locking -----------------------------------------------------------------------------------------
img=$T/locked.qcow2
# metadata preallocated, so killing the writer mid-run can't leave an allocation half-done
quiet qemu-img create -q -f qcow2 -o preallocation=metadata "$img" 64M
# a long-running writer: bench -w keeps the image open read-write
"$VESSEL" img bench -w -c 100000000 -d 1 -s 4k "$img" >"$T/bench.out" 2>&1 &
bench_pid=$!
# probe only once bench has the image open ("Sending …" comes after its open): a qemu-io probe
# racing bench's open would hold qemu's locks at that instant and make bench's open fail
for _ in $(seq 1 100); do
    grep -q '^Sending' "$T/bench.out" 2>/dev/null && break
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 0.1
done
held=0
for _ in $(seq 1 50); do
    # qemu's lock probe: once vessel holds the image, a read-write qemu-io open must fail
    if ! kill -0 "$bench_pid" 2>/dev/null; then break; fi
    if ! qemu-io -f qcow2 -c "read 0 512" "$img" >/dev/null 2>&1; then
        held=1
        break
    fi
    sleep 0.2
done
if ! kill -0 "$bench_pid" 2>/dev/null; then
    not_ok "vessel img bench -w keeps running as the lock holder"
    diag <"$T/bench.out"
else
    ok "vessel img bench -w is running (pid $bench_pid)"
    sleep 1
    before_size=$(qemu-img info -U --output=json "$img" 2>/dev/null | grep -o '"virtual-size": [0-9]*')
    expect_error "resize while another vessel has it open read-write" "locked.qcow2" "lock" \
        img resize "$img" +1M
    expect_error "snapshot -c while another vessel has it open read-write" "locked.qcow2" "lock" \
        img snapshot -c s1 "$img"
    expect_error "convert -n into it while another vessel has it open" "locked.qcow2" "lock" \
        img convert -n -O qcow2 "$src" "$img"
    after_size=$(qemu-img info -U --output=json "$img" 2>/dev/null | grep -o '"virtual-size": [0-9]*')
    [ "$before_size" = "$after_size" ] && ok "the refused resize changed nothing" ||
        not_ok "the refused resize changed nothing ($before_size -> $after_size)"
    # qemu interop: vessel's lock is visible to qemu (and qemu's to vessel below)
    if [ "$held" = 1 ]; then ok "qemu-io sees vessel's write lock"; else
        not_ok "qemu-io sees vessel's write lock (qemu opened the image read-write)"
    fi
    # a read-only open may share (qemu -U style: info with -U never fails)
    expect_ok "info -U (force share) of the locked image" img info -U "$img"
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    if grep -qE "$SANITIZER_RE" "$T/bench.out"; then
        not_ok "bench: no sanitizer report"
        diag <"$T/bench.out"
    fi
fi
expect_ok "after the writer exits, resize works" img resize "$img" +1M
assert_qemu_clean "image after the lock test" "$img"

# qemu holds it read-write (qemu-io sleeping in a command), vessel must not write
qemu-io -f qcow2 -c "sleep 20000" "$img" >/dev/null 2>&1 &
qpid=$!
sleep 1
expect_error "resize while qemu-io has it open read-write" "locked.qcow2" "lock" \
    img resize "$img" +1M
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true

finish
