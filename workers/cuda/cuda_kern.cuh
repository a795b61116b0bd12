// workers/cuda: device helpers shared by the kernel files (dtype conversion, launch status).
#ifndef RCD_CUDA_KERN_CUH
#define RCD_CUDA_KERN_CUH

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "workers/cuda/cuda_int.h"

// Weight element types as the kernels see them: the dtype tag picks the conversion.
struct w_f32 {
    typedef float T;
    static __device__ __forceinline__ float f(T v)
    {
        return v;
    }
};
struct w_bf16 {
    typedef uint16_t T;
    static __device__ __forceinline__ float f(T v)
    {
        return __uint_as_float((uint32_t)v << 16);
    }
};
struct w_f16 {
    typedef uint16_t T;
    static __device__ __forceinline__ float f(T v)
    {
        return __half2float(__ushort_as_half(v));
    }
};

static inline int launch_status(void)
{
    return (int)cudaGetLastError();
}

static inline int ceil_div(long a, long b)
{
    return (int)((a + b - 1) / b);
}

#endif
