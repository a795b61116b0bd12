/* workers/cpu: Granite 4.0-H's attention layer, shared with the hybrids whose attention is
 * the same GQA over the paged KV cache (Nemotron-H: no positions, no biases). */
#ifndef RCD_WRK_GRANITE_CPU_H
#define RCD_WRK_GRANITE_CPU_H

#include "workers/cpu/cpu_int.h"

/* One attention layer's weights, geometry and scratch (T = the step's tokens). */
typedef struct wrk_granite_attn {
    const wrk_mat_t *q, *k, *v, *o;            /* [NQ hd x H], [NKV hd x H] x2, [H x NQ hd] */
    const float *qb, *kb, *vb, *ob;            /* or NULL */
    int hidden, n_q, n_kv, head_dim, kv_layer; /* kv_layer: the layer's index in the KV cache */
    float scale;                               /* multiplies q . k */
    const float *inv_freq;                     /* RoPE inverse frequencies, or NULL: no positions */
    const int32_t *tok_slot, *tok_pos;         /* per token of the step: slot, absolute position */
    float *q_buf, *k_buf, *v_buf, *att;        /* [T x NQ hd], [T x NKV hd] x2, [T x NQ hd] */
    float *scores;                             /* per thread: scores_floats (the KV capacity) */
    size_t scores_floats;
} wrk_granite_attn_t;

/* Called by every pool thread with the normed input u [T x H] ready: q, k, v projections,
 * RoPE (when inv_freq), K/V appended to the slots' paged KV blocks (reserved by the backend),
 * causal softmax attention over every stored position (query head h reads KV head
 * h / (NQ / NKV)), o_proj into out [T x H]. Returns after a barrier. */
void wrk_granite_cpu_attention(struct wrk_cpu *c, int ith, int nth, int T,
                               const wrk_granite_attn_t *A, const float *u, float *out);

#endif
