#!/usr/bin/env python3
"""Synthetic full-width checkpoints: the real widths of GPT-J 6B and LLaMA-2 7B with random weights
and only a few layers, as Hugging Face directories (bf16 safetensors), to measure memory and time
at real sizes without the real weights.

    python3 scripts/make_synthetic.py OUT_DIR [--layers 2] [--arch gpt-j-6b|llama-2-7b|all]

Needs torch and transformers (e.g. in a virtual environment). Seeded (torch.manual_seed(0)).
"""
import argparse
import pathlib

import torch
import transformers

ARCHS = {
    "gpt-j-6b": lambda layers: transformers.GPTJConfig(
        vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=layers, n_head=16, rotary_dim=64,
        n_inner=16384, activation_function="gelu_new", tie_word_embeddings=False),
    "llama-2-7b": lambda layers: transformers.LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--arch", default="all", choices=[*ARCHS, "all"])
    args = parser.parse_args()
    for name in ARCHS if args.arch == "all" else [args.arch]:
        torch.manual_seed(0)
        config = ARCHS[name](args.layers)
        model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        out = pathlib.Path(args.out) / f"{name}-{args.layers}layers"
        model.save_pretrained(out, safe_serialization=True)
        print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters)")


if __name__ == "__main__":
    main()
