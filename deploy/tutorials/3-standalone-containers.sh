#!/usr/bin/env bash
# The seed's tutorial "Use an overlay network for standalone containers", with swarmgate in
# place of docker: host1 (the manager) and host2 (worker-1) — and a third host, worker-2 —
# in a swarm; an attachable overlay test-net; alpine1 on host1 and alpine2 on host2 ping
# each other by name; test-net appears on host2 with its first container and goes with its
# last; everything removed. Each step's output is checked against what the tutorial says.
#
# The tutorial's alpine containers are endpoints running real processes: `run -d ... --
# sleep infinity` stands in for `run -dit ... alpine` (swarmgate has no TTY to attach to),
# and the commands the tutorial types inside alpine1 are given with `exec alpine1 -- ...`.
# Usage: deploy/tutorials/3-standalone-containers.sh [path/to/swarmgate]   (as root)
TUT=sgtu3 SUBNET=83
source "$(dirname "$0")/lib.sh"
hosts_up
HOST1=manager HOST2=worker-1

say "1a. On host1 ($HOST1), initialize a swarm"
on $HOST1 swarm init --advertise-addr "${IP[$HOST1]}" |
  promise "host1 is now a manager" 'Swarm initialized: current node \([0-9a-z]+\) is now a manager' \
    "the join command for host2" "swarmgate swarm join --token SWMTKN-1-[0-9a-z]+-[0-9a-z]+ ${IP[$HOST1]}:2377"
TOKEN=$(quietly $HOST1 swarm join-token -q worker)
say "1b. On host2 ($HOST2), join the swarm as instructed (and worker-2 too: three hosts)"
for h in $HOST2 worker-2; do
  on $h swarm join --token "$TOKEN" "${IP[$HOST1]}:2377" |
    promise "$h joined as a worker" '^This node joined a swarm as a worker\.$'
done
eventually 30 "three nodes Ready" nodes_ready 3

say "2. On host1, create an attachable overlay network test-net"
NET_ID=$(on $HOST1 network create --driver=overlay --attachable test-net)
echo "$NET_ID" | promise "the network's ID" '^[0-9a-z]{12,}$'

say "3. On host1, start alpine1 on test-net"
on $HOST1 run -d --name alpine1 --network test-net -- sleep infinity | promise "its ID" '^[0-9a-z]+$'

say "4. On host2, list the networks: test-net does not exist there yet"
on $HOST2 network ls | promise "ingress only, no test-net yet" 'ingress +overlay +swarm' "(no test-net)" '!test-net'

say "5. On host2, start alpine2 on test-net (detached)"
on $HOST2 run -d --name alpine2 --network test-net -- sleep infinity | promise "its ID" '^[0-9a-z]+$'

say "6. On host2, test-net now exists, with the same NETWORK ID as on host1"
on $HOST2 network ls | promise "test-net with ID ${NET_ID:0:12}" "^${NET_ID:0:12} +test-net +overlay +swarm"

say "7. On host1, from alpine1, ping alpine2 by name"
eventually 20 "alpine2 reachable from alpine1" quietly $HOST1 exec alpine1 -- ping -c 1 -W 1 alpine2
on $HOST1 exec alpine1 -- ping -c 2 alpine2 |
  promise "alpine2 resolved on test-net" '^PING alpine2 \(10\.[0-9.]+\)' \
    "both pings answered across the hosts" '2 packets transmitted, 2 (packets )?received, 0% packet loss'
say "7b. On host2, a foreground alpine3 (removed on exit) pings alpine1"
# (`-w 5`: a container that has just started may lose its very first ping.)
on $HOST2 run --rm --name alpine3 --network test-net -- ping -c 2 -w 5 alpine1 |
  promise "alpine1 answers alpine3" ', 2 (packets )?received'
on $HOST2 ps | promise "alpine3 removed when it exited (--rm)" '!alpine3'

say "Beyond the tutorial: a network that is not attachable refuses standalone containers (Docker's message)"
on $HOST1 network create --driver=overlay closed-net >/dev/null
{ on $HOST2 run -d --name alpine4 --network closed-net -- sleep infinity 2>&1 || true; } |
  promise "the refusal" 'network closed-net not manually attachable'
on $HOST1 network rm closed-net >/dev/null

say "8., 9a. On host2, stop and remove alpine2 (rm -f: docker's stop, then rm): test-net leaves host2 with it"
on $HOST2 rm -f alpine2
eventually 15 "test-net gone from host2" sh -c "! '$SG_BIN' -H '$WORK/$HOST2.sock' network ls | grep -q test-net"
on $HOST2 network ls | promise "no test-net on host2" '!test-net'
no_alpine2() { ! quietly $HOST1 exec alpine1 -- getent hosts alpine2; }
eventually 10 "alpine2's name withdrawn" no_alpine2
on $HOST1 exec alpine1 -- sh -c 'getent hosts alpine2 || echo "alpine2: no such name"' |
  promise "alpine2's name withdrawn across the cluster" 'alpine2: no such name'

say "9b. On host1, remove alpine1 and test-net"
on $HOST1 rm -f alpine1
eventually 15 "test-net removable" quietly $HOST1 network rm test-net
on $HOST1 network ls | promise "test-net gone" '!test-net'
say "Done: the overlay network for standalone containers tutorial"
