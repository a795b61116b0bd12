/* Draft sources (prompt lookup, the test-only oracle), greedy acceptance and the speculation
 * policy; then greedy speculative decoding composed from them and the workers' verify entries
 * (wrk_spec_accept) on the bundled model, a Granite fixture and a RecurrentGemma fixture: the
 * same tokens, the same logit rows and a bit-identical final state as plain greedy decoding,
 * with n-gram drafts and with oracle drafts that are always right, always wrong or random. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_path.h"
#include "engine/eng_draft.h"
#include "tests/support/rcd_test.h"

static int propose(eng_draft_t *d, const int32_t *h, int n, int k, int32_t *out)
{
    return eng_draft_propose(d, h, n, k, out);
}

static void test_ngram(void)
{
    eng_draft_t *d = NULL;
    CHECK(eng_draft_ngram_create(NULL, &d) == 0 && d);
    CHECK(strcmp(d->vt->name, "ngram") == 0);
    int32_t out[ENG_DRAFT_MAX + 4];
    /* The last 3 tokens occurred at 0: what followed them, only tokens in the history. */
    const int32_t a[] = {1, 2, 3, 4, 9, 1, 2, 3};
    CHECK(propose(d, a, 8, 3, out) == 3 && out[0] == 4 && out[1] == 9 && out[2] == 1);
    CHECK(propose(d, a, 8, 10, out) == 5 && out[4] == 3);
    /* Longest suffix first: "2 3" at 1 (then 9) beats "3" at 5 (then 7). */
    const int32_t b[] = {1, 2, 3, 9, 5, 3, 7, 2, 3};
    CHECK(propose(d, b, 9, 2, out) == 2 && out[0] == 9 && out[1] == 5);
    /* The most recent occurrence followed by k tokens, else the one followed by the most. */
    const int32_t c[] = {1, 2, 5, 1, 2, 6, 1, 2};
    CHECK(propose(d, c, 8, 1, out) == 1 && out[0] == 6);
    CHECK(propose(d, c, 8, 3, out) == 3 && out[0] == 6);
    CHECK(propose(d, c, 8, 5, out) == 5 && out[0] == 5 && out[3] == 6);
    /* Nothing to look up. */
    const int32_t e[] = {1, 2, 3, 4};
    CHECK(propose(d, e, 4, 4, out) == 0);
    CHECK(propose(d, e, 1, 4, out) == 0);
    CHECK(propose(d, c, 8, 0, out) == 0);
    /* k is clamped to ENG_DRAFT_MAX. */
    int32_t rep[64];
    for (int i = 0; i < 64; i++)
        rep[i] = i % 2;
    CHECK(propose(d, rep, 64, 100, out) == ENG_DRAFT_MAX);
    eng_draft_destroy(d);
    /* A window of 5 tokens that leaves the occurrence out, then holds it; n-gram bounds. */
    eng_ngram_opts_t o = {.max_ngram = 2, .min_ngram = 2, .window = 5};
    CHECK(eng_draft_ngram_create(&o, &d) == 0);
    const int32_t f[] = {7, 8, 0, 0, 0, 0, 7, 8};
    CHECK(propose(d, f, 8, 4, out) == 0);
    const int32_t g[] = {7, 8, 1, 7, 8};
    CHECK(propose(d, g, 5, 4, out) == 3 && out[0] == 1);
    const int32_t h1[] = {5, 6, 9, 6}; /* only a 1-gram matches: min_ngram 2 finds nothing */
    CHECK(propose(d, h1, 4, 4, out) == 0);
    eng_draft_destroy(d);
    o = (eng_ngram_opts_t){.max_ngram = 1, .min_ngram = 2};
    CHECK(eng_draft_ngram_create(&o, &d) == RCD_EINVAL && !d);
    o = (eng_ngram_opts_t){.max_ngram = 65};
    CHECK(eng_draft_ngram_create(&o, &d) == RCD_EINVAL);
    o = (eng_ngram_opts_t){.window = -1};
    CHECK(eng_draft_ngram_create(&o, &d) == RCD_EINVAL);
    eng_draft_destroy(NULL);
}

/* The rule as first written (one backward scan per n-gram length, longest first), against
 * which the one-pass lookup is checked on random histories (small vocabularies: many
 * matches, of every length), windows, k and n-gram bounds. */
static int ref_propose(const int32_t *hist, int32_t n_hist, int k, int nmax, int nmin,
                       int32_t window, int32_t *out)
{
    if (k < 1 || n_hist < 2) return 0;
    if (k > ENG_DRAFT_MAX) k = ENG_DRAFT_MAX;
    int32_t lo = n_hist > window ? n_hist - window : 0;
    for (int n = nmax; n >= nmin; n--) {
        if (n >= n_hist - lo) continue;
        const int32_t *suf = hist + n_hist - n;
        int32_t best = -1;
        for (int32_t i = n_hist - n - 1; i >= lo; i--) {
            if (memcmp(hist + i, suf, (size_t)n * sizeof *suf) != 0) continue;
            best = i;
            if (n_hist - (i + n) >= k) break;
        }
        if (best < 0) continue;
        int m = 0;
        for (int32_t j = best + n; j < n_hist && m < k; j++)
            out[m++] = hist[j];
        return m;
    }
    return 0;
}

static void test_ngram_matches_reference(void)
{
    uint64_t x = 12345;
    int32_t h[300], a[ENG_DRAFT_MAX + 1], b[ENG_DRAFT_MAX + 1];
    int bad = 0, found = 0;
    for (int t = 0; t < 20000; t++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int vocab = 2 + (int)(x >> 60), n = 2 + (int)((x >> 40) % 299);
        int nmax = 1 + (int)((x >> 20) % 6), nmin = 1 + (int)((x >> 30) % (uint64_t)nmax);
        int32_t window = (x >> 10) % 3 ? (int32_t)(1 + (x >> 12) % 300) : 0;
        int k = 1 + (int)((x >> 50) % ENG_DRAFT_MAX);
        for (int i = 0; i < n; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            h[i] = (int32_t)((x >> 33) % (uint64_t)vocab);
        }
        eng_ngram_opts_t o = {.max_ngram = nmax, .min_ngram = nmin, .window = window};
        eng_draft_t *d = NULL;
        CHECK(eng_draft_ngram_create(&o, &d) == 0);
        int m = propose(d, h, n, k, a), r = ref_propose(h, n, k, nmax, nmin, window ? window : 8192, b);
        if (m != r || memcmp(a, b, sizeof(int32_t) * (size_t)(m > 0 ? m : 0))) bad++;
        found += m > 0;
        eng_draft_destroy(d);
    }
    CHECK_MSG(bad == 0, "%d of 20000 proposals differ from the reference", bad);
    CHECK(found > 10000); /* most histories had something to propose */
}

static void test_oracle(void)
{
    int32_t truth[40], out[ENG_DRAFT_MAX];
    for (int i = 0; i < 40; i++)
        truth[i] = (i * 7) % 11;
    eng_draft_t *d = NULL;
    CHECK(eng_draft_oracle_create(truth, 40, 11, ENG_ORACLE_RIGHT, 1, &d) == 0);
    CHECK(propose(d, truth, 10, 5, out) == 5);
    for (int j = 0; j < 5; j++)
        CHECK(out[j] == truth[10 + j]);
    CHECK(propose(d, truth, 38, 5, out) == 2); /* nothing past the truth */
    eng_draft_destroy(d);
    CHECK(eng_draft_oracle_create(truth, 40, 11, ENG_ORACLE_WRONG, 1, &d) == 0);
    for (int n = 0; n < 30; n++) {
        CHECK(propose(d, truth, n, 8, out) == 8);
        for (int j = 0; j < 8; j++)
            CHECK(out[j] != truth[n + j] && out[j] >= 0 && out[j] < 11);
    }
    eng_draft_destroy(d);
    int32_t r1[8], r2[8];
    int right = 0, wrong = 0;
    eng_draft_t *d2 = NULL;
    CHECK(eng_draft_oracle_create(truth, 40, 11, ENG_ORACLE_RANDOM, 42, &d) == 0);
    CHECK(eng_draft_oracle_create(truth, 40, 11, ENG_ORACLE_RANDOM, 42, &d2) == 0);
    for (int n = 0; n < 30; n++) {
        CHECK(propose(d, truth, n, 8, r1) == 8 && propose(d2, truth, n, 8, r2) == 8);
        CHECK(memcmp(r1, r2, sizeof r1) == 0); /* same seed, same drafts */
        for (int j = 0; j < 8; j++)
            *(r1[j] == truth[n + j] ? &right : &wrong) += 1;
    }
    CHECK(right > 60 && wrong > 60);
    eng_draft_destroy(d);
    eng_draft_destroy(d2);
    CHECK(eng_draft_oracle_create(truth, 40, 1, ENG_ORACLE_RIGHT, 1, &d) == RCD_EINVAL);
}

static void test_greedy_keep(void)
{
    const int32_t dr[] = {5, 6, 7, 8};
    const int32_t all[] = {5, 6, 7, 8, 9}, none[] = {4, 6, 7, 8, 9}, two[] = {5, 6, 1, 8, 9};
    CHECK(eng_spec_greedy_keep(dr, 4, all) == 5);
    CHECK(eng_spec_greedy_keep(dr, 4, none) == 1);
    CHECK(eng_spec_greedy_keep(dr, 4, two) == 3);
    CHECK(eng_spec_greedy_keep(dr, 0, none) == 1);
}

static void test_policy(void)
{
    eng_spec_policy_t p;
    eng_spec_policy_init(&p, 4, 2);
    CHECK(eng_spec_policy_next(&p, 1) == 4);
    CHECK(eng_spec_policy_next(&p, 3) == 0); /* batch above max_batch: back off */
    eng_spec_policy_update(&p, 4, 1);
    CHECK(eng_spec_policy_next(&p, 1) == 2);
    eng_spec_policy_update(&p, 2, 2);
    CHECK(eng_spec_policy_next(&p, 2) == 3);
    eng_spec_policy_update(&p, 3, 3);
    eng_spec_policy_update(&p, 4, 4);
    CHECK(eng_spec_policy_next(&p, 1) == 4); /* at most k_max */
    for (int i = 0; i < 3; i++)
        eng_spec_policy_update(&p, 1, 0);
    CHECK(eng_spec_policy_next(&p, 1) == 1);
    eng_spec_policy_update(&p, 1, 0); /* the 4th miss in a row: pause */
    for (int i = 0; i < 16; i++)
        CHECK(eng_spec_policy_next(&p, 1) == 0);
    CHECK(eng_spec_policy_next(&p, 1) == 1);
    CHECK(p.verifies == 8 && p.drafted == 4 + 2 + 3 + 4 + 4 * 1 && p.accepted == 1 + 2 + 3 + 4);
    eng_spec_policy_init(&p, 0, 0);
    CHECK(eng_spec_policy_next(&p, 1) == 0);
    eng_spec_policy_init(&p, 99, 0);
    CHECK(p.k_max == ENG_DRAFT_MAX && eng_spec_policy_next(&p, 1000) == ENG_DRAFT_MAX);
}


/* ---- the runner-wide gain check with synthetic timings ----------------------------------- */

/* Runs n steps through the gate: a spec step takes spec_us and emits spec_tok, a plain one
 * plain_us and 1 token; noise (0..1) scales every other step's time by 1 +- noise. Returns the
 * spec steps run. */
static int gate_run(eng_spec_gate_t *g, int n, double spec_us, double spec_tok, double plain_us,
                    double noise)
{
    int spec = 0;
    for (int i = 0; i < n; i++) {
        bool s = eng_spec_gate_next(g);
        double f = 1.0 + (i % 2 ? noise : -noise);
        eng_spec_gate_observe(g, s, (s ? spec_us : plain_us) * f, s ? spec_tok : 1.0);
        spec += s;
    }
    return spec;
}

static void test_gate(void)
{
    eng_spec_gate_t g;
    /* paying speculation (1.8 tokens for 1.2x a plain step's time) stays on; the baseline is
     * refreshed by one plain step in 16 */
    eng_spec_gate_init(&g);
    int spec = gate_run(&g, 1000, 1200.0, 1.8, 1000.0, 0.0);
    CHECK(g.pauses == 0 && g.paused_steps == 0);
    CHECK(spec > 900 && spec < 1000);
    /* noise (+-25% on alternate steps) around a 1.3x gain does not flap it */
    eng_spec_gate_init(&g);
    gate_run(&g, 2000, 1000.0, 1.3, 1000.0, 0.25);
    CHECK(g.pauses == 0);
    /* losing speculation (1.4 tokens for 2x the time) pauses after min_samples, back-off
     * doubling 16, 32, 64, ... */
    eng_spec_gate_init(&g);
    int steps = 0;
    while (g.pauses == 0 && steps < 1000) {
        bool s = eng_spec_gate_next(&g);
        eng_spec_gate_observe(&g, s, s ? 2000.0 : 1000.0, s ? 1.4 : 1.0);
        steps++;
    }
    CHECK(g.pauses == 1 && g.paused == 16 && g.backoff == 32);
    CHECK(steps < 64); /* the first decision comes after a handful of samples of each kind */
    for (int i = 0; i < 16; i++)
        CHECK(!eng_spec_gate_next(&g));
    CHECK(g.paused_steps == 16);
    CHECK(eng_spec_gate_next(&g)); /* the probe */
    eng_spec_gate_observe(&g, true, 2000.0, 1.4);
    gate_run(&g, 12, 2000.0, 1.4, 1000.0, 0.0); /* probe still losing: 32 next */
    CHECK(g.pauses == 2 && g.backoff == 64 && g.paused > 0);
    gate_run(&g, 5000, 2000.0, 1.4, 1000.0, 0.0); /* stays mostly off, back-off capped */
    CHECK(g.backoff == 1024 && g.paused_steps > 4500);
    /* a later probe that pays resumes and resets the back-off */
    while (g.paused > 0)
        gate_run(&g, 1, 2000.0, 1.4, 1000.0, 0.0);
    spec = gate_run(&g, 500, 900.0, 1.6, 1000.0, 0.0);
    CHECK(g.backoff == g.backoff_min && g.paused == 0 && spec > 450);
    uint64_t pauses = g.pauses;
    gate_run(&g, 1000, 900.0, 1.6, 1000.0, 0.1);
    CHECK(g.pauses == pauses);
    /* plain steps that come anyway (no drafts found) keep the baseline fresh: none is forced;
     * without them one step in probe_every is */
    for (int natural = 0; natural <= 1; natural++) {
        eng_spec_gate_init(&g);
        int forced = 0;
        for (int i = 0; i < 400; i++) {
            bool s = eng_spec_gate_next(&g);
            if (!s && i >= 64) forced++;
            if (s && natural && i % 5 == 0) s = false; /* asked, but no drafts: ran plainly */
            eng_spec_gate_observe(&g, s, s ? 900.0 : 1000.0, s ? 1.6 : 1.0);
        }
        CHECK(g.pauses == 0 && g.n_plain == g.min_samples);
        CHECK(natural ? forced == 0 : forced == (400 - 64) / g.probe_every);
    }
    /* a spec step planned before the pause and measured during it is not counted */
    eng_spec_gate_init(&g);
    g.paused = 3;
    CHECK(!eng_spec_gate_observe(&g, true, 1.0, 5.0) && g.n_spec == 0);
    CHECK(!eng_spec_gate_observe(&g, true, 0.0, 5.0) && !eng_spec_gate_observe(&g, false, -1, 1));
    CHECK(eng_spec_gate_bucket(1) == 0 && eng_spec_gate_bucket(2) == 1 &&
          eng_spec_gate_bucket(4) == 2 && eng_spec_gate_bucket(5) == 3 &&
          eng_spec_gate_bucket(0) == 0 &&
          eng_spec_gate_bucket(100000) == ENG_SPEC_GATE_BUCKETS - 1);
}

/* ---- greedy speculative decoding on a real model --------------------------------------- */

#define N_PROMPT 48
#define N_GEN 64
/* Under a sanitizer (10-30x slower): 24 tokens, n-gram and random oracle drafts only, the
 * two fixtures only (the bundled model runs in spec_test there too). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif
static const int n_gen = SANITIZED ? 24 : N_GEN;
#define N_MAX (N_PROMPT + N_GEN + ENG_DRAFT_MAX + 1)

static int argmax(const float *row, int V)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (row[v] > row[best]) best = v;
    return best;
}

static void *read_state(wrk_backend_t *b, int slot, size_t *len)
{
    const size_t n = wrk_state_bytes(b, slot);
    void *p = malloc(n);
    CHECK(wrk_state_read_n(b, slot, p, n, len) == 0);
    return p;
}

/* Plain greedy: prompt, then n_gen decodes on `slot`; tokens into hist after the prompt and
 * every generated token's logit row into rows. */
static void plain_greedy(wrk_backend_t *b, int slot, int32_t *hist, int n_gen, float *rows, int V)
{
    char err[256];
    wrk_state_reset(b, slot);
    wrk_seq_t s = {.slot = slot, .n_tokens = N_PROMPT - 1, .tokens = hist};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    for (int i = 0; i < n_gen; i++) {
        const int n = N_PROMPT + i; /* tokens known; the last is not fed yet */
        s = (wrk_seq_t){.slot = slot,
                        .n_tokens = 1,
                        .tokens = &hist[n - 1],
                        .n_logits = 1,
                        .logits = rows + (size_t)i * V};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
        hist[n] = argmax(rows + (size_t)i * V, V);
    }
}

/* Speculative greedy with `d`; returns the tokens generated (>= n_gen) and the verifies. */
static int spec_greedy(wrk_backend_t *b, int slot, eng_draft_t *d, int32_t *hist, int n_gen,
                       float *rows, int V, int *verifies, int *steps)
{
    char err[256];
    float *lg = malloc((size_t)(ENG_DRAFT_MAX + 1) * V * sizeof(float));
    eng_spec_policy_t pol;
    eng_spec_policy_init(&pol, 8, 0);
    wrk_state_reset(b, slot);
    wrk_seq_t s = {.slot = slot, .n_tokens = N_PROMPT - 1, .tokens = hist};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    int n = N_PROMPT, gen = 0;
    *verifies = *steps = 0;
    while (gen < n_gen) {
        int32_t tok[ENG_DRAFT_MAX + 1], sampled[ENG_DRAFT_MAX + 1];
        int k = eng_spec_policy_next(&pol, 1);
        tok[0] = hist[n - 1];
        const int m = k ? eng_draft_propose(d, hist, n, k, tok + 1) : 0;
        s = (wrk_seq_t){.slot = slot,
                        .n_tokens = m + 1,
                        .tokens = tok,
                        .n_logits = m + 1,
                        .logits = lg,
                        .verify = m > 0};
        int rc = wrk_step(b, &s, 1, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
        if (rc) break;
        (*steps)++;
        for (int j = 0; j <= m; j++)
            sampled[j] = argmax(lg + (size_t)j * V, V);
        const int keep = eng_spec_greedy_keep(tok + 1, m, sampled);
        if (m) {
            CHECK(wrk_spec_accept(b, slot, keep) == 0);
            eng_spec_policy_update(&pol, m, keep - 1);
            (*verifies)++;
        }
        for (int j = 0; j < keep; j++, gen++, n++) {
            hist[n] = sampled[j];
            memcpy(rows + (size_t)gen * V, lg + (size_t)j * V, (size_t)V * sizeof(float));
        }
    }
    free(lg);
    return gen;
}

static void check_spec_model(const char *dir, const char *label)
{
    char err[512];
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", label, err);
    if (rc) return;
    const int V = wrk_model_info(m)->vocab_size;
    wrk_backend_opts_t o = {.n_threads = 2, .n_slots = 2, .max_step_tokens = 64};
    wrk_backend_t *b = NULL;
    rc = wrk_cpu_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", label, err);
    if (rc) {
        wrk_model_free(m);
        return;
    }
    /* A copy-heavy prompt: a 12-token passage, then it again, and so on. */
    int32_t ref[N_MAX], spec[N_MAX];
    for (int i = 0; i < N_PROMPT; i++)
        ref[i] = i < 12 ? (int32_t)((i * 37 + 11) % V) : ref[i - 12];
    float *ref_rows = malloc((size_t)N_MAX * V * sizeof(float));
    float *spec_rows = malloc((size_t)N_MAX * V * sizeof(float));
    for (int src = 0; src < 4; src++) {
        if (SANITIZED && (src == 1 || src == 2)) continue;
        eng_draft_t *d = NULL;
        memcpy(spec, ref, N_PROMPT * sizeof(int32_t));
        int verifies, steps;
        int gen = 0;
        if (src == 0) {
            CHECK(eng_draft_ngram_create(NULL, &d) == 0);
            gen = spec_greedy(b, 0, d, spec, n_gen, spec_rows, V, &verifies, &steps);
        } else {
            /* The oracle needs the plain continuation first. */
            plain_greedy(b, 1, ref, n_gen + ENG_DRAFT_MAX + 1, ref_rows, V);
            CHECK(eng_draft_oracle_create(ref, N_MAX, V, (eng_oracle_mode_t)(src - 1), 7, &d) == 0);
            gen = spec_greedy(b, 0, d, spec, n_gen, spec_rows, V, &verifies, &steps);
        }
        plain_greedy(b, 1, ref, gen, ref_rows, V);
        CHECK_MSG(memcmp(ref + N_PROMPT, spec + N_PROMPT, (size_t)gen * sizeof(int32_t)) == 0,
                  "%s/%s: tokens differ", label, src ? "oracle" : "ngram");
        CHECK_MSG(memcmp(ref_rows, spec_rows, (size_t)gen * V * sizeof(float)) == 0,
                  "%s/%s: logits differ", label, src ? "oracle" : "ngram");
        size_t l0, l1;
        void *s0 = read_state(b, 0, &l0), *s1 = read_state(b, 1, &l1);
        CHECK_MSG(l0 == l1 && memcmp(s0, s1, l0) == 0, "%s source %d: final state differs", label,
                  src);
        free(s0);
        free(s1);
        static const char *names[] = {"ngram", "oracle-right", "oracle-wrong", "oracle-random"};
        fprintf(stderr, "  %s %s: %d tokens in %d steps (%d verifies)\n", label, names[src], gen,
                steps, verifies);
        if (src == 1) CHECK(steps < gen / 3); /* right drafts: many tokens per step */
        eng_draft_destroy(d);
    }
    free(ref_rows);
    free(spec_rows);
    wrk_backend_destroy(b);
    wrk_model_free(m);
}

static void test_spec_greedy(void)
{
    if (!SANITIZED) check_spec_model(RCD_DEFAULT_MODEL, "bundled");
    check_spec_model(RCD_GOLDEN_DIR "/granite/mha_moe8", "granite");
    check_spec_model(RCD_GOLDEN_DIR "/recurrentgemma/attn_first_w4", "recurrentgemma");
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_ngram);
    RUN(test_ngram_matches_reference);
    RUN(test_oracle);
    RUN(test_greedy_keep);
    RUN(test_policy);
    RUN(test_gate);
    RUN(test_spec_greedy);
    return rcd_test_summary();
}
