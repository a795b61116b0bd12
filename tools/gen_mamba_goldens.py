#!/usr/bin/env python3
"""Generate golden fixtures for the Mamba (v1) engine from Hugging Face transformers.

Builds tiny random-weight MambaForCausalLM checkpoints (fp32), saves them with
save_pretrained(safe_serialization=True) and writes full-forward fp32 logits for a
few token sequences plus a greedy continuation. See tools/README.md ("Mamba goldens")
for the case list and the file format.

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_mamba_goldens.py [--out tests/golden/mamba] [--cases a,b,...]
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
from transformers import GenerationConfig, MambaConfig, MambaForCausalLM

SEQ_LENGTHS = (1, 3, 8, 17, 24)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

# Fields common to every case (the spec's tiny config).
BASE = dict(
    architectures=["MambaForCausalLM"],
    vocab_size=256,
    hidden_size=32,
    state_size=8,
    num_hidden_layers=2,
    expand=2,
    intermediate_size=64,
    conv_kernel=4,
    time_step_rank=4,
    use_bias=True,
    use_conv_bias=True,
    layer_norm_epsilon=1e-5,
    residual_in_fp32=True,
    hidden_act="silu",
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=0,
)

# name -> (seed, config overrides, extras)
CASES = {
    # Spec's tiny config: biases on in/out proj and conv, tied head.
    "tiny_bias_tied": (1001, {}, {"bf16_copy": True, "f16_copy": True}),
    # Untied head (lm_head.weight saved), no in/out proj bias, 3 layers.
    "tiny_nobias_untied": (
        1002,
        dict(use_bias=False, tie_word_embeddings=False, num_hidden_layers=3),
        {"sharded_copy": True},
    ),
    # Odd sizes everywhere; intermediate_size (72) != expand*hidden (111): the loader must
    # read intermediate_size from config.json. No conv bias, K=3, eps 1e-6.
    "odd_sizes": (
        1003,
        dict(
            vocab_size=263,
            hidden_size=37,
            expand=3,
            intermediate_size=72,
            state_size=5,
            conv_kernel=3,
            time_step_rank=3,
            use_bias=True,
            use_conv_bias=False,
            layer_norm_epsilon=1e-6,
            num_hidden_layers=2,
        ),
        {},
    ),
    # Numerical edges: K=2 (one-column conv window), expand 1, dt rank 1, N=16 > H/2,
    # untied WITH biases, residual_in_fp32 false, eps 1e-3, dt_proj.bias pushed past the
    # softplus threshold (20) on some channels and to ~100 on two (naive log(1+exp(x))
    # overflows float32 there), very negative dt on others, A_log spread over [-4, 3]
    # (dA underflows to 0 for some channel/state pairs).
    "edge_numerics": (
        1004,
        dict(
            vocab_size=96,
            hidden_size=24,
            expand=1,
            intermediate_size=24,
            state_size=16,
            conv_kernel=2,
            time_step_rank=1,
            use_bias=True,
            use_conv_bias=True,
            tie_word_embeddings=False,
            residual_in_fp32=False,
            layer_norm_epsilon=1e-3,
            num_hidden_layers=2,
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
    config = MambaConfig(**cfg)
    assert config.intermediate_size == cfg["intermediate_size"], (name, config.intermediate_size)
    model = MambaForCausalLM(config).eval()

    # Perturb with a dedicated generator so the noise does not depend on init internals.
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
            elif pname.endswith("A_log"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        if extras.get("edge_numerics"):
            for layer in model.backbone.layers:
                mx = layer.mixer
                I, N = mx.A_log.shape
                mx.A_log.copy_(torch.rand((I, N), generator=gen) * 7.0 - 4.0)
                b = mx.dt_proj.bias
                # channels 0..5: around/above softplus threshold; 6,7: ~100; 8..11: very negative
                b[0:6] = 18.0 + torch.rand(6, generator=gen) * 8.0
                b[6:8] = 90.0 + torch.rand(2, generator=gen) * 10.0
                b[8:12] = -15.0 + torch.rand(4, generator=gen) * 2.0
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
        delta = out[..., : mx.time_step_rank]
        pre[idx] = delta @ mx.dt_proj.weight.T + mx.dt_proj.bias

    hs = [
        l.mixer.x_proj.register_forward_hook(lambda m, i, o, idx=k: hook(m, i, o, idx))
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
        f"   V={V} H={cfg.hidden_size} I={cfg.intermediate_size} N={cfg.state_size} L={cfg.num_hidden_layers} "
        f"K={cfg.conv_kernel} R={cfg.time_step_rank} use_bias={cfg.use_bias} conv_bias={cfg.use_conv_bias} "
        f"tied={cfg.tie_word_embeddings} eps={cfg.layer_norm_epsilon} residual_in_fp32={cfg.residual_in_fp32}"
    )
    cdir = os.path.join(outdir, name)
    save(model, cdir)

    # Check the saved checkpoint reloads and gives the same logits as the in-memory model.
    reloaded = MambaForCausalLM.from_pretrained(cdir, dtype=torch.float32).eval()

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

    # Weight-only copies.
    if extras.get("sharded_copy"):
        sdir = os.path.join(outdir, name + "_sharded")
        save(model, sdir, max_shard_size="50KB")
        shards = sorted(f for f in os.listdir(sdir) if f.endswith(".safetensors"))
        log(f"   sharded copy: {len(shards)} shards")
        ms = MambaForCausalLM.from_pretrained(sdir, dtype=torch.float32).eval()
        lg_s = full_logits(ms, toks_long)
        log(f"   sharded reload identical: {torch.equal(lg_s, lg_long)}")
    for key, dt, suffix in (("bf16_copy", torch.bfloat16, "_bf16"), ("f16_copy", torch.float16, "_f16")):
        if extras.get(key):
            m16 = copy.deepcopy(model).to(dt)
            save(m16, os.path.join(outdir, name + suffix))
            with torch.no_grad():
                lg16 = m16(input_ids=torch.tensor([toks_long]), use_cache=False).logits[0].float()
            log(f"   {suffix[1:]} copy: HF {suffix[1:]} forward vs fp32 logits (len24): "
                f"max|d| = {float((lg16 - lg_long).abs().max()):.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/golden/mamba")
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
