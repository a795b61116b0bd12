// workers/cuda: RMSNorm (one block per row, optionally gathering rows by index) and the
// elementwise residual add.
#include "workers/cuda/cuda_kern.cuh"

#define NORM_THREADS 256

__global__ void rmsnorm_kernel(const float *x, const int32_t *rows, int H, const float *w,
                               float eps, float *y)
{
    __shared__ float part[NORM_THREADS / 32];
    const int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * H;
    float ss = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        ss += xr[i] * xr[i];
    for (int off = 16; off > 0; off >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
        for (int off = 16; off > 0; off >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, off);
        if (threadIdx.x == 0) part[0] = ss;
    }
    __syncthreads();
    // Same expression as the CPU reference: w * (x * (1 / sqrt(mean + eps))), IEEE sqrt/div.
    const float sc = 1.0f / sqrtf(part[0] / (float)H + eps);
    float *yr = y + (size_t)r * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        yr[i] = w[i] * (xr[i] * sc);
}

extern "C" int cuda_rmsnorm(cudaStream_t s, const float *x, const int32_t *rows, int n_rows, int H,
                            const float *w, float eps, float *y)
{
    if (n_rows <= 0) return 0;
    rmsnorm_kernel<<<n_rows, NORM_THREADS, 0, s>>>(x, rows, H, w, eps, y);
    return launch_status();
}

__global__ void add_kernel(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

extern "C" int cuda_add(cudaStream_t s, float *y, const float *x, size_t n)
{
    if (!n) return 0;
    const long need = ((long)n + 255) / 256;
    const int blocks = need < 4096 ? (int)need : 4096;
    add_kernel<<<blocks, 256, 0, s>>>(y, x, n);
    return launch_status();
}
