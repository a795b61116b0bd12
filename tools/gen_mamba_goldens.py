#!/usr/bin/env python3
"""Generate golden fixtures for the Mamba (v1) engine from Hugging Face transformers.

Builds tiny random-weight MambaForCausalLM checkpoints (fp32), saves them with
save_pretrained(safe_serialization=True) and writes full-forward fp32 logits for a
few token sequences plus a greedy continuation. See tools/README.md ("Mamba goldens")
for the case list and the file format.

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_mamba_goldens.py [--out tests/golden/mamba] [--cases a,b,...]
"""

import copy
import os

import torch
from transformers import MambaConfig, MambaForCausalLM

import golden_common as gc
from golden_common import full_logits, log, save

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


@torch.no_grad()
def perturb(model, gen):
    """Noise on the 1-D parameters and A_log from a dedicated generator, so that the noise does
    not depend on init internals (also used by tools/make_bench_model.py)."""
    for pname, p in model.named_parameters():
        if p.dim() == 1:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        elif pname.endswith("A_log"):
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def build_model(name, seed, overrides, extras):
    cfg = dict(BASE)
    cfg.update(overrides)
    torch.manual_seed(seed)
    config = MambaConfig(**cfg)
    assert config.intermediate_size == cfg["intermediate_size"], (name, config.intermediate_size)
    model = MambaForCausalLM(config).eval()

    gen = torch.Generator().manual_seed(seed + 5000)
    perturb(model, gen)
    with torch.no_grad():
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
    sequences, seq_logits, max_abs, _ = gc.write_sequences(model, reloaded, cdir, V, SEQ_LENGTHS, gen, name)
    if extras.get("edge_numerics"):
        gc.log_dt_range(model, seq_logits[max(SEQ_LENGTHS)][0], "x_proj",
                        lambda mx, out: out[..., : mx.time_step_rank] @ mx.dt_proj.weight.T + mx.dt_proj.bias)
    toks_long, lg_long = seq_logits[max(SEQ_LENGTHS)]
    gc.log_self_consistency(model, toks_long, lg_long, (1, 2, 3, 4, 5, 8, 13, 17, 23))

    prompt, g_ff, lg_g = gc.write_greedy(model, cdir, V, gen, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS)
    gc.log_generate_agrees(model, prompt, g_ff, lg_g, GREEDY_NEW_TOKENS)
    log(f"   max |logit| = {max(max_abs, float(lg_g.abs().max())):.4f}")
    gc.write_goldens_json(cdir, V, sequences, prompt, g_ff)

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
            gc.log_half_forward(m16, toks_long, lg_long, suffix[1:])


def main():
    gc.main(__doc__, "tests/golden/mamba", CASES, run_case)


if __name__ == "__main__":
    main()
