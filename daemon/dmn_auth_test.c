/* The API-keys parser, SHA-256, the key lookup and the metadata parsing of dmn_auth.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/dmn_auth.h"
#include "tests/support/rcd_test.h"

/* two digests (any 64 lowercase hex digits) */
#define H1 "7cb47c8e5ee1ba3c05a5c4af7d8a34b4bdc7ad4f1e1ae9d8f2d8e4cb4c4b36b5"
#define H2 "ffb8d1a74a2bbe5f5cd2bb93f68a1a1bd5c3e3a4ccf7d4c1d6b1a5cf4f0e7c21"

static int parse(const char *text, dmn_keys_t *k, char *err, size_t errlen)
{
    memset(k, 0, sizeof(*k));
    return dmn_keys_parse(text, strlen(text), "keys", k, err, errlen);
}

static void test_sha256(void)
{
    uint8_t d[32];
    CHECK(dmn_sha256("abc", 3, d) == 0);
    static const uint8_t want[4] = {0xba, 0x78, 0x16, 0xbf}; /* FIPS 180-2 example */
    CHECK(!memcmp(d, want, 4));
    CHECK(d[31] == 0xad);
}

static void test_good(void)
{
    dmn_keys_t k;
    char err[256] = "";
    const char *text = "# recurd keys\n"
                       "\n"
                       "   \t\n" H1 " alice user\n" H2 "\tops.team_1-x\tadmin   # on-call\r\n"
                       "  # indented comment\n";
    CHECK_MSG(parse(text, &k, err, sizeof(err)) == 0, "%s", err);
    CHECK(k.n == 2);
    CHECK(k.n_tenants == 2);
    CHECK(!strcmp(k.v[0].tenant, "alice") && k.v[0].role == DMN_ROLE_USER);
    CHECK(!strcmp(k.v[1].tenant, "ops.team_1-x") && k.v[1].role == DMN_ROLE_ADMIN);
    CHECK(k.v[0].digest[0] == 0x7c && k.v[0].digest[31] == 0xb5);
    CHECK(dmn_keys_find(&k, k.v[1].digest) == &k.v[1]);
    CHECK(dmn_keys_find(&k, k.v[0].digest) == &k.v[0]);
    uint8_t other[32] = {0};
    CHECK(dmn_keys_find(&k, other) == NULL);
    dmn_keys_free(&k);
    /* no final newline, CRLF everywhere; empty file; comments only */
    CHECK(parse(H1 " a user\r\n" H2 " a admin", &k, err, sizeof(err)) == 0);
    CHECK(k.n == 2 && k.n_tenants == 1);
    dmn_keys_free(&k);
    CHECK(parse("", &k, err, sizeof(err)) == 0 && k.n == 0);
    CHECK(parse("# nothing\r\n\r\n", &k, err, sizeof(err)) == 0 && k.n == 0);
    dmn_keys_free(&k);
    /* a 64-byte tenant is the longest */
    char t64[200];
    snprintf(t64, sizeof(t64), H1 " %064d user\n", 7);
    CHECK(parse(t64, &k, err, sizeof(err)) == 0 && k.n == 1 && strlen(k.v[0].tenant) == 64);
    dmn_keys_free(&k);
}

/* Each bad line fails naming the file and line. */
static void test_bad(void)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {H1 " alice\n", "keys:1: expected 3 fields"},
        {"# c\n" H1 " alice user extra\n", "keys:2: expected 3 fields"},
        {H1 "\n", "keys:1: expected 3 fields"},
        {"7CB47C8E5EE1BA3C05A5C4AF7D8A34B4BDC7AD4F1E1AE9D8F2D8E4CB4C4B36B5 alice user\n",
         "keys:1: the key digest must be 64 lowercase hex"},
        {"7cb47c8e alice user\n", "keys:1: the key digest must be 64 lowercase hex"},
        {H1 "0 alice user\n", "keys:1: the key digest must be 64"},
        {"zzb47c8e5ee1ba3c05a5c4af7d8a34b4bdc7ad4f1e1ae9d8f2d8e4cb4c4b36b5 alice user\n",
         "keys:1: the key digest"},
        {H1 " al/ice user\n", "keys:1: tenant must be 1 to 64 bytes"},
        {H1 " al~ice user\n", "keys:1: tenant must be"},
        {H1 " al:ice user\n", "keys:1: tenant must be"},
        {H1 " "
            "01234567890123456789012345678901234567890123456789012345678901234 user\n",
         "keys:1: tenant must be"},
        {H1 " alice root\n", "keys:1: role must be user or admin"},
        {H1 " alice User\n", "keys:1: role must be"},
        {"\n\n" H1 " alice user\n" H1 " bob admin\n", "keys:4: duplicate key (also on line 3)"},
        {H1 " alice\0 user\n", "keys:1: NUL byte"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        dmn_keys_t k = {0};
        char err[256] = "";
        size_t len = strlen(cases[i].text);
        if (strstr(cases[i].want, "NUL")) len += strlen(cases[i].text + len + 1) + 1;
        int rc = dmn_keys_parse(cases[i].text, len, "keys", &k, err, sizeof(err));
        CHECK_MSG(rc == RCD_EINVAL, "case %zu", i);
        CHECK_MSG(!strncmp(err, cases[i].want, strlen(cases[i].want)), "case %zu: %s", i, err);
        CHECK(k.v == NULL && k.n == 0);
    }
}

static void test_load(void)
{
    char path[] = "/tmp/dmn_auth_test.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    const char *text = H1 " alice user\n" H2 " bob admin\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    dmn_keys_t k = {0};
    char err[256];
    CHECK(dmn_keys_load(path, &k, err, sizeof(err)) == 0 && k.n == 2);
    dmn_keys_free(&k);
    unlink(path);
    CHECK(dmn_keys_load(path, &k, err, sizeof(err)) == RCD_EIO);
    CHECK(strstr(err, path) != NULL);
}

static void test_metadata(void)
{
    dmn_auth_md_t md;
    memset(&md, 0, sizeof(md));
    const char *v = "Bearer k1";
    dmn_auth_md_take(&md, "authorization", 13, v, strlen(v));
    uint8_t d[32];
    dmn_sha256("k1", 2, d);
    CHECK(md.has_authz && md.authz_form && !memcmp(md.digest, d, 32));
    memset(&md, 0, sizeof(md));
    dmn_auth_md_take(&md, "authorization", 13, "bearer  k1", 10); /* scheme case-insensitive */
    CHECK(md.authz_form && !memcmp(md.digest, d, 32));
    memset(&md, 0, sizeof(md));
    dmn_auth_md_take(&md, "authorization", 13, "Basic k1", 8);
    CHECK(md.has_authz && !md.authz_form);
    memset(&md, 0, sizeof(md));
    dmn_auth_md_take(&md, "authorization", 13, "Bearer ", 7);
    CHECK(md.has_authz && !md.authz_form);
    memset(&md, 0, sizeof(md));
    dmn_auth_md_take(&md, "x-recurd-tenant", 15, "alice", 5);
    CHECK(md.has_tenant && !strcmp(md.tenant, "alice") && md.tenant_len == 5);
    char big[100];
    memset(big, 'a', sizeof(big));
    dmn_auth_md_take(&md, "x-recurd-tenant", 15, big, sizeof(big));
    CHECK(md.has_tenant && md.tenant[0] == 0 && md.tenant_len == 100);
    dmn_auth_md_take(&md, "x-request-id", 12, "r", 1); /* ignored */
    CHECK(!md.has_authz);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_sha256);
    RUN(test_good);
    RUN(test_bad);
    RUN(test_load);
    RUN(test_metadata);
    return rcd_test_summary();
}
