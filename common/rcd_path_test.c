/* The checked path join and format: exact fit, one byte over, empty parts, slashes. */
#include <string.h>

#include "common/rcd_error.h"
#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"

static char buf[RCD_PATH_MAX + 64];

/* join(dir, name) into a buffer of cap bytes gives rc and, on success, want. */
static int join_is(size_t cap, const char *dir, const char *name, int rc, const char *want)
{
    memset(buf, 'x', sizeof buf);
    int r = rcd_path_join(buf, cap, dir, name);
    return r == rc && strcmp(buf, rc ? "" : want) == 0;
}

static void test_join_parts(void)
{
    CHECK(join_is(64, "a", "b", 0, "a/b"));
    CHECK(join_is(64, "/var/lib/x", "s_1/2.ckpt", 0, "/var/lib/x/s_1/2.ckpt"));
    /* slashes between the parts collapse into one; a root dir keeps its slash */
    CHECK(join_is(64, "a/", "b", 0, "a/b"));
    CHECK(join_is(64, "a///", "//b", 0, "a/b"));
    CHECK(join_is(64, "/", "b", 0, "/b"));
    CHECK(join_is(64, "//", "/b", 0, "/b"));
    CHECK(join_is(64, "a", "b/", 0, "a/b/")); /* name's own trailing slash stays */
    /* empty parts: the other part, unchanged */
    CHECK(join_is(64, "", "b", 0, "b"));
    CHECK(join_is(64, "", "/b", 0, "/b"));
    CHECK(join_is(64, "a/", "", 0, "a/"));
    CHECK(join_is(64, "a", "/", 0, "a"));
    CHECK(join_is(64, "", "", 0, ""));
    CHECK(join_is(64, NULL, "b", RCD_EINVAL, ""));
    CHECK(join_is(64, "a", NULL, RCD_EINVAL, ""));
    CHECK(rcd_path_join(NULL, 8, "a", "b") == RCD_EINVAL);
    CHECK(rcd_path_join(buf, 0, "a", "b") == RCD_EINVAL);
}

static void test_join_fit(void)
{
    /* "ab/cd" is 5 bytes and a NUL */
    CHECK(join_is(6, "ab", "cd", 0, "ab/cd"));
    CHECK(join_is(5, "ab", "cd", RCD_ERANGE, ""));
    CHECK(join_is(6, "ab//", "/cd", 0, "ab/cd")); /* collapsed before measuring */
    CHECK(join_is(3, "ab", "", 0, "ab"));
    CHECK(join_is(2, "ab", "", RCD_ERANGE, ""));
    CHECK(join_is(3, "", "cd", 0, "cd"));
    CHECK(join_is(2, "", "cd", RCD_ERANGE, ""));
    CHECK(join_is(1, "", "", 0, ""));
    /* a buffer larger than RCD_PATH_MAX still holds no path of RCD_PATH_MAX bytes */
    static char dir[RCD_PATH_MAX + 1];
    memset(dir, 'd', sizeof dir - 1);
    dir[RCD_PATH_MAX - 3] = 0; /* RCD_PATH_MAX - 3 bytes + "/" + "n" = RCD_PATH_MAX - 1 */
    CHECK(rcd_path_join(buf, sizeof buf, dir, "n") == 0 && strlen(buf) == RCD_PATH_MAX - 1);
    CHECK(rcd_path_join(buf, sizeof buf, dir, "nn") == RCD_ERANGE && buf[0] == 0);
}

static void test_fmt(void)
{
    CHECK(rcd_path_fmt(buf, 64, "%s/s_%s/%020d.ckpt", "d", "id", 7) == 0);
    CHECK(strcmp(buf, "d/s_id/00000000000000000007.ckpt") == 0);
    CHECK(rcd_path_fmt(buf, 6, "%s.%s", "ab", "cd") == 0 && strcmp(buf, "ab.cd") == 0);
    CHECK(rcd_path_fmt(buf, 5, "%s.%s", "ab", "cd") == RCD_ERANGE && buf[0] == 0);
    CHECK(rcd_path_fmt(buf, 1, "%s", "") == 0 && buf[0] == 0);
    CHECK(rcd_path_fmt(buf, 0, "x") == RCD_EINVAL);
    static char big[RCD_PATH_MAX + 1];
    memset(big, 'b', sizeof big - 1);
    big[RCD_PATH_MAX - 1] = 0;
    CHECK(rcd_path_fmt(buf, sizeof buf, "%s", big) == 0);
    big[RCD_PATH_MAX - 1] = 'b';
    CHECK(rcd_path_fmt(buf, sizeof buf, "%s", big) == RCD_ERANGE && buf[0] == 0);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_join_parts);
    RUN(test_join_fit);
    RUN(test_fmt);
    return rcd_test_summary();
}
