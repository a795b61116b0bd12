/* tests/support: what the golden tests share — reading the fixtures of tools/gen_*_goldens.py
 * (goldens.json + raw .f32 logits), CPU backends on them, and the drivers every family runs
 * (all chunkings on every ISA, ragged batches, greedy decode, state layout and resume).
 * A failed comparison is a failed CHECK (rcd_test.h). A backend-agnostic piece (fixture
 * reading, golden_max_diff, golden_argmax, golden_load_edited) needs no CPU backend. */
#ifndef RCD_GOLDEN_UTIL_H
#define RCD_GOLDEN_UTIL_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/cpu/kernels.h"
#include "workers/wrk.h"

#define GOLDEN_MAX_SEQS 8
#define GOLDEN_MAX_TOKENS 160
#define GOLDEN_MAX_GREEDY 160

typedef struct golden_seq {
    char name[32];
    int n;
    int32_t tokens[GOLDEN_MAX_TOKENS];
    float *logits; /* n x V, owned */
} golden_seq_t;

/* One fixture directory: its goldens.json and the logits files it names. */
typedef struct golden {
    char dir[RCD_PATH_MAX];
    int V;
    int n_seqs;
    golden_seq_t seqs[GOLDEN_MAX_SEQS];
    int n_prompt, n_gen;
    int32_t greedy[GOLDEN_MAX_GREEDY]; /* prompt then generated */
    float *greedy_logits;              /* (n_prompt + n_gen) x V, owned; NULL: ids only */
} golden_t;

/* A family's golden suite: where its fixtures are and how its backends are made. */
typedef struct golden_suite {
    const char *family;       /* folder under the golden root, e.g. "mamba" */
    wrk_family_t family_id;   /* what its fixtures must load as */
    const char *const *cases; /* the fp32 fixtures the drivers run */
    int n_cases;
    float tol;               /* max |dlogit| against transformers */
    wrk_backend_opts_t opts; /* slots, step size, KV blocks; isa and n_threads per backend */
    int ragged_pattern[8];   /* tokens a sequence wants per ragged step (by step + seq) */
    bool ragged_last_row;    /* ragged steps also ask for the last logit row alone */
} golden_suite_t;

const char *golden_root(void);

/* dir/file as exactly n floats, malloc'd; NULL (and a message) otherwise. */
float *golden_read_f32(const char *dir, const char *file, size_t n);

void golden_free(golden_t *g);

/* Loads dir/goldens.json and every logits file it names (the model is in the same directory
 * unless said otherwise). -1 with a message, and g empty, when any of it is missing. */
int golden_load_dir(const char *dir, golden_t *g);

/* The fixture <root>/<family>/<name>. */
int golden_load(const char *family, const char *name, golden_t *g);

/* A further logits file a family's goldens.json names under `key` (n floats, malloc'd);
 * NULL when the key is absent or the file is bad. */
float *golden_load_extra(const golden_t *g, const char *key, size_t n);

/* The first sequence of n tokens, or NULL. */
const golden_seq_t *golden_find_seq(const golden_t *g, int n);

float golden_max_diff(const float *a, const float *b, size_t n);

int golden_argmax(const float *row, int V);

/* Loads the model in dir; a failure is a failed check. */
wrk_model_t *golden_model(const char *dir);

/* Fixture <family>/<name> and its model; NULL (g empty) when either is missing. Only the model
 * failing to load is a failed check (an unreadable fixture has said so already). */
wrk_model_t *golden_open(const char *family, const char *name, golden_t *g);

/* A CPU backend with the suite's options, `isa` (NULL: the best) and `threads`. */
wrk_backend_t *golden_backend(const golden_suite_t *s, const wrk_model_t *m, const char *isa,
                              int threads);

/* Runs q in chunks of `chunk` tokens on `slot` (reset first); logits into out (n x V). Each
 * step is a check; the first failure stops the run. */
int golden_run_into(wrk_backend_t *b, int slot, const golden_seq_t *q, int V, int chunk,
                    float *out);

/* q in chunks on slot 0: max |diff| against its golden logits (NaN when a step failed). */
float golden_run_chunked(wrk_backend_t *b, const golden_seq_t *q, int V, int chunk);

/* Every sequence of g at chunks 1, 4, 8 and whole, each within `tol`; the worst |dlogit|.
 * The kernels compute each output in an order that does not depend on how many tokens share
 * a step, so every chunking must also give bit-identical logits (what makes a resumed or
 * prefix-restored sequence continue exactly as an uninterrupted one). */
float golden_check_chunks(wrk_backend_t *b, const golden_t *g, float tol, const char *label);
/* golden_check_chunks that also compares each sequence's logits bitwise with ref[seq] (an
 * array of g->n_seqs pointers): a NULL entry is filled with this run's (malloc'd; the caller
 * frees), so one backend's run becomes the reference for the next (other thread counts). */
float golden_check_chunks_ref(wrk_backend_t *b, const golden_t *g, float tol, const char *label,
                              float **ref);

/* Every fp32 case loads as the family and matches at every chunking, on every ISA this CPU
 * has, with 1, 2 and 3 threads, each thread count's logits bit-identical to the others'. */
void golden_test_chunkings(const golden_suite_t *s);

/* Ragged batches: the sequences of each fp32 case share every step at different lengths and
 * phases (sequence i wants pattern[(step + i) % 8] tokens), on slots out of order, asking for
 * logits of every row, none, or (ragged_last_row) the last; every row asked for must match its
 * golden row. */
void golden_test_ragged(const golden_suite_t *s);

/* Greedy with the model in model_dir against g: prefill the prompt, then one-token decode
 * steps; the worst |dlogit| against g's greedy logits (when it has them) and the first
 * generated token that differs (-1: none). -1 when the model or backend cannot be made. */
int golden_greedy(const golden_suite_t *s, const char *model_dir, const golden_t *g, float *worst,
                  int *mismatch_at);

/* A model shipped in models/ (`model_name`) against its fixture <golden root>/<sub>
 * (tools/gen_bundled_goldens.py): every prompt within tol and bit-identical at every chunking
 * (golden_check_chunks), and the 64 greedy tokens identical. */
void golden_test_bundled(const golden_suite_t *s, const char *sub, const char *model_name,
                         float tol);

/* Every fp32 case: 32 greedy tokens identical, their logits within tol. */
void golden_test_greedy(const golden_suite_t *s);

/* The three drivers above as the test cases of a golden test (RUN(test_chunkings); etc. in its
 * main): test_chunkings, test_ragged and test_greedy on `suite`. */
#define GOLDEN_SUITE_CASES(suite)                                                                  \
    static void test_chunkings(void)                                                               \
    {                                                                                              \
        golden_test_chunkings(&(suite));                                                           \
    }                                                                                              \
    static void test_ragged(void)                                                                  \
    {                                                                                              \
        golden_test_ragged(&(suite));                                                              \
    }                                                                                              \
    static void test_greedy(void)                                                                  \
    {                                                                                              \
        golden_test_greedy(&(suite));                                                              \
    }

/* The opt-in bf16 matmul (x rounded to bf16) on the BF16 checkpoint <family>/<model_case>
 * against the goldens of <family>/<golden_case>: every chunking within tol of them and
 * bit-identical to each other and between 1 and 2 threads, and the fixture's greedy ids up to
 * near-ties. Run as "bf16" picks it (AMX, else AVX512_BF16) and, where that was AMX, again on
 * the AVX512_BF16 path ("bf16-avx512"). Skipped, with the reason, where the CPU has neither. */
void golden_test_bf16_matmul(const golden_suite_t *s, const char *golden_case,
                             const char *model_case, float tol);

/* --weights q8 and q4 (load-time quantization, workers/README.md) on <family>/<golden_case>
 * against its fp32 goldens: every chunking within tol_q8 / tol_q4 and bit-identical to each
 * other, on every ISA this CPU has; the fingerprint names the format (native, q8 and q4
 * differ) and a model packed with one format refuses a backend asking for another. */
void golden_test_quantized(const golden_suite_t *s, const char *golden_case, float tol_q8,
                           float tol_q4);

/* A family's change to a loaded model for golden_test_discriminate: variant `which` applied in
 * place; false where it does not apply to this model (the fixture is skipped for it). */
typedef bool (*golden_mutate_fn)(wrk_model_t *m, int which);

/* Variant `which` (mutate) of the model of fixture <family>/<name>: the max |dlogit| of its
 * last sequence in chunks of 8 on 1 thread; -1 where the fixture or model cannot be loaded or
 * the variant does not apply. */
float golden_run_variant(const golden_suite_t *s, const char *name, int which,
                         golden_mutate_fn mutate);

/* The goldens must be able to fail: each of the n variants (named what[w]), applied by mutate
 * to the model of every fp32 case, runs the case's last sequence in chunks of 8 on 1 thread;
 * the largest max |dlogit| over the cases is printed ("  what: max |dlogit| ...") and must
 * exceed min_diff[w] (min_diff NULL: 100 x the suite's tol for every variant). */
void golden_test_discriminate(const golden_suite_t *s, const char *const *what, int n,
                              golden_mutate_fn mutate, const float *min_diff);

/* The state tensors tile the blob in order, without gaps. */
void golden_check_state_layout(const wrk_model_info_t *mi);

/* A slot holding q's first `cut` tokens (restored, copied) continues with the rest of q to
 * its golden logits. */
void golden_check_resume(wrk_backend_t *b, int slot, const golden_seq_t *q, int V, int cut,
                         float tol);

/* Fixed-size state: q's first `cut` tokens on slot 0, read into blob (state_bytes), slot 0
 * reset, the blob written into slot 5 and slot 5 copied to 6 (a fork); both continue to q's
 * golden logits. blob keeps the state for the caller's own checks. */
void golden_check_state_roundtrip(wrk_backend_t *b, const golden_seq_t *q, int V, int cut,
                                  float tol, void *blob);

/* Variable-size state (fixed part ending in the 8-byte "kv.n_tokens" count, then the KV of
 * every position), on a backend of m with 2 threads: the layout tiles the blob; q's first `cut`
 * tokens on slot 0 grow the state by cut x kv_bytes_per_token; reads into a short buffer
 * (one byte short, or the fixed size) are refused, an unaligned read holds the count; slot 0
 * reset, writes of the wrong length or of the fixed part alone are refused, the blob written
 * into slot 5 and slot 5 copied to 6 (a fork) both continue to q's golden logits (within the
 * suite's tol); a fresh state goes through the fixed-size API. */
void golden_check_kv_state_roundtrip(const golden_suite_t *s, const wrk_model_t *m,
                                     const golden_seq_t *q, int V, int cut);

/* Loads <family>/<name>'s weights next to its config.json with the first `from` replaced by
 * `to` (a checkpoint whose config disagrees with its tensors); wrk_model_load's result. */
int golden_load_edited(const char *family, const char *name, const char *from, const char *to,
                       char *err, size_t errlen);

/* A family's config parser for golden_test_refusals (wrk_*_config_parse of a string). */
typedef int (*golden_parse_fn)(const char *json, char *err, size_t errlen);

/* One config.json the parser must refuse: with rc, and (field non-NULL) naming field. */
typedef struct golden_refusal {
    const char *json;
    int rc;
    const char *field;
} golden_refusal_t;

/* Every refusal parses (parse, err cleared first) to its rc, the message naming its field. */
void golden_test_refusals(golden_parse_fn parse, const golden_refusal_t *r, int n);

/* One edited checkpoint for golden_test_edits: fixture <family>/<name> with the first `from`
 * of its config.json replaced by `to`; the load must return rc (GOLDEN_EDIT_FAILS: any error)
 * with every non-NULL want[] in the message. */
#define GOLDEN_EDIT_FAILS 1
typedef struct golden_edit {
    const char *name, *from, *to;
    int rc;
    const char *want[3];
} golden_edit_t;

/* Every edit loads (golden_load_edited) as it says. */
void golden_test_edits(const golden_suite_t *s, const golden_edit_t *edits, int n);

#endif
