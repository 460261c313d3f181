#!/usr/bin/env bash
# The seed's tutorial "Use a user-defined overlay network", with swarmgate in place of
# docker, on three hosts: my-overlay created, a web service on it publishing 8080:80,
# `network inspect` showing its task, the port answering through every host with the
# client's own address kept; then, beyond the tutorial, the service scaled to three tasks
# that find each other by name across the hosts; everything removed. Each step's output is
# checked against what the tutorial says.
# Usage: deploy/tutorials/2-user-defined-overlay.sh [path/to/swarmgate]   (as root)
TUT=sgtu2 SUBNET=82
source "$(dirname "$0")/lib.sh"
hosts_up
swarm_up

say "1. Create the user-defined overlay network"
on manager network create -d overlay my-overlay | promise "the new network's ID" '^[0-9a-z]{12,}$'
on manager network ls | promise "my-overlay, overlay, swarm scope" 'my-overlay +overlay +swarm'

say "2. A service on my-overlay publishing port 80 of its task on port 8080 of every host"
on manager service create --name my-nginx --network my-overlay --replicas 1 \
  --publish published=8080,target=80 -- python3 -c "$NGINX" >/dev/null
eventually 60 "the task running" running manager my-nginx 1
on manager service ls | promise "my-nginx 1/1, *:8080->80/tcp" 'my-nginx +replicated +1/1 .*\*:8080->80/tcp'
NODE=$(quietly manager service ps my-nginx --format json | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["Node"])')

say "3. network inspect my-overlay on the host running the task ($NODE): the task in Containers"
on "$NODE" network inspect my-overlay | python3 -c '
import json, sys
n = json.load(sys.stdin)[0]
print(json.dumps({k: n[k] for k in ("Name", "Driver", "Scope", "IPAM", "Containers", "Peers")}, indent=1))' |
  promise "the my-nginx task among the Containers" '"Name": "my-nginx\.1\.'

say "Port 8080 on every host, from the client: the routing mesh reaches the task wherever it runs, and the task sees the client's own address ($CLIENT_IP)"
for h in "${HOSTS[@]}"; do
  printf '$ curl http://%s:8080/   (from the client)\n' "${IP[$h]}" >&2
  fetch "http://${IP[$h]}:8080/" | promise "served by my-nginx.1 through $h, to the client's address" \
    "served by my-nginx\.1\.[a-z0-9]+ to $CLIENT_IP<"
done

say "Beyond the tutorial: three tasks on three hosts find each other on my-overlay"
on manager service scale my-nginx=3 >/dev/null
eventually 60 "three tasks running" running manager my-nginx 3
three_tasks() {
  quietly "$(node_of my-nginx.1)" exec my-nginx.1 -- python3 -c '
import socket, sys
sys.exit(len(socket.gethostbyname_ex("tasks.my-nginx")[2]) != 3)'
}
eventually 20 "tasks.my-nginx resolving to three tasks" three_tasks
on "$(node_of my-nginx.1)" exec my-nginx.1 -- python3 -c '
import socket, urllib.request
get = lambda u: urllib.request.urlopen(u, timeout=5).read().decode().strip()
print("my-nginx ->", socket.gethostbyname("my-nginx"), "(the VIP)")
tasks = sorted(socket.gethostbyname_ex("tasks.my-nginx")[2])
print("tasks.my-nginx ->", tasks)
for a in tasks:
    print("http://%s/ ->" % a, get("http://%s/" % a))
print("VIP answers:", sorted({get("http://my-nginx/") for _ in range(12)}))' |
  promise "three task addresses behind tasks.my-nginx" "tasks.my-nginx -> \['[0-9.]+', '[0-9.]+', '[0-9.]+'\]" \
    "each task answering at its address" "my-nginx\.3\." \
    "the VIP balancing over the tasks" "VIP answers: \['<h1>served by my-nginx\.[1-3]\.[^']*', '<h1>served by"

say "4. Remove the service and the network"
on manager service rm my-nginx
# As with Docker, a network keeps active endpoints until every node has stopped the tasks.
eventually 30 "my-overlay removable" quietly manager network rm my-overlay
on manager network ls | promise "my-overlay gone" '!my-overlay'
say "Done: the user-defined overlay network tutorial"
