/* daemon: the one option table. Each row yields a CLI flag (--name, dashes for
 * underscores), an environment variable, a config-file key (name = value), the values it
 * allows and a --help line. Precedence: default < config file < environment < command line. */
#ifndef DMN_OPTS_H
#define DMN_OPTS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#ifndef RCD_DEFAULT_MODEL
#define RCD_DEFAULT_MODEL "models/recurd-mamba-tiny"
#endif

/* The default state dir: $XDG_STATE_HOME/recurd, else $HOME/.local/state/recurd, else
 * ./recurd-state (expanded by dmn_opts_state_dir). */
#define DMN_DEFAULT_STATE_DIR "$XDG_STATE_HOME/recurd"

/* What a value may be: a range for INT (both ends included), a set of words for STR (choices
 * separated by '|'), DMN_ANY for the rest. The parser refuses anything else, naming the
 * option, where the value came from and what is allowed; --help shows it. */
#define DMN_RANGE(lo, hi) .min = (lo), .max = (hi)
#define DMN_ONE_OF(words) .choices = (words)
#define DMN_ANY .choices = NULL
#define DMN_INT_MAX 2147483647L /* options passed on as an int */
#define DMN_LONG_MAX LONG_MAX

/* X(field, type, default, env, allowed, help). Types: STR, INT, BOOL. */
#define DMN_OPTIONS(X)                                                                             \
    X(config, STR, "", "RECURD_CONFIG", DMN_ANY, "config file of `name = value` lines")            \
    X(model, STR, RCD_DEFAULT_MODEL, "RECURD_MODEL", DMN_ANY, "model directory (HF checkpoint)")   \
    X(host, STR, "127.0.0.1", "RECURD_HOST", DMN_ANY, "address to listen on")                      \
    X(listen_all, BOOL, "false", "RECURD_LISTEN_ALL", DMN_ANY,                                     \
      "listen on 0.0.0.0 (overrides host)")                                                        \
    X(port, INT, "50051", "RECURD_PORT", DMN_RANGE(0, 65535), "TCP port; 0 picks a free one")      \
    X(port_file, STR, "", "RECURD_PORT_FILE", DMN_ANY, "write the bound port to this file")        \
    X(http_port, INT, "8080", "RECURD_HTTP_PORT", DMN_RANGE(-1, 65535),                           \
      "HTTP port (OpenAI API, /metrics, /health), on --host or --listen-all like gRPC; 0 picks a " \
      "free one; -1: no HTTP listener")                                                            \
    X(http_port_file, STR, "", "RECURD_HTTP_PORT_FILE", DMN_ANY,                                   \
      "write the bound HTTP port to this file")                                                    \
    X(http_max_body_bytes, INT, "8388608", "RECURD_HTTP_MAX_BODY_BYTES",                           \
      DMN_RANGE(1024, 1L << 30), "largest HTTP request body; longer ones get 413")                 \
    X(http_max_headers, INT, "64", "RECURD_HTTP_MAX_HEADERS", DMN_RANGE(1, 100),                   \
      "request headers an HTTP request may carry; more get 431 (over 100: H2O answers 400)")       \
    X(http_max_header_bytes, INT, "16384", "RECURD_HTTP_MAX_HEADER_BYTES",                         \
      DMN_RANGE(1024, 262144),                                                                     \
      "bytes of request headers (names and values) an HTTP request may carry; more get 431")       \
    X(http_max_connections, INT, "1024", "RECURD_HTTP_MAX_CONNECTIONS",                           \
      DMN_RANGE(1, DMN_INT_MAX), "open HTTP connections; new ones beyond are closed at once")     \
    X(http_idle_timeout_ms, INT, "60000", "RECURD_HTTP_IDLE_TIMEOUT_MS",                           \
      DMN_RANGE(100, DMN_INT_MAX),                                                                 \
      "an HTTP connection waiting this long for a request is closed (keep-alive idle)")           \
    X(http_request_timeout_ms, INT, "10000", "RECURD_HTTP_REQUEST_TIMEOUT_MS",                     \
      DMN_RANGE(100, DMN_INT_MAX),                                                                 \
      "time a client has to send a whole HTTP request (headers and body) and to finish the TLS "  \
      "handshake; slower ones are cut")                                                            \
    X(http_write_timeout_ms, INT, "30000", "RECURD_HTTP_WRITE_TIMEOUT_MS",                         \
      DMN_RANGE(100, DMN_INT_MAX),                                                                 \
      "a streaming HTTP client that takes no byte of a pending write this long is cut")           \
    X(http_max_queued_bytes, INT, "1048576", "RECURD_HTTP_MAX_QUEUED_BYTES",                       \
      DMN_RANGE(4096, 1L << 30),                                                                   \
      "bytes of a streaming HTTP response queued for a slow reader before its writer pauses")     \
    X(metrics_require_key, BOOL, "false", "RECURD_METRICS_REQUIRE_KEY", DMN_ANY,                   \
      "with --api-keys, GET /metrics needs a key too (default: open, as scrapers expect)")        \
    X(tls_cert, STR, "", "RECURD_TLS_CERT", DMN_ANY,                                               \
      "PEM certificate chain (server's first): serve gRPC over TLS; needs --tls-key; SIGHUP "      \
      "reloads it")                                                                                \
    X(tls_key, STR, "", "RECURD_TLS_KEY", DMN_ANY,                                                 \
      "PEM private key of --tls-cert (unencrypted); SIGHUP reloads it")                            \
    X(tls_client_ca, STR, "", "RECURD_TLS_CLIENT_CA", DMN_ANY,                                     \
      "PEM CA certificates: clients must present a certificate signed by one (mTLS); needs "       \
      "--tls-cert; SIGHUP reloads it")                                                             \
    X(backend, STR, "cpu", "RECURD_BACKEND", DMN_ONE_OF("cpu|cuda"), "compute backend")            \
    X(threads, INT, "0", "RECURD_THREADS", DMN_RANGE(0, DMN_INT_MAX),                              \
      "CPU threads for the engine; 0: all")                                                        \
    X(adapt_threads, BOOL, "true", "RECURD_ADAPT_THREADS", DMN_ANY,                                \
      "run fewer of the CPU threads while they wait for CPUs other processes hold (Linux "        \
      "schedstat), trying more again later; outputs do not change")                              \
    X(isa, STR, "auto", "RECURD_ISA", DMN_ONE_OF("auto|avx512|avx2|portable"), "CPU kernels")      \
    X(matmul, STR, "fp32", "RECURD_MATMUL", DMN_ONE_OF("fp32|bf16"),                               \
      "CPU matmul precision: fp32 (logits match transformers in fp32) or bf16 (BF16 weights: "     \
      "inputs rounded to bf16, fp32 sums, on AMX: 130m shape 1.7x at 32 sequences, 2.6x prefill; " \
      "without AMX on AVX512_BF16)")                                                             \
    X(weights, STR, "native", "RECURD_WEIGHTS", DMN_ONE_OF("native|q8|q4"),                       \
      "CPU weight format: native (as stored), q8 (int8 per output row) or q4 (4-bit groups of "    \
      "32) quantized at load; checkpoints are tied to it (workers/README.md)")                     \
    X(slots, INT, "8", "RECURD_SLOTS", DMN_RANGE(1, DMN_INT_MAX),                                  \
      "sequences decoded at once (state slots)")                                                   \
    X(max_step_tokens, INT, "512", "RECURD_MAX_STEP_TOKENS", DMN_RANGE(1, DMN_INT_MAX),            \
      "token budget of one step")                                                                  \
    X(prefill_chunk, INT, "256", "RECURD_PREFILL_CHUNK", DMN_RANGE(0, DMN_INT_MAX),                \
      "prefill tokens a prompt gets per step before others get theirs (leftover budget is "        \
      "shared); 0: no chunking, a prompt's prefill runs whole in one step")                        \
    X(speculate, STR, "off", "RECURD_SPECULATE", DMN_ONE_OF("off|ngram|draft"),                    \
      "speculative decoding: off, ngram (drafts by prompt lookup in the session's tokens) or "     \
      "draft (a small model of the same vocabulary, --draft-model), verified in one step; same "   \
      "output")                                                                                    \
    X(spec_tokens, INT, "4", "RECURD_SPEC_TOKENS", DMN_RANGE(1, 15),                               \
      "speculative decoding: most draft tokens one verify step checks (k adapts per turn)")        \
    X(spec_max_batch, INT, "4", "RECURD_SPEC_MAX_BATCH", DMN_RANGE(0, DMN_INT_MAX),                \
      "speculative decoding: no drafts in a step of more sequences than this (0: no limit)")       \
    X(spec_adaptive, STR, "on", "RECURD_SPEC_ADAPTIVE", DMN_ONE_OF("on|off"),                      \
      "speculative decoding: time steps with and without drafts and pause speculation (per "      \
      "batch size, back-off 16..1024 steps) while it emits fewer tokens per second")              \
    X(draft_model, STR, "", "RECURD_DRAFT_MODEL", DMN_ANY,                                         \
      "--speculate draft: the draft model's directory (any supported family, the model's "         \
      "vocabulary and tokenizer; runs on the CPU beside the model)")                               \
    X(draft_threads, INT, "1", "RECURD_DRAFT_THREADS", DMN_RANGE(0, DMN_INT_MAX),                  \
      "--speculate draft: CPU threads for the draft model (0: all; a small draft runs best on "    \
      "one, its pool idle while the model's runs)")                                                \
    X(spec_history, INT, "8192", "RECURD_SPEC_HISTORY", DMN_RANGE(0, 1048576),                     \
      "tokens of each session's history kept in its checkpoints for n-gram drafts, whatever "     \
      "--speculate is (0: none; checkpoints then have no history section)")                       \
    X(aging_ms, INT, "5000", "RECURD_AGING_MS", DMN_RANGE(0, DMN_LONG_MAX),                        \
      "waiting this long raises a turn's priority by one (0: strict priority)")                    \
    X(pipeline, INT, "2", "RECURD_PIPELINE", DMN_RANGE(1, 2),                                      \
      "plans in flight: 2 plans step N+1 while step N runs; 1: lockstep (a new request waits "     \
      "for at most one step, not two)")                                                            \
    X(kv_blocks, INT, "0", "RECURD_KV_BLOCKS", DMN_RANGE(0, 1L << 30),                             \
      "KV-cache models (Granite 4.0-H): blocks in the KV pool, allocated at start, each "          \
      "kv-block-tokens x kv_bytes_per_token bytes; 0: 2048 positions per slot")                    \
    X(kv_block_tokens, INT, "16", "RECURD_KV_BLOCK_TOKENS", DMN_RANGE(0, 1L << 16),                \
      "KV-cache models: positions per KV block")                                                   \
    X(max_queue, INT, "256", "RECURD_MAX_QUEUE", DMN_RANGE(1, DMN_INT_MAX),                        \
      "turns waiting or running, at most")                                                         \
    X(max_context, INT, "8192", "RECURD_MAX_CONTEXT", DMN_RANGE(1, DMN_INT_MAX),                   \
      "tokens a session may hold")                                                                 \
    X(max_prompt, INT, "4096", "RECURD_MAX_PROMPT", DMN_RANGE(1, DMN_INT_MAX),                     \
      "tokens in one prompt, at most")                                                             \
    X(chat_template, STR, "", "RECURD_CHAT_TEMPLATE", DMN_ANY,                                     \
      "Jinja chat template file for chat requests; '' = the model's tokenizer_config.json "         \
      "chat_template, else the built-in ChatML default")                                           \
    X(default_max_tokens, INT, "256", "RECURD_DEFAULT_MAX_TOKENS", DMN_RANGE(1, DMN_INT_MAX),      \
      "max_tokens when a request gives none")                                                      \
    X(max_message_bytes, INT, "4194304", "RECURD_MAX_MESSAGE_BYTES", DMN_RANGE(1024, 1L << 30),    \
      "largest gRPC message received or sent")                                                     \
    X(max_sessions, INT, "1024", "RECURD_MAX_SESSIONS", DMN_RANGE(0, DMN_LONG_MAX),                \
      "sessions held in memory")                                                                   \
    X(state_dir, STR, DMN_DEFAULT_STATE_DIR, "RECURD_STATE_DIR", DMN_ANY,                          \
      "session checkpoints (no XDG_STATE_HOME: ~/.local/state/recurd); '' = memory only")          \
    X(ephemeral, BOOL, "false", "RECURD_EPHEMERAL", DMN_ANY,                                       \
      "sessions in memory only (ignores state-dir)")                                               \
    X(keep_versions, INT, "2", "RECURD_KEEP_VERSIONS", DMN_RANGE(1, DMN_INT_MAX),                  \
      "checkpoints kept per session")                                                              \
    X(group_commit, BOOL, "true", "RECURD_GROUP_COMMIT", DMN_ANY,                                  \
      "checkpoints written in one I/O batch share their flushes (two syncfs per batch); "          \
      "--no-group-commit: fsync each checkpoint and its directory on its own")                     \
    X(host_cache_bytes, INT, "268435456", "RECURD_HOST_CACHE_BYTES", DMN_RANGE(0, DMN_LONG_MAX),   \
      "bytes of session states cached in memory over the disk tier")                               \
    X(prefix_cache_bytes, INT, "67108864", "RECURD_PREFIX_CACHE_BYTES",                            \
      DMN_RANGE(0, DMN_LONG_MAX),                                                                  \
      "bytes of prompt-prefix snapshots kept in memory (0: no prefix cache)")                      \
    X(session_ttl, INT, "0", "RECURD_SESSION_TTL", DMN_RANGE(0, 4294967295L),                      \
      "seconds a session may go without a committed turn before it and its checkpoints are "       \
      "deleted, unless it sets its own ttl_seconds; 0: never")                                     \
    X(redis, STR, "", "RECURD_REDIS", DMN_ANY,                                                     \
      "host:port of a Redis shared tier (write-through, lookup on a miss)")                        \
    X(redis_user, STR, "", "RECURD_REDIS_USER", DMN_ANY,                                           \
      "Redis ACL user (AUTH user password); '': the default user")                                 \
    X(redis_password_file, STR, "", "RECURD_REDIS_PASSWORD_FILE", DMN_ANY,                         \
      "file whose first line is the Redis AUTH password (else env RECURD_REDIS_PASSWORD; never "   \
      "a flag: argv is public)")                                                                   \
    X(redis_tls, BOOL, "false", "RECURD_REDIS_TLS", DMN_ANY,                                       \
      "TLS to Redis; the server's certificate is always verified")                                 \
    X(redis_tls_ca, STR, "", "RECURD_REDIS_TLS_CA", DMN_ANY,                                       \
      "CA bundle (PEM) that verifies Redis's certificate; '': the system's")                       \
    X(redis_tls_cert, STR, "", "RECURD_REDIS_TLS_CERT", DMN_ANY,                                   \
      "client certificate (PEM) for Redis tls-auth-clients; with --redis-tls-key")                 \
    X(redis_tls_key, STR, "", "RECURD_REDIS_TLS_KEY", DMN_ANY,                                     \
      "the client certificate's private key (PEM)")                                                \
    X(redis_tls_server_name, STR, "", "RECURD_REDIS_TLS_SERVER_NAME", DMN_ANY,                     \
      "name or IP Redis's certificate must match (and SNI); '': the host of --redis")              \
    X(redis_prefix, STR, "recurd:", "RECURD_REDIS_PREFIX", DMN_ANY,                                \
      "Redis key prefix (keys are PREFIXckpt:ID): 1-64 of A-Z a-z 0-9 : _ - . { } /")              \
    X(redis_authority, BOOL, "true", "RECURD_REDIS_AUTHORITY", DMN_ANY,                            \
      "with --redis: Redis is the authority for each session's latest version (conditional "      \
      "commits; Redis unreachable: session calls UNAVAILABLE); off: write-through only")           \
    X(api_keys, STR, "", "RECURD_API_KEYS", DMN_ANY,                                             \
      "API keys file (lines: SHA256_HEX TENANT user|admin); clients send authorization: Bearer "  \
      "KEY and session ids are per tenant; reloads on SIGHUP; '' = no keys, sessions unprotected") \
    X(share_prefix_across_tenants, BOOL, "false", "RECURD_SHARE_PREFIX_ACROSS_TENANTS", DMN_ANY,   \
      "with API keys, let every tenant's prompts hit prefix snapshots taken for other tenants")   \
    X(replica_name, STR, "", "RECURD_REPLICA_NAME", DMN_ANY,                                      \
      "this replica's name, sent in every response's x-recurd-replica metadata; '' = the host "    \
      "name")                                                                                      \
    X(drain_grace_ms, INT, "10000", "RECURD_DRAIN_GRACE_MS", DMN_RANGE(0, DMN_LONG_MAX),           \
      "on SIGTERM/SIGINT, how long in-flight turns may finish")                                    \
    X(tenant_max_turns, INT, "0", "RECURD_TENANT_MAX_TURNS", DMN_RANGE(0, DMN_INT_MAX),            \
      "turns one tenant may have in progress (queued or running, until they end); 0: unlimited")   \
    X(tenant_max_queued, INT, "0", "RECURD_TENANT_MAX_QUEUED", DMN_RANGE(0, DMN_INT_MAX),          \
      "turns of one tenant waiting for their first slot; 0: unlimited")                            \
    X(tenant_tokens_per_minute, INT, "0", "RECURD_TENANT_TOKENS_PER_MINUTE",                       \
      DMN_RANGE(0, 1000000000),                                                                    \
      "token bucket per tenant, prompt tokens at admission and generated tokens as sampled; "      \
      "refills N per minute, holds N; 0: unlimited")                                               \
    X(tenant_max_sessions, INT, "0", "RECURD_TENANT_MAX_SESSIONS", DMN_RANGE(0, DMN_LONG_MAX),     \
      "sessions one owner (tenant) may hold; 0: unlimited")                                        \
    X(tenant_max_state_bytes, INT, "0", "RECURD_TENANT_MAX_STATE_BYTES",                           \
      DMN_RANGE(0, DMN_LONG_MAX),                                                                  \
      "committed state bytes of one owner's sessions (newest version each); 0: unlimited")         \
    X(tenant_fair, BOOL, "true", "RECURD_TENANT_FAIR", DMN_ANY,                                    \
      "among equal priorities the tenant holding the fewest slots goes first "                     \
      "(--no-tenant-fair: first come, first served)")                                              \
    X(max_tenant_slots, INT, "0", "RECURD_MAX_TENANT_SLOTS", DMN_RANGE(0, DMN_INT_MAX),            \
      "slots one tenant may hold while another tenant's turn waits (above --slots: --slots); "     \
      "0: no cap")                                                                                 \
    X(log_level, STR, "info", "RECURD_LOG_LEVEL", DMN_ONE_OF("debug|info|warn|error"),             \
      "least severe log line written")                                                             \
    X(progress, BOOL, "true", "RECURD_PROGRESS", DMN_ANY, "show load progress on a terminal")

typedef struct dmn_opts {
#define DMN__FIELD_STR char *
#define DMN__FIELD_INT long
#define DMN__FIELD_BOOL bool
#define DMN__FIELD(name, type, def, env, allowed, help) DMN__FIELD_##type name;
    DMN_OPTIONS(DMN__FIELD)
#undef DMN__FIELD
} dmn_opts_t;

/* Parses argv (after argv[0]), the environment and the config file into o. Returns 0, 1 when
 * --help/--version printed something (exit 0), or a negative code with a message in err. */
int dmn_opts_parse(dmn_opts_t *o, int argc, char **argv, char *err, size_t errlen);
void dmn_opts_free(dmn_opts_t *o);
void dmn_opts_help(const char *prog);
/* The state directory to use, in buf: "" for memory only (--ephemeral or an empty
 * --state-dir); the default's $XDG_STATE_HOME is expanded as documented above. Returns 0,
 * or RCD_ERANGE (buf "") when it does not fit buf (common/rcd_path.h). */
int dmn_opts_state_dir(const dmn_opts_t *o, char *buf, size_t len);

#endif
