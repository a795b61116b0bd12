#!/usr/bin/env python3
"""Make a mamba-130m-shaped random-weight checkpoint for benchmarking.

Geometry defaults to state-spaces/mamba-130m-hf: d_model 768, 24 layers, d_state 16,
expand 2 (intermediate 1536), conv 4, dt rank ceil(768/16)=48, vocab 50280,
use_bias false, conv bias true, tied embeddings. Weights are random (seeded); the logits are
meaningless, only the shapes/dtype matter.

Two ways to fill the same file (same tensor names, shapes, dtype and config.json fields):
- default: transformers' MambaForCausalLM init plus the golden generator's noise on 1-D
  parameters, saved with save_pretrained(safe_serialization=True) (needs torch);
- --numpy: numpy only (no torch, seconds): an imitation of that init (A_log = log(1..N),
  D = 1, dt bias = softplus^-1 of a log-uniform dt in [1e-3, 0.1], fan-in-scaled matrices,
  then the same N(0, 0.05) / N(0, 0.1) noise), written as safetensors directly. The values
  differ from the torch path's; the speed and memory of a run do not depend on them.

Usage:  tools/make_bench_model.py --out bench/data/mamba130m-f32 [--dtype f32|bf16|f16]
                                  [--layers 24] [--hidden 768] [--vocab 50280] [--seed 0]
                                  [--numpy]
"""

import argparse
import json
import math
import os
import shutil
import struct
import time

DTYPES = ("f32", "bf16", "f16")


def geometry(args):
    return dict(H=args.hidden, L=args.layers, N=args.state, I=2 * args.hidden,
                R=math.ceil(args.hidden / 16), K=4, V=args.vocab)


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def make_torch(args):
    import torch
    import transformers
    from transformers import MambaConfig, MambaForCausalLM

    from gen_mamba_goldens import BASE, perturb

    g = geometry(args)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    # The golden generator's tiny config (same fields and flags) at mamba-130m's sizes.
    config = MambaConfig(**dict(BASE, vocab_size=g["V"], hidden_size=g["H"], state_size=g["N"],
                                num_hidden_layers=g["L"], intermediate_size=g["I"],
                                time_step_rank=g["R"], use_bias=False))
    model = MambaForCausalLM(config).eval()
    perturb(model, torch.Generator().manual_seed(args.seed + 5000))
    dt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    model = model.to(dt)
    fresh_dir(args.out)
    # one file regardless of size (mamba-130m-hf itself ships a single model.safetensors)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="100GB")
    return sum(p.numel() for p in model.parameters())


def make_numpy(args):
    import numpy as np

    g = geometry(args)
    H, L, N, I, R, K, V = (g[k] for k in "HLNIRKV")
    rng = np.random.default_rng(args.seed)
    noise = np.random.default_rng(args.seed + 5000)

    def uniform(shape, fan_in):
        b = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-b, b, shape).astype(np.float32)

    def dt_bias():
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(0.1), I))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # softplus^-1

    tensors = {"backbone.embeddings.weight": lambda: (rng.standard_normal((V, H)) * 0.02)
               .astype(np.float32)}
    for layer in range(L):
        p = "backbone.layers.%d." % layer
        tensors.update({
            p + "norm.weight": lambda: np.ones(H, np.float32),
            p + "mixer.A_log": lambda: np.log(np.tile(np.arange(1, N + 1, dtype=np.float32),
                                                      (I, 1))),
            p + "mixer.D": lambda: np.ones(I, np.float32),
            p + "mixer.conv1d.weight": lambda: uniform((I, 1, K), K),
            p + "mixer.conv1d.bias": lambda: uniform((I,), K),
            p + "mixer.in_proj.weight": lambda: uniform((2 * I, H), H),
            p + "mixer.x_proj.weight": lambda: uniform((R + 2 * N, I), I),
            p + "mixer.dt_proj.weight": lambda: uniform((I, R), R),
            p + "mixer.dt_proj.bias": dt_bias,
            p + "mixer.out_proj.weight": lambda: uniform((H, I), I) / math.sqrt(L),
        })
    tensors["backbone.norm_f.weight"] = lambda: np.ones(H, np.float32)

    header, off, n_params = {}, 0, 0
    blobs = []
    for name, make in tensors.items():
        a = make()
        if a.ndim == 1:  # the golden generator's perturb(): noise on 1-D parameters and A_log
            a = a + (noise.standard_normal(a.shape) * 0.05).astype(np.float32)
        elif name.endswith("A_log"):
            a = a + (noise.standard_normal(a.shape) * 0.1).astype(np.float32)
        n_params += a.size
        if args.dtype == "bf16":  # round to nearest even, as torch's .to(bfloat16)
            u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
            b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
            st = "BF16"
        elif args.dtype == "f16":
            b, st = a.astype(np.float16).tobytes(), "F16"
        else:
            b, st = a.astype(np.float32).tobytes(), "F32"
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    fresh_dir(args.out)
    with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    # The fields transformers' MambaConfig writes that the loader reads, same values.
    cfg = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "vocab_size": V,
           "hidden_size": H, "state_size": N, "num_hidden_layers": L, "expand": 2,
           "intermediate_size": I, "conv_kernel": K, "time_step_rank": R, "use_bias": False,
           "use_conv_bias": True, "layer_norm_epsilon": 1e-5, "residual_in_fp32": True,
           "hidden_act": "silu", "tie_word_embeddings": True, "pad_token_id": 0,
           "bos_token_id": 0, "eos_token_id": 0, "time_step_scale": 1.0,
           "dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[args.dtype]}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return n_params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=DTYPES, default="f32")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--numpy", action="store_true", help="numpy only (no torch/transformers)")
    args = ap.parse_args()

    t0 = time.time()
    if not args.numpy:
        try:
            import torch  # noqa: F401
        except ImportError:
            ap.error("torch is not installed: pass --numpy (numpy only; see the docstring)")
    n_params = make_numpy(args) if args.numpy else make_torch(args)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(
        f"{args.out}: {args.dtype}{' (numpy)' if args.numpy else ''}, {n_params / 1e6:.1f}M params, "
        f"{size / 2**20:.1f} MiB on disk, {time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
