#!/bin/bash
# scripts/guest-linux.sh — build vessel's minimal Linux default guest from Debian packages, no
# downloads but apt's: the cloud kernel (`apt-get download linux-image-cloud-amd64` and the
# versioned image it depends on, unpacked with dpkg -x) and an initramfs of busybox-static plus
# the kernel's virtio modules. Its /init loads the modules, prints `uname -a` and what devices it
# found, and powers the VM off — a boot-to-init proof that needs nothing but the kernel and a VMM.
#
# The idea: everything is cached under the build tree (CACHE, default build/guest-cache), keyed by
# the kernel version, so only the first run touches apt. Prints "KERNEL INITRD" on stdout.
# Modules go in dependency order (from each module's .modinfo), so plain insmod works.
#
# usage: scripts/guest-linux.sh [--kernel-only] [CACHE]
set -euo pipefail
kernel_only=0
[ "${1:-}" = --kernel-only ] && { kernel_only=1; shift; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${1:-$ROOT/build/guest-cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
die() { echo "guest-linux: $*" >&2; exit 1; }
# one builder at a time per cache (tests run in parallel and may both get here first)
exec 9>"$CACHE/.lock"
flock -w 600 9 || die "$CACHE is locked by another build for 10 minutes"

# ---- the kernel -----------------------------------------------------------------------------------
kernel=$(ls "$CACHE"/root/boot/vmlinuz-* 2>/dev/null | head -1 || true)
if [ -z "$kernel" ]; then
    (
        cd "$CACHE"
        ls linux-image-cloud-amd64_*.deb >/dev/null 2>&1 || apt-get download linux-image-cloud-amd64
        dep=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends |
            grep -o 'linux-image-[^ ,]*-cloud-amd64' | head -1)
        [ -n "$dep" ] || { echo "no versioned linux-image in linux-image-cloud-amd64's Depends"; exit 1; }
        ls "${dep}"_*.deb >/dev/null 2>&1 || apt-get download "$dep"
        dpkg -x "${dep}"_*.deb root
    ) >"$CACHE/fetch.log" 2>&1 || die "could not fetch the Debian cloud kernel with apt-get download (see $CACHE/fetch.log)"
    kernel=$(ls "$CACHE"/root/boot/vmlinuz-* 2>/dev/null | head -1 || true)
    [ -n "$kernel" ] || die "linux-image package unpacked but holds no boot/vmlinuz-* (see $CACHE/fetch.log)"
fi
if [ "$kernel_only" = 1 ]; then
    echo "$kernel"
    exit 0
fi
kver=${kernel##*/vmlinuz-}
moddir=$CACHE/root/lib/modules/$kver
[ -f "$moddir/modules.order" ] || die "$moddir/modules.order missing: the kernel package is incomplete"

# ---- the initramfs --------------------------------------------------------------------------------
initrd=$CACHE/default-guest-$kver.cpio.gz
if [ ! -s "$initrd" ] || [ "$initrd" -ot "$0" ]; then
    busybox=$(command -v busybox || true)
    [ -n "$busybox" ] || die "busybox missing (Debian package busybox-static)"
    if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is not static (install busybox-static)"; fi
    stage=$(mktemp -d "$CACHE/initramfs.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules,etc}
    cp "$busybox" "$stage/bin/busybox"
    # the virtio drivers and everything they depend on, dependencies first: a package has no
    # modules.dep (depmod writes it at install), so read each module's .modinfo "depends=" and
    # find files through modules.order (names compare with - and _ alike, as the kernel does)
    wanted="virtio_pci virtio_blk virtio_net virtio_console virtio_balloon virtio_rng"
    declare -A seen=()
    order=()
    modpath() { # NAME -> path relative to moddir
        local n=${1//-/_}
        awk -v n="$n" '{ f = $0; sub(/.*\//, "", f); sub(/\.ko.*$/, "", f); gsub(/-/, "_", f)
                         if (f == n) { print $0; exit } }' "$moddir/modules.order"
    }
    add() { # NAME — its dependencies, then itself
        local n=${1//-/_} p deps d
        [ -n "${seen[$n]:-}" ] && return 0
        seen[$n]=1
        p=$(modpath "$n")
        [ -n "$p" ] || die "module $n not in $moddir/modules.order"
        p=$(ls "$moddir/$p"* 2>/dev/null | head -1)
        [ -n "$p" ] || die "module $n listed but not shipped in $moddir"
        deps=$(modinfo_depends "$p")
        for d in ${deps//,/ }; do add "$d"; done
        order+=("${p#$moddir/}")
    }
    modinfo_depends() { # FILE — the module's depends= list
        local f=$1 tmp=$stage/.mod.ko
        case $f in
        *.xz) xz -dc "$f" >"$tmp" ;;
        *.zst) zstd -qdc "$f" >"$tmp" ;;
        *) cp "$f" "$tmp" ;;
        esac
        objcopy -O binary --only-section=.modinfo "$tmp" "$tmp.info"
        tr '\0' '\n' <"$tmp.info" | sed -n 's/^depends=//p'
        rm -f "$tmp" "$tmp.info"
    }
    for w in $wanted; do add "$w"; done
    : >"$stage/etc/modules"
    for m in "${order[@]}"; do
        case $m in
        *.ko) cp "$moddir/$m" "$stage/lib/modules/" ;;
        *.ko.xz) xz -dc "$moddir/$m" >"$stage/lib/modules/$(basename "${m%.xz}")" ;;
        *.ko.zst) zstd -qdc "$moddir/$m" >"$stage/lib/modules/$(basename "${m%.zst}")" ;;
        *) die "module $m: unknown compression" ;;
        esac
        m=$(basename "$m")
        echo "${m%.ko*}.ko" >>"$stage/etc/modules"
    done
    cat >"$stage/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/modules); do
    insmod "/lib/modules/$m" 2>/dev/null || echo "vessel-guest: insmod $m failed"
done
echo "vessel-guest: uname: $(uname -a)"
echo "vessel-guest: cpus: $(grep -c ^processor /proc/cpuinfo) memory: $(awk '/MemTotal/ { print $2 " kB" }' /proc/meminfo)"
echo "vessel-guest: block: $(ls /sys/block | tr '\n' ' ')"
echo "vessel-guest: net: $(ls /sys/class/net | tr '\n' ' ')"
echo "vessel-guest: powering off"
poweroff -f
EOF
    chmod 755 "$stage/init"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
        gzip -9n >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
fi
echo "$kernel $initrd"
