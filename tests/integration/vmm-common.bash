# tests/integration/vmm-common.bash — the shared setup of the vmm-*.sh scripts that run the probe
# guest under vessel-vmm by hand: VESSEL is the vessel-vmm next to $VESSEL (VESSEL_VMM overrides),
# VESSEL_IMG the vessel CLI beside it, PROBE the probe guest, lib.sh sourced (IT_TIMEOUT: set it
# before sourcing, default 90 s). The script is skipped, saying why, without /dev/kvm, and without
# the probe unless it sets VMM_NO_PROBE=1 first (it boots guests of its own too).
# Helper: api SOCK CMD… (one request per CMD — a command name or a JSON object — each answer on
# its own line); result FILE KEY comes from lib.sh.
# Sourced, not run (the runner only runs *.sh).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VESSEL=${VESSEL_VMM:-$(dirname "${VESSEL:-$ROOT/build/asan/bin/vessel}")/vessel-vmm}
case $VESSEL in /*) ;; *) VESSEL=$ROOT/$VESSEL ;; esac
VESSEL_IMG=${VESSEL_IMG:-$(dirname "$VESSEL")/vessel}
IT_TIMEOUT=${IT_TIMEOUT:-90}
source "$ROOT/tests/integration/lib.sh"
require_vessel
PROBE=${PROBE:-$ROOT/build/guest/probe.elf}

if [ ! -r /dev/kvm ]; then
    skip "no /dev/kvm here"
    finish
fi
if [ -z "${VMM_NO_PROBE:-}" ] && [ ! -f "$PROBE" ]; then
    skip "probe guest $PROBE not built (make guest)"
    finish
fi

api() {
    python3 - "$1" "${@:2}" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(30)
for cmd in sys.argv[2:]:
    s.sendall((cmd if cmd.startswith('{') else '{"cmd":"%s"}' % cmd).encode() + b'\n')
    buf = b''
    while not buf.endswith(b'\n'):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    print(buf.decode().strip())
PY
}
