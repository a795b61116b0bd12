/* workers/cpu: the RecurrentGemma (Griffin) forward pass over a ragged batch. All sequences'
 * tokens are stacked into one [T x D] activation so every projection is one matmul over the
 * batch; the conv, the RG-LRU scan and local attention run per sequence against its own state
 * slot. Attention keeps a ring of the last W post-RoPE keys/values per layer: a token at
 * position p attends to positions max(0, p-W+1)..p, read from the ring for positions before
 * the chunk and from this step's k/v rows for the chunk itself; the ring is written after all
 * of the chunk's queries have read it, so a chunk may be longer than the window. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/cpu_int.h"
#include "workers/cpu/granite_cpu.h" /* wrk_attn_item_t */
#include "workers/families/recurrentgemma.h"

/* Most queries in one attention item (rg_items). */
#define RG_MQ 16

typedef struct rg_ctx {
    float *u;          /* [T x D] normed input of a block */
    float *yb;         /* [T x Lw] gelu(linear_y), then RG-LRU output times it */
    float *xb;         /* [T x Lw] linear_x, then the input gate's pre-activation */
    float *cb;         /* [T x Lw] conv output */
    float *ga;         /* [T x Lw] the recurrent gate's pre-activation */
    float *q, *att;    /* [T x NQ hd] */
    float *k, *v;      /* [T x NKV hd] */
    float *g, *up;     /* [T x M] MLP */
    float *scores;     /* per thread: RG_MQ x (W + RG_MQ) */
    float *qo;         /* per thread: an item's queries and outputs, 2 x RG_MQ x head_dim */
    wrk_attn_item_t *items; /* [T x n_heads]: the step's attention items */
    int n_items;
    int64_t *tok_pos;  /* [T] absolute position of every token */
    int *tok_seq;      /* [T] its sequence in the batch */
    int *seq_t0;       /* [T] first token row of every sequence */
    int64_t *seq_pos0; /* [T] position of that first token */
} rg_ctx_t;

static void cpu_free(void *ctx)
{
    rg_ctx_t *a = ctx;
    if (!a) return;
    free(a->u);
    free(a->yb);
    free(a->xb);
    free(a->cb);
    free(a->ga);
    free(a->q);
    free(a->att);
    free(a->k);
    free(a->v);
    free(a->g);
    free(a->up);
    free(a->scores);
    free(a->qo);
    free(a->items);
    free(a->tok_pos);
    free(a->tok_seq);
    free(a->seq_t0);
    free(a->seq_pos0);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_rg_config_t *cfg = &((const wrk_rg_t *)c->m->priv)->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, nth = (size_t)c->n_threads;
    const size_t D = cfg->hidden, Lw = cfg->lru_width, M = cfg->mlp;
    const size_t QD = (size_t)cfg->n_heads * cfg->head_dim;
    const size_t KVD = (size_t)cfg->n_kv_heads * cfg->head_dim;
    rg_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    a->u = wrk_cpu_alloc_floats(T * D);
    a->yb = wrk_cpu_alloc_floats(T * Lw);
    a->xb = wrk_cpu_alloc_floats(T * Lw);
    a->cb = wrk_cpu_alloc_floats(T * Lw);
    a->ga = wrk_cpu_alloc_floats(T * Lw);
    a->q = wrk_cpu_alloc_floats(T * QD);
    a->att = wrk_cpu_alloc_floats(T * QD);
    a->k = wrk_cpu_alloc_floats(T * KVD);
    a->v = wrk_cpu_alloc_floats(T * KVD);
    a->g = wrk_cpu_alloc_floats(T * M);
    a->up = wrk_cpu_alloc_floats(T * M);
    a->scores = wrk_cpu_alloc_floats(nth * RG_MQ * ((size_t)cfg->window + RG_MQ));
    a->qo = wrk_cpu_alloc_floats(nth * 2 * RG_MQ * (size_t)cfg->head_dim);
    /* at most T x n_heads items, counted in an int */
    if ((uint64_t)T * (uint64_t)cfg->n_heads <= INT_MAX)
        a->items = malloc(T * (size_t)cfg->n_heads * sizeof *a->items);
    a->tok_pos = malloc(T * sizeof *a->tok_pos);
    a->tok_seq = malloc(T * sizeof *a->tok_seq);
    a->seq_t0 = malloc(T * sizeof *a->seq_t0);
    a->seq_pos0 = malloc(T * sizeof *a->seq_pos0);
    if (!a->u || !a->yb || !a->xb || !a->cb || !a->ga || !a->q || !a->att || !a->k || !a->v ||
        !a->g || !a->up || !a->scores || !a->qo || !a->items || !a->tok_pos || !a->tok_seq ||
        !a->seq_t0 || !a->seq_pos0) {
        cpu_free(a);
        return RCD_ENOMEM;
    }
    *ctx = a;
    return 0;
}

/* torch's gelu(approximate="tanh") over a row, in place: 0.5 x (1 + tanh(u)) is
 * x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), with the kernels' vector exp. */
static void gelu_tanh_row(const wrk_kern_t *k, float *x, int n)
{
    float e[256];
    for (int i0 = 0; i0 < n; i0 += 256) {
        const int m = n - i0 < 256 ? n - i0 : 256;
        float *r = x + i0;
        for (int i = 0; i < m; i++)
            e[i] = -1.5957691216057308f * (r[i] + 0.044715f * r[i] * r[i] * r[i]);
        k->vexp(e, e, m);
        for (int i = 0; i < m; i++) r[i] = r[i] / (1.0f + e[i]);
    }
}

/* Causal depthwise conv (no activation) of one sequence's n tokens for channels [c0, c1):
 * out[t] = b + sum_k w[k] in[t - (K-1) + k], earlier inputs from the [K-1][Lw] window, which
 * is then advanced to the last K-1 inputs. */
static void conv(int n, int c0, int c1, int Lw, int K, const float *x, const float *w,
                 const float *b, float *win, float *out)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * Lw;
        float *o = out + (size_t)t * Lw;
        for (int ch = c0; ch < c1; ch++) o[ch] = b[ch] + w[(size_t)(K - 1) * Lw + ch] * xr[ch];
        for (int k = 0; k < K - 1; k++) {
            const int src = t - (K - 1) + k; /* < 0: from the window */
            const float *in = src >= 0 ? x + (size_t)src * Lw : win + (size_t)(K - 1 + src) * Lw;
            const float *wk = w + (size_t)k * Lw;
            for (int ch = c0; ch < c1; ch++) o[ch] += wk[ch] * in[ch];
        }
    }
    /* New window row r is input n - (K-1) + r; rows move towards the front, so reading a row
     * not yet overwritten is safe in ascending order. */
    for (int r = 0; r < K - 1; r++) {
        const int src = n - (K - 1) + r;
        const float *in = src >= 0 ? x + (size_t)src * Lw : win + (size_t)(K - 1 + src) * Lw;
        float *dst = win + (size_t)r * Lw;
        if (in != dst) memcpy(dst + c0, in + c0, (size_t)(c1 - c0) * sizeof(float));
    }
}

/* RG-LRU scan of one sequence's n tokens for gate blocks [j0, j1), given the gates'
 * pre-activations gx, ga (rows of Lw): a = exp(-8 sigmoid(ga) softplus(param)),
 * hs = a hs + c sigmoid(gx) sqrt(1 - a^2), computed as transformers does (not via expm1); at
 * position 0 hs = c sigmoid(gx). y[t] *= hs. */
static void rg_lru(const wrk_rg_config_t *cfg, const wrk_rg_layer_t *L, int n, int64_t pos0,
                   int j0, int j1, const float *cb, const float *gx, const float *ga, float *hs,
                   float *y)
{
    const int Lw = cfg->lru_width, bw = cfg->block_w, ch0 = j0 * bw, ch1 = j1 * bw;
    for (int t = 0; t < n; t++) {
        const size_t r = (size_t)t * Lw;
        if (pos0 + t == 0) {
            /* The old state is dropped, not multiplied by 0 (a restored blob may hold
             * anything). */
            for (int ch = ch0; ch < ch1; ch++) {
                hs[ch] = cb[r + ch] / (1.0f + expf(-gx[r + ch]));
                y[r + ch] *= hs[ch];
            }
            continue;
        }
        for (int ch = ch0; ch < ch1; ch++) {
            const float log_a = L->neg8_sp[ch] / (1.0f + expf(-ga[r + ch]));
            const float gated = cb[r + ch] / (1.0f + expf(-gx[r + ch]));
            hs[ch] = expf(log_a) * hs[ch] + gated * sqrtf(1.0f - expf(2.0f * log_a));
            y[r + ch] *= hs[ch];
        }
    }
}

/* Partial RoPE of one token's heads (n_heads rows of hd) at position p: the first 2 nf dims
 * rotate in rotate-half pairs (i, i + nf); the angle is float(p) * inv_freq in fp32. */
static void rope(float *x, int n_heads, int hd, int nf, const float *inv_freq, int64_t p)
{
    const float pf = (float)p;
    for (int i = 0; i < nf; i++) {
        const float ang = pf * inv_freq[i], cs = cosf(ang), sn = sinf(ang);
        for (int h = 0; h < n_heads; h++) {
            float *r = x + (size_t)h * hd;
            const float x1 = r[i], x2 = r[i + nf];
            r[i] = x1 * cs - x2 * sn;
            r[i + nf] = x2 * cs + x1 * sn;
        }
    }
}

/* Attention items: up to RG_MQ queries — consecutive tokens of one sequence times the query
 * heads of one KV head — that read (mostly) the same ring and chunk rows. */
static int rg_items(rg_ctx_t *a, const wrk_rg_config_t *cfg, int T, int mq)
{
    const int rep = cfg->n_heads / cfg->n_kv_heads;
    const int nh = rep < mq ? rep : mq;
    int n = 0;
    for (int t = 0; t < T;) {
        int m = 1;
        while (t + m < T && a->tok_seq[t + m] == a->tok_seq[t] && (m + 1) * nh <= mq) m++;
        for (int g = 0; g < cfg->n_kv_heads; g++)
            for (int r = 0; r < rep; r += nh) {
                a->items[n++] = (wrk_attn_item_t){
                    .t0 = t, .m = m, .h0 = g * rep + r, .nh = rep - r < nh ? rep - r : nh};
            }
        t += m;
    }
    return n;
}

/* Thread 0, before the barrier ahead of the attention: fewer queries per item while that
 * leaves a thread with fewer than two (batch-1 decode of an MQA model is one item). */
static void rg_plan(rg_ctx_t *a, const wrk_rg_config_t *cfg, int T, int nth)
{
    int mq = RG_MQ;
    a->n_items = rg_items(a, cfg, T, mq);
    while (a->n_items < 2 * nth && mq > 1) {
        mq /= 2;
        a->n_items = rg_items(a, cfg, T, mq);
    }
}

/* Local attention of one item: the queries of tokens [0, m) of one sequence (positions
 * pf..pf+m-1; query j = i nh + r is token i's r-th head of KV head g, packed at qs + j hd), each
 * over the last W positions up to its own. Position j is ring row j % W below the chunk's first
 * position p0, else chunk row j - p0. The rows go to the kernels in runs that share the set of
 * queries reading them ([i_lo, i_hi]) and are contiguous in memory, ascending, so every query
 * sees exactly the calls it would alone (kernels.h, attn_scores: bitwise the same). */
static void attend(const wrk_kern_t *k, const wrk_rg_config_t *cfg, const float *qs, int m,
                   int nh, int g, int64_t pf, int64_t p0, const float *kring,
                   const float *vring, const float *kchunk, const float *vchunk, float scale,
                   float *sc, float *os)
{
    const int hd = cfg->head_dim, W = cfg->window, KVD = cfg->n_kv_heads * hd, nq = m * nh;
    const int64_t base = pf - W + 1 > 0 ? pf - W + 1 : 0, pl = pf + m - 1;
    const size_t lds = (size_t)(pl - base + 1);
    for (int pass = 0; pass < 2; pass++) {
        if (pass) {
            for (int i = 0; i < m; i++) {
                const int64_t lo = pf + i - W + 1 > 0 ? pf + i - W + 1 : 0;
                for (int r = 0; r < nh; r++)
                    k->softmax(sc + (size_t)(i * nh + r) * lds + (lo - base), (int)(pf + i - lo + 1));
            }
            memset(os, 0, (size_t)nq * hd * sizeof(float));
        }
        for (int64_t j = base; j <= pl;) {
            /* token i reads j when j <= pf + i and j > pf + i - W */
            const int il = j - pf > 0 ? (int)(j - pf) : 0;
            const int ih = j - pf + W - 1 < m - 1 ? (int)(j - pf + W - 1) : m - 1;
            /* the run: rows with the same [il, ih] (il grows by one per row past pf, ih
             * while below m - 1), contiguous in memory (the ring wraps; the chunk follows) */
            int64_t e = j <= pf ? pf + 1 : j + 1;
            if (j - pf + W - 1 < m - 1) e = j + 1;
            if (j < p0) {
                const int64_t wrap = j + (W - j % W);
                e = e < p0 ? e : p0;
                e = e < wrap ? e : wrap;
            }
            const int n = (int)(e - j);
            const size_t row = j < p0 ? (size_t)(j % W) * KVD : (size_t)(j - p0) * KVD;
            const float *kr = (j < p0 ? kring : kchunk) + row + (size_t)g * hd;
            const float *vr = (j < p0 ? vring : vchunk) + row + (size_t)g * hd;
            const int q0 = il * nh, qn = (ih + 1) * nh - q0;
            float *w = sc + (size_t)q0 * lds + (size_t)(j - base);
            if (!pass)
                k->attn_scores(qs + (size_t)q0 * hd, qn, kr, KVD, n, hd, scale, w, lds);
            else
                k->attn_mix(os + (size_t)q0 * hd, qn, vr, KVD, n, hd, w, lds);
            j = e;
        }
    }
}

/* Speculative rollback: per layer, for WRK_SPEC_MAX_TOKENS positions, what the verify pass
 * keeps -- a recurrent block: the conv input, the input and recurrent gates' pre-activations
 * (3 x [MAXT][Lw]); an attention block: the post-RoPE keys and values (2 x [MAXT][NKV hd]),
 * to rewrite the ring rows of the kept positions after the restore. */
#define MAXT WRK_SPEC_MAX_TOKENS
static size_t spec_layer_floats(const wrk_rg_config_t *cfg, bool attn)
{
    return (size_t)MAXT * (attn ? 2 * (size_t)cfg->n_kv_heads * cfg->head_dim
                                : 3 * (size_t)cfg->lru_width);
}

/* Where layer l's record starts in a slot's. */
static size_t spec_off(const wrk_rg_t *rg, int l)
{
    size_t off = 0;
    for (int i = 0; i < l; i++) off += spec_layer_floats(&rg->cfg, rg->layers[i].attn);
    return off;
}

/* Rows [0, n) of src (stride lds), columns [c0, c1), into dst (stride ldd). */
static void keep_rows(float *dst, int ldd, const float *src, int lds, int n, int c0, int c1)
{
    for (int j = 0; j < n; j++)
        memcpy(dst + (size_t)j * ldd + c0, src + (size_t)j * lds + c0,
               (size_t)(c1 - c0) * sizeof(float));
}

static void recurrent_block(wrk_cpu_fwd_t *f, const wrk_rg_layer_t *L, int ith, int nth)
{
    wrk_cpu_t *c = f->c;
    rg_ctx_t *a = f->a;
    const wrk_rg_config_t *cfg = &((const wrk_rg_t *)c->m->priv)->cfg;
    const int D = cfg->hidden, Lw = cfg->lru_width, K = cfg->d_conv, bw = cfg->block_w, T = f->T;
    int t0, t1, c0, c1, j0, j1;
    wrk_split(T, 1, ith, nth, &t0, &t1);
    wrk_split(Lw, 16, ith, nth, &c0, &c1);
    wrk_split(cfg->n_heads, 1, ith, nth, &j0, &j1);

    const size_t rec_off = spec_off(c->m->priv, (int)(L - ((const wrk_rg_t *)c->m->priv)->layers));
    wrk_cpu_mm(c, ith, nth, &L->lin_y, a->u, D, T, a->yb, Lw, L->y_b, false);
    wrk_cpu_mm(c, ith, nth, &L->lin_x, a->u, D, T, a->xb, Lw, L->x_b, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) gelu_tanh_row(c->k, a->yb + (size_t)t * Lw, Lw);
    if (c1 > c0)
        for (int s = 0; s < f->n_seqs; s++) {
            float *keep = wrk_cpu_spec_rec(c, &f->seqs[s]);
            if (keep)
                keep_rows(keep + rec_off, Lw, a->xb + (size_t)a->seq_t0[s] * Lw, Lw,
                          f->seqs[s].n_tokens, c0, c1);
            float *win = wrk_cpu_slot(c, f->seqs[s].slot) + L->state_off;
            if (a->seq_pos0[s] == 0) /* a sequence starts from zero padding, whatever the slot */
                for (int r = 0; r < K - 1; r++)
                    memset(win + (size_t)r * Lw + c0, 0, (size_t)(c1 - c0) * sizeof(float));
            const size_t r = (size_t)a->seq_t0[s] * Lw;
            conv(f->seqs[s].n_tokens, c0, c1, Lw, K, a->xb + r, L->conv_w, L->conv_b, win,
                 a->cb + r);
        }
    wrk_pool_barrier(c->pool);
    /* Gates of this thread's blocks for every token of the batch (they read only the conv
     * output), then the scan of those blocks: no barrier between the two. */
    for (int j = j0; j < j1; j++) {
        const size_t bo = (size_t)j * bw;
        const wrk_mat_t Wx = {.dt = WRK_DT_F32, .data = L->gate_x + bo * bw, .rows = bw,
                              .cols = bw};
        const wrk_mat_t Wa = {.dt = WRK_DT_F32, .data = L->gate_a + bo * bw, .rows = bw,
                              .cols = bw};
        wrk_matmul(c->k, wrk_cpu_scratch(c, ith), &Wx, 0, bw, a->cb + bo, Lw, T, a->xb + bo, Lw,
                   L->gate_xb + bo, false);
        wrk_matmul(c->k, wrk_cpu_scratch(c, ith), &Wa, 0, bw, a->cb + bo, Lw, T, a->ga + bo, Lw,
                   L->gate_ab + bo, false);
    }
    if (j1 > j0)
        for (int s = 0; s < f->n_seqs; s++) {
            float *hs = wrk_cpu_slot(c, f->seqs[s].slot) + L->state_off + (size_t)(K - 1) * Lw;
            const size_t r = (size_t)a->seq_t0[s] * Lw;
            float *keep = wrk_cpu_spec_rec(c, &f->seqs[s]);
            if (keep) {
                keep = keep + rec_off + (size_t)MAXT * Lw;
                keep_rows(keep, Lw, a->xb + r, Lw, f->seqs[s].n_tokens, j0 * bw, j1 * bw);
                keep_rows(keep + (size_t)MAXT * Lw, Lw, a->ga + r, Lw, f->seqs[s].n_tokens,
                          j0 * bw, j1 * bw);
            }
            rg_lru(cfg, L, f->seqs[s].n_tokens, a->seq_pos0[s], j0, j1, a->cb + r, a->xb + r,
                   a->ga + r, hs, a->yb + r);
        }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->lin_out, a->yb, Lw, T, c->res, D, L->out_b, true);
    wrk_pool_barrier(c->pool);
}

static void attention_block(wrk_cpu_fwd_t *f, const wrk_rg_layer_t *L, int ith, int nth)
{
    wrk_cpu_t *c = f->c;
    rg_ctx_t *a = f->a;
    const wrk_rg_t *rg = c->m->priv;
    const wrk_rg_config_t *cfg = &rg->cfg;
    const int D = cfg->hidden, T = f->T, NQ = cfg->n_heads, hd = cfg->head_dim;
    const int QD = NQ * hd, KVD = cfg->n_kv_heads * hd, W = cfg->window;
    const int per_kv = NQ / cfg->n_kv_heads;
    const size_t ring = wrk_rg_ring_floats(cfg);
    const float scale = (float)(1.0 / sqrt((double)hd));
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);

    wrk_cpu_mm(c, ith, nth, &L->q, a->u, D, T, a->q, QD, L->q_b, false);
    wrk_cpu_mm(c, ith, nth, &L->k, a->u, D, T, a->k, KVD, L->k_b, false);
    wrk_cpu_mm(c, ith, nth, &L->v, a->u, D, T, a->v, KVD, L->v_b, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) {
        rope(a->q + (size_t)t * QD, NQ, hd, cfg->rot_freqs, rg->inv_freq, a->tok_pos[t]);
        rope(a->k + (size_t)t * KVD, cfg->n_kv_heads, hd, cfg->rot_freqs, rg->inv_freq,
             a->tok_pos[t]);
    }
    if (ith == 0) rg_plan(a, cfg, T, nth);
    wrk_pool_barrier(c->pool);
    int w0, w1;
    wrk_split(a->n_items, 1, ith, nth, &w0, &w1);
    float *scores = a->scores + (size_t)ith * RG_MQ * ((size_t)W + RG_MQ);
    float *qs = a->qo + (size_t)ith * 2 * RG_MQ * hd, *os = qs + (size_t)RG_MQ * hd;
    for (int i = w0; i < w1; i++) {
        const wrk_attn_item_t *it = &a->items[i];
        const int t0 = it->t0, m = it->m, h0 = it->h0, nh = it->nh;
        const int s = a->tok_seq[t0];
        const float *st = wrk_cpu_slot(c, f->seqs[s].slot) + L->state_off;
        const size_t r0 = (size_t)a->seq_t0[s];
        for (int j = 0; j < m; j++)
            memcpy(qs + (size_t)j * nh * hd, a->q + (size_t)(t0 + j) * QD + (size_t)h0 * hd,
                   (size_t)nh * hd * sizeof(float));
        attend(c->k, cfg, qs, m, nh, h0 / per_kv, a->tok_pos[t0], a->seq_pos0[s], st, st + ring,
               a->k + r0 * KVD, a->v + r0 * KVD, scale, scores, os);
        for (int j = 0; j < m; j++)
            memcpy(a->att + (size_t)(t0 + j) * QD + (size_t)h0 * hd, os + (size_t)j * nh * hd,
                   (size_t)nh * hd * sizeof(float));
    }
    wrk_pool_barrier(c->pool);
    /* Every query has read the rings: store the chunk's last min(n, W) keys and values (a
     * verify entry also keeps all of them for its rollback). */
    const size_t rec_off = spec_off(rg, (int)(L - rg->layers));
    for (int t = t0; t < t1; t++) {
        const int s = a->tok_seq[t];
        float *keep = wrk_cpu_spec_rec(c, &f->seqs[s]);
        if (keep) {
            const size_t j = (size_t)(t - a->seq_t0[s]);
            memcpy(keep + rec_off + j * KVD, a->k + (size_t)t * KVD, (size_t)KVD * sizeof(float));
            memcpy(keep + rec_off + (MAXT + j) * KVD, a->v + (size_t)t * KVD,
                   (size_t)KVD * sizeof(float));
        }
        const int64_t end = a->seq_pos0[s] + f->seqs[s].n_tokens, p = a->tok_pos[t];
        if (p < end - W) continue;
        float *st = wrk_cpu_slot(c, f->seqs[s].slot) + L->state_off;
        const size_t row = (size_t)(p % W) * KVD;
        memcpy(st + row, a->k + (size_t)t * KVD, (size_t)KVD * sizeof(float));
        memcpy(st + ring + row, a->v + (size_t)t * KVD, (size_t)KVD * sizeof(float));
    }
    wrk_cpu_mm(c, ith, nth, &L->o, a->att, QD, T, c->res, D, L->o_b, true);
    wrk_pool_barrier(c->pool);
}

static void mlp_block(wrk_cpu_fwd_t *f, const wrk_rg_layer_t *L, int ith, int nth)
{
    wrk_cpu_t *c = f->c;
    rg_ctx_t *a = f->a;
    const wrk_rg_config_t *cfg = &((const wrk_rg_t *)c->m->priv)->cfg;
    const int D = cfg->hidden, M = cfg->mlp, T = f->T;
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        c->k->rmsnorm(a->u + (size_t)t * D, c->res + (size_t)t * D, L->cnorm_w, D, cfg->eps);
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->gate, a->u, D, T, a->g, M, L->gate_b, false);
    wrk_cpu_mm(c, ith, nth, &L->up, a->u, D, T, a->up, M, L->up_b, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) {
        float *gr = a->g + (size_t)t * M;
        const float *ur = a->up + (size_t)t * M;
        gelu_tanh_row(c->k, gr, M);
        for (int i = 0; i < M; i++) gr[i] *= ur[i];
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->down, a->g, M, T, c->res, D, L->down_b, true);
    wrk_pool_barrier(c->pool);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    rg_ctx_t *a = f->a;
    const wrk_rg_t *rg = c->m->priv;
    const int D = rg->cfg.hidden;
    int t0, t1;
    wrk_cpu_embed(c, ith, nth, f->seqs, f->n_seqs);
    wrk_split(f->T, 1, ith, nth, &t0, &t1);
    wrk_pool_barrier(c->pool);
    for (int l = 0; l < rg->cfg.n_layers; l++) {
        const wrk_rg_layer_t *L = &rg->layers[l];
        for (int t = t0; t < t1; t++)
            c->k->rmsnorm(a->u + (size_t)t * D, c->res + (size_t)t * D, L->tnorm_w, D,
                          rg->cfg.eps);
        wrk_pool_barrier(c->pool);
        if (L->attn)
            attention_block(f, L, ith, nth);
        else
            recurrent_block(f, L, ith, nth);
        mlp_block(f, L, ith, nth);
    }
    wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

/* Before the pool runs: every token's position and sequence (serially, once per step). */
static void prepare(wrk_cpu_fwd_t *f)
{
    rg_ctx_t *a = f->a;
    int t = 0;
    for (int s = 0; s < f->n_seqs; s++) {
        a->seq_t0[s] = t;
        a->seq_pos0[s] = wrk_rg_pos_get(wrk_cpu_slot(f->c, f->seqs[s].slot));
        for (int j = 0; j < f->seqs[s].n_tokens; j++, t++) {
            a->tok_pos[t] = a->seq_pos0[s] + j;
            a->tok_seq[t] = s;
        }
    }
}

/* After it: each slot's position advances by its tokens. */
static void finish(wrk_cpu_fwd_t *f)
{
    const rg_ctx_t *a = f->a;
    for (int s = 0; s < f->n_seqs; s++)
        wrk_rg_pos_set(wrk_cpu_slot(f->c, f->seqs[s].slot), a->seq_pos0[s] + f->seqs[s].n_tokens);
}

/* Rows of a ring a verify of n tokens overwrites: min(n, W). */
static int ring_rows(const wrk_rg_config_t *cfg, int n)
{
    return n < cfg->window ? n : cfg->window;
}

static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    const wrk_rg_t *rg = c->m->priv;
    const wrk_rg_config_t *cfg = &rg->cfg;
    *rec = spec_off(rg, cfg->n_layers);
    *tmp = (size_t)MAXT * 2 * cfg->lru_width; /* conv output, RG-LRU output */
    /* The position, every recurrent block's window and state, and per attention block only
     * the ring rows (keys and values) a verify entry overwrites, not the rings. */
    *saved = WRK_RG_POS_FLOATS + (size_t)cfg->n_rec * wrk_rg_rec_floats(cfg) +
             (size_t)cfg->n_attn * 2 * ring_rows(cfg, MAXT) * cfg->n_kv_heads * cfg->head_dim;
}

/* n floats from st to saved (save) or back; the next place in saved. */
static float *move(float *saved, float *st, size_t n, bool save)
{
    memcpy(save ? saved : st, save ? st : saved, n * sizeof(float));
    return saved + n;
}

/* Copies the part of the state a verify of n tokens from the slot's position changes between
 * the slot and `saved` (to saved when save, else back). */
static void spec_move(struct wrk_cpu *c, int slot, int n, float *saved, bool save)
{
    const wrk_rg_t *rg = c->m->priv;
    const wrk_rg_config_t *cfg = &rg->cfg;
    const int W = cfg->window, KVD = cfg->n_kv_heads * cfg->head_dim, rows = ring_rows(cfg, n);
    const size_t ring = wrk_rg_ring_floats(cfg);
    float *st = wrk_cpu_slot(c, slot);
    /* The position first: on restore it is the verify's start again before the rows below. */
    saved = move(saved, st, WRK_RG_POS_FLOATS, save);
    const int64_t pos0 = wrk_rg_pos_get(save ? st : saved - WRK_RG_POS_FLOATS);
    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_rg_layer_t *L = &rg->layers[l];
        if (!L->attn) {
            saved = move(saved, st + L->state_off, wrk_rg_rec_floats(cfg), save);
            continue;
        }
        for (int j = n - rows; j < n; j++) {
            const size_t row = (size_t)((pos0 + j) % W) * KVD;
            saved = move(saved, st + L->state_off + row, (size_t)KVD, save);
            saved = move(saved, st + L->state_off + ring + row, (size_t)KVD, save);
        }
    }
}

static void spec_save(struct wrk_cpu *c, int slot, int n, float *saved)
{
    spec_move(c, slot, n, saved, true);
}

static void spec_restore(struct wrk_cpu *c, int slot, int n, const float *saved)
{
    spec_move(c, slot, n, (float *)saved, false);
}

/* On the restored state: the recurrent blocks rerun conv and RG-LRU over the kept positions;
 * the attention blocks write those positions' keys and values back into the ring rows the
 * verify pass had overwritten; the position advances by n. */
static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    wrk_cpu_t *c = r->c;
    const wrk_rg_t *rg = c->m->priv;
    const wrk_rg_config_t *cfg = &rg->cfg;
    const int Lw = cfg->lru_width, K = cfg->d_conv, W = cfg->window;
    const int KVD = cfg->n_kv_heads * cfg->head_dim;
    const size_t ring = wrk_rg_ring_floats(cfg);
    float *st = wrk_cpu_slot(c, r->slot);
    const int64_t pos0 = wrk_rg_pos_get(st), end = pos0 + r->n;
    float *cb = r->tmp, *y = r->tmp + (size_t)MAXT * Lw;
    int c0, c1, j0, j1, q0, q1;
    wrk_split(Lw, 16, ith, nth, &c0, &c1);
    wrk_split(cfg->n_heads, 1, ith, nth, &j0, &j1);
    wrk_split(r->n, 1, ith, nth, &q0, &q1);
    size_t off = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_rg_layer_t *L = &rg->layers[l];
        const float *rec = r->rec + off;
        off += spec_layer_floats(cfg, L->attn);
        if (L->attn) {
            for (int j = q0; j < q1; j++) {
                const int64_t p = pos0 + j;
                if (p < end - W) continue;
                const size_t row = (size_t)(p % W) * KVD;
                memcpy(st + L->state_off + row, rec + (size_t)j * KVD, (size_t)KVD * sizeof(float));
                memcpy(st + L->state_off + ring + row, rec + (size_t)(MAXT + j) * KVD,
                       (size_t)KVD * sizeof(float));
            }
            continue;
        }
        float *win = st + L->state_off;
        if (c1 > c0) {
            if (pos0 == 0)
                for (int k = 0; k < K - 1; k++)
                    memset(win + (size_t)k * Lw + c0, 0, (size_t)(c1 - c0) * sizeof(float));
            conv(r->n, c0, c1, Lw, K, rec, L->conv_w, L->conv_b, win, cb);
        }
        wrk_pool_barrier(c->pool);
        if (j1 > j0)
            rg_lru(cfg, L, r->n, pos0, j0, j1, cb, rec + (size_t)MAXT * Lw,
                   rec + (size_t)2 * MAXT * Lw, win + (size_t)(K - 1) * Lw, y);
        wrk_pool_barrier(c->pool);
    }
    wrk_pool_barrier(c->pool); /* every thread has read pos0 */
    if (ith == 0) wrk_rg_pos_set(st, end);
}

const wrk_cpu_family_i wrk_cpu_recurrentgemma = {
    .family = WRK_FAMILY_RECURRENTGEMMA,
    .init = cpu_init,
    .free = cpu_free,
    .prepare = prepare,
    .forward = forward,
    .finish = finish,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
    .spec_save = spec_save,
    .spec_restore = spec_restore,
};
