/* statestore: the shared tier's Redis connection (hiredis async + its libuv adapter). */
#include "statestore/store_redis.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"

#ifndef RCD_HAVE_HIREDIS
/* Built without libhiredis-dev: asking for a shared tier is a clear error at startup. */
int rds_open(uv_loop_t *loop, const char *addr, rds_t **out, char *err, size_t errlen)
{
    (void)loop;
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
void rds_close(rds_t *r) {}
#else
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

/* Our own libuv binding rather than hiredis's adapters/libuv.h: in hiredis 0.14 that adapter
 * drops poll errors (libuv reports a refused or reset socket as status UV_EBADF), so a failed
 * connect or a reset connection would never be noticed and its callbacks never fire. */
typedef struct rds_ev {
    redisAsyncContext *ac;
    uv_poll_t handle;
    int events;
    bool failed; /* the socket could not be watched: the watchdog drops the connection */
} rds_ev_t;

struct rds {
    uv_loop_t *loop;
    char host[256];
    int port;
    redisAsyncContext *ac; /* NULL while down */
    bool connected;
    uint64_t last_try_ns;
    int inflight;         /* replies awaited: only then does the connection keep the loop alive */
    uint64_t progress_ns; /* last reply, or when waiting began */
    uv_timer_t watchdog;  /* drops a connection that stops answering */
};

/* A Redis that accepts but does not answer must not stall commits (and drains) forever. */
#define RDS_TIMEOUT_NS 2000000000ull

typedef struct rds_op {
    rds_t *r;
    rds_cb cb;
    void *user;
} rds_op_t;

static void ev_poll(uv_poll_t *h, int status, int events)
{
    rds_ev_t *p = h->data;
    int ev = status ? p->events : events; /* on an error, let hiredis find out what it is */
    if (p->ac && (ev & UV_READABLE)) redisAsyncHandleRead(p->ac);
    if (p->ac && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
}

static void ev_update(rds_ev_t *p, int add, int del)
{
    p->events = (p->events | add) & ~del;
    if (p->events) {
        /* Not from inside hiredis's hook: the watchdog drops it (and conn() reconnects). */
        if (uv_poll_start(&p->handle, p->events, ev_poll)) p->failed = true;
    } else
        uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d)
{
    ev_update(d, UV_READABLE, 0);
}
static void ev_del_read(void *d)
{
    ev_update(d, 0, UV_READABLE);
}
static void ev_add_write(void *d)
{
    ev_update(d, UV_WRITABLE, 0);
}
static void ev_del_write(void *d)
{
    ev_update(d, 0, UV_WRITABLE);
}

static void ev_closed(uv_handle_t *h)
{
    free(h->data);
}

static void ev_cleanup(void *d)
{
    rds_ev_t *p = d;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, ev_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    rds_ev_t *p = calloc(1, sizeof(*p));
    if (!p) return REDIS_ERR;
    if (uv_poll_init_socket(loop, &p->handle, ac->c.fd) != 0) {
        free(p);
        return REDIS_ERR;
    }
    p->ac = ac;
    p->handle.data = p;
    ac->ev.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return REDIS_OK;
}

static void set_ref(rds_t *r)
{
    if (!r->ac || !r->ac->ev.data) return;
    rds_ev_t *ev = r->ac->ev.data;
    if (r->inflight)
        uv_ref((uv_handle_t *)&ev->handle);
    else
        uv_unref((uv_handle_t *)&ev->handle);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rds_t *r = ac->data;
    (void)status;
    if (r && r->ac == ac) { /* hiredis frees the context */
        r->ac = NULL;
        r->connected = false;
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rds_t *r = ac->data;
    if (!r || r->ac != ac) return;
    if (status == REDIS_OK)
        r->connected = true;
    else
        r->ac = NULL; /* freed by hiredis */
}

/* The connection if it is up. Otherwise starts (at most once a second) a new one in the
 * background and returns NULL: commands are only ever queued on a live connection. */
static void drop(rds_t *r);

static redisAsyncContext *conn(rds_t *r)
{
    if (r->ac && r->connected) return r->ac;
    uint64_t now = uv_hrtime();
    if (r->last_try_ns && now - r->last_try_ns < 1000000000ull) return NULL;
    drop(r); /* one still connecting after a second: give up on it */
    r->last_try_ns = now;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac) return NULL;
    if (ac->err || ev_attach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = r;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    set_ref(r); /* an idle connection must not keep the loop alive (the daemon's drain) */
    /* A command makes hiredis watch the socket, which is how it learns the connect's fate. */
    redisAsyncCommand(ac, NULL, NULL, "PING");
    return NULL;
}

/* Frees the connection; its callbacks fire with a NULL reply (from inside this call). */
static void drop(rds_t *r)
{
    redisAsyncContext *ac = r->ac;
    if (!ac) return;
    r->ac = NULL;
    r->connected = false;
    ac->data = NULL;
    redisAsyncFree(ac); /* the poll handle closes on the loop */
}

static void watchdog(uv_timer_t *t)
{
    rds_t *r = t->data;
    const rds_ev_t *ev = r->ac ? r->ac->ev.data : NULL;
    if (r->ac &&
        ((ev && ev->failed) || (r->inflight > 0 && uv_hrtime() - r->progress_ns > RDS_TIMEOUT_NS)))
        drop(r);
}

int rds_open(uv_loop_t *loop, const char *addr, rds_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *colon = strrchr(addr, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == addr || (size_t)(colon - addr) >= 256 || *end || port < 1 ||
        port > 65535)
        return rcd_fail(RCD_EINVAL, err, errlen, "redis address '%s' is not host:port", addr);
    rds_t *r = calloc(1, sizeof(*r));
    if (!r) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    r->loop = loop;
    memcpy(r->host, addr, (size_t)(colon - addr));
    r->port = (int)port;
    uv_timer_init(loop, &r->watchdog);
    r->watchdog.data = r;
    uv_timer_start(&r->watchdog, watchdog, 500, 500);
    uv_unref((uv_handle_t *)&r->watchdog);
    conn(r);
    *out = r;
    return 0;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    rds_op_t *op = priv;
    redisReply *rep = reply;
    (void)ac;
    op->r->inflight--;
    op->r->progress_ns = uv_hrtime();
    set_ref(op->r);
    if (!rep)
        op->cb(op->user, RCD_EUNAVAILABLE, NULL, 0,
               "redis connection lost (or no reply within 2 s)");
    else if (rep->type == REDIS_REPLY_ERROR)
        op->cb(op->user, RCD_EIO, NULL, 0, rep->str ? rep->str : "redis error");
    else if (rep->type == REDIS_REPLY_STRING)
        op->cb(op->user, 0, rep->str, rep->len, "");
    else
        op->cb(op->user, 0, NULL, 0, "");
    free(op);
}

static int command(rds_t *r, rds_cb cb, void *user, int argc, const char **argv, const size_t *lens)
{
    redisAsyncContext *ac = conn(r);
    if (!ac) return RCD_EUNAVAILABLE;
    rds_op_t *op = NULL;
    if (cb) {
        if (!(op = malloc(sizeof(*op)))) return RCD_ENOMEM;
        op->r = r;
        op->cb = cb;
        op->user = user;
    }
    if (redisAsyncCommandArgv(ac, op ? on_reply : NULL, op, argc, argv, lens) != REDIS_OK) {
        free(op);
        return RCD_EUNAVAILABLE;
    }
    if (op) {
        if (r->inflight++ == 0) r->progress_ns = uv_hrtime();
        set_ref(r);
    }
    return 0;
}

int rds_set(rds_t *r, const char *key, const void *a, size_t alen, const void *b, size_t blen,
            rds_cb cb, void *user)
{
    char *v = malloc(alen + blen + 1);
    if (!v) return RCD_ENOMEM;
    memcpy(v, a, alen);
    if (blen) memcpy(v + alen, b, blen);
    const char *argv[3] = {"SET", key, v};
    size_t lens[3] = {3, strlen(key), alen + blen};
    int rc = command(r, cb, user, 3, argv, lens); /* hiredis copies the arguments */
    free(v);
    return rc;
}

int rds_get(rds_t *r, const char *key, rds_cb cb, void *user)
{
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, strlen(key)};
    return command(r, cb, user, 2, argv, lens);
}

void rds_del(rds_t *r, const char *key)
{
    const char *argv[2] = {"DEL", key};
    size_t lens[2] = {3, strlen(key)};
    command(r, NULL, NULL, 2, argv, lens);
}

static void rds_free(uv_handle_t *h)
{
    free(h->data);
}

void rds_close(rds_t *r)
{
    if (!r) return;
    drop(r);
    uv_close((uv_handle_t *)&r->watchdog, rds_free); /* r goes with the loop's next turn */
}
#endif
