/* workers: the public interface of the model engine — load a Hugging Face checkpoint
 * directory, allocate per-sequence state slots on a backend, and run `step` over ragged
 * batches. Nothing here knows about sessions, RPCs or scheduling. */
#ifndef RCD_WRK_H
#define RCD_WRK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rcd_error.h"
#include "workers/model/safetensors.h"

/* ---- models ---------------------------------------------------------------------------- */

typedef enum wrk_family {
    WRK_FAMILY_MAMBA = 1,
    WRK_FAMILY_MAMBA2 = 2,
    WRK_FAMILY_GRANITE = 3,
    WRK_FAMILY_RECURRENTGEMMA = 4,
    WRK_FAMILY_NEMOTRON_H = 5,  /* issue 20 */
    WRK_FAMILY_FALCON_H1 = 6,   /* issue 20 */
    WRK_FAMILY_JAMBA = 7,       /* issue 20 */
    WRK_FAMILY_QWEN3_NEXT = 8,  /* issue 20 (Gated DeltaNet) */
} wrk_family_t;

/* One tensor of a sequence's state, as the state store sees it: a named byte range of the
 * state blob. These describe the fixed part, fp32 and known at load time; models with a KV
 * cache end it with "kv.n_tokens" (one uint64) and append the KV of that many positions
 * (wrk_state_bytes, workers/README.md). */
typedef struct wrk_state_tensor {
    char name[48];   /* e.g. "layers.3.conv" */
    size_t offset;   /* bytes from the start of the state blob */
    size_t bytes;
    int ndim;
    int64_t shape[3];
} wrk_state_tensor_t;

typedef struct wrk_model_info {
    wrk_family_t family;
    const char *architecture; /* "MambaForCausalLM"; owned by the model */
    int vocab_size;
    int hidden_size;
    int n_layers;
    wrk_dtype_t weight_dtype; /* dtype of the projection weights as stored */
    size_t weight_bytes;      /* bytes of all tensors used */
    size_t state_bytes;       /* per-sequence state, fixed */
    double layer_flops;       /* matmul FLOPs per token in the layers (no embedding, lm_head) */
    int n_state_tensors;
    const wrk_state_tensor_t *state_tensors; /* owned by the model */
    /* Hybrids with global attention (Granite 4.0-H) also keep, per position seen, K and V of
     * kv_width floats in each of n_kv_layers layers (paged; 0 layers: a fixed-size state).
     * Their state is then variable-size: see wrk_state_bytes / wrk_state_read_n. */
    int n_kv_layers;
    int kv_width;
    size_t kv_bytes_per_token;
    /* Hash of config.json (canonical form), the tensor table and the weight bytes: a
     * checkpoint taken with one model is only ever resumed on the identical model. */
    uint64_t fingerprint;
    char fingerprint_hex[17];
    int bos_token_id, eos_token_id, pad_token_id; /* from config.json, -1 when absent */
    /* A pre-quantized checkpoint's format from config.json's quantization_config ("gptq int4
     * group 128 sym", "compressed-tensors pack-quantized int4 group 32 sym", ...; owned by the
     * model), NULL for a float checkpoint (workers/README.md, "Pre-quantized checkpoints"). */
    const char *quantization;
} wrk_model_info_t;

typedef struct wrk_model wrk_model_t;

/* Loads dir/config.json and dir/model.safetensors (or a sharded index). The weights stay
 * mmapped; the model is immutable afterwards and may be shared by backends and threads.
 * On failure returns a negative code and writes a message naming the file and tensor. */
int wrk_model_load(const char *dir, wrk_model_t **out, char *err, size_t errlen);
void wrk_model_free(wrk_model_t *m); /* NULL-safe; no backend may still use it */
const wrk_model_info_t *wrk_model_info(const wrk_model_t *m);

/* ---- backends ---------------------------------------------------------------------------- */

/* One entry of a ragged batch: run n_tokens tokens of one sequence, continuing from the
 * state in `slot`, and leave the state after the last token there. */
typedef struct wrk_seq {
    int32_t slot;           /* state slot index, [0, n_slots); at most once per step */
    int32_t n_tokens;       /* >= 1: decode is 1, a prefill chunk more */
    const int32_t *tokens;  /* borrowed, n_tokens ids in [0, vocab) */
    int32_t n_logits;       /* logits wanted for the last n_logits positions, 0..n_tokens */
    float *logits;          /* borrowed, caller-owned [n_logits x vocab] fp32, row-major */
    /* A speculative verify entry (draft tokens after the last accepted one, n_tokens at most
     * WRK_SPEC_MAX_TOKENS): the backend also keeps what wrk_spec_accept needs to roll the slot
     * back to any prefix of these tokens. A backend without rollback refuses the step with
     * RCD_EUNSUPPORTED. */
    bool verify;
} wrk_seq_t;

/* Most tokens of one verify entry (k drafts + 1). */
#define WRK_SPEC_MAX_TOKENS 16

typedef struct wrk_backend_opts {
    int n_threads;        /* 0: all online CPUs */
    int n_slots;          /* state slots to allocate (default 8) */
    int max_step_tokens;  /* token budget of one step (default 512) */
    const char *isa;      /* CPU kernels: NULL/"auto", "avx512", "avx2", "portable" */
    const char *matmul;   /* CPU: NULL/"fp32" (products of fp32 x, parity with transformers in
                           * fp32), or "bf16": x rounded to bf16 for BF16 weights, fp32 sums,
                           * on AMX (opt-in: logits move by the rounding; workers/README.md) */
    int tp;               /* tensor-parallel ranks (0/1: none); CPU: in-process ranks, each
                           * with n_threads / tp pool threads (workers/README.md) */
    int kv_block_tokens;  /* paged KV (models with n_kv_layers > 0): tokens per block (16) */
    int n_kv_blocks;      /* blocks in the pool (default: 2048 positions per slot) */
    const char *weights;  /* CPU: NULL/"native" (as stored), "q8" or "q4": the bound matrices
                           * quantized when packed (workers/README.md, "Quantized weights");
                           * the model's fingerprint then names the format */
    bool adapt_threads;   /* CPU (no TP): run fewer of the n_threads pool threads while they
                           * wait for CPUs that other processes hold, and try more again later
                           * (workers/cpu/adapt.h; workers/README.md, "Threads under
                           * contention"); outputs do not change. Off where the system does
                           * not report scheduler delays (wrk_threads' *why) */
} wrk_backend_opts_t;

/* A model on one backend: state slots and the step. Opaque; the accessors below read it. */
typedef struct wrk_backend wrk_backend_t;

/* *out = *opts (or zeros) with every backend's defaults filled in (n_threads: the online CPUs,
 * at most 256; 8 slots; 512 step tokens; KV blocks of 16 tokens, 2048 positions per slot), or
 * RCD_EINVAL naming the option that is out of range. Every backend applies it to what it is
 * given; a caller that sizes something after the backend (the engine's KV admission) resolves
 * the same options first, so both agree. */
int wrk_backend_opts_resolve(const wrk_backend_opts_t *opts, wrk_backend_opts_t *out, char *err,
                             size_t errlen);

/* Creates the CPU backend for a loaded model. */
int wrk_cpu_backend_create(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                           wrk_backend_t **out, char *err, size_t errlen);
/* Creates the CUDA backend (device 0, or $RCD_CUDA_DEVICE; workers/cuda/wrk_cuda.h has the
 * CUDA-only options). RCD_EUNSUPPORTED with the reason when this build has no CUDA, no device
 * is present, or the model's family has no CUDA forward yet. */
int wrk_cuda_backend_create(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                            wrk_backend_t **out, char *err, size_t errlen);
/* The backend named `name` ("cpu" or "cuda"), as the daemon's and tools' --backend pick it. */
int wrk_backend_create_by_name(const char *name, const wrk_model_t *m,
                               const wrk_backend_opts_t *opts, wrk_backend_t **out, char *err,
                               size_t errlen);

/* The backend's name ("cpu", "cpu-tp", "cuda"), slots, step budget (tokens), kernels in use
 * ("avx512", "cuda", ...: for logs and benchmarks) and model (borrowed). */
const char *wrk_backend_name(const wrk_backend_t *b);
int wrk_backend_n_slots(const wrk_backend_t *b);
int wrk_backend_max_step_tokens(const wrk_backend_t *b);
const char *wrk_backend_isa(const wrk_backend_t *b);
const wrk_model_t *wrk_backend_model(const wrk_backend_t *b);

/* `step` validates the batch (slots, ids, budget) and returns RCD_EINVAL / RCD_ERANGE /
 * RCD_ETOOBIG with a message, touching no state. */
int wrk_step(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen);
int wrk_state_reset(wrk_backend_t *b, int slot);
int wrk_state_copy(wrk_backend_t *b, int dst_slot, int src_slot);
/* State I/O, for every model (variable-size ones included). A slot's state is
 * info->state_bytes fixed bytes, then, when n_kv_layers > 0, the KV of every position seen:
 * wrk_state_bytes(b, slot) = state_bytes + n_positions * kv_bytes_per_token (see
 * workers/README.md for the layout). read_n fails with RCD_ETOOBIG when cap is smaller;
 * write_n with RCD_EFORMAT when len disagrees with the blob's position count, RCD_ETOOBIG when
 * the KV pool lacks blocks (the slot untouched). A slot out of range: RCD_ERANGE. */
size_t wrk_state_bytes(wrk_backend_t *b, int slot);
int wrk_state_read_n(wrk_backend_t *b, int slot, void *dst, size_t cap, size_t *len);
int wrk_state_write_n(wrk_backend_t *b, int slot, const void *src, size_t len);
/* Speculative rollback. After a step that ran a verify entry on `slot`, keeps only the
 * first n_keep (0..n_tokens) of its tokens: the slot's state becomes bit-identical to the one
 * a run over just those tokens reaches (the fixed state is restored from the copy the verify
 * step took, and only the recurrences -- conv windows, scans, RG-LRU, the local-attention
 * ring rows -- rerun over the kept positions from the inputs that step kept, no matmuls;
 * paged KV drops the positions past them). n_keep = n_tokens costs nothing. The pending
 * verify ends with the call; any other step, reset, write or copy into the slot before it
 * keeps every token. RCD_ERANGE for a bad slot or n_keep, RCD_EINVAL when the slot has no
 * pending verify, RCD_EUNSUPPORTED on a backend without rollback (CUDA, CPU tensor
 * parallelism, a CPU family without it: Qwen3-Next). Like the state calls, only on the thread
 * that steps the backend (it runs the replay on the backend's pool). Memory per slot:
 * workers/README.md, "Speculative verify". */
int wrk_spec_accept(wrk_backend_t *b, int slot, int n_keep);
/* Whether this backend runs verify entries for its model (false: they are refused with
 * RCD_EUNSUPPORTED, as on CUDA, the CPU tensor-parallel group and families without the
 * rollback hooks). */
bool wrk_spec_supported(const wrk_backend_t *b);
/* The KV pool's free and total blocks (both 0 without a pool). Like the state calls, only
 * on the thread that steps the backend (or while nothing steps it). */
void wrk_kv_blocks(wrk_backend_t *b, int64_t *n_free, int64_t *n_total);
/* The CPU pool's threads: *active of *max run the steps now, *changes times the count has
 * changed (adapt_threads); a backend without one pool (CUDA, a TP group): 0, 0, 0. *adapting:
 * whether the count follows contention; where adapt_threads was asked for and is not possible,
 * *why (may be NULL). Any of the pointers may be NULL. Any thread may call it. */
void wrk_threads(wrk_backend_t *b, int *active, int *max, uint64_t *changes, bool *adapting,
                 const char **why);
void wrk_backend_destroy(wrk_backend_t *b); /* NULL-safe */

#endif
