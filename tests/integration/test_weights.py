"""recurd integration: --weights q8|q4 (load-time quantization of the CPU backend's matrices).

A bad --weights value stops the daemon at start naming the choices; a --weights q8 daemon
serves turns (and q4 too); its model fingerprint differs from the native one, so a session
checkpointed under q8 is refused (FAILED_PRECONDITION naming both fingerprints) by a daemon
started on the same state dir with native weights (a fork of it too) and by one with q4, and
the checkpoint resumes again under q8. --matmul bf16 with --weights q8|q4 changes nothing (the
same tokens and logprobs, the log says so). A pre-quantized GPTQ checkpoint
(tests/golden/prequant) is served with the tokens of its fp32 reference model (log-probabilities
within 1e-5), its ready line names the format, it refuses --weights q8 and q4, and an
unsupported quantization_config (bits 3, quant_method awq, checkpoint_format marlin) stops the
start (exit 1) naming the field."""
import json
import os
import shutil
import tempfile
import unittest

import grpc

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request, pb

C = grpc.StatusCode


class Weights(OwnDaemonsTest):
    state_prefix = "recurd-weights-"

    def start(self, *extra):
        return self.spawn("--state-dir", self.dir, "--slots", "2", *extra)

    def turn(self, d, sid=None, n=6):
        _, ids, _, last = collect(d.api.Generate(
            gen_request(tokens=[5, 17, 3, 99, 42], session=sid, max_tokens=n, temperature=0,
                        ignore_eos=True), timeout=120))
        return ids, last

    def fp(self, d):
        return d.api.ListModels(pb.ListModelsRequest()).models[0].fingerprint

    def test_bad_value_refused(self):
        with self.assertRaises(RuntimeError) as cm:
            self.start("--weights", "int4")
        self.assertIn("weights", str(cm.exception))
        self.assertIn("q8", str(cm.exception))

    def test_q4_serves(self):
        d = self.start("--weights", "q4", "--ephemeral")
        self.assertEqual(len(self.turn(d)[0]), 6)
        self.assertIn("weights q4", d.logs())

    def test_q8_checkpoint_refused_by_native_daemon(self):
        a = self.start("--weights", "q8")
        a.api.CreateSession(pb.CreateSessionRequest(session_id="q"))
        ids, last = self.turn(a, "q")
        self.assertEqual(len(ids), 6)
        self.assertEqual(last.session_version, 1)
        fp_q8 = self.fp(a)
        self.assertEqual(a.stop(), 0)
        b = self.start()  # native weights, same state dir
        fp_native = self.fp(b)
        self.assertNotEqual(fp_q8, fp_native)
        with self.assertRaises(grpc.RpcError) as cm:
            self.turn(b, "q")
        self.assertEqual(cm.exception.code(), C.FAILED_PRECONDITION, cm.exception.details())
        self.assertIn(fp_q8, cm.exception.details())
        self.assertIn(fp_native, cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:  # a fork of it too
            b.api.ForkSession(pb.ForkSessionRequest(session_id="q", new_session_id="f"))
        self.assertEqual(cm.exception.code(), C.FAILED_PRECONDITION, cm.exception.details())
        self.assertEqual(b.stop(), 0)
        b = self.start("--weights", "q4")  # another quantized format: refused as well
        fp_q4 = self.fp(b)
        self.assertNotIn(fp_q4, (fp_q8, fp_native))
        with self.assertRaises(grpc.RpcError) as cm:
            self.turn(b, "q")
        self.assertEqual(cm.exception.code(), C.FAILED_PRECONDITION, cm.exception.details())
        self.assertIn(fp_q8, cm.exception.details())
        self.assertIn(fp_q4, cm.exception.details())
        self.assertEqual(b.stop(), 0)
        c = self.start("--weights", "q8")  # the same format resumes it
        self.assertEqual(self.fp(c), fp_q8)
        self.assertEqual(self.turn(c, "q")[1].session_version, 2)

    def test_matmul_bf16_changes_nothing_under_q8(self):
        """--matmul bf16 applies to BF16 matrices; under --weights q8|q4 every matrix is
        quantized, so the tokens and logprobs are those of --matmul fp32, and the log says so."""
        model = os.path.join(ROOT, "tests", "golden", "mamba", "tiny_bias_tied_bf16")
        for w in ("q8", "q4"):
            try:
                d = self.spawn("--model", model, "--ephemeral", "--weights", w, "--matmul",
                               "bf16")
            except RuntimeError as e:  # a CPU with neither AMX-BF16 nor AVX512-BF16
                self.assertIn("bf16 matmul", str(e))
                self.skipTest("--matmul bf16 refused here")
            self.assertIn("--matmul bf16 does not apply to --weights " + w, d.logs())
            ref = self.spawn("--model", model, "--ephemeral", "--weights", w)
            req = dict(tokens=[5, 17, 3, 99, 42, 7, 64, 128, 11, 33, 8, 1, 2, 3, 4, 5, 6, 7],
                       max_tokens=8, temperature=0, ignore_eos=True, logprobs=3)

            def run(x):
                _, ids, lps, _ = collect(x.api.Generate(gen_request(**req), timeout=120))
                return ids, [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                             for lp in lps]
            self.assertEqual(run(d), run(ref), w)
            self.assertEqual(self.fp(d), self.fp(ref))


PREQ = os.path.join(ROOT, "tests", "golden", "prequant", "gptq_w4_g32_asym_actorder")


class PreQuantized(OwnDaemonsTest):
    state_prefix = "recurd-prequant-"

    def gen(self, d):
        return collect(d.api.Generate(gen_request(tokens=[5, 17, 3, 99, 42], max_tokens=6,
                                                  temperature=0, ignore_eos=True, logprobs=2),
                                      timeout=120))

    def test_gptq_served_as_its_reference(self):
        a = self.spawn("--model", PREQ, "--ephemeral")
        b = self.spawn("--model", os.path.join(PREQ, "reference"), "--ephemeral")
        ra, rb = self.gen(a), self.gen(b)
        self.assertEqual(len(ra[1]), 6)
        self.assertEqual(ra[1], rb[1])
        for x, y in zip(ra[2], rb[2]):  # the qg kernels sum per group, then scale
            self.assertEqual(x.token_id, y.token_id)
            self.assertAlmostEqual(x.logprob, y.logprob, delta=1e-5)
        fa = a.api.ListModels(pb.ListModelsRequest()).models[0].fingerprint
        fb = b.api.ListModels(pb.ListModelsRequest()).models[0].fingerprint
        self.assertNotEqual(fa, fb)
        self.assertIn("gptq", a.logs())

    def test_weights_q8_refused(self):
        for w in ("q8", "q4"):
            with self.assertRaises(RuntimeError) as cm:
                self.spawn("--model", PREQ, "--ephemeral", "--weights", w)
            self.assertIn("already quantized", str(cm.exception))
            self.assertIn("--weights %s is refused" % w, str(cm.exception))

    def test_ready_line_names_the_format(self):
        d = self.spawn("--model", PREQ, "--ephemeral")
        self.assertIn("weights native (checkpoint quantized: gptq int4 group 32 asym act-order)",
                      d.logs())

    def test_unsupported_config_refused(self):
        """An unsupported quantization_config stops the start (exit 1) naming the field and
        its value (the full list is checked by prequant_test)."""
        with open(os.path.join(PREQ, "config.json")) as f:
            base = json.load(f)
        for key, value in (("bits", 3), ("quant_method", "awq"), ("checkpoint_format", "marlin")):
            shown = value if key == "bits" else '\\"%s\\"' % value  # JSON log: \" quotes
            want = "quantization_config.%s %s" % (key, shown)
            tmp = tempfile.mkdtemp(prefix="recurd-prequant-cfg-")
            try:
                os.symlink(os.path.join(PREQ, "model.safetensors"),
                           os.path.join(tmp, "model.safetensors"))
                cfg = json.loads(json.dumps(base))
                cfg["quantization_config"][key] = value
                with open(os.path.join(tmp, "config.json"), "w") as f:
                    json.dump(cfg, f)
                with self.assertRaises(RuntimeError) as cm:
                    self.spawn("--model", tmp, "--ephemeral")
                self.assertIn("recurd exited 1", str(cm.exception))
                self.assertIn(want, str(cm.exception))
                self.assertIn("is not supported", str(cm.exception))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
