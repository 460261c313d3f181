#!/usr/bin/env bash
# README quick start, command 1: installs what is missing, builds, walks through the seed's
# four overlay tutorials with the daemon and CLI, each on three hosts made of network
# namespaces (deploy/tutorials/: the default overlay with the routing mesh, a user-defined
# overlay, standalone containers across hosts, a container and a service on an encrypted
# attachable overlay), checking every output the tutorials promise; then shows the gateway
# against the Linux kernel's VXLAN and encrypted between two swarmgate hosts, then the
# data-plane walk-through with per-core rates, then the data paths side by side on this
# machine (the kernel's bridge + vxlan, OVS-DPDK, swarmgate; bench/compare.py). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p swarmgate-gateway --bin swarmgate -p swarmgate-bench --bin netns-demo --bin overlay-demo --bin pktgen
echo "### Part 1: the seed's four overlay tutorials, with the swarmgate daemon on three hosts"
bash deploy/tutorials/all.sh target/release/swarmgate
echo
echo "### Part 2: the DPDK gateway against the Linux kernel's VXLAN, and encrypted"
target/release/netns-demo
echo
echo "### Part 3: the data-plane core, narrated"
target/release/overlay-demo
echo
echo "### Part 4: the VXLAN data paths side by side on this machine (one core each)"
bench/compare.py --seconds 1 --sweep 0.5,1.0 --out /tmp/swarmgate-compare
echo "(JSON, this table and the plots: /tmp/swarmgate-compare; the full sweep: bench/compare.py)"
