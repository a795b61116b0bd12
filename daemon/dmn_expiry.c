/* daemon: expiry of idle sessions — a timer on the loop that runs store_expire at the earliest
 * time a session may expire (at least 1 s apart, at most 60 s), skipping sessions a turn holds.
 * The store removes an expired session like DeleteSession: the index at once, files after. */
#include "daemon/dmn.h"

#include <stdlib.h>

#define SWEEP_MIN_MS 1000
#define SWEEP_MAX_MS 60000

static void on_sweep(uv_timer_t *t);

static void arm(dmn_server_t *s, int64_t now, int64_t next)
{
    int64_t delay = next == INT64_MAX ? SWEEP_MAX_MS : next - now;
    if (s->sweep_fixed_ms)
        delay = (int64_t)s->sweep_fixed_ms;
    else if (delay < SWEEP_MIN_MS)
        delay = SWEEP_MIN_MS;
    else if (delay > SWEEP_MAX_MS)
        delay = SWEEP_MAX_MS; /* also bounds the effect of a wall-clock jump */
    s->sweep_due_ms = now + delay;
    uv_timer_start(&s->sweep_timer, on_sweep, (uint64_t)delay, 0);
}

/* A turn holds the session from its arrival (including the load of its state) to its end. */
static bool sweep_busy(void *user, const char *id)
{
    return dmn_session_busy(user, id);
}

static void sweep_expired(void *user, const store_session_t *rec, int64_t idle_ms)
{
    (void)user;
    dmn_log(DMN_INFO, "session_expired", NULL, rec->id,
            "idle %lld ms, ttl %u s: deleted with its checkpoints (version %llu, owner '%s')",
            (long long)idle_ms, rec->eff_ttl_s, (unsigned long long)rec->version, rec->owner);
    dmn_audit("audit_session_expire", NULL, NULL, rec->id, NULL, "idle %lld ms, ttl %u s",
              (long long)idle_ms, rec->eff_ttl_s);
}

static void on_sweep(uv_timer_t *t)
{
    dmn_server_t *s = t->data;
    int64_t now = dmn_now_ms(), next = INT64_MAX;
    store_expire(s->store, now, sweep_busy, sweep_expired, s, &next);
    arm(s, now, next);
}

void dmn_expiry_start(dmn_server_t *s)
{
    /* Undocumented, for tests: sweep every N ms whatever the TTLs. */
    const char *e = getenv("RECURD_SESSION_SWEEP_MS");
    long ms = e ? strtol(e, NULL, 10) : 0;
    s->sweep_fixed_ms = ms > 0 ? (uint64_t)ms : 0;
    uv_timer_init(s->loop, &s->sweep_timer);
    s->sweep_timer.data = s;
    int64_t now = dmn_now_ms();
    arm(s, now, now); /* sessions that expired while the daemon was down go soon */
}

void dmn_expiry_close(dmn_server_t *s)
{
    uv_close((uv_handle_t *)&s->sweep_timer, NULL);
}

void dmn_expiry_hint(dmn_server_t *s, int64_t expires_ms)
{
    if (!expires_ms || s->sweep_fixed_ms || uv_is_closing((uv_handle_t *)&s->sweep_timer)) return;
    if (expires_ms < s->sweep_due_ms) arm(s, dmn_now_ms(), expires_ms);
}
