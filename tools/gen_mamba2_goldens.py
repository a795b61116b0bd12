#!/usr/bin/env python3
"""Generate golden fixtures for the Mamba2 engine from Hugging Face transformers.

Builds tiny random-weight Mamba2ForCausalLM checkpoints (fp32), saves them with
save_pretrained(safe_serialization=True) and writes full-forward fp32 logits for a
few token sequences plus a greedy continuation (full forward at every step, never HF's
cache API). Same file format as tools/gen_mamba_goldens.py; see tools/README.md
("Mamba2 goldens").

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_mamba2_goldens.py [--out tests/golden/mamba2] [--cases a,b,...]
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
from transformers import GenerationConfig, Mamba2Config, Mamba2ForCausalLM

SEQ_LENGTHS = (1, 3, 8, 17, 24)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

# The spec's tiny config (groups > 1, several SSD chunks, untied head).
BASE = dict(
    architectures=["Mamba2ForCausalLM"],
    vocab_size=256,
    hidden_size=32,
    expand=2,
    num_heads=8,
    head_dim=8,
    n_groups=2,
    state_size=16,
    num_hidden_layers=2,
    conv_kernel=4,
    chunk_size=8,
    use_bias=False,
    use_conv_bias=True,
    layer_norm_epsilon=1e-5,
    residual_in_fp32=True,
    hidden_act="silu",
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=0,
)

# name -> (seed, config overrides, extras)
CASES = {
    # Spec's tiny config: G=2 (4 heads per group), no in/out bias, untied; chunk 8 so lengths
    # 17 and 24 run the inter-chunk recurrence (17 with padding).
    "tiny_g2_untied": (2001, {}, {"bf16_copy": True}),
    # Spec's variant B: one group, in/out proj biases, tied head, 3 layers.
    "tiny_g1_bias_tied": (
        2002,
        dict(n_groups=1, use_bias=True, tie_word_embeddings=True, num_hidden_layers=3),
        {},
    ),
    # Odd sizes: V=131, H=35, expand 3 -> I=105 = 15 heads x 7; G=3 (5 heads per group,
    # gated-norm groups of 35), N=5, K=3, no conv bias, tied with biases, eps 1e-6, chunk 5,
    # and a finite time_step_limit that clamps dt from both sides. (HF's cached decode path
    # does not apply time_step_limit; the full forward, which the goldens use, does.)
    "odd_sizes": (
        2003,
        dict(
            vocab_size=131,
            hidden_size=35,
            expand=3,
            num_heads=15,
            head_dim=7,
            n_groups=3,
            state_size=5,
            conv_kernel=3,
            chunk_size=5,
            use_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=True,
            layer_norm_epsilon=1e-6,
            time_step_limit=(0.004, 0.06),
        ),
        {},
    ),
    # Numerical edges: one group per head (G=NH=6), K=2 (one-row conv window), expand 1,
    # N=16 > H/2, residual_in_fp32 false, eps 1e-3, dt_bias past the softplus threshold (20)
    # on some heads and very negative on others, A_log spread over [-4, 3].
    "edge_numerics": (
        2004,
        dict(
            vocab_size=96,
            hidden_size=24,
            expand=1,
            num_heads=6,
            head_dim=4,
            n_groups=6,
            state_size=16,
            conv_kernel=2,
            chunk_size=16,
            use_bias=True,
            residual_in_fp32=False,
            layer_norm_epsilon=1e-3,
        ),
        {"edge_numerics": True},
    ),
}


def log(*a):
    print(*a, flush=True)


def build_model(name, seed, overrides, extras):
    cfg = dict(BASE)
    cfg.update(overrides)
    torch.manual_seed(seed)
    config = Mamba2Config(**cfg)
    model = Mamba2ForCausalLM(config).eval()

    # Perturb with a dedicated generator so the noise does not depend on init internals.
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        if extras.get("edge_numerics"):
            for layer in model.backbone.layers:
                mx = layer.mixer
                NH = mx.A_log.shape[0]
                mx.A_log.copy_(torch.rand(NH, generator=gen) * 7.0 - 4.0)
                b = mx.dt_bias
                b[0:2] = 18.0 + torch.rand(2, generator=gen) * 8.0  # around/above threshold 20
                b[2:4] = -15.0 + torch.rand(2, generator=gen) * 2.0
    return model


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


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def save(model, path, **kw):
    fresh_dir(path)
    model.save_pretrained(path, safe_serialization=True, **kw)


@torch.no_grad()
def log_dt_range(model, tokens):
    """Print the range of the pre-softplus dt per layer (to show the threshold is crossed)."""
    pre = {}

    def hook(mod, inp, out, idx):
        mx = model.backbone.layers[idx].mixer
        pre[idx] = out[..., -mx.num_heads :] + mx.dt_bias

    hs = [
        l.mixer.in_proj.register_forward_hook(lambda m, i, o, idx=k: hook(m, i, o, idx))
        for k, l in enumerate(model.backbone.layers)
    ]
    full_logits(model, tokens)
    for h in hs:
        h.remove()
    for k, v in sorted(pre.items()):
        n20 = int((v > 20).sum())
        log(f"   layer {k}: pre-softplus dt in [{float(v.min()):.2f}, {float(v.max()):.2f}], {n20} values > 20")


@torch.no_grad()
def greedy_full_forward(model, prompt, n_new):
    seq = list(prompt)
    step_rows = []  # last-row logits observed at each step
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
    # The model's own generation_config (eos_token_id=0 from config.json) is merged into gc;
    # clear it temporarily so generation does not stop at token 0.
    saved = copy.deepcopy(model.generation_config)
    model.generation_config.eos_token_id = None
    try:
        out = model.generate(ids, generation_config=gc)
    finally:
        model.generation_config = saved
    gen = out.sequences[0, len(prompt):].tolist()
    logits = torch.stack([l[0].float() for l in out.logits])
    return gen, logits


def run_case(outdir, name):
    seed, overrides, extras = CASES[name]
    log(f"== {name} (seed {seed})")
    model = build_model(name, seed, overrides, extras)
    cfg = model.config
    V = cfg.vocab_size
    log(
        f"   V={V} H={cfg.hidden_size} NH={cfg.num_heads} P={cfg.head_dim} G={cfg.n_groups} N={cfg.state_size} "
        f"L={cfg.num_hidden_layers} K={cfg.conv_kernel} chunk={cfg.chunk_size} use_bias={cfg.use_bias} "
        f"conv_bias={cfg.use_conv_bias} tied={cfg.tie_word_embeddings} eps={cfg.layer_norm_epsilon} "
        f"residual_in_fp32={cfg.residual_in_fp32} time_step_limit={tuple(cfg.time_step_limit)}"
    )
    cdir = os.path.join(outdir, name)
    save(model, cdir)

    # Check the saved checkpoint reloads and gives the same logits as the in-memory model.
    reloaded = Mamba2ForCausalLM.from_pretrained(cdir, dtype=torch.float32).eval()

    gen = torch.Generator().manual_seed(seed + 7000)
    sequences = []
    seq_logits = {}
    max_abs = 0.0
    reload_d = 0.0
    for T in SEQ_LENGTHS:
        toks = torch.randint(0, V, (T,), generator=gen).tolist()
        lg = full_logits(model, toks)
        assert lg.shape == (T, V)
        reload_d = max(reload_d, float((lg - full_logits(reloaded, toks)).abs().max()))
        fname = f"len{T}.f32"
        write_f32(os.path.join(cdir, fname), lg)
        sequences.append({"name": f"len{T}", "tokens": toks, "logits": fname})
        seq_logits[T] = (toks, lg)
        max_abs = max(max_abs, float(lg.abs().max()))
        assert torch.isfinite(lg).all(), (name, T)

    log(f"   save/reload round trip: max|d| = {reload_d:.3e} (in-memory model is the reference)")
    if extras.get("edge_numerics"):
        log_dt_range(model, seq_logits[max(SEQ_LENGTHS)][0])

    # Self-consistency: prefixes of the longest sequence vs its full-forward rows.
    toks_long, lg_long = seq_logits[max(SEQ_LENGTHS)]
    worst = 0.0
    for k in (1, 2, 3, 4, 5, 8, 13, 17, 23):
        lg_k = full_logits(model, toks_long[:k])
        worst = max(worst, float((lg_k - lg_long[:k]).abs().max()))
    log(f"   self-consistency (prefix k of len24 vs rows 0..k-1): max|d| = {worst:.3e}")

    # Greedy continuation.
    prompt = torch.randint(0, V, (GREEDY_PROMPT_LEN,), generator=gen).tolist()
    g_ff, step_rows, min_gap = greedy_full_forward(model, prompt, GREEDY_NEW_TOKENS)
    full = prompt + g_ff
    lg_g = full_logits(model, full)
    assert lg_g.shape == (len(full), V)
    max_abs = max(max_abs, float(lg_g.abs().max()))
    d_steps = float((step_rows - lg_g[GREEDY_PROMPT_LEN - 1 : len(full) - 1]).abs().max())
    log(f"   greedy: step last-rows vs final 40-token forward: max|d| = {d_steps:.3e}; min top1-top2 gap {min_gap:.4f}")
    write_f32(os.path.join(cdir, "greedy.f32"), lg_g)

    g_hf, hf_logits = greedy_generate(model, prompt, GREEDY_NEW_TOKENS)
    agree = g_hf == g_ff
    n = min(len(hf_logits), GREEDY_NEW_TOKENS)
    d_hf = float((hf_logits[:n] - lg_g[GREEDY_PROMPT_LEN - 1 : GREEDY_PROMPT_LEN - 1 + n]).abs().max())
    log(f"   generate(do_sample=False) agrees with full-forward greedy: {agree}; "
        f"HF cached-decode logits vs full forward: max|d| = {d_hf:.3e}")
    if not agree:
        log(f"     full-forward: {g_ff}\n     generate:     {g_hf}")
    log(f"   max |logit| = {max_abs:.4f}")

    dump_json(
        os.path.join(cdir, "goldens.json"),
        {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "vocab_size": V,
            "sequences": sequences,
            "greedy": {"prompt": prompt, "generated": g_ff, "logits": "greedy.f32"},
        },
    )

    # Half-precision copies. The C engine computes in fp32 from the rounded weights, so the
    # exact reference for a copy is that same model upcast to fp32 ("rounded-weight" goldens,
    # written next to it for len17/len24 and a greedy run); HF's own bf16 forward rounds
    # activations too and is only logged.
    for key, dt, suffix in (("bf16_copy", torch.bfloat16, "_bf16"), ("f16_copy", torch.float16, "_f16")):
        if not extras.get(key):
            continue
        hdir = os.path.join(outdir, name + suffix)
        m16 = copy.deepcopy(model).to(dt)
        save(m16, hdir)
        with torch.no_grad():
            lg16 = m16(input_ids=torch.tensor([toks_long]), use_cache=False).logits[0].float()
        log(f"   {suffix[1:]} copy: HF {suffix[1:]} forward vs fp32 logits (len24): "
            f"max|d| = {float((lg16 - lg_long).abs().max()):.3e}")
        up = copy.deepcopy(m16).float().eval()
        hseqs = []
        worst = 0.0
        for T in (17, 24):
            toks, lg32 = seq_logits[T]
            lg = full_logits(up, toks)
            worst = max(worst, float((lg - lg32).abs().max()))
            write_f32(os.path.join(hdir, f"len{T}.f32"), lg)
            hseqs.append({"name": f"len{T}", "tokens": toks, "logits": f"len{T}.f32"})
        g_up, _, gap_up = greedy_full_forward(up, prompt, GREEDY_NEW_TOKENS)
        log(f"   {suffix[1:]} rounded-weight fp32 forward vs fp32 logits: max|d| = {worst:.3e}; "
            f"greedy same as fp32: {g_up == g_ff}; min top1-top2 gap {gap_up:.4f}")
        dump_json(
            os.path.join(hdir, "goldens.json"),
            {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "vocab_size": V,
                "reference": f"the {suffix[1:]} weights upcast to fp32, fp32 forward",
                "sequences": hseqs,
                "greedy": {"prompt": prompt, "generated": g_up, "logits": None},
            },
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/golden/mamba2")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
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
        if name not in CASES:
            sys.exit(f"unknown case {name!r}; known: {', '.join(CASES)}")
        run_case(args.out, name)


if __name__ == "__main__":
    main()
