"""recurd integration: the Redis shared tier. A real redis-server on a free loopback port; two
daemons on different state dirs share it: a session committed by the first resumes on the
second exactly (turn 3 equals an uninterrupted run), fork and get of a session only Redis
knows, deletes reach Redis, and a daemon whose Redis is down (or silent) keeps serving from
its disk with --redis-authority off (the default, authority mode, is test_fencing.py's).
Skipped (exit 77) when redis-server is not installed."""
import os
import socket
import time
import unittest

from rcd_harness import require_redis

require_redis()

import grpc  # noqa: E402

from rcd_harness import (OwnDaemonsTest, RedisTest, collect, free_port, gen_request,  # noqa: E402
                         pb, redis_cmd)

C = grpc.StatusCode
P1, P2, P3 = "Once upon a time, there was", " a little dog who", " and the next day"


class Redis(RedisTest, OwnDaemonsTest):
    """Every daemon on its own temporary --state-dir; all share the class's redis-server."""

    def tok(self, d, text):
        return list(d.api.Tokenize(pb.TokenizeRequest(text=text)).token_ids)

    def turn(self, d, sid, text, n=8):
        _, out, lps, last = collect(d.api.Generate(
            gen_request(tokens=self.tok(d, text), session=sid, max_tokens=n, temperature=0,
                        ignore_eos=True, logprobs=3), timeout=120))
        return out, [(lp.token_id, lp.logprob, [t.token_id for t in lp.top]) for lp in lps], last

    def test_second_daemon_resumes_and_deletes(self):
        a = self.spawn("--redis", self.redis_addr)
        a.api.CreateSession(pb.CreateSessionRequest(session_id="ref"))
        self.turn(a, "ref", P1)
        self.turn(a, "ref", P2)
        r3 = self.turn(a, "ref", P3)
        a.api.CreateSession(pb.CreateSessionRequest(session_id="r"))
        self.turn(a, "r", P1)
        self.assertEqual(self.turn(a, "r", P2)[2].session_version, 2)
        # acknowledged means written through: Redis holds it now
        self.assertTrue(
            redis_cmd(self.redis_port, b"EXISTS", b"recurd:ckpt:r").startswith(b":1"))
        b = self.spawn("--redis", self.redis_addr)  # another state dir, same Redis
        o3 = self.turn(b, "r", P3)
        self.assertEqual(o3[2].session_version, 3)
        self.assertEqual(o3[0], r3[0])
        self.assertEqual(o3[1], r3[1])
        self.assertIn("session_fetched", b.logs())
        self.assertTrue(os.path.exists(os.path.join(b.tmp, "state", "s_r")))
        # Get and Fork of a session only Redis knows (for b: "ref")
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="ref")).version, 3)
        c = self.spawn("--redis", self.redis_addr)
        f = c.api.ForkSession(pb.ForkSessionRequest(session_id="ref", new_session_id="ref2"))
        self.assertEqual((f.version, f.parent_session_id), (3, "ref"))
        # a delete reaches Redis: a third daemon does not find the session any more
        b.api.DeleteSession(pb.DeleteSessionRequest(session_id="r"))
        with self.assertRaises(grpc.RpcError) as cm:
            c.api.GetSession(pb.GetSessionRequest(session_id="r"))
        self.assertEqual(cm.exception.code(), C.NOT_FOUND)

    def test_corrupt_value_in_redis_is_refused(self):
        a = self.spawn("--redis", self.redis_addr)
        redis_cmd(self.redis_port, b"SET", b"recurd:ckpt:junk", b"RCDCKPT\0" + b"\x01" * 200)
        with self.assertRaises(grpc.RpcError) as cm:
            self.turn(a, "junk", P1)
        self.assertEqual(cm.exception.code(), C.DATA_LOSS, cm.exception.details())
        self.assertIn("shared-tier checkpoint", cm.exception.details())
        # the daemon is fine
        a.api.CreateSession(pb.CreateSessionRequest(session_id="ok"))
        self.assertEqual(self.turn(a, "ok", P1, n=2)[2].session_version, 1)

    def test_silent_redis_does_not_stall_commits(self):
        """A server that accepts connections and never answers: the write-through is given
        up after ~2 s, the turn commits from disk, and the daemon still drains (exit 0)."""
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        self.addCleanup(srv.close)
        d = self.spawn("--redis", "127.0.0.1:%d" % srv.getsockname()[1], "--redis-authority=off")
        t0 = time.time()
        d.api.CreateSession(pb.CreateSessionRequest(session_id="q"), timeout=30)
        self.assertEqual(self.turn(d, "q", P1, n=2)[2].session_version, 1)
        self.assertLess(time.time() - t0, 20)
        self.assertIn("shared tier", d.logs())

    def test_redis_down_keeps_serving(self):
        """--redis-authority off (write-through only): a Redis outage never fails a turn. The
        default (authority) refuses session calls instead: test_fencing.py."""
        d = self.spawn("--redis", "127.0.0.1:%d" % free_port(), "--redis-authority=off")
        d.api.CreateSession(pb.CreateSessionRequest(session_id="x"))
        self.assertEqual(self.turn(d, "x", P1, n=2)[2].session_version, 1)
        self.assertEqual(self.turn(d, "x", P2, n=2)[2].session_version, 2)
        with self.assertRaises(grpc.RpcError) as cm:
            d.api.GetSession(pb.GetSessionRequest(session_id="nowhere"))
        self.assertEqual(cm.exception.code(), C.NOT_FOUND)


if __name__ == "__main__":
    unittest.main()
