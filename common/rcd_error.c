/* The error table's lookups (see rcd_error.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "common/rcd_error.h"

const char *rcd_strerror(int err)
{
    switch (err) {
#define RCD__MSG(name, val, grpc, msg)                                                  \
    case val:                                                                           \
        return msg;
        RCD_ERRORS(RCD__MSG)
#undef RCD__MSG
    }
    return "unknown error";
}

const char *rcd_errname(int err)
{
    switch (err) {
#define RCD__NAME(name, val, grpc, msg)                                                 \
    case val:                                                                           \
        return "RCD_E" #name;
        RCD_ERRORS(RCD__NAME)
#undef RCD__NAME
    }
    return "RCD_E?";
}

int rcd_grpc_status(int err)
{
    switch (err) {
#define RCD__GRPC(name, val, grpc, msg)                                                 \
    case val:                                                                           \
        return grpc;
        RCD_ERRORS(RCD__GRPC)
#undef RCD__GRPC
    }
    return 2; /* UNKNOWN */
}

int rcd_http_status(int err)
{
    switch (rcd_grpc_status(err)) {
    case 0: return 200;
    case 1: return 499;
    case 3: case 9: case 11: return 400;
    case 4: return 504;
    case 5: return 404;
    case 6: case 10: return 409;
    case 7: return 403;
    case 8: return 429;
    case 12: return 501;
    case 14: return 503;
    case 16: return 401;
    default: return 500;
    }
}

int rcd_errno_code(int errnum)
{
    return errnum == ENOSPC || errnum == EDQUOT ? RCD_ENOSPACE : RCD_EIO;
}

int rcd_fail(int err, char *buf, size_t len, const char *fmt, ...)
{
    if (buf && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return err;
}
