/* daemon: recurd's main — options, then three phases: load (model, backend, tokenizer), open
 * the store (sessions, prefix cache), serve (engine, gRPC server on the libuv loop until a
 * drain); then an orderly teardown (exit 0). Each phase logs its own failure. */
#include "common/rcd_cpus.h"
#include "common/rcd_path.h"
#include "daemon/dmn.h"
#include "daemon/dmn_http.h"
#include "daemon/dmn_openai.h"
#include "daemon/dmn_quota.h"
#include "daemon/dmn_tls.h"
#include "engine/eng_draft_model.h"
#include "engine/eng_runner.h"
#include "statestore/prefix.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Load progress on a terminal: stages as percentages (the engine loads in one call). */
static void progress(const dmn_opts_t *o, int pct, const char *what)
{
    if (!o->progress || !isatty(STDERR_FILENO)) return;
    char bar[31];
    int n = pct * 30 / 100;
    for (int i = 0; i < 30; i++)
        bar[i] = i < n ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r[%s] %3d%% %-40s%s", bar, pct, what, pct == 100 ? "\n" : "");
    fflush(stderr);
}

static int write_port_file(const char *path, int port)
{
    char tmp[RCD_PATH_MAX];
    if (rcd_path_fmt(tmp, sizeof(tmp), "%s.tmp", path)) return RCD_ERANGE;
    FILE *f = fopen(tmp, "w");
    if (!f) return RCD_EIO;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) return RCD_EIO;
    return 0;
}

/* The engine's logs, as the daemon's JSON lines. */
static void engine_log(void *user, eng_level_t lvl, const char *event, const char *msg)
{
    _Static_assert((int)ENG_DEBUG == (int)DMN_DEBUG && (int)ENG_ERROR == (int)DMN_ERROR,
                   "eng_level_t and dmn_level_t in the same order");
    (void)user;
    dmn_log((dmn_level_t)lvl, event, NULL, NULL, "%s", msg);
}

static void store_warn(void *user, const char *sid, const char *msg)
{
    (void)user;
    /* no session: the shared tier's connection (connected, refused, TLS, AUTH) */
    dmn_log(DMN_WARN, sid ? "checkpoint" : "redis", NULL, sid, "%s", msg);
}

/* The Redis AUTH password: the first line of --redis-password-file, else the environment's
 * RECURD_REDIS_PASSWORD, else none (""). Never a flag: a command line is world-readable. */
static int redis_password(const dmn_opts_t *o, char *pw, size_t len, char *err, size_t errlen)
{
    pw[0] = 0;
    if (!o->redis_password_file[0]) {
        const char *e = getenv("RECURD_REDIS_PASSWORD");
        if (e && strlen(e) >= len)
            return rcd_fail(RCD_EINVAL, err, errlen, "RECURD_REDIS_PASSWORD is too long");
        if (e) snprintf(pw, len, "%s", e);
        return 0;
    }
    FILE *f = fopen(o->redis_password_file, "r");
    if (!f)
        return rcd_fail(RCD_EIO, err, errlen, "--redis-password-file %s: %s",
                        o->redis_password_file, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        dmn_log(DMN_WARN, "redis", NULL, NULL,
                "--redis-password-file %s is readable by group or others (chmod 600 it)",
                o->redis_password_file);
    bool got = fgets(pw, (int)len, f) != NULL;
    fclose(f);
    size_t n = got ? strcspn(pw, "\r\n") : 0;
    if (got && n == strlen(pw) && n == len - 1)
        return rcd_fail(RCD_EINVAL, err, errlen, "--redis-password-file %s: line too long",
                        o->redis_password_file);
    pw[n] = 0;
    if (!n)
        return rcd_fail(RCD_EINVAL, err, errlen, "--redis-password-file %s: empty first line",
                        o->redis_password_file);
    return 0;
}

/* The session store: durable under the state dir unless memory-only; logs what the startup
 * scan found, foreign models' checkpoints in particular. */
static int store_start(dmn_server_t *srv, const wrk_model_info_t *mi, char *err, size_t errlen)
{
    const dmn_opts_t *o = srv->opts;
    char dir[RCD_PATH_MAX];
    if (dmn_opts_state_dir(o, dir, sizeof(dir)))
        return rcd_fail(RCD_ERANGE, err, errlen, "state dir path longer than %d bytes",
                        RCD_PATH_MAX - 1);
    char pw[4097];
    int rc = dir[0] && o->redis[0] ? redis_password(o, pw, sizeof(pw), err, errlen) : 0;
    if (rc) return rc;
    store_tensor_t *t = calloc((size_t)mi->n_state_tensors + 1, sizeof(*t));
    if (!t) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    for (int i = 0; i < mi->n_state_tensors; i++) {
        const wrk_state_tensor_t *w = &mi->state_tensors[i];
        snprintf(t[i].name, sizeof(t[i].name), "%s", w->name);
        t[i].offset = w->offset;
        t[i].bytes = w->bytes;
        t[i].ndim = w->ndim;
        for (int d = 0; d < 3; d++)
            t[i].shape[d] = w->shape[d];
    }
    store_opts_t so = {.state_bytes = mi->state_bytes,
                       .fingerprint = mi->fingerprint,
                       .max_sessions = (size_t)o->max_sessions,
                       .loop = srv->loop,
                       .dir = dir,
                       .keep_versions = (int)o->keep_versions,
                       .cache_bytes = (size_t)o->host_cache_bytes,
                       .no_group_commit = !o->group_commit,
                       .redis = o->redis,
                       .redis_opts = {.user = o->redis_user,
                                      .password = pw,
                                      .prefix = o->redis_prefix,
                                      .tls = o->redis_tls,
                                      .tls_ca = o->redis_tls_ca,
                                      .tls_cert = o->redis_tls_cert,
                                      .tls_key = o->redis_tls_key,
                                      .tls_server_name = o->redis_tls_server_name},
                       .redis_authority = o->redis_authority,
                       .n_tensors = mi->n_state_tensors,
                       .tensors = t,
                       .kv_bytes_per_token = mi->n_kv_layers > 0 ? mi->kv_bytes_per_token : 0,
                       .n_kv_layers = mi->n_kv_layers,
                       .kv_width = mi->kv_width,
                       .warn_cb = store_warn,
                       .default_ttl_s = (uint32_t)o->session_ttl};
    rc = store_open(&so, &srv->store, err, errlen);
    bool pw_given = pw[0] != 0;
    explicit_bzero(pw, sizeof(pw)); /* the store keeps its own copy */
    free(t);
    if (rc) return rc;
    store_stats_t st;
    store_get_stats(srv->store, &st);
    if (o->session_ttl)
        dmn_log(DMN_INFO, "store", NULL, NULL,
                "sessions idle for %ld s (no committed turn) expire with their checkpoints",
                o->session_ttl);
    if (!dir[0]) {
        dmn_log(DMN_INFO, "store", NULL, NULL,
                "sessions in memory only (--ephemeral or empty --state-dir): nothing survives "
                "a restart");
        if (o->redis[0])
            dmn_log(DMN_WARN, "store", NULL, NULL,
                    "--redis %s ignored: the shared tier needs a --state-dir", o->redis);
        return 0;
    }
    if (o->redis[0])
        dmn_log(DMN_INFO, "store", NULL, NULL,
                "shared tier: redis %s (%s; "
                "%s%s%s%s, key prefix '%s')",
                o->redis,
                o->redis_authority ? "the authority: conditional commits, versions checked before "
                                     "use, session calls refused while it is unreachable"
                                   : "commits written through, unknown sessions looked up",
                o->redis_tls ? "TLS" : "plaintext",
                o->redis_tls && o->redis_tls_cert[0] ? " with a client certificate" : "",
                o->redis_user[0] ? ", ACL user "
                : pw_given       ? ", AUTH"
                                 : "",
                o->redis_user, o->redis_prefix);
    dmn_log(DMN_INFO, "store", NULL, NULL,
            "state dir %s: %zu sessions, %zu quarantined checkpoints, scan %llu ms, keep %ld "
            "versions, host cache %ld bytes",
            dir, st.sessions, st.quarantined, (unsigned long long)st.scan_ms, o->keep_versions,
            o->host_cache_bytes);
    if (st.foreign)
        dmn_log(DMN_WARN, "store_foreign", NULL, NULL,
                "%zu sessions in %s were checkpointed by another model (e.g. fingerprint "
                "%016llx; loaded model %s): they are listed but refused (FAILED_PRECONDITION)",
                st.foreign, dir, (unsigned long long)st.foreign_fingerprint, mi->fingerprint_hex);
    return 0;
}

/* x-recurd-replica: --replica-name, else the host name. A metadata value: 1-255 bytes of
 * printable ASCII. */
static int set_replica(dmn_server_t *srv, char *err, size_t errlen)
{
    const char *name = srv->opts->replica_name;
    if (!name[0]) {
        if (gethostname(srv->replica, sizeof(srv->replica)) != 0) {
            snprintf(srv->replica, sizeof(srv->replica), "recurd");
        }
        srv->replica[sizeof(srv->replica) - 1] = 0;
        name = srv->replica;
    }
    size_t n = strlen(name);
    bool ok = n >= 1 && n < sizeof(srv->replica);
    for (size_t i = 0; ok && i < n; i++)
        ok = name[i] >= 0x21 && name[i] <= 0x7e;
    if (!ok)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "--replica-name '%.64s' must be 1 to 255 printable ASCII bytes, no spaces",
                        name);
    if (name != srv->replica) snprintf(srv->replica, sizeof(srv->replica), "%s", name);
    return 0;
}

/* The served model's id: the last component of --model (a trailing slash ignored). */
static void set_model_id(dmn_server_t *srv)
{
    const char *model = srv->opts->model;
    const char *base = strrchr(model, '/');
    base = base && base[1] ? base + 1 : model;
    if (base == model + strlen(model)) /* trailing slash */
        base = model;
    snprintf(srv->model_id, sizeof(srv->model_id), "%s", base);
    char *slash = strchr(srv->model_id, '/');
    if (slash) *slash = 0;
}

/* The chat template (--chat-template, else tokenizer_config.json's, else CHAT_TMPL_DEFAULT) and
 * the bos/eos strings it renders with. A template that does not compile stops the daemon. */
static int load_chat_template(dmn_server_t *srv)
{
    const dmn_opts_t *o = srv->opts;
    const char *model_tmpl = srv->tok ? tok_chat_template(srv->tok) : NULL;
    const char *bos = srv->tok ? tok_bos_token(srv->tok) : NULL;
    const char *eos = srv->tok ? tok_eos_token(srv->tok) : NULL;
    const char *source;
    char err[512] = "";
    int rc;
    if (o->chat_template && *o->chat_template) {
        source = o->chat_template;
        rc = chat_tmpl_compile_file(o->chat_template, &srv->chat_tmpl, err, sizeof(err));
    } else if (model_tmpl) {
        source = "tokenizer_config.json";
        rc = chat_tmpl_compile(model_tmpl, strlen(model_tmpl), &srv->chat_tmpl, err, sizeof(err));
    } else {
        source = "default (ChatML)";
        rc = chat_tmpl_compile(CHAT_TMPL_DEFAULT, strlen(CHAT_TMPL_DEFAULT), &srv->chat_tmpl, err,
                               sizeof(err));
    }
    if (rc) {
        if (model_tmpl && !(o->chat_template && *o->chat_template))
            dmn_log(
                DMN_ERROR, "chat_template", NULL, NULL,
                "%s/tokenizer_config.json chat_template: %s (--chat-template FILE overrides it)",
                o->model, err);
        else
            dmn_log(DMN_ERROR, "chat_template", NULL, NULL, "--chat-template %s", err);
        return rc;
    }
    srv->bos_token = strdup(bos ? bos : "");
    srv->eos_token = strdup(eos ? eos : "");
    if (!srv->bos_token || !srv->eos_token) return RCD_ENOMEM;
    dmn_log(DMN_INFO, "chat_template", NULL, NULL, "chat template: %s", source);
    return 0;
}

/* Phase 1, load: the model's weights, the backend that runs them and the tokenizer (none when
 * the model directory has no tokenizer.json: token-id prompts only). */
static int load(dmn_server_t *srv)
{
    const dmn_opts_t *o = srv->opts;
    char err[512] = "";
    int rc;
    progress(o, 0, "loading weights");
    if ((rc = wrk_model_load(o->model, &srv->model, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "model_load", NULL, NULL, "%s: %s", o->model, err);
        return rc;
    }
    progress(o, 60, "creating backend");
    const wrk_model_info_t *mi = wrk_model_info(srv->model);
    /* --threads 0: the CPUs this process can count on (affinity mask, cgroup CPU quota) */
    if (o->threads > 0) {
        srv->n_threads = (int)o->threads;
        snprintf(srv->threads_why, sizeof srv->threads_why, "--threads");
    } else {
        srv->n_threads = rcd_cpus_available(srv->threads_why, sizeof srv->threads_why);
    }
    wrk_backend_opts_t bo = {.n_threads = srv->n_threads,
                             .n_slots = (int)o->slots,
                             .max_step_tokens = (int)o->max_step_tokens,
                             .isa = o->isa,
                             .matmul = o->matmul,
                             .weights = o->weights,
                             .adapt_threads = o->adapt_threads,
                             .n_kv_blocks = (int)o->kv_blocks,
                             .kv_block_tokens = (int)o->kv_block_tokens};
    /* The engine's derived sizes: the step budget without chunking, the KV pool. */
    if ((rc = eng_backend_opts_fill(&bo, (int)o->prefill_chunk, (int)o->max_prompt, err,
                                    sizeof(err)))) {
        dmn_log(DMN_ERROR, "backend", NULL, NULL, "%s", err);
        return rc;
    }
    srv->kv_blocks = bo.n_kv_blocks;
    srv->kv_block_tokens = bo.kv_block_tokens;
    if ((rc = wrk_backend_create_by_name(o->backend, srv->model, &bo, &srv->backend, err,
                                         sizeof(err)))) {
        dmn_log(DMN_ERROR, "backend", NULL, NULL, "%s", err);
        return rc;
    }
    if (strcmp(o->matmul, "bf16") == 0 && strcmp(o->weights, "native") != 0)
        dmn_log(DMN_WARN, "backend", NULL, NULL,
                "--matmul bf16 does not apply to --weights %s: every matrix is quantized and "
                "runs the int8 kernels, as with --matmul fp32",
                o->weights);
    else if (strcmp(o->matmul, "bf16") == 0 && mi->weight_dtype != WRK_DT_BF16)
        dmn_log(DMN_WARN, "backend", NULL, NULL,
                "--matmul bf16 applies to BF16 weights; this model's are %s, so its matmuls "
                "run in fp32",
                wrk_dtype_name(mi->weight_dtype));
    progress(o, 80, "loading tokenizer");
    tok_opts_t to = {.max_input_bytes = (size_t)o->max_message_bytes};
    char tokf[RCD_PATH_MAX];
    if ((rc = rcd_path_join(tokf, sizeof(tokf), o->model, "tokenizer.json"))) {
        dmn_log(DMN_ERROR, "tokenizer_load", NULL, NULL, "model directory path too long: %s",
                o->model);
        return rc;
    }
    if (access(tokf, F_OK) != 0 && errno == ENOENT) {
        /* token-id prompts only: text requests and Tokenize/Detokenize → FAILED_PRECONDITION */
        dmn_log(DMN_WARN, "tokenizer_load", NULL, NULL,
                "%s has no tokenizer.json: only token-id prompts are served", o->model);
        srv->tok = NULL;
    } else if ((rc = tok_load(o->model, &to, &srv->tok, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "tokenizer_load", NULL, NULL, "%s", err);
        return rc;
    }
    if ((rc = load_chat_template(srv))) return rc;
    progress(o, 100, "ready");
    srv->vocab = mi->vocab_size;
    srv->eos_id = srv->tok && tok_eos_id(srv->tok) >= 0 ? tok_eos_id(srv->tok) : mi->eos_token_id;
    set_model_id(srv);
    return 0;
}

/* Phase 1b, --speculate draft: the draft model, checked against the model (vocabulary and
 * tokenizer: a mismatch is a startup error, exit 2), and its CPU backend beside the model's
 * (none where the model's backend cannot speculate: the runner logs it and decodes plainly). */
static int load_draft(dmn_server_t *srv)
{
    const dmn_opts_t *o = srv->opts;
    char err[512] = "";
    int rc;
    if (strcmp(o->speculate, "draft") != 0) {
        if (o->draft_model[0])
            dmn_log(DMN_WARN, "draft_model", NULL, NULL,
                    "--draft-model is used by --speculate draft only (--speculate is %s)",
                    o->speculate);
        return 0;
    }
    if ((rc = wrk_model_load(o->draft_model, &srv->draft_model, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "draft_model", NULL, NULL, "--draft-model %s: %s", o->draft_model, err);
        return rc;
    }
    if ((rc = eng_draft_model_check(srv->model, o->model, srv->draft_model, o->draft_model, err,
                                    sizeof(err)))) {
        dmn_log(DMN_ERROR, "draft_model", NULL, NULL, "%s", err);
        return rc;
    }
    if (!wrk_spec_supported(srv->backend)) return 0; /* the runner says so, once */
    const wrk_model_info_t *di = wrk_model_info(srv->draft_model);
    int slots = wrk_backend_n_slots(srv->backend), budget = (int)o->max_step_tokens;
    wrk_backend_opts_t bo = {.n_threads = (int)o->draft_threads,
                             .n_slots = 2 * slots, /* beside each slot: its state, a scratch */
                             .max_step_tokens = budget > slots ? budget : slots,
                             .isa = o->isa};
    if ((rc = wrk_cpu_backend_create(srv->draft_model, &bo, &srv->draft_backend, err,
                                     sizeof(err)))) {
        dmn_log(DMN_ERROR, "draft_model", NULL, NULL, "draft backend: %s", err);
        return rc;
    }
    dmn_log(DMN_INFO, "draft_model", NULL, NULL,
            "draft model %s (%s, vocab %d, %d layers, state %zu bytes, fingerprint %s): %d slots "
            "on the CPU, %ld threads",
            o->draft_model, di->architecture, di->vocab_size, di->n_layers, di->state_bytes,
            di->fingerprint_hex, 2 * slots, o->draft_threads);
    return 0;
}

/* Phase 2, open the store: the session store on srv->loop and the prompt-prefix cache. */
static int open_store(dmn_server_t *srv)
{
    const dmn_opts_t *o = srv->opts;
    const wrk_model_info_t *mi = wrk_model_info(srv->model);
    char err[512] = "";
    int rc;
    if ((rc = store_start(srv, mi, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "store", NULL, NULL, "%s", err);
        return rc;
    }
    /* A KV model's snapshot after k tokens also holds k positions of KV (variable-size). */
    if (o->prefix_cache_bytes > 0 &&
        store_prefix_create((size_t)o->prefix_cache_bytes, mi->state_bytes,
                            mi->n_kv_layers > 0 ? mi->kv_bytes_per_token : 0, mi->fingerprint, 0,
                            &srv->prefix) == 0)
        dmn_log(DMN_INFO, "prefix_cache", NULL, NULL,
                "prompt-prefix snapshots every %d tokens, %ld bytes (%zu per snapshot, plus %zu "
                "per token)",
                STORE_PREFIX_GRAN, o->prefix_cache_bytes, mi->state_bytes,
                mi->n_kv_layers > 0 ? mi->kv_bytes_per_token : (size_t)0);
    return 0;
}

/* Phase 3, serve: the runner, then the gRPC server; runs the loop until a drain stopped the
 * server. *grpc_up tells the teardown that grpc_init ran. */
static int serve(dmn_server_t *srv, bool *grpc_up)
{
    const dmn_opts_t *o = srv->opts;
    const wrk_model_info_t *mi = wrk_model_info(srv->model);
    char err[512] = "";
    int rc;
    eng_runner_config_t rc_cfg;
    eng_runner_config_default(&rc_cfg, srv->backend, (int)o->max_queue);
    rc_cfg.prefill_chunk = (int)o->prefill_chunk;
    rc_cfg.max_prompt = (int)o->max_prompt;
    rc_cfg.aging_ms = o->aging_ms;
    rc_cfg.max_inflight = (int)o->pipeline;
    rc_cfg.tenant_fair = o->tenant_fair;
    rc_cfg.max_tenant_slots = (int)o->max_tenant_slots;
    rc_cfg.kv_blocks = srv->kv_blocks; /* the pool eng_backend_opts_fill gave the backend */
    rc_cfg.kv_block_tokens = srv->kv_block_tokens;
    rc_cfg.log = engine_log;
    rc_cfg.spec_mode = strcmp(o->speculate, "ngram") == 0   ? ENG_SPEC_NGRAM
                       : strcmp(o->speculate, "draft") == 0 ? ENG_SPEC_DRAFT
                                                            : ENG_SPEC_OFF;
    rc_cfg.draft_be = srv->draft_backend;
    rc_cfg.spec_tokens = (int)o->spec_tokens;
    rc_cfg.spec_max_batch = (int)o->spec_max_batch;
    rc_cfg.spec_adaptive = strcmp(o->spec_adaptive, "on") == 0;
    rc_cfg.spec_history = (int32_t)o->spec_history;
    if ((rc = eng_runner_create_cfg(srv->loop, srv->backend, &rc_cfg, &srv->runner, err,
                                    sizeof(err)))) {
        dmn_log(DMN_ERROR, "runner", NULL, NULL, "%s", err);
        return rc;
    }
    dmn_quota_limits_t ql = {.max_turns = o->tenant_max_turns,
                             .max_queued = o->tenant_max_queued,
                             .tokens_per_minute = o->tenant_tokens_per_minute,
                             .max_sessions = o->tenant_max_sessions,
                             .max_state_bytes = o->tenant_max_state_bytes};
    if ((rc = dmn_quota_create(&ql, 0, &srv->quota))) {
        dmn_log(DMN_ERROR, "quota", NULL, NULL, "out of memory");
        return rc;
    }
    if (dmn_quota_enabled(srv->quota))
        dmn_log(DMN_INFO, "quota", NULL, NULL,
                "per tenant (0: unlimited): %ld turns, %ld queued, %ld tokens per minute, %ld "
                "sessions, %ld state bytes",
                ql.max_turns, ql.max_queued, ql.tokens_per_minute, ql.max_sessions,
                ql.max_state_bytes);
    grpc_init();
    *grpc_up = true;
    if ((rc = dmn_server_start(srv, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "listen", NULL, NULL, "%s", err);
        return rc;
    }
    if ((rc = dmn_openai_routes(srv))) { /* the /v1 routes (dmn_openai_http.c) */
        dmn_log(DMN_ERROR, "http_listen", NULL, NULL, "out of memory adding routes");
        return rc;
    }
    if ((rc = dmn_http_start(srv, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "http_listen", NULL, NULL, "%s", err);
        dmn_server_drain(srv, "HTTP listener failed");
        uv_run(srv->loop, UV_RUN_DEFAULT);
        return rc;
    }
    /* --adapt-threads: said where it applies (a pool of 2 or more CPU threads) */
    bool adapting = false;
    const char *adapt_why = NULL;
    wrk_threads(srv->backend, NULL, NULL, NULL, &adapting, &adapt_why);
    const char *adapt_note = adapting ? ", adaptive" : "";
    if (!adapting && o->adapt_threads && adapt_why && srv->n_threads > 1)
        adapt_note = ", fixed: ";
    else
        adapt_why = "";
    dmn_log(DMN_INFO, "ready", NULL, NULL,
            "model %s (%s, vocab %d, state %zu bytes, fingerprint %s), backend %s/%s, "
            "weights %s%s%s%s, %d slots, %d thread%s (%s)%s%s",
            srv->model_id, mi->architecture, mi->vocab_size, mi->state_bytes, mi->fingerprint_hex,
            wrk_backend_name(srv->backend), wrk_backend_isa(srv->backend), o->weights,
            mi->quantization ? " (checkpoint quantized: " : "",
            mi->quantization ? mi->quantization : "", mi->quantization ? ")" : "",
            wrk_backend_n_slots(srv->backend), srv->n_threads, srv->n_threads == 1 ? "" : "s",
            srv->threads_why, adapt_note, adapt_why);
    if (o->port_file[0] && write_port_file(o->port_file, srv->port))
        dmn_log(DMN_WARN, "port_file", NULL, NULL, "cannot write %s", o->port_file);
    uv_run(srv->loop, UV_RUN_DEFAULT);
    return 0;
}

/* Undoes open_store, logging the store's and the prefix cache's totals. */
static void close_store(dmn_server_t *srv)
{
    if (srv->store) {
        store_stats_t st;
        store_get_stats(srv->store, &st);
        dmn_log(DMN_INFO, "store_stats", NULL, NULL,
                "%zu sessions, %llu commits, cache hits %llu, misses %llu, disk loads %llu, "
                "corrupt %llu, expired %llu",
                st.sessions, (unsigned long long)st.commits, (unsigned long long)st.cache_hits,
                (unsigned long long)st.cache_misses, (unsigned long long)st.disk_loads,
                (unsigned long long)st.corrupt, (unsigned long long)st.expired);
    }
    /* Before the loop's last turn: the store's Redis connection closes a handle on it. */
    store_close(srv->store);
    srv->store = NULL;
    if (srv->prefix) {
        store_prefix_stats_t ps;
        store_prefix_get_stats(srv->prefix, &ps);
        dmn_log(DMN_INFO, "prefix_cache", NULL, NULL,
                "hits %llu (%llu tokens), misses %llu, inserts %llu, evictions %llu, "
                "collisions %llu, %zu entries, %zu bytes",
                (unsigned long long)ps.hits, (unsigned long long)ps.hit_tokens,
                (unsigned long long)ps.misses, (unsigned long long)ps.inserts,
                (unsigned long long)ps.evictions, (unsigned long long)ps.collisions, ps.entries,
                ps.bytes);
    }
    store_prefix_destroy(srv->prefix);
    srv->prefix = NULL;
    /* Before the loop's last turn too: it joins the device thread and closes its wake-up. */
    eng_runner_destroy(srv->runner);
    srv->runner = NULL;
}

/* Undoes load and what serve left (the server's event buffers). */
static void unload(dmn_server_t *srv)
{
    dmn_quota_destroy(srv->quota);
    srv->quota = NULL;
    tok_free(srv->tok);
    chat_tmpl_free(srv->chat_tmpl);
    srv->chat_tmpl = NULL;
    free(srv->bos_token);
    free(srv->eos_token);
    srv->bos_token = srv->eos_token = NULL;
    wrk_backend_destroy(srv->backend);
    wrk_model_free(srv->model);
    wrk_backend_destroy(srv->draft_backend);
    wrk_model_free(srv->draft_model);
    srv->draft_backend = NULL;
    srv->draft_model = NULL;
    free(srv->evs);
    free(srv->evs_spare);
    if (srv->cq_thread_started) pthread_mutex_destroy(&srv->mu);
}

int main(int argc, char **argv)
{
    dmn_opts_t opts;
    dmn_server_t srv;
    uv_loop_t loop;
    char err[512] = "";
    int rc, exit_code = 1;
    bool grpc_up = false, loop_up = false;
    memset(&srv, 0, sizeof(srv));
    rc = dmn_opts_parse(&opts, argc - 1, argv + 1, err, sizeof(err));
    if (rc) { /* 1: --help or --version printed */
        if (rc < 0) fprintf(stderr, "recurd: %s\n", err);
        exit_code = rc == 1 ? 0 : 2;
        goto cleanup;
    }
    dmn_log_set_level(opts.log_level); /* one of DMN_OPTIONS' choices: cannot fail */
    if (strcmp(opts.speculate, "draft") == 0 && !opts.draft_model[0]) {
        fprintf(stderr, "recurd: --speculate draft needs --draft-model DIR (a draft model of the "
                        "model's vocabulary)\n");
        exit_code = 2;
        goto cleanup;
    }
    srv.opts = &opts;
    /* SIGHUP means reload (dmn_reload, once the server listens), never exit: ignored till then. */
    signal(SIGHUP, SIG_IGN);
    /* A peer that closed its socket is an error on that connection (EPIPE), never the end of
     * the daemon: the HTTP listener writes to sockets with plain write(2). */
    signal(SIGPIPE, SIG_IGN);
    /* TLS files first: a bad one is refused before the model loads. */
    if ((rc = dmn_tls_create(&opts, &srv.tls, err, sizeof(err)))) {
        dmn_log(DMN_ERROR, "tls", NULL, NULL, "%s", err);
        exit_code = 1;
        goto cleanup;
    }
    if (set_replica(&srv, err, sizeof(err))) {
        dmn_log(DMN_ERROR, "replica_name", NULL, NULL, "%s", err);
        exit_code = 2;
        goto cleanup;
    }
    if (dmn_auth_open(&srv, err, sizeof(err))) {
        dmn_log(DMN_ERROR, "api_keys", NULL, NULL, "%s", err);
        exit_code = 2;
        goto cleanup;
    }
    if (load(&srv)) goto cleanup;
    if (load_draft(&srv)) { /* a draft model that cannot draft for this model */
        exit_code = 2;
        goto cleanup;
    }
    if ((rc = uv_loop_init(&loop))) {
        dmn_log(DMN_ERROR, "loop", NULL, NULL, "uv_loop_init: %s", uv_strerror(rc));
        goto cleanup;
    }
    loop_up = true;
    srv.loop = &loop;
    if (open_store(&srv) || serve(&srv, &grpc_up)) goto cleanup;
    exit_code = 0;
cleanup:
    close_store(&srv);
    if (loop_up) {
        uv_run(&loop, UV_RUN_NOWAIT); /* let close callbacks run */
        if (uv_loop_close(&loop) == UV_EBUSY)
            dmn_log(DMN_WARN, "loop_close", NULL, NULL, "loop had live handles at exit");
    }
    if (grpc_up) grpc_shutdown();
    dmn_tls_destroy(srv.tls); /* after grpc_shutdown: gRPC's threads fetch from it */
    unload(&srv);
    dmn_http_free(&srv);
    dmn_auth_close(&srv);
    dmn_opts_free(&opts);
    return exit_code;
}
