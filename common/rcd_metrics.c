/* common: the metrics exposition (text 0.0.4 and OpenMetrics 1.0.0) and the process-wide
 * instruments (rcd_metrics.h). */
#include "common/rcd_metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"

/* ---- bucket sets ------------------------------------------------------------------------ */

#define MS 1000000ull /* nanoseconds */
static const uint64_t b_batch[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
static const uint64_t b_permille[] = {50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950, 1000};
static const uint64_t b_group[] = {1, 2, 4, 8, 16, 32, 64, 128};
/* store latencies: 100 us .. 10 s */
static const uint64_t b_io[] = {MS / 10,   MS / 4,    MS / 2,    MS,        5 * MS / 2, 5 * MS,
                                10 * MS,   25 * MS,   50 * MS,   100 * MS,  250 * MS,   500 * MS,
                                1000 * MS, 2500 * MS, 5000 * MS, 10000 * MS};

const char *const rcd_resume_src_name[RCD_RESUME__COUNT] = {"slot", "host_cache", "disk", "redis"};

rcd_metrics_t rcd_metrics = {
    .step_batch_size = RCD_HIST_INIT(b_batch, 1),
    .step_budget_use = RCD_HIST_INIT(b_permille, 1000),
    .group_commit_size = RCD_HIST_INIT(b_group, 1),
    .commit_ns = RCD_HIST_INIT(b_io, RCD_NS_PER_S),
    .resume_ns =
        {
            RCD_HIST_INIT(b_io, RCD_NS_PER_S),
            RCD_HIST_INIT(b_io, RCD_NS_PER_S),
            RCD_HIST_INIT(b_io, RCD_NS_PER_S),
            RCD_HIST_INIT(b_io, RCD_NS_PER_S),
        },
};

uint64_t rcd_hist_count(const rcd_hist_t *h)
{
    uint64_t n = 0;
    rcd_hist_t *m = (rcd_hist_t *)h;
    for (int i = 0; i <= h->n_bounds; i++)
        n += atomic_load_explicit(&m->b[i], memory_order_relaxed);
    return n;
}

/* ---- writer ------------------------------------------------------------------------------ */

void rcd_mw_init(rcd_mw_t *w, bool openmetrics)
{
    memset(w, 0, sizeof(*w));
    w->om = openmetrics;
}

void rcd_mw_free(rcd_mw_t *w)
{
    free(w->p);
    rcd_mw_init(w, w->om);
}

static void put(rcd_mw_t *w, const char *s, size_t n)
{
    if (w->err) return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (w->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(w->p, cap);
        if (!p) {
            w->err = RCD_ENOMEM;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = 0;
}

static void puts_(rcd_mw_t *w, const char *s)
{
    put(w, s, strlen(s));
}

static void putf(rcd_mw_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(rcd_mw_t *w, const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0) put(w, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* Escapes backslash and newline (and the double quote in label values, and in OpenMetrics
 * help text). */
static void put_escaped(rcd_mw_t *w, const char *s, bool quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *e = NULL;
        if (*s == '\\')
            e = "\\\\";
        else if (*s == '\n')
            e = "\\n";
        else if (*s == '"' && quote)
            e = "\\\"";
        if (!e) continue;
        put(w, run, (size_t)(s - run));
        puts_(w, e);
        run = s + 1;
    }
    put(w, run, (size_t)(s - run));
}

void rcd_metrics_fmt_double(char *buf, size_t len, double v)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) { /* the shortest that reads back */
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".e") && strlen(buf) + 3 <= len) strcat(buf, ".0");
}

static const char *suffix(rcd_mtype_t t)
{
    return t == RCD_MT_COUNTER ? "_total" : t == RCD_MT_INFO ? "_info" : "";
}

void rcd_mw_family(rcd_mw_t *w, const char *name, rcd_mtype_t type, const char *unit,
                   const char *help)
{
    static const char *types[] = {"counter", "gauge", "histogram", "info"};
    w->family = name;
    w->type = type;
    if (w->om) {
        putf(w, "# TYPE %s %s\n", name, types[type]);
        if (unit && unit[0]) putf(w, "# UNIT %s %s\n", name, unit);
        putf(w, "# HELP %s ", name);
        put_escaped(w, help, true);
        puts_(w, "\n");
        return;
    }
    putf(w, "# HELP %s%s ", name, suffix(type));
    put_escaped(w, help, false);
    putf(w, "\n# TYPE %s%s %s\n", name, suffix(type), type == RCD_MT_INFO ? "gauge" : types[type]);
}

void rcd_mw_common(rcd_mw_t *w, const rcd_label_t *labels, int n)
{
    w->common = labels;
    w->n_common = labels ? n : 0;
}

static void put_labels(rcd_mw_t *w, const rcd_label_t *l, int n, const char *le)
{
    if (!w->n_common && !n && !le) return;
    bool first = true;
    puts_(w, "{");
    for (int pass = 0; pass < 2; pass++) {
        const rcd_label_t *ls = pass ? l : w->common;
        int m = pass ? n : w->n_common;
        for (int i = 0; i < m; i++) {
            putf(w, "%s%s=\"", first ? "" : ",", ls[i].name);
            put_escaped(w, ls[i].value ? ls[i].value : "", true);
            puts_(w, "\"");
            first = false;
        }
    }
    if (le) putf(w, "%sle=\"%s\"", first ? "" : ",", le);
    puts_(w, "}");
}

void rcd_mw_uint(rcd_mw_t *w, const rcd_label_t *labels, int n, uint64_t v)
{
    putf(w, "%s%s", w->family, suffix(w->type));
    put_labels(w, labels, n, NULL);
    putf(w, " %llu\n", (unsigned long long)v);
}

void rcd_mw_double(rcd_mw_t *w, const rcd_label_t *labels, int n, double v)
{
    char num[40];
    rcd_metrics_fmt_double(num, sizeof(num), v);
    putf(w, "%s%s", w->family, suffix(w->type));
    put_labels(w, labels, n, NULL);
    putf(w, " %s\n", num);
}

void rcd_mw_hist(rcd_mw_t *w, const rcd_label_t *labels, int n, const rcd_hist_t *h)
{
    rcd_hist_t *m = (rcd_hist_t *)h;
    uint64_t cum = 0;
    char le[40];
    for (int i = 0; i <= h->n_bounds; i++) {
        cum += atomic_load_explicit(&m->b[i], memory_order_relaxed);
        if (i < h->n_bounds)
            rcd_metrics_fmt_double(le, sizeof(le), (double)h->bounds[i] / (double)h->per);
        else
            snprintf(le, sizeof(le), "+Inf");
        putf(w, "%s_bucket", w->family);
        put_labels(w, labels, n, le);
        putf(w, " %llu\n", (unsigned long long)cum);
    }
    char sum[40];
    rcd_metrics_fmt_double(sum, sizeof(sum),
                           (double)atomic_load_explicit(&m->sum, memory_order_relaxed) /
                               (double)h->per);
    putf(w, "%s_sum", w->family);
    put_labels(w, labels, n, NULL);
    putf(w, " %s\n%s_count", sum, w->family);
    put_labels(w, labels, n, NULL);
    putf(w, " %llu\n", (unsigned long long)cum);
}

int rcd_mw_finish(rcd_mw_t *w, char **out, size_t *len)
{
    if (w->om) puts_(w, "# EOF\n");
    if (!w->err && !w->p) put(w, "", 0); /* an empty exposition is still a string */
    int rc = w->err;
    if (rc) {
        rcd_mw_free(w);
        return rc;
    }
    *out = w->p;
    *len = w->len;
    w->p = NULL;
    rcd_mw_init(w, w->om);
    return 0;
}
