#!/bin/bash
# tests/integration/mgmt-lifecycle.sh — vesseld and the `vessel` VM verbs end to end with the probe
# guest (probe.mode=idle: stays up, powers off on the ACPI power button): define, start, list,
# pause/resume (vCPU time stops), shutdown, destroy, reboot and poweroff policies, undo-disk
# discard, snapshot revert, clone, daemon kill -9 + restart (the VM keeps running and stays
# controllable), malformed definitions (line numbers) through the CLI and the raw API, hostile
# HTTP, and 50 concurrent API clients (no lost update, SQLite consistent).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need curl jq

api() { # METHOD PATH [curl args…] — prints the body, then the status on the last line
    local m=$1 p=$2
    shift 2
    curl -s --max-time 60 --unix-socket "$SOCK" -X "$m" -w '\n%{http_code}\n' "$@" "http://v$p"
}
cpu_ns() { "$VESSEL" stats "$1" --json | jq -r .cpu_time_ns; }
mkdef() { # NAME EXTRA-TOP-LEVEL-LINES [BOOT-CMDLINE] [DISK-SECTION]
    {
        probe_def "$1" "${3:-}" "" "$2"
        printf '%s\n' "${4:-}"
    } >"$T/$1.vm"
}

mkdir -p "$STATE"
start_daemon

# ---- define, start, list ------------------------------------------------------------------------------
mkdef p1 "on_reboot = restart"
expect_ok "define p1" define "$T/p1.vm"
expect_rc 1 "with no daemon at --connect the CLI fails with one line" define "$T/p1.vm" --connect "unix:$T/nowhere.sock"
expect_ok "start p1" start p1
vs list --json
if [ "$(jq -r '.[] | select(.name=="p1") | .state' "$VS_OUT")" = running ]; then
    ok "list shows p1 running"
else
    not_ok "list shows p1 running"
    diag <"$VS_OUT"
fi
P1_PID=$(field p1 pid)
kill -0 "$P1_PID" 2>/dev/null && ok "p1's vessel-vmm (pid $P1_PID) is alive" || not_ok "p1's vessel-vmm is alive"
if [ "$(ps -o sid= -p "$P1_PID" | tr -d ' ')" != "$(ps -o sid= -p "$DPID" | tr -d ' ')" ] &&
    [ "$(ps -o ppid= -p "$P1_PID" | tr -d ' ')" != "$DPID" ]; then
    ok "vessel-vmm runs in its own session, not as the daemon's child"
else
    not_ok "vessel-vmm is detached from the daemon"
fi
wait_for "$T/p1.console" "PROBE idle" 30 && ok "the probe is up (PROBE idle)" || not_ok "PROBE idle on p1's console"
expect_rc 1 "starting a running VM is refused" start p1

# ---- pause / resume: vCPU time stops --------------------------------------------------------------------
expect_ok "pause p1" pause p1
[ "$(field p1 state)" = paused ] && ok "p1 is paused" || not_ok "p1 is paused"
a=$(cpu_ns p1)
sleep 1
b=$(cpu_ns p1)
[ "$a" = "$b" ] && ok "vCPU time stands still while paused ($a ns)" || not_ok "vCPU time stands still while paused ($a -> $b)"
expect_ok "resume p1" resume p1
sleep 0.5
c=$(cpu_ns p1)
[ "$c" -gt "$b" ] && ok "vCPU time moves after resume ($b -> $c ns)" || not_ok "vCPU time moves after resume ($b -> $c)"
vs stats p1
grep -q "CPU time" "$VS_OUT" && ok "stats prints CPU time" || not_ok "stats prints CPU time"

# ---- reboot policy ----------------------------------------------------------------------------------------
boots=$(field p1 boots)
expect_ok "reboot p1 (on_reboot = restart)" reboot p1
if [ "$(field p1 state)" = running ] && [ "$(field p1 pid)" != "$P1_PID" ] && [ "$(field p1 boots)" -eq $((boots + 1)) ]; then
    ok "p1 came back with a new vessel-vmm (boots $boots -> $(field p1 boots))"
else
    not_ok "p1 restarted after reboot (state $(field p1 state), pid $(field p1 pid), boots $(field p1 boots))"
fi
mkdef p2 "on_reboot = destroy"
expect_ok "define p2 (on_reboot = destroy)" define "$T/p2.vm"
expect_ok "start p2" start p2
wait_for "$T/p2.console" "PROBE idle" 30 || true
vs reboot p2
wait_state p2 shutoff 10 && ok "reboot of p2 ends in shutoff (on_reboot = destroy)" || not_ok "p2 shut off after reboot (state $(field p2 state))"

# on_poweroff = restart: a probe in run mode powers off after its tests and comes back
mkdef p3 "on_poweroff = restart" "probe.mode=run probe.tests=io probe.iters=10"
expect_ok "define p3 (on_poweroff = restart, guest powers off by itself)" define "$T/p3.vm"
expect_ok "start p3" start p3
for i in $(seq 200); do [ "$(field p3 boots)" -ge 2 ] && break; sleep 0.1; done
[ "$(field p3 boots)" -ge 2 ] && ok "p3 was restarted after its guest powered off (boots $(field p3 boots))" ||
    not_ok "p3 restarted by on_poweroff (boots $(field p3 boots), state $(field p3 state))"
# the crash-loop guard stops it after 5 quick restarts, or we destroy it
vs destroy p3
wait_state p3 shutoff 60 && ok "p3 ends shut off (destroy or crash-loop guard)" || not_ok "p3 shut off (state $(field p3 state))"

# ---- shutdown through the power button -------------------------------------------------------------------
wait_for "$T/p1.console" "PROBE idle" 30 || true
sleep 0.5
expect_ok "shutdown p1 --timeout 30" shutdown p1 --timeout 30
grep -q "shut off" "$VS_OUT" && ok "the probe powered off on the power button (no destroy needed)" || not_ok "p1 shut down cleanly"
[ "$(field p1 state)" = shutoff ] && [ "$(field p1 last_exit)" = 0 ] && ok "p1 is shut off, vessel-vmm exit 0" ||
    not_ok "p1 shut off with exit 0 (state $(field p1 state), exit $(field p1 last_exit))"

# ---- destroy ------------------------------------------------------------------------------------------------
expect_ok "start p1 again" start p1
pid=$(field p1 pid)
expect_ok "destroy p1" destroy p1
sleep 0.2
! kill -0 "$pid" 2>/dev/null && [ "$(field p1 state)" = shutoff ] && ok "destroy stopped vessel-vmm $pid" || not_ok "destroy stopped p1"
expect_rc 1 "destroying a shut-off VM is an error" destroy p1

# ---- daemon kill -9, restart, re-attach -------------------------------------------------------------------
expect_ok "start p1 --paused" start p1 --paused
[ "$(field p1 state)" = paused ] && ok "p1 started paused" || not_ok "p1 started paused (state $(field p1 state))"
expect_ok "resume p1" resume p1
pid=$(field p1 pid)
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
sleep 0.5
kill -0 "$pid" 2>/dev/null && ok "after kill -9 of vesseld, vessel-vmm $pid still runs" || not_ok "VM survives kill -9 of the daemon"
start_daemon
vs list --json
if [ "$(jq -r '.[] | select(.name=="p1") | "\(.state) \(.pid)"' "$VS_OUT")" = "running $pid" ]; then
    ok "the restarted daemon lists p1 running with the same pid"
else
    not_ok "re-attached p1 (list: $(cat "$VS_OUT" | tr -d '\n'))"
fi
expect_ok "pause the re-attached p1" pause p1
expect_ok "resume the re-attached p1" resume p1
vs shutdown p1 --timeout 30
wait_state p1 shutoff 30 && [ "$(field p1 last_exit)" = 0 ] && ok "the re-attached p1 shut down through the monitor" ||
    not_ok "re-attached p1 shut down (state $(field p1 state))"
# a VM that dies while the daemon is down is handled (policy) when it comes back
expect_ok "start p2" start p2
pid=$(field p2 pid)
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
kill -9 "$pid"
sleep 0.5
start_daemon
wait_state p2 shutoff 10 && ok "p2, killed while the daemon was away, is shut off after restart" ||
    not_ok "p2 reconciled after restart (state $(field p2 state))"

# ---- definitions: dumpdef, errors with line numbers -----------------------------------------------------------
vs dumpdef p1
grep -q "^name = p1" "$VS_OUT" && grep -q "on_reboot = restart" "$VS_OUT" && ok "dumpdef prints the canonical definition" || not_ok "dumpdef vessel"
cp "$VS_OUT" "$T/p1.dump"
expect_ok "the dump defines again" define "$T/p1.dump"
vs dumpdef p1 --format libvirt
grep -q "<domain type=.kvm" "$VS_OUT" && ok "dumpdef --format libvirt" || not_ok "dumpdef --format libvirt"
printf 'name = bad1\nmemory = 64M\nflavour = salty\n' >"$T/bad1.vm"
vs define "$T/bad1.vm"
[ "$VS_RC" -ne 0 ] && grep -q "line 3" "$VS_ERR" && ok "unknown key: error names line 3" || not_ok "unknown key error with line"
printf 'name = bad2\n\nmemory = 12Q\n' >"$T/bad2.vm"
vs define "$T/bad2.vm"
[ "$VS_RC" -ne 0 ] && grep -q "line 3" "$VS_ERR" && ok "bad size: error names line 3" || not_ok "bad size error with line"
printf 'name = bad3\nmemory = 64M\n[disk]\nfile = %s/missing.img\n' "$T" >"$T/bad3.vm"
vs define "$T/bad3.vm"
[ "$VS_RC" -ne 0 ] && grep -q "missing.img" "$VS_ERR" && ok "missing disk file is refused at define" || not_ok "missing disk refused"
printf 'name = bad4\nmemory = 64M\n[nic]\nmac = 52:54:00:00:00:01\n[nic]\nmac = 52:54:00:00:00:01\n' >"$T/bad4.vm"
vs define "$T/bad4.vm"
[ "$VS_RC" -ne 0 ] && grep -q "line 6" "$VS_ERR" && ok "duplicate MAC: error names line 6" || not_ok "duplicate MAC error with line"
out=$(api POST "/v1/vms?source=web.vm" -H 'Content-Type: text/plain' --data-binary $'name = web\nmemory = 64M\nvcpus = many\n')
[ "$(tail -1 <<<"$out")" = 400 ] && grep -q "web.vm: line 3" <<<"$out" && ok "API: malformed definition -> 400 naming web.vm line 3" ||
    not_ok "API malformed definition ($out)"

# ---- hostile HTTP ----------------------------------------------------------------------------------------------
hostile() { # DESC EXPECTED-STATUS BYTES
    local got
    got=$(printf "$3" | timeout 10 python3 -c '
import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())
s.shutdown(socket.SHUT_WR); d=b""
while True:
    c=s.recv(4096)
    if not c: break
    d+=c
print(d.split(b" ")[1].decode() if d.startswith(b"HTTP/1.1 ") else "none")' "$SOCK" 2>&1 || echo error)
    [ "$got" = "$2" ] && ok "hostile HTTP: $1 -> $2" || not_ok "hostile HTTP: $1 (got $got, want $2)"
}
hostile "bare LF line ends" 400 'GET /v1/vms HTTP/1.1\nHost: x\n\n'
hostile "Transfer-Encoding: chunked" 501 'POST /v1/vms HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
hostile "two Content-Lengths" 400 'POST /v1/vms HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab'
hostile "huge Content-Length" 413 'POST /v1/vms HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n'
hostile "HTTP/2.0" 505 'GET /v1/vms HTTP/2.0\r\n\r\n'
hostile "path traversal" 400 'GET /v1/vms/../etc HTTP/1.1\r\n\r\n'
hostile "oversized head" 431 "GET /v1/vms HTTP/1.1\r\nX: $(head -c 9000 /dev/zero | tr '\0' a)\r\n\r\n"
hostile "unknown endpoint" 404 'GET /v2/nothing HTTP/1.1\r\n\r\n'
hostile "truncated body" 408 'POST /v1/vms HTTP/1.1\r\nContent-Length: 50\r\n\r\nname'
curl -sf --unix-socket "$SOCK" http://v/v1/ping >/dev/null && ok "daemon still serves after hostile requests" || not_ok "daemon alive after hostile requests"

# ---- undo disk: writes are discarded at shutdown --------------------------------------------------------------
quiet truncate -s 16M "$T/base.raw"
sum0=$(sha256sum <"$T/base.raw")
mkdef u1 "" "probe.mode=idle probe.tests=blk probe.blk.size=1M probe.blk.rand_ops=50" \
    "[disk]
file = $T/base.raw
format = raw
undo = yes"
expect_ok "define u1 with an undo disk" define "$T/u1.vm"
expect_ok "start u1" start u1
wait_for "$T/u1.console" "PROBE idle" 60 && ok "u1's probe wrote to its disk" || not_ok "u1 blk test ran (console: $(tail -3 "$T/u1.console" 2>/dev/null))"
[ -f "$STATE/run/u1/undo-0.qcow2" ] && ok "the writes went to run/u1/undo-0.qcow2" || not_ok "undo overlay exists"
vs shutdown u1 --timeout 30
[ "$(sha256sum <"$T/base.raw")" = "$sum0" ] && ok "after shutdown the base disk is unchanged" || not_ok "undo: base disk unchanged"
[ ! -e "$STATE/run/u1/undo-0.qcow2" ] && ok "the undo overlay was discarded" || not_ok "undo overlay discarded"

# ---- snapshot create / revert, clone ----------------------------------------------------------------------------
quiet "$VESSEL" img create -q -f qcow2 "$T/s.qcow2" 16M
mkdef s1 "" "probe.mode=idle probe.tests=blk probe.blk.size=1M probe.blk.rand_ops=50" \
    "[disk]
file = $T/s.qcow2
format = qcow2"
expect_ok "define s1" define "$T/s1.vm"
expect_ok "snapshot create s1 clean" snapshot create s1 clean
vs snapshot list s1
grep -qx clean "$VS_OUT" && ok "snapshot list shows 'clean'" || not_ok "snapshot list"
expect_ok "start s1 (writes to the disk)" start s1
wait_for "$T/s1.console" "PROBE idle" 60 || true
vs shutdown s1 --timeout 30
active=$("$VESSEL" dumpdef s1 | sed -n 's/^file = //p')
vs img compare "$T/s.qcow2" "$active"
[ "$VS_RC" -eq 1 ] && ok "after the run the active disk differs from the snapshot" || not_ok "s1 wrote to its overlay (compare exit $VS_RC)"
expect_ok "snapshot revert s1 clean" snapshot revert s1 clean
active=$("$VESSEL" dumpdef s1 | sed -n 's/^file = //p')
vs img compare "$T/s.qcow2" "$active"
[ "$VS_RC" -eq 0 ] && ok "after revert the disk equals the snapshot" || not_ok "revert restored the disk (compare exit $VS_RC)"
expect_ok "snapshot delete s1 clean" snapshot delete s1 clean
expect_ok "clone s1 s1c" clone s1 s1c
if [ "$(field s1c uuid)" != "$(field s1 uuid)" ] && [ "$("$VESSEL" dumpdef s1c | sed -n 's/^file = //p')" != "$("$VESSEL" dumpdef s1 | sed -n 's/^file = //p')" ]; then
    ok "the clone has its own uuid and disk overlay"
else
    not_ok "clone has a new uuid and disk"
fi
expect_ok "start the clone" start s1c
expect_ok "destroy the clone" destroy s1c
expect_ok "undefine the clone" undefine s1c
expect_rc 1 "undefine of an unknown VM fails" undefine s1c

# ---- 50 concurrent API clients -------------------------------------------------------------------------------
for i in 0 1 2; do
    mkdef c$i ""
    expect_ok "define c$i" define "$T/c$i.vm" >/dev/null
done
pids=()
for i in $(seq 0 49); do
    (
        printf 'name = d%s\nmemory = 64M\n[boot]\nkernel = %s\n' "$i" "$PROBE" >"$T/d$i.vm"
        curl -s --max-time 120 --unix-socket "$SOCK" -o /dev/null -X POST -H 'Content-Type: text/plain' \
            --data-binary @"$T/d$i.vm" "http://v/v1/vms?source=d$i.vm"
        curl -s --max-time 120 --unix-socket "$SOCK" -o /dev/null -X POST "http://v/v1/vms/d$i/autostart?value=on"
        vm=c$((i % 3))
        case $((i % 5)) in
        0 | 1) curl -s --max-time 120 --unix-socket "$SOCK" -o /dev/null -X POST "http://v/v1/vms/$vm/start" ;;
        2) curl -s --max-time 120 --unix-socket "$SOCK" -o /dev/null -X POST "http://v/v1/vms/$vm/destroy" ;;
        *) curl -s --max-time 120 --unix-socket "$SOCK" -o /dev/null "http://v/v1/vms" ;;
        esac
    ) &
    pids+=($!)
done
fails=0
for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
[ "$fails" -eq 0 ] && ok "50 concurrent clients finished" || not_ok "$fails of 50 clients failed"
out=$(api GET /v1/vms)
n=$(head -n -1 <<<"$out" | jq '[.vms[] | select(.name | startswith("d"))] | length')
g=$(head -n -1 <<<"$out" | jq '[.vms[] | select((.name | startswith("d")) and .autostart and .generation == 1)] | length')
[ "$n" = 50 ] && [ "$g" = 50 ] && ok "all 50 definitions and their autostart updates landed (no lost update)" ||
    not_ok "lost updates: $n defined, $g with autostart on and generation 1"
consistent=1
for i in 0 1 2; do
    st=$(field c$i state)
    pid=$(field c$i pid)
    case $st in
    running) kill -0 "$pid" 2>/dev/null || consistent=0 ;;
    shutoff) [ "$pid" = 0 ] && ! pgrep -f "vessel-vmm .*$STATE/run/c$i/" >/dev/null || consistent=0 ;;
    *) consistent=0 ;;
    esac
    echo "# c$i: $st $pid"
done
[ "$consistent" = 1 ] && ok "after the storm every VM's recorded state matches its process" || not_ok "VM state consistent with processes"
for i in 0 1 2; do "$VESSEL" destroy c$i >/dev/null 2>&1 || true; done
if command -v sqlite3 >/dev/null; then
    [ "$(sqlite3 "$STATE/vessel.db" 'pragma integrity_check')" = ok ] && ok "SQLite integrity_check: ok" || not_ok "SQLite integrity_check"
    [ "$(sqlite3 "$STATE/vessel.db" 'pragma journal_mode')" = wal ] && ok "the store is in WAL mode" || not_ok "WAL mode"
else
    skip "sqlite3 CLI not installed"
fi

# ---- orderly daemon stop leaves VMs alone -------------------------------------------------------------------------
expect_ok "start c0" start c0
pid=$(field c0 pid)
kill "$DPID"
wait "$DPID" 2>/dev/null || true
DPID=
kill -0 "$pid" 2>/dev/null && ok "SIGTERM to vesseld leaves the VM running" || not_ok "VM survives daemon SIGTERM"
if grep -qE "$SANITIZER_RE" "$T/vesseld.log"; then
    not_ok "vesseld ran without sanitizer reports"
    diag 60 <"$T/vesseld.log"
else
    ok "vesseld ran without sanitizer reports"
fi
kill -9 "$pid" 2>/dev/null || true
finish
