#!/usr/bin/env python3
"""Single-thread encode throughput of Hugging Face `tokenizers` on the same documents that
bench/tok_bench builds (see its header), for a same-run comparison with the C tokenizer.

Usage: /opt/rcdvenv/bin/python tools/bench_hf_tokenizer.py [TOKENIZER_DIR]
           [--corpus tests/golden/tokenizer/corpus.bin | --text FILE] [--group 20] [--min-mb 8]

Prints encode_batch throughput with parallelism off (HF's fastest single-thread path), the
same for a Python loop of encode() calls, and the time of one 1 MB prompt.
"""
import os

# Must be set before tokenizers is imported: one thread, no rayon pool.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402


def read_units(path, is_corpus):
    data = open(path, "rb").read()
    if not is_corpus:
        return [line.decode("utf-8") for line in data.splitlines(keepends=True)]
    assert data[:8] == b"RCDTOKC1"
    (count,) = struct.unpack("<I", data[8:12])
    p, out = 12, []
    for _ in range(count):
        n = shift = 0
        while True:
            b = data[p]
            p += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(data[p:p + n].decode("utf-8"))
        p += n
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer", nargs="?",
                    default=os.path.join(root, "tests/golden/tokenizer/neox"))
    ap.add_argument("--corpus", default=os.path.join(root, "tests/golden/tokenizer/corpus.bin"))
    ap.add_argument("--text")
    ap.add_argument("--group", type=int)
    ap.add_argument("--min-mb", type=int, default=8)
    a = ap.parse_args()
    is_corpus = a.text is None
    units = read_units(a.corpus if is_corpus else a.text, is_corpus)
    group = a.group or (20 if is_corpus else 32)
    sep = "\n" if is_corpus else ""
    base = [sep.join(units[i:i + group]) for i in range(0, len(units), group)]
    docs, total = [], 0
    limit = a.min_mb << 20
    while total < limit or not docs:
        for d in base:
            if total >= limit and docs:
                break
            docs.append(d)
            total += len(d.encode("utf-8"))
    path = a.tokenizer
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tok = Tokenizer.from_file(path)

    tok.encode_batch(base, add_special_tokens=False)  # warm-up
    dt_batch = dc_batch = dt_loop = dc_loop = 1e9  # best of 3 passes, wall and CPU
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        encs = tok.encode_batch(docs, add_special_tokens=False)
        dt_batch = min(dt_batch, time.perf_counter() - t0)
        dc_batch = min(dc_batch, time.process_time() - c0)
        n_tokens = sum(len(e.ids) for e in encs)
        t0, c0 = time.perf_counter(), time.process_time()
        for d in docs:
            tok.encode(d, add_special_tokens=False)
        dt_loop = min(dt_loop, time.perf_counter() - t0)
        dc_loop = min(dc_loop, time.process_time() - c0)

    prompt, size = [], 0
    while size < 1 << 20:  # the documents in order, as tok_bench, cut to 1 MiB
        for d in base:
            prompt.append(d)
            size += len(d.encode("utf-8"))
    b = "".join(prompt).encode("utf-8")[:1 << 20].decode("utf-8", "ignore")
    best = min(_timed(tok, b) for _ in range(3))

    mb = total / 1e6
    print(f"tokenizer {a.tokenizer}")
    print(f"data: {len(docs)} documents, {mb:.2f} MB")
    print(f"HF encode_batch (1 thread): {mb / dt_batch:.2f} MB/s, {n_tokens / dt_batch:.0f} tokens/s"
          f" ({n_tokens} tokens, best of 3: {dt_batch:.3f} s wall)")
    print(f"HF encode_batch by CPU time: {mb / dc_batch:.2f} MB/s, "
          f"{n_tokens / dc_batch:.0f} tokens/s ({dc_batch:.3f} s)")
    print(f"HF encode loop  (1 thread): {mb / dt_loop:.2f} MB/s wall, {mb / dc_loop:.2f} MB/s CPU")
    print(f"HF 1 MB prompt ({len(b.encode('utf-8'))} bytes): {best * 1e3:.1f} ms")


def _timed(tok, text):
    t0 = time.perf_counter()
    tok.encode(text, add_special_tokens=False)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
