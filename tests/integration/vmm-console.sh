#!/bin/bash
# tests/integration/vmm-console.sh — virtio-console (--vconsole): the line the probe guest writes
# on the virtio console lands in the file and unix-socket backends, a line sent through the unix
# socket reaches the guest intact, and bad --vconsole values fail with exit 1 and one line.
set -euo pipefail
IT_TIMEOUT=${IT_TIMEOUT:-60}
source "$(dirname "${BASH_SOURCE[0]}")/vmm-common.bash"
LINE="PROBE-VCON hello from the probe guest"
trap it_cleanup EXIT

# ---- file backend: output only ----------------------------------------------------------------
vs --kernel "$PROBE" --vconsole "file:$T/vcon.out" --cmdline "probe.tests=vcon probe.vcon.read=0"
if [ "$VS_RC" -eq 0 ] && grep -q '^PROBE ok' "$VS_OUT" && [ "$(result "$VS_OUT" vcon.tx)" = ok ]; then
    ok "file: the probe wrote its line on the virtio console (exit 0)"
else
    not_ok "file: probe run (exit $VS_RC)"
    grep -a 'PROBE fail\|vcon' "$VS_OUT" | diag 5
fi
if [ "$(cat "$T/vcon.out" 2>/dev/null)" = "$LINE" ]; then
    ok "file: the guest's line is in the backend file"
else
    not_ok "file: backend file holds '$(head -c 200 "$T/vcon.out" 2>/dev/null)'"
fi
if [ "$(result "$VS_OUT" vcon.size)" = 80x25 ]; then
    ok "the guest reads the console size from config space (80x25)"
else
    not_ok "console size: '$(result "$VS_OUT" vcon.size)'"
fi

# ---- unix backend: output waits for the client, input reaches the guest -----------------------
timeout -k 5 "$IT_TIMEOUT" "$VESSEL" --kernel "$PROBE" --console "file:$T/u.log" \
    --vconsole "unix:$T/vcon.sock" --cmdline "probe.tests=vcon probe.vcon.timeout_ms=20000" \
    2>"$T/u.err" &
pid=$!
got=$(timeout 30 python3 - "$T/vcon.sock" <<'PY' || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
for _ in range(200):
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.05)
s.settimeout(20)
buf = b''
while b'\n' not in buf:
    d = s.recv(4096)
    if not d:
        break
    buf += d
print(buf.decode(errors='replace').strip())
s.sendall(b'host says hi 42\n')
time.sleep(1)
PY
)
rc=0
wait "$pid" || rc=$?
if [ "$got" = "$LINE" ]; then
    ok "unix: the guest's line reached the socket client (written before it connected)"
else
    not_ok "unix: client read '$got'"
fi
rx=$(result "$T/u.log" vcon.rx)
if [ "$rc" -eq 0 ] && [ "$rx" = "host says hi 42" ] && grep -q '^PROBE ok' "$T/u.log"; then
    ok "unix: the line sent through the socket reached the guest (vcon.rx=$rx)"
else
    not_ok "unix: input to the guest (exit $rc, vcon.rx='$rx')"
    grep -a 'PROBE fail' "$T/u.log" | diag 3
    diag 5 <"$T/u.err"
fi
if grep -qE "$SANITIZER_RE" "$T/u.err"; then
    not_ok "sanitizer report from the unix-socket run"
    diag 40 <"$T/u.err"
fi

# ---- without --vconsole the guest sees no console device; bad values are refused ---------------
vs --kernel "$PROBE" --cmdline "probe.tests=vcon"
if grep -q "no virtio-console device" "$VS_OUT" && ! grep -q '^PROBE ok' "$VS_OUT"; then
    ok "without --vconsole the guest sees no virtio-console"
else
    not_ok "without --vconsole (exit $VS_RC)"
fi
vs --kernel "$PROBE" --vconsole stdio
if [ "$VS_RC" -eq 1 ] && [ "$(wc -l <"$VS_ERR")" -eq 1 ] && grep -q -- "--vconsole stdio" "$VS_ERR"; then
    ok "--vconsole stdio next to a stdio serial console is refused with one line"
else
    not_ok "--vconsole stdio with the serial on stdio (exit $VS_RC)"
fi
vs --kernel "$PROBE" --console none --vconsole bogus
if [ "$VS_RC" -eq 1 ] && [ "$(wc -l <"$VS_ERR")" -eq 1 ]; then
    ok "--vconsole bogus is refused with one line"
else
    not_ok "--vconsole bogus (exit $VS_RC)"
fi
finish
