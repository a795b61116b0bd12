/* Unit tests of the sampler: greedy, seeded reproducibility, top-k/top-p/min-p limits,
 * penalties, log-probabilities. */
#include "daemon/dmn_sample.h"
#include "tests/rcd_test.h"

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

int main(void)
{
    RUN(test_greedy);
    RUN(test_seeded);
    RUN(test_limits);
    RUN(test_logprobs);
    return rcd_test_summary();
}
