"""recurd integration: speculative decoding (--speculate ngram, issue 18) never changes output.

One daemon per model runs with --speculate ngram; the same requests with sampling.speculate =
SPECULATE_OFF are the reference (a per-request switch: the same process, the same kernels).
For the Mamba, Mamba2, Granite (paged KV), RecurrentGemma, Nemotron-H, Falcon-H1, Jamba and
Qwen3-Next golden fixtures (Qwen3-Next's prompt and answer run past its first 64-token Gated
DeltaNet block), the Mamba fixture with --weights q8, the Granite one with --weights q4 and a
pre-quantized GPTQ act-order checkpoint, with a
copy-heavy prompt (a passage, the model's own greedy continuation of it, and the passage again:
the answer repeats what followed it, so drafts get accepted: Usage.accepted_tokens > 0):
greedy tokens and logprobs are identical, and so is every checkpoint's payload (byte for
byte); concurrent speculating streams equal the reference; seeded sampling (temperature,
top-k/p, penalties) gives the same tokens; max_tokens and stop token ids landing inside an
accepted run end exactly where the reference does; after a SIGKILL between turns the resumed
session's next turn equals the reference. On the bundled model (it has a tokenizer): stop
strings inside an accepted run, the OpenAI usage details, the /metrics counters and the exit
stats (the same totals, the acceptance their ratio); with the
gain check on (--spec-adaptive, the default; the other tests turn it off so that every eligible
step speculates) the output equals the reference and the exit stats report its pauses.
recurd-eval --speculate ngram prints the ids it prints without; with --tp 2 (no verify entries)
it says "speculative decoding off" and prints them too; bad --spec-tokens / --speculate values
exit 2. A SamplingParams.speculate other than SPECULATE_SERVER/SPECULATE_OFF is
INVALID_ARGUMENT."""
import json
import os
import re
import subprocess
import unittest
import urllib.request

from rcd_harness import ckpt_payload as payload
from rcd_harness import ROOT, OwnDaemonsTest, collect, concurrently, daemon_binary, eval_binary, \
    gen_request, pb

import grpc  # noqa: E402 (after rcd_harness, which skips the test without grpcio)

G = os.path.join(ROOT, "tests", "golden")
PASSAGE = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 33, 8]
OFF = 1  # SPECULATE_OFF
# Under the sanitizers (their CTest environment sets RECURD_ABUSE_SCALE) fewer repetitions.
SAN = "RECURD_ABUSE_SCALE" in os.environ




def norm(res):
    return res[1], [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                    for lp in res[2]]


class Fixture(OwnDaemonsTest):
    model = None
    extra = ()
    passage = PASSAGE
    n = 40

    def start(self):
        return self.spawn("--model", self.model, "--state-dir", self.dir, "--speculate", "ngram",
                          "--spec-tokens", "4", "--spec-adaptive", "off", *self.extra)

    def gen(self, d, ids, sid=None, off=False, **kw):
        kw.setdefault("temperature", 0)
        kw.setdefault("max_tokens", self.n)
        r = gen_request(tokens=ids, session=sid, ignore_eos=True, logprobs=2, **kw)
        if off:
            r.sampling.speculate = OFF
        return collect(d.api.Generate(r, timeout=120))

    def test_same_output_and_checkpoints(self):
        if self.model is None:
            self.skipTest("base class")
        d = self.start()
        p = self.passage
        PROMPT = p + self.gen(d, p, off=True, max_tokens=24)[1] + p
        for sid in ("on", "off"):
            d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
        on = self.gen(d, PROMPT, "on")
        off = self.gen(d, PROMPT, "off", off=True)
        self.assertEqual(norm(on), norm(off))
        self.assertEqual(off[3].usage.draft_tokens, 0)
        self.assertGreater(on[3].usage.accepted_tokens, 0, on[3].usage)
        self.assertGreaterEqual(on[3].usage.draft_tokens, on[3].usage.accepted_tokens)
        self.assertEqual(payload(self.dir, "on", 1), payload(self.dir, "off", 1))
        # concurrent speculating streams (ragged verify entries) and a second turn
        n_streams = 2 if SAN else 3
        res = concurrently(lambda: norm(self.gen(d, PROMPT)), n_streams)
        self.assertEqual(res, [norm(off)] * n_streams)
        t2 = self.passage[2:9]
        self.assertEqual(norm(self.gen(d, t2, "on")), norm(self.gen(d, t2, "off", off=True)))
        self.assertEqual(payload(self.dir, "on", 2), payload(self.dir, "off", 2))
        # seeded sampling: the same draws, consumed the same way per emitted token
        samp = dict(temperature=0.7, top_k=20, top_p=0.95, repetition_penalty=1.1, seed=11)
        self.assertEqual(norm(self.gen(d, PROMPT, **samp)),
                         norm(self.gen(d, PROMPT, off=True, **samp)))
        # max_tokens and a stop token id inside an accepted run
        ref = off[1]
        for m in (1, 5) if SAN else (1, 2, 3, 5, 8, 13):
            self.assertEqual(self.gen(d, PROMPT, max_tokens=m)[1], ref[:m])
        firsts = [t for i, t in enumerate(ref) if i >= 3 and t not in ref[:i]]
        stop_id = firsts[0] if firsts else ref[0]
        got = self.gen(d, PROMPT, stop_token_ids=[stop_id])
        self.assertEqual(got[1], self.gen(d, PROMPT, off=True, stop_token_ids=[stop_id])[1])
        self.assertLess(len(got[1]), len(ref))
        # SIGKILL between turns: the resumed session goes on as the reference
        self.kill(d)
        d = self.start()
        t3 = self.passage[:6] * 2
        self.assertEqual(norm(self.gen(d, t3, "on")), norm(self.gen(d, t3, "off", off=True)))
        self.assertEqual(payload(self.dir, "on", 3), payload(self.dir, "off", 3))


class Mamba(Fixture):
    model = os.path.join(G, "mamba", "tiny_nobias_untied")


class Mamba2(Fixture):
    model = os.path.join(G, "mamba2", "tiny_g2_untied")


class Granite(Fixture):
    model = os.path.join(G, "granite", "mha_moe8")
    extra = ("--kv-blocks", "128", "--kv-block-tokens", "4")


class RecurrentGemma(Fixture):
    model = os.path.join(G, "recurrentgemma", "attn_first_w4")


# Quantized weights (issue 19) under speculation: the verify entries run the same int8 / qg
# kernels, which are batch-invariant, so the same bits as SPECULATE_OFF.
class MambaQ8(Fixture):
    model = os.path.join(G, "mamba", "tiny_nobias_untied")
    extra = ("--weights", "q8")


class GraniteQ4(Fixture):
    model = os.path.join(G, "granite", "mha_moe8")
    extra = ("--weights", "q4", "--kv-blocks", "128", "--kv-block-tokens", "4")


class PreQuantizedGPTQ(Fixture):
    model = os.path.join(G, "prequant", "gptq_w4_g32_asym_actorder")


# The hybrids' fixtures have vocabularies of 131-160 tokens: the passage without its 250.
SMALL_VOCAB_PASSAGE = [120 if t == 250 else t for t in PASSAGE]
KV = ("--kv-blocks", "128", "--kv-block-tokens", "4")


class NemotronH(Fixture):
    model = os.path.join(G, "nemotronh", "moe_gqa_tied")
    extra = KV
    passage = SMALL_VOCAB_PASSAGE


class FalconH1(Fixture):
    model = os.path.join(G, "falconh1", "odd_bias_gate_first")
    extra = KV
    passage = SMALL_VOCAB_PASSAGE


class Jamba(Fixture):
    model = os.path.join(G, "jamba", "p4o2_mqa_odd")
    extra = KV
    passage = SMALL_VOCAB_PASSAGE


class Qwen3Next(Fixture):
    # Gated DeltaNet + attention + MoE; vocabulary 256. The first test's prompt is 48 tokens
    # and its answer 40: verify entries cross the 64-token block boundary.
    model = os.path.join(G, "qwen3next", "moe_shared_tied")
    extra = KV


class Eval(unittest.TestCase):
    def test_recurd_eval_speculate(self):
        ev = eval_binary()
        args = [ev, "--model", os.path.join(G, "granite", "mha_moe8"), "--tokens",
                ",".join(map(str, PASSAGE * 2)), "--greedy", "40"]
        plain = subprocess.run(args, capture_output=True, text=True, check=True)
        spec = subprocess.run(args + ["--speculate", "ngram"], capture_output=True, text=True,
                              check=True)
        self.assertEqual(spec.stdout, plain.stdout)
        self.assertEqual(len(plain.stdout.strip().split(",")), 40)
        acc = int(spec.stderr.split(" accepted")[0].rsplit(" ", 1)[1])
        self.assertGreater(acc, 0, spec.stderr)
        # a backend without verify entries (CPU tensor parallelism): "speculative decoding
        # off" and plain decoding, the same ids (as the daemon does)
        margs = [ev, "--model", os.path.join(G, "mamba", "tiny_nobias_untied"), "--tokens",
                 ",".join(map(str, PASSAGE * 2)), "--greedy", "24", "--tp", "2"]
        mplain = subprocess.run(margs, capture_output=True, text=True, check=True)
        tp = subprocess.run(margs + ["--speculate", "ngram"], capture_output=True, text=True)
        self.assertEqual(tp.returncode, 0, tp.stderr)
        self.assertIn("speculative decoding off", tp.stderr)
        self.assertEqual(tp.stdout, mplain.stdout)
        self.assertEqual(len(tp.stdout.strip().split(",")), 24)
        # bad options exit 2 naming the option
        for bad in (["--spec-tokens", "0"], ["--spec-tokens", "16"], ["--spec-tokens", "abc"],
                    ["--spec-tokens", "4x"], ["--speculate", "maybe"], ["--weights", "int4"]):
            r = subprocess.run(args + ["--speculate", "ngram"] + bad, capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 2, (bad, r.stderr))
            self.assertIn(bad[0], r.stderr)
            self.assertEqual(r.stdout, "")


class Adaptive(OwnDaemonsTest):
    """--spec-adaptive (the gain check, on by default): whatever it pauses, the output equals
    the reference; the exit stats report its pauses; a value other than on|off is refused."""

    def test_gain_check(self):
        port_file = os.path.join(self.dir, "http.port")
        d = self.spawn("--state-dir", self.dir, "--speculate", "ngram", "--spec-tokens", "4",
                       "--http-port", "0", "--http-port-file", port_file)
        text = "Once upon a time"

        def gen(off=False):
            r = gen_request(prompt=text, temperature=0, ignore_eos=True, max_tokens=48)
            if off:
                r.sampling.speculate = OFF
            return collect(d.api.Generate(r, timeout=120))[:2]

        text = text + gen(off=True)[0] + text  # copy-heavy
        for _ in range(2 if SAN else 4):
            self.assertEqual(gen(), gen(off=True))
        self.assertEqual(concurrently(gen, 3), [gen(off=True)] * 3)
        with open(port_file) as f:
            port = int(f.read())
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=60) as resp:
            m = {line.split("{")[0]: line.rsplit(" ", 1)[1]
                 for line in resp.read().decode().splitlines()
                 if line.startswith("recurd_spec_decode_pause")}
        self.assertEqual(d.stop(), 0)
        # /metrics counts the pauses and paused steps the exit stats report (no step since)
        got = re.search(r"spec pauses (\d+) paused steps (\d+)", d.exit_logs)
        self.assertIsNotNone(got, d.exit_logs[-2000:])
        self.assertEqual(int(float(m["recurd_spec_decode_pauses_total"])), int(got.group(1)), m)
        self.assertEqual(int(float(m["recurd_spec_decode_paused_steps_total"])), int(got.group(2)),
                         m)
        bad = subprocess.run([daemon_binary(), "--spec-adaptive", "maybe"], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertIn("spec-adaptive", bad.stderr)


class Bundled(OwnDaemonsTest):
    """The bundled model has a tokenizer: stop strings and the HTTP usage."""

    def test_stop_strings_and_openai_usage(self):
        port_file = os.path.join(self.dir, "http.port")
        d = self.spawn("--state-dir", self.dir, "--speculate", "ngram", "--http-port", "0",
                       "--spec-adaptive", "off",
                       "--http-port-file", port_file)
        text = "Once upon a time"

        def gen(off=False, **kw):
            kw.setdefault("max_tokens", 40)
            r = gen_request(prompt=text, temperature=0, ignore_eos=True, **kw)
            if off:
                r.sampling.speculate = OFF
            return collect(d.api.Generate(r, timeout=120))

        text = text + gen(off=True, max_tokens=30)[0] + text  # copy-heavy, as above
        ref = gen(off=True)
        on = gen()
        self.assertEqual(on[:2], ref[:2])
        self.assertGreater(on[3].usage.accepted_tokens, 0, on[3].usage)
        # SamplingParams.speculate: SPECULATE_SERVER (0) and SPECULATE_OFF (1) only
        for v in (2, 99, -1):
            r = gen_request(prompt=text, temperature=0, max_tokens=4)
            r.sampling.speculate = v
            with self.assertRaises(grpc.RpcError) as cm:
                collect(d.api.Generate(r, timeout=60))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("speculate", cm.exception.details())
        s = ref[0]
        for stop in {s[len(s) // 3:len(s) // 3 + 3], s[len(s) // 2:len(s) // 2 + 2]}:
            self.assertEqual(gen(stop=[stop])[:2], gen(off=True, stop=[stop])[:2])
        with open(port_file) as f:
            port = int(f.read())
        body = json.dumps({"prompt": text, "max_tokens": 40, "temperature": 0})
        req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port,
                                     data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            u = json.load(resp)["usage"]
        det = u["completion_tokens_details"]
        self.assertGreater(det["accepted_prediction_tokens"], 0, u)
        self.assertGreaterEqual(det["rejected_prediction_tokens"], 0, u)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=60) as resp:
            m = {line.split("{")[0].split(" ")[0]: line.rsplit(" ", 1)[1]
                 for line in resp.read().decode().splitlines()
                 if line.startswith("recurd_spec_decode_")}
        drafted = float(m["recurd_spec_decode_draft_tokens_total"])
        self.assertGreater(float(m["recurd_spec_decode_accepted_tokens_total"]), 0, m)
        self.assertGreaterEqual(drafted, float(m["recurd_spec_decode_accepted_tokens_total"]))
        # the exit stats: the same totals and their ratio, the acceptance rate
        self.assertEqual(d.stop(), 0)
        got = re.search(r"spec verifies \d+ drafted (\d+) accepted (\d+) \(acceptance ([0-9.]+)\)",
                        d.exit_logs)
        self.assertIsNotNone(got, d.exit_logs[-2000:])
        self.assertEqual(int(got.group(1)), int(drafted))
        accepted = int(float(m["recurd_spec_decode_accepted_tokens_total"]))
        self.assertEqual(int(got.group(2)), accepted)
        self.assertAlmostEqual(float(got.group(3)), int(got.group(2)) / int(got.group(1)), places=3)


if __name__ == "__main__":
    unittest.main()
