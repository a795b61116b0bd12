/* workers/cpu: the CPU backend's private state and the helpers every family's forward pass
 * shares (embedding gather, row-split matmul, final norm + lm_head). */
#ifndef RCD_WRK_CPU_INT_H
#define RCD_WRK_CPU_INT_H

#include "workers/backend_int.h"
#include "workers/comm.h"
#include "workers/cpu/adapt.h"
#include "workers/cpu/kernels.h"
#include "workers/cpu/kv_cache.h"
#include "workers/cpu/pool.h"
#include "workers/model/model_int.h"

#define WRK_LOGIT_CHUNK 64 /* logit rows computed per lm_head pass */
/* Steps of at most this many tokens (decode) compute the per-layer norms on every thread,
 * each into its own buffer (wrk_cpu_local), instead of splitting them by token behind a
 * barrier: O(T H) repeated work for one barrier less per norm. */
#define WRK_CPU_LOCAL_T 8

struct wrk_cpu;
struct wrk_cpu_fwd;

/* A model family's CPU forward (cpu/<family>_cpu.c); cpu_backend.c's table maps each
 * wrk_family_t to one. */
typedef struct wrk_cpu_family_i {
    wrk_family_t family;
    /* The family's activation buffers for c->base.max_step_tokens tokens. */
    int (*init)(struct wrk_cpu *c, void **ctx);
    void (*free)(void *ctx);
    /* One step over a validated ragged batch, run by every pool thread (ith of nth) with
     * arg a wrk_cpu_fwd_t: every sequence's tokens continue from its slot's state; logits
     * rows written as wrk_seq_t asks. */
    wrk_pool_cb forward;
    /* Optional, run by the stepping thread before and after forward (arg as forward's). */
    void (*prepare)(struct wrk_cpu_fwd *f);
    void (*finish)(struct wrk_cpu_fwd *f);
    /* Speculative rollback (NULL: verify entries refused). spec_sizes: the floats a slot keeps
     * of a verify pass's recurrence inputs (for WRK_SPEC_MAX_TOKENS positions; the forward
     * writes them to wrk_cpu_spec_rec) and the replay's scratch (both preset to 0).
     * spec_replay: run by every pool thread with a wrk_cpu_replay_t after the slot's fixed
     * state was restored: reruns the recurrences over the first n positions from those inputs
     * (no matmuls). Optional: spec_save / spec_restore keep only the part of the fixed state a
     * verify of n tokens changes (spec_sizes' *saved_floats of it; RecurrentGemma's rings:
     * only the rows it overwrites); without them the whole fixed state is copied. */
    void (*spec_sizes)(const struct wrk_cpu *c, size_t *rec_floats, size_t *tmp_floats,
                       size_t *saved_floats);
    wrk_pool_cb spec_replay;
    void (*spec_save)(struct wrk_cpu *c, int slot, int n, float *saved);
    void (*spec_restore)(struct wrk_cpu *c, int slot, int n, const float *saved);
} wrk_cpu_family_i;

/* A slot's speculative rollback data (cpu_backend.c), allocated at its first verify entry. */
typedef struct wrk_cpu_spec {
    float *saved;     /* the fixed state before the verify step (or the part of it
                       * spec_save keeps: spec_saved_floats) */
    float *rec;       /* the family's recurrence inputs of the verify pass (spec_sizes) */
    int32_t n_tokens; /* tokens of the pending verify entry; 0: none pending */
    int32_t kv0;      /* paged KV positions before it */
} wrk_cpu_spec_t;

/* What spec_replay gets. */
typedef struct wrk_cpu_replay {
    struct wrk_cpu *c;
    int slot;
    int n;      /* positions to replay, 1..WRK_SPEC_MAX_TOKENS */
    float *rec; /* the slot's wrk_cpu_spec_t.rec */
    float *tmp; /* the backend's replay scratch (spec_sizes' tmp_floats) */
} wrk_cpu_replay_t;

extern const wrk_cpu_family_i wrk_cpu_mamba;
extern const wrk_cpu_family_i wrk_cpu_mamba2;
extern const wrk_cpu_family_i wrk_cpu_granite;
extern const wrk_cpu_family_i wrk_cpu_recurrentgemma;
extern const wrk_cpu_family_i wrk_cpu_nemotronh;
extern const wrk_cpu_family_i wrk_cpu_jamba;
extern const wrk_cpu_family_i wrk_cpu_falconh1;
extern const wrk_cpu_family_i wrk_cpu_qwen3next;

typedef struct wrk_cpu {
    wrk_backend_t base;
    const wrk_model_t *m;
    const wrk_kern_t *k;
    wrk_pool_t *pool;
    int n_threads;
    bool adapt_on;         /* opts.adapt_threads, where possible (adapt_why when not) */
    const char *adapt_why;
    wrk_adapt_t adapt;     /* the pool's active count (device thread only) */
    float *slots; /* n_slots x state_floats */
    size_t state_floats;
    float *res;       /* residual stream, max_step_tokens x H */
    float *logit_in;  /* WRK_LOGIT_CHUNK x H */
    float *logit_out; /* WRK_LOGIT_CHUNK x V */
    float *scratch;   /* per thread: wrk_mm_scratch_floats(m->max_matmul_cols) */
    size_t scratch_floats;
    float *local;                /* per thread: local_floats (wrk_cpu_local) */
    struct wrk_cpu_pf *pf_next;  /* per thread: what it reads after the mixer (wrk_cpu_pf_set) */
    size_t local_floats;         /* WRK_CPU_LOCAL_T x max(hidden, m->max_matmul_cols) */
    const wrk_cpu_family_i *fam; /* the model family's forward */
    void *fam_ctx;               /* its activation buffers */
    wrk_kv_t *kv;                /* paged KV of models with n_kv_layers > 0, else NULL */
    /* Tensor parallelism (cpu_tp.c): this rank's shard and communicator; NULL at TP=1. */
    const wrk_shard_t *shard;
    wrk_comm_t *comm;
    int comm_rc;             /* first communicator error of the step */
    struct wrk_packs *packs; /* owned: a TP rank's packed slices (wrk_cpu_pack_shard) */
    wrk_cpu_spec_t *spec;    /* n_slots, speculative rollback; NULL under TP */
    float *spec_tmp;         /* the replay's scratch, allocated with the first verify */
    size_t spec_rec_floats, spec_tmp_floats, spec_saved_floats;
} wrk_cpu_t;

/* Where the forward keeps a verify entry's recurrence inputs; NULL for other entries. */
static inline float *wrk_cpu_spec_rec(const wrk_cpu_t *c, const wrk_seq_t *q)
{
    return q->verify ? c->spec[q->slot].rec : NULL;
}

/* The family layout the forward runs: this rank's shard, or the whole model. */
static inline const void *wrk_cpu_layout(const wrk_cpu_t *c)
{
    return c->shard ? c->shard->layout : c->m->priv;
}

/* Rank 0 (or no TP): adds the output biases once and computes the logits. */
static inline bool wrk_cpu_lead(const wrk_cpu_t *c)
{
    return !c->comm || c->comm->rank == 0;
}

/* Sums buf [n] over the TP group in place (no-op at TP=1). Every pool thread calls it after
 * the barrier that completed buf; thread 0 talks to the group; returns after a barrier. */
void wrk_cpu_all_reduce(wrk_cpu_t *c, int ith, float *buf, size_t n);

/* One CPU backend; with a shard and a communicator, one rank of a TP group (cpu_tp.c). */
int wrk__cpu_create(const wrk_model_t *m, const wrk_backend_opts_t *opts, const wrk_shard_t *shard,
                    wrk_comm_t *comm, wrk_cpu_t **out, char *err, size_t errlen);
/* The TP group behind one wrk_backend_t (opts->tp > 1). */
int wrk__cpu_tp_create(const wrk_model_t *m, const wrk_backend_opts_t *opts, wrk_backend_t **out,
                       char *err, size_t errlen);

/* One step as a family's forward sees it (wrk__cpu_forward fills it). */
typedef struct wrk_cpu_fwd {
    wrk_cpu_t *c;
    void *a; /* the family's activation buffers (its init's ctx) */
    const wrk_seq_t *seqs;
    int n_seqs;
    int T;      /* tokens in the step */
    int n_rows; /* logit rows in the step */
} wrk_cpu_fwd_t;

/* Runs the family's forward over a validated batch on c's pool. */
void wrk__cpu_forward(wrk_cpu_t *c, const wrk_seq_t *seqs, int n_seqs);

/* n floats, 64-byte aligned (free() them); NULL when out of memory. */
float *wrk_cpu_alloc_floats(size_t n);

static inline float *wrk_cpu_slot(wrk_cpu_t *c, int slot)
{
    return c->slots + (size_t)slot * c->state_floats;
}

static inline float *wrk_cpu_scratch(wrk_cpu_t *c, int ith)
{
    return c->scratch + (size_t)ith * c->scratch_floats;
}
/* Thread ith's own buffer for a step of T tokens (T x max(hidden, widest matmul input)
 * floats) where T <= WRK_CPU_LOCAL_T, else NULL: what a thread computes there only it reads,
 * so no barrier follows it. */
static inline float *wrk_cpu_local(wrk_cpu_t *c, int ith, int T)
{
    return T <= WRK_CPU_LOCAL_T ? c->local + (size_t)ith * c->local_floats : NULL;
}

/* Total tokens and logit rows of a batch. */
void wrk_cpu_batch_size(const wrk_seq_t *seqs, int n_seqs, int *T, int *n_rows);

/* Embedding rows (times embed_scale) of this thread's share of the batch into c->res. */
void wrk_cpu_embed(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs);

/* y = (acc ? y : 0) + x W^T (+ bias) for T tokens, rows of W split between threads. */
/* Packs every matrix the model bound, once per model (pack.c), quantized with `weights`
 * q8/q4 (kernels_q.h; the fingerprint then names the format; RCD_EINVAL if the model was
 * packed with another format); the packed copy of W (same data pointer and shape) and its
 * format in *qf, or NULL. */
int wrk_cpu_pack_model(wrk_model_t *m, wrk_wq_t weights, char *err, size_t errlen);
const void *wrk_cpu_packed(const wrk_model_t *m, const wrk_mat_t *W, wrk_wq_t *qf);
/* A TP rank's own packs (*out; NULL on error): its shard's sliced matrices, each quantized
 * per slice with `weights` as wrk_cpu_pack_model does the whole (q8 scales per row of the
 * slice, q4 groups of 32 from the slice's first column), plus the lm_head on rank 0. The
 * format is recorded on the model as by wrk_cpu_pack_model (same refusals). */
int wrk_cpu_pack_shard(const wrk_model_t *m, const wrk_shard_t *s, wrk_wq_t weights,
                       struct wrk_packs **out, char *err, size_t errlen);
void wrk_cpu_packs_free(struct wrk_packs *p); /* NULL-safe */
const void *wrk_cpu_packed_in(const struct wrk_packs *p, const wrk_mat_t *W, wrk_wq_t *qf);
/* Bytes of the packed matrices as stored in the checkpoint and as packed (quantized or not):
 * what a batch-1 decode step reads is weight_bytes - native + packed (bench/mamba_bench). */
void wrk_cpu_pack_stats(const wrk_model_t *m, size_t *native, size_t *packed);
/* wrk_matmul on this backend: W's packed copy when it has one. */
void wrk_cpu_matmul(wrk_cpu_t *c, int ith, const wrk_mat_t *W, int o0, int o1, const float *x,
                    int ldx, int T, float *y, int ldy, const float *bias, bool acc);
void wrk_cpu_mm(wrk_cpu_t *c, int ith, int nth, const wrk_mat_t *W, const float *x, int ldx, int T,
                float *y, int ldy, const float *bias, bool acc);

/* A byte range a thread reads next (its share of a matmul's packed weights, a state slice):
 * what it prefetches while it waits at a barrier (wrk_pool_barrier_pf). */
typedef struct wrk_cpu_pf {
    const void *p;
    size_t n;
} wrk_cpu_pf_t;
/* At most this many bytes are prefetched per barrier (into L2; the kernels prefetch the rest
 * as they stream). */
#define WRK_CPU_PF_MAX (256 * 1024)
/* The packed bytes of W's rows [o0, o1) (native or q8/q4 panels); {0} where W has no such
 * pack (pre-quantized checkpoints, unpacked matrices). */
wrk_cpu_pf_t wrk_cpu_pf_rows(const wrk_cpu_t *c, const wrk_mat_t *W, int o0, int o1);
/* Thread ith's rows of W as wrk_cpu_mm splits them. */
wrk_cpu_pf_t wrk_cpu_pf_mm(const wrk_cpu_t *c, int ith, int nth, const wrk_mat_t *W);
/* A barrier during whose wait the thread prefetches pf (at most WRK_CPU_PF_MAX bytes). */
static inline void wrk_cpu_barrier_pf(wrk_cpu_t *c, wrk_cpu_pf_t pf)
{
    wrk_pool_barrier_pf(c->pool, pf.p, pf.n < WRK_CPU_PF_MAX ? pf.n : WRK_CPU_PF_MAX);
}
/* What thread ith reads first after the mixer it is about to run (the next layer's first
 * matmul, the lm_head): set by a family's forward before the call, taken (and cleared) by
 * the mixer's last barrier (wrk_cpu_barrier_next). Families that set nothing get a plain
 * barrier. */
static inline void wrk_cpu_pf_set(wrk_cpu_t *c, int ith, wrk_cpu_pf_t pf)
{
    c->pf_next[ith] = pf;
}
static inline void wrk_cpu_barrier_next(wrk_cpu_t *c, int ith)
{
    const wrk_cpu_pf_t pf = c->pf_next[ith];
    c->pf_next[ith] = (wrk_cpu_pf_t){0};
    wrk_cpu_barrier_pf(c, pf);
}

/* Final RMSNorm and lm_head for every row that wants logits (reads c->res), written into
 * each sequence's buffer with logit_scale and softcap applied. All threads call it. */
void wrk_cpu_logits(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs, int n_rows);

#endif
