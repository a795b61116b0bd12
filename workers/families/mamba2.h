/* workers: the Mamba2 family's private layout (Mamba2ForCausalLM), shared by its loader
 * (mamba2.c) and its CPU forward pass (cpu/mamba2_cpu.c). */
#ifndef RCD_WRK_MAMBA2_H
#define RCD_WRK_MAMBA2_H

#include "workers/model/model_int.h"

typedef struct wrk_mamba2_config {
    int vocab;    /* V */
    int hidden;   /* H */
    int inner;    /* I = expand * H = n_heads * head_dim */
    int n_heads;  /* NH */
    int head_dim; /* P */
    int d_state;  /* N */
    int n_groups; /* G: B and C per group; head h uses group h / (NH / G) */
    int d_conv;   /* K */
    int n_layers; /* L */
    int expand;   /* I / H */
    int conv_dim; /* C = I + 2 G N: the channels the conv runs over (x, B, C) */
    int proj_dim; /* in_proj rows: I (z) + C (xBC) + NH (dt) */
    /* The gated RMSNorm normalizes groups of this many channels. transformers (5.x) uses
     * I / G (like mamba_ssm's RMSNormGated); the spec, read at an older commit, says full I. */
    int norm_group;
    float dt_min, dt_max; /* time_step_limit: clamp of dt after softplus (max may be inf) */
    bool use_bias, use_conv_bias, tie_embeddings;
    float eps;
    int bos_id, eos_id, pad_id;
    /* Tensor-parallel shard (all 0 unsharded; tp_shard.c): this config is then one rank's
     * heads [tp_head0, tp_head0 + n_heads) and groups [tp_group0, tp_group0 + n_groups) of
     * a model with tp_hpg heads per group; when a rank boundary cuts a gated-norm group,
     * tp_norm_groups (the model's I / norm_group) partial sums of squares are all-reduced. */
    int tp_head0, tp_group0, tp_hpg, tp_norm_groups;
    bool tp_norm_reduce;
    /* Falcon-H1's mixer variants (all 0 for Mamba2 and Granite): with proj_mult_on the in_proj
     * output's segments z, x, B, C, dt are multiplied by proj_mult[0..4] (after its bias);
     * gate says what follows the scan (WRK_MAMBA2_GATE_*). */
    bool proj_mult_on;
    float proj_mult[5];
    int gate;
} wrk_mamba2_config_t;

/* What follows the scan: RMSNorm(y silu(z)) per group (Mamba2), RMSNorm(y) silu(z) per group
 * (norm_before_gate), or y silu(z) with no norm and no norm.weight tensor. */
enum { WRK_MAMBA2_GATE_NORM = 0, WRK_MAMBA2_NORM_GATE = 1, WRK_MAMBA2_GATE_ONLY = 2 };

typedef struct wrk_mamba2_layer {
    const float *norm_w;  /* [H] */
    wrk_mat_t in_proj;    /* [I + C + NH x H]: z, xBC, dt */
    const float *in_b;    /* [I + C + NH] or NULL */
    const float *conv_w;  /* [K x C]: transposed from HF's [C,1,K], tap k=K-1 is newest */
    const float *conv_b;  /* [C] or NULL */
    const float *dt_b;    /* [NH] */
    const float *A;       /* [NH] = -exp(A_log) */
    const float *D;       /* [NH] */
    const float *gnorm_w; /* [I], gated RMSNorm weight */
    wrk_mat_t out_proj;   /* [H x I] */
    const float *out_b;   /* [H] or NULL */
} wrk_mamba2_layer_t;

typedef struct wrk_mamba2 {
    wrk_mamba2_config_t cfg;
    wrk_mamba2_layer_t *layers;
    float *params; /* one allocation holding every small fp32 parameter */
} wrk_mamba2_t;

/* Parses a Mamba2 config.json; every value range-checked. */
int wrk_mamba2_config_parse(const char *json, size_t len, wrk_mamba2_config_t *cfg, char *err,
                            size_t errlen);

/* The widths that follow from the geometry (n_heads, n_groups set): inner = I, conv_dim,
 * proj_dim and norm_group, for inner I and gn = n_groups * d_state (shared with Granite). */
void wrk_mamba2_derive(wrk_mamba2_config_t *c, long inner, long gn);

/* State layout of a Mamba2 sequence, per layer: conv window [K-1][C] (pre-conv xBC inputs,
 * oldest first), then SSM state [NH][P][N]; fp32. */
static inline size_t wrk_mamba2_conv_floats(const wrk_mamba2_config_t *c)
{
    return (size_t)(c->d_conv - 1) * c->conv_dim;
}
static inline size_t wrk_mamba2_layer_state_floats(const wrk_mamba2_config_t *c)
{
    return wrk_mamba2_conv_floats(c) + (size_t)c->n_heads * c->head_dim * c->d_state;
}

/* ---- the Mamba2 mixer, shared with the hybrids that use it (Granite 4.0-H, Nemotron-H) ---- */

/* Describes one mixer layer's two state tensors, t[0] "layers.<layer>.conv" and t[1]
 * "layers.<layer>.ssm", from byte `off`; returns the offset after them. cfg is a
 * wrk_mamba2_config_t (a wrk_mixer_state_fn, for wrk_describe_hybrid_state). */
size_t wrk_mamba2_describe_state(const void *cfg, int layer, wrk_state_tensor_t *t, size_t off);

/* Binds one mixer's tensors, named prefix + "in_proj.weight", "conv1d.weight"/".bias",
 * "dt_bias", "A_log", "D", "norm.weight" (not with WRK_MAMBA2_GATE_ONLY), "out_proj.weight"
 * (+ in/out biases when c->use_bias), into L (all but norm_w), converting the small ones to fp32 at *params, which
 * advances by at most wrk_mamba2_mixer_floats(c). */
int wrk_mamba2_bind_mixer(wrk_model_t *m, const wrk_mamba2_config_t *c, const char *prefix,
                          float **params, wrk_mamba2_layer_t *L, char *err, size_t errlen);
size_t wrk_mamba2_mixer_floats(const wrk_mamba2_config_t *c);

/* Tensor-parallel shard by heads (tp_shard.c). */
int wrk_mamba2_shard(const wrk_model_t *m, int rank, int size, wrk_shard_t **out, char *err,
                     size_t errlen);

#endif
