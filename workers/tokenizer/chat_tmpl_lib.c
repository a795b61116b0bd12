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
    if (!l) return ct_oom(rt, at);
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
    if (!chars) return py_space(c);
    size_t i = 0;
    while (i < chars->u.s.n)
        if (ct_utf8_next(chars->u.s.p, chars->u.s.n, &i) == c) return 1;
    return 0;
}

/* Python str.strip/lstrip/rstrip(chars) (chars NULL: whitespace). */
ct_val_t ct_strip(const ct_val_t *s, const ct_val_t *chars, int left, int right)
{
    size_t a = 0, b = s->u.s.n;
    if (left) {
        while (a < b) {
            size_t i = a;
            uint32_t c = ct_utf8_next(s->u.s.p, b, &i);
            if (!in_chars(c, chars)) break;
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
            if (!in_chars(c, chars)) break;
            b = st;
        }
    }
    return ct_mkstr(s->u.s.p + a, b - a);
}

/* mode: 'u' upper, 'l' lower, 'c' capitalize, 't' Python str.title, 'j' jinja2's title. */
int ct_recase(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, int mode, ct_val_t *out)
{
    ct_buf_t b = {0};
    size_t i = 0;
    int rc = 0, first = 1, prev_cased = 0;
    while (rc == 0 && i < s->u.s.n) {
        uint32_t c = ct_utf8_next(s->u.s.p, s->u.s.n, &i);
        int32_t r = (int32_t)c;
        switch (mode) {
        case 'u':
            r = utf8proc_toupper(r);
            break;
        case 'l':
            r = utf8proc_tolower(r);
            break;
        case 'c':
            r = first ? utf8proc_toupper(r) : utf8proc_tolower(r);
            break;
        case 't': {
            const utf8proc_property_t *p = utf8proc_get_property(r);
            int cased = p->category == UTF8PROC_CATEGORY_LU ||
                        p->category == UTF8PROC_CATEGORY_LL || p->category == UTF8PROC_CATEGORY_LT;
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
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out)) rc = ct_oom(rt, at);
    free(b.p);
    return rc;
}

int ct_replace(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *old,
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
        if (rc == 0 && i < s->u.s.n) rc = ct_buf_put(rt, &b, s->u.s.p + i, s->u.s.n - i);
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
            if (rc == 0) rc = ct_buf_put(rt, &b, new->u.s.p, new->u.s.n);
            i = h + old->u.s.n;
            done++;
        }
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out)) rc = ct_oom(rt, at);
    free(b.p);
    return rc;
}

/* Python str.split(sep=None, maxsplit=-1). */
int ct_split(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *sep,
             int64_t maxsplit, ct_val_t *out)
{
    ct_list_t *l = ct_list_new(rt, 0);
    if (!l) return ct_oom(rt, at);
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0;
    int64_t done = 0;
    if (!sep) {
        for (;;) {
            while (i < n) { /* skip whitespace */
                size_t k = i;
                if (!py_space(ct_utf8_next(p, n, &k))) break;
                i = k;
            }
            if (i >= n) break;
            size_t st = i;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = n;
                while (e > st) { /* the remainder, trailing whitespace stripped */
                    size_t q = e - 1;
                    while (q > st && ((unsigned char)p[q] & 0xC0) == 0x80)
                        q--;
                    size_t k = q;
                    if (!py_space(ct_utf8_next(p, n, &k))) break;
                    e = q;
                }
                if (ct_list_push(rt, l, ct_mkstr(p + st, e - st))) return ct_oom(rt, at);
                break;
            }
            while (i < n) {
                size_t k = i;
                if (py_space(ct_utf8_next(p, n, &k))) break;
                i = k;
            }
            if (ct_list_push(rt, l, ct_mkstr(p + st, i - st))) return ct_oom(rt, at);
            done++;
        }
    } else {
        if (sep->u.s.n == 0) return ct_fail(rt, at, RCD_EINVAL, "split: empty separator");
        for (;;) {
            const char *hit = (maxsplit < 0 || done < maxsplit) && i <= n
                                  ? memmem(p + i, n - i, sep->u.s.p, sep->u.s.n)
                                  : NULL;
            size_t e = hit ? (size_t)(hit - p) : n;
            if (ct_list_push(rt, l, ct_mkstr(p + i, e - i))) return ct_oom(rt, at);
            if (!hit) break;
            i = e + sep->u.s.n;
            done++;
        }
    }
    *out = ct_mklist(l);
    return 0;
}

static int starts_ends(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *x,
                       int ends, int *res)
{
    *res = 0;
    if (x->t == CT_LIST) {
        for (size_t i = 0; i < x->u.l->n && !*res; i++) {
            int rc = starts_ends(rt, at, s, &x->u.l->v[i], ends, res);
            if (rc) return rc;
        }
        return 0;
    }
    int rc = ct_need_str(rt, at, x, ends ? "endswith" : "startswith");
    if (rc) return rc;
    if (x->u.s.n <= s->u.s.n)
        *res = memcmp(ends ? s->u.s.p + s->u.s.n - x->u.s.n : s->u.s.p, x->u.s.p, x->u.s.n) == 0;
    return 0;
}

int ct_join(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *seq, const ct_val_t *sep,
            const ct_val_t *attr, ct_val_t *out)
{
    ct_list_t *l;
    int rc = ct_iterate(rt, at, seq, &l);
    if (rc) return rc;
    ct_buf_t b = {0};
    for (size_t i = 0; rc == 0 && i < l->n; i++) {
        if (i && sep) rc = ct_to_str(rt, &b, sep);
        const ct_val_t *v = &l->v[i];
        if (rc == 0 && attr && attr->t == CT_STR) {
            ct_val_t *a = v->t == CT_DICT ? ct_dict_get(v->u.d, attr->u.s.p, attr->u.s.n) : NULL;
            ct_val_t u = ct_mkundef();
            rc = ct_to_str(rt, &b, a ? a : &u);
        } else if (rc == 0) {
            rc = ct_to_str(rt, &b, v);
        }
    }
    if (rc == 0 && ct_mkstr_copy(rt, b.p ? b.p : "", b.n, out)) rc = ct_oom(rt, at);
    free(b.p);
    return rc;
}

int64_t ct_str_len(const ct_val_t *s)
{
    int64_t k = 0;
    for (size_t i = 0; i < s->u.s.n; i++)
        k += ((unsigned char)s->u.s.p[i] & 0xC0) != 0x80;
    return k;
}

int ct_length(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, int64_t *n)
{
    switch (v->t) {
    case CT_STR:
        *n = ct_str_len(v);
        return 0;
    case CT_LIST:
        *n = (int64_t)v->u.l->n;
        return 0;
    case CT_DICT:
        *n = (int64_t)v->u.d->n;
        return 0;
    case CT_UNDEF:
        *n = 0;
        return 0;
    default:
        return ct_fail(rt, at, RCD_EINVAL, "object of type '%s' has no len()", ct_type_name(v));
    }
}

/* jinja2's attribute getter for selectattr/map/join: dotted paths, dict keys. */
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
        if (rc == 0) rc = ct_recase(rt, at, &s, EQ(t, "lower") ? 'l' : 'u', &r);
        if (rc) return rc;
        *out = ct_equal(&s, &r);
    } else if (EQ(t, "odd") || EQ(t, "even") || EQ(t, "divisibleby")) {
        if (v->t != CT_INT && v->t != CT_BOOL)
            return ct_fail(rt, at, RCD_EINVAL, "test '%.*s' needs an integer", (int)t.n, t.p);
        int64_t d = EQ(t, "divisibleby") ? (a && (a->t == CT_INT) ? a->u.i : 0) : 2;
        if (d == 0) return ct_fail(rt, at, RCD_EINVAL, "divisibleby: needs a non-zero integer");
        int64_t r = v->u.i % d;
        *out = EQ(t, "odd") ? r != 0 : r == 0;
    } else if (EQ(t, "sameas")) {
        *out = a && ct_equal(v, a) && v->t == a->t;
    } else {
        if (!a) return ct_fail(rt, at, RCD_EINVAL, "test '%.*s' needs an argument", (int)t.n, t.p);
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
        if (nargs < 1) return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a prefix", (int)m.n, m.p);
        rc = starts_ends(rt, at, s, &args[0], EQ(m, "endswith"), &r);
        *out = ct_mkbool(r);
        return rc ? rc : 1;
    }
    if (EQ(m, "strip") || EQ(m, "lstrip") || EQ(m, "rstrip")) {
        const ct_val_t *ch = ct_arg(args, kw, nargs, 0, "chars");
        if (ch && ch->t != CT_STR && ch->t != CT_NONE) return ct_need_str(rt, at, ch, "strip");
        *out = ct_strip(s, ch && ch->t == CT_STR ? ch : NULL, !EQ(m, "rstrip"), !EQ(m, "lstrip"));
        return 1;
    }
    if (EQ(m, "split")) {
        const ct_val_t *sep = ct_arg(args, kw, nargs, 0, "sep");
        const ct_val_t *mx = ct_arg(args, kw, nargs, 1, "maxsplit");
        if (sep && sep->t != CT_STR && sep->t != CT_NONE) return ct_need_str(rt, at, sep, "split");
        rc = ct_split(rt, at, s, sep && sep->t == CT_STR ? sep : NULL,
                      mx && mx->t == CT_INT ? mx->u.i : -1, out);
        return rc ? rc : 1;
    }
    if (EQ(m, "replace")) {
        if (nargs < 2 || args[0].t != CT_STR || args[1].t != CT_STR)
            return ct_fail(rt, at, RCD_EINVAL, "replace takes two strings");
        rc = ct_replace(rt, at, s, &args[0], &args[1],
                        nargs > 2 && args[2].t == CT_INT ? args[2].u.i : -1, out);
        return rc ? rc : 1;
    }
    if (EQ(m, "upper") || EQ(m, "lower") || EQ(m, "title") || EQ(m, "capitalize")) {
        rc = ct_recase(rt, at, s,
                       EQ(m, "upper")   ? 'u'
                       : EQ(m, "lower") ? 'l'
                       : EQ(m, "title") ? 't'
                                        : 'c',
                       out);
        return rc ? rc : 1;
    }
    if (EQ(m, "find") || EQ(m, "rfind") || EQ(m, "count")) {
        if (nargs < 1 || args[0].t != CT_STR)
            return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a string", (int)m.n, m.p);
        const ct_val_t *x = &args[0];
        int64_t found = -1, cnt = 0;
        if (x->u.s.n == 0) {
            found = EQ(m, "rfind") ? ct_str_len(s) : 0;
            cnt = ct_str_len(s) + 1;
        } else {
            size_t i = 0;
            while (i + x->u.s.n <= s->u.s.n) {
                const char *h = memmem(s->u.s.p + i, s->u.s.n - i, x->u.s.p, x->u.s.n);
                if (!h) break;
                size_t off = (size_t)(h - s->u.s.p);
                ct_val_t pre = ct_mkstr(s->u.s.p, off);
                if (found < 0 || EQ(m, "rfind")) found = ct_str_len(&pre);
                cnt++;
                i = off + x->u.s.n;
                if (EQ(m, "find")) break;
            }
        }
        *out = ct_mkint(EQ(m, "count") ? cnt : found);
        return 1;
    }
    if (EQ(m, "join")) {
        rc = nargs < 1 ? ct_fail(rt, at, RCD_EINVAL, "join takes an iterable")
                       : ct_join(rt, at, &args[0], s, NULL, out);
        return rc ? rc : 1;
    }
    if (EQ(m, "splitlines")) {
        ct_list_t *l = ct_list_new(rt, 0);
        if (!l) return ct_oom(rt, at);
        size_t i = 0, n = s->u.s.n;
        while (i < n) {
            size_t e = i;
            while (e < n && s->u.s.p[e] != '\n' && s->u.s.p[e] != '\r')
                e++;
            if (ct_list_push(rt, l, ct_mkstr(s->u.s.p + i, e - i))) return ct_oom(rt, at);
            if (e + 1 < n && s->u.s.p[e] == '\r' && s->u.s.p[e + 1] == '\n') e++;
            i = e + 1;
        }
        *out = ct_mklist(l);
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
    if (EQ(m, "isdigit") || EQ(m, "isspace") || EQ(m, "isalpha") || EQ(m, "isupper") ||
        EQ(m, "islower")) {
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
        *out = ct_mkbool(r);
        return 1;
    }
    return 0;
}

int ct_method(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, ct_str_t m, ct_val_t *args,
              ct_str_t *kw, size_t nargs, ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    if (obj->t == CT_STR) return str_method(rt, at, obj, m, args, kw, nargs, out);
    if (obj->t == CT_DICT && !obj->u.d->ns) {
        const ct_dict_t *d = obj->u.d;
        if (EQ(m, "items") || EQ(m, "keys") || EQ(m, "values")) {
            ct_list_t *l = ct_list_new(rt, d->n);
            if (!l) return ct_oom(rt, at);
            for (size_t i = 0; i < d->n; i++) {
                ct_val_t k = ct_mkstr(d->k[i].p, d->k[i].n);
                if (EQ(m, "keys")) {
                    l->v[l->n++] = k;
                } else if (EQ(m, "values")) {
                    l->v[l->n++] = d->v[i];
                } else {
                    ct_list_t *p = ct_list_new(rt, 2);
                    if (!p) return ct_oom(rt, at);
                    p->v[0] = k;
                    p->v[1] = d->v[i];
                    p->n = 2;
                    p->tuple = 1;
                    l->v[l->n++] = ct_mklist(p);
                }
            }
            *out = ct_mklist(l);
            return 1;
        }
        if (EQ(m, "get")) {
            const ct_val_t *k = ct_arg(args, kw, nargs, 0, "key");
            const ct_val_t *dv = ct_arg(args, kw, nargs, 1, "default");
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
        static const char *const mut[] = {"append",  "extend",     "pop",     "insert",
                                          "remove",  "clear",      "update",  "sort",
                                          "reverse", "setdefault", "popitem", NULL};
        for (size_t i = 0; mut[i]; i++)
            if (m.n == strlen(mut[i]) && memcmp(m.p, mut[i], m.n) == 0)
                return ct_fail(rt, at, RCD_EINVAL,
                               "access to %s.%.*s is unsafe (the sandbox makes values immutable)",
                               ct_type_name(obj), (int)m.n, m.p);
        if (obj->t == CT_LIST && (EQ(m, "index") || EQ(m, "count"))) {
            if (nargs < 1) return ct_fail(rt, at, RCD_EINVAL, "%.*s takes a value", (int)m.n, m.p);
            int64_t idx = -1, cnt = 0;
            for (size_t i = 0; i < obj->u.l->n; i++)
                if (ct_equal(&obj->u.l->v[i], &args[0])) {
                    if (idx < 0) idx = (int64_t)i;
                    cnt++;
                }
            if (EQ(m, "index") && idx < 0)
                return ct_fail(rt, at, RCD_EINVAL, "list.index(x): x not in list");
            *out = ct_mkint(EQ(m, "index") ? idx : cnt);
            return 1;
        }
    }
    return 0;
}

int ct_global_func(const char *name, size_t n)
{
    ct_str_t s = {name, n};
    if (EQ(s, "raise_exception")) return CT_FN_RAISE;
    if (EQ(s, "range")) return CT_FN_RANGE;
    if (EQ(s, "namespace")) return CT_FN_NAMESPACE;
    if (EQ(s, "dict")) return CT_FN_DICT;
    if (EQ(s, "strftime_now")) return CT_FN_STRFTIME;
    return -1;
}

int ct_call_func(ct_rt_t *rt, const ct_node_t *at, int fn, ct_val_t *args, ct_str_t *kw,
                 size_t nargs, ct_val_t *out)
{
    memset(out, 0, sizeof(*out));
    switch (fn) {
    case CT_FN_RAISE: {
        ct_val_t s = ct_mkstr("", 0);
        if (nargs && ct_str_val(rt, &args[0], &s)) return rt->rc;
        if (rt->rc) return rt->rc;
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
        if (st == 0) return ct_fail(rt, at, RCD_EINVAL, "range() arg 3 must not be zero");
        double cnt =
            st > 0 ? ((double)b - (double)a) / (double)st : ((double)a - (double)b) / (double)-st;
        if (cnt > (double)(rt->max_steps - rt->steps))
            return ct_fail(rt, at, RCD_ERANGE, "range() longer than the step budget");
        ct_list_t *l = ct_list_new(rt, cnt > 0 ? (size_t)ceil(cnt) : 0);
        if (!l) return ct_oom(rt, at);
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
            l->v[l->n++] = ct_mkint(i);
            if (l->n == l->cap) break;
        }
        rt->steps += l->n;
        *out = ct_mklist(l);
        return 0;
    }
    case CT_FN_NAMESPACE:
    case CT_FN_DICT: {
        ct_dict_t *d = ct_dict_new(rt, nargs);
        if (!d) return ct_oom(rt, at);
        d->ns = fn == CT_FN_NAMESPACE;
        for (size_t i = 0; i < nargs; i++) {
            if (kw && kw[i].p) {
                if (d->ns && kw[i].n && kw[i].p[0] == '_')
                    return ct_fail(rt, at, RCD_EINVAL,
                                   "namespace attributes may not start with '_'");
                if (ct_dict_set(rt, d, kw[i].p, kw[i].n, args[i])) return ct_oom(rt, at);
            } else if (args[i].t == CT_DICT && i == 0) {
                for (size_t j = 0; j < args[i].u.d->n; j++)
                    if (ct_dict_set(rt, d, args[i].u.d->k[j].p, args[i].u.d->k[j].n,
                                    args[i].u.d->v[j]))
                        return ct_oom(rt, at);
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
        if (!localtime_r(&now, &tm)) return ct_fail(rt, at, RCD_EINVAL, "strftime_now: bad clock");
        size_t k = fmt[0] ? strftime(buf, sizeof(buf), fmt, &tm) : 0;
        if (ct_mkstr_copy(rt, buf, k, out)) return ct_oom(rt, at);
        return 0;
    }
    }
    return ct_fail(rt, at, RCD_EINTERNAL, "unknown function");
}
