/* workers: the Jamba family's private layout (JambaForCausalLM): Mamba (v1) mixers with RMSNorms
 * on dt, B and C (the Mamba family's code) and GQA attention layers without positions over a
 * paged KV cache (Granite's code), each followed by a dense SwiGLU MLP or a top-k MoE.
 * Shared by its loader (jamba.c) and its CPU forward pass (cpu/jamba_cpu.c). */
#ifndef RCD_WRK_JAMBA_H
#define RCD_WRK_JAMBA_H

#include "workers/families/mamba.h"

#define WRK_JAMBA_MAX_LAYERS 1024
#define WRK_JAMBA_MAX_TOPK 64

typedef struct wrk_jamba_config {
    /* The mixer geometry (hidden, inner = mamba_expand * hidden, d_state, d_conv, dt_rank,
     * biases, eps) and vocab / n_layers / token ids, as Mamba names them. */
    wrk_mamba_config_t mx;
    int attn_period, attn_offset;     /* layer l is attention iff l % period == offset */
    int expert_period, expert_offset; /* layer l is MoE iff l % period == offset, E > 1 */
    bool attn[WRK_JAMBA_MAX_LAYERS];
    bool moe[WRK_JAMBA_MAX_LAYERS];
    int n_attn, n_mamba, n_moe;
    int n_q, n_kv, head_dim;
    int ffn_dim;   /* F: intermediate_size, the MLP's and every expert's width */
    int n_experts; /* E (num_experts) */
    int top_k;
} wrk_jamba_config_t;

typedef struct wrk_jamba_layer {
    bool attn, moe;
    int idx;                        /* index among the layers of its kind (state / KV layer) */
    const float *in_norm, *ff_norm; /* [H] input_layernorm, pre_ff_layernorm */
    wrk_mamba_layer_t mx;           /* mamba layers */
    wrk_mat_t q, k, v, o;           /* attention layers */
    wrk_mat_t gate, up, down;       /* dense MLP: [F x H] x2, [H x F] */
    wrk_mat_t router;               /* MoE: [E x H] */
    wrk_mat_t *ex;                  /* MoE: [E][3]: gate, up, down */
} wrk_jamba_layer_t;

typedef struct wrk_jamba {
    wrk_jamba_config_t cfg;
    wrk_jamba_layer_t *layers;
    float *params; /* every small fp32 parameter */
} wrk_jamba_t;

int wrk_jamba_config_parse(const char *json, size_t len, wrk_jamba_config_t *cfg, char *err,
                           size_t errlen);

#endif
