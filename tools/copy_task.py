#!/usr/bin/env python3
"""Copying a quoted passage: training windows for train_default_model.py --copy-frac, and the
copy score of a checkpoint.

Real language models copy: given a passage and then its beginning again, they continue with
the rest of it (what n-gram drafts in speculative decoding rely on). A model trained only on
text that never repeats does not learn this. `RepeatWindows` builds training windows that do
repeat: a span of a training document, a separator (a line break, a blank line, a quote, a
lead-in such as "Again:" ...), then the same span again (sometimes with a small edit), then the
text that followed the span; the window ends wherever the training length ends, so the repeat
is often cut off. Everything comes from the token ids of the TRAINING split; the loss covers
every token.

The copy score (held-out text only): passages of --min-len..--max-len tokens from the start
of held-out documents (the 2% split of train_default_model.py for --seed), each given as
passage + separator + its first third; the model continues greedily (transformers, fp32) for
as many tokens as the rest of the passage has. Figures: the mean matched-prefix fraction
(tokens up to the first difference / the rest's length), the mean fraction of positions that
match, the share of passages reproduced in full, and the teacher-forced top-1 accuracy on the
rest (the argmax given the true prefix; for a model that does not copy, its ordinary next-token
accuracy on such text, about 0.27 for the bundled model).

    /opt/rcdvenv/bin/python tools/copy_task.py --model models/recurd-mamba-tiny [--model DIR2]
        [--passages 64] [--sep '\\n\\n'] [--json OUT]
"""
import argparse
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Separators between a span and its repeat (training). Generic: no bench's template.
SEPARATORS = ["\n\n", "\n", " ", "\n\n\"", " \"", "\n> ", ": ", " -- ", "\n\nAgain: ",
              "\n\nOnce more:\n\n", "\n\nIn other words: ", "\n\nTo repeat: ", "\n\nQuote: \"",
              "\n\n---\n\n", "\n\nAs the text says, ", "\n\nThe same again:\n", "\n(", "\n\n1. "]


class RepeatWindows:
    """Training windows with a repeated span, from a training token stream."""

    def __init__(self, train, tokenizer, seed, min_span=8, max_span=128):
        self.train = train
        self.n = len(train)
        self.eos = tokenizer.eos_token_id
        self.seps = [tokenizer(s)["input_ids"] for s in SEPARATORS]
        self.rng = random.Random(seed * 7 + 18)
        self.min_span, self.max_span = min_span, max_span
        self.starts = (train == self.eos).nonzero().flatten() + 1  # document starts

    def _edit(self, span):
        rng = self.rng
        out = list(span)
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(out))
            op = rng.random()
            tok = int(self.train[rng.randrange(self.n)])
            if op < 0.5:
                out[i] = tok
            elif op < 0.75 and len(out) > 2:
                del out[i]
            else:
                out.insert(i, tok)
        return out

    def window(self, length):
        """length token ids: [context] span sep span' continuation, cut at length."""
        rng = self.rng
        sep = self.seps[rng.randrange(len(self.seps))]
        s = rng.randint(self.min_span, max(self.min_span, min(self.max_span, (length - len(sep)) // 2)))
        for _ in range(20):  # a span inside one document, at least 4 tokens
            if rng.random() < 0.5:  # a document's beginning
                start = int(self.starts[rng.randrange(len(self.starts))])
            else:
                start = rng.randrange(1, self.n - s - 1)
            start = min(start, self.n - length - s - 1)
            span = self.train[start:start + s].tolist()
            if self.eos in span:
                span = span[:span.index(self.eos)]
            if len(span) >= 4:
                break
        ctx_max = max(0, length - 2 * len(span) - len(sep) - 8)
        c = rng.randint(0, min(ctx_max, start)) if rng.random() < 0.5 else 0
        ctx = self.train[start - c:start].tolist()
        rep = self._edit(span) if rng.random() < 0.2 else span
        after = self.train[start + len(span):start + len(span) + length].tolist()
        ids = (ctx + span + sep + rep + after)[:length]
        return torch.tensor(ids, dtype=torch.long)


def held_out_docs(seed):
    import train_default_model as tdm
    _, val, _ = tdm.split_docs(seed)
    if not val:
        sys.exit("no training text found: apt-get install fortunes fortunes-min python3.11-doc")
    return [d for _, d in val]


def passages(tokenizer, docs, n, min_len, max_len, seed):
    """Up to n passages: the first L tokens (L in [min_len, max_len]) of held-out documents."""
    rng = random.Random(seed)
    out = []
    for d in docs:
        ids = tokenizer(d)["input_ids"]
        if len(ids) < min_len:
            continue
        L = rng.randint(min_len, min(max_len, len(ids)))
        out.append(ids[:L])
        if len(out) == n:
            break
    return out


@torch.no_grad()
def copy_score(model, tokenizer, psg, sep="\n\n"):
    """Greedy continuation of [eos] + passage + sep + first third vs the passage's rest."""
    model.eval()
    sep_ids = tokenizer(sep)["input_ids"]
    eos = tokenizer.eos_token_id
    pref, pos, full, tf_ok, tf_n = [], [], 0, 0, 0
    for p in psg:
        k = len(p) // 3
        rest = p[k:]
        prompt = torch.tensor([[eos] + p + sep_ids + p[:k]])
        # teacher-forced: the argmax at each position of the rest, given the true prefix
        logits = model(torch.tensor([[eos] + p + sep_ids + p]), use_cache=False).logits[0]
        pred = logits[prompt.shape[1] - 1:-1].argmax(-1).tolist()
        tf_ok += sum(a == b for a, b in zip(pred, rest))
        tf_n += len(rest)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=len(rest), min_new_tokens=len(rest),
                             pad_token_id=eos)[0, prompt.shape[1]:].tolist()
        m = 0
        while m < len(rest) and m < len(out) and out[m] == rest[m]:
            m += 1
        pref.append(m / len(rest))
        pos.append(sum(a == b for a, b in zip(out, rest)) / len(rest))
        full += m == len(rest)
    n = max(1, len(psg))
    return {"passages": len(psg), "sep": sep, "matched_prefix": sum(pref) / n,
            "matched_positions": sum(pos) / n, "full_copies": full,
            "teacher_forced_top1": tf_ok / max(1, tf_n),
            "mean_len": sum(len(p) for p in psg) / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="a causal LM dir, e.g. models/recurd-hybrid-tiny (repeatable)")
    ap.add_argument("--passages", type=int, default=64)
    ap.add_argument("--min-len", type=int, default=60)
    ap.add_argument("--max-len", type=int, default=120)
    ap.add_argument("--sep", action="append", help="separator(s) (default: \\n\\n and \\n)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    docs = held_out_docs(a.seed)
    res = {}
    for d in a.model:
        tok = AutoTokenizer.from_pretrained(d)
        psg = passages(tok, docs, a.passages, a.min_len, a.max_len, a.seed)
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        res[d] = [copy_score(m, tok, psg, s) for s in (a.sep or ["\n\n", "\n"])]
        for r in res[d]:
            print(f"{d}: sep {r['sep']!r}: {r['passages']} passages (mean {r['mean_len']:.1f} tokens): "
                  f"matched prefix {r['matched_prefix']:.3f}, matched positions "
                  f"{r['matched_positions']:.3f}, full copies {r['full_copies']}, teacher-forced "
                  f"top-1 on the rest {r['teacher_forced_top1']:.3f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
