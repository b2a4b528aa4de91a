#!/usr/bin/env bash
# Memory and time at the paper's model widths without the real weights: synthetic GPT-J 6B and
# LLaMA-2 7B checkpoints (real widths, random bf16 weights, LAYERS layers; scripts/make_synthetic.py
# in the cached PyTorch environment of scripts/bench_peer.sh), then on each: load time and peak
# RSS with a forward pass, key statistics of one layer over a few thousand tokens, the target
# search for 4 edits (3 Adam steps each: time per step), and EMMET/MEMIT solves at the full
# d_in (16384 / 11008) for B = 1,000 and 10,000 — `editbench bench scale` on each checkpoint
# (OUT/<arch>/scale.json and scale.md), and OUT/scale.json with both.
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
declare -A TOKENIZER=([gpt-j-6b]=gpt2 [llama-2-7b]=llama2)
for arch in gpt-j-6b llama-2-7b; do
  dir="$SYNTH/$arch-${LAYERS}layers"
  [ -e "$dir/config.json" ] || "$VENV/bin/python" scripts/make_synthetic.py "$SYNTH" --layers "$LAYERS" --arch "$arch"
  install -m 644 "$SHARED/tokenizers/${TOKENIZER[$arch]}/tokenizer.json" "$dir/tokenizer.json"
  echo "== $arch" >&2
  "$EB" bench scale --backend "$BACKEND" --model "$dir" --hparams "hparams/$arch.yaml" \
    --corpus "$SHARED/corpus/wikipedia_paragraphs.txt" --out "$OUT/$arch" >/dev/null
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
report = {d.name: json.loads((d / "scale.json").read_text()) for d in sorted(out.iterdir()) if (d / "scale.json").exists()}
(out / "scale.json").write_text(json.dumps(report, indent=1) + "\n")
print("written:", out / "scale.json")
PY
