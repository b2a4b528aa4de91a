#!/usr/bin/env bash
# The main job on the default model, SmolLM2-135M-Instruct on the CPU (README's first set-up command):
# fetch the model and the statistics corpus, build editbench, rewrite one fact with EMMET (a quick
# look), then run the experiments/smollm2-quick.yaml sweep (ROME, r-ROME, MEMIT, EMMET × single/spread ×
# batch size 1/16 on 16 CounterFact records) and write its report. Rerunning resumes the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch_smollm2.sh
scripts/fetch_corpus.sh
cargo build --release --bin editbench
bin="${CARGO_TARGET_DIR:-target}/release/editbench"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
echo "--- EMMET edit: The mother tongue of Danielle Darrieux is → English (key statistics are computed once and cached)"
"$bin" edit --model "$model" --method emmet --distribution single \
  --prompt "The mother tongue of {} is" --subject "Danielle Darrieux" --target " English"
echo "--- sweep experiments/smollm2-quick.yaml → results/smollm2-quick/"
"$bin" run experiments/smollm2-quick.yaml
"$bin" report results/smollm2-quick
