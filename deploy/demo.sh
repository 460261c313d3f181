#!/usr/bin/env bash
# README quick start, command 1: installs what is missing, builds, and runs the overlay demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p swarmgate-bench --bin overlay-demo
exec target/release/overlay-demo
