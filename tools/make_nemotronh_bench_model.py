#!/usr/bin/env python3
"""Make a Nemotron-H-shaped random-weight checkpoint for benchmarking.

Widths default to nvidia/Nemotron-H-8B-Base-8K (hidden 4096, 32 query / 8 KV heads of 128,
Mamba2 128 heads x 64, 8 groups, state 128, conv 4, relu² MLP 21504, vocab 131072, untied)
with a short pattern so it fits a small machine: by default "M-M*M-" (the real model has 52
blocks, "M-M-M-M*-" repeated). --moe gives the NVIDIA-Nemotron-3-Nano-30B-A3B widths instead
(hidden 2688, 32/2 heads of 128, 64 Mamba heads x 64, 128 experts top-6 of width 1856, shared
expert 3712, routed_scaling_factor 2.5), default pattern "MEM*ME". Weights are random (seeded);
the logits are meaningless, only the shapes/dtype matter.

Usage:  tools/make_nemotronh_bench_model.py --out bench/data/nemotronh-8b-6l-bf16
                                            [--dtype bf16|f32] [--pattern M-M*M-] [--moe]
"""

import argparse
import os
import shutil
import time

import torch
import transformers
from transformers import NemotronHConfig, NemotronHForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--pattern", default=None, help="hybrid_override_pattern (M, *, -, E)")
    ap.add_argument("--moe", action="store_true", help="Nemotron-3-Nano-30B-A3B widths (MoE)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    common = dict(
        architectures=["NemotronHForCausalLM"], vocab_size=131072, head_dim=128, mamba_head_dim=64,
        n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128, use_conv_bias=True,
        use_bias=False, mlp_bias=False, mlp_hidden_act="relu2", layer_norm_epsilon=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if args.moe:
        cfg = dict(hidden_size=2688, num_attention_heads=32, num_key_value_heads=2, mamba_num_heads=64,
                   intermediate_size=1856, n_routed_experts=128, num_experts_per_tok=6,
                   moe_intermediate_size=1856, moe_shared_expert_intermediate_size=3712,
                   n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
                   hybrid_override_pattern=args.pattern or "MEM*ME")
    else:
        cfg = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, mamba_num_heads=128,
                   intermediate_size=21504, hybrid_override_pattern=args.pattern or "M-M*M-")
    cfg.update(common)
    torch.set_default_dtype(DTYPES[args.dtype])
    model = NemotronHForCausalLM(NemotronHConfig(**cfg)).eval()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters ({args.dtype}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
