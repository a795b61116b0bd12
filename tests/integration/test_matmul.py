"""recurd integration: the opt-in bf16 matmul (--matmul bf16, AMX) served end to end, by token
ids on a BF16 checkpoint (tests/golden/mamba/tiny_bias_tied_bf16). The AVX512_BF16 path (CPUs
without AMX; forced here by RCD_MATMUL_NO_AMX=1) gets the same checks where the CPU has it.

A bad --matmul value stops the daemon at start with a message naming the choices; on an F32
checkpoint the mode changes nothing and the log says so. On a CPU
without AMX-BF16 --matmul bf16 also stops it, saying why (checked), and the tests that need the
mode are skipped with that reason. With AMX: the daemon logs the kernels it runs; 16 distinct
greedy streams at once give the same tokens and logprobs, bit for bit, as the same requests one
at a time (the bf16 matmul is batch-invariant like the fp32 one); and a --prefill-chunk 4
daemon gives the same bits as a whole-prompt one."""
import os
import unittest

from rcd_harness import ROOT, OwnDaemonsTest, collect, concurrently, gen_request

MODEL = os.path.join(ROOT, "tests", "golden", "mamba", "tiny_bias_tied_bf16")
N = 16


def requests():
    return [gen_request(tokens=[(7 * i + 13 * k) % 200 + 1 for k in range(3 + (5 * i) % 29)],
                        max_tokens=6 + i % 7, temperature=0, ignore_eos=True, logprobs=2)
            for i in range(N)]


def run(d, req):
    _, ids, lps, _ = collect(d.api.Generate(req, timeout=300))
    return ids, [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                 for lp in lps]


class Bf16Matmul(OwnDaemonsTest):
    state_prefix = "recurd-matmul-"

    def start(self, *extra, env=None):
        return self.spawn("--model", MODEL, "--ephemeral", "--slots", "16", *extra, env=env)

    def start_bf16(self, *extra, env=None):
        """A --matmul bf16 daemon, or a skip with the daemon's reason where the CPU (or the
        kernel) has no AMX-BF16; any other failure to start is a failure."""
        try:
            return self.start("--matmul", "bf16", *extra, env=env)
        except RuntimeError as e:
            msg = str(e)
            self.assertIn("bf16 matmul", msg)
            why = [w for w in ("no AMX-BF16", "no AVX512-BF16", "does not grant AMX",
                               "refused AMX", "no AMX kernels", "AVX-512 kernels are not")
                   if w in msg]
            self.assertTrue(why, msg[-2000:])
            self.skipTest("--matmul bf16 refused here: " + why[0])

    def test_bad_value_refused(self):
        with self.assertRaises(RuntimeError) as cm:
            self.start("--matmul", "fp16")
        self.assertIn("matmul must be fp32 or bf16", str(cm.exception))

    def test_fp32_weights_warned(self):
        """On an F32 checkpoint the mode changes nothing, and the log says so."""
        d = self.start_bf16("--model", os.path.join(ROOT, "tests", "golden", "mamba",
                                                    "tiny_bias_tied"))
        self.assertIn("applies to BF16 weights; this model's are F32", d.logs())
        self.assertEqual(len(run(d, requests()[0])[0]), 6)

    def test_concurrent_equals_one_at_a_time(self):
        d = self.start_bf16()
        # AMX where the CPU has it, else AVX512_BF16 (Zen 4): the log names which
        self.assertTrue("avx512+amx-bf16" in d.logs() or "avx512+avx512-bf16" in d.logs(),
                        d.logs()[-2000:])
        reqs = requests()
        ref = [run(d, r) for r in reqs]
        for i, (ids, _) in enumerate(ref):
            self.assertEqual(len(ids), 6 + i % 7)
        it = iter(range(N))
        got = {}

        def one():
            i = next(it)
            got[i] = run(d, reqs[i])
        errs = [r for r in concurrently(one, N) if r is not None]
        self.assertEqual(errs, [])
        for i in range(N):
            self.assertEqual(got[i], ref[i], "stream %d" % i)

    def test_chunked_prefill_same_bits(self):
        whole = self.start_bf16()
        reqs = requests()[:6]
        ref = [run(whole, r) for r in reqs]
        chunked = self.start_bf16("--prefill-chunk", "4", "--max-step-tokens", "16")
        for i, r in enumerate(reqs):
            self.assertEqual(run(chunked, r), ref[i], "request %d" % i)

    def test_avx512_bf16_path(self):
        """RCD_MATMUL_NO_AMX=1: --matmul bf16 runs on VDPBF16PS (logged), concurrent streams
        and a chunked prefill give the same bits as one at a time / whole, and the tokens are
        those of the AMX path up to near-ties (same rounding of x, other fp32 sum order)."""
        env = {"RCD_MATMUL_NO_AMX": "1"}
        try:
            d = self.start("--matmul", "bf16", env=env)
        except RuntimeError as e:
            self.assertIn("no AVX512-BF16", str(e))
            self.skipTest("no AVX512-BF16 here")
        self.assertIn("avx512+avx512-bf16", d.logs())
        reqs = requests()
        ref = [run(d, r) for r in reqs]
        it = iter(range(N))
        got = {}

        def one():
            i = next(it)
            got[i] = run(d, reqs[i])
        self.assertEqual([r for r in concurrently(one, N) if r is not None], [])
        for i in range(N):
            self.assertEqual(got[i], ref[i], "stream %d" % i)
        chunked = self.start("--matmul", "bf16", "--prefill-chunk", "4", "--max-step-tokens",
                             "16", env=env)
        for i, r in enumerate(reqs[:6]):
            self.assertEqual(run(chunked, r), ref[i], "request %d" % i)
        fp32 = self.start()
        same = sum(run(fp32, r)[0] == ref[i][0] for i, r in enumerate(reqs[:6]))
        self.assertGreaterEqual(same, 4, "greedy ids far from the fp32 path's")


if __name__ == "__main__":
    unittest.main()
