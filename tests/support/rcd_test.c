/* tests/support: the harness behind rcd_test.h — check counters, the test-case filter and its
 * --list / --expect modes, and the file reader the tests share. */
#include "tests/support/rcd_test.h"

#include <string.h>

int rcd__checks, rcd__failed;

typedef enum { MODE_ALL, MODE_LIST, MODE_PICK, MODE_EXPECT } run_mode_t;

static struct {
    bool inited;
    run_mode_t mode;
    int n_names;
    char **names; /* argv's; PICK and EXPECT */
    bool *seen;   /* per name: a RUN of that name was reached */
    int unknown;  /* EXPECT: cases the binary has and the list lacks */
} g;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s                   run every test case\n"
            "       %s NAME...           run only these\n"
            "       %s --list            print the case names\n"
            "       %s --expect NAME...  check the cases are exactly these\n",
            prog, prog, prog, prog);
    exit(2);
}

void rcd_test_init(int argc, char **argv)
{
    int first = 1;
    g.inited = true;
    g.mode = MODE_ALL;
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        if (argc != 2) usage(argv[0]);
        g.mode = MODE_LIST;
        return;
    }
    if (argc > 1 && strcmp(argv[1], "--expect") == 0) {
        g.mode = MODE_EXPECT;
        first = 2;
    } else if (argc > 1) {
        g.mode = MODE_PICK;
    }
    for (int i = first; i < argc; i++)
        if (argv[i][0] == '-') usage(argv[0]);
    g.n_names = argc - first;
    g.names = argv + first;
    g.seen = calloc((size_t)(g.n_names > 0 ? g.n_names : 1), sizeof(bool));
    if (!g.seen) {
        perror("calloc");
        exit(2);
    }
}

/* Marks `name` seen; whether the command line names it. */
static bool named(const char *name)
{
    bool hit = false;
    for (int i = 0; i < g.n_names; i++)
        if (strcmp(g.names[i], name) == 0) hit = g.seen[i] = true;
    return hit;
}

bool rcd_test_run(const char *name, void (*fn)(void))
{
    switch (g.mode) {
    case MODE_LIST:
        printf("%s\n", name);
        return false;
    case MODE_EXPECT:
        if (!named(name)) {
            fprintf(stderr, "test case %s is not in the expected list\n", name);
            g.unknown++;
        }
        return false;
    case MODE_PICK:
        if (!named(name)) return false;
        break;
    case MODE_ALL:
        break;
    }
    int before = rcd__failed;
    fn();
    fprintf(stderr, "%s %s\n", rcd__failed == before ? "ok  " : "FAIL", name);
    return true;
}

int rcd_test_summary(void)
{
    if (!g.inited) {
        fprintf(stderr, "the test's main never called rcd_test_init\n");
        return 1;
    }
    if (g.mode == MODE_LIST) return 0;
    int missing = 0;
    for (int i = 0; i < g.n_names; i++)
        if (!g.seen[i]) {
            fprintf(stderr, "no test case %s in this binary\n", g.names[i]);
            missing++;
        }
    free(g.seen);
    g.seen = NULL;
    if (g.mode == MODE_EXPECT) {
        if (missing || g.unknown)
            fprintf(stderr, "the cases CMake registered differ from the binary's: reconfigure, "
                            "and keep each RUN(fn); on a line of its own\n");
        return missing || g.unknown ? 1 : 0;
    }
    fprintf(stderr, "%d checks, %d failed\n", rcd__checks, rcd__failed);
    return rcd__failed || missing ? 1 : 0;
}

char *rcd_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = (char *)malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (buf && len) *len = (size_t)n;
    return buf;
}
