#!/usr/bin/env python3
"""Pre-quantized checkpoint fixtures (GPTQ and compressed-tensors) for recurd's loader.

Takes the tiny fp32 Mamba golden model (tests/golden/mamba/tiny_nobias_untied), cut to 1
layer with a tied F16 embedding, quantizes its in_proj / out_proj / x_proj (round to nearest)
into each format below and writes, per case, tests/golden/prequant/<case>/:
  config.json, model.safetensors      the pre-quantized checkpoint (quantization_config)
  reference/config.json, reference/model.safetensors
                                      the same model with those matrices stored as the fp32
                                      values the checkpoint dequantizes to (the reference)
dt_proj (4 input columns), the embedding, norms, conv and SSM parameters stay as stored.

References for the dequantized values (fp32 arithmetic, scales converted exactly to fp32):
  GPTQ: AutoGPTQ's / transformers' documented dequantization, written out below with torch
    bit shifts (unpack qweight along the input dim and qzeros along the output dim, low bits
    first; zeros + 1 for checkpoint_format "gptq" (v1), as is for "gptq_v2");
    w = scales[g_idx] * (q - zeros[g_idx]).
  compressed-tensors: the package's own PackedQuantizationCompressor.pack_to_int32 packs, and
    its decompressors (PackedQuantizationCompressor / NaiveQuantizationCompressor
    .decompress) dequantize, given fp32 scales.

Run with /opt/rcdvenv/bin/python tools/gen_prequant_fixtures.py (torch, safetensors,
compressed-tensors from tools/requirements.txt). CI never runs it; the fixtures are committed.
"""
import json
import os
import shutil

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "golden", "mamba", "tiny_nobias_untied")
OUT = os.path.join(ROOT, "tests", "golden", "prequant")
LAYERS = 1
QUANTIZED = ("in_proj", "out_proj", "x_proj")

# name: (method, bits, group (-1 channel), sym, act-order / v2 / ct format)
CASES = {
    "gptq_w4_g32_sym": dict(m="gptq", bits=4, group=32, sym=True),
    "gptq_w4_g32_asym_actorder": dict(m="gptq", bits=4, group=32, sym=False, act=True),
    "gptq_w8_chan_asym": dict(m="gptq", bits=8, group=-1, sym=False),
    "gptq_v2_w4_g32_asym": dict(m="gptq", bits=4, group=32, sym=False, v2=True),
    "ct_pack_w4_g32_sym": dict(m="ct", fmt="pack-quantized", bits=4, group=32, sym=True),
    "ct_pack_w4_g32_asym": dict(m="ct", fmt="pack-quantized", bits=4, group=32, sym=False),
    "ct_pack_w8_chan_asym": dict(m="ct", fmt="pack-quantized", bits=8, group=-1, sym=False),
    "ct_int_w8_chan_sym": dict(m="ct", fmt="int-quantized", bits=8, group=-1, sym=True),
}


def base_model():
    cfg = json.load(open(os.path.join(SRC, "config.json")))
    t = load_file(os.path.join(SRC, "model.safetensors"))
    cfg["num_hidden_layers"] = LAYERS
    cfg["tie_word_embeddings"] = True
    out = {}
    for k, v in t.items():
        if k == "lm_head.weight":
            continue
        if k.startswith("backbone.layers."):
            if int(k.split(".")[2]) >= LAYERS:
                continue
        out[k] = v
    out["backbone.embeddings.weight"] = out["backbone.embeddings.weight"].astype(np.float16)
    return cfg, out


def rtn(w, bits, group, sym, rng, v1):
    """Round to nearest per (row, group): unsigned q in [0, 2^bits - 1], zero z, scale s (f16),
    w ~ s * (q - z). Columns of a group: `cols_of` lists (group -> column indices)."""
    maxq = (1 << bits) - 1
    w = w.astype(np.float32)
    if sym:
        amax = np.abs(w).max(axis=-1, keepdims=True)
        s = np.maximum(2 * amax / maxq, 1e-6)
        z = np.full(s.shape, (maxq + 1) // 2, dtype=np.int64)
    else:
        lo, hi = np.minimum(w.min(axis=-1, keepdims=True), 0), np.maximum(w.max(axis=-1, keepdims=True), 0)
        s = np.maximum((hi - lo) / maxq, 1e-6)
        z = np.clip(np.rint(-lo / s), 1 if v1 else 0, maxq).astype(np.int64)
    s = s.astype(np.float16)
    q = np.clip(np.rint(w / s.astype(np.float32)) + z, 0, maxq).astype(np.int64)
    return q, z[..., 0], s[..., 0]


def pack_rows(v, bits):
    """uint values [n, m] packed along dim 0, low bits first: int32 [ceil(n*bits/32), m]."""
    per = 32 // bits
    n = v.shape[0]
    pad = (-n) % per
    v = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) if pad else v
    v = v.reshape(-1, per, *v.shape[1:]).astype(np.uint64)
    out = np.zeros((v.shape[0],) + v.shape[2:], np.uint64)
    for j in range(per):
        out |= v[:, j] << np.uint64(bits * j)
    return out.astype(np.uint32).view(np.int32)


def gptq_quant(w, c, rng):
    out_f, in_f = w.shape
    gs = c["group"] if c["group"] > 0 else in_f
    G = in_f // gs
    v1 = not c.get("v2")
    if c.get("act"):
        perm = rng.permutation(in_f)
        g_idx = np.empty(in_f, np.int32)
        g_idx[perm] = np.arange(in_f) // gs
    else:
        g_idx = (np.arange(in_f) // gs).astype(np.int32)
    q = np.zeros((out_f, in_f), np.int64)
    zeros = np.zeros((G, out_f), np.int64)
    scales = np.zeros((G, out_f), np.float16)
    for g in range(G):
        cols = np.nonzero(g_idx == g)[0]
        qg, zg, sg = rtn(w[:, cols], c["bits"], gs, c["sym"], rng, v1)
        q[:, cols] = qg
        zeros[g], scales[g] = zg, sg
    stored_z = zeros - 1 if v1 else zeros  # the classic format stores zero - 1
    t = {
        "qweight": pack_rows(q.T.copy(), c["bits"]),  # [in*bits/32, out]
        "qzeros": pack_rows(stored_z.T.copy(), c["bits"]).T.copy(),  # [G, out*bits/32]
        "scales": scales,
        "g_idx": g_idx,
    }
    return t


def gptq_ref(t, c, out_f, in_f):
    """AutoGPTQ's dequantization (qlinear: unpack with shifts, zeros + 1 in v1), in fp32."""
    bits, per = c["bits"], 32 // c["bits"]
    mask = (1 << bits) - 1
    wf = torch.arange(0, 32, bits, dtype=torch.int32)
    qz = torch.from_numpy(t["qzeros"])
    zeros = torch.bitwise_right_shift(qz.unsqueeze(2).expand(-1, -1, per), wf.unsqueeze(0)) & mask
    if not c.get("v2"):
        zeros = zeros + 1
    zeros = zeros.reshape(qz.shape[0], -1)[:, :out_f]
    qw = torch.from_numpy(t["qweight"])
    wq = torch.bitwise_right_shift(qw.unsqueeze(1).expand(-1, per, -1), wf.unsqueeze(-1)) & mask
    wq = wq.reshape(-1, qw.shape[1])[:in_f]
    g_idx = torch.from_numpy(t["g_idx"]).long()
    scales = torch.from_numpy(t["scales"].astype(np.float32))
    w = scales[g_idx] * (wq - zeros[g_idx]).to(torch.float32)  # [in, out]
    return w.T.contiguous().numpy()


def ct_scheme(c):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    wa = QuantizationArgs(num_bits=c["bits"], type="int", symmetric=c["sym"],
                          strategy="group" if c["group"] > 0 else "channel",
                          group_size=c["group"] if c["group"] > 0 else None)
    return QuantizationScheme(targets=["Linear"], weights=wa)


def ct_quant(w, c, rng):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    out_f, in_f = w.shape
    gs = c["group"] if c["group"] > 0 else in_f
    off = 1 << (c["bits"] - 1)
    wg = w.reshape(out_f, in_f // gs, gs)
    q, z, s = rtn(wg, c["bits"], gs, c["sym"], rng, False)  # unsigned; signed = q - off
    qs = (q - off).reshape(out_f, in_f).astype(np.int8)
    zs = (z - off).astype(np.int8)  # [out, G]
    scale = torch.from_numpy(s.astype(np.float32)).to(torch.bfloat16)  # the model's dtype
    # bf16 scale: requantize against the stored scale so q stays the nearest value
    sf = scale.float().numpy()[:, :, None]
    qs = np.clip(np.rint(wg / sf) + (0 if c["sym"] else zs[:, :, None]), -off, off - 1)
    qs = qs.reshape(out_f, in_f).astype(np.int8)
    t = {"weight_scale": scale}
    if c["fmt"] == "pack-quantized":
        t["weight_packed"] = pack_to_int32(torch.from_numpy(qs), c["bits"])
        t["weight_shape"] = torch.tensor([out_f, in_f])
        if not c["sym"]:
            t["weight_zero_point"] = pack_to_int32(torch.from_numpy(zs), c["bits"], packed_dim=0)
    else:
        t["weight"] = torch.from_numpy(qs)
        if not c["sym"]:
            t["weight_zero_point"] = torch.from_numpy(zs)
    return t


def ct_ref(t, c):
    from compressed_tensors.compressors.naive_quantized.base import NaiveQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    sd = dict(t)
    sd["weight_scale"] = t["weight_scale"].float()  # fp32 arithmetic
    comp = PackedQuantizationCompressor if c["fmt"] == "pack-quantized" else NaiveQuantizationCompressor
    return comp.decompress(sd, ct_scheme(c))["weight"].float().numpy()


def qconfig(c):
    if c["m"] == "gptq":
        return {"quant_method": "gptq", "bits": c["bits"], "group_size": c["group"],
                "desc_act": bool(c.get("act")), "sym": c["sym"], "true_sequential": True,
                "damp_percent": 0.01, "static_groups": False,
                "checkpoint_format": "gptq_v2" if c.get("v2") else "gptq"}
    w = {"num_bits": c["bits"], "type": "int", "symmetric": c["sym"],
         "strategy": "group" if c["group"] > 0 else "channel",
         "group_size": c["group"] if c["group"] > 0 else None, "dynamic": False,
         "actorder": None, "observer": "minmax", "block_structure": None}
    return {"quant_method": "compressed-tensors", "format": c["fmt"],
            "quantization_status": "compressed", "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {},
            "ignore": ["lm_head"] + [f"backbone.layers.{i}.mixer.dt_proj" for i in range(LAYERS)],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w,
                                          "input_activations": None,
                                          "output_activations": None}}}


def main():
    cfg, base = base_model()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for ci, (name, c) in enumerate(CASES.items()):
        rng = np.random.default_rng(1000 + ci)
        qt, ref = {}, {}
        for k, v in base.items():
            parts = k.split(".")
            if len(parts) == 6 and parts[4] in QUANTIZED and parts[5] == "weight":
                pre = k[: -len(".weight")]
                if c["m"] == "gptq":
                    t = gptq_quant(v, c, rng)
                    ref[k] = gptq_ref(t, c, *v.shape).astype(np.float32)
                else:
                    t = ct_quant(v, c, rng)
                    ref[k] = ct_ref(t, c).astype(np.float32)
                for s, x in t.items():
                    qt[f"{pre}.{s}"] = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
            else:
                qt[k] = torch.from_numpy(v)
                ref[k] = v
        d = os.path.join(OUT, name)
        os.makedirs(os.path.join(d, "reference"))
        qcfg = dict(cfg, quantization_config=qconfig(c))
        json.dump(qcfg, open(os.path.join(d, "config.json"), "w"), indent=2)
        json.dump(cfg, open(os.path.join(d, "reference", "config.json"), "w"), indent=2)
        save_torch({k: v.contiguous() for k, v in qt.items()}, os.path.join(d, "model.safetensors"))
        save_file(ref, os.path.join(d, "reference", "model.safetensors"))
        print(name, os.path.getsize(os.path.join(d, "model.safetensors")))


if __name__ == "__main__":
    main()
