/* workers/tokenizer: internals of the chat-template interpreter (chat_tmpl*.c) — values, the
 * arena they live in, the syntax tree, and the helpers the evaluator and the library share. */
#ifndef RCD_CHAT_TMPL_INT_H
#define RCD_CHAT_TMPL_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/chat_tmpl.h"

/* ---- arena: bump allocation in chained blocks, budgeted (bytes) ---- */
typedef struct ct_arena_blk ct_arena_blk_t;
typedef struct ct_arena {
    ct_arena_blk_t *head;
    size_t used, budget; /* bytes handed out so far / the cap (0: none) */
    int over;            /* set once the budget refused an allocation */
} ct_arena_t;

void *ct_alloc(ct_arena_t *a, size_t n); /* zeroed; NULL when out of memory or over budget */
char *ct_strdup(ct_arena_t *a, const char *s, size_t n);
void ct_arena_free(ct_arena_t *a);

/* ---- values ---- */
enum ct_type {
    CT_UNDEF,
    CT_NONE,
    CT_BOOL,
    CT_INT,
    CT_FLOAT,
    CT_STR,
    CT_LIST, /* also tuples */
    CT_DICT, /* also namespace() objects (ns = 1): the only mutable values */
    CT_LOOP,
    CT_MACRO,
    CT_FUNC, /* a global function: raise_exception, range, namespace, dict, strftime_now */
    CT_CYCLE /* loop.cycle, bound to its loop */
};

typedef struct ct_list ct_list_t;
typedef struct ct_dict ct_dict_t;
typedef struct ct_loop ct_loop_t;
typedef struct ct_node ct_node_t;

typedef struct ct_val {
    int t;
    union {
        int64_t i; /* CT_BOOL, CT_INT, CT_FUNC (which) */
        double f;
        struct {
            const char *p;
            size_t n;
        } s; /* CT_STR; CT_UNDEF: the name that was undefined (may be NULL) */
        ct_list_t *l;
        ct_dict_t *d;
        ct_loop_t *loop;
        struct ct_macro *m;
    } u;
} ct_val_t;

struct ct_list {
    ct_val_t *v;
    size_t n, cap;
    int tuple; /* prints as (a, b): tuple literals, items() and dictsort pairs */
};

typedef struct ct_str {
    const char *p;
    size_t n;
} ct_str_t;

struct ct_dict {
    ct_str_t *k;
    ct_val_t *v;
    size_t n, cap;
    int ns; /* a namespace(): attributes may be assigned */
};

typedef struct ct_frame ct_frame_t;

/* A macro and the scope it was defined in (it sees that scope's names when called). */
struct ct_macro {
    const ct_node_t *node;
    ct_frame_t *scope;
};

struct ct_loop {
    int64_t index0, length;
    ct_list_t *items;
};

/* ---- syntax tree ---- */
enum ct_kind {
    /* expressions */
    N_LIT,
    N_NAME,
    N_LIST,
    N_TUPLE,
    N_DICT,   /* kids: key, value, key, value, ... */
    N_ATTR,   /* a.name */
    N_INDEX,  /* a[b] */
    N_SLICE,  /* a[k0:k1:k2], absent parts NULL */
    N_CALL,   /* a(kids), kw[i] names keyword arguments */
    N_FILTER, /* a|name(kids) */
    N_TEST,   /* a is [not] name(kids) */
    N_UNARY,  /* op: '-', '+', 'n' (not) */
    N_BIN,    /* op: + - * / F(//) % P(**) ~ */
    N_CMP,    /* op: E(==) N(!=) < > L(<=) G(>=) i(in) I(not in) */
    N_AND,
    N_OR,
    N_COND, /* b if a else c (c may be NULL) */
    /* statements */
    S_TEXT, /* name = the text */
    S_OUT,  /* {{ a }} */
    S_BLOCK,
    S_IF,    /* kids: cond, body, cond, body, ..., [else body] (odd count: else) */
    S_FOR,   /* targets in names, a = iterable, b = filter or NULL, kids[0] body, kids[1] else */
    S_SET,   /* names: target(s); name2: attribute (ns.attr); a = value or kids[0] block body */
    S_MACRO, /* name, names: params, kids: defaults (NULL where none) then body last */
    S_BREAK,
    S_CONTINUE
};

struct ct_node {
    int kind, op, neg, line, col;
    ct_val_t lit;
    ct_str_t name, name2;
    ct_node_t *a, *b, *c;
    ct_node_t **kids;
    ct_str_t *kw; /* N_CALL/N_FILTER/N_TEST: keyword names, p == NULL for positional */
    size_t nkids;
    ct_str_t *names;
    size_t nnames;
};

struct chat_tmpl {
    ct_arena_t arena;
    ct_node_t *root;
};

/* ---- tokens (chat_tmpl_lex.c) and the parser's state (chat_tmpl_parse.c) ---- */
enum ct_tok_type {
    CTK_TEXT,
    CTK_VAR_BEGIN,
    CTK_VAR_END,
    CTK_BLOCK_BEGIN,
    CTK_BLOCK_END,
    CTK_NAME,
    CTK_INT,
    CTK_FLOAT,
    CTK_STR,
    CTK_OP,
    CTK_EOF
};

typedef struct ct_tok {
    int type, line, col;
    const char *p; /* source text (CTK_STR: the decoded value, in the template's arena) */
    size_t n;
    int64_t i;
    double f;
} ct_tok_t;

typedef struct ct_lexer {
    chat_tmpl_t *t;
    const char *src;
    size_t n;
    ct_tok_t *v; /* malloc'd; the parser frees it */
    size_t nt, cap;
    size_t cpos; /* line/column cursor */
    int line, col;
    size_t p;  /* the parser's position in v */
    int nest;  /* the parser's recursion depth */
    int loops; /* for loops around the current statement (break/continue need one) */
    char *err;
    size_t errlen;
} ct_lexer_t;

int ct_lex(ct_lexer_t *lx);

/* Parses normalized template text into t->root (chat_tmpl_parse.c). */
int ct_parse(chat_tmpl_t *t, const char *src, size_t n, char *err, size_t errlen);

/* ---- render state and library (chat_tmpl.c, chat_tmpl_lib.c) ---- */
typedef struct ct_buf {
    char *p;
    size_t n, cap;
} ct_buf_t;

typedef struct ct_rt {
    ct_arena_t arena;
    ct_buf_t out;
    size_t max_output;
    uint64_t steps, max_steps;
    int depth, max_depth;
    int64_t now;
    ct_frame_t *globals; /* the context's variables */
    ct_frame_t *top;     /* the template's own (set at top level, macros): macros see it */
    char *err;
    size_t errlen;
    int rc;     /* first error */
    int raised; /* the error came from raise_exception: err is the message alone */
    int brk;    /* 1 break, 2 continue pending */
} ct_rt_t;

/* Records the first error (with the node's line:column) and returns rc. */
int ct_fail(ct_rt_t *rt, const ct_node_t *at, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* *out = an Undefined that remembers why (the message jinja2 raises when it is used). */
int ct_undef(ct_rt_t *rt, ct_val_t *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The error of using the Undefined v. */
int ct_fail_undef(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v);

/* What values do (chat_tmpl_ops.c), jinja2's semantics; each returns 0 or the error it
 * recorded with ct_fail. obj.k / obj[key] / obj[a:b:c]: */
int ct_attr_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, const char *k, size_t kn,
               ct_val_t *out);
int ct_index_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, const ct_val_t *key,
                ct_val_t *out);
int ct_slice_of(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, ct_val_t part[3],
                ct_val_t *out);
/* a op b, op as the parser stores it in ct_node_t.op: arithmetic (*out), comparison (*res 0/1). */
int ct_arith(ct_rt_t *rt, const ct_node_t *at, int op, const ct_val_t *a, const ct_val_t *b,
             ct_val_t *out);
int ct_compare(ct_rt_t *rt, const ct_node_t *at, int op, const ct_val_t *a, const ct_val_t *b,
               int *res);

int ct_truthy(const ct_val_t *v);
int ct_equal(const ct_val_t *a, const ct_val_t *b);
/* Python str(): appended to b. */
int ct_to_str(ct_rt_t *rt, ct_buf_t *b, const ct_val_t *v);
/* Python str() as a value (strings as themselves). */
int ct_str_val(ct_rt_t *rt, const ct_val_t *v, ct_val_t *out);
int ct_buf_put(ct_rt_t *rt, ct_buf_t *b, const char *s, size_t n);
ct_val_t ct_mkstr(const char *p, size_t n);
int ct_mkstr_copy(ct_rt_t *rt, const char *p, size_t n, ct_val_t *out);
ct_list_t *ct_list_new(ct_rt_t *rt, size_t cap);
int ct_list_push(ct_rt_t *rt, ct_list_t *l, ct_val_t v);
ct_dict_t *ct_dict_new(ct_rt_t *rt, size_t cap);
int ct_dict_set(ct_rt_t *rt, ct_dict_t *d, const char *k, size_t kn, ct_val_t v);
ct_val_t *ct_dict_get(const ct_dict_t *d, const char *k, size_t kn);
int ct_from_json(ct_rt_t *rt, const cJSON *j, ct_val_t *out);
/* The items a for loop walks: lists, dict keys, string characters; undefined: empty. */
int ct_iterate(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_list_t **out);
const char *ct_type_name(const ct_val_t *v);

/* Filters, tests, methods and global functions; args already evaluated. */
int ct_filter(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_val_t *args, ct_str_t *kw,
              size_t nargs, ct_val_t *out);
int ct_test(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, ct_val_t *args, size_t nargs,
            int *out);
/* 1 when obj has a method `name` (and *out is its result), 0 when not, <0 on error. */
int ct_method(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *obj, ct_str_t name, ct_val_t *args,
              ct_str_t *kw, size_t nargs, ct_val_t *out);
int ct_call_func(ct_rt_t *rt, const ct_node_t *at, int fn, ct_val_t *args, ct_str_t *kw,
                 size_t nargs, ct_val_t *out);
enum { CT_FN_RAISE, CT_FN_RANGE, CT_FN_NAMESPACE, CT_FN_DICT, CT_FN_STRFTIME };
int ct_global_func(const char *name, size_t n);
/* 1 when the filter / test exists (checked at compile time, as jinja2 does). */
int ct_filter_known(const char *name, size_t n);
int ct_test_known(const char *name, size_t n);
int ct_tojson(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, int indent, int ascii, int sort,
              const ct_str_t *seps, ct_val_t *out);
uint32_t ct_utf8_next(const char *s, size_t n, size_t *i);

/* ---- helpers shared by the render files (chat_tmpl.c, _ops.c, _lib.c, _filter.c) ---- */
/* The error of a failed allocation: the render memory budget, or out of memory. */
static inline int ct_oom(ct_rt_t *rt, const ct_node_t *at)
{
    if (rt->arena.over)
        return ct_fail(rt, at, RCD_ERANGE, "render memory budget (%zu bytes) exceeded",
                       rt->arena.budget);
    return ct_fail(rt, at, RCD_ENOMEM, "out of memory");
}

static inline ct_val_t ct_mkbool(int b)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_BOOL;
    v.u.i = b != 0;
    return v;
}

static inline ct_val_t ct_mkint(int64_t i)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_INT;
    v.u.i = i;
    return v;
}

static inline ct_val_t ct_mklist(ct_list_t *l)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_LIST;
    v.u.l = l;
    return v;
}

static inline ct_val_t ct_mkundef(void)
{
    ct_val_t v;
    memset(&v, 0, sizeof(v));
    v.t = CT_UNDEF;
    return v;
}

/* Arguments by position or keyword: the value of parameter `name` at position `pos`. */
static inline const ct_val_t *ct_arg(ct_val_t *args, ct_str_t *kw, size_t nargs, size_t pos,
                                     const char *name)
{
    size_t k = 0;
    for (size_t i = 0; i < nargs; i++) {
        if (kw && kw[i].p) {
            if (kw[i].n == strlen(name) && memcmp(kw[i].p, name, kw[i].n) == 0) return &args[i];
        } else if (k++ == pos) {
            return &args[i];
        }
    }
    return NULL;
}

static inline int ct_need_str(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, const char *what)
{
    if (v->t == CT_STR) return 0;
    return ct_fail(rt, at, RCD_EINVAL, "%s: expected a string, got %s", what, ct_type_name(v));
}

/* Python str methods and builtins used by filters too (chat_tmpl_lib.c). */
ct_val_t ct_strip(const ct_val_t *s, const ct_val_t *chars, int left, int right);
/* mode: 'u' upper, 'l' lower, 'c' capitalize, 't' Python str.title, 'j' jinja2's title. */
int ct_recase(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, int mode, ct_val_t *out);
int ct_replace(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *old,
               const ct_val_t *new, int64_t count, ct_val_t *out);
int ct_split(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *s, const ct_val_t *sep,
             int64_t maxsplit, ct_val_t *out);
int ct_join(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *seq, const ct_val_t *sep,
            const ct_val_t *attr, ct_val_t *out);
int ct_length(ct_rt_t *rt, const ct_node_t *at, const ct_val_t *v, int64_t *n);
int64_t ct_str_len(const ct_val_t *s);

#endif
