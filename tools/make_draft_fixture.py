#!/usr/bin/env python3
"""Writes a tiny random Mamba checkpoint of a given vocabulary: a draft model fixture for
--speculate draft tests (tests/golden/draft/). numpy only (no PyTorch): config.json and
model.safetensors, hidden size 8, one layer, tied embeddings, F32 (4096 x 8 embeddings:
~130 KB). Its drafts are almost never right; the tests check that output does not change.

    python3 tools/make_draft_fixture.py --vocab 4096 --out tests/golden/draft/mamba_v4096
"""
import argparse
import json
import os
import struct

import numpy as np


def save_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=18)
    a = ap.parse_args()
    H, I, N, R, K = 8, 16, 4, 1, 4  # hidden, inner, state, dt rank, conv kernel
    rng = np.random.default_rng(a.seed)
    r = lambda *s: rng.normal(0.0, 0.5, s)
    p = "backbone.layers.0.mixer."
    t = {
        "backbone.embeddings.weight": r(a.vocab, H),
        p + "A_log": np.log(np.tile(np.arange(1, N + 1, dtype=np.float64), (I, 1))),
        p + "D": np.ones(I),
        p + "conv1d.bias": r(I),
        p + "conv1d.weight": r(I, 1, K),
        p + "dt_proj.bias": np.full(I, -3.0),
        p + "dt_proj.weight": r(I, R),
        p + "in_proj.weight": r(2 * I, H),
        p + "out_proj.weight": r(H, I),
        p + "x_proj.weight": r(R + 2 * N, I),
        "backbone.layers.0.norm.weight": np.ones(H),
        "backbone.norm_f.weight": np.ones(H),
    }
    cfg = {"architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": K,
           "dtype": "float32", "eos_token_id": 0, "expand": 2, "hidden_act": "silu",
           "hidden_size": H, "initializer_range": 0.1, "intermediate_size": I,
           "layer_norm_epsilon": 1e-05, "model_type": "mamba", "num_hidden_layers": 1,
           "pad_token_id": 0, "rescale_prenorm_residual": False, "residual_in_fp32": True,
           "state_size": N, "tie_word_embeddings": True, "time_step_floor": 0.0001,
           "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001,
           "time_step_rank": R, "time_step_scale": 1.0, "use_bias": False, "use_cache": True,
           "use_conv_bias": True, "vocab_size": a.vocab}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(a.out, "model.safetensors"), t)


if __name__ == "__main__":
    main()
