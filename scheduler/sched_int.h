/* scheduler internals shared by sched.c (tables, events) and sched_plan.c (the policy).
 * Callers include only sched.h. */
#ifndef RCD_SCHED_INT_H
#define RCD_SCHED_INT_H

#include "scheduler/sched.h"

typedef enum sched__state {
    SCHED__FREE = 0,
    SCHED__WAITING, /* queued, never admitted yet */
    SCHED__SWAPPED, /* preempted: its state lives in the host tier */
    SCHED__RUNNING, /* owns a slot */
} sched__state_t;

typedef struct sched__req {
    uint64_t id, tenant;
    uint64_t seq; /* arrival order, also a generation tag for in-flight records */
    sched__state_t state;
    bool resume, commit, admitted_once, moved_this_plan, has_entry;
    bool stopped;         /* a stop condition ended generation; a commit feed may remain */
    uint64_t ignore_upto; /* results of steps <= this were planned before the stop: dropped */
    int32_t prio, prompt, max_new;
    int64_t deadline_us, arrival_us;
    int32_t slot;            /* RUNNING: its slot; otherwise -1 */
    int32_t wait_pos;        /* index in s->wait[] while WAITING or SWAPPED */
    int32_t fed;             /* input positions planned so far */
    int32_t generated;       /* sampled tokens reported */
    int32_t spec;            /* draft tokens reserved beside each decode entry */
    int32_t inflight_logits; /* planned entries with logits not yet reported */
    int32_t inflight_items;  /* planned entries and moves not yet reported */
    int32_t run_steps;       /* entries since the last admission */
    int32_t n_preempt;
    int64_t wait_since_us; /* start of the current wait */
    int64_t waited_us;     /* finished waits */
    int64_t eff_frozen;    /* effective priority, frozen while RUNNING */
    int64_t first_admit_us, first_token_us, last_token_us;
} sched__req_t;

/* One request touched by an in-flight plan. */
typedef struct sched__item {
    int32_t req;
    uint64_t seq;
    bool logits;
} sched__item_t;

typedef struct sched__flight {
    uint64_t step; /* 0: unused */
    int64_t issued_us;
    int32_t n_items;
    sched__item_t *items; /* capacity 3 * n_slots */
} sched__flight_t;

struct sched {
    sched_config_t cfg;
    int32_t pool; /* request records: n_slots + max_queue + n_host_slots */
    sched__req_t *reqs;
    int32_t *free_list, n_free;
    int32_t *map; /* open addressing id -> record index, -1 empty */
    uint32_t map_mask;
    int32_t *slot_req; /* slot -> record index, -1 free */
    int32_t *wait;     /* records WAITING or SWAPPED, unordered */
    int32_t n_wait;
    int32_t n_waiting_fresh, n_swapped, n_running;
    uint64_t next_seq, next_step;
    int64_t last_now;
    sched__flight_t *flight; /* max_inflight records */
    int32_t n_flight;
    /* plan buffers */
    sched_plan_t plan;
    sched_move_t *moves;
    sched_entry_t *entries;
    sched_finish_t *finished;
    int32_t finished_cap;
    uint64_t *tenants; /* n_slots: tenants of the running set, sorted (planning only) */
    int32_t n_tenants;
    int32_t *order; /* n_slots: prefill order (planning only) */
    int32_t *take;  /* n_slots: prefill tokens per order[] entry (planning only) */
    sched_stats_t stats;
};

/* sched.c */
sched__req_t *sched__lookup(sched_t *s, uint64_t id);
void sched__finish(sched_t *s, sched__req_t *r, int64_t now, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void sched__wait_remove(sched_t *s, sched__req_t *r);
void sched__wait_add(sched_t *s, sched__req_t *r);
int64_t sched__eff(const sched_t *s, const sched__req_t *r, int64_t now);

/* Tokens of the input stream a request feeds in all: the prompt, then every sampled token but
 * the last, or with commit every sampled token (the state after the last one is committed). */
static inline int32_t sched__feed_target(const sched__req_t *r)
{
    int32_t g = r->generated;
    return r->prompt + (r->commit ? g : (g > 0 ? g - 1 : 0));
}

/* sched_plan.c: builds s->plan's moves and entries at `now` and records the flight. */
void sched__plan(sched_t *s, int64_t now);

#endif
