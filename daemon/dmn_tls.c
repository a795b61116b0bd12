/* daemon: TLS for the gRPC listener (see dmn_tls.h). The PEM texts live here behind a mutex
 * with a generation number; gRPC calls fetch() on its own threads at each new handshake, and
 * it hands over a new certificate config only when the generation moved (a reload), so that
 * an unchanged config costs one lock. gRPC keeps the previous SSL context when it cannot use
 * a new one, and open connections keep theirs. */
#include "daemon/dmn_tls.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "daemon/dmn_log.h"

#define PEM_FILE_MAX (1 << 20) /* a certificate chain or CA bundle is a few KiB */

typedef struct pem_set {
    char *cert, *key, *ca; /* NUL-terminated PEM texts; ca NULL without --tls-client-ca */
    char summary[512];     /* what was loaded, for the logs */
} pem_set_t;

struct dmn_tls {
    char *cert_path, *key_path, *ca_path; /* ca_path NULL: no mTLS */
    pthread_mutex_t mu;                   /* guards the fields below (gRPC threads fetch) */
    pem_set_t cur;
    uint64_t gen, served_gen; /* served_gen != gen: the next handshake takes the new set */
    char mode[64];
};

bool dmn_tls_enabled(const dmn_opts_t *o)
{
    return o->tls_cert[0] != 0;
}

bool dmn_host_is_loopback(const dmn_opts_t *o)
{
    const char *h = o->host;
    if (o->listen_all) return false;
    return !strcmp(h, "localhost") || !strcmp(h, "::1") || !strcmp(h, "[::1]") ||
           !strncmp(h, "127.", 4) || !strncmp(h, "unix:", 5);
}

int dmn_tls_check_opts(const dmn_opts_t *o, char *err, size_t errlen)
{
    bool cert = o->tls_cert[0], key = o->tls_key[0], ca = o->tls_client_ca[0];
    if (cert && !key)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "--tls-cert needs --tls-key (the certificate's private key)");
    if (key && !cert)
        return rcd_fail(RCD_EINVAL, err, errlen, "--tls-key needs --tls-cert (its certificate)");
    if (ca && !cert)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with "
                        "client certificates)");
    return 0;
}

static void pem_free(char *s)
{
    if (!s) return;
    OPENSSL_cleanse(s, strlen(s)); /* key material: do not leave it in freed memory */
    free(s);
}

static void set_free(pem_set_t *p)
{
    pem_free(p->cert);
    pem_free(p->key);
    pem_free(p->ca);
    memset(p, 0, sizeof(*p));
}

/* The whole file as a NUL-terminated string; a NUL byte inside is refused (gRPC reads the
 * text as a C string, so it would see less than was checked here). */
static int read_file(const char *what, const char *path, char **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return rcd_fail(RCD_EIO, err, errlen, "%s %s: %s", what, path, strerror(errno));
    char *buf = malloc(PEM_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, PEM_FILE_MAX + 1, f) : 0;
    int bad = ferror(f), rc = 0;
    fclose(f);
    if (!buf)
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "%s %s: out of memory", what, path);
    else if (bad)
        rc = rcd_fail(RCD_EIO, err, errlen, "%s %s: read error", what, path);
    else if (n > PEM_FILE_MAX)
        rc = rcd_fail(RCD_EINVAL, err, errlen, "%s %s: larger than %d bytes", what, path,
                      PEM_FILE_MAX);
    else if (n == 0)
        rc = rcd_fail(RCD_EINVAL, err, errlen, "%s %s: empty file", what, path);
    else if (memchr(buf, 0, n))
        rc =
            rcd_fail(RCD_EINVAL, err, errlen, "%s %s: holds a NUL byte (not PEM text)", what, path);
    if (rc) {
        if (buf) OPENSSL_cleanse(buf, n);
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *out = buf;
    return 0;
}

/* The certificates of a PEM text, in order; *n 0 when there is none. A PEM block that does not
 * parse is an error (not the end). The caller frees with sk_X509_pop_free. */
static STACK_OF(X509) * read_certs(const char *pem, int *n, bool *broken)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *b = BIO_new_mem_buf(pem, -1);
    *n = 0;
    *broken = false;
    if (!sk || !b) {
        BIO_free(b);
        sk_X509_free(sk);
        *broken = true;
        return NULL;
    }
    ERR_clear_error();
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            *broken = true;
            break;
        }
        (*n)++;
    }
    unsigned long e = ERR_peek_last_error();
    if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
        *broken = true;
    ERR_clear_error();
    BIO_free(b);
    return sk;
}

/* An encrypted key would make OpenSSL prompt on the terminal: refuse it instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static void describe_cert(X509 *x, char *buf, size_t len)
{
    char subject[200] = "?", until[64] = "?";
    X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof(subject));
    BIO *b = BIO_new(BIO_s_mem());
    if (b && ASN1_TIME_print(b, X509_get0_notAfter(x))) {
        int k = BIO_read(b, until, sizeof(until) - 1);
        until[k > 0 ? k : 0] = 0;
    }
    BIO_free(b);
    snprintf(buf, len, "%s, valid until %s", subject, until);
}

/* Reads and checks the three files into p (nothing kept on failure). */
static int load_set(const dmn_tls_t *t, pem_set_t *p, char *err, size_t errlen)
{
    STACK_OF(X509) *chain = NULL, *cas = NULL;
    EVP_PKEY *key = NULL;
    int n, rc;
    bool broken;
    memset(p, 0, sizeof(*p));
    if ((rc = read_file("--tls-cert", t->cert_path, &p->cert, err, errlen)) ||
        (rc = read_file("--tls-key", t->key_path, &p->key, err, errlen)) ||
        (t->ca_path && (rc = read_file("--tls-client-ca", t->ca_path, &p->ca, err, errlen))))
        goto cleanup;
    chain = read_certs(p->cert, &n, &broken);
    if (broken || n == 0) {
        rc = rcd_fail(RCD_EINVAL, err, errlen, "--tls-cert %s: %s", t->cert_path,
                      n ? "a PEM certificate in it does not parse"
                        : "no PEM certificate (-----BEGIN CERTIFICATE-----) in it");
        goto cleanup;
    }
    BIO *b = BIO_new_mem_buf(p->key, -1);
    ERR_clear_error();
    key = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    if (!key) {
        rc = rcd_fail(RCD_EINVAL, err, errlen,
                      "--tls-key %s: no readable PEM private key in it (an encrypted key is not "
                      "supported)",
                      t->key_path);
        goto cleanup;
    }
    X509 *leaf = sk_X509_value(chain, 0);
    if (X509_check_private_key(leaf, key) != 1) {
        ERR_clear_error();
        rc = rcd_fail(RCD_EINVAL, err, errlen,
                      "--tls-key %s does not match the certificate in --tls-cert %s (the first "
                      "certificate must be the server's own)",
                      t->key_path, t->cert_path);
        goto cleanup;
    }
    char desc[300];
    describe_cert(leaf, desc, sizeof(desc));
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0)
        dmn_log(DMN_WARN, "tls_cert_expired", NULL, NULL, "--tls-cert %s has expired (%s)",
                t->cert_path, desc);
    size_t pos = (size_t)snprintf(p->summary, sizeof(p->summary), "cert %s (%s), key %s",
                                  t->cert_path, desc, t->key_path);
    if (t->ca_path) {
        cas = read_certs(p->ca, &n, &broken);
        if (broken || n == 0) {
            rc = rcd_fail(RCD_EINVAL, err, errlen, "--tls-client-ca %s: %s", t->ca_path,
                          n ? "a PEM certificate in it does not parse"
                            : "no PEM certificate (-----BEGIN CERTIFICATE-----) in it");
            goto cleanup;
        }
        if (pos < sizeof(p->summary))
            snprintf(p->summary + pos, sizeof(p->summary) - pos, ", client CA %s (%d cert%s)",
                     t->ca_path, n, n == 1 ? "" : "s");
    }
    rc = 0;
cleanup:
    if (chain) sk_X509_pop_free(chain, X509_free);
    if (cas) sk_X509_pop_free(cas, X509_free);
    EVP_PKEY_free(key);
    if (rc) set_free(p);
    return rc;
}

int dmn_tls_create(const dmn_opts_t *o, dmn_tls_t **out, char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    if ((rc = dmn_tls_check_opts(o, err, errlen))) return rc;
    if (!dmn_tls_enabled(o)) return 0;
    dmn_tls_t *t = calloc(1, sizeof(*t));
    if (!t) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    t->cert_path = strdup(o->tls_cert);
    t->key_path = strdup(o->tls_key);
    t->ca_path = o->tls_client_ca[0] ? strdup(o->tls_client_ca) : NULL;
    if (!t->cert_path || !t->key_path || (o->tls_client_ca[0] && !t->ca_path)) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto fail;
    }
    if ((rc = -pthread_mutex_init(&t->mu, NULL))) {
        rc = rcd_fail(RCD_EINTERNAL, err, errlen, "cannot create the TLS mutex");
        goto fail;
    }
    if ((rc = load_set(t, &t->cur, err, errlen))) {
        pthread_mutex_destroy(&t->mu);
        goto fail;
    }
    t->gen = 1;
    snprintf(t->mode, sizeof(t->mode), "%s",
             t->ca_path ? "TLS, client certificates required (mTLS)" : "TLS");
    dmn_log(DMN_INFO, "tls", NULL, NULL, "%s: %s", t->mode, t->cur.summary);
    *out = t;
    return 0;
fail:
    free(t->cert_path);
    free(t->key_path);
    free(t->ca_path);
    free(t);
    return rc;
}

/* gRPC's threads, at each new handshake (under the security connector's lock). */
static grpc_ssl_certificate_config_reload_status fetch(void *user,
                                                       grpc_ssl_server_certificate_config **config)
{
    dmn_tls_t *t = user;
    grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    pthread_mutex_lock(&t->mu);
    if (t->served_gen != t->gen) {
        grpc_ssl_pem_key_cert_pair pair = {t->cur.key, t->cur.cert};
        /* Without mTLS no client certificate is requested, but gRPC wants some roots. */
        *config = grpc_ssl_server_certificate_config_create(t->cur.ca ? t->cur.ca : t->cur.cert,
                                                            &pair, 1);
        t->served_gen = t->gen;
        st = *config ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW
                     : GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

grpc_server_credentials *dmn_tls_server_credentials(dmn_tls_t *t)
{
    grpc_ssl_server_credentials_options *opts =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            t->ca_path ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                       : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            fetch, t);
    return opts ? grpc_ssl_server_credentials_create_with_options(opts) : NULL;
}

int dmn_tls_reload(dmn_tls_t *t, char *what, size_t whatlen, char *err, size_t errlen)
{
    pem_set_t next, old;
    int rc = load_set(t, &next, err, errlen);
    if (rc) return rc;
    snprintf(what, whatlen, "%s", next.summary);
    pthread_mutex_lock(&t->mu);
    old = t->cur;
    t->cur = next;
    t->gen++;
    pthread_mutex_unlock(&t->mu);
    set_free(&old);
    return 0;
}

const char *dmn_tls_mode(const dmn_tls_t *t)
{
    return t ? t->mode : "plaintext";
}

void dmn_tls_destroy(dmn_tls_t *t)
{
    if (!t) return;
    set_free(&t->cur);
    pthread_mutex_destroy(&t->mu);
    free(t->cert_path);
    free(t->key_path);
    free(t->ca_path);
    free(t);
}
