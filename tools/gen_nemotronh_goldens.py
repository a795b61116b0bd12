#!/usr/bin/env python3
"""Generate golden fixtures for the Nemotron-H hybrid engine from Hugging Face transformers.

Builds tiny random-weight NemotronHForCausalLM checkpoints (fp32) whose layers follow a
pattern of Mamba2 (M), attention (*), MLP (-) and MoE (E) blocks (several patterns, GQA/MQA/MHA,
MoE with grouped sigmoid routing, odd sizes), saves them with save_pretrained(safe_serialization=
True) and writes full-forward fp32 logits for a few token sequences plus a greedy continuation
(full forward at every step, never HF's cache API). Same file format as
tools/gen_granite_goldens.py; see tools/README.md ("Nemotron-H goldens").

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_nemotronh_goldens.py [--out tests/golden/nemotronh] [--cases a,b,...]
"""

import os

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

import golden_common as gc
from golden_common import full_logits, log

SEQ_LENGTHS = (1, 3, 8, 21, 37)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

BASE = dict(
    architectures=["NemotronHForCausalLM"],
    vocab_size=160,
    hidden_size=32,
    hybrid_override_pattern="M-ME*-",
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=40,
    mlp_hidden_act="relu2",
    mlp_bias=False,
    mamba_num_heads=8,
    mamba_head_dim=8,
    n_groups=2,
    ssm_state_size=16,
    conv_kernel=4,
    chunk_size=8,
    use_conv_bias=True,
    use_bias=False,
    time_step_min=0.001,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=12,
    moe_shared_expert_intermediate_size=24,
    n_group=2,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (seed, config overrides)
CASES = {
    # Every block kind; GQA 4:2; MoE 8 experts top-2 in 2 groups (1 kept), scaled; tied head.
    "moe_gqa_tied": (4001, {}),
    # Dense (no MoE): attention first, MHA, untied, G=1, biases on the mixer and the MLPs,
    # no conv bias, written as layers_block_type.
    "dense_mha_untied": (
        4002,
        dict(
            hybrid_override_pattern=None,
            layers_block_type=["full_attention", "linear_attention", "mlp", "linear_attention",
                               "mlp"],
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            n_groups=1,
            use_bias=True,
            mlp_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=False,
        ),
    ),
    # Odd sizes (grouped_mm wants 16-byte strides: the expert width stays a multiple of 4):
    # V=131, H=40, MQA (5 heads of 6, one KV head: head_dim * heads != H), K=3, N=8,
    # G=3, chunk 5, two MoE blocks in a row, 6 experts top-3 ungrouped, no top-k
    # normalization, a larger time_step_min, eps 1e-6.
    "mqa_odd": (
        4003,
        dict(
            vocab_size=131,
            hidden_size=40,
            hybrid_override_pattern="*EEM*M-",
            num_attention_heads=5,
            num_key_value_heads=1,
            head_dim=6,
            intermediate_size=28,
            mamba_num_heads=9,
            mamba_head_dim=4,
            n_groups=3,
            ssm_state_size=8,
            conv_kernel=3,
            chunk_size=5,
            time_step_min=0.01,
            n_routed_experts=6,
            num_experts_per_tok=3,
            moe_intermediate_size=12,
            moe_shared_expert_intermediate_size=14,
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            layer_norm_epsilon=1e-6,
            tie_word_embeddings=False,
        ),
    ),
    # Only Mamba layers: a fixed-size state, no KV.
    "all_mamba": (4004, dict(hybrid_override_pattern="MM")),
    # Grouped routing with 4 groups of 2, keep 2 groups, top-3; attention-only + MoE.
    "moe_groups4": (
        4005,
        dict(hybrid_override_pattern="*E-E", n_group=4, topk_group=2, num_experts_per_tok=3,
             num_attention_heads=4, num_key_value_heads=1),
    ),
    # Latent MoE (moe_latent_size: experts between fc1/fc2 latent projections), MLP biases
    # everywhere (latent projections and shared expert too), MQA, G=1.
    "moe_latent_bias": (
        4006,
        dict(hybrid_override_pattern="ME*E", moe_latent_size=16, mlp_bias=True, n_groups=1,
             num_key_value_heads=1, n_group=1, topk_group=1, routed_scaling_factor=1.5),
    ),
}


def build_model(name, seed, overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    torch.manual_seed(seed)
    config = NemotronHConfig(**cfg)
    config._attn_implementation = "eager"
    model = NemotronHForCausalLM(config).eval()

    # Perturb 1-D parameters and buffers (norms, biases, dt_bias, D, A_log, the routers'
    # e_score_correction_bias) with a dedicated generator so identity/constant inits cannot hide
    # bugs; scale the matrices up from HF's 0.02 init so logits are O(1).
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * (0.3 if "e_score" in pname else 0.05))
            elif "embeddings" in pname or "lm_head" in pname:
                p.mul_(10.0)
            elif "q_proj" in pname or "k_proj" in pname or "gate.weight" in pname:
                p.mul_(8.0)
            else:
                p.mul_(6.0)
    return model


@torch.no_grad()
def router_margin(model, tokens):
    """Smallest gap between the k-th and (k+1)-th choice score (sigmoid + correction bias)."""
    cfg = model.config
    gaps = []

    def hook(mod, inp, out):
        lg = out[0]
        sc = lg.sigmoid() + mod.e_score_correction_bias
        top = torch.topk(sc, min(cfg.num_experts_per_tok + 1, sc.shape[-1]), dim=-1).values
        if top.shape[-1] > cfg.num_experts_per_tok:
            gaps.append(float((top[:, -2] - top[:, -1]).min()))

    hs = [l.mixer.gate.register_forward_hook(hook) for l in model.model.layers if l.block_type == "moe"]
    full_logits(model, tokens)
    for h in hs:
        h.remove()
    return min(gaps) if gaps else None


def run_case(outdir, name):
    seed, overrides = CASES[name]
    log(f"== {name} (seed {seed})")
    model = build_model(name, seed, overrides)
    cfg = model.config
    V = cfg.vocab_size
    log(f"   V={V} D={cfg.hidden_size} pattern={cfg.hybrid_override_pattern} NQ={cfg.num_attention_heads} "
        f"NKV={cfg.num_key_value_heads} hd={cfg.head_dim} E={cfg.n_routed_experts} k={cfg.num_experts_per_tok} "
        f"groups={cfg.n_group}/{cfg.topk_group} NH={cfg.mamba_num_heads} P={cfg.mamba_head_dim} "
        f"G={cfg.n_groups} N={cfg.ssm_state_size} K={cfg.conv_kernel} tied={cfg.tie_word_embeddings}")
    cdir = os.path.join(outdir, name)
    gc.write_case(model, NemotronHForCausalLM, cdir, V, seed, name, SEQ_LENGTHS, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS, router_margin, "score")


def main():
    gc.main(__doc__, "tests/golden/nemotronh", CASES, run_case)


if __name__ == "__main__":
    main()
