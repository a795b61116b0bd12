#!/usr/bin/env python3
"""Train recurd's bundled default model: a tiny Mamba (MambaForCausalLM) + byte-level BPE.

Output: an ordinary Hugging Face checkpoint directory (save_pretrained):
    config.json, generation_config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json (+ special_tokens_map.json)

Training text (English, shipped in Debian 12 packages; install them first):
    apt-get install -y fortunes fortunes-min python3.11-doc
  * fortunes / fortunes-min  -> /usr/share/games/fortunes/*   (BSD licence, see
    /usr/share/doc/fortunes/copyright)
  * python3.11-doc           -> /usr/share/doc/python3.11/html/_sources/**/*.rst.txt
    (Python documentation, PSF License v2, see /usr/share/doc/python3.11-doc/copyright);
    only prose paragraphs are kept, reST markup is stripped.
Optional build dependency: a C compiler (`gcc`, Debian package `gcc`), used to build a
small selective-scan kernel (forward + backward) for fast CPU training. Without it the
script falls back to a (much slower) pure-PyTorch sequential scan.

Python: torch, transformers, tokenizers, safetensors (this script installs nothing).

The training forward pass is a re-implementation of HF `MambaMixer.slow_forward`
(same parameters, same math: see shared/specs/mamba.md), with the time recurrence done
in C. At the end the script reloads the saved directory with
`MambaForCausalLM.from_pretrained` and checks that HF's fp32 logits on held-out text
match the training implementation (max abs diff is printed; expected ~1e-5).

Reproduce the bundled model (single CPU thread, deterministic):
    python3 tools/train_default_model.py --out models/recurd-mamba-tiny
(see models/recurd-mamba-tiny/README.md for the exact flags used)

Fine-tuning and copying (the bundled model's second stage):
  --init-from DIR  start from DIR's MambaForCausalLM (the shape must be --hidden/--layers/
                   --state/--expand and DIR's vocabulary) with a fresh optimizer; the tokenizer
                   is DIR's, copied byte for byte (implies --tokenizer DIR); defaults become
                   --lr 5e-4 --warmup 30. The stats file beside DIR (if any) is kept in the new
                   stats as "base", so the model card describes both stages.
  --copy-frac F    a fraction F of the training windows repeat a span of a training document
                   (separator, the span again, sometimes edited, cut off at the window end:
                   tools/copy_task.py), so the model learns to copy quoted text; the held-out
                   copy score (tools/copy_task.py) of the result (and of --init-from's model) is
                   measured at the end and written to the stats and the card.
"""
import argparse
import ctypes
import glob
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from model_card import write_card  # noqa: E402 (tools/ is the script's directory)

# --------------------------------------------------------------------------- data


FORTUNE_DIR = "/usr/share/games/fortunes"
PYDOC_DIR = "/usr/share/doc/python3.11/html/_sources"
# Fortune files that are not prose (pictures, cipher text, non-English).
FORTUNE_SKIP = {"art", "ascii-art", "translate-me", "zippy"}


def load_fortunes():
    docs = []
    for path in sorted(glob.glob(os.path.join(FORTUNE_DIR, "*"))):
        name = os.path.basename(path)
        if "." in name or name in FORTUNE_SKIP or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for item in re.split(r"\n%\n", text):
            item = item.replace("\t", "    ").strip("\n")
            item = "\n".join(l.rstrip() for l in item.split("\n"))
            if len(item) < 20:
                continue
            letters = sum(c.isalpha() or c.isspace() for c in item)
            if letters / len(item) < 0.8:  # drawings, code, etc.
                continue
            docs.append(item.strip())
    return docs


_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`~?!?([^`<]*?)\s*(?:<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
_REF = re.compile(r"`([^`]+)`_+")
_LIT = re.compile(r"``([^`]+)``")
_TICK = re.compile(r"`([^`]+)`")
_EMPH = re.compile(r"\*\*?([^*\s][^*]*?)\*\*?")
_FOOT = re.compile(r"\s*\[(?:#\w*|\d+|\*)\]_")


def clean_rst(s):
    s = _ROLE.sub(r"\1", s)
    s = _LINK.sub(r"\1", s)
    s = _LIT.sub(r"\1", s)
    s = _REF.sub(r"\1", s)
    s = _TICK.sub(r"\1", s)
    s = _EMPH.sub(r"\1", s)
    s = _FOOT.sub("", s)
    s = s.replace("\\ ", "").replace("|", "")
    s = re.sub(r"::$", ":", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s


def is_prose(p):
    if len(p) < 60 or len(p.split()) < 8:
        return False
    if p[0] in "=-~^*+#.>|:$%[(<" or p.startswith(".."):
        return False
    letters = sum(c.isalpha() or c == " " for c in p)
    if letters / len(p) < 0.85:
        return False
    if not re.search(r"[.:?!]\)?$", p):  # must end like a sentence
        return False
    if not p[0].isupper() and not p[0].isdigit():
        return False
    return True


def load_pydoc():
    docs = []
    for path in sorted(glob.glob(os.path.join(PYDOC_DIR, "**", "*.rst.txt"), recursive=True)):
        rel = os.path.relpath(path, PYDOC_DIR)
        if rel.startswith(("whatsnew/changelog", "c-api/", "license")):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        paras, cur = [], []
        for l in lines + [""]:
            if l.strip():
                cur.append(l)
            elif cur:
                paras.append(cur)
                cur = []
        out = []
        code_indent = None  # paragraphs indented deeper than this are literal blocks
        for p in paras:
            ind = len(p[0]) - len(p[0].lstrip())
            if code_indent is not None:
                if ind > code_indent:
                    continue
                code_indent = None
            first = p[0].strip()
            last = p[-1].rstrip()
            if first.startswith(".. ") and re.match(
                    r"\.\. (code-block|sourcecode|testcode|testoutput|doctest|productionlist|"
                    r"literalinclude|highlight|raw|csv-table|list-table|table|"
                    r"toctree|only|index|c:|grammar-snippet)", first):
                code_indent = ind
                continue
            if first.startswith(".."):
                # other directives (function::, note::, ...): body paragraphs are prose
                continue
            if last.endswith("::"):
                code_indent = ind
            if any(re.match(r"\s*(>>>|\.\.\.|\$ |[+|])", l) for l in p):
                continue
            if any(re.match(r"^\s*[=\-~^*#`'\"]{3,}\s*$", l) for l in p):
                continue  # headings
            if re.match(r"^\s*([-*+]|\d+\.|#\.)\s", p[0]):
                pass  # list items are fine prose
            text = clean_rst(" ".join(l.strip() for l in p))
            text = re.sub(r"^([-*+]|#\.)\s+", "", text)
            if is_prose(text):
                out.append(text)
        if out:
            # one document per page, split into chunks of ~8 paragraphs
            for i in range(0, len(out), 8):
                docs.append("\n\n".join(out[i:i + 8]))
    return docs


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts, vocab_size, max_len):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=max_len,
        add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False)
    return fast


# --------------------------------------------------------------------------- fast scan

SCAN_C = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
/* Layouts: x, dt, y, gy: [B,T,I]; Bm, Cm: [B,T,N]; At: [N,I] (= (-exp(A_log))^T); D: [I].
   Channels are processed in blocks of CB so that the state block (N x CB) and, in the backward
   pass, its whole history (T x N x CB) stay in cache; the inner loops run over contiguous
   channels and vectorize. */
#define CB 64
void scan_fwd(const float* x, const float* dt, const float* At, const float* Bm,
              const float* Cm, const float* D, float* y, long Bsz, long T, long I, long N) {
  float* h = (float*)malloc(sizeof(float) * N * CB);
  for (long b = 0; b < Bsz; b++)
    for (long c0 = 0; c0 < I; c0 += CB) {
      long cb = I - c0 < CB ? I - c0 : CB;
      memset(h, 0, sizeof(float) * N * CB);
      for (long t = 0; t < T; t++) {
        long row = (b * T + t) * I + c0;
        const float* xr = x + row; const float* dr = dt + row; float* yr = y + row;
        const float* Bp = Bm + (b * T + t) * N;
        const float* Cp = Cm + (b * T + t) * N;
        float acc[CB];
        for (long c = 0; c < cb; c++) acc[c] = D[c0 + c] * xr[c];
        for (long n = 0; n < N; n++) {
          const float* a = At + n * I + c0; float* hn = h + n * CB;
          float bn = Bp[n], cn = Cp[n];
          for (long c = 0; c < cb; c++) {
            float v = expf(dr[c] * a[c]) * hn[c] + dr[c] * xr[c] * bn;
            hn[c] = v;
            acc[c] += v * cn;
          }
        }
        for (long c = 0; c < cb; c++) yr[c] = acc[c];
      }
    }
  free(h);
}
/* gx, gdt: [B,T,I] written; gAt [N,I], gB, gC [B,T,N], gD [I] accumulated (zero-init). */
void scan_bwd(const float* x, const float* dt, const float* At, const float* Bm,
              const float* Cm, const float* D, const float* gy,
              float* gx, float* gdt, float* gAt, float* gB, float* gC, float* gD,
              long Bsz, long T, long I, long N) {
  float* hs = (float*)malloc(sizeof(float) * (T + 1) * N * CB); /* hs[t+1] = h_t */
  float* gh = (float*)malloc(sizeof(float) * N * CB);
  for (long b = 0; b < Bsz; b++)
    for (long c0 = 0; c0 < I; c0 += CB) {
      long cb = I - c0 < CB ? I - c0 : CB;
      memset(hs, 0, sizeof(float) * N * CB);
      for (long t = 0; t < T; t++) {
        long row = (b * T + t) * I + c0;
        const float* xr = x + row; const float* dr = dt + row;
        const float* Bp = Bm + (b * T + t) * N;
        for (long n = 0; n < N; n++) {
          const float* a = At + n * I + c0;
          const float* hp = hs + (t * N + n) * CB; float* hc = hs + ((t + 1) * N + n) * CB;
          float bn = Bp[n];
          for (long c = 0; c < cb; c++) hc[c] = expf(dr[c] * a[c]) * hp[c] + dr[c] * xr[c] * bn;
        }
      }
      memset(gh, 0, sizeof(float) * N * CB);
      for (long t = T - 1; t >= 0; t--) {
        long row = (b * T + t) * I + c0;
        const float* xr = x + row; const float* dr = dt + row; const float* gr = gy + row;
        float* gxr = gx + row; float* gdr = gdt + row;
        const float* Bp = Bm + (b * T + t) * N;
        const float* Cp = Cm + (b * T + t) * N;
        float* gBp = gB + (b * T + t) * N;
        float* gCp = gC + (b * T + t) * N;
        float gxa[CB], gda[CB];
        for (long c = 0; c < cb; c++) {
          gxa[c] = gr[c] * D[c0 + c];
          gda[c] = 0.f;
          gD[c0 + c] += gr[c] * xr[c];
        }
        for (long n = 0; n < N; n++) {
          const float* a = At + n * I + c0; float* ga = gAt + n * I + c0;
          const float* hp = hs + (t * N + n) * CB; const float* hc = hs + ((t + 1) * N + n) * CB;
          float* ghn = gh + n * CB;
          float bn = Bp[n], cn = Cp[n], sc = 0.f, sb = 0.f;
          for (long c = 0; c < cb; c++) {
            float g = ghn[c] + gr[c] * cn;
            sc += gr[c] * hc[c];
            float dA = expf(dr[c] * a[c]);
            float gdA = g * hp[c] * dA;
            gda[c] += gdA * a[c] + g * bn * xr[c];
            ga[c] += gdA * dr[c];
            sb += g * dr[c] * xr[c];
            gxa[c] += g * bn * dr[c];
            ghn[c] = g * dA;
          }
          gCp[n] += sc;
          gBp[n] += sb;
        }
        for (long c = 0; c < cb; c++) { gxr[c] = gxa[c]; gdr[c] = gda[c]; }
      }
    }
  free(hs);
  free(gh);
}
"""

_LIB = None


def split_docs(seed):
    """The corpus as (source, text) documents shuffled with `seed`: (all, the held-out 2%, the
    training rest). copy_task.py and draft_acceptance.py take their held-out text from here."""
    docs = [("fortunes", d) for d in load_fortunes()] + [("pydoc", d) for d in load_pydoc()]
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_val = max(1, int(0.02 * len(docs)))
    return docs, docs[:n_val], docs[n_val:]


def encode_docs(tokenizer, docs):
    """(source, text) documents as one id stream, each document after an eos and one at the end."""
    eos = tokenizer.eos_token_id
    ids = []
    for _, d in docs:
        ids.append(eos)
        ids.extend(tokenizer(d)["input_ids"])
    ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def load_scan_lib():
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        d = tempfile.mkdtemp(prefix="rcdscan")
        src, so = os.path.join(d, "scan.c"), os.path.join(d, "scan.so")
        with open(src, "w") as f:
            f.write(SCAN_C)
        subprocess.check_call(["gcc", "-O3", "-march=native", "-ffast-math",
                               "-shared", "-fPIC", src, "-o", so, "-lm"])
        lib = ctypes.CDLL(so)
        P, L = ctypes.c_void_p, ctypes.c_long
        lib.scan_fwd.argtypes = [P] * 7 + [L] * 4
        lib.scan_bwd.argtypes = [P] * 13 + [L] * 4
        _LIB = lib
    except Exception as e:  # no compiler: slow fallback
        print(f"[scan] C kernel unavailable ({e}); using the pure-PyTorch scan", flush=True)
        _LIB = False
    return _LIB


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


class CScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, D):
        x, dt, Bm, Cm, D = (t.contiguous().float() for t in (x, dt, Bm, Cm, D))
        A = A.float().t().contiguous()                          # [N,I]
        Bsz, T, I = x.shape
        N = A.shape[0]
        y = torch.empty_like(x)
        _LIB.scan_fwd(_p(x), _p(dt), _p(A), _p(Bm), _p(Cm), _p(D), _p(y), Bsz, T, I, N)
        ctx.save_for_backward(x, dt, A, Bm, Cm, D)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, dt, A, Bm, Cm, D = ctx.saved_tensors
        gy = gy.contiguous().float()
        Bsz, T, I = x.shape
        N = A.shape[0]
        gx, gdt = torch.empty_like(x), torch.empty_like(x)
        gA, gB, gC, gD = (torch.zeros_like(A), torch.zeros_like(Bm), torch.zeros_like(Cm),
                          torch.zeros_like(D))
        _LIB.scan_bwd(_p(x), _p(dt), _p(A), _p(Bm), _p(Cm), _p(D), _p(gy), _p(gx), _p(gdt),
                      _p(gA), _p(gB), _p(gC), _p(gD), Bsz, T, I, N)
        return gx, gdt, gA.t(), gB, gC, gD


def torch_scan(x, dt, A, Bm, Cm, D):
    """Reference sequential scan (same math as HF slow_forward, fp32)."""
    Bsz, T, I = x.shape
    dA = torch.exp(dt.unsqueeze(-1) * A)                       # [B,T,I,N]
    dBx = (dt * x).unsqueeze(-1) * Bm.unsqueeze(2)             # [B,T,I,N]
    h = x.new_zeros(Bsz, I, A.shape[1])
    ys = []
    for t in range(T):
        h = dA[:, t] * h + dBx[:, t]
        ys.append(torch.einsum("bin,bn->bi", h, Cm[:, t]))
    return torch.stack(ys, 1) + x * D


def selective_scan(x, dt, A, Bm, Cm, D):
    if load_scan_lib():
        return CScan.apply(x, dt, A, Bm, Cm, D)
    return torch_scan(x, dt, A, Bm, Cm, D)


# --------------------------------------------------------------------------- model forward


def mixer_forward(m, u):
    """Same math as transformers MambaMixer.slow_forward (no cache), batched prefill."""
    T = u.shape[1]
    I = m.intermediate_size
    xz = m.in_proj(u)                                          # [B,T,2I]
    x, z = xz[..., :I], xz[..., I:]
    xc = F.conv1d(x.transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                  padding=m.conv_kernel_size - 1, groups=I)[..., :T]
    xc = F.silu(xc).transpose(1, 2)                            # [B,T,I]
    dbc = m.x_proj(xc)
    R, N = m.time_step_rank, m.ssm_state_size
    delta, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
    dt = F.softplus(m.dt_proj(delta))                          # [B,T,I]
    A = -torch.exp(m.A_log.float())
    y = selective_scan(xc, dt, A, Bm, Cm, m.D.float())
    y = y * F.silu(z)
    return m.out_proj(y)


def fast_logits(model, ids):
    bb = model.backbone
    h = bb.embeddings(ids)
    for layer in bb.layers:
        h = h + mixer_forward(layer.mixer, layer.norm(h))
    h = bb.norm_f(h)
    return model.lm_head(h).float()


# --------------------------------------------------------------------------- training


def build_model(args, tokenizer):
    from transformers import MambaConfig, MambaForCausalLM
    eos = tokenizer.eos_token_id
    cfg = MambaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, state_size=args.state,
        num_hidden_layers=args.layers, expand=args.expand, conv_kernel=4,
        use_bias=False, use_conv_bias=True, residual_in_fp32=True,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(args.seed)
    model = MambaForCausalLM(cfg)
    model.float()
    return model


@torch.no_grad()
def evaluate(model, data, seq_len, max_windows=None, hf=False):
    model.eval()
    n = (len(data) - 1) // seq_len
    if max_windows:
        n = min(n, max_windows)
    tot, cnt = 0.0, 0
    bs = 16
    for i in range(0, n, bs):
        j = min(n, i + bs)
        x = torch.stack([data[k * seq_len:(k + 1) * seq_len] for k in range(i, j)])
        y = torch.stack([data[k * seq_len + 1:(k + 1) * seq_len + 1] for k in range(i, j)])
        logits = model(x, use_cache=False).logits.float() if hf else fast_logits(model, x)
        tot += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               reduction="sum").item()
        cnt += y.numel()
    model.train()
    return tot / max(cnt, 1), cnt


# Files copied byte for byte from --tokenizer DIR (the ones that exist there).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_checkpoint(model, tokenizer, out, dtype, tokenizer_dir=None):
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if dtype == "bf16":
        import copy
        m = copy.deepcopy(model).to(torch.bfloat16)
        m.config.torch_dtype = torch.bfloat16
        m.save_pretrained(tmp, safe_serialization=True)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer_dir:
        # A draft reuses its target's tokenizer: the exact files, not a re-serialization.
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(tmp, name))
        keep = os.path.join(out, "README.md")
        if os.path.exists(keep):
            shutil.copy(keep, os.path.join(tmp, "README.md"))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
        return
    tokenizer.save_pretrained(tmp)
    # transformers 5 writes "TokenizersBackend"; "PreTrainedTokenizerFast" loads in 4.x and 5.x.
    tc = os.path.join(tmp, "tokenizer_config.json")
    with open(tc) as f:
        tcj = json.load(f)
    tcj["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tc, "w") as f:
        json.dump(tcj, f, indent=2)
        f.write("\n")
    keep = os.path.join(out, "README.md")
    if os.path.exists(keep):
        shutil.copy(keep, os.path.join(tmp, "README.md"))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)


# Options added for draft models; a run without --tokenizer/--teacher leaves them out of its stats.
DRAFT_ARGS = ("tokenizer", "teacher", "kd_alpha", "kd_temp", "stats")
# Options added for fine-tuning; a run without them leaves them out of its stats.
INIT_ARGS = ("init_from", "copy_frac")
# What a fine-tuning stage's stats keep of an earlier fine-tuning stage (--init-from a fine-tune).
STAGE_KEYS = ("args", "steps", "tokens_seen", "train_minutes", "train_tokens", "val_loss",
              "val_ppl", "cpu", "init", "copy")


def init_model(args, model, val, val_docs):
    """--init-from: DIR's weights into a model of this run's shape; its held-out figures."""
    from transformers import MambaForCausalLM
    src = MambaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
    want, have = model.config, src.config
    for k in ("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand",
              "conv_kernel", "time_step_rank", "use_bias", "use_conv_bias", "tie_word_embeddings"):
        if getattr(want, k) != getattr(have, k):
            sys.exit(f"--init-from {args.init_from}: {k} {getattr(have, k)} != this run's "
                     f"{getattr(want, k)} (give the checkpoint's shape)")
    model.load_state_dict(src.state_dict())
    load_scan_lib()
    vl, _ = evaluate(model, val, args.seq_len)
    base_path = os.path.join(os.path.dirname(args.init_from.rstrip("/")) or ".", "train_stats.json")
    base, stages = None, []
    if os.path.exists(base_path):
        with open(base_path) as f:
            base = json.load(f)
        base.pop("samples", None)
        if base.get("init") and base.get("base"):  # DIR was fine-tuned itself: keep its stages
            stages = base.get("stages", []) + [{k: base.get(k) for k in STAGE_KEYS}]
            base = base["base"]
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"[init] {args.init_from}: held-out ppl {math.exp(vl):.2f} (loss {vl:.4f}); base stats "
          f"{base_path if base else 'none'}", flush=True)
    init = {"dir": args.init_from, "val_loss": vl, "val_ppl": math.exp(vl), "base": base, "cpu": cpu,
            "stages": stages}
    from transformers import AutoTokenizer
    init["copy"] = copy_eval(src, AutoTokenizer.from_pretrained(args.init_from), val_docs, args)
    print(f"[init] copy score: {json.dumps(init['copy'])}", flush=True)
    return model, init



def copy_eval(model, tok, val_docs, args):
    """Held-out copy score (tools/copy_task.py): 64 passages, separators blank line and newline."""
    from copy_task import copy_score, passages
    psg = passages(tok, [d for _, d in val_docs], 64, 60, 120, args.seed)
    return [copy_score(model, tok, psg, s) for s in ("\n\n", "\n")]


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/recurd-mamba-tiny")
    ap.add_argument("--minutes", type=float, default=80.0, help="wall-clock cap for training")
    ap.add_argument("--steps", type=int, default=2600, help="optimizer steps (cosine schedule length)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, help="peak lr (default 2e-3; 5e-4 with --init-from)")
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, help="warmup steps (default 150; 30 with --init-from)")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-minutes", type=float, default=10.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--dtype", choices=["auto", "f32", "bf16"], default="auto",
                    help="saved dtype; auto = f32 if it fits in --max-mb, else bf16")
    ap.add_argument("--max-mb", type=float, default=25.0)
    ap.add_argument("--bench", type=int, default=0, help="only time N training steps and exit")
    ap.add_argument("--check-scan", action="store_true", help="test C scan vs torch scan and exit")
    ap.add_argument("--write-card", metavar="STATS_JSON",
                    help="only (re)write OUT/README.md from a train_stats.json and exit")
    # Draft models (speculative decoding): reuse a target's tokenizer, distil from the target.
    ap.add_argument("--tokenizer", metavar="DIR",
                    help="reuse DIR's tokenizer.json/tokenizer_config.json exactly (copied byte "
                         "for byte; no tokenizer training; --vocab is ignored)")
    ap.add_argument("--teacher", metavar="DIR",
                    help="distil from this MambaForCausalLM (fp32, no grad): the loss mixes "
                         "next-token CE with KL to the teacher's logits; needs the teacher's "
                         "vocabulary (implies --tokenizer DIR unless given)")
    ap.add_argument("--kd-alpha", type=float, default=0.5,
                    help="with --teacher: loss = (1-a)*CE + a*T^2*KL(teacher || model) at T")
    ap.add_argument("--kd-temp", type=float, default=1.0, help="with --teacher: KL temperature T")
    ap.add_argument("--init-from", metavar="DIR",
                    help="fine-tune: start from DIR's checkpoint (same shape; DIR's tokenizer)")
    ap.add_argument("--copy-frac", type=float, default=0.0,
                    help="fraction of training windows that repeat a span (tools/copy_task.py)")
    ap.add_argument("--stats", metavar="JSON",
                    help="where to write the run's stats (default: train_stats.json beside OUT)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    if args.teacher and not args.tokenizer:
        args.tokenizer = args.teacher
    if args.init_from and not args.tokenizer:
        args.tokenizer = args.init_from
    if args.lr is None:
        args.lr = 5e-4 if args.init_from else 2e-3
    if args.warmup is None:
        args.warmup = 30 if args.init_from else 150
    if args.write_card:
        with open(args.write_card) as f:
            write_card(args.out, json.load(f))
        return

    if args.check_scan:
        load_scan_lib()
        g = torch.Generator().manual_seed(0)
        B, T, I, N = 2, 37, 24, 16
        xs = [torch.randn(B, T, I, generator=g), F.softplus(torch.randn(B, T, I, generator=g)),
              -torch.rand(I, N, generator=g) * 4, torch.randn(B, T, N, generator=g),
              torch.randn(B, T, N, generator=g), torch.randn(I, generator=g)]
        a = [t.clone().requires_grad_() for t in xs]
        b = [t.clone().requires_grad_() for t in xs]
        ya, yb = CScan.apply(*a), torch_scan(*b)
        gy = torch.randn(B, T, I, generator=g)
        (ya * gy).sum().backward()
        (yb * gy).sum().backward()
        print("y", (ya - yb).abs().max().item())
        for n, p, q in zip("x dt A B C D".split(), a, b):
            print(n, (p.grad - q.grad).abs().max().item(), q.grad.abs().max().item())
        return

    t0 = time.time()
    docs, val_docs, train_docs = split_docs(args.seed)
    nchar = sum(len(d) for _, d in docs)
    print(f"[data] {len(docs)} docs ({sum(1 for s,_ in docs if s=='fortunes')} fortunes, "
          f"{sum(1 for s,_ in docs if s=='pydoc')} pydoc chunks), {nchar/1e6:.2f}M chars; "
          f"held out {len(val_docs)} docs", flush=True)

    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if not os.path.exists(os.path.join(args.tokenizer, "tokenizer.json")):
            sys.exit(f"--tokenizer {args.tokenizer}: no tokenizer.json there")
    else:
        tokenizer = train_tokenizer([d for _, d in train_docs], args.vocab, args.seq_len * 8)
    train = encode_docs(tokenizer, train_docs)
    val = encode_docs(tokenizer, val_docs)
    val_bytes = sum(len(d.encode()) for _, d in val_docs)
    print(f"[tok] vocab {len(tokenizer)}; train {len(train)/1e6:.2f}M tokens, "
          f"val {len(val)/1e3:.1f}k tokens ({val_bytes/len(val):.2f} bytes/token); "
          f"{time.time()-t0:.0f}s", flush=True)

    model = build_model(args, tokenizer)
    init = None
    if args.init_from:
        model, init = init_model(args, model, val, val_docs)
    nparams = sum(p.numel() for p in model.parameters())
    teacher = None
    if args.teacher:
        from transformers import MambaForCausalLM
        teacher = MambaForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
        teacher.eval()
        teacher.requires_grad_(False)
        if teacher.config.vocab_size != model.config.vocab_size:
            sys.exit(f"--teacher vocab {teacher.config.vocab_size} != model vocab "
                     f"{model.config.vocab_size}")
        load_scan_lib()
        with torch.no_grad():  # the teacher runs through the fast path: check it against HF
            x = val[:129].unsqueeze(0)
            tdiff = (teacher(x).logits.float() - fast_logits(teacher, x)).abs().max().item()
        tvl, _ = evaluate(teacher, val, args.seq_len)
        teacher.eval()
        print(f"[teacher] {args.teacher}: {sum(p.numel() for p in teacher.parameters())/1e6:.3f}M "
              f"params; HF vs fast max |logit diff| {tdiff:.2e}; held-out ppl {math.exp(tvl):.2f}",
              flush=True)
    print(f"[model] {nparams/1e6:.3f}M params; config: {model.config.to_json_string()}", flush=True)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "f32" if nparams * 4 / 1e6 < args.max_mb - 1.0 else "bf16"
    print(f"[model] will save as {dtype}", flush=True)
    load_scan_lib()

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "A_log" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        # Cosine decay over --steps; if the --minutes cap would cut it short (slow or shared
        # CPU), the decay follows elapsed time instead, so training always ends annealed.
        # With an unloaded CPU the step count binds and the run is exactly reproducible.
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        if step > 0:
            el = (time.time() - t_start) / 60
            pt = (el - warm_min) / max(1e-6, args.minutes - warm_min)
            p = max(p, min(1.0, pt))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))

    gen = torch.Generator().manual_seed(args.seed)
    L = args.seq_len
    copy_rng = random.Random(args.seed + 18)
    if args.copy_frac > 0:
        from copy_task import RepeatWindows
        repeats = RepeatWindows(train, tokenizer, args.seed)
    nsteps = args.bench or args.steps
    t_start = time.time()
    last_ckpt = t_start
    tokens_seen = 0
    loss_ema = None
    step = 0
    model.train()
    warm_min = 0.0
    for step in range(nsteps):
        if (time.time() - t_start) / 60 > args.minutes + 2:
            print(f"[train] hard time cap reached at step {step}", flush=True)
            break
        if step == args.warmup:
            warm_min = (time.time() - t_start) / 60
        lr = lr_at(step)
        if lr <= args.lr * args.min_lr_frac * 1.0001 and step > args.warmup and \
                (time.time() - t_start) / 60 >= args.minutes:
            print(f"[train] time cap reached (schedule annealed) at step {step}", flush=True)
            break
        for g_ in opt.param_groups:
            g_["lr"] = lr
        off = torch.randint(0, len(train) - L - 1, (args.batch,), generator=gen)
        x = torch.stack([train[o:o + L] for o in off])
        y = torch.stack([train[o + 1:o + L + 1] for o in off])
        if args.copy_frac > 0:
            for i in range(args.batch):
                if copy_rng.random() < args.copy_frac:
                    w = repeats.window(L + 1)
                    x[i], y[i] = w[:-1], w[1:]
        logits = fast_logits(model, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if teacher is not None:
            with torch.no_grad():
                tlog = fast_logits(teacher, x)
            T_ = args.kd_temp
            V = logits.shape[-1]
            kd = F.kl_div(F.log_softmax(logits.reshape(-1, V) / T_, -1),
                          F.log_softmax(tlog.reshape(-1, V) / T_, -1),
                          log_target=True, reduction="batchmean") * (T_ * T_)
            loss = (1 - args.kd_alpha) * loss + args.kd_alpha * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += x.numel()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 50 == 0 or args.bench:
            el = time.time() - t_start
            print(f"[train] step {step} loss {loss.item():.3f} ema {loss_ema:.3f} lr {lr:.2e} "
                  f"tok {tokens_seen/1e6:.2f}M {tokens_seen/el:.0f} tok/s {el/60:.1f} min", flush=True)
        if args.bench:
            continue
        if (step + 1) % args.eval_every == 0:
            vl, _ = evaluate(model, val, L, max_windows=64)
            cs = ""
            if args.copy_frac > 0:  # greedy copy score on 16 held-out passages
                from copy_task import copy_score, passages
                psg = passages(tokenizer, [d for _, d in val_docs], 16, 60, 120, args.seed)
                cs = " copy %.3f" % copy_score(model, tokenizer, psg)["matched_prefix"]
                model.train()
            print(f"[eval] step {step+1} val loss {vl:.3f} ppl {math.exp(vl):.1f}{cs}", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_checkpoint(model, tokenizer, args.out, dtype, args.tokenizer)
            last_ckpt = time.time()
            print(f"[ckpt] saved {args.out} at step {step+1}", flush=True)
    if args.bench:
        return
    train_min = (time.time() - t_start) / 60
    steps_done = step + 1
    save_checkpoint(model, tokenizer, args.out, dtype, args.tokenizer)
    print(f"[done] {steps_done} steps, {tokens_seen/1e6:.2f}M tokens, {train_min:.1f} min; "
          f"saved {args.out} ({dir_size(args.out)/1e6:.2f} MB)", flush=True)

    # ---- final checks with the saved checkpoint through plain transformers
    from transformers import AutoTokenizer, MambaForCausalLM
    hf = MambaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    hf.eval()
    ref = model
    if dtype == "bf16":  # compare against the rounded weights
        ref = build_model(args, tokenizer)
        ref.load_state_dict({k: v.float() for k, v in hf.state_dict().items()}, strict=False)
    with torch.no_grad():
        x = val[:129].unsqueeze(0)
        a = hf(x).logits.float()
        b = fast_logits(ref, x)
        maxdiff = (a - b).abs().max().item()
    print(f"[check] HF fp32 vs training implementation: max |logit diff| = {maxdiff:.2e}", flush=True)
    vl_fast, ntok = evaluate(ref, val, L)
    vl_hf, _ = evaluate(hf, val, L, max_windows=32, hf=True)
    vl_fast32, _ = evaluate(ref, val, L, max_windows=32)
    print(f"[check] held-out: {ntok} tokens, loss {vl_fast:.4f}, ppl {math.exp(vl_fast):.2f}, "
          f"bits/byte {vl_fast/math.log(2)*len(val)/val_bytes:.3f}; first 32 windows: "
          f"HF ppl {math.exp(vl_hf):.3f} vs ours {math.exp(vl_fast32):.3f}", flush=True)
    tok = AutoTokenizer.from_pretrained(args.out)
    copy = None
    if args.init_from or args.copy_frac > 0:
        copy = {"model": copy_eval(hf, tok, val_docs, args)}
        if init is not None:
            copy["init"] = init["copy"]
        print(f"[copy] {json.dumps(copy)}", flush=True)
    samples = []
    for prompt, kw in [("The function returns", dict(do_sample=False, repetition_penalty=1.3)),
                       ("A man walks into a bar", dict(do_sample=True, temperature=0.8, top_k=40)),
                       ("Python is", dict(do_sample=True, temperature=0.8, top_k=40))]:
        torch.manual_seed(args.seed)
        enc = tok(prompt, return_tensors="pt")
        out = hf.generate(**enc, max_new_tokens=60, pad_token_id=tok.eos_token_id, **kw)
        text = tok.decode(out[0], skip_special_tokens=True)
        samples.append({"prompt": prompt, "settings": kw, "text": text})
        print(f"[sample] {json.dumps(samples[-1])}", flush=True)
    import tokenizers
    import transformers
    stats_args = vars(args).copy()
    if not args.tokenizer:  # a default run records exactly the arguments it always did
        for k in DRAFT_ARGS:
            stats_args.pop(k, None)
    if not args.init_from and args.copy_frac == 0:
        for k in INIT_ARGS:
            stats_args.pop(k, None)
    stats = {
        "params": nparams, "saved_dtype": dtype, "size_bytes": dir_size(args.out),
        "steps": steps_done, "tokens_seen": tokens_seen, "train_minutes": round(train_min, 1),
        "train_tokens": len(train), "val_tokens": ntok, "val_loss": vl_fast,
        "val_ppl": math.exp(vl_fast), "val_bits_per_byte": vl_fast / math.log(2) * len(val) / val_bytes,
        "hf_vs_ours_max_logit_diff": maxdiff, "hf_ppl_32win": math.exp(vl_hf),
        "ours_ppl_32win": math.exp(vl_fast32), "samples": samples,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "args": stats_args, "ndocs": len(docs), "nchar": nchar,
        "bytes_per_token": val_bytes / len(val),
    }
    if copy is not None:
        stats["copy"] = copy
    if init is not None:
        stats["cpu"] = init["cpu"]
        stats["init"] = {k: init[k] for k in ("dir", "val_loss", "val_ppl")}
        if init["base"]:
            stats["base"] = init["base"]
        if init["stages"]:
            stats["stages"] = init["stages"]
    if teacher is not None:
        stats["teacher"] = {"dir": args.teacher, "val_loss": tvl, "val_ppl": math.exp(tvl),
                            "hf_vs_fast_max_logit_diff": tdiff}
    stats_path = args.stats or os.path.join(os.path.dirname(args.out.rstrip("/")) or ".",
                                            "train_stats.json")
    with open(stats_path, "w") as f:
        json.dump(stats, f, indent=1)
    write_card(args.out, stats)
    print("[done] stats and model card written", flush=True)


if __name__ == "__main__":
    main()
