/* statestore: the shared tier's Redis connection — its life (resolve, connect, TLS, AUTH and
 * PING, failures with backoff, the watchdog) and the API. The transport is ours: a libuv TCP
 * handle on the store's loop, with OpenSSL over memory BIOs when TLS is on (Debian 12's hiredis
 * 0.14 has no TLS, and its async socket code cannot be given one); what goes over it (commands
 * encoded, replies parsed by hiredis's redisReader, TLS records) is store_redis_wire.c. */
#include "statestore/store_redis.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"

#ifndef RCD_HAVE_HIREDIS
/* Built without libhiredis-dev: asking for a shared tier is a clear error at startup. */
int rds_open(uv_loop_t *loop, const char *addr, const store_redis_opts_t *opts,
             const rds_log_t *log, rds_t **out, char *err, size_t errlen)
{
    (void)loop;
    (void)opts;
    (void)log;
    *out = NULL;
    return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                    "redis '%s': this build has no shared tier (install libhiredis-dev)", addr);
}
int rds_set(rds_t *r, const char *key, const void *a, size_t alen, const void *b, size_t blen,
            rds_cb cb, void *user)
{
    return RCD_EUNAVAILABLE;
}
int rds_get(rds_t *r, const char *key, rds_cb cb, void *user)
{
    return RCD_EUNAVAILABLE;
}
void rds_del(rds_t *r, const char *key) {}
void *rds_take(rds_t *r, const char *data)
{
    return NULL;
}
int rds_eval(rds_t *r, const char *script, const char *key1, const char *key2, int nargs,
             const rds_val_t *args, rds_cb cb, void *user)
{
    return RCD_EUNAVAILABLE;
}
bool rds_ready(const rds_t *r)
{
    return false;
}
void rds_close(rds_t *r) {}
#else
#ifdef RCD_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/x509v3.h>
#endif

#include "statestore/store_redis_int.h"

static void conn_start(rds_t *r);

/* Logs msg; a failure whose cause (NULL: none) is the last one logged waits RDS_RELOG_NS. */
static void say(rds_t *r, const char *msg, const char *cause)
{
    uint64_t now = uv_hrtime();
    if (cause && !strcmp(cause, r->last_msg) && now - r->last_log_ns < RDS_RELOG_NS) return;
    snprintf(r->last_msg, sizeof(r->last_msg), "%s", cause ? cause : "");
    r->last_log_ns = now;
    if (r->log.cb) r->log.cb(r->log.user, NULL, msg);
}

/* The connection keeps the loop alive while replies are awaited, its own handshake's included
 * (at most 2 s: the watchdog), never while idle (the daemon's drain). */
static void set_ref(rds_t *r)
{
    if (!r->c) return;
    if (r->inflight || !r->ready)
        uv_ref((uv_handle_t *)&r->c->tcp);
    else
        uv_unref((uv_handle_t *)&r->c->tcp);
}

static void conn_closed(uv_handle_t *h)
{
    rds_conn_t *c = h->data;
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl) SSL_free(c->ssl); /* and its BIOs */
#endif
    free(c->pend);
    free(c->bulk);
    if (c->reader) redisReaderFree(c->reader);
    free(c);
}

/* Drops the connection: the handle closes on the loop; the callers of its outstanding
 * commands hear RCD_EUNAVAILABLE from inside this call. */
static void drop(rds_t *r, const char *why)
{
    rds_conn_t *c = r->c;
    if (!c) return;
    r->c = NULL;
    r->ready = false;
    c->r = NULL;
    if (c->gai) c->gai->data = NULL; /* the resolver's callback frees it */
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    rds_op_t *op = c->head;
    c->head = NULL;
    c->tail = &c->head;
    while (op) {
        rds_op_t *next = op->next;
        if (op->cb) {
            r->inflight--;
            op->cb(op->user, RCD_EUNAVAILABLE, NULL, 0, why);
        }
        free(op);
        op = next;
    }
}

void rds__conn_fail(rds_conn_t *c, bool config, const char *fmt, ...)
{
    rds_t *r = c->r;
    if (!r) return;
    char m[400], line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    /* Next try: a configuration problem waits longest; a connection that was up retries soon. */
    if (config)
        r->backoff_ns = RDS_BACKOFF_CONFIG_NS;
    else if (r->ready || !r->backoff_ns)
        r->backoff_ns = RDS_BACKOFF_MIN_NS;
    else if ((r->backoff_ns *= 2) > RDS_BACKOFF_MAX_NS)
        r->backoff_ns = RDS_BACKOFF_MAX_NS;
    r->next_try_ns = uv_hrtime() + r->backoff_ns;
    snprintf(line, sizeof(line),
             "shared tier: redis %s: %s; the tier is down (turns commit to "
             "disk only), next try in %u s",
             r->addr, m, (unsigned)(r->backoff_ns / 1000000000ull));
    say(r, line, m);
    char why[450];
    snprintf(why, sizeof(why), "redis connection lost: %.400s", m);
    drop(r, why);
}

void rds__dispatch(rds_conn_t *c, rds_op_t *op, const redisReply *rep)
{
    rds_t *r = c->r;
    const char *data;
    size_t len;
    char msg[400];
    int rc = rds__reply(op->kind, rep, &data, &len, msg, sizeof(msg));
    if (op->kind == RDS_OP_AUTH || op->kind == RDS_OP_PING) {
        if (rc == RCD_EPRECONDITION) {
            rds__conn_fail(c, true, "%s%s", msg,
                           r->pass ? "" : " (no password given: --redis-password-file)");
            return;
        }
        if (rc) {
            rds__conn_fail(c, false, "%s", msg);
            return;
        }
        if (op->kind == RDS_OP_PING) { /* the handshake's last reply */
            r->ready = true;
            r->backoff_ns = 0;
            set_ref(r);
            char line[1024];
            snprintf(line, sizeof(line), "shared tier: redis %s: connected%s%s%s", r->addr,
#ifdef RCD_HAVE_OPENSSL
                     r->tls ? " (TLS, certificate verified)" : "",
#else
                     "",
#endif
                     r->user   ? ", ACL user "
                     : r->pass ? ", AUTH"
                               : "",
                     r->user ? r->user : "");
            /* The first connection is quiet; one after a failure is news. */
            if (r->was_ready || r->last_msg[0]) say(r, line, NULL);
            r->was_ready = true;
        }
        return;
    }
    if (!op->cb) return; /* DEL: nobody waits */
    r->inflight--;
    r->progress_ns = uv_hrtime();
    set_ref(r);
    r->cur = (redisReply *)rep;
    op->cb(op->user, rc, data, len, rc ? msg : "");
    r->cur = NULL;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    rds_conn_t *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl) {
        *buf = uv_buf_init(c->nbuf, sizeof(c->nbuf));
        return;
    }
#endif
    if (c->bulk) { /* the rest of a direct bulk: read into its place (on_read) */
        size_t left = c->bulk_need - c->bulk_have;
        *buf = uv_buf_init(c->bulk + c->bulk_have, left > (1u << 30) ? 1u << 30 : (unsigned)left);
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    rds_conn_t *c = s->data;
    if (!c->r) return;
    if (n < 0) {
        rds__conn_fail(c, false, "%s",
                       n == UV_EOF ? "connection closed by the server" : uv_strerror((int)n));
        return;
    }
    if (n == 0) return;
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl) {
        if (BIO_write(c->net_in, buf->base, (int)n) != (int)n) {
            rds__conn_fail(c, false, "out of memory");
            return;
        }
        rds__tls_pump(c);
        return;
    }
#endif
    if (c->bulk && buf->base == c->bulk + c->bulk_have) {
        if ((c->bulk_have += (size_t)n) == c->bulk_need) {
            rds__bulk_done(c);
            if (c->r) rds__feed(c, NULL, 0); /* replies that arrived behind it, already buffered */
        }
        return;
    }
    rds__feed(c, buf->base, (size_t)n);
}

static void on_connected(uv_connect_t *req, int status)
{
    rds_conn_t *c = req->data;
    if (!c->r) return; /* dropped meanwhile */
    if (status < 0) {
        rds__conn_fail(c, false, "connect: %s", uv_strerror(status));
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        rds__conn_fail(c, false, "read: %s", uv_strerror(rc));
        return;
    }
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl) {
        rds__tls_pump(c); /* ClientHello; the queued commands once the handshake is done */
        return;
    }
#endif
    c->up = true;
    if (c->pend_len) {
        rds__sock_write(c, c->pend, c->pend_len);
        c->pend = NULL;
        c->pend_len = 0;
    }
}

static void connect_to(rds_conn_t *c, const struct sockaddr *sa)
{
    c->connect.data = c;
    int rc = uv_tcp_connect(&c->connect, &c->tcp, sa, on_connected);
    if (rc) rds__conn_fail(c, false, "connect: %s", uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    rds_conn_t *c = req->data;
    if (c) c->gai = NULL;
    if (c && status < 0)
        rds__conn_fail(c, false, "resolving %s: %s", c->r->host, uv_strerror(status));
    else if (c)
        connect_to(c, res->ai_addr);
    uv_freeaddrinfo(res);
    free(req);
}

/* Starts a connection in the background: TCP (a name is resolved on the pool), TLS, then AUTH
 * and PING queued at once (pipelined); ready when PING answers. */
static void conn_start(rds_t *r)
{
    rds_conn_t *c = calloc(1, sizeof(*c));
    if (!c) return;
    c->tail = &c->head;
    c->started_ns = uv_hrtime();
    if (!(c->reader = rds__reader_new()) || uv_tcp_init(r->loop, &c->tcp)) {
        if (c->reader) redisReaderFree(c->reader);
        free(c);
        return;
    }
    c->tcp.data = c;
    c->r = r;
    r->c = c;
    r->ready = false;
    set_ref(r);
    uv_tcp_nodelay(&c->tcp, 1);
#ifdef RCD_HAVE_OPENSSL
    if (r->tls) {
        ERR_clear_error();
        if (!(c->ssl = SSL_new(r->tls)) || !(c->net_in = BIO_new(BIO_s_mem())) ||
            !(c->net_out = BIO_new(BIO_s_mem()))) {
            if (c->net_in && !c->net_out) BIO_free(c->net_in);
            c->net_in = c->net_out = NULL;
            rds__conn_fail(c, false, "TLS: out of memory");
            return;
        }
        SSL_set_bio(c->ssl, c->net_in, c->net_out); /* SSL owns them now */
        SSL_set_connect_state(c->ssl);
        struct in6_addr ip;
        bool is_ip =
            inet_pton(AF_INET, r->name, &ip) == 1 || inet_pton(AF_INET6, r->name, &ip) == 1;
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, r->name) != 1
                  : (SSL_set1_host(c->ssl, r->name) != 1 ||
                     SSL_set_tlsext_host_name(c->ssl, r->name) != 1)) {
            rds__conn_fail(c, true, "TLS: cannot verify against the name '%s'", r->name);
            return;
        }
    }
#endif
    if (r->pass || r->user) {
        const char *u = r->user, *p = r->pass ? r->pass : "";
        rds_arg_t a[3] = {
            {"AUTH", NULL, 4, 0}, {u, NULL, u ? strlen(u) : 0, 0}, {p, NULL, strlen(p), 0}};
        if (!u) a[1] = a[2];
        if (!rds__send_cmd(c, RDS_OP_AUTH, NULL, NULL, u ? 3 : 2, a)) return;
    }
    rds_arg_t ping = {"PING", NULL, 4, 0};
    if (!rds__send_cmd(c, RDS_OP_PING, NULL, NULL, 1, &ping)) return;
    struct sockaddr_storage sa;
    if (uv_ip4_addr(r->host, r->port, (struct sockaddr_in *)&sa) == 0 ||
        uv_ip6_addr(r->host, r->port, (struct sockaddr_in6 *)&sa) == 0) {
        connect_to(c, (const struct sockaddr *)&sa);
        return;
    }
    uv_getaddrinfo_t *g = malloc(sizeof(*g));
    char port[8];
    snprintf(port, sizeof(port), "%d", r->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (!g) {
        rds__conn_fail(c, false, "out of memory");
        return;
    }
    g->data = c;
    c->gai = g;
    int rc = uv_getaddrinfo(r->loop, g, on_resolved, r->host, port, &hints);
    if (rc) {
        c->gai = NULL;
        free(g);
        rds__conn_fail(c, false, "resolving %s: %s", r->host, uv_strerror(rc));
    }
}

static void watchdog(uv_timer_t *t)
{
    rds_t *r = t->data;
    uint64_t now = uv_hrtime();
    if (r->c && r->c->failed)
        rds__conn_fail(r->c, false, "%s", r->c->fail_msg);
    else if (r->c && !r->ready && now - r->c->started_ns > RDS_TIMEOUT_NS)
        rds__conn_fail(r->c, false, "not ready within 2 s (connect, TLS, AUTH, PING)");
    else if (r->c && r->inflight > 0 && now - r->progress_ns > RDS_TIMEOUT_NS)
        rds__conn_fail(r->c, false, "no reply within 2 s");
    else if (!r->c && now >= r->next_try_ns)
        conn_start(r);
}

/* ---- the API ------------------------------------------------------------------------------ */

static bool given(const char *s)
{
    return s && s[0];
}

#ifdef RCD_HAVE_OPENSSL
static int tls_ctx(rds_t *r, const store_redis_opts_t *o, char *err, size_t errlen)
{
    char why[256] = "";
    const char *what = "";
    ERR_clear_error();
    if (!(r->tls = SSL_CTX_new(TLS_client_method()))) return RCD_ENOMEM;
    SSL_CTX_set_min_proto_version(r->tls, TLS1_2_VERSION);
    SSL_CTX_set_verify(r->tls, SSL_VERIFY_PEER, NULL);
    if (given(o->tls_ca) ? SSL_CTX_load_verify_locations(r->tls, o->tls_ca, NULL) != 1
                         : SSL_CTX_set_default_verify_paths(r->tls) != 1)
        what = given(o->tls_ca) ? o->tls_ca : "the system's CA bundle";
    else if (given(o->tls_cert) && SSL_CTX_use_certificate_chain_file(r->tls, o->tls_cert) != 1)
        what = o->tls_cert;
    else if (given(o->tls_key) &&
             (SSL_CTX_use_PrivateKey_file(r->tls, o->tls_key, SSL_FILETYPE_PEM) != 1 ||
              SSL_CTX_check_private_key(r->tls) != 1))
        what = o->tls_key;
    if (!what[0]) return 0;
    ERR_error_string_n(ERR_get_error(), why, sizeof(why));
    ERR_clear_error();
    return rcd_fail(RCD_EIO, err, errlen, "redis TLS: %s: %s", what, why);
}
#endif

static void rds_free(uv_handle_t *h)
{
    rds_t *r = h->data;
#ifdef RCD_HAVE_OPENSSL
    if (r->tls) SSL_CTX_free(r->tls);
#endif
    if (r->pass) {
        volatile char *p = r->pass;
        while (*p)
            *p++ = 0;
    }
    free(r->pass);
    free(r->user);
    free(r);
}

int rds_open(uv_loop_t *loop, const char *addr, const store_redis_opts_t *o, const rds_log_t *log,
             rds_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!strncmp(addr, "redis://", 8) || !strncmp(addr, "rediss://", 9))
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "redis address '%s': give host:port (URLs are not taken: use "
                        "--redis-tls, --redis-user and --redis-password-file)",
                        addr);
    const char *colon = strrchr(addr, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == addr || (size_t)(colon - addr) >= 256 || *end || port < 1 ||
        port > 65535)
        return rcd_fail(RCD_EINVAL, err, errlen, "redis address '%s' is not host:port", addr);
    if (!o->tls &&
        (given(o->tls_ca) || given(o->tls_cert) || given(o->tls_key) || given(o->tls_server_name)))
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "redis: --redis-tls-ca/-cert/-key/-server-name need --redis-tls");
    if (given(o->tls_cert) != given(o->tls_key))
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "redis: --redis-tls-cert and --redis-tls-key go together");
    if ((given(o->user) && strlen(o->user) > 255) ||
        (given(o->password) && strlen(o->password) > 4096))
        return rcd_fail(RCD_EINVAL, err, errlen, "redis: user or password too long");
#ifndef RCD_HAVE_OPENSSL
    if (o->tls)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "redis TLS: this build has no OpenSSL (install libssl-dev)");
#endif
    rds_t *r = calloc(1, sizeof(*r));
    if (!r) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    r->loop = loop;
    memcpy(r->host, addr, (size_t)(colon - addr));
    /* "[::1]:6379" as well as "::1:6379" */
    size_t hl = strlen(r->host);
    if (hl >= 2 && r->host[0] == '[' && r->host[hl - 1] == ']') {
        memmove(r->host, r->host + 1, hl - 2);
        r->host[hl - 2] = 0;
    }
    r->port = (int)port;
    snprintf(r->addr, sizeof(r->addr), "%s", addr);
    snprintf(r->name, sizeof(r->name), "%s",
             given(o->tls_server_name) ? o->tls_server_name : r->host);
    if (log) r->log = *log;
    int rc = 0;
    if ((given(o->user) && !(r->user = strdup(o->user))) ||
        (given(o->password) && !(r->pass = strdup(o->password))))
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
#ifdef RCD_HAVE_OPENSSL
    if (!rc && o->tls) rc = tls_ctx(r, o, err, errlen);
#endif
    r->watchdog.data = r;
    if (rc) {
        rds_free((uv_handle_t *)&r->watchdog);
        return rc;
    }
    uv_timer_init(loop, &r->watchdog);
    uv_timer_start(&r->watchdog, watchdog, 500, 500);
    uv_unref((uv_handle_t *)&r->watchdog);
    conn_start(r);
    *out = r;
    return 0;
}

/* The connection if it is ready; NULL otherwise (one is being made in the background). */
static rds_conn_t *conn(rds_t *r)
{
    return r->c && r->ready ? r->c : NULL;
}

static int command(rds_t *r, rds_op_kind_t kind, rds_cb cb, void *user, int argc,
                   const rds_arg_t *argv)
{
    rds_conn_t *c = conn(r);
    if (!c) return RCD_EUNAVAILABLE;
    if (!rds__send_cmd(c, kind, cb, user, argc, argv)) return RCD_ENOMEM; /* no callback follows */
    if (cb) {
        if (r->inflight++ == 0) r->progress_ns = uv_hrtime();
        set_ref(r);
    }
    return 0;
}

int rds_set(rds_t *r, const char *key, const void *a, size_t alen, const void *b, size_t blen,
            rds_cb cb, void *user)
{
    rds_arg_t argv[3] = {{"SET", NULL, 3, 0}, {key, NULL, strlen(key), 0}, {a, b, alen, blen}};
    if (alen + blen > INT_MAX - 1024) return RCD_ETOOBIG; /* one uv_buf / SSL_write */
    return command(r, RDS_OP_SET, cb, user, 3, argv);
}

int rds_get(rds_t *r, const char *key, rds_cb cb, void *user)
{
    rds_arg_t argv[2] = {{"GET", NULL, 3, 0}, {key, NULL, strlen(key), 0}};
    return command(r, RDS_OP_GET, cb, user, 2, argv);
}

void *rds_take(rds_t *r, const char *data)
{
    redisReply *rep = r ? r->cur : NULL;
    if (!rep || rep->type != REDIS_REPLY_STRING || !data || rep->str != data) return NULL;
    rep->str = NULL; /* freeReplyObject frees what is left */
    return (void *)data;
}

void rds_del(rds_t *r, const char *key)
{
    rds_arg_t argv[2] = {{"DEL", NULL, 3, 0}, {key, NULL, strlen(key), 0}};
    command(r, RDS_OP_DEL, NULL, NULL, 2, argv);
}

int rds_eval(rds_t *r, const char *script, const char *key1, const char *key2, int nargs,
             const rds_val_t *args, rds_cb cb, void *user)
{
    rds_arg_t argv[16] = {{"EVAL", NULL, 4, 0},
                          {script, NULL, strlen(script), 0},
                          {"2", NULL, 1, 0},
                          {key1, NULL, strlen(key1), 0},
                          {key2, NULL, strlen(key2), 0}};
    size_t total = 0;
    if (nargs < 0 || nargs > 11) return RCD_EINVAL;
    for (int i = 0; i < nargs; i++) {
        argv[5 + i] = args[i];
        total += args[i].alen + args[i].blen;
    }
    if (total > INT_MAX - 4096) return RCD_ETOOBIG; /* one uv_buf / SSL_write */
    return command(r, RDS_OP_EVAL, cb, user, 5 + nargs, argv);
}

bool rds_ready(const rds_t *r)
{
    return r && r->c && r->ready;
}

void rds_close(rds_t *r)
{
    if (!r) return;
    drop(r, "redis connection closed");
    uv_close((uv_handle_t *)&r->watchdog, rds_free); /* r goes with the loop's next turn */
}
#endif
