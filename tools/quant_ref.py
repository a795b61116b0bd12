#!/usr/bin/env python3
"""Reference quantizer of recurd's --weights q8|q4 (numpy only).

The C quantizer (workers/cpu/quant.c, layout in workers/cpu/kernels_q.h) must produce the
same dequantized weights bit for bit. All arithmetic is IEEE float32, rounding to nearest
even:
  q8: per output row: s = max|w| / 127, q = rint(w / s) in [-127, 127] (s = 0, q = 0 for an
      all-zero row); w ~ q * s.
  q4: per group of 32 columns of a row: s = max|w| / 7, q = clip(rint(w / s), -8, 7);
      w ~ q * s.

  tools/quant_ref.py --fixture DIR   writes DIR/quant_fixture.bin (the C test's fixture):
      "RQF1", int32 rows, int32 cols, float32 W[rows*cols], float32 q8[rows*cols],
      float32 q4[rows*cols] (little-endian): a weight matrix and its dequantized q8 and q4.
"""
import argparse
import os
import struct

import numpy as np

Q4_GROUP = 32


def _quant_block(w, qmax, qmin):
    w = np.asarray(w, dtype=np.float32)
    amax = np.float32(np.max(np.abs(w))) if w.size else np.float32(0)
    s = np.float32(amax / np.float32(qmax))
    if s > 0:
        q = np.rint(w / s).astype(np.float32)
    else:
        q = np.zeros_like(w)
    q = np.clip(q, qmin, qmax) + np.float32(0)  # integers: rint's -0 is 0 (C stores int8)
    return q, s


def dequant(w, fmt):
    """The dequantized float32 matrix (rows x cols) of w in fmt 'q8' or 'q4'."""
    w = np.asarray(w, dtype=np.float32)
    out = np.empty_like(w)
    for r in range(w.shape[0]):
        if fmt == "q8":
            q, s = _quant_block(w[r], 127, -127)
            out[r] = (q * s).astype(np.float32)
        else:
            for k0 in range(0, w.shape[1], Q4_GROUP):
                q, s = _quant_block(w[r, k0:k0 + Q4_GROUP], 7, -8)
                out[r, k0:k0 + Q4_GROUP] = (q * s).astype(np.float32)
    return out


def write_fixture(path):
    rng = np.random.default_rng(19)
    rows, cols = 37, 83  # odd: a partial panel, a partial q4 group, an odd last column
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[3, :] = 0.0  # an all-zero row (s = 0)
    w[5, 40:72] = 0.0  # an all-zero q4 group
    w[7, 10] = 1.5  # an outlier
    w[9, :] = np.float32(0.5) * np.arange(cols, dtype=np.float32) / cols  # ties near .5
    with open(path, "wb") as f:
        f.write(b"RQF1" + struct.pack("<ii", rows, cols))
        for a in (w, dequant(w, "q8"), dequant(w, "q4")):
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixture", required=True, help="directory for quant_fixture.bin")
    a = ap.parse_args()
    os.makedirs(a.fixture, exist_ok=True)
    write_fixture(os.path.join(a.fixture, "quant_fixture.bin"))


if __name__ == "__main__":
    main()
