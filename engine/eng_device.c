/* engine: the device thread — one per runner (and so per backend instance), as
 * shared/design/architecture.md has it: the model's steps do not queue behind tokenization or
 * checkpoint I/O on libuv's shared pool. The thread waits for a plan, runs it (slot moves,
 * wrk_step, snapshot and commit reads) and wakes the loop with uv_async_send; the loop then
 * samples and hands over the next plan (eng_runner.c). One plan runs at a time. */
#include "engine/eng_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEV_STACK_BYTES (8u << 20) /* as libuv's pool threads, which ran steps before */

/* ---- running a plan (device thread) ------------------------------------------------------ */

/* Prefix snapshot j of q, from its slot. Snapshots are an optimization: one that cannot be
 * read (a KV state larger than its buffer) ends q's snapshots there (the first j stand) and
 * the step goes on. Returns whether it was read. */
static bool read_snap(eng_runner_t *r, eng__req_t *q, int32_t slot, int32_t j)
{
    if (!wrk_state_read_n(r->be, slot, q->snap_out[j], q->snap_cap[j], &q->snap_len[j]))
        return true;
    q->snap_need = wrk_state_bytes(r->be, slot);
    q->n_snaps = q->next_snap = q->w_snap_hi = j;
    return false;
}

/* A draft model's state follows its sequence's slot moves (speculating turns only): saved
 * beside the host copy at a swap-out (with its KV: the draft's slot gives its blocks back)
 * and written back at the swap-in; a loaded slot gets the draft state its checkpoint carried
 * (a KV draft's blocks come from the draft's pool), a fresh one starts the draft empty (its
 * first proposal prefills it over the turn's stream). Failures only cost drafts: the draft is
 * rebuilt from the stream (a checkpoint's that does not load is counted, and logged by the
 * loop). */
static void draft_move(eng_runner_t *r, const wmove_t *m)
{
    eng_draft_t *d = r->draft;
    eng__req_t *q = m->req;
    if (!d || !d->vt->propose_batch || !q->spec) return;
    switch (m->kind) {
    case SCHED_MOVE_SWAP_OUT:
        q->d_saved = d->vt->slot_save(d, m->slot, &q->d_buf, &q->d_cap, &q->d_len) == 0;
        break;
    case SCHED_MOVE_SWAP_IN:
        if (q->d_saved && d->vt->slot_load(d, m->slot, q->d_buf, q->d_len) == 0) {
            r->w_draft_swapped_in++;
            break;
        }
        d->vt->slot_reset(d, m->slot); /* not saved: rebuilt */
        q->d_fed = 0;
        break;
    case SCHED_MOVE_LOAD: /* the checkpoint's draft state, else rebuilt over the history */
        if (q->d_init) {
            int rc = d->vt->slot_load(d, m->slot, q->d_init, q->d_init_len);
            if (!rc) {
                q->d_fed = q->d_init_fed;
                r->w_draft_loaded++;
                break;
            }
            r->w_draft_load_failed++;
            r->w_draft_load_rc = rc;
        }
        d->vt->slot_reset(d, m->slot);
        q->d_fed = 0;
        break;
    default:
        d->vt->slot_reset(d, m->slot);
        q->d_fed = 0;
        break;
    }
    q->d_saved = m->kind == SCHED_MOVE_SWAP_OUT && q->d_saved;
}

/* The draft model proposes for every verify entry of the step at once (its drafts go into the
 * entries' token rows). If it fails (a KV draft whose pool cannot hold the history), those
 * entries decode plainly, their turns speculate no more, and the loop logs why. */
static void draft_propose(eng_runner_t *r)
{
    eng_draft_t *d = r->draft;
    if (!d || !d->vt->propose_batch) return;
    int n = 0;
    for (int32_t i = 0; i < r->w_n; i++) {
        eng__req_t *q = r->w_reqs[i];
        if (q->w_k <= 0) continue;
        r->w_jobs[n++] = (eng_draft_job_t){.slot = r->w_seqs[i].slot,
                                           .toks = q->ctx, /* the session's history, the turn */
                                           .n_toks = q->n_hist + q->w_ntoks,
                                           .fed = &q->d_fed,
                                           .k = q->w_k,
                                           .out = q->w_toks + 1,
                                           .q = q->spec_q,
                                           .smp = &q->d_smp,
                                           .rng = &q->d_rng};
    }
    if (!n) return;
    int rc = d->vt->propose_batch(d, r->w_jobs, n, r->w_draft_err, sizeof(r->w_draft_err));
    if (!rc) return;
    r->w_draft_rc = rc;
    for (int32_t i = 0; i < r->w_n; i++) {
        eng__req_t *q = r->w_reqs[i];
        wrk_seq_t *ws = &r->w_seqs[i];
        if (q->w_k <= 0) continue;
        q->w_k = 0;
        q->pol.k_max = q->pol.k = 0; /* no more drafts for this turn (the loop reads it after) */
        ws->tokens = q->toks + q->w_ntoks - 1;
        ws->n_tokens = ws->n_logits = 1;
        ws->logits = q->logits;
        ws->verify = false;
        d->vt->slot_reset(d, ws->slot); /* unknown now: rebuilt at the next proposal */
        q->d_fed = 0;
    }
}

/* The plan the loop handed over (the runner's w_* fields): resets, moves in order, prefix
 * snapshot heads, one ragged step, snapshot and commit reads. */
static void run_plan(eng_runner_t *r)
{
    uint64_t t0 = uv_hrtime();
    int rc = 0;
    /* Speculative rollbacks first: each slot's state becomes exactly its kept tokens' before
     * anything else reads, moves or steps it. */
    for (int32_t i = 0; i < r->n_acc; i++) {
        int arc = wrk_spec_accept(r->be, r->acc_slot[i], r->acc_keep[i]);
        if (arc) { /* cannot happen: the verify ran in the previous step of this slot */
            rc = arc;
            snprintf(r->w_err, sizeof(r->w_err), "speculative rollback of slot %d failed: %s",
                     r->acc_slot[i], rcd_strerror(arc));
        }
    }
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
        else
            draft_move(r, m);
    }
    /* Prefix snapshots inside a chunk: run the chunk's head alone up to the boundary and read
     * the state there; the batch step below runs the rest. */
    for (int32_t i = 0; i < r->w_n && !rc; i++) {
        eng__req_t *q = r->w_reqs[i];
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
    if (!rc) draft_propose(r);
    if (!rc && r->w_n) rc = wrk_step(r->be, r->w_seqs, r->w_n, r->w_err, sizeof(r->w_err));
    r->w_step_ns = uv_hrtime() - t0; /* rollbacks, the draft's proposal and the step */
    for (int32_t i = 0; i < r->w_n && !rc; i++) {
        eng__req_t *q = r->w_reqs[i];
        const wrk_seq_t *ws = &r->w_seqs[i];
        int32_t j = q->w_snap_hi - 1;
        if (j >= q->w_snap_lo && q->snap_at[j] == (int32_t)(ws->tokens - q->toks) + ws->n_tokens)
            read_snap(r, q, ws->slot, j);
    }
    for (int32_t i = 0; i < r->w_n && !rc; i++)
        if (r->w_commit[i]) {
            eng__req_t *q = r->w_reqs[i];
            rc = wrk_state_read_n(r->be, r->w_seqs[i].slot, q->state_out, q->state_cap,
                                  &q->state_len);
            /* the turn is over: a KV model's slot gives its blocks back */
            if (!rc && r->kv_bpt) wrk_state_reset(r->be, r->w_seqs[i].slot);
            /* the draft's state goes with it, a KV draft's with its positions (which go back
             * to the draft's pool); not read: the commit goes without */
            q->d_commit = !rc && q->spec && r->draft_state_bytes && r->draft->vt->slot_save &&
                          r->draft->vt->slot_save(r->draft, r->w_seqs[i].slot, &q->d_buf, &q->d_cap,
                                                  &q->d_len) == 0 &&
                          (r->draft_kv_bpt ? q->d_len >= r->draft_state_bytes
                                           : q->d_len == r->draft_state_bytes);
            q->d_commit_fed = q->d_fed;
            if (rc)
                snprintf(r->w_err, sizeof(r->w_err),
                         "commit read failed: the state is %zu bytes, the buffer %zu (%s)",
                         wrk_state_bytes(r->be, r->w_seqs[i].slot), q->state_cap, rcd_strerror(rc));
        }
    r->w_rc = rc;
    wrk_kv_blocks(r->be, &r->w_kv_free, &r->w_kv_total);
    wrk_threads(r->be, &r->w_threads, NULL, &r->w_thread_changes, NULL, NULL);
    r->w_us = uv_hrtime() - t0;
}

/* ---- the thread and its hand-off --------------------------------------------------------- */

static void dev_main(void *arg)
{
    eng_runner_t *r = arg;
    eng_dev_t *d = &r->dev;
#ifdef __linux__
    pthread_setname_np(pthread_self(), "rcd-device");
#endif
    uv_mutex_lock(&d->mu);
    for (;;) {
        while (!d->has_plan && !d->stop)
            uv_cond_wait(&d->cv, &d->mu);
        if (!d->has_plan) break; /* stop, nothing in hand */
        d->has_plan = false;
        uv_mutex_unlock(&d->mu);
        run_plan(r);
        uv_mutex_lock(&d->mu);
        d->finished = true;
        /* Under mu: eng__dev_stop joins only after this send, and closes the handle after. */
        uv_async_send(d->done);
    }
    uv_mutex_unlock(&d->mu);
}

/* Loop: the thread finished a plan (a wake-up may carry several sends, or none new). */
static void dev_done_cb(uv_async_t *a)
{
    eng_runner_t *r = a->data;
    eng_dev_t *d = &r->dev;
    uv_mutex_lock(&d->mu);
    bool finished = d->finished;
    d->finished = false;
    uv_mutex_unlock(&d->mu);
    if (!finished) return;
    uv_unref((uv_handle_t *)a); /* idle again: the handle alone keeps no loop alive */
    eng__plan_done(r);
}

static void dev_closed(uv_handle_t *h)
{
    free(h);
}

int eng__dev_start(eng_runner_t *r, char *err, size_t errlen)
{
    eng_dev_t *d = &r->dev;
    int rc;
    if ((rc = uv_mutex_init(&d->mu)))
        return rcd_fail(RCD_EINTERNAL, err, errlen, "runner: device mutex: %s", uv_strerror(rc));
    if ((rc = uv_cond_init(&d->cv))) {
        uv_mutex_destroy(&d->mu);
        return rcd_fail(RCD_EINTERNAL, err, errlen, "runner: device condition: %s",
                        uv_strerror(rc));
    }
    if (!(d->done = calloc(1, sizeof(*d->done)))) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "runner: out of memory");
        goto fail;
    }
    if ((rc = uv_async_init(r->loop, d->done, dev_done_cb))) {
        free(d->done);
        d->done = NULL;
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "runner: cannot create the loop wake-up: %s",
                      uv_strerror(rc));
        goto fail;
    }
    d->done->data = r;
    uv_unref((uv_handle_t *)d->done);
    uv_thread_options_t to = {.flags = UV_THREAD_HAS_STACK_SIZE, .stack_size = DEV_STACK_BYTES};
    if ((rc = uv_thread_create_ex(&d->thread, &to, dev_main, r))) {
        uv_close((uv_handle_t *)d->done, dev_closed);
        d->done = NULL;
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "runner: cannot start the device thread: %s",
                      uv_strerror(rc));
        goto fail;
    }
    d->running = true;
    return 0;
fail:
    uv_cond_destroy(&d->cv);
    uv_mutex_destroy(&d->mu);
    return rc;
}

void eng__dev_run(eng_runner_t *r)
{
    eng_dev_t *d = &r->dev;
    r->busy = true;
    r->w_rc = 0;
    uv_ref((uv_handle_t *)d->done); /* a plan in flight keeps the loop running */
    uv_mutex_lock(&d->mu);
    d->has_plan = true;
    uv_cond_signal(&d->cv);
    uv_mutex_unlock(&d->mu);
}

void eng__dev_stop(eng_runner_t *r)
{
    eng_dev_t *d = &r->dev;
    if (!d->running) return;
    uv_mutex_lock(&d->mu);
    d->stop = true;
    uv_cond_signal(&d->cv);
    uv_mutex_unlock(&d->mu);
    uv_thread_join(&d->thread);
    d->running = false;
    uv_close((uv_handle_t *)d->done, dev_closed);
    d->done = NULL;
    uv_cond_destroy(&d->cv);
    uv_mutex_destroy(&d->mu);
}
