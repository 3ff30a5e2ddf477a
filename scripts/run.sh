#!/usr/bin/env bash
# Sets up ONNX Runtime, builds the server and serves the committed default
# model: gRPC on 127.0.0.1:50051, Prometheus metrics on 127.0.0.1:9464.
# Extra arguments go to mnister-server (see --help); so do MNISTER_* env vars.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-onnxruntime.sh
cargo build --release --bin mnister-server
exec target/release/mnister-server "$@"
