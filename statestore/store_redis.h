/* statestore (private): the shared tier's Redis client — hiredis's async API on the store's
 * libuv loop (non-blocking sockets; nothing waits on the loop). One connection, reconnected
 * lazily (at most once a second) after it drops; while it is down every call fails at once
 * with RCD_EUNAVAILABLE and the store carries on with its disk tier. */
#ifndef RCD_STORE_REDIS_H
#define RCD_STORE_REDIS_H

#include <stddef.h>
#include <uv.h>

typedef struct rds rds_t;

/* rc 0 with the value (GET: data/len, NULL when the key is absent), or RCD_EUNAVAILABLE /
 * RCD_EIO with a message. data is valid during the call only. */
typedef void (*rds_cb)(void *user, int rc, const char *data, size_t len, const char *msg);

/* addr is "host:port"; connects in the background. RCD_EINVAL for a bad address. */
int rds_open(uv_loop_t *loop, const char *addr, rds_t **out, char *err, size_t errlen);
/* SET key (a ++ b). 0: cb follows; RCD_EUNAVAILABLE: not connected (no callback). */
int rds_set(rds_t *r, const char *key, const void *a, size_t alen, const void *b, size_t blen,
            rds_cb cb, void *user);
int rds_get(rds_t *r, const char *key, rds_cb cb, void *user);
void rds_del(rds_t *r, const char *key); /* fire and forget */
/* Outstanding callbacks fire with RCD_EUNAVAILABLE from inside this call; the handles close
 * (and r is freed) on the loop's next turn. A connection with replies outstanding and none
 * for 2 s is dropped the same way (its callbacks get RCD_EUNAVAILABLE). */
void rds_close(rds_t *r);

#endif
