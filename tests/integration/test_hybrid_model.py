"""recurd integration: the copy-capable hybrid models/recurd-hybrid-tiny (issue 18).

A Granite 4.0-H hybrid (Mamba2 and attention layers with RoPE) trained by
tools/train_copy_hybrid.py --granite to continue a quoted passage: the target on which n-gram
speculation has something to accept. It must share the bundled model's tokenizer files byte
for byte (and its vocabulary and special ids), stay small, and recurd's engine (recurd-eval)
must compute it as transformers does: the greedy ids after each prompt equal the ids
tools/gen_draft_goldens.py --copy recorded from transformers (tests/golden/bundled-hybrid).
On the bench's copy-heavy prompt (bench/spec_prompts.py copy_prompt()) the model reproduces the
rest of the passage, and with --speculate ngram recurd-eval prints the same ids while most
drafts are accepted."""
import json
import os
import re
import subprocess
import unittest

from rcd_harness import ROOT, assert_shares_tokenizer, eval_binary

BUNDLED = os.path.join(ROOT, "models", "recurd-mamba-tiny")
MODEL = os.path.join(ROOT, "models", "recurd-hybrid-tiny")
GOLDEN = os.path.join(ROOT, "tests", "golden", "bundled-hybrid", "greedy.json")
SAN = "RECURD_ABUSE_SCALE" in os.environ  # the sanitizer runs: fewer prompts
COPIES = "story"  # the bench passage it reproduces verbatim for 80+ characters (its card)


def read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def recurd_eval(*args):
    return subprocess.run([eval_binary(), *args], capture_output=True, text=True, check=True)


def ids_of(out):
    return [int(x) for x in out.stdout.strip().split("\n")[-1].split(",")]


class HybridModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = json.loads(read(GOLDEN, "r"))
        cls.copy = {c["copy"]: c for c in cls.g["cases"] if c.get("copy")}

    def test_same_tokenizer_and_vocab(self):
        h = assert_shares_tokenizer(self, MODEL, BUNDLED)
        self.assertEqual(h["model_type"], "granitemoehybrid")
        self.assertEqual(h["position_embedding_type"], "rope")
        # both kinds of layer: a hybrid (transformers 5 names them so in config.json)
        self.assertEqual(set(h["layer_types"]), {"linear_attention", "full_attention"})

    def test_size(self):
        total = sum(os.path.getsize(os.path.join(MODEL, f)) for f in os.listdir(MODEL))
        self.assertLessEqual(total, 10_000_000)

    def test_recurd_eval_greedy_matches_transformers(self):
        plain = [c for c in self.g["cases"] if not c.get("copy")]
        self.assertGreaterEqual(len(plain), 3)
        self.assertEqual(set(self.copy), {"story", "manual"})
        for c in (plain[:1] if SAN else plain) + list(self.copy.values()):
            out = recurd_eval("--model", MODEL, "--tokens", ",".join(map(str, c["tokens"])),
                              "--greedy", str(len(c["generated"])))
            self.assertEqual(ids_of(out), c["generated"], c["text"])

    def test_the_model_copies(self):
        # What transformers continued the copy-heavy prompt with (the ids recurd must print,
        # above) reproduces the rest of the passage: a run of at least 80 characters of it
        # verbatim (a small model may skip a clause, as it learnt from edited repeats).
        c = self.copy[COPIES]
        cut = c["text"][len(c["passage"]) + 2:]
        self.assertTrue(c["passage"].startswith(cut))
        rest, got = c["passage"][len(cut):], c["continuation"]
        best = 0  # the longest substring of got that is in rest
        for i in range(len(got)):
            while i + best < len(got) and got[i:i + best + 1] in rest:
                best += 1
        self.assertGreaterEqual(best, 80, "longest verbatim run %d: %r of %r" % (best, got, rest))

    def test_ngram_speculation_accepts_most_drafts(self):
        c = self.copy[COPIES]
        args = ["--model", MODEL, "--tokens", ",".join(map(str, c["tokens"])),
                "--greedy", str(len(c["generated"]))]
        spec = recurd_eval(*args, "--speculate", "ngram", "--spec-tokens", "4")
        self.assertEqual(ids_of(spec), c["generated"])
        m = re.search(r"(\d+) tokens in (\d+) steps, \d+ verifies, (\d+) drafted, (\d+) accepted",
                      spec.stderr)
        self.assertIsNotNone(m, spec.stderr)
        tokens, steps, drafted, accepted = map(int, m.groups())
        self.assertGreaterEqual(accepted, 0.6 * drafted, spec.stderr)
        self.assertLessEqual(steps, 0.6 * tokens, spec.stderr)  # fewer steps than tokens


if __name__ == "__main__":
    unittest.main()
