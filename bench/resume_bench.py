#!/usr/bin/env python3
"""Resume of a moved session through real replicas (issue 15): a real redis-server on loopback
and two recurd replicas A and B on it (--redis, authority mode, each its own --state-dir).
For each of --sessions sessions: --turns turns on A (its history), then
  hot     the next turn on A (its state is in A's host cache; one version check),
  moved   the next turn on B, which has never seen the session (version check, GET of the
          checkpoint from Redis, verify, host cache, local copy written behind),
  back    the next turn on A again, whose copy is now stale (dropped, the latest fetched).
Each sample is the time to the first streamed token of a --prompt-token prompt (client side,
through gRPC); p50/p99 over the sessions, the calls of one session back to back and the
three kinds interleaved session by session (the machine's load hits them alike), and the
per-session differences moved - hot and back - hot (p50, p90).

    RECURD_BIN=build/release/daemon/recurd /usr/bin/python3 bench/resume_bench.py [--sessions 40]
        [--turns 3] [--prompt 8] [--model DIR --vocab V] [--threads 2]

--model runs another checkpoint (tools/make_bench_model.py; --state 128 gives a ~19 MB state
at mamba-130m's shape); --vocab V draws token ids below V for a model without a tokenizer.
Needs python3-grpcio and redis-server. Not a test: bench/RESULTS.md has the numbers."""
import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from rcd_harness import Daemon, gen_request, pb  # noqa: E402
from test_fencing import RedisProc  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noqa: E402
from benchlib import cpu_model  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]



def first_token(d, sid, toks):
    """Time (ms) to the first streamed token of one turn; the turn is read to its end."""
    t0 = time.perf_counter()
    ft = None
    last = None
    for m in d.api.Generate(gen_request(tokens=toks, session=sid, max_tokens=2, temperature=0,
                                        ignore_eos=True),
                            metadata=[("x-session-id", sid)], timeout=120):
        if ft is None and len(m.token_ids):
            ft = (time.perf_counter() - t0) * 1e3
        last = m
    if ft is None or not last.session_version:
        raise RuntimeError("turn of %s gave no token or no version" % sid)
    return ft, last.session_version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--model", default="")
    ap.add_argument("--vocab", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = ("--model", a.model) if a.model else ()
    tmp = tempfile.mkdtemp(prefix="resume-bench-")
    redis = RedisProc(tmp)
    reps = []
    try:
        args = model + ("--redis", redis.addr, "--threads", str(a.threads))
        A = Daemon(*args)
        B = Daemon(*args)
        reps = [A, B]
        rnd = random.Random(0)
        if a.vocab:
            def prompt():
                return [rnd.randrange(1, a.vocab) for _ in range(a.prompt)]
        else:
            ids = list(A.api.Tokenize(pb.TokenizeRequest(
                text=" the cat sat on a mat and then it went home again")).token_ids)

            def prompt():
                return [ids[rnd.randrange(len(ids))] for _ in range(a.prompt)]
        res = {"hot": [], "moved": [], "back": []}
        for i in range(-3, a.sessions):  # three warm-up sessions, not counted
            sid = "rb-%d" % i
            A.api.CreateSession(pb.CreateSessionRequest(session_id=sid),
                                metadata=[("x-session-id", sid)])
            v = 0
            for _ in range(a.turns):
                _, v = first_token(A, sid, prompt())
            for kind, d in (("hot", A), ("moved", B), ("back", A)):
                ms, nv = first_token(d, sid, prompt())
                if nv != v + 1:
                    raise RuntimeError("%s: version %d after %d" % (sid, nv, v))
                v = nv
                if i >= 0:
                    res[kind].append(ms)
        sb = A.api.ListModels(pb.ListModelsRequest()).models[0].state_bytes
        print("# resume_bench: %s, %d CPUs; model %s (state %d B); %d sessions x %d turns, "
              "%d-token prompts" % (cpu_model(), os.cpu_count(), a.model or "bundled", sb,
                                   a.sessions, a.turns, a.prompt))
        print("| turn | first token p50 (ms) | p99 (ms) |")
        print("|---|---|---|")
        for kind in ("hot", "moved", "back"):
            print("| %s | %.2f | %.2f |" % (kind, pct(res[kind], 50), pct(res[kind], 99)))
        # paired by session (the load of the moment hits both calls of a pair alike)
        for kind in ("moved", "back"):
            d = [m - h for m, h in zip(res[kind], res["hot"])]
            print("%s - hot, per session: p50 %.2f ms, p90 %.2f ms" % (kind, pct(d, 50),
                                                                        pct(d, 90)))
    finally:
        for d in reps:
            d.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
