/* workers/cuda: the NCCL communicator (see comm.h), the only file that includes nccl.h. One
 * process drives the node's GPUs: ncclCommInitAll makes one NCCL communicator per device and
 * each rank's thread calls the collectives on its own, enqueued on its stream. */
#include <stdbool.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "workers/comm.h"

typedef struct nccl {
    wrk_comm_t base;
    ncclComm_t nc;
    int device;
    cudaStream_t stream;     /* where collectives are enqueued */
    cudaStream_t own_stream; /* the one created here (destroyed with the handle) */
    float *one;              /* a device float for the barrier's all-reduce */
} nccl_t;

static int nccl_rc(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess:
        return 0;
    case ncclInvalidArgument:
    case ncclInvalidUsage:
        return RCD_EINVAL;
    case ncclSystemError:
    case ncclRemoteError:
        return RCD_EUNAVAILABLE;
    default:
        return RCD_EINTERNAL;
    }
}

static int nccl_all_reduce_sum(wrk_comm_t *base, float *buf, size_t n)
{
    nccl_t *c = (nccl_t *)base;
    if (n == 0) return 0;
    if (cudaSetDevice(c->device) != cudaSuccess) return RCD_EINTERNAL;
    return nccl_rc(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, c->nc, c->stream));
}

static int nccl_broadcast(wrk_comm_t *base, void *buf, size_t bytes, int root)
{
    nccl_t *c = (nccl_t *)base;
    if (root < 0 || root >= base->size) return RCD_EINVAL;
    if (bytes == 0) return 0;
    if (cudaSetDevice(c->device) != cudaSuccess) return RCD_EINTERNAL;
    return nccl_rc(ncclBroadcast(buf, buf, bytes, ncclUint8, root, c->nc, c->stream));
}

/* NCCL has no barrier: a one-float all-reduce, then wait for the stream. */
static int nccl_barrier(wrk_comm_t *base)
{
    nccl_t *c = (nccl_t *)base;
    if (cudaSetDevice(c->device) != cudaSuccess) return RCD_EINTERNAL;
    int rc = nccl_rc(ncclAllReduce(c->one, c->one, 1, ncclFloat32, ncclSum, c->nc, c->stream));
    if (rc) return rc;
    return cudaStreamSynchronize(c->stream) == cudaSuccess ? 0 : RCD_EINTERNAL;
}

static void nccl_destroy(wrk_comm_t *base)
{
    nccl_t *c = (nccl_t *)base;
    cudaSetDevice(c->device);
    if (c->nc) ncclCommDestroy(c->nc);
    if (c->one) cudaFree(c->one);
    if (c->own_stream) cudaStreamDestroy(c->own_stream);
    free(c);
}

static const wrk_comm_i nccl_vt = {
    .name = "nccl",
    .destroy = nccl_destroy,
    .all_reduce_sum = nccl_all_reduce_sum,
    .broadcast = nccl_broadcast,
    .barrier = nccl_barrier,
};

int wrk_comm_nccl_set_stream(wrk_comm_t *base, void *cuda_stream)
{
    if (base->vt != &nccl_vt) return RCD_EINVAL;
    nccl_t *c = (nccl_t *)base;
    c->stream = cuda_stream ? (cudaStream_t)cuda_stream : c->own_stream;
    return 0;
}

int wrk_comm_nccl_create(int n, const int *devices, wrk_comm_t **out, char *err, size_t errlen)
{
    if (n < 1) return rcd_fail(RCD_EINVAL, err, errlen, "nccl: group size %d", n);
    for (int r = 0; r < n; r++)
        out[r] = NULL;
    ncclComm_t *nc = calloc((size_t)n, sizeof *nc);
    if (!nc) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    ncclResult_t nr = ncclCommInitAll(nc, n, devices);
    if (nr != ncclSuccess) {
        free(nc);
        return rcd_fail(nccl_rc(nr) ? nccl_rc(nr) : RCD_EINTERNAL, err, errlen,
                        "nccl: cannot create a communicator over %d devices: %s", n,
                        ncclGetErrorString(nr));
    }
    int rc = 0;
    for (int r = 0; r < n; r++) {
        nccl_t *c = calloc(1, sizeof *c);
        if (!c) {
            ncclCommDestroy(nc[r]);
            rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
            continue;
        }
        c->base = (wrk_comm_t){.vt = &nccl_vt, .rank = r, .size = n};
        c->nc = nc[r];
        c->device = devices[r];
        out[r] = &c->base;
        cudaError_t ce = cudaSetDevice(c->device);
        if (ce == cudaSuccess)
            ce = cudaStreamCreateWithFlags(&c->own_stream, cudaStreamNonBlocking);
        if (ce == cudaSuccess) ce = cudaMalloc((void **)&c->one, sizeof(float));
        if (ce != cudaSuccess && !rc)
            rc = rcd_fail(RCD_EINTERNAL, err, errlen, "nccl: device %d: %s", c->device,
                          cudaGetErrorString(ce));
        c->stream = c->own_stream;
    }
    free(nc);
    if (rc)
        for (int r = 0; r < n; r++) {
            wrk_comm_destroy(out[r]);
            out[r] = NULL;
        }
    return rc;
}
