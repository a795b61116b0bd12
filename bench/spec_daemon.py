"""spec_daemon: speculative decoding through the daemon (issue 18). One daemon with
--speculate ngram; each request runs with sampling.speculate = SPECULATE_OFF and with the
server's setting, alternately, and the output must be identical. Two workloads, by token ids:
copy-heavy (a passage, the model's own greedy continuation of it, the passage again: the answer
repeats what followed the passage) and free generation (a passage that does not repeat). At 1
stream and at N concurrent streams; prints decode tokens/s off and on, their ratio and the
acceptance.
  python3 bench/spec_daemon.py --model DIR [--tokens 64] [--streams 8] [--reps 3]
                               [--draft-model DIR]   (--speculate draft instead of ngram)
Needs a built daemon (RECURD_BIN, default build/release/daemon/recurd)."""
import argparse
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)
from benchlib import cpu_model  # noqa: E402
from rcd_harness import Daemon, collect, gen_request  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--draft-model")
    a = ap.parse_args()
    spec = ("draft", "--draft-model", a.draft_model) if a.draft_model else ("ngram",)
    d = Daemon("--model", a.model, "--speculate", *spec, "--state-dir", "",
               "--threads", str(a.threads), "--spec-max-batch", "0")
    try:
        def gen(ids, off, n):
            r = gen_request(tokens=ids, temperature=0, max_tokens=n, ignore_eos=True)
            if off:
                r.sampling.speculate = 1
            return collect(d.api.Generate(r, timeout=600))

        passage = [(i * 7919 + 13) % 1000 + 100 for i in range(24)]
        cont = gen(passage, True, 48)[1]
        work = {"copy-heavy": passage + cont + passage, "free": passage}
        print("cpu: %s, model %s, %d tokens per request" % (cpu_model(), a.model, a.tokens))
        print("workload     streams  off_tok/s  on_tok/s  ratio  same  accepted/drafted")
        for name, ids in work.items():
            for streams in (1, a.streams):
                t = {True: 0.0, False: 0.0}
                outs, acc, dr = {}, 0, 0
                for _ in range(a.reps):
                    for off in (True, False):
                        res = [None] * streams

                        def one(i, off=off):
                            res[i] = gen(ids, off, a.tokens)

                        ths = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
                        t0 = time.monotonic()
                        for th in ths:
                            th.start()
                        for th in ths:
                            th.join()
                        t[off] += time.monotonic() - t0
                        outs.setdefault(off, res[0][1])
                        if not off:
                            acc += sum(r[3].usage.accepted_tokens for r in res)
                            dr += sum(r[3].usage.draft_tokens for r in res)
                n = a.reps * streams * a.tokens
                print("%-12s %7d  %9.1f  %8.1f  %5.2f  %-4s  %d/%d" %
                      (name, streams, n / t[True], n / t[False], t[True] / t[False],
                       outs[True] == outs[False], acc, dr))
    finally:
        d.stop()


if __name__ == "__main__":
    main()
