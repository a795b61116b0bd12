/* scheduler policy: who holds a slot this step (admission, preemption), then how the token
 * budget is split: one decode token per running sequence first, prefill chunks after. */
#include <string.h>

#include "scheduler/sched_int.h"

/* ---- the running set's tenants, sorted, for per-tenant share ---------------------------- */

static int32_t lower_bound(const uint64_t *a, int32_t n, uint64_t t)
{
    int32_t lo = 0, hi = n;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int32_t tenant_count(const sched_t *s, uint64_t t)
{
    int32_t i = lower_bound(s->tenants, s->n_tenants, t), n = 0;
    while (i + n < s->n_tenants && s->tenants[i + n] == t)
        n++;
    return n;
}

static void tenant_add(sched_t *s, uint64_t t)
{
    int32_t i = lower_bound(s->tenants, s->n_tenants, t);
    memmove(&s->tenants[i + 1], &s->tenants[i], (size_t)(s->n_tenants - i) * sizeof(uint64_t));
    s->tenants[i] = t;
    s->n_tenants++;
}

static void tenant_del(sched_t *s, uint64_t t)
{
    int32_t i = lower_bound(s->tenants, s->n_tenants, t);
    if (i < s->n_tenants && s->tenants[i] == t) {
        memmove(&s->tenants[i], &s->tenants[i + 1],
                (size_t)(s->n_tenants - i - 1) * sizeof(uint64_t));
        s->n_tenants--;
    }
}

/* ---- what a running sequence needs next ------------------------------------------------- */

/* A decode feeds the latest planned sampled token; it needs that token to be planned (its
 * logits in an earlier plan) and more tokens to be wanted. */
static bool wants_decode(const sched__req_t *r)
{
    if (r->fed < r->prompt || r->stopped) return false;
    int32_t planned = r->generated + r->inflight_logits;
    return r->fed - r->prompt < planned && planned < r->max_new;
}

/* The commit feed: the last sampled token (known or planned), fed without logits. */
static bool wants_commit(const sched__req_t *r)
{
    if (!r->commit || r->fed < r->prompt) return false;
    int32_t planned = r->stopped ? r->generated : r->generated + r->inflight_logits;
    return r->fed - r->prompt < planned && (r->stopped || planned >= r->max_new);
}

/* ---- admission order --------------------------------------------------------------------- */

typedef struct cand_key {
    int64_t eff;
    int32_t tenant_slots;
    uint64_t seq;
} cand_key_t;

static cand_key_t key_of(const sched_t *s, const sched__req_t *r, int64_t now)
{
    cand_key_t k = {sched__eff(s, r, now), 0, r->seq};
    if (s->cfg.tenant_fair || s->cfg.max_tenant_slots) k.tenant_slots = tenant_count(s, r->tenant);
    return k;
}

/* Higher effective priority first; then (tenant_fair) the tenant holding fewer slots; then
 * first come, first served. */
static bool key_before(const sched_t *s, cand_key_t a, cand_key_t b)
{
    if (a.eff != b.eff) return a.eff > b.eff;
    if (s->cfg.tenant_fair && a.tenant_slots != b.tenant_slots)
        return a.tenant_slots < b.tenant_slots;
    return a.seq < b.seq;
}

/* The waiting request to admit next, or NULL. A tenant at max_tenant_slots only goes when no
 * other tenant's request is waiting that could go instead. */
static sched__req_t *best_candidate(const sched_t *s, int64_t now)
{
    sched__req_t *best = NULL, *best_capped = NULL;
    cand_key_t bk = {0, 0, 0}, bck = {0, 0, 0};
    int32_t cap = s->cfg.max_tenant_slots;
    for (int32_t i = 0; i < s->n_wait; i++) {
        sched__req_t *r = &s->reqs[s->wait[i]];
        if (r->moved_this_plan) continue; /* just preempted: not back in the same plan */
        cand_key_t k = key_of(s, r, now);
        if (cap && k.tenant_slots >= cap) {
            if (!best_capped || key_before(s, k, bck)) best_capped = r, bck = k;
        } else if (!best || key_before(s, k, bk)) {
            best = r, bk = k;
        }
    }
    return best ? best : best_capped;
}

/* The running sequence W may displace: strictly lower effective priority, ran its
 * min_run_steps, not touched by this plan. Lowest priority first, then the youngest. */
static sched__req_t *pick_victim(const sched_t *s, int64_t eff_w)
{
    sched__req_t *v = NULL;
    for (int32_t i = 0; i < s->cfg.n_slots; i++) {
        if (s->slot_req[i] < 0) continue;
        sched__req_t *r = &s->reqs[s->slot_req[i]];
        if (r->moved_this_plan || r->run_steps < s->cfg.min_run_steps || r->eff_frozen >= eff_w ||
            r->stopped)
            continue; /* (a stopped one only has its commit feed left) */
        if (!v || r->eff_frozen < v->eff_frozen ||
            (r->eff_frozen == v->eff_frozen && r->seq > v->seq))
            v = r;
    }
    return v;
}

static int32_t free_slot(const sched_t *s)
{
    for (int32_t i = 0; i < s->cfg.n_slots; i++)
        if (s->slot_req[i] < 0) return i;
    return -1;
}

/* Moves are staged: swap-outs from moves[0], the rest from moves[2 * n_slots]; joined at the
 * end so that every swap-out precedes every swap-in, reset and load. */
static void swap_out(sched_t *s, sched__req_t *v, int64_t now, int32_t *n_out)
{
    s->moves[(*n_out)++] = (sched_move_t){SCHED_MOVE_SWAP_OUT, v->id, v->slot};
    s->slot_req[v->slot] = -1;
    tenant_del(s, v->tenant);
    v->slot = -1;
    v->state = SCHED__SWAPPED;
    v->moved_this_plan = true;
    v->wait_since_us = now;
    v->n_preempt++;
    s->n_running--;
    s->n_swapped++;
    sched__wait_add(s, v);
    s->stats.preemptions++;
}

static void admit(sched_t *s, sched__req_t *w, int32_t slot, int64_t now, int32_t *n_in)
{
    sched_move_kind_t kind;
    w->eff_frozen = sched__eff(s, w, now);
    sched__wait_remove(s, w);
    if (w->state == SCHED__SWAPPED) {
        kind = SCHED_MOVE_SWAP_IN;
        s->n_swapped--;
        s->stats.swap_ins++;
    } else {
        kind = w->resume ? SCHED_MOVE_LOAD : SCHED_MOVE_RESET;
        s->n_waiting_fresh--;
        if (w->resume) s->stats.loads++;
    }
    s->moves[2 * s->cfg.n_slots + (*n_in)++] = (sched_move_t){kind, w->id, slot};
    w->waited_us += now - w->wait_since_us;
    w->state = SCHED__RUNNING;
    w->slot = slot;
    w->run_steps = 0;
    w->moved_this_plan = true;
    if (!w->admitted_once) {
        w->admitted_once = true;
        w->first_admit_us = now;
        s->stats.admitted++;
    }
    s->slot_req[slot] = (int32_t)(w - s->reqs);
    tenant_add(s, w->tenant);
    s->n_running++;
}

/* Fills free slots (preempting where allowed) in admission order. Every running sequence is
 * guaranteed at least one token per step (n_slots <= step_tokens), so the budget never blocks
 * an admission. */
static void admit_all(sched_t *s, int64_t now, int32_t *n_out, int32_t *n_in)
{
    /* The daemon runs every swap-out before any swap-in, so the host tier's peak during the
     * plan is what it held at the start plus this plan's swap-outs. */
    int32_t host_start = s->n_swapped;
    while (s->n_wait > 0) {
        sched__req_t *w = best_candidate(s, now);
        if (!w) break;
        int32_t slot = free_slot(s);
        if (slot < 0) {
            if (host_start + *n_out >= s->cfg.n_host_slots) break;
            sched__req_t *v = pick_victim(s, sched__eff(s, w, now));
            if (!v) break; /* the best candidate cannot displace anyone: nobody else can either */
            slot = v->slot;
            swap_out(s, v, now, n_out);
        }
        admit(s, w, slot, now, n_in);
    }
}

/* ---- the batch --------------------------------------------------------------------------- */

static sched_entry_t *add_entry(sched_t *s, sched__req_t *r, int32_t n, int32_t logits, bool commit)
{
    sched_entry_t *e = &s->entries[s->plan.n_entries++];
    *e = (sched_entry_t){r->id, r->slot, r->fed, n, logits, r->fed >= r->prompt, commit, 0};
    r->has_entry = true;
    return e;
}

/* Prefill order: effective priority (frozen at admission), then (chunking) the fewest prompt
 * tokens left — a short prompt admitted beside long ones gets its chunk first and reaches its
 * first token in one step, while the long ones keep their one token per step and the rest of
 * the budget — then arrival. Without chunking, arrival only: there is no one-token share, and
 * the first in order must be the one that cannot be passed over. */
static bool prefill_before(const sched_t *s, const sched__req_t *a, const sched__req_t *b)
{
    if (a->eff_frozen != b->eff_frozen) return a->eff_frozen > b->eff_frozen;
    const int32_t la = a->prompt - a->fed, lb = b->prompt - b->fed;
    if (!s->cfg.no_chunking && la != lb) return la < lb;
    return a->seq < b->seq;
}

static void build_batch(sched_t *s)
{
    int32_t budget = s->cfg.step_tokens, n_pre = 0;

    /* Decodes first: one token for every running sequence that has a sampled token to feed. */
    for (int32_t i = 0; i < s->cfg.n_slots; i++) {
        if (s->slot_req[i] < 0) continue;
        sched__req_t *r = &s->reqs[s->slot_req[i]];
        if (wants_decode(r)) {
            add_entry(s, r, 1, 1, false);
            budget--;
        } else if (wants_commit(r)) {
            add_entry(s, r, 1, 0, true);
            budget--;
        } else if (r->fed < r->prompt) {
            /* insertion sort into prefill order; n_slots is small */
            int32_t j = n_pre++;
            while (j > 0 && prefill_before(s, r, &s->reqs[s->order[j - 1]])) {
                s->order[j] = s->order[j - 1];
                j--;
            }
            s->order[j] = s->slot_req[i];
        }
    }

    /* Speculating decodes reserve their draft tokens next (verify entries), from what is
     * left once every prefill has its one token; without chunking none while a prompt waits
     * (it must fit whole). At most what max_new leaves after the entry's own token. */
    for (int32_t i = 0; i < s->plan.n_entries; i++) {
        sched_entry_t *e = &s->entries[i];
        sched__req_t *r = sched__lookup(s, e->id);
        if (!e->n_logits || !e->decode || r->spec <= 0) continue;
        int32_t n = r->spec, room = budget - n_pre,
                left = r->max_new - r->generated - r->inflight_logits - 1;
        if (s->cfg.no_chunking && n_pre > 0) room = 0;
        if (n > room) n = room;
        if (n > left) n = left;
        if (n > 0) {
            e->n_draft = n;
            budget -= n;
        }
    }

    /* Prefill chunks share the rest: one token each (so every admitted sequence moves), then up
     * to max_chunk each in order — or the whole rest of a prompt that fits in what is left of
     * the budget, so a short prompt reaches its first token in one step even when it is longer
     * than a chunk — then whatever is left in order. */
    int32_t *take = s->take;
    for (int32_t k = 0; k < n_pre; k++) {
        /* no_chunking: a whole prompt or nothing; the first in order always fits */
        int32_t left = s->reqs[s->order[k]].prompt - s->reqs[s->order[k]].fed;
        take[k] = s->cfg.no_chunking ? (left <= budget ? left : 0) : budget > 0 ? 1 : 0;
        budget -= take[k];
    }
    for (int pass = 0; pass < 2 && !s->cfg.no_chunking; pass++) {
        for (int32_t k = 0; k < n_pre && budget > 0; k++) {
            sched__req_t *r = &s->reqs[s->order[k]];
            int32_t left = r->prompt - r->fed - take[k];
            int32_t room = pass == 0 && left > budget ? s->cfg.max_chunk - take[k] : budget;
            int32_t n = left < room ? left : room;
            if (n > budget) n = budget;
            if (n > 0) {
                take[k] += n;
                budget -= n;
            }
        }
    }
    for (int32_t k = 0; k < n_pre; k++) {
        if (take[k] == 0) continue;
        sched__req_t *r = &s->reqs[s->order[k]];
        bool last = r->fed + take[k] == r->prompt;
        add_entry(s, r, take[k], last && r->max_new > 0 ? 1 : 0,
                  last && r->max_new == 0 && r->commit);
    }

    for (int32_t i = 0; i < s->plan.n_entries; i++) {
        sched_entry_t *e = &s->entries[i];
        sched__req_t *r = sched__lookup(s, e->id);
        r->fed += e->n_tokens;
        r->run_steps++;
        if (e->n_logits) r->inflight_logits++;
        s->plan.n_tokens += e->n_tokens + e->n_draft;
        if (e->decode)
            s->stats.decode_tokens += (uint64_t)e->n_tokens;
        else
            s->stats.prefill_tokens += (uint64_t)e->n_tokens;
    }
}

/* Remembers who this plan touched, for STEP_DONE (results, failures, in-flight counts). */
static void record_flight(sched_t *s, int64_t now)
{
    sched__flight_t *fl = NULL;
    for (int32_t i = 0; i < s->cfg.max_inflight && !fl; i++)
        if (s->flight[i].step == 0) fl = &s->flight[i];
    fl->step = s->plan.step;
    fl->issued_us = now;
    fl->n_items = 0;
    for (int32_t i = 0; i < s->plan.n_entries; i++) {
        sched__req_t *r = sched__lookup(s, s->entries[i].id);
        fl->items[fl->n_items++] =
            (sched__item_t){(int32_t)(r - s->reqs), r->seq, s->entries[i].n_logits > 0};
        r->inflight_items++;
    }
    for (int32_t i = 0; i < s->plan.n_moves; i++) {
        sched__req_t *r = sched__lookup(s, s->moves[i].id);
        if (r->has_entry) continue; /* already recorded with its entry */
        fl->items[fl->n_items++] = (sched__item_t){(int32_t)(r - s->reqs), r->seq, false};
        r->inflight_items++;
    }
    s->n_flight++;
}

void sched__plan(sched_t *s, int64_t now)
{
    int32_t ns = s->cfg.n_slots, n_out = 0, n_in = 0;

    s->n_tenants = 0;
    for (int32_t i = 0; i < ns; i++) {
        if (s->slot_req[i] >= 0) {
            sched__req_t *r = &s->reqs[s->slot_req[i]];
            r->moved_this_plan = false;
            r->has_entry = false;
            tenant_add(s, r->tenant);
        }
    }
    for (int32_t i = 0; i < s->n_wait; i++) {
        s->reqs[s->wait[i]].moved_this_plan = false;
        s->reqs[s->wait[i]].has_entry = false;
    }

    admit_all(s, now, &n_out, &n_in);
    memmove(&s->moves[n_out], &s->moves[2 * ns], (size_t)n_in * sizeof(sched_move_t));
    s->plan.n_moves = n_out + n_in;

    build_batch(s);
    if (s->plan.n_moves == 0 && s->plan.n_entries == 0) return;
    s->plan.step = s->next_step++;
    record_flight(s, now);
    s->stats.steps++;
    s->stats.entries += (uint64_t)s->plan.n_entries;
    s->stats.tokens += (uint64_t)s->plan.n_tokens;
    s->stats.budget_tokens += (uint64_t)s->cfg.step_tokens;
}
