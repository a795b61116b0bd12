/* statestore (private): the shared tier's Redis client on the store's libuv loop (non-blocking;
 * nothing waits on the loop). hiredis parses the replies; the transport is a libuv TCP handle,
 * with OpenSSL over memory BIOs when TLS is on. One connection: AUTH (and PING) first, then
 * commands; while it is down every call fails at once with RCD_EUNAVAILABLE and the store
 * carries on with its disk tier. Reconnects in the background with backoff. */
#ifndef RCD_STORE_REDIS_H
#define RCD_STORE_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "statestore/store.h"

typedef struct rds rds_t;

/* rc 0 with the value (GET: data/len, NULL when the key is absent), or RCD_EUNAVAILABLE /
 * RCD_EIO with a message. data is valid during the call only. */
typedef void (*rds_cb)(void *user, int rc, const char *data, size_t len, const char *msg);

/* Where the connection reports its state changes (connected, refused, TLS or AUTH failures):
 * the store's warn_cb, session id NULL. cb may be NULL. */
typedef struct rds_log {
    void (*cb)(void *user, const char *session_id, const char *msg);
    void *user;
} rds_log_t;

/* addr is "host:port"; connects in the background. RCD_EINVAL for a bad address or option,
 * RCD_EIO for an unreadable CA/cert/key file, RCD_EUNSUPPORTED for TLS in a build without it. */
int rds_open(uv_loop_t *loop, const char *addr, const store_redis_opts_t *opts,
             const rds_log_t *log, rds_t **out, char *err, size_t errlen);
/* SET key (a ++ b). 0: cb follows; RCD_EUNAVAILABLE: not connected (no callback). */
int rds_set(rds_t *r, const char *key, const void *a, size_t alen, const void *b, size_t blen,
            rds_cb cb, void *user);
int rds_get(rds_t *r, const char *key, rds_cb cb, void *user);
/* Inside a GET callback, with its data: takes the reply's buffer (malloc'd, data[len] is a NUL),
 * which the caller then frees; NULL (the caller copies) for anything else. */
void *rds_take(rds_t *r, const char *data);
void rds_del(rds_t *r, const char *key); /* fire and forget */
/* One argument of rds_eval: the bytes a (alen) then b (blen), sent as one bulk string. */
typedef struct rds_val {
    const void *a, *b;
    size_t alen, blen;
} rds_val_t;
/* EVAL script 2 key1 key2 args...: the script's reply must be a bulk string (data/len); a
 * reply of another type or an error is RCD_EIO. 0: cb follows; RCD_EUNAVAILABLE: not connected
 * (no callback). */
int rds_eval(rds_t *r, const char *script, const char *key1, const char *key2, int nargs,
             const rds_val_t *args, rds_cb cb, void *user);
/* The connection has passed its handshake: a command sent now gets an answer or, if the
 * connection fails meanwhile, RCD_EUNAVAILABLE. */
bool rds_ready(const rds_t *r);
/* Outstanding callbacks fire with RCD_EUNAVAILABLE from inside this call; the handles close
 * (and r is freed) on the loop's next turn. A connection with replies outstanding and none
 * for 2 s is dropped the same way (its callbacks get RCD_EUNAVAILABLE). */
void rds_close(rds_t *r);

/* What one reply means for the command it answers (the fuzz target drives this). */
typedef enum {
    RDS_OP_GET,
    RDS_OP_SET,
    RDS_OP_DEL,
    RDS_OP_AUTH,
    RDS_OP_PING,
    RDS_OP_EVAL
} rds_op_kind_t;
struct redisReply;
/* 0: the expected reply (GET: data and len give the bulk string, data NULL for nil; EVAL: a
 * bulk string);
 * RCD_EPRECONDITION: AUTH refused, or the server wants AUTH (NOAUTH / WRONGPASS / NOPERM on the
 * handshake); RCD_EIO: an error reply or a reply of another type. msg says which (valid while rep
 * is). */
int rds__reply(rds_op_kind_t kind, const struct redisReply *rep, const char **data, size_t *len,
               char *msg, size_t msglen);

/* The reply parser the connection uses: hiredis's redisReader, except that an array announcing
 * more than RDS_MAX_ELEMENTS elements is a protocol error (hiredis 0.14 callocs whatever count a
 * reply announces, up to 2^31 pointers; no reply of ours is an array at all: our scripts answer
 * with one bulk string). NULL: no memory. */
#define RDS_MAX_ELEMENTS 1024
struct redisReader *rds__reader_new(void);

#endif
