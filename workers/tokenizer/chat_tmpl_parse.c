/* Chat templates: a recursive-descent parser of the supported statements and expressions (over
 * chat_tmpl_lex.c's tokens) into ct_node_t. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

#define CT_MAX_NEST 200

static ct_tok_t *cur(ct_lexer_t *lx)
{
    return &lx->v[lx->p];
}

static int perr(ct_lexer_t *lx, const ct_tok_t *t, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int perr(ct_lexer_t *lx, const ct_tok_t *t, int rc, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return rcd_fail(rc, lx->err, lx->errlen, "chat template line %d:%d: %s", t->line, t->col, msg);
}

static int is_op(const ct_tok_t *t, const char *op)
{
    return t->type == CTK_OP && t->n == strlen(op) && memcmp(t->p, op, t->n) == 0;
}

static int is_name(const ct_tok_t *t, const char *nm)
{
    return t->type == CTK_NAME && t->n == strlen(nm) && memcmp(t->p, nm, t->n) == 0;
}

static int expect_op(ct_lexer_t *lx, const char *op)
{
    if (!is_op(cur(lx), op)) return perr(lx, cur(lx), RCD_EINVAL, "expected '%s'", op);
    lx->p++;
    return 0;
}

static ct_node_t *mk(ct_lexer_t *lx, int kind, const ct_tok_t *at)
{
    ct_node_t *n = ct_alloc(&lx->t->arena, sizeof(*n));
    if (n) {
        n->kind = kind;
        n->line = at->line;
        n->col = at->col;
    }
    return n;
}

/* Growable child list while parsing. */
typedef struct kidv {
    ct_node_t **v;
    ct_str_t *kw;
    size_t n, cap;
} kidv_t;

static int kid_push(ct_lexer_t *lx, kidv_t *k, ct_node_t *n, ct_str_t kw)
{
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 4;
        ct_node_t **v = ct_alloc(&lx->t->arena, cap * sizeof(*v));
        ct_str_t *w = ct_alloc(&lx->t->arena, cap * sizeof(*w));
        if (!v || !w) return RCD_ENOMEM;
        if (k->n) {
            memcpy(v, k->v, k->n * sizeof(*v));
            memcpy(w, k->kw, k->n * sizeof(*w));
        }
        k->v = v;
        k->kw = w;
        k->cap = cap;
    }
    k->v[k->n] = n;
    k->kw[k->n] = kw;
    k->n++;
    return 0;
}

static void kid_set(ct_node_t *n, kidv_t *k)
{
    n->kids = k->v;
    n->kw = k->kw;
    n->nkids = k->n;
}

static int parse_expr(ct_lexer_t *lx, ct_node_t **out, int with_cond);
static int parse_unary(ct_lexer_t *lx, ct_node_t **out, int with_filter);

static int nest_in(ct_lexer_t *lx)
{
    if (++lx->nest > CT_MAX_NEST)
        return perr(lx, cur(lx), RCD_ERANGE, "nesting deeper than %d", CT_MAX_NEST);
    return 0;
}

/* `(args)` of a call, filter or test; the '(' is current. */
static int parse_args(ct_lexer_t *lx, ct_node_t *n)
{
    kidv_t k = {0};
    int rc = expect_op(lx, "(");
    while (rc == 0 && !is_op(cur(lx), ")")) {
        ct_str_t kw = {0};
        if (cur(lx)->type == CTK_NAME && is_op(&lx->v[lx->p + 1], "=")) {
            kw.p = cur(lx)->p;
            kw.n = cur(lx)->n;
            lx->p += 2;
        } else if (is_op(cur(lx), "*") || is_op(cur(lx), "**")) {
            return perr(lx, cur(lx), RCD_EUNSUPPORTED, "*args/**kwargs in calls");
        }
        ct_node_t *a;
        rc = parse_expr(lx, &a, 1);
        if (rc == 0) rc = kid_push(lx, &k, a, kw);
        if (rc == 0 && !is_op(cur(lx), ")")) rc = expect_op(lx, ",");
    }
    if (rc == 0) rc = expect_op(lx, ")");
    kid_set(n, &k);
    return rc;
}

static int parse_primary(ct_lexer_t *lx, ct_node_t **out)
{
    ct_tok_t *t = cur(lx);
    ct_node_t *n = NULL;
    int rc = 0;
    if (t->type == CTK_NAME) {
        n = mk(lx, N_LIT, t);
        if (!n) return RCD_ENOMEM;
        lx->p++;
        if (is_name(t, "true") || is_name(t, "True")) {
            n->lit.t = CT_BOOL;
            n->lit.u.i = 1;
        } else if (is_name(t, "false") || is_name(t, "False")) {
            n->lit.t = CT_BOOL;
        } else if (is_name(t, "none") || is_name(t, "None")) {
            n->lit.t = CT_NONE;
        } else {
            n->kind = N_NAME;
            n->name.p = t->p;
            n->name.n = t->n;
        }
    } else if (t->type == CTK_STR) {
        n = mk(lx, N_LIT, t);
        if (!n) return RCD_ENOMEM;
        size_t total = 0;
        size_t q = lx->p;
        while (lx->v[q].type == CTK_STR)
            total += lx->v[q++].n;
        char *s = ct_alloc(&lx->t->arena, total + 1);
        if (!s) return RCD_ENOMEM;
        size_t k = 0;
        while (cur(lx)->type == CTK_STR) { /* adjacent literals concatenate */
            memcpy(s + k, cur(lx)->p, cur(lx)->n);
            k += cur(lx)->n;
            lx->p++;
        }
        n->lit = ct_mkstr(s, k);
    } else if (t->type == CTK_INT || t->type == CTK_FLOAT) {
        n = mk(lx, N_LIT, t);
        if (!n) return RCD_ENOMEM;
        n->lit.t = t->type == CTK_INT ? CT_INT : CT_FLOAT;
        if (t->type == CTK_INT)
            n->lit.u.i = t->i;
        else
            n->lit.u.f = t->f;
        lx->p++;
    } else if (is_op(t, "(")) {
        lx->p++;
        kidv_t k = {0};
        int tuple = 0;
        while (rc == 0 && !is_op(cur(lx), ")")) {
            ct_node_t *a;
            rc = parse_expr(lx, &a, 1);
            if (rc == 0) rc = kid_push(lx, &k, a, (ct_str_t){0});
            if (rc == 0 && !is_op(cur(lx), ")")) {
                rc = expect_op(lx, ",");
                tuple = 1;
            }
        }
        if (rc == 0) rc = expect_op(lx, ")");
        if (rc) return rc;
        if (k.n == 1 && !tuple) {
            n = k.v[0];
        } else {
            n = mk(lx, N_TUPLE, t);
            if (!n) return RCD_ENOMEM;
            kid_set(n, &k);
        }
    } else if (is_op(t, "[") || is_op(t, "{")) {
        int dict = is_op(t, "{");
        lx->p++;
        n = mk(lx, dict ? N_DICT : N_LIST, t);
        if (!n) return RCD_ENOMEM;
        kidv_t k = {0};
        const char *close = dict ? "}" : "]";
        while (rc == 0 && !is_op(cur(lx), close)) {
            ct_node_t *a;
            rc = parse_expr(lx, &a, 1);
            if (rc == 0) rc = kid_push(lx, &k, a, (ct_str_t){0});
            if (rc == 0 && dict) {
                rc = expect_op(lx, ":");
                if (rc == 0) rc = parse_expr(lx, &a, 1);
                if (rc == 0) rc = kid_push(lx, &k, a, (ct_str_t){0});
            }
            if (rc == 0 && !is_op(cur(lx), close)) rc = expect_op(lx, ",");
        }
        if (rc == 0) rc = expect_op(lx, close);
        kid_set(n, &k);
    } else if (t->type == CTK_EOF || t->type == CTK_VAR_END || t->type == CTK_BLOCK_END) {
        return perr(lx, t, RCD_EINVAL, "unexpected end of expression");
    } else {
        return perr(lx, t, RCD_EINVAL, "unexpected '%.*s'", (int)t->n, t->p);
    }
    *out = n;
    return rc;
}

static int parse_postfix(ct_lexer_t *lx, ct_node_t **node)
{
    for (;;) {
        ct_tok_t *t = cur(lx);
        ct_node_t *n;
        if (is_op(t, ".")) {
            lx->p++;
            ct_tok_t *nm = cur(lx);
            if (nm->type == CTK_INT) {
                n = mk(lx, N_INDEX, t);
                if (!n) return RCD_ENOMEM;
                n->b = mk(lx, N_LIT, nm);
                if (!n->b) return RCD_ENOMEM;
                n->b->lit.t = CT_INT;
                n->b->lit.u.i = nm->i;
            } else if (nm->type == CTK_NAME) {
                n = mk(lx, N_ATTR, t);
                if (!n) return RCD_ENOMEM;
                n->name.p = nm->p;
                n->name.n = nm->n;
            } else {
                return perr(lx, nm, RCD_EINVAL, "expected an attribute name after '.'");
            }
            lx->p++;
            n->a = *node;
            *node = n;
        } else if (is_op(t, "[")) {
            lx->p++;
            ct_node_t *part[3] = {NULL, NULL, NULL};
            int colons = 0, rc = 0;
            for (;;) {
                if (is_op(cur(lx), ":")) {
                    if (++colons > 2)
                        return perr(lx, cur(lx), RCD_EINVAL, "too many ':' in a slice");
                    lx->p++;
                    continue;
                }
                if (is_op(cur(lx), "]")) break;
                if (part[colons]) return perr(lx, cur(lx), RCD_EINVAL, "expected ']'");
                rc = parse_expr(lx, &part[colons], 1);
                if (rc) return rc;
            }
            lx->p++;
            if (colons == 0 && !part[0]) return perr(lx, t, RCD_EINVAL, "empty subscript");
            n = mk(lx, colons ? N_SLICE : N_INDEX, t);
            if (!n) return RCD_ENOMEM;
            n->a = *node;
            if (colons) {
                n->kids = ct_alloc(&lx->t->arena, 3 * sizeof(*n->kids));
                if (!n->kids) return RCD_ENOMEM;
                memcpy(n->kids, part, sizeof(part));
                n->nkids = 3;
            } else {
                n->b = part[0];
            }
            *node = n;
        } else if (is_op(t, "(")) {
            n = mk(lx, N_CALL, t);
            if (!n) return RCD_ENOMEM;
            n->a = *node;
            int rc = parse_args(lx, n);
            if (rc) return rc;
            *node = n;
        } else {
            return 0;
        }
    }
}

static int parse_filters(ct_lexer_t *lx, ct_node_t **node)
{
    for (;;) {
        ct_tok_t *t = cur(lx);
        if (is_op(t, "|")) {
            lx->p++;
            ct_tok_t *nm = cur(lx);
            if (nm->type != CTK_NAME)
                return perr(lx, nm, RCD_EINVAL, "expected a filter name after '|'");
            ct_node_t *n = mk(lx, N_FILTER, nm);
            if (!n) return RCD_ENOMEM;
            n->name.p = nm->p;
            n->name.n = nm->n;
            if (!ct_filter_known(nm->p, nm->n))
                return perr(lx, nm, RCD_EUNSUPPORTED,
                            "no filter named '%.*s' in the supported subset", (int)nm->n, nm->p);
            lx->p++;
            /* dotted filter names are not used by chat templates */
            if (is_op(cur(lx), "(")) {
                int rc = parse_args(lx, n);
                if (rc) return rc;
            }
            n->a = *node;
            *node = n;
        } else if (is_name(t, "is")) {
            lx->p++;
            ct_node_t *n = mk(lx, N_TEST, t);
            if (!n) return RCD_ENOMEM;
            if (is_name(cur(lx), "not")) {
                n->neg = 1;
                lx->p++;
            }
            ct_tok_t *nm = cur(lx);
            if (nm->type != CTK_NAME)
                return perr(lx, nm, RCD_EINVAL, "expected a test name after 'is'");
            n->name.p = nm->p;
            n->name.n = nm->n;
            if (!ct_test_known(nm->p, nm->n))
                return perr(lx, nm, RCD_EUNSUPPORTED,
                            "no test named '%.*s' in the supported subset", (int)nm->n, nm->p);
            lx->p++;
            n->a = *node;
            if (is_op(cur(lx), "(")) {
                int rc = parse_args(lx, n);
                if (rc) return rc;
            } else {
                /* a single bare argument: `is divisibleby 3`, `is sameas false` */
                ct_tok_t *x = cur(lx);
                if ((x->type == CTK_NAME && !is_name(x, "else") && !is_name(x, "and") &&
                     !is_name(x, "or") && !is_name(x, "if") && !is_name(x, "in") &&
                     !is_name(x, "is") && !is_name(x, "not")) ||
                    x->type == CTK_STR || x->type == CTK_INT || x->type == CTK_FLOAT ||
                    (x->type == CTK_OP && (is_op(x, "[") || is_op(x, "{")))) {
                    ct_node_t *arg;
                    int rc = parse_primary(lx, &arg);
                    if (rc == 0) rc = parse_postfix(lx, &arg);
                    if (rc) return rc;
                    n->kids = ct_alloc(&lx->t->arena, sizeof(*n->kids));
                    n->kw = ct_alloc(&lx->t->arena, sizeof(*n->kw));
                    if (!n->kids || !n->kw) return RCD_ENOMEM;
                    n->kids[0] = arg;
                    n->nkids = 1;
                }
            }
            *node = n;
        } else if (is_op(t, "(")) {
            ct_node_t *n = mk(lx, N_CALL, t);
            if (!n) return RCD_ENOMEM;
            n->a = *node;
            int rc = parse_args(lx, n);
            if (rc) return rc;
            *node = n;
        } else {
            return 0;
        }
    }
}

static int parse_unary(ct_lexer_t *lx, ct_node_t **out, int with_filter)
{
    int rc = nest_in(lx);
    if (rc) return rc;
    ct_tok_t *t = cur(lx);
    if (is_op(t, "-") || is_op(t, "+")) {
        lx->p++;
        ct_node_t *n = mk(lx, N_UNARY, t);
        if (!n) return RCD_ENOMEM;
        n->op = t->p[0];
        rc = parse_unary(lx, &n->a, 0);
        *out = n;
    } else {
        rc = parse_primary(lx, out);
    }
    if (rc == 0) rc = parse_postfix(lx, out);
    if (rc == 0 && with_filter) rc = parse_filters(lx, out);
    lx->nest--;
    return rc;
}

static int bin(ct_lexer_t *lx, int kind, int op, ct_tok_t *at, ct_node_t **l, ct_node_t *r)
{
    ct_node_t *n = mk(lx, kind, at);
    if (!n) return RCD_ENOMEM;
    n->op = op;
    n->a = *l;
    n->b = r;
    *l = n;
    return 0;
}

static int parse_pow(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_unary(lx, out, 1);
    while (rc == 0 && is_op(cur(lx), "**")) {
        ct_tok_t *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_unary(lx, &r, 1);
        if (rc == 0) rc = bin(lx, N_BIN, 'P', t, out, r);
    }
    return rc;
}

static int parse_math2(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_pow(lx, out);
    for (;;) {
        ct_tok_t *t = cur(lx);
        int op = is_op(t, "*")    ? '*'
                 : is_op(t, "/")  ? '/'
                 : is_op(t, "//") ? 'F'
                 : is_op(t, "%")  ? '%'
                                  : 0;
        if (rc || !op) return rc;
        lx->p++;
        ct_node_t *r;
        rc = parse_pow(lx, &r);
        if (rc == 0) rc = bin(lx, N_BIN, op, t, out, r);
    }
}

static int parse_concat(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_math2(lx, out);
    while (rc == 0 && is_op(cur(lx), "~")) {
        ct_tok_t *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_math2(lx, &r);
        if (rc == 0) rc = bin(lx, N_BIN, '~', t, out, r);
    }
    return rc;
}

static int parse_math1(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_concat(lx, out);
    for (;;) {
        ct_tok_t *t = cur(lx);
        int op = is_op(t, "+") ? '+' : is_op(t, "-") ? '-' : 0;
        if (rc || !op) return rc;
        lx->p++;
        ct_node_t *r;
        rc = parse_concat(lx, &r);
        if (rc == 0) rc = bin(lx, N_BIN, op, t, out, r);
    }
}

static int parse_compare(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_math1(lx, out);
    for (;;) {
        ct_tok_t *t = cur(lx);
        int op = 0;
        if (is_op(t, "=="))
            op = 'E';
        else if (is_op(t, "!="))
            op = 'N';
        else if (is_op(t, "<"))
            op = '<';
        else if (is_op(t, ">"))
            op = '>';
        else if (is_op(t, "<="))
            op = 'L';
        else if (is_op(t, ">="))
            op = 'G';
        else if (is_name(t, "in"))
            op = 'i';
        else if (is_name(t, "not") && is_name(&lx->v[lx->p + 1], "in"))
            op = 'I';
        if (rc || !op) return rc;
        lx->p += op == 'I' ? 2 : 1;
        ct_node_t *r;
        rc = parse_math1(lx, &r);
        if (rc == 0) rc = bin(lx, N_CMP, op, t, out, r);
    }
}

static int parse_not(ct_lexer_t *lx, ct_node_t **out)
{
    ct_tok_t *t = cur(lx);
    if (is_name(t, "not")) {
        int rc = nest_in(lx);
        if (rc) return rc;
        lx->p++;
        ct_node_t *n = mk(lx, N_UNARY, t);
        if (!n) return RCD_ENOMEM;
        n->op = 'n';
        rc = parse_not(lx, &n->a);
        *out = n;
        lx->nest--;
        return rc;
    }
    return parse_compare(lx, out);
}

static int parse_and(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_not(lx, out);
    while (rc == 0 && is_name(cur(lx), "and")) {
        ct_tok_t *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_not(lx, &r);
        if (rc == 0) rc = bin(lx, N_AND, 0, t, out, r);
    }
    return rc;
}

static int parse_or(ct_lexer_t *lx, ct_node_t **out)
{
    int rc = parse_and(lx, out);
    while (rc == 0 && is_name(cur(lx), "or")) {
        ct_tok_t *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_and(lx, &r);
        if (rc == 0) rc = bin(lx, N_OR, 0, t, out, r);
    }
    return rc;
}

static int parse_expr(ct_lexer_t *lx, ct_node_t **out, int with_cond)
{
    int rc = nest_in(lx);
    if (rc == 0) rc = parse_or(lx, out);
    while (rc == 0 && with_cond && is_name(cur(lx), "if")) {
        ct_tok_t *t = cur(lx);
        lx->p++;
        ct_node_t *n = mk(lx, N_COND, t);
        if (!n) return RCD_ENOMEM;
        n->b = *out;
        rc = parse_or(lx, &n->a);
        if (rc == 0 && is_name(cur(lx), "else")) {
            lx->p++;
            rc = parse_expr(lx, &n->c, 1);
        }
        *out = n;
    }
    lx->nest--;
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* statements */

static int parse_body(ct_lexer_t *lx, const char *const *stops, ct_node_t **out,
                      ct_tok_t **stop_tok);

static int expect_block_end(ct_lexer_t *lx)
{
    if (cur(lx)->type != CTK_BLOCK_END)
        return perr(lx, cur(lx), RCD_EINVAL, "expected '%%}', found '%.*s'", (int)cur(lx)->n,
                    cur(lx)->p);
    lx->p++;
    return 0;
}

/* After parse_body stopped at a keyword: consumes it (and checks `%}` when bare). */
static int end_tag(ct_lexer_t *lx, int bare)
{
    lx->p++;
    return bare ? expect_block_end(lx) : 0;
}

static int parse_if(ct_lexer_t *lx, ct_tok_t *at, ct_node_t **out)
{
    static const char *const stops[] = {"elif", "else", "endif", NULL};
    ct_node_t *n = mk(lx, S_IF, at);
    if (!n) return RCD_ENOMEM;
    kidv_t k = {0};
    for (;;) {
        ct_node_t *cond, *body;
        ct_tok_t *st;
        int rc = parse_expr(lx, &cond, 1);
        if (rc == 0) rc = expect_block_end(lx);
        if (rc == 0) rc = parse_body(lx, stops, &body, &st);
        if (rc == 0) rc = kid_push(lx, &k, cond, (ct_str_t){0});
        if (rc == 0) rc = kid_push(lx, &k, body, (ct_str_t){0});
        if (rc) return rc;
        if (is_name(st, "elif")) {
            lx->p++;
            continue;
        }
        if (is_name(st, "else")) {
            rc = end_tag(lx, 1);
            if (rc == 0) rc = parse_body(lx, stops + 2, &body, &st);
            if (rc == 0) rc = kid_push(lx, &k, body, (ct_str_t){0});
            if (rc) return rc;
        }
        rc = end_tag(lx, 1);
        kid_set(n, &k);
        *out = n;
        return rc;
    }
}

static int parse_targets(ct_lexer_t *lx, ct_node_t *n, int allow_attr)
{
    ct_str_t names[8];
    size_t nn = 0;
    int paren = is_op(cur(lx), "(");
    if (paren) lx->p++;
    for (;;) {
        ct_tok_t *t = cur(lx);
        if (t->type != CTK_NAME) return perr(lx, t, RCD_EINVAL, "expected a variable name");
        if (nn == 8) return perr(lx, t, RCD_EUNSUPPORTED, "more than 8 unpacking targets");
        names[nn].p = t->p;
        names[nn].n = t->n;
        nn++;
        lx->p++;
        if (allow_attr && nn == 1 && is_op(cur(lx), ".")) {
            lx->p++;
            if (cur(lx)->type != CTK_NAME)
                return perr(lx, cur(lx), RCD_EINVAL, "expected an attribute name");
            n->name2.p = cur(lx)->p;
            n->name2.n = cur(lx)->n;
            lx->p++;
            break;
        }
        if (!is_op(cur(lx), ",")) break;
        lx->p++;
    }
    if (paren) {
        int rc = expect_op(lx, ")");
        if (rc) return rc;
    }
    n->names = ct_alloc(&lx->t->arena, nn * sizeof(*n->names));
    if (!n->names) return RCD_ENOMEM;
    memcpy(n->names, names, nn * sizeof(*names));
    n->nnames = nn;
    return 0;
}

static int parse_for(ct_lexer_t *lx, ct_tok_t *at, ct_node_t **out)
{
    static const char *const stops[] = {"else", "endfor", NULL};
    ct_node_t *n = mk(lx, S_FOR, at);
    if (!n) return RCD_ENOMEM;
    int rc = parse_targets(lx, n, 0);
    if (rc) return rc;
    if (!is_name(cur(lx), "in")) return perr(lx, cur(lx), RCD_EINVAL, "expected 'in' in for loop");
    lx->p++;
    rc = parse_expr(lx, &n->a, 0);
    if (rc == 0 && is_op(cur(lx), ",")) /* `for x in a, b` iterates a tuple */
        return perr(lx, cur(lx), RCD_EUNSUPPORTED, "for loop over a bare tuple");
    if (rc == 0 && is_name(cur(lx), "if")) {
        lx->p++;
        rc = parse_expr(lx, &n->b, 0);
    }
    if (rc == 0 && is_name(cur(lx), "recursive"))
        return perr(lx, cur(lx), RCD_EUNSUPPORTED, "recursive for loops");
    if (rc == 0) rc = expect_block_end(lx);
    n->kids = ct_alloc(&lx->t->arena, 2 * sizeof(*n->kids));
    if (!n->kids) return RCD_ENOMEM;
    n->nkids = 2;
    ct_tok_t *st;
    lx->loops++;
    if (rc == 0) rc = parse_body(lx, stops, &n->kids[0], &st);
    lx->loops--;
    if (rc == 0 && is_name(st, "else")) {
        rc = end_tag(lx, 1);
        if (rc == 0) rc = parse_body(lx, stops + 1, &n->kids[1], &st);
    }
    if (rc == 0) rc = end_tag(lx, 1);
    *out = n;
    return rc;
}

static int parse_set(ct_lexer_t *lx, ct_tok_t *at, ct_node_t **out)
{
    static const char *const stops[] = {"endset", NULL};
    ct_node_t *n = mk(lx, S_SET, at);
    if (!n) return RCD_ENOMEM;
    int rc = parse_targets(lx, n, 1);
    if (rc) return rc;
    *out = n;
    if (cur(lx)->type == CTK_BLOCK_END) { /* {% set x %}...{% endset %} */
        if (n->nnames != 1 || n->name2.p)
            return perr(lx, cur(lx), RCD_EINVAL, "block set takes one variable name");
        lx->p++;
        n->kids = ct_alloc(&lx->t->arena, sizeof(*n->kids));
        if (!n->kids) return RCD_ENOMEM;
        n->nkids = 1;
        ct_tok_t *st;
        rc = parse_body(lx, stops, &n->kids[0], &st);
        return rc ? rc : end_tag(lx, 1);
    }
    if (is_op(cur(lx), "|")) return perr(lx, cur(lx), RCD_EUNSUPPORTED, "filtered block set");
    rc = expect_op(lx, "=");
    if (rc == 0) rc = parse_expr(lx, &n->a, 1);
    if (rc == 0 && is_op(cur(lx), ",")) { /* set a = 1, 2 */
        ct_node_t *tup = mk(lx, N_TUPLE, cur(lx));
        if (!tup) return RCD_ENOMEM;
        kidv_t k = {0};
        rc = kid_push(lx, &k, n->a, (ct_str_t){0});
        while (rc == 0 && is_op(cur(lx), ",")) {
            lx->p++;
            ct_node_t *e;
            rc = parse_expr(lx, &e, 1);
            if (rc == 0) rc = kid_push(lx, &k, e, (ct_str_t){0});
        }
        kid_set(tup, &k);
        n->a = tup;
    }
    return rc ? rc : expect_block_end(lx);
}

static int parse_macro(ct_lexer_t *lx, ct_tok_t *at, ct_node_t **out)
{
    static const char *const stops[] = {"endmacro", NULL};
    ct_node_t *n = mk(lx, S_MACRO, at);
    if (!n) return RCD_ENOMEM;
    if (cur(lx)->type != CTK_NAME) return perr(lx, cur(lx), RCD_EINVAL, "expected a macro name");
    n->name.p = cur(lx)->p;
    n->name.n = cur(lx)->n;
    lx->p++;
    int rc = expect_op(lx, "(");
    kidv_t k = {0};
    ct_str_t names[32];
    size_t nn = 0;
    while (rc == 0 && !is_op(cur(lx), ")")) {
        if (cur(lx)->type != CTK_NAME)
            return perr(lx, cur(lx), RCD_EINVAL, "expected a parameter name");
        if (nn == 32) return perr(lx, cur(lx), RCD_EUNSUPPORTED, "more than 32 macro parameters");
        names[nn].p = cur(lx)->p;
        names[nn].n = cur(lx)->n;
        nn++;
        lx->p++;
        ct_node_t *def = NULL;
        if (is_op(cur(lx), "=")) {
            lx->p++;
            rc = parse_expr(lx, &def, 1);
        }
        if (rc == 0) rc = kid_push(lx, &k, def, (ct_str_t){0});
        if (rc == 0 && !is_op(cur(lx), ")")) rc = expect_op(lx, ",");
    }
    if (rc == 0) rc = expect_op(lx, ")");
    if (rc == 0) rc = expect_block_end(lx);
    ct_node_t *body;
    ct_tok_t *st;
    int loops = lx->loops; /* a macro's body is its own function: no loop around it */
    lx->loops = 0;
    if (rc == 0) rc = parse_body(lx, stops, &body, &st);
    lx->loops = loops;
    if (rc == 0) rc = kid_push(lx, &k, body, (ct_str_t){0});
    if (rc == 0) rc = end_tag(lx, 0);
    if (rc == 0 && cur(lx)->type == CTK_NAME) /* {% endmacro name %} */
        lx->p++;
    if (rc == 0) rc = expect_block_end(lx);
    if (rc) return rc;
    kid_set(n, &k);
    n->names = ct_alloc(&lx->t->arena, (nn ? nn : 1) * sizeof(*n->names));
    if (!n->names) return RCD_ENOMEM;
    memcpy(n->names, names, nn * sizeof(*names));
    n->nnames = nn;
    *out = n;
    return 0;
}

static int parse_tag(ct_lexer_t *lx, ct_node_t **out)
{
    ct_tok_t *kw = cur(lx);
    static const char *const gen_stop[] = {"endgeneration", NULL};
    lx->p++;
    if (is_name(kw, "if")) return parse_if(lx, kw, out);
    if (is_name(kw, "for")) return parse_for(lx, kw, out);
    if (is_name(kw, "set")) return parse_set(lx, kw, out);
    if (is_name(kw, "macro")) return parse_macro(lx, kw, out);
    if (is_name(kw, "break") || is_name(kw, "continue")) {
        if (lx->loops == 0)
            return perr(lx, kw, RCD_EINVAL, "'%.*s' outside a for loop", (int)kw->n, kw->p);
        *out = mk(lx, is_name(kw, "break") ? S_BREAK : S_CONTINUE, kw);
        if (!*out) return RCD_ENOMEM;
        return expect_block_end(lx);
    }
    if (is_name(kw, "generation")) { /* transformers' AssistantTracker: renders its body */
        ct_tok_t *st;
        int rc = expect_block_end(lx);
        if (rc == 0) rc = parse_body(lx, gen_stop, out, &st);
        return rc ? rc : end_tag(lx, 1);
    }
    static const char *const unsupported[] = {
        "include", "extends",    "import", "from", "block", "call",  "raw",
        "with",    "autoescape", "filter", "do",   "print", "trans", NULL};
    for (size_t i = 0; unsupported[i]; i++)
        if (is_name(kw, unsupported[i]))
            return perr(lx, kw, RCD_EUNSUPPORTED, "the '%s' tag is outside the supported subset",
                        unsupported[i]);
    return perr(lx, kw, RCD_EINVAL, "unknown or unexpected tag '%.*s'", (int)kw->n, kw->p);
}

static int parse_body(ct_lexer_t *lx, const char *const *stops, ct_node_t **out,
                      ct_tok_t **stop_tok)
{
    int rc = nest_in(lx);
    if (rc) return rc;
    ct_node_t *blk = mk(lx, S_BLOCK, cur(lx));
    if (!blk) return RCD_ENOMEM;
    kidv_t k = {0};
    for (;;) {
        ct_tok_t *t = cur(lx);
        ct_node_t *n = NULL;
        if (t->type == CTK_EOF) {
            if (stops && stops[0])
                return perr(lx, t, RCD_EINVAL, "unexpected end of template: missing '%s'",
                            stops[0][0] == 'e' && stops[0][1] == 'n' ? stops[0]
                            : stops[1]                               ? stops[1]
                                                                     : stops[0]);
            break;
        }
        if (t->type == CTK_TEXT) {
            n = mk(lx, S_TEXT, t);
            if (!n) return RCD_ENOMEM;
            n->name.p = t->p;
            n->name.n = t->n;
            lx->p++;
        } else if (t->type == CTK_VAR_BEGIN) {
            lx->p++;
            n = mk(lx, S_OUT, t);
            if (!n) return RCD_ENOMEM;
            rc = parse_expr(lx, &n->a, 1);
            if (rc) return rc;
            if (cur(lx)->type != CTK_VAR_END)
                return perr(lx, cur(lx), RCD_EINVAL, "expected '}}', found '%.*s'", (int)cur(lx)->n,
                            cur(lx)->p);
            lx->p++;
        } else if (t->type == CTK_BLOCK_BEGIN) {
            ct_tok_t *kw = &lx->v[lx->p + 1];
            if (kw->type != CTK_NAME)
                return perr(lx, kw, RCD_EINVAL, "expected a tag name after '{%%'");
            int stop = 0;
            for (size_t i = 0; stops && stops[i]; i++)
                stop |= is_name(kw, stops[i]);
            if (stop) {
                lx->p++;
                *stop_tok = kw;
                break;
            }
            lx->p++;
            rc = parse_tag(lx, &n);
            if (rc) return rc;
        } else {
            return perr(lx, t, RCD_EINVAL, "unexpected '%.*s'", (int)t->n, t->p);
        }
        rc = kid_push(lx, &k, n, (ct_str_t){0});
        if (rc) return rc;
    }
    kid_set(blk, &k);
    *out = blk;
    lx->nest--;
    return 0;
}

int ct_parse(chat_tmpl_t *t, const char *src, size_t n, char *err, size_t errlen)
{
    ct_lexer_t lx = {.t = t, .src = src, .n = n, .line = 1, .col = 1, .err = err, .errlen = errlen};
    int rc = ct_lex(&lx);
    if (rc == 0) {
        lx.p = 0;
        ct_tok_t *st = NULL;
        rc = parse_body(&lx, NULL, &t->root, &st);
    }
    free(lx.v);
    if (rc == RCD_ENOMEM) rcd_fail(rc, err, errlen, "chat template: out of memory");
    return rc;
}
