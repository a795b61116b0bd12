"""recurd integration through the C client: recurctl (gRPC C core + protobuf-c) against the
real daemon — health, models, session lifecycle, streamed generation, error statuses; with
--speculate ngram the summary line's drafts and --no-speculate."""
import json
import re
import subprocess
import unittest

from rcd_harness import DaemonTest, collect, gen_request, recurctl_binary


class Ctl:
    def ctl(self, *args, rc=0):
        p = subprocess.run([recurctl_binary(), "--addr", self.d.addr, "--timeout", "120"] +
                           list(args), capture_output=True, text=True, timeout=180)
        self.assertEqual(p.returncode, rc, p.stderr)
        return p.stdout, p.stderr


class Recurctl(Ctl, DaemonTest):
    def test_health_models(self):
        self.assertEqual(self.ctl("health")[0].strip(), "SERVING")
        m = json.loads(self.ctl("models")[0])
        self.assertEqual(m["id"], "recurd-mamba-tiny")

    def test_session_lifecycle_and_generate(self):
        s = json.loads(self.ctl("session", "create", "--id", "ctl-1", "--meta", "a=b")[0])
        self.assertEqual((s["session_id"], s["version"], s["metadata"]), ("ctl-1", 0, {"a": "b"}))
        out, err = self.ctl("generate", "--session", "ctl-1", "--max-tokens", "6",
                            "--temperature", "0", "Once upon a time")
        self.assertIn("version 1", err)
        # the C client streams the same text as the Python client for the same request
        ref = collect(self.api.Generate(gen_request("Once upon a time", max_tokens=6,
                                                    temperature=0), timeout=120))[0]
        self.assertEqual(out, ref)
        s = json.loads(self.ctl("session", "get", "ctl-1")[0])
        self.assertEqual(s["version"], 1)
        f = json.loads(self.ctl("session", "fork", "ctl-1", "--id", "ctl-2")[0])
        self.assertEqual((f["parent_session_id"], f["version"]), ("ctl-1", 1))
        self.ctl("session", "delete", "ctl-1")
        _, err = self.ctl("session", "get", "ctl-1", rc=5)
        self.assertIn("not found", err)
        _, err = self.ctl("generate", "--session", "ctl-2", "--expected-version", "7", "x", rc=9)
        _, err = self.ctl("generate", "--temperature", "-1", "x", rc=3)

    def test_tokenize(self):
        ids = self.ctl("tokenize", "hello world")[0].strip().split(",")
        self.assertGreater(len(ids), 0)
        self.assertTrue(all(i.isdigit() for i in ids))


class Speculating(Ctl, DaemonTest):
    """--speculate ngram: generate's summary line counts the drafts; --no-speculate sends
    SPECULATE_OFF (the same text, no drafts)."""
    daemon_args = ("--ephemeral", "--speculate", "ngram", "--spec-adaptive", "off")

    def test_drafts_and_no_speculate(self):
        text = "Once upon a time"
        first, _ = self.ctl("generate", "--max-tokens", "30", "--temperature", "0",
                            "--no-speculate", text)
        text = text + first + text  # copy-heavy: the answer repeats what followed the passage
        on, err_on = self.ctl("generate", "--max-tokens", "40", "--temperature", "0", text)
        off, err_off = self.ctl("generate", "--max-tokens", "40", "--temperature", "0",
                                "--no-speculate", text)
        self.assertEqual(on, off)
        m = re.search(r", (\d+) drafts (\d+) accepted\]", err_on)
        self.assertIsNotNone(m, err_on)
        self.assertGreater(int(m.group(2)), 0, err_on)
        self.assertGreaterEqual(int(m.group(1)), int(m.group(2)))
        self.assertNotIn("drafts", err_off)
        self.assertIn("40 completion tokens", err_off)


if __name__ == "__main__":
    unittest.main(verbosity=2)
