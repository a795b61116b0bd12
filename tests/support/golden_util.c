/* tests/support: the fixture reader, backends and drivers of golden_util.h. */
#include "tests/support/golden_util.h"
#include "common/rcd_path.h"
#include "workers/cpu/cpu_int.h" /* the pool's active count, cycled between steps */

const char *golden_root(void)
{
    const char *d = getenv("RCD_GOLDEN_DIR");
    return d ? d : "tests/golden";
}

float *golden_read_f32(const char *dir, const char *file, size_t n)
{
    char path[RCD_PATH_MAX];
    size_t len;
    CHECK(rcd_path_fmt(path, sizeof path, "%s/%s", dir, file) == 0);
    float *f = (float *)rcd_test_read_file(path, &len);
    if (!f || len != n * sizeof(float)) {
        fprintf(stderr, "bad golden file %s\n", path);
        free(f);
        return NULL;
    }
    return f;
}

static int golden__ids(const cJSON *arr, int32_t *out, int cap)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (n < cap) out[n++] = (int32_t)it->valuedouble;
    return n;
}

void golden_free(golden_t *g)
{
    for (int i = 0; i < g->n_seqs; i++)
        free(g->seqs[i].logits);
    free(g->greedy_logits);
    memset(g, 0, sizeof *g);
}

int golden_load_dir(const char *dir, golden_t *g)
{
    memset(g, 0, sizeof *g);
    CHECK(rcd_path_fmt(g->dir, sizeof g->dir, "%s", dir) == 0);
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof path, "%s/goldens.json", g->dir) == 0);
    char *text = rcd_test_read_file(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *vocab = cJSON_GetObjectItem(root, "vocab_size");
    if (!root || !cJSON_IsNumber(vocab)) {
        fprintf(stderr, "cannot read %s\n", path);
        cJSON_Delete(root);
        return -1;
    }
    g->V = vocab->valueint;
    bool ok = true;
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(root, "sequences"))
    {
        if (g->n_seqs == GOLDEN_MAX_SEQS) break;
        golden_seq_t *q = &g->seqs[g->n_seqs++];
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(s, "name"));
        const char *file = cJSON_GetStringValue(cJSON_GetObjectItem(s, "logits"));
        snprintf(q->name, sizeof q->name, "%s", name ? name : "?");
        q->n = golden__ids(cJSON_GetObjectItem(s, "tokens"), q->tokens, GOLDEN_MAX_TOKENS);
        q->logits = file ? golden_read_f32(g->dir, file, (size_t)q->n * g->V) : NULL;
        ok &= q->logits != NULL;
    }
    const cJSON *gr = cJSON_GetObjectItem(root, "greedy");
    g->n_prompt = golden__ids(cJSON_GetObjectItem(gr, "prompt"), g->greedy, GOLDEN_MAX_TOKENS);
    g->n_gen = golden__ids(cJSON_GetObjectItem(gr, "generated"), g->greedy + g->n_prompt,
                           GOLDEN_MAX_GREEDY - g->n_prompt);
    const cJSON *gl = cJSON_GetObjectItem(gr, "logits"); /* null: ids only */
    if (cJSON_IsString(gl)) {
        g->greedy_logits =
            golden_read_f32(g->dir, gl->valuestring, (size_t)(g->n_prompt + g->n_gen) * g->V);
        ok &= g->greedy_logits != NULL;
    }
    cJSON_Delete(root);
    if (!ok) golden_free(g);
    return ok ? 0 : -1;
}

int golden_load(const char *family, const char *name, golden_t *g)
{
    char dir[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(dir, sizeof dir, "%s/%s/%s", golden_root(), family, name) == 0);
    return golden_load_dir(dir, g);
}

float *golden_load_extra(const golden_t *g, const char *key, size_t n)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof path, "%s/goldens.json", g->dir) == 0);
    char *text = rcd_test_read_file(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    const char *file = cJSON_GetStringValue(cJSON_GetObjectItem(root, key));
    float *f = file ? golden_read_f32(g->dir, file, n) : NULL;
    cJSON_Delete(root);
    return f;
}

const golden_seq_t *golden_find_seq(const golden_t *g, int n)
{
    for (int i = 0; i < g->n_seqs; i++)
        if (g->seqs[i].n == n) return &g->seqs[i];
    return NULL;
}

float golden_max_diff(const float *a, const float *b, size_t n)
{
    float m = 0.f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

int golden_argmax(const float *row, int V)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (row[v] > row[best]) best = v;
    return best;
}

wrk_model_t *golden_model(const char *dir)
{
    char err[512];
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    return rc ? NULL : m;
}

wrk_model_t *golden_open(const char *family, const char *name, golden_t *g)
{
    if (golden_load(family, name, g)) return NULL;
    char err[512];
    wrk_model_t *m = NULL;
    if (wrk_model_load(g->dir, &m, err, sizeof err)) {
        CHECK_MSG(0, "%s", err);
        golden_free(g);
        return NULL;
    }
    return m;
}

wrk_backend_t *golden_backend(const golden_suite_t *s, const wrk_model_t *m, const char *isa,
                              int threads)
{
    char err[512];
    wrk_backend_t *b = NULL;
    wrk_backend_opts_t o = s->opts;
    o.isa = isa;
    o.n_threads = threads;
    int rc = wrk_cpu_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    return b;
}

/* Nonzero: golden_run_into changes the CPU pool's active count after every step (3, 1, 2, ...
 * of a 3-thread pool), as --adapt-threads may between any two steps. */
static int cycle_threads;

static void cycle_active(wrk_backend_t *b)
{
    if (!cycle_threads || strcmp(wrk_backend_name(b), "cpu") != 0) return;
    wrk_pool_t *p = ((wrk_cpu_t *)b)->pool;
    const int n = wrk_pool_size(p), a = wrk_pool_active(p);
    wrk_pool_set_active(p, a == n ? 1 : a + 1);
}

int golden_run_into(wrk_backend_t *b, int slot, const golden_seq_t *q, int V, int chunk, float *out)
{
    char err[512];
    wrk_state_reset(b, slot);
    for (int p = 0; p < q->n; p += chunk) {
        int len = q->n - p < chunk ? q->n - p : chunk;
        wrk_seq_t s = {.slot = slot,
                       .n_tokens = len,
                       .tokens = q->tokens + p,
                       .n_logits = len,
                       .logits = out + (size_t)p * V};
        int rc = wrk_step(b, &s, 1, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
        if (rc) return rc;
        cycle_active(b);
    }
    return 0;
}

float golden_run_chunked(wrk_backend_t *b, const golden_seq_t *q, int V, int chunk)
{
    float *out = malloc((size_t)q->n * V * sizeof(float));
    float d = NAN;
    if (golden_run_into(b, 0, q, V, chunk, out) == 0)
        d = golden_max_diff(out, q->logits, (size_t)q->n * V);
    free(out);
    return d;
}

float golden_check_chunks(wrk_backend_t *b, const golden_t *g, float tol, const char *label)
{
    return golden_check_chunks_ref(b, g, tol, label, NULL);
}

float golden_check_chunks_ref(wrk_backend_t *b, const golden_t *g, float tol, const char *label,
                              float **ref)
{
    static const int chunks[] = {1, 4, 8, 64};
    float worst = 0.f;
    for (int si = 0; si < g->n_seqs; si++) {
        const golden_seq_t *q = &g->seqs[si];
        const size_t n = (size_t)q->n * g->V;
        float *first = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
        bool ran = false;
        for (int k = 0; k < 4; k++) {
            float *dst = k == 0 ? first : out;
            float d = NAN;
            if (golden_run_into(b, 0, q, g->V, chunks[k], dst) == 0)
                d = golden_max_diff(dst, q->logits, n);
            CHECK_MSG(d <= tol, "%s %s chunk %d: max diff %g", label, q->name, chunks[k], d);
            if (!(d <= worst)) worst = d;
            if (k == 0) ran = d == d;
            if (k > 0 && d == d)
                CHECK_MSG(memcmp(first, out, n * sizeof(float)) == 0,
                          "%s %s: chunk %d logits differ bitwise from chunk 1 (max %g)", label,
                          q->name, chunks[k], golden_max_diff(first, out, n));
        }
        if (ref && ran && ref[si]) {
            CHECK_MSG(memcmp(ref[si], first, n * sizeof(float)) == 0,
                      "%s %s: logits differ bitwise from the reference run's (max %g)", label,
                      q->name, golden_max_diff(ref[si], first, n));
        } else if (ref && ran) {
            ref[si] = first;
            first = NULL;
        }
        free(first);
        free(out);
    }
    return worst;
}

static void golden_ref_free(float **ref, int n)
{
    for (int i = 0; i < n; i++) {
        free(ref[i]);
        ref[i] = NULL;
    }
}

void golden_test_bundled(const golden_suite_t *s, const char *sub, const char *model_name,
                         float tol)
{
    char gdir[RCD_PATH_MAX], mdir[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(gdir, sizeof gdir, "%s/%s", golden_root(), sub) == 0);
    CHECK(rcd_path_fmt(mdir, sizeof mdir, "%s/../../models/%s", golden_root(), model_name) == 0);
    golden_t g;
    if (golden_load_dir(gdir, &g)) {
        CHECK_MSG(0, "%s: no fixture", gdir);
        return;
    }
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(mdir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", model_name, err);
    if (rc) {
        golden_free(&g);
        return;
    }
    CHECK(g.n_seqs >= 3 && g.n_gen == 64);
    wrk_backend_t *b = golden_backend(s, m, NULL, 2);
    float worst = b ? golden_check_chunks(b, &g, tol, sub) : NAN;
    fprintf(stderr, "  %s: max |dlogit| %.2e over %d prompts\n", model_name, worst, g.n_seqs);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    int mis;
    if (golden_greedy(s, mdir, &g, &worst, &mis) == 0)
        CHECK_MSG(mis < 0, "%s: greedy token %d of 64 differs", model_name, mis);
    golden_free(&g);
}

/* Under TSan (races, not numerics: the release and ASan runs check every ISA and thread
 * count) only the fastest kernels this CPU has run, with 2 threads: that is where the pool's
 * threads share work, at a sixth of the cost. */
#if defined(__SANITIZE_THREAD__)
#define GOLDEN_TSAN 1
#else
#define GOLDEN_TSAN 0
#endif

void golden_test_chunkings(const golden_suite_t *s)
{
    static const char *isas[] = {"portable", "avx2", "avx512"};
    int best = 0;
    for (int ii = 0; ii < 3; ii++)
        if (wrk_kern_select(isas[ii])) best = ii;
    for (int ci = 0; ci < s->n_cases; ci++) {
        golden_t g;
        if (golden_load(s->family, s->cases[ci], &g)) {
            CHECK(0);
            continue;
        }
        wrk_model_t *m = golden_model(g.dir);
        if (m) CHECK(wrk_model_info(m)->family == s->family_id);
        for (int ii = GOLDEN_TSAN ? best : 0; m && ii < 3; ii++) {
            if (!wrk_kern_select(isas[ii])) {
                fprintf(stderr, "  skip: %s kernels (this CPU lacks the instructions)\n", isas[ii]);
                continue;
            }
            /* 1, 2 and 3 threads give bit-identical logits: a row's result never depends on
             * which thread computed it, so replicas with different CPU counts (--threads 0
             * follows the CPU quota) serve a moved session exactly as its first one would.
             * Round 4: 3 threads whose active count changes after every step (3, 1, 2, ...),
             * as --adapt-threads may do while a sequence runs. */
            float **ref = calloc((size_t)g.n_seqs, sizeof(float *));
            for (int round = GOLDEN_TSAN ? 2 : 1; ref && round <= 4; round++) {
                const int threads = round < 4 ? round : 3;
                wrk_backend_t *b = golden_backend(s, m, isas[ii], threads);
                if (!b) continue;
                char label[128];
                snprintf(label, sizeof label, "%s %s/%d threads%s", s->cases[ci], isas[ii],
                         threads, round == 4 ? ", cycled" : "");
                cycle_threads = round == 4;
                float worst = golden_check_chunks_ref(b, &g, s->tol, label, ref);
                cycle_threads = 0;
                fprintf(stderr, "  %-18s %-8s %d thr%s: max |dlogit| %.2e over all chunkings\n",
                        s->cases[ci], isas[ii], threads, round == 4 ? " cycled" : "", worst);
                wrk_backend_destroy(b);
            }
            if (ref) golden_ref_free(ref, g.n_seqs);
            free(ref);
        }
        wrk_model_free(m);
        golden_free(&g);
    }
}

void golden_test_ragged(const golden_suite_t *s)
{
    for (int ci = 0; ci < s->n_cases; ci++) {
        golden_t g;
        if (golden_load(s->family, s->cases[ci], &g)) continue;
        wrk_model_t *m = golden_model(g.dir);
        wrk_backend_t *b = m ? golden_backend(s, m, NULL, 2) : NULL;
        if (!b) {
            wrk_model_free(m);
            golden_free(&g);
            continue;
        }
        char err[512];
        const int V = g.V, ns = g.n_seqs;
        int pos[GOLDEN_MAX_SEQS] = {0};
        float *out[GOLDEN_MAX_SEQS];
        for (int i = 0; i < ns; i++) {
            out[i] = calloc((size_t)g.seqs[i].n * V, sizeof(float));
            wrk_state_reset(b, i + 1);
        }
        for (int step = 0; step < 64; step++) {
            wrk_seq_t batch[GOLDEN_MAX_SEQS];
            int nb = 0;
            for (int i = ns - 1; i >= 0; i--) {
                const golden_seq_t *q = &g.seqs[i];
                int want = s->ragged_pattern[(step + i) % 8];
                int len = q->n - pos[i] < want ? q->n - pos[i] : want;
                if (len <= 0) continue;
                int mode = (step + i) % 3;
                int nl = mode == 0 ? 0 : mode == 1 || !s->ragged_last_row ? len : 1;
                batch[nb++] = (wrk_seq_t){.slot = i + 1,
                                          .n_tokens = len,
                                          .tokens = q->tokens + pos[i],
                                          .n_logits = nl,
                                          .logits = out[i] + (size_t)(pos[i] + len - nl) * V};
                /* Rows not asked for: copy the golden so only computed rows are compared. */
                memcpy(out[i] + (size_t)pos[i] * V, q->logits + (size_t)pos[i] * V,
                       (size_t)(len - nl) * V * sizeof(float));
                pos[i] += len;
            }
            if (!nb) break;
            int rc = wrk_step(b, batch, nb, err, sizeof err);
            CHECK_MSG(rc == 0, "%s", err);
        }
        float worst = 0.f;
        for (int i = 0; i < ns; i++) {
            float d = golden_max_diff(out[i], g.seqs[i].logits, (size_t)g.seqs[i].n * V);
            CHECK_MSG(d <= s->tol, "%s ragged %s: max diff %g", s->cases[ci], g.seqs[i].name, d);
            if (!(d <= worst)) worst = d;
            free(out[i]);
        }
        fprintf(stderr, "  %-18s ragged: max |dlogit| %.2e\n", s->cases[ci], worst);
        wrk_backend_destroy(b);
        wrk_model_free(m);
        golden_free(&g);
    }
}

int golden_greedy(const golden_suite_t *s, const char *model_dir, const golden_t *g, float *worst,
                  int *mismatch_at)
{
    char err[512];
    wrk_model_t *m = golden_model(model_dir);
    wrk_backend_t *b = m ? golden_backend(s, m, NULL, 2) : NULL;
    if (!b) {
        wrk_model_free(m);
        return -1;
    }
    const int V = g->V;
    float *row = malloc((size_t)V * sizeof(float));
    wrk_seq_t q = {
        .slot = 3, .n_tokens = g->n_prompt, .tokens = g->greedy, .n_logits = 1, .logits = row};
    *worst = 0.f;
    *mismatch_at = -1;
    int rc = wrk_step(b, &q, 1, err, sizeof err);
    for (int i = 0; i < g->n_gen && rc == 0; i++) {
        int pos = g->n_prompt + i - 1;
        if (g->greedy_logits) {
            float d = golden_max_diff(row, g->greedy_logits + (size_t)pos * V, (size_t)V);
            if (!(d <= *worst)) *worst = d;
        }
        int32_t tok = golden_argmax(row, V);
        if (tok != g->greedy[g->n_prompt + i] && *mismatch_at < 0) *mismatch_at = i;
        q = (wrk_seq_t){.slot = 3, .n_tokens = 1, .tokens = &tok, .n_logits = 1, .logits = row};
        rc = wrk_step(b, &q, 1, err, sizeof err);
    }
    CHECK_MSG(rc == 0, "%s", err);
    free(row);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    return 0;
}

void golden_test_greedy(const golden_suite_t *s)
{
    for (int ci = 0; ci < s->n_cases; ci++) {
        golden_t g;
        if (golden_load(s->family, s->cases[ci], &g)) continue;
        float worst;
        int mis;
        CHECK(g.n_gen == 32 && g.greedy_logits);
        if (golden_greedy(s, g.dir, &g, &worst, &mis) == 0) {
            CHECK_MSG(mis < 0, "%s: greedy token %d differs", s->cases[ci], mis);
            CHECK_MSG(worst <= s->tol, "%s: greedy logits max diff %g", s->cases[ci], worst);
            fprintf(stderr, "  %-18s greedy: %d tokens, max |dlogit| %.2e\n", s->cases[ci], g.n_gen,
                    worst);
        }
        golden_free(&g);
    }
}

void golden_test_quantized(const golden_suite_t *s, const char *golden_case, float tol_q8,
                           float tol_q4)
{
    static const char *isas[] = {"portable", "avx2", "avx512"};
    static const char *fmts[] = {"q8", "q4"};
    const float tols[] = {tol_q8, tol_q4};
    golden_t g;
    if (golden_load(s->family, golden_case, &g)) {
        CHECK(0);
        return;
    }
    uint64_t fps[3] = {0, 0, 0};
    wrk_model_t *m0 = golden_model(g.dir);
    if (m0) fps[2] = wrk_model_info(m0)->fingerprint;
    wrk_model_free(m0);
    for (int fi = 0; fi < 2; fi++) {
        golden_suite_t sq = *s;
        sq.opts.weights = fmts[fi];
        wrk_model_t *m = golden_model(g.dir);
        if (!m) continue;
        float worst = 0.f;
        for (int ii = 0; ii < 3; ii++) {
            if (!wrk_kern_select(isas[ii])) continue;
            wrk_backend_t *b = golden_backend(&sq, m, isas[ii], 2);
            if (!b) continue;
            char label[128];
            snprintf(label, sizeof label, "%s --weights %s %s", golden_case, fmts[fi], isas[ii]);
            float d = golden_check_chunks(b, &g, tols[fi], label);
            if (!(d <= worst)) worst = d;
            wrk_backend_destroy(b);
        }
        fprintf(stderr, "  %-18s --weights %s: max |dlogit| %.3e vs fp32 goldens (bound %.3g)\n",
                golden_case, fmts[fi], worst, tols[fi]);
        fps[fi] = wrk_model_info(m)->fingerprint;
        /* the model is packed as fmts[fi]: a native backend on it is refused */
        char err[512] = "";
        wrk_backend_t *b = NULL;
        golden_suite_t sn = *s;
        sn.opts.weights = "native";
        CHECK(wrk_cpu_backend_create(m, &sn.opts, &b, err, sizeof err) == RCD_EINVAL);
        CHECK_MSG(strstr(err, "already packed with --weights"), "%s", err);
        wrk_model_free(m);
    }
    CHECK(fps[0] != fps[2] && fps[1] != fps[2] && fps[0] != fps[1]);
    golden_free(&g);
}

static void bf16_matmul_mode(const golden_suite_t *s, const char *golden_case,
                             const char *model_case, float tol, const char *mode, const char *isa)
{
    golden_t g;
    if (golden_load(s->family, golden_case, &g)) {
        CHECK(0);
        return;
    }
    char dir[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(dir, sizeof dir, "%s/%s/%s", golden_root(), s->family, model_case) == 0);
    golden_suite_t sb = *s;
    sb.opts.matmul = mode;
    wrk_model_t *m = golden_model(dir);
    float **ref = calloc((size_t)g.n_seqs, sizeof(float *)); /* 1 and 2 threads: bitwise */
    for (int threads = 1; m && ref && threads <= 2; threads++) {
        wrk_backend_t *b = golden_backend(&sb, m, NULL, threads);
        if (!b) continue;
        CHECK(strcmp(wrk_backend_isa(b), isa) == 0);
        char label[160];
        snprintf(label, sizeof label, "%s %s matmul/%d threads", model_case, isa, threads);
        float worst = golden_check_chunks_ref(b, &g, tol, label, ref);
        fprintf(stderr, "  %s, %s matmul, %d thr: max |dlogit| %.2e vs %s goldens\n", model_case,
                isa, threads, worst, golden_case);
        wrk_backend_destroy(b);
    }
    if (ref) golden_ref_free(ref, g.n_seqs);
    free(ref);
    /* Greedy ids, teacher-forced: near-ties may flip under the rounding, so where this picks
     * another token than the golden, the golden's token must be within 2 tol of the top in
     * this row (what |dlogit| <= tol allows), and the rows within tol where they exist. */
    wrk_backend_t *b = m && g.n_gen > 0 ? golden_backend(&sb, m, NULL, 2) : NULL;
    float *row = malloc((size_t)g.V * sizeof(float));
    char err[512];
    int flips = 0;
    float margin = 0.f, worst = 0.f;
    for (int i = -1; b && i < g.n_gen - 1; i++) {
        const int pos = g.n_prompt + i; /* the row after the tokens fed so far */
        wrk_seq_t q = {.slot = 1,
                       .n_tokens = i < 0 ? g.n_prompt : 1,
                       .tokens = i < 0 ? g.greedy : &g.greedy[pos],
                       .n_logits = 1,
                       .logits = row};
        if (i < 0) wrk_state_reset(b, 1);
        int rc = wrk_step(b, &q, 1, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
        if (rc) break;
        const int want = g.greedy[pos + 1], got = golden_argmax(row, g.V);
        if (got != want) {
            flips++;
            if (row[got] - row[want] > margin) margin = row[got] - row[want];
        }
        if (g.greedy_logits) {
            float d = golden_max_diff(row, g.greedy_logits + (size_t)pos * g.V, (size_t)g.V);
            if (!(d <= worst)) worst = d;
        }
    }
    CHECK_MSG(margin <= 2 * tol, "%s %s matmul: a greedy token flipped by %g", model_case, isa,
              margin);
    CHECK_MSG(worst <= tol, "%s %s matmul: greedy logits max diff %g", model_case, isa, worst);
    if (b)
        fprintf(stderr, "  %s, %s matmul: %d greedy tokens, %d near-tie flips (margin %.2e)\n",
                model_case, isa, g.n_gen, flips, margin);
    free(row);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

void golden_test_bf16_matmul(const golden_suite_t *s, const char *golden_case,
                             const char *model_case, float tol)
{
    /* "bf16" as the daemon picks it (AMX where present), then the AVX512_BF16 path forced
     * where that is another kernel: both within the same tol. */
    const char *why = "";
    const wrk_kern_t *k = wrk_kern_for(NULL, "bf16", &why);
    if (!k) {
        fprintf(stderr, "  skip: bf16 matmul (%s)\n", why);
        return;
    }
    bf16_matmul_mode(s, golden_case, model_case, tol, "bf16", k->isa);
    const wrk_kern_t *dp = wrk_kern_for(NULL, "bf16-avx512", &why);
    if (!dp)
        fprintf(stderr, "  skip: bf16-avx512 matmul (%s)\n", why);
    else if (dp != k)
        bf16_matmul_mode(s, golden_case, model_case, tol, "bf16-avx512", dp->isa);
}

float golden_run_variant(const golden_suite_t *s, const char *name, int which,
                         golden_mutate_fn mutate)
{
    golden_t g;
    char err[512];
    float d = -1.f;
    if (golden_load(s->family, name, &g)) return d;
    wrk_model_t *m = NULL;
    if (wrk_model_load(g.dir, &m, err, sizeof err) == 0) {
        if (mutate(m, which)) {
            wrk_backend_t *b = golden_backend(s, m, NULL, 1);
            d = golden_run_chunked(b, &g.seqs[g.n_seqs - 1], g.V, 8);
            wrk_backend_destroy(b);
        }
        wrk_model_free(m);
    }
    golden_free(&g);
    return d;
}

void golden_test_discriminate(const golden_suite_t *s, const char *const *what, int n,
                              golden_mutate_fn mutate, const float *min_diff)
{
    for (int w = 0; w < n; w++) {
        float best = -1.f;
        const char *where = "";
        for (int ci = 0; ci < s->n_cases; ci++) {
            float d = golden_run_variant(s, s->cases[ci], w, mutate);
            if (d > best) {
                best = d;
                where = s->cases[ci];
            }
        }
        fprintf(stderr, "  %s: max |dlogit| %.2e (%s)\n", what[w], best, where);
        CHECK_MSG(best > (min_diff ? min_diff[w] : 100 * s->tol), "%s: %g", what[w], best);
    }
}

void golden_check_state_layout(const wrk_model_info_t *mi)
{
    size_t sum = 0;
    for (int i = 0; i < mi->n_state_tensors; i++) {
        CHECK(mi->state_tensors[i].offset == sum);
        sum += mi->state_tensors[i].bytes;
    }
    CHECK(sum == mi->state_bytes);
}

void golden_check_resume(wrk_backend_t *b, int slot, const golden_seq_t *q, int V, int cut,
                         float tol)
{
    char err[512];
    float *out = malloc((size_t)(q->n - cut) * V * sizeof(float));
    wrk_seq_t s = {.slot = slot,
                   .n_tokens = q->n - cut,
                   .tokens = q->tokens + cut,
                   .n_logits = q->n - cut,
                   .logits = out};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    float d = golden_max_diff(out, q->logits + (size_t)cut * V, (size_t)(q->n - cut) * V);
    CHECK_MSG(d <= tol, "slot %d resumed after %d tokens: max diff %g", slot, cut, d);
    free(out);
}

void golden_check_state_roundtrip(wrk_backend_t *b, const golden_seq_t *q, int V, int cut,
                                  float tol, void *blob)
{
    char err[512];
    const size_t sb = wrk_model_info(wrk_backend_model(b))->state_bytes;
    wrk_seq_t s = {.slot = 0, .n_tokens = cut, .tokens = q->tokens, .n_logits = 0};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    CHECK(wrk_state_read_n(b, 0, blob, sb, NULL) == 0);
    wrk_state_reset(b, 0); /* the original is gone; only the blob remains */
    CHECK(wrk_state_write_n(b, 5, blob, sb) == 0);
    CHECK(wrk_state_copy(b, 6, 5) == 0);
    for (int slot = 5; slot <= 6; slot++)
        golden_check_resume(b, slot, q, V, cut, tol);
}

void golden_check_kv_state_roundtrip(const golden_suite_t *s, const wrk_model_t *m,
                                     const golden_seq_t *q, int V, int cut)
{
    char err[512];
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->n_state_tensors > 0);
    if (mi->n_state_tensors <= 0) return;
    const wrk_state_tensor_t *last = &mi->state_tensors[mi->n_state_tensors - 1];
    CHECK(strcmp(last->name, "kv.n_tokens") == 0 && last->bytes == 8);
    golden_check_state_layout(mi);
    wrk_backend_t *b = golden_backend(s, m, NULL, 2);
    if (!b) return;
    CHECK(wrk_state_bytes(b, 0) == mi->state_bytes);
    wrk_seq_t st = {.slot = 0, .n_tokens = cut, .tokens = q->tokens, .n_logits = 0};
    CHECK(wrk_step(b, &st, 1, err, sizeof err) == 0);
    const size_t n = wrk_state_bytes(b, 0);
    CHECK(n == mi->state_bytes + (size_t)cut * mi->kv_bytes_per_token);
    char *blob = malloc(n + 1);
    size_t len = 0;
    CHECK(wrk_state_read_n(b, 0, blob, n - 1, &len) == RCD_ETOOBIG);
    CHECK(wrk_state_read_n(b, 0, blob, mi->state_bytes, NULL) ==
          RCD_ETOOBIG); /* a fixed-size buffer is too small */
    CHECK(wrk_state_read_n(b, 0, blob + 1, n, &len) == 0 && len == n); /* unaligned too */
    uint64_t count;
    memcpy(&count, blob + 1 + mi->state_bytes - 8, 8);
    CHECK(count == (uint64_t)cut);
    wrk_state_reset(b, 0); /* the original is gone; only the blob remains */
    CHECK(wrk_state_bytes(b, 0) == mi->state_bytes);
    CHECK(wrk_state_write_n(b, 5, blob + 1, n - 4) == RCD_EFORMAT);           /* length disagrees */
    CHECK(wrk_state_write_n(b, 5, blob + 1, mi->state_bytes) == RCD_EFORMAT); /* count > 0 */
    CHECK(wrk_state_write_n(b, 5, blob + 1, n) == 0);
    CHECK(wrk_state_copy(b, 6, 5) == 0);
    CHECK(wrk_state_bytes(b, 6) == n);
    for (int slot = 5; slot <= 6; slot++)
        golden_check_resume(b, slot, q, V, cut, s->tol);
    /* A fresh state goes through the fixed-size API (no positions yet). */
    wrk_state_reset(b, 7);
    CHECK(wrk_state_read_n(b, 7, blob, mi->state_bytes, NULL) == 0);
    CHECK(wrk_state_write_n(b, 4, blob, mi->state_bytes) == 0);
    free(blob);
    wrk_backend_destroy(b);
}

int golden_load_edited(const char *family, const char *name, const char *from, const char *to,
                       char *err, size_t errlen)
{
    char src[RCD_PATH_MAX], tmpl[] = "/tmp/rcd_golden_test_XXXXXX", path[700];
    int rc = -1;
    CHECK(rcd_path_fmt(src, sizeof src, "%s/%s/%s/config.json", golden_root(), family, name) == 0);
    char *cfg = rcd_test_read_file(src, NULL);
    CHECK(rcd_path_fmt(src, sizeof src, "%s/%s/%s/model.safetensors", golden_root(), family,
                       name) == 0);
    size_t wlen = 0;
    char *w = rcd_test_read_file(src, &wlen);
    char *at = cfg ? strstr(cfg, from) : NULL;
    if (!cfg || !w || !at || !mkdtemp(tmpl)) {
        CHECK_MSG(0, "cannot prepare an edited copy (%s)", from);
        goto cleanup;
    }
    CHECK(rcd_path_fmt(path, sizeof path, "%s/config.json", tmpl) == 0);
    FILE *f = fopen(path, "wb");
    if (f) {
        fprintf(f, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from));
        fclose(f);
    }
    CHECK(rcd_path_fmt(path, sizeof path, "%s/model.safetensors", tmpl) == 0);
    f = fopen(path, "wb");
    if (f) {
        fwrite(w, 1, wlen, f);
        fclose(f);
    }
    wrk_model_t *m = NULL;
    rc = wrk_model_load(tmpl, &m, err, errlen);
    wrk_model_free(m);
    unlink(path);
    CHECK(rcd_path_fmt(path, sizeof path, "%s/config.json", tmpl) == 0);
    unlink(path);
    rmdir(tmpl);
cleanup:
    free(cfg);
    free(w);
    return rc;
}

void golden_test_edits(const golden_suite_t *s, const golden_edit_t *edits, int n)
{
    for (int i = 0; i < n; i++) {
        const golden_edit_t *e = &edits[i];
        char err[1024] = "";
        const int rc = golden_load_edited(s->family, e->name, e->from, e->to, err, sizeof err);
        bool ok = e->rc == GOLDEN_EDIT_FAILS ? rc != 0 : rc == e->rc;
        for (int k = 0; k < 3; k++)
            if (e->want[k] && !strstr(err, e->want[k])) ok = false;
        CHECK_MSG(ok, "%s: %s -> %s: rc %d: %s", e->name, e->from, e->to, rc, err);
    }
}

void golden_test_refusals(golden_parse_fn parse, const golden_refusal_t *r, int n)
{
    for (int i = 0; i < n; i++) {
        char err[512] = "";
        const int rc = parse(r[i].json, err, sizeof err);
        CHECK_MSG(rc == r[i].rc && (!r[i].field || strstr(err, r[i].field)),
                  "case %d (%s): rc %d: %s", i, r[i].json, rc, err);
    }
}
