#!/usr/bin/env bash
# The seed's "Use a user-defined overlay network" tutorial, with swarmgate in place of
# Docker. A namespace plays the host (the daemon and its DPDK gateway run there, its
# underlay is a veth owned by DPDK), another plays a client on the same LAN. Run as root
# after building (deploy/demo.sh does both). Usage: deploy/tutorial.sh [path/to/swarmgate]
set -euo pipefail
cd "$(dirname "$0")/.."
SG_BIN=$(realpath "${1:-target/release/swarmgate}")
H=sgtut-host C=sgtut-client
WORK=$(mktemp -d /tmp/sgtut.XXXXXX)
SOCK=$WORK/swarmgate.sock
HOST_IP=192.168.77.1 CLIENT_IP=192.168.77.100
DAEMON_PID=

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
sg() { echo "\$ swarmgate $*" >&2; "$SG_BIN" -H "$SOCK" "$@"; }

cleanup() {
  set +e
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    "$SG_BIN" -H "$SOCK" swarm leave --force >/dev/null 2>&1
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null
  fi
  ip netns del $H 2>/dev/null; ip netns del $C 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say "Setting up: namespace $H plays the host ($HOST_IP), $C a client ($CLIENT_IP)"
ip netns del $H 2>/dev/null || true; ip netns del $C 2>/dev/null || true
ip netns add $H; ip netns add $C
ip link add sgtut0 type veth peer name sgtut1
ip link set sgtut0 netns $H name eth0
ip link set sgtut1 netns $C name eth0
ip -n $H link set lo up; ip -n $C link set lo up
ip -n $H link set eth0 up
ip -n $C addr add $CLIENT_IP/24 dev eth0; ip -n $C link set eth0 up
ip netns exec $C ethtool -K eth0 tx off tso off gso off >/dev/null 2>&1 || true
ip netns exec $H ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true

CORE=$(( $(nproc) > 1 ? 1 : 0 ))
cat > "$WORK/daemon.toml" <<CONF
[dpdk]
cores = [$CORE]
file_prefix = "sgtut"
memory_mb = 256
mbufs = 8191

[underlay]
device = "net_af_packet0,iface=eth0"
address = "$HOST_IP/24"
CONF
say "Starting the daemon (DPDK gateway on eth0 of $H)"
# nsenter, not `ip netns exec`: the daemon must stay in this mount namespace so the task
# namespaces it creates are visible to `swarmgate exec`.
nsenter --net=/run/netns/$H "$SG_BIN" -H "$SOCK" daemon -c "$WORK/daemon.toml" --data-root "$WORK/data" \
  >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$WORK/daemon.log"; exit 1; }

say "1. swarm init: this host becomes a manager; the ingress network is created"
sg swarm init --advertise-addr $HOST_IP
sg node ls
say "2. Create the user-defined overlay network"
sg network create -d overlay my-overlay
sg network ls

say "3. A service of 3 replicas of a real HTTP server, publishing 8080:80"
CMD='echo "<h1>served by $SWARMGATE_TASK_NAME</h1>" > index.html && exec python3 -m http.server 80'
sg service create --name my-nginx --network my-overlay --replicas 3 --publish published=8080,target=80 -- sh -c "$CMD"
sleep 1
sg service ls
sg service ps my-nginx

say "4. From the client ($CLIENT_IP), fetch http://$HOST_IP:8080/ several times"
for i in 1 2 3 4 5 6; do
  echo "\$ curl http://$HOST_IP:8080/   (from $C)"
  ip netns exec $C python3 - "$HOST_IP" <<'PY'
import sys, urllib.request
print("   ", urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=5).read().decode().strip())
PY
done

say "5. The tasks logged the client's own address ($CLIENT_IP), not a gateway's"
sg service logs my-nginx | grep 'GET /' | head -6

say "6. network inspect shows the tasks on my-overlay (Containers, Peers, IPAM)"
sg network inspect my-overlay | python3 -c '
import json,sys
n=json.load(sys.stdin)[0]
print(json.dumps({k:n[k] for k in ("Name","Id","Driver","Scope","IPAM","Containers","Peers","Options")}, indent=2))'

say "7. Inside the overlay: service discovery and the VIP"
sg exec my-nginx.1 -- python3 -c '
import socket
print("    my-nginx        ->", socket.gethostbyname("my-nginx"), "(the VIP)")
print("    tasks.my-nginx  ->", sorted(socket.gethostbyname_ex("tasks.my-nginx")[2]))
import urllib.request
for i in range(3):
    print("    http://my-nginx/ ->", urllib.request.urlopen("http://my-nginx/", timeout=5).read().decode().strip())'

say "8. Clean up: remove the service and the network"
sg service rm my-nginx
sg network rm my-overlay
sg network ls
say "Done."
