/* workers/cpu: the Falcon-H1 forward pass over a ragged batch. All sequences' tokens are
 * stacked into one [T x H] activation so every projection is one matmul over the batch. Each
 * layer runs the Mamba2 mixer (mamba2_cpu.c, on the slot's fixed state) and Granite's GQA
 * attention (granite_cpu.c, over the slot's paged KV blocks) on the same normed input, adds
 * both, with their multipliers, to the residual, then runs the SwiGLU MLP. The multipliers
 * sit where transformers' forward applies them (none is folded into a weight). Speculative
 * rollback as Granite's: the mixers' recurrence inputs replayed, the paged KV truncated. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/granite_cpu.h"
#include "workers/cpu/mamba2_cpu.h"
#include "workers/families/falconh1.h"

typedef struct falconh1_ctx {
    float *u;       /* [T x H] normed input of a sublayer */
    float *us;      /* [T x H] mixer input: u * ssm_in_multiplier */
    float *ua;      /* [T x H] attention input: u * attention_in_multiplier */
    float *om;      /* [T x H] mixer output */
    float *oa;      /* [T x H] attention output; the MLP's output */
    float *gt, *up; /* [T x F] gate, up projections; gt becomes the SwiGLU product */
    wrk_mamba2_bufs_t mb;
    wrk_attn_bufs_t ab;
} falconh1_ctx_t;

static void cpu_free(void *ctx)
{
    falconh1_ctx_t *a = ctx;
    if (!a) return;
    void *bufs[] = {a->u, a->us, a->ua, a->om, a->oa, a->gt, a->up};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    wrk_mamba2_bufs_free(&a->mb);
    wrk_attn_bufs_free(&a->ab);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_falconh1_config_t *cfg = &((const wrk_falconh1_t *)c->m->priv)->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->mx.hidden, F = cfg->ffn;
    falconh1_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    bool ok = c->kv && (a->u = wrk_cpu_alloc_floats(T * H)) &&
              (a->us = wrk_cpu_alloc_floats(T * H)) && (a->ua = wrk_cpu_alloc_floats(T * H)) &&
              (a->om = wrk_cpu_alloc_floats(T * H)) && (a->oa = wrk_cpu_alloc_floats(T * H)) &&
              (a->gt = wrk_cpu_alloc_floats(T * F)) && (a->up = wrk_cpu_alloc_floats(T * F)) &&
              wrk_attn_bufs_alloc(c, cfg->n_q, cfg->n_kv, cfg->head_dim, T, &a->ab) == 0 &&
              wrk_mamba2_bufs_alloc(&cfg->mx, T, &a->mb) == 0;
    if (!ok) {
        cpu_free(a);
        return RCD_ENOMEM;
    }
    *ctx = a;
    return 0;
}

/* out[t] = in[t] * m for this thread's tokens. */
static void scale_rows(float *out, const float *in, int t0, int t1, int H, float m)
{
    for (size_t i = (size_t)t0 * H; i < (size_t)t1 * H; i++)
        out[i] = in[i] * m;
}

/* SwiGLU MLP of a->u into a->oa: down(up(u) silu(gate(u) gm)) (the down multiplier is applied
 * by the caller). Ends after a barrier. */
static void mlp(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_falconh1_layer_t *L, int t0, int t1)
{
    wrk_cpu_t *c = f->c;
    falconh1_ctx_t *a = f->a;
    const wrk_falconh1_config_t *cfg = &((const wrk_falconh1_t *)c->m->priv)->cfg;
    const int H = cfg->mx.hidden, F = cfg->ffn, T = f->T;
    const float gm = cfg->mlp_gate_mult;
    wrk_cpu_mm(c, ith, nth, &L->gate, a->u, H, T, a->gt, F, L->gate_b, false);
    wrk_cpu_mm(c, ith, nth, &L->up, a->u, H, T, a->up, F, L->up_b, false);
    wrk_pool_barrier(c->pool);
    c->k->swiglu(a->gt + (size_t)t0 * F, a->gt + (size_t)t0 * F, a->up + (size_t)t0 * F,
                 (size_t)(t1 - t0) * F, gm);
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->down, a->gt, F, T, a->oa, H, L->down_b, false);
    wrk_pool_barrier(c->pool);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    falconh1_ctx_t *a = f->a;
    const wrk_falconh1_t *g = c->m->priv;
    const wrk_falconh1_config_t *cfg = &g->cfg;
    const int H = cfg->mx.hidden, T = f->T;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(&cfg->mx);
    const float so = cfg->ssm_out_mult, ao = cfg->attn_out_mult, dm = cfg->mlp_down_mult;
    int t0, t1;

    wrk_hybrid_begin(f, ith, nth, &a->ab, &t0, &t1);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_falconh1_layer_t *L = &g->layers[l];
        wrk_residual_norm(c, t0, t1, H, NULL, 0.f, L->in_norm, cfg->mx.eps, a->u);
        /* a multiplier of 1 is the normed input itself (x * 1 == x): no copy */
        const float *us = cfg->ssm_in_mult == 1.f ? a->u : a->us;
        const float *ua = cfg->attn_in_mult == 1.f ? a->u : a->ua;
        if (us != a->u) scale_rows(a->us, a->u, t0, t1, H, cfg->ssm_in_mult);
        if (ua != a->u) scale_rows(a->ua, a->u, t0, t1, H, cfg->attn_in_mult);
        wrk_pool_barrier(c->pool);
        wrk_mamba2_cpu_mixer_rec(
            c, ith, nth, &cfg->mx, &L->mx, f->seqs, f->n_seqs, T, (size_t)l * layer_floats,
            (size_t)l * wrk_mamba2_spec_layer_floats(&cfg->mx), us, &a->mb, a->om, false);
        const wrk_attn_w_t w = {.q = L->at.q,
                                .k = L->at.k,
                                .v = L->at.v,
                                .o = L->at.o,
                                .qb = L->at.qb,
                                .kb = L->at.kb,
                                .vb = L->at.vb,
                                .ob = L->at.ob,
                                .hidden = H,
                                .n_q = cfg->n_q,
                                .n_kv = cfg->n_kv,
                                .head_dim = cfg->head_dim,
                                .scale = 1.f / sqrtf((float)cfg->head_dim),
                                .inv_freq = g->inv_freq,
                                .kv_layer = L->at.idx,
                                .k_mult = cfg->key_mult};
        wrk_attn_cpu(c, ith, nth, &w, &a->ab, T, ua, a->oa);
        for (int t = t0; t < t1; t++) {
            float *r = c->res + (size_t)t * H;
            const float *om = a->om + (size_t)t * H, *oa = a->oa + (size_t)t * H;
            for (int i = 0; i < H; i++)
                r[i] += om[i] * so + oa[i] * ao;
            c->k->rmsnorm(a->u + (size_t)t * H, r, L->ff_norm, H, cfg->mx.eps);
        }
        wrk_pool_barrier(c->pool);
        mlp(f, ith, nth, L, t0, t1);
        wrk_residual_norm(c, t0, t1, H, a->oa, dm, NULL, cfg->mx.eps, NULL);
        wrk_pool_barrier(c->pool);
    }
    wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

/* Speculative rollback: every layer's Mamba2 mixer keeps its conv input xBC and raw dt as the
 * forward used them (after in_proj's bias and the ssm multipliers), so the replay's conv and
 * scan see the very same numbers; the gate / norm after the scan changes no state. The
 * attention half keeps nothing (the backend truncates the paged KV). */
static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)saved; /* the whole fixed state */
    const wrk_falconh1_config_t *cfg = &((const wrk_falconh1_t *)c->m->priv)->cfg;
    *rec = (size_t)cfg->mx.n_layers * wrk_mamba2_spec_layer_floats(&cfg->mx);
    *tmp = wrk_mamba2_spec_tmp_floats(&cfg->mx);
}

static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    const wrk_falconh1_t *g = r->c->m->priv;
    const wrk_falconh1_config_t *cfg = &g->cfg;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(&cfg->mx);
    for (int l = 0; l < cfg->mx.n_layers; l++)
        wrk_mamba2_cpu_replay(r->c, ith, nth, &cfg->mx, &g->layers[l].mx, r->slot, r->n,
                              (size_t)l * layer_floats,
                              r->rec + (size_t)l * wrk_mamba2_spec_layer_floats(&cfg->mx), r->tmp);
}

const wrk_cpu_family_i wrk_cpu_falconh1 = {
    .family = WRK_FAMILY_FALCON_H1,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
};
