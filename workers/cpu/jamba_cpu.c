/* workers/cpu: the Jamba forward pass over a ragged batch. All sequences' tokens are stacked
 * into one [T x H] activation so every projection is one matmul over the batch. Mamba layers
 * run the Mamba family's mixer (with Jamba's dt/B/C RMSNorms) on the slot's fixed state;
 * attention layers run Granite's attention over the paged KV cache (no positions, scale
 * head_dim^-0.5); each layer then runs its dense SwiGLU MLP or Granite's grouped top-k MoE
 * with Jamba's router (softmax over every expert, top-k, weights not renormalized).
 * Speculative rollback as Granite's: the Mamba layers' recurrence inputs replayed, the paged KV
 * truncated. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/granite_cpu.h"
#include "workers/cpu/mamba_cpu.h"
#include "workers/families/jamba.h"

typedef struct jamba_ctx {
    float *u; /* [T x H] normed input of a sublayer */
    float *o; /* [T x H] sublayer output */
    float *t; /* [T x 2F] dense MLP gate | up */
    float *g; /* [T x F] */
    wrk_mamba_bufs_t mb;
    wrk_attn_bufs_t ab;
    wrk_moe_bufs_t moe;
} jamba_ctx_t;

static void cpu_free(void *ctx)
{
    jamba_ctx_t *a = ctx;
    if (!a) return;
    free(a->u);
    free(a->o);
    free(a->t);
    free(a->g);
    wrk_mamba_bufs_free(&a->mb);
    wrk_attn_bufs_free(&a->ab);
    wrk_moe_bufs_free(&a->moe);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_jamba_config_t *cfg = &((const wrk_jamba_t *)c->m->priv)->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->mx.hidden, F = cfg->ffn_dim;
    jamba_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    bool ok = (a->u = wrk_cpu_alloc_floats(T * H)) && (a->o = wrk_cpu_alloc_floats(T * H)) &&
              (a->t = wrk_cpu_alloc_floats(T * 2 * F)) && (a->g = wrk_cpu_alloc_floats(T * F));
    if (ok && cfg->n_mamba) ok = wrk_mamba_bufs_alloc(&cfg->mx, T, &a->mb) == 0;
    if (ok && cfg->n_attn)
        ok = wrk_attn_bufs_alloc(c, cfg->n_q, cfg->n_kv, cfg->head_dim, T, &a->ab) == 0;
    if (ok && cfg->n_moe)
        ok = wrk_moe_bufs_alloc(cfg->mx.hidden, cfg->ffn_dim, cfg->n_experts, cfg->top_k, T,
                                &a->moe) == 0;
    if (!ok) {
        cpu_free(a);
        return RCD_ENOMEM;
    }
    *ctx = a;
    return 0;
}

static inline float silu(float v)
{
    return v / (1.f + expf(-v));
}

/* Jamba's router of one token: softmax over all E logits (fp32), top-k of the probabilities
 * (descending, ties to the lower index, as torch.topk), the k probabilities kept as they are
 * (not renormalized); stored in ascending expert order. */
static void route(const float *rl, int E, int k, int32_t *sel, float *wt)
{
    float mx = rl[0];
    for (int e = 1; e < E; e++)
        if (rl[e] > mx) mx = rl[e];
    double sum = 0.0;
    for (int e = 0; e < E; e++)
        sum += expf(rl[e] - mx);
    int32_t idx[WRK_JAMBA_MAX_TOPK];
    float lg[WRK_JAMBA_MAX_TOPK];
    wrk_topk(rl, E, k, idx, lg);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (idx[i] >= 0 && (best < 0 || idx[i] < idx[best])) best = i;
        sel[j] = idx[best];
        wt[j] = (float)(expf(lg[best] - mx) / sum);
        idx[best] = -1;
    }
}

static void jamba_expert(const void *ctx, int e, wrk_mat_t *gate, wrk_mat_t *up, wrk_mat_t *down)
{
    const wrk_jamba_layer_t *L = ctx;
    *gate = L->ex[3 * e];
    *up = L->ex[3 * e + 1];
    *down = L->ex[3 * e + 2];
}

/* The layer's feed-forward of a->u into a->o: dense SwiGLU, or the MoE. Ends after a barrier. */
static void feed_forward(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_jamba_layer_t *L)
{
    wrk_cpu_t *c = f->c;
    jamba_ctx_t *a = f->a;
    const wrk_jamba_config_t *cfg = &((const wrk_jamba_t *)c->m->priv)->cfg;
    const int H = cfg->mx.hidden, F = cfg->ffn_dim, E = cfg->n_experts, K = cfg->top_k;
    const int T = f->T;
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);
    if (L->moe) {
        wrk_cpu_mm(c, ith, nth, &L->router, a->u, H, T, a->moe.rl, E, NULL, false);
        wrk_pool_barrier(c->pool);
        for (int t = t0; t < t1; t++) {
            route(a->moe.rl + (size_t)t * E, E, K, a->moe.sel + (size_t)t * K,
                  a->moe.wt + (size_t)t * K);
            memset(a->o + (size_t)t * H, 0, (size_t)H * sizeof(float));
        }
        wrk_pool_barrier(c->pool);
        wrk_moe_cpu(c, ith, nth, &a->moe, jamba_expert, L, H, F, E, K, T, a->u, a->o);
        return;
    }
    wrk_cpu_mm(c, ith, nth, &L->gate, a->u, H, T, a->t, 2 * F, NULL, false);
    wrk_cpu_mm(c, ith, nth, &L->up, a->u, H, T, a->t + F, 2 * F, NULL, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) {
        const float *tr = a->t + (size_t)t * 2 * F;
        float *gr = a->g + (size_t)t * F;
        for (int i = 0; i < F; i++)
            gr[i] = silu(tr[i]) * tr[F + i];
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->down, a->g, F, T, a->o, H, NULL, false);
    wrk_pool_barrier(c->pool);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    jamba_ctx_t *a = f->a;
    const wrk_jamba_t *g = c->m->priv;
    const wrk_jamba_config_t *cfg = &g->cfg;
    const int H = cfg->mx.hidden, T = f->T;
    const float eps = cfg->mx.eps;
    const size_t layer_floats = wrk_mamba_layer_state_floats(&cfg->mx);
    int t0, t1;

    wrk_hybrid_begin(f, ith, nth, cfg->n_attn ? &a->ab : NULL, &t0, &t1);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_jamba_layer_t *L = &g->layers[l];
        wrk_residual_norm(c, t0, t1, H, NULL, 0.f, L->in_norm, eps, a->u);
        wrk_pool_barrier(c->pool);
        if (L->attn) {
            const wrk_attn_w_t w = {.q = L->q,
                                    .k = L->k,
                                    .v = L->v,
                                    .o = L->o,
                                    .hidden = H,
                                    .n_q = cfg->n_q,
                                    .n_kv = cfg->n_kv,
                                    .head_dim = cfg->head_dim,
                                    .scale = (float)(1.0 / sqrt((double)cfg->head_dim)),
                                    .kv_layer = L->idx};
            wrk_attn_cpu(c, ith, nth, &w, &a->ab, T, a->u, a->o);
        } else {
            wrk_mamba_cpu_mixer(
                c, ith, nth, &cfg->mx, &L->mx, f->seqs, f->n_seqs, T, (size_t)L->idx * layer_floats,
                (size_t)L->idx * wrk_mamba_spec_layer_floats(&cfg->mx), a->u, &a->mb, a->o, false);
        }
        wrk_residual_norm(c, t0, t1, H, a->o, 1.f, L->ff_norm, eps, a->u);
        wrk_pool_barrier(c->pool);
        feed_forward(f, ith, nth, L);
        wrk_residual_norm(c, t0, t1, H, a->o, 1.f, NULL, eps, NULL);
        wrk_pool_barrier(c->pool);
    }
    wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

/* Speculative rollback: the Mamba layers keep what the Mamba mixer's replay needs; the
 * attention layers keep nothing (the backend truncates their paged KV), nor do the MLP / MoE. */
static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)saved; /* the whole fixed state */
    const wrk_jamba_config_t *cfg = &((const wrk_jamba_t *)c->m->priv)->cfg;
    *rec = (size_t)cfg->n_mamba * wrk_mamba_spec_layer_floats(&cfg->mx);
    *tmp = cfg->n_mamba ? wrk_mamba_spec_tmp_floats(&cfg->mx) : 0;
}

static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    const wrk_jamba_t *g = r->c->m->priv;
    const wrk_jamba_config_t *cfg = &g->cfg;
    const size_t layer_floats = wrk_mamba_layer_state_floats(&cfg->mx);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_jamba_layer_t *L = &g->layers[l];
        if (L->attn) continue;
        wrk_mamba_cpu_replay(
            r->c, ith, nth, &cfg->mx, &L->mx, r->slot, r->n, (size_t)L->idx * layer_floats,
            r->rec + (size_t)L->idx * wrk_mamba_spec_layer_floats(&cfg->mx), r->tmp);
    }
}

const wrk_cpu_family_i wrk_cpu_jamba = {
    .family = WRK_FAMILY_JAMBA,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
};
