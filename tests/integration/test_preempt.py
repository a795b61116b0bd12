"""recurd integration: priorities and preemption by state swap. With one state slot, a
high-priority turn arriving while a long low-priority one runs swaps the low one out to host
memory; it resumes afterwards and its output (greedy, or seeded sampling with logprobs) and its
committed session state are exactly those of the same turn run alone."""
import time
import unittest

import grpc

from rcd_harness import DaemonTest, collect, gen_request, pb, run_preempted

C = grpc.StatusCode


class Preempt(DaemonTest):
    daemon_args = ("--slots", "1", "--max-queue", "8")

    def gen(self, req, timeout=120):
        return collect(self.api.Generate(req, timeout=timeout))

    def run_preempted(self, low_req, high_req):
        """(low result, high result, low end time, high end time): rcd_harness.run_preempted."""
        return run_preempted(self, self.api, low_req, lambda: self.gen(high_req),
                             start_timeout=120)

    def assert_same(self, got, ref):
        self.assertEqual(got[1], ref[1])  # token ids
        self.assertEqual(got[0], ref[0])  # text
        self.assertEqual(len(got[2]), len(ref[2]))
        for a, b in zip(got[2], ref[2]):  # logprobs: the same computation, the same bits
            self.assertEqual(a.token_id, b.token_id)
            self.assertEqual(a.logprob, b.logprob)
            self.assertEqual([(t.token_id, t.logprob) for t in a.top],
                             [(t.token_id, t.logprob) for t in b.top])

    def test_greedy_preempted_equals_alone(self):
        low_req = gen_request("Once upon a time, in a small village", max_tokens=120,
                              temperature=0, ignore_eos=True, logprobs=2)
        high_req = gen_request("The dog", max_tokens=12, temperature=0, ignore_eos=True,
                               logprobs=2)
        high_req.priority = 3
        ref_low = self.gen(low_req)
        ref_high = self.gen(high_req)
        self.assertEqual(ref_low[3].usage.preemptions, 0)
        low, high, low_end, high_end = self.run_preempted(low_req, high_req)
        self.assertLess(high_end, low_end)  # the high-priority turn did not wait for the low
        self.assertGreaterEqual(low[3].usage.preemptions, 1)
        self.assertEqual(high[3].usage.preemptions, 0)
        self.assert_same(low, ref_low)
        self.assert_same(high, ref_high)
        self.assertEqual(low[3].finish_reason, pb.FinishReason.FINISH_REASON_LENGTH)

    def test_seeded_session_preempted_equals_alone(self):
        """Seeded sampling with logprobs on a session: the preempted turn samples the same
        tokens, and the state it commits continues exactly like the unpreempted one's."""
        def low_req(sid):
            r = gen_request("It was a dark and stormy night", session=sid, max_tokens=100,
                            temperature=1.0, seed=11, top_k=40, ignore_eos=True, logprobs=3)
            r.tenant = "batch-jobs"
            return r
        high_req = gen_request("Hello", max_tokens=8, temperature=0.7, seed=3,
                               ignore_eos=True)
        high_req.priority = 2
        high_req.tenant = "interactive"
        s_ref = self.api.CreateSession(pb.CreateSessionRequest()).session_id
        s_pre = self.api.CreateSession(pb.CreateSessionRequest()).session_id
        ref_low = self.gen(low_req(s_ref))
        ref_high = self.gen(high_req)
        low, high, low_end, high_end = self.run_preempted(low_req(s_pre), high_req)
        self.assertLess(high_end, low_end)
        self.assertGreaterEqual(low[3].usage.preemptions, 1)
        self.assert_same(low, ref_low)
        self.assert_same(high, ref_high)
        self.assertEqual(low[3].session_version, 1)
        # Turn 2 on each session: same committed state, same continuation.
        t2 = dict(max_tokens=10, temperature=0, ignore_eos=True, logprobs=2,
                  expected_version=1)
        a = self.gen(gen_request(" Then", session=s_ref, **t2))
        b = self.gen(gen_request(" Then", session=s_pre, **t2))
        self.assert_same(b, a)
        for sid in (s_ref, s_pre):
            s = self.api.GetSession(pb.GetSessionRequest(session_id=sid))
            self.assertEqual(s.version, 2)

    def test_equal_priority_does_not_preempt(self):
        low_req = gen_request("A long story:", max_tokens=60, temperature=0, ignore_eos=True)
        other = gen_request("Short", max_tokens=4, temperature=0, ignore_eos=True)
        low, other_res, low_end, other_end = self.run_preempted(low_req, other)
        if low[3].usage.total_ms > 4000:  # aging (5 s) lets the waiting one in, by design
            self.skipTest("too slow here (%.0f ms) to stay within the aging period"
                          % low[3].usage.total_ms)
        self.assertEqual(low[3].usage.preemptions, 0)
        self.assertLess(low_end, other_end)  # FCFS within a priority class

    def test_priority_out_of_range(self):
        req = gen_request("hi", max_tokens=2)
        req.priority = 4
        e = self.assertCode(C.INVALID_ARGUMENT, self.api.Generate, req, timeout=30)
        self.assertIn("priority", e.details())

    def test_deadline_while_queued(self):
        """A turn that cannot get the slot before its deadline fails with DEADLINE_EXCEEDED and
        costs no step; the running turn is untouched."""
        hold = gen_request("Keep going", max_tokens=4000, ignore_eos=True)
        hold.priority = 3  # nothing preempts it
        st = self.api.Generate(hold, timeout=120)
        next(st)
        t0 = time.time()
        self.assertCode(C.DEADLINE_EXCEEDED, self.api.Generate,
                        gen_request("late", max_tokens=4, ignore_eos=True), timeout=0.4)
        self.assertLess(time.time() - t0, 5)
        st.cancel()
        _, ids, _, _ = self.gen(gen_request("after", max_tokens=2, ignore_eos=True))
        self.assertEqual(len(ids), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
