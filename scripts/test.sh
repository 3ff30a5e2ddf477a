#!/usr/bin/env bash
# Sets up what the tests need and runs them all. The README's test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-onnxruntime.sh
cargo fmt --all -- --check
cargo test --features train "$@"
