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

/* Evaluates call arguments into arena arrays. */
static int eval_args(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n, ct_val_t **args)
{
    *args = ct_alloc(&rt->arena, (n->nkids ? n->nkids : 1) * sizeof(**args));
    if (!*args) return ct_oom(rt, n);
    for (size_t i = 0; i < n->nkids; i++) {
        int rc = eval(rt, f, n->kids[i], &(*args)[i]);
        if (rc) return rc;
    }
    return 0;
}

static int capture(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *body, ct_val_t *out)
{
    if (!f) return ct_oom(rt, body); /* a block set's own scope could not be made */
    ct_buf_t saved = rt->out;
    memset(&rt->out, 0, sizeof(rt->out));
    int rc = exec(rt, f, body);
    if (rc == 0) rc = ct_mkstr_copy(rt, rt->out.p ? rt->out.p : "", rt->out.n, out);
    free(rt->out.p);
    rt->out = saved;
    if (rc && !rt->rc) rc = ct_oom(rt, body);
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
    if (!f) return ct_oom(rt, at);
    size_t np = m->nnames;
    char *set = ct_alloc(&rt->arena, np + 1);
    if (!set) return ct_oom(rt, at);
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
        if (frame_set(rt, f, m->names[j], args[i])) return ct_oom(rt, at);
    }
    for (size_t j = 0; j < np; j++) {
        if (set[j]) continue;
        ct_val_t v;
        if (m->kids[j]) {
            rc = eval(rt, f, m->kids[j], &v);
            if (rc) return rc;
        } else if (ct_undef(rt, &v, "'%.*s' is undefined", (int)m->names[j].n, m->names[j].p)) {
            return ct_oom(rt, at);
        }
        if (frame_set(rt, f, m->names[j], v)) return ct_oom(rt, at);
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
        return ct_fail_undef(rt, at, fn);
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
        return ct_undef(rt, out, "'%.*s' is undefined", (int)n->name.n, n->name.p) ? ct_oom(rt, n)
                                                                                   : 0;
    }
    case N_LIST:
    case N_TUPLE: {
        ct_list_t *l = ct_list_new(rt, n->nkids);
        if (!l) return ct_oom(rt, n);
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
        if (!d) return ct_oom(rt, n);
        for (size_t i = 0; i + 1 < n->nkids; i += 2) {
            rc = eval(rt, f, n->kids[i], &a);
            if (rc == 0) rc = eval(rt, f, n->kids[i + 1], &b);
            if (rc) return rc;
            if (a.t != CT_STR)
                return ct_fail(rt, n->kids[i], RCD_EUNSUPPORTED,
                               "dict keys other than strings (%s)", ct_type_name(&a));
            if (ct_dict_set(rt, d, a.u.s.p, a.u.s.n, b)) return ct_oom(rt, n);
        }
        out->t = CT_DICT;
        out->u.d = d;
        return 0;
    }
    case N_ATTR:
        rc = eval(rt, f, n->a, &a);
        return rc ? rc : ct_attr_of(rt, n, &a, n->name.p, n->name.n, out);
    case N_INDEX:
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval(rt, f, n->b, &b);
        return rc ? rc : ct_index_of(rt, n, &a, &b, out);
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
            return ct_undef(rt, out, "'%s object' has no element", ct_type_name(&a)) ? ct_oom(rt, n)
                                                                                     : 0;
        return rc ? rc : ct_slice_of(rt, n, &a, part, out);
    }
    case N_CALL: {
        ct_val_t *args;
        if (n->a->kind == N_ATTR) {
            rc = eval(rt, f, n->a->a, &a);
            if (rc == 0) rc = eval_args(rt, f, n, &args);
            if (rc) return rc;
            rc = ct_method(rt, n, &a, n->a->name, args, n->kw, n->nkids, out);
            if (rc != 0) return rc < 0 ? rc : 0;
            rc = ct_attr_of(rt, n->a, &a, n->a->name.p, n->a->name.n, &b);
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
        if (a.t == CT_UNDEF) return ct_fail_undef(rt, n, &a);
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
            return rc ? (rt->rc ? rt->rc : ct_oom(rt, n)) : 0;
        }
        return ct_arith(rt, n, n->op, &a, &b, out);
    case N_CMP: {
        int r = 0;
        rc = eval(rt, f, n->a, &a);
        if (rc == 0) rc = eval(rt, f, n->b, &b);
        if (rc == 0) rc = ct_compare(rt, n, n->op, &a, &b, &r);
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
        return ct_undef(rt, out,
                        "the inline if-expression evaluated to false and no else section "
                        "was defined.")
                   ? ct_oom(rt, n)
                   : 0;
    default:
        return ct_fail(rt, n, RCD_EINTERNAL, "not an expression");
    }
}

static int assign(ct_rt_t *rt, ct_frame_t *f, const ct_node_t *n, const ct_val_t *v)
{
    if (n->nnames == 1) return frame_set(rt, f, n->names[0], *v) ? ct_oom(rt, n) : 0;
    ct_list_t *items;
    int rc = ct_iterate(rt, n, v, &items);
    if (rc) return rc;
    if (items->n != n->nnames)
        return ct_fail(rt, n, RCD_EINVAL, "cannot unpack %zu values into %zu names", items->n,
                       n->nnames);
    for (size_t i = 0; i < n->nnames; i++)
        if (frame_set(rt, f, n->names[i], items->v[i])) return ct_oom(rt, n);
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
    if (!lf || !loop) return ct_oom(rt, n);
    if (n->b) { /* `for x in y if cond`: filter first, so loop.length counts what remains */
        ct_list_t *kept = ct_list_new(rt, items->n);
        if (!kept) return ct_oom(rt, n);
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
        if (!lf) return ct_oom(rt, n);
    }
    loop->items = items;
    loop->length = (int64_t)items->n;
    ct_val_t lv = {.t = CT_LOOP};
    lv.u.loop = loop;
    for (size_t i = 0; i < items->n; i++) {
        loop->index0 = (int64_t)i;
        rc = step(rt, n);
        if (rc == 0 && i > 0 && !(lf = frame_new(rt, f))) /* jinja2: each iteration's own */
            rc = ct_oom(rt, n);
        if (rc == 0) rc = assign(rt, lf, n, &items->v[i]);
        if (rc == 0) rc = frame_set(rt, lf, (ct_str_t){"loop", 4}, lv) ? ct_oom(rt, n) : 0;
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
        return ct_buf_put(rt, &rt->out, n->name.p, n->name.n) ? (rt->rc ? rt->rc : ct_oom(rt, n))
                                                              : 0;
    case S_OUT:
        rc = eval(rt, f, n->a, &v);
        if (rc == 0 && ct_to_str(rt, &rt->out, &v)) rc = rt->rc ? rt->rc : ct_oom(rt, n);
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
            return ct_dict_set(rt, obj->u.d, n->name2.p, n->name2.n, v) ? ct_oom(rt, n) : 0;
        }
        return assign(rt, f, n, &v);
    case S_MACRO:
        v.t = CT_MACRO;
        v.u.m = ct_alloc(&rt->arena, sizeof(*v.u.m));
        if (!v.u.m) return ct_oom(rt, n);
        v.u.m->node = n;
        v.u.m->scope = f;
        return frame_set(rt, f, n->name, v) ? ct_oom(rt, n) : 0;
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
    if (!rt.globals) rc = ct_oom(&rt, NULL);
    for (const cJSON *c = ctx ? ctx->child : NULL; rc == 0 && c; c = c->next) {
        ct_val_t v;
        if (!c->string) continue;
        rc = ct_from_json(&rt, c, &v);
        if (rc == 0 && frame_set(&rt, rt.globals, (ct_str_t){c->string, strlen(c->string)}, v))
            rc = RCD_ENOMEM;
        if (rc && !rt.rc) rc = ct_oom(&rt, NULL);
    }
    /* What apply_chat_template always passes: tools and documents (None when absent) and
     * add_generation_prompt (False), so `tools is not none` reads as it does there. */
    static const char *const always[] = {"tools", "documents", "add_generation_prompt"};
    for (size_t i = 0; rc == 0 && i < sizeof(always) / sizeof(always[0]); i++) {
        ct_val_t v = {.t = i == 2 ? CT_BOOL : CT_NONE};
        ct_str_t k = {always[i], strlen(always[i])};
        if (!frame_get(rt.globals, k.p, k.n) && frame_set(&rt, rt.globals, k, v))
            rc = ct_oom(&rt, NULL);
    }
    ct_frame_t *top = rc ? NULL : frame_new(&rt, rt.globals);
    if (rc == 0 && !top) rc = ct_oom(&rt, NULL);
    rt.top = top;
    if (rc == 0) rc = exec(&rt, top, t->root);
    if (rc == 0 && ct_buf_put(&rt, &rt.out, "", 0) == 0 && rt.out.p) {
        rt.out.p[rt.out.n] = 0; /* ct_buf_put keeps one spare byte */
    } else if (rc == 0 && !rt.out.p) {
        rt.out.p = calloc(1, 1);
        if (!rt.out.p) rc = ct_oom(&rt, NULL);
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
