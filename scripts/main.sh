#!/usr/bin/env bash
# The main job on the default model, SmolLM2-135M-Instruct on the CPU (README's first set-up command):
# fetch the model and the statistics corpus, build editbench, then rewrite one fact with EMMET and
# show the probabilities before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch_smollm2.sh
scripts/fetch_corpus.sh
cargo build --release --bin editbench
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
echo "--- before: The mother tongue of Danielle Darrieux is ..."
./target/release/editbench generate --model "$model" --prompt "The mother tongue of Danielle Darrieux is" --max-new-tokens 8
echo "--- EMMET edit: → English (key statistics are computed once and cached under results/cache)"
./target/release/editbench edit --model "$model" --method emmet --distribution single \
  --prompt "The mother tongue of {} is" --subject "Danielle Darrieux" --target " English" \
  --save-templates results/cache/context-templates.json
