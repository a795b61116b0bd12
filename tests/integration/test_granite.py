"""recurd integration: models beyond Mamba served end to end, by token ids (the golden
checkpoints have no tokenizer).

Granite 4.0-H (tests/golden/granite/mha_moe8: Mamba2 layers and a global-attention layer with a
paged KV cache) has a variable-size state: the fixed part plus the KV of every position. A
session runs two turns, the daemon is SIGKILLed and restarted, and turn 3 equals turn 3 of a
session that never stopped (tokens and logprobs); each checkpoint's payload is state_bytes +
P x kv_bytes_per_token with P the session's tokens, so it grows per version; a fork (of a state
read back from disk, and of a cached one) continues like its source; a session turn equals a
sessionless run over the whole history; a prompt whose KV cannot fit the pool
(--kv-blocks x --kv-block-tokens) is RESOURCE_EXHAUSTED with a message naming the options, and
the daemon keeps serving. Preemption (state swap of a KV state to host memory) resumes exactly.
RecurrentGemma (fixed-size state) serves sessions through the daemon (smoke); text requests
are FAILED_PRECONDITION (no tokenizer). Prefix
snapshots of both (PrefixSnapshots): hits equal a daemon without the cache, and no KV block
leaks."""
import os
import re
import struct
import time
import unittest

import grpc

from rcd_harness import (ROOT, OwnDaemonsTest, collect, concurrently, gen_request, pb,
                         run_preempted)

C = grpc.StatusCode
GRANITE = os.path.join(ROOT, "tests", "golden", "granite", "mha_moe8")
RGEMMA = os.path.join(ROOT, "tests", "golden", "recurrentgemma", "tiny_mqa_w16")
T1 = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]
T2 = [33, 8, 190, 77]
T3 = [201, 4, 56]
N = 6  # tokens generated per turn


def ckpt(state_dir, sid, version):
    return os.path.join(state_dir, "s_" + sid, "%020d.ckpt" % version)


def payload_bytes(path):
    """Bytes of the checkpoint's model state: its payload without the extension sections
    after it (the session's token history; the tensor table's "recurd.ext" record)."""
    with open(path, "rb") as f:
        head = f.read()
    assert head[:7] == b"RCDCKPT", path
    (fmt,) = struct.unpack_from("<I", head, 8)
    assert fmt == 1, fmt
    (n,) = struct.unpack_from("<Q", head, 56)
    n_t, id_len, par_len = struct.unpack_from("<III", head, 76)
    for i in range(n_t):
        rec = 96 + id_len + par_len + 96 * i
        if head[rec:rec + 48].rstrip(b"\0") == b"recurd.ext":
            n -= struct.unpack_from("<Q", head, rec + 56)[0]
    return n


class Base(OwnDaemonsTest):
    model = GRANITE
    state_prefix = "recurd-granite-"

    def start(self, *extra):
        return self.spawn("--model", self.model, "--state-dir", self.dir, *extra)

    def turn(self, d, sid, ids, n=N, **kw):
        _, out, lps, last = collect(d.api.Generate(
            gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0, ignore_eos=True,
                        logprobs=3, **kw), timeout=120))
        self.assertEqual(len(out), n)
        return out, [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                     for lp in lps]

    def assertClose(self, got, ref):
        """Same tokens; logprobs equal up to float rounding (a different prefill split)."""
        self.assertEqual(got[0], ref[0])
        for a, b in zip(got[1], ref[1]):
            self.assertEqual(a[0], b[0])
            self.assertAlmostEqual(a[1], b[1], places=4)

    def create(self, d, sid):
        return d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))


class Granite(Base):
    KV = ("--kv-blocks", "64", "--kv-block-tokens", "4")  # 256 positions

    def test_resume_after_sigkill_and_fork(self):
        a = self.start(*self.KV)
        self.create(a, "ref")
        r1 = self.turn(a, "ref", T1)
        r2 = self.turn(a, "ref", T2)
        r3 = self.turn(a, "ref", T3)
        # a sessionless run over the whole history equals the session's turn 3
        hist = T1 + r1[0] + T2 + r2[0] + T3
        self.assertClose(self.turn(a, None, hist), r3)
        # a fork of a cached state continues like its source
        self.create(a, "s")
        self.assertEqual(self.turn(a, "s", T1), r1)
        a.api.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="f1"))
        self.assertEqual(self.turn(a, "f1", T2), r2)
        self.assertEqual(self.turn(a, "s", T2), r2)
        # checkpoints carry the variable-size state: it grows with the session's positions
        p1, p2 = payload_bytes(ckpt(self.dir, "s", 1)), payload_bytes(ckpt(self.dir, "s", 2))
        kv_per_pos = (p2 - p1) // (len(T2) + N)
        self.assertGreater(kv_per_pos, 0)
        self.assertEqual(p2 - p1, kv_per_pos * (len(T2) + N))
        self.assertEqual(p1 - kv_per_pos * (len(T1) + N),
                         p2 - kv_per_pos * (len(T1) + N + len(T2) + N))
        self.kill(a)  # no drain: only the durable checkpoints survive

        b = self.start(*self.KV)
        s = b.api.GetSession(pb.GetSessionRequest(session_id="s"))
        self.assertEqual(s.version, 2)
        self.assertEqual(self.turn(b, "s", T3), r3)
        # a fork of a state read back from disk
        b.api.ForkSession(pb.ForkSessionRequest(session_id="f1", new_session_id="f2"))
        self.assertEqual(self.turn(b, "f2", T3), r3)
        self.assertEqual(self.turn(b, "f1", T3), r3)

    def test_prompt_over_the_kv_pool_is_resource_exhausted(self):
        d = self.start(*self.KV)
        self.create(d, "big")
        with self.assertRaises(grpc.RpcError) as cm:
            self.turn(d, "big", [7] * 300)
        self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED, cm.exception.details())
        self.assertIn("kv-blocks", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:  # no session: the same refusal
            self.turn(d, None, [7] * 300)
        self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED, cm.exception.details())
        # still serving, the session untouched
        self.assertEqual(d.api.GetSession(pb.GetSessionRequest(session_id="big")).version, 0)
        self.turn(d, "big", T1)

    def test_kv_pool_admission(self):
        # 16 blocks of 4 positions: one 50-position turn reserves 13 blocks. Concurrent turns
        # beyond the pool are refused up front ("server busy"), never fail a step; turns in a
        # row reuse the blocks of the ones that ended (sessionless and committed alike).
        d = self.start("--kv-blocks", "16", "--kv-block-tokens", "4", "--slots", "4")
        solo = self.turn(d, None, T1, n=40)
        res = concurrently(lambda: self.turn(d, None, T1, n=40), 4)
        ok = [r for r in res if r == solo]
        busy = [r for r in res if r[0] == C.RESOURCE_EXHAUSTED and "KV cache" in r[1]]
        self.assertGreaterEqual(len(ok), 1, res)
        self.assertEqual(len(ok) + len(busy), 4, res)
        for i in range(6):  # every slot in turn, each needing most of the pool
            self.assertEqual(self.turn(d, None, T1, n=40), solo)
        self.create(d, "c")
        for i in range(3):
            self.turn(d, "c", [9 + i], n=4)
            self.assertEqual(self.turn(d, None, T1, n=40), solo)

    def test_preempted_kv_state_resumes_exactly(self):
        # One slot: a high-priority turn preempts a running low-priority session turn (its KV
        # state is swapped to host memory and back); both equal their solo runs.
        d = self.start(*self.KV, "--slots", "1", "--max-queue", "8")

        def req(ids, n, sid=None, prio=0):
            r = gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0,
                            ignore_eos=True, logprobs=2)
            r.priority = prio
            return r

        def norm(res):
            return res[1], [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                            for lp in res[2]]

        for sid in ("solo", "pre"):
            self.create(d, sid)
        ref_low = collect(d.api.Generate(req(T1, 150, "solo"), timeout=120))
        ref_high = collect(d.api.Generate(req(T3, 8, prio=3), timeout=120))
        low, high, _, _ = run_preempted(
            self, d.api, req(T1, 150, "pre"),
            lambda: collect(d.api.Generate(req(T3, 8, prio=3), timeout=120)), start_timeout=120)
        self.assertGreaterEqual(low[3].usage.preemptions, 1)
        self.assertEqual(norm(low), norm(ref_low))
        self.assertEqual(norm(high), norm(ref_high))
        # the preempted session's checkpoint equals the solo one's: the next turn agrees
        self.assertEqual(self.turn(d, "pre", T2), self.turn(d, "solo", T2))


class RecurrentGemma(Base):
    model = RGEMMA

    def test_session_smoke(self):
        d = self.start()
        self.create(d, "g")
        r1 = self.turn(d, "g", T1)
        r2 = self.turn(d, "g", T2)
        self.assertClose(self.turn(d, None, T1 + r1[0] + T2), r2)
        self.assertEqual(d.api.GetSession(pb.GetSessionRequest(session_id="g")).version, 2)
        # no tokenizer.json: text is refused as FAILED_PRECONDITION, the reason named
        for call in (lambda: d.api.Tokenize(pb.TokenizeRequest(text="hi")),
                     lambda: d.api.Detokenize(pb.DetokenizeRequest(token_ids=[1])),
                     lambda: collect(d.api.Generate(gen_request("hi", max_tokens=1)))):
            with self.assertRaises(grpc.RpcError) as cm:
                call()
            self.assertEqual(cm.exception.code(), C.FAILED_PRECONDITION)
            self.assertIn("has no tokenizer", cm.exception.details())


def ids_of(seed, n, vocab=256):
    """Deterministic pseudo-random token ids (the fixtures' vocab is 256)."""
    x, out = seed, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((x >> 8) % vocab)
    return out


def kv_blocks_at_exit(d):
    """(free, total) KV blocks in the runner's exit stats (after the idle flush)."""
    m = re.findall(r"kv blocks free (\d+) of (\d+)", d.exit_logs)
    assert m, d.exit_logs[-3000:]
    return int(m[-1][0]), int(m[-1][1])


class PrefixSnapshots(OwnDaemonsTest):
    """Prefix snapshots of variable-size (Granite: the fixed part plus k positions of KV) and
    ring-buffer (RecurrentGemma) states: a prompt sharing a >= 64-token prefix with an earlier
    one is a hit (usage.cached_prompt_tokens) and its greedy tokens equal, logprobs within
    1e-5, those of a daemon with --prefix-cache-bytes 0; after hits, cancellations and
    completions every KV block is back in the pool."""
    TOL = 1e-5
    KV = ("--kv-blocks", "96", "--kv-block-tokens", "4")  # 384 positions

    def start(self, model, *extra):
        # a small prefill chunk: boundaries (64, 128) fall inside chunks and between them
        return self.spawn("--model", model, "--ephemeral", "--prefill-chunk", "48", *extra)

    def gen(self, d, ids, n=8, sid=None, **kw):
        return collect(d.api.Generate(
            gen_request(tokens=ids, session=sid, max_tokens=n, temperature=0, ignore_eos=True,
                        logprobs=3, **kw), timeout=120))

    def same(self, on, off, ids, cached, n=8, sid_on=None, sid_off=None):
        a, b = self.gen(on, ids, n, sid_on), self.gen(off, ids, n, sid_off)
        self.assertEqual(a[1], b[1])  # the same greedy tokens
        self.assertEqual(len(a[2]), len(b[2]))
        for x, y in zip(a[2], b[2]):
            self.assertEqual(x.token_id, y.token_id)
            self.assertAlmostEqual(x.logprob, y.logprob, delta=self.TOL)
            self.assertEqual([t.token_id for t in x.top], [t.token_id for t in y.top])
            for u, v in zip(x.top, y.top):
                self.assertAlmostEqual(u.logprob, v.logprob, delta=self.TOL)
        self.assertEqual(a[3].usage.cached_prompt_tokens, cached)
        self.assertEqual(b[3].usage.cached_prompt_tokens, 0)
        self.assertEqual(a[3].usage.prompt_tokens, len(ids))
        return a

    def cancel_after(self, d, ids, k):
        call = d.api.Generate(gen_request(tokens=ids, max_tokens=40, temperature=0,
                                          ignore_eos=True), timeout=120)
        got = 0
        for m in call:
            got += len(m.token_ids)
            if got >= k:
                call.cancel()
                break
        self.assertGreaterEqual(got, k)

    def until_not_busy(self, fn):
        deadline = time.time() + 30
        while True:
            try:
                return fn()
            except grpc.RpcError as e:
                if (e.code() != C.RESOURCE_EXHAUSTED or "busy" not in e.details() or
                        time.time() > deadline):
                    raise
                time.sleep(0.05)

    def shared_prefix_cases(self, on, off):
        base = ids_of(7, 260)
        sys = base[:150]  # the shared prefix, not a multiple of 64
        self.same(on, off, sys + base[150:170], 0)  # takes 64 and 128
        self.same(on, off, sys + base[200:230], 128)
        self.same(on, off, sys[:129], 128)  # one token past the boundary
        self.same(on, off, sys[:128], 64)  # the last token is fed: 64 serves
        other = list(sys)
        other[70] = (other[70] + 1) % 256  # differs inside the second block
        self.same(on, off, other + base[170:180], 64)
        self.same(on, off, sys[:60] + base[180:200], 0)  # below 64 shared
        # a session's first turn starts from the prefix; its committed state continues
        for d, sid in ((on, "s"), (off, "s")):
            d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
        self.same(on, off, sys + base[230:240], 128, sid_on="s", sid_off="s")
        self.same(on, off, base[240:250], 0, sid_on="s", sid_off="s")
        return base, sys

    def test_granite_prefix_hits_are_exact(self):
        on = self.start(GRANITE, *self.KV)
        off = self.start(GRANITE, *self.KV, "--prefix-cache-bytes", "0")
        base, sys = self.shared_prefix_cases(on, off)
        # a long prefix across several chunks: 256 is taken, then served
        long = (base * 2)[:300]
        self.same(on, off, long, 128)
        self.same(on, off, long[:280] + base[:5], 256)
        # hits cancelled mid-stream, then more hits: the blocks come back (a cancelled turn
        # keeps its reservation until the daemon has seen the cancel: busy meanwhile)
        for _ in range(2):
            self.until_not_busy(lambda: self.cancel_after(on, sys + base[100:110], 3))
        self.until_not_busy(lambda: self.same(on, off, sys + base[200:230], 128))
        # several hits at once (admission reserves each turn's prompt + max_tokens): every
        # one either runs (equal to the reference) or is refused up front as busy
        ref = self.gen(off, sys + base[110:130], 20)

        def hit():
            r = self.gen(on, sys + base[110:130], 20)
            return ("ok", r[1], r[3].usage.cached_prompt_tokens)

        res = concurrently(hit, 4)
        ok = [r for r in res if r[0] == "ok"]
        self.assertGreaterEqual(len(ok), 1, res)
        for r in ok:
            self.assertEqual(r[1:], (ref[1], 128))
        for r in res:
            if r[0] != "ok":
                self.assertEqual(r[0], C.RESOURCE_EXHAUSTED, r)
                self.assertIn("KV cache", r[1])
        for d in (on, off):
            self.assertEqual(d.stop(), 0, d.logs()[-3000:])
        free, total = kv_blocks_at_exit(on)
        self.assertEqual((free, total), (96, 96))
        self.assertIn("prefix_cache", on.exit_logs)

    def test_granite_prefix_in_a_pool_of_one_turn(self):
        # The pool holds exactly one 150 + 8 position turn (40 blocks of 4): a hit restores its
        # 128 positions inside the turn's own reservation, never beyond the pool.
        on = self.start(GRANITE, "--kv-blocks", "40", "--kv-block-tokens", "4")
        off = self.start(GRANITE, "--prefix-cache-bytes", "0")
        base = ids_of(11, 200)
        self.same(on, off, base[:150], 0)
        for i in range(3):
            self.same(on, off, base[:140] + base[150 + i:160 + i], 128)
        self.assertEqual(on.stop(), 0, on.logs()[-3000:])
        self.assertEqual(kv_blocks_at_exit(on), (40, 40))

    def test_recurrentgemma_prefix_hits_are_exact(self):
        # a window of 16: the ring buffer at 64 and 128 holds exactly the last 16 keys
        on = self.start(RGEMMA)
        off = self.start(RGEMMA, "--prefix-cache-bytes", "0")
        self.shared_prefix_cases(on, off)


if __name__ == "__main__":
    unittest.main()
