// workers/cuda: a toolchain and device probe — proves the CUDA build path compiles, links
// and runs a kernel. Exits 77 (ctest's skip code) with the reason when no GPU is present.
#include <cstdio>

#include <cuda_runtime.h>

__global__ void saxpy(int n, float a, const float *x, float *y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

int main()
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        std::printf("SKIPPED: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    const int N = 1 << 20;
    float *x, *y;
    if (cudaMalloc(&x, N * sizeof(float)) != cudaSuccess || cudaMalloc(&y, N * sizeof(float)) != cudaSuccess)
        return 1;
    cudaMemset(x, 0, N * sizeof(float));
    cudaMemset(y, 0, N * sizeof(float));
    saxpy<<<(N + 255) / 256, 256>>>(N, 2.0f, x, y);
    e = cudaDeviceSynchronize();
    cudaFree(x);
    cudaFree(y);
    std::printf("%s: %s, %d SMs, %.1f GiB, kernel %s\n", e == cudaSuccess ? "ok" : "FAIL", p.name,
                p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, cudaGetErrorString(e));
    return e == cudaSuccess ? 0 : 1;
}
