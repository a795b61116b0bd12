"""spec_daemon: speculative decoding through the daemon (issue 18). One daemon with
--speculate ngram; each request runs with sampling.speculate = SPECULATE_OFF and with the
server's setting, alternately, and the output must be identical. Two workloads, by token ids:
copy-heavy (a passage, the model's own greedy continuation of it, the passage again: the answer
repeats what followed the passage) and free generation (a passage that does not repeat). At 1
stream and at N concurrent streams; prints tokens/s off and on (whole requests, prefill
included), their ratio, the decode ratio (tokens after each request's first streamed message
over the time after it: the prompt's prefill left out), whether the outputs are the same, and
the acceptance.
  python3 bench/spec_daemon.py --model DIR [--tokens 64] [--streams 8] [--reps 3]
      [--speculate ngram|draft] [--draft-model DIR] [--spec-max-batch N] [--text]
      [--spec-adaptive on|off] [--spec-tokens K] [--matmul fp32|bf16] [--weights native|q8|q4]
      [--long]
--text (a model with a tokenizer, e.g. the bundled one): the workloads are prose instead of
token ids: copy-heavy (a row per passage of bench/spec_prompts.py, and "copy-heldout": the 12
passages of bench/spec_heldout.json, Python documentation the bundled models' training held
out) asks to continue a passage given in full and then again cut short at a word (the answer
can copy the rest), free generation continues short prompts. A workload of several prompts
gives each request the next one (streams and repetitions), so --reps 12 at 1 stream runs each
held-out passage once. Without --spec-max-batch the
daemon's default back-off policy applies (by ids the bench turns it off with 0, as before).
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
from spec_prompts import PASSAGES, copy_prompt, heldout_passages  # noqa: E402
from rcd_harness import Daemon, gen_request  # noqa: E402


# Free-generation prompts written for this bench.
FREE = ["The function returns", "A man walks into a bar", "Once upon a time",
        "The best way to learn", "In the morning the", "This module provides",
        "When the program starts", "She opened the door and"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--speculate", choices=["ngram", "draft"],
                    help="default: draft with --draft-model, else ngram")
    ap.add_argument("--draft-model")
    ap.add_argument("--spec-max-batch", type=int)
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--long", action="store_true",
                    help="with --text: only copy-long, each held-out copy prompt after the other "
                         "11 held-out passages (~1,300 tokens of context)")
    ap.add_argument("--spec-tokens", type=int, help="the daemon's --spec-tokens (default its own)")
    ap.add_argument("--matmul", choices=["fp32", "bf16"], help="the daemon's --matmul")
    ap.add_argument("--weights", choices=["native", "q8", "q4"], help="the daemon's --weights")
    ap.add_argument("--spec-adaptive", choices=["on", "off"],
                    help="the daemon's gain check (default: the daemon's, on)")
    a = ap.parse_args()
    if not a.speculate:
        a.speculate = "draft" if a.draft_model else "ngram"
    args = ["--model", a.model, "--speculate", a.speculate, "--state-dir", "",
            "--threads", str(a.threads)]
    if a.draft_model:
        args += ["--draft-model", a.draft_model]
    smb = a.spec_max_batch if a.spec_max_batch is not None else (None if a.text else 0)
    if smb is not None:
        args += ["--spec-max-batch", str(smb)]
    if a.spec_adaptive:
        args += ["--spec-adaptive", a.spec_adaptive]
    if a.spec_tokens:
        args += ["--spec-tokens", str(a.spec_tokens)]
    for flag in ("matmul", "weights"):
        if getattr(a, flag):
            args += ["--" + flag, getattr(a, flag)]
    d = Daemon(*args)
    try:
        def gen(ids, off, n):
            if isinstance(ids, str):
                r = gen_request(prompt=ids, temperature=0, max_tokens=n, ignore_eos=True)
            else:
                r = gen_request(tokens=ids, temperature=0, max_tokens=n, ignore_eos=True)
            if off:
                r.sampling.speculate = 1
            out, last, first = [], None, None
            for m in d.api.Generate(r, timeout=600):
                if first is None:  # the prompt's prefill and the first token(s)
                    first = (time.monotonic(), len(m.token_ids))
                out.extend(m.token_ids)
                last = m
            # ids, the final message, decode seconds and tokens after the first message
            return out, last, time.monotonic() - first[0], len(out) - first[1]

        if a.text:
            work = {"copy-" + k: [copy_prompt(p)] for k, p in PASSAGES.items()}
            held = heldout_passages()
            work["copy-heldout"] = [copy_prompt(p) for p in held]
            if a.long:  # the other 11 passages ahead of each: ~1,300 tokens of context
                work = {"copy-long": ["\n\n".join(held[:i] + held[i + 1:] + [copy_prompt(p)])
                                      for i, p in enumerate(held)]}
            else:
                work["free"] = FREE
        else:
            passage = [(i * 7919 + 13) % 1000 + 100 for i in range(24)]
            cont = gen(passage, True, 48)[0]
            work = {"copy-heavy": [passage + cont + passage], "free": [passage]}
        print("cpu: %s, model %s, %d tokens per request, --speculate %s%s, --spec-max-batch %s, "
              "--spec-tokens %s, --matmul %s, --weights %s" % (
                  cpu_model(), a.model, a.tokens, a.speculate,
                  " --draft-model " + a.draft_model if a.draft_model else "",
                  "default" if smb is None else smb, a.spec_tokens or "default",
                  a.matmul or "fp32", a.weights or "native"))
        print("workload     streams  off_tok/s  on_tok/s  ratio  decode  same  accepted/drafted")
        for prompts in work.values():  # warm-up: the first requests pay one-time costs
            for off in (True, False):
                gen(prompts[0], off, a.tokens)
        for name, prompts in work.items():
            for streams in (1, a.streams):
                t = {True: 0.0, False: 0.0}
                dt = {True: 0.0, False: 0.0}  # decode seconds, summed over the requests
                dn = {True: 0, False: 0}  # decode tokens
                outs, acc, dr = {}, 0, 0
                for rep in range(a.reps):
                    # the order alternates: the second request of a prompt may resume from the
                    # first one's prefix snapshot (its prefill skipped), so neither side always
                    # gets that
                    for off in ((True, False) if rep % 2 == 0 else (False, True)):
                        res = [None] * streams

                        def one(i, off=off, rep=rep):  # each rep the next prompts of the list
                            res[i] = gen(prompts[(rep * streams + i) % len(prompts)], off, a.tokens)

                        ths = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
                        t0 = time.monotonic()
                        for th in ths:
                            th.start()
                        for th in ths:
                            th.join()
                        t[off] += time.monotonic() - t0
                        dt[off] += sum(r[2] for r in res)
                        dn[off] += sum(r[3] for r in res)
                        outs.setdefault(off, []).extend(r[0] for r in res)  # every request
                        if not off:
                            acc += sum(r[1].usage.accepted_tokens for r in res)
                            dr += sum(r[1].usage.draft_tokens for r in res)
                n = a.reps * streams * a.tokens
                # no decode to time when every request fits its first message (--tokens 1)
                dec = ((dn[False] / dt[False]) / (dn[True] / dt[True])
                       if min(dn.values()) and min(dt.values()) > 0 else float("nan"))
                print("%-12s %7d  %9.1f  %8.1f  %5.2f  %6.2f  %-4s  %d/%d" %
                      (name, streams, n / t[True], n / t[False], t[True] / t[False], dec,
                       outs[True] == outs[False], acc, dr))
    finally:
        d.stop()
    import re
    m = re.findall(r"spec pauses \d+ paused steps \d+", getattr(d, "exit_logs", "") or "")
    if m:
        print("gain check: " + m[-1])


if __name__ == "__main__":
    main()
