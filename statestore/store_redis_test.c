/* Unit tests of the session store's Redis tier with a real redis-server on loopback: the
 * local copy written behind a moved session's resume, and crashes at each step of it. */
#include "statestore/store_test_util.h"

/* ---- authority mode: a fetched version answered from the host cache, its copy written behind */

static pid_t g_redis_pid;
static char g_redis_addr[64];

/* A real redis-server on a free loopback port (no persistence); false when there is none. */
static bool redis_start(void)
{
    if (system("command -v redis-server >/dev/null 2>&1") != 0) return false;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || getsockname(fd, (void *)&a, &al))
        return false;
    close(fd);
    char port[16];
    snprintf(port, sizeof(port), "%d", ntohs(a.sin_port));
    snprintf(g_redis_addr, sizeof(g_redis_addr), "127.0.0.1:%s", port);
    if ((g_redis_pid = fork()) == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a test that dies leaves no redis-server behind */
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    /* listening before the stores connect (a refused first connect backs off for a second) */
    for (int i = 0; g_redis_pid > 0 && i < 1000; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        bool up = c >= 0 && connect(c, (struct sockaddr *)&a, sizeof(a)) == 0;
        if (c >= 0) close(c);
        if (up) return true;
        usleep(10000);
    }
    return false;
}

static void redis_stop(void)
{
    if (g_redis_pid <= 0) return;
    kill(g_redis_pid, SIGTERM);
    waitpid(g_redis_pid, NULL, 0);
    g_redis_pid = 0;
}

#define BIG_SB ((3u << 20) + 4) /* a state whose GET reply spans many reads */
static bool g_big;              /* open_redis: BIG_SB states, no layout table */

static store_t *open_redis(uv_loop_t *loop, const char *dir, bool authority)
{
    static const store_tensor_t t[1] = {{"layers.0.ssm", 0, SB, 1, {SB / 4, 0, 0}}};
    store_opts_t o = {.state_bytes = g_big ? BIG_SB : SB,
                      .fingerprint = FP,
                      .max_sessions = 8,
                      .loop = loop,
                      .dir = dir,
                      .keep_versions = 2,
                      .cache_bytes = 16 << 20,
                      .n_tensors = g_big ? 0 : 1,
                      .tensors = t,
                      .redis = g_redis_addr,
                      .redis_authority = authority};
    store_t *s = NULL;
    char err[300];
    int rc = store_open(&o, &s, err, sizeof(err));
    CHECK_MSG(rc == 0, "store_open: %s", err);
    /* wait until the connection answers (redis-server may still be starting) */
    for (int i = 0; s && i < 1000; i++) {
        res_t r = {0};
        if ((authority ? store_sync(s, "probe", done, &r) : store_fetch(s, "probe", done, &r)) ==
            0) {
            uv_run(loop, UV_RUN_DEFAULT);
            CHECK(r.rc == RCD_ENOTFOUND);
            return s;
        }
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    CHECK_MSG(false, "redis %s never answered", g_redis_addr);
    return s;
}

static store_t *open_auth(uv_loop_t *loop, const char *dir)
{
    return open_redis(loop, dir, true);
}

static atomic_int g_behind_block; /* the hook waits while set (step 0) */
static atomic_int g_behind_exit;  /* the hook _exits at this step + 1 (the crash tests) */

static void behind_hook(const char *id, int step)
{
    (void)id;
    if (atomic_load(&g_behind_exit) == step + 1) _exit(41 + step);
    while (step == 0 && atomic_load(&g_behind_block))
        usleep(1000);
}

typedef struct behind_probe {
    store_t *s;
    res_t r;
    const char *dir, *id;
    int seed;       /* the state the fetch must have answered with */
    bool do_commit; /* commit seed + 1 from the callback (expected = the fetched version) */
    bool do_delete; /* delete from the callback */
    int load_rc, act_rc, files_then;
    bool state_ok;
    res_t act;
} behind_probe_t;

/* The fetch's answer, while the write behind it is held at step 0 (temp written, not renamed). */
static void behind_cb(void *user, int rc, uint64_t version, const char *msg)
{
    behind_probe_t *p = user;
    done(&p->r, rc, version, msg);
    unsigned char buf[SB];
    uint64_t v = 0;
    p->files_then = count_files(p->dir, p->id, ".ckpt");
    p->load_rc = store_load(p->s, p->id, buf, &v, done, &p->act, NULL, 0);
    p->state_ok = p->load_rc == 0 && v == version && is_blob(buf, p->seed);
    if (p->do_commit)
        p->act_rc = store_commit(p->s, p->id, version, blob(p->seed + 1), 1, 900, done, &p->act);
    if (p->do_delete) p->act_rc = store_delete(p->s, p->id, done, &p->act);
    atomic_store(&g_behind_block, 0);
}

/* The crash child (`store_test --behind-crash DIR ID STEP REDIS`, a process of its own: exec'd,
 * not only forked, since the test process has threads): opens DIR against Redis, fetches ID, and
 * is killed by the hook at STEP (exit 41 + STEP). */
static int behind_crash_child(char **argv)
{
    snprintf(g_redis_addr, sizeof(g_redis_addr), "%s", argv[5]);
    uv_loop_init(&g_loop);
    store__behind_hook = behind_hook;
    store_t *s = open_auth(&g_loop, argv[2]);
    atomic_store(&g_behind_exit, atoi(argv[4]) + 1);
    res_t r = {0};
    if (!s || rcd__failed || store_sync(s, argv[3], done, &r)) return 2;
    uv_run(&g_loop, UV_RUN_DEFAULT);
    return 3; /* the hook did not fire */
}

static int crash_at(const char *dir, const char *id, int step)
{
    char st[8];
    snprintf(st, sizeof(st), "%d", step);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "store_test", "--behind-crash", dir, id, st, g_redis_addr,
              (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_redis_behind(void)
{
    if (!redis_start()) {
        printf("skipped: no redis-server on PATH\n");
        return;
    }
    char da[] = "/tmp/store-rb-a-XXXXXX", db[] = "/tmp/store-rb-b-XXXXXX",
         dc[] = "/tmp/store-rb-c-XXXXXX", cmd[300];
    CHECK(mkdtemp(da) && mkdtemp(db) && mkdtemp(dc));
    store__behind_hook = behind_hook;
    store_t *a = open_auth(&g_loop, da), *b = open_auth(&g_loop, db);
    res_t r;
    CHECK(store_create(a, "m", NULL, 0, NULL, 1, NULL, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && commit(a, "m", 0, 1, &r) == 0 && commit(a, "m", 1, 2, &r) == 0);

    /* B has never seen m: the check fetches version 2 and answers before its local copy is on
     * disk; a load is served from the host cache, and a commit of version 3 is taken at once
     * (the copy is not `pending`) */
    atomic_store(&g_behind_block, 1);
    behind_probe_t p = {.s = b, .dir = db, .id = "m", .seed = 2, .do_commit = true};
    CHECK(store_sync(b, "m", behind_cb, &p) == 0);
    run();
    CHECK_MSG(p.r.calls == 1 && p.r.rc == 0 && p.r.version == 2, "%d %s", p.r.rc, p.r.msg);
    CHECK_MSG(p.files_then <= 0, "%d",
              p.files_then); /* answered while the copy was still a temp file */
    CHECK(p.load_rc == 0 && p.state_ok);
    CHECK_MSG(p.act_rc == 0 && p.act.rc == 0 && p.act.version == 3, "%d %d %s", p.act_rc, p.act.rc,
              p.act.msg);
    store_stats_t st;
    store_get_stats(b, &st);
    CHECK(st.redis_behind == 1 && st.redis_behind_failed == 0);
    /* on disk in order: the copy of 2 and then 3 (keep 2), nothing left half-written */
    CHECK(count_files(db, "m", ".ckpt") == 2 && count_files(db, "m", ".tmp") == 0);
    unsigned char buf[SB];
    CHECK(store_load(b, "m", buf, NULL, done, &r, NULL, 0) == 0 && is_blob(buf, 3));
    /* the authority rules are unchanged: A's copy (2) is stale, its commit of 3 is refused, and
     * its next check drops it and fetches B's version 3 */
    CHECK(commit(a, "m", 2, 9, &r) == RCD_ECONFLICT);
    memset(&r, 0, sizeof(r));
    CHECK(store_sync(a, "m", done, &r) == 0);
    run();
    CHECK(r.rc == 0 && r.version == 3);
    CHECK(store_load(a, "m", buf, NULL, done, &r, NULL, 0) == 0 && is_blob(buf, 3));
    /* and B's own commit of 4 goes on from 3 */
    CHECK(commit(b, "m", 3, 4, &r) == 0 && r.version == 4);

    /* a delete while the copy is being written: ordered after it, no local copy survives */
    CHECK(store_create(a, "d", NULL, 0, NULL, 1, NULL, done, &r) == 0);
    run();
    CHECK(commit(a, "d", 0, 5, &r) == 0);
    atomic_store(&g_behind_block, 1);
    behind_probe_t q = {.s = b, .dir = db, .id = "d", .seed = 5, .do_delete = true};
    CHECK(store_sync(b, "d", behind_cb, &q) == 0);
    run();
    CHECK(q.r.rc == 0 && q.r.version == 1 && q.state_ok && q.act_rc == 0 && q.act.rc == 0);
    CHECK(count_files(db, "d", ".ckpt") == -1); /* the directory is gone */
    memset(&r, 0, sizeof(r));
    CHECK(store_sync(a, "d", done, &r) == 0);
    run();
    CHECK(r.rc == RCD_ENOTFOUND);
    store_close(a);
    store_close(b);
    run();

    /* a crash while the copy is written: before the rename, no local copy at all (the temp
     * file is removed by the next scan); after it, a complete copy that loads verified */
    CHECK(crash_at(dc, "m", 0) == 41);
    store_t *c = open_store(dc, FP, 1 << 20, 2);
    CHECK(store_count(c) == 0 && count_files(dc, "m", ".tmp") <= 0);
    store_close(c);
    CHECK(crash_at(dc, "m", 1) == 42);
    c = open_store(dc, FP, 1 << 20, 2);
    store_session_t rec = {0};
    CHECK(store_get(c, "m", &rec) == 0 && rec.version == 4);
    store_session_clear(&rec);
    memset(&r, 0, sizeof(r));
    CHECK(store_load(c, "m", buf, NULL, done, &r, NULL, 0) == STORE_PENDING);
    run();
    CHECK(r.rc == 0 && is_blob(buf, 4));
    store_close(c);

    /* write-through mode (not the authority): the fetch answers once its local copy is durable,
     * and the state, inside the taken reply, is cached and freed with it */
    char dw[] = "/tmp/store-rb-w-XXXXXX";
    CHECK(mkdtemp(dw) != NULL);
    store_t *w = open_redis(&g_loop, dw, false);
    memset(&r, 0, sizeof(r));
    CHECK(store_fetch(w, "m", done, &r) == 0);
    run();
    CHECK(r.rc == 0 && r.version == 4 && count_files(dw, "m", ".ckpt") == 1);
    CHECK(store_load(w, "m", buf, NULL, done, &r, NULL, 0) == 0 && is_blob(buf, 4));
    store_get_stats(w, &st);
    CHECK(st.redis_behind == 0);
    store_close(w);

    /* a 3 MiB state: its GET reply is read straight into one buffer over many socket reads
     * (store_redis.c, bulk_start), which becomes the cached state; byte for byte */
    g_big = true;
    char dx[] = "/tmp/store-rb-x-XXXXXX", dy[] = "/tmp/store-rb-y-XXXXXX";
    CHECK(mkdtemp(dx) && mkdtemp(dy));
    store_t *x = open_auth(&g_loop, dx), *y = open_auth(&g_loop, dy);
    unsigned char *big = malloc(BIG_SB), *got = malloc(BIG_SB);
    for (size_t i = 0; i < BIG_SB; i++)
        big[i] = (unsigned char)(i * 7 + i / 4099);
    CHECK(store_create(x, "big", NULL, 0, NULL, 1, NULL, done, &r) == 0);
    run();
    void *cp = malloc(BIG_SB);
    memcpy(cp, big, BIG_SB);
    CHECK(store_commit(x, "big", 0, cp, 1, 2, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && r.version == 1);
    memset(&r, 0, sizeof(r));
    CHECK(store_sync(y, "big", done, &r) == 0);
    run();
    CHECK_MSG(r.rc == 0 && r.version == 1, "%d %s", r.rc, r.msg);
    memset(got, 0, BIG_SB);
    CHECK(store_load(y, "big", got, NULL, done, &r, NULL, 0) == 0 && !memcmp(got, big, BIG_SB));
    store_close(x);
    store_close(y);
    run();
    free(big);
    free(got);
    g_big = false;
    store__behind_hook = NULL;
    redis_stop();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s' '%s' '%s' '%s'", da, db, dc, dw, dx, dy);
    CHECK(system(cmd) == 0);
}

int main(int argc, char **argv)
{
    if (argc == 6 && !strcmp(argv[1], "--behind-crash")) return behind_crash_child(argv);
    rcd_test_init(argc, argv);
    uv_loop_init(&g_loop);
    RUN(test_redis_behind);
    uv_loop_close(&g_loop);
    return rcd_test_summary();
}
