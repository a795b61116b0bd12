/* A minimal unit-test harness shared by every *_test.c: CHECK never aborts, so one run
 * reports every failing check; main returns non-zero if any failed. */
#ifndef RCD_TEST_H
#define RCD_TEST_H
#include <math.h>
#include <stdio.h>

static int rcd__checks, rcd__failed;

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

#define RUN(fn)                                                                         \
    do {                                                                                \
        int before = rcd__failed;                                                       \
        fn();                                                                           \
        fprintf(stderr, "%s %s\n", rcd__failed == before ? "ok  " : "FAIL", #fn);       \
    } while (0)

static inline int rcd_test_summary(void)
{
    fprintf(stderr, "%d checks, %d failed\n", rcd__checks, rcd__failed);
    return rcd__failed ? 1 : 0;
}
#endif
