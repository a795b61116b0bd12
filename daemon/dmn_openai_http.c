/* daemon: the OpenAI-compatible routes on the HTTP listener — each request becomes a call with
 * a sink (dmn_sink_i, dmn.h) that runs the same handler as its gRPC method (the Generate turn,
 * ListModels, Create/Get/Fork/DeleteSession) and turns the replies into JSON or Server-Sent
 * Events. Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/dmn.h"
#include "daemon/dmn_http.h"
#include "daemon/dmn_openai.h"
#include "recurd/v1/inference.pb-c.h"
#include "workers/tokenizer/chat_tmpl.h"

/* One HTTP request served through a call. Freed when both the request was ended (r NULL) and
 * the call was freed (c NULL), after its timer closed. */
typedef struct oai_x {
    dmn_server_t *s;
    dmn_http_req_t *r;
    dmn_call_t *c;
    dmn_method_t method;
    dmn_oai_req_t req; /* Generate: the parsed body */
    dmn_oai_acc_t acc;
    bool is_gen, stream, streaming;
    bool paused; /* a write waits for on_drain before dmn_call_sent */
    bool sent_due, sent_ok, gone_due;
    uv_timer_t tm;              /* defers dmn_call_sent / dmn_call_gone to the next loop turn */
    char sid[STORE_ID_MAX + 1]; /* session routes: the id in the path */
} oai_x_t;

static void x_close_cb(uv_handle_t *h)
{
    free(h->data);
}

static void x_maybe_free(oai_x_t *x)
{
    if (x->r || x->c) return;
    dmn_oai_req_free(&x->req);
    dmn_oai_acc_free(&x->acc);
    uv_close((uv_handle_t *)&x->tm, x_close_cb);
}

static void x_timer_cb(uv_timer_t *t)
{
    oai_x_t *x = t->data;
    dmn_call_t *c = x->c;
    if (!c) return;
    bool sent = x->sent_due, gone = x->gone_due;
    x->sent_due = x->gone_due = false;
    if (gone) c->holds++; /* keep c until both are done */
    if (sent) dmn_call_sent(c, x->sent_ok);
    if (gone) {
        dmn_call_gone(c);
        dmn_call_release(c);
    }
}

static void x_defer(oai_x_t *x)
{
    uv_timer_start(&x->tm, x_timer_cb, 0, 0);
}

static void x_sent_later(oai_x_t *x, bool ok)
{
    x->sent_due = true;
    x->sent_ok = ok;
    x_defer(x);
}

/* Ends the HTTP request if it is still open (the client gone, or a shutdown). */
static void x_end(oai_x_t *x, int rc, const char *why)
{
    dmn_http_req_t *r = x->r;
    if (!r) return;
    x->r = NULL;
    r->ext = NULL;
    if (x->streaming) {
        size_t n;
        char *e = dmn_oai_sse_error(503, "service_unavailable", "unavailable", why, &n);
        if (e) dmn_http_stream_write(r, e, n);
        free(e);
        dmn_http_stream_end(r);
    } else {
        dmn_http_fail(r, rc, "%s", why);
    }
}

static void on_http_close(dmn_http_req_t *r)
{
    oai_x_t *x = r->ext;
    if (!x) return;
    x_end(x, RCD_ECANCELLED, "client went away");
    if (x->c) {
        if (x->paused) { /* on_drain will not come */
            x->paused = false;
            x->sent_due = true;
            x->sent_ok = false;
        }
        x->gone_due = true;
        x_defer(x);
    } else {
        x_maybe_free(x);
    }
}

static void on_http_drain(dmn_http_req_t *r)
{
    oai_x_t *x = r->ext;
    if (!x || !x->paused || !x->c) return;
    x->paused = false;
    dmn_call_sent(x->c, true);
}

/* ---- the sink ------------------------------------------------------------------------------ */

static void reply_json(oai_x_t *x, int status, char *body)
{
    dmn_http_req_t *r = x->r;
    x->r = NULL;
    r->ext = NULL;
    if (!body) {
        dmn_http_fail(r, RCD_ENOMEM, "out of memory");
        return;
    }
    dmn_http_reply(r, status, "application/json", body, strlen(body));
    free(body);
}

/* An error with the offending field in `param` (dmn_http_error's shape, param filled). */
static void error_param(dmn_http_req_t *r, int status, const char *param, const char *code,
                        const char *msg)
{
    char *b = dmn_oai_error_json(msg, dmn_http_error_type(status), param, code);
    if (!b) {
        dmn_http_fail(r, RCD_ENOMEM, "out of memory");
        return;
    }
    dmn_http_reply(r, status, "application/json", b, strlen(b));
    free(b);
}

static void fail_http(oai_x_t *x, dmn_call_t *c, int rc, const char *details)
{
    dmn_http_req_t *r = x->r;
    x->r = NULL;
    r->ext = NULL;
    if (c->retry_after_ms > 0) {
        dmn_http_retry_after(r, c->retry_after_ms);
    } else if (rc == RCD_ETOOBIG && x->is_gen) {
        /* RESOURCE_EXHAUSTED without a quota's retry hint is a size limit (prompt or context):
         * 400 as OpenAI answers it, not 429, which clients retry */
        error_param(r, 400, "", "context_length_exceeded", details);
        return;
    }
    dmn_http_fail(r, rc, "%s", details);
}

static int gen_send(oai_x_t *x, dmn_call_t *c, const ProtobufCMessage *msg, bool final, int rc,
                    const char *details)
{
    const Recurd__V1__GenerateResponse *m = (const Recurd__V1__GenerateResponse *)msg;
    size_t tl = m && c->has_reply_text ? c->reply_text_len : 0;
    const tok_t *tok = x->s->tok;
    if (rc) {
        if (!x->streaming) {
            fail_http(x, c, rc, details);
        } else {
            dmn_http_req_t *r = x->r;
            int st = rcd_http_status(rc);
            size_t n = 0;
            char *e = dmn_oai_sse_error(st, dmn_http_error_type(st), NULL, details, &n);
            /* the text generated before the failure goes first */
            if (m && tl) {
                size_t k = 0;
                char *d = dmn_oai_sse(&x->acc, m, tl, false, tok, &k);
                if (d) dmn_http_stream_write(r, d, k);
                free(d);
            }
            if (e) dmn_http_stream_write(r, e, n);
            free(e);
            x->r = NULL;
            r->ext = NULL;
            dmn_http_stream_end(r);
        }
        x_sent_later(x, true);
        return 0;
    }
    if (!x->stream) {
        if (m && dmn_oai_acc_add(&x->acc, m, tl, tok)) {
            fail_http(x, c, RCD_ENOMEM, "out of memory");
        } else if (final) {
            reply_json(x, 200, dmn_oai_response(&x->acc));
        }
        x_sent_later(x, true);
        return 0;
    }
    /* streaming: a delta with neither text nor logprobs (the text is held back) is skipped */
    if (!final && (!m || (!tl && !(x->acc.logprobs && m->n_logprobs)))) {
        x_sent_later(x, true);
        return 0;
    }
    dmn_http_req_t *r = x->r;
    if (!x->streaming) {
        dmn_http_add_header(r, "Cache-Control", "no-cache");
        dmn_http_add_header(r, "X-Request-Id", c->rid);
        dmn_http_stream_start(r, 200, "text/event-stream");
        x->streaming = true;
    }
    Recurd__V1__GenerateResponse empty = RECURD__V1__GENERATE_RESPONSE__INIT;
    size_t n = 0;
    char *d = dmn_oai_sse(&x->acc, m ? m : &empty, tl, final, tok, &n);
    int w = d ? dmn_http_stream_write(r, d, n) : RCD_ENOMEM;
    free(d);
    if (final) {
        x->r = NULL;
        r->ext = NULL;
        dmn_http_stream_end(r);
        x_sent_later(x, true);
    } else if (w == 1) {
        x->paused = true; /* on_http_drain sends the next */
    } else {
        x_sent_later(x, w == 0);
    }
    return 0;
}

static int sink_send(dmn_call_t *c, const ProtobufCMessage *msg, bool final, int rc,
                     const char *details)
{
    oai_x_t *x = c->sink_user;
    if (!x->r) { /* the client is gone: drop */
        x_sent_later(x, false);
        return 0;
    }
    if (x->is_gen) return gen_send(x, c, msg, final, rc, details);
    if (rc) {
        fail_http(x, c, rc, details);
    } else if (x->method == DMN_M_LIST_MODELS && msg) {
        const Recurd__V1__ListModelsResponse *lm = (const Recurd__V1__ListModelsResponse *)msg;
        reply_json(x, 200,
                   dmn_oai_models(lm->n_models ? lm->models[0]->id : x->s->model_id,
                                  (int64_t)time(NULL), "recurd"));
    } else if (x->method == DMN_M_DELETE_SESSION) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "id", x->sid);
            cJSON_AddStringToObject(o, "object", "session.deleted");
            cJSON_AddBoolToObject(o, "deleted", 1);
        }
        char *b = o ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        reply_json(x, 200, b);
    } else if (msg) {
        reply_json(x, x->method == DMN_M_GET_SESSION ? 200 : 201,
                   dmn_oai_session_json((const Recurd__V1__Session *)msg));
    } else {
        fail_http(x, c, RCD_EINTERNAL, "no reply");
    }
    x_sent_later(x, true);
    return 0;
}

static void sink_cancel(dmn_call_t *c, int rc, const char *why)
{
    oai_x_t *x = c->sink_user;
    x_end(x, rc, why);
    x->gone_due = true;
    x_defer(x);
}

static void sink_free(dmn_call_t *c)
{
    oai_x_t *x = c->sink_user;
    x->c = NULL;
    if (x->r) { /* never expected: the call ended without a final reply */
        dmn_http_req_t *r = x->r;
        x->r = NULL;
        r->ext = NULL;
        if (x->streaming)
            dmn_http_stream_end(r);
        else
            dmn_http_fail(r, RCD_EINTERNAL, "the request ended without a reply");
    }
    x_maybe_free(x);
}

static const dmn_sink_i g_sink = {sink_send, sink_cancel, sink_free};

/* ---- routes -------------------------------------------------------------------------------- */

static oai_x_t *x_new(dmn_http_req_t *r, dmn_method_t m)
{
    dmn_server_t *s = r->srv;
    oai_x_t *x = calloc(1, sizeof(*x));
    if (!x) {
        dmn_http_fail(r, RCD_ENOMEM, "out of memory");
        return NULL;
    }
    x->s = s;
    x->r = r;
    x->method = m;
    x->is_gen = m == DMN_M_GENERATE;
    uv_timer_init(s->loop, &x->tm);
    x->tm.data = x;
    x->c = dmn_call_local(s, m, &g_sink, x, r->rid);
    if (!x->c) {
        x->r = NULL;
        dmn_http_fail(r, RCD_ENOMEM, "out of memory");
        x_maybe_free(x);
        return NULL;
    }
    memcpy(x->c->tenant, r->tenant, sizeof(x->c->tenant));
    memcpy(x->c->auth_tenant, r->auth_tenant, sizeof(x->c->auth_tenant));
    r->ext = x;
    r->on_close = on_http_close;
    r->on_drain = on_http_drain;
    return x;
}

/* The request failed before its call started: answer and drop the call. */
static void x_fail_early(oai_x_t *x, int status, const char *param, const char *msg, int rc)
{
    dmn_http_req_t *r = x->r;
    x->r = NULL;
    r->ext = NULL;
    if (status)
        error_param(r, status, param, param && param[0] ? "invalid_parameter" : NULL, msg);
    else
        dmn_http_fail(r, rc, "%s", msg);
    dmn_call_t *c = x->c;
    c->closed = true;
    dmn_call_release(c); /* frees it: sink_free frees x */
}

static void on_models(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    oai_x_t *x = x_new(r, DMN_M_LIST_MODELS);
    if (!x) return;
    Recurd__V1__ListModelsRequest q = RECURD__V1__LIST_MODELS_REQUEST__INIT;
    dmn_call_local_start(x->c, &q.base);
}

/* The chat template (dmn.h: s->chat_tmpl) renders a list of messages. */
static int render_cb(void *arg, const cJSON *messages, bool agp, char **out, size_t *out_len,
                     char *err, size_t errlen)
{
    dmn_server_t *s = arg;
    if (!s->chat_tmpl) return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "no chat template loaded");
    cJSON *ctx = cJSON_CreateObject();
    if (!ctx) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    cJSON_AddItemReferenceToObject(ctx, "messages", (cJSON *)messages);
    cJSON_AddBoolToObject(ctx, "add_generation_prompt", agp);
    cJSON_AddStringToObject(ctx, "bos_token", s->bos_token ? s->bos_token : "");
    cJSON_AddStringToObject(ctx, "eos_token", s->eos_token ? s->eos_token : "");
    int rc = chat_tmpl_render(s->chat_tmpl, ctx, out, out_len, err, errlen);
    cJSON_Delete(ctx);
    return rc;
}

/* Chat: does the session hold tokens already (then only the new messages are rendered)? */
static bool session_continues(oai_x_t *x, const char *id)
{
    char sid[STORE_SID_MAX + 1];
    if (!id || !id[0] || dmn_scope(x->c, id, sid)) return false;
    store_session_t ss = {0};
    if (store_get(x->s->store, sid, &ss)) return false;
    bool cont = ss.n_tokens > 0;
    store_session_clear(&ss);
    return cont;
}

/* Chat: renders the messages (only the new ones when the session holds tokens) and starts
 * the turn. */
static void chat_start(oai_x_t *x)
{
    char *text = NULL, err[512];
    size_t n = 0;
    bool cont = session_continues(x, x->req.gen.session_id);
    int rc = dmn_oai_chat_prompt(x->req.messages, cont, x->s->eos_token, render_cb, x->s, &text,
                                 &n, err, sizeof(err));
    if (rc) {
        x_fail_early(x, rc == RCD_EINVAL ? 400 : 0, "messages", err, rc);
        return;
    }
    x->req.prompt = text; /* owned by req from here */
    x->req.prompt_len = n;
    x->req.gen.text = text;
    x->req.gen.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT;
    /* the template writes the BOS token itself when the model wants one */
    x->req.gen.add_special_tokens = false;
    dmn_call_local_start(x->c, &x->req.gen.base);
}

/* The chat turn's session was looked up in the shared tier first (another replica may have
 * served its earlier turns: without it here, the new messages would render as a first turn). */
static void chat_fetched(dmn_call_t *c, ProtobufCMessage *req, int rc, const char *msg)
{
    (void)req; /* x->req.gen, owned by x */
    oai_x_t *x = c->sink_user;
    if (!x->r) { /* the client went away meanwhile: drop the call (frees x) */
        c->closed = true;
        dmn_call_release(c);
        return;
    }
    if (rc && rc != RCD_ENOTFOUND)
        x_fail_early(x, 0, NULL, msg, rc);
    else
        chat_start(x); /* not found: the turn's own lookup answers NOT_FOUND */
}

static void on_generate(dmn_http_req_t *r, dmn_oai_kind_t kind)
{
    oai_x_t *x = x_new(r, DMN_M_GENERATE);
    if (!x) return;
    char param[64], err[512];
    int rc =
        dmn_oai_parse(kind, r->body, r->body_len, &x->req, param, sizeof(param), err, sizeof(err));
    if (rc) {
        x_fail_early(x, rc == RCD_EINVAL ? 400 : 0, param, err, rc);
        return;
    }
    x->stream = x->req.stream;
    dmn_oai_acc_init(&x->acc, &x->req, x->c->rid, (int64_t)time(NULL), x->s->model_id);
    if (x->req.user[0])
        dmn_log(DMN_INFO, "http_user", x->c->rid, NULL, "user '%s' tenant '%s'", x->req.user,
                x->c->tenant);
    if (kind != DMN_OAI_CHAT) {
        dmn_call_local_start(x->c, &x->req.gen.base);
        return;
    }
    char sid[STORE_SID_MAX + 1];
    const char *id = x->req.gen.session_id;
    if (id && id[0] && dmn_scope(x->c, id, sid) == 0 &&
        dmn_session_fetch(x->c, sid, &x->req.gen.base, chat_fetched))
        return;
    chat_start(x);
}

static void on_completions(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    on_generate(r, DMN_OAI_COMPLETIONS);
}

static void on_chat(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    on_generate(r, DMN_OAI_CHAT);
}

/* /v1/sessions/{id} and /v1/sessions/{id}/fork: the id is one path segment. */
static bool path_id(const char *path, char *id, size_t idlen, const char **rest)
{
    const char *p = path + strlen("/v1/sessions/");
    const char *e = strchr(p, '/');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n == 0 || n >= idlen) return false;
    memcpy(id, p, n);
    id[n] = 0;
    *rest = e ? e : "";
    return true;
}

static void on_session_create(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    oai_x_t *x = x_new(r, DMN_M_CREATE_SESSION);
    if (!x) return;
    Recurd__V1__CreateSessionRequest q;
    cJSON *root = NULL;
    char param[64], err[300];
    int rc = dmn_oai_session_create_parse(r->body, r->body_len, &q, &root, param, sizeof(param),
                                          err, sizeof(err));
    if (rc)
        x_fail_early(x, rc == RCD_EINVAL ? 400 : 0, param, err, rc);
    else
        dmn_call_local_start(x->c, &q.base);
    dmn_oai_session_msg_free(&q.base);
    cJSON_Delete(root);
}

static void on_session_id(dmn_http_req_t *r, void *arg)
{
    (void)arg;
    char id[STORE_ID_MAX + 1];
    const char *rest = "";
    bool ok = path_id(r->path, id, sizeof(id), &rest);
    bool fork = !strcmp(rest, "/fork") && !strcmp(r->method, "POST");
    dmn_method_t m = fork                           ? DMN_M_FORK_SESSION
                     : !strcmp(r->method, "DELETE") ? DMN_M_DELETE_SESSION
                                                    : DMN_M_GET_SESSION;
    if (!ok || (rest[0] && !fork) || (!rest[0] && !strcmp(r->method, "POST"))) {
        if (!ok && strlen(r->path) > strlen("/v1/sessions/") + STORE_ID_MAX)
            dmn_http_error(r, 400, NULL, "invalid_parameter", "session id over %d bytes",
                           STORE_ID_MAX);
        else if (ok && !rest[0])
            dmn_http_error(r, 405, NULL, NULL, "%s is not allowed on %s", r->method, r->path);
        else
            dmn_http_error(r, 404, NULL, NULL, "no route %s %s", r->method, r->path);
        return;
    }
    oai_x_t *x = x_new(r, m);
    if (!x) return;
    snprintf(x->sid, sizeof(x->sid), "%s", id);
    if (m == DMN_M_FORK_SESSION) {
        Recurd__V1__ForkSessionRequest q;
        cJSON *root = NULL;
        char param[64], err[300];
        int rc = dmn_oai_session_fork_parse(r->body, r->body_len, &q, &root, param, sizeof(param),
                                            err, sizeof(err));
        q.session_id = x->sid;
        if (rc)
            x_fail_early(x, rc == RCD_EINVAL ? 400 : 0, param, err, rc);
        else
            dmn_call_local_start(x->c, &q.base);
        dmn_oai_session_msg_free(&q.base);
        cJSON_Delete(root);
    } else if (m == DMN_M_DELETE_SESSION) {
        Recurd__V1__DeleteSessionRequest q = RECURD__V1__DELETE_SESSION_REQUEST__INIT;
        q.session_id = x->sid;
        dmn_call_local_start(x->c, &q.base);
    } else {
        Recurd__V1__GetSessionRequest q = RECURD__V1__GET_SESSION_REQUEST__INIT;
        q.session_id = x->sid;
        dmn_call_local_start(x->c, &q.base);
    }
}

int dmn_openai_routes(dmn_server_t *s)
{
    int rc = 0;
    rc |= dmn_http_route(s, "GET", "/v1/models", 0, on_models, NULL);
    rc |= dmn_http_route(s, "POST", "/v1/completions", 0, on_completions, NULL);
    rc |= dmn_http_route(s, "POST", "/v1/chat/completions", 0, on_chat, NULL);
    rc |= dmn_http_route(s, "POST", "/v1/sessions", 0, on_session_create, NULL);
    rc |= dmn_http_route(s, "GET", "/v1/sessions/", DMN_HTTP_PREFIX, on_session_id, NULL);
    rc |= dmn_http_route(s, "POST", "/v1/sessions/", DMN_HTTP_PREFIX, on_session_id, NULL);
    rc |= dmn_http_route(s, "DELETE", "/v1/sessions/", DMN_HTTP_PREFIX, on_session_id, NULL);
    return rc ? RCD_ENOMEM : 0;
}
