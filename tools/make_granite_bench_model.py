#!/usr/bin/env python3
"""Make a Granite-4.0-H-shaped random-weight checkpoint for benchmarking.

Widths default to ibm-granite/granite-4.0-h-tiny (hidden 1536, 12 query / 4 KV heads of 128,
Mamba2 48 heads x 64, state 128, one group, conv 4, 64 experts top-6 of width 512, shared
MLP 1024, vocab 100352, tied, no positional encoding, its multipliers) with fewer layers so
it fits a small machine: by default 8 layers with attention at indices 3 and 7 (the real
model has 40 with attention at 5, 15, 25, 35). --dense gives the granite-4.0-h-micro widths
instead (hidden 2048, 32/8 heads of 64, 64 Mamba heads, dense shared MLP 8192). Weights are
random (seeded); the logits are meaningless, only the shapes/dtype matter.

Usage:  tools/make_granite_bench_model.py --out bench/data/granite-h-tiny-8l-bf16
                                          [--dtype bf16|f32] [--layers 8] [--attn 3,7] [--dense]
"""

import argparse
import os
import shutil
import time

import torch
import transformers
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--attn", default="3,7", help="comma-separated attention layer indices")
    ap.add_argument("--dense", action="store_true", help="granite-4.0-h-micro widths (no MoE)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    attn = {int(x) for x in args.attn.split(",") if x}
    common = dict(
        architectures=["GraniteMoeHybridForCausalLM"], vocab_size=100352, num_hidden_layers=args.layers,
        layer_types=["attention" if i in attn else "mamba" for i in range(args.layers)],
        mamba_d_head=64, mamba_n_groups=1, mamba_d_state=128, mamba_d_conv=4, mamba_expand=2,
        mamba_chunk_size=256, mamba_conv_bias=True, mamba_proj_bias=False, position_embedding_type="nope",
        rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True, attention_bias=False,
        bos_token_id=100257, eos_token_id=100257, pad_token_id=100256,
    )
    if args.dense:
        cfg = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, mamba_n_heads=64,
                   num_local_experts=0, num_experts_per_tok=0, intermediate_size=8192,
                   shared_intermediate_size=8192, embedding_multiplier=12.0, residual_multiplier=0.22,
                   attention_multiplier=0.015625, logits_scaling=8.0)
    else:
        cfg = dict(hidden_size=1536, num_attention_heads=12, num_key_value_heads=4, mamba_n_heads=48,
                   num_local_experts=64, num_experts_per_tok=6, intermediate_size=512,
                   shared_intermediate_size=1024, embedding_multiplier=12.0, residual_multiplier=0.22,
                   attention_multiplier=0.0078125, logits_scaling=6.0)
    cfg.update(common)
    torch.set_default_dtype(DTYPES[args.dtype])
    model = GraniteMoeHybridForCausalLM(GraniteMoeHybridConfig(**cfg)).eval()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters ({args.dtype}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
