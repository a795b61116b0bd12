#!/usr/bin/env python3
"""An experiment: the bundled Mamba model plus attention, taught to copy (issue 18). No model
from it is shipped; the results are in bench/RESULTS.md ("A copy-capable hybrid from the bundled
model").

Why: the bundled Mamba-1 model does not continue a quoted passage (bench/RESULTS.md, "Teaching
the bundled model to copy"), so n-gram drafts have little to predict on a copy-heavy workload.
An attention layer can look a token up by the token before it (an induction head). This script
builds a JambaForCausalLM from the bundled model (its tokenizer copied byte for byte) and trains
it to copy; recurd runs such a checkpoint (Jamba) with speculation like any other.

Warm start (the default): the bundled model's 6 Mamba layers become Jamba's (same in_proj, conv,
x_proj, dt_proj, A_log, D, out_proj; the pre-norm as `input_layernorm`); embeddings, final norm
and tied head are kept; Jamba's extra RMSNorms on dt, B and C start at the mean RMS of those
inputs over training text; attention layers are inserted (layer i is attention when
i % --attn-period == --attn-at; period 0: one, at --attn-at) with their output projections at
zero, and every layer gets Jamba's dense MLP with its down projection at zero. Training: the
bundled model's training split (train_default_model.py's corpus and held-out 2%), a fraction
--copy-frac of the windows repeating a span (copy_task.py), --random-frac of all windows spans of
random ids repeated (only copying predicts them), new parameters at --lr, warm-started ones at
--lr-old; --induction-steps first steps train only the new parameters on copy windows of
--induction-len tokens. The Mamba mixers run through train_default_model.py's C scan.

--wire instead builds the copy circuit in by hand (build_wired, wire): new residual dims that a
new first Mamba layer fills with features of the last two tokens (conv taps) and a linear copy
of the token's embedding, the bundled Mamba layers padded with zeros around them, and a last
attention head that matches the last two tokens against every earlier pair and adds the copy of
the token that followed there to the final residual (--wire-beta: sharpness, --wire-gamma: boost;
--wire-grid measures pairs and exits; with --steps it then trains as above).

--granite KINDS instead trains a Granite 4.0-H hybrid (Mamba2 and attention with RoPE, which can
attend to the previous position by itself) from a random init, with the bundled tokenizer.

--probe prints which token identities the bundled model's layers keep (a linear read-out).

At the end of a training run the checkpoint is saved (--dtype), reloaded with plain
transformers and compared with the training forward; the held-out perplexity and the copy score
(copy_task.py) of it and of the bundled model go to the stats file and a model card.

    /opt/rcdvenv/bin/python tools/train_copy_hybrid.py --probe
    /opt/rcdvenv/bin/python tools/train_copy_hybrid.py --out DIR --attn-period 4 --attn-at 2 \
        --copy-frac 0.6 --random-frac 0.25 --lr 5e-3 --threads 2 --induction-steps 600
    /opt/rcdvenv/bin/python tools/train_copy_hybrid.py --out DIR --wire --wire-grid "1,0;1,1;4,2"
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_default_model as tdm  # noqa: E402
from copy_task import RepeatWindows, copy_score, passages  # noqa: E402

MAMBA_PARTS = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj")


def fast_mixer(m, u):
    """HF JambaMambaMixer.forward without a cache, the scan in C (train_default_model.CScan)."""
    T = u.shape[1]
    I = m.intermediate_size
    xz = m.in_proj(u)
    x, z = xz[..., :I], xz[..., I:]
    xc = F.conv1d(x.transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                  padding=m.conv_kernel_size - 1, groups=I)[..., :T]
    xc = F.silu(xc).transpose(1, 2)
    R, N = m.time_step_rank, m.ssm_state_size
    dbc = m.x_proj(xc)
    ts, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
    ts, Bm, Cm = m.dt_layernorm(ts), m.b_layernorm(Bm), m.c_layernorm(Cm)
    dt = F.softplus(m.dt_proj(ts))
    A = -torch.exp(m.A_log.float())
    y = tdm.selective_scan(xc, dt, A, Bm, Cm, m.D.float())
    return m.out_proj(y * F.silu(z))


def patch_mixers():
    """Route cache-less Jamba Mamba forwards (training, evaluation) through fast_mixer."""
    from transformers.models.jamba import modeling_jamba as mj
    orig = mj.JambaMambaMixer.forward

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kw):
        if cache_params is not None or not tdm.load_scan_lib():
            return orig(self, hidden_states, cache_params, attention_mask, **kw)
        return fast_mixer(self, hidden_states)

    mj.JambaMambaMixer.forward = forward
    return orig


def jamba_like(sc, args, **over):
    """A seeded f32 JambaForCausalLM with the bundled Mamba config sc's vocabulary, state, conv,
    dt rank, norms and special ids and a dense MLP (--mlp) in every layer; over: what differs."""
    from transformers import JambaConfig, JambaForCausalLM
    kw = dict(
        vocab_size=sc.vocab_size, hidden_size=sc.hidden_size, intermediate_size=args.mlp,
        num_experts=1, num_experts_per_tok=1, expert_layer_period=1, expert_layer_offset=0,
        mamba_d_state=sc.state_size, mamba_d_conv=sc.conv_kernel, mamba_expand=sc.expand,
        mamba_dt_rank=sc.time_step_rank, mamba_conv_bias=sc.use_conv_bias,
        mamba_proj_bias=sc.use_bias, rms_norm_eps=sc.layer_norm_epsilon, hidden_act="silu",
        tie_word_embeddings=True, bos_token_id=sc.bos_token_id, eos_token_id=sc.eos_token_id,
        pad_token_id=sc.pad_token_id)
    kw.update(over)
    torch.manual_seed(args.seed)
    return JambaForCausalLM(JambaConfig(**kw)).float()


def build(args, src):
    sc = src.config
    n = sc.num_hidden_layers
    period = args.attn_period
    while sum(1 for i in range(n) if period and i % period != args.attn_at or
              not period and i != args.attn_at) < sc.num_hidden_layers:
        n += 1
    period = period or n
    return jamba_like(sc, args, num_hidden_layers=n, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, attn_layer_period=period,
                      attn_layer_offset=args.attn_at)


def dbc_rms(m, u):
    """Mean RMS of the dt, B and C inputs a bundled Mamba mixer computes from u: where Jamba's
    dt/B/C norms start, so that they begin near the identity they replace."""
    T, I = u.shape[1], m.intermediate_size
    xz = m.in_proj(u)
    xc = F.silu(F.conv1d(xz[..., :I].transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                         padding=m.conv_kernel_size - 1, groups=I)[..., :T]).transpose(1, 2)
    R, N = m.time_step_rank, m.ssm_state_size
    dbc = m.x_proj(xc)
    return {name: part.pow(2).mean(-1).sqrt().mean().item()
            for name, part in (("dt", dbc[..., :R]), ("b", dbc[..., R:R + N]), ("c", dbc[..., R + N:]))}


def build_granite(args, src):
    """--granite: a Granite 4.0-H hybrid (Mamba2 layers and attention with RoPE, a dense shared
    MLP on every layer) from a random init, with the bundled model's vocabulary and tokenizer.
    RoPE lets an attention layer attend to the previous position by itself (a fixed relative
    offset), which the Jamba hybrids above cannot: no warm start, every weight is trained."""
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM
    sc = src.config
    kinds = args.granite.split(",")
    if any(k not in ("mamba", "attention") for k in kinds):
        sys.exit("--granite: a comma-separated list of mamba and attention")
    H = args.granite_hidden
    cfg = GraniteMoeHybridConfig(
        vocab_size=sc.vocab_size, hidden_size=H, num_hidden_layers=len(kinds), layer_types=kinds,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, attention_bias=False,
        intermediate_size=args.mlp, shared_intermediate_size=args.mlp, num_local_experts=0,
        mamba_n_heads=2 * H // 32, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=32,
        mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=64, mamba_conv_bias=True,
        mamba_proj_bias=False, embedding_multiplier=1.0, residual_multiplier=1.0,
        attention_multiplier=1.0 / math.sqrt(H // args.heads), logits_scaling=1.0,
        rms_norm_eps=1e-5, position_embedding_type="rope", rope_theta=10000.0, hidden_act="silu",
        tie_word_embeddings=True, bos_token_id=sc.bos_token_id, eos_token_id=sc.eos_token_id,
        pad_token_id=sc.pad_token_id)
    torch.manual_seed(args.seed)
    return GraniteMoeHybridForCausalLM(cfg).float()


@torch.no_grad()
def warm_start(model, src, sample):
    """The bundled model's weights into the hybrid (see the module docstring); returns the names
    of the parameters that are new."""
    bb, jm = src.backbone, model.model
    jm.embed_tokens.weight.copy_(bb.embeddings.weight)
    jm.final_layernorm.weight.copy_(bb.norm_f.weight)
    kinds = model.config.layers_block_type
    mamba_layers = [l for l, k in zip(jm.layers, kinds) if k == "mamba"]
    assert len(mamba_layers) == len(bb.layers)
    # RMS of the dt, B and C inputs over sample text, through the bundled model itself.
    rms = {}
    h = bb.embeddings(sample)
    for li, (sl, dl) in enumerate(zip(bb.layers, mamba_layers)):
        m = sl.mixer
        u = sl.norm(h)
        rms.update({(li, k): v for k, v in dbc_rms(m, u).items()})
        h = h + tdm.mixer_forward(m, u)
        dl.input_layernorm.weight.copy_(sl.norm.weight)
        dm = dl.mamba
        for p in MAMBA_PARTS:
            getattr(dm, p).load_state_dict(getattr(m, p).state_dict())
        dm.A_log.copy_(m.A_log)
        dm.D.copy_(m.D)
        dm.dt_layernorm.weight.fill_(rms[(li, "dt")])
        dm.b_layernorm.weight.fill_(rms[(li, "b")])
        dm.c_layernorm.weight.fill_(rms[(li, "c")])
    old = {"model.embed_tokens.weight", "model.final_layernorm.weight"}
    for i, l in enumerate(jm.layers):
        l.feed_forward.down_proj.weight.zero_()
        if kinds[i] == "attention":
            l.self_attn.o_proj.weight.zero_()
            continue
        for n_, _ in l.named_parameters():
            if n_.startswith("mamba.") and "layernorm" not in n_ or n_ == "input_layernorm.weight":
                old.add(f"model.layers.{i}.{n_}")
    return old, rms


def random_repeats(rng, length, vocab, seps):
    """A window of spans of random token ids, each followed by a separator and by itself again
    (as many as fit): text no statistics predict, so only copying lowers its loss (the cleanest
    signal to grow an induction head; a --random-frac share of the copy windows)."""
    ids = []
    while len(ids) < length:
        span = [rng.randrange(1, vocab) for _ in range(rng.randint(8, max(8, min(48, length // 3))))]
        ids += span + seps[rng.randrange(len(seps))] + span + [0]
    return torch.tensor(ids[:length], dtype=torch.long)
# ---------------------------------------------------------------- a wired induction circuit


def build_wired(args, src):
    """The hybrid with a copy circuit built in (--wire). Hidden = the bundled model's H dims, RA
    "previous token" key dims, RA "this token" query dims and H "copy" dims (a linear copy of the
    token's normalised embedding). Layer 0: a new Mamba layer that writes the three from the
    embedding (conv taps t-1 and t); then the bundled Mamba layers, reading and writing only the
    first H dims; last, one attention head that matches this token against each position's
    previous token and adds the embedding of the token found there (from the copy dims) to the
    final residual, so to its logit."""
    sc = src.config
    H, ra = sc.hidden_size, args.wire_prev
    Hn = 2 * H + 4 * ra
    if sc.intermediate_size > Hn:
        sys.exit(f"--wire: {sc.intermediate_size} Mamba channels do not fit a hidden size of {Hn}")
    n = sc.num_hidden_layers + 2
    return jamba_like(sc, args, hidden_size=Hn, num_hidden_layers=n, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=H, attn_layer_period=n,
                      attn_layer_offset=n - 1, mamba_expand=1, mamba_conv_bias=True,
                      mamba_proj_bias=True)


@torch.no_grad()
def wire(model, src, sample, args):
    """Weights of build_wired's model (see there)."""
    bb, jm = src.backbone, model.model
    H, ra = src.config.hidden_size, args.wire_prev
    Hn = model.config.hidden_size
    I0, In = src.config.intermediate_size, Hn  # mamba_expand 1
    A0, Q0, C0 = H, H + 2 * ra, H + 4 * ra  # first key, query and copy dim
    s = args.wire_scale
    keep = math.sqrt(H / Hn)  # an RMS over Hn dims of which only H are set, back to H's scale
    for p in model.parameters():
        p.zero_()
    model.model.embed_tokens.weight[:, :H] = bb.embeddings.weight
    # --- the bundled Mamba layers, padded with zeros (their function on the first H dims)
    rms = {}
    h = bb.embeddings(sample)
    for li, sl in enumerate(bb.layers):
        m, dl = sl.mixer, jm.layers[li + 1]
        u = sl.norm(h)
        rms.update({(li, k): v for k, v in dbc_rms(m, u).items()})
        h = h + tdm.mixer_forward(m, u)
        dm = dl.mamba
        dl.input_layernorm.weight[:H] = sl.norm.weight * keep
        dm.in_proj.weight[:I0, :H] = m.in_proj.weight[:I0]
        dm.in_proj.weight[In:In + I0, :H] = m.in_proj.weight[I0:]
        dm.conv1d.weight[:I0] = m.conv1d.weight
        dm.conv1d.bias[:I0] = m.conv1d.bias
        dm.x_proj.weight[:, :I0] = m.x_proj.weight
        dm.dt_proj.weight[:I0] = m.dt_proj.weight
        dm.dt_proj.bias[:I0] = m.dt_proj.bias
        dm.A_log[:I0] = m.A_log
        dm.A_log[I0:] = torch.log(torch.arange(1, m.ssm_state_size + 1).float())
        dm.D[:I0] = m.D
        dm.out_proj.weight[:H, :I0] = m.out_proj.weight
        dm.dt_layernorm.weight.fill_(rms[(li, "dt")])
        dm.b_layernorm.weight.fill_(rms[(li, "b")])
        dm.c_layernorm.weight.fill_(rms[(li, "c")])
        dl.pre_ff_layernorm.weight.fill_(1.0)
    jm.final_layernorm.weight[:H] = bb.norm_f.weight * keep
    # --- layer 0: key, query and copy features of the (normalised) embedding into the new dims
    gen = torch.Generator().manual_seed(args.seed + 7)
    P = torch.linalg.qr(torch.randn(H, H, generator=gen))[0][:2 * ra] * args.wire_proj
    l0 = jm.layers[0]
    l0.input_layernorm.weight[:H] = 1.0
    l0.pre_ff_layernorm.weight.fill_(1.0)
    m0 = l0.mamba
    zb, cb = 4.0, 12.0  # the gate's bias; the copy channels' conv bias (silu ~ linear there)
    gate = F.silu(torch.tensor(zb)).item()
    K = m0.conv_kernel_size
    # Two tokens per key: a position's key holds features of the token before it (rows P[:ra],
    # conv tap t-1) and of the one before that (P[ra:], tap t-2); a query holds the same
    # features of this token (tap t) and of the previous one (tap t-1). A key matches a query
    # when both tokens do: the last two tokens seen again.
    # Like the copy dims below, the features are linear in the embedding (silu's near-linear
    # range, its constant removed by out_proj's bias): different tokens' features are then
    # nearly orthogonal, and a key at the first position (conv padding) is zero.
    for c in range(2 * ra):
        lag = 1 if c < ra else 2
        for ch, dim, tap in ((c, A0 + c, K - 1 - lag), (2 * ra + c, Q0 + c, K - lag)):
            m0.in_proj.weight[ch, :H] = P[c]
            m0.conv1d.weight[ch, 0, tap] = 1.0
            m0.conv1d.bias[ch] = cb
            m0.out_proj.weight[dim, ch] = s / gate
            m0.out_proj.bias[dim] = -s * cb
    for c in range(H):  # the copy: silu(u + cb) * silu(zb), scaled, minus its constant part
        ch = 4 * ra + c
        m0.in_proj.weight[ch, c] = 1.0
        m0.conv1d.weight[ch, 0, K - 1] = 1.0
        m0.conv1d.bias[ch] = cb
        m0.out_proj.weight[C0 + c, ch] = s / gate
        m0.out_proj.bias[C0 + c] = -s * cb
    nch = 4 * ra + H
    m0.D[:nch] = 1.0
    m0.in_proj.bias[In:In + nch] = zb
    m0.A_log.copy_(torch.log(torch.arange(1, m0.ssm_state_size + 1).float()).expand_as(m0.A_log))
    for nm in ("dt_layernorm", "b_layernorm", "c_layernorm"):
        getattr(m0, nm).weight.fill_(1.0)
    # --- the attention head, last: q = this token's features, k = the previous token's,
    # v = the copy dims, o = the value into the first H dims (the final norm and the tied head
    # turn it into a boost of the copied token's logit)
    la = jm.layers[-1]
    la.pre_ff_layernorm.weight.fill_(1.0)
    x = torch.cat([torch.zeros_like(sample[:, :1]), sample], 1)
    out = model(x, use_cache=False, output_hidden_states=True)
    hl = out.hidden_states[-2]  # the attention layer's input
    rms_in = hl.pow(2).mean(-1).sqrt().mean().item()
    la.input_layernorm.weight[H:] = rms_in / s  # the new dims back to the features' scale
    at = la.self_attn
    at.q_proj.weight[:2 * ra, Q0:Q0 + 2 * ra] = torch.eye(2 * ra) * args.wire_beta
    at.k_proj.weight[:2 * ra, A0:A0 + 2 * ra] = torch.eye(2 * ra)
    at.v_proj.weight[:H, C0:C0 + H] = torch.eye(H)
    at.o_proj.weight[:H, :H] = torch.eye(H) * (args.wire_gamma * rms_in)
    new = out.hidden_states[1][..., H:]
    return {"rms_attn_input": rms_in, "new_dims_rms_layer1": new.pow(2).mean().sqrt().item(),
            "old_dims_rms_layer1": out.hidden_states[1][..., :H].pow(2).mean().sqrt().item()}

@torch.no_grad()
def tf_copy(model, tok, psg, sep="\n\n"):
    """Teacher-forced top-1 on the repeated part of passages (cheap copy probe during training)."""
    model.eval()
    sep_ids = tok(sep)["input_ids"]
    eos = tok.eos_token_id
    ok = n = 0
    for p in psg:
        k = len(p) // 3
        ids = [eos] + p + sep_ids + p
        lg = model(torch.tensor([ids]), use_cache=False).logits[0]
        start = 1 + len(p) + len(sep_ids) + k
        pred = lg[start - 1:-1].argmax(-1).tolist()
        ok += sum(a == b for a, b in zip(pred, p[k:]))
        n += len(p) - k
    model.train()
    return ok / max(1, n)


@torch.no_grad()
def probe(src, n_seq=32, T=64, seed=0):
    """Which token identities a linear map can read from the bundled model's residual stream,
    layer by layer, on random ids: this token's and the previous token's (top-1 among the whole
    vocabulary of a least-squares map to the embedding, fitted on half the positions, scored on
    the other half). An attention layer can only look a token up by its predecessor (an
    induction head) if the predecessor is readable where the attention sits."""
    bb = src.backbone
    E = bb.embeddings.weight
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, E.shape[0], (n_seq, T), generator=g)
    h = bb.embeddings(x)
    rows = []
    for li in range(len(bb.layers) + 1):
        if li:
            lay = bb.layers[li - 1]
            h = h + tdm.mixer_forward(lay.mixer, lay.norm(h))
        X = torch.cat([h[:, 1:].reshape(-1, h.shape[-1]), torch.ones(n_seq * (T - 1), 1)], 1)
        res = {}
        for name, ids in (("this", x[:, 1:]), ("previous", x[:, :-1])):
            ids = ids.reshape(-1)
            n = X.shape[0] // 2
            W = torch.linalg.lstsq(X[:n], E[ids[:n]]).solution
            res[name] = ((X[n:] @ W) @ E.t()).argmax(1).eq(ids[n:]).float().mean().item()
        rows.append(res)
        print(f"[probe] after {li} Mamba layers: this token {res['this']:.3f}, previous token "
              f"{res['previous']:.3f}", flush=True)
    return rows


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/recurd-mamba-tiny", help="the bundled Mamba model")
    ap.add_argument("--out", default="build/copy-hybrid", help="the checkpoint (nothing here ships)")
    ap.add_argument("--attn-at", type=int, default=4, help="index of the (first) attention layer")
    ap.add_argument("--attn-period", type=int, default=0,
                    help="an attention layer every N layers from --attn-at (0: only one)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=256, help="the MLPs' intermediate size")
    ap.add_argument("--minutes", type=float, default=50.0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak lr of the new parameters")
    ap.add_argument("--lr-old", type=float, default=5e-4, help="peak lr of the warm-started ones")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--copy-frac", type=float, default=0.5)
    ap.add_argument("--random-frac", type=float, default=0.0,
                    help="of all windows, this fraction (part of --copy-frac) repeats random ids")
    ap.add_argument("--granite", metavar="KINDS",
                    help="instead: a Granite 4.0-H hybrid from scratch, layers e.g. "
                         "mamba,attention,mamba,attention (build_granite)")
    ap.add_argument("--granite-hidden", type=int, default=256)
    ap.add_argument("--wire", action="store_true", help="build the copy circuit in (build_wired)")
    ap.add_argument("--wire-prev", type=int, default=24, help="--wire: key dims per token (x2 tokens)")
    ap.add_argument("--wire-proj", type=float, default=1.0, help="--wire: feature projection scale")
    ap.add_argument("--wire-scale", type=float, default=0.002, help="--wire: new dims' size")
    ap.add_argument("--wire-beta", type=float, default=1.0, help="--wire: attention sharpness")
    ap.add_argument("--wire-gamma", type=float, default=1.0, help="--wire: copy boost")
    ap.add_argument("--wire-grid", metavar="B,G;B,G;...",
                    help="--wire: held-out perplexity and copy probe for each pair, then exit")
    ap.add_argument("--resume", metavar="DIR", help="start from DIR's weights (a checkpoint this "
                    "script saved with the same shape) instead of the warm start")
    ap.add_argument("--induction-steps", type=int, default=0,
                    help="phase A: this many first steps train only the new parameters, on copy "
                         "windows only (--induction-random of them random ids)")
    ap.add_argument("--induction-random", type=float, default=0.75)
    ap.add_argument("--induction-len", type=int, default=64, help="phase A's window length")
    ap.add_argument("--seed", type=int, default=1234,
                    help="the held-out split (keep 1234: the bundled model's), and the rest")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="the order of the training windows (default: --seed); a resumed run "
                         "takes a new one so it does not see its predecessor's windows again")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--ckpt-minutes", type=float, default=10.0)
    ap.add_argument("--stats", help="default: train_stats_hybrid.json beside OUT")
    ap.add_argument("--probe", action="store_true",
                    help="only print which token identities --base's layers keep (probe())")
    ap.add_argument("--write-card", metavar="STATS_JSON", help="only (re)write OUT/README.md and exit")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16", help="saved dtype")
    ap.add_argument("--finish-from", metavar="DIR",
                    help="no training: take DIR (an f32 checkpoint this script saved, with its "
                         "train_stats_hybrid.json beside it) and do the final save and checks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    if args.probe:
        from transformers import MambaForCausalLM
        tdm.load_scan_lib()
        probe(MambaForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval())
        return
    if args.write_card:
        from model_card import write_hybrid_card
        with open(args.write_card) as f:
            write_hybrid_card(args.out, json.load(f))
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer, MambaForCausalLM

    t0 = time.time()
    _, val_docs, train_docs = tdm.split_docs(args.seed)
    tok = AutoTokenizer.from_pretrained(args.base)
    train, val = tdm.encode_docs(tok, train_docs), tdm.encode_docs(tok, val_docs)
    print(f"[data] train {len(train)/1e6:.2f}M tokens, val {len(val)} tokens; {time.time()-t0:.0f}s",
          flush=True)
    src = MambaForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    tdm.load_scan_lib()
    L = args.seq_len
    base_vl, _ = tdm.evaluate(src, val, L)
    if args.finish_from:
        model = AutoModelForCausalLM.from_pretrained(args.finish_from, dtype=torch.float32)
        with open(os.path.join(os.path.dirname(args.finish_from.rstrip("/")) or ".",
                               "train_stats_hybrid.json")) as f:
            old_stats = json.load(f)
        tstats = {k: old_stats[k] for k in ("params", "steps", "tokens_seen", "train_minutes",
                                            "step0_val_ppl", "history", "args", "cpu")}
        tstats["args"]["dtype"] = args.dtype
        from transformers.models.jamba import modeling_jamba as mj
        finish(args, model, tok, src, val, val_docs, base_vl, tstats, mj.JambaMambaMixer.forward)
        return
    model = (build_granite(args, src) if args.granite else
             build_wired(args, src) if args.wire else build(args, src))
    ds = args.seed if args.data_seed is None else args.data_seed
    gen = torch.Generator().manual_seed(ds)
    sample = torch.stack([train[o:o + L] for o in torch.randint(0, len(train) - L, (16,), generator=gen)])
    if args.granite:
        old = set()
    elif args.wire:
        info = wire(model, src, sample, args)
        # the bundled model's layers (1 .. n-2), embeddings and final norm train at --lr-old
        warm = tuple(f"model.layers.{i}." for i in range(1, model.config.num_hidden_layers - 1))
        old = {n_ for n_, _ in model.named_parameters()
               if n_.startswith(warm) or n_ == "model.final_layernorm.weight"}
        print(f"[wire] {json.dumps(info)}", flush=True)
    else:
        old, rms = warm_start(model, src, sample)
    if args.resume:  # a checkpoint of an earlier run of this script (same flags): its weights
        model.load_state_dict(AutoModelForCausalLM.from_pretrained(
            args.resume, dtype=torch.float32).state_dict())
        print(f"[resume] weights of {args.resume}", flush=True)
    orig_forward = patch_mixers()
    # The patched forward against HF's own (sequential scan) on held-out text.
    psg16 = passages(tok, [d for _, d in val_docs], 32, 60, 120, args.seed)
    x = val[:129].unsqueeze(0)
    if not args.granite:  # patch_mixers speeds up Jamba's mixer only: Granite runs HF's own
        with torch.no_grad():
            a = model(x, use_cache=False).logits
            import transformers.models.jamba.modeling_jamba as mj
            patched = mj.JambaMambaMixer.forward
            mj.JambaMambaMixer.forward = orig_forward
            b = model(x, use_cache=False).logits
            mj.JambaMambaMixer.forward = patched
        print(f"[check] fast vs HF Jamba forward: max |logit diff| {(a - b).abs().max().item():.2e}",
              flush=True)
    if args.wire_grid:  # (beta, gamma) pairs: held-out perplexity and copying, then exit
        at = model.model.layers[-1].self_attn
        q0, o0 = at.q_proj.weight.clone(), at.o_proj.weight.clone()
        for pair in args.wire_grid.split(";"):
            b_, g_ = (float(v) for v in pair.split(","))
            with torch.no_grad():
                at.q_proj.weight.copy_(q0 * (b_ / args.wire_beta))
                at.o_proj.weight.copy_(o0 * (g_ / args.wire_gamma))
            vl, _ = tdm.evaluate(model, val, L, max_windows=64, hf=True)
            print(f"[grid] beta {b_} gamma {g_}: ppl(64 win) {math.exp(vl):.2f} tf copy "
                  f"{tf_copy(model, tok, psg16):.3f}", flush=True)
        return
    vl0, _ = tdm.evaluate(model, val, L, hf=True)
    print(f"[init] bundled model held-out ppl {math.exp(base_vl):.2f}; hybrid at step 0 "
          f"{math.exp(vl0):.2f}; tf copy {tf_copy(model, tok, psg16):.3f}", flush=True)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"[model] {nparams/1e6:.3f}M params; {model.config.layers_block_type}", flush=True)

    groups = {"old_d": [], "old_n": [], "new_d": [], "new_n": []}
    for n_, p in model.named_parameters():
        decay = p.dim() >= 2 and "A_log" not in n_ and "embed" not in n_
        groups[("old_" if n_ in old or "embed" in n_ else "new_") + ("d" if decay else "n")].append(p)
    opt = torch.optim.AdamW(
        [{"params": groups["old_d"], "weight_decay": args.wd, "peak": args.lr_old},
         {"params": groups["old_n"], "weight_decay": 0.0, "peak": args.lr_old},
         {"params": groups["new_d"], "weight_decay": args.wd, "peak": args.lr},
         {"params": groups["new_n"], "weight_decay": 0.0, "peak": args.lr}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    t_start = time.time()
    warm_min = 0.0

    def frac_at(step):  # same schedule as train_default_model.py: cosine over steps or time
        if step < args.warmup:
            return (step + 1) / args.warmup
        p = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        el = (time.time() - t_start) / 60
        p = max(p, min(1.0, (el - warm_min) / max(1e-6, args.minutes - warm_min)))
        return args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))

    repeats = RepeatWindows(train, tok, ds)
    copy_rng = random.Random(ds + 18)
    tokens_seen, loss_ema, last_ckpt, step = 0, None, t_start, 0
    history = []
    model.train()
    old_params = [p for n_, p in model.named_parameters() if n_ in old or "embed" in n_]
    rand_ema = None
    for step in range(args.steps):
        el = (time.time() - t_start) / 60
        if step == args.warmup:
            warm_min = el
        f = frac_at(step)
        if step > args.warmup and el >= args.minutes and f <= args.min_lr_frac * 1.0001:
            print(f"[train] time cap reached at step {step}", flush=True)
            break
        induct = step < args.induction_steps  # phase A: only the new parameters, copy windows
        for p in old_params:
            p.requires_grad_(not induct)
        for g in opt.param_groups:
            g["lr"] = g["peak"] * f
        # phase A: shorter windows (fewer positions to attend over), as many tokens per step
        Ls, B = (args.induction_len, args.batch * L // args.induction_len) if induct else (L, args.batch)
        off = torch.randint(0, len(train) - Ls - 1, (B,), generator=gen)
        x = torch.stack([train[o:o + Ls] for o in off])
        y = torch.stack([train[o + 1:o + Ls + 1] for o in off])
        cf, rf = (1.0, args.induction_random) if induct else (args.copy_frac, args.random_frac)
        rnd = []
        for i in range(B):
            r = copy_rng.random()
            if r < cf:
                w = repeats.window(Ls + 1) if r >= rf else random_repeats(
                    copy_rng, Ls + 1, len(tok), repeats.seps)
                x[i], y[i] = w[:-1], w[1:]
                if r < rf:
                    rnd.append(i)
        logits = model(x, use_cache=False).logits
        rows = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                               reduction="none").view(B, Ls).mean(1)
        loss = rows.mean()
        if rnd:  # the random-id windows: ~log(V)/2 until the model copies, then far less
            rl = rows[rnd].mean().item()
            rand_ema = rl if rand_ema is None else 0.9 * rand_ema + 0.1 * rl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += x.numel()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 25 == 0:
            el = time.time() - t_start
            print(f"[train] step {step} loss {loss.item():.3f} ema {loss_ema:.3f} random-window "
                  f"ema {rand_ema if rand_ema is not None else float('nan'):.3f} lr x{f:.2f} "
                  f"{tokens_seen/el:.0f} tok/s {el/60:.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0:
            vl, _ = tdm.evaluate(model, val, L, max_windows=64, hf=True)
            tc = tf_copy(model, tok, psg16)
            history.append({"step": step + 1, "val_ppl_64win": math.exp(vl), "tf_copy": tc})
            print(f"[eval] step {step+1} ppl(64 win) {math.exp(vl):.2f} tf copy {tc:.3f}", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            tdm.save_checkpoint(model, tok, args.out, "f32", args.base)
            last_ckpt = time.time()
            print(f"[ckpt] {args.out} at step {step+1}", flush=True)
    train_min = (time.time() - t_start) / 60
    tdm.save_checkpoint(model, tok, args.out, "f32", args.base)
    print(f"[done] {step + 1} steps, {tokens_seen/1e6:.2f}M tokens, {train_min:.1f} min", flush=True)
    tstats = {"params": nparams, "steps": step + 1, "tokens_seen": tokens_seen,
              "train_minutes": round(train_min, 1), "step0_val_ppl": math.exp(vl0),
              "history": history, "args": vars(args), "cpu": cpu_model()}
    finish(args, model, tok, src, val, val_docs, base_vl, tstats, orig_forward)


def finish(args, model, tok, src, val, val_docs, base_vl, tstats, orig_forward):
    """Save OUT in --dtype, reload it with plain transformers and measure it: its logits
    against the trained model's (with the saved weights), the held-out perplexity, the copy
    score of it and of the bundled model; stats file and model card."""
    import transformers
    import transformers.models.jamba.modeling_jamba as mj
    from transformers import AutoModelForCausalLM
    L = args.seq_len
    tdm.save_checkpoint(model, tok, args.out, args.dtype, args.base)
    mj.JambaMambaMixer.forward = orig_forward  # HF's own forward for the reloaded model
    hf = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    with torch.no_grad():
        model.load_state_dict(hf.state_dict())  # the saved (maybe rounded) weights
        x = val[:129].unsqueeze(0)
        ref = hf(x, use_cache=False).logits
        patch_mixers()
        maxdiff = (ref - model.eval()(x, use_cache=False).logits).abs().max().item()
    print(f"[check] saved {args.dtype} (HF, sequential scan) vs training forward: {maxdiff:.2e}",
          flush=True)
    vl, ntok = tdm.evaluate(hf, val, L, hf=True)
    psg = passages(tok, [d for _, d in val_docs], 64, 60, 120, args.seed)
    copy = {"model": [copy_score(hf, tok, psg, s) for s in ("\n\n", "\n")],
            "base": [copy_score(src, tok, psg, s) for s in ("\n\n", "\n")]}
    print(f"[check] held-out ppl {math.exp(vl):.2f} ({ntok} tokens; bundled model "
          f"{math.exp(base_vl):.2f}); copy {json.dumps(copy)}", flush=True)
    stats = dict(tstats)
    stats.update({"saved_dtype": args.dtype, "size_bytes": tdm.dir_size(args.out),
                  "val_tokens": ntok, "val_ppl": math.exp(vl), "base_val_ppl": math.exp(base_vl),
                  "hf_vs_train_max_logit_diff": maxdiff, "copy": copy,
                  "versions": {"torch": torch.__version__,
                               "transformers": transformers.__version__}})
    path = args.stats or os.path.join(os.path.dirname(args.out.rstrip("/")) or ".",
                                      "train_stats_hybrid.json")
    with open(path, "w") as f:
        json.dump(stats, f, indent=1)
    print(f"[done] stats in {path}", flush=True)
    from model_card import write_hybrid_card
    write_hybrid_card(args.out, stats)
    print("[done] model card written", flush=True)

if __name__ == "__main__":
    main()
