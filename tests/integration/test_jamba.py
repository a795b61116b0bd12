"""recurd integration: Jamba served end to end, by token ids (the golden checkpoints have no
tokenizer).

Jamba (tests/golden/jamba/alt_moe_gqa: Mamba (v1) layers with dt/B/C norms, GQA attention
layers over the paged KV cache, MoE and dense MLPs) has a variable-size state: the fixed Mamba
part plus the KV of every position. A session runs two turns, the daemon is SIGKILLed and
restarted, and turn 3 equals turn 3 of a session that never stopped (tokens and logprobs); a
fork (of a cached state, and of one read back from disk) continues like its source; a session
turn equals a sessionless run over the whole history. A prompt sharing a >= 64-token prefix with
an earlier one is a prefix hit whose tokens and logprobs equal a full prefill (a daemon with
--prefix-cache-bytes 0), and no KV block leaks."""
import os
import unittest

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request, pb
from test_granite import T1, T2, T3, N, ckpt, ids_of, kv_blocks_at_exit, payload_bytes

JAMBA = os.path.join(ROOT, "tests", "golden", "jamba", "alt_moe_gqa")
KV = ("--kv-blocks", "64", "--kv-block-tokens", "4")  # 256 positions


class Jamba(OwnDaemonsTest):
    state_prefix = "recurd-jamba-"

    def start(self, *extra):
        return self.spawn("--model", JAMBA, "--state-dir", self.dir, *KV, *extra)

    def turn(self, d, sid, ids, n=N):
        _, out, lps, last = collect(d.api.Generate(
            gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0, ignore_eos=True,
                        logprobs=3), timeout=120))
        self.assertEqual(len(out), n)
        return out, [(lp.token_id, lp.logprob) for lp in lps], last

    def exact(self, got, ref):
        """Bit-identical: the same tokens and logprobs."""
        self.assertEqual(got[:2], ref[:2])

    def same(self, got, ref, places=4):
        """Same tokens; logprobs equal up to float rounding (a different prefill split)."""
        self.assertEqual(got[0], ref[0])
        for a, b in zip(got[1], ref[1]):
            self.assertEqual(a[0], b[0])
            self.assertAlmostEqual(a[1], b[1], places=places)

    def test_resume_after_sigkill_and_fork(self):
        a = self.start()
        a.api.CreateSession(pb.CreateSessionRequest(session_id="ref"))
        r1 = self.turn(a, "ref", T1)
        r2 = self.turn(a, "ref", T2)
        r3 = self.turn(a, "ref", T3)
        self.same(self.turn(a, None, T1 + r1[0] + T2 + r2[0] + T3), r3)
        a.api.CreateSession(pb.CreateSessionRequest(session_id="s"))
        self.exact(self.turn(a, "s", T1), r1)
        a.api.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f1"))
        self.exact(self.turn(a, "f1", T2), r2)
        self.exact(self.turn(a, "s", T2), r2)
        p1, p2 = payload_bytes(ckpt(self.dir, "s", 1)), payload_bytes(ckpt(self.dir, "s", 2))
        # 2 attention layers x K,V x 2 KV heads x head_dim 8 x fp32 per position
        self.assertEqual(p2 - p1, 256 * (len(T2) + N))
        self.kill(a)  # no drain: only the durable checkpoints survive

        b = self.start()
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="s")).version, 2)
        self.exact(self.turn(b, "s", T3), r3)
        b.api.ForkSession(pb.ForkSessionRequest(session_id="f1", new_session_id="f2"))
        self.exact(self.turn(b, "f2", T3), r3)

    def test_prefix_hit_equals_full_prefill(self):
        on = self.spawn("--model", JAMBA, "--ephemeral", "--prefill-chunk", "48", *KV)
        off = self.spawn("--model", JAMBA, "--ephemeral", "--prefill-chunk", "48", *KV,
                         "--prefix-cache-bytes", "0")
        base = ids_of(5, 200)
        for ids, cached in ((base[:150], 0), (base[:140] + base[150:170], 128),
                            (base[:100] + base[170:180], 64)):
            a, b = self.turn(on, None, ids), self.turn(off, None, ids)
            self.same(a, b, places=5)
            self.assertEqual(a[2].usage.cached_prompt_tokens, cached)
            self.assertEqual(b[2].usage.cached_prompt_tokens, 0)
        for d in (on, off):
            self.assertEqual(d.stop(), 0, d.logs()[-3000:])
        self.assertEqual(kv_blocks_at_exit(on), (64, 64))


if __name__ == "__main__":
    unittest.main()
