#!/usr/bin/env python3
"""Generate golden fixtures for the RecurrentGemma (Griffin) engine from Hugging Face transformers.

Builds tiny random-weight RecurrentGemmaForCausalLM checkpoints (fp32), saves them with
save_pretrained(safe_serialization=True) and writes full-forward fp32 logits (use_cache=False)
for a few token sequences plus a greedy continuation (full forward at every step). Same file
format as tools/gen_mamba2_goldens.py; see tools/README.md ("RecurrentGemma goldens").

The cases cover block patterns (r,r,a / a,r / r,a,a / recurrent only / attention only),
windows shorter and longer than the sequences, MQA, GQA and MHA, head_dim overridden in
config.json, odd partial-RoPE widths, lru_width != hidden_size, conv widths 1..4, attention
biases, tied and untied heads, and a bf16 copy.

Also checked and logged (not written): transformers' cached decode (generate) agrees with the
full forward, also past the window; a window-free variant of the same weights differs (so the
goldens do see the window; its len24 logits are written for the tiny case); the multi-token
cached path of transformers restarts the conv (a quirk; the engine does not copy it).

Deterministic: running it twice produces byte-identical files (same library versions).

Usage:  tools/gen_recurrentgemma_goldens.py [--out tests/golden/recurrentgemma] [--cases a,b]
"""

import copy
import json
import os

import torch
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

import golden_common as gc
from golden_common import full_logits, log, write_f32

SEQ_LENGTHS = (1, 3, 8, 17, 24)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32

# The spec's tiny config (shared/specs/recurrentgemma.md): layers r,r,a,r, MQA, W=16.
BASE = dict(
    architectures=["RecurrentGemmaForCausalLM"],
    vocab_size=256,
    hidden_size=48,
    lru_width=48,
    intermediate_size=144,
    num_attention_heads=4,
    num_key_value_heads=1,
    num_hidden_layers=4,
    block_types=["recurrent", "recurrent", "attention"],
    attention_window_size=16,
    conv1d_width=4,
    logits_soft_cap=5.0,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
    attention_bias=False,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
)

# name -> (seed, config overrides, rope overrides, extras)
CASES = {
    # The spec's config: sequences of 17 and 24 and the 40-token greedy run cross W=16.
    "tiny_mqa_w16": (3001, {}, {}, {"bf16_copy": True, "nowindow": True}),
    # Attention first (a,r,a), a window of 4 (shorter than every prompt but the first two),
    # GQA (4 heads on 2 kv heads), q/k/v biases, untied head, conv width 2.
    "attn_first_w4": (
        3002,
        dict(
            hidden_size=32,
            lru_width=32,
            intermediate_size=96,
            num_hidden_layers=3,
            num_key_value_heads=2,
            block_types=["attention", "recurrent"],
            attention_window_size=4,
            conv1d_width=2,
            attention_bias=True,
            tie_word_embeddings=False,
            logits_soft_cap=8.0,
        ),
        {},
        {},
    ),
    # Odd sizes: V=131, D=42, 4 heads -> hd=10, so partial RoPE over int(10*0.5)=5 dims, i.e. 3
    # frequencies rotating 6 dims; lru_width 28 != D (gate blocks of 7); intermediate 67 -> MLP
    # 33; conv width 3; pattern r,a,a over 4 layers; W=5; rope_theta 500; eps 1e-5; some
    # recurrent_param very negative (a close to 1: sqrt(1 - a^2) small).
    "odd_sizes": (
        3003,
        dict(
            vocab_size=131,
            hidden_size=42,
            lru_width=28,
            intermediate_size=67,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=4,
            block_types=["recurrent", "attention", "attention"],
            attention_window_size=5,
            conv1d_width=3,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            logits_soft_cap=3.0,
        ),
        dict(rope_theta=500.0),
        {"lru_edges": True},
    ),
    # Recurrent only (Hawk): conv width 1 (no window rows), 3 layers, 2 gate blocks of 20.
    "hawk_k1": (
        3004,
        dict(
            vocab_size=97,
            hidden_size=40,
            lru_width=40,
            intermediate_size=80,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_hidden_layers=3,
            block_types=["recurrent"],
            conv1d_width=1,
        ),
        {},
        {},
    ),
    # Attention only: head_dim 16 from config.json (q_proj 64 wide for D=32), MHA (4 kv heads),
    # partial_rotary_factor 0.25 (4 of 16 dims rotate), W=7, biases, 2 layers.
    "attn_only_hd16": (
        3005,
        dict(
            vocab_size=80,
            hidden_size=32,
            lru_width=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            num_hidden_layers=2,
            block_types=["attention"],
            attention_window_size=7,
            attention_bias=True,
        ),
        dict(partial_rotary_factor=0.25),
        {},
    ),
}


def make_config(overrides, rope):
    cfg = dict(BASE)
    cfg.update(overrides)
    rp = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    rp.update(rope)
    cfg["rope_parameters"] = rp
    config = RecurrentGemmaConfig(**cfg)
    if "head_dim" in overrides:
        config.head_dim = overrides["head_dim"]
    return config


def build_model(seed, overrides, rope, extras):
    torch.manual_seed(seed)
    config = make_config(overrides, rope)
    model = RecurrentGemmaForCausalLM(config).eval()
    # Perturb with a dedicated generator so the noise does not depend on init internals: norm
    # weights (0 at init, so 1 + w would hide a missing "1 +") and every bias (0 at init).
    gen = torch.Generator().manual_seed(seed + 5000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1 or pname.endswith("_bias"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        if extras.get("lru_edges"):
            for layer in model.model.layers:
                tb = layer.temporal_block
                if hasattr(tb, "rg_lru"):
                    rp = tb.rg_lru.recurrent_param
                    rp[: rp.shape[0] // 4] = -9.0 + torch.rand(rp.shape[0] // 4, generator=gen)
                    rp[-2:] = 21.0  # past softplus' threshold
    return model


def save(model, path):
    gc.save(model, path)
    # The hub's recurrentgemma-2b spells the pattern "_block_types"; write both (same value)
    # as the spec advises, so either reader finds it.
    cp = os.path.join(path, "config.json")
    with open(cp) as f:
        cfg = json.load(f)
    cfg["_block_types"] = list(cfg["block_types"])
    with open(cp, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


@torch.no_grad()
def chunked_with_cache(model, tokens, split):
    """transformers' own cached path fed in two multi-token calls (logged only: its prefill
    branch restarts the conv from zeros, so the second chunk is not a continuation)."""
    from transformers import DynamicCache

    model.model._setup_cache(model.config, 1, torch.device("cpu"), torch.float32)
    cache = DynamicCache(config=model.config)
    outs = []
    for a, b in ((0, split), (split, len(tokens))):
        ids = torch.tensor([tokens[a:b]])
        pos = torch.arange(a, b)[None]
        o = model(input_ids=ids, position_ids=pos, cache_position=torch.arange(a, b), past_key_values=cache, use_cache=True)
        outs.append(o.logits[0])
    return torch.cat(outs)


def run_case(outdir, name):
    seed, overrides, rope, extras = CASES[name]
    log(f"== {name} (seed {seed})")
    model = build_model(seed, overrides, rope, extras)
    cfg = model.config
    V = cfg.vocab_size
    log(
        f"   V={V} D={cfg.hidden_size} Lw={cfg.lru_width} NQ={cfg.num_attention_heads} NKV={cfg.num_key_value_heads} "
        f"hd={cfg.head_dim} L={cfg.num_hidden_layers} layers={''.join('a' if t == 'sliding_attention' else 'r' for t in cfg.layers_block_type)} "
        f"W={cfg.attention_window_size} K={cfg.conv1d_width} M={cfg.intermediate_size // 2} rope={cfg.rope_parameters} "
        f"cap={cfg.logits_soft_cap} bias={cfg.attention_bias} tied={cfg.tie_word_embeddings} "
        f"normalizer={float(model.model.normalizer)} (sqrt {cfg.hidden_size ** 0.5:.6f})"
    )
    cdir = os.path.join(outdir, name)
    save(model, cdir)
    reloaded = RecurrentGemmaForCausalLM.from_pretrained(cdir, dtype=torch.float32).eval()
    assert reloaded.config.head_dim == cfg.head_dim and reloaded.config.layers_block_type == cfg.layers_block_type

    gen = torch.Generator().manual_seed(seed + 7000)
    sequences, seq_logits, max_abs, _ = gc.write_sequences(model, reloaded, cdir, V, SEQ_LENGTHS, gen, name)
    toks_long, lg_long = seq_logits[max(SEQ_LENGTHS)]
    gc.log_self_consistency(model, toks_long, lg_long, (1, 2, 3, 4, 5, 8, 13, 17, 23))

    W = cfg.attention_window_size
    extra = {}
    if "sliding_attention" in cfg.layers_block_type:
        nw = copy.deepcopy(model)
        nw.config.attention_window_size = 10_000
        for layer in nw.model.layers:
            if hasattr(layer.temporal_block, "sliding_window"):
                layer.temporal_block.sliding_window = 10_000
        lg_nw = full_logits(nw, toks_long)
        d_in = float((lg_nw[:W] - lg_long[:W]).abs().max())
        d_out = float((lg_nw[W:] - lg_long[W:]).abs().max()) if len(toks_long) > W else 0.0
        log(f"   window-free variant vs goldens: rows < W max|d| = {d_in:.3e}; rows >= W max|d| = {d_out:.3e}")
        assert d_in < 1e-5 and (len(toks_long) <= W or d_out > 1e-2), "the goldens must see the window"
        if extras.get("nowindow"):
            write_f32(os.path.join(cdir, "len24_nowindow.f32"), lg_nw)
            extra["nowindow_len24"] = "len24_nowindow.f32"
        try:
            lg_ck = chunked_with_cache(copy.deepcopy(model), toks_long, 5)
            log(f"   HF cached path in two multi-token calls (5 + 19) vs full forward: rows < 5 max|d| = "
                f"{float((lg_ck[:5] - lg_long[:5]).abs().max()):.3e}, rows >= 5 max|d| = {float((lg_ck[5:] - lg_long[5:]).abs().max()):.3e}")
        except Exception as e:  # noqa: BLE001 - logged only
            log(f"   HF cached path in two multi-token calls fails: {type(e).__name__}: {e}")

    prompt, g_ff, lg_g = gc.write_greedy(model, cdir, V, gen, GREEDY_PROMPT_LEN, GREEDY_NEW_TOKENS)
    gc.log_generate_agrees(copy.deepcopy(model), prompt, g_ff, lg_g, GREEDY_NEW_TOKENS, f" (crossing W={W})")
    log(f"   max |logit| = {max(max_abs, float(lg_g.abs().max())):.4f}")
    gc.write_goldens_json(cdir, V, sequences, prompt, g_ff, extra=extra)

    if extras.get("bf16_copy"):
        hdir = os.path.join(outdir, name + "_bf16")
        m16 = copy.deepcopy(model).to(torch.bfloat16)
        save(m16, hdir)
        gc.log_half_forward(m16, toks_long, lg_long, "bf16")
        # Round the parameters only: m16.float() would also carry the bf16-rounded RoPE
        # inv_freq buffer (which .to(bfloat16) rounds) into the reference (5e-5 off).
        up = copy.deepcopy(model)
        with torch.no_grad():
            for p in up.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        gc.write_rounded_weight_goldens(up, hdir, "bf16", V, seq_logits, (17, 24), prompt, g_ff, GREEDY_NEW_TOKENS)


def main():
    gc.main(__doc__, "tests/golden/recurrentgemma", CASES, run_case)


if __name__ == "__main__":
    main()
