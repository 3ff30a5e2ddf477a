#!/usr/bin/env bash
# Sets up what the tests need and runs them all. The README's test command.
#  - ONNX Runtime (pinned wheel from PyPI, sha256-checked);
#  - Debian's chromium (browser test) and prometheus (promtool, and a real
#    Prometheus scraping the server), installed when missing and we are root;
#    otherwise set CHROMIUM / PROMETHEUS to existing binaries;
#  - playwright-core from npm (tests/browser/package-lock.json pins it);
#  - kubernetes-validate from PyPI, in .venv-deploy (scripts/validate-deploy.sh);
#  - tritonclient[grpc] from PyPI, in .venv-triton (tests/kserve/requirements.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-onnxruntime.sh
missing=()
[[ -n "${CHROMIUM:-}" ]] || command -v chromium >/dev/null || missing+=(chromium)
[[ -n "${PROMETHEUS:-}" ]] || command -v prometheus >/dev/null || missing+=(prometheus)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing Debian packages: ${missing[*]} ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "The tests need: ${missing[*]} (apt-get install ${missing[*]}), or set CHROMIUM / PROMETHEUS." >&2
    exit 1
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
# Triton's Python client for the KServe v2 tests (tests/kserve.rs).
if [[ ! -x .venv-triton/bin/python ]] || ! .venv-triton/bin/python -c 'import tritonclient.grpc' 2>/dev/null; then
  python3 -m venv .venv-triton
  .venv-triton/bin/pip install --quiet -r tests/kserve/requirements.txt
fi

cargo fmt --all -- --check
scripts/validate-deploy.sh
# The client binary lives in another package; the tests run it from target/.
cargo build --workspace --bins
cargo test --workspace "$@"
# The browser test drives the page served by the binary `cargo test` built.
SCREENSHOT="${SCREENSHOT:-$(mktemp --suffix=.png)}" node tests/browser/draw.mjs target/debug/mnister-server
