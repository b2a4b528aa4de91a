#!/usr/bin/env python3
"""How far TF32 matrix products move the tiny fixtures' logits from f32 (transformers' golden ones).

burn 0.21's CUDA backend multiplies f32 tensors through cubek-matmul, which stages f32 operands as
TF32 (10 explicit mantissa bits) wherever the device supports it (`adjust_dtypes` in
cubek-matmul 0.2.0, src/definition/blueprint.rs). This script rounds every operand of every matrix
product (linear layers and attention products) to TF32 in PyTorch on the CPU, accumulating in f32,
and prints the largest |Δlogit| against the committed golden logits, per fixture and sequence, next
to what the CUDA backend measured (results/bench/gpu/golden-cuda.json).

    ~/.cache/editbench/venv/bin/python scripts/tf32_check.py [--out FILE]
"""
import argparse, json, pathlib
import torch, transformers

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/models/tests/fixtures"


def tf32(x, mode):
    """x rounded to TF32: 13 low mantissa bits dropped, to nearest (ties away, as cvt.rna) or by truncation."""
    bits = x.contiguous().float().view(torch.int32)
    if mode == "nearest":
        bits = bits + 0x1000
    return (bits & ~0x1FFF).view(torch.float32)


def patched(mode):
    linear, matmul = torch.nn.functional.linear, torch.matmul

    def tf32_linear(x, w, b=None):
        return linear(tf32(x, mode), tf32(w, mode), b)

    def tf32_matmul(a, b):
        return matmul(tf32(a, mode), tf32(b, mode))

    return linear, matmul, tf32_linear, tf32_matmul


def run(mode):
    rows = []
    linear, matmul, tf32_linear, tf32_matmul = patched(mode)
    for golden in sorted(FIXTURES.glob("*/golden.json")):
        g = json.loads(golden.read_text())
        model = transformers.AutoModelForCausalLM.from_pretrained(golden.parent, attn_implementation="eager").float().eval()
        for seq, expected in zip(g["sequences"], g["logits"]):
            torch.nn.functional.linear, torch.matmul = tf32_linear, tf32_matmul
            try:
                with torch.no_grad():
                    got = model(torch.tensor([seq])).logits[0].flatten().tolist()
            finally:
                torch.nn.functional.linear, torch.matmul = linear, matmul
            diff = max(abs(a - b) for a, b in zip(got, expected))
            rows.append({"fixture": golden.parent.name, "tokens": len(seq), "rounding": mode, "max_abs_diff": diff,
                         "max_abs_logit": max(abs(b) for b in expected)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = run("nearest") + run("truncate")
    cuda = {(r["fixture"], r["tokens"]): r.get("max_abs_diff") for r in
            json.loads((ROOT / "results/bench/gpu/golden-cuda.json").read_text())}
    for r in rows:
        r["cuda_max_abs_diff"] = cuda.get((r["fixture"], r["tokens"]))
        print(f'{r["fixture"]:22} {r["tokens"]:3} {r["rounding"]:8} TF32 {r["max_abs_diff"]:.4f}  '
              f'CUDA {r["cuda_max_abs_diff"] if r["cuda_max_abs_diff"] is not None else float("nan"):.4f}  '
              f'|logit| ≤ {r["max_abs_logit"]:.2f}')
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
