/* workers/cuda: the Mamba (v1) forward on the device. All entries' tokens are stacked into
 * one [T x H] activation, so each projection is one matmul over the batch; the conv and the
 * scan kernels walk each entry's tokens against its own slot (cpu/mamba_cpu.c is the
 * reference this mirrors step for step). */
#include <stdlib.h>

#include "workers/cuda/cuda_int.h"
#include "workers/families/mamba.h"

typedef struct cuda_mamba_layer {
    float *norm_w, *in_b, *conv_w, *conv_b, *dt_b, *A, *D, *out_b;
    cuda_mat_t in_proj, x_proj, dt_proj, out_proj;
} cuda_mamba_layer_t;

typedef struct cuda_mamba {
    float *u, *xz, *xc, *dbc, *dt, *y; /* activations for max_step_tokens rows */
    cuda_mamba_layer_t layers[];
} cuda_mamba_t;

static int upload_layer(wrk_cuda_t *c, const wrk_mamba_config_t *cfg, const wrk_mamba_layer_t *L,
                        cuda_mamba_layer_t *d)
{
    const size_t H = cfg->hidden, I = cfg->inner, N = cfg->d_state, K = cfg->d_conv;
    int rc;
    if ((rc = cuda__upload_f32(c, L->norm_w, H, &d->norm_w)) ||
        (rc = cuda__upload_mat(c, &L->in_proj, &d->in_proj)) ||
        (rc = cuda__upload_f32(c, L->in_b, 2 * I, &d->in_b)) ||
        (rc = cuda__upload_f32(c, L->conv_w, K * I, &d->conv_w)) ||
        (rc = cuda__upload_f32(c, L->conv_b, I, &d->conv_b)) ||
        (rc = cuda__upload_mat(c, &L->x_proj, &d->x_proj)) ||
        (rc = cuda__upload_mat(c, &L->dt_proj, &d->dt_proj)) ||
        (rc = cuda__upload_f32(c, L->dt_b, I, &d->dt_b)) ||
        (rc = cuda__upload_f32(c, L->A, N * I, &d->A)) ||
        (rc = cuda__upload_f32(c, L->D, I, &d->D)) ||
        (rc = cuda__upload_mat(c, &L->out_proj, &d->out_proj)) ||
        (rc = cuda__upload_f32(c, L->out_b, H, &d->out_b)))
        return rc;
    return 0;
}

static int mamba_init(wrk_cuda_t *c, void **ctx, char *err, size_t errlen)
{
    const wrk_mamba_t *mb = c->m->priv;
    const wrk_mamba_config_t *cfg = &mb->cfg;
    const size_t T = (size_t)c->base.max_step_tokens, H = cfg->hidden, I = cfg->inner;
    const size_t BC = (size_t)cfg->dt_rank + 2 * (size_t)cfg->d_state;
    if (cfg->d_state > CUDA_SCAN_MAX_N)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "cuda: state_size %d exceeds the scan kernel's %d", cfg->d_state,
                        CUDA_SCAN_MAX_N);
    cuda_mamba_t *a = calloc(1, sizeof *a + (size_t)cfg->n_layers * sizeof a->layers[0]);
    if (!a) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    *ctx = a; /* freed by the backend's destroy, device memory with it */
    a->u = cuda__alloc(c, T * H * sizeof(float));
    a->xz = cuda__alloc(c, T * 2 * I * sizeof(float));
    a->xc = cuda__alloc(c, T * I * sizeof(float));
    a->dbc = cuda__alloc(c, T * BC * sizeof(float));
    a->dt = cuda__alloc(c, T * I * sizeof(float));
    a->y = cuda__alloc(c, T * I * sizeof(float));
    if (!a->u || !a->xz || !a->xc || !a->dbc || !a->dt || !a->y)
        return rcd_fail(RCD_ENOMEM, err, errlen, "cuda: cannot allocate activations for %zu tokens",
                        T);
    for (int l = 0; l < cfg->n_layers; l++) {
        int rc = upload_layer(c, cfg, &mb->layers[l], &a->layers[l]);
        if (rc)
            return rcd_fail(rc, err, errlen, "cuda: cannot upload layer %d (%s; %zu bytes so far)",
                            l, rcd_strerror(rc), c->stats.device_bytes);
    }
    return 0;
}

static int mamba_forward(wrk_cuda_t *c, void *ctx, int T, int n_seqs)
{
    cuda_mamba_t *a = ctx;
    const wrk_mamba_config_t *cfg = &((const wrk_mamba_t *)c->m->priv)->cfg;
    const int H = cfg->hidden, I = cfg->inner, N = cfg->d_state, K = cfg->d_conv;
    const int R = cfg->dt_rank, ldbc = R + 2 * N;
    const size_t layer_floats = wrk_mamba_layer_state_floats(cfg);
    const cuda_mm_ctx_t *mm = &c->mm;
    int rc = 0;
    for (int l = 0; l < cfg->n_layers && !rc; l++) {
        const cuda_mamba_layer_t *L = &a->layers[l];
        const size_t win_off = (size_t)l * layer_floats, h_off = win_off + (size_t)(K - 1) * I;
        if ((rc = cuda_rmsnorm(c->cs, c->res, NULL, T, H, L->norm_w, cfg->eps, a->u)) ||
            (rc = cuda_matmul(mm, &L->in_proj, a->u, H, T, a->xz, 2 * I, L->in_b, false)) ||
            (rc = cuda_conv(c->cs, &c->md, T, n_seqs, I, K, a->xz, 2 * I, L->conv_w, L->conv_b,
                            c->slots, c->state_floats, win_off, a->xc)) ||
            (rc = cuda_matmul(mm, &L->x_proj, a->xc, I, T, a->dbc, ldbc, NULL, false)) ||
            (rc = cuda_matmul(mm, &L->dt_proj, a->dbc, ldbc, T, a->dt, I, NULL, false)) ||
            (rc = cuda_scan(c->cs, &c->md, n_seqs, I, N, a->dt, L->dt_b, a->xc, a->xz + I, 2 * I,
                            a->dbc + R, ldbc, L->A, L->D, c->slots, c->state_floats, h_off, a->y)))
            break;
        rc = cuda_matmul(mm, &L->out_proj, a->y, I, T, c->res, H, L->out_b, true);
    }
    return rc;
}

const cuda_family_t cuda_family_mamba = {
    .family = WRK_FAMILY_MAMBA,
    .init = mamba_init,
    .forward = mamba_forward,
};
