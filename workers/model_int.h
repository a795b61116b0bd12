/* workers: the loaded model's private layout, shared by the loader and the backends. */
#ifndef RCD_WRK_MODEL_INT_H
#define RCD_WRK_MODEL_INT_H

#include "workers/wrk.h"

/* A weight matrix [rows x cols], row-major, as stored in the checkpoint (zero-copy view
 * into the mmapped file; may be unaligned). */
typedef struct wrk_mat {
    wrk_dtype_t dt;
    const void *data;
    int rows, cols;
} wrk_mat_t;

typedef struct wrk_mamba_config {
    int vocab;      /* V */
    int hidden;     /* H */
    int inner;      /* I = intermediate_size */
    int d_state;    /* N */
    int d_conv;     /* K */
    int dt_rank;    /* R */
    int n_layers;   /* L */
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
} wrk_mamba_layer_t;

struct wrk_model {
    wrk_model_info_t info;
    char arch[64];
    wrk_st_set_t *st;
    wrk_mamba_config_t cfg;
    wrk_mat_t embed;   /* [V x H] */
    wrk_mat_t lm_head; /* [V x H]: the embedding when tied */
    const float *norm_f;
    wrk_mamba_layer_t *layers;
    float *params;     /* one allocation holding every small fp32 parameter */
    wrk_state_tensor_t *state_tensors;
};

/* Parses a Mamba config.json; every value range-checked. */
int wrk_mamba_config_parse(const char *json, size_t len, wrk_mamba_config_t *cfg, char *err,
                           size_t errlen);
/* Maps and validates the tensors of a Mamba checkpoint into m (m->st and m->cfg set). */
int wrk_mamba_bind(wrk_model_t *m, char *err, size_t errlen);

/* State layout of a Mamba sequence, per layer: conv window [K-1][I] (oldest first), then
 * SSM state h [N][I]; fp32. */
static inline size_t wrk_mamba_layer_state_floats(const wrk_mamba_config_t *c)
{
    return (size_t)(c->d_conv - 1) * c->inner + (size_t)c->d_state * c->inner;
}

#endif
