#!/usr/bin/env python3
"""Generates the tokenizer parity fixtures under tests/golden/tokenizer/.

Trains small tokenizers of each supported kind with Hugging Face `tokenizers`, builds a
seeded corpus of >= 10,000 strings (English, code, whitespace runs, numbers, CJK, emoji,
combining marks, control characters, added tokens, random Unicode) and records what HF
encodes each string to, and what HF decodes those ids back to.

Usage:  /opt/rcdvenv/bin/python tools/gen_tok_fixtures.py [--out tests/golden/tokenizer]
        [--models models]   (every models/*/tokenizer.json found gets a parity kind too)
        tools/gen_tok_fixtures.py --show KIND INDEX   (HF's encoding of one corpus string)
        tools/gen_tok_fixtures.py --sweep /tmp/sweep  (all code points; not committed)
        tools/gen_tok_fixtures.py --unicode /tmp/ucd-17.0.0  (every assigned code point:
                              unicode.cps, <kind>/unicode.bin; see tools/gen_tok_unicode.py)

Files written (all little-endian, "varint" = unsigned LEB128):
  corpus.bin            b"RCDTOKC1", u32 count, then per string: varint len, bytes (UTF-8)
  <kind>/tokenizer.json, <kind>/tokenizer_config.json   (trained kinds)
  <kind>/source         one line: path of the tokenizer (dir) relative to the repo root
                        (kinds that test a tokenizer living elsewhere, e.g. models/*)
  <kind>/source.fnv1a32 FNV-1a 32 of that tokenizer.json, so a retrained one is reported as
                        stale fixtures rather than as mismatches
  <kind>/expected.bin   b"RCDTOKE2", u32 count, u32 every, then per string:
                          u8 flags  bit0: encoded with add_special_tokens=True
                                    bit1: HF round-trips it: decode(encode(s, False)) == s
                                    bit2: the full ids follow (every `every`-th string)
                          varint n_ids, u32 fnv1a32(ids as u32 LE), u32 fnv1a32(HF decode)
                          [if bit2: n_ids x varint id]
Decoding is always with skip_special_tokens=False. Hashes keep the fixtures small (the full
ids of 10,000 strings x 5 kinds are ~2 MB); on a mismatch, print HF's ids with
    tools/gen_tok_fixtures.py --show KIND INDEX
"""
import argparse
import json
import os
import random
import struct
import sys
import unicodedata

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

N_STRINGS = 10_000
FEATURE_STRINGS = 1_000
CORPUS_SEED = 20240601

# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------

WORDS = """the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by hot word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write would
like so these her long make thing see him two has look more day could go come did number
sound no most people my over know water than call first who may down side been now find any
new work part take get place made live where after back little only round man year came show
every good me give our under name very through just form sentence great think say help low
line differ turn cause much mean before move right boy old too same tell does set three want
air well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left late
run don't while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until mile
river car feet care second book carry took science eat room friend began idea fish mountain
stop once base hear horse cut sure watch color face wood main enough plain girl usual young
ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb
sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final
gave green oh quick develop ocean warm free minute strong special mind behind clear tail
produce fact street inch multiply nothing course stay wheel full force blue object decide
surface deep moon island foot system busy test record boat common gold possible plane stead
dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring
yes distant fill east paint language among grand ball yet wave drop heart am present heavy
dance engine position arm wide sail material size vary settle speak weight general ice matter
circle pair include divide syllable felt perhaps pick sudden count square reason length
represent art subject region energy hunt probable bed brother egg ride cell believe fraction
forest sit race window store summer train sleep prove lone leg exercise wall catch mount wish
sky board joy winter sat written wild instrument kept glass grass cow job edge sign visit past
soft fun bright gas weather month million bear finish happy hope flower clothe strange gone
jump baby eight village meet root buy raise solve metal whether push seven paragraph third
shall held hair describe cook floor either result burn hill safe cat century consider type
law bit coast copy phrase silent tall sand soil roll temperature finger industry value fight
lie beat excite natural view sense ear else quite broke case middle kill son lake moment
scale loud spring observe child straight consonant nation dictionary milk speed method organ
pay age section dress cloud surprise quiet stone tiny climb cool design poor lot experiment
bottom key iron single stick flat twenty skin smile crease hole trade melody trip office
receive row mouth exact symbol die least trouble shout except wrote seed tone join suggest
clean break lady yard rise bad blow oil blood touch grew cent mix team wire cost lost brown
wear garden equal sent choose fell fit flow fair bank collect save control decimal gentle
woman captain practice separate difficult doctor please protect noon whose locate ring
character insect caught period indicate radio spoke atom human history effect electric expect
crop modern element hit student corner party supply bone rail imagine provide agree thus
capital won't chair danger fruit rich thick soldier process operate guess necessary sharp
wing create neighbor wash bat rather crowd corn compare poem string bell depend meat rub tube
famous dollar stream fear sight thin triangle planet hurry chief colony clock mine tie enter
major fresh search send yellow gun allow print dead spot desert suit current lift rose
continue block chart hat sell success company subtract event particular deal swim term
opposite wife shoe shoulder spread arrange camp invent cotton born determine quart nine truck
noise level chance gather shop stretch throw shine property column molecule select wrong gray
repeat require broad prepare salt nose plural anger claim continent oxygen sugar death pretty
skill women season solution magnet silver thank branch match suffix especially fig afraid
huge sister steel discuss forward similar guide experience score apple bought led pitch coat
mass card band rope slip win dream evening condition feed tool total basic smell valley nor
double seat arrive master track parent shore division sheet substance favor connect post
spend chord fat glad original share station dad bread charge proper bar offer segment slave
duck instant market degree populate chick dear enemy reply drink occur support speech nature
range steam motion path liquid log meant quotient teeth shell neck""".split()

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "n't", "'S", "'LL", "’s", "’re"]
PUNCT = list(".,;:!?") + ["...", " -", " —", " –", "?!", "!!", ")", "\"", "'"]
NAMES = ["Alice", "Bob", "Mamba", "Granite", "Gemma", "Llama", "GPT-NeoX", "Zoë", "José",
         "Müller", "François", "Ærøskøbing", "São Paulo", "Kraków", "Dvořák", "İstanbul"]

CJK_PHRASES = ["你好，世界！", "我们今天去公园散步。", "机器学习模型", "東京都渋谷区", "こんにちは、元気ですか？",
               "ありがとうございます", "カタカナとひらがな", "안녕하세요 여러분", "한국어 문장입니다.",
               "繁體中文測試", "「引用」と『二重引用』", "１２３４５６７８９０", "ＡＢＣｄｅｆ", "（全角括弧）",
               "中文，标点；符号：“引号”", "日本語の文章です。", "汉字和English混合", "第３章　第二節",
               "ｶﾀｶﾅ ﾊﾝｶｸ", "㈱㍿㌔㎞"]

EMOJI = ["😀", "😂", "🥲", "❤️", "❤", "👍", "👍🏽", "👍🏿", "🙏", "🔥", "✨", "🎉", "🚀", "🤖", "🧠",
         "👨‍👩‍👧‍👦", "👩‍💻", "🏳️‍🌈", "🇺🇸", "🇯🇵", "🇩🇪", "1️⃣", "#️⃣", "©️", "™️", "☺️", "✌🏻",
         "🫠", "🦀", "🐍", "💯", "⚡", "☕", "🌍", "🎵", "👀", "🙈", "🧑🏾‍🚀", "👁️‍🗨️", "🏴‍☠️"]

COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u0483", "\u0591", "\u05b4", "\u0610",
             "\u064b", "\u064e", "\u0650", "\u093c", "\u094d", "\u0951", "\u0e31", "\u0e48",
             "\u1ab0", "\u1dc0", "\u20d0", "\u20e3", "\ufe0f", "\ufe0e", "\u302a", "\u3099"]

CONTROLS = [chr(c) for c in range(0, 0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xa0)] + \
    ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029", "\u2060", "\ufeff",
     "\u00ad", "\u061c", "\u180e", "\u202a", "\u202e", "\ufff9", "\ufffc", "\ufffd"]

SPACES = [" ", " ", " ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0",
          "\u3000", "\u2009", "\u2002", "\u202f", "\u205f", "\x0b", "\x0c", "\x85", "\u1680",
          "        ", "\t\t", " \n ", "\n    ", "\n\t"]

# Added/special token strings of every kind, so each kind sees its own and the others' (which
# it must tokenize as plain text), plus look-alikes.
SPECIALS = ["<|endoftext|>", "<|padding|>", "<|begin_of_text|>", "<|eot_id|>", "<bos>", "<eos>",
            "<pad>", "<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "<mask>",
            "[WORD]", "<0x41>", "<0xE2>", "<|endoftext", "<|", "|>", "<s >", "    ", "\t\t"]

# Code point ranges assigned since Unicode 6 and stable in category and normalization, so
# that PCRE2/utf8proc and HF's Oniguruma/unicode-normalization agree on them.
RANDOM_RANGES = [
    (0x20, 0x7e), (0xa1, 0x24f), (0x250, 0x2af), (0x370, 0x3ff), (0x400, 0x4ff), (0x5d0, 0x5ea),
    (0x620, 0x64a), (0x660, 0x669), (0x905, 0x939), (0x966, 0x96f), (0xe01, 0xe30),
    (0x10a0, 0x10c5), (0x1100, 0x1112), (0x1161, 0x1175), (0x1e00, 0x1eff), (0x2000, 0x206f),
    (0x2070, 0x209c), (0x20a0, 0x20bf), (0x2100, 0x214f), (0x2150, 0x218b), (0x2190, 0x21ff),
    (0x2200, 0x22ff), (0x2460, 0x24ff), (0x2500, 0x257f), (0x25a0, 0x25ff), (0x2600, 0x26ff),
    (0x3001, 0x303f), (0x3041, 0x3096), (0x30a1, 0x30fa), (0x3131, 0x318e), (0x3200, 0x32fe),
    (0x3300, 0x33ff), (0x4e00, 0x9fa5), (0xac00, 0xd7a3), (0xf900, 0xfa2d), (0xfb00, 0xfb06),
    (0xfe30, 0xfe4f), (0xff01, 0xffbe), (0x1d400, 0x1d6a5), (0x1f300, 0x1f5ff),
    (0x1f600, 0x1f64f), (0x1f680, 0x1f6c5), (0x20000, 0x2a6d6),
]


def rand_cp(rng):
    lo, hi = rng.choice(RANDOM_RANGES)
    while True:
        c = chr(rng.randint(lo, hi))
        if unicodedata.category(c) not in ("Cn", "Cs", "Co"):
            return c


def english(rng):
    n = rng.randint(1, 14)
    out = []
    for i in range(n):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.08:
            w = w.capitalize()
        elif r < 0.1:
            w = w.upper()
        elif r < 0.13:
            w = rng.choice(NAMES)
        if rng.random() < 0.06:
            w += rng.choice(CONTRACTIONS)
        out.append(w)
        if rng.random() < 0.12:
            out[-1] += rng.choice(PUNCT)
    s = " ".join(out)
    if rng.random() < 0.7:
        s = s[0].upper() + s[1:] + rng.choice([".", "!", "?", "", "..."])
    return s


def ident(rng):
    parts = [rng.choice(WORDS).replace("'", "") for _ in range(rng.randint(1, 3))]
    style = rng.randrange(3)
    if style == 0:
        return "_".join(parts)
    if style == 1:
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    return "".join(p.capitalize() for p in parts)


def code(rng):
    ind = rng.choice(["    ", "\t", "  ", "        "])
    a, b, c = ident(rng), ident(rng), ident(rng)
    n = rng.randint(0, 999)
    t = rng.randrange(12)
    if t == 0:
        return f"def {a}({b}, {c}=None):\n{ind}return {b} + {n}\n"
    if t == 1:
        return f"for (int i = 0; i < {n}; ++i) {{\n{ind}{a}[i] = {b}(i) * 0x{n:x};\n}}"
    if t == 2:
        return f"const {a} = async ({b}) => {{ await {c}({b}?.x ?? {n}); }};"
    if t == 3:
        return f"if {a} == {n} and not {b}:\n{ind}raise ValueError(f\"bad {{{c}!r}}\")"
    if t == 4:
        return f"#include <stdio.h>\nint main(void) {{ printf(\"%d\\n\", {n}); return 0; }}"
    if t == 5:
        return f"{a} = [{b} ** 2 for {b} in range({n}) if {b} % 3 != 0]  # {c}"
    if t == 6:
        return f"SELECT {a}, COUNT(*) FROM {b} WHERE {c} >= {n} GROUP BY {a};"
    if t == 7:
        return f"<div class=\"{a}\"><a href=\"https://example.com/{b}?q={n}&x=1\">{c}</a></div>"
    if t == 8:
        return f"{{\"{a}\": [{n}, {n / 7:.3f}, true, null], \"{b}\": \"{c}\"}}"
    if t == 9:
        return f"fn {a}(&mut self, {b}: &[u8]) -> Result<usize, Error> {{\n{ind}Ok({b}.len())\n}}"
    if t == 10:
        return f"$ git commit -m \"{a}: fix {b}\" && make -j{n % 16 + 1} {c}\n"
    return f"    {a}->{b} = ({c} << {n % 31}) | ~{n} & 0xFFu; /* {ident(rng)} */"


def number(rng):
    t = rng.randrange(9)
    if t == 0:
        return str(rng.randint(0, 10 ** rng.randint(1, 15)))
    if t == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}"
    if t == 2:
        return f"{rng.randint(0, 10**9):,}"
    if t == 3:
        return f"{rng.random():.3e}"
    if t == 4:
        return f"{rng.randint(1900, 2099)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if t == 5:
        return f"+1 ({rng.randint(200, 999)}) {rng.randint(100, 999)}-{rng.randint(0, 9999):04d}"
    if t == 6:
        return f"0x{rng.getrandbits(32):08X}"
    if t == 7:
        return f"{rng.randint(0, 100)}% of {rng.randint(1, 10**6)} items cost ${rng.uniform(0, 1e4):.2f}"
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))


def whitespace(rng):
    out = []
    for _ in range(rng.randint(1, 8)):
        out.append(rng.choice(SPACES) * rng.randint(1, 3))
        if rng.random() < 0.6:
            out.append(rng.choice(WORDS))
    return "".join(out)


def cjk(rng):
    out = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.5:
            out.append(rng.choice(CJK_PHRASES))
        else:
            lo, hi = rng.choice([(0x4e00, 0x9fa5), (0x3041, 0x3096), (0x30a1, 0x30fa),
                                 (0xac00, 0xd7a3)])
            out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
        if rng.random() < 0.3:
            out.append(rng.choice([" ", "、", "。", " abc ", "123", "\n"]))
    return "".join(out)


def emoji(rng):
    out = []
    for _ in range(rng.randint(1, 6)):
        out.append(rng.choice(EMOJI))
        if rng.random() < 0.4:
            out.append(rng.choice([" ", "", "!", " " + rng.choice(WORDS) + " "]))
    return "".join(out)


def combining(rng):
    out = []
    for _ in range(rng.randint(1, 6)):
        t = rng.randrange(4)
        if t == 0:  # base + marks, possibly several stacked (and out of canonical order)
            out.append(rng.choice("aeiouyncsAEIOUNCS") +
                       "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4))))
        elif t == 1:  # decomposed words that NFC recomposes
            out.append(unicodedata.normalize("NFD", rng.choice(NAMES + ["café", "naïve", "résumé",
                                                                          "Ångström", "coöperate"])))
        elif t == 2:  # Hangul jamo, Devanagari, Arabic, Thai with marks
            out.append(rng.choice(["\u1112\u1161\u11ab", "\u1100\u1173\u11af", "क्षत्रिय", "हिन्दी",
                                   "مَرْحَبًا", "السَّلَامُ", "ภาษาไทย", "ผู้ใหญ่", "שָׁלוֹם",
                                   "ǅ", "ﬁﬂ", "Å", "Ω", "ẛ̣", "ḱṷṓn"]))
        else:
            out.append(rng.choice(COMBINING))  # a lone mark
        if rng.random() < 0.5:
            out.append(" ")
    return "".join(out)


def controls(rng):
    out = []
    for _ in range(rng.randint(1, 6)):
        out.append("".join(rng.choice(CONTROLS) for _ in range(rng.randint(1, 3))))
        if rng.random() < 0.6:
            out.append(rng.choice(WORDS) + rng.choice(["", " "]))
    return "".join(out)


def specials(rng):
    out = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice(SPECIALS))
        elif r < 0.8:
            out.append(rng.choice(WORDS))
        else:
            out.append(rng.choice(SPACES))
        if rng.random() < 0.5:
            out.append(rng.choice([" ", "", "\n", "  ", "x"]))
    return "".join(out)


def random_unicode(rng):
    return "".join(rand_cp(rng) for _ in range(rng.randint(1, 24)))


def mixed(rng):
    gens = [english, code, number, whitespace, cjk, emoji, combining, controls, specials,
            random_unicode]
    return rng.choice(["", " ", "\n", "  "]).join(rng.choice(gens)(rng)
                                                  for _ in range(rng.randint(2, 3)))


GENERATORS = [(english, 20), (code, 12), (number, 8), (whitespace, 8), (cjk, 8), (emoji, 7),
              (combining, 7), (controls, 6), (specials, 8), (random_unicode, 6), (mixed, 10)]

EDGE_CASES = ["", " ", "  ", "\n", "\t", "a", " a", "a ", "  a  ", "▁", "▁▁a", " ▁", "Ġ",
              "<|endoftext|>", " <|endoftext|> ", "<|endoftext|><|endoftext|>", "<bos>", "<s>",
              "<s><s>", "</s> x", "a<s>b", "<start_of_turn>user\nhi<end_of_turn>", "[WORD]",
              "a[WORD]b", " [WORD] ", "x    y", "x        y", "\t\tx", "<mask>", "a <mask> b",
              "a  <mask>  b", "\x00", "\x00\x01\x02", "\ufeffBOM", "e\u0301", "\u0301",
              "\U0001F600", "a\U0001F600b", "𝐀𝐁𝐂", "ﬁ", "①②③", "½", "Ⅻ", "㎏", "ｶﾞ",
              "don't", "DON'T", "I'm", "we'll", "it’s", "'s", "''", "'", "1234567890",
              "3.14159", "   leading", "trailing   ", "\r\n\r\n", " \n \n", "\n\n\n\n\n\n",
              "\u3000\u3000", "\u00a0x", "x\u00a0\u00a0y", "\u1680", "\x85", "\u2028"]


def gen_string(rng):
    r = rng.random() * sum(w for _, w in GENERATORS)
    for g, w in GENERATORS:
        r -= w
        if r < 0:
            return g(rng)
    return GENERATORS[-1][0](rng)


def make_corpus(seed, n):
    rng = random.Random(seed)
    out = list(EDGE_CASES)
    # A few long strings: long words, whitespace runs and mixed text.
    out.append("a" * 3000)
    out.append(" " * 2000 + "x")
    out.append("\n".join(english(rng) for _ in range(40)))
    out.append("".join(code(rng) for _ in range(15)))
    out.append("".join(rand_cp(rng) for _ in range(400)))
    while len(out) < n:
        out.append(gen_string(rng))
    return out


def training_text(seed, n):
    """Lines to train the fixture tokenizers on. NUL is left out: cJSON cannot hold a "\u0000"
    vocab entry, so tok_load refuses such files (no real checkpoint has one)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            lines.append(english(rng))
        elif r < 0.7:
            lines.append(code(rng))
        else:
            lines.append(gen_string(rng))
    return [line.replace("\x00", "") for line in lines]


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_bytelevel(lines, vocab_size, specials):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(lines, tr)
    return json.loads(tok.to_str())


def train_sentencepiece(lines, vocab_size, specials):
    """A SentencePiece-style BPE: words carry a leading '▁', rare characters fall back to
    <0xXX> byte tokens that live in the model vocabulary (not in added_tokens)."""
    # Rare characters are dropped from the training text (rather than using the trainer's
    # limit_alphabet, whose ties are broken in hash order, which is not reproducible).
    counts = {}
    for line in lines:
        for c in line:
            counts[c] = counts.get(c, 0) + 1
    lines = ["".join(c for c in line if counts[c] >= 20) for line in lines]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tr = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                             show_progress=False)
    tok.train_from_iterator(lines, tr)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    new = {}
    for s in specials:
        new[s] = len(new)
    for b in range(256):
        new[f"<0x{b:02X}>"] = len(new)
    for t, _ in ordered:
        if t not in new:
            new[t] = len(new)
    j["model"]["vocab"] = new
    j["added_tokens"] = [dict(a, id=new[a["content"]]) for a in j["added_tokens"]]
    return j


def added(tid, content, special=True, normalized=None, lstrip=False, rstrip=False,
          single_word=False):
    return {"id": tid, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": (not special) if normalized is None else normalized,
            "special": special}


def template(bos_name, bos_id, eos=None):
    single = [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
    sp = {bos_name: {"id": bos_name, "ids": [bos_id], "tokens": [bos_name]}}
    if eos:
        single = single + [{"SpecialToken": {"id": eos[0], "type_id": 0}}]
        sp[eos[0]] = {"id": eos[0], "ids": [eos[1]], "tokens": [eos[0]]}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": sp}


def build_kinds(train_lines):
    kinds = {}
    bl = train_bytelevel(train_lines, 2000, ["<|endoftext|>", "<|padding|>"])
    n = len(bl["model"]["vocab"])

    # (a) GPT-NeoX style (Mamba, Pythia): NFC + ByteLevel, whitespace-run added tokens that
    # are normalized and not special, a single_word one and an lstrip/rstrip one.
    neox = json.loads(json.dumps(bl))
    neox["added_tokens"] += [added(n, "    ", special=False), added(n + 1, "\t\t", special=False),
                             added(n + 2, "[WORD]", special=False, single_word=True),
                             added(n + 3, "<mask>", special=True, lstrip=True, rstrip=True)]
    neox["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True}
    kinds["neox"] = (neox, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                            "add_prefix_space": False, "model_max_length": 2048})

    # (a') Llama-3 / Granite style: NFKC, Split(regex) + ByteLevel(use_regex=false),
    # ignore_merges, <|begin_of_text|> prepended by TemplateProcessing.
    l3 = json.loads(json.dumps(bl))
    l3["normalizer"] = {"type": "NFKC"}
    l3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    l3["model"]["ignore_merges"] = True
    l3["added_tokens"] += [added(n, "<|begin_of_text|>"), added(n + 1, "<|eot_id|>")]
    l3["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        template("<|begin_of_text|>", n)]}
    kinds["bytelevel_split"] = (l3, {
        "bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>", "special": True},
        "chat_template": "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|eot_id|>{% endfor %}"})

    sp_specials = ["<unk>", "<s>", "</s>", "<pad>"]
    sp = train_sentencepiece(train_lines, 2000, sp_specials)
    m = len(sp["model"]["vocab"])
    replace_sp = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    sp_dec = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}

    # (b) Gemma style: Replace(" ", "▁") only, no pre-tokenizer, byte fallback, <bos> template.
    gemma = json.loads(json.dumps(sp))
    gemma["normalizer"] = replace_sp
    gemma["pre_tokenizer"] = None
    gemma["decoder"] = sp_dec
    gemma["added_tokens"] += [added(m, "<start_of_turn>"), added(m + 1, "<end_of_turn>")]
    gemma["post_processor"] = template("<s>", 1)
    kinds["gemma"] = (gemma, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                              "chat_template": "{{ bos_token }}{% for m in messages %}"
                                               "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                                               "<end_of_turn>\n{% endfor %}"})

    # (b') Llama-2 style: Prepend("▁") + Replace, decoder strips the first space.
    llama = json.loads(json.dumps(sp))
    llama["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, replace_sp]}
    llama["pre_tokenizer"] = None
    llama["decoder"] = {"type": "Sequence", "decoders": sp_dec["decoders"] + [
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    llama["post_processor"] = template("<s>", 1, eos=("</s>", 2))
    kinds["llama"] = (llama, {"bos_token": {"content": "<s>", "lstrip": False},
                              "eos_token": "</s>", "add_bos_token": True})

    # (b'') Metaspace pre-tokenizer (prepend_scheme "first", split), no byte fallback:
    # unknown characters become a fused <unk>.
    ms = json.loads(json.dumps(sp))
    ms["model"]["byte_fallback"] = False
    ms["normalizer"] = None
    ms["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                           "split": True}
    ms["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                     "split": True}
    ms["post_processor"] = template("<s>", 1)
    kinds["metaspace"] = (ms, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return kinds


def small_bpe(lines, vocab_size, specials, **model_kw):
    """A small BPE for the feature kinds; rare characters are dropped from the training text
    (see train_sentencepiece)."""
    counts = {}
    for line in lines:
        for c in line:
            counts[c] = counts.get(c, 0) + 1
    lines = ["".join(c for c in line if counts[c] >= 20) for line in lines]
    tok = Tokenizer(models.BPE(**model_kw))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    kw = {k: v for k, v in model_kw.items() if k in ("continuing_subword_prefix",
                                                     "end_of_word_suffix")}
    if kw:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+"), "removed")
    tr = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                             show_progress=False, **kw)
    tok.train_from_iterator(lines, tr)
    return json.loads(tok.to_str())


def affix_bpe(lines, n_merges, specials, prefix="##", suffix="</w>"):
    """A BPE with continuing_subword_prefix and end_of_word_suffix, trained here rather than
    by HF's trainer, whose ties between equal counts (and so its merges) vary from run to
    run with these options. Ties go to the smallest pair, so the result is reproducible."""
    counts = {}
    for line in lines:
        for c in line:
            counts[c] = counts.get(c, 0) + 1
    words = {}
    for line in lines:
        for w in "".join(c for c in line if counts[c] >= 20).split():
            words[w] = words.get(w, 0) + 1

    def symbols(w):
        out = [c if i == 0 else prefix + c for i, c in enumerate(w)]
        out[-1] += suffix
        return out

    seqs = {w: symbols(w) for w in words}
    alphabet = sorted({t for seq in seqs.values() for t in seq})
    merges = []
    for _ in range(n_merges):
        pairs = {}
        for w, seq in seqs.items():
            for x, y in zip(seq, seq[1:]):
                pairs[(x, y)] = pairs.get((x, y), 0) + words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        x, y = best
        new = x + (y[len(prefix):] if y.startswith(prefix) else y)
        merges.append(best)
        for w, seq in seqs.items():
            i, out = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == x and seq[i + 1] == y:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    vocab = {}
    for t in specials + alphabet + [x + (y[len(prefix):] if y.startswith(prefix) else y)
                                    for x, y in merges]:
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=specials[0],
                               continuing_subword_prefix=prefix, end_of_word_suffix=suffix))
    tok.add_special_tokens(specials)
    return json.loads(tok.to_str())


def build_feature_kinds(train_lines):
    """Small tokenizers that exercise the components and options the main kinds do not use;
    checked on the first FEATURE_STRINGS strings of the corpus, with full ids."""
    kinds = {}
    lines = train_lines[:8000]

    # WordPiece-like affixes, [UNK] without fusing, Bert post-processing, no decoder.
    a = affix_bpe(lines, 400, ["[UNK]", "[CLS]", "[SEP]"])
    a["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFD"}, {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}]}
    a["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "Split", "pattern": {"Regex": r"\p{P}+"}, "behavior": "Isolated",
         "invert": False}]}
    a["decoder"] = None
    a["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]}
    kinds["feat-affixes"] = (a, {"bos_token": "[CLS]", "eos_token": "[SEP]"})

    # Byte-level with every Split behavior, grouped digits, prefix space, NFKD, Roberta.
    b = train_bytelevel(lines, 600, ["<s>", "</s>", "<pad>"])
    b["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKD"}, {"type": "Replace", "pattern": {"String": "ﬀ"}, "content": "ff"}]}
    b["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\p{N}+"}, "behavior": "MergedWithNext",
         "invert": False},
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Contiguous", "invert": True},
        {"type": "Split", "pattern": {"Regex": r"[\r\n]"}, "behavior": "Isolated",
         "invert": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
         "use_regex": True}]}
    b["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        {"type": "Replace", "pattern": {"Regex": r"x+"}, "content": "X"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    b["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0],
                           "trim_offsets": True, "add_prefix_space": True}
    kinds["feat-splits"] = (b, {"bos_token": "<s>", "eos_token": "</s>"})

    # Metaspace "always" without split, NFKC, byte fallback; Metaspace "never" with split.
    c = small_bpe(lines, 600, ["<unk>", "<s>", "</s>"], unk_token="<unk>", byte_fallback=True,
                  fuse_unk=True)
    vocab = c["model"]["vocab"]
    for bt in range(256):
        vocab.setdefault(f"<0x{bt:02X}>", len(vocab))
    c["normalizer"] = {"type": "NFKC"}
    c["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                          "split": False}
    c["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁",
                                   "prepend_scheme": "always", "split": False},
        {"type": "Fuse"}]}
    c["post_processor"] = template("<s>", 1, eos=("</s>", 2))
    kinds["feat-metaspace-always"] = (c, {"bos_token": "<s>", "eos_token": "</s>"})

    d = json.loads(json.dumps(c))
    d["normalizer"] = None
    d["model"]["ignore_merges"] = True
    d["model"]["fuse_unk"] = False
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never",
                          "split": True}
    d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never",
                    "split": True}
    d["post_processor"] = None
    kinds["feat-metaspace-never"] = (d, {})
    return kinds


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_corpus(path, corpus):
    with open(path, "wb") as f:
        f.write(b"RCDTOKC1" + struct.pack("<I", len(corpus)))
        for s in corpus:
            b = s.encode("utf-8")
            f.write(varint(len(b)) + b)


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


SAMPLE_EVERY = 64


def expected_record(tok, i, s):
    add_special = (i % 2 == 0)
    ids = tok.encode(s, add_special_tokens=add_special).ids
    dec = tok.decode(ids, skip_special_tokens=False)
    plain = tok.encode(s, add_special_tokens=False).ids if add_special else ids
    rt = tok.decode(plain, skip_special_tokens=False) == s
    return add_special, ids, dec, rt


def write_expected(path, tok, corpus, every=SAMPLE_EVERY):
    out = bytearray(b"RCDTOKE2" + struct.pack("<II", len(corpus), every))
    n_rt = 0
    for i, s in enumerate(corpus):
        add_special, ids, dec, rt = expected_record(tok, i, s)
        full = i % every == 0
        n_rt += rt
        out.append((1 if add_special else 0) | (2 if rt else 0) | (4 if full else 0))
        out += varint(len(ids))
        out += struct.pack("<II", fnv1a32(struct.pack(f"<{len(ids)}I", *ids)),
                           fnv1a32(dec.encode("utf-8")))
        if full:
            out += b"".join(varint(x) for x in ids)
    with open(path, "wb") as f:
        f.write(out)
    return n_rt


def write_units(path, kinds_dir, corpus):
    """Cases for options the corpus kinds are not encoded with: HF's encode_special_tokens
    (TOK_SPLIT_SPECIAL) and decode(skip_special_tokens=True) (TOK_SKIP_SPECIAL)."""
    texts = [s for s in EDGE_CASES if any(t in s for t in SPECIALS)]
    texts += [f"a {t} b" for t in SPECIALS] + [t + t for t in SPECIALS]
    texts += [s for s in corpus[:3000] if any(t in s for t in SPECIALS[:13])][:20]
    cases = []
    for kind in ["neox", "bytelevel_split", "gemma", "llama"]:
        tok = Tokenizer.from_file(os.path.join(kinds_dir, kind, "tokenizer.json"))
        for t in texts:
            tok.encode_special_tokens = False
            ids = tok.encode(t, add_special_tokens=True).ids
            tok.encode_special_tokens = True
            split = tok.encode(t, add_special_tokens=False).ids
            cases.append({"kind": kind, "text": t, "ids": ids, "split_special_ids": split,
                          "skip_special_decoded": tok.decode(ids, skip_special_tokens=True)})
    # Tiny inline tokenizers: Metaspace "first" after normalizers that drop or insert leading
    # characters (HF then tests where the first character came from in the original).
    inline = {}
    vocab = {"a": 0, "▁": 1, "h": 2, "b": 3, "x": 4, "▁h": 5, " ": 6, "<s>": 7}
    for name, norm in [("none", None), ("strip", normalizers.Strip()),
                       ("replace-empty", normalizers.Replace("x", "")),
                       ("replace", normalizers.Replace("x", "b")),
                       ("strip-prepend", normalizers.Sequence([normalizers.Strip(),
                                                               normalizers.Prepend("a")])),
                       ("prepend-strip", normalizers.Sequence([normalizers.Prepend(" "),
                                                               normalizers.Strip()]))]:
        tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=[("▁", "h")]))
        tok.normalizer = norm
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        tok.add_special_tokens(["<s>"])
        inline["metaspace-first-" + name] = tok.to_str()
        for t in ["  h", "h", "xh", "xxh  ", " ", "<s>h", "<s> h", "h<s>h", " x h"]:
            ids = tok.encode(t, add_special_tokens=True).ids
            cases.append({"kind": "inline:metaspace-first-" + name, "text": t, "ids": ids,
                          "split_special_ids": tok.encode(t, add_special_tokens=False).ids
                          if "<s>" not in t else None,
                          "skip_special_decoded": tok.decode(ids, skip_special_tokens=True)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"cases": cases, "inline": inline}, f, ensure_ascii=False,
                  separators=(",", ":"))
        f.write("\n")


def sweep(out, kinds_dir):
    """Every code point (in groups of 8, next to letters, digits, spaces, an apostrophe and a
    combining mark), for the trained kinds: ~139,000 strings, not committed. Run with
        RCD_GOLDEN_DIR=OUT build/.../tok_parity_test   (OUT/tokenizer/<kind>/source points back)
    """
    base = os.path.join(out, "tokenizer")
    os.makedirs(base, exist_ok=True)
    cps = [c for c in range(0, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    corpus = []
    for i in range(0, len(cps), 8):
        cs = [chr(c) for c in cps[i:i + 8]]
        cs += cs[:8 - len(cs)] * 8
        corpus.append("a" + cs[0] + "b " + "".join(cs[:8]) + " 1" + cs[7] + "2 " + cs[1] + cs[1] +
                      " '" + cs[2] + "s " + cs[3] + "\u0301" + cs[4] + "  " + cs[5] + "\n" +
                      cs[6] + "x" + cs[7])
    write_corpus(os.path.join(base, "corpus.bin"), corpus)
    for kind in ["neox", "bytelevel_split", "gemma", "llama", "metaspace"]:
        d = os.path.join(base, kind)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "source"), "w") as f:
            f.write(os.path.join(kinds_dir, kind) + "\n")
        tok = Tokenizer.from_file(os.path.join(kinds_dir, kind, "tokenizer.json"))
        write_expected(os.path.join(d, "expected.bin"), tok, corpus)
        print(f"sweep {kind}: {len(corpus)} strings", file=sys.stderr)


# Every assigned code point of the reference's newest Unicode (its Rust std; Oniguruma's is
# older, so the regex classes see the newest letters as unassigned, as HF does), in groups
# of UNICODE_GROUP, each next to an apostrophe-s, a letter and a digit. The code points are
# stored as ranges (unicode.cps) and tok_parity_test builds the same strings from them.
UNICODE_GROUP = 128
UNICODE_KINDS = ["neox", "bytelevel_split", "gemma", "feat-affixes", "feat-splits",
                 "model-recurd-mamba-tiny"]


def unicode_segment(c):
    """Must match unicode_segment() in workers/tokenizer/tok_parity_test.c."""
    x = chr(c)
    return x + "'s a" + x + "1" + x + " "


def unicode_ranges(ucd_dir):
    """Assigned code points (no surrogates; of each private-use block its first and last)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gen_tok_unicode import RUST_UNICODE, load_ucd
    cats = load_ucd(ucd_dir, RUST_UNICODE)
    cps = [c for c, g in enumerate(cats) if g not in ("Cn", "Cs") and
           not (g == "Co" and cats[c - 1] == "Co" and c + 1 < len(cats) and cats[c + 1] == "Co")]
    out = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return RUST_UNICODE, out


def write_unicode(out_dir, ucd_dir):
    version, rngs = unicode_ranges(ucd_dir)
    cps = [c for lo, hi in rngs for c in range(lo, hi + 1)]
    corpus = ["".join(unicode_segment(c) for c in cps[i:i + UNICODE_GROUP])
              for i in range(0, len(cps), UNICODE_GROUP)]
    # unicode.cps: b"RCDTOKU1", u32 group, u32 n_ranges, then per range: varint gap from the
    # previous range's end (first: from 0), varint length - 1
    blob = bytearray(b"RCDTOKU1" + struct.pack("<II", UNICODE_GROUP, len(rngs)))
    prev = 0
    for lo, hi in rngs:
        blob += varint(lo - prev) + varint(hi - lo)
        prev = hi
    with open(os.path.join(out_dir, "unicode.cps"), "wb") as f:
        f.write(blob)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for kind in UNICODE_KINDS:
        d = os.path.join(out_dir, kind)
        src = os.path.join(d, "source")
        if os.path.isfile(src):
            with open(src) as f:
                d_tok = os.path.join(root, f.read().strip())
        else:
            d_tok = d
        tok = Tokenizer.from_file(os.path.join(d_tok, "tokenizer.json"))
        n_rt = write_expected(os.path.join(d, "unicode.bin"), tok, corpus, 1 << 30)
        print(f"unicode {kind}: {len(cps)} code points of Unicode {version} in {len(corpus)} "
              f"strings, {n_rt} round-trip", file=sys.stderr)
    return corpus


def show(args, root):
    corpus = make_corpus(CORPUS_SEED, N_STRINGS)
    d = os.path.join(args.out, args.show[0])
    src = os.path.join(d, "source")
    if os.path.isfile(src):
        with open(src) as f:
            tj = os.path.join(root, f.read().strip(), "tokenizer.json")
    else:
        tj = os.path.join(d, "tokenizer.json")
    tok = Tokenizer.from_file(tj)
    i = int(args.show[1])
    add_special, ids, dec, rt = expected_record(tok, i, corpus[i])
    print(json.dumps({"index": i, "text": corpus[i], "add_special": add_special, "ids": ids,
                      "tokens": [tok.id_to_token(x) for x in ids], "decoded": dec,
                      "round_trip": rt}, ensure_ascii=True, indent=1))


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap.add_argument("--out", default=os.path.join(root, "tests", "golden", "tokenizer"))
    ap.add_argument("--models", default=os.path.join(root, "models"))
    ap.add_argument("--show", nargs=2, metavar=("KIND", "INDEX"),
                    help="print HF's encoding of one corpus string and exit")
    ap.add_argument("--unicode", metavar="UCD",
                    help="write only the every-assigned-code-point fixtures (unicode.cps, "
                         "<kind>/unicode.bin) from unicodedata2 installed in UCD (see "
                         "tools/gen_tok_unicode.py) and exit")
    ap.add_argument("--unicode-plain", metavar="OUT",
                    help="with --unicode: also write them to OUT/tokenizer/ as corpus.bin and "
                         "<kind>/expected.bin, the format of older tok_parity_test builds")
    ap.add_argument("--sweep", metavar="OUT",
                    help="write the all-code-points check to OUT/tokenizer/ and exit")
    args = ap.parse_args()
    if args.sweep:
        sweep(args.sweep, os.path.relpath(args.out, root))
        return
    if args.unicode:
        corpus = write_unicode(args.out, args.unicode)
        if args.unicode_plain:
            base = os.path.join(args.unicode_plain, "tokenizer")
            os.makedirs(base, exist_ok=True)
            write_corpus(os.path.join(base, "corpus.bin"), corpus)
            for kind in UNICODE_KINDS:
                os.makedirs(os.path.join(base, kind), exist_ok=True)
                src = os.path.join(args.out, kind, "source")
                with open(os.path.join(base, kind, "source"), "w") as f:
                    if os.path.isfile(src):
                        with open(src) as g:
                            f.write(g.read())
                    else:
                        f.write(os.path.relpath(os.path.join(args.out, kind), root) + "\n")
                with open(os.path.join(args.out, kind, "unicode.bin"), "rb") as g:
                    data = g.read()
                with open(os.path.join(base, kind, "expected.bin"), "wb") as f:
                    f.write(data)
        return
    if args.show:
        show(args, root)
        return

    os.makedirs(args.out, exist_ok=True)
    corpus = make_corpus(CORPUS_SEED, N_STRINGS)
    write_corpus(os.path.join(args.out, "corpus.bin"), corpus)
    train = training_text(7, 30_000)
    kinds = {name: (tj, cfg, corpus, SAMPLE_EVERY) for name, (tj, cfg) in build_kinds(train).items()}
    for name, (tj, cfg) in build_feature_kinds(train).items():
        kinds[name] = (tj, cfg, corpus[:FEATURE_STRINGS], 4)
    for name, (tj, cfg, strings, every) in kinds.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        text = json.dumps(tj, ensure_ascii=False, separators=(",", ":"))
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=1)
        tok = Tokenizer.from_str(text)
        n_rt = write_expected(os.path.join(d, "expected.bin"), tok, strings, every)
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(strings)} strings, "
              f"{n_rt} round-trip", file=sys.stderr)

    write_units(os.path.join(args.out, "units.json"), args.out, corpus)

    if os.path.isdir(args.models):
        for sub in sorted(os.listdir(args.models)):
            tj = os.path.join(args.models, sub, "tokenizer.json")
            if not os.path.isfile(tj):
                continue
            name = "model-" + sub
            d = os.path.join(args.out, name)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "source"), "w") as f:
                f.write(os.path.relpath(os.path.join(args.models, sub), root) + "\n")
            tok = Tokenizer.from_file(tj)
            n_rt = write_expected(os.path.join(d, "expected.bin"), tok, corpus)
            with open(tj, "rb") as f:
                digest = fnv1a32(f.read())
            with open(os.path.join(d, "source.fnv1a32"), "w") as f:  # staleness check
                f.write(f"{digest:08x}\n")
            print(f"{name}: {len(corpus)} strings, {n_rt} round-trip", file=sys.stderr)


if __name__ == "__main__":
    main()
