/* workers/cpu: the Granite 4.0-H forward pass over a ragged batch. All sequences' tokens are
 * stacked into one [T x H] activation so every projection is one matmul over the batch.
 * Mamba layers run the Mamba2 family's mixer on the slot's fixed state; attention layers
 * append K/V to the slot's paged KV blocks (reserved by the backend before the step) and
 * attend causally over all of them; each layer then runs the shared MLP and, with experts,
 * the top-k MoE (tokens grouped per expert so each expert's weights are read once). */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/granite_cpu.h"
#include "workers/cpu/mamba2_cpu.h"
#include "workers/families/granite.h"

typedef struct granite_ctx {
    float *u; /* [T x H] normed input of a sublayer */
    float *o; /* [T x H] sublayer output */
    float *f; /* [T x H] MLP output: shared + MoE */
    wrk_mamba2_bufs_t mb;
    wrk_attn_bufs_t ab;
    /* shared MLP */
    float *t;           /* [T x 2S] */
    float *g;           /* [T x S] */
    wrk_moe_bufs_t moe; /* T k (token, expert) rows grouped by expert */
} granite_ctx_t;

static void cpu_free(void *ctx)
{
    granite_ctx_t *a = ctx;
    if (!a) return;
    void *bufs[] = {a->u, a->o, a->f, a->t, a->g};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    wrk_mamba2_bufs_free(&a->mb);
    wrk_attn_bufs_free(&a->ab);
    wrk_moe_bufs_free(&a->moe);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_granite_config_t *cfg = &((const wrk_granite_t *)c->m->priv)->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->mx.hidden;
    const size_t S = cfg->shared_dim;
    granite_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    bool ok = (a->u = wrk_cpu_alloc_floats(T * H)) && (a->o = wrk_cpu_alloc_floats(T * H)) &&
              (a->f = wrk_cpu_alloc_floats(T * H)) && (a->t = wrk_cpu_alloc_floats(T * 2 * S)) &&
              (a->g = wrk_cpu_alloc_floats(T * S));
    if (ok && cfg->n_mamba) ok = wrk_mamba2_bufs_alloc(&cfg->mx, T, &a->mb) == 0;
    if (ok && cfg->n_attn)
        ok = wrk_attn_bufs_alloc(c, cfg->n_q, cfg->n_kv, cfg->head_dim, T, &a->ab) == 0;
    if (ok && cfg->n_experts)
        ok = wrk_moe_bufs_alloc(cfg->mx.hidden, cfg->expert_dim, cfg->n_experts, cfg->top_k, T,
                                &a->moe) == 0;
    if (!ok) {
        cpu_free(a);
        return RCD_ENOMEM;
    }
    *ctx = a;
    return 0;
}

/* ---- attention and MoE, exported through granite_cpu.h -------------------------------- */

/* Score rows an item may need beyond the KV capacity (one query per row): enough for
 * WRK_ATTN_MQ queries over this many positions; longer contexts get fewer queries per item. */
#define ATTN_MQ_POSITIONS 16384

int wrk_attn_bufs_alloc(struct wrk_cpu *c, int n_q, int n_kv, int head_dim, size_t T,
                        wrk_attn_bufs_t *b)
{
    const size_t qd = (size_t)n_q * head_dim, kvd = (size_t)n_kv * head_dim;
    *b = (wrk_attn_bufs_t){0};
    const size_t cap = c->kv ? (size_t)wrk_kv_capacity(c->kv) : 0;
    const size_t mq = WRK_ATTN_MQ * (cap < ATTN_MQ_POSITIONS ? cap : ATTN_MQ_POSITIONS);
    b->scores_floats = cap > mq ? cap : mq;
    b->qo_floats = 2 * WRK_ATTN_MQ * (size_t)head_dim;
    bool ok =
        c->kv && (b->q = wrk_cpu_alloc_floats(T * qd)) && (b->k = wrk_cpu_alloc_floats(T * kvd)) &&
        (b->v = wrk_cpu_alloc_floats(T * kvd)) && (b->att = wrk_cpu_alloc_floats(T * qd)) &&
        (b->scores = wrk_cpu_alloc_floats((size_t)c->n_threads * b->scores_floats)) &&
        (b->qo = wrk_cpu_alloc_floats((size_t)c->n_threads * b->qo_floats)) &&
        (b->tok_slot = malloc(T * sizeof(int32_t))) && (b->tok_pos = malloc(T * sizeof(int32_t))) &&
        (uint64_t)T * (uint64_t)n_q <= INT_MAX && /* items are counted in an int */
        (b->items = malloc(T * (size_t)n_q * sizeof *b->items));
    if (!ok) {
        wrk_attn_bufs_free(b);
        return RCD_ENOMEM;
    }
    return 0;
}

void wrk_attn_bufs_free(wrk_attn_bufs_t *b)
{
    void *bufs[] = {b->q, b->k, b->v, b->att, b->scores, b->qo, b->tok_slot, b->tok_pos, b->items};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    *b = (wrk_attn_bufs_t){0};
}

void wrk_attn_positions(struct wrk_cpu *c, const wrk_seq_t *seqs, int n_seqs,
                        const wrk_attn_bufs_t *b)
{
    int t = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < seqs[s].n_tokens; j++, t++) {
            b->tok_slot[t] = seqs[s].slot;
            b->tok_pos[t] = c->kv->n_tokens[seqs[s].slot] + j;
        }
}

int wrk_moe_bufs_alloc(int H, int F, int E, int k, size_t T, wrk_moe_bufs_t *b)
{
    const size_t TK = T * (size_t)k;
    *b = (wrk_moe_bufs_t){0};
    bool ok = (b->rl = wrk_cpu_alloc_floats(T * E)) && (b->sel = malloc(TK * sizeof(int32_t))) &&
              (b->wt = wrk_cpu_alloc_floats(TK)) && (b->row_of = malloc(TK * sizeof(int32_t))) &&
              (b->row_tok = malloc(TK * sizeof(int32_t))) &&
              (b->start = malloc(((size_t)E + 1) * sizeof(int32_t))) &&
              (b->xg = wrk_cpu_alloc_floats(TK * H)) &&
              (b->tg = wrk_cpu_alloc_floats(TK * 2 * (size_t)F)) &&
              (b->ug = wrk_cpu_alloc_floats(TK * F)) && (b->og = wrk_cpu_alloc_floats(TK * H));
    if (!ok) {
        wrk_moe_bufs_free(b);
        return RCD_ENOMEM;
    }
    return 0;
}

void wrk_moe_bufs_free(wrk_moe_bufs_t *b)
{
    void *bufs[] = {b->rl,    b->sel, b->wt, b->row_of, b->row_tok,
                    b->start, b->xg,  b->tg, b->ug,     b->og};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    *b = (wrk_moe_bufs_t){0};
}

static inline float silu(float v)
{
    return v / (1.f + expf(-v));
}

/* Rotate-half RoPE of one head in place: for i < hd/2, (x_i, x_{i+hd/2}) turns by
 * pos * inv_freq_i, with cos/sin computed in fp32 as transformers does. */
static void rope(float *x, int hd, int32_t pos, const float *inv_freq)
{
    const int h2 = hd / 2;
    for (int i = 0; i < h2; i++) {
        const float ang = (float)pos * inv_freq[i];
        const float cs = cosf(ang), sn = sinf(ang);
        const float x0 = x[i], x1 = x[i + h2];
        x[i] = x0 * cs - x1 * sn;
        x[i + h2] = x1 * cs + x0 * sn;
    }
}

/* The items with at most mq queries each. */
static int attn_items(wrk_attn_bufs_t *b, int T, int NQ, int NKV, int mq)
{
    const int rep = NQ / NKV;
    const size_t room = b->scores_floats;
    int n = 0;
    for (int t = 0; t < T;) {
        const int slot = b->tok_slot[t];
        const int32_t pos0 = b->tok_pos[t];
        /* heads per item: all of the KV head's while their score rows fit */
        int nh = rep < mq ? rep : mq;
        if ((size_t)nh * (size_t)(pos0 + 1) > room) nh = (int)(room / (size_t)(pos0 + 1));
        if (nh < 1) nh = 1; /* room >= the KV capacity >= pos0 + 1 */
        /* tokens per item: the sequence's next ones while the queries and rows fit */
        int m = 1;
        while (t + m < T && b->tok_slot[t + m] == slot && b->tok_pos[t + m] == pos0 + m &&
               (m + 1) * nh <= mq && (size_t)(m + 1) * nh * (size_t)(pos0 + m + 1) <= room)
            m++;
        for (int kh = 0; kh < NKV; kh++)
            for (int r = 0; r < rep; r += nh)
                b->items[n++] = (wrk_attn_item_t){
                    .t0 = t, .m = m, .h0 = kh * rep + r, .nh = rep - r < nh ? rep - r : nh};
        t += m;
    }
    return n;
}

void wrk_attn_plan(wrk_attn_bufs_t *b, int T, int NQ, int NKV, int nth)
{
    /* Queries that share an item share every K/V row it reads; but a step with few items
     * (batch 1) would leave threads idle: fewer queries per item until each thread has two. */
    int mq = WRK_ATTN_MQ;
    b->n_items = attn_items(b, T, NQ, NKV, mq);
    while (b->n_items < 2 * nth && mq > 1) {
        mq /= 2;
        b->n_items = attn_items(b, T, NQ, NKV, mq);
    }
}

/* Key positions an item reads, summed over its queries, plus a fixed 16 per query for the
 * query's own work. */
static double item_cost(const wrk_attn_bufs_t *b, const wrk_attn_item_t *it)
{
    const double n0 = b->tok_pos[it->t0] + 1;
    return (double)it->nh * it->m * (n0 + 16) + (double)it->nh * it->m * (it->m - 1) / 2;
}

/* Thread ith's share [w0, w1) of the items, cut where the running cost crosses ith / nth of
 * the total (a causal prefill's later tokens read more): every thread computes the same. */
static void attn_split(const wrk_attn_bufs_t *b, int ith, int nth, int *w0, int *w1)
{
    const int n = b->n_items;
    double total = 0;
    for (int i = 0; i < n; i++)
        total += item_cost(b, &b->items[i]);
    const double lo = total * ith / nth, hi = total * (ith + 1) / nth;
    double run = 0;
    *w0 = *w1 = n;
    for (int i = 0; i < n; i++) {
        if (*w0 == n && run >= lo) *w0 = i;
        if (ith + 1 < nth && run >= hi) {
            *w1 = i;
            break;
        }
        run += item_cost(b, &b->items[i]);
    }
    if (*w1 < *w0) *w1 = *w0;
}

void wrk_attn_core(struct wrk_cpu *c, int ith, int nth, const wrk_attn_bufs_t *a, int layer,
                   int NQ, int NKV, int hd, float scale)
{
    wrk_kv_t *kv = c->kv;
    const wrk_kern_t *k = c->k;
    const int qd = NQ * hd, kvd = NKV * hd, rep = NQ / NKV, bs = kv->block_tokens;
    float *sc = a->scores + (size_t)ith * a->scores_floats;
    float *qs = a->qo + (size_t)ith * a->qo_floats, *os = qs + (size_t)WRK_ATTN_MQ * hd;
    int w0, w1;
    attn_split(a, ith, nth, &w0, &w1);
    for (int wi = w0; wi < w1; wi++) {
        const wrk_attn_item_t *it = &a->items[wi];
        const int m = it->m, nh = it->nh, nq = m * nh, kh = it->h0 / rep;
        const int slot = a->tok_slot[it->t0];
        const int32_t n0 = a->tok_pos[it->t0] + 1; /* rows every query reads; query j reads */
        const size_t lds = (size_t)n0 + m - 1;     /* n0 + j / nh of them (causal) */
        for (int i = 0; i < m; i++)
            memcpy(qs + (size_t)i * nh * hd, a->q + (size_t)(it->t0 + i) * qd + (size_t)it->h0 * hd,
                   (size_t)nh * hd * sizeof(float));
        for (int32_t p0 = 0; p0 < n0; p0 += bs) {
            const float *kb = wrk_kv_at(kv, slot, layer, 0, p0) + (size_t)kh * hd;
            const int32_t pe = p0 + bs < n0 ? p0 + bs : n0;
            k->attn_scores(qs, nq, kb, kvd, pe - p0, hd, scale, sc + p0, lds);
        }
        for (int i = 1; i < m; i++) { /* row n0 - 1 + i: the queries of tokens i.. */
            const int32_t p = n0 - 1 + i;
            const int j0 = i * nh;
            k->attn_scores(qs + (size_t)j0 * hd, nq - j0,
                           wrk_kv_at(kv, slot, layer, 0, p) + (size_t)kh * hd, kvd, 1, hd, scale,
                           sc + j0 * lds + p, lds);
        }
        for (int j = 0; j < nq; j++)
            k->softmax(sc + j * lds, n0 + j / nh);
        memset(os, 0, (size_t)nq * hd * sizeof(float));
        for (int32_t p0 = 0; p0 < n0; p0 += bs) {
            const float *vb = wrk_kv_at(kv, slot, layer, 1, p0) + (size_t)kh * hd;
            const int32_t pe = p0 + bs < n0 ? p0 + bs : n0;
            k->attn_mix(os, nq, vb, kvd, pe - p0, hd, sc + p0, lds);
        }
        for (int i = 1; i < m; i++) {
            const int32_t p = n0 - 1 + i;
            const int j0 = i * nh;
            k->attn_mix(os + (size_t)j0 * hd, nq - j0,
                        wrk_kv_at(kv, slot, layer, 1, p) + (size_t)kh * hd, kvd, 1, hd,
                        sc + j0 * lds + p, lds);
        }
        for (int i = 0; i < m; i++)
            memcpy(a->att + (size_t)(it->t0 + i) * qd + (size_t)it->h0 * hd,
                   os + (size_t)i * nh * hd, (size_t)nh * hd * sizeof(float));
    }
}

void wrk_attn_cpu(struct wrk_cpu *c, int ith, int nth, const wrk_attn_w_t *w,
                  wrk_attn_bufs_t *a, int T, const float *u, float *out)
{
    wrk_kv_t *kv = c->kv;
    const int H = w->hidden, hd = w->head_dim, NQ = w->n_q, NKV = w->n_kv;
    const int qd = NQ * hd, kvd = NKV * hd;
    const int layer = w->kv_layer;
    int t0, t1;

    wrk_cpu_mm(c, ith, nth, &w->q, u, H, T, a->q, qd, w->qb, false);
    wrk_cpu_mm(c, ith, nth, &w->k, u, H, T, a->k, kvd, w->kb, false);
    wrk_cpu_mm(c, ith, nth, &w->v, u, H, T, a->v, kvd, w->vb, false);
    wrk_pool_barrier(c->pool);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        const int slot = a->tok_slot[t];
        const int32_t pos = a->tok_pos[t];
        float *q = a->q + (size_t)t * qd, *k = a->k + (size_t)t * kvd;
        if (w->k_mult != 0.f && w->k_mult != 1.f)
            for (int i = 0; i < kvd; i++)
                k[i] *= w->k_mult;
        if (w->inv_freq) {
            for (int h = 0; h < NQ; h++)
                rope(q + (size_t)h * hd, hd, pos, w->inv_freq);
            for (int h = 0; h < NKV; h++)
                rope(k + (size_t)h * hd, hd, pos, w->inv_freq);
        }
        memcpy(wrk_kv_at(kv, slot, layer, 0, pos), k, (size_t)kvd * sizeof(float));
        memcpy(wrk_kv_at(kv, slot, layer, 1, pos), a->v + (size_t)t * kvd,
               (size_t)kvd * sizeof(float));
    }
    if (ith == 0) wrk_attn_plan(a, T, NQ, NKV, nth);
    wrk_pool_barrier(c->pool);
    wrk_attn_core(c, ith, nth, a, layer, NQ, NKV, hd, w->scale);
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &w->o, a->att, qd, T, out, H, w->ob, false);
    wrk_pool_barrier(c->pool);
}

/* One Granite attention layer into a->o. */
static void attention(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_granite_layer_t *L)
{
    granite_ctx_t *a = f->a;
    const wrk_granite_t *g = f->c->m->priv;
    const wrk_granite_config_t *cfg = &g->cfg;
    const wrk_attn_w_t w = {.q = L->q,
                            .k = L->k,
                            .v = L->v,
                            .o = L->o,
                            .qb = L->qb,
                            .kb = L->kb,
                            .vb = L->vb,
                            .ob = L->ob,
                            .hidden = cfg->mx.hidden,
                            .n_q = cfg->n_q,
                            .n_kv = cfg->n_kv,
                            .head_dim = cfg->head_dim,
                            .scale = cfg->attn_mult,
                            .inv_freq = cfg->rope ? g->inv_freq : NULL,
                            .kv_layer = L->idx};
    wrk_attn_cpu(f->c, ith, nth, &w, &a->ab, f->T, a->u, a->o);
}

void wrk_topk(const float *v, int n, int k, int32_t *idx, float *val)
{
    int have = 0;
    for (int e = 0; e < n; e++) {
        const float x = v[e];
        if (have == k && !(x > val[k - 1])) continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && x > val[j - 1]) {
            val[j] = val[j - 1];
            idx[j] = idx[j - 1];
            j--;
        }
        val[j] = x;
        idx[j] = e;
    }
}

/* Router of one token: top-k of the E logits (descending, ties to the lower index, as
 * torch.topk), softmax over those k only; stored in ascending expert order, the order
 * transformers sums the experts in. */
static void route(const float *rl, int E, int k, int32_t *sel, float *wt)
{
    int32_t idx[WRK_GRANITE_MAX_TOPK];
    float lg[WRK_GRANITE_MAX_TOPK];
    wrk_topk(rl, E, k, idx, lg);
    double sum = 0.0;
    float ex[WRK_GRANITE_MAX_TOPK];
    for (int j = 0; j < k; j++) {
        ex[j] = expf(lg[j] - lg[0]);
        sum += ex[j];
    }
    /* ascending expert index */
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (idx[i] >= 0 && (best < 0 || idx[i] < idx[best])) best = i;
        sel[j] = idx[best];
        wt[j] = (float)(ex[best] / sum);
        idx[best] = -1;
    }
}

void wrk_moe_group(const int32_t *sel, int E, int K, int T, int32_t *start, int32_t *row_of,
                   int32_t *row_tok)
{
    memset(start, 0, (size_t)(E + 1) * sizeof *start);
    for (int r = 0; r < T * K; r++)
        start[sel[r] + 1]++;
    for (int e = 0; e < E; e++)
        start[e + 1] += start[e];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            const int e = sel[(size_t)t * K + j];
            const int32_t row = start[e]++;
            row_of[(size_t)t * K + j] = row;
            row_tok[row] = t;
        }
    for (int e = E; e > 0; e--)
        start[e] = start[e - 1]; /* undo the fill's advance */
    start[0] = 0;
}

void wrk_moe_cpu(struct wrk_cpu *c, int ith, int nth, const wrk_moe_bufs_t *a,
                 wrk_moe_expert_fn expert, const void *ctx, int H, int F, int E, int K, int T,
                 const float *u, float *out)
{
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);
    if (ith == 0) wrk_moe_group(a->sel, E, K, T, a->start, a->row_of, a->row_tok);
    wrk_pool_barrier(c->pool);
    int r0, r1;
    wrk_split(T * K, 1, ith, nth, &r0, &r1);
    for (int r = r0; r < r1; r++)
        memcpy(a->xg + (size_t)r * H, u + (size_t)a->row_tok[r] * H, (size_t)H * sizeof(float));
    wrk_pool_barrier(c->pool);
    for (int e = 0; e < E; e++) {
        const int n = a->start[e + 1] - a->start[e];
        if (!n) continue;
        wrk_mat_t gate, up, down;
        expert(ctx, e, &gate, &up, &down);
        const float *x = a->xg + (size_t)a->start[e] * H;
        float *y = a->tg + (size_t)a->start[e] * 2 * F;
        wrk_cpu_mm(c, ith, nth, &gate, x, H, n, y, 2 * F, NULL, false);
        if (up.data) wrk_cpu_mm(c, ith, nth, &up, x, H, n, y + F, 2 * F, NULL, false);
    }
    wrk_pool_barrier(c->pool);
    for (int r = r0; r < r1; r++) {
        const float *tr = a->tg + (size_t)r * 2 * F;
        float *ur = a->ug + (size_t)r * F;
        for (int i = 0; i < F; i++)
            ur[i] = silu(tr[i]) * tr[F + i];
    }
    wrk_pool_barrier(c->pool);
    for (int e = 0; e < E; e++) {
        const int n = a->start[e + 1] - a->start[e];
        if (!n) continue;
        wrk_mat_t gate, up, down;
        expert(ctx, e, &gate, &up, &down);
        wrk_cpu_mm(c, ith, nth, &down, a->ug + (size_t)a->start[e] * F, F, n,
                   a->og + (size_t)a->start[e] * H, H, NULL, false);
    }
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) {
        float *fr = out + (size_t)t * H;
        const int32_t *ro = a->row_of + (size_t)t * K;
        const float *wt = a->wt + (size_t)t * K;
        for (int i = 0; i < H; i++) {
            float moe = 0.f;
            for (int j = 0; j < K; j++)
                moe += wt[j] * a->og[(size_t)ro[j] * H + i];
            fr[i] += moe;
        }
    }
    wrk_pool_barrier(c->pool);
}

/* Granite's stacked experts: the e-th matrices of [E][2F x H] and [E][H x F]. */
static void granite_expert(const void *ctx, int e, wrk_mat_t *gate, wrk_mat_t *up, wrk_mat_t *down)
{
    const wrk_granite_layer_t *L = ctx;
    *gate = wrk_granite_expert(&L->ex_in, e);
    *up = (wrk_mat_t){0};
    *down = wrk_granite_expert(&L->ex_out, e);
}

/* Shared MLP into a->f, then (with experts) the MoE added to it. Ends after a barrier. */
static void mlp(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_granite_layer_t *L)
{
    wrk_cpu_t *c = f->c;
    granite_ctx_t *a = f->a;
    const wrk_granite_config_t *cfg = &((const wrk_granite_t *)c->m->priv)->cfg;
    const int H = cfg->mx.hidden, S = cfg->shared_dim, F = cfg->expert_dim;
    const int E = cfg->n_experts, K = cfg->top_k, T = f->T;
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);

    wrk_cpu_mm(c, ith, nth, &L->sh_in, a->u, H, T, a->t, 2 * S, NULL, false);
    if (E) wrk_cpu_mm(c, ith, nth, &L->router, a->u, H, T, a->moe.rl, E, NULL, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) {
        const float *tr = a->t + (size_t)t * 2 * S;
        float *gr = a->g + (size_t)t * S;
        for (int i = 0; i < S; i++)
            gr[i] = silu(tr[i]) * tr[S + i];
        if (E)
            route(a->moe.rl + (size_t)t * E, E, K, a->moe.sel + (size_t)t * K,
                  a->moe.wt + (size_t)t * K);
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->sh_out, a->g, S, T, a->f, H, NULL, false);
    if (!E) {
        wrk_pool_barrier(c->pool);
        return;
    }
    wrk_moe_cpu(c, ith, nth, &a->moe, granite_expert, L, H, F, E, K, T, a->u, a->f);
}

void wrk_hybrid_begin(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_attn_bufs_t *ab, int *t0,
                      int *t1)
{
    wrk_cpu_t *c = f->c;
    wrk_cpu_embed(c, ith, nth, f->seqs, f->n_seqs);
    if (ith == 0 && ab) wrk_attn_positions(c, f->seqs, f->n_seqs, ab);
    wrk_split(f->T, 1, ith, nth, t0, t1);
    wrk_pool_barrier(c->pool);
}

void wrk_residual_norm(struct wrk_cpu *c, int t0, int t1, int H, const float *o, float m,
                       const float *w, float eps, float *u)
{
    for (int t = t0; t < t1; t++) {
        float *r = c->res + (size_t)t * H;
        if (o) {
            const float *ot = o + (size_t)t * H;
            for (int i = 0; i < H; i++)
                r[i] += ot[i] * m;
        }
        if (w) c->k->rmsnorm(u + (size_t)t * H, r, w, H, eps);
    }
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    granite_ctx_t *a = f->a;
    const wrk_granite_t *g = c->m->priv;
    const wrk_granite_config_t *cfg = &g->cfg;
    const int H = cfg->mx.hidden, T = f->T;
    const float rm = cfg->resid_mult, eps = cfg->mx.eps;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(&cfg->mx);
    int t0, t1;

    wrk_hybrid_begin(f, ith, nth, cfg->n_attn ? &a->ab : NULL, &t0, &t1);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_granite_layer_t *L = &g->layers[l];
        wrk_residual_norm(c, t0, t1, H, NULL, 0.f, L->in_norm, eps, a->u);
        wrk_pool_barrier(c->pool);
        if (L->attn)
            attention(f, ith, nth, L);
        else
            wrk_mamba2_cpu_mixer_rec(c, ith, nth, &cfg->mx, &L->mx, f->seqs, f->n_seqs, T,
                                     (size_t)L->idx * layer_floats,
                                     (size_t)L->idx * wrk_mamba2_spec_layer_floats(&cfg->mx),
                                     a->u, &a->mb, a->o, false);
        wrk_residual_norm(c, t0, t1, H, a->o, rm, L->post_norm, eps, a->u);
        wrk_pool_barrier(c->pool);
        mlp(f, ith, nth, L);
        wrk_residual_norm(c, t0, t1, H, a->f, rm, NULL, eps, NULL);
        wrk_pool_barrier(c->pool);
    }
    wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

/* Speculative rollback: the Mamba layers keep what the Mamba2 mixer's replay needs; the
 * attention layers keep nothing (the backend truncates their paged KV). */
static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)saved; /* the whole fixed state */
    const wrk_granite_config_t *cfg = &((const wrk_granite_t *)c->m->priv)->cfg;
    *rec = (size_t)cfg->n_mamba * wrk_mamba2_spec_layer_floats(&cfg->mx);
    *tmp = cfg->n_mamba ? wrk_mamba2_spec_tmp_floats(&cfg->mx) : 0;
}

static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    const wrk_granite_t *g = r->c->m->priv;
    const wrk_granite_config_t *cfg = &g->cfg;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(&cfg->mx);
    for (int l = 0; l < cfg->mx.n_layers; l++) {
        const wrk_granite_layer_t *L = &g->layers[l];
        if (L->attn) continue;
        wrk_mamba2_cpu_replay(r->c, ith, nth, &cfg->mx, &L->mx, r->slot, r->n,
                              (size_t)L->idx * layer_floats,
                              r->rec + (size_t)L->idx * wrk_mamba2_spec_layer_floats(&cfg->mx),
                              r->tmp);
    }
}

const wrk_cpu_family_i wrk_cpu_granite = {
    .family = WRK_FAMILY_GRANITE,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
};
