/* workers/cpu: Granite 4.0-H's attention over the paged KV cache, its grouped top-k MoE and
 * its forward loop's steps, shared with the hybrids that have the same blocks (Nemotron-H,
 * Jamba, Falcon-H1). */
#ifndef RCD_WRK_GRANITE_CPU_H
#define RCD_WRK_GRANITE_CPU_H

#include "workers/cpu/cpu_int.h"

/* One GQA attention layer's weights and geometry. */
typedef struct wrk_attn_w {
    wrk_mat_t q, k, v, o;           /* [NQ hd x H], [NKV hd x H] x2, [H x NQ hd] */
    const float *qb, *kb, *vb, *ob; /* or NULL */
    int hidden, n_q, n_kv, head_dim;
    float scale;           /* softmax scale */
    const float *inv_freq; /* [head_dim / 2] RoPE inverse frequencies, or NULL: no positions */
    int kv_layer;          /* index among the attention layers */
    float k_mult;          /* multiplies k_proj's output before RoPE (Falcon-H1); 0 or 1: none */
} wrk_attn_w_t;

/* One work item of attention: tokens [t0, t0 + m) of one sequence (consecutive positions) and
 * query heads [h0, h0 + nh) of one KV head, scored together over each K/V row. */
typedef struct wrk_attn_item {
    int32_t t0, m, h0, nh;
} wrk_attn_item_t;

/* At most this many queries (tokens x heads) in one item. */
#define WRK_ATTN_MQ 16

/* Attention activations for up to T tokens. tok_slot / tok_pos (slot and absolute position
 * of every token of the step) are filled by the family before its first attention layer. */
typedef struct wrk_attn_bufs {
    float *q, *k, *v, *att;
    float *scores; /* per thread: scores_floats, at least the KV capacity */
    size_t scores_floats;
    float *qo; /* per thread: an item's queries and outputs, 2 x WRK_ATTN_MQ x head_dim */
    size_t qo_floats;
    int32_t *tok_slot, *tok_pos;
    wrk_attn_item_t *items; /* [T x n_q]: the step's items (thread 0 fills them) */
    int n_items;
} wrk_attn_bufs_t;
int wrk_attn_bufs_alloc(struct wrk_cpu *c, int n_q, int n_kv, int head_dim, size_t T,
                        wrk_attn_bufs_t *b);
void wrk_attn_bufs_free(wrk_attn_bufs_t *b);
/* tok_slot / tok_pos of the batch (thread 0; positions continue from the KV length). */
void wrk_attn_positions(struct wrk_cpu *c, const wrk_seq_t *seqs, int n_seqs,
                        const wrk_attn_bufs_t *b);

/* The step's attention items (b->items, b->n_items) from tok_slot / tok_pos, for nth threads:
 * thread 0, after the positions are filled and before the barrier ahead of wrk_attn_core. */
void wrk_attn_plan(wrk_attn_bufs_t *b, int T, int NQ, int NKV, int nth);
/* Causal softmax attention of every token's query heads (b->q, [T][NQ][hd]) over the stored
 * K/V of attention layer `layer` (head h reads KV head h / (NQ / NKV)), into b->att; items
 * split between the pool threads by the positions they read. No barrier at the end. Each
 * query's output is bitwise the same whichever item carries it (kernels.h, attn_scores). */
void wrk_attn_core(struct wrk_cpu *c, int ith, int nth, const wrk_attn_bufs_t *b, int layer,
                   int NQ, int NKV, int hd, float scale);
/* q, k, v projections of u [T x H], RoPE when inv_freq, K/V appended to the paged cache,
 * causal softmax attention over every stored position (query head h reads KV head
 * h / (NQ / NKV)), o_proj into out [T x H]. All pool threads; ends after a barrier. */
void wrk_attn_cpu(struct wrk_cpu *c, int ith, int nth, const wrk_attn_w_t *w,
                  wrk_attn_bufs_t *b, int T, const float *u, float *out);

/* The start of a hybrid's forward: the embeddings into c->res, with ab (not NULL) the step's
 * tok_slot / tok_pos (thread 0), and this thread's tokens [*t0, *t1). Ends after a barrier. */
void wrk_hybrid_begin(wrk_cpu_fwd_t *f, int ith, int nth, const wrk_attn_bufs_t *ab, int *t0,
                      int *t1);

/* For tokens [t0, t1) of width H: c->res[t] += o[t] * m (o NULL: nothing added), then with w
 * (not NULL) u[t] = rmsnorm(c->res[t]) * w. No barrier. */
void wrk_residual_norm(struct wrk_cpu *c, int t0, int t1, int H, const float *o, float m,
                       const float *w, float eps, float *u);

/* Top-k MoE activations for up to T tokens. */
typedef struct wrk_moe_bufs {
    float *rl;                /* [T x E] router logits */
    int32_t *sel;             /* [T x k] chosen experts, ascending */
    float *wt;                /* [T x k] their weights */
    int32_t *row_of;          /* [T x k] row of (token, j) in the grouped buffers */
    int32_t *row_tok;         /* [T k] token of each grouped row */
    int32_t *start;           /* [E + 1] first grouped row of each expert */
    float *xg, *tg, *ug, *og; /* [T k x H], [T k x 2F], [T k x F], [T k x H] */
} wrk_moe_bufs_t;
int wrk_moe_bufs_alloc(int H, int F, int E, int k, size_t T, wrk_moe_bufs_t *b);
void wrk_moe_bufs_free(wrk_moe_bufs_t *b);

/* Expert e's matrices: its gate/up projection either fused ([2F x H], gate rows first; up.data
 * NULL) or as two [F x H] matrices, and its down projection [H x F]. */
typedef void (*wrk_moe_expert_fn)(const void *ctx, int e, wrk_mat_t *gate, wrk_mat_t *up,
                                  wrk_mat_t *down);

/* The k largest of v[0..n) (k <= n), descending, ties to the lower index (as torch.topk):
 * their indices into idx[k] and values into val[k]. */
void wrk_topk(const float *v, int n, int k, int32_t *idx, float *val);

/* Groups the T x k (token, expert) pairs of sel by expert, a counting sort: start [E + 1]
 * gets each expert's first grouped row, row_of [T x k] the row of (token, j), row_tok [T k]
 * the token of each row (rows of one expert in token order). One thread. */
void wrk_moe_group(const int32_t *sel, int E, int k, int T, int32_t *start, int32_t *row_of,
                   int32_t *row_tok);

/* out [T x H] += sum over each token's k experts of wt * down(silu(gate u) * up u), with
 * b->sel / b->wt filled and a barrier passed since. Tokens are grouped per expert (a counting
 * sort) so each expert's weights are read once. All pool threads; ends after a barrier. */
void wrk_moe_cpu(struct wrk_cpu *c, int ith, int nth, const wrk_moe_bufs_t *b,
                 wrk_moe_expert_fn expert, const void *ctx, int H, int F, int E, int k, int T,
                 const float *u, float *out);

#endif
