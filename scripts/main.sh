#!/usr/bin/env bash
# The main job on the default model, SmolLM2-135M-Instruct on the CPU (README's first set-up command):
# fetch the model, build editbench, ask the model a CounterFact question, benchmark its forward pass.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch_smollm2.sh
cargo build --release --bin editbench
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p results
echo "--- generate: The mother tongue of Danielle Darrieux is ..."
./target/release/editbench generate --model "$model" --prompt "The mother tongue of Danielle Darrieux is" --max-new-tokens 12
echo "--- bench forward (8 x 128 tokens), written to results/bench-forward-cpu.json"
./target/release/editbench bench forward --model "$model" --out results/bench-forward-cpu.json
