"""recurd integration: per-tenant quotas (daemon/README.md, "Quotas"). Each quota refuses with
RESOURCE_EXHAUSTED naming the option and the tenant, with `retry-after-ms` (and
`grpc-retry-pushback-ms`) trailing metadata; another tenant is unaffected; the quota recovers
when a turn ends, after the bucket's refill time, or when a session is deleted; session and
state-byte quotas count the sessions found on disk after a restart."""
import re
import threading
import time
import unittest

import grpc

from rcd_harness import DaemonTest, OwnDaemonsTest, collect, gen_request, pb

C = grpc.StatusCode


def req(tenant="", tokens=None, session=None, **sampling):
    r = gen_request(tokens=tokens or [5, 6, 7, 8], session=session, **sampling)
    r.tenant = tenant
    return r


def trailing(e):
    return {k: v for k, v in (e.trailing_metadata() or ())}


class QuotaAssert:
    def assertRefused(self, fn, quota, tenant=None):
        """Calls fn (a stream is read to its end) and expects a quota refusal; returns the
        retry-after-ms hint."""
        with self.assertRaises(grpc.RpcError) as cm:
            r = fn()
            if hasattr(r, "__iter__") and not hasattr(r, "SerializeToString"):
                for _ in r:
                    pass
        e = cm.exception
        self.assertEqual(e.code(), C.RESOURCE_EXHAUSTED, e.details())
        self.assertIn(quota, e.details())
        if tenant is not None:
            self.assertIn("tenant '%s'" % tenant if tenant else "anonymous tenant", e.details())
        md = trailing(e)
        self.assertIn("retry-after-ms", md, e.details())
        ms = int(md["retry-after-ms"])
        self.assertGreater(ms, 0)
        if "grpc-retry-pushback-ms" in md:  # the client's gRPC may consume it itself
            self.assertEqual(int(md["grpc-retry-pushback-ms"]), ms)
        m = re.search(r"retry after (\d+) ms", e.details())
        self.assertTrue(m and int(m.group(1)) == ms, e.details())
        return ms


class Open:
    """A long Generate stream held open (its first message read) until closed."""

    def __init__(self, api, r, wait_first=True):
        self.call = api.Generate(r, timeout=300)
        if wait_first:
            next(self.call)

    def close(self):
        self.call.cancel()


def long_req(tenant):
    return req(tenant, max_tokens=4000, ignore_eos=True, temperature=0)


class Turns(DaemonTest, QuotaAssert):
    daemon_args = ("--ephemeral", "--slots", "4", "--tenant-max-turns", "2")

    def test_max_turns(self):
        a1, a2 = Open(self.api, long_req("alice")), Open(self.api, long_req("alice"))
        try:
            ms = self.assertRefused(lambda: self.api.Generate(req("alice"), timeout=60),
                                    "--tenant-max-turns", "alice")
            self.assertEqual(ms, 1000)  # the documented constant of count quotas
            # another tenant (and the anonymous one) is not affected
            collect(self.api.Generate(req("bob", max_tokens=3), timeout=60))
            collect(self.api.Generate(req("", max_tokens=3), timeout=60))
            # a turn that ends gives its place back
            a1.close()
            deadline = time.time() + 30
            while True:
                try:
                    collect(self.api.Generate(req("alice", max_tokens=3), timeout=60))
                    break
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), C.RESOURCE_EXHAUSTED, e.details())
                    self.assertLess(time.time(), deadline)
                    time.sleep(0.05)
        finally:
            a1.close()
            a2.close()

    def test_finished_turn_frees_at_once(self):
        # turns that ended normally do not count: the next may follow the final message
        for _ in range(6):
            collect(self.api.Generate(req("carol", max_tokens=2), timeout=60))

    def test_session_owner_is_the_tenant(self):
        self.api.CreateSession(pb.CreateSessionRequest(session_id="q-owned", owner="dave"))
        a1, a2 = Open(self.api, long_req("dave")), Open(self.api, long_req("dave"))
        try:
            self.assertRefused(lambda: self.api.Generate(req(session="q-owned"), timeout=60),
                               "--tenant-max-turns", "dave")
            # naming another tenant in the request charges that one instead
            collect(self.api.Generate(req("erin", session="q-owned", max_tokens=2), timeout=60))
        finally:
            a1.close()
            a2.close()


class Queued(DaemonTest, QuotaAssert):
    daemon_args = ("--ephemeral", "--slots", "1", "--tenant-max-queued", "1")

    def waiting(self, r):
        """Starts a stream that cannot get the slot yet; None when it was refused at once."""
        s = Open(self.api, r, wait_first=False)
        time.sleep(0.4)  # the daemon has admitted or refused it by now
        if s.call.done():
            self.assertEqual(s.call.code(), C.RESOURCE_EXHAUSTED, s.call.details())
            return None
        return s

    def test_max_queued(self):
        run = Open(self.api, long_req("alice"))  # holds the only slot
        q1 = self.waiting(long_req("alice"))
        try:
            self.assertIsNotNone(q1)
            ms = self.assertRefused(lambda: self.api.Generate(req("alice"), timeout=60),
                                    "--tenant-max-queued", "alice")
            self.assertEqual(ms, 1000)
            b = self.waiting(long_req("bob"))  # bob may queue one of his own
            self.assertIsNotNone(b)
            self.assertRefused(lambda: self.api.Generate(req("bob"), timeout=60),
                               "--tenant-max-queued", "bob")
            b.close()
            run.close()  # q1 gets the slot: alice has no turn waiting then
            deadline = time.time() + 30
            while True:
                q2 = self.waiting(long_req("alice"))
                if q2:
                    q2.close()
                    break
                self.assertLess(time.time(), deadline)
        finally:
            run.close()
            if q1:
                q1.close()


class Tokens(DaemonTest, QuotaAssert):
    # 600 tokens per minute: 10 per second, a bucket of 600
    daemon_args = ("--ephemeral", "--tenant-tokens-per-minute", "600")

    def test_bucket(self):
        # the prompt is charged at admission: 600 prompt tokens + 1 generated empty it
        t0 = time.time()
        collect(self.api.Generate(req("alice", tokens=[7] * 600, max_tokens=1), timeout=120))
        # the bucket refills 10 per second from then on (slow builds: a long prefill): ask
        # for more than can have come back, plus 3 s worth
        q = min(600, int(10 * (time.time() - t0)) + 30)
        t1 = time.time()
        ms = self.assertRefused(
            lambda: self.api.Generate(req("alice", tokens=[7] * q, max_tokens=1), timeout=60),
            "--tenant-tokens-per-minute", "alice")
        # q tokens (+1 of debt) at 10 per second, at most
        self.assertLessEqual(ms, (q + 1) * 100)
        # others have their own bucket
        collect(self.api.Generate(req("bob", tokens=[7] * 600, max_tokens=1), timeout=120))
        # refilled on time: after the hint, alice is served
        time.sleep(max(0.0, ms / 1000.0 - (time.time() - t1)) + 0.1)
        collect(self.api.Generate(req("alice", tokens=[7] * q, max_tokens=1), timeout=60))
        # that turn emptied the bucket again: a prompt over what is left is refused
        self.assertRefused(
            lambda: self.api.Generate(req("alice", tokens=[7] * 600, max_tokens=1), timeout=60),
            "--tenant-tokens-per-minute", "alice")


class Stored(OwnDaemonsTest, QuotaAssert):
    state_prefix = "recurd-quota-"

    def start(self, *extra):
        return self.spawn("--state-dir", self.dir, *extra)

    def create(self, d, sid, owner=""):
        return d.api.CreateSession(pb.CreateSessionRequest(session_id=sid, owner=owner))

    def test_max_sessions_survives_restart(self):
        d = self.start("--tenant-max-sessions", "2")
        self.create(d, "a1", "alice")
        self.create(d, "a2", "alice")
        ms = self.assertRefused(lambda: self.create(d, "a3", "alice"), "--tenant-max-sessions",
                                "alice")
        self.assertEqual(ms, 60000)
        self.create(d, "b1", "bob")
        self.create(d, "n1")
        self.create(d, "n2")
        self.assertRefused(lambda: self.create(d, "n3"), "--tenant-max-sessions", "")
        # a fork belongs to the source's owner unless it names its own
        self.assertRefused(lambda: d.api.ForkSession(pb.ForkSessionRequest(
            session_id="a1", new_session_id="a1f")), "--tenant-max-sessions", "alice")
        d.api.ForkSession(pb.ForkSessionRequest(session_id="a1", new_session_id="a1c",
                                                owner="carol"))
        self.kill(d)
        # counted from the state dir at startup
        d = self.start("--tenant-max-sessions", "2")
        self.assertRefused(lambda: self.create(d, "a3", "alice"), "--tenant-max-sessions",
                           "alice")
        d.api.DeleteSession(pb.DeleteSessionRequest(session_id="a1"))
        self.create(d, "a3", "alice")
        self.assertRefused(lambda: self.create(d, "a4", "alice"), "--tenant-max-sessions",
                           "alice")

    def test_max_state_bytes_survives_restart(self):
        d = self.start()
        sb = int(re.search(r"state (\d+) bytes", d.logs()).group(1))
        d.stop()
        # room for one committed state
        d = self.start("--tenant-max-state-bytes", str(sb))
        self.create(d, "s1", "alice")
        self.create(d, "s2", "alice")
        collect(d.api.Generate(req(session="s1", max_tokens=2), timeout=60))
        # s2's first commit would hold a second state
        ms = self.assertRefused(
            lambda: d.api.Generate(req(session="s2", max_tokens=2), timeout=60),
            "--tenant-max-state-bytes", "alice")
        self.assertEqual(ms, 60000)
        # s1 keeps its size: its turns go on
        collect(d.api.Generate(req(session="s1", max_tokens=2), timeout=60))
        # a fork copies s1's state: over too, unless it belongs to someone else
        self.assertRefused(lambda: d.api.ForkSession(pb.ForkSessionRequest(
            session_id="s1", new_session_id="s1f")), "--tenant-max-state-bytes", "alice")
        d.api.ForkSession(pb.ForkSessionRequest(session_id="s1", new_session_id="s1b",
                                                owner="bob"))
        collect(d.api.Generate(req(session="s1b", max_tokens=2), timeout=60))
        self.kill(d)
        d = self.start("--tenant-max-state-bytes", str(sb))
        self.assertRefused(lambda: d.api.Generate(req(session="s2", max_tokens=2), timeout=60),
                           "--tenant-max-state-bytes", "alice")
        d.api.DeleteSession(pb.DeleteSessionRequest(session_id="s1"))
        collect(d.api.Generate(req(session="s2", max_tokens=2), timeout=60))


if __name__ == "__main__":
    unittest.main(verbosity=2)
