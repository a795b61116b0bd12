/* Unit tests of the per-tenant quotas with an injected clock: each quota refuses at its limit
 * (naming it, with a retry-after) and recovers, tenants are independent, the token bucket
 * refills on time, and the table of idle tenants stays bounded. */
#include "daemon/dmn_quota.h"
#include "tests/support/rcd_test.h"

#include <stdio.h>
#include <string.h>

#include "common/rcd_error.h"

static dmn_quota_t *mk(dmn_quota_limits_t l, size_t max_idle)
{
    dmn_quota_t *q = NULL;
    CHECK(dmn_quota_create(&l, max_idle, &q) == 0);
    return q;
}

static void test_unlimited(void)
{
    dmn_quota_t *q = mk((dmn_quota_limits_t){0}, 0);
    CHECK(!dmn_quota_enabled(q));
    dmn_quota_hold_t h[100];
    dmn_quota_refusal_t why;
    for (int i = 0; i < 100; i++)
        CHECK(dmn_quota_turn_admit(q, "a", 0, 1000000, 1ull << 40, 1ull << 40, &h[i], &why) == 0);
    CHECK(dmn_quota_session_check(q, "a", 1u << 30, 1ull << 50, 1ull << 50, &why) == 0);
    for (int i = 0; i < 100; i++)
        dmn_quota_turn_end(q, &h[i], 0);
    dmn_quota_destroy(q);
}

static void test_max_turns(void)
{
    dmn_quota_t *q = mk((dmn_quota_limits_t){.max_turns = 2}, 0);
    CHECK(dmn_quota_enabled(q));
    dmn_quota_hold_t a1, a2, a3, b1;
    dmn_quota_refusal_t why;
    CHECK(dmn_quota_turn_admit(q, "alice", 0, 5, 0, 0, &a1, &why) == 0);
    CHECK(dmn_quota_turn_admit(q, "alice", 0, 5, 0, 0, &a2, &why) == 0);
    /* started turns still count: concurrent = admitted and not finished */
    dmn_quota_turn_started(q, &a1);
    dmn_quota_turn_started(q, &a2);
    CHECK(dmn_quota_turn_admit(q, "alice", 0, 5, 0, 0, &a3, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-max-turns") && why.limit == 2);
    CHECK(why.retry_after_ms == DMN_QUOTA_RETRY_TURN_MS);
    CHECK(a3.t == NULL);
    /* another tenant is not affected */
    CHECK(dmn_quota_turn_admit(q, "bob", 0, 5, 0, 0, &b1, &why) == 0);
    long turns = -1;
    CHECK(dmn_quota_peek(q, "alice", 0, NULL, &turns, NULL) && turns == 2);
    dmn_quota_turn_end(q, &a1, 10);
    dmn_quota_turn_end(q, &a1, 10); /* idempotent */
    CHECK(dmn_quota_peek(q, "alice", 0, NULL, &turns, NULL) && turns == 1);
    CHECK(dmn_quota_turn_admit(q, "alice", 10, 5, 0, 0, &a3, &why) == 0);
    dmn_quota_turn_end(q, &a2, 20);
    dmn_quota_turn_end(q, &a3, 20);
    dmn_quota_turn_end(q, &b1, 20);
    dmn_quota_destroy(q);
}

static void test_max_queued(void)
{
    dmn_quota_t *q = mk((dmn_quota_limits_t){.max_queued = 1, .max_turns = 3}, 0);
    dmn_quota_hold_t h1, h2, h3, h4;
    dmn_quota_refusal_t why;
    long queued = -1;
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h1, &why) == 0);
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h2, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-max-queued") && why.limit == 1);
    dmn_quota_turn_started(q, &h1); /* got a slot: a second may queue */
    dmn_quota_turn_started(q, &h1);
    CHECK(dmn_quota_peek(q, "t", 0, NULL, NULL, &queued) && queued == 0);
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h2, &why) == 0);
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h3, &why) == RCD_ETOOBIG);
    /* a queued turn that ends (cancelled before its slot) frees its place */
    dmn_quota_turn_end(q, &h2, 0);
    CHECK(dmn_quota_peek(q, "t", 0, NULL, NULL, &queued) && queued == 0);
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h3, &why) == 0);
    dmn_quota_turn_started(q, &h3);
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h4, &why) == 0);
    /* now 3 turns: the turn quota comes first */
    dmn_quota_hold_t h5;
    CHECK(dmn_quota_turn_admit(q, "t", 0, 1, 0, 0, &h5, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-max-turns"));
    dmn_quota_turn_end(q, &h1, 0);
    dmn_quota_turn_end(q, &h3, 0);
    dmn_quota_turn_end(q, &h4, 0);
    dmn_quota_destroy(q);
}

/* 600 tokens per minute = 10 per second = one per 100 ms; burst 600. */
static void test_token_bucket(void)
{
    dmn_quota_t *q = mk((dmn_quota_limits_t){.tokens_per_minute = 600}, 0);
    dmn_quota_hold_t h;
    dmn_quota_refusal_t why;
    int64_t tok;
    int64_t t0 = 1000000;
    /* a new tenant starts with a full minute's worth */
    CHECK(dmn_quota_turn_admit(q, "a", t0, 100, 0, 0, &h, &why) == 0);
    CHECK(dmn_quota_peek(q, "a", t0, &tok, NULL, NULL) && tok == 500);
    /* generated tokens are charged as they come */
    dmn_quota_turn_tokens(q, &h, t0, 450);
    CHECK(dmn_quota_peek(q, "a", t0, &tok, NULL, NULL) && tok == 50);
    dmn_quota_turn_end(q, &h, t0);
    /* 100 tokens needed, 50 there: 50 tokens = 5000 ms */
    CHECK(dmn_quota_turn_admit(q, "a", t0, 100, 0, 0, &h, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-tokens-per-minute") && why.limit == 600);
    CHECK_MSG(why.retry_after_ms == 5000, "retry %lld", (long long)why.retry_after_ms);
    /* a refusal charges nothing; 1 ms early is still refused, on time is admitted */
    CHECK(dmn_quota_turn_admit(q, "a", t0 + 4999, 100, 0, 0, &h, &why) == RCD_ETOOBIG);
    CHECK(why.retry_after_ms == 1);
    CHECK(dmn_quota_turn_admit(q, "a", t0 + 5000, 100, 0, 0, &h, &why) == 0);
    CHECK(dmn_quota_peek(q, "a", t0 + 5000, &tok, NULL, NULL) && tok == 0);
    /* a running turn may overdraw: the debt is paid back before the next admission */
    dmn_quota_turn_tokens(q, &h, t0 + 5000, 300);
    dmn_quota_turn_end(q, &h, t0 + 5000);
    CHECK(dmn_quota_peek(q, "a", t0 + 5000, &tok, NULL, NULL) && tok == -300);
    CHECK(dmn_quota_turn_admit(q, "a", t0 + 5000, 1, 0, 0, &h, &why) == RCD_ETOOBIG);
    CHECK(why.retry_after_ms == 30100); /* 301 tokens */
    /* the bucket never holds more than a minute's worth */
    CHECK(dmn_quota_peek(q, "a", t0 + 10 * 60000, &tok, NULL, NULL) && tok == 600);
    /* a prompt longer than the burst needs a full bucket, not more */
    CHECK(dmn_quota_turn_admit(q, "a", t0 + 10 * 60000, 5000, 0, 0, &h, &why) == 0);
    CHECK(dmn_quota_peek(q, "a", t0 + 10 * 60000, &tok, NULL, NULL) && tok == -4400);
    dmn_quota_hold_t hb;
    CHECK(dmn_quota_turn_admit(q, "b", t0, 600, 0, 0, &hb, &why) == 0); /* b: its own bucket */
    dmn_quota_turn_end(q, &hb, t0);
    dmn_quota_turn_end(q, &h, t0 + 10 * 60000);
    /* a clock that stands still or steps back refills nothing */
    CHECK(dmn_quota_peek(q, "a", t0, &tok, NULL, NULL) && tok == -4400);
    dmn_quota_destroy(q);

    /* the largest rate, refilled over a long idle time, does not overflow */
    q = mk((dmn_quota_limits_t){.tokens_per_minute = 1000000000}, 0);
    CHECK(dmn_quota_turn_admit(q, "a", 0, 1000000000, 0, 0, &h, &why) == 0);
    dmn_quota_turn_tokens(q, &h, 0, 2000000000);
    dmn_quota_turn_end(q, &h, 0);
    CHECK(dmn_quota_peek(q, "a", 1, &tok, NULL, NULL) && tok == -2000000000 + 16666);
    CHECK(dmn_quota_peek(q, "a", INT64_MAX / 2, &tok, NULL, NULL) && tok == 1000000000);
    dmn_quota_destroy(q);
}

static void test_state_bytes_and_sessions(void)
{
    dmn_quota_t *q = mk((dmn_quota_limits_t){.max_sessions = 2, .max_state_bytes = 1000}, 0);
    dmn_quota_refusal_t why;
    dmn_quota_hold_t h1, h2;
    CHECK(dmn_quota_session_check(q, "a", 0, 0, 0, &why) == 0);
    CHECK(dmn_quota_session_check(q, "a", 1, 0, 0, &why) == 0);
    CHECK(dmn_quota_session_check(q, "a", 2, 0, 0, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-max-sessions") && why.limit == 2);
    CHECK(why.retry_after_ms == DMN_QUOTA_RETRY_STORED_MS);
    CHECK(dmn_quota_session_check(q, "b", 1, 600, 400, &why) == 0); /* exactly at the limit */
    CHECK(dmn_quota_session_check(q, "b", 1, 600, 401, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-max-state-bytes") && why.limit == 1000);
    /* turns reserve their growth until they end */
    CHECK(dmn_quota_turn_admit(q, "a", 0, 1, 300, 400, &h1, &why) == 0);
    CHECK(dmn_quota_turn_admit(q, "a", 0, 1, 300, 400, &h2, &why) == RCD_ETOOBIG);
    CHECK(!strcmp(why.quota, "--tenant-max-state-bytes"));
    CHECK(dmn_quota_session_check(q, "a", 1, 300, 301, &why) == RCD_ETOOBIG);
    CHECK(dmn_quota_session_check(q, "a", 1, 300, 300, &why) == 0);
    dmn_quota_turn_end(q, &h1, 0); /* committed: the caller's stored count now holds it */
    CHECK(dmn_quota_turn_admit(q, "a", 0, 1, 700, 300, &h2, &why) == 0);
    dmn_quota_turn_end(q, &h2, 0);
    dmn_quota_destroy(q);
}

/* Idle tenants beyond max_idle are forgotten, least recently used first; tenants holding a
 * turn never are. */
static void test_eviction_bound(void)
{
    dmn_quota_t *q = mk((dmn_quota_limits_t){.tokens_per_minute = 60, .max_turns = 1}, 8);
    dmn_quota_refusal_t why;
    dmn_quota_hold_t busy[4], h;
    char name[32];
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof(name), "busy%d", i);
        CHECK(dmn_quota_turn_admit(q, name, 0, 1, 0, 0, &busy[i], &why) == 0);
    }
    for (int i = 0; i < 10000; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        CHECK(dmn_quota_turn_admit(q, name, i, 30, 0, 0, &h, &why) == 0);
        dmn_quota_turn_end(q, &h, i);
        CHECK(dmn_quota_tracked(q) <= 8 + 4);
    }
    CHECK(dmn_quota_tracked(q) == 12);
    for (int i = 0; i < 4; i++) { /* still held: still refused a second turn */
        snprintf(name, sizeof(name), "busy%d", i);
        CHECK(dmn_quota_turn_admit(q, name, 0, 1, 0, 0, &h, &why) == RCD_ETOOBIG);
    }
    int64_t tok;
    CHECK(dmn_quota_peek(q, "t9999", 9999, &tok, NULL, NULL) && tok == 30);
    CHECK(!dmn_quota_peek(q, "t0", 9999, &tok, NULL, NULL)); /* forgotten */
    /* a refused new tenant counts as idle too: the bound holds */
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        CHECK(dmn_quota_turn_admit(q, name, 0, 1000, 0, 0, &h, &why) == 0);
        dmn_quota_turn_end(q, &h, 0);
        CHECK(dmn_quota_turn_admit(q, name, 0, 1000, 0, 0, &h, &why) == RCD_ETOOBIG);
        CHECK(dmn_quota_tracked(q) <= 12);
    }
    for (int i = 0; i < 4; i++)
        dmn_quota_turn_end(q, &busy[i], 0);
    CHECK(dmn_quota_tracked(q) == 8);
    dmn_quota_destroy(q);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_unlimited);
    RUN(test_max_turns);
    RUN(test_max_queued);
    RUN(test_token_bucket);
    RUN(test_state_bytes_and_sessions);
    RUN(test_eviction_bound);
    return rcd_test_summary();
}
