#!/usr/bin/env python3
"""Make a mamba-130m-shaped random-weight checkpoint for benchmarking.

Geometry defaults to state-spaces/mamba-130m-hf: d_model 768, 24 layers, d_state 16,
expand 2 (intermediate 1536), conv 4, dt rank ceil(768/16)=48, vocab 50280,
use_bias false, conv bias true, tied embeddings. Weights are random (seeded) with the
same small noise on 1-D parameters as the golden generator; the logits are meaningless,
only the shapes/dtype matter. Saved with save_pretrained(safe_serialization=True).

Usage:  tools/make_bench_model.py --out bench/data/mamba130m-f32 [--dtype f32|bf16|f16]
                                  [--layers 24] [--hidden 768] [--vocab 50280] [--seed 0]
"""

import argparse
import math
import os
import shutil
import time

import torch
import transformers
from transformers import MambaConfig, MambaForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    config = MambaConfig(
        architectures=["MambaForCausalLM"],
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        state_size=args.state,
        num_hidden_layers=args.layers,
        expand=2,
        intermediate_size=2 * args.hidden,
        conv_kernel=4,
        time_step_rank=math.ceil(args.hidden / 16),
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=1e-5,
        residual_in_fp32=True,
        hidden_act="silu",
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = MambaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(args.seed + 5000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
            elif name.endswith("A_log"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model = model.to(DTYPES[args.dtype])

    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    # one file regardless of size (mamba-130m-hf itself ships a single model.safetensors)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="100GB")

    n_params = sum(p.numel() for p in model.parameters())
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(
        f"{args.out}: {args.dtype}, {n_params / 1e6:.1f}M params, {size / 2**20:.1f} MiB on disk, "
        f"{time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
