/* The metrics registry and its exposition: exact text in both formats, escaping, histogram
 * buckets (inclusive bounds, cumulative, +Inf), number formatting, concurrent updates. */
#include <pthread.h>
#include <string.h>

#include "common/rcd_metrics.h"
#include "tests/support/rcd_test.h"

static const uint64_t bounds3[] = {10, 100, 1000};

static char *finish(rcd_mw_t *w)
{
    char *out = NULL;
    size_t len = 0;
    CHECK(rcd_mw_finish(w, &out, &len) == 0);
    CHECK(out && strlen(out) == len);
    return out;
}

/* A small registry: a labelled counter, a gauge, a histogram in milliseconds, an info. */
static void render_small(rcd_mw_t *w)
{
    static rcd_hist_t h = RCD_HIST_INIT(bounds3, 1000);
    static bool once;
    if (!once) {
        rcd_hist_observe(&h, 5);    /* <= 10 */
        rcd_hist_observe(&h, 10);   /* <= 10: bounds are inclusive */
        rcd_hist_observe(&h, 11);   /* <= 100 */
        rcd_hist_observe(&h, 5000); /* +Inf */
        once = true;
    }
    rcd_label_t model = {"model", "m1"};
    rcd_mw_family(w, "t_build", RCD_MT_INFO, NULL, "Build.");
    rcd_mw_uint(w, (rcd_label_t[]){{"version", "1.2"}}, 1, 1);
    rcd_mw_common(w, &model, 1);
    rcd_mw_family(w, "t_requests", RCD_MT_COUNTER, NULL, "Requests.");
    rcd_mw_uint(w, (rcd_label_t[]){{"outcome", "stop"}}, 1, 3);
    rcd_mw_uint(w, (rcd_label_t[]){{"outcome", "length"}}, 1, 0);
    rcd_mw_family(w, "t_free_bytes", RCD_MT_GAUGE, "bytes", "Free.");
    rcd_mw_double(w, NULL, 0, 2.5);
    rcd_mw_family(w, "t_latency_seconds", RCD_MT_HISTOGRAM, "seconds", "Latency.");
    rcd_mw_hist(w, NULL, 0, &h);
    rcd_mw_common(w, NULL, 0);
}

static void test_text_exact(void)
{
    rcd_mw_t w;
    rcd_mw_init(&w, false);
    render_small(&w);
    char *out = finish(&w);
    const char *want = "# HELP t_build_info Build.\n"
                       "# TYPE t_build_info gauge\n"
                       "t_build_info{version=\"1.2\"} 1\n"
                       "# HELP t_requests_total Requests.\n"
                       "# TYPE t_requests_total counter\n"
                       "t_requests_total{model=\"m1\",outcome=\"stop\"} 3\n"
                       "t_requests_total{model=\"m1\",outcome=\"length\"} 0\n"
                       "# HELP t_free_bytes Free.\n"
                       "# TYPE t_free_bytes gauge\n"
                       "t_free_bytes{model=\"m1\"} 2.5\n"
                       "# HELP t_latency_seconds Latency.\n"
                       "# TYPE t_latency_seconds histogram\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"0.01\"} 2\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"0.1\"} 3\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"1.0\"} 3\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"+Inf\"} 4\n"
                       "t_latency_seconds_sum{model=\"m1\"} 5.026\n"
                       "t_latency_seconds_count{model=\"m1\"} 4\n";
    CHECK_MSG(out && !strcmp(out, want), "got:\n%s", out ? out : "(null)");
    free(out);
}

static void test_openmetrics_exact(void)
{
    rcd_mw_t w;
    rcd_mw_init(&w, true);
    render_small(&w);
    char *out = finish(&w);
    const char *want = "# TYPE t_build info\n"
                       "# HELP t_build Build.\n"
                       "t_build_info{version=\"1.2\"} 1\n"
                       "# TYPE t_requests counter\n"
                       "# HELP t_requests Requests.\n"
                       "t_requests_total{model=\"m1\",outcome=\"stop\"} 3\n"
                       "t_requests_total{model=\"m1\",outcome=\"length\"} 0\n"
                       "# TYPE t_free_bytes gauge\n"
                       "# UNIT t_free_bytes bytes\n"
                       "# HELP t_free_bytes Free.\n"
                       "t_free_bytes{model=\"m1\"} 2.5\n"
                       "# TYPE t_latency_seconds histogram\n"
                       "# UNIT t_latency_seconds seconds\n"
                       "# HELP t_latency_seconds Latency.\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"0.01\"} 2\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"0.1\"} 3\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"1.0\"} 3\n"
                       "t_latency_seconds_bucket{model=\"m1\",le=\"+Inf\"} 4\n"
                       "t_latency_seconds_sum{model=\"m1\"} 5.026\n"
                       "t_latency_seconds_count{model=\"m1\"} 4\n"
                       "# EOF\n";
    CHECK_MSG(out && !strcmp(out, want), "got:\n%s", out ? out : "(null)");
    free(out);
}

/* Label values escape \, " and newline in both formats; help text escapes \ and newline, and
 * " too in OpenMetrics. */
static void test_escaping(void)
{
    for (int om = 0; om < 2; om++) {
        rcd_mw_t w;
        rcd_mw_init(&w, om);
        rcd_mw_family(&w, "t_g", RCD_MT_GAUGE, NULL, "a \\ b\nc \"d\"");
        rcd_mw_uint(&w, (rcd_label_t[]){{"tenant", "x\"y\\z\nw"}}, 1, 7);
        char *out = finish(&w);
        const char *help =
            om ? "# HELP t_g a \\\\ b\\nc \\\"d\\\"\n" : "# HELP t_g a \\\\ b\\nc \"d\"\n";
        CHECK_MSG(out && strstr(out, help), "om %d:\n%s", om, out ? out : "(null)");
        CHECK_MSG(out && strstr(out, "t_g{tenant=\"x\\\"y\\\\z\\nw\"} 7\n"), "om %d:\n%s", om,
                  out ? out : "(null)");
        free(out);
    }
}

static void test_fmt_double(void)
{
    char b[40];
    struct {
        double v;
        const char *want;
    } cases[] = {
        {0.005, "0.005"}, {1.0, "1.0"},     {5000000 * 1e-9, "0.005"}, {2.5, "2.5"},
        {160.0, "160.0"}, {0.1, "0.1"},     {1.0 / 0.0, "+Inf"},       {-1.0 / 0.0, "-Inf"},
        {0.0, "0.0"},     {1e-4, "0.0001"}, {12345678.0, "12345678.0"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rcd_metrics_fmt_double(b, sizeof(b), cases[i].v);
        CHECK_MSG(!strcmp(b, cases[i].want), "%g: got %s, want %s", cases[i].v, b, cases[i].want);
    }
}

/* Buckets are per-bucket counts inside, cumulative outside; _count is the +Inf bucket. */
static void test_hist_buckets(void)
{
    static const uint64_t bs[] = {1, 2, 4};
    rcd_hist_t h = RCD_HIST_INIT(bs, 1);
    for (uint64_t v = 0; v <= 6; v++)
        rcd_hist_observe(&h, v); /* 0,1 | 2 | 3,4 | 5,6 */
    CHECK(h.b[0] == 2 && h.b[1] == 1 && h.b[2] == 2 && h.b[3] == 2);
    CHECK(rcd_hist_count(&h) == 7 && h.sum == 21);
    rcd_mw_t w;
    rcd_mw_init(&w, false);
    rcd_mw_family(&w, "t_h", RCD_MT_HISTOGRAM, NULL, "H.");
    rcd_mw_hist(&w, NULL, 0, &h);
    char *out = finish(&w);
    CHECK_MSG(out && strstr(out, "t_h_bucket{le=\"1.0\"} 2\nt_h_bucket{le=\"2.0\"} 3\n"
                                 "t_h_bucket{le=\"4.0\"} 5\nt_h_bucket{le=\"+Inf\"} 7\n"
                                 "t_h_sum 21.0\nt_h_count 7\n"),
              "%s", out ? out : "(null)");
    free(out);
}

#define N_THREADS 4
#define N_ADDS 100000
static rcd_counter_t g_c;
static rcd_hist_t g_h = RCD_HIST_INIT(bounds3, 1);

static void *adder(void *arg)
{
    uint64_t v = (uint64_t)(uintptr_t)arg;
    for (int i = 0; i < N_ADDS; i++) {
        rcd_counter_add(&g_c, 1);
        rcd_hist_observe(&g_h, v);
    }
    return NULL;
}

/* Updates from several threads lose nothing (and are race-free under TSan). */
static void test_threads(void)
{
    pthread_t t[N_THREADS];
    uint64_t vals[N_THREADS] = {1, 50, 500, 5000};
    for (int i = 0; i < N_THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, adder, (void *)(uintptr_t)vals[i]) == 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK(rcd_counter_get(&g_c) == (uint64_t)N_THREADS * N_ADDS);
    CHECK(rcd_hist_count(&g_h) == (uint64_t)N_THREADS * N_ADDS);
    for (int i = 0; i <= 3; i++)
        CHECK(g_h.b[i] == N_ADDS);
    CHECK(g_h.sum == (uint64_t)N_ADDS * (1 + 50 + 500 + 5000));
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_text_exact);
    RUN(test_openmetrics_exact);
    RUN(test_escaping);
    RUN(test_fmt_double);
    RUN(test_hist_buckets);
    RUN(test_threads);
    return rcd_test_summary();
}
