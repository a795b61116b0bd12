/* daemon: the gRPC request metadata the daemon reads, from the (key, value) pairs gRPC core
 * hands over (length-delimited: a value may hold any byte, NUL included, and be KiBs long).
 * Pure: no server, no allocation, so tests/fuzz/fuzz_metadata.c drives the same code. */
#ifndef DMN_META_H
#define DMN_META_H

#include <stdbool.h>
#include <stddef.h>

#include "daemon/dmn_auth.h"
#include "statestore/store.h"

#define DMN_RID_MAX 39 /* bytes of a request id kept, logged and echoed */

typedef struct dmn_meta {
    /* x-request-id: its first DMN_RID_MAX bytes, bytes outside 0x20..0x7e as '?' (logs and the
     * echoed header stay printable); the last one sent wins; "" when none (the caller then
     * generates one). */
    char rid[DMN_RID_MAX + 1];
    /* `authorization` (Bearer key: its SHA-256 only) and `x-recurd-tenant`, for the API-key
     * check (dmn_auth.h, dmn_auth_md_take). */
    dmn_auth_md_t auth;
    /* x-session-id (the load balancer's routing key; must equal the request's session_id):
     * has_sid when sent; sid its value, sid_bad when it cannot be a session id at all (over
     * STORE_ID_MAX bytes, or a NUL byte: then sid is ""). */
    bool has_sid, sid_bad;
    char sid[STORE_ID_MAX + 1];
} dmn_meta_t;

void dmn_meta_init(dmn_meta_t *m);
/* Reads one request metadata entry; keys the daemon does not know are ignored. gRPC core hands
 * keys lowercased. Returns 0, or an RCD_E* code for an entry the call must be refused for
 * (none yet: x-request-id accepts any value). */
int dmn_meta_add(dmn_meta_t *m, const char *key, size_t key_len, const char *value,
                 size_t value_len);

#endif
