"""spec_history: n-gram drafts over a session's token history (--spec-history, issue 18).
Multi-turn sessions that quote an earlier turn: turn 1 is a passage, turn 2 the same passage
again, so turn 2's answer repeats turn 1's answer (which is not in turn 2's prompt). Two
daemons with --speculate ngram, one with the default history and one with --spec-history 0;
each session's turn 2 also runs with sampling.speculate = SPECULATE_OFF on a fork of the same
session (the reference: same state, same tokens). Prints turn 2's decode tokens/s with
speculation off, on without history and on with history, the outputs' equality and the
acceptance, and the checkpoint payload sizes.
  python3 bench/spec_history.py --model DIR [--tokens 64] [--sessions 4] [--threads N]
Needs a built daemon (RECURD_BIN, default build/release/daemon/recurd)."""
import argparse
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)
from benchlib import cpu_model  # noqa: E402
from rcd_harness import Daemon, collect, gen_request, pb  # noqa: E402


def payload_len(state_dir, sid, version):
    with open(os.path.join(state_dir, "s_" + sid, "%020d.ckpt" % version), "rb") as f:
        b = f.read(64)
    return struct.unpack_from("<Q", b, 56)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    print("cpu: %s, model %s, %d tokens per turn, %d sessions" %
          (cpu_model(), a.model, a.tokens, a.sessions))
    print("daemon          turn-2 off tok/s  on tok/s  on/off  same  accepted/drafted  payload B")
    for hist in ("8192", "0"):
        # every step speculates (no back-off, no gain check): the acceptance is what is measured
        d = Daemon("--model", a.model, "--speculate", "ngram", "--spec-max-batch", "0",
                   "--spec-adaptive", "off", "--threads", str(a.threads), "--spec-history", hist)
        try:
            def gen(ids, sid, off):
                r = gen_request(tokens=ids, session=sid, temperature=0, max_tokens=a.tokens,
                                ignore_eos=True)
                if off:
                    r.sampling.speculate = 1
                t0 = time.monotonic()
                res = collect(d.api.Generate(r, timeout=600))
                return res, time.monotonic() - t0

            vocab = d.api.ListModels(pb.ListModelsRequest()).models[0].vocab_size
            t = {True: 0.0, False: 0.0}
            same, acc, dr, plen = True, 0, 0, 0
            for i in range(a.sessions):
                passage = [(j * 7919 + 13 + 101 * i) % (vocab - 8) + 4 for j in range(24)]
                sid = "s%d" % i
                d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
                gen(passage, sid, True)
                d.api.ForkSession(pb.ForkSessionRequest(session_id=sid, new_session_id=sid + "r"))
                ref, t_off = gen(passage, sid + "r", True)
                on, t_on = gen(passage, sid, False)
                t[True] += t_off
                t[False] += t_on
                same = same and ref[1] == on[1]
                acc += on[3].usage.accepted_tokens
                dr += on[3].usage.draft_tokens
                plen = payload_len(os.path.join(d.tmp, "state"), sid, 2)
            n = a.sessions * a.tokens
            print("history %-7s  %16.1f  %8.1f  %5.2fx  %-4s  %7d/%-8d  %d" %
                  (hist, n / t[True], n / t[False], t[True] / t[False], same, acc, dr, plen))
        finally:
            d.stop()


if __name__ == "__main__":
    main()
