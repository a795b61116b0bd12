/* workers: the Mamba (v1) family's private layout, shared by its loader (mamba.c) and its
 * CPU forward pass (cpu/mamba_cpu.c). */
#ifndef RCD_WRK_MAMBA_H
#define RCD_WRK_MAMBA_H

#include "workers/model/model_int.h"

typedef struct wrk_mamba_config {
    int vocab;      /* V */
    int hidden;     /* H */
    int inner;      /* I = intermediate_size */
    int d_state;    /* N */
    int d_conv;     /* K */
    int dt_rank;    /* R */
    int n_layers;   /* L */
    int expand;     /* I = expand * H unless intermediate_size says otherwise */
    bool use_bias, use_conv_bias, tie_embeddings;
    float eps;
    int bos_id, eos_id, pad_id;
} wrk_mamba_config_t;

typedef struct wrk_mamba_layer {
    const float *norm_w;  /* [H] */
    wrk_mat_t in_proj;    /* [2I x H] */
    const float *in_b;    /* [2I] or NULL */
    const float *conv_w;  /* [K x I]: transposed from HF's [I,1,K], tap k=K-1 is newest */
    const float *conv_b;  /* [I] or NULL */
    wrk_mat_t x_proj;     /* [R+2N x I] */
    wrk_mat_t dt_proj;    /* [I x R] */
    const float *dt_b;    /* [I] */
    const float *A;       /* [N x I] = -exp(A_log), transposed */
    const float *D;       /* [I] */
    wrk_mat_t out_proj;   /* [H x I] */
    const float *out_b;   /* [H] or NULL */
    /* Jamba's RMSNorms of x_proj's dt [R], B [N] and C [N] parts (eps = cfg eps); NULL for
     * Mamba. */
    const float *dt_norm, *b_norm, *c_norm;
} wrk_mamba_layer_t;

typedef struct wrk_mamba {
    wrk_mamba_config_t cfg;
    wrk_mamba_layer_t *layers;
    float *params; /* one allocation holding every small fp32 parameter */
} wrk_mamba_t;

/* Parses a Mamba config.json; every value range-checked. */
int wrk_mamba_config_parse(const char *json, size_t len, wrk_mamba_config_t *cfg, char *err,
                           size_t errlen);

/* State layout of a Mamba sequence, per layer: conv window [K-1][I] (oldest first), then
 * SSM state h [N][I]; fp32. */
static inline size_t wrk_mamba_layer_state_floats(const wrk_mamba_config_t *c)
{
    return (size_t)(c->d_conv - 1) * c->inner + (size_t)c->d_state * c->inner;
}

/* ---- the Mamba (v1) mixer, shared with the hybrids that use it (Jamba) ------------------- */

/* Binds one mixer's tensors, named prefix + "in_proj.weight", "conv1d.weight"/".bias",
 * "x_proj.weight", "dt_proj.weight"/".bias", "A_log", "D", "out_proj.weight" (+ in/out biases
 * when c->use_bias), into L (all but norm_w and the Jamba norms), the small ones converted to
 * fp32 through b, which advances by at most wrk_mamba_mixer_floats(c). */
int wrk_mamba_bind_mixer(wrk_binder_t *b, const wrk_mamba_config_t *c, const char *prefix,
                         wrk_mamba_layer_t *L);
size_t wrk_mamba_mixer_floats(const wrk_mamba_config_t *c);

/* Tensor-parallel shard by inner channels (tp_shard.c). */
int wrk_mamba_shard(const wrk_model_t *m, int rank, int size, wrk_shard_t **out, char *err,
                    size_t errlen);

#endif
