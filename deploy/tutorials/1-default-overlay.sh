#!/usr/bin/env bash
# The seed's tutorial "Use the default overlay network", with swarmgate in place of docker,
# on three hosts (manager, worker-1, worker-2): the swarm created with tokens, the ingress
# network on every host, a 5-replica web service on nginx-net published on port 80 and
# reachable through every host (the routing mesh), the service moved to nginx-net-2, and
# everything removed. Each step's output is checked against what the tutorial says.
# Usage: deploy/tutorials/1-default-overlay.sh [path/to/swarmgate]   (as root)
TUT=sgtu1 SUBNET=81
source "$(dirname "$0")/lib.sh"
hosts_up

say "CREATE THE SWARM — 1. On manager, initialize the swarm"
on manager swarm init --advertise-addr="${IP[manager]}" |
  promise "the join command with a token" "swarm join --token SWMTKN-1-"
TOKEN=$(quietly manager swarm join-token -q worker)

say "2., 3. On worker-1 and worker-2, join the swarm"
for h in worker-1 worker-2; do
  on "$h" swarm join --token "$TOKEN" --advertise-addr "${IP[$h]}" "${IP[manager]}:2377" |
    promise "$h joined as a worker" "This node joined a swarm as a worker"
done

say "4. On manager, list all the nodes"
eventually 30 "three nodes Ready" nodes_ready 3
on manager node ls | promise "three nodes, Ready and Active, the manager the Leader (marked *)" \
  '\* +manager +Ready +Active +Leader'
on manager node ls --filter role=manager | promise "only the manager with role=manager" \
  ' manager ' "(no worker)" '!worker-'
on manager node ls --filter role=worker | promise "both workers with role=worker" \
  'worker-1' "(worker-2 too)" 'worker-2' "(not the manager)" '! manager '

say "5. List the networks on manager, worker-1 and worker-2: each has the overlay network ingress"
for h in "${HOSTS[@]}"; do
  on "$h" network ls | promise "ingress, an overlay network of swarm scope, on $h" 'ingress +overlay +swarm'
done
note "swarmgate has no docker_gwbridge: a task reaches the host's network through the data"
note "plane's router on each overlay, not a second bridge."

say "CREATE THE SERVICES — 1. On manager, create the overlay network nginx-net"
on manager network create -d overlay nginx-net >/dev/null
for h in worker-1 worker-2; do
  quietly "$h" network ls | promise "nginx-net not yet on $h (created when a task needs it)" '!nginx-net' 
done

say "2. A 5-replica web service on nginx-net, port 80 published (ingress mode: every host answers)"
on manager service create --name my-nginx --publish target=80,published=80 --replicas=5 \
  --network nginx-net -- python3 -c "$NGINX" >/dev/null
say "3. Monitor the bring-up with service ls"
eventually 60 "5 tasks running" running manager my-nginx 5
on manager service ls | promise "my-nginx replicated 5/5 with *:80->80/tcp" 'my-nginx +replicated +5/5 .*\*:80->80/tcp'
on manager service ps my-nginx | promise "a task on manager (the scheduler spreads them)" \
  ' manager ' "a task on worker-1" ' worker-1 ' "a task on worker-2" ' worker-2 '

say "4. Inspect nginx-net on manager, worker-1 and worker-2: Containers (this host's tasks) and Peers"
for h in "${HOSTS[@]}"; do
  eventually 20 "$h sees the three hosts on nginx-net" peers "$h" nginx-net 3
  local_tasks=$(quietly manager service ps my-nginx --format json | grep -c "\"Node\":\"$h\"")
  on "$h" network inspect nginx-net | python3 -c '
import json, sys
n = json.load(sys.stdin)[0]
print(json.dumps({k: n[k] for k in ("Name", "Driver", "Scope", "Containers", "Peers")}, indent=1))
print("containers:", len(n["Containers"]), "peers:", sorted(p["IP"] for p in n["Peers"]))' |
    promise "$h lists its own $local_tasks task(s) in Containers" "^containers: $local_tasks " \
      "and the three hosts as Peers" "peers: \['${IP[manager]}', '${IP[worker-1]}', '${IP[worker-2]}'\]"
done

say "The routing mesh: port 80 on every host reaches one of the 5 tasks"
for h in "${HOSTS[@]}"; do
  for _ in 1 2 3; do
    printf '$ curl http://%s/   (from the client)\n' "${IP[$h]}" >&2
    fetch "http://${IP[$h]}/" | promise "served by a my-nginx task through $h" 'served by my-nginx\.[1-5]\.'
  done
done

say "5. From manager, inspect the service: its ports and endpoints"
on manager service inspect my-nginx | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
print(json.dumps(s["Endpoint"], indent=1))' |
  promise "port 80 published in ingress mode" '"PublishedPort": 80' \
    "virtual IPs, one per network" '"VirtualIPs"'

say "6. Create nginx-net-2 and move the service onto it"
on manager network create -d overlay nginx-net-2 >/dev/null
on manager service update --network-add nginx-net-2 --network-rm nginx-net my-nginx >/dev/null
say "7. service ls: updated and redeployed; nginx-net has no containers, nginx-net-2 has them all"
attached() { # network: the tasks attached to it, summed over the hosts
  local n=0 h c
  for h in "${HOSTS[@]}"; do
    c=$(quietly "$h" network inspect "$1" 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]["Containers"]))' 2>/dev/null || echo 0)
    n=$((n + c))
  done
  echo "$n"
}
moved() { [ "$(attached nginx-net-2)" -eq 5 ] && [ "$(attached nginx-net)" -eq 0 ]; }
eventually 90 "every task redeployed on nginx-net-2" moved
on manager service ls | promise "my-nginx 5/5 again" 'my-nginx +replicated +5/5'
echo "containers on nginx-net: $(attached nginx-net)" | promise "no container on nginx-net" ': 0$'
echo "containers on nginx-net-2: $(attached nginx-net-2)" | promise "all five on nginx-net-2" ': 5$'
fetch "http://${IP[worker-2]}/" | promise "still served through the mesh" 'served by my-nginx'

say "8. Clean up: the service and both networks (the manager tells the workers)"
on manager service rm my-nginx
# As with Docker, a network keeps active endpoints until every node has stopped the tasks.
eventually 30 "the networks removable" "$SG_BIN" -H "$WORK/manager.sock" network rm nginx-net nginx-net-2
for h in "${HOSTS[@]}"; do
  on "$h" network ls | promise "no nginx-net left on $h" '!nginx-net'
done
say "Done: the default overlay network tutorial"
