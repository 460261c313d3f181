#!/usr/bin/env bash
# The seed's tutorial "Communicate between a container and a swarm service", with swarmgate
# in place of docker, on three hosts: an attachable overlay — encrypted, as the seed's
# "Swarm mode overlay networks and standalone containers" creates it — a 2-replica web
# service on it, and a standalone container on a third host that reaches the service by
# name (its VIP, balanced over both tasks) and each task by address, and that the tasks
# reach by its name; every packet between the hosts on that network is ESP, none
# cleartext VXLAN. Each step's output is checked against what the tutorial says.
#
# (The seed's text under this heading shows the bridge-network tutorial instead — two
# containers on one host's default bridge — a mix-up in the page; this script follows the
# heading and its summary: "sets up communication between a standalone container and a
# swarm service, using an attachable overlay network".)
# Usage: deploy/tutorials/4-container-and-service.sh [path/to/swarmgate]   (as root)
TUT=sgtu4 SUBNET=84
source "$(dirname "$0")/lib.sh"
hosts_up
swarm_up
NET=my-attachable-multi-host-network

say "1. An encrypted, attachable overlay network"
on manager network create --opt encrypted --driver overlay --attachable $NET | promise "its ID" '^[0-9a-z]{12,}$'
VNI=$(quietly manager network inspect $NET | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"])')

say "2. A service of two web tasks on it, kept off worker-2"
on manager service create --name web --replicas 2 --network $NET --constraint node.hostname!=worker-2 \
  -- python3 -c "$NGINX" >/dev/null
eventually 60 "both tasks running" running manager web 2
on manager service ps web | promise "web.1 and web.2 running, none on worker-2" 'web\.1 .* Running' \
  "(web.2)" 'web\.2 .* Running' "(not on worker-2)" '!worker-2'

say "3. On worker-2, a standalone container on the same network"
on worker-2 run -d --name alpine1 --network $NET -- sleep infinity | promise "its ID" '^[0-9a-z]+$'
ALPINE_IP=$(quietly worker-2 exec alpine1 -- python3 -c 'import socket; print(socket.gethostbyname("alpine1"))')
both_tasks() {
  quietly worker-2 exec alpine1 -- python3 -c '
import socket, sys, urllib.request
tasks = socket.gethostbyname_ex("tasks.web")[2]
sys.exit(len(tasks) != 2 or not all(urllib.request.urlopen("http://%s/" % a, timeout=2).read() for a in tasks))'
}
eventually 20 "both web tasks answering alpine1" both_tasks

# Everything that crosses the LAN from here on is captured.
ip netns exec "$LAN" tcpdump -i br0 -nn -U -w "$WORK/lan.pcap" 'esp or udp port 4789' >/dev/null 2>&1 &
CAPTURE=$!
EXTRA_PIDS+=("$CAPTURE")
sleep 1

say "4. From the container, the service by name: its VIP, balanced over both tasks"
on worker-2 exec alpine1 -- python3 -c '
import socket, urllib.request
get = lambda u: urllib.request.urlopen(u, timeout=5).read().decode().strip()
print("web ->", socket.gethostbyname("web"))
print("tasks.web ->", sorted(socket.gethostbyname_ex("tasks.web")[2]))
for a in sorted(socket.gethostbyname_ex("tasks.web")[2]):
    print("http://%s/ ->" % a, get("http://%s/" % a))
print("http://web/ x12 ->", sorted({get("http://web/") for _ in range(12)}))' |
  promise "the service's name resolved to one address (the VIP)" '^web -> 10\.[0-9.]+$' \
    "two task addresses behind tasks.web" "tasks.web -> \['[0-9.]+', '[0-9.]+'\]" \
    "the tasks see the container's own address" "to $ALPINE_IP<" \
    "the VIP answered by both tasks" "x12 -> \['<h1>served by web\.1\.[^']*', '<h1>served by web\.2\."

say "5. From a service task, the container by name"
eventually 20 "alpine1 reachable from web.1" quietly "$(node_of web.1)" exec web.1 -- ping -c 1 -W 1 alpine1
on "$(node_of web.1)" exec web.1 -- ping -c 2 alpine1 |
  promise "alpine1 answers web.1" '2 packets transmitted, 2 (packets )?received, 0% packet loss'

kill "$CAPTURE"; wait "$CAPTURE" 2>/dev/null || true
say "6. On the wire between the hosts: ESP only, no cleartext VXLAN of VNI $VNI"
{
  echo "ESP packets: $(tcpdump -r "$WORK/lan.pcap" -nn esp 2>/dev/null | wc -l)"
  echo "cleartext VXLAN of VNI $VNI: $(tcpdump -r "$WORK/lan.pcap" -nn 'udp port 4789' 2>/dev/null | grep -c "vni $VNI" || true)"
} | promise "the network's traffic encrypted (ESP)" '^ESP packets: [1-9]' \
  "none of it in the clear" "VNI $VNI: 0$"
quietly worker-2 stats | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("worker-2 encrypts to", sorted(s["esp_tx"]))' |
  promise "worker-2 has SAs with the nodes running web" "encrypts to \['${IP[manager]}', '${IP[worker-1]}'\]"

say "7. Clean up"
on worker-2 rm -f alpine1
on manager service rm web
eventually 30 "the network removable" quietly manager network rm $NET
on manager network ls | promise "the network gone" "!$NET"
say "Done: the container and swarm service tutorial"
