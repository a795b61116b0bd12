/* workers/cuda: the CUDA backend's private layout, the per-family forward interface and the
 * kernel launchers (one .cu per kernel family), callable from the host C files. Every
 * launcher enqueues on the given stream and returns 0 or a cuda__err code; none allocates,
 * so a step can be captured into a CUDA Graph. */
#ifndef RCD_WRK_CUDA_INT_H
#define RCD_WRK_CUDA_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "workers/backend_int.h"
#include "workers/cuda/wrk_cuda.h"
#include "workers/model/model_int.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Launcher status: 0, a cudaError_t, or CUDA__BLAS + a cublasStatus_t. */
#define CUDA__BLAS 100000
const char *cuda__errstr(int code);

/* A weight matrix on the device: row-major [rows x cols] in the stored dtype. */
typedef struct cuda_mat {
    wrk_dtype_t dt;
    const void *d;
    int rows, cols;
} cuda_mat_t;

/* What a matmul needs besides its operands. */
typedef struct cuda_mm_ctx {
    cublasHandle_t blas;
    cudaStream_t stream;
    void *half_x; /* activations converted for cuBLAS half GEMMs */
    size_t half_x_elems;
} cuda_mm_ctx_t;

/* Token counts up to this go through the GEMV kernel (weights streamed once, fp32 activations,
 * fp32 accumulation); more through cuBLAS (half activations for half weights). */
#define CUDA_GEMV_MAX_T 8

/* Device views of the step metadata (one int32 block copied per step). */
typedef struct cuda_meta {
    int32_t *tokens;    /* [T] token ids */
    int32_t *tok_seq;   /* [T] batch entry of each token */
    int32_t *row_tok;   /* [n_rows] token index of each logit row */
    int32_t *seq_slot;  /* [n_seqs] */
    int32_t *seq_start; /* [n_seqs] first token index */
    int32_t *seq_len;   /* [n_seqs] */
} cuda_meta_t;

struct cuda_family;

typedef struct wrk_cuda {
    wrk_backend_t base;
    const wrk_model_t *m;
    const struct cuda_family *fam;
    void *fam_ctx;
    wrk_cuda_opts_t copts;
    cudaStream_t cs;                /* compute: steps */
    cudaStream_t xs;                /* transfers: state read/write/copy/reset */
    cudaEvent_t step_done;          /* recorded after each step on cs */
    cudaEvent_t xfer_done;          /* recorded after each state transfer on xs */
    cudaEvent_t fwd_begin, fwd_end; /* timing of the forward pass, for wrk_cuda_stats */
    cuda_mm_ctx_t mm;
    void *blas_ws;
    size_t blas_ws_bytes;
    float *slots; /* n_slots x state_floats */
    size_t state_floats;
    float *state_h; /* pinned staging of one state blob */
    int32_t *meta_h, *meta_d;
    size_t meta_ints;
    cuda_meta_t md;               /* device views */
    cuda_meta_t mh;               /* the same offsets in the pinned host block */
    float *res;                   /* residual stream [max_step_tokens x H] */
    float *logit_in;              /* normed rows that want logits [max_step_tokens x H] */
    float *logits_d;              /* [max_step_tokens x V] */
    float *logits_h;              /* pinned [max_step_tokens x V] */
    int last_rows;                /* logit rows of the last step, on the device in logits_d */
    int32_t *argmax_d, *argmax_h; /* [max_step_tokens] */
    void *topk_d, *topk_h;        /* ids then values, [max_step_tokens x CUDA_TOPK_MAX] each */
    cuda_mat_t embed, lm_head;
    float *norm_f;
    cudaGraphExec_t *graphs; /* by batch size, decode steps only */
    signed char *graph_bad;  /* capture failed for this size: run eagerly */
    int max_graph;
    void **allocs; /* every device allocation, freed at destroy */
    int n_allocs, cap_allocs;
    wrk_cuda_stats_t stats;
    char broken[256]; /* set after a device error: the context is not used again */
} wrk_cuda_t;

/* A model family's CUDA forward: upload its weights, then enqueue its layers over c->res. */
typedef struct cuda_family {
    wrk_family_t family;
    int (*init)(wrk_cuda_t *c, void **ctx, char *err, size_t errlen);
    /* Enqueues every layer for T tokens of n_seqs entries (metadata already in c->md) on
     * c->cs; no allocation and no host sync, so it can be captured. Returns a launcher code. */
    int (*forward)(wrk_cuda_t *c, void *ctx, int T, int n_seqs);
} cuda_family_t;

extern const cuda_family_t cuda_family_mamba;

/* Device memory owned by the backend (freed at destroy); NULL when out of memory. */
void *cuda__alloc(wrk_cuda_t *c, size_t bytes);
/* Uploads n floats (NULL stays NULL); a weight matrix in its stored dtype. */
int cuda__upload_f32(wrk_cuda_t *c, const float *src, size_t n, float **out);
int cuda__upload_mat(wrk_cuda_t *c, const wrk_mat_t *w, cuda_mat_t *out);

/* ---- launchers ---- */

/* cuda_matmul.cu: y[t*ldy + o] = (acc ? y : 0) + x[t] . W[o] (+ bias[o]), t < T. */
int cuda_matmul(const cuda_mm_ctx_t *mc, const cuda_mat_t *W, const float *x, int ldx, int T,
                float *y, int ldy, const float *bias, bool acc);

/* cuda_embed.cu: res[t] = float(embed[tokens[t]]) * scale. */
int cuda_embed(cudaStream_t s, const cuda_mat_t *embed, const int32_t *tokens, int T, float scale,
               float *res);

/* cuda_norm.cu: y[r] = w * (x[rows ? rows[r] : r] * rsqrt(mean(x^2) + eps)), n_rows rows of H. */
int cuda_rmsnorm(cudaStream_t s, const float *x, const int32_t *rows, int n_rows, int H,
                 const float *w, float eps, float *y);
/* y += x elementwise (n floats). */
int cuda_add(cudaStream_t s, float *y, const float *x, size_t n);

/* cuda_conv.cu: the causal depthwise conv + SiLU of every token (xc[t][c]), reading earlier
 * inputs from each entry's window at slots + slot*state_floats + win_off ([K-1][I], oldest
 * first); then the windows advance to the last K-1 inputs. x rows: stride ldx. */
int cuda_conv(cudaStream_t s, const cuda_meta_t *md, int T, int n_seqs, int I, int K,
              const float *x, int ldx, const float *w, const float *b, float *slots,
              size_t state_floats, size_t win_off, float *xc);

/* cuda_scan.cu: the selective scan of every entry over its tokens (kernels.h's `scan`
 * contract) with h [N][I] at slots + slot*state_floats + h_off. B at bc[t*ldbc + n], C at
 * bc[t*ldbc + N + n]; z rows stride ldz. */
int cuda_scan(cudaStream_t s, const cuda_meta_t *md, int n_seqs, int I, int N, const float *dt,
              const float *dt_b, const float *xc, const float *z, int ldz, const float *bc,
              int ldbc, const float *A, const float *D, float *slots, size_t state_floats,
              size_t h_off, float *y);
/* Largest d_state the scan kernel holds in registers. */
#define CUDA_SCAN_MAX_N 256

/* cuda_sample.cu: logits *= scale, then cap*tanh(logits/cap) when cap > 0 (n floats). */
int cuda_logit_post(cudaStream_t s, float *logits, size_t n, float scale, float cap);
/* out[r] = argmax of row r (lowest id on ties), n_rows rows of V. */
int cuda_argmax(cudaStream_t s, const float *logits, int n_rows, int V, int32_t *out);
/* In place: row r = softmax(row r / temperature). */
int cuda_softmax(cudaStream_t s, float *logits, int n_rows, int V, float temperature);
/* The k best of each row (value descending, id ascending on ties): ids/vals [n_rows x k];
 * id -1 where a row has fewer than k non-NaN values. */
int cuda_topk(cudaStream_t s, const float *logits, int n_rows, int V, int k, int32_t *ids,
              float *vals);
#define CUDA_TOPK_MAX 256

#ifdef __cplusplus
}
#endif
#endif
