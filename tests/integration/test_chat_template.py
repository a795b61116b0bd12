"""recurd integration: the chat template is chosen and compiled at start-up — --chat-template
FILE (or RECURD_CHAT_TEMPLATE), else the model's tokenizer_config.json chat_template, else the
built-in ChatML default — and one that does not compile, or a file that cannot be read, stops
the daemon with an error naming the file and the line:column (daemon/README.md)."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from rcd_harness import ROOT, Daemon, daemon_binary

MODEL = os.path.join(ROOT, "models", "recurd-mamba-tiny")


def run_failing(*args, env=None):
    """Starts the daemon expecting it to stop before serving: (exit code, output)."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([daemon_binary(), "--port", "0", "--no-progress", "--ephemeral"] +
                       list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120, env=e)
    return p.returncode, p.stdout.decode("utf-8", "replace")


class ChatTemplate(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="recurd-chat-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def model_with_config(self, cfg_update):
        """A copy of the bundled model (links) whose tokenizer_config.json is updated."""
        d = os.path.join(self.tmp, "model")
        os.mkdir(d)
        for name in os.listdir(MODEL):
            if name != "tokenizer_config.json":
                os.symlink(os.path.join(MODEL, name), os.path.join(d, name))
        with open(os.path.join(MODEL, "tokenizer_config.json")) as f:
            cfg = json.load(f)
        cfg.update(cfg_update)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f)
        return d

    def started_with(self, *args, env=None):
        d = Daemon("--ephemeral", *args, env=env)
        try:
            return [l for l in d.logs().splitlines() if '"chat_template"' in l]
        finally:
            self.assertEqual(d.stop(), 0)

    def test_bad_file_stops_the_daemon(self):
        bad = self.write("bad.jinja", "{% if x %}\n{{ 1 + }}\n")
        rc, out = run_failing("--chat-template", bad)
        self.assertNotEqual(rc, 0, out)
        self.assertIn(bad, out)
        self.assertIn("line 2:8", out)
        self.assertNotIn('"ready"', out)
        # the environment variable is the same option
        rc, out = run_failing(env={"RECURD_CHAT_TEMPLATE": bad})
        self.assertNotEqual(rc, 0, out)
        self.assertIn("line 2:8", out)

    def test_unsupported_construct_is_named(self):
        path = self.write("inc.jinja", "{% include 'other.jinja' %}")
        rc, out = run_failing("--chat-template", path)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("include", out)
        self.assertIn(path, out)

    def test_missing_file_stops_the_daemon(self):
        missing = os.path.join(self.tmp, "nope.jinja")
        rc, out = run_failing("--chat-template", missing)
        self.assertNotEqual(rc, 0, out)
        self.assertIn(missing, out)
        self.assertIn("No such file", out)

    def test_bad_model_template_names_tokenizer_config(self):
        model = self.model_with_config({"chat_template": "{{ messages | nosuchfilter }}"})
        rc, out = run_failing("--model", model)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("tokenizer_config.json", out)
        self.assertIn("nosuchfilter", out)
        # --chat-template overrides the model's template, so the daemon starts
        good = self.write("good.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}")
        lines = self.started_with("--model", model, "--chat-template", good)
        self.assertTrue(any(good in l for l in lines), lines)

    def test_sources_in_order(self):
        # the bundled model has no chat_template: the default
        lines = self.started_with()
        self.assertTrue(any("default (ChatML)" in l for l in lines), lines)
        # a model with one (the list form: the template named "default")
        model = self.model_with_config({"chat_template": [
            {"name": "tool_use", "template": "{{ nope("},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}],
            "bos_token": {"content": "<s>", "special": True}})
        lines = self.started_with("--model", model)
        self.assertTrue(any("chat template: tokenizer_config.json" in l for l in lines), lines)


if __name__ == "__main__":
    unittest.main()
