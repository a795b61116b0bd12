/* Benchmark of the metrics hot path (not a test; RESULTS.md has the numbers): ns per sampled
 * token's update (dmn_metrics_token: a clock read, a counter add, a histogram observe), per bare
 * histogram observe on one thread and with 2 threads on the same histogram, and the time of one
 * full exposition (text and OpenMetrics). usage: metrics_bench [N] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rcd_metrics.h"
#include "daemon/dmn.h"
#include "daemon/dmn_metrics.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const uint64_t b_lat[] = {1000000,    2500000,    5000000,    10000000,  25000000,
                                 50000000,   100000000,  250000000,  500000000, 1000000000,
                                 2500000000, 5000000000, 10000000000};
static rcd_hist_t g_h = RCD_HIST_INIT(b_lat, RCD_NS_PER_S);
static long g_n;

static void *observer(void *arg)
{
    uint64_t v = (uint64_t)(uintptr_t)arg;
    for (long i = 0; i < g_n; i++)
        rcd_hist_observe(&g_h, v + (uint64_t)(i & 1023) * 1000);
    return NULL;
}

int main(int argc, char **argv)
{
    g_n = argc > 1 ? atol(argv[1]) : 20000000;
    if (g_n <= 0) return 2;
    dmn_server_t s;
    memset(&s, 0, sizeof(s));
    snprintf(s.model_id, sizeof(s.model_id), "recurd-mamba-tiny");
    dmn_call_t c;
    memset(&c, 0, sizeof(c));
    c.srv = &s;
    dmn_mturn_t m;
    dmn_metrics_turn_begin(&c, &m);
    double t0 = now_s();
    for (long i = 0; i < g_n; i++)
        dmn_metrics_token(&m);
    double tok = (now_s() - t0) / (double)g_n * 1e9;
    t0 = now_s();
    observer((void *)(uintptr_t)30000000);
    double one = (now_s() - t0) / (double)g_n * 1e9;
    pthread_t th[2];
    t0 = now_s();
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, observer, (void *)(uintptr_t)(30000000u * (i + 1)));
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    double two = (now_s() - t0) / (double)g_n * 1e9;
    printf("dmn_metrics_token: %.1f ns per token\n", tok);
    printf("rcd_hist_observe, 1 thread: %.1f ns\n", one);
    printf("rcd_hist_observe, 2 threads on one histogram: %.1f ns per observe (wall / per-thread "
           "count)\n",
           two);
    for (int om = 0; om < 2; om++) {
        int reps = 2000;
        size_t len = 0;
        t0 = now_s();
        for (int r = 0; r < reps; r++) {
            char *out = NULL;
            if (dmn_metrics_render(&s, om, &out, &len)) return 1;
            free(out);
        }
        printf("render %s: %.1f us, %zu bytes\n", om ? "OpenMetrics" : "text 0.0.4",
               (now_s() - t0) / reps * 1e6, len);
    }
    return 0;
}
