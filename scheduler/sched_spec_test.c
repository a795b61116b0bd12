/* scheduler unit tests: speculative decoding's draft reservation (a decode entry charged
 * k + 1 tokens of the step budget, drafts kept and dropped) on a simulated clock. */
#include "scheduler/sched_test_util.h"

/* Speculative decoding: a decode entry of a speculating request reserves its draft tokens in the
 * budget after every prefill's one token (at most what max_new leaves); a result's n_extra
 * advances its generated and fed counts, spec_tokens changes the reservation, and the commit
 * feed lands on the stream's last token. A malformed speculative result is refused whole. */
static void test_speculative(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 2;
    c.step_tokens = 10;
    c.max_inflight = 1;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 3, 8)};
    ev[0].arrive.spec_tokens = 4;
    ev[0].arrive.commit = true;
    const sched_plan_t *p = step(s, 0, ev, 1);
    CHECK(p->step == 1 && entry_of(p, 1)->n_tokens == 3 && entry_of(p, 1)->n_draft == 0);
    ev[0] = ev_done(1, 0, NULL, 0);
    ev[1] = ev_arrive(2, 0, 0, 20, 1); /* a prefill beside it: one token of it comes first */
    p = step(s, 1, ev, 2);
    const sched_entry_t *e = entry_of(p, 1);
    CHECK(p->step == 2 && e && e->decode && e->start == 3 && e->n_tokens == 1 && e->n_draft == 4);
    CHECK(entry_of(p, 2) && entry_of(p, 2)->n_tokens == 5 && p->n_tokens == 10);
    sched_result_t bad = {.id = 1, .outcome = SCHED_OUT_TOKEN, .n_drafted = 2, .n_extra = 3};
    ev[0] = ev_done(2, 0, &bad, 1);
    const sched_plan_t *q = NULL;
    CHECK(sched_step(s, 2, ev, 1, &q, err, sizeof(err)) == RCD_EINVAL);
    sched_result_t r = {.id = 1,
                        .outcome = SCHED_OUT_TOKEN,
                        .n_drafted = 4,
                        .n_extra = 2,
                        .set_spec = true,
                        .spec_tokens = 3};
    ev[0] = ev_done(2, 0, &r, 1);
    p = step(s, 2, ev, 1); /* 1 sampled 3 tokens: 4 of 8 generated, 6 positions fed */
    e = entry_of(p, 1);
    CHECK(p->step == 3 && e && e->start == 6 && e->n_draft == 3);
    r = (sched_result_t){.id = 1, .outcome = SCHED_OUT_TOKEN, .n_drafted = 3, .n_extra = 3};
    ev[0] = ev_done(3, 0, &r, 1);
    p = step(s, 3, ev, 1); /* 8 of 8: the commit feed of the last token (position 10) */
    e = entry_of(p, 1);
    CHECK(p->step == 4 && e && e->commit && e->start == 10 && e->n_tokens == 1 && e->n_draft == 0);
    ev[0] = ev_done(4, 0, NULL, 0);
    p = step(s, 4, ev, 1);
    const sched_finish_t *f = fin_of(p, 1);
    CHECK(f && f->status == 0 && f->n_generated == 8);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.spec_drafted == 7 && st.spec_accepted == 5);
    sched_destroy(s);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_speculative);
    return rcd_test_summary();
}
