/* workers: tensor-parallel shards of the Mamba and Mamba2 families — which channels or heads
 * a rank owns, its copies of the sliced weights (in their stored dtype) and where its slice
 * of a sequence's state sits in the full state blob. Backend-independent: the CPU backend
 * runs ranks as threads; a GPU rank would upload the same slices. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "workers/families/mamba.h"
#include "workers/families/mamba2.h"

/* Two passes over the same code: the first (base NULL) only counts bytes. */
typedef struct arena {
    char *base;
    size_t used;
} arena_t;

static void *arena_take(arena_t *a, size_t bytes)
{
    size_t at = (a->used + 63) / 64 * 64;
    a->used = at + bytes;
    return a->base ? a->base + at : NULL;
}

/* [*lo, *hi) of n items for part r of size, in multiples of `align` (as wrk_split). */
static void split(int n, int align, int r, int size, int *lo, int *hi)
{
    int blocks = (n + align - 1) / align;
    int b0 = (int)((long)blocks * r / size), b1 = (int)((long)blocks * (r + 1) / size);
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

/* A row range of W: [r0, r1) rows, all columns. */
typedef struct rows {
    int r0, r1;
} rows_t;

/* dst = the given row ranges of W stacked, columns [c0, c1), in W's dtype. */
static void take_mat(arena_t *a, const wrk_mat_t *W, const rows_t *rr, int n_rr, int c0, int c1,
                     wrk_mat_t *dst)
{
    const size_t esz = wrk_dtype_size(W->dt), w = (size_t)(c1 - c0);
    int rows = 0;
    for (int i = 0; i < n_rr; i++)
        rows += rr[i].r1 - rr[i].r0;
    char *p = arena_take(a, (size_t)rows * w * esz);
    *dst = (wrk_mat_t){.dt = W->dt, .data = p, .rows = rows, .cols = c1 - c0};
    if (!p) return;
    for (int i = 0; i < n_rr; i++)
        for (int r = rr[i].r0; r < rr[i].r1; r++, p += w * esz)
            memcpy(p, (const char *)W->data + ((size_t)r * W->cols + c0) * esz, w * esz);
}

/* dst = the given ranges of an fp32 vector, concatenated (NULL stays NULL). */
static const float *take_vec(arena_t *a, const float *v, const rows_t *rr, int n_rr)
{
    if (!v) return NULL;
    size_t n = 0;
    for (int i = 0; i < n_rr; i++)
        n += (size_t)(rr[i].r1 - rr[i].r0);
    float *p = arena_take(a, n * sizeof(float)), *q = p;
    if (!p) return NULL;
    for (int i = 0; i < n_rr; i++) {
        memcpy(q, v + rr[i].r0, (size_t)(rr[i].r1 - rr[i].r0) * sizeof(float));
        q += rr[i].r1 - rr[i].r0;
    }
    return p;
}

/* dst [rows x sum of ranges] from src [rows x ld]: the given column ranges of every row. */
static const float *take_cols(arena_t *a, const float *src, int rows, int ld, const rows_t *cr,
                              int n_cr)
{
    if (!src) return NULL;
    size_t w = 0;
    for (int i = 0; i < n_cr; i++)
        w += (size_t)(cr[i].r1 - cr[i].r0);
    float *p = arena_take(a, (size_t)rows * w * sizeof(float));
    if (!p) return NULL;
    for (int r = 0; r < rows; r++) {
        float *q = p + (size_t)r * w;
        for (int i = 0; i < n_cr; i++) {
            memcpy(q, src + (size_t)r * ld + cr[i].r0,
                   (size_t)(cr[i].r1 - cr[i].r0) * sizeof(float));
            q += cr[i].r1 - cr[i].r0;
        }
    }
    return p;
}

static wrk_shard_t *shard_new(int rank, int size, int n_runs)
{
    wrk_shard_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->rank = rank;
    s->size = size;
    s->runs = calloc((size_t)n_runs, sizeof *s->runs);
    if (!s->runs) {
        free(s);
        return NULL;
    }
    return s;
}

void wrk_shard_free(wrk_shard_t *s)
{
    if (!s) return;
    for (int i = 0; i < 4; i++)
        free(s->alloc[i]);
    free(s->runs);
    free(s);
}

/* s->mats: the n sliced matrices at each layer's byte offsets `offs` from `layers` (stride
 * `lsize`), kept in alloc[3]. */
static int list_mats(wrk_shard_t *s, const void *layers, int n_layers, size_t lsize,
                     const size_t *offs, int n_offs)
{
    wrk_mat_t *m = calloc((size_t)n_layers * (size_t)n_offs + 1, sizeof *m);
    if (!m) return -1;
    s->alloc[3] = m;
    for (int l = 0; l < n_layers; l++)
        for (int i = 0; i < n_offs; i++)
            memcpy(&m[l * n_offs + i], (const char *)layers + (size_t)l * lsize + offs[i],
                   sizeof *m);
    s->mats = m;
    s->n_mats = n_layers * n_offs;
    return 0;
}

static void add_run(wrk_shard_t *s, size_t local, size_t global, size_t n, bool owner)
{
    if (n) s->runs[s->n_runs++] = (wrk_shard_run_t){local, global, n, owner};
}

/* ---- Mamba (v1): inner channels [c0, c1) ---------------------------------------------------
 * in_proj rows x[c0, c1) and z[c0, c1); conv, dt_proj rows, dt_b, A, D by channel; x_proj and
 * out_proj by input columns (each rank's product is a partial sum, all-reduced). */

static void mamba_fill(arena_t *a, const wrk_mamba_t *g, int c0, int c1, bool lead,
                       wrk_mamba_layer_t *out)
{
    const wrk_mamba_config_t *c = &g->cfg;
    const int I = c->inner, N = c->d_state, K = c->d_conv;
    const rows_t ch = {c0, c1}, xz[2] = {{c0, c1}, {I + c0, I + c1}};
    for (int l = 0; l < c->n_layers; l++) {
        const wrk_mamba_layer_t *L = &g->layers[l];
        wrk_mamba_layer_t *S = &out[l];
        *S = *L; /* norm_w stays the full model's (replicated) */
        take_mat(a, &L->in_proj, xz, 2, 0, L->in_proj.cols, &S->in_proj);
        S->in_b = take_vec(a, L->in_b, xz, 2);
        S->conv_w = take_cols(a, L->conv_w, K, I, &ch, 1);
        S->conv_b = take_vec(a, L->conv_b, &ch, 1);
        take_mat(a, &L->x_proj, &(rows_t){0, L->x_proj.rows}, 1, c0, c1, &S->x_proj);
        take_mat(a, &L->dt_proj, &ch, 1, 0, L->dt_proj.cols, &S->dt_proj);
        S->dt_b = take_vec(a, L->dt_b, &ch, 1);
        S->A = take_cols(a, L->A, N, I, &ch, 1);
        S->D = take_vec(a, L->D, &ch, 1);
        take_mat(a, &L->out_proj, &(rows_t){0, L->out_proj.rows}, 1, c0, c1, &S->out_proj);
        S->out_b = lead ? L->out_b : NULL; /* added once, by rank 0 */
    }
}

int wrk_mamba_shard(const wrk_model_t *m, int rank, int size, wrk_shard_t **out, char *err,
                    size_t errlen)
{
    const wrk_mamba_t *g = m->priv;
    const wrk_mamba_config_t *c = &g->cfg;
    const int I = c->inner, N = c->d_state, K = c->d_conv;
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return rcd_fail(RCD_EINVAL, err, errlen, "tensor parallel: rank %d of %d", rank, size);
    if (I < size)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "tensor parallel: %d ranks but intermediate_size is %d; every rank needs "
                        "at least one inner channel",
                        size, I);
    int c0, c1;
    /* in blocks of 32 (a q4 group, kernels_q.h) when every rank gets one, so the row-parallel
     * x_proj and out_proj slices quantize in the groups of the whole matrix; else of 16 */
    split(I, I / size >= 32 ? 32 : I / size >= 16 ? 16 : 1, rank, size, &c0, &c1);
    const int Ir = c1 - c0;
    wrk_shard_t *s = shard_new(rank, size, c->n_layers * (K - 1 + N));
    wrk_mamba_t *lay = calloc(1, sizeof *lay);
    wrk_mamba_layer_t *layers = calloc((size_t)c->n_layers, sizeof *layers);
    arena_t a = {0};
    if (s) {
        s->alloc[0] = lay;
        s->alloc[1] = layers;
    }
    if (!s || !lay || !layers) goto nomem;
    mamba_fill(&a, g, c0, c1, rank == 0, layers); /* sizing pass */
    a = (arena_t){.base = aligned_alloc(64, (a.used + 63) / 64 * 64)};
    if (!(s->alloc[2] = a.base)) goto nomem;
    mamba_fill(&a, g, c0, c1, rank == 0, layers);
    static const size_t mamba_mats[] = {
        offsetof(wrk_mamba_layer_t, in_proj), offsetof(wrk_mamba_layer_t, x_proj),
        offsetof(wrk_mamba_layer_t, dt_proj), offsetof(wrk_mamba_layer_t, out_proj)};
    if (list_mats(s, layers, c->n_layers, sizeof *layers, mamba_mats, 4)) goto nomem;
    lay->cfg = *c;
    lay->cfg.inner = Ir;
    lay->layers = layers;
    s->layout = lay;
    /* State per layer: conv window [K-1][I] then h [N][I]; this rank holds columns [c0, c1). */
    const size_t gl = wrk_mamba_layer_state_floats(c), ll = wrk_mamba_layer_state_floats(&lay->cfg);
    for (int l = 0; l < c->n_layers; l++)
        for (int r = 0; r < K - 1 + N; r++)
            add_run(s, l * ll + (size_t)r * Ir, l * gl + (size_t)r * I + c0, (size_t)Ir, true);
    s->state_floats = ll * c->n_layers;
    *out = s;
    return 0;
nomem:
    if (s)
        wrk_shard_free(s);
    else {
        free(lay);
        free(layers);
    }
    return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
}

/* ---- Mamba2: heads [h0, h1) -----------------------------------------------------------------
 * in_proj rows z, x, dt of those heads and B, C of the groups they read; conv over those
 * channels; dt_b, A, D, gnorm_w by head; out_proj by input columns. Heads are split at group
 * boundaries when there are at least as many groups as ranks (the gated norm stays local);
 * otherwise groups are shared (B, C computed by every rank that reads them) and the norm's
 * sums of squares are all-reduced. */

typedef struct m2_split {
    int h0, h1, g0, g1;
} m2_split_t;

static m2_split_t m2_split(const wrk_mamba2_config_t *c, int rank, int size)
{
    const int hpg = c->n_heads / c->n_groups;
    m2_split_t s;
    split(c->n_heads, c->n_groups >= size ? hpg : 1, rank, size, &s.h0, &s.h1);
    s.g0 = s.h0 / hpg;
    s.g1 = (s.h1 - 1) / hpg + 1;
    return s;
}

static void mamba2_fill(arena_t *a, const wrk_mamba2_t *g, m2_split_t sp, bool lead,
                        wrk_mamba2_layer_t *out)
{
    const wrk_mamba2_config_t *c = &g->cfg;
    const int I = c->inner, P = c->head_dim, N = c->d_state, GN = c->n_groups * N;
    const int K = c->d_conv, C = c->conv_dim;
    const rows_t heads = {sp.h0, sp.h1}, hch = {sp.h0 * P, sp.h1 * P};
    /* in_proj rows: z | x B C | dt; conv channels: x B C */
    const rows_t proj[5] = {{sp.h0 * P, sp.h1 * P},
                            {I + sp.h0 * P, I + sp.h1 * P},
                            {2 * I + sp.g0 * N, 2 * I + sp.g1 * N},
                            {2 * I + GN + sp.g0 * N, 2 * I + GN + sp.g1 * N},
                            {I + C + sp.h0, I + C + sp.h1}};
    const rows_t conv[3] = {{sp.h0 * P, sp.h1 * P},
                            {I + sp.g0 * N, I + sp.g1 * N},
                            {I + GN + sp.g0 * N, I + GN + sp.g1 * N}};
    for (int l = 0; l < c->n_layers; l++) {
        const wrk_mamba2_layer_t *L = &g->layers[l];
        wrk_mamba2_layer_t *S = &out[l];
        *S = *L; /* norm_w stays the full model's (replicated) */
        take_mat(a, &L->in_proj, proj, 5, 0, L->in_proj.cols, &S->in_proj);
        S->in_b = take_vec(a, L->in_b, proj, 5);
        S->conv_w = take_cols(a, L->conv_w, K, C, conv, 3);
        S->conv_b = take_vec(a, L->conv_b, conv, 3);
        S->dt_b = take_vec(a, L->dt_b, &heads, 1);
        S->A = take_vec(a, L->A, &heads, 1);
        S->D = take_vec(a, L->D, &heads, 1);
        S->gnorm_w = take_vec(a, L->gnorm_w, &hch, 1);
        take_mat(a, &L->out_proj, &(rows_t){0, L->out_proj.rows}, 1, hch.r0, hch.r1, &S->out_proj);
        S->out_b = lead ? L->out_b : NULL; /* added once, by rank 0 */
    }
}

int wrk_mamba2_shard(const wrk_model_t *m, int rank, int size, wrk_shard_t **out, char *err,
                     size_t errlen)
{
    const wrk_mamba2_t *g = m->priv;
    const wrk_mamba2_config_t *c = &g->cfg;
    const int I = c->inner, P = c->head_dim, N = c->d_state, K = c->d_conv, C = c->conv_dim;
    const int G = c->n_groups, GN = G * N, hpg = c->n_heads / G, gs = c->norm_group;
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return rcd_fail(RCD_EINVAL, err, errlen, "tensor parallel: rank %d of %d", rank, size);
    if (c->n_heads < size)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "tensor parallel: %d ranks but num_heads is %d; every rank needs at "
                        "least one head",
                        size, c->n_heads);
    if (gs < 1 || I % gs != 0)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "tensor parallel: gated-norm group of %d does not divide the %d inner "
                        "channels",
                        gs, I);
    const m2_split_t sp = m2_split(c, rank, size);
    bool norm_reduce = false; /* the same answer on every rank: it decides a collective */
    for (int r = 0; r < size; r++) {
        m2_split_t o = m2_split(c, r, size);
        if ((o.h0 * P) % gs || (o.h1 * P) % gs) norm_reduce = true;
    }
    const int hr = sp.h1 - sp.h0, gr = sp.g1 - sp.g0;
    wrk_shard_t *s = shard_new(rank, size, c->n_layers * (3 * 2 * (K - 1) + 1));
    wrk_mamba2_t *lay = calloc(1, sizeof *lay);
    wrk_mamba2_layer_t *layers = calloc((size_t)c->n_layers, sizeof *layers);
    arena_t a = {0};
    if (s) {
        s->alloc[0] = lay;
        s->alloc[1] = layers;
    }
    if (!s || !lay || !layers) goto nomem;
    mamba2_fill(&a, g, sp, rank == 0, layers); /* sizing pass */
    a = (arena_t){.base = aligned_alloc(64, (a.used + 63) / 64 * 64)};
    if (!(s->alloc[2] = a.base)) goto nomem;
    mamba2_fill(&a, g, sp, rank == 0, layers);
    static const size_t mamba2_mats[] = {offsetof(wrk_mamba2_layer_t, in_proj),
                                         offsetof(wrk_mamba2_layer_t, out_proj)};
    if (list_mats(s, layers, c->n_layers, sizeof *layers, mamba2_mats, 2)) goto nomem;
    wrk_mamba2_config_t *lc = &lay->cfg;
    *lc = *c;
    lc->inner = hr * P;
    lc->n_heads = hr;
    lc->n_groups = gr;
    lc->conv_dim = lc->inner + 2 * gr * N;
    lc->proj_dim = lc->inner + lc->conv_dim + hr;
    lc->tp_head0 = sp.h0;
    lc->tp_group0 = sp.g0;
    lc->tp_hpg = hpg;
    lc->tp_norm_groups = I / gs;
    lc->tp_norm_reduce = norm_reduce;
    lay->layers = layers;
    s->layout = lay;
    /* State per layer: conv window [K-1][C] (x, B, C channels) then S [NH][P][N]. B and C of
     * a group shared with the rank below are written back by that rank only. */
    const int Cl = lc->conv_dim;
    const bool own_g0 = rank == 0 || sp.h0 % hpg == 0;
    const size_t gl = wrk_mamba2_layer_state_floats(c), ll = wrk_mamba2_layer_state_floats(lc);
    for (int l = 0; l < c->n_layers; l++) {
        const size_t G0 = l * gl, L0 = l * ll;
        for (int k = 0; k < K - 1; k++) {
            const size_t gr0 = G0 + (size_t)k * C, lr0 = L0 + (size_t)k * Cl;
            add_run(s, lr0, gr0 + (size_t)sp.h0 * P, (size_t)hr * P, true);
            for (int bc = 0; bc < 2; bc++) { /* B then C */
                const size_t lb = lr0 + (size_t)hr * P + (size_t)bc * gr * N;
                const size_t gb = gr0 + I + (size_t)bc * GN + (size_t)sp.g0 * N;
                add_run(s, lb, gb, (size_t)N, own_g0);
                add_run(s, lb + N, gb + N, (size_t)(gr - 1) * N, true);
            }
        }
        add_run(s, L0 + wrk_mamba2_conv_floats(lc),
                G0 + wrk_mamba2_conv_floats(c) + (size_t)sp.h0 * P * N, (size_t)hr * P * N, true);
    }
    s->state_floats = ll * c->n_layers;
    *out = s;
    return 0;
nomem:
    if (s)
        wrk_shard_free(s);
    else {
        free(lay);
        free(layers);
    }
    return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
}
