/* daemon: per-tenant quotas — concurrent turns, queued turns, a token bucket of tokens per
 * minute, sessions and stored state bytes — as a pure data structure with an injected clock
 * (milliseconds, any monotonic origin). No I/O, no threads: the loop thread owns it. */
#ifndef DMN_QUOTA_H
#define DMN_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Each limit 0: unlimited. */
typedef struct dmn_quota_limits {
    long max_turns;         /* a tenant's turns admitted and not yet finished (queued+running) */
    long max_queued;        /* a tenant's admitted turns not yet given a slot */
    long tokens_per_minute; /* bucket: refills this many per minute, holds at most as many */
    long max_sessions;      /* sessions whose owner is the tenant */
    long max_state_bytes;   /* committed state bytes of those sessions (+ turns' reservations) */
} dmn_quota_limits_t;

/* The retry-after hint of count quotas: a turn ends (turns, queued), a session is deleted or
 * expires (sessions, state bytes). The token bucket's is its refill time. */
#define DMN_QUOTA_RETRY_TURN_MS 1000
#define DMN_QUOTA_RETRY_STORED_MS 60000
/* Idle tenants (no turn held) kept for their token bucket before the least recently used
 * is forgotten (its bucket then starts full again). */
#define DMN_QUOTA_MAX_IDLE 4096

typedef struct dmn_quota dmn_quota_t;
typedef struct dmn_quota_tenant dmn_quota_tenant_t;

/* A turn's hold on its tenant's counters, from dmn_quota_turn_admit to dmn_quota_turn_end.
 * Embedded in the turn; zero it before admission. */
typedef struct dmn_quota_hold {
    dmn_quota_tenant_t *t; /* NULL: holds nothing */
    uint64_t bytes;        /* state bytes reserved until the turn ends */
    bool queued;           /* counted in the tenant's queued turns */
} dmn_quota_hold_t;

/* What a refusal says: the quota's option name, the limit, and when to retry. */
typedef struct dmn_quota_refusal {
    const char *quota; /* "--tenant-max-turns", ... */
    long limit;
    int64_t retry_after_ms; /* >= 1 */
} dmn_quota_refusal_t;

/* max_idle: idle tenants kept (0: DMN_QUOTA_MAX_IDLE). RCD_ENOMEM. *out owned by the caller. */
int dmn_quota_create(const dmn_quota_limits_t *lim, size_t max_idle, dmn_quota_t **out);
void dmn_quota_destroy(dmn_quota_t *q); /* NULL-safe; every hold must have ended */
const dmn_quota_limits_t *dmn_quota_limits(const dmn_quota_t *q);
/* Whether any limit is set (else callers may skip the session and byte counts). */
bool dmn_quota_enabled(const dmn_quota_t *q);

/* Admits a turn of `tenant` ("" anonymous) whose prompt is prompt_tokens long and whose
 * commit may grow the tenant's stored state by grow_bytes, given the bytes the tenant's
 * sessions hold now (stored_bytes). Checks, in this order: turns, queued, the bucket (it must
 * hold min(prompt_tokens, tokens_per_minute) tokens), state bytes (stored + reserved by other
 * turns + grow_bytes). On success counts the turn (turns and queued), takes the prompt's
 * tokens out of the bucket (it may go below zero: the debt is paid back by refill before the
 * next admission), reserves grow_bytes, fills *h and returns 0. Else RCD_ETOOBIG with *why
 * filled (nothing counted), or RCD_ENOMEM. */
int dmn_quota_turn_admit(dmn_quota_t *q, const char *tenant, int64_t now_ms, int64_t prompt_tokens,
                         uint64_t stored_bytes, uint64_t grow_bytes, dmn_quota_hold_t *h,
                         dmn_quota_refusal_t *why);
/* The turn got its first slot: no longer queued. */
void dmn_quota_turn_started(dmn_quota_t *q, dmn_quota_hold_t *h);
/* n more tokens generated: taken out of the bucket. */
void dmn_quota_turn_tokens(dmn_quota_t *q, dmn_quota_hold_t *h, int64_t now_ms, int64_t n);
/* The turn ended (finished, failed, cancelled): its counts and reservation go back.
 * Idempotent; a zeroed hold is a no-op. */
void dmn_quota_turn_end(dmn_quota_t *q, dmn_quota_hold_t *h, int64_t now_ms);

/* A new session of `tenant` (create or fork) holding add_bytes of state, given the tenant's
 * sessions and their bytes now (the store counts them): sessions + 1 must stay within
 * max_sessions, stored + reserved by running turns + add_bytes within max_state_bytes.
 * 0, or RCD_ETOOBIG with *why. Counts nothing (the store holds the session). */
int dmn_quota_session_check(dmn_quota_t *q, const char *tenant, uint64_t sessions,
                            uint64_t stored_bytes, uint64_t add_bytes, dmn_quota_refusal_t *why);

/* For tests and logs. */
size_t dmn_quota_tracked(const dmn_quota_t *q); /* tenants in the table */
/* The tenant's bucket at now_ms in whole tokens (rounded down; may be negative), and its
 * counts; false when the tenant is not tracked. */
bool dmn_quota_peek(dmn_quota_t *q, const char *tenant, int64_t now_ms, int64_t *tokens,
                    long *turns, long *queued);

#endif
