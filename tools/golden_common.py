"""What the golden generators (tools/gen_*_goldens.py) share: the fixture format and the steps
every family runs the same way.

A fixture directory holds the checkpoint (save_pretrained, safetensors), one raw little-endian
fp32 file of full-forward logits per token sequence (lenT.f32, T x V), greedy.f32 (the full
forward of prompt + generated) and goldens.json naming them. Logits always come from a full
forward with use_cache=False; transformers' cached decode is only cross-checked and logged.
The generators must stay byte-for-byte reproducible: nothing here draws random numbers except
from the generator it is handed, in the order the callers always drew them.
"""

import argparse
import copy
import json
import os
import re
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import GenerationConfig


def log(*a):
    print(*a, flush=True)


@torch.no_grad()
def full_logits(model, tokens):
    ids = torch.tensor([tokens], dtype=torch.long)
    out = model(input_ids=ids, use_cache=False)
    lg = out.logits[0]
    assert lg.dtype == torch.float32
    return lg.detach().clone()


def write_f32(path, t):
    arr = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    with open(path, "wb") as f:
        f.write(arr.tobytes())


def dump_json(path, obj):
    s = json.dumps(obj, indent=2)
    # put lists of ints on one line
    s = re.sub(r"\[\s+([-\d,\s]+?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", s)
    with open(path, "w") as f:
        f.write(s + "\n")


def write_goldens_json(cdir, V, sequences, prompt, generated, logits="greedy.f32", reference=None,
                       extra=None):
    """goldens.json (keys in this order: the C tests do not care, the bytes do)."""
    doc = {"transformers": transformers.__version__, "torch": torch.__version__, "vocab_size": V}
    if reference is not None:
        doc["reference"] = reference
    doc["sequences"] = sequences
    doc["greedy"] = {"prompt": prompt, "generated": generated, "logits": logits}
    doc.update(extra or {})
    dump_json(os.path.join(cdir, "goldens.json"), doc)


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def save(model, path, **kw):
    fresh_dir(path)
    model.save_pretrained(path, safe_serialization=True, **kw)


def write_sequences(model, reloaded, cdir, V, lengths, gen, name):
    """One random sequence per length (tokens from gen), its logits written as lenT.f32.
    Returns (sequences for goldens.json, {T: (tokens, logits)}, max |logit|, max |d| of the
    reloaded checkpoint against the in-memory model, which is the reference)."""
    sequences = []
    seq_logits = {}
    max_abs = 0.0
    reload_d = 0.0
    for T in lengths:
        toks = torch.randint(0, V, (T,), generator=gen).tolist()
        lg = full_logits(model, toks)
        assert lg.shape == (T, V)
        assert torch.isfinite(lg).all(), (name, T)
        reload_d = max(reload_d, float((lg - full_logits(reloaded, toks)).abs().max()))
        fname = f"len{T}.f32"
        write_f32(os.path.join(cdir, fname), lg)
        sequences.append({"name": f"len{T}", "tokens": toks, "logits": fname})
        seq_logits[T] = (toks, lg)
        max_abs = max(max_abs, float(lg.abs().max()))
    log(f"   save/reload round trip: max|d| = {reload_d:.3e}")
    return sequences, seq_logits, max_abs, reload_d


def log_self_consistency(model, toks_long, lg_long, ks):
    """Prefixes of the longest sequence against its full-forward rows (logged)."""
    worst = 0.0
    for k in ks:
        worst = max(worst, float((full_logits(model, toks_long[:k]) - lg_long[:k]).abs().max()))
    log(f"   self-consistency (prefix k of len{len(toks_long)} vs rows 0..k-1): max|d| = {worst:.3e}")


@torch.no_grad()
def log_dt_range(model, tokens, proj, dt_of):
    """Mamba families: the range of the pre-softplus dt per layer, to show the softplus threshold
    (20) is crossed. `proj` names the mixer's projection whose output dt is computed from;
    dt_of(mixer, that output) gives the pre-softplus dt."""
    pre = {}
    def hook(k, mx):
        return lambda mod, inp, out: pre.__setitem__(k, dt_of(mx, out))

    hs = [getattr(l.mixer, proj).register_forward_hook(hook(k, l.mixer)) for k, l in enumerate(model.backbone.layers)]
    full_logits(model, tokens)
    for h in hs:
        h.remove()
    for k, v in sorted(pre.items()):
        n20 = int((v > 20).sum())
        log(f"   layer {k}: pre-softplus dt in [{float(v.min()):.2f}, {float(v.max()):.2f}], {n20} values > 20")


@torch.no_grad()
def greedy_full_forward(model, prompt, n_new):
    """Greedy by one full forward per step: (generated ids, last-row logits of each step, the
    smallest top1-top2 gap seen)."""
    seq = list(prompt)
    step_rows = []
    gaps = []
    for _ in range(n_new):
        lg = full_logits(model, seq)
        last = lg[-1]
        step_rows.append(last)
        top2 = torch.topk(last, 2).values
        gaps.append(float(top2[0] - top2[1]))
        seq.append(int(torch.argmax(last)))
    return seq[len(prompt):], torch.stack(step_rows), min(gaps)


@torch.no_grad()
def greedy_generate(model, prompt, n_new):
    """transformers' own greedy (cached decode): (generated ids, logits per step)."""
    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=n_new,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    ids = torch.tensor([prompt], dtype=torch.long)
    # The model's own generation_config (eos_token_id from config.json) is merged into gc;
    # clear it temporarily so generation does not stop at that token.
    saved = copy.deepcopy(model.generation_config)
    model.generation_config.eos_token_id = None
    try:
        out = model.generate(ids, generation_config=gc)
    finally:
        model.generation_config = saved
    gen = out.sequences[0, len(prompt):].tolist()
    logits = torch.stack([l[0].float() for l in out.logits])
    return gen, logits


def write_greedy(model, cdir, V, gen, prompt_len, n_new):
    """A random prompt (from gen), its greedy continuation by full forwards, and greedy.f32 (the
    full forward of prompt + continuation). Returns (prompt, generated, greedy logits)."""
    prompt = torch.randint(0, V, (prompt_len,), generator=gen).tolist()
    g_ff, step_rows, min_gap = greedy_full_forward(model, prompt, n_new)
    full = prompt + g_ff
    lg_g = full_logits(model, full)
    assert lg_g.shape == (len(full), V)
    d_steps = float((step_rows - lg_g[prompt_len - 1 : len(full) - 1]).abs().max())
    log(f"   greedy: step last-rows vs final {len(full)}-token forward: max|d| = {d_steps:.3e}; "
        f"min top1-top2 gap {min_gap:.4f}")
    write_f32(os.path.join(cdir, "greedy.f32"), lg_g)
    return prompt, g_ff, lg_g


def log_generate_agrees(model, prompt, g_ff, lg_g, n_new, note=""):
    """Cross-checks transformers' cached greedy against the full-forward one (logged only)."""
    try:
        g_hf, hf_logits = greedy_generate(model, prompt, n_new)
    except Exception as e:  # noqa: BLE001 - only a cross-check of HF's own cache path
        log(f"   generate() fails ({type(e).__name__}: {e}); cross-check skipped")
        return
    p = len(prompt)
    n = min(len(hf_logits), n_new)
    d_hf = float((hf_logits[:n] - lg_g[p - 1 : p - 1 + n]).abs().max())
    log(f"   generate(do_sample=False) agrees with full-forward greedy: {g_hf == g_ff}; "
        f"HF cached-decode logits vs full forward{note}: max|d| = {d_hf:.3e}")
    if g_hf != g_ff:
        log(f"     full-forward: {g_ff}\n     generate:     {g_hf}")


def log_half_forward(m16, toks_long, lg_long, kind):
    """HF's own half-precision forward against the fp32 logits (logged only: it rounds
    activations too, which the engine does not)."""
    with torch.no_grad():
        lg16 = m16(input_ids=torch.tensor([toks_long]), use_cache=False).logits[0].float()
    log(f"   {kind} copy: HF {kind} forward vs fp32 logits (len{len(toks_long)}): "
        f"max|d| = {float((lg16 - lg_long).abs().max()):.3e}")


def write_rounded_weight_goldens(up, hdir, kind, V, seq_logits, lengths, prompt, g_ff, n_new):
    """Goldens of a half-precision copy in hdir. The C engine computes in fp32 from the rounded
    weights, so the exact reference is that model upcast to fp32 (`up`): logits of the given
    lengths' sequences and greedy ids (no greedy logits)."""
    hseqs = []
    worst = 0.0
    for T in lengths:
        toks, lg32 = seq_logits[T]
        lg = full_logits(up, toks)
        worst = max(worst, float((lg - lg32).abs().max()))
        write_f32(os.path.join(hdir, f"len{T}.f32"), lg)
        hseqs.append({"name": f"len{T}", "tokens": toks, "logits": f"len{T}.f32"})
    g_up, _, gap_up = greedy_full_forward(up, prompt, n_new)
    log(f"   {kind} rounded-weight fp32 forward vs fp32 logits: max|d| = {worst:.3e}; "
        f"greedy same as fp32: {g_up == g_ff}; min top1-top2 gap {gap_up:.4f}")
    write_goldens_json(hdir, V, hseqs, prompt, g_up, logits=None,
                       reference=f"the {kind} weights upcast to fp32, fp32 forward")


def write_case(model, cls, cdir, V, seed, name, lengths, prompt_len, n_new, router_margin=None,
               margin_of="logit"):
    """What every family's run_case does once its model is built: save it to cdir, reload it
    with cls (it must reproduce the model), one random sequence per length (generator seeded
    seed + 7000), the self-consistency log, the router margin where router_margin is given
    (logged as the gap of `margin_of`), the greedy continuation, goldens.json. Returns
    (seq_logits, prompt, generated) for further fixtures of the case."""
    save(model, cdir)
    reloaded = cls.from_pretrained(cdir, dtype=torch.float32).eval()

    gen = torch.Generator().manual_seed(seed + 7000)
    sequences, seq_logits, max_abs, reload_d = write_sequences(model, reloaded, cdir, V, lengths, gen, name)
    assert reload_d < 1e-5, "the saved checkpoint does not reproduce the model"
    toks_long, lg_long = seq_logits[max(lengths)]
    log_self_consistency(model, toks_long, lg_long, (1, 2, 3, 5, 8, 13, 21, 36))
    if router_margin is not None:
        m = router_margin(model, toks_long)
        if m is not None:
            log(f"   router: smallest k-th vs (k+1)-th {margin_of} gap {m:.3e}")

    prompt, g_ff, lg_g = write_greedy(model, cdir, V, gen, prompt_len, n_new)
    log_generate_agrees(model, prompt, g_ff, lg_g, n_new)
    log(f"   max |logit| = {max(max_abs, float(lg_g.abs().max())):.4f}")
    write_goldens_json(cdir, V, sequences, prompt, g_ff)
    return seq_logits, prompt, g_ff


def main(doc, default_out, cases, run_case):
    """The generators' command line: --out DIR, --cases a,b (default all), in a deterministic
    single-threaded torch."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--cases", default=",".join(cases), help="comma-separated subset of: " + ", ".join(cases))
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass

    log(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    os.makedirs(args.out, exist_ok=True)
    for name in args.cases.split(","):
        name = name.strip()
        if name not in cases:
            sys.exit(f"unknown case {name!r}; known: {', '.join(cases)}")
        run_case(args.out, name)
