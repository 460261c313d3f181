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
# Release build with debug assertions and overflow checks (Cargo.toml's profile and -a).
cargo fuzz build -O -a -s none
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $(cargo fuzz list); do
  mkdir -p "$work/$t"
  echo "fuzz: $t for ${secs}s"
  # Any finding fails the run: a panic or abort (crash), running out of the memory limit
  # (OOM), an input slower than the timeout, or libFuzzer's own errors — all make it exit
  # non-zero, which is what is checked, not just the presence of a crash artifact.
  if ! cargo fuzz run -O -a -s none "$t" "$work/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    echo "fuzz: $t FAILED:"
    grep -E "ERROR|panicked|SUMMARY|Test unit written|out-of-memory|timeout" "$work/$t.log" | head -20 || tail -30 "$work/$t.log"
    ls artifacts/"$t" 2>/dev/null || true
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$work/$t.log" || true
done
echo "fuzz: all targets ran ${secs}s without a finding"
