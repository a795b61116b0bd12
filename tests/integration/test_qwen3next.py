"""recurd integration: Qwen3-Next (tests/golden/qwen3next/moe_shared_tied: Gated DeltaNet
layers with a fixed conv + delta-rule state (S at the last 64-token block boundary plus the
open block's rows), and gated attention layers over the paged KV
cache) served end to end by token ids (the golden checkpoint has no tokenizer).

A session runs two turns, the daemon is SIGKILLed and restarted, and turn 3 equals turn 3 of a
session that never stopped (tokens and logprobs); a fork continues like its source; a
sessionless run over the whole history equals the session's turn 3; a prompt sharing a
>= 64-token prefix with an earlier one is a prefix-cache hit whose greedy tokens and logprobs
equal those of a daemon with --prefix-cache-bytes 0 (prompts of 150-190 tokens in
48-token chunks: GDN blocks complete inside chunks, and snapshots sit at block boundaries)."""
import os
import unittest

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request, pb
from test_granite import ids_of

MODEL = os.path.join(ROOT, "tests", "golden", "qwen3next", "moe_shared_tied")
T1 = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]
T2 = [33, 8, 190, 77]
T3 = [201, 4, 56]
N = 6  # tokens generated per turn
KV = ("--kv-blocks", "96", "--kv-block-tokens", "4")  # 384 positions


class Qwen3Next(OwnDaemonsTest):
    state_prefix = "recurd-qwen3next-"

    def start(self, *extra):
        return self.spawn("--model", MODEL, "--state-dir", self.dir, *KV, *extra)

    def turn(self, d, sid, ids, n=N):
        _, out, lps, last = collect(d.api.Generate(
            gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0, ignore_eos=True,
                        logprobs=3), timeout=120))
        self.assertEqual(len(out), n)
        return out, [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                     for lp in lps], last

    def test_resume_after_sigkill_and_fork(self):
        a = self.start()
        a.api.CreateSession(pb.CreateSessionRequest(session_id="ref"))
        r1 = self.turn(a, "ref", T1)[:2]
        r2 = self.turn(a, "ref", T2)[:2]
        r3 = self.turn(a, "ref", T3)[:2]
        # the chunked delta rule (64-token blocks at absolute positions) is chunking-invariant:
        # a sessionless run over the whole history gives turn 3 exactly
        hist = T1 + r1[0] + T2 + r2[0] + T3
        self.assertEqual(self.turn(a, None, hist)[:2], r3)
        a.api.CreateSession(pb.CreateSessionRequest(session_id="s"))
        self.assertEqual(self.turn(a, "s", T1)[:2], r1)
        a.api.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f1"))
        self.assertEqual(self.turn(a, "f1", T2)[:2], r2)
        self.assertEqual(self.turn(a, "s", T2)[:2], r2)
        self.kill(a)  # no drain: only the durable checkpoints survive

        b = self.start()
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="s")).version, 2)
        self.assertEqual(self.turn(b, "s", T3)[:2], r3)
        b.api.ForkSession(pb.ForkSessionRequest(session_id="f1", new_session_id="f2"))
        self.assertEqual(self.turn(b, "f2", T3)[:2], r3)
        self.assertEqual(self.turn(b, "f1", T3)[:2], r3)

    def test_prefix_hit_equals_full_prefill(self):
        on = self.spawn("--model", MODEL, "--ephemeral", "--prefill-chunk", "48", *KV)
        off = self.spawn("--model", MODEL, "--ephemeral", "--prefill-chunk", "48", *KV,
                         "--prefix-cache-bytes", "0")
        base = ids_of(7, 200)
        sys = base[:150]
        for ids, cached in ((sys + base[150:170], 0), (sys + base[170:190], 128),
                            (sys[:100] + base[190:200], 64)):
            a, b = self.turn(on, None, ids), self.turn(off, None, ids)
            self.assertEqual(a[:2], b[:2])  # bit-identical logprobs: same tokens, same floats
            self.assertEqual(a[2].usage.cached_prompt_tokens, cached)
            self.assertEqual(b[2].usage.cached_prompt_tokens, 0)


if __name__ == "__main__":
    unittest.main()
