/* daemon: the runner drives scheduler/ (sched_step) on the loop thread and runs its plans on a
 * libuv worker thread: slot moves (swap out/in to a host buffer, load, reset), one ragged
 * wrk_step, commit reads. Sampling stays with the caller (dmn_generate.c) through callbacks. */
#ifndef DMN_RUNNER_H
#define DMN_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "scheduler/sched.h"
#include "workers/wrk.h"

typedef struct dmn_runner dmn_runner_t;
typedef struct dmn_seq dmn_seq_t;
typedef struct dmn__req dmn__req_t;

typedef enum dmn_seq_ev {
    DMN_SEQ_LOGITS,  /* logits of the last fed token are in seq->logits: call _feed, _finish or
                      * _cancel before returning */
    DMN_SEQ_STARTED, /* the sequence's first step was handed to the worker (queue timing) */
    DMN_SEQ_DONE,    /* terminal: the commit feed ran and state_out holds the final state */
    DMN_SEQ_FAILED,  /* terminal: seq->rc and seq->msg say why (RCD_ECANCELLED after a _cancel
                      * that returned 1; RCD_EDEADLINE when the deadline passed while queued or
                      * preempted; a failed step's code) */
} dmn_seq_ev_t;

typedef void (*dmn_seq_cb)(dmn_seq_t *s, dmn_seq_ev_t ev);

#define DMN_SEQ_SNAPS 8 /* prefix snapshots one sequence may take */

/* Filled by the caller before dmn_runner_submit. The seq and the buffers it points to must
 * live until a terminal event, or until a _finish / _cancel that returned 0. */
struct dmn_seq {
    const int32_t *prompt; /* copied at submit; >= 1 token */
    int32_t n_prompt;
    int32_t max_new;        /* tokens the caller may sample, >= 1 (it calls _finish at the
                             * latest on the max_new-th) */
    const void *init_state; /* borrowed until a terminal event; NULL: the zero state */
    size_t init_len;        /* bytes of init_state; 0: state_bytes (a fixed-size model) */
    void *state_out;        /* caller-owned, state_cap bytes; non-NULL: the turn commits (the
                             * last sampled token is fed and the state after it copied here) */
    size_t state_cap;       /* bytes of state_out; 0: state_bytes. Models with a KV cache
                             * (variable-size state): at least dmn_runner_state_bound() */
    uint64_t kv_positions;  /* KV models: positions the turn may reach (session + prompt +
                             * max_new); 0: n_prompt + max_new */
    float *logits;          /* caller-owned, vocab floats */
    /* Prefix snapshots: the state after the first snap_at[j] prompt tokens (ascending, in
     * [1, n_prompt - 1]) is read into snap_out[j] (caller-owned, snap_cap[j] bytes; 0:
     * state_bytes) on the worker, its length into snap_len[j]: a prefill chunk that spans
     * snap_at[j] runs as two steps, split there. All are taken before the first
     * DMN_SEQ_LOGITS. Models with a KV cache: the state holds every position the slot has
     * (init_state's and the prompt's up to snap_at[j]), and a buffer too small for it fails
     * the sequence. */
    int32_t n_snaps; /* 0..DMN_SEQ_SNAPS */
    int32_t snap_at[DMN_SEQ_SNAPS];
    void *snap_out[DMN_SEQ_SNAPS];
    size_t snap_cap[DMN_SEQ_SNAPS];
    int32_t priority;     /* 0..DMN_RUNNER_PRIORITIES-1, higher first (and may preempt) */
    uint64_t tenant;      /* per-tenant share among equal priorities */
    uint64_t deadline_ns; /* uv_hrtime() clock, 0 = none: refused if it passes while queued */
    dmn_seq_cb cb;
    void *user;
    /* set by the runner */
    int rc;                /* for DMN_SEQ_FAILED */
    char msg[112];         /* for DMN_SEQ_FAILED */
    int32_t n_preemptions; /* times swapped out to host memory so far */
    size_t state_len;      /* for DMN_SEQ_DONE: bytes of the state in state_out */
    int32_t n_snapped;     /* prefix snapshots taken (the first n_snapped of snap_at) */
    size_t snap_len[DMN_SEQ_SNAPS]; /* bytes read into snap_out[j], j < n_snapped */
    dmn__req_t *req;       /* private */
};

#define DMN_RUNNER_PRIORITIES 4

typedef struct dmn_runner_config {
    int max_queue;      /* sequences held (waiting + running), as --max-queue */
    int n_host_slots;   /* host buffers for preempted states; 0: never preempt */
    int64_t aging_ms;   /* waiting this long raises a sequence's priority by one */
    int min_run_steps;  /* steps a sequence runs before it may be preempted */
    int max_inflight;   /* 2: plan step N+1 while step N runs; 1: lockstep */
    bool tenant_fair;   /* equal priorities: the tenant holding fewer slots first */
    int stats_every_ms; /* scheduler metrics logged at debug this often (0: never) */
    int prefill_chunk;  /* prefill tokens one sequence gets per step before the others get
                         * theirs (leftover budget is shared afterwards); -1: half the step
                         * budget; 0: no chunking, a prompt's prefill runs whole in one step
                         * (the backend's step budget must hold max_prompt + slots - 1) */
    int max_prompt;     /* prompt tokens, at most (needed by prefill_chunk 0; 0: no limit) */
} dmn_runner_config_t;

/* Defaults: n_host_slots = backend slots, aging 5 s, min_run_steps 8, max_inflight 2,
 * tenant_fair, stats every 10 s, prefill_chunk -1, max_prompt 0. */
void dmn_runner_config_default(dmn_runner_config_t *c, const wrk_backend_t *be, int max_queue);
int dmn_runner_create_cfg(uv_loop_t *loop, wrk_backend_t *be, const dmn_runner_config_t *cfg,
                          dmn_runner_t **out, char *err, size_t errlen);
/* dmn_runner_create_cfg with the defaults. */
int dmn_runner_create(uv_loop_t *loop, wrk_backend_t *be, int max_queue, dmn_runner_t **out);
void dmn_runner_destroy(dmn_runner_t *r); /* only when no step is in flight; NULL-safe */

/* Hands a sequence to the scheduler. Returns 0 (events follow), or a negative code with a
 * message in err when the scheduler refuses it at once: RCD_ETOOBIG (queue full, over a
 * limit), RCD_EDEADLINE (deadline already passed), RCD_EINVAL; then no event follows. */
int dmn_runner_submit(dmn_runner_t *r, dmn_seq_t *s, char *err, size_t errlen);
/* In DMN_SEQ_LOGITS: feed the sampled token; its logits come with a later event. */
void dmn_runner_feed(dmn_runner_t *r, dmn_seq_t *s, int32_t token);
/* In DMN_SEQ_LOGITS: generation ends with `last` (the token just sampled, >= 0). With
 * state_out, `last` is fed, DMN_SEQ_DONE follows and 1 is returned. Without, the runner
 * forgets the seq at once, no event follows, and 0 is returned. */
int dmn_runner_finish(dmn_runner_t *r, dmn_seq_t *s, int32_t last);
/* Ends a sequence wherever it is. Returns 0 if the runner forgot it at once (no event follows),
 * 1 if the worker is using its buffers: DMN_SEQ_FAILED with RCD_ECANCELLED follows. */
int dmn_runner_cancel(dmn_runner_t *r, dmn_seq_t *s);

int dmn_runner_held(const dmn_runner_t *r); /* sequences the runner holds */

/* Bytes of the state of a sequence holding n_positions positions: state_bytes, plus
 * n_positions * kv_bytes_per_token for a model with a KV cache (wrk_state_bytes). */
size_t dmn_runner_state_bound(const dmn_runner_t *r, uint64_t n_positions);
/* Models with a KV cache: the backend's KV pool (n_kv_blocks of kv_block_tokens positions;
 * 0: unknown, no admission). Submit then reserves ceil(dmn_seq.kv_positions / block_tokens)
 * blocks per held turn and refuses (RCD_ETOOBIG, "server busy") a turn the unreserved blocks
 * cannot hold, so a step never runs out of blocks. dmn_runner_check_positions refuses
 * (RCD_ETOOBIG, a message naming the options) a turn whose session, prompt and max tokens
 * need more positions than the pool; 0 otherwise. */
void dmn_runner_set_kv_pool(dmn_runner_t *r, int64_t n_blocks, int64_t block_tokens);
int dmn_runner_check_positions(const dmn_runner_t *r, uint64_t n_positions, char *err,
                               size_t errlen);

typedef struct dmn_runner_stats {
    sched_stats_t sched;
    uint64_t steps_run;     /* worker steps (a plan whose entries all dropped runs none) */
    uint64_t planned_ahead; /* plans issued while the worker was busy (pipelining) */
    uint64_t dropped;       /* plan entries dropped at submission (ended or stopped) */
    uint64_t swap_outs, swap_ins, loads;
    uint64_t host_bytes; /* bytes of host swap buffers allocated (grow with KV states) */
    /* KV models: the backend's KV pool after the last worker run (blocks of slots whose turn
     * ended go back before the next step, or at once when the runner falls idle) */
    int64_t kv_free_blocks, kv_total_blocks;
    uint64_t worker_us;  /* time inside work callbacks */
    uint64_t gap_us;     /* worker idle time between steps while work was ready */
} dmn_runner_stats_t;
void dmn_runner_stats(const dmn_runner_t *r, dmn_runner_stats_t *out);

#endif
