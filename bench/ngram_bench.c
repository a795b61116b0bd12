/* ngram_bench: the cost of one n-gram draft proposal (engine/eng_draft.h, prompt lookup) over
 * a window of history, the case the session's token history makes common (issue 18,
 * --spec-history): random ids from a 50,000-token vocabulary (few long matches, so the scan
 * runs through the window), the default n-gram lengths 4..1, k = 4.
 *   ngram_bench [--window N] [--reps R]   (default: 8192 and 16384, 2000 repetitions) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/eng_draft.h"

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int run(int32_t window, int reps)
{
    int32_t n = window + 64;
    int32_t *h = malloc(sizeof(int32_t) * (size_t)n);
    if (!h) return 1;
    unsigned x = 1;
    for (int32_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        h[i] = (int32_t)((x >> 8) % 50000);
    }
    eng_ngram_opts_t o = {.window = window};
    eng_draft_t *d;
    if (eng_draft_ngram_create(&o, &d)) return 1;
    int32_t out[ENG_DRAFT_MAX];
    int got = 0;
    double t0 = now_us();
    for (int r = 0; r < reps; r++)
        got += eng_draft_propose(d, h, n - (r % 64), 4, out) > 0;
    double us = (now_us() - t0) / reps;
    printf("window %7d: %8.1f us per proposal (%d of %d proposed)\n", window, us, got, reps);
    eng_draft_destroy(d);
    free(h);
    return 0;
}

int main(int argc, char **argv)
{
    int32_t window = 0;
    int reps = 2000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--window"))
            window = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
    }
    if (reps < 1 || window < 0) return 2;
    if (window) return run(window, reps);
    return run(8192, reps) || run(16384, reps);
}
