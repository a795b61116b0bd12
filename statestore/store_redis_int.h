/* statestore: the Redis connection's internals, shared by store_redis.c (the connection's
 * life: connect, handshake, failures and reconnects, the watchdog, the API) and
 * store_redis_wire.c (what goes over it: commands encoded, replies parsed, TLS over memory
 * BIOs, large GET replies read directly). Only those two files include it. */
#ifndef RCD_STORE_REDIS_INT_H
#define RCD_STORE_REDIS_INT_H

#include "statestore/store_redis.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#ifdef RCD_HAVE_OPENSSL
#include <openssl/ssl.h>
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
    SSL_CTX *tls; /* NULL: plaintext */
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

typedef rds_val_t rds_arg_t;

/* store_redis.c */
/* Drops c's connection after a failure (config: one only a configuration change fixes), logs
 * it and schedules the next try; its waiting callers hear RCD_EUNAVAILABLE. */
void rds__conn_fail(rds_conn_t *c, bool config, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A reply (rep) to the oldest command (op, already unlinked): the handshake's, or a caller's. */
void rds__dispatch(rds_conn_t *c, rds_op_t *op, const redisReply *rep);

/* store_redis_wire.c */
/* Parses what arrived (plaintext); each reply answers the oldest command. */
void rds__feed(rds_conn_t *c, const char *buf, size_t n);
/* The direct read of a GET's large bulk reply (c->bulk) is complete: the oldest command gets
 * it as a string reply, whose buffer its callback may take (rds_take). */
void rds__bulk_done(rds_conn_t *c);
/* Writes buf (taken over) to the socket; libuv queues it while the TCP connect is pending. */
void rds__sock_write(rds_conn_t *c, char *buf, size_t len);
/* Queues a command on c and its reply's op (a send that fails is reported later, by the
 * watchdog); false when out of memory before anything was queued. */
bool rds__send_cmd(rds_conn_t *c, rds_op_kind_t kind, rds_cb cb, void *user, int argc,
                   const rds_arg_t *argv);
#ifdef RCD_HAVE_OPENSSL
/* Advances the handshake, sends queued plaintext, decrypts what arrived. */
void rds__tls_pump(rds_conn_t *c);
#endif

#endif
