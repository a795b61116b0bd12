/* workers/cpu: the Mamba2 forward pass over a ragged batch. All sequences' tokens are stacked
 * into one [T x H] activation so in_proj and out_proj are one matmul over the batch; the conv
 * (over x, B and C together) and the per-head SSM recurrence run per sequence against its own
 * state slot. Prefill uses the same sequential recurrence as decode (the kernels' `ssd`, state
 * rows in L1-sized blocks over chunks of tokens): it is algebraically what transformers'
 * chunked SSD computes (differences are fp32 rounding, ~1e-6 relative). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/mamba2_cpu.h"

typedef struct mamba2_ctx {
    float *u; /* [T x H] normed input */
    wrk_mamba2_bufs_t b;
} mamba2_ctx_t;

void wrk_mamba2_bufs_free(wrk_mamba2_bufs_t *b)
{
    free(b->zx);
    free(b->xbc);
    free(b->y);
    free(b->ss);
    *b = (wrk_mamba2_bufs_t){0};
}

int wrk_mamba2_bufs_alloc(const wrk_mamba2_config_t *cfg, size_t T, wrk_mamba2_bufs_t *b)
{
    b->zx = wrk_cpu_alloc_floats(T * cfg->proj_dim);
    b->xbc = wrk_cpu_alloc_floats(T * cfg->conv_dim);
    b->y = wrk_cpu_alloc_floats(T * cfg->inner);
    if (cfg->tp_norm_reduce) b->ss = wrk_cpu_alloc_floats(T * cfg->tp_norm_groups);
    if (!b->zx || !b->xbc || !b->y || (cfg->tp_norm_reduce && !b->ss)) {
        wrk_mamba2_bufs_free(b);
        return RCD_ENOMEM;
    }
    return 0;
}

static void cpu_free(void *ctx)
{
    mamba2_ctx_t *a = ctx;
    if (!a) return;
    free(a->u);
    wrk_mamba2_bufs_free(&a->b);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_mamba2_config_t *cfg = &((const wrk_mamba2_t *)wrk_cpu_layout(c))->cfg;
    const size_t T = (size_t)c->base.max_step_tokens;
    mamba2_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    a->u = wrk_cpu_alloc_floats(T * cfg->hidden);
    if (!a->u || wrk_mamba2_bufs_alloc(cfg, T, &a->b)) {
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

/* SSM recurrence of one sequence over T tokens for heads [h0, h1), head by head through the
 * kernel's `ssd` (kernels.h): dt = clamp(softplus(dt_raw + dt_b), lo, hi);
 * S = exp(dt A) S + dt B (x) x; y = C . S + D x. S is [NH][P][N]; head h reads B, C of group
 * h / (NH / G) (under TP, of the model's heads and groups: this rank's start at tp_head0,
 * tp_group0). */
static void ssd_scan(const wrk_kern_t *k, const wrk_mamba2_config_t *cfg,
                     const wrk_mamba2_layer_t *L, int T, int h0, int h1, const float *dt_raw,
                     int lddt, const float *xbc, float *S, float *y)
{
    const int I = cfg->inner, P = cfg->head_dim, N = cfg->d_state, G = cfg->n_groups;
    const int C = cfg->conv_dim;
    const int hpg = cfg->tp_hpg ? cfg->tp_hpg : cfg->n_heads / G;
    for (int h = h0; h < h1; h++) {
        const int g = (h + cfg->tp_head0) / hpg - cfg->tp_group0;
        k->ssd(T, P, N, xbc + (size_t)h * P, xbc + I + (size_t)g * N,
               xbc + I + (size_t)G * N + (size_t)g * N, C, dt_raw + h, lddt, L->dt_b[h], L->A[h],
               L->D[h], cfg->dt_min, cfg->dt_max, S + (size_t)h * P * N, y + (size_t)h * P, I);
    }
}

/* Gated RMSNorm of one token, in place: q = y silu(z), normalized per group of `gs`
 * channels, times w. */
static void gated_norm(float *y, const float *z, const float *w, int I, int gs, float eps)
{
    for (int g0 = 0; g0 < I; g0 += gs) {
        double ss = 0.0;
        for (int i = g0; i < g0 + gs; i++) {
            y[i] *= silu(z[i]);
            ss += (double)y[i] * y[i];
        }
        const float r = 1.f / sqrtf((float)(ss / gs) + eps);
        for (int i = g0; i < g0 + gs; i++)
            y[i] = w[i] * (y[i] * r);
    }
}

/* Falcon-H1's variants of the above: RMSNorm(y) w silu(z) per group (norm before gate), or
 * y silu(z) alone (gs == 0: no norm). */
static void norm_gate(const wrk_kern_t *k, float *y, const float *z, const float *w, int I, int gs,
                      float eps)
{
    if (!gs) {
        k->swiglu(y, z, y, (size_t)I, 1.f);
        return;
    }
    for (int g0 = 0; g0 < I; g0 += gs) {
        double ss = 0.0;
        for (int i = g0; i < g0 + gs; i++)
            ss += (double)y[i] * y[i];
        const float r = 1.f / sqrtf((float)(ss / gs) + eps);
        for (int i = g0; i < g0 + gs; i++)
            y[i] = (w[i] * (y[i] * r)) * silu(z[i]);
    }
}

/* Falcon-H1's in_proj multipliers: segments z [0, I), x [I, 2I), B, C (G N each), dt. */
static void proj_mult(const wrk_mamba2_config_t *cfg, float *zx)
{
    const int I = cfg->inner, GN = (cfg->conv_dim - I) / 2;
    const int end[5] = {I, 2 * I, 2 * I + GN, 2 * I + 2 * GN, cfg->proj_dim};
    for (int s = 0, i = 0; s < 5; s++)
        for (; i < end[s]; i++)
            zx[i] *= cfg->proj_mult[s];
}

/* Gated RMSNorm when a TP rank boundary cuts a norm group: each rank's sums of squares per
 * (token, norm group of the model) are all-reduced before the scale. Called by every pool
 * thread; tokens [t0, t1) are this thread's. */
static void gated_norm_tp(struct wrk_cpu *c, int ith, const wrk_mamba2_config_t *cfg, int T, int t0,
                          int t1, const float *zx, float *y, const float *w, float *ss)
{
    const int I = cfg->inner, Dp = cfg->proj_dim, gs = cfg->norm_group;
    const int NG = cfg->tp_norm_groups, ch0 = cfg->tp_head0 * cfg->head_dim;
    for (int t = t0; t < t1; t++) {
        float *yr = y + (size_t)t * I, *sr = ss + (size_t)t * NG;
        const float *z = zx + (size_t)t * Dp;
        memset(sr, 0, (size_t)NG * sizeof(float));
        for (int i = 0; i < I;) {
            const int g = (ch0 + i) / gs, end = (g + 1) * gs - ch0 < I ? (g + 1) * gs - ch0 : I;
            double acc = 0.0;
            for (; i < end; i++) {
                yr[i] *= silu(z[i]);
                acc += (double)yr[i] * yr[i];
            }
            sr[g] = (float)acc;
        }
    }
    wrk_pool_barrier(c->pool);
    wrk_cpu_all_reduce(c, ith, ss, (size_t)T * NG);
    for (int t = t0; t < t1; t++) {
        float *yr = y + (size_t)t * I;
        const float *sr = ss + (size_t)t * NG;
        for (int i = 0; i < I;) {
            const int g = (ch0 + i) / gs, end = (g + 1) * gs - ch0 < I ? (g + 1) * gs - ch0 : I;
            const float r = 1.f / sqrtf(sr[g] / (float)gs + cfg->eps);
            for (; i < end; i++)
                yr[i] = w[i] * (yr[i] * r);
        }
    }
}

/* Rows [0, n) of src (stride lds), columns [c0, c1), into dst (stride ldd). */
static void keep_rows(float *dst, int ldd, const float *src, int lds, int n, int c0, int c1)
{
    for (int j = 0; j < n; j++)
        memcpy(dst + (size_t)j * ldd + c0, src + (size_t)j * lds + c0,
               (size_t)(c1 - c0) * sizeof(float));
}

void wrk_mamba2_cpu_replay(struct wrk_cpu *c, int ith, int nth, const wrk_mamba2_config_t *cfg,
                           const wrk_mamba2_layer_t *L, int slot, int n, size_t state_off,
                           const float *rec, float *tmp)
{
    const int K = cfg->d_conv, C = cfg->conv_dim, NH = cfg->n_heads;
    const float *xin = rec, *dt = rec + (size_t)WRK_SPEC_MAX_TOKENS * C;
    float *xbc = tmp, *y = tmp + (size_t)WRK_SPEC_MAX_TOKENS * C;
    float *win = wrk_cpu_slot(c, slot) + state_off;
    int c0, c1, h0, h1;
    wrk_split(C, 16, ith, nth, &c0, &c1);
    wrk_split(NH, 1, ith, nth, &h0, &h1);
    if (c1 > c0) c->k->conv_silu(n, c0, c1, C, K, xin, C, L->conv_w, L->conv_b, win, xbc);
    wrk_pool_barrier(c->pool);
    if (h1 > h0)
        ssd_scan(c->k, cfg, L, n, h0, h1, dt, NH, xbc, win + wrk_mamba2_conv_floats(cfg), y);
    wrk_pool_barrier(c->pool);
}

/* rec_off NO_REC: keep nothing (the plain mixer). */
#define NO_REC ((size_t)-1)

static void mixer(struct wrk_cpu *c, int ith, int nth, const wrk_mamba2_config_t *cfg,
                  const wrk_mamba2_layer_t *L, const wrk_seq_t *seqs, int n_seqs, int T,
                  size_t state_off, size_t rec_off, const float *u, const wrk_mamba2_bufs_t *a,
                  float *out, bool acc)
{
    const wrk_kern_t *k = c->k;
    const int H = cfg->hidden, I = cfg->inner, K = cfg->d_conv, C = cfg->conv_dim;
    const int Dp = cfg->proj_dim;
    const size_t conv_floats = wrk_mamba2_conv_floats(cfg);
    int t0, t1, c0, c1, h0, h1;
    wrk_split(T, 1, ith, nth, &t0, &t1);
    wrk_split(C, 16, ith, nth, &c0, &c1);
    wrk_split(cfg->n_heads, 1, ith, nth, &h0, &h1);

    if (cfg->proj_mult_on || nth == 1) {
        wrk_cpu_mm(c, ith, nth, &L->in_proj, u, H, T, a->zx, Dp, L->in_b, false);
        wrk_pool_barrier(c->pool);
        if (cfg->proj_mult_on) {
            for (int t = t0; t < t1; t++)
                proj_mult(cfg, a->zx + (size_t)t * Dp);
            wrk_pool_barrier(c->pool);
        }
    } else {
        /* in_proj: the rows of this thread's conv channels, xBC [I + c0, I + c1), so the conv
         * reads only rows this thread wrote (no barrier between them), and its share of z
         * [0, I) and of dt [I + C, Dp) (each row's values do not depend on which thread
         * computes it) */
        int z0, z1, d0, d1;
        wrk_split(I, 16, ith, nth, &z0, &z1);
        wrk_split(Dp - I - C, 16, ith, nth, &d0, &d1);
        wrk_cpu_matmul(c, ith, &L->in_proj, z0, z1, u, H, T, a->zx, Dp, L->in_b, false);
        wrk_cpu_matmul(c, ith, &L->in_proj, I + c0, I + c1, u, H, T, a->zx, Dp, L->in_b, false);
        wrk_cpu_matmul(c, ith, &L->in_proj, I + C + d0, I + C + d1, u, H, T, a->zx, Dp, L->in_b,
                       false);
    }
    if (c1 > c0) {
        int t = 0;
        for (int s = 0; s < n_seqs; s++) {
            float *keep = rec_off != NO_REC ? wrk_cpu_spec_rec(c, &seqs[s]) : NULL;
            if (keep)
                keep_rows(keep + rec_off, C, a->zx + (size_t)t * Dp + I, Dp, seqs[s].n_tokens, c0,
                          c1);
            float *win = wrk_cpu_slot(c, seqs[s].slot) + state_off;
            k->conv_silu(seqs[s].n_tokens, c0, c1, C, K, a->zx + (size_t)t * Dp + I, Dp, L->conv_w,
                         L->conv_b, win, a->xbc + (size_t)t * C);
            t += seqs[s].n_tokens;
        }
    }
    /* the wait prefetches what this thread reads next: its heads' state of the first
     * sequence (the scan streams it) */
    wrk_cpu_pf_t pf = {0};
    if (h1 > h0 && n_seqs > 0) {
        const size_t PN = (size_t)cfg->head_dim * cfg->d_state;
        pf.p = wrk_cpu_slot(c, seqs[0].slot) + state_off + conv_floats + (size_t)h0 * PN;
        pf.n = (size_t)(h1 - h0) * PN * sizeof(float);
    }
    wrk_cpu_barrier_pf(c, pf);
    if (h1 > h0) {
        int t = 0;
        for (int s = 0; s < n_seqs; s++) {
            float *S = wrk_cpu_slot(c, seqs[s].slot) + state_off + conv_floats;
            float *keep = rec_off != NO_REC ? wrk_cpu_spec_rec(c, &seqs[s]) : NULL;
            if (keep)
                keep_rows(keep + rec_off + (size_t)WRK_SPEC_MAX_TOKENS * C, cfg->n_heads,
                          a->zx + (size_t)t * Dp + I + C, Dp, seqs[s].n_tokens, h0, h1);
            ssd_scan(k, cfg, L, seqs[s].n_tokens, h0, h1, a->zx + (size_t)t * Dp + I + C, Dp,
                     a->xbc + (size_t)t * C, S, a->y + (size_t)t * I);
            t += seqs[s].n_tokens;
        }
    }
    /* at decode out_proj follows (its share prefetched in the wait), else the norms */
    float *yg = cfg->tp_norm_reduce ? NULL : wrk_cpu_local(c, ith, T);
    wrk_cpu_barrier_pf(c, yg ? wrk_cpu_pf_mm(c, ith, nth, &L->out_proj) : (wrk_cpu_pf_t){0});
    /* The gate and norm: at decode (and no TP norm reduce) every thread gates every token
     * into its own buffer (u, the in_proj input, is no longer read), so out_proj follows
     * without a barrier; else split by token. */
    if (yg) {
        t0 = 0;
        t1 = T;
        memcpy(yg, a->y, (size_t)T * I * sizeof(float));
    } else {
        yg = a->y;
    }
    if (cfg->tp_norm_reduce)
        gated_norm_tp(c, ith, cfg, T, t0, t1, a->zx, a->y, L->gnorm_w, a->ss);
    else if (cfg->gate != WRK_MAMBA2_GATE_NORM)
        for (int t = t0; t < t1; t++)
            norm_gate(k, yg + (size_t)t * I, a->zx + (size_t)t * Dp, L->gnorm_w, I,
                      cfg->gate == WRK_MAMBA2_GATE_ONLY ? 0 : cfg->norm_group, cfg->eps);
    else
        for (int t = t0; t < t1; t++)
            gated_norm(yg + (size_t)t * I, a->zx + (size_t)t * Dp, L->gnorm_w, I, cfg->norm_group,
                       cfg->eps);
    if (yg == a->y) wrk_pool_barrier(c->pool);
    wrk_cpu_mm(c, ith, nth, &L->out_proj, yg, I, T, out, H, L->out_b, acc);
    wrk_cpu_barrier_next(c, ith);
}

void wrk_mamba2_cpu_mixer(struct wrk_cpu *c, int ith, int nth, const wrk_mamba2_config_t *cfg,
                          const wrk_mamba2_layer_t *L, const wrk_seq_t *seqs, int n_seqs, int T,
                          size_t state_off, const float *u, const wrk_mamba2_bufs_t *b, float *out,
                          bool acc)
{
    mixer(c, ith, nth, cfg, L, seqs, n_seqs, T, state_off, NO_REC, u, b, out, acc);
}

void wrk_mamba2_cpu_mixer_rec(struct wrk_cpu *c, int ith, int nth, const wrk_mamba2_config_t *cfg,
                              const wrk_mamba2_layer_t *L, const wrk_seq_t *seqs, int n_seqs, int T,
                              size_t state_off, size_t rec_off, const float *u,
                              const wrk_mamba2_bufs_t *b, float *out, bool acc)
{
    mixer(c, ith, nth, cfg, L, seqs, n_seqs, T, state_off, rec_off, u, b, out, acc);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    mamba2_ctx_t *a = f->a;
    const wrk_mamba2_t *mb = wrk_cpu_layout(c);
    const wrk_mamba2_config_t *cfg = &mb->cfg;
    const int H = cfg->hidden, T = f->T;
    const bool lead = wrk_cpu_lead(c);
    const size_t layer_floats = wrk_mamba2_layer_state_floats(cfg);
    int t0, t1, z0, z1, v0, v1;
    /* what this thread reads first in a layer (its in_proj z rows, as the mixer splits them at
     * more than one thread) and after the last one (its lm_head rows): prefetched at the
     * barrier before */
    wrk_split(cfg->inner, 16, ith, nth, &z0, &z1);
    wrk_split(c->m->info.vocab_size, WRK_PANEL, ith, nth, &v0, &v1);
    if (cfg->proj_mult_on) z0 = z1 = 0;

    wrk_cpu_embed(c, ith, nth, f->seqs, f->n_seqs);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    wrk_cpu_barrier_pf(c, wrk_cpu_pf_rows(c, &mb->layers[0].in_proj, z0, z1));

    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_mamba2_layer_t *L = &mb->layers[l];
        wrk_cpu_pf_set(c, ith,
                       l + 1 < cfg->n_layers
                           ? wrk_cpu_pf_rows(c, &mb->layers[l + 1].in_proj, z0, z1)
                       : lead ? wrk_cpu_pf_rows(c, &c->m->lm_head, v0, v1)
                              : (wrk_cpu_pf_t){0});
        /* decode: every thread normalizes every token into its own buffer (no barrier) */
        float *u = wrk_cpu_local(c, ith, T);
        if (u) {
            for (int t = 0; t < T; t++)
                c->k->rmsnorm(u + (size_t)t * H, c->res + (size_t)t * H, L->norm_w, H, cfg->eps);
        } else {
            u = a->u;
            for (int t = t0; t < t1; t++)
                c->k->rmsnorm(u + (size_t)t * H, c->res + (size_t)t * H, L->norm_w, H, cfg->eps);
            wrk_pool_barrier(c->pool);
        }
        /* TP: rank 0 adds its partial out_proj (and the bias) to the residual, the others
         * overwrite theirs; the all-reduce sums the lot: one per layer. */
        wrk_mamba2_cpu_mixer_rec(c, ith, nth, cfg, L, f->seqs, f->n_seqs, T, l * layer_floats,
                                 l * wrk_mamba2_spec_layer_floats(cfg), u, &a->b, c->res, lead);
        wrk_cpu_all_reduce(c, ith, c->res, (size_t)T * H);
    }
    if (lead) wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)saved; /* the whole fixed state */
    const wrk_mamba2_config_t *cfg = &((const wrk_mamba2_t *)wrk_cpu_layout(c))->cfg;
    *rec = (size_t)cfg->n_layers * wrk_mamba2_spec_layer_floats(cfg);
    *tmp = wrk_mamba2_spec_tmp_floats(cfg);
}

static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    const wrk_mamba2_t *mb = wrk_cpu_layout(r->c);
    const wrk_mamba2_config_t *cfg = &mb->cfg;
    const size_t layer_floats = wrk_mamba2_layer_state_floats(cfg);
    for (int l = 0; l < cfg->n_layers; l++)
        wrk_mamba2_cpu_replay(r->c, ith, nth, cfg, &mb->layers[l], r->slot, r->n, l * layer_floats,
                              r->rec + l * wrk_mamba2_spec_layer_floats(cfg), r->tmp);
}

const wrk_cpu_family_i wrk_cpu_mamba2 = {
    .family = WRK_FAMILY_MAMBA2,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
};
