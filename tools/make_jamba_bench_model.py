#!/usr/bin/env python3
"""Make a Jamba-shaped random-weight checkpoint for benchmarking.

Widths default to ai21labs/AI21-Jamba-Mini-1.5 (= Jamba-v0.1: hidden 4096, 32 query / 8 KV heads
of 128, no positions, Mamba inner 8192 (expand 2), state 16, conv 4, dt rank 256, MLP and
expert width 14336, vocab 65536, untied) with few layers so it fits a small machine: by default
4 layers — Mamba+MLP, Mamba+MoE, attention+MLP, Mamba+MLP (attn_layer_period 4 / offset 2,
expert_layer_period 4 / offset 1; the real model: 8 / 4 and 2 / 1 over 32 layers) — and 4
experts top-2 instead of 16 (each expert is 176M parameters; a token reads 2 of them either
way). Weights are random (seeded); the logits are meaningless, only the shapes/dtype matter.

Usage:  tools/make_jamba_bench_model.py --out bench/data/jamba-mini-4l-bf16
                                        [--dtype bf16|f32] [--layers 4] [--experts 4]
"""

import argparse
import os
import shutil
import time

import torch
import transformers
from transformers import JambaConfig, JambaForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    cfg = JambaConfig(
        architectures=["JambaForCausalLM"], vocab_size=65536, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=8,
        num_experts=args.experts, num_experts_per_tok=2, attn_layer_period=4, attn_layer_offset=2,
        expert_layer_period=4, expert_layer_offset=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
        mamba_dt_rank=256, mamba_conv_bias=True, mamba_proj_bias=False, rms_norm_eps=1e-6,
        hidden_act="silu", tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.set_default_dtype(DTYPES[args.dtype])
    with torch.device("meta"):
        model = JambaForCausalLM(cfg)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # small random weights; norms at 1, A_log = log(1..N), D = 1
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.arange(1, p.shape[1] + 1, dtype=torch.float32)).expand_as(p))
            elif p.dim() == 1:
                p.fill_(1.0) if ("norm" in name or name.endswith(".D")) else p.normal_(0, 0.02)
            else:
                p.normal_(0, 0.02)
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters ({args.dtype}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
