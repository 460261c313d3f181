#!/usr/bin/env bash
# README quick start, command 1: installs what is missing, builds, and shows the gateway
# moving real traffic between network namespaces (against the Linux kernel's VXLAN, and
# encrypted between two swarmgate hosts), then the data-plane walk-through with per-core
# rates. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p swarmgate-gateway --bin swarmgate -p swarmgate-bench --bin netns-demo --bin overlay-demo
echo "### Part 1: the DPDK gateway on (virtual) devices"
target/release/netns-demo
echo
echo "### Part 2: the data-plane core, narrated"
target/release/overlay-demo
