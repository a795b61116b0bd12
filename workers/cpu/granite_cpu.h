/* workers/cpu: Granite 4.0-H's GQA attention over the paged KV cache, exported for the hybrids
 * that reuse it (Falcon-H1). */
#ifndef RCD_WRK_GRANITE_CPU_H
#define RCD_WRK_GRANITE_CPU_H

#include "workers/cpu/cpu_int.h"
#include "workers/families/granite.h"

/* The attention's geometry and scales. */
typedef struct wrk_attn_geom {
    int hidden, n_q, n_kv, head_dim;
    bool rope;
    const float *inv_freq; /* [head_dim / 2] when rope */
    float scale;           /* multiplies q . k before the softmax */
    float k_mult;          /* multiplies k_proj's output (before RoPE); 1: none */
} wrk_attn_geom_t;

/* Its activations for up to T tokens: q [T x NQ hd], k, v [T x NKV hd], att [T x NQ hd],
 * scores (per thread, scores_floats each: the KV capacity), and per token its slot and
 * absolute position (the caller fills them before the first layer). */
typedef struct wrk_attn_bufs {
    float *q, *k, *v, *att, *scores;
    size_t scores_floats;
    int32_t *tok_slot, *tok_pos;
} wrk_attn_bufs_t;

/* One attention layer over the T stacked tokens, called by every pool thread: q, k, v of the
 * normed input u [T x H] (L->q, k, v, o and biases; KV layer L->idx), RoPE, K/V appended to
 * the paged cache, causal softmax over every stored position (GQA: query head h reads KV head
 * h / (NQ / NKV)), o_proj into out [T x H]. Ends after a barrier. */
void wrk_granite_cpu_attention(struct wrk_cpu *c, int ith, int nth, int T, const wrk_attn_geom_t *g,
                               const wrk_granite_layer_t *L, const wrk_attn_bufs_t *b,
                               const float *u, float *out);

#endif
