#!/bin/bash
# tests/integration/appliance.sh — `vessel export`/`import`/`p2v`: an OVA round trip (CPUs,
# memory, disk content by `qemu-img compare`, NIC MACs), the exported VMDK accepted by qemu-img,
# hostile OVAs (wrong digest, missing file, `../`, absolute and symlink entries) refused with one
# clear line and nothing written outside the target, an XVA built here, and p2v of a file.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_vessel

# ---- a VM to export -----------------------------------------------------------------------------
quiet qemu-img create -f qcow2 "$T/disk.qcow2" 64M
quiet qemu-io -f qcow2 -c "write -P 0x5a 1M 3M" -c "write -P 0x11 60M 100k" "$T/disk.qcow2"
make_raw "$T/data.raw" $((16 * 1048576)) appliance
cat >"$T/web1.vm" <<VM
name = web1
vcpus = 3
memory = 768M
[disk]
file = $T/disk.qcow2
format = qcow2
[disk]
file = data.raw
format = raw
bus = ide
[nic]
network = lan
mac = 52:54:00:aa:bb:cc
[nic]
bridge = br0
mac = 52:54:00:aa:bb:cd
model = e1000
VM

expect_ok "export ova" export ova "$T/web1.vm" "$T/web1.ova"
first=$(tar tf "$T/web1.ova" | sed -n 1p)
if [ "$first" = web1.ovf ] && [ "$(tar tf "$T/web1.ova" | sed -n 2p)" = web1.mf ]; then
    ok "OVA: descriptor first, manifest second"
else
    not_ok "OVA: descriptor first, manifest second (got: $(tar tf "$T/web1.ova" | tr '\n' ' '))"
fi
if [ "$(dd if="$T/web1.ova" bs=1 skip=257 count=5 status=none)" = ustar ]; then
    ok "OVA is a ustar archive"
else
    not_ok "OVA is a ustar archive"
fi
mkdir -p "$T/x"
(cd "$T/x" && tar xf "$T/web1.ova")
if qemu-img info "$T/x/web1-disk1.vmdk" 2>/dev/null | grep -q 'create type: streamOptimized' ||
    qemu-img info --output=json "$T/x/web1-disk1.vmdk" | grep -q '"create-type": "streamOptimized"'; then
    ok "qemu-img info: exported disk is a streamOptimized VMDK"
else
    not_ok "qemu-img info: exported disk is a streamOptimized VMDK"
    qemu-img info "$T/x/web1-disk1.vmdk" 2>&1 | diag 10
fi
run_q "qemu-img compare: exported VMDK equals the source" qemu-img compare "$T/disk.qcow2" "$T/x/web1-disk1.vmdk"
(cd "$T/x" && sha256sum web1.ovf web1-disk1.vmdk web1-disk2.vmdk |
    awk '{print "SHA256(" $2 ")= " $1}') >"$T/x/want.mf"
if cmp -s "$T/x/want.mf" "$T/x/web1.mf"; then ok "manifest: SHA256 of every file"; else
    not_ok "manifest: SHA256 of every file"; diff "$T/x/want.mf" "$T/x/web1.mf" | diag; fi
if command -v xmllint >/dev/null; then
    run_q "descriptor is well-formed XML" xmllint --noout "$T/x/web1.ovf"
fi

# ---- round trip ---------------------------------------------------------------------------------
mkdir -p "$T/imp"
expect_ok "import ova" import ova "$T/web1.ova" --dir "$T/imp"
vm=$T/imp/web1.vm
if [ -f "$vm" ] && grep -qx 'vcpus = 3' "$vm" && grep -qx 'memory = 768M' "$vm"; then
    ok "round trip keeps CPUs and memory"
else
    not_ok "round trip keeps CPUs and memory"; diag <"$vm" 2>/dev/null || true
fi
if grep -qx 'mac = 52:54:00:aa:bb:cc' "$vm" && grep -qx 'mac = 52:54:00:aa:bb:cd' "$vm" &&
    grep -qx 'network = lan' "$vm" && grep -qx 'model = e1000' "$vm"; then
    ok "round trip keeps NIC MACs, networks and models"
else
    not_ok "round trip keeps NIC MACs, networks and models"
fi
if grep -qx 'bus = ide' "$vm"; then ok "round trip keeps the disk bus"; else not_ok "round trip keeps the disk bus"; fi
assert_same "round trip: disk 1 content (qemu-img compare)" "$T/disk.qcow2" "$T/imp/web1-disk1.qcow2"
assert_same "round trip: disk 2 content (qemu-img compare)" "$T/data.raw" "$T/imp/web1-disk2.qcow2"
expect_rc 0 "import ova --format raw" \
    import ova "$T/web1.ova" --dir "$T/imp2" --format raw
[ -f "$T/imp2/web1-disk1.img" ] && ok "--format raw writes raw disks" || not_ok "--format raw writes raw disks"
expect_error "import again refuses to overwrite" web1.vm "exist" import ova "$T/web1.ova" --dir "$T/imp"

# unpacked OVF
expect_ok "export ovf (directory)" export ovf "$T/web1.vm" "$T/ovfdir"
expect_ok "import ovf" import ovf "$T/ovfdir/web1.ovf" --dir "$T/imp3"
assert_same "import ovf: disk content" "$T/disk.qcow2" "$T/imp3/web1-disk1.qcow2"

# VirtualBox-style SHA1 manifest
(cd "$T/ovfdir" && sha1sum web1.ovf web1-disk1.vmdk web1-disk2.vmdk |
    awk '{print "SHA1 (" $2 ") = " $1}') >"$T/ovfdir/web1.mf"
expect_ok "import ovf with a SHA1 manifest (VirtualBox spelling)" import ovf "$T/ovfdir/web1.ovf" --dir "$T/imp4"

# ---- hostile appliances -------------------------------------------------------------------------
no_leftovers() { # DESC DIR — nothing but what was there, no staging dir
    if ls -A "$2" 2>/dev/null | grep -q .; then
        not_ok "$1: target directory left empty"; ls -A "$2" | diag
    else ok "$1: target directory left empty"; fi
}
# flip the digest's first hex digit to one it isn't (the disk is random: it may start with 0)
sed -e 's/^\(SHA256(web1-disk1.vmdk)= \)0/\1X/' -e 's/^\(SHA256(web1-disk1.vmdk)= \)[^X]/\10/' \
    -e 's/^\(SHA256(web1-disk1.vmdk)= \)X/\11/' "$T/x/web1.mf" >"$T/x/bad.mf"
cmp -s "$T/x/web1.mf" "$T/x/bad.mf" && not_ok "the test's bad manifest differs from the good one"
mkdir -p "$T/bad1" && cp "$T/x/web1.ovf" "$T/x/web1-disk1.vmdk" "$T/x/web1-disk2.vmdk" "$T/bad1/"
cp "$T/x/bad.mf" "$T/bad1/web1.mf"
(cd "$T/bad1" && tar --format=ustar -cf "$T/wrong-digest.ova" web1.ovf web1.mf web1-disk1.vmdk web1-disk2.vmdk)
mkdir -p "$T/out1"
expect_error "wrong digest refused" wrong-digest.ova "digest" import ova "$T/wrong-digest.ova" --dir "$T/out1"
no_leftovers "wrong digest" "$T/out1"

(cd "$T/x" && tar --format=ustar -cf "$T/missing.ova" web1.ovf web1.mf web1-disk2.vmdk)
mkdir -p "$T/out2"
expect_error "missing file (listed in manifest) refused" missing.ova "missing" import ova "$T/missing.ova" --dir "$T/out2"
no_leftovers "missing file" "$T/out2"
grep -v disk1 "$T/x/web1.mf" >"$T/bad1/web1.mf"
(cd "$T/bad1" && sed -i '/web1.ovf/d' web1.mf && tar --format=ustar -cf "$T/missing2.ova" web1.ovf web1.mf web1-disk2.vmdk)
expect_error "missing file (only in References) refused" missing2.ova "href.*missing|missing" import ova "$T/missing2.ova" --dir "$T/out2"

mkdir -p "$T/deep/out3"
python3 - "$T" <<'PY'
import io, sys, tarfile
t = sys.argv[1]
def build(name, extra):
    with tarfile.open(f"{t}/{name}", "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(f"{t}/x/web1.ovf", arcname="web1.ovf")
        extra(tar)
def evil(tar, path):
    data = b"owned\n"
    info = tarfile.TarInfo(path); info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
build("dotdot.ova", lambda tar: evil(tar, "../evil.txt"))
build("absolute.ova", lambda tar: evil(tar, f"{t}/abs-evil.txt"))
def link(tar):
    info = tarfile.TarInfo("web1-disk1.vmdk"); info.type = tarfile.SYMTYPE; info.linkname = "/etc/passwd"
    tar.addfile(info)
build("symlink.ova", link)
PY
expect_error "tar entry with ../ refused" dotdot.ova "leaves|\.\." import ova "$T/dotdot.ova" --dir "$T/deep/out3"
if [ -e "$T/deep/evil.txt" ] || [ -e "$T/evil.txt" ]; then not_ok "../ entry: nothing written outside"; else ok "../ entry: nothing written outside"; fi
no_leftovers "../ entry" "$T/deep/out3"
expect_error "absolute tar entry refused" absolute.ova "absolute" import ova "$T/absolute.ova" --dir "$T/deep/out3"
[ -e "$T/abs-evil.txt" ] && not_ok "absolute entry: nothing written" || ok "absolute entry: nothing written"
expect_error "symlink tar entry refused" symlink.ova "link" import ova "$T/symlink.ova" --dir "$T/deep/out3"
no_leftovers "symlink entry" "$T/deep/out3"

# a VMDK descriptor that points at a host file is read as plain bytes, never followed
mkdir -p "$T/evil" && cp "$T/x/web1.ovf" "$T/evil/"
printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/hostname" 0\n' >"$T/evil/web1-disk1.vmdk"
cp "$T/x/web1-disk2.vmdk" "$T/evil/"
vs import ovf "$T/evil/web1.ovf" --dir "$T/evil-out"
if [ -f "$T/evil-out/web1-disk1.qcow2" ] && qemu-img convert -O raw "$T/evil-out/web1-disk1.qcow2" "$T/evil.raw" &&
    head -c 9 "$T/evil.raw" | grep -q '# Disk De'; then
    ok "text VMDK descriptor in an appliance is copied as bytes, its extents not followed"
elif [ "$VS_RC" -ne 0 ]; then
    ok "text VMDK descriptor in an appliance refused"
else
    not_ok "text VMDK descriptor in an appliance is not followed"
fi

# ---- XVA ----------------------------------------------------------------------------------------
make_raw "$T/xva.raw" $((3 * 1048576)) xva
python3 - "$T" <<'PY'
import hashlib, io, sys, tarfile
t = sys.argv[1]
disk = open(f"{t}/xva.raw", "rb").read()
M = 1 << 20
def member(name, value):
    return f"<member><name>{name}</name><value>{value}</value></member>"
def obj(cls, ref, fields):
    return ("<value><struct>" + member("class", cls) + member("id", ref) +
            member("snapshot", "<struct>" + "".join(member(k, v) for k, v in fields) + "</struct>") +
            "</struct></value>")
arr = lambda refs: "<array><data>" + "".join(f"<value>{r}</value>" for r in refs) + "</data></array>"
objs = [
    obj("VM", "Ref:0", [("name_label", "xen guest"), ("VCPUs_max", "2"),
        ("memory_static_max", str(512 * M)), ("is_a_snapshot", "false"),
        ("VBDs", arr(["Ref:2"])), ("VIFs", arr(["Ref:4"]))]),
    obj("VBD", "Ref:2", [("VDI", "Ref:1"), ("type", "Disk"), ("userdevice", "0")]),
    obj("VDI", "Ref:1", [("virtual_size", str(len(disk))), ("name_label", "root")]),
    obj("VIF", "Ref:4", [("MAC", "00:16:3e:01:02:03"), ("network", "Ref:5"), ("device", "0")]),
    obj("network", "Ref:5", [("name_label", "Pool-wide network")]),
]
xml = ("<value><struct>" + member("version", "<struct></struct>") +
       member("objects", "<array><data>" + "".join(objs) + "</data></array>") + "</struct></value>")
def add(tar, name, data):
    info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
def build(name, corrupt=False, skip_sum=False):
    with tarfile.open(f"{t}/{name}", "w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "ova.xml", xml.encode())
        for i in range(0, len(disk) // M):
            chunk = disk[i * M:(i + 1) * M]
            if i == 1 and not any(chunk):
                continue  # all-zero chunks may be left out
            add(tar, "Ref:1/%08d" % i, chunk)
            s = hashlib.sha1(chunk).hexdigest()
            if corrupt and i == 2:
                s = "0" * 40
            if not (skip_sum and i == 0):
                add(tar, "Ref:1/%08d.checksum" % i, s.encode())
build("guest.xva")
build("badsum.xva", corrupt=True)
build("nosum.xva", skip_sum=True)
PY
expect_ok "import xva" import xva "$T/guest.xva" --dir "$T/xva-out"
xvm=$T/xva-out/xen-guest.vm
if [ -f "$xvm" ] && grep -qx 'vcpus = 2' "$xvm" && grep -qx 'memory = 512M' "$xvm" &&
    grep -qx 'mac = 00:16:3e:01:02:03' "$xvm" && grep -qx 'network = Pool-wide-network' "$xvm"; then
    ok "xva: name, vcpus, memory, VIF MAC and network"
else
    not_ok "xva: name, vcpus, memory, VIF MAC and network"; diag <"$xvm" 2>/dev/null || true
fi
assert_same "xva: disk content equal (qemu-img compare)" "$T/xva.raw" "$T/xva-out/xen-guest-disk1.qcow2"
expect_error "xva with a wrong chunk checksum refused" badsum.xva "checksum" import xva "$T/badsum.xva" --dir "$T/xva-bad"
no_leftovers "xva wrong checksum" "$T/xva-bad"
expect_error "xva with a chunk without checksum refused" nosum.xva "checksum" import xva "$T/nosum.xva" --dir "$T/xva-bad"

# ---- p2v ----------------------------------------------------------------------------------------
expect_ok "p2v of a file to qcow2" p2v "$T/data.raw" "$T/p2v.qcow2"
assert_same "p2v: content equal" "$T/data.raw" "$T/p2v.qcow2"
if [ "$(qemu-img info --output=json "$T/p2v.qcow2" | jq -r .format 2>/dev/null || echo qcow2)" = qcow2 ]; then
    ok "p2v: format from the extension"; else not_ok "p2v: format from the extension"; fi
expect_ok "p2v -O vmdk" p2v -O vmdk "$T/data.raw" "$T/p2v.out"
assert_same "p2v -O vmdk: content equal" "$T/data.raw" "$T/p2v.out"
alloc=$(stat -c %b "$T/p2v.qcow2")
[ $((alloc * 512)) -lt $((16 * 1048576)) ] && ok "p2v: target is sparse" || not_ok "p2v: target is sparse ($alloc blocks)"
mounted_dev=$(awk '$5 == "/" {print $3}' /proc/self/mountinfo | sed -n 1p)
rootdev=$(findmnt -n -o SOURCE / 2>/dev/null || true)
if [ -b "$rootdev" ] && findmnt -n -o OPTIONS / | grep -q '^rw'; then
    expect_error "p2v refuses a device mounted read-write" "$(basename "$rootdev")" "mounted read-write" \
        p2v "$rootdev" "$T/never.qcow2"
    [ -e "$T/never.qcow2" ] && not_ok "p2v refused: no target written" || ok "p2v refused: no target written"
else
    skip "root filesystem is not a read-write block device here ($rootdev, $mounted_dev)"
fi
finish
