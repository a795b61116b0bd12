/* daemon: API keys and tenants — the keys file (`--api-keys`: lines `SHA256_HEX TENANT ROLE`),
 * its parser (a pure function over a buffer, unit-tested and fuzzed), the constant-time key
 * lookup, the per-call check of `authorization: Bearer KEY` and `x-recurd-tenant`, the
 * reload on SIGHUP and the audit log lines. Loop thread only. */
#ifndef DMN_AUTH_H
#define DMN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "statestore/store.h"

#define DMN_KEYS_FILE_MAX (16u << 20) /* bytes of a keys file, at most */

typedef enum dmn_role { DMN_ROLE_USER, DMN_ROLE_ADMIN } dmn_role_t;

typedef struct dmn_key {
    uint8_t digest[32];                  /* SHA-256 of the key */
    char tenant[STORE_TENANT_MAX + 1];   /* 1..64 bytes of [A-Za-z0-9._-] */
    dmn_role_t role;
} dmn_key_t;

/* A parsed keys file; owns v. */
typedef struct dmn_keys {
    dmn_key_t *v;
    size_t n;
    size_t n_tenants; /* distinct tenants, for the log */
} dmn_keys_t;

/* Parses a keys file held in buf[0..len) (any bytes; `name` is used in messages). Each line:
 * 64 lowercase hex digits, a tenant, `user` or `admin`, separated by spaces or tabs; `#`
 * starts a comment (whole line or after the fields); blank lines and a CR before the LF are
 * ignored. A malformed line or a key listed twice → RCD_EINVAL with "name:line: why" in err
 * (out untouched). 0: *out holds the keys (possibly none); free with dmn_keys_free. */
int dmn_keys_parse(const char *buf, size_t len, const char *name, dmn_keys_t *out, char *err,
                   size_t errlen);
/* Reads and parses the file at path (at most DMN_KEYS_FILE_MAX bytes). */
int dmn_keys_load(const char *path, dmn_keys_t *out, char *err, size_t errlen);
void dmn_keys_free(dmn_keys_t *k); /* NULL-safe; leaves k empty */
/* SHA-256 of p[0..n) (OpenSSL EVP). 0 or RCD_EINTERNAL. */
int dmn_sha256(const void *p, size_t n, uint8_t out[32]);
/* The entry whose digest is `digest`, or NULL. Every entry is compared (CRYPTO_memcmp) and
 * the match is selected without a branch: the time depends only on the number of keys. */
const dmn_key_t *dmn_keys_find(const dmn_keys_t *k, const uint8_t digest[32]);

/* What on_new_call collected from the request metadata for the check below. */
typedef struct dmn_auth_md {
    bool has_authz;   /* an `authorization` entry was sent */
    bool authz_form;  /* it was `Bearer KEY` with a non-empty KEY */
    uint8_t digest[32];
    bool has_tenant;  /* an `x-recurd-tenant` entry was sent */
    char tenant[STORE_TENANT_MAX + 2]; /* its value, "" if over 64 bytes (then refused) */
    size_t tenant_len;
} dmn_auth_md_t;

/* Takes one metadata entry (key, value) into md if it is `authorization` or `x-recurd-tenant`. */
void dmn_auth_md_take(dmn_auth_md_t *md, const void *key, size_t klen, const void *val,
                      size_t vlen);

#endif
