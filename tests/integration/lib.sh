#!/bin/bash
# tests/integration/lib.sh — shared helpers for the integration scripts (sourced, not run).
#
# Each script drives the real `vessel` binary ($VESSEL, default the ASan build) against the
# qemu-img/qemu-io oracles and prints one TAP-like line per assertion ("ok - …" / "not ok - …").
# The one idea: every vessel run goes through vs(), which applies a timeout and turns a hang, a
# signal or any sanitizer report into a failed assertion of its own, so a test that expects an
# error can never be satisfied by a crash.
set -eEuo pipefail

IT_NAME=$(basename "$0" .sh)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VESSEL=${VESSEL:-$ROOT/build/asan/bin/vessel}
case $VESSEL in /*) ;; *) VESSEL=$ROOT/$VESSEL ;; esac
TIMEOUT=${IT_TIMEOUT:-180}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

N_OK=0
N_FAIL=0
N_SKIP=0
IT_MOUNTS=()
T=$(mktemp -d "${IT_TMP:-/var/tmp}/vessel-it-$IT_NAME.XXXXXX")

it_cleanup() {
    local m
    for m in "${IT_MOUNTS[@]+"${IT_MOUNTS[@]}"}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    jobs -p | xargs -r kill 2>/dev/null || true
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$T"
}
trap it_cleanup EXIT
# a setup command failing outside any assertion still leaves a "not ok" line saying where
trap 'echo "not ok - $IT_NAME aborted at line $LINENO: $BASH_COMMAND (exit $?)"' ERR

ok() {
    N_OK=$((N_OK + 1))
    echo "ok - $*"
}
not_ok() {
    N_FAIL=$((N_FAIL + 1))
    echo "not ok - $*"
}
skip() {
    N_SKIP=$((N_SKIP + 1))
    echo "ok - # SKIP $*"
}
# Indent a detail block under the last assertion.
diag() { sed -e 's/^/#   /' | head -n "${1:-40}"; }

finish() {
    echo "# $IT_NAME: $N_OK ok, $N_FAIL not ok, $N_SKIP skipped"
    if [ "$N_FAIL" -gt 0 ]; then exit 1; fi
    if [ "$N_OK" -eq 0 ] && [ "$N_SKIP" -gt 0 ]; then exit 77; fi
    exit 0
}

require_vessel() {
    if [ ! -x "$VESSEL" ]; then
        not_ok "vessel binary $VESSEL exists"
        finish
    fi
}

SANITIZER_RE='AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|MemorySanitizer|ThreadSanitizer'

# vs ARGS… — run `vessel ARGS…` with a timeout. Sets VS_RC, VS_OUT (stdout file), VS_ERR (stderr
# file). Returns 0 always; hangs, signals and sanitizer reports are recorded as failures here.
VS_OUT=$T/.vs.out
VS_ERR=$T/.vs.err
vs() {
    local rc=0
    timeout -k 5 "$TIMEOUT" "$VESSEL" "$@" >"$VS_OUT" 2>"$VS_ERR" || rc=$?
    VS_RC=$rc
    echo "# \$ vessel $* -> $rc"
    [ -s "$VS_ERR" ] && diag 8 <"$VS_ERR"
    if grep -qE "$SANITIZER_RE" "$VS_ERR"; then
        not_ok "sanitizer report from: vessel $*"
        diag 60 <"$VS_ERR"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        not_ok "vessel $* finished within ${TIMEOUT}s (timed out)"
    elif [ "$rc" -ge 128 ]; then
        not_ok "vessel $* was killed by signal $((rc - 128))"
    fi
    return 0
}

# run_q DESC CMD… — run an oracle command (qemu-img, cmp, …) with a timeout; ok when it exits 0.
run_q() {
    local desc=$1 rc=0
    shift
    timeout -k 5 "$TIMEOUT" "$@" >"$T/.q.out" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        ok "$desc"
    else
        not_ok "$desc (exit $rc: $*)"
        diag 20 <"$T/.q.out"
    fi
    return 0
}

# quiet CMD… — a setup step that must work; on failure the script stops (it is not a test).
quiet() {
    local rc=0
    timeout -k 5 "$TIMEOUT" "$@" >"$T/.setup.out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "# setup step failed (exit $rc): $*"
        diag 20 <"$T/.setup.out"
        not_ok "setup: $*"
        finish
    fi
}

# expect_ok DESC ARGS… — vessel ARGS must exit 0.
expect_ok() {
    local desc=$1
    shift
    vs "$@"
    if [ "$VS_RC" -eq 0 ]; then
        ok "$desc"
    else
        not_ok "$desc (vessel $* exited $VS_RC)"
        diag 10 <"$VS_ERR"
    fi
}

# expect_rc RC DESC ARGS… — vessel ARGS must exit RC.
expect_rc() {
    local want=$1 desc=$2
    shift 2
    vs "$@"
    if [ "$VS_RC" -eq "$want" ]; then
        ok "$desc"
    else
        not_ok "$desc (vessel $* exited $VS_RC, expected $want)"
        diag 10 <"$VS_ERR"
    fi
}

# expect_error DESC FILE FIELD_RE ARGS… — vessel ARGS must fail cleanly: exit 1..123, exactly one
# line on stderr, naming FILE (its basename) and matching FIELD_RE (grep -Ei).
expect_error() {
    local desc=$1 file=$2 field=$3
    shift 3
    vs "$@"
    local lines
    lines=$(grep -c '' "$VS_ERR" || true)
    if [ "$VS_RC" -eq 0 ] || [ "$VS_RC" -ge 124 ]; then
        not_ok "$desc: fails with an error (exit $VS_RC)"
        diag 5 <"$VS_ERR"
    elif [ "$lines" -ne 1 ]; then
        not_ok "$desc: exactly one line of error (got $lines)"
        diag 10 <"$VS_ERR"
    elif ! grep -qF "$(basename "$file")" "$VS_ERR"; then
        not_ok "$desc: error names the file $(basename "$file")"
        diag 3 <"$VS_ERR"
    elif ! grep -qEi "$field" "$VS_ERR"; then
        not_ok "$desc: error names the field /$field/"
        diag 3 <"$VS_ERR"
    else
        ok "$desc: $(head -c 200 "$VS_ERR")"
    fi
}

# ---- data ----------------------------------------------------------------------------------------

# prng SEED BYTES — deterministic pseudo-random bytes on stdout (AES-CTR keystream).
# Without openssl, perl (essential in Debian) makes a slower but equally deterministic stream.
prng() {
    local key
    key=$(printf '%s' "$1" | sha256sum | cut -c1-32)
    if command -v openssl >/dev/null; then
        head -c "$2" /dev/zero | openssl enc -aes-128-ctr -K "$key" -iv 0 -nosalt 2>/dev/null
    else
        perl -e 'my ($k, $n) = @ARGV; srand(hex(substr($k, 0, 8)));
                 while ($n > 0) { my $c = $n < 65536 ? $n : 65536;
                     print substr(pack("N*", map { int(rand(4294967296)) } 1 .. ($c + 3) / 4), 0, $c);
                     $n -= $c; }' "$key" "$2"
    fi
}

# put_random FILE OFFSET LEN SEED — write LEN pseudo-random bytes at OFFSET without truncating.
put_random() {
    prng "$4" "$3" | dd of="$1" bs=1M iflag=fullblock oflag=seek_bytes seek="$2" conv=notrunc \
        status=none
}
# put_zeros FILE OFFSET LEN — write explicit zero bytes (allocated, not a hole).
put_zeros() {
    head -c "$3" /dev/zero | dd of="$1" bs=1M iflag=fullblock oflag=seek_bytes seek="$2" \
        conv=notrunc status=none
}

# make_raw FILE SIZE SEED — a sparse raw file of SIZE bytes with random data at scattered,
# unaligned offsets (first byte, a run crossing 64 KiB and 2 MiB boundaries, explicit zeros,
# the last bytes), so every cluster size meets partial clusters.
make_raw() {
    local f=$1 size=$2 seed=$3 i off len
    rm -f "$f"
    truncate -s "$size" "$f"
    put_random "$f" 0 4096 "$seed-head"
    put_random "$f" $((65536 - 700)) 1400 "$seed-64k"
    put_random "$f" $((2 * 1048576 - 5000)) 300000 "$seed-2m"
    put_zeros "$f" $((3 * 1048576)) 131072
    for i in 1 2 3 4 5 6 7 8 9; do
        off=$(((size / 10) * i + i * 4099))
        len=$(((i * 37 % 7 + 1) * 9001))
        [ $((off + len)) -le "$size" ] || continue
        put_random "$f" "$off" "$len" "$seed-$i"
    done
    put_random "$f" $((size - 777)) 777 "$seed-tail"
}

# qio IMG CMD… — qemu-io on a qcow2 image, failing the script on error (setup).
qio() {
    local img=$1
    shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    quiet qemu-io -f qcow2 "${args[@]}" "$img"
}

# patch_be FILE OFFSET NBYTES VALUE — store VALUE big-endian at OFFSET (header surgery).
patch_be() {
    local f=$1 off=$2 n=$3 v=$4 hex i esc=""
    hex=$(printf "%0$((n * 2))x" "$v")
    for ((i = 0; i < n * 2; i += 2)); do esc+="\\x${hex:i:2}"; done
    printf "$esc" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
# read_be FILE OFFSET NBYTES — print the big-endian unsigned value at OFFSET.
read_be() {
    local hex
    hex=$(od -An -tx1 -v -j "$2" -N "$3" "$1" | tr -d ' \n')
    echo $((16#${hex:-0}))
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# qcheck_json IMG FIELD — a number from `qemu-img check --output=json` (0 when absent).
qcheck_field() {
    qemu-img check --output=json "$1" 2>/dev/null | jq -r ".[\"$2\"] // 0" 2>/dev/null || echo -1
}

# assert_qemu_clean DESC IMG — qemu-img check exits 0 (no corruption, no leak).
assert_qemu_clean() {
    run_q "$1: qemu-img check clean" qemu-img check "$2"
}

# assert_same DESC A B — `qemu-img compare` says equal (formats probed).
assert_same() {
    run_q "$1" qemu-img compare "$2" "$3"
}

# assert_vessel_reads DESC IMG RAW — vessel compare says IMG equals RAW, and vessel's raw export
# of IMG is byte-identical to RAW (cmp; sizes rounded to 512 as qemu does).
assert_vessel_reads() {
    local desc=$1 img=$2 raw=$3
    expect_rc 0 "$desc: vessel img compare equal" img compare "$img" "$raw"
    rm -f "$T/.export.raw"
    vs img convert -O raw "$img" "$T/.export.raw"
    if [ "$VS_RC" -ne 0 ]; then
        not_ok "$desc: vessel img convert -O raw (exit $VS_RC)"
        diag 5 <"$VS_ERR"
        return 0
    fi
    local want got
    want=$(stat -c %s "$raw")
    got=$(stat -c %s "$T/.export.raw")
    if [ "$got" -lt "$want" ]; then
        not_ok "$desc: raw export has the full size ($got < $want)"
    elif cmp -s -n "$want" "$raw" "$T/.export.raw" &&
        { [ "$got" -eq "$want" ] || cmp -s -i "$want:0" -n $((got - want)) "$T/.export.raw" /dev/zero; }; then
        ok "$desc: vessel convert -O raw + cmp equal"
    else
        not_ok "$desc: vessel convert -O raw + cmp equal"
        cmp "$raw" "$T/.export.raw" 2>&1 | diag 3 || true
    fi
    rm -f "$T/.export.raw"
}

# have_jq: info/map/check JSON comparisons need jq.
need_jq() {
    if ! command -v jq >/dev/null; then
        skip "jq not installed (apt-get install jq): JSON comparisons not run"
        finish
    fi
}

# value TEXT KEY — the VALUE of the last "PROBE result KEY=VALUE" line in TEXT (what con printed);
# result FILE KEY — the same in a console log. Empty when there is none.
value() { grep -a "^PROBE result $2=" <<<"$1" | tail -n1 | cut -d= -f2- | tr -d '\r' || true; }
result() { grep -a "^PROBE result $2=" "$1" 2>/dev/null | tail -n1 | cut -d= -f2- | tr -d '\r' || true; }

# con SOCK LINE PATTERN [SECONDS] — type LINE on a VM's serial console (a unix socket; it may not
# exist yet) and print what comes back up to the end of the line holding PATTERN. The probe reads
# input only when idle, so the line simply waits in the UART until the guest gets there.
con() {
    python3 - "$@" <<'PY'
import os, socket, sys, time
path, line, pat = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
end = time.time() + float(sys.argv[4] if len(sys.argv) > 4 else 60)
buf = b''
while time.time() < end:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit(0)
s.settimeout(0.2)
s.sendall(line + b'\n')
while time.time() < end:
    i = buf.find(pat)
    if i >= 0 and b'\n' in buf[i:]:
        break
    try:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    except socket.timeout:
        pass
sys.stdout.write(buf.decode(errors='replace'))
PY
}
