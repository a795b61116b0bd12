/* workers/cuda: the CUDA backend — device, streams and cuBLAS, state slots in device memory
 * moved to and from the host on their own stream, the step (metadata upload, the family's
 * layers, final norm + lm_head, logits back to the caller) and CUDA Graphs for decode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cuda/cuda_int.h"

#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20)

/* The families this backend runs, its own table (cpu/cpu_backend.c keeps the CPU's): a family
 * with a CUDA forward adds it here. */
static const cuda_family_t *const families[] = {&cuda_family_mamba};

const char *cuda__errstr(int code)
{
    if (code >= CUDA__BLAS) return cublasGetStatusString((cublasStatus_t)(code - CUDA__BLAS));
    return cudaGetErrorString((cudaError_t)code);
}

void *cuda__alloc(wrk_cuda_t *c, size_t bytes)
{
    void *p = NULL;
    if (c->n_allocs == c->cap_allocs) {
        int cap = c->cap_allocs ? 2 * c->cap_allocs : 64;
        void **a = realloc(c->allocs, (size_t)cap * sizeof *a);
        if (!a) return NULL;
        c->allocs = a;
        c->cap_allocs = cap;
    }
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky; clear it */
        return NULL;
    }
    c->allocs[c->n_allocs++] = p;
    c->stats.device_bytes += bytes;
    return p;
}

int cuda__upload_f32(wrk_cuda_t *c, const float *src, size_t n, float **out)
{
    *out = NULL;
    if (!src) return 0;
    float *d = cuda__alloc(c, n * sizeof(float));
    if (!d) return RCD_ENOMEM;
    if (cudaMemcpy(d, src, n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
        return RCD_EINTERNAL;
    c->stats.weight_bytes += n * sizeof(float);
    *out = d;
    return 0;
}

int cuda__upload_mat(wrk_cuda_t *c, const wrk_mat_t *w, cuda_mat_t *out)
{
    const size_t bytes = (size_t)w->rows * w->cols * wrk_dtype_size(w->dt);
    void *d = cuda__alloc(c, bytes);
    *out = (cuda_mat_t){.dt = w->dt, .d = d, .rows = w->rows, .cols = w->cols};
    if (!d) return RCD_ENOMEM;
    /* The mmapped source may be unaligned; cudaMemcpy takes any host address. */
    if (cudaMemcpy(d, w->data, bytes, cudaMemcpyHostToDevice) != cudaSuccess) return RCD_EINTERNAL;
    c->stats.weight_bytes += bytes;
    return 0;
}

/* Records the first device error; the context is not trusted afterwards (a kernel fault
 * leaves it unusable until the process restarts). */
static int device_fail(wrk_cuda_t *c, int code, const char *what, char *err, size_t errlen)
{
    if (!c->broken[0]) snprintf(c->broken, sizeof c->broken, "%s: %s", what, cuda__errstr(code));
    return rcd_fail(RCD_EINTERNAL, err, errlen, "cuda: %s", c->broken);
}

static void cuda_destroy(wrk_backend_t *b)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    cudaSetDevice(c->copts.device);
    if (c->cs) cudaStreamSynchronize(c->cs);
    if (c->xs) cudaStreamSynchronize(c->xs);
    if (c->graphs)
        for (int i = 0; i <= c->max_graph; i++)
            if (c->graphs[i]) cudaGraphExecDestroy(c->graphs[i]);
    free(c->graphs);
    free(c->graph_bad);
    free(c->fam_ctx);
    if (c->mm.blas) cublasDestroy(c->mm.blas);
    for (int i = 0; i < c->n_allocs; i++)
        cudaFree(c->allocs[i]);
    free(c->allocs);
    if (c->state_h) cudaFreeHost(c->state_h);
    if (c->meta_h) cudaFreeHost(c->meta_h);
    if (c->logits_h) cudaFreeHost(c->logits_h);
    if (c->argmax_h) cudaFreeHost(c->argmax_h);
    if (c->topk_h) cudaFreeHost(c->topk_h);
    if (c->step_done) cudaEventDestroy(c->step_done);
    if (c->xfer_done) cudaEventDestroy(c->xfer_done);
    if (c->fwd_begin) cudaEventDestroy(c->fwd_begin);
    if (c->fwd_end) cudaEventDestroy(c->fwd_end);
    if (c->cs) cudaStreamDestroy(c->cs);
    if (c->xs) cudaStreamDestroy(c->xs);
    free(c);
}

/* ---- state slots: the transfer stream waits for the last step and the next step waits for
 * the transfer, so the compute stream is never synchronized for a state move. ---- */

static float *slot_ptr(wrk_cuda_t *c, int slot)
{
    return c->slots + (size_t)slot * c->state_floats;
}

/* The current device is per host thread: a backend created on one thread may be driven from
 * another (the daemon's worker), so every entry point selects its device first. */
static int bind(wrk_cuda_t *c)
{
    if (c->broken[0]) return RCD_EINTERNAL;
    return cudaSetDevice(c->copts.device) == cudaSuccess ? 0 : RCD_EINTERNAL;
}

static int xfer_begin(wrk_cuda_t *c)
{
    if (bind(c)) return RCD_EINTERNAL;
    return cudaStreamWaitEvent(c->xs, c->step_done, 0) == cudaSuccess ? 0 : RCD_EINTERNAL;
}

/* Orders the next step after this transfer; `wait` also waits for it on the host (the pinned
 * staging buffer is reused by the next transfer). */
static int xfer_end(wrk_cuda_t *c, bool wait)
{
    cudaError_t e = cudaEventRecord(c->xfer_done, c->xs);
    if (e == cudaSuccess && wait) e = cudaStreamSynchronize(c->xs);
    if (e != cudaSuccess) {
        device_fail(c, (int)e, "state transfer", NULL, 0);
        return RCD_EINTERNAL;
    }
    return 0;
}

static int cuda_state_reset(wrk_backend_t *b, int slot)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    if (slot < 0 || slot >= b->n_slots) return RCD_ERANGE;
    if (xfer_begin(c)) return RCD_EINTERNAL;
    if (cudaMemsetAsync(slot_ptr(c, slot), 0, c->state_floats * sizeof(float), c->xs) !=
        cudaSuccess)
        return RCD_EINTERNAL;
    return xfer_end(c, false);
}

/* Fixed-size states (no state_size): the wrappers checked cap and len. */
static int cuda_state_read_n(wrk_backend_t *b, int slot, void *dst, size_t cap, size_t *len)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    const size_t bytes = c->state_floats * sizeof(float);
    if (slot < 0 || slot >= b->n_slots) return RCD_ERANGE;
    if (xfer_begin(c)) return RCD_EINTERNAL;
    if (cudaMemcpyAsync(c->state_h, slot_ptr(c, slot), bytes, cudaMemcpyDeviceToHost, c->xs) !=
        cudaSuccess)
        return RCD_EINTERNAL;
    int rc = xfer_end(c, true);
    if (!rc) memcpy(dst, c->state_h, bytes);
    return rc;
}

static int cuda_state_write_n(wrk_backend_t *b, int slot, const void *src, size_t len)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    const size_t bytes = c->state_floats * sizeof(float);
    if (slot < 0 || slot >= b->n_slots) return RCD_ERANGE;
    if (xfer_begin(c)) return RCD_EINTERNAL;
    memcpy(c->state_h, src, bytes); /* the previous transfer finished: xfer_end waited */
    if (cudaMemcpyAsync(slot_ptr(c, slot), c->state_h, bytes, cudaMemcpyHostToDevice, c->xs) !=
        cudaSuccess)
        return RCD_EINTERNAL;
    return xfer_end(c, true);
}

static int cuda_state_copy(wrk_backend_t *b, int dst, int src)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    if (dst < 0 || dst >= b->n_slots || src < 0 || src >= b->n_slots) return RCD_ERANGE;
    if (dst == src) return 0;
    if (xfer_begin(c)) return RCD_EINTERNAL;
    if (cudaMemcpyAsync(slot_ptr(c, dst), slot_ptr(c, src), c->state_floats * sizeof(float),
                        cudaMemcpyDeviceToDevice, c->xs) != cudaSuccess)
        return RCD_EINTERNAL;
    return xfer_end(c, false);
}

/* ---- the step ---- */

/* Embedding, the family's layers, final norm and lm_head for the rows that want logits: only
 * launches, so a decode step can be captured as it is. */
static int enqueue_forward(wrk_cuda_t *c, int T, int n_seqs, int n_rows)
{
    const wrk_model_t *m = c->m;
    const int H = m->info.hidden_size, V = m->info.vocab_size;
    int rc = cuda_embed(c->cs, &c->embed, c->md.tokens, T, m->embed_scale, c->res);
    if (!rc) rc = c->fam->forward(c, c->fam_ctx, T, n_seqs);
    if (!rc && n_rows) {
        rc = cuda_rmsnorm(c->cs, c->res, c->md.row_tok, n_rows, H, c->norm_f, m->norm_eps,
                          c->logit_in);
        if (!rc)
            rc = cuda_matmul(&c->mm, &c->lm_head, c->logit_in, H, n_rows, c->logits_d, V, NULL,
                             false);
        if (!rc)
            rc = cuda_logit_post(c->cs, c->logits_d, (size_t)n_rows * V, m->logit_scale,
                                 m->logit_softcap);
    }
    return rc;
}

/* A decode step of B entries (one token, one logit row each) as a graph, captured the first
 * time B is seen. Returns 1 when the caller must run the step eagerly instead. */
static int run_graph(wrk_cuda_t *c, int B)
{
    if (!c->copts.graphs || B > c->max_graph || c->graph_bad[B]) return 1;
    if (!c->graphs[B]) {
        cudaGraph_t g = NULL;
        cudaGraphExec_t exec = NULL;
        if (cudaStreamBeginCapture(c->cs, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
            (void)cudaGetLastError();
            c->graph_bad[B] = 1;
            c->stats.graph_capture_failures++;
            return 1;
        }
        int rc = enqueue_forward(c, B, B, B);
        cudaError_t e = cudaStreamEndCapture(c->cs, &g);
        if (!rc && e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
        if (g) cudaGraphDestroy(g);
        if (rc || e != cudaSuccess) {
            /* Capture errors invalidate the capture, not the context: run eagerly. */
            (void)cudaGetLastError();
            c->graph_bad[B] = 1;
            c->stats.graph_capture_failures++;
            return 1;
        }
        c->graphs[B] = exec;
        c->stats.graph_captures++;
    }
    if (cudaGraphLaunch(c->graphs[B], c->cs) != cudaSuccess) return -1;
    c->stats.graph_launches++;
    return 0;
}

static int cuda_step(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    int rc = wrk__check_batch(b, seqs, n_seqs, err, errlen);
    if (rc) return rc;
    if (bind(c))
        return rcd_fail(RCD_EINTERNAL, err, errlen, "cuda: %s",
                        c->broken[0] ? c->broken : "cannot select the device");
    const int V = c->m->info.vocab_size;
    int T = 0, n_rows = 0;
    bool decode = true;
    /* The pinned metadata is free: the previous step was waited for. */
    for (int s = 0; s < n_seqs; s++) {
        const wrk_seq_t *q = &seqs[s];
        c->mh.seq_slot[s] = q->slot;
        c->mh.seq_start[s] = T;
        c->mh.seq_len[s] = q->n_tokens;
        for (int j = 0; j < q->n_tokens; j++) {
            c->mh.tokens[T + j] = q->tokens[j];
            c->mh.tok_seq[T + j] = s;
        }
        for (int j = 0; j < q->n_logits; j++)
            c->mh.row_tok[n_rows++] = T + q->n_tokens - q->n_logits + j;
        T += q->n_tokens;
        decode = decode && q->n_tokens == 1 && q->n_logits == 1;
    }
    cudaError_t e = cudaMemcpyAsync(c->meta_d, c->meta_h, c->meta_ints * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, c->cs);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(c->cs, c->xfer_done, 0);
    if (e == cudaSuccess) e = cudaEventRecord(c->fwd_begin, c->cs);
    if (e != cudaSuccess) return device_fail(c, (int)e, "step upload", err, errlen);
    int g = decode ? run_graph(c, n_seqs) : 1;
    if (g < 0) return device_fail(c, (int)cudaGetLastError(), "graph launch", err, errlen);
    if (g > 0 && (rc = enqueue_forward(c, T, n_seqs, n_rows)))
        return device_fail(c, rc, "forward", err, errlen);
    e = cudaEventRecord(c->fwd_end, c->cs);
    if (e == cudaSuccess && n_rows)
        e = cudaMemcpyAsync(c->logits_h, c->logits_d, (size_t)n_rows * V * sizeof(float),
                            cudaMemcpyDeviceToHost, c->cs);
    if (e == cudaSuccess) e = cudaEventRecord(c->step_done, c->cs);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->cs);
    if (e != cudaSuccess) return device_fail(c, (int)e, "step", err, errlen);
    float ms = 0.f;
    if (cudaEventElapsedTime(&ms, c->fwd_begin, c->fwd_end) == cudaSuccess)
        c->stats.forward_ms += ms;
    c->last_rows = n_rows;
    c->stats.steps++;
    int r = 0;
    for (int s = 0; s < n_seqs; s++) {
        if (seqs[s].n_logits)
            memcpy(seqs[s].logits, c->logits_h + (size_t)r * V,
                   (size_t)seqs[s].n_logits * V * sizeof(float));
        r += seqs[s].n_logits;
    }
    return 0;
}

static const wrk_backend_i cuda_vt = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .state_reset = cuda_state_reset,
    .state_copy = cuda_state_copy,
    .step = cuda_step,
    .state_read_n = cuda_state_read_n,
    .state_write_n = cuda_state_write_n,
};

/* ---- public helpers ---- */

int wrk_cuda_device_count(char *why, size_t whylen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        rcd_fail(0, why, whylen, "no usable CUDA device (%s)", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) rcd_fail(0, why, whylen, "no CUDA device present");
    return n;
}

wrk_cuda_opts_t wrk_cuda_default_opts(void)
{
    wrk_cuda_opts_t o = {.device = 0, .graphs = 1};
    const char *d = getenv("RCD_CUDA_DEVICE"), *g = getenv("RCD_CUDA_GRAPHS");
    if (d && *d) o.device = atoi(d);
    if (g && !strcmp(g, "0")) o.graphs = 0;
    return o;
}

int wrk_cuda_last_argmax(wrk_backend_t *b, int32_t *out, int n_rows)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    if (b->vt != &cuda_vt) return RCD_EINVAL;
    if (n_rows != c->last_rows || n_rows <= 0) return RCD_EINVAL;
    if (bind(c)) return RCD_EINTERNAL;
    int rc = cuda_argmax(c->cs, c->logits_d, n_rows, c->m->info.vocab_size, c->argmax_d);
    cudaError_t e = rc ? (cudaError_t)rc
                       : cudaMemcpyAsync(c->argmax_h, c->argmax_d, (size_t)n_rows * sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, c->cs);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->cs);
    if (e != cudaSuccess) return device_fail(c, (int)e, "argmax", NULL, 0);
    memcpy(out, c->argmax_h, (size_t)n_rows * sizeof(int32_t));
    return 0;
}

int wrk_cuda_last_softmax(wrk_backend_t *b, float temperature, float *out, int n_rows)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    if (b->vt != &cuda_vt || n_rows != c->last_rows || n_rows <= 0 || !(temperature > 0.f))
        return RCD_EINVAL;
    if (bind(c)) return RCD_EINTERNAL;
    const size_t n = (size_t)n_rows * c->m->info.vocab_size;
    int rc = cuda_softmax(c->cs, c->logits_d, n_rows, c->m->info.vocab_size, temperature);
    cudaError_t e = rc ? (cudaError_t)rc
                       : cudaMemcpyAsync(c->logits_h, c->logits_d, n * sizeof(float),
                                         cudaMemcpyDeviceToHost, c->cs);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->cs);
    if (e != cudaSuccess) return device_fail(c, (int)e, "softmax", NULL, 0);
    memcpy(out, c->logits_h, n * sizeof(float));
    return 0;
}

int wrk_cuda_last_topk(wrk_backend_t *b, int k, int32_t *ids, float *vals, int n_rows)
{
    wrk_cuda_t *c = (wrk_cuda_t *)b;
    if (b->vt != &cuda_vt || n_rows != c->last_rows || n_rows <= 0 || k < 1 || k > CUDA_TOPK_MAX ||
        k > c->m->info.vocab_size)
        return RCD_EINVAL;
    if (bind(c)) return RCD_EINTERNAL;
    const size_t n = (size_t)n_rows * k, cap = (size_t)c->base.max_step_tokens * CUDA_TOPK_MAX;
    int32_t *ids_d = c->topk_d;
    float *vals_d = (float *)(ids_d + cap);
    int rc = cuda_topk(c->cs, c->logits_d, n_rows, c->m->info.vocab_size, k, ids_d, vals_d);
    cudaError_t e =
        rc ? (cudaError_t)rc
           : cudaMemcpyAsync(c->topk_h, ids_d, n * sizeof(int32_t), cudaMemcpyDeviceToHost, c->cs);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync((int32_t *)c->topk_h + n, vals_d, n * sizeof(float),
                            cudaMemcpyDeviceToHost, c->cs);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->cs);
    if (e != cudaSuccess) return device_fail(c, (int)e, "top-k", NULL, 0);
    memcpy(ids, c->topk_h, n * sizeof(int32_t));
    memcpy(vals, (int32_t *)c->topk_h + n, n * sizeof(float));
    return 0;
}

void wrk_cuda_stats(const wrk_backend_t *b, wrk_cuda_stats_t *out)
{
    *out = ((const wrk_cuda_t *)b)->stats;
}

/* ---- creation ---- */

int wrk_cuda_backend_create(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                            wrk_backend_t **out, char *err, size_t errlen)
{
    wrk_cuda_opts_t co = wrk_cuda_default_opts();
    return wrk_cuda_backend_create_ex(m, opts, &co, out, err, errlen);
}

int wrk_cuda_backend_create_ex(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                               const wrk_cuda_opts_t *copts, wrk_backend_t **out, char *err,
                               size_t errlen)
{
    wrk_backend_opts_t o;
    wrk_cuda_opts_t co = copts ? *copts : wrk_cuda_default_opts();
    const wrk_model_info_t *mi = &m->info;
    const cuda_family_t *fam = NULL;
    char why[160];
    int rc = 0;
    *out = NULL;
    if ((rc = wrk_backend_opts_resolve(opts, &o, err, errlen))) return rc;
    if (o.weights && *o.weights && strcmp(o.weights, "native") != 0)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "weights \"%s\" is a CPU setting; the cuda backend runs native weights",
                        o.weights);
    if (o.matmul && *o.matmul && strcmp(o.matmul, "fp32") != 0)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "matmul \"%s\" is a CPU setting; the cuda backend takes fp32", o.matmul);
    if (o.tp > 1)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "cuda: tensor parallelism (tp %d) is not built for the CUDA backend yet",
                        o.tp);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (families[i]->family == mi->family) fam = families[i];
    if (!fam)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "cuda: %s has no CUDA forward yet (use --backend cpu)", mi->architecture);
    int n_dev = wrk_cuda_device_count(why, sizeof why);
    if (n_dev == 0) return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "cuda: %s", why);
    if (co.device < 0 || co.device >= n_dev)
        return rcd_fail(RCD_EINVAL, err, errlen, "cuda: device %d out of [0, %d)", co.device,
                        n_dev);
    if (cudaSetDevice(co.device) != cudaSuccess) {
        (void)cudaGetLastError();
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "cuda: cannot use device %d", co.device);
    }
    wrk_cuda_t *c = calloc(1, sizeof *c);
    if (!c) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    c->base = (wrk_backend_t){.vt = &cuda_vt,
                              .model = m,
                              .n_slots = o.n_slots,
                              .max_step_tokens = o.max_step_tokens,
                              .isa = "cuda"};
    c->m = m;
    c->fam = fam;
    c->copts = co;
    c->state_floats = mi->state_bytes / sizeof(float);
    const size_t T = (size_t)o.max_step_tokens, S = (size_t)o.n_slots;
    const size_t H = (size_t)mi->hidden_size, V = (size_t)mi->vocab_size;
    if (cudaStreamCreateWithFlags(&c->cs, cudaStreamNonBlocking) != cudaSuccess ||
        cudaStreamCreateWithFlags(&c->xs, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&c->step_done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&c->xfer_done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreate(&c->fwd_begin) != cudaSuccess ||
        cudaEventCreate(&c->fwd_end) != cudaSuccess) {
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "cuda: cannot create streams and events");
        goto fail;
    }
    if (cublasCreate(&c->mm.blas) != CUBLAS_STATUS_SUCCESS) {
        c->mm.blas = NULL;
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "cuda: cannot create a cuBLAS handle");
        goto fail;
    }
    c->mm.stream = c->cs;
    c->blas_ws_bytes = BLAS_WORKSPACE_BYTES;
    c->blas_ws = cuda__alloc(c, c->blas_ws_bytes);
    c->mm.half_x_elems = T * (size_t)(m->max_matmul_cols > (int)H ? m->max_matmul_cols : (int)H);
    c->mm.half_x = cuda__alloc(c, c->mm.half_x_elems * 2);
    /* A fixed workspace keeps cuBLAS from allocating during graph capture; default math mode
     * keeps fp32 GEMMs in fp32 (no TF32). */
    if (!c->blas_ws || !c->mm.half_x || cublasSetStream(c->mm.blas, c->cs) ||
        cublasSetWorkspace(c->mm.blas, c->blas_ws, c->blas_ws_bytes) ||
        cublasSetMathMode(c->mm.blas, CUBLAS_DEFAULT_MATH)) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "cuda: cannot set up cuBLAS");
        goto fail;
    }
    /* Step metadata: tokens, tok_seq, row_tok [T each], seq_slot, seq_start, seq_len [S each]. */
    c->meta_ints = 3 * T + 3 * S;
    c->meta_d = cuda__alloc(c, c->meta_ints * sizeof(int32_t));
    c->slots = cuda__alloc(c, S * c->state_floats * sizeof(float));
    c->res = cuda__alloc(c, T * H * sizeof(float));
    c->logit_in = cuda__alloc(c, T * H * sizeof(float));
    c->logits_d = cuda__alloc(c, T * V * sizeof(float));
    c->argmax_d = cuda__alloc(c, T * sizeof(int32_t));
    c->topk_d = cuda__alloc(c, T * CUDA_TOPK_MAX * 8); /* int32 ids, then fp32 values */
    if (!c->meta_d || !c->slots || !c->res || !c->logit_in || !c->logits_d || !c->argmax_d ||
        !c->topk_d || cudaHostAlloc(&c->topk_h, T * CUDA_TOPK_MAX * 8, 0) != cudaSuccess ||
        cudaHostAlloc((void **)&c->meta_h, c->meta_ints * sizeof(int32_t), 0) != cudaSuccess ||
        cudaHostAlloc((void **)&c->logits_h, T * V * sizeof(float), 0) != cudaSuccess ||
        cudaHostAlloc((void **)&c->argmax_h, T * sizeof(int32_t), 0) != cudaSuccess ||
        cudaHostAlloc((void **)&c->state_h, c->state_floats * sizeof(float), 0) != cudaSuccess) {
        (void)cudaGetLastError();
        rc = rcd_fail(RCD_ENOMEM, err, errlen,
                      "cuda: cannot allocate %d state slots of %zu bytes and buffers for %d "
                      "tokens",
                      o.n_slots, mi->state_bytes, o.max_step_tokens);
        goto fail;
    }
    int32_t *views[2] = {c->meta_d, c->meta_h};
    cuda_meta_t *mv[2] = {&c->md, &c->mh};
    for (int i = 0; i < 2; i++)
        *mv[i] = (cuda_meta_t){.tokens = views[i],
                               .tok_seq = views[i] + T,
                               .row_tok = views[i] + 2 * T,
                               .seq_slot = views[i] + 3 * T,
                               .seq_start = views[i] + 3 * T + S,
                               .seq_len = views[i] + 3 * T + 2 * S};
    memset(c->meta_h, 0, c->meta_ints * sizeof(int32_t));
    if (cudaMemset(c->slots, 0, S * c->state_floats * sizeof(float)) != cudaSuccess) {
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "cuda: cannot clear the state slots");
        goto fail;
    }
    /* Weights: the shared embedding / head / final norm, then the family's layers. */
    if ((rc = cuda__upload_mat(c, &m->embed, &c->embed)) ||
        (rc = cuda__upload_f32(c, m->norm_f, H, &c->norm_f))) {
        rc = rcd_fail(rc, err, errlen, "cuda: cannot upload the embedding (%s)", rcd_strerror(rc));
        goto fail;
    }
    if (m->lm_head.data == m->embed.data)
        c->lm_head = c->embed; /* tied: one copy on the device */
    else if ((rc = cuda__upload_mat(c, &m->lm_head, &c->lm_head))) {
        rc = rcd_fail(rc, err, errlen, "cuda: cannot upload lm_head (%s)", rcd_strerror(rc));
        goto fail;
    }
    /* a pre-quantized checkpoint's fp32 copies, filled while they are uploaded */
    if ((rc = wrk__pq_f32_hold(m, err, errlen))) goto fail;
    rc = fam->init(c, &c->fam_ctx, err, errlen);
    wrk__pq_f32_release(m);
    if (rc) goto fail;
    c->max_graph = o.n_slots < o.max_step_tokens ? o.n_slots : o.max_step_tokens;
    c->graphs = calloc((size_t)c->max_graph + 1, sizeof *c->graphs);
    c->graph_bad = calloc((size_t)c->max_graph + 1, 1);
    if (!c->graphs || !c->graph_bad) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto fail;
    }
    if (cudaDeviceSynchronize() != cudaSuccess) {
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "cuda: device error while loading: %s",
                      cudaGetErrorString(cudaGetLastError()));
        goto fail;
    }
    *out = &c->base;
    return 0;
fail:
    cuda_destroy(&c->base);
    return rc;
}
