/* workers/cpu: the Mamba (v1) forward pass over a ragged batch. All sequences' tokens are
 * stacked into one [T x H] activation so every projection is one matmul over the batch;
 * the conv and the scan run per sequence against its own state slot. Under tensor
 * parallelism the same code runs one rank's channels: x_proj and out_proj then produce
 * partial sums, all-reduced (two per layer: x_proj contracts over every channel). */
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/mamba_cpu.h"

int wrk_mamba_bufs_alloc(const wrk_mamba_config_t *cfg, size_t T, wrk_mamba_bufs_t *b)
{
    const size_t I = cfg->inner, BC = (size_t)cfg->dt_rank + 2 * (size_t)cfg->d_state;
    *b = (wrk_mamba_bufs_t){0};
    b->xz = wrk_cpu_alloc_floats(T * 2 * I);
    b->xc = wrk_cpu_alloc_floats(T * I);
    b->dbc = wrk_cpu_alloc_floats(T * BC);
    b->dt = wrk_cpu_alloc_floats(T * I);
    b->y = wrk_cpu_alloc_floats(T * I);
    if (!b->xz || !b->xc || !b->dbc || !b->dt || !b->y) {
        wrk_mamba_bufs_free(b);
        return RCD_ENOMEM;
    }
    return 0;
}

void wrk_mamba_bufs_free(wrk_mamba_bufs_t *b)
{
    free(b->xz);
    free(b->xc);
    free(b->dbc);
    free(b->dt);
    free(b->y);
    *b = (wrk_mamba_bufs_t){0};
}

typedef struct mamba_ctx {
    float *u; /* [T x H] normed layer input */
    wrk_mamba_bufs_t mb;
} mamba_ctx_t;

static void cpu_free(void *ctx)
{
    mamba_ctx_t *a = ctx;
    if (!a) return;
    free(a->u);
    wrk_mamba_bufs_free(&a->mb);
    free(a);
}

static int cpu_init(struct wrk_cpu *c, void **ctx)
{
    const wrk_mamba_config_t *cfg = &((const wrk_mamba_t *)wrk_cpu_layout(c))->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->hidden;
    mamba_ctx_t *a = calloc(1, sizeof *a);
    if (!a) return RCD_ENOMEM;
    a->u = wrk_cpu_alloc_floats(T * H);
    if (!a->u || wrk_mamba_bufs_alloc(cfg, T, &a->mb)) {
        cpu_free(a);
        return RCD_ENOMEM;
    }
    *ctx = a;
    return 0;
}

/* Speculative rollback: per layer, the conv input, dt and B, C (wrk_mamba_spec_layer_floats). */
#define MAXT WRK_SPEC_MAX_TOKENS

static void spec_sizes(const struct wrk_cpu *c, size_t *rec, size_t *tmp, size_t *saved)
{
    (void)saved; /* the whole fixed state */
    const wrk_mamba_config_t *cfg = &((const wrk_mamba_t *)wrk_cpu_layout(c))->cfg;
    *rec = (size_t)cfg->n_layers * wrk_mamba_spec_layer_floats(cfg);
    *tmp = wrk_mamba_spec_tmp_floats(cfg);
}

/* Rows [t0, t0 + n) of `src` (stride lds), columns [c0, c1), into dst (stride ldd). */
static void keep_rows(float *dst, int ldd, const float *src, int lds, int n, int c0, int c1)
{
    for (int j = 0; j < n; j++)
        memcpy(dst + (size_t)j * ldd + c0, src + (size_t)j * lds + c0,
               (size_t)(c1 - c0) * sizeof(float));
}

void wrk_mamba_cpu_mixer(struct wrk_cpu *c, int ith, int nth, const wrk_mamba_config_t *cfg,
                         const wrk_mamba_layer_t *L, const wrk_seq_t *seqs, int n_seqs, int T,
                         size_t state_off, size_t rec_off, const float *u,
                         const wrk_mamba_bufs_t *a, float *out, bool acc)
{
    const wrk_kern_t *k = c->k;
    const int H = cfg->hidden, I = cfg->inner, N = cfg->d_state, K = cfg->d_conv;
    const int R = cfg->dt_rank, ldbc = R + 2 * N;
    int c0, c1;
    /* Channels of the conv and the scan for this thread; dt_proj uses the same rows, so the
     * scan reads only dt values this thread wrote. */
    wrk_split(I, 16, ith, nth, &c0, &c1);

    /* in_proj: the rows of this thread's channels, x [c0, c1) and z [I + c0, I + c1), so the
     * conv reads only rows this thread wrote: no barrier between them (each row's values do
     * not depend on which thread computes it) */
    if (c0 == 0 && c1 == I) {
        wrk_cpu_matmul(c, ith, &L->in_proj, 0, 2 * I, u, H, T, a->xz, 2 * I, L->in_b, false);
    } else {
        wrk_cpu_matmul(c, ith, &L->in_proj, c0, c1, u, H, T, a->xz, 2 * I, L->in_b, false);
        wrk_cpu_matmul(c, ith, &L->in_proj, I + c0, I + c1, u, H, T, a->xz, 2 * I, L->in_b, false);
    }
    if (c1 > c0) {
        int t = 0;
        for (int s = 0; s < n_seqs; s++) {
            float *keep = wrk_cpu_spec_rec(c, &seqs[s]);
            if (keep)
                keep_rows(keep + rec_off, I, a->xz + (size_t)t * 2 * I, 2 * I, seqs[s].n_tokens, c0,
                          c1);
            float *win = wrk_cpu_slot(c, seqs[s].slot) + state_off;
            k->conv_silu(seqs[s].n_tokens, c0, c1, I, K, a->xz + (size_t)t * 2 * I, 2 * I,
                         L->conv_w, L->conv_b, win, a->xc + (size_t)t * I);
            t += seqs[s].n_tokens;
        }
    }
    /* each barrier's wait prefetches this thread's share of the next matmul */
    wrk_cpu_barrier_pf(c, wrk_cpu_pf_mm(c, ith, nth, &L->x_proj));
    wrk_cpu_mm(c, ith, nth, &L->x_proj, a->xc, I, T, a->dbc, ldbc, NULL, false);
    wrk_cpu_barrier_pf(c, L->dt_norm ? (wrk_cpu_pf_t){0} : wrk_cpu_pf_rows(c, &L->dt_proj, c0, c1));
    wrk_cpu_all_reduce(c, ith, a->dbc, (size_t)T * ldbc);
    if (L->dt_norm) { /* Jamba: RMSNorm of dt, B and C, each over its own width, in place */
        int t0, t1;
        wrk_split(T, 1, ith, nth, &t0, &t1);
        for (int t = t0; t < t1; t++) {
            float *r = a->dbc + (size_t)t * ldbc;
            k->rmsnorm(r, r, L->dt_norm, R, cfg->eps);
            k->rmsnorm(r + R, r + R, L->b_norm, N, cfg->eps);
            k->rmsnorm(r + R + N, r + R + N, L->c_norm, N, cfg->eps);
        }
        wrk_pool_barrier(c->pool);
    }
    wrk_cpu_matmul(c, ith, &L->dt_proj, c0, c1, a->dbc, ldbc, T, a->dt, I, NULL, false);
    if (c1 > c0) {
        int t = 0;
        for (int s = 0; s < n_seqs; s++) {
            float *h = wrk_cpu_slot(c, seqs[s].slot) + state_off + (size_t)(K - 1) * I;
            size_t o = (size_t)t;
            float *keep = wrk_cpu_spec_rec(c, &seqs[s]);
            if (keep) {
                float *kdt = keep + rec_off + (size_t)MAXT * I;
                keep_rows(kdt, I, a->dt + o * I, I, seqs[s].n_tokens, c0, c1);
                if (c0 == 0) /* B, C (after Jamba's norms): shared by every channel */
                    keep_rows(kdt + (size_t)MAXT * I, 2 * N, a->dbc + o * ldbc + R, ldbc,
                              seqs[s].n_tokens, 0, 2 * N);
            }
            k->scan(seqs[s].n_tokens, c0, c1, I, N, a->dt + o * I, L->dt_b, a->xc + o * I,
                    a->xz + o * 2 * I + I, 2 * I, a->dbc + o * ldbc + R, ldbc, L->A, L->D, h,
                    a->y + o * I);
            t += seqs[s].n_tokens;
        }
    }
    wrk_cpu_barrier_pf(c, wrk_cpu_pf_mm(c, ith, nth, &L->out_proj));
    /* TP: rank 0 adds its partial product (and the bias) to out, the others overwrite theirs
     * with their partial product; the all-reduce sums the lot. */
    wrk_cpu_mm(c, ith, nth, &L->out_proj, a->y, I, T, out, H, L->out_b, acc);
    wrk_cpu_barrier_next(c, ith);
    wrk_cpu_all_reduce(c, ith, out, (size_t)T * H);
}

void wrk_mamba_cpu_replay(struct wrk_cpu *c, int ith, int nth, const wrk_mamba_config_t *cfg,
                          const wrk_mamba_layer_t *L, int slot, int n, size_t state_off,
                          const float *rec, float *tmp)
{
    const int I = cfg->inner, N = cfg->d_state, K = cfg->d_conv;
    const float *x = rec, *dt = x + (size_t)MAXT * I, *bc = dt + (size_t)MAXT * I;
    float *xc = tmp, *y = tmp + (size_t)MAXT * I;
    float *win = wrk_cpu_slot(c, slot) + state_off;
    int c0, c1;
    wrk_split(I, 16, ith, nth, &c0, &c1);
    if (c1 <= c0) return;
    c->k->conv_silu(n, c0, c1, I, K, x, I, L->conv_w, L->conv_b, win, xc);
    /* z only gates y, which is dropped: x stands in for it. */
    c->k->scan(n, c0, c1, I, N, dt, L->dt_b, xc, x, I, bc, 2 * N, L->A, L->D,
               win + (size_t)(K - 1) * I, y);
}

static void spec_replay(void *arg, int ith, int nth)
{
    const wrk_cpu_replay_t *r = arg;
    const wrk_mamba_t *mb = wrk_cpu_layout(r->c);
    const wrk_mamba_config_t *cfg = &mb->cfg;
    const size_t layer_floats = wrk_mamba_layer_state_floats(cfg);
    for (int l = 0; l < cfg->n_layers; l++)
        wrk_mamba_cpu_replay(r->c, ith, nth, cfg, &mb->layers[l], r->slot, r->n, l * layer_floats,
                             r->rec + (size_t)l * wrk_mamba_spec_layer_floats(cfg), r->tmp);
}

static void forward(void *arg, int ith, int nth)
{
    wrk_cpu_fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    mamba_ctx_t *a = f->a;
    const wrk_mamba_t *mb = wrk_cpu_layout(c);
    const wrk_mamba_config_t *cfg = &mb->cfg;
    const bool lead = wrk_cpu_lead(c);
    const wrk_kern_t *k = c->k;
    const int H = cfg->hidden, T = f->T;
    const size_t layer_floats = wrk_mamba_layer_state_floats(cfg);
    int t0, t1, c0, c1, v0, v1;
    /* what this thread reads first in a layer (its in_proj x rows, as the mixer splits them)
     * and after the last one (its lm_head rows): prefetched at the barrier before */
    wrk_split(cfg->inner, 16, ith, nth, &c0, &c1);
    wrk_split(c->m->info.vocab_size, WRK_PANEL, ith, nth, &v0, &v1);

    wrk_cpu_embed(c, ith, nth, f->seqs, f->n_seqs);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    wrk_cpu_barrier_pf(c, wrk_cpu_pf_rows(c, &mb->layers[0].in_proj, c0, c1));

    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_mamba_layer_t *L = &mb->layers[l];
        wrk_cpu_pf_set(c, ith,
                       l + 1 < cfg->n_layers
                           ? wrk_cpu_pf_rows(c, &mb->layers[l + 1].in_proj, c0, c1)
                       : lead ? wrk_cpu_pf_rows(c, &c->m->lm_head, v0, v1)
                              : (wrk_cpu_pf_t){0});
        /* decode: every thread normalizes every token into its own buffer (no barrier) */
        float *u = wrk_cpu_local(c, ith, T);
        if (u) {
            for (int t = 0; t < T; t++)
                k->rmsnorm(u + (size_t)t * H, c->res + (size_t)t * H, L->norm_w, H, cfg->eps);
        } else {
            u = a->u;
            for (int t = t0; t < t1; t++)
                k->rmsnorm(u + (size_t)t * H, c->res + (size_t)t * H, L->norm_w, H, cfg->eps);
            wrk_pool_barrier(c->pool);
        }
        /* TP: rank 0 adds its partial product (and the bias) to the residual. */
        wrk_mamba_cpu_mixer(c, ith, nth, cfg, L, f->seqs, f->n_seqs, T, l * layer_floats,
                            (size_t)l * wrk_mamba_spec_layer_floats(cfg), u, &a->mb, c->res, lead);
    }
    if (lead) wrk_cpu_logits(c, ith, nth, f->seqs, f->n_seqs, f->n_rows);
}

const wrk_cpu_family_i wrk_cpu_mamba = {
    .family = WRK_FAMILY_MAMBA,
    .init = cpu_init,
    .free = cpu_free,
    .forward = forward,
    .spec_sizes = spec_sizes,
    .spec_replay = spec_replay,
};
