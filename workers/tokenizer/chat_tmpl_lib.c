/* Chat templates: the library — jinja2's filters and tests that chat templates use, Python's
 * str/dict methods, and the globals transformers defines (raise_exception, strftime_now,
 * namespace, dict) plus range. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

#define EQ(s, lit) ((s).n == sizeof(lit) - 1 && memcmp((s).p, lit, (s).n) == 0)

static int oom(ct_rt_t *rt, const ct_node_t *at)
{
    return ct_fail(rt, at, rt->arena.over ? RCD_ERANGE : RCD_ENOMEM,
                   rt->arena.over ? "render memory budget exceeded" : "out of memory");
}

static ct_val_t mkbool(int b)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_BOOL;
    v.u.i = b != 0;
    return v;
}

static ct_val_t mkint(int64_t i)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_INT;
    v.u.i = i;
    return v;
}

static ct_val_t mklist(ct_list_t *l)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_LIST;
    v.u.l = l;
    return v;
}

static ct_val_t mkundef(void)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_UNDEF;
    return v;
}

/* Arguments by position or keyword: the value of parameter `name` at position `pos`. */
static const ct_val_t *arg(ct_val_t *args, ct_str_t *kw, size_t nargs, size_t pos,
                           const char *name)
{
    size_t k = 0;
    for (size_t i = 0; i < nargs; i++) {
        if (kw && kw[i].p) {
            if (kw[i].n == strlen(name) && memcmp(kw[i].p, name, kw[i].n) == 0)
                return &args[i];
        } else if (k++ == pos) {
            return &args[i];
        }
    }
    return NULL;
}

static int need_str(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, const char *what)
{
    if (v->t == CT_STR)
        return 0;
    return ct_fail(rt, at, RCD_EINVAL, "%s: expected a string, got %s", what, ct_type_name(v));
}

int ct_iterate(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_list_t **out)
{
    ct_list_t *l;
    switch (v->t) {
    case CT_LIST:
        *out = v->u.l;
        return 0;
    case CT_UNDEF:
        l = ct_list_new(rt, 0);
        break;
    case CT_DICT:
        l = ct_list_new(rt, v->u.d->n);
        for (size_t i = 0; l && i < v->u.d->n; i++)
            l->v[l->n++] = ct_mkstr(v->u.d->k[i].p, v->u.d->k[i].n);
        break;
    case CT_STR: {
        l = ct_list_new(rt, v->u.s.n);
        size_t i = 0;
        while (l && i < v->u.s.n) {
            size_t s = i;
            ct_utf8_next(v->u.s.p, v->u.s.n, &i);
            l->v[l->n++] = ct_mkstr(v->u.s.p + s, i - s);
        }
        break;
    }
    default:
        return ct_fail(rt, at, RCD_EINVAL, "'%s' object is not iterable", ct_type_name(v));
    }
    if (!l)
        return oom(rt, at);
    *out = l;
    return 0;
}

/* ---- strings ---- */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static int in_chars(uint32_t c, const ct_val_t *chars)
{
    if (!chars)
        return py_space(c);
    size_t i = 0;
    while (i < chars->u.s.n)
        if (ct_utf8_next(chars->u.s.p, chars->u.s.n, &i) == c)
            return 1;
    return 0;
}

/* Python str.strip/lstrip/rstrip(chars) (chars NULL: whitespace). */
static ct_val_t strip(const ct_val_t *s, const ct_val_t *chars, int left, int right)
{
    size_t a = 0, b = s->u.s.n;
    if (left) {
        while (a < b) {
            size_t i = a;
            uint32_t c = ct_utf8_next(s->u.s.p, b, &i);
            if (!in_chars(c, chars))
                break;
            a = i;
        }
    }
    if (right) {
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)s->u.s.p[st] & 0xC0) == 0x80)
                st--;
            size_t i = st;
            uint32_t c = ct_utf8_next(s->u.s.p, b, &i);
            if (!in_chars(c, chars))
                break;
            b = st;
        }
    }
    return ct_mkstr(s->u.s.p + a, b - a);
}

/* mode: 'u' upper, 'l' lower, 'c' capitalize, 't' Python str.title, 'j' jinja2's title. */
static int recase(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, int mode, ct_val_t *out)
{
    ct_buf_t b = {0};
    size_t i = 0;
    int rc = 0, first = 1, prev_cased = 0;
    while (rc == 0 && i < s->u.s.n) {
        uint32_t c = ct_utf8_next(s->u.s.p, s->u.s.n, &i);
        int32_t r = (int32_t)c;
        switch (mode) {
        case 'u': r = utf8proc_toupper(r); break;
        case 'l': r = utf8proc_tolower(r); break;
        case 'c': r = first ? utf8proc_toupper(r) : utf8proc_tolower(r); break;
        case 't': {
            const utf8proc_property_t *p = utf8proc_get_property(r);
            int cased = p->category == UTF8PROC_CATEGORY_LU || p->category == UTF8PROC_CATEGORY_LL ||
                        p->category == UTF8PROC_CATEGORY_LT;
            r = prev_cased ? utf8proc_tolower(r) : utf8proc_toupper(r);
            prev_cased = cased;
            break;
        }
        case 'j': /* words start after '-', whitespace, '(', '{', '[', '<' */
            r = prev_cased ? utf8proc_tolower(r) : utf8proc_toupper(r);
            prev_cased = !(py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<');
            break;
        }
        first = 0;
        uint8_t enc[4];
        utf8proc_ssize_t k = utf8proc_encode_char(r, enc);
        rc = ct_buf_put(rt, &b, (const char *)enc, (size_t)k);
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
        rc = oom(rt, at);
    free(b.p);
    return rc;
}

static int replace(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *old,
                   const ct_val_t *new, int64_t count, ct_val_t *out)
{
    ct_buf_t b = {0};
    int rc = 0;
    size_t i = 0;
    int64_t done = 0;
    if (old->u.s.n == 0) { /* Python inserts between every character */
        while (rc == 0 && (count < 0 || done < count) && i <= s->u.s.n) {
            rc = ct_buf_put(rt, &b, new->u.s.p, new->u.s.n);
            done++;
            if (rc == 0 && i < s->u.s.n) {
                size_t st = i;
                ct_utf8_next(s->u.s.p, s->u.s.n, &i);
                rc = ct_buf_put(rt, &b, s->u.s.p + st, i - st);
            } else {
                i++;
            }
        }
        if (rc == 0 && i < s->u.s.n)
            rc = ct_buf_put(rt, &b, s->u.s.p + i, s->u.s.n - i);
    } else {
        while (rc == 0) {
            const char *hit = (count < 0 || done < count) && i < s->u.s.n
                                  ? memmem(s->u.s.p + i, s->u.s.n - i, old->u.s.p, old->u.s.n)
                                  : NULL;
            if (!hit) {
                rc = ct_buf_put(rt, &b, s->u.s.p + i, s->u.s.n - i);
                break;
            }
            size_t h = (size_t)(hit - s->u.s.p);
            rc = ct_buf_put(rt, &b, s->u.s.p + i, h - i);
            if (rc == 0)
                rc = ct_buf_put(rt, &b, new->u.s.p, new->u.s.n);
            i = h + old->u.s.n;
            done++;
        }
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
        rc = oom(rt, at);
    free(b.p);
    return rc;
}

/* Python str.split(sep=None, maxsplit=-1). */
static int split(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *sep,
                 int64_t maxsplit, ct_val_t *out)
{
    ct_list_t *l = ct_list_new(rt, 0);
    if (!l)
        return oom(rt, at);
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0;
    int64_t done = 0;
    if (!sep) {
        for (;;) {
            while (i < n) { /* skip whitespace */
                size_t k = i;
                if (!py_space(ct_utf8_next(p, n, &k)))
                    break;
                i = k;
            }
            if (i >= n)
                break;
            size_t st = i;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = n;
                while (e > st) { /* the remainder, trailing whitespace stripped */
                    size_t q = e - 1;
                    while (q > st && ((unsigned char)p[q] & 0xC0) == 0x80)
                        q--;
                    size_t k = q;
                    if (!py_space(ct_utf8_next(p, n, &k)))
                        break;
                    e = q;
                }
                if (ct_list_push(rt, l, ct_mkstr(p + st, e - st)))
                    return oom(rt, at);
                break;
            }
            while (i < n) {
                size_t k = i;
                if (py_space(ct_utf8_next(p, n, &k)))
                    break;
                i = k;
            }
            if (ct_list_push(rt, l, ct_mkstr(p + st, i - st)))
                return oom(rt, at);
            done++;
        }
    } else {
        if (sep->u.s.n == 0)
            return ct_fail(rt, at, RCD_EINVAL, "split: empty separator");
        for (;;) {
            const char *hit = (maxsplit < 0 || done < maxsplit) && i <= n
                                  ? memmem(p + i, n - i, sep->u.s.p, sep->u.s.n)
                                  : NULL;
            size_t e = hit ? (size_t)(hit - p) : n;
            if (ct_list_push(rt, l, ct_mkstr(p + i, e - i)))
                return oom(rt, at);
            if (!hit)
                break;
            i = e + sep->u.s.n;
            done++;
        }
    }
    *out = mklist(l);
    return 0;
}

static int starts_ends(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *x,
                       int ends, int *res)
{
    *res = 0;
    if (x->t == CT_LIST) {
        for (size_t i = 0; i < x->u.l->n && !*res; i++) {
            int rc = starts_ends(rt, at, s, &x->u.l->v[i], ends, res);
            if (rc)
                return rc;
        }
        return 0;
    }
    int rc = need_str(rt, at, x, ends ? "endswith" : "startswith");
    if (rc)
        return rc;
    if (x->u.s.n <= s->u.s.n)
        *res = memcmp(ends ? s->u.s.p + s->u.s.n - x->u.s.n : s->u.s.p, x->u.s.p, x->u.s.n) == 0;
    return 0;
}

static int join(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *seq, const ct_val_t *sep,
                const ct_val_t *attr, ct_val_t *out)
{
    ct_list_t *l;
    int rc = ct_iterate(rt, at, seq, &l);
    if (rc)
        return rc;
    ct_buf_t b = {0};
    for (size_t i = 0; rc == 0 && i < l->n; i++) {
        if (i && sep)
            rc = ct_to_str(rt, &b, sep);
        const ct_val_t *v = &l->v[i];
        if (rc == 0 && attr && attr->t == CT_STR) {
            ct_val_t *a = v->t == CT_DICT ? ct_dict_get(v->u.d, attr->u.s.p, attr->u.s.n) : NULL;
            ct_val_t u = mkundef();
            rc = ct_to_str(rt, &b, a ? a : &u);
        } else if (rc == 0) {
            rc = ct_to_str(rt, &b, v);
        }
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
        rc = oom(rt, at);
    free(b.p);
    return rc;
}

static int64_t str_len(const ct_val_t *s)
{
    int64_t k = 0;
    for (size_t i = 0; i < s->u.s.n; i++)
        k += ((unsigned char)s->u.s.p[i] & 0xC0) != 0x80;
    return k;
}

static int length(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, int64_t *n)
{
    switch (v->t) {
    case CT_STR: *n = str_len(v); return 0;
    case CT_LIST: *n = (int64_t)v->u.l->n; return 0;
    case CT_DICT: *n = (int64_t)v->u.d->n; return 0;
    case CT_UNDEF: *n = 0; return 0;
    default:
        return ct_fail(rt, at, RCD_EINVAL, "object of type '%s' has no len()", ct_type_name(v));
    }
}

/* jinja2's attribute getter for selectattr/map/join: dotted paths, dict keys. */
static ct_val_t get_attr_path(const ct_val_t *v, const ct_val_t *path)
{
    ct_val_t cur = *v;
    size_t i = 0, n = path->u.s.n;
    while (i <= n) {
        const char *dot = memchr(path->u.s.p + i, '.', n - i);
        size_t e = dot ? (size_t)(dot - path->u.s.p) : n;
        const char *k = path->u.s.p + i;
        size_t kn = e - i;
        ct_val_t *x = NULL;
        if (cur.t == CT_DICT) {
            x = ct_dict_get(cur.u.d, k, kn);
        } else if (cur.t == CT_LIST && kn && k[0] >= '0' && k[0] <= '9') {
            size_t idx = (size_t)strtoull(k, NULL, 10);
            x = idx < cur.u.l->n ? &cur.u.l->v[idx] : NULL;
        }
        if (!x)
            return mkundef();
        cur = *x;
        i = e + 1;
        if (!dot)
            break;
    }
    return cur;
}

static int run_test(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, const ct_val_t *name,
                    ct_val_t *args, size_t nargs, int *res)
{
    if (!name)
        return (*res = ct_truthy(v)), 0;
    int rc = need_str(rt, at, name, "test name");
    if (rc)
        return rc;
    if (!ct_test_known(name->u.s.p, name->u.s.n))
        return ct_fail(rt, at, RCD_EUNSUPPORTED, "no test named '%.*s'", (int)name->u.s.n,
                       name->u.s.p);
    /* ct_test reads its name from the node; use a stand-in node */
    ct_node_t tmp = *at;
    tmp.name.p = name->u.s.p;
    tmp.name.n = name->u.s.n;
    return ct_test(rt, &tmp, v, args, nargs, res);
}

/* selectattr/rejectattr (by attribute) and select/reject (the item itself). */
static int select_(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *seq, ct_val_t *args,
                   size_t nargs, int by_attr, int keep, ct_val_t *out)
{
    ct_list_t *l;
    ct_val_t none = {.t = CT_UNDEF};
    int rc = ct_iterate(rt, at, ct_truthy(seq) ? seq : &none, &l); /* jinja2: `if seq:` */
    if (rc)
        return rc;
    if (by_attr && (nargs < 1 || args[0].t != CT_STR))
        return ct_fail(rt, at, RCD_EINVAL, "selectattr/rejectattr need an attribute name");
    size_t off = by_attr ? 1 : 0;
    const ct_val_t *test = nargs > off ? &args[off] : NULL;
    ct_list_t *r = ct_list_new(rt, l->n);
    if (!r)
        return oom(rt, at);
    for (size_t i = 0; i < l->n; i++) {
        ct_val_t x = by_attr ? get_attr_path(&l->v[i], &args[0]) : l->v[i];
        int t = 0;
        rc = run_test(rt, at, &x, test, nargs > off + 1 ? args + off + 1 : NULL,
                      nargs > off + 1 ? nargs - off - 1 : 0, &t);
        if (rc)
            return rc;
        if (t == keep)
            r->v[r->n++] = l->v[i];
    }
    *out = mklist(r);
    return 0;
}

static int to_int(ct_rt_t *rt, const ct_val_t *v, int64_t dflt, ct_val_t *out)
{
    *out = mkint(dflt);
    if (v->t == CT_INT || v->t == CT_BOOL) {
        out->u.i = v->u.i;
    } else if (v->t == CT_FLOAT) {
        if (isfinite(v->u.f) && fabs(v->u.f) < 9.2e18)
            out->u.i = (int64_t)v->u.f;
    } else if (v->t == CT_STR) {
        char buf[64];
        if (v->u.s.n < sizeof(buf)) {
            memcpy(buf, v->u.s.p, v->u.s.n);
            buf[v->u.s.n] = 0;
            char *e;
            long long x = strtoll(buf, &e, 10);
            while (*e == ' ')
                e++;
            if (e != buf && !*e) {
                out->u.i = x;
            } else {
                double d = strtod(buf, &e);
                while (*e == ' ')
                    e++;
                if (e != buf && !*e && isfinite(d) && fabs(d) < 9.2e18)
                    out->u.i = (int64_t)d;
            }
        }
    }
    (void)rt;
    return 0;
}

static int indent(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *w,
                  int first, int blank, ct_val_t *out)
{
    ct_buf_t pad = {0}, b = {0};
    int rc = 0;
    if (w && w->t == CT_STR) {
        rc = ct_buf_put(rt, &pad, w->u.s.p, w->u.s.n);
    } else {
        int64_t k = w && (w->t == CT_INT) ? w->u.i : 4;
        for (int64_t i = 0; rc == 0 && i < k; i++)
            rc = ct_buf_put(rt, &pad, " ", 1);
    }
    size_t i = 0, n = s->u.s.n;
    int line = 0;
    while (rc == 0 && i <= n) {
        const char *nl = i < n ? memchr(s->u.s.p + i, '\n', n - i) : NULL;
        size_t e = nl ? (size_t)(nl - s->u.s.p) : n;
        int empty = e == i;
        if ((line > 0 || first) && (blank || !empty) && pad.n)
            rc = ct_buf_put(rt, &b, pad.p, pad.n);
        if (rc == 0)
            rc = ct_buf_put(rt, &b, s->u.s.p + i, e - i);
        if (rc == 0 && nl)
            rc = ct_buf_put(rt, &b, "\n", 1);
        line++;
        i = e + 1;
        if (!nl)
            break;
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
        rc = oom(rt, at);
    free(pad.p);
    free(b.p);
    return rc;
}

static const char *const filters[] = {
    "trim", "tojson", "length", "count", "upper", "lower", "default", "d", "join", "replace",
    "first", "last", "list", "selectattr", "rejectattr", "select", "reject", "map", "items",
    "string", "int", "float", "safe", "capitalize", "title", "abs", "reverse", "indent",
    "escape", "e", "round", "unique", "sum", "min", "max", "wordcount", "dictsort", NULL};

static const char *const tests[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean",
    "mapping", "iterable", "sequence", "true", "false", "odd", "even", "divisibleby", "eq",
    "equalto", "ne", "lt", "gt", "le", "ge", "lessthan", "greaterthan", "in", "lower",
    "upper", "callable", "sameas", NULL};

static int known(const char *const *list, const char *name, size_t n)
{
    for (size_t i = 0; list[i]; i++)
        if (strlen(list[i]) == n && memcmp(list[i], name, n) == 0)
            return 1;
    return 0;
}

int ct_filter_known(const char *name, size_t n)
{
    return known(filters, name, n);
}

int ct_test_known(const char *name, size_t n)
{
    return known(tests, name, n);
}

static int str_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_val_t *out)
{
    int rc = ct_str_val(rt, v, out);
    (void)at;
    return rc;
}

int ct_filter(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_val_t *args, ct_str_t *kw,
              size_t nargs, ct_val_t *out)
{
    ct_str_t f = at->name;
    ct_val_t s;
    int rc = 0;
    memset(out, 0, sizeof(*out));
    if (EQ(f, "safe")) {
        *out = *v;
        return 0;
    }
    if (EQ(f, "default") || EQ(f, "d")) {
        const ct_val_t *dv = arg(args, kw, nargs, 0, "default_value");
        const ct_val_t *bo = arg(args, kw, nargs, 1, "boolean");
        int use = v->t == CT_UNDEF || (bo && ct_truthy(bo) && !ct_truthy(v));
        *out = use ? (dv ? *dv : ct_mkstr("", 0)) : *v;
        return 0;
    }
    if (EQ(f, "tojson")) {
        const ct_val_t *ea = arg(args, kw, nargs, 0, "ensure_ascii");
        const ct_val_t *in = arg(args, kw, nargs, 1, "indent");
        const ct_val_t *se = arg(args, kw, nargs, 2, "separators");
        const ct_val_t *sk = arg(args, kw, nargs, 3, "sort_keys");
        int ind = -1;
        if (in && in->t == CT_INT)
            ind = in->u.i < 0 ? 0 : in->u.i > 64 ? 64 : (int)in->u.i;
        else if (in && in->t != CT_NONE)
            return ct_fail(rt, at, RCD_EUNSUPPORTED, "tojson: indent must be an integer");
        ct_str_t seps[2];
        if (se && se->t == CT_LIST && se->u.l->n == 2 && se->u.l->v[0].t == CT_STR &&
            se->u.l->v[1].t == CT_STR) {
            seps[0] = (ct_str_t){se->u.l->v[0].u.s.p, se->u.l->v[0].u.s.n};
            seps[1] = (ct_str_t){se->u.l->v[1].u.s.p, se->u.l->v[1].u.s.n};
        } else if (se && se->t != CT_NONE) {
            return ct_fail(rt, at, RCD_EINVAL, "tojson: separators must be two strings");
        }
        return ct_tojson(rt, at, v, ind, ea && ct_truthy(ea), sk && ct_truthy(sk),
                         se && se->t != CT_NONE ? seps : NULL, out);
    }
    if (EQ(f, "length") || EQ(f, "count")) {
        int64_t n = 0;
        rc = length(rt, at, v, &n);
        *out = mkint(n);
        return rc;
    }
    if (EQ(f, "string"))
        return str_of(rt, at, v, out);
    if (EQ(f, "list")) {
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc == 0) {
            ct_list_t *c = ct_list_new(rt, l->n);
            if (!c)
                return oom(rt, at);
            if (l->n)
                memcpy(c->v, l->v, l->n * sizeof(*l->v));
            c->n = l->n;
            *out = mklist(c);
        }
        return rc;
    }
    if (EQ(f, "first") || EQ(f, "last")) {
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc)
            return rc;
        if (l->n) {
            *out = l->v[EQ(f, "first") ? 0 : l->n - 1];
            return 0;
        }
        *out = EQ(f, "first") ? ct_mkstr("No first item, sequence was empty.", 34)
                              : ct_mkstr("No last item, sequence was empty.", 33);
        out->t = CT_UNDEF; /* jinja2's hint, raised if the undefined is used */
        return 0;
    }
    if (EQ(f, "items")) {
        if (v->t == CT_UNDEF) {
            ct_list_t *l = ct_list_new(rt, 0);
            if (!l)
                return oom(rt, at);
            *out = mklist(l);
            return 0;
        }
        if (v->t != CT_DICT)
            return ct_fail(rt, at, RCD_EINVAL, "items: expected a mapping, got %s",
                           ct_type_name(v));
        return ct_method(rt, at, v, (ct_str_t){"items", 5}, NULL, NULL, 0, out) < 0 ? rt->rc : 0;
    }
    if (EQ(f, "join")) {
        const ct_val_t *sep = arg(args, kw, nargs, 0, "d");
        return join(rt, at, v, sep, arg(args, kw, nargs, 1, "attribute"), out);
    }
    if (EQ(f, "selectattr") || EQ(f, "rejectattr"))
        return kw && nargs && kw[0].p ? ct_fail(rt, at, RCD_EUNSUPPORTED, "keyword arguments to %.*s", (int)f.n, f.p)
                                      : select_(rt, at, v, args, nargs, 1, EQ(f, "selectattr"), out);
    if (EQ(f, "select") || EQ(f, "reject"))
        return select_(rt, at, v, args, nargs, 0, EQ(f, "select"), out);
    if (EQ(f, "map")) {
        ct_list_t *l, *r;
        ct_val_t none = {.t = CT_UNDEF};
        rc = ct_iterate(rt, at, ct_truthy(v) ? v : &none, &l); /* jinja2: `if value:` */
        if (rc)
            return rc;
        r = ct_list_new(rt, l->n);
        if (!r)
            return oom(rt, at);
        const ct_val_t *attr = arg(args, kw, nargs, 99, "attribute");
        const ct_val_t *dflt = arg(args, kw, nargs, 99, "default");
        if (attr && attr->t == CT_STR) {
            for (size_t i = 0; i < l->n; i++) {
                ct_val_t x = get_attr_path(&l->v[i], attr);
                r->v[r->n++] = x.t == CT_UNDEF && dflt ? *dflt : x;
            }
        } else if (nargs >= 1 && args[0].t == CT_STR && (!kw || !kw[0].p)) {
            if (!ct_filter_known(args[0].u.s.p, args[0].u.s.n))
                return ct_fail(rt, at, RCD_EUNSUPPORTED, "map: no filter named '%.*s'",
                               (int)args[0].u.s.n, args[0].u.s.p);
            ct_node_t tmp = *at;
            tmp.name.p = args[0].u.s.p;
            tmp.name.n = args[0].u.s.n;
            for (size_t i = 0; i < l->n; i++) {
                rc = ct_filter(rt, &tmp, &l->v[i], args + 1, kw ? kw + 1 : NULL, nargs - 1,
                               &r->v[r->n]);
                if (rc)
                    return rc;
                r->n++;
            }
        } else {
            return ct_fail(rt, at, RCD_EINVAL, "map: needs a filter name or attribute=");
        }
        *out = mklist(r);
        return 0;
    }
    if (EQ(f, "int")) {
        const ct_val_t *d = arg(args, kw, nargs, 0, "default");
        return to_int(rt, v, d && d->t == CT_INT ? d->u.i : 0, out);
    }
    if (EQ(f, "float")) {
        out->t = CT_FLOAT;
        if (v->t == CT_INT || v->t == CT_BOOL)
            out->u.f = (double)v->u.i;
        else if (v->t == CT_FLOAT)
            out->u.f = v->u.f;
        else if (v->t == CT_STR && v->u.s.n < 64) {
            char buf[64], *e;
            memcpy(buf, v->u.s.p, v->u.s.n);
            buf[v->u.s.n] = 0;
            double d = strtod(buf, &e);
            out->u.f = e != buf && !*e ? d : 0.0;
        }
        return 0;
    }
    if (EQ(f, "abs")) {
        if (v->t == CT_INT || v->t == CT_BOOL)
            *out = mkint(v->u.i < 0 ? -v->u.i : v->u.i);
        else if (v->t == CT_FLOAT)
            out->t = CT_FLOAT, out->u.f = fabs(v->u.f);
        else
            return ct_fail(rt, at, RCD_EINVAL, "abs: bad operand type %s", ct_type_name(v));
        return 0;
    }
    if (EQ(f, "round")) {
        const ct_val_t *p = arg(args, kw, nargs, 0, "precision");
        double x = v->t == CT_FLOAT ? v->u.f : (v->t == CT_INT || v->t == CT_BOOL) ? (double)v->u.i : NAN;
        if (isnan(x) && v->t != CT_FLOAT)
            return ct_fail(rt, at, RCD_EINVAL, "round: expected a number");
        double m = pow(10, p && p->t == CT_INT ? (double)p->u.i : 0);
        out->t = CT_FLOAT;
        out->u.f = round(x * m) / m;
        return 0;
    }
    if (EQ(f, "reverse")) {
        if (v->t == CT_STR) {
            ct_list_t *l;
            rc = ct_iterate(rt, at, v, &l);
            ct_buf_t b = {0};
            for (size_t i = l ? l->n : 0; rc == 0 && i-- > 0;)
                rc = ct_buf_put(rt, &b, l->v[i].u.s.p, l->v[i].u.s.n);
            if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
                rc = oom(rt, at);
            free(b.p);
            return rc;
        }
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc)
            return rc;
        ct_list_t *r = ct_list_new(rt, l->n);
        if (!r)
            return oom(rt, at);
        for (size_t i = l->n; i-- > 0;)
            r->v[r->n++] = l->v[i];
        *out = mklist(r);
        return 0;
    }
    if (EQ(f, "unique") || EQ(f, "sum") || EQ(f, "min") || EQ(f, "max")) {
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc)
            return rc;
        if (EQ(f, "unique")) {
            ct_list_t *r = ct_list_new(rt, l->n);
            if (!r)
                return oom(rt, at);
            for (size_t i = 0; i < l->n; i++) {
                int seen = 0;
                for (size_t j = 0; j < r->n && !seen; j++) /* strings: case-insensitive */
                    seen = l->v[i].t == CT_STR && r->v[j].t == CT_STR
                               ? l->v[i].u.s.n == r->v[j].u.s.n &&
                                     strncasecmp(l->v[i].u.s.p, r->v[j].u.s.p, l->v[i].u.s.n) == 0
                               : ct_equal(&r->v[j], &l->v[i]);
                if (!seen)
                    r->v[r->n++] = l->v[i];
                if (i % 64 == 0 && ++rt->steps > rt->max_steps)
                    return ct_fail(rt, at, RCD_ERANGE, "render step budget exceeded");
            }
            *out = mklist(r);
            return 0;
        }
        if (EQ(f, "sum")) {
            ct_val_t acc = mkint(0);
            for (size_t i = 0; i < l->n; i++) {
                ct_val_t x = l->v[i];
                if (x.t == CT_FLOAT || acc.t == CT_FLOAT) {
                    double a = acc.t == CT_FLOAT ? acc.u.f : (double)acc.u.i;
                    double b = x.t == CT_FLOAT ? x.u.f : (x.t == CT_INT || x.t == CT_BOOL) ? (double)x.u.i : NAN;
                    acc.t = CT_FLOAT;
                    acc.u.f = a + b;
                } else if (x.t == CT_INT || x.t == CT_BOOL) {
                    acc.u.i += x.u.i;
                } else {
                    return ct_fail(rt, at, RCD_EINVAL, "sum: unsupported operand %s",
                                   ct_type_name(&x));
                }
            }
            *out = acc;
            return 0;
        }
        if (l->n == 0) {
            *out = mkundef();
            return 0;
        }
        *out = l->v[0];
        for (size_t i = 1; i < l->n; i++) {
            int a = 0, b = 0;
            int64_t ai;
            double ad;
            (void)a;
            (void)b;
            (void)ai;
            (void)ad;
            const ct_val_t *x = &l->v[i];
            int less;
            if ((x->t == CT_INT || x->t == CT_FLOAT || x->t == CT_BOOL) &&
                (out->t == CT_INT || out->t == CT_FLOAT || out->t == CT_BOOL)) {
                double xd = x->t == CT_FLOAT ? x->u.f : (double)x->u.i;
                double od = out->t == CT_FLOAT ? out->u.f : (double)out->u.i;
                less = xd < od;
            } else if (x->t == CT_STR && out->t == CT_STR) {
                size_t m = x->u.s.n < out->u.s.n ? x->u.s.n : out->u.s.n;
                int c = m ? memcmp(x->u.s.p, out->u.s.p, m) : 0;
                less = c < 0 || (c == 0 && x->u.s.n < out->u.s.n);
            } else {
                return ct_fail(rt, at, RCD_EINVAL, "%.*s: values cannot be compared", (int)f.n,
                               f.p);
            }
            if (EQ(f, "min") ? less : (!less && !ct_equal(x, out)))
                *out = *x;
        }
        return 0;
    }
    if (EQ(f, "dictsort")) {
        if (v->t != CT_DICT)
            return ct_fail(rt, at, RCD_EINVAL, "dictsort: expected a mapping");
        ct_val_t items;
        if (ct_method(rt, at, v, (ct_str_t){"items", 5}, NULL, NULL, 0, &items) < 0)
            return rt->rc;
        ct_list_t *l = items.u.l;
        for (size_t i = 1; i < l->n; i++) /* insertion sort by key, case-insensitive */
            for (size_t j = i; j > 0; j--) {
                const ct_val_t *a = &l->v[j - 1].u.l->v[0], *b = &l->v[j].u.l->v[0];
                size_t m = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
                int c = m ? strncasecmp(a->u.s.p, b->u.s.p, m) : 0;
                if (c < 0 || (c == 0 && a->u.s.n <= b->u.s.n))
                    break;
                ct_val_t t = l->v[j];
                l->v[j] = l->v[j - 1];
                l->v[j - 1] = t;
            }
        *out = items;
        return 0;
    }
    /* string filters: the value through str() first, as jinja2's soft_str */
    rc = ct_str_val(rt, v, &s);
    if (rc)
        return rc;
    if (EQ(f, "trim")) {
        const ct_val_t *ch = arg(args, kw, nargs, 0, "chars");
        if (ch && ch->t != CT_STR && ch->t != CT_NONE)
            return need_str(rt, at, ch, "trim");
        *out = strip(&s, ch && ch->t == CT_STR ? ch : NULL, 1, 1);
        return 0;
    }
    if (EQ(f, "upper") || EQ(f, "lower") || EQ(f, "capitalize") || EQ(f, "title"))
        return recase(rt, at, &s, EQ(f, "upper") ? 'u' : EQ(f, "lower") ? 'l' : EQ(f, "title") ? 'j' : 'c', out);
    if (EQ(f, "replace")) {
        const ct_val_t *o = arg(args, kw, nargs, 0, "old"), *n = arg(args, kw, nargs, 1, "new");
        const ct_val_t *c = arg(args, kw, nargs, 2, "count");
        ct_val_t os, ns;
        if (!o || !n)
            return ct_fail(rt, at, RCD_EINVAL, "replace needs old and new");
        rc = ct_str_val(rt, o, &os);
        if (rc == 0)
            rc = ct_str_val(rt, n, &ns);
        return rc ? rc : replace(rt, at, &s, &os, &ns, c && c->t == CT_INT ? c->u.i : -1, out);
    }
    if (EQ(f, "indent")) {
        if (v->t != CT_STR) /* jinja2 appends "\n" to the value itself */
            return ct_fail(rt, at, RCD_EINVAL, "indent: expected a string, got %s",
                           ct_type_name(v));
        const ct_val_t *w = arg(args, kw, nargs, 0, "width");
        const ct_val_t *fi = arg(args, kw, nargs, 1, "first");
        const ct_val_t *bl = arg(args, kw, nargs, 2, "blank");
        return indent(rt, at, &s, w, fi && ct_truthy(fi), bl && ct_truthy(bl), out);
    }
    if (EQ(f, "escape") || EQ(f, "e")) {
        ct_buf_t b = {0};
        size_t run = 0;
        for (size_t i = 0; rc == 0 && i <= s.u.s.n; i++) {
            char c = i < s.u.s.n ? s.u.s.p[i] : 0;
            const char *r = c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;"
                            : c == '"' ? "&#34;" : c == '\'' ? "&#39;" : NULL;
            if (!r && i < s.u.s.n)
                continue;
            rc = ct_buf_put(rt, &b, s.u.s.p + run, i - run);
            if (rc == 0 && r)
                rc = ct_buf_put(rt, &b, r, strlen(r));
            run = i + 1;
        }
        if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out))
            rc = oom(rt, at);
        free(b.p);
        return rc;
    }
    if (EQ(f, "wordcount")) {
        ct_val_t l;
        rc = split(rt, at, &s, NULL, -1, &l);
        *out = mkint(rc ? 0 : (int64_t)l.u.l->n);
        return rc;
    }
    return ct_fail(rt, at, RCD_EUNSUPPORTED, "no filter named '%.*s'", (int)f.n, f.p);
}

int ct_test(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_val_t *args, size_t nargs,
            int *out)
{
    ct_str_t t = at->name;
    const ct_val_t *a = nargs ? &args[0] : NULL;
    int isnum = v->t == CT_INT || v->t == CT_FLOAT || v->t == CT_BOOL;
    *out = 0;
    if (EQ(t, "defined"))
        *out = v->t != CT_UNDEF;
    else if (EQ(t, "undefined"))
        *out = v->t == CT_UNDEF;
    else if (EQ(t, "none"))
        *out = v->t == CT_NONE;
    else if (EQ(t, "string"))
        *out = v->t == CT_STR;
    else if (EQ(t, "number"))
        *out = isnum;
    else if (EQ(t, "integer"))
        *out = v->t == CT_INT;
    else if (EQ(t, "float"))
        *out = v->t == CT_FLOAT;
    else if (EQ(t, "boolean"))
        *out = v->t == CT_BOOL;
    else if (EQ(t, "true") || EQ(t, "false"))
        *out = v->t == CT_BOOL && v->u.i == EQ(t, "true");
    else if (EQ(t, "mapping"))
        *out = v->t == CT_DICT && !v->u.d->ns;
    else if (EQ(t, "iterable"))
        *out = v->t == CT_STR || v->t == CT_LIST || v->t == CT_DICT || v->t == CT_UNDEF;
    else if (EQ(t, "sequence"))
        *out = v->t == CT_STR || v->t == CT_LIST || v->t == CT_DICT || v->t == CT_UNDEF;
    else if (EQ(t, "callable"))
        *out = v->t == CT_MACRO || v->t == CT_FUNC || v->t == CT_CYCLE || v->t == CT_UNDEF;
    else if (EQ(t, "lower") || EQ(t, "upper")) {
        ct_val_t s, r;
        int rc = ct_str_val(rt, v, &s);
        if (rc == 0)
            rc = recase(rt, at, &s, EQ(t, "lower") ? 'l' : 'u', &r);
        if (rc)
            return rc;
        *out = ct_equal(&s, &r);
    } else if (EQ(t, "odd") || EQ(t, "even") || EQ(t, "divisibleby")) {
        if (v->t != CT_INT && v->t != CT_BOOL)
            return ct_fail(rt, at, RCD_EINVAL, "test '%.*s' needs an integer", (int)t.n, t.p);
        int64_t d = EQ(t, "divisibleby") ? (a && (a->t == CT_INT) ? a->u.i : 0) : 2;
        if (d == 0)
            return ct_fail(rt, at, RCD_EINVAL, "divisibleby: needs a non-zero integer");
        int64_t r = v->u.i % d;
        *out = EQ(t, "odd") ? r != 0 : r == 0;
    } else if (EQ(t, "sameas")) {
        *out = a && ct_equal(v, a) && v->t == a->t;
    } else {
        if (!a)
            return ct_fail(rt, at, RCD_EINVAL, "test '%.*s' needs an argument", (int)t.n, t.p);
        if (EQ(t, "eq") || EQ(t, "equalto"))
            *out = ct_equal(v, a);
        else if (EQ(t, "ne"))
            *out = !ct_equal(v, a);
        else if (EQ(t, "in")) {
            if (a->t == CT_STR && v->t == CT_STR)
                *out = v->u.s.n == 0 || memmem(a->u.s.p, a->u.s.n, v->u.s.p, v->u.s.n) != NULL;
            else if (a->t == CT_LIST)
                for (size_t i = 0; i < a->u.l->n && !*out; i++)
                    *out = ct_equal(v, &a->u.l->v[i]);
            else if (a->t == CT_DICT)
                *out = v->t == CT_STR && ct_dict_get(a->u.d, v->u.s.p, v->u.s.n) != NULL;
            else
                return ct_fail(rt, at, RCD_EINVAL, "test 'in': bad container %s", ct_type_name(a));
        } else {
            int anum = a->t == CT_INT || a->t == CT_FLOAT || a->t == CT_BOOL;
            double x, y;
            if (isnum && anum) {
                x = v->t == CT_FLOAT ? v->u.f : (double)v->u.i;
                y = a->t == CT_FLOAT ? a->u.f : (double)a->u.i;
            } else if (v->t == CT_STR && a->t == CT_STR) {
                size_t m = v->u.s.n < a->u.s.n ? v->u.s.n : a->u.s.n;
                int c = m ? memcmp(v->u.s.p, a->u.s.p, m) : 0;
                x = c ? c : (double)v->u.s.n;
                y = c ? 0 : (double)a->u.s.n;
            } else {
                return ct_fail(rt, at, RCD_EINVAL, "test '%.*s': values cannot be compared",
                               (int)t.n, t.p);
            }
            if (EQ(t, "lt") || EQ(t, "lessthan"))
                *out = x < y;
            else if (EQ(t, "gt") || EQ(t, "greaterthan"))
                *out = x > y;
            else if (EQ(t, "le"))
                *out = x <= y;
            else if (EQ(t, "ge"))
                *out = x >= y;
            else
                return ct_fail(rt, at, RCD_EUNSUPPORTED, "no test named '%.*s'", (int)t.n, t.p);
        }
    }
    return 0;
}

static int str_method(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, ct_str_t m,
                      ct_val_t *args, ct_str_t *kw, size_t nargs, ct_val_t *out)
{
    int rc;
    if (EQ(m, "startswith") || EQ(m, "endswith")) {
        int r;
        if (nargs < 1)
            return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a prefix", (int)m.n, m.p);
        rc = starts_ends(rt, at, s, &args[0], EQ(m, "endswith"), &r);
        *out = mkbool(r);
        return rc ? rc : 1;
    }
    if (EQ(m, "strip") || EQ(m, "lstrip") || EQ(m, "rstrip")) {
        const ct_val_t *ch = arg(args, kw, nargs, 0, "chars");
        if (ch && ch->t != CT_STR && ch->t != CT_NONE)
            return need_str(rt, at, ch, "strip");
        *out = strip(s, ch && ch->t == CT_STR ? ch : NULL, !EQ(m, "rstrip"), !EQ(m, "lstrip"));
        return 1;
    }
    if (EQ(m, "split")) {
        const ct_val_t *sep = arg(args, kw, nargs, 0, "sep");
        const ct_val_t *mx = arg(args, kw, nargs, 1, "maxsplit");
        if (sep && sep->t != CT_STR && sep->t != CT_NONE)
            return need_str(rt, at, sep, "split");
        rc = split(rt, at, s, sep && sep->t == CT_STR ? sep : NULL,
                   mx && mx->t == CT_INT ? mx->u.i : -1, out);
        return rc ? rc : 1;
    }
    if (EQ(m, "replace")) {
        if (nargs < 2 || args[0].t != CT_STR || args[1].t != CT_STR)
            return ct_fail(rt, at, RCD_EINVAL, "replace takes two strings");
        rc = replace(rt, at, s, &args[0], &args[1],
                     nargs > 2 && args[2].t == CT_INT ? args[2].u.i : -1, out);
        return rc ? rc : 1;
    }
    if (EQ(m, "upper") || EQ(m, "lower") || EQ(m, "title") || EQ(m, "capitalize")) {
        rc = recase(rt, at, s, EQ(m, "upper") ? 'u' : EQ(m, "lower") ? 'l' : EQ(m, "title") ? 't' : 'c', out);
        return rc ? rc : 1;
    }
    if (EQ(m, "find") || EQ(m, "rfind") || EQ(m, "count")) {
        if (nargs < 1 || args[0].t != CT_STR)
            return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a string", (int)m.n, m.p);
        const ct_val_t *x = &args[0];
        int64_t found = -1, cnt = 0;
        if (x->u.s.n == 0) {
            found = EQ(m, "rfind") ? str_len(s) : 0;
            cnt = str_len(s) + 1;
        } else {
            size_t i = 0;
            while (i + x->u.s.n <= s->u.s.n) {
                const char *h = memmem(s->u.s.p + i, s->u.s.n - i, x->u.s.p, x->u.s.n);
                if (!h)
                    break;
                size_t off = (size_t)(h - s->u.s.p);
                ct_val_t pre = ct_mkstr(s->u.s.p, off);
                if (found < 0 || EQ(m, "rfind"))
                    found = str_len(&pre);
                cnt++;
                i = off + x->u.s.n;
                if (EQ(m, "find"))
                    break;
            }
        }
        *out = mkint(EQ(m, "count") ? cnt : found);
        return 1;
    }
    if (EQ(m, "join")) {
        rc = nargs < 1 ? ct_fail(rt, at, RCD_EINVAL, "join takes an iterable")
                       : join(rt, at, &args[0], s, NULL, out);
        return rc ? rc : 1;
    }
    if (EQ(m, "splitlines")) {
        ct_list_t *l = ct_list_new(rt, 0);
        if (!l)
            return oom(rt, at);
        size_t i = 0, n = s->u.s.n;
        while (i < n) {
            size_t e = i;
            while (e < n && s->u.s.p[e] != '\n' && s->u.s.p[e] != '\r')
                e++;
            if (ct_list_push(rt, l, ct_mkstr(s->u.s.p + i, e - i)))
                return oom(rt, at);
            if (e + 1 < n && s->u.s.p[e] == '\r' && s->u.s.p[e + 1] == '\n')
                e++;
            i = e + 1;
        }
        *out = mklist(l);
        return 1;
    }
    if (EQ(m, "removeprefix") || EQ(m, "removesuffix")) {
        int r = 0;
        if (nargs < 1 || args[0].t != CT_STR)
            return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a string", (int)m.n, m.p);
        starts_ends(rt, at, s, &args[0], EQ(m, "removesuffix"), &r);
        size_t k = r ? args[0].u.s.n : 0;
        *out = EQ(m, "removeprefix") ? ct_mkstr(s->u.s.p + k, s->u.s.n - k)
                                     : ct_mkstr(s->u.s.p, s->u.s.n - k);
        return 1;
    }
    if (EQ(m, "isdigit") || EQ(m, "isspace") || EQ(m, "isalpha") || EQ(m, "isupper") || EQ(m, "islower")) {
        int r = s->u.s.n > 0;
        for (size_t i = 0; r && i < s->u.s.n; i++) {
            unsigned char c = (unsigned char)s->u.s.p[i];
            if (EQ(m, "isdigit"))
                r = c >= '0' && c <= '9';
            else if (EQ(m, "isspace"))
                r = c == ' ' || (c >= 9 && c <= 13);
            else if (EQ(m, "isalpha"))
                r = (c | 32) >= 'a' && (c | 32) <= 'z';
            else if (EQ(m, "isupper"))
                r = !(c >= 'a' && c <= 'z');
            else
                r = !(c >= 'A' && c <= 'Z');
        }
        *out = mkbool(r);
        return 1;
    }
    return 0;
}

int ct_method(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, ct_str_t m,
              ct_val_t *args, ct_str_t *kw, size_t nargs, ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    if (obj->t == CT_STR)
        return str_method(rt, at, obj, m, args, kw, nargs, out);
    if (obj->t == CT_DICT && !obj->u.d->ns) {
        const ct_dict_t *d = obj->u.d;
        if (EQ(m, "items") || EQ(m, "keys") || EQ(m, "values")) {
            ct_list_t *l = ct_list_new(rt, d->n);
            if (!l)
                return oom(rt, at);
            for (size_t i = 0; i < d->n; i++) {
                ct_val_t k = ct_mkstr(d->k[i].p, d->k[i].n);
                if (EQ(m, "keys")) {
                    l->v[l->n++] = k;
                } else if (EQ(m, "values")) {
                    l->v[l->n++] = d->v[i];
                } else {
                    ct_list_t *p = ct_list_new(rt, 2);
                    if (!p)
                        return oom(rt, at);
                    p->v[0] = k;
                    p->v[1] = d->v[i];
                    p->n = 2;
                    p->tuple = 1;
                    l->v[l->n++] = mklist(p);
                }
            }
            *out = mklist(l);
            return 1;
        }
        if (EQ(m, "get")) {
            const ct_val_t *k = arg(args, kw, nargs, 0, "key");
            const ct_val_t *dv = arg(args, kw, nargs, 1, "default");
            ct_val_t *x = k && k->t == CT_STR ? ct_dict_get(d, k->u.s.p, k->u.s.n) : NULL;
            if (x)
                *out = *x;
            else if (dv)
                *out = *dv;
            else
                out->t = CT_NONE;
            return 1;
        }
    }
    if (obj->t == CT_LIST || obj->t == CT_DICT) {
        static const char *const mut[] = {"append", "extend", "pop", "insert", "remove",
                                          "clear", "update", "sort", "reverse", "setdefault",
                                          "popitem", NULL};
        for (size_t i = 0; mut[i]; i++)
            if (m.n == strlen(mut[i]) && memcmp(m.p, mut[i], m.n) == 0)
                return ct_fail(rt, at, RCD_EINVAL,
                               "access to %s.%.*s is unsafe (the sandbox makes values immutable)",
                               ct_type_name(obj), (int)m.n, m.p);
        if (obj->t == CT_LIST && (EQ(m, "index") || EQ(m, "count"))) {
            if (nargs < 1)
                return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a value", (int)m.n, m.p);
            int64_t idx = -1, cnt = 0;
            for (size_t i = 0; i < obj->u.l->n; i++)
                if (ct_equal(&obj->u.l->v[i], &args[0])) {
                    if (idx < 0)
                        idx = (int64_t)i;
                    cnt++;
                }
            if (EQ(m, "index") && idx < 0)
                return ct_fail(rt, at, RCD_EINVAL, "list.index(x): x not in list");
            *out = mkint(EQ(m, "index") ? idx : cnt);
            return 1;
        }
    }
    return 0;
}

int ct_global_func(const char *name, size_t n)
{
    ct_str_t s = {name, n};
    if (EQ(s, "raise_exception"))
        return CT_FN_RAISE;
    if (EQ(s, "range"))
        return CT_FN_RANGE;
    if (EQ(s, "namespace"))
        return CT_FN_NAMESPACE;
    if (EQ(s, "dict"))
        return CT_FN_DICT;
    if (EQ(s, "strftime_now"))
        return CT_FN_STRFTIME;
    return -1;
}

int ct_call_func(ct_rt_t *rt, const ct_node_t *at, int fn, ct_val_t *args, ct_str_t *kw,
                 size_t nargs, ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    switch (fn) {
    case CT_FN_RAISE: {
        ct_val_t s = ct_mkstr("", 0);
        if (nargs && ct_str_val(rt, &args[0], &s))
            return rt->rc;
        if (rt->rc)
            return rt->rc;
        rt->rc = RCD_EINVAL;
        rt->raised = 1;
        rcd_fail(RCD_EINVAL, rt->err, rt->errlen, "%.*s", (int)s.u.s.n, s.u.s.p);
        return RCD_EINVAL;
    }
    case CT_FN_RANGE: {
        int64_t a = 0, b, st = 1;
        for (size_t i = 0; i < nargs; i++)
            if (args[i].t != CT_INT && args[i].t != CT_BOOL)
                return ct_fail(rt, at, RCD_EINVAL, "range() takes integers");
        if (nargs == 1) {
            b = args[0].u.i;
        } else if (nargs == 2 || nargs == 3) {
            a = args[0].u.i;
            b = args[1].u.i;
            st = nargs == 3 ? args[2].u.i : 1;
        } else {
            return ct_fail(rt, at, RCD_EINVAL, "range() takes 1 to 3 arguments");
        }
        if (st == 0)
            return ct_fail(rt, at, RCD_EINVAL, "range() arg 3 must not be zero");
        double cnt = st > 0 ? ((double)b - (double)a) / (double)st : ((double)a - (double)b) / (double)-st;
        if (cnt > (double)(rt->max_steps - rt->steps))
            return ct_fail(rt, at, RCD_ERANGE, "range() longer than the step budget");
        ct_list_t *l = ct_list_new(rt, cnt > 0 ? (size_t)ceil(cnt) : 0);
        if (!l)
            return oom(rt, at);
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
            l->v[l->n++] = mkint(i);
            if (l->n == l->cap)
                break;
        }
        rt->steps += l->n;
        *out = mklist(l);
        return 0;
    }
    case CT_FN_NAMESPACE:
    case CT_FN_DICT: {
        ct_dict_t *d = ct_dict_new(rt, nargs);
        if (!d)
            return oom(rt, at);
        d->ns = fn == CT_FN_NAMESPACE;
        for (size_t i = 0; i < nargs; i++) {
            if (kw && kw[i].p) {
                if (d->ns && kw[i].n && kw[i].p[0] == '_')
                    return ct_fail(rt, at, RCD_EINVAL,
                                   "namespace attributes may not start with '_'");
                if (ct_dict_set(rt, d, kw[i].p, kw[i].n, args[i]))
                    return oom(rt, at);
            } else if (args[i].t == CT_DICT && i == 0) {
                for (size_t j = 0; j < args[i].u.d->n; j++)
                    if (ct_dict_set(rt, d, args[i].u.d->k[j].p, args[i].u.d->k[j].n,
                                    args[i].u.d->v[j]))
                        return oom(rt, at);
            } else {
                return ct_fail(rt, at, RCD_EINVAL, "%s() takes keyword arguments",
                               d->ns ? "namespace" : "dict");
            }
        }
        out->t = CT_DICT;
        out->u.d = d;
        return 0;
    }
    case CT_FN_STRFTIME: {
        if (nargs < 1 || args[0].t != CT_STR || args[0].u.s.n > 256)
            return ct_fail(rt, at, RCD_EINVAL, "strftime_now takes a format string");
        char fmt[260], buf[1024];
        memcpy(fmt, args[0].u.s.p, args[0].u.s.n);
        fmt[args[0].u.s.n] = 0;
        time_t now = (time_t)rt->now;
        struct tm tm;
        if (!localtime_r(&now, &tm))
            return ct_fail(rt, at, RCD_EINVAL, "strftime_now: bad clock");
        size_t k = fmt[0] ? strftime(buf, sizeof(buf), fmt, &tm) : 0;
        if (ct_mkstr_copy(rt, buf, k, out))
            return oom(rt, at);
        return 0;
    }
    }
    return ct_fail(rt, at, RCD_EINTERNAL, "unknown function");
}
