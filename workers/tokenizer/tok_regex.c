/* Patterns of tokenizer.json (literal strings and Oniguruma regexes) run through PCRE2 with
 * UTF and JIT, HF's find_matches over them, and the Split delimiter behaviors.
 *
 * HF compiles regexes with Oniguruma's Ruby syntax. PCRE2 agrees on everything tokenizers use
 * except a few escapes, rewritten here: general category properties (\p{L}, \P{Lu},
 * \p{^N}, \p{Letter}, ...), \d and \w are spelled out as code point ranges from the
 * Unicode tables of the reference (tok_ucd.c: PCRE2's own are older); \s is Unicode
 * White_Space (PCRE2 adds U+180E), \h is a hex digit (PCRE2: horizontal space), \uHHHH is
 * a code point, ^/$ are line anchors and (?m) means dot-all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

const char tok__gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int puts_(tok__buf_t *b, const char *s)
{
    return tok__buf_put(b, s, strlen(s));
}

static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int put_ranges(tok__buf_t *b, const tok__uset_t *s)
{
    int rc = 0;
    for (size_t i = 0; i < s->n && !rc; i++) {
        char r[32];
        int k = s->r[i][0] == s->r[i][1]
                    ? snprintf(r, sizeof(r), "\\x{%X}", (unsigned)s->r[i][0])
                    : snprintf(r, sizeof(r), "\\x{%X}-\\x{%X}", (unsigned)s->r[i][0],
                               (unsigned)s->r[i][1]);
        rc = tok__buf_put(b, r, (size_t)k);
    }
    return rc;
}

#define ALL "\\x{0}-\\x{10FFFF}]"
#define CI_DEPTH 64

typedef struct {
    tok__buf_t *out;
    int in_class;
    size_t class_mark;  /* out->n after the class's "[" or "[^" */
    int class_negated;
    tok__uset_t cls;    /* the property sets of the open class, emitted at its ']' */
    int ci;             /* (?i) may be in effect here */
    int depth;          /* open groups */
    unsigned char saved[CI_DEPTH]; /* ci to restore at each group's ')' */
} tr_t;

/* A class escape: added to the open class, or spelled out as a class of its own. Oniguruma
 * case-folds a bracketed class but not a lone \p{..} (nor \w), so under (?i) the latter is
 * wrapped in (?-i:...). */
static int put_set(tr_t *t, int kind, uint32_t mask, int negate)
{
    if (t->in_class) return tok__uset_spell(kind, mask, negate, t->out, &t->cls);
    tok__uset_t s = {0};
    tok__buf_t props = {0};
    int wrap = t->ci && (kind == TOK__USET_GC || kind == TOK__USET_WORD);
    int rc = tok__uset_spell(kind, mask, 0, &props, &s);
    if (!rc && wrap) rc = puts_(t->out, "(?-i:");
    if (!rc && !s.n && !props.n) /* nothing (only \p{Cs}): match nothing, or anything */
        rc = puts_(t->out, negate ? "[" ALL : "[^" ALL);
    else if (!rc) {
        rc = puts_(t->out, negate ? "[^" : "[");
        if (!rc && props.n) rc = tok__buf_put(t->out, props.p, props.n);
        if (!rc) rc = put_ranges(t->out, &s);
        if (!rc) rc = puts_(t->out, "]");
    }
    if (!rc && wrap) rc = puts_(t->out, ")");
    tok__uset_free(&s);
    tok__buf_free(&props);
    return rc;
}

/* \p{Name}, \p{^Name}, \P{Name} at in[*i] (the 'p' or 'P'). */
static int put_property(tr_t *t, const char *in, size_t n, size_t *i, char *err, size_t errlen)
{
    char d = in[*i];
    if (*i + 1 >= n || in[*i + 1] != '{') /* Ruby syntax: \pL is "pL" */
        return tok__buf_put(t->out, &d, 1);
    const char *name = in + *i + 2, *end = memchr(name, '}', n - (*i + 2));
    if (!end) return rcd_fail(RCD_EFORMAT, err, errlen, "regex: unterminated \\%c{", d);
    size_t len = (size_t)(end - name);
    int negate = d == 'P';
    if (len && name[0] == '^') {
        negate = !negate;
        name++;
        len--;
    }
    uint32_t mask;
    int rc;
    if (tok__uset_lookup(name, len, &mask)) {
        rc = put_set(t, TOK__USET_GC, mask, negate);
    } else { /* not a general category: PCRE2's own tables (scripts, binary properties) */
        rc = tok__buf_put(t->out, "\\", 1);
        if (!rc) rc = tok__buf_put(t->out, in + *i, (size_t)(end + 1 - (in + *i)));
    }
    *i = (size_t)(end - in);
    return rc;
}

/* "(?" at in[*i]: Ruby's inline options (m is dot-all: PCRE2's s), and where (?i) holds. */
static int open_group(tr_t *t, const char *in, size_t n, size_t *i)
{
    int ci = t->ci, on = 1, rc = tok__buf_put(t->out, "(?", 2);
    ++*i;
    while (!rc && *i + 1 < n && strchr("imx-", in[*i + 1])) {
        char o = in[++*i];
        if (o == '-') on = 0;
        if (o == 'i') ci = on;
        if (o == 'm') o = 's';
        rc = tok__buf_put(t->out, &o, 1);
    }
    if (*i + 1 < n && in[*i + 1] == ')') { /* (?i): for the rest of the enclosing group */
        t->ci = ci;
        ++*i;
        return rc ? rc : tok__buf_put(t->out, ")", 1);
    }
    if (t->depth < CI_DEPTH) t->saved[t->depth] = (unsigned char)t->ci;
    t->depth++;
    t->ci = ci;
    return rc;
}

static void close_group(tr_t *t)
{
    if (t->depth == 0) return; /* unbalanced: PCRE2 reports it */
    t->depth--;
    t->ci = t->depth < CI_DEPTH ? t->saved[t->depth] : 1;
}

static int close_class(tr_t *t)
{
    int rc = 0;
    tok__uset_normalize(&t->cls);
    if (!t->cls.n && t->out->n == t->class_mark) { /* only \p{Cs}: [] is not a class */
        t->out->n = t->class_mark - (t->class_negated ? 2 : 1);
        rc = puts_(t->out, t->class_negated ? "[" ALL : "[^" ALL);
    } else {
        rc = put_ranges(t->out, &t->cls);
        if (!rc) rc = tok__buf_put(t->out, "]", 1);
    }
    t->cls.n = 0;
    t->in_class = 0;
    return rc;
}

/* Rewrites an Oniguruma (Ruby syntax) pattern for PCRE2. */
static int translate(const char *in, size_t n, tok__buf_t *out, char *err, size_t errlen)
{
    tr_t t = {.out = out};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char c = in[i];
        if (c == '\\') {
            if (i + 1 >= n) {
                rc = rcd_fail(RCD_EFORMAT, err, errlen, "regex ends with a backslash");
                break;
            }
            char d = in[++i];
            switch (d) {
            case 's':
            case 'S':
                rc = put_set(&t, TOK__USET_SPACE, 0, d == 'S');
                break;
            case 'w':
            case 'W':
                rc = put_set(&t, TOK__USET_WORD, 0, d == 'W');
                break;
            case 'd':
            case 'D':
                rc = put_set(&t, TOK__USET_DIGIT, 0, d == 'D');
                break;
            case 'h':
            case 'H':
                rc = put_set(&t, TOK__USET_HEX, 0, d == 'H');
                break;
            case 'p':
            case 'P':
                rc = put_property(&t, in, n, &i, err, errlen);
                break;
            case 'u':
                if (i + 4 >= n || !is_hex(in[i + 1]) || !is_hex(in[i + 2]) || !is_hex(in[i + 3]) ||
                    !is_hex(in[i + 4])) {
                    rc = rcd_fail(RCD_EFORMAT, err, errlen, "regex: bad \\u escape");
                    break;
                }
                rc = puts_(out, "\\x{");
                if (!rc) rc = tok__buf_put(out, in + i + 1, 4);
                if (!rc) rc = puts_(out, "}");
                i += 4;
                break;
            default: {
                char e[2] = {'\\', d};
                rc = tok__buf_put(out, e, 2);
            }
            }
            continue;
        }
        if (!t.in_class) {
            if (c == '[') {
                t.in_class = 1;
                t.class_negated = i + 1 < n && in[i + 1] == '^';
                rc = puts_(out, t.class_negated ? "[^" : "[");
                i += (size_t)t.class_negated;
                t.class_mark = out->n;
                if (i + 1 < n && in[i + 1] == ']') /* a leading ']' is literal */
                    rc = rc ? rc : tok__buf_put(out, in + ++i, 1);
                continue;
            }
            if (c == '(' && i + 1 < n && in[i + 1] == '?') {
                rc = open_group(&t, in, n, &i);
                continue;
            }
            if (c == '(') {
                if (t.depth < CI_DEPTH) t.saved[t.depth] = (unsigned char)t.ci;
                t.depth++;
            } else if (c == ')') {
                close_group(&t);
            }
            rc = tok__buf_put(out, &c, 1);
        } else {
            if (c == '[') {
                if (i + 1 < n && in[i + 1] == ':') { /* POSIX class [:alpha:] */
                    const char *end = NULL;
                    for (size_t j = i + 2; j + 1 < n; j++)
                        if (in[j] == ':' && in[j + 1] == ']') {
                            end = in + j + 2;
                            break;
                        }
                    if (!end) {
                        rc = rcd_fail(RCD_EFORMAT, err, errlen, "regex: bad POSIX class");
                        break;
                    }
                    rc = tok__buf_put(out, in + i, (size_t)(end - (in + i)));
                    i = (size_t)(end - in) - 1;
                    continue;
                }
                rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                              "regex: nested character classes are not supported");
                break;
            }
            if (c == '&' && i + 1 < n && in[i + 1] == '&') {
                rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                              "regex: character class intersection (&&) is not supported");
                break;
            }
            rc = c == ']' ? close_class(&t) : tok__buf_put(out, &c, 1);
        }
    }
    if (!rc && t.in_class)
        rc = rcd_fail(RCD_EFORMAT, err, errlen, "regex: unterminated character class");
    tok__uset_free(&t.cls);
    return rc ? rc : tok__buf_put(out, "", 0);
}

int tok__pat_compile_regex(tok__pat_t *p, const char *onig, size_t n, char *err, size_t errlen)
{
    tok__buf_t b = {0};
    int rc = translate(onig, n, &b, err, errlen);
    memset(p, 0, sizeof(*p));
    if (rc) goto cleanup;
    int code;
    PCRE2_SIZE off;
    p->re = pcre2_compile((PCRE2_SPTR)b.p, b.n, PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &code,
                          &off, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof(msg));
        rc = rcd_fail(RCD_EFORMAT, err, errlen, "regex does not compile at offset %zu: %s",
                      (size_t)off, (const char *)msg);
        goto cleanup;
    }
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
cleanup:
    tok__buf_free(&b);
    return rc;
}

int tok__pat_set_literal(tok__pat_t *p, const char *s, size_t n)
{
    memset(p, 0, sizeof(*p));
    p->lit = malloc(n + 1);
    if (!p->lit) return RCD_ENOMEM;
    memcpy(p->lit, s, n);
    p->lit[n] = 0;
    p->lit_len = n;
    return 0;
}

void tok__pat_free(tok__pat_t *p)
{
    free(p->lit);
    pcre2_code_free(p->re);
    memset(p, 0, sizeof(*p));
}

static int regex_find(const tok__pat_t *p, const char *s, size_t n, pcre2_match_data **md,
                      tok__spans_t *out, size_t *prev_out, char *err, size_t errlen)
{
    if (!*md) {
        *md = pcre2_match_data_create(4, NULL);
        if (!*md) return RCD_ENOMEM;
    }
    size_t prev = 0, last_end = 0;
    int have_last = 0;
    size_t last_match_end = 0;
    while (last_end <= n) {
        int rc = p->jit ? pcre2_jit_match(p->re, (PCRE2_SPTR)s, n, last_end, 0, *md, NULL)
                        : PCRE2_ERROR_JIT_STACKLIMIT;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* JIT's small stack: the interpreter's is heap */
            rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, last_end,
                             PCRE2_NO_UTF_CHECK | (p->jit ? PCRE2_NO_JIT : 0), *md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            int big = rc == PCRE2_ERROR_NOMEMORY || rc == PCRE2_ERROR_JIT_STACKLIMIT ||
                      rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
                      rc == PCRE2_ERROR_HEAPLIMIT;
            return rcd_fail(big ? RCD_ETOOBIG : RCD_EINTERNAL, err, errlen,
                            "regex match failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(*md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms && have_last && last_match_end == me) {
            /* no empty match right after a match (rust-onig's find_iter): step one char */
            size_t k =
                last_end < n ? tok__utf8_seq((const unsigned char *)s + last_end, n - last_end) : 1;
            last_end += k ? k : 1;
            continue;
        }
        last_end = me;
        last_match_end = me;
        have_last = 1;
        if (ms != prev && tok__spans_push(out, prev, ms, 0)) return RCD_ENOMEM;
        if (tok__spans_push(out, ms, me, 1)) return RCD_ENOMEM;
        prev = me;
    }
    *prev_out = prev;
    return 0;
}

int tok__pat_find(const tok__pat_t *p, const char *s, size_t n, pcre2_match_data **md,
                  tok__spans_t *out, char *err, size_t errlen)
{
    out->n = 0;
    if (n == 0) return tok__spans_push(out, 0, 0, 0);
    size_t prev = 0;
    if (p->re) {
        int rc = regex_find(p, s, n, md, out, &prev, err, errlen);
        if (rc) return rc;
    } else if (p->lit_len) {
        const char *at = s, *end = s + n;
        while ((size_t)(end - at) >= p->lit_len) {
            const char *m = tok__find(at, (size_t)(end - at), p->lit, p->lit_len);
            if (!m) break;
            size_t ms = (size_t)(m - s);
            if (ms != prev && tok__spans_push(out, prev, ms, 0)) return RCD_ENOMEM;
            if (tok__spans_push(out, ms, ms + p->lit_len, 1)) return RCD_ENOMEM;
            prev = ms + p->lit_len;
            at = s + prev;
        }
    }
    if (prev != n && tok__spans_push(out, prev, n, 0)) return RCD_ENOMEM;
    return 0;
}

void tok__split_behavior(tok__spans_t *sp, int behavior, int invert)
{
    tok__span_t *v = sp->v;
    size_t n = sp->n, w = 0;
    if (invert)
        for (size_t i = 0; i < n; i++)
            v[i].match = !v[i].match;
    int prev_match = 0;
    switch (behavior) {
    case TOK__SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++)
            v[i].match = 0;
        return;
    case TOK__SPLIT_REMOVED:
        return;
    case TOK__SPLIT_CONTIGUOUS:
    case TOK__SPLIT_MERGED_PREV:
        for (size_t i = 0; i < n; i++) {
            int m = v[i].match;
            int merge = behavior == TOK__SPLIT_CONTIGUOUS ? m == prev_match : m && !prev_match;
            if (merge && w > 0)
                v[w - 1].end = v[i].end;
            else
                v[w++] = (tok__span_t){v[i].start, v[i].end, 0};
            prev_match = m;
        }
        sp->n = w;
        return;
    case TOK__SPLIT_MERGED_NEXT:
        w = n; /* the fold runs backwards and fills v[w..n) */
        for (size_t i = n; i-- > 0;) {
            int m = v[i].match;
            if (m && !prev_match && w < n)
                v[w].start = v[i].start;
            else
                v[--w] = (tok__span_t){v[i].start, v[i].end, 0};
            prev_match = m;
        }
        memmove(v, v + w, (n - w) * sizeof(*v));
        sp->n = n - w;
        return;
    }
}
