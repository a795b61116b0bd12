/* Code point sets from the generated Unicode tables (tok_ucd.c): Oniguruma's general
 * category properties by name, \d, \w, \s and \h, spelled for PCRE2 (tok_regex.c); and
 * Rust's char::is_numeric for the Digits pre-tokenizer.
 *
 * A set is spelled as PCRE2's own property items plus the code points PCRE2's tables lack
 * (for example [\p{L}\x{1C89}...]) when its tables hold no code point outside the set;
 * otherwise as ranges only. PCRE2 tests a class's explicit ranges one by one, so a class of
 * only ranges (~700 for \p{L}) is ~1.5x slower on text beyond Latin-1. What PCRE2's tables
 * hold is measured once per process by matching every code point (~10-40 ms). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

#define GC(x) (1u << (x))
enum { CN, LU, LL, LT, LM, LO, MN, MC, ME, ND, NL, NO, PC, PD, PS, PE, PI, PF, PO, SM, SC, SK,
       SO, ZS, ZL, ZP, CC, CF, CS, CO };
#define GC_L (GC(LU) | GC(LL) | GC(LT) | GC(LM) | GC(LO))
#define GC_M (GC(MN) | GC(MC) | GC(ME))
#define GC_N (GC(ND) | GC(NL) | GC(NO))
#define GC_P (GC(PC) | GC(PD) | GC(PS) | GC(PE) | GC(PI) | GC(PF) | GC(PO))
#define GC_S (GC(SM) | GC(SC) | GC(SK) | GC(SO))
#define GC_Z (GC(ZS) | GC(ZL) | GC(ZP))
#define GC_C (GC(CC) | GC(CF) | GC(CS) | GC(CO) | GC(CN))

/* Oniguruma's names beyond the two-letter ones, compared loosely (case, ' ', '_', '-'). */
static const struct {
    const char *name;
    uint32_t mask;
} names[] = {
    {"l", GC_L},
    {"letter", GC_L},
    {"lc", GC(LU) | GC(LL) | GC(LT)},
    {"casedletter", GC(LU) | GC(LL) | GC(LT)},
    {"uppercaseletter", GC(LU)},
    {"lowercaseletter", GC(LL)},
    {"titlecaseletter", GC(LT)},
    {"modifierletter", GC(LM)},
    {"otherletter", GC(LO)},
    {"m", GC_M},
    {"mark", GC_M},
    {"combiningmark", GC_M},
    {"nonspacingmark", GC(MN)},
    {"spacingmark", GC(MC)},
    {"enclosingmark", GC(ME)},
    {"n", GC_N},
    {"number", GC_N},
    {"decimalnumber", GC(ND)},
    {"digit", GC(ND)},
    {"letternumber", GC(NL)},
    {"othernumber", GC(NO)},
    {"p", GC_P},
    {"punctuation", GC_P},
    {"punct", GC_P},
    {"connectorpunctuation", GC(PC)},
    {"dashpunctuation", GC(PD)},
    {"openpunctuation", GC(PS)},
    {"closepunctuation", GC(PE)},
    {"initialpunctuation", GC(PI)},
    {"finalpunctuation", GC(PF)},
    {"otherpunctuation", GC(PO)},
    {"s", GC_S},
    {"symbol", GC_S},
    {"mathsymbol", GC(SM)},
    {"currencysymbol", GC(SC)},
    {"modifiersymbol", GC(SK)},
    {"othersymbol", GC(SO)},
    {"z", GC_Z},
    {"separator", GC_Z},
    {"spaceseparator", GC(ZS)},
    {"lineseparator", GC(ZL)},
    {"paragraphseparator", GC(ZP)},
    {"c", GC_C},
    {"other", GC_C},
    {"control", GC(CC)},
    {"cntrl", GC(CC)},
    {"format", GC(CF)},
    {"unassigned", GC(CN)},
    {"privateuse", GC(CO)},
    {"surrogate", GC(CS)},
};

int tok__uset_add(tok__uset_t *s, uint32_t lo, uint32_t hi)
{
    if (s->n && s->r[s->n - 1][1] + 1 == lo) { /* runs arrive in order: extend */
        s->r[s->n - 1][1] = hi;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        uint32_t(*r)[2] = realloc(s->r, cap * sizeof(*r));
        if (!r) return RCD_ENOMEM;
        s->r = r;
        s->cap = cap;
    }
    s->r[s->n][0] = lo;
    s->r[s->n][1] = hi;
    s->n++;
    return 0;
}

void tok__uset_free(tok__uset_t *s)
{
    free(s->r);
    memset(s, 0, sizeof(*s));
}

static int cmp_range(const void *a, const void *b)
{
    uint32_t x = ((const uint32_t *)a)[0], y = ((const uint32_t *)b)[0];
    return x < y ? -1 : x > y;
}

void tok__uset_normalize(tok__uset_t *s)
{
    if (s->n < 2) return;
    qsort(s->r, s->n, sizeof(*s->r), cmp_range);
    size_t w = 0;
    for (size_t i = 1; i < s->n; i++) {
        if (s->r[i][0] <= s->r[w][1] + 1) {
            if (s->r[i][1] > s->r[w][1]) s->r[w][1] = s->r[i][1];
        } else {
            s->r[++w][0] = s->r[i][0];
            s->r[w][1] = s->r[i][1];
        }
    }
    s->n = w + 1;
}

/* Adds [a, b] without the surrogates D800-DFFF to s. */
static int add_gap(tok__uset_t *s, uint32_t a, uint32_t b)
{
    int rc = 0;
    if (a < 0xD800) rc = tok__uset_add(s, a, b < 0xD7FF ? b : 0xD7FF);
    if (!rc && b > 0xDFFF) rc = tok__uset_add(s, a > 0xE000 ? a : 0xE000, b);
    return rc;
}

/* Adds the complement of src (normalized) to dst. Surrogates are in neither. */
static int add_complement(tok__uset_t *dst, const tok__uset_t *src)
{
    uint32_t next = 0;
    int rc = 0;
    for (size_t i = 0; i < src->n && !rc; i++) {
        if (src->r[i][0] > next) rc = add_gap(dst, next, src->r[i][0] - 1);
        next = src->r[i][1] + 1;
    }
    if (!rc && next <= 0x10FFFF) rc = add_gap(dst, next, 0x10FFFF);
    return rc;
}

static int add_mask(tok__uset_t *s, uint32_t mask)
{
    mask &= ~GC(CS); /* no surrogate is valid UTF-8, and PCRE2 refuses \x{D800} */
    int rc = 0;
    for (size_t i = 0; i < tok__ucd_gc_runs_n && !rc; i++) {
        uint32_t v = tok__ucd_gc_runs[i];
        if (!(mask & GC(v & 31))) continue;
        uint32_t end = i + 1 < tok__ucd_gc_runs_n ? tok__ucd_gc_runs[i + 1] >> 5 : 0x110000;
        rc = tok__uset_add(s, v >> 5, end - 1);
    }
    return rc;
}

static int add_space(tok__uset_t *s)
{
    int rc = 0;
    for (uint32_t c = 0; c <= 0x3000 && !rc; c++) /* White_Space ends at U+3000 */
        if (tok__is_space(c)) rc = tok__uset_add(s, c, c);
    return rc;
}

static int add_pairs(tok__uset_t *s, const uint32_t (*r)[2], size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = tok__uset_add(s, r[i][0], r[i][1]);
    return rc;
}

int tok__uset_lookup(const char *name, size_t n, uint32_t *mask)
{
    char key[32];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (c == ' ' || c == '_' || c == '-') continue;
        if (k + 1 >= sizeof(key)) return 0;
        key[k++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    key[k] = 0;
    if (k == 2)
        for (int g = 0; g < TOK__GC_COUNT; g++)
            if (key[0] == (tok__ucd_gc_names[g][0] | 0x20) && key[1] == tok__ucd_gc_names[g][1]) {
                *mask = GC(g);
                return 1;
            }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(key, names[i].name)) {
            *mask = names[i].mask;
            return 1;
        }
    return 0;
}

int tok__uset_build(tok__uset_t *s, int kind, uint32_t mask, int negate)
{
    tok__uset_t pos = {0};
    int rc;
    switch (kind) {
    case TOK__USET_GC:
        rc = add_mask(&pos, mask);
        break;
    case TOK__USET_DIGIT:
        rc = add_mask(&pos, GC(ND));
        break;
    case TOK__USET_WORD:
        rc = add_mask(&pos, GC_L | GC(NL) | GC_M | GC(ND) | GC(PC));
        if (!rc) rc = add_pairs(&pos, tok__ucd_word_extra, tok__ucd_word_extra_n);
        break;
    case TOK__USET_SPACE:
        rc = add_space(&pos);
        break;
    default: { /* TOK__USET_HEX */
        static const uint32_t hex[][2] = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};
        rc = add_pairs(&pos, hex, 3);
    }
    }
    if (!rc) {
        tok__uset_normalize(&pos);
        rc = negate ? add_complement(s, &pos) : add_pairs(s, (const uint32_t(*)[2])pos.r, pos.n);
    }
    tok__uset_free(&pos);
    return rc;
}

/* a - b (both normalized) into out. */
static int set_diff(const tok__uset_t *a, const tok__uset_t *b, tok__uset_t *out)
{
    size_t j = 0;
    int rc = 0;
    for (size_t i = 0; i < a->n && !rc; i++) {
        uint32_t lo = a->r[i][0], hi = a->r[i][1];
        while (j < b->n && b->r[j][1] < lo)
            j++;
        for (size_t k = j; k < b->n && b->r[k][0] <= hi && lo <= hi && !rc; k++) {
            if (b->r[k][0] > lo) rc = tok__uset_add(out, lo, b->r[k][0] - 1);
            if (b->r[k][1] >= hi) lo = hi + 1; /* the rest is covered */
            else lo = b->r[k][1] + 1;
        }
        if (!rc && lo <= hi) rc = tok__uset_add(out, lo, hi);
    }
    return rc;
}

/* PCRE2's property items for a category mask: whole groups as \p{L}, Lu|Ll|Lt as \p{L&},
 * the rest one category each. */
static size_t pcre2_names(uint32_t mask, char *out, size_t cap, int *count)
{
    static const struct {
        const char *name;
        uint32_t mask;
    } groups[] = {{"L&", GC(LU) | GC(LL) | GC(LT)}, {"L", GC_L}, {"M", GC_M}, {"N", GC_N},
                  {"P", GC_P}, {"S", GC_S}, {"Z", GC_Z}, {"C", GC_C}};
    size_t n = 0;
    *count = 0;
    if (mask == groups[0].mask) {
        (*count)++;
        return (size_t)snprintf(out, cap, "\\p{L&}");
    }
    for (size_t g = 1; g < sizeof(groups) / sizeof(groups[0]); g++)
        if ((mask & groups[g].mask) == groups[g].mask) {
            n += (size_t)snprintf(out + n, cap - n, "\\p{%s}", groups[g].name);
            mask &= ~groups[g].mask;
            (*count)++;
        }
    for (int c = 0; c < TOK__GC_COUNT; c++)
        if (mask & GC(c)) {
            n += (size_t)snprintf(out + n, cap - n, "\\p{%s}", tok__ucd_gc_names[c]);
            (*count)++;
        }
    return n;
}

/* PCRE2's own general category of every code point, as runs like tok__ucd_gc_runs: one
 * match of (\p{Cn}+)|(\p{Lu}+)|... after another over a subject of every code point. */
static struct {
    pthread_once_t once;
    uint32_t *runs;
    size_t n;
    int rc;
} theirs = {PTHREAD_ONCE_INIT, NULL, 0, 0};

static void probe_pcre2(void)
{
    char pat[TOK__GC_COUNT * 12 + 1];
    size_t pn = 0;
    for (int g = 0; g < TOK__GC_COUNT; g++)
        pn += (size_t)snprintf(pat + pn, sizeof(pat) - pn, "%s(\\p{%s}+)", g ? "|" : "",
                               tok__ucd_gc_names[g]);
    int code, rc = 0;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, pn, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    pcre2_match_data *md = re ? pcre2_match_data_create(TOK__GC_COUNT + 1, NULL) : NULL;
    char *subj = md ? malloc(4 * 0x110000) : NULL;
    size_t cap = 8192, n = 0;
    uint32_t *runs = subj ? malloc(cap * sizeof(*runs)) : NULL;
    if (!runs) {
        rc = re ? RCD_ENOMEM : RCD_EINTERNAL;
        goto cleanup;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    size_t len = 0;
    for (uint32_t c = 0; c < 0x110000; c = c == 0xD7FF ? 0xE000 : c + 1)
        len += tok__utf8_put(c, subj + len);
    for (size_t at = 0; at < len && !rc;) {
        int m = pcre2_match(re, (PCRE2_SPTR)subj, len, at, PCRE2_NO_UTF_CHECK, md, NULL);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (m < 2 || ov[0] != at) { /* every code point has a category */
            rc = RCD_EINTERNAL;
            break;
        }
        uint32_t cp;
        tok__utf8_next((const unsigned char *)subj + at, &cp);
        if (n == cap) {
            uint32_t *r = realloc(runs, 2 * cap * sizeof(*runs));
            if (!r) {
                rc = RCD_ENOMEM;
                break;
            }
            runs = r;
            cap *= 2;
        }
        runs[n++] = cp << 5 | (uint32_t)(m - 2);
        at = ov[1];
    }
cleanup:
    if (rc) {
        free(runs);
        runs = NULL;
    }
    theirs.runs = runs;
    theirs.n = n;
    theirs.rc = rc;
    free(subj);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

/* The code points PCRE2's tables put in a category mask (no surrogates). */
static int pcre2_set(uint32_t mask, tok__uset_t *out)
{
    pthread_once(&theirs.once, probe_pcre2);
    int rc = theirs.rc;
    for (size_t i = 0; i < theirs.n && !rc; i++) {
        uint32_t v = theirs.runs[i];
        if (!(mask & GC(v & 31))) continue;
        uint32_t end = i + 1 < theirs.n ? theirs.runs[i + 1] >> 5 : 0x110000;
        rc = add_gap(out, v >> 5, end - 1);
    }
    return rc;
}

int tok__uset_spell(int kind, uint32_t mask, int negate, tok__buf_t *props, tok__uset_t *s)
{
    if (kind == TOK__USET_DIGIT) mask = GC(ND);
    if (kind == TOK__USET_WORD) mask = GC_L | GC(NL) | GC_M | GC(ND) | GC(PC);
    if ((kind != TOK__USET_GC && kind != TOK__USET_DIGIT && kind != TOK__USET_WORD) ||
        !(mask & ~GC(CS))) /* \s, \h; and \p{Cs}, which nothing valid matches */
        return tok__uset_build(s, kind, mask, negate);
    tok__uset_t ours = {0};
    char names[256];
    int count, rc = tok__uset_build(&ours, kind, mask, 0);
    size_t nl = pcre2_names(mask & ~GC(CS), names, sizeof(names), &count);
    tok__uset_t pcre = {0};
    int have = 0;
    if (!rc && (!negate || count == 1)) {
        rc = pcre2_set(mask & ~GC(CS), &pcre);
        have = !rc;
        if (rc == RCD_EINTERNAL) rc = 0; /* PCRE2 lacks a category: ranges only */
    }
    if (!rc && have) {
        tok__uset_t extra = {0}, missing = {0};
        rc = set_diff(negate ? &ours : &pcre, negate ? &pcre : &ours, &extra);
        if (!rc) rc = set_diff(negate ? &pcre : &ours, negate ? &ours : &pcre, &missing);
        if (!rc && !extra.n) { /* PCRE2's items plus what they lack */
            if (negate) names[1] = 'P';
            rc = tok__buf_put(props, names, nl);
            if (!rc) rc = add_pairs(s, (const uint32_t(*)[2])missing.r, missing.n);
            have = 2;
        }
        tok__uset_free(&extra);
        tok__uset_free(&missing);
    }
    tok__uset_free(&pcre);
    if (have == 2) {
        tok__uset_free(&ours);
        return rc;
    }
    if (!rc)
        rc = negate ? add_complement(s, &ours)
                    : add_pairs(s, (const uint32_t(*)[2])ours.r, ours.n);
    tok__uset_free(&ours);
    return rc;
}

int tok__is_numeric(uint32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    size_t lo = 0, hi = tok__ucd_numeric_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp > tok__ucd_numeric[mid][1])
            lo = mid + 1;
        else if (cp < tok__ucd_numeric[mid][0])
            hi = mid;
        else
            return 1;
    }
    return 0;
}
