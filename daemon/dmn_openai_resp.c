/* daemon: the OpenAI-compatible API's responses — the completion and chat objects, the SSE
 * chunks, error bodies and the model list (dmn_openai.h); parsing is dmn_openai.c. */
#include "daemon/dmn_openai.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok.h"

/* ---- responses ----------------------------------------------------------------------------- */

const char *dmn_oai_finish(int fr)
{
    switch (fr) {
    case RECURD__V1__FINISH_REASON__FINISH_REASON_LENGTH:
    case RECURD__V1__FINISH_REASON__FINISH_REASON_CONTEXT:
        return "length";
    default:
        return "stop";
    }
}

void dmn_oai_acc_init(dmn_oai_acc_t *a, const dmn_oai_req_t *r, const char *rid, int64_t now_s,
                      const char *model_id)
{
    memset(a, 0, sizeof(*a));
    a->kind = r->kind;
    snprintf(a->id, sizeof(a->id), "%s-%s", r->kind == DMN_OAI_CHAT ? "chatcmpl" : "cmpl", rid);
    a->created = now_s;
    snprintf(a->model, sizeof(a->model), "%s", model_id);
    a->include_usage = r->include_usage;
    a->logprobs = r->logprobs;
    a->top_logprobs = r->top_logprobs;
}

void dmn_oai_acc_free(dmn_oai_acc_t *a)
{
    free(a->text);
    cJSON_Delete(a->lp);
    a->text = NULL;
    a->lp = NULL;
}

/* A token's text for logprobs: its decoded text (special tokens included). */
static cJSON *token_str(const tok_t *tok, int32_t id)
{
    char buf[32];
    if (tok) {
        tok_text_t t = {0};
        char e[64];
        if (tok_decode(tok, &id, 1, 0, &t, e, sizeof(e)) == 0 && t.p) {
            /* cJSON strings end at a NUL byte: a NUL token reads as "\u0000"-less text */
            char *s = malloc(t.n + 1);
            cJSON *j = NULL;
            if (s) {
                memcpy(s, t.p, t.n);
                s[t.n] = 0;
                j = cJSON_CreateString(s);
                free(s);
            }
            tok_text_free(&t);
            return j;
        }
        tok_text_free(&t);
    }
    snprintf(buf, sizeof(buf), "<%" PRId32 ">", id);
    return cJSON_CreateString(buf);
}

static cJSON *bytes_of(const cJSON *s)
{
    cJSON *b = cJSON_CreateArray();
    if (!b) return NULL;
    for (const unsigned char *p = (const unsigned char *)s->valuestring; *p; p++)
        cJSON_AddItemToArray(b, cJSON_CreateNumber(*p));
    return b;
}

/* Logprob entries of m, appended to arr: chat's {token, logprob, bytes, top_logprobs[]}, or for
 * completions the same shape kept to build the four parallel arrays at the end. */
static int add_logprobs(dmn_oai_acc_t *a, cJSON *arr, const Recurd__V1__GenerateResponse *m,
                        const tok_t *tok)
{
    for (size_t i = 0; i < m->n_logprobs; i++) {
        const Recurd__V1__TokenLogprob *t = m->logprobs[i];
        cJSON *e = cJSON_CreateObject();
        if (!e) return RCD_ENOMEM;
        cJSON_AddItemToArray(arr, e);
        cJSON *ts = token_str(tok, t->token_id);
        if (!ts) return RCD_ENOMEM;
        cJSON_AddItemToObject(e, "token", ts);
        cJSON_AddNumberToObject(e, "logprob", isfinite(t->logprob) ? t->logprob : -9999.0);
        cJSON_AddItemToObject(e, "bytes", bytes_of(ts));
        cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");
        if (!tops) return RCD_ENOMEM;
        size_t nt = a->top_logprobs > 0 ? t->n_top : 0;
        for (size_t j = 0; j < nt && j < (size_t)a->top_logprobs; j++) {
            cJSON *o = cJSON_CreateObject();
            if (!o) return RCD_ENOMEM;
            cJSON_AddItemToArray(tops, o);
            cJSON *s = token_str(tok, t->top[j]->token_id);
            if (!s) return RCD_ENOMEM;
            cJSON_AddItemToObject(o, "token", s);
            double lp = t->top[j]->logprob;
            cJSON_AddNumberToObject(o, "logprob", isfinite(lp) ? lp : -9999.0);
            cJSON_AddItemToObject(o, "bytes", bytes_of(s));
        }
    }
    return 0;
}

int dmn_oai_acc_add(dmn_oai_acc_t *a, const Recurd__V1__GenerateResponse *m, size_t text_len,
                    const struct tok *tok)
{
    if (text_len) {
        if (a->text_len + text_len + 1 > a->text_cap) {
            size_t cap = (a->text_len + text_len + 1) * 2;
            char *t = realloc(a->text, cap);
            if (!t) return RCD_ENOMEM;
            a->text = t;
            a->text_cap = cap;
        }
        memcpy(a->text + a->text_len, m->text, text_len);
        a->text_len += text_len;
        a->text[a->text_len] = 0;
    }
    if (a->logprobs && m->n_logprobs) {
        if (!a->lp && !(a->lp = cJSON_CreateArray())) return RCD_ENOMEM;
        if (add_logprobs(a, a->lp, m, tok)) return RCD_ENOMEM;
    }
    if (m->usage) {
        a->usage = *m->usage;
        a->usage.base.descriptor = m->usage->base.descriptor;
        a->has_usage = true;
        a->finish_reason = m->finish_reason;
        a->session_version = m->session_version;
        snprintf(a->session_id, sizeof(a->session_id), "%s", m->session_id ? m->session_id : "");
    }
    return 0;
}

static cJSON *usage_json(const dmn_oai_acc_t *a)
{
    cJSON *u = cJSON_CreateObject();
    if (!u) return NULL;
    cJSON_AddNumberToObject(u, "prompt_tokens", a->usage.prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", a->usage.completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens",
                            (double)a->usage.prompt_tokens + a->usage.completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    if (d) cJSON_AddNumberToObject(d, "cached_tokens", a->usage.cached_prompt_tokens);
    if (a->usage.draft_tokens) { /* speculative decoding: drafts kept and dropped */
        cJSON *c = cJSON_AddObjectToObject(u, "completion_tokens_details");
        if (c) {
            cJSON_AddNumberToObject(c, "accepted_prediction_tokens", a->usage.accepted_tokens);
            cJSON_AddNumberToObject(c, "rejected_prediction_tokens",
                                    (double)a->usage.draft_tokens - a->usage.accepted_tokens);
        }
    }
    return u;
}

/* Completions' logprobs: {tokens, token_logprobs, top_logprobs: [{token: lp}], text_offset}. */
static cJSON *completion_logprobs(const cJSON *entries, size_t *offset)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    if (!toks || !lps || !tops || !offs) {
        cJSON_Delete(o);
        return NULL;
    }
    for (const cJSON *e = entries ? entries->child : NULL; e; e = e->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "token");
        cJSON_AddItemToArray(toks, cJSON_CreateString(t->valuestring));
        cJSON_AddItemToArray(
            lps, cJSON_CreateNumber(cJSON_GetObjectItemCaseSensitive(e, "logprob")->valuedouble));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)*offset));
        *offset += strlen(t->valuestring);
        cJSON *m = cJSON_CreateObject();
        const cJSON *tl = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
        for (const cJSON *x = tl ? tl->child : NULL; x && m; x = x->next) {
            const char *k = cJSON_GetObjectItemCaseSensitive(x, "token")->valuestring;
            if (!cJSON_GetObjectItemCaseSensitive(m, k))
                cJSON_AddNumberToObject(
                    m, k, cJSON_GetObjectItemCaseSensitive(x, "logprob")->valuedouble);
        }
        cJSON_AddItemToArray(tops, m ? m : cJSON_CreateNull());
    }
    return o;
}

static void add_session(cJSON *o, const dmn_oai_acc_t *a)
{
    if (!a->session_id[0]) return;
    cJSON_AddStringToObject(o, "session_id", a->session_id);
    cJSON_AddNumberToObject(o, "session_version", (double)a->session_version);
}

/* A string of n bytes that may hold NUL bytes: cJSON stops at the first. */
static cJSON *str_n(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, p, n);
    s[n] = 0;
    cJSON *j = cJSON_CreateString(s);
    free(s);
    return j;
}

char *dmn_oai_response(const dmn_oai_acc_t *a)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", a->id);
    cJSON_AddStringToObject(o, "object",
                            a->kind == DMN_OAI_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)a->created);
    cJSON_AddStringToObject(o, "model", a->model);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    if (!choices || !c) {
        cJSON_Delete(c);
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *txt = str_n(a->text ? a->text : "", a->text_len);
    if (a->kind == DMN_OAI_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        if (m) {
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddItemToObject(m, "content", txt);
        } else {
            cJSON_Delete(txt);
        }
        if (a->logprobs) {
            cJSON *l = cJSON_AddObjectToObject(c, "logprobs");
            if (l)
                cJSON_AddItemToObject(l, "content",
                                      a->lp ? cJSON_Duplicate(a->lp, 1) : cJSON_CreateArray());
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
    } else {
        cJSON_AddItemToObject(c, "text", txt);
        size_t off = 0;
        if (a->logprobs)
            cJSON_AddItemToObject(c, "logprobs", completion_logprobs(a->lp, &off));
        else
            cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", dmn_oai_finish(a->finish_reason));
    cJSON_AddItemToObject(o, "usage", usage_json(a));
    add_session(o, a);
    return dmn_oai__print_free(o);
}

static char *sse_append(char *buf, size_t *len, const char *data)
{
    size_t n = strlen(data);
    char *b = realloc(buf, *len + n + 9);
    if (!b) {
        free(buf);
        return NULL;
    }
    memcpy(b + *len, "data: ", 6);
    memcpy(b + *len + 6, data, n);
    memcpy(b + *len + 6 + n, "\n\n", 3);
    *len += n + 8;
    return b;
}

static cJSON *chunk_head(const dmn_oai_acc_t *a)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", a->id);
    cJSON_AddStringToObject(o, "object",
                            a->kind == DMN_OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)a->created);
    cJSON_AddStringToObject(o, "model", a->model);
    return o;
}

/* A growing byte buffer for the chunks' fast path. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *p, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf_t *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* p[0..n) as a JSON string, escaped as cJSON prints (", \, control characters), NUL bytes
 * included as \u0000. */
static void sb_json(sbuf_t *b, const char *p, size_t n)
{
    sb_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_put(b, p + run, i - run);
        run = i + 1;
        char e[8];
        switch (c) {
        case '"':
            sb_put(b, "\\\"", 2);
            break;
        case '\\':
            sb_put(b, "\\\\", 2);
            break;
        case '\n':
            sb_put(b, "\\n", 2);
            break;
        case '\r':
            sb_put(b, "\\r", 2);
            break;
        case '\t':
            sb_put(b, "\\t", 2);
            break;
        case '\b':
            sb_put(b, "\\b", 2);
            break;
        case '\f':
            sb_put(b, "\\f", 2);
            break;
        default:
            snprintf(e, sizeof(e), "\\u%04x", c);
            sb_put(b, e, 6);
        }
    }
    sb_put(b, p + run, n - run);
    sb_put(b, "\"", 1);
}

/* The common chunk — a delta of text without logprobs, not the last — written directly
 * (no cJSON tree per token): the same JSON as the general path. */
static char *sse_delta_fast(dmn_oai_acc_t *a, const char *text, size_t text_len, size_t *len)
{
    sbuf_t b = {0};
    char num[32];
    sb_str(&b, "data: {\"id\":");
    sb_json(&b, a->id, strlen(a->id));
    sb_str(&b, a->kind == DMN_OAI_CHAT ? ",\"object\":\"chat.completion.chunk\",\"created\":"
                                       : ",\"object\":\"text_completion\",\"created\":");
    snprintf(num, sizeof(num), "%lld", (long long)a->created);
    sb_str(&b, num);
    sb_str(&b, ",\"model\":");
    sb_json(&b, a->model, strlen(a->model));
    sb_str(&b, ",\"choices\":[{\"index\":0,");
    if (a->kind == DMN_OAI_CHAT) {
        sb_str(&b, a->role_sent ? "\"delta\":{\"content\":"
                                : "\"delta\":{\"role\":\"assistant\",\"content\":");
        sb_json(&b, text, text_len);
        sb_str(&b, "},");
    } else {
        sb_str(&b, "\"text\":");
        sb_json(&b, text, text_len);
        sb_str(&b, ",");
    }
    sb_str(&b, "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    a->role_sent = true;
    *len = b.n;
    return b.p;
}

char *dmn_oai_sse(dmn_oai_acc_t *a, const Recurd__V1__GenerateResponse *m, size_t text_len,
                  bool final, const struct tok *tok, size_t *len)
{
    *len = 0;
    if (!final && !(a->logprobs && m->n_logprobs))
        return sse_delta_fast(a, m->text ? m->text : "", text_len, len);
    char *buf = NULL;
    cJSON *o = chunk_head(a), *lp = NULL;
    if (!o) return NULL;
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    if (!choices || !c) goto oom;
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *txt = str_n(m->text ? m->text : "", text_len);
    if (a->logprobs && m->n_logprobs) {
        if (!(lp = cJSON_CreateArray()) || add_logprobs(a, lp, m, tok)) {
            cJSON_Delete(txt);
            goto oom;
        }
    }
    if (a->kind == DMN_OAI_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (d && !a->role_sent) {
            cJSON_AddStringToObject(d, "role", "assistant");
            a->role_sent = true;
        }
        if (d && (text_len || !final))
            cJSON_AddItemToObject(d, "content", txt);
        else
            cJSON_Delete(txt);
        if (lp) {
            cJSON *l = cJSON_AddObjectToObject(c, "logprobs");
            if (l)
                cJSON_AddItemToObject(l, "content", lp);
            else
                cJSON_Delete(lp);
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
    } else {
        cJSON_AddItemToObject(c, "text", txt);
        if (lp) {
            cJSON_AddItemToObject(c, "logprobs", completion_logprobs(lp, &a->text_offset));
            cJSON_Delete(lp);
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
    }
    lp = NULL;
    if (final && m->usage) {
        cJSON_AddStringToObject(c, "finish_reason", dmn_oai_finish(m->finish_reason));
        a->usage = *m->usage;
        a->has_usage = true;
        a->finish_reason = m->finish_reason;
        a->session_version = m->session_version;
        snprintf(a->session_id, sizeof(a->session_id), "%s", m->session_id ? m->session_id : "");
        add_session(o, a);
    } else {
        cJSON_AddNullToObject(c, "finish_reason");
    }
    char *s = dmn_oai__print_free(o);
    o = NULL;
    if (!s || !(buf = sse_append(NULL, len, s))) {
        free(s);
        return NULL;
    }
    free(s);
    if (final && a->include_usage && a->has_usage) {
        cJSON *u = chunk_head(a);
        if (!u) goto oom_buf;
        cJSON_AddItemToObject(u, "choices", cJSON_CreateArray());
        cJSON_AddItemToObject(u, "usage", usage_json(a));
        add_session(u, a);
        if (!(s = dmn_oai__print_free(u)) || !(buf = sse_append(buf, len, s))) {
            free(s);
            return NULL;
        }
        free(s);
    }
    if (final && !(buf = sse_append(buf, len, "[DONE]"))) return NULL;
    return buf;
oom_buf:
    free(buf);
    return NULL;
oom:
    cJSON_Delete(lp);
    cJSON_Delete(o);
    return NULL;
}

char *dmn_oai_error_json(const char *msg, const char *type, const char *param, const char *code)
{
    cJSON *o = cJSON_CreateObject(), *e = NULL;
    if (!o || !(e = cJSON_AddObjectToObject(o, "error"))) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddStringToObject(e, "message", msg ? msg : "");
    cJSON_AddStringToObject(e, "type", type ? type : "invalid_request_error");
    if (param && param[0])
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    return dmn_oai__print_free(o);
}

char *dmn_oai_sse_error(int http_status, const char *type, const char *code, const char *msg,
                        size_t *len)
{
    *len = 0;
    cJSON *o = cJSON_CreateObject(), *e = NULL;
    if (!o || !(e = cJSON_AddObjectToObject(o, "error"))) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddStringToObject(e, "message", msg ? msg : "");
    cJSON_AddStringToObject(e, "type", type ? type : "server_error");
    cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    cJSON_AddNumberToObject(e, "status", http_status);
    char *s = dmn_oai__print_free(o), *buf = NULL;
    if (s) buf = sse_append(NULL, len, s);
    free(s);
    if (buf) buf = sse_append(buf, len, "[DONE]");
    return buf;
}

char *dmn_oai_models(const char *model_id, int64_t created_s, const char *owned_by)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    cJSON *m = cJSON_CreateObject();
    if (!d || !m) {
        cJSON_Delete(m);
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToArray(d, m);
    cJSON_AddStringToObject(m, "id", model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created_s);
    cJSON_AddStringToObject(m, "owned_by", owned_by);
    return dmn_oai__print_free(o);
}
