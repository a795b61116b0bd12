#!/usr/bin/env python3
"""Quality of recurd's --weights q8|q4 against the native (fp32) weights, measured with
recurd-eval --dump-logits (numpy; `tokenizers` for the held-out text, e.g. /opt/rcdvenv).

Reports, as a Markdown table (for bench/RESULTS.md):
  1. per family and format: max |dlogit| against the fp32 transformers goldens of every
     golden fixture sequence (tests/golden/<family>/<case>);
  2. on the bundled model (models/recurd-mamba-tiny, trained on fortunes and the Python docs:
     tools/train_default_model.py): over held-out text it was not trained on (default
     /usr/share/common-licenses/GPL-3), the mean KL(native || quantized) per token, top-1
     (argmax) agreement with native, and the perplexity with native, q8 and q4 weights.

  tools/quant_quality.py [--eval build/release/tools/recurd-eval] [--text FILE]
                         [--tokens N] [--segment N] [--isa auto]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = [("mamba", "tiny_bias_tied"), ("mamba", "tiny_nobias_untied"),
            ("mamba2", "tiny_g2_untied"), ("granite", "moe_nope_tied"),
            ("recurrentgemma", "tiny_mqa_w16")]
FORMATS = ("q8", "q4")


def run_eval(ev, model, tokens, weights, isa, V):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        cmd = [ev, "--model", model, "--tokens", ",".join(map(str, tokens)), "--dump-logits",
               out, "--isa", isa]
        if weights != "native":
            cmd += ["--weights", weights]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return np.fromfile(out, dtype="<f4").reshape(len(tokens), V)


def golden_errors(ev, isa):
    rows = []
    for fam, case in FAMILIES:
        d = os.path.join(ROOT, "tests", "golden", fam, case)
        if not os.path.isdir(d):
            continue
        g = json.load(open(os.path.join(d, "goldens.json")))
        V = g["vocab_size"]
        errs = {}
        for fmt in FORMATS:
            worst, worst_rel = 0.0, 0.0
            for s in g["sequences"]:
                ref = np.fromfile(os.path.join(d, s["logits"]), dtype="<f4").reshape(-1, V)
                got = run_eval(ev, d, s["tokens"], fmt, isa, V)
                diff = np.abs(got - ref)
                worst = max(worst, float(diff.max()))
                worst_rel = max(worst_rel, float(diff.max() / max(np.abs(ref).max(), 1e-30)))
            errs[fmt] = (worst, worst_rel)
        rows.append((fam, case, errs))
    return rows


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def heldout(ev, isa, text_path, n_tokens, seg):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        sys.exit("quant_quality.py: the held-out part needs the `tokenizers` package "
                 "(e.g. run it with /opt/rcdvenv/bin/python)")
    model = os.path.join(ROOT, "models", "recurd-mamba-tiny")
    tok = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    V = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
    ids = tok.encode(open(text_path, encoding="utf-8").read()).ids[:n_tokens]
    segs = [ids[i:i + seg] for i in range(0, len(ids) - 1, seg) if len(ids[i:i + seg]) > 1]
    lp = {w: [] for w in ("native",) + FORMATS}
    nll = {w: [] for w in lp}
    for s in segs:
        for w in lp:
            l = log_softmax(run_eval(ev, model, s, w, isa, V))
            lp[w].append(l[:-1])
            nll[w].append(-l[np.arange(len(s) - 1), s[1:]])
    out = {}
    base = np.concatenate(lp["native"])
    for w in lp:
        cur = np.concatenate(lp[w])
        kl = float(np.mean(np.sum(np.exp(base) * (base - cur), axis=-1)))
        top1 = float(np.mean(base.argmax(-1) == cur.argmax(-1)))
        ppl = float(np.exp(np.mean(np.concatenate(nll[w]))))
        out[w] = (kl, top1, ppl)
    return out, sum(len(s) - 1 for s in segs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", default=os.path.join(ROOT, "build", "release", "tools",
                                                   "recurd-eval"))
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens scored")
    ap.add_argument("--segment", type=int, default=512, help="tokens per independent sequence")
    ap.add_argument("--isa", default="auto")
    a = ap.parse_args()
    print("### Logit error against the fp32 goldens (recurd-eval --weights, isa %s)\n" % a.isa)
    print("| family | fixture | q8 max abs dlogit | q8 rel. to max abs logit "
          "| q4 max abs dlogit | q4 rel. |")
    print("|---|---|---|---|---|---|")
    for fam, case, e in golden_errors(a.eval, a.isa):
        print("| %s | %s | %.3g | %.2g | %.3g | %.2g |" % (fam, case, e["q8"][0], e["q8"][1],
                                                         e["q4"][0], e["q4"][1]))
    res, n = heldout(a.eval, a.isa, a.text, a.tokens, a.segment)
    print("\n### Bundled model on held-out text (%s, %d scored tokens, segments of %d)\n"
          % (a.text, n, a.segment))
    print("| weights | mean KL(native ‖ w) nats/token | top-1 agreement | perplexity | Δppl |")
    print("|---|---|---|---|---|")
    for w, (kl, top1, ppl) in res.items():
        print("| %s | %.2e | %.2f%% | %.3f | %+.2f%% |" % (w, kl, 100 * top1, ppl,
                                                          100 * (ppl / res["native"][2] - 1)))


if __name__ == "__main__":
    main()
