/* engine: the draft-model source (eng_draft_model.h). Runs on the device thread only. */
#include "engine/eng_draft_model.h"
#include "common/rcd_path.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dmodel {
    eng_draft_t base;
    wrk_backend_t *be;
    int n_slots, V, budget;
    bool kv;        /* the draft has a KV cache: scratch slots give their blocks back */
    float *logits;  /* n_slots x V: one row per job of a draft step */
    int32_t *idx;   /* V: sampling scratch */
    wrk_seq_t *ws;  /* n_slots */
    int32_t *map;   /* n_slots: the job of each entry of a draft step */
} dmodel_t;

/* ---- sampling ------------------------------------------------------------------------------ */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t eng_draft_rng_seed(uint64_t seed)
{
    uint64_t x = seed ^ 0x6a09e667f3bcc909ull; /* a stream apart from the target's sampler */
    return splitmix(&x);
}

static int by_desc(const void *a, const void *b, void *ctx)
{
    const float *w = ctx;
    float x = w[*(const int32_t *)a], y = w[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

static int32_t argmax_finite(const float *w, int V)
{
    int32_t best = -1;
    for (int i = 0; i < V; i++)
        if (isfinite(w[i]) && (best < 0 || w[i] > w[best])) best = i;
    return best < 0 ? 0 : best;
}

int32_t eng_draft_sample(const eng_draft_sampling_t *sp, float *w, int V, int32_t *idx,
                         uint64_t *rng)
{
    if (sp->temperature <= 0.0f) return argmax_finite(w, V);
    for (int i = 0; i < V; i++) {
        if (!isfinite(w[i])) w[i] = -INFINITY;
        idx[i] = i;
    }
    qsort_r(idx, (size_t)V, sizeof(int32_t), by_desc, w);
    int n = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
    float mx = w[idx[0]];
    if (!isfinite(mx)) { /* nothing finite: the first id, with certainty */
        memset(w, 0, sizeof(float) * (size_t)V);
        w[idx[0]] = 1.0f;
        return idx[0];
    }
    for (int i = 0; i < n; i++)
        w[idx[i]] = expf((w[idx[i]] - mx) / sp->temperature);
    if (sp->min_p > 0.0f) {
        double cut = sp->min_p * w[idx[0]];
        int m = 1;
        while (m < n && w[idx[m]] >= cut)
            m++;
        n = m;
    }
    if (sp->top_p > 0.0f && sp->top_p < 1.0f) {
        double tot = 0, acc = 0;
        for (int i = 0; i < n; i++)
            tot += w[idx[i]];
        int m = 0;
        while (m < n) {
            acc += w[idx[m]];
            m++;
            if (acc >= sp->top_p * tot) break;
        }
        n = m;
    }
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += w[idx[i]];
    for (int i = n; i < V; i++)
        w[idx[i]] = 0.0f;
    for (int i = 0; i < n; i++)
        w[idx[i]] = (float)(w[idx[i]] / sum);
    double u = (double)(splitmix(rng) >> 11) * (1.0 / 9007199254740992.0), acc = 0;
    for (int i = 0; i < n; i++) {
        acc += w[idx[i]];
        if (u < acc) return idx[i];
    }
    return idx[n - 1];
}

/* ---- the source ------------------------------------------------------------------------------ */

static void draw(dmodel_t *m, eng_draft_job_t *j, int t, float *row)
{
    j->out[t] = eng_draft_sample(j->smp, row, m->V, m->idx, j->rng);
    if (j->smp->temperature > 0.0f && j->q)
        memcpy(j->q + (size_t)t * (size_t)m->V, row, sizeof(float) * (size_t)m->V);
}

/* Step 1 feeds every job's tokens the draft has not seen (the newest sampled token, and the
 * drafts the target kept; a fresh turn's whole prompt) in its own slot, with the logits of the
 * last: draft 1, and the slot then holds exactly the stream. Steps 2..k run on a scratch copy
 * of the slot, one token each, so nothing is rolled back afterwards. */
static int dm_propose_batch(eng_draft_t *d, eng_draft_job_t *jobs, int n, char *err,
                            size_t errlen)
{
    dmodel_t *m = (dmodel_t *)d;
    if (n <= 0) return 0;
    if (n > m->n_slots)
        return rcd_fail(RCD_EINVAL, err, errlen, "draft: %d jobs for %d slots", n, m->n_slots);
    int32_t cap = m->budget / n, kmax = 0;
    int rc;
    for (int i = 0; i < n; i++) {
        eng_draft_job_t *j = &jobs[i];
        if (j->slot < 0 || j->slot >= m->n_slots || j->k < 1 || j->k > ENG_DRAFT_MAX ||
            *j->fed < 0 || *j->fed >= j->n_toks)
            return rcd_fail(RCD_EINVAL, err, errlen, "draft: bad job (slot %d, k %d, %d of %d)",
                            j->slot, j->k, *j->fed, j->n_toks);
        if (j->k > kmax) kmax = j->k;
        /* far behind (a fresh turn's prompt): the head runs alone, in chunks of the budget */
        while (j->n_toks - *j->fed > cap) {
            int32_t c = j->n_toks - *j->fed - cap;
            if (c > m->budget) c = m->budget;
            wrk_seq_t s = {.slot = j->slot, .n_tokens = c, .tokens = j->toks + *j->fed};
            if ((rc = wrk_step(m->be, &s, 1, err, errlen))) return rc;
            *j->fed += c;
        }
        m->ws[i] = (wrk_seq_t){.slot = j->slot,
                               .n_tokens = j->n_toks - *j->fed,
                               .tokens = j->toks + *j->fed,
                               .n_logits = 1,
                               .logits = m->logits + (size_t)i * (size_t)m->V};
    }
    if ((rc = wrk_step(m->be, m->ws, n, err, errlen))) return rc;
    for (int i = 0; i < n; i++) {
        *jobs[i].fed = jobs[i].n_toks;
        draw(m, &jobs[i], 0, m->logits + (size_t)i * (size_t)m->V);
        if (jobs[i].k > 1 &&
            (rc = wrk_state_copy(m->be, m->n_slots + jobs[i].slot, jobs[i].slot)))
            return rcd_fail(rc, err, errlen, "draft: state copy of slot %d: %s", jobs[i].slot,
                            rcd_strerror(rc));
    }
    for (int t = 1; t < kmax; t++) {
        int ne = 0;
        for (int i = 0; i < n; i++) {
            if (jobs[i].k <= t) continue;
            m->ws[ne] = (wrk_seq_t){.slot = m->n_slots + jobs[i].slot,
                                    .n_tokens = 1,
                                    .tokens = &jobs[i].out[t - 1],
                                    .n_logits = 1,
                                    .logits = m->logits + (size_t)ne * (size_t)m->V};
            m->map[ne++] = i;
        }
        if ((rc = wrk_step(m->be, m->ws, ne, err, errlen))) return rc;
        for (int e = 0; e < ne; e++)
            draw(m, &jobs[m->map[e]], t, m->logits + (size_t)e * (size_t)m->V);
    }
    if (m->kv) /* the scratch copies' KV blocks back to the draft's pool */
        for (int i = 0; i < n; i++)
            if (jobs[i].k > 1) wrk_state_reset(m->be, m->n_slots + jobs[i].slot);
    return 0;
}

static int dm_slot_reset(eng_draft_t *d, int32_t slot)
{
    dmodel_t *m = (dmodel_t *)d;
    return wrk_state_reset(m->be, slot);
}

static int dm_slot_save(eng_draft_t *d, int32_t slot, void **buf, size_t *cap, size_t *len)
{
    dmodel_t *m = (dmodel_t *)d;
    size_t need = wrk_state_bytes(m->be, slot);
    if (need > *cap) {
        void *p = realloc(*buf, need);
        if (!p) return RCD_ENOMEM;
        *buf = p;
        *cap = need;
    }
    int rc = wrk_state_read_n(m->be, slot, *buf, *cap, len);
    if (!rc && m->kv) rc = wrk_state_reset(m->be, slot);
    return rc;
}

static int dm_slot_load(eng_draft_t *d, int32_t slot, const void *buf, size_t len)
{
    dmodel_t *m = (dmodel_t *)d;
    return wrk_state_write_n(m->be, slot, buf, len);
}

static void dm_destroy(eng_draft_t *d)
{
    dmodel_t *m = (dmodel_t *)d;
    free(m->logits);
    free(m->idx);
    free(m->ws);
    free(m->map);
    free(m);
}

static const eng_draft_i model_vt = {.name = "model",
                                     .destroy = dm_destroy,
                                     .propose_batch = dm_propose_batch,
                                     .slot_reset = dm_slot_reset,
                                     .slot_save = dm_slot_save,
                                     .slot_load = dm_slot_load};

int eng_draft_model_create(wrk_backend_t *be, int n_slots, eng_draft_t **out, char *err,
                           size_t errlen)
{
    *out = NULL;
    const wrk_model_info_t *mi = wrk_model_info(wrk_backend_model(be));
    if (n_slots < 1 || wrk_backend_n_slots(be) < 2 * n_slots ||
        wrk_backend_max_step_tokens(be) < n_slots)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "draft: the draft backend has %d slots and a %d-token step; %d target "
                        "slots need %d and %d",
                        wrk_backend_n_slots(be), wrk_backend_max_step_tokens(be), n_slots,
                        2 * n_slots, n_slots);
    dmodel_t *m = calloc(1, sizeof *m);
    if (!m) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    m->base.vt = &model_vt;
    m->be = be;
    m->n_slots = n_slots;
    m->V = mi->vocab_size;
    m->budget = wrk_backend_max_step_tokens(be);
    m->kv = mi->n_kv_layers > 0;
    m->logits = malloc(sizeof(float) * (size_t)m->V * (size_t)n_slots);
    m->idx = malloc(sizeof(int32_t) * (size_t)m->V);
    m->ws = calloc((size_t)n_slots, sizeof *m->ws);
    m->map = calloc((size_t)n_slots, sizeof *m->map);
    if (!m->logits || !m->idx || !m->ws || !m->map) {
        dm_destroy(&m->base);
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    }
    *out = &m->base;
    return 0;
}

/* ---- compatibility --------------------------------------------------------------------------- */

/* The whole file into *buf (malloc'd), or RCD_ENOTFOUND when it does not exist. */
static int slurp(const char *dir, char **buf, size_t *len)
{
    char path[RCD_PATH_MAX];
    int prc = rcd_path_join(path, sizeof path, dir, "tokenizer.json");
    if (prc) return prc;
    FILE *f = fopen(path, "rb");
    if (!f) return RCD_ENOTFOUND;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    int rc = 0;
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(b, cap * 2);
        if (!nb) free(b);
        b = nb;
        cap *= 2;
    }
    if (!b) rc = RCD_ENOMEM;
    else if (ferror(f)) rc = RCD_EIO;
    fclose(f);
    if (rc) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = n;
    return 0;
}

int eng_draft_model_check(const wrk_model_t *target, const char *target_dir,
                          const wrk_model_t *draft, const char *draft_dir, char *err,
                          size_t errlen)
{
    const wrk_model_info_t *t = wrk_model_info(target), *d = wrk_model_info(draft);
    if (t->vocab_size != d->vocab_size)
        return rcd_fail(RCD_EMISMATCH, err, errlen,
                        "the draft model %s has a vocabulary of %d tokens, the model %s of %d: a "
                        "draft model needs the target's vocabulary",
                        draft_dir, d->vocab_size, target_dir, t->vocab_size);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    int rd = slurp(draft_dir, &b, &nb);
    if (rd == RCD_ENOTFOUND) return 0; /* no tokenizer beside the draft: the vocabulary size */
    int rt = rd ? 0 : slurp(target_dir, &a, &na);
    int rc = 0;
    if (rd || (rt && rt != RCD_ENOTFOUND))
        rc = rcd_fail(RCD_EIO, err, errlen, "cannot read tokenizer.json of %s or %s", draft_dir,
                      target_dir);
    else if (!rt && (na != nb || memcmp(a, b, na) != 0))
        rc = rcd_fail(RCD_EMISMATCH, err, errlen,
                      "the draft model's tokenizer (%s/tokenizer.json) differs from the model's "
                      "(%s/tokenizer.json): a draft model needs the target's tokenizer",
                      draft_dir, target_dir);
    free(a);
    free(b);
    return rc;
}

/* ---- the checkpoint section ------------------------------------------------------------------ */

void eng_draft_section_head(void *dst, uint64_t fingerprint, uint64_t lag)
{
    memcpy(dst, &fingerprint, 8); /* little-endian hosts, as the history section */
    memcpy((uint8_t *)dst + 8, &lag, 8);
}

bool eng_draft_section_use(const void *data, uint64_t bytes, uint64_t fingerprint,
                           size_t state_bytes, size_t kv_bpt, int32_t max_lag, const void **state,
                           size_t *state_len, int32_t *lag)
{
    uint64_t fp, lg;
    if (!data || bytes < ENG_DRAFT_SECTION_HEAD + (uint64_t)state_bytes) return false;
    uint64_t kv = bytes - ENG_DRAFT_SECTION_HEAD - (uint64_t)state_bytes; /* the positions' */
    if (kv_bpt ? kv % kv_bpt != 0 || kv > SIZE_MAX - state_bytes : kv != 0) return false;
    memcpy(&fp, data, 8);
    memcpy(&lg, (const uint8_t *)data + 8, 8);
    if (fp != fingerprint || lg < 1 || lg > (uint64_t)(max_lag > 0 ? max_lag : 0)) return false;
    *state = (const uint8_t *)data + ENG_DRAFT_SECTION_HEAD;
    *state_len = state_bytes + (size_t)kv;
    *lag = (int32_t)lg;
    return true;
}
