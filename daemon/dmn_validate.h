/* daemon: the checks each RPC runs on its unpacked request before it touches the store, the
 * tokenizer or the engine, as pure functions of the message and the daemon's limits: the
 * handlers call them, and so does the request fuzz target (tests/fuzz/fuzz_request.c). */
#ifndef DMN_VALIDATE_H
#define DMN_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>

#include "recurd/v1/inference.pb-c.h"

#define DMN_MAX_STOPS 16
#define DMN_MAX_STOP_BYTES 256
#define DMN_MAX_STOP_IDS 1024
#define DMN_MAX_LOGPROBS 20

/* What a request is checked against (borrowed; filled by dmn_limits_get from the server). */
typedef struct dmn_limits {
    const char *model_id; /* the loaded model: a request naming another → NOT_FOUND */
    int vocab;            /* token ids in [0, vocab) */
    long max_context;     /* --max-context: bounds max_tokens */
    long max_prompt;      /* --max-prompt tokens; prompt text at most 64 bytes per token */
    int priorities;       /* Generate priorities in [0, priorities) */
    bool has_tokenizer;   /* false: text prompts → FAILED_PRECONDITION */
} dmn_limits_t;

/* Each returns 0 or an RCD_E* code with a message in err (the status details sent). */
int dmn_validate_model(const char *model, const dmn_limits_t *lim, char *err, size_t errlen);
/* At most STORE_META_MAX entries, keys non-empty (the store checks the rest). */
int dmn_validate_meta(Recurd__V1__MetadataEntry *const *md, size_t n, char *err, size_t errlen);
int dmn_validate_sampling(const Recurd__V1__SamplingParams *p, const dmn_limits_t *lim, char *err,
                          size_t errlen);
/* text_len: the prompt text's wire length (dmn_wire_t.text_len), since it may hold NUL bytes.
 * Checks model, sampling, priority, the prompt's shape (not its encoding), session id syntax
 * and expected_version. */
int dmn_validate_generate(const Recurd__V1__GenerateRequest *req, size_t text_len,
                          const dmn_limits_t *lim, char *err, size_t errlen);
int dmn_validate_create(const Recurd__V1__CreateSessionRequest *req, const dmn_limits_t *lim,
                        char *err, size_t errlen);
int dmn_validate_fork(const Recurd__V1__ForkSessionRequest *req, char *err, size_t errlen);
int dmn_validate_detokenize(const Recurd__V1__DetokenizeRequest *req, const dmn_limits_t *lim,
                            char *err, size_t errlen);

#endif
