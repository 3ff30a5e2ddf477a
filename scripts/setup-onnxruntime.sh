#!/usr/bin/env bash
# Provisions ONNX Runtime for mnister: downloads the pinned onnxruntime wheel
# from PyPI, checks its sha256 and extracts libonnxruntime.so into
# .onnxruntime/lib (git-ignored). Idempotent: a library that is already in
# place with the expected checksum is left alone.
#
# Usage: scripts/setup-onnxruntime.sh [DEST_DIR]
# The server and trainer find the library at .onnxruntime/lib/libonnxruntime.so
# or wherever MNISTER_ORT_LIB points.
set -euo pipefail

ORT_VERSION=1.32.0
# The wheel is pinned by platform too, so the same bytes come down whatever
# Python runs pip.
WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/.onnxruntime}"
lib_dir="$dest/lib"
stamp="$lib_dir/.installed-$ORT_VERSION"

if [[ "$(uname -m)" != "x86_64" || "$(uname -s)" != "Linux" ]]; then
  echo "setup-onnxruntime: only linux x86_64 is pinned here (this is $(uname -s) $(uname -m))." >&2
  echo "Install ONNX Runtime ${ORT_VERSION} yourself and point MNISTER_ORT_LIB at libonnxruntime.so." >&2
  exit 1
fi

if [[ -f "$stamp" && -f "$lib_dir/libonnxruntime.so.$ORT_VERSION" ]] \
  && (cd "$lib_dir" && sha256sum --quiet -c "$stamp" 2>/dev/null); then
  echo "ONNX Runtime $ORT_VERSION already installed in $lib_dir"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "Downloading onnxruntime==$ORT_VERSION from PyPI ..."
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_x86_64 \
  "onnxruntime==$ORT_VERSION" -d "$tmp"

if [[ ! -f "$tmp/$WHEEL" ]]; then
  echo "setup-onnxruntime: expected $WHEEL, pip fetched: $(ls "$tmp")" >&2
  exit 1
fi
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum --quiet -c - || {
  echo "setup-onnxruntime: sha256 mismatch for $WHEEL (expected $WHEEL_SHA256); refusing to install it." >&2
  exit 1
}

python3 - "$tmp/$WHEEL" "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime.so."):
            z.extract(name, sys.argv[2])
PY
mkdir -p "$lib_dir"
cp "$tmp/x/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$lib_dir/"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$lib_dir/libonnxruntime.so"
(cd "$lib_dir" && sha256sum "libonnxruntime.so.$ORT_VERSION" > "$stamp")
echo "ONNX Runtime $ORT_VERSION installed in $lib_dir"
