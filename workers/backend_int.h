/* workers: what every backend implements and shares — the vtable behind wrk.h's opaque
 * wrk_backend_t (ggml-style), the fields the wrappers read, the option defaults and the batch
 * validation. Only backends (cpu/, cuda/) include it. */
#ifndef RCD_WRK_BACKEND_INT_H
#define RCD_WRK_BACKEND_INT_H

#include "workers/wrk.h"

/* The backend vtable. CPU is the reference; CUDA implements the same. */
typedef struct wrk_backend_i {
    const char *name;
    void (*destroy)(wrk_backend_t *b);
    int (*state_reset)(wrk_backend_t *b, int slot);
    int (*state_copy)(wrk_backend_t *b, int dst_slot, int src_slot);
    int (*step)(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen);
    /* The slot's state bytes now; NULL where every state is info->state_bytes, and then the
     * wrappers check cap / len against state_bytes before state_read_n / state_write_n (which
     * may ignore them) and set *len themselves. */
    size_t (*state_size)(wrk_backend_t *b, int slot);
    int (*state_read_n)(wrk_backend_t *b, int slot, void *dst, size_t cap, size_t *len);
    int (*state_write_n)(wrk_backend_t *b, int slot, const void *src, size_t len);
    /* The paged KV pool: free and total blocks. NULL: no pool (fixed-size states). */
    void (*kv_blocks)(wrk_backend_t *b, int64_t *n_free, int64_t *n_total);
    /* wrk_spec_accept; NULL: no speculative rollback, verify entries are refused. */
    int (*spec_accept)(wrk_backend_t *b, int slot, int n_keep);
    /* wrk_spec_supported; NULL: spec_accept alone decides. */
    bool (*spec_ok)(const wrk_backend_t *b);
    /* wrk_threads; NULL: no pool. */
    void (*threads)(wrk_backend_t *b, int *active, int *max, uint64_t *changes, bool *adapting,
                    const char **why);
} wrk_backend_i;

/* Fields every backend shares (its own struct starts with one); set at creation. */
struct wrk_backend {
    const wrk_backend_i *vt;
    const wrk_model_t *model; /* borrowed: must outlive the backend */
    int n_slots;
    int max_step_tokens;
    const char *isa;          /* kernels in use, for logs and benchmarks */
};

/* Validation shared by every backend's step. */
int wrk__check_batch(const wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err,
                     size_t errlen);

#endif
