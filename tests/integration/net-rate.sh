#!/bin/bash
# tests/integration/net-rate.sh — per-NIC rate limits measured: a host-side sender in the netns
# writes 1400-byte frames into one tap as fast as it can (that is what a guest's transmit looks
# like to the host), a receiver reads another tap of the same network, and the rate that arrives
# must be within ±10 % of --rate-mbit: once with the limit on the sending tap (guest → network,
# nftables limit), once on the receiving tap (network → guest, tc tbf). The sustained rate is
# measured over 3 seconds after a 1.5-second warm-up (nftables' bucket holds one second of
# rate: a guest may burst that much first). Each measurement is bounded to 5 seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/net-common.bash"


# tapflow WRITER_TAP SRC_MAC READER_TAP SECONDS — prints the Mbit/s that reached READER_TAP
tapflow() {
    ip netns exec "$NS" python3 - "$@" <<'PY'
import fcntl, os, select, struct, sys, time
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454ca, 0x0002, 0x1000
def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd
wname, mac, rname, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
w, r = tap(wname), tap(rname)
frame = b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + b"\x88\xb6" + b"\x5a" * 1386
time.sleep(0.3)  # both taps have carrier: the bridge forwards to them
pid = os.fork()
if pid == 0:
    os.close(r)
    end = time.monotonic() + secs + 2.5
    while time.monotonic() < end:
        for _ in range(64):
            try:
                os.write(w, frame)
            except OSError:
                pass
    os._exit(0)
start = first = last = None
got = 0
warmup = 1.5
end = time.monotonic() + secs + 3.0
while time.monotonic() < end:
    rd, _, _ = select.select([r], [], [], 0.2)
    if not rd:
        continue
    data = os.read(r, 65536)
    if len(data) < 14 or data[12:14] != b"\x88\xb6":
        continue
    now = time.monotonic()
    if start is None:
        start = now
    if now - start < warmup:
        continue
    if first is None:
        first = now
    elif now - first <= secs:
        got += len(data)
        last = now
os.waitpid(pid, 0)
if first is None or last is None or last <= first:
    print("0")
else:
    print("%.2f" % (got * 8 / (last - first) / 1e6))
PY
}
within10() { python3 -c 'import sys; g,w=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(g-w) <= 0.1*w else 1)' "$1" "$2"; }

nv_ok "define internal network rl" define rl --kind internal
nv_ok "start rl" start rl
nv_ok "attach tx1 with --rate-mbit 8" attach rl --tap tx1 --mac 52:56:65:00:30:01 --rate-mbit 8
nv_ok "attach rx1 without a limit" attach rl --tap rx1 --mac 52:56:65:00:30:02
mbit=$(tapflow tx1 52:56:65:00:30:01 rx1 3)
if within10 "$mbit" 8; then
    ok "guest -> network limited to 8 Mbit/s: measured $mbit Mbit/s (within ±10 %)"
else
    not_ok "guest -> network rate: measured $mbit Mbit/s, expected 8 ±10 %"
fi
nv_ok "attach tx2 without a limit" attach rl --tap tx2 --mac 52:56:65:00:30:03
nv_ok "attach rx2 with --rate-mbit 20" attach rl --tap rx2 --mac 52:56:65:00:30:04 --rate-mbit 20
mbit=$(tapflow tx2 52:56:65:00:30:03 rx2 3)
if within10 "$mbit" 20; then
    ok "network -> guest limited to 20 Mbit/s: measured $mbit Mbit/s (within ±10 %)"
else
    not_ok "network -> guest rate: measured $mbit Mbit/s, expected 20 ±10 %"
fi
unl=$(tapflow tx2 52:56:65:00:30:03 rx1 2)
if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 40 else 1)' "$unl"; then
    ok "without limits the same path carries $unl Mbit/s (the limits above are the rules, not the sender)"
else
    not_ok "unlimited path only carried $unl Mbit/s (sender too slow to test limits)"
fi
nv_ok "detach rx2" detach rl --tap rx2
if ! ip netns exec "$NS" ip link show rx2 >/dev/null 2>&1; then
    ok "detach deleted tap rx2"
else
    not_ok "detach deleted tap rx2"
fi
nv_ok "stop rl" stop rl
finish
