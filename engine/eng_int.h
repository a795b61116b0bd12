/* engine: private to engine/ — the request record, the plan FIFO, the host swap buffers and
 * the device thread's hand-off, shared by the loop side (eng_runner.c) and the device side
 * (eng_device.c). */
#ifndef ENG_INT_H
#define ENG_INT_H

#include "engine/eng_draft.h"
#include "engine/eng_draft_model.h"
#include "engine/eng_runner.h"

/* The device thread of one backend: it waits for a plan, runs it, and wakes the loop.
 * `mu` orders the hand-off both ways: the loop writes the runner's w_* fields, then sets
 * has_plan under mu; the thread writes its results, then sets finished under mu. */
typedef struct eng_dev {
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cv;
    uv_async_t *done; /* the loop's wake-up; heap, freed in its close callback */
    bool has_plan;    /* a plan waits for the thread */
    bool finished;    /* the thread ran it: the loop collects the results */
    bool stop;        /* eng_runner_destroy: exit after the plan in hand */
    bool running;     /* the thread was started (and must be joined) */
} eng_dev_t;

/* A host-tier buffer for a swapped-out state. Fixed-size models: allocated once at create
 * (state_bytes). Models with a KV cache: grown by the device thread at swap-out to the slot's
 * wrk_state_bytes and freed when it returns to the free list, so host memory follows the
 * states actually swapped out. */
typedef struct hbuf {
    void *p;
    size_t cap, len;
} hbuf_t;

/* One request as the runner sees it. Lives from submit until the scheduler has finished it
 * and no device step uses its buffers, which may be after the caller's seq is gone. */
struct eng__req {
    uint64_t id;    /* scheduler id: generation << 24 | index; 0: free record */
    eng_seq_t *seq; /* NULL once the caller was told it ended (or let it go) */
    int32_t *ctx;   /* the session's history (n_hist tokens: the loaded section, then the
                     * turn's pre-fed tokens), then toks: one buffer, what n-gram drafts see */
    int32_t n_hist;
    int32_t *toks; /* the input stream: prompt, then every sampled token (ctx + n_hist) */
    int32_t n_toks, cap_toks, n_gen, max_new;
    const void *init_state; /* borrowed from the seq */
    size_t init_len;        /* its bytes */
    float *logits;          /* the seq's */
    void *state_out;        /* the seq's */
    size_t state_cap;       /* its bytes */
    size_t state_len;       /* written by the commit read */
    hbuf_t *host;           /* host-tier buffer while swapped out */
    int64_t kv_blocks;      /* KV blocks reserved for it (KV models) */
    int32_t slot;           /* the slot it last ran in (-1: none) */
    sched_outcome_t outcome;
    bool in_step;       /* the device's current step uses its buffers */
    bool sched_done;    /* the scheduler finished it */
    bool cancelled;     /* CANCEL sent: plans for it are dropped */
    bool cancel_event;  /* the caller must still get FAILED(cancel_rc) after the step */
    int cancel_rc;      /* RCD_ECANCELLED, or RCD_EINTERNAL for an inconsistent plan */
    uint64_t stop_upto; /* STOP sampled: entries of plans up to this step are dropped (they
                         * were planned before the scheduler heard of the stop) */
    bool decided;       /* the LOGITS callback called feed, finish or cancel */
    bool started;
    /* prefix snapshots (copied from the seq at submit); next_snap: the first not yet planned;
     * w_snap_lo..w_snap_hi: those the device's current step takes */
    int32_t n_snaps, next_snap, w_snap_lo, w_snap_hi;
    int32_t snap_at[ENG_SEQ_SNAPS];
    void *snap_out[ENG_SEQ_SNAPS];
    size_t snap_cap[ENG_SEQ_SNAPS], snap_len[ENG_SEQ_SNAPS]; /* bytes of the buffer, read */
    size_t snap_need; /* nonzero: a snapshot did not fit its buffer (logged after the step) */
    /* speculative decoding: spec (the turn speculates), its policy, the logit rows of a verify
     * entry, the entry's tokens (the last sampled one, then w_k drafts) in the device's step;
     * extra: drafts kept so far (decode entries then feed the stream's last token) */
    bool spec, finished;
    eng_spec_policy_t pol;
    float *spec_logits;
    int32_t w_toks[WRK_SPEC_MAX_TOKENS];
    int32_t w_k, extra;
    /* a draft model (device thread): d_fed tokens of toks are in the draft's slot; d_buf holds
     * its state while swapped out (d_saved); spec_q: w_k x vocab, the distributions the drafts
     * were drawn from (temperature > 0); w_ntoks: the stream's length when the plan went over */
    int32_t d_fed, w_ntoks;
    bool d_saved;
    void *d_buf;
    size_t d_cap, d_len;
    uint64_t d_rng;
    eng_draft_sampling_t d_smp;
    float *spec_q;
    /* the draft state a loaded checkpoint carried (borrowed from init_state, d_init_len bytes;
     * NULL: rebuilt) and the tokens of ctx it holds; d_commit: the commit read the draft's
     * state into d_buf (d_len bytes) holding d_commit_fed tokens of ctx */
    const void *d_init;
    size_t d_init_len;
    int32_t d_init_fed, d_commit_fed;
    bool d_commit;
};

typedef struct plan_copy {
    uint64_t step;
    int32_t n_moves, n_entries;
    sched_move_t *moves;
    sched_entry_t *entries;
} plan_copy_t;

typedef struct wmove {
    sched_move_kind_t kind;
    int32_t slot;
    const void *buf; /* LOAD: the initial state (len bytes) */
    size_t len;
    hbuf_t *hb;  /* SWAP_OUT / SWAP_IN */
    size_t grew; /* bytes the device added to hb (stats) */
    eng__req_t *req;
} wmove_t;

struct eng_runner {
    uv_loop_t *loop;
    wrk_backend_t *be;
    eng_runner_config_t cfg;
    sched_t *sched;
    size_t state_bytes, kv_bpt; /* kv_bpt > 0: variable-size states (KV cache) */
    int64_t kv_positions;       /* the KV pool's positions (0: unknown) */
    /* the KV pool's blocks, tokens per block, and blocks reserved by held turns */
    int64_t kv_pool_blocks, kv_bt, kv_reserved;
    /* KV models: slots whose last occupant ended hold KV blocks until reset; the next work
     * resets those nobody has used since (slot_owner: id of the last request in a slot) */
    uint64_t *slot_owner, *pend_id;
    int32_t *pend_slot, n_pend, *w_resets, w_n_resets;
    bool w_flush;                  /* the device runs only w_resets (the runner fell idle) */
    int64_t w_kv_free, w_kv_total; /* the KV pool after the device's run */
    int w_threads;                 /* the backend's active pool threads after it */
    uint64_t w_thread_changes;
    uint64_t threads_log_ns; /* when a pool-size change was last logged (uv_hrtime) */
    int n_slots, max_moves;
    /* request records */
    eng__req_t *reqs;
    int32_t n_reqs, n_held;
    int32_t *free_recs, n_free_recs;
    uint64_t gen;
    /* host tier */
    hbuf_t *hbufs;
    hbuf_t **host_free;
    int32_t n_host_free;
    /* events for the next sched_step */
    sched_event_t *ev;
    int32_t n_ev, cap_ev;
    sched_result_t *results; /* of the STEP_DONE in ev (one at a time) */
    /* issued plans not yet handed to the device, FIFO */
    plan_copy_t *q;
    int32_t q_head, q_n;
    /* the device's step (w_*: written by the loop before the hand-off, by the device thread
     * until it reports the run done; see eng_dev_t) */
    bool busy, pumping, repump, try_plan;
    eng_dev_t dev;
    uint64_t w_step;
    int32_t w_n_moves, w_n;
    wmove_t *w_moves;
    wrk_seq_t *w_seqs;
    eng__req_t **w_reqs;
    bool *w_commit;
    int w_rc;
    char w_err[256];
    uint64_t w_us, t_done;
    bool gap_open;
    /* submit's synchronous refusal */
    eng__req_t *submitting;
    int submit_rc;
    char submit_msg[112];
    int64_t last_now;
    uint64_t last_issued; /* the newest plan's step */
    uint64_t last_stats_ns;
    eng_runner_stats_t st;
    /* speculative decoding: the draft source (NULL: off), the vocabulary, and the rollbacks
     * (wrk_spec_accept) the device runs first in its next run, before any move or step */
    eng_draft_t *draft;
    int32_t vocab;
    int32_t *acc_slot, *acc_keep, n_acc;
    /* a draft model: the device's proposal jobs (n_slots), and a failed proposal's reason (the
     * step's entries then decode plainly; logged by the loop) */
    eng_draft_job_t *w_jobs;
    /* a draft model's state rides in commits (ENG_DRAFT_SECTION): its fingerprint, the fixed
     * part of its state (0: no section, spec_history 0) and, for a draft with a KV cache, the
     * bytes per position after it */
    uint64_t draft_fp;
    size_t draft_state_bytes, draft_kv_bpt;
    int w_draft_rc;
    char w_draft_err[256];
    /* the device's run: draft states a checkpoint carried that were loaded, and that could not
     * be (the last one's code: a KV draft's pool short of blocks, a malformed blob: rebuilt);
     * draft states written back at a swap-in */
    int32_t w_draft_loaded, w_draft_load_failed, w_draft_swapped_in;
    int w_draft_load_rc;
    /* the gain check (spec_adaptive; engine/README.md, "Speculation that pays"), one gate per
     * batch-size bucket: the step in hand's bucket (-1: not a pure decode step, not measured)
     * and kind (loop), its run time up to the end of the target's step (device), the tokens
     * its entries emitted (loop, after sampling) */
    eng_spec_gate_t gate[ENG_SPEC_GATE_BUCKETS];
    int w_gate;
    bool w_spec;
    uint64_t w_step_ns;
    int32_t w_emitted;
};

/* ---- eng_device.c: the device thread ---------------------------------------------------- */
int eng__dev_start(eng_runner_t *r, char *err, size_t errlen);
void eng__dev_stop(eng_runner_t *r); /* joins the thread (after the plan in hand) and closes
                                      * the wake-up handle; idempotent */
void eng__dev_run(eng_runner_t *r);  /* loop: hands the w_* plan to the thread (r->busy) */

/* ---- eng_runner.c: called on the loop by eng_device.c ----------------------------------- */
void eng__plan_done(eng_runner_t *r); /* the thread ran the plan: sample, report, pump */
/* An inconsistency between a plan and what the runner holds: the request ends cleanly. */
void eng__fail_req(eng_runner_t *r, eng__req_t *q, const char *why);
/* eng_ext.c: the session's sections of a loaded payload (submit) and of a commit. */
int eng__ext_split(const eng_runner_t *r, const void *payload, size_t *init_len,
                   const int32_t **hist, int32_t *n_hist, const void **dsec, uint64_t *dsec_bytes,
                   char *err, size_t errlen);
size_t eng__ext_append(eng_runner_t *r, eng__req_t *q);

/* ---- eng_spec.c: speculative decoding on the loop ----------------------------------------- */
/* create: the speculation options checked, the draft source made (r->draft; NULL: off) */
int eng__spec_create(eng_runner_t *r, char *err, size_t errlen);
/* submit: q speculates (its policy; a draft state its checkpoint carried, of n_loaded history
 * tokens, kept for its LOAD) */
void eng__spec_turn_init(eng_runner_t *r, eng__req_t *q, const eng_seq_t *s, const void *dsec,
                         uint64_t dsec_bytes, int32_t n_loaded);
/* plan done: the draft model's failures, loads and swap-ins in the device's run, logged and
 * counted */
void eng__spec_run_done(eng_runner_t *r);
/* The draft tokens the scheduler reserves beside the turn's next decode entries. */
int32_t eng__spec_verify_k(eng_runner_t *r, eng__req_t *q, const sched_entry_t *e,
                           int32_t n_entries);
void eng__spec_gate_observe(eng_runner_t *r);
int32_t eng__spec_reserve(const eng__req_t *q);
/* Samples the rows of q's verify entry of k drafts (in slot) and fills its result. */
void eng__spec_sample(eng_runner_t *r, eng__req_t *q, int32_t slot, int32_t k, sched_result_t *res);

void eng__log(const eng_runner_t *r, eng_level_t lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
