/* workers/cpu: the thread-count controller (see adapt.h). */
#include "workers/cpu/adapt.h"

#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL

void wrk_adapt_init(wrk_adapt_t *a, int max, const wrk_adapt_cfg_t *cfg)
{
    *a = (wrk_adapt_t){0};
    if (cfg) a->cfg = *cfg;
    if (a->cfg.window_ns <= 0) a->cfg.window_ns = 100 * MS;
    if (a->cfg.idle_ns <= 0) a->cfg.idle_ns = 20 * MS;
    if (a->cfg.high <= 0) a->cfg.high = 0.4;
    if (a->cfg.windows_down <= 0) a->cfg.windows_down = 2;
    if (a->cfg.probe_ns <= 0) a->cfg.probe_ns = 1000 * MS;
    if (a->cfg.probe_max_ns < a->cfg.probe_ns) a->cfg.probe_max_ns = 32 * a->cfg.probe_ns;
    if (a->cfg.idle_probe <= 0) a->cfg.idle_probe = 0.5;
    a->max = a->active = max < 1 ? 1 : max;
    a->probe_wait_ns = a->cfg.probe_ns;
}

/* changes is read from other threads (wrk_threads: the daemon's ready line, stats) */
static void count_change(wrk_adapt_t *a)
{
    __atomic_store_n(&a->changes, a->changes + 1, __ATOMIC_RELAXED);
}

int wrk_adapt_window(wrk_adapt_t *a, double share, double idle_cpus, int64_t now_ns)
{
    const bool high = share > a->cfg.high;
    a->last_share = share;
    a->last_idle_cpus = idle_cpus;
    if (a->probing) {
        /* one thread more is tried for windows_down windows: then keep it, or go back and
         * wait longer, by their mean (the first may still hold the woken thread's start) */
        a->probe_sum += share;
        if (++a->probe_windows < a->cfg.windows_down) return a->active;
        const double mean = a->probe_sum / a->probe_windows;
        a->probing = false;
        a->over = 0;
        if (mean > a->cfg.high) {
            a->active--;
            count_change(a);
            a->probe_wait_ns *= 2;
            if (a->probe_wait_ns > a->cfg.probe_max_ns) a->probe_wait_ns = a->cfg.probe_max_ns;
        } else {
            a->probe_wait_ns = a->cfg.probe_ns;
        }
        a->next_probe_ns = now_ns + a->probe_wait_ns;
        return a->active;
    }
    if (high) {
        if (++a->over >= a->cfg.windows_down && a->active > 1) {
            a->active--;
            count_change(a);
            a->over = 0;
            a->next_probe_ns = now_ns + a->probe_wait_ns;
        }
        return a->active;
    }
    a->over = 0;
    /* Waiting little at this width: after the wait, try one thread more (never while waiting
     * much already: more threads would only wait more). A CPU that stood idle through the
     * window says the contention may be over: try at once, if the last try was not within
     * the first wait (a competitor that comes and goes costs at most a window per probe_ns). */
    const bool idle = idle_cpus >= a->cfg.idle_probe &&
                      (a->last_probe_ns == 0 || now_ns - a->last_probe_ns >= a->cfg.probe_ns);
    if (a->active < a->max && (now_ns >= a->next_probe_ns || idle)) {
        a->active++;
        count_change(a);
        a->probing = true;
        a->probe_windows = 0;
        a->probe_sum = 0;
        a->last_probe_ns = now_ns;
    }
    return a->active;
}

/* "/proc/.../schedstat": run ns, wait ns, time slices. */
static bool read_schedstat(const char *path, uint64_t *run, uint64_t *wait)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    char *end;
    unsigned long long r = strtoull(buf, &end, 10);
    if (end == buf) return false;
    char *p = end;
    unsigned long long w = strtoull(p, &end, 10);
    if (end == p) return false;
    *run = r;
    *wait = w;
    return true;
}

bool wrk_adapt_read(const wrk_pool_t *p, uint64_t *run_ns, uint64_t *wait_ns)
{
    uint64_t R = 0, W = 0, r, w;
    if (!read_schedstat("/proc/thread-self/schedstat", &r, &w)) return false;
    R += r;
    W += w;
    const int n = wrk_pool_size(p);
    for (int i = 1; i < n; i++) {
        const int tid = wrk_pool_tid(p, i);
        if (!tid) return false; /* not started yet */
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
        if (!read_schedstat(path, &r, &w)) return false;
        R += r;
        W += w;
    }
    *run_ns = R;
    *wait_ns = W;
    return true;
}

bool wrk_adapt_read_idle(uint64_t *idle, uint64_t *total, int *n_cpus)
{
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask)) return false;
    FILE *f = fopen("/proc/stat", "re");
    if (!f) return false;
    char line[512];
    uint64_t I = 0, T = 0;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "cpu", 3) != 0) break; /* the cpu lines come first */
        char *p = line + 3, *end;
        if (*p < '0' || *p > '9') continue; /* the "cpu" total */
        const unsigned long cpu = strtoul(p, &end, 10);
        if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &mask)) continue;
        /* user nice system idle iowait irq softirq steal (guest time is inside user) */
        uint64_t v[8] = {0};
        for (int k = 0; k < 8; k++) {
            p = end;
            v[k] = strtoull(p, &end, 10);
            if (end == p) break;
        }
        I += v[3] + v[4];
        for (int k = 0; k < 8; k++) T += v[k];
        n++;
    }
    fclose(f);
    if (!n) return false;
    *idle = I;
    *total = T;
    *n_cpus = n;
    return true;
}

int64_t wrk_adapt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

bool wrk_adapt_available(const char **why)
{
    uint64_t r, w;
    if (read_schedstat("/proc/thread-self/schedstat", &r, &w)) return true;
    if (why) *why = "this system does not report scheduler delays (/proc/thread-self/schedstat)";
    return false;
}

void wrk_adapt_begin(wrk_adapt_t *a, wrk_pool_t *p, int64_t now_ns)
{
    uint64_t r, w;
    if (!a->in_window || now_ns - a->last_end > a->cfg.idle_ns) {
        /* idle workers sleep and wait for nothing: measure stepping only; after a failed
         * read (a worker not started yet), again after a window, not at every step */
        if (!a->in_window && now_ns < a->retry_ns) return;
        a->in_window = wrk_adapt_read(p, &a->run0, &a->wait0);
        if (!a->in_window) a->retry_ns = now_ns + a->cfg.window_ns;
        int n;
        if (!wrk_adapt_read_idle(&a->idle0, &a->total0, &n)) a->idle0 = a->total0 = 0;
        a->win_t0 = now_ns;
        return;
    }
    if (now_ns - a->win_t0 < a->cfg.window_ns) return;
    if (!wrk_adapt_read(p, &r, &w)) {
        a->in_window = false;
        a->retry_ns = now_ns + a->cfg.window_ns;
        return;
    }
    const uint64_t dr = r - a->run0, dw = w - a->wait0;
    a->run0 = r;
    a->wait0 = w;
    a->win_t0 = now_ns;
    /* the CPUs left idle meanwhile: idle jiffies over all jiffies, times the CPUs */
    uint64_t idle, total;
    int n_cpus;
    double idle_cpus = 0;
    if (wrk_adapt_read_idle(&idle, &total, &n_cpus)) {
        if (a->total0 && total > a->total0 && idle >= a->idle0)
            idle_cpus = (double)(idle - a->idle0) / (double)(total - a->total0) * n_cpus;
        a->idle0 = idle;
        a->total0 = total;
    }
    if (dr + dw == 0) return;
    const int was = a->active;
    wrk_adapt_window(a, (double)dw / (double)(dr + dw), idle_cpus, now_ns);
    if (a->active != was) wrk_pool_set_active(p, a->active);
}

void wrk_adapt_end(wrk_adapt_t *a, int64_t now_ns)
{
    a->last_end = now_ns;
}
