/* Unit tests of the sampler: greedy, seeded reproducibility, top-k/top-p/min-p limits,
 * penalties, log-probabilities. */
#include "daemon/dmn_sample.h"
#include "tests/support/rcd_test.h"

#include <math.h>
#include <string.h>

#define V 50

static void fill(float *l)
{
    for (int i = 0; i < V; i++)
        l[i] = (float)((i * 7) % V) / 10.0f; /* argmax at i = 7*k%50 == 49 -> i = 7 */
}

static void test_greedy(void)
{
    float l[V];
    fill(l);
    dmn_sampler_t s;
    dmn_sampling_t p = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    CHECK(dmn_sampler_init(&s, &p, V) == 0);
    CHECK(dmn_sample(&s, l) == 7);
    dmn_sampler_accept(&s, 7);
    s.p.presence_penalty = 2.0f; /* 4.9 - 2 = 2.9 < 4.8 (id 14) */
    CHECK(dmn_sample(&s, l) == 14);
    dmn_sampler_free(&s);
}

/* Plain greedy (the vectorized pass) against a scalar scan, over vocabularies around its
 * 16-wide blocks: NaN and +inf never win, ties go to the lowest id, all non-finite gives 0;
 * the same logits with a penalty that changes nothing (the adjusted path) agree. */
static void test_greedy_edges(void)
{
    static float l[300];
    unsigned seed = 3;
    for (int n = 1; n <= 300; n += 7) {
        for (int r = 0; r < 20; r++) {
            for (int i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                l[i] = (float)((seed >> 16) % 9) - 4.0f; /* many ties */
                if ((seed >> 8) % 11 == 0) l[i] = NAN;
                if ((seed >> 8) % 13 == 0) l[i] = INFINITY;
                if ((seed >> 8) % 17 == 0) l[i] = -INFINITY;
            }
            if (r == 0)
                for (int i = 0; i < n; i++) l[i] = i % 2 ? NAN : INFINITY;
            int want = 0;
            for (int i = 0; i < n; i++) {
                float a = isfinite(l[i]) ? l[i] : -INFINITY, b = isfinite(l[want]) ? l[want] : -INFINITY;
                if (a > b) want = i;
            }
            dmn_sampler_t s;
            dmn_sampling_t p = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
            CHECK(dmn_sampler_init(&s, &p, n) == 0);
            int got = dmn_sample(&s, l);
            s.p.frequency_penalty = 1.0f; /* nothing accepted yet: adjusts nothing */
            int got2 = dmn_sample(&s, l);
            CHECK_MSG(got == want && got2 == want, "n=%d r=%d: %d / %d, want %d", n, r, got, got2,
                      want);
            dmn_sampler_free(&s);
        }
    }
}

static void test_seeded(void)
{
    float l[V];
    fill(l);
    dmn_sampling_t p = {.temperature = 1, .top_p = 1, .repetition_penalty = 1, .seed = 42};
    dmn_sampler_t a, b;
    CHECK(dmn_sampler_init(&a, &p, V) == 0 && dmn_sampler_init(&b, &p, V) == 0);
    int same = 0, distinct = 0, seen[V] = {0};
    for (int i = 0; i < 200; i++) {
        int x = dmn_sample(&a, l), y = dmn_sample(&b, l);
        same += x == y;
        if (!seen[x]++) distinct++;
    }
    CHECK(same == 200);
    CHECK(distinct > 5);
    dmn_sampler_free(&a);
    dmn_sampler_free(&b);
}

static void test_limits(void)
{
    float l[V];
    fill(l);
    dmn_sampling_t p = {
        .temperature = 5, .top_k = 2, .top_p = 1, .repetition_penalty = 1, .seed = 1};
    dmn_sampler_t s;
    CHECK(dmn_sampler_init(&s, &p, V) == 0);
    int bad = 0;
    for (int i = 0; i < 300; i++) {
        int x = dmn_sample(&s, l);
        bad += x != 7 && x != 14;
    }
    CHECK(bad == 0);
    dmn_sampler_free(&s);
    p.top_k = 0;
    p.top_p = 0.01f;
    CHECK(dmn_sampler_init(&s, &p, V) == 0);
    bad = 0;
    for (int i = 0; i < 100; i++)
        bad += dmn_sample(&s, l) != 7;
    CHECK(bad == 0);
    dmn_sampler_free(&s);
    p.top_p = 1;
    p.temperature = 1;
    p.min_p = 0.95f; /* only ids within 5% of the best's probability */
    CHECK(dmn_sampler_init(&s, &p, V) == 0);
    bad = 0;
    for (int i = 0; i < 100; i++)
        bad += dmn_sample(&s, l) != 7;
    CHECK(bad == 0);
    dmn_sampler_free(&s);
}

static void test_logprobs(void)
{
    float l[V];
    fill(l);
    dmn_sampling_t p = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    dmn_sampler_t s;
    CHECK(dmn_sampler_init(&s, &p, V) == 0);
    int32_t ids[3];
    float lps[3];
    float lp = dmn_logprobs(&s, l, 7, 3, ids, lps);
    CHECK(ids[0] == 7 && ids[1] == 14 && ids[2] == 21);
    CHECK(fabsf(lp - lps[0]) < 1e-6f && lps[0] > lps[1] && lp < 0);
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp(dmn_logprobs(&s, l, i, 0, ids, lps));
    CHECK(fabs(sum - 1.0) < 1e-4);
    dmn_sampler_free(&s);
}

/* The speculative rule (dmn_sample_spec): drafts x drawn from a q unlike p, each checked
 * against p's row, give tokens distributed as p (chi-square over p's 5 kept ids at top_k 5;
 * the draft's q puts mass where p has none). The same counts tested against q (what "always
 * accept the draft" would give) fail, so the test can tell the two apart. */
static double chi2(const int *cnt, const double *e, int n_draws)
{
    double x = 0;
    for (int i = 0; i < V; i++) {
        if (e[i] <= 0) {
            if (cnt[i]) return INFINITY; /* a token the distribution never gives */
            continue;
        }
        double d = cnt[i] - e[i] * n_draws;
        x += d * d / (e[i] * n_draws);
    }
    return x;
}

static void test_spec_rule(void)
{
    float l[V];
    fill(l);
    dmn_sampling_t sp = {.temperature = 1.0f, .top_k = 5, .top_p = 1.0f, .seed = 7};
    dmn_sampler_t s;
    CHECK(dmn_sampler_init(&s, &sp, V) == 0);
    /* p: softmax over the 5 largest logits (ids 7, 14, 21, 28, 35 hold 4.9 .. 4.5) */
    double p[V] = {0}, qd[V] = {0}, z = 0;
    for (int i = 0; i < V; i++)
        if (l[i] >= 4.45f) z += exp(l[i]);
    for (int i = 0; i < V; i++)
        if (l[i] >= 4.45f) p[i] = exp(l[i]) / z;
    /* q: uniform over ids 0..7 (7 is p's favourite; 0..6 are outside p's support) plus 21 */
    float q[V] = {0};
    for (int i = 0; i < 8; i++)
        q[i] = 1.0f / 9;
    q[21] = 1.0f / 9;
    for (int i = 0; i < V; i++)
        qd[i] = q[i];
    uint64_t x = 12345;
    int cnt[V] = {0}, n = 20000, accepted = 0;
    for (int d = 0; d < n; d++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int r = (int)((x >> 33) % 9), draft = r < 8 ? r : 21;
        int32_t t = dmn_sample_spec(&s, l, draft, q);
        CHECK(t >= 0 && t < V);
        cnt[t]++;
        accepted += t == draft;
    }
    double c = chi2(cnt, p, n); /* 4 degrees of freedom: 30 is p < 1e-5 */
    CHECK_MSG(c < 30.0, "chi-square %.1f against p", c);
    CHECK_MSG(chi2(cnt, qd, n) > 1000.0, "the counts also fit q");
    CHECK(accepted > 0 && accepted < n);
    /* greedy: the argmax, whatever the draft */
    dmn_sampler_free(&s);
    sp.temperature = 0;
    CHECK(dmn_sampler_init(&s, &sp, V) == 0);
    CHECK(dmn_sample_spec(&s, l, 3, q) == 7);
    dmn_sampler_free(&s);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_greedy);
    RUN(test_greedy_edges);
    RUN(test_seeded);
    RUN(test_spec_rule);
    RUN(test_limits);
    RUN(test_logprobs);
    return rcd_test_summary();
}
