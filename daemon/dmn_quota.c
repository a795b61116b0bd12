/* daemon: per-tenant quota counters in a chained hash table keyed by the tenant string. A
 * tenant holding a turn is pinned; idle tenants sit on an LRU list and beyond max_idle the
 * least recently used is forgotten, so the table holds at most max_idle + turns entries.
 * The bucket is kept in units of 1/60000 token, so a refill of rate tokens per minute adds
 * exactly `rate` units per millisecond: integer arithmetic, no drift. */
#include "daemon/dmn_quota.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "common/rcd_lru.h"

#define UNITS 60000 /* bucket units per token: ms per minute */

struct dmn_quota_tenant {
    dmn_quota_tenant_t *next; /* hash chain */
    rcd_lru_node_t lru;       /* on q->idle while turns == 0 */
    uint64_t hash;
    char *name;
    int64_t level;   /* bucket, in units (may be negative: debt) */
    int64_t last_ms; /* time of the last refill */
    long turns, queued;
    uint64_t reserved; /* state bytes reserved by its turns */
};

struct dmn_quota {
    dmn_quota_limits_t lim;
    size_t max_idle, n, n_buckets;
    dmn_quota_tenant_t **buckets;
    rcd_lru_t idle;
    uint64_t seed;
};

static uint64_t hash_of(const dmn_quota_t *q, const char *s)
{
    uint64_t h = 1469598103934665603ull ^ q->seed;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int dmn_quota_create(const dmn_quota_limits_t *lim, size_t max_idle, dmn_quota_t **out)
{
    dmn_quota_t *q = calloc(1, sizeof(*q));
    if (!q) return RCD_ENOMEM;
    q->lim = *lim;
    q->max_idle = max_idle ? max_idle : DMN_QUOTA_MAX_IDLE;
    q->n_buckets = 64;
    q->buckets = calloc(q->n_buckets, sizeof(*q->buckets));
    if (!q->buckets) {
        free(q);
        return RCD_ENOMEM;
    }
    /* Tenant names come from clients: a per-process seed keeps chains from being aimed at. */
    q->seed = (uint64_t)(uintptr_t)q * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)&q;
    *out = q;
    return 0;
}

void dmn_quota_destroy(dmn_quota_t *q)
{
    if (!q) return;
    for (size_t b = 0; b < q->n_buckets; b++)
        for (dmn_quota_tenant_t *t = q->buckets[b], *nx; t; t = nx) {
            nx = t->next;
            free(t->name);
            free(t);
        }
    free(q->buckets);
    free(q);
}

const dmn_quota_limits_t *dmn_quota_limits(const dmn_quota_t *q)
{
    return &q->lim;
}

bool dmn_quota_enabled(const dmn_quota_t *q)
{
    const dmn_quota_limits_t *l = &q->lim;
    return l->max_turns || l->max_queued || l->tokens_per_minute || l->max_sessions ||
           l->max_state_bytes;
}

size_t dmn_quota_tracked(const dmn_quota_t *q)
{
    return q->n;
}

static dmn_quota_tenant_t **find(dmn_quota_t *q, const char *name, uint64_t h)
{
    dmn_quota_tenant_t **p = &q->buckets[h & (q->n_buckets - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->name, name)))
        p = &(*p)->next;
    return p;
}

static void unlink_free(dmn_quota_t *q, dmn_quota_tenant_t *t)
{
    dmn_quota_tenant_t **p = find(q, t->name, t->hash);
    *p = t->next;
    if (rcd_lru_linked(&q->idle, &t->lru)) rcd_lru_unlink(&q->idle, &t->lru);
    free(t->name);
    free(t);
    q->n--;
}

static void grow(dmn_quota_t *q)
{
    size_t nb = q->n_buckets * 2;
    dmn_quota_tenant_t **b = calloc(nb, sizeof(*b));
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < q->n_buckets; i++)
        for (dmn_quota_tenant_t *t = q->buckets[i], *nx; t; t = nx) {
            nx = t->next;
            t->next = b[t->hash & (nb - 1)];
            b[t->hash & (nb - 1)] = t;
        }
    free(q->buckets);
    q->buckets = b;
    q->n_buckets = nb;
}

static int64_t cap_units(const dmn_quota_t *q)
{
    return (int64_t)q->lim.tokens_per_minute * UNITS;
}

static void refill(const dmn_quota_t *q, dmn_quota_tenant_t *t, int64_t now_ms)
{
    int64_t rate = q->lim.tokens_per_minute, cap = cap_units(q);
    int64_t dt = now_ms - t->last_ms;
    if (dt <= 0) return; /* a clock that stands still (or steps back) adds nothing */
    t->last_ms = now_ms;
    if (!rate || t->level >= cap) return;
    int64_t need = cap - t->level; /* no overflow: dt * rate stays near need */
    if (dt > need / rate)
        t->level = cap;
    else
        t->level += dt * rate;
}

/* The tenant's entry, made (bucket full) if absent. NULL: out of memory. */
static dmn_quota_tenant_t *get(dmn_quota_t *q, const char *name, int64_t now_ms)
{
    uint64_t h = hash_of(q, name);
    dmn_quota_tenant_t **p = find(q, name, h);
    if (*p) {
        refill(q, *p, now_ms);
        return *p;
    }
    dmn_quota_tenant_t *t = calloc(1, sizeof(*t));
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return NULL;
    }
    t->hash = h;
    t->level = cap_units(q);
    t->last_ms = now_ms;
    *p = t;
    q->n++;
    rcd_lru_push(&q->idle, &t->lru);
    if (q->n > 2 * q->n_buckets) grow(q);
    return t;
}

/* Keeps at most max_idle idle tenants (the newest used). */
static void trim_idle(dmn_quota_t *q)
{
    while (q->idle.n > q->max_idle)
        unlink_free(q, RCD_CONTAINER_OF(q->idle.tail, dmn_quota_tenant_t, lru));
}

static int refuse(dmn_quota_refusal_t *why, const char *quota, long limit, int64_t retry_ms)
{
    why->quota = quota;
    why->limit = limit;
    why->retry_after_ms = retry_ms > 0 ? retry_ms : 1;
    return RCD_ETOOBIG;
}

int dmn_quota_turn_admit(dmn_quota_t *q, const char *tenant, int64_t now_ms, int64_t prompt_tokens,
                         uint64_t stored_bytes, uint64_t grow_bytes, dmn_quota_hold_t *h,
                         dmn_quota_refusal_t *why)
{
    const dmn_quota_limits_t *l = &q->lim;
    memset(h, 0, sizeof(*h));
    dmn_quota_tenant_t *t = get(q, tenant, now_ms);
    int rc = 0;
    if (!t) return RCD_ENOMEM;
    if (l->max_turns && t->turns >= l->max_turns) {
        rc = refuse(why, "--tenant-max-turns", l->max_turns, DMN_QUOTA_RETRY_TURN_MS);
        goto out;
    }
    if (l->max_queued && t->queued >= l->max_queued) {
        rc = refuse(why, "--tenant-max-queued", l->max_queued, DMN_QUOTA_RETRY_TURN_MS);
        goto out;
    }
    if (l->tokens_per_minute) {
        int64_t want = prompt_tokens < l->tokens_per_minute ? prompt_tokens : l->tokens_per_minute;
        int64_t deficit = want * UNITS - t->level;
        if (deficit > 0) {
            int64_t rate = l->tokens_per_minute;
            rc = refuse(why, "--tenant-tokens-per-minute", l->tokens_per_minute,
                        (deficit + rate - 1) / rate);
            goto out;
        }
    }
    if (l->max_state_bytes &&
        stored_bytes + t->reserved + grow_bytes > (uint64_t)l->max_state_bytes) {
        rc = refuse(why, "--tenant-max-state-bytes", l->max_state_bytes, DMN_QUOTA_RETRY_STORED_MS);
        goto out;
    }
    if (t->turns == 0 && rcd_lru_linked(&q->idle, &t->lru)) rcd_lru_unlink(&q->idle, &t->lru);
    t->turns++;
    t->queued++;
    t->reserved += grow_bytes;
    if (l->tokens_per_minute) t->level -= prompt_tokens * UNITS;
    h->t = t;
    h->bytes = grow_bytes;
    h->queued = true;
    return 0;
out:
    if (t->turns == 0) rcd_lru_touch(&q->idle, &t->lru);
    trim_idle(q);
    return rc;
}

void dmn_quota_turn_started(dmn_quota_t *q, dmn_quota_hold_t *h)
{
    (void)q;
    if (!h->t || !h->queued) return;
    h->t->queued--;
    h->queued = false;
}

void dmn_quota_turn_tokens(dmn_quota_t *q, dmn_quota_hold_t *h, int64_t now_ms, int64_t n)
{
    if (!h->t || !q->lim.tokens_per_minute) return;
    refill(q, h->t, now_ms);
    h->t->level -= n * UNITS;
}

void dmn_quota_turn_end(dmn_quota_t *q, dmn_quota_hold_t *h, int64_t now_ms)
{
    dmn_quota_tenant_t *t = h->t;
    if (!t) return;
    refill(q, t, now_ms);
    if (h->queued) t->queued--;
    t->reserved -= h->bytes;
    memset(h, 0, sizeof(*h));
    if (--t->turns == 0) {
        rcd_lru_push(&q->idle, &t->lru);
        trim_idle(q);
    }
}

int dmn_quota_session_check(dmn_quota_t *q, const char *tenant, uint64_t sessions,
                            uint64_t stored_bytes, uint64_t add_bytes, dmn_quota_refusal_t *why)
{
    const dmn_quota_limits_t *l = &q->lim;
    if (l->max_sessions && sessions >= (uint64_t)l->max_sessions)
        return refuse(why, "--tenant-max-sessions", l->max_sessions, DMN_QUOTA_RETRY_STORED_MS);
    if (l->max_state_bytes) {
        uint64_t h = hash_of(q, tenant);
        dmn_quota_tenant_t *t = *find(q, tenant, h);
        uint64_t reserved = t ? t->reserved : 0;
        if (stored_bytes + reserved + add_bytes > (uint64_t)l->max_state_bytes)
            return refuse(why, "--tenant-max-state-bytes", l->max_state_bytes,
                          DMN_QUOTA_RETRY_STORED_MS);
    }
    return 0;
}

bool dmn_quota_peek(dmn_quota_t *q, const char *tenant, int64_t now_ms, int64_t *tokens,
                    long *turns, long *queued)
{
    dmn_quota_tenant_t *t = *find(q, tenant, hash_of(q, tenant));
    if (!t) return false;
    refill(q, t, now_ms);
    /* floor division: -1 unit is -1 token, not 0 */
    if (tokens) *tokens = t->level >= 0 ? t->level / UNITS : -((-t->level + UNITS - 1) / UNITS);
    if (turns) *turns = t->turns;
    if (queued) *queued = t->queued;
    return true;
}
