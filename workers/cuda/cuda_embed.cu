// workers/cuda: embedding gather — one activation row per token, converted to fp32.
#include "workers/cuda/cuda_kern.cuh"

template <class W>
__global__ void embed_kernel(const typename W::T *E, const int32_t *tokens, int T, int H,
                             float scale, float *res)
{
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const typename W::T *row = E + (size_t)tokens[t] * H;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x)
            res[(size_t)t * H + i] = W::f(row[i]) * scale;
    }
}

extern "C" int cuda_embed(cudaStream_t s, const cuda_mat_t *embed, const int32_t *tokens, int T,
                          float scale, float *res)
{
    const int H = embed->cols, bs = 256;
    dim3 grid(ceil_div(H, bs), T < 65535 ? T : 65535);
    switch (embed->dt) {
    case WRK_DT_BF16:
        embed_kernel<w_bf16>
            <<<grid, bs, 0, s>>>((const uint16_t *)embed->d, tokens, T, H, scale, res);
        break;
    case WRK_DT_F16:
        embed_kernel<w_f16>
            <<<grid, bs, 0, s>>>((const uint16_t *)embed->d, tokens, T, H, scale, res);
        break;
    default:
        embed_kernel<w_f32><<<grid, bs, 0, s>>>((const float *)embed->d, tokens, T, H, scale, res);
        break;
    }
    return launch_status();
}
