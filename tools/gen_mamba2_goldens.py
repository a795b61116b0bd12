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

import copy
import os

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

import golden_common as gc
from golden_common import log, save

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
    sequences, seq_logits, max_abs, _ = gc.write_sequences(model, reloaded, cdir, V, SEQ_LENGTHS, gen, name)
    if extras.get("edge_numerics"):
        gc.log_dt_range(model, seq_logits[max(SEQ_LENGTHS)][0], "in_proj",
                        lambda mx, out: out[..., -mx.num_heads :] + mx.dt_bias)
    toks_long, lg_long = seq_logits[max(SEQ_LENGTHS)]
    gc.log_self_consistency(model, toks_long, lg_long, (1, 2, 3, 4, 5, 8, 13, 17, 23))

    prompt, g_ff, lg_g = gc.write_greedy(model, cdir, V, gen, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS)
    gc.log_generate_agrees(model, prompt, g_ff, lg_g, GREEDY_NEW_TOKENS)
    log(f"   max |logit| = {max(max_abs, float(lg_g.abs().max())):.4f}")
    gc.write_goldens_json(cdir, V, sequences, prompt, g_ff)

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
        gc.log_half_forward(m16, toks_long, lg_long, suffix[1:])
        up = copy.deepcopy(m16).float().eval()
        gc.write_rounded_weight_goldens(up, hdir, suffix[1:], V, seq_logits, (17, 24), prompt, g_ff,
                                        GREEDY_NEW_TOKENS)


def main():
    gc.main(__doc__, "tests/golden/mamba2", CASES, run_case)


if __name__ == "__main__":
    main()
