#!/bin/bash
# tests/integration/mgmt-pools.sh — storage pools and volumes, gold images, `vessel edit` and
# `start --console` through vesseld with the probe guest: pool define/list/info, volumes (raw,
# qcow2, qcow2 over a backing volume) checked by qemu-img, resize, delete refused while a VM or an
# overlay uses a volume (the error names it) and allowed after, the disk lock naming the holder
# for a volume, a template of a VM's disk chain compared equal by qemu-img and used as the backing
# of a new VM's volume, edit through $EDITOR (a change, no change, a broken edit refused with its
# line and the definition unchanged), and start --console relaying the guest's serial output.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need curl jq qemu-img qemu-io

mkdef() { # NAME DISK-FILE [CMDLINE] [CONSOLE]
    {
        probe_def "$1" "${3:-}" "${4:-}"
        if [ -n "$2" ]; then
            echo "[disk]"
            echo "file = $2"
        fi
    } >"$T/$1.vm"
}
# refused DESC RE ARGS… — vessel ARGS fails with one line on stderr matching RE
refused() {
    local desc=$1 re=$2
    shift 2
    vs "$@"
    if [ "$VS_RC" -ne 0 ] && [ "$VS_RC" -lt 124 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] &&
        grep -qE -- "$re" "$VS_ERR"; then
        ok "$desc: $(head -c 200 "$VS_ERR")"
    else
        not_ok "$desc (exit $VS_RC, want one line matching /$re/)"
        diag 5 <"$VS_ERR"
    fi
}
# vol_field VOLUME KEY — a field of `vessel vol list images --json`
vol_field() {
    "$VESSEL" vol list images --json | jq -r --arg v "$1" ".volumes[] | select(.name==\$v) | .$2"
}
check() { # DESC COMMAND… — ok when the shell command succeeds
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

mkdir -p "$STATE"
start_daemon
P=$T/pool

# ---- pools ---------------------------------------------------------------------------------------
expect_ok "pool define images (directory created)" pool define images "$P"
check "the pool's directory exists" test -d "$P"
vs pool list --json
check "pool list --json shows images at $P, available" \
    test "$(jq -r '.pools[] | select(.name=="images") | "\(.path) \(.state)"' "$VS_OUT")" = "$P available"
vs pool info images --json
check "pool info: capacity and available from statvfs, no volumes yet" \
    jq -e '.capacity > 0 and .available > 0 and .available <= .capacity and .volumes == 0' "$VS_OUT" >/dev/null
vs pool info images
check "pool info (text) names the path" grep -q "Path: *$P" "$VS_OUT"
refused "a second pool named images" "pool 'images' is already defined" pool define images "$T/other"
refused "a second pool on the same directory" "already the directory of pool 'images'" pool define dup "$P"
refused "pool info of an unknown pool" "no pool named 'nope'" pool info nope
refused "a pool name with a slash" "holds no '/'" pool info a/b
expect_rc 0 "pool --help" pool --help

# ---- volumes ---------------------------------------------------------------------------------------
expect_ok "vol create raw" vol create images base.raw 16M -f raw
put_random "$P/base.raw" 1048576 65536 base-data
expect_ok "vol create qcow2 (the default format)" vol create images data.qcow2 32M
expect_ok "vol create qcow2 over a backing volume, size from it" vol create images over.qcow2 -b base.raw
check "qemu-img: base.raw is raw, 16 MiB" \
    test "$(qemu-img info --output=json "$P/base.raw" | jq -r '"\(.format) \(."virtual-size")"')" = "raw 16777216"
check "qemu-img: data.qcow2 is qcow2, 32 MiB" \
    test "$(qemu-img info --output=json "$P/data.qcow2" | jq -r '"\(.format) \(."virtual-size")"')" = "qcow2 33554432"
check "qemu-img: over.qcow2's backing file is base.raw" \
    test "$(qemu-img info --output=json "$P/over.qcow2" | jq -r '."backing-filename"')" = base.raw
assert_same "over.qcow2 reads its backing volume's data" "$P/over.qcow2" "$P/base.raw"
check "vol list: formats and virtual sizes" test "$(vol_field base.raw format) $(vol_field base.raw virtual_size) $(vol_field data.qcow2 format) $(vol_field data.qcow2 virtual_size)" = "raw 16777216 qcow2 33554432"
check "vol list: over.qcow2 shows its backing" test "$(vol_field over.qcow2 backing)" = base.raw
check "vol list: disk usage is reported" test "$(vol_field base.raw disk_usage)" -ge 65536
vs vol list images
check "vol list (text): a table with FORMAT and USED BY" grep -q "FORMAT.*USED BY" "$VS_OUT"
refused "vol create over an existing file" "already exists" vol create images base.raw 1M -f raw
refused "vol create with a bad name" "volume name" vol create images .hidden 1M
refused "vol create: a raw volume can't have a backing file" "raw volume can't have a backing" vol create images r.raw -f raw -b base.raw
refused "vol create without a size or backing" "SIZE missing" vol create images nosize.qcow2
refused "vol create with a bad size" "12Q" vol create images bad.qcow2 12Q
expect_ok "vol resize data.qcow2 to 64M" vol resize images data.qcow2 64M
check "qemu-img: data.qcow2 is 64 MiB now" \
    test "$(qemu-img info --output=json "$P/data.qcow2" | jq -r '."virtual-size"')" = 67108864
refused "vol resize smaller without --shrink" "--shrink" vol resize images data.qcow2 8M
expect_ok "vol create scratch.raw" vol create images scratch.raw 8M -f raw
expect_ok "vol resize --shrink of a raw volume" vol resize images scratch.raw 4M --shrink
check "scratch.raw is 4 MiB" test "$(stat -c %s "$P/scratch.raw")" = 4194304
refused "vol delete of a backing file of another volume" "base.raw' is a backing file of volume 'over.qcow2'" vol delete images base.raw
refused "vol resize of a backing file" "backing file of volume 'over.qcow2'" vol resize images base.raw 32M
expect_ok "vol delete scratch.raw" vol delete images scratch.raw
check "scratch.raw is gone" test ! -e "$P/scratch.raw"
refused "vol delete of a volume that doesn't exist" "no volume 'scratch.raw'" vol delete images scratch.raw

# ---- volumes used by VMs: delete refused (naming the VM), disk lock naming the holder ----------------
mkdef w1 "$P/data.qcow2"
mkdef w2 "$P/data.qcow2"
mkdef o1 "$P/over.qcow2"
for v in w1 w2 o1; do expect_ok "define $v" define "$T/$v.vm"; done
check "vol list: data.qcow2 is used by w1 and w2" test "$(vol_field data.qcow2 'used_by | join(",")')" = "w1,w2"
check "vol list: base.raw is used by o1 (through over.qcow2)" test "$(vol_field base.raw 'used_by | join(",")')" = o1
refused "vol delete while defined VMs use the volume names the VM" "data.qcow2' is a disk of VM 'w1'" vol delete images data.qcow2
refused "vol delete of a VM disk's backing file names the VM" "base.raw' is a backing file of a disk of VM 'o1'" vol delete images base.raw
refused "pool undefine while a VM uses a volume names it" "pool 'images' can't be undefined: .*VM '(w1|o1)'" pool undefine images
refused "vol resize of a VM disk's backing file" "base.raw' is a backing file of (a disk of VM 'o1'|volume 'over.qcow2')" vol resize images base.raw 32M
expect_ok "start w1 on data.qcow2" start w1
refused "w2 can't start on the volume w1 writes (names w1)" "in use writable by VM 'w1'" start w2
refused "vol resize while a running VM holds the volume names it" "in use writable by running VM 'w1'" vol resize images data.qcow2 128M
expect_ok "destroy w1" destroy w1
for v in w1 w2; do expect_ok "undefine $v" undefine "$v"; done
expect_ok "vol delete once no VM uses it" vol delete images data.qcow2
check "data.qcow2 is gone" test ! -e "$P/data.qcow2"

# ---- template: a gold image from a VM's disk chain ------------------------------------------------------
quiet qemu-io -f qcow2 -c "write -P 0x6b 4M 1M" -c "write -P 0 1M 4k" "$P/over.qcow2"
expect_ok "template o1 into a file" template o1 "$T/gold.qcow2"
assert_same "the gold image equals the VM's disk (qemu-img compare)" "$T/gold.qcow2" "$P/over.qcow2"
check "the gold image is standalone qcow2 (no backing file)" \
    test "$(qemu-img info --output=json "$T/gold.qcow2" | jq -r '"\(.format) \(."backing-filename" // "none")"')" = "qcow2 none"
assert_qemu_clean "gold.qcow2" "$T/gold.qcow2"
refused "template over an existing file" "already exists" template o1 "$T/gold.qcow2"
expect_ok "template o1 --pool images --name gold.qcow2 --compress" template o1 --pool images --name gold.qcow2 --compress --json
check "template --json names the volume's path" test "$(jq -r .path "$VS_OUT")" = "$P/gold.qcow2"
assert_same "the compressed gold volume equals the VM's disk" "$P/gold.qcow2" "$P/over.qcow2"
refused "template without a target" "template NAME GOLD" template o1
# the copy's progress: with progress=1 the answer streams progress lines, then the plain answer's
# status and body as its last line; `vessel template` draws them as a bar on a terminal
curl -sN --unix-socket "$SOCK" -X POST "http://v/v1/vms/o1/template?path=$T/gold3.qcow2&progress=1" >"$T/stream.txt"
check "streamed template: progress lines up to done = total, then ok, 201 and the path" \
    sh -c "grep -q '\"progress\":{\"done\":' '$T/stream.txt' &&
           grep '\"progress\"' '$T/stream.txt' | tail -1 | jq -e '.progress.done == .progress.total and .progress.total > 0' >/dev/null &&
           tail -1 '$T/stream.txt' | jq -e '.ok == true and .status == 201 and .result.path == \"$T/gold3.qcow2\"' >/dev/null"
curl -sN --unix-socket "$SOCK" -X POST "http://v/v1/vms/o1/template?path=$T/gold3.qcow2&progress=1" >"$T/stream.txt"
check "streamed template onto an existing file: the last line is the 409 and its reason" \
    sh -c "tail -1 '$T/stream.txt' | jq -e '.ok == false and .status == 409 and (.error | test(\"already exists\"))' >/dev/null"
script -qec "$VESSEL template o1 $T/gold4.qcow2" /dev/null >"$T/tty.txt" 2>&1 || true
check "vessel template on a terminal draws the progress bar and ends at 100 %" \
    sh -c "grep -q '(100.0/100%)' '$T/tty.txt' && grep -q 'template of VM o1 written to $T/gold4.qcow2' '$T/tty.txt'"
assert_same "the template made through the stream equals the VM's disk" "$T/gold3.qcow2" "$P/over.qcow2"
expect_ok "vol create new1.qcow2 over the gold image" vol create images new1.qcow2 -b gold.qcow2
assert_same "a new volume over the gold image reads the gold data" "$P/new1.qcow2" "$T/gold.qcow2"
mkdef n1 "$P/new1.qcow2"
expect_ok "define n1 on the overlay" define "$T/n1.vm"
expect_ok "start n1 (a VM on a gold-image overlay)" start n1
refused "template of a running VM" "shut it off" template n1 "$T/gold2.qcow2"
expect_ok "destroy n1" destroy n1
refused "vol delete of the gold image while n1 is on it" "gold.qcow2' is a backing file of a disk of VM 'n1'" vol delete images gold.qcow2

# ---- edit ----------------------------------------------------------------------------------------------
vs dumpdef o1
cp "$VS_OUT" "$T/o1.before"
EDITOR="sed -i 's/^memory = .*/memory = 96M/'" vs edit o1 </dev/null
check "edit with \$EDITOR changing the memory succeeds" test "$VS_RC" -eq 0
check "the new memory shows in info" test "$("$VESSEL" info o1 --json | jq -r .memory)" = 100663296
vs dumpdef o1
cp "$VS_OUT" "$T/o1.edited"
EDITOR=true vs edit o1 </dev/null
check "edit without a change says so" grep -q "no changes to VM o1" "$VS_OUT"
EDITOR="sed -i 's/^vcpus = .*/vcpus = lots/'" vs edit o1 </dev/null
if [ "$VS_RC" -eq 1 ] && grep -qE "line [0-9]+: vcpus" "$VS_ERR" && grep -q "definition of o1 unchanged" "$VS_ERR"; then
    ok "a broken edit fails non-interactively with a line-numbered error: $(head -1 "$VS_ERR")"
else
    not_ok "a broken edit fails with its line (exit $VS_RC)"
    diag 5 <"$VS_ERR"
fi
vs dumpdef o1
check "after the broken edit the definition is unchanged" cmp -s "$VS_OUT" "$T/o1.edited"
EDITOR="sed -i 's/^name = .*/name = other/'" vs edit o1 </dev/null
check "edit can't rename a VM" grep -q "can't rename VM 'o1'" "$VS_ERR"
VISUAL=false vs edit o1 </dev/null
check "a failing editor leaves the definition alone" test "$VS_RC" -eq 1
refused "edit of an unknown VM" "no VM named 'nope'" edit nope
check "no temporary file is left behind" \
    test -z "$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'vessel-edit-o1-*' 2>/dev/null)"

# ---- start --console -------------------------------------------------------------------------------------
mkdef c1 "" "probe.tests=io" pty
expect_ok "define c1 (console pty)" define "$T/c1.vm"
# started paused so the console is attached before the guest prints, resumed from the side; stdin
# stays open (an EOF on it ends the console session) until the guest powers off and the VMM closes
# the console
vs start c1 --paused --console < <(sleep 3; "$VESSEL" resume c1 >/dev/null 2>&1 || true; exec sleep 120)
kill $! 2>/dev/null || true
if [ "$VS_RC" -eq 0 ] && grep -q "PROBE ok" "$VS_OUT"; then
    ok "start --console relays the guest's serial output until it powers off"
else
    not_ok "start --console (exit $VS_RC)"
    diag 10 <"$VS_OUT"
fi

# ---- undefine the pool: files stay ------------------------------------------------------------------------
for v in o1 n1 c1; do expect_ok "undefine $v" undefine "$v"; done
expect_ok "pool undefine images once no VM uses it" pool undefine images
check "the pool's files stay" test -f "$P/base.raw" -a -f "$P/gold.qcow2"
vs pool list --json
check "pool list is empty" test "$(jq '.pools | length' "$VS_OUT")" = 0
finish
