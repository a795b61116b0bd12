/* daemon: the HTTP listener's own routes — /health, /metrics and the tests' streaming route
 * (the listener is dmn_http.c). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "common/rcd_error.h"
#include "daemon/dmn.h"
#include "daemon/dmn_http.h"
#include "daemon/dmn_metrics.h"

/* ---- built-in routes -------------------------------------------------------------------- */

static void on_health(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    if (r->srv->draining) {
        const char b[] = "{\"status\":\"NOT_SERVING\"}\n";
        dmn_http_reply(r, 503, "application/json", b, sizeof(b) - 1);
    } else {
        const char b[] = "{\"status\":\"SERVING\"}\n";
        dmn_http_reply(r, 200, "application/json", b, sizeof(b) - 1);
    }
}

static void on_metrics(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    size_t alen = 0;
    const char *accept = dmn_http_header(r, "accept", &alen);
    bool om = false;
    for (size_t i = 0; accept && i + 28 <= alen; i++)
        if (!strncasecmp(accept + i, "application/openmetrics-text", 28)) om = true;
    char *out = NULL;
    size_t len = 0;
    int rc = dmn_metrics_render(r->srv, om, &out, &len);
    if (rc) {
        dmn_http_fail(r, rc, "cannot render the metrics");
        return;
    }
    dmn_http_reply(r, 200,
                   om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                      : "text/plain; version=0.0.4; charset=utf-8",
                   out, len);
    free(out);
}

/* ---- the tests' streaming route ----------------------------------------------------------
 * GET /_test/stream?n=CHUNKS&size=BYTES&ms=INTERVAL, served only when the environment has
 * RECURD_HTTP_TEST_ROUTES=1 (the integration tests): Server-Sent Events of `size`-byte data
 * lines, one every `ms` ms (0: as fast as the queue takes them), honouring the pause. */

typedef struct test_stream {
    uv_timer_t timer;
    dmn_http_req_t *r;
    long left, size, ms;
} test_stream_t;

static void test_timer_closed(uv_handle_t *uh)
{
    free(uh->data);
}

static void test_finish(test_stream_t *t)
{
    uv_timer_stop(&t->timer);
    dmn_http_req_t *r = t->r;
    r->ext = NULL;
    t->timer.data = t;
    uv_close((uv_handle_t *)&t->timer, test_timer_closed);
    dmn_http_stream_end(r);
}

static void test_tick(uv_timer_t *tm)
{
    test_stream_t *t = (test_stream_t *)tm;
    for (;;) {
        if (t->left <= 0) {
            dmn_http_stream_write(t->r, "data: [DONE]\n\n", 14);
            test_finish(t);
            return;
        }
        char *line = malloc((size_t)t->size + 8);
        if (!line) {
            test_finish(t);
            return;
        }
        memcpy(line, "data: ", 6);
        memset(line + 6, 'x', (size_t)t->size);
        memcpy(line + 6 + t->size, "\n\n", 2);
        int rc = dmn_http_stream_write(t->r, line, (size_t)t->size + 8);
        free(line);
        t->left--;
        if (rc < 0) {
            test_finish(t);
            return;
        }
        if (rc == 1) { /* paused: on_drain restarts */
            uv_timer_stop(&t->timer);
            return;
        }
        if (t->ms > 0) return;
    }
}

static void test_on_drain(dmn_http_req_t *r)
{
    test_stream_t *t = r->ext;
    uv_timer_start(&t->timer, test_tick, (uint64_t)t->ms, (uint64_t)(t->ms ? t->ms : 1));
}

static void test_on_close(dmn_http_req_t *r)
{
    if (r->ext) test_finish(r->ext);
}

static long query_long(const char *q, const char *name, long def, long lo, long hi)
{
    size_t n = strlen(name);
    for (const char *p = q; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (!strncmp(p, name, n) && p[n] == '=') {
            long v = strtol(p + n + 1, NULL, 10);
            return v < lo ? lo : v > hi ? hi : v;
        }
    }
    return def;
}

static void on_test_stream(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    test_stream_t *t = calloc(1, sizeof(*t));
    if (!t) {
        dmn_http_fail(r, RCD_ENOMEM, "out of memory");
        return;
    }
    t->r = r;
    t->left = query_long(r->query, "n", 10, 0, 1L << 30);
    t->size = query_long(r->query, "size", 16, 1, 1 << 20);
    t->ms = query_long(r->query, "ms", 0, 0, 60000);
    uv_timer_init(r->srv->loop, &t->timer);
    r->ext = t;
    r->on_close = test_on_close;
    r->on_drain = test_on_drain;
    dmn_http_stream_start(r, 200, "text/event-stream");
    uv_timer_start(&t->timer, test_tick, (uint64_t)t->ms, (uint64_t)(t->ms ? t->ms : 1));
}

int dmn_http__builtin_routes(dmn_server_t *s)
{
    if (dmn_http_route(s, "GET", "/health", DMN_HTTP_OPEN, on_health, NULL)) return RCD_ENOMEM;
    if (dmn_http_route(s, "GET", "/metrics", s->opts->metrics_require_key ? 0 : DMN_HTTP_OPEN,
                       on_metrics, NULL))
        return RCD_ENOMEM;
    const char *tr = getenv("RECURD_HTTP_TEST_ROUTES");
    if (tr && !strcmp(tr, "1") &&
        dmn_http_route(s, "GET", "/_test/stream", 0, on_test_stream, NULL))
        return RCD_ENOMEM;
    return 0;
}
