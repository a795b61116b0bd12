#!/usr/bin/env python3
"""Load generator for recurd's scheduler: N concurrent closed-loop gRPC streams (each sends its
next Generate as soon as the previous one ends), for each N in --streams, against one daemon.
Prints output tokens/s, time to first token and inter-token latency (p50/p99) per level; N = 1
is the one-request-at-a-time baseline of the same run.

  python3 bench/sched_load.py --streams 1,8,32 --requests 64 -- --slots 32
  python3 bench/sched_load.py --addr 127.0.0.1:50051 --streams 16

Arguments after `--` go to the recurd it starts (RECURD_BIN, default build/release). Prompts
are random token ids (lengths uniform in --prompt), greedy, ignore_eos, --max-tokens each.
Inter-token latency: a message carrying k tokens counts its gap to the previous message as k
gaps of gap/k (the daemon coalesces tokens while a send is in flight).

--tokenize-load N runs N more clients next to every level, each sending Tokenize of
--tokenize-bytes of text (default ~4 MB; start the daemon with a --max-message-bytes above it)
in a loop: the daemon tokenizes on libuv's pool, where checkpoint I/O also runs (and, before
the engine's device thread, the model's steps). Their calls and mean latency are printed per
level (tok_calls, tok_ms)."""
import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import grpc  # noqa: E402

from rcd_harness import Daemon, Stub, gen_request, pb  # noqa: E402


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def one(api, rng, args, vocab):
    n = rng.randint(args.prompt[0], args.prompt[1])
    req = gen_request(tokens=[rng.randrange(vocab) for _ in range(n)],
                      max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    high = rng.random() < args.high_frac
    if high:
        req.priority = 3
    t0 = time.monotonic()
    prev, ttft, gaps, ntok = None, None, [], 0
    for m in api.Generate(req, timeout=600):
        k = len(m.token_ids)
        if not k:
            continue
        t = time.monotonic()
        if ttft is None:
            ttft = t - t0
            k -= 1
        elif k:
            gaps.extend([(t - prev) / k] * k)
        ntok += len(m.token_ids)
        prev = t
    return ttft, gaps, ntok, high


class TokenizeLoad:
    """N threads calling Tokenize in a loop until stop(); counts calls and their latency. Its
    own channel (connection), so its large messages do not share HTTP/2 flow control with the
    Generate streams."""

    def __init__(self, addr, n, n_bytes):
        words = ("the quick brown fox jumps over lazy dogs while 12345 numbers and "
                 "punctuation, (like this) follow; ").encode()
        text = (words * (n_bytes // len(words) + 1))[:n_bytes].decode()
        self.req = pb.TokenizeRequest(text=text)
        self.channel = grpc.insecure_channel(addr, options=[
            ("grpc.max_receive_message_length", 64 << 20)])
        api = Stub(self.channel, pb.DESCRIPTOR.services_by_name["Inference"], pb)
        self.api, self.lock, self.running = api, threading.Lock(), True
        self.calls, self.secs, self.errors = 0, 0.0, []
        self.threads = [threading.Thread(target=self.loop) for _ in range(n)]
        [t.start() for t in self.threads]

    def loop(self):
        while self.running:
            t0 = time.monotonic()
            try:
                self.api.Tokenize(self.req, timeout=600)
            except grpc.RpcError as e:
                self.errors.append(e.code().name)
                time.sleep(0.1)
                continue
            with self.lock:
                self.calls += 1
                self.secs += time.monotonic() - t0

    def take(self):  # calls and mean latency since the last take
        with self.lock:
            c, s = self.calls, self.secs
            self.calls, self.secs = 0, 0.0
        return c, (s / c * 1e3 if c else float("nan"))

    def stop(self):
        self.running = False
        [t.join() for t in self.threads]
        self.channel.close()


def level(api, n_streams, args, vocab):
    lock = threading.Lock()
    ttfts, gaps, toks, errors, hi_ttfts = [], [], [0], [], []
    per_stream = max(1, args.requests // n_streams) if args.requests else None

    def worker(i):
        rng = random.Random(args.seed * 1000 + i)
        done = 0
        while (per_stream is None and time.monotonic() < t_end) or \
                (per_stream is not None and done < per_stream):
            try:
                tt, g, n, high = one(api, rng, args, vocab)
            except grpc.RpcError as e:
                errors.append(e.code().name)
                return
            with lock:
                (hi_ttfts if high else ttfts).append(tt)
                gaps.extend(g)
                toks[0] += n
            done += 1

    t_end = time.monotonic() + args.duration
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_streams)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    wall = time.monotonic() - t0
    return {"streams": n_streams, "requests": len(ttfts) + len(hi_ttfts), "tokens": toks[0],
            "wall_s": wall, "hi_ttft_p50": pct(hi_ttfts, 50), "hi_ttft_p99": pct(hi_ttfts, 99),
            "n_high": len(hi_ttfts),
            "tok_s": toks[0] / wall, "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99),
            "itl_p50": pct(gaps, 50), "itl_p99": pct(gaps, 99), "errors": errors}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", help="drive a running daemon instead of starting one")
    ap.add_argument("--streams", default="1,8,32", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=64,
                    help="requests per level (0: run --duration seconds)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--prompt", default="16,128", help="prompt length range (tokens)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--high-frac", type=float, default=0.0,
                    help="fraction of requests sent with priority 3 (the rest 0); their TTFT "
                    "is reported apart (ttft_* columns are then the priority-0 requests')")
    ap.add_argument("--tokenize-load", type=int, default=0,
                    help="clients sending large Tokenize calls in a loop next to every level")
    ap.add_argument("--tokenize-bytes", type=int, default=4000000)
    ap.add_argument("daemon_args", nargs="*", help="after --: recurd options")
    args = ap.parse_args()
    args.prompt = [int(x) for x in args.prompt.split(",")]
    d = None
    if args.addr:
        ch = grpc.insecure_channel(args.addr)
        api = Stub(ch, pb.DESCRIPTOR.services_by_name["Inference"], pb)
    else:
        d = Daemon(*args.daemon_args)
        api = d.api
    try:
        m = api.ListModels(pb.ListModelsRequest()).models[0]
        print("model %s (%s), backend %s; prompts %d-%d tokens, %d new tokens each; daemon %s"
              % (m.id, m.architecture, m.backend, args.prompt[0], args.prompt[1],
                 args.max_tokens, " ".join(args.daemon_args) or args.addr))
        one(api, random.Random(0), args, m.vocab_size)  # warm-up
        tl = None
        if args.tokenize_load:
            tl = TokenizeLoad(args.addr or d.addr, args.tokenize_load, args.tokenize_bytes)
            print("tokenize load: %d clients, %d bytes per call" % (args.tokenize_load,
                                                                   args.tokenize_bytes))
        print("%8s %8s %8s %9s %10s %10s %10s %10s%s"
              % ("streams", "requests", "tokens", "tok/s", "ttft_p50", "ttft_p99", "itl_p50",
                 "itl_p99", "  tok_calls tok_ms" if tl else ""))
        base = None
        for n in [int(x) for x in args.streams.split(",")]:
            if tl:
                tl.take()
            r = level(api, n, args, m.vocab_size)
            base = base or r["tok_s"]
            tok = " %10d %6.0f" % tl.take() if tl else ""
            print("%8d %8d %8d %9.1f %8.1fms %8.1fms %8.2fms %8.2fms%s  x%.2f%s"
                  % (n, r["requests"], r["tokens"], r["tok_s"], r["ttft_p50"] * 1e3,
                     r["ttft_p99"] * 1e3, r["itl_p50"] * 1e3, r["itl_p99"] * 1e3, tok,
                     r["tok_s"] / base,
                     ("  errors: %s" % r["errors"][:5]) if r["errors"] else ""), flush=True)
        if tl:
            tl.stop()
            if tl.errors:
                print("tokenize errors: %s" % tl.errors[:5])
            if r["n_high"]:
                print("%8s %8d %8s %9s %8.1fms %8.1fms   (priority 3)"
                      % ("", r["n_high"], "", "", r["hi_ttft_p50"] * 1e3,
                         r["hi_ttft_p99"] * 1e3), flush=True)
    finally:
        if d:  # drain it, then show the scheduler's counters it logs at exit
            d.channel.close()
            d.proc.send_signal(signal.SIGTERM)
            d.proc.wait(120)
            for line in d.logs().splitlines():
                if '"sched_stats"' in line:
                    print(json.loads(line)["msg"])
            d.log.close()
            shutil.rmtree(d.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
