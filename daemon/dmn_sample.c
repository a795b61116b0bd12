/* daemon: sampling. Runs on the loop thread, once per sequence per step: plain greedy is one
 * vectorized pass over the logits; the rest costs a sort of the vocabulary. xoshiro256** seeded through splitmix64 makes a seed reproducible. */
#include "daemon/dmn_sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

int dmn_sampler_init(dmn_sampler_t *s, const dmn_sampling_t *p, int vocab)
{
    memset(s, 0, sizeof(*s));
    s->p = *p;
    s->vocab = vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix(&x);
    s->counts = calloc((size_t)vocab, sizeof(*s->counts));
    s->seen = calloc((size_t)vocab, 1);
    s->work = malloc((size_t)vocab * sizeof(*s->work));
    s->idx = malloc((size_t)vocab * sizeof(*s->idx));
    if (!s->counts || !s->seen || !s->work || !s->idx) {
        dmn_sampler_free(s);
        return RCD_ENOMEM;
    }
    return 0;
}

void dmn_sampler_free(dmn_sampler_t *s)
{
    free(s->counts);
    free(s->seen);
    free(s->work);
    free(s->idx);
    memset(s, 0, sizeof(*s));
}

void dmn_sampler_seen(dmn_sampler_t *s, int32_t id)
{
    if (id >= 0 && id < s->vocab) s->seen[id] = 1;
}

void dmn_sampler_accept(dmn_sampler_t *s, int32_t id)
{
    if (id >= 0 && id < s->vocab) {
        s->seen[id] = 1;
        s->counts[id]++;
    }
}

static const float *g_sort_keys; /* qsort has no context argument; loop thread only */

static int by_desc(const void *a, const void *b)
{
    float x = g_sort_keys[*(const int32_t *)a], y = g_sort_keys[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Greedy's choice: the lowest id of the largest finite value (0 when none is finite, as when
 * every logit is -inf). Sixteen independent lanes, so the compiler vectorizes the pass over a
 * 50k vocabulary (the loop thread runs one per sequence per step). */
static int32_t argmax_finite(const float *w, int V)
{
    float m[16];
    for (int j = 0; j < 16; j++)
        m[j] = -INFINITY;
    int i = 0;
    for (; i + 16 <= V; i += 16)
        for (int j = 0; j < 16; j++) {
            float l = w[i + j];
            m[j] = l > m[j] && l < INFINITY ? l : m[j]; /* NaN and +inf never win */
        }
    float best = -INFINITY;
    for (int j = 0; j < 16; j++)
        best = m[j] > best ? m[j] : best;
    for (; i < V; i++)
        best = w[i] > best && w[i] < INFINITY ? w[i] : best;
    if (best == -INFINITY) return 0;
    for (i = 0; i < V; i++)
        if (w[i] == best) return i;
    return 0;
}

/* The distribution dmn_sample draws from: its kept ids idx[0, *n) with unnormalized
 * probabilities w[idx[i]] summing to *sum; returns -1, or the token itself when the choice is
 * certain (greedy, nothing finite). */
static int32_t dist(dmn_sampler_t *s, const float *logits, int *n_out, double *sum_out)
{
    const dmn_sampling_t *p = &s->p;
    int V = s->vocab;
    float *w = s->work;
    if (p->temperature <= 0.0f && p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f)
        return argmax_finite(logits, V); /* plain greedy: nothing to adjust */
    for (int i = 0; i < V; i++) {
        float l = logits[i];
        if (!isfinite(l)) l = -INFINITY;
        if (s->seen[i] && p->repetition_penalty != 1.0f)
            l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        if (s->counts[i]) l -= p->presence_penalty + p->frequency_penalty * (float)s->counts[i];
        w[i] = l;
    }
    if (p->temperature <= 0.0f) return argmax_finite(w, V); /* greedy: lowest id wins ties */
    int n = V;
    for (int i = 0; i < V; i++)
        s->idx[i] = i;
    g_sort_keys = w;
    int k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    qsort(s->idx, (size_t)V, sizeof(int32_t), by_desc);
    n = k;
    float mx = w[s->idx[0]];
    if (!isfinite(mx)) return s->idx[0];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float e = expf((w[s->idx[i]] - mx) / p->temperature);
        w[s->idx[i]] = e; /* w now holds unnormalized probabilities of the kept ids */
        sum += e;
    }
    if (p->min_p > 0.0f) {
        double cut = p->min_p * w[s->idx[0]];
        int m = 1;
        while (m < n && w[s->idx[m]] >= cut)
            m++;
        n = m;
    }
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        double tot = 0;
        for (int i = 0; i < n; i++)
            tot += w[s->idx[i]];
        double acc = 0;
        int m = 0;
        while (m < n) {
            acc += w[s->idx[m]];
            m++;
            if (acc >= p->top_p * tot) break;
        }
        n = m;
    }
    sum = 0;
    for (int i = 0; i < n; i++)
        sum += w[s->idx[i]];
    *n_out = n;
    *sum_out = sum;
    return -1;
}

static double uniform(dmn_sampler_t *s)
{
    return (double)(next_u64(s->rng) >> 11) * (1.0 / 9007199254740992.0);
}

int32_t dmn_sample(dmn_sampler_t *s, const float *logits)
{
    int n = 0;
    double sum = 0;
    int32_t t = dist(s, logits, &n, &sum);
    if (t >= 0) return t;
    const float *w = s->work;
    double u = uniform(s) * sum;
    double acc = 0;
    for (int i = 0; i < n; i++) {
        acc += w[s->idx[i]];
        if (u < acc) return s->idx[i];
    }
    return s->idx[n - 1];
}

int32_t dmn_sample_spec(dmn_sampler_t *s, const float *logits, int32_t draft, const float *q)
{
    if (s->p.temperature <= 0.0f || !q || draft < 0 || draft >= s->vocab)
        return dmn_sample(s, logits);
    int n = 0;
    double sum = 0;
    int32_t t = dist(s, logits, &n, &sum);
    if (t >= 0) return t;
    const float *w = s->work;
    double px = 0;
    for (int i = 0; i < n; i++)
        if (s->idx[i] == draft) px = w[draft] / sum;
    double qx = q[draft];
    if (uniform(s) * qx < px) return draft; /* accept with probability min(1, p / q) */
    double rsum = 0; /* rejected: the residual norm(max(0, p - q)), over p's kept ids */
    for (int i = 0; i < n; i++) {
        double r = w[s->idx[i]] / sum - q[s->idx[i]];
        rsum += r > 0 ? r : 0;
    }
    double u = uniform(s), acc = 0;
    if (!(rsum > 0)) { /* p and q agree: draw from p */
        u *= sum;
        for (int i = 0; i < n; i++) {
            acc += w[s->idx[i]];
            if (u < acc) return s->idx[i];
        }
        return s->idx[n - 1];
    }
    u *= rsum;
    int32_t last = s->idx[0];
    for (int i = 0; i < n; i++) {
        double r = w[s->idx[i]] / sum - q[s->idx[i]];
        if (!(r > 0)) continue;
        last = s->idx[i];
        acc += r;
        if (u < acc) return last;
    }
    return last;
}

float dmn_logprobs(dmn_sampler_t *s, const float *logits, int32_t id, int n, int32_t *top_ids,
                   float *top_lp)
{
    int V = s->vocab;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    float lse = mx + (float)log(sum);
    for (int j = 0; j < n; j++) { /* n is small: repeated selection */
        int best = -1;
        for (int i = 0; i < V; i++) {
            bool taken = false;
            for (int q = 0; q < j; q++)
                taken |= top_ids[q] == i;
            if (!taken && (best < 0 || logits[i] > logits[best])) best = i;
        }
        top_ids[j] = best;
        top_lp[j] = logits[best] - lse;
    }
    return logits[id] - lse;
}
