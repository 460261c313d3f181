#!/usr/bin/env bash
# The seed's "Use a user-defined overlay network" tutorial, with swarmgate in place of
# Docker, on three hosts. A namespace plays the manager host (the daemon and its DPDK
# gateway run there, its underlay is a veth owned by DPDK), two more are worker hosts
# (each its own daemon and gateway, its own host name) that join with a token over mutual
# TLS on 2377, another a client; a bridge in a fifth is their LAN. The service's tasks
# spread over the three hosts and reach each other over the overlay. Run as root after
# building (deploy/demo.sh does both).
# Usage: deploy/tutorial.sh [path/to/swarmgate]
set -euo pipefail
cd "$(dirname "$0")/.."
SG_BIN=$(realpath "${1:-target/release/swarmgate}")
H=sgtut-host W1=sgtut-worker1 W2=sgtut-worker2 C=sgtut-client L=sgtut-lan
WORK=$(mktemp -d /tmp/sgtut.XXXXXX)
SOCK=$WORK/swarmgate.sock
HOST_IP=192.168.77.1 CLIENT_IP=192.168.77.100
DAEMON_PID= WORKER_PIDS=

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
sg() { echo "\$ swarmgate $*" >&2; "$SG_BIN" -H "$SOCK" "$@"; }
sgw() { # worker-number args...
  local n=$1; shift
  echo "\$ swarmgate $*   (on worker$n)" >&2; "$SG_BIN" -H "$WORK/worker$n.sock" "$@"
}

cleanup() {
  set +e
  n=1
  for pid in $WORKER_PIDS; do
    if kill -0 "$pid" 2>/dev/null; then
      "$SG_BIN" -H "$WORK/worker$n.sock" swarm leave >/dev/null 2>&1
      kill -TERM "$pid"; wait "$pid" 2>/dev/null
    fi
    n=$((n + 1))
  done
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    "$SG_BIN" -H "$SOCK" swarm leave --force >/dev/null 2>&1
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null
  fi
  for n in $H $W1 $W2 $C $L; do ip netns del $n 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say "Setting up: $H plays the manager host ($HOST_IP), $W1 and $W2 worker hosts (192.168.77.2, .3), $C a client ($CLIENT_IP)"
for n in $H $W1 $W2 $C $L; do ip netns del $n 2>/dev/null || true; done
for n in $H $W1 $W2 $C $L; do ip netns add $n; ip -n $n link set lo up; done
ip -n $L link add br0 type bridge; ip -n $L link set br0 up
i=0
for n in $H $W1 $W2 $C; do
  ip link add sgtut$i type veth peer name sgtutl$i
  ip link set sgtut$i netns $n name eth0
  ip link set sgtutl$i netns $L; ip -n $L link set sgtutl$i master br0; ip -n $L link set sgtutl$i up
  ip netns exec $n ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true
  ip netns exec $L ethtool -K sgtutl$i tx off tso off gso off gro off >/dev/null 2>&1 || true
  ip -n $n link set eth0 up
  i=$((i + 1))
done
ip -n $C addr add $CLIENT_IP/24 dev eth0

conf() { # prefix address core
  cat <<CONF
[dpdk]
cores = [$3]
file_prefix = "$1"
memory_mb = 256
mbufs = 8191

[underlay]
device = "net_af_packet0,iface=eth0"
address = "$2/24"
CONF
}
CORES=$(nproc)
conf sgtut $HOST_IP $(( CORES > 1 ? 1 : 0 )) > "$WORK/daemon.toml"
# daemon NETNS HOSTNAME SOCKET CONFIG DATA LOG: a host's daemon, in its network namespace
# and under its own host name (what `node ls` shows). nsenter, not `ip netns exec`: the
# daemon must stay in this mount namespace so the task namespaces it creates are visible
# to `swarmgate exec`.
daemon() {
  nsenter --net=/run/netns/$1 unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$2" \
    "$SG_BIN" -H "$3" daemon -c "$4" --data-root "$5" >"$6" 2>&1 &
}
say "Starting the daemon (DPDK gateway on eth0 of $H)"
daemon $H manager "$SOCK" "$WORK/daemon.toml" "$WORK/data" "$WORK/daemon.log"
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$WORK/daemon.log"; exit 1; }

say "1. swarm init: this host becomes a manager; the ingress network is created"
sg swarm init --advertise-addr $HOST_IP

say "1b. Two more hosts join as workers: the CA on $HOST_IP:2377 checked against the token, a certificate issued, mutual TLS from then on"
TOKEN=$("$SG_BIN" -H "$SOCK" swarm join-token -q worker)
for n in 1 2; do
  ns=$W1; [ $n = 2 ] && ns=$W2
  conf sgtutw$n 192.168.77.$((n + 1)) $(( (n + 1) % CORES )) > "$WORK/worker$n.toml"
  daemon $ns worker$n "$WORK/worker$n.sock" "$WORK/worker$n.toml" "$WORK/worker$n-data" "$WORK/worker$n.log"
  WORKER_PIDS="$WORKER_PIDS $!"
  for _ in $(seq 100); do [ -S "$WORK/worker$n.sock" ] && break; sleep 0.1; done
  [ -S "$WORK/worker$n.sock" ] || { cat "$WORK/worker$n.log"; exit 1; }
  sgw $n swarm join --token "$TOKEN" $HOST_IP:2377
done
sgw 1 node ls || true
for _ in $(seq 30); do
  [ "$("$SG_BIN" -H "$SOCK" node ls --format json | grep -c '"Status":"Ready"')" -ge 3 ] && break; sleep 0.5
done
sg node ls
say "2. Create the user-defined overlay network"
sg network create -d overlay my-overlay
sg network ls

say "3. A service of 3 replicas of a real HTTP server, publishing 8080:80"
CMD='echo "<h1>served by $SWARMGATE_TASK_NAME</h1>" > index.html && exec python3 -m http.server 80'
sg service create --name my-nginx --network my-overlay --replicas 3 --publish published=8080,target=80 -- sh -c "$CMD"
for _ in $(seq 40); do
  [ "$("$SG_BIN" -H "$SOCK" service ps my-nginx --format json | grep -c '"CurrentState":"Running')" -ge 3 ] && break; sleep 0.5
done
sg service ls
echo "    (one task on each host: the scheduler spreads a service's tasks over the nodes)"
sg service ps my-nginx
sgw 1 network ls

say "4. From the client ($CLIENT_IP), fetch http://$HOST_IP:8080/ several times (the manager's published port; its local task answers — the routing mesh across hosts comes next)"
for i in 1 2 3 4 5 6; do
  echo "\$ curl http://$HOST_IP:8080/   (from $C)"
  ip netns exec $C python3 - "$HOST_IP" <<'PY'
import sys, urllib.request
print("   ", urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=5).read().decode().strip())
PY
done

say "5. The task logged the client's own address ($CLIENT_IP), not a gateway's"
sg service logs my-nginx | grep 'GET /' | head -6

say "6. network inspect shows the tasks on my-overlay (Containers, Peers, IPAM)"
sg network inspect my-overlay | python3 -c '
import json,sys
n=json.load(sys.stdin)[0]
print(json.dumps({k:n[k] for k in ("Name","Id","Driver","Scope","IPAM","Containers","Peers","Options")}, indent=2))'

say "7. Inside the overlay, across the three hosts: service discovery, every task by address, the VIP"
sg exec my-nginx.1 -- python3 -c '
import socket, urllib.request
get = lambda u: urllib.request.urlopen(u, timeout=5).read().decode().strip()
print("    my-nginx        ->", socket.gethostbyname("my-nginx"), "(the VIP)")
tasks = sorted(socket.gethostbyname_ex("tasks.my-nginx")[2])
print("    tasks.my-nginx  ->", tasks)
for a in tasks:
    print("    http://%s/ ->" % a, get("http://%s/" % a))
for i in range(4):
    print("    http://my-nginx/ ->", get("http://my-nginx/"))'

say "8. Clean up: remove the service and the network"
sg service rm my-nginx
# As with Docker, the network has active endpoints until every node has stopped the
# service's tasks: retried for up to 10 s.
echo "\$ swarmgate network rm my-overlay" >&2
for i in $(seq 40); do
  if out=$("$SG_BIN" -H "$SOCK" network rm my-overlay 2>&1); then echo "$out"; break; fi
  [ "$i" = 40 ] && { echo "$out" >&2; exit 1; }
  sleep 0.25
done

sg network ls
say "Done."
