#!/usr/bin/env python3
"""Generate golden fixtures for the Granite 4.0-H hybrid engine from Hugging Face transformers.

Builds tiny random-weight GraniteMoeHybridForCausalLM checkpoints (fp32) that mix Mamba2 and
attention layers (several layer patterns, GQA ratios, MoE on and off, RoPE and "nope"), saves
them with save_pretrained(safe_serialization=True) and writes full-forward fp32 logits for a
few token sequences plus a greedy continuation (full forward at every step, never HF's cache
API). Same file format as tools/gen_mamba2_goldens.py; see tools/README.md ("Granite goldens").

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_granite_goldens.py [--out tests/golden/granite] [--cases a,b,...]
"""

import copy
import os

import torch
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

import golden_common as gc
from golden_common import full_logits, log, save

SEQ_LENGTHS = (1, 3, 8, 21, 37)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

# The spec's variant A: MoE, nope, two groups, tied head, mamba/attention alternating.
BASE = dict(
    architectures=["GraniteMoeHybridForCausalLM"],
    vocab_size=256,
    hidden_size=32,
    num_hidden_layers=4,
    layer_types=["mamba", "attention", "mamba", "attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    attention_bias=False,
    intermediate_size=16,
    shared_intermediate_size=48,
    num_local_experts=4,
    num_experts_per_tok=2,
    mamba_n_heads=8,
    mamba_d_head=8,
    mamba_n_groups=2,
    mamba_d_state=16,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=8,
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
    attention_multiplier=0.125,
    logits_scaling=6.0,
    rms_norm_eps=1e-5,
    position_embedding_type="nope",
    hidden_act="silu",
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (seed, config overrides, extras)
CASES = {
    # Spec variant A: MoE (4 experts, top-2), GQA 4:2, G=2, no positions, tied.
    "moe_nope_tied": (3001, {}, {"bf16_copy": True}),
    # Spec variant B: dense (shared MLP only), RoPE, G=1, untied, attention first.
    "dense_rope_untied": (
        3016,
        dict(
            layer_types=["attention", "mamba", "mamba", "attention"],
            num_local_experts=0,
            num_experts_per_tok=0,
            mamba_n_groups=1,
            position_embedding_type="rope",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        {},
    ),
    # MQA (6 query heads on one KV head), odd widths, biases everywhere, two attention layers
    # in a row, MoE with k = E (every expert), K=3, N=8, chunk 5, a finite dt clamp,
    # attention_multiplier not 1/hd, RoPE with another theta.
    "mqa_bias_odd": (
        3003,
        dict(
            vocab_size=131,
            hidden_size=48,
            num_hidden_layers=5,
            layer_types=["attention", "attention", "mamba", "attention", "mamba"],
            num_attention_heads=6,
            num_key_value_heads=1,
            attention_bias=True,
            intermediate_size=12,
            shared_intermediate_size=20,
            num_local_experts=3,
            num_experts_per_tok=3,
            mamba_n_heads=12,
            mamba_d_head=8,
            mamba_n_groups=3,
            mamba_d_state=8,
            mamba_d_conv=3,
            mamba_chunk_size=5,
            mamba_conv_bias=False,
            mamba_proj_bias=True,
            embedding_multiplier=3.0,
            residual_multiplier=0.5,
            attention_multiplier=0.3,
            logits_scaling=2.5,
            rms_norm_eps=1e-6,
            time_step_limit=(0.004, 0.2),
            position_embedding_type="rope",
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            tie_word_embeddings=False,
        ),
        {},
    ),
    # MHA (NQ = NKV), many experts with top-1... top-3 of 8, mamba-only tail, eps 1e-3.
    "mha_moe8": (
        3004,
        dict(
            num_hidden_layers=3,
            layer_types=["mamba", "mamba", "attention"],
            num_attention_heads=2,
            num_key_value_heads=2,
            num_local_experts=8,
            num_experts_per_tok=3,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=1,
            rms_norm_eps=1e-3,
            attention_multiplier=0.0625,
        ),
        {},
    ),
    # No attention layer at all (a fixed-size state, no KV), dense.
    "all_mamba_dense": (
        3005,
        dict(
            num_hidden_layers=2,
            layer_types=["mamba", "mamba"],
            num_local_experts=0,
            num_experts_per_tok=0,
        ),
        {},
    ),
}


def build_model(name, seed, overrides, extras):
    cfg = dict(BASE)
    cfg.update(overrides)
    torch.manual_seed(seed)
    config = GraniteMoeHybridConfig(**cfg)
    config._attn_implementation = "eager"
    model = GraniteMoeHybridForCausalLM(config).eval()

    # Perturb 1-D parameters (norms, biases, dt_bias, D, A_log) with a dedicated generator so
    # identity/constant inits cannot hide bugs. Matrices are scaled up from HF's 0.02 init so
    # that logits are O(1) (not ~0.1, where a 1e-4 tolerance would be lax), attention is far
    # from uniform and routing decisions are not near-ties.
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "embed_tokens" in pname or "lm_head" in pname:
                p.mul_(10.0)
            elif "q_proj" in pname or "k_proj" in pname or "router" in pname:
                p.mul_(8.0)
            else:
                p.mul_(6.0)
    return model


@torch.no_grad()
def router_margin(model, tokens):
    """Smallest gap between the k-th and (k+1)-th router logit over all tokens and layers: a
    routing decision closer than fp32 noise would make the goldens fragile."""
    cfg = model.config
    if cfg.num_local_experts == 0 or cfg.num_experts_per_tok >= cfg.num_local_experts:
        return None
    gaps = []

    def hook(mod, inp, out):
        lg = out[0]
        top = torch.topk(lg, cfg.num_experts_per_tok + 1, dim=-1).values
        gaps.append(float((top[:, -2] - top[:, -1]).min()))

    hs = [l.block_sparse_moe.router.register_forward_hook(hook) for l in model.model.layers]
    full_logits(model, tokens)
    for h in hs:
        h.remove()
    return min(gaps)


def run_case(outdir, name):
    seed, overrides, extras = CASES[name]
    log(f"== {name} (seed {seed})")
    model = build_model(name, seed, overrides, extras)
    cfg = model.config
    V = cfg.vocab_size
    log(f"   V={V} D={cfg.hidden_size} layers={cfg.layer_types} NQ={cfg.num_attention_heads} "
        f"NKV={cfg.num_key_value_heads} E={cfg.num_local_experts} k={cfg.num_experts_per_tok} "
        f"NH={cfg.mamba_n_heads} P={cfg.mamba_d_head} G={cfg.mamba_n_groups} N={cfg.mamba_d_state} "
        f"K={cfg.mamba_d_conv} pos={cfg.position_embedding_type} tied={cfg.tie_word_embeddings}")
    cdir = os.path.join(outdir, name)
    seq_logits, prompt, g_ff = gc.write_case(model, GraniteMoeHybridForCausalLM, cdir, V, seed, name, SEQ_LENGTHS, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS, router_margin)

    if extras.get("bf16_copy"):
        hdir = os.path.join(outdir, name + "_bf16")
        m16 = copy.deepcopy(model).to(torch.bfloat16)
        save(m16, hdir)
        up = copy.deepcopy(m16).float().eval()
        gc.write_rounded_weight_goldens(up, hdir, "bf16", V, seq_logits, (21, 37), prompt, g_ff, GREEDY_NEW_TOKENS)


def main():
    gc.main(__doc__, "tests/golden/granite", CASES, run_case)


if __name__ == "__main__":
    main()
