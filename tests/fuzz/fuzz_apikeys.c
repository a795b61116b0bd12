/* libFuzzer target for the API-keys file (daemon/dmn_auth.h, `--api-keys`): any bytes must be
 * refused with RCD_EINVAL and a "apikeys:LINE: why" message, or parse into keys whose every
 * field is in range (tenants valid, roles known, digests unique), each found by its digest. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/rcd_error.h"
#include "daemon/dmn_auth.h"

#define FZ_REQUIRE(c)                                                                              \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dmn_keys_t k = {0};
    char err[512] = "";
    int rc = dmn_keys_parse((const char *)data, size, "apikeys", &k, err, sizeof(err));
    if (rc) {
        FZ_REQUIRE(rc == RCD_EINVAL || rc == RCD_ENOMEM);
        FZ_REQUIRE(!strncmp(err, "apikeys:", 8));
        FZ_REQUIRE(k.v == NULL && k.n == 0);
        return 0;
    }
    FZ_REQUIRE(k.n_tenants <= k.n);
    for (size_t i = 0; i < k.n; i++) {
        const dmn_key_t *e = &k.v[i];
        FZ_REQUIRE(store_check_tenant(e->tenant, strlen(e->tenant)) == 0);
        FZ_REQUIRE(e->role == DMN_ROLE_USER || e->role == DMN_ROLE_ADMIN);
        FZ_REQUIRE(dmn_keys_find(&k, e->digest) == e);
    }
    dmn_keys_free(&k);
    return 0;
}
