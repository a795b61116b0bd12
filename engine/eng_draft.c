/* engine: draft sources and the speculation policy (eng_draft.h). */
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "engine/eng_draft.h"

void eng_draft_destroy(eng_draft_t *d)
{
    if (d) d->vt->destroy(d);
}

static void free_draft(eng_draft_t *d)
{
    free(d);
}

/* ---- prompt lookup ------------------------------------------------------------------------ */

typedef struct ngram {
    eng_draft_t base;
    eng_ngram_opts_t o;
} ngram_t;

/* The rule (eng_draft.h): the largest n in [min_ngram, max_ngram] whose last n tokens occur
 * earlier, starting at or after lo; of those occurrences, the most recent one followed by at
 * least k tokens, else the one followed by the most (the earliest). An occurrence of length n
 * ending at e (hist[e] == the last token) is followed by n_hist - 1 - e tokens, whatever n, and
 * proposes hist[e + 1 ...]: so one backward pass over the window finds, for every n at once,
 * the most recent e with at least k followers and the earliest e, where a scan per n (from
 * max_ngram down) would cost up to max_ngram passes (the session's history makes windows of
 * thousands of tokens). */
static int ngram_propose(eng_draft_t *d, const int32_t *hist, int32_t n_hist, int k, int32_t *out)
{
    const ngram_t *g = (const ngram_t *)d;
    if (k < 1 || !hist || n_hist < 2) return 0;
    if (k > ENG_DRAFT_MAX) k = ENG_DRAFT_MAX;
    const int32_t lo = n_hist > g->o.window ? n_hist - g->o.window : 0;
    const int nmax = g->o.max_ngram, nmin = g->o.min_ngram;
    const int32_t last = hist[n_hist - 1], k_end = n_hist - 1 - k; /* e <= k_end: k followers */
    int32_t recent[65], earliest[65]; /* per n: the chosen ends, -1: none yet */
    for (int n = 0; n <= nmax; n++)
        recent[n] = earliest[n] = -1;
    int best_n = 0; /* the largest n with an occurrence so far */
    for (int32_t e = n_hist - 2; e >= lo; e--) {
        if (hist[e] != last) continue;
        int len = 1; /* how many tokens match backwards from e, within [lo, e] */
        while (len < nmax && e - len >= lo && hist[e - len] == hist[n_hist - 1 - len])
            len++;
        if (len < nmin) continue;
        for (int n = nmin; n <= len; n++) {
            if (recent[n] < 0 && e <= k_end) recent[n] = e;
            earliest[n] = e;
        }
        if (len > best_n) best_n = len;
        if (best_n == nmax && recent[nmax] >= 0) break; /* nothing can beat it */
    }
    if (best_n < nmin) return 0;
    const int32_t e = recent[best_n] >= 0 ? recent[best_n] : earliest[best_n];
    int m = 0;
    for (int32_t j = e + 1; j < n_hist && m < k; j++)
        out[m++] = hist[j];
    return m;
}

static const eng_draft_i ngram_vt = {
    .name = "ngram", .propose = ngram_propose, .destroy = free_draft};

int eng_draft_ngram_create(const eng_ngram_opts_t *opts, eng_draft_t **out)
{
    eng_ngram_opts_t o = opts ? *opts : (eng_ngram_opts_t){0};
    *out = NULL;
    if (o.max_ngram < 0 || o.min_ngram < 0 || o.window < 0) return RCD_EINVAL;
    if (!o.max_ngram) o.max_ngram = 4;
    if (!o.min_ngram) o.min_ngram = 1;
    if (!o.window) o.window = 8192;
    if (o.min_ngram > o.max_ngram || o.max_ngram > 64) return RCD_EINVAL;
    ngram_t *g = calloc(1, sizeof *g);
    if (!g) return RCD_ENOMEM;
    g->base.vt = &ngram_vt;
    g->o = o;
    *out = &g->base;
    return 0;
}

/* ---- test-only oracle --------------------------------------------------------------------- */

typedef struct oracle {
    eng_draft_t base;
    const int32_t *truth;
    int32_t n_truth, vocab;
    eng_oracle_mode_t mode;
    uint64_t rng;
} oracle_t;

static uint32_t next_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33);
}

static int oracle_propose(eng_draft_t *d, const int32_t *hist, int32_t n_hist, int k, int32_t *out)
{
    oracle_t *o = (oracle_t *)d;
    (void)hist;
    if (k > ENG_DRAFT_MAX) k = ENG_DRAFT_MAX;
    int m = 0;
    for (; m < k && n_hist + m < o->n_truth; m++) {
        const int32_t t = o->truth[n_hist + m];
        bool right = o->mode == ENG_ORACLE_RIGHT ||
                     (o->mode == ENG_ORACLE_RANDOM && (next_rand(&o->rng) & 1));
        out[m] =
            right ? t
                  : (int32_t)((t + 1 + (int32_t)(next_rand(&o->rng) % (uint32_t)(o->vocab - 1))) %
                              o->vocab);
    }
    return m;
}

static const eng_draft_i oracle_vt = {
    .name = "oracle", .propose = oracle_propose, .destroy = free_draft};

int eng_draft_oracle_create(const int32_t *truth, int32_t n_truth, int32_t vocab,
                            eng_oracle_mode_t mode, uint64_t seed, eng_draft_t **out)
{
    *out = NULL;
    if (!truth || n_truth < 0 || vocab < 2 || mode < ENG_ORACLE_RIGHT || mode > ENG_ORACLE_RANDOM)
        return RCD_EINVAL;
    oracle_t *o = calloc(1, sizeof *o);
    if (!o) return RCD_ENOMEM;
    *o = (oracle_t){.base.vt = &oracle_vt,
                    .truth = truth,
                    .n_truth = n_truth,
                    .vocab = vocab,
                    .mode = mode,
                    .rng = seed};
    *out = &o->base;
    return 0;
}

/* ---- acceptance and policy ---------------------------------------------------------------- */

int eng_spec_greedy_keep(const int32_t *draft, int k, const int32_t *sampled)
{
    int m = 0;
    while (m < k && draft[m] == sampled[m])
        m++;
    return m + 1;
}

void eng_spec_policy_init(eng_spec_policy_t *p, int k_max, int max_batch)
{
    if (k_max < 0) k_max = 0;
    if (k_max > ENG_DRAFT_MAX) k_max = ENG_DRAFT_MAX;
    *p = (eng_spec_policy_t){.k_max = k_max,
                             .miss_limit = 4,
                             .pause_steps = 16,
                             .max_batch = max_batch < 0 ? 0 : max_batch,
                             .k = k_max};
}

int eng_spec_policy_next(eng_spec_policy_t *p, int batch)
{
    if (p->k_max == 0) return 0;
    if (p->paused > 0) {
        if (--p->paused == 0) p->k = 1;
        return 0;
    }
    if (p->max_batch > 0 && batch > p->max_batch) return 0;
    return p->k;
}

void eng_spec_policy_update(eng_spec_policy_t *p, int k, int accepted)
{
    if (k <= 0) return;
    if (accepted < 0) accepted = 0;
    if (accepted > k) accepted = k;
    p->verifies++;
    p->drafted += (uint64_t)k;
    p->accepted += (uint64_t)accepted;
    if (accepted == k) {
        p->misses = 0;
        p->k = k + 1 < p->k_max ? k + 1 : p->k_max;
        return;
    }
    p->k = accepted + 1;
    if (accepted > 0) {
        p->misses = 0;
        return;
    }
    if (++p->misses >= p->miss_limit) {
        p->misses = 0;
        p->paused = p->pause_steps;
    }
}

/* ---- the runner-wide gain check ------------------------------------------------------------ */

#define GATE_ALPHA 0.125

void eng_spec_gate_init(eng_spec_gate_t *g)
{
    *g = (eng_spec_gate_t){.probe_every = 16,
                           .min_samples = 8,
                           .backoff_min = 16,
                           .backoff_max = 1024,
                           .margin = 1.0,
                           .backoff = 16};
}

bool eng_spec_gate_next(eng_spec_gate_t *g)
{
    if (g->paused > 0) {
        g->paused--;
        g->paused_steps++;
        return false;
    }
    /* until the baseline has its samples, one step in 4 runs plainly */
    int every = g->n_plain < g->min_samples && g->probe_every > 4 ? 4 : g->probe_every;
    if (++g->since_probe >= every) {
        g->since_probe = 0;
        return false;
    }
    return true;
}

static void gate_ewma(double *us, double *tok, int n, double x_us, double x_tok)
{
    if (n == 0) {
        *us = x_us;
        *tok = x_tok;
        return;
    }
    *us += GATE_ALPHA * (x_us - *us);
    *tok += GATE_ALPHA * (x_tok - *tok);
}

bool eng_spec_gate_observe(eng_spec_gate_t *g, bool spec, double us, double tokens)
{
    if (!(us > 0.0) || !(tokens >= 0.0)) return false;
    if (!spec) {
        gate_ewma(&g->plain_us, &g->plain_tok, g->n_plain, us, tokens);
        if (g->n_plain < g->min_samples) g->n_plain++;
        g->since_probe = 0; /* a fresh baseline sample: the next forced plain step can wait */
        return false;
    }
    if (g->paused > 0) return false; /* a step planned before the pause */
    gate_ewma(&g->spec_us, &g->spec_tok, g->n_spec, us, tokens);
    if (g->n_spec < g->min_samples) g->n_spec++;
    if (g->n_spec < g->min_samples || g->n_plain < g->min_samples) return false;
    /* rates compared as spec_tok / spec_us < margin * plain_tok / plain_us */
    if (g->spec_tok * g->plain_us < g->margin * g->plain_tok * g->spec_us) {
        g->paused = g->backoff;
        g->backoff = g->backoff * 2 < g->backoff_max ? g->backoff * 2 : g->backoff_max;
        g->pauses++;
        g->n_spec = 0; /* the probe after the pause is judged on fresh samples */
        g->probing = true;
        return true;
    }
    if (g->probing) { /* a probe that pays: the next pause starts short again */
        g->probing = false;
        g->backoff = g->backoff_min;
    }
    return false;
}

int eng_spec_gate_bucket(int batch)
{
    int b = 0;
    for (int n = 1; n < batch && b < ENG_SPEC_GATE_BUCKETS - 1; n *= 2)
        b++;
    return b;
}
