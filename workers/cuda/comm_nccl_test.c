/* The NCCL communicator over every visible GPU (one rank per device, one thread per rank):
 * all-reduce of several sizes, repeated; broadcast from every root; barrier. Values are
 * small integers, so the sum is exact whatever order NCCL's algorithm adds in. Exits 77
 * (skip) without a GPU. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "tests/support/rcd_test.h"
#include "workers/comm.h"

#define MAX_DEV 16

static const size_t sizes[] = {1, 17, 1000, 65541, 1 << 20};
#define N_SIZES (int)(sizeof sizes / sizeof sizes[0])

typedef struct rank_arg {
    wrk_comm_t *c;
    int device;
    atomic_int *failures;
} rank_arg_t;

static void *rank_main(void *p)
{
    rank_arg_t *a = p;
    wrk_comm_t *c = a->c;
    const int me = c->rank, n = c->size;
    int bad = 0;
    const size_t cap = sizes[N_SIZES - 1];
    float *host = malloc(cap * sizeof(float)), *dev = NULL;
    if (!host || cudaSetDevice(a->device) != cudaSuccess ||
        cudaMalloc((void **)&dev, cap * sizeof(float)) != cudaSuccess) {
        atomic_fetch_add(a->failures, 1000);
        free(host);
        return NULL;
    }
    for (int round = 0; round < 3; round++)
        for (int si = 0; si < N_SIZES; si++) {
            const size_t m = sizes[si];
            for (size_t i = 0; i < m; i++)
                host[i] = (float)((i + (size_t)me * 7 + round) % 97);
            cudaMemcpy(dev, host, m * sizeof(float), cudaMemcpyHostToDevice);
            if (wrk_comm_all_reduce_sum(c, dev, m)) bad++;
            if (wrk_comm_barrier(c)) bad++; /* also waits for the stream */
            cudaMemcpy(host, dev, m * sizeof(float), cudaMemcpyDeviceToHost);
            for (size_t i = 0; i < m; i++) {
                float want = 0.f;
                for (int r = 0; r < n; r++)
                    want += (float)((i + (size_t)r * 7 + round) % 97);
                if (host[i] != want) bad++;
            }
        }
    for (int root = 0; root < n; root++) {
        unsigned char msg[37];
        for (int i = 0; i < 37; i++)
            msg[i] = (unsigned char)(me == root ? root * 5 + i : 0xee);
        cudaMemcpy(dev, msg, sizeof msg, cudaMemcpyHostToDevice);
        if (wrk_comm_broadcast(c, dev, sizeof msg, root) || wrk_comm_barrier(c)) bad++;
        cudaMemcpy(msg, dev, sizeof msg, cudaMemcpyDeviceToHost);
        for (int i = 0; i < 37; i++)
            bad += msg[i] != (unsigned char)(root * 5 + i);
    }
    cudaFree(dev);
    free(host);
    atomic_fetch_add(a->failures, bad);
    return NULL;
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        fprintf(stderr, "skip: no CUDA device\n");
        return 77;
    }
    if (n > MAX_DEV) n = MAX_DEV;
    int devs[MAX_DEV];
    for (int i = 0; i < n; i++)
        devs[i] = i;
    wrk_comm_t *c[MAX_DEV];
    char err[512];
    int rc = wrk_comm_nccl_create(n, devs, c, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc) return rcd_test_summary();
    atomic_int failures = 0;
    pthread_t th[MAX_DEV];
    rank_arg_t args[MAX_DEV];
    for (int r = 0; r < n; r++) {
        args[r] = (rank_arg_t){.c = c[r], .device = devs[r], .failures = &failures};
        pthread_create(&th[r], NULL, rank_main, &args[r]);
    }
    for (int r = 0; r < n; r++)
        pthread_join(th[r], NULL);
    CHECK_MSG(atomic_load(&failures) == 0, "%d failures over %d ranks", atomic_load(&failures), n);
    fprintf(stderr, "  nccl over %d device(s): all-reduce, broadcast, barrier\n", n);
    for (int r = 0; r < n; r++)
        wrk_comm_destroy(c[r]);
    return rcd_test_summary();
}
