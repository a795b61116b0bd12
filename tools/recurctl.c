/* recurctl: command-line client of recurd over the gRPC C core (protobuf-c messages, method
 * paths by hand). `recurctl generate "prompt"` streams text to stdout; session, models,
 * tokenize and health commands print one line each. Exit status: 0, or the gRPC status. */
#include <errno.h>
#include <grpc/grpc.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "grpc/health/v1/health.pb-c.h"
#include "rcd_client.h"
#include "recurd/v1/inference.pb-c.h"

static const char *g_addr = "127.0.0.1:50051";
/* TLS: the server's CA (enables TLS), a client certificate and key (mTLS), a name to check the
 * server's certificate against instead of the address's host. */
static const char *g_tls_ca, *g_tls_cert, *g_tls_key, *g_tls_name;
static double g_timeout = 0; /* seconds, 0 = none */
static grpc_channel *g_ch;
static grpc_completion_queue *g_cq;

static void usage(void)
{
    fprintf(
        stderr,
        "usage: recurctl [--addr HOST:PORT] [--timeout SECONDS] [--tls-ca FILE]\n"
        "                [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME] COMMAND ...\n"
        "  generate [--session ID] [--max-tokens N] [--temperature T] [--seed N]\n"
        "           [--stop STR] [--expected-version V] [--priority N] [--no-speculate]\n"
        "           PROMPT   (stderr: finish, tokens, ms; drafts when speculating)\n"
        "  session create [--id ID] [--owner NAME] [--ttl SECONDS] [--meta KEY=VALUE]...\n"
        "  session get ID | session fork ID [--id NEW] | session delete ID\n"
        "  models | tokenize TEXT | health\n"
        "  keys new --tenant T [--role user|admin]   (prints a new key, then its\n"
        "           --api-keys line; no daemon needed)\n"
        "--api-key KEY (env RECURD_API_KEY) sends authorization: Bearer KEY\n"
        "--tls-ca: the server's CA certificate (PEM): connect over TLS; --tls-cert/--tls-key:\n"
        "  a client certificate and key (PEM) for a server that requires them (mTLS);\n"
        "  --tls-server-name: the name the server's certificate must carry (default: HOST)\n"
        "env RECURD_ADDR sets the default address (%s); RECURCTL_TLS_CA, RECURCTL_TLS_CERT,\n"
        "RECURCTL_TLS_KEY and RECURCTL_TLS_SERVER_NAME the TLS defaults\n",
        g_addr);
}

/* Tags on the pluck queue: 1 request sent, 2 status, 3 message. */
static void *tag(intptr_t x)
{
    return (void *)x;
}

/* Metadata every call sends: authorization (--api-key) first, then x-session-id for a call
 * that names a session (route), which a load balancer hashes onto a replica. */
static grpc_metadata g_md[2];
static size_t g_n_auth;

static void route(const ProtobufCMessage *req)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "session_id");
    const char *sid = f && f->type == PROTOBUF_C_TYPE_STRING
                          ? *(char *const *)((const char *)req + f->offset)
                          : NULL;
    size_t n = g_n_auth;
    if (sid && *sid) {
        memset(&g_md[n], 0, sizeof(g_md[n]));
        g_md[n].key = grpc_slice_from_static_string("x-session-id");
        g_md[n].value = grpc_slice_from_static_string(sid); /* argv: lives to the end */
        n++;
    }
    rcd_client_set_metadata(n ? g_md : NULL, n);
}

/* Starts a call: sends the request and half-closes; reads initial metadata and status. */
static int rpc_start(rcd_call_t *r, const char *method, const ProtobufCMessage *req)
{
    route(req);
    gpr_timespec dl = rcd_client_deadline_ms(g_timeout > 0 ? (int64_t)(g_timeout * 1000) : -1);
    if (rcd_call_start(r, g_ch, g_cq, method, req, dl, tag(1), tag(2)) != 2) return -1;
    return rcd_client_pluck(g_cq, tag(1)) ? 0 : 1; /* on failure the status still arrives */
}

/* Next response message, or NULL at the end of the stream. */
static ProtobufCMessage *rpc_next(rcd_call_t *r, const ProtobufCMessageDescriptor *d)
{
    if (!rcd_call_recv(r, tag(3)) || !rcd_client_pluck(g_cq, tag(3))) return NULL;
    return rcd_call_take(r, d);
}

/* Waits for the status; prints it when not OK. Returns the status code. */
static int rpc_finish(rcd_call_t *r)
{
    rcd_client_pluck(g_cq, tag(2));
    int st = (int)r->status;
    if (st != GRPC_STATUS_OK)
        fprintf(stderr, "recurctl: error %d: %.*s\n", st, (int)GRPC_SLICE_LENGTH(r->details),
                (const char *)GRPC_SLICE_START_PTR(r->details));
    rcd_call_release(r);
    return st;
}

static int unary(const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *d, ProtobufCMessage **out)
{
    rcd_call_t r;
    *out = NULL;
    int rc = rpc_start(&r, method, req);
    if (rc < 0) return GRPC_STATUS_INTERNAL;
    if (rc == 0) *out = rpc_next(&r, d);
    int st = rpc_finish(&r);
    if (st && *out) {
        protobuf_c_message_free_unpacked(*out, NULL);
        *out = NULL;
    }
    return st ? st : *out ? 0 : GRPC_STATUS_INTERNAL;
}

/* A JSON string (owners and metadata are the caller's bytes). */
static void print_json_str(const char *str)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)str; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void print_session(const Recurd__V1__Session *s)
{
    printf("{\"session_id\":\"%s\",\"model\":\"%s\",\"version\":%llu,\"token_count\":%llu,"
           "\"created_unix_ms\":%lld,\"updated_unix_ms\":%lld,\"parent_session_id\":\"%s\"",
           s->session_id, s->model, (unsigned long long)s->version,
           (unsigned long long)s->token_count, (long long)s->created_unix_ms,
           (long long)s->updated_unix_ms, s->parent_session_id);
    printf(",\"owner\":");
    print_json_str(s->owner);
    printf(",\"ttl_seconds\":%u,\"expires_unix_ms\":%lld", s->ttl_seconds,
           (long long)s->expires_unix_ms);
    printf(",\"metadata\":{");
    for (size_t i = 0; i < s->n_metadata; i++) {
        printf("%s", i ? "," : "");
        print_json_str(s->metadata[i]->key);
        putchar(':');
        print_json_str(s->metadata[i]->value);
    }
    printf("}}\n");
}

static int cmd_generate(int argc, char **argv)
{
    Recurd__V1__GenerateRequest req = RECURD__V1__GENERATE_REQUEST__INIT;
    Recurd__V1__SamplingParams sp = RECURD__V1__SAMPLING_PARAMS__INIT;
    char *stops[16];
    req.sampling = &sp;
    const char *prompt = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--session") && more)
            req.session_id = argv[++i];
        else if (!strcmp(a, "--max-tokens") && more)
            sp.max_tokens = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--temperature") && more) {
            sp._temperature_case = RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE;
            sp.temperature = strtof(argv[++i], NULL);
        } else if (!strcmp(a, "--seed") && more) {
            sp._seed_case = RECURD__V1__SAMPLING_PARAMS___SEED_SEED;
            sp.seed = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(a, "--stop") && more && sp.n_stop < 16)
            stops[sp.n_stop++] = argv[++i];
        else if (!strcmp(a, "--no-speculate")) /* SamplingParams.speculate = SPECULATE_OFF */
            sp.speculate = RECURD__V1__SPECULATE__SPECULATE_OFF;
        else if (!strcmp(a, "--priority") && more) /* 0..3, higher first; the daemon checks */
            req.priority = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--expected-version") && more) {
            req._expected_version_case =
                RECURD__V1__GENERATE_REQUEST___EXPECTED_VERSION_EXPECTED_VERSION;
            req.expected_version = strtoull(argv[++i], NULL, 10);
        } else if (a[0] == '-' && a[1] == '-') {
            usage();
            return 2;
        } else
            prompt = a;
    }
    if (!prompt) {
        usage();
        return 2;
    }
    sp.stop = stops;
    req.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT;
    req.text = (char *)prompt;
    rcd_call_t r;
    Recurd__V1__GenerateResponse *m;
    int rc = rpc_start(&r, "/recurd.v1.Inference/Generate", &req.base);
    if (rc < 0) return GRPC_STATUS_INTERNAL;
    if (rc == 0) {
        while ((m = (Recurd__V1__GenerateResponse *)rpc_next(
                    &r, &recurd__v1__generate_response__descriptor))) {
            fputs(m->text, stdout);
            fflush(stdout);
            if (m->usage) {
                static const char *fr[] = {"unspecified", "length", "stop", "eos", "context"};
                fprintf(stderr,
                        "\n[finish %s, %u prompt + %u completion tokens, %.1f ms, session %s "
                        "version %llu",
                        fr[(unsigned)m->finish_reason % 5], m->usage->prompt_tokens,
                        m->usage->completion_tokens, m->usage->total_ms,
                        m->session_id[0] ? m->session_id : "-",
                        (unsigned long long)m->session_version);
                if (m->usage->draft_tokens) /* speculative decoding: verified, kept */
                    fprintf(stderr, ", %u drafts %u accepted", m->usage->draft_tokens,
                            m->usage->accepted_tokens);
                fprintf(stderr, "]\n");
            }
            protobuf_c_message_free_unpacked(&m->base, NULL);
        }
    }
    return rpc_finish(&r);
}

static int cmd_session(int argc, char **argv)
{
    ProtobufCMessage *out = NULL;
    int st;
    if (argc < 1) {
        usage();
        return 2;
    }
    const char *sub = argv[0];
    if (!strcmp(sub, "create")) {
        Recurd__V1__CreateSessionRequest req = RECURD__V1__CREATE_SESSION_REQUEST__INIT;
        Recurd__V1__MetadataEntry ents[32], *ptrs[32];
        for (int i = 1; i < argc; i++) {
            if (!strcmp(argv[i], "--id") && i + 1 < argc) {
                req.session_id = argv[++i];
            } else if (!strcmp(argv[i], "--owner") && i + 1 < argc) {
                req.owner = argv[++i];
            } else if (!strcmp(argv[i], "--ttl") && i + 1 < argc) {
                char *end;
                errno = 0;
                unsigned long long v = strtoull(argv[++i], &end, 10);
                if (errno || end == argv[i] || *end || argv[i][0] == '-' || v > UINT32_MAX) {
                    fprintf(stderr, "recurctl: --ttl wants seconds (0..%u)\n", UINT32_MAX);
                    return 2;
                }
                req.ttl_seconds = (uint32_t)v;
            } else if (!strcmp(argv[i], "--meta") && i + 1 < argc && req.n_metadata < 32) {
                char *kv = argv[++i], *eq = strchr(kv, '=');
                if (!eq) {
                    usage();
                    return 2;
                }
                *eq = 0;
                recurd__v1__metadata_entry__init(&ents[req.n_metadata]);
                ents[req.n_metadata].key = kv;
                ents[req.n_metadata].value = eq + 1;
                ptrs[req.n_metadata] = &ents[req.n_metadata];
                req.n_metadata++;
            } else {
                usage();
                return 2;
            }
        }
        req.metadata = ptrs;
        st = unary("/recurd.v1.Inference/CreateSession", &req.base,
                   &recurd__v1__session__descriptor, &out);
    } else if (!strcmp(sub, "get") && argc == 2) {
        Recurd__V1__GetSessionRequest req = RECURD__V1__GET_SESSION_REQUEST__INIT;
        req.session_id = argv[1];
        st = unary("/recurd.v1.Inference/GetSession", &req.base, &recurd__v1__session__descriptor,
                   &out);
    } else if (!strcmp(sub, "fork") && (argc == 2 || (argc == 4 && !strcmp(argv[2], "--id")))) {
        Recurd__V1__ForkSessionRequest req = RECURD__V1__FORK_SESSION_REQUEST__INIT;
        req.session_id = argv[1];
        if (argc == 4) req.new_session_id = argv[3];
        st = unary("/recurd.v1.Inference/ForkSession", &req.base, &recurd__v1__session__descriptor,
                   &out);
    } else if (!strcmp(sub, "delete") && argc == 2) {
        Recurd__V1__DeleteSessionRequest req = RECURD__V1__DELETE_SESSION_REQUEST__INIT;
        req.session_id = argv[1];
        st = unary("/recurd.v1.Inference/DeleteSession", &req.base,
                   &recurd__v1__delete_session_response__descriptor, &out);
        if (!st) printf("{\"deleted\":\"%s\"}\n", argv[1]);
        if (out) protobuf_c_message_free_unpacked(out, NULL);
        return st;
    } else {
        usage();
        return 2;
    }
    if (!st) print_session((const Recurd__V1__Session *)out);
    if (out) protobuf_c_message_free_unpacked(out, NULL);
    return st;
}

static int cmd_models(void)
{
    Recurd__V1__ListModelsRequest req = RECURD__V1__LIST_MODELS_REQUEST__INIT;
    ProtobufCMessage *out;
    int st = unary("/recurd.v1.Inference/ListModels", &req.base,
                   &recurd__v1__list_models_response__descriptor, &out);
    if (st) return st;
    Recurd__V1__ListModelsResponse *r = (Recurd__V1__ListModelsResponse *)out;
    for (size_t i = 0; i < r->n_models; i++) {
        Recurd__V1__Model *m = r->models[i];
        printf("{\"id\":\"%s\",\"architecture\":\"%s\",\"vocab_size\":%d,\"n_layers\":%d,"
               "\"state_bytes\":%llu,\"fingerprint\":\"%s\",\"backend\":\"%s\"}\n",
               m->id, m->architecture, m->vocab_size, m->n_layers,
               (unsigned long long)m->state_bytes, m->fingerprint, m->backend);
    }
    protobuf_c_message_free_unpacked(out, NULL);
    return 0;
}

static int cmd_tokenize(int argc, char **argv)
{
    if (argc != 1) {
        usage();
        return 2;
    }
    Recurd__V1__TokenizeRequest req = RECURD__V1__TOKENIZE_REQUEST__INIT;
    req.text = argv[0];
    ProtobufCMessage *out;
    int st = unary("/recurd.v1.Inference/Tokenize", &req.base,
                   &recurd__v1__tokenize_response__descriptor, &out);
    if (st) return st;
    Recurd__V1__TokenizeResponse *r = (Recurd__V1__TokenizeResponse *)out;
    for (size_t i = 0; i < r->n_token_ids; i++)
        printf("%s%d", i ? "," : "", r->token_ids[i]);
    printf("\n");
    protobuf_c_message_free_unpacked(out, NULL);
    return 0;
}

static int cmd_health(void)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *out;
    int st = unary("/grpc.health.v1.Health/Check", &req.base,
                   &grpc__health__v1__health_check_response__descriptor, &out);
    if (st) return st;
    int s = ((Grpc__Health__V1__HealthCheckResponse *)out)->status;
    static const char *names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    printf("%s\n", names[(unsigned)s % 4]);
    protobuf_c_message_free_unpacked(out, NULL);
    return s == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? 0 : 1;
}

/* keys new: 256 bits from getrandom as base64url without padding (43 characters, so that a key
 * is never mistaken for the 64-hex-digit digest that goes in the file), then the file line. */
static int cmd_keys(int argc, char **argv)
{
    const char *tenant = NULL, *role = "user";
    if (argc < 1 || strcmp(argv[0], "new")) {
        usage();
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tenant") && i + 1 < argc)
            tenant = argv[++i];
        else if (!strcmp(argv[i], "--role") && i + 1 < argc)
            role = argv[++i];
        else {
            usage();
            return 2;
        }
    }
    size_t tl = tenant ? strlen(tenant) : 0;
    bool ok = tl >= 1 && tl <= 64;
    for (size_t i = 0; ok && i < tl; i++) {
        unsigned char c = (unsigned char)tenant[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-';
    }
    if (!ok) {
        fprintf(stderr, "recurctl: --tenant must be 1 to 64 bytes of [A-Za-z0-9._-]\n");
        return 2;
    }
    if (strcmp(role, "user") && strcmp(role, "admin")) {
        fprintf(stderr, "recurctl: --role must be user or admin\n");
        return 2;
    }
    unsigned char r[32];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        fprintf(stderr, "recurctl: getrandom: %s\n", strerror(errno));
        return 1;
    }
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char key[44];
    size_t n = 0;
    for (size_t i = 0; i < sizeof(r); i += 3) {
        uint32_t v = (uint32_t)r[i] << 16 | (i + 1 < sizeof(r) ? (uint32_t)r[i + 1] << 8 : 0) |
                     (i + 2 < sizeof(r) ? r[i + 2] : 0);
        size_t chars = i + 2 < sizeof(r) ? 4 : i + 1 < sizeof(r) ? 3 : 2;
        for (size_t j = 0; j < chars; j++)
            key[n++] = b64[(v >> (18 - 6 * j)) & 63];
    }
    key[n] = 0;
    unsigned char d[32];
    unsigned int dl = 0;
    if (!EVP_Digest(key, n, d, &dl, EVP_sha256(), NULL) || dl != 32) {
        fprintf(stderr, "recurctl: SHA-256 failed\n");
        return 1;
    }
    printf("%s\n", key);
    for (int i = 0; i < 32; i++)
        printf("%02x", d[i]);
    printf(" %s %s\n", tenant, role);
    return 0;
}

/* A PEM file's text (malloc'd), or NULL with a message. */
static char *read_pem(const char *flag, const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    if (f && (buf = malloc((1 << 20) + 1))) n = fread(buf, 1, 1 << 20, f);
    if (!f || !buf || ferror(f) || n == 0 || memchr(buf, 0, n)) {
        fprintf(stderr, "recurctl: %s %s: %s\n", flag, path,
                !f     ? strerror(errno)
                : !buf ? "out of memory"
                       : "unreadable, empty or not PEM");
        free(buf);
        buf = NULL;
    } else {
        buf[n] = 0;
    }
    if (f) fclose(f);
    return buf;
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* The channel: plaintext unless a TLS option is set. NULL (message printed) on a bad file. */
static grpc_channel *open_channel(void)
{
    if (!g_tls_ca && !g_tls_cert && !g_tls_key) return rcd_client_channel(g_addr);
    if (!g_tls_cert != !g_tls_key) {
        fprintf(stderr, "recurctl: --tls-cert and --tls-key go together\n");
        return NULL;
    }
    char *ca = g_tls_ca ? read_pem("--tls-ca", g_tls_ca) : NULL;
    char *cert = g_tls_cert ? read_pem("--tls-cert", g_tls_cert) : NULL;
    char *key = g_tls_key ? read_pem("--tls-key", g_tls_key) : NULL;
    grpc_channel *ch = NULL;
    if ((!g_tls_ca || ca) && (!g_tls_cert || cert) && (!g_tls_key || key))
        ch = rcd_client_channel_tls(g_addr, ca, cert, key, g_tls_name);
    free(ca);
    free(cert);
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    return ch;
}

int main(int argc, char **argv)
{
    const char *env = getenv("RECURD_ADDR");
    if (env && *env) g_addr = env;
    const char *api_key = getenv("RECURD_API_KEY");
    g_tls_ca = env_or("RECURCTL_TLS_CA", NULL);
    g_tls_cert = env_or("RECURCTL_TLS_CERT", NULL);
    g_tls_key = env_or("RECURCTL_TLS_KEY", NULL);
    g_tls_name = env_or("RECURCTL_TLS_SERVER_NAME", NULL);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--addr") && i + 1 < argc)
            g_addr = argv[++i];
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            g_timeout = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--api-key") && i + 1 < argc)
            api_key = argv[++i];
        else if (!strcmp(argv[i], "--tls-ca") && i + 1 < argc)
            g_tls_ca = argv[++i];
        else if (!strcmp(argv[i], "--tls-cert") && i + 1 < argc)
            g_tls_cert = argv[++i];
        else if (!strcmp(argv[i], "--tls-key") && i + 1 < argc)
            g_tls_key = argv[++i];
        else if (!strcmp(argv[i], "--tls-server-name") && i + 1 < argc)
            g_tls_name = argv[++i];
        else {
            usage();
            return !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ? 0 : 2;
        }
    }
    if (i >= argc) {
        usage();
        return 2;
    }
    if (!strcmp(argv[i], "keys")) return cmd_keys(argc - i - 1, argv + i + 1);
    grpc_init();
    char *bearer = NULL;
    grpc_metadata auth;
    if (api_key && *api_key) {
        size_t n = strlen(api_key) + 8;
        if (!(bearer = malloc(n))) return 1;
        snprintf(bearer, n, "Bearer %s", api_key);
        memset(&auth, 0, sizeof(auth));
        auth.key = grpc_slice_from_static_string("authorization");
        auth.value = grpc_slice_from_copied_string(bearer);
        g_md[0] = auth;
        g_n_auth = 1;
    }
    g_ch = open_channel();
    if (!g_ch) {
        grpc_shutdown();
        return 2;
    }
    g_cq = grpc_completion_queue_create_for_pluck(NULL);
    const char *cmd = argv[i++];
    int rc;
    if (!strcmp(cmd, "generate"))
        rc = cmd_generate(argc - i, argv + i);
    else if (!strcmp(cmd, "session"))
        rc = cmd_session(argc - i, argv + i);
    else if (!strcmp(cmd, "models"))
        rc = cmd_models();
    else if (!strcmp(cmd, "tokenize"))
        rc = cmd_tokenize(argc - i, argv + i);
    else if (!strcmp(cmd, "health"))
        rc = cmd_health();
    else {
        usage();
        rc = 2;
    }
    rcd_client_close(g_ch, g_cq, true);
    if (bearer) {
        grpc_slice_unref(auth.value);
        free(bearer);
    }
    grpc_shutdown();
    return rc;
}
