#!/usr/bin/env bash
# The seed's "Use a user-defined overlay network" tutorial, with swarmgate in place of
# Docker. A namespace plays the manager host (the daemon and its DPDK gateway run there,
# its underlay is a veth owned by DPDK), a second one a worker host (its own daemon and
# gateway) that joins with a token over mutual TLS on 2377, a third a client; a bridge in
# a fourth is their LAN. Run as root after building (deploy/demo.sh does both).
# Usage: deploy/tutorial.sh [path/to/swarmgate]
set -euo pipefail
cd "$(dirname "$0")/.."
SG_BIN=$(realpath "${1:-target/release/swarmgate}")
H=sgtut-host W=sgtut-worker C=sgtut-client L=sgtut-lan
WORK=$(mktemp -d /tmp/sgtut.XXXXXX)
SOCK=$WORK/swarmgate.sock WSOCK=$WORK/worker.sock
HOST_IP=192.168.77.1 WORKER_IP=192.168.77.2 CLIENT_IP=192.168.77.100
DAEMON_PID= WORKER_PID=

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
sg() { echo "\$ swarmgate $*" >&2; "$SG_BIN" -H "$SOCK" "$@"; }
sgw() { echo "\$ swarmgate $*   (on the worker)" >&2; "$SG_BIN" -H "$WSOCK" "$@"; }

cleanup() {
  set +e
  if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
    "$SG_BIN" -H "$WSOCK" swarm leave >/dev/null 2>&1
    kill -TERM "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null
  fi
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    "$SG_BIN" -H "$SOCK" swarm leave --force >/dev/null 2>&1
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null
  fi
  for n in $H $W $C $L; do ip netns del $n 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say "Setting up: $H plays the manager host ($HOST_IP), $W a worker host ($WORKER_IP), $C a client ($CLIENT_IP)"
for n in $H $W $C $L; do ip netns del $n 2>/dev/null || true; done
for n in $H $W $C $L; do ip netns add $n; ip -n $n link set lo up; done
ip -n $L link add br0 type bridge; ip -n $L link set br0 up
i=0
for n in $H $W $C; do
  ip link add sgtut$i type veth peer name sgtutl$i
  ip link set sgtut$i netns $n name eth0
  ip link set sgtutl$i netns $L; ip -n $L link set sgtutl$i master br0; ip -n $L link set sgtutl$i up
  ip netns exec $n ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true
  ip netns exec $L ethtool -K sgtutl$i tx off tso off gso off gro off >/dev/null 2>&1 || true
  ip -n $n link set eth0 up
  i=$((i + 1))
done
ip -n $C addr add $CLIENT_IP/24 dev eth0

CORE=$(( $(nproc) > 1 ? 1 : 0 ))
conf() { # prefix address
  cat <<CONF
[dpdk]
cores = [$CORE]
file_prefix = "$1"
memory_mb = 256
mbufs = 8191

[underlay]
device = "net_af_packet0,iface=eth0"
address = "$2/24"
CONF
}
conf sgtut $HOST_IP > "$WORK/daemon.toml"
conf sgtutw $WORKER_IP > "$WORK/worker.toml"
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

say "1b. A second host joins as a worker: the CA on $HOST_IP:2377 checked against the token, a certificate issued, mutual TLS from then on"
nsenter --net=/run/netns/$W "$SG_BIN" -H "$WSOCK" daemon -c "$WORK/worker.toml" --data-root "$WORK/worker-data" \
  >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
for _ in $(seq 100); do [ -S "$WSOCK" ] && break; sleep 0.1; done
[ -S "$WSOCK" ] || { cat "$WORK/worker.log"; exit 1; }
TOKEN=$("$SG_BIN" -H "$SOCK" swarm join-token -q worker)
sgw swarm join --token "$TOKEN" $HOST_IP:2377
sgw node ls || true
for _ in $(seq 30); do
  [ "$("$SG_BIN" -H "$SOCK" node ls --format json | grep -c '"Status":"Ready"')" -ge 2 ] && break; sleep 0.5
done
sg node ls
echo "    (tasks still run on the manager: placing them on workers is the next step)"
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
