#!/usr/bin/env python3
"""Generates workers/tokenizer/tok_ucd.c: the Unicode tables the tokenizer uses in place of
those of the system's PCRE2 and utf8proc, at the Unicode versions of the reference,
Hugging Face `tokenizers` 0.23.3:

  - regexes (Oniguruma inside tokenizers): Unicode 16.0.0. \\p{..} general categories, \\d and
    \\w are rewritten to explicit code point ranges from these tables (tok_regex.c);
  - Rust's `char` methods (tokenizers is built with a Rust whose std has Unicode 17.0.0):
    the Digits pre-tokenizer's char::is_numeric (Nd, Nl, No).

Each table comes from a Unicode Character Database of that version (PyPI's `unicodedata2`,
one install per version), and is then checked against the installed `tokenizers` itself
over every code point: the script stops if they differ (a new reference: update the
versions below, rerun, and regenerate the sweep fixtures with tools/gen_tok_fixtures.py).

    pip install tokenizers==0.23.3
    pip install --target /tmp/ucd-16.0.0 unicodedata2==16.0.0
    pip install --target /tmp/ucd-17.0.0 unicodedata2==17.0.0
    python tools/gen_tok_unicode.py --ucd /tmp/ucd-16.0.0 --rust-ucd /tmp/ucd-17.0.0
"""
import argparse
import json
import os
import subprocess
import sys

TOKENIZERS_VERSION = "0.23.3"
REGEX_UNICODE = "16.0.0"  # Oniguruma's tables in tokenizers 0.23.3 (checked below)
RUST_UNICODE = "17.0.0"   # Rust std's char tables in tokenizers 0.23.3 (checked below)

# General categories; the index is the value stored in the table (Cn first: unassigned).
CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc",
              "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp",
              "Cc", "Cf", "Cs", "Co"]

# Oniguruma's \w beyond L, Nl, M, Nd and Pc: the Other_Alphabetic letters of category So
# (circled and squared Latin letters, PropList.txt), and the Latin-1 characters its
# ISO-8859-1 ctype table marks as word characters (superscripts and vulgar fractions).
WORD_EXTRA = [(0xB2, 0xB3), (0xB9, 0xB9), (0xBC, 0xBE), (0x24B6, 0x24E9), (0x1F130, 0x1F149),
              (0x1F150, 0x1F169), (0x1F170, 0x1F189)]

DUMP = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import unicodedata2 as u
cats = [u.category(chr(c)) for c in range(0x110000)]
json.dump({"version": u.unidata_version, "cats": cats}, sys.stdout)
"""


def load_ucd(path, want):
    """General category of every code point, from unicodedata2 installed under path (run
    in a child so that two versions can be read)."""
    out = subprocess.run([sys.executable, "-c", DUMP, path], check=True, capture_output=True,
                         text=True).stdout
    d = json.loads(out)
    if d["version"] != want:
        sys.exit(f"{path}: unicodedata2 has Unicode {d['version']}, want {want}")
    return d["cats"]


def ranges(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def hf_matches(pattern, cps, text):
    """Code points HF's regex engine matches with pattern, over text = all of cps."""
    from tokenizers import Regex, pre_tokenizers
    sp = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    got = set()
    for _, (a, b) in sp.pre_tokenize_str(text):
        got.update(cps[a:b])
    return got


def hf_numeric(cps):
    """Code points HF's Digits pre-tokenizer (char::is_numeric) splits off on their own."""
    from tokenizers import pre_tokenizers
    text = "x" + "x".join(chr(c) for c in cps) + "x"
    d = pre_tokenizers.Digits(individual_digits=True)
    return {ord(p) for p, _ in d.pre_tokenize_str(text) if len(p) == 1 and p != "x"}


def check_reference(cats, rust_cats):
    import tokenizers
    if tokenizers.__version__ != TOKENIZERS_VERSION:
        sys.exit(f"tokenizers {tokenizers.__version__} installed, want {TOKENIZERS_VERSION}")
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chr(c) for c in cps)
    checks = [(f"\\p{{{g}}}", {g}) for g in CATEGORIES if g != "Cs"]
    checks += [(f"\\p{{{g}}}", {c for c in CATEGORIES if c[0] == g}) for g in "LMNPSZC"]
    checks += [("\\p{LC}", {"Lu", "Ll", "Lt"}), ("\\d", {"Nd"})]
    for pattern, want_cats in checks:
        want = {c for c in cps if cats[c] in want_cats}
        got = hf_matches(pattern, cps, text)
        if got != want:
            sys.exit(f"{pattern}: tokenizers differs from Unicode {REGEX_UNICODE} on "
                     f"{len(got ^ want)} code points, e.g. "
                     f"{[hex(c) for c in sorted(got ^ want)[:8]]}")
    want = {c for c in cps if cats[c][0] in "LM" or cats[c] in ("Nl", "Nd", "Pc")}
    want |= {c for lo, hi in WORD_EXTRA for c in range(lo, hi + 1)}
    if hf_matches("\\w", cps, text) != want:
        sys.exit("\\w: tokenizers differs from L, Nl, M, Nd, Pc and WORD_EXTRA")
    want = {c for c in cps if rust_cats[c] in ("Nd", "Nl", "No")}
    got = hf_numeric(cps)
    if got != want:
        sys.exit(f"Digits: tokenizers differs from Unicode {RUST_UNICODE} N on "
                 f"{[hex(c) for c in sorted(got ^ want)[:8]]}")
    print(f"tokenizers {TOKENIZERS_VERSION}: regex classes = Unicode {REGEX_UNICODE}, "
          f"char::is_numeric = Unicode {RUST_UNICODE}", file=sys.stderr)


def c_rows(items, per_line, indent="    "):
    lines, cur = [], indent
    for i, s in enumerate(items):
        if i and i % per_line == 0:
            lines.append(cur.rstrip())
            cur = indent
        cur += s + ", "
    if cur.strip():
        lines.append(cur.rstrip())
    return "\n".join(lines)


def write_c(path, cats, rust_cats):
    idx = {g: i for i, g in enumerate(CATEGORIES)}
    runs = []
    for c, g in enumerate(cats):
        if not runs or runs[-1][1] != g:
            runs.append((c, g))
    numeric = ranges(c for c, g in enumerate(rust_cats) if g in ("Nd", "Nl", "No"))
    word_extra = ", ".join(f"{{0x{lo:X}, 0x{hi:X}}}" for lo, hi in WORD_EXTRA)
    with open(path, "w") as f:
        f.write(f"""/* Generated by tools/gen_tok_unicode.py from the Unicode Character Database; do not edit.
 * The Unicode versions of HF tokenizers {TOKENIZERS_VERSION} (see tok_int.h, "Unicode tables"). */
#include "workers/tokenizer/tok_int.h"

const char tok__ucd_regex_version[] = "{REGEX_UNICODE}";
const char tok__ucd_rust_version[] = "{RUST_UNICODE}";

const char tok__ucd_gc_names[TOK__GC_COUNT][3] = {{
{c_rows([f'"{g}"' for g in CATEGORIES], 15)}
}};

/* Unicode {REGEX_UNICODE} general categories: start << 5 | category, up to the next start. */
const uint32_t tok__ucd_gc_runs[] = {{
{c_rows([f"0x{c << 5 | idx[g]:X}" for c, g in runs], 8)}
}};
const size_t tok__ucd_gc_runs_n = {len(runs)};

/* Unicode {RUST_UNICODE} Nd, Nl, No (Rust char::is_numeric): first, last. */
const uint32_t tok__ucd_numeric[][2] = {{
{c_rows([f"{{0x{lo:X}, 0x{hi:X}}}" for lo, hi in numeric], 5)}
}};
const size_t tok__ucd_numeric_n = {len(numeric)};

/* Oniguruma's \\w beyond L, Nl, M, Nd, Pc (Other_Alphabetic So; its Latin-1 ctype quirk). */
const uint32_t tok__ucd_word_extra[][2] = {{{word_extra}}};
const size_t tok__ucd_word_extra_n = {len(WORD_EXTRA)};
""")
    print(f"{path}: {len(runs)} category runs, {len(numeric)} numeric ranges", file=sys.stderr)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--ucd", required=True,
                    help=f"folder with unicodedata2=={REGEX_UNICODE} (pip install --target)")
    ap.add_argument("--rust-ucd", required=True,
                    help=f"folder with unicodedata2=={RUST_UNICODE} (pip install --target)")
    ap.add_argument("--out", default=os.path.join(root, "workers", "tokenizer", "tok_ucd.c"))
    ap.add_argument("--no-check", action="store_true",
                    help="skip the comparison with the installed tokenizers")
    args = ap.parse_args()
    cats = load_ucd(args.ucd, REGEX_UNICODE)
    rust_cats = load_ucd(args.rust_ucd, RUST_UNICODE)
    if not args.no_check:
        check_reference(cats, rust_cats)
    write_c(args.out, cats, rust_cats)


if __name__ == "__main__":
    main()
