#!/usr/bin/env bash
# Sets up LibTorch for the trainer's optional `tch` feature and prints the
# environment to build and run it with.
#
# Why: on a 2-core machine burn's pure-Rust `flex` backend trains the CNN at
# ~105 img/s with field augmentation. LibTorch was expected to be ~4-6x
# faster; measured here it is ~1.6x (169 img/s with field augmentation,
# 190 img/s without, at batch 128). PyTorch itself tops out at ~225 img/s on
# the same net on 2 cores, so the gap to 4x is not in burn. LibTorch is only a
# local speed-up: the default build, the tests and CI never use it and never
# run this script.
#
# burn-tch 0.22.1 -> tch 0.22.0 -> torch-sys 0.22.0 is generated against
# PyTorch 2.9.0 exactly (its build script rejects other versions where it can
# tell), so this installs the PyPI wheel torch==2.9.0 into .venv-torch and
# points torch-sys at it.
#
# Usage (idempotent; a second run only checks and prints):
#   eval "$(scripts/setup-torch.sh)"
#   cargo build --release -p mnister-train --features tch --bin mnister-train
#   target/release/mnister-train --out runs/x ...
#
# Progress goes to stderr, the `export` lines to stdout.
# Knobs: VENV (default <repo>/.venv-torch), PYTHON (default python3),
# TORCH_PIP_ARGS (extra pip arguments). The PyPI wheel pulls ~4.3 GB of
# nvidia-* CUDA wheels, ~6.7 GB in all. "--no-deps" skips them but is untested:
# torch/lib still ships libtorch_cuda.so, and torch-sys links it when present.
set -euo pipefail

TORCH_VERSION=2.9.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-torch}"
PYTHON="${PYTHON:-python3}"

log() { echo "setup-torch: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

installed="$("$VENV/bin/python" - <<'EOF' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("torch"))
except m.PackageNotFoundError:
    pass
EOF
)"
if [[ "${installed%%+*}" != "$TORCH_VERSION" ]]; then
    log "installing torch==$TORCH_VERSION (was: ${installed:-none}); the CUDA wheel set is ~4 GB"
    # shellcheck disable=SC2086 # TORCH_PIP_ARGS is a list of words
    "$VENV/bin/python" -m pip install --quiet ${TORCH_PIP_ARGS:-} "torch==$TORCH_VERSION" >&2
else
    log "torch $installed already in $VENV"
fi

# Import it for real: this fails here, not in the Rust build, if the wheel is
# broken or a shared library is missing.
read -r TORCH_DIR CXX11_ABI THREADS < <("$VENV/bin/python" -W ignore -c '
import os, torch
print(os.path.dirname(torch.__file__), int(torch._C._GLIBCXX_USE_CXX11_ABI), torch.get_num_threads())
')
[[ -f "$TORCH_DIR/lib/libtorch_cpu.so" ]] || { log "no libtorch_cpu.so under $TORCH_DIR/lib"; exit 1; }
log "libtorch: $TORCH_DIR (cxx11 abi $CXX11_ABI, $THREADS intra-op threads)"

# torch-sys's build script: with LIBTORCH set it takes headers from
# $LIBTORCH_INCLUDE/include and links $LIBTORCH_LIB/lib (both default to
# $LIBTORCH). The pip wheel's torch/ directory has exactly that layout. (The
# alternative, LIBTORCH_USE_PYTORCH=1 with this venv's python first on PATH,
# works too.) torch-sys links libtorch dynamically without an rpath in the
# binary, hence LD_LIBRARY_PATH at run time.
cat <<EOF
export LIBTORCH='$TORCH_DIR'
export LIBTORCH_INCLUDE='$TORCH_DIR'
export LIBTORCH_LIB='$TORCH_DIR'
export LIBTORCH_CXX11_ABI='$CXX11_ABI'
export LD_LIBRARY_PATH='$TORCH_DIR/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF
