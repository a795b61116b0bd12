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
        logits = model(x).logits.float() if hf else fast_logits(model, x)
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


# --------------------------------------------------------------------------- model card

# The architecture table both model cards share (a format string, filled with the card).
ARCH_TABLE = """## Architecture (config.json)
| field | value |
|---|---|
| vocab_size | {vocab} |
| hidden_size | {hidden} |
| num_hidden_layers | {layers} |
| intermediate_size (expand) | {inter} ({expand}) |
| state_size | {state} |
| conv_kernel | 4 |
| time_step_rank | {rank} |
| use_bias / use_conv_bias | false / true |
| layer_norm_epsilon | 1e-5 |
| residual_in_fp32 | true |
| tie_word_embeddings | true |
| bos / eos / pad token | `<|endoftext|>` (id {eos}) |
"""

CARD = """# recurd-mamba-tiny

recurd's bundled default model: a tiny Mamba-1 language model (`MambaForCausalLM`, {params_m:.2f}M
parameters) with its own {vocab}-entry byte-level BPE tokenizer, trained from scratch on CPU by
`tools/train_default_model.py`. It is meant for smoke tests, demos and benchmarks of the serving
path, not for real use: it writes English-looking sentences, mostly in the style of Unix fortune
cookies and the Python documentation, with little meaning.

## Files
Ordinary Hugging Face checkpoint (`save_pretrained`), {size_mb:.1f} MB in total:
`config.json`, `generation_config.json`, `model.safetensors` ({dtype_name}, tied embeddings, no
`lm_head.weight` tensor), `tokenizer.json`, `tokenizer_config.json`.

""" + ARCH_TABLE + """
Tokenizer: HF `tokenizers` BPE, ByteLevel pre-tokenizer (no prefix space) + ByteLevel decoder +
ByteLevel post-processor (GPT-NeoX style), one special token `<|endoftext|>` used as
bos/eos/pad/unk; `model_max_length` {max_len} (Mamba itself has no length limit). No BOS is
added automatically; during training every document was preceded by `<|endoftext|>`, so
prepending it to a prompt is optional.

## Training data and licences
English text from Debian 12 packages (`apt-get install fortunes fortunes-min python3.11-doc`):
- `fortunes`, `fortunes-min` 1:1.99.1-7.3: the fortune cookie files in
  `/usr/share/games/fortunes` (except `art`, `ascii-art`, `translate-me`, `zippy`; items with
  <80% letters dropped). Licence: BSD (University of California, 3-clause after the
  clause-3 deletion), per `/usr/share/doc/fortunes/copyright`.
- `python3.11-doc` 3.11.2-6+deb12u9: the reST sources of the Python 3.11 documentation
  (`/usr/share/doc/python3.11/html/_sources`, without `c-api/`, `license` and the changelog);
  only prose paragraphs are kept (code, tables, headings, directives dropped; inline markup
  stripped). Licence: PSF License Agreement for Python 3.11 (Python Software Foundation),
  per `/usr/share/doc/python3.11-doc/copyright`.

{ndocs} documents, {nchar_m:.2f}M characters; 2% of documents (random, seed {seed}) held out.
Train split: {train_tok_m:.2f}M tokens; held-out split: {val_tok} tokens
({bpt:.2f} bytes/token).

## Training
From scratch, fp32, 1 CPU thread (shared machine, AMD EPYC, AVX2), {minutes} minutes,
{steps} AdamW steps (betas 0.9/0.95, weight decay {wd} on matrices), batch {batch} x {seq_len}
tokens, peak lr {lr} with {warmup}-step warmup and cosine decay to {min_lr_frac}x, grad clip 1.0:
**{tokens_m:.2f}M tokens seen** (~{epochs:.1f} epochs). The forward pass used for training is a
re-implementation of HF `MambaMixer.slow_forward` with the selective scan in C; after saving,
`MambaForCausalLM.from_pretrained` (fp32) was checked against it on held-out text: max |logit
difference| {maxdiff:.1e}, perplexity on the first 32 held-out windows HF {hf_ppl:.3f} vs
{our_ppl:.3f}.

Versions: Python {py}, torch {torch}, transformers {tf}, tokenizers {tk}.

## Evaluation
Held-out perplexity ({val_tok} tokens, windows of {seq_len} tokens, each starting from an empty
state): **{ppl:.1f}** (loss {loss:.3f} nats/token, {bpb:.3f} bits/byte).

## Samples
Generated with `transformers` from this directory (`max_new_tokens=60`, `torch.manual_seed({seed})`
before each):

{samples}

## Reproduce
```sh
apt-get install -y fortunes fortunes-min python3.11-doc gcc
python3 tools/train_default_model.py {cmd}
```
Deterministic for a given machine and library versions as long as the step count, not the
`--minutes` cap, ends the cosine schedule (on a loaded CPU the decay follows wall time, see the
script).
"""


DRAFT_CARD = """# {name}

A draft model for speculative decoding with recurd's bundled model `{teacher}`: a Mamba-1
language model (`MambaForCausalLM`, {params_m:.2f}M parameters, {size_mb:.2f} MB) with the
bundled model's tokenizer (the same `tokenizer.json` / `tokenizer_config.json`, byte for byte;
vocabulary {vocab}), trained on CPU by `tools/train_default_model.py` with the bundled model as
its teacher. It is meant for `recurd --speculate draft --draft-model {out}` beside the bundled
model (daemon/README.md, "Speculative decoding"); on its own it is a weaker copy of the bundled
model (smoke tests, not real use). Any Mamba checkpoint loads in recurd as a model of its own.

## Files
Ordinary Hugging Face checkpoint (`save_pretrained`), {size_mb:.2f} MB in total:
`config.json`, `generation_config.json`, `model.safetensors` ({dtype_name}, tied embeddings, no
`lm_head.weight` tensor), `tokenizer.json`, `tokenizer_config.json` (copied from `{teacher}`).

""" + ARCH_TABLE + """
## Training data
The bundled model's text and split (see `{teacher}/README.md`: Debian's `fortunes`,
`fortunes-min` (BSD) and prose from `python3.11-doc` (PSF License)): {ndocs} documents,
{nchar_m:.2f}M characters; the same 2% of documents (seed {seed}) held out, so neither model
saw the held-out text. Train split: {train_tok_m:.2f}M tokens; held-out split: {val_tok} tokens.

## Training
From scratch, fp32, 1 CPU thread (shared machine, AMD EPYC, AVX2), {minutes} minutes,
{steps} AdamW steps (betas 0.9/0.95, weight decay {wd} on matrices), batch {batch} x {seq_len}
tokens, peak lr {lr} with {warmup}-step warmup and cosine decay to {min_lr_frac}x, grad clip 1.0:
**{tokens_m:.2f}M tokens seen** (~{epochs:.1f} epochs). Loss: distillation,
`(1 - {kd_alpha}) * CE(next token) + {kd_alpha} * T^2 * KL(teacher || draft)` at T = {kd_temp},
the teacher `{teacher}` loaded with `MambaForCausalLM.from_pretrained` in fp32, no grad (its
logits through the script's fast forward, checked against HF's at start: max |diff|
{tdiff:.1e}; teacher held-out perplexity {tppl:.2f}). After saving, HF (fp32) vs the training
implementation: max |logit difference| {maxdiff:.1e}.

Versions: Python {py}, torch {torch}, transformers {tf}, tokenizers {tk}.

## Evaluation
Held-out perplexity ({val_tok} tokens, windows of {seq_len} tokens, each starting from an empty
state): **{ppl:.1f}** (loss {loss:.3f} nats/token, {bpb:.3f} bits/byte); the bundled model: {tppl:.1f}.

{acceptance}
## In recurd
recurd loads it like any Mamba checkpoint: `build/release/tools/recurd-eval --model {out}
--tokens IDS --greedy 32` prints the same ids as `transformers`' greedy decoding for the four
prompts of `tools/gen_bundled_goldens.py` (`tests/integration/test_draft_model.py`, with the
fixture `tests/golden/bundled-draft/greedy.json`). As a draft: `recurd-eval --model {teacher}
--greedy N --speculate draft --draft-model {out}` prints the same ids as without speculation;
its acceptance in recurd's engine is in bench/RESULTS.md ("Draft-model speculation through the
daemon").

## Samples
Generated with `transformers` from this directory (`max_new_tokens=60`, `torch.manual_seed({seed})`
before each):

{samples}

## Reproduce
```sh
apt-get install -y fortunes fortunes-min python3.11-doc gcc
python3 tools/train_default_model.py {cmd}
python3 tools/draft_acceptance.py --target {teacher} --draft {out} --stats {stats}
python3 tools/draft_acceptance.py --target {teacher} --draft {out} --stats {stats} \\
    --text /usr/share/common-licenses/GPL-3
python3 tools/train_default_model.py --out {out} --write-card {stats}
python3 tools/gen_draft_goldens.py --model {out}   # the fixture of tests/integration/test_draft_model.py
```
The cosine schedule follows wall time when the `--minutes` cap binds before `--steps` (a
shared CPU), so a rerun reaches a similar but not bit-identical model.
"""


def acceptance_md(acc, other=None):
    if not acc:
        return ""
    extra = ""
    if other:  # draft_acceptance.py --text FILE: the same figures on another text
        o_tf, o_gr = other["teacher_forced"], other["greedy"]
        extra = (f"On `{other['source']}` ({o_tf['tokens']} tokens, not in the training text): "
                 f"perplexity draft {o_tf['draft_ppl']:.1f}, target {o_tf['target_ppl']:.1f}; top-1 "
                 f"agreement {o_tf['top1_agreement']:.3f} on the text, {o_gr['top1_agreement']:.3f} on "
                 f"the target's greedy continuations; tokens per verify at k = 4: "
                 f"{o_tf['spec'][3]['tokens_per_verify']:.2f} (text), "
                 f"{o_gr['spec'][3]['tokens_per_verify']:.2f} (greedy).\n\n")
    tf, gr = acc["teacher_forced"], acc["greedy"]
    rows = "\n".join(f"| {a['k']} | {a['accepted_per_verify']:.2f} | {a['tokens_per_verify']:.2f} | "
                     f"{b['accepted_per_verify']:.2f} | {b['tokens_per_verify']:.2f} |"
                     for a, b in zip(tf["spec"], gr["spec"]))
    return f"""## Agreement with the bundled model (`tools/draft_acceptance.py`)
On the held-out split ({tf['tokens']} tokens; both models through `transformers`, fp32):
top-1 agreement (argmax draft = argmax target, both given the text) **{tf['top1_agreement']:.3f}**.
On the bundled model's own greedy continuations ({gr['prompts']} held-out prompts of
{gr['prompt_len']} tokens, continued for up to {gr['gen_len']} tokens or to EOS: {gr['positions']}
positions; what greedy speculative decoding verifies):
**{gr['top1_agreement']:.3f}**. Accepted drafts per verify for greedy speculation with k drafts
(replaying verify rounds over the agreement run lengths; tokens per verify = accepted + the
target's own token):

| k | accepted / verify (text) | tokens / verify (text) | accepted / verify (greedy) | tokens / verify (greedy) |
|---|---|---|---|---|
{rows}

{extra}"""


def write_card(out, stats):
    a = stats["args"]
    if a.get("tokenizer"):
        return write_draft_card(out, stats)
    cfg = json.load(open(os.path.join(out, "config.json")))
    samples = []
    for s_ in stats["samples"]:
        kw = ", ".join(f"{k}={v}" for k, v in s_["settings"].items())
        body = s_["text"].replace("\n", "\n> ")
        samples.append(f"*Prompt* `{s_['prompt']}` ({kw}):\n\n> {body}\n")
    flags = []
    for k in ["out", "steps", "minutes", "vocab", "hidden", "layers", "seq_len", "batch", "lr", "seed"]:
        flags.append(f"--{k.replace('_', '-')} {a[k]}")
    text = CARD.format(
        params_m=stats["params"] / 1e6, size_mb=stats["size_bytes"] / 1e6,
        dtype_name={"f32": "F32", "bf16": "BF16"}[stats["saved_dtype"]],
        vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
        inter=cfg["intermediate_size"], expand=cfg["expand"], state=cfg["state_size"],
        rank=cfg["time_step_rank"], eos=cfg["eos_token_id"], max_len=a["seq_len"] * 8,
        ndocs=stats.get("ndocs", "?"), nchar_m=stats.get("nchar", 0) / 1e6, seed=a["seed"],
        train_tok_m=stats["train_tokens"] / 1e6, val_tok=stats["val_tokens"],
        bpt=stats.get("bytes_per_token", 0.0), minutes=stats["train_minutes"],
        steps=stats["steps"], wd=a["wd"], batch=a["batch"], seq_len=a["seq_len"], lr=a["lr"],
        warmup=a["warmup"], min_lr_frac=a["min_lr_frac"], tokens_m=stats["tokens_seen"] / 1e6,
        epochs=stats["tokens_seen"] / stats["train_tokens"], maxdiff=stats["hf_vs_ours_max_logit_diff"],
        hf_ppl=stats["hf_ppl_32win"], our_ppl=stats["ours_ppl_32win"],
        py=stats["versions"]["python"], torch=stats["versions"]["torch"],
        tf=stats["versions"]["transformers"], tk=stats["versions"]["tokenizers"],
        ppl=stats["val_ppl"], loss=stats["val_loss"], bpb=stats["val_bits_per_byte"],
        samples="\n".join(samples), cmd=" ".join(flags))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


# Options added for draft models; a run without --tokenizer/--teacher leaves them out of its stats.
DRAFT_ARGS = ("tokenizer", "teacher", "kd_alpha", "kd_temp", "stats")


def write_draft_card(out, stats):
    a = stats["args"]
    cfg = json.load(open(os.path.join(out, "config.json")))
    samples = []
    for s_ in stats["samples"]:
        kw = ", ".join(f"{k}={v}" for k, v in s_["settings"].items())
        body = s_["text"].replace("\n", "\n> ")
        samples.append(f"*Prompt* `{s_['prompt']}` ({kw}):\n\n> {body}\n")
    flags = []
    for k in ["out", "tokenizer", "teacher", "kd_alpha", "kd_temp", "steps", "minutes", "hidden",
              "layers", "state", "expand", "seq_len", "batch", "lr", "warmup", "max_mb", "seed",
              "stats"]:
        if a.get(k) is not None:
            flags.append(f"--{k.replace('_', '-')} {a[k]}")
    t = stats.get("teacher", {})
    text = DRAFT_CARD.format(
        name=os.path.basename(out.rstrip("/")), out=a["out"], teacher=a["teacher"] or a["tokenizer"],
        params_m=stats["params"] / 1e6, size_mb=stats["size_bytes"] / 1e6,
        dtype_name={"f32": "F32", "bf16": "BF16"}[stats["saved_dtype"]],
        vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
        inter=cfg["intermediate_size"], expand=cfg["expand"], state=cfg["state_size"],
        rank=cfg["time_step_rank"], eos=cfg["eos_token_id"],
        ndocs=stats.get("ndocs", "?"), nchar_m=stats.get("nchar", 0) / 1e6, seed=a["seed"],
        train_tok_m=stats["train_tokens"] / 1e6, val_tok=stats["val_tokens"],
        minutes=stats["train_minutes"], steps=stats["steps"], wd=a["wd"], batch=a["batch"],
        seq_len=a["seq_len"], lr=a["lr"], warmup=a["warmup"], min_lr_frac=a["min_lr_frac"],
        tokens_m=stats["tokens_seen"] / 1e6, epochs=stats["tokens_seen"] / stats["train_tokens"],
        kd_alpha=a["kd_alpha"], kd_temp=a["kd_temp"], tdiff=t.get("hf_vs_fast_max_logit_diff", float("nan")),
        tppl=t.get("val_ppl", float("nan")), maxdiff=stats["hf_vs_ours_max_logit_diff"],
        py=stats["versions"]["python"], torch=stats["versions"]["torch"],
        tf=stats["versions"]["transformers"], tk=stats["versions"]["tokenizers"],
        ppl=stats["val_ppl"], loss=stats["val_loss"], bpb=stats["val_bits_per_byte"],
        acceptance=acceptance_md(stats.get("acceptance"), stats.get("acceptance_text")), samples="\n".join(samples),
        cmd=" ".join(flags), stats=a.get("stats") or "models/train_stats.json")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


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
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=150)
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
    ap.add_argument("--stats", metavar="JSON",
                    help="where to write the run's stats (default: train_stats.json beside OUT)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    if args.teacher and not args.tokenizer:
        args.tokenizer = args.teacher
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
    docs = [("fortunes", d) for d in load_fortunes()] + [("pydoc", d) for d in load_pydoc()]
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    n_val = max(1, int(0.02 * len(docs)))
    val_docs, train_docs = docs[:n_val], docs[n_val:]
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
    eos = tokenizer.eos_token_id

    def encode(ds):
        ids = []
        for _, d in ds:
            ids.append(eos)
            ids.extend(tokenizer(d)["input_ids"])
        ids.append(eos)
        return torch.tensor(ids, dtype=torch.long)

    train = encode(train_docs)
    val = encode(val_docs)
    val_bytes = sum(len(d.encode()) for _, d in val_docs)
    print(f"[tok] vocab {len(tokenizer)}; train {len(train)/1e6:.2f}M tokens, "
          f"val {len(val)/1e3:.1f}k tokens ({val_bytes/len(val):.2f} bytes/token); "
          f"{time.time()-t0:.0f}s", flush=True)

    model = build_model(args, tokenizer)
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
            print(f"[eval] step {step+1} val loss {vl:.3f} ppl {math.exp(vl):.1f}", flush=True)
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
