#!/usr/bin/env bash
# The same-run yardstick against PyTorch: times the SmolLM2 forward pass (8 × 128 tokens), a
# one-layer key-statistics pass and the f32 GEMM at the MLP's shape in editbench and in PyTorch +
# transformers (f32, the same GGUF weights dequantised by transformers, the same thread count), on
# this machine, one after the other, and writes both reports with the ratios to one JSON file.
#   scripts/bench_peer.sh [MODEL.gguf|HF_DIR] [OUT.json]
# PyTorch lives in a cached virtual environment (EDITBENCH_PEER_VENV, default
# ~/.cache/editbench/venv), created on first use from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${2:-results/bench/peer/$(date +%F).json}
CORPUS=${CORPUS:-data/corpus/wikipedia_paragraphs.txt}
SAMPLES=${SAMPLES:-200}
LAYER=${LAYER:-4}
VENV=${EDITBENCH_PEER_VENV:-$HOME/.cache/editbench/venv}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/editbench/target}"

[ -e "$MODEL" ] || { echo "error: $MODEL not found (scripts/fetch_smollm2.sh fetches SmolLM2)" >&2; exit 1; }
[ -e "$CORPUS" ] || { echo "error: $CORPUS not found (scripts/fetch_corpus.sh, or set CORPUS=FILE)" >&2; exit 1; }
if ! "$VENV/bin/python" -c "import torch, transformers, gguf, accelerate" 2>/dev/null; then
  echo "setting up PyTorch + transformers in $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers gguf sentencepiece accelerate
fi
cargo build --release -q -p editbench
EB="$CARGO_TARGET_DIR/release/editbench"
THREADS=$(nproc)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$EB" bench forward --model "$MODEL" --batch 8 --seq-len 128 --out "$TMP/forward.json" >/dev/null
"$EB" bench stats --model "$MODEL" --layers "$LAYER" --corpus "$CORPUS" --samples "$SAMPLES" --out "$TMP/stats.json" >/dev/null
mkdir -p "$(dirname "$OUT")"
"$VENV/bin/python" scripts/bench_peer.py --model "$MODEL" --corpus "$CORPUS" --layer "$LAYER" --samples "$SAMPLES" \
  --threads "$THREADS" --editbench-forward "$TMP/forward.json" --editbench-stats "$TMP/stats.json" --out "$OUT"
echo "written: $OUT" >&2
