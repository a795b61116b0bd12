/* Benchmark of the store's durable and shared tiers (not a test; README.md has the numbers):
 *  commit  checkpoint throughput, group commit on (two syncfs per batch) and off, 1/8/64 sessions
 * committing at once (each commits again as soon as its previous commit is acknowledged), 233,472 B
 * and 3 MiB states: commits/s, MB/s, and acknowledgement latency p50/p99; resume  latency of a
 * session's state into memory against its size: verified load from disk through the store (page
 * cache warm, and cold: the file's pages dropped with POSIX_FADV_DONTNEED before each load), from
 * the host cache, and from Redis (the store_fetch path: GET, verify, index, and the local write —
 * durable before the answer in write-through mode, written behind it with --authority; then the
 * load; the bare GET round trip; and the time until the local copy is on disk). p50/p99 of each.
 * Variants are interleaved within each repetition; the medians over repetitions are printed. usage:
 * store_bench [--dir DIR] [--reps N] [--only commit|resume] [--redis HOST:PORT]
 *                    [--redis-server PATH] [--no-redis] [--sizes BYTES,BYTES,...] [--authority]
 * Without --redis, a redis-server from PATH (default "redis-server") is started on a loopback
 * port for the run; if it cannot be started the Redis rows are skipped. */
#include "common/rcd_path.h"
#include "statestore/store.h"
#include "statestore/store_redis.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uv_loop_t g_loop;
static char g_base[RCD_PATH_MAX] = "/tmp";
static int g_reps = 5;
/* --sizes: the resume states (bytes), default the table in bench_resume */
static size_t g_sizes[16];
static int g_nsizes;
static bool g_authority; /* --authority: the stores with Redis run with redis_authority */

static double now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Percentile p (0..100) of n samples (sorts them). */
static double pct(double *v, int n, double p)
{
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    int i = (int)(p / 100.0 * (n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static double median(double *v, int n)
{
    return pct(v, n, 50);
}

/* A failed store call ends the benchmark: back to main, which stops Redis and returns 1. */
static jmp_buf g_bail;

static void die(const char *what, const char *err)
{
    fprintf(stderr, "store_bench: %s: %s\n", what, err);
    longjmp(g_bail, 1);
}

static void rm_rf(const char *dir)
{
    char cmd[16384];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "store_bench: cannot remove %s\n", dir);
}

static store_t *open_store(const char *dir, size_t sb, size_t n_sess, size_t cache, bool no_gc,
                           const char *redis)
{
    store_opts_t o = {.state_bytes = sb,
                      .fingerprint = 1,
                      .max_sessions = n_sess + 8,
                      .loop = &g_loop,
                      .dir = dir,
                      .keep_versions = 2,
                      .cache_bytes = cache,
                      .no_group_commit = no_gc,
                      .redis = redis,
                      .redis_authority = redis && g_authority};
    store_t *s;
    char err[300];
    if (store_open(&o, &s, err, sizeof(err))) die("store_open", err);
    return s;
}

/* ---- commit throughput ------------------------------------------------------------------ */

typedef struct committer {
    store_t *s;
    char id[32];
    uint64_t version;
    int left;
    double t0;
    const unsigned char *tmpl;
    size_t sb;
    double *lat; /* shared sample array */
    int *n_lat;
} committer_t;

static void commit_next(committer_t *c);

static void commit_done(void *user, int rc, uint64_t version, const char *msg)
{
    committer_t *c = user;
    if (rc) die("commit", msg);
    c->lat[(*c->n_lat)++] = now_ms() - c->t0;
    c->version = version;
    if (--c->left > 0) commit_next(c);
}

static void commit_next(committer_t *c)
{
    void *st = malloc(c->sb);
    if (!st) die("commit", "out of memory");
    memcpy(st, c->tmpl, c->sb);
    ((unsigned char *)st)[0] = (unsigned char)c->version; /* every version differs */
    c->t0 = now_ms();
    int rc = store_commit(c->s, c->id, c->version, st, 1, 0, commit_done, c);
    if (rc) die("commit", rcd_strerror(rc));
}

typedef struct tput {
    double cps, mbps, p50, p99;
} tput_t;

/* n sessions of s each commit `per` times back to back; all start at once. */
static tput_t commit_round(store_t *s, committer_t *cs, int n, int per, const unsigned char *tmpl,
                           size_t sb)
{
    int total = n * per, n_lat = 0;
    double *lat = malloc(sizeof(double) * (size_t)total);
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        cs[i].s = s;
        cs[i].left = per;
        cs[i].tmpl = tmpl;
        cs[i].sb = sb;
        cs[i].lat = lat;
        cs[i].n_lat = &n_lat;
        commit_next(&cs[i]);
    }
    uv_run(&g_loop, UV_RUN_DEFAULT);
    double ms = now_ms() - t0;
    tput_t r = {.cps = total / (ms / 1e3), .mbps = (double)total * (double)sb / 1e6 / (ms / 1e3)};
    r.p50 = pct(lat, n_lat, 50);
    r.p99 = pct(lat, n_lat, 99);
    free(lat);
    return r;
}

static void bench_commit(void)
{
    static const size_t sizes[] = {233472, 3u << 20};
    static const int sess[] = {1, 8, 64};
    printf("\n## Commit throughput (durable: acknowledged once on disk), medians of %d reps\n\n",
           g_reps);
    printf("| state | sessions | group commit | commits/s | MB/s | ack p50 ms | ack p99 ms |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (size_t zi = 0; zi < sizeof(sizes) / sizeof(*sizes); zi++) {
        size_t sb = sizes[zi];
        unsigned char *tmpl = malloc(sb);
        for (size_t i = 0; i < sb; i++)
            tmpl[i] = (unsigned char)(i * 131 + 7);
        char dir[2][RCD_PATH_MAX];
        store_t *st[2];
        committer_t cs[2][64];
        for (int m = 0; m < 2; m++) { /* m 0: group commit on, 1: off */
            if (rcd_path_fmt(dir[m], sizeof(dir[m]), "%s/store-bench-%d-gc%d", g_base,
                             (int)getpid(), m))
                die("--dir", "path too long");
            st[m] = open_store(dir[m], sb, 64, 0, m == 1, NULL);
            for (int i = 0; i < 64; i++) {
                memset(&cs[m][i], 0, sizeof(cs[m][i]));
                snprintf(cs[m][i].id, sizeof(cs[m][i].id), "c%d", i);
                if (store_create(st[m], cs[m][i].id, NULL, 0, NULL, 0, NULL, NULL, NULL))
                    die("create", cs[m][i].id);
            }
            uv_run(&g_loop, UV_RUN_DEFAULT);
        }
        /* commits per round: enough to fill several batches at 64 sessions */
        int total = sb > (1u << 20) ? 128 : 256;
        for (size_t si = 0; si < sizeof(sess) / sizeof(*sess); si++) {
            int n = sess[si], per = total / n < 2 ? 2 : total / n;
            double cps[2][32], mbps[2][32], p50[2][32], p99[2][32];
            for (int r = 0; r < g_reps && r < 32; r++)
                for (int k = 0; k < 2; k++) {
                    int m = (r + k) % 2; /* alternate which mode goes first */
                    tput_t t = commit_round(st[m], cs[m], n, per, tmpl, sb);
                    cps[m][r] = t.cps;
                    mbps[m][r] = t.mbps;
                    p50[m][r] = t.p50;
                    p99[m][r] = t.p99;
                }
            for (int m = 0; m < 2; m++)
                printf("| %zu B | %d | %s | %.0f | %.1f | %.2f | %.2f |\n", sb, n, m ? "off" : "on",
                       median(cps[m], g_reps), median(mbps[m], g_reps), median(p50[m], g_reps),
                       median(p99[m], g_reps));
            fflush(stdout);
        }
        for (int m = 0; m < 2; m++) {
            store_close(st[m]);
            rm_rf(dir[m]);
        }
        free(tmpl);
    }
}

/* ---- resume latency --------------------------------------------------------------------- */

typedef struct waiter {
    int calls, rc;
    double t1;
    char msg[300];
} waiter_t;

static void wait_done(void *user, int rc, uint64_t version, const char *msg)
{
    waiter_t *w = user;
    (void)version;
    w->calls++;
    w->rc = rc;
    w->t1 = now_ms();
    snprintf(w->msg, sizeof(w->msg), "%s", msg);
}

/* One store_load of id into dst, as the daemon does it; returns ms (cache hit: no callback). */
static double load_once(store_t *s, const char *id, void *dst)
{
    waiter_t w = {0};
    char err[300];
    double t0 = now_ms();
    int rc = store_load(s, id, dst, NULL, wait_done, &w, err, sizeof(err));
    if (rc == 0) return now_ms() - t0;
    if (rc != STORE_PENDING) die("load", err);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    if (w.rc) die("load", w.msg);
    return w.t1 - t0;
}

/* Drops the page cache of a session's checkpoint file (clean pages: it was fsynced). */
static void drop_cache(const char *dir, const char *id, uint64_t version)
{
    char path[RCD_PATH_MAX];
    if (rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020llu.ckpt", dir, id,
                     (unsigned long long)version))
        die("checkpoint path too long", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open", path);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

typedef struct rget {
    int calls, rc;
    size_t len;
    double t1;
} rget_t;

static void rget_done(void *user, int rc, const char *data, size_t len, const char *msg)
{
    rget_t *g = user;
    (void)data;
    (void)msg;
    g->calls++;
    g->rc = rc;
    g->len = len;
    g->t1 = now_ms();
}

/* Waits (running the loop) until the store's Redis connection answers a lookup. */
static bool redis_ready(store_t *s)
{
    for (int i = 0; i < 500; i++) {
        waiter_t w = {0};
        if (store_fetch(s, "bench-probe", wait_done, &w) == 0) {
            uv_run(&g_loop, UV_RUN_DEFAULT);
            return w.rc == RCD_ENOTFOUND;
        }
        uv_run(&g_loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    return false;
}

static bool rds_wait_ready(rds_t *r)
{
    for (int i = 0; i < 500; i++) {
        rget_t g = {0};
        if (rds_get(r, "bench-probe", rget_done, &g) == 0) {
            uv_run(&g_loop, UV_RUN_DEFAULT);
            return g.rc == 0;
        }
        uv_run(&g_loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    return false;
}

static void bench_resume(const char *redis)
{
    static const size_t dflt[] = {233472, 1u << 20, 3u << 20, 12u << 20, 48u << 20};
    const size_t *sizes = g_nsizes ? g_sizes : dflt;
    size_t nsizes = g_nsizes ? (size_t)g_nsizes : sizeof(dflt) / sizeof(*dflt);
    printf("\n## Resume latency into memory (ms), p50 / p99 of the samples, medians of %d reps\n\n",
           g_reps);
    printf("| state | samples | disk, warm | disk, cold (fadvise DONTNEED) | host cache |"
           " Redis fetch+load | Redis GET only | Redis fetch (to its callback) |"
           " Redis fetch, local copy written |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (size_t zi = 0; zi < nsizes; zi++) {
        size_t sb = sizes[zi];
        int n = sb >= (48u << 20) ? 8 : sb >= (12u << 20) ? 16 : 40; /* per rep */
        unsigned char *tmpl = malloc(sb), *dst = malloc(sb);
        for (size_t i = 0; i < sb; i++)
            tmpl[i] = (unsigned char)(i * 131 + 7);
        memset(dst, 0, sb);
        char dir[RCD_PATH_MAX], rdir[RCD_PATH_MAX];
        if (rcd_path_fmt(dir, sizeof(dir), "%s/store-bench-%d-load", g_base, (int)getpid()) ||
            rcd_path_fmt(rdir, sizeof(rdir), "%s/store-bench-%d-rload", g_base, (int)getpid()))
            die("--dir", "path too long");
        /* the writer: one session per sample (each also written through to Redis) */
        store_t *s = open_store(dir, sb, (size_t)n, 0, false, redis);
        bool use_redis = redis && redis_ready(s);
        for (int i = 0; i < n; i++) {
            char id[32];
            snprintf(id, sizeof(id), "r%d", i);
            waiter_t w = {0};
            if (store_create(s, id, NULL, 0, NULL, 0, NULL, NULL, NULL)) die("create", id);
            void *st = malloc(sb);
            memcpy(st, tmpl, sb);
            uv_run(&g_loop, UV_RUN_DEFAULT);
            if (store_commit(s, id, 0, st, 1, 0, wait_done, &w)) die("commit", id);
            uv_run(&g_loop, UV_RUN_DEFAULT);
            if (w.rc) die("commit", w.msg);
        }
        store_close(s);
        uv_run(&g_loop, UV_RUN_DEFAULT);
        double med[7][2][32] = {{{0}}};
        double *v = malloc(sizeof(double) * (size_t)n), *vf = malloc(sizeof(double) * (size_t)n),
               *vw = malloc(sizeof(double) * (size_t)n);
        for (int r = 0; r < g_reps && r < 32; r++) {
            /* From disk, as the daemon does it: a store with a host cache (which the session is
             * not in: just opened), each session loaded once into a fresh buffer. warm: the
             * file is in the page cache (it was read or written before); cold: its pages are
             * dropped first. */
            for (int cold = 0; cold < 2; cold++) {
                s = open_store(dir, sb, (size_t)n, sb * (size_t)n + 1, false, NULL);
                for (int i = 0; i < n; i++) {
                    char id[32];
                    snprintf(id, sizeof(id), "r%d", i);
                    store_session_t rec;
                    if (store_get(s, id, &rec)) die("get", id);
                    if (cold) drop_cache(dir, id, rec.version);
                    store_session_clear(&rec);
                    unsigned char *fresh = malloc(sb);
                    if (!fresh) die("load", "out of memory");
                    v[i] = load_once(s, id, fresh);
                    if (i == 0 && memcmp(fresh, tmpl, sb) != 0)
                        die("load", "state differs from what was committed");
                    free(fresh);
                }
                med[cold][0][r] = pct(v, n, 50), med[cold][1][r] = pct(v, n, 99);
                store_close(s);
            }
            store_t *hot = open_store(dir, sb, (size_t)n, sb * (size_t)n + 1, false, NULL);
            for (int i = 0; i < n; i++) {
                char id[32];
                snprintf(id, sizeof(id), "r%d", i);
                store_session_t rec;
                waiter_t w = {0};
                void *st = malloc(sb);
                memcpy(st, tmpl, sb);
                if (store_get(hot, id, &rec)) die("get", id);
                /* a commit leaves its state in the host cache (a load from disk does not) */
                if (store_commit(hot, id, rec.version, st, 0, 0, wait_done, &w)) die("commit", id);
                uv_run(&g_loop, UV_RUN_DEFAULT);
                store_session_clear(&rec);
                v[i] = load_once(hot, id, dst);
            }
            med[2][0][r] = pct(v, n, 50), med[2][1][r] = pct(v, n, 99);
            store_close(hot);
            if (memcmp(dst, tmpl, sb) != 0) die("load", "state differs from what was committed");
            if (!use_redis) continue;
            /* a replica that has never seen these sessions: fetch (GET, verify, local durable
             * write, index), then load (from its host cache) */
            store_t *rs = open_store(rdir, sb, (size_t)n, sb * (size_t)n + 1, false, redis);
            if (!redis_ready(rs)) die("redis", "the shared tier does not answer");
            for (int i = 0; i < n; i++) {
                char id[32];
                snprintf(id, sizeof(id), "r%d", i);
                waiter_t w = {0};
                double t0 = now_ms();
                if (store_fetch(rs, id, wait_done, &w)) die("fetch", id);
                /* until the fetch answers (authority mode: before its local copy is written),
                 * then the load the daemon would do, then the rest (the copy written behind) */
                while (!w.calls && uv_run(&g_loop, UV_RUN_ONCE))
                    ;
                if (w.rc || !w.calls) die("fetch", w.msg);
                vf[i] = w.t1 - t0;
                load_once(rs, id, dst);
                v[i] = now_ms() - t0;
                uv_run(&g_loop, UV_RUN_DEFAULT);
                vw[i] = now_ms() - t0;
                if (i == 0 && memcmp(dst, tmpl, sb) != 0)
                    die("fetch", "state differs from what was committed");
            }
            med[3][0][r] = pct(v, n, 50), med[3][1][r] = pct(v, n, 99);
            med[5][0][r] = pct(vf, n, 50), med[5][1][r] = pct(vf, n, 99);
            med[6][0][r] = pct(vw, n, 50), med[6][1][r] = pct(vw, n, 99);
            store_close(rs);
            uv_run(&g_loop, UV_RUN_DEFAULT);
            rm_rf(rdir);
            /* the bare GET round trip of the same values, no checks, no disk */
            rds_t *rd;
            char err[300];
            if (rds_open(&g_loop, redis, &(store_redis_opts_t){0}, NULL, &rd, err, sizeof(err)) ||
                !rds_wait_ready(rd))
                die("redis", "cannot connect");
            for (int i = 0; i < n; i++) {
                char key[64];
                snprintf(key, sizeof(key), STORE_REDIS_PREFIX_DEFAULT "ckpt:r%d", i);
                rget_t g = {0};
                double t0 = now_ms();
                if (rds_get(rd, key, rget_done, &g)) die("redis", "GET refused");
                uv_run(&g_loop, UV_RUN_DEFAULT);
                if (g.rc || g.len < sb) {
                    char m[80];
                    snprintf(m, sizeof(m), "GET failed (rc %d, %zu bytes)", g.rc, g.len);
                    die("redis", m);
                }
                v[i] = g.t1 - t0;
            }
            med[4][0][r] = pct(v, n, 50), med[4][1][r] = pct(v, n, 99);
            rds_close(rd);
            uv_run(&g_loop, UV_RUN_DEFAULT);
        }
        int reps = g_reps < 32 ? g_reps : 32;
        printf("| %zu B | %d x %d |", sb, n, reps);
        for (int k = 0; k < 7; k++) {
            if (k >= 3 && !use_redis)
                printf(" — |");
            else
                printf(" %.3f / %.3f |", median(med[k][0], reps), median(med[k][1], reps));
        }
        printf("\n");
        fflush(stdout);
        free(v);
        free(vf);
        free(vw);
        /* delete the sessions and their Redis keys */
        s = open_store(dir, sb, (size_t)n, 0, false, use_redis ? redis : NULL);
        if (use_redis && !redis_ready(s)) die("redis", "the shared tier does not answer");
        for (int i = 0; i < n; i++) {
            char id[32];
            snprintf(id, sizeof(id), "r%d", i);
            store_delete(s, id, NULL, NULL);
        }
        uv_run(&g_loop, UV_RUN_DEFAULT);
        store_close(s);
        rm_rf(dir);
        free(tmpl);
        free(dst);
    }
}

/* ---- main ------------------------------------------------------------------------------- */

static pid_t g_redis_pid = -1;

static void stop_redis(void)
{
    if (g_redis_pid > 0) {
        kill(g_redis_pid, SIGTERM);
        waitpid(g_redis_pid, NULL, 0);
        g_redis_pid = -1;
    }
}

static pid_t start_redis(const char *bin, char *addr, size_t n)
{
    int port = 20000 + (int)(getpid() % 20000);
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 1);
        execlp(bin, bin, "--port", ps, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               (char *)NULL);
        _exit(127);
    }
    snprintf(addr, n, "127.0.0.1:%d", port);
    usleep(300000); /* redis_ready waits for the connection in any case */
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return -1; /* exited at once */
    return pid;
}

/* The sections asked for; 1 if one failed (die). */
static int run(const char *only, const char *redis)
{
    if (setjmp(g_bail)) return 1;
    if (strcmp(only, "resume") != 0) bench_commit();
    if (strcmp(only, "commit") != 0) bench_resume(redis);
    return 0;
}

int main(int argc, char **argv)
{
    const char *only = "", *redis = NULL, *redis_bin = "redis-server";
    bool no_redis = false;
    char addr[64];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
            if (rcd_path_fmt(g_base, sizeof(g_base), "%s", argv[++i])) {
                fprintf(stderr, "store_bench: --dir is longer than %d bytes\n", RCD_PATH_MAX - 1);
                return 2;
            }
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--redis") && i + 1 < argc)
            redis = argv[++i];
        else if (!strcmp(argv[i], "--redis-server") && i + 1 < argc)
            redis_bin = argv[++i];
        else if (!strcmp(argv[i], "--no-redis"))
            no_redis = true;
        else if (!strcmp(argv[i], "--authority"))
            g_authority = true;
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
            char *p = argv[++i], *e;
            for (g_nsizes = 0; *p && g_nsizes < 16; p = *e ? e + 1 : e) {
                unsigned long long z = strtoull(p, &e, 10);
                if (e == p || z == 0 || (*e && *e != ',')) {
                    fprintf(stderr, "store_bench: --sizes wants bytes, comma-separated\n");
                    return 2;
                }
                g_sizes[g_nsizes++] = (size_t)z;
            }
        }
        else {
            fprintf(stderr,
                    "usage: %s [--dir DIR] [--reps N] [--only commit|resume] "
                    "[--redis HOST:PORT] [--redis-server PATH] [--no-redis] [--sizes B,B,..] [--authority]\n",
                    argv[0]);
            return 2;
        }
    }
    if (g_reps < 1) g_reps = 1;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&g_loop);
    if (!redis && !no_redis && strcmp(only, "commit") != 0) {
        g_redis_pid = start_redis(redis_bin, addr, sizeof(addr));
        if (g_redis_pid > 0)
            redis = addr;
        else
            fprintf(stderr, "store_bench: cannot start %s: Redis rows skipped\n", redis_bin);
    }
    if (no_redis) redis = NULL;
    time_t t = time(NULL);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", gmtime(&t));
    printf("store_bench: dir %s, %s, %d reps%s%s\n", g_base, when, g_reps, redis ? ", redis " : "",
           redis ? redis : "");
    int rc = run(only, redis);
    stop_redis();
    if (rc) return 1;
    uv_loop_close(&g_loop);
    return 0;
}
