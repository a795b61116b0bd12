"""Model cards (README.md) of the bundled model, of its draft and of train_copy_hybrid.py's experiments.

Used by tools/train_default_model.py and tools/train_copy_hybrid.py: at the end of a run, and
alone with `--write-card STATS`.
"""
import json
import os


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

# Shared by both cards: the held-out perplexity sentence and the samples / reproduce head.
HELDOUT_PPL = """Held-out perplexity ({val_tok} tokens, windows of {seq_len} tokens, each starting from an empty
state): **{ppl:.1f}** (loss {loss:.3f} nats/token, {bpb:.3f} bits/byte)"""
SAMPLES_REPRODUCE = """## Samples
Generated with `transformers` from this directory (`max_new_tokens=60`, `torch.manual_seed({seed})`
before each):

{samples}

## Reproduce
```sh
apt-get install -y fortunes fortunes-min python3.11-doc gcc
python3 tools/train_default_model.py {cmd}
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
{finetune}
Versions: Python {py}, torch {torch}, transformers {tf}, tokenizers {tk}.

## Evaluation
""" + HELDOUT_PPL + """.
{copy}
""" + SAMPLES_REPRODUCE + """```
Deterministic for a given machine and library versions as long as the step count, not the
`--minutes` cap, ends the cosine schedule (on a loaded CPU the decay follows wall time, see the
script).
{note}"""

# The second stage of a run with --init-from (the first stage's figures come from its "base").
FINETUNE = """
Then fine-tuned from that checkpoint (`--init-from`, a fresh optimizer), fp32, 1 CPU thread
(shared machine, `{cpu}`): {minutes} minutes, {steps} AdamW steps, batch {batch} x {seq_len}
tokens, peak lr {lr} with {warmup}-step warmup and cosine decay to {min_lr_frac}x: **{tokens_m:.2f}M
tokens seen**. In {copy_pct:.0f}% of the training windows (`--copy-frac {copy_frac}`,
`tools/copy_task.py`) a span of a training document is followed by a separator (a blank line,
a newline, a quote, a lead-in such as "Again:", ...) and by the same span again (a fifth of
the repeats with a small edit), cut off where the window ends; the loss covers every token.
The aim: a model that continues a quoted passage as it was, as real language models do and as
n-gram drafts in speculative decoding need (how far it does: "Copying" below). Held-out
perplexity before / after the fine-tuning: {ippl:.2f} / {ppl:.2f}.
"""

COPY = """
## Copying (`tools/copy_task.py`)
{n} held-out passages (the first 60–120 tokens of held-out documents, {mlen:.1f} on average),
each given as `<|endoftext|>` + passage + separator + the passage's first third; the model
continues greedily (`transformers`, fp32) for as many tokens as the rest of the passage has.
Matched prefix: the share of the rest reproduced before the first difference (mean over
passages); matched positions: the share of positions equal; full copies: passages reproduced to
the end; teacher-forced: top-1 accuracy on the rest given the true prefix.

| separator | model | matched prefix | matched positions | full copies | teacher-forced |
|---|---|---|---|---|---|
{rows}
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
""" + HELDOUT_PPL + """; the bundled model: {tppl:.1f}{now}.

{acceptance}
## In recurd
recurd loads it like any Mamba checkpoint: `build/release/tools/recurd-eval --model {out}
--tokens IDS --greedy 32` prints the same ids as `transformers`' greedy decoding for the four
prompts of `tools/gen_bundled_goldens.py` (`tests/integration/test_draft_model.py`, with the
fixture `tests/golden/bundled-draft/greedy.json`). As a draft: `recurd-eval --model {teacher}
--greedy N --speculate draft --draft-model {out}` prints the same ids as without speculation;
its acceptance in recurd's engine is in bench/RESULTS.md ("Draft-model speculation through the
daemon").

""" + SAMPLES_REPRODUCE + """python3 tools/draft_acceptance.py --target {teacher} --draft {out} --stats {stats}
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


def _stage(st):
    a = st["args"]
    return dict(minutes=st["train_minutes"], steps=st["steps"], wd=a["wd"], batch=a["batch"],
                seq_len=a["seq_len"], lr=a["lr"], warmup=a["warmup"], min_lr_frac=a["min_lr_frac"],
                tokens_m=st["tokens_seen"] / 1e6, epochs=st["tokens_seen"] / st["train_tokens"])


def _capped(st):
    return st["steps"] < st["args"]["steps"]


def _copy_md(copy, stages=()):
    rows = []
    runs = [("init", "before")] if not stages else [("init", "before fine-tuning")]
    runs += [(i, f"after fine-tuning stage {i + 1}") for i in range(len(stages))]
    for who, name in runs + [("model", "this model")]:
        src = stages[who]["copy"] if isinstance(who, int) else copy
        if isinstance(who, int):
            who = "model"
        elif who == "init" and stages:
            src = stages[0]["copy"]
        for r in src.get(who, []):
            sep = r["sep"].replace("\n", "\\n")
            rows.append(f"| `{sep}` | {name} | {r['matched_prefix']:.3f} | "
                        f"{r['matched_positions']:.3f} | {r['full_copies']}/{r['passages']} | "
                        + (f"{r['teacher_forced_top1']:.3f} |" if "teacher_forced_top1" in r else "– |"))
    r0 = copy["model"][0]
    return COPY.format(n=r0["passages"], mlen=r0["mean_len"], rows="\n".join(rows))


def write_card(out, stats):
    a = stats["args"]
    if a.get("tokenizer") and not a.get("init_from"):
        return write_draft_card(out, stats)
    cfg = json.load(open(os.path.join(out, "config.json")))
    samples = []
    for s_ in stats["samples"]:
        kw = ", ".join(f"{k}={v}" for k, v in s_["settings"].items())
        body = s_["text"].replace("\n", "\n> ")
        samples.append(f"*Prompt* `{s_['prompt']}` ({kw}):\n\n> {body}\n")
    base = stats.get("base") if a.get("init_from") else None
    first = base or stats  # the from-scratch stage
    fa = first["args"]
    flags = []
    for k in ["out", "steps", "minutes", "vocab", "hidden", "layers", "seq_len", "batch", "lr", "seed"]:
        flags.append(f"--{k.replace('_', '-')} {fa[k]}")
    cmd = " ".join(flags)
    finetune, copy, note = "", "", ""
    if _capped(first):
        note = (f"\nNote: for this checkpoint the CPU was shared with other builds, so the "
                f"{fa['minutes']:g}-minute cap (not the\n{fa['steps']}-step count) ended the schedule "
                f"at step {first['steps']}; a rerun reaches a similar but not\nbit-identical model. "
                f"Numbers above come from `models/train_stats.json` written by the run.\n")
    if base is not None:
        name = "models/" + os.path.basename(a["out"].rstrip("/"))
        stages = stats.get("stages", []) + [stats]
        for i, st in enumerate(stages):
            sa = st["args"]
            cmd += (f"\npython3 tools/train_default_model.py --out {name} --init-from {name} "
                    f"--copy-frac {sa['copy_frac']} --steps {sa['steps']} --minutes "
                    f"{sa['minutes']} --lr {sa['lr']} --warmup {sa['warmup']} --seed {sa['seed']}")
            ft = FINETUNE.format(cpu=st.get("cpu", "?"), copy_pct=100 * sa["copy_frac"],
                                 copy_frac=sa["copy_frac"], ippl=st["init"]["val_ppl"],
                                 ppl=st["val_ppl"], **_stage(st))
            if i:
                ft = ft.replace("Then fine-tuned from that checkpoint",
                                f"Stage {i + 1}: fine-tuned again from the result")
            finetune += ft
            if _capped(st):
                note += (f"{'' if note else chr(10)}Fine-tuning stage {i + 1} too ended on its "
                         f"{sa['minutes']:g}-minute cap, at step {st['steps']} of {sa['steps']}.\n")
    if stats.get("copy"):
        copy = _copy_md(stats["copy"], stats.get("stages", []))
    text = CARD.format(
        params_m=stats["params"] / 1e6, size_mb=stats["size_bytes"] / 1e6,
        dtype_name={"f32": "F32", "bf16": "BF16"}[stats["saved_dtype"]],
        vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
        inter=cfg["intermediate_size"], expand=cfg["expand"], state=cfg["state_size"],
        rank=cfg["time_step_rank"], eos=cfg["eos_token_id"], max_len=a["seq_len"] * 8,
        ndocs=stats.get("ndocs", "?"), nchar_m=stats.get("nchar", 0) / 1e6, seed=a["seed"],
        train_tok_m=stats["train_tokens"] / 1e6, val_tok=stats["val_tokens"],
        bpt=stats.get("bytes_per_token", 0.0), **_stage(first),
        maxdiff=stats["hf_vs_ours_max_logit_diff"], finetune=finetune, copy=copy, note=note,
        hf_ppl=stats["hf_ppl_32win"], our_ppl=stats["ours_ppl_32win"],
        py=stats["versions"]["python"], torch=stats["versions"]["torch"],
        tf=stats["versions"]["transformers"], tk=stats["versions"]["tokenizers"],
        ppl=stats["val_ppl"], loss=stats["val_loss"], bpb=stats["val_bits_per_byte"],
        samples="\n".join(samples), cmd=cmd)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


def target_now(stats):
    """When the bundled model changed after the draft was distilled (acceptance measured against
    a target of another perplexity), say so beside the teacher's perplexity."""
    acc = (stats.get("acceptance") or {}).get("teacher_forced")
    tppl = stats.get("teacher", {}).get("val_ppl")
    if not acc or tppl is None or abs(acc["target_ppl"] - tppl) < 0.005:
        return ""
    return (f" when the draft was distilled, {acc['target_ppl']:.1f} now (fine-tuned since: its "
            f"model card; the agreement figures below are with the bundled model now)")


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
        now=target_now(stats),
        py=stats["versions"]["python"], torch=stats["versions"]["torch"],
        tf=stats["versions"]["transformers"], tk=stats["versions"]["tokenizers"],
        ppl=stats["val_ppl"], loss=stats["val_loss"], bpb=stats["val_bits_per_byte"],
        acceptance=acceptance_md(stats.get("acceptance"), stats.get("acceptance_text")), samples="\n".join(samples),
        cmd=" ".join(flags), stats=a.get("stats") or "models/train_stats.json")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)



HYBRID_CARD = """# {name}

An experimental hybrid made by `tools/train_copy_hybrid.py` (issue 18): recurd's bundled model
`models/recurd-mamba-tiny` as a `JambaForCausalLM` with attention added ({how}), {params_m:.2f}M
parameters, {size_mb:.1f} MB, meant to continue a passage it has seen so that n-gram drafts in
speculative decoding have something to predict. recurd does not ship it; what such runs gave is
in bench/RESULTS.md, "A copy-capable hybrid from the bundled model". Not for real use.

## Files
Ordinary Hugging Face checkpoint (`save_pretrained`): `config.json`, `generation_config.json`,
`model.safetensors` ({dtype_name}, tied embeddings), and the bundled model's `tokenizer.json` /
`tokenizer_config.json`, byte for byte.

## Architecture (config.json)
{n_layers} layers: {pattern}; hidden size {hidden}; Mamba: d_state {state}, d_conv {conv},
{channels} channels, dt rank {rank}, Jamba's RMSNorms on dt, B and C; attention at layer(s)
{attn_at}: {heads} head(s) of {head_dim} ({kv} KV), no positional encoding; dense MLPs of
{mlp}. recurd keeps the Mamba layers' conv windows and SSM states per sequence, and
{kv_bytes} bytes of KV per token per attention layer (fp32).

## Training
{threads} CPU thread(s) (`{cpu}`): {minutes} minutes, {steps} AdamW steps, batch {batch} x
{seq_len} tokens, **{tokens_m:.2f}M tokens seen**; the bundled model's training split with
`--copy-frac {copy_frac}` (`--random-frac {random_frac}`). Held-out perplexity at step 0:
{step0_ppl:.2f} (the bundled model: {base_ppl:.2f}). The saved checkpoint, reloaded with plain
`transformers`, gives the training forward's logits within {maxdiff:.1e}.

## Quality
Held-out perplexity ({val_tok} tokens, windows of {seq_len} tokens): **{ppl:.2f}** (the bundled
model: {base_ppl:.2f}). During training (64 held-out windows; teacher-forced top-1 on the
repeated part of 32 held-out passages):

| step | perplexity (64 windows) | teacher-forced copy top-1 |
|---|---|---|
{history}
{copy}
## Reproduce
```sh
apt-get install -y fortunes fortunes-min python3.11-doc gcc
python3 tools/train_copy_hybrid.py {cmd}
```
{note}Versions: torch {torch}, transformers {tf}.
"""


def _history_md(stats):
    """The rows of a train_copy_hybrid.py run's evaluations: step, perplexity, tf copy."""
    return "\n".join(f"| {h['step']} | {h['val_ppl_64win']:.2f} | {h['tf_copy']:.3f} |"
                     for h in stats["history"])


def _copy_vs_base_md(copy):
    """The copy table of a train_copy_hybrid.py model: the bundled model's rows, then its own."""
    rows = []
    for who, name in (("base", "recurd-mamba-tiny"), ("model", "this model")):
        for r in copy[who]:
            sep = r["sep"].replace("\n", "\\n")
            rows.append(f"| `{sep}` | {name} | {r['matched_prefix']:.3f} | "
                        f"{r['matched_positions']:.3f} | {r['full_copies']}/{r['passages']} | "
                        f"{r['teacher_forced_top1']:.3f} |")
    r0 = copy["model"][0]
    return COPY.format(n=r0["passages"], mlen=r0["mean_len"], rows="\n".join(rows))


GRANITE_CARD = """# {name}

recurd's copy-capable hybrid (issue 18): a small Granite 4.0-H model
(`GraniteMoeHybridForCausalLM`: Mamba2 layers and attention with RoPE) trained from a random
init by `tools/train_copy_hybrid.py --granite`, on the bundled model's training text and with
its tokenizer, with copy windows beside the text: given a passage and then its beginning again,
it continues with the rest of the passage. That is what n-gram drafts in speculative decoding
predict, and the bundled Mamba model does not do it, so this model is the target of the
copy-heavy speculation bench and tests (bench/RESULTS.md, "recurd-hybrid-tiny";
tests/integration/test_hybrid_model.py). {params_m:.2f}M parameters, {size_mb:.1f} MB, held-out
perplexity {ppl:.2f} (the bundled model: {base_ppl:.2f}). A model for tests and benchmarks, too
small for real use.

## Files
Ordinary Hugging Face checkpoint (`save_pretrained`): `config.json`, `generation_config.json`,
`model.safetensors` ({dtype_name}, tied embeddings), and the bundled model's `tokenizer.json` /
`tokenizer_config.json`, byte for byte.

## Architecture (config.json)
{n_layers} layers: {pattern}; hidden size {hidden}; Mamba2: {mheads} heads of {mhead_dim},
{groups} group(s), d_state {state}, d_conv {conv}; attention: {heads} heads of {head_dim} ({kv}
KV), RoPE (theta {theta:g}); a dense shared MLP of {mlp} on every layer. recurd keeps the Mamba2
layers' conv windows and SSM states per sequence, and {kv_bytes} bytes of KV per token per
attention layer (fp32).

## Training
{runs}

The saved checkpoint, reloaded with plain `transformers`, gives the training forward's logits
within {maxdiff:.1e}.

## Quality
Held-out perplexity ({val_tok} tokens, windows of {seq_len} tokens): **{ppl:.2f}** (the bundled
model: {base_ppl:.2f}). During the last run (64 held-out windows; teacher-forced top-1 on the
repeated part of 32 held-out passages):

| step | perplexity (64 windows) | teacher-forced copy top-1 |
|---|---|---|
{history}
{copy}
## Reproduce
```sh
apt-get install -y fortunes fortunes-min python3.11-doc gcc
{cmds}
```
Versions: torch {torch}, transformers {tf}.
"""


def write_granite_card(out, stats, cfg):
    """OUT/README.md for a train_copy_hybrid.py --granite model: the runs that made it (the
    stats' "previous_runs", oldest first, then this one), then its quality."""
    a = stats["args"]
    kinds = cfg["layer_types"]
    names = {"linear_attention": "Mamba2", "mamba": "Mamba2", "full_attention": "attention",
             "attention": "attention"}
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    base = ("python3 tools/train_copy_hybrid.py --granite {g} --mlp {m}"
            .format(g=a["granite"], m=a["mlp"]))
    runs, cmds, prev = [], [], None
    for r in stats.get("previous_runs", []) + [{
            "flags": " ".join(f"--{k.replace('_', '-')} {a[k]}" for k in
                              ("steps", "minutes", "batch", "lr", "warmup", "copy_frac",
                               "random_frac", "induction_steps", "seed", "threads")),
            "steps": stats["steps"], "tokens_m": stats["tokens_seen"] / 1e6,
            "minutes": stats["train_minutes"], "what": stats.get("what", "")}]:
        out_dir = f"build/granite-run{len(runs) + 1}"
        resume = f" --resume {prev}" if prev else ""
        cmds.append(f"{base} {r['flags']}{resume} --out {out_dir}")
        runs.append(f"{len(runs) + 1}. {r['minutes']} minutes, {r['steps']} AdamW steps, "
                    f"**{r['tokens_m']:.2f}M tokens**{': ' + r['what'] if r['what'] else ''}")
        prev = out_dir
    cmds[-1] += f" --dtype {a['dtype']}"
    runs_text = (f"{a['threads']} CPU thread(s) in the last run (`{stats.get('cpu', '?')}`), "
                 f"batch {a['batch']} x {a['seq_len']} tokens; each run resumes the last one's "
                 "weights (`--resume`, a fresh optimizer and schedule):\n\n" + "\n".join(runs))
    text = GRANITE_CARD.format(
        name=os.path.basename(out.rstrip("/")), params_m=stats["params"] / 1e6,
        size_mb=stats["size_bytes"] / 1e6, ppl=stats["val_ppl"], base_ppl=stats["base_val_ppl"],
        dtype_name={"f32": "F32", "bf16": "BF16"}[stats["saved_dtype"]],
        n_layers=len(kinds), pattern=", ".join(names.get(k, k) for k in kinds),
        hidden=cfg["hidden_size"], mheads=cfg["mamba_n_heads"], mhead_dim=cfg["mamba_d_head"],
        groups=cfg["mamba_n_groups"], state=cfg["mamba_d_state"], conv=cfg["mamba_d_conv"],
        heads=cfg["num_attention_heads"], head_dim=head_dim, kv=cfg["num_key_value_heads"],
        theta=(cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 0)),
        mlp=cfg["shared_intermediate_size"], kv_bytes=2 * cfg["num_key_value_heads"] * head_dim * 4,
        runs=runs_text, maxdiff=stats["hf_vs_train_max_logit_diff"], val_tok=stats["val_tokens"],
        seq_len=a["seq_len"], history=_history_md(stats),
        copy=_copy_vs_base_md(stats["copy"]),
        cmds="\n".join(cmds), torch=stats["versions"]["torch"],
        tf=stats["versions"]["transformers"])
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


def write_hybrid_card(out, stats):
    """OUT/README.md for a train_copy_hybrid.py run, from its train_stats_hybrid.json."""
    a = stats["args"]
    cfg = json.load(open(os.path.join(out, "config.json")))
    if cfg.get("model_type") == "granitemoehybrid":
        return write_granite_card(out, stats, cfg)
    types = ["attention" if i % cfg["attn_layer_period"] == cfg["attn_layer_offset"] else "Mamba"
             for i in range(cfg["num_hidden_layers"])]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    copy = _copy_vs_base_md(stats["copy"])
    hist = _history_md(stats)
    keys = ["wire", "wire_prev", "wire_proj", "wire_scale", "wire_beta", "wire_gamma"] if a.get(
        "wire") else ["attn_at", "attn_period", "heads", "kv_heads"]
    keys += ["mlp", "steps", "minutes", "batch", "lr", "lr_old", "warmup", "copy_frac",
             "random_frac", "induction_steps", "induction_len", "seed", "threads", "dtype"]
    flags = [f"--out {a['out']}"]
    for k in keys:
        if k == "wire":
            flags.append("--wire")
        elif k in a:
            flags.append(f"--{k.replace('_', '-')} {a[k]}")
    note = ""
    if stats["steps"] < a["steps"]:
        note = (f"The {a['minutes']:g}-minute cap, not the {a['steps']}-step count, ended the "
                f"schedule (at step {stats['steps']}).\n")
    text = HYBRID_CARD.format(
        name=os.path.basename(out.rstrip("/")),
        how="a wired induction circuit, `--wire`" if a.get("wire") else "warm-started, `--attn-at`",
        params_m=stats["params"] / 1e6, size_mb=stats["size_bytes"] / 1e6,
        dtype_name={"f32": "F32", "bf16": "BF16"}[stats["saved_dtype"]],
        n_layers=cfg["num_hidden_layers"], pattern=", ".join(types), hidden=cfg["hidden_size"],
        state=cfg["mamba_d_state"], conv=cfg["mamba_d_conv"],
        channels=cfg["mamba_expand"] * cfg["hidden_size"], rank=cfg["mamba_dt_rank"],
        attn_at=", ".join(str(i) for i, t in enumerate(types) if t == "attention"),
        heads=cfg["num_attention_heads"], head_dim=head_dim, kv=cfg["num_key_value_heads"],
        mlp=cfg["intermediate_size"], kv_bytes=2 * cfg["num_key_value_heads"] * head_dim * 4,
        threads=a["threads"], cpu=stats.get("cpu", "?"), minutes=stats["train_minutes"],
        steps=stats["steps"], batch=a["batch"], seq_len=a["seq_len"],
        tokens_m=stats["tokens_seen"] / 1e6, copy_frac=a["copy_frac"],
        random_frac=a.get("random_frac", 0.0), step0_ppl=stats["step0_val_ppl"],
        base_ppl=stats["base_val_ppl"], maxdiff=stats["hf_vs_train_max_logit_diff"],
        val_tok=stats["val_tokens"], ppl=stats["val_ppl"], history=hist, copy=copy,
        cmd=" ".join(flags), note=note, torch=stats["versions"]["torch"],
        tf=stats["versions"]["transformers"])
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)
