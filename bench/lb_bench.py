#!/usr/bin/env python3
"""Load-balancer benchmark (issue 15): real redis-server, recurd replicas and HAProxy from
deploy/haproxy/haproxy.cfg.tmpl on loopback (tests/integration/scaleout_harness.py).

1. Added latency per call: the same sequential calls to one replica directly and through
   HAProxy (p50/p99): ListModels (a bare round trip) and a session turn (3-token prompt,
   --tokens generated, greedy, written through to Redis).
2. Throughput through HAProxy with 1 and with 3 replicas (each --threads 1): --clients
   threads doing session turns for --seconds; turns/s and tokens/s.

    RECURD_BIN=build/release/daemon/recurd python3 bench/lb_bench.py [--n 300] [--tokens 4]
Needs python3-grpcio, haproxy, redis-server."""
import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import scaleout_harness as H  # noqa: E402

from rcd_harness import Stub, collect, gen_request, pb  # noqa: E402

import grpc  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noqa: E402
from benchlib import cpu_model  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]



def stub(addr):
    ch = grpc.insecure_channel(addr)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch, Stub(ch, pb.DESCRIPTOR.services_by_name["Inference"], pb)


def latency(paths, n, tokens):
    """Alternates the paths call by call (the machine's load hits them alike); each path turns
    its own fresh session. Returns {name: (ListModels ms, turn ms)}."""
    out = {}
    for name, api in paths:
        sid = "lat-" + name
        api.CreateSession(pb.CreateSessionRequest(session_id=sid), metadata=H.md(sid))
        for _ in range(20):  # warm-up
            api.ListModels(pb.ListModelsRequest())
        out[name] = ([], [], [0])
    for i in range(n):
        for name, api in paths:
            lm, tt, v = out[name]
            t0 = time.perf_counter()
            api.ListModels(pb.ListModelsRequest())
            lm.append((time.perf_counter() - t0) * 1e3)
            sid = "lat-" + name
            t0 = time.perf_counter()
            _, _, _, last = collect(api.Generate(gen_request(
                tokens=[5 + i % 100, 7, 9], session=sid, max_tokens=tokens, temperature=0,
                ignore_eos=True, expected_version=v[0]), metadata=H.md(sid)))
            tt.append((time.perf_counter() - t0) * 1e3)
            v[0] = last.session_version
    return {k: (lm, tt) for k, (lm, tt, _) in out.items()}


def throughput(c, clients, seconds, tokens):
    sids = ["tp-%d-%d" % (len(c.replicas), i) for i in range(clients)]
    for s in sids:
        c.api.CreateSession(pb.CreateSessionRequest(session_id=s), metadata=H.md(s))
    done = [0] * clients
    stop = threading.Event()

    def run(i):
        v = 0
        while not stop.is_set():
            t = H.turn(c.api, sids[i], [5 + v % 100, 8, 13], v, max_tokens=tokens)
            v = t.version
            done[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    time.sleep(2)  # warm-up
    base, t0 = sum(done), time.perf_counter()
    time.sleep(seconds)
    n, dt = sum(done) - base, time.perf_counter() - t0
    stop.set()
    for t in ts:
        t.join()
    homes = {}
    for s in sids:
        _, call = c.api.GetSession.with_call(pb.GetSessionRequest(session_id=s),
                                             metadata=H.md(s))
        homes[H.replica_of(call)] = homes.get(H.replica_of(call), 0) + 1
    return n / dt, n * tokens / dt, homes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="calls per path (alternated)")
    ap.add_argument("--tokens", type=int, default=4, help="tokens generated per turn")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--tp-tokens", type=int, default=16, help="tokens per throughput turn")
    a = ap.parse_args()
    print("CPU: %s, %d cores; HAProxy 2.6 (deploy/haproxy/haproxy.cfg.tmpl)"
          % (cpu_model(), os.cpu_count()))

    with H.Cluster(1) as c:
        ch, direct = stub(c.replicas[0].addr)
        res = latency((("direct", direct), ("haproxy", c.api)), a.n, a.tokens)
        ch.close()
        print("\nlatency, %d calls per path, alternated (ms)" % a.n)
        print("%-8s %18s %18s" % ("path", "ListModels p50/p99", "turn(%d tok) p50/p99"
                                  % a.tokens))
        for name in ("direct", "haproxy"):
            lm, tt = res[name]
            print("%-8s %8.3f / %7.3f %8.3f / %7.3f" % (name, pct(lm, 50), pct(lm, 99),
                                                        pct(tt, 50), pct(tt, 99)))
        d, h = res["direct"], res["haproxy"]
        print("added    %8.3f / %7.3f %8.3f / %7.3f" % (
            pct(h[0], 50) - pct(d[0], 50), pct(h[0], 99) - pct(d[0], 99),
            pct(h[1], 50) - pct(d[1], 50), pct(h[1], 99) - pct(d[1], 99)))
        print("(turn mean: direct %.3f, haproxy %.3f)" % (statistics.mean(d[1]),
                                                          statistics.mean(h[1])))
        tp1 = throughput(c, a.clients, a.seconds, a.tp_tokens)
    with H.Cluster(3) as c:
        tp3 = throughput(c, a.clients, a.seconds, a.tp_tokens)
    print("\nthroughput through haproxy, %d clients, %d-token session turns, %.0f s"
          % (a.clients, a.tp_tokens, a.seconds))
    for n, (tps, toks, homes) in ((1, tp1), (3, tp3)):
        print("%d replica(s): %7.1f turns/s %8.1f tokens/s  sessions per replica %s"
              % (n, tps, toks, dict(sorted(homes.items()))))
    print("scaling 1 -> 3: %.2fx" % (tp3[0] / tp1[0]))


if __name__ == "__main__":
    main()
