/* Patterns of tokenizer.json (literal strings and Oniguruma regexes) run through PCRE2 with
 * UTF and JIT, HF's find_matches over them, and the Split delimiter behaviors.
 *
 * HF compiles regexes with Oniguruma's Ruby syntax. PCRE2 agrees on everything tokenizers use
 * except a few escapes, rewritten here: \s is Unicode White_Space (PCRE2 adds U+180E), \h is
 * a hex digit (PCRE2: horizontal space), \w is Unicode word, \uHHHH is a code point, ^/$ are
 * line anchors and (?m) means dot-all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

const char tok__gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define SPACE_ITEMS                                                                                \
    "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"       \
    "\\x{3000}"
#define WORD_ITEMS "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}"
#define HEX_ITEMS "0-9a-fA-F"

static int puts_(tok__buf_t *b, const char *s)
{
    return tok__buf_put(b, s, strlen(s));
}

static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Rewrites an Oniguruma (Ruby syntax) pattern for PCRE2. */
static int translate(const char *in, size_t n, tok__buf_t *out, char *err, size_t errlen)
{
    int in_class = 0, rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char c = in[i];
        if (c == '\\') {
            if (i + 1 >= n)
                return rcd_fail(RCD_EFORMAT, err, errlen, "regex ends with a backslash");
            char d = in[++i];
            switch (d) {
            case 's':
                rc = puts_(out, in_class ? SPACE_ITEMS : "[" SPACE_ITEMS "]");
                break;
            case 'S':
                if (in_class)
                    return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                    "regex: \\S inside a character class is not supported");
                rc = puts_(out, "[^" SPACE_ITEMS "]");
                break;
            case 'w':
                rc = puts_(out, in_class ? WORD_ITEMS : "[" WORD_ITEMS "]");
                break;
            case 'W':
                if (in_class)
                    return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                    "regex: \\W inside a character class is not supported");
                rc = puts_(out, "[^" WORD_ITEMS "]");
                break;
            case 'h':
                rc = puts_(out, in_class ? HEX_ITEMS : "[" HEX_ITEMS "]");
                break;
            case 'H':
                if (in_class)
                    return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                    "regex: \\H inside a character class is not supported");
                rc = puts_(out, "[^" HEX_ITEMS "]");
                break;
            case 'u':
                if (i + 4 >= n || !is_hex(in[i + 1]) || !is_hex(in[i + 2]) || !is_hex(in[i + 3]) ||
                    !is_hex(in[i + 4]))
                    return rcd_fail(RCD_EFORMAT, err, errlen, "regex: bad \\u escape");
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
        if (!in_class) {
            if (c == '[') {
                in_class = 1;
                rc = tok__buf_put(out, "[", 1);
                if (i + 1 < n && in[i + 1] == '^') rc = rc ? rc : tok__buf_put(out, in + ++i, 1);
                if (i + 1 < n && in[i + 1] == ']') /* a leading ']' is literal */
                    rc = rc ? rc : tok__buf_put(out, in + ++i, 1);
                continue;
            }
            if (c == '(' && i + 1 < n && in[i + 1] == '?') {
                /* inline options: Ruby's m is dot-all (PCRE2's s) */
                rc = tok__buf_put(out, "(?", 2);
                i++;
                while (!rc && i + 1 < n && strchr("imx-", in[i + 1])) {
                    char o = in[++i] == 'm' ? 's' : in[i];
                    rc = tok__buf_put(out, &o, 1);
                }
                continue;
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
                    if (!end) return rcd_fail(RCD_EFORMAT, err, errlen, "regex: bad POSIX class");
                    rc = tok__buf_put(out, in + i, (size_t)(end - (in + i)));
                    i = (size_t)(end - in) - 1;
                    continue;
                }
                return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                "regex: nested character classes are not supported");
            }
            if (c == '&' && i + 1 < n && in[i + 1] == '&')
                return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                "regex: character class intersection (&&) is not supported");
            if (c == ']') in_class = 0;
            rc = tok__buf_put(out, &c, 1);
        }
    }
    if (rc) return rc;
    if (in_class) return rcd_fail(RCD_EFORMAT, err, errlen, "regex: unterminated character class");
    return tok__buf_put(out, "", 0);
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
