#!/usr/bin/env python3
"""Greedy ids of a small bundled model, from transformers: the bundled model's draft
(models/recurd-mamba-tiny-draft, the default) or the copy-capable hybrid
(models/recurd-hybrid-tiny, with --copy).

Writes OUT/greedy.json: for each prompt of tools/gen_bundled_goldens.py (encoded with the
model's tokenizer via HF `tokenizers`), --tokens greedy tokens by repeated full forwards of
the checkpoint's own transformers class (AutoModelForCausalLM: any family; fp32, no cache,
EOS not special). --copy adds the copy-heavy prompts of bench/spec_daemon.py (bench/
spec_prompts.py: copy_prompt() of each of PASSAGES, a passage, a blank line, its first third
again), after the EOS id as a document start, with --copy-tokens greedy tokens: a model that
copies continues with the rest of the passage. Integration tests check that `recurd-eval
--greedy N` on the model prints the same ids (test_draft_model.py, test_hybrid_model.py).
Rerun whenever the model changes:

    /opt/rcdvenv/bin/python tools/gen_draft_goldens.py [--model models/recurd-mamba-tiny-draft]
    /opt/rcdvenv/bin/python tools/gen_draft_goldens.py --model models/recurd-hybrid-tiny \\
        --out tests/golden/bundled-hybrid --copy
"""
import argparse
import json
import os
import sys

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from gen_bundled_goldens import PROMPTS

HERE = os.path.dirname(os.path.abspath(__file__))


def bench_copy_prompts():
    """bench/spec_daemon.py's copy-heavy prompts: (name, passage, copy_prompt(passage))."""
    sys.path.insert(0, os.path.join(HERE, "..", "bench"))
    from spec_prompts import PASSAGES, copy_prompt
    return [(k, p, copy_prompt(p)) for k, p in PASSAGES.items()]


def greedy(model, ids, n):
    """n greedy ids after ids, and the smallest top-1 minus top-2 logit gap along the run."""
    cur = list(ids)
    margin = float("inf")
    for _ in range(n):
        row = model(torch.tensor([cur]), use_cache=False).logits[0, -1].float()
        top = torch.topk(row, 2).values
        margin = min(margin, float(top[0] - top[1]))
        cur.append(int(torch.argmax(row)))
    return cur[len(ids):], margin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/recurd-mamba-tiny-draft")
    ap.add_argument("--out", default="tests/golden/bundled-draft")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--copy", action="store_true", help="also the bench's copy-heavy prompts")
    ap.add_argument("--copy-tokens", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    eos = model.config.eos_token_id
    work = [(text, tok.encode(text, add_special_tokens=False).ids, args.tokens, None, None)
            for text in PROMPTS]
    if args.copy:
        for name, passage, text in bench_copy_prompts():
            work.append((text, [eos] + tok.encode(text, add_special_tokens=False).ids,
                         args.copy_tokens, passage, name))
    cases = []
    with torch.no_grad():
        for text, ids, n, passage, name in work:
            gen, margin = greedy(model, ids, n)
            c = {"text": text, "tokens": ids, "generated": gen, "min_top2_margin": margin,
                 "decoded": tok.decode(ids + gen)}
            if passage is not None:
                c["copy"] = name  # bench/spec_daemon.py's PASSAGES key
                c["passage"] = passage
                c["continuation"] = tok.decode(gen)
            cases.append(c)
            print(repr(tok.decode(gen)), f"margin {margin:.2e}")
    os.makedirs(args.out, exist_ok=True)
    doc = {"transformers": transformers.__version__, "torch": torch.__version__,
           "model": args.model, "model_type": model.config.model_type,
           "vocab_size": model.config.vocab_size, "cases": cases}
    with open(os.path.join(args.out, "greedy.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
