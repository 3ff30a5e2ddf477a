#!/usr/bin/env bash
# The fault and soak suite on a release build (not part of CI: the soak alone
# takes 5 minutes). Results go to runs/faults/log; docs/reliability.md
# records a run. Knobs: MNISTER_SOAK_SECS (300), MNISTER_SOAK_RPS (1100,
# about half the peak measured in docs/benchmarks.md), MNISTER_SLOW_STREAMS (32).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-onnxruntime.sh >/dev/null
mkdir -p runs/faults
{
  echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  # The CI cases (tests/it/faults.rs, tests/it/limits.rs) on the release build, then the long ones.
  cargo build --release --workspace --bins
  cargo test --release --test it -- faults:: limits:: --test-threads 1 --nocapture
  cargo test --release --test it -- soak:: --ignored --test-threads 1 --nocapture
} 2>&1 | tee runs/faults/log
