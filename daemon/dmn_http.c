/* daemon: the HTTP listener (dmn_http.h) — H2O on the daemon's libuv loop: accepting under
 * --http-max-connections, TLS from the gRPC files, the route table, the API-key check, whole
 * and streamed responses with a bounded queue per slow reader, the built-in routes
 * (/health, /metrics) and the drain. */
#include "daemon/dmn_http.h"

#include <h2o.h>
#include <h2o/http2.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/rcd_error.h"
#include "daemon/dmn.h"
#include "daemon/dmn_meta.h"
#include "daemon/dmn_tls.h"

typedef struct route {
    const char *method, *path;
    size_t path_len;
    int flags;
    dmn_http_handler_cb cb;
    void *arg;
} route_t;

/* One accepted connection: the libuv handle H2O's socket wraps (freed in its close callback). */
typedef struct conn_rec {
    uv_tcp_t tcp;
    h2o_socket_t *sock;
    struct dmn_http *h;
    int stuck;            /* ticks seen waiting for a write libuv does not have (reap_stuck) */
    size_t stuck_written; /* the socket's bytes_written when first seen so */
    struct conn_rec *prev, *next;
} conn_rec_t;

typedef struct buf {
    char *p;
    size_t len, cap;
} buf_t;

/* The private part of a request (allocated with it). */
struct dmn_http__req {
    dmn_http_req_t *pub;
    struct dmn_http *h;
    h2o_req_t *h2o;      /* NULL once H2O disposed the request (client gone or done) */
    h2o_generator_t gen; /* streaming */
    bool done;           /* the handler ended it */
    bool gone;           /* the client went away before the end */
    bool in_dispose;     /* inside the pool's dispose callback: it frees */
    bool streaming, ended, sending, paused;
    int64_t retry_after_ms;
    uint64_t send_since_ms; /* when the write in flight started (streaming) */
    buf_t inflight, pending;
    dmn_http__req_t *sprev, *snext; /* h->streams: streaming requests, for the stall check */
};

typedef struct dmn_http {
    dmn_server_t *srv;
    route_t *routes;
    size_t n_routes, cap_routes;
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_hostconf_t *host;
    bool config_up, ctx_up, listening, draining, stopping;
    uv_tcp_t listener;
    uv_timer_t tick; /* the stalled-writer check */
    bool tick_up;
    int port;
    SSL_CTX *ssl;
    conn_rec_t *conns;
    long n_conns;
    uint64_t refused; /* connections closed at once: over --http-max-connections */
    dmn_http__req_t *streams;
    int n_active; /* requests allocated (handler working, or response still being written) */
} dmn_http_t;

typedef struct {
    dmn_http_req_t pub;
    dmn_http__req_t priv;
} req_alloc_t;

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static dmn_http_t *http_get(dmn_server_t *s)
{
    if (!s->http) s->http = calloc(1, sizeof(dmn_http_t));
    if (s->http) s->http->srv = s;
    return s->http;
}

int dmn_http_route(dmn_server_t *s, const char *method, const char *path, int flags,
                   dmn_http_handler_cb cb, void *arg)
{
    dmn_http_t *h = http_get(s);
    if (!h) return RCD_ENOMEM;
    if (h->n_routes == h->cap_routes) {
        size_t cap = h->cap_routes ? h->cap_routes * 2 : 16;
        void *p = realloc(h->routes, cap * sizeof(*h->routes));
        if (!p) return RCD_ENOMEM;
        h->routes = p;
        h->cap_routes = cap;
    }
    h->routes[h->n_routes++] = (route_t){method, path, strlen(path), flags, cb, arg};
    return 0;
}

/* ---- errors ----------------------------------------------------------------------------- */

const char *dmn_http_error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* gRPC status names, lower case: the `code` of an error made from an RCD_E* code. */
static const char *grpc_code_name(int g)
{
    static const char *const n[] = {
        "ok",
        "cancelled",
        "unknown",
        "invalid_argument",
        "deadline_exceeded",
        "not_found",
        "already_exists",
        "permission_denied",
        "resource_exhausted",
        "failed_precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal",
        "unavailable",
        "data_loss",
        "unauthenticated",
    };
    return g >= 0 && g < (int)(sizeof(n) / sizeof(n[0])) ? n[g] : "unknown";
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 400 ? "OK" : status < 500 ? "Bad Request" : "Internal Server Error";
    }
}

/* ---- request lifetime ------------------------------------------------------------------- */

static void buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void stream_unlink(dmn_http__req_t *p)
{
    if (!p->streaming) return;
    if (p->sprev)
        p->sprev->snext = p->snext;
    else if (p->h->streams == p)
        p->h->streams = p->snext;
    if (p->snext) p->snext->sprev = p->sprev;
    p->sprev = p->snext = NULL;
    p->streaming = false;
}

static void req_free(dmn_http__req_t *p)
{
    dmn_http_t *h = p->h;
    stream_unlink(p);
    buf_free(&p->inflight);
    buf_free(&p->pending);
    free(p->pub); /* the req_alloc_t: pub is its first member */
    h->n_active--;
    if (h->srv->draining && !h->n_active) dmn_server_turn_done(h->srv); /* drain may end */
}

int dmn_http_active(const dmn_server_t *s)
{
    return s->http ? s->http->n_active : 0;
}

/* The handler ended the request: free it unless H2O still has it (its dispose frees). */
static void req_done(dmn_http__req_t *p)
{
    p->done = true;
    if (!p->h2o && !p->in_dispose) req_free(p);
}

/* H2O cleared the request's pool: the request is over for H2O (response written, client gone,
 * or connection closed). */
static void on_pool_dispose(void *slot)
{
    dmn_http__req_t *p = *(dmn_http__req_t **)slot;
    p->h2o = NULL;
    p->sending = false;
    if (!p->done) {
        p->gone = true;
        p->in_dispose = true;
        if (p->pub->on_close) p->pub->on_close(p->pub);
        p->in_dispose = false;
    }
    if (p->done) req_free(p);
}

static bool usable(dmn_http_req_t *r)
{
    if (r->priv->done) { /* a handler bug: ended twice */
        dmn_log(DMN_ERROR, "http_bug", r->rid, NULL, "request ended twice");
        return false;
    }
    return true;
}

const char *dmn_http_header(const dmn_http_req_t *r, const char *name, size_t *len)
{
    h2o_req_t *req = r->priv->h2o;
    if (!req) return NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *hd = &req->headers.entries[i];
        if (hd->name->len == n && !strncasecmp(hd->name->base, name, n)) {
            if (len) *len = hd->value.len;
            return hd->value.base;
        }
    }
    return NULL;
}

void dmn_http_add_header(dmn_http_req_t *r, const char *name, const char *value)
{
    h2o_req_t *req = r->priv->h2o;
    if (!req || r->priv->done) return;
    size_t n = strlen(name);
    char *lname = h2o_mem_alloc_pool(&req->pool, n);
    for (size_t i = 0; i < n; i++)
        lname[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
    h2o_iovec_t v = h2o_strdup(&req->pool, value, strlen(value));
    h2o_add_header_by_str(&req->pool, &req->res.headers, lname, n, 1, NULL, v.base, v.len);
}

static void set_head(h2o_req_t *req, int status, const char *content_type)
{
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    if (content_type)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                       strlen(content_type));
}

void dmn_http_reply(dmn_http_req_t *r, int status, const char *content_type, const void *body,
                    size_t len)
{
    if (!usable(r)) return;
    dmn_http__req_t *p = r->priv;
    h2o_req_t *req = p->h2o;
    if (!req || p->streaming) { /* gone, or a misuse after stream_start */
        req_done(p);
        return;
    }
    set_head(req, status, content_type);
    req->res.content_length = len;
    p->done = true; /* H2O may dispose the request (and so free r) from here on */
    h2o_send_inline(req, len ? body : "", len);
}

void dmn_http_retry_after(dmn_http_req_t *r, int64_t ms)
{
    r->priv->retry_after_ms = ms;
}

static void verror(dmn_http_req_t *r, int status, const char *type, const char *code,
                   const char *fmt, va_list ap)
{
    char msg[1024], out[2600];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t pos = 0;
    int k = snprintf(out, sizeof(out), "{\"error\":{\"message\":\"");
    pos = (size_t)k;
    dmn_json_escape(out, sizeof(out) - 200, &pos, msg);
    k = snprintf(out + pos, sizeof(out) - pos,
                 "\",\"type\":\"%s\",\"param\":null,\"code\":%s%s%s}}\n",
                 type ? type : dmn_http_error_type(status), code ? "\"" : "", code ? code : "null",
                 code ? "\"" : "");
    if (k > 0) pos += (size_t)k;
    if (pos >= sizeof(out)) pos = sizeof(out) - 1;
    if (r->priv->retry_after_ms > 0) {
        char ra[32];
        snprintf(ra, sizeof(ra), "%lld", (long long)((r->priv->retry_after_ms + 999) / 1000));
        dmn_http_add_header(r, "retry-after", ra);
    }
    if (status == 401) dmn_http_add_header(r, "www-authenticate", "Bearer");
    dmn_http_reply(r, status, "application/json", out, pos);
}

void dmn_http_error(dmn_http_req_t *r, int status, const char *type, const char *code,
                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(r, status, type, code, fmt, ap);
    va_end(ap);
}

void dmn_http_fail(dmn_http_req_t *r, int rc, const char *fmt, ...)
{
    int status = rcd_http_status(rc);
    va_list ap;
    va_start(ap, fmt);
    verror(r, status, rc == RCD_ETOOBIG || rc == RCD_ENOSPACE ? "rate_limit_error" : NULL,
           grpc_code_name(rcd_grpc_status(rc)), fmt, ap);
    va_end(ap);
}

/* ---- streaming -------------------------------------------------------------------------- */

static void stream_kick(dmn_http__req_t *p);

static void on_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    (void)req;
    dmn_http__req_t *p = (dmn_http__req_t *)((char *)g - offsetof(dmn_http__req_t, gen));
    p->sending = false;
    p->inflight.len = 0;
    stream_kick(p);
    if (p->ended) return; /* the end is on its way: no writer to wake */
    if (p->paused && !p->gone &&
        p->inflight.len + p->pending.len <= (size_t)p->h->srv->opts->http_max_queued_bytes / 2) {
        p->paused = false;
        if (p->pub->on_drain) p->pub->on_drain(p->pub);
    }
}

static void on_stop(h2o_generator_t *g, h2o_req_t *req)
{
    (void)req;
    dmn_http__req_t *p = (dmn_http__req_t *)((char *)g - offsetof(dmn_http__req_t, gen));
    p->gone = true; /* the pool's dispose follows */
    p->sending = false;
}

/* Sends what is pending (or the end) when no write is in flight. */
static void stream_kick(dmn_http__req_t *p)
{
    if (p->sending || !p->h2o || p->gone) return;
    if (!p->pending.len && !p->ended) return;
    buf_t t = p->inflight;
    p->inflight = p->pending;
    p->pending = t;
    p->pending.len = 0;
    h2o_iovec_t v = h2o_iovec_init(p->inflight.p, p->inflight.len);
    p->sending = !p->ended;
    p->send_since_ms = now_ms();
    h2o_send(p->h2o, &v, v.len ? 1 : 0,
             p->ended ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

void dmn_http_stream_start(dmn_http_req_t *r, int status, const char *content_type)
{
    dmn_http__req_t *p = r->priv;
    if (!usable(r) || p->streaming) return;
    p->streaming = true;
    p->snext = p->h->streams;
    if (p->snext) p->snext->sprev = p;
    p->h->streams = p;
    if (!p->h2o) return;
    set_head(p->h2o, status, content_type);
    p->gen.proceed = on_proceed;
    p->gen.stop = on_stop;
    h2o_start_response(p->h2o, &p->gen);
    /* the headers go out now: a client sees the stream open before the first event */
    p->sending = true;
    p->send_since_ms = now_ms();
    h2o_send(p->h2o, NULL, 0, H2O_SEND_STATE_IN_PROGRESS);
}

int dmn_http_stream_write(dmn_http_req_t *r, const void *data, size_t n)
{
    dmn_http__req_t *p = r->priv;
    if (p->done || !p->streaming) return RCD_EINVAL;
    if (p->gone || !p->h2o) return RCD_ECANCELLED;
    size_t max = (size_t)p->h->srv->opts->http_max_queued_bytes;
    size_t queued = p->inflight.len + p->pending.len;
    if (queued + n > 2 * max && queued > 0) return RCD_ETOOBIG;
    if (p->pending.len + n > p->pending.cap) {
        size_t cap = p->pending.cap ? p->pending.cap : 4096;
        while (cap < p->pending.len + n)
            cap *= 2;
        char *q = realloc(p->pending.p, cap);
        if (!q) return RCD_ENOMEM;
        p->pending.p = q;
        p->pending.cap = cap;
    }
    memcpy(p->pending.p + p->pending.len, data, n);
    p->pending.len += n;
    int ret = queued + n > max;
    if (ret) p->paused = true;
    stream_kick(p); /* last: nothing of p is touched after H2O had it */
    return ret;
}

void dmn_http_stream_end(dmn_http_req_t *r)
{
    dmn_http__req_t *p = r->priv;
    if (!usable(r)) return;
    if (!p->h2o || p->gone || !p->streaming) {
        req_done(p);
        return;
    }
    p->ended = true;
    p->done = true; /* H2O disposes (and so frees) once the end is written */
    stream_kick(p);
}

/* Closes a connection under H2O's feet: shutdown() makes its pending read or write fail, and
 * H2O closes the connection (and stops its requests) as for any client error. */
static void conn_cut(conn_rec_t *c)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) shutdown(fd, SHUT_RDWR);
}

static conn_rec_t *conn_of(dmn_http_t *h, h2o_conn_t *conn)
{
    for (conn_rec_t *c = h->conns; c; c = c->next)
        if (c->sock && c->sock->data == (void *)conn) return c;
    return NULL;
}

/* Stopping: every connection goes now. shutdown() fails a pending read or write; a connection
 * H2O is not reading or writing (waiting on its own timer) goes by running H2O's timeouts
 * with a limit of 0, H2O's own way to close it. Runs from the loop (never inside H2O). */
static void stop_conns(dmn_http_t *h)
{
    for (conn_rec_t *c = h->conns; c; c = c->next)
        conn_cut(c);
    if (!h->ctx_up) return;
    h2o_timeout_t *ts[] = {&h->ctx.handshake_timeout, &h->ctx.http1.req_timeout,
                           &h->ctx.http2.idle_timeout};
    for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
        ts[i]->timeout = 0;
        h2o_timeout_run(h->ctx.loop, ts[i], h2o_now(h->ctx.loop));
    }
}

/* H2O 2.2's libuv binding ignores a uv_write that fails at once: after a read error (a client
 * that resets the connection, e.g. right after a TLS handshake) libuv refuses writes with
 * UV_EPIPE synchronously, and the socket waits forever for a write callback (TLS: its
 * close_notify), holding its connection slot. A connection seen in that state (a write
 * callback awaited, no byte queued in libuv) on two ticks in a row with no write in between
 * (so not a completion libuv is about to deliver) gets the callback, with an error, as libuv
 * would have given it; H2O then closes it. */
static void reap_stuck(dmn_http_t *h)
{
    for (conn_rec_t *c = h->conns, *next; c; c = next) {
        next = c->next;
        uv_handle_t *uh = (uv_handle_t *)&c->tcp;
        if (!c->sock || uv_is_closing(uh) || !c->sock->_cb.write || c->tcp.write_queue_size ||
            (c->stuck && c->sock->bytes_written != c->stuck_written)) {
            c->stuck = 0;
            continue;
        }
        c->stuck_written = c->sock->bytes_written;
        if (++c->stuck < 2) continue;
        c->stuck = 0;
        dmn_log(DMN_DEBUG, "http_stuck_write", NULL, NULL,
                "a connection waited for a lost write: closing it");
        h2o_socket_cb cb = c->sock->_cb.write; /* what H2O's on_write_complete does */
        c->sock->_cb.write = NULL;
        cb(c->sock, h2o_socket_error_io);
    }
}

static void on_tick(uv_timer_t *t)
{
    dmn_http_t *h = t->data;
    reap_stuck(h);
    if (h->stopping) {
        stop_conns(h);
        return;
    }
    uint64_t now = now_ms(), limit = (uint64_t)h->srv->opts->http_write_timeout_ms;
    for (dmn_http__req_t *p = h->streams; p; p = p->snext) {
        if (!p->sending || !p->h2o || now - p->send_since_ms < limit) continue;
        conn_rec_t *c = conn_of(h, p->h2o->conn);
        dmn_log(DMN_WARN, "http_slow_reader", p->pub->rid, NULL,
                "client took no byte of a %zu-byte write for %llu ms: connection cut",
                p->inflight.len, (unsigned long long)(now - p->send_since_ms));
        p->send_since_ms = now; /* once */
        if (c) conn_cut(c);
    }
}

/* ---- routing ---------------------------------------------------------------------------- */

static bool route_match(const route_t *rt, const char *path, size_t n)
{
    if (rt->flags & DMN_HTTP_PREFIX)
        return n >= rt->path_len && !memcmp(path, rt->path, rt->path_len);
    return n == rt->path_len && !memcmp(path, rt->path, n);
}

/* The route for (method, path); *path_known when some route takes the path under another
 * method (then allow lists them). */
static const route_t *route_find(dmn_http_t *h, const char *method, const char *path,
                                 bool *path_known, char *allow, size_t allow_len)
{
    size_t n = strlen(path);
    const route_t *best = NULL;
    *path_known = false;
    allow[0] = 0;
    for (size_t i = 0; i < h->n_routes; i++) {
        const route_t *rt = &h->routes[i];
        if (!route_match(rt, path, n)) continue;
        if (strcmp(rt->method, method)) {
            *path_known = true;
            size_t k = strlen(allow);
            if (!strstr(allow, rt->method))
                snprintf(allow + k, allow_len - k, "%s%s", k ? ", " : "", rt->method);
            continue;
        }
        bool exact = !(rt->flags & DMN_HTTP_PREFIX);
        if (!best || (exact && (best->flags & DMN_HTTP_PREFIX)) ||
            (!exact && (best->flags & DMN_HTTP_PREFIX) && rt->path_len > best->path_len))
            best = rt;
    }
    return best;
}

static char *pool_str(h2o_mem_pool_t *pool, const char *s, size_t n)
{
    return h2o_strdup(pool, s, n).base;
}

/* The limits H2O does not enforce itself: header count and bytes (431). */
static bool headers_ok(dmn_http_t *h, h2o_req_t *req, char *why, size_t len)
{
    const dmn_opts_t *o = h->srv->opts;
    size_t bytes = 0;
    for (size_t i = 0; i < req->headers.size; i++)
        bytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    if ((long)req->headers.size > o->http_max_headers) {
        snprintf(why, len, "%zu request headers, more than --http-max-headers %ld",
                 req->headers.size, o->http_max_headers);
        return false;
    }
    if ((long)bytes > o->http_max_header_bytes) {
        snprintf(why, len, "%zu bytes of request headers, more than --http-max-header-bytes %ld",
                 bytes, o->http_max_header_bytes);
        return false;
    }
    return true;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    dmn_http_t *h = H2O_STRUCT_FROM_MEMBER(dmn_http_t, ctx, req->conn->ctx);
    dmn_server_t *s = h->srv;
    req_alloc_t *a = calloc(1, sizeof(*a));
    if (!a) {
        h2o_send_error_503(req, "Service Unavailable", "out of memory\n", 0);
        return 0;
    }
    h->n_active++;
    dmn_http_req_t *r = &a->pub;
    dmn_http__req_t *p = &a->priv;
    r->priv = p;
    p->pub = r;
    p->h = h;
    p->h2o = req;
    r->srv = s;
    dmn_http__req_t **slot = h2o_mem_alloc_shared(&req->pool, sizeof(*slot), on_pool_dispose);
    *slot = p;

    r->method = pool_str(&req->pool, req->method.base, req->method.len);
    size_t plen = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    r->path = pool_str(&req->pool, req->path.base, plen);
    r->query = req->query_at != SIZE_MAX ? pool_str(&req->pool, req->path.base + req->query_at + 1,
                                                    req->path.len - req->query_at - 1)
                                         : "";
    r->body = req->entity.base ? req->entity.base : "";
    r->body_len = req->entity.base ? req->entity.len : 0;

    dmn_meta_t m;
    dmn_meta_init(&m);
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *hd = &req->headers.entries[i];
        dmn_meta_add(&m, hd->name->base, hd->name->len, hd->value.base, hd->value.len);
    }
    memcpy(r->rid, m.rid, sizeof(r->rid));
    if (!r->rid[0]) snprintf(r->rid, sizeof(r->rid), "r%llu", (unsigned long long)++s->next_rid);
    dmn_http_add_header(r, "x-request-id", r->rid);
    dmn_http_add_header(r, "x-recurd-replica", s->replica);

    char why[200];
    if (!headers_ok(h, req, why, sizeof(why))) {
        dmn_http_error(r, 431, NULL, "request_header_fields_too_large", "%s", why);
        return 0;
    }
    bool path_known;
    char allow[120];
    const route_t *rt = route_find(h, r->method, r->path, &path_known, allow, sizeof(allow));
    if (!rt) {
        if (path_known) {
            dmn_http_add_header(r, "allow", allow);
            dmn_http_error(r, 405, NULL, "method_not_allowed",
                           "method %s not allowed on %s (allowed: %s)", r->method, r->path, allow);
        } else {
            dmn_http_error(r, 404, NULL, "not_found", "no route for %s %s", r->method, r->path);
        }
        return 0;
    }
    if (h->draining && !(rt->flags & DMN_HTTP_OPEN)) {
        dmn_http_add_header(r, "connection", "close");
        dmn_http_fail(r, RCD_EUNAVAILABLE, "server is draining");
        return 0;
    }
    if (!(rt->flags & DMN_HTTP_OPEN) && s->keys) {
        char err[200];
        int rc = dmn_auth_check(s, r->rid, r->path, &m.auth, r->tenant, r->auth_tenant, err,
                                sizeof(err));
        if (rc) {
            if (rc == RCD_EUNAUTHENTICATED)
                snprintf(err, sizeof(err),
                         "missing or invalid API key (send the header Authorization: Bearer KEY)");
            dmn_http_fail(r, rc, "%s", err);
            return 0;
        }
    }
    rt->cb(r, rt->arg);
    return 0;
}

/* ---- TLS -------------------------------------------------------------------------------- */

static SSL_CTX *ssl_make(const dmn_opts_t *o, char *err, size_t errlen)
{
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    const char *file = "";
    if (!c) goto fail;
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    file = o->tls_cert;
    if (SSL_CTX_use_certificate_chain_file(c, o->tls_cert) != 1) goto fail;
    file = o->tls_key;
    if (SSL_CTX_use_PrivateKey_file(c, o->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(c) != 1)
        goto fail;
    if (o->tls_client_ca && o->tls_client_ca[0]) {
        file = o->tls_client_ca;
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->tls_client_ca);
        if (!names || SSL_CTX_load_verify_locations(c, o->tls_client_ca, NULL) != 1) {
            if (names) sk_X509_NAME_pop_free(names, X509_NAME_free);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(c, names);
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    h2o_ssl_register_alpn_protocols(c, h2o_http2_alpn_protocols);
    return c;
fail:;
    unsigned long e = ERR_get_error();
    char es[256];
    ERR_error_string_n(e, es, sizeof(es));
    ERR_clear_error();
    rcd_fail(RCD_EINVAL, err, errlen, "HTTPS: %s: %s", file[0] ? file : "SSL_CTX_new", es);
    SSL_CTX_free(c);
    return NULL;
}

int dmn_http_reload_tls(dmn_server_t *s, char *what, size_t whatlen, char *err, size_t errlen)
{
    dmn_http_t *h = s->http;
    if (!h || !h->ssl) return 0;
    SSL_CTX *c = ssl_make(s->opts, err, errlen);
    if (!c) return -1;
    SSL_CTX_free(h->ssl); /* connections in progress hold their own reference */
    h->ssl = c;
    h->accept_ctx.ssl_ctx = c;
    snprintf(what, whatlen, "%s", s->opts->tls_cert);
    return 0;
}

/* ---- connections ------------------------------------------------------------------------ */

static void maybe_dispose(dmn_http_t *h);

static void on_conn_closed(uv_handle_t *uh)
{
    conn_rec_t *c = (conn_rec_t *)uh;
    dmn_http_t *h = c->h;
    if (c->sock) { /* an H2O connection: unlink */
        if (c->prev)
            c->prev->next = c->next;
        else
            h->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        h->n_conns--;
    }
    free(c);
    maybe_dispose(h);
}

static void on_accept(uv_stream_t *listener, int status)
{
    dmn_http_t *h = listener->data;
    if (status != 0) return;
    conn_rec_t *c = calloc(1, sizeof(*c));
    if (!c) return;
    c->h = h;
    uv_tcp_init(listener->loop, &c->tcp);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    if (h->n_conns >= h->srv->opts->http_max_connections || h->stopping) {
        if (h->refused++ % 1000 == 0)
            dmn_log(DMN_WARN, "http_max_connections", NULL, NULL,
                    "%ld connections open (--http-max-connections): closing new ones (%llu so far)",
                    h->n_conns, (unsigned long long)h->refused);
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_conn_closed);
    c->next = h->conns;
    if (c->next) c->next->prev = c;
    h->conns = c;
    h->n_conns++;
    h2o_accept(&h->accept_ctx, c->sock);
}

static void on_closed_noop(uv_handle_t *uh)
{
    (void)uh;
}

/* Once stopping and every connection closed: the context's own handles go. */
static void maybe_dispose(dmn_http_t *h)
{
    if (!h->stopping || h->n_conns || h->listening || !h->ctx_up) return;
    h->ctx_up = false;
    /* h2o_context_request_shutdown armed HTTP/2's GOAWAY resend; the dispose asserts idle timers */
    if (h2o_timeout_is_linked(&h->ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&h->ctx.http2._graceful_shutdown_timeout);
    h2o_context_dispose(&h->ctx);
    if (h->tick_up) {
        h->tick_up = false;
        uv_close((uv_handle_t *)&h->tick, on_closed_noop);
    }
}

static void on_listener_closed(uv_handle_t *uh)
{
    dmn_http_t *h = uh->data;
    h->listening = false;
    maybe_dispose(h);
}

int dmn_http_port(const dmn_server_t *s)
{
    return s->http ? s->http->port : 0;
}

static int write_port_file(const char *path, int port)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0) return -1;
    return rename(tmp, path);
}

int dmn_http_start(dmn_server_t *s, char *err, size_t errlen)
{
    const dmn_opts_t *o = s->opts;
    if (o->http_port < 0) {
        dmn_log(DMN_INFO, "http_off", NULL, NULL, "no HTTP listener (--http-port -1)");
        return 0;
    }
    if (!o->listen_all && !strncmp(o->host, "unix:", 5)) {
        dmn_log(DMN_WARN, "http_off", NULL, NULL,
                "no HTTP listener: --host is a unix socket and the HTTP listener is TCP only");
        return 0;
    }
    dmn_http_t *h = http_get(s);
    if (!h) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    if (dmn_http__builtin_routes(s)) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    if (dmn_tls_enabled(o) && !(h->ssl = ssl_make(o, err, errlen))) return RCD_EINVAL;

    h2o_config_init(&h->config);
    h->config_up = true;
    h->config.server_name = h2o_iovec_init(H2O_STRLIT("recurd"));
    h->config.max_request_entity_size = (size_t)o->http_max_body_bytes;
    uint64_t idle = (uint64_t)o->http_idle_timeout_ms, reqt = (uint64_t)o->http_request_timeout_ms;
    /* HTTP/1.1: H2O runs one timer from when a connection waits for a request until the request
     * (headers and body) is in, so both limits apply as their minimum. */
    h->config.http1.req_timeout = idle < reqt ? idle : reqt;
    h->config.http2.idle_timeout = idle;
    h->config.handshake_timeout = reqt;
    h->host = h2o_config_register_host(&h->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(h->host, "/", 0);
    h2o_handler_t *hd = h2o_create_handler(pc, sizeof(*hd));
    hd->on_req = on_req;
    h2o_context_init(&h->ctx, s->loop, &h->config);
    h->ctx_up = true;
    h->accept_ctx.ctx = &h->ctx;
    h->accept_ctx.hosts = h->config.hosts;
    h->accept_ctx.ssl_ctx = h->ssl;

    const char *host = o->listen_all ? "0.0.0.0" : o->host;
    struct sockaddr_storage sa;
    int urc;
    if (uv_ip4_addr(host, (int)o->http_port, (struct sockaddr_in *)&sa) &&
        uv_ip6_addr(host, (int)o->http_port, (struct sockaddr_in6 *)&sa)) {
        if (!strcmp(host, "localhost")) {
            uv_ip4_addr("127.0.0.1", (int)o->http_port, (struct sockaddr_in *)&sa);
        } else {
            h->stopping = true;
            maybe_dispose(h);
            return rcd_fail(RCD_EINVAL, err, errlen,
                            "HTTP: --host %s is not an IP address (nor localhost)", host);
        }
    }
    uv_tcp_init(s->loop, &h->listener);
    h->listener.data = h;
    h->listening = true;
    if ((urc = uv_tcp_bind(&h->listener, (struct sockaddr *)&sa, 0)) ||
        (urc = uv_listen((uv_stream_t *)&h->listener, 256, on_accept))) {
        h->stopping = true;
        uv_close((uv_handle_t *)&h->listener, on_listener_closed);
        return rcd_fail(RCD_EIO, err, errlen, "HTTP: cannot listen on %s port %ld: %s", host,
                        o->http_port, uv_strerror(urc));
    }
    int salen = sizeof(sa);
    uv_tcp_getsockname(&h->listener, (struct sockaddr *)&sa, &salen);
    h->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                             : ((struct sockaddr_in *)&sa)->sin_port);
    uv_timer_init(s->loop, &h->tick);
    h->tick.data = h;
    h->tick_up = true;
    uint64_t every = (uint64_t)o->http_write_timeout_ms / 4;
    if (every < 50) every = 50;
    if (every > 1000) every = 1000;
    uv_timer_start(&h->tick, on_tick, every, every);
    uv_unref((uv_handle_t *)&h->tick);
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", h->port);
    const char *kv[] = {"port", pstr, NULL};
    dmn_log_kv(DMN_INFO, false, "http_listening", NULL, NULL, kv,
               "HTTP listening on %s port %d (%s)", host, h->port,
               h->ssl ? "HTTPS, HTTP/1.1 and HTTP/2 by ALPN" : "HTTP/1.1 and h2c");
    if (o->http_port_file[0] && write_port_file(o->http_port_file, h->port))
        dmn_log(DMN_WARN, "http_port_file", NULL, NULL, "cannot write %s", o->http_port_file);
    return 0;
}

void dmn_http_drain(dmn_server_t *s)
{
    dmn_http_t *h = s->http;
    if (!h || h->draining || !h->ctx_up) return;
    h->draining = true;
    if (h->listening) uv_close((uv_handle_t *)&h->listener, on_listener_closed);
    h2o_context_request_shutdown(&h->ctx);
}

void dmn_http_stop(dmn_server_t *s)
{
    dmn_http_t *h = s->http;
    if (!h || h->stopping) return;
    dmn_http_drain(s);
    h->stopping = true;
    if (h->tick_up) uv_timer_start(&h->tick, on_tick, 0, 100); /* stop_conns, from the loop */
    maybe_dispose(h);
}

void dmn_http_free(dmn_server_t *s)
{
    dmn_http_t *h = s->http;
    if (!h) return;
    if (h->config_up) h2o_config_dispose(&h->config);
    if (h->ssl) SSL_CTX_free(h->ssl);
    free(h->routes);
    free(h);
    s->http = NULL;
}
