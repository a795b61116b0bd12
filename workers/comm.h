/* workers: the communicator a tensor-parallel group uses between its ranks — rank, size,
 * in-place fp32 sum all-reduce, broadcast and barrier — behind one vtable with two
 * implementations: in-process (N threads play N ranks; comm_inproc.c) and NCCL (one rank
 * per GPU; cuda/comm_nccl.c, the only file that includes nccl.h). */
#ifndef RCD_WRK_COMM_H
#define RCD_WRK_COMM_H

#include <stddef.h>

#include "common/rcd_error.h"

typedef struct wrk_comm wrk_comm_t;

/* Every operation is collective: all ranks of the group call it, in the same order, with the
 * same sizes (and root), each from the one thread that plays that rank. Buffers live where
 * the implementation works: host memory for in-process, device memory for NCCL (where the
 * call is enqueued on the rank's stream and returns before it completes). */
typedef struct wrk_comm_i {
    const char *name;
    void (*destroy)(wrk_comm_t *c);
    /* buf[i] = sum over ranks of buf[i] for i < n, in place. */
    int (*all_reduce_sum)(wrk_comm_t *c, float *buf, size_t n);
    /* Every rank's buf gets root's `bytes` bytes. */
    int (*broadcast)(wrk_comm_t *c, void *buf, size_t bytes, int root);
    int (*barrier)(wrk_comm_t *c);
} wrk_comm_i;

/* Fields every implementation shares; callers may read them, never write. */
struct wrk_comm {
    const wrk_comm_i *vt;
    int rank; /* [0, size) */
    int size;
};

static inline int wrk_comm_all_reduce_sum(wrk_comm_t *c, float *buf, size_t n)
{
    return c->vt->all_reduce_sum(c, buf, n);
}
static inline int wrk_comm_broadcast(wrk_comm_t *c, void *buf, size_t bytes, int root)
{
    return c->vt->broadcast(c, buf, bytes, root);
}
static inline int wrk_comm_barrier(wrk_comm_t *c)
{
    return c->vt->barrier(c);
}
/* NULL-safe. Each rank's handle is destroyed on its own; the group's shared part goes with
 * the last one. Not collective. */
static inline void wrk_comm_destroy(wrk_comm_t *c)
{
    if (c) c->vt->destroy(c);
}

/* An in-process group of `size` ranks (1..WRK_COMM_INPROC_MAX): out[r] is the handle for the
 * thread that plays rank r. The sum is deterministic: element i is always
 * ((buf_0[i] + buf_1[i]) + buf_2[i]) + ... in rank order, whatever the timing, and every
 * rank receives the same bits. */
#define WRK_COMM_INPROC_MAX 256
int wrk_comm_inproc_create(int size, wrk_comm_t **out, char *err, size_t errlen);

/* NCCL (only with WITH_CUDA, in rcd_comm_nccl): one process driving `n` GPUs, out[r] the
 * handle of the thread that drives devices[r]. Operations are enqueued on the rank's stream
 * (by default one the communicator creates; wrk_comm_nccl_set_stream picks the caller's
 * cudaStream_t); barrier also waits for the stream. */
int wrk_comm_nccl_create(int n, const int *devices, wrk_comm_t **out, char *err, size_t errlen);
int wrk_comm_nccl_set_stream(wrk_comm_t *c, void *cuda_stream);

#endif
