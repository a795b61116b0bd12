#!/usr/bin/env python3
"""Generate golden fixtures for the Qwen3-Next engine (Qwen3NextForCausalLM) from Hugging Face
transformers.

Builds tiny random-weight checkpoints (fp32) mixing Gated DeltaNet ("linear_attention") and
gated full-attention layers (several layer patterns, GQA in both the attention and the DeltaNet
heads, MoE with and without the shared expert, dense MLPs, decoder_sparse_step and
mlp_only_layers, partial RoPE, odd sizes), saves them with save_pretrained and writes
full-forward fp32 logits for a few token sequences plus a greedy continuation (full forward at
every step), one case with prompts longer than two 64-token blocks. transformers runs its
chunked gated-delta-rule (64-token chunks) for these full forwards; the engine's chunked form
(blocks at absolute positions, pending tokens of the open block) must match it within 1e-4. Same file format as
tools/gen_granite_goldens.py; see tools/README.md ("Qwen3-Next goldens").

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_qwen3next_goldens.py [--out tests/golden/qwen3next] [--cases a,b,...]
"""

import os

import torch
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

import golden_common as gc
from golden_common import log, save

SEQ_LENGTHS = (1, 3, 8, 21, 37)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

# GDN / attention alternating, MoE (4 experts, top-2, normalized) + shared expert, GQA 4:2,
# DeltaNet GQA (2 key heads, 4 value heads), partial RoPE 0.25, tied.
BASE = dict(
    architectures=["Qwen3NextForCausalLM"],
    vocab_size=256,
    hidden_size=32,
    num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    attention_bias=False,
    intermediate_size=40,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    decoder_sparse_step=1,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=24,
    num_experts=4,
    num_experts_per_tok=2,
    norm_topk_prob=True,
    mlp_only_layers=[],
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    hidden_act="silu",
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (seed, config overrides)
CASES = {
    "moe_shared_tied": (4001, {}),
    # Dense MLPs, attention first, MHA-shaped DeltaNet (NK = NV) with dk != dv, attention
    # biases, partial RoPE 0.5 with another theta, untied head.
    "dense_bias_untied": (
        4002,
        dict(
            layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"],
            num_experts=0,
            num_experts_per_tok=0,
            attention_bias=True,
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=12,
            linear_value_head_dim=6,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                             "partial_rotary_factor": 0.5},
            tie_word_embeddings=False,
        ),
    ),
    # Odd sizes; layer_types from full_attention_interval 3; MoE on every second layer
    # (decoder_sparse_step 2) but layer 3 dense (mlp_only_layers), no shared expert (width 0),
    # top-3 of 5 not normalized; MQA attention (3:1); DeltaNet 1 key head, 3 value heads;
    # conv kernel 3; full RoPE; eps 1e-5.
    "moe_noshared_odd": (
        4003,
        dict(
            vocab_size=131,
            hidden_size=24,
            num_hidden_layers=5,
            layer_types=None,
            full_attention_interval=3,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=10,
            intermediate_size=18,
            linear_conv_kernel_dim=3,
            linear_num_key_heads=1,
            linear_num_value_heads=3,
            linear_key_head_dim=6,
            linear_value_head_dim=10,
            decoder_sparse_step=2,
            mlp_only_layers=[3],
            num_experts=5,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            moe_intermediate_size=14,
            shared_expert_intermediate_size=0,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 1.0},
            tie_word_embeddings=False,
        ),
    ),
    # No attention layer: a fixed-size state, no KV; dense.
    "all_linear_dense": (
        4004,
        dict(
            num_hidden_layers=2,
            layer_types=["linear_attention", "linear_attention"],
            num_experts=0,
            num_experts_per_tok=0,
        ),
    ),
    # Prompts longer than two 64-token blocks (the engine's chunked delta rule completes blocks
    # mid-prompt and, in the greedy run, mid-decode): GDN / attention / GDN, dense, vocab 64.
    "long_blocks": (
        4005,
        dict(
            vocab_size=64,
            num_hidden_layers=3,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            num_experts=0,
            num_experts_per_tok=0,
        ),
    ),
}

# Per-case sequence lengths and greedy prompt length where they differ from the defaults.
CASE_LENGTHS = {"long_blocks": ((3, 150), 100)}


def build_model(seed, overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    if cfg.get("layer_types") is None:
        cfg.pop("layer_types")
    torch.manual_seed(seed)
    config = Qwen3NextConfig(**cfg)
    config._attn_implementation = "eager"
    # The loop over experts (transformers' reference); its grouped_mm path needs 16-byte
    # aligned strides, which the odd tiny widths do not have.
    config._experts_implementation = "eager"
    model = Qwen3NextForCausalLM(config).eval()
    # 1-D parameters (zero-centred norm weights, the gated norm, dt_bias, A_log, biases)
    # perturbed with a dedicated generator so identity inits cannot hide bugs; matrices scaled
    # up from the 0.02 init so logits are O(1) and routing is far from ties.
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "embed_tokens" in pname or "lm_head" in pname:
                p.mul_(10.0)
            elif "conv1d" in pname:
                pass
            elif "mlp.gate." in pname or "q_proj" in pname or "k_proj" in pname:
                p.mul_(8.0)
            else:
                p.mul_(6.0)
    return model


def run_case(outdir, name):
    seed, overrides = CASES[name]
    log(f"== {name} (seed {seed})")
    model = build_model(seed, overrides)
    cfg = model.config
    V = cfg.vocab_size
    log(f"   V={V} H={cfg.hidden_size} layers={cfg.layer_types} NQ={cfg.num_attention_heads} "
        f"NKV={cfg.num_key_value_heads} hd={cfg.head_dim} E={cfg.num_experts} "
        f"k={cfg.num_experts_per_tok} NK={cfg.linear_num_key_heads} NV={cfg.linear_num_value_heads} "
        f"dk={cfg.linear_key_head_dim} dv={cfg.linear_value_head_dim} tied={cfg.tie_word_embeddings}")
    cdir = os.path.join(outdir, name)
    save(model, cdir)
    reloaded = Qwen3NextForCausalLM.from_pretrained(cdir, dtype=torch.float32,
                                                    experts_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed + 7000)
    lengths, greedy_prompt = CASE_LENGTHS.get(name, (SEQ_LENGTHS, GREEDY_PROMPT_LEN))
    sequences, seq_logits, max_abs, reload_d = gc.write_sequences(model, reloaded, cdir, V,
                                                                  lengths, gen, name)
    assert reload_d < 1e-5, "the saved checkpoint does not reproduce the model"
    toks_long, lg_long = seq_logits[max(lengths)]
    gc.log_self_consistency(model, toks_long, lg_long, (1, 2, 3, 5, 8, 13, 21, 36))
    prompt, g_ff, lg_g = gc.write_greedy(model, cdir, V, gen, greedy_prompt, GREEDY_NEW_TOKENS)
    gc.log_generate_agrees(model, prompt, g_ff, lg_g, GREEDY_NEW_TOKENS)
    log(f"   max |logit| = {max(max_abs, float(lg_g.abs().max())):.4f}")
    gc.write_goldens_json(cdir, V, sequences, prompt, g_ff)


def main():
    gc.main(__doc__, "tests/golden/qwen3next", CASES, run_case)


if __name__ == "__main__":
    main()
