/* workers: the Qwen3-Next family's private layout (Qwen3NextForCausalLM): Gated DeltaNet
 * layers ("linear_attention": a short causal conv over q, k, v and the gated delta rule on a
 * fixed [heads][dk][dv] state) and gated full-attention layers over the paged KV cache, each
 * followed by a dense SwiGLU MLP or a top-k MoE with a sigmoid-gated shared expert. Shared by
 * its loader (qwen3next.c) and its CPU forward pass (cpu/qwen3next_cpu.c). Every RMSNorm of
 * the model except the DeltaNet's gated one is zero-centred (applied as 1 + w): the loader
 * bakes 1 + w in. */
#ifndef RCD_WRK_QWEN3NEXT_H
#define RCD_WRK_QWEN3NEXT_H

#include "workers/model/model_int.h"

#define WRK_QWEN3NEXT_MAX_LAYERS 1024
#define WRK_QWEN3NEXT_MAX_TOPK 64

typedef struct wrk_qwen3next_config {
    int vocab, hidden, n_layers;
    float eps;
    bool tie_embeddings;
    int bos_id, eos_id, pad_id;
    bool attn[WRK_QWEN3NEXT_MAX_LAYERS]; /* layer_types: true = full_attention */
    bool moe[WRK_QWEN3NEXT_MAX_LAYERS];  /* the layer's MLP is the sparse MoE block */
    int n_attn, n_gdn;
    /* full attention */
    int n_q, n_kv, head_dim;
    bool attn_bias;
    float rope_theta;
    int rot_dim; /* int(head_dim * partial_rotary_factor): the rotated leading dims, even */
    /* Gated DeltaNet */
    int nk, nv, dk, dv, d_conv;
    int key_dim, value_dim, conv_dim; /* nk dk, nv dv, 2 key_dim + value_dim */
    /* MLPs */
    int ffn_dim; /* intermediate_size: the dense MLP */
    int n_experts, top_k, expert_dim, shared_dim, sparse_step;
    bool norm_topk;
} wrk_qwen3next_config_t;

typedef struct wrk_qwen3next_layer {
    bool attn, moe;
    int idx;                          /* index among the layers of its kind (state / KV layer) */
    const float *in_norm, *post_norm; /* [H], 1 + w */
    /* Gated DeltaNet */
    wrk_mat_t qkvz;      /* [2 key_dim + 2 value_dim x H], per key head: q, k, v (r dv), z (r dv) */
    wrk_mat_t ba;        /* [2 nv x H], per key head: b (r), a (r) */
    const float *conv_w; /* [K x C], tap K-1 newest, channels q | k | v */
    const float *dt_b;   /* [nv] */
    const float *A;      /* [nv] = -exp(A_log) */
    const float *gnorm;  /* [dv], the gated norm's weight as is */
    wrk_mat_t out;       /* [H x value_dim] */
    /* full attention */
    wrk_mat_t q, k, v, o; /* [2 NQ hd x H] (per head: query, gate), [NKV hd x H] x2, [H x NQ hd] */
    const float *qb, *kb, *vb, *ob;
    const float *q_norm, *k_norm; /* [hd], 1 + w */
    /* MLP */
    wrk_mat_t gate, up, down;             /* dense: [F x H] x2, [H x F]; shared expert */
    wrk_mat_t router, sh_gate;            /* [E x H], [1 x H] */
    wrk_mat_t *ex_gate, *ex_up, *ex_down; /* [E] each */
} wrk_qwen3next_layer_t;

typedef struct wrk_qwen3next {
    wrk_qwen3next_config_t cfg;
    wrk_qwen3next_layer_t *layers;
    float *params;   /* every small fp32 parameter */
    float *inv_freq; /* [rot_dim / 2] used (head_dim / 2 allocated) */
} wrk_qwen3next_t;

/* Per GDN layer the state: conv window [K-1][C] (pre-conv inputs, oldest first), the
 * delta-rule state S [nv][dk][dv] at the last WRK_GDN_BLOCK boundary (absolute positions),
 * then the open block's rows per value head: keys [nv][WRK_GDN_BLOCK][dk], corrected values
 * [nv][WRK_GDN_BLOCK][dv] and cumulative log-decays [nv][WRK_GDN_BLOCK]; fp32. After the
 * layers one uint64 "gdn.n_pending": the open block's tokens (position mod WRK_GDN_BLOCK). */
#define WRK_QWEN3NEXT_GDN_BLOCK 64 /* = WRK_GDN_BLOCK (workers/cpu/kernels.h) */
static inline size_t wrk_qwen3next_conv_floats(const wrk_qwen3next_config_t *c)
{
    return (size_t)(c->d_conv - 1) * c->conv_dim;
}
static inline size_t wrk_qwen3next_pending_floats(const wrk_qwen3next_config_t *c)
{
    return (size_t)c->nv * WRK_QWEN3NEXT_GDN_BLOCK * (size_t)(c->dk + c->dv + 1);
}
static inline size_t wrk_qwen3next_layer_state_floats(const wrk_qwen3next_config_t *c)
{
    return wrk_qwen3next_conv_floats(c) + (size_t)c->nv * c->dk * c->dv +
           wrk_qwen3next_pending_floats(c);
}

int wrk_qwen3next_config_parse(const char *json, size_t len, wrk_qwen3next_config_t *cfg, char *err,
                               size_t errlen);

#endif
