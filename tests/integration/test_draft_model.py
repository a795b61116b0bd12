"""recurd integration: the bundled model's draft (models/recurd-mamba-tiny-draft, issue 18).

The draft must be usable beside the bundled model: the same tokenizer files byte for byte, the
same vocabulary and special ids, at most 5 MB on disk, and recurd's engine (recurd-eval) must
compute it as transformers does: 32 greedy tokens after each prompt equal the ids
tools/gen_draft_goldens.py recorded from MambaForCausalLM (tests/golden/bundled-draft). As the
bundled model's draft (recurd-eval --speculate draft --draft-model), the ids are the bundled
model's own and some drafts are accepted."""
import json
import os
import re
import subprocess
import unittest

from rcd_harness import ROOT, assert_shares_tokenizer, eval_binary

TARGET = os.path.join(ROOT, "models", "recurd-mamba-tiny")
DRAFT = os.path.join(ROOT, "models", "recurd-mamba-tiny-draft")
GOLDEN = os.path.join(ROOT, "tests", "golden", "bundled-draft", "greedy.json")
# Under the sanitizers (their CTest environment sets RECURD_ABUSE_SCALE) fewer prompts.
SAN = "RECURD_ABUSE_SCALE" in os.environ


def read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


class DraftModel(unittest.TestCase):
    def test_same_tokenizer_and_vocab(self):
        d = assert_shares_tokenizer(self, DRAFT, TARGET)
        t = json.loads(read(os.path.join(TARGET, "config.json"), "r"))
        self.assertEqual(d["model_type"], "mamba")
        self.assertTrue(d["tie_word_embeddings"])
        self.assertLess(d["hidden_size"] * d["num_hidden_layers"],
                        t["hidden_size"] * t["num_hidden_layers"])

    def test_size(self):
        total = sum(os.path.getsize(os.path.join(DRAFT, f)) for f in os.listdir(DRAFT))
        self.assertLessEqual(total, 5_000_000)

    def test_recurd_eval_greedy_matches_transformers(self):
        ev = eval_binary()
        g = json.loads(read(GOLDEN, "r"))
        self.assertGreaterEqual(len(g["cases"]), 3)
        for c in g["cases"][:2] if SAN else g["cases"]:
            out = subprocess.run([ev, "--model", DRAFT, "--tokens", ",".join(map(str, c["tokens"])),
                                  "--greedy", str(len(c["generated"]))],
                                 capture_output=True, text=True, check=True)
            ids = [int(x) for x in out.stdout.strip().split("\n")[-1].split(",")]
            self.assertEqual(ids, c["generated"], c["text"])

    def test_drafts_for_the_bundled_model(self):
        # Speculation with this draft prints the bundled model's own greedy ids, and the
        # draft is right often enough to be accepted (its greedy agreement is ~0.5-0.6).
        ev = eval_binary()
        g = json.loads(read(GOLDEN, "r"))
        for c in g["cases"][:1 if SAN else 2]:
            args = [ev, "--model", TARGET, "--tokens", ",".join(map(str, [0] + c["tokens"])),
                    "--greedy", "48"]
            plain = subprocess.run(args, capture_output=True, text=True, check=True)
            spec = subprocess.run(args + ["--speculate", "draft", "--draft-model", DRAFT,
                                          "--spec-tokens", "4"],
                                  capture_output=True, text=True, check=True)
            self.assertEqual(spec.stdout, plain.stdout, c["text"])
            m = re.search(r"(\d+) drafted, (\d+) accepted", spec.stderr)
            self.assertIsNotNone(m, spec.stderr)
            self.assertGreater(int(m.group(2)), 0, spec.stderr)


if __name__ == "__main__":
    unittest.main()
