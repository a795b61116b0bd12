/* workers/cpu: a small fixed thread pool that runs one function on every thread (the
 * caller is thread 0) with barriers between phases, so a whole forward pass costs one wake. */
#ifndef RCD_WRK_POOL_H
#define RCD_WRK_POOL_H

#include <stddef.h>

typedef struct wrk_pool wrk_pool_t;
typedef void (*wrk_pool_cb)(void *arg, int ith, int nth);

/* n_threads >= 1 (threads including the caller). */
int wrk_pool_create(int n_threads, wrk_pool_t **out);
void wrk_pool_destroy(wrk_pool_t *p); /* NULL-safe */
int wrk_pool_size(const wrk_pool_t *p);
/* Threads the next runs use, 1..size (default: size). Set by the caller between runs: the
 * threads past it sleep until it grows again (a job does not wake them). Jobs see it as their
 * nth, so a forward whose result does not depend on nth may change it at any step. */
void wrk_pool_set_active(wrk_pool_t *p, int n);
int wrk_pool_active(const wrk_pool_t *p);
/* Linux: worker ith's kernel thread id (for /proc/self/task/TID), 0 before it has started,
 * for ith 0 (the caller's thread) and elsewhere. */
int wrk_pool_tid(const wrk_pool_t *p, int ith);
/* Runs fn(arg, ith, nth) on the first nth = wrk_pool_active() threads; returns when all have
 * returned. Not reentrant. */
void wrk_pool_run(wrk_pool_t *p, wrk_pool_cb fn, void *arg);
/* Called by every thread inside fn: waits until all nth threads have reached it. */
void wrk_pool_barrier(wrk_pool_t *p);
/* wrk_pool_barrier that, while this thread waits for the others, prefetches into L2 up to
 * `bytes` bytes from `pf` (what it reads next: its share of the next matmul's weights), so
 * a wait for a slower thread streams the next phase's first bytes instead of spinning. The
 * last thread to arrive prefetches nothing; pf NULL or bytes 0: a plain barrier. */
void wrk_pool_barrier_pf(wrk_pool_t *p, const void *pf, size_t bytes);

/* [*lo, *hi) of n items for thread ith of nth, in multiples of `align` items. */
static inline void wrk_split(int n, int align, int ith, int nth, int *lo, int *hi)
{
    int blocks = (n + align - 1) / align;
    int b0 = (int)((long)blocks * ith / nth), b1 = (int)((long)blocks * (ith + 1) / nth);
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}
#endif
