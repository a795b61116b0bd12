#!/usr/bin/env python3
"""Make a Qwen3-Next-shaped random-weight checkpoint for benchmarking.

Widths default to Qwen/Qwen3-Next-80B-A3B (hidden 2048, 16 query / 2 KV heads of 256 with a
sigmoid output gate and partial RoPE 0.25, Gated DeltaNet with 16 key heads / 32 value heads
of 128 and conv 4, MoE experts of width 512 top-10 with a shared expert of 512, vocab 151936,
untied) with fewer layers and experts so it fits a small machine: by default 4 layers (GDN,
GDN, GDN, attention: the real model's 3:1 pattern over 48 layers) and 64 experts (the real
model has 512; decode reads only the 10 routed ones). Weights are random (seeded); the logits
are meaningless, only the shapes/dtype matter.

Usage:  tools/make_qwen3next_bench_model.py --out bench/data/qwen3next-4l-bf16
                                            [--dtype bf16|f32] [--layers 4] [--experts 64]
"""

import argparse
import os
import shutil
import time

import torch
import transformers
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    cfg = dict(
        architectures=["Qwen3NextForCausalLM"], vocab_size=151936, hidden_size=2048,
        num_hidden_layers=args.layers, full_attention_interval=4, num_attention_heads=16,
        num_key_value_heads=2, head_dim=256, intermediate_size=5120, linear_conv_kernel_dim=4,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
        linear_num_value_heads=32, decoder_sparse_step=1, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, num_experts=args.experts, num_experts_per_tok=10,
        norm_topk_prob=True, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        bos_token_id=151643, eos_token_id=151645,
    )
    torch.set_default_dtype(DTYPES[args.dtype])
    model = Qwen3NextForCausalLM(Qwen3NextConfig(**cfg)).eval()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters ({args.dtype}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
