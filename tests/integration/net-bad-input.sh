#!/bin/bash
# tests/integration/net-bad-input.sh — what `vessel net` refuses, each with one clear line: a
# missing host bridge (at define and when it vanished before start), MAC collisions (with another
# tap, with a host interface), bad MACs, tap names in use, overlapping DHCP ranges and subnets,
# VNI already in use, malformed definitions (file:line: key), names that would break the generated
# configs, lease events that do not fit the network; and what it accepts: bridged
# networks on a host bridge (left alone by stop), definitions from a file and from libvirt XML.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/net-common.bash"


# expect_fail DESC PATTERN ARGS… — `vessel net ARGS` fails with exit 1 and one line matching PATTERN
expect_fail() {
    local desc=$1 pattern=$2
    shift 2
    nv "$@"
    if [ "$VS_RC" -eq 1 ] && has -E "$pattern" "$VS_ERR" && [ "$(wc -l <"$VS_ERR")" -eq 1 ]; then
        ok "$desc: $(cat "$VS_ERR")"
    else
        not_ok "$desc (exit $VS_RC, wanted one line matching '$pattern')"
        diag 5 <"$VS_ERR"
    fi
}

expect_fail "bridged network on a missing host bridge" "host bridge br-nope does not exist" \
    define up --kind bridged --bridge br-nope
ip -n "$NS" link add name hostbr0 type bridge
nv_ok "bridged network on an existing host bridge" define up --kind bridged --bridge hostbr0
nv_ok "start it" start up
nv_ok "attach a tap to the host bridge" attach up --tap u1 --mac 52:56:65:00:50:01
if ip netns exec "$NS" ip link show u1 | has "master hostbr0"; then
    ok "tap u1 is a port of host bridge hostbr0"
else
    not_ok "tap u1 on hostbr0"
fi
expect_fail "MAC collision with another tap" "MAC 52:56:65:00:50:01 is already used by tap u1 on network up" \
    attach up --tap u2 --mac 52:56:65:00:50:01
ip -n "$NS" link add name hb7 address 52:56:65:00:50:07 type bridge
expect_fail "MAC collision with a host interface" "MAC 52:56:65:00:50:07 is already used by interface hb7" \
    attach up --tap u3 --mac 52:56:65:00:50:07
expect_fail "multicast MAC" "multicast" attach up --tap u4 --mac 01:00:5e:00:00:01
expect_fail "malformed MAC" "not a MAC address" attach up --tap u4 --mac 52:56:65:00:50
expect_fail "tap name in use" "tap hostbr0: the name is already used" attach up --tap hostbr0
expect_fail "tap attached twice" "tap u1 is already attached to network up" attach up --tap u1
nv_ok "stop the bridged network" stop up
if ip netns exec "$NS" ip link show hostbr0 >/dev/null 2>&1; then
    ok "stopping a bridged network leaves the host bridge alone"
else
    not_ok "host bridge survived stop"
fi
ip -n "$NS" link del hostbr0
nv start up
if [ "$VS_RC" -eq 1 ] && has "network up: host bridge hostbr0 does not exist" "$VS_ERR"; then
    ok "start of a bridged network whose host bridge vanished: $(cat "$VS_ERR")"
else
    not_ok "start with a vanished host bridge (exit $VS_RC)"
fi

nv_ok "nat network n1 10.60.0.0/24 with range .100-.200" define n1 --kind nat --subnet 10.60.0.0/24 \
    --dhcp-range 10.60.0.100-10.60.0.200
expect_fail "overlapping DHCP ranges" "DHCP range 10.60.0.150-10.60.0.250 overlaps network n1's range 10.60.0.100-10.60.0.200" \
    define n2 --kind nat --subnet 10.60.0.0/23 --dhcp-range 10.60.0.150-10.60.0.250
expect_fail "overlapping subnets" "subnet 10.60.0.0/16 overlaps network n1's 10.60.0.0/24" \
    define n3 --kind nat --subnet 10.60.0.0/16
expect_fail "DHCP range outside the subnet" "is not inside 10.61.0.0/24" \
    define n4 --kind nat --subnet 10.61.0.0/24 --dhcp-range 10.62.0.1-10.62.0.9
expect_fail "DHCP range containing the gateway" "contains the gateway" \
    define n4 --kind nat --subnet 10.61.0.0/24 --dhcp-range 10.61.0.1-10.61.0.9
expect_fail "nat without subnet" "kind nat needs --subnet" define n5 --kind nat
expect_fail "unknown kind" "kind 'mesh' unknown" define n5 --kind mesh
expect_fail "bad subnet" "not a subnet like" define n5 --kind nat --subnet 10.0.0.0
expect_fail "vxlan without VNI" "kind vxlan needs --vni" define v0 --kind vxlan --remote 10.0.0.2
expect_fail "vxlan VNI out of range" "expected a number up to 16777215" define v0 --kind vxlan --vni 16777216 --remote 10.0.0.2
expect_fail "vxlan with neither remote nor group" "needs --remote IP or --group" define v0 --kind vxlan --vni 5
expect_fail "vxlan group not multicast" "is not a multicast address" define v0 --kind vxlan --vni 5 --group 10.1.1.1
nv_ok "vxlan network v1 VNI 5" define v1 --kind vxlan --vni 5 --group 239.1.1.5
expect_fail "VNI already in use by a network" "VNI 5 is already used by network v1" define v2 --kind vxlan --vni 5 --remote 10.0.0.9
expect_fail "defined twice" "network n1 is already defined" define n1 --kind internal
expect_fail "bad network name" "must start with a letter" define 1bad --kind internal
expect_fail "unknown network" "network nope is not defined" start nope
expect_fail "attach to a stopped network" "network n1 is not started" attach n1 --tap z1
expect_fail "leases of a network without DHCP" "has no DHCP server" leases v1
# names end up in dnsmasq.conf and the nftables ruleset: nothing that could start a new directive
expect_fail "bridge name with a quote" "bridge name 'a\"b': 1-15 letters, digits" \
    define q1 --kind internal --bridge 'a"b'
expect_fail "reservation hostname with a quote" "reservation hostname 'db'x'" \
    define q2 --kind nat --subnet 10.63.0.0/24 --reserve "52:56:65:00:63:01,10.63.0.5,db'x"
expect_fail "reservation with a word too many" "expected 'MAC IP \\[HOSTNAME\\]'" \
    define q2 --kind nat --subnet 10.63.0.0/24 --reserve 52:56:65:00:63:01,10.63.0.5,db,x
expect_fail "lease event outside the subnet" "lease 10.99.0.5 for 52:56:65:00:63:02 is not an address of 10.60.0.0/24" \
    lease-event n1 add 52:56:65:00:63:02 10.99.0.5
expect_fail "lease event with a bad MAC" "not a MAC address" lease-event n1 add 52:56:65 10.60.0.5

# definitions from a file and from libvirt XML
cat >"$T/def.net" <<'EOF'
# a vessel network definition
name = filenet
kind = internal
mtu = 9000
EOF
nv_ok "define from a vessel definition file" define --file "$T/def.net"
nv dump filenet
if has "^mtu = 9000$" "$VS_OUT"; then ok "dump shows the file's mtu"; else not_ok "dump filenet"; fi
printf 'name = broken\nkind = internal\nmtu = lots\n' >"$T/bad.net"
expect_fail "bad definition file names file, line and key" "bad.net:3: mtu: 'lots'" define --file "$T/bad.net"
cat >"$T/default.xml" <<'EOF'
<network>
  <name>virtdefault</name>
  <forward mode='nat'/>
  <bridge name='virbr9'/>
  <ip address='192.168.142.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.142.2' end='192.168.142.254'/>
      <host mac='52:54:00:aa:bb:cc' name='db' ip='192.168.142.10'/>
    </dhcp>
  </ip>
</network>
EOF
nv define --xml "$T/default.xml" --json
nv dump virtdefault
if has "^kind = nat$" "$VS_OUT" && has "^bridge = virbr9$" "$VS_OUT" &&
    has "^subnet = 192.168.142.0/24$" "$VS_OUT" && has "^dhcp-range = 192.168.142.2-192.168.142.254$" "$VS_OUT" &&
    has "^reservation = 52:54:00:aa:bb:cc 192.168.142.10 db$" "$VS_OUT"; then
    ok "libvirt <network> XML imports as a nat network with its range and host reservation"
else
    not_ok "libvirt XML import"
    diag 12 <"$VS_OUT"
fi
nv list --json
if [ "$(python3 -c 'import json,sys; print(sorted(n["name"] for n in json.load(open(sys.argv[1]))))' "$VS_OUT")" = "['filenet', 'n1', 'up', 'v1', 'virtdefault']" ]; then
    ok "list --json names every defined network"
else
    not_ok "list --json"
    diag 10 <"$VS_OUT"
fi
for n in filenet n1 up v1 virtdefault; do nv undefine "$n"; done
nv list
if [ "$(wc -l <"$VS_OUT")" -eq 1 ]; then ok "undefine removed them all"; else not_ok "undefine all"; fi
finish
