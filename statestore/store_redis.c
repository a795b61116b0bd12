/* statestore: the shared tier's Redis connection. hiredis parses the replies (a redisReader);
 * commands are encoded here (RESP arrays of bulk strings); the transport is ours: a libuv TCP
 * handle on the store's loop, with OpenSSL over memory BIOs when TLS is on (Debian 12's hiredis
 * 0.14 has no TLS, and its async socket code cannot be given one). */
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
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <hiredis/sds.h>
#ifdef RCD_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

/* A Redis that accepts but does not answer must not stall commits (and drains) forever; a
 * connection (TCP, TLS, AUTH, PING) not ready within the same time is given up too. */
#define RDS_TIMEOUT_NS 2000000000ull
/* Reconnect delays: 1 s doubling to 8 s after a network failure; 30 s after a failure that
 * only a change of configuration fixes (AUTH refused, certificate not trusted). */
#define RDS_BACKOFF_MIN_NS 1000000000ull
#define RDS_BACKOFF_MAX_NS 8000000000ull
#define RDS_BACKOFF_CONFIG_NS 30000000000ull
/* A reply is buffered up to this size (a checkpoint of a large KV state is tens of MiB): a server
 * that announces a longer one cannot make the daemon buffer without bound. */
#define RDS_MAX_BUFFERED (1ull << 30)
/* The same failure is logged again at most this often. */
#define RDS_RELOG_NS 60000000000ull

#define RDS_STR_(x) #x
#define RDS_STR(x) RDS_STR_(x)

typedef struct rds_op {
    struct rds_op *next;
    rds_op_kind_t kind;
    rds_cb cb; /* NULL: nobody waits (DEL, the handshake) */
    void *user;
} rds_op_t;

typedef struct rds_conn rds_conn_t;

struct rds {
    uv_loop_t *loop;
    char host[256], name[256]; /* name: what the certificate must match */
    char addr[300];            /* "host:port", for messages */
    int port;
    char *user, *pass; /* NULL: none */
    rds_log_t log;
    rds_conn_t *c; /* NULL while down */
    bool ready;    /* c has passed TLS, AUTH and PING: commands may go */
    uint64_t next_try_ns, backoff_ns;
    int inflight;         /* replies awaited by callers: only then does c keep the loop alive */
    uint64_t progress_ns; /* last reply, or when waiting began */
    uv_timer_t watchdog;  /* drops a connection that stops answering; reconnects */
    char last_msg[1024];  /* the last failure logged, and when */
    uint64_t last_log_ns;
    bool was_ready;
    redisReply *cur; /* the reply whose callback runs (rds_take) */
#ifdef RCD_HAVE_OPENSSL
    SSL_CTX *tls;    /* NULL: plaintext */
#endif
};

struct rds_conn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    rds_t *r; /* NULL once dropped (the handle is closing) */
    uv_getaddrinfo_t *gai;
    redisReader *reader;
    rds_op_t *head, **tail; /* replies awaited, in command order */
    uint64_t started_ns;
    /* A failure met while sending, perhaps inside a caller's rds_set: callers are told from
     * the watchdog (never from inside the call that queued their command). */
    bool failed;
    char fail_msg[300];
    bool up;    /* connected (and the TLS handshake done): commands go out at once */
    char *pend; /* commands queued before that */
    size_t pend_len;
    /* A GET's large bulk reply taken out of hiredis (bulk_start): its n bytes and CRLF, read
     * straight into this buffer; NULL when none is under way. */
    char *bulk;
    size_t bulk_need, bulk_have;
    char rbuf[65536];
#ifdef RCD_HAVE_OPENSSL
    char nbuf[65536]; /* ciphertext read from the socket (rbuf takes the plaintext) */
    SSL *ssl;         /* NULL: plaintext */
    BIO *net_in;      /* bytes read from the socket, for SSL */
    BIO *net_out;     /* SSL's bytes for the socket */
#endif
};

typedef struct rds_wr {
    uv_write_t req;
    rds_conn_t *c;
    char *buf;
} rds_wr_t;

static void conn_fail(rds_conn_t *c, bool config, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_start(rds_t *r);

static void conn_defer(rds_conn_t *c, const char *msg)
{
    if (c->failed) return;
    c->failed = true;
    snprintf(c->fail_msg, sizeof(c->fail_msg), "%s", msg);
}

/* Logs msg; a failure whose cause (NULL: none) is the last one logged waits RDS_RELOG_NS. */
static void say(rds_t *r, const char *msg, const char *cause)
{
    uint64_t now = uv_hrtime();
    if (cause && !strcmp(cause, r->last_msg) && now - r->last_log_ns < RDS_RELOG_NS) return;
    snprintf(r->last_msg, sizeof(r->last_msg), "%s", cause ? cause : "");
    r->last_log_ns = now;
    if (r->log.cb) r->log.cb(r->log.user, NULL, msg);
}

/* ---- replies ------------------------------------------------------------------------------ */

int rds__reply(rds_op_kind_t kind, const redisReply *rep, const char **data, size_t *len, char *msg,
               size_t msglen)
{
    static const char *const names[] = {"GET", "SET", "DEL", "AUTH", "PING", "EVAL"};
    *data = NULL;
    *len = 0;
    msg[0] = 0;
    if (!rep) return rcd_fail(RCD_EIO, msg, msglen, "no reply");
    if (rep->type == REDIS_REPLY_ERROR) {
        const char *e = rep->str ? rep->str : "";
        int n = (int)(rep->len < 300 ? rep->len : 300);
        /* AUTH refused, or a server that wants it: only a configuration change helps. */
        bool auth = kind == RDS_OP_AUTH || !strncmp(e, "NOAUTH", 6) ||
                    !strncmp(e, "WRONGPASS", 9) ||
                    (kind == RDS_OP_PING && !strncmp(e, "NOPERM", 6));
        return rcd_fail(auth ? RCD_EPRECONDITION : RCD_EIO, msg, msglen, "redis %s: %.*s",
                        names[kind], n, e);
    }
    bool ok;
    switch (kind) {
    case RDS_OP_GET:
        ok = rep->type == REDIS_REPLY_NIL || rep->type == REDIS_REPLY_STRING;
        if (ok && rep->type == REDIS_REPLY_STRING) {
            *data = rep->str ? rep->str : "";
            *len = rep->len;
        }
        break;
    case RDS_OP_DEL:
        ok = rep->type == REDIS_REPLY_INTEGER;
        break;
    case RDS_OP_EVAL:
        ok = rep->type == REDIS_REPLY_STRING;
        if (ok) {
            *data = rep->str ? rep->str : "";
            *len = rep->len;
        }
        break;
    case RDS_OP_PING:
        ok = rep->type == REDIS_REPLY_STATUS && rep->len == 4 && !memcmp(rep->str, "PONG", 4);
        break;
    default: /* SET, AUTH */
        ok = rep->type == REDIS_REPLY_STATUS && rep->len == 2 && !memcmp(rep->str, "OK", 2);
        break;
    }
    if (!ok)
        return rcd_fail(RCD_EIO, msg, msglen, "redis %s: unexpected reply (type %d)", names[kind],
                        rep->type);
    return 0;
}

static redisReplyObjectFunctions g_fn;
static void *(*g_create_array)(const redisReadTask *, int);

static void *create_array(const redisReadTask *t, int elements)
{
    return elements > RDS_MAX_ELEMENTS ? NULL : g_create_array(t, elements);
}

static void fn_init(void)
{
    redisReader *r = redisReaderCreate();
    if (!r) return;
    g_fn = *r->fn; /* hiredis's own functions, but for arrays (one table, never freed) */
    g_create_array = g_fn.createArray;
    g_fn.createArray = create_array;
    redisReaderFree(r);
}

redisReader *rds__reader_new(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fn_init);
    redisReader *r = g_create_array ? redisReaderCreate() : NULL;
    if (r) r->fn = &g_fn;
    return r;
}

/* ---- the transport ----------------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status)
{
    rds_wr_t *w = req->data;
    rds_conn_t *c = w->c;
    free(w->buf);
    free(w);
    /* Cancelled writes come back while the handle closes: c is still allocated, c->r NULL. */
    if (status < 0 && c->r) conn_fail(c, false, "write: %s", uv_strerror(status));
}

/* Writes buf (taken over) to the socket; libuv queues it while the TCP connect is pending. */
static void sock_write(rds_conn_t *c, char *buf, size_t len)
{
    rds_wr_t *w = malloc(sizeof(*w));
    if (!w) {
        free(buf);
        conn_defer(c, "out of memory");
        return;
    }
    w->c = c;
    w->buf = buf;
    w->req.data = w;
    uv_buf_t b = uv_buf_init(buf, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc) {
        free(buf);
        free(w);
        conn_defer(c, uv_strerror(rc));
    }
}

static void dispatch(rds_conn_t *c, rds_op_t *op, const redisReply *rep);

/* A top-level bulk reply ("$<n>\r\n") whose head has arrived: room for all of it in the
 * reader's buffer at once. Otherwise sds grows it 1 MB at a time past 1 MB, and each growth
 * may copy what has arrived (a 20 MB state: ~20 copies). Best effort: on failure sds grows. */
static void reserve_bulk(redisReader *r)
{
    if (r->ridx != -1 || r->len - r->pos < 4 || r->buf[r->pos] != '$') return;
    unsigned long long n = 0;
    size_t i = r->pos + 1;
    for (; i < r->len && r->buf[i] >= '0' && r->buf[i] <= '9' && n <= RDS_MAX_BUFFERED; i++)
        n = n * 10 + (unsigned)(r->buf[i] - '0');
    if (i >= r->len || r->buf[i] != '\r' || n > RDS_MAX_BUFFERED) return;
    size_t want = (i - r->pos) + 2 + (size_t)n + 2, have = r->len - r->pos;
    if (want <= have || sdsavail(r->buf) >= want - have) return;
    sds b = sdsMakeRoomFor(r->buf, want - have);
    if (b) r->buf = b;
}

/* A GET's bulk reply of at least this many bytes bypasses hiredis (bulk_start). */
#define RDS_BULK_DIRECT (64u << 10)

/* The direct bulk is complete: the oldest command (the GET) gets it as a string reply, whose
 * buffer its callback may take (rds_take). */
static void bulk_done(rds_conn_t *c)
{
    char *b = c->bulk;
    size_t n = c->bulk_need - 2;
    c->bulk = NULL;
    if (b[n] != '\r' || b[n + 1] != '\n') {
        free(b);
        conn_fail(c, false, "protocol error: a bulk reply not ended by CRLF");
        return;
    }
    b[n] = 0;
    rds_op_t *op = c->head;
    if (!(c->head = op->next)) c->tail = &c->head;
    redisReply rep = {.type = REDIS_REPLY_STRING, .str = b, .len = n};
    dispatch(c, op, &rep);
    free(rep.str); /* NULL if the callback took it */
    free(op);
}

/* When the oldest command is a GET and its reply, a bulk string of RDS_BULK_DIRECT bytes or
 * more, starts at the reader's unparsed bytes: takes it out of hiredis into a buffer of its own
 * (reserved whole at once), which the rest of it is read into directly (on_alloc), instead of
 * through the reader's buffer and then a copy into hiredis's reply object. 1: started; 0: not
 * such a reply (hiredis parses it); -1: its head (`$<n>\r\n`) is not complete yet. */
static int bulk_start(rds_conn_t *c)
{
    redisReader *r = c->reader;
    if (c->bulk || !c->head || c->head->kind != RDS_OP_GET || r->ridx != -1) return 0;
    const char *p = r->buf + r->pos;
    size_t avail = r->len - r->pos, i = 1;
    if (avail == 0) return -1;
    if (p[0] != '$') return 0;
    unsigned long long n = 0;
    for (; i < avail && p[i] >= '0' && p[i] <= '9' && i < 12; i++)
        n = n * 10 + (unsigned)(p[i] - '0');
    if (i + 1 >= avail) return i < 12 ? -1 : 0;
    if (i == 1 || p[i] != '\r' || p[i + 1] != '\n' || n < RDS_BULK_DIRECT || n > RDS_MAX_BUFFERED)
        return 0;
    char *b = malloc((size_t)n + 2);
    if (!b) return 0; /* hiredis takes it */
    size_t head = i + 2, take = avail - head;
    if (take > n + 2) take = (size_t)n + 2;
    memcpy(b, p + head, take);
    r->pos += head + take;
    c->bulk = b;
    c->bulk_need = (size_t)n + 2;
    c->bulk_have = take;
    return 1;
}

/* Parses what arrived; each reply answers the oldest command. */
static void feed(rds_conn_t *c, const char *buf, size_t n)
{
    if (c->bulk) { /* TLS: plaintext for the direct bulk */
        size_t k = c->bulk_need - c->bulk_have < n ? c->bulk_need - c->bulk_have : n;
        memcpy(c->bulk + c->bulk_have, buf, k);
        c->bulk_have += k;
        buf += k;
        n -= k;
        if (c->bulk_have < c->bulk_need) return;
        bulk_done(c);
        if (!c->r) return;
    }
    if (n && redisReaderFeed(c->reader, buf, n) != REDIS_OK) {
        conn_fail(c, false, "out of memory");
        return;
    }
    reserve_bulk(c->reader);
    if (c->reader->len - c->reader->pos > RDS_MAX_BUFFERED) {
        conn_fail(c, false, "protocol error: a reply over %llu bytes", RDS_MAX_BUFFERED);
        return;
    }
    while (c->r) {
        int bs = bulk_start(c);
        if (bs < 0 || (bs > 0 && c->bulk_have < c->bulk_need)) return;
        if (bs > 0) {
            bulk_done(c);
            continue;
        }
        void *rep = NULL;
        if (redisReaderGetReply(c->reader, &rep) != REDIS_OK) {
            conn_fail(c, false, "protocol error: %s",
                      c->reader->err == REDIS_ERR_OOM
                          ? "out of memory, or an array over " RDS_STR(RDS_MAX_ELEMENTS) " elements"
                          : c->reader->errstr);
            return;
        }
        if (!rep) return;
        rds_op_t *op = c->head;
        if (!op) {
            freeReplyObject(rep);
            conn_fail(c, false, "protocol error: a reply to no command");
            return;
        }
        if (!(c->head = op->next)) c->tail = &c->head;
        dispatch(c, op, rep);
        freeReplyObject(rep);
        free(op);
    }
}

#ifdef RCD_HAVE_OPENSSL
/* Why the last OpenSSL call failed, in words. */
static void tls_why(rds_conn_t *c, char *buf, size_t len)
{
    long v = SSL_get_verify_result(c->ssl);
    unsigned long e = ERR_get_error();
    if (v != X509_V_OK)
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    else if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "connection closed during the handshake");
    ERR_clear_error();
}

/* Moves SSL's output to the socket. */
static void tls_flush(rds_conn_t *c)
{
    size_t n;
    while (c->r && (n = BIO_ctrl_pending(c->net_out)) > 0) {
        char *b = malloc(n);
        if (!b) {
            conn_defer(c, "out of memory");
            return;
        }
        int k = BIO_read(c->net_out, b, (int)n);
        if (k <= 0) {
            free(b);
            return;
        }
        sock_write(c, b, (size_t)k);
    }
}

/* Advances the handshake, sends queued plaintext, decrypts what arrived. */
static void tls_pump(rds_conn_t *c)
{
    char why[256];
    ERR_clear_error();
    if (!c->up) {
        int rc = SSL_do_handshake(c->ssl);
        if (rc != 1) {
            int e = SSL_get_error(c->ssl, rc);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                tls_why(c, why, sizeof(why));
                tls_flush(c); /* the alert, if any */
                conn_fail(c, SSL_get_verify_result(c->ssl) != X509_V_OK, "TLS handshake failed: %s",
                          why);
                return;
            }
            tls_flush(c);
            return;
        }
        c->up = true;
    }
    if (c->pend_len) {
        int k = SSL_write(c->ssl, c->pend, (int)c->pend_len);
        if (k <= 0) {
            tls_why(c, why, sizeof(why));
            conn_fail(c, false, "TLS write failed: %s", why);
            return;
        }
        /* memory BIOs never block: SSL_write takes it all */
        free(c->pend);
        c->pend = NULL;
        c->pend_len = 0;
    }
    for (;;) {
        int k = SSL_read(c->ssl, c->rbuf, (int)sizeof(c->rbuf));
        if (k > 0) {
            feed(c, c->rbuf, (size_t)k);
            if (!c->r) return;
            continue;
        }
        int e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            conn_fail(c, false, "closed by the server (TLS close_notify)");
            return;
        }
        tls_why(c, why, sizeof(why));
        /* TLS 1.3: the server judges our certificate after our side of the handshake is done,
         * and says so with an alert here ("certificate required", "bad certificate"). */
        conn_fail(c, strstr(why, "certificate") != NULL, "TLS read failed: %s", why);
        return;
    }
    tls_flush(c);
}
#endif

/* Sends one encoded command (buf taken over), or queues it until the connection is up. */
static void send_buf(rds_conn_t *c, char *buf, size_t len)
{
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl && c->up) { /* the queue went out when the handshake finished */
        ERR_clear_error();
        int k = SSL_write(c->ssl, buf, (int)len);
        free(buf);
        if (k <= 0) {
            char why[256], m[300];
            tls_why(c, why, sizeof(why));
            snprintf(m, sizeof(m), "TLS write failed: %s", why);
            conn_defer(c, m);
            return;
        }
        tls_flush(c);
        return;
    }
#endif
    if (c->up) {
        sock_write(c, buf, len);
        return;
    }
    char *p = realloc(c->pend, c->pend_len + len);
    if (!p) {
        free(buf);
        conn_defer(c, "out of memory");
        return;
    }
    memcpy(p + c->pend_len, buf, len);
    c->pend = p;
    c->pend_len += len;
    free(buf);
}

/* A RESP command: an array of bulk strings. A part may be split in two pieces (SET's value is
 * the checkpoint header then the state), so the value is copied once. */
typedef rds_val_t rds_arg_t;

static char *encode(int argc, const rds_arg_t *argv, size_t *out_len)
{
    size_t n = 32;
    for (int i = 0; i < argc; i++)
        n += 32 + argv[i].alen + argv[i].blen;
    char *buf = malloc(n), *p = buf;
    if (!buf) return NULL;
    p += sprintf(p, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        p += sprintf(p, "$%zu\r\n", argv[i].alen + argv[i].blen);
        if (argv[i].alen) memcpy(p, argv[i].a, argv[i].alen);
        p += argv[i].alen;
        if (argv[i].blen) memcpy(p, argv[i].b, argv[i].blen);
        p += argv[i].blen;
        *p++ = '\r';
        *p++ = '\n';
    }
    *out_len = (size_t)(p - buf);
    return buf;
}

/* Queues a command on c and its reply's op (a send that fails is reported later, by the
 * watchdog); false when out of memory before anything was queued. */
static bool send_cmd(rds_conn_t *c, rds_op_kind_t kind, rds_cb cb, void *user, int argc,
                     const rds_arg_t *argv)
{
    size_t len;
    rds_op_t *op = malloc(sizeof(*op));
    char *buf = op ? encode(argc, argv, &len) : NULL;
    if (!buf) {
        free(op);
        return false;
    }
    *op = (rds_op_t){.kind = kind, .cb = cb, .user = user};
    *c->tail = op;
    c->tail = &op->next;
    send_buf(c, buf, len);
    return true;
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

static void conn_fail(rds_conn_t *c, bool config, const char *fmt, ...)
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

static void dispatch(rds_conn_t *c, rds_op_t *op, const redisReply *rep)
{
    rds_t *r = c->r;
    const char *data;
    size_t len;
    char msg[400];
    int rc = rds__reply(op->kind, rep, &data, &len, msg, sizeof(msg));
    if (op->kind == RDS_OP_AUTH || op->kind == RDS_OP_PING) {
        if (rc == RCD_EPRECONDITION) {
            conn_fail(c, true, "%s%s", msg,
                      r->pass ? "" : " (no password given: --redis-password-file)");
            return;
        }
        if (rc) {
            conn_fail(c, false, "%s", msg);
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
        conn_fail(c, false, "%s",
                  n == UV_EOF ? "connection closed by the server" : uv_strerror((int)n));
        return;
    }
    if (n == 0) return;
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl) {
        if (BIO_write(c->net_in, buf->base, (int)n) != (int)n) {
            conn_fail(c, false, "out of memory");
            return;
        }
        tls_pump(c);
        return;
    }
#endif
    if (c->bulk && buf->base == c->bulk + c->bulk_have) {
        if ((c->bulk_have += (size_t)n) == c->bulk_need) {
            bulk_done(c);
            if (c->r) feed(c, NULL, 0); /* replies that arrived behind it, already buffered */
        }
        return;
    }
    feed(c, buf->base, (size_t)n);
}

static void on_connected(uv_connect_t *req, int status)
{
    rds_conn_t *c = req->data;
    if (!c->r) return; /* dropped meanwhile */
    if (status < 0) {
        conn_fail(c, false, "connect: %s", uv_strerror(status));
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        conn_fail(c, false, "read: %s", uv_strerror(rc));
        return;
    }
#ifdef RCD_HAVE_OPENSSL
    if (c->ssl) {
        tls_pump(c); /* ClientHello; the queued commands once the handshake is done */
        return;
    }
#endif
    c->up = true;
    if (c->pend_len) {
        sock_write(c, c->pend, c->pend_len);
        c->pend = NULL;
        c->pend_len = 0;
    }
}

static void connect_to(rds_conn_t *c, const struct sockaddr *sa)
{
    c->connect.data = c;
    int rc = uv_tcp_connect(&c->connect, &c->tcp, sa, on_connected);
    if (rc) conn_fail(c, false, "connect: %s", uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    rds_conn_t *c = req->data;
    if (c) c->gai = NULL;
    if (c && status < 0)
        conn_fail(c, false, "resolving %s: %s", c->r->host, uv_strerror(status));
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
            conn_fail(c, false, "TLS: out of memory");
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
            conn_fail(c, true, "TLS: cannot verify against the name '%s'", r->name);
            return;
        }
    }
#endif
    if (r->pass || r->user) {
        const char *u = r->user, *p = r->pass ? r->pass : "";
        rds_arg_t a[3] = {
            {"AUTH", NULL, 4, 0}, {u, NULL, u ? strlen(u) : 0, 0}, {p, NULL, strlen(p), 0}};
        if (!u) a[1] = a[2];
        if (!send_cmd(c, RDS_OP_AUTH, NULL, NULL, u ? 3 : 2, a)) return;
    }
    rds_arg_t ping = {"PING", NULL, 4, 0};
    if (!send_cmd(c, RDS_OP_PING, NULL, NULL, 1, &ping)) return;
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
        conn_fail(c, false, "out of memory");
        return;
    }
    g->data = c;
    c->gai = g;
    int rc = uv_getaddrinfo(r->loop, g, on_resolved, r->host, port, &hints);
    if (rc) {
        c->gai = NULL;
        free(g);
        conn_fail(c, false, "resolving %s: %s", r->host, uv_strerror(rc));
    }
}

static void watchdog(uv_timer_t *t)
{
    rds_t *r = t->data;
    uint64_t now = uv_hrtime();
    if (r->c && r->c->failed)
        conn_fail(r->c, false, "%s", r->c->fail_msg);
    else if (r->c && !r->ready && now - r->c->started_ns > RDS_TIMEOUT_NS)
        conn_fail(r->c, false, "not ready within 2 s (connect, TLS, AUTH, PING)");
    else if (r->c && r->inflight > 0 && now - r->progress_ns > RDS_TIMEOUT_NS)
        conn_fail(r->c, false, "no reply within 2 s");
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
    if (!send_cmd(c, kind, cb, user, argc, argv)) return RCD_ENOMEM; /* no callback follows */
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
