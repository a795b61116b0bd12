/* Chat templates: compile (normalize + parse) and render (a tree walk over ct_val_t values
 * with jinja2's semantics as Hugging Face's ImmutableSandboxedEnvironment sets it up). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

/* ---- arena ---- */
struct ct_arena_blk {
    ct_arena_blk_t *next;
    size_t used, cap;
    max_align_t data[];
};

void *ct_alloc(ct_arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    if (a->budget && (a->used + n > a->budget || n > a->budget)) {
        a->over = 1;
        return NULL;
    }
    ct_arena_blk_t *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof(*b) + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    a->used += n;
    memset(p, 0, n);
    return p;
}

char *ct_strdup(ct_arena_t *a, const char *s, size_t n)
{
    char *p = ct_alloc(a, n + 1);
    if (p && n) memcpy(p, s, n);
    return p;
}

void ct_arena_free(ct_arena_t *a)
{
    ct_arena_blk_t *b = a->head;
    while (b) {
        ct_arena_blk_t *nx = b->next;
        free(b);
        b = nx;
    }
    a->head = NULL;
    a->used = 0;
}

/* ---- compile ---- */
int chat_tmpl_compile(const char *text, size_t len, chat_tmpl_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!text && len) return rcd_fail(RCD_EINVAL, err, errlen, "chat template: no text");
    if (len > CHAT_TMPL_MAX_SOURCE)
        return rcd_fail(RCD_ERANGE, err, errlen, "chat template: %zu bytes (limit %d)", len,
                        CHAT_TMPL_MAX_SOURCE);
    for (size_t i = 0; i < len; i++)
        if (text[i] == 0)
            return rcd_fail(RCD_EINVAL, err, errlen, "chat template: NUL byte at offset %zu", i);
    chat_tmpl_t *t = calloc(1, sizeof(*t));
    if (!t) return rcd_fail(RCD_ENOMEM, err, errlen, "chat template: out of memory");
    /* jinja2 normalizes \r\n and \r to \n and, keep_trailing_newline being off, drops one
     * final newline. */
    char *src = ct_alloc(&t->arena, len + 1);
    if (!src) {
        chat_tmpl_free(t);
        return rcd_fail(RCD_ENOMEM, err, errlen, "chat template: out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\r') {
            src[n++] = '\n';
            if (i + 1 < len && text[i + 1] == '\n') i++;
        } else {
            src[n++] = text[i];
        }
    }
    if (n && src[n - 1] == '\n') n--;
    src[n] = 0;
    int rc = ct_parse(t, src, n, err, errlen);
    if (rc) {
        chat_tmpl_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int chat_tmpl_compile_file(const char *path, chat_tmpl_t **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rcd_fail(errno == ENOENT ? RCD_ENOTFOUND : RCD_EIO, err, errlen, "%s: %s", path,
                        strerror(errno));
    char *text = malloc(CHAT_TMPL_MAX_SOURCE + 1);
    size_t n = text ? fread(text, 1, CHAT_TMPL_MAX_SOURCE + 1, f) : 0;
    int rc = 0;
    if (!text)
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", path);
    else if (ferror(f))
        rc = rcd_fail(RCD_EIO, err, errlen, "%s: read error", path);
    else if (n > CHAT_TMPL_MAX_SOURCE)
        rc = rcd_fail(RCD_ERANGE, err, errlen, "%s: larger than %d bytes", path,
                      CHAT_TMPL_MAX_SOURCE);
    fclose(f);
    if (rc == 0) {
        char msg[512];
        rc = chat_tmpl_compile(text, n, out, msg, sizeof(msg));
        if (rc) rcd_fail(rc, err, errlen, "%s: %s", path, msg);
    }
    free(text);
    return rc;
}

void chat_tmpl_free(chat_tmpl_t *t)
{
    if (!t) return;
    ct_arena_free(&t->arena);
    free(t);
}

/* ---- errors ---- */
int ct_fail(ct_rt_t *rt, const ct_node_t *at, int rc, const char *fmt, ...)
{
    if (rt->rc) return rt->rc;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rt->rc = rc;
    if (at)
        rcd_fail(rc, rt->err, rt->errlen, "chat template line %d:%d: %s", at->line, at->col, msg);
    else
        rcd_fail(rc, rt->err, rt->errlen, "chat template: %s", msg);
    return rc;
}

static int oom(ct_rt_t *rt, const ct_node_t *at)
{
    if (rt->arena.over)
        return ct_fail(rt, at, RCD_ERANGE, "render memory budget (%zu bytes) exceeded",
                       rt->arena.budget);
    return ct_fail(rt, at, RCD_ENOMEM, "out of memory");
}

/* ---- scopes ---- */
struct ct_frame {
    ct_frame_t *parent;
    ct_str_t *k;
    ct_val_t *v;
    size_t n, cap;
};

static ct_frame_t *frame_new(ct_rt_t *rt, ct_frame_t *parent)
{
    ct_frame_t *f = ct_alloc(&rt->arena, sizeof(*f));
    if (f) f->parent = parent;
    return f;
}

static int frame_set(ct_rt_t *rt, ct_frame_t *f, ct_str_t k, ct_val_t v)
{
    for (size_t i = 0; i < f->n; i++)
        if (f->k[i].n == k.n && memcmp(f->k[i].p, k.p, k.n) == 0) {
            f->v[i] = v;
            return 0;
        }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        ct_str_t *nk = ct_alloc(&rt->arena, cap * sizeof(*nk));
        ct_val_t *nv = ct_alloc(&rt->arena, cap * sizeof(*nv));
        if (!nk || !nv) return RCD_ENOMEM;
        if (f->n) {
            memcpy(nk, f->k, f->n * sizeof(*nk));
            memcpy(nv, f->v, f->n * sizeof(*nv));
        }
        f->k = nk;
        f->v = nv;
        f->cap = cap;
    }
    f->k[f->n] = k;
    f->v[f->n] = v;
    f->n++;
    return 0;
}

static const ct_val_t *frame_get(const ct_frame_t *f, const char *k, size_t n)
{
    for (; f; f = f->parent)
        for (size_t i = f->n; i-- > 0;)
            if (f->k[i].n == n && memcmp(f->k[i].p, k, n) == 0) return &f->v[i];
    return NULL;
}

/* ---- evaluation ---- */
static int eval(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n, ct_val_t *out);
static int exec(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n);

static int step(ct_rt_t *rt, const ct_node_t *at)
{
    if (++rt->steps > rt->max_steps)
        return ct_fail(rt, at, RCD_ERANGE, "render step budget (%llu) exceeded",
                       (unsigned long long)rt->max_steps);
    return 0;
}

static int undef(ct_rt_t *rt, ct_val_t *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* An Undefined that remembers why it is undefined (the message jinja2 raises when used). */
static int undef(ct_rt_t *rt, ct_val_t *out, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t n = k < 0 ? 0 : (size_t)k >= sizeof(msg) ? sizeof(msg) - 1 : (size_t)k;
    memset(out, 0, sizeof(*out));
    out->t = CT_UNDEF;
    out->u.s.p = ct_strdup(&rt->arena, msg, n);
    out->u.s.n = n;
    return out->u.s.p ? 0 : RCD_ENOMEM;
}

static int fail_undef(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v)
{
    if (v->u.s.p) return ct_fail(rt, at, RCD_EINVAL, "%.*s", (int)v->u.s.n, v->u.s.p);
    return ct_fail(rt, at, RCD_EINVAL, "undefined value used");
}

static int64_t utf8_len(const char *s, size_t n)
{
    int64_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Byte offset of code point idx (0 <= idx <= count). */
static size_t utf8_off(const char *s, size_t n, int64_t idx)
{
    size_t i = 0;
    for (int64_t k = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (k == idx) return i;
            k++;
        }
    }
    return n;
}

static int attr_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, const char *k, size_t kn,
                   ct_val_t *out)
{
    switch (obj->t) {
    case CT_UNDEF:
        return fail_undef(rt, at, obj);
    case CT_DICT: {
        ct_val_t *v = ct_dict_get(obj->u.d, k, kn);
        if (v) {
            *out = *v;
            return 0;
        }
        return undef(rt, out, "'%s' has no attribute '%.*s'",
                     obj->u.d->ns ? "Namespace object" : "dict object", (int)kn, k)
                   ? oom(rt, at)
                   : 0;
    }
    case CT_LOOP: {
        ct_loop_t *l = obj->u.loop;
        memset(out, 0, sizeof(*out));
#define IS(s) (kn == sizeof(s) - 1 && memcmp(k, s, kn) == 0)
        out->t = CT_INT;
        if (IS("index"))
            out->u.i = l->index0 + 1;
        else if (IS("index0"))
            out->u.i = l->index0;
        else if (IS("length"))
            out->u.i = l->length;
        else if (IS("revindex"))
            out->u.i = l->length - l->index0;
        else if (IS("revindex0"))
            out->u.i = l->length - l->index0 - 1;
        else if (IS("first") || IS("last")) {
            out->t = CT_BOOL;
            out->u.i = IS("first") ? l->index0 == 0 : l->index0 == l->length - 1;
        } else if (IS("previtem") || IS("nextitem")) {
            int64_t j = l->index0 + (IS("previtem") ? -1 : 1);
            if (j < 0 || j >= l->length)
                return undef(rt, out, "there is no %.*s", (int)kn, k) ? oom(rt, at) : 0;
            *out = l->items->v[j];
        } else if (IS("cycle")) {
            out->t = CT_CYCLE;
            out->u.loop = l;
        } else if (IS("depth")) {
            out->u.i = 1;
        } else if (IS("depth0")) {
            out->u.i = 0;
        } else {
            return undef(rt, out, "'LoopContext' has no attribute '%.*s'", (int)kn, k) ? oom(rt, at)
                                                                                       : 0;
        }
#undef IS
        return 0;
    }
    default:
        if (obj->t == CT_NONE) /* jinja2's object_type_repr */
            return undef(rt, out, "'None' has no attribute '%.*s'", (int)kn, k) ? oom(rt, at) : 0;
        return undef(rt, out, "'%s object' has no attribute '%.*s'", ct_type_name(obj), (int)kn, k)
                   ? oom(rt, at)
                   : 0;
    }
}

static int index_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, const ct_val_t *key,
                    ct_val_t *out)
{
    if (obj->t == CT_UNDEF) return fail_undef(rt, at, obj);
    if (obj->t == CT_DICT) {
        if (key->t != CT_STR) return undef(rt, out, "no such key") ? oom(rt, at) : 0;
        ct_val_t *v = ct_dict_get(obj->u.d, key->u.s.p, key->u.s.n);
        if (v) {
            *out = *v;
            return 0;
        }
        return undef(rt, out, "'dict object' has no attribute '%.*s'", (int)key->u.s.n, key->u.s.p)
                   ? oom(rt, at)
                   : 0;
    }
    if (obj->t == CT_LOOP && key->t == CT_STR)
        return attr_of(rt, at, obj, key->u.s.p, key->u.s.n, out);
    if ((obj->t == CT_LIST || obj->t == CT_STR) && (key->t == CT_INT || key->t == CT_BOOL)) {
        int64_t len = obj->t == CT_LIST ? (int64_t)obj->u.l->n : utf8_len(obj->u.s.p, obj->u.s.n);
        int64_t i = key->u.i;
        if (i < 0) i += len;
        if (i < 0 || i >= len)
            return undef(rt, out, "'%s object' has no element %lld", ct_type_name(obj),
                         (long long)key->u.i)
                       ? oom(rt, at)
                       : 0;
        if (obj->t == CT_LIST) {
            *out = obj->u.l->v[i];
        } else {
            size_t a = utf8_off(obj->u.s.p, obj->u.s.n, i);
            size_t b = utf8_off(obj->u.s.p, obj->u.s.n, i + 1);
            *out = ct_mkstr(obj->u.s.p + a, b - a);
        }
        return 0;
    }
    return undef(rt, out, "'%s object' has no element", ct_type_name(obj)) ? oom(rt, at) : 0;
}

static int slice_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, ct_val_t part[3],
                    ct_val_t *out)
{
    if (obj->t == CT_UNDEF) return fail_undef(rt, at, obj);
    if (obj->t != CT_LIST && obj->t != CT_STR) /* jinja2 slices bypass getitem: TypeError */
        return ct_fail(rt, at, RCD_EINVAL, "'%s' object is not subscriptable", ct_type_name(obj));
    int64_t v[3], len = obj->t == CT_LIST ? (int64_t)obj->u.l->n : utf8_len(obj->u.s.p, obj->u.s.n);
    for (int i = 0; i < 3; i++) {
        if (part[i].t == CT_NONE || part[i].t == CT_UNDEF)
            v[i] = INT64_MIN;
        else if (part[i].t == CT_INT || part[i].t == CT_BOOL)
            v[i] = part[i].u.i;
        else
            return ct_fail(rt, at, RCD_EINVAL, "slice indices must be integers or none");
    }
    int64_t st = v[2] == INT64_MIN ? 1 : v[2];
    if (st == 0) return ct_fail(rt, at, RCD_EINVAL, "slice step cannot be zero");
    int64_t lo, hi; /* Python's slice.indices */
    if (st > 0) {
        lo = v[0] == INT64_MIN ? 0
             : v[0] < 0        ? (v[0] + len < 0 ? 0 : v[0] + len)
                               : (v[0] > len ? len : v[0]);
        hi = v[1] == INT64_MIN ? len
             : v[1] < 0        ? (v[1] + len < 0 ? 0 : v[1] + len)
                               : (v[1] > len ? len : v[1]);
    } else {
        lo = v[0] == INT64_MIN ? len - 1
             : v[0] < 0        ? (v[0] + len < 0 ? -1 : v[0] + len)
                               : (v[0] >= len ? len - 1 : v[0]);
        hi = v[1] == INT64_MIN ? -1
             : v[1] < 0        ? (v[1] + len < 0 ? -1 : v[1] + len)
                               : (v[1] >= len ? len - 1 : v[1]);
    }
    size_t *offs = NULL;
    if (obj->t == CT_STR) { /* code point offsets */
        offs = ct_alloc(&rt->arena, ((size_t)len + 1) * sizeof(*offs));
        if (!offs) return oom(rt, at);
        int64_t k = 0;
        for (size_t i = 0; i < obj->u.s.n; i++)
            if (((unsigned char)obj->u.s.p[i] & 0xC0) != 0x80) offs[k++] = i;
        offs[len] = obj->u.s.n;
    }
    ct_list_t *l = obj->t == CT_LIST ? ct_list_new(rt, 0) : NULL;
    ct_buf_t b = {0};
    int rc = obj->t == CT_LIST && !l ? RCD_ENOMEM : 0;
    for (int64_t i = lo; rc == 0 && (st > 0 ? i < hi : i > hi); i += st) {
        if (l)
            rc = ct_list_push(rt, l, obj->u.l->v[i]);
        else
            rc = ct_buf_put(rt, &b, obj->u.s.p + offs[i], offs[i + 1] - offs[i]);
    }
    if (rc == 0 && l) {
        memset(out, 0, sizeof(*out));
        out->t = CT_LIST;
        out->u.l = l;
    } else if (rc == 0) {
        rc = ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out);
    }
    free(b.p);
    return rc ? (rt->rc ? rt->rc : oom(rt, at)) : 0;
}

static int num(const ct_val_t *v, int *is_f, int64_t *i, double *f)
{
    if (v->t == CT_INT || v->t == CT_BOOL) {
        *i = v->u.i;
        *f = (double)v->u.i;
        return 1;
    }
    if (v->t == CT_FLOAT) {
        *is_f = 1;
        *f = v->u.f;
        return 1;
    }
    return 0;
}

static int arith(ct_rt_t *rt, const ct_node_t *at, int op, const ct_val_t *a, const ct_val_t *b,
                 ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    if (a->t == CT_UNDEF) return fail_undef(rt, at, a);
    if (b->t == CT_UNDEF) return fail_undef(rt, at, b);
    if (op == '+' && a->t == CT_STR && b->t == CT_STR) {
        ct_buf_t buf = {0};
        int rc = ct_buf_put(rt, &buf, a->u.s.p, a->u.s.n);
        if (rc == 0) rc = ct_buf_put(rt, &buf, b->u.s.p, b->u.s.n);
        if (rc == 0) rc = ct_mkstr_copy(rt, buf.p ? buf.p : "", buf.n, out);
        free(buf.p);
        return rc ? (rt->rc ? rt->rc : oom(rt, at)) : 0;
    }
    if (op == '+' && a->t == CT_LIST && b->t == CT_LIST) {
        ct_list_t *l = ct_list_new(rt, a->u.l->n + b->u.l->n);
        if (!l) return oom(rt, at);
        for (size_t i = 0; i < a->u.l->n; i++)
            l->v[l->n++] = a->u.l->v[i];
        for (size_t i = 0; i < b->u.l->n; i++)
            l->v[l->n++] = b->u.l->v[i];
        out->t = CT_LIST;
        out->u.l = l;
        return 0;
    }
    if (op == '*' && (b->t == CT_STR || b->t == CT_LIST) && (a->t == CT_INT || a->t == CT_BOOL)) {
        const ct_val_t *t = a; /* int * seq is seq * int */
        a = b;
        b = t;
    }
    if (op == '*' && ((a->t == CT_STR || a->t == CT_LIST) && (b->t == CT_INT || b->t == CT_BOOL))) {
        int64_t k = b->u.i < 0 ? 0 : b->u.i;
        size_t unit = a->t == CT_STR ? a->u.s.n : a->u.l->n * sizeof(ct_val_t);
        if (unit && (uint64_t)k > rt->max_output / unit)
            return ct_fail(rt, at, RCD_ERANGE, "repetition result exceeds the output budget");
        if (a->t == CT_STR) {
            char *p = ct_alloc(&rt->arena, unit * (size_t)k + 1);
            if (!p) return oom(rt, at);
            for (int64_t i = 0; i < k; i++)
                memcpy(p + unit * (size_t)i, a->u.s.p, unit);
            *out = ct_mkstr(p, unit * (size_t)k);
        } else {
            ct_list_t *l = ct_list_new(rt, a->u.l->n * (size_t)k);
            if (!l) return oom(rt, at);
            for (int64_t i = 0; i < k; i++)
                for (size_t j = 0; j < a->u.l->n; j++)
                    l->v[l->n++] = a->u.l->v[j];
            out->t = CT_LIST;
            out->u.l = l;
        }
        return 0;
    }
    int af = 0, bf = 0;
    int64_t ai = 0, bi = 0;
    double ad = 0, bd = 0;
    if (!num(a, &af, &ai, &ad) || !num(b, &bf, &bi, &bd))
        return ct_fail(rt, at, RCD_EINVAL, "unsupported operand types for %s: %s and %s",
                       op == 'F'   ? "//"
                       : op == 'P' ? "**"
                                   : (char[]){(char)op, 0},
                       ct_type_name(a), ct_type_name(b));
    int fl = af || bf || op == '/';
    if (!fl) {
        out->t = CT_INT;
        switch (op) {
        case '+':
            if (__builtin_add_overflow(ai, bi, &out->u.i)) goto overflow;
            return 0;
        case '-':
            if (__builtin_sub_overflow(ai, bi, &out->u.i)) goto overflow;
            return 0;
        case '*':
            if (__builtin_mul_overflow(ai, bi, &out->u.i)) goto overflow;
            return 0;
        case 'F':
        case '%': {
            if (bi == 0) return ct_fail(rt, at, RCD_EINVAL, "integer division or modulo by zero");
            if (ai == INT64_MIN && bi == -1) goto overflow;
            int64_t q = ai / bi, r = ai % bi;
            if (r != 0 && ((r < 0) != (bi < 0))) {
                q--;
                r += bi;
            }
            out->u.i = op == 'F' ? q : r;
            return 0;
        }
        case 'P': {
            if (bi < 0) {
                fl = 1;
                break;
            }
            int64_t r = 1;
            for (int64_t e = 0; e < bi; e++) {
                if (__builtin_mul_overflow(r, ai, &r)) goto overflow;
                if (r == 0 || r == 1) break;
            }
            if (ai == -1) r = (bi % 2) ? -1 : 1;
            out->u.i = r;
            return 0;
        }
        }
    }
    out->t = CT_FLOAT;
    switch (op) {
    case '+':
        out->u.f = ad + bd;
        break;
    case '-':
        out->u.f = ad - bd;
        break;
    case '*':
        out->u.f = ad * bd;
        break;
    case '/':
        if (bd == 0) return ct_fail(rt, at, RCD_EINVAL, "division by zero");
        out->u.f = ad / bd;
        break;
    case 'F':
    case '%': {
        if (bd == 0) return ct_fail(rt, at, RCD_EINVAL, "float division or modulo by zero");
        double q = __builtin_floor(ad / bd), r = ad - q * bd;
        out->u.f = op == 'F' ? q : r;
        break;
    }
    case 'P':
        out->u.f = __builtin_pow(ad, bd);
        break;
    }
    return 0;
overflow:
    return ct_fail(rt, at, RCD_ERANGE, "integer overflow (recurd keeps 64-bit integers)");
}

static int compare(ct_rt_t *rt, const ct_node_t *at, int op, const ct_val_t *a, const ct_val_t *b,
                   int *res)
{
    if (op == 'E' || op == 'N') {
        int eq = ct_equal(a, b);
        *res = op == 'E' ? eq : !eq;
        return 0;
    }
    if (op == 'i' || op == 'I') {
        int in = 0;
        if (b->t == CT_STR) {
            if (a->t != CT_STR)
                return ct_fail(rt, at, RCD_EINVAL,
                               "'in <string>' requires string as left operand, not %s",
                               ct_type_name(a));
            in = a->u.s.n == 0 ||
                 (a->u.s.n <= b->u.s.n && memmem(b->u.s.p, b->u.s.n, a->u.s.p, a->u.s.n));
        } else if (b->t == CT_LIST) {
            for (size_t i = 0; i < b->u.l->n && !in; i++)
                in = ct_equal(a, &b->u.l->v[i]);
        } else if (b->t == CT_DICT) {
            if (a->t == CT_LIST || a->t == CT_DICT)
                return ct_fail(rt, at, RCD_EINVAL, "unhashable type: '%s'", ct_type_name(a));
            in = a->t == CT_STR && ct_dict_get(b->u.d, a->u.s.p, a->u.s.n) != NULL;
        } else if (b->t != CT_UNDEF) {
            return ct_fail(rt, at, RCD_EINVAL, "argument of type '%s' is not iterable",
                           ct_type_name(b));
        }
        *res = op == 'i' ? in : !in;
        return 0;
    }
    if (a->t == CT_UNDEF) return fail_undef(rt, at, a);
    if (b->t == CT_UNDEF) return fail_undef(rt, at, b);
    int c;
    int af = 0, bf = 0;
    int64_t ai, bi;
    double ad, bd;
    if (num(a, &af, &ai, &ad) && num(b, &bf, &bi, &bd)) {
        if (af || bf)
            c = ad < bd ? -1 : ad > bd ? 1 : 0;
        else
            c = ai < bi ? -1 : ai > bi ? 1 : 0;
    } else if (a->t == CT_STR && b->t == CT_STR) {
        size_t m = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        c = m ? memcmp(a->u.s.p, b->u.s.p, m) : 0;
        if (c == 0) c = a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    } else if (a->t == CT_LIST && b->t == CT_LIST) { /* Python: the first unequal pair */
        size_t i = 0;
        while (i < a->u.l->n && i < b->u.l->n && ct_equal(&a->u.l->v[i], &b->u.l->v[i]))
            i++;
        if (i < a->u.l->n && i < b->u.l->n)
            return compare(rt, at, op, &a->u.l->v[i], &b->u.l->v[i], res);
        c = a->u.l->n < b->u.l->n ? -1 : a->u.l->n > b->u.l->n;
    } else {
        return ct_fail(rt, at, RCD_EINVAL, "'%c' not supported between %s and %s",
                       op == 'L'   ? '<'
                       : op == 'G' ? '>'
                                   : op,
                       ct_type_name(a), ct_type_name(b));
    }
    switch (op) {
    case '<':
        *res = c < 0;
        break;
    case '>':
        *res = c > 0;
        break;
    case 'L':
        *res = c <= 0;
        break;
    default:
        *res = c >= 0;
        break;
    }
    return 0;
}

/* Evaluates call arguments into arena arrays. */
static int eval_args(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n, ct_val_t **args)
{
    *args = ct_alloc(&rt->arena, (n->nkids ? n->nkids : 1) * sizeof(**args));
    if (!*args) return oom(rt, n);
    for (size_t i = 0; i < n->nkids; i++) {
        int rc = eval(rt, f, n->kids[i], &(*args)[i]);
        if (rc) return rc;
    }
    return 0;
}

static int capture(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *body, ct_val_t *out)
{
    if (!f) return oom(rt, body); /* a block set's own scope could not be made */
    ct_buf_t saved = rt->out;
    memset(&rt->out, 0, sizeof(rt->out));
    int rc = exec(rt, f, body);
    if (rc == 0) rc = ct_mkstr_copy(rt, rt->out.p ? rt->out.p : "", rt->out.n, out);
    free(rt->out.p);
    rt->out = saved;
    if (rc && !rt->rc) rc = oom(rt, body);
    return rc;
}

static int call_macro(ct_rt_t *rt, const ct_node_t *at, const struct ct_macro *mac, ct_val_t *args,
                      ct_str_t *kw, size_t nargs, ct_val_t *out)
{
    int rc = step(rt, at);
    if (rc) return rc;
    if (rt->depth >= rt->max_depth)
        return ct_fail(rt, at, RCD_ERANGE, "macro calls nested deeper than %d", rt->max_depth);
    const ct_node_t *m = mac->node;
    ct_frame_t *f = frame_new(rt, mac->scope);
    if (!f) return oom(rt, at);
    size_t np = m->nnames;
    char *set = ct_alloc(&rt->arena, np + 1);
    if (!set) return oom(rt, at);
    size_t pos = 0;
    for (size_t i = 0; i < nargs; i++) {
        size_t j = np;
        if (!kw || !kw[i].p) {
            j = pos++;
            if (j >= np)
                return ct_fail(rt, at, RCD_EINVAL, "macro '%.*s' takes %zu arguments",
                               (int)m->name.n, m->name.p, np);
        } else {
            for (j = 0; j < np; j++)
                if (m->names[j].n == kw[i].n && memcmp(m->names[j].p, kw[i].p, kw[i].n) == 0) break;
            if (j == np)
                return ct_fail(rt, at, RCD_EINVAL, "macro '%.*s' has no parameter '%.*s'",
                               (int)m->name.n, m->name.p, (int)kw[i].n, kw[i].p);
        }
        set[j] = 1;
        if (frame_set(rt, f, m->names[j], args[i])) return oom(rt, at);
    }
    for (size_t j = 0; j < np; j++) {
        if (set[j]) continue;
        ct_val_t v;
        if (m->kids[j]) {
            rc = eval(rt, f, m->kids[j], &v);
            if (rc) return rc;
        } else if (undef(rt, &v, "'%.*s' is undefined", (int)m->names[j].n, m->names[j].p)) {
            return oom(rt, at);
        }
        if (frame_set(rt, f, m->names[j], v)) return oom(rt, at);
    }
    rt->depth++;
    rc = capture(rt, f, m->kids[np], out);
    rt->depth--;
    return rc;
}

static int call_value(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *fn, ct_val_t *args,
                      ct_str_t *kw, size_t nargs, ct_val_t *out)
{
    switch (fn->t) {
    case CT_MACRO:
        return call_macro(rt, at, fn->u.m, args, kw, nargs, out);
    case CT_FUNC:
        return ct_call_func(rt, at, (int)fn->u.i, args, kw, nargs, out);
    case CT_CYCLE:
        if (nargs == 0) return ct_fail(rt, at, RCD_EINVAL, "no items for cycling given");
        *out = args[fn->u.loop->index0 % (int64_t)nargs];
        return 0;
    case CT_UNDEF:
        return fail_undef(rt, at, fn);
    default:
        return ct_fail(rt, at, RCD_EINVAL, "'%s' object is not callable", ct_type_name(fn));
    }
}

/* Whether jinja2's optimizer would fold n to a constant (no names, calls or loop state). */
static int is_const(const ct_node_t *n)
{
    if (!n) return 1;
    switch (n->kind) {
    case N_LIT:
        return 1;
    case N_LIST:
    case N_TUPLE:
    case N_DICT:
    case N_UNARY:
    case N_BIN:
    case N_CMP:
    case N_AND:
    case N_OR:
    case N_COND:
    case N_TEST:
    case N_FILTER:
        if (!is_const(n->a) || !is_const(n->b) || !is_const(n->c)) return 0;
        for (size_t i = 0; i < n->nkids; i++)
            if (!is_const(n->kids[i])) return 0;
        return 1;
    default:
        return 0;
    }
}

static int eval(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n, ct_val_t *out)
{
    int rc = 0;
    ct_val_t a, b;
    memset(out, 0, sizeof(*out));
    switch (n->kind) {
    case N_LIT:
        *out = n->lit;
        return 0;
    case N_NAME: {
        const ct_val_t *v = frame_get(f, n->name.p, n->name.n);
        if (v) {
            *out = *v;
            return 0;
        }
        int fn = ct_global_func(n->name.p, n->name.n);
        if (fn >= 0) {
            out->t = CT_FUNC;
            out->u.i = fn;
            return 0;
        }
        return undef(rt, out, "'%.*s' is undefined", (int)n->name.n, n->name.p) ? oom(rt, n) : 0;
    }
    case N_LIST:
    case N_TUPLE: {
        ct_list_t *l = ct_list_new(rt, n->nkids);
        if (!l) return oom(rt, n);
        for (size_t i = 0; i < n->nkids; i++) {
            rc = eval(rt, f, n->kids[i], &l->v[i]);
            if (rc) return rc;
            l->n++;
        }
        l->tuple = n->kind == N_TUPLE;
        out->t = CT_LIST;
        out->u.l = l;
        return 0;
    }
    case N_DICT: {
        ct_dict_t *d = ct_dict_new(rt, n->nkids / 2);
        if (!d) return oom(rt, n);
        for (size_t i = 0; i + 1 < n->nkids; i += 2) {
            rc = eval(rt, f, n->kids[i], &a);
            if (rc == 0) rc = eval(rt, f, n->kids[i + 1], &b);
            if (rc) return rc;
            if (a.t != CT_STR)
                return ct_fail(rt, n->kids[i], RCD_EUNSUPPORTED,
                               "dict keys other than strings (%s)", ct_type_name(&a));
            if (ct_dict_set(rt, d, a.u.s.p, a.u.s.n, b)) return oom(rt, n);
        }
        out->t = CT_DICT;
        out->u.d = d;
        return 0;
    }
    case N_ATTR:
        rc = eval(rt, f, n->a, &a);
        return rc ? rc : attr_of(rt, n, &a, n->name.p, n->name.n, out);
    case N_INDEX:
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval(rt, f, n->b, &b);
        return rc ? rc : index_of(rt, n, &a, &b, out);
    case N_SLICE: {
        ct_val_t part[3];
        rc = eval(rt, f, n->a, &a);
        for (int i = 0; rc == 0 && i < 3; i++) {
            if (n->kids[i])
                rc = eval(rt, f, n->kids[i], &part[i]);
            else
                memset(&part[i], 0, sizeof(part[i])), part[i].t = CT_NONE;
        }
        if (rc == 0 && a.t != CT_LIST && a.t != CT_STR && a.t != CT_UNDEF && is_const(n->a))
            /* jinja2 folds a constant expression through getitem, which gives an undefined */
            return undef(rt, out, "'%s object' has no element", ct_type_name(&a)) ? oom(rt, n) : 0;
        return rc ? rc : slice_of(rt, n, &a, part, out);
    }
    case N_CALL: {
        ct_val_t *args;
        if (n->a->kind == N_ATTR) {
            rc = eval(rt, f, n->a->a, &a);
            if (rc == 0) rc = eval_args(rt, f, n, &args);
            if (rc) return rc;
            rc = ct_method(rt, n, &a, n->a->name, args, n->kw, n->nkids, out);
            if (rc != 0) return rc < 0 ? rc : 0;
            rc = attr_of(rt, n->a, &a, n->a->name.p, n->a->name.n, &b);
        } else {
            rc = eval(rt, f, n->a, &b);
            if (rc == 0) rc = eval_args(rt, f, n, &args);
        }
        return rc ? rc : call_value(rt, n, &b, args, n->kw, n->nkids, out);
    }
    case N_FILTER: {
        ct_val_t *args;
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval_args(rt, f, n, &args);
        return rc ? rc : ct_filter(rt, n, &a, args, n->kw, n->nkids, out);
    }
    case N_TEST: {
        ct_val_t *args;
        int r = 0;
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval_args(rt, f, n, &args);
        if (rc == 0) rc = ct_test(rt, n, &a, args, n->nkids, &r);
        out->t = CT_BOOL;
        out->u.i = n->neg ? !r : r;
        return rc;
    }
    case N_UNARY:
        rc = eval(rt, f, n->a, &a);
        if (rc) return rc;
        if (n->op == 'n') {
            out->t = CT_BOOL;
            out->u.i = !ct_truthy(&a);
            return 0;
        }
        if (a.t == CT_UNDEF) return fail_undef(rt, n, &a);
        if (a.t == CT_INT || a.t == CT_BOOL) {
            out->t = CT_INT;
            if (n->op == '-' && a.u.i == INT64_MIN)
                return ct_fail(rt, n, RCD_ERANGE, "integer overflow");
            out->u.i = n->op == '-' ? -a.u.i : a.u.i;
            return 0;
        }
        if (a.t == CT_FLOAT) {
            out->t = CT_FLOAT;
            out->u.f = n->op == '-' ? -a.u.f : a.u.f;
            return 0;
        }
        return ct_fail(rt, n, RCD_EINVAL, "bad operand type for unary %c: %s", n->op,
                       ct_type_name(&a));
    case N_BIN:
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval(rt, f, n->b, &b);
        if (rc) return rc;
        if (n->op == '~') {
            ct_buf_t buf = {0};
            rc = ct_to_str(rt, &buf, &a);
            if (rc == 0) rc = ct_to_str(rt, &buf, &b);
            if (rc == 0) rc = ct_mkstr_copy(rt, buf.p ? buf.p : "", buf.n, out);
            free(buf.p);
            return rc ? (rt->rc ? rt->rc : oom(rt, n)) : 0;
        }
        return arith(rt, n, n->op, &a, &b, out);
    case N_CMP: {
        int r = 0;
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval(rt, f, n->b, &b);
        if (rc == 0) rc = compare(rt, n, n->op, &a, &b, &r);
        out->t = CT_BOOL;
        out->u.i = r;
        return rc;
    }
    case N_AND:
    case N_OR:
        rc = eval(rt, f, n->a, &a);
        if (rc) return rc;
        if (ct_truthy(&a) == (n->kind == N_OR)) {
            *out = a;
            return 0;
        }
        return eval(rt, f, n->b, out);
    case N_COND:
        rc = eval(rt, f, n->a, &a);
        if (rc) return rc;
        if (ct_truthy(&a)) return eval(rt, f, n->b, out);
        if (n->c) return eval(rt, f, n->c, out);
        return undef(rt, out,
                     "the inline if-expression evaluated to false and no else section "
                     "was defined.")
                   ? oom(rt, n)
                   : 0;
    default:
        return ct_fail(rt, n, RCD_EINTERNAL, "not an expression");
    }
}

static int assign(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n, const ct_val_t *v)
{
    if (n->nnames == 1) return frame_set(rt, f, n->names[0], *v) ? oom(rt, n) : 0;
    ct_list_t *items;
    int rc = ct_iterate(rt, n, v, &items);
    if (rc) return rc;
    if (items->n != n->nnames)
        return ct_fail(rt, n, RCD_EINVAL, "cannot unpack %zu values into %zu names", items->n,
                       n->nnames);
    for (size_t i = 0; i < n->nnames; i++)
        if (frame_set(rt, f, n->names[i], items->v[i])) return oom(rt, n);
    return 0;
}

static int exec_for(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n)
{
    ct_val_t it;
    ct_list_t *items;
    int rc = eval(rt, f, n->a, &it);
    if (rc == 0) rc = ct_iterate(rt, n->a, &it, &items);
    if (rc) return rc;
    ct_frame_t *lf = frame_new(rt, f);
    ct_loop_t *loop = ct_alloc(&rt->arena, sizeof(*loop));
    if (!lf || !loop) return oom(rt, n);
    if (n->b) { /* `for x in y if cond`: filter first, so loop.length counts what remains */
        ct_list_t *kept = ct_list_new(rt, items->n);
        if (!kept) return oom(rt, n);
        for (size_t i = 0; i < items->n; i++) {
            ct_val_t c;
            rc = step(rt, n);
            if (rc == 0) rc = assign(rt, lf, n, &items->v[i]);
            if (rc == 0) rc = eval(rt, lf, n->b, &c);
            if (rc) return rc;
            if (ct_truthy(&c)) kept->v[kept->n++] = items->v[i];
        }
        items = kept;
        lf = frame_new(rt, f);
        if (!lf) return oom(rt, n);
    }
    loop->items = items;
    loop->length = (int64_t)items->n;
    ct_val_t lv = {.t = CT_LOOP};
    lv.u.loop = loop;
    for (size_t i = 0; i < items->n; i++) {
        loop->index0 = (int64_t)i;
        rc = step(rt, n);
        if (rc == 0 && i > 0 && !(lf = frame_new(rt, f))) /* jinja2: each iteration's own */
            rc = oom(rt, n);
        if (rc == 0) rc = assign(rt, lf, n, &items->v[i]);
        if (rc == 0) rc = frame_set(rt, lf, (ct_str_t){"loop", 4}, lv) ? oom(rt, n) : 0;
        if (rc == 0) rc = exec(rt, lf, n->kids[0]);
        if (rc) return rc;
        int brk = rt->brk;
        rt->brk = 0;
        if (brk == 1) break;
    }
    if (items->n == 0 && n->kids[1]) return exec(rt, f, n->kids[1]);
    return 0;
}

static int exec(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n)
{
    int rc = step(rt, n);
    if (rc) return rc;
    ct_val_t v;
    switch (n->kind) {
    case S_BLOCK:
        for (size_t i = 0; i < n->nkids && rc == 0 && !rt->brk; i++)
            rc = exec(rt, f, n->kids[i]);
        return rc;
    case S_TEXT:
        return ct_buf_put(rt, &rt->out, n->name.p, n->name.n) ? (rt->rc ? rt->rc : oom(rt, n)) : 0;
    case S_OUT:
        rc = eval(rt, f, n->a, &v);
        if (rc == 0 && ct_to_str(rt, &rt->out, &v)) rc = rt->rc ? rt->rc : oom(rt, n);
        return rc;
    case S_IF:
        for (size_t i = 0; i + 1 < n->nkids; i += 2) {
            rc = eval(rt, f, n->kids[i], &v);
            if (rc) return rc;
            if (ct_truthy(&v)) return exec(rt, f, n->kids[i + 1]);
        }
        if (n->nkids % 2) return exec(rt, f, n->kids[n->nkids - 1]);
        return 0;
    case S_FOR:
        return exec_for(rt, f, n);
    case S_SET:
        if (n->nkids)
            rc = capture(rt, frame_new(rt, f), n->kids[0], &v);
        else
            rc = eval(rt, f, n->a, &v);
        if (rc) return rc;
        if (n->name2.p) {
            const ct_val_t *obj = frame_get(f, n->names[0].p, n->names[0].n);
            if (!obj || obj->t != CT_DICT || !obj->u.d->ns)
                return ct_fail(rt, n, RCD_EINVAL,
                               "can only assign attributes of a namespace() ('%.*s' is not one)",
                               (int)n->names[0].n, n->names[0].p);
            return ct_dict_set(rt, obj->u.d, n->name2.p, n->name2.n, v) ? oom(rt, n) : 0;
        }
        return assign(rt, f, n, &v);
    case S_MACRO:
        v.t = CT_MACRO;
        v.u.m = ct_alloc(&rt->arena, sizeof(*v.u.m));
        if (!v.u.m) return oom(rt, n);
        v.u.m->node = n;
        v.u.m->scope = f;
        return frame_set(rt, f, n->name, v) ? oom(rt, n) : 0;
    case S_BREAK:
    case S_CONTINUE:
        rt->brk = n->kind == S_BREAK ? 1 : 2;
        return 0;
    default:
        return ct_fail(rt, n, RCD_EINTERNAL, "not a statement");
    }
}

int chat_tmpl_render_opts(const chat_tmpl_t *t, const cJSON *ctx, const struct chat_tmpl_opts *opts,
                          char **out, size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (!t || !t->root) return rcd_fail(RCD_EINVAL, err, errlen, "chat template: not compiled");
    if (ctx && !cJSON_IsObject(ctx))
        return rcd_fail(RCD_EINVAL, err, errlen, "chat template: context must be a JSON object");
    ct_rt_t rt = {0};
    rt.max_output = opts && opts->max_output ? opts->max_output : CHAT_TMPL_MAX_OUTPUT;
    rt.max_steps = opts && opts->max_steps ? opts->max_steps : CHAT_TMPL_MAX_STEPS;
    rt.max_depth = opts && opts->max_depth ? opts->max_depth : CHAT_TMPL_MAX_DEPTH;
    rt.arena.budget = opts && opts->max_memory ? opts->max_memory : CHAT_TMPL_MAX_MEMORY;
    rt.now = opts && opts->now ? opts->now : (int64_t)time(NULL);
    rt.err = err;
    rt.errlen = errlen;
    if (err && errlen) err[0] = 0;
    int rc = 0;
    rt.globals = frame_new(&rt, NULL);
    if (!rt.globals) rc = oom(&rt, NULL);
    for (const cJSON *c = ctx ? ctx->child : NULL; rc == 0 && c; c = c->next) {
        ct_val_t v;
        if (!c->string) continue;
        rc = ct_from_json(&rt, c, &v);
        if (rc == 0 && frame_set(&rt, rt.globals, (ct_str_t){c->string, strlen(c->string)}, v))
            rc = RCD_ENOMEM;
        if (rc && !rt.rc) rc = oom(&rt, NULL);
    }
    /* What apply_chat_template always passes: tools and documents (None when absent) and
     * add_generation_prompt (False), so `tools is not none` reads as it does there. */
    static const char *const always[] = {"tools", "documents", "add_generation_prompt"};
    for (size_t i = 0; rc == 0 && i < sizeof(always) / sizeof(always[0]); i++) {
        ct_val_t v = {.t = i == 2 ? CT_BOOL : CT_NONE};
        ct_str_t k = {always[i], strlen(always[i])};
        if (!frame_get(rt.globals, k.p, k.n) && frame_set(&rt, rt.globals, k, v))
            rc = oom(&rt, NULL);
    }
    ct_frame_t *top = rc ? NULL : frame_new(&rt, rt.globals);
    if (rc == 0 && !top) rc = oom(&rt, NULL);
    rt.top = top;
    if (rc == 0) rc = exec(&rt, top, t->root);
    if (rc == 0 && ct_buf_put(&rt, &rt.out, "", 0) == 0 && rt.out.p) {
        rt.out.p[rt.out.n] = 0; /* ct_buf_put keeps one spare byte */
    } else if (rc == 0 && !rt.out.p) {
        rt.out.p = calloc(1, 1);
        if (!rt.out.p) rc = oom(&rt, NULL);
    } else if (rc == 0) {
        rc = rt.rc ? rt.rc : RCD_ENOMEM;
    }
    if (rc == 0) {
        *out = rt.out.p;
        *out_len = rt.out.n;
    } else {
        free(rt.out.p);
        if (!rt.rc) rcd_fail(rc, err, errlen, "chat template: %s", rcd_strerror(rc));
    }
    ct_arena_free(&rt.arena);
    return rc;
}

int chat_tmpl_render(const chat_tmpl_t *t, const cJSON *ctx, char **out, size_t *out_len, char *err,
                     size_t errlen)
{
    return chat_tmpl_render_opts(t, ctx, NULL, out, out_len, err, errlen);
}
