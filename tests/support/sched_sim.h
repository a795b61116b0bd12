/* tests/support: a simulated daemon and a fake worker for the scheduler's property tests
 * (scheduler/sched_sim_test.c). The worker's per-slot state is a hash chain over the tokens
 * fed and its "next token" is a function of that state, so any lost, repeated, reordered or
 * misplaced token, and any state swap done wrong, changes every later output. Every plan and
 * finish record is checked as the stream runs (CHECK, rcd_test.h). */
#ifndef RCD_SCHED_SIM_H
#define RCD_SCHED_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/sched.h"
#include "tests/support/rcd_test.h"

#define SIM_VOCAB 1000
#define SIM_MAX_INFLIGHT 4

typedef struct sim_spec {
    int n_req;
    int prio_levels;
    int tenants;
    int mean_gap_us;  /* arrivals */
    int max_prompt;   /* prompts are 1..max_prompt tokens (some long: x20) */
    int max_new;      /* 0..max_new */
    int stop_mod;     /* a sampled token t with t % stop_mod == 0 stops (0: never) */
    int cancel_pct;   /* requests cancelled at a random time */
    int deadline_pct; /* requests with a deadline */
    int resume_pct;   /* requests that LOAD a stored state */
    int commit_pct;   /* requests that want their final state (commit feed) */
} sim_spec_t;

typedef struct sim_req {
    uint64_t id, tenant;
    int64_t t_arrive, t_cancel, deadline;
    int64_t t_delivered; /* when the ARRIVE event reached the scheduler */
    int prio, prompt, max_new;
    bool resume, commit;
    int32_t *input; /* prompt then sampled tokens */
    int n_input, fed, n_out;
    bool arrived, cancel_sent, stopped, finished;
    int status, n_finish_records;
    int64_t t_finish;
    sched_finish_t fin;
    bool in_host;
    uint64_t host_state;
    uint64_t drop_upto; /* the daemon drops this request's moves and entries in plans <= */
    bool committed;
    uint64_t final_state;
} sim_req_t;

typedef struct sim_plan {
    uint64_t step;
    int n_moves, n_entries;
    sched_move_t *moves;
    sched_entry_t *entries;
} sim_plan_t;

typedef struct sim {
    sched_config_t cfg;
    sched_t *s;
    sim_req_t *r;
    int n;
    uint64_t *slot_state;
    int *slot_owner;
    sim_plan_t q[SIM_MAX_INFLIGHT];
    int nq;
    int host_used; /* host-tier copies held */
    int64_t now;
    sched_event_t *ev;
    int nev, ev_cap;
    sched_result_t *res;
    uint64_t last_step;
    int64_t steps, n_finished;
    bool lockstep_checks;
    sched_stats_t stats;
} sim_t;

/* The next draw of the generator whose state is *rng; sim_uniform: one in [lo, hi]. */
uint64_t sim_rand(uint64_t *rng);
int sim_uniform(uint64_t *rng, int lo, int hi);

/* A stream of sp->n_req requests drawn from seed, against a scheduler made from cfg. */
void sim_init(sim_t *m, const sched_config_t *cfg, const sim_spec_t *sp, uint64_t seed);
void sim_free(sim_t *m);
/* Drives the stream to the end. Returns false if it got stuck. */
bool sim_run(sim_t *m, const sim_spec_t *sp, int64_t max_steps);
/* 60 requests, 3 priorities, 3 tenants, prompts up to 40, up to 24 new tokens, stops. */
void sim_default_spec(sim_spec_t *sp);

#endif
