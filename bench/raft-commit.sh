#!/usr/bin/env bash
# Raft commit latency among three managers (issue #10): three hosts made of network
# namespaces on one LAN bridge, each running `swarmgate daemon` with its DPDK gateway; the
# first inits, the other two join with the manager token; then N writes (`node update
# --label-add`, each one Raft command) go to the leader, and the leader's own histogram of
# its commits (proposal → a quorum logged it → applied here) is printed from `swarmgate
# stats`, with the wall time per write as the CLI sees it. Run as root after building.
# Usage: bench/raft-commit.sh [writes=1000] [path/to/swarmgate]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
SG_BIN=$(realpath "${2:-target/release/swarmgate}")
WORK=$(mktemp -d /tmp/sgraft.XXXXXX)
L=sgraft-lan
PIDS=()

cleanup() {
  set +e
  for i in 3 2 1; do
    "$SG_BIN" -H "$WORK/m$i.sock" swarm leave --force >/dev/null 2>&1
  done
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for n in $L sgraft-m1 sgraft-m2 sgraft-m3; do ip netns del $n 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for n in $L sgraft-m1 sgraft-m2 sgraft-m3; do ip netns del $n 2>/dev/null || true; ip netns add $n; done
ip -n $L link add br0 type bridge; ip -n $L link set br0 up
CORES=$(nproc)
for i in 1 2 3; do
  ns=sgraft-m$i
  ip link add sgraft$i type veth peer name sgraftl$i
  ip link set sgraft$i netns $ns name eth0
  ip link set sgraftl$i netns $L; ip -n $L link set sgraftl$i master br0 up
  ip netns exec $ns ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true
  ip -n $ns link set lo up; ip -n $ns link set eth0 up
  cat > "$WORK/m$i.toml" <<CONF
[dpdk]
cores = [$(( i % CORES ))]
file_prefix = "sgraft$i"
memory_mb = 256
mbufs = 8191

[underlay]
device = "net_af_packet0,iface=eth0"
address = "192.168.79.$i/24"
CONF
  nsenter --net=/run/netns/$ns unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "mgr$i" \
    "$SG_BIN" -H "$WORK/m$i.sock" daemon -c "$WORK/m$i.toml" --data-root "$WORK/m$i" \
    >"$WORK/m$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$WORK/m$i.sock" ] && break; sleep 0.1; done
done
sg() { local i=$1; shift; "$SG_BIN" -H "$WORK/m$i.sock" "$@"; }
sg 1 swarm init --advertise-addr 192.168.79.1 >/dev/null
TOKEN=$(sg 1 swarm join-token -q manager)
sg 2 swarm join --token "$TOKEN" 192.168.79.1:2377 >/dev/null
sg 3 swarm join --token "$TOKEN" 192.168.79.1:2377 >/dev/null
for _ in $(seq 100); do
  [ "$(sg 1 node ls --format json | grep -c '"ManagerStatus":"Reachable"')" = 2 ] && break; sleep 0.2
done
sg 1 node ls
start=$(date +%s.%N)
for i in $(seq "$N"); do sg 1 node update --label-add "bench=$i" mgr1 >/dev/null; done
end=$(date +%s.%N)
echo "writes: $N through the CLI in $(echo "$end - $start" | bc) s ($(echo "($end - $start) * 1000 / $N" | bc -l | cut -c1-5) ms each, CLI process included)"
echo "the leader's commit latency (µs), three managers on one host ($(nproc) cores):"
sg 1 stats | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["raft"]))'
