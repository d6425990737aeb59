#!/bin/bash
# tests/integration/mgmt-save.sh — `vessel save VM FILE` and `vessel restore FILE|VM` through
# vesseld (xm save / xm restore). vesseld runs in a private network namespace with a host bridge, so
# the saved VM's tap can be watched: an idle probe VM with a NIC on the bridge, an undo disk its blk
# test wrote to and a unix-socket console is saved; it is then 'saved' (list, info, the state file,
# last exit 5 with restart policies that must not fire), its tap is gone, a hook saw `saved`, and a
# plain `start` is refused with a hint. A garbage state file (at the remembered path or at another
# one) fails with one line and leaves the VM saved without a tap or a VMM; a save to an existing
# file is refused and the VM runs on. `restore FILE` brings it back on the same tap: its idle
# counter is past the saved value, it reads back what it wrote to its undo disk, a hook saw
# `restored`. Then save + `restore NAME`; a moved state file restores by its new path (the file
# names its VM and save) while an older save's copy is refused; save + destroy (discards the saved state), a save the
# daemon finds only after a kill -9 (the exit file of the keeper), and autostart restoring a saved VM.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need ip jq curl python3

NS=vsave-$$
DAEMON_NS=$NS
BR=brsave
ip netns add "$NS" || { skip "cannot create a network namespace"; finish; }
ip netns exec "$NS" ip link add "$BR" type bridge
ip netns exec "$NS" ip link set "$BR" up
mkdir -p "$STATE/hooks"
cat >"$STATE/hooks/10-record" <<EOF
#!/bin/sh
echo "\$1 \$2 \$3" >>"$T/hooks.txt"
EOF
chmod +x "$STATE/hooks/10-record"

vmms() { pgrep -f "vessel-vmm .*$STATE/run/$1/" | wc -l; }
hook_saw() { wait_for "$T/hooks.txt" "^$1 $2" "$3"; } # VM EVENT SECONDS — a hook ran for the event
one_line() { [ "$(wc -l <"$VS_ERR")" -eq 1 ]; }

truncate -s 16M "$T/base.raw"
base_sum=$(sha256sum <"$T/base.raw")
CON=$T/s1.con
cat >"$T/s1.vm" <<EOF
name = s1
memory = 64M
console = unix:$CON
on_poweroff = restart
on_crash = restart
[boot]
kernel = $PROBE
cmdline = probe.mode=idle probe.tests=blk probe.blk.size=1M probe.blk.rand_ops=50 probe.blk.offset=2048 probe.blk.checksum=2048-4096
[disk]
file = $T/base.raw
format = raw
undo = yes
[nic]
bridge = $BR
mac = 52:56:65:00:30:01
EOF
start_daemon
expect_ok "define s1 (NIC on bridge $BR, undo disk, unix console, restart policies)" define "$T/s1.vm"
expect_ok "start s1" start s1
TAP=vs$(field s1 uuid | tr -d - | cut -c1-8)0
[ "$(master_of "$TAP")" = "$BR" ] && ok "s1's tap $TAP is a port of $BR" || not_ok "tap $TAP on $BR"
out=$(con "$CON" blksum "idle.blksum=" 120)
sum0=$(value "$out" blk.checksum.2048-4096)
[ -n "$sum0" ] && [ "$(value "$out" idle.blksum)" = ok ] && ok "the probe is up and wrote its undo disk" ||
    { not_ok "probe up (blksum '$sum0')"; diag 10 <<<"$out"; }
boots=$(field s1 boots)

# ---- a save to an existing file is refused, the VM runs on --------------------------------------
echo keep >"$T/exists.save"
vs save s1 "$T/exists.save"
if [ "$VS_RC" -eq 1 ] && one_line && grep -q "already exists" "$VS_ERR" && [ "$(cat "$T/exists.save")" = keep ] &&
    [ "$(field s1 state)" = running ]; then
    ok "save to an existing file: one line ($(cat "$VS_ERR")), the file untouched, s1 still running"
else
    not_ok "save to an existing file refused (rc $VS_RC, state $(field s1 state))"
fi
expect_rc 1 "save needs a running VM name" save nosuchvm "$T/x.save"

# ---- save ------------------------------------------------------------------------------------------
sleep 1 # the idle counter grows, so a restored guest starting from zero would show
ticks1=$(value "$(con "$CON" ticks "idle.ticks=" 30)" idle.ticks)
pushd "$T" >/dev/null # a relative FILE: the CLI makes it absolute against its directory
expect_ok "vessel save s1 s1.save (relative path)" save s1 s1.save
popd >/dev/null
SAVE=$(realpath "$T")/s1.save
grep -q "saved to $SAVE" "$VS_OUT" && ok "save prints the file ($(cat "$VS_OUT"))" || not_ok "save output: $(cat "$VS_OUT")"
[ "$(field s1 state)" = saved ] && [ "$(field s1 saved_path)" = "$SAVE" ] &&
    ok "s1 is saved, info names the file" || not_ok "s1 saved (state $(field s1 state), saved_path $(field s1 saved_path))"
[ "$(field s1 last_exit)" = 5 ] && [ "$(field s1 boots)" = "$boots" ] && [ "$(vmms s1)" -eq 0 ] &&
    ok "exit code 5, no restart policy fired (boots $boots), no vessel-vmm left" ||
    not_ok "no policy on exit 5 (last_exit $(field s1 last_exit), boots $(field s1 boots), vmms $(vmms s1))"
[ -s "$SAVE" ] && ok "the state file exists ($(du -k "$SAVE" | cut -f1) KiB on disk)" || not_ok "state file $SAVE written"
! link_exists "$TAP" && ok "the tap $TAP is gone" || not_ok "tap $TAP deleted at save"
[ -f "$STATE/run/s1/undo-0.qcow2" ] && ok "the undo overlay is kept for the restore" || not_ok "undo overlay kept"
hook_saw s1 saved 10 && ok "a hook saw 'saved' ($(grep "^s1 saved" "$T/hooks.txt"))" || not_ok "hook saw saved"
vs list --all
grep -Eq "^s1 +saved" "$VS_OUT" && ok "list --all shows s1 saved" || not_ok "list: $(cat "$VS_OUT")"
vs info s1
grep -q "Saved to: *$SAVE" "$VS_OUT" && ok "info: Saved to: $SAVE" || not_ok "info shows the file"
vs start s1
[ "$VS_RC" -eq 1 ] && one_line && grep -q "vessel restore s1" "$VS_ERR" && [ "$(field s1 state)" = saved ] &&
    ok "start of a saved VM is refused with a hint: $(cat "$VS_ERR")" || not_ok "start of saved VM refused (rc $VS_RC)"
expect_rc 1 "undefine of a saved VM is refused" undefine s1
expect_rc 1 "snapshot of a saved VM is refused (its disks must stay as saved)" snapshot create s1 snap1

# ---- broken state files --------------------------------------------------------------------------
head -c 100000 /dev/urandom >"$T/garbage.save"
vs restore "$T/garbage.save"
[ "$VS_RC" -eq 1 ] && one_line && [ "$(field s1 state)" = saved ] &&
    ok "restore of a file nothing was saved to: one line ($(cat "$VS_ERR"))" || not_ok "restore garbage.save (rc $VS_RC)"
cp "$SAVE" "$T/good.save"
head -c 100000 /dev/urandom >"$SAVE"
vs restore "$SAVE"
if [ "$VS_RC" -eq 1 ] && one_line && [ "$(field s1 state)" = saved ] && ! link_exists "$TAP" && [ "$(vmms s1)" -eq 0 ]; then
    ok "restore of a corrupt state file: one line ($(cat "$VS_ERR")), s1 still saved, no tap, no VMM"
else
    not_ok "corrupt state file (rc $VS_RC, state $(field s1 state), vmms $(vmms s1))"
fi
rm -f "$SAVE"
vs restore s1
[ "$VS_RC" -eq 1 ] && one_line && [ "$(field s1 state)" = saved ] &&
    ok "restore with the state file missing: one line ($(cat "$VS_ERR"))" || not_ok "missing state file (rc $VS_RC)"
cp "$T/good.save" "$SAVE"

# ---- restore FILE ----------------------------------------------------------------------------------
expect_ok "vessel restore $SAVE" restore "$SAVE"
grep -q "VM s1 restored from $SAVE" "$VS_OUT" && ok "restore prints: $(cat "$VS_OUT")" || not_ok "restore output: $(cat "$VS_OUT")"
[ "$(field s1 state)" = running ] && [ "$(vmms s1)" -eq 1 ] && ok "s1 runs again" || not_ok "s1 running (state $(field s1 state))"
[ "$(master_of "$TAP")" = "$BR" ] && ok "the same tap $TAP is back on $BR" || not_ok "tap $TAP back on $BR"
ticks2=$(value "$(con "$CON" ticks "idle.ticks=" 30)" idle.ticks)
[ -n "$ticks1" ] && [ -n "$ticks2" ] && [ "$ticks2" -gt "$ticks1" ] &&
    ok "the guest carries on: idle ticks $ticks1 before the save, $ticks2 after the restore" ||
    not_ok "ticks continue (before '$ticks1', after '$ticks2')"
out=$(con "$CON" blksum "idle.blksum=" 60)
[ "$(value "$out" blk.checksum.2048-4096)" = "$sum0" ] && [ "$(value "$out" idle.blksum)" = ok ] &&
    ok "it reads back what it wrote to its undo disk before the save" || not_ok "undo disk contents after restore"
hook_saw s1 restored 10 && ok "a hook saw 'restored'" || not_ok "hook saw restored"
[ "$(field s1 saved_path)" = null ] && ok "a running VM remembers no state file" || not_ok "saved_path cleared"
expect_rc 1 "restore of a running VM is refused" restore s1

# ---- save + restore NAME; save + destroy ------------------------------------------------------------
expect_ok "save s1 again (absolute path)" save s1 "$T/s1-b.save"
wait_state s1 saved 5 && ok "s1 saved again" || not_ok "s1 saved again"
cp "$T/s1-b.save" "$T/s1-old.save" # a copy of this save, older than the next one
expect_ok "vessel restore s1 (by name)" restore s1
[ "$(field s1 state)" = running ] && ok "restored by name" || not_ok "restored by name"
# ---- a moved state file: found by the VM name, uuid and save id it holds ---------------------------
expect_ok "save s1 once more" save s1 "$T/s1-m.save"
mv "$T/s1-m.save" "$T/s1-moved.save"
vs restore "$T/s1-old.save"
[ "$VS_RC" -eq 1 ] && one_line && grep -q "not VM 's1''s latest save" "$VS_ERR" && [ "$(field s1 state)" = saved ] &&
    ok "an older save of s1 at another path is refused: $(cat "$VS_ERR")" || not_ok "older save refused (rc $VS_RC: $(cat "$VS_ERR"))"
expect_ok "restore the moved latest save by its new path" restore "$T/s1-moved.save"
[ "$(field s1 state)" = running ] && [ "$(vmms s1)" -eq 1 ] && ok "s1 runs again from the moved file" ||
    not_ok "s1 running after restore of the moved file (state $(field s1 state))"
expect_rc 1 "the moved file once restored names a running VM: refused" restore "$T/s1-moved.save"
expect_ok "pause s1" pause s1
expect_ok "save a paused VM" save s1 "$T/s1-c.save"
expect_ok "destroy the saved s1 (discards the saved state)" destroy s1
[ "$(field s1 state)" = shutoff ] && [ "$(field s1 saved_path)" = null ] && [ -f "$T/s1-c.save" ] &&
    [ ! -e "$STATE/run/s1/undo-0.qcow2" ] &&
    ok "s1 shut off, the file stays, the undo overlay is gone" || not_ok "destroy of saved s1 (state $(field s1 state))"
expect_rc 1 "the discarded file no longer restores" restore "$T/s1-c.save"

# ---- a save the daemon learns of after a kill -9 ------------------------------------------------------
expect_ok "start s1 afresh" start s1
con "$CON" ticks "idle.ticks=" 60 >/dev/null
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
DPID=
# what the daemon does, with the daemon gone: note the path, ask the VMM
echo "$T/s1-d.save" >"$STATE/run/s1/save.path"
python3 - "$STATE/run/s1/api.sock" "$T/s1-d.save" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"cmd": "save", "path": sys.argv[2]}).encode() + b'\n')
s.recv(4096)
PY
# the keeper writes the exit code (5) once the VMM is gone, then ends too
keeper=$(cut -d' ' -f1 "$STATE/run/s1/keeper.pid")
for i in $(seq 100); do [ -f "$STATE/run/s1/exit" ] && ! kill -0 "$keeper" 2>/dev/null && break; sleep 0.1; done
start_daemon
[ "$(field s1 state)" = saved ] && [ "$(field s1 saved_path)" = "$T/s1-d.save" ] && [ "$(field s1 boots)" -ge 1 ] &&
    ok "a restarted daemon records the exit 5 it missed as saved, no policy" ||
    not_ok "saved while the daemon was away (state $(field s1 state), saved_path $(field s1 saved_path))"
! link_exists "$TAP" && ok "and deleted its tap" || not_ok "tap gone after the missed save"
expect_ok "restore it" restore "$T/s1-d.save"
[ "$(master_of "$TAP")" = "$BR" ] && [ "$(field s1 state)" = running ] && ok "running on $BR again" || not_ok "running after restore"
# ---- autostart of a saved VM restores it -------------------------------------------------------------
ticks3=$(value "$(con "$CON" ticks "idle.ticks=" 30)" idle.ticks)
expect_ok "save s1 once more" save s1 "$T/s1-e.save"
expect_ok "autostart s1 on" autostart s1 on
restores=$(grep -c "^s1 restored" "$T/hooks.txt" || true)
kill "$DPID"
wait "$DPID" 2>/dev/null || true
start_daemon
for i in $(seq 100); do [ "$(grep -c "^s1 restored" "$T/hooks.txt" || true)" -gt "$restores" ] && break; sleep 0.1; done
wait_state s1 running 30 && [ "$(grep -c "^s1 restored" "$T/hooks.txt" || true)" -gt "$restores" ] &&
    [ "$(master_of "$TAP")" = "$BR" ] &&
    ok "a restarted daemon autostarts the saved s1 by restoring it" || not_ok "autostart restore (state $(field s1 state))"
ticks4=$(value "$(con "$CON" ticks "idle.ticks=" 30)" idle.ticks)
[ -n "$ticks3" ] && [ -n "$ticks4" ] && [ "$ticks4" -gt "$ticks3" ] &&
    ok "the autostarted guest carries on ($ticks3 -> $ticks4 ticks)" || not_ok "ticks after autostart ('$ticks3' -> '$ticks4')"
expect_ok "destroy s1" destroy s1
! link_exists "$TAP" && ok "no tap left" || not_ok "tap left after destroy"
[ "$(sha256sum <"$T/base.raw")" = "$base_sum" ] && ok "the undo disk's base is unchanged" || not_ok "base.raw unchanged"
echo "hooks: $(grep -o "^s1 [a-z-]*" "$T/hooks.txt" | cut -d" " -f2 | tr "\n" " ")" | diag
finish
