/* workers/cpu: the CPU backend's private state and the helpers every family's forward pass
 * shares (embedding gather, row-split matmul, final norm + lm_head). */
#ifndef RCD_WRK_CPU_INT_H
#define RCD_WRK_CPU_INT_H

#include "workers/cpu/kernels.h"
#include "workers/cpu/pool.h"
#include "workers/model_int.h"

#define WRK_LOGIT_CHUNK 64 /* logit rows computed per lm_head pass */

typedef struct wrk_cpu {
    wrk_backend_t base;
    const wrk_model_t *m;
    const wrk_kern_t *k;
    wrk_pool_t *pool;
    int n_threads;
    float *slots;        /* n_slots x state_floats */
    size_t state_floats;
    float *res;          /* residual stream, max_step_tokens x H */
    float *logit_in;     /* WRK_LOGIT_CHUNK x H */
    float *logit_out;    /* WRK_LOGIT_CHUNK x V */
    float *scratch;      /* per thread: WRK_GEMM_BLOCK_ROWS x m->max_matmul_cols */
    size_t scratch_floats;
    void *fam_ctx;       /* the family's activation buffers */
} wrk_cpu_t;

static inline float *wrk_cpu_slot(wrk_cpu_t *c, int slot)
{
    return c->slots + (size_t)slot * c->state_floats;
}

static inline float *wrk_cpu_scratch(wrk_cpu_t *c, int ith)
{
    return c->scratch + (size_t)ith * c->scratch_floats;
}

/* Total tokens and logit rows of a batch. */
void wrk_cpu_batch_size(const wrk_seq_t *seqs, int n_seqs, int *T, int *n_rows);

/* Embedding rows (times embed_scale) of this thread's share of the batch into c->res. */
void wrk_cpu_embed(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs);

/* y = (acc ? y : 0) + x W^T (+ bias) for T tokens, rows of W split between threads. */
void wrk_cpu_mm(wrk_cpu_t *c, int ith, int nth, const wrk_mat_t *W, const float *x, int ldx,
                int T, float *y, int ldy, const float *bias, bool acc);

/* Final RMSNorm and lm_head for every row that wants logits (reads c->res), written into
 * each sequence's buffer with logit_scale and softcap applied. All threads call it. */
void wrk_cpu_logits(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs,
                    int n_rows);

#endif
