/* Chat templates: values — construction, the context's JSON, Python's truthiness, equality,
 * str()/repr() and json.dumps (transformers' tojson) formatting. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

int ct_buf_put(ct_rt_t *rt, ct_buf_t *b, const char *s, size_t n)
{
    if (n > rt->max_output || b->n > rt->max_output - n)
        return ct_fail(rt, NULL, RCD_ERANGE, "output exceeds the %zu-byte budget", rt->max_output);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return ct_fail(rt, NULL, RCD_ENOMEM, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

ct_val_t ct_mkstr(const char *p, size_t n)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_STR;
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

int ct_mkstr_copy(ct_rt_t *rt, const char *p, size_t n, ct_val_t *out)
{
    char *s = ct_strdup(&rt->arena, p, n);
    if (!s) return RCD_ENOMEM;
    *out = ct_mkstr(s, n);
    return 0;
}

ct_list_t *ct_list_new(ct_rt_t *rt, size_t cap)
{
    ct_list_t *l = ct_alloc(&rt->arena, sizeof(*l));
    if (!l) return NULL;
    if (cap) {
        if (cap > SIZE_MAX / sizeof(ct_val_t) / 2) return NULL;
        l->v = ct_alloc(&rt->arena, cap * sizeof(*l->v));
        if (!l->v) return NULL;
        l->cap = cap;
    }
    return l;
}

int ct_list_push(ct_rt_t *rt, ct_list_t *l, ct_val_t v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        ct_val_t *nv = ct_alloc(&rt->arena, cap * sizeof(*nv));
        if (!nv) return RCD_ENOMEM;
        if (l->n) memcpy(nv, l->v, l->n * sizeof(*nv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
    return 0;
}

ct_dict_t *ct_dict_new(ct_rt_t *rt, size_t cap)
{
    ct_dict_t *d = ct_alloc(&rt->arena, sizeof(*d));
    if (!d) return NULL;
    if (cap) {
        d->k = ct_alloc(&rt->arena, cap * sizeof(*d->k));
        d->v = ct_alloc(&rt->arena, cap * sizeof(*d->v));
        if (!d->k || !d->v) return NULL;
        d->cap = cap;
    }
    return d;
}

static int dict_append(ct_rt_t *rt, ct_dict_t *d, const char *k, size_t kn, ct_val_t v)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        ct_str_t *nk = ct_alloc(&rt->arena, cap * sizeof(*nk));
        ct_val_t *nv = ct_alloc(&rt->arena, cap * sizeof(*nv));
        if (!nk || !nv) return RCD_ENOMEM;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(*nk));
            memcpy(nv, d->v, d->n * sizeof(*nv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n].p = k;
    d->k[d->n].n = kn;
    d->v[d->n] = v;
    d->n++;
    return 0;
}

int ct_dict_set(ct_rt_t *rt, ct_dict_t *d, const char *k, size_t kn, ct_val_t v)
{
    ct_val_t *old = ct_dict_get(d, k, kn);
    if (old) {
        *old = v;
        return 0;
    }
    return dict_append(rt, d, k, kn, v);
}

/* The last entry of a key wins (a JSON object with a repeated key, as Python's json). */
ct_val_t *ct_dict_get(const ct_dict_t *d, const char *k, size_t kn)
{
    for (size_t i = d->n; i-- > 0;)
        if (d->k[i].n == kn && memcmp(d->k[i].p, k, kn) == 0) return &d->v[i];
    return NULL;
}

int ct_from_json(ct_rt_t *rt, const cJSON *j, ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    if (cJSON_IsString(j)) {
        *out = ct_mkstr(j->valuestring ? j->valuestring : "",
                        j->valuestring ? strlen(j->valuestring) : 0);
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9.2e18) {
            out->t = CT_INT;
            out->u.i = (int64_t)d;
        } else {
            out->t = CT_FLOAT;
            out->u.f = d;
        }
    } else if (cJSON_IsBool(j)) {
        out->t = CT_BOOL;
        out->u.i = cJSON_IsTrue(j);
    } else if (cJSON_IsNull(j)) {
        out->t = CT_NONE;
    } else if (cJSON_IsArray(j)) {
        ct_list_t *l = ct_list_new(rt, (size_t)cJSON_GetArraySize(j));
        if (!l) return RCD_ENOMEM;
        for (const cJSON *c = j->child; c; c = c->next) {
            int rc = ct_from_json(rt, c, &l->v[l->n]);
            if (rc) return rc;
            l->n++;
        }
        out->t = CT_LIST;
        out->u.l = l;
    } else if (cJSON_IsObject(j)) {
        ct_dict_t *d = ct_dict_new(rt, (size_t)cJSON_GetArraySize(j));
        if (!d) return RCD_ENOMEM;
        for (const cJSON *c = j->child; c; c = c->next) {
            ct_val_t v;
            int rc = ct_from_json(rt, c, &v);
            if (rc) return rc;
            const char *k = c->string ? c->string : "";
            if (dict_append(rt, d, k, strlen(k), v)) return RCD_ENOMEM;
        }
        out->t = CT_DICT;
        out->u.d = d;
    } else {
        out->t = CT_NONE;
    }
    return 0;
}

const char *ct_type_name(const ct_val_t *v)
{
    switch (v->t) {
    case CT_UNDEF:
        return "Undefined";
    case CT_NONE:
        return "NoneType";
    case CT_BOOL:
        return "bool";
    case CT_INT:
        return "int";
    case CT_FLOAT:
        return "float";
    case CT_STR:
        return "str";
    case CT_LIST:
        return "list";
    case CT_DICT:
        return v->u.d->ns ? "Namespace" : "dict";
    case CT_LOOP:
        return "LoopContext";
    case CT_MACRO:
        return "Macro";
    default:
        return "function";
    }
}

int ct_truthy(const ct_val_t *v)
{
    switch (v->t) {
    case CT_BOOL:
    case CT_INT:
        return v->u.i != 0;
    case CT_FLOAT:
        return v->u.f != 0;
    case CT_STR:
        return v->u.s.n != 0;
    case CT_LIST:
        return v->u.l->n != 0;
    case CT_DICT:
        return v->u.d->ns || v->u.d->n != 0;
    case CT_UNDEF:
    case CT_NONE:
        return 0;
    default:
        return 1;
    }
}

int ct_equal(const ct_val_t *a, const ct_val_t *b)
{
    int an = a->t == CT_INT || a->t == CT_BOOL || a->t == CT_FLOAT;
    int bn = b->t == CT_INT || b->t == CT_BOOL || b->t == CT_FLOAT;
    if (an && bn) {
        if (a->t == CT_FLOAT || b->t == CT_FLOAT) {
            double x = a->t == CT_FLOAT ? a->u.f : (double)a->u.i;
            double y = b->t == CT_FLOAT ? b->u.f : (double)b->u.i;
            return x == y;
        }
        return a->u.i == b->u.i;
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case CT_UNDEF:
    case CT_NONE:
        return 1;
    case CT_STR:
        return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    case CT_LIST:
        if (a->u.l->n != b->u.l->n) return 0;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!ct_equal(&a->u.l->v[i], &b->u.l->v[i])) return 0;
        return 1;
    case CT_DICT:
        if (a->u.d->ns || b->u.d->ns) return a->u.d == b->u.d;
        if (a->u.d->n != b->u.d->n) return 0;
        for (size_t i = 0; i < a->u.d->n; i++) {
            ct_val_t *o = ct_dict_get(b->u.d, a->u.d->k[i].p, a->u.d->k[i].n);
            if (!o || !ct_equal(&a->u.d->v[i], o)) return 0;
        }
        return 1;
    case CT_LOOP:
    case CT_CYCLE:
        return a->u.loop == b->u.loop;
    case CT_MACRO:
        return a->u.m == b->u.m;
    default:
        return a->u.i == b->u.i;
    }
}

/* Python's repr(float) (shortest round-trip digits; fixed for 1e-4 <= |x| < 1e16). */
static void fmt_float(char *o, size_t on, double d, int json)
{
    if (isnan(d)) {
        snprintf(o, on, "%s", json ? "NaN" : "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(o, on, "%s%s", d < 0 ? "-" : "", json ? "Infinity" : "inf");
        return;
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof(buf), "%.*e", p - 1, d);
        if (strtod(buf, NULL) == d) break;
    }
    const char *s = buf;
    int neg = *s == '-';
    if (neg) s++;
    char dig[24];
    size_t nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9' && nd < sizeof(dig) - 1) dig[nd++] = *s;
    int e = *s == 'e' ? atoi(s + 1) : 0;
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    dig[nd] = 0;
    size_t k = 0;
    char r[64];
    if (neg) r[k++] = '-';
    if (e >= -5 && e < 16) {
        if (e >= 0) {
            for (int i = 0; i <= e; i++)
                r[k++] = (size_t)i < nd ? dig[i] : '0';
            r[k++] = '.';
            if ((size_t)e + 1 < nd)
                for (size_t i = (size_t)e + 1; i < nd; i++)
                    r[k++] = dig[i];
            else
                r[k++] = '0';
        } else {
            r[k++] = '0';
            r[k++] = '.';
            for (int i = 0; i < -e - 1; i++)
                r[k++] = '0';
            for (size_t i = 0; i < nd; i++)
                r[k++] = dig[i];
        }
        r[k] = 0;
    } else {
        r[k++] = dig[0];
        if (nd > 1) {
            r[k++] = '.';
            for (size_t i = 1; i < nd; i++)
                r[k++] = dig[i];
        }
        snprintf(r + k, sizeof(r) - k, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
    snprintf(o, on, "%s", r);
}

static int repr_str(ct_rt_t *rt, ct_buf_t *b, const char *s, size_t n)
{
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    int rc = ct_buf_put(rt, b, &q, 1);
    size_t run = 0;
    for (size_t i = 0; rc == 0 && i <= n; i++) {
        unsigned char c = i < n ? (unsigned char)s[i] : 0;
        if (i < n && c >= 0x20 && c != 0x7f && c != '\\' && c != (unsigned char)q) continue;
        rc = ct_buf_put(rt, b, s + run, i - run);
        run = i + 1;
        if (rc || i == n) break;
        char e[8];
        if (c == '\n')
            snprintf(e, sizeof(e), "\\n");
        else if (c == '\r')
            snprintf(e, sizeof(e), "\\r");
        else if (c == '\t')
            snprintf(e, sizeof(e), "\\t");
        else if (c == '\\' || c == (unsigned char)q)
            snprintf(e, sizeof(e), "\\%c", c);
        else
            snprintf(e, sizeof(e), "\\x%02x", c);
        rc = ct_buf_put(rt, b, e, strlen(e));
    }
    return rc ? rc : ct_buf_put(rt, b, &q, 1);
}

static int repr(ct_rt_t *rt, ct_buf_t *b, const ct_val_t *v, int depth)
{
    if (depth > 100) return ct_fail(rt, NULL, RCD_ERANGE, "value nested too deeply to print");
    if (v->t == CT_STR) return repr_str(rt, b, v->u.s.p, v->u.s.n);
    if (v->t == CT_LIST) {
        int tup = v->u.l->tuple;
        int rc = ct_buf_put(rt, b, tup ? "(" : "[", 1);
        for (size_t i = 0; rc == 0 && i < v->u.l->n; i++) {
            if (i) rc = ct_buf_put(rt, b, ", ", 2);
            if (rc == 0) rc = repr(rt, b, &v->u.l->v[i], depth + 1);
        }
        if (rc == 0 && tup && v->u.l->n == 1) rc = ct_buf_put(rt, b, ",", 1);
        return rc ? rc : ct_buf_put(rt, b, tup ? ")" : "]", 1);
    }
    if (v->t == CT_DICT) {
        int rc = v->u.d->ns ? ct_buf_put(rt, b, "<Namespace ", 11) : 0;
        if (rc == 0) rc = ct_buf_put(rt, b, "{", 1);
        for (size_t i = 0; rc == 0 && i < v->u.d->n; i++) {
            if (i) rc = ct_buf_put(rt, b, ", ", 2);
            if (rc == 0) rc = repr_str(rt, b, v->u.d->k[i].p, v->u.d->k[i].n);
            if (rc == 0) rc = ct_buf_put(rt, b, ": ", 2);
            if (rc == 0) rc = repr(rt, b, &v->u.d->v[i], depth + 1);
        }
        if (rc == 0) rc = ct_buf_put(rt, b, "}", 1);
        return rc || !v->u.d->ns ? rc : ct_buf_put(rt, b, ">", 1);
    }
    if (v->t == CT_UNDEF) return ct_buf_put(rt, b, "Undefined", 9);
    return ct_to_str(rt, b, v);
}

int ct_to_str(ct_rt_t *rt, ct_buf_t *b, const ct_val_t *v)
{
    char num[64];
    switch (v->t) {
    case CT_UNDEF:
        return 0;
    case CT_NONE:
        return ct_buf_put(rt, b, "None", 4);
    case CT_BOOL:
        return v->u.i ? ct_buf_put(rt, b, "True", 4) : ct_buf_put(rt, b, "False", 5);
    case CT_INT:
        snprintf(num, sizeof(num), "%lld", (long long)v->u.i);
        return ct_buf_put(rt, b, num, strlen(num));
    case CT_FLOAT:
        fmt_float(num, sizeof(num), v->u.f, 0);
        return ct_buf_put(rt, b, num, strlen(num));
    case CT_STR:
        return ct_buf_put(rt, b, v->u.s.p, v->u.s.n);
    case CT_LIST:
    case CT_DICT:
        return repr(rt, b, v, 0);
    case CT_LOOP:
        return ct_buf_put(rt, b, "<LoopContext>", 13);
    case CT_MACRO:
        snprintf(num, sizeof(num), "<Macro '%.40s'>", "macro");
        return ct_buf_put(rt, b, num, strlen(num));
    default:
        return ct_buf_put(rt, b, "<function>", 10);
    }
}

int ct_str_val(ct_rt_t *rt, const ct_val_t *v, ct_val_t *out)
{
    if (v->t == CT_STR) {
        *out = *v;
        return 0;
    }
    ct_buf_t b = {0};
    int rc = ct_to_str(rt, &b, v);
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
        rc = ct_fail(rt, NULL, rt->arena.over ? RCD_ERANGE : RCD_ENOMEM,
                     "render memory budget exceeded");
    free(b.p);
    return rc;
}

/* ---- json.dumps(ensure_ascii=..., indent=..., separators=..., sort_keys=...) ---- */
typedef struct json_opts {
    int indent; /* -1: none */
    int ascii, sort;
    ct_str_t item_sep, key_sep;
} json_opts_t;

static uint32_t utf8_next(const char *s, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)s[*i];
    int len = c < 0x80             ? 1
              : (c & 0xE0) == 0xC0 ? 2
              : (c & 0xF0) == 0xE0 ? 3
              : (c & 0xF8) == 0xF0 ? 4
                                   : 0;
    if (len == 0 || *i + (size_t)len > n) {
        (*i)++;
        return 0xFFFD;
    }
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < len; k++) {
        unsigned char x = (unsigned char)s[*i + (size_t)k];
        if ((x & 0xC0) != 0x80) {
            (*i)++;
            return 0xFFFD;
        }
        cp = (cp << 6) | (x & 0x3F);
    }
    *i += (size_t)len;
    return cp;
}

static int json_str(ct_rt_t *rt, ct_buf_t *b, const char *s, size_t n, int ascii)
{
    int rc = ct_buf_put(rt, b, "\"", 1);
    size_t run = 0, i = 0;
    while (rc == 0 && i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && (c < 0x80 || !ascii)) {
            i++;
            continue;
        }
        rc = ct_buf_put(rt, b, s + run, i - run);
        if (rc) break;
        char e[16];
        if (c >= 0x80) {
            uint32_t cp = utf8_next(s, n, &i);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(e, sizeof(e), "\\u%04x\\u%04x", 0xD800 + (cp >> 10),
                         0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(e, sizeof(e), "\\u%04x", cp);
            }
        } else {
            i++;
            switch (c) {
            case '"':
                snprintf(e, sizeof(e), "\\\"");
                break;
            case '\\':
                snprintf(e, sizeof(e), "\\\\");
                break;
            case '\n':
                snprintf(e, sizeof(e), "\\n");
                break;
            case '\r':
                snprintf(e, sizeof(e), "\\r");
                break;
            case '\t':
                snprintf(e, sizeof(e), "\\t");
                break;
            case '\b':
                snprintf(e, sizeof(e), "\\b");
                break;
            case '\f':
                snprintf(e, sizeof(e), "\\f");
                break;
            default:
                snprintf(e, sizeof(e), "\\u%04x", c);
                break;
            }
        }
        run = i;
        rc = ct_buf_put(rt, b, e, strlen(e));
    }
    if (rc == 0) rc = ct_buf_put(rt, b, s + run, n - run);
    return rc ? rc : ct_buf_put(rt, b, "\"", 1);
}

static int json_nl(ct_rt_t *rt, ct_buf_t *b, const json_opts_t *o, int level)
{
    if (o->indent < 0) return 0;
    int rc = ct_buf_put(rt, b, "\n", 1);
    for (int i = 0; rc == 0 && i < o->indent * level; i++)
        rc = ct_buf_put(rt, b, " ", 1);
    return rc;
}

static int key_cmp(const void *x, const void *y)
{
    const ct_str_t *a = *(const ct_str_t *const *)x, *b = *(const ct_str_t *const *)y;
    size_t m = a->n < b->n ? a->n : b->n;
    int c = m ? memcmp(a->p, b->p, m) : 0;
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

static int json_dump(ct_rt_t *rt, const ct_node_t *at, ct_buf_t *b, const ct_val_t *v,
                     const json_opts_t *o, int level)
{
    char num[64];
    int rc = 0;
    if (level > 200) return ct_fail(rt, at, RCD_ERANGE, "tojson: value nested too deeply");
    switch (v->t) {
    case CT_NONE:
        return ct_buf_put(rt, b, "null", 4);
    case CT_BOOL:
        return v->u.i ? ct_buf_put(rt, b, "true", 4) : ct_buf_put(rt, b, "false", 5);
    case CT_INT:
        return ct_to_str(rt, b, v);
    case CT_FLOAT:
        fmt_float(num, sizeof(num), v->u.f, 1);
        return ct_buf_put(rt, b, num, strlen(num));
    case CT_STR:
        return json_str(rt, b, v->u.s.p, v->u.s.n, o->ascii);
    case CT_LIST:
        if (v->u.l->n == 0) return ct_buf_put(rt, b, "[]", 2);
        rc = ct_buf_put(rt, b, "[", 1);
        for (size_t i = 0; rc == 0 && i < v->u.l->n; i++) {
            if (i) rc = ct_buf_put(rt, b, o->item_sep.p, o->item_sep.n);
            if (rc == 0) rc = json_nl(rt, b, o, level + 1);
            if (rc == 0) rc = json_dump(rt, at, b, &v->u.l->v[i], o, level + 1);
        }
        if (rc == 0) rc = json_nl(rt, b, o, level);
        return rc ? rc : ct_buf_put(rt, b, "]", 1);
    case CT_DICT: {
        const ct_dict_t *d = v->u.d;
        if (d->ns) break;
        if (d->n == 0) return ct_buf_put(rt, b, "{}", 2);
        /* keys in order (sorted when asked); a repeated key prints once, with its last value */
        ct_str_t **keys = ct_alloc(&rt->arena, d->n * sizeof(*keys));
        if (!keys) return ct_fail(rt, at, RCD_ERANGE, "render memory budget exceeded");
        size_t nk = 0;
        for (size_t i = 0; i < d->n; i++) {
            int dup = 0;
            if (d->n <= 64)
                for (size_t j = 0; j < nk && !dup; j++)
                    dup = keys[j]->n == d->k[i].n && memcmp(keys[j]->p, d->k[i].p, d->k[i].n) == 0;
            if (!dup) keys[nk++] = &d->k[i];
        }
        if (o->sort) qsort(keys, nk, sizeof(*keys), key_cmp);
        rc = ct_buf_put(rt, b, "{", 1);
        for (size_t i = 0; rc == 0 && i < nk; i++) {
            if (i) rc = ct_buf_put(rt, b, o->item_sep.p, o->item_sep.n);
            if (rc == 0) rc = json_nl(rt, b, o, level + 1);
            if (rc == 0) rc = json_str(rt, b, keys[i]->p, keys[i]->n, o->ascii);
            if (rc == 0) rc = ct_buf_put(rt, b, o->key_sep.p, o->key_sep.n);
            if (rc == 0)
                rc = json_dump(rt, at, b, ct_dict_get(d, keys[i]->p, keys[i]->n), o, level + 1);
        }
        if (rc == 0) rc = json_nl(rt, b, o, level);
        return rc ? rc : ct_buf_put(rt, b, "}", 1);
    }
    default:
        break;
    }
    return ct_fail(rt, at, RCD_EINVAL, "tojson: Object of type %s is not JSON serializable",
                   ct_type_name(v));
}

int ct_tojson(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, int indent, int ascii, int sort,
              const ct_str_t *seps, ct_val_t *out)
{
    json_opts_t o = {.indent = indent, .ascii = ascii, .sort = sort};
    if (seps) {
        o.item_sep = seps[0];
        o.key_sep = seps[1];
    } else {
        o.item_sep = indent < 0 ? (ct_str_t){", ", 2} : (ct_str_t){",", 1};
        o.key_sep = (ct_str_t){": ", 2};
    }
    ct_buf_t b = {0};
    int rc = json_dump(rt, at, &b, v, &o, 0);
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
        rc = ct_fail(rt, at, rt->arena.over ? RCD_ERANGE : RCD_ENOMEM,
                     "render memory budget exceeded");
    free(b.p);
    return rc;
}

uint32_t ct_utf8_next(const char *s, size_t n, size_t *i)
{
    return utf8_next(s, n, i);
}
