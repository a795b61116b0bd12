/* Tensor parallelism on the CPU backend: TP = 2, 3, 4 and 8 in-process ranks give the TP=1
 * logits and state (and the transformers goldens) on every golden fixture of Mamba and
 * Mamba2 — every chunking, ragged batches, uneven channel and head splits, groups shared
 * between ranks, BF16 weights, several threads per rank; a state blob moves between TP
 * degrees; sizes that cannot be split are refused with the sizes named. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/families/mamba.h"
#include "workers/families/mamba2.h"
#include "workers/wrk.h"

#define TOL_TP 1e-5f     /* TP=N vs TP=1, relative to max(1, |logit|) */
#define TOL_GOLDEN 1e-4f /* vs transformers, as the golden tests */
#define MAX_SEQS 8
/* --weights q8|q4 under TP vs the same format at TP=1, max |dlogit| (test_quantized):
 * - TOL_TPQ_ALIGNED: q4 where every rank's first input column is a multiple of 32 (the
 *   slices quantize in the whole matrix's groups and scales, the activations in its groups):
 *   the integer dots are the TP=1 ones and only the fp32 sum order of the all-reduce
 *   differs (measured <= 7.2e-7), except that this fp32 difference can make an activation
 *   code round the other way in a later layer: one such code moved the logits by 6.6e-3 (the
 *   ASan build, tiny_bias_tied). 2e-2 leaves room for about three, and is 3x below the
 *   smallest q4 difference of slices quantized in their own groups (6.6e-2), so a slice
 *   quantized in the wrong groups fails.
 * - TOL_TPQ8 / TOL_TPQ4 otherwise (q8 always: its row scale is the slice's max|w| / 127 for a
 *   column-split matrix): another, equally fine quantization of the same weights, so the
 *   difference is of the order of the quantization error itself; measured at most 5.9e-2
 *   (q8) and 3.3e-1 (q4) over these fixtures at TP 2 and 3, bound about 2x that, as the golden
 *   tests bound theirs (a wrong scale or nibble moves logits by O(1)).
 * - vs the fp32 goldens, on the cases the golden tests bound (mamba tiny_bias_tied, mamba2
 *   tiny_g2_untied), their bounds (mamba_golden_test.c, mamba2_golden_test.c).
 * Every chunking of a TP run gives the whole-sequence run's logits bit for bit. */
#define TOL_TPQ_ALIGNED 2e-2f
#define TOL_TPQ8 0.13f
#define TOL_TPQ4 0.7f

typedef struct fixture {
    const char *family; /* folder under tests/golden */
    const char *name;
    const char *tokens_from; /* goldens.json of another fixture when this has none */
} fixture_t;

static const fixture_t fixtures[] = {
    {"mamba", "tiny_bias_tied", NULL},
    {"mamba", "tiny_nobias_untied", NULL},
    {"mamba", "odd_sizes", NULL},
    {"mamba", "edge_numerics", NULL},
    {"mamba", "tiny_bias_tied_bf16", "tiny_bias_tied"},
    {"mamba2", "tiny_g2_untied", NULL},
    {"mamba2", "tiny_g1_bias_tied", NULL},
    {"mamba2", "odd_sizes", NULL},
    {"mamba2", "edge_numerics", NULL},
    {"mamba2", "tiny_g2_untied_bf16", NULL},
};
#define N_FIXTURES (int)(sizeof fixtures / sizeof fixtures[0])
static const int tps[] = {2, 3, 4, 8};
#define N_TPS (int)(sizeof tps / sizeof tps[0])

typedef struct seq {
    int n;
    int32_t tokens[64];
    float *golden; /* n x V, or NULL */
} seq_t;

typedef struct fix {
    char dir[RCD_PATH_MAX];
    wrk_model_t *m;
    int V, n_seqs;
    seq_t seqs[MAX_SEQS];
} fix_t;

static const char *golden_root(void)
{
    const char *d = getenv("RCD_GOLDEN_DIR");
    return d ? d : "tests/golden";
}

static int fix_load(const fixture_t *f, fix_t *x)
{
    memset(x, 0, sizeof *x);
    CHECK(rcd_path_fmt(x->dir, sizeof x->dir, "%s/%s/%s", golden_root(), f->family, f->name) == 0);
    char path[RCD_PATH_MAX], err[512];
    if (wrk_model_load(x->dir, &x->m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    x->V = wrk_model_info(x->m)->vocab_size;
    CHECK(rcd_path_fmt(path, sizeof path, "%s/%s/%s/goldens.json", golden_root(), f->family,
                       f->tokens_from ? f->tokens_from : f->name) == 0);

    char *text = rcd_test_read_file(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!root) return -1;
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(root, "sequences"))
    {
        if (x->n_seqs == MAX_SEQS) break;
        seq_t *q = &x->seqs[x->n_seqs++];
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(s, "tokens")) if (q->n < 64) q->tokens[q->n++] =
            (int32_t)it->valuedouble;
        if (f->tokens_from) continue; /* the goldens are another checkpoint's */
        size_t len;
        CHECK(rcd_path_fmt(path, sizeof path, "%s/%s", x->dir,
                           cJSON_GetObjectItem(s, "logits")->valuestring) == 0);
        q->golden = (float *)rcd_test_read_file(path, &len);
        if (q->golden && len != (size_t)q->n * x->V * sizeof(float)) {
            free(q->golden);
            q->golden = NULL;
        }
    }
    cJSON_Delete(root);
    return 0;
}

static void fix_free(fix_t *x)
{
    for (int i = 0; i < x->n_seqs; i++)
        free(x->seqs[i].golden);
    wrk_model_free(x->m);
}

static wrk_backend_t *make_w(const wrk_model_t *m, int tp, int threads, const char *weights,
                             char *err, size_t errlen)
{
    wrk_backend_t *b = NULL;
    wrk_backend_opts_t o = {.n_threads = threads, .n_slots = 8, .max_step_tokens = 64, .tp = tp,
                            .weights = weights};
    if (wrk_cpu_backend_create(m, &o, &b, err, errlen)) return NULL;
    return b;
}

static wrk_backend_t *make(const wrk_model_t *m, int tp, int threads, char *err, size_t errlen)
{
    return make_w(m, tp, threads, NULL, err, errlen);
}

/* max |a - b|; NaN counts as a failure. */
static float abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0.f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* max |a - b| / max(1, |b|); NaN counts as a failure. */
static float rel_diff(const float *a, const float *b, size_t n)
{
    float m = 0.f;
    for (size_t i = 0; i < n; i++) {
        float s = fabsf(b[i]) > 1.f ? fabsf(b[i]) : 1.f, d = fabsf(a[i] - b[i]) / s;
        if (!(d <= m)) m = d;
    }
    return m;
}

/* Runs q on slot 0 from a reset state in chunks of `chunk`; logits into out [n x V], the
 * final state into state. */
static int run_chunked(wrk_backend_t *b, const seq_t *q, int V, int chunk, float *out, float *state)
{
    char err[512];
    wrk_state_reset(b, 0);
    for (int p = 0; p < q->n; p += chunk) {
        int len = q->n - p < chunk ? q->n - p : chunk;
        wrk_seq_t s = {.slot = 0,
                       .n_tokens = len,
                       .tokens = q->tokens + p,
                       .n_logits = len,
                       .logits = out + (size_t)p * V};
        if (wrk_step(b, &s, 1, err, sizeof err)) {
            fprintf(stderr, "step: %s\n", err);
            return -1;
        }
    }
    return wrk_state_read_n(b, 0, state, wrk_model_info(wrk_backend_model(b))->state_bytes, NULL);
}

/* Every chunking of every sequence: TP=N logits and final state vs TP=1, logits vs goldens. */
static void test_chunkings(void)
{
    static const int chunks[] = {1, 4, 8, 64};
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        fix_t x;
        if (fix_load(&fixtures[fi], &x)) {
            CHECK_MSG(0, "cannot load %s/%s", fixtures[fi].family, fixtures[fi].name);
            continue;
        }
        char err[512];
        const size_t sf = wrk_model_info(x.m)->state_bytes / sizeof(float);
        float *ref = malloc(64 * (size_t)x.V * sizeof(float));
        float *out = malloc(64 * (size_t)x.V * sizeof(float));
        float *sref = malloc(sf * sizeof(float)), *stp = malloc(sf * sizeof(float));
        wrk_backend_t *b1 = make(x.m, 1, 1, err, sizeof err);
        CHECK_MSG(b1 != NULL, "%s", err);
        for (int ti = 0; b1 && ti < N_TPS; ti++) {
            const int tp = tps[ti];
            /* Two threads per rank at TP=2: the pool inside a rank splits its shard. */
            wrk_backend_t *b = make(x.m, tp, tp == 2 ? 4 : tp, err, sizeof err);
            if (!b) {
                /* Only Mamba2 edge_numerics (6 heads) cannot take 8 ranks. */
                CHECK_MSG(tp == 8 && strstr(err, "num_heads is 6"), "%s tp %d: %s",
                          fixtures[fi].name, tp, err);
                continue;
            }
            CHECK(strcmp(wrk_backend_name(b), "cpu-tp") == 0);
            float worst = 0.f, worst_state = 0.f, worst_golden = 0.f;
            for (int si = 0; si < x.n_seqs; si++)
                for (int k = 0; k < 4; k++) {
                    const seq_t *q = &x.seqs[si];
                    const size_t nv = (size_t)q->n * x.V;
                    if (run_chunked(b1, q, x.V, chunks[k], ref, sref) ||
                        run_chunked(b, q, x.V, chunks[k], out, stp)) {
                        CHECK(0);
                        continue;
                    }
                    float d = rel_diff(out, ref, nv), ds = rel_diff(stp, sref, sf);
                    CHECK_MSG(d <= TOL_TP, "%s/%s tp %d len %d chunk %d: logits differ by %g",
                              fixtures[fi].family, fixtures[fi].name, tp, q->n, chunks[k], d);
                    CHECK_MSG(ds <= TOL_TP, "%s/%s tp %d len %d chunk %d: state differs by %g",
                              fixtures[fi].family, fixtures[fi].name, tp, q->n, chunks[k], ds);
                    if (d > worst) worst = d;
                    if (ds > worst_state) worst_state = ds;
                    if (q->golden) {
                        float g = 0.f;
                        for (size_t i = 0; i < nv; i++)
                            if (!(fabsf(out[i] - q->golden[i]) <= g))
                                g = fabsf(out[i] - q->golden[i]);
                        CHECK_MSG(g <= TOL_GOLDEN, "%s/%s tp %d: %g from the golden",
                                  fixtures[fi].family, fixtures[fi].name, tp, g);
                        if (g > worst_golden) worst_golden = g;
                    }
                }
            fprintf(stderr, "  %-6s %-20s tp %d: vs tp1 logits %.1e state %.1e; vs golden %.1e\n",
                    fixtures[fi].family, fixtures[fi].name, tp, worst, worst_state, worst_golden);
            wrk_backend_destroy(b);
        }
        wrk_backend_destroy(b1);
        free(ref);
        free(out);
        free(sref);
        free(stp);
        fix_free(&x);
    }
}

/* One ragged run: every sequence on its own slot (out of order), advancing by a different
 * amount each step, some entries asking no logits. */
static int ragged(wrk_backend_t *b, const fix_t *x, float **out)
{
    static const int pattern[] = {1, 3, 7, 2, 5, 1, 1, 4};
    char err[512];
    int pos[MAX_SEQS] = {0};
    for (int i = 0; i < x->n_seqs; i++) {
        memset(out[i], 0, (size_t)x->seqs[i].n * x->V * sizeof(float));
        wrk_state_reset(b, i + 1);
    }
    for (int step = 0; step < 64; step++) {
        wrk_seq_t batch[MAX_SEQS];
        int nb = 0;
        for (int i = x->n_seqs - 1; i >= 0; i--) {
            const seq_t *q = &x->seqs[i];
            int want = pattern[(step + i) % 8];
            int len = q->n - pos[i] < want ? q->n - pos[i] : want;
            if (len <= 0) continue;
            batch[nb++] = (wrk_seq_t){.slot = i + 1,
                                      .n_tokens = len,
                                      .tokens = q->tokens + pos[i],
                                      .n_logits = (step + i) % 3 == 0 ? 0 : len,
                                      .logits = out[i] + (size_t)pos[i] * x->V};
            pos[i] += len;
        }
        if (!nb) break;
        if (wrk_step(b, batch, nb, err, sizeof err)) {
            fprintf(stderr, "ragged step: %s\n", err);
            return -1;
        }
    }
    return 0;
}

static void test_ragged(void)
{
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        fix_t x;
        if (fix_load(&fixtures[fi], &x)) {
            CHECK_MSG(0, "cannot load %s/%s", fixtures[fi].family, fixtures[fi].name);
            continue;
        }
        char err[512];
        float *ref[MAX_SEQS], *out[MAX_SEQS];
        for (int i = 0; i < x.n_seqs; i++) {
            ref[i] = malloc((size_t)x.seqs[i].n * x.V * sizeof(float));
            out[i] = malloc((size_t)x.seqs[i].n * x.V * sizeof(float));
        }
        wrk_backend_t *b1 = make(x.m, 1, 2, err, sizeof err);
        CHECK(b1 && ragged(b1, &x, ref) == 0);
        for (int ti = 0; b1 && ti < 3; ti++) { /* 2, 3, 4 ranks */
            wrk_backend_t *b = make(x.m, tps[ti], 2 * tps[ti], err, sizeof err);
            CHECK_MSG(b != NULL, "%s", err);
            if (!b) continue;
            CHECK(ragged(b, &x, out) == 0);
            float worst = 0.f;
            for (int i = 0; i < x.n_seqs; i++) {
                float d = rel_diff(out[i], ref[i], (size_t)x.seqs[i].n * x.V);
                if (d > worst) worst = d;
            }
            CHECK_MSG(worst <= TOL_TP, "%s/%s ragged tp %d: logits differ by %g",
                      fixtures[fi].family, fixtures[fi].name, tps[ti], worst);
            wrk_backend_destroy(b);
        }
        wrk_backend_destroy(b1);
        for (int i = 0; i < x.n_seqs; i++) {
            free(ref[i]);
            free(out[i]);
        }
        fix_free(&x);
    }
}

/* A state blob is the TP=1 blob: written and read back bit for bit on any degree; a prefix
 * run on TP=2, saved, continues on TP=4, TP=3 and TP=1 to the same logits; copy and reset
 * act on every rank's shard. */
static void test_state_portable(void)
{
    static const int order[] = {1, 2, 3, 4};
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        fix_t x;
        if (fix_load(&fixtures[fi], &x)) {
            CHECK_MSG(0, "cannot load %s/%s", fixtures[fi].family, fixtures[fi].name);
            continue;
        }
        char err[512];
        const size_t sf = wrk_model_info(x.m)->state_bytes / sizeof(float);
        const seq_t *q = &x.seqs[x.n_seqs - 1]; /* the longest */
        const int half = q->n / 2, V = x.V;
        float *blob = malloc(sf * sizeof(float)), *back = malloc(sf * sizeof(float));
        float *saved = malloc(sf * sizeof(float));
        float *ref = malloc((size_t)q->n * V * sizeof(float));
        float *out = malloc((size_t)q->n * V * sizeof(float));
        float *sref = malloc(sf * sizeof(float));
        wrk_backend_t *b[5] = {0};
        for (int i = 0; i < 4; i++) {
            b[order[i]] = make(x.m, order[i], order[i], err, sizeof err);
            CHECK_MSG(b[order[i]] != NULL, "%s", err);
        }
        if (!b[1] || !b[2] || !b[3] || !b[4]) goto next;
        for (size_t i = 0; i < sf; i++)
            blob[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        for (int i = 1; i <= 4; i++) {
            memset(back, 0, sf * sizeof(float));
            CHECK(wrk_state_write_n(b[i], 3, blob, sf * sizeof(float)) == 0);
            CHECK(wrk_state_copy(b[i], 5, 3) == 0);
            CHECK(wrk_state_read_n(b[i], 5, back, sf * sizeof(float), NULL) == 0);
            CHECK_MSG(memcmp(back, blob, sf * sizeof(float)) == 0,
                      "%s/%s tp %d: state write/copy/read is not exact", fixtures[fi].family,
                      fixtures[fi].name, i);
            CHECK(wrk_state_reset(b[i], 5) == 0);
            CHECK(wrk_state_read_n(b[i], 5, back, sf * sizeof(float), NULL) == 0);
            int zero = 1;
            for (size_t k = 0; k < sf; k++)
                zero &= back[k] == 0.f;
            CHECK_MSG(zero, "tp %d: reset left state behind", i);
            CHECK(wrk_state_read_n(b[i], 8, back, sf * sizeof(float), NULL) == RCD_ERANGE);
        }
        /* The reference: the whole sequence on TP=1. */
        CHECK(run_chunked(b[1], q, V, 64, ref, sref) == 0);
        wrk_seq_t s = {.slot = 2, .n_tokens = half, .tokens = q->tokens, .n_logits = 0};
        wrk_state_reset(b[2], 2);
        CHECK(wrk_step(b[2], &s, 1, err, sizeof err) == 0);
        CHECK(wrk_state_read_n(b[2], 2, saved, sf * sizeof(float), NULL) == 0);
        for (int to = 1; to <= 4; to++) {
            CHECK(wrk_state_write_n(b[to], 6, saved, sf * sizeof(float)) == 0);
            wrk_seq_t r = {.slot = 6,
                           .n_tokens = q->n - half,
                           .tokens = q->tokens + half,
                           .n_logits = q->n - half,
                           .logits = out + (size_t)half * V};
            CHECK(wrk_step(b[to], &r, 1, err, sizeof err) == 0);
            CHECK(wrk_state_read_n(b[to], 6, back, sf * sizeof(float), NULL) == 0);
            float d =
                rel_diff(out + (size_t)half * V, ref + (size_t)half * V, (size_t)(q->n - half) * V);
            float ds = rel_diff(back, sref, sf);
            CHECK_MSG(d <= TOL_TP && ds <= TOL_TP,
                      "%s/%s: state from tp 2 resumed on tp %d: logits %g, state %g",
                      fixtures[fi].family, fixtures[fi].name, to, d, ds);
        }
    next:
        for (int i = 1; i <= 4; i++)
            wrk_backend_destroy(b[i]);
        free(blob);
        free(back);
        free(saved);
        free(ref);
        free(out);
        free(sref);
        fix_free(&x);
    }
}

/* Sizes that cannot be split are refused with the sizes named; bad batches are refused by
 * the TP backend as by the plain one. */
static void test_refusals(void)
{
    fix_t x;
    char err[512] = "";
    CHECK(fix_load(&fixtures[3], &x) == 0);
    if (x.m) { /* mamba edge_numerics: intermediate_size 24 */
        CHECK(make(x.m, 25, 25, err, sizeof err) == NULL);
        CHECK_MSG(strstr(err, "25 ranks") && strstr(err, "intermediate_size is 24"), "%s", err);
        wrk_backend_t *b = make(x.m, 24, 1, err, sizeof err); /* one channel each: fine */
        CHECK_MSG(b != NULL, "%s", err);
        if (b) {
            float logits[96];
            int32_t bad = 96, ok = 5;
            wrk_seq_t s = {
                .slot = 0, .n_tokens = 1, .tokens = &bad, .n_logits = 1, .logits = logits};
            CHECK(wrk_step(b, &s, 1, err, sizeof err) == RCD_ERANGE);
            s.tokens = &ok;
            CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
            wrk_seq_t two[2] = {s, s};
            CHECK(wrk_step(b, two, 2, err, sizeof err) == RCD_EINVAL);
            wrk_backend_destroy(b);
        }
        fix_free(&x);
    }
    CHECK(fix_load(&fixtures[8], &x) == 0);
    if (x.m) { /* mamba2 edge_numerics: 6 heads */
        CHECK(make(x.m, 7, 7, err, sizeof err) == NULL);
        CHECK_MSG(strstr(err, "7 ranks") && strstr(err, "num_heads is 6"), "%s", err);
        CHECK(make(x.m, 300, 1, err, sizeof err) == NULL);
        CHECK_MSG(strstr(err, "300 ranks"), "%s", err);
        fix_free(&x);
    }
}

/* The shard layouts themselves: splits cover every channel or head once, uneven where the
 * sizes say so; Mamba2 keeps gated-norm groups whole (one all-reduce per layer) exactly
 * when there are at least as many groups as ranks. */
static void test_shard_layout(void)
{
    static const struct {
        int fixture, tp;
        bool norm_reduce;
        int first; /* channels (Mamba) or heads (Mamba2) of rank 0 */
    } cases[] = {
        {2, 3, false, 16}, /* mamba odd_sizes: I = 72 in blocks of 16: 16, 32, 24 */
        {3, 24, false, 1}, /* mamba edge_numerics: I = 24, one channel each */
        {5, 2, false, 4},  /* mamba2 tiny_g2_untied: G = 2, 8 heads: a group each */
        {5, 4, true, 2},   /* ... 4 ranks > 2 groups: groups shared, norm all-reduced */
        {6, 2, true, 4},   /* mamba2 tiny_g1_bias_tied: G = 1 */
        {7, 2, false, 5},  /* mamba2 odd_sizes: G = 3, 15 heads: groups 1 + 2 */
        {8, 4, false, 1},  /* mamba2 edge_numerics: G = 6: groups 1, 2, 1, 2 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fix_t x;
        if (fix_load(&fixtures[cases[i].fixture], &x)) {
            CHECK(0);
            continue;
        }
        const wrk_model_t *m = x.m;
        const bool m2 = !strcmp(fixtures[cases[i].fixture].family, "mamba2");
        int total = 0, want = 0;
        size_t state = 0;
        for (int r = 0; r < cases[i].tp; r++) {
            wrk_shard_t *s = NULL;
            char err[256];
            int rc = m->fam->shard(m, r, cases[i].tp, &s, err, sizeof err);
            CHECK_MSG(rc == 0, "%s", err);
            if (rc) continue;
            int n;
            if (m2) {
                const wrk_mamba2_config_t *c = &((const wrk_mamba2_t *)s->layout)->cfg;
                n = c->n_heads;
                want = ((const wrk_mamba2_t *)m->priv)->cfg.n_heads;
                CHECK_MSG(c->tp_norm_reduce == cases[i].norm_reduce, "case %zu rank %d", i, r);
                CHECK(c->tp_head0 == total);
            } else {
                n = ((const wrk_mamba_t *)s->layout)->cfg.inner;
                want = ((const wrk_mamba_t *)m->priv)->cfg.inner;
            }
            if (r == 0) CHECK_MSG(n == cases[i].first, "case %zu: rank 0 has %d", i, n);
            CHECK(n >= 1);
            total += n;
            state += s->state_floats;
            wrk_shard_free(s);
        }
        CHECK_MSG(total == want, "case %zu: %d of %d", i, total, want);
        /* Shared B/C channels make the ranks' states add up to more than the blob. */
        CHECK(state >= wrk_model_info(m)->state_bytes / sizeof(float));
        fix_free(&x);
    }
}

/* --weights q8|q4 under TP: every rank quantizes its own slices (workers/README.md, "Tensor
 * parallelism"). Each TP run is checked against the same format at TP=1 and, on the cases
 * the golden tests bound, against the fp32 goldens; every chunking of a sequence against
 * the whole-sequence TP run. */
/* Whether every rank's slice of the row-parallel matrices starts on a q4 group. */
static bool q4_aligned(const wrk_model_t *m, int tp)
{
    bool ok = true;
    for (int r = 0; r < tp && ok; r++) {
        wrk_shard_t *s = NULL;
        char err[256];
        if (m->fam->shard(m, r, tp, &s, err, sizeof err)) return false;
        if (m->info.family == WRK_FAMILY_MAMBA2) {
            const wrk_mamba2_config_t *c = &((const wrk_mamba2_t *)s->layout)->cfg;
            ok = c->tp_head0 * c->head_dim % 32 == 0;
        } else { /* the last rank's width may be odd; the others' are whole blocks */
            ok = r == tp - 1 || ((const wrk_mamba_t *)s->layout)->cfg.inner % 32 == 0;
        }
        wrk_shard_free(s);
    }
    return ok;
}

static void test_quantized(void)
{
    static const int chunks[] = {1, 5, 64}, qtps[] = {2, 3};
    static const char *fmts[] = {"q8", "q4"};
    static const float tol_golden[2][2] = {{0.05f, 0.35f}, {0.13f, 1.3f}}; /* mamba, mamba2 */
#if defined(__SANITIZE_THREAD__)
    /* TSan (10-30x slower) checks the ranks' threads: two fixtures at tp 2 are enough there;
     * the release and ASan runs check every fixture at tp 2 and 3 */
    const bool tsan = true;
#else
    const bool tsan = false;
#endif
    for (int fi = 0; fi < N_FIXTURES; fi++)
        for (int f = 0; f < 2; f++) {
            if (tsan && strcmp(fixtures[fi].name, "tiny_bias_tied") &&
                strcmp(fixtures[fi].name, "tiny_g2_untied"))
                continue;
            fix_t x;
            if (fix_load(&fixtures[fi], &x)) { /* a model per format: packs are per model */
                CHECK(0);
                continue;
            }
            char err[512];
            const size_t sf = wrk_model_info(x.m)->state_bytes / sizeof(float);
            float *ref = malloc(64 * (size_t)x.V * sizeof(float));
            float *whole = malloc(64 * (size_t)x.V * sizeof(float));
            float *out = malloc(64 * (size_t)x.V * sizeof(float));
            float *st = malloc(sf * sizeof(float));
            wrk_backend_t *b1 = make_w(x.m, 1, 1, fmts[f], err, sizeof err);
            CHECK_MSG(b1 != NULL, "%s", err);
            for (int ti = 0; b1 && ti < (tsan ? 1 : 2); ti++) {
                const int tp = qtps[ti];
                wrk_backend_t *b = make_w(x.m, tp, 2 * tp, fmts[f], err, sizeof err);
                CHECK_MSG(b != NULL, "%s tp %d %s: %s", fixtures[fi].name, tp, fmts[f], err);
                if (!b) continue;
                const bool m2 = !strcmp(fixtures[fi].family, "mamba2");
                const bool aligned = f == 1 && q4_aligned(x.m, tp);
                const float tol = aligned ? TOL_TPQ_ALIGNED : f == 0 ? TOL_TPQ8 : TOL_TPQ4;
                const bool bounded = !strcmp(fixtures[fi].name, m2 ? "tiny_g2_untied"
                                                                   : "tiny_bias_tied");
                float worst = 0.f, worst_chunk = 0.f, worst_golden = 0.f;
                for (int si = 0; si < x.n_seqs; si++) {
                    const seq_t *q = &x.seqs[si];
                    const size_t nv = (size_t)q->n * x.V;
                    if (run_chunked(b1, q, x.V, 64, ref, st) ||
                        run_chunked(b, q, x.V, 64, whole, st)) {
                        CHECK(0);
                        continue;
                    }
                    float d = abs_diff(whole, ref, nv);
                    if (d > worst) worst = d;
                    if (q->golden) {
                        float g = abs_diff(whole, q->golden, nv);
                        if (g > worst_golden) worst_golden = g;
                    }
                    for (int k = 0; k < 2; k++) {
                        if (run_chunked(b, q, x.V, chunks[k], out, st)) {
                            CHECK(0);
                            continue;
                        }
                        float dc = abs_diff(out, whole, nv);
                        if (dc > worst_chunk) worst_chunk = dc;
                    }
                }
                CHECK_MSG(worst <= tol, "%s/%s %s tp %d: %g from tp 1 (bound %g%s)",
                          fixtures[fi].family, fixtures[fi].name, fmts[f], tp, worst, tol,
                          aligned ? ", q4 groups aligned" : "");
                CHECK_MSG(worst_chunk == 0.f, "%s/%s %s tp %d: chunkings differ by %g",
                          fixtures[fi].family, fixtures[fi].name, fmts[f], tp, worst_chunk);
                if (bounded)
                    CHECK_MSG(worst_golden <= tol_golden[m2][f], "%s/%s %s tp %d: %g from golden",
                              fixtures[fi].family, fixtures[fi].name, fmts[f], tp, worst_golden);
                fprintf(stderr,
                        "  %-6s %-20s %s tp %d%s: vs tp1 %.2e; chunkings %.2e; vs golden %.2e\n",
                        fixtures[fi].family, fixtures[fi].name, fmts[f], tp,
                        aligned ? " (aligned)" : "", worst, worst_chunk, worst_golden);
                wrk_backend_destroy(b);
            }
            wrk_backend_destroy(b1);
            free(ref);
            free(whole);
            free(out);
            free(st);
            fix_free(&x);
        }
}

/* The weight format under TP is the model's as at TP=1: the same fingerprint as a TP=1
 * backend of that format (once, however many groups), and another format refused. */
static void test_quantized_model(void)
{
    fix_t a, b1, n;
    char err[512];
    if (fix_load(&fixtures[5], &a) || fix_load(&fixtures[5], &b1) || fix_load(&fixtures[5], &n)) {
        CHECK(0);
        return;
    }
    const uint64_t native = wrk_model_info(n.m)->fingerprint;
    wrk_backend_t *t = make_w(a.m, 2, 2, "q8", err, sizeof err), *o = NULL;
    CHECK_MSG(t != NULL, "%s", err);
    const uint64_t fa = wrk_model_info(a.m)->fingerprint;
    wrk_backend_t *t2 = make_w(a.m, 3, 3, "q8", err, sizeof err);
    CHECK_MSG(t2 != NULL, "%s", err);
    CHECK(wrk_model_info(a.m)->fingerprint == fa);
    CHECK((o = make_w(b1.m, 1, 1, "q8", err, sizeof err)) != NULL);
    CHECK(wrk_model_info(b1.m)->fingerprint == fa && fa != native);
    CHECK(make_w(a.m, 1, 1, "q4", err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "already packed with --weights q8"), "%s", err);
    CHECK(make_w(a.m, 2, 2, "native", err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "already packed with --weights q8"), "%s", err);
    wrk_backend_t *t1 = make_w(a.m, 1, 1, "q8", err, sizeof err); /* TP=1 after TP: fine */
    CHECK_MSG(t1 != NULL, "%s", err);
    CHECK(wrk_model_info(a.m)->fingerprint == fa);
    wrk_backend_destroy(t1);
    wrk_backend_destroy(o);
    wrk_backend_destroy(t2);
    wrk_backend_destroy(t);
    fix_free(&a);
    fix_free(&b1);
    fix_free(&n);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_shard_layout);
    RUN(test_chunkings);
    RUN(test_ragged);
    RUN(test_state_portable);
    RUN(test_refusals);
    RUN(test_quantized);
    RUN(test_quantized_model);
    return rcd_test_summary();
}
