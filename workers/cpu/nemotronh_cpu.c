/* workers/cpu: the Nemotron-H forward pass over a ragged batch. All sequences' tokens are
 * stacked into one [T x H] activation so every projection is one matmul over the batch. Each
 * block is RMSNorm, one mixer, residual add: Mamba blocks run the Mamba2 family's mixer on
 * the slot's fixed state; attention blocks run Granite's attention code (no positions) over
 * the slot's paged KV blocks; MLP blocks a relu² MLP; MoE blocks a grouped sigmoid router,
 * relu² experts (tokens grouped per expert so each expert's weights are read once) and the
 * shared relu² expert. Every per-token step is independent of the batch's composition.
 * Speculative rollback as Granite's: the Mamba blocks' recurrence inputs replayed, the paged KV
 * truncated. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/granite_cpu.h"
#include "workers/cpu/mamba2_cpu.h"
#include "workers/families/nemotronh.h"

typedef struct nemotronh_ctx {
    float *u; /* [T x H] normed input of a block */
    float *o; /* [T x H] mixer output */
    wrk_mamba2_bufs_t mb;
    wrk_attn_bufs_t ab; /* attention (granite_cpu.h) */
    float *t;           /* [T x max(F, S)] MLP hidden */
    /* MoE: T k (token, expert) rows grouped by expert */
    float *rl, *sc;      /* [T x E] router logits, then sigmoid scores; choice scores */
    int32_t *sel;        /* [T x k] chosen experts, ascending */
    float *wt;           /* [T x k] their weights */
    int32_t *row_of;     /* [T x k] row of (token, j) in the grouped buffers */
    int32_t *row_tok;    /* [T k] token of each grouped row */
    int32_t *start;      /* [E + 1] first grouped row of each expert */
    float *xg, *tg, *og; /* [T k x D], [T k x Fe], [T k x D]; D = latent or H */
    float *lx, *ly, *lo; /* latent: [T x D] fc1 output, [T x D] routed sum, [T x H] fc2 */
} nemotronh_ctx_t;

static void cpu_free(void *ctx)
{
    nemotronh_ctx_t *a = ctx;
    if (!a) return;
    void *bufs[] = {a->u,       a->o,     a->t,  a->rl, a->sc, a->sel, a->wt, a->row_of,
                    a->row_tok, a->start, a->xg, a->tg, a->og, a->lx,  a->ly, a->lo};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    wrk_mamba2_bufs_free(&a->mb);
    wrk_attn_bufs_free(&a->ab);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_nemotronh_config_t *cfg = &((const wrk_nemotronh_t *)c->m->priv)->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->mx.hidden;
    const size_t E = cfg->n_experts, Fe = cfg->expert_dim;
    const size_t D = cfg->latent ? (size_t)cfg->latent : H;
    size_t F = cfg->n_mlp ? (size_t)cfg->mlp_dim : 0;
    if (cfg->n_moe && (size_t)cfg->shared_dim > F) F = cfg->shared_dim;
    const size_t TK = T * (cfg->n_moe ? cfg->top_k : 0);
    nemotronh_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    bool ok = (a->u = wrk_cpu_alloc_floats(T * H)) && (a->o = wrk_cpu_alloc_floats(T * H));
    if (ok && F) ok = (a->t = wrk_cpu_alloc_floats(T * F)) != NULL;
    if (ok && cfg->n_mamba) ok = wrk_mamba2_bufs_alloc(&cfg->mx, T, &a->mb) == 0;
    if (ok && cfg->n_attn)
        ok = wrk_attn_bufs_alloc(c, cfg->n_q, cfg->n_kv, cfg->head_dim, T, &a->ab) == 0;
    if (ok && cfg->n_moe) {
        ok = (a->rl = wrk_cpu_alloc_floats(T * E)) && (a->sc = wrk_cpu_alloc_floats(T * E)) &&
             (a->sel = malloc(TK * sizeof(int32_t))) && (a->wt = wrk_cpu_alloc_floats(TK)) &&
             (a->row_of = malloc(TK * sizeof(int32_t))) &&
             (a->row_tok = malloc(TK * sizeof(int32_t))) &&
             (a->start = malloc((E + 1) * sizeof(int32_t))) &&
             (a->xg = wrk_cpu_alloc_floats(TK * D)) && (a->tg = wrk_cpu_alloc_floats(TK * Fe)) &&
             (a->og = wrk_cpu_alloc_floats(TK * D));
        if (ok && cfg->latent)
            ok = (a->lx = wrk_cpu_alloc_floats(T * D)) && (a->ly = wrk_cpu_alloc_floats(T * D)) &&
                 (a->lo = wrk_cpu_alloc_floats(T * H));
    }
    if (!ok) {
        cpu_free(a);
        return RCD_ENOMEM;
    }
    *ctx = a;
    return 0;
}

/* transformers' "relu2": relu(x) squared. */
static inline float relu2(float v)
{
    const float r = v > 0.f ? v : 0.f;
    return r * r;
}

/* out [T x H] = down(relu2(up(u))) with optional biases; t is [T x F] scratch. Ends after a
 * barrier. */
static void mlp(wrk_cpu_t *c, int ith, int nth, int T, int H, int F, const wrk_nemotronh_layer_t *L,
                const float *u, float *t, float *out)
{
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);
    wrk_cpu_mm(c, ith, nth, &L->up, u, H, T, t, F, L->up_b, false);
    wrk_pool_barrier(c->pool);
    for (int i = t0; i < t1; i++) {
        float *r = t + (size_t)i * F;
        for (int j = 0; j < F; j++)
            r[j] = relu2(r[j]);
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->down, t, F, T, out, H, L->down_b, false);
    wrk_pool_barrier(c->pool);
}

/* Index of the largest of v[0..n) not yet taken (ties: the lower index, -inf never wins over
 * a finite value but is taken when nothing else is left). */
static int argmax_free(const float *v, const bool *taken, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (!taken[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

/* Router of one token (DeepSeek-V3's, as transformers 5.23 runs it): scores = sigmoid(logits);
 * choice = scores + correction bias; each of n_group groups scores the sum of its two best
 * choices; the topk_group best groups stay; the top_k best choices among their experts are
 * picked; weights = their scores, divided by (sum + 1e-20) when norm_topk_prob, times
 * routed_scaling_factor. rl becomes the scores, ch the choices (both [E]). Stored in
 * ascending expert order. */
static void route(const wrk_nemotronh_config_t *cfg, const float *corr, float *rl, float *ch,
                  int32_t *sel, float *wt)
{
    const int E = cfg->n_experts, G = cfg->n_group, per = E / G, K = cfg->top_k;
    bool gkeep[4096];
    for (int e = 0; e < E; e++) {
        rl[e] = 1.f / (1.f + expf(-rl[e]));
        ch[e] = rl[e] + corr[e];
    }
    if (G > 1) {
        float gs[4096];
        for (int g = 0; g < G; g++) {
            const float *v = ch + (size_t)g * per;
            float b1 = v[0], b2 = v[1];
            if (b2 > b1) {
                b1 = v[1];
                b2 = v[0];
            }
            for (int i = 2; i < per; i++) {
                if (v[i] > b1) {
                    b2 = b1;
                    b1 = v[i];
                } else if (v[i] > b2) {
                    b2 = v[i];
                }
            }
            gs[g] = b1 + b2;
            gkeep[g] = false;
        }
        for (int j = 0; j < cfg->topk_group; j++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!gkeep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            gkeep[best] = true;
        }
        for (int e = 0; e < E; e++)
            if (!gkeep[e / per]) ch[e] = -INFINITY;
    }
    /* top_k by choice score: selection by repeated argmax over E (k is small). */
    int32_t idx[WRK_NEMOTRONH_MAX_TOPK];
    bool *tk = gkeep; /* reused: E flags */
    for (int e = 0; e < E; e++)
        tk[e] = false;
    for (int j = 0; j < K; j++) {
        idx[j] = argmax_free(ch, tk, E);
        tk[idx[j]] = true;
    }
    float sum = 0.f;
    for (int j = 0; j < K; j++)
        sum += rl[idx[j]];
    const float den = sum + 1e-20f;
    /* ascending expert index: walk the flags */
    int j = 0;
    for (int e = 0; e < E && j < K; e++) {
        if (!tk[e]) continue;
        float w = rl[e];
        if (cfg->norm_topk) w /= den;
        sel[j] = e;
        wt[j++] = w * cfg->routed_scale;
    }
}

/* Token t's routed experts, weighted and summed in ascending expert order, into dst [D]:
 * dst = sum + dst when add (the shared expert there), else the sum. */
static void routed_sum_into(const nemotronh_ctx_t *a, int t, int K, int D, float *dst, bool add)
{
    const int32_t *ro = a->row_of + (size_t)t * K;
    const float *wt = a->wt + (size_t)t * K;
    for (int i = 0; i < D; i++) {
        float acc = 0.f;
        for (int j = 0; j < K; j++)
            acc += a->og[(size_t)ro[j] * D + i] * wt[j];
        dst[i] = add ? acc + dst[i] : acc;
    }
}

/* The MoE block into out: routed experts (weighted, summed in ascending expert order) plus the
 * shared expert. Ends after a barrier. */
static void moe(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_nemotronh_layer_t *L, float *out)
{
    wrk_cpu_t *c = f->c;
    nemotronh_ctx_t *a = f->a;
    const wrk_nemotronh_config_t *cfg = &((const wrk_nemotronh_t *)c->m->priv)->cfg;
    const int H = cfg->mx.hidden, Fe = cfg->expert_dim;
    const int E = cfg->n_experts, K = cfg->top_k, T = f->T, D = cfg->latent ? cfg->latent : H;
    /* the experts' input: u, or its fc1 latent projection */
    const float *xin = cfg->latent ? a->lx : a->u;
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);

    wrk_cpu_mm(c, ith, nth, &L->router, a->u, H, T, a->rl, E, NULL, false);
    if (cfg->latent) wrk_cpu_mm(c, ith, nth, &L->lat_in, a->u, H, T, a->lx, D, L->lat_in_b, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++)
        route(cfg, L->corr, a->rl + (size_t)t * E, a->sc + (size_t)t * E, a->sel + (size_t)t * K,
              a->wt + (size_t)t * K);
    wrk_pool_barrier(c->pool);
    if (ith == 0) wrk_moe_group(a->sel, E, K, T, a->start, a->row_of, a->row_tok);
    wrk_pool_barrier(c->pool);
    int r0, r1;
    wrk_split(T * K, 1, ith, nth, &r0, &r1);
    for (int r = r0; r < r1; r++)
        memcpy(a->xg + (size_t)r * D, xin + (size_t)a->row_tok[r] * D, (size_t)D * sizeof(float));
    wrk_pool_barrier(c->pool);
    for (int e = 0; e < E; e++) {
        const int n = a->start[e + 1] - a->start[e];
        if (!n) continue;
        wrk_cpu_mm(c, ith, nth, &L->ex_up[e], a->xg + (size_t)a->start[e] * D, D, n,
                   a->tg + (size_t)a->start[e] * Fe, Fe, NULL, false);
    }
    wrk_pool_barrier(c->pool);
    for (int r = r0; r < r1; r++) {
        float *tr = a->tg + (size_t)r * Fe;
        for (int i = 0; i < Fe; i++)
            tr[i] = relu2(tr[i]);
    }
    wrk_pool_barrier(c->pool);
    for (int e = 0; e < E; e++) {
        const int n = a->start[e + 1] - a->start[e];
        if (!n) continue;
        wrk_cpu_mm(c, ith, nth, &L->ex_down[e], a->tg + (size_t)a->start[e] * Fe, Fe, n,
                   a->og + (size_t)a->start[e] * D, D, NULL, false);
    }
    /* the shared expert into out (its own scratch; ends after a barrier), the routed sum
     * (in the latent width: then through fc2), added to it */
    mlp(c, ith, nth, T, H, cfg->shared_dim, L, a->u, a->t, out);
    if (cfg->latent) {
        for (int t = t0; t < t1; t++)
            routed_sum_into(a, t, K, D, a->ly + (size_t)t * D, false);
        wrk_pool_barrier(c->pool);
        wrk_cpu_mm(c, ith, nth, &L->lat_out, a->ly, D, T, a->lo, H, L->lat_out_b, false);
        wrk_pool_barrier(c->pool);
        for (int t = t0; t < t1; t++) {
            float *fr = out + (size_t)t * H;
            const float *lr = a->lo + (size_t)t * H;
            for (int i = 0; i < H; i++)
                fr[i] = lr[i] + fr[i];
        }
    } else {
        for (int t = t0; t < t1; t++)
            routed_sum_into(a, t, K, H, out + (size_t)t * H, true);
    }
    wrk_pool_barrier(c->pool);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    nemotronh_ctx_t *a = f->a;
    const wrk_nemotronh_t *g = c->m->priv;
    const wrk_nemotronh_config_t *cfg = &g->cfg;
    const int H = cfg->mx.hidden, T = f->T;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(&cfg->mx);
    int t0, t1;

    wrk_hybrid_begin(f, ith, nth, cfg->n_attn ? &a->ab : NULL, &t0, &t1);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_nemotronh_layer_t *L = &g->layers[l];
        wrk_residual_norm(c, t0, t1, H, NULL, 0.f, L->norm, cfg->mx.eps, a->u);
        wrk_pool_barrier(c->pool);
        switch (L->kind) {
        case WRK_NH_MAMBA:
            wrk_mamba2_cpu_mixer_rec(
                c, ith, nth, &cfg->mx, &L->mx, f->seqs, f->n_seqs, T, (size_t)L->idx * layer_floats,
                (size_t)L->idx * wrk_mamba2_spec_layer_floats(&cfg->mx), a->u, &a->mb, a->o, false);
            break;
        case WRK_NH_ATTN: {
            const wrk_attn_w_t w = {.q = L->q,
                                    .k = L->k,
                                    .v = L->v,
                                    .o = L->o,
                                    .hidden = H,
                                    .n_q = cfg->n_q,
                                    .n_kv = cfg->n_kv,
                                    .head_dim = cfg->head_dim,
                                    .scale = cfg->attn_scale,
                                    .inv_freq = NULL,
                                    .kv_layer = L->idx};
            wrk_attn_cpu(c, ith, nth, &w, &a->ab, T, a->u, a->o);
            break;
        }
        case WRK_NH_MLP:
            mlp(c, ith, nth, T, H, cfg->mlp_dim, L, a->u, a->t, a->o);
            break;
        default:
            moe(f, ith, nth, L, a->o);
            break;
        }
        wrk_residual_norm(c, t0, t1, H, a->o, 1.f, NULL, cfg->mx.eps, NULL);
        wrk_pool_barrier(c->pool);
    }
    wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

/* Speculative rollback: the Mamba blocks keep what the Mamba2 mixer's replay needs; the
 * attention blocks keep nothing (the backend truncates their paged KV), nor do the MLP / MoE. */
static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)saved; /* the whole fixed state */
    const wrk_nemotronh_config_t *cfg = &((const wrk_nemotronh_t *)c->m->priv)->cfg;
    *rec = (size_t)cfg->n_mamba * wrk_mamba2_spec_layer_floats(&cfg->mx);
    *tmp = cfg->n_mamba ? wrk_mamba2_spec_tmp_floats(&cfg->mx) : 0;
}

static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    const wrk_nemotronh_t *g = r->c->m->priv;
    const wrk_nemotronh_config_t *cfg = &g->cfg;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(&cfg->mx);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_nemotronh_layer_t *L = &g->layers[l];
        if (L->kind != WRK_NH_MAMBA) continue;
        wrk_mamba2_cpu_replay(
            r->c, ith, nth, &cfg->mx, &L->mx, r->slot, r->n, (size_t)L->idx * layer_floats,
            r->rec + (size_t)L->idx * wrk_mamba2_spec_layer_floats(&cfg->mx), r->tmp);
    }
}

const wrk_cpu_family_i wrk_cpu_nemotronh = {
    .family = WRK_FAMILY_NEMOTRON_H,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
};
