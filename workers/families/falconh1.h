/* workers: the Falcon-H1 family's private layout (FalconH1ForCausalLM). Every layer runs a
 * Mamba2 mixer (the Mamba2 family's code, with Falcon-H1's in_proj multipliers and gate
 * variants) and GQA attention (Granite's code) in parallel on the same normed input, sums
 * them with their multipliers, then a SwiGLU MLP. Shared by its loader (falconh1.c) and its
 * CPU forward pass (cpu/falconh1_cpu.c); the math is falconh1.md here. */
#ifndef RCD_WRK_FALCONH1_H
#define RCD_WRK_FALCONH1_H

#include "workers/families/granite.h"

#define WRK_FALCONH1_MAX_LAYERS 1024

typedef struct wrk_falconh1_config {
    /* The mixer geometry (I = mamba_d_ssm or mamba_expand * hidden_size), its multipliers
     * (proj_mult = ssm_multipliers) and gate (mamba_rms_norm, mamba_norm_before_gate), and
     * vocab/hidden/n_layers/eps/token ids, as Mamba2 names them. */
    wrk_mamba2_config_t mx;
    int n_q, n_kv, head_dim;            /* head_dim: config.head_dim, else hidden / n_q */
    int ffn;                            /* intermediate_size */
    bool attn_bias, mlp_bias, out_bias; /* attention_bias, mlp_bias, projectors_bias */
    float rope_theta;
    float embed_mult, lm_head_mult;
    float attn_in_mult, attn_out_mult, key_mult;
    float ssm_in_mult, ssm_out_mult;
    float mlp_gate_mult, mlp_down_mult; /* mlp_multipliers */
} wrk_falconh1_config_t;

typedef struct wrk_falconh1_layer {
    const float *in_norm, *ff_norm;      /* input_layernorm, pre_ff_layernorm [H] */
    wrk_mamba2_layer_t mx;               /* mamba.* (gnorm_w NULL without mamba_rms_norm) */
    wrk_granite_layer_t at;              /* self_attn.*: q, k, v, o (+ biases), idx = the layer */
    wrk_mat_t gate, up, down;            /* feed_forward: [F x H] x2, [H x F] */
    const float *gate_b, *up_b, *down_b; /* or NULL */
} wrk_falconh1_layer_t;

typedef struct wrk_falconh1 {
    wrk_falconh1_config_t cfg;
    wrk_falconh1_layer_t *layers;
    float *params;   /* every small fp32 parameter */
    float *inv_freq; /* [head_dim / 2] RoPE inverse frequencies */
} wrk_falconh1_t;

int wrk_falconh1_config_parse(const char *json, size_t len, wrk_falconh1_config_t *cfg, char *err,
                              size_t errlen);

#endif
