/* scheduler unit tests: hand-built scenarios on a simulated clock. Event limits and abuse are
 * sched_abuse_test.c, speculative draft reservation sched_spec_test.c, the randomized property
 * tests with a fake worker sched_sim_test.c. */
#include "scheduler/sched_test_util.h"

static void test_config(void)
{
    sched_config_t c;
    sched_t *s = NULL;
    sched_config_default(&c);
    c.step_tokens = 4; /* fewer than n_slots = 8: decodes could not all fit */
    CHECK(sched_create(&c, &s, err, sizeof(err)) == RCD_EINVAL && !s);
    CHECK(strstr(err, "step_tokens") != NULL);
    sched_config_default(&c);
    c.n_slots = 0;
    CHECK(sched_create(&c, &s, err, sizeof(err)) == RCD_EINVAL && !s);
    sched_config_default(&c);
    c.max_inflight = 0;
    CHECK(sched_create(&c, &s, err, sizeof(err)) == RCD_EINVAL && !s);
    sched_config_default(&c);
    c.max_chunk = c.step_tokens + 1;
    CHECK(sched_create(&c, &s, err, sizeof(err)) == RCD_EINVAL && !s);
    CHECK(sched_create(NULL, &s, err, sizeof(err)) == RCD_EINVAL);
    sched_config_default(&c);
    s = mk(&c);
    sched_destroy(s);
    sched_destroy(NULL);
}

static void test_admission_control(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 1;
    c.max_queue = 2;
    c.max_prompt_tokens = 1000;
    c.max_new_tokens = 100;
    c.n_host_slots = 0;
    sched_t *s = mk(&c);
    sched_event_t ev[9] = {
        ev_arrive(1, 0, 0, 10, 5),   /* admitted */
        ev_arrive(2, 0, 0, 10, 5),   /* queued */
        ev_arrive(3, 0, 0, 10, 5),   /* queued: 1 free slot + max_queue 2 */
        ev_arrive(4, 0, 0, 1001, 5), /* prompt too long */
        ev_arrive(5, 0, 0, 10, 101), /* max_new too large */
        ev_arrive(6, 9, 0, 10, 5),   /* bad priority */
        ev_arrive(7, 0, 0, 0, 5),    /* empty prompt */
        ev_arrive(2, 0, 0, 10, 5),   /* duplicate id */
        ev_arrive(8, 0, 0, 10, 5),   /* queue full */
    };
    const sched_plan_t *p = step(s, 0, ev, 9);
    CHECK(p->n_finished == 6);
    const sched_finish_t *f;
    CHECK((f = fin_of(p, 4)) && f->status == RCD_ETOOBIG && strstr(f->msg, "1001"));
    CHECK((f = fin_of(p, 5)) && f->status == RCD_ETOOBIG && strstr(f->msg, "max_new_tokens"));
    CHECK((f = fin_of(p, 6)) && f->status == RCD_EINVAL && strstr(f->msg, "priority"));
    CHECK((f = fin_of(p, 7)) && f->status == RCD_EINVAL);
    CHECK((f = fin_of(p, 2)) && f->status == RCD_EEXISTS);
    CHECK((f = fin_of(p, 8)) && f->status == RCD_ETOOBIG && strstr(f->msg, "queue is full"));
    CHECK(rcd_grpc_status(RCD_ETOOBIG) == 8); /* RESOURCE_EXHAUSTED */
    CHECK(p->step == 1 && p->n_entries == 1 && p->entries[0].id == 1);
    CHECK(p->n_moves == 1 && p->moves[0].kind == SCHED_MOVE_RESET && p->moves[0].slot == 0);

    /* A deadline that has already passed is refused at once. */
    sched_event_t late = ev_arrive(9, 0, 0, 10, 5);
    late.arrive.deadline_us = 50;
    p = step(s, 100, &late, 1);
    CHECK((f = fin_of(p, 9)) && f->status == RCD_EDEADLINE);
    CHECK(p->step == 0); /* step 1 is still in flight (max_inflight 1) */

    /* Malformed calls change nothing. */
    sched_event_t bad = ev_done(77, 0, NULL, 0);
    CHECK(sched_step(s, 100, &bad, 1, &p, err, sizeof(err)) == RCD_EINVAL);
    CHECK(strstr(err, "not in flight") != NULL);
    CHECK(sched_step(s, 99, NULL, 0, &p, err, sizeof(err)) == RCD_EINVAL); /* time backwards */
    sched_event_t odd = {.kind = 42};
    CHECK(sched_step(s, 100, &odd, 1, &p, err, sizeof(err)) == RCD_EINVAL);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.running == 1 && st.waiting == 2 && st.rejected == 7 && st.inflight == 1);
    sched_destroy(s);
}

/* A 1000-token prompt is chunked; a short request arriving later gets its first token long
 * before the long prompt is done; the budget holds every step. */
static void test_chunked_prefill(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 4;
    c.step_tokens = 64;
    c.max_chunk = 32;
    sched_t *s = mk(&c);
    sched_event_t a = ev_arrive(1, 0, 0, 1000, 2);
    const sched_plan_t *p = step(s, 0, &a, 1);
    const sched_entry_t *e = entry_of(p, 1);
    CHECK(e && e->start == 0 && e->n_tokens == 64 && e->n_logits == 0 && !e->decode);
    p = step_done(s, 10, p);
    CHECK((e = entry_of(p, 1)) && e->start == 64 && e->n_tokens == 64);

    sched_event_t ev[2] = {ev_done(p->step, 0, NULL, 0), ev_arrive(2, 0, 0, 10, 3)};
    p = step(s, 20, ev, 2);
    CHECK((e = entry_of(p, 1)) && e->start == 128 && e->n_tokens == 54);
    CHECK((e = entry_of(p, 2)) && e->start == 0 && e->n_tokens == 10 && e->n_logits == 1);
    CHECK(p->n_tokens == 64);
    p = step_done(s, 30, p);
    /* 2 decodes (1 token), 1 keeps prefilling with the rest. */
    CHECK((e = entry_of(p, 2)) && e->decode && e->n_tokens == 1 && e->start == 10 &&
          e->n_logits == 1);
    CHECK((e = entry_of(p, 1)) && e->n_tokens == 63 && e->start == 182);
    int64_t now = 40;
    int steps = 0, first_token_2 = -1, done_2 = 0;
    while (p->step && steps < 100) {
        CHECK(p->n_tokens <= c.step_tokens);
        p = step_done(s, now, p);
        now += 10;
        steps++;
        const sched_finish_t *f = fin_of(p, 2);
        if (f && !done_2) {
            done_2 = 1;
            first_token_2 = (int)f->ttft_us;
            CHECK(f->status == 0 && f->n_generated == 3 && f->tpot_us == 10);
        }
        if ((f = fin_of(p, 1))) {
            CHECK(f->status == 0 && f->n_generated == 2 && f->ttft_us > first_token_2);
        }
    }
    CHECK(done_2 && first_token_2 == 10); /* arrived at 20, first token at 30 */
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.completed == 2 && st.running == 0 && st.prefill_tokens == 1010);
    CHECK(st.decode_tokens == 1 + 2); /* max_new - 1 decodes each */
    sched_destroy(s);
}

/* A prompt longer than a chunk that fits in what is left of the budget runs whole: a short
 * request beside a long prefill reaches its first token in one step, not two; the long one
 * gets the rest. */
static void test_short_prompt_whole(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 4;
    c.step_tokens = 64;
    c.max_chunk = 16;
    sched_t *s = mk(&c);
    sched_event_t a = ev_arrive(1, 0, 0, 1000, 2);
    const sched_plan_t *p = step(s, 0, &a, 1);
    sched_event_t ev[2] = {ev_done(p->step, 0, NULL, 0), ev_arrive(2, 0, 0, 50, 2)};
    p = step(s, 10, ev, 2);
    const sched_entry_t *e;
    CHECK((e = entry_of(p, 2)) && e->start == 0 && e->n_tokens == 50 && e->n_logits == 1);
    CHECK((e = entry_of(p, 1)) && e->n_tokens == 14 && p->n_tokens == 64);
    /* 70 tokens do not fit beside the long one's token: a chunk (16), the rest after it */
    p = step_done(s, 20, p);
    sched_event_t ev2[2] = {ev_done(p->step, 0, NULL, 0), ev_arrive(3, 0, 0, 70, 2)};
    p = step(s, 30, ev2, 2);
    CHECK((e = entry_of(p, 3)) && e->start == 0 && e->n_tokens < 70 && e->n_tokens >= 16);
    CHECK(p->n_tokens == 64);
    int guard = 0;
    while (p->step && guard++ < 200)
        p = step_done(s, 40 + guard, p);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.completed == 3 && st.running == 0);
    sched_destroy(s);
}

/* Two long prompts are prefilling when a short one is admitted: the short one's prompt goes
 * first in the next plan (fewest tokens left), whole, and it reaches its first token in that
 * step; the long ones keep moving (one token each at least, the budget's rest). In arrival
 * order it would have had one token per step behind two full chunks. */
static void test_short_prompt_first(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 4;
    c.step_tokens = 64;
    c.max_chunk = 32;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 1000, 2), ev_arrive(2, 0, 0, 900, 2)};
    const sched_plan_t *p = step(s, 0, ev, 2);
    const sched_entry_t *e;
    CHECK((e = entry_of(p, 1)) && (e = entry_of(p, 2)) && p->n_tokens == 64);
    sched_event_t ev2[2] = {ev_done(p->step, 0, NULL, 0), ev_arrive(3, 0, 0, 30, 2)};
    p = step(s, 10, ev2, 2);
    CHECK((e = entry_of(p, 3)) && e->start == 0 && e->n_tokens == 30 && e->n_logits == 1);
    const sched_entry_t *e1 = entry_of(p, 1), *e2 = entry_of(p, 2);
    CHECK(e1 && e2 && e1->n_tokens >= 1 && e2->n_tokens >= 1);
    CHECK(p->n_tokens == 64);
    /* the long ones: the one with fewer tokens left (2) is served before 1 */
    CHECK(e1 && e2 && e2->n_tokens >= e1->n_tokens);
    p = step_done(s, 20, p);
    CHECK((e = entry_of(p, 3)) && e->decode); /* its first token came from the last step */
    int guard = 0;
    while (p->step && guard++ < 200)
        p = step_done(s, 30 + guard, p);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.completed == 3 && st.running == 0);
    sched_destroy(s);
}

/* no_chunking: each prompt runs whole in one step or waits; never a partial chunk. The config
 * needs a prompt limit the budget holds next to n_slots - 1 decodes. */
static void test_no_chunking(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 4;
    c.step_tokens = 64;
    c.no_chunking = true;
    sched_t *bad = NULL;
    CHECK(sched_create(&c, &bad, err, sizeof(err)) == RCD_EINVAL && !bad); /* no prompt limit */
    c.max_prompt_tokens = 62;
    CHECK(sched_create(&c, &bad, err, sizeof(err)) == RCD_EINVAL && !bad);
    c.max_prompt_tokens = 61;
    sched_t *s = mk(&c);
    sched_event_t ev[3] = {ev_arrive(1, 0, 0, 61, 3), ev_arrive(2, 0, 0, 30, 3),
                           ev_arrive(3, 0, 0, 62, 3)};
    const sched_plan_t *p = step(s, 0, ev, 3);
    const sched_finish_t *f = fin_of(p, 3);
    CHECK(f && f->status == RCD_ETOOBIG);
    const sched_entry_t *e = entry_of(p, 1);
    CHECK(e && e->start == 0 && e->n_tokens == 61 && e->n_logits == 1);
    CHECK(entry_of(p, 2) == NULL && p->n_tokens == 61); /* 3 left over, no partial chunk */
    p = step_done(s, 10, p);
    CHECK((e = entry_of(p, 1)) && e->decode && e->n_tokens == 1);
    CHECK((e = entry_of(p, 2)) && e->start == 0 && e->n_tokens == 30 && e->n_logits == 1);
    /* two decoding, a new full-size prompt still fits whole beside them */
    sched_event_t ev2[2] = {ev_done(p->step, 0, NULL, 0), ev_arrive(4, 0, 0, 61, 1)};
    p = step(s, 20, ev2, 2);
    CHECK((e = entry_of(p, 4)) && e->start == 0 && e->n_tokens == 61);
    CHECK(p->n_tokens == 63);
    int guard = 0;
    while (p->step && guard++ < 50) {
        for (int i = 0; i < p->n_entries; i++)
            CHECK(p->entries[i].decode || p->entries[i].commit || p->entries[i].start == 0);
        p = step_done(s, 30 + 10 * guard, p);
    }
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.completed == 3 && st.rejected == 1 && st.prefill_tokens == 61 + 30 + 61);
    sched_destroy(s);
}

/* Eight decoding sequences plus a long prefill: all eight decode every step. */
static void test_decodes_first(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 9;
    c.step_tokens = 16;
    c.max_chunk = 16;
    sched_t *s = mk(&c);
    sched_event_t ev[9];
    for (int i = 0; i < 8; i++)
        ev[i] = ev_arrive((uint64_t)i + 1, 0, 0, 2, 50);
    const sched_plan_t *p = step(s, 0, ev, 8);
    CHECK(p->n_entries == 8 && p->n_tokens == 16);
    ev[0] = ev_done(p->step, 0, NULL, 0);
    ev[1] = ev_arrive(100, 3, 0, 500, 1); /* high priority, long */
    p = step(s, 1, ev, 2);
    for (int k = 0; k < 20; k++) {
        int decodes = 0;
        for (int i = 0; i < p->n_entries; i++)
            decodes += p->entries[i].decode;
        CHECK(decodes == 8);
        const sched_entry_t *e = entry_of(p, 100);
        CHECK(e && e->n_tokens == 8 && !e->decode);
        CHECK(p->n_tokens == 16);
        p = step_done(s, 2 + k, p);
    }
    sched_destroy(s);
}

static void test_cancel_frees_slot(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 1;
    c.n_host_slots = 0;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 4, 100), ev_arrive(2, 0, 0, 4, 100)};
    const sched_plan_t *p = step(s, 0, ev, 2);
    CHECK(entry_of(p, 1) && !entry_of(p, 2));
    p = step_done(s, 1, p);
    CHECK(entry_of(p, 1) && !entry_of(p, 2));
    ev[0] = ev_done(p->step, 0, NULL, 0);
    ev[1] = ev_cancel(1);
    p = step(s, 2, ev, 2);
    const sched_finish_t *f = fin_of(p, 1);
    CHECK(f && f->status == RCD_ECANCELLED && f->n_generated == 2);
    const sched_move_t *m = move_of(p, 2);
    CHECK(m && m->kind == SCHED_MOVE_RESET && m->slot == 0);
    CHECK(entry_of(p, 2) && entry_of(p, 2)->slot == 0);
    uint64_t in_flight = p->step;

    /* Cancelling while the step is in flight: the in-flight results for it are ignored. */
    ev[0] = ev_cancel(2);
    ev[1] = ev_cancel(999); /* unknown: ignored */
    const sched_plan_t *q = step(s, 3, ev, 2);
    CHECK(q->step == 0 && (f = fin_of(q, 2)) && f->status == RCD_ECANCELLED);
    sched_result_t r = {.id = 2, .outcome = SCHED_OUT_TOKEN};
    ev[0] = ev_done(in_flight, 0, &r, 1);
    q = step(s, 4, ev, 1);
    CHECK(q->step == 0 && q->n_finished == 0);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.running == 0 && st.cancelled == 2 && st.inflight == 0);
    sched_destroy(s);
}

static void test_deadline_in_queue(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 1;
    c.n_host_slots = 0;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 4, 3), ev_arrive(2, 0, 0, 4, 3)};
    ev[1].arrive.deadline_us = 25;
    const sched_plan_t *p = step(s, 0, ev, 2);
    CHECK(sched_next_deadline(s) == 25);
    p = step_done(s, 10, p);
    p = step_done(s, 20, p);
    CHECK(!fin_of(p, 2));
    p = step_done(s, 30, p); /* 1 finishes now, but 2's deadline passed at 25 */
    const sched_finish_t *f = fin_of(p, 2);
    CHECK(f && f->status == RCD_EDEADLINE && f->queue_us == 30 && strstr(f->msg, "deadline"));
    CHECK((f = fin_of(p, 1)) && f->status == 0);
    CHECK(p->step == 0 && p->n_moves == 0); /* 2 never cost a step */
    CHECK(sched_next_deadline(s) == INT64_MAX);
    sched_destroy(s);
}

/* A high-priority arrival displaces a low-priority sequence, which later resumes where it
 * was: the plan swaps it out before the swap-in and feeds on from the same position. */
static void test_preempt_resume(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 1;
    c.n_host_slots = 1;
    c.min_run_steps = 2;
    c.aging_us = 0;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 7, 5, 10)};
    const sched_plan_t *p = step(s, 0, ev, 1);
    ev[0] = ev_done(p->step, 0, NULL, 0);
    ev[1] = ev_arrive(2, 1, 7, 3, 2); /* min_run_steps not reached: waits one step */
    p = step(s, 1, ev, 2);
    CHECK(p->n_moves == 0 && entry_of(p, 1) && entry_of(p, 1)->start == 5);
    p = step_done(s, 2, p);
    CHECK(p->n_moves == 2);
    CHECK(p->moves[0].kind == SCHED_MOVE_SWAP_OUT && p->moves[0].id == 1 && p->moves[0].slot == 0);
    CHECK(p->moves[1].kind == SCHED_MOVE_RESET && p->moves[1].id == 2 && p->moves[1].slot == 0);
    CHECK(!entry_of(p, 1) && entry_of(p, 2));
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.swapped == 1 && st.preemptions == 1);
    p = step_done(s, 3, p); /* 2: first token */
    CHECK(entry_of(p, 2) && entry_of(p, 2)->decode);
    p = step_done(s, 4, p); /* 2 done; 1 swaps back in */
    const sched_finish_t *f = fin_of(p, 2);
    CHECK(f && f->status == 0 && f->n_generated == 2);
    const sched_move_t *m = move_of(p, 1);
    CHECK(m && m->kind == SCHED_MOVE_SWAP_IN && m->slot == 0);
    const sched_entry_t *e = entry_of(p, 1);
    /* prompt 0..4, token 0 at 5 (fed before the swap), token 1 at 6: fed next */
    CHECK(e && e->decode && e->start == 6 && e->n_tokens == 1);
    while (p->step)
        p = step_done(s, 5, p);
    CHECK((f = fin_of(p, 1)) && f->status == 0 && f->n_generated == 10 && f->n_preemptions == 1);
    CHECK(f->wait_us == 2);
    sched_destroy(s);
}

/* Pipelining: with max_inflight 2 the next step is planned before the running one reports,
 * decodes included (the daemon fills in the token sampled on completion). */
static void test_pipelined(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 2;
    c.step_tokens = 8;
    c.max_chunk = 8;
    c.max_inflight = 2;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 12, 3)};
    const sched_plan_t *p = step(s, 0, ev, 1);
    CHECK(p->step == 1 && entry_of(p, 1)->n_tokens == 8 && entry_of(p, 1)->n_logits == 0);
    p = step(s, 1, NULL, 0);
    CHECK(p->step == 2 && entry_of(p, 1)->start == 8 && entry_of(p, 1)->n_logits == 1);
    p = step(s, 2, NULL, 0);
    CHECK(p->step == 0); /* two in flight */
    ev[0] = ev_done(1, 0, NULL, 0);
    p = step(s, 3, ev, 1);
    CHECK(p->step == 3 && entry_of(p, 1) && entry_of(p, 1)->decode && entry_of(p, 1)->start == 12);
    ev[0] = ev_done(2, 0, NULL, 0);
    p = step(s, 4, ev, 1);
    CHECK(p->step == 4 && entry_of(p, 1)->start == 13);
    /* A stop sampled from step 3 ends request 1 (the daemon drops its step-4 entry). */
    sched_result_t r = {.id = 1, .outcome = SCHED_OUT_STOP};
    ev[0] = ev_done(3, 0, &r, 1);
    p = step(s, 5, ev, 1);
    const sched_finish_t *f = fin_of(p, 1);
    CHECK(f && f->status == 0 && f->n_generated == 2 && p->step == 0);
    ev[0] = ev_done(4, 0, NULL, 0);
    p = step(s, 6, ev, 1);
    CHECK(p->step == 0 && p->n_finished == 0);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.inflight == 0 && st.running == 0 && st.completed == 1);
    sched_destroy(s);
}

static void test_step_failure(void)
{
    sched_config_t c;
    sched_config_default(&c);
    sched_t *s = mk(&c);
    sched_event_t ev[3] = {ev_arrive(1, 0, 0, 4, 3), ev_arrive(2, 0, 0, 4, 3),
                           ev_arrive(3, 0, 0, 4, 3)};
    const sched_plan_t *p = step(s, 0, ev, 3);
    sched_result_t r = {.id = 3, .outcome = SCHED_OUT_FAILED};
    ev[0] = ev_done(p->step, 0, &r, 1);
    p = step(s, 1, ev, 1);
    const sched_finish_t *f = fin_of(p, 3);
    CHECK(f && f->status == RCD_EINTERNAL);
    CHECK(p->n_entries == 2);
    ev[0] = ev_done(p->step, RCD_EIO, NULL, 0);
    p = step(s, 2, ev, 1);
    CHECK(p->n_finished == 2 && p->step == 0);
    CHECK((f = fin_of(p, 1)) && f->status == RCD_EIO && strstr(f->msg, "failed"));
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.failed == 3 && st.running == 0);
    sched_destroy(s);
}

/* A prompt-only request (max_new 0) and a resumed session (LOAD instead of RESET). */
static void test_prompt_only_and_resume(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.step_tokens = 16;
    c.max_chunk = 8;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 20, 0), ev_arrive(2, 0, 0, 3, 1)};
    ev[1].arrive.resume = true;
    const sched_plan_t *p = step(s, 0, ev, 2);
    CHECK(move_of(p, 1)->kind == SCHED_MOVE_RESET && move_of(p, 2)->kind == SCHED_MOVE_LOAD);
    CHECK(entry_of(p, 1)->n_logits == 0 && entry_of(p, 2)->n_logits == 1);
    p = step_done(s, 1, p);
    const sched_finish_t *f = fin_of(p, 2);
    CHECK(f && f->status == 0 && f->n_generated == 1 && f->tpot_us == -1);
    CHECK(entry_of(p, 1) && entry_of(p, 1)->n_logits == 0 &&
          entry_of(p, 1)->start + entry_of(p, 1)->n_tokens == 20);
    p = step_done(s, 2, p);
    CHECK((f = fin_of(p, 1)) && f->status == 0 && f->n_generated == 0 && f->ttft_us == -1);
    sched_destroy(s);
}

/* Strict priority, then first-come-first-served inside one priority. */
static void test_priority_fcfs(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 1;
    c.n_host_slots = 0;
    c.aging_us = 0;
    sched_t *s = mk(&c);
    sched_event_t ev[5] = {ev_arrive(1, 0, 0, 1, 1), ev_arrive(2, 0, 0, 1, 1),
                           ev_arrive(3, 2, 0, 1, 1), ev_arrive(4, 1, 0, 1, 1),
                           ev_arrive(5, 2, 0, 1, 1)};
    const sched_plan_t *p = step(s, 0, ev, 5);
    uint64_t order[5];
    int n = 0;
    for (int64_t t = 1; p->step && n < 5; t++) {
        order[n++] = p->entries[0].id;
        p = step_done(s, t, p);
    }
    CHECK(n == 5 && order[0] == 3 && order[1] == 5 && order[2] == 4 && order[3] == 1 &&
          order[4] == 2);
    sched_destroy(s);
}

/* Aging: a low-priority request is not starved by a stream of high-priority ones. */
static void test_aging(void)
{
    for (int aging = 0; aging < 2; aging++) {
        sched_config_t c;
        sched_config_default(&c);
        c.n_slots = 1;
        c.n_host_slots = 0;
        c.aging_us = aging ? 100 : 0;
        sched_t *s = mk(&c);
        sched_event_t ev[3] = {ev_arrive(1, 3, 0, 1, 2), ev_arrive(2, 0, 0, 1, 2)};
        const sched_plan_t *p = step(s, 0, ev, 2);
        int64_t done_at = -1;
        for (int64_t t = 1; t < 2000; t++) {
            ev[0] = ev_done(p->step, 0, NULL, 0);
            ev[1] = ev_arrive(1000 + (uint64_t)t, 3, 0, 1, 2); /* a steady high-priority stream */
            ev[2] = ev_cancel(1000 + (uint64_t)t - 50);        /* keep the queue bounded */
            p = step(s, t * 10, ev, 3);
            if (fin_of(p, 2)) {
                done_at = t * 10;
                break;
            }
        }
        if (aging)
            CHECK_MSG(done_at > 0 && done_at < 2000, "aged request done at %lld",
                      (long long)done_at);
        else
            CHECK(done_at < 0); /* strict priority does starve it: why aging exists */
        sched_destroy(s);
    }
}

/* Per-tenant share: tenant A's early burst does not keep tenant B out of every slot. */
static void test_tenant_share(void)
{
    for (int mode = 0; mode < 3; mode++) {
        sched_config_t c;
        sched_config_default(&c);
        c.n_slots = 4;
        c.n_host_slots = 0;
        c.aging_us = 0;
        c.tenant_fair = mode == 1;
        c.max_tenant_slots = mode == 2 ? 2 : 0;
        sched_t *s = mk(&c);
        sched_event_t ev[10];
        for (int i = 0; i < 8; i++)
            ev[i] = ev_arrive((uint64_t)i + 1, 0, 0xA, 1, 100);
        ev[8] = ev_arrive(100, 0, 0xB, 1, 100);
        ev[9] = ev_arrive(101, 0, 0xB, 1, 100);
        const sched_plan_t *p = step(s, 0, ev, 10);
        int b = (entry_of(p, 100) != NULL) + (entry_of(p, 101) != NULL);
        CHECK_MSG(b == (mode == 0 ? 0 : 2), "mode %d: tenant B holds %d slots", mode, b);
        sched_destroy(s);
    }
    /* The cap does not idle slots when only one tenant is waiting. */
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 4;
    c.max_tenant_slots = 1;
    sched_t *s = mk(&c);
    sched_event_t ev[4];
    for (int i = 0; i < 4; i++)
        ev[i] = ev_arrive((uint64_t)i + 1, 0, 0xA, 1, 100);
    const sched_plan_t *p = step(s, 0, ev, 4);
    CHECK(p->n_entries == 4);
    sched_destroy(s);
}

/* The fairness guarantee (README, "Tenants"): tenant A floods 50 turns, then tenant B sends 2.
 * With tenant_fair, B takes the next free slots ahead of A's 46 queued turns, so B waits at
 * most as long as A's running turns have left (bounded by one turn's length), both tenants
 * share the slots while B has work, no slot idles, and every turn completes. Without it
 * (first come, first served) B waits for A's whole backlog: the contrast shows the test can
 * fail. With max_tenant_slots = 2 the same holds. */
static void test_tenant_flood(void)
{
    for (int mode = 0; mode < 3; mode++) {
        sched_config_t c;
        sched_config_default(&c);
        c.n_slots = 4;
        c.n_host_slots = 0;
        c.aging_us = 0;
        c.max_inflight = 1;
        c.max_queue = 64;
        c.tenant_fair = mode != 0;
        c.max_tenant_slots = mode == 2 ? 2 : 0;
        sched_t *s = mk(&c);
        sched_event_t ev[50];
        for (int i = 0; i < 50; i++)
            ev[i] = ev_arrive((uint64_t)i + 1, 0, 0xA, 4, 8);
        const sched_plan_t *p = step(s, 0, ev, 50);
        int b_admit[2] = {-1, -1}, b_done[2] = {-1, -1}, a_done = 0, shared_steps = 0;
        int64_t now = 0;
        for (int k = 1; k < 2000 && (a_done < 50 || b_done[0] < 0 || b_done[1] < 0); k++) {
            sched_event_t e[3];
            int n = 0;
            if (p->step) e[n++] = ev_done(p->step, 0, NULL, 0);
            if (k == 3) { /* A holds every slot, 46 of its turns wait */
                CHECK(p->n_entries == 4);
                e[n++] = ev_arrive(1001, 0, 0xB, 4, 8);
                e[n++] = ev_arrive(1002, 0, 0xB, 4, 8);
            }
            now += 1000;
            p = step(s, now, e, n);
            for (int i = 0; i < p->n_finished; i++) {
                const sched_finish_t *f = &p->finished[i];
                CHECK_MSG(f->status == 0, "mode %d: request %llu ended %d", mode,
                          (unsigned long long)f->id, f->status);
                if (f->id > 1000)
                    b_done[f->id - 1001] = k;
                else
                    a_done++;
            }
            for (int i = 0; i < p->n_moves; i++)
                if (p->moves[i].id > 1000 && b_admit[p->moves[i].id - 1001] < 0)
                    b_admit[p->moves[i].id - 1001] = k;
            int nb = 0;
            for (int i = 0; i < p->n_entries; i++)
                nb += p->entries[i].id > 1000;
            if (nb == 2) {
                shared_steps++;
                CHECK_MSG(p->n_entries == 4, "mode %d: %d slots busy while A waits", mode,
                          p->n_entries);
            }
        }
        CHECK_MSG(a_done == 50 && b_done[0] > 0 && b_done[1] > 0, "mode %d: A %d, B %d %d", mode,
                  a_done, b_done[0], b_done[1]);
        /* a turn lasts 1 prefill + 8 decode steps (+1 to report): B waits at most that long */
        int bound = 3 + 10;
        for (int j = 0; j < 2; j++) {
            if (mode)
                CHECK_MSG(b_admit[j] > 3 && b_admit[j] <= bound,
                          "mode %d: B's turn %d admitted at step %d, bound %d", mode, j, b_admit[j],
                          bound);
            else
                CHECK_MSG(b_admit[j] > 50, "FCFS: B's turn %d admitted at step %d", j, b_admit[j]);
        }
        if (mode) CHECK_MSG(shared_steps >= 8, "mode %d: shared %d steps", mode, shared_steps);
        sched_destroy(s);
    }
}

/* A preempted request waits like a queued one: its deadline can pass in the host tier, and
 * then it is dropped without ever being swapped back in. Step times reach the stats. */
static void test_deadline_while_swapped(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.n_slots = 1;
    c.n_host_slots = 1;
    c.min_run_steps = 1;
    c.aging_us = 0;
    sched_t *s = mk(&c);
    sched_event_t ev[2] = {ev_arrive(1, 0, 0, 2, 50)};
    ev[0].arrive.deadline_us = 500;
    const sched_plan_t *p = step(s, 0, ev, 1);
    ev[0] = ev_done(p->step, 0, NULL, 0);
    ev[1] = ev_arrive(2, 1, 0, 2, 50);
    p = step(s, 100, ev, 2);
    CHECK(move_of(p, 1) && move_of(p, 1)->kind == SCHED_MOVE_SWAP_OUT);
    p = step_done(s, 300, p);
    CHECK(!fin_of(p, 1) && entry_of(p, 2));
    p = step_done(s, 600, p);
    const sched_finish_t *f = fin_of(p, 1);
    CHECK(f && f->status == RCD_EDEADLINE && f->n_preemptions == 1 && f->wait_us == 500);
    CHECK(f->queue_us == 0 && f->n_generated == 1);
    CHECK(!move_of(p, 1));
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.swapped == 0 && st.expired == 1 && st.steps_done == 3);
    CHECK(st.step_us_sum == 100 + 200 + 300 && st.step_us_max == 300);
    CHECK(st.budget_tokens == 4 * (uint64_t)c.step_tokens && st.tokens == 2 + 1 + 2 + 1);
    sched_destroy(s);
}

/* commit: the final sampled token is fed once more (no logits) so the slot holds the turn's
 * final state; the request finishes only when that step is done. */
static void test_commit(void)
{
    sched_config_t c;
    sched_config_default(&c);
    c.max_inflight = 2;
    sched_t *s = mk(&c);
    sched_event_t ev[3] = {ev_arrive(1, 0, 0, 3, 2), ev_arrive(2, 0, 0, 3, 5),
                           ev_arrive(3, 0, 0, 4, 0)};
    for (int i = 0; i < 3; i++)
        ev[i].arrive.commit = true;
    const sched_plan_t *p = step(s, 0, ev, 3);
    CHECK(p->step == 1 && p->n_entries == 3);
    CHECK(entry_of(p, 3)->commit && entry_of(p, 3)->n_logits == 0); /* prompt-only: last chunk */
    CHECK(!entry_of(p, 1)->commit && entry_of(p, 1)->n_logits == 1);
    p = step(s, 1, NULL, 0); /* pipelined: decodes of 1 and 2 (token 0 filled in by the daemon) */
    CHECK(p->step == 2 && entry_of(p, 1)->start == 3 && entry_of(p, 1)->n_logits == 1);
    CHECK(entry_of(p, 2)->start == 3 && !entry_of(p, 3));
    ev[0] = ev_done(1, 0, NULL, 0);
    p = step(s, 2, ev, 1);
    const sched_finish_t *f = fin_of(p, 3);
    CHECK(f && f->status == 0);
    /* 1's step-2 token is its last (max_new 2): its commit feed is planned right behind */
    const sched_entry_t *e = entry_of(p, 1);
    CHECK(p->step == 3 && e && e->commit && e->start == 4 && e->n_logits == 0 && e->decode);
    CHECK(entry_of(p, 2) && entry_of(p, 2)->start == 4 && entry_of(p, 2)->n_logits == 1);
    /* 2 stops on its step-2 token: the daemon drops 2's step-3 entry */
    sched_result_t r = {.id = 2, .outcome = SCHED_OUT_STOP};
    ev[0] = ev_done(2, 0, &r, 1);
    p = step(s, 3, ev, 1);
    CHECK(!fin_of(p, 1) && !fin_of(p, 2));
    e = entry_of(p, 2);
    CHECK(p->step == 4 && e && e->commit && e->start == 4 && e->n_tokens == 1);
    CHECK(!entry_of(p, 1));
    ev[0] = ev_done(3, 0, NULL, 0); /* 1's commit done; 2's dropped decode: ignored */
    p = step(s, 4, ev, 1);
    CHECK((f = fin_of(p, 1)) && f->status == 0 && f->n_generated == 2);
    CHECK(!fin_of(p, 2) && p->step == 0);
    ev[0] = ev_done(4, 0, NULL, 0);
    p = step(s, 5, ev, 1);
    CHECK((f = fin_of(p, 2)) && f->status == 0 && f->n_generated == 2);
    sched_stats_t st;
    sched_get_stats(s, &st);
    CHECK(st.running == 0 && st.inflight == 0 && st.completed == 3);
    sched_destroy(s);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_config);
    RUN(test_admission_control);
    RUN(test_chunked_prefill);
    RUN(test_no_chunking);
    RUN(test_short_prompt_first);
    RUN(test_short_prompt_whole);
    RUN(test_decodes_first);
    RUN(test_cancel_frees_slot);
    RUN(test_deadline_in_queue);
    RUN(test_preempt_resume);
    RUN(test_pipelined);
    RUN(test_step_failure);
    RUN(test_prompt_only_and_resume);
    RUN(test_priority_fcfs);
    RUN(test_aging);
    RUN(test_tenant_share);
    RUN(test_tenant_flood);
    RUN(test_deadline_while_swapped);
    RUN(test_commit);
    return rcd_test_summary();
}
