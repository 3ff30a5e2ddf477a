#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (FUZZ_SECS, default 120 s
# each), starting from the committed seeds in fuzz/corpus/<target>/seed-*.
# Not part of CI. Findings land in fuzz/artifacts/<target>/ and the tail of
# each run in runs/fuzz/<target>.log; docs/reliability.md records the runs.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets stable take them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
secs=${FUZZ_SECS:-120}
mkdir -p runs/fuzz
cd fuzz
for t in ${FUZZ_TARGETS:-decode_image raw_pixels classify_request kserve_request jpeg_dc}; do
  echo "== $t: ${secs}s"
  cargo fuzz build --release "$t"
  cargo fuzz run --release "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tail -n 25 | tee "../runs/fuzz/$t.log"
done
