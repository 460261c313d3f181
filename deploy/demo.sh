#!/usr/bin/env bash
# README quick start, command 1: installs what is missing, builds, walks through the seed's
# "Use a user-defined overlay network" tutorial with the daemon and CLI (a 3-replica HTTP
# service published on 8080, fetched from a client namespace), then shows the gateway
# against the Linux kernel's VXLAN and encrypted between two swarmgate hosts, then the
# data-plane walk-through with per-core rates. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p swarmgate-gateway --bin swarmgate -p swarmgate-bench --bin netns-demo --bin overlay-demo
echo "### Part 1: the tutorial \"Use a user-defined overlay network\" with the swarmgate daemon"
bash deploy/tutorial.sh target/release/swarmgate
echo
echo "### Part 2: the DPDK gateway against the Linux kernel's VXLAN, and encrypted"
target/release/netns-demo
echo
echo "### Part 3: the data-plane core, narrated"
target/release/overlay-demo
