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
import time

import torch
import transformers
from transformers import MambaConfig, MambaForCausalLM

from gen_mamba_goldens import BASE, perturb
from golden_common import fresh_dir

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
    # The golden generator's tiny config (same fields and flags) at mamba-130m's sizes.
    config = MambaConfig(
        **dict(
            BASE,
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            state_size=args.state,
            num_hidden_layers=args.layers,
            intermediate_size=2 * args.hidden,
            time_step_rank=math.ceil(args.hidden / 16),
            use_bias=False,
        )
    )
    model = MambaForCausalLM(config).eval()
    perturb(model, torch.Generator().manual_seed(args.seed + 5000))
    model = model.to(DTYPES[args.dtype])

    fresh_dir(args.out)
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
