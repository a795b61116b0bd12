"""recurd integration: the issue-20 hybrids (Nemotron-H, Jamba, Falcon-H1, Qwen3-Next, one golden
checkpoint each with attention layers, so with paged KV beside the fixed state) through the two
state paths their own tests (test_<family>.py) do not take:
- the Redis shared tier: a session whose turns 1-2 ran on daemon A (SIGKILLed) resumes on daemon
  B, which shares only the Redis server with A, and its turn 3 equals turn 3 of a session that
  never moved (tokens and logprobs, bit for bit); a fork made on B of a session only Redis
  held continues the same way;
- preemption by swap: with one state slot, a high-priority turn swaps a running low-priority
  turn out to host memory (fixed state and KV blocks); both outputs equal the turns run alone.
Skipped (exit 77) when redis-server is not installed."""
import os
import unittest

from rcd_harness import require_redis

require_redis()

from rcd_harness import (ROOT, OwnDaemonsTest, RedisTest, collect, gen_request,  # noqa: E402
                         pb, run_preempted)
from test_granite import ids_of  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "golden")
FAMILIES = {  # fixture, vocabulary size
    "nemotronh": ("nemotronh/moe_gqa_tied", 160),
    "jamba": ("jamba/alt_moe_gqa", 256),
    "falconh1": ("falconh1/gqa_norm_before_gate", 160),
    "qwen3next": ("qwen3next/moe_shared_tied", 256),
}
KV = ("--kv-blocks", "128", "--kv-block-tokens", "4")  # 512 positions
N = 6  # tokens per turn
LOW_N = 400  # the low-priority turn: long enough to be running when the high one comes


def lp_tuples(lps):
    """Logprobs as comparable tuples: (token, logprob, [(top token, logprob)])."""
    return [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top]) for lp in lps]


class HybridTiers(RedisTest, OwnDaemonsTest):
    state_prefix = "recurd-hybrid-"
    redis_prefix = "recurd-hybrid-redis-"

    def turn(self, d, sid, ids, n=N, **kw):
        req = gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0, ignore_eos=True,
                          logprobs=3)
        for k, v in kw.items():
            setattr(req, k, v)
        _, out, lps, last = collect(d.api.Generate(req, timeout=300))
        self.assertEqual(len(out), n)
        return out, lp_tuples(lps), last

    def test_redis_resume_and_fork(self):
        for fam, (rel, vocab) in FAMILIES.items():
            with self.subTest(family=fam):
                model = ("--model", os.path.join(GOLDEN, rel), *KV)
                t1, t2, t3 = ids_of(1, 10, vocab), ids_of(2, 4, vocab), ids_of(3, 3, vocab)
                a = self.spawn(*model, "--redis", self.redis_addr)  # each its own --state-dir
                ref, s = fam + "-ref", fam + "-s"
                for sid in (ref, s):
                    a.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
                r = [self.turn(a, ref, t)[:2] for t in (t1, t2, t3)]
                self.assertEqual(self.turn(a, s, t1)[:2], r[0])
                self.assertEqual(self.turn(a, s, t2)[:2], r[1])
                self.kill(a)  # A's disk is gone with it: only Redis holds the session now

                b = self.spawn(*model, "--redis", self.redis_addr)
                got = b.api.GetSession(pb.GetSessionRequest(session_id=s))
                self.assertEqual(got.version, 2)
                b.api.ForkSession(pb.ForkSessionRequest(session_id=s, new_session_id=fam + "-f"))
                self.assertEqual(self.turn(b, s, t3)[:2], r[2])
                self.assertEqual(self.turn(b, fam + "-f", t3)[:2], r[2])
                self.assertEqual(b.stop(), 0, b.logs()[-3000:])

    def test_swap_preemption_equals_alone(self):
        for fam, (rel, vocab) in FAMILIES.items():
            with self.subTest(family=fam):
                d = self.spawn("--model", os.path.join(GOLDEN, rel), *KV, "--ephemeral",
                               "--slots", "1", "--max-queue", "8")
                low_ids, high_ids = ids_of(11, 40, vocab), ids_of(12, 9, vocab)
                ref_low = self.turn(d, None, low_ids, n=LOW_N)
                ref_high = self.turn(d, None, high_ids, n=8, priority=3)
                self.assertEqual(ref_low[2].usage.preemptions, 0)

                req = gen_request(tokens=low_ids, max_tokens=LOW_N, temperature=0,
                                  ignore_eos=True, logprobs=3)
                low, high, _, _ = run_preempted(
                    self, d.api, req, lambda: self.turn(d, None, high_ids, n=8, priority=3))
                self.assertGreaterEqual(low[3].usage.preemptions, 1)
                self.assertEqual((low[1], lp_tuples(low[2])), ref_low[:2])
                self.assertEqual(high[:2], ref_high[:2])


if __name__ == "__main__":
    unittest.main(verbosity=2)
