/* daemon: the minimal batching runner (see dmn_runner.h). One step is in flight at a time;
 * its plan is built on the loop thread, run by uv_queue_work, and its results dispatched in
 * the after-work callback. */
#include "daemon/dmn_runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_log.h"

struct dmn_runner {
    uv_loop_t *loop;
    wrk_backend_t *be;
    int vocab, max_queue, n_held;
    dmn_seq_t *head, *tail; /* every held sequence, FIFO by submission */
    int *free_slots, n_free;
    bool busy, pumping, repump;
    uv_work_t work;
    /* the plan of the step in flight */
    int n_plan;
    dmn_seq_t **plan_seq;
    wrk_seq_t *plan;
    bool *plan_init; /* write init_state / reset before the step */
    int rc;
    char err[256];
};

static void pump(dmn_runner_t *r);

int dmn_runner_create(uv_loop_t *loop, wrk_backend_t *be, int max_queue, dmn_runner_t **out)
{
    dmn_runner_t *r = calloc(1, sizeof(*r));
    if (!r) return RCD_ENOMEM;
    r->loop = loop;
    r->be = be;
    r->vocab = wrk_model_info(be->model)->vocab_size;
    r->max_queue = max_queue;
    int n = be->n_slots;
    r->free_slots = malloc(sizeof(int) * (size_t)n);
    r->plan_seq = malloc(sizeof(*r->plan_seq) * (size_t)n);
    r->plan = malloc(sizeof(*r->plan) * (size_t)n);
    r->plan_init = malloc(sizeof(bool) * (size_t)n);
    if (!r->free_slots || !r->plan_seq || !r->plan || !r->plan_init) {
        dmn_runner_destroy(r);
        return RCD_ENOMEM;
    }
    for (int i = 0; i < n; i++)
        r->free_slots[r->n_free++] = n - 1 - i;
    r->work.data = r;
    *out = r;
    return 0;
}

void dmn_runner_destroy(dmn_runner_t *r)
{
    if (!r) return;
    free(r->free_slots);
    free(r->plan_seq);
    free(r->plan);
    free(r->plan_init);
    free(r);
}

int dmn_runner_held(const dmn_runner_t *r)
{
    return r->n_held;
}

static void unlink_seq(dmn_runner_t *r, dmn_seq_t *s)
{
    dmn_seq_t **pp = &r->head, *prev = NULL;
    while (*pp && *pp != s) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = s->next;
    if (r->tail == s) r->tail = prev;
    s->next = NULL;
    if (s->admitted) r->free_slots[r->n_free++] = s->slot;
    s->admitted = false;
    r->n_held--;
}

int dmn_runner_submit(dmn_runner_t *r, dmn_seq_t *s)
{
    if (r->n_held >= r->max_queue) return RCD_ETOOBIG;
    if (s->n_prompt < 1) return RCD_EINVAL;
    s->next = NULL;
    s->slot = -1;
    s->fed = 0;
    s->pending = -1;
    s->admitted = s->started = s->in_step = s->cancelled = s->finishing = false;
    s->decode_ready = false;
    s->state_out = NULL;
    if (r->tail)
        r->tail->next = s;
    else
        r->head = s;
    r->tail = s;
    r->n_held++;
    pump(r);
    return 0;
}

void dmn_runner_feed(dmn_runner_t *r, dmn_seq_t *s, int32_t token)
{
    s->pending = token;
    s->decode_ready = true;
    pump(r);
}

int dmn_runner_finish(dmn_runner_t *r, dmn_seq_t *s, int32_t last, void *state_out)
{
    if (!state_out || last < 0) {
        unlink_seq(r, s);
        pump(r);
        return 0;
    }
    s->finishing = true;
    s->state_out = state_out;
    s->pending = last;
    s->decode_ready = true;
    pump(r);
    return 1;
}

int dmn_runner_cancel(dmn_runner_t *r, dmn_seq_t *s)
{
    if (s->in_step) {
        s->cancelled = true;
        return 1;
    }
    unlink_seq(r, s);
    pump(r);
    return 0;
}

/* ---- the step ------------------------------------------------------------------------- */

static void work_cb(uv_work_t *w)
{
    dmn_runner_t *r = w->data;
    r->rc = 0;
    for (int i = 0; i < r->n_plan && !r->rc; i++) {
        if (!r->plan_init[i]) continue;
        const dmn_seq_t *s = r->plan_seq[i];
        r->rc = s->init_state ? wrk_state_write(r->be, s->slot, s->init_state)
                              : wrk_state_reset(r->be, s->slot);
        if (r->rc) snprintf(r->err, sizeof(r->err), "state init of slot %d failed", s->slot);
    }
    if (!r->rc) r->rc = wrk_step(r->be, r->plan, r->n_plan, r->err, sizeof(r->err));
    for (int i = 0; i < r->n_plan && !r->rc; i++) {
        dmn_seq_t *s = r->plan_seq[i];
        if (s->finishing && s->state_out && s->fed >= s->n_prompt)
            r->rc = wrk_state_read(r->be, s->slot, s->state_out);
    }
}

static void after_work_cb(uv_work_t *w, int status)
{
    dmn_runner_t *r = w->data;
    r->busy = false;
    r->pumping = true; /* callbacks below may feed/finish: pump once at the end */
    if (r->rc) dmn_log(DMN_ERROR, "step_failed", NULL, NULL, "%s", r->err);
    for (int i = 0; i < r->n_plan; i++) {
        dmn_seq_t *s = r->plan_seq[i];
        s->in_step = false;
        if (s->cancelled || r->rc) {
            unlink_seq(r, s);
            s->rc = s->cancelled ? RCD_ECANCELLED : RCD_EINTERNAL;
            s->cb(s, DMN_SEQ_FAILED);
            continue;
        }
        if (s->finishing) {
            unlink_seq(r, s);
            s->cb(s, DMN_SEQ_DONE);
            continue;
        }
        if (r->plan[i].n_logits > 0) s->cb(s, DMN_SEQ_LOGITS);
    }
    r->n_plan = 0;
    r->pumping = false;
    pump(r);
}

/* Builds and starts the next step: decodes (and finishing feeds) first, in admission order,
 * then prefill chunks while the token budget lasts. */
static void pump(dmn_runner_t *r)
{
    if (r->busy || r->pumping) return;
    int budget = r->be->max_step_tokens, n = 0;
    for (dmn_seq_t *s = r->head; s; s = s->next) { /* admit FIFO */
        if (s->admitted) continue;
        if (r->n_free == 0) break;
        s->slot = r->free_slots[--r->n_free];
        s->admitted = true;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (dmn_seq_t *s = r->head; s && n < r->be->n_slots && budget > 0; s = s->next) {
            if (!s->admitted) continue;
            wrk_seq_t *e = &r->plan[n];
            memset(e, 0, sizeof(*e));
            e->slot = s->slot;
            if (pass == 0 && s->decode_ready) {
                e->n_tokens = 1;
                e->tokens = &s->pending;
                e->n_logits = s->finishing ? 0 : 1;
                e->logits = s->logits;
                s->decode_ready = false;
            } else if (pass == 1 && !s->started && s->fed < s->n_prompt) {
                int take = s->n_prompt - s->fed;
                if (take > budget) take = budget;
                e->n_tokens = take;
                e->tokens = s->prompt + s->fed;
                s->fed += take;
                e->n_logits = s->fed == s->n_prompt ? 1 : 0;
                e->logits = s->logits;
            } else {
                continue;
            }
            r->plan_init[n] = false;
            if (!s->in_step && s->fed == e->n_tokens && pass == 1) {
                r->plan_init[n] = true; /* first chunk of this sequence */
                s->cb(s, DMN_SEQ_STARTED);
            }
            if (pass == 1 && s->fed == s->n_prompt) s->started = true;
            budget -= e->n_tokens;
            s->in_step = true;
            r->plan_seq[n++] = s;
        }
    }
    r->n_plan = n;
    if (n == 0) return;
    r->busy = true;
    uv_queue_work(r->loop, &r->work, work_cb, after_work_cb);
}
