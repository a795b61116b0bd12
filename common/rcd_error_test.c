/* The error table: every code has a distinct value, a message, a name and a gRPC status. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/rcd_error.h"
#include "tests/support/rcd_test.h"

static void test_table(void)
{
    int vals[] = {
#define V(name, val, grpc, msg) val,
        RCD_ERRORS(V)
#undef V
    };
    size_t n = sizeof vals / sizeof vals[0];
    for (size_t i = 0; i < n; i++) {
        CHECK(strcmp(rcd_strerror(vals[i]), "unknown error") != 0);
        CHECK(strncmp(rcd_errname(vals[i]), "RCD_E", 5) == 0);
        for (size_t j = i + 1; j < n; j++) CHECK(vals[i] != vals[j]);
    }
    CHECK(rcd_grpc_status(RCD_OK) == 0);
    CHECK(rcd_grpc_status(RCD_EINVAL) == 3);
    CHECK(rcd_grpc_status(RCD_ENOTFOUND) == 5);
    /* the HTTP status comes from the gRPC one: every code has one, within 200..599 */
    CHECK(rcd_http_status(RCD_OK) == 200);
    CHECK(rcd_http_status(RCD_EINVAL) == 400);
    CHECK(rcd_http_status(RCD_ENOTFOUND) == 404);
    CHECK(rcd_http_status(RCD_ETOOBIG) == 429);
    CHECK(rcd_http_status(RCD_EUNAUTHENTICATED) == 401);
    CHECK(rcd_http_status(RCD_EFORBIDDEN) == 403);
    CHECK(rcd_http_status(RCD_EUNAVAILABLE) == 503);
    CHECK(rcd_http_status(RCD_ECONFLICT) == 409);
    CHECK(rcd_http_status(RCD_EINTERNAL) == 500);
    CHECK(rcd_http_status(-9999) == 500);
    CHECK(rcd_grpc_status(RCD_EMISMATCH) == 9);
    CHECK(rcd_grpc_status(RCD_EPRECONDITION) == 9); /* FAILED_PRECONDITION */
    CHECK(rcd_grpc_status(RCD_ENOSPACE) == 8);      /* RESOURCE_EXHAUSTED */
    CHECK(rcd_grpc_status(RCD_ENOMEM) == 8);
    CHECK(rcd_grpc_status(RCD_EUNAUTHENTICATED) == 16);
    CHECK(rcd_grpc_status(RCD_EFORBIDDEN) == 7); /* PERMISSION_DENIED */
    CHECK(rcd_grpc_status(RCD_ECONFLICT) == 10); /* ABORTED */
    CHECK(RCD_EREPLIED != RCD_ENOMEM && RCD_EREPLIED < 0 && RCD_EREPLIED != -1);
    CHECK(rcd_grpc_status(-9999) == 2);
    CHECK(strcmp(rcd_strerror(-9999), "unknown error") == 0);
    char buf[16];
    CHECK(rcd_fail(RCD_EFORMAT, buf, sizeof buf, "tensor %s bad", "abcdefghijklmnop") ==
          RCD_EFORMAT);
    CHECK(strlen(buf) == 15);
    CHECK(rcd_fail(RCD_EIO, NULL, 0, "x") == RCD_EIO);
}

/* A failed system call's errno: a full disk or quota is the client's RESOURCE_EXHAUSTED, every
 * other errno an I/O error (INTERNAL). */
static void test_errno(void)
{
    CHECK(rcd_errno_code(ENOSPC) == RCD_ENOSPACE);
    CHECK(rcd_errno_code(EDQUOT) == RCD_ENOSPACE);
    CHECK(rcd_grpc_status(rcd_errno_code(ENOSPC)) == 8);
    CHECK(rcd_errno_code(EIO) == RCD_EIO);
    CHECK(rcd_errno_code(EACCES) == RCD_EIO);
    CHECK(rcd_errno_code(0) == RCD_EIO);
    CHECK(rcd_grpc_status(rcd_errno_code(EIO)) == 13);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_table);
    RUN(test_errno);
    return rcd_test_summary();
}
