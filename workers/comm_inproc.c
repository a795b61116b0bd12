/* workers: the in-process communicator (see comm.h). N threads play N ranks over shared
 * memory: each call publishes the rank's buffer, then ranks reduce disjoint slices in rank
 * order and gather the others' slices, with barriers between the phases. No copy buffer, no
 * allocation per call. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "workers/comm.h"

#define SPIN_BEFORE_YIELD 1000
#define SPIN_BEFORE_SLEEP 20000
#define SLICE_ALIGN 16 /* floats: slices start on their own cache line */

typedef struct group {
    int size;
    atomic_int refs; /* handles still alive */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int bar_count;
    atomic_uint bar_gen; /* bumped (under mu) by the last rank to arrive */
    void **ptr;          /* [size] buffer each rank published for the current call */
    size_t *len;         /* [size] its length, to check that every rank agrees */
} group_t;

typedef struct inproc {
    wrk_comm_t base;
    group_t *g;
} inproc_t;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spins briefly (a step is a few microseconds apart on a quiet machine), then sleeps, so an
 * oversubscribed machine (CI, sanitizers) does not burn its cores. */
static void barrier(group_t *g)
{
    if (g->size == 1) return;
    unsigned gen = atomic_load_explicit(&g->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&g->bar_count, 1, memory_order_acq_rel) == g->size - 1) {
        atomic_store_explicit(&g->bar_count, 0, memory_order_relaxed);
        pthread_mutex_lock(&g->mu);
        atomic_store_explicit(&g->bar_gen, gen + 1, memory_order_release);
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return;
    }
    for (int spins = 0; spins < SPIN_BEFORE_SLEEP; spins++) {
        if (atomic_load_explicit(&g->bar_gen, memory_order_acquire) != gen) return;
        if (spins > SPIN_BEFORE_YIELD)
            sched_yield();
        else
            cpu_relax();
    }
    pthread_mutex_lock(&g->mu);
    while (atomic_load_explicit(&g->bar_gen, memory_order_acquire) == gen)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

/* [lo, hi) of n floats for rank r of size, cut at SLICE_ALIGN boundaries. */
static void slice(size_t n, int r, int size, size_t *lo, size_t *hi)
{
    size_t blocks = (n + SLICE_ALIGN - 1) / SLICE_ALIGN;
    size_t b0 = blocks * (size_t)r / (size_t)size, b1 = blocks * (size_t)(r + 1) / (size_t)size;
    *lo = b0 * SLICE_ALIGN < n ? b0 * SLICE_ALIGN : n;
    *hi = b1 * SLICE_ALIGN < n ? b1 * SLICE_ALIGN : n;
}

/* Shares this rank's buffer. Every rank sees every length, so all of them agree on a
 * mismatch (a caller bug) and return RCD_EINVAL together, after a barrier that keeps the
 * lengths readable until all have looked: the group stays usable, nobody deadlocks. */
static int publish(inproc_t *c, void *buf, size_t len)
{
    group_t *g = c->g;
    g->ptr[c->base.rank] = buf;
    g->len[c->base.rank] = len;
    barrier(g);
    bool same = true;
    for (int r = 0; r < g->size; r++)
        same = same && g->len[r] == len;
    if (same) return 0;
    barrier(g);
    return RCD_EINVAL;
}

static int inproc_all_reduce_sum(wrk_comm_t *base, float *buf, size_t n)
{
    inproc_t *c = (inproc_t *)base;
    group_t *g = c->g;
    const int me = base->rank, size = g->size;
    if (size == 1 || n == 0) return 0;
    int rc = publish(c, buf, n);
    if (rc) return rc;
    /* Reduce-scatter: this rank sums its slice over every rank's buffer, in rank order, and
     * writes it into its own buffer. Nobody else reads this slice of this buffer in this
     * phase, and this rank reads nobody's own slice. */
    size_t lo, hi;
    slice(n, me, size, &lo, &hi);
    const float *const *src = (const float *const *)g->ptr;
    for (size_t i = lo; i < hi; i++) {
        float s = src[0][i];
        for (int r = 1; r < size; r++)
            s += src[r][i];
        buf[i] = s;
    }
    barrier(g);
    /* All-gather: copy every other rank's reduced slice out of its buffer. */
    for (int r = 0; r < size; r++) {
        if (r == me) continue;
        slice(n, r, size, &lo, &hi);
        if (hi > lo) memcpy(buf + lo, src[r] + lo, (hi - lo) * sizeof(float));
    }
    barrier(g); /* others may still be reading this rank's slice until here */
    return 0;
}

static int inproc_broadcast(wrk_comm_t *base, void *buf, size_t bytes, int root)
{
    inproc_t *c = (inproc_t *)base;
    group_t *g = c->g;
    if (root < 0 || root >= g->size) return RCD_EINVAL;
    if (g->size == 1 || bytes == 0) return 0;
    int rc = publish(c, buf, bytes);
    if (rc) return rc;
    if (base->rank != root) memcpy(buf, g->ptr[root], bytes);
    barrier(g);
    return 0;
}

static int inproc_barrier(wrk_comm_t *base)
{
    barrier(((inproc_t *)base)->g);
    return 0;
}

static void group_unref(group_t *g)
{
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1) return;
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->ptr);
    free(g->len);
    free(g);
}

static void inproc_destroy(wrk_comm_t *base)
{
    inproc_t *c = (inproc_t *)base;
    group_unref(c->g);
    free(c);
}

static const wrk_comm_i inproc_vt = {
    .name = "inproc",
    .destroy = inproc_destroy,
    .all_reduce_sum = inproc_all_reduce_sum,
    .broadcast = inproc_broadcast,
    .barrier = inproc_barrier,
};

int wrk_comm_inproc_create(int size, wrk_comm_t **out, char *err, size_t errlen)
{
    if (size < 1 || size > WRK_COMM_INPROC_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "comm: group size %d out of [1, %d]", size,
                        WRK_COMM_INPROC_MAX);
    for (int r = 0; r < size; r++)
        out[r] = NULL;
    group_t *g = calloc(1, sizeof *g);
    if (!g) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    g->size = size;
    g->ptr = calloc((size_t)size, sizeof *g->ptr);
    g->len = calloc((size_t)size, sizeof *g->len);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    atomic_init(&g->refs, 1); /* the creator's, dropped below */
    bool ok = g->ptr && g->len;
    for (int r = 0; ok && r < size; r++) {
        inproc_t *c = calloc(1, sizeof *c);
        if (!c) {
            ok = false;
            break;
        }
        c->base = (wrk_comm_t){.vt = &inproc_vt, .rank = r, .size = size};
        c->g = g;
        atomic_fetch_add(&g->refs, 1);
        out[r] = &c->base;
    }
    if (!ok)
        for (int r = 0; r < size; r++) {
            wrk_comm_destroy(out[r]);
            out[r] = NULL;
        }
    group_unref(g);
    return ok ? 0 : rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
}
