# Shared by the seed's four tutorials (sourced, not run). Builds three hosts out of network
# namespaces — `manager`, `worker-1`, `worker-2`, each with its own `swarmgate daemon`, its
# own DPDK gateway owning its eth0 (a veth on a LAN bridge) and its own host name — and a
# `client` namespace on the same LAN; types the tutorial's commands with `swarmgate` in
# place of `docker`; checks what the tutorial says the user should see (a mismatch prints
# what was promised and exits 1); cleans everything up on exit.
#
# A script sets TUT (a short tag, unique per script) and SUBNET (the LAN is
# 192.168.$SUBNET.0/24: the hosts .1, .2, .3, the client .100), then sources this file
# with the swarmgate binary as $1 (default target/release/swarmgate). Run as root.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  # As the namespace tests: skipped without root, except under CI=true, where that fails.
  if [ "${CI:-}" = true ]; then
    echo "the tutorials need root, and CI=true: refusing to pass without running" >&2
    exit 1
  fi
  echo "skipped: $(basename "$0") needs root"
  exit 0
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SG_BIN=$(realpath "${1:-$ROOT/target/release/swarmgate}")
cd "$ROOT"
[ -x "$SG_BIN" ] || { echo "no swarmgate binary at $SG_BIN (build it first)" >&2; exit 1; }
: "${TUT:?} ${SUBNET:?}"
HOSTS=(manager worker-1 worker-2)
declare -A IP=([manager]=192.168.$SUBNET.1 [worker-1]=192.168.$SUBNET.2 [worker-2]=192.168.$SUBNET.3)
CLIENT_IP=192.168.$SUBNET.100
CLIENT=${TUT}-client LAN=${TUT}-lan
WORK=$(mktemp -d "/tmp/$TUT.XXXXXX")
declare -A PID=()
EXTRA_PIDS=() # other processes a script starts (captures): killed by cleanup

ns_of() { echo "${TUT}-$1"; }
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    # %s\n' "$*"; }

# on HOST ARGS...: `swarmgate ARGS` typed on HOST (echoed, as the tutorial shows it).
on() {
  local h=$1; shift
  printf '%s$ swarmgate %s\n' "[$h] " "$*" >&2
  "$SG_BIN" -H "$WORK/$h.sock" "$@"
}
# quietly HOST ARGS...: the same, not echoed (the script's own checks).
quietly() {
  local h=$1; shift
  "$SG_BIN" -H "$WORK/$h.sock" "$@"
}

# promise WHAT REGEX [WHAT REGEX]...: the output piped in is shown, and must match each
# REGEX (grep -E); a REGEX starting with `!` must not match.
promise() {
  local out what pat
  out=$(cat)
  [ -n "$out" ] && printf '%s\n' "$out"
  while [ $# -ge 2 ]; do
    what=$1 pat=$2
    shift 2
    if [ "${pat:0:1}" = "!" ]; then
      if grep -Eq -- "${pat:1}" <<<"$out"; then
        printf '\033[31mMISMATCH\033[0m: the tutorial promises %s\n  (expected no match of /%s/)\n' "$what" "${pat:1}" >&2
        exit 1
      fi
    elif ! grep -Eq -- "$pat" <<<"$out"; then
      printf '\033[31mMISMATCH\033[0m: the tutorial promises %s\n  (expected to match /%s/)\n' "$what" "$pat" >&2
      exit 1
    fi
    printf '    \033[32m✓\033[0m %s\n' "$what"
  done
}
# eventually SECS WHAT CMD...: CMD retried every 0.25 s until it succeeds.
eventually() {
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 4))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  printf '\033[31mMISMATCH\033[0m: %s, not within %s s\n' "$what" "$secs" >&2
  exit 1
}
# running HOST SERVICE N: N tasks of SERVICE running (as HOST, a manager, sees them).
running() {
  [ "$(quietly "$1" service ps "$2" --format json | grep -c '"CurrentState":"Running')" -eq "$3" ]
}
# peers HOST NETWORK N: HOST's `network inspect NETWORK` lists N peers.
peers() {
  [ "$(quietly "$1" network inspect "$2" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]["Peers"]))' 2>/dev/null)" = "$3" ]
}
# nodes_ready N: N nodes Ready, as the manager sees them.
nodes_ready() {
  [ "$(quietly manager node ls --format json | grep -c '"Status":"Ready"')" -eq "$1" ]
}
# fetch URL: an HTTP GET from the client namespace, retried for up to 10 s (a port that
# has just been published may take a gossip round to reach every node); prints the body.
fetch() {
  ip netns exec "$CLIENT" python3 -c '
import sys, time, urllib.request
end = time.time() + 10
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())
        break
    except Exception as e:
        if time.time() > end:
            print("no answer: %s" % e)
            break
        time.sleep(0.25)' "$1"
}
# An HTTP server standing in for nginx (`python3 -c "$NGINX"`): it answers with its task's
# name and the address the request came from, and logs each request as nginx does.
NGINX='
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("<h1>served by %s to %s</h1>\n" % (os.environ["SWARMGATE_TASK_NAME"], self.client_address[0])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()'
# node_of TASK: the host running task TASK (name or slot name, e.g. my-nginx.1).
node_of() {
  quietly manager service ps "${1%.*}" --format json | python3 -c '
import json, sys
for l in sys.stdin:
    t = json.loads(l)
    if t["Name"] == sys.argv[1] and t["CurrentState"].startswith("Running"):
        print(t["Node"]); break' "$1"
}

cleanup() {
  set +e
  trap - EXIT INT TERM
  for p in "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for h in "${HOSTS[@]}"; do
    local p=${PID[$h]:-}
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      # Tasks outlive their daemon (live-restore): leaving the swarm stops them.
      timeout 20 "$SG_BIN" -H "$WORK/$h.sock" swarm leave --force >/dev/null 2>&1
      kill -TERM "$p"
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null
      wait "$p" 2>/dev/null
    fi
  done
  for h in "${HOSTS[@]}"; do ip netns del "$(ns_of "$h")" 2>/dev/null; done
  ip netns del "$CLIENT" 2>/dev/null
  ip netns del "$LAN" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# hosts_up: the LAN, the three hosts with their daemons started (not in a swarm yet),
# the client.
hosts_up() {
  say "Three hosts (manager ${IP[manager]}, worker-1 ${IP[worker-1]}, worker-2 ${IP[worker-2]}), each a network namespace with its own swarmgate daemon and DPDK gateway, and a client ($CLIENT_IP) on their LAN"
  local all=() h i=0 ns
  for h in "${HOSTS[@]}"; do all+=("$(ns_of "$h")"); done
  for ns in "${all[@]}" "$CLIENT" "$LAN"; do ip netns del "$ns" 2>/dev/null || true; done
  for ns in "${all[@]}" "$CLIENT" "$LAN"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip -n "$LAN" link add br0 type bridge
  ip -n "$LAN" link set br0 up
  for ns in "${all[@]}" "$CLIENT"; do
    ip link add "${TUT}v$i" type veth peer name "${TUT}l$i"
    ip link set "${TUT}v$i" netns "$ns" name eth0
    ip link set "${TUT}l$i" netns "$LAN"
    ip -n "$LAN" link set "${TUT}l$i" master br0 up
    ip netns exec "$ns" ethtool -K eth0 tx off tso off gso off gro off >/dev/null 2>&1 || true
    ip -n "$ns" link set eth0 up
    i=$((i + 1))
  done
  ip -n "$CLIENT" addr add "$CLIENT_IP/24" dev eth0
  local cores n=0
  cores=$(nproc)
  for h in "${HOSTS[@]}"; do
    cat >"$WORK/$h.toml" <<CONF
[dpdk]
cores = [$((n % cores))]
file_prefix = "${TUT}$n"
memory_mb = 256
mbufs = 8191

[underlay]
device = "net_af_packet0,iface=eth0"
address = "${IP[$h]}/24"
CONF
    # nsenter, not `ip netns exec`: the daemon stays in this mount namespace, so the task
    # namespaces it creates are visible to `swarmgate exec`; its own UTS namespace gives
    # the host its name (what `node ls` shows).
    nsenter --net="/run/netns/$(ns_of "$h")" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$h" \
      "$SG_BIN" -H "$WORK/$h.sock" daemon -c "$WORK/$h.toml" --data-root "$WORK/$h-data" \
      >"$WORK/$h.log" 2>&1 &
    PID[$h]=$!
    n=$((n + 1))
  done
  for h in "${HOSTS[@]}"; do
    for _ in $(seq 100); do [ -S "$WORK/$h.sock" ] && break; sleep 0.1; done
    [ -S "$WORK/$h.sock" ] || { cat "$WORK/$h.log"; exit 1; }
  done
}

# swarm_up: the swarm the tutorials that start "on a manager" assume: manager inits,
# both workers join with the worker token.
swarm_up() {
  say "The swarm (this tutorial assumes one): manager inits, worker-1 and worker-2 join"
  on manager swarm init --advertise-addr "${IP[manager]}" >/dev/null
  local token
  token=$(quietly manager swarm join-token -q worker)
  for h in worker-1 worker-2; do
    on "$h" swarm join --token "$token" "${IP[manager]}:2377"
  done
  eventually 30 "three nodes Ready" nodes_ready 3
}
