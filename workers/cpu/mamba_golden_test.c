/* Golden parity of the CPU Mamba forward against transformers (fixtures from
 * tools/gen_mamba_goldens.py): every chunking, ragged batches, greedy decode, BF16/F16
 * weights, sharded checkpoints, state save/restore, and batch validation errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tests/rcd_test.h"
#include "workers/cpu/kernels.h"
#include "workers/wrk.h"

#define TOL_F32 1e-4f
#define MAX_SEQS 8

typedef struct golden_seq {
    char name[32];
    int n;
    int32_t tokens[64];
    float *logits; /* n x V */
} golden_seq_t;

typedef struct golden {
    char dir[512];
    int V;
    int n_seqs;
    golden_seq_t seqs[MAX_SEQS];
    int n_prompt, n_gen;
    int32_t greedy[160]; /* prompt then generated */
    float *greedy_logits;
} golden_t;

static const char *golden_root(void)
{
    const char *d = getenv("RCD_GOLDEN_DIR");
    return d ? d : "tests/golden";
}

static float *read_logits(const char *dir, const char *file, size_t expect_floats)
{
    char path[1024];
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    float *f = (float *)rcd_test_read_file(path, &len);
    if (!f || len != expect_floats * sizeof(float)) {
        fprintf(stderr, "bad golden file %s\n", path);
        free(f);
        return NULL;
    }
    return f;
}

static int ids_from_json(const cJSON *arr, int32_t *out, int cap)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (n < cap) out[n++] = (int32_t)it->valuedouble;
    return n;
}

/* Loads goldens.json from dir (the model is in the same directory unless said otherwise). */
static int golden_load_dir(const char *dir, golden_t *g)
{
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "%s", dir);
    char path[1024];
    snprintf(path, sizeof path, "%s/goldens.json", g->dir);
    char *text = rcd_test_read_file(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!root) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    g->V = cJSON_GetObjectItem(root, "vocab_size")->valueint;
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(root, "sequences"))
    {
        golden_seq_t *q = &g->seqs[g->n_seqs++];
        snprintf(q->name, sizeof q->name, "%s", cJSON_GetObjectItem(s, "name")->valuestring);
        q->n = ids_from_json(cJSON_GetObjectItem(s, "tokens"), q->tokens, 64);
        q->logits = read_logits(g->dir, cJSON_GetObjectItem(s, "logits")->valuestring,
                                (size_t)q->n * g->V);
    }
    const cJSON *gr = cJSON_GetObjectItem(root, "greedy");
    g->n_prompt = ids_from_json(cJSON_GetObjectItem(gr, "prompt"), g->greedy, 64);
    g->n_gen = ids_from_json(cJSON_GetObjectItem(gr, "generated"), g->greedy + g->n_prompt,
                             160 - g->n_prompt);
    const cJSON *gl = cJSON_GetObjectItem(gr, "logits"); /* null: ids only */
    if (cJSON_IsString(gl))
        g->greedy_logits =
            read_logits(g->dir, gl->valuestring, (size_t)(g->n_prompt + g->n_gen) * g->V);
    cJSON_Delete(root);
    return 0;
}

static int golden_load(const char *name, golden_t *g)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/mamba/%s", golden_root(), name);
    return golden_load_dir(dir, g);
}

static void golden_free(golden_t *g)
{
    for (int i = 0; i < g->n_seqs; i++) free(g->seqs[i].logits);
    free(g->greedy_logits);
}

static float max_diff(const float *a, const float *b, size_t n)
{
    float m = 0.f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

static int argmax(const float *row, int V)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (row[v] > row[best]) best = v;
    return best;
}

static wrk_backend_t *make_backend(const wrk_model_t *m, const char *isa, int threads)
{
    char err[512];
    wrk_backend_t *b = NULL;
    wrk_backend_opts_t o = {.n_threads = threads, .n_slots = 8, .max_step_tokens = 64, .isa = isa};
    int rc = wrk_cpu_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    return b;
}

/* Runs seq q in chunks of `chunk` tokens on slot 0; returns max |diff| vs golden. */
static float run_chunked(wrk_backend_t *b, const golden_seq_t *q, int V, int chunk)
{
    char err[512];
    float *out = malloc((size_t)q->n * V * sizeof(float));
    wrk_state_reset(b, 0);
    for (int p = 0; p < q->n; p += chunk) {
        int len = q->n - p < chunk ? q->n - p : chunk;
        wrk_seq_t s = {.slot = 0, .n_tokens = len, .tokens = q->tokens + p, .n_logits = len,
                       .logits = out + (size_t)p * V};
        int rc = wrk_step(b, &s, 1, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
    }
    float d = max_diff(out, q->logits, (size_t)q->n * V);
    free(out);
    return d;
}

static const char *fp32_cases[] = {"tiny_bias_tied", "tiny_nobias_untied", "odd_sizes",
                                   "edge_numerics"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])
static const char *isas[] = {"portable", "avx2", "avx512"};

static void test_chunkings(void)
{
    static const int chunks[] = {1, 4, 8, 64};
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        if (golden_load(fp32_cases[ci], &g)) {
            CHECK(0);
            continue;
        }
        char err[512];
        wrk_model_t *m = NULL;
        int rc = wrk_model_load(g.dir, &m, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
        if (rc) continue;
        for (int ii = 0; ii < 3; ii++) {
            if (!wrk_kern_select(isas[ii])) {
                fprintf(stderr, "  skip: %s kernels (this CPU lacks the instructions)\n", isas[ii]);
                continue;
            }
            for (int threads = 1; threads <= 2; threads++) {
                wrk_backend_t *b = make_backend(m, isas[ii], threads);
                if (!b) continue;
                float worst = 0.f;
                for (int si = 0; si < g.n_seqs; si++)
                    for (int k = 0; k < 4; k++) {
                        float d = run_chunked(b, &g.seqs[si], g.V, chunks[k]);
                        CHECK_MSG(d <= TOL_F32, "%s %s/%d threads %s chunk %d: max diff %g",
                                  fp32_cases[ci], isas[ii], threads, g.seqs[si].name, chunks[k], d);
                        if (d > worst) worst = d;
                    }
                fprintf(stderr, "  %-18s %-8s %d thr: max |dlogit| %.2e over all chunkings\n",
                        fp32_cases[ci], isas[ii], threads, worst);
                wrk_backend_destroy(b);
            }
        }
        wrk_model_free(m);
        golden_free(&g);
    }
}

/* A ragged batch: sequences of different lengths and phases share each step. Sequence i
 * advances by a different amount each step; every logit row must match its golden row. */
static void test_ragged(void)
{
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        if (golden_load(fp32_cases[ci], &g)) continue;
        char err[512];
        wrk_model_t *m = NULL;
        if (wrk_model_load(g.dir, &m, err, sizeof err)) {
            CHECK_MSG(0, "%s", err);
            continue;
        }
        wrk_backend_t *b = make_backend(m, NULL, 2);
        const int V = g.V, ns = g.n_seqs;
        int pos[MAX_SEQS] = {0};
        float *out[MAX_SEQS];
        for (int i = 0; i < ns; i++) {
            out[i] = calloc((size_t)g.seqs[i].n * V, sizeof(float));
            wrk_state_reset(b, i + 1); /* slots out of order on purpose */
        }
        static const int pattern[] = {1, 3, 7, 2, 5, 1, 1, 4};
        for (int step = 0; step < 64; step++) {
            wrk_seq_t batch[MAX_SEQS];
            int nb = 0;
            for (int i = ns - 1; i >= 0; i--) {
                const golden_seq_t *q = &g.seqs[i];
                int want = pattern[(step + i) % 8];
                int len = q->n - pos[i] < want ? q->n - pos[i] : want;
                if (len <= 0) continue;
                /* Ask logits for a varying suffix (including none) to cover every mode. */
                int nl = (step + i) % 3 == 0 ? 0 : len;
                batch[nb++] = (wrk_seq_t){.slot = i + 1, .n_tokens = len,
                                          .tokens = q->tokens + pos[i], .n_logits = nl,
                                          .logits = out[i] + (size_t)pos[i] * V};
                if (nl == 0) /* mark the rows as not computed */
                    memcpy(out[i] + (size_t)pos[i] * V, q->logits + (size_t)pos[i] * V,
                           (size_t)len * V * sizeof(float));
                pos[i] += len;
            }
            if (!nb) break;
            int rc = wrk_step(b, batch, nb, err, sizeof err);
            CHECK_MSG(rc == 0, "%s", err);
        }
        for (int i = 0; i < ns; i++) {
            float d = max_diff(out[i], g.seqs[i].logits, (size_t)g.seqs[i].n * V);
            CHECK_MSG(d <= TOL_F32, "%s ragged %s: max diff %g", fp32_cases[ci], g.seqs[i].name, d);
            free(out[i]);
        }
        wrk_backend_destroy(b);
        wrk_model_free(m);
        golden_free(&g);
    }
}

/* Greedy: prefill the prompt, then 32 one-token decode steps; tokens identical, logits close. */
static int greedy_run(const char *dir, const golden_t *g, float *worst, int *mismatch_at)
{
    char err[512];
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc) return -1;
    wrk_backend_t *b = make_backend(m, NULL, 2);
    const int V = g->V;
    float *row = malloc((size_t)V * sizeof(float));
    wrk_seq_t s = {.slot = 3, .n_tokens = g->n_prompt, .tokens = g->greedy, .n_logits = 1,
                   .logits = row};
    *worst = 0.f;
    *mismatch_at = -1;
    rc = wrk_step(b, &s, 1, err, sizeof err);
    for (int i = 0; i < g->n_gen && rc == 0; i++) {
        int pos = g->n_prompt + i - 1;
        if (g->greedy_logits) {
            float d = max_diff(row, g->greedy_logits + (size_t)pos * V, (size_t)V);
            if (d > *worst) *worst = d;
        }
        int32_t tok = argmax(row, V);
        if (tok != g->greedy[g->n_prompt + i] && *mismatch_at < 0) *mismatch_at = i;
        s = (wrk_seq_t){.slot = 3, .n_tokens = 1, .tokens = &tok, .n_logits = 1, .logits = row};
        rc = wrk_step(b, &s, 1, err, sizeof err);
    }
    CHECK_MSG(rc == 0, "%s", err);
    free(row);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    return 0;
}

static void test_greedy(void)
{
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        if (golden_load(fp32_cases[ci], &g)) continue;
        float worst;
        int mis;
        if (greedy_run(g.dir, &g, &worst, &mis) == 0) {
            CHECK_MSG(mis < 0, "%s: greedy token %d differs", fp32_cases[ci], mis);
            CHECK_MSG(worst <= TOL_F32, "%s: greedy logits max diff %g", fp32_cases[ci], worst);
            CHECK(g.n_gen == 32);
        }
        golden_free(&g);
    }
}

/* The same checkpoint in BF16 and F16: logits within 2e-2 of fp32, same greedy tokens. */
static void test_half_weights(void)
{
    static const char *variants[] = {"tiny_bias_tied_bf16", "tiny_bias_tied_f16"};
    golden_t g;
    if (golden_load("tiny_bias_tied", &g)) {
        CHECK(0);
        return;
    }
    for (int vi = 0; vi < 2; vi++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/mamba/%s", golden_root(), variants[vi]);
        float worst;
        int mis;
        if (greedy_run(dir, &g, &worst, &mis) == 0) {
            fprintf(stderr, "  %s: greedy max |dlogit| vs fp32 %.2e\n", variants[vi], worst);
            CHECK_MSG(mis < 0, "%s: greedy token %d differs", variants[vi], mis);
            CHECK_MSG(worst <= 2e-2f, "%s: max diff %g", variants[vi], worst);
        }
        char err[512];
        wrk_model_t *m = NULL;
        if (wrk_model_load(dir, &m, err, sizeof err) == 0) {
            CHECK(wrk_model_info(m)->weight_dtype == (vi == 0 ? WRK_DT_BF16 : WRK_DT_F16));
            wrk_backend_t *b = make_backend(m, NULL, 2);
            for (int si = 0; si < g.n_seqs; si++) {
                float d = run_chunked(b, &g.seqs[si], g.V, 4);
                CHECK_MSG(d <= 2e-2f, "%s %s: max diff %g", variants[vi], g.seqs[si].name, d);
            }
            wrk_backend_destroy(b);
            wrk_model_free(m);
        }
    }
    golden_free(&g);
}

/* A sharded save of a checkpoint is the same model: same fingerprint, same logits. */
static void test_sharded(void)
{
    char a[600], bdir[600], err[512];
    snprintf(a, sizeof a, "%s/mamba/tiny_nobias_untied", golden_root());
    snprintf(bdir, sizeof bdir, "%s/mamba/tiny_nobias_untied_sharded", golden_root());
    wrk_model_t *m1 = NULL, *m2 = NULL;
    int rc1 = wrk_model_load(a, &m1, err, sizeof err);
    CHECK_MSG(rc1 == 0, "%s", err);
    int rc2 = wrk_model_load(bdir, &m2, err, sizeof err);
    CHECK_MSG(rc2 == 0, "%s", err);
    if (!rc1 && !rc2) {
        CHECK(wrk_model_info(m1)->fingerprint == wrk_model_info(m2)->fingerprint);
        golden_t g;
        if (golden_load("tiny_nobias_untied", &g) == 0) {
            wrk_backend_t *b = make_backend(m2, NULL, 1);
            CHECK(run_chunked(b, &g.seqs[g.n_seqs - 1], g.V, 8) <= TOL_F32);
            wrk_backend_destroy(b);
            golden_free(&g);
        }
    }
    /* Different models have different fingerprints. */
    wrk_model_t *m3 = NULL;
    snprintf(a, sizeof a, "%s/mamba/tiny_bias_tied", golden_root());
    if (wrk_model_load(a, &m3, err, sizeof err) == 0 && m1)
        CHECK(wrk_model_info(m1)->fingerprint != wrk_model_info(m3)->fingerprint);
    wrk_model_free(m1);
    wrk_model_free(m2);
    wrk_model_free(m3);
}

/* State read out after a prefix and written into another slot continues exactly; a copied
 * slot (fork) too. */
static void test_state_roundtrip(void)
{
    golden_t g;
    if (golden_load("tiny_bias_tied", &g)) return;
    char err[512];
    wrk_model_t *m = NULL;
    if (wrk_model_load(g.dir, &m, err, sizeof err)) {
        CHECK(0);
        golden_free(&g);
        return;
    }
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->state_bytes == (size_t)2 * (3 * 64 + 8 * 64) * 4);
    size_t sum = 0;
    for (int i = 0; i < mi->n_state_tensors; i++) {
        CHECK(mi->state_tensors[i].offset == sum);
        sum += mi->state_tensors[i].bytes;
    }
    CHECK(sum == mi->state_bytes);
    wrk_backend_t *b = make_backend(m, NULL, 2);
    const golden_seq_t *q = &g.seqs[g.n_seqs - 1];
    const int V = g.V, cut = 10;
    float *out = malloc((size_t)q->n * V * sizeof(float));
    void *blob = malloc(mi->state_bytes);
    wrk_seq_t s = {.slot = 0, .n_tokens = cut, .tokens = q->tokens, .n_logits = 0};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    CHECK(wrk_state_read(b, 0, blob) == 0);
    wrk_state_reset(b, 0); /* the original is gone; only the blob remains */
    CHECK(wrk_state_write(b, 5, blob) == 0);
    CHECK(wrk_state_copy(b, 6, 5) == 0);
    for (int slot = 5; slot <= 6; slot++) {
        s = (wrk_seq_t){.slot = slot, .n_tokens = q->n - cut, .tokens = q->tokens + cut,
                        .n_logits = q->n - cut, .logits = out};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
        CHECK(max_diff(out, q->logits + (size_t)cut * V, (size_t)(q->n - cut) * V) <= TOL_F32);
    }
    CHECK(wrk_state_read(b, 99, blob) == RCD_ERANGE);
    CHECK(wrk_state_copy(b, -1, 0) == RCD_ERANGE);
    free(blob);
    free(out);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

static void test_bad_batches(void)
{
    char dir[600], err[512];
    snprintf(dir, sizeof dir, "%s/mamba/tiny_bias_tied", golden_root());
    wrk_model_t *m = NULL;
    if (wrk_model_load(dir, &m, err, sizeof err)) {
        CHECK(0);
        return;
    }
    wrk_backend_t *b = make_backend(m, NULL, 1);
    int32_t ok[2] = {1, 2}, bad[2] = {1, 256}, neg[1] = {-1};
    float lg[2 * 256];
    wrk_seq_t s[2] = {{.slot = 0, .n_tokens = 2, .tokens = ok, .n_logits = 1, .logits = lg},
                      {.slot = 0, .n_tokens = 2, .tokens = ok}};
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL); /* same slot twice */
    CHECK(strstr(err, "twice") != NULL);
    s[1].slot = 8;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_ERANGE);
    s[1].slot = 1;
    s[1].tokens = bad;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_ERANGE);
    CHECK(strstr(err, "256") != NULL);
    s[1].tokens = neg;
    s[1].n_tokens = 1;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_ERANGE);
    s[1].tokens = ok;
    s[1].n_tokens = 0;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL);
    s[1].n_tokens = 2;
    s[1].n_logits = 3;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL);
    s[1].n_logits = 1; /* logits wanted but no buffer */
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL);
    CHECK(wrk_step(b, s, 0, err, sizeof err) == RCD_EINVAL);
    int32_t many[65] = {0};
    wrk_seq_t big = {.slot = 0, .n_tokens = 65, .tokens = many};
    CHECK(wrk_step(b, &big, 1, err, sizeof err) == RCD_ETOOBIG);
    s[1].n_logits = 0;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == 0);
    wrk_backend_destroy(b);
    wrk_model_free(m);
}

/* The bundled default model (models/recurd-mamba-tiny) against transformers: every prompt
 * at chunk sizes 1, 4 and whole, and 64 greedy tokens identical. */
static void test_bundled(void)
{
    char gdir[600], mdir[600], err[512];
    snprintf(gdir, sizeof gdir, "%s/bundled", golden_root());
    snprintf(mdir, sizeof mdir, "%s/../../models/recurd-mamba-tiny", golden_root());
    golden_t g;
    if (golden_load_dir(gdir, &g)) {
        CHECK(0);
        return;
    }
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(mdir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc) {
        golden_free(&g);
        return;
    }
    CHECK(g.n_seqs >= 3 && g.n_gen == 64);
    wrk_backend_t *b = make_backend(m, NULL, 2);
    float worst = 0.f;
    for (int si = 0; si < g.n_seqs; si++)
        for (int chunk = 1; chunk <= 64; chunk *= 4) {
            float d = run_chunked(b, &g.seqs[si], g.V, chunk);
            CHECK_MSG(d <= TOL_F32, "bundled %s chunk %d: max diff %g", g.seqs[si].name, chunk, d);
            if (d > worst) worst = d;
        }
    fprintf(stderr, "  bundled model: max |dlogit| %.2e over %d prompts\n", worst, g.n_seqs);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    int mis;
    if (greedy_run(mdir, &g, &worst, &mis) == 0)
        CHECK_MSG(mis < 0, "bundled: greedy token %d of 64 differs", mis);
    golden_free(&g);
}

int main(void)
{
    RUN(test_chunkings);
    RUN(test_ragged);
    RUN(test_greedy);
    RUN(test_half_weights);
    RUN(test_sharded);
    RUN(test_state_roundtrip);
    RUN(test_bad_batches);
    RUN(test_bundled);
    return rcd_test_summary();
}
