#!/usr/bin/env python3
"""Prefix snapshots and session resume against re-prefill, over a real recurd (issue #7).

  [RECURD_BIN=...] python3 bench/prefix_bench.py [--reps N] [--model DIR --vocab V]

--model runs a checkpoint other than the bundled one (e.g. bench/data/mamba130m-bf16, which
has no tokenizer: prompts are then random token ids below --vocab).

1. TTFT of a prompt whose 64..2048-token prefix is cached (a hit: only the suffix is
   prefilled) against the same prompt shape with a fresh prefix (a miss: all of it).
2. Resume of a session with 64..8192 tokens of history from its durable checkpoint (host
   cache off: the state is read from disk, page cache warm) against a stateless re-prefill of
   the same history, in the same run.

TTFT is measured at the client (request sent -> first streamed message, loopback gRPC) and
reported with the server's queue + prefill time (usage). Medians of --reps runs."""
import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from rcd_harness import Daemon, gen_request, pb  # noqa: E402

SUFFIX = 8


def ttft(api, req):
    t0 = time.perf_counter()
    first = None
    last = None
    for m in api.Generate(req, timeout=600):
        if first is None:
            first = time.perf_counter() - t0
        last = m
    u = last.usage
    return first * 1e3, u.queue_ms + u.prefill_ms, u.cached_prompt_tokens


VOCAB = 0  # > 0: the model has no tokenizer; draw ids below it


def vocab_tokens(api, n, rng):
    if VOCAB:
        return [rng.randrange(VOCAB) for _ in range(n)]
    text = " ".join(rng.choice(["alpha", "river", "stone", "quiet", "north", "seven", "glass",
                                "market", "winter", "signal", "orange", "pilot", "ledger"])
                    for _ in range(n))
    ids = list(api.Tokenize(pb.TokenizeRequest(text=text)).token_ids)
    return ids[:n]


def req(tokens, session=None):
    return gen_request(tokens=tokens, session=session, max_tokens=1, temperature=0,
                       ignore_eos=True)


def bench_prefix(reps, threads, model):
    d = Daemon(*model, "--ephemeral", "--max-prompt", "16384", "--max-context", "32768",
               "--threads", str(threads), "--prefix-cache-bytes", str(256 << 20))
    rng = random.Random(1)
    try:
        api = d.api
        ttft(api, req(vocab_tokens(api, 16, rng)))  # warm-up
        print("prefix  | miss TTFT ms (client / server) | hit TTFT ms (client / server) | "
              "cached")
        for n in (64, 128, 256, 512, 1024, 2048):
            miss, hit = [], []
            cached = 0
            for _ in range(reps):
                prefix = vocab_tokens(api, n, rng)
                a = prefix + vocab_tokens(api, SUFFIX, rng)
                b = prefix + vocab_tokens(api, SUFFIX, rng)
                m = ttft(api, req(a))  # miss: prefills n + 8, snapshots the prefix
                h = ttft(api, req(b))  # hit: prefills the 8-token suffix only
                miss.append(m)
                hit.append(h)
                cached = h[2]
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            print("%7d | %13.2f / %8.2f | %12.2f / %8.2f | %d" %
                  (n, med(miss, 0), med(miss, 1), med(hit, 0), med(hit, 1), cached))
    finally:
        d.stop()


def bench_resume(reps, threads, model):
    d = Daemon(*model, "--max-prompt", "16384", "--max-context", "32768", "--threads",
               str(threads),
               "--host-cache-bytes", "0", "--prefix-cache-bytes", "0")
    rng = random.Random(2)
    try:
        api = d.api
        ttft(api, req(vocab_tokens(api, 16, rng)))
        print("history | resume from disk TTFT ms (client / server) | re-prefill TTFT ms "
              "(client / server) | ratio")
        for n in (64, 256, 1024, 2048, 4096, 8192):
            res, pre = [], []
            for _ in range(reps):
                hist = vocab_tokens(api, n, rng)
                nxt = vocab_tokens(api, 1, rng)
                sid = api.CreateSession(pb.CreateSessionRequest()).session_id
                # turn 1 absorbs the history (max_tokens 1: history + one sampled token)
                out = None
                for m in api.Generate(req(hist, sid), timeout=600):
                    if m.token_ids:
                        out = m.token_ids[0]
                res.append(ttft(api, req(nxt, sid)))  # state read from its checkpoint
                pre.append(ttft(api, req(hist + [out] + nxt)))  # the same history, prefilled
                api.DeleteSession(pb.DeleteSessionRequest(session_id=sid))
            r0 = statistics.median(x[0] for x in res)
            p0 = statistics.median(x[0] for x in pre)
            print("%7d | %24.2f / %8.2f | %22.2f / %8.2f | %6.1fx" %
                  (n, r0, statistics.median(x[1] for x in res), p0,
                   statistics.median(x[1] for x in pre), p0 / r0))
    finally:
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="")
    ap.add_argument("--vocab", type=int, default=0)
    a = ap.parse_args()
    global VOCAB
    VOCAB = a.vocab
    model = ("--model", a.model) if a.model else ()
    bench_prefix(a.reps, a.threads, model)
    bench_resume(a.reps, a.threads, model)


if __name__ == "__main__":
    main()
