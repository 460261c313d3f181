#!/usr/bin/env bash
# TCP and UDP between two overlay endpoints on two hosts, side by side in one run: host A is
# always the Linux kernel's VXLAN (the way Docker sets it up: a bridge and a vxlan device
# with a static FDB); host B is the kernel too, then swarmgate with each kind of local port
# (`tap`, `af_packet`). iperf3 from the endpoint behind A to the one behind B (B decapsulates)
# and back (`-R`: B encapsulates).
#
#   [ep A 10.0.0.1] -veth- [A: br0 + vxlan0] -underlay veth 192.168.89.1 / .2- [B] -veth- [ep B 10.0.0.2]
#
# Offloads: everything keeps the kernel's defaults (TSO/GSO end to end) in the kernel row;
# when B is swarmgate, the underlay veth's two ends have none: DPDK's af_packet reads
# MTU-sized frames with complete checksums, so A segments before the wire, as a NIC would
# in hardware.
# Usage (root): bench/netns-iperf.sh [seconds]   (default 5; installs iperf3 if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
BIN=target/release
[ -x $BIN/swarmgate ] || cargo build --release --locked -p swarmgate-gateway --bin swarmgate >&2
command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
ID=$$
A=ipa$ID B=ipb$ID EA=ipea$ID EB=ipeb$ID
TMP=$(mktemp -d)
GW=
cleanup() {
  [ -f "$TMP/srv.pid" ] && kill "$(cat "$TMP/srv.pid")" 2>/dev/null || true
  [ -n "$GW" ] && kill -TERM "$GW" 2>/dev/null && wait "$GW" 2>/dev/null || true
  for n in $A $B $EA $EB; do ip netns del $n 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# topo SEGMENT_ON_A: the four namespaces, the underlay and the endpoints; host A's kernel VXLAN.
topo() {
  local seg=$1
  for n in $A $B $EA $EB; do ip netns del $n 2>/dev/null || true; ip netns add $n; ip -n $n link set lo up; done
  ip link add ua$ID netns $A type veth peer name ub$ID netns $B
  ip link add ea$ID netns $EA address 02:42:0a:00:00:01 type veth peer name eab$ID netns $A
  ip link add eb$ID netns $EB address 02:42:0a:00:00:02 type veth peer name ebb$ID netns $B
  for x in "$A ua$ID" "$B ub$ID" "$A eab$ID" "$B ebb$ID" "$EA ea$ID" "$EB eb$ID"; do
    set -- $x
    ip netns exec $1 sysctl -qw net.ipv6.conf.$2.disable_ipv6=1
    ip -n $1 link set $2 up
  done
  # swarmgate's side (DPDK af_packet) reads MTU-sized frames with complete checksums.
  if [ "$seg" = segment ]; then
    ip netns exec $A ethtool -K ua$ID tx off tso off gso off gro off >/dev/null
    ip netns exec $B ethtool -K ub$ID tx off tso off gso off gro off >/dev/null
  fi
  ip -n $EA addr add 10.0.0.1/24 dev ea$ID; ip -n $EA link set ea$ID mtu 1450
  ip -n $EB addr add 10.0.0.2/24 dev eb$ID; ip -n $EB link set eb$ID mtu 1450
  ip -n $EA neigh add 10.0.0.2 lladdr 02:42:0a:00:00:02 dev ea$ID nud permanent
  ip -n $EB neigh add 10.0.0.1 lladdr 02:42:0a:00:00:01 dev eb$ID nud permanent
  kernel_host $A ua$ID eab$ID 192.168.89.1 192.168.89.2 02:42:0a:00:00:02
}

# kernel_host NS UNDERLAY ENDPOINT_PORT MY_IP PEER_IP PEER_ENDPOINT_MAC
kernel_host() {
  ip -n $1 addr add $4/24 dev $2
  ip -n $1 link add vxlan0 type vxlan id 4097 dstport 4789 local $4 dev $2 nolearning noudpcsum
  ip -n $1 link set vxlan0 mtu 1450
  ip -n $1 link add br0 type bridge
  ip -n $1 link set $3 master br0; ip -n $1 link set vxlan0 master br0
  ip -n $1 link set vxlan0 up; ip -n $1 link set br0 up
  ip netns exec $1 bridge fdb add $6 dev vxlan0 dst $5
}

# measure LABEL: TCP one stream both ways, UDP 64 B frames (18 B payload) both ways.
measure() {
  ip netns exec $EB iperf3 -s -D -I $TMP/srv.pid >/dev/null
  sleep 0.5
  local tcp_ab tcp_ba udp_ab udp_ba
  tcp_ab=$(ip netns exec $EA iperf3 -c 10.0.0.2 -t $SECS -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
  tcp_ba=$(ip netns exec $EA iperf3 -c 10.0.0.2 -t $SECS -R -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
  udp() {
    ip netns exec $EA iperf3 -c 10.0.0.2 -u -l 18 -b 0 -t $SECS -J "$@" | python3 -c '
import json, sys
s = json.load(sys.stdin)["end"]["sum"]
print("%.3f (of %.3f)" % ((s["packets"] - s["lost_packets"]) / s["seconds"] / 1e6, s["packets"] / s["seconds"] / 1e6))'
  }
  udp_ab=$(udp)
  udp_ba=$(udp -R)
  kill "$(cat $TMP/srv.pid)" 2>/dev/null || true
  echo "| $1 | $tcp_ab | $tcp_ba | $udp_ab | $udp_ba |"
}

echo "| host B | TCP A→B (Gb/s) | TCP B→A (Gb/s) | UDP 64 B A→B delivered Mpps (offered) | UDP 64 B B→A delivered Mpps (offered) |"
echo "|---|---|---|---|---|"
topo keep
kernel_host $B ub$ID ebb$ID 192.168.89.2 192.168.89.1 02:42:0a:00:00:01
measure "Linux kernel vxlan"

# Each swarmgate row: local port kind, worker idle sleep in µs (0: pure polling, a whole
# core; the daemon's default is 50).
# ROWS="kind:idle ..." picks them.
for row in ${ROWS:-tap:0 af_packet:0 af_xdp:0 af_xdp:50}; do
  kind=${row%%:*} idle=${row##*:}
  topo segment
  ip -n $B link add br-4097 type bridge; ip -n $B link set ebb$ID master br-4097; ip -n $B link set br-4097 up
  cat > $TMP/gw.toml <<EOT
[dpdk]
cores = [1]
file_prefix = "ipgw$ID"
local_ports = "$kind"

[underlay]
device = "net_af_packet0,iface=ub$ID"
address = "192.168.89.2/24"

[[network]]
name = "bench"
vni = 4097
bridge = "br-4097"
local = [{ ip = "10.0.0.2" }]

[[peer]]
vtep = "192.168.89.1"
endpoints = [{ network = "bench", ip = "10.0.0.1" }]
EOT
  rm -f $TMP/gw.json
  ip netns exec $B $BIN/swarmgate gateway -c $TMP/gw.toml --stats $TMP/gw.json --idle-sleep-us $idle > $TMP/gw.log 2>&1 &
  GW=$!
  for _ in $(seq 100); do grep -q 192.168.89.1 $TMP/gw.json 2>/dev/null && break; sleep 0.1; done
  kill -0 $GW 2>/dev/null || { cat $TMP/gw.log >&2; exit 1; }
  ip -n $A neigh replace 192.168.89.2 lladdr "$(ip -n $B -j link show ub$ID | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')" dev ua$ID nud permanent
  measure "swarmgate, $kind local port, idle sleep $idle µs"
  kill -TERM $GW; wait $GW || true; GW=
  python3 -c "import json; d=json.load(open('$TMP/gw.json')); print('<!-- swarmgate $kind drops:', d['drops'], '-->')"
done
