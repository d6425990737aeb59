#!/bin/bash
# tests/integration/mgmt-cpu.sh — cpu_weight and cpu_cap (Xen's credit scheduler) are applied: the
# VMM runs in a CPU cgroup of its own (vessel/UUID under the host's v2 or v1 cpu controller) with
# the weight scaled to the controller's units and the cap as a CFS quota per 100 ms. A probe VM
# that keeps its vCPU busy with cpu_cap = 25 uses at most about a quarter of a CPU, an uncapped one
# more; the group goes with the VM. cpu_affinity pins every thread of the VMM to the CPUs listed;
# a CPU the host doesn't have refuses the start with one line. A disk's iops/bps reach its VMM.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mgmt-common.bash"
need_kvm_probe
need jq

if [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    CG=/sys/fs/cgroup/vessel V=2
elif [ -e /sys/fs/cgroup/cpu/cpu.shares ]; then
    CG=/sys/fs/cgroup/cpu/vessel V=1
else
    skip "no cgroup cpu controller mounted here"
    finish
fi
[ "$(id -u)" -eq 0 ] || { skip "cgroups need root"; finish; }

mkdir -p "$STATE"
start_daemon
BUSY="probe.mode=idle probe.tests=io probe.iters=4000000000" # a busy vCPU for hours
{
    probe_def capped "$BUSY" "" "cpu_weight = 512
cpu_cap = 25"
} >"$T/capped.vm"
probe_def free "$BUSY" "" "" >"$T/free.vm"
expect_ok "define capped (cpu_weight 512, cpu_cap 25)" define "$T/capped.vm"
expect_ok "define free (defaults)" define "$T/free.vm"
expect_ok "start capped" start capped
expect_ok "start free" start free
U1=$(field capped uuid) P1=$(field capped pid) U2=$(field free uuid) P2=$(field free pid)
if [ "$V" = 2 ]; then
    weight=$(cat "$CG/$U1/cpu.weight" 2>/dev/null || true) quota=$(cat "$CG/$U1/cpu.max" 2>/dev/null || true)
    want_w=200 want_q="25000 100000" free_w=$(cat "$CG/$U2/cpu.weight" 2>/dev/null || true) dflt_w=100
else
    weight=$(cat "$CG/$U1/cpu.shares" 2>/dev/null || true) quota=$(cat "$CG/$U1/cpu.cfs_quota_us" 2>/dev/null || true)
    want_w=2048 want_q=25000 free_w=$(cat "$CG/$U2/cpu.shares" 2>/dev/null || true) dflt_w=1024
fi
[ "$weight" = "$want_w" ] && [ "$quota" = "$want_q" ] &&
    ok "cgroup v$V $CG/$U1: weight $weight, quota '$quota'" ||
    not_ok "cgroup v$V weight/quota of capped ('$weight' '$quota', want '$want_w' '$want_q')"
[ "$free_w" = "$dflt_w" ] && ok "the default weight 256 is the controller's default ($free_w)" ||
    not_ok "free's weight '$free_w' (want $dflt_w)"
grep -qx "$P1" "$CG/$U1/cgroup.procs" && ok "capped's vessel-vmm (pid $P1) runs in its group" ||
    not_ok "pid $P1 in $CG/$U1/cgroup.procs"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks
HZ=$(getconf CLK_TCK)
sleep 1 # past the probe's start
a1=$(cpu_ticks "$P1") a2=$(cpu_ticks "$P2")
sleep 3
b1=$(cpu_ticks "$P1") b2=$(cpu_ticks "$P2")
use1=$(awk -v d=$((b1 - a1)) -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz / 3 }')
use2=$(awk -v d=$((b2 - a2)) -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz / 3 }')
awk -v u="$use1" 'BEGIN { exit !(u <= 0.35) }' &&
    ok "cpu_cap 25: the busy VM used $use1 of a CPU over 3 s" ||
    not_ok "cpu_cap 25 holds (used $use1 of a CPU)"
awk -v a="$use1" -v b="$use2" 'BEGIN { exit !(b > a) }' &&
    ok "the uncapped busy VM used more: $use2 of a CPU" ||
    not_ok "uncapped VM used more than the capped one ($use2 vs $use1)"

expect_ok "destroy capped" destroy capped
expect_ok "destroy free" destroy free

LAST=$(($(nproc) - 1))
probe_def pinned "probe.mode=idle" "" "cpu_affinity = $LAST" >"$T/pinned.vm"
expect_ok "define pinned (cpu_affinity = $LAST)" define "$T/pinned.vm"
expect_ok "start pinned" start pinned
PP=$(field pinned pid)
lists=$(cat /proc/"$PP"/task/*/status 2>/dev/null | awk '/^Cpus_allowed_list/ {print $2}' | sort -u | tr '\n' ' ')
threads=$(ls /proc/"$PP"/task 2>/dev/null | wc -l)
[ "$lists" = "$LAST " ] && [ "$threads" -ge 2 ] && ok "all $threads threads of pinned's vessel-vmm run on CPU $LAST only" ||
    not_ok "pinned's threads' CPUs: '$lists' (want '$LAST')"
expect_ok "destroy pinned" destroy pinned
# a disk's iops/bps reach its VMM (vmm-devices measures them holding)
truncate -s 16M "$T/lim.raw"
{
    probe_def limited "probe.mode=idle"
    printf '[disk]\nfile = %s\nformat = raw\niops = 300\nbps = 4M\n' "$T/lim.raw"
} >"$T/limited.vm"
expect_ok "define limited ([disk] iops = 300, bps = 4M)" define "$T/limited.vm"
expect_ok "start limited" start limited
tr '\0' ' ' <"/proc/$(field limited pid)/cmdline" | grep -q "lim.raw,format=raw,iops=300,bps=4194304" &&
    ok "its vessel-vmm got --disk …,iops=300,bps=4194304" ||
    not_ok "iops/bps on vessel-vmm's command line: $(tr '\0' ' ' <"/proc/$(field limited pid)/cmdline")"
expect_ok "destroy limited" destroy limited
probe_def faraway "probe.mode=idle" "" "cpu_affinity = 1000" >"$T/faraway.vm"
expect_ok "define faraway (cpu_affinity = 1000)" define "$T/faraway.vm"
vs start faraway
[ "$VS_RC" -eq 1 ] && [ "$(grep -c '' "$VS_ERR")" -eq 1 ] && grep -q "CPU 1000 is not one this host" "$VS_ERR" &&
    [ "$(field faraway state)" = shutoff ] && ok "a CPU the host lacks: start refused, one line: $(cat "$VS_ERR")" ||
    not_ok "start with cpu_affinity 1000 refused (rc $VS_RC: $(cat "$VS_ERR"))"
for i in $(seq 50); do [ ! -d "$CG/$U1" ] && [ ! -d "$CG/$U2" ] && break; sleep 0.1; done
[ ! -d "$CG/$U1" ] && [ ! -d "$CG/$U2" ] && ok "the groups went with the VMs" ||
    not_ok "cgroups removed ($CG/$U1 $CG/$U2)"
finish
