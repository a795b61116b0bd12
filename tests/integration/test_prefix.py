"""recurd integration: prefix snapshots — a prompt that starts with a cached prefix skips its
prefill, and its tokens are identical (logprobs equal to 1e-4) to those of a daemon with the
prefix cache disabled (--prefix-cache-bytes 0); usage.cached_prompt_tokens says how many were
skipped."""
import unittest

from rcd_harness import Daemon, collect, gen_request, pb

G = 64  # STORE_PREFIX_GRAN
TOL = 1e-4


class Prefix(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A small prefill chunk, so that the prefixes and the chunks do not line up.
        cls.on = Daemon("--ephemeral", "--prefill-chunk", "96")
        cls.off = Daemon("--ephemeral", "--prefix-cache-bytes", "0")
        text = ("You are a helpful assistant. Answer briefly and exactly. " * 16 +
                "Example: the capital of France is Paris. The sum of two and two is four. " * 8)
        cls.base = list(cls.on.api.Tokenize(pb.TokenizeRequest(text=text)).token_ids)
        assert len(cls.base) >= 300, len(cls.base)
        cls.sys = cls.base[:200]  # the shared prefix: 200 tokens, not a multiple of G

    @classmethod
    def tearDownClass(cls):
        for d in (cls.on, cls.off):
            rc = d.stop()
            if rc != 0:
                raise AssertionError("recurd exited %d:\n%s" % (rc, d.logs()[-4000:]))

    def run_both(self, tokens, cached, session_on=None, session_off=None, **kw):
        args = dict(max_tokens=12, temperature=0, ignore_eos=True, logprobs=3)
        args.update(kw)
        a = collect(self.on.api.Generate(gen_request(tokens=tokens, session=session_on, **args),
                                         timeout=300))
        b = collect(self.off.api.Generate(gen_request(tokens=tokens, session=session_off, **args),
                                          timeout=300))
        self.assertEqual(a[1], b[1])  # the same tokens
        self.assertEqual(len(a[2]), len(b[2]))
        # The same logprobs, to float rounding: the CPU engine's prefill is not bitwise
        # invariant to where chunks split (a prefix hit restarts the chunking at the boundary;
        # the daemons' chunk sizes differ too), a few 1e-6 apart, as for session resumes.
        for x, y in zip(a[2], b[2]):
            self.assertEqual(x.token_id, y.token_id)
            self.assertAlmostEqual(x.logprob, y.logprob, delta=TOL)
            self.assertEqual([t.token_id for t in x.top], [t.token_id for t in y.top])
            for u, v in zip(x.top, y.top):
                self.assertAlmostEqual(u.logprob, v.logprob, delta=TOL)
        self.assertEqual(a[3].usage.cached_prompt_tokens, cached)
        self.assertEqual(b[3].usage.cached_prompt_tokens, 0)
        self.assertEqual(a[3].usage.prompt_tokens, len(tokens))
        return a, b

    def test_1_shared_prefix(self):
        q1, q2 = self.base[200:230], self.base[240:290]
        # First request: nothing cached; snapshots at 64, 128 and 192 are taken.
        self.run_both(self.sys + q1, 0)
        # Another question after the same 200-token prefix: starts at 192.
        self.run_both(self.sys + q2, 192)
        # Seeded sampling is identical too (the sampler still sees the whole prompt).
        self.run_both(self.sys + q2[:7], 192, temperature=1.0, seed=11, top_k=40,
                      repetition_penalty=1.3)
        # One token past a boundary: only the last token is fed.
        self.run_both(self.sys[:193], 192)
        # A prompt of exactly 192 tokens: its last token must be fed, so 128 serves.
        self.run_both(self.sys[:192], 128)
        # Below the granularity: nothing to look up.
        self.run_both(self.sys[:G], 0)
        # A prompt that differs inside the first block: a miss.
        other = list(self.sys)
        other[3] = other[3] + 1 if other[3] + 1 != other[4] else other[3] + 2
        self.run_both(other + q1, 0)

    def test_2_session_first_turn(self):
        """A new session's first turn starts from the prefix; its committed state (and so the
        next turn) is the one a full prefill gives."""
        s_on = self.on.api.CreateSession(pb.CreateSessionRequest()).session_id
        s_off = self.off.api.CreateSession(pb.CreateSessionRequest()).session_id
        self.run_both(self.sys + self.base[210:250], 192, session_on=s_on, session_off=s_off)
        # A session with committed state never uses a snapshot: its history is its state.
        self.run_both(self.sys + self.base[250:260], 0, session_on=s_on, session_off=s_off)

    def test_3_long_prefix(self):
        """A prefix longer than a step's budget: snapshots at 256 and 512 split chunks."""
        long = (self.base * 4)[:600]
        self.run_both(long, 192)  # test_1 cached base[:192]; takes 256, 512 and 576
        self.run_both(long[:520] + self.base[:20], 512)
        self.run_both(long[:300] + self.base[5:15], 256)


if __name__ == "__main__":
    unittest.main(verbosity=2)
