/* workers/cuda: the CUDA backend's own options and helpers beyond wrk_backend_i. Built only
 * with WITH_CUDA; callers that only pick a backend use wrk.h's wrk_backend_create_by_name. */
#ifndef RCD_WRK_CUDA_H
#define RCD_WRK_CUDA_H

#include "workers/wrk.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wrk_cuda_opts {
    int device; /* CUDA device index */
    int graphs; /* 1: capture the decode step as a CUDA Graph per batch size; 0: never */
} wrk_cuda_opts_t;

/* Defaults: device 0 and graphs on, overridden by $RCD_CUDA_DEVICE and $RCD_CUDA_GRAPHS=0. */
wrk_cuda_opts_t wrk_cuda_default_opts(void);

int wrk_cuda_backend_create_ex(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                               const wrk_cuda_opts_t *copts, wrk_backend_t **out, char *err,
                               size_t errlen);

/* Number of CUDA devices; 0 with the reason in `why` when none can be used. */
int wrk_cuda_device_count(char *why, size_t whylen);

/* Greedy sampling on the device: the argmax of each logit row of the last step (rows in
 * batch order, as the step wrote them), ties to the lowest id. n_rows must equal that step's
 * logit rows. */
int wrk_cuda_last_argmax(wrk_backend_t *b, int32_t *out, int n_rows);

/* Sampling probabilities on the device: softmax(row / temperature) of each logit row of the
 * last step into out [n_rows x vocab] (temperature > 0). The device rows are replaced by the
 * probabilities (the argmax above is unchanged by that). */
int wrk_cuda_last_softmax(wrk_backend_t *b, float temperature, float *out, int n_rows);

/* Top-k sampling candidates on the device: the k (1..256) largest logits of each row of the
 * last step, value descending, lower id first on ties, into ids and vals [n_rows x k]; id -1
 * where a row has fewer than k non-NaN values. */
int wrk_cuda_last_topk(wrk_backend_t *b, int k, int32_t *ids, float *vals, int n_rows);

/* Per backend counters for tests and benchmarks. */
typedef struct wrk_cuda_stats {
    long steps, graph_launches, graph_captures, graph_capture_failures;
    size_t device_bytes; /* weights, slots, activations, workspaces */
    size_t weight_bytes; /* uploaded weights */
    /* GPU time of the steps' forward passes (embedding to logits on the device; not the
     * metadata upload, the logits copy to the host or the host's waits). */
    double forward_ms;
} wrk_cuda_stats_t;
void wrk_cuda_stats(const wrk_backend_t *b, wrk_cuda_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
