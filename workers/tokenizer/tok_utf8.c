/* UTF-8 validation and lossy repair for the tokenizer, plus its growable buffers.
 * Repair follows "substitution of maximal subparts" (WHATWG, Python, Rust from_utf8_lossy). */
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

int tok__buf_reserve(tok__buf_t *b, size_t extra)
{
    if (b->cap - b->n > extra) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->n <= extra) {
        if (cap > SIZE_MAX / 2) return RCD_ENOMEM;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return RCD_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok__buf_put(tok__buf_t *b, const void *p, size_t n)
{
    if (tok__buf_reserve(b, n)) return RCD_ENOMEM;
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0; /* reserve keeps one spare byte */
    return 0;
}

void tok__buf_free(tok__buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

int tok__spans_push(tok__spans_t *s, size_t start, size_t end, int match)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        tok__span_t *v = realloc(s->v, cap * sizeof(*v));
        if (!v) return RCD_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (tok__span_t){start, end, match};
    return 0;
}

void tok__spans_free(tok__spans_t *s)
{
    free(s->v);
    memset(s, 0, sizeof(*s));
}

const char *tok__find(const char *hay, size_t n, const char *needle, size_t nn)
{
    const char *end = hay + n;
    while ((size_t)(end - hay) >= nn) {
        const char *p = memchr(hay, needle[0], (size_t)(end - hay) - nn + 1);
        if (!p) return NULL;
        if (memcmp(p, needle, nn) == 0) return p;
        hay = p + 1;
    }
    return NULL;
}

int tok__ids_push(tok_ids_t *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof(*v));
        if (!v) return RCD_ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

void tok_ids_free(tok_ids_t *ids)
{
    if (!ids) return;
    free(ids->v);
    memset(ids, 0, sizeof(*ids));
}

void tok_text_free(tok_text_t *text)
{
    if (!text) return;
    free(text->p);
    memset(text, 0, sizeof(*text));
}

/* Number of bytes of the sequence at s that are a valid start of a character: the full
 * length when complete and valid; less when invalid (the maximal subpart) or truncated. Sets
 * *complete accordingly. n >= 1. */
static size_t seq_scan(const unsigned char *s, size_t n, int *complete)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    *complete = 0;
    if (c < 0x80) {
        *complete = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 1; /* never valid as a lead byte: a one-byte subpart */
    size_t i = 1;
    for (; i < need; i++) {
        if (i >= n) return i; /* truncated: incomplete, not complete */
        unsigned b = s[i];
        if (b < lo || b > hi) return i;
        lo = 0x80;
        hi = 0xBF;
    }
    *complete = 1;
    return need;
}

size_t tok__utf8_seq(const unsigned char *s, size_t n)
{
    int complete;
    if (!n) return 0;
    size_t k = seq_scan(s, n, &complete);
    return complete ? k : 0;
}

size_t tok__utf8_next(const unsigned char *s, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

size_t tok__utf8_put(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tok__utf8_valid(const char *str, size_t n, size_t *bad)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int complete;
        size_t k = seq_scan(s + i, n - i, &complete);
        if (!complete) {
            if (bad) *bad = i;
            return 0;
        }
        i += k;
    }
    return 1;
}

int tok__utf8_lossy(const char *str, size_t n, tok__buf_t *out, int hold_tail, size_t *held)
{
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;
    if (held) *held = 0;
    if (tok__buf_reserve(out, n + 3)) return RCD_ENOMEM;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int complete;
        size_t k = seq_scan(s + i, n - i, &complete);
        if (complete) {
            i += k;
            continue;
        }
        if (tok__buf_put(out, s + run, i - run)) return RCD_ENOMEM;
        if (hold_tail && i + k == n && k < 4 && (s[i] >= 0xC2 && s[i] <= 0xF4)) {
            /* truncated, not invalid: may still be completed by more bytes */
            if (held) *held = k;
            return 0;
        }
        if (tok__buf_put(out, fffd, 3)) return RCD_ENOMEM;
        i += k;
        run = i;
    }
    return tok__buf_put(out, s + run, n - run);
}

int tok__is_space(uint32_t c)
{
    if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85) return 0;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
