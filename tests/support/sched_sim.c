/* tests/support: the simulated daemon and fake worker of sched_sim.h — request streams, the
 * worker that runs a plan, and the checks on every plan and finish record. */
#include "tests/support/sched_sim.h"

static uint64_t sim_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t sim_rand(uint64_t *rng)
{
    *rng = sim_mix(*rng);
    return *rng;
}

int sim_uniform(uint64_t *rng, int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(sim_rand(rng) % (uint64_t)(hi - lo + 1));
}

static sim_req_t *sim_find(sim_t *m, uint64_t id)
{
    /* ids are 1000 + index */
    if (id < 1000 || id >= 1000 + (uint64_t)m->n) return NULL;
    return &m->r[id - 1000];
}

static void sim_make_stream(sim_t *m, const sim_spec_t *sp, uint64_t seed)
{
    uint64_t rng = seed * 7919 + 17;
    int64_t t = 0;
    m->n = sp->n_req;
    m->r = calloc((size_t)m->n, sizeof(sim_req_t));
    for (int i = 0; i < m->n; i++) {
        sim_req_t *q = &m->r[i];
        t += sim_uniform(&rng, 0, 2 * sp->mean_gap_us);
        q->id = 1000 + (uint64_t)i;
        q->t_arrive = t;
        q->prio = sim_uniform(&rng, 0, sp->prio_levels - 1);
        q->tenant = (uint64_t)sim_uniform(&rng, 0, sp->tenants - 1);
        q->prompt = sim_uniform(&rng, 1, sp->max_prompt);
        if (sim_uniform(&rng, 0, 9) == 0) q->prompt *= 20; /* a long document now and then */
        q->max_new = sim_uniform(&rng, 0, sp->max_new);
        q->resume = sim_uniform(&rng, 0, 99) < sp->resume_pct;
        q->commit = sim_uniform(&rng, 0, 99) < sp->commit_pct;
        if (sim_uniform(&rng, 0, 99) < sp->cancel_pct)
            q->t_cancel = t + sim_uniform(&rng, 1, 40 * sp->mean_gap_us);
        if (sim_uniform(&rng, 0, 99) < sp->deadline_pct)
            q->deadline = t + sim_uniform(&rng, 1, 40 * sp->mean_gap_us);
        q->input = malloc(((size_t)q->prompt + (size_t)q->max_new + 1) * sizeof(int32_t));
        for (int k = 0; k < q->prompt; k++)
            q->input[k] = (int32_t)(sim_rand(&rng) % SIM_VOCAB);
        q->n_input = q->prompt;
    }
}

void sim_init(sim_t *m, const sched_config_t *cfg, const sim_spec_t *sp, uint64_t seed)
{
    char e[256];
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    int rc = sched_create(cfg, &m->s, e, sizeof(e));
    CHECK_MSG(rc == 0, "sched_create: %s", e);
    sim_make_stream(m, sp, seed);
    m->slot_state = calloc((size_t)cfg->n_slots, sizeof(uint64_t));
    m->slot_owner = malloc((size_t)cfg->n_slots * sizeof(int));
    for (int i = 0; i < cfg->n_slots; i++)
        m->slot_owner[i] = -1;
    for (int i = 0; i < SIM_MAX_INFLIGHT; i++) {
        m->q[i].moves = malloc((size_t)cfg->n_slots * 4 * sizeof(sched_move_t));
        m->q[i].entries = malloc((size_t)cfg->n_slots * sizeof(sched_entry_t));
    }
    m->ev_cap = m->n * 2 + 8;
    m->ev = malloc((size_t)m->ev_cap * sizeof(sched_event_t));
    m->res = malloc((size_t)cfg->n_slots * SIM_MAX_INFLIGHT * sizeof(sched_result_t));
}

void sim_free(sim_t *m)
{
    sched_destroy(m->s);
    for (int i = 0; i < m->n; i++)
        free(m->r[i].input);
    free(m->r);
    free(m->slot_state);
    free(m->slot_owner);
    for (int i = 0; i < SIM_MAX_INFLIGHT; i++) {
        free(m->q[i].moves);
        free(m->q[i].entries);
    }
    free(m->ev);
    free(m->res);
}

static uint64_t sim_token_hash(uint64_t state, int32_t tok)
{
    return sim_mix(state ^ ((uint64_t)(uint32_t)tok * 0x100000001b3ull));
}

/* Runs the oldest queued plan on the fake worker, samples, and queues its STEP_DONE. */
static void sim_exec(sim_t *m, const sim_spec_t *sp)
{
    sim_plan_t *p = &m->q[0];
    int n_res = 0, tokens = 0;
    for (int i = 0; i < p->n_moves; i++) {
        const sched_move_t *mv = &p->moves[i];
        sim_req_t *q = sim_find(m, mv->id);
        int qi = (int)(q - m->r);
        CHECK(mv->slot >= 0 && mv->slot < m->cfg.n_slots);
        if (q->finished)
            continue; /* ended after this plan was made: the daemon skips its moves. (A
                       * request that only stopped keeps its moves: it may have a commit
                       * feed to come, and its slot may be handed over in this plan.) */
        switch (mv->kind) {
        case SCHED_MOVE_SWAP_OUT:
            CHECK(m->slot_owner[mv->slot] == qi);
            q->host_state = m->slot_state[mv->slot];
            q->in_host = true;
            m->slot_owner[mv->slot] = -1;
            if (++m->host_used > m->cfg.n_host_slots)
                CHECK_MSG(0, "step %llu: %d host copies, the tier holds %d",
                          (unsigned long long)p->step, m->host_used, m->cfg.n_host_slots);
            break;
        case SCHED_MOVE_SWAP_IN:
            CHECK(q->in_host);
            m->slot_state[mv->slot] = q->host_state;
            q->in_host = false;
            m->host_used--;
            m->slot_owner[mv->slot] = qi;
            break;
        case SCHED_MOVE_LOAD:
            CHECK(q->resume && q->fed == 0);
            m->slot_state[mv->slot] = sim_mix(q->id); /* the session's stored state */
            m->slot_owner[mv->slot] = qi;
            break;
        case SCHED_MOVE_RESET:
            CHECK(!q->resume && q->fed == 0);
            m->slot_state[mv->slot] = 0x5eed;
            m->slot_owner[mv->slot] = qi;
            break;
        default:
            CHECK(0);
        }
    }
    for (int i = 0; i < p->n_entries; i++) {
        const sched_entry_t *e = &p->entries[i];
        sim_req_t *q = sim_find(m, e->id);
        if (!q || q->finished || p->step <= q->drop_upto)
            continue; /* the daemon drops entries of requests it knows have ended */
        CHECK_MSG(m->slot_owner[e->slot] == (int)(q - m->r), "step %llu: slot %d not owned by %llu",
                  (unsigned long long)p->step, e->slot, (unsigned long long)e->id);
        CHECK(e->start == q->fed); /* no token skipped or fed twice */
        CHECK(e->n_tokens >= 1 && e->start + e->n_tokens <= q->n_input);
        CHECK(e->decode == (e->start >= q->prompt));
        CHECK(!e->decode || e->n_tokens == 1);
        CHECK(!e->commit || (q->commit && e->n_logits == 0 && !q->committed));
        uint64_t st = m->slot_state[e->slot];
        for (int k = e->start; k < e->start + e->n_tokens && k < q->n_input; k++)
            st = sim_token_hash(st, q->input[k]);
        m->slot_state[e->slot] = st;
        q->fed = e->start + e->n_tokens;
        tokens += e->n_tokens;
        if (e->commit) {
            CHECK(q->fed == q->n_input); /* everything sampled has been fed */
            q->committed = true;
            q->final_state = st;
        }
        if (e->n_logits) {
            CHECK(q->fed == q->n_input && q->n_out < q->max_new);
            int32_t tok = (int32_t)(sim_mix(st) % SIM_VOCAB);
            q->input[q->n_input++] = tok;
            q->n_out++;
            sched_outcome_t o = SCHED_OUT_TOKEN;
            if (sp->stop_mod && tok % sp->stop_mod == 0) {
                o = SCHED_OUT_STOP;
                q->stopped = true;
                q->drop_upto = m->last_step; /* every plan received before it reports */
            }
            m->res[n_res++] = (sched_result_t){.id = q->id, .outcome = o};
        }
    }
    m->now += 20 + tokens; /* the step's cost on the simulated clock */
    sched_event_t *d = &m->ev[m->nev++];
    memset(d, 0, sizeof(*d));
    d->kind = SCHED_EV_STEP_DONE;
    d->done.step = p->step;
    d->done.n_results = n_res;
    d->done.results = m->res;
    /* shift the queue */
    sim_plan_t first = m->q[0];
    for (int i = 1; i < m->nq; i++)
        m->q[i - 1] = m->q[i];
    m->q[--m->nq] = first;
}

/* In lockstep every running request with a sampled token to feed decodes in every plan. */
static void sim_check_decodes(sim_t *m, const sched_plan_t *p)
{
    int running = 0;
    for (int s = 0; s < m->cfg.n_slots; s++) {
        int owner = m->slot_owner[s];
        for (int i = 0; i < p->n_moves; i++) {
            if (p->moves[i].slot != s) continue;
            sim_req_t *q = sim_find(m, p->moves[i].id);
            owner = p->moves[i].kind == SCHED_MOVE_SWAP_OUT ? -1 : (int)(q - m->r);
        }
        if (owner < 0) continue;
        sim_req_t *q = &m->r[owner];
        if (q->finished) continue;
        running++;
        if (q->commit && !q->committed && q->fed >= q->prompt &&
            (q->stopped || q->n_out == q->max_new)) {
            bool found = false;
            for (int i = 0; i < p->n_entries; i++)
                found |= p->entries[i].id == q->id && p->entries[i].commit;
            CHECK_MSG(found, "request %llu in slot %d has no commit feed in step %llu",
                      (unsigned long long)q->id, s, (unsigned long long)p->step);
            continue;
        }
        if (q->stopped) continue;
        if (q->fed >= q->prompt && q->n_out < q->max_new) {
            bool found = false;
            for (int i = 0; i < p->n_entries; i++)
                found |= p->entries[i].id == q->id && p->entries[i].decode;
            CHECK_MSG(found, "request %llu in slot %d has no decode in step %llu",
                      (unsigned long long)q->id, s, (unsigned long long)p->step);
        }
    }
    (void)running;
}

static void sim_check_plan(sim_t *m, const sched_plan_t *p)
{
    int tokens = 0;
    bool seen_in = false;
    CHECK(p->n_entries <= m->cfg.n_slots);
    for (int i = 0; i < p->n_entries; i++) {
        tokens += p->entries[i].n_tokens;
        for (int j = 0; j < i; j++)
            CHECK(p->entries[j].slot != p->entries[i].slot);
    }
    CHECK(tokens == p->n_tokens);
    CHECK_MSG(p->n_tokens <= m->cfg.step_tokens, "step %llu: %d tokens > budget %d",
              (unsigned long long)p->step, p->n_tokens, m->cfg.step_tokens);
    for (int i = 0; i < p->n_moves; i++) {
        if (p->moves[i].kind == SCHED_MOVE_SWAP_OUT)
            CHECK(!seen_in); /* swap-outs before anything enters a slot */
        else
            seen_in = true;
    }
    if (p->step) {
        CHECK(p->step == m->last_step + 1);
        m->last_step = p->step;
    }
}

static void sim_on_finish(sim_t *m, const sched_finish_t *f)
{
    sim_req_t *q = sim_find(m, f->id);
    CHECK(q != NULL);
    if (!q) return;
    q->n_finish_records++;
    CHECK_MSG(q->n_finish_records == 1, "request %llu finished twice", (unsigned long long)f->id);
    q->finished = true;
    q->status = f->status;
    q->fin = *f;
    q->t_finish = m->now;
    if (q->in_host) /* the daemon drops any host copy */
        m->host_used--;
    q->in_host = false;
    m->n_finished++;
    if (f->status == 0) {
        CHECK_MSG(q->n_out == q->max_new || q->stopped, "request %llu ended OK with %d of %d",
                  (unsigned long long)q->id, q->n_out, q->max_new);
        CHECK(f->n_generated == q->n_out);
        CHECK(f->msg[0] == 0);
        if (q->commit) {
            /* The committed state is the hash chain over the whole input, from the start. */
            uint64_t want = q->resume ? sim_mix(q->id) : 0x5eed;
            for (int k = 0; k < q->n_input; k++)
                want = sim_token_hash(want, q->input[k]);
            CHECK_MSG(q->committed && q->final_state == want && q->fed == q->n_input,
                      "request %llu: committed state wrong", (unsigned long long)q->id);
        } else {
            CHECK(!q->committed && q->fed == q->prompt + (q->n_out > 0 ? q->n_out - 1 : 0));
        }
    } else {
        CHECK(f->msg[0] != 0); /* every refusal says why */
    }
    if (f->status == RCD_EDEADLINE) CHECK(q->deadline && q->deadline <= m->now);
    if (f->status == RCD_ECANCELLED) CHECK(q->cancel_sent);
}

bool sim_run(sim_t *m, const sim_spec_t *sp, int64_t max_steps)
{
    int next_arrival = 0;
    char e[256];
    while (m->n_finished < m->n) {
        if (m->steps++ > max_steps) {
            CHECK_MSG(0, "stream not done after %lld calls: %lld of %d finished",
                      (long long)max_steps, (long long)m->n_finished, m->n);
            return false;
        }
        for (; next_arrival < m->n && m->r[next_arrival].t_arrive <= m->now; next_arrival++) {
            sim_req_t *q = &m->r[next_arrival];
            sched_event_t *a = &m->ev[m->nev++];
            memset(a, 0, sizeof(*a));
            a->kind = SCHED_EV_ARRIVE;
            a->id = q->id;
            a->arrive = (sched_arrival_t){q->prio,     q->tenant, q->prompt, q->max_new,
                                          q->deadline, q->resume, q->commit, 0};
            q->arrived = true;
            q->t_delivered = m->now;
        }
        for (int i = 0; i < next_arrival; i++) {
            sim_req_t *q = &m->r[i];
            if (q->t_cancel && q->t_cancel <= m->now && !q->cancel_sent && !q->finished) {
                sched_event_t *c = &m->ev[m->nev++];
                memset(c, 0, sizeof(*c));
                c->kind = SCHED_EV_CANCEL;
                c->id = q->id;
                q->cancel_sent = true;
                q->drop_upto = UINT64_MAX; /* the daemon drops its queued entries */
            }
        }
        int nq_before = m->nq;
        const sched_plan_t *p = NULL;
        int rc = sched_step(m->s, m->now, m->ev, m->nev, &p, e, sizeof(e));
        CHECK_MSG(rc == 0, "sched_step: %s", e);
        if (rc) return false;
        m->nev = 0;
        for (int i = 0; i < p->n_finished; i++)
            sim_on_finish(m, &p->finished[i]);
        sim_check_plan(m, p);
        sched_get_stats(m->s, &m->stats);
        if (nq_before < m->cfg.max_inflight) {
            /* Work-conserving: a slot never idles while someone waits. */
            CHECK_MSG(m->stats.running == m->cfg.n_slots ||
                          m->stats.waiting + m->stats.swapped == 0,
                      "%d running, %d waiting, %d swapped", m->stats.running, m->stats.waiting,
                      m->stats.swapped);
        }
        if (m->lockstep_checks && p->step) sim_check_decodes(m, p);
        if (p->step) {
            sim_plan_t *c = &m->q[m->nq++];
            c->step = p->step;
            c->n_moves = p->n_moves;
            c->n_entries = p->n_entries;
            memcpy(c->moves, p->moves, (size_t)p->n_moves * sizeof(sched_move_t));
            memcpy(c->entries, p->entries, (size_t)p->n_entries * sizeof(sched_entry_t));
        }
        if (m->nq > 0 && (m->nq >= m->cfg.max_inflight || !p->step)) {
            sim_exec(m, sp);
        } else if (m->nq == 0 && !p->step) {
            /* idle: jump to the next thing that happens */
            int64_t t = INT64_MAX;
            if (next_arrival < m->n) t = m->r[next_arrival].t_arrive;
            for (int i = 0; i < next_arrival; i++)
                if (m->r[i].t_cancel && !m->r[i].cancel_sent && !m->r[i].finished &&
                    m->r[i].t_cancel < t)
                    t = m->r[i].t_cancel;
            if (t == INT64_MAX) {
                if (m->n_finished < m->n)
                    CHECK_MSG(0, "idle with %lld of %d finished", (long long)m->n_finished, m->n);
                return m->n_finished == m->n;
            }
            m->now = t > m->now ? t : m->now + 1;
        }
    }
    return true;
}

void sim_default_spec(sim_spec_t *sp)
{
    memset(sp, 0, sizeof(*sp));
    sp->n_req = 60;
    sp->prio_levels = 3;
    sp->tenants = 3;
    sp->mean_gap_us = 60;
    sp->max_prompt = 40;
    sp->max_new = 24;
    sp->stop_mod = 31;
}
