/* workers/cpu: the Qwen3-Next forward pass over a ragged batch. All sequences' tokens are
 * stacked into one [T x H] activation so every projection is one matmul over the batch.
 * Gated DeltaNet layers run the short causal conv and the chunked gated delta rule over
 * 64-token blocks at absolute positions (the kernels' gdn_chunk / gdn_close: a token's
 * arithmetic depends only on the block's start state and its earlier tokens, so logits are
 * bit-identical for any chunking or batch); attention layers append K/V to the slot's paged
 * KV blocks and attend causally over them; each layer then runs its dense MLP or its MoE
 * (tokens grouped per expert so each expert's weights are read once per step). Verify entries
 * keep each GDN layer's conv inputs and in_proj_ba rows; the rollback reruns the conv and the
 * delta rule over the kept positions from them (spec_replay). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/cpu_int.h"
#include "workers/cpu/granite_cpu.h"
#include "workers/families/qwen3next.h"

_Static_assert(WRK_QWEN3NEXT_GDN_BLOCK == WRK_GDN_BLOCK, "one block size");

typedef struct q3n_ctx {
    float *u, *o, *f; /* [T x H]: normed sublayer input, sublayer output, MLP output */
    /* Gated DeltaNet */
    float *pz;   /* [T x (2 key_dim + 2 value_dim)] in_proj_qkvz */
    float *pba;  /* [T x 2 nv] in_proj_ba */
    float *xc;   /* [T x C] conv input, channels q | k | v */
    float *yc;   /* [T x C] conv output (SiLU) */
    float *z;    /* [T x value_dim] output gate */
    float *core; /* [T x value_dim] gated-normed delta-rule output */
    float *hs;   /* per thread: the delta rule's scratch (gdn_hs_floats) */
    size_t hs_floats;
    bool recurrent; /* RCD_GDN_RECURRENT=1: the token-by-token form (bench/test switch) */
    /* attention */
    float *qg;          /* [T x 2 qd]: per head query, gate */
    wrk_attn_bufs_t ab; /* q (normed, rotated), k, v, att, scores, positions */
    /* MLPs */
    float *t1, *t2;    /* [T x max(ffn, shared)] gate, up */
    float *sg;         /* [T] shared expert gate logit */
    wrk_moe_bufs_t mb; /* MoE: Granite's grouped top-k buffers (granite_cpu.h) */
} q3n_ctx_t;

static void cpu_free(void *ctx)
{
    q3n_ctx_t *a = ctx;
    if (!a) return;
    void *bufs[] = {a->u, a->o,    a->f,  a->pz, a->pba, a->xc, a->yc,
                    a->z, a->core, a->hs, a->qg, a->t1,  a->t2, a->sg};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    wrk_moe_bufs_free(&a->mb);
    wrk_attn_bufs_free(&a->ab);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->hidden;
    const size_t qd = (size_t)cfg->n_q * cfg->head_dim;
    const size_t C = cfg->conv_dim, VD = cfg->value_dim, E = cfg->n_experts;
    size_t FM = cfg->ffn_dim > cfg->shared_dim ? cfg->ffn_dim : cfg->shared_dim;
    bool any_moe = false;
    for (int l = 0; l < cfg->n_layers; l++)
        any_moe |= cfg->moe[l];
    q3n_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    bool ok = (a->u = wrk_cpu_alloc_floats(T * H)) && (a->o = wrk_cpu_alloc_floats(T * H)) &&
              (a->f = wrk_cpu_alloc_floats(T * H)) && (a->t1 = wrk_cpu_alloc_floats(T * FM)) &&
              (a->t2 = wrk_cpu_alloc_floats(T * FM));
    if (ok && cfg->n_gdn) {
        const size_t B = WRK_GDN_BLOCK, dk = (size_t)cfg->dk, dv = (size_t)cfg->dv;
        /* queries, outputs, betas of a block's run; gdn_chunk's / gdn_close's scratch; the
         * recurrent form's q, k */
        const size_t kscr = 2 * B * (dv + 1) > B * (dk + 2) ? 2 * B * (dv + 1) : B * (dk + 2);
        a->hs_floats = B * dk + B * dv + B + kscr + 2 * dk;
        const char *rec = getenv("RCD_GDN_RECURRENT");
        a->recurrent = rec && strcmp(rec, "1") == 0;
        ok = (a->pz = wrk_cpu_alloc_floats(T * (2 * cfg->key_dim + 2 * VD))) &&
             (a->pba = wrk_cpu_alloc_floats(T * 2 * cfg->nv)) &&
             (a->xc = wrk_cpu_alloc_floats(T * C)) && (a->yc = wrk_cpu_alloc_floats(T * C)) &&
             (a->z = wrk_cpu_alloc_floats(T * VD)) && (a->core = wrk_cpu_alloc_floats(T * VD)) &&
             (a->hs = wrk_cpu_alloc_floats((size_t)c->n_threads * a->hs_floats));
    }
    if (ok && cfg->n_attn)
        ok = (a->qg = wrk_cpu_alloc_floats(T * 2 * qd)) &&
             wrk_attn_bufs_alloc(c, cfg->n_q, cfg->n_kv, cfg->head_dim, T, &a->ab) == 0;
    if (ok && any_moe)
        ok = (a->sg = wrk_cpu_alloc_floats(T)) &&
             wrk_moe_bufs_alloc((int)H, cfg->expert_dim, (int)E, cfg->top_k, T, &a->mb) == 0;
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

static inline float sigmoid(float v)
{
    return 1.f / (1.f + expf(-v));
}

/* torch's softplus (beta 1, threshold 20). */
static inline float softplus(float v)
{
    return v > 20.f ? v : log1pf(expf(v));
}

/* x * rsqrt(sum(x^2) + 1e-6) into y: transformers' l2norm (the FLA one). */
static void l2norm(float *y, const float *x, int n)
{
    float ss = 0.f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss + 1e-6f);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * r;
}

/* ---- Gated DeltaNet ----------------------------------------------------------------------- */

/* "gdn.n_pending" of a slot's state st: the open block's tokens. */
static uint64_t *q3n_pending_at(const wrk_cpu_t *c, float *st)
{
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    return (uint64_t *)(void *)(st + (size_t)cfg->n_gdn * wrk_qwen3next_layer_state_floats(cfg));
}
static uint64_t q3n_pending(const wrk_cpu_t *c, float *st)
{
    uint64_t n;
    memcpy(&n, q3n_pending_at(c, st), sizeof n);
    return n < WRK_GDN_BLOCK ? n : 0;
}

/* A verify pass keeps per GDN layer what its recurrence reads from the matmuls, for
 * WRK_SPEC_MAX_TOKENS positions: the conv inputs [.. x conv_dim] (q | k | v before the conv),
 * then the in_proj_ba rows [.. x 2 nv] (β and the decay's inputs). */
static size_t q3n_spec_layer_floats(const wrk_qwen3next_config_t *cfg)
{
    return (size_t)WRK_SPEC_MAX_TOKENS * ((size_t)cfg->conv_dim + 2 * (size_t)cfg->nv);
}

/* The gated delta rule of value head h over n tokens of one sequence whose layer state (after
 * the conv window) is lay and whose open block holds j rows: y the tokens' conv outputs
 * (stride conv_dim), ba their in_proj_ba rows (stride 2 nv); calls split at block boundaries
 * as the absolute positions fall. With z, the gated RMSNorm of the outputs into core (stride
 * value_dim); without (the speculative replay), the outputs are dropped. hs: the thread's
 * scratch. The forward and the replay both run this, so their arithmetic is the same. */
static void gdn_rule(const wrk_cpu_t *c, const q3n_ctx_t *a, const wrk_qwen3next_layer_t *L,
                     float *lay, int j, int h, int n_tok, const float *y0, const float *ba0,
                     const float *z0, float *core, float *hs)
{
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    const int C = cfg->conv_dim, NK = cfg->nk, NV = cfg->nv, dk = cfg->dk, dv = cfg->dv;
    const int r = NV / NK, kh = h / r, KD = cfg->key_dim, VD = cfg->value_dim;
    const size_t B = WRK_GDN_BLOCK, SD = (size_t)dk * dv;
    float *qb = hs, *ob = qb + B * dk, *bb = ob + B * dv, *ks = bb + B;
    float *qn = hs + a->hs_floats - 2 * (size_t)dk, *kn = qn + dk;
    const float qscale = 1.f / sqrtf((float)dk);
    float *S = lay + (size_t)h * SD;
    float *Kb = lay + NV * SD + (size_t)h * B * dk;
    float *Ub = lay + NV * SD + NV * B * dk + (size_t)h * B * dv;
    float *G = lay + NV * SD + NV * B * (dk + dv) + (size_t)h * B;
    const float A = L->A[h], dtb = L->dt_b[h];
    const float *gn = L->gnorm;
    for (int j0 = 0; j0 < n_tok;) {
        /* tokens [j0, j0 + n) of the sequence: rows [j, j + n) of the open block */
        const int n = n_tok - j0 < (int)B - j ? n_tok - j0 : (int)B - j;
        for (int i = 0; i < n; i++) {
            const size_t t = (size_t)(j0 + i);
            const float *y = y0 + t * C;
            const float *ba = ba0 + t * 2 * NV + (size_t)kh * 2 * r;
            float *q = a->recurrent ? qn : qb + (size_t)i * dk;
            float *k = a->recurrent ? kn : Kb + (size_t)(j + i) * dk;
            l2norm(q, y + (size_t)kh * dk, dk);
            l2norm(k, y + KD + (size_t)kh * dk, dk);
            for (int e = 0; e < dk; e++)
                q[e] *= qscale;
            const float beta = sigmoid(ba[h % r]);
            const float g = A * softplus(ba[r + h % r] + dtb);
            if (a->recurrent) {
                c->k->delta_rule(dk, dv, S, kn, qn, y + 2 * KD + (size_t)h * dv, beta, expf(g),
                                 ob + (size_t)i * dv);
                continue;
            }
            bb[i] = beta;
            G[j + i] = (j + i > 0 ? G[j + i - 1] : 0.f) + g;
        }
        if (!a->recurrent) {
            const float *v = y0 + (size_t)j0 * C + 2 * KD + (size_t)h * dv;
            c->k->gdn_chunk(dk, dv, S, j, j + n, Kb, Ub, G, qb, v, C, bb, ob, ks);
            j += n;
            if (j == (int)B) {
                c->k->gdn_close(dk, dv, S, (int)B, Kb, Ub, G, ks);
                j = 0;
            }
        }
        /* gated RMSNorm over the head: w * (o / rms(o)) * silu(z) */
        for (int i = 0; z0 && i < n; i++) {
            const size_t t = (size_t)(j0 + i);
            const float *o = ob + (size_t)i * dv;
            float ss = 0.f;
            for (int e = 0; e < dv; e++)
                ss += o[e] * o[e];
            const float rs = 1.f / sqrtf(ss / (float)dv + cfg->eps);
            const float *zz = z0 + t * VD + (size_t)h * dv;
            float *out = core + t * VD + (size_t)h * dv;
            for (int e = 0; e < dv; e++)
                out[e] = gn[e] * (o[e] * rs) * silu(zz[e]);
        }
        j0 += n;
    }
}

/* One GDN layer: in_proj_qkvz and in_proj_ba, the per-key-head split into conv channels
 * q | k | v and the gate z, the depthwise causal conv (state: the last K-1 inputs) with SiLU,
 * then per (sequence, value head) the chunked gated delta rule (the open block's rows in the
 * state, a call split at block boundaries; the token-by-token form with RCD_GDN_RECURRENT=1),
 * the gated RMSNorm and out_proj into a->o. Ends after a barrier. */
static void gdn(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_qwen3next_layer_t *L)
{
    wrk_cpu_t *c = f->c;
    q3n_ctx_t *a = f->a;
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    const int H = cfg->hidden, T = f->T, C = cfg->conv_dim, K = cfg->d_conv;
    const int NK = cfg->nk, NV = cfg->nv, dk = cfg->dk, dv = cfg->dv, r = NV / NK;
    const int KD = cfg->key_dim, VD = cfg->value_dim, PZ = 2 * KD + 2 * VD;
    const size_t lay_off = (size_t)L->idx * wrk_qwen3next_layer_state_floats(cfg);
    const size_t conv_n = wrk_qwen3next_conv_floats(cfg);
    int t0, t1;

    wrk_cpu_mm(c, ith, nth, &L->qkvz, a->u, H, T, a->pz, PZ, NULL, false);
    wrk_cpu_mm(c, ith, nth, &L->ba, a->u, H, T, a->pba, 2 * NV, NULL, false);
    wrk_pool_barrier(c->pool);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    const int grp = 2 * dk + 2 * r * dv;
    for (int t = t0; t < t1; t++) {
        const float *p = a->pz + (size_t)t * PZ;
        float *x = a->xc + (size_t)t * C, *z = a->z + (size_t)t * VD;
        for (int kh = 0; kh < NK; kh++) {
            const float *g = p + (size_t)kh * grp;
            memcpy(x + (size_t)kh * dk, g, (size_t)dk * sizeof(float));
            memcpy(x + KD + (size_t)kh * dk, g + dk, (size_t)dk * sizeof(float));
            memcpy(x + 2 * KD + (size_t)kh * r * dv, g + 2 * dk, (size_t)r * dv * sizeof(float));
            memcpy(z + (size_t)kh * r * dv, g + 2 * dk + r * dv, (size_t)r * dv * sizeof(float));
        }
    }
    wrk_pool_barrier(c->pool);

    /* The conv (the kernels' causal depthwise conv + SiLU, no bias), channels split between
     * threads in blocks of 16 so a channel's vector/scalar path does not depend on T. */
    int c0, c1;
    wrk_split(C, 16, ith, nth, &c0, &c1);
    for (int s = 0, tb = 0; s < f->n_seqs; tb += f->seqs[s].n_tokens, s++) {
        const int n = f->seqs[s].n_tokens;
        float *keep = wrk_cpu_spec_rec(c, &f->seqs[s]);
        if (keep) { /* a verify entry: the conv inputs and the gate inputs, for the replay */
            keep += (size_t)L->idx * q3n_spec_layer_floats(cfg);
            for (int i = 0; i < n && c1 > c0; i++)
                memcpy(keep + (size_t)i * C + c0, a->xc + (size_t)(tb + i) * C + c0,
                       (size_t)(c1 - c0) * sizeof(float));
            if (ith == 0)
                memcpy(keep + (size_t)WRK_SPEC_MAX_TOKENS * C, a->pba + (size_t)tb * 2 * NV,
                       (size_t)n * 2 * NV * sizeof(float));
        }
        c->k->conv_silu(n, c0, c1, C, K, a->xc + (size_t)tb * C, C, L->conv_w, NULL,
                        wrk_cpu_slot(c, f->seqs[s].slot) + lay_off, a->yc + (size_t)tb * C);
    }
    wrk_pool_barrier(c->pool);

    /* The delta rule, one (sequence, value head) per work item. */
    int w0, w1;
    wrk_split(f->n_seqs * NV, 1, ith, nth, &w0, &w1);
    float *hs = a->hs + (size_t)ith * a->hs_floats;
    for (int w = w0; w < w1; w++) {
        const int s = w / NV, h = w % NV;
        int tb = 0;
        for (int i = 0; i < s; i++)
            tb += f->seqs[i].n_tokens;
        float *st = wrk_cpu_slot(c, f->seqs[s].slot);
        gdn_rule(c, a, L, st + lay_off + conv_n, (int)q3n_pending(c, st), h, f->seqs[s].n_tokens,
                 a->yc + (size_t)tb * C, a->pba + (size_t)tb * 2 * NV, a->z + (size_t)tb * VD,
                 a->core + (size_t)tb * VD, hs);
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->out, a->core, VD, T, a->o, H, NULL, false);
    wrk_pool_barrier(c->pool);
}

/* ---- gated full attention ----------------------------------------------------------------- */

/* Zero-centred RMSNorm of one head (w holds 1 + w), in place. */
static void head_norm(float *x, const float *w, int n, float eps)
{
    float ss = 0.f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++)
        x[i] = (x[i] * r) * w[i];
}

/* Rotate-half RoPE of the first `rot` dims of one head in place. */
static void rope(float *x, int rot, int32_t pos, const float *inv_freq)
{
    const int h2 = rot / 2;
    for (int i = 0; i < h2; i++) {
        const float ang = (float)pos * inv_freq[i];
        const float cs = cosf(ang), sn = sinf(ang);
        const float x0 = x[i], x1 = x[i + h2];
        x[i] = x0 * cs - x1 * sn;
        x[i + h2] = x1 * cs + x0 * sn;
    }
}

/* One attention layer: q_proj (query and gate per head), k, v; q_norm / k_norm, partial RoPE,
 * K/V appended to the paged cache, causal softmax attention (scale hd^-1/2, GQA), the output
 * times sigmoid(gate), o_proj into a->o. Ends after a barrier. */
static void attention(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_qwen3next_layer_t *L)
{
    wrk_cpu_t *c = f->c;
    q3n_ctx_t *a = f->a;
    const wrk_qwen3next_t *g = c->m->priv;
    const wrk_qwen3next_config_t *cfg = &g->cfg;
    wrk_kv_t *kv = c->kv;
    const int H = cfg->hidden, hd = cfg->head_dim, NQ = cfg->n_q, NKV = cfg->n_kv;
    const int qd = NQ * hd, kvd = NKV * hd, T = f->T;
    const float scale = 1.f / sqrtf((float)hd);
    int t0, t1;

    wrk_cpu_mm(c, ith, nth, &L->q, a->u, H, T, a->qg, 2 * qd, L->qb, false);
    wrk_cpu_mm(c, ith, nth, &L->k, a->u, H, T, a->ab.k, kvd, L->kb, false);
    wrk_cpu_mm(c, ith, nth, &L->v, a->u, H, T, a->ab.v, kvd, L->vb, false);
    wrk_pool_barrier(c->pool);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        const int slot = a->ab.tok_slot[t];
        const int32_t pos = a->ab.tok_pos[t];
        float *q = a->ab.q + (size_t)t * qd, *k = a->ab.k + (size_t)t * kvd;
        for (int h = 0; h < NQ; h++) {
            float *qh = q + (size_t)h * hd;
            memcpy(qh, a->qg + (size_t)t * 2 * qd + (size_t)h * 2 * hd, (size_t)hd * sizeof(float));
            head_norm(qh, L->q_norm, hd, cfg->eps);
            rope(qh, cfg->rot_dim, pos, g->inv_freq);
        }
        for (int h = 0; h < NKV; h++) {
            head_norm(k + (size_t)h * hd, L->k_norm, hd, cfg->eps);
            rope(k + (size_t)h * hd, cfg->rot_dim, pos, g->inv_freq);
        }
        memcpy(wrk_kv_at(kv, slot, L->idx, 0, pos), k, (size_t)kvd * sizeof(float));
        memcpy(wrk_kv_at(kv, slot, L->idx, 1, pos), a->ab.v + (size_t)t * kvd,
               (size_t)kvd * sizeof(float));
    }
    if (ith == 0) wrk_attn_plan(&a->ab, T, NQ, NKV, nth);
    wrk_pool_barrier(c->pool);

    wrk_attn_core(c, ith, nth, &a->ab, L->idx, NQ, NKV, hd, scale);
    wrk_pool_barrier(c->pool);
    int w0, w1;
    wrk_split(T * NQ, 1, ith, nth, &w0, &w1);
    for (int w = w0; w < w1; w++) {
        const int t = w / NQ, h = w % NQ;
        float *out = a->ab.att + (size_t)t * qd + (size_t)h * hd;
        const float *gate = a->qg + (size_t)t * 2 * qd + (size_t)h * 2 * hd + hd;
        for (int i = 0; i < hd; i++)
            out[i] *= sigmoid(gate[i]);
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->o, a->ab.att, qd, T, a->o, H, L->ob, false);
    wrk_pool_barrier(c->pool);
}

/* ---- MLP and MoE -------------------------------------------------------------------------- */

/* down(silu(gate x) * up x) of width F into y. Ends after a barrier. */
static void swiglu(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_mat_t *gate, const wrk_mat_t *up,
                   const wrk_mat_t *down, int F, float *y)
{
    wrk_cpu_t *c = f->c;
    q3n_ctx_t *a = f->a;
    const int H = c->m->info.hidden_size, T = f->T;
    int t0, t1;
    wrk_cpu_mm(c, ith, nth, gate, a->u, H, T, a->t1, F, NULL, false);
    wrk_cpu_mm(c, ith, nth, up, a->u, H, T, a->t2, F, NULL, false);
    wrk_pool_barrier(c->pool);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        for (int i = 0; i < F; i++) {
            const size_t j = (size_t)t * F + i;
            a->t1[j] = silu(a->t1[j]) * a->t2[j];
        }
    wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, down, a->t1, F, T, y, H, NULL, false);
    wrk_pool_barrier(c->pool);
}

/* Router of one token, as transformers' Qwen3NextTopKRouter: softmax over all E logits, the k
 * largest probabilities (ties to the lower index, as torch.topk), divided by their sum when
 * norm_topk_prob; stored in ascending expert order (the order the experts are summed in). */
static void route(const float *rl, int E, int k, bool norm, int32_t *sel, float *wt)
{
    float mx = rl[0];
    for (int e = 1; e < E; e++)
        if (rl[e] > mx) mx = rl[e];
    double sum = 0.0;
    for (int e = 0; e < E; e++)
        sum += expf(rl[e] - mx);
    int32_t idx[WRK_QWEN3NEXT_MAX_TOPK];
    float lg[WRK_QWEN3NEXT_MAX_TOPK];
    int n = 0;
    for (int e = 0; e < E; e++) {
        const float v = rl[e];
        if (n == k && !(v > lg[k - 1])) continue;
        int j = n < k ? n++ : k - 1;
        while (j > 0 && v > lg[j - 1]) {
            lg[j] = lg[j - 1];
            idx[j] = idx[j - 1];
            j--;
        }
        lg[j] = v;
        idx[j] = e;
    }
    float p[WRK_QWEN3NEXT_MAX_TOPK];
    float tot = 0.f;
    for (int j = 0; j < k; j++) {
        p[j] = (float)(expf(lg[j] - mx) / sum);
        tot += p[j];
    }
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (idx[i] >= 0 && (best < 0 || idx[i] < idx[best])) best = i;
        sel[j] = idx[best];
        wt[j] = norm ? p[best] / tot : p[best];
        idx[best] = -1;
    }
}

/* Qwen3-Next's experts: separate gate and up matrices per expert. */
static void q3n_expert(const void *ctx, int e, wrk_mat_t *gate, wrk_mat_t *up, wrk_mat_t *down)
{
    const wrk_qwen3next_layer_t *L = ctx;
    *gate = L->ex_gate[e];
    *up = L->ex_up[e];
    *down = L->ex_down[e];
}

/* The sparse MoE block into a->f: the shared expert times sigmoid(shared_expert_gate x), then
 * the routed experts' weighted sum added by Granite's grouped MoE (wrk_moe_cpu). Ends after a
 * barrier. */
static void moe(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_qwen3next_layer_t *L)
{
    wrk_cpu_t *c = f->c;
    q3n_ctx_t *a = f->a;
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    const int H = cfg->hidden, F = cfg->expert_dim, S = cfg->shared_dim;
    const int E = cfg->n_experts, K = cfg->top_k, T = f->T;
    int t0, t1;
    wrk_split(T, 1, ith, nth, &t0, &t1);

    if (S > 0) swiglu(f, ith, nth, &L->gate, &L->up, &L->down, S, a->f);
    wrk_cpu_mm(c, ith, nth, &L->router, a->u, H, T, a->mb.rl, E, NULL, false);
    wrk_cpu_mm(c, ith, nth, &L->sh_gate, a->u, H, T, a->sg, 1, NULL, false);
    wrk_pool_barrier(c->pool);
    for (int t = t0; t < t1; t++) {
        route(a->mb.rl + (size_t)t * E, E, K, cfg->norm_topk, a->mb.sel + (size_t)t * K,
              a->mb.wt + (size_t)t * K);
        float *fr = a->f + (size_t)t * H;
        const float sgate = sigmoid(a->sg[t]);
        for (int i = 0; i < H; i++)
            fr[i] = S > 0 ? sgate * fr[i] : 0.f;
    }
    wrk_pool_barrier(c->pool);
    wrk_moe_cpu(c, ith, nth, &a->mb, q3n_expert, L, H, F, E, K, T, a->u, a->f);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    q3n_ctx_t *a = f->a;
    const wrk_qwen3next_t *g = c->m->priv;
    const wrk_qwen3next_config_t *cfg = &g->cfg;
    const int H = cfg->hidden, T = f->T;
    int t0, t1;

    wrk_cpu_embed(c, ith, nth, f->seqs, f->n_seqs);
    if (ith == 0 && cfg->n_attn) wrk_attn_positions(c, f->seqs, f->n_seqs, &a->ab);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    wrk_pool_barrier(c->pool);

    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_qwen3next_layer_t *L = &g->layers[l];
        for (int t = t0; t < t1; t++)
            c->k->rmsnorm(a->u + (size_t)t * H, c->res + (size_t)t * H, L->in_norm, H, cfg->eps);
        wrk_pool_barrier(c->pool);
        if (L->attn)
            attention(f, ith, nth, L);
        else
            gdn(f, ith, nth, L);
        for (int t = t0; t < t1; t++) {
            float *r = c->res + (size_t)t * H;
            const float *o = a->o + (size_t)t * H;
            for (int i = 0; i < H; i++)
                r[i] += o[i];
            c->k->rmsnorm(a->u + (size_t)t * H, r, L->post_norm, H, cfg->eps);
        }
        wrk_pool_barrier(c->pool);
        if (L->moe)
            moe(f, ith, nth, L);
        else
            swiglu(f, ith, nth, &L->gate, &L->up, &L->down, cfg->ffn_dim, a->f);
        for (int t = t0; t < t1; t++) {
            float *r = c->res + (size_t)t * H;
            const float *o = a->f + (size_t)t * H;
            for (int i = 0; i < H; i++)
                r[i] += o[i];
        }
        wrk_pool_barrier(c->pool);
    }
    /* Every GDN layer has read the open block's length: advance it. */
    if (ith == 0 && cfg->n_gdn && !a->recurrent)
        for (int s = 0; s < f->n_seqs; s++) {
            float *st = wrk_cpu_slot(c, f->seqs[s].slot);
            const uint64_t n = (q3n_pending(c, st) + (uint64_t)f->seqs[s].n_tokens) % WRK_GDN_BLOCK;
            memcpy(q3n_pending_at(c, st), &n, sizeof n);
        }
    wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)tmp;   /* the replay runs in the forward's own buffers (yc, hs) */
    (void)saved; /* room for the whole fixed state (spec_save keeps less when it can) */
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    *rec = (size_t)cfg->n_gdn * q3n_spec_layer_floats(cfg);
}

/* n floats from st to p (out) or back; returns p + n. */
static float *spec_move(float *p, float *st, size_t n, bool out)
{
    memcpy(out ? p : st, out ? st : p, n * sizeof(float));
    return p + n;
}

/* Copies between a slot's state and `saved` (to saved when `out`) what a verify of n tokens
 * from an open block of j rows changes when it closes no block: per GDN layer the conv window
 * and rows [j, j + n) of every head's pending_k / pending_u / pending_g (S is untouched), then
 * gdn.n_pending. */
static void spec_part(wrk_cpu_t *c, int slot, int j, int n, float *saved, bool out)
{
    const wrk_qwen3next_config_t *cfg = &((const wrk_qwen3next_t *)c->m->priv)->cfg;
    const size_t lay_floats = wrk_qwen3next_layer_state_floats(cfg);
    const size_t conv_n = wrk_qwen3next_conv_floats(cfg), B = WRK_GDN_BLOCK;
    const size_t NV = (size_t)cfg->nv, dk = (size_t)cfg->dk, dv = (size_t)cfg->dv;
    float *st = wrk_cpu_slot(c, slot), *p = saved;
    for (int l = 0; l < cfg->n_gdn; l++) {
        float *lay = st + (size_t)l * lay_floats;
        float *Kb = lay + conv_n + NV * dk * dv, *Ub = Kb + NV * B * dk, *G = Ub + NV * B * dv;
        p = spec_move(p, lay, conv_n, out);
        for (size_t h = 0; h < NV; h++) {
            p = spec_move(p, Kb + (h * B + (size_t)j) * dk, (size_t)n * dk, out);
            p = spec_move(p, Ub + (h * B + (size_t)j) * dv, (size_t)n * dv, out);
            p = spec_move(p, G + h * B + (size_t)j, (size_t)n, out);
        }
    }
    p = spec_move(p, (float *)(void *)q3n_pending_at(c, st), sizeof(uint64_t) / sizeof(float), out);
}

/* What a verify of n tokens may change: without a block closing inside it (the open block's j
 * rows + n < 64), spec_part's rows; else (or without GDN layers, or in the recurrent form)
 * the whole fixed state. At 80B widths a 5-token verify then copies ~9.5 MB, not 155 MB. */
static void spec_save(struct wrk_cpu *c, int slot, int n, float *saved)
{
    const q3n_ctx_t *a = c->fam_ctx;
    const int n_gdn = ((const wrk_qwen3next_t *)c->m->priv)->cfg.n_gdn;
    const int j = (int)q3n_pending(c, wrk_cpu_slot(c, slot));
    if (n_gdn && !a->recurrent && j + n < WRK_GDN_BLOCK)
        spec_part(c, slot, j, n, saved, true);
    else
        memcpy(saved, wrk_cpu_slot(c, slot), c->state_floats * sizeof(float));
}

/* spec_save's inverse, after the verify advanced gdn.n_pending to p: p >= n means it closed
 * no block (p = j + n); p < n that it did (p = j + n - 64), or the recurrent form (p = 0). */
static void spec_restore(struct wrk_cpu *c, int slot, int n, const float *saved)
{
    const q3n_ctx_t *a = c->fam_ctx;
    const int n_gdn = ((const wrk_qwen3next_t *)c->m->priv)->cfg.n_gdn;
    const int p = (int)q3n_pending(c, wrk_cpu_slot(c, slot));
    if (n_gdn && !a->recurrent && p >= n)
        spec_part(c, slot, p - n, n, (float *)saved, false);
    else
        memcpy(wrk_cpu_slot(c, slot), saved, c->state_floats * sizeof(float));
}

/* After the backend restored the slot's fixed state (n_pending included): per GDN layer, the
 * conv over the kept positions' recorded inputs (the window advances), then the delta rule of
 * every value head from the recorded gate inputs, cut at the absolute block boundaries as the
 * forward cuts them (gdn_chunk / gdn_close); n_pending advances last. Attention layers: the
 * backend truncates the KV; the MLPs keep nothing. */
static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    wrk_cpu_t *c = r->c;
    q3n_ctx_t *a = c->fam_ctx;
    const wrk_qwen3next_t *g = c->m->priv;
    const wrk_qwen3next_config_t *cfg = &g->cfg;
    const int C = cfg->conv_dim, K = cfg->d_conv, n = r->n;
    const size_t lay_floats = wrk_qwen3next_layer_state_floats(cfg);
    const size_t conv_n = wrk_qwen3next_conv_floats(cfg);
    float *st = wrk_cpu_slot(c, r->slot);
    const int j = (int)q3n_pending(c, st);
    float *hs = cfg->n_gdn ? a->hs + (size_t)ith * a->hs_floats : NULL;
    int c0, c1, h0, h1;
    wrk_split(C, 16, ith, nth, &c0, &c1);
    wrk_split(cfg->nv, 1, ith, nth, &h0, &h1);
    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_qwen3next_layer_t *L = &g->layers[l];
        if (L->attn) continue;
        const float *rec = r->rec + (size_t)L->idx * q3n_spec_layer_floats(cfg);
        float *lay = st + (size_t)L->idx * lay_floats;
        c->k->conv_silu(n, c0, c1, C, K, rec, C, L->conv_w, NULL, lay, a->yc);
        wrk_pool_barrier(c->pool);
        for (int h = h0; h < h1; h++)
            gdn_rule(c, a, L, lay + conv_n, j, h, n, a->yc, rec + (size_t)WRK_SPEC_MAX_TOKENS * C,
                     NULL, NULL, hs);
        wrk_pool_barrier(c->pool);
    }
    if (ith == 0 && cfg->n_gdn && !a->recurrent) {
        const uint64_t p = ((uint64_t)j + (uint64_t)n) % WRK_GDN_BLOCK;
        memcpy(q3n_pending_at(c, st), &p, sizeof p);
    }
}

const wrk_cpu_family_i wrk_cpu_qwen3next = {
    .family = WRK_FAMILY_QWEN3_NEXT,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
    .spec_save = spec_save,
    .spec_restore = spec_restore,
};
