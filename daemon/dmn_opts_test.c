/* Unit tests of the option table: defaults, precedence (flag > env > file > default),
 * value checking: types, ranges and choices from every source, and --help showing them. */
#include "daemon/dmn_opts.h"
#include "tests/support/rcd_test.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rcd_error.h"
#include "daemon/dmn_log.h"

static void test_defaults(void)
{
    dmn_opts_t o;
    char err[256];
    CHECK(dmn_opts_parse(&o, 0, NULL, err, sizeof(err)) == 0);
    CHECK(o.port == 50051 && !strcmp(o.host, "127.0.0.1") && !o.listen_all);
    CHECK(!strcmp(o.backend, "cpu") && o.slots == 8);
    CHECK(o.prefill_chunk == 256 && o.aging_ms == 5000 && o.pipeline == 2);
    dmn_opts_free(&o);
    char *argv[] = {"--prefill-chunk", "0", "--aging-ms=0"}; /* 0: no chunking, strict */
    CHECK(dmn_opts_parse(&o, 3, argv, err, sizeof(err)) == 0);
    CHECK(o.prefill_chunk == 0 && o.aging_ms == 0);
    dmn_opts_free(&o);
    char *p1[] = {"--pipeline", "1"}, *p3[] = {"--pipeline", "3"};
    CHECK(dmn_opts_parse(&o, 2, p1, err, sizeof(err)) == 0 && o.pipeline == 1);
    dmn_opts_free(&o);
    CHECK(dmn_opts_parse(&o, 2, p3, err, sizeof(err)) == RCD_EINVAL && strstr(err, "--pipeline"));
    dmn_opts_free(&o);
}

static void test_precedence(void)
{
    dmn_opts_t o;
    char err[256];
    const char *path = "/tmp/dmn_opts_test.conf";
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fprintf(f, "# comment\nport = 7000\nslots=3\nlog_level = debug\n");
    fclose(f);
    setenv("RECURD_SLOTS", "5", 1);
    char *argv[] = {"--config", (char *)path, "--max-queue=9", "--listen-all", "--host", "::1"};
    CHECK(dmn_opts_parse(&o, 6, argv, err, sizeof(err)) == 0);
    CHECK(o.port == 7000);   /* file */
    CHECK(o.slots == 5);     /* env beats file */
    CHECK(o.max_queue == 9); /* flag */
    CHECK(o.listen_all && !strcmp(o.host, "::1") && !strcmp(o.log_level, "debug"));
    dmn_opts_free(&o);
    char *argv2[] = {"--slots", "2"};
    CHECK(dmn_opts_parse(&o, 2, argv2, err, sizeof(err)) == 0 && o.slots == 2); /* flag > env */
    dmn_opts_free(&o);
    unsetenv("RECURD_SLOTS");
    remove(path);
}

static void test_errors(void)
{
    dmn_opts_t o;
    char err[256];
    char *a1[] = {"--port", "abc"};
    CHECK(dmn_opts_parse(&o, 2, a1, err, sizeof(err)) == RCD_EINVAL);
    dmn_opts_free(&o);
    char *a2[] = {"--nope"};
    CHECK(dmn_opts_parse(&o, 1, a2, err, sizeof(err)) == RCD_EINVAL);
    dmn_opts_free(&o);
    char *a3[] = {"--port"};
    CHECK(dmn_opts_parse(&o, 1, a3, err, sizeof(err)) == RCD_EINVAL);
    dmn_opts_free(&o);
    char *a4[] = {"--port", "70000"};
    CHECK(dmn_opts_parse(&o, 2, a4, err, sizeof(err)) == RCD_EINVAL);
    dmn_opts_free(&o);
    char *a5[] = {"--config", "/nonexistent/x.conf"};
    CHECK(dmn_opts_parse(&o, 2, a5, err, sizeof(err)) == RCD_EIO);
    dmn_opts_free(&o);
    char *a6[] = {"--no-progress"};
    CHECK(dmn_opts_parse(&o, 1, a6, err, sizeof(err)) == 0 && !o.progress);
    dmn_opts_free(&o);
}

static void test_state_dir(void)
{
    dmn_opts_t o;
    char err[256], dir[4096];
    setenv("XDG_STATE_HOME", "/var/x", 1);
    CHECK(dmn_opts_parse(&o, 0, NULL, err, sizeof(err)) == 0 && o.keep_versions == 2);
    CHECK(o.group_commit); /* on by default */
    dmn_opts_state_dir(&o, dir, sizeof(dir));
    CHECK(!strcmp(dir, "/var/x/recurd"));
    unsetenv("XDG_STATE_HOME");
    setenv("HOME", "/home/u", 1);
    dmn_opts_state_dir(&o, dir, sizeof(dir));
    CHECK(!strcmp(dir, "/home/u/.local/state/recurd"));
    dmn_opts_free(&o);
    char *a1[] = {"--state-dir", "", "--host-cache-bytes", "0"};
    CHECK(dmn_opts_parse(&o, 4, a1, err, sizeof(err)) == 0 && o.host_cache_bytes == 0);
    dmn_opts_state_dir(&o, dir, sizeof(dir));
    CHECK(dir[0] == 0); /* memory only */
    dmn_opts_free(&o);
    char *a1b[] = {"--no-group-commit"};
    CHECK(dmn_opts_parse(&o, 1, a1b, err, sizeof(err)) == 0 && !o.group_commit);
    dmn_opts_free(&o);
    char *a2[] = {"--state-dir", "/srv/s", "--ephemeral"};
    CHECK(dmn_opts_parse(&o, 3, a2, err, sizeof(err)) == 0);
    dmn_opts_state_dir(&o, dir, sizeof(dir));
    CHECK(dir[0] == 0); /* --ephemeral wins */
    dmn_opts_free(&o);
    char *a3[] = {"--state-dir", "/srv/s"};
    CHECK(dmn_opts_parse(&o, 2, a3, err, sizeof(err)) == 0);
    dmn_opts_state_dir(&o, dir, sizeof(dir));
    CHECK(!strcmp(dir, "/srv/s"));
    CHECK(dmn_opts_state_dir(&o, dir, 7) == 0 && !strcmp(dir, "/srv/s")); /* exact fit */
    CHECK(dmn_opts_state_dir(&o, dir, 6) == RCD_ERANGE && dir[0] == 0);  /* never cut short */
    dmn_opts_free(&o);
    char *a4[] = {"--keep-versions", "0"};
    CHECK(dmn_opts_parse(&o, 2, a4, err, sizeof(err)) == RCD_EINVAL);
    dmn_opts_free(&o);
}

/* Parses argv and expects a refusal whose message holds each of the NULL-terminated words. */
static void refused(int argc, char **argv, ...)
{
    dmn_opts_t o;
    char err[256] = "";
    int rc = dmn_opts_parse(&o, argc, argv, err, sizeof(err));
    CHECK_MSG(rc == RCD_EINVAL, "%s: rc %d", argc ? argv[0] : "(no flags)", rc);
    va_list ap;
    va_start(ap, argv);
    for (const char *w; (w = va_arg(ap, const char *));)
        CHECK_MSG(strstr(err, w) != NULL, "'%s' not in '%s'", w, err);
    va_end(ap);
    dmn_opts_free(&o);
}

static void test_ranges(void)
{
    char *lo1[] = {"--slots", "0"}, *lo2[] = {"--threads=-1"}, *lo3[] = {"--keep-versions", "0"};
    refused(2, lo1, "command line", "--slots", "at least 1", "'0'", NULL);
    refused(1, lo2, "--threads must be at least 0, got '-1'", NULL);
    refused(2, lo3, "--keep-versions", NULL);
    char *lo4[] = {"--max-message-bytes", "1023"}, *hi4[] = {"--max-message-bytes", "1073741825"};
    refused(2, lo4, "between 1024 and 1073741824", NULL);
    refused(2, hi4, "between 1024 and 1073741824", NULL);
    char *hi1[] = {"--port", "65536"}, *hi2[] = {"--pipeline", "3"};
    refused(2, hi1, "--port must be between 0 and 65535, got '65536'", NULL);
    refused(2, hi2, "--pipeline", "between 1 and 2", NULL);
    char *hi3[] = {"--session-ttl", "4294967296"}, *hi5[] = {"--kv-block-tokens", "65537"};
    refused(2, hi3, "--session-ttl", "4294967295", NULL);
    refused(2, hi5, "--kv-block-tokens", "65536", NULL);
    char *hi6[] = {"--kv-blocks", "1073741825"}, *hi7[] = {"--host-cache-bytes", "1e9"};
    refused(2, hi6, "--kv-blocks", NULL);
    refused(2, hi7, "--host-cache-bytes wants an integer", NULL);
    char *hi8[] = {"--drain-grace-ms", "99999999999999999999999"};
    refused(2, hi8, "--drain-grace-ms must be at least 0", NULL); /* overflows a long */
    char *few[] = {"--slots", "4", "--max-step-tokens", "3"}, *few2[] = {"--slots", "600"};
    refused(4, few, "--max-step-tokens (3) must be at least --slots (4)", NULL);
    refused(2, few2, "--max-step-tokens (512) must be at least --slots (600)", NULL);
    /* both ends are allowed */
    dmn_opts_t o;
    char err[256];
    char *ends[] = {
        "--port",      "65535",      "--pipeline",          "1",    "--session-ttl", "4294967295",
        "--kv-blocks", "1073741824", "--max-message-bytes", "1024", "--slots",       "1"};
    CHECK_MSG(dmn_opts_parse(&o, 12, ends, err, sizeof(err)) == 0, "%s", err);
    CHECK(o.port == 65535 && o.session_ttl == 4294967295L && o.max_message_bytes == 1024);
    dmn_opts_free(&o);
}

static void test_choices(void)
{
    char *b[] = {"--backend", "tpu"}, *m[] = {"--matmul=fp16"}, *i[] = {"--isa", "sse"};
    refused(2, b, "--backend must be cpu or cuda, got 'tpu'", NULL);
    refused(1, m, "matmul must be fp32 or bf16", NULL); /* test_matmul.py looks for this */
    char *m2[] = {"--matmul", "bf16-avx512"}; /* the engine's forcing value is not an option */
    refused(2, m2, "--matmul must be fp32 or bf16, got 'bf16-avx512'", NULL);
    refused(2, i, "--isa must be auto, avx512, avx2 or portable", NULL);
    char *l[] = {"--log-level", "Info"}, *e[] = {"--backend", ""};
    refused(2, l, "--log-level must be debug, info, warn or error, got 'Info'", NULL);
    refused(2, e, "--backend", NULL);
    /* every choice is accepted, and every log level is one dmn_log knows */
    const char *levels[] = {"debug", "info", "warn", "error"};
    for (int k = 0; k < 4; k++) {
        dmn_opts_t o;
        char err[256], *a[] = {"--log-level", (char *)levels[k], "--backend", "cuda",
                               "--isa",       "portable",        "--matmul",  "bf16"};
        CHECK_MSG(dmn_opts_parse(&o, 8, a, err, sizeof(err)) == 0, "%s", err);
        CHECK(dmn_log_set_level(o.log_level) == 0);
        CHECK(!strcmp(o.backend, "cuda") && !strcmp(o.matmul, "bf16"));
        dmn_opts_free(&o);
    }
    dmn_log_set_level("info");
}

/* The checks apply to the environment and the config file too, and name the source. */
static void test_checked_everywhere(void)
{
    setenv("RECURD_PORT", "70000", 1);
    refused(0, NULL, "environment RECURD_PORT", "--port", "65535", NULL);
    unsetenv("RECURD_PORT");
    setenv("RECURD_BACKEND", "tpu", 1);
    refused(0, NULL, "environment RECURD_BACKEND", "cpu or cuda", NULL);
    char *flag[] = {"--backend", "cpu"}; /* a flag wins: the environment is not read */
    dmn_opts_t o;
    char err[256];
    CHECK(dmn_opts_parse(&o, 2, flag, err, sizeof(err)) == 0);
    dmn_opts_free(&o);
    unsetenv("RECURD_BACKEND");
    const char *path = "/tmp/dmn_opts_test_ranges.conf";
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fprintf(f, "slots = 2\npipeline = 0\n");
    fclose(f);
    char *a[] = {"--config", (char *)path};
    refused(2, a, "config /tmp/dmn_opts_test_ranges.conf:2", "--pipeline", "between 1 and 2", NULL);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fprintf(f, "log_level = loud\n");
    fclose(f);
    refused(2, a, "config /tmp/dmn_opts_test_ranges.conf:1", "--log-level", "debug, info", NULL);
    remove(path);
}

/* --help shows what each option allows. */
static void test_help(void)
{
    char path[] = "/tmp/dmn_opts_help_XXXXXX", buf[16384];
    int fd = mkstemp(path), saved = dup(STDOUT_FILENO);
    CHECK(fd >= 0 && saved >= 0);
    if (fd < 0 || saved < 0) return;
    fflush(stdout);
    dup2(fd, STDOUT_FILENO);
    dmn_opts_help("recurd");
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    unlink(path);
    CHECK(n > 0);
    buf[n > 0 ? n : 0] = 0;
    CHECK(strstr(buf, "[env RECURD_PORT, default \"50051\"; 0 to 65535]") != NULL);
    CHECK(strstr(buf, "[env RECURD_BACKEND, default \"cpu\"; cpu or cuda]") != NULL);
    CHECK(strstr(buf, "[env RECURD_SLOTS, default \"8\"; at least 1]") != NULL);
    CHECK(strstr(buf, "debug, info, warn or error]") != NULL);
    CHECK(strstr(buf, "[env RECURD_THREADS, default \"0\"]") != NULL); /* nothing to add */
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_defaults);
    RUN(test_state_dir);
    RUN(test_precedence);
    RUN(test_errors);
    RUN(test_ranges);
    RUN(test_choices);
    RUN(test_checked_everywhere);
    RUN(test_help);
    return rcd_test_summary();
}
