/* The daemon's metrics: what a known sequence of turn events renders (exact counter and
 * histogram values), the bounded tenant label, and both formats checked by the reference
 * parsers: `promtool check metrics` (text 0.0.4) and prometheus_client's OpenMetrics parser
 * (each skipped with a message when not installed). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/dmn.h"
#include "daemon/dmn_metrics.h"
#include "tests/support/rcd_test.h"

static char *render(dmn_server_t *s, bool om)
{
    char *out = NULL;
    size_t len = 0;
    CHECK(dmn_metrics_render(s, om, &out, &len) == 0);
    CHECK(out && strlen(out) == len);
    return out;
}

/* Pipes text into a shell command; its exit status (-1: could not run). */
static int pipe_to(const char *cmd, const char *text)
{
    FILE *p = popen(cmd, "w");
    if (!p) return -1;
    fputs(text, p);
    int st = pclose(p);
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool has(const char *out, const char *line)
{
    bool ok = out && strstr(out, line);
    if (!ok) fprintf(stderr, "missing: %s", line);
    return ok;
}

static void check_parsers(const char *text, const char *om)
{
    if (system("command -v promtool >/dev/null 2>&1") == 0) {
        int rc = pipe_to("promtool check metrics", text);
        CHECK_MSG(rc == 0, "promtool check metrics: exit %d on:\n%s", rc, text);
    } else {
        printf("SKIP promtool check: promtool not installed (Debian package prometheus)\n");
    }
    static const char *py =
        "/usr/bin/python3 -c 'import sys\n"
        "try:\n from prometheus_client.openmetrics.parser import text_string_to_metric_families\n"
        "except ImportError: sys.exit(77)\n"
        "n = len(list(text_string_to_metric_families(sys.stdin.read())))\n"
        "sys.exit(0 if n > 20 else 1)'";
    int rc = pipe_to(py, om);
    if (rc == 77)
        printf("SKIP OpenMetrics parse: python3 prometheus_client not installed "
               "(Debian package python3-prometheus-client)\n");
    else
        CHECK_MSG(rc == 0, "prometheus_client OpenMetrics parser: exit %d on:\n%s", rc, om);
}

/* Three turns (two succeed, one refused) and a cancelled one; resumes; two calls answered. */
static void test_render_known(void)
{
    dmn_server_t s;
    memset(&s, 0, sizeof(s));
    snprintf(s.model_id, sizeof(s.model_id), "tiny \"q\"");
    dmn_call_t c;
    memset(&c, 0, sizeof(c));
    c.srv = &s;
    dmn_mturn_t m[4];
    memset(m, 0, sizeof(m));
    for (int i = 0; i < 4; i++)
        dmn_metrics_turn_begin(&c, &m[i]);
    for (int k = 0; k < 3; k++)
        dmn_metrics_token(&m[0]);
    dmn_metrics_token(&m[1]);
    dmn_metrics_token(&m[3]);
    uint64_t t = m[0].t_submit, t1 = m[1].t_submit;
    dmn_metrics_turn_end(&m[0], 0, true, 1, 5, t + 1000, t + 2000, t + 3000);    /* length */
    dmn_metrics_turn_end(&m[1], 0, true, 3, 7, t1 + 1000, t1 + 2000, t1 + 3000); /* eos */
    dmn_metrics_turn_end(&m[2], RCD_ETOOBIG, true, 0, 0, 0, 0, 0);               /* refused */
    dmn_metrics_turn_end(&m[3], 0, false, 0, 9, t + 1000, t + 2000, 0);          /* cancelled */
    dmn_metrics_turn_end(&m[3], 0, false, 0, 9, 0, 0, 0); /* a second end counts nothing */
    dmn_metrics_resume(&c, false);
    c.fetched_shared = true;
    dmn_metrics_resume(&c, true);
    dmn_metrics_commit_start(&m[0]);
    dmn_metrics_commit_done(&m[0]);
    dmn_metrics_rpc(DMN_M_GENERATE, 0);
    dmn_metrics_rpc(DMN_M_CREATE_SESSION, RCD_EEXISTS);
    char *text = render(&s, false), *om = render(&s, true);
    const char *M = "model=\"tiny \\\"q\\\"\"";
    char line[256];
#define HAS(...)                                                                                   \
    do {                                                                                           \
        snprintf(line, sizeof(line), __VA_ARGS__);                                                 \
        CHECK(has(text, line));                                                                    \
    } while (0)
    HAS("recurd_build_info{version=\"%s\",model=\"tiny \\\"q\\\"\",backend=\"\"} 1\n", RCD_VERSION);
    HAS("recurd_requests_finished_total{%s,outcome=\"length\"} 1\n", M);
    HAS("recurd_requests_finished_total{%s,outcome=\"eos\"} 1\n", M);
    HAS("recurd_requests_finished_total{%s,outcome=\"error\"} 1\n", M);
    HAS("recurd_requests_finished_total{%s,outcome=\"cancelled\"} 1\n", M);
    HAS("recurd_requests_finished_total{%s,outcome=\"stop\"} 0\n", M);
    HAS("recurd_prompt_tokens_total{%s} 21\n", M);
    HAS("recurd_generation_tokens_total{%s} 5\n", M);
    HAS("recurd_time_to_first_token_seconds_count{%s} 3\n", M);
    HAS("recurd_inter_token_latency_seconds_count{%s} 2\n", M);
    HAS("recurd_e2e_request_latency_seconds_count{%s} 2\n", M);
    HAS("recurd_e2e_request_latency_seconds_sum{%s} 6e-06\n", M);
    HAS("recurd_request_decode_time_seconds_bucket{%s,le=\"0.001\"} 2\n", M);
    HAS("recurd_request_prompt_tokens_bucket{%s,le=\"5.0\"} 1\n", M);
    HAS("recurd_request_prompt_tokens_bucket{%s,le=\"10.0\"} 2\n", M);
    HAS("recurd_request_prompt_tokens_sum{%s} 12.0\n", M);
    HAS("recurd_request_generation_tokens_bucket{%s,le=\"2.0\"} 1\n", M);
    HAS("recurd_request_generation_tokens_bucket{%s,le=\"5.0\"} 2\n", M);
    HAS("recurd_request_generation_tokens_sum{%s} 4.0\n", M);
    HAS("recurd_session_resumes_total{%s,source=\"host_cache\"} 1\n", M);
    HAS("recurd_session_resumes_total{%s,source=\"redis\"} 1\n", M);
    HAS("recurd_session_resumes_total{%s,source=\"slot\"} 0\n", M);
    HAS("recurd_session_resume_seconds_count{%s,source=\"redis\"} 1\n", M);
    HAS("recurd_checkpoint_commit_seconds_count{%s} 1\n", M);
    HAS("recurd_rpc_requests_total{%s,method=\"Generate\",code=\"OK\"} 1\n", M);
    HAS("recurd_rpc_requests_total{%s,method=\"CreateSession\",code=\"ALREADY_EXISTS\"} 1\n", M);
    HAS("recurd_spec_decode_draft_tokens_total{%s} 0\n", M);
    HAS("recurd_spec_decode_pauses_total{%s} 0\n", M);
    HAS("recurd_spec_decode_paused_steps_total{%s} 0\n", M);
    HAS("process_open_fds ");
    CHECK(!strstr(text, "tenant=")); /* no API keys: no tenant label */
    CHECK(!strstr(text, "# EOF"));
    size_t n = om ? strlen(om) : 0;
    CHECK(n > 6 && !strcmp(om + n - 6, "# EOF\n"));
    CHECK(om && strstr(om, "# TYPE recurd_prompt_tokens counter\n"));
    CHECK(om && strstr(om, "# UNIT recurd_time_to_first_token_seconds seconds\n"));
    check_parsers(text, om);
    free(text);
    free(om);
}

/* With API keys, tenants get a label: the first 32 seen their own, the rest "other". */
static void test_tenants_bounded(void)
{
    dmn_server_t s;
    memset(&s, 0, sizeof(s));
    dmn_keys_t keys;
    memset(&keys, 0, sizeof(keys));
    s.keys = &keys;
    dmn_call_t c;
    memset(&c, 0, sizeof(c));
    c.srv = &s;
    for (int i = 0; i < 40; i++) {
        snprintf(c.tenant, sizeof(c.tenant), "t%02d", i);
        for (int rep = 0; rep < 2; rep++) {
            dmn_mturn_t m;
            memset(&m, 0, sizeof(m));
            dmn_metrics_turn_begin(&c, &m);
            dmn_metrics_token(&m);
            dmn_metrics_turn_end(&m, 0, true, 2, 4, m.t_submit, m.t_submit, m.t_submit);
        }
    }
    char *text = render(&s, false), *om = render(&s, true);
    char line[256];
    HAS("recurd_prompt_tokens_total{model=\"\",tenant=\"t01\"} 8\n"); /* t00: index 0, which
                                                                       * test_render_known shares */
    HAS("recurd_prompt_tokens_total{model=\"\",tenant=\"t31\"} 8\n");
    HAS("recurd_prompt_tokens_total{model=\"\",tenant=\"other\"} 64\n");
    HAS("recurd_generation_tokens_total{model=\"\",tenant=\"other\"} 16\n");
    HAS("recurd_requests_finished_total{model=\"\",outcome=\"stop\",tenant=\"t05\"} 2\n");
    CHECK(!strstr(text, "tenant=\"t32\""));
    check_parsers(text, om);
    free(text);
    free(om);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_render_known);
    RUN(test_tenants_bounded);
    return rcd_test_summary();
}
