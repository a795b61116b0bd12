"""The cost of --redis-authority per session turn (issue 15): one replica, a real redis-server on
loopback, N one-token turns of one session, authority on and off interleaved in rounds; prints
p50/p99 turn latency of each and the difference (the version check EVAL plus the conditional
commit EVAL instead of SET). Run: python3 bench/fence_bench.py [N] [ROUNDS] (RECURD_BIN)."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from test_fencing import RedisProc  # noqa: E402
from rcd_harness import Daemon, collect, gen_request, pb  # noqa: E402
import tempfile  # noqa: E402


def run(d, sid, n):
    toks = list(d.api.Tokenize(pb.TokenizeRequest(text=" and")).token_ids)
    d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        collect(d.api.Generate(gen_request(tokens=toks, session=sid, max_tokens=1,
                                           temperature=0, ignore_eos=True), timeout=60))
        lat.append((time.perf_counter() - t0) * 1e3)
    return lat


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    tmp = tempfile.mkdtemp(prefix="fence-bench-")
    r = RedisProc(tmp)
    res = {"on": [], "off": []}
    try:
        for k in range(rounds):
            for mode in ("on", "off"):
                d = Daemon("--redis", r.addr, "--redis-authority=" + mode)
                try:
                    run(d, "warm%d%s" % (k, mode), 20)
                    res[mode] += run(d, "s%d%s" % (k, mode), n)
                finally:
                    d.stop()
    finally:
        r.stop()
    for mode, lat in res.items():
        lat.sort()
        print("authority %-3s turns %d  p50 %.3f ms  p99 %.3f ms  mean %.3f ms" % (
            mode, len(lat), statistics.median(lat), lat[int(len(lat) * 0.99) - 1],
            statistics.mean(lat)))
    print("added p50 %.3f ms" % (statistics.median(res["on"]) - statistics.median(res["off"])))


if __name__ == "__main__":
    main()
