#!/usr/bin/env bash
# Trains on a small MNIST sample and prints the report: a quick look at the
# whole trainer (data, augmentation, fit, ONNX export, evaluation) in about a
# minute. Full training: see docs/training.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-onnxruntime.sh
data="${MNIST_DIR:-../shared/data/mnist}"
[[ -d "$data" ]] || data=tests/data/mnist
cargo build --release -p mnister-train --bin mnister-train
target/release/mnister-train --data-dir "$data" --out runs/sample \
  --train-limit 2000 --val-limit 1000 --val-size 1000 --epochs 2 "$@"
