/* Shared by the scheduler's unit tests (sched_test.c, sched_abuse_test.c, sched_spec_test.c):
 * building a scheduler, events and steps on a simulated clock, and finding a sequence's entry,
 * move or finish in a plan. */
#ifndef RCD_SCHED_TEST_UTIL_H
#define RCD_SCHED_TEST_UTIL_H

#include <stdlib.h>
#include <string.h>

#include "scheduler/sched.h"
#include "tests/support/rcd_test.h"

static char err[256];

static inline sched_t *mk(const sched_config_t *c)
{
    sched_t *s = NULL;
    int rc = sched_create(c, &s, err, sizeof(err));
    CHECK_MSG(rc == 0 && s, "sched_create: %s", err);
    return s;
}

static inline sched_event_t ev_arrive(uint64_t id, int prio, uint64_t tenant, int prompt,
                                      int max_new)
{
    sched_event_t e = {.kind = SCHED_EV_ARRIVE, .id = id};
    e.arrive.priority = prio;
    e.arrive.tenant = tenant;
    e.arrive.prompt_tokens = prompt;
    e.arrive.max_new_tokens = max_new;
    return e;
}

static inline sched_event_t ev_cancel(uint64_t id)
{
    return (sched_event_t){.kind = SCHED_EV_CANCEL, .id = id};
}

static inline sched_event_t ev_done(uint64_t step, int status, const sched_result_t *res, int n)
{
    sched_event_t e = {.kind = SCHED_EV_STEP_DONE};
    e.done.step = step;
    e.done.status = status;
    e.done.results = res;
    e.done.n_results = n;
    return e;
}

static inline const sched_plan_t *step(sched_t *s, int64_t now, const sched_event_t *ev, int n)
{
    const sched_plan_t *p = NULL;
    int rc = sched_step(s, now, ev, n, &p, err, sizeof(err));
    CHECK_MSG(rc == 0, "sched_step: %s", err);
    return p;
}

/* Reports plan p done with every logits entry producing a plain token. */
static inline const sched_plan_t *step_done(sched_t *s, int64_t now, const sched_plan_t *p)
{
    sched_event_t e = ev_done(p->step, 0, NULL, 0);
    return step(s, now, &e, 1);
}

static inline const sched_entry_t *entry_of(const sched_plan_t *p, uint64_t id)
{
    for (int i = 0; i < p->n_entries; i++)
        if (p->entries[i].id == id) return &p->entries[i];
    return NULL;
}

static inline const sched_move_t *move_of(const sched_plan_t *p, uint64_t id)
{
    for (int i = 0; i < p->n_moves; i++)
        if (p->moves[i].id == id) return &p->moves[i];
    return NULL;
}

static inline const sched_finish_t *fin_of(const sched_plan_t *p, uint64_t id)
{
    for (int i = 0; i < p->n_finished; i++)
        if (p->finished[i].id == id) return &p->finished[i];
    return NULL;
}

#endif
