/* workers/cpu: the Mamba (v1) forward pass over a ragged batch. All sequences' tokens are
 * stacked into one [T x H] activation so every projection is one matmul over the batch;
 * the conv and the scan run per sequence against its own state slot. */
#include <string.h>

#include "workers/cpu/cpu_int.h"

typedef struct fwd {
    wrk_cpu_t *c;
    const wrk_seq_t *seqs;
    int n_seqs;
    int T;       /* tokens in the step */
    int n_rows;  /* logit rows in the step */
} fwd_t;

static inline float *slot_state(wrk_cpu_t *c, int slot)
{
    return c->slots + (size_t)slot * c->state_floats;
}

/* Rows of W for thread ith, aligned so blocks stay SIMD- and GEMM-friendly. */
static void mm(fwd_t *f, int ith, int nth, const wrk_mat_t *W, const float *x, int ldx,
               float *y, int ldy, const float *bias, bool acc)
{
    int o0, o1;
    wrk_split(W->rows, 16, ith, nth, &o0, &o1);
    wrk_matmul(f->c->k, f->c->scratch + (size_t)ith * f->c->scratch_floats, W, o0, o1, x, ldx,
               f->T, y, ldy, bias, acc);
}

static void forward(void *arg, int ith, int nth)
{
    fwd_t *f = arg;
    wrk_cpu_t *c = f->c;
    const wrk_model_t *m = c->base.model;
    const wrk_mamba_config_t *cfg = &m->cfg;
    const wrk_kern_t *k = c->k;
    const int H = cfg->hidden, I = cfg->inner, N = cfg->d_state, K = cfg->d_conv;
    const int R = cfg->dt_rank, T = f->T, ldbc = R + 2 * N;
    const size_t layer_floats = wrk_mamba_layer_state_floats(cfg);
    const size_t emb_esz = wrk_dtype_size(m->embed.dt);
    int t0, t1, c0, c1;

    /* Embedding rows for this thread's tokens. */
    wrk_split(T, 1, ith, nth, &t0, &t1);
    {
        int t = 0;
        for (int s = 0; s < f->n_seqs; s++)
            for (int j = 0; j < f->seqs[s].n_tokens; j++, t++)
                if (t >= t0 && t < t1)
                    k->to_f32(c->res + (size_t)t * H,
                              (const char *)m->embed.data +
                                  (size_t)f->seqs[s].tokens[j] * H * emb_esz,
                              m->embed.dt, (size_t)H);
    }
    /* Channels of the conv and the scan for this thread; dt_proj uses the same rows, so the
     * scan reads only dt values this thread wrote. */
    wrk_split(I, 16, ith, nth, &c0, &c1);
    wrk_pool_barrier(c->pool);

    for (int l = 0; l < cfg->n_layers; l++) {
        const wrk_mamba_layer_t *L = &m->layers[l];
        for (int t = t0; t < t1; t++)
            k->rmsnorm(c->u + (size_t)t * H, c->res + (size_t)t * H, L->norm_w, H, cfg->eps);
        wrk_pool_barrier(c->pool);
        mm(f, ith, nth, &L->in_proj, c->u, H, c->xz, 2 * I, L->in_b, false);
        wrk_pool_barrier(c->pool);
        if (c1 > c0) {
            int t = 0;
            for (int s = 0; s < f->n_seqs; s++) {
                float *win = slot_state(c, f->seqs[s].slot) + l * layer_floats;
                k->conv_silu(f->seqs[s].n_tokens, c0, c1, I, K, c->xz + (size_t)t * 2 * I,
                             2 * I, L->conv_w, L->conv_b, win, c->xc + (size_t)t * I);
                t += f->seqs[s].n_tokens;
            }
        }
        wrk_pool_barrier(c->pool);
        mm(f, ith, nth, &L->x_proj, c->xc, I, c->dbc, ldbc, NULL, false);
        wrk_pool_barrier(c->pool);
        wrk_matmul(k, c->scratch + (size_t)ith * c->scratch_floats, &L->dt_proj, c0, c1, c->dbc,
                   ldbc, T, c->dt, I, NULL, false);
        if (c1 > c0) {
            int t = 0;
            for (int s = 0; s < f->n_seqs; s++) {
                float *h = slot_state(c, f->seqs[s].slot) + l * layer_floats +
                           (size_t)(K - 1) * I;
                size_t o = (size_t)t;
                k->scan(f->seqs[s].n_tokens, c0, c1, I, N, c->dt + o * I, L->dt_b,
                        c->xc + o * I, c->xz + o * 2 * I + I, 2 * I, c->dbc + o * ldbc + R, ldbc,
                        L->A, L->D, h, c->y + o * I);
                t += f->seqs[s].n_tokens;
            }
        }
        wrk_pool_barrier(c->pool);
        mm(f, ith, nth, &L->out_proj, c->y, I, c->res, H, L->out_b, true);
        wrk_pool_barrier(c->pool);
    }

    /* Final norm and lm_head for the rows that want logits, WRK_LOGIT_CHUNK rows at a time. */
    int row = 0, t = 0, s = 0, j = 0; /* walk (sequence s, logit row j) in order */
    while (row < f->n_rows) {
        int nr = 0;
        const wrk_seq_t *owner[WRK_LOGIT_CHUNK];
        int owner_row[WRK_LOGIT_CHUNK];
        /* Gather up to a chunk of rows (every thread computes the same walk). */
        while (nr < WRK_LOGIT_CHUNK && row + nr < f->n_rows) {
            const wrk_seq_t *q = &f->seqs[s];
            if (j >= q->n_logits) {
                t += q->n_tokens;
                s++;
                j = 0;
                continue;
            }
            int tok = t + q->n_tokens - q->n_logits + j;
            if (nr % nth == ith)
                k->rmsnorm(c->logit_in + (size_t)nr * H, c->res + (size_t)tok * H, m->norm_f, H,
                           cfg->eps);
            owner[nr] = q;
            owner_row[nr] = j;
            nr++;
            j++;
        }
        wrk_pool_barrier(c->pool);
        int v0, v1;
        wrk_split(cfg->vocab, 16, ith, nth, &v0, &v1);
        wrk_matmul(k, c->scratch + (size_t)ith * c->scratch_floats, &m->lm_head, v0, v1,
                   c->logit_in, H, nr, c->logit_out, cfg->vocab, NULL, false);
        for (int r = 0; r < nr; r++)
            memcpy(owner[r]->logits + (size_t)owner_row[r] * cfg->vocab + v0,
                   c->logit_out + (size_t)r * cfg->vocab + v0, (size_t)(v1 - v0) * sizeof(float));
        row += nr;
        wrk_pool_barrier(c->pool);
    }
}

void wrk_mamba_cpu_step(wrk_cpu_t *c, const wrk_seq_t *seqs, int n_seqs)
{
    fwd_t f = {.c = c, .seqs = seqs, .n_seqs = n_seqs};
    for (int s = 0; s < n_seqs; s++) {
        f.T += seqs[s].n_tokens;
        f.n_rows += seqs[s].n_logits;
    }
    wrk_pool_run(c->pool, forward, &f);
}
