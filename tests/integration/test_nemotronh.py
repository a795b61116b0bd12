"""recurd integration: Nemotron-H served end to end, by token ids (the golden checkpoint has
no tokenizer).

tests/golden/nemotronh/moe_gqa_tied has every block kind (Mamba2, attention over the paged KV
cache, relu² MLP, MoE), so its state is variable-size: the Mamba part plus the KV of every
position. A session runs two turns, the daemon is SIGKILLed and restarted, and turn 3 equals
turn 3 of a session that never stopped (tokens and logprobs); a fork (of a cached state and
of one read back from disk) continues like its source; a session turn equals a sessionless
run over the whole history. Prefix snapshots: a prompt sharing a >= 64-token prefix with an
earlier one is a hit whose greedy tokens and logprobs equal a full prefill's (a daemon with
--prefix-cache-bytes 0), and every KV block is back in the pool at exit."""
import os
import unittest

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request, pb
from test_granite import ckpt, ids_of, kv_blocks_at_exit, payload_bytes

MODEL = os.path.join(ROOT, "tests", "golden", "nemotronh", "moe_gqa_tied")
V = 160  # the fixture's vocabulary
T1 = [5, 17, 42, 99, 3, 150, 7, 64, 128, 11]
T2 = [33, 8, 140, 77]
T3 = [101, 4, 56]
N = 6  # tokens generated per turn
KV = ("--kv-blocks", "96", "--kv-block-tokens", "4")  # 384 positions


class NemotronH(OwnDaemonsTest):
    state_prefix = "recurd-nemotronh-"
    TOL = 1e-5

    def start(self, *extra):
        return self.spawn("--model", MODEL, *KV, *extra)

    def turn(self, d, sid, ids, n=N):
        _, out, lps, last = collect(d.api.Generate(
            gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0, ignore_eos=True,
                        logprobs=3), timeout=120))
        self.assertEqual(len(out), n)
        return out, [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                     for lp in lps], last

    def assertClose(self, got, ref, places=4):
        self.assertEqual(got[0], ref[0])
        for a, b in zip(got[1], ref[1]):
            self.assertEqual(a[0], b[0])
            self.assertAlmostEqual(a[1], b[1], places=places)
            self.assertEqual([t for t, _ in a[2]], [t for t, _ in b[2]])

    def test_resume_after_sigkill_and_fork(self):
        a = self.start("--state-dir", self.dir)
        create = lambda d, sid: d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
        create(a, "ref")
        r1 = self.turn(a, "ref", T1)[:2]
        r2 = self.turn(a, "ref", T2)[:2]
        r3 = self.turn(a, "ref", T3)[:2]
        # a sessionless run over the whole history equals the session's turn 3
        self.assertClose(self.turn(a, None, T1 + r1[0] + T2 + r2[0] + T3)[:2], r3)
        # a fork of a cached state continues like its source
        create(a, "s")
        self.assertEqual(self.turn(a, "s", T1)[:2], r1)
        a.api.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f1"))
        self.assertEqual(self.turn(a, "f1", T2)[:2], r2)
        self.assertEqual(self.turn(a, "s", T2)[:2], r2)
        # checkpoints carry the variable-size state: it grows with the session's positions
        p1, p2 = payload_bytes(ckpt(self.dir, "s", 1)), payload_bytes(ckpt(self.dir, "s", 2))
        kv_per_pos = (p2 - p1) // (len(T2) + N)
        self.assertEqual(kv_per_pos, 2 * 16 * 4)  # one attention layer, 2 KV heads of 8
        self.assertEqual(p2 - p1, kv_per_pos * (len(T2) + N))
        self.kill(a)  # no drain: only the durable checkpoints survive

        b = self.start("--state-dir", self.dir)
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="s")).version, 2)
        self.assertEqual(self.turn(b, "s", T3)[:2], r3)
        b.api.ForkSession(pb.ForkSessionRequest(session_id="f1", new_session_id="f2"))
        self.assertEqual(self.turn(b, "f2", T3)[:2], r3)
        self.assertEqual(self.turn(b, "f1", T3)[:2], r3)

    def test_prefix_hit_equals_full_prefill(self):
        on = self.start("--ephemeral", "--prefill-chunk", "48")
        off = self.start("--ephemeral", "--prefill-chunk", "48", "--prefix-cache-bytes", "0")
        base = ids_of(7, 220, V)
        sys_ = base[:150]
        for ids, cached in ((sys_ + base[150:170], 0), (sys_ + base[200:215], 128),
                            (sys_[:129], 128), (sys_[:100] + base[170:180], 64)):
            a, b = self.turn(on, None, ids, 8), self.turn(off, None, ids, 8)
            self.assertClose(a[:2], b[:2], places=5)
            self.assertEqual(a[2].usage.cached_prompt_tokens, cached)
            self.assertEqual(b[2].usage.cached_prompt_tokens, 0)
        for d in (on, off):
            self.assertEqual(d.stop(), 0, d.logs()[-3000:])
        self.assertEqual(kv_blocks_at_exit(on), (96, 96))


if __name__ == "__main__":
    unittest.main()
