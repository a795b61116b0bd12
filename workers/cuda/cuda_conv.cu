// workers/cuda: Mamba's causal depthwise conv1d + SiLU over a ragged batch, with each entry's
// conv window ([K-1][I] of its earlier inputs, oldest first) living in its state slot.
#include "workers/cuda/cuda_kern.cuh"

#define CONV_THREADS 128

// Every (token, channel) output is independent: one thread each; the window is only read.
__global__ void conv_out_kernel(int T, int I, int K, const int32_t *tok_seq,
                                const int32_t *seq_slot, const int32_t *seq_start,
                                const float *slots, size_t state_floats, size_t win_off,
                                const float *x, int ldx, const float *w, const float *b, float *xc)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= I) return;
    const int W = K - 1;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const int s = tok_seq[t], p = t - seq_start[s]; // position inside the entry
        const float *win = slots + (size_t)seq_slot[s] * state_floats + win_off;
        float acc = b ? b[c] : 0.f;
        for (int k = 0; k < K; k++) {
            const int j = p - W + k; // input index inside the entry; < 0 is the window
            const float v = j < 0 ? win[(size_t)(W + j) * I + c] : x[(size_t)(t - p + j) * ldx + c];
            acc += w[(size_t)k * I + c] * v;
        }
        xc[(size_t)t * I + c] = acc / (1.0f + expf(-acc));
    }
}

// The window becomes the last K-1 inputs of [old window ‖ x_0..x_{n-1}]. Row s reads either
// an input or the old row W+j > s, which this thread has not overwritten yet.
__global__ void conv_window_kernel(int I, int K, const int32_t *seq_slot, const int32_t *seq_start,
                                   const int32_t *seq_len, float *slots, size_t state_floats,
                                   size_t win_off, const float *x, int ldx)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x, q = blockIdx.y;
    if (c >= I) return;
    const int W = K - 1, n = seq_len[q], t0 = seq_start[q];
    float *win = slots + (size_t)seq_slot[q] * state_floats + win_off;
    for (int s = 0; s < W; s++) {
        const int j = n - W + s;
        win[(size_t)s * I + c] =
            j >= 0 ? x[(size_t)(t0 + j) * ldx + c] : win[(size_t)(W + j) * I + c];
    }
}

extern "C" int cuda_conv(cudaStream_t s, const cuda_meta_t *md, int T, int n_seqs, int I, int K,
                         const float *x, int ldx, const float *w, const float *b, float *slots,
                         size_t state_floats, size_t win_off, float *xc)
{
    dim3 g1(ceil_div(I, CONV_THREADS), T < 65535 ? T : 65535);
    conv_out_kernel<<<g1, CONV_THREADS, 0, s>>>(T, I, K, md->tok_seq, md->seq_slot, md->seq_start,
                                                slots, state_floats, win_off, x, ldx, w, b, xc);
    int rc = launch_status();
    if (rc || K < 2) return rc;
    dim3 g2(ceil_div(I, CONV_THREADS), n_seqs);
    conv_window_kernel<<<g2, CONV_THREADS, 0, s>>>(I, K, md->seq_slot, md->seq_start, md->seq_len,
                                                   slots, state_floats, win_off, x, ldx);
    return launch_status();
}
