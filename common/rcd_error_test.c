/* The error table: every code has a distinct value, a message, a name and a gRPC status. */
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
    CHECK(rcd_grpc_status(RCD_EMISMATCH) == 9);
    CHECK(rcd_grpc_status(-9999) == 2);
    CHECK(strcmp(rcd_strerror(-9999), "unknown error") == 0);
    char buf[16];
    CHECK(rcd_fail(RCD_EFORMAT, buf, sizeof buf, "tensor %s bad", "abcdefghijklmnop") ==
          RCD_EFORMAT);
    CHECK(strlen(buf) == 15);
    CHECK(rcd_fail(RCD_EIO, NULL, 0, "x") == RCD_EIO);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_table);
    return rcd_test_summary();
}
