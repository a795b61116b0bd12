/* The unit-test harness every *_test.c links (tests/support, library rcd_test): CHECK never
 * aborts, so one run reports every failing check; RUN runs one named test case unless the
 * command line picks others. main calls rcd_test_init first and returns rcd_test_summary():
 *
 *   t               every case, in order          t --list         the case names, one a line
 *   t NAME...       only these cases (an unknown name fails)
 *   t --expect NAME...  runs nothing; fails unless the cases are exactly these (CMake's list)
 *
 * Code in main outside RUN (setup, teardown) runs in every mode. */
#ifndef RCD_TEST_H
#define RCD_TEST_H
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

extern int rcd__checks, rcd__failed; /* this process's checks so far, and the failed ones */

#define CHECK(cond)                                                                     \
    do {                                                                                \
        rcd__checks++;                                                                  \
        if (!(cond)) {                                                                  \
            rcd__failed++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                               \
    } while (0)

#define CHECK_MSG(cond, ...)                                                            \
    do {                                                                                \
        rcd__checks++;                                                                  \
        if (!(cond)) {                                                                  \
            rcd__failed++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
        }                                                                               \
    } while (0)

/* One test case: `static void fn(void)`, named by its function. CMake registers each
 * `RUN(fn);` line of a test's sources as the ctest test <binary>/<fn> (tests/support/
 * RcdTest.cmake), so keep each on a line of its own. */
#define RUN(fn) rcd_test_run(#fn, fn)

/* Reads the command line (above); exits 2 on a usage error. */
void rcd_test_init(int argc, char **argv);
/* Runs fn if the command line selects `name`, printing "ok" or "FAIL" and the name; with
 * --list prints the name. Returns whether fn ran. */
bool rcd_test_run(const char *name, void (*fn)(void));
/* Prints the totals; 0 when every check passed and every named case exists, else 1. */
int rcd_test_summary(void);

/* A whole file, NUL-terminated, malloc'd (caller frees); NULL if unreadable. */
char *rcd_test_read_file(const char *path, size_t *len);
#endif
