/* Chat templates: jinja2's filters (the subset chat templates use), with transformers' tojson,
 * and the names of the filters and tests the parser accepts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

#define EQ(s, lit) ((s).n == sizeof(lit) - 1 && memcmp((s).p, lit, (s).n) == 0)

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
        if (!x) return ct_mkundef();
        cur = *x;
        i = e + 1;
        if (!dot) break;
    }
    return cur;
}

static int run_test(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, const ct_val_t *name,
                    ct_val_t *args, size_t nargs, int *res)
{
    if (!name) return (*res = ct_truthy(v)), 0;
    int rc = ct_need_str(rt, at, name, "test name");
    if (rc) return rc;
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
    if (rc) return rc;
    if (by_attr && (nargs < 1 || args[0].t != CT_STR))
        return ct_fail(rt, at, RCD_EINVAL, "selectattr/rejectattr need an attribute name");
    size_t off = by_attr ? 1 : 0;
    const ct_val_t *test = nargs > off ? &args[off] : NULL;
    ct_list_t *r = ct_list_new(rt, l->n);
    if (!r) return ct_oom(rt, at);
    for (size_t i = 0; i < l->n; i++) {
        ct_val_t x = by_attr ? get_attr_path(&l->v[i], &args[0]) : l->v[i];
        int t = 0;
        rc = run_test(rt, at, &x, test, nargs > off + 1 ? args + off + 1 : NULL,
                      nargs > off + 1 ? nargs - off - 1 : 0, &t);
        if (rc) return rc;
        if (t == keep) r->v[r->n++] = l->v[i];
    }
    *out = ct_mklist(r);
    return 0;
}

static int to_int(ct_rt_t *rt, const ct_val_t *v, int64_t dflt, ct_val_t *out)
{
    *out = ct_mkint(dflt);
    if (v->t == CT_INT || v->t == CT_BOOL) {
        out->u.i = v->u.i;
    } else if (v->t == CT_FLOAT) {
        if (isfinite(v->u.f) && fabs(v->u.f) < 9.2e18) out->u.i = (int64_t)v->u.f;
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
                if (e != buf && !*e && isfinite(d) && fabs(d) < 9.2e18) out->u.i = (int64_t)d;
            }
        }
    }
    (void)rt;
    return 0;
}

static int indent(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *w, int first,
                  int blank, ct_val_t *out)
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
        if (rc == 0) rc = ct_buf_put(rt, &b, s->u.s.p + i, e - i);
        if (rc == 0 && nl) rc = ct_buf_put(rt, &b, "\n", 1);
        line++;
        i = e + 1;
        if (!nl) break;
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out)) rc = ct_oom(rt, at);
    free(pad.p);
    free(b.p);
    return rc;
}

static const char *const filters[] = {
    "trim",       "tojson",   "length",     "count",  "upper", "lower",   "default",
    "d",          "join",     "replace",    "first",  "last",  "list",    "selectattr",
    "rejectattr", "select",   "reject",     "map",    "items", "string",  "int",
    "float",      "safe",     "capitalize", "title",  "abs",   "reverse", "indent",
    "escape",     "e",        "round",      "unique", "sum",   "min",     "max",
    "wordcount",  "dictsort", NULL};

static const char *const tests[] = {
    "defined",     "undefined", "none",     "string", "number",   "integer", "float", "boolean",
    "mapping",     "iterable",  "sequence", "true",   "false",    "odd",     "even",  "divisibleby",
    "eq",          "equalto",   "ne",       "lt",     "gt",       "le",      "ge",    "lessthan",
    "greaterthan", "in",        "lower",    "upper",  "callable", "sameas",  NULL};

static int known(const char *const *list, const char *name, size_t n)
{
    for (size_t i = 0; list[i]; i++)
        if (strlen(list[i]) == n && memcmp(list[i], name, n) == 0) return 1;
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
        const ct_val_t *dv = ct_arg(args, kw, nargs, 0, "default_value");
        const ct_val_t *bo = ct_arg(args, kw, nargs, 1, "boolean");
        int use = v->t == CT_UNDEF || (bo && ct_truthy(bo) && !ct_truthy(v));
        *out = use ? (dv ? *dv : ct_mkstr("", 0)) : *v;
        return 0;
    }
    if (EQ(f, "tojson")) {
        const ct_val_t *ea = ct_arg(args, kw, nargs, 0, "ensure_ascii");
        const ct_val_t *in = ct_arg(args, kw, nargs, 1, "indent");
        const ct_val_t *se = ct_arg(args, kw, nargs, 2, "separators");
        const ct_val_t *sk = ct_arg(args, kw, nargs, 3, "sort_keys");
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
        rc = ct_length(rt, at, v, &n);
        *out = ct_mkint(n);
        return rc;
    }
    if (EQ(f, "string")) return str_of(rt, at, v, out);
    if (EQ(f, "list")) {
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc == 0) {
            ct_list_t *c = ct_list_new(rt, l->n);
            if (!c) return ct_oom(rt, at);
            if (l->n) memcpy(c->v, l->v, l->n * sizeof(*l->v));
            c->n = l->n;
            *out = ct_mklist(c);
        }
        return rc;
    }
    if (EQ(f, "first") || EQ(f, "last")) {
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc) return rc;
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
            if (!l) return ct_oom(rt, at);
            *out = ct_mklist(l);
            return 0;
        }
        if (v->t != CT_DICT)
            return ct_fail(rt, at, RCD_EINVAL, "items: expected a mapping, got %s",
                           ct_type_name(v));
        return ct_method(rt, at, v, (ct_str_t){"items", 5}, NULL, NULL, 0, out) < 0 ? rt->rc : 0;
    }
    if (EQ(f, "join")) {
        const ct_val_t *sep = ct_arg(args, kw, nargs, 0, "d");
        return ct_join(rt, at, v, sep, ct_arg(args, kw, nargs, 1, "attribute"), out);
    }
    if (EQ(f, "selectattr") || EQ(f, "rejectattr"))
        return kw && nargs && kw[0].p
                   ? ct_fail(rt, at, RCD_EUNSUPPORTED, "keyword arguments to %.*s", (int)f.n, f.p)
                   : select_(rt, at, v, args, nargs, 1, EQ(f, "selectattr"), out);
    if (EQ(f, "select") || EQ(f, "reject"))
        return select_(rt, at, v, args, nargs, 0, EQ(f, "select"), out);
    if (EQ(f, "map")) {
        ct_list_t *l, *r;
        ct_val_t none = {.t = CT_UNDEF};
        rc = ct_iterate(rt, at, ct_truthy(v) ? v : &none, &l); /* jinja2: `if value:` */
        if (rc) return rc;
        r = ct_list_new(rt, l->n);
        if (!r) return ct_oom(rt, at);
        const ct_val_t *attr = ct_arg(args, kw, nargs, 99, "attribute");
        const ct_val_t *dflt = ct_arg(args, kw, nargs, 99, "default");
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
                if (rc) return rc;
                r->n++;
            }
        } else {
            return ct_fail(rt, at, RCD_EINVAL, "map: needs a filter name or attribute=");
        }
        *out = ct_mklist(r);
        return 0;
    }
    if (EQ(f, "int")) {
        const ct_val_t *d = ct_arg(args, kw, nargs, 0, "default");
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
            *out = ct_mkint(v->u.i < 0 ? -v->u.i : v->u.i);
        else if (v->t == CT_FLOAT)
            out->t = CT_FLOAT, out->u.f = fabs(v->u.f);
        else
            return ct_fail(rt, at, RCD_EINVAL, "abs: bad operand type %s", ct_type_name(v));
        return 0;
    }
    if (EQ(f, "round")) {
        const ct_val_t *p = ct_arg(args, kw, nargs, 0, "precision");
        double x = v->t == CT_FLOAT                      ? v->u.f
                   : (v->t == CT_INT || v->t == CT_BOOL) ? (double)v->u.i
                                                         : NAN;
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
            if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out)) rc = ct_oom(rt, at);
            free(b.p);
            return rc;
        }
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc) return rc;
        ct_list_t *r = ct_list_new(rt, l->n);
        if (!r) return ct_oom(rt, at);
        for (size_t i = l->n; i-- > 0;)
            r->v[r->n++] = l->v[i];
        *out = ct_mklist(r);
        return 0;
    }
    if (EQ(f, "unique") || EQ(f, "sum") || EQ(f, "min") || EQ(f, "max")) {
        ct_list_t *l;
        rc = ct_iterate(rt, at, v, &l);
        if (rc) return rc;
        if (EQ(f, "unique")) {
            ct_list_t *r = ct_list_new(rt, l->n);
            if (!r) return ct_oom(rt, at);
            for (size_t i = 0; i < l->n; i++) {
                int seen = 0;
                for (size_t j = 0; j < r->n && !seen; j++) /* strings: case-insensitive */
                    seen = l->v[i].t == CT_STR && r->v[j].t == CT_STR
                               ? l->v[i].u.s.n == r->v[j].u.s.n &&
                                     strncasecmp(l->v[i].u.s.p, r->v[j].u.s.p, l->v[i].u.s.n) == 0
                               : ct_equal(&r->v[j], &l->v[i]);
                if (!seen) r->v[r->n++] = l->v[i];
                if (i % 64 == 0 && ++rt->steps > rt->max_steps)
                    return ct_fail(rt, at, RCD_ERANGE, "render step budget exceeded");
            }
            *out = ct_mklist(r);
            return 0;
        }
        if (EQ(f, "sum")) {
            ct_val_t acc = ct_mkint(0);
            for (size_t i = 0; i < l->n; i++) {
                ct_val_t x = l->v[i];
                if (x.t == CT_FLOAT || acc.t == CT_FLOAT) {
                    double a = acc.t == CT_FLOAT ? acc.u.f : (double)acc.u.i;
                    double b = x.t == CT_FLOAT                     ? x.u.f
                               : (x.t == CT_INT || x.t == CT_BOOL) ? (double)x.u.i
                                                                   : NAN;
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
            *out = ct_mkundef();
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
            if (EQ(f, "min") ? less : (!less && !ct_equal(x, out))) *out = *x;
        }
        return 0;
    }
    if (EQ(f, "dictsort")) {
        if (v->t != CT_DICT) return ct_fail(rt, at, RCD_EINVAL, "dictsort: expected a mapping");
        ct_val_t items;
        if (ct_method(rt, at, v, (ct_str_t){"items", 5}, NULL, NULL, 0, &items) < 0) return rt->rc;
        ct_list_t *l = items.u.l;
        for (size_t i = 1; i < l->n; i++) /* insertion sort by key, case-insensitive */
            for (size_t j = i; j > 0; j--) {
                const ct_val_t *a = &l->v[j - 1].u.l->v[0], *b = &l->v[j].u.l->v[0];
                size_t m = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
                int c = m ? strncasecmp(a->u.s.p, b->u.s.p, m) : 0;
                if (c < 0 || (c == 0 && a->u.s.n <= b->u.s.n)) break;
                ct_val_t t = l->v[j];
                l->v[j] = l->v[j - 1];
                l->v[j - 1] = t;
            }
        *out = items;
        return 0;
    }
    /* string filters: the value through str() first, as jinja2's soft_str */
    rc = ct_str_val(rt, v, &s);
    if (rc) return rc;
    if (EQ(f, "trim")) {
        const ct_val_t *ch = ct_arg(args, kw, nargs, 0, "chars");
        if (ch && ch->t != CT_STR && ch->t != CT_NONE) return ct_need_str(rt, at, ch, "trim");
        *out = ct_strip(&s, ch && ch->t == CT_STR ? ch : NULL, 1, 1);
        return 0;
    }
    if (EQ(f, "upper") || EQ(f, "lower") || EQ(f, "capitalize") || EQ(f, "title"))
        return ct_recase(rt, at, &s,
                         EQ(f, "upper")   ? 'u'
                         : EQ(f, "lower") ? 'l'
                         : EQ(f, "title") ? 'j'
                                          : 'c',
                         out);
    if (EQ(f, "replace")) {
        const ct_val_t *o = ct_arg(args, kw, nargs, 0, "old"),
                       *n = ct_arg(args, kw, nargs, 1, "new");
        const ct_val_t *c = ct_arg(args, kw, nargs, 2, "count");
        ct_val_t os, ns;
        if (!o || !n) return ct_fail(rt, at, RCD_EINVAL, "replace needs old and new");
        rc = ct_str_val(rt, o, &os);
        if (rc == 0) rc = ct_str_val(rt, n, &ns);
        return rc ? rc : ct_replace(rt, at, &s, &os, &ns, c && c->t == CT_INT ? c->u.i : -1, out);
    }
    if (EQ(f, "indent")) {
        if (v->t != CT_STR) /* jinja2 appends "\n" to the value itself */
            return ct_fail(rt, at, RCD_EINVAL, "indent: expected a string, got %s",
                           ct_type_name(v));
        const ct_val_t *w = ct_arg(args, kw, nargs, 0, "width");
        const ct_val_t *fi = ct_arg(args, kw, nargs, 1, "first");
        const ct_val_t *bl = ct_arg(args, kw, nargs, 2, "blank");
        return indent(rt, at, &s, w, fi && ct_truthy(fi), bl && ct_truthy(bl), out);
    }
    if (EQ(f, "escape") || EQ(f, "e")) {
        ct_buf_t b = {0};
        size_t run = 0;
        for (size_t i = 0; rc == 0 && i <= s.u.s.n; i++) {
            char c = i < s.u.s.n ? s.u.s.p[i] : 0;
            const char *r = c == '&'    ? "&amp;"
                            : c == '<'  ? "&lt;"
                            : c == '>'  ? "&gt;"
                            : c == '"'  ? "&#34;"
                            : c == '\'' ? "&#39;"
                                        : NULL;
            if (!r && i < s.u.s.n) continue;
            rc = ct_buf_put(rt, &b, s.u.s.p + run, i - run);
            if (rc == 0 && r) rc = ct_buf_put(rt, &b, r, strlen(r));
            run = i + 1;
        }
        if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out)) rc = ct_oom(rt, at);
        free(b.p);
        return rc;
    }
    if (EQ(f, "wordcount")) {
        ct_val_t l;
        rc = ct_split(rt, at, &s, NULL, -1, &l);
        *out = ct_mkint(rc ? 0 : (int64_t)l.u.l->n);
        return rc;
    }
    return ct_fail(rt, at, RCD_EUNSUPPORTED, "no filter named '%.*s'", (int)f.n, f.p);
}
