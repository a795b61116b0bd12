/* recurd's one error table: every function returns 0 or a negative RCD_E* code.
 * The same table yields the message (rcd_strerror) and the gRPC status a code maps to.
 * RCD_EREPLIED is an outcome, not an error: a request handler returns it when it has already
 * answered the call (with an error), so its caller only cleans up. */
#ifndef RCD_ERROR_H
#define RCD_ERROR_H

/* X(name, value, grpc_status, message)
 * gRPC status numbers: 0 OK, 1 CANCELLED, 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED,
 * 5 NOT_FOUND, 6 ALREADY_EXISTS, 8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 10 ABORTED,
 * 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 15 DATA_LOSS, 16 UNAUTHENTICATED,
 * 7 PERMISSION_DENIED. */
#define RCD_ERRORS(X)                                                                   \
    X(OK, 0, 0, "success")                                                              \
    X(NOMEM, -1, 8, "out of memory")                                                    \
    X(INVAL, -2, 3, "invalid argument")                                                 \
    X(IO, -3, 13, "I/O error")                                                          \
    X(NOTFOUND, -4, 5, "not found")                                                     \
    X(FORMAT, -5, 3, "malformed data")                                                  \
    X(UNSUPPORTED, -6, 12, "unsupported")                                               \
    X(RANGE, -7, 3, "value out of range")                                               \
    X(TOOBIG, -8, 8, "exceeds a configured limit")                                      \
    X(MISMATCH, -9, 9, "does not match the loaded model")                               \
    X(CORRUPT, -10, 15, "corrupt data (checksum mismatch)")                             \
    X(BUSY, -11, 10, "busy: another operation holds it")                                \
    X(CANCELLED, -12, 1, "cancelled")                                                   \
    X(DEADLINE, -13, 4, "deadline exceeded")                                            \
    X(UNAVAILABLE, -14, 14, "unavailable (draining or not ready)")                      \
    X(EXISTS, -15, 6, "already exists")                                                 \
    X(INTERNAL, -16, 13, "internal error")                                              \
    X(AGAIN, -17, 14, "try again")                                                      \
    X(UTF8, -18, 3, "invalid UTF-8")                                                    \
    X(PRECONDITION, -19, 9, "not possible in the current state")                        \
    X(NOSPACE, -20, 8, "no space left (disk full or quota reached)")                    \
    X(REPLIED, -21, 13, "already answered (no further reply)")                          \
    X(UNAUTHENTICATED, -22, 16, "missing or invalid API key")                           \
    X(FORBIDDEN, -23, 7, "permission denied")                                           \
    X(CONFLICT, -24, 10, "refused: another replica committed a newer version")

enum rcd_err {
#define RCD__ENUM(name, val, grpc, msg) RCD_E##name = (val),
    RCD_ERRORS(RCD__ENUM)
    RCD_OK = RCD_EOK,
#undef RCD__ENUM
};

/* Static message for an error code; never NULL. */
const char *rcd_strerror(int err);
/* Short symbolic name ("RCD_EINVAL"); never NULL. */
const char *rcd_errname(int err);
/* gRPC status code (grpc_status_code value) for an error code. */
int rcd_grpc_status(int err);
/* HTTP status for an error code, from its gRPC status (the usual gRPC/HTTP mapping, so the
 * table stays one): INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE 400, UNAUTHENTICATED
 * 401, PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS and ABORTED 409,
 * RESOURCE_EXHAUSTED 429, CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503,
 * DEADLINE_EXCEEDED 504, the rest 500; 0 → 200. */
int rcd_http_status(int err);

/* The code for a failed system call's errno: RCD_ENOSPACE for ENOSPC and EDQUOT (the client
 * can free space: RESOURCE_EXHAUSTED), RCD_EIO for the rest. Callers name the errno's text in
 * their message. */
int rcd_errno_code(int errnum);

/* Formats a message into a caller buffer (NULL-safe, always NUL-terminated) and returns err:
 * `return rcd_fail(err, buf, len, "tensor %s: ...", name);` */
int rcd_fail(int err, char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
