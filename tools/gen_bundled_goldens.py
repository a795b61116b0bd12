#!/usr/bin/env python3
"""Golden logits for the bundled default model (models/recurd-mamba-tiny), from transformers.

Writes tests/golden/bundled/goldens.json plus raw float32 logits, in the same format as
tools/gen_mamba_goldens.py: several text prompts (encoded with the model's own tokenizer via
HF `tokenizers`) with the full-forward logits of every position, and a 64-token greedy
continuation (ids only, to keep the fixture small: its logits are the same computation as
the prompts'). Rerun whenever the bundled model changes:

    .venv/bin/python tools/gen_bundled_goldens.py [--model models/recurd-mamba-tiny]
"""
import argparse
import json
import os

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from transformers import MambaForCausalLM

PROMPTS = [
    "Once upon a time",
    "The best way to learn a language is",
    "Q: What is the capital of France?\nA:",
    "def main():\n    print(",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/recurd-mamba-tiny")
    ap.add_argument("--out", default="tests/golden/bundled")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = MambaForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    os.makedirs(args.out, exist_ok=True)
    V = model.config.vocab_size
    seqs = []
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok.encode(text, add_special_tokens=False).ids
            logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
            name = f"prompt{i}"
            logits.astype("<f4").tofile(os.path.join(args.out, name + ".f32"))
            seqs.append({"name": name, "text": text, "tokens": ids, "logits": name + ".f32"})
        # Greedy by repeated full forwards (HF's cache path is not used for goldens).
        prompt = seqs[0]["tokens"]
        cur = list(prompt)
        for _ in range(64):
            row = model(torch.tensor([cur]), use_cache=False).logits[0, -1]
            cur.append(int(torch.argmax(row)))
        gen = cur[len(prompt):]
    doc = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": args.model,
        "vocab_size": V,
        "sequences": seqs,
        "greedy": {"prompt": prompt, "generated": gen, "logits": None,
                   "text": tok.decode(cur)},
    }
    with open(os.path.join(args.out, "goldens.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(doc["greedy"]["text"])


if __name__ == "__main__":
    main()
