#!/bin/bash
# tests/integration/mgmt-remote.sh — vesseld's remote and event side, with the probe guest: the
# TCP listener (TLS with a self-signed certificate made here, bearer token; 127.0.0.1 only), the
# refusal of a TCP listener without TLS, the event stream (`GET /v1/events`, `vessel events`), and
# event hooks (DIR/hooks/*: run with VM name and event, logged, killed after --hook-timeout).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need curl jq openssl

# a free TCP port on 127.0.0.1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1 || { not_ok "openssl req makes a certificate"; finish; }
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$TOKEN" >"$T/token"
chmod 600 "$T/token" "$T/key.pem"
mkdir -p "$STATE/hooks"

# ---- a TCP listener without TLS is refused -----------------------------------------------------------
rc=0
timeout 20 "$VESSELD" --state "$T/st0" --listen "tcp:127.0.0.1:$PORT" >"$T/noTLS.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ] && [ "$(wc -l <"$T/noTLS.log")" -eq 1 ] && grep -q "tls-cert" "$T/noTLS.log"; then
    ok "vesseld refuses --listen tcp without TLS, in one line ($(cat "$T/noTLS.log"))"
else
    not_ok "vesseld refuses a plaintext TCP listener (exit $rc)"
    diag <"$T/noTLS.log"
fi
chmod 644 "$T/token"
rc=0
timeout 20 "$VESSELD" --state "$T/st0" --listen "tcp:127.0.0.1:$PORT" --tls-cert "$T/cert.pem" \
    --tls-key "$T/key.pem" --token-file "$T/token" >"$T/perm.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q "readable by others" "$T/perm.log" && ok "a world-readable token file is refused" ||
    { not_ok "a world-readable token file is refused (exit $rc)"; diag <"$T/perm.log"; }
chmod 600 "$T/token"

# hooks: one that records its arguments, one that hangs (killed after --hook-timeout)
cat >"$STATE/hooks/10-record" <<EOF
#!/bin/sh
echo "\$1 \$2" >>"$T/hook.out"
echo "hook saw \$1 \$2"
EOF
cat >"$STATE/hooks/20-hang" <<EOF
#!/bin/sh
[ "\$2" = started ] && exec sleep 60
exit 0
EOF
echo "not a hook" >"$STATE/hooks/README"
chmod +x "$STATE/hooks/10-record" "$STATE/hooks/20-hang"

start_daemon --listen "tcp:127.0.0.1:$PORT" --tls-cert "$T/cert.pem" \
    --tls-key "$T/key.pem" --token-file "$T/token" --hook-timeout 4
URL=https://127.0.0.1:$PORT
# ---- TLS + token ---------------------------------------------------------------------------------------
code=$(curl -s -o "$T/r.json" -w '%{http_code}' --max-time 10 --cacert "$T/cert.pem" "$URL/v1/vms" || true)
[ "$code" = 401 ] && ok "TCP API without a token: 401" || { not_ok "TCP API without a token: 401 (got $code)"; diag <"$T/r.json"; }
code=$(curl -s -o "$T/r.json" -w '%{http_code}' --max-time 10 --cacert "$T/cert.pem" \
    -H "Authorization: Bearer ${TOKEN}x" "$URL/v1/vms" || true)
[ "$code" = 401 ] && ok "TCP API with a wrong token: 401" || not_ok "TCP API with a wrong token: 401 (got $code)"
code=$(curl -s -o "$T/r.json" -w '%{http_code}' --max-time 10 --cacert "$T/cert.pem" \
    -H "Authorization: Bearer ${TOKEN:0:10}" "$URL/v1/vms" || true)
[ "$code" = 401 ] && ok "TCP API with a token prefix: 401" || not_ok "TCP API with a token prefix: 401 (got $code)"
code=$(curl -s -o "$T/r.json" -w '%{http_code}' --max-time 10 --cacert "$T/cert.pem" \
    -H "Authorization: Bearer $TOKEN" "$URL/v1/vms" || true)
if [ "$code" = 200 ] && jq -e '.vms | type == "array"' "$T/r.json" >/dev/null; then
    ok "TCP API with the token: 200 and a VM list"
else
    not_ok "TCP API with the token: 200 (got $code)"
    diag <"$T/r.json"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --http1.1 "http://127.0.0.1:$PORT/v1/vms" || true)
[ "$code" != 200 ] && ok "plaintext HTTP on the TCP port gets no answer (curl: $code)" || not_ok "plaintext HTTP is refused on the TCP port"
# the CLI over TLS
probe_def r1 >"$T/r1.vm"
expect_ok "define r1 over the unix socket" define "$T/r1.vm"
VESSEL_TOKEN= expect_rc 1 "the CLI over tls without a token fails" list --all --connect "tls:127.0.0.1:$PORT" --cacert "$T/cert.pem"
expect_rc 1 "the CLI without the CA refuses the self-signed certificate" list --all --connect "tls:127.0.0.1:$PORT" --token-file "$T/token"
grep -q "not trusted" "$VS_ERR" && ok "... and says the certificate is not trusted" || not_ok "untrusted certificate message"
vs list --all --json --connect "tls:127.0.0.1:$PORT" --token-file "$T/token" --cacert "$T/cert.pem"
[ "$VS_RC" = 0 ] && jq -e '.[] | select(.name=="r1")' "$VS_OUT" >/dev/null &&
    ok "vessel list --connect tls: --token-file --cacert lists r1" || { not_ok "vessel list over tls lists r1"; diag <"$VS_OUT"; }
VESSEL_TOKEN=$TOKEN VESSEL_CACERT=$T/cert.pem vs info r1 --connect "tls:127.0.0.1:$PORT"
[ "$VS_RC" = 0 ] && ok "VESSEL_TOKEN and VESSEL_CACERT work for the CLI" || not_ok "VESSEL_TOKEN/VESSEL_CACERT"

# ---- event stream --------------------------------------------------------------------------------------
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ] || [ ! -r "$PROBE" ]; then
    skip "no usable /dev/kvm or probe guest: events and hooks with a VM"
    finish
fi
timeout 60 curl -sN --unix-socket "$SOCK" http://v/v1/events >"$T/stream.curl" 2>/dev/null &
CURL=$!
timeout 60 "$VESSEL" events --json --connect "tls:127.0.0.1:$PORT" --token-file "$T/token" --cacert "$T/cert.pem" >"$T/stream.cli" 2>"$T/stream.err" &
CLI=$!
sleep 1
t0=$(date +%s%N)
expect_ok "start r1" start r1
t1=$(date +%s%N)
[ $(((t1 - t0) / 1000000)) -lt 3500 ] && ok "start returns while a hook hangs ($(((t1 - t0) / 1000000)) ms)" || not_ok "start not blocked by a hanging hook ($(((t1 - t0) / 1000000)) ms)"
expect_ok "list answers while a hook hangs" list
expect_ok "destroy r1" destroy r1
for i in $(seq 100); do
    grep -q '"stopped"' "$T/stream.curl" 2>/dev/null && grep -q '"stopped"' "$T/stream.cli" 2>/dev/null && break
    sleep 0.1
done
if jq -r 'select(.vm=="r1") | .event' "$T/stream.curl" | tr '\n' ' ' | grep -q "started stopped"; then
    ok "GET /v1/events streams r1 started, stopped ($(jq -r '.event' "$T/stream.curl" | tr '\n' ' '))"
else
    not_ok "GET /v1/events streams started and stopped"
    diag <"$T/stream.curl"
fi
if jq -r 'select(.vm=="r1") | .event' "$T/stream.cli" | tr '\n' ' ' | grep -q "started stopped"; then
    ok "vessel events --json over TLS follows the stream"
else
    not_ok "vessel events --json follows the stream"
    diag <"$T/stream.cli"
    diag <"$T/stream.err"
fi
kill "$CURL" "$CLI" 2>/dev/null || true
wait "$CURL" "$CLI" 2>/dev/null || true
grep -qE "$SANITIZER_RE" "$T/stream.err" && not_ok "vessel events sanitizer report" || true
# since=0 replays history, plain text output
timeout 5 "$VESSEL" events --since 0 >"$T/hist.txt" 2>&1 || true
grep -q "r1 .*defined" "$T/hist.txt" && grep -q "r1 .*stopped" "$T/hist.txt" &&
    ok "vessel events --since 0 replays the history as text" || { not_ok "events --since 0 replays the history"; diag <"$T/hist.txt"; }
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket "$SOCK" "http://v/v1/events?since=x" || true)
[ "$code" = 400 ] && ok "events?since=x: 400" || not_ok "events?since=x: 400 (got $code)"

# ---- hooks ---------------------------------------------------------------------------------------------
for i in $(seq 200); do
    grep -q "r1 stopped" "$T/hook.out" 2>/dev/null && break
    sleep 0.1
done
if grep -q "^r1 started$" "$T/hook.out" 2>/dev/null && grep -q "^r1 stopped$" "$T/hook.out"; then
    ok "the hook ran with VM name and event (started, stopped)"
else
    not_ok "the hook ran for started and stopped"
    diag <"$T/hook.out" 2>/dev/null || true
fi
LOG=$STATE/log/hooks.log
grep -q "hook saw r1 started" "$LOG" && ok "hook output is in log/hooks.log" || { not_ok "hook output in log/hooks.log"; diag <"$LOG"; }
grep -q "20-hang (r1 started): killed after 4 s" "$LOG" && ok "a hanging hook is killed after --hook-timeout" || { not_ok "hanging hook killed"; diag <"$LOG"; }
grep -q "README" "$LOG" && not_ok "a non-executable file in hooks/ was run" || ok "non-executable files in hooks/ are not run"
# the daemon stops cleanly (hooks thread joined, no leak reports)
kill "$DPID"
for i in $(seq 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$DPID" 2>/dev/null && not_ok "vesseld stops on SIGTERM" || ok "vesseld stops on SIGTERM"
DPID=
finish
