/* Unit tests of the tokenizer: load errors that name the unsupported feature, invalid UTF-8,
 * empty input, added/special-token options against HF (units.json), decoding of byte-fallback
 * runs, the streaming detokenizer on split characters, getters, limits and thread safety. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/rcd_error.h"
#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/tokenizer/tok.h"
#include "workers/tokenizer/tok_int.h"

static char golden[RCD_PATH_MAX];

static tok_t *load_kind(const char *kind)
{
    char path[RCD_PATH_MAX], err[512];
    tok_t *t = NULL;
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/%s", golden, kind) == 0);
    int rc = tok_load(path, NULL, &t, err, sizeof(err));
    CHECK_MSG(rc == 0, "%s: %s", kind, err);
    return t;
}

static int encode(const tok_t *t, const char *s, size_t n, int flags, tok_ids_t *ids)
{
    char err[512];
    int rc = tok_encode(t, s, n, flags, ids, err, sizeof(err));
    return rc;
}

static int same_ids(const tok_ids_t *a, const tok_ids_t *b)
{
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof(*a->v)) == 0);
}

/* ---- load errors ----------------------------------------------------------------------- */

static const char *base_json =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[%s],"
    "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":%s,\"decoder\":%s,"
    "\"model\":{\"type\":\"%s\",\"dropout\":%s,\"unk_token\":null,"
    "\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":false,"
    "\"byte_fallback\":false,\"vocab\":{%s},\"merges\":[%s]}%s}";

typedef struct {
    const char *added, *norm, *pre, *post, *dec, *type, *dropout, *vocab, *merges, *extra;
} parts_t;

static int load_json(const parts_t *p, const tok_opts_t *opts, tok_t **out, char *err,
                     size_t errlen)
{
    char path[] = "/tmp/tok_test_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "w");
    fprintf(f, base_json, p->added ? p->added : "", p->norm ? p->norm : "null",
            p->pre ? p->pre : "null", p->post ? p->post : "null", p->dec ? p->dec : "null",
            p->type ? p->type : "BPE", p->dropout ? p->dropout : "null",
            p->vocab ? p->vocab : "\"a\":0,\"b\":1,\"ab\":2,\" \":3",
            p->merges ? p->merges : "\"a b\"", p->extra ? p->extra : "");
    fclose(f);
    int rc = tok_load(path, opts, out, err, errlen);
    unlink(path);
    return rc;
}

static void expect_load_error(const parts_t *p, int want, const char *msg)
{
    char err[512] = "";
    tok_t *t = NULL;
    int rc = load_json(p, NULL, &t, err, sizeof(err));
    CHECK_MSG(rc == want, "want %s, got %s (%s)", rcd_errname(want), rcd_errname(rc), err);
    CHECK_MSG(strstr(err, msg) != NULL, "message \"%s\" lacks \"%s\"", err, msg);
    CHECK(t == NULL);
    tok_free(t);
}

static void test_load_errors(void)
{
    expect_load_error(&(parts_t){.pre = "{\"type\":\"Whitespace\"}"}, RCD_EUNSUPPORTED,
                      "pre_tokenizer.type \"Whitespace\" is not supported");
    expect_load_error(
        &(parts_t){.pre = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},"
                          "{\"type\":\"Punctuation\",\"behavior\":\"Isolated\"}]}"},
        RCD_EUNSUPPORTED, "pre_tokenizer.pretokenizers[1].type \"Punctuation\" is not supported");
    expect_load_error(&(parts_t){.norm = "{\"type\":\"Lowercase\"}"}, RCD_EUNSUPPORTED,
                      "normalizer.type \"Lowercase\" is not supported");
    expect_load_error(&(parts_t){.norm = "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":"
                                         "\"NFC\"},{\"type\":\"Precompiled\"}]}"},
                      RCD_EUNSUPPORTED, "normalizer.normalizers[1].type \"Precompiled\"");
    expect_load_error(&(parts_t){.type = "WordPiece"}, RCD_EUNSUPPORTED,
                      "model.type \"WordPiece\" is not supported");
    expect_load_error(&(parts_t){.dropout = "0.1"}, RCD_EUNSUPPORTED, "model.dropout");
    expect_load_error(&(parts_t){.extra = ",\"future\":1"}, RCD_EUNSUPPORTED,
                      "field \"future\" is not supported");
    expect_load_error(&(parts_t){.pre = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                                        "\"regex\":\"x\"}"},
                      RCD_EUNSUPPORTED, "pre_tokenizer: field \"regex\" is not supported");
    expect_load_error(&(parts_t){.dec = "{\"type\":\"WordPiece\",\"prefix\":\"##\"}"},
                      RCD_EUNSUPPORTED, "decoder.type \"WordPiece\" is not supported");
    expect_load_error(&(parts_t){.post = "{\"type\":\"TemplateProcessing\",\"single\":[{"
                                         "\"Sequence\":{\"id\":\"B\",\"type_id\":0}}],"
                                         "\"pair\":[],\"special_tokens\":{}}"},
                      RCD_EUNSUPPORTED, "post_processor.single[0]");
    expect_load_error(&(parts_t){.merges = "\"a c\""}, RCD_EFORMAT,
                      "model.merges[0]: token \"c\" is not in the vocab");
    expect_load_error(&(parts_t){.merges = "\"a b c\""}, RCD_EFORMAT, "model.merges[0]");
    expect_load_error(&(parts_t){.pre = "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a[b]]\"},"
                                        "\"behavior\":\"Isolated\",\"invert\":false}"},
                      RCD_EUNSUPPORTED, "pre_tokenizer.pattern: regex: nested");
    expect_load_error(&(parts_t){.pre = "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
                                        "\"behavior\":\"Isolated\",\"invert\":false}"},
                      RCD_EFORMAT, "regex does not compile");
    expect_load_error(&(parts_t){.pre = "{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},"
                                        "\"behavior\":\"Sideways\",\"invert\":false}"},
                      RCD_EUNSUPPORTED, "pre_tokenizer.behavior \"Sideways\"");
    expect_load_error(&(parts_t){.pre = "{\"type\":\"Metaspace\",\"replacement\":\"_\","
                                        "\"prepend_scheme\":\"sometimes\",\"split\":true}"},
                      RCD_EUNSUPPORTED, "prepend_scheme \"sometimes\"");
    expect_load_error(&(parts_t){.pre = "{\"type\":\"Metaspace\",\"replacement\":\"ab\"}"},
                      RCD_EFORMAT, "pre_tokenizer.replacement: expected one character");
    expect_load_error(&(parts_t){.vocab = "\"a\":0,\"b\":0"}, RCD_EFORMAT, "used twice");
    expect_load_error(&(parts_t){.vocab = "\"a\":-1"}, RCD_EFORMAT, "expected a token id");
    expect_load_error(&(parts_t){.vocab = "\"a\":0,\"\\u0000\":1"}, RCD_EUNSUPPORTED, "U+0000");
    expect_load_error(&(parts_t){.vocab = "\"a\":0,"}, RCD_EFORMAT, "invalid JSON");
    expect_load_error(&(parts_t){.added = "{\"id\":5,\"content\":\"x\",\"special\":true,"
                                          "\"weird\":true}"},
                      RCD_EUNSUPPORTED, "added_tokens[0]: field \"weird\"");

    char err[512];
    tok_t *t = NULL;
    CHECK(tok_load("/nonexistent/tokenizer.json", NULL, &t, err, sizeof(err)) == RCD_ENOTFOUND);
    CHECK(strstr(err, "/nonexistent/tokenizer.json") != NULL);
    tok_opts_t small = {.max_file_bytes = 16};
    CHECK(load_json(&(parts_t){0}, &small, &t, err, sizeof(err)) == RCD_ETOOBIG);
    /* and the minimal file itself loads and works */
    CHECK(load_json(&(parts_t){0}, NULL, &t, err, sizeof(err)) == 0);
    if (t) {
        tok_ids_t ids = {0};
        CHECK(encode(t, "ab a", 4, 0, &ids) == 0);
        CHECK(ids.n == 3 && ids.v[0] == 2 && ids.v[1] == 3 && ids.v[2] == 0);
        tok_ids_free(&ids);
        tok_free(t);
    }
}

/* ---- encode ---------------------------------------------------------------------------- */

static void test_utf8(void)
{
    tok_t *t = load_kind("neox");
    if (!t) return;
    static const struct {
        const char *s;
        size_t n, bad;
        const char *fixed; /* with TOK_UTF8_REPLACE: equals encoding this */
    } cases[] = {
        {"\xff", 1, 0, "\xef\xbf\xbd"},
        {"a\xc3", 2, 1, "a\xef\xbf\xbd"},
        {"ok\x80z", 4, 2, "ok\xef\xbf\xbdz"},
        {"\xc0\xaf", 2, 0, "\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong */
        {"\xed\xa0\x80", 3, 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80", 4, 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* >max */
        {"x\xe2\x82", 3, 1, "x\xef\xbf\xbd"}, /* truncated: one replacement */
        {"\xe2\x82\xac\xe2(", 5, 3, "\xe2\x82\xac\xef\xbf\xbd("},
        {"a\0b\xf0\x9f\x98", 6, 3, "a\0b\xef\xbf\xbd"},
    };
    tok_ids_t a = {0}, b = {0};
    char err[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = tok_encode(t, cases[i].s, cases[i].n, 0, &a, err, sizeof(err));
        char want[64];
        snprintf(want, sizeof(want), "byte offset %zu", cases[i].bad);
        CHECK_MSG(rc == RCD_EUTF8 && strstr(err, want), "case %zu: %d %s", i, rc, err);
        CHECK(a.n == 0);
        rc = tok_encode(t, cases[i].s, cases[i].n, TOK_UTF8_REPLACE, &a, err, sizeof(err));
        CHECK(rc == 0);
        size_t fn = strlen(cases[i].fixed);
        if (i == 8) fn = 6; /* contains a NUL */
        CHECK(encode(t, cases[i].fixed, fn, 0, &b) == 0);
        CHECK_MSG(same_ids(&a, &b), "case %zu: replacement differs", i);
    }
    /* embedded NUL is valid text */
    CHECK(encode(t, "a\0b", 3, 0, &a) == 0 && a.n >= 2);
    tok_ids_free(&a);
    tok_ids_free(&b);
    tok_free(t);
}

static void test_empty_and_special(void)
{
    tok_t *g = load_kind("gemma"), *l = load_kind("llama"), *n = load_kind("neox");
    tok_ids_t ids = {0};
    if (g) {
        CHECK(encode(g, "", 0, 0, &ids) == 0 && ids.n == 0);
        CHECK(encode(g, "", 0, TOK_ADD_SPECIAL, &ids) == 0 && ids.n == 1 && ids.v[0] == 1);
        CHECK(encode(g, NULL, 0, 0, &ids) == 0 && ids.n == 0);
        CHECK(tok_bos_id(g) == 1 && tok_eos_id(g) == 2);
        CHECK(tok_chat_template(g) && !strncmp(tok_chat_template(g), "{{ bos_token }}", 15));
        size_t len;
        const char *p = tok_id_to_piece(g, tok_piece_to_id(g, "<0x41>", 6), &len);
        CHECK(p && len == 6 && !memcmp(p, "<0x41>", 6));
        CHECK(tok_id_to_piece(g, -1, &len) == NULL && len == 0);
        CHECK(tok_id_to_piece(g, 1 << 30, NULL) == NULL);
        CHECK(tok_piece_to_id(g, "no such piece", 13) == -1);
        CHECK(tok_vocab_size(g) == 2258);
    }
    if (l) {
        CHECK(encode(l, "", 0, TOK_ADD_SPECIAL, &ids) == 0 && ids.n == 2 && ids.v[0] == 1 &&
              ids.v[1] == 2);
        CHECK(tok_bos_id(l) == 1); /* {"content": "<s>", ...} form */
        CHECK(tok_chat_template(l) == NULL);
    }
    if (n) {
        CHECK(tok_bos_id(n) == 0 && tok_eos_id(n) == 0);
        CHECK(tok_is_special(n, 0) && !tok_is_special(n, 100) && !tok_is_special(n, -5));
        CHECK(encode(n, "<|endoftext|>", 13, 0, &ids) == 0 && ids.n == 1 && ids.v[0] == 0);
        CHECK(encode(n, "<|endoftext|>", 13, TOK_SPLIT_SPECIAL, &ids) == 0 && ids.n > 1);
        for (size_t i = 0; i < ids.n; i++)
            CHECK(ids.v[i] != 0);
        /* non-special added tokens still match with TOK_SPLIT_SPECIAL */
        int32_t four = tok_piece_to_id(n, "    ", 4);
        CHECK(four > 0 && !tok_is_special(n, four));
        CHECK(encode(n, "x    y", 6, TOK_SPLIT_SPECIAL, &ids) == 0 && ids.n == 3 &&
              ids.v[1] == four);
    }
    tok_ids_free(&ids);
    tok_free(g);
    tok_free(l);
    tok_free(n);
}

/* HF's encode_special_tokens and skip_special_tokens, recorded in units.json. */
static void test_units(void)
{
    char path[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/units.json", golden) == 0);
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    size_t got = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(buf, got);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    CHECK(cJSON_GetArraySize(cases) > 100);
    tok_t *t = NULL;
    char kind[64] = "";
    tok_ids_t ids = {0};
    tok_text_t text = {0};
    int n = 0, bad = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next, n++) {
        const char *k = cJSON_GetObjectItem(c, "kind")->valuestring;
        if (strcmp(k, kind) != 0) {
            tok_free(t);
            t = NULL;
            if (!strncmp(k, "inline:", 7)) { /* a tokenizer.json stored in units.json */
                const cJSON *j = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "inline"), k + 7);
                char tmp[] = "/tmp/tok_units_XXXXXX";
                int fd = mkstemp(tmp);
                FILE *jf = fd >= 0 ? fdopen(fd, "w") : NULL;
                if (jf && cJSON_IsString(j)) {
                    fputs(j->valuestring, jf);
                    fclose(jf);
                    CHECK_MSG(tok_load(tmp, NULL, &t, err, sizeof(err)) == 0, "%s: %s", k, err);
                } else if (jf) {
                    fclose(jf);
                }
                unlink(tmp);
            } else {
                t = load_kind(k);
            }
            snprintf(kind, sizeof(kind), "%s", k);
        }
        if (!t) continue;
        const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        const cJSON *want_split = cJSON_GetObjectItem(c, "split_special_ids");
        const char *want_dec = cJSON_GetObjectItem(c, "skip_special_decoded")->valuestring;
        int ok = encode(t, s, strlen(s), TOK_ADD_SPECIAL, &ids) == 0 &&
                 ids.n == (size_t)cJSON_GetArraySize(want);
        for (size_t i = 0; ok && i < ids.n; i++)
            ok = ids.v[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
        ok = ok && tok_decode(t, ids.v, ids.n, TOK_SKIP_SPECIAL, &text, err, sizeof(err)) == 0 &&
             text.n == strlen(want_dec) && !memcmp(text.p, want_dec, text.n);
        if (cJSON_IsArray(want_split)) { /* null: not recorded for this case */
            ok = ok && encode(t, s, strlen(s), TOK_SPLIT_SPECIAL, &ids) == 0 &&
                 ids.n == (size_t)cJSON_GetArraySize(want_split);
            for (size_t i = 0; ok && i < ids.n; i++)
                ok = ids.v[i] == cJSON_GetArrayItem(want_split, (int)i)->valueint;
        }
        if (!ok && bad++ < 5)
            fprintf(stderr, "  units: %s case %d (\"%s\") differs from HF\n", kind, n, s);
    }
    fprintf(stderr, "  units.json: %d cases, %d differ\n", n, bad);
    CHECK(bad == 0);
    tok_ids_free(&ids);
    tok_text_free(&text);
    tok_free(t);
    cJSON_Delete(root);
    free(buf);
}

/* CPU time of this process: unlike wall time, not stretched by other jobs on the machine */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Worst cases for merging and for the split regex: one 1 MB word, one 1 MB whitespace run.
 * Each takes well under a second in Release (see tok_bench for speed); the bound here is loose,
 * to fail only on a quadratic path (minutes), never on a busy or sanitized build (the 1 MB
 * whitespace run took 5.5-7 s of CPU under TSan on a loaded 2-core machine, so 30 s). */
static void test_large_inputs(void)
{
    const char *kinds[] = {"neox", "gemma", "bytelevel_split"};
    size_t n = (size_t)1 << 20;
    char *s = malloc(n);
    tok_ids_t ids = {0};
    for (size_t k = 0; k < 3; k++) {
        tok_t *t = load_kind(kinds[k]);
        if (!t) continue;
        for (int shape = 0; shape < 3; shape++) {
            for (size_t i = 0; i < n; i++)
                s[i] = shape == 0 ? 'a' : shape == 1 ? ' ' : "ab cd\n"[i % 6];
            s[n - 1] = 'x';
            double t0 = cpu_now();
            int rc = encode(t, s, n, 0, &ids);
            double dt = cpu_now() - t0;
            CHECK(rc == 0 && ids.n > 0);
            fprintf(stderr, "  %s: 1 MB of shape %d: %zu tokens in %.0f ms CPU\n", kinds[k], shape,
                    ids.n, dt * 1e3);
            CHECK_MSG(dt < 30.0, "%s: 1 MB took %.2f s of CPU", kinds[k], dt);
        }
        tok_free(t);
    }
    /* the input limit */
    char path[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/neox", golden) == 0);
    tok_t *t = NULL;
    tok_opts_t o = {.max_input_bytes = 10};
    CHECK(tok_load(path, &o, &t, err, sizeof(err)) == 0);
    if (t) {
        CHECK(tok_encode(t, s, 10, 0, &ids, err, sizeof(err)) == 0);
        CHECK(tok_encode(t, s, 11, 0, &ids, err, sizeof(err)) == RCD_ETOOBIG);
        CHECK(strstr(err, "limit") != NULL);
    }
    tok_free(t);
    tok_ids_free(&ids);
    free(s);
}

/* ---- decode and streaming -------------------------------------------------------------- */

static int decode_is(const tok_t *t, const int32_t *ids, size_t n, int flags, const char *want)
{
    char err[512];
    tok_text_t text = {0};
    int ok = tok_decode(t, ids, n, flags, &text, err, sizeof(err)) == 0 && text.n == strlen(want) &&
             !memcmp(text.p, want, text.n) && text.p[text.n] == 0;
    if (!ok) fprintf(stderr, "  decoded \"%.*s\", want \"%s\"\n", (int)text.n, text.p, want);
    tok_text_free(&text);
    return ok;
}

static void test_decode(void)
{
    tok_t *g = load_kind("gemma"), *n = load_kind("neox");
    if (g) {
        int32_t e2 = tok_piece_to_id(g, "<0xE2>", 6), x82 = tok_piece_to_id(g, "<0x82>", 6),
                xac = tok_piece_to_id(g, "<0xAC>", 6), a = tok_piece_to_id(g, "a", 1);
        CHECK(e2 >= 0 && x82 >= 0 && xac >= 0 && a >= 0);
        CHECK(decode_is(g, (int32_t[]){e2, x82, xac}, 3, 0, "\xe2\x82\xac"));
        /* HF: an invalid byte run becomes one U+FFFD per byte, the whole run */
        CHECK(decode_is(g, (int32_t[]){e2, x82, a}, 3, 0,
                        "\xef\xbf\xbd\xef\xbf\xbd"
                        "a"));
        CHECK(decode_is(g, (int32_t[]){e2, x82, xac, e2}, 4, 0,
                        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
        /* ids outside the vocabulary are skipped, as HF does */
        CHECK(decode_is(g, (int32_t[]){a, 1 << 30, -7, a}, 4, 0, "aa"));
        CHECK(decode_is(g, (int32_t[]){1, a}, 2, 0, "<s>a"));
        CHECK(decode_is(g, (int32_t[]){1, a, 2}, 3, TOK_SKIP_SPECIAL, "a"));
        CHECK(decode_is(g, NULL, 0, 0, ""));
    }
    if (n) {
        CHECK(decode_is(n, (int32_t[]){0}, 1, 0, "<|endoftext|>"));
        CHECK(decode_is(n, (int32_t[]){0}, 1, TOK_SKIP_SPECIAL, ""));
    }
    tok_free(g);
    tok_free(n);
}

typedef struct {
    char buf[4096];
    size_t n;
    int empty, bad;
} sink_t;

static void sink(sink_t *k, const char *d, size_t n)
{
    if (!n) k->empty++;
    /* a delta never ends inside a character */
    if (n && ((unsigned char)d[n - 1] >= 0xC0 ||
              (n >= 2 && (unsigned char)d[n - 2] >= 0xE0 && (unsigned char)d[n - 1] >= 0x80) ||
              (n >= 3 && (unsigned char)d[n - 3] >= 0xF0 && (unsigned char)d[n - 1] >= 0x80)))
        k->bad++;
    if (k->n + n < sizeof(k->buf)) {
        memcpy(k->buf + k->n, d, n);
        k->n += n;
    }
}

static void stream_all(const tok_t *t, int flags, const int32_t *ids, size_t n, sink_t *k)
{
    char err[512];
    tok_stream_t *s;
    const char *d;
    size_t dl;
    memset(k, 0, sizeof(*k));
    CHECK(tok_stream_new(t, flags, &s, err, sizeof(err)) == 0);
    for (size_t i = 0; i < n; i++) {
        CHECK(tok_stream_push(s, ids[i], &d, &dl, err, sizeof(err)) == 0);
        sink(k, d, dl);
    }
    CHECK(tok_stream_flush(s, &d, &dl, err, sizeof(err)) == 0);
    sink(k, d, dl);
    tok_stream_free(s);
}

static void test_stream(void)
{
    tok_t *g = load_kind("gemma"), *n = load_kind("neox"), *l = load_kind("llama");
    char err[512];
    const char *d;
    size_t dl;
    tok_ids_t ids = {0};
    tok_text_t text = {0};
    sink_t k;
    if (g) {
        int32_t b[4];
        const char *hex[4] = {"<0xF0>", "<0x9F>", "<0x98>", "<0x80>"};
        for (int i = 0; i < 4; i++)
            b[i] = tok_piece_to_id(g, hex[i], 6);
        tok_stream_t *s;
        CHECK(tok_stream_new(g, 0, &s, err, sizeof(err)) == 0);
        for (int i = 0; i < 3; i++) {
            CHECK(tok_stream_push(s, b[i], &d, &dl, err, sizeof(err)) == 0);
            CHECK(dl == 0); /* held: the character is not complete */
        }
        CHECK(tok_stream_push(s, b[3], &d, &dl, err, sizeof(err)) == 0);
        CHECK(dl == 4 && !memcmp(d, "\xf0\x9f\x98\x80", 4));
        /* an unfinished character at the end: flush gives what tok_decode gives */
        CHECK(tok_stream_push(s, b[0], &d, &dl, err, sizeof(err)) == 0 && dl == 0);
        CHECK(tok_stream_flush(s, &d, &dl, err, sizeof(err)) == 0);
        CHECK(dl == 3 && !memcmp(d, "\xef\xbf\xbd", 3));
        /* reusable after flush */
        CHECK(tok_stream_push(s, tok_piece_to_id(g, "a", 1), &d, &dl, err, sizeof(err)) == 0);
        CHECK(dl == 1 && d[0] == 'a');
        tok_stream_free(s);

        const char *txt = "Grüße 😀👍🏽 日本語 ok\n\tend";
        CHECK(encode(g, txt, strlen(txt), TOK_ADD_SPECIAL, &ids) == 0);
        stream_all(g, 0, ids.v, ids.n, &k);
        CHECK(tok_decode(g, ids.v, ids.n, 0, &text, err, sizeof(err)) == 0);
        CHECK(k.n == text.n && !memcmp(k.buf, text.p, k.n) && k.bad == 0 && k.empty > 0);
        stream_all(g, TOK_SKIP_SPECIAL, ids.v, ids.n, &k);
        CHECK(k.n == strlen(txt) && !memcmp(k.buf, txt, k.n));
    }
    if (n) {
        /* ByteLevel tokens split characters: the small vocab has no emoji tokens */
        const char *txt = "😀👍🏽 héllo wörld 日本語<|endoftext|>🇯🇵";
        CHECK(encode(n, txt, strlen(txt), 0, &ids) == 0);
        stream_all(n, 0, ids.v, ids.n, &k);
        CHECK(k.n == strlen(txt) && !memcmp(k.buf, txt, k.n));
        CHECK(k.bad == 0 && k.empty > 0);
        /* many skipped specials do not make the window grow without bound */
        tok_stream_t *s;
        CHECK(tok_stream_new(n, TOK_SKIP_SPECIAL, &s, err, sizeof(err)) == 0);
        int all_empty = 1;
        for (int i = 0; i < 20000; i++) {
            CHECK(tok_stream_push(s, 0, &d, &dl, err, sizeof(err)) == 0);
            all_empty &= dl == 0;
        }
        CHECK(all_empty);
        tok_stream_free(s);
    }
    if (l) { /* the first token's leading space is stripped by the decoder, once */
        const char *txt = "  two leading spaces";
        CHECK(encode(l, txt, strlen(txt), 0, &ids) == 0);
        stream_all(l, 0, ids.v, ids.n, &k);
        CHECK(tok_decode(l, ids.v, ids.n, 0, &text, err, sizeof(err)) == 0);
        CHECK(k.n == text.n && !memcmp(k.buf, text.p, k.n));
        CHECK(text.n == strlen(txt) && !memcmp(text.p, txt, text.n));
    }
    tok_ids_free(&ids);
    tok_text_free(&text);
    tok_free(g);
    tok_free(n);
    tok_free(l);
}

/* ---- threads --------------------------------------------------------------------------- */

typedef struct {
    const tok_t *t;
    const char *const *texts;
    size_t n;
    const tok_ids_t *want;
    int bad;
} job_t;

static void *worker(void *arg)
{
    job_t *j = arg;
    tok_ids_t ids = {0};
    for (int rep = 0; rep < 20; rep++)
        for (size_t i = 0; i < j->n; i++)
            if (encode(j->t, j->texts[i], strlen(j->texts[i]), TOK_ADD_SPECIAL, &ids) ||
                !same_ids(&ids, &j->want[i]))
                j->bad++;
    tok_ids_free(&ids);
    return NULL;
}

static void test_threads(void)
{
    static const char *const texts[] = {
        "Hello world",          "def f(x):\n    return x ** 2\n", "日本語のテキスト",
        "😀 emoji 👍🏽",  "<|endoftext|> special",          "  spaces   and\ttabs  ",
        "numbers 1234567 3.14",
    };
    size_t n = sizeof(texts) / sizeof(texts[0]);
    tok_t *t = load_kind("bytelevel_split");
    if (!t) return;
    tok_ids_t want[7] = {{0}};
    for (size_t i = 0; i < n; i++)
        CHECK(encode(t, texts[i], strlen(texts[i]), TOK_ADD_SPECIAL, &want[i]) == 0);
    pthread_t th[4];
    job_t jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job_t){t, texts, n, want, 0};
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].bad == 0);
    }
    for (size_t i = 0; i < n; i++)
        tok_ids_free(&want[i]);
    tok_free(t);
}

/* The first match of an Oniguruma pattern in s: its length in bytes, or -1 for none. */
static long first_match(const char *pat, const char *s)
{
    tok__pat_t p;
    char err[256];
    int rc = tok__pat_compile_regex(&p, pat, strlen(pat), err, sizeof(err));
    CHECK_MSG(rc == 0, "%s: %s", pat, err);
    if (rc) return -2;
    tok__spans_t sp = {0};
    pcre2_match_data *md = NULL;
    long len = -1;
    if (tok__pat_find(&p, s, strlen(s), &md, &sp, err, sizeof(err)) == 0)
        for (size_t i = 0; i < sp.n && len < 0; i++)
            if (sp.v[i].match) len = sp.v[i].start == 0 ? (long)(sp.v[i].end - sp.v[i].start) : -1;
    pcre2_match_data_free(md);
    tok__spans_free(&sp);
    tok__pat_free(&p);
    return len;
}

/* Property classes follow the reference's Unicode (16.0 for regexes, 17.0 for Digits), not
 * the system PCRE2's: the examples, each before 's. */
static void test_unicode_classes(void)
{
    const char *gpt2 = tok__gpt2_pattern;
    /* CJK Ext-H U+31350, Kawi U+11F04, Egyptian Hieroglyphs Ext-A U+13460: letters */
    CHECK(first_match(gpt2, "\xF0\xB1\x8D\x90's") == 4);
    CHECK(first_match(gpt2, "\xF0\x91\xBC\x84's") == 4);
    CHECK(first_match(gpt2, "\xF0\x93\x91\xA0's") == 4);
    /* Myanmar Ext-C digit U+116D0: \p{N}, \d, Digits */
    CHECK(first_match(gpt2, "\xF0\x91\x9B\x90's") == 4);
    CHECK(first_match("\\d", "\xF0\x91\x9B\x90") == 4);
    CHECK(tok__is_numeric(0x116D0) && tok__is_numeric(0x11DE0) && !tok__is_numeric(0x10940));
    /* Sidetic U+10940 is a letter only from Unicode 17.0: not to Oniguruma */
    CHECK(first_match("\\p{L}", "\xF0\x90\xA5\x80") == -1);
    CHECK(first_match("\\P{L}", "\xF0\x90\xA5\x80") == 4);
    CHECK(first_match("[^\\s\\p{L}\\p{N}]", "\xF0\xB1\x8D\x90") == -1);
    CHECK(first_match("\\p{^Letter}", "\xF0\xB1\x8D\x90") == -1);
    CHECK(first_match("\\p{other_letter}+", "\xF0\xB1\x8D\x90\xF0\x93\x91\xA0") == 8);
    CHECK(first_match("(?i)\\p{Lu}", "a") == -1); /* a lone property is not case-folded */
    CHECK(first_match("(?i:x)\\p{Lu}", "xA") == 2);
    CHECK(first_match("\\pL", "pL") == 2); /* Ruby syntax: no braces, no property */
    CHECK(first_match("[\\p{Cs}]", "a") == -1);
    CHECK(first_match("[^\\p{Cs}]", "a") == 1);
    CHECK(first_match("[\\S]+", "ab c") == 2);
    CHECK(first_match("\\p{Han}", "\xE4\xB8\x80") == 3); /* scripts: PCRE2's own tables */
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    const char *env = getenv("RCD_GOLDEN_DIR");
    CHECK(rcd_path_fmt(golden, sizeof(golden), "%s/tokenizer",
                       env && *env ? env : "tests/golden") == 0);
    RUN(test_load_errors);
    RUN(test_utf8);
    RUN(test_empty_and_special);
    RUN(test_units);
    RUN(test_large_inputs);
    RUN(test_decode);
    RUN(test_stream);
    RUN(test_threads);
    RUN(test_unicode_classes);
    return rcd_test_summary();
}
