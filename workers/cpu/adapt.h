/* workers/cpu: fewer pool threads while other processes keep the CPUs busy.
 *
 * A step is ~100 phases, each ended by a barrier of the pool's threads. With more runnable
 * threads than CPUs, a thread that the scheduler has put aside holds every other one at the
 * next barrier, so a step costs time slices instead of work: on 2 vCPUs with two busy
 * processes beside it, a 2-thread daemon decoded 26x slower than alone, a 1-thread one 1.7x
 * (bench/RESULTS.md, "Batch-1 decode when other processes want the CPUs"). The controller
 * measures what the pool's threads wait for a CPU (Linux's per-thread schedstat: time runnable
 * but not running) over windows of stepping, drops one thread while that share stays high,
 * and now and then tries one more. Logits do not depend on the thread count (workers/README.md,
 * "Batch invariance"), so a change between steps changes no output. */
#ifndef RCD_WRK_ADAPT_H
#define RCD_WRK_ADAPT_H

#include <stdbool.h>
#include <stdint.h>

#include "workers/cpu/pool.h"

typedef struct wrk_adapt_cfg {
    int64_t window_ns;    /* stepping time per measurement (100 ms) */
    int64_t idle_ns;      /* a gap between steps longer than this starts a new window (20 ms) */
    double high;          /* waiting share above which the pool is too wide (0.4; measured
                           * at 2 threads on 2 vCPUs: a daemon beside its own client 0.03 with
                           * the 130m shape, 0.33 with the 4M-parameter hybrid, where 2 threads
                           * were still the faster; one busy loop beside it 0.38 and 0.49,
                           * two 0.51 and 0.93) */
    int windows_down;     /* windows in a row above `high` before a thread is dropped, and
                           * windows a try of one more lasts (their mean decides) (2) */
    int64_t probe_ns;     /* after a drop, the time before one more thread is tried, at the
                           * first window of stepping after it (1 s) */
    int64_t probe_max_ns; /* the wait doubles after each failed try, up to this (32 s) */
    double idle_probe;    /* CPUs of the process's affinity mask idle on average over a window
                           * at or above which one more thread is tried without the doubled
                           * wait (at most once per probe_ns): contention that ended (0.5) */
} wrk_adapt_cfg_t;

typedef struct wrk_adapt {
    wrk_adapt_cfg_t cfg;
    int max, active;
    int over;       /* windows in a row above cfg.high */
    bool probing;   /* the current windows try one thread more */
    int probe_windows;
    double probe_sum; /* their shares */
    int64_t probe_wait_ns, next_probe_ns;
    /* the window */
    bool in_window;
    int64_t win_t0, last_end;
    int64_t retry_ns; /* after a failed read: when to read again */
    uint64_t run0, wait0;
    uint64_t idle0, total0; /* /proc/stat jiffies of the affinity mask's CPUs (0, 0: unread) */
    int64_t last_probe_ns;
    /* figures for stats and logs */
    uint64_t changes;     /* active count changes (written atomically: other threads read it) */
    double last_share;    /* the last window's waiting share */
    double last_idle_cpus; /* and its idle CPUs */
} wrk_adapt_t;

/* A controller for a pool of max threads (all active), with cfg's zero fields defaulted. */
void wrk_adapt_init(wrk_adapt_t *a, int max, const wrk_adapt_cfg_t *cfg);

/* The decision at the end of a window: `share` = the pool's time waiting for a CPU over its
 * time running or waiting, `idle_cpus` = the CPUs it may run on that were idle, on average over
 * the window (0 when not known); returns the new active count (also in a->active). Pure: no
 * clock, no pool. */
int wrk_adapt_window(wrk_adapt_t *a, double share, double idle_cpus, int64_t now_ns);

/* Before and after each step, on the thread that runs the pool (thread 0 is read through
 * /proc/thread-self). begin ends a window when one is due and sets the pool's active count. */
void wrk_adapt_begin(wrk_adapt_t *a, wrk_pool_t *p, int64_t now_ns);
void wrk_adapt_end(wrk_adapt_t *a, int64_t now_ns);

/* CLOCK_MONOTONIC in nanoseconds: what begin and end take. */
int64_t wrk_adapt_now(void);

/* Whether this system reports per-thread scheduler delays (Linux schedstat); when not, *why. */
bool wrk_adapt_available(const char **why);

/* The pool threads' summed run and wait nanoseconds (thread 0 = the calling thread); false
 * when a thread's figures cannot be read. */
bool wrk_adapt_read(const wrk_pool_t *p, uint64_t *run_ns, uint64_t *wait_ns);
/* Idle (idle + iowait) and all jiffies summed over the CPUs of this thread's affinity mask
 * (/proc/stat); false when they cannot be read. */
bool wrk_adapt_read_idle(uint64_t *idle, uint64_t *total, int *n_cpus);

#endif
