/* Parity with Hugging Face `tokenizers` over the committed corpus: for every fixture kind in
 * tests/golden/tokenizer/ (made by tools/gen_tok_fixtures.py), each string must encode to HF's
 * ids, decode to HF's text, round-trip where HF's does, and stream to the same text. The same
 * over every assigned code point of the reference's Unicode (unicode.cps, <kind>/unicode.bin). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/rcd_error.h"
#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/tokenizer/tok.h"

typedef struct {
    const uint8_t *p, *end;
} rd_t;

static int rd_varint(rd_t *r, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; r->p < r->end && shift < 64; shift += 7) {
        uint8_t b = *r->p++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

static int rd_u32(rd_t *r, uint32_t *v)
{
    if (r->end - r->p < 4) return -1;
    *v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
         (uint32_t)r->p[3] << 24;
    r->p += 4;
    return 0;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = sz >= 0 ? malloc((size_t)sz + 1) : NULL;
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) {
        free(p);
        p = NULL;
    }
    if (p) p[sz] = 0;
    fclose(f);
    *n = (size_t)sz;
    return p;
}

static uint32_t fnv1a(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

static uint32_t ids_hash(const int32_t *ids, size_t n)
{
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            h = (h ^ (((uint32_t)ids[i] >> (8 * k)) & 0xFF)) * 0x01000193u;
    return h;
}

/* Strict UTF-8 check (RFC 3629), independent of the module's own. */
static int utf8_ok(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], need, lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else
            return 0;
        if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (unsigned k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

typedef struct {
    const char **s;
    size_t *len;
    size_t n;
} corpus_t;

static int load_corpus(const char *path, corpus_t *c, uint8_t **buf)
{
    size_t n;
    *buf = slurp(path, &n);
    if (!*buf || n < 12 || memcmp(*buf, "RCDTOKC1", 8) != 0) return -1;
    rd_t r = {*buf + 8, *buf + n};
    uint32_t count = 0;
    rd_u32(&r, &count);
    c->s = calloc(count, sizeof(*c->s));
    c->len = calloc(count, sizeof(*c->len));
    if (!c->s || !c->len) return -1;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t len;
        if (rd_varint(&r, &len) || (uint64_t)(r.end - r.p) < len) return -1;
        c->s[i] = (const char *)r.p;
        c->len[i] = (size_t)len;
        r.p += len;
    }
    c->n = count;
    return 0;
}

static void show_string(const char *s, size_t n)
{
    fputc('"', stderr);
    for (size_t i = 0; i < n && i < 160; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\' || c == 0x7F)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fprintf(stderr, n > 160 ? "\"...\n" : "\"\n");
}

static void show_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "    %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 48; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 48 ? " ...\n" : "\n");
}

/* Under ASan/TSan the code-point sweep (unicode.bin: every code point through every kind) is
 * 10-20x slower: there every SAN_STRIDE-th string is checked, in Release every one. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SAN_STRIDE 4
#else
#define SAN_STRIDE 1
#endif

static void check_kind(const char *golden, const char *kind, const corpus_t *c,
                       const char *file)
{
    const uint32_t stride = strcmp(file, "unicode.bin") == 0 ? SAN_STRIDE : 1;
    char path[RCD_PATH_MAX], src[RCD_PATH_MAX], err[512];
    size_t n;
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/%s/source", golden, kind) == 0);
    uint8_t *source = slurp(path, &n);
    if (source) { /* a tokenizer that lives elsewhere in the tree (models/...) */
        while (n && (source[n - 1] == '\n' || source[n - 1] == '\r'))
            n--;
        CHECK(rcd_path_fmt(src, sizeof(src), "%.*s", (int)n, (const char *)source) == 0);
        free(source);
    } else {
        CHECK(rcd_path_fmt(src, sizeof(src), "%s/%s", golden, kind) == 0);
    }
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/%s/source.fnv1a32", golden, kind) == 0);
    uint8_t *stamp = slurp(path, &n);
    if (stamp) { /* fixtures of a tokenizer elsewhere in the tree: still that tokenizer? */
        char tj[RCD_PATH_MAX];
        size_t tn;
        CHECK(rcd_path_fmt(tj, sizeof(tj), "%s/tokenizer.json", src) == 0);
        uint8_t *body = slurp(tj, &tn);
        unsigned long want = strtoul((const char *)stamp, NULL, 16);
        int fresh = body && fnv1a(body, tn) == (uint32_t)want;
        CHECK_MSG(fresh,
                  "%s: %s changed since its fixtures were made; rerun "
                  "tools/gen_tok_fixtures.py",
                  kind, tj);
        free(body);
        free(stamp);
        if (!fresh) return;
    }
    tok_t *tok = NULL;
    int rc = tok_load(src, NULL, &tok, err, sizeof(err));
    CHECK_MSG(rc == 0, "%s: %s", kind, err);
    if (rc) return;

    CHECK(rcd_path_fmt(path, sizeof(path), "%s/%s/%s", golden, kind, file) == 0);
    uint8_t *buf = slurp(path, &n);
    CHECK_MSG(buf && n >= 16 && memcmp(buf, "RCDTOKE2", 8) == 0, "%s: bad %s", kind, file);
    if (!buf || n < 16) {
        free(buf);
        tok_free(tok);
        return;
    }
    rd_t r = {buf + 8, buf + n};
    uint32_t count = 0, every = 0;
    rd_u32(&r, &count);
    rd_u32(&r, &every);
    /* the feat-* kinds cover the first strings of the corpus only */
    CHECK_MSG(count > 0 && count <= c->n, "%s: %u expectations for %zu strings", kind, count, c->n);

    tok_ids_t ids = {0}, plain = {0}, want = {0};
    tok_text_t text = {0};
    tok_stream_t *st = NULL;
    tok_stream_new(tok, 0, &st, err, sizeof(err));
    char *streamed = NULL;
    size_t streamed_cap = 0;
    size_t bad_ids = 0, bad_dec = 0, bad_rt = 0, n_rt = 0, bad_stream = 0, shown = 0;
    for (uint32_t i = 0; i < count && i < c->n; i++) {
        uint8_t flags = r.p < r.end ? *r.p++ : 0;
        uint64_t n_ids;
        uint32_t h_ids, h_dec;
        if (rd_varint(&r, &n_ids) || rd_u32(&r, &h_ids) || rd_u32(&r, &h_dec)) {
            CHECK_MSG(0, "%s: expected.bin truncated at string %u", kind, i);
            break;
        }
        want.n = 0;
        if (flags & 4) {
            for (uint64_t k = 0; k < n_ids; k++) {
                uint64_t v;
                if (rd_varint(&r, &v)) break;
                if (want.n == want.cap) {
                    want.cap = want.cap ? want.cap * 2 : 64;
                    want.v = realloc(want.v, want.cap * sizeof(*want.v));
                }
                want.v[want.n++] = (int32_t)v;
            }
        }
        if (i % stride) continue; /* read, not checked (sanitized builds, unicode.bin) */
        const char *s = c->s[i];
        size_t len = c->len[i];
        rc = tok_encode(tok, s, len, (flags & 1) ? TOK_ADD_SPECIAL : 0, &ids, err, sizeof(err));
        int ok = rc == 0 && ids.n == n_ids && ids_hash(ids.v, ids.n) == h_ids;
        if (ok && (flags & 4)) ok = !ids.n || memcmp(ids.v, want.v, ids.n * sizeof(*ids.v)) == 0;
        if (!ok) {
            bad_ids++;
            if (shown++ < 5) {
                fprintf(stderr, "  %s #%u ids differ%s%s: ", kind, i, rc ? ": " : "",
                        rc ? err : "");
                show_string(s, len);
                show_ids("ours", ids.v, ids.n);
                if (flags & 4) show_ids("HF  ", want.v, want.n);
                fprintf(stderr, "    HF's: tools/gen_tok_fixtures.py --show %s %u\n", kind, i);
            }
            continue;
        }
        rc = tok_decode(tok, ids.v, ids.n, 0, &text, err, sizeof(err));
        if (rc || fnv1a(text.p, text.n) != h_dec) {
            bad_dec++;
            if (shown++ < 5) {
                fprintf(stderr, "  %s #%u decode differs: ", kind, i);
                show_string(text.p, text.n);
            }
        }
        if (flags & 2) {
            n_rt++;
            const tok_ids_t *p = &ids;
            if (flags & 1) {
                tok_encode(tok, s, len, 0, &plain, err, sizeof(err));
                p = &plain;
            }
            rc = tok_decode(tok, p->v, p->n, 0, &text, err, sizeof(err));
            if (rc || text.n != len || memcmp(text.p, s, len) != 0) bad_rt++;
            if (p == &plain) /* the decode above was of other ids */
                tok_decode(tok, ids.v, ids.n, 0, &text, err, sizeof(err));
        }
        size_t sn = 0;
        int srr = 0;
        for (size_t k = 0; k <= ids.n && !srr; k++) {
            const char *d;
            size_t dl;
            srr = k < ids.n ? tok_stream_push(st, ids.v[k], &d, &dl, err, sizeof(err))
                            : tok_stream_flush(st, &d, &dl, err, sizeof(err));
            if (srr) break;
            if (!utf8_ok(d, dl)) srr = -1; /* a delta that splits a character */
            if (sn + dl + 1 > streamed_cap) {
                streamed_cap = (sn + dl + 1) * 2;
                streamed = realloc(streamed, streamed_cap);
            }
            memcpy(streamed + sn, d, dl);
            sn += dl;
        }
        if (srr) {
            const char *d;
            size_t dl;
            tok_stream_flush(st, &d, &dl, err, sizeof(err));
        }
        if (srr || sn != text.n || (sn && memcmp(streamed, text.p, sn) != 0)) {
            bad_stream++;
            if (shown++ < 5) {
                fprintf(stderr, "  %s #%u stream differs%s%s: ", kind, i, srr ? ": " : "",
                        srr ? err : "");
                show_string(streamed ? streamed : "", sn);
            }
        }
    }
    fprintf(stderr,
            "parity %-23s %-12s %6u strings: %zu id mismatches, %zu decode mismatches, "
            "%zu/%zu round-trip failures, %zu stream mismatches\n",
            kind, file, count, bad_ids, bad_dec, bad_rt, n_rt, bad_stream);
    CHECK(bad_ids == 0);
    CHECK(bad_dec == 0);
    CHECK(bad_rt == 0);
    CHECK(bad_stream == 0);
    free(streamed);
    tok_stream_free(st);
    tok_ids_free(&ids);
    tok_ids_free(&plain);
    tok_ids_free(&want);
    tok_text_free(&text);
    free(buf);
    tok_free(tok);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_parity(void)
{
    const char *env = getenv("RCD_GOLDEN_DIR");
    char golden[RCD_PATH_MAX], path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(golden, sizeof(golden), "%s/tokenizer",
                       env && *env ? env : "tests/golden") == 0);
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/corpus.bin", golden) == 0);
    corpus_t c = {0};
    uint8_t *buf = NULL;
    int rc = load_corpus(path, &c, &buf);
    CHECK_MSG(rc == 0, "cannot read %s", path);
    CHECK(c.n >= 10000);
    DIR *d = rc == 0 ? opendir(golden) : NULL;
    char *kinds[64];
    size_t nk = 0;
    for (struct dirent *e; d && (e = readdir(d)) && nk < 64;) {
        struct stat st;
        CHECK(rcd_path_fmt(path, sizeof(path), "%s/%s/expected.bin", golden, e->d_name) == 0);
        if (e->d_name[0] != '.' && stat(path, &st) == 0) kinds[nk++] = strdup(e->d_name);
    }
    if (d) closedir(d);
    qsort(kinds, nk, sizeof(*kinds), cmp_str);
    CHECK(nk >= 4);
    for (size_t i = 0; i < nk; i++) {
        check_kind(golden, kinds[i], &c, "expected.bin");
        free(kinds[i]);
    }
    /* a model tokenizer without fixtures: tell whoever runs this to regenerate them */
    d = opendir("models");
    for (struct dirent *e; d && (e = readdir(d));) {
        struct stat st;
        CHECK(rcd_path_fmt(path, sizeof(path), "models/%s/tokenizer.json", e->d_name) == 0);
        if (e->d_name[0] == '.' || stat(path, &st) != 0) continue;
        CHECK(rcd_path_fmt(path, sizeof(path), "%s/model-%s/expected.bin", golden, e->d_name) ==
              0);
        if (stat(path, &st) != 0)
            fprintf(stderr,
                    "note: models/%s/tokenizer.json has no parity fixtures; run "
                    "tools/gen_tok_fixtures.py\n",
                    e->d_name);
    }
    if (d) closedir(d);
    free(c.s);
    free(c.len);
    free(buf);
}

static size_t utf8_put(uint32_t c, char *o)
{
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xC0 | c >> 6), o[1] = (char)(0x80 | (c & 63)), 2;
    if (c < 0x10000)
        return o[0] = (char)(0xE0 | c >> 12), o[1] = (char)(0x80 | (c >> 6 & 63)),
               o[2] = (char)(0x80 | (c & 63)), 3;
    o[0] = (char)(0xF0 | c >> 18), o[1] = (char)(0x80 | (c >> 12 & 63));
    o[2] = (char)(0x80 | (c >> 6 & 63)), o[3] = (char)(0x80 | (c & 63));
    return 4;
}

/* Must match unicode_segment() in tools/gen_tok_fixtures.py: X's aX1X and a space. */
static size_t unicode_segment(uint32_t c, char *out)
{
    char x[4];
    size_t k = utf8_put(c, x), n = 0;
    static const char *const glue[] = {"'s a", "1", " "};
    for (int part = 0; part < 3; part++) {
        memcpy(out + n, x, k);
        n += k;
        memcpy(out + n, glue[part], strlen(glue[part]));
        n += strlen(glue[part]);
    }
    return n;
}

/* Every assigned code point of the reference's Unicode (tools/gen_tok_fixtures.py
 * --unicode): the strings are built from the code point ranges in unicode.cps. */
static void test_unicode(void)
{
    const char *env = getenv("RCD_GOLDEN_DIR");
    char golden[RCD_PATH_MAX], path[RCD_PATH_MAX];
    CHECK(rcd_path_join(golden, sizeof(golden), env && *env ? env : "tests/golden", "tokenizer") ==
          0);
    CHECK(rcd_path_join(path, sizeof(path), golden, "unicode.cps") == 0);
    size_t n;
    uint8_t *buf = slurp(path, &n);
    CHECK_MSG(buf && n >= 16 && memcmp(buf, "RCDTOKU1", 8) == 0, "cannot read %s", path);
    if (!buf || n < 16) {
        free(buf);
        return;
    }
    rd_t r = {buf + 8, buf + n};
    uint32_t group = 0, n_ranges = 0, prev = 0;
    rd_u32(&r, &group);
    rd_u32(&r, &n_ranges);
    uint32_t *cps = NULL;
    size_t n_cps = 0, cap = 0;
    for (uint32_t i = 0; i < n_ranges; i++) {
        uint64_t gap, len;
        if (rd_varint(&r, &gap) || rd_varint(&r, &len) || prev + gap + len > 0x10FFFF) break;
        for (uint32_t c = prev + (uint32_t)gap; c <= prev + gap + len; c++) {
            if (n_cps == cap) {
                cap = cap ? cap * 2 : 1 << 16;
                cps = realloc(cps, cap * sizeof(*cps));
            }
            cps[n_cps++] = c;
        }
        prev += (uint32_t)(gap + len);
    }
    CHECK_MSG(group > 0 && n_cps > 150000, "%s: %zu code points in groups of %u", path, n_cps,
              group);
    corpus_t c = {0};
    size_t n_str = group ? (n_cps + group - 1) / group : 0;
    char *text = malloc(n_cps * 18 + 1);
    c.s = calloc(n_str, sizeof(*c.s));
    c.len = calloc(n_str, sizeof(*c.len));
    size_t at = 0;
    for (size_t i = 0; i < n_cps && text && c.s && c.len; i++) {
        if (i % group == 0) c.s[c.n++] = text + at;
        at += unicode_segment(cps[i], text + at);
        c.len[c.n - 1] = (size_t)(text + at - c.s[c.n - 1]);
    }
    DIR *d = opendir(golden);
    char *kinds[64];
    size_t nk = 0;
    for (struct dirent *e; d && (e = readdir(d)) && nk < 64;) {
        struct stat st;
        if (e->d_name[0] != '.' &&
            rcd_path_fmt(path, sizeof(path), "%s/%s/unicode.bin", golden, e->d_name) == 0 &&
            stat(path, &st) == 0)
            kinds[nk++] = strdup(e->d_name);
    }
    if (d) closedir(d);
    qsort(kinds, nk, sizeof(*kinds), cmp_str);
    CHECK(nk >= 4);
    for (size_t i = 0; i < nk; i++) {
        check_kind(golden, kinds[i], &c, "unicode.bin");
        free(kinds[i]);
    }
    free(c.s);
    free(c.len);
    free(text);
    free(cps);
    free(buf);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_parity);
    RUN(test_unicode);
    return rcd_test_summary();
}
