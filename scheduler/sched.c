/* scheduler: lifecycle, the request table, and events (arrivals, cancellations, finished or
 * failed steps). The policy that turns the resulting state into a plan is in sched_plan.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/sched_int.h"

/* Hard ceilings that keep every size computation far from overflow. */
#define SCHED__MAX_SLOTS 65536
#define SCHED__MAX_QUEUE (1 << 20)
#define SCHED__MAX_INFLIGHT 8
#define SCHED__MAX_EVENTS (1 << 20)

void sched_config_default(sched_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->n_slots = 8;
    c->n_host_slots = 8;
    c->max_queue = 256;
    c->step_tokens = 512;
    c->max_chunk = 0; /* half the budget */
    c->n_priorities = 4;
    c->aging_us = 5 * 1000 * 1000;
    c->min_run_steps = 8;
    c->max_inflight = 1;
    c->tenant_fair = true;
    c->max_events = 1024;
}

static int check_range(const char *name, int64_t v, int64_t lo, int64_t hi, char *err,
                       size_t errlen)
{
    if (v < lo || v > hi)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "scheduler config: %s = %lld, must be in [%lld, %lld]", name, (long long)v,
                        (long long)lo, (long long)hi);
    return 0;
}

int sched_config_check(const sched_config_t *c, char *err, size_t errlen)
{
    int rc;
    if (!c) return rcd_fail(RCD_EINVAL, err, errlen, "scheduler config: NULL");
    if ((rc = check_range("n_slots", c->n_slots, 1, SCHED__MAX_SLOTS, err, errlen)) ||
        (rc = check_range("n_host_slots", c->n_host_slots, 0, SCHED__MAX_QUEUE, err, errlen)) ||
        (rc = check_range("max_queue", c->max_queue, 0, SCHED__MAX_QUEUE, err, errlen)) ||
        (rc = check_range("step_tokens", c->step_tokens, c->n_slots, INT32_MAX / 4, err, errlen)) ||
        (rc = check_range("max_chunk", c->max_chunk, 0, c->step_tokens, err, errlen)) ||
        (rc = check_range("max_prompt_tokens", c->max_prompt_tokens, 0, INT32_MAX / 4, err,
                          errlen)) ||
        (rc = check_range("max_new_tokens", c->max_new_tokens, 0, INT32_MAX / 4, err, errlen)) ||
        (rc = check_range("n_priorities", c->n_priorities, 1, 1 << 16, err, errlen)) ||
        (rc = check_range("aging_us", c->aging_us, 0, INT64_MAX / 4, err, errlen)) ||
        (rc = check_range("min_run_steps", c->min_run_steps, 0, 1 << 20, err, errlen)) ||
        (rc = check_range("max_inflight", c->max_inflight, 1, SCHED__MAX_INFLIGHT, err, errlen)) ||
        (rc = check_range("max_tenant_slots", c->max_tenant_slots, 0, c->n_slots, err, errlen)) ||
        (rc = check_range("max_events", c->max_events, 1, SCHED__MAX_EVENTS, err, errlen)))
        return rc;
    if (c->no_chunking &&
        (rc = check_range("max_prompt_tokens (no_chunking)", c->max_prompt_tokens, 1,
                          (int64_t)c->step_tokens - c->n_slots + 1, err, errlen)))
        return rc;
    return 0;
}

int sched_create(const sched_config_t *cfg, sched_t **out, char *err, size_t errlen)
{
    int rc = 0;
    sched_t *s = NULL;
    if (!cfg || !out) return rcd_fail(RCD_EINVAL, err, errlen, "sched_create: NULL argument");
    *out = NULL;
    if ((rc = sched_config_check(cfg, err, errlen))) return rc;

    s = calloc(1, sizeof(*s));
    if (!s) goto nomem;
    s->cfg = *cfg;
    if (s->cfg.max_chunk == 0)
        s->cfg.max_chunk = s->cfg.step_tokens > 1 ? s->cfg.step_tokens / 2 : 1;
    int32_t ns = cfg->n_slots;
    s->pool = ns + cfg->max_queue + cfg->n_host_slots;
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)s->pool)
        cap <<= 1;
    s->map_mask = cap - 1;
    s->finished_cap = s->pool + cfg->max_events;

    s->reqs = calloc((size_t)s->pool, sizeof(*s->reqs));
    s->free_list = malloc((size_t)s->pool * sizeof(int32_t));
    s->map = malloc((size_t)cap * sizeof(int32_t));
    s->slot_req = malloc((size_t)ns * sizeof(int32_t));
    s->wait = malloc((size_t)s->pool * sizeof(int32_t));
    s->flight = calloc((size_t)cfg->max_inflight, sizeof(*s->flight));
    s->moves = malloc((size_t)ns * 4 * sizeof(*s->moves)); /* outs, then ins staged high */
    s->entries = malloc((size_t)ns * sizeof(*s->entries));
    s->finished = malloc((size_t)s->finished_cap * sizeof(*s->finished));
    s->tenants = malloc((size_t)ns * sizeof(uint64_t));
    s->order = malloc((size_t)ns * sizeof(int32_t));
    s->take = malloc((size_t)ns * sizeof(int32_t));
    if (!s->reqs || !s->free_list || !s->map || !s->slot_req || !s->wait || !s->flight ||
        !s->moves || !s->entries || !s->finished || !s->tenants || !s->order || !s->take)
        goto nomem;
    for (int32_t i = 0; i < cfg->max_inflight; i++) {
        s->flight[i].items = malloc((size_t)ns * 3 * sizeof(sched__item_t));
        if (!s->flight[i].items) goto nomem;
    }
    for (int32_t i = 0; i < s->pool; i++)
        s->free_list[i] = s->pool - 1 - i;
    s->n_free = s->pool;
    memset(s->map, 0xff, (size_t)cap * sizeof(int32_t));
    for (int32_t i = 0; i < ns; i++)
        s->slot_req[i] = -1;
    s->next_seq = 1;
    s->next_step = 1;
    s->last_now = 0;
    s->plan.moves = s->moves;
    s->plan.entries = s->entries;
    s->plan.finished = s->finished;
    *out = s;
    return 0;

nomem:
    rc = rcd_fail(RCD_ENOMEM, err, errlen, "sched_create: out of memory for %d slots, queue %d",
                  cfg->n_slots, cfg->max_queue);
    sched_destroy(s);
    return rc;
}

void sched_destroy(sched_t *s)
{
    if (!s) return;
    if (s->flight)
        for (int32_t i = 0; i < s->cfg.max_inflight; i++)
            free(s->flight[i].items);
    free(s->flight);
    free(s->reqs);
    free(s->free_list);
    free(s->map);
    free(s->slot_req);
    free(s->wait);
    free(s->moves);
    free(s->entries);
    free(s->finished);
    free(s->tenants);
    free(s->order);
    free(s->take);
    free(s);
}

/* ---- id map: linear probing with backward-shift deletion ------------------------------- */

static uint32_t hash_id(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (uint32_t)x;
}

sched__req_t *sched__lookup(sched_t *s, uint64_t id)
{
    for (uint32_t i = hash_id(id) & s->map_mask;; i = (i + 1) & s->map_mask) {
        int32_t k = s->map[i];
        if (k < 0) return NULL;
        if (s->reqs[k].id == id) return &s->reqs[k];
    }
}

static void map_insert(sched_t *s, int32_t k)
{
    uint32_t i = hash_id(s->reqs[k].id) & s->map_mask;
    while (s->map[i] >= 0)
        i = (i + 1) & s->map_mask;
    s->map[i] = k;
}

static void map_remove(sched_t *s, uint64_t id)
{
    uint32_t i = hash_id(id) & s->map_mask;
    while (s->map[i] >= 0 && s->reqs[s->map[i]].id != id)
        i = (i + 1) & s->map_mask;
    if (s->map[i] < 0) return;
    /* Shift later members of the cluster back so no lookup ever stops at a hole too early. */
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & s->map_mask; s->map[j] >= 0; j = (j + 1) & s->map_mask) {
        uint32_t home = hash_id(s->reqs[s->map[j]].id) & s->map_mask;
        /* j may move to the hole when its home is not in (hole, j] cyclically. */
        bool in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!in_range) {
            s->map[hole] = s->map[j];
            hole = j;
        }
    }
    s->map[hole] = -1;
}

/* ---- the waiting set ------------------------------------------------------------------- */

void sched__wait_add(sched_t *s, sched__req_t *r)
{
    r->wait_pos = s->n_wait;
    s->wait[s->n_wait++] = (int32_t)(r - s->reqs);
}

void sched__wait_remove(sched_t *s, sched__req_t *r)
{
    int32_t last = s->wait[--s->n_wait];
    s->wait[r->wait_pos] = last;
    s->reqs[last].wait_pos = r->wait_pos;
    r->wait_pos = -1;
}

int64_t sched__eff(const sched_t *s, const sched__req_t *r, int64_t now)
{
    if (r->state == SCHED__RUNNING) return r->eff_frozen;
    if (s->cfg.aging_us <= 0) return r->prio;
    return r->prio + (r->waited_us + (now - r->wait_since_us)) / s->cfg.aging_us;
}

/* ---- finishing --------------------------------------------------------------------------- */

static sched_finish_t *finish_record(sched_t *s, uint64_t id, int status)
{
    /* Bounded by construction: live requests + this call's arrivals <= finished_cap. */
    sched_finish_t *f = &s->finished[s->plan.n_finished++];
    memset(f, 0, sizeof(*f));
    f->id = id;
    f->status = status;
    f->ttft_us = -1;
    f->tpot_us = -1;
    return f;
}

void sched__finish(sched_t *s, sched__req_t *r, int64_t now, int status, const char *fmt, ...)
{
    sched_finish_t *f = finish_record(s, r->id, status);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
        va_end(ap);
    }
    if (r->state == SCHED__WAITING || r->state == SCHED__SWAPPED)
        r->waited_us += now - r->wait_since_us;
    f->n_generated = r->generated;
    f->n_preemptions = r->n_preempt;
    f->queue_us = (r->admitted_once ? r->first_admit_us : now) - r->arrival_us;
    f->wait_us = r->waited_us;
    if (r->generated > 0) f->ttft_us = r->first_token_us - r->arrival_us;
    if (r->generated > 1) f->tpot_us = (r->last_token_us - r->first_token_us) / (r->generated - 1);

    switch (r->state) {
    case SCHED__RUNNING:
        s->slot_req[r->slot] = -1;
        s->n_running--;
        break;
    case SCHED__SWAPPED:
        sched__wait_remove(s, r);
        s->n_swapped--;
        break;
    case SCHED__WAITING:
        sched__wait_remove(s, r);
        s->n_waiting_fresh--;
        break;
    case SCHED__FREE:
        break;
    }
    if (status == 0)
        s->stats.completed++;
    else if (status == RCD_ECANCELLED)
        s->stats.cancelled++;
    else if (status == RCD_EDEADLINE)
        s->stats.expired++;
    else
        s->stats.failed++;
    map_remove(s, r->id);
    r->state = SCHED__FREE;
    r->id = 0;
    r->seq = 0;
    s->free_list[s->n_free++] = (int32_t)(r - s->reqs);
}

static int reject(sched_t *s, uint64_t id, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int reject(sched_t *s, uint64_t id, int status, const char *fmt, ...)
{
    sched_finish_t *f = finish_record(s, id, status);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
    va_end(ap);
    s->stats.rejected++;
    return status;
}

/* ---- events ------------------------------------------------------------------------------ */

/* Returns 0 when queued, else the refusal's code (already in plan->finished). */
static int on_arrive(sched_t *s, int64_t now, const sched_event_t *e)
{
    const sched_arrival_t *a = &e->arrive;
    const sched_config_t *c = &s->cfg;
    s->stats.arrived++;
    if (sched__lookup(s, e->id))
        return reject(s, e->id, RCD_EEXISTS, "request id %llu is already queued or running",
                      (unsigned long long)e->id);
    if (a->priority < 0 || a->priority >= c->n_priorities)
        return reject(s, e->id, RCD_EINVAL, "priority %d is outside [0, %d]", a->priority,
                      c->n_priorities - 1);
    if (a->prompt_tokens < 1)
        return reject(s, e->id, RCD_EINVAL, "prompt has %d tokens; at least 1 is needed",
                      a->prompt_tokens);
    if (a->max_new_tokens < 0)
        return reject(s, e->id, RCD_EINVAL, "max_new_tokens is %d", a->max_new_tokens);
    if (c->max_prompt_tokens && a->prompt_tokens > c->max_prompt_tokens)
        return reject(s, e->id, RCD_ETOOBIG,
                      "prompt of %d tokens exceeds the server limit of %d tokens", a->prompt_tokens,
                      c->max_prompt_tokens);
    if (c->max_new_tokens && a->max_new_tokens > c->max_new_tokens)
        return reject(s, e->id, RCD_ETOOBIG, "max_new_tokens %d exceeds the server limit of %d",
                      a->max_new_tokens, c->max_new_tokens);
    if ((int64_t)a->prompt_tokens + a->max_new_tokens > INT32_MAX / 2)
        return reject(s, e->id, RCD_ETOOBIG, "prompt plus max_new_tokens is too large");
    if (a->deadline_us && a->deadline_us <= now)
        return reject(s, e->id, RCD_EDEADLINE, "deadline had already passed on arrival");
    /* Arrivals are admitted after this call's events: free slots count as queue room. */
    if (s->n_waiting_fresh >= c->max_queue + (c->n_slots - s->n_running) || s->n_free == 0)
        return reject(s, e->id, RCD_ETOOBIG,
                      "server busy: the queue is full (%d requests waiting, %d running)",
                      s->n_waiting_fresh, s->n_running);

    int32_t k = s->free_list[--s->n_free];
    sched__req_t *r = &s->reqs[k];
    memset(r, 0, sizeof(*r));
    r->id = e->id;
    r->tenant = a->tenant;
    r->seq = s->next_seq++;
    r->state = SCHED__WAITING;
    r->resume = a->resume;
    r->commit = a->commit;
    r->prio = a->priority;
    r->prompt = a->prompt_tokens;
    r->max_new = a->max_new_tokens;
    r->spec = a->spec_tokens < 0 ? 0 : a->spec_tokens > 16 ? 16 : a->spec_tokens;
    r->deadline_us = a->deadline_us;
    r->arrival_us = now;
    r->wait_since_us = now;
    r->slot = -1;
    map_insert(s, k);
    sched__wait_add(s, r);
    s->n_waiting_fresh++;
    return 0;
}

static void on_cancel(sched_t *s, int64_t now, const sched_event_t *e)
{
    sched__req_t *r = sched__lookup(s, e->id);
    if (r) /* unknown ids are requests that already ended: nothing to do */
        sched__finish(s, r, now, RCD_ECANCELLED, "cancelled");
}

/* Generation is over (stop, or max_new_tokens reached) and everything that must be fed has
 * run: with commit the final feed's step, for a prompt-only request the last chunk's. */
static void maybe_complete(sched_t *s, sched__req_t *r, int64_t now)
{
    if (!r->stopped && r->generated < r->max_new) return;
    if (r->fed < sched__feed_target(r)) return;
    if ((r->commit || r->max_new == 0) && r->inflight_items > 0) return;
    sched__finish(s, r, now, 0, NULL);
}

static sched__flight_t *find_flight(sched_t *s, uint64_t step)
{
    for (int32_t i = 0; i < s->cfg.max_inflight; i++)
        if (s->flight[i].step == step && step != 0) return &s->flight[i];
    return NULL;
}

static const sched_result_t *result_of(const sched_event_t *e, uint64_t id)
{
    static const sched_result_t token = {.outcome = SCHED_OUT_TOKEN};
    for (int32_t i = 0; i < e->done.n_results; i++)
        if (e->done.results[i].id == id) return &e->done.results[i];
    return &token;
}

static void on_step_done(sched_t *s, int64_t now, const sched_event_t *e)
{
    sched__flight_t *fl = find_flight(s, e->done.step);
    int status = e->done.status;
    int64_t dt = now - fl->issued_us;
    s->stats.steps_done++;
    s->stats.step_us_sum += dt;
    if (dt > s->stats.step_us_max) s->stats.step_us_max = dt;

    for (int32_t i = 0; i < fl->n_items; i++) {
        sched__item_t *it = &fl->items[i];
        sched__req_t *r = &s->reqs[it->req];
        if (r->state == SCHED__FREE || r->seq != it->seq)
            continue; /* ended meanwhile; the daemon dropped or ignores its entry */
        r->inflight_items--;
        if (it->logits) r->inflight_logits--;
        if (status < 0) {
            sched__finish(s, r, now, status, "worker step %llu failed: %s",
                          (unsigned long long)fl->step, rcd_strerror(status));
            continue;
        }
        if (it->logits && fl->step > r->ignore_upto) {
            const sched_result_t *res = result_of(e, r->id);
            sched_outcome_t o = res->outcome;
            if (o == SCHED_OUT_FAILED) {
                sched__finish(s, r, now, RCD_EINTERNAL, "sequence failed in step %llu",
                              (unsigned long long)fl->step);
                continue;
            }
            if (r->generated == 0) r->first_token_us = now;
            r->last_token_us = now;
            r->generated++;
            /* accepted drafts: more tokens sampled, and fed (the verify kept them) */
            r->generated += res->n_extra;
            r->fed += res->n_extra;
            s->stats.spec_drafted += (uint64_t)res->n_drafted;
            s->stats.spec_accepted += (uint64_t)res->n_extra;
            if (res->set_spec) r->spec = res->spec_tokens;
            if (o == SCHED_OUT_STOP) {
                /* Plans already issued may feed it further; the daemon drops those entries
                 * (it sampled the stop first), so forget them: results ignored, fed rewound. */
                r->stopped = true;
                r->ignore_upto = s->next_step - 1;
                r->fed = r->prompt + r->generated - 1;
            }
        }
        maybe_complete(s, r, now);
    }
    fl->step = 0;
    fl->n_items = 0;
    s->n_flight--;
}

/* Checks the whole call before anything is applied, so a malformed call changes nothing. */
static int validate(sched_t *s, int64_t now, const sched_event_t *ev, int32_t n, char *err,
                    size_t errlen)
{
    if (n < 0 || (n > 0 && !ev))
        return rcd_fail(RCD_EINVAL, err, errlen, "sched_step: %d events at %p", n, (void *)ev);
    if (n > s->cfg.max_events)
        return rcd_fail(RCD_ETOOBIG, err, errlen, "sched_step: %d events, at most %d per call", n,
                        s->cfg.max_events);
    if (now < 0 || now > INT64_MAX / 4)
        return rcd_fail(RCD_EINVAL, err, errlen, "sched_step: time %lld is out of range",
                        (long long)now);
    if (now < s->last_now)
        return rcd_fail(RCD_EINVAL, err, errlen, "sched_step: time went backwards (%lld < %lld)",
                        (long long)now, (long long)s->last_now);
    for (int32_t i = 0; i < n; i++) {
        const sched_event_t *e = &ev[i];
        switch (e->kind) {
        case SCHED_EV_ARRIVE:
        case SCHED_EV_CANCEL:
            break;
        case SCHED_EV_STEP_DONE:
            if (!find_flight(s, e->done.step))
                return rcd_fail(RCD_EINVAL, err, errlen,
                                "sched_step: event %d reports step %llu, which is not in flight", i,
                                (unsigned long long)e->done.step);
            for (int32_t j = 0; j < i; j++)
                if (ev[j].kind == SCHED_EV_STEP_DONE && ev[j].done.step == e->done.step)
                    return rcd_fail(RCD_EINVAL, err, errlen, "sched_step: step %llu reported twice",
                                    (unsigned long long)e->done.step);
            if (e->done.status > 0 || e->done.n_results < 0 ||
                (e->done.n_results > 0 && !e->done.results))
                return rcd_fail(RCD_EINVAL, err, errlen,
                                "sched_step: malformed STEP_DONE for step %llu",
                                (unsigned long long)e->done.step);
            for (int32_t j = 0; j < e->done.n_results; j++)
                if (e->done.results[j].outcome < SCHED_OUT_TOKEN ||
                    e->done.results[j].outcome > SCHED_OUT_FAILED ||
                    e->done.results[j].n_extra < 0 || e->done.results[j].n_drafted > 16 ||
                    e->done.results[j].n_extra > e->done.results[j].n_drafted ||
                    (e->done.results[j].set_spec &&
                     (e->done.results[j].spec_tokens < 0 || e->done.results[j].spec_tokens > 16)))
                    return rcd_fail(
                        RCD_EINVAL, err, errlen, "sched_step: step %llu result %d has outcome %d",
                        (unsigned long long)e->done.step, j, (int)e->done.results[j].outcome);
            break;
        default:
            return rcd_fail(RCD_EINVAL, err, errlen, "sched_step: event %d has kind %d", i,
                            (int)e->kind);
        }
    }
    return 0;
}

static void expire_deadlines(sched_t *s, int64_t now)
{
    for (int32_t i = 0; i < s->n_wait;) {
        sched__req_t *r = &s->reqs[s->wait[i]];
        if (r->deadline_us && r->deadline_us <= now) {
            /* finish swap-removes wait[i]; look at index i again */
            sched__finish(s, r, now, RCD_EDEADLINE, "deadline passed after %lld us in the queue",
                          (long long)(r->waited_us + now - r->wait_since_us));
            continue;
        }
        i++;
    }
}

int sched_step(sched_t *s, int64_t now, const sched_event_t *events, int32_t n_events,
               const sched_plan_t **plan, char *err, size_t errlen)
{
    if (!s || !plan) return rcd_fail(RCD_EINVAL, err, errlen, "sched_step: NULL argument");
    s->plan.step = 0;
    s->plan.n_moves = 0;
    s->plan.n_entries = 0;
    s->plan.n_tokens = 0;
    s->plan.n_finished = 0;
    *plan = &s->plan;
    int rc = validate(s, now, events, n_events, err, errlen);
    if (rc) return rc;
    s->last_now = now;

    for (int32_t i = 0; i < n_events; i++) {
        const sched_event_t *e = &events[i];
        if (e->kind == SCHED_EV_ARRIVE)
            (void)on_arrive(s, now, e);
        else if (e->kind == SCHED_EV_CANCEL)
            on_cancel(s, now, e);
        else
            on_step_done(s, now, e);
    }
    expire_deadlines(s, now);
    if (s->n_flight < s->cfg.max_inflight) sched__plan(s, now);
    return 0;
}

int64_t sched_next_deadline(const sched_t *s)
{
    int64_t t = INT64_MAX;
    for (int32_t i = 0; i < s->n_wait; i++) {
        const sched__req_t *r = &s->reqs[s->wait[i]];
        if (r->deadline_us && r->deadline_us < t) t = r->deadline_us;
    }
    return t;
}

void sched_get_stats(const sched_t *s, sched_stats_t *out)
{
    *out = s->stats;
    out->running = s->n_running;
    out->waiting = s->n_waiting_fresh;
    out->swapped = s->n_swapped;
    out->inflight = s->n_flight;
}
