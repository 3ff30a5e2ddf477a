#!/usr/bin/env bash
# Sets up what the tests need and runs them all. The README's test command.
#  - ONNX Runtime (pinned wheel from PyPI, sha256-checked);
#  - Chromium for the browser test (Debian's package, installed when missing
#    and we are root; otherwise set CHROMIUM=/path/to/chromium);
#  - playwright-core from npm (package-lock.json pins it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-onnxruntime.sh
if [[ -z "${CHROMIUM:-}" ]] && ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing Debian's chromium for the browser test ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "The browser test needs Chromium: install it (apt-get install chromium) or set CHROMIUM." >&2
    exit 1
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)

cargo fmt --all -- --check
cargo test --features train "$@"
# The browser test drives the page served by the binary `cargo test` built.
SCREENSHOT="${SCREENSHOT:-$(mktemp --suffix=.png)}" node tests/browser/draw.mjs target/debug/mnister-server
