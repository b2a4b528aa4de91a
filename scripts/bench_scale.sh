#!/usr/bin/env bash
# Memory and time at the paper's model widths without the real weights: synthetic GPT-J 6B and
# LLaMA-2 7B checkpoints (real widths, random bf16 weights, LAYERS layers; scripts/make_synthetic.py
# in the cached PyTorch environment of scripts/bench_peer.sh), then on each: load time and peak
# RSS with a forward pass, key statistics of one layer over a few thousand tokens, the target
# search for 4 edits (3 Adam steps each: time per step), and EMMET/MEMIT solves at the full
# d_in (16384 / 11008) for B = 1,000 and 10,000. One JSON per phase and model under OUT, and
# OUT/scale.json with all of them.
#   scripts/bench_scale.sh [OUT] [BACKEND]      (default: results/bench/scale-cpu, cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/bench/scale-cpu}
BACKEND=${2:-cpu}
LAYERS=${LAYERS:-2}
SYNTH=${SYNTH:-$HOME/.cache/editbench/synthetic}
SHARED=${SHARED:-../shared/data}
VENV=${EDITBENCH_PEER_VENV:-$HOME/.cache/editbench/venv}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/editbench/target}"
EB="$CARGO_TARGET_DIR/release/editbench"
[ -x "$EB" ] || cargo build --release -q -p editbench
mkdir -p "$OUT" "$SYNTH"
if ! "$VENV/bin/python" -c "import torch, transformers" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers
fi
declare -A TOKENIZER=([gpt-j-6b]=gpt2 [llama-2-7b]=llama2) HPARAMS=([gpt-j-6b]=gpt-j-6b [llama-2-7b]=llama-2-7b) DIM=([gpt-j-6b]=16384 [llama-2-7b]=11008)
for arch in gpt-j-6b llama-2-7b; do
  dir="$SYNTH/$arch-${LAYERS}layers"
  [ -e "$dir/config.json" ] || "$VENV/bin/python" scripts/make_synthetic.py "$SYNTH" --layers "$LAYERS" --arch "$arch"
  install -m 644 "$SHARED/tokenizers/${TOKENIZER[$arch]}/tokenizer.json" "$dir/tokenizer.json"
  # The family's search settings, moved to layer 0 (one block and the head above it), 3 Adam steps.
  hp="$OUT/$arch-hparams.yaml"
  sed -E "s/^(  layer:) .*/\1 0/; s/^(  spread_layers:) .*/\1 [0]/; s/^(  v_num_grad_steps:) .*/\1 3/" "hparams/${HPARAMS[$arch]}.yaml" > "$hp"
  echo "== $arch: forward (load time, peak RSS)" >&2
  "$EB" bench forward --backend "$BACKEND" --model "$dir" --batch 1 --seq-len 128 --repeats 1 --out "$OUT/$arch-forward.json" >/dev/null
  echo "== $arch: statistics of layer 0" >&2
  "$EB" bench stats --backend "$BACKEND" --model "$dir" --layers 0 --corpus "$SHARED/corpus/wikipedia_paragraphs.txt" --samples 40 --out "$OUT/$arch-stats.json" >/dev/null
  echo "== $arch: target search, 4 edits" >&2
  "$EB" bench targets --backend "$BACKEND" --model "$dir" --hparams "$hp" --edits 4 --single 0 --fixed-templates --out "$OUT/$arch-targets.json" >/dev/null
  echo "== $arch: solves at d_in ${DIM[$arch]}" >&2
  "$EB" bench solve --dim "${DIM[$arch]}" --d-out 4096 --batches 1000,10000 --out "$OUT/$arch-solve.json" >/dev/null
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
report = {f.stem: json.loads(f.read_text()) for f in sorted(out.glob("*.json")) if f.name != "scale.json"}
(out / "scale.json").write_text(json.dumps(report, indent=1) + "\n")
print("written:", out / "scale.json")
PY
