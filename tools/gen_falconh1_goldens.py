#!/usr/bin/env python3
"""Generate golden fixtures for the Falcon-H1 hybrid engine from Hugging Face transformers.

Builds tiny random-weight FalconH1ForCausalLM checkpoints (fp32): every layer runs a Mamba2
mixer and GQA attention in parallel, then a SwiGLU MLP. Every muP multiplier is set away from
1 (embedding, lm_head, attention in/out, key, ssm in/out, the five ssm_multipliers, the two
mlp_multipliers); the cases cover both mamba_rms_norm settings and both norm_before_gate
settings, GQA/MQA/MHA, tied and untied heads, every bias flag, mamba_d_ssm given or not, and
odd sizes. Saved with save_pretrained(safe_serialization=True); fp32 logits of full forwards
for a few token sequences plus a greedy continuation (full forward at every step, never HF's
cache API). Same file format as tools/gen_mamba2_goldens.py; see tools/README.md
("Falcon-H1 goldens").

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_falconh1_goldens.py [--out tests/golden/falconh1] [--cases a,b,...]
"""

import os

import torch
from transformers import FalconH1Config, FalconH1ForCausalLM

import golden_common as gc
from golden_common import log

SEQ_LENGTHS = (1, 3, 8, 21, 37)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

# Gated RMSNorm after the scan, normalized before the gate; GQA 4:2, two groups, untied.
BASE = dict(
    architectures=["FalconH1ForCausalLM"],
    vocab_size=160,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    attention_bias=False,
    mlp_bias=False,
    projectors_bias=False,
    mamba_d_ssm=64,
    mamba_n_heads=8,
    mamba_d_head="auto",
    mamba_n_groups=2,
    mamba_d_state=16,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=8,
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    mamba_rms_norm=True,
    mamba_norm_before_gate=True,
    rope_theta=10000.0,
    embedding_multiplier=4.0,
    lm_head_multiplier=0.25,
    attention_in_multiplier=1.5,
    attention_out_multiplier=0.75,
    key_multiplier=0.5,
    ssm_in_multiplier=1.25,
    ssm_out_multiplier=0.6,
    ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.4],
    mlp_multipliers=[0.8, 1.6],
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (seed, config overrides)
CASES = {
    "gqa_norm_before_gate": (4001, {}),
    # No gated norm (mamba_rms_norm false: y silu(z) only, no norm.weight), MQA, tied head,
    # mamba_d_ssm null (expand * hidden), G=1, three layers, other multipliers.
    "mqa_nonorm_tied": (
        4002,
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            mamba_d_ssm=None,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_rms_norm=False,
            tie_word_embeddings=True,
            embedding_multiplier=2.5,
            lm_head_multiplier=0.5,
            attention_in_multiplier=0.8,
            attention_out_multiplier=1.4,
            key_multiplier=2.0,
            ssm_in_multiplier=0.7,
            ssm_out_multiplier=1.3,
            ssm_multipliers=[1.4, 0.6, 1.2, 0.8, 1.7],
            mlp_multipliers=[1.3, 0.7],
            rope_theta=500.0,
        ),
    ),
    # Norm after the gate (norm_before_gate false, the Mamba2 order), odd sizes, every bias
    # (attention, MLP, in_proj, out_proj = projectors_bias), no conv bias, K=3, N=6, chunk 5,
    # MHA with head_dim not hidden / heads, explicit mamba_d_head, eps 1e-6.
    "odd_bias_gate_first": (
        4003,
        dict(
            vocab_size=131,
            hidden_size=36,
            intermediate_size=20,
            num_attention_heads=3,
            num_key_value_heads=3,
            head_dim=10,
            attention_bias=True,
            mlp_bias=True,
            projectors_bias=True,
            mamba_d_ssm=45,
            mamba_n_heads=9,
            mamba_d_head=5,
            mamba_n_groups=3,
            mamba_d_state=6,
            mamba_d_conv=3,
            mamba_chunk_size=5,
            mamba_conv_bias=False,
            mamba_proj_bias=True,
            mamba_norm_before_gate=False,
            rms_norm_eps=1e-6,
        ),
    ),
}


def build_model(name, seed, overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    torch.manual_seed(seed)
    config = FalconH1Config(**cfg)
    config._attn_implementation = "eager"
    model = FalconH1ForCausalLM(config).eval()

    # Perturb 1-D parameters (norms, biases, dt_bias, D, A_log) with a dedicated generator so
    # identity/constant inits cannot hide bugs. Matrices are scaled up from HF's 0.02 init so
    # that logits are O(1) and attention is far from uniform.
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "embed_tokens" in pname or "lm_head" in pname:
                p.mul_(20.0)
            elif "q_proj" in pname or "k_proj" in pname:
                p.mul_(8.0)
            else:
                p.mul_(6.0)
    return model


def run_case(outdir, name):
    seed, overrides = CASES[name]
    log(f"== {name} (seed {seed})")
    model = build_model(name, seed, overrides)
    cfg = model.config
    V = cfg.vocab_size
    log(f"   V={V} D={cfg.hidden_size} L={cfg.num_hidden_layers} NQ={cfg.num_attention_heads} "
        f"NKV={cfg.num_key_value_heads} hd={cfg.head_dim} I={cfg.mamba_d_ssm} NH={cfg.mamba_n_heads} "
        f"P={cfg.mamba_d_head} G={cfg.mamba_n_groups} N={cfg.mamba_d_state} K={cfg.mamba_d_conv} "
        f"rms_norm={cfg.mamba_rms_norm} before_gate={cfg.mamba_norm_before_gate} "
        f"tied={cfg.tie_word_embeddings}")
    cdir = os.path.join(outdir, name)
    gc.write_case(model, FalconH1ForCausalLM, cdir, V, seed, name, SEQ_LENGTHS, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS)


def main():
    gc.main(__doc__, "tests/golden/falconh1", CASES, run_case)


if __name__ == "__main__":
    main()
