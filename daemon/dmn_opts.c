/* daemon: option parsing driven by DMN_OPTIONS. Every option is first UNSET; layers are
 * applied from highest precedence down and only fill options still UNSET. Each value is
 * checked against its row's range or choices as it is set, defaults included. */
#include "daemon/dmn_opts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "common/rcd_path.h"

enum { T_STR, T_INT, T_BOOL };

typedef struct opt_row {
    const char *name, *def, *env, *help;
    int type;
    size_t off;
    long min, max;       /* INT */
    const char *choices; /* STR: "a|b|c", NULL: any */
} opt_row_t;

static const opt_row_t g_rows[] = {
#define DMN__ROW(name_, type_, def_, env_, allowed, help_)                                         \
    {.name = #name_,                                                                               \
     .def = def_,                                                                                  \
     .env = env_,                                                                                  \
     .help = help_,                                                                                \
     .type = T_##type_,                                                                            \
     .off = offsetof(dmn_opts_t, name_),                                                           \
     allowed},
    DMN_OPTIONS(DMN__ROW)
#undef DMN__ROW
};
#define N_ROWS (sizeof(g_rows) / sizeof(g_rows[0]))

/* "a|b|c" as "a, b or c". */
static void choices_text(const char *choices, char *buf, size_t len)
{
    size_t p = 0;
    buf[0] = 0;
    for (const char *w = choices; *w && p + 1 < len;) {
        const char *e = strchr(w, '|');
        size_t n = e ? (size_t)(e - w) : strlen(w);
        const char *sep = w == choices ? "" : e ? ", " : " or ";
        int k = snprintf(buf + p, len - p, "%s%.*s", sep, (int)n, w);
        if (k < 0) break;
        p += (size_t)k;
        w += n + (e != NULL);
    }
}

static bool is_choice(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *w = choices; *w;) {
        const char *e = strchr(w, '|');
        size_t wn = e ? (size_t)(e - w) : strlen(w);
        if (wn == n && !strncmp(w, v, n)) return true;
        w += wn + (e != NULL);
    }
    return false;
}

/* An INT range whose top is only the type's limit: shown as "at least min". */
static bool open_ended(const opt_row_t *r)
{
    return r->max == DMN_INT_MAX || r->max == DMN_LONG_MAX;
}

/* The option as a flag: --name with dashes for underscores. */
static void flag_name(const opt_row_t *r, char *buf, size_t len)
{
    snprintf(buf, len, "--%s", r->name);
    for (char *p = buf + 2; *p; p++)
        if (*p == '_') *p = '-';
}

/* What a row allows, for --help ("" when anything of its type goes). */
static void allowed_text(const opt_row_t *r, char *buf, size_t len)
{
    buf[0] = 0;
    if (r->type == T_STR && r->choices)
        choices_text(r->choices, buf, len);
    else if (r->type == T_INT && !open_ended(r))
        snprintf(buf, len, "%ld to %ld", r->min, r->max);
    else if (r->type == T_INT && r->min > 0)
        snprintf(buf, len, "at least %ld", r->min);
}

void dmn_opts_help(const char *prog)
{
    printf("usage: %s [options]\n\nEvery option is also an environment variable and a config-file "
           "key (name = value).\nPrecedence: command line > environment > config file > "
           "default.\n\n",
           prog);
    for (size_t i = 0; i < N_ROWS; i++) {
        char flag[64], allowed[240];
        flag_name(&g_rows[i], flag, sizeof(flag));
        const char *meta = g_rows[i].type == T_INT ? " N" : g_rows[i].type == T_STR ? " S" : "";
        char left[96];
        snprintf(left, sizeof(left), "%s%s", flag, meta);
        allowed_text(&g_rows[i], allowed, sizeof(allowed));
        printf("  %-26s %s\n  %-26s [env %s, default \"%s\"%s%s]\n", left, g_rows[i].help, "",
               g_rows[i].env, g_rows[i].def, allowed[0] ? "; " : "", allowed);
    }
    printf("  %-26s %s\n", "--help", "print this help");
}

/* Checks v against the row's type and allowed values and stores it; src says where v came
 * from, for the message. */
static int set_value(dmn_opts_t *o, const opt_row_t *r, const char *v, const char *src, char *err,
                     size_t errlen)
{
    void *field = (char *)o + r->off;
    char allowed[240], flag[64];
    flag_name(r, flag, sizeof(flag));
    switch (r->type) {
    case T_STR: {
        if (r->choices && !is_choice(r->choices, v)) {
            choices_text(r->choices, allowed, sizeof(allowed));
            return rcd_fail(RCD_EINVAL, err, errlen, "%s: %s must be %s, got '%s'", src, flag,
                            allowed, v);
        }
        char *d = strdup(v);
        if (!d) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        *(char **)field = d;
        return 0;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (end == v || *end)
            return rcd_fail(RCD_EINVAL, err, errlen, "%s: %s wants an integer, got '%s'", src, flag,
                            v);
        if (errno == ERANGE || x < r->min || x > r->max) {
            if (open_ended(r))
                return rcd_fail(RCD_EINVAL, err, errlen, "%s: %s must be at least %ld, got '%s'",
                                src, flag, r->min, v);
            return rcd_fail(RCD_EINVAL, err, errlen, "%s: %s must be between %ld and %ld, got '%s'",
                            src, flag, r->min, r->max, v);
        }
        *(long *)field = x;
        return 0;
    }
    default:
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *(bool *)field = true;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off"))
            *(bool *)field = false;
        else
            return rcd_fail(RCD_EINVAL, err, errlen, "%s: %s wants true or false, got '%s'", src,
                            flag, v);
        return 0;
    }
}

static const opt_row_t *find_row(const char *name, size_t len)
{
    for (size_t i = 0; i < N_ROWS; i++) {
        const char *n = g_rows[i].name;
        if (strlen(n) != len) continue;
        size_t k = 0;
        while (k < len && (n[k] == name[k] || (n[k] == '_' && name[k] == '-')))
            k++;
        if (k == len) return &g_rows[i];
    }
    return NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = 0;
    return s;
}

static int load_file(dmn_opts_t *o, bool *set, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) return rcd_fail(RCD_EIO, err, errlen, "config %s: %s", path, strerror(errno));
    char line[1024], src[600];
    int rc = 0, lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = rcd_fail(RCD_EINVAL, err, errlen, "config %s:%d: expected name = value", path,
                          lineno);
            break;
        }
        *eq = 0;
        char *k = trim(s), *v = trim(eq + 1);
        const opt_row_t *r = find_row(k, strlen(k));
        if (!r || r->off == offsetof(dmn_opts_t, config)) {
            rc = rcd_fail(RCD_EINVAL, err, errlen, "config %s:%d: unknown option '%s'", path,
                          lineno, k);
            break;
        }
        size_t i = (size_t)(r - g_rows);
        if (set[i]) continue;
        snprintf(src, sizeof(src), "config %s:%d", path, lineno);
        if ((rc = set_value(o, r, v, src, err, errlen))) break;
        set[i] = true;
    }
    fclose(f);
    return rc;
}

int dmn_opts_parse(dmn_opts_t *o, int argc, char **argv, char *err, size_t errlen)
{
    bool set[N_ROWS] = {0};
    int rc = 0;
    memset(o, 0, sizeof(*o));
    /* command line */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            dmn_opts_help("recurd");
            return 1;
        }
        if (strncmp(a, "--", 2) != 0)
            return rcd_fail(RCD_EINVAL, err, errlen, "unexpected argument '%s' (see --help)", a);
        a += 2;
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const opt_row_t *r = find_row(a, len);
        bool negated = false;
        if (!r && len > 3 && !strncmp(a, "no-", 3)) {
            r = find_row(a + 3, len - 3);
            negated = r && r->type == T_BOOL;
            if (!negated) r = NULL;
        }
        if (!r)
            return rcd_fail(RCD_EINVAL, err, errlen, "unknown option '%s' (see --help)", argv[i]);
        const char *v;
        if (eq)
            v = eq + 1;
        else if (r->type == T_BOOL)
            v = negated ? "false" : "true";
        else if (i + 1 < argc)
            v = argv[++i];
        else
            return rcd_fail(RCD_EINVAL, err, errlen, "option --%s needs a value", r->name);
        size_t k = (size_t)(r - g_rows);
        if (set[k] && r->type == T_STR) free(*(char **)((char *)o + r->off));
        if ((rc = set_value(o, r, v, "command line", err, errlen))) return rc;
        set[k] = true;
    }
    /* environment */
    for (size_t k = 0; k < N_ROWS; k++) {
        const char *v = getenv(g_rows[k].env);
        if (set[k] || !v) continue;
        char src[80];
        snprintf(src, sizeof(src), "environment %s", g_rows[k].env);
        if ((rc = set_value(o, &g_rows[k], v, src, err, errlen))) return rc;
        set[k] = true;
    }
    /* config file */
    if (set[0] && o->config[0] && (rc = load_file(o, set, o->config, err, errlen))) return rc;
    /* defaults */
    for (size_t k = 0; k < N_ROWS; k++)
        if (!set[k] && (rc = set_value(o, &g_rows[k], g_rows[k].def, "default", err, errlen)))
            return rc;
    if (strlen(o->state_dir) > 3000)
        return rcd_fail(RCD_EINVAL, err, errlen, "--state-dir is longer than 3000 bytes");
    if (o->max_step_tokens < o->slots) /* every running sequence feeds a token each step */
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "--max-step-tokens (%ld) must be at least --slots (%ld): each running "
                        "sequence takes a token of every step", (long)o->max_step_tokens,
                        (long)o->slots);
    return 0;
}

void dmn_opts_free(dmn_opts_t *o)
{
    for (size_t k = 0; k < N_ROWS; k++)
        if (g_rows[k].type == T_STR) {
            free(*(char **)((char *)o + g_rows[k].off));
            *(char **)((char *)o + g_rows[k].off) = NULL;
        }
}

int dmn_opts_state_dir(const dmn_opts_t *o, char *buf, size_t len)
{
    const char *d = o->ephemeral ? "" : o->state_dir;
    if (strcmp(d, DMN_DEFAULT_STATE_DIR) != 0) return rcd_path_fmt(buf, len, "%s", d);
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (xdg && xdg[0] == '/') return rcd_path_join(buf, len, xdg, "recurd");
    if (home && home[0] == '/') return rcd_path_join(buf, len, home, ".local/state/recurd");
    return rcd_path_fmt(buf, len, "recurd-state");
}
