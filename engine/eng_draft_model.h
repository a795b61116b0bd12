/* engine: a draft model as a draft source (--speculate draft, engine/README.md "The draft
 * model"). A second, small model of the same vocabulary runs on the target's device thread:
 * one draft state per target slot, k single-token draft steps batched over the step's
 * speculating sequences, then the target's (k + 1)-token verify entry. */
#ifndef ENG_DRAFT_MODEL_H
#define ENG_DRAFT_MODEL_H

#include "engine/eng_draft.h"

/* Whether `draft` (loaded from draft_dir) can draft for `target` (from target_dir): the same
 * vocabulary size, and when draft_dir has a tokenizer.json and target_dir has one too, the two
 * files are byte-identical. RCD_EMISMATCH with a message naming both otherwise. */
int eng_draft_model_check(const wrk_model_t *target, const char *target_dir,
                          const wrk_model_t *draft, const char *draft_dir, char *err,
                          size_t errlen);

/* A draft source over `be`, the draft model's backend (borrowed: it must outlive the source;
 * every call is made on the thread that steps it). `be` needs 2 * n_slots slots (slot s holds
 * the draft state beside the target's slot s; n_slots + s is the scratch its proposals run in)
 * and a step budget of at least n_slots tokens. RCD_EINVAL otherwise. */
int eng_draft_model_create(wrk_backend_t *be, int n_slots, eng_draft_t **out, char *err,
                           size_t errlen);

/* The draft's draw from one row of logits (w, V floats; overwritten): greedy (temperature 0)
 * returns the argmax (the lowest id of the largest finite value) and leaves w as it is;
 * otherwise the daemon's processing without penalties (non-finite → -inf, top-k, softmax at
 * the temperature, min-p, top-p, in that order, as daemon/dmn_sample.c) leaves in w the
 * distribution q it draws from (zeros outside the kept ids, summing to 1) and returns the
 * draw. idx: V ints of scratch; rng: the sequence's generator state (eng_draft_rng_seed). */
int32_t eng_draft_sample(const eng_draft_sampling_t *sp, float *w, int V, int32_t *idx,
                         uint64_t *rng);
uint64_t eng_draft_rng_seed(uint64_t seed);

/* The draft state in a session's checkpoint: the extension section ENG_DRAFT_SECTION
 * (statestore/ckpt_ext.h), elem 1, of ENG_DRAFT_SECTION_HEAD + the state's bytes: u64 the
 * draft model's fingerprint, u64 lag (the newest `lag` tokens of the session's history are not
 * in the state yet; 1 or more), then the draft's state as wrk_state_read_n gives it: its
 * state_bytes, and for a draft with a KV cache the KV of every position it holds after them
 * (kv_bytes_per_token each). */
#define ENG_DRAFT_SECTION "draft.state"
#define ENG_DRAFT_SECTION_HEAD 16
/* Writes the header into dst (ENG_DRAFT_SECTION_HEAD bytes). */
void eng_draft_section_head(void *dst, uint64_t fingerprint, uint64_t lag);
/* The state in a section's bytes (*state, *state_len) and its lag, or false when the section
 * is not one this draft model can use (another fingerprint, a size that is not state_bytes +
 * a whole number of positions of kv_bpt bytes — kv_bpt 0: exactly state_bytes —, a lag
 * outside [1, max_lag]): then the draft is rebuilt from the history, never an error. The
 * state's own position count is checked where it is loaded (wrk_state_write_n). */
bool eng_draft_section_use(const void *data, uint64_t bytes, uint64_t fingerprint,
                           size_t state_bytes, size_t kv_bpt, int32_t max_lag, const void **state,
                           size_t *state_len, int32_t *lag);

#endif
