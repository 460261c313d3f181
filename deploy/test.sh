#!/usr/bin/env bash
# The project's test command (README quick start, command 2; called by .ci/run):
# installs what is missing, then runs every test, the benchmarks once in test mode so they
# cannot rot, and a bounded fuzzing pass over every parser.
#   FUZZ_SECONDS  seconds per fuzz target (default 15; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A clean clone gains nothing from incremental caches, which double target/'s size.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

echo "== cargo test (workspace)"
cargo test --workspace --locked 2>&1 | tee /tmp/swarmgate-test.log
echo "== the seed's four tutorials on three hosts each (fails on any output they do not promise)"
bash deploy/tutorials/all.sh target/debug/swarmgate 2>&1 | tee -a /tmp/swarmgate-test.log
echo "== loom model check of the single-writer counter"
CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" cargo test --locked -p swarmgate-dataplane --lib loom 2>&1 | tee -a /tmp/swarmgate-test.log
echo "== benchmarks, once each in test mode"
cargo bench --workspace --locked -- --test
if [ "${FUZZ_SECONDS:-15}" != "0" ]; then
  echo "== fuzzing, ${FUZZ_SECONDS:-15}s per target"
  bash dataplane/fuzz/run.sh "${FUZZ_SECONDS:-15}"
fi
# One summary line over all test binaries. A test that could not run (the namespace tests
# without root) prints "skipped: ..." and is counted here; under CI=true it fails instead.
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' /tmp/swarmgate-test.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/swarmgate-test.log | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c '^skipped: ' /tmp/swarmgate-test.log || true)
echo "$passed passed, $failed failed, $skipped skipped"
