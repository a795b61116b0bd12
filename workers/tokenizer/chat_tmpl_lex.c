/* Chat templates: the lexer — jinja2's, with the trim_blocks and lstrip_blocks Hugging Face
 * sets, Python string-literal escapes, and line:column positions for errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl_int.h"

static void cursor_to(ct_lexer_t *lx, size_t off)
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

static int lex_fail(ct_lexer_t *lx, size_t off, int rc, const char *what)
{
    cursor_to(lx, off);
    return rcd_fail(rc, lx->err, lx->errlen, "chat template line %d:%d: %s", lx->line, lx->col,
                    what);
}

static int push_tok(ct_lexer_t *lx, int type, size_t off, const char *p, size_t n)
{
    if (lx->nt == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        ct_tok_t *v = realloc(lx->v, cap * sizeof(*v));
        if (!v) return RCD_ENOMEM;
        lx->v = v;
        lx->cap = cap;
    }
    cursor_to(lx, off);
    ct_tok_t *t = &lx->v[lx->nt++];
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
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string literal's value with Python's unicode-escape decoding (jinja2's); unknown escapes
 * stay as written. */
static int lex_string(ct_lexer_t *lx, size_t start, size_t *end)
{
    char q = lx->src[start];
    size_t i = start + 1;
    while (i < lx->n && lx->src[i] != q) {
        if (lx->src[i] == '\\' && i + 1 < lx->n) i++;
        i++;
    }
    if (i >= lx->n) return lex_fail(lx, start, RCD_EINVAL, "unterminated string literal");
    *end = i + 1;
    const char *s = lx->src + start + 1;
    size_t n = i - start - 1, k = 0;
    char *o = ct_alloc(&lx->t->arena, n + 1);
    if (!o) return RCD_ENOMEM;
    for (size_t j = 0; j < n; j++) {
        if (s[j] != '\\' || j + 1 >= n) {
            o[k++] = s[j];
            continue;
        }
        char c = s[++j];
        int digits = 0;
        switch (c) {
        case 'n':
            o[k++] = '\n';
            break;
        case 't':
            o[k++] = '\t';
            break;
        case 'r':
            o[k++] = '\r';
            break;
        case '\\':
            o[k++] = '\\';
            break;
        case '\'':
            o[k++] = '\'';
            break;
        case '"':
            o[k++] = '"';
            break;
        case 'a':
            o[k++] = '\a';
            break;
        case 'b':
            o[k++] = '\b';
            break;
        case 'f':
            o[k++] = '\f';
            break;
        case 'v':
            o[k++] = '\v';
            break;
        case '\n':
            break;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
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
    int rc = push_tok(lx, CTK_STR, start, o, k);
    return rc;
}

/* Tokens inside {{ }} or {% %} up to the end delimiter; returns its kind via *end_mod. */
static int lex_tag(ct_lexer_t *lx, size_t *pos, int block, char *end_mod)
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
                return push_tok(lx, block ? CTK_BLOCK_END : CTK_VAR_END, i, s, 3);
            }
            if (left >= 2 && s[0] == ec && s[1] == '}') {
                *end_mod = 0;
                *pos = i + 2;
                return push_tok(lx, block ? CTK_BLOCK_END : CTK_VAR_END, i, s, 2);
            }
        }
        int rc;
        if (is_name0(s[0])) {
            size_t j = 1;
            while (j < left && (is_name0(s[j]) || is_digit(s[j])))
                j++;
            rc = push_tok(lx, CTK_NAME, i, s, j);
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
                if (e < left && (s[e] == '+' || s[e] == '-')) e++;
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
                if (s[m] != '_') num[k++] = s[m];
            num[k] = 0;
            rc = push_tok(lx, fl ? CTK_FLOAT : CTK_INT, i, s, j);
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
                if (left >= 2 && s[0] == two[m][0] && s[1] == two[m][1]) len = 2;
            if (!len && strchr("+-/*%~[](){}<>=.:|,", s[0]) && s[0]) len = 1;
            if (!len) return lex_fail(lx, i, RCD_EINVAL, "unexpected character");
            if (len == 1 && (s[0] == '(' || s[0] == '[' || s[0] == '{')) depth++;
            if (len == 1 && (s[0] == ')' || s[0] == ']' || s[0] == '}') && depth > 0) depth--;
            rc = push_tok(lx, CTK_OP, i, s, len);
            i += len;
        }
        if (rc) return rc;
    }
}

/* Splits lx->src into lx->v: text, delimiters and the tokens inside tags (jinja2's lexer with
 * trim_blocks and lstrip_blocks); ends with CTK_EOF. */
int ct_lex(ct_lexer_t *lx)
{
    size_t pos = 0;
    int strip_next = 0, trim_nl = 0, line_starting = 1;
    while (pos <= lx->n) {
        size_t t = pos;
        while (t + 1 < lx->n &&
               !(lx->src[t] == '{' &&
                 (lx->src[t + 1] == '{' || lx->src[t + 1] == '%' || lx->src[t + 1] == '#')))
            t++;
        int found = t + 1 < lx->n;
        if (!found) t = lx->n;
        size_t a = pos, b = t;
        if (strip_next) {
            while (a < b && is_ws(lx->src[a]))
                a++;
        } else if (trim_nl && a < b && lx->src[a] == '\n') {
            a++;
        }
        if (a > pos) line_starting = lx->src[a - 1] == '\n';
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
                if (m == b) b = l;
            }
        }
        if (b > a) {
            int rc = push_tok(lx, CTK_TEXT, a, lx->src + a, b - a);
            if (rc) return rc;
        }
        if (!found) break;
        size_t inner = t + 2 + (mod == '-' || mod == '+');
        char end_mod = 0;
        if (kind == '#') {
            size_t e = inner;
            while (e + 1 < lx->n && !(lx->src[e] == '#' && lx->src[e + 1] == '}'))
                e++;
            if (e + 1 >= lx->n) return lex_fail(lx, t, RCD_EINVAL, "unclosed comment '{#'");
            end_mod =
                e > inner && (lx->src[e - 1] == '-' || lx->src[e - 1] == '+') ? lx->src[e - 1] : 0;
            pos = e + 2;
            kind = '%'; /* trims like a block */
        } else {
            int rc = push_tok(lx, kind == '{' ? CTK_VAR_BEGIN : CTK_BLOCK_BEGIN, t, lx->src + t,
                              inner - t);
            if (rc) return rc;
            pos = inner;
            rc = lex_tag(lx, &pos, kind == '%', &end_mod);
            if (rc) return rc;
        }
        strip_next = end_mod == '-';
        trim_nl = kind == '%' && end_mod != '+' && end_mod != '-';
        line_starting = 0;
        if (strip_next) {
            size_t e = pos;
            while (e < lx->n && is_ws(lx->src[e]))
                e++;
            if (e > pos) line_starting = lx->src[e - 1] == '\n';
        } else if (trim_nl && pos < lx->n && lx->src[pos] == '\n') {
            line_starting = 1;
        }
    }
    return push_tok(lx, CTK_EOF, lx->n, lx->src + lx->n, 0);
}
