/* daemon: the API-keys file parser, SHA-256 and the constant-time key lookup (dmn_auth.h). No
 * gRPC here: the fuzz target and the unit test link this file alone (with the store's tenant
 * check). */
#include "daemon/dmn_auth.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/rcd_error.h"

void dmn_keys_free(dmn_keys_t *k)
{
    if (!k) return;
    free(k->v);
    k->v = NULL;
    k->n = k->n_tenants = 0;
}

int dmn_sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    if (!EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) || len != 32) return RCD_EINTERNAL;
    return 0;
}

const dmn_key_t *dmn_keys_find(const dmn_keys_t *k, const uint8_t digest[32])
{
    size_t idx = 0, hit = 0;
    for (size_t i = 0; i < k->n; i++) {
        size_t eq = (size_t)(CRYPTO_memcmp(k->v[i].digest, digest, 32) == 0);
        size_t mask = (size_t)0 - (eq & (hit ^ 1)); /* the first match only: keys are unique */
        idx = (idx & ~mask) | (i & mask);
        hit |= eq;
    }
    return hit ? &k->v[idx] : NULL;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* One line (no LF; a trailing CR already removed) into key; 1: a key, 0: blank or comment. */
static int parse_line(const char *p, size_t n, dmn_key_t *key, char *why, size_t whylen)
{
    const char *f[4];
    size_t fl[4];
    int nf = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0) return rcd_fail(RCD_EINVAL, why, whylen, "NUL byte");
    const char *hash = memchr(p, '#', n);
    if (hash) n = (size_t)(hash - p);
    for (size_t i = 0; i < n;) {
        while (i < n && is_space(p[i]))
            i++;
        if (i == n) break;
        size_t s = i;
        while (i < n && !is_space(p[i]))
            i++;
        if (nf == 4) break;
        f[nf] = p + s;
        fl[nf++] = i - s;
    }
    if (nf == 0) return 0;
    if (nf != 3)
        return rcd_fail(RCD_EINVAL, why, whylen,
                        "expected 3 fields (SHA256_HEX TENANT ROLE), found %s", nf > 3 ? "more" : nf == 1 ? "1" : "2");
    if (fl[0] != 64)
        return rcd_fail(RCD_EINVAL, why, whylen,
                        "the key digest must be 64 lowercase hex digits (SHA-256), got %zu bytes",
                        fl[0]);
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval((unsigned char)f[0][2 * i]), lo = hexval((unsigned char)f[0][2 * i + 1]);
        if (hi < 0 || lo < 0)
            return rcd_fail(RCD_EINVAL, why, whylen,
                            "the key digest must be 64 lowercase hex digits (SHA-256)");
        key->digest[i] = (uint8_t)(hi << 4 | lo);
    }
    if (store_check_tenant(f[1], fl[1]))
        return rcd_fail(RCD_EINVAL, why, whylen,
                        "tenant must be 1 to %d bytes of [A-Za-z0-9._-]", STORE_TENANT_MAX);
    memcpy(key->tenant, f[1], fl[1]);
    key->tenant[fl[1]] = 0;
    if (fl[2] == 4 && !memcmp(f[2], "user", 4))
        key->role = DMN_ROLE_USER;
    else if (fl[2] == 5 && !memcmp(f[2], "admin", 5))
        key->role = DMN_ROLE_ADMIN;
    else
        return rcd_fail(RCD_EINVAL, why, whylen, "role must be user or admin");
    return 1;
}

int dmn_keys_parse(const char *buf, size_t len, const char *name, dmn_keys_t *out, char *err,
                   size_t errlen)
{
    dmn_keys_t k = {0};
    size_t cap = 0, *lines = NULL; /* the line of each key, for duplicates */
    char why[200];
    int rc = 0;
    long line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len, n = end - pos;
        line++;
        if (n && buf[pos + n - 1] == '\r') n--;
        dmn_key_t key;
        memset(&key, 0, sizeof(key));
        int r = parse_line(buf + pos, n, &key, why, sizeof(why));
        pos = end + 1;
        if (r < 0) {
            rc = rcd_fail(RCD_EINVAL, err, errlen, "%s:%ld: %s", name, line, why);
            goto fail;
        }
        if (r == 0) continue;
        for (size_t i = 0; i < k.n; i++)
            if (!memcmp(k.v[i].digest, key.digest, 32)) {
                rc = rcd_fail(RCD_EINVAL, err, errlen, "%s:%ld: duplicate key (also on line %zu)",
                              name, line, lines[i]);
                goto fail;
            }
        if (k.n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            dmn_key_t *v = realloc(k.v, nc * sizeof(*v));
            size_t *l = v ? realloc(lines, nc * sizeof(*l)) : NULL;
            if (v) k.v = v;
            if (!l) {
                rc = rcd_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", name);
                goto fail;
            }
            lines = l;
            cap = nc;
        }
        lines[k.n] = (size_t)line;
        k.v[k.n++] = key;
    }
    for (size_t i = 0; i < k.n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = !strcmp(k.v[i].tenant, k.v[j].tenant);
        k.n_tenants += !seen;
    }
    free(lines);
    *out = k;
    return 0;
fail:
    free(lines);
    dmn_keys_free(&k);
    return rc;
}

int dmn_keys_load(const char *path, dmn_keys_t *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    int rc;
    if (!f) return rcd_fail(RCD_EIO, err, errlen, "%s: %s", path, strerror(errno));
    size_t cap = 0, len = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= DMN_KEYS_FILE_MAX) {
                rc = rcd_fail(RCD_ETOOBIG, err, errlen, "%s: over %u bytes", path,
                              DMN_KEYS_FILE_MAX);
                goto out;
            }
            cap = cap ? cap * 2 : 4096;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                rc = rcd_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", path);
                goto out;
            }
            buf = b;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    if (ferror(f)) {
        rc = rcd_fail(RCD_EIO, err, errlen, "%s: read error", path);
        goto out;
    }
    rc = dmn_keys_parse(buf ? buf : "", len, path, out, err, errlen);
out:
    free(buf);
    fclose(f);
    return rc;
}

void dmn_auth_md_take(dmn_auth_md_t *md, const void *key, size_t klen, const void *val,
                      size_t vlen)
{
    if (klen == 13 && !memcmp(key, "authorization", 13)) {
        const char *v = val;
        md->has_authz = true;
        md->authz_form = false;
        /* "Bearer KEY": the scheme is case-insensitive (RFC 6750), KEY is hashed as sent */
        if (vlen > 7 && !strncasecmp(v, "bearer ", 7)) {
            size_t s = 7;
            while (s < vlen && v[s] == ' ')
                s++;
            if (s < vlen && dmn_sha256(v + s, vlen - s, md->digest) == 0) md->authz_form = true;
        }
    } else if (klen == 15 && !memcmp(key, "x-recurd-tenant", 15)) {
        md->has_tenant = true;
        md->tenant_len = vlen;
        if (vlen <= STORE_TENANT_MAX) {
            memcpy(md->tenant, val, vlen);
            md->tenant[vlen] = 0;
        } else {
            md->tenant[0] = 0;
        }
    }
}
