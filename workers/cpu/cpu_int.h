/* workers/cpu: the CPU backend's private state, shared by the vtable and the forward pass. */
#ifndef RCD_WRK_CPU_INT_H
#define RCD_WRK_CPU_INT_H

#include "workers/cpu/kernels.h"
#include "workers/cpu/pool.h"
#include "workers/model_int.h"

#define WRK_LOGIT_CHUNK 64 /* logit rows computed per lm_head pass */

typedef struct wrk_cpu {
    wrk_backend_t base;
    const wrk_kern_t *k;
    wrk_pool_t *pool;
    float *slots;        /* n_slots x state_floats */
    size_t state_floats;
    /* activations for max_step_tokens rows, allocated once */
    float *res, *u, *xz, *xc, *dbc, *dt, *y;
    float *logit_in;     /* WRK_LOGIT_CHUNK x H */
    float *logit_out;    /* WRK_LOGIT_CHUNK x V */
    float *scratch;      /* per thread: WRK_GEMM_BLOCK_ROWS x max(H, I) */
    size_t scratch_floats;
} wrk_cpu_t;

/* One step of the Mamba forward pass over a validated ragged batch. */
void wrk_mamba_cpu_step(wrk_cpu_t *c, const wrk_seq_t *seqs, int n_seqs);

#endif
