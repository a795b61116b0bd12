// workers/cuda: the projections. Few tokens (decode): a GEMV kernel that streams each weight
// row once for all tokens, converting BF16/F16 in registers and accumulating in fp32 against
// fp32 activations. More tokens (prefill): cuBLAS GemmEx — fp32 weights as fp32 (no TF32),
// half weights against activations converted to the same half type, fp32 accumulation.
#include "workers/cuda/cuda_kern.cuh"

#define GEMV_WARPS 8 // rows per block, one warp each

// 8 consecutive weights of a row as floats (one 16-byte load for halves, two for fp32).
template <class W> __device__ __forceinline__ void load8(const typename W::T *p, float *w);
template <> __device__ __forceinline__ void load8<w_f32>(const float *p, float *w)
{
    const float4 a = reinterpret_cast<const float4 *>(p)[0],
                 b = reinterpret_cast<const float4 *>(p)[1];
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
}
template <class W> __device__ __forceinline__ void load8_half(const uint16_t *p, float *w)
{
    const uint4 v = *reinterpret_cast<const uint4 *>(p);
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[2 * i] = W::f((uint16_t)(u[i] & 0xffffu));
        w[2 * i + 1] = W::f((uint16_t)(u[i] >> 16));
    }
}
template <> __device__ __forceinline__ void load8<w_bf16>(const uint16_t *p, float *w)
{
    load8_half<w_bf16>(p, w);
}
template <> __device__ __forceinline__ void load8<w_f16>(const uint16_t *p, float *w)
{
    load8_half<w_f16>(p, w);
}

// One warp per output row o; TT >= T accumulators per lane. `vec`: rows and x rows are
// 16-byte aligned and K % 8 == 0, so each lane takes 8 columns per load.
template <class W, int TT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(const typename W::T *Wm, int O, int K, const float *x, int ldx, int T, float *y,
                int ldy, const float *bias, bool acc, bool vec)
{
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= O) return;
    const typename W::T *row = Wm + (size_t)o * K;
    float s[TT];
#pragma unroll
    for (int t = 0; t < TT; t++)
        s[t] = 0.f;
    int k0 = 0;
    if (vec) {
        for (int k = lane * 8; k + 8 <= K; k += 32 * 8) {
            float w[8];
            load8<W>(row + k, w);
#pragma unroll
            for (int t = 0; t < TT; t++) {
                if (t < T) {
                    const float4 *xp = reinterpret_cast<const float4 *>(x + (size_t)t * ldx + k);
                    const float4 a = xp[0], b = xp[1];
                    s[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x +
                            w[5] * b.y + w[6] * b.z + w[7] * b.w;
                }
            }
        }
        k0 = K / 8 * 8;
    }
    for (int k = k0 + lane; k < K; k += 32) {
        const float w = W::f(row[k]);
#pragma unroll
        for (int t = 0; t < TT; t++)
            if (t < T) s[t] += w * x[(size_t)t * ldx + k];
    }
#pragma unroll
    for (int t = 0; t < TT; t++)
        for (int off = 16; off > 0; off >>= 1)
            s[t] += __shfl_xor_sync(0xffffffffu, s[t], off);
    if (lane == 0) {
        const float bo = bias ? bias[o] : 0.f;
#pragma unroll
        for (int t = 0; t < TT; t++)
            if (t < T) {
                float *dst = y + (size_t)t * ldy + o;
                *dst = (acc ? *dst : 0.f) + s[t] + bo;
            }
    }
}

template <class W>
static int gemv(cudaStream_t st, const cuda_mat_t *Wt, const float *x, int ldx, int T, float *y,
                int ldy, const float *bias, bool acc)
{
    const size_t esz = sizeof(typename W::T);
    const bool vec = Wt->cols % 8 == 0 && ((uintptr_t)Wt->d % 16) == 0 && ldx % 4 == 0 &&
                     ((uintptr_t)x % 16) == 0 && (Wt->cols * esz) % 16 == 0;
    const typename W::T *Wp = (const typename W::T *)Wt->d;
    const int grid = ceil_div(Wt->rows, GEMV_WARPS), bs = GEMV_WARPS * 32;
#define GEMV_CASE(TT)                                                                              \
    gemv_kernel<W, TT>                                                                             \
        <<<grid, bs, 0, st>>>(Wp, Wt->rows, Wt->cols, x, ldx, T, y, ldy, bias, acc, vec)
    if (T <= 1)
        GEMV_CASE(1);
    else if (T <= 2)
        GEMV_CASE(2);
    else if (T <= 4)
        GEMV_CASE(4);
    else
        GEMV_CASE(8);
#undef GEMV_CASE
    return launch_status();
}

// dst [T x K] contiguous, from x rows of stride ldx, rounded to nearest even.
template <bool BF>
__global__ void to_half_kernel(const float *x, int ldx, int T, int K, uint16_t *dst)
{
    const size_t n = (size_t)T * K;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / K, k = i % K;
        const float v = x[t * ldx + k];
        dst[i] = BF ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                    : __half_as_ushort(__float2half_rn(v));
    }
}

__global__ void bias_kernel(float *y, int ldy, int T, int O, const float *bias)
{
    const size_t n = (size_t)T * O;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[(i / O) * ldy + i % O] += bias[i % O];
}

static int blocks_for(size_t n)
{
    size_t b = (n + 255) / 256;
    return b > 8192 ? 8192 : (int)(b ? b : 1);
}

extern "C" int cuda_matmul(const cuda_mm_ctx_t *mc, const cuda_mat_t *W, const float *x, int ldx,
                           int T, float *y, int ldy, const float *bias, bool acc)
{
    if (T <= 0) return 0;
    if (T <= CUDA_GEMV_MAX_T) {
        switch (W->dt) {
        case WRK_DT_BF16:
            return gemv<w_bf16>(mc->stream, W, x, ldx, T, y, ldy, bias, acc);
        case WRK_DT_F16:
            return gemv<w_f16>(mc->stream, W, x, ldx, T, y, ldy, bias, acc);
        default:
            return gemv<w_f32>(mc->stream, W, x, ldx, T, y, ldy, bias, acc);
        }
    }
    // Row-major y[T x O] = x[T x K] W^T is, column-major, y(O x T) = W(K x O)^T x(K x T).
    const int O = W->rows, K = W->cols;
    const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
    const void *B = x;
    int ldb = ldx;
    cudaDataType_t ty = CUDA_R_32F;
    if (W->dt != WRK_DT_F32) {
        if ((size_t)T * K > mc->half_x_elems) return (int)cudaErrorInvalidValue;
        const bool bf = W->dt == WRK_DT_BF16;
        if (bf)
            to_half_kernel<true><<<blocks_for((size_t)T * K), 256, 0, mc->stream>>>(
                x, ldx, T, K, (uint16_t *)mc->half_x);
        else
            to_half_kernel<false><<<blocks_for((size_t)T * K), 256, 0, mc->stream>>>(
                x, ldx, T, K, (uint16_t *)mc->half_x);
        int rc = launch_status();
        if (rc) return rc;
        B = mc->half_x;
        ldb = K;
        ty = bf ? CUDA_R_16BF : CUDA_R_16F;
    }
    cublasStatus_t st =
        cublasGemmEx(mc->blas, CUBLAS_OP_T, CUBLAS_OP_N, O, T, K, &one, W->d, ty, K, B, ty, ldb,
                     &beta, y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return CUDA__BLAS + (int)st;
    if (bias) {
        bias_kernel<<<blocks_for((size_t)T * O), 256, 0, mc->stream>>>(y, ldy, T, O, bias);
        return launch_status();
    }
    return 0;
}
