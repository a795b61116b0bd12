#!/usr/bin/env python3
"""How far transformers' own bf16 forward (weights and activations in bf16) lands from the
goldens the C engine's bf16 matmul is checked against: the bound TOL_BF16_MATMUL of each
family's golden test (workers/cpu/*_golden_test.c). Needs torch + transformers
(tools/requirements.txt); run from the repository root."""
import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM

# (family, fixture whose goldens are the reference, BF16 checkpoint)
CASES = [
    ("mamba", "tiny_bias_tied", "tiny_bias_tied_bf16"),
    ("mamba2", "tiny_g2_untied_bf16", "tiny_g2_untied_bf16"),
    ("granite", "moe_nope_tied_bf16", "moe_nope_tied_bf16"),
    ("recurrentgemma", "tiny_mqa_w16_bf16", "tiny_mqa_w16_bf16"),
]


def main():
    for fam, golden, ckpt in CASES:
        gdir = f"tests/golden/{fam}/{golden}"
        with open(gdir + "/goldens.json") as f:
            js = json.load(f)
        V = js["vocab_size"]
        model = AutoModelForCausalLM.from_pretrained(f"tests/golden/{fam}/{ckpt}",
                                                     dtype=torch.bfloat16).eval()
        worst = 0.0
        for s in js["sequences"]:
            ref = np.fromfile(f"{gdir}/{s['logits']}", dtype=np.float32).reshape(-1, V)
            with torch.no_grad():
                lg = model(input_ids=torch.tensor([s["tokens"]]), use_cache=False).logits[0]
            worst = max(worst, float(np.abs(lg.float().numpy() - ref).max()))
        print(f"{fam:15s} {ckpt:22s} HF bf16 forward: max |dlogit| {worst:.3e} vs {golden}")


if __name__ == "__main__":
    main()
