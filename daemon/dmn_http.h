/* daemon: the HTTP listener — H2O (libh2o, its libuv build) on the daemon's loop, on its own
 * port (--http-port): HTTP/1.1 with keep-alive, HTTP/2 over TLS (ALPN) and h2c; the limits
 * (body, headers, connections, timeouts, bytes queued for a slow reader); TLS and API keys
 * like gRPC's; a route table that other files fill (the OpenAI API), and the built-in routes
 * GET /metrics and GET /health.
 *
 * Threads: everything here runs on the loop thread, callbacks included.
 *
 * A request's life: the listener reads the whole request (headers and a body of at most
 * --http-max-body-bytes), checks the API key (unless the route is open), then calls the
 * route's handler with a dmn_http_req_t. The handler OWNS the request until it ends it,
 * exactly once, with dmn_http_reply / dmn_http_error / dmn_http_fail (a whole response) or,
 * after dmn_http_stream_start, with dmn_http_stream_end. It may end it at once or later, from
 * any loop callback (e.g. when a turn finishes). After the end call the pointer is invalid.
 *
 * The client may go away at any time: then r->on_close (if the handler set it) is called once,
 * writes are dropped, and the handler must still end the request (the end call then only
 * frees it). */
#ifndef DMN_HTTP_H
#define DMN_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/dmn_auth.h"
#include "statestore/store.h"

struct dmn_server;
typedef struct dmn_http_req dmn_http_req_t;
typedef struct dmn_http__req dmn_http__req_t; /* the listener's private part */

/* One request, read-only for the handler except for ext, on_close and on_drain. The strings
 * are NUL-terminated copies that live as long as the request. */
struct dmn_http_req {
    struct dmn_server *srv;
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* the path, without the query, as the client sent it ("/v1/models") */
    const char *query;  /* after '?', without it; "" when none */
    const char *body;   /* the request body (may hold any bytes, NOT NUL-terminated) */
    size_t body_len;    /* at most --http-max-body-bytes (longer bodies got 413) */
    char rid[40];       /* request id: the client's x-request-id (first 39 bytes) or generated */
    /* API keys (dmn_tenant.c), as gRPC calls' c->tenant / c->auth_tenant: the tenant whose
     * sessions the request names (the key's, or an admin's x-recurd-tenant) and the key's
     * own; both "" when the daemon runs without keys (or the route is open). */
    char tenant[STORE_TENANT_MAX + 1];
    char auth_tenant[STORE_TENANT_MAX + 1];
    void *ext; /* handler state: the listener never touches it */
    /* Called once if the client goes away (connection closed or cut by a limit) before the
     * request was ended. Writes are dropped from then on; the handler still ends the request
     * (it may do so inside this callback). */
    void (*on_close)(dmn_http_req_t *r);
    /* Streaming: called when a dmn_http_stream_write that returned 1 (pause) has had its
     * queue written down to half of --http-max-queued-bytes: the writer may go on. */
    void (*on_drain)(dmn_http_req_t *r);
    dmn_http__req_t *priv;
};

/* A route's handler: called on the loop thread; owns r (see above). */
typedef void (*dmn_http_handler_cb)(dmn_http_req_t *r, void *arg);

enum {
    DMN_HTTP_PREFIX = 1, /* the route matches every path that starts with `path` */
    DMN_HTTP_OPEN = 2,   /* no API key needed (health probes, and /metrics by default) */
};

/* Adds a route: requests whose path is `path` (or, with DMN_HTTP_PREFIX, starts with it) and
 * whose method is `method` ("GET", "POST", "DELETE", ...) go to cb(r, arg). Exact routes win
 * over prefix routes, then the longest prefix wins. A path that matches a route only under
 * other methods answers 405 (with Allow); no match answers 404. The strings are not copied:
 * pass literals. Call before dmn_http_start (the route table is fixed once serving); returns
 * 0 or RCD_ENOMEM. */
int dmn_http_route(struct dmn_server *s, const char *method, const char *path, int flags,
                   dmn_http_handler_cb cb, void *arg);
/* dmn_http_routes.c: adds /health, /metrics and (RECURD_HTTP_TEST_ROUTES=1) /_test/stream;
 * 0 or RCD_ENOMEM. Called by dmn_http_start. */
int dmn_http__builtin_routes(struct dmn_server *s);

/* The value of request header `name` (case-insensitive; the first if sent more than once), or
 * NULL; *len (if not NULL) gets its length. Valid while r is. */
const char *dmn_http_header(const dmn_http_req_t *r, const char *name, size_t *len);

/* Adds a response header (before dmn_http_reply / dmn_http_stream_start); name and value are
 * copied. Content-Length, Transfer-Encoding and Connection are the listener's. */
void dmn_http_add_header(dmn_http_req_t *r, const char *name, const char *value);

/* Ends r with a whole response: status, content type (e.g. "application/json"), body (copied;
 * may be NULL when len is 0). */
void dmn_http_reply(dmn_http_req_t *r, int status, const char *content_type, const void *body,
                    size_t len);

/* Ends r with an error in OpenAI's shape, `{"error":{"message":..,"type":..,"param":null,
 * "code":..}}`: `type` such as "invalid_request_error" (NULL: dmn_http_error_type(status)),
 * `code` a string or NULL (JSON null). */
void dmn_http_error(dmn_http_req_t *r, int status, const char *type, const char *code,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Ends r with the error for an RCD_E* code (common/rcd_error.h): the HTTP status of
 * rcd_http_status(rc), the type of dmn_http_error_type, code = the gRPC status's name in
 * lower case ("invalid_argument"); a quota's hint goes out as Retry-After when
 * dmn_http_retry_after was called. */
void dmn_http_fail(dmn_http_req_t *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The next error of r carries `Retry-After: ceil(ms/1000)` (a quota's hint). */
void dmn_http_retry_after(dmn_http_req_t *r, int64_t ms);

/* OpenAI's error type for an HTTP status: 400/404/405/409/413/422 "invalid_request_error",
 * 401 "authentication_error", 403 "permission_error", 429 "rate_limit_error"
 * (insufficient_quota), 503 "service_unavailable", other 5xx "server_error". */
const char *dmn_http_error_type(int status);

/* Streaming: sends the status and headers (e.g. "text/event-stream" for Server-Sent Events;
 * the body goes out chunked on HTTP/1.1). Then any number of dmn_http_stream_write, then
 * dmn_http_stream_end. */
void dmn_http_stream_start(dmn_http_req_t *r, int status, const char *content_type);

/* Streaming: queues p[0..n) (copied) for the client. Returns
 *   0   queued, go on;
 *   1   queued, but the bytes not yet taken by the client exceed --http-max-queued-bytes:
 *       PAUSE — write nothing more until r->on_drain is called (a writer that ignores it gets
 *       RCD_ETOOBIG once the queue reaches twice the bound);
 *   RCD_ECANCELLED  the client is gone (on_close was or is about to be called), nothing queued;
 *   RCD_ETOOBIG     the queue is at twice the bound: nothing queued.
 * A client that takes no byte of a pending write for --http-write-timeout-ms is cut (its
 * connection closed; on_close follows). */
int dmn_http_stream_write(dmn_http_req_t *r, const void *p, size_t n);

/* Streaming: ends r; the queued bytes are still sent, then the response ends. */
void dmn_http_stream_end(dmn_http_req_t *r);

/* ---- the listener itself (main.c, dmn_server.c, dmn_reload.c) ---------------------------- */

/* Starts the listener on --http-port (-1: none) with the built-in routes; logs event
 * "http_listening" with the bound port and writes --http-port-file. 0 or an error with the
 * message in err. */
int dmn_http_start(struct dmn_server *s, char *err, size_t errlen);
/* Requests in flight (handler working or response still being written): the drain waits for
 * them as for gRPC turns, until --drain-grace-ms. */
int dmn_http_active(const struct dmn_server *s);
/* The bound port (0 when not listening). */
int dmn_http_port(const struct dmn_server *s);
/* Drain began: stop accepting, close idle keep-alive connections, /health answers 503 and new
 * requests on open connections 503; in-flight responses go on. */
void dmn_http_drain(struct dmn_server *s);
/* The drain is over (grace ended or nothing in flight): close every connection; the loop can
 * then end once they are closed. */
void dmn_http_stop(struct dmn_server *s);
/* SIGHUP: re-reads the TLS files for new HTTPS connections. 0, or -1 (logged) keeping the old. */
int dmn_http_reload_tls(struct dmn_server *s, char *what, size_t whatlen, char *err, size_t errlen);
/* Frees what is left after the loop ended (main's cleanup). NULL-safe. */
void dmn_http_free(struct dmn_server *s);

#endif
