/* statestore: what goes over the Redis connection — commands encoded as RESP arrays of bulk
 * strings, replies parsed by hiredis's redisReader (with a cap on array sizes), a GET's large
 * bulk reply read straight into a buffer of its own, and TLS with OpenSSL over memory BIOs.
 * The connection's life (connect, handshake, failures, the API) is store_redis.c. */
#ifdef RCD_HAVE_HIREDIS
#include "statestore/store_redis_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/sds.h>
#ifdef RCD_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/x509v3.h>
#endif

#include "common/rcd_error.h"

static void conn_defer(rds_conn_t *c, const char *msg)
{
    if (c->failed) return;
    c->failed = true;
    snprintf(c->fail_msg, sizeof(c->fail_msg), "%s", msg);
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
    if (status < 0 && c->r) rds__conn_fail(c, false, "write: %s", uv_strerror(status));
}

/* Writes buf (taken over) to the socket; libuv queues it while the TCP connect is pending. */
void rds__sock_write(rds_conn_t *c, char *buf, size_t len)
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
void rds__bulk_done(rds_conn_t *c)
{
    char *b = c->bulk;
    size_t n = c->bulk_need - 2;
    c->bulk = NULL;
    if (b[n] != '\r' || b[n + 1] != '\n') {
        free(b);
        rds__conn_fail(c, false, "protocol error: a bulk reply not ended by CRLF");
        return;
    }
    b[n] = 0;
    rds_op_t *op = c->head;
    if (!(c->head = op->next)) c->tail = &c->head;
    redisReply rep = {.type = REDIS_REPLY_STRING, .str = b, .len = n};
    rds__dispatch(c, op, &rep);
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
void rds__feed(rds_conn_t *c, const char *buf, size_t n)
{
    if (c->bulk) { /* TLS: plaintext for the direct bulk */
        size_t k = c->bulk_need - c->bulk_have < n ? c->bulk_need - c->bulk_have : n;
        memcpy(c->bulk + c->bulk_have, buf, k);
        c->bulk_have += k;
        buf += k;
        n -= k;
        if (c->bulk_have < c->bulk_need) return;
        rds__bulk_done(c);
        if (!c->r) return;
    }
    if (n && redisReaderFeed(c->reader, buf, n) != REDIS_OK) {
        rds__conn_fail(c, false, "out of memory");
        return;
    }
    reserve_bulk(c->reader);
    if (c->reader->len - c->reader->pos > RDS_MAX_BUFFERED) {
        rds__conn_fail(c, false, "protocol error: a reply over %llu bytes", RDS_MAX_BUFFERED);
        return;
    }
    while (c->r) {
        int bs = bulk_start(c);
        if (bs < 0 || (bs > 0 && c->bulk_have < c->bulk_need)) return;
        if (bs > 0) {
            rds__bulk_done(c);
            continue;
        }
        void *rep = NULL;
        if (redisReaderGetReply(c->reader, &rep) != REDIS_OK) {
            rds__conn_fail(
                c, false, "protocol error: %s",
                c->reader->err == REDIS_ERR_OOM
                    ? "out of memory, or an array over " RDS_STR(RDS_MAX_ELEMENTS) " elements"
                    : c->reader->errstr);
            return;
        }
        if (!rep) return;
        rds_op_t *op = c->head;
        if (!op) {
            freeReplyObject(rep);
            rds__conn_fail(c, false, "protocol error: a reply to no command");
            return;
        }
        if (!(c->head = op->next)) c->tail = &c->head;
        rds__dispatch(c, op, rep);
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
        rds__sock_write(c, b, (size_t)k);
    }
}

/* Advances the handshake, sends queued plaintext, decrypts what arrived. */
void rds__tls_pump(rds_conn_t *c)
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
                rds__conn_fail(c, SSL_get_verify_result(c->ssl) != X509_V_OK,
                               "TLS handshake failed: %s", why);
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
            rds__conn_fail(c, false, "TLS write failed: %s", why);
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
            rds__feed(c, c->rbuf, (size_t)k);
            if (!c->r) return;
            continue;
        }
        int e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            rds__conn_fail(c, false, "closed by the server (TLS close_notify)");
            return;
        }
        tls_why(c, why, sizeof(why));
        /* TLS 1.3: the server judges our certificate after our side of the handshake is done,
         * and says so with an alert here ("certificate required", "bad certificate"). */
        rds__conn_fail(c, strstr(why, "certificate") != NULL, "TLS read failed: %s", why);
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
        rds__sock_write(c, buf, len);
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

/* A RESP command: an array of bulk strings; a part in up to two pieces (rds_arg_t). */

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
bool rds__send_cmd(rds_conn_t *c, rds_op_kind_t kind, rds_cb cb, void *user, int argc,
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

#endif
