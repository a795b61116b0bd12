/* workers/cpu: the thread pool (see pool.h). Workers spin briefly for the next job, then
 * sleep on a condition variable; barriers spin, yielding when the machine is oversubscribed.
 * Workers past the active count (wrk_pool_set_active) sleep on a second condition variable,
 * so a job does not wake them. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __linux__
#include <unistd.h>
#endif

#include "common/rcd_error.h"
#include "workers/cpu/pool.h"

#define SPIN_BEFORE_SLEEP 20000
#define SPIN_BEFORE_YIELD 2000
#define GEN_SEQ_SHIFT 16
#define GEN_THREADS 0xffffu

struct wrk_pool {
    int n;
    pthread_t *threads;
    atomic_int *tids; /* per worker: its kernel thread id once it runs (0 before, and for
                       * thread 0, the caller) */
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* a job was posted */
    pthread_cond_t cv_idle; /* workers at or past `active` wait here for more threads */
    /* one word per job, so a worker reads both with one load: the job's sequence number
     * (bits 16 and up, +1 per job) and the threads it runs on (bits 0-15) */
    _Atomic uint64_t gen;
    atomic_int pending;     /* workers still running the current job */
    atomic_int quit;
    atomic_int active;  /* threads the next job runs on, 1..n (set between jobs, under mu) */
    uint64_t act_gen;   /* gen when `active` last changed (under mu) */
    int run_n;          /* threads of the current job, for its barriers (its threads only) */
    wrk_pool_cb fn;     /* written before gen is bumped (release), read after (acquire) */
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

static int this_tid(void)
{
#ifdef __linux__
    return (int)gettid(); /* glibc 2.30+ */
#else
    return 0;
#endif
}

static void *worker_main(void *a)
{
    worker_arg_t *wa = a;
    wrk_pool_t *p = wa->p;
    int ith = wa->ith;
    free(wa);
    atomic_store(&p->tids[ith], this_tid());
    uint64_t seen = 0; /* gen starts at 0: a job posted before this thread ran is not missed */
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load(&p->quit)) {
            if (ith >= atomic_load_explicit(&p->active, memory_order_relaxed)) {
                /* not needed: sleep until the pool grows again, then wait for the first job
                 * posted after that (no job is in flight while `active` changes) */
                pthread_mutex_lock(&p->mu);
                while (ith >= atomic_load(&p->active) && !atomic_load(&p->quit))
                    pthread_cond_wait(&p->cv_idle, &p->mu);
                seen = p->act_gen;
                pthread_mutex_unlock(&p->mu);
                spins = 0;
                continue;
            }
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
        const int run_n = (int)(g & GEN_THREADS);
        if (ith >= run_n) continue; /* a job on fewer threads */
        p->fn(p->arg, ith, run_n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

int wrk_pool_create(int n_threads, wrk_pool_t **out)
{
    if (n_threads < 1) n_threads = 1;
    if (n_threads > (int)GEN_THREADS) n_threads = (int)GEN_THREADS;
    wrk_pool_t *p = calloc(1, sizeof *p);
    if (!p) return RCD_ENOMEM;
    p->n = n_threads;
    atomic_init(&p->active, n_threads);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    p->tids = calloc((size_t)n_threads, sizeof *p->tids);
    if (!p->threads || !p->tids) {
        free(p->threads);
        free(p->tids);
        free(p);
        return RCD_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_cond_init(&p->cv_idle, NULL);
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
    pthread_cond_broadcast(&p->cv_idle);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->cv_idle);
    free(p->threads);
    free(p->tids);
    free(p);
}

int wrk_pool_size(const wrk_pool_t *p)
{
    return p->n;
}

int wrk_pool_active(const wrk_pool_t *p)
{
    return atomic_load_explicit(&p->active, memory_order_relaxed);
}

void wrk_pool_set_active(wrk_pool_t *p, int n)
{
    if (n < 1) n = 1;
    if (n > p->n) n = p->n;
    if (n == atomic_load_explicit(&p->active, memory_order_relaxed)) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->active, n);
    p->act_gen = atomic_load(&p->gen);
    pthread_cond_broadcast(&p->cv_idle);
    pthread_mutex_unlock(&p->mu);
}

int wrk_pool_tid(const wrk_pool_t *p, int ith)
{
    return ith >= 0 && ith < p->n ? atomic_load(&p->tids[ith]) : 0;
}

void wrk_pool_run(wrk_pool_t *p, wrk_pool_cb fn, void *arg)
{
    const int n = atomic_load_explicit(&p->active, memory_order_relaxed);
    p->run_n = n;
    if (n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    /* only this thread writes gen */
    const uint64_t g = atomic_load_explicit(&p->gen, memory_order_relaxed);
    atomic_store_explicit(&p->gen, ((g >> GEN_SEQ_SHIFT) + 1) << GEN_SEQ_SHIFT | (uint64_t)n,
                          memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, n);
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
    const int n = p->run_n;
    if (n == 1) return;
    unsigned sense = atomic_load_explicit(&p->bar_sense, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == n - 1) {
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
