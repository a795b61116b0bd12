/* Chat templates: what values do — attributes, indexing, slicing, arithmetic and comparison
 * with jinja2's semantics — and the errors and Undefined values they produce (the tree walk
 * that calls them is chat_tmpl.c). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

/* An Undefined that remembers why it is undefined (the message jinja2 raises when used). */
int ct_undef(ct_rt_t *rt, ct_val_t *out, const char *fmt, ...)
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

int ct_fail_undef(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v)
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

int ct_attr_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, const char *k, size_t kn,
               ct_val_t *out)
{
    switch (obj->t) {
    case CT_UNDEF:
        return ct_fail_undef(rt, at, obj);
    case CT_DICT: {
        ct_val_t *v = ct_dict_get(obj->u.d, k, kn);
        if (v) {
            *out = *v;
            return 0;
        }
        return ct_undef(rt, out, "'%s' has no attribute '%.*s'",
                        obj->u.d->ns ? "Namespace object" : "dict object", (int)kn, k)
                   ? ct_oom(rt, at)
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
                return ct_undef(rt, out, "there is no %.*s", (int)kn, k) ? ct_oom(rt, at) : 0;
            *out = l->items->v[j];
        } else if (IS("cycle")) {
            out->t = CT_CYCLE;
            out->u.loop = l;
        } else if (IS("depth")) {
            out->u.i = 1;
        } else if (IS("depth0")) {
            out->u.i = 0;
        } else {
            return ct_undef(rt, out, "'LoopContext' has no attribute '%.*s'", (int)kn, k)
                       ? ct_oom(rt, at)
                       : 0;
        }
#undef IS
        return 0;
    }
    default:
        if (obj->t == CT_NONE) /* jinja2's object_type_repr */
            return ct_undef(rt, out, "'None' has no attribute '%.*s'", (int)kn, k) ? ct_oom(rt, at)
                                                                                   : 0;
        return ct_undef(rt, out, "'%s object' has no attribute '%.*s'", ct_type_name(obj), (int)kn,
                        k)
                   ? ct_oom(rt, at)
                   : 0;
    }
}

int ct_index_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, const ct_val_t *key,
                ct_val_t *out)
{
    if (obj->t == CT_UNDEF) return ct_fail_undef(rt, at, obj);
    if (obj->t == CT_DICT) {
        if (key->t != CT_STR) return ct_undef(rt, out, "no such key") ? ct_oom(rt, at) : 0;
        ct_val_t *v = ct_dict_get(obj->u.d, key->u.s.p, key->u.s.n);
        if (v) {
            *out = *v;
            return 0;
        }
        return ct_undef(rt, out, "'dict object' has no attribute '%.*s'", (int)key->u.s.n,
                        key->u.s.p)
                   ? ct_oom(rt, at)
                   : 0;
    }
    if (obj->t == CT_LOOP && key->t == CT_STR)
        return ct_attr_of(rt, at, obj, key->u.s.p, key->u.s.n, out);
    if ((obj->t == CT_LIST || obj->t == CT_STR) && (key->t == CT_INT || key->t == CT_BOOL)) {
        int64_t len = obj->t == CT_LIST ? (int64_t)obj->u.l->n : utf8_len(obj->u.s.p, obj->u.s.n);
        int64_t i = key->u.i;
        if (i < 0) i += len;
        if (i < 0 || i >= len)
            return ct_undef(rt, out, "'%s object' has no element %lld", ct_type_name(obj),
                            (long long)key->u.i)
                       ? ct_oom(rt, at)
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
    return ct_undef(rt, out, "'%s object' has no element", ct_type_name(obj)) ? ct_oom(rt, at) : 0;
}

int ct_slice_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, ct_val_t part[3],
                ct_val_t *out)
{
    if (obj->t == CT_UNDEF) return ct_fail_undef(rt, at, obj);
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
        if (!offs) return ct_oom(rt, at);
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
    return rc ? (rt->rc ? rt->rc : ct_oom(rt, at)) : 0;
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

int ct_arith(ct_rt_t *rt, const ct_node_t *at, int op, const ct_val_t *a, const ct_val_t *b,
             ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    if (a->t == CT_UNDEF) return ct_fail_undef(rt, at, a);
    if (b->t == CT_UNDEF) return ct_fail_undef(rt, at, b);
    if (op == '+' && a->t == CT_STR && b->t == CT_STR) {
        ct_buf_t buf = {0};
        int rc = ct_buf_put(rt, &buf, a->u.s.p, a->u.s.n);
        if (rc == 0) rc = ct_buf_put(rt, &buf, b->u.s.p, b->u.s.n);
        if (rc == 0) rc = ct_mkstr_copy(rt, buf.p ? buf.p : "", buf.n, out);
        free(buf.p);
        return rc ? (rt->rc ? rt->rc : ct_oom(rt, at)) : 0;
    }
    if (op == '+' && a->t == CT_LIST && b->t == CT_LIST) {
        ct_list_t *l = ct_list_new(rt, a->u.l->n + b->u.l->n);
        if (!l) return ct_oom(rt, at);
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
            if (!p) return ct_oom(rt, at);
            for (int64_t i = 0; i < k; i++)
                memcpy(p + unit * (size_t)i, a->u.s.p, unit);
            *out = ct_mkstr(p, unit * (size_t)k);
        } else {
            ct_list_t *l = ct_list_new(rt, a->u.l->n * (size_t)k);
            if (!l) return ct_oom(rt, at);
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

int ct_compare(ct_rt_t *rt, const ct_node_t *at, int op, const ct_val_t *a, const ct_val_t *b,
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
    if (a->t == CT_UNDEF) return ct_fail_undef(rt, at, a);
    if (b->t == CT_UNDEF) return ct_fail_undef(rt, at, b);
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
            return ct_compare(rt, at, op, &a->u.l->v[i], &b->u.l->v[i], res);
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
