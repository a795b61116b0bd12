#!/usr/bin/env python3
"""Greedy ids of the bundled model's draft (models/recurd-mamba-tiny-draft), from transformers.

Writes tests/golden/bundled-draft/greedy.json: for each prompt of tools/gen_bundled_goldens.py
(encoded with the shared tokenizer via HF `tokenizers`), 32 greedy tokens by repeated full
forwards of `MambaForCausalLM` (fp32, no cache, EOS not special). tests/integration/
test_draft_model.py checks that `recurd-eval --greedy 32` on the draft prints the same ids.
Rerun whenever the draft changes:

    /opt/rcdvenv/bin/python tools/gen_draft_goldens.py [--model models/recurd-mamba-tiny-draft]
"""
import argparse
import json
import os

import torch
import transformers
from tokenizers import Tokenizer
from transformers import MambaForCausalLM

from gen_bundled_goldens import PROMPTS

N_GEN = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/recurd-mamba-tiny-draft")
    ap.add_argument("--out", default="tests/golden/bundled-draft")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = MambaForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    cases = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok.encode(text, add_special_tokens=False).ids
            cur = list(ids)
            margin = float("inf")  # smallest top-1 minus top-2 logit gap along the run
            for _ in range(N_GEN):
                row = model(torch.tensor([cur]), use_cache=False).logits[0, -1].float()
                top = torch.topk(row, 2).values
                margin = min(margin, float(top[0] - top[1]))
                cur.append(int(torch.argmax(row)))
            cases.append({"text": text, "tokens": ids, "generated": cur[len(ids):],
                          "min_top2_margin": margin, "decoded": tok.decode(cur)})
            print(repr(cases[-1]["decoded"]), f"margin {margin:.2e}")
    os.makedirs(args.out, exist_ok=True)
    doc = {"transformers": transformers.__version__, "torch": torch.__version__,
           "model": args.model, "vocab_size": model.config.vocab_size, "cases": cases}
    with open(os.path.join(args.out, "greedy.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
