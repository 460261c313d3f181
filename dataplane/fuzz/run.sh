#!/usr/bin/env bash
# Runs every fuzz target for a bounded time over its seed corpus (real packets under
# seeds/<target>/). Usage: run.sh [SECONDS_PER_TARGET]   (default 20)
#
# cargo-fuzz's default AddressSanitizer build needs a nightly compiler; the data plane is
# safe Rust (its one unsafe dependency, the AES-GCM FFI, is not reachable from the
# parsers), so the targets are built with `-s none`: libFuzzer's coverage guidance and
# Rust's own bounds checks, panics reported as crashes.
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo fuzz build -O -s none
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $(cargo fuzz list); do
  mkdir -p "$work/$t"
  echo "fuzz: $t for ${secs}s"
  cargo fuzz run -O -s none "$t" "$work/$t" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked" || true
  # A crash leaves an artifact and makes cargo fuzz exit non-zero under `set -e`: rerun to surface it.
  if ls artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t crashed:"; ls artifacts/"$t"; exit 1
  fi
done
echo "fuzz: all targets ran ${secs}s without a crash"
