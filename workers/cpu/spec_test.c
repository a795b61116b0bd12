/* Speculative verify and exact rollback (wrk_spec_accept) on every family's golden fixtures
 * and the bundled model: sequences run as ragged batches that mix verify entries (k = 1..8
 * drafts that are always right, always wrong, or random), prefill chunks and plain decodes;
 * after every accept the slot's state blob is bit-identical (memcmp) to a token-by-token run
 * over the same tokens, and every logit row of a kept position bit-identical to that run's.
 * The drafts are judged against a fixed token sequence (what a greedy engine would accept is
 * the engine's business; this checks the worker's contract for any n_keep). Qwen3-Next's
 * sequences are longer than its 64-token Gated DeltaNet block, and verify entries that cross
 * the block boundary are checked for every n_keep. Also: a pending verify that is not accepted
 * keeps every token, the call's errors, and a backend without rollback (CPU tensor
 * parallelism) refusing verify entries. */
#include <string.h>

#include "tests/support/golden_util.h"

#define SEQ_LEN 56
#define LONG_LEN 72 /* Qwen3-Next: past its first 64-token block */
#define N_SEQ 4
#define MAX_K 8

/* Under a sanitizer (10-30x slower) the runs shrink: sequences of SAN_LEN tokens, the first
 * two fixtures of a family, the random draft mode only (which mixes right and wrong). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif
#define SAN_LEN 24
static int seq_len = SANITIZED ? SAN_LEN : SEQ_LEN;
static int n_seq = N_SEQ; /* the bundled model under a sanitizer: 2 */

typedef struct ref_run {
    int32_t tokens[LONG_LEN];
    float *logits;             /* seq_len x V: row p is the logits after tokens [0, p] */
    void *state[LONG_LEN + 1]; /* the state after p tokens */
    size_t len[LONG_LEN + 1];
} ref_run_t;

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static void *read_state(wrk_backend_t *b, int slot, size_t *len)
{
    const size_t n = wrk_state_bytes(b, slot);
    void *blob = malloc(n ? n : 1);
    if (wrk_state_read_n(b, slot, blob, n, len)) {
        CHECK(0);
        *len = 0;
    }
    return blob;
}

/* Token by token on slot 0 of b: every logit row and every intermediate state. */
static int ref_build(wrk_backend_t *b, ref_run_t *r, int V)
{
    char err[512];
    r->logits = malloc((size_t)LONG_LEN * V * sizeof(float));
    wrk_state_reset(b, 0);
    r->state[0] = read_state(b, 0, &r->len[0]);
    for (int p = 0; p < seq_len; p++) {
        wrk_seq_t s = {.slot = 0,
                       .n_tokens = 1,
                       .tokens = &r->tokens[p],
                       .n_logits = 1,
                       .logits = r->logits + (size_t)p * V};
        int rc = wrk_step(b, &s, 1, err, sizeof err);
        CHECK_MSG(rc == 0, "reference step %d: %s", p, err);
        if (rc) return rc;
        r->state[p + 1] = read_state(b, 0, &r->len[p + 1]);
    }
    return 0;
}

static void ref_free(ref_run_t *r)
{
    free(r->logits);
    for (int p = 0; p <= LONG_LEN; p++)
        free(r->state[p]);
}

static bool state_is(wrk_backend_t *b, int slot, const ref_run_t *r, int pos)
{
    size_t len;
    void *blob = read_state(b, slot, &len);
    const bool ok = len == r->len[pos] && memcmp(blob, r->state[pos], len) == 0;
    free(blob);
    return ok;
}

enum { DRAFT_RIGHT, DRAFT_WRONG, DRAFT_RANDOM };

/* The sequences of one model: N_SEQ sequences of random tokens on slots 1..N_SEQ, stepped
 * together; each step gives each unfinished sequence a verify entry (its drafts of `mode`, or
 * random modes), a prefill chunk or a decode. Returns the verify entries run. */
static int run_mixed(wrk_backend_t *b, ref_run_t *refs, int V, int mode, const char *label)
{
    char err[512];
    int pos[N_SEQ] = {0}, verifies = 0, kept_total = 0;
    int32_t toks[N_SEQ][MAX_K + 1];
    float *lg[N_SEQ];
    for (int i = 0; i < n_seq; i++) {
        lg[i] = malloc((size_t)(MAX_K + 1) * V * sizeof(float));
        wrk_state_reset(b, 1 + i);
    }
    for (int step = 0; step < 200; step++) {
        wrk_seq_t seqs[N_SEQ];
        int keep[N_SEQ], n = 0, idx[N_SEQ];
        for (int i = 0; i < n_seq; i++) {
            const ref_run_t *r = &refs[i];
            const int left = seq_len - pos[i];
            if (left <= 0) continue;
            wrk_seq_t *s = &seqs[n];
            *s = (wrk_seq_t){.slot = 1 + i, .logits = lg[i]};
            const uint32_t kind = rnd() % 6;
            if (kind < 4 && left >= 2) { /* verify: k drafts after the next token */
                int k = 1 + (int)(rnd() % MAX_K);
                if (k > left - 1) k = left - 1;
                const int m = mode == DRAFT_RANDOM ? (int)(rnd() % 3) : mode;
                int n_keep = 1;
                bool right = true;
                toks[i][0] = r->tokens[pos[i]];
                for (int j = 1; j <= k; j++) {
                    bool ok = m == DRAFT_RIGHT || (m == DRAFT_RANDOM && rnd() % 3 != 0);
                    toks[i][j] = ok ? r->tokens[pos[i] + j]
                                    : (r->tokens[pos[i] + j] + 1 + (int32_t)(rnd() % (V - 1))) % V;
                    right = right && ok;
                    if (right) n_keep++;
                }
                s->n_tokens = k + 1;
                s->n_logits = k + 1;
                s->verify = true;
                keep[i] = n_keep;
            } else { /* a decode or a prefill chunk of up to 6 tokens */
                int c = kind == 4 ? 1 : 1 + (int)(rnd() % 6);
                if (c > left) c = left;
                memcpy(toks[i], &r->tokens[pos[i]], (size_t)c * sizeof(int32_t));
                s->n_tokens = c;
                s->n_logits = (int)(rnd() % (unsigned)(c + 1));
                keep[i] = c;
            }
            s->tokens = toks[i];
            idx[n++] = i;
        }
        if (!n) break;
        int rc = wrk_step(b, seqs, n, err, sizeof err);
        CHECK_MSG(rc == 0, "%s: step %d: %s", label, step, err);
        if (rc) break;
        for (int e = 0; e < n; e++) {
            const int i = idx[e];
            const wrk_seq_t *s = &seqs[e];
            const ref_run_t *r = &refs[i];
            /* Logit rows of kept positions: bit-identical to the reference's. */
            const int first = s->n_tokens - s->n_logits;
            for (int j = first; j < keep[i]; j++)
                CHECK_MSG(memcmp(lg[i] + (size_t)(j - first) * V,
                                 r->logits + (size_t)(pos[i] + j) * V,
                                 (size_t)V * sizeof(float)) == 0,
                          "%s: seq %d position %d: logits differ", label, i, pos[i] + j);
            if (s->verify) {
                rc = wrk_spec_accept(b, s->slot, keep[i]);
                CHECK_MSG(rc == 0, "%s: accept: %d", label, rc);
                verifies++;
                kept_total += keep[i];
            }
            pos[i] += keep[i];
            CHECK_MSG(state_is(b, s->slot, r, pos[i]),
                      "%s: seq %d after %d tokens (%s %d): state differs", label, i, pos[i],
                      s->verify ? "verify keeping" : "plain", keep[i]);
        }
    }
    for (int i = 0; i < n_seq; i++) {
        CHECK(pos[i] == seq_len);
        free(lg[i]);
    }
    fprintf(stderr, "  %s: %d verify entries, %.2f tokens kept per entry\n", label, verifies,
            verifies ? (double)kept_total / verifies : 0.0);
    return verifies;
}

/* Accept's contract on one slot: errors, n_keep = 0 (back to before the verify), a verify
 * left pending keeps everything when the slot steps again. */
static void check_contract(wrk_backend_t *b, const ref_run_t *r, int V, const char *label)
{
    char err[512];
    float *lg = malloc((size_t)WRK_SPEC_MAX_TOKENS * V * sizeof(float));
    wrk_state_reset(b, 0);
    CHECK(wrk_spec_accept(b, 0, 1) == RCD_EINVAL); /* nothing pending */
    CHECK(wrk_spec_accept(b, -1, 1) == RCD_ERANGE);
    wrk_seq_t s = {.slot = 0, .n_tokens = 5, .tokens = r->tokens, .n_logits = 0, .verify = true};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    CHECK(wrk_spec_accept(b, 0, 6) == RCD_ERANGE);
    CHECK(wrk_spec_accept(b, 0, -1) == RCD_ERANGE);
    CHECK(wrk_spec_accept(b, 0, 0) == 0); /* keeps nothing: the state before the verify */
    CHECK_MSG(state_is(b, 0, r, 0), "%s: n_keep 0", label);
    CHECK(wrk_spec_accept(b, 0, 0) == RCD_EINVAL); /* no longer pending */
    /* Pending, then a plain step: every verify token kept. */
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    wrk_seq_t d = {.slot = 0, .n_tokens = 1, .tokens = &r->tokens[5], .n_logits = 1, .logits = lg};
    CHECK(wrk_step(b, &d, 1, err, sizeof err) == 0);
    CHECK(wrk_spec_accept(b, 0, 1) == RCD_EINVAL);
    CHECK_MSG(state_is(b, 0, r, 6), "%s: pending verify then a decode", label);
    CHECK(memcmp(lg, r->logits + (size_t)5 * V, (size_t)V * sizeof(float)) == 0);
    /* Pending, then reset: nothing left to accept. */
    CHECK(wrk_step(b, &d, 1, err, sizeof err) == 0);
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    wrk_state_reset(b, 0);
    CHECK(wrk_spec_accept(b, 0, 1) == RCD_EINVAL);
    /* Verify entries longer than WRK_SPEC_MAX_TOKENS are refused. */
    int32_t many[WRK_SPEC_MAX_TOKENS + 1] = {0};
    wrk_seq_t big = {
        .slot = 0, .n_tokens = WRK_SPEC_MAX_TOKENS + 1, .tokens = many, .verify = true};
    CHECK(wrk_step(b, &big, 1, err, sizeof err) == RCD_EINVAL);
    /* The longest one, all kept but the last. */
    wrk_seq_t full = {.slot = 0,
                      .n_tokens = WRK_SPEC_MAX_TOKENS,
                      .tokens = r->tokens,
                      .n_logits = WRK_SPEC_MAX_TOKENS,
                      .logits = lg,
                      .verify = true};
    CHECK(wrk_step(b, &full, 1, err, sizeof err) == 0);
    CHECK(wrk_spec_accept(b, 0, WRK_SPEC_MAX_TOKENS - 1) == 0);
    CHECK_MSG(state_is(b, 0, r, WRK_SPEC_MAX_TOKENS - 1), "%s: longest verify", label);
    free(lg);
}

/* Verify entries at a 64-token block boundary (Qwen3-Next's Gated DeltaNet closes the block
 * inside the entry): a prefill up to `at`, a verify of MAX_K + 1 tokens, every n_keep, then a
 * decode. */
static void check_block_cross(wrk_backend_t *b, const ref_run_t *r, int V, int at,
                              const char *label)
{
    char err[512];
    const int nv = MAX_K + 1;
    float *lg = malloc((size_t)nv * V * sizeof(float));
    for (int keep = 0; keep <= nv; keep++) {
        wrk_state_reset(b, 0);
        wrk_seq_t p = {.slot = 0, .n_tokens = at, .tokens = r->tokens};
        CHECK(wrk_step(b, &p, 1, err, sizeof err) == 0);
        wrk_seq_t s = {.slot = 0,
                       .n_tokens = nv,
                       .tokens = r->tokens + at,
                       .n_logits = nv,
                       .logits = lg,
                       .verify = true};
        int rc = wrk_step(b, &s, 1, err, sizeof err);
        CHECK_MSG(rc == 0, "%s: verify at %d: %s", label, at, err);
        if (rc) break;
        for (int j = 0; j < nv; j++)
            CHECK_MSG(memcmp(lg + (size_t)j * V, r->logits + (size_t)(at + j) * V,
                             (size_t)V * sizeof(float)) == 0,
                      "%s: verify at %d: logits of position %d differ", label, at, at + j);
        CHECK(wrk_spec_accept(b, 0, keep) == 0);
        CHECK_MSG(state_is(b, 0, r, at + keep), "%s: verify at %d keeping %d: state differs", label,
                  at, keep);
        /* and the slot goes on from there as the reference does */
        if (at + keep < seq_len) {
            wrk_seq_t d = {.slot = 0,
                           .n_tokens = 1,
                           .tokens = r->tokens + at + keep,
                           .n_logits = 1,
                           .logits = lg};
            CHECK(wrk_step(b, &d, 1, err, sizeof err) == 0);
            CHECK_MSG(state_is(b, 0, r, at + keep + 1), "%s: decode after keeping %d", label, keep);
        }
    }
    free(lg);
}

/* One model: reference, contract, then the mixed runs with every draft mode. */
static void check_model(const char *dir, const char *label, const wrk_backend_opts_t *opts)
{
    char err[512];
    wrk_model_t *m = golden_model(dir);
    if (!m) return;
    const int V = wrk_model_info(m)->vocab_size;
    wrk_backend_t *b = NULL;
    int rc = wrk_cpu_backend_create(m, opts, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", label, err);
    if (rc) {
        wrk_model_free(m);
        return;
    }
    ref_run_t refs[N_SEQ];
    memset(refs, 0, sizeof refs);
    rng_state = 0x5eed0000u + (uint64_t)strlen(label);
    bool ok = true;
    for (int i = 0; i < n_seq && ok; i++) {
        /* Some sequences repeat a short pattern: realistic drafts, long kept runs. */
        const int period = i % 2 ? 3 + i : 0;
        for (int p = 0; p < seq_len; p++)
            refs[i].tokens[p] =
                period && p >= period ? refs[i].tokens[p - period] : (int32_t)(rnd() % (uint32_t)V);
        ok = ref_build(b, &refs[i], V) == 0;
    }
    if (ok) {
        check_contract(b, &refs[0], V, label);
        if (seq_len >= 64 + MAX_K + 1) {
            /* crossing the boundary; ending on it (the close with every token kept); ending
             * one short of it (no close: the partial copy) */
            check_block_cross(b, &refs[0], V, 64 - 4, label);
            check_block_cross(b, &refs[1], V, 64 - MAX_K, label);
            check_block_cross(b, &refs[2], V, 64 - MAX_K - 1, label);
            check_block_cross(b, &refs[3], V, 64 - MAX_K - 2, label);
        }
        char l2[160];
        static const char *names[] = {"right", "wrong", "random"};
        for (int mode = SANITIZED ? DRAFT_RANDOM : DRAFT_RIGHT; mode <= DRAFT_RANDOM; mode++) {
            snprintf(l2, sizeof l2, "%s/%s", label, names[mode]);
            CHECK(run_mixed(b, refs, V, mode, l2) > 0);
        }
    }
    for (int i = 0; i < N_SEQ; i++)
        ref_free(&refs[i]);
    wrk_backend_destroy(b);
    wrk_model_free(m);
}

static const wrk_backend_opts_t opts = {
    .n_threads = 2, .n_slots = 8, .max_step_tokens = 64, .kv_block_tokens = 4, .n_kv_blocks = 256};

static void check_family(const char *family, const char *const *cases, int n)
{
    if (SANITIZED && n > 2) n = 2;
    for (int i = 0; i < n; i++) {
        char dir[RCD_PATH_MAX], label[96];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/%s/%s", golden_root(), family, cases[i]) == 0);
        snprintf(label, sizeof label, "%s/%s", family, cases[i]);
        check_model(dir, label, &opts);
    }
}

static void test_mamba(void)
{
    static const char *cases[] = {"tiny_bias_tied", "odd_sizes", "tiny_bias_tied_bf16"};
    check_family("mamba", cases, 3);
}

static void test_mamba2(void)
{
    static const char *cases[] = {"tiny_g2_untied", "tiny_g1_bias_tied", "odd_sizes"};
    check_family("mamba2", cases, 3);
}

static void test_granite(void)
{
    static const char *cases[] = {"moe_nope_tied", "dense_rope_untied", "all_mamba_dense",
                                  "mha_moe8"};
    check_family("granite", cases, 4);
}

static void test_recurrentgemma(void)
{
    /* Windows of 16 and 4 (a verify entry longer than the window), attention only, none. */
    static const char *cases[] = {"tiny_mqa_w16", "attn_first_w4", "attn_only_hd16", "hawk_k1",
                                  "odd_sizes"};
    check_family("recurrentgemma", cases, 5);
}

/* The hybrids of issue 20. */
static void test_nemotronh(void)
{
    /* Mamba2 + MLP + MoE + GQA attention; MQA attention first, odd sizes, 3 groups; no Mamba
     * block at all (nothing recorded: the rollback is the KV truncation alone). */
    static const char *cases[] = {"moe_gqa_tied", "mqa_odd", "moe_groups4"};
    check_family("nemotronh", cases, 3);
}

static void test_falconh1(void)
{
    /* Norm before the gate with d_ssm; odd sizes with in_proj bias and the gate first; no norm. */
    static const char *cases[] = {"gqa_norm_before_gate", "odd_bias_gate_first", "mqa_nonorm_tied"};
    check_family("falconh1", cases, 3);
}

static void test_jamba(void)
{
    /* Mamba, attention and MoE alternating; odd sizes with MQA and biases. */
    static const char *cases[] = {"alt_moe_gqa", "p4o2_mqa_odd"};
    check_family("jamba", cases, 2);
}

/* Qwen3-Next: Gated DeltaNet (conv + chunked delta rule in 64-token blocks) with attention and
 * MoE / dense MLPs; sequences of LONG_LEN tokens so verify entries cross a block boundary
 * (check_block_cross too); odd sizes on 3 threads (3 value heads, 42 conv channels); the
 * token-by-token form (RCD_GDN_RECURRENT=1) once. */
static void test_qwen3next(void)
{
    static const char *cases[] = {"moe_shared_tied", "moe_noshared_odd", "dense_bias_untied"};
    seq_len = LONG_LEN;
    check_family("qwen3next", cases, 3);
    if (!SANITIZED) {
        char dir[RCD_PATH_MAX];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/qwen3next/moe_noshared_odd", golden_root()) == 0);
        wrk_backend_opts_t o = opts;
        o.n_threads = 3;
        check_model(dir, "qwen3next/moe_noshared_odd/3 threads", &o);
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/qwen3next/all_linear_dense", golden_root()) == 0);
        setenv("RCD_GDN_RECURRENT", "1", 1);
        check_model(dir, "qwen3next/all_linear_dense/recurrent", &opts);
        unsetenv("RCD_GDN_RECURRENT");
    }
    seq_len = SANITIZED ? SAN_LEN : SEQ_LEN;
}

static void test_bundled(void)
{
    char dir[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(dir, sizeof dir, "%s/../../models/recurd-mamba-tiny", golden_root()) == 0);
    n_seq = SANITIZED ? 2 : N_SEQ;
    check_model(dir, "bundled", &opts);
    n_seq = N_SEQ;
}

/* 1 and 3 threads (uneven splits: on the odd sizes some threads own no channel, and the one
 * that owns channel 0 keeps B and C): the same bit-identity. */
static void test_threads(void)
{
    static const char *dirs[][2] = {
        {"mamba", "odd_sizes"}, {"mamba2", "odd_sizes"}, {"recurrentgemma", "odd_sizes"}};
    for (int nt = SANITIZED ? 3 : 1; nt <= 3; nt += 2)
        for (int i = 0; i < 3; i++) {
            char dir[RCD_PATH_MAX], label[96];
            CHECK(rcd_path_fmt(dir, sizeof dir, "%s/%s/%s", golden_root(), dirs[i][0],
                               dirs[i][1]) == 0);
            snprintf(label, sizeof label, "%s/%s/%d threads", dirs[i][0], dirs[i][1], nt);
            wrk_backend_opts_t o = opts;
            o.n_threads = nt;
            check_model(dir, label, &o);
        }
}

/* The hybrids' odd fixtures on 3 threads (uneven splits of heads, channels and tokens). */
static void test_threads_hybrid(void)
{
    static const char *dirs[][2] = {
        {"nemotronh", "mqa_odd"}, {"falconh1", "odd_bias_gate_first"}, {"jamba", "p4o2_mqa_odd"}};
    for (int i = SANITIZED ? 2 : 0; i < 3; i++) {
        char dir[RCD_PATH_MAX], label[96];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/%s/%s", golden_root(), dirs[i][0], dirs[i][1]) ==
              0);
        snprintf(label, sizeof label, "%s/%s/3 threads", dirs[i][0], dirs[i][1]);
        wrk_backend_opts_t o = opts;
        o.n_threads = 3;
        check_model(dir, label, &o);
    }
}

/* The KV pool gets back the blocks of rejected positions. */
static void test_kv_blocks_back(void)
{
    char dir[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(dir, sizeof dir, "%s/granite/dense_rope_untied", golden_root()) == 0);
    wrk_model_t *m = golden_model(dir);
    if (!m) return;
    wrk_backend_t *b = NULL;
    CHECK(wrk_cpu_backend_create(m, &opts, &b, err, sizeof err) == 0);
    if (b) {
        int64_t free0, total, free1;
        wrk_kv_blocks(b, &free0, &total);
        int32_t t[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
        wrk_seq_t s = {.slot = 2, .n_tokens = 9, .tokens = t, .verify = true};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
        wrk_kv_blocks(b, &free1, &total);
        CHECK(free1 == free0 - 3); /* 9 positions in blocks of 4 */
        CHECK(wrk_spec_accept(b, 2, 4) == 0);
        wrk_kv_blocks(b, &free1, &total);
        CHECK(free1 == free0 - 1);
        CHECK(wrk_state_bytes(b, 2) ==
              wrk_model_info(m)->state_bytes + 4 * wrk_model_info(m)->kv_bytes_per_token);
        wrk_backend_destroy(b);
    }
    wrk_model_free(m);
}

/* Tensor parallelism has no rollback: verify entries and accept are refused, while its
 * plain steps run. */
static void test_unsupported(void)
{
    char dir[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(dir, sizeof dir, "%s/mamba/tiny_bias_tied", golden_root()) == 0);
    wrk_model_t *m = golden_model(dir);
    if (!m) return;
    wrk_backend_opts_t o = opts;
    o.tp = 2;
    wrk_backend_t *b = NULL;
    int rc = wrk_cpu_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (b) {
        int32_t t[3] = {1, 2, 3};
        wrk_seq_t s = {.slot = 0, .n_tokens = 3, .tokens = t, .verify = true};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == RCD_EUNSUPPORTED);
        CHECK(wrk_spec_accept(b, 0, 1) == RCD_EUNSUPPORTED);
        s.verify = false;
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
        wrk_backend_destroy(b);
    }
    wrk_model_free(m);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_mamba);
    RUN(test_mamba2);
    RUN(test_granite);
    RUN(test_recurrentgemma);
    RUN(test_nemotronh);
    RUN(test_falconh1);
    RUN(test_jamba);
    RUN(test_qwen3next);
    RUN(test_bundled);
    RUN(test_threads);
    RUN(test_threads_hybrid);
    RUN(test_kv_blocks_back);
    RUN(test_unsupported);
    return rcd_test_summary();
}
