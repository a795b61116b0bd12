/* Micro-benchmark of the store's durable tier: commit latency (checkpoint durable: write,
 * fsync, rename, fsync dir) one at a time and with many sessions committing at once (their
 * jobs share batches), and load latency from disk (cold host cache) and from the cache.
 * usage: store_bench [state_bytes=233472] [dir=/tmp] [n=200] */
#include "statestore/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t g_loop;
static int g_left;

static void done(void *user, int rc, uint64_t version, const char *msg)
{
    (void)version;
    if (rc) fprintf(stderr, "store_bench: %s\n", msg);
    (*(int *)user)++;
    g_left--;
}

static double ms_since(uint64_t t0)
{
    return (double)(uv_hrtime() - t0) / 1e6;
}

int main(int argc, char **argv)
{
    size_t sb = argc > 1 ? strtoul(argv[1], NULL, 10) : 233472;
    const char *base = argc > 2 ? argv[2] : "/tmp";
    int n = argc > 3 ? atoi(argv[3]) : 200;
    char dir[4096], cmd[4200], err[300];
    snprintf(dir, sizeof(dir), "%s/store-bench-%d", base, (int)getpid());
    uv_loop_init(&g_loop);
    store_opts_t o = {.state_bytes = sb,
                      .fingerprint = 1,
                      .max_sessions = (size_t)n + 8,
                      .loop = &g_loop,
                      .dir = dir,
                      .keep_versions = 2,
                      .cache_bytes = (size_t)n * sb};
    store_t *s;
    if (store_open(&o, &s, err, sizeof(err))) {
        fprintf(stderr, "store_bench: %s\n", err);
        return 1;
    }
    unsigned char *buf = malloc(sb);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "b%d", i);
        store_create(s, id, NULL, 0, NULL, 0, NULL, NULL, NULL);
    }
    uv_run(&g_loop, UV_RUN_DEFAULT);
    /* sequential: one commit durable before the next starts */
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < n; i++) {
        void *st = malloc(sb);
        memset(st, i, sb);
        g_left = 1;
        store_commit(s, "b0", (uint64_t)i, st, 1, 0, done, &ok);
        uv_run(&g_loop, UV_RUN_DEFAULT);
    }
    double seq = ms_since(t0);
    /* concurrent: n sessions commit at once; the queue batches them */
    t0 = uv_hrtime();
    for (int i = 1; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "b%d", i);
        void *st = malloc(sb);
        memset(st, i, sb);
        store_commit(s, id, 0, st, 1, 0, done, &ok);
    }
    uv_run(&g_loop, UV_RUN_DEFAULT);
    double conc = ms_since(t0);
    store_close(s);
    /* reopen: cold cache, every load reads and verifies a file */
    o.cache_bytes = (size_t)n * sb;
    t0 = uv_hrtime();
    if (store_open(&o, &s, err, sizeof(err))) {
        fprintf(stderr, "store_bench: %s\n", err);
        return 1;
    }
    double scan = ms_since(t0);
    t0 = uv_hrtime();
    for (int i = 1; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "b%d", i);
        if (store_load(s, id, buf, NULL, done, &ok, NULL, 0) == STORE_PENDING)
            uv_run(&g_loop, UV_RUN_DEFAULT);
    }
    double cold = ms_since(t0);
    t0 = uv_hrtime();
    int hits = 0;
    for (int i = 1; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "b%d", i);
        hits += store_load(s, id, buf, NULL, done, &ok, NULL, 0) == 0;
    }
    double hot = ms_since(t0);
    store_close(s);
    printf("state %zu bytes, %d sessions, dir %s\n", sb, n, base);
    printf("commit, one at a time:     %.3f ms each\n", seq / n);
    printf("commit, %d at once:       %.3f ms each (%.1f ms total)\n", n - 1, conc / (n - 1), conc);
    printf("startup scan of %d sessions: %.1f ms\n", n, scan);
    printf("load from disk (cold):     %.3f ms each\n", cold / (n - 1));
    printf("load from host cache:      %.4f ms each (%d hits)\n", hot / (n - 1), hits);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    free(buf);
    uv_loop_close(&g_loop);
    return system(cmd) != 0;
}
