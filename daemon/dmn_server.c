/* daemon: gRPC core plumbing — server and CQ setup, the CQ thread that forwards (tag, ok)
 * pairs to the loop through uv_async, armed call requests per method, per-call batches and
 * lifetime, and the drain/shutdown sequence (see shared/design/grpc-core-notes.md). */
#include "daemon/dmn.h"
#include "daemon/dmn_http.h"
#include "daemon/dmn_meta.h"
#include "daemon/dmn_metrics.h"
#include "daemon/dmn_tls.h"
#include "daemon/dmn_wire.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *path;
    int armed; /* requests kept pending for this method */
} g_methods[DMN_M__COUNT] = {
    [DMN_M_LIST_MODELS] = {"/recurd.v1.Inference/ListModels", 2},
    [DMN_M_CREATE_SESSION] = {"/recurd.v1.Inference/CreateSession", 4},
    [DMN_M_GET_SESSION] = {"/recurd.v1.Inference/GetSession", 4},
    [DMN_M_FORK_SESSION] = {"/recurd.v1.Inference/ForkSession", 4},
    [DMN_M_DELETE_SESSION] = {"/recurd.v1.Inference/DeleteSession", 4},
    [DMN_M_TOKENIZE] = {"/recurd.v1.Inference/Tokenize", 4},
    [DMN_M_DETOKENIZE] = {"/recurd.v1.Inference/Detokenize", 4},
    [DMN_M_GENERATE] = {"/recurd.v1.Inference/Generate", 16},
    [DMN_M_HEALTH_CHECK] = {"/grpc.health.v1.Health/Check", 2},
    [DMN_M_HEALTH_WATCH] = {"/grpc.health.v1.Health/Watch", 2},
};

/* One armed request for a new call. */
typedef struct dmn_pending {
    dmn_op_t op;
    dmn_server_t *srv;
    dmn_method_t method;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details; /* unregistered calls only */
} dmn_pending_t;

static void maybe_exit(dmn_server_t *s);

/* ---- CQ thread → loop ------------------------------------------------------------------- */

static void push_event(dmn_server_t *s, dmn_op_t *op, bool ok)
{
    pthread_mutex_lock(&s->mu);
    if (s->n_evs == s->cap_evs) {
        size_t cap = s->cap_evs ? s->cap_evs * 2 : 64;
        void *p = realloc(s->evs, cap * sizeof(*s->evs));
        if (!p) { /* cannot lose a completion: retry until memory frees up */
            pthread_mutex_unlock(&s->mu);
            uv_sleep(1);
            push_event(s, op, ok);
            return;
        }
        s->evs = p;
        s->cap_evs = cap;
    }
    s->evs[s->n_evs].op = op;
    s->evs[s->n_evs].ok = ok;
    s->n_evs++;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
}

static void *cq_main(void *arg)
{
    dmn_server_t *s = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) {
            push_event(s, NULL, false);
            return NULL;
        }
        if (ev.type == GRPC_OP_COMPLETE) push_event(s, ev.tag, ev.success != 0);
    }
}

static void on_closed_handle(uv_handle_t *h)
{
    (void)h;
}

static void signals_stop(void);

static void on_wake(uv_async_t *a)
{
    dmn_server_t *s = a->data;
    pthread_mutex_lock(&s->mu);
    struct dmn_ev *evs = s->evs;
    size_t n = s->n_evs, cap = s->cap_evs;
    s->evs = s->evs_spare;
    s->cap_evs = s->cap_spare;
    s->n_evs = 0;
    s->evs_spare = evs;
    s->cap_spare = cap;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        if (!evs[i].op) { /* CQ shut down: the CQ thread has returned */
            pthread_join(s->cq_thread, NULL);
            s->cq_thread_started = false;
            grpc_completion_queue_destroy(s->cq);
            s->cq = NULL;
            uv_close((uv_handle_t *)&s->wake, on_closed_handle);
            uv_close((uv_handle_t *)&s->grace_timer, on_closed_handle);
            uv_close((uv_handle_t *)&s->quiet_timer, on_closed_handle);
            signals_stop();
            uv_close((uv_handle_t *)&s->sig_wake, on_closed_handle);
            dmn_expiry_close(s);
            continue;
        }
        evs[i].op->cb(evs[i].op, evs[i].ok);
    }
}

/* ---- calls ------------------------------------------------------------------------------ */

static void call_free_if_done(dmn_call_t *c)
{
    if (c->batches > 0 || c->holds > 0) return;
    dmn_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
    if (c->has_details) grpc_slice_unref(c->status_details);
    if (c->has_md_rid) grpc_slice_unref(c->md_init[0].value);
    if (c->has_md_trail)
        for (int i = 0; i < 2; i++)
            grpc_slice_unref(c->md_trail[i].value);
    if (c->call) grpc_call_unref(c->call);
    if (c->sink && c->sink->free) c->sink->free(c);
    free(c);
    maybe_exit(s);
}

void dmn_call_hold(dmn_call_t *c)
{
    c->holds++;
}

void dmn_call_release(dmn_call_t *c)
{
    c->holds--;
    call_free_if_done(c);
}

grpc_call_error dmn_call_batch(dmn_call_t *c, const grpc_op *ops, size_t n, dmn_op_t *op)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, op, NULL);
    if (e == GRPC_CALL_OK)
        c->batches++;
    else
        dmn_log(DMN_ERROR, "grpc_batch", c->rid, NULL, "grpc_call_start_batch: %d", (int)e);
    return e;
}

static void on_send_cb(dmn_op_t *op, bool ok)
{
    dmn_call_t *c = (dmn_call_t *)((char *)op - offsetof(dmn_call_t, op_send));
    c->batches--;
    c->send_busy = false;
    if (c->send_bb) {
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
    }
    c->holds++; /* the callback may release the handler's hold */
    if (c->on_send_done && c->holds > 1) c->on_send_done(c, ok);
    dmn_call_release(c);
}

static void on_close_cb(dmn_op_t *op, bool ok)
{
    dmn_call_t *c = (dmn_call_t *)((char *)op - offsetof(dmn_call_t, op_close));
    c->batches--;
    c->closed = true;
    if (!ok) c->cancelled = 1;
    c->holds++;
    if (c->on_close && c->holds > 1) c->on_close(c);
    dmn_call_release(c);
}

/* The initial metadata echoes the request id, so clients can find the call in the logs, and
 * names the replica that served it (x-recurd-replica: operators, the scale-out tests). An id
 * too long to be inlined is a heap slice: call_free_if_done releases it; the replica's name
 * lives as long as the server. */
static void initial_md(dmn_call_t *c, grpc_op *op)
{
    op->op = GRPC_OP_SEND_INITIAL_METADATA;
    if (!c->has_md_rid) {
        c->md_init[0].key = grpc_slice_from_static_string("x-request-id");
        c->md_init[0].value = grpc_slice_from_copied_string(c->rid);
        c->md_init[1].key = grpc_slice_from_static_string("x-recurd-replica");
        c->md_init[1].value = grpc_slice_from_static_string(c->srv->replica);
        c->has_md_rid = true;
    }
    op->data.send_initial_metadata.count = 2;
    op->data.send_initial_metadata.metadata = c->md_init;
}

/* A reply's text is packed at c->reply_text_len when the handler set it (dmn_wire_pack_text). */
static grpc_byte_buffer *pack_bb(dmn_call_t *c, const ProtobufCMessage *msg)
{
    size_t tl = c->has_reply_text ? c->reply_text_len : 0;
    c->has_reply_text = false;
    size_t n = dmn_wire_pack_text(msg, tl, NULL);
    grpc_slice sl = grpc_slice_malloc(n);
    dmn_wire_pack_text(msg, tl, GRPC_SLICE_START_PTR(sl));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

void dmn_call_retry_after(dmn_call_t *c, int64_t ms)
{
    c->retry_after_ms = ms;
}

/* An error status with a retry hint carries it as trailing metadata: retry-after-ms for
 * clients, grpc-retry-pushback-ms for gRPC's own retry policy. The slices live until the call
 * is freed (call_free_if_done). */
static void trailing_md(dmn_call_t *c, int rc, grpc_op *op)
{
    if (!rc || c->retry_after_ms <= 0) return;
    if (!c->has_md_trail) {
        char v[24];
        snprintf(v, sizeof(v), "%lld", (long long)c->retry_after_ms);
        c->md_trail[0].key = grpc_slice_from_static_string("retry-after-ms");
        c->md_trail[0].value = grpc_slice_from_copied_string(v);
        c->md_trail[1].key = grpc_slice_from_static_string("grpc-retry-pushback-ms");
        c->md_trail[1].value = grpc_slice_from_copied_string(v);
        c->has_md_trail = true;
    }
    op->data.send_status_from_server.trailing_metadata_count = 2;
    op->data.send_status_from_server.trailing_metadata = c->md_trail;
}

static int sink_send(dmn_call_t *c, const ProtobufCMessage *msg, bool final, int rc,
                     const char *details);

int dmn_call_send(dmn_call_t *c, const ProtobufCMessage *msg, bool final, int status_rc,
                  const char *details)
{
    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (c->send_busy || c->status_sent) {
        c->has_reply_text = false;
        return RCD_EBUSY;
    }
    if (c->sink) return sink_send(c, msg, final, status_rc, details);
    if (!c->md_sent) {
        initial_md(c, &ops[n++]);
        c->md_sent = true;
    }
    if (msg) {
        c->send_bb = pack_bb(c, msg);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_bb;
        n++;
    }
    if (final) {
        if (c->has_details) grpc_slice_unref(c->status_details);
        c->status_details = grpc_slice_from_copied_string(details     ? details
                                                          : status_rc ? rcd_strerror(status_rc)
                                                                      : "");
        c->has_details = true;
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status =
            (grpc_status_code)(status_rc ? rcd_grpc_status(status_rc) : 0);
        ops[n].data.send_status_from_server.status_details = &c->status_details;
        trailing_md(c, status_rc, &ops[n]);
        n++;
        c->status_sent = true;
        dmn_metrics_rpc(c->method, status_rc);
    }
    c->send_busy = true;
    c->op_send.cb = on_send_cb;
    if (dmn_call_batch(c, ops, n, &c->op_send) != GRPC_CALL_OK) {
        c->send_busy = false;
        return RCD_EINTERNAL;
    }
    return 0;
}

void dmn_call_watch_close(dmn_call_t *c)
{
    if (c->sink) return; /* the sink calls dmn_call_gone */
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->op_close.cb = on_close_cb;
    dmn_call_batch(c, &op, 1, &c->op_close);
}

/* ---- calls with a sink (dmn_sink_i) ----------------------------------------------------- */

/* A send in flight counts as a batch, so the call lives until dmn_call_sent. */
static int sink_send(dmn_call_t *c, const ProtobufCMessage *msg, bool final, int rc,
                     const char *details)
{
    if (final) c->status_sent = true;
    c->md_sent = true;
    c->send_busy = true;
    c->batches++;
    int e = c->sink->send(c, msg, final, rc, details ? details : rc ? rcd_strerror(rc) : "");
    c->has_reply_text = false;
    if (e) {
        c->send_busy = false;
        c->batches--;
    }
    return e;
}

void dmn_call_sent(dmn_call_t *c, bool ok)
{
    c->batches--;
    c->send_busy = false;
    c->holds++; /* the callback may release the handler's hold */
    if (c->on_send_done && c->holds > 1) c->on_send_done(c, ok);
    dmn_call_release(c);
}

void dmn_call_gone(dmn_call_t *c)
{
    if (c->closed) return;
    c->closed = true;
    c->cancelled = 1;
    c->holds++;
    if (c->on_close && c->holds > 1) c->on_close(c);
    dmn_call_release(c);
}

dmn_call_t *dmn_call_local(dmn_server_t *s, dmn_method_t m, const dmn_sink_i *sink, void *user,
                           const char *rid)
{
    dmn_call_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->srv = s;
    c->method = m;
    c->sink = sink;
    c->sink_user = user;
    c->holds = 1;
    c->start_ns = uv_hrtime();
    c->next = s->calls;
    if (s->calls) s->calls->prev = c;
    s->calls = c;
    if (rid && rid[0])
        snprintf(c->rid, sizeof(c->rid), "%s", rid);
    else
        snprintf(c->rid, sizeof(c->rid), "r%llu", (unsigned long long)++s->next_rid);
    return c;
}

void dmn_call_local_start(dmn_call_t *c, const ProtobufCMessage *req)
{
    dmn_server_t *s = c->srv;
    if (s->draining) {
        dmn_call_fail(c, RCD_EUNAVAILABLE, "server is draining");
        return;
    }
    /* the same bytes a gRPC client would send: one unpack and validation path */
    size_t n = protobuf_c_message_get_packed_size(req);
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(sl));
    grpc_byte_buffer *payload = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    if (c->method == DMN_M_GENERATE)
        dmn_generate_start(c, payload);
    else
        dmn_rpc_dispatch(c, payload);
    grpc_byte_buffer_destroy(payload);
}

static void unary_done_cb(dmn_op_t *op, bool ok)
{
    on_send_cb(op, ok);
}

static void unary_finish(dmn_call_t *c, const ProtobufCMessage *msg, int rc, const char *details)
{
    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (c->sink) {
        c->closed = true; /* nothing more to watch: the reply ends the request */
        sink_send(c, msg, true, rc, details);
        dmn_log(rc ? DMN_INFO : DMN_DEBUG, "rpc_done", c->rid, NULL, "http %s status %d%s%s",
                c->method < DMN_M__COUNT ? g_methods[c->method].path : "unknown",
                rc ? rcd_grpc_status(rc) : 0, details && *details ? ": " : "",
                details ? details : "");
        dmn_call_release(c);
        return;
    }
    initial_md(c, &ops[n++]);
    if (msg) {
        c->send_bb = pack_bb(c, msg);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_bb;
        n++;
    }
    if (c->has_details) grpc_slice_unref(c->status_details);
    c->status_details = grpc_slice_from_copied_string(details ? details : "");
    c->has_details = true;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)(rc ? rcd_grpc_status(rc) : 0);
    ops[n].data.send_status_from_server.status_details = &c->status_details;
    trailing_md(c, rc, &ops[n]);
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
    n++;
    c->status_sent = c->md_sent = c->closed = true;
    dmn_metrics_rpc(c->method, rc);
    c->op_send.cb = unary_done_cb;
    dmn_call_batch(c, ops, n, &c->op_send);
    dmn_log(rc ? DMN_INFO : DMN_DEBUG, "rpc_done", c->rid, NULL, "method %s status %d%s%s",
            c->method < DMN_M__COUNT ? g_methods[c->method].path : "unknown",
            rc ? rcd_grpc_status(rc) : 0, details && *details ? ": " : "", details ? details : "");
    dmn_call_release(c);
}

void dmn_call_reply(dmn_call_t *c, const ProtobufCMessage *msg)
{
    unary_finish(c, msg, 0, NULL);
}

void dmn_call_fail(dmn_call_t *c, int rc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (rc == 0) rc = RCD_EINTERNAL;
    unary_finish(c, NULL, rc, msg);
}

/* x-session-id routes a session's calls (a load balancer hashes it onto a replica, since it
 * cannot read the body): when the call sends it and the request has a session_id field, the
 * two must be equal, or the call could be served by a replica the ring does not give the
 * session to. A request without that field (ListModels, Tokenize, ...) ignores it. False:
 * answered INVALID_ARGUMENT. */
static bool sid_header_ok(dmn_call_t *c, const ProtobufCMessage *m)
{
    if (!c->has_sid_md) return true;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(m->descriptor, "session_id");
    if (!f || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
        return true;
    const char *sid = *(char *const *)((const char *)m + f->offset);
    if (!sid) sid = "";
    if (c->sid_md_bad) {
        dmn_call_fail(c, RCD_EINVAL, "x-session-id is not a session id (over %d bytes or a NUL byte)",
                      STORE_ID_MAX);
        return false;
    }
    if (strcmp(sid, c->sid_md) != 0) {
        dmn_call_fail(c, RCD_EINVAL, "x-session-id '%s' does not match the request's session_id '%s'",
                      c->sid_md, sid);
        return false;
    }
    return true;
}

ProtobufCMessage *dmn_call_unpack(dmn_call_t *c, grpc_byte_buffer *bb,
                                  const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = NULL;
    if (!bb) {
        dmn_call_fail(c, RCD_EINVAL, "request message missing");
        return NULL;
    }
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, bb)) {
        dmn_call_fail(c, RCD_EINVAL, "request message unreadable");
        return NULL;
    }
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
    dmn_wire_t w;
    int rc = m ? dmn_wire_scan(d, GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl), &w) : 0;
    grpc_slice_unref(sl);
    if (!m || rc) {
        dmn_call_fail(c, RCD_EINVAL, "request is not a valid %s", d->name);
    } else if (w.bad[0]) {
        dmn_call_fail(c, RCD_EINVAL, "%s holds a NUL byte (only text may)", w.bad);
    } else if (!sid_header_ok(c, m)) {
        /* answered */
    } else {
        c->text_len = w.text_len;
        return m;
    }
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    return NULL;
}

/* ---- accepting calls ------------------------------------------------------------------- */

static void on_new_call(dmn_op_t *op, bool ok);

static void arm(dmn_server_t *s, dmn_method_t m)
{
    if (s->server_shutdown_started) return;
    dmn_pending_t *p = calloc(1, sizeof(*p));
    if (!p) {
        dmn_log(DMN_ERROR, "arm", NULL, NULL, "out of memory arming a call request");
        return;
    }
    p->op.cb = on_new_call;
    p->srv = s;
    p->method = m;
    grpc_metadata_array_init(&p->md);
    grpc_call_error e;
    if (m == DMN_M_UNKNOWN) {
        grpc_call_details_init(&p->details);
        e = grpc_server_request_call(s->server, &p->call, &p->details, &p->md, s->cq, s->cq,
                                     &p->op);
    } else {
        e = grpc_server_request_registered_call(s->server, s->methods[m], &p->call, &p->deadline,
                                                &p->md, &p->payload, s->cq, s->cq, &p->op);
    }
    if (e != GRPC_CALL_OK) {
        dmn_log(DMN_ERROR, "arm", NULL, NULL, "request call failed: %d", (int)e);
        grpc_metadata_array_destroy(&p->md);
        if (m == DMN_M_UNKNOWN) grpc_call_details_destroy(&p->details);
        free(p);
    }
}

static void pending_free(dmn_pending_t *p)
{
    grpc_metadata_array_destroy(&p->md);
    if (p->method == DMN_M_UNKNOWN) grpc_call_details_destroy(&p->details);
    if (p->payload) grpc_byte_buffer_destroy(p->payload);
    free(p);
}

static void on_new_call(dmn_op_t *op, bool ok)
{
    dmn_pending_t *p = (dmn_pending_t *)op;
    dmn_server_t *s = p->srv;
    if (!ok) { /* server shutting down */
        pending_free(p);
        maybe_exit(s);
        return;
    }
    arm(s, p->method);
    if (p->method != DMN_M_HEALTH_CHECK && p->method != DMN_M_HEALTH_WATCH)
        s->last_call_ns = uv_hrtime(); /* probes come forever: they never hold a drain open */
    dmn_call_t *c = calloc(1, sizeof(*c));
    if (!c) {
        grpc_call_cancel_with_status(p->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(p->call);
        pending_free(p);
        return;
    }
    c->srv = s;
    c->call = p->call;
    c->method = p->method;
    c->holds = 1;
    c->start_ns = uv_hrtime();
    c->next = s->calls;
    if (s->calls) s->calls->prev = c;
    s->calls = c;
    gpr_timespec dl = p->method == DMN_M_UNKNOWN ? p->details.deadline : p->deadline;
    dl = gpr_convert_clock_type(dl, GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(dl, gpr_inf_future(GPR_CLOCK_MONOTONIC)) != 0 && dl.tv_sec < INT64_MAX / 2)
        c->deadline_ns = (uint64_t)dl.tv_sec * 1000000000ull + (uint64_t)dl.tv_nsec;
    dmn_meta_t md;
    dmn_meta_init(&md);
    for (size_t i = 0; i < p->md.count; i++) {
        grpc_slice k = p->md.metadata[i].key, v = p->md.metadata[i].value;
        dmn_meta_add(&md, (const char *)GRPC_SLICE_START_PTR(k), GRPC_SLICE_LENGTH(k),
                     (const char *)GRPC_SLICE_START_PTR(v), GRPC_SLICE_LENGTH(v));
    }
    _Static_assert(sizeof(c->rid) == sizeof(md.rid), "a request id fits dmn_call_t.rid");
    memcpy(c->rid, md.rid, sizeof(c->rid));
    c->has_sid_md = md.has_sid;
    c->sid_md_bad = md.sid_bad;
    memcpy(c->sid_md, md.sid, sizeof(c->sid_md));
    if (!c->rid[0]) snprintf(c->rid, sizeof(c->rid), "r%llu", (unsigned long long)++s->next_rid);
    grpc_byte_buffer *payload = p->payload;
    p->payload = NULL;
    if (p->method == DMN_M_UNKNOWN) {
        char path[200];
        size_t n = GRPC_SLICE_LENGTH(p->details.method);
        if (n >= sizeof(path)) n = sizeof(path) - 1;
        memcpy(path, GRPC_SLICE_START_PTR(p->details.method), n);
        path[n] = 0;
        pending_free(p);
        for (size_t j = 0; j < n; j++)
            if ((unsigned char)path[j] < 0x20 || (unsigned char)path[j] > 0x7e) path[j] = '?';
        dmn_call_fail(c, RCD_EUNSUPPORTED, "unknown method %s", path);
        return;
    }
    pending_free(p);
    if (s->draining && c->method != DMN_M_HEALTH_CHECK && c->method != DMN_M_HEALTH_WATCH) {
        if (payload) grpc_byte_buffer_destroy(payload);
        dmn_call_fail(c, RCD_EUNAVAILABLE, "server is draining");
        return;
    }
    /* grpc.health.v1 answers without a key (probes carry none) */
    if (c->method != DMN_M_HEALTH_CHECK && c->method != DMN_M_HEALTH_WATCH &&
        dmn_auth_call(c, &md.auth) != 0) {
        if (payload) grpc_byte_buffer_destroy(payload);
        return;
    }
    if (c->method == DMN_M_GENERATE)
        dmn_generate_start(c, payload);
    else
        dmn_rpc_dispatch(c, payload);
    if (payload) grpc_byte_buffer_destroy(payload);
}

/* ---- start, drain, exit ---------------------------------------------------------------- */

static void on_shutdown_cb(dmn_op_t *op, bool ok);

/* What is still open this long after the shutdown started is cancelled (CANCELLED). */
#define DMN_SETTLE_MS 1000

static void on_settle(uv_timer_t *t)
{
    dmn_server_t *s = t->data;
    if (!s->server) return;
    dmn_log(DMN_WARN, "drain_cancel_rest", NULL, NULL,
            "calls still open %d ms after the shutdown began: cancelling them", DMN_SETTLE_MS);
    grpc_server_cancel_all_calls(s->server);
}

/* The end of a drain: every turn done (or the grace period over). Every call still open or yet
 * to be seen ends UNAVAILABLE, the status a client retries on another replica, never CANCELLED
 * (which reads as the client's own cancellation): turns are cancelled with it, health watches
 * end with it, and calls the core matched before the shutdown but this loop has not seen yet
 * are refused with it by on_new_call (s->draining). Unary calls in flight finish. Only what is
 * left after DMN_SETTLE_MS is cancelled wholesale. */
static void finish_drain(dmn_server_t *s)
{
    if (s->shutting_down) return;
    s->shutting_down = true;
    uv_timer_stop(&s->grace_timer);
    uv_timer_stop(&s->quiet_timer);
    dmn_log(DMN_INFO, "drain_cancel", NULL, NULL, "cancelling %d turn(s) and all open calls",
            s->n_turns);
    /* Until now the server kept accepting so that new calls got a clear UNAVAILABLE. */
    s->server_shutdown_started = true;
    s->op_shutdown.cb = on_shutdown_cb;
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->op_shutdown);
    dmn_generate_cancel_all(s, RCD_EUNAVAILABLE);
    dmn_health_end(s);
    uv_timer_start(&s->grace_timer, on_settle, DMN_SETTLE_MS, 0);
    dmn_http_stop(s); /* closes every HTTP connection; the listener's handles go with them */
    maybe_exit(s);
}

static void maybe_exit(dmn_server_t *s)
{
    if (!s->shutting_down || !s->shutdown_done || s->calls || !s->server) return;
    uv_timer_stop(&s->grace_timer); /* on_settle has nothing left to cancel */
    grpc_server_destroy(s->server);
    s->server = NULL;
    grpc_completion_queue_shutdown(s->cq);
    dmn_log(DMN_INFO, "stopped", NULL, NULL, "server stopped");
}

static void on_shutdown_cb(dmn_op_t *op, bool ok)
{
    dmn_server_t *s = (dmn_server_t *)((char *)op - offsetof(dmn_server_t, op_shutdown));
    s->shutdown_done = true;
    maybe_exit(s);
}

static void on_grace(uv_timer_t *t)
{
    dmn_server_t *s = t->data;
    dmn_log(DMN_WARN, "drain_grace_over", NULL, NULL, "grace period over with %d turn(s) left",
            s->n_turns);
    finish_drain(s);
}

/* The drain's work is done (no turn, no HTTP request) once no call has arrived for this long:
 * clients and balancers that saw UNAVAILABLE (or a failing health check) have gone elsewhere,
 * so the shutdown races no call in flight. The core cancels (CANCELLED) a call whose headers
 * it read before grpc_server_shutdown_and_notify but had not yet matched to a request. */
#define DMN_DRAIN_QUIET_MS 250

static void drain_maybe_done(dmn_server_t *s);

static void on_quiet(uv_timer_t *t)
{
    drain_maybe_done(t->data);
}

static void drain_maybe_done(dmn_server_t *s)
{
    if (!s->draining || s->shutting_down || s->n_turns > 0 || dmn_http_active(s)) return;
    uint64_t now = uv_hrtime(), quiet_ns = (uint64_t)DMN_DRAIN_QUIET_MS * 1000000u;
    uint64_t since = now - s->last_call_ns;
    if (since >= quiet_ns) {
        finish_drain(s);
        return;
    }
    uv_timer_start(&s->quiet_timer, on_quiet, (quiet_ns - since) / 1000000u + 1, 0);
}

void dmn_server_turn_done(dmn_server_t *s)
{
    drain_maybe_done(s);
}

void dmn_server_drain(dmn_server_t *s, const char *why)
{
    if (s->draining) {
        if (!s->shutting_down) {
            dmn_log(DMN_WARN, "drain_now", NULL, NULL, "second %s: cancelling now", why);
            finish_drain(s);
        }
        return;
    }
    s->draining = true;
    dmn_log(DMN_INFO, "drain", NULL, NULL,
            "%s: draining, %d turn(s) and %d HTTP request(s) in flight, grace %ld ms", why,
            s->n_turns, dmn_http_active(s), s->opts->drain_grace_ms);
    dmn_health_notify(s);
    dmn_http_drain(s); /* stops accepting; /health answers 503 */
    uv_timer_start(&s->grace_timer, on_grace, (uint64_t)s->opts->drain_grace_ms, 0);
    drain_maybe_done(s);
}

/* ---- signals ---------------------------------------------------------------------------
 * SIGTERM and SIGINT drain (a second one ends the drain at once); SIGHUP reloads, never drains.
 * The daemon's own handler counts each signal and wakes the loop (uv_async_send is
 * async-signal-safe), rather than libuv's uv_signal_t: closing the last uv_signal_t of a
 * signal puts back its default action, which for SIGTERM is death, so a signal during the
 * teardown after the drain (the store's close, the workers' join) killed a daemon that was
 * exiting cleanly. signals_stop sets the three to SIG_IGN in one step each, with no window. */

enum { SIG_I_TERM, SIG_I_INT, SIG_I_HUP, SIG_I__N };
static const int g_signums[SIG_I__N] = {SIGTERM, SIGINT, SIGHUP};
static atomic_int g_sig_count[SIG_I__N];
static _Atomic(uv_async_t *) g_sig_wake;
static atomic_int g_sig_in_handler;

static void on_posix_signal(int signum)
{
    int saved = errno;
    atomic_fetch_add(&g_sig_in_handler, 1);
    for (int i = 0; i < SIG_I__N; i++)
        if (g_signums[i] == signum) atomic_fetch_add(&g_sig_count[i], 1);
    uv_async_t *w = atomic_load(&g_sig_wake);
    if (w) uv_async_send(w);
    atomic_fetch_sub(&g_sig_in_handler, 1);
    errno = saved;
}

static void on_sig_wake(uv_async_t *h)
{
    dmn_server_t *s = h->data;
    int n = atomic_exchange(&g_sig_count[SIG_I_HUP], 0);
    if (n > 0) dmn_reload(s); /* several SIGHUPs at once: one reload reads the files */
    for (int i = SIG_I_TERM; i <= SIG_I_INT; i++) {
        n = atomic_exchange(&g_sig_count[i], 0);
        for (int k = 0; k < n && k < 2; k++) /* the second one ends the drain */
            dmn_server_drain(s, i == SIG_I_TERM ? "SIGTERM" : "SIGINT");
    }
}

/* 0, or -errno. */
static int signals_start(dmn_server_t *s)
{
    for (int i = 0; i < SIG_I__N; i++)
        atomic_store(&g_sig_count[i], 0);
    atomic_store(&g_sig_wake, &s->sig_wake);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_posix_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < SIG_I__N; i++)
        if (sigaction(g_signums[i], &sa, NULL) != 0) return -errno;
    return 0;
}

/* The drain is over: later signals have nothing left to do. Returns once no handler can still
 * touch the server's sig_wake, which the caller then closes. */
static void signals_stop(void)
{
    for (int i = 0; i < SIG_I__N; i++)
        signal(g_signums[i], SIG_IGN);
    atomic_store(&g_sig_wake, NULL);
    while (atomic_load(&g_sig_in_handler) > 0)
        sched_yield();
}

/* Drops the listening server and its completion queue before anything started on them. */
static void unlisten(dmn_server_t *s)
{
    grpc_server_destroy(s->server);
    s->server = NULL;
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(s->cq);
    s->cq = NULL;
}

int dmn_server_start(dmn_server_t *s, char *err, size_t errlen)
{
    grpc_arg args[] = {
        {GRPC_ARG_INTEGER,
         GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         {.integer = (int)s->opts->max_message_bytes}},
        {GRPC_ARG_INTEGER,
         GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         {.integer = (int)s->opts->max_message_bytes}},
        /* Request metadata up to 16 KiB (gRPC's default, 8 KiB in all, refuses an 8 KiB
         * x-request-id; the daemon keeps and echoes only its first 39 bytes). */
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_METADATA_SIZE, {.integer = 16 * 1024}},
        {GRPC_ARG_INTEGER, GRPC_ARG_ALLOW_REUSEPORT, {.integer = 0}},
        {GRPC_ARG_INTEGER,
         GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
         {.integer = 10000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = 60000}},
    };
    grpc_channel_args ca = {sizeof(args) / sizeof(args[0]), args};
    s->cq = grpc_completion_queue_create_for_next(NULL);
    s->server = grpc_server_create(&ca, NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    for (int m = 0; m < DMN_M__COUNT; m++)
        s->methods[m] = grpc_server_register_method(s->server, g_methods[m].path, NULL,
                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    char addr[300];
    snprintf(addr, sizeof(addr), "%s:%ld", s->opts->listen_all ? "0.0.0.0" : s->opts->host,
             s->opts->port);
    grpc_server_credentials *creds =
        s->tls ? dmn_tls_server_credentials(s->tls) : grpc_insecure_server_credentials_create();
    s->port = creds ? grpc_server_add_http2_port(s->server, addr, creds) : 0;
    if (creds) grpc_server_credentials_release(creds);
    if (s->port <= 0) {
        unlisten(s);
        return rcd_fail(RCD_EIO, err, errlen, "cannot listen on %s (in use?%s)", addr,
                        s->tls ? " or the TLS setup failed: see gRPC's message" : "");
    }
    /* The loop's handles and the CQ thread, before the server starts taking calls. */
    uv_handle_t *opened[6];
    int n_open = 0, urc;
    const char *what = "";
    if ((urc = -pthread_mutex_init(&s->mu, NULL))) {
        what = "the event mutex";
        goto fail;
    }
    if ((urc = uv_async_init(s->loop, &s->wake, on_wake))) {
        what = "the completion-queue wake-up";
        goto fail;
    }
    opened[n_open++] = (uv_handle_t *)&s->wake;
    s->wake.data = s;
    uv_timer_init(s->loop, &s->grace_timer); /* cannot fail */
    opened[n_open++] = (uv_handle_t *)&s->grace_timer;
    s->grace_timer.data = s;
    uv_timer_init(s->loop, &s->quiet_timer); /* cannot fail */
    opened[n_open++] = (uv_handle_t *)&s->quiet_timer;
    s->quiet_timer.data = s;
    if ((urc = uv_async_init(s->loop, &s->sig_wake, on_sig_wake))) {
        what = "the signal wake-up";
        goto fail;
    }
    opened[n_open++] = (uv_handle_t *)&s->sig_wake;
    s->sig_wake.data = s;
    if ((urc = signals_start(s))) {
        what = "the signal handlers";
        goto fail;
    }
    if ((urc = -pthread_create(&s->cq_thread, NULL, cq_main, s))) {
        what = "the completion-queue thread";
        goto fail;
    }
    s->cq_thread_started = true;
    dmn_expiry_start(s);
    grpc_server_start(s->server);
    for (int m = 0; m <= DMN_M_UNKNOWN; m++) {
        int n = m == DMN_M_UNKNOWN ? 2 : g_methods[m].armed;
        for (int i = 0; i < n; i++)
            arm(s, (dmn_method_t)m);
    }
    dmn_log(DMN_INFO, "listening", NULL, NULL, "listening on %s port %d (%s)",
            s->opts->listen_all ? "0.0.0.0" : s->opts->host, s->port, dmn_tls_mode(s->tls));
    if (!s->tls && !dmn_host_is_loopback(s->opts))
        dmn_log(DMN_WARN, "plaintext_listen_all", NULL, NULL,
                "serving plaintext gRPC on %s, reachable beyond this machine: anyone on the "
                "network can read the traffic; give --tls-cert and --tls-key",
                s->opts->listen_all ? "0.0.0.0 (--listen-all)" : s->opts->host);
    return 0;
fail: /* the handles opened so far close on the loop's last turn (main's cleanup) */
    signals_stop();
    for (int i = 0; i < n_open; i++)
        uv_close(opened[i], on_closed_handle);
    unlisten(s);
    return rcd_fail(RCD_EINTERNAL, err, errlen, "cannot create %s: %s", what, uv_strerror(urc));
}
