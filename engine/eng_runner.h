/* engine: the runner drives scheduler/ (sched_step) on the loop thread and runs its plans on
 * the backend's device thread: slot moves (swap out/in to a host buffer, load, reset), one
 * ragged wrk_step, commit reads. It knows no RPC: sampling stays with the caller (the daemon's
 * dmn_generate.c) through callbacks. Every call below is made on the loop thread. */
#ifndef ENG_RUNNER_H
#define ENG_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine/eng_draft.h"
#include "scheduler/sched.h"
#include "workers/wrk.h"

typedef struct eng_runner eng_runner_t;
typedef struct eng_seq eng_seq_t;
typedef struct eng__req eng__req_t;

typedef enum eng_seq_ev {
    ENG_SEQ_LOGITS,  /* logits of the last fed token are in seq->logits: call _feed, _finish or
                      * _cancel before returning */
    ENG_SEQ_STARTED, /* the sequence's first step was handed to the device (queue timing) */
    ENG_SEQ_DONE,    /* terminal: the commit feed ran and state_out holds the final state */
    ENG_SEQ_FAILED,  /* terminal: seq->rc and seq->msg say why (RCD_ECANCELLED after a _cancel
                      * that returned 1; RCD_EDEADLINE when the deadline passed while queued or
                      * preempted; a failed step's code) */
} eng_seq_ev_t;

typedef void (*eng_seq_cb)(eng_seq_t *s, eng_seq_ev_t ev);

/* Logs: a level, an event name and a message (the daemon adds its ids and formatting). */
typedef enum eng_level { ENG_DEBUG, ENG_INFO, ENG_WARN, ENG_ERROR } eng_level_t;
typedef void (*eng_log_cb)(void *user, eng_level_t lvl, const char *event, const char *msg);

#define ENG_SEQ_SNAPS 8 /* prefix snapshots one sequence may take */

/* Filled by the caller before eng_runner_submit. The seq and the buffers it points to must
 * live until a terminal event, or until a _finish / _cancel that returned 0. */
struct eng_seq {
    const int32_t *prompt; /* copied at submit; >= 1 token */
    int32_t n_prompt;
    int32_t max_new;        /* tokens the caller may sample, >= 1 (it calls _finish at the
                             * latest on the max_new-th) */
    const void *init_state; /* borrowed until a terminal event; NULL: the zero state. A
                             * session's committed payload: the state, then its extension
                             * sections (statestore/ckpt_ext.h; the token history), which the
                             * runner splits off at submit (malformed: RCD_ECORRUPT) */
    size_t init_len;        /* bytes of init_state; 0: state_bytes (a fixed-size model) */
    void *state_out;        /* caller-owned, state_cap bytes; non-NULL: the turn commits (the
                             * last sampled token is fed and the state after it copied here,
                             * followed by the session's sections: the updated history) */
    size_t state_cap;       /* bytes of state_out; 0: state_bytes. Models with a KV cache
                             * (variable-size state): at least eng_runner_state_bound(). Add
                             * eng_runner_ext_bound() for the sections (without room for them
                             * the state is committed alone, and the history is lost) */
    uint64_t kv_positions;  /* KV models: positions the turn may reach (session + prompt +
                             * max_new); 0: n_prompt + max_new */
    float *logits;          /* caller-owned, vocab floats */
    /* Prefix snapshots: the state after the first snap_at[j] prompt tokens (ascending, in
     * [1, n_prompt - 1]) is read into snap_out[j] (caller-owned, snap_cap[j] bytes; 0:
     * state_bytes) on the device thread, its length into snap_len[j]: a prefill chunk that spans
     * snap_at[j] runs as two steps, split there. All are taken before the first
     * ENG_SEQ_LOGITS. Models with a KV cache: the state holds every position the slot has
     * (init_state's and the prompt's up to snap_at[j]), and a buffer too small for it fails
     * the sequence. */
    int32_t n_snaps; /* 0..ENG_SEQ_SNAPS */
    int32_t snap_at[ENG_SEQ_SNAPS];
    void *snap_out[ENG_SEQ_SNAPS];
    size_t snap_cap[ENG_SEQ_SNAPS];
    int32_t priority;     /* 0..ENG_RUNNER_PRIORITIES-1, higher first (and may preempt) */
    uint64_t tenant;      /* per-tenant share among equal priorities */
    uint64_t deadline_ns; /* uv_hrtime() clock, 0 = none: refused if it passes while queued */
    /* Tokens of this turn that init_state already holds and that are not fed again (a cached
     * prompt prefix before `prompt`): they join the session's token history ahead of the
     * prompt. Borrowed until submit returns. */
    const int32_t *pre_fed;
    int32_t n_pre_fed;
    eng_seq_cb cb;
    void *user;
    bool no_speculate; /* never speculate for this turn (the runner's spec_mode otherwise) */
    /* ENG_SPEC_DRAFT: how the draft model draws this turn's drafts (the caller's temperature,
     * top-k/p, min-p and seed; zeros: greedy) */
    eng_draft_sampling_t draft_sampling;
    /* Set by the runner for each ENG_SEQ_LOGITS: spec_draft is the draft token this row of a
     * verify entry checks (-1: a plain row, or the row after the last draft); spec_q, with a
     * draft model at temperature > 0, the distribution (vocab floats) the draft drew it from:
     * the caller then samples with the speculative rule (accept spec_draft with probability
     * min(1, p/q), else draw from norm(max(0, p - q))); NULL: sample plainly. */
    int32_t spec_draft;
    const float *spec_q;
    /* set by the runner */
    uint32_t spec_drafted;  /* draft tokens verified for this turn */
    uint32_t spec_accepted; /* of them, kept (each one a token sampled without its own step) */
    int rc;                         /* for ENG_SEQ_FAILED */
    char msg[112];                  /* for ENG_SEQ_FAILED */
    int32_t n_preemptions;          /* times swapped out to host memory so far */
    size_t state_len;               /* for ENG_SEQ_DONE: bytes in state_out (state and
                                     * sections: the payload to commit) */
    int32_t n_snapped;              /* prefix snapshots taken (the first n_snapped of snap_at) */
    size_t snap_len[ENG_SEQ_SNAPS]; /* bytes read into snap_out[j], j < n_snapped */
    eng__req_t *req;                /* private */
};

#define ENG_RUNNER_PRIORITIES 4

/* Speculative decoding (engine/README.md, "Speculative decoding"): where drafts come from. */
typedef enum eng_spec_mode {
    ENG_SPEC_OFF = 0,
    ENG_SPEC_NGRAM, /* prompt lookup over the turn's prompt and generated tokens */
    ENG_SPEC_DRAFT, /* a draft model (eng_runner_config_t.draft_be) */
} eng_spec_mode_t;

typedef struct eng_runner_config {
    int max_queue;      /* sequences held (waiting + running), as --max-queue */
    int n_host_slots;   /* host buffers for preempted states; 0: never preempt */
    int64_t aging_ms;   /* waiting this long raises a sequence's priority by one */
    int min_run_steps;  /* steps a sequence runs before it may be preempted */
    int max_inflight;   /* 2: plan step N+1 while step N runs; 1: lockstep */
    bool tenant_fair;   /* equal priorities: the tenant holding fewer slots first */
    int max_tenant_slots; /* slots one tenant may hold while another's turn waits (0: no cap;
                           * above the backend's slots: its slots) */
    int stats_every_ms; /* scheduler metrics logged at debug this often (0: never) */
    int prefill_chunk;  /* prefill tokens one sequence gets per step before the others get
                         * theirs (leftover budget is shared afterwards); -1: half the step
                         * budget; 0: no chunking, a prompt's prefill runs whole in one step
                         * (the backend's step budget must hold max_prompt + slots - 1) */
    int max_prompt;     /* prompt tokens, at most (needed by prefill_chunk 0; 0: no limit) */
    /* Models with a KV cache: the backend's KV pool, n_kv_blocks of kv_block_tokens positions
     * (the values eng_backend_opts_fill put in its options; 0: unknown, no admission). Submit
     * then reserves ceil(eng_seq.kv_positions / kv_block_tokens) blocks per held turn and
     * refuses (RCD_ETOOBIG, "server busy") a turn the unreserved blocks cannot hold, so a step
     * never runs out of blocks. */
    int64_t kv_blocks, kv_block_tokens;
    eng_log_cb log; /* where the engine's logs go; NULL: info and above to stderr */
    void *log_user;
    /* Speculative decoding: decode entries become verify entries of 1 + k tokens, k <=
     * spec_tokens (1..ENG_DRAFT_MAX) adapting per sequence to its acceptance, none in a step of
     * more than spec_max_batch sequences (0: no limit). A backend without verify entries
     * (wrk_spec_supported false) does not speculate (logged once at create). */
    eng_spec_mode_t spec_mode;
    int spec_tokens;
    int spec_max_batch;
    /* The gain check (--spec-adaptive): time decode steps with and without verify entries and
     * pause speculation (per batch-size bucket, exponential back-off) while it emits fewer
     * tokens per second than plain decoding (eng_spec_gate_t). Off in the defaults. */
    bool spec_adaptive;
    /* ENG_SPEC_DRAFT: the draft model's backend (borrowed; outlives the runner; stepped on the
     * runner's device thread): the target's vocabulary, 2 x the target's slots, a step budget
     * of at least the target's slots (engine/README.md, "The draft model"). */
    wrk_backend_t *draft_be;
    /* Session token history (--spec-history): the last spec_history tokens a session has seen
     * (every turn's prompt and generated tokens, in order) ride in its checkpoint as the
     * CKPT_EXT_HIST section, whatever spec_mode is; n-gram drafts look them up with the turn's
     * own. 0..ENG_SPEC_HISTORY_MAX; 0 keeps none (commits write the format without sections). */
    int32_t spec_history;
} eng_runner_config_t;
#define ENG_SPEC_HISTORY_DEFAULT 8192
#define ENG_SPEC_HISTORY_MAX 1048576

/* What the engine decides in the backend's options, before the backend is created from them:
 * every default filled in (wrk_backend_opts_resolve, so the pool below is the one the backend
 * will make), and with prefill_chunk 0 a step budget that holds a whole prompt and the other
 * slots' decodes (max_prompt + n_slots - 1). Give the runner the same pool
 * (eng_runner_config_t.kv_blocks / kv_block_tokens; a model without KV layers ignores it).
 * RCD_EINVAL with a message when an option is out of range. */
int eng_backend_opts_fill(wrk_backend_opts_t *bo, int prefill_chunk, int max_prompt, char *err,
                          size_t errlen);

/* Defaults: n_host_slots = backend slots, aging 5 s, min_run_steps 8, max_inflight 2,
 * tenant_fair, stats every 10 s, prefill_chunk -1, max_prompt 0, no KV pool, logs to stderr,
 * speculation off (spec_tokens 4, spec_max_batch ENG_SPEC_MAX_BATCH when turned on), history
 * ENG_SPEC_HISTORY_DEFAULT tokens. */
#define ENG_SPEC_MAX_BATCH 4
void eng_runner_config_default(eng_runner_config_t *c, const wrk_backend_t *be, int max_queue);
/* Starts the backend's device thread (one per runner; every wrk_step and state move of `be`
 * runs on it from now on) and a wake-up handle on `loop`, which keeps the loop alive only
 * while a plan runs. */
int eng_runner_create_cfg(uv_loop_t *loop, wrk_backend_t *be, const eng_runner_config_t *cfg,
                          eng_runner_t **out, char *err, size_t errlen);
/* eng_runner_create_cfg with the defaults. */
int eng_runner_create(uv_loop_t *loop, wrk_backend_t *be, int max_queue, eng_runner_t **out);
/* Joins the device thread (after the plan it runs, if any: its results are dropped, no event
 * follows) and closes the wake-up handle: call it before uv_loop_close, and let the loop turn
 * once more (uv_run) so the handle's close callback frees it. NULL-safe. */
void eng_runner_destroy(eng_runner_t *r);

/* Hands a sequence to the scheduler. Returns 0 (events follow), or a negative code with a
 * message in err when the scheduler refuses it at once: RCD_ETOOBIG (queue full, over a
 * limit), RCD_EDEADLINE (deadline already passed), RCD_EINVAL; then no event follows. */
int eng_runner_submit(eng_runner_t *r, eng_seq_t *s, char *err, size_t errlen);
/* In ENG_SEQ_LOGITS: feed the sampled token; its logits come with a later event. */
void eng_runner_feed(eng_runner_t *r, eng_seq_t *s, int32_t token);
/* In ENG_SEQ_LOGITS: generation ends with `last` (the token just sampled, >= 0). With
 * state_out, `last` is fed, ENG_SEQ_DONE follows and 1 is returned. Without, the runner
 * forgets the seq at once, no event follows, and 0 is returned. */
int eng_runner_finish(eng_runner_t *r, eng_seq_t *s, int32_t last);
/* Ends a sequence wherever it is. Returns 0 if the runner forgot it at once (no event follows),
 * 1 if the device is using its buffers: ENG_SEQ_FAILED with RCD_ECANCELLED follows. */
int eng_runner_cancel(eng_runner_t *r, eng_seq_t *s);

int eng_runner_held(const eng_runner_t *r); /* sequences the runner holds */

/* Bytes of the state of a sequence holding n_positions positions: state_bytes, plus
 * n_positions * kv_bytes_per_token for a model with a KV cache (wrk_state_bytes). */
size_t eng_runner_state_bound(const eng_runner_t *r, uint64_t n_positions);
/* Bytes a commit appends after the state for the session's sections, at most, for a turn
 * whose state holds up to n_positions positions (as eng_runner_state_bound's): the history of
 * spec_history tokens (4 per token plus 72), and with a draft model its state (16 + the
 * draft's state_bytes, + n_positions x its kv_bytes_per_token for a draft with a KV cache: the
 * draft holds no more positions than the model) and 48 more; 0 when spec_history is 0. A
 * commit buffer without room for the draft's state commits the history alone (the next turn
 * rebuilds the draft), without room for the history the state alone. */
size_t eng_runner_ext_bound(const eng_runner_t *r, uint64_t n_positions);
/* Models with a KV cache: refuses (RCD_ETOOBIG, a message naming the options) a turn whose
 * session, prompt and max tokens need more positions than the pool; 0 otherwise. */
int eng_runner_check_positions(const eng_runner_t *r, uint64_t n_positions, char *err,
                               size_t errlen);

typedef struct eng_runner_stats {
    sched_stats_t sched;
    uint64_t steps_run;     /* device steps (a plan whose entries all dropped runs none) */
    uint64_t planned_ahead; /* plans issued while the device was busy (pipelining) */
    uint64_t dropped;       /* plan entries dropped at submission (ended or stopped) */
    uint64_t swap_outs, swap_ins, loads;
    uint64_t host_bytes; /* bytes of host swap buffers allocated (grow with KV states) */
    /* KV models: the backend's KV pool after the last device run (blocks of slots whose turn
     * ended go back before the next step, or at once when the runner falls idle) */
    int64_t kv_free_blocks, kv_total_blocks;
    /* The backend's pool threads running steps after the last device run (0 without a pool)
     * and how often that count has changed (adapt_threads) */
    int threads_active;
    uint64_t thread_changes;
    uint64_t worker_us;      /* time the device thread spent running plans */
    uint64_t spec_verifies;  /* verify entries run (sched.spec_drafted / spec_accepted: tokens) */
    bool spec_on;            /* the runner speculates (spec_mode on and the backend verifies) */
    uint64_t draft_resumed;  /* turns whose draft-model state came from their checkpoint (the
                              * others' drafts are rebuilt over the session's history) */
    uint64_t draft_swap_ins; /* draft-model states written back at a swap-in (the others are
                              * rebuilt over the stream) */
    uint64_t gap_us;         /* device idle time between steps while work was ready */
    uint64_t spec_pauses;    /* spec_adaptive: times a gate paused speculation */
    uint64_t spec_paused_steps; /* steps planned plainly because their bucket was paused */
} eng_runner_stats_t;
void eng_runner_stats(const eng_runner_t *r, eng_runner_stats_t *out);

#endif
