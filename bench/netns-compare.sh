#!/usr/bin/env bash
# The Linux kernel's vxlan device versus swarmgate on the same namespace topology, side by
# side in one run (encap direction):
#
#   [gen: pktgen on DPDK af_packet] --veth--> [host: bridge + (kernel vxlan0 | swarmgate with a
#   TAP or an af_packet veth as its local port)]
#        --veth underlay--> [sink: kernel, counts what arrives]
#
# The generator sends inner Ethernet/IPv4/UDP frames to a remote endpoint's MAC; the host
# encapsulates them toward the sink's VTEP address; the sink's interface counters give the
# delivered rate. Usage (root): bench/netns-compare.sh [seconds]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
BIN=target/release
[ -x $BIN/pktgen ] && [ -x $BIN/swarmgate ] || cargo build --release --locked -p swarmgate-bench --bin pktgen -p swarmgate-gateway --bin swarmgate >&2
ID=$$
G=cmpg$ID; H=cmph$ID; S=cmps$ID
TMP=$(mktemp -d)
cleanup() {
  [ -n "${GW:-}" ] && kill -TERM "$GW" 2>/dev/null && wait "$GW" 2>/dev/null || true
  for n in $G $H $S; do ip netns del $n 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

topo() {
  for n in $G $H $S; do ip netns del $n 2>/dev/null || true; ip netns add $n; ip -n $n link set lo up; done
  ip link add g0$ID netns $G type veth peer name g1$ID netns $H
  ip link add h0$ID netns $H address 02:00:c0:a8:58:01 type veth peer name s0$ID netns $S address 02:00:c0:a8:58:02
  for x in "$G g0$ID" "$H g1$ID" "$H h0$ID" "$S s0$ID"; do
    set -- $x
    ip netns exec $1 ethtool -K $2 tx off tso off gso off gro off >/dev/null 2>&1 || true
    ip netns exec $1 sysctl -qw net.ipv6.conf.$2.disable_ipv6=1
    ip -n $1 link set $2 up
  done
  ip -n $S addr add 192.168.88.2/24 dev s0$ID
}

rx() { cat /sys/class/net/s0$ID/statistics/rx_packets 2>/dev/null || ip netns exec $S cat /sys/class/net/s0$ID/statistics/rx_packets; }
measure() { # label size
  local before after gen
  before=$(ip netns exec $S cat /sys/class/net/s0$ID/statistics/rx_packets)
  gen=$(ip netns exec $G $BIN/pktgen --tx "net_af_packet0,iface=g0$ID" --file-prefix "cmpgen$ID" --size "$2" --seconds "$SECS" --warmup 0 2>/dev/null | tail -n1 | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["offered_mpps"])')
  sleep 0.5
  after=$(ip netns exec $S cat /sys/class/net/s0$ID/statistics/rx_packets)
  local mpps; mpps=$(python3 -c "print(f'{($after-$before)/$SECS/1e6:.3f}')")
  local gbps; gbps=$(python3 -c "print(f'{($after-$before)/$SECS*$2*8/1e9:.2f}')")
  echo "| $1 | $2 B | $gen | $mpps | $gbps |"
}

echo "| data path | inner frame | offered (Mpps) | delivered (Mpps) | delivered inner Gb/s |"
echo "|---|---|---|---|---|"
for size in 64 1400; do
  # Kernel: Docker's vxlan device (no learning, static FDB, no UDP checksum) in a bridge.
  topo
  ip -n $H addr add 192.168.88.1/24 dev h0$ID
  ip -n $H link add vxlan0 type vxlan id 4097 dstport 4789 local 192.168.88.1 dev h0$ID nolearning noudpcsum
  ip -n $H link add br0 type bridge
  ip -n $H link set g1$ID master br0; ip -n $H link set vxlan0 master br0
  ip -n $H link set vxlan0 up; ip -n $H link set br0 up
  ip netns exec $H bridge fdb add 02:42:0a:00:00:02 dev vxlan0 dst 192.168.88.2
  ip -n $H neigh add 192.168.88.2 lladdr 02:00:c0:a8:58:02 dev h0$ID nud permanent
  measure "Linux kernel vxlan" $size

  # swarmgate on the same topology: af_packet underlay, each kind of local port.
  for kind in ${KINDS:-tap af_packet af_xdp}; do
  topo
  ip -n $H link add br-4097 type bridge; ip -n $H link set g1$ID master br-4097; ip -n $H link set br-4097 up
  cat > $TMP/gw.toml <<EOT
[dpdk]
cores = [1]
file_prefix = "cmpgw$ID"
local_ports = "$kind"

[underlay]
device = "net_af_packet0,iface=h0$ID"
address = "192.168.88.1/24"

[[network]]
name = "bench"
vni = 4097
bridge = "br-4097"

[[peer]]
vtep = "192.168.88.2"
endpoints = [{ network = "bench", ip = "10.0.0.2" }]
EOT
  rm -f $TMP/gw.json
  ip netns exec $H $BIN/swarmgate gateway -c $TMP/gw.toml --stats $TMP/gw.json > $TMP/gw.log 2>&1 &
  GW=$!
  for _ in $(seq 100); do grep -q 192.168.88.2 $TMP/gw.json 2>/dev/null && break; sleep 0.1; done
  kill -0 $GW 2>/dev/null || { cat $TMP/gw.log >&2; exit 1; }
  measure "swarmgate (af_packet underlay, $kind local port)" $size
  kill -TERM $GW; wait $GW || true; GW=
  python3 -c "import json; d=json.load(open('$TMP/gw.json')); print('<!-- swarmgate $kind drops:', d['drops'], 'local port', d['ports']['bench']['driver'], '-->')"
  done
done
