#!/usr/bin/env python3
"""Make a Falcon-H1-shaped random-weight checkpoint for benchmarking.

Widths default to Falcon-H1-1.5B as transformers' model card lists them (hidden 2048, 8
query / 2 KV heads of 128, Mamba2 48 heads x 64 = mamba_d_ssm 3072, state 256, one group,
conv 4) with fewer layers so it fits a small machine (default 4 of 24). Not in that table, so
assumed: intermediate_size 8192, vocab 65537, untied, mamba_rms_norm false. The muP
multipliers are set away from 1 (they cost nothing). Weights are random (seeded); the logits
are meaningless, only the shapes/dtype matter. Not committed (bench/data is git-ignored).

Usage:  tools/make_falconh1_bench_model.py --out bench/data/falcon-h1-1.5b-4l-bf16
                                           [--dtype bf16|f32] [--layers 4]
"""

import argparse
import os
import shutil
import time

import torch
import transformers
from transformers import FalconH1Config, FalconH1ForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    cfg = dict(
        architectures=["FalconH1ForCausalLM"], vocab_size=65537, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=args.layers, num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, mamba_d_ssm=3072, mamba_n_heads=48, mamba_d_head=64,
        mamba_n_groups=1, mamba_d_state=256, mamba_d_conv=4, mamba_chunk_size=256,
        mamba_conv_bias=True, mamba_proj_bias=False, mamba_rms_norm=False, rope_theta=1e11,
        rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
        embedding_multiplier=5.0, lm_head_multiplier=0.05, attention_in_multiplier=1.0,
        attention_out_multiplier=0.9, key_multiplier=0.4, ssm_in_multiplier=1.2,
        ssm_out_multiplier=0.25, ssm_multipliers=[0.35, 0.25, 0.5, 0.35, 0.17],
        mlp_multipliers=[0.9, 0.6], bos_token_id=1, eos_token_id=11, pad_token_id=0,
    )
    torch.set_default_dtype(DTYPES[args.dtype])
    model = FalconH1ForCausalLM(FalconH1Config(**cfg)).eval()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters ({args.dtype}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
