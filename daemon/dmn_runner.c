/* daemon: the runner (see dmn_runner.h). The loop thread owns the scheduler, the request
 * records and a small FIFO of issued plans; the worker thread runs one plan at a time
 * (moves, wrk_step, commit reads) through uv_queue_work. With max_inflight = 2, plan N+1 is
 * made while step N runs; only sampling of step N and the submission of N+1 sit between two
 * worker steps (N+1's decodes feed the tokens sampled from N's logits). */
#include "daemon/dmn_runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_log.h"

/* A host-tier buffer for a swapped-out state. Fixed-size models: allocated once at create
 * (state_bytes). Models with a KV cache: grown by the worker at swap-out to the slot's
 * wrk_state_bytes and freed when it returns to the free list, so host memory follows the
 * states actually swapped out. */
typedef struct hbuf {
    void *p;
    size_t cap, len;
} hbuf_t;

/* One request as the runner sees it. Lives from submit until the scheduler has finished it
 * and no worker step uses its buffers, which may be after the caller's seq is gone. */
struct dmn__req {
    uint64_t id;    /* scheduler id: generation << 24 | index; 0: free record */
    dmn_seq_t *seq; /* NULL once the caller was told it ended (or let it go) */
    int32_t *toks;  /* the input stream: prompt, then every sampled token */
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
    bool in_step;       /* the worker's current step uses its buffers */
    bool sched_done;    /* the scheduler finished it */
    bool cancelled;     /* CANCEL sent: plans for it are dropped */
    bool cancel_event;  /* the caller must still get FAILED(cancel_rc) after the step */
    int cancel_rc;      /* RCD_ECANCELLED, or RCD_EINTERNAL for an inconsistent plan */
    uint64_t stop_upto; /* STOP sampled: entries of plans up to this step are dropped (they
                         * were planned before the scheduler heard of the stop) */
    bool decided;       /* the LOGITS callback called feed, finish or cancel */
    bool started;
    /* prefix snapshots (copied from the seq at submit); next_snap: the first not yet planned;
     * w_snap_lo..w_snap_hi: those the worker's current step takes */
    int32_t n_snaps, next_snap, w_snap_lo, w_snap_hi;
    int32_t snap_at[DMN_SEQ_SNAPS];
    void *snap_out[DMN_SEQ_SNAPS];
    size_t snap_cap[DMN_SEQ_SNAPS], snap_len[DMN_SEQ_SNAPS]; /* bytes of the buffer, read */
    size_t snap_need; /* nonzero: a snapshot did not fit its buffer (logged after the step) */
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
    size_t grew; /* bytes the worker added to hb (stats) */
    dmn__req_t *req;
} wmove_t;

struct dmn_runner {
    uv_loop_t *loop;
    wrk_backend_t *be;
    dmn_runner_config_t cfg;
    sched_t *sched;
    size_t state_bytes, kv_bpt; /* kv_bpt > 0: variable-size states (KV cache) */
    int64_t kv_positions;       /* the KV pool's positions (0: unknown) */
    /* the KV pool's blocks, tokens per block, and blocks reserved by held turns */
    int64_t kv_pool_blocks, kv_bt, kv_reserved;
    /* KV models: slots whose last occupant ended hold KV blocks until reset; the next work
     * resets those nobody has used since (slot_owner: id of the last request in a slot) */
    uint64_t *slot_owner, *pend_id;
    int32_t *pend_slot, n_pend, *w_resets, w_n_resets;
    bool w_flush;                   /* the worker runs only w_resets (the runner fell idle) */
    int64_t w_kv_free, w_kv_total; /* the KV pool after the worker's run */
    int n_slots, max_moves;
    /* request records */
    dmn__req_t *reqs;
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
    /* issued plans not yet handed to the worker, FIFO */
    plan_copy_t *q;
    int32_t q_head, q_n;
    /* the worker's step */
    bool busy, pumping, repump, try_plan;
    uv_work_t work;
    uint64_t w_step;
    int32_t w_n_moves, w_n;
    wmove_t *w_moves;
    wrk_seq_t *w_seqs;
    dmn__req_t **w_reqs;
    bool *w_commit;
    int w_rc;
    char w_err[256];
    uint64_t w_us, t_done;
    bool gap_open;
    /* submit's synchronous refusal */
    dmn__req_t *submitting;
    int submit_rc;
    char submit_msg[112];
    int64_t last_now;
    uint64_t last_issued; /* the newest plan's step */
    uint64_t last_stats_ns;
    dmn_runner_stats_t st;
};

static void pump(dmn_runner_t *r);

/* ---- records ------------------------------------------------------------------------------ */

static dmn__req_t *lookup(dmn_runner_t *r, uint64_t id)
{
    uint64_t i = id & 0xffffff;
    if (i >= (uint64_t)r->n_reqs || r->reqs[i].id != id) return NULL;
    return &r->reqs[i];
}

/* Returns a host buffer to the free list (a KV model's memory goes back to the allocator). */
static void host_put(dmn_runner_t *r, hbuf_t *hb)
{
    if (r->kv_bpt) {
        r->st.host_bytes -= hb->cap;
        free(hb->p);
        hb->p = NULL;
        hb->cap = 0;
    }
    hb->len = 0;
    r->host_free[r->n_host_free++] = hb;
}

size_t dmn_runner_state_bound(const dmn_runner_t *r, uint64_t n_positions)
{
    if (!r->kv_bpt) return r->state_bytes;
    if (n_positions > (SIZE_MAX - r->state_bytes) / r->kv_bpt) return SIZE_MAX;
    return r->state_bytes + (size_t)n_positions * r->kv_bpt;
}

void dmn_runner_set_kv_pool(dmn_runner_t *r, int64_t n_blocks, int64_t block_tokens)
{
    if (n_blocks <= 0 || block_tokens <= 0) n_blocks = block_tokens = 0;
    r->kv_pool_blocks = n_blocks;
    r->kv_bt = block_tokens;
    r->kv_positions = n_blocks * block_tokens;
}

int dmn_runner_check_positions(const dmn_runner_t *r, uint64_t n_positions, char *err,
                               size_t errlen)
{
    if (!r->kv_bpt || !r->kv_positions || n_positions <= (uint64_t)r->kv_positions) return 0;
    return rcd_fail(RCD_ETOOBIG, err, errlen,
                    "session, prompt and max_tokens need %llu KV positions, the KV cache holds "
                    "%lld (--kv-blocks x --kv-block-tokens)",
                    (unsigned long long)n_positions, (long long)r->kv_positions);
}

static void rec_release(dmn_runner_t *r, dmn__req_t *q)
{
    if (q->host) host_put(r, q->host);
    r->kv_reserved -= q->kv_blocks;
    if (r->kv_bpt && q->slot >= 0) { /* its KV blocks: see submit_plan (one entry per slot) */
        int32_t i = 0;
        while (i < r->n_pend && r->pend_slot[i] != q->slot)
            i++;
        r->pend_slot[i] = q->slot;
        r->pend_id[i] = q->id;
        if (i == r->n_pend) r->n_pend++;
    }
    free(q->toks);
    int32_t i = (int32_t)(q - r->reqs);
    memset(q, 0, sizeof(*q));
    r->free_recs[r->n_free_recs++] = i;
    r->n_held--;
}

static void rec_maybe_release(dmn_runner_t *r, dmn__req_t *q)
{
    if (q->id && q->sched_done && !q->in_step && !q->seq) rec_release(r, q);
}

static bool rec_dead(const dmn__req_t *q)
{
    return q->sched_done || q->cancelled;
}

static void push_event(dmn_runner_t *r, const sched_event_t *e)
{
    if (r->n_ev == r->cap_ev) { /* bounded by records; a full buffer is a bug, not input */
        dmn_log(DMN_ERROR, "runner", NULL, NULL, "event buffer full (%d)", r->cap_ev);
        return;
    }
    r->ev[r->n_ev++] = *e;
}

static void send_cancel(dmn_runner_t *r, dmn__req_t *q)
{
    if (q->cancelled || q->sched_done) return;
    q->cancelled = true;
    sched_event_t e = {.kind = SCHED_EV_CANCEL, .id = q->id};
    push_event(r, &e);
}

/* The caller is told the sequence ended (rc, msg) and forgotten. */
static void deliver(dmn__req_t *q, dmn_seq_ev_t ev, int rc, const char *msg)
{
    dmn_seq_t *s = q->seq;
    if (!s) return;
    q->seq = NULL;
    s->req = NULL;
    s->rc = rc;
    snprintf(s->msg, sizeof(s->msg), "%s", msg ? msg : "");
    s->cb(s, ev);
}

/* An inconsistency between the plan and what the runner holds: end the request cleanly. */
static void fail_req(dmn_runner_t *r, dmn__req_t *q, const char *why)
{
    dmn_log(DMN_ERROR, "runner", NULL, NULL, "request %llx: %s", (unsigned long long)q->id, why);
    send_cancel(r, q);
    if (!q->in_step)
        deliver(q, DMN_SEQ_FAILED, RCD_EINTERNAL, why);
    else
        q->cancel_event = true, q->cancel_rc = RCD_EINTERNAL;
}

/* ---- create / destroy -------------------------------------------------------------------- */

void dmn_runner_config_default(dmn_runner_config_t *c, const wrk_backend_t *be, int max_queue)
{
    memset(c, 0, sizeof(*c));
    c->max_queue = max_queue;
    c->n_host_slots = be ? wrk_backend_n_slots(be) : 8;
    c->aging_ms = 5000;
    c->min_run_steps = 8;
    c->max_inflight = 2;
    c->tenant_fair = true;
    c->stats_every_ms = 10000;
    c->prefill_chunk = -1;
}

int dmn_runner_create(uv_loop_t *loop, wrk_backend_t *be, int max_queue, dmn_runner_t **out)
{
    dmn_runner_config_t c;
    dmn_runner_config_default(&c, be, max_queue);
    char err[200];
    int rc = dmn_runner_create_cfg(loop, be, &c, out, err, sizeof(err));
    if (rc) dmn_log(DMN_ERROR, "runner", NULL, NULL, "%s", err);
    return rc;
}

int dmn_runner_create_cfg(uv_loop_t *loop, wrk_backend_t *be, const dmn_runner_config_t *cfg,
                          dmn_runner_t **out, char *err, size_t errlen)
{
    int rc = 0;
    dmn_runner_t *r = calloc(1, sizeof(*r));
    if (!r) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    r->loop = loop;
    r->be = be;
    r->cfg = *cfg;
    r->n_slots = wrk_backend_n_slots(be);
    r->state_bytes = wrk_model_info(wrk_backend_model(be))->state_bytes;
    r->kv_bpt = wrk_model_info(wrk_backend_model(be))->n_kv_layers > 0
                    ? wrk_model_info(wrk_backend_model(be))->kv_bytes_per_token
                    : 0;

    sched_config_t sc;
    sched_config_default(&sc);
    sc.n_slots = wrk_backend_n_slots(be);
    sc.step_tokens = wrk_backend_max_step_tokens(be);
    /* --max-queue counts every held turn; the scheduler's queue only the waiting ones. */
    sc.max_queue =
        cfg->max_queue > wrk_backend_n_slots(be) ? cfg->max_queue - wrk_backend_n_slots(be) : 1;
    sc.n_host_slots = cfg->n_host_slots;
    sc.n_priorities = DMN_RUNNER_PRIORITIES;
    sc.aging_us = cfg->aging_ms * 1000;
    sc.min_run_steps = cfg->min_run_steps;
    sc.max_inflight = cfg->max_inflight;
    sc.tenant_fair = cfg->tenant_fair;
    sc.max_prompt_tokens = cfg->max_prompt > 0 ? cfg->max_prompt : 0;
    if (cfg->prefill_chunk == 0)
        sc.no_chunking = true;
    else if (cfg->prefill_chunk > 0)
        sc.max_chunk = cfg->prefill_chunk < sc.step_tokens ? cfg->prefill_chunk : sc.step_tokens;
    r->n_reqs = 2 * sc.n_slots + sc.max_queue + sc.n_host_slots + 1;
    if (cfg->max_queue < 1 || cfg->n_host_slots < 0 || r->n_reqs >= (1 << 24)) {
        rc = rcd_fail(RCD_EINVAL, err, errlen, "runner: max_queue %d / host slots %d out of range",
                      cfg->max_queue, cfg->n_host_slots);
        goto fail;
    }
    sc.max_events = r->n_reqs + 4;
    if ((rc = sched_create(&sc, &r->sched, err, errlen))) goto fail;

    r->max_moves = 4 * r->n_slots;
    r->cap_ev = sc.max_events;
    int32_t nq = cfg->max_inflight;
    r->reqs = calloc((size_t)r->n_reqs, sizeof(*r->reqs));
    r->free_recs = malloc(sizeof(int32_t) * (size_t)r->n_reqs);
    r->host_free = calloc((size_t)cfg->n_host_slots + 1, sizeof(hbuf_t *));
    r->hbufs = calloc((size_t)cfg->n_host_slots + 1, sizeof(hbuf_t));
    r->ev = calloc((size_t)r->cap_ev, sizeof(*r->ev));
    r->results = calloc((size_t)r->n_slots, sizeof(*r->results));
    r->q = calloc((size_t)nq, sizeof(*r->q));
    r->w_moves = calloc((size_t)r->max_moves, sizeof(*r->w_moves));
    r->w_seqs = calloc((size_t)r->n_slots, sizeof(*r->w_seqs));
    r->w_reqs = calloc((size_t)r->n_slots, sizeof(*r->w_reqs));
    r->w_commit = calloc((size_t)r->n_slots, sizeof(*r->w_commit));
    r->slot_owner = calloc((size_t)r->n_slots, sizeof(uint64_t));
    r->pend_id = calloc((size_t)r->n_slots, sizeof(uint64_t));
    r->pend_slot = calloc((size_t)r->n_slots, sizeof(int32_t));
    r->w_resets = calloc((size_t)r->n_slots, sizeof(int32_t));
    if (!r->reqs || !r->free_recs || !r->host_free || !r->hbufs || !r->ev || !r->results || !r->q ||
        !r->w_moves || !r->w_seqs || !r->w_reqs || !r->w_commit || !r->slot_owner || !r->pend_id ||
        !r->pend_slot || !r->w_resets)
        goto oom;
    for (int32_t i = 0; i < nq; i++) {
        r->q[i].moves = calloc((size_t)r->max_moves, sizeof(sched_move_t));
        r->q[i].entries = calloc((size_t)r->n_slots, sizeof(sched_entry_t));
        if (!r->q[i].moves || !r->q[i].entries) goto oom;
    }
    for (int32_t i = r->n_reqs - 1; i >= 0; i--)
        r->free_recs[r->n_free_recs++] = i;
    for (int i = 0; i < cfg->n_host_slots; i++) {
        hbuf_t *hb = &r->hbufs[i];
        if (!r->kv_bpt) { /* fixed-size: preallocated, as before */
            if (!(hb->p = malloc(r->state_bytes))) goto oom;
            hb->cap = r->state_bytes;
            r->st.host_bytes += hb->cap;
        }
        r->host_free[r->n_host_free++] = hb;
    }
    r->work.data = r;
    r->last_stats_ns = uv_hrtime();
    *out = r;
    return 0;
oom:
    rc = rcd_fail(RCD_ENOMEM, err, errlen, "runner: out of memory");
fail:
    dmn_runner_destroy(r);
    return rc;
}

static void log_stats(dmn_runner_t *r, dmn_level_t lvl)
{
    dmn_runner_stats_t st;
    dmn_runner_stats(r, &st);
    const sched_stats_t *s = &st.sched;
    dmn_log(lvl, "sched_stats", NULL, NULL,
            "steps %llu (run %llu, planned ahead %llu), tokens %llu (decode %llu, prefill %llu), "
            "budget use %.3f, mean batch %.2f, step ms mean %.2f max %.2f, worker ms %.1f, "
            "gap ms %.1f, arrived %llu, completed %llu, cancelled %llu, expired %llu, rejected "
            "%llu, failed %llu, preemptions %llu, swap-ins %llu, loads %llu, running %d, "
            "waiting %d, swapped %d, kv blocks free %lld of %lld",
            (unsigned long long)s->steps, (unsigned long long)st.steps_run,
            (unsigned long long)st.planned_ahead, (unsigned long long)s->tokens,
            (unsigned long long)s->decode_tokens, (unsigned long long)s->prefill_tokens,
            s->budget_tokens ? (double)s->tokens / (double)s->budget_tokens : 0.0,
            s->steps ? (double)s->entries / (double)s->steps : 0.0,
            s->steps_done ? (double)s->step_us_sum / (double)s->steps_done / 1e3 : 0.0,
            (double)s->step_us_max / 1e3, (double)st.worker_us / 1e3, (double)st.gap_us / 1e3,
            (unsigned long long)s->arrived, (unsigned long long)s->completed,
            (unsigned long long)s->cancelled, (unsigned long long)s->expired,
            (unsigned long long)s->rejected, (unsigned long long)s->failed,
            (unsigned long long)s->preemptions, (unsigned long long)s->swap_ins,
            (unsigned long long)s->loads, s->running, s->waiting, s->swapped,
            (long long)st.kv_free_blocks, (long long)st.kv_total_blocks);
}

void dmn_runner_destroy(dmn_runner_t *r)
{
    if (!r) return;
    if (r->sched) {
        log_stats(r, DMN_INFO);
        sched_destroy(r->sched);
    }
    for (int32_t i = 0; r->reqs && i < r->n_reqs; i++)
        if (r->reqs[i].id) rec_release(r, &r->reqs[i]);
    for (int32_t i = 0; r->hbufs && i < r->cfg.n_host_slots; i++)
        free(r->hbufs[i].p);
    free(r->hbufs);
    for (int32_t i = 0; r->q && i < r->cfg.max_inflight; i++) {
        free(r->q[i].moves);
        free(r->q[i].entries);
    }
    free(r->reqs);
    free(r->free_recs);
    free(r->host_free);
    free(r->ev);
    free(r->results);
    free(r->q);
    free(r->w_moves);
    free(r->w_seqs);
    free(r->w_reqs);
    free(r->w_commit);
    free(r->slot_owner);
    free(r->pend_id);
    free(r->pend_slot);
    free(r->w_resets);
    free(r);
}

int dmn_runner_held(const dmn_runner_t *r)
{
    return r->n_held;
}

void dmn_runner_stats(const dmn_runner_t *r, dmn_runner_stats_t *out)
{
    *out = r->st;
    sched_get_stats(r->sched, &out->sched);
}

/* ---- the caller's side ------------------------------------------------------------------ */

int dmn_runner_submit(dmn_runner_t *r, dmn_seq_t *s, char *err, size_t errlen)
{
    if (s->n_prompt < 1 || s->max_new < 1 || !s->prompt || !s->logits || !s->cb)
        return rcd_fail(RCD_EINVAL, err, errlen, "runner: bad sequence");
    if (r->n_free_recs == 0)
        return rcd_fail(RCD_ETOOBIG, err, errlen, "server busy: the queue is full (%d held)",
                        r->n_held);
    if ((int64_t)s->n_prompt + s->max_new > INT32_MAX / 2)
        return rcd_fail(RCD_ETOOBIG, err, errlen, "prompt plus max_new is too large");
    int32_t cap = s->n_prompt + s->max_new;
    int64_t kvb = 0;
    if (r->kv_bpt && r->kv_pool_blocks) { /* a KV model: the turn's blocks are reserved */
        uint64_t pos = s->kv_positions ? s->kv_positions : (uint64_t)cap;
        if (pos > (uint64_t)r->kv_positions) return dmn_runner_check_positions(r, pos, err, errlen);
        kvb = (int64_t)((pos + (uint64_t)r->kv_bt - 1) / (uint64_t)r->kv_bt);
        if (r->kv_reserved + kvb > r->kv_pool_blocks)
            return rcd_fail(RCD_ETOOBIG, err, errlen,
                            "server busy: the KV cache's %lld blocks are reserved by held turns "
                            "up to %lld; this turn needs %lld (--kv-blocks)",
                            (long long)r->kv_pool_blocks, (long long)r->kv_reserved,
                            (long long)kvb);
    }
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)cap);
    if (!toks) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    memcpy(toks, s->prompt, sizeof(int32_t) * (size_t)s->n_prompt);
    int32_t i = r->free_recs[--r->n_free_recs];
    dmn__req_t *q = &r->reqs[i];
    memset(q, 0, sizeof(*q));
    q->id = (++r->gen << 24) | (uint64_t)i;
    q->seq = s;
    q->toks = toks;
    q->n_toks = s->n_prompt;
    q->cap_toks = cap;
    q->max_new = s->max_new;
    q->init_state = s->init_state;
    q->init_len = s->init_len ? s->init_len : r->state_bytes;
    q->logits = s->logits;
    q->state_out = s->state_out;
    q->state_cap = s->state_cap ? s->state_cap : r->state_bytes;
    q->slot = -1;
    q->kv_blocks = kvb;
    r->kv_reserved += kvb;
    q->n_snaps = s->n_snaps > 0 && s->n_snaps <= DMN_SEQ_SNAPS ? s->n_snaps : 0;
    for (int32_t j = 0; j < q->n_snaps; j++) {
        q->snap_at[j] = s->snap_at[j];
        q->snap_out[j] = s->snap_out[j];
        q->snap_cap[j] = s->snap_cap[j] ? s->snap_cap[j] : r->state_bytes;
        if (q->snap_at[j] < 1 || q->snap_at[j] >= s->n_prompt || !q->snap_out[j] ||
            (j && q->snap_at[j] <= q->snap_at[j - 1]))
            q->n_snaps = j; /* malformed: take the well-formed ones before it */
    }
    s->n_snapped = 0;
    r->n_held++;
    s->req = q;
    s->rc = 0;
    s->msg[0] = 0;
    s->n_preemptions = 0;

    sched_event_t e = {.kind = SCHED_EV_ARRIVE, .id = q->id};
    e.arrive.priority = s->priority;
    e.arrive.tenant = s->tenant;
    e.arrive.prompt_tokens = s->n_prompt;
    e.arrive.max_new_tokens = s->max_new;
    e.arrive.deadline_us = (int64_t)(s->deadline_ns / 1000);
    e.arrive.resume = s->init_state != NULL;
    e.arrive.commit = s->state_out != NULL;
    push_event(r, &e);
    /* Nested in a runner callback, the arrival is planned when that returns, and a refusal
     * arrives as DMN_SEQ_FAILED; otherwise it is decided here. */
    bool nested = r->pumping;
    if (!nested) r->submitting = q;
    r->submit_rc = 0;
    pump(r);
    r->submitting = NULL;
    if (!nested && r->submit_rc) {
        int rc = r->submit_rc;
        rcd_fail(rc, err, errlen, "%s", r->submit_msg);
        rec_maybe_release(r, q);
        return rc;
    }
    return 0;
}

/* Appends a sampled token to the stream (the next decode or the commit feed reads it). */
static void append(dmn__req_t *q, int32_t token)
{
    if (q->n_toks < q->cap_toks) q->toks[q->n_toks++] = token;
    q->n_gen++;
}

void dmn_runner_feed(dmn_runner_t *r, dmn_seq_t *s, int32_t token)
{
    dmn__req_t *q = s->req;
    if (!q) return;
    if (q->n_gen + 1 >= q->max_new) { /* the caller should have finished it: the last token */
        dmn_log(DMN_ERROR, "runner", NULL, NULL, "token fed past max_new: finishing");
        dmn_runner_finish(r, s, token);
        return;
    }
    append(q, token);
    q->outcome = SCHED_OUT_TOKEN;
    q->decided = true;
}

int dmn_runner_finish(dmn_runner_t *r, dmn_seq_t *s, int32_t last)
{
    dmn__req_t *q = s->req;
    if (!q) return 0;
    append(q, last);
    q->decided = true;
    /* At max_new the scheduler ends it anyway, and a commit feed it planned ahead stays
     * valid; earlier it is a STOP, and entries planned past it are dropped. */
    if (q->n_gen >= q->max_new) {
        q->outcome = SCHED_OUT_TOKEN;
    } else {
        q->outcome = SCHED_OUT_STOP;
        q->stop_upto = r->last_issued;
    }
    if (q->state_out) return 1;
    q->seq = NULL;
    s->req = NULL;
    return 0;
}

int dmn_runner_cancel(dmn_runner_t *r, dmn_seq_t *s)
{
    dmn__req_t *q = s->req;
    if (!q) return 0;
    q->decided = true;
    send_cancel(r, q);
    if (q->in_step) {
        q->cancel_event = true;
        q->cancel_rc = RCD_ECANCELLED;
        pump(r);
        return 1;
    }
    q->seq = NULL;
    s->req = NULL;
    pump(r);
    rec_maybe_release(r, q);
    return 0;
}

/* ---- the worker's step ------------------------------------------------------------------- */

/* Worker thread: prefix snapshot j of q, from its slot. Snapshots are an optimization: one
 * that cannot be read (a KV state larger than its buffer) ends q's snapshots there (the first
 * j stand) and the step goes on. Returns whether it was read. */
static bool read_snap(dmn_runner_t *r, dmn__req_t *q, int32_t slot, int32_t j)
{
    if (!wrk_state_read_n(r->be, slot, q->snap_out[j], q->snap_cap[j], &q->snap_len[j]))
        return true;
    q->snap_need = wrk_state_bytes(r->be, slot);
    q->n_snaps = q->next_snap = q->w_snap_hi = j;
    return false;
}

static void work_cb(uv_work_t *w)
{
    dmn_runner_t *r = w->data;
    uint64_t t0 = uv_hrtime();
    int rc = 0;
    for (int32_t i = 0; i < r->w_n_resets; i++) /* ended occupants' KV blocks back to the pool */
        wrk_state_reset(r->be, r->w_resets[i]);
    for (int32_t i = 0; i < r->w_n_moves && !rc; i++) {
        wmove_t *m = &r->w_moves[i];
        switch (m->kind) {
        case SCHED_MOVE_SWAP_OUT: {
            hbuf_t *hb = m->hb;
            size_t need = wrk_state_bytes(r->be, m->slot);
            if (need > hb->cap) { /* a KV model's state: sized now, on this thread */
                void *p = realloc(hb->p, need);
                if (!p) {
                    rc = RCD_ENOMEM;
                    break;
                }
                m->grew += need - hb->cap;
                hb->p = p;
                hb->cap = need;
            }
            rc = wrk_state_read_n(r->be, m->slot, hb->p, hb->cap, &hb->len);
            /* its KV blocks go back to the pool at once (the slot is someone else's next) */
            if (!rc && r->kv_bpt) rc = wrk_state_reset(r->be, m->slot);
            break;
        }
        case SCHED_MOVE_SWAP_IN:
            rc = wrk_state_write_n(r->be, m->slot, m->hb->p, m->hb->len);
            break;
        case SCHED_MOVE_LOAD:
            rc = m->buf ? wrk_state_write_n(r->be, m->slot, m->buf, m->len)
                        : wrk_state_reset(r->be, m->slot);
            break;
        case SCHED_MOVE_RESET:
            rc = wrk_state_reset(r->be, m->slot);
            break;
        }
        if (rc)
            snprintf(r->w_err, sizeof(r->w_err), "slot move %d of slot %d failed: %s", m->kind,
                     m->slot, rcd_strerror(rc));
    }
    /* Prefix snapshots inside a chunk: run the chunk's head alone up to the boundary and read
     * the state there; the batch step below runs the rest. */
    for (int32_t i = 0; i < r->w_n && !rc; i++) {
        dmn__req_t *q = r->w_reqs[i];
        wrk_seq_t *ws = &r->w_seqs[i];
        for (int32_t j = q->w_snap_lo; j < q->w_snap_hi && !rc; j++) {
            int32_t cur = (int32_t)(ws->tokens - q->toks), d = q->snap_at[j] - cur;
            if (d >= ws->n_tokens) break; /* at the chunk's end: read after the step */
            wrk_seq_t head = *ws;
            head.n_tokens = d;
            head.n_logits = 0;
            rc = wrk_step(r->be, &head, 1, r->w_err, sizeof(r->w_err));
            ws->tokens += d;
            ws->n_tokens -= d;
            if (ws->n_logits > ws->n_tokens) ws->n_logits = ws->n_tokens;
            if (!rc && !read_snap(r, q, ws->slot, j)) break;
        }
    }
    if (!rc && r->w_n) rc = wrk_step(r->be, r->w_seqs, r->w_n, r->w_err, sizeof(r->w_err));
    for (int32_t i = 0; i < r->w_n && !rc; i++) {
        dmn__req_t *q = r->w_reqs[i];
        const wrk_seq_t *ws = &r->w_seqs[i];
        int32_t j = q->w_snap_hi - 1;
        if (j >= q->w_snap_lo && q->snap_at[j] == (int32_t)(ws->tokens - q->toks) + ws->n_tokens)
            read_snap(r, q, ws->slot, j);
    }
    for (int32_t i = 0; i < r->w_n && !rc; i++)
        if (r->w_commit[i]) {
            dmn__req_t *q = r->w_reqs[i];
            rc = wrk_state_read_n(r->be, r->w_seqs[i].slot, q->state_out, q->state_cap,
                                  &q->state_len);
            /* the turn is over: a KV model's slot gives its blocks back */
            if (!rc && r->kv_bpt) wrk_state_reset(r->be, r->w_seqs[i].slot);
            if (rc)
                snprintf(r->w_err, sizeof(r->w_err),
                         "commit read failed: the state is %zu bytes, the buffer %zu (%s)",
                         wrk_state_bytes(r->be, r->w_seqs[i].slot), q->state_cap, rcd_strerror(rc));
        }
    r->w_rc = rc;
    wrk_kv_blocks(r->be, &r->w_kv_free, &r->w_kv_total);
    r->w_us = uv_hrtime() - t0;
}

static void report_done(dmn_runner_t *r, uint64_t step, int status, int32_t n_results)
{
    sched_event_t e = {.kind = SCHED_EV_STEP_DONE};
    e.done.step = step;
    e.done.status = status;
    e.done.n_results = n_results;
    e.done.results = r->results;
    push_event(r, &e);
}

static void after_work_cb(uv_work_t *w, int status)
{
    (void)status;
    dmn_runner_t *r = w->data;
    r->busy = false;
    r->st.kv_free_blocks = r->w_kv_free;
    r->st.kv_total_blocks = r->w_kv_total;
    if (r->w_flush) { /* only resets ran: no step to report */
        r->w_flush = false;
        r->w_n_resets = 0;
        pump(r);
        return;
    }
    r->t_done = uv_hrtime();
    r->gap_open = true;
    r->st.worker_us += r->w_us / 1000;
    r->pumping = true; /* callbacks below may feed/finish/cancel/submit: pump once at the end */
    int rc = r->w_rc;
    if (rc) dmn_log(DMN_ERROR, "step_failed", NULL, NULL, "%s", r->w_err);
    for (int32_t i = 0; i < r->w_n_moves; i++) {
        wmove_t *m = &r->w_moves[i];
        m->req->in_step = false;
        r->st.host_bytes += m->grew;
        m->grew = 0;
        if (m->kind == SCHED_MOVE_SWAP_IN && m->req->host) { /* the host copy is spent */
            host_put(r, m->req->host);
            m->req->host = NULL;
        }
    }
    for (int32_t i = 0; i < r->w_n; i++) {
        dmn__req_t *q = r->w_reqs[i];
        q->in_step = false;
        if (q->snap_need) {
            dmn_log(DMN_WARN, "prefix_snapshot", NULL, NULL,
                    "request %llx: a %zu-byte state does not fit its %zu-byte snapshot buffer: "
                    "%d snapshot(s) taken, no more",
                    (unsigned long long)q->id, q->snap_need, q->snap_cap[q->w_snap_hi],
                    q->w_snap_hi);
            q->snap_need = 0;
        }
        if (rc || !q->seq) continue;
        for (int32_t j = q->w_snap_lo; j < q->w_snap_hi; j++)
            q->seq->snap_len[j] = q->snap_len[j];
        q->seq->n_snapped = q->w_snap_hi;
    }
    int32_t n_res = 0;
    for (int32_t i = 0; i < r->w_n && !rc; i++) {
        dmn__req_t *q = r->w_reqs[i];
        if (!r->w_seqs[i].n_logits || !q->seq || rec_dead(q)) continue;
        q->decided = false;
        q->outcome = SCHED_OUT_TOKEN;
        q->seq->cb(q->seq, DMN_SEQ_LOGITS);
        if (!q->decided) {
            fail_req(r, q, "the sampler neither fed nor finished the sequence");
            continue;
        }
        if (q->cancelled) continue;
        r->results[n_res].id = q->id;
        r->results[n_res++].outcome = q->outcome;
    }
    /* Sequences cancelled while the worker held them are told now. */
    for (int32_t i = 0; i < r->w_n_moves + r->w_n; i++) {
        dmn__req_t *q = i < r->w_n_moves ? r->w_moves[i].req : r->w_reqs[i - r->w_n_moves];
        if (q->cancel_event) {
            q->cancel_event = false;
            deliver(q, DMN_SEQ_FAILED, q->cancel_rc,
                    q->cancel_rc == RCD_ECANCELLED ? "cancelled" : "internal error");
        }
    }
    report_done(r, r->w_step, rc, n_res);
    for (int32_t i = 0; i < r->w_n_moves + r->w_n; i++)
        rec_maybe_release(r, i < r->w_n_moves ? r->w_moves[i].req : r->w_reqs[i - r->w_n_moves]);
    r->w_n_moves = r->w_n = 0;
    r->pumping = false;
    pump(r);
}

static void started(dmn__req_t *q)
{
    if (q->started || !q->seq) return;
    q->started = true;
    q->seq->cb(q->seq, DMN_SEQ_STARTED);
}

/* The slots whose occupant ended and that nobody used since: the worker resets them first. */
static void take_resets(dmn_runner_t *r)
{
    r->w_n_resets = 0;
    for (int32_t i = 0; i < r->n_pend; i++)
        if (r->slot_owner[r->pend_slot[i]] == r->pend_id[i])
            r->w_resets[r->w_n_resets++] = r->pend_slot[i];
    r->n_pend = 0;
}

/* The runner fell idle with slots still holding ended turns' KV blocks: give them back now
 * rather than at the next step, so an idle pool is all free (and its stats say so). */
static void flush_resets(dmn_runner_t *r)
{
    r->w_n_moves = r->w_n = 0;
    take_resets(r);
    if (!r->w_n_resets) return;
    r->w_flush = true;
    r->busy = true;
    r->w_rc = 0;
    uv_queue_work(r->loop, &r->work, work_cb, after_work_cb);
}

/* Hands the oldest issued plan to the worker: drops what ended or stopped since it was
 * planned, turns entries into wrk_seq_t over each request's stream. */
static void submit_plan(dmn_runner_t *r)
{
    plan_copy_t *p = &r->q[r->q_head];
    r->q_head = (r->q_head + 1) % r->cfg.max_inflight;
    r->q_n--;
    r->w_step = p->step;
    r->w_n_moves = r->w_n = 0;
    take_resets(r);
    for (int32_t i = 0; i < p->n_moves; i++) {
        const sched_move_t *m = &p->moves[i];
        dmn__req_t *q = lookup(r, m->id);
        if (!q || !q->seq || rec_dead(q)) { /* nothing of it runs any more */
            r->st.dropped++;
            continue;
        }
        wmove_t *wm = &r->w_moves[r->w_n_moves];
        wm->kind = m->kind;
        wm->slot = m->slot;
        wm->req = q;
        wm->buf = NULL;
        wm->len = 0;
        wm->hb = NULL;
        wm->grew = 0;
        switch (m->kind) {
        case SCHED_MOVE_SWAP_OUT:
            if (q->host || r->n_host_free == 0) {
                fail_req(r, q, "host tier exhausted for a swap-out");
                continue;
            }
            q->host = wm->hb = r->host_free[--r->n_host_free];
            if (q->seq) q->seq->n_preemptions++;
            r->st.swap_outs++;
            break;
        case SCHED_MOVE_SWAP_IN:
            if (!q->host) {
                fail_req(r, q, "swap-in without a host copy");
                continue;
            }
            wm->hb = q->host;
            r->st.swap_ins++;
            break;
        case SCHED_MOVE_LOAD:
            wm->buf = q->init_state;
            wm->len = q->init_len;
            r->st.loads++;
            started(q);
            break;
        case SCHED_MOVE_RESET:
            started(q);
            break;
        }
        q->in_step = true;
        r->slot_owner[m->slot] = q->id;
        q->slot = m->kind == SCHED_MOVE_SWAP_OUT ? -1 : m->slot;
        r->w_n_moves++;
    }
    for (int32_t i = 0; i < p->n_entries; i++) {
        const sched_entry_t *e = &p->entries[i];
        dmn__req_t *q = lookup(r, e->id);
        if (!q || !q->seq || rec_dead(q) || p->step <= q->stop_upto) {
            r->st.dropped++;
            continue;
        }
        if (e->start < 0 || e->start + e->n_tokens > q->n_toks || (e->commit && !q->state_out)) {
            fail_req(r, q, "planned tokens were never sampled");
            continue;
        }
        wrk_seq_t *ws = &r->w_seqs[r->w_n];
        ws->slot = e->slot;
        ws->n_tokens = e->n_tokens;
        ws->tokens = q->toks + e->start;
        ws->n_logits = e->n_logits;
        ws->logits = q->logits;
        q->w_snap_lo = q->w_snap_hi = q->next_snap; /* boundaries in (start, start + n] */
        while (q->w_snap_hi < q->n_snaps && q->snap_at[q->w_snap_hi] <= e->start + e->n_tokens)
            q->w_snap_hi++;
        if (q->w_snap_lo < q->w_snap_hi && q->snap_at[q->w_snap_lo] <= e->start)
            q->n_snaps = q->w_snap_hi = q->w_snap_lo; /* passed without a split: stop taking */
        q->next_snap = q->w_snap_hi;
        r->w_commit[r->w_n] = e->commit;
        r->w_reqs[r->w_n++] = q;
        q->in_step = true;
        r->slot_owner[e->slot] = q->id;
        q->slot = e->slot;
        started(q);
    }
    if (r->w_n_moves + r->w_n == 0 && r->w_n_resets == 0) { /* nothing to run: done at once */
        report_done(r, r->w_step, 0, 0);
        return;
    }
    r->st.steps_run++;
    if (r->gap_open) {
        r->st.gap_us += (uv_hrtime() - r->t_done) / 1000;
        r->gap_open = false;
    }
    r->busy = true;
    r->w_rc = 0;
    uv_queue_work(r->loop, &r->work, work_cb, after_work_cb);
}

/* ---- the scheduler's side ---------------------------------------------------------------- */

static void on_finished(dmn_runner_t *r, const sched_finish_t *f)
{
    dmn__req_t *q = lookup(r, f->id);
    if (!q || f->status == RCD_EEXISTS) return; /* ids are never reused while live */
    q->sched_done = true;
    if (q == r->submitting && q->seq) { /* refused on arrival: submit returns it */
        r->submit_rc = f->status ? f->status : RCD_EINTERNAL;
        snprintf(r->submit_msg, sizeof(r->submit_msg), "%s", f->msg);
        q->seq->req = NULL;
        q->seq = NULL;
    } else if (q->seq && !q->cancel_event) {
        if (f->status == 0 && q->state_out) {
            q->seq->state_len = q->state_len;
            deliver(q, DMN_SEQ_DONE, 0, NULL);
        } else if (f->status == 0) /* the caller finishes every sequence it does not commit */
            deliver(q, DMN_SEQ_FAILED, RCD_EINTERNAL, "ended without a final token");
        else
            deliver(q, DMN_SEQ_FAILED, f->status, f->msg);
    }
    if (!q->in_step && q->host) {
        host_put(r, q->host);
        q->host = NULL;
    }
    rec_maybe_release(r, q);
}

static void run_sched(dmn_runner_t *r)
{
    int64_t now = (int64_t)(uv_hrtime() / 1000);
    if (now < r->last_now) now = r->last_now;
    r->last_now = now;
    const sched_plan_t *p = NULL;
    char err[200];
    int32_t n = r->n_ev;
    r->n_ev = 0;
    int rc = sched_step(r->sched, now, r->ev, n, &p, err, sizeof(err));
    if (rc) { /* the runner built a malformed call: a bug; say so loudly */
        dmn_log(DMN_ERROR, "runner", NULL, NULL, "sched_step: %s", err);
        return;
    }
    for (int32_t i = 0; i < p->n_finished; i++)
        on_finished(r, &p->finished[i]);
    if (!p->step) return;
    if (p->n_moves > r->max_moves) { /* cannot happen: moves are bounded by 3 * slots */
        dmn_log(DMN_ERROR, "runner", NULL, NULL, "plan with %d moves", p->n_moves);
        return;
    }
    plan_copy_t *c = &r->q[(r->q_head + r->q_n) % r->cfg.max_inflight];
    r->q_n++;
    c->step = p->step;
    r->last_issued = p->step;
    c->n_moves = p->n_moves;
    c->n_entries = p->n_entries;
    memcpy(c->moves, p->moves, sizeof(sched_move_t) * (size_t)p->n_moves);
    memcpy(c->entries, p->entries, sizeof(sched_entry_t) * (size_t)p->n_entries);
    if (r->busy) r->st.planned_ahead++;
    r->try_plan = true; /* room for one more in flight? ask again */
}

/* Runs until nothing is left to do now: hands issued plans to an idle worker, feeds events to
 * the scheduler and keeps up to max_inflight plans issued. Never nested: a call made while it
 * runs (from a callback) is folded into the running one. */
static void pump(dmn_runner_t *r)
{
    if (r->pumping) {
        r->repump = true;
        return;
    }
    r->pumping = true;
    for (;;) {
        r->repump = false;
        if (!r->busy && r->q_n > 0) {
            submit_plan(r);
            continue;
        }
        if (r->n_ev > 0 || r->try_plan) {
            r->try_plan = false;
            run_sched(r);
            continue;
        }
        if (!r->repump) break;
    }
    if (!r->busy && r->q_n == 0 && r->n_pend > 0) flush_resets(r);
    r->pumping = false;
    if (r->cfg.stats_every_ms > 0) {
        uint64_t t = uv_hrtime();
        if (t - r->last_stats_ns >= (uint64_t)r->cfg.stats_every_ms * 1000000u) {
            r->last_stats_ns = t;
            log_stats(r, DMN_DEBUG);
        }
    }
}
