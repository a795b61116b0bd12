"""recurd integration: Redis as the authority for each session's latest version (issue 15,
"Correctness across replicas"; statestore/README.md "Redis as the authority"). A real
redis-server and several recurd replicas on their own state dirs, on loopback; calls go to the
replicas directly, as a ring change would route them.

- stale copy: A serves v1..v2, B continues v3..v4 from Redis, A is asked again: it resumes from
  v4 (never its own v2), bit-identical to an uninterrupted reference;
- split brain: A is SIGSTOPped in the middle of a long turn, B advances the session, SIGCONT:
  A's late commit is refused (ABORTED) and B's version stands;
- a delete is not undone by a stale replica (tombstone);
- Redis restart with AOF (appendfsync always, SIGKILL): no acknowledged turn is lost;
- Redis cut off (SIGSTOP, then killed): session calls UNAVAILABLE, stateless calls fine,
  recovery when it is back.
Skipped (exit 77) when redis-server is not installed."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

if not shutil.which("redis-server"):
    print("SKIP: redis-server is not installed (tools/install-deps.sh installs it)")
    sys.exit(77)

import grpc  # noqa: E402

from rcd_harness import (CodeAssertions, Daemon, collect, free_port, gen_request,  # noqa: E402
                         pb, redis_cmd, start_redis)

C = grpc.StatusCode
PROMPTS = ["Once upon a time, there was", " a little dog who", " and the next day",
           " the sun came out", " so they went to the park"]


class RedisProc:
    def __init__(self, tmp, port=None, aof=False):
        self.port = port or free_port()
        self.tmp = tmp
        self.proc = start_redis(self.port, tmp, *(["--appendonly", "yes", "--appendfsync", "always"]
                                                  if aof else ["--appendonly", "no"]))
        self.addr = "127.0.0.1:%d" % self.port

    def version(self, sid):
        """The authoritative version (the checkpoint's bytes 24..31), or None."""
        r = redis_cmd(self.port, b"GETRANGE", b"recurd:ckpt:" + sid.encode(), b"24", b"31")
        if not r.startswith(b"$8\r\n"):
            return None
        return int.from_bytes(r[4:12], "little")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()


class Fencing(CodeAssertions, unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="recurd-fence-")
        self.daemons = []
        self.redis = RedisProc(self.tmp)

    def tearDown(self):
        for d in self.daemons:
            if d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGCONT)
                self.assertEqual(d.stop(), 0, d.logs()[-3000:])
        self.redis.proc.send_signal(signal.SIGCONT)
        self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, *extra):
        d = Daemon("--redis", self.redis.addr, *extra)
        self.daemons.append(d)
        return d

    def tok(self, d, text):
        return list(d.api.Tokenize(pb.TokenizeRequest(text=text)).token_ids)

    def turn(self, d, sid, text, n=8, timeout=120):
        _, out, lps, last = collect(d.api.Generate(
            gen_request(tokens=self.tok(d, text), session=sid, max_tokens=n, temperature=0,
                        ignore_eos=True, logprobs=3), timeout=timeout))
        return out, [(lp.token_id, lp.logprob, [t.token_id for t in lp.top]) for lp in lps], last

    def reference(self, d, n_turns):
        d.api.CreateSession(pb.CreateSessionRequest(session_id="ref"))
        return [self.turn(d, "ref", PROMPTS[i]) for i in range(n_turns)]

    def assertSameTurn(self, got, want, version):
        self.assertEqual(got[2].session_version, version)
        self.assertEqual(got[0], want[0])
        self.assertEqual(got[1], want[1])

    def test_stale_copy_is_never_resumed(self):
        a, b = self.start(), self.start()
        ref = self.reference(a, 5)
        a.api.CreateSession(pb.CreateSessionRequest(session_id="s"))
        for i in range(2):  # A: v1, v2 (in its host cache and on its disk)
            self.assertSameTurn(self.turn(a, "s", PROMPTS[i]), ref[i], i + 1)
        for i in range(2, 4):  # B continues from Redis: v3, v4
            self.assertSameTurn(self.turn(b, "s", PROMPTS[i]), ref[i], i + 1)
        self.assertEqual(self.redis.version("s"), 4)
        # back on A: its v2 is stale; it must resume from v4
        self.assertEqual(a.api.GetSession(pb.GetSessionRequest(session_id="s")).version, 4)
        self.assertSameTurn(self.turn(a, "s", PROMPTS[4]), ref[4], 5)
        self.assertIn("not the shared tier's", a.logs())
        # B's copy (v4) is stale now: a fork on B starts from v5
        f = b.api.ForkSession(pb.ForkSessionRequest(session_id="s", new_session_id="s2"))
        self.assertEqual(f.version, 5)
        # expected_version is checked against the authoritative version
        self.assertCode(C.FAILED_PRECONDITION, b.api.Generate,
                        gen_request(tokens=self.tok(b, PROMPTS[0]), session="s", max_tokens=2,
                                    expected_version=4), timeout=60)

    def test_split_brain_late_commit_is_refused(self):
        a, b = self.start(), self.start()
        a.api.CreateSession(pb.CreateSessionRequest(session_id="sb"))
        self.turn(a, "sb", PROMPTS[0], n=2)
        got = {}
        started = threading.Event()
        # A's turn must outlast the SIGSTOP (which follows its first message) and end within
        # its deadline after SIGCONT: ~20 s of this build's decode (TSan is ~50x slower than
        # Release), between 400 and 4000 tokens.
        t0 = time.time()
        collect(a.api.Generate(gen_request(tokens=[1, 2, 3], max_tokens=64, temperature=0,
                                           ignore_eos=True), timeout=300))
        n_long = int(min(4000, max(400, 20 * 64 / max(time.time() - t0, 1e-3))))

        def long_turn():
            try:
                stream = a.api.Generate(gen_request(
                    tokens=self.tok(a, PROMPTS[1]), session="sb", max_tokens=n_long,
                    temperature=0, ignore_eos=True), timeout=600)
                for m in stream:
                    started.set()
                    got["last"] = m
                got["ok"] = True
            except grpc.RpcError as e:
                got["code"], got["details"] = e.code(), e.details()
            started.set()

        t = threading.Thread(target=long_turn)
        t.start()
        self.assertTrue(started.wait(120))
        os.kill(a.proc.pid, signal.SIGSTOP)  # A is in the middle of its turn
        try:
            self.assertNotIn("ok", got, "the turn ended before A was stopped: raise max_tokens")
            # the session moves to B and advances there
            self.assertEqual(self.turn(b, "sb", PROMPTS[2], n=2)[2].session_version, 2)
            self.assertEqual(self.turn(b, "sb", PROMPTS[3], n=2)[2].session_version, 3)
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        t.join(600)
        self.assertFalse(t.is_alive())
        self.assertNotIn("ok", got)
        self.assertEqual(got.get("code"), C.ABORTED, got)
        self.assertIn("another replica", got["details"])
        # B's version stands, in Redis and as both replicas see it
        self.assertEqual(self.redis.version("sb"), 3)
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="sb")).version, 3)
        self.assertEqual(a.api.GetSession(pb.GetSessionRequest(session_id="sb")).version, 3)
        # and A goes on from it
        self.assertEqual(self.turn(a, "sb", PROMPTS[4], n=2)[2].session_version, 4)

    def test_delete_is_not_undone_by_a_stale_replica(self):
        a, b = self.start(), self.start()
        a.api.CreateSession(pb.CreateSessionRequest(session_id="d"))
        self.turn(a, "d", PROMPTS[0], n=2)
        b.api.DeleteSession(pb.DeleteSessionRequest(session_id="d"))
        self.assertIsNone(self.redis.version("d"))
        # A still holds v1: it must not resume (or recommit) it
        self.assertCode(C.NOT_FOUND, a.api.Generate,
                        gen_request(tokens=self.tok(a, PROMPTS[1]), session="d", max_tokens=2),
                        timeout=60)
        self.assertCode(C.NOT_FOUND, a.api.GetSession, pb.GetSessionRequest(session_id="d"))
        self.assertIsNone(self.redis.version("d"))
        # the id can be created again; a create of an id another replica holds is refused
        a.api.CreateSession(pb.CreateSessionRequest(session_id="d"))
        self.assertCode(C.ALREADY_EXISTS, b.api.CreateSession,
                        pb.CreateSessionRequest(session_id="d"))
        self.assertEqual(self.turn(b, "d", PROMPTS[0], n=2)[2].session_version, 1)

    def test_redis_restart_with_aof_loses_nothing(self):
        self.redis.stop()
        self.redis = RedisProc(self.tmp, aof=True)
        a = self.start()
        ref = self.reference(a, 4)
        a.api.CreateSession(pb.CreateSessionRequest(session_id="p"))
        for i in range(3):
            self.assertSameTurn(self.turn(a, "p", PROMPTS[i]), ref[i], i + 1)
        self.redis.stop(signal.SIGKILL)  # right after the acknowledgement
        self.redis = RedisProc(self.tmp, port=self.redis.port, aof=True)
        self.assertEqual(self.redis.version("p"), 3)
        b = self.start()  # another replica, empty disk: only Redis has the session
        self.assertSameTurn(self.turn(b, "p", PROMPTS[3]), ref[3], 4)

    def test_redis_cut_off_refuses_session_calls(self):
        a = self.start()
        a.api.CreateSession(pb.CreateSessionRequest(session_id="u"))
        self.assertEqual(self.turn(a, "u", PROMPTS[0], n=2)[2].session_version, 1)
        self.redis.proc.send_signal(signal.SIGSTOP)  # accepts, never answers
        try:
            t0 = time.time()
            e = self.assertCode(C.UNAVAILABLE, a.api.Generate,
                                gen_request(tokens=self.tok(a, PROMPTS[1]), session="u",
                                            max_tokens=2), timeout=60)
            self.assertLess(time.time() - t0, 15)
            self.assertIn("redis", e.details())
            # stateless calls are fine
            _, out, _, _ = collect(a.api.Generate(gen_request(
                tokens=self.tok(a, PROMPTS[1]), max_tokens=3, temperature=0, ignore_eos=True),
                timeout=60))
            self.assertEqual(len(out), 3)
            for call, req in ((a.api.CreateSession, pb.CreateSessionRequest(session_id="u2")),
                              (a.api.GetSession, pb.GetSessionRequest(session_id="u")),
                              (a.api.DeleteSession, pb.DeleteSessionRequest(session_id="u")),
                              (a.api.ForkSession, pb.ForkSessionRequest(session_id="u",
                                                                        new_session_id="u3"))):
                self.assertCode(C.UNAVAILABLE, call, req, timeout=60)
        finally:
            self.redis.proc.send_signal(signal.SIGCONT)
        self.redis.stop(signal.SIGKILL)  # now gone altogether
        self.assertCode(C.UNAVAILABLE, a.api.GetSession, pb.GetSessionRequest(session_id="u"),
                        timeout=60)
        self.redis = RedisProc(self.tmp, port=self.redis.port)
        # recovery: the connection comes back by itself (backoff at most 8 s)
        deadline = time.time() + 30
        while True:
            try:
                last = self.turn(a, "u", PROMPTS[1], n=2)[2]
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), C.UNAVAILABLE, e.details())
                self.assertLess(time.time(), deadline)
                time.sleep(0.5)
        # this Redis lost its data (no AOF) and holds no tombstone: the local copy is adopted
        self.assertEqual(last.session_version, 2)
        self.assertEqual(self.redis.version("u"), 2)


if __name__ == "__main__":
    unittest.main()
