/* engine: the runner's loop side (see eng_runner.h). The loop thread owns the scheduler, the
 * request records, the host swap buffers and a small FIFO of issued plans; the device thread
 * (eng_device.c) runs one plan at a time (moves, wrk_step, commit reads). With
 * max_inflight = 2, plan N+1 is made while step N runs; only sampling of step N and the
 * submission of N+1 sit between two device steps (N+1's decodes feed the tokens sampled from
 * N's logits). */
#include "common/rcd_metrics.h"
#include "engine/eng_int.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pump(eng_runner_t *r);

/* ---- records ------------------------------------------------------------------------------ */

static eng__req_t *lookup(eng_runner_t *r, uint64_t id)
{
    uint64_t i = id & 0xffffff;
    if (i >= (uint64_t)r->n_reqs || r->reqs[i].id != id) return NULL;
    return &r->reqs[i];
}

/* Returns a host buffer to the free list (a KV model's memory goes back to the allocator). */
static void host_put(eng_runner_t *r, hbuf_t *hb)
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

size_t eng_runner_state_bound(const eng_runner_t *r, uint64_t n_positions)
{
    if (!r->kv_bpt) return r->state_bytes;
    if (n_positions > (SIZE_MAX - r->state_bytes) / r->kv_bpt) return SIZE_MAX;
    return r->state_bytes + (size_t)n_positions * r->kv_bpt;
}

static void set_kv_pool(eng_runner_t *r, int64_t n_blocks, int64_t block_tokens)
{
    if (!r->kv_bpt || n_blocks <= 0 || block_tokens <= 0) n_blocks = block_tokens = 0;
    r->kv_pool_blocks = n_blocks;
    r->kv_bt = block_tokens;
    r->kv_positions = n_blocks * block_tokens;
}

int eng_runner_check_positions(const eng_runner_t *r, uint64_t n_positions, char *err,
                               size_t errlen)
{
    if (!r->kv_bpt || !r->kv_positions || n_positions <= (uint64_t)r->kv_positions) return 0;
    return rcd_fail(RCD_ETOOBIG, err, errlen,
                    "session, prompt and max_tokens need %llu KV positions, the KV cache holds "
                    "%lld (--kv-blocks x --kv-block-tokens)",
                    (unsigned long long)n_positions, (long long)r->kv_positions);
}

static void rec_release(eng_runner_t *r, eng__req_t *q)
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
    free(q->ctx);
    free(q->spec_logits);
    free(q->spec_q);
    free(q->d_buf);
    int32_t i = (int32_t)(q - r->reqs);
    memset(q, 0, sizeof(*q));
    r->free_recs[r->n_free_recs++] = i;
    r->n_held--;
}

static void rec_maybe_release(eng_runner_t *r, eng__req_t *q)
{
    if (q->id && q->sched_done && !q->in_step && !q->seq) rec_release(r, q);
}

static bool rec_dead(const eng__req_t *q)
{
    return q->sched_done || q->cancelled;
}

static void push_event(eng_runner_t *r, const sched_event_t *e)
{
    if (r->n_ev == r->cap_ev) { /* bounded by records; a full buffer is a bug, not input */
        eng__log(r, ENG_ERROR, "runner", "event buffer full (%d)", r->cap_ev);
        return;
    }
    r->ev[r->n_ev++] = *e;
}

static void send_cancel(eng_runner_t *r, eng__req_t *q)
{
    if (q->cancelled || q->sched_done) return;
    q->cancelled = true;
    sched_event_t e = {.kind = SCHED_EV_CANCEL, .id = q->id};
    push_event(r, &e);
}

/* The caller is told the sequence ended (rc, msg) and forgotten. */
static void deliver(eng__req_t *q, eng_seq_ev_t ev, int rc, const char *msg)
{
    eng_seq_t *s = q->seq;
    if (!s) return;
    q->seq = NULL;
    s->req = NULL;
    s->rc = rc;
    snprintf(s->msg, sizeof(s->msg), "%s", msg ? msg : "");
    s->cb(s, ev);
}

/* An inconsistency between the plan and what the runner holds: end the request cleanly. */
void eng__fail_req(eng_runner_t *r, eng__req_t *q, const char *why)
{
    eng__log(r, ENG_ERROR, "runner", "request %llx: %s", (unsigned long long)q->id, why);
    send_cancel(r, q);
    if (!q->in_step)
        deliver(q, ENG_SEQ_FAILED, RCD_EINTERNAL, why);
    else
        q->cancel_event = true, q->cancel_rc = RCD_EINTERNAL;
}

/* ---- logs, options, create / destroy ------------------------------------------------------ */

static void log_stderr(eng_level_t lvl, const char *event, const char *msg)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (lvl >= ENG_INFO) fprintf(stderr, "engine %s %s: %s\n", names[lvl], event, msg);
}

void eng__log(const eng_runner_t *r, eng_level_t lvl, const char *event, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r && r->cfg.log)
        r->cfg.log(r->cfg.log_user, lvl, event, msg);
    else
        log_stderr(lvl, event, msg);
}

int eng_backend_opts_fill(wrk_backend_opts_t *bo, int prefill_chunk, int max_prompt, char *err,
                          size_t errlen)
{
    int rc = wrk_backend_opts_resolve(bo, bo, err, errlen);
    if (rc) return rc;
    /* no chunking: the first prompt in line (up to max_prompt) plus every other slot's decode */
    long whole = (long)max_prompt + bo->n_slots - 1;
    if (prefill_chunk == 0 && bo->max_step_tokens < whole)
        bo->max_step_tokens = whole < INT_MAX ? (int)whole : INT_MAX;
    return wrk_backend_opts_resolve(bo, bo, err, errlen); /* the raised budget in range too */
}

void eng_runner_config_default(eng_runner_config_t *c, const wrk_backend_t *be, int max_queue)
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
    c->spec_history = ENG_SPEC_HISTORY_DEFAULT;
}

int eng_runner_create(uv_loop_t *loop, wrk_backend_t *be, int max_queue, eng_runner_t **out)
{
    eng_runner_config_t c;
    eng_runner_config_default(&c, be, max_queue);
    char err[200];
    int rc = eng_runner_create_cfg(loop, be, &c, out, err, sizeof(err));
    if (rc) eng__log(NULL, ENG_ERROR, "runner", "%s", err);
    return rc;
}

int eng_runner_create_cfg(uv_loop_t *loop, wrk_backend_t *be, const eng_runner_config_t *cfg,
                          eng_runner_t **out, char *err, size_t errlen)
{
    int rc = 0;
    eng_runner_t *r = calloc(1, sizeof(*r));
    if (!r) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    r->loop = loop;
    r->be = be;
    wrk_threads(be, &r->st.threads_active, NULL, &r->st.thread_changes, NULL, NULL);
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
    sc.n_priorities = ENG_RUNNER_PRIORITIES;
    sc.aging_us = cfg->aging_ms * 1000;
    sc.min_run_steps = cfg->min_run_steps;
    sc.max_inflight = cfg->max_inflight;
    sc.tenant_fair = cfg->tenant_fair;
    sc.max_tenant_slots = cfg->max_tenant_slots < sc.n_slots ? cfg->max_tenant_slots : sc.n_slots;
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
    r->acc_slot = calloc((size_t)r->n_slots, sizeof(int32_t));
    r->acc_keep = calloc((size_t)r->n_slots, sizeof(int32_t));
    for (int b = 0; b < ENG_SPEC_GATE_BUCKETS; b++)
        eng_spec_gate_init(&r->gate[b]);
    r->w_gate = -1;
    r->vocab = wrk_model_info(wrk_backend_model(be))->vocab_size;
    if (!r->acc_slot || !r->acc_keep) goto oom;
    if ((rc = eng__spec_create(r, err, errlen))) goto fail;
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
    set_kv_pool(r, cfg->kv_blocks, cfg->kv_block_tokens);
    if (r->kv_positions)
        eng__log(r, ENG_INFO, "kv_cache",
                 "%lld KV blocks of %lld positions: %lld positions, %.1f MiB (%zu bytes per "
                 "position)",
                 (long long)r->kv_pool_blocks, (long long)r->kv_bt, (long long)r->kv_positions,
                 (double)r->kv_positions * (double)r->kv_bpt / 1048576.0, r->kv_bpt);
    if ((rc = eng__dev_start(r, err, errlen))) goto fail;
    r->last_stats_ns = uv_hrtime();
    *out = r;
    return 0;
oom:
    rc = rcd_fail(RCD_ENOMEM, err, errlen, "runner: out of memory");
fail:
    eng_runner_destroy(r);
    return rc;
}

static void log_stats(eng_runner_t *r, eng_level_t lvl)
{
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    const sched_stats_t *s = &st.sched;
    eng__log(r, lvl, "sched_stats",
             "steps %llu (run %llu, planned ahead %llu), tokens %llu (decode %llu, prefill %llu), "
             "budget use %.3f, mean batch %.2f, step ms mean %.2f max %.2f, worker ms %.1f, "
             "gap ms %.1f, arrived %llu, completed %llu, cancelled %llu, expired %llu, rejected "
             "%llu, failed %llu, preemptions %llu, swap-ins %llu, loads %llu, running %d, "
             "waiting %d, swapped %d, kv blocks free %lld of %lld, spec verifies %llu drafted %llu "
             "accepted %llu (acceptance %.3f), spec pauses %llu paused steps %llu",
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
             (long long)st.kv_free_blocks, (long long)st.kv_total_blocks,
             (unsigned long long)st.spec_verifies, (unsigned long long)s->spec_drafted,
             (unsigned long long)s->spec_accepted,
             s->spec_drafted ? (double)s->spec_accepted / (double)s->spec_drafted : 0.0,
             (unsigned long long)st.spec_pauses, (unsigned long long)st.spec_paused_steps);
}

void eng_runner_destroy(eng_runner_t *r)
{
    if (!r) return;
    eng__dev_stop(r); /* nothing runs on the records and buffers below any more */
    if (r->sched) {
        log_stats(r, ENG_INFO);
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
    free(r->acc_slot);
    free(r->acc_keep);
    free(r->w_jobs);
    eng_draft_destroy(r->draft);
    free(r);
}

int eng_runner_held(const eng_runner_t *r)
{
    return r->n_held;
}

void eng_runner_stats(const eng_runner_t *r, eng_runner_stats_t *out)
{
    *out = r->st;
    sched_get_stats(r->sched, &out->sched);
    for (int b = 0; b < ENG_SPEC_GATE_BUCKETS; b++) {
        out->spec_pauses += r->gate[b].pauses;
        out->spec_paused_steps += r->gate[b].paused_steps;
    }
}

/* ---- the caller's side ------------------------------------------------------------------ */

int eng_runner_submit(eng_runner_t *r, eng_seq_t *s, char *err, size_t errlen)
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
        if (pos > (uint64_t)r->kv_positions) return eng_runner_check_positions(r, pos, err, errlen);
        kvb = (int64_t)((pos + (uint64_t)r->kv_bt - 1) / (uint64_t)r->kv_bt);
        if (r->kv_reserved + kvb > r->kv_pool_blocks)
            return rcd_fail(RCD_ETOOBIG, err, errlen,
                            "server busy: the KV cache's %lld blocks are reserved by held turns "
                            "up to %lld; this turn needs %lld (--kv-blocks)",
                            (long long)r->kv_pool_blocks, (long long)r->kv_reserved,
                            (long long)kvb);
    }
    /* A loaded payload: the state goes to the slot, the sections (the history) stay here. */
    size_t init_len = s->init_len ? s->init_len : r->state_bytes;
    const int32_t *hist = NULL;
    int32_t n_hist = 0, n_pre = s->n_pre_fed > 0 && s->pre_fed ? s->n_pre_fed : 0;
    const void *dsec = NULL; /* a draft model's state (eng_draft_model.h): dsec_bytes */
    uint64_t dsec_bytes = 0;
    if (s->init_state) {
        int rc = eng__ext_split(r, s->init_state, &init_len, &hist, &n_hist, &dsec, &dsec_bytes,
                                err, errlen);
        if (rc) return rc;
    }
    /* bounded: the newest spec_history tokens of (history, pre-fed) */
    int32_t keep_pre = n_pre < r->cfg.spec_history ? n_pre : r->cfg.spec_history;
    int32_t keep_hist =
        n_hist < r->cfg.spec_history - keep_pre ? n_hist : r->cfg.spec_history - keep_pre;
    int32_t *ctx = malloc(sizeof(int32_t) * ((size_t)keep_hist + (size_t)keep_pre + (size_t)cap));
    if (!ctx) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    if (keep_hist) /* unaligned in the blob: copied */
        memcpy(ctx, (const uint8_t *)hist + 4 * (size_t)(n_hist - keep_hist),
               sizeof(int32_t) * (size_t)keep_hist);
    if (keep_pre)
        memcpy(ctx + keep_hist, s->pre_fed + (n_pre - keep_pre),
               sizeof(int32_t) * (size_t)keep_pre);
    int32_t *toks = ctx + keep_hist + keep_pre;
    memcpy(toks, s->prompt, sizeof(int32_t) * (size_t)s->n_prompt);
    int32_t i = r->free_recs[--r->n_free_recs];
    eng__req_t *q = &r->reqs[i];
    memset(q, 0, sizeof(*q));
    q->id = (++r->gen << 24) | (uint64_t)i;
    q->seq = s;
    q->ctx = ctx;
    q->n_hist = keep_hist + keep_pre;
    const int32_t n_pre_kept = keep_pre;
    q->toks = toks;
    q->n_toks = s->n_prompt;
    q->cap_toks = cap;
    q->max_new = s->max_new;
    q->init_state = s->init_state;
    q->init_len = init_len;
    q->logits = s->logits;
    q->state_out = s->state_out;
    q->state_cap = s->state_cap ? s->state_cap : r->state_bytes;
    q->slot = -1;
    q->kv_blocks = kvb;
    r->kv_reserved += kvb;
    q->n_snaps = s->n_snaps > 0 && s->n_snaps <= ENG_SEQ_SNAPS ? s->n_snaps : 0;
    for (int32_t j = 0; j < q->n_snaps; j++) {
        q->snap_at[j] = s->snap_at[j];
        q->snap_out[j] = s->snap_out[j];
        q->snap_cap[j] = s->snap_cap[j] ? s->snap_cap[j] : r->state_bytes;
        if (q->snap_at[j] < 1 || q->snap_at[j] >= s->n_prompt || !q->snap_out[j] ||
            (j && q->snap_at[j] <= q->snap_at[j - 1]))
            q->n_snaps = j; /* malformed: take the well-formed ones before it */
    }
    s->n_snapped = 0;
    s->spec_drafted = s->spec_accepted = 0;
    s->spec_draft = -1;
    s->spec_q = NULL;
    eng__spec_turn_init(r, q, s, dsec, dsec_bytes, q->n_hist - n_pre_kept);
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
    e.arrive.spec_tokens = q->spec ? r->cfg.spec_tokens : 0;
    push_event(r, &e);
    /* Nested in a runner callback, the arrival is planned when that returns, and a refusal
     * arrives as ENG_SEQ_FAILED; otherwise it is decided here. */
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
static void append(eng__req_t *q, int32_t token)
{
    if (q->n_toks < q->cap_toks) q->toks[q->n_toks++] = token;
    q->n_gen++;
}

void eng_runner_feed(eng_runner_t *r, eng_seq_t *s, int32_t token)
{
    eng__req_t *q = s->req;
    if (!q) return;
    if (q->n_gen + 1 >= q->max_new) { /* the caller should have finished it: the last token */
        eng__log(r, ENG_ERROR, "runner", "token fed past max_new: finishing");
        eng_runner_finish(r, s, token);
        return;
    }
    append(q, token);
    q->outcome = SCHED_OUT_TOKEN;
    q->decided = true;
}

int eng_runner_finish(eng_runner_t *r, eng_seq_t *s, int32_t last)
{
    eng__req_t *q = s->req;
    if (!q) return 0;
    append(q, last);
    q->decided = true;
    q->finished = true;
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

int eng_runner_cancel(eng_runner_t *r, eng_seq_t *s)
{
    eng__req_t *q = s->req;
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

static void report_done(eng_runner_t *r, uint64_t step, int status, int32_t n_results)
{
    sched_event_t e = {.kind = SCHED_EV_STEP_DONE};
    e.done.step = step;
    e.done.status = status;
    e.done.n_results = n_results;
    e.done.results = r->results;
    push_event(r, &e);
}

/* The gain check: the pure decode step that just ran, into its bucket's gate. */
void eng__plan_done(eng_runner_t *r)
{
    r->busy = false;
    r->n_acc = 0; /* the run that ended made the rollbacks asked for before it */
    r->st.kv_free_blocks = r->w_kv_free;
    r->st.kv_total_blocks = r->w_kv_total;
    if (r->w_thread_changes != r->st.thread_changes) {
        /* One line per 10 s at most: a probe for one more thread that fails comes back within
         * seconds; the metrics count every change. */
        const uint64_t now = uv_hrtime();
        if (!r->threads_log_ns || now - r->threads_log_ns >= 10000000000ull) {
            int max = 0;
            wrk_threads(r->be, NULL, &max, NULL, NULL, NULL);
            r->threads_log_ns = now;
            eng__log(r, ENG_INFO, "cpu_threads",
                     "%d of %d pool threads run the steps (were %d; %llu changes): "
                     "--adapt-threads follows what other processes take of the CPUs",
                     r->w_threads, max, r->st.threads_active,
                     (unsigned long long)r->w_thread_changes);
        }
    }
    r->st.threads_active = r->w_threads;
    r->st.thread_changes = r->w_thread_changes;
    eng__spec_run_done(r);
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
    if (rc) eng__log(r, ENG_ERROR, "step_failed", "%s", r->w_err);
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
        eng__req_t *q = r->w_reqs[i];
        q->in_step = false;
        if (q->snap_need) {
            eng__log(r, ENG_WARN, "prefix_snapshot",
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
        eng__req_t *q = r->w_reqs[i];
        int32_t k = q->w_k;
        q->w_k = 0;
        if (!r->w_seqs[i].n_logits || !q->seq || rec_dead(q)) continue;
        if (k > 0) {
            eng__spec_sample(r, q, r->w_seqs[i].slot, k, &r->results[n_res]);
            if (!q->cancelled && q->decided) n_res++;
            continue;
        }
        q->decided = false;
        q->outcome = SCHED_OUT_TOKEN;
        q->seq->cb(q->seq, ENG_SEQ_LOGITS);
        if (!q->decided) {
            eng__fail_req(r, q, "the sampler neither fed nor finished the sequence");
            continue;
        }
        r->w_emitted++;
        if (q->cancelled) continue;
        r->results[n_res] = (sched_result_t){.id = q->id, .outcome = q->outcome};
        if (q->spec) { /* a plain decode of a speculating turn: its reservation may change */
            r->results[n_res].set_spec = true;
            r->results[n_res].spec_tokens = eng__spec_reserve(q);
        }
        n_res++;
    }
    /* Sequences cancelled while the device held them are told now. */
    for (int32_t i = 0; i < r->w_n_moves + r->w_n; i++) {
        eng__req_t *q = i < r->w_n_moves ? r->w_moves[i].req : r->w_reqs[i - r->w_n_moves];
        if (q->cancel_event) {
            q->cancel_event = false;
            deliver(q, ENG_SEQ_FAILED, q->cancel_rc,
                    q->cancel_rc == RCD_ECANCELLED ? "cancelled" : "internal error");
        }
    }
    if (r->w_gate >= 0 && !rc) eng__spec_gate_observe(r);
    r->w_gate = -1;
    report_done(r, r->w_step, rc, n_res);
    for (int32_t i = 0; i < r->w_n_moves + r->w_n; i++)
        rec_maybe_release(r, i < r->w_n_moves ? r->w_moves[i].req : r->w_reqs[i - r->w_n_moves]);
    r->w_n_moves = r->w_n = 0;
    r->pumping = false;
    pump(r);
}

static void started(eng__req_t *q)
{
    if (q->started || !q->seq) return;
    q->started = true;
    q->seq->cb(q->seq, ENG_SEQ_STARTED);
}

/* The slots whose occupant ended and that nobody used since: the device resets them first. */
static void take_resets(eng_runner_t *r)
{
    r->w_n_resets = 0;
    for (int32_t i = 0; i < r->n_pend; i++)
        if (r->slot_owner[r->pend_slot[i]] == r->pend_id[i])
            r->w_resets[r->w_n_resets++] = r->pend_slot[i];
    r->n_pend = 0;
}

/* The runner fell idle with slots still holding ended turns' KV blocks: give them back now
 * rather than at the next step, so an idle pool is all free (and its stats say so). */
static void flush_resets(eng_runner_t *r)
{
    r->w_n_moves = r->w_n = 0;
    take_resets(r);
    if (!r->w_n_resets) return;
    r->w_flush = true;
    eng__dev_run(r);
}

/* Hands the oldest issued plan to the device thread: drops what ended or stopped since it was
 * planned, turns entries into wrk_seq_t over each request's stream. */
static void submit_plan(eng_runner_t *r)
{
    plan_copy_t *p = &r->q[r->q_head];
    r->q_head = (r->q_head + 1) % r->cfg.max_inflight;
    r->q_n--;
    r->w_step = p->step;
    r->w_n_moves = r->w_n = 0;
    take_resets(r);
    for (int32_t i = 0; i < p->n_moves; i++) {
        const sched_move_t *m = &p->moves[i];
        eng__req_t *q = lookup(r, m->id);
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
                eng__fail_req(r, q, "host tier exhausted for a swap-out");
                continue;
            }
            q->host = wm->hb = r->host_free[--r->n_host_free];
            if (q->seq) q->seq->n_preemptions++;
            r->st.swap_outs++;
            break;
        case SCHED_MOVE_SWAP_IN:
            if (!q->host) {
                eng__fail_req(r, q, "swap-in without a host copy");
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
    /* The gain check: a step of decodes only (no moves, prefill or commit) is timed (a step
     * that cannot speculate, e.g. of SPECULATE_OFF turns, as a plain sample) and one that
     * could speculate asks its bucket's gate whether it may. */
    bool pure = r->cfg.spec_adaptive && r->st.spec_on && r->w_n_moves == 0 && p->n_entries > 0,
         may_spec = false, gate_ok = true;
    for (int32_t i = 0; i < p->n_entries && pure; i++) {
        const sched_entry_t *e = &p->entries[i];
        eng__req_t *q = lookup(r, e->id);
        pure = e->decode && e->n_logits == 1 && e->n_tokens == 1 && !e->commit;
        if (q && q->spec && e->n_draft > 0) may_spec = true;
    }
    r->w_gate = pure ? eng_spec_gate_bucket(p->n_entries) : -1;
    if (r->w_gate >= 0 && may_spec) gate_ok = eng_spec_gate_next(&r->gate[r->w_gate]);
    r->w_spec = false;
    r->w_emitted = 0;
    for (int32_t i = 0; i < p->n_entries; i++) {
        const sched_entry_t *e = &p->entries[i];
        eng__req_t *q = lookup(r, e->id);
        if (!q || !q->seq || rec_dead(q) || p->step <= q->stop_upto) {
            r->st.dropped++;
            continue;
        }
        /* A decode (or commit) entry feeds the last token sampled; once drafts were kept the
         * plan's start (made before their step's results) lags the stream: the stream decides. */
        int32_t start = q->extra > 0 && e->decode ? q->n_toks - 1 : e->start;
        if (start < 0 || start + e->n_tokens > q->n_toks || (e->commit && !q->state_out)) {
            eng__fail_req(r, q, "planned tokens were never sampled");
            continue;
        }
        wrk_seq_t *ws = &r->w_seqs[r->w_n];
        ws->slot = e->slot;
        ws->n_tokens = e->n_tokens;
        ws->tokens = q->toks + start;
        ws->n_logits = e->n_logits;
        ws->logits = q->logits;
        ws->verify = false;
        q->w_k = 0;
        if (q->spec && e->decode && e->n_logits == 1 && e->n_draft > 0 && gate_ok) {
            const int32_t k = eng__spec_verify_k(r, q, e, p->n_entries);
            if (k > 0) {
                q->w_toks[0] = q->toks[q->n_toks - 1];
                q->w_k = k;
                ws->tokens = q->w_toks;
                ws->n_tokens = ws->n_logits = k + 1;
                ws->logits = q->spec_logits;
                ws->verify = true;
                r->w_spec = true;
            }
        }
        q->w_ntoks = q->n_toks;
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
        r->w_gate = -1;
        report_done(r, r->w_step, 0, 0);
        return;
    }
    r->st.steps_run++;
    if (r->gap_open) {
        r->st.gap_us += (uv_hrtime() - r->t_done) / 1000;
        r->gap_open = false;
    }
    eng__dev_run(r);
}

/* ---- the scheduler's side ---------------------------------------------------------------- */

static void on_finished(eng_runner_t *r, const sched_finish_t *f)
{
    eng__req_t *q = lookup(r, f->id);
    if (!q || f->status == RCD_EEXISTS) return; /* ids are never reused while live */
    q->sched_done = true;
    if (q == r->submitting && q->seq) { /* refused on arrival: submit returns it */
        r->submit_rc = f->status ? f->status : RCD_EINTERNAL;
        snprintf(r->submit_msg, sizeof(r->submit_msg), "%s", f->msg);
        q->seq->req = NULL;
        q->seq = NULL;
    } else if (q->seq && !q->cancel_event) {
        if (f->status == 0 && q->state_out) {
            q->seq->state_len = q->state_len + eng__ext_append(r, q);
            deliver(q, ENG_SEQ_DONE, 0, NULL);
        } else if (f->status == 0) /* the caller finishes every sequence it does not commit */
            deliver(q, ENG_SEQ_FAILED, RCD_EINTERNAL, "ended without a final token");
        else
            deliver(q, ENG_SEQ_FAILED, f->status, f->msg);
    }
    if (!q->in_step && q->host) {
        host_put(r, q->host);
        q->host = NULL;
    }
    rec_maybe_release(r, q);
}

static void run_sched(eng_runner_t *r)
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
        eng__log(r, ENG_ERROR, "runner", "sched_step: %s", err);
        return;
    }
    for (int32_t i = 0; i < p->n_finished; i++)
        on_finished(r, &p->finished[i]);
    if (!p->step) return;
    if (p->n_moves > r->max_moves) { /* cannot happen: moves are bounded by 3 * slots */
        eng__log(r, ENG_ERROR, "runner", "plan with %d moves", p->n_moves);
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
    rcd_metrics_step(p->n_entries, p->n_tokens, wrk_backend_max_step_tokens(r->be));
    r->try_plan = true; /* room for one more in flight? ask again */
}

/* Runs until nothing is left to do now: hands issued plans to an idle device, feeds events to
 * the scheduler and keeps up to max_inflight plans issued. Never nested: a call made while it
 * runs (from a callback) is folded into the running one. */
static void pump(eng_runner_t *r)
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
            log_stats(r, ENG_DEBUG);
        }
    }
}
