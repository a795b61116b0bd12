/* workers: the RecurrentGemma (Griffin) family's private layout (RecurrentGemmaForCausalLM),
 * shared by its loader (recurrentgemma.c) and its CPU forward pass (cpu/recurrentgemma_cpu.c). */
#ifndef RCD_WRK_RECURRENTGEMMA_H
#define RCD_WRK_RECURRENTGEMMA_H

#include <math.h>
#include <stdint.h>

#include "workers/model/model_int.h"

#define WRK_RG_MAX_PATTERN 64 /* entries of block_types */

typedef struct wrk_rg_config {
    int vocab;      /* V */
    int hidden;     /* D */
    int n_layers;   /* L */
    int mlp;        /* M = intermediate_size / 2 (transformers halves it) */
    int n_heads;    /* NQ: query heads, and the RG-LRU's gate blocks */
    int n_kv_heads; /* NKV: query head h reads kv head h / (NQ / NKV) */
    int head_dim;   /* hd: config.json's head_dim, else D / NQ (floor) */
    int lru_width;  /* Lw: RG-LRU width, a multiple of NQ */
    int block_w;    /* bw = Lw / NQ */
    int window;     /* W = attention_window_size: the last W positions, current included */
    int d_conv;     /* K */
    /* Partial RoPE: the first rot_dim = 2 * rot_freqs dims of every q/k head rotate,
     * inv_freq_i = theta^(-2i / rot_base) with rot_base = floor(hd * partial_rotary_factor)
     * (transformers' arange(0, dim, 2) / dim, which for an odd dim has ceil(dim / 2) terms). */
    int rot_base, rot_freqs;
    float rope_theta;
    float softcap;
    float eps;
    bool attn_bias, tie_embeddings;
    int n_pattern;
    bool pattern_attn[WRK_RG_MAX_PATTERN]; /* block_types; layer l is pattern[l % n] */
    int n_attn, n_rec;                     /* layers of each kind */
    int bos_id, eos_id, pad_id;
} wrk_rg_config_t;

typedef struct wrk_rg_layer {
    bool attn;
    int idx;                  /* index among the layers of its kind */
    size_t state_off;         /* floats from the start of the sequence's state */
    const float *tnorm_w;     /* [D], 1 + temporal_pre_norm.weight */
    const float *cnorm_w;     /* [D], 1 + channel_pre_norm.weight */
    wrk_mat_t gate, up, down; /* MLP [M x D], [M x D], [D x M] */
    const float *gate_b, *up_b, *down_b;
    /* recurrent block */
    wrk_mat_t lin_y, lin_x, lin_out; /* [Lw x D], [Lw x D], [D x Lw] */
    const float *y_b, *x_b, *out_b;
    const float *conv_w;  /* [K x Lw]: transposed from HF's [Lw,1,K], tap K-1 is newest */
    const float *conv_b;  /* [Lw] */
    /* RG-LRU gates: HF's [NQ][bw in][bw out] blocks act as x . W (not nn.Linear's x . W^T);
     * stored transposed, [NQ][bw out][bw in], so each block is an ordinary wrk_mat_t. */
    const float *gate_x;  /* [NQ][bw][bw] input gate */
    const float *gate_xb; /* [NQ][bw] */
    const float *gate_a;  /* [NQ][bw][bw] recurrent gate */
    const float *gate_ab; /* [NQ][bw] */
    const float *neg8_sp; /* [Lw] = -8 * softplus(recurrent_param) */
    /* attention block */
    wrk_mat_t q, k, v, o; /* [NQ hd x D], [NKV hd x D] x 2, [D x NQ hd] */
    const float *q_b, *k_b, *v_b, *o_b; /* q/k/v biases only with attention_bias */
} wrk_rg_layer_t;

typedef struct wrk_rg {
    wrk_rg_config_t cfg;
    wrk_rg_layer_t *layers;
    float *params;   /* one allocation holding every small fp32 parameter */
    float *inv_freq; /* [rot_freqs], fp32 as transformers computes it */
} wrk_rg_t;

/* Parses a RecurrentGemma config.json; every value range-checked. */
int wrk_rg_config_parse(const char *json, size_t len, wrk_rg_config_t *cfg, char *err,
                        size_t errlen);

/* State of a sequence (fp32): "position" [2] first, then per layer either the conv window
 * [K-1][Lw] (linear_x outputs, oldest first) and the RG-LRU state [Lw], or the key and value
 * rings [W][NKV][hd] (post-RoPE; position p lives in row p % W). The position is stored
 * exactly as two integer-valued floats, lo = p mod 2^24 and hi = p / 2^24. */
#define WRK_RG_POS_FLOATS 2
static inline size_t wrk_rg_rec_floats(const wrk_rg_config_t *c)
{
    return (size_t)c->d_conv * c->lru_width; /* (K-1) x Lw window + Lw state */
}
static inline size_t wrk_rg_ring_floats(const wrk_rg_config_t *c)
{
    return (size_t)c->window * c->n_kv_heads * c->head_dim;
}

/* A state blob holds bytes from outside (state_write): a position that is not two integers
 * in [0, 2^24) reads as 0, which restarts the sequence instead of indexing out of range. */
static inline int64_t wrk_rg_pos_get(const float *state)
{
    const float lo = state[0], hi = state[1];
    if (!(lo >= 0.f && lo < 16777216.f && lo == floorf(lo)) ||
        !(hi >= 0.f && hi < 16777216.f && hi == floorf(hi)))
        return 0;
    return (int64_t)hi * 16777216 + (int64_t)lo;
}
static inline void wrk_rg_pos_set(float *state, int64_t pos)
{
    state[0] = (float)(pos % 16777216);
    state[1] = (float)(pos / 16777216);
}

#endif
