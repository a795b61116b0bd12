/* The in-process communicator: all-reduce sums in rank order (bit-exact against a serial
 * reference, the same bits on every rank) for many sizes, repeated calls and groups of 1..8
 * ranks with jittered timing; broadcast from every root; barriers that really hold ranks. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tests/support/rcd_test.h"
#include "workers/comm.h"

#define MAX_RANKS 8
#define ROUNDS 6

static const size_t sizes[] = {1, 3, 15, 16, 17, 31, 100, 1000, 4097, 65541};
#define N_SIZES (int)(sizeof sizes / sizeof sizes[0])

typedef struct shared {
    int size;
    atomic_int arrived; /* barrier check */
    atomic_int failures;
    wrk_comm_t *comm[MAX_RANKS];
} shared_t;

typedef struct rank_arg {
    shared_t *sh;
    int rank;
} rank_arg_t;

/* Value of element i of rank r in round k: magnitudes from 1e-4 to 1e4 so that the order of
 * the sum changes its bits. */
static float value(int r, int k, size_t i)
{
    uint32_t h = (uint32_t)(r * 2654435761u) ^ (uint32_t)(k * 40503u) ^ (uint32_t)(i * 2246822519u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    float mant = (float)(h & 0xffff) / 65536.f - 0.5f;
    static const float scale[] = {1e-4f, 1e-2f, 1.f, 1e2f, 1e4f};
    return mant * scale[(h >> 16) % 5];
}

static void jitter(int r, int k)
{
    if ((r + k) % 3 == 0) {
        struct timespec ts = {0, 20000L * (r + 1)};
        nanosleep(&ts, NULL);
    }
}

static void *rank_main(void *p)
{
    rank_arg_t *a = p;
    shared_t *sh = a->sh;
    wrk_comm_t *c = sh->comm[a->rank];
    const int me = a->rank, size = sh->size;
    int bad = 0;
    if (c->rank != me || c->size != size) bad++;
    float *buf = malloc(sizes[N_SIZES - 1] * sizeof(float));
    for (int k = 0; k < ROUNDS; k++)
        for (int si = 0; si < N_SIZES; si++) {
            size_t n = sizes[si];
            for (size_t i = 0; i < n; i++)
                buf[i] = value(me, k, i);
            jitter(me, k + si);
            if (wrk_comm_all_reduce_sum(c, buf, n)) bad++;
            for (size_t i = 0; i < n; i++) {
                float ref = value(0, k, i);
                for (int r = 1; r < size; r++)
                    ref += value(r, k, i);
                if (memcmp(&ref, &buf[i], sizeof ref) != 0) {
                    if (bad < 3)
                        fprintf(stderr, "rank %d/%d n %zu [%zu]: %.9g != %.9g\n", me, size, n, i,
                                buf[i], ref);
                    bad++;
                }
            }
        }
    /* Broadcast from every root, with a size that is not a multiple of 4. */
    for (int root = 0; root < size; root++) {
        unsigned char msg[37];
        for (int i = 0; i < 37; i++)
            msg[i] = (unsigned char)(me == root ? root * 7 + i : 0xee);
        jitter(me, root);
        if (wrk_comm_broadcast(c, msg, sizeof msg, root)) bad++;
        for (int i = 0; i < 37; i++)
            if (msg[i] != (unsigned char)(root * 7 + i)) bad++;
    }
    if (wrk_comm_broadcast(c, buf, 4, size) != RCD_EINVAL) bad++; /* not collective: all refuse */
    /* Barrier: nobody passes round k before everyone arrived at it. */
    for (int k = 0; k < 20; k++) {
        jitter(me, k);
        atomic_fetch_add(&sh->arrived, 1);
        if (wrk_comm_barrier(c)) bad++;
        if (atomic_load(&sh->arrived) < size * (k + 1)) bad++;
        if (wrk_comm_barrier(c)) bad++; /* nobody starts round k+1 before all checked round k */
    }
    free(buf);
    atomic_fetch_add(&sh->failures, bad);
    return NULL;
}

static void test_groups(void)
{
    for (int size = 1; size <= MAX_RANKS; size++) {
        shared_t sh = {.size = size};
        char err[256];
        int rc = wrk_comm_inproc_create(size, sh.comm, err, sizeof err);
        CHECK_MSG(rc == 0, "%s", err);
        if (rc) continue;
        pthread_t th[MAX_RANKS];
        rank_arg_t args[MAX_RANKS];
        for (int r = 0; r < size; r++) {
            args[r] = (rank_arg_t){.sh = &sh, .rank = r};
            if (r) pthread_create(&th[r], NULL, rank_main, &args[r]);
        }
        rank_main(&args[0]);
        for (int r = 1; r < size; r++)
            pthread_join(th[r], NULL);
        CHECK_MSG(atomic_load(&sh.failures) == 0, "group of %d: %d failures", size,
                  atomic_load(&sh.failures));
        fprintf(stderr, "  %d ranks: %d sizes x %d rounds, broadcast, barrier ok\n", size, N_SIZES,
                ROUNDS);
        for (int r = size - 1; r >= 0; r--)
            wrk_comm_destroy(sh.comm[r]); /* any order */
    }
}

/* The reference order is not commutative in floating point: a sum taken in another order
 * differs on these values, so the bit-exact check above does see the order. */
static void test_order_matters(void)
{
    int differ = 0;
    for (size_t i = 0; i < 1000; i++) {
        float fwd = value(0, 0, i), rev = value(3, 0, i);
        for (int r = 1; r < 4; r++)
            fwd += value(r, 0, i);
        for (int r = 2; r >= 0; r--)
            rev += value(r, 0, i);
        differ += memcmp(&fwd, &rev, sizeof fwd) != 0;
    }
    CHECK_MSG(differ > 10, "only %d of 1000 sums depend on the order", differ);
}

static void test_bad_size(void)
{
    wrk_comm_t *c[1];
    char err[256] = "";
    CHECK(wrk_comm_inproc_create(0, c, err, sizeof err) == RCD_EINVAL);
    CHECK(strstr(err, "group size 0") != NULL);
    CHECK(wrk_comm_inproc_create(WRK_COMM_INPROC_MAX + 1, c, err, sizeof err) == RCD_EINVAL);
}

/* Ranks that disagree on the length (a caller bug) all get RCD_EINVAL, and the group keeps
 * working: the next all-reduce is correct. */
static void *mismatch_rank(void *p)
{
    rank_arg_t *a = p;
    wrk_comm_t *c = a->sh->comm[a->rank];
    float buf[8];
    for (int i = 0; i < 8; i++)
        buf[i] = (float)(a->rank + 1);
    if (wrk_comm_all_reduce_sum(c, buf, a->rank ? 8 : 7) != RCD_EINVAL)
        atomic_fetch_add(&a->sh->failures, 1);
    if (wrk_comm_broadcast(c, buf, a->rank ? 8 : 4, 0) != RCD_EINVAL)
        atomic_fetch_add(&a->sh->failures, 1);
    if (wrk_comm_all_reduce_sum(c, buf, 8) != 0) atomic_fetch_add(&a->sh->failures, 1);
    for (int i = 0; i < 8; i++)
        if (buf[i] != 6.0f) atomic_fetch_add(&a->sh->failures, 1); /* 1 + 2 + 3 */
    return NULL;
}

static void test_length_mismatch(void)
{
    shared_t sh = {.size = 3};
    char err[256];
    int rc = wrk_comm_inproc_create(3, sh.comm, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc) return;
    pthread_t th[3];
    rank_arg_t args[3];
    for (int r = 0; r < 3; r++) {
        args[r] = (rank_arg_t){.sh = &sh, .rank = r};
        if (r) pthread_create(&th[r], NULL, mismatch_rank, &args[r]);
    }
    mismatch_rank(&args[0]);
    for (int r = 1; r < 3; r++)
        pthread_join(th[r], NULL);
    CHECK_MSG(atomic_load(&sh.failures) == 0, "%d failures", atomic_load(&sh.failures));
    for (int r = 0; r < 3; r++)
        wrk_comm_destroy(sh.comm[r]);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_order_matters);
    RUN(test_groups);
    RUN(test_bad_size);
    RUN(test_length_mismatch);
    return rcd_test_summary();
}
