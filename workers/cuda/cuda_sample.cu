// workers/cuda: logit post-processing and sampling helpers on the device — scale/softcap,
// per-row argmax (greedy), per-row softmax with temperature and per-row top-k.
#include <cfloat>

#include "workers/cuda/cuda_kern.cuh"

#define ROW_THREADS 256

__global__ void post_kernel(float *l, size_t n, float scale, float cap)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = l[i] * scale;
        l[i] = cap > 0.f ? cap * tanhf(v / cap) : v;
    }
}

extern "C" int cuda_logit_post(cudaStream_t s, float *logits, size_t n, float scale, float cap)
{
    if (!n || (scale == 1.0f && !(cap > 0.f))) return 0;
    const size_t need = (n + 255) / 256;
    const int blocks = need > 8192 ? 8192 : (int)need;
    post_kernel<<<blocks, 256, 0, s>>>(logits, n, scale, cap);
    return launch_status();
}

// (value, index) pairs: larger value wins, then the lower index; NaN never wins.
__device__ __forceinline__ void better(float &v, int &i, float v2, int i2)
{
    if (v2 > v || (v2 == v && i2 < i) || (v != v && v2 == v2)) v = v2, i = i2;
}

__global__ void argmax_kernel(const float *logits, int V, int32_t *out)
{
    __shared__ float sv[ROW_THREADS / 32];
    __shared__ int si[ROW_THREADS / 32];
    const float *row = logits + (size_t)blockIdx.x * V;
    float v = -FLT_MAX;
    int idx = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        better(v, idx, row[j], j);
    for (int off = 16; off > 0; off >>= 1)
        better(v, idx, __shfl_xor_sync(0xffffffffu, v, off),
               __shfl_xor_sync(0xffffffffu, idx, off));
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v, si[threadIdx.x >> 5] = idx;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / 32); w++)
            better(v, idx, sv[w], si[w]);
        out[blockIdx.x] = idx < V ? idx : 0;
    }
}

extern "C" int cuda_argmax(cudaStream_t s, const float *logits, int n_rows, int V, int32_t *out)
{
    if (n_rows <= 0) return 0;
    argmax_kernel<<<n_rows, ROW_THREADS, 0, s>>>(logits, V, out);
    return launch_status();
}

__device__ float block_reduce(float v, bool is_max, float *sh)
{
    for (int off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, v, off);
        v = is_max ? fmaxf(v, o) : v + o;
    }
    __syncthreads(); // sh may still be read from the previous reduction
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = sh[0];
    for (int w = 1; w < (int)(blockDim.x / 32); w++)
        r = is_max ? fmaxf(r, sh[w]) : r + sh[w];
    return r;
}

__global__ void softmax_kernel(float *logits, int V, float inv_temp)
{
    __shared__ float sh[ROW_THREADS / 32];
    float *row = logits + (size_t)blockIdx.x * V;
    float m = -FLT_MAX;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        m = fmaxf(m, row[j] * inv_temp);
    m = block_reduce(m, true, sh);
    float sum = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float e = expf(row[j] * inv_temp - m);
        row[j] = e;
        sum += e;
    }
    sum = block_reduce(sum, false, sh);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        row[j] *= inv;
}

extern "C" int cuda_softmax(cudaStream_t s, float *logits, int n_rows, int V, float temperature)
{
    if (n_rows <= 0) return 0;
    if (!(temperature > 0.f)) return (int)cudaErrorInvalidValue;
    softmax_kernel<<<n_rows, ROW_THREADS, 0, s>>>(logits, V, 1.0f / temperature);
    return launch_status();
}

// Top-k in the order (value descending, id ascending): pass i finds the best element after
// pass i-1's pick in that order, so no scratch and no ordering ties; O(k V) per row, meant
// for the small k of top-k sampling. NaN never wins.
__device__ __forceinline__ bool after(float v, int i, float pv, int pi)
{
    return v < pv || (v == pv && i > pi);
}

__global__ void topk_kernel(const float *logits, int V, int k, int32_t *ids, float *vals)
{
    __shared__ float sv[ROW_THREADS / 32];
    __shared__ int si[ROW_THREADS / 32];
    __shared__ float pick_v;
    __shared__ int pick_i;
    const float *row = logits + (size_t)blockIdx.x * V;
    float pv = INFINITY;
    int pi = -1;
    for (int p = 0; p < k; p++) {
        float v = -INFINITY;
        int idx = 0x7fffffff;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            const float x = row[j];
            if (x == x && after(x, j, pv, pi)) better(v, idx, x, j);
        }
        for (int off = 16; off > 0; off >>= 1)
            better(v, idx, __shfl_xor_sync(0xffffffffu, v, off),
                   __shfl_xor_sync(0xffffffffu, idx, off));
        if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v, si[threadIdx.x >> 5] = idx;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x / 32); w++)
                better(v, idx, sv[w], si[w]);
            pick_v = v;
            pick_i = idx;
            ids[(size_t)blockIdx.x * k + p] = idx < V ? idx : -1;
            vals[(size_t)blockIdx.x * k + p] = v;
        }
        __syncthreads();
        pv = pick_v;
        pi = pick_i;
    }
}

extern "C" int cuda_topk(cudaStream_t s, const float *logits, int n_rows, int V, int k,
                         int32_t *ids, float *vals)
{
    if (n_rows <= 0) return 0;
    if (k < 1 || k > V) return (int)cudaErrorInvalidValue;
    topk_kernel<<<n_rows, ROW_THREADS, 0, s>>>(logits, V, k, ids, vals);
    return launch_status();
}
