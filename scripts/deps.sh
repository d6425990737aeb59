#!/bin/sh
# Install the Debian packages vessel needs: "build" for building and the demo, "check" adds the
# test oracles (qemu-utils), clang's libFuzzer, and tools the tests drive (gdb stops the VMM at a
# chosen point in one test).
set -eu
build_pkgs="gcc make binutils busybox-static pkg-config libc6-dev libjson-c-dev libzstd-dev zlib1g-dev libdeflate-dev liblz4-dev liblzma-dev libbz2-dev libxml2-dev libext2fs-dev libsqlite3-dev libmnl-dev libarchive-dev libssl-dev"
check_pkgs="$build_pkgs python3 libvirt-clients clang libclang-rt-14-dev qemu-utils qemu-system-x86 e2fsprogs util-linux fdisk dosfstools mtools jq sqlite3 curl dnsmasq-base nftables iproute2 busybox-static openssl tcpdump gdb"
case "${1:-build}" in
build) pkgs=$build_pkgs ;;
check) pkgs=$check_pkgs ;;
*) echo "usage: $0 build|check" >&2; exit 2 ;;
esac
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "vessel: missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
    exit 1
fi
echo "vessel: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
