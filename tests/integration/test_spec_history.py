"""recurd integration: the session's token history in its checkpoints (--spec-history, issue 18).

A 2-turn session on the Mamba golden fixture: turn 1 is a passage, turn 2 the passage again,
whose greedy answer repeats turn 1's *answer* (the fixture's state forgets fast), which is not
in turn 2's prompt: n-gram drafts (--speculate ngram) find it only in the history. Checked:
accepted drafts > 0 with the default history and fewer with --spec-history 0, the same
tokens either way; the history section in the checkpoint (prompt and answer of both turns);
speculation on vs off (per request) gives the same tokens and the same payload bytes, history
included; the history survives a SIGKILL and restart between turns, a fork, and the Redis tier
(a second daemon on the same Redis loads the session); a first turn that starts from a cached
prompt prefix keeps the prefix's tokens in its history; a checkpoint written with
--spec-history 0 is the old format (no section) and loads under the default."""
import os
import shutil
import struct
import tempfile
import unittest

from rcd_harness import ckpt_payload as payload
from rcd_harness import ckpt_sections as sections
from rcd_harness import ROOT, Daemon, OwnDaemonsTest, collect, free_port, gen_request, pb, \
    start_redis

M = os.path.join(ROOT, "tests", "golden", "mamba", "tiny_nobias_untied")
P = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 33, 8]
N = 24
OFF = 1  # SPECULATE_OFF




def history(pl):
    """The hist.tokens section of a payload (ckpt_ext.h), or None without it."""
    h = sections(pl)[1].get("hist.tokens")
    return None if h is None else list(struct.unpack("<%di" % (len(h) // 4), h))


def turn(d, sid, ids=P, off=False):
    r = gen_request(tokens=ids, session=sid, ignore_eos=True, temperature=0, max_tokens=N)
    if off:
        r.sampling.speculate = OFF
    _, out, _, last = collect(d.api.Generate(r, timeout=120))
    return out, last.usage.accepted_tokens


def create(d, *sids):
    for s in sids:
        d.api.CreateSession(pb.CreateSessionRequest(session_id=s))


class History(OwnDaemonsTest):
    def start(self, *extra, state=None):
        return self.spawn("--model", M, "--state-dir", state or self.dir, "--speculate", "ngram",
                          "--spec-tokens", "4", "--spec-adaptive", "off", *extra)

    def test_history_turns_restart_fork(self):
        d = self.start()
        create(d, "h", "off", "src", "k")
        a1, _ = turn(d, "h")
        self.assertEqual(turn(d, "off", off=True)[0], a1)
        self.assertEqual(turn(d, "src")[0], a1)
        self.assertEqual(turn(d, "k")[0], a1)
        d.api.ForkSession(pb.ForkSessionRequest(session_id="src", new_session_id="fk"))
        # turn 2 copies turn 1's answer: drafts from the history get accepted
        a2, acc = turn(d, "h")
        self.assertGreater(acc, 0)
        self.assertEqual(history(payload(self.dir, "h", 1)), P + a1)
        self.assertEqual(history(payload(self.dir, "h", 2)), P + a1 + P + a2)
        # speculation off: the same tokens and the same payload, history included
        self.assertEqual(turn(d, "off", off=True), (a2, 0))
        self.assertEqual(payload(self.dir, "off", 2), payload(self.dir, "h", 2))
        # a fork carries the history
        self.assertEqual(turn(d, "fk"), (a2, acc))
        self.assertEqual(payload(self.dir, "fk", 2), payload(self.dir, "h", 2))
        # a first turn that starts from a cached prompt prefix: its tokens join the history
        long = [(i * 37 + 5) % 250 + 3 for i in range(80)]
        collect(d.api.Generate(gen_request(tokens=long, temperature=0, max_tokens=2,
                                           ignore_eos=True), timeout=120))  # captures 64
        create(d, "px")
        _, out, _, last = collect(d.api.Generate(gen_request(
            tokens=long, session="px", temperature=0, max_tokens=N, ignore_eos=True), timeout=120))
        self.assertEqual(last.usage.cached_prompt_tokens, 64)
        self.assertEqual(history(payload(self.dir, "px", 1)), long + out)
        # SIGKILL between turns: the history survived on disk
        self.kill(d)
        d = self.start()
        self.assertEqual(turn(d, "k"), (a2, acc))
        self.assertEqual(payload(self.dir, "k", 2), payload(self.dir, "h", 2))

        # --spec-history 0: the same tokens, fewer accepted drafts, the old format
        old = tempfile.mkdtemp(prefix="recurd-it-old-")
        self.addCleanup(shutil.rmtree, old, True)
        z = self.start("--spec-history", "0", state=old)
        create(z, "n", "old")
        self.assertEqual(turn(z, "n")[0], a1)
        self.assertEqual(turn(z, "old")[0], a1)
        b2, acc0 = turn(z, "n")
        self.assertEqual(b2, a2)
        self.assertLess(acc0, acc)
        pl = payload(old, "n", 2)
        self.assertIsNone(history(pl))
        self.assertEqual(len(pl), len(payload(self.dir, "h", 2)) - (4 * 2 * (len(P) + N) + 72))
        self.assertEqual(pl, payload(self.dir, "h", 2)[:len(pl)])  # the state part: the same
        self.assertEqual(z.stop(), 0)
        # an old-format checkpoint loads under the default; the history starts there
        d2 = self.start(state=old)
        self.assertEqual(turn(d2, "old")[0], a2)
        self.assertEqual(history(payload(old, "old", 2)), P + a2)
        for bad in ("-1", "1048577", "x"):
            with self.assertRaises(RuntimeError):
                Daemon("--model", M, "--spec-history", bad)


class RedisTier(unittest.TestCase):
    def test_second_daemon_loads_the_history(self):
        if not shutil.which("redis-server"):
            self.skipTest("redis-server is not installed")
        tmp = tempfile.mkdtemp(prefix="recurd-hist-redis-")
        self.addCleanup(shutil.rmtree, tmp, True)
        port = free_port()
        redis = start_redis(port, tmp, "--appendonly", "no")
        self.addCleanup(redis.wait)
        self.addCleanup(redis.terminate)
        addr = "127.0.0.1:%d" % port
        args = ("--model", M, "--speculate", "ngram", "--spec-tokens", "4", "--redis", addr,
                "--spec-adaptive", "off")
        a = Daemon(*args)
        try:
            create(a, "r")
            a1, _ = turn(a, "r")
        finally:
            self.assertEqual(a.stop(), 0)
        b = Daemon(*args)  # another state dir, the same Redis
        try:
            a2, acc = turn(b, "r")
            self.assertGreater(acc, 0)
            self.assertIn("session_fetched", b.logs())
            self.assertEqual(history(payload(os.path.join(b.tmp, "state"), "r", 2)),
                             P + a1 + P + a2)
        finally:
            self.assertEqual(b.stop(), 0)


if __name__ == "__main__":
    unittest.main()
