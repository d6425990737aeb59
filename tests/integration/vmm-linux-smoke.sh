#!/bin/bash
# tests/integration/vmm-linux-smoke.sh — the Debian cloud kernel boots far enough to print
# "Linux version", echo our command line, list our E820 map and find our initrd ("RAMDISK:")
# within 60 s, through PVH (hvm_start_info) and through the zero page (the payload decompressed on
# the host, startup_64 entered as Linux's decompressor would: --boot-path vmlinux). The kernel comes from scripts/guest-linux.sh (`apt-get
# download` into build/guest-cache/, never committed). A full boot to init runs only on hardware KVM.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VESSEL=${VESSEL_VMM:-$(dirname "${VESSEL:-$ROOT/build/asan/bin/vessel}")/vessel-vmm}
IT_TIMEOUT=${IT_TIMEOUT:-90}
source "$ROOT/tests/integration/lib.sh"
require_vessel
if [ ! -r /dev/kvm ]; then
    skip "no /dev/kvm here"
    finish
fi

if ! KERNEL=$(timeout 300 "$ROOT/scripts/guest-linux.sh" --kernel-only 2>"$T/fetch.err"); then
    skip "could not fetch linux-image-cloud-amd64: $(head -1 "$T/fetch.err")"
    finish
fi
echo "# kernel: $KERNEL"

# An initrd (any cpio) proves the initrd handoff doesn't break the early boot.
python3 - "$T/initrd.gz" <<'PY'
import gzip, sys
def entry(name, data, mode):
    name = name.encode() + b"\0"
    hdr = b"070701" + b"".join(b"%08X" % v for v in
        (1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0))
    out = hdr + name
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)
arc = entry("hello", b"hello\n", 0o100644) + entry("TRAILER!!!", b"", 0)
open(sys.argv[1], "wb").write(gzip.compress(arc))
PY

MARK="vessel.smoke=$$"
CMDLINE="earlyprintk=serial,ttyS0 console=ttyS0 panic=-1 $MARK"
boot_until_version() { # LABEL EXTRA-ARGS… — boot, stop once our command line is echoed
    local label=$1
    shift
    local log=$T/$label.log start end
    start=$(date +%s.%N)
    timeout -k 5 60 "$VESSEL" --kernel "$KERNEL" --initrd "$T/initrd.gz" --memory 512M \
        --cmdline "$CMDLINE" --console "file:$log" "$@" 2>"$T/$label.err" &
    local pid=$! waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if grep -q "RAMDISK:" "$log" 2>/dev/null; then break; fi
        sleep 0.5
    done
    end=$(date +%s.%N)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || waited=$?
    if grep -q "Linux version" "$log" && grep -q "Command line:.*$MARK" "$log" &&
        grep -q "BIOS-e820: .* usable" "$log" && grep -q "RAMDISK: \[mem" "$log"; then
        ok "$label: \"Linux version\", our command line, E820 map and initrd after $(awk "BEGIN{printf \"%.1f\", $end - $start}") s"
    else
        not_ok "$label: \"Linux version\", command line, E820 and RAMDISK within 60 s (exit $waited)"
        tail -5 "$log" 2>/dev/null | diag
        diag <"$T/$label.err"
    fi
    if grep -qE "$SANITIZER_RE" "$T/$label.err"; then
        not_ok "$label: sanitizer report"
        diag 40 <"$T/$label.err"
    fi
}

boot_until_version "bzImage (PVH fast path)"
boot_until_version "bzImage (vmlinux entry, zero page)" --boot-path vmlinux
if [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; then
    boot_until_version "bzImage (boot protocol)" --no-pvh
else
    skip "bzImage through the 64-bit boot protocol: the guest's own decompressor needs ~100 s on this emulating KVM (kvm_pvm); run where hardware KVM exists"
fi
finish
