/* scheduler unit tests: more events than a step takes, and abusive
 * event sequences (unknown ids, repeated and out-of-order reports, limits) on a simulated clock. */
#include "scheduler/sched_test_util.h"
#include "tests/support/sched_sim.h"

static void test_too_many_events(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.max_events = 2;
    sched_t *s = mk(&c);
    sched_event_t ev[3] = {ev_arrive(1, 0, 0, 1, 1), ev_arrive(2, 0, 0, 1, 1),
                           ev_arrive(3, 0, 0, 1, 1)};
    const sched_plan_t *p = NULL;
    CHECK(sched_step(s, 0, ev, 3, &p, err, sizeof(err)) == RCD_ETOOBIG);
    CHECK(p && p->step == 0 && p->n_finished == 0);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.arrived == 0);
    sched_destroy(s);
}

static bool stats_balanced(const sched_stats_t *st)
{
    return st->completed + st->cancelled + st->expired + st->rejected + st->failed +
               (uint64_t)st->running + (uint64_t)st->waiting + (uint64_t)st->swapped ==
           st->arrived;
}

/* Random abuse over 200 seeds: malformed calls are refused and change nothing; odd but legal
 * events (unknown or duplicate ids, bad arrival fields, results for ids not in the step,
 * steps reported out of order, stops and failures anywhere) never break the invariants. */
static void test_abuse(void)
{
    int refused = 0, bad_calls = 0;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        uint64_t rng = seed * 977;
        sched_config_t c;
        sched_config_default(&c);
        c.n_slots = sim_uniform(&rng, 1, 5);
        c.n_host_slots = sim_uniform(&rng, 0, 3);
        c.max_queue = sim_uniform(&rng, 0, 8);
        c.step_tokens = sim_uniform(&rng, c.n_slots, 20);
        c.max_inflight = sim_uniform(&rng, 1, 3);
        c.min_run_steps = sim_uniform(&rng, 0, 2);
        c.aging_us = sim_uniform(&rng, 0, 1) * 50;
        c.max_prompt_tokens = sim_uniform(&rng, 0, 1) * 30;
        c.max_new_tokens = sim_uniform(&rng, 0, 1) * 10;
        c.max_events = 32;
        sched_t *s = mk(&c);
        uint64_t inflight[8] = {0};
        int n_inflight = 0;
        int64_t now = 0;
        sched_event_t ev[32];
        sched_result_t res[16] = {{0}};
        for (int it = 0; it < 300; it++) {
            int n = sim_uniform(&rng, 0, 6);
            for (int k = 0; k < n; k++) {
                uint64_t id = (uint64_t)sim_uniform(&rng, 1, 24);
                int what = sim_uniform(&rng, 0, 9);
                if (what < 5) {
                    /* one draw per statement: argument order is unspecified in C */
                    int prio = sim_uniform(&rng, -1, 4);
                    uint64_t tenant = (uint64_t)sim_uniform(&rng, 0, 2);
                    int prompt = sim_uniform(&rng, -1, 40);
                    int max_new = sim_uniform(&rng, -1, 12);
                    ev[k] = ev_arrive(id, prio, tenant, prompt, max_new);
                    int has_deadline = sim_uniform(&rng, 0, 1);
                    ev[k].arrive.deadline_us = has_deadline * (now + sim_uniform(&rng, -5, 200));
                    ev[k].arrive.resume = sim_uniform(&rng, 0, 1);
                    ev[k].arrive.commit = sim_uniform(&rng, 0, 1);
                } else if (what < 7) {
                    ev[k] = ev_cancel(id);
                } else {
                    ev[k] = ev_cancel(id + 1000); /* never existed */
                }
            }
            /* report one in-flight step, oldest or not, with random outcomes */
            if (n_inflight > 0 && sim_uniform(&rng, 0, 3) > 0) {
                int j = sim_uniform(&rng, 0, n_inflight - 1);
                int nr = sim_uniform(&rng, 0, 4);
                for (int k = 0; k < nr; k++) {
                    res[k].id = (uint64_t)sim_uniform(&rng, 1, 24);
                    res[k].outcome = (sched_outcome_t)sim_uniform(&rng, 0, 2);
                }
                ev[n++] = ev_done(inflight[j], sim_uniform(&rng, 0, 9) ? 0 : RCD_EIO, res, nr);
                inflight[j] = inflight[--n_inflight];
            }
            now += sim_uniform(&rng, 0, 30);
            sched_stats_t before, after;
            sched_get_stats(s, &before);
            const sched_plan_t *p = NULL;
            if (sim_uniform(&rng, 0, 9) == 0) {
                /* a malformed call: refused whole, nothing applied */
                sched_event_t bad[33];
                memcpy(bad, ev, (size_t)n * sizeof(sched_event_t));
                int m = n, kind = sim_uniform(&rng, 0, 5);
                int64_t t = now;
                sched_result_t odd = {.id = 1, .outcome = (sched_outcome_t)7};
                if (kind == 0) bad[m++] = (sched_event_t){.kind = 99};
                if (kind == 1) bad[m++] = ev_done(123456, 0, NULL, 0);
                if (kind == 2) bad[m++] = ev_done(inflight[0], 0, &odd, n_inflight ? 1 : 0);
                if (kind == 3) bad[m++] = ev_done(inflight[0], 0, NULL, n_inflight ? 2 : -1);
                if (kind == 4) t = before.steps ? -1 : -5;
                if (kind == 5) m = 33;
                if (kind == 2 && !n_inflight) bad[m - 1] = ev_done(0, 0, NULL, 0);
                int rc = sched_step(s, t, bad, m, &p, err, sizeof(err));
                CHECK_MSG(rc < 0 && p && p->step == 0 && p->n_finished == 0, "kind %d rc %d", kind,
                          rc);
                sched_get_stats(s, &after);
                CHECK(memcmp(&before, &after, sizeof(before)) == 0);
                bad_calls++;
            }
            p = step(s, now, ev, n);
            if (!p) break;
            for (int k = 0; k < p->n_finished; k++) {
                CHECK(p->finished[k].status == 0 || p->finished[k].msg[0]);
                refused += p->finished[k].status != 0;
            }
            CHECK(p->n_tokens <= c.step_tokens && p->n_entries <= c.n_slots);
            if (p->step) {
                CHECK(n_inflight < c.max_inflight);
                inflight[n_inflight++] = p->step;
            }
            sched_get_stats(s, &after);
            CHECK(after.running <= c.n_slots && after.swapped <= c.n_host_slots);
            CHECK(after.waiting <= c.max_queue + c.n_slots);
            CHECK(after.inflight == n_inflight);
            CHECK(stats_balanced(&after));
        }
        /* drain: cancel everyone and report every step, in one call */
        for (int k = 0; k < 24; k++)
            ev[k] = ev_cancel((uint64_t)k + 1);
        for (int k = 0; k < n_inflight; k++)
            ev[24 + k] = ev_done(inflight[k], 0, NULL, 0);
        const sched_plan_t *p = step(s, now, ev, 24 + n_inflight);
        sched_stats_t st;
        sched_get_stats(s, &st);
        CHECK(p && p->step == 0 && st.running == 0 && st.waiting == 0 && st.swapped == 0 &&
              st.inflight == 0 && stats_balanced(&st));
        sched_destroy(s);
    }
    CHECK(refused > 1000 && bad_calls > 1000);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_too_many_events);
    RUN(test_abuse);
    return rcd_test_summary();
}
