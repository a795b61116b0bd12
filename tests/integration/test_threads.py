"""recurd integration: --adapt-threads (the default) with other processes holding the CPUs.

The daemon and two busy-loop processes are pinned to the same two CPUs (taskset on every thread
of the daemon): the pool's two threads then wait for a CPU about half the time, so the daemon
runs its steps on one thread — `recurd_cpu_threads_active` reads 1 and
`recurd_cpu_thread_changes_total` counts the change, a `cpu_threads` log line says so — and every
greedy answer meanwhile is the one it gave alone, bit for bit (token ids and logprobs). The ready line says whether the count
adapts; `--no-adapt-threads` and `--threads 1` keep it fixed. Skipped where taskset is missing,
fewer than two CPUs are usable, or the system reports no scheduler delays (the ready line says
"fixed: ..."). The controller's decisions on scripted figures, including when it tries more
threads again: workers/cpu/adapt_test.c."""
import os
import shutil
import subprocess
import sys
import time
import unittest

from rcd_harness import ROOT, OwnDaemonsTest, collect, gen_request
from test_metrics import samples, scrape, value

MODEL = os.path.join(ROOT, "models", "recurd-mamba-tiny")


def ready_line(d):
    return next((l for l in d.logs().splitlines() if '"ready"' in l), "")


def metric(d, name):
    return value(samples(scrape(d)[1]), name)


def answer(d, i):
    req = gen_request(tokens=[(37 * i + 11 * k) % 4000 + 1 for k in range(12)], max_tokens=48,
                      temperature=0, ignore_eos=True, logprobs=1)
    _, ids, lps, _ = collect(d.api.Generate(req, timeout=300))
    return ids, [(lp.token_id, lp.logprob) for lp in lps]


class AdaptThreads(OwnDaemonsTest):
    state_prefix = "recurd-threads-"

    def start(self, *extra):
        return self.spawn("--model", MODEL, "--ephemeral", *extra)

    def test_ready_line_and_metric(self):
        d = self.start()  # the harness's --threads 2
        self.assertIn("2 threads (--threads), adaptive", ready_line(d))
        self.assertEqual(metric(d, "recurd_cpu_threads_active"), 2)
        self.assertEqual(metric(d, "recurd_cpu_thread_changes_total"), 0)
        answer(d, 0)
        self.assertIn(metric(d, "recurd_cpu_threads_active"), (1, 2))
        fixed = self.start("--no-adapt-threads")
        line = ready_line(fixed)
        self.assertIn("2 threads (--threads)", line)
        self.assertNotIn("adaptive", line)
        one = self.start("--threads", "1")
        self.assertIn("1 thread (--threads)", ready_line(one))
        self.assertNotIn("adaptive", ready_line(one))
        self.assertEqual(metric(one, "recurd_cpu_threads_active"), 1)

    def test_busy_cpus_narrow_the_pool_outputs_unchanged(self):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            self.skipTest("fewer than two usable CPUs")
        if not shutil.which("taskset"):
            self.skipTest("no taskset")
        d = self.start()
        if "adaptive" not in ready_line(d):
            self.skipTest("the daemon cannot adapt here: " + ready_line(d)[-200:])
        pair = cpus[:2]
        subprocess.run(["taskset", "-a", "-cp", ",".join(map(str, pair)), str(d.proc.pid)],
                       check=True, stdout=subprocess.DEVNULL)
        ref = [answer(d, i) for i in range(3)]
        changes0 = metric(d, "recurd_cpu_thread_changes_total")
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                 preexec_fn=lambda: os.sched_setaffinity(0, pair))
                for _ in range(2)]
        try:
            deadline = time.time() + 120
            narrowed = False
            i = 0
            while time.time() < deadline:
                got = answer(d, i % 3)
                self.assertEqual(got, ref[i % 3], "answer %d changed under contention" % i)
                i += 1
                if (metric(d, "recurd_cpu_threads_active") == 1 and
                        metric(d, "recurd_cpu_thread_changes_total") > changes0):
                    narrowed = True
                    break
            self.assertTrue(narrowed, "still %s threads after %d answers with the CPUs busy:\n%s"
                            % (metric(d, "recurd_cpu_threads_active"), i, d.logs()[-2000:]))
            # the change is in the log too (one line per 10 s at most)
            lines = [l for l in d.logs().splitlines() if '"cpu_threads"' in l]
            self.assertTrue(any("1 of 2 pool threads" in l for l in lines),
                            "no cpu_threads line saying 1 of 2:\n" + "\n".join(lines))
            # after the change, answers are still the same bits
            for k in range(3):
                self.assertEqual(answer(d, k), ref[k])
        finally:
            for h in hogs:
                h.kill()
                h.wait()


if __name__ == "__main__":
    unittest.main(verbosity=2)
