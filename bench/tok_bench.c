/* Tokenizer encode throughput (single thread): MB/s and tokens/s over a corpus of documents,
 * and the time to encode one 1 MB prompt. tools/bench_hf_tokenizer.py builds the same
 * documents and measures HF `tokenizers` on them, for a same-run comparison.
 *
 *   tok_bench [TOKENIZER_DIR] [--corpus tests/golden/tokenizer/corpus.bin | --text FILE]
 *             [--group 20] [--min-mb 8]
 * Documents: the corpus strings joined by "\n" in groups of --group (a text file: its lines,
 * 32 per document), the list repeated until it holds --min-mb megabytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workers/tokenizer/tok.h"

typedef struct {
    char **s;
    size_t *len;
    size_t n, cap;
} docs_t;

static int add_doc(docs_t *d, const char *s, size_t n)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 256;
        d->s = realloc(d->s, d->cap * sizeof(*d->s));
        d->len = realloc(d->len, d->cap * sizeof(*d->len));
        if (!d->s || !d->len) return -1;
    }
    d->s[d->n] = malloc(n + 1);
    if (!d->s[d->n]) return -1;
    memcpy(d->s[d->n], s, n);
    d->s[d->n][n] = 0;
    d->len[d->n++] = n;
    return 0;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)sz + 1);
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

/* Strings of a corpus.bin (see tools/gen_tok_fixtures.py), or lines of a text file. */
static int read_units(const char *path, int is_corpus, docs_t *units)
{
    size_t n;
    char *buf = slurp(path, &n);
    if (!buf) return -1;
    if (is_corpus) {
        if (n < 12 || memcmp(buf, "RCDTOKC1", 8) != 0) {
            free(buf);
            return -1;
        }
        const unsigned char *p = (const unsigned char *)buf + 12,
                            *end = (const unsigned char *)buf + n;
        while (p < end) {
            uint64_t len = 0;
            for (int sh = 0; p < end; sh += 7) {
                len |= (uint64_t)(*p & 0x7F) << sh;
                if (!(*p++ & 0x80)) break;
            }
            if ((uint64_t)(end - p) < len) break;
            add_doc(units, (const char *)p, (size_t)len);
            p += len;
        }
    } else {
        size_t st = 0;
        for (size_t i = 0; i < n; i++)
            if (buf[i] == '\n') {
                add_doc(units, buf + st, i + 1 - st);
                st = i + 1;
            }
        if (st < n) add_doc(units, buf + st, n - st);
    }
    free(buf);
    return 0;
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* CPU time of this (single-threaded) process: robust on a machine shared with other jobs */
static double cpu(void)
{
    return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

int main(int argc, char **argv)
{
    const char *tokdir = "tests/golden/tokenizer/neox";
    const char *src = "tests/golden/tokenizer/corpus.bin";
    int is_corpus = 1;
    size_t group = 20, min_mb = 8;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--corpus") && i + 1 < argc) {
            src = argv[++i];
            is_corpus = 1;
        } else if (!strcmp(argv[i], "--text") && i + 1 < argc) {
            src = argv[++i];
            is_corpus = 0;
        } else if (!strcmp(argv[i], "--group") && i + 1 < argc) {
            group = (size_t)atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--min-mb") && i + 1 < argc) {
            min_mb = (size_t)atoi(argv[++i]);
        } else if (argv[i][0] != '-') {
            tokdir = argv[i];
        } else {
            fprintf(stderr, "usage: tok_bench [DIR] [--corpus F | --text F] [--group N] "
                            "[--min-mb N]\n");
            return 2;
        }
    }
    if (!is_corpus && group == 20) group = 32;
    char err[512];
    tok_t *tok;
    double t0 = now();
    if (tok_load(tokdir, NULL, &tok, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double t_load = now() - t0;
    docs_t units = {0}, docs = {0};
    if (read_units(src, is_corpus, &units) || !units.n) {
        fprintf(stderr, "cannot read %s\n", src);
        return 1;
    }
    /* documents: units joined by "\n" (corpus) or concatenated (text lines) */
    char *join = NULL;
    size_t total = 0;
    for (size_t i = 0; i < units.n; i += group) {
        size_t len = 0;
        for (size_t k = i; k < i + group && k < units.n; k++)
            len += units.len[k] + 1;
        join = realloc(join, len + 1);
        size_t o = 0;
        for (size_t k = i; k < i + group && k < units.n; k++) {
            if (is_corpus && k > i) join[o++] = '\n';
            memcpy(join + o, units.s[k], units.len[k]);
            o += units.len[k];
        }
        add_doc(&docs, join, o);
        total += o;
    }
    size_t base = docs.n;
    while (total < min_mb << 20)
        for (size_t i = 0; i < base && total < min_mb << 20; i++) {
            add_doc(&docs, docs.s[i], docs.len[i]);
            total += docs.len[i];
        }

    tok_ids_t ids = {0};
    size_t n_tokens = 0;
    for (size_t i = 0; i < base; i++) /* warm-up */
        tok_encode(tok, docs.s[i], docs.len[i], 0, &ids, err, sizeof(err));
    double dt = 1e9, dc = 1e9; /* best of 3 passes, wall and CPU */
    for (int pass = 0; pass < 3; pass++) {
        n_tokens = 0;
        t0 = now();
        double c0 = cpu();
        for (size_t i = 0; i < docs.n; i++) {
            if (tok_encode(tok, docs.s[i], docs.len[i], 0, &ids, err, sizeof(err))) {
                fprintf(stderr, "doc %zu: %s\n", i, err);
                return 1;
            }
            n_tokens += ids.n;
        }
        double w = now() - t0, c = cpu() - c0;
        dt = w < dt ? w : dt;
        dc = c < dc ? c : dc;
    }

    /* one 1 MB prompt, cut at a character boundary */
    size_t big = 0, cap = (size_t)1 << 20;
    char *prompt = malloc(cap + 8);
    for (size_t i = 0; big < cap; i = (i + 1) % base) {
        size_t k = docs.len[i] < cap - big ? docs.len[i] : cap - big;
        memcpy(prompt + big, docs.s[i], k);
        big += k;
    }
    while (big && ((unsigned char)prompt[big - 1] & 0xC0) == 0x80)
        big--;
    if (big && (unsigned char)prompt[big - 1] >= 0xC0) big--;
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        double a = now();
        if (tok_encode(tok, prompt, big, 0, &ids, err, sizeof(err))) {
            fprintf(stderr, "1 MB prompt: %s\n", err);
            return 1;
        }
        double b = now() - a;
        best = b < best ? b : best;
    }
    printf("tokenizer %s (load %.3f s)\n", tokdir, t_load);
    printf("data: %s, %zu documents, %.2f MB\n", src, docs.n, (double)total / 1e6);
    printf("encode: %.2f MB/s, %.0f tokens/s (%zu tokens, best of 3: %.3f s wall)\n",
           (double)total / 1e6 / dt, (double)n_tokens / dt, n_tokens, dt);
    printf("encode by CPU time: %.2f MB/s, %.0f tokens/s (%.3f s)\n", (double)total / 1e6 / dc,
           (double)n_tokens / dc, dc);
    printf("1 MB prompt (%zu bytes): %.1f ms, %zu tokens\n", big, best * 1e3, ids.n);

    free(prompt);
    free(join);
    for (size_t i = 0; i < units.n; i++)
        free(units.s[i]);
    for (size_t i = 0; i < docs.n; i++)
        free(docs.s[i]);
    free(units.s);
    free(units.len);
    free(docs.s);
    free(docs.len);
    tok_ids_free(&ids);
    tok_free(tok);
    return 0;
}
