"""threads_daemon: batch-1 decode through the daemon while other processes hold the CPUs, with
--adapt-threads (the default) and --no-adapt-threads. Two daemons (one of each), every thread
pinned to the same CPUs as the competing busy loops (taskset -a), take the same greedy requests
one at a time with 0, 1, ... busy loops beside them. Prints milliseconds per token (whole
requests, prefill included: the prompts are short), the pool's active threads at the end
(recurd_cpu_threads_active), the count's changes during the run (recurd_cpu_thread_changes_total)
and whether both daemons gave the same tokens. The two daemons take turns going first.
  python3 bench/threads_daemon.py [--model DIR] [--threads 2] [--hogs 0,1,2] [--requests 30]
      [--tokens 64] [--reps 1]
Needs a built daemon (RECURD_BIN, default build/release/daemon/recurd) and taskset."""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)
from benchlib import cpu_model  # noqa: E402
from rcd_harness import ROOT, Daemon, collect, gen_request  # noqa: E402
from test_metrics import samples, scrape, value  # noqa: E402


def run(d, n, tokens):
    """(seconds, token ids of every request) for n greedy requests one at a time."""
    ids_all = []
    t0 = time.monotonic()
    for i in range(n):
        req = gen_request(tokens=[(37 * i + 11 * k) % 4000 + 1 for k in range(8)],
                          max_tokens=tokens, temperature=0, ignore_eos=True)
        _, ids, _, _ = collect(d.api.Generate(req, timeout=600))
        ids_all.append(list(ids))
    return time.monotonic() - t0, ids_all


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "recurd-hybrid-tiny"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hogs", default="0,1,2")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))[:a.threads]
    print("cpu: %s; daemons and busy loops on CPUs %s; model %s; %d requests of %d tokens"
          % (cpu_model(), cpus, a.model, a.requests, a.tokens))
    mask = ",".join(map(str, cpus))
    daemons = {}
    for mode in ("adapt", "fixed"):
        extra = () if mode == "adapt" else ("--no-adapt-threads",)
        d = Daemon("--model", a.model, "--ephemeral", "--threads", str(a.threads), *extra)
        subprocess.run(["taskset", "-a", "-cp", mask, str(d.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        run(d, 2, 8)  # warm
        daemons[mode] = d
    print("%-5s %-5s %-6s %10s %8s %6s %7s %s" % ("rep", "hogs", "mode", "ms/token", "vs fixed",
                                                  "active", "changes", "same"))
    try:
        for rep in range(a.reps):
            for h in [int(x) for x in a.hogs.split(",")]:
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
                        for _ in range(h)]
                try:
                    res = {}
                    order = ("fixed", "adapt") if rep % 2 == 0 else ("adapt", "fixed")
                    for mode in order:
                        def changes():
                            return value(samples(scrape(daemons[mode])[1]),
                                         "recurd_cpu_thread_changes_total")
                        c0 = changes()
                        secs, ids = run(daemons[mode], a.requests, a.tokens)
                        act = value(samples(scrape(daemons[mode])[1]), "recurd_cpu_threads_active")
                        res[mode] = (1e3 * secs / (a.requests * a.tokens), ids, act,
                                     changes() - c0)
                finally:
                    for p in hogs:
                        p.kill()
                        p.wait()
                same = res["adapt"][1] == res["fixed"][1]
                for mode in ("fixed", "adapt"):
                    ms, _, act, ch = res[mode]
                    print("%-5d %-5d %-6s %10.3f %7.2fx %6d %7d %s" % (
                        rep, h, mode, ms, res["fixed"][0] / ms, act, ch, same), flush=True)
    finally:
        for d in daemons.values():
            d.stop()


if __name__ == "__main__":
    main()
