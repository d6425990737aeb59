#!/bin/bash
# tests/run-all.sh — the whole test suite, as `make check` runs it after the builds: every unit
# test binary of the sanitizer build (each test case counts), every integration script against the
# sanitizer build of `vessel` (each script counts; exit 77 = skipped, with its printed reason), and
# every libFuzzer target for a bounded time from the checked-in seed corpus (each target counts).
# Output of each goes to a log under build/test-logs/; a failure prints its log's tail. The last
# line is the summary "N passed, N failed[, N skipped]"; the exit status is non-zero on any failure.
#
# Environment: FUZZ_SECONDS (default: 60 for qcow2, 20 for the others), ONLY (substring filter on test names),
# IT_JOBS (integration scripts run in parallel, default 2), ASAN_OPTIONS/UBSAN_OPTIONS (defaults
# make any sanitizer report fatal).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ASAN_BUILD=${ASAN_BUILD:-build/asan}
FUZZ_BUILD=${FUZZ_BUILD:-build/fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-} # empty: 60 s for qcow2 (the issue's budget), 20 s for the others
IT_JOBS=${IT_JOBS:-2}
ONLY=${ONLY:-}
LOGS=${LOGS:-$ROOT/build/test-logs}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
case $ASAN_BUILD in /*) ;; *) ASAN_BUILD=$ROOT/$ASAN_BUILD ;; esac
export VESSEL=$ASAN_BUILD/bin/vessel

rm -rf "$LOGS"
mkdir -p "$LOGS"
passed=0
failed=0
skipped=0
failures=()

tail_log() { # LOG — the part of a log that explains a failure
    echo "---- $1 (sanitizer lines, then the tail) ----"
    grep -E 'ERROR: |runtime error:|SUMMARY: ' "$1" | head -20 || true
    tail -n 25 "$1"
    echo "----"
}
selected() { [ -z "$ONLY" ] || [[ $1 == *"$ONLY"* ]]; }

# ---- unit tests: each case counts -------------------------------------------------------------------
shopt -s nullglob
unit_bins=("$ASAN_BUILD"/tests/test-*)
if [ ${#unit_bins[@]} -eq 0 ]; then
    echo "FAIL unit: no test binaries in $ASAN_BUILD/tests (run make BUILD=$ASAN_BUILD SANITIZE=1 tests)"
    failed=$((failed + 1))
fi
for bin in "${unit_bins[@]}"; do
    name=$(basename "$bin")
    [[ $name == *.d ]] && continue
    selected "$name" || continue
    log=$LOGS/unit-$name.log
    rc=0
    (cd "$ROOT" && timeout -k 10 300 "$bin") >"$log" 2>&1 || rc=$?
    p=$(grep -c '^ok ' "$log" || true)
    f=$(grep -c '^FAIL ' "$log" || true)
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
    if [ -z "$summary" ] || { [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; }; then
        # crashed, hung or died with a sanitizer report before printing its summary
        f=$((f + 1))
        echo "FAIL unit $name (exit $rc, no clean summary: crash, sanitizer report or timeout)"
        tail_log "$log"
        failures+=("unit $name")
    elif [ "$f" -gt 0 ]; then
        echo "FAIL unit $name: $f of $((p + f)) cases failed"
        grep -E '^(FAIL |  FAIL )' "$log" | head -40 | sed 's/^/       /' || true
        failures+=("unit $name")
    else
        echo "ok   unit $name ($p cases)"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done

# ---- integration scripts: each script counts, run IT_JOBS at a time ----------------------------------
it_scripts=()
for s in tests/integration/*.sh; do
    [ "$(basename "$s")" = lib.sh ] && continue
    selected "$(basename "$s" .sh)" || continue
    it_scripts+=("$s")
done
declare -A it_pid=()
it_start() {
    local s=$1 name log
    name=$(basename "$s" .sh)
    log=$LOGS/integration-$name.log
    (
        start=$(date +%s)
        rc=0
        timeout -k 10 900 bash "$s" >"$log" 2>&1 || rc=$?
        echo "# exit $rc after $(($(date +%s) - start)) s" >>"$log"
        exit "$rc"
    ) &
    it_pid[$!]=$s
}
it_reap() { # wait for one finished script and account for it
    local pid rc=0 s name log
    wait -n -p pid "${!it_pid[@]}" || rc=$?
    s=${it_pid[$pid]}
    unset "it_pid[$pid]"
    name=$(basename "$s" .sh)
    log=$LOGS/integration-$name.log
    local n_ok n_bad secs
    n_ok=$(grep -c '^ok - ' "$log" || true)
    n_bad=$(grep -c '^not ok - ' "$log" || true)
    secs=$(sed -n 's/^# exit [0-9]* after \([0-9]*\) s$/\1/p' "$log" | tail -1)
    if [ "$rc" -eq 77 ]; then
        echo "skip integration $name: $(grep -m1 -o '# SKIP .*' "$log" | sed 's/^# SKIP //')"
        skipped=$((skipped + 1))
    elif [ "$rc" -eq 0 ] && [ "$n_bad" -eq 0 ]; then
        echo "ok   integration $name ($n_ok assertions, ${secs}s)"
        grep '# SKIP' "$log" | sed 's/^/       /' || true
        passed=$((passed + 1))
    else
        [ "$rc" -eq 124 ] && echo "FAIL integration $name: timed out" ||
            echo "FAIL integration $name (exit $rc, $n_bad of $((n_ok + n_bad)) assertions failed, ${secs}s)"
        if [ "$n_bad" -gt 0 ]; then
            # each failed assertion with the diagnostics printed under it
            awk '/^not ok - /{n=8} n>0 && (/^not ok - / || /^#/){print "       " $0; n--; next} {n=0}' "$log" |
                head -80 || true
        else
            tail_log "$log"
        fi
        failed=$((failed + 1))
        failures+=("integration $name")
    fi
}
if [ ${#it_scripts[@]} -gt 0 ] && [ ! -x "$VESSEL" ]; then
    echo "FAIL integration: $VESSEL is missing (run make BUILD=$ASAN_BUILD SANITIZE=1 tests)"
fi
for s in "${it_scripts[@]}"; do
    while [ ${#it_pid[@]} -ge "$IT_JOBS" ]; do it_reap; done
    it_start "$s"
done
while [ ${#it_pid[@]} -gt 0 ]; do it_reap; done

# ---- fuzz targets: each target counts -----------------------------------------------------------------
for src in tests/fuzz/fuzz-*.c; do
    name=$(basename "$src" .c)
    selected "$name" || continue
    bin=$FUZZ_BUILD/$name
    log=$LOGS/$name.log
    if [ ! -x "$bin" ]; then
        echo "FAIL $name: $bin is missing (run make fuzz)"
        failed=$((failed + 1))
        failures+=("$name")
        continue
    fi
    seeds=tests/fuzz/corpus/${name#fuzz-}
    secs=${FUZZ_SECONDS:-20}
    [ -z "$FUZZ_SECONDS" ] && [ "$name" = fuzz-qcow2 ] && secs=60
    work=$(mktemp -d "${TMPDIR:-/tmp}/vessel-$name.XXXXXX")
    mkdir -p "$work/corpus" "$work/artifacts"
    seed_dirs=()
    [ -d "$seeds" ] && seed_dirs+=("$seeds")
    rc=0
    # the fresh temp dir comes first: libFuzzer writes new inputs only there, the checked-in
    # corpus stays read-only
    TMPDIR=$work timeout -k 10 $((secs + 300)) "$bin" -max_total_time="$secs" -max_len=65536 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/" "$work/corpus" "${seed_dirs[@]}" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        echo "ok   $name (${secs}s, ${runs:-?} runs, seeds from $seeds)"
        passed=$((passed + 1))
    else
        echo "FAIL $name (exit $rc)"
        for a in "$work"/artifacts/*; do
            [ -e "$a" ] || continue
            mkdir -p "$LOGS/artifacts"
            cp "$a" "$LOGS/artifacts/"
            echo "       reproducer: $LOGS/artifacts/$(basename "$a") (run: $bin $LOGS/artifacts/$(basename "$a"))"
        done
        tail_log "$log"
        failed=$((failed + 1))
        failures+=("$name")
    fi
    rm -rf "$work"
done

if [ ${#failures[@]} -gt 0 ]; then
    echo "failed: ${failures[*]} (logs in $LOGS)"
fi
summary="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && summary+=", $skipped skipped"
echo "$summary"
[ "$failed" -eq 0 ]
