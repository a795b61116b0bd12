/* Unit tests of the option table: defaults, precedence (flag > env > file > default),
 * value checking. */
#include "daemon/dmn_opts.h"
#include "tests/support/rcd_test.h"

#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"

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
    dmn_opts_free(&o);
    char *a4[] = {"--keep-versions", "0"};
    CHECK(dmn_opts_parse(&o, 2, a4, err, sizeof(err)) == RCD_EINVAL);
    dmn_opts_free(&o);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_defaults);
    RUN(test_state_dir);
    RUN(test_precedence);
    RUN(test_errors);
    return rcd_test_summary();
}
