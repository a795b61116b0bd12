/* daemon: the OpenAI-compatible API's pure part — request parsing into the internal
 * GenerateRequest, the chat prompt and the session bodies (dmn_openai.h); the responses and
 * SSE chunks are dmn_openai_resp.c. */
#include "daemon/dmn_openai.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok.h"

const char *const dmn_oai_ignored[] = {
    "metadata", "store", "service_tier", "parallel_tool_calls", NULL,
};

/* Fields that change results and are not supported: a clear 400 naming them. */
static const char *const unsupported[] = {
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "best_of",
    "echo",
    "suffix",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    NULL,
};

static int bad(char *param, size_t plen, const char *field, char *err, size_t errlen,
               const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int bad(char *param, size_t plen, const char *field, char *err, size_t errlen,
               const char *fmt, ...)
{
    if (param && plen) snprintf(param, plen, "%s", field);
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    if (field[0]) return rcd_fail(RCD_EINVAL, err, errlen, "%s: %s", field, m);
    return rcd_fail(RCD_EINVAL, err, errlen, "%s", m);
}

static bool in_list(const char *const *l, const char *k)
{
    for (; *l; l++)
        if (!strcmp(*l, k)) return true;
    return false;
}

/* A JSON number that is an integer in [lo, hi]. */
static bool int_in(const cJSON *v, double lo, double hi, int64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

static int num_field(const cJSON *v, const char *name, double lo, double hi, float *out,
                     char *param, size_t plen, char *err, size_t errlen)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return bad(param, plen, name, err, errlen, "must be a number");
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return bad(param, plen, name, err, errlen, "must be between %g and %g", lo, hi);
    *out = (float)v->valuedouble;
    return 0;
}

static int parse_prompt(dmn_oai_req_t *r, const cJSON *v, char *param, size_t plen, char *err,
                        size_t errlen)
{
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(v->child)) v = v->child;
    if (cJSON_IsString(v)) {
        size_t n = strlen(v->valuestring);
        if (!(r->prompt = malloc(n + 1))) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        memcpy(r->prompt, v->valuestring, n + 1);
        r->prompt_len = n;
        return 0;
    }
    if (!cJSON_IsArray(v) || !v->child)
        return bad(param, plen, "prompt", err, errlen,
                   "must be a string, an array of one string or an array of token ids");
    int n = cJSON_GetArraySize(v);
    if (n > DMN_OAI_MAX_BODY_IDS)
        return bad(param, plen, "prompt", err, errlen, "more than %d token ids",
                   DMN_OAI_MAX_BODY_IDS);
    if (!(r->ids = malloc((size_t)n * sizeof(int32_t))))
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t i = 0;
    for (const cJSON *e = v->child; e; e = e->next) {
        int64_t id;
        if (!int_in(e, 0, INT32_MAX, &id))
            return bad(param, plen, "prompt", err, errlen,
                       "an array prompt must hold one string or token ids (integers >= 0); "
                       "batches of prompts are not supported");
        r->ids[i++] = (int32_t)id;
    }
    r->n_ids = i;
    return 0;
}

static int parse_messages(dmn_oai_req_t *r, cJSON *v, char *param, size_t plen, char *err,
                          size_t errlen)
{
    if (!cJSON_IsArray(v) || !v->child)
        return bad(param, plen, "messages", err, errlen, "must be a non-empty array");
    int i = 0;
    for (cJSON *m = v->child; m; m = m->next, i++) {
        char f[48];
        snprintf(f, sizeof(f), "messages[%d]", i);
        if (!cJSON_IsObject(m)) return bad(param, plen, f, err, errlen, "must be an object");
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role) || !role->valuestring[0]) {
            snprintf(f, sizeof(f), "messages[%d].role", i);
            return bad(param, plen, f, err, errlen, "must be a non-empty string");
        }
        cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsArray(content)) {
            /* content parts: text parts are joined (the only kind a text model reads) */
            size_t n = 0;
            for (const cJSON *p = content->child; p; p = p->next) {
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
                const cJSON *x = cJSON_GetObjectItemCaseSensitive(p, "text");
                if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x)) {
                    snprintf(f, sizeof(f), "messages[%d].content", i);
                    return bad(param, plen, f, err, errlen,
                               "only text content parts are supported");
                }
                n += strlen(x->valuestring);
            }
            char *s = malloc(n + 1);
            if (!s) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
            size_t o = 0;
            for (const cJSON *p = content->child; p; p = p->next) {
                const char *x = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
                size_t k = strlen(x);
                memcpy(s + o, x, k);
                o += k;
            }
            s[o] = 0;
            cJSON *str = cJSON_CreateString(s);
            free(s);
            if (!str) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
            cJSON_ReplaceItemInObjectCaseSensitive(m, "content", str);
        } else if (content && !cJSON_IsString(content) && !cJSON_IsNull(content)) {
            snprintf(f, sizeof(f), "messages[%d].content", i);
            return bad(param, plen, f, err, errlen, "must be a string or an array of text parts");
        }
    }
    r->messages = v;
    return 0;
}

/* A JSON string escape \u0000 in body (a backslash run of odd length before the u). */
static bool has_nul_escape(const char *body, size_t len)
{
    for (size_t i = 0; body && i + 6 <= len; i++) {
        if (body[i] != '\\' || body[i + 1] != 'u' || memcmp(body + i + 2, "0000", 4)) continue;
        size_t k = 0;
        while (k < i && body[i - 1 - k] == '\\')
            k++;
        if (k % 2 == 0) return true;
    }
    return false;
}

int dmn_oai_parse(dmn_oai_kind_t kind, const char *body, size_t len, dmn_oai_req_t *out,
                  char *param, size_t plen, char *err, size_t errlen)
{
    dmn_oai_req_t *r = out;
    memset(r, 0, sizeof(*r));
    if (param && plen) param[0] = 0;
    r->kind = kind;
    recurd__v1__generate_request__init(&r->gen);
    recurd__v1__sampling_params__init(&r->sampling);
    recurd__v1__token_ids__init(&r->tokens);
    r->gen.sampling = &r->sampling;
    int rc = 0;
    const char *end = NULL;
    if (body && memchr(body, 0, len)) {
        rc = bad(param, plen, "", err, errlen, "the body is not valid JSON (a NUL byte)");
        goto fail;
    }
    if (has_nul_escape(body, len)) {
        /* cJSON strings end at a NUL: the text would be cut silently */
        rc = bad(param, plen, "", err, errlen, "strings holding \\u0000 are not supported");
        goto fail;
    }
    r->root = cJSON_ParseWithLengthOpts(body ? body : "", len, &end, 0);
    if (!r->root) {
        size_t at = end && body && end >= body ? (size_t)(end - body) : 0;
        rc = bad(param, plen, "", err, errlen, "the body is not valid JSON (near byte %zu)", at);
        goto fail;
    }
    if (!cJSON_IsObject(r->root)) {
        rc = bad(param, plen, "", err, errlen, "the body must be a JSON object");
        goto fail;
    }
    bool have_prompt = false, have_lp = false, have_toplp = false;
    int64_t toplp = 0;
    for (cJSON *v = r->root->child; v; v = v->next) {
        const char *k = v->string;
        int64_t iv;
        if (!k) continue;
        if (!strcmp(k, "model")) {
            if (!cJSON_IsString(v) || strlen(v->valuestring) >= sizeof(r->model)) {
                rc = bad(param, plen, k, err, errlen, "must be a string of at most %zu bytes",
                         sizeof(r->model) - 1);
                goto fail;
            }
            snprintf(r->model, sizeof(r->model), "%s", v->valuestring);
        } else if (!strcmp(k, "prompt") && kind == DMN_OAI_COMPLETIONS) {
            if (have_prompt) {
                rc = bad(param, plen, k, err, errlen, "given twice");
                goto fail;
            }
            if ((rc = parse_prompt(r, v, param, plen, err, errlen))) goto fail;
            have_prompt = true;
        } else if (!strcmp(k, "messages") && kind == DMN_OAI_CHAT) {
            if (have_prompt) {
                rc = bad(param, plen, k, err, errlen, "given twice");
                goto fail;
            }
            if ((rc = parse_messages(r, v, param, plen, err, errlen))) goto fail;
            have_prompt = true;
        } else if (!strcmp(k, "stream")) {
            if (!cJSON_IsBool(v) && !cJSON_IsNull(v)) {
                rc = bad(param, plen, k, err, errlen, "must be a boolean");
                goto fail;
            }
            r->stream = cJSON_IsTrue(v);
        } else if (!strcmp(k, "stream_options")) {
            if (cJSON_IsNull(v)) continue;
            const cJSON *iu = cJSON_GetObjectItemCaseSensitive(v, "include_usage");
            if (!cJSON_IsObject(v) || (iu && !cJSON_IsBool(iu))) {
                rc = bad(param, plen, "stream_options", err, errlen,
                         "must be an object with a boolean include_usage");
                goto fail;
            }
            r->include_usage = cJSON_IsTrue(iu);
        } else if (!strcmp(k, "temperature")) {
            if (cJSON_IsNull(v)) continue;
            if ((rc = num_field(v, k, 0, 2, &r->sampling.temperature, param, plen, err, errlen)))
                goto fail;
            r->sampling._temperature_case = RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE;
        } else if (!strcmp(k, "top_p")) {
            if (cJSON_IsNull(v)) continue;
            if ((rc = num_field(v, k, 0, 1, &r->sampling.top_p, param, plen, err, errlen)))
                goto fail;
            if (r->sampling.top_p <= 0) {
                rc = bad(param, plen, k, err, errlen, "must be greater than 0");
                goto fail;
            }
        } else if (!strcmp(k, "presence_penalty")) {
            if (cJSON_IsNull(v)) continue;
            if ((rc = num_field(v, k, -2, 2, &r->sampling.presence_penalty, param, plen, err,
                                errlen)))
                goto fail;
        } else if (!strcmp(k, "frequency_penalty")) {
            if (cJSON_IsNull(v)) continue;
            if ((rc = num_field(v, k, -2, 2, &r->sampling.frequency_penalty, param, plen, err,
                                errlen)))
                goto fail;
        } else if (!strcmp(k, "max_tokens") || !strcmp(k, "max_completion_tokens")) {
            if (cJSON_IsNull(v)) continue;
            if (!int_in(v, 1, UINT32_MAX, &iv)) {
                rc = bad(param, plen, k, err, errlen, "must be an integer >= 1");
                goto fail;
            }
            r->sampling.max_tokens = (uint32_t)iv;
        } else if (!strcmp(k, "seed")) {
            if (cJSON_IsNull(v)) continue;
            /* JSON numbers are doubles: integers up to 2^53 are exact */
            if (!int_in(v, -9007199254740992.0, 9007199254740992.0, &iv)) {
                rc = bad(param, plen, k, err, errlen, "must be an integer");
                goto fail;
            }
            r->sampling.seed = (uint64_t)iv;
            r->sampling._seed_case = RECURD__V1__SAMPLING_PARAMS___SEED_SEED;
        } else if (!strcmp(k, "stop")) {
            if (cJSON_IsNull(v)) continue;
            const cJSON *one = cJSON_IsString(v) ? v : NULL;
            int n = one ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
            if (n < 0 || n > DMN_OAI_MAX_STOP) {
                rc = bad(param, plen, k, err, errlen,
                         "must be a string or an array of at most %d strings", DMN_OAI_MAX_STOP);
                goto fail;
            }
            size_t i = 0;
            for (const cJSON *e = one ? one : v->child; e && i < (size_t)n;
                 e = one ? NULL : e->next) {
                if (!cJSON_IsString(e) || !e->valuestring[0]) {
                    rc = bad(param, plen, k, err, errlen, "stop strings must be non-empty strings");
                    goto fail;
                }
                r->stops[i++] = e->valuestring;
            }
            r->sampling.stop = r->stops;
            r->sampling.n_stop = i;
        } else if (!strcmp(k, "logprobs")) {
            if (cJSON_IsNull(v)) continue;
            if (kind == DMN_OAI_CHAT) {
                if (!cJSON_IsBool(v)) {
                    rc = bad(param, plen, k, err, errlen, "must be a boolean");
                    goto fail;
                }
                r->logprobs = cJSON_IsTrue(v);
            } else {
                if (!int_in(v, 0, DMN_OAI_MAX_TOP_LOGPROBS, &iv)) {
                    rc = bad(param, plen, k, err, errlen, "must be an integer from 0 to %d",
                             DMN_OAI_MAX_TOP_LOGPROBS);
                    goto fail;
                }
                r->logprobs = true;
                r->top_logprobs = (int)iv;
            }
            have_lp = true;
        } else if (!strcmp(k, "top_logprobs") && kind == DMN_OAI_CHAT) {
            if (cJSON_IsNull(v)) continue;
            if (!int_in(v, 0, DMN_OAI_MAX_TOP_LOGPROBS, &toplp)) {
                rc = bad(param, plen, k, err, errlen, "must be an integer from 0 to %d",
                         DMN_OAI_MAX_TOP_LOGPROBS);
                goto fail;
            }
            have_toplp = true;
        } else if (!strcmp(k, "n")) {
            if (cJSON_IsNull(v)) continue;
            if (!int_in(v, 1, 1, &iv)) {
                rc = bad(param, plen, k, err, errlen, "only n=1 is supported");
                goto fail;
            }
        } else if (!strcmp(k, "user")) {
            if (!cJSON_IsString(v) && !cJSON_IsNull(v)) {
                rc = bad(param, plen, k, err, errlen, "must be a string");
                goto fail;
            }
            if (cJSON_IsString(v)) {
                /* logged: printable ASCII only, bounded */
                size_t o = 0;
                for (const char *p = v->valuestring; *p && o + 1 < sizeof(r->user); p++)
                    r->user[o++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
                r->user[o] = 0;
            }
        } else if (!strcmp(k, "session_id")) {
            if (cJSON_IsNull(v)) continue; /* null or "": a stateless call, as gRPC's "" */
            if (!cJSON_IsString(v) || strlen(v->valuestring) > STORE_ID_MAX) {
                rc = bad(param, plen, k, err, errlen, "must be a string of at most %d bytes",
                         STORE_ID_MAX);
                goto fail;
            }
            r->gen.session_id = v->valuestring;
        } else if (!strcmp(k, "expected_version")) {
            if (cJSON_IsNull(v)) continue;
            if (!int_in(v, 0, 9007199254740992.0, &iv)) {
                rc = bad(param, plen, k, err, errlen, "must be an integer >= 0");
                goto fail;
            }
            r->gen.expected_version = (uint64_t)iv;
            r->gen._expected_version_case =
                RECURD__V1__GENERATE_REQUEST___EXPECTED_VERSION_EXPECTED_VERSION;
        } else if (in_list(dmn_oai_ignored, k)) {
            continue;
        } else if (in_list(unsupported, k)) {
            rc = bad(param, plen, k, err, errlen, "not supported by this server");
            goto fail;
        } else if (!strcmp(k, "prompt") || !strcmp(k, "messages") || !strcmp(k, "top_logprobs")) {
            rc = bad(param, plen, k, err, errlen, "not a field of this endpoint (use %s)",
                     kind == DMN_OAI_CHAT ? "/v1/completions" : "/v1/chat/completions");
            goto fail;
        } else {
            rc = bad(param, plen, k, err, errlen, "unknown field");
            goto fail;
        }
    }
    if (!have_prompt) {
        rc = bad(param, plen, kind == DMN_OAI_CHAT ? "messages" : "prompt", err, errlen,
                 "is required");
        goto fail;
    }
    if (r->gen._expected_version_case && !r->gen.session_id[0]) {
        rc = bad(param, plen, "expected_version", err, errlen, "needs session_id");
        goto fail;
    }
    if (kind == DMN_OAI_CHAT && have_toplp) {
        if (!r->logprobs && toplp > 0) {
            rc = bad(param, plen, "top_logprobs", err, errlen, "needs logprobs: true");
            goto fail;
        }
        r->top_logprobs = (int)toplp;
    }
    (void)have_lp;
    /* The internal request: our logprobs count is the alternatives + the sampled one's, at
     * least 1 (0 means none there). */
    if (r->logprobs) r->sampling.logprobs = (uint32_t)(r->top_logprobs > 0 ? r->top_logprobs : 1);
    if (r->ids) {
        r->tokens.ids = r->ids;
        r->tokens.n_ids = r->n_ids;
        r->gen.tokens = &r->tokens;
        r->gen.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    } else if (r->prompt) {
        r->gen.text = r->prompt;
        r->gen.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT;
        r->gen.add_special_tokens = true; /* a plain completion starts like the model's training */
    }
    r->gen.model = r->model;
    return 0;
fail:
    dmn_oai_req_free(r);
    return rc;
}

void dmn_oai_req_free(dmn_oai_req_t *r)
{
    if (!r) return;
    cJSON_Delete(r->root);
    free(r->prompt);
    free(r->ids);
    r->root = NULL;
    r->prompt = NULL;
    r->ids = NULL;
}

/* ---- chat ---------------------------------------------------------------------------------- */

#define SENT_A "\x01recurd-prev-user\x01"
#define SENT_B "\x01recurd-prev-assistant\x01"

int dmn_oai_chat_prompt(const cJSON *messages, bool continuation, const char *eot,
                        dmn_oai_render_fn render, void *arg, char **out, size_t *out_len, char *err,
                        size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (!continuation) return render(arg, messages, true, out, out_len, err, errlen);
    cJSON *msgs = cJSON_CreateArray();
    cJSON *u = cJSON_CreateObject(), *a = cJSON_CreateObject();
    int rc = RCD_ENOMEM;
    if (!msgs || !u || !a) goto oom;
    cJSON_AddItemToArray(msgs, u);
    cJSON_AddItemToArray(msgs, a);
    if (!cJSON_AddStringToObject(u, "role", "user") ||
        !cJSON_AddStringToObject(u, "content", SENT_A) ||
        !cJSON_AddStringToObject(a, "role", "assistant") ||
        !cJSON_AddStringToObject(a, "content", SENT_B))
        goto oom_arr;
    for (const cJSON *m = messages ? messages->child : NULL; m; m = m->next) {
        cJSON *d = cJSON_Duplicate(m, 1);
        if (!d) goto oom_arr;
        cJSON_AddItemToArray(msgs, d);
    }
    char *full = NULL;
    size_t n = 0;
    rc = render(arg, msgs, true, &full, &n, err, errlen);
    cJSON_Delete(msgs);
    if (rc) return rc;
    const char *b = strstr(full, SENT_B);
    if (!b) {
        free(full);
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "the chat template does not render an assistant message's content "
                        "verbatim: a session's chat turn cannot be rendered alone");
    }
    const char *p = b + strlen(SENT_B);
    if (eot && eot[0] && !strncmp(p, eot, strlen(eot))) p += strlen(eot);
    size_t k = (size_t)(full + n - p);
    memmove(full, p, k);
    full[k] = 0;
    *out = full;
    *out_len = k;
    return 0;
oom_arr:
    cJSON_Delete(msgs);
    return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
oom:
    cJSON_Delete(msgs);
    cJSON_Delete(u);
    cJSON_Delete(a);
    return rcd_fail(rc, err, errlen, "out of memory");
}

/* Prints o unformatted and deletes it (NULL if o is NULL or on failure). */
char *dmn_oai__print_free(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* ---- sessions ------------------------------------------------------------------------------ */

static int session_body(const char *body, size_t len, cJSON **root, const char *id_field, char **id,
                        Recurd__V1__MetadataEntry ***md, size_t *n_md, char **owner, uint32_t *ttl,
                        char *param, size_t plen, char *err, size_t errlen)
{
    if (param && plen) param[0] = 0;
    *root = len ? cJSON_ParseWithLength(body, len) : cJSON_CreateObject();
    if (!*root) return bad(param, plen, "", err, errlen, "the body is not valid JSON");
    if (!cJSON_IsObject(*root))
        return bad(param, plen, "", err, errlen, "the body must be a JSON object");
    for (cJSON *v = (*root)->child; v; v = v->next) {
        const char *k = v->string;
        int64_t iv;
        if (!strcmp(k, id_field) || !strcmp(k, "owner")) {
            if (cJSON_IsNull(v)) continue;
            if (!cJSON_IsString(v)) return bad(param, plen, k, err, errlen, "must be a string");
            if (!strcmp(k, "owner"))
                *owner = v->valuestring;
            else
                *id = v->valuestring;
        } else if (!strcmp(k, "ttl_seconds")) {
            if (!int_in(v, 0, UINT32_MAX, &iv))
                return bad(param, plen, k, err, errlen, "must be an integer >= 0");
            *ttl = (uint32_t)iv;
        } else if (!strcmp(k, "metadata")) {
            if (cJSON_IsNull(v)) continue;
            if (!cJSON_IsObject(v))
                return bad(param, plen, k, err, errlen, "must be an object of strings");
            if (*md) return bad(param, plen, k, err, errlen, "given twice");
            int n = cJSON_GetArraySize(v);
            *md = calloc((size_t)n + 1, sizeof(**md) + sizeof(Recurd__V1__MetadataEntry));
            if (!*md) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
            Recurd__V1__MetadataEntry *ent = (Recurd__V1__MetadataEntry *)(*md + n + 1);
            for (cJSON *e = v->child; e; e = e->next) {
                if (!cJSON_IsString(e))
                    return bad(param, plen, k, err, errlen, "values must be strings");
                recurd__v1__metadata_entry__init(&ent[*n_md]);
                ent[*n_md].key = e->string;
                ent[*n_md].value = e->valuestring;
                (*md)[*n_md] = &ent[*n_md];
                (*n_md)++;
            }
        } else {
            return bad(param, plen, k, err, errlen, "unknown field");
        }
    }
    return 0;
}

int dmn_oai_session_create_parse(const char *body, size_t len, Recurd__V1__CreateSessionRequest *cr,
                                 cJSON **root, char *param, size_t plen, char *err, size_t errlen)
{
    recurd__v1__create_session_request__init(cr);
    return session_body(body, len, root, "session_id", &cr->session_id, &cr->metadata,
                        &cr->n_metadata, &cr->owner, &cr->ttl_seconds, param, plen, err, errlen);
}

int dmn_oai_session_fork_parse(const char *body, size_t len, Recurd__V1__ForkSessionRequest *fr,
                               cJSON **root, char *param, size_t plen, char *err, size_t errlen)
{
    recurd__v1__fork_session_request__init(fr);
    return session_body(body, len, root, "new_session_id", &fr->new_session_id, &fr->metadata,
                        &fr->n_metadata, &fr->owner, &fr->ttl_seconds, param, plen, err, errlen);
}

void dmn_oai_session_msg_free(ProtobufCMessage *m)
{
    if (m->descriptor == &recurd__v1__create_session_request__descriptor)
        free(((Recurd__V1__CreateSessionRequest *)m)->metadata);
    else if (m->descriptor == &recurd__v1__fork_session_request__descriptor)
        free(((Recurd__V1__ForkSessionRequest *)m)->metadata);
}

char *dmn_oai_session_json(const Recurd__V1__Session *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "object", "session");
    cJSON_AddStringToObject(o, "id", s->session_id);
    cJSON_AddStringToObject(o, "model", s->model);
    cJSON_AddNumberToObject(o, "version", (double)s->version);
    cJSON_AddNumberToObject(o, "token_count", (double)s->token_count);
    cJSON_AddNumberToObject(o, "created_unix_ms", (double)s->created_unix_ms);
    cJSON_AddNumberToObject(o, "updated_unix_ms", (double)s->updated_unix_ms);
    cJSON *md = cJSON_AddObjectToObject(o, "metadata");
    for (size_t i = 0; md && i < s->n_metadata; i++)
        cJSON_AddStringToObject(md, s->metadata[i]->key, s->metadata[i]->value);
    if (s->parent_session_id && s->parent_session_id[0])
        cJSON_AddStringToObject(o, "parent_session_id", s->parent_session_id);
    else
        cJSON_AddNullToObject(o, "parent_session_id");
    cJSON_AddStringToObject(o, "owner", s->owner ? s->owner : "");
    cJSON_AddNumberToObject(o, "ttl_seconds", s->ttl_seconds);
    cJSON_AddNumberToObject(o, "expires_unix_ms", (double)s->expires_unix_ms);
    return dmn_oai__print_free(o);
}
