/* workers: the Granite 4.0-H family's private layout (GraniteMoeHybridForCausalLM): Mamba2
 * mixers (the Mamba2 family's code) and GQA attention layers over a paged KV cache, each
 * followed by a shared MLP and optionally a top-k MoE. Shared by its loader (granite.c) and
 * its CPU forward pass (cpu/granite_cpu.c). */
#ifndef RCD_WRK_GRANITE_H
#define RCD_WRK_GRANITE_H

#include "workers/families/mamba2.h"

#define WRK_GRANITE_MAX_LAYERS 1024
#define WRK_GRANITE_MAX_TOPK 64

typedef struct wrk_granite_config {
    /* The mixer geometry (hidden, inner, heads, groups, state, conv, dt clamp, gated-norm
     * group width, eps, biases) and vocab/hidden/n_layers/token ids, as Mamba2 names them. */
    wrk_mamba2_config_t mx;
    bool attn[WRK_GRANITE_MAX_LAYERS]; /* layer_types: true = attention, false = mamba */
    int n_attn, n_mamba;
    int n_q, n_kv, head_dim; /* head_dim = hidden / n_q */
    bool attn_bias;
    bool rope;
    float rope_theta;
    float attn_mult;  /* the softmax scale (replaces 1/sqrt(head_dim)) */
    float embed_mult; /* multiplies embeddings */
    float resid_mult; /* multiplies every sublayer output before the residual add */
    float logits_div; /* logits are divided by it */
    int n_experts;    /* 0: dense (shared MLP only) */
    int top_k;
    int expert_dim; /* F: per-expert FFN width */
    int shared_dim; /* S: shared MLP width */
} wrk_granite_config_t;

typedef struct wrk_granite_layer {
    bool attn;
    int idx;                          /* index among the layers of its kind (state / KV layer) */
    const float *in_norm, *post_norm; /* [H] */
    wrk_mamba2_layer_t mx;            /* mamba layers */
    wrk_mat_t q, k, v, o; /* attention layers: [NQ hd x H], [NKV hd x H] x2, [H x NQ hd] */
    const float *qb, *kb, *vb, *ob; /* or NULL */
    wrk_mat_t sh_in, sh_out;        /* shared MLP: [2S x H], [H x S] */
    wrk_mat_t router;               /* [E x H] */
    wrk_mat_t ex_in, ex_out;        /* expert 0 of [E][2F x H] and [E][H x F]; see expert() */
} wrk_granite_layer_t;

typedef struct wrk_granite {
    wrk_granite_config_t cfg;
    wrk_granite_layer_t *layers;
    float *params;   /* every small fp32 parameter */
    float *inv_freq; /* [head_dim / 2] RoPE inverse frequencies (when rope) */
} wrk_granite_t;

/* Expert e's weight: the e-th [rows x cols] matrix of a stacked [E][rows][cols] tensor. */
static inline wrk_mat_t wrk_granite_expert(const wrk_mat_t *base, int e)
{
    wrk_mat_t w = *base;
    w.data =
        (const char *)base->data + (size_t)e * base->rows * base->cols * wrk_dtype_size(base->dt);
    return w;
}

struct cJSON;

/* RoPE's theta from config.json's root: rope_parameters {"rope_type": "default", "rope_theta"}
 * (what transformers 5.x writes) or a top-level rope_theta (default 10000); rope_scaling and
 * any other rope_type are refused (RCD_EUNSUPPORTED). Shared with Falcon-H1. */
int wrk_granite_rope_theta(const struct cJSON *root, float *rope_theta, char *err, size_t errlen);

/* num_key_value_heads into *n_kv: `absent` when the key is absent, n_q when it is null; it
 * must divide n_q (RCD_EFORMAT). Shared with Nemotron-H, Jamba and Falcon-H1. */
int wrk_granite_kv_heads(const struct cJSON *root, int n_q, int absent, int *n_kv, char *err,
                         size_t errlen);

/* The Mamba2 mixer's inner width I (at most 2^18, RCD_EFORMAT) and its head width
 * mx->head_dim: mamba_d_head, or I / mamba_n_heads when it is absent, null or "auto". Shared
 * with Falcon-H1. */
int wrk_granite_mamba_d_head(const struct cJSON *root, long I, wrk_mamba2_config_t *mx, char *err,
                             size_t errlen);

int wrk_granite_config_parse(const char *json, size_t len, wrk_granite_config_t *cfg, char *err,
                             size_t errlen);

#endif
