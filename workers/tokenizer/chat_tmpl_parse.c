/* Chat templates: the lexer (jinja2's, with Hugging Face's trim_blocks and lstrip_blocks) and
 * a recursive-descent parser of the supported statements and expressions into ct_node_t. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

#define CT_MAX_NEST 200

enum {
    T_TEXT,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_INT,
    T_FLOAT,
    T_STR,
    T_OP,
    T_EOF
};

typedef struct tok {
    int type, line, col;
    const char *p; /* source text (T_STR: the decoded value) */
    size_t n;
    int64_t i;
    double f;
} tok_t_;

typedef struct lexer {
    chat_tmpl_t *t;
    const char *src;
    size_t n;
    tok_t_ *v;
    size_t nt, cap;
    /* line/column cursor */
    size_t cpos;
    int line, col;
    /* parser */
    size_t p;
    int nest;
    char *err;
    size_t errlen;
} lexer_t;

static void cursor_to(lexer_t *lx, size_t off)
{
    while (lx->cpos < off && lx->cpos < lx->n) {
        if (lx->src[lx->cpos] == '\n') {
            lx->line++;
            lx->col = 1;
        } else if (((unsigned char)lx->src[lx->cpos] & 0xC0) != 0x80) {
            lx->col++;
        }
        lx->cpos++;
    }
}

static int lex_fail(lexer_t *lx, size_t off, int rc, const char *what)
{
    cursor_to(lx, off);
    return rcd_fail(rc, lx->err, lx->errlen, "chat template line %d:%d: %s", lx->line, lx->col,
                    what);
}

static int push_tok(lexer_t *lx, int type, size_t off, const char *p, size_t n)
{
    if (lx->nt == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        tok_t_ *v = realloc(lx->v, cap * sizeof(*v));
        if (!v)
            return RCD_ENOMEM;
        lx->v = v;
        lx->cap = cap;
    }
    cursor_to(lx, off);
    tok_t_ *t = &lx->v[lx->nt++];
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->line = lx->line;
    t->col = lx->col;
    t->p = p;
    t->n = n;
    return 0;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int is_name0(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static void put_utf8(char *o, size_t *k, uint32_t cp)
{
    if (cp < 0x80) {
        o[(*k)++] = (char)cp;
    } else if (cp < 0x800) {
        o[(*k)++] = (char)(0xC0 | (cp >> 6));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        o[(*k)++] = (char)(0xE0 | (cp >> 12));
        o[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        o[(*k)++] = (char)(0xF0 | (cp >> 18));
        o[(*k)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string literal's value with Python's unicode-escape decoding (jinja2's); unknown escapes
 * stay as written. */
static int lex_string(lexer_t *lx, size_t start, size_t *end)
{
    char q = lx->src[start];
    size_t i = start + 1;
    while (i < lx->n && lx->src[i] != q) {
        if (lx->src[i] == '\\' && i + 1 < lx->n)
            i++;
        i++;
    }
    if (i >= lx->n)
        return lex_fail(lx, start, RCD_EINVAL, "unterminated string literal");
    *end = i + 1;
    const char *s = lx->src + start + 1;
    size_t n = i - start - 1, k = 0;
    char *o = ct_alloc(&lx->t->arena, n + 1);
    if (!o)
        return RCD_ENOMEM;
    for (size_t j = 0; j < n; j++) {
        if (s[j] != '\\' || j + 1 >= n) {
            o[k++] = s[j];
            continue;
        }
        char c = s[++j];
        int digits = 0;
        switch (c) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\n': break;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default:
            if (c >= '0' && c <= '7') {
                uint32_t cp = 0;
                int m = 0;
                while (m < 3 && j < n && s[j] >= '0' && s[j] <= '7') {
                    cp = cp * 8 + (uint32_t)(s[j] - '0');
                    j++;
                    m++;
                }
                j--;
                put_utf8(o, &k, cp);
            } else {
                o[k++] = '\\';
                o[k++] = c;
            }
        }
        if (digits) {
            uint32_t cp = 0;
            for (int m = 0; m < digits; m++) {
                int h = j + 1 + (size_t)m < n ? hexval(s[j + 1 + m]) : -1;
                if (h < 0)
                    return lex_fail(lx, start, RCD_EINVAL, "truncated \\x/\\u escape in string");
                cp = cp * 16 + (uint32_t)h;
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return lex_fail(lx, start, RCD_EINVAL, "escape is not a Unicode scalar value");
            j += (size_t)digits;
            put_utf8(o, &k, cp);
        }
    }
    int rc = push_tok(lx, T_STR, start, o, k);
    return rc;
}

/* Tokens inside {{ }} or {% %} up to the end delimiter; returns its kind via *end_mod. */
static int lex_tag(lexer_t *lx, size_t *pos, int block, char *end_mod)
{
    size_t i = *pos;
    int depth = 0;
    for (;;) {
        while (i < lx->n && is_ws(lx->src[i]))
            i++;
        if (i >= lx->n)
            return lex_fail(lx, *pos, RCD_EINVAL, block ? "unclosed '{%'" : "unclosed '{{'");
        const char *s = lx->src + i;
        size_t left = lx->n - i;
        char ec = block ? '%' : '}';
        if (depth == 0) {
            if ((s[0] == '-' || s[0] == '+') && left >= 3 && s[1] == ec && s[2] == '}') {
                *end_mod = s[0];
                *pos = i + 3;
                return push_tok(lx, block ? T_BLOCK_END : T_VAR_END, i, s, 3);
            }
            if (left >= 2 && s[0] == ec && s[1] == '}') {
                *end_mod = 0;
                *pos = i + 2;
                return push_tok(lx, block ? T_BLOCK_END : T_VAR_END, i, s, 2);
            }
        }
        int rc;
        if (is_name0(s[0])) {
            size_t j = 1;
            while (j < left && (is_name0(s[j]) || is_digit(s[j])))
                j++;
            rc = push_tok(lx, T_NAME, i, s, j);
            i += j;
        } else if (is_digit(s[0])) {
            size_t j = 0;
            int fl = 0;
            while (j < left && (is_digit(s[j]) || s[j] == '_'))
                j++;
            if (j + 1 < left && s[j] == '.' && is_digit(s[j + 1])) {
                fl = 1;
                j++;
                while (j < left && (is_digit(s[j]) || s[j] == '_'))
                    j++;
            }
            if (j < left && (s[j] == 'e' || s[j] == 'E')) {
                size_t e = j + 1;
                if (e < left && (s[e] == '+' || s[e] == '-'))
                    e++;
                if (e < left && is_digit(s[e])) {
                    fl = 1;
                    j = e;
                    while (j < left && is_digit(s[j]))
                        j++;
                }
            }
            char num[64];
            size_t k = 0;
            for (size_t m = 0; m < j && k + 1 < sizeof(num); m++)
                if (s[m] != '_')
                    num[k++] = s[m];
            num[k] = 0;
            rc = push_tok(lx, fl ? T_FLOAT : T_INT, i, s, j);
            if (rc == 0) {
                if (fl) {
                    lx->v[lx->nt - 1].f = strtod(num, NULL);
                } else {
                    char *endp;
                    unsigned long long u = strtoull(num, &endp, 10);
                    if (k > 19 || u > INT64_MAX)
                        return lex_fail(lx, i, RCD_EUNSUPPORTED, "integer literal too large");
                    lx->v[lx->nt - 1].i = (int64_t)u;
                }
            }
            i += j;
        } else if (s[0] == '\'' || s[0] == '"') {
            size_t end = lx->n;
            rc = lex_string(lx, i, &end);
            i = end;
        } else {
            static const char *const two[] = {"//", "**", "==", "!=", "<=", ">="};
            size_t len = 0;
            for (size_t m = 0; m < sizeof(two) / sizeof(two[0]); m++)
                if (left >= 2 && s[0] == two[m][0] && s[1] == two[m][1])
                    len = 2;
            if (!len && strchr("+-/*%~[](){}<>=.:|,", s[0]) && s[0])
                len = 1;
            if (!len)
                return lex_fail(lx, i, RCD_EINVAL, "unexpected character");
            if (len == 1 && (s[0] == '(' || s[0] == '[' || s[0] == '{'))
                depth++;
            if (len == 1 && (s[0] == ')' || s[0] == ']' || s[0] == '}') && depth > 0)
                depth--;
            rc = push_tok(lx, T_OP, i, s, len);
            i += len;
        }
        if (rc)
            return rc;
    }
}

static int lex(lexer_t *lx)
{
    size_t pos = 0;
    int strip_next = 0, trim_nl = 0, line_starting = 1;
    while (pos <= lx->n) {
        size_t t = pos;
        while (t + 1 < lx->n &&
               !(lx->src[t] == '{' && (lx->src[t + 1] == '{' || lx->src[t + 1] == '%' ||
                                       lx->src[t + 1] == '#')))
            t++;
        int found = t + 1 < lx->n;
        if (!found)
            t = lx->n;
        size_t a = pos, b = t;
        if (strip_next) {
            while (a < b && is_ws(lx->src[a]))
                a++;
        } else if (trim_nl && a < b && lx->src[a] == '\n') {
            a++;
        }
        if (a > pos)
            line_starting = lx->src[a - 1] == '\n';
        char kind = found ? lx->src[t + 1] : 0;
        char mod = found && t + 2 < lx->n ? lx->src[t + 2] : 0;
        if (found && mod == '-') {
            while (b > a && is_ws(lx->src[b - 1]))
                b--;
        } else if (found && kind != '{' && mod != '+') {
            size_t l = b;
            while (l > a && lx->src[l - 1] != '\n')
                l--;
            if (l > a || line_starting || (l == a && a == 0)) {
                size_t m = l;
                while (m < b && is_ws(lx->src[m]))
                    m++;
                if (m == b)
                    b = l;
            }
        }
        if (b > a) {
            int rc = push_tok(lx, T_TEXT, a, lx->src + a, b - a);
            if (rc)
                return rc;
        }
        if (!found)
            break;
        size_t inner = t + 2 + (mod == '-' || mod == '+');
        char end_mod = 0;
        if (kind == '#') {
            size_t e = inner;
            while (e + 1 < lx->n && !(lx->src[e] == '#' && lx->src[e + 1] == '}'))
                e++;
            if (e + 1 >= lx->n)
                return lex_fail(lx, t, RCD_EINVAL, "unclosed comment '{#'");
            end_mod = e > inner && (lx->src[e - 1] == '-' || lx->src[e - 1] == '+')
                          ? lx->src[e - 1]
                          : 0;
            pos = e + 2;
            kind = '%'; /* trims like a block */
        } else {
            int rc = push_tok(lx, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, t, lx->src + t,
                              inner - t);
            if (rc)
                return rc;
            pos = inner;
            rc = lex_tag(lx, &pos, kind == '%', &end_mod);
            if (rc)
                return rc;
        }
        strip_next = end_mod == '-';
        trim_nl = kind == '%' && end_mod != '+' && end_mod != '-';
        line_starting = 0;
        if (strip_next) {
            size_t e = pos;
            while (e < lx->n && is_ws(lx->src[e]))
                e++;
            if (e > pos)
                line_starting = lx->src[e - 1] == '\n';
        } else if (trim_nl && pos < lx->n && lx->src[pos] == '\n') {
            line_starting = 1;
        }
    }
    return push_tok(lx, T_EOF, lx->n, lx->src + lx->n, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* parser */

static tok_t_ *cur(lexer_t *lx)
{
    return &lx->v[lx->p];
}

static int perr(lexer_t *lx, const tok_t_ *t, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int perr(lexer_t *lx, const tok_t_ *t, int rc, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return rcd_fail(rc, lx->err, lx->errlen, "chat template line %d:%d: %s", t->line, t->col,
                    msg);
}

static int is_op(const tok_t_ *t, const char *op)
{
    return t->type == T_OP && t->n == strlen(op) && memcmp(t->p, op, t->n) == 0;
}

static int is_name(const tok_t_ *t, const char *nm)
{
    return t->type == T_NAME && t->n == strlen(nm) && memcmp(t->p, nm, t->n) == 0;
}

static int expect_op(lexer_t *lx, const char *op)
{
    if (!is_op(cur(lx), op))
        return perr(lx, cur(lx), RCD_EINVAL, "expected '%s'", op);
    lx->p++;
    return 0;
}

static ct_node_t *mk(lexer_t *lx, int kind, const tok_t_ *at)
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

static int kid_push(lexer_t *lx, kidv_t *k, ct_node_t *n, ct_str_t kw)
{
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 4;
        ct_node_t **v = ct_alloc(&lx->t->arena, cap * sizeof(*v));
        ct_str_t *w = ct_alloc(&lx->t->arena, cap * sizeof(*w));
        if (!v || !w)
            return RCD_ENOMEM;
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

static int parse_expr(lexer_t *lx, ct_node_t **out, int with_cond);
static int parse_unary(lexer_t *lx, ct_node_t **out, int with_filter);

static int nest_in(lexer_t *lx)
{
    if (++lx->nest > CT_MAX_NEST)
        return perr(lx, cur(lx), RCD_ERANGE, "nesting deeper than %d", CT_MAX_NEST);
    return 0;
}

/* `(args)` of a call, filter or test; the '(' is current. */
static int parse_args(lexer_t *lx, ct_node_t *n)
{
    kidv_t k = {0};
    int rc = expect_op(lx, "(");
    while (rc == 0 && !is_op(cur(lx), ")")) {
        ct_str_t kw = {0};
        if (cur(lx)->type == T_NAME && is_op(&lx->v[lx->p + 1], "=")) {
            kw.p = cur(lx)->p;
            kw.n = cur(lx)->n;
            lx->p += 2;
        } else if (is_op(cur(lx), "*") || is_op(cur(lx), "**")) {
            return perr(lx, cur(lx), RCD_EUNSUPPORTED, "*args/**kwargs in calls");
        }
        ct_node_t *a;
        rc = parse_expr(lx, &a, 1);
        if (rc == 0)
            rc = kid_push(lx, &k, a, kw);
        if (rc == 0 && !is_op(cur(lx), ")"))
            rc = expect_op(lx, ",");
    }
    if (rc == 0)
        rc = expect_op(lx, ")");
    kid_set(n, &k);
    return rc;
}

static int parse_primary(lexer_t *lx, ct_node_t **out)
{
    tok_t_ *t = cur(lx);
    ct_node_t *n = NULL;
    int rc = 0;
    if (t->type == T_NAME) {
        n = mk(lx, N_LIT, t);
        if (!n)
            return RCD_ENOMEM;
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
    } else if (t->type == T_STR) {
        n = mk(lx, N_LIT, t);
        if (!n)
            return RCD_ENOMEM;
        size_t total = 0;
        size_t q = lx->p;
        while (lx->v[q].type == T_STR)
            total += lx->v[q++].n;
        char *s = ct_alloc(&lx->t->arena, total + 1);
        if (!s)
            return RCD_ENOMEM;
        size_t k = 0;
        while (cur(lx)->type == T_STR) { /* adjacent literals concatenate */
            memcpy(s + k, cur(lx)->p, cur(lx)->n);
            k += cur(lx)->n;
            lx->p++;
        }
        n->lit = ct_mkstr(s, k);
    } else if (t->type == T_INT || t->type == T_FLOAT) {
        n = mk(lx, N_LIT, t);
        if (!n)
            return RCD_ENOMEM;
        n->lit.t = t->type == T_INT ? CT_INT : CT_FLOAT;
        if (t->type == T_INT)
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
            if (rc == 0)
                rc = kid_push(lx, &k, a, (ct_str_t){0});
            if (rc == 0 && !is_op(cur(lx), ")")) {
                rc = expect_op(lx, ",");
                tuple = 1;
            }
        }
        if (rc == 0)
            rc = expect_op(lx, ")");
        if (rc)
            return rc;
        if (k.n == 1 && !tuple) {
            n = k.v[0];
        } else {
            n = mk(lx, N_TUPLE, t);
            if (!n)
                return RCD_ENOMEM;
            kid_set(n, &k);
        }
    } else if (is_op(t, "[") || is_op(t, "{")) {
        int dict = is_op(t, "{");
        lx->p++;
        n = mk(lx, dict ? N_DICT : N_LIST, t);
        if (!n)
            return RCD_ENOMEM;
        kidv_t k = {0};
        const char *close = dict ? "}" : "]";
        while (rc == 0 && !is_op(cur(lx), close)) {
            ct_node_t *a;
            rc = parse_expr(lx, &a, 1);
            if (rc == 0)
                rc = kid_push(lx, &k, a, (ct_str_t){0});
            if (rc == 0 && dict) {
                rc = expect_op(lx, ":");
                if (rc == 0)
                    rc = parse_expr(lx, &a, 1);
                if (rc == 0)
                    rc = kid_push(lx, &k, a, (ct_str_t){0});
            }
            if (rc == 0 && !is_op(cur(lx), close))
                rc = expect_op(lx, ",");
        }
        if (rc == 0)
            rc = expect_op(lx, close);
        kid_set(n, &k);
    } else if (t->type == T_EOF || t->type == T_VAR_END || t->type == T_BLOCK_END) {
        return perr(lx, t, RCD_EINVAL, "unexpected end of expression");
    } else {
        return perr(lx, t, RCD_EINVAL, "unexpected '%.*s'", (int)t->n, t->p);
    }
    *out = n;
    return rc;
}

static int parse_postfix(lexer_t *lx, ct_node_t **node)
{
    for (;;) {
        tok_t_ *t = cur(lx);
        ct_node_t *n;
        if (is_op(t, ".")) {
            lx->p++;
            tok_t_ *nm = cur(lx);
            if (nm->type == T_INT) {
                n = mk(lx, N_INDEX, t);
                if (!n)
                    return RCD_ENOMEM;
                n->b = mk(lx, N_LIT, nm);
                if (!n->b)
                    return RCD_ENOMEM;
                n->b->lit.t = CT_INT;
                n->b->lit.u.i = nm->i;
            } else if (nm->type == T_NAME) {
                n = mk(lx, N_ATTR, t);
                if (!n)
                    return RCD_ENOMEM;
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
                if (is_op(cur(lx), "]"))
                    break;
                if (part[colons])
                    return perr(lx, cur(lx), RCD_EINVAL, "expected ']'");
                rc = parse_expr(lx, &part[colons], 1);
                if (rc)
                    return rc;
            }
            lx->p++;
            if (colons == 0 && !part[0])
                return perr(lx, t, RCD_EINVAL, "empty subscript");
            n = mk(lx, colons ? N_SLICE : N_INDEX, t);
            if (!n)
                return RCD_ENOMEM;
            n->a = *node;
            if (colons) {
                n->kids = ct_alloc(&lx->t->arena, 3 * sizeof(*n->kids));
                if (!n->kids)
                    return RCD_ENOMEM;
                memcpy(n->kids, part, sizeof(part));
                n->nkids = 3;
            } else {
                n->b = part[0];
            }
            *node = n;
        } else if (is_op(t, "(")) {
            n = mk(lx, N_CALL, t);
            if (!n)
                return RCD_ENOMEM;
            n->a = *node;
            int rc = parse_args(lx, n);
            if (rc)
                return rc;
            *node = n;
        } else {
            return 0;
        }
    }
}

static int parse_filters(lexer_t *lx, ct_node_t **node)
{
    for (;;) {
        tok_t_ *t = cur(lx);
        if (is_op(t, "|")) {
            lx->p++;
            tok_t_ *nm = cur(lx);
            if (nm->type != T_NAME)
                return perr(lx, nm, RCD_EINVAL, "expected a filter name after '|'");
            ct_node_t *n = mk(lx, N_FILTER, nm);
            if (!n)
                return RCD_ENOMEM;
            n->name.p = nm->p;
            n->name.n = nm->n;
            if (!ct_filter_known(nm->p, nm->n))
                return perr(lx, nm, RCD_EUNSUPPORTED, "no filter named '%.*s' in the supported subset",
                            (int)nm->n, nm->p);
            lx->p++;
            /* dotted filter names are not used by chat templates */
            if (is_op(cur(lx), "(")) {
                int rc = parse_args(lx, n);
                if (rc)
                    return rc;
            }
            n->a = *node;
            *node = n;
        } else if (is_name(t, "is")) {
            lx->p++;
            ct_node_t *n = mk(lx, N_TEST, t);
            if (!n)
                return RCD_ENOMEM;
            if (is_name(cur(lx), "not")) {
                n->neg = 1;
                lx->p++;
            }
            tok_t_ *nm = cur(lx);
            if (nm->type != T_NAME)
                return perr(lx, nm, RCD_EINVAL, "expected a test name after 'is'");
            n->name.p = nm->p;
            n->name.n = nm->n;
            if (!ct_test_known(nm->p, nm->n))
                return perr(lx, nm, RCD_EUNSUPPORTED, "no test named '%.*s' in the supported subset",
                            (int)nm->n, nm->p);
            lx->p++;
            n->a = *node;
            if (is_op(cur(lx), "(")) {
                int rc = parse_args(lx, n);
                if (rc)
                    return rc;
            } else {
                /* a single bare argument: `is divisibleby 3`, `is sameas false` */
                tok_t_ *x = cur(lx);
                if ((x->type == T_NAME && !is_name(x, "else") && !is_name(x, "and") &&
                     !is_name(x, "or") && !is_name(x, "if") && !is_name(x, "in") &&
                     !is_name(x, "is") && !is_name(x, "not")) ||
                    x->type == T_STR || x->type == T_INT || x->type == T_FLOAT ||
                    (x->type == T_OP && (is_op(x, "[") || is_op(x, "{")))) {
                    ct_node_t *arg;
                    int rc = parse_primary(lx, &arg);
                    if (rc == 0)
                        rc = parse_postfix(lx, &arg);
                    if (rc)
                        return rc;
                    n->kids = ct_alloc(&lx->t->arena, sizeof(*n->kids));
                    n->kw = ct_alloc(&lx->t->arena, sizeof(*n->kw));
                    if (!n->kids || !n->kw)
                        return RCD_ENOMEM;
                    n->kids[0] = arg;
                    n->nkids = 1;
                }
            }
            *node = n;
        } else if (is_op(t, "(")) {
            ct_node_t *n = mk(lx, N_CALL, t);
            if (!n)
                return RCD_ENOMEM;
            n->a = *node;
            int rc = parse_args(lx, n);
            if (rc)
                return rc;
            *node = n;
        } else {
            return 0;
        }
    }
}

static int parse_unary(lexer_t *lx, ct_node_t **out, int with_filter)
{
    int rc = nest_in(lx);
    if (rc)
        return rc;
    tok_t_ *t = cur(lx);
    if (is_op(t, "-") || is_op(t, "+")) {
        lx->p++;
        ct_node_t *n = mk(lx, N_UNARY, t);
        if (!n)
            return RCD_ENOMEM;
        n->op = t->p[0];
        rc = parse_unary(lx, &n->a, 0);
        *out = n;
    } else {
        rc = parse_primary(lx, out);
    }
    if (rc == 0)
        rc = parse_postfix(lx, out);
    if (rc == 0 && with_filter)
        rc = parse_filters(lx, out);
    lx->nest--;
    return rc;
}

static int bin(lexer_t *lx, int kind, int op, tok_t_ *at, ct_node_t **l, ct_node_t *r)
{
    ct_node_t *n = mk(lx, kind, at);
    if (!n)
        return RCD_ENOMEM;
    n->op = op;
    n->a = *l;
    n->b = r;
    *l = n;
    return 0;
}

static int parse_pow(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_unary(lx, out, 1);
    while (rc == 0 && is_op(cur(lx), "**")) {
        tok_t_ *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_unary(lx, &r, 1);
        if (rc == 0)
            rc = bin(lx, N_BIN, 'P', t, out, r);
    }
    return rc;
}

static int parse_math2(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_pow(lx, out);
    for (;;) {
        tok_t_ *t = cur(lx);
        int op = is_op(t, "*") ? '*' : is_op(t, "/") ? '/' : is_op(t, "//") ? 'F'
                 : is_op(t, "%")                     ? '%'
                                                     : 0;
        if (rc || !op)
            return rc;
        lx->p++;
        ct_node_t *r;
        rc = parse_pow(lx, &r);
        if (rc == 0)
            rc = bin(lx, N_BIN, op, t, out, r);
    }
}

static int parse_concat(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_math2(lx, out);
    while (rc == 0 && is_op(cur(lx), "~")) {
        tok_t_ *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_math2(lx, &r);
        if (rc == 0)
            rc = bin(lx, N_BIN, '~', t, out, r);
    }
    return rc;
}

static int parse_math1(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_concat(lx, out);
    for (;;) {
        tok_t_ *t = cur(lx);
        int op = is_op(t, "+") ? '+' : is_op(t, "-") ? '-' : 0;
        if (rc || !op)
            return rc;
        lx->p++;
        ct_node_t *r;
        rc = parse_concat(lx, &r);
        if (rc == 0)
            rc = bin(lx, N_BIN, op, t, out, r);
    }
}

static int parse_compare(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_math1(lx, out);
    for (;;) {
        tok_t_ *t = cur(lx);
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
        if (rc || !op)
            return rc;
        lx->p += op == 'I' ? 2 : 1;
        ct_node_t *r;
        rc = parse_math1(lx, &r);
        if (rc == 0)
            rc = bin(lx, N_CMP, op, t, out, r);
    }
}

static int parse_not(lexer_t *lx, ct_node_t **out)
{
    tok_t_ *t = cur(lx);
    if (is_name(t, "not")) {
        int rc = nest_in(lx);
        if (rc)
            return rc;
        lx->p++;
        ct_node_t *n = mk(lx, N_UNARY, t);
        if (!n)
            return RCD_ENOMEM;
        n->op = 'n';
        rc = parse_not(lx, &n->a);
        *out = n;
        lx->nest--;
        return rc;
    }
    return parse_compare(lx, out);
}

static int parse_and(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_not(lx, out);
    while (rc == 0 && is_name(cur(lx), "and")) {
        tok_t_ *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_not(lx, &r);
        if (rc == 0)
            rc = bin(lx, N_AND, 0, t, out, r);
    }
    return rc;
}

static int parse_or(lexer_t *lx, ct_node_t **out)
{
    int rc = parse_and(lx, out);
    while (rc == 0 && is_name(cur(lx), "or")) {
        tok_t_ *t = cur(lx);
        lx->p++;
        ct_node_t *r;
        rc = parse_and(lx, &r);
        if (rc == 0)
            rc = bin(lx, N_OR, 0, t, out, r);
    }
    return rc;
}

static int parse_expr(lexer_t *lx, ct_node_t **out, int with_cond)
{
    int rc = nest_in(lx);
    if (rc == 0)
        rc = parse_or(lx, out);
    while (rc == 0 && with_cond && is_name(cur(lx), "if")) {
        tok_t_ *t = cur(lx);
        lx->p++;
        ct_node_t *n = mk(lx, N_COND, t);
        if (!n)
            return RCD_ENOMEM;
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

static int parse_body(lexer_t *lx, const char *const *stops, ct_node_t **out, tok_t_ **stop_tok);

static int expect_block_end(lexer_t *lx)
{
    if (cur(lx)->type != T_BLOCK_END)
        return perr(lx, cur(lx), RCD_EINVAL, "expected '%%}', found '%.*s'", (int)cur(lx)->n,
                    cur(lx)->p);
    lx->p++;
    return 0;
}

/* After parse_body stopped at a keyword: consumes it (and checks `%}` when bare). */
static int end_tag(lexer_t *lx, int bare)
{
    lx->p++;
    return bare ? expect_block_end(lx) : 0;
}

static int parse_if(lexer_t *lx, tok_t_ *at, ct_node_t **out)
{
    static const char *const stops[] = {"elif", "else", "endif", NULL};
    ct_node_t *n = mk(lx, S_IF, at);
    if (!n)
        return RCD_ENOMEM;
    kidv_t k = {0};
    for (;;) {
        ct_node_t *cond, *body;
        tok_t_ *st;
        int rc = parse_expr(lx, &cond, 1);
        if (rc == 0)
            rc = expect_block_end(lx);
        if (rc == 0)
            rc = parse_body(lx, stops, &body, &st);
        if (rc == 0)
            rc = kid_push(lx, &k, cond, (ct_str_t){0});
        if (rc == 0)
            rc = kid_push(lx, &k, body, (ct_str_t){0});
        if (rc)
            return rc;
        if (is_name(st, "elif")) {
            lx->p++;
            continue;
        }
        if (is_name(st, "else")) {
            rc = end_tag(lx, 1);
            if (rc == 0)
                rc = parse_body(lx, stops + 2, &body, &st);
            if (rc == 0)
                rc = kid_push(lx, &k, body, (ct_str_t){0});
            if (rc)
                return rc;
        }
        rc = end_tag(lx, 1);
        kid_set(n, &k);
        *out = n;
        return rc;
    }
}

static int parse_targets(lexer_t *lx, ct_node_t *n, int allow_attr)
{
    ct_str_t names[8];
    size_t nn = 0;
    int paren = is_op(cur(lx), "(");
    if (paren)
        lx->p++;
    for (;;) {
        tok_t_ *t = cur(lx);
        if (t->type != T_NAME)
            return perr(lx, t, RCD_EINVAL, "expected a variable name");
        if (nn == 8)
            return perr(lx, t, RCD_EUNSUPPORTED, "more than 8 unpacking targets");
        names[nn].p = t->p;
        names[nn].n = t->n;
        nn++;
        lx->p++;
        if (allow_attr && nn == 1 && is_op(cur(lx), ".")) {
            lx->p++;
            if (cur(lx)->type != T_NAME)
                return perr(lx, cur(lx), RCD_EINVAL, "expected an attribute name");
            n->name2.p = cur(lx)->p;
            n->name2.n = cur(lx)->n;
            lx->p++;
            break;
        }
        if (!is_op(cur(lx), ","))
            break;
        lx->p++;
    }
    if (paren) {
        int rc = expect_op(lx, ")");
        if (rc)
            return rc;
    }
    n->names = ct_alloc(&lx->t->arena, nn * sizeof(*n->names));
    if (!n->names)
        return RCD_ENOMEM;
    memcpy(n->names, names, nn * sizeof(*names));
    n->nnames = nn;
    return 0;
}

static int parse_for(lexer_t *lx, tok_t_ *at, ct_node_t **out)
{
    static const char *const stops[] = {"else", "endfor", NULL};
    ct_node_t *n = mk(lx, S_FOR, at);
    if (!n)
        return RCD_ENOMEM;
    int rc = parse_targets(lx, n, 0);
    if (rc)
        return rc;
    if (!is_name(cur(lx), "in"))
        return perr(lx, cur(lx), RCD_EINVAL, "expected 'in' in for loop");
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
    if (rc == 0)
        rc = expect_block_end(lx);
    n->kids = ct_alloc(&lx->t->arena, 2 * sizeof(*n->kids));
    if (!n->kids)
        return RCD_ENOMEM;
    n->nkids = 2;
    tok_t_ *st;
    if (rc == 0)
        rc = parse_body(lx, stops, &n->kids[0], &st);
    if (rc == 0 && is_name(st, "else")) {
        rc = end_tag(lx, 1);
        if (rc == 0)
            rc = parse_body(lx, stops + 1, &n->kids[1], &st);
    }
    if (rc == 0)
        rc = end_tag(lx, 1);
    *out = n;
    return rc;
}

static int parse_set(lexer_t *lx, tok_t_ *at, ct_node_t **out)
{
    static const char *const stops[] = {"endset", NULL};
    ct_node_t *n = mk(lx, S_SET, at);
    if (!n)
        return RCD_ENOMEM;
    int rc = parse_targets(lx, n, 1);
    if (rc)
        return rc;
    *out = n;
    if (cur(lx)->type == T_BLOCK_END) { /* {% set x %}...{% endset %} */
        if (n->nnames != 1 || n->name2.p)
            return perr(lx, cur(lx), RCD_EINVAL, "block set takes one variable name");
        lx->p++;
        n->kids = ct_alloc(&lx->t->arena, sizeof(*n->kids));
        if (!n->kids)
            return RCD_ENOMEM;
        n->nkids = 1;
        tok_t_ *st;
        rc = parse_body(lx, stops, &n->kids[0], &st);
        return rc ? rc : end_tag(lx, 1);
    }
    if (is_op(cur(lx), "|"))
        return perr(lx, cur(lx), RCD_EUNSUPPORTED, "filtered block set");
    rc = expect_op(lx, "=");
    if (rc == 0)
        rc = parse_expr(lx, &n->a, 1);
    if (rc == 0 && is_op(cur(lx), ",")) { /* set a = 1, 2 */
        ct_node_t *tup = mk(lx, N_TUPLE, cur(lx));
        if (!tup)
            return RCD_ENOMEM;
        kidv_t k = {0};
        rc = kid_push(lx, &k, n->a, (ct_str_t){0});
        while (rc == 0 && is_op(cur(lx), ",")) {
            lx->p++;
            ct_node_t *e;
            rc = parse_expr(lx, &e, 1);
            if (rc == 0)
                rc = kid_push(lx, &k, e, (ct_str_t){0});
        }
        kid_set(tup, &k);
        n->a = tup;
    }
    return rc ? rc : expect_block_end(lx);
}

static int parse_macro(lexer_t *lx, tok_t_ *at, ct_node_t **out)
{
    static const char *const stops[] = {"endmacro", NULL};
    ct_node_t *n = mk(lx, S_MACRO, at);
    if (!n)
        return RCD_ENOMEM;
    if (cur(lx)->type != T_NAME)
        return perr(lx, cur(lx), RCD_EINVAL, "expected a macro name");
    n->name.p = cur(lx)->p;
    n->name.n = cur(lx)->n;
    lx->p++;
    int rc = expect_op(lx, "(");
    kidv_t k = {0};
    ct_str_t names[32];
    size_t nn = 0;
    while (rc == 0 && !is_op(cur(lx), ")")) {
        if (cur(lx)->type != T_NAME)
            return perr(lx, cur(lx), RCD_EINVAL, "expected a parameter name");
        if (nn == 32)
            return perr(lx, cur(lx), RCD_EUNSUPPORTED, "more than 32 macro parameters");
        names[nn].p = cur(lx)->p;
        names[nn].n = cur(lx)->n;
        nn++;
        lx->p++;
        ct_node_t *def = NULL;
        if (is_op(cur(lx), "=")) {
            lx->p++;
            rc = parse_expr(lx, &def, 1);
        }
        if (rc == 0)
            rc = kid_push(lx, &k, def, (ct_str_t){0});
        if (rc == 0 && !is_op(cur(lx), ")"))
            rc = expect_op(lx, ",");
    }
    if (rc == 0)
        rc = expect_op(lx, ")");
    if (rc == 0)
        rc = expect_block_end(lx);
    ct_node_t *body;
    tok_t_ *st;
    if (rc == 0)
        rc = parse_body(lx, stops, &body, &st);
    if (rc == 0)
        rc = kid_push(lx, &k, body, (ct_str_t){0});
    if (rc == 0)
        rc = end_tag(lx, 0);
    if (rc == 0 && cur(lx)->type == T_NAME) /* {% endmacro name %} */
        lx->p++;
    if (rc == 0)
        rc = expect_block_end(lx);
    if (rc)
        return rc;
    kid_set(n, &k);
    n->names = ct_alloc(&lx->t->arena, (nn ? nn : 1) * sizeof(*n->names));
    if (!n->names)
        return RCD_ENOMEM;
    memcpy(n->names, names, nn * sizeof(*names));
    n->nnames = nn;
    *out = n;
    return 0;
}

static int parse_tag(lexer_t *lx, ct_node_t **out)
{
    tok_t_ *kw = cur(lx);
    static const char *const gen_stop[] = {"endgeneration", NULL};
    lx->p++;
    if (is_name(kw, "if"))
        return parse_if(lx, kw, out);
    if (is_name(kw, "for"))
        return parse_for(lx, kw, out);
    if (is_name(kw, "set"))
        return parse_set(lx, kw, out);
    if (is_name(kw, "macro"))
        return parse_macro(lx, kw, out);
    if (is_name(kw, "break") || is_name(kw, "continue")) {
        *out = mk(lx, is_name(kw, "break") ? S_BREAK : S_CONTINUE, kw);
        if (!*out)
            return RCD_ENOMEM;
        return expect_block_end(lx);
    }
    if (is_name(kw, "generation")) { /* transformers' AssistantTracker: renders its body */
        tok_t_ *st;
        int rc = expect_block_end(lx);
        if (rc == 0)
            rc = parse_body(lx, gen_stop, out, &st);
        return rc ? rc : end_tag(lx, 1);
    }
    static const char *const unsupported[] = {"include", "extends", "import", "from", "block",
                                              "call", "raw", "with", "autoescape", "filter",
                                              "do", "print", "trans", NULL};
    for (size_t i = 0; unsupported[i]; i++)
        if (is_name(kw, unsupported[i]))
            return perr(lx, kw, RCD_EUNSUPPORTED, "the '%s' tag is outside the supported subset",
                        unsupported[i]);
    return perr(lx, kw, RCD_EINVAL, "unknown or unexpected tag '%.*s'", (int)kw->n, kw->p);
}

static int parse_body(lexer_t *lx, const char *const *stops, ct_node_t **out, tok_t_ **stop_tok)
{
    int rc = nest_in(lx);
    if (rc)
        return rc;
    ct_node_t *blk = mk(lx, S_BLOCK, cur(lx));
    if (!blk)
        return RCD_ENOMEM;
    kidv_t k = {0};
    for (;;) {
        tok_t_ *t = cur(lx);
        ct_node_t *n = NULL;
        if (t->type == T_EOF) {
            if (stops && stops[0])
                return perr(lx, t, RCD_EINVAL, "unexpected end of template: missing '%s'",
                            stops[0][0] == 'e' && stops[0][1] == 'n' ? stops[0]
                            : stops[1]                                ? stops[1]
                                                                      : stops[0]);
            break;
        }
        if (t->type == T_TEXT) {
            n = mk(lx, S_TEXT, t);
            if (!n)
                return RCD_ENOMEM;
            n->name.p = t->p;
            n->name.n = t->n;
            lx->p++;
        } else if (t->type == T_VAR_BEGIN) {
            lx->p++;
            n = mk(lx, S_OUT, t);
            if (!n)
                return RCD_ENOMEM;
            rc = parse_expr(lx, &n->a, 1);
            if (rc)
                return rc;
            if (cur(lx)->type != T_VAR_END)
                return perr(lx, cur(lx), RCD_EINVAL, "expected '}}', found '%.*s'",
                            (int)cur(lx)->n, cur(lx)->p);
            lx->p++;
        } else if (t->type == T_BLOCK_BEGIN) {
            tok_t_ *kw = &lx->v[lx->p + 1];
            if (kw->type != T_NAME)
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
            if (rc)
                return rc;
        } else {
            return perr(lx, t, RCD_EINVAL, "unexpected '%.*s'", (int)t->n, t->p);
        }
        rc = kid_push(lx, &k, n, (ct_str_t){0});
        if (rc)
            return rc;
    }
    kid_set(blk, &k);
    *out = blk;
    lx->nest--;
    return 0;
}

int ct_parse(chat_tmpl_t *t, const char *src, size_t n, char *err, size_t errlen)
{
    lexer_t lx = {.t = t, .src = src, .n = n, .line = 1, .col = 1, .err = err, .errlen = errlen};
    int rc = lex(&lx);
    if (rc == 0) {
        lx.p = 0;
        tok_t_ *st = NULL;
        rc = parse_body(&lx, NULL, &t->root, &st);
    }
    free(lx.v);
    if (rc == RCD_ENOMEM)
        rcd_fail(rc, err, errlen, "chat template: out of memory");
    return rc;
}
