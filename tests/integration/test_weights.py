"""recurd integration: --weights q8|q4 (load-time quantization of the CPU backend's matrices).

A bad --weights value stops the daemon at start naming the choices; a --weights q8 daemon
serves turns (and q4 too); its model fingerprint differs from the native one, so a session
checkpointed under q8 is refused (FAILED_PRECONDITION naming both fingerprints) by a daemon
started on the same state dir with native weights, and the checkpoint resumes again under q8.
A pre-quantized GPTQ checkpoint (tests/golden/prequant) is served with the tokens of its fp32
reference model (log-probabilities within 1e-5), and refuses --weights q8."""
import os
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
        self.assertEqual(b.stop(), 0)
        c = self.start("--weights", "q8")  # the same format resumes it
        self.assertEqual(self.fp(c), fp_q8)
        self.assertEqual(self.turn(c, "q")[1].session_version, 2)


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
        with self.assertRaises(RuntimeError) as cm:
            self.spawn("--model", PREQ, "--ephemeral", "--weights", "q8")
        self.assertIn("already quantized", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
