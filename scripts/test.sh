#!/usr/bin/env bash
# Sets up what the tests need and runs them all. The README's test command.
#  - ONNX Runtime (pinned wheel from PyPI, sha256-checked);
#  - Debian's chromium (browser test), prometheus (promtool, and a real
#    Prometheus scraping the server) and nginx (a real gRPC proxy in front of
#    three replicas), installed when missing and we are root; otherwise set
#    CHROMIUM / PROMETHEUS / NGINX to existing binaries;
#  - playwright-core from npm (tests/browser/package-lock.json pins it);
#  - kubernetes-validate from PyPI, in .venv-deploy (scripts/validate-deploy.sh);
#  - tritonclient[grpc] from PyPI, in .venv-triton (tests/kserve/requirements.txt);
#  - buf from npm (tests/api/package-lock.json) for scripts/check-api.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-onnxruntime.sh
missing=()
[[ -n "${CHROMIUM:-}" ]] || command -v chromium >/dev/null || missing+=(chromium)
[[ -n "${PROMETHEUS:-}" ]] || command -v prometheus >/dev/null || missing+=(prometheus)
[[ -n "${NGINX:-}" ]] || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing Debian packages: ${missing[*]} ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "The tests need: ${missing[*]} (apt-get install ${missing[*]}), or set CHROMIUM / PROMETHEUS / NGINX." >&2
    exit 1
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
# Triton's Python client for the KServe v2 tests, and grpcio-tools for the
# Python client tests (tests/it/kserve.rs, python_client.rs, replicas.rs).
if [[ ! -x .venv-triton/bin/python ]] || ! .venv-triton/bin/python -c 'import tritonclient.grpc, grpc_tools' 2>/dev/null; then
  python3 -m venv .venv-triton
  .venv-triton/bin/pip install --quiet -r tests/kserve/requirements.txt
fi

cargo fmt --all -- --check
scripts/validate-deploy.sh
# The API as a contract: buf lint, buf breaking against the first published API.
scripts/check-api.sh
# The client binary lives in another package; the tests run it from target/.
cargo build --workspace --bins
cargo test --workspace "$@"
# The browser test drives the page served by the binary `cargo test` built.
SCREENSHOT="${SCREENSHOT:-$(mktemp --suffix=.png)}" node tests/browser/draw.mjs target/debug/mnister-server
