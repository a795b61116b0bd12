/* A minimal unit-test harness shared by every *_test.c: CHECK never aborts, so one run
 * reports every failing check; main returns non-zero if any failed. */
#ifndef RCD_TEST_H
#define RCD_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

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

/* A whole file, NUL-terminated, malloc'd (caller frees); NULL if unreadable. */
static inline char *rcd_test_read_file(const char *path, size_t *len)
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

static inline int rcd_test_summary(void)
{
    fprintf(stderr, "%d checks, %d failed\n", rcd__checks, rcd__failed);
    return rcd__failed ? 1 : 0;
}
#endif
