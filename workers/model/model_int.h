/* workers: the loaded model's private layout, shared by the loader, the model families and
 * the backends. A family (Mamba, Mamba2, ...) is one file that parses its config, binds its
 * tensors and describes its state, plus one forward pass per backend. */
#ifndef RCD_WRK_MODEL_INT_H
#define RCD_WRK_MODEL_INT_H

#include "workers/wrk.h"

/* The CPU backend's weight format (--weights): as stored, or quantized when packed
 * (workers/cpu/kernels_q.h). */
/* WRK_WQ_QG: a pre-quantized checkpoint's matrix in its own packed groups (kernels_qg.h). */
typedef enum wrk_wq { WRK_WQ_NATIVE = 0, WRK_WQ_Q8 = 1, WRK_WQ_Q4 = 2, WRK_WQ_QG = 3 } wrk_wq_t;

/* A weight matrix [rows x cols], row-major, as stored in the checkpoint (zero-copy view
 * into the mmapped file; may be unaligned). */
typedef struct wrk_mat {
    wrk_dtype_t dt;
    const void *data;
    int rows, cols;
    const void *pk; /* CPU: the same rows repacked in panels (workers/cpu/kernels.h), or NULL */
    wrk_wq_t qf;    /* with pk: WRK_WQ_Q8/Q4 when pk holds quantized panels (kernels_q.h),
                     * WRK_WQ_QG a pre-quantized matrix's groups (kernels_qg.h) */
} wrk_mat_t;

/* Tensor parallelism: one rank's share of a model (workers/README.md, "Tensor parallelism").
 * The rank's layout has the type of m->priv with local sizes and its own copies of the
 * sliced weights; `runs` say where the rank's slice of a sequence's state sits in the full
 * state blob, so a blob read from any TP degree is the TP=1 blob. */
typedef struct wrk_shard_run {
    size_t local, global, n; /* floats: local state [local, +n) is the blob's [global, +n) */
    bool owner;              /* false: a lower rank holds the same values and writes them */
} wrk_shard_run_t;

typedef struct wrk_shard {
    int rank, size;
    const void *layout;     /* the family's layout of this rank's slice */
    size_t state_floats;    /* this rank's part of one sequence's state */
    int n_runs;
    wrk_shard_run_t *runs;
    void *alloc[4];         /* what the family allocated for it; freed by wrk_shard_free */
    /* The sliced matrices of the layout (by value, data in alloc), for a backend to pack
     * (workers/cpu/pack.c wrk_cpu_pack_shard). */
    const wrk_mat_t *mats;
    int n_mats;
} wrk_shard_t;

void wrk_shard_free(wrk_shard_t *s); /* NULL-safe */

typedef struct wrk_family_i {
    wrk_family_t family;
    /* The family's layout (m->priv, allocated zeroed by the loader) starts with its config,
     * which the loader parses from config.json with this spec (workers/model/cfg_json.h);
     * the spec's model_type is the one the loader picks the family by. */
    size_t layout_size;
    const struct wrk_cfg_spec *config;
    /* Binds and validates m->st's tensors (every tensor taken) against the parsed config, and
     * fills the model's common fields below, m->info's family fields (vocab_size,
     * hidden_size, n_layers, weight_dtype, state_bytes, n_state_tensors, state_tensors,
     * token ids) and the rest of m->priv. What it allocates with wrk_model_alloc /
     * wrk_params_alloc is freed with the model (on failure too). */
    int (*load)(wrk_model_t *m, char *err, size_t errlen);
    /* Rank `rank` of `size`'s shard (NULL: the family has no sharded forward). Sizes that
     * cannot be split are refused with a message naming them. */
    int (*shard)(const wrk_model_t *m, int rank, int size, wrk_shard_t **out, char *err,
                 size_t errlen);
} wrk_family_i;

#define WRK_MODEL_MAX_OWNED 8

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
    wrk_state_tensor_t *state_tensors; /* wrk_model_alloc'd */
    /* Every matrix the family bound (wrk_take_mat), by value; the CPU backend packs them
     * once (workers/cpu/pack.c) and finds a packed copy by its data pointer. */
    wrk_mat_t *mats;
    int n_mats, cap_mats;
    void *owned[WRK_MODEL_MAX_OWNED]; /* the family's allocations (wrk_model_alloc) */
    int n_owned;
    struct wrk_packs *packs; /* owned; NULL until a CPU backend asks */
    struct wrk_pq *pq; /* owned; config.json's quantization_config, NULL when none (prequant.c) */
    void (*packs_free)(struct wrk_packs *p); /* set with packs, by the backend that made them */
    int weights_fmt; /* 1 + the --weights format (wrk_wq_t) a CPU backend ran the model with,
                      * which the fingerprint includes; 0 before any (pack.c) */
};

extern const wrk_family_i wrk_family_mamba;
extern const wrk_family_i wrk_family_mamba2;
extern const wrk_family_i wrk_family_jamba;
extern const wrk_family_i wrk_family_granite;
extern const wrk_family_i wrk_family_recurrentgemma;
extern const wrk_family_i wrk_family_nemotronh;
extern const wrk_family_i wrk_family_falconh1;
extern const wrk_family_i wrk_family_qwen3next;

/* Hashes config (canonical form), the tensor table and every weight byte into m->info's
 * fingerprint and weight_bytes (fingerprint.c). */
/* The fingerprint of m's weights in format `fmt` (q8, q4): XXH3-64 of the native fingerprint
 * and the name, in place (checkpoints then refuse a model run with other weights). */
void wrk__fingerprint_weights(wrk_model_t *m, const char *fmt);
int wrk__fingerprint(wrk_model_t *m, const char *config, size_t config_len, char *err,
                     size_t errlen);

/* Pre-quantized checkpoints (prequant.c; workers/README.md, "Pre-quantized checkpoints").
 * wrk__pq_parse: config.json's quantization_config into *out (NULL when absent), or
 * RCD_EUNSUPPORTED naming the field and value it refuses. wrk__pq_take_mat: when `name`
 * (<prefix>.weight) is stored quantized, its matrix (*done true: data is the reserved fp32
 * copy, see wrk__pq_f32_hold); *done false for a matrix stored as floats. wrk__pq_desc: a short name of the format, or NULL. */
struct wrk_pq;
/* A quantized matrix as the file gives it (for the CPU backend's qg pack, kernels_qg.h):
 * w[o][i] = s[o][g] * (q[o][i] - z[o][g]), g = gidx[i]; q unsigned codes < 2^bits, z the zero
 * point as an exact float of an integer (GPTQ v1's +1 included), in the file's column order. */
typedef struct wrk_pq_src {
    const float *w; /* the wrk_mat_t's data: the fp32 matrix s * (q - z), readable only while
                     * held (wrk__pq_f32_hold); the CPU backend packs q, s, z instead */
    int rows, cols, bits, G;
    uint8_t *q;     /* [rows x cols]; NULL in the model's sources (wrk__pq_src_load) */
    float *s, *z;   /* [rows x G]; likewise */
    int32_t *gidx;  /* [cols], each in [0, G); kept */
} wrk_pq_src_t;
/* The model keeps a source's shape and groups only; its codes, scales and zero points are
 * decoded from the mapped file into *out on demand (out's q, s, z malloc'd: RCD_ENOMEM;
 * freed by wrk__pq_src_done), so nothing of the size of the matrix stays in memory but the
 * CPU backend's qg pack. */
int wrk__pq_src_load(const wrk_model_t *m, const wrk_pq_src_t *src, wrk_pq_src_t *out);
void wrk__pq_src_done(wrk_pq_src_t *d);
/* The source of the matrix whose data is `data`, or NULL (not from a quantized tensor). */
const wrk_pq_src_t *wrk__pq_source(const wrk_model_t *m, const void *data);
/* The fp32 copies of the quantized matrices are reserved at load, not filled (the CPU
 * backend serves the codes): a reader of their values (TP shards, the CUDA upload, tests)
 * holds them while it reads. The first hold fills every copy (RCD_ENOMEM), the last release
 * frees the pages and makes them unreadable again; a read without a hold faults. No-ops
 * without quantized matrices. wrk__pq_f32_bytes: the bytes of fp32 copies filled now. */
int wrk__pq_f32_hold(const wrk_model_t *m, char *err, size_t errlen);
void wrk__pq_f32_release(const wrk_model_t *m);
size_t wrk__pq_f32_bytes(const wrk_model_t *m);
int wrk__pq_parse(const char *config, size_t len, const char *path, struct wrk_pq **out,
                  char *err, size_t errlen);
int wrk__pq_take_mat(wrk_model_t *m, const char *name, int rows, int cols, wrk_mat_t *out,
                     bool *done, char *err, size_t errlen);
const char *wrk__pq_desc(const struct wrk_pq *pq);
void wrk__pq_free(struct wrk_pq *pq);

/* Reads a small fp32 parameter out of a tensor of any float dtype (element i). */
float wrk_tensor_f32(const wrk_st_tensor_t *t, size_t i);

/* Helper for families' load: take tensor `name` with exactly this shape, or fail with a
 * message naming the file, tensor and both shapes. */
int wrk_take_tensor(wrk_model_t *m, const char *name, int ndim, const int64_t *shape,
                    const wrk_st_tensor_t **out, char *err, size_t errlen);
int wrk_take_mat(wrk_model_t *m, const char *name, int rows, int cols, wrk_mat_t *out, char *err,
                 size_t errlen);


/* The fields every family's load fills alike: m->info's sizes and token ids and the final
 * norm's epsilon; embedding scale and logit scale 1, no soft-cap (a family that differs sets
 * those after). */
void wrk_model_set_lm(wrk_model_t *m, int vocab, int hidden, int n_layers, int bos_id,
                      int eos_id, int pad_id, float norm_eps);

/* Describes state tensor t: named "layers.<layer>.<what>" (just `what` when layer < 0), of
 * `ndim` dims, elements of elem_bytes each, at byte `off` of the blob; returns the offset
 * after it. */
size_t wrk_state_tensor_set(wrk_state_tensor_t *t, int layer, const char *what, int ndim,
                            const int64_t *shape, size_t elem_bytes, size_t off);

/* Sets a mixer layer's two state tensors (conv, ssm) at `off`; returns the offset after them. */
typedef size_t (*wrk_mixer_state_fn)(const void *mx, int layer, wrk_state_tensor_t *t, size_t off);

/* The state of a model of mixer and attention layers: for each layer l < n_layers with
 * mixer[l] (mixer NULL: every layer) the two tensors describe(mx, l, ...) sets, one after the
 * other, then with n_attn > 0 "kv.n_tokens" (one uint64); m->state_tensors and m->info's
 * state_bytes, state tensor list, n_kv_layers (n_attn), kv_width and kv_bytes_per_token (fp32
 * K and V rows per attention layer). RCD_ENOMEM when out of memory. */
int wrk_describe_hybrid_state(wrk_model_t *m, int n_layers, const bool *mixer,
                              wrk_mixer_state_fn describe, const void *mx, int n_attn, int kv_width,
                              char *err, size_t errlen);

/* Binding a family's tensors in its load. Matrices stay zero-copy views into the mmapped
 * files; small parameters (norms, biases, conv, A, D, gates) are converted to fp32 into one
 * pool the family sizes up front and fills through a bump pointer. */
typedef struct wrk_binder {
    wrk_model_t *m;
    float *next; /* bump pointer into the family's pool */
    char *err;
    size_t errlen;
} wrk_binder_t;

typedef enum wrk_bind_how {
    WRK_BIND_AS_IS,
    WRK_BIND_NEG_EXP,       /* -exp(w): A from A_log */
    WRK_BIND_ONE_PLUS,      /* 1 + w: Gemma's RMSNorm weight, in fp32 as transformers adds it */
    WRK_BIND_NEG8_SOFTPLUS, /* -8 softplus(w) (torch's: threshold 20): the RG-LRU's a */
    WRK_BIND_BLOCK_T,       /* each [n][n] block of an [NB][n][n] tensor transposed */
} wrk_bind_how_t;

/* n zeroed elements of `size` bytes owned by the model (freed by wrk_model_free): the family's
 * layout and its arrays. NULL when out of memory. */
void *wrk_model_alloc(wrk_model_t *m, size_t n, size_t size);

/* The family's pool of n floats (owned by the model, as wrk_model_alloc). Every small parameter is
 * converted from one checkpoint element, so a config that needs more than the checkpoint
 * holds is refused before allocating for it; `what` names those parameters in the message. */
int wrk_params_alloc(wrk_model_t *m, size_t n, const char *what, float **out, char *err,
                     size_t errlen);
/* A small parameter of exactly this shape, converted (`how`) into the pool. */
int wrk_bind_vec_nd(wrk_binder_t *b, const char *name, int ndim, const int64_t *shape,
                    wrk_bind_how_t how, const float **out);
int wrk_bind_vec_x(wrk_binder_t *b, const char *name, int64_t n, wrk_bind_how_t how,
                   const float **out);
int wrk_bind_vec(wrk_binder_t *b, const char *name, int64_t n, const float **out);
int wrk_bind_mat(wrk_binder_t *b, const char *name, int rows, int cols, wrk_mat_t *out);
/* A depthwise conv1d weight [C][1][K], stored [K][C] (tap-major) in the pool. */
int wrk_bind_conv(wrk_binder_t *b, const char *name, int C, int K, const float **out);
/* An attention block's projections <prefix>{q,k,v,o}_proj.weight, [qd x H], [kvd x H] twice
 * and [H x qd], into *w[0..3]; with bias (not NULL) then their biases into *bias[0..3]. */
int wrk_bind_attn(wrk_binder_t *b, const char *prefix, int H, int qd, int kvd,
                  wrk_mat_t *const w[4], const float **const bias[4]);
/* m->lm_head: lm_head.weight [vocab x hidden], or the embedding when tied (a tied checkpoint
 * may carry a duplicate head, as transformers ties over it; it must have the right shape). */
int wrk_bind_lm_head(wrk_binder_t *b, bool tied, int vocab, int hidden);

#endif
