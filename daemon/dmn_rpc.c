/* daemon: the unary methods (models, sessions, tokenizer) and grpc.health.v1.Health. Every
 * handler runs on the loop thread and answers through dmn_call_reply / dmn_call_fail. */
#include "daemon/dmn.h"
#include "daemon/dmn_quota.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/dmn_validate.h"
#include "engine/eng_runner.h"
#include "grpc/health/v1/health.pb-c.h"
#include "recurd/v1/inference.pb-c.h"

int64_t dmn_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void dmn_random_id(char *buf, size_t len, const char *prefix)
{
    unsigned char r[12] = {0};
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, r, sizeof(r)) != (ssize_t)sizeof(r)) {
        uint64_t t = (uint64_t)dmn_now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)buf;
        memcpy(r, &t, sizeof(t));
    }
    if (fd >= 0) close(fd);
    size_t p = (size_t)snprintf(buf, len, "%s", prefix);
    for (size_t i = 0; i < sizeof(r) && p + 2 < len; i++)
        p += (size_t)snprintf(buf + p, len - p, "%02x", r[i]);
}

/* ---- models ----------------------------------------------------------------------------- */

void dmn_limits_get(const dmn_server_t *s, dmn_limits_t *out)
{
    out->model_id = s->model_id;
    out->vocab = s->vocab;
    out->max_context = s->opts->max_context;
    out->max_prompt = s->opts->max_prompt;
    out->priorities = ENG_RUNNER_PRIORITIES;
    out->has_tokenizer = s->tok != NULL;
}

/* The outcome of a dmn_validate_* check: false once the call was answered with its error. */
static bool valid(dmn_call_t *c, int rc, const char *err)
{
    if (rc) dmn_call_fail(c, rc, "%s", err);
    return rc == 0;
}

static bool model_ok(dmn_call_t *c, const char *model)
{
    char err[512];
    dmn_limits_t lim;
    dmn_limits_get(c->srv, &lim);
    return valid(c, dmn_validate_model(model, &lim, err, sizeof(err)), err);
}

static void list_models(dmn_call_t *c, grpc_byte_buffer *bb)
{
    dmn_server_t *s = c->srv;
    ProtobufCMessage *req = dmn_call_unpack(c, bb, &recurd__v1__list_models_request__descriptor);
    if (!req) return;
    protobuf_c_message_free_unpacked(req, NULL);
    const wrk_model_info_t *mi = wrk_model_info(s->model);
    Recurd__V1__Model m = RECURD__V1__MODEL__INIT;
    m.id = s->model_id;
    m.architecture = (char *)mi->architecture;
    m.vocab_size = mi->vocab_size;
    m.n_layers = mi->n_layers;
    m.hidden_size = mi->hidden_size;
    m.state_bytes = mi->state_bytes;
    m.fingerprint = (char *)mi->fingerprint_hex;
    m.max_context_tokens = (int32_t)s->opts->max_context;
    m.backend = (char *)wrk_backend_name(s->backend);
    Recurd__V1__Model *list[1] = {&m};
    Recurd__V1__ListModelsResponse r = RECURD__V1__LIST_MODELS_RESPONSE__INIT;
    r.n_models = 1;
    r.models = list;
    dmn_call_reply(c, &r.base);
}

/* ---- sessions --------------------------------------------------------------------------- */

static void reply_session(dmn_call_t *c, const store_session_t *ss)
{
    Recurd__V1__Session m = RECURD__V1__SESSION__INIT;
    Recurd__V1__MetadataEntry ents[STORE_META_MAX], *ptrs[STORE_META_MAX];
    m.session_id = (char *)store_unscope_id(ss->id); /* the client's own id, never the scope */
    m.model = c->srv->model_id;
    m.version = ss->version;
    m.token_count = ss->n_tokens;
    m.created_unix_ms = ss->created_ms;
    m.updated_unix_ms = ss->updated_ms;
    m.parent_session_id = (char *)store_unscope_id(ss->parent_id);
    m.owner = (char *)ss->owner;
    m.ttl_seconds = ss->eff_ttl_s;
    m.expires_unix_ms = ss->expires_ms;
    for (int i = 0; i < ss->n_meta && i < STORE_META_MAX; i++) {
        recurd__v1__metadata_entry__init(&ents[i]);
        ents[i].key = (char *)ss->meta[i].key;
        ents[i].value = (char *)ss->meta[i].value;
        ptrs[i] = &ents[i];
    }
    m.n_metadata = (size_t)ss->n_meta;
    m.metadata = ptrs;
    dmn_call_reply(c, &m.base);
}

/* The request's metadata entries (checked by dmn_validate_meta) into out: their count. */
static int meta_from_req(Recurd__V1__MetadataEntry **in, size_t n, store_meta_t *out)
{
    for (size_t i = 0; i < n && i < STORE_META_MAX; i++) {
        out[i].key = in[i]->key;
        out[i].value = in[i]->value;
    }
    return n < STORE_META_MAX ? (int)n : STORE_META_MAX;
}

static void session_fail(dmn_call_t *c, int rc, const char *id)
{
    switch (rc) {
    case RCD_ENOTFOUND:
        dmn_call_fail(c, rc, "session '%s' not found", id);
        break;
    case RCD_EEXISTS:
        dmn_call_fail(c, rc, "session '%s' already exists", id);
        break;
    case RCD_EBUSY:
        dmn_call_fail(c, rc, "session '%s' has a commit in flight", id);
        break;
    case RCD_EUNAVAILABLE: /* --redis-authority: nothing is committed that Redis cannot fence */
        dmn_call_fail(c, rc, "session '%s': the shared tier (redis) is unreachable; retry", id);
        break;
    case RCD_EMISMATCH: {
        store_session_t ss = {0};
        char sid[STORE_SID_MAX + 1];
        if (dmn_scope(c, id, sid) == 0 && store_get(c->srv->store, sid, &ss) == 0 && ss.foreign)
            dmn_call_fail(c, rc,
                          "session '%s' was checkpointed by model fingerprint %016llx; the loaded "
                          "model's fingerprint is %s",
                          id, (unsigned long long)ss.fingerprint,
                          wrk_model_info(c->srv->model)->fingerprint_hex);
        else
            dmn_call_fail(c, rc, "session '%s': %s", id, rcd_strerror(rc));
        store_session_clear(&ss);
        break;
    }
    case RCD_ETOOBIG:
        dmn_call_fail(c, rc,
                      "session store full (max %ld) or metadata over %d entries or %d bytes (an "
                      "owner and a ttl_seconds count as one entry each)",
                      c->srv->opts->max_sessions, STORE_META_MAX, STORE_META_BYTES);
        break;
    case RCD_EINVAL: {
        char err[200];
        if (store_check_id(id, err, sizeof(err)))
            dmn_call_fail(c, rc, "%s", err);
        else
            dmn_call_fail(c, rc,
                          "invalid metadata or owner (keys non-empty, not starting with "
                          "'recurd.'; owner at most %d bytes, no control characters)",
                          STORE_OWNER_MAX);
        break;
    }
    default:
        dmn_call_fail(c, rc, "session '%s': %s", id, rcd_strerror(rc));
    }
}

/* A create, fork or delete waiting for the store to make it durable; the call is answered
 * only then, so an acknowledged session survives a restart. */
typedef struct sess_pending {
    dmn_call_t *c;
    store_session_t ss;          /* the new session's record (create, fork); ss.id for delete */
    char src[STORE_SID_MAX + 1]; /* fork source */
    bool deleting;
} sess_pending_t;

static void session_durable(void *user, int rc, uint64_t version, const char *msg)
{
    sess_pending_t *p = user;
    dmn_call_t *c = p->c;
    (void)version;
    if (rc) {
        dmn_log(DMN_WARN, "session_store", c->rid, p->ss.id, "%s", msg);
        dmn_call_fail(c, rc, "session '%s': %s", store_unscope_id(p->ss.id),
                      msg[0] ? msg : rcd_strerror(rc));
    } else if (p->deleting) {
        dmn_log(DMN_INFO, "session_deleted", c->rid, p->ss.id, "session deleted");
        dmn_audit("audit_session_delete", c->rid, NULL, p->ss.id, NULL, "session deleted%s%s",
                  c->auth_tenant[0] && strcmp(c->auth_tenant, c->tenant) ? " by admin of " : "",
                  c->auth_tenant[0] && strcmp(c->auth_tenant, c->tenant) ? c->auth_tenant : "");
        Recurd__V1__DeleteSessionResponse r = RECURD__V1__DELETE_SESSION_RESPONSE__INIT;
        dmn_call_reply(c, &r.base);
    } else {
        bool by_admin = c->auth_tenant[0] && strcmp(c->auth_tenant, c->tenant);
        if (p->src[0]) {
            dmn_log(DMN_INFO, "session_forked", c->rid, p->ss.id, "forked from %s at version %llu",
                    p->src, (unsigned long long)p->ss.version);
            dmn_audit("audit_session_fork", c->rid, NULL, p->ss.id, NULL,
                      "forked from %s at version %llu%s%s", store_unscope_id(p->src),
                      (unsigned long long)p->ss.version, by_admin ? " by admin of " : "",
                      by_admin ? c->auth_tenant : "");
        } else {
            dmn_log(DMN_INFO, "session_created", c->rid, p->ss.id, "session created");
            dmn_audit("audit_session_create", c->rid, NULL, p->ss.id, NULL, "session created%s%s",
                      by_admin ? " by admin of " : "", by_admin ? c->auth_tenant : "");
        }
        reply_session(c, &p->ss);
    }
    store_session_clear(&p->ss);
    free(p);
}

typedef struct refetch {
    dmn_call_t *c;
    ProtobufCMessage *req;
    dmn_refetch_fn again;
    char id[STORE_SID_MAX + 1];
    bool sync;      /* authority mode: store_sync (else store_fetch) */
    bool had_local; /* sync: the index held the session before (at local_version) */
    uint64_t local_version;
} refetch_t;

static void refetched(void *user, int rc, uint64_t version, const char *msg)
{
    refetch_t *f = user;
    (void)version;
    if (rc == 0)
        dmn_log(DMN_INFO, "session_fetched", f->c->rid, f->id,
                "session read from the shared tier at version %llu", (unsigned long long)version);
    else if (rc != RCD_ENOTFOUND)
        dmn_log(DMN_WARN, "session_fetch", f->c->rid, f->id, "%s", msg);
    /* the state now comes from the shared tier (metrics: resume source "redis") */
    if (rc == 0 && (!f->sync || !f->had_local || version != f->local_version))
        f->c->fetched_shared = true;
    f->again(f->c, f->req, rc, msg);
    free(f);
}

bool dmn_session_fetch(dmn_call_t *c, const char *id, ProtobufCMessage *req, dmn_refetch_fn again)
{
    store_t *st = c->srv->store;
    if (store_authority(st) && id && id[0] && store_check_sid(id) == 0) {
        /* Redis is the authority: its latest version is checked before any local copy is used
         * (and fetched if ours is stale); Redis unreachable: UNAVAILABLE, never a fork. */
        refetch_t *f = calloc(1, sizeof(*f));
        if (!f) return false;
        *f = (refetch_t){.c = c, .req = req, .again = again, .sync = true};
        snprintf(f->id, sizeof(f->id), "%s", id);
        store_session_t loc = {0};
        f->had_local = store_get(st, id, &loc) == 0;
        f->local_version = loc.version;
        store_session_clear(&loc);
        int rc = store_sync(st, id, refetched, f);
        if (rc == RCD_EUNAVAILABLE) {
            free(f);
            again(c, req, rc,
                  "shared tier (redis) unreachable: session calls refused until it is back");
            return true;
        }
        if (rc) free(f);
        return rc == 0;
    }
    if (!store_shared(st) || !id || !id[0] || store_check_sid(id) ||
        store_get(st, id, NULL) != RCD_ENOTFOUND)
        return false;
    refetch_t *f = calloc(1, sizeof(*f));
    if (!f) return false;
    f->c = c;
    f->req = req;
    f->again = again;
    snprintf(f->id, sizeof(f->id), "%s", id);
    if (store_fetch(st, id, refetched, f) != 0) {
        free(f);
        return false;
    }
    return true;
}

/* Per-tenant quotas of a new session of `owner` holding add_bytes of state: false (the call
 * answered RESOURCE_EXHAUSTED with a retry hint) when the owner is at --tenant-max-sessions or
 * would pass --tenant-max-state-bytes. */
static bool session_quota_ok(dmn_call_t *c, const char *owner, uint64_t add_bytes)
{
    dmn_server_t *s = c->srv;
    if (!s->quota) return true;
    const dmn_quota_limits_t *l = dmn_quota_limits(s->quota);
    if (!l->max_sessions && !l->max_state_bytes) return true;
    const char *tenant = dmn_tenant_of(c, NULL, owner);
    uint64_t n = 0, bytes = 0;
    dmn_tenant_usage(c, owner, &n, &bytes);
    dmn_quota_refusal_t why;
    if (!dmn_quota_session_check(s->quota, tenant, n, bytes, add_bytes, &why)) return true;
    char err[300];
    dmn_quota_refuse(c, tenant, &why, err, sizeof(err));
    dmn_call_fail(c, RCD_ETOOBIG, "%s", err);
    return false;
}

static void create_session(dmn_call_t *c, grpc_byte_buffer *bb)
{
    Recurd__V1__CreateSessionRequest *req = (Recurd__V1__CreateSessionRequest *)dmn_call_unpack(
        c, bb, &recurd__v1__create_session_request__descriptor);
    if (!req) return;
    store_meta_t md[STORE_META_MAX];
    sess_pending_t *p = NULL;
    char id[STORE_ID_MAX + 1], sid[STORE_SID_MAX + 1], err[512];
    dmn_limits_t lim;
    dmn_limits_get(c->srv, &lim);
    if (!valid(c, dmn_validate_create(req, &lim, err, sizeof(err)), err)) goto cleanup;
    int n_meta = meta_from_req(req->metadata, req->n_metadata, md);
    if (req->session_id[0])
        snprintf(id, sizeof(id), "%.*s", STORE_ID_MAX, req->session_id);
    else
        dmn_random_id(id, sizeof(id), "s-");
    if (!(p = calloc(1, sizeof(*p)))) {
        dmn_call_fail(c, RCD_ENOMEM, "out of memory");
        goto cleanup;
    }
    p->c = c;
    if (!session_quota_ok(c, req->owner, 0)) goto cleanup;
    store_attrs_t attrs = {req->owner, req->ttl_seconds};
    int rc = dmn_scope(c, id, sid); /* RCD_EINVAL for a bad id: session_fail says why */
    if (!rc)
        rc = store_create(c->srv->store, sid, md, n_meta, &attrs, dmn_now_ms(), &p->ss,
                          session_durable, p);
    if (rc) {
        session_fail(c, rc, id);
        goto cleanup;
    }
    dmn_expiry_hint(c->srv, p->ss.expires_ms);
    p = NULL; /* session_durable replies */
cleanup:
    free(p);
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* A session RPC's continuation after dmn_session_fetch: a failed lookup (other than "no
 * such session", which the RPC reports itself) fails the call and frees the request. */
static bool fetch_failed(dmn_call_t *c, ProtobufCMessage *m, int fetch_rc, const char *msg)
{
    if (!fetch_rc || fetch_rc == RCD_ENOTFOUND) return false;
    dmn_call_fail(c, fetch_rc, "%s", msg);
    protobuf_c_message_free_unpacked(m, NULL);
    return true;
}

/* Runs `then` on the unpacked request once the session `id` is known here: at once, or after
 * dmn_session_fetch brought it from the shared tier (only where `fetch`). */
static void session_rpc(dmn_call_t *c, ProtobufCMessage *req, const char *id, bool fetch,
                        dmn_refetch_fn then)
{
    if (!req) return;
    char sid[STORE_SID_MAX + 1];
    if (dmn_scope(c, id, sid)) sid[0] = 0;
    if (!(fetch && dmn_session_fetch(c, sid, req, then))) then(c, req, 0, "");
}

static void get_session_req(dmn_call_t *c, ProtobufCMessage *m, int fetch_rc, const char *msg)
{
    Recurd__V1__GetSessionRequest *req = (Recurd__V1__GetSessionRequest *)m;
    if (fetch_failed(c, m, fetch_rc, msg)) return;
    store_session_t ss = {0};
    char sid[STORE_SID_MAX + 1];
    int rc = store_check_id(req->session_id, NULL, 0);
    if (!rc) rc = dmn_scope(c, req->session_id, sid);
    if (!rc) rc = store_get(c->srv->store, sid, &ss);
    if (rc)
        session_fail(c, rc, req->session_id);
    else
        reply_session(c, &ss);
    store_session_clear(&ss);
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

static void get_session(dmn_call_t *c, grpc_byte_buffer *bb)
{
    Recurd__V1__GetSessionRequest *req = (Recurd__V1__GetSessionRequest *)dmn_call_unpack(
        c, bb, &recurd__v1__get_session_request__descriptor);
    if (req) session_rpc(c, &req->base, req->session_id, true, get_session_req);
}

static void fork_session_req(dmn_call_t *c, ProtobufCMessage *m, int fetch_rc, const char *msg)
{
    Recurd__V1__ForkSessionRequest *req = (Recurd__V1__ForkSessionRequest *)m;
    if (fetch_failed(c, m, fetch_rc, msg)) return;
    store_meta_t md[STORE_META_MAX];
    sess_pending_t *p = NULL;
    char id[STORE_ID_MAX + 1], err[512], srcid[STORE_SID_MAX + 1], sid[STORE_SID_MAX + 1];
    int n_meta, rc;
    store_session_t src = {0};
    if (!valid(c, dmn_validate_fork(req, err, sizeof(err)), err)) goto cleanup;
    n_meta = meta_from_req(req->metadata, req->n_metadata, md);
    /* the source and the fork are in the call's scope: a fork inherits the tenant */
    if ((rc = dmn_scope(c, req->session_id, srcid)) ||
        (rc = store_get(c->srv->store, srcid, &src))) {
        session_fail(c, rc, req->session_id);
        goto cleanup;
    }
    if (req->new_session_id[0])
        snprintf(id, sizeof(id), "%s", req->new_session_id);
    else
        dmn_random_id(id, sizeof(id), "s-");
    if (!(p = calloc(1, sizeof(*p)))) {
        dmn_call_fail(c, RCD_ENOMEM, "out of memory");
        goto cleanup;
    }
    p->c = c;
    /* the fork belongs to its own owner, else the source's, and starts with the source's state */
    if (!session_quota_ok(c, req->owner[0] ? req->owner : src.owner,
                          src.has_state ? src.state_len - src.ext_len : 0))
        goto cleanup;
    snprintf(p->src, sizeof(p->src), "%s", srcid);
    store_attrs_t attrs = {req->owner, req->ttl_seconds};
    rc = dmn_scope(c, id, sid);
    if (!rc)
        rc = store_fork(c->srv->store, srcid, sid, md, n_meta, &attrs, dmn_now_ms(), &p->ss,
                        session_durable, p);
    if (rc) {
        if (rc == RCD_EMISMATCH || rc == RCD_EBUSY)
            session_fail(c, rc, req->session_id);
        else
            session_fail(c, rc, id);
        goto cleanup;
    }
    dmn_expiry_hint(c->srv, p->ss.expires_ms);
    p = NULL; /* session_durable replies */
cleanup:
    store_session_clear(&src);
    free(p);
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

static void fork_session(dmn_call_t *c, grpc_byte_buffer *bb)
{
    Recurd__V1__ForkSessionRequest *req = (Recurd__V1__ForkSessionRequest *)dmn_call_unpack(
        c, bb, &recurd__v1__fork_session_request__descriptor);
    if (req) session_rpc(c, &req->base, req->session_id, true, fork_session_req);
}

static void delete_session_req(dmn_call_t *c, ProtobufCMessage *m, int fetch_rc, const char *msg)
{
    Recurd__V1__DeleteSessionRequest *req = (Recurd__V1__DeleteSessionRequest *)m;
    if (fetch_failed(c, m, fetch_rc, msg)) return;
    char sid[STORE_SID_MAX + 1];
    int rc = store_check_id(req->session_id, NULL, 0);
    if (!rc) rc = dmn_scope(c, req->session_id, sid);
    if (!rc && dmn_session_busy(c->srv, sid)) {
        dmn_call_fail(c, RCD_EBUSY, "session '%s' has a turn in progress", req->session_id);
        goto cleanup;
    }
    sess_pending_t *p = NULL;
    if (!rc && !(p = calloc(1, sizeof(*p)))) rc = RCD_ENOMEM;
    if (!rc) {
        p->c = c;
        p->deleting = true;
        snprintf(p->ss.id, sizeof(p->ss.id), "%s", sid);
        rc = store_delete(c->srv->store, sid, session_durable, p);
    }
    if (rc) {
        free(p);
        session_fail(c, rc, req->session_id);
        goto cleanup;
    }
cleanup:
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

static void delete_session(dmn_call_t *c, grpc_byte_buffer *bb)
{
    Recurd__V1__DeleteSessionRequest *req = (Recurd__V1__DeleteSessionRequest *)dmn_call_unpack(
        c, bb, &recurd__v1__delete_session_request__descriptor);
    /* authority mode: the delete is checked against Redis like a turn (a session another
     * replica holds is deleted there too) */
    if (req)
        session_rpc(c, &req->base, req->session_id, store_authority(c->srv->store),
                    delete_session_req);
}

/* ---- tokenizer ----------------------------------------------------------------------------
 * Encoding a few MiB takes most of a second: it runs on the libuv pool, not on the loop. The
 * tokenizer is immutable and thread-safe; the call stays held until the job replies. */

typedef struct tok_job {
    uv_work_t w;
    dmn_call_t *c;
    Recurd__V1__TokenizeRequest *enc; /* one of the two */
    Recurd__V1__DetokenizeRequest *dec;
    int rc;
    char err[256];
    tok_ids_t ids;
    tok_text_t text;
} tok_job_t;

static void tok_work(uv_work_t *w)
{
    tok_job_t *j = w->data;
    const tok_t *tok = j->c->srv->tok;
    if (j->enc) /* protobuf-c does not check UTF-8 in strings; tok_encode does */
        j->rc = tok_encode(tok, j->enc->text, j->c->text_len,
                           j->enc->add_special_tokens ? TOK_ADD_SPECIAL : 0, &j->ids, j->err,
                           sizeof(j->err));
    else
        j->rc = tok_decode(tok, j->dec->token_ids, j->dec->n_token_ids,
                           j->dec->skip_special_tokens ? TOK_SKIP_SPECIAL : 0, &j->text, j->err,
                           sizeof(j->err));
}

static void tok_done(uv_work_t *w, int status)
{
    tok_job_t *j = w->data;
    if (status || j->rc) {
        dmn_call_fail(j->c, status ? RCD_EINTERNAL : j->rc, "%s: %s",
                      j->enc ? "tokenize" : "detokenize", status ? "cancelled" : j->err);
    } else if (j->enc) {
        Recurd__V1__TokenizeResponse r = RECURD__V1__TOKENIZE_RESPONSE__INIT;
        r.n_token_ids = j->ids.n;
        r.token_ids = j->ids.v;
        dmn_call_reply(j->c, &r.base);
    } else {
        Recurd__V1__DetokenizeResponse r = RECURD__V1__DETOKENIZE_RESPONSE__INIT;
        r.text = j->text.p ? j->text.p : "";
        j->c->reply_text_len = j->text.p ? j->text.n : 0; /* it may hold NUL bytes */
        j->c->has_reply_text = true;
        dmn_call_reply(j->c, &r.base);
    }
    tok_ids_free(&j->ids);
    tok_text_free(&j->text);
    if (j->enc) protobuf_c_message_free_unpacked(&j->enc->base, NULL);
    if (j->dec) protobuf_c_message_free_unpacked(&j->dec->base, NULL);
    free(j);
}

static void tok_start(dmn_call_t *c, tok_job_t *j)
{
    j->c = c;
    j->w.data = j;
    if (!c->srv->tok) {
        j->rc = rcd_fail(RCD_EPRECONDITION, j->err, sizeof(j->err), "model '%s' has no tokenizer",
                         c->srv->model_id);
        tok_done(&j->w, 0);
        return;
    }
    int urc = uv_queue_work(c->srv->loop, &j->w, tok_work, tok_done);
    if (urc) {
        j->rc = RCD_EINTERNAL;
        snprintf(j->err, sizeof(j->err), "cannot queue the tokenizer job: %s", uv_strerror(urc));
        tok_done(&j->w, 0);
    }
}

static void tokenize(dmn_call_t *c, grpc_byte_buffer *bb)
{
    Recurd__V1__TokenizeRequest *req = (Recurd__V1__TokenizeRequest *)dmn_call_unpack(
        c, bb, &recurd__v1__tokenize_request__descriptor);
    if (!req) return;
    tok_job_t *j = calloc(1, sizeof(*j));
    if (!model_ok(c, req->model) || !j) {
        if (!j) dmn_call_fail(c, RCD_ENOMEM, "out of memory");
        protobuf_c_message_free_unpacked(&req->base, NULL);
        free(j);
        return;
    }
    j->enc = req;
    tok_start(c, j);
}

static void detokenize(dmn_call_t *c, grpc_byte_buffer *bb)
{
    Recurd__V1__DetokenizeRequest *req = (Recurd__V1__DetokenizeRequest *)dmn_call_unpack(
        c, bb, &recurd__v1__detokenize_request__descriptor);
    if (!req) return;
    tok_job_t *j = NULL;
    char err[512];
    dmn_limits_t lim;
    dmn_limits_get(c->srv, &lim);
    if (!valid(c, dmn_validate_detokenize(req, &lim, err, sizeof(err)), err)) goto fail;
    if (!(j = calloc(1, sizeof(*j)))) {
        dmn_call_fail(c, RCD_ENOMEM, "out of memory");
        goto fail;
    }
    j->dec = req;
    tok_start(c, j);
    return;
fail:
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* ---- health ----------------------------------------------------------------------------- */

/* A Watch stream: sends the status now and after every change. */
typedef struct dmn_watch {
    int last_sent; /* -1: nothing sent yet */
    bool known;
    bool ending; /* the server shuts down: end with UNAVAILABLE once the last status is sent */
} dmn_watch_t;

static int health_status(dmn_server_t *s, const char *service, bool *known)
{
    *known = !service[0] || !strcmp(service, "recurd.v1.Inference");
    if (!*known) return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    return s->draining ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static void watch_pump(dmn_call_t *c)
{
    dmn_watch_t *w = c->ext;
    if (c->send_busy || c->closed || c->status_sent) return;
    bool known;
    int st = w->known ? health_status(c->srv, "", &known)
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    if (st == w->last_sent) {
        if (w->ending) dmn_call_send(c, NULL, true, RCD_EUNAVAILABLE, "server shutting down");
        return;
    }
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
    if (dmn_call_send(c, &r.base, w->ending, RCD_EUNAVAILABLE, "server shutting down") == 0)
        w->last_sent = st;
}

static void watch_send_done(dmn_call_t *c, bool ok)
{
    if (ok) watch_pump(c);
}

static void watch_closed(dmn_call_t *c)
{
    free(c->ext);
    c->ext = NULL;
    c->on_close = NULL;
    c->on_send_done = NULL;
    dmn_call_release(c);
}

static void health(dmn_call_t *c, grpc_byte_buffer *bb, bool watch)
{
    Grpc__Health__V1__HealthCheckRequest *req =
        (Grpc__Health__V1__HealthCheckRequest *)dmn_call_unpack(
            c, bb, &grpc__health__v1__health_check_request__descriptor);
    if (!req) return;
    bool known;
    int st = health_status(c->srv, req->service, &known);
    if (!watch) {
        if (!known) {
            dmn_call_fail(c, RCD_ENOTFOUND, "unknown service '%s'", req->service);
        } else {
            Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
            r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
            dmn_call_reply(c, &r.base);
        }
        protobuf_c_message_free_unpacked(&req->base, NULL);
        return;
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
    dmn_watch_t *w = calloc(1, sizeof(*w));
    if (!w) {
        dmn_call_fail(c, RCD_ENOMEM, "out of memory");
        return;
    }
    w->last_sent = -1;
    w->known = known;
    c->ext = w;
    c->on_close = watch_closed;
    c->on_send_done = watch_send_done;
    dmn_call_watch_close(c); /* the call's hold is released when the client goes away */
    watch_pump(c);
}

void dmn_health_notify(dmn_server_t *s)
{
    for (dmn_call_t *c = s->calls; c; c = c->next)
        if (c->method == DMN_M_HEALTH_WATCH && c->ext) watch_pump(c);
}

/* Each Watch sends its last status, then ends UNAVAILABLE in order behind it (a send still in
 * flight finishes first: watch_send_done pumps again). Cancelling the call instead could drop a
 * NOT_SERVING message the transport had not yet written. */
void dmn_health_end(dmn_server_t *s)
{
    for (dmn_call_t *c = s->calls; c; c = c->next)
        if (c->method == DMN_M_HEALTH_WATCH && c->ext) {
            ((dmn_watch_t *)c->ext)->ending = true;
            watch_pump(c);
        }
}

void dmn_rpc_dispatch(dmn_call_t *c, grpc_byte_buffer *payload)
{
    switch (c->method) {
    case DMN_M_LIST_MODELS:
        list_models(c, payload);
        break;
    case DMN_M_CREATE_SESSION:
        create_session(c, payload);
        break;
    case DMN_M_GET_SESSION:
        get_session(c, payload);
        break;
    case DMN_M_FORK_SESSION:
        fork_session(c, payload);
        break;
    case DMN_M_DELETE_SESSION:
        delete_session(c, payload);
        break;
    case DMN_M_TOKENIZE:
        tokenize(c, payload);
        break;
    case DMN_M_DETOKENIZE:
        detokenize(c, payload);
        break;
    case DMN_M_HEALTH_CHECK:
        health(c, payload, false);
        break;
    case DMN_M_HEALTH_WATCH:
        health(c, payload, true);
        break;
    default:
        dmn_call_fail(c, RCD_EUNSUPPORTED, "method not implemented");
    }
}
