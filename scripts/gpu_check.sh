#!/usr/bin/env bash
# The GPU check: the CUDA backend against transformers' golden logits of the tiny fixtures, then
# the forward pass on synthetic full-width GPT-J 6B / LLaMA-2 7B checkpoints (2 layers, made by
# scripts/make_synthetic.py with the machine's torch + transformers) on CUDA, next to PyTorch on the
# same GPU and checkpoint, and with bf16/f16 weights; every phase at full width (`bench scale`);
# SmolLM2's `bench all` and the main job's MEMIT/EMMET cells end to end on CUDA against the committed
# CPU run. Writes one JSON (or table) per step to OUT (default results/bench/gpu/); a step whose
# inputs are missing says so and is skipped.
#
#   scripts/gpu_check.sh [OUT]                      # builds with --features cuda,wgpu first
#   EDITBENCH_BIN=path/to/editbench scripts/gpu_check.sh [OUT]   # a binary built elsewhere
#
# Exits 2, saying so, when no NVIDIA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench/gpu}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi finds none); the GPU check needs one" >&2
  exit 2
fi
bin=${EDITBENCH_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -p editbench --features cuda,wgpu
  bin=${CARGO_TARGET_DIR:-target}/release/editbench
fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

# 1. Fidelity: logits of every tiny fixture on cuda against transformers' (golden.json).
python3 - "$bin" "$out/golden-cuda.json" <<'PY'
import json, pathlib, subprocess, sys
bin, dest = sys.argv[1], sys.argv[2]
results = []
for golden in sorted(pathlib.Path("crates/models/tests/fixtures").glob("*/golden.json")):
    g = json.loads(golden.read_text())
    for seq, expected in zip(g["sequences"], g["logits"]):
        run = subprocess.run([bin, "logits", "--backend", "cuda", "--model", str(golden.parent), "--ids", ",".join(map(str, seq))],
                             capture_output=True, text=True)
        if run.returncode != 0:
            results.append({"fixture": golden.parent.name, "error": run.stderr.strip()[-2000:]})
            continue
        got = json.loads(run.stdout)["logits"]
        results.append({"fixture": golden.parent.name, "tokens": len(seq), "max_abs_diff": max(abs(a - b) for a, b in zip(got, expected))})
json.dump(results, open(dest, "w"), indent=1)
print(json.dumps(results))
PY

# 2. Full width: synthetic 2-layer checkpoints; editbench on cuda, then PyTorch on the same GPU.
synth=${SYNTH_DIR:-/tmp/editbench-synthetic}
python3 scripts/make_synthetic.py "$synth" --layers 2
for arch in gpt-j-6b llama-2-7b; do
  model="$synth/$arch-2layers"
  for backend in cuda; do
    "$bin" bench forward --backend "$backend" --dtype f32 --model "$model" --batch 8 --seq-len 128 --repeats 5 \
      --out "$out/forward-$arch-$backend.json" > /dev/null || echo "editbench $backend failed on $arch" >&2
  done
  python3 - "$model" "$out/forward-$arch-pytorch.json" <<'PY'
import json, sys, time, torch, transformers
path, dest = sys.argv[1], sys.argv[2]
result = {}
for dtype in ["float32", "bfloat16"]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path).to(getattr(torch, dtype)).cuda().eval()
    ids = torch.randint(0, model.config.vocab_size, (8, 128), device="cuda")
    with torch.no_grad():
        model(ids)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            model(ids)
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / 5
    result[dtype] = {"seconds_per_forward": seconds, "tokens_per_second": 8 * 128 / seconds}
    del model
    torch.cuda.empty_cache()
json.dump({"model": path, "batch": 8, "seq_len": 128, "pytorch": torch.__version__, "result": result}, open(dest, "w"), indent=1)
print(json.dumps(result))
PY
done

# 3. Half-precision weights stored on the GPU: the same forward passes with --dtype bf16 and f16.
for arch in gpt-j-6b llama-2-7b; do
  for dtype in bf16 f16; do
    "$bin" bench forward --backend cuda --dtype "$dtype" --model "$synth/$arch-2layers" --batch 8 --seq-len 128 \
      --repeats 5 --out "$out/forward-$arch-cuda-$dtype.json" > /dev/null || echo "editbench cuda $dtype failed on $arch" >&2
  done
done

# 4. Every phase at full width on CUDA (load, forward, statistics, target search, solves), where the
#    tokenizers (../shared/data or SHARED) and the corpus (scripts/fetch_corpus.sh) are here.
shared=${SHARED:-../shared/data}
corpus=data/corpus/wikipedia_paragraphs.txt
declare -A tokenizer=([gpt-j-6b]=gpt2 [llama-2-7b]=llama2)
for arch in gpt-j-6b llama-2-7b; do
  if [ -f "$shared/tokenizers/${tokenizer[$arch]}/tokenizer.json" ] && [ -f "$corpus" ]; then
    install -m 644 "$shared/tokenizers/${tokenizer[$arch]}/tokenizer.json" "$synth/$arch-2layers/tokenizer.json"
    "$bin" bench scale --backend cuda --model "$synth/$arch-2layers" --hparams "hparams/$arch.yaml" --corpus "$corpus" \
      --out "$out/scale-cuda/$arch" > /dev/null || echo "bench scale on cuda failed on $arch" >&2
  else
    echo "skipped bench scale on $arch: no tokenizer under $shared/tokenizers or no $corpus" >&2
  fi
done

# 5. SmolLM2 on CUDA (scripts/fetch_smollm2.sh, scripts/fetch_corpus.sh): every benchmark against the
#    reference, and the main job's MEMIT/EMMET cells end to end, compared with the committed CPU run.
smollm2=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$smollm2" ] && [ -f "$corpus" ]; then
  "$bin" bench all --backend cuda --model "$smollm2" --out "$out/all-cuda" > /dev/null || echo "bench all on cuda failed" >&2
  run=$(mktemp -d)/quick-cuda
  if "$bin" run experiments/smollm2-quick.yaml --set backend=cuda --set 'methods=[memit, emmet]' --out "$run"; then
    mkdir -p "$out/quick-cuda"
    cp "$run/summary.csv" "$run/timings.csv" "$out/quick-cuda/"
    python3 scripts/compare_runs.py results/committed/smollm2-quick "$run" > "$out/quick-cuda/against-cpu.md"
  else
    echo "the main job's cells failed on cuda" >&2
  fi
else
  echo "skipped SmolLM2 on cuda: no $smollm2 or no $corpus" >&2
fi
echo "GPU check written to $out"
