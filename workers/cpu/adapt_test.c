/* workers/cpu: the thread-count controller (adapt.h): its decisions on scripted windows, and
 * the schedstat figures it reads from a live pool. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tests/support/rcd_test.h"
#include "workers/cpu/adapt.h"

#define MS 1000000LL

/* Windows every 100 ms from t; returns the time after them. */
static int64_t windows(wrk_adapt_t *a, double share, int n, int64_t t)
{
    for (int i = 0; i < n; i++) {
        t += 100 * MS;
        wrk_adapt_window(a, share, 0, t);
    }
    return t;
}

/* Quiet windows until one more thread is tried (at most `max`); *n: how many it took. */
static int64_t until_probe(wrk_adapt_t *a, int64_t t, int max, int *n)
{
    for (*n = 1; *n <= max; (*n)++) {
        t = windows(a, 0.0, 1, t);
        if (a->probing) break;
    }
    return t;
}

static void test_drop_needs_two_windows(void)
{
    wrk_adapt_t a;
    wrk_adapt_init(&a, 4, NULL);
    CHECK(a.active == 4 && a.max == 4);
    int64_t t = windows(&a, 0.0, 5, 0); /* quiet: stays, nothing to try */
    CHECK(a.active == 4 && a.changes == 0);
    t = windows(&a, 0.6, 1, t); /* one busy window alone: no change */
    CHECK(a.active == 4);
    t = windows(&a, 0.1, 1, t);
    t = windows(&a, 0.6, 1, t); /* not in a row */
    CHECK(a.active == 4);
    t = windows(&a, 0.6, 1, t); /* two in a row */
    CHECK(a.active == 3 && a.changes == 1);
    t = windows(&a, 0.6, 6, t); /* 3 more drops in 6 windows, then never below 1 */
    CHECK(a.active == 1 && a.changes == 3);
    t = windows(&a, 0.6, 20, t);
    CHECK(a.active == 1 && a.changes == 3);
    CHECK(a.last_share == 0.6);
}

/* Shares of the pool's time spent waiting for a CPU: over the default 0.4, and under it. */
#define BUSY 0.6
#define SOME 0.3

static void test_probe_and_backoff(void)
{
    wrk_adapt_t a;
    wrk_adapt_init(&a, 2, NULL); /* 100 ms windows, probe after 1 s, up to 32 s */
    int64_t t = windows(&a, BUSY, 2, 0);
    CHECK(a.active == 1);
    /* still busy at one thread: no try, however long */
    t = windows(&a, BUSY, 30, t);
    CHECK(a.active == 1 && !a.probing);
    /* quiet at one thread: one more is tried at the first quiet window after the wait */
    t = windows(&a, 0.0, 1, t);
    CHECK(a.active == 2 && a.probing);
    /* the try lasts two windows and their mean decides: waiting, so back, and the next try
     * waits 2 s */
    t = windows(&a, 0.9, 1, t);
    CHECK(a.active == 2 && a.probing);
    t = windows(&a, 0.1, 1, t); /* mean 0.5 */
    CHECK(a.active == 1 && !a.probing && a.probe_wait_ns == 2000 * MS);
    t = windows(&a, 0.0, 19, t); /* 1.9 s */
    CHECK(a.active == 1);
    t = windows(&a, 0.0, 1, t);
    CHECK(a.active == 2 && a.probing);
    t = windows(&a, BUSY, 2, t); /* fails again: 4 s */
    CHECK(a.active == 1 && a.probe_wait_ns == 4000 * MS);
    int n;
    static const int want[] = {40, 80, 160, 320, 320, 320}; /* windows of 100 ms: 4 s ... 32 s */
    for (int i = 0; i < 6; i++) { /* the wait doubles after each failed try, up to 32 s */
        t = until_probe(&a, t, 1000, &n);
        CHECK_MSG(a.active == 2 && n == want[i], "try %d after %d windows, want %d", i, n,
                  want[i]);
        t = windows(&a, BUSY, 2, t);
        CHECK(a.active == 1);
    }
    CHECK(a.probe_wait_ns == 32000 * MS);
    /* a try that finds the CPUs free enough keeps the thread and resets the wait (one busy
     * window of the two: the mean 0.35 decides) */
    t = until_probe(&a, t, 1000, &n);
    CHECK(a.active == 2 && a.probing && n == 320);
    t = windows(&a, BUSY, 1, t);
    t = windows(&a, 0.1, 1, t);
    CHECK(a.active == 2 && !a.probing && a.probe_wait_ns == 1000 * MS);
    /* some waiting, under the threshold: stays */
    t = windows(&a, SOME, 50, t);
    CHECK(a.active == 2);
    /* busy again: down after two windows, the next try 1 s later */
    t = windows(&a, BUSY, 2, t);
    CHECK(a.active == 1);
    t = until_probe(&a, t, 1000, &n);
    CHECK(a.active == 2 && n == 10);
    t = windows(&a, 0.0, 2, t);
    t = windows(&a, 0.05, 100, t); /* at max: nothing more to try */
    CHECK(a.active == 2 && !a.probing);
}

/* A CPU left idle through a window: the next try comes at once, not after the doubled wait,
 * but not within probe_ns of the last try. */
static void test_idle_cpus_probe_early(void)
{
    wrk_adapt_t a;
    wrk_adapt_init(&a, 2, NULL);
    int64_t t = windows(&a, BUSY, 2, 0);
    CHECK(a.active == 1);
    int n;
    for (int i = 0; i < 4; i++) { /* four failed tries: the wait is 16 s */
        t = until_probe(&a, t, 1000, &n);
        t = windows(&a, BUSY, 2, t);
    }
    CHECK(a.active == 1 && a.probe_wait_ns == 16000 * MS);
    const int64_t last = a.last_probe_ns;
    /* a whole idle CPU, but within 1 s of the last try: not yet */
    t = last + 900 * MS;
    wrk_adapt_window(&a, 0.0, 1.0, t);
    CHECK(a.active == 1 && !a.probing);
    /* under half a CPU idle: not enough */
    t = last + 2000 * MS;
    wrk_adapt_window(&a, 0.0, 0.45, t);
    CHECK(a.active == 1);
    t = last + 2100 * MS;
    wrk_adapt_window(&a, 0.0, 0.5, t);
    CHECK(a.active == 2 && a.probing && a.last_idle_cpus == 0.5);
    t = windows(&a, 0.02, 2, t); /* the try waits little: kept, the wait back at 1 s */
    CHECK(a.active == 2 && !a.probing && a.probe_wait_ns == 1000 * MS);
    /* never while the narrow width waits much, idle CPUs or not */
    t = windows(&a, BUSY, 2, t);
    CHECK(a.active == 1);
    for (int i = 0; i < 30; i++) {
        t += 100 * MS;
        wrk_adapt_window(&a, BUSY, 1.5, t);
        CHECK(a.active == 1);
    }
}

static void test_config(void)
{
    wrk_adapt_t a;
    wrk_adapt_cfg_t cfg = {.high = 0.5, .windows_down = 1, .probe_ns = 10 * MS, .probe_max_ns = 20 * MS};
    wrk_adapt_init(&a, 0, &cfg); /* max clamped to 1 */
    CHECK(a.max == 1 && a.active == 1);
    wrk_adapt_init(&a, 3, &cfg);
    wrk_adapt_window(&a, 0.45, 0, 1); /* under 0.5 */
    CHECK(a.active == 3);
    wrk_adapt_window(&a, 0.55, 0, 2); /* one window is enough */
    CHECK(a.active == 2);
    wrk_adapt_window(&a, 0.0, 0, 3); /* before the 10 ms wait */
    CHECK(a.active == 2);
    wrk_adapt_window(&a, 0.0, 0, 2 + 10 * MS);
    CHECK(a.active == 3 && a.probing);
    wrk_adapt_window(&a, 0.9, 0, 3 + 10 * MS);
    CHECK(a.active == 2 && a.probe_wait_ns == 20 * MS);
    wrk_adapt_window(&a, 0.0, 0, 3 + 30 * MS);
    CHECK(a.active == 3);
    wrk_adapt_window(&a, 0.9, 0, 4 + 30 * MS);
    CHECK(a.probe_wait_ns == 20 * MS); /* capped */
}

typedef struct {
    wrk_pool_t *p;
    atomic_long sink;
} spin_ctx_t;

static void spin_job(void *arg, int ith, int nth)
{
    spin_ctx_t *c = arg;
    long x = 0;
    for (long i = 0; i < 2000000; i++) x += i ^ ith;
    atomic_fetch_add(&c->sink, x);
    wrk_pool_barrier(c->p);
}

/* On a live pool: the figures grow with work, and begin/end drive set_active. */
static void test_live_pool(void)
{
    const char *why = NULL;
    if (!wrk_adapt_available(&why)) {
        fprintf(stderr, "  skip: %s\n", why);
        return;
    }
    wrk_pool_t *p = NULL;
    CHECK(wrk_pool_create(2, &p) == 0);
    spin_ctx_t c = {.p = p};
    wrk_pool_run(p, spin_job, &c); /* the worker has started and recorded its id */
    CHECK(wrk_pool_tid(p, 1) > 0);
    CHECK(wrk_pool_tid(p, 0) == 0 && wrk_pool_tid(p, 2) == 0);
    uint64_t r0, w0, r1, w1;
    CHECK(wrk_adapt_read(p, &r0, &w0));
    for (int i = 0; i < 5; i++) wrk_pool_run(p, spin_job, &c);
    CHECK(wrk_adapt_read(p, &r1, &w1));
    CHECK_MSG(r1 > r0 && w1 >= w0, "run %llu -> %llu, wait %llu -> %llu", (unsigned long long)r0,
              (unsigned long long)r1, (unsigned long long)w0, (unsigned long long)w1);
    /* begin ends a window after window_ns of stepping: with every window "busy" (high 0:
     * any wait; a share of exactly 0 stays), the pool is narrowed to one thread */
    wrk_adapt_t a;
    wrk_adapt_cfg_t cfg = {.window_ns = 1, .high = 1e-12, .windows_down = 1, .probe_ns = 1000 * MS};
    wrk_adapt_init(&a, 2, &cfg);
    int64_t t = wrk_adapt_now();
    for (int i = 0; i < 200 && a.active == 2; i++) {
        wrk_adapt_begin(&a, p, t);
        wrk_pool_run(p, spin_job, &c);
        t = wrk_adapt_now();
        wrk_adapt_end(&a, t);
        t += 1;
    }
    /* whether this machine made the threads wait is not up to the test; where it did, the
     * pool follows the controller */
    CHECK(wrk_pool_active(p) == a.active);
    fprintf(stderr, "  live: active %d after %llu changes, last share %.3f\n", a.active,
            (unsigned long long)a.changes, a.last_share);
    uint64_t idle, total;
    int n_cpus;
    CHECK(wrk_adapt_read_idle(&idle, &total, &n_cpus));
    CHECK(n_cpus >= 1 && total >= idle && total > 0);
    /* an idle gap longer than idle_ns restarts the window: no decision from it */
    const uint64_t ch = a.changes;
    wrk_adapt_begin(&a, p, t + a.cfg.idle_ns + 1);
    CHECK(a.changes == ch);
    wrk_pool_destroy(p);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_drop_needs_two_windows);
    RUN(test_probe_and_backoff);
    RUN(test_idle_cpus_probe_early);
    RUN(test_config);
    RUN(test_live_pool);
    return rcd_test_summary();
}
