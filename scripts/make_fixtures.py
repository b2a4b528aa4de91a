#!/usr/bin/env python3
"""Make the tiny random checkpoints and golden logits that the models crate's tests compare against.

Uses Hugging Face transformers as the reference implementation. Run once by a developer; the outputs
(a few hundred KB) are committed under crates/models/tests/fixtures so CI needs no Python:

    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors gguf numpy
    .venv/bin/python scripts/make_fixtures.py [NAME ...]     # default: every fixture

Fixtures
  tiny-gptj/             GPT-J, partial rotary (rotary_dim 8 of head size 16), f32 safetensors
  tiny-llama/            LLaMA, full multi-head attention, f16 safetensors, config in the transformers
                         4.x spelling (rope_theta, torch_dtype)
  tiny-llama-gqa-tied/   LLaMA with grouped-query attention (4 query / 2 key-value heads) and tied
                         embeddings, bf16, sharded (model.safetensors.index.json), 5.x config spelling
  tiny-llama.gguf        tiny-llama's weights as GGUF (F32, q/k rows permuted as llama.cpp's converter does)
  tiny-gpt2/             GPT-2 (Conv1D weights, learned positions, tied head), f32, tensor names without the
                         `transformer.` prefix as in the hub's openai-community checkpoints
  tiny-llama3/           LLaMA with LLaMA-3 rotary scaling (`rope_scaling.rope_type: llama3`, 4.x spelling), f32
  tiny-mistral/          Mistral with a sliding window of 16 tokens (longer than every golden sequence), f32
  tiny-qwen2/            Qwen2 (biases on q/k/v only, tied embeddings, grouped-query attention), f32
  quant.gguf + quant.json  random tensors quantised to Q8_0 / Q4_0 / Q4_1 by gguf-py, with gguf-py's
                         dequantised values
Each checkpoint directory has golden.json: {"sequences": [[ids]], "logits": [[T*V floats]]}, the logits
of each sequence run alone (no padding), computed in f32 by transformers from the checkpoint as saved.
"""
import json
import pathlib
import sys

import numpy as np
import torch
import transformers
import gguf
import safetensors.torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates" / "models" / "tests" / "fixtures"
VOCAB = 128
COMMON = dict(vocab_size=VOCAB, initializer_range=0.3)
SEQUENCES = [[1, 5, 9, 77, 3, 100, 42], [7, 2], [120, 64, 8, 8, 19, 31, 2, 90, 111, 6, 45]]


def randomise(model, seed):
    """transformers initialises norms to 1 and biases to 0; make every parameter informative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.copy_((1.0 + 0.2 * torch.randn(p.shape, generator=g)) if name.endswith("weight") else 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def golden(model):
    model.eval()
    rows = []
    with torch.no_grad():
        for seq in SEQUENCES:
            logits = model(torch.tensor([seq])).logits[0].float()
            rows.append([round(x, 7) for x in logits.flatten().tolist()])
    return {"sequences": SEQUENCES, "logits": rows}


def save(model, name, dtype, **save_kwargs):
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    model.to(dtype).save_pretrained(out, **save_kwargs)
    # Reload as a user would: f32 weights exactly as stored. (Converting the in-memory model back
    # instead would keep its rotary frequency buffer rounded to f16/bf16.)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    (out / "golden.json").write_text(json.dumps(golden(reference)))
    return out, reference


def config_v4(path):
    """Rewrite a transformers-5 config.json in the 4.x spelling that real GPT-J/LLaMA-2 checkpoints use."""
    cfg = json.loads(path.read_text())
    params = cfg.pop("rope_parameters", None)
    if params:
        cfg["rope_theta"] = params["rope_theta"]
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2))


def permute_for_llama_cpp(w, heads):
    """llama.cpp's convert_hf_to_gguf reorders q/k rows so each head's rotary halves interleave."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, cfg, path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    names = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for name, t in model.state_dict().items():
        t = t.float().numpy()
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{layer}.{names[module]}.{kind}"
            if module == "self_attn.q_proj":
                t = permute_for_llama_cpp(t, cfg.num_attention_heads)
            if module == "self_attn.k_proj":
                t = permute_for_llama_cpp(t, cfg.num_key_value_heads)
        w.add_tensor(out, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_quant_fixture():
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(OUT / "quant.gguf"), "none")
    expected = {}
    for name, kind in [("q8_0", gguf.GGMLQuantizationType.Q8_0), ("q4_0", gguf.GGMLQuantizationType.Q4_0), ("q4_1", gguf.GGMLQuantizationType.Q4_1)]:
        x = rng.normal(size=(2, 64)).astype(np.float32)
        q = gguf.quants.quantize(x, kind)
        w.add_tensor(name, q, raw_dtype=kind)
        expected[name] = {"shape": [2, 64], "values": [float(v) for v in gguf.quants.dequantize(q, kind).flatten()]}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (OUT / "quant.json").write_text(json.dumps(expected))


def make_gptj():
    torch.manual_seed(0)
    gptj = transformers.GPTJForCausalLM(transformers.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, **COMMON))
    randomise(gptj, 1)
    save(gptj, "tiny-gptj", torch.float32)


def make_llama():
    torch.manual_seed(0)
    llama_cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5,
                                         tie_word_embeddings=False, **COMMON)
    llama = transformers.LlamaForCausalLM(llama_cfg)
    randomise(llama, 2)
    out, reference = save(llama, "tiny-llama", torch.float16)
    config_v4(out / "config.json")
    write_llama_gguf(reference, llama_cfg, OUT / "tiny-llama.gguf")


def make_llama_gqa_tied():
    torch.manual_seed(0)
    gqa = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True, **COMMON))
    randomise(gqa, 3)
    save(gqa, "tiny-llama-gqa-tied", torch.bfloat16, max_shard_size="40KB")


def make_gpt2():
    """GPT-2 as the hub's openai-community checkpoints store it: no `transformer.` prefix."""
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **COMMON))
    randomise(gpt2, 4)
    out = OUT / "tiny-gpt2"
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    gpt2.save_pretrained(out)
    tensors = safetensors.torch.load_file(out / "model.safetensors")
    stripped = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    safetensors.torch.save_file(stripped, out / "model.safetensors", metadata={"format": "pt"})
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    (out / "golden.json").write_text(json.dumps(golden(reference)))


def make_llama3():
    """LLaMA-3 frequency scaling, config in the 4.x spelling real LLaMA-3.1 checkpoints use. With
    head size 16, θ = 10,000 and an original context of 32, the 8 frequencies fall in all three
    bands (kept, interpolated, divided by the factor)."""
    torch.manual_seed(0)
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    llama3 = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, rope_parameters=rope, tie_word_embeddings=False, **COMMON))
    randomise(llama3, 5)
    out, _ = save(llama3, "tiny-llama3", torch.float32)
    cfg = json.loads((out / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def make_mistral():
    torch.manual_seed(0)
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, sliding_window=16, tie_word_embeddings=False, **COMMON))
    randomise(mistral, 6)
    save(mistral, "tiny-mistral", torch.float32)


def make_qwen2():
    torch.manual_seed(0)
    qwen2 = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=True, **COMMON))
    randomise(qwen2, 7)
    save(qwen2, "tiny-qwen2", torch.float32)


FIXTURES = {
    "tiny-gptj": make_gptj, "tiny-llama": make_llama, "tiny-llama-gqa-tied": make_llama_gqa_tied,
    "tiny-gpt2": make_gpt2, "tiny-llama3": make_llama3, "tiny-mistral": make_mistral, "tiny-qwen2": make_qwen2,
    "quant": write_quant_fixture,
}


def main():
    """Writes the fixtures named on the command line (default: all)."""
    OUT.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or list(FIXTURES)
    for name in names:
        FIXTURES[name]()
    print("fixtures", ", ".join(names), "written to", OUT, "with transformers", transformers.__version__)


if __name__ == "__main__":
    main()
