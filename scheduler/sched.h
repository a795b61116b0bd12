/* scheduler: the request queue, admission, continuous batching, chunked prefill and
 * preemption by state swap, as one pure function sched_step(sched, now, events) -> plan.
 * No syscalls, no clock reads, no tensors, no threads, no allocation after sched_create. */
#ifndef RCD_SCHED_H
#define RCD_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rcd_error.h"

typedef struct sched sched_t;

/* ---- configuration ---------------------------------------------------------------------- */

typedef struct sched_config {
    int32_t n_slots;           /* worker state slots = the running set's bound (default 8) */
    int32_t n_host_slots;      /* host-tier copies for preempted sequences; 0: never preempt */
    int32_t max_queue;         /* requests waiting for a slot, preempted ones not counted
                                * (default 256); more arrivals: RCD_ETOOBIG at once */
    int32_t step_tokens;       /* per-step token budget, >= n_slots (default 512) */
    int32_t max_chunk;         /* prefill tokens one request gets before the others get
                                * theirs, unless the rest of its prompt fits in the budget
                                * left (then it finishes); leftovers are shared afterwards
                                * (0: step_tokens/2) */
    bool no_chunking;          /* a prompt's prefill is never split: it runs whole in one
                                * step, once the budget left after the decodes holds it (needs
                                * 1 <= max_prompt_tokens <= step_tokens - n_slots + 1, so the
                                * first in prefill order always fits); max_chunk is unused */
    int32_t max_prompt_tokens; /* a longer prompt is refused at once (0: no limit) */
    int32_t max_new_tokens;    /* a larger max_new_tokens is refused at once (0: no limit) */
    int32_t n_priorities;      /* priorities are 0..n_priorities-1, higher runs first */
    int64_t aging_us;          /* each aging_us spent waiting raises a request's effective
                                * priority by one: nothing starves (0: strict priority) */
    int32_t min_run_steps;     /* steps a sequence runs before it may be preempted (anti-thrash) */
    int32_t max_inflight;      /* plans issued and not yet reported done: 1 lockstep,
                                * 2 pipelined (step N+1 is planned while step N runs) */
    int32_t max_tenant_slots; /* slots one tenant may hold while another tenant waits (0: no cap) */
    bool tenant_fair;         /* within one effective priority, the tenant holding the fewest
                               * slots goes first (then first-come-first-served) */
    int32_t max_events;       /* events one sched_step call accepts (default 1024) */
} sched_config_t;

/* Fills the defaults above. */
void sched_config_default(sched_config_t *c);
/* 0, or RCD_EINVAL with a message naming the field (for the daemon's option checks). */
int sched_config_check(const sched_config_t *c, char *err, size_t errlen);

/* ---- events (inputs) ------------------------------------------------------------------- */

typedef enum sched_event_kind {
    SCHED_EV_ARRIVE = 1, /* a new request (or a new turn of a session) */
    SCHED_EV_CANCEL,     /* the client went away or the daemon gives up on the request */
    SCHED_EV_STEP_DONE,  /* the worker finished a plan (or failed it) and sampling is done */
} sched_event_kind_t;

typedef struct sched_arrival {
    int32_t priority;       /* 0..n_priorities-1, higher first */
    uint64_t tenant;        /* owner, for per-tenant share */
    int32_t prompt_tokens;  /* >= 1: tokens to feed before the first logits */
    int32_t max_new_tokens; /* >= 0; 0 = feed the prompt only (e.g. append to a session) */
    int64_t deadline_us;    /* same clock as `now`; 0 = none. Passed while queued: rejected */
    bool resume;            /* starts from a stored state (the session's last commit): the plan
                             * LOADs it instead of RESETting the slot */
    bool commit;            /* the turn's final state is wanted: after the last token is sampled
                             * (stop or max_new_tokens) one more entry feeds it, flagged commit */
    int32_t spec_tokens;    /* speculative decoding: draft tokens to reserve in the budget beside
                             * each decode entry (sched_entry_t.n_draft), 0..16; 0: none */
} sched_arrival_t;

typedef enum sched_outcome {
    SCHED_OUT_TOKEN = 0, /* one more token sampled; the request goes on */
    SCHED_OUT_STOP,      /* a token was sampled and a stop condition ended the request */
    SCHED_OUT_FAILED,    /* this sequence failed (sampling error, bad output) */
} sched_outcome_t;

typedef struct sched_result {
    uint64_t id;
    sched_outcome_t outcome;
    /* Speculative decoding (all 0 otherwise): the entry verified n_drafted draft tokens and
     * n_extra of them were kept, so it sampled 1 + n_extra tokens (the stream advanced by as
     * many; n_extra <= n_drafted <= 16). With set_spec, spec_tokens (0..16) replaces the draft
     * tokens reserved beside the request's later decode entries. */
    int32_t n_drafted, n_extra;
    bool set_spec;
    int32_t spec_tokens;
} sched_result_t;

typedef struct sched_event {
    sched_event_kind_t kind;
    uint64_t id; /* ARRIVE, CANCEL: the caller-chosen request id (unique among live ones) */
    union {
        sched_arrival_t arrive;
        struct {
            uint64_t step; /* plan->step being reported */
            int status;    /* 0, or a negative RCD_E*: every request in it fails */
            int32_t n_results;
            const sched_result_t *results; /* borrowed for the call; one per entry that had
                                            * n_logits = 1. A missing one counts as TOKEN */
        } done;
    };
} sched_event_t;

/* ---- the plan (output) ----------------------------------------------------------------- */

typedef enum sched_move_kind {
    SCHED_MOVE_SWAP_OUT = 1, /* copy slot -> host tier under the request id; slot is then free */
    SCHED_MOVE_SWAP_IN,      /* copy the request's host-tier copy -> slot; drop the host copy */
    SCHED_MOVE_LOAD,         /* the request's stored starting state (arrival.resume) -> slot */
    SCHED_MOVE_RESET,        /* zero (initial) state -> slot, for a fresh sequence */
} sched_move_kind_t;

typedef struct sched_move {
    sched_move_kind_t kind;
    uint64_t id;
    int32_t slot;
} sched_move_t;

/* Feed tokens [start, start + n_tokens) of the request's input stream into `slot`. The input
 * stream is the prompt (positions 0..prompt_tokens-1) followed by the sampled tokens in order;
 * a decode entry feeds the token sampled from the previous logits. n_logits is 0 or 1: when 1,
 * logits are wanted for the last position and its sampled token is reported in STEP_DONE. */
typedef struct sched_entry {
    uint64_t id;
    int32_t slot;
    int32_t start;
    int32_t n_tokens;
    int32_t n_logits;
    bool decode; /* start >= prompt_tokens */
    bool commit; /* after this step the slot holds the request's final state: read it out (the
                  * turn's commit) before reporting STEP_DONE. n_logits is then 0 */
    int32_t n_draft; /* decode entries of a speculating request: up to this many draft tokens
                      * may follow the entry's token (a verify entry of 1 + n_draft tokens);
                      * they are charged to the step budget (plan.n_tokens) */
} sched_entry_t;

/* A request the scheduler is done with: completed, cancelled, expired, refused or failed. The
 * daemon ends the call with `status` and discards any host-tier copy held for the id.
 * Exception: RCD_EEXISTS refuses a second arrival with a live id; the live one goes on. */
typedef struct sched_finish {
    uint64_t id;
    int status;            /* 0 OK; RCD_ETOOBIG / RCD_EINVAL / RCD_EEXISTS / RCD_EDEADLINE (refused
                            * or expired); RCD_ECANCELLED; a failed step's code; RCD_EINTERNAL
                            * for a sequence reported FAILED */
    char msg[112];         /* human-readable reason; "" for OK */
    int32_t n_generated;   /* tokens sampled (a stop token included) */
    int32_t n_preemptions; /* times swapped out */
    int64_t queue_us;      /* arrival -> first admission (or -> finish if never admitted) */
    int64_t wait_us;       /* all time spent waiting, preempted time included */
    int64_t ttft_us;       /* arrival -> first token reported; -1 if none */
    int64_t tpot_us;       /* mean time per output token after the first; -1 if < 2 tokens */
} sched_finish_t;

/* Owned by the scheduler, valid until the next sched_step or sched_destroy. The daemon runs
 * plans in order, each as: moves in order (swap-outs come before swap-ins), then the batch as
 * one worker step, then samples, then reports STEP_DONE(step). A plan with step == 0 has
 * nothing to run. Before submitting a plan the daemon drops the entries of requests that have
 * ended (finish record, or cancelled by it) or whose STOP it has sampled but not yet reported,
 * and the moves of requests that have ended; everything else runs as planned. */
typedef struct sched_plan {
    uint64_t step; /* 1, 2, 3, ...; 0: no step this call (idle, or max_inflight reached) */
    int32_t n_moves;
    const sched_move_t *moves;
    int32_t n_entries; /* at most one per slot */
    const sched_entry_t *entries;
    int32_t n_tokens; /* sum of n_tokens + n_draft, <= step_tokens */
    int32_t n_finished;
    const sched_finish_t *finished; /* requests ended by this call (rejections included) */
} sched_plan_t;

/* ---- metrics ----------------------------------------------------------------------------- */

typedef struct sched_stats {
    uint64_t steps, entries, tokens, decode_tokens, prefill_tokens;
    uint64_t budget_tokens; /* steps * step_tokens: tokens / budget_tokens = budget use */
    uint64_t arrived, admitted, completed, cancelled, expired, rejected, failed;
    uint64_t preemptions, swap_ins, loads;
    uint64_t spec_drafted, spec_accepted; /* draft tokens verified / kept (STEP_DONE results) */
    uint64_t steps_done;
    int64_t step_us_sum, step_us_max;            /* plan issued -> STEP_DONE processed */
    int32_t running, waiting, swapped, inflight; /* now */
} sched_stats_t;

/* ---- API --------------------------------------------------------------------------------- */

/* Validates the config and allocates everything sched_step will ever need. On failure returns
 * RCD_EINVAL / RCD_ERANGE / RCD_ENOMEM with a message in err. *out is owned by the caller. */
int sched_create(const sched_config_t *cfg, sched_t **out, char *err, size_t errlen);
void sched_destroy(sched_t *s); /* NULL-safe */

/* Applies `events` in order (borrowed for the call), then plans the next step at time `now`
 * (any monotonic microsecond clock, >= 0, never decreasing). *plan points into the scheduler.
 * Per-request problems never fail the call: they end up in plan->finished. Returns RCD_EINVAL
 * for a malformed call (NULL, time going backwards, an unknown event kind, a STEP_DONE for a
 * step not in flight) and RCD_ETOOBIG for more than max_events events; then nothing is applied
 * and *plan is an empty plan. */
int sched_step(sched_t *s, int64_t now, const sched_event_t *events, int32_t n_events,
               const sched_plan_t **plan, char *err, size_t errlen);

void sched_get_stats(const sched_t *s, sched_stats_t *out);

/* The earliest deadline among requests waiting for a slot, INT64_MAX if none: a daemon with no
 * step in flight arms a timer for it and then calls sched_step with no events, so an expired
 * request is refused on time even when nothing else happens. */
int64_t sched_next_deadline(const sched_t *s);

#endif
