/* workers/cpu: the thread pool (see pool.h). Workers spin briefly for the next job, then
 * sleep on a condition variable; barriers spin, yielding when the machine is oversubscribed. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common/rcd_error.h"
#include "workers/cpu/pool.h"

#define SPIN_BEFORE_SLEEP 20000
#define SPIN_BEFORE_YIELD 2000

struct wrk_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;    /* bumped once per job */
    atomic_int pending; /* workers still running the current job */
    atomic_int quit;
    wrk_pool_cb fn; /* written before gen is bumped (release), read after (acquire) */
    void *arg;
    /* sense-reversing barrier */
    atomic_int bar_count;
    atomic_uint bar_sense;
};

typedef struct {
    wrk_pool_t *p;
    int ith;
} worker_arg_t;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *a)
{
    worker_arg_t *wa = a;
    wrk_pool_t *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned seen = 0; /* gen starts at 0: a job posted before this thread ran is not missed */
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load(&p->quit)) {
            if (++spins < SPIN_BEFORE_SLEEP) {
                if (spins > SPIN_BEFORE_YIELD)
                    sched_yield();
                else
                    cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = g;
        p->fn(p->arg, ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

int wrk_pool_create(int n_threads, wrk_pool_t **out)
{
    if (n_threads < 1) n_threads = 1;
    wrk_pool_t *p = calloc(1, sizeof *p);
    if (!p) return RCD_ENOMEM;
    p->n = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return RCD_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa ||
            (wa->p = p, wa->ith = i, pthread_create(&p->threads[i], NULL, worker_main, wa))) {
            free(wa);
            p->n = i; /* destroy joins only the threads that started */
            wrk_pool_destroy(p);
            return RCD_ENOMEM;
        }
    }
    *out = p;
    return 0;
}

void wrk_pool_destroy(wrk_pool_t *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int wrk_pool_size(const wrk_pool_t *p)
{
    return p->n;
}

void wrk_pool_run(wrk_pool_t *p, wrk_pool_cb fn, void *arg)
{
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        if (++spins > SPIN_BEFORE_YIELD)
            sched_yield();
        else
            cpu_relax();
    }
}

void wrk_pool_barrier(wrk_pool_t *p)
{
    wrk_pool_barrier_pf(p, NULL, 0);
}

/* Lines prefetched per turn of the wait loop: a few at a time, so that the release is seen
 * (and the loop left) after at most these few are issued. */
#define PF_LINES_PER_TURN 4

void wrk_pool_barrier_pf(wrk_pool_t *p, const void *pf, size_t bytes)
{
    if (p->n == 1) return;
    unsigned sense = atomic_load_explicit(&p->bar_sense, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_store_explicit(&p->bar_sense, sense + 1, memory_order_release);
        return;
    }
    const char *a = pf;
    size_t off = 0;
    if (!a) bytes = 0;
    int spins = 0;
    while (atomic_load_explicit(&p->bar_sense, memory_order_acquire) == sense) {
        if (off < bytes) {
            for (int i = 0; i < PF_LINES_PER_TURN && off < bytes; i++, off += 64)
                __builtin_prefetch(a + off, 0, 2);
            continue;
        }
        if (++spins > SPIN_BEFORE_YIELD)
            sched_yield();
        else
            cpu_relax();
    }
}
