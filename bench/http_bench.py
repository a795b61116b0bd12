#!/usr/bin/env python3
"""The same workload through the OpenAI-compatible HTTP/SSE API and through gRPC Generate on
one recurd (issue 16: HTTP may cost at most 5% throughput at 32 streams).

  [RECURD_BIN=...] python3 bench/http_bench.py [--streams 1,32] [--requests N] [--max-tokens M]
                                               [--rounds R] [--addr HOST:PORT --http-port P]

Each round runs, for each stream count, the gRPC pass then the HTTP pass (alternating, so drift
of the shared machine hits both): `streams` client threads each send `requests` streaming
completions of `max_tokens` tokens (greedy, distinct prompts; the same requests on both paths,
so both generate the same tokens), back to back. Reported per pass: generated tokens per second
of wall time (all streams), and TTFT (request sent -> first chunk with text or tokens) p50 and
p99 over the requests, and the daemon's own CPU time per generated token (/proc, when the
script started the daemon) — the client runs on the same machine, in Python, and its cost is
in the wall-clock figures. The HTTP client reads the raw SSE stream (http.client, keep-alive), counts
its `data:` events and parses only the usage chunk, so the client's cost stays near gRPC's.
Without --addr the script starts its own daemon (--ephemeral)."""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from rcd_harness import Daemon, gen_request, pb  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noqa: E402
from benchlib import cpu_model  # noqa: E402

WORDS = ["alpha", "river", "stone", "quiet", "north", "seven", "glass", "market", "winter",
         "signal", "orange", "pilot", "ledger", "copper", "meadow", "harbor"]


def prompt(i):
    return "Story %d: the %s %s by the %s" % (i, WORDS[i % 16], WORDS[(i * 7) % 16],
                                             WORDS[(i * 11) % 16])


def grpc_one(api, i, max_tokens):
    req = gen_request(prompt(i), temperature=0.0, max_tokens=max_tokens)
    req.add_special_tokens = True  # as /v1/completions tokenizes its prompt
    t0 = time.perf_counter()
    first, n = None, 0
    for m in api.Generate(req, timeout=600):
        if first is None and (m.text or m.token_ids):
            first = time.perf_counter() - t0
        n += len(m.token_ids)
    return first, n


def http_one(conn, i, max_tokens):
    body = json.dumps({"prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError("HTTP %d: %s" % (r.status, r.read()[:300]))
    first, n, last = None, 0, b""
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        if first is None:
            first = time.perf_counter() - t0
        if line.startswith(b"data: [DONE]"):
            break
        last = line
    r.read()
    n = json.loads(last[6:])["usage"]["completion_tokens"]
    return first, n


def cpu_s(pid):
    """The process's user + system CPU seconds (None: unknown)."""
    if not pid:
        return None
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def run_pass(kind, d_api, host, http_port, streams, requests, max_tokens, base, pid=None):
    ttfts, tokens, errors = [], [0], []
    c0 = cpu_s(pid)
    lock = threading.Lock()

    def worker(w):
        conn = http.client.HTTPConnection(host, http_port, timeout=600) if kind == "http" else None
        try:
            for k in range(requests):
                i = base + w * requests + k
                f, n = (http_one(conn, i, max_tokens) if conn else grpc_one(d_api, i, max_tokens))
                with lock:
                    ttfts.append(f * 1e3)
                    tokens[0] += n
        except Exception as e:  # reported, fails the run
            errors.append(repr(e))
        finally:
            if conn:
                conn.close()

    th = [threading.Thread(target=worker, args=(w,)) for w in range(streams)]
    t0 = time.perf_counter()
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError("%s pass failed: %s" % (kind, errors[0]))
    c1 = cpu_s(pid)
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))]
    # the daemon's CPU milliseconds per generated token (its own cost, apart from the client's)
    cpu = (c1 - c0) * 1e3 / max(tokens[0], 1) if c0 is not None else float("nan")
    return tokens[0] / wall, statistics.median(ttfts), p99, cpu, tokens[0]



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", default="1,32")
    ap.add_argument("--requests", type=int, default=4, help="requests per stream per pass")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--addr", help="a running daemon's gRPC HOST:PORT (else one is started)")
    ap.add_argument("--http-port", type=int)
    a = ap.parse_args()
    d = None
    if a.addr:
        import grpc
        from rcd_harness import Stub
        ch = grpc.insecure_channel(a.addr)
        api = Stub(ch, pb.DESCRIPTOR.services_by_name["Inference"], pb)
        host, http_port = a.addr.rsplit(":", 1)[0], a.http_port
    else:
        d = Daemon("--ephemeral")
        api, host, http_port = d.api, "127.0.0.1", d.http_port
    pid = d.proc.pid if d else None
    print("CPU: %s (%d online); max_tokens %d, %d requests per stream per pass, %d rounds"
          % (cpu_model(), os.cpu_count(), a.max_tokens, a.requests, a.rounds))
    streams = [int(x) for x in a.streams.split(",")]
    res = {}
    base = 0
    try:
        # warm-up: both paths once
        run_pass("grpc", api, host, http_port, 2, 1, 8, 10 ** 6)
        run_pass("http", api, host, http_port, 2, 1, 8, 10 ** 6)
        for rnd in range(a.rounds):
            for s in streams:
                for kind in ("grpc", "http"):
                    # the same prompts on both paths in a round: the same tokens
                    r = run_pass(kind, api, host, http_port, s, a.requests, a.max_tokens, base,
                                 pid)
                    res.setdefault((s, kind), []).append(r)
                    print("round %d streams %2d %-4s: %8.1f tok/s  TTFT p50 %7.1f ms  "
                          "p99 %7.1f ms  server %.3f CPU ms/token  (%d tokens)" % (rnd, s, kind, *r),
                          flush=True)
                base += s * a.requests
    finally:
        if d:
            d.stop()
    print("\nmedian over rounds:")
    print("| streams | path | tok/s | TTFT p50 ms | TTFT p99 ms | daemon CPU ms/token |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in streams:
        med = {}
        for kind in ("grpc", "http"):
            rs = res[(s, kind)]
            med[kind] = [statistics.median(x[j] for x in rs) for j in range(4)]
            print("| %d | %s | %.1f | %.1f | %.1f | %.3f |" % (s, kind, *med[kind]))
        print("| %d | HTTP/gRPC | %.3f | | | %.3f |"
              % (s, med["http"][0] / med["grpc"][0], med["http"][3] / med["grpc"][3]))


if __name__ == "__main__":
    main()
