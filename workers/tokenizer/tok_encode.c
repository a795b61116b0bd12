/* The encode pipeline, in HF's order: split out added tokens (raw text), normalize, split out
 * normalized added tokens, pre-tokenize, BPE each pre-token, then the post-processor. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

/* ---- added-token trie ------------------------------------------------------------------ */

static int trie_node(tok__trie_t *t)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        tok__trie_node_t *v = realloc(t->nodes, cap * sizeof(*v));
        if (!v) return -1;
        t->nodes = v;
        t->cap = cap;
    }
    t->nodes[t->n] = (tok__trie_node_t){0, 0, -1, 0};
    return (int)t->n++;
}

int tok__trie_add(tok__trie_t *t, const char *s, size_t n, int32_t token)
{
    if (!t->n && trie_node(t) < 0) return RCD_ENOMEM;
    uint32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        uint32_t c = t->nodes[cur].child;
        while (c && t->nodes[c].byte != b)
            c = t->nodes[c].sibling;
        if (!c) {
            int k = trie_node(t);
            if (k < 0) return RCD_ENOMEM;
            c = (uint32_t)k;
            t->nodes[c].byte = b;
            t->nodes[c].sibling = t->nodes[cur].child;
            t->nodes[cur].child = c;
        }
        cur = c;
    }
    if (t->nodes[cur].token < 0) /* the first of duplicate contents wins */
        t->nodes[cur].token = token;
    t->first[(uint8_t)s[0] >> 3] |= (uint8_t)(1u << ((uint8_t)s[0] & 7));
    return 0;
}

void tok__trie_free(tok__trie_t *t)
{
    free(t->nodes);
    memset(t, 0, sizeof(*t));
}

/* Leftmost-longest match at or after pos (Aho-Corasick MatchKind::LeftmostLongest). */
static int trie_find(const tok__trie_t *t, const unsigned char *s, size_t n, size_t pos, size_t *ms,
                     size_t *me)
{
    if (!t->n) return -1;
    for (size_t i = pos; i < n; i++) {
        if (!(t->first[s[i] >> 3] & (1u << (s[i] & 7)))) continue;
        uint32_t cur = 0;
        int best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            uint32_t c = t->nodes[cur].child;
            while (c && t->nodes[c].byte != s[j])
                c = t->nodes[c].sibling;
            if (!c) break;
            cur = c;
            if (t->nodes[c].token >= 0) {
                best = t->nodes[c].token;
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            return best;
        }
    }
    return -1;
}

/* Whether the character ending at `end` / starting at `start` is a Rust-regex \w. */
static int word_at(const tok_t *t, const char *s, size_t n, size_t start, pcre2_match_data **md)
{
    if (!*md && !(*md = pcre2_match_data_create(2, NULL))) return -1;
    return pcre2_match(t->word_re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, *md, NULL) >= 0;
}

static size_t char_before(const char *s, size_t end)
{
    size_t i = end;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    return i > 0 ? i - 1 : 0;
}

/* Spans of s: text (match 0) and added tokens (match = index + 1), HF's find_matches. */
static int added_split(const tok_t *t, const tok__trie_t *trie, const char *s, size_t n, int flags,
                       tok__spans_t *out, pcre2_match_data **md)
{
    size_t pos = 0, start_off = 0;
    const unsigned char *u = (const unsigned char *)s;
    out->n = 0;
    for (;;) {
        size_t ms, me;
        int k = trie_find(trie, u, n, pos, &ms, &me);
        if (k < 0) break;
        pos = me;
        const tok__added_t *a = &t->added[k];
        if ((flags & TOK_SPLIT_SPECIAL) && a->special) continue;
        if (a->single_word) {
            int ws = ms > 0 ? word_at(t, s, n, char_before(s, ms), md) : 0;
            int we = me < n ? word_at(t, s, n, me, md) : 0;
            if (ws < 0 || we < 0) return RCD_ENOMEM;
            if (ws || we) continue;
        }
        if (a->lstrip) {
            size_t i = ms;
            while (i > 0) {
                size_t b = char_before(s, i);
                uint32_t cp;
                tok__utf8_next(u + b, &cp);
                if (!tok__is_space(cp)) break;
                i = b;
            }
            ms = i > start_off ? i : start_off;
        }
        if (a->rstrip) {
            uint32_t cp;
            while (me < n && (tok__utf8_next(u + me, &cp), tok__is_space(cp)))
                me += tok__utf8_next(u + me, &cp);
        }
        if (start_off < ms && tok__spans_push(out, start_off, ms, 0)) return RCD_ENOMEM;
        if (tok__spans_push(out, ms, me, k + 1)) return RCD_ENOMEM;
        start_off = me;
    }
    if (start_off < n && tok__spans_push(out, start_off, n, 0)) return RCD_ENOMEM;
    return 0;
}

/* ---- normalizers ----------------------------------------------------------------------- */

static void buf_swap(tok__buf_t *a, tok__buf_t *b)
{
    tok__buf_t x = *a;
    *a = *b;
    *b = x;
}

static int all_below(const char *s, size_t n, unsigned char limit)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= limit) return 0;
    return 1;
}

/* HF normalizes with old Unicode tables (its unicode-normalization-alignments crate); utf8proc
 * has Unicode 15. Characters assigned since then that normalize non-trivially in utf8proc are
 * unknown to HF: no decomposition, combining class 0, no composition. They are kept as they
 * are and cut the text into independently normalized runs, which is exactly how HF's
 * algorithm treats such a character. Found by sweeping every code point (alone, and after a base
 * with a mark of lower combining class) through both. */
static const struct {
    uint32_t lo, hi;
    uint8_t compat_only; /* only NFKC/NFKD differ */
} hf_unknown[] = {
    {0x07FD, 0x07FD, 0},   {0x0898, 0x089F, 0},   {0x08CA, 0x08D3, 0},   {0x09FE, 0x09FE, 0},
    {0x0C3C, 0x0C3C, 0},   {0x0D3B, 0x0D3C, 0},   {0x0EBA, 0x0EBA, 0},   {0x1715, 0x1715, 0},
    {0x1ABF, 0x1ACE, 0},   {0x1DF6, 0x1DFA, 0},   {0x32FF, 0x32FF, 1},   {0xA7F2, 0xA7F4, 1},
    {0xA82C, 0xA82C, 0},   {0xAB69, 0xAB69, 1},   {0x10781, 0x10785, 1}, {0x10787, 0x107B0, 1},
    {0x107B2, 0x107BA, 1}, {0x10D24, 0x10D27, 0}, {0x10EAB, 0x10EAC, 0}, {0x10EFD, 0x10EFF, 0},
    {0x10F46, 0x10F50, 0}, {0x10F82, 0x10F85, 0}, {0x11070, 0x11070, 0}, {0x1133B, 0x1133B, 0},
    {0x1145E, 0x1145E, 0}, {0x11839, 0x1183A, 0}, {0x11930, 0x11930, 0}, {0x11935, 0x11935, 0},
    {0x11938, 0x11938, 0}, {0x1193D, 0x1193E, 0}, {0x11943, 0x11943, 0}, {0x119E0, 0x119E0, 0},
    {0x11A34, 0x11A34, 0}, {0x11A47, 0x11A47, 0}, {0x11A99, 0x11A99, 0}, {0x11D42, 0x11D42, 0},
    {0x11D44, 0x11D45, 0}, {0x11D97, 0x11D97, 0}, {0x11F41, 0x11F42, 0}, {0x16FF0, 0x16FF1, 0},
    {0x1E030, 0x1E06D, 1}, {0x1E08F, 0x1E08F, 0}, {0x1E130, 0x1E136, 0}, {0x1E2AE, 0x1E2AE, 0},
    {0x1E2EC, 0x1E2EF, 0}, {0x1E4EC, 0x1E4EF, 0}, {0x1F16C, 0x1F16C, 1}, {0x1FBF0, 0x1FBF9, 1},
};

static int is_hf_unknown(uint32_t cp, int compat)
{
    size_t lo = 0, hi = sizeof(hf_unknown) / sizeof(hf_unknown[0]);
    if (cp < 0x07FD) return 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp > hf_unknown[mid].hi)
            lo = mid + 1;
        else if (cp < hf_unknown[mid].lo)
            hi = mid;
        else
            return compat || !hf_unknown[mid].compat_only;
    }
    return 0;
}

static int nf_run(const char *s, size_t n, int opt, tok__buf_t *out, char *err, size_t errlen)
{
    if (!n) return 0;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)opt);
    if (r < 0)
        return rcd_fail(r == UTF8PROC_ERROR_NOMEM ? RCD_ENOMEM : RCD_EINTERNAL, err, errlen,
                        "unicode normalization: %s", utf8proc_errmsg(r));
    int rc = tok__buf_put(out, dst, (size_t)r);
    free(dst);
    return rc;
}

/* Characters before which normalization can always restart (combining class 0, quick check
 * Yes) and which a normalization form leaves unchanged on their own. A run from one of them
 * up to the next is normalized independently, and a run of one such character is copied:
 * most text then never reaches utf8proc. The sets are deliberately small and obvious. */
static int stable_starter(uint32_t cp, int kind)
{
    if (cp < 0x80) return 1;
    if (kind == TOK__N_NFC && cp < 0x300) /* Latin-1, Latin Extended, IPA: all NFC starters */
        return 1;
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || /* CJK */
           ((kind == TOK__N_NFC || kind == TOK__N_NFKC) &&
            ((cp >= 0xAC00 && cp <= 0xD7A3) ||                                     /* Hangul */
             (cp >= 0x3041 && cp <= 0x3096) || (cp >= 0x30A1 && cp <= 0x30FA))) || /* kana */
           (cp >= 0x1F300 && cp <= 0x1FAFF);                                       /* emoji */
}

static int unicode_nf(const tok__norm_t *nm, tok__buf_t *cur, tok__buf_t *tmp, char *err,
                      size_t errlen)
{
    /* fast paths: ASCII is invariant under all four forms; below U+0300 under NFC */
    if (all_below(cur->p, cur->n, nm->kind == TOK__N_NFC ? 0xCC : 0x80)) return 0;
    int opt = UTF8PROC_STABLE, compat = 0;
    switch (nm->kind) {
    case TOK__N_NFC:
        opt |= UTF8PROC_COMPOSE;
        break;
    case TOK__N_NFD:
        opt |= UTF8PROC_DECOMPOSE;
        break;
    case TOK__N_NFKC:
        opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        compat = 1;
        break;
    default:
        opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        compat = 1;
        break;
    }
    const unsigned char *u = (const unsigned char *)cur->p;
    size_t run = 0, i = 0;
    int rc = 0, run_chars = 0, run_stable = 0; /* run_stable: the run is one stable starter */
    tmp->n = 0;
    while (i < cur->n && !rc) {
        uint32_t cp;
        size_t cl = tok__utf8_next(u + i, &cp);
        int unknown = is_hf_unknown(cp, compat);
        if (unknown || stable_starter(cp, nm->kind)) {
            if (run_chars == 1 && run_stable)
                rc = tok__buf_put(tmp, u + run, i - run);
            else
                rc = nf_run(cur->p + run, i - run, opt, tmp, err, errlen);
            run = i;
            run_chars = 0;
            if (unknown) { /* copied as is, and ends the run */
                if (!rc) rc = tok__buf_put(tmp, u + i, cl);
                run = i + cl;
            } else {
                run_stable = 1;
                run_chars = 1;
            }
        } else {
            if (!run_chars) run_stable = 0;
            run_chars++;
        }
        i += cl;
    }
    if (!rc)
        rc = run_chars == 1 && run_stable
                 ? tok__buf_put(tmp, u + run, cur->n - run)
                 : nf_run(cur->p + run, cur->n - run, opt, tmp, err, errlen);
    if (!rc) {
        if (tok__buf_put(tmp, "", 0)) return RCD_ENOMEM;
        buf_swap(cur, tmp);
    }
    return rc;
}

int tok__normalize(const tok_t *t, const char *s, size_t n, tok__buf_t *out, tok__buf_t *tmp,
                   int *orig0, pcre2_match_data **md, char *err, size_t errlen)
{
    tok__spans_t sp = {0};
    int rc = 0;
    /* Whether the first normalized character still comes from the first original one (HF's
     * offsets_original().0 == 0, which Metaspace's prepend_scheme "first" tests): lost when
     * Strip or an empty Replace removes original leading characters. `ins` counts leading bytes
     * inserted in front of them (Prepend, Replace content), which may go without loss. */
    size_t ins = 0;
    out->n = 0;
    if ((rc = tok__buf_put(out, s, n))) return rc;
    for (size_t i = 0; i < t->n_norms && !rc; i++) {
        const tok__norm_t *nm = &t->norms[i];
        switch (nm->kind) {
        case TOK__N_NFC:
        case TOK__N_NFD:
        case TOK__N_NFKC:
        case TOK__N_NFKD:
            rc = unicode_nf(nm, out, tmp, err, errlen);
            break;
        case TOK__N_PREPEND:
            if (!out->n) break;
            tmp->n = 0;
            if (!(rc = tok__buf_put(tmp, nm->str, nm->str_len)) &&
                !(rc = tok__buf_put(tmp, out->p, out->n)))
                buf_swap(out, tmp);
            ins += nm->str_len;
            break;
        case TOK__N_REPLACE:
            if ((rc = tok__pat_find(&nm->pat, out->p, out->n, md, &sp, err, errlen))) break;
            tmp->n = 0;
            for (size_t k = 0; k < sp.n && !rc; k++)
                rc = sp.v[k].match
                         ? tok__buf_put(tmp, nm->str, nm->str_len)
                         : tok__buf_put(tmp, out->p + sp.v[k].start, sp.v[k].end - sp.v[k].start);
            if (!rc) buf_swap(out, tmp);
            if (sp.n && sp.v[0].match && sp.v[0].start == 0 && sp.v[0].end > 0) {
                size_t m = sp.v[0].end;
                if (m > ins && !nm->str_len && orig0) *orig0 = 0;
                ins = m > ins ? (nm->str_len ? nm->str_len - 1 : 0) : ins - m + nm->str_len;
            }
            break;
        case TOK__N_STRIP: {
            const unsigned char *u = (const unsigned char *)out->p;
            size_t a = 0, b = out->n;
            uint32_t cp;
            if (nm->left)
                while (a < b && (tok__utf8_next(u + a, &cp), tok__is_space(cp)))
                    a += tok__utf8_next(u + a, &cp);
            if (nm->right)
                while (b > a) {
                    size_t c = char_before(out->p, b);
                    tok__utf8_next(u + c, &cp);
                    if (!tok__is_space(cp)) break;
                    b = c;
                }
            memmove(out->p, out->p + a, b - a);
            out->n = b - a;
            out->p[out->n] = 0;
            if (a > ins && orig0) *orig0 = 0;
            ins = a > ins ? 0 : ins - a;
            break;
        }
        }
    }
    tok__spans_free(&sp);
    return rc;
}

/* ---- pre-tokenizers -------------------------------------------------------------------- */

typedef struct {
    const tok_t *t;
    int flags;
    tok_ids_t *out;
    tok__buf_t a[TOK__MAX_STAGES], b[TOK__MAX_STAGES];
    tok__spans_t sp[TOK__MAX_STAGES];
    tok__buf_t norm, norm_tmp;
    tok__spans_t seg, sub;
    pcre2_match_data *md;
    tok__bpe_scratch_t bpe;
    char *err;
    size_t errlen;
} enc_t;

static int pretok(enc_t *e, size_t stage, const char *s, size_t n, int at_start);

/* Passes the kept, non-empty spans of s to the next stage. */
static int each_span(enc_t *e, size_t stage, const tok__spans_t *sp, const char *s, int at_start)
{
    int rc = 0;
    for (size_t i = 0; i < sp->n && !rc; i++)
        if (!sp->v[i].match && sp->v[i].end > sp->v[i].start)
            rc = pretok(e, stage + 1, s + sp->v[i].start, sp->v[i].end - sp->v[i].start,
                        at_start && sp->v[i].start == 0);
    return rc;
}

static int pretok(enc_t *e, size_t stage, const char *s, size_t n, int at_start)
{
    const tok_t *t = e->t;
    if (stage == t->n_pres) return tok__bpe_word(&t->bpe, s, n, &e->bpe, e->out, e->err, e->errlen);
    const tok__pre_t *p = &t->pres[stage];
    tok__buf_t *a = &e->a[stage], *b = &e->b[stage];
    tok__spans_t *sp = &e->sp[stage];
    int rc = 0;
    switch (p->kind) {
    case TOK__P_BYTELEVEL: {
        if (p->add_prefix_space && n && s[0] != ' ') {
            a->n = 0;
            if ((rc = tok__buf_put(a, " ", 1)) || (rc = tok__buf_put(a, s, n))) return rc;
            s = a->p;
            n = a->n;
        }
        sp->n = 0;
        if (p->use_regex)
            rc = tok__pat_find(&p->pat, s, n, &e->md, sp, e->err, e->errlen);
        else
            rc = tok__spans_push(sp, 0, n, 0);
        if (rc) return rc;
        for (size_t i = 0; i < sp->n && !rc; i++) {
            size_t st = sp->v[i].start, en = sp->v[i].end;
            if (en == st) continue;
            b->n = 0;
            if ((rc = tok__buf_reserve(b, 2 * (en - st)))) return rc;
            for (size_t k = st; k < en; k++)
                b->n += tok__utf8_put(tok__byte_cp((unsigned char)s[k]), b->p + b->n);
            rc = pretok(e, stage + 1, b->p, b->n, at_start && st == 0);
        }
        return rc;
    }
    case TOK__P_METASPACE: {
        a->n = 0;
        if ((rc = tok__buf_reserve(a, n * p->rep_len + p->rep_len))) return rc;
        int prepend = n && (p->prepend == TOK__PREPEND_ALWAYS ||
                            (p->prepend == TOK__PREPEND_FIRST && at_start));
        /* the replacement is prepended unless the text (spaces replaced) starts with it */
        if (prepend && (s[0] == ' ' || (n >= p->rep_len && !memcmp(s, p->rep, p->rep_len))))
            prepend = 0;
        if (prepend) tok__buf_put(a, p->rep, p->rep_len);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ')
                tok__buf_put(a, p->rep, p->rep_len);
            else
                a->p[a->n++] = s[i];
        }
        if (!p->split) return pretok(e, stage + 1, a->p, a->n, at_start);
        tok__pat_t lit = {.lit = (char *)p->rep, .lit_len = p->rep_len};
        if ((rc = tok__pat_find(&lit, a->p, a->n, &e->md, sp, e->err, e->errlen))) return rc;
        tok__split_behavior(sp, TOK__SPLIT_MERGED_NEXT, 0);
        return each_span(e, stage, sp, a->p, at_start);
    }
    case TOK__P_SPLIT:
        if ((rc = tok__pat_find(&p->pat, s, n, &e->md, sp, e->err, e->errlen))) return rc;
        tok__split_behavior(sp, p->behavior, p->invert);
        return each_span(e, stage, sp, s, at_start);
    case TOK__P_DIGITS: {
        const unsigned char *u = (const unsigned char *)s;
        size_t last = 0;
        sp->n = 0;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t cl = tok__utf8_next(u + i, &cp);
            if (tok__is_numeric(cp)) {
                if ((last < i && tok__spans_push(sp, last, i, 0)) ||
                    tok__spans_push(sp, i, i + cl, 1))
                    return RCD_ENOMEM;
                last = i + cl;
            }
            i += cl;
        }
        if (last < n && tok__spans_push(sp, last, n, 0)) return RCD_ENOMEM;
        tok__split_behavior(sp, p->individual ? TOK__SPLIT_ISOLATED : TOK__SPLIT_CONTIGUOUS, 0);
        return each_span(e, stage, sp, s, at_start);
    }
    }
    return RCD_EINTERNAL;
}

/* ---- encode ---------------------------------------------------------------------------- */

static void enc_free(enc_t *e)
{
    for (size_t i = 0; i < TOK__MAX_STAGES; i++) {
        tok__buf_free(&e->a[i]);
        tok__buf_free(&e->b[i]);
        tok__spans_free(&e->sp[i]);
    }
    tok__buf_free(&e->norm);
    tok__buf_free(&e->norm_tmp);
    tok__spans_free(&e->seg);
    tok__spans_free(&e->sub);
    pcre2_match_data_free(e->md);
    tok__bpe_scratch_free(&e->bpe);
}

static int push_ids(tok_ids_t *out, const int32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (tok__ids_push(out, v[i])) return RCD_ENOMEM;
    return 0;
}

int tok_encode(const tok_t *t, const char *text, size_t len, int flags, tok_ids_t *out, char *err,
               size_t errlen)
{
    enc_t e;
    tok__buf_t fixed = {0};
    int rc = 0;
    memset(&e, 0, sizeof(e));
    if (!t || !out || (!text && len))
        return rcd_fail(RCD_EINVAL, err, errlen, "tok_encode: bad arguments");
    out->n = 0;
    if (len > t->max_input)
        return rcd_fail(RCD_ETOOBIG, err, errlen, "input of %zu bytes exceeds the limit of %zu",
                        len, t->max_input);
    size_t bad;
    if (!tok__utf8_valid(text, len, &bad)) {
        if (!(flags & TOK_UTF8_REPLACE))
            return rcd_fail(RCD_EUTF8, err, errlen, "invalid UTF-8 at byte offset %zu", bad);
        if ((rc = tok__utf8_lossy(text, len, &fixed, 0, NULL))) goto cleanup;
        text = fixed.p;
        len = fixed.n;
    }
    e.t = t;
    e.flags = flags;
    e.out = out;
    e.err = err;
    e.errlen = errlen;
    if ((flags & TOK_ADD_SPECIAL) && (rc = push_ids(out, t->post_pre, t->n_post_pre))) goto cleanup;
    if ((rc = added_split(t, &t->trie_raw, text, len, flags, &e.seg, &e.md))) goto cleanup;
    for (size_t i = 0; i < e.seg.n; i++) {
        const tok__span_t *sg = &e.seg.v[i];
        if (sg->match) {
            if ((rc = tok__ids_push(out, t->added[sg->match - 1].id))) goto cleanup;
            continue;
        }
        int orig0 = sg->start == 0;
        if ((rc = tok__normalize(t, text + sg->start, sg->end - sg->start, &e.norm, &e.norm_tmp,
                                 &orig0, &e.md, err, errlen)))
            goto cleanup;
        if ((rc = added_split(t, &t->trie_norm, e.norm.p, e.norm.n, flags, &e.sub, &e.md)))
            goto cleanup;
        for (size_t k = 0; k < e.sub.n; k++) {
            const tok__span_t *sb = &e.sub.v[k];
            if (sb->match)
                rc = tok__ids_push(out, t->added[sb->match - 1].id);
            else if (sb->end > sb->start)
                rc = pretok(&e, 0, e.norm.p + sb->start, sb->end - sb->start,
                            orig0 && sb->start == 0);
            if (rc) goto cleanup;
        }
    }
    if ((flags & TOK_ADD_SPECIAL) && (rc = push_ids(out, t->post_post, t->n_post_post)))
        goto cleanup;
cleanup:
    if (rc) {
        out->n = 0;
        if (rc == RCD_ENOMEM) rcd_fail(rc, err, errlen, "tok_encode: out of memory");
    }
    tok__buf_free(&fixed);
    enc_free(&e);
    return rc;
}
