#!/usr/bin/env python3
"""The PyTorch side of scripts/bench_peer.sh: the same forward pass, one-layer statistics pass and
GEMM at the MLP's shape that `editbench bench forward` / `bench stats` time, in PyTorch +
transformers (f32, the same dequantised GGUF weights, the same thread count), and the ratios to
editbench's JSON reports.

    bench_peer.py --model M.gguf --corpus C.txt --layer 4 --samples N --threads T \
        --editbench-forward F.json --editbench-stats S.json --out OUT.json
"""
import argparse
import json
import pathlib
import platform
import time

import torch
import transformers


def best_seconds(repeats, f):
    f()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def lcg_prompts(batch, seq_len, vocab):
    """editbench's fixed pseudo-random prompts (bench forward: LCG, seed 0)."""
    state, rows = 0, []
    for _ in range(batch):
        row = []
        for _ in range(seq_len):
            state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
            row.append((state >> 33) % vocab)
        rows.append(row)
    return torch.tensor(rows)


class Stop(Exception):
    """Raised by the hook: the statistics pass needs nothing above the layer (as in editbench)."""


def forward_bench(model, batch, seq_len, repeats):
    ids = lcg_prompts(batch, seq_len, model.config.vocab_size)
    with torch.no_grad():
        seconds = best_seconds(repeats, lambda: model(ids))
    return {"batch": batch, "seq_len": seq_len, "seconds_per_forward": seconds, "tokens_per_second": batch * seq_len / seconds}


def gemm_bench(m, k, n, repeats=5):
    """f32 `[m, k] × [k, n]` at editbench's GEMM probe shape (bench.rs `gemm_gflops`: best of 5)."""
    a, b = torch.rand(m, k), torch.rand(k, n)
    seconds = best_seconds(repeats, lambda: a @ b)
    return {"m": m, "k": k, "n": n, "seconds": seconds, "gflops_per_second": 2 * m * k * n / seconds / 1e9}


def stats_bench(model, tokenizer, corpus, layer, samples, max_length=1024, batch_tokens=4096):
    """C = Σ k kᵀ in f64 over the down_proj inputs of `layer`, paragraphs batched to ~batch_tokens."""
    lines = [l for l in pathlib.Path(corpus).read_text().splitlines() if l.strip()][:samples]
    texts = [tokenizer(l, truncation=True, max_length=max_length)["input_ids"] for l in lines]
    d = model.config.intermediate_size
    cov = torch.zeros(d, d, dtype=torch.float64)
    count = 0

    def hook(_module, inputs):
        k = inputs[0].reshape(-1, d)[mask.reshape(-1)].double()
        cov.addmm_(k.T, k)
        raise Stop

    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook)
    started = time.perf_counter()
    batch = []
    with torch.no_grad():
        for i, ids in enumerate(texts + [None]):
            if ids is not None and (not batch or (len(batch) + 1) * max(len(ids), *map(len, batch)) <= batch_tokens):
                batch.append(ids)
                continue
            width = max(map(len, batch))
            padded = torch.tensor([b + [0] * (width - len(b)) for b in batch])
            mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch]).bool()
            try:
                model(padded, attention_mask=mask.long())
            except Stop:
                pass
            count += int(mask.sum())
            batch = [ids] if ids is not None else []
    handle.remove()
    seconds = time.perf_counter() - started
    return {"layer": layer, "paragraphs": len(texts), "tokens": count, "seconds": seconds, "tokens_per_second": count / seconds}


def main():
    p = argparse.ArgumentParser()
    for flag in ["--model", "--corpus", "--editbench-forward", "--editbench-stats", "--out"]:
        p.add_argument(flag, required=True)
    p.add_argument("--layer", type=int, default=4)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    path = pathlib.Path(a.model)
    load = dict(gguf_file=path.name) if path.suffix == ".gguf" else {}
    where = path.parent if path.suffix == ".gguf" else path
    model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **load).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, **load)
    ours_forward = json.loads(pathlib.Path(a.editbench_forward).read_text())["report"]["result"]
    ours_stats = json.loads(pathlib.Path(a.editbench_stats).read_text())["report"]["result"]
    forward = forward_bench(model, ours_forward["batch"], ours_forward["seq_len"], a.repeats)
    gemm = gemm_bench(*(ours_forward["gemm"][x] for x in "mkn"))
    stats = stats_bench(model, tokenizer, a.corpus, a.layer, a.samples)
    report = {
        "machine": {"processor": platform.processor() or platform.machine(), "threads": a.threads},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": a.model,
        "pytorch": {"forward": forward, "gemm": gemm, "stats": stats},
        "editbench": {"forward": ours_forward, "stats": ours_stats},
        "ratios_editbench_over_pytorch": {
            "forward_tokens_per_second": ours_forward["tokens_per_second"] / forward["tokens_per_second"],
            # editbench's forward passes as its phases run them: the batch in passes side by side.
            "forward_side_by_side_tokens_per_second":
                ours_forward["side_by_side"]["tokens_per_second"] / forward["tokens_per_second"],
            # the matmul goal: ≥ 0.85 of PyTorch's rate at the MLP's shape.
            "gemm_gflops_per_second":
                ours_forward["gemm"]["gflops_per_second"] / gemm["gflops_per_second"],
            "stats_tokens_per_second": ours_stats["tokens_per_second"] / stats["tokens_per_second"],
        },
    }
    pathlib.Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios_editbench_over_pytorch"], indent=2))


if __name__ == "__main__":
    main()
