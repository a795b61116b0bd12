#!/usr/bin/env python3
"""Make a recurrentgemma-2b-shaped random-weight checkpoint for benchmarking.

Geometry defaults to google/recurrentgemma-2b (hidden 2560, 10 heads of 256 on 1 kv head,
lru_width 2560, MLP 7680, window 2048, conv 4, vocab 256000, tied) with fewer layers
(default 6 = two r,r,a periods) so it fits a small machine. Tensors are written directly
(random normal, scaled like the init, in the chosen dtype) without building the model in
memory; the logits are meaningless, only shapes and dtype matter.

Usage:  tools/make_recurrentgemma_bench_model.py --out bench/data/rg2b-6l-bf16
            [--dtype bf16|f32|f16] [--layers 6] [--vocab 256000] [--seed 0]
"""

import argparse
import json
import math
import os
import shutil
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=256000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    config = RecurrentGemmaConfig(
        architectures=["RecurrentGemmaForCausalLM"],
        num_hidden_layers=args.layers,
        vocab_size=args.vocab,
        hidden_size=2560,
        intermediate_size=15360,
        num_attention_heads=10,
        num_key_value_heads=1,
        lru_width=2560,
        attention_window_size=2048,
        conv1d_width=4,
        logits_soft_cap=30.0,
        rms_norm_eps=1e-6,
        block_types=["recurrent", "recurrent", "attention"],
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = RecurrentGemmaForCausalLM(config)
    gen = torch.Generator().manual_seed(args.seed)
    dt = DTYPES[args.dtype]
    tensors = {}
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            continue  # tied
        shape = tuple(p.shape)
        if len(shape) >= 2:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1] if len(shape) == 2 else shape[-2])
        else:
            t = torch.randn(shape, generator=gen) * 0.1
        tensors[name] = t.to(dt).contiguous()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg["dtype"] = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[args.dtype]
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    n = sum(t.numel() for t in tensors.values())
    print(f"{args.out}: {n / 1e6:.1f}M parameters ({args.dtype}), {args.layers} layers, {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
