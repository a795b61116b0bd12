/* daemon: private types shared by the daemon's files — the server context owned by the loop
 * thread, the per-call record, and the completion plumbing (CQ thread → uv_async → loop). */
#ifndef DMN_H
#define DMN_H

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/dmn_auth.h"
#include "daemon/dmn_log.h"
#include "daemon/dmn_opts.h"
#include "daemon/dmn_validate.h"
#include "statestore/store.h"
#include "workers/tokenizer/chat_tmpl.h"
#include "workers/tokenizer/tok.h"
#include "workers/wrk.h"

typedef struct dmn_server dmn_server_t;
typedef struct dmn_call dmn_call_t;
typedef struct eng_runner eng_runner_t;

/* Methods served; DMN_M_UNKNOWN answers UNIMPLEMENTED. */
typedef enum dmn_method {
    DMN_M_LIST_MODELS,
    DMN_M_CREATE_SESSION,
    DMN_M_GET_SESSION,
    DMN_M_FORK_SESSION,
    DMN_M_DELETE_SESSION,
    DMN_M_TOKENIZE,
    DMN_M_DETOKENIZE,
    DMN_M_GENERATE,
    DMN_M_HEALTH_CHECK,
    DMN_M_HEALTH_WATCH,
    DMN_M__COUNT,
    DMN_M_UNKNOWN = DMN_M__COUNT,
} dmn_method_t;

/* A completion-queue tag: the loop calls cb(op, ok) once per started batch. */
typedef struct dmn_op {
    void (*cb)(struct dmn_op *op, bool ok);
} dmn_op_t;

/* A call's sink (dmn_sink_i): where its replies go when it did not come over gRPC (the HTTP
 * front, dmn_openai.h). Such a call has call == NULL and runs the same handlers (the Generate
 * turn, the unary methods) as a gRPC call: the handler calls dmn_call_send / dmn_call_reply /
 * dmn_call_fail as usual and they hand each reply to the sink:
 * - send(c, msg, final, rc, details): one reply. msg (NULL: none) is the method's response
 *   message: for Generate a GenerateResponse delta (new text of c->reply_text_len bytes when
 *   c->has_reply_text, the tokens and logprobs since the previous one); the final one carries
 *   finish_reason, usage and session_version. final: the call ends with status rc (0, or an
 *   RCD_E* code with details; a failed turn may send its text first). 0, or an error (the
 *   reply was not taken; the sink then also calls dmn_call_gone).
 *   Backpressure: one send is in flight at a time (c->send_busy); the sink calls
 *   dmn_call_sent(c, ok) exactly once per accepted send, once the bytes are written or the
 *   client is gone (never from inside send), and the turn
 *   sends the next delta then, coalescing what was generated meanwhile.
 * - cancel(c, rc, why): the server shuts down: end the call (the sink then calls
 *   dmn_call_gone unless the final reply was already sent).
 * - free(c): the call is freed; c->sink_user must not be used after.
 * The sink calls dmn_call_gone(c) when the client went away (connection closed). */
typedef struct dmn_sink_i {
    int (*send)(dmn_call_t *c, const ProtobufCMessage *msg, bool final, int rc,
                const char *details);
    void (*cancel)(dmn_call_t *c, int rc, const char *why);
    void (*free)(dmn_call_t *c);
} dmn_sink_i;

/* One accepted call. Freed when every started batch has completed and its owner (the
 * method handler, e.g. a Generate turn in the runner) has released it. */
struct dmn_call {
    dmn_server_t *srv;
    grpc_call *call;
    dmn_method_t method;
    char rid[40];         /* request id: x-request-id (dmn_meta.h) or generated */
    /* x-session-id (dmn_meta.h): a call whose request has a session_id field must carry the
     * same id when it sends the header (dmn_call_unpack) */
    bool has_sid_md, sid_md_bad;
    bool fetched_shared; /* the session was fetched from the shared tier for this call */
    char sid_md[STORE_ID_MAX + 1];
    uint64_t deadline_ns; /* uv_hrtime() clock, 0 = none */
    uint64_t start_ns;
    size_t text_len; /* the request's `text` length on the wire: it may hold NUL bytes */
    /* The next reply's `text` length (Detokenize, a Generate delta), set just before sending
     * it: the text may hold NUL bytes, which protobuf-c's strlen would cut (dmn_wire.h). */
    size_t reply_text_len;
    bool has_reply_text;
    /* API keys (dmn_tenant.c): the tenant whose session ids the call names (its scope: the
     * key's tenant, or an admin's x-recurd-tenant) and the key's own tenant; both "" when
     * the daemon runs without keys. */
    char tenant[STORE_TENANT_MAX + 1];
    char auth_tenant[STORE_TENANT_MAX + 1];
    int batches;   /* started, not yet completed */
    int holds;     /* owner references (handler state) */
    bool closed;   /* RECV_CLOSE completed */
    int cancelled; /* set by RECV_CLOSE: client cancelled or deadline */
    bool md_sent, status_sent, send_busy;
    dmn_op_t op_close, op_send;
    grpc_byte_buffer *send_bb; /* alive until op_send completes */
    grpc_slice status_details;
    /* initial metadata: x-request-id (echoed) and x-recurd-replica (the server's name) */
    grpc_metadata md_init[2];
    bool has_details;     /* status_details holds a slice reference */
    bool has_md_rid;      /* md_init[0].value holds a slice reference */
    int64_t retry_after_ms; /* > 0: an error status carries retry-after-ms and
                             * grpc-retry-pushback-ms trailing metadata (a quota's hint) */
    grpc_metadata md_trail[2];
    bool has_md_trail;                            /* md_trail's values hold slice references */
    void (*on_send_done)(dmn_call_t *c, bool ok); /* streaming: next message */
    void (*on_close)(dmn_call_t *c);              /* streaming: client went away */
    void *ext;                                    /* handler state */
    const dmn_sink_i *sink; /* NULL: a gRPC call; else call is NULL and replies go here */
    void *sink_user;        /* the sink's state (e.g. the HTTP request) */
    dmn_call_t *prev, *next;                      /* srv->calls */
};

struct dmn_server {
    dmn_opts_t *opts;
    uv_loop_t *loop;
    wrk_model_t *model;
    wrk_backend_t *backend;
    /* --speculate draft: the draft model and its CPU backend (2 x --slots slots; NULL when
     * the model's backend cannot speculate) */
    wrk_model_t *draft_model;
    wrk_backend_t *draft_backend;
    tok_t *tok;
    /* Chat requests (issue 16): the compiled template (--chat-template, else the model's
     * tokenizer_config.json chat_template, else CHAT_TMPL_DEFAULT; never NULL once loaded) and
     * the bos_token / eos_token strings it renders with ("" when the model names none). main
     * owns all three; read-only after start-up, so any thread may render. */
    struct chat_tmpl *chat_tmpl;
    char *bos_token, *eos_token;
    store_t *store;
    struct store_prefix *prefix; /* prompt-prefix snapshots; NULL: disabled */
    struct dmn_quota *quota;     /* per-tenant quotas (dmn_quota.h); NULL: none */
    eng_runner_t *runner;
    int kv_blocks, kv_block_tokens; /* the KV pool the engine sized for the backend (0: none) */
    int n_threads;                  /* the backend's threads, and where the figure came from */
    char threads_why[128];
    char model_id[128];
    char replica[256]; /* --replica-name, else the host name (x-recurd-replica) */
    int vocab;
    int32_t eos_id;

    grpc_server *server;
    grpc_completion_queue *cq;
    void *methods[DMN_M__COUNT]; /* registered method handles */
    pthread_t cq_thread;
    bool cq_thread_started;
    uv_async_t wake;
    pthread_mutex_t mu; /* guards the event vector below */
    struct dmn_ev {
        dmn_op_t *op;
        bool ok;
    } * evs, *evs_spare;
    size_t n_evs, cap_evs, cap_spare;

    int port;
    bool draining, shutting_down, server_shutdown_started;
    dmn_op_t op_shutdown;
    bool shutdown_done;
    uv_timer_t grace_timer;      /* the drain's grace period, then the shutdown's settle time */
    uv_timer_t quiet_timer;      /* a drain with nothing left waits for calls to stop coming */
    uint64_t last_call_ns;       /* uv_hrtime() of the last call (not a health probe) to arrive */
    uv_async_t sig_wake;     /* SIGTERM, SIGINT (drain) and SIGHUP (dmn_reload) arrived */
    struct dmn_tls *tls;     /* TLS files and their reload; NULL: plaintext (main owns it) */
    dmn_keys_t *keys;        /* --api-keys; NULL: no keys, sessions are unprotected */
    struct dmn_http *http;   /* the HTTP listener (dmn_http.h); NULL: none */
    uv_timer_t sweep_timer;  /* session expiry (dmn_expiry.c) */
    int64_t sweep_due_ms;    /* wall clock of its next run */
    uint64_t sweep_fixed_ms; /* RECURD_SESSION_SWEEP_MS (tests): a fixed period; 0: adaptive */
    dmn_call_t *calls;       /* every live call */
    int n_turns;             /* Generate calls not yet finished */
    uint64_t next_rid;
    int exit_code;
};

/* ---- dmn_server.c: call plumbing ------------------------------------------------------- */
int dmn_server_start(dmn_server_t *s, char *err, size_t errlen);
void dmn_server_drain(dmn_server_t *s, const char *why);
/* Starts a batch on the call with op as tag (counts it in c->batches). */
grpc_call_error dmn_call_batch(dmn_call_t *c, const grpc_op *ops, size_t n, dmn_op_t *op);
/* Unary: sends msg (may be NULL for an error) and the status, then frees the call. */
void dmn_call_reply(dmn_call_t *c, const ProtobufCMessage *msg);
void dmn_call_fail(dmn_call_t *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The next error status of c (dmn_call_fail, or a stream's final dmn_call_send) carries
 * `retry-after-ms: ms` and `grpc-retry-pushback-ms: ms` trailing metadata. */
void dmn_call_retry_after(dmn_call_t *c, int64_t ms);
/* Streaming: starts RECV_CLOSE (calls c->on_close when the client goes away). */
void dmn_call_watch_close(dmn_call_t *c);
/* Streaming: sends one message (with the status when final != 0); c->send_busy until done.
 * status_rc < 0 sends that error after msg (msg may be NULL). */
int dmn_call_send(dmn_call_t *c, const ProtobufCMessage *msg, bool final, int status_rc,
                  const char *details);
void dmn_call_hold(dmn_call_t *c);
void dmn_call_release(dmn_call_t *c); /* frees the call when nothing else holds it */
/* Unpacks the request payload and sets c->text_len; INVALID_ARGUMENT reply (returns NULL) on
 * failure and when a string field other than `text` holds a NUL byte (dmn_wire.h). */
ProtobufCMessage *dmn_call_unpack(dmn_call_t *c, grpc_byte_buffer *bb,
                                  const ProtobufCMessageDescriptor *d);
void dmn_server_turn_done(dmn_server_t *s); /* a Generate finished: drain may proceed */
/* A call with a sink (dmn_sink_i, not over gRPC) for method m: linked into s->calls with one
 * hold (the one its handler releases), a fresh request id (rid: NULL or "" picks one). NULL:
 * out of memory. */
dmn_call_t *dmn_call_local(dmn_server_t *s, dmn_method_t m, const dmn_sink_i *sink, void *user,
                           const char *rid);
/* Runs c's handler on req (packed as the gRPC payload would be: one unpack and validation
 * path) after the drain check (UNAVAILABLE). The caller has set c->tenant / c->auth_tenant
 * (its own API key check, dmn_tenant.c's rules). Every outcome is a reply through the sink. */
void dmn_call_local_start(dmn_call_t *c, const ProtobufCMessage *req);
void dmn_call_sent(dmn_call_t *c, bool ok); /* the sink wrote the last send (ok) or failed */
void dmn_call_gone(dmn_call_t *c);          /* the sink's client went away */

/* ---- dmn_rpc.c: unary methods and health ---------------------------------------------- */
void dmn_rpc_dispatch(dmn_call_t *c, grpc_byte_buffer *payload);
void dmn_health_notify(dmn_server_t *s); /* serving status changed: tell Watch streams */
void dmn_health_end(dmn_server_t *s);    /* shutdown: Watch streams end UNAVAILABLE */
int64_t dmn_now_ms(void);
void dmn_limits_get(const dmn_server_t *s, dmn_limits_t *out); /* what requests are checked against */
void dmn_random_id(char *buf, size_t len, const char *prefix);
/* When the store does not know session `id` but has a shared tier, looks it up there and
 * returns true: again(c, req, rc, msg) follows on the loop (rc 0: now in the store; else why
 * not) and owns req. Returns false (nothing started) otherwise. */
typedef void (*dmn_refetch_fn)(dmn_call_t *c, ProtobufCMessage *req, int rc, const char *msg);
bool dmn_session_fetch(dmn_call_t *c, const char *id, ProtobufCMessage *req, dmn_refetch_fn again);

/* ---- dmn_reload.c: SIGHUP ---------------------------------------------------------------- */
/* Re-reads what may change without a restart (TLS files); logs event "reload". Loop thread. */
void dmn_reload(dmn_server_t *s);

/* ---- dmn_expiry.c: the sweep that expires idle sessions --------------------------------- */
void dmn_expiry_start(dmn_server_t *s); /* inits and arms the timer (dmn_server_start) */
void dmn_expiry_close(dmn_server_t *s); /* closes it (with the server's other handles) */
/* A session that may expire at expires_ms (0: never) was created: sweep by then. */
void dmn_expiry_hint(dmn_server_t *s, int64_t expires_ms);

/* ---- dmn_tenant.c: API keys, tenant scoping, audit ------------------------------------ */
/* Loads --api-keys at startup (nothing when unset): RCD_EINVAL with "file:line: why". */
int dmn_auth_open(dmn_server_t *s, char *err, size_t errlen);
void dmn_auth_close(dmn_server_t *s);
/* SIGHUP: reads the keys file again; a file that fails keeps the old keys (logged): -1. */
int dmn_auth_reload(dmn_server_t *s);
/* Checks the call's key (not for health): 0 and c->tenant set, or RCD_EREPLIED when it was
 * answered UNAUTHENTICATED / PERMISSION_DENIED / INVALID_ARGUMENT (and audited). */
int dmn_auth_call(dmn_call_t *c, const dmn_auth_md_t *md);
/* The check itself, for any transport (gRPC above, HTTP in dmn_http.c): with keys, finds md's
 * key and fills tenant and auth_tenant (as dmn_call_t's), auditing failures against `what`
 * (the method or path). 0, or RCD_EUNAUTHENTICATED / RCD_EFORBIDDEN / RCD_EINVAL with the
 * message in err. Without keys: 0 and both "". */
int dmn_auth_check(dmn_server_t *s, const char *rid, const char *what, const dmn_auth_md_t *md,
                   char tenant[STORE_TENANT_MAX + 1], char auth_tenant[STORE_TENANT_MAX + 1],
                   char *err, size_t errlen);
/* The store id of client id `id` in the call's scope (id itself without keys); RCD_EINVAL
 * for a bad id (out ""). */
int dmn_scope(const dmn_call_t *c, const char *id, char out[STORE_SID_MAX + 1]);
/* Audit line: event, request id, tenant and session id (a store id is split into both), never
 * prompt text or keys; written whatever --log-level. */
void dmn_audit(const char *event, const char *rid, const char *tenant, const char *sid,
               const char *reason, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The prefix-cache namespace of the call's turns: its tenant, "" when shared. */
const char *dmn_prefix_ns(const dmn_call_t *c);

/* ---- dmn_reload.c: SIGHUP --------------------------------------------------------------- */
void dmn_reload(dmn_server_t *s);

/* ---- dmn_generate.c -------------------------------------------------------------------- */
/* The tenant a call acts for, the one seam quotas and fair scheduling key on: `requested`
 * (GenerateRequest.tenant) if set, else `owner` (the session's, may be NULL), else "" (the
 * anonymous tenant). Session quotas pass NULL and the session's owner. */
const char *dmn_tenant_of(const dmn_call_t *c, const char *requested, const char *owner);
/* The sessions and stored state bytes that count against the tenant's quotas: with API keys
 * those in the call's tenant scope, else those whose owner is `owner` (NULL: ""). */
void dmn_tenant_usage(const dmn_call_t *c, const char *owner, uint64_t *sessions, uint64_t *bytes);
/* A quota refusal: sets c's retry-after hint, logs it, writes the message into err and
 * returns RCD_ETOOBIG (RESOURCE_EXHAUSTED). */
struct dmn_quota_refusal;
int dmn_quota_refuse(dmn_call_t *c, const char *tenant, const struct dmn_quota_refusal *why,
                     char *err, size_t errlen);
void dmn_generate_start(dmn_call_t *c, grpc_byte_buffer *payload);
bool dmn_session_busy(dmn_server_t *s, const char *sid); /* a turn runs on it */
void dmn_generate_cancel_all(dmn_server_t *s, int rc);

#endif
