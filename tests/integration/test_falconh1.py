"""recurd integration: Falcon-H1 served end to end, by token ids (the golden checkpoint has no
tokenizer).

Falcon-H1 (tests/golden/falconh1/mqa_nonorm_tied: every layer runs a Mamba2 mixer and MQA
attention in parallel) has a variable-size state: the fixed Mamba part plus the KV of every
position. A session runs two turns, the daemon is SIGKILLed and restarted, and turn 3 equals
turn 3 of a session that never stopped (tokens and logprobs); each checkpoint's payload grows
by the KV of the turn's positions; a fork (of a cached state and of one read back from disk)
continues like its source; a session turn equals a sessionless run over the whole history. A
prefix snapshot hit (usage.cached_prompt_tokens) equals a full prefill on a daemon without
the prefix cache, and every KV block is back in the pool at exit."""
import os
import unittest

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request, pb
from test_granite import Base, ckpt, ids_of, kv_blocks_at_exit, payload_bytes

FALCON = os.path.join(ROOT, "tests", "golden", "falconh1", "mqa_nonorm_tied")
V = 160  # the fixture's vocabulary
T1 = [5, 17, 42, 99, 3, 150, 7, 64, 128, 11]
T2 = [33, 8, 140, 77]
T3 = [101, 4, 56]
N = 6


class FalconH1(Base):
    model = FALCON
    state_prefix = "recurd-falconh1-"
    KV = ("--kv-blocks", "64", "--kv-block-tokens", "4")  # 256 positions

    def test_resume_after_sigkill_and_fork(self):
        a = self.start(*self.KV)
        self.create(a, "ref")
        r1 = self.turn(a, "ref", T1)
        r2 = self.turn(a, "ref", T2)
        r3 = self.turn(a, "ref", T3)
        self.assertClose(self.turn(a, None, T1 + r1[0] + T2 + r2[0] + T3), r3)
        self.create(a, "s")
        self.assertEqual(self.turn(a, "s", T1), r1)
        a.api.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f1"))
        self.assertEqual(self.turn(a, "f1", T2), r2)
        self.assertEqual(self.turn(a, "s", T2), r2)
        p1, p2 = payload_bytes(ckpt(self.dir, "s", 1)), payload_bytes(ckpt(self.dir, "s", 2))
        # 3 layers x K,V x 1 KV head x head_dim 8 x 4 bytes per position
        self.assertEqual(p2 - p1, 3 * 2 * 8 * 4 * (len(T2) + N))
        self.kill(a)  # no drain: only the durable checkpoints survive

        b = self.start(*self.KV)
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="s")).version, 2)
        self.assertEqual(self.turn(b, "s", T3), r3)
        b.api.ForkSession(pb.ForkSessionRequest(session_id="f1", new_session_id="f2"))
        self.assertEqual(self.turn(b, "f2", T3), r3)


class FalconH1Prefix(OwnDaemonsTest):
    """A prompt sharing a >= 64-token prefix with an earlier one is a hit and equals a full
    prefill (greedy tokens; logprobs within 1e-5)."""
    TOL = 1e-5
    KV = ("--kv-blocks", "96", "--kv-block-tokens", "4")

    def start(self, *extra):
        return self.spawn("--model", FALCON, "--ephemeral", "--prefill-chunk", "48", *self.KV,
                          *extra)

    def gen(self, d, ids):
        return collect(d.api.Generate(gen_request(tokens=ids, max_tokens=8, temperature=0,
                                                  ignore_eos=True, logprobs=3), timeout=120))

    def same(self, on, off, ids, cached):
        a, b = self.gen(on, ids), self.gen(off, ids)
        self.assertEqual(a[1], b[1])
        for x, y in zip(a[2], b[2]):
            self.assertEqual(x.token_id, y.token_id)
            self.assertAlmostEqual(x.logprob, y.logprob, delta=self.TOL)
        self.assertEqual(a[3].usage.cached_prompt_tokens, cached)
        self.assertEqual(b[3].usage.cached_prompt_tokens, 0)

    def test_prefix_hit_equals_full_prefill(self):
        on, off = self.start(), self.start("--prefix-cache-bytes", "0")
        base = ids_of(7, 200, V)
        sys = base[:150]
        self.same(on, off, sys + base[150:160], 0)  # takes 64 and 128
        self.same(on, off, sys + base[160:175], 128)
        self.same(on, off, sys[:100] + base[175:185], 64)
        for d in (on, off):
            self.assertEqual(d.stop(), 0, d.logs()[-3000:])
        self.assertEqual(kv_blocks_at_exit(on), (96, 96))


if __name__ == "__main__":
    unittest.main()
