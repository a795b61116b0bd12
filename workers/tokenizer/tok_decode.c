/* Decoding (ids -> token strings -> decoder chain -> text, as HF's Tokenizer.decode) and the
 * streaming detokenizer, which re-decodes a short window of recent ids and emits the growth
 * once it ends on a complete character (HF's DecodeStream scheme). */
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

/* A list of strings: spans into one buffer. */
typedef struct {
    tok__buf_t text;
    tok__spans_t at;
} list_t;

static void list_free(list_t *l)
{
    tok__buf_free(&l->text);
    tok__spans_free(&l->at);
}

static int list_add(list_t *l, const char *s, size_t n)
{
    size_t st = l->text.n;
    if (tok__buf_put(&l->text, s, n) || tok__spans_push(&l->at, st, st + n, 0)) return RCD_ENOMEM;
    return 0;
}

/* Appends to the last string of l (which must exist). */
static int list_extend(list_t *l, const char *s, size_t n)
{
    if (tok__buf_put(&l->text, s, n)) return RCD_ENOMEM;
    l->at.v[l->at.n - 1].end = l->text.n;
    return 0;
}

#define TOK_STR(l, i) ((l)->text.p + (l)->at.v[i].start)
#define TOK_LEN(l, i) ((l)->at.v[i].end - (l)->at.v[i].start)

static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

static int bytelevel(const list_t *in, list_t *out, int stream, int *held)
{
    tok__buf_t bytes = {0};
    int rc = 0;
    for (size_t i = 0; i < in->at.n && !rc; i++) {
        const unsigned char *s = (const unsigned char *)TOK_STR(in, i);
        size_t n = TOK_LEN(in, i), k = 0, start = bytes.n;
        while (k < n) {
            uint32_t cp;
            size_t cl = tok__utf8_next(s + k, &cp);
            int b = tok__cp_byte(cp);
            if (b < 0) break;
            char c = (char)b;
            if ((rc = tok__buf_put(&bytes, &c, 1))) break;
            k += cl;
        }
        if (!rc && k < n) { /* not all byte characters: the token as is */
            bytes.n = start;
            rc = tok__buf_put(&bytes, s, n);
        }
    }
    if (!rc) { /* one string: the bytes, lossily decoded */
        size_t h = 0;
        rc = tok__utf8_lossy(bytes.p ? bytes.p : "", bytes.n, &out->text, stream == 1, &h);
        if (!rc) rc = tok__spans_push(&out->at, 0, out->text.n, 0);
        if (h) *held = 1;
    }
    tok__buf_free(&bytes);
    return rc;
}

static int hexd(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* "<0xAB>" -> 0xAB, else -1. HF parses the two characters with Rust's u8::from_str_radix,
 * which also takes a '+' sign: "<0x+A>" is byte 0x0A. */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    if (s[3] == '+') return hexd(s[4]);
    int hi = hexd(s[3]), lo = hexd(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static int flush_bytes(tok__buf_t *run, list_t *out, int stream, int last, int *held)
{
    int rc = 0;
    if (!run->n) return 0;
    if (stream) {
        size_t h = 0, st = out->text.n;
        if ((rc = tok__utf8_lossy(run->p, run->n, &out->text, stream == 1 && last, &h))) return rc;
        rc = tok__spans_push(&out->at, st, out->text.n, 0);
        if (h) *held = 1;
    } else if (tok__utf8_valid(run->p, run->n, NULL)) {
        rc = list_add(out, run->p, run->n);
    } else {
        for (size_t i = 0; i < run->n && !rc; i++)
            rc = list_add(out, fffd, 3);
    }
    run->n = 0;
    return rc;
}

static int bytefallback(const list_t *in, list_t *out, int stream, int *held)
{
    tok__buf_t run = {0};
    int rc = 0;
    for (size_t i = 0; i < in->at.n && !rc; i++) {
        const char *s = TOK_STR(in, i);
        size_t n = TOK_LEN(in, i);
        int b = byte_token(s, n);
        if (b >= 0) {
            char c = (char)b;
            rc = tok__buf_put(&run, &c, 1);
        } else if (!(rc = flush_bytes(&run, out, stream, 0, held))) {
            rc = list_add(out, s, n);
        }
    }
    if (!rc) rc = flush_bytes(&run, out, stream, 1, held);
    tok__buf_free(&run);
    return rc;
}

static int apply(const tok_t *t, const tok__dec_t *d, const list_t *in, list_t *out, int stream,
                 int *held, pcre2_match_data **md)
{
    int rc = 0;
    out->text.n = 0;
    out->at.n = 0;
    switch (d->kind) {
    case TOK__D_BYTELEVEL:
        return bytelevel(in, out, stream, held);
    case TOK__D_BYTEFALLBACK:
        return bytefallback(in, out, stream, held);
    case TOK__D_FUSE:
        if ((rc = list_add(out, "", 0))) return rc;
        for (size_t i = 0; i < in->at.n && !rc; i++)
            rc = list_extend(out, TOK_STR(in, i), TOK_LEN(in, i));
        return rc;
    case TOK__D_METASPACE:
        for (size_t i = 0; i < in->at.n && !rc; i++) {
            const char *s = TOK_STR(in, i);
            size_t n = TOK_LEN(in, i), k = 0;
            if ((rc = list_add(out, "", 0))) break;
            while (k < n && !rc) {
                size_t cl = tok__utf8_seq((const unsigned char *)s + k, n - k);
                cl = cl ? cl : 1;
                if (cl == d->rep_len && !memcmp(s + k, d->rep, cl)) {
                    if (!(i == 0 && d->drop_first)) rc = list_extend(out, " ", 1);
                } else {
                    rc = list_extend(out, s + k, cl);
                }
                k += cl;
            }
        }
        return rc;
    case TOK__D_REPLACE: {
        tok__spans_t sp = {0};
        for (size_t i = 0; i < in->at.n && !rc; i++) {
            const char *s = TOK_STR(in, i);
            if ((rc = tok__pat_find(&d->pat, s, TOK_LEN(in, i), md, &sp, NULL, 0)) ||
                (rc = list_add(out, "", 0)))
                break;
            for (size_t k = 0; k < sp.n && !rc; k++)
                rc = sp.v[k].match
                         ? list_extend(out, d->content, d->content_len)
                         : list_extend(out, s + sp.v[k].start, sp.v[k].end - sp.v[k].start);
        }
        tok__spans_free(&sp);
        return rc;
    }
    case TOK__D_STRIP:
        for (size_t i = 0; i < in->at.n && !rc; i++) {
            const unsigned char *s = (const unsigned char *)TOK_STR(in, i);
            size_t n = TOK_LEN(in, i), a = 0, b = n, k;
            uint32_t cp;
            for (k = 0; k < d->start && a < b; k++) {
                size_t cl = tok__utf8_next(s + a, &cp);
                if (cp != d->strip_cp) break;
                a += cl;
            }
            for (k = 0; k < d->stop && b > a; k++) {
                size_t c = b - 1;
                while (c > a && (s[c] & 0xC0) == 0x80)
                    c--;
                tok__utf8_next(s + c, &cp);
                if (cp != d->strip_cp) break;
                b = c;
            }
            rc = list_add(out, (const char *)s + a, b - a);
        }
        return rc;
    }
    (void)t;
    return RCD_EINTERNAL;
}

/* stream: 0 = exactly as HF; 1 = hold an unfinished trailing character (sets *held);
 * 2 = stream semantics (invalid byte runs per maximal subpart) without holding. */
int tok__decode(const tok_t *t, const int32_t *ids, size_t n, int flags, int stream,
                tok__buf_t *out, int *held, char *err, size_t errlen)
{
    list_t l[2];
    pcre2_match_data *md = NULL;
    int rc = 0, cur = 0, h = 0;
    memset(l, 0, sizeof(l));
    for (size_t i = 0; i < n && !rc; i++) {
        size_t len;
        const char *s = tok__id_str(t, ids[i], &len);
        if (!s || ((flags & TOK_SKIP_SPECIAL) && t->special_by_id[ids[i]])) continue;
        rc = list_add(&l[0], s, len);
    }
    for (size_t i = 0; i < t->n_decs && !rc; i++) {
        rc = apply(t, &t->decs[i], &l[cur], &l[!cur], stream, &h, &md);
        cur = !cur;
    }
    out->n = 0;
    if (!rc && (rc = tok__buf_put(out, "", 0)) == 0) {
        for (size_t i = 0; i < l[cur].at.n && !rc; i++) {
            if (!t->has_decoder && i > 0) rc = tok__buf_put(out, " ", 1);
            if (!rc) rc = tok__buf_put(out, TOK_STR(&l[cur], i), TOK_LEN(&l[cur], i));
        }
    }
    if (held) *held = h;
    if (rc)
        rcd_fail(rc, err, errlen, "tok_decode: %s",
                 rc == RCD_ENOMEM ? "out of memory" : "regex failure");
    list_free(&l[0]);
    list_free(&l[1]);
    pcre2_match_data_free(md);
    return rc;
}

int tok_decode(const tok_t *t, const int32_t *ids, size_t n, int flags, tok_text_t *out, char *err,
               size_t errlen)
{
    if (!t || !out || (!ids && n))
        return rcd_fail(RCD_EINVAL, err, errlen, "tok_decode: bad arguments");
    tok__buf_t b = {out->p, out->n, out->cap};
    int rc = tok__decode(t, ids, n, flags, 0, &b, NULL, err, errlen);
    out->p = b.p;
    out->cap = b.cap;
    out->n = rc ? 0 : b.n;
    if (rc && out->p) out->p[0] = 0;
    return rc;
}

/* ---- streaming ------------------------------------------------------------------------- */

#define STREAM_MAX_HELD 64 /* ids held for one unfinished character before giving up on it */

struct tok_stream {
    const tok_t *t;
    int flags;
    int32_t *ids; /* window: ids since the start of the previously emitted chunk */
    size_t n, cap;
    size_t prefix_ids; /* ids[0..prefix_ids) decode to `prefix`, already emitted */
    tok__buf_t prefix, cur, delta;
};

int tok_stream_new(const tok_t *t, int flags, tok_stream_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!t) return rcd_fail(RCD_EINVAL, err, errlen, "tok_stream_new: no tokenizer");
    tok_stream_t *s = calloc(1, sizeof(*s));
    if (!s) return rcd_fail(RCD_ENOMEM, err, errlen, "tok_stream_new: out of memory");
    s->t = t;
    s->flags = flags;
    *out = s;
    return 0;
}

void tok_stream_free(tok_stream_t *s)
{
    if (!s) return;
    free(s->ids);
    tok__buf_free(&s->prefix);
    tok__buf_free(&s->cur);
    tok__buf_free(&s->delta);
    free(s);
}

static int emit(tok_stream_t *s, int mode, const char **delta, size_t *len, char *err,
                size_t errlen)
{
    int held = 0, rc;
    *delta = "";
    *len = 0;
    if ((rc = tok__decode(s->t, s->ids, s->n, s->flags, mode, &s->cur, &held, err, errlen)))
        return rc;
    if (held && s->n - s->prefix_ids < STREAM_MAX_HELD) return 0;
    if (held) /* give up on the unfinished character: replace it */
        if ((rc = tok__decode(s->t, s->ids, s->n, s->flags, 2, &s->cur, NULL, err, errlen)))
            return rc;
    if (s->cur.n < s->prefix.n || (s->prefix.n && memcmp(s->cur.p, s->prefix.p, s->prefix.n)))
        return rcd_fail(RCD_EINTERNAL, err, errlen,
                        "tok_stream: decoded text no longer extends what was emitted");
    s->delta.n = 0;
    if ((rc = tok__buf_put(&s->delta, s->cur.p + s->prefix.n, s->cur.n - s->prefix.n))) return rc;
    /* keep the ids just emitted as left context for the next decode */
    if (s->prefix_ids)
        memmove(s->ids, s->ids + s->prefix_ids, (s->n - s->prefix_ids) * sizeof(*s->ids));
    s->n -= s->prefix_ids;
    s->prefix_ids = s->n;
    if ((rc = tok__decode(s->t, s->ids, s->n, s->flags, 2, &s->prefix, NULL, err, errlen)))
        return rc;
    *delta = s->delta.p;
    *len = s->delta.n;
    return 0;
}

int tok_stream_push(tok_stream_t *s, int32_t id, const char **delta, size_t *len, char *err,
                    size_t errlen)
{
    *delta = "";
    *len = 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        int32_t *v = realloc(s->ids, cap * sizeof(*v));
        if (!v) return rcd_fail(RCD_ENOMEM, err, errlen, "tok_stream: out of memory");
        s->ids = v;
        s->cap = cap;
    }
    s->ids[s->n++] = id;
    return emit(s, 1, delta, len, err, errlen);
}

int tok_stream_flush(tok_stream_t *s, const char **delta, size_t *len, char *err, size_t errlen)
{
    int rc = emit(s, 2, delta, len, err, errlen);
    s->n = s->prefix_ids = 0;
    s->prefix.n = 0;
    return rc;
}
