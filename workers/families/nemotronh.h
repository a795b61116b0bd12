/* workers: the Nemotron-H family's private layout (NemotronHForCausalLM): a stack of blocks,
 * each one RMSNorm + ONE mixer + residual, the mixer picked per layer by the pattern
 * (M = Mamba2 mixer, * = GQA attention without positions over the paged KV cache,
 * - = relu² MLP, E = sigmoid-routed top-k MoE of relu² experts plus one shared relu² MLP).
 * Shared by its loader (nemotronh.c) and its CPU forward pass (cpu/nemotronh_cpu.c). */
#ifndef RCD_WRK_NEMOTRONH_H
#define RCD_WRK_NEMOTRONH_H

#include "workers/families/mamba2.h"

#define WRK_NEMOTRONH_MAX_LAYERS 1024
#define WRK_NEMOTRONH_MAX_TOPK 64

/* Block kinds, as the pattern letters transformers' hybrid_override_pattern uses. */
enum { WRK_NH_MAMBA = 'M', WRK_NH_ATTN = '*', WRK_NH_MLP = '-', WRK_NH_MOE = 'E' };

typedef struct wrk_nemotronh_config {
    /* The Mamba2 mixer geometry (hidden, inner = mamba_num_heads * mamba_head_dim, groups,
     * state, conv, dt clamp [time_step_min, inf), gated-norm group I / G, eps, biases) and
     * vocab/hidden/n_layers/token ids, as Mamba2 names them. */
    wrk_mamba2_config_t mx;
    char kind[WRK_NEMOTRONH_MAX_LAYERS]; /* per layer: M, *, - or E */
    int n_attn, n_mamba, n_mlp, n_moe;
    int n_q, n_kv, head_dim; /* attention; head_dim from config.head_dim (default 128) */
    float attn_scale;        /* head_dim^-0.5 */
    int mlp_dim;             /* intermediate_size */
    bool mlp_bias;           /* MLPs, shared experts (experts never have biases) */
    int n_experts, top_k, expert_dim, shared_dim;
    int latent; /* moe_latent_size: experts run in this width between two projections; 0: H */
    int n_group, topk_group; /* grouped routing: keep the topk_group best groups */
    bool norm_topk;
    float routed_scale;
} wrk_nemotronh_config_t;

typedef struct wrk_nemotronh_layer {
    char kind;
    int idx;                    /* index among the layers of its kind (Mamba state / KV layer) */
    const float *norm;          /* [H] the block's RMSNorm */
    wrk_mamba2_layer_t mx;      /* M */
    wrk_mat_t q, k, v, o;       /* *: [NQ hd x H], [NKV hd x H] x2, [H x NQ hd] */
    wrk_mat_t up, down;         /* -: [F x H], [H x F]; E: the shared expert [S x H], [H x S] */
    const float *up_b, *down_b; /* or NULL (mlp_bias) */
    wrk_mat_t router;           /* E: [E x H] */
    const float *corr;          /* E: [E] e_score_correction_bias */
    wrk_mat_t *ex_up, *ex_down; /* E: [E] of [Fe x D], [D x Fe], D = latent or H */
    wrk_mat_t lat_in, lat_out;  /* E with latent: [D x H], [H x D] */
    const float *lat_in_b, *lat_out_b; /* or NULL (mlp_bias) */
} wrk_nemotronh_layer_t;

typedef struct wrk_nemotronh {
    wrk_nemotronh_config_t cfg;
    wrk_nemotronh_layer_t *layers;
    float *params; /* every small fp32 parameter */
} wrk_nemotronh_t;

int wrk_nemotronh_config_parse(const char *json, size_t len, wrk_nemotronh_config_t *cfg, char *err,
                               size_t errlen);

#endif
