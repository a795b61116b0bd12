/* daemon: TLS for the gRPC listener — the PEM files named by --tls-cert, --tls-key and
 * --tls-client-ca, checked with OpenSSL so that a bad file is refused naming it, and handed to
 * gRPC through a certificate-config fetcher so that SIGHUP (dmn_reload) can swap them while
 * connections stay open. */
#ifndef DMN_TLS_H
#define DMN_TLS_H

#include <grpc/grpc_security.h>
#include <stdbool.h>
#include <stddef.h>

#include "daemon/dmn_opts.h"

typedef struct dmn_tls dmn_tls_t;

/* The options' combinations: --tls-cert and --tls-key both or neither, --tls-client-ca only
 * with them. Returns 0 or RCD_EINVAL with the message in err. Reads no file. */
int dmn_tls_check_opts(const dmn_opts_t *o, char *err, size_t errlen);

/* Whether the listening address stays on this machine: not --listen-all, and --host is
 * localhost, 127.0.0.0/8, ::1 or a unix: socket. Plaintext elsewhere is warned about. */
bool dmn_host_is_loopback(const dmn_opts_t *o);

/* TLS on? (--tls-cert given). */
bool dmn_tls_enabled(const dmn_opts_t *o);

/* Reads and checks the files (each holds PEM; the key matches the certificate; the client CA
 * holds at least one certificate). *out: NULL when TLS is off, else owned by the caller
 * (dmn_tls_destroy after grpc_shutdown: gRPC's threads call into it until then). Returns 0, or
 * a negative code with a message naming the file in err. The paths are copied. */
int dmn_tls_create(const dmn_opts_t *o, dmn_tls_t **out, char *err, size_t errlen);

/* New server credentials that fetch the current files at each handshake (the caller releases
 * them once the port is added). mTLS (a client CA) requires and verifies client certificates. */
grpc_server_credentials *dmn_tls_server_credentials(dmn_tls_t *t);

/* Re-reads the files; on success new handshakes use them (open connections keep theirs) and
 * `what` says what was loaded; on failure the previous ones stay and err names the file.
 * Loop thread; safe against the gRPC threads' fetches. */
int dmn_tls_reload(dmn_tls_t *t, char *what, size_t whatlen, char *err, size_t errlen);

/* A one-line summary for the startup log ("TLS, client certificates required"). */
const char *dmn_tls_mode(const dmn_tls_t *t);

void dmn_tls_destroy(dmn_tls_t *t);

#endif
