/* daemon: API keys at work — loading and reloading --api-keys, the per-call check of
 * `authorization: Bearer KEY` and `x-recurd-tenant`, the mapping of client session ids to
 * tenant-scoped store ids, and the audit log lines. */
#include "daemon/dmn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dmn_auth_open(dmn_server_t *s, char *err, size_t errlen)
{
    s->keys = NULL;
    if (!s->opts->api_keys || !s->opts->api_keys[0]) {
        dmn_log(DMN_INFO, "auth", NULL, NULL,
                "no --api-keys: every client may use every session (no authentication)");
        return 0;
    }
    dmn_keys_t *k = calloc(1, sizeof(*k));
    if (!k) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    int rc = dmn_keys_load(s->opts->api_keys, k, err, errlen);
    if (rc) {
        free(k);
        return rc;
    }
    s->keys = k;
    dmn_log(DMN_INFO, "auth", NULL, NULL, "%zu API key(s) for %zu tenant(s) from %s", k->n,
            k->n_tenants, s->opts->api_keys);
    return 0;
}

void dmn_auth_close(dmn_server_t *s)
{
    dmn_keys_free(s->keys);
    free(s->keys);
    s->keys = NULL;
}

int dmn_auth_reload(dmn_server_t *s)
{
    if (!s->keys) return 0; /* started without keys: a reload does not turn them on */
    char err[512];
    dmn_keys_t k = {0};
    if (dmn_keys_load(s->opts->api_keys, &k, err, sizeof(err))) {
        dmn_log(DMN_ERROR, "api_keys_reload", NULL, NULL, "%s; keeping the %zu key(s) in use",
                err, s->keys->n);
        return -1;
    }
    dmn_keys_free(s->keys);
    *s->keys = k;
    dmn_log(DMN_INFO, "api_keys_reload", NULL, NULL, "%zu API key(s) for %zu tenant(s) from %s",
            k.n, k.n_tenants, s->opts->api_keys);
    return 0;
}

static const char *method_name(dmn_method_t m)
{
    static const char *const names[DMN_M__COUNT] = {
        [DMN_M_LIST_MODELS] = "ListModels",       [DMN_M_CREATE_SESSION] = "CreateSession",
        [DMN_M_GET_SESSION] = "GetSession",       [DMN_M_FORK_SESSION] = "ForkSession",
        [DMN_M_DELETE_SESSION] = "DeleteSession", [DMN_M_TOKENIZE] = "Tokenize",
        [DMN_M_DETOKENIZE] = "Detokenize",        [DMN_M_GENERATE] = "Generate",
        [DMN_M_HEALTH_CHECK] = "Health/Check",    [DMN_M_HEALTH_WATCH] = "Health/Watch",
    };
    return m < DMN_M__COUNT ? names[m] : "unknown";
}

int dmn_auth_check(dmn_server_t *s, const char *rid, const char *what, const dmn_auth_md_t *md,
                   char tenant[STORE_TENANT_MAX + 1], char auth_tenant[STORE_TENANT_MAX + 1],
                   char *err, size_t errlen)
{
    tenant[0] = auth_tenant[0] = 0;
    if (!s->keys) return 0;
    const dmn_key_t *k = md->authz_form ? dmn_keys_find(s->keys, md->digest) : NULL;
    if (!k) {
        dmn_audit("audit_auth_failure", rid, NULL, NULL, md->has_authz ? "invalid" : "missing",
                  "%s: %s API key", what, md->has_authz ? "invalid" : "missing");
        return rcd_fail(RCD_EUNAUTHENTICATED, err, errlen,
                        "missing or invalid API key (send metadata authorization: Bearer KEY)");
    }
    snprintf(auth_tenant, STORE_TENANT_MAX + 1, "%s", k->tenant);
    if (!md->has_tenant) {
        snprintf(tenant, STORE_TENANT_MAX + 1, "%s", k->tenant);
        return 0;
    }
    if (k->role != DMN_ROLE_ADMIN) {
        dmn_audit("audit_auth_failure", rid, k->tenant, NULL, "forbidden",
                  "%s: x-recurd-tenant sent with a user key", what);
        return rcd_fail(RCD_EFORBIDDEN, err, errlen, "x-recurd-tenant needs an admin key");
    }
    if (store_check_tenant(md->tenant, md->tenant_len) || md->tenant_len > STORE_TENANT_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "x-recurd-tenant must be 1 to %d bytes of [A-Za-z0-9._-]",
                        STORE_TENANT_MAX);
    memcpy(tenant, md->tenant, md->tenant_len); /* checked: 1..STORE_TENANT_MAX bytes */
    tenant[md->tenant_len] = 0;
    return 0;
}

int dmn_auth_call(dmn_call_t *c, const dmn_auth_md_t *md)
{
    char err[200];
    int rc = dmn_auth_check(c->srv, c->rid, method_name(c->method), md, c->tenant,
                            c->auth_tenant, err, sizeof(err));
    if (!rc) return 0;
    dmn_call_fail(c, rc, "%s", err);
    return RCD_EREPLIED;
}

int dmn_scope(const dmn_call_t *c, const char *id, char out[STORE_SID_MAX + 1])
{
    return store_scope_id(out, c->tenant, id);
}

const char *dmn_prefix_ns(const dmn_call_t *c)
{
    return c->srv->opts->share_prefix_across_tenants ? "" : c->tenant;
}

void dmn_audit(const char *event, const char *rid, const char *tenant, const char *sid,
               const char *reason, const char *fmt, ...)
{
    char t[STORE_TENANT_MAX + 1] = "", msg[512];
    const char *id = sid;
    if (sid && strchr(sid, STORE_SCOPE_SEP)) { /* a store id: its tenant and the client's id */
        id = store_unscope_id(sid);
        snprintf(t, sizeof(t), "%.*s", (int)(id - 1 - sid), sid);
        if (!tenant) tenant = t;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *kv[] = {"tenant", tenant && tenant[0] ? tenant : NULL, "reason", reason, NULL};
    dmn_log_kv(DMN_INFO, true, event, rid, id, kv, "%s", msg);
}
