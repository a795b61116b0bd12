/* Unit tests of dmn_tls: the option combinations, the loopback rule, and the file checks at
 * load and reload (missing, empty, not PEM, a NUL byte, a key of another certificate, a client
 * CA without certificates), each refused naming its file. Keys and self-signed certificates
 * are made here with OpenSSL, in a temporary directory. */
#include "daemon/dmn_tls.h"
#include "tests/support/rcd_test.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rcd_error.h"

static char g_dir[64];

static void path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", g_dir, name);
}

static void write_text(const char *name, const char *text, size_t n)
{
    char p[128];
    path(p, sizeof(p), name);
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fwrite(text, 1, n, f);
    fclose(f);
}

/* A P-256 key in <name>.key and a self-signed certificate for it in <name>.crt. */
static void make_pair(const char *name)
{
    char p[128];
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    CHECK(k && x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, nm);
    CHECK(X509_sign(x, k, EVP_sha256()) > 0);
    snprintf(p, sizeof(p), "%s/%s.key", g_dir, name);
    FILE *f = fopen(p, "w");
    CHECK(f && PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL));
    if (f) fclose(f);
    snprintf(p, sizeof(p), "%s/%s.crt", g_dir, name);
    f = fopen(p, "w");
    CHECK(f && PEM_write_X509(f, x));
    if (f) fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
}

static dmn_opts_t opts(const char *cert, const char *key, const char *ca)
{
    static char c[128], k[128], a[128], host[32] = "127.0.0.1";
    dmn_opts_t o;
    memset(&o, 0, sizeof(o));
    if (cert[0]) path(c, sizeof(c), cert);
    if (key[0]) path(k, sizeof(k), key);
    if (ca[0]) path(a, sizeof(a), ca);
    o.tls_cert = cert[0] ? c : (char *)"";
    o.tls_key = key[0] ? k : (char *)"";
    o.tls_client_ca = ca[0] ? a : (char *)"";
    o.host = host;
    return o;
}

/* dmn_tls_create's result; err must name `file` when it fails. */
static int create(const char *cert, const char *key, const char *ca, const char *file)
{
    dmn_opts_t o = opts(cert, key, ca);
    dmn_tls_t *t = NULL;
    char err[600] = "";
    int rc = dmn_tls_create(&o, &t, err, sizeof(err));
    if (rc == 0) {
        CHECK(t != NULL);
        dmn_tls_destroy(t);
    } else {
        CHECK(t == NULL);
        CHECK_MSG(file == NULL || strstr(err, file), "'%s' does not name %s", err, file);
    }
    return rc;
}

static void test_option_pairs(void)
{
    char err[300];
    dmn_opts_t o = opts("", "", "");
    CHECK(dmn_tls_check_opts(&o, err, sizeof(err)) == 0 && !dmn_tls_enabled(&o));
    o = opts("a.crt", "", "");
    CHECK(dmn_tls_check_opts(&o, err, sizeof(err)) == RCD_EINVAL && strstr(err, "--tls-key"));
    o = opts("", "a.key", "");
    CHECK(dmn_tls_check_opts(&o, err, sizeof(err)) == RCD_EINVAL && strstr(err, "--tls-cert"));
    o = opts("", "", "ca.crt");
    CHECK(dmn_tls_check_opts(&o, err, sizeof(err)) == RCD_EINVAL &&
          strstr(err, "--tls-client-ca needs --tls-cert"));
    o = opts("a.crt", "a.key", "ca.crt");
    CHECK(dmn_tls_check_opts(&o, err, sizeof(err)) == 0 && dmn_tls_enabled(&o));
    /* no TLS: create gives NULL and no error */
    dmn_tls_t *t = (dmn_tls_t *)&o;
    o = opts("", "", "");
    CHECK(dmn_tls_create(&o, &t, err, sizeof(err)) == 0 && t == NULL);
    CHECK(strcmp(dmn_tls_mode(NULL), "plaintext") == 0);
}

static void test_loopback(void)
{
    dmn_opts_t o = opts("", "", "");
    const char *local[] = {"127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "unix:/x"};
    const char *remote[] = {"0.0.0.0", "10.0.0.1", "::", "example.com", "128.0.0.1"};
    for (size_t i = 0; i < sizeof(local) / sizeof(*local); i++) {
        o.host = (char *)local[i];
        CHECK_MSG(dmn_host_is_loopback(&o), "%s", local[i]);
    }
    for (size_t i = 0; i < sizeof(remote) / sizeof(*remote); i++) {
        o.host = (char *)remote[i];
        CHECK_MSG(!dmn_host_is_loopback(&o), "%s", remote[i]);
    }
    o.host = (char *)"127.0.0.1";
    o.listen_all = true;
    CHECK(!dmn_host_is_loopback(&o));
}

static void test_files(void)
{
    make_pair("a");
    make_pair("b");
    write_text("empty.pem", "", 0);
    write_text("junk.pem", "hello\n", 6);
    write_text("nul.pem", "-----BEGIN\0", 11);
    const char *broken = "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n";
    write_text("broken.crt", broken, strlen(broken));
    CHECK(create("a.crt", "a.key", "", NULL) == 0);
    CHECK(create("a.crt", "a.key", "b.crt", NULL) == 0); /* mTLS, b as the client CA */
    CHECK(create("nope.crt", "a.key", "", "nope.crt") == RCD_EIO);
    CHECK(create("a.crt", "nope.key", "", "nope.key") == RCD_EIO);
    CHECK(create("a.crt", "a.key", "nope.crt", "nope.crt") == RCD_EIO);
    CHECK(create("empty.pem", "a.key", "", "empty.pem") == RCD_EINVAL);
    CHECK(create("junk.pem", "a.key", "", "junk.pem") == RCD_EINVAL);
    CHECK(create("nul.pem", "a.key", "", "nul.pem") == RCD_EINVAL);
    CHECK(create("broken.crt", "a.key", "", "broken.crt") == RCD_EINVAL);
    CHECK(create("a.crt", "junk.pem", "", "junk.pem") == RCD_EINVAL);
    CHECK(create("a.key", "a.key", "", "a.key") == RCD_EINVAL); /* a key is no certificate */
    CHECK(create("a.crt", "b.key", "", "b.key") == RCD_EINVAL); /* another cert's key */
    CHECK(create("a.crt", "a.key", "junk.pem", "junk.pem") == RCD_EINVAL);
}

/* A failed reload names the file and keeps the loaded set; a later good one succeeds. */
static void test_reload(void)
{
    make_pair("r");
    make_pair("s");
    dmn_opts_t o = opts("r.crt", "r.key", "");
    dmn_tls_t *t = NULL;
    char err[600] = "", what[600] = "";
    CHECK(dmn_tls_create(&o, &t, err, sizeof(err)) == 0 && t);
    if (!t) return;
    CHECK(strcmp(dmn_tls_mode(t), "TLS") == 0);
    CHECK(dmn_tls_reload(t, what, sizeof(what), err, sizeof(err)) == 0);
    CHECK_MSG(strstr(what, "r.crt") && strstr(what, "CN=r"), "%s", what);
    /* the key replaced by another certificate's: refused, naming it */
    char r_key[128], s_key[128];
    path(r_key, sizeof(r_key), "r.key");
    path(s_key, sizeof(s_key), "s.key");
    char *good = rcd_test_read_file(r_key, NULL);
    CHECK(good != NULL);
    if (!good) {
        dmn_tls_destroy(t);
        return;
    }
    CHECK(rename(s_key, r_key) == 0);
    CHECK(dmn_tls_reload(t, what, sizeof(what), err, sizeof(err)) == RCD_EINVAL);
    CHECK_MSG(strstr(err, "r.key") && strstr(err, "does not match"), "%s", err);
    write_text("r.key", good, strlen(good));
    free(good);
    CHECK(dmn_tls_reload(t, what, sizeof(what), err, sizeof(err)) == 0);
    grpc_server_credentials *c = dmn_tls_server_credentials(t);
    CHECK(c != NULL);
    if (c) grpc_server_credentials_release(c);
    dmn_tls_destroy(t);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    snprintf(g_dir, sizeof(g_dir), "/tmp/dmn_tls_test.XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_option_pairs);
    RUN(test_loopback);
    RUN(test_files);
    RUN(test_reload);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return rcd_test_summary();
}
