#!/usr/bin/env python3
"""Make a mamba2-130m-shaped random-weight checkpoint for benchmarking.

Geometry defaults to state-spaces/mamba2-130m: d_model 768, 24 layers, expand 2
(intermediate 1536 = 24 heads x 64), d_state 128, one group, conv 4, chunk 256,
vocab 50280, no in/out bias, conv bias, tied embeddings. Weights are transformers' random
init (seeded); only shapes and dtype matter. Saved with save_pretrained(safe_serialization=True).

Usage:  tools/make_mamba2_bench_model.py --out bench/data/mamba2-130m-bf16 [--dtype f32|bf16|f16]
                                         [--layers 24] [--hidden 768] [--vocab 50280] [--seed 0]
"""

import argparse
import os
import time

import torch
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM

from golden_common import fresh_dir

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    head_dim = 64
    config = Mamba2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        expand=2,
        num_heads=2 * args.hidden // head_dim,
        head_dim=head_dim,
        n_groups=1,
        state_size=128,
        conv_kernel=4,
        chunk_size=256,
        use_bias=False,
        use_conv_bias=True,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = Mamba2ForCausalLM(config).eval().to(DTYPES[args.dtype])
    fresh_dir(args.out)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="100GB")
    n_params = sum(p.numel() for p in model.parameters())
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(
        f"{args.out}: {args.dtype}, {n_params / 1e6:.1f}M params, {size / 2**20:.1f} MiB on disk, "
        f"{time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
