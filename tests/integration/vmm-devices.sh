#!/bin/bash
# tests/integration/vmm-devices.sh — the probe guest drives vessel-vmm's virtio devices and the
# host checks what it did: bytes written through virtio-blk land in raw and qcow2 images; reads
# through a qcow2 backing chain checksum like the base; virtio-rng returns data; balloon
# inflation gives memory back (the VMM's RSS stays low, the pages are discarded); a raw image
# truncated under the VM fails the guest's reads, not the VMM, and the pages raw reads mapped are
# let go once the guest stops reading; pause stops
# vCPU time; I/O limits (iops=, bps=) hold the guest's rates; power button, poweroff and reset
# end with the documented exit codes; frames cross a
# Linux bridge between two VMs in a private network namespace (no traffic leaves it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/vmm-common.bash"

NETNS=""
cleanup_all() {
    if [ -n "$NETNS" ]; then
        ip netns pids "$NETNS" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$NETNS" 2>/dev/null || true
    fi
    it_cleanup
}
trap cleanup_all EXIT

expect_result() {
    local got
    got=$(result "$1" "$2")
    if [ "$got" = "$3" ]; then ok "$4 ($2=$got)"; else not_ok "$4 ($2='$got', expected '$3')"; fi
}
# region_sha IMAGE-AS-RAW S-E — host SHA-256 of sectors [S,E) of a raw file.
region_sha() {
    local s=${2%-*} e=${2#*-}
    dd if="$1" bs=512 skip="$s" count=$((e - s)) status=none | sha256sum | cut -d' ' -f1
}
wait_for() { # FILE PATTERN [TENTHS]
    for _ in $(seq "${3:-200}"); do grep -aq "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

BLK_ARGS="probe.tests=blk probe.blk.size=4M probe.blk.rand_ops=300 probe.blk.offset=2048"

# ---- virtio-blk: raw ------------------------------------------------------------------------
truncate -s 32M "$T/disk.raw"
vs --kernel "$PROBE" --disk "$T/disk.raw" --cmdline "$BLK_ARGS"
cp "$VS_OUT" "$T/raw.out"
region=$(result "$T/raw.out" blk.region)
if [ "$VS_RC" -eq 0 ] && grep -q '^PROBE ok' "$T/raw.out" && [ -n "$region" ]; then
    ok "raw: probe wrote and verified its region $region (exit 0)"
else
    not_ok "raw: probe run (exit $VS_RC)"
    grep -a 'PROBE fail' "$T/raw.out" | diag 5
fi
if [ -n "$region" ]; then
    expect_result "$T/raw.out" "blk.region.$region" "$(region_sha "$T/disk.raw" "$region")" \
        "raw: bytes the guest wrote landed in the image file"
fi

# ---- a raw image cut short under a running VM ---------------------------------------------------
# Raw images are read through a mapping; a read of a page the file no longer has raises SIGBUS.
# That must become VIRTIO_BLK_S_IOERR (1) for the request, and the VM runs on to its poweroff.
head -c 16M /dev/urandom >"$T/cut.raw"
truncate -s 64M "$T/cut.raw"
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --disk "$T/cut.raw,format=raw" \
    --cmdline "probe.tests=blk probe.blk.size=16M probe.blk.rand_ops=50000000 probe.blk.write=0" \
    </dev/null >"$T/cut.out" 2>"$T/cut.err" &
pid=$!
if wait_for "$T/cut.out" "blk.capacity_sectors"; then
    sleep 0.3
    truncate -s 1M "$T/cut.raw"
fi
rc=0
wait "$pid" || rc=$?
if [ "$rc" -eq 0 ] && grep -aq "PROBE fail blk: request type 0 sector [0-9]* failed with status 1" "$T/cut.out" &&
    ! grep -qE "$SANITIZER_RE" "$T/cut.err"; then
    ok "raw image truncated under the VM: the read fails with IOERR, the VM powers off (exit 0)"
else
    not_ok "raw image truncated under the VM (exit $rc)"
    grep -a "PROBE fail\|PROBE ok" "$T/cut.out" | diag 3
    diag 8 <"$T/cut.err"
fi

# ---- a VM done reading a raw image gives back the mapping's pages -------------------------------
# 20000 random 4 KiB reads through the mapping map most of a 16 MiB region into the VMM (its
# RssFile); a second after the guest goes quiet, the worker drops them again.
head -c 16M /dev/urandom >"$T/rss.raw"
truncate -s 32M "$T/rss.raw"
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --disk "$T/rss.raw,format=raw" \
    --console "file:$T/rss.log" \
    --cmdline "probe.mode=idle probe.tests=blk probe.blk.size=16M probe.blk.rand_ops=20000 probe.blk.write=0" \
    </dev/null >/dev/null 2>"$T/rss.err" &
pid=$!
if wait_for "$T/rss.log" "PROBE idle"; then
    sleep 2.5
    file_kib=$(awk '/^RssFile:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    if grep -aq "test blk passed" "$T/rss.log" && [ -n "$file_kib" ] && [ "$file_kib" -lt 8192 ]; then
        ok "raw reads through the mapping: 2.5 s after the guest stops, the VMM maps ${file_kib} KiB of files"
    else
        not_ok "mapping released after the guest stops reading (RssFile ${file_kib:-?} KiB)"
        grep -a "PROBE" "$T/rss.log" | tail -3 | diag
    fi
else
    not_ok "idle probe after its blk test"
    diag 8 <"$T/rss.err"
fi
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true

# ---- virtio-blk I/O limits: the guest's own rates stay under them --------------------------------
vs --kernel "$PROBE" --disk "$T/disk.raw,iops=400" --cmdline "probe.tests=blk probe.blk.size=4M probe.blk.rand_ops=400"
riops=$(result "$VS_OUT" blk.rand_read_iops)
wiops=$(result "$VS_OUT" blk.rand_write_iops)
if [ "$VS_RC" -eq 0 ] && [ -n "$riops" ] && [ "$riops" -ge 250 ] && [ "$riops" -le 480 ] &&
    [ "$wiops" -ge 250 ] && [ "$wiops" -le 480 ]; then
    ok "iops=400: the guest measured $riops random reads/s and $wiops writes/s"
else
    not_ok "iops=400 holds (reads '$riops'/s, writes '$wiops'/s, exit $VS_RC)"
fi
vs --kernel "$PROBE" --disk "$T/disk.raw,bps=8M" --cmdline "probe.tests=blk probe.blk.size=8M probe.blk.rand_ops=100"
rkib=$(result "$VS_OUT" blk.seq_read_kib_per_s)
wkib=$(result "$VS_OUT" blk.seq_write_kib_per_s)
if [ "$VS_RC" -eq 0 ] && [ -n "$rkib" ] && [ "$rkib" -ge 5000 ] && [ "$rkib" -le 10240 ] &&
    [ "$wkib" -ge 5000 ] && [ "$wkib" -le 10240 ] && grep -q '^PROBE ok' "$VS_OUT"; then
    ok "bps=8M: the guest measured $rkib KiB/s reading, $wkib KiB/s writing, all verified"
else
    not_ok "bps=8M holds (read '$rkib', write '$wkib' KiB/s, exit $VS_RC)"
fi

# ---- virtio-blk: qcow2 ----------------------------------------------------------------------
if [ -x "$VESSEL_IMG" ] && "$VESSEL_IMG" img create -q -f qcow2 "$T/disk.qcow2" 32M >/dev/null 2>&1; then
    echo "# qcow2 image made by vessel img create"
else
    quiet qemu-img create -q -f qcow2 "$T/disk.qcow2" 32M
fi
vs --kernel "$PROBE" --disk "$T/disk.qcow2,format=qcow2" --cmdline "$BLK_ARGS"
cp "$VS_OUT" "$T/qcow2.out"
region=$(result "$T/qcow2.out" blk.region)
if [ "$VS_RC" -eq 0 ] && grep -q '^PROBE ok' "$T/qcow2.out" && [ -n "$region" ]; then
    ok "qcow2: probe wrote and verified its region $region (exit 0)"
else
    not_ok "qcow2: probe run (exit $VS_RC)"
    grep -a 'PROBE fail' "$T/qcow2.out" | diag 5
fi
if [ -n "$region" ] && command -v qemu-img >/dev/null; then
    quiet qemu-img convert -O raw "$T/disk.qcow2" "$T/qcow2-as.raw"
    expect_result "$T/qcow2.out" "blk.region.$region" "$(region_sha "$T/qcow2-as.raw" "$region")" \
        "qcow2: bytes the guest wrote landed in the image (read back by qemu-img)"
    run_q "qcow2: qemu-img check is clean after the guest's writes" qemu-img check "$T/disk.qcow2"
fi

# ---- reads through a backing chain ----------------------------------------------------------
if command -v qemu-img >/dev/null; then
    truncate -s 16M "$T/base.raw"
    put_random "$T/base.raw" 0 $((4096 * 512)) backing-base
    quiet qemu-img convert -O qcow2 "$T/base.raw" "$T/base.qcow2"
    quiet qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/overlay.qcow2"
    vs --kernel "$PROBE" --disk "$T/overlay.qcow2" \
        --cmdline "probe.tests=blk probe.blk.write=0 probe.blk.size=1M probe.blk.rand_ops=50 probe.blk.checksum=0-4096,100-3000"
    expect_result "$VS_OUT" blk.checksum.0-4096 "$(region_sha "$T/base.raw" 0-4096)" \
        "backing chain: overlay -> qcow2 base reads checksum like the base"
    expect_result "$VS_OUT" blk.checksum.100-3000 "$(region_sha "$T/base.raw" 100-3000)" \
        "backing chain: an unaligned range too"
    if [ "$(qemu-img info --output=json "$T/overlay.qcow2" | grep -o '"actual-size": [0-9]*' | head -1 | grep -o '[0-9]*$')" -lt 1048576 ]; then
        ok "backing chain: the read-only run left the overlay small"
    else
        not_ok "backing chain: overlay grew on reads"
    fi
else
    skip "qemu-img missing: backing-chain test not run"
fi

# ---- virtio-rng -----------------------------------------------------------------------------
vs --kernel "$PROBE" --rng --cmdline "probe.tests=rng probe.rng.bytes=65536"
n=$(result "$VS_OUT" rng.bytes)
d=$(result "$VS_OUT" rng.distinct_bytes)
if [ "$VS_RC" -eq 0 ] && [ "${n:-0}" -eq 65536 ] && [ "${d:-0}" -ge 200 ]; then
    ok "virtio-rng returned $n bytes, $d distinct values"
else
    not_ok "virtio-rng returned data (exit $VS_RC, bytes=$n distinct=$d)"
fi
vs --kernel "$PROBE" --cmdline "probe.tests=rng"
if grep -q "no virtio-rng device" "$VS_OUT" && ! grep -q '^PROBE ok' "$VS_OUT"; then
    ok "without --rng the guest sees no rng device"
else
    not_ok "without --rng the guest sees no rng device (exit $VS_RC)"
fi

# ---- virtio-balloon: inflation gives memory back ---------------------------------------------
# The probe zeroes its balloon pool when it sets the device up, so all of it is resident in the
# VMM; every page inflated after that must leave the VMM's RSS (MADV_DONTNEED).
vmm_rss_kib() { # PID-of-timeout — VmRSS of the vessel-vmm under it
    local p
    p=$(pgrep -P "$1" | head -1)
    awk '/^VmRSS/ {print $2}' "/proc/${p:-$1}/status"
}
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --memory 512M --balloon --api "unix:$T/bi.sock" \
    --console "file:$T/bi.log" --cmdline "probe.mode=idle probe.balloon.pool_pages=65536" 2>"$T/bi.err" &
pid=$!
if wait_for "$T/bi.log" "^PROBE idle" 300; then
    sleep 0.2
    before=$(vmm_rss_kib "$pid")
    api "$T/bi.sock" '{"cmd":"balloon","target_mib":192}' >/dev/null
    if wait_for "$T/bi.log" "^PROBE balloon pages=49152" 200; then
        sleep 0.2
        after=$(vmm_rss_kib "$pid")
        echo "# VMM RSS: $((before / 1024)) MiB with the 256 MiB pool resident, $((after / 1024)) MiB after inflating 192 MiB"
        if [ $((before - after)) -ge $((150 * 1024)) ]; then
            ok "balloon: inflating 192 MiB lowered the VMM's RSS by $(((before - after) / 1024)) MiB"
        else
            not_ok "balloon: RSS $((before / 1024)) -> $((after / 1024)) MiB after inflating 192 MiB"
        fi
    else
        not_ok "balloon: the idle guest followed the 192 MiB target"
    fi
    api "$T/bi.sock" poweroff >/dev/null
else
    not_ok "balloon: idle probe came up"
fi
wait "$pid" || true

# Run mode: inflate 256 MiB and hold it, the API counts the discarded bytes, then deflate.
PAGES=65536
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --memory 1G --balloon --api "unix:$T/bl.sock" \
    --console "file:$T/bl.log" --cmdline "probe.tests=balloon probe.balloon.pages=$PAGES probe.balloon.hold_ms=3000" \
    2>"$T/bl.err" &
pid=$!
if wait_for "$T/bl.log" "PROBE balloon inflated" 300; then
    stats=$(api "$T/bl.sock" stats)
    discarded=$(echo "$stats" | grep -o '"discarded_bytes":[0-9]*' | cut -d: -f2)
    if [ "${discarded:-0}" -ge $((PAGES * 4096)) ]; then
        ok "balloon: API stats report $((discarded >> 20)) MiB discarded while $((PAGES / 256)) MiB are held"
    else
        not_ok "balloon: API stats report discarded bytes ($discarded)"
        echo "$stats" | diag 3
    fi
else
    not_ok "balloon: probe reached the inflated state"
fi
rc=0
wait "$pid" || rc=$?
if [ "$rc" -eq 0 ] && [ "$(result "$T/bl.log" balloon.deflated_pages)" = "$PAGES" ] && grep -q '^PROBE ok' "$T/bl.log"; then
    ok "balloon: inflated $(result "$T/bl.log" balloon.inflated_pages) pages, deflated them, stats queue $(result "$T/bl.log" balloon.stats_vq)"
else
    not_ok "balloon: probe run (exit $rc)"
    grep -a 'PROBE fail' "$T/bl.log" | diag 3
fi

# ---- lifecycle over the API on an idle probe ------------------------------------------------
# start_idle NAME ARGS… — an idle probe with an API socket at $T/NAME.sock, log $T/NAME.log.
start_idle() {
    local name=$1
    shift
    rm -f "$T/$name.sock"
    timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --api "unix:$T/$name.sock" \
        --console "file:$T/$name.log" "$@" 2>"$T/$name.err" &
    IDLE_PID=$!
    wait_for "$T/$name.log" "^PROBE idle" 300 && [ -S "$T/$name.sock" ]
}
# exit_of PID — wait for it; its exit status in $rc.
exit_of() {
    rc=0
    wait "$1" || rc=$?
}

# Port 0x80 writes stay in the kernel (ioeventfd sink). The probe's io test does 100+N `out`s and
# N `in`s on that port: between N=1 and N=3001 the VMM must see about 3000 more I/O exits (the
# `in`s; the console lines differ by a few characters, each an exit too), not 6000 (the `out`s).
io_exits() { # ITERS — I/O exits of an idle probe that ran the io test with probe.iters=ITERS
    local n=""
    if start_idle "sink$1" --cmdline "probe.mode=idle probe.tests=io probe.iters=$1"; then
        n=$(api "$T/sink$1.sock" stats | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["exits"]["io"])' 2>/dev/null || true)
        api "$T/sink$1.sock" poweroff >/dev/null
    fi
    kill "$IDLE_PID" 2>/dev/null || true
    wait "$IDLE_PID" 2>/dev/null || true
    echo "$n"
}
io1=$(io_exits 1)
io2=$(io_exits 3001)
if [ -n "$io1" ] && [ -n "$io2" ] && [ $((io2 - io1)) -ge 2900 ] && [ $((io2 - io1)) -lt 3500 ]; then
    ok "port 0x80: 3000 more reads reached the VMM, 3000 more writes did not ($io1 -> $io2 I/O exits)"
else
    not_ok "port 0x80 writes kept in the kernel (I/O exits $io1 -> $io2; +2900..3499 expected)"
fi

if start_idle life --balloon --cmdline "probe.mode=idle probe.balloon.pool_pages=4096"; then
    cpu() { api "$T/life.sock" stats | grep -o '"cpu_time_ns":[0-9]*' | head -1 | cut -d: -f2; }
    api "$T/life.sock" pause >/dev/null
    p1=$(cpu)
    sleep 1
    p2=$(cpu)
    st=$(api "$T/life.sock" status)
    api "$T/life.sock" resume >/dev/null
    sleep 0.5
    r2=$(cpu)
    if [ -n "$p1" ] && [ $((p2 - p1)) -lt 20000000 ] && echo "$st" | grep -q '"state":"paused"'; then
        ok "pause stops vCPU time ($((p2 - p1)) ns in 1 s paused)"
    else
        not_ok "pause stops vCPU time ($p1 -> $p2)"
    fi
    [ "${r2:-0}" -gt "${p2:-0}" ] && ok "resume: vCPU time moves again" || not_ok "resume: vCPU time moves again"
    # the host sets a balloon target; the idle probe follows it
    out=$(api "$T/life.sock" '{"cmd":"balloon","pages":1024}')
    if echo "$out" | grep -q '"ok":true' && wait_for "$T/life.log" "^PROBE balloon pages=1024" 100; then
        ok "API balloon target 1024 pages: the guest inflated to it"
    else
        not_ok "API balloon target followed ($out)"
    fi
    out=$(api "$T/life.sock" '{"cmd":"balloon","target_mib":0}' stats)
    if wait_for "$T/life.log" "^PROBE balloon pages=0" 100 && echo "$out" | grep -q '"actual_pages":'; then
        ok "API balloon target 0: deflated; stats show target/actual"
    else
        not_ok "API balloon deflate"
    fi
    api "$T/life.sock" powerbutton >/dev/null
    exit_of "$IDLE_PID"
    if [ "$rc" -eq 0 ] && grep -q "^PROBE powerbutton" "$T/life.log"; then
        ok "shutdown request (ACPI power button): the guest powers off, exit 0"
    else
        not_ok "power button shutdown (exit $rc)"
    fi
else
    not_ok "idle probe came up"
    diag <"$T/life.err"
fi

if start_idle poff --cmdline "probe.mode=idle"; then
    out=$(api "$T/poff.sock" '{"cmd":"balloon","pages":10}' '{"cmd":"balloon"}')
    if echo "$out" | sed -n 1p | grep -q '"ok":false.*--balloon' && echo "$out" | sed -n 2p | grep -q '"ok":false.*pages'; then
        ok "API balloon without --balloon, and without a target: clear errors"
    else
        not_ok "API balloon errors ($out)"
    fi
    api "$T/poff.sock" poweroff >/dev/null
    exit_of "$IDLE_PID"
    [ "$rc" -eq 0 ] && ok "API poweroff exits 0" || not_ok "API poweroff exits 0 (got $rc)"
else
    not_ok "idle probe came up (poweroff)"
fi

if start_idle rst --no-reboot --cmdline "probe.mode=idle"; then
    api "$T/rst.sock" reset >/dev/null
    exit_of "$IDLE_PID"
    [ "$rc" -eq 2 ] && ok "API reset with --no-reboot exits 2" || not_ok "API reset with --no-reboot exits 2 (got $rc)"
else
    not_ok "idle probe came up (reset)"
fi

if start_idle reboot --cmdline "probe.mode=idle"; then
    api "$T/reboot.sock" reset >/dev/null
    sleep 0.5
    for _ in $(seq 200); do [ "$(grep -c '^PROBE idle' "$T/reboot.log")" -ge 2 ] && break; sleep 0.1; done
    n=$(grep -c '^PROBE hello' "$T/reboot.log" || true)
    api "$T/reboot.sock" powerbutton >/dev/null 2>&1 || true
    exit_of "$IDLE_PID"
    if [ "$n" -ge 2 ] && [ "$rc" -eq 0 ]; then
        ok "reboot: reset without --no-reboot boots the guest again ($n× PROBE hello), then power button exits 0"
    else
        not_ok "reboot restarts the guest (hello×$n, exit $rc)"
    fi
else
    not_ok "idle probe came up (reboot)"
fi

# ---- virtio-net: frames across a bridge between two VMs, inside our own netns ----------------
vs --kernel "$PROBE" --net mac=52:54:00:00:00:01
if [ "$VS_RC" -eq 1 ] && grep -q "tap=NAME is required" "$VS_ERR" && [ "$(grep -c '' "$VS_ERR")" -eq 1 ]; then
    ok "--net without tap= fails with one clear line: $(head -c 120 "$VS_ERR")"
else
    not_ok "--net without tap= error (exit $VS_RC)"
fi
if ! command -v ip >/dev/null || [ ! -c /dev/net/tun ]; then
    skip "no ip(8) or /dev/net/tun: bridge test not run"
    finish
fi
NETNS=vtest$$
if ! ip netns add "$NETNS" 2>"$T/netns.err"; then
    NETNS=""
    skip "cannot create a network namespace: $(head -1 "$T/netns.err")"
    finish
fi
quiet ip -n "$NETNS" link add br0 type bridge
quiet ip -n "$NETNS" link set br0 up
for t in tap0 tap1; do
    quiet ip -n "$NETNS" tuntap add dev "$t" mode tap
    quiet ip -n "$NETNS" link set "$t" master br0
    quiet ip -n "$NETNS" link set "$t" up
done
timeout -k 5 "$IT_TIMEOUT" ip netns exec "$NETNS" "$VESSEL" --kernel "$PROBE" \
    --net tap=tap0,mac=52:54:00:00:aa:01 --console "file:$T/echo.log" \
    --cmdline "probe.tests=net probe.net.role=echo probe.net.timeout_ms=30000" 2>"$T/echo.err" &
echo_pid=$!
if wait_for "$T/echo.log" "PROBE net echo ready" 300; then
    timeout -k 5 "$IT_TIMEOUT" ip netns exec "$NETNS" "$VESSEL" --kernel "$PROBE" \
        --net tap=tap1,mac=52:54:00:00:aa:02 --console "file:$T/ping.log" \
        --cmdline "probe.tests=net probe.net.count=1000" 2>"$T/ping.err" || true
fi
exit_of "$echo_pid"
expect_result "$T/ping.log" net.mac 52:54:00:00:aa:02 "net: MAC from --net mac= in config space"
expect_result "$T/ping.log" net.rx_replies 1000 "net: 1000 frames crossed the bridge and came back"
echoed=$(result "$T/echo.log" net.echoed)
if [ "$rc" -eq 0 ] && [ "${echoed:-0}" -ge 1000 ]; then
    ok "net: the echo VM answered $echoed frames and powered off on the stop frame"
else
    not_ok "net: echo VM (exit $rc, echoed ${echoed:-none})"
    grep -a 'PROBE fail' "$T/echo.log" | diag 3
fi
pps=$(result "$T/ping.log" net.pps)
echo "# net: $pps frames/s, rtt $(result "$T/ping.log" net.rtt_us) us"
for f in "$T"/*.err; do
    if grep -qE "$SANITIZER_RE" "$f"; then
        not_ok "sanitizer report in $(basename "$f")"
        diag 30 <"$f"
    fi
done
finish
