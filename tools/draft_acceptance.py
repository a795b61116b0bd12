#!/usr/bin/env python3
"""How well a draft model predicts its target, for greedy speculative decoding.

Both models are loaded with transformers (MambaForCausalLM / AutoModelForCausalLM, fp32, no
grad); they must share the tokenizer (the tokenizer.json files are compared byte for byte).

Held-out text (default): the 2% document split that tools/train_default_model.py holds out
with the same --seed (1234, the seed of the bundled model and its draft), so neither model
trained on it. Needs the training text's Debian packages (fortunes fortunes-min
python3.11-doc). `--text FILE` measures on a file instead (e.g. /usr/share/common-licenses/GPL-3).

Figures:
  * val ppl of the draft and of the target (windows of --seq-len tokens, each from an empty
    state, as the training script evaluates);
  * teacher-forced top-1 agreement on the text: the fraction of positions where
    argmax(draft) == argmax(target), both given the text's prefix;
  * greedy agreement: the target continues --prompts prompts (the first --prompt-len tokens of
    held-out windows) greedily for up to --gen-len tokens (until its EOS); on that sequence argmax(draft) ==
    argmax(target) at each generated position. In greedy speculative decoding every accepted
    prefix is the target's own greedy output, so this is the exact per-position acceptance;
  * for k = 1..--max-k: accepted drafts per verify and tokens per verify (accepted + the
    target's own token), by replaying verify rounds over the agreement sequence: a round at
    position i accepts the run of agreements starting at i, at most k, then moves past the
    accepted tokens and the target's token; a round that would run past the end of a window
    or continuation is not counted. (Run lengths, not an i.i.d. formula.)

    /opt/rcdvenv/bin/python tools/draft_acceptance.py \\
        --target models/recurd-mamba-tiny --draft models/recurd-mamba-tiny-draft \\
        [--json OUT.json] [--stats models/train_stats_draft.json]
`--stats` merges the figures into that train_stats file (key "acceptance"), from which
`train_default_model.py --write-card` renders the draft's model card.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def held_out_ids(tok, seed):
    import train_default_model as tdm
    _, val, _ = tdm.split_docs(seed)
    if not val:
        sys.exit("no training text found: apt-get install fortunes fortunes-min python3.11-doc")
    n_val = len(val)
    ids = []
    for _, d in val:  # the same encoding as the training script's held-out split
        ids.append(tok.eos_token_id)
        ids.extend(tok(d)["input_ids"])
    ids.append(tok.eos_token_id)
    return torch.tensor(ids, dtype=torch.long), f"held-out split of train_default_model.py (seed {seed}, {n_val} documents)"


def file_ids(tok, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids = [tok.eos_token_id] + tok(text)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), path


def replay(match, k):
    """Verify rounds over a per-position agreement sequence; returns (rounds, accepted).
    Only rounds with all k positions inside the sequence count (no end-of-window bias)."""
    i, rounds, acc = 0, 0, 0
    n = len(match)
    while i + k <= n:
        a = 0
        while a < k and match[i + a]:
            a += 1
        rounds += 1
        acc += a
        i += a + 1
    return rounds, acc


def spec_table(matches, max_k):
    """matches: list of bool lists (independent sequences)."""
    rows = []
    for k in range(1, max_k + 1):
        r = a = 0
        for m in matches:
            r_, a_ = replay(m, k)
            r += r_
            a += a_
        rows.append({"k": k, "accepted_per_verify": a / r, "tokens_per_verify": (a + r) / r})
    return rows


@torch.no_grad()
def window_pass(target, draft, ids, seq_len, max_windows, bs):
    n = (len(ids) - 1) // seq_len
    if max_windows:
        n = min(n, max_windows)
    ce_t = ce_d = 0.0
    agree = cnt = 0
    matches = []
    for i in range(0, n, bs):
        j = min(n, i + bs)
        x = torch.stack([ids[w * seq_len:(w + 1) * seq_len] for w in range(i, j)])
        y = torch.stack([ids[w * seq_len + 1:(w + 1) * seq_len + 1] for w in range(i, j)])
        lt = target(x).logits.float()
        ld = draft(x).logits.float()
        V = lt.shape[-1]
        ce_t += F.cross_entropy(lt.reshape(-1, V), y.reshape(-1), reduction="sum").item()
        ce_d += F.cross_entropy(ld.reshape(-1, V), y.reshape(-1), reduction="sum").item()
        m = lt.argmax(-1) == ld.argmax(-1)
        agree += m.sum().item()
        cnt += y.numel()
        matches.extend(row.tolist() for row in m)
    return {"windows": n, "tokens": cnt, "target_ppl": math.exp(ce_t / cnt),
            "draft_ppl": math.exp(ce_d / cnt), "top1_agreement": agree / cnt}, matches


@torch.no_grad()
def greedy_pass(target, draft, ids, seq_len, prompts, prompt_len, gen_len, eos):
    n = min(prompts, (len(ids) - 1) // seq_len)
    matches = []
    agree = cnt = mism = 0
    for w in range(n):
        p = ids[w * seq_len:w * seq_len + prompt_len].unsqueeze(0)
        # Stops at the target's EOS, as a served greedy turn does.
        seq = target.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=gen_len,
                              do_sample=False, pad_token_id=eos)
        lt = target(seq).logits.float()[0, prompt_len - 1:-1]
        ld = draft(seq).logits.float()[0, prompt_len - 1:-1]
        gen = seq[0, prompt_len:]
        mism += (lt.argmax(-1) != gen).sum().item()  # numerics: cached vs full forward
        m = lt.argmax(-1) == ld.argmax(-1)
        agree += m.sum().item()
        cnt += m.numel()
        matches.append(m.tolist())
    return {"prompts": n, "prompt_len": prompt_len, "gen_len": gen_len, "positions": cnt,
            "top1_agreement": agree / max(cnt, 1),
            "target_argmax_vs_generated_mismatches": mism}, matches


def fmt(res):
    lines = [f"source: {res['source']}"]
    tf = res["teacher_forced"]
    lines.append(f"held-out ppl: draft {tf['draft_ppl']:.2f}, target {tf['target_ppl']:.2f} "
                 f"({tf['tokens']} tokens, {tf['windows']} windows of {res['seq_len']})")
    lines.append(f"top-1 agreement: teacher-forced on the text {tf['top1_agreement']:.4f}; "
                 f"on the target's greedy continuations {res['greedy']['top1_agreement']:.4f} "
                 f"({res['greedy']['prompts']} prompts, up to {res['greedy']['gen_len']} tokens, {res['greedy']['positions']} positions)")
    lines.append("| k | accepted/verify (text) | tokens/verify (text) | accepted/verify (greedy) | tokens/verify (greedy) |")
    lines.append("|---|---|---|---|---|")
    for a, b in zip(res["teacher_forced"]["spec"], res["greedy"]["spec"]):
        lines.append(f"| {a['k']} | {a['accepted_per_verify']:.3f} | {a['tokens_per_verify']:.3f} | "
                     f"{b['accepted_per_verify']:.3f} | {b['tokens_per_verify']:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="models/recurd-mamba-tiny")
    ap.add_argument("--draft", default="models/recurd-mamba-tiny-draft")
    ap.add_argument("--text", metavar="FILE", help="measure on this file instead of the held-out split")
    ap.add_argument("--seed", type=int, default=1234, help="the training run's --seed (held-out split)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=0, help="0 = all")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=96)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--stats", metavar="JSON", help="merge the figures into this train_stats file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    for name in ("tokenizer.json",):
        a = open(os.path.join(args.target, name), "rb").read()
        b = open(os.path.join(args.draft, name), "rb").read()
        if a != b:
            sys.exit(f"{name} differs between {args.target} and {args.draft}: not a draft for it")
    tok = AutoTokenizer.from_pretrained(args.target)
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    if target.config.vocab_size != draft.config.vocab_size:
        sys.exit("vocab sizes differ")

    t0 = time.time()
    ids, source = file_ids(tok, args.text) if args.text else held_out_ids(tok, args.seed)
    tf, tf_m = window_pass(target, draft, ids, args.seq_len, args.max_windows, args.batch)
    tf["spec"] = spec_table(tf_m, args.max_k)
    gr, gr_m = greedy_pass(target, draft, ids, args.seq_len, args.prompts, args.prompt_len,
                           args.gen_len, tok.eos_token_id)
    gr["spec"] = spec_table(gr_m, args.max_k)
    res = {"target": args.target, "draft": args.draft, "source": source, "seq_len": args.seq_len,
           "draft_params": sum(p.numel() for p in draft.parameters()),
           "target_params": sum(p.numel() for p in target.parameters()),
           "teacher_forced": tf, "greedy": gr, "seconds": round(time.time() - t0, 1)}
    print(fmt(res), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.stats:
        with open(args.stats) as f:
            st = json.load(f)
        key = "acceptance_text" if args.text else "acceptance"
        st[key] = res
        with open(args.stats, "w") as f:
            json.dump(st, f, indent=1)


if __name__ == "__main__":
    main()
