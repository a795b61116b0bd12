/* workers: the loaded model's private layout, shared by the loader, the model families and
 * the backends. A family (Mamba, Mamba2, ...) is one file that parses its config, binds its
 * tensors and describes its state, plus one forward pass per backend. */
#ifndef RCD_WRK_MODEL_INT_H
#define RCD_WRK_MODEL_INT_H

#include "workers/wrk.h"

/* A weight matrix [rows x cols], row-major, as stored in the checkpoint (zero-copy view
 * into the mmapped file; may be unaligned). */
typedef struct wrk_mat {
    wrk_dtype_t dt;
    const void *data;
    int rows, cols;
} wrk_mat_t;

struct wrk_cpu;

typedef struct wrk_family_i {
    const char *model_type; /* config.json "model_type" */
    wrk_family_t family;
    /* Parses config.json, binds and validates m->st's tensors (every tensor taken), and
     * fills the model's common fields below, m->info's family fields (vocab_size,
     * hidden_size, n_layers, weight_dtype, state_bytes, n_state_tensors, state_tensors,
     * token ids) and m->priv. On failure the model is freed by the caller (unload runs). */
    int (*load)(wrk_model_t *m, const char *json, size_t len, char *err, size_t errlen);
    void (*unload)(wrk_model_t *m); /* frees m->priv and what load allocated; NULL-safe */
    /* CPU backend: the family's activation buffers for c->base.max_step_tokens tokens. */
    int (*cpu_init)(struct wrk_cpu *c, void **ctx);
    void (*cpu_free)(void *ctx);
    /* One step over a validated ragged batch: every sequence's tokens continue from its
     * slot's state; logits rows written as wrk_seq_t asks. */
    void (*cpu_step)(struct wrk_cpu *c, void *ctx, const wrk_seq_t *seqs, int n_seqs);
} wrk_family_i;

struct wrk_model {
    wrk_model_info_t info;
    char arch[64];
    wrk_st_set_t *st;
    const wrk_family_i *fam;
    void *priv; /* the family's own layout */
    /* Common to every causal LM served here, set by the family's load: */
    wrk_mat_t embed;          /* [V x H] */
    wrk_mat_t lm_head;        /* [V x H]: the embedding when tied */
    const float *norm_f;      /* [H], final RMSNorm weight as applied (w, or 1+w baked in) */
    float norm_eps;
    float embed_scale;        /* multiplies embedding rows (1 for Mamba) */
    float logit_scale;        /* multiplies logits (1 for Mamba) */
    float logit_softcap;      /* cap*tanh(logits/cap) when > 0 */
    int max_matmul_cols;      /* widest matmul input, for the GEMM conversion scratch */
    wrk_state_tensor_t *state_tensors; /* owned: freed by wrk_model_free */
};

extern const wrk_family_i wrk_family_mamba;
extern const wrk_family_i wrk_family_mamba2;

/* Reads a small fp32 parameter out of a tensor of any dtype (element i). */
float wrk_tensor_f32(const wrk_st_tensor_t *t, size_t i);

/* Helper for families' load: take tensor `name` with exactly this shape, or fail with a
 * message naming the file, tensor and both shapes. */
int wrk_take_tensor(wrk_model_t *m, const char *name, int ndim, const int64_t *shape,
                    const wrk_st_tensor_t **out, char *err, size_t errlen);
int wrk_take_mat(wrk_model_t *m, const char *name, int rows, int cols, wrk_mat_t *out, char *err,
                 size_t errlen);

#endif
