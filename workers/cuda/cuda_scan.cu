// workers/cuda: Mamba's selective scan over a ragged batch. G lanes share one channel and
// split its N states between them (h held in registers for the whole entry), so a prefill
// chunk runs I*G threads per entry; the per-token output is a G-lane shuffle reduction.
#include "workers/cuda/cuda_kern.cuh"

#define SCAN_THREADS 128
#define SCAN_MAX_PER_LANE (CUDA_SCAN_MAX_N / 32)

template <int G>
__global__ void __launch_bounds__(SCAN_THREADS)
    scan_kernel(int I, int N, const int32_t *seq_slot, const int32_t *seq_start,
                const int32_t *seq_len, const float *dt, const float *dt_b, const float *xc,
                const float *z, int ldz, const float *bc, int ldbc, const float *A, const float *D,
                float *slots, size_t state_floats, size_t h_off, float *y)
{
    const int q = blockIdx.y, lane = threadIdx.x % G;
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) / G;
    const bool valid = c < I;
    const int cc = valid ? c : I - 1; // idle lanes still take part in the shuffles
    const int S = (N + G - 1) / G;    // states per lane
    float *h = slots + (size_t)seq_slot[q] * state_floats + h_off;
    float hr[SCAN_MAX_PER_LANE], Ar[SCAN_MAX_PER_LANE];
#pragma unroll
    for (int k = 0; k < SCAN_MAX_PER_LANE; k++) {
        const int n = lane + k * G;
        const bool on = k < S && n < N;
        hr[k] = on ? h[(size_t)n * I + cc] : 0.f;
        Ar[k] = on ? A[(size_t)n * I + cc] : 0.f;
    }
    const float db = dt_b[cc], dd = D[cc];
    const int t0 = seq_start[q], t1 = t0 + seq_len[q];
    for (int t = t0; t < t1; t++) {
        // torch's softplus: v > 20 ? v : log1p(exp(v)).
        const float v = dt[(size_t)t * I + cc] + db;
        const float delta = v > 20.f ? v : log1pf(expf(v));
        const float u = xc[(size_t)t * I + cc], du = delta * u;
        const float *B = bc + (size_t)t * ldbc, *C = B + N;
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < SCAN_MAX_PER_LANE; k++) {
            const int n = lane + k * G;
            if (k < S && n < N) {
                const float hv = expf(Ar[k] * delta) * hr[k] + du * B[n];
                hr[k] = hv;
                acc += hv * C[n];
            }
        }
#pragma unroll
        for (int off = G / 2; off > 0; off >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (valid && lane == 0) {
            const float zv = z[(size_t)t * ldz + cc];
            y[(size_t)t * I + cc] = (acc + dd * u) * (zv / (1.0f + expf(-zv)));
        }
    }
    if (!valid) return;
#pragma unroll
    for (int k = 0; k < SCAN_MAX_PER_LANE; k++) {
        const int n = lane + k * G;
        if (k < S && n < N) h[(size_t)n * I + cc] = hr[k];
    }
}

template <int G>
static int launch(cudaStream_t s, const cuda_meta_t *md, int n_seqs, int I, int N, const float *dt,
                  const float *dt_b, const float *xc, const float *z, int ldz, const float *bc,
                  int ldbc, const float *A, const float *D, float *slots, size_t state_floats,
                  size_t h_off, float *y)
{
    dim3 grid(ceil_div((long)I * G, SCAN_THREADS), n_seqs);
    scan_kernel<G><<<grid, SCAN_THREADS, 0, s>>>(I, N, md->seq_slot, md->seq_start, md->seq_len, dt,
                                                 dt_b, xc, z, ldz, bc, ldbc, A, D, slots,
                                                 state_floats, h_off, y);
    return launch_status();
}

extern "C" int cuda_scan(cudaStream_t s, const cuda_meta_t *md, int n_seqs, int I, int N,
                         const float *dt, const float *dt_b, const float *xc, const float *z,
                         int ldz, const float *bc, int ldbc, const float *A, const float *D,
                         float *slots, size_t state_floats, size_t h_off, float *y)
{
    if (N < 1 || N > CUDA_SCAN_MAX_N) return (int)cudaErrorInvalidValue;
#define SCAN_ARGS                                                                                  \
    s, md, n_seqs, I, N, dt, dt_b, xc, z, ldz, bc, ldbc, A, D, slots, state_floats, h_off, y
    // Lanes per channel: the smallest power of two >= N, at most a warp.
    if (N <= 1) return launch<1>(SCAN_ARGS);
    if (N <= 2) return launch<2>(SCAN_ARGS);
    if (N <= 4) return launch<4>(SCAN_ARGS);
    if (N <= 8) return launch<8>(SCAN_ARGS);
    if (N <= 16) return launch<16>(SCAN_ARGS);
    return launch<32>(SCAN_ARGS);
#undef SCAN_ARGS
}
