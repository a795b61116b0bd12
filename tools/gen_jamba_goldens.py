#!/usr/bin/env python3
"""Generate golden fixtures for the Jamba hybrid engine from Hugging Face transformers.

Builds tiny random-weight JambaForCausalLM checkpoints (fp32) that mix Mamba (v1, with the dt/B/C
RMSNorms) and attention layers (several attn/expert period and offset patterns, GQA/MQA/MHA, MoE
on some layers and dense MLPs on others, odd sizes, 1-D parameters perturbed away from their
identity inits), saves them with save_pretrained(safe_serialization=True) and writes full-forward
fp32 logits for a few token sequences plus a greedy continuation (full forward at every step,
never HF's cache API). Same file format as tools/gen_granite_goldens.py; see tools/README.md
("Jamba goldens").

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_jamba_goldens.py [--out tests/golden/jamba] [--cases a,b,...]
"""

import os

import torch
from transformers import JambaConfig, JambaForCausalLM

import golden_common as gc
from golden_common import full_logits, log

SEQ_LENGTHS = (1, 3, 8, 21, 37)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

BASE = dict(
    architectures=["JambaForCausalLM"],
    vocab_size=256,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts=4,
    num_experts_per_tok=2,
    attn_layer_period=2,
    attn_layer_offset=1,
    expert_layer_period=2,
    expert_layer_offset=0,
    mamba_d_state=8,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_dt_rank="auto",
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (seed, config overrides)
CASES = {
    # Mamba, attention, Mamba, attention; MoE on the Mamba layers (even), dense MLP on the
    # attention layers; GQA 4:2, dt rank "auto" (2), untied.
    "alt_moe_gqa": (4001, {}),
    # The released pattern at small scale: attention once in 4 at offset 2, MoE on odd
    # layers; MQA 6:1 with head_dim 8; odd widths (H 36, F 20, V 131, N 5, K 3, dt rank 3),
    # biases on the projections, no conv bias, top-3 of 5, tied head, eps 1e-5.
    "p4o2_mqa_odd": (
        4002,
        dict(
            vocab_size=131,
            hidden_size=36,
            intermediate_size=20,
            num_hidden_layers=6,
            num_attention_heads=6,
            num_key_value_heads=1,
            head_dim=8,
            num_experts=5,
            num_experts_per_tok=3,
            attn_layer_period=4,
            attn_layer_offset=2,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=5,
            mamba_d_conv=3,
            mamba_expand=1,
            mamba_dt_rank=3,
            mamba_conv_bias=False,
            mamba_proj_bias=True,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    ),
    # Attention first (offset 0) with MHA, MoE everywhere (period 1), top-1 of 6.
    "attn0_moe_all": (
        4003,
        dict(
            num_hidden_layers=3,
            intermediate_size=16,
            num_attention_heads=2,
            num_key_value_heads=2,
            attn_layer_period=3,
            attn_layer_offset=0,
            num_experts=6,
            num_experts_per_tok=1,
            expert_layer_period=1,
            expert_layer_offset=0,
        ),
    ),
    # No attention layer at all (period larger than the depth: a fixed-size state, no KV) and
    # dense MLPs only (num_experts 1).
    "all_mamba_dense": (
        4005,
        dict(
            vocab_size=128,
            num_hidden_layers=2,
            attn_layer_period=4,
            attn_layer_offset=3,
            num_experts=1,
            num_experts_per_tok=1,
        ),
    ),
}


def build_model(name, seed, overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    torch.manual_seed(seed)
    config = JambaConfig(**cfg)
    config._attn_implementation = "eager"
    model = JambaForCausalLM(config).eval()
    # Perturb 1-D parameters (norms incl. dt/B/C norms, biases, D) and A_log with a dedicated
    # generator so identity/constant inits cannot hide bugs. Matrices are scaled up from HF's
    # 0.02 init so that logits are O(1), attention is far from uniform and routing decisions
    # are not near-ties.
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1 or "A_log" in pname:
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
    """Smallest gap between the k-th and (k+1)-th router logit over all tokens and MoE layers."""
    cfg = model.config
    k = cfg.num_experts_per_tok
    if cfg.num_experts <= 1 or k >= cfg.num_experts:
        return None
    gaps = []

    def hook(mod, inp, out):
        top = torch.topk(out[0], k + 1, dim=-1).values
        gaps.append(float((top[:, -2] - top[:, -1]).min()))

    hs = [l.feed_forward.router.register_forward_hook(hook) for l in model.model.layers
          if hasattr(l.feed_forward, "router")]
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
    log(f"   V={V} D={cfg.hidden_size} layers={cfg.layers_block_type} experts={cfg.layers_num_experts} "
        f"NQ={cfg.num_attention_heads} NKV={cfg.num_key_value_heads} k={cfg.num_experts_per_tok} "
        f"N={cfg.mamba_d_state} K={cfg.mamba_d_conv} R={cfg.mamba_dt_rank} tied={cfg.tie_word_embeddings}")
    cdir = os.path.join(outdir, name)
    gc.write_case(model, JambaForCausalLM, cdir, V, seed, name, SEQ_LENGTHS, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS, router_margin)


def main():
    gc.main(__doc__, "tests/golden/jamba", CASES, run_case)


if __name__ == "__main__":
    main()
