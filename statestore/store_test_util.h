/* statestore: what the store's unit tests share (store_test.c, store_redis_test.c): a loop, a
 * fixed-size blob with its check, a store on a directory and a commit that waits. */
#ifndef RCD_STORE_TEST_UTIL_H
#define RCD_STORE_TEST_UTIL_H

#include "statestore/ckpt.h"
#include "statestore/store.h"
#include "statestore/store_int.h"
#include "tests/support/rcd_test.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SB 256
#define FP 0xabcdef0123456789ull

typedef struct res {
    int calls, rc;
    uint64_t version;
    char msg[1000];
} res_t;

static inline void done(void *user, int rc, uint64_t version, const char *msg)
{
    res_t *r = user;
    r->calls++;
    r->rc = rc;
    r->version = version;
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
}

static uv_loop_t g_loop;

static inline void run(void)
{
    uv_run(&g_loop, UV_RUN_DEFAULT);
}

static inline void *blob(int seed)
{
    unsigned char *b = malloc(SB);
    for (int i = 0; i < SB; i++)
        b[i] = (unsigned char)(seed * 31 + i);
    return b;
}

static inline bool is_blob(const void *p, int seed)
{
    void *b = blob(seed);
    bool eq = memcmp(p, b, SB) == 0;
    free(b);
    return eq;
}

static uint32_t g_default_ttl; /* open_store's default_ttl_s */

static inline store_t *open_store(const char *dir, uint64_t fp, size_t cache, int keep)
{
    static const store_tensor_t t[1] = {{"layers.0.ssm", 0, SB, 1, {SB / 4, 0, 0}}};
    store_opts_t o = {.state_bytes = SB,
                      .fingerprint = fp,
                      .max_sessions = 8,
                      .loop = &g_loop,
                      .dir = dir,
                      .keep_versions = keep,
                      .cache_bytes = cache,
                      .n_tensors = 1,
                      .tensors = t,
                      .default_ttl_s = g_default_ttl};
    store_t *s = NULL;
    char err[300];
    int rc = store_open(&o, &s, err, sizeof(err));
    CHECK_MSG(rc == 0, "store_open: %s", err);
    return s;
}

static inline int commit(store_t *s, const char *id, uint64_t expect, int seed, res_t *r)
{
    memset(r, 0, sizeof(*r));
    int rc = store_commit(s, id, expect, blob(seed), 10, 500 + seed, done, r);
    run();
    return rc ? rc : r->rc;
}

static inline int count_files(const char *dir, const char *id, const char *suffix)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s", dir, id) == 0);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name), k = strlen(suffix);
        if (l > k && !strcmp(e->d_name + l - k, suffix)) n++;
    }
    closedir(d);
    return n;
}

#endif
