"""The held-out copy passages of bench/spec_daemon.py --text (its "copy-heldout" workload):
passages from the documents that tools/train_default_model.py holds out of training (seed 1234:
the split of the bundled models and of tools/train_copy_hybrid.py), so text of the kind the
models learnt from that none of them saw. Each is the first 300-500 characters of a document of
at least 300, cut at a word. Only the Python documentation's documents (the corpus's other half,
the fortunes, is jokes and quotations of uneven taste: not text to commit as a fixture).

    PY tools/heldout_passages.py [--n 12] [--out bench/spec_heldout.json]

PY: a Python with torch (train_default_model.py imports it), as for the other training tools;
needs the corpus packages (`apt-get install fortunes fortunes-min python3.11-doc`)."""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_default_model as tdm  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1234, help="the held-out split's seed")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "bench",
                                                  "spec_heldout.json"))
    a = ap.parse_args()
    _, val, _ = tdm.split_docs(a.seed)
    if not val:
        sys.exit("no training text found: apt-get install fortunes fortunes-min python3.11-doc")
    rng = random.Random(7)
    out = []
    for src, d in val:
        d = d.strip()
        if src != "pydoc" or len(d) < 300:
            continue
        out.append({"source": src, "text": d[:rng.randint(300, 500)].rsplit(" ", 1)[0]})
        if len(out) == a.n:
            break
    with open(a.out, "w") as f:
        json.dump({"split_seed": a.seed, "passages": out}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("%d passages (%s) -> %s" % (len(out), ", ".join(sorted({p["source"] for p in out})),
                                       a.out))


if __name__ == "__main__":
    main()
