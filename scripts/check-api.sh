#!/usr/bin/env bash
# The public API as a contract (buf.yaml): `buf lint` on proto/ (mnister.v1;
# the third-party KServe and ONNX files are left as published upstream), and
# `buf breaking` against the first published mnister.v1 API, kept as a buf
# image in tests/api/ (built from commit e8259db, the first with both
# classifier.proto and admin.proto), so that it needs no git history.
# buf comes from npm's @bufbuild/buf, pinned by tests/api/package-lock.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
(cd tests/api && npm ci --no-audit --no-fund --silent)
buf=tests/api/node_modules/.bin/buf
"$buf" lint
"$buf" breaking --against tests/api/mnister-v1-first-published.binpb
echo "buf lint and buf breaking: clean"
