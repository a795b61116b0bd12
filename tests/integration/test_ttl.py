"""recurd integration: session owner, TTL and expiry. An idle session expires after its TTL
(--session-ttl, or its own ttl_seconds) and its checkpoint directory is removed; turns keep a
session alive, and so does a turn that holds it (queued behind another) past its TTL; owner
and TTL survive a SIGKILL and a restart and the session still expires on time; forks take the
source's owner and TTL; bad owners and reserved metadata keys are refused; recurctl's
--owner/--ttl. The sweep runs every 200 ms here (RECURD_SESSION_SWEEP_MS, a test knob)."""
import json
import os
import subprocess
import threading
import time
import unittest

import grpc

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request, pb

C = grpc.StatusCode
SWEEP = {"RECURD_SESSION_SWEEP_MS": "200"}


def now_ms():
    return int(time.time() * 1000)


class Ttl(OwnDaemonsTest):
    state_prefix = "recurd-ttl-"

    def start(self, *extra):
        t0 = time.time()
        d = self.spawn("--state-dir", self.dir, *extra, env=SWEEP)
        d.startup_s = time.time() - t0
        return d

    def sdir(self, sid):
        return os.path.join(self.dir, "s_" + sid)

    def create(self, d, sid, owner="", ttl=0, **kw):
        return d.api.CreateSession(pb.CreateSessionRequest(session_id=sid, owner=owner,
                                                           ttl_seconds=ttl, **kw))

    def exists(self, d, sid):
        try:
            d.api.GetSession(pb.GetSessionRequest(session_id=sid))
            return True
        except grpc.RpcError as e:
            self.assertEqual(e.code(), C.NOT_FOUND, e.details())
            return False

    def trash(self):
        return [n for n in os.listdir(self.dir) if n.startswith(".trash")]

    def wait_gone(self, d, sid, limit_s):
        """Waits until the session is NOT_FOUND and its files are gone (the directory is
        renamed to .trash-* first, then emptied and removed); returns when it was NOT_FOUND."""
        deadline = time.time() + limit_s
        gone = None
        while time.time() < deadline:
            if gone is None and not self.exists(d, sid):
                gone = now_ms()
            if gone is not None and not os.path.exists(self.sdir(sid)) and not self.trash():
                return gone
            time.sleep(0.05)
        self.fail("session %s did not expire within %.1f s:\n%s" % (sid, limit_s,
                                                                     d.logs()[-3000:]))

    def turn(self, d, sid, n=4):
        _, _, _, last = collect(d.api.Generate(gen_request("Once upon a time", session=sid,
                                                           max_tokens=n, temperature=0)))
        return last

    def test_idle_session_expires_with_its_files(self):
        d = self.start("--session-ttl", "2")
        s = self.create(d, "idle")
        self.assertEqual((s.ttl_seconds, s.owner), (2, ""))
        self.assertEqual(s.expires_unix_ms, s.updated_unix_ms + 2000)
        self.assertTrue(os.path.isdir(self.sdir("idle")))
        gone = self.wait_gone(d, "idle", 15)
        # never before its time (the sweep may be late, never early)
        self.assertGreaterEqual(gone, s.expires_unix_ms)
        e = self.assertCodeGen(d, "idle")
        self.assertIn("not found", e.details())
        self.assertIn('"session_expired"', d.logs())
        # the id is free again
        self.assertEqual(self.create(d, "idle").version, 0)

    def assertCodeGen(self, d, sid):
        with self.assertRaises(grpc.RpcError) as cm:
            self.turn(d, sid)
        self.assertEqual(cm.exception.code(), C.NOT_FOUND, cm.exception.details())
        return cm.exception

    def test_turns_keep_a_session_alive(self):
        d = self.start()  # no default TTL: only the session's own
        s = self.create(d, "active", ttl=3)
        self.create(d, "never")  # no TTL at all
        self.assertEqual((s.ttl_seconds, self.exists(d, "never")), (3, True))
        end = time.time() + 7
        v = 0
        while time.time() < end:  # idle gaps stay well under 3 s
            last = self.turn(d, "active")
            v += 1
            self.assertEqual(last.session_version, v)
            time.sleep(0.5)
        g = d.api.GetSession(pb.GetSessionRequest(session_id="active"))
        self.assertEqual(g.version, v)
        self.assertEqual(g.expires_unix_ms, g.updated_unix_ms + 3000)
        gone = self.wait_gone(d, "active", 15)
        self.assertGreaterEqual(gone, g.expires_unix_ms)
        self.assertTrue(self.exists(d, "never"))

    def test_a_held_session_does_not_expire(self):
        """One slot: a long stateless turn runs while a turn on the session waits behind it,
        past the session's TTL. The waiting turn holds the session: it is not expired, and
        its turn commits. Once idle again, it expires."""
        d = self.start("--slots", "1", "--aging-ms", "0", "--max-context", "1000000")
        self.create(d, "held", ttl=1)
        # long enough to outlast the check on any machine (it is cancelled after it)
        long_call = d.api.Generate(gen_request("Once upon a time", max_tokens=1000000,
                                               ignore_eos=True, temperature=0))
        first = next(long_call)  # the long turn holds the only slot
        self.assertIsNotNone(first)
        out = {}

        def queued():
            try:
                out["last"] = self.turn(d, "held")
            except grpc.RpcError as e:
                out["err"] = e

        t = threading.Thread(target=queued)
        t.start()
        time.sleep(2.0)  # TTL 1 s + several sweeps
        self.assertTrue(t.is_alive(), "the held turn finished too early to test anything")
        self.assertTrue(self.exists(d, "held"))
        long_call.cancel()
        t.join(120)
        self.assertNotIn("err", out, out.get("err") and out["err"].details())
        self.assertEqual(out["last"].session_version, 1)
        self.wait_gone(d, "held", 15)

    def test_owner_and_ttl_survive_a_restart(self):
        a = self.start()
        ttl = max(8, int(6 * a.startup_s) + 4)  # outlives a (sanitizer-slow, loaded) restart
        s = self.create(a, "persist", owner="team-a/alice", ttl=ttl,
                        metadata=[pb.MetadataEntry(key="k", value="v")])
        self.create(a, "forever", owner="bob")
        self.assertEqual((s.owner, s.ttl_seconds), ("team-a/alice", ttl))
        f = a.api.ForkSession(pb.ForkSessionRequest(session_id="persist", new_session_id="fk"))
        self.assertEqual((f.owner, f.ttl_seconds, f.parent_session_id),
                         ("team-a/alice", ttl, "persist"))
        f2 = a.api.ForkSession(pb.ForkSessionRequest(session_id="persist", new_session_id="fk2",
                                                     owner="carol", ttl_seconds=ttl + 100))
        self.assertEqual((f2.owner, f2.ttl_seconds), ("carol", ttl + 100))
        self.kill(a)
        b = self.start()
        g = b.api.GetSession(pb.GetSessionRequest(session_id="persist"))
        self.assertEqual((g.owner, g.ttl_seconds, g.expires_unix_ms),
                         ("team-a/alice", ttl, s.expires_unix_ms))
        self.assertEqual([(m.key, m.value) for m in g.metadata], [("k", "v")])
        g = b.api.GetSession(pb.GetSessionRequest(session_id="forever"))
        self.assertEqual((g.owner, g.ttl_seconds, g.expires_unix_ms), ("bob", 0, 0))
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="fk")).ttl_seconds, ttl)
        gone = self.wait_gone(b, "persist", ttl + 15)
        self.assertGreaterEqual(gone, s.expires_unix_ms)
        self.assertLess(gone, s.expires_unix_ms + 5000)
        self.assertTrue(self.exists(b, "forever") and self.exists(b, "fk2"))
        # a session without its own TTL follows the daemon's default, which may change
        b.stop()
        c = self.start("--session-ttl", "3600")
        g = c.api.GetSession(pb.GetSessionRequest(session_id="forever"))
        self.assertEqual((g.ttl_seconds, g.expires_unix_ms), (3600, g.updated_unix_ms + 3600000))

    def test_refusals_and_recurctl(self):
        d = self.start()
        for bad in ("a\nb", "x" * 129):
            with self.assertRaises(grpc.RpcError) as cm:
                self.create(d, "bad", owner=bad)
            self.assertEqual(cm.exception.code(), C.INVALID_ARGUMENT)
        with self.assertRaises(grpc.RpcError) as cm:
            self.create(d, "bad", metadata=[pb.MetadataEntry(key="recurd.owner", value="x")])
        self.assertEqual(cm.exception.code(), C.INVALID_ARGUMENT)
        self.assertIn("recurd.", cm.exception.details())
        full = [pb.MetadataEntry(key="k%d" % i, value="v") for i in range(32)]
        with self.assertRaises(grpc.RpcError) as cm:
            self.create(d, "bad", owner="o", metadata=full)
        self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED)
        self.assertFalse(self.exists(d, "bad"))
        ctl = os.environ.get("RECURCTL_BIN") or os.path.join(ROOT, "build", "release", "daemon",
                                                              "recurctl")
        out = subprocess.run([ctl, "--addr", d.addr, "session", "create", "--id", "c1",
                              "--owner", 'o"q', "--ttl", "77", "--meta", "a=b"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        j = json.loads(out.stdout)
        self.assertEqual((j["owner"], j["ttl_seconds"], j["metadata"]), ('o"q', 77, {"a": "b"}))
        self.assertEqual(j["expires_unix_ms"], j["updated_unix_ms"] + 77000)
        out = subprocess.run([ctl, "--addr", d.addr, "session", "create", "--ttl", "-1"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
