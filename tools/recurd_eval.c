/* recurd-eval: runs a prompt through a checkpoint and writes the logits of every position
 * (raw little-endian float32, [n_tokens x vocab]) — the stable interface for checking
 * parity of any checkpoint against another implementation. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/eng_draft.h"
#include "engine/eng_draft_model.h"
#include "workers/wrk.h"

static void usage(FILE *f)
{
    fprintf(
        f, "usage: recurd-eval --model DIR (--tokens 1,2,3,... | --tokens-file F)\n"
           "                   [--chunk N] [--dump-logits FILE] [--greedy N] [--threads N]\n"
           "                   [--isa auto|avx512|avx2|portable] [--matmul fp32|bf16|bf16-avx512]\n"
           "                   [--backend cpu|cuda] [--tp N] [--speculate off|ngram|draft]\n"
           "                   [--spec-tokens K] [--draft-model DIR] [--weights native|q8|q4]\n"
           "  Runs the prompt in chunks of N tokens (default: the whole prompt in one step)\n"
           "  and writes the logits of every position to FILE as raw little-endian float32,\n"
           "  row-major [n_tokens x vocab]. --greedy N then decodes N tokens greedily and\n"
           "  prints their ids. A tokens file holds whitespace- or comma-separated ids.\n"
           "  --tp N runs N tensor-parallel ranks (CPU: in-process, threads split between\n"
           "  them): the logits must match --tp 1 within fp32 rounding (with --weights,\n"
           "  within the quantization error: workers/README.md). --matmul bf16 rounds\n"
           "  the matmuls' inputs to bf16 (BF16 weights; AMX, else AVX512_BF16);\n"
           "  bf16-avx512 forces the AVX512_BF16 kernel (no AMX). --weights q8|q4 quantizes\n"
           "  the projections when packing (CPU; under --tp each rank its slices;\n"
           "  workers/README.md).\n"
           "  --speculate ngram decodes --greedy N with speculative verify entries: up to K\n"
           "  (default 4, 1..15) n-gram drafts from the prompt and the tokens so far, checked\n"
           "  in one step, the slot rolled back to the accepted ones; the ids printed are the\n"
           "  same as without, and the acceptance figures go to stderr. --speculate draft\n"
           "  takes its drafts from --draft-model DIR instead (a model of the same vocabulary\n"
           "  and tokenizer, any supported family, on the CPU): its greedy tokens, k\n"
           "  single-token draft steps per verify. A backend without verify entries (--tp N,\n"
           "  cuda) says \"speculative decoding off\" on stderr and decodes plainly.\n"
           "  Bad options exit 2 with the reason.\n");
}

/* Parses option --name's integer value s into *out; false (after saying why) unless it is a
 * whole decimal integer in [lo, hi]. */
static bool num_opt(const char *name, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (end == s || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "recurd-eval: --%s must be an integer from %ld to %ld, got '%s'\n", name,
                lo, hi, s);
        return false;
    }
    *out = x;
    return true;
}

/* Parses ids separated by commas or whitespace; returns count or a negative error. */
static int parse_ids(const char *s, int32_t **out, size_t *n, char *err, size_t errlen)
{
    size_t cap = 64, len = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    const char *p = s;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
            p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return rcd_fail(RCD_EINVAL, err, errlen, "bad token id near \"%.16s\"", p);
        }
        if (len == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
            }
            v = nv;
        }
        v[len++] = (int32_t)x;
        p = end;
    }
    *out = v;
    *n = len;
    return 0;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + len, 1, cap - len - 1, f)) > 0;) {
        len += r;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (buf) buf[len] = 0;
    return buf;
}

static int32_t argmax(const float *row, size_t V)
{
    int32_t best = 0;
    for (size_t v = 1; v < V; v++)
        if (row[v] > row[best]) best = (int32_t)v;
    return best;
}

/* --greedy N with --speculate ngram: each step feeds the last token and up to k n-gram drafts
 * as one verify entry, keeps the drafts the target's argmax agrees with (wrk_spec_accept) and
 * prints exactly the ids plain greedy decoding prints. */
static int spec_greedy(wrk_backend_t *b, const int32_t *ids, size_t n, size_t V, const float *last,
                       long greedy, int k_max, wrk_backend_t *dbe, char *err, size_t errlen)
{
    int rc = 0;
    eng_draft_t *d = NULL;
    int32_t fed = 0; /* a draft model: the tokens of hist in its slot */
    uint64_t rng = 0;
    const eng_draft_sampling_t greedy_smp = {0};
    eng_spec_policy_t pol;
    eng_spec_policy_init(&pol, k_max, 0);
    int32_t *hist = malloc((n + (size_t)greedy + 1) * sizeof(int32_t));
    float *rows = malloc((size_t)WRK_SPEC_MAX_TOKENS * V * sizeof(float));
    if (!hist || !rows) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto out;
    }
    if (dbe && (rc = eng_draft_model_create(dbe, 1, &d, err, errlen))) goto out;
    if (!dbe && (rc = eng_draft_ngram_create(NULL, &d))) {
        rcd_fail(rc, err, errlen, "cannot create the n-gram draft source");
        goto out;
    }
    memcpy(hist, ids, n * sizeof(int32_t));
    int32_t nh = (int32_t)n, tok = argmax(last, V), w[WRK_SPEC_MAX_TOKENS];
    long emitted = 0, steps = 0;
    for (;;) {
        printf("%s%d", emitted ? "," : "", tok);
        hist[nh++] = tok;
        if (++emitted == greedy) break;
        int k = eng_spec_policy_next(&pol, 1);
        if (k > greedy - emitted - 1) k = (int)(greedy - emitted - 1);
        int m = 0;
        if (k > 0 && dbe) { /* the draft model: exactly k */
            eng_draft_job_t job = {.slot = 0,
                                   .toks = hist,
                                   .n_toks = nh,
                                   .fed = &fed,
                                   .k = k,
                                   .out = w + 1,
                                   .smp = &greedy_smp,
                                   .rng = &rng};
            if ((rc = d->vt->propose_batch(d, &job, 1, err, errlen))) goto out;
            m = k;
        } else if (k > 0) {
            m = eng_draft_propose(d, hist, nh, k, w + 1);
        }
        w[0] = tok;
        wrk_seq_t s = {.slot = 0,
                       .n_tokens = m + 1,
                       .tokens = w,
                       .n_logits = m + 1,
                       .logits = rows,
                       .verify = m > 0};
        if ((rc = wrk_step(b, &s, 1, err, errlen))) goto out;
        steps++;
        int j = 0;
        while (j < m && argmax(rows + (size_t)j * V, V) == w[j + 1]) {
            printf(",%d", w[j + 1]);
            hist[nh++] = w[j + 1];
            j++;
            if (++emitted == greedy) break;
        }
        if (m > 0) {
            eng_spec_policy_update(&pol, m, j);
            if ((rc = wrk_spec_accept(b, 0, j + 1))) {
                rcd_fail(rc, err, errlen, "speculative rollback failed");
                goto out;
            }
        }
        if (emitted == greedy) break;
        tok = argmax(rows + (size_t)j * V, V);
    }
    printf("\n");
    fprintf(stderr,
            "recurd-eval: speculative decoding: %ld tokens in %ld steps, %llu verifies, %llu "
            "drafted, %llu accepted (acceptance %.3f)\n",
            emitted, steps, (unsigned long long)pol.verifies, (unsigned long long)pol.drafted,
            (unsigned long long)pol.accepted,
            pol.drafted ? (double)pol.accepted / (double)pol.drafted : 0.0);
out:
    eng_draft_destroy(d);
    free(hist);
    free(rows);
    return rc;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *tokens_arg = NULL, *tokens_file = NULL, *dump = NULL;
    const char *isa = NULL, *backend = "cpu", *matmul = NULL, *weights = NULL;
    long chunk = 0, greedy = 0, threads = 0, tp = 1, spec_k = 4;
    const char *speculate = "off", *draft_dir = NULL;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"tokens-file", required_argument, 0, 'f'},
                                         {"chunk", required_argument, 0, 'c'},
                                         {"dump-logits", required_argument, 0, 'd'},
                                         {"greedy", required_argument, 0, 'g'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"isa", required_argument, 0, 'i'},
                                         {"backend", required_argument, 0, 'b'},
                                         {"tp", required_argument, 0, 'p'},
                                         {"matmul", required_argument, 0, 'x'},
                                         {"help", no_argument, 0, 'h'},
                                         {"weights", required_argument, 0, 'w'},
                                         {"speculate", required_argument, 0, 's'},
                                         {"spec-tokens", required_argument, 0, 'k'},
                                         {"draft-model", required_argument, 0, 'D'},
                                         {0, 0, 0, 0}};
    for (int o;
         (o = getopt_long(argc, argv, "m:t:f:c:d:g:j:i:b:p:x:w:s:k:D:h", opts, NULL)) != -1;) {
        switch (o) {
        case 'm':
            model_dir = optarg;
            break;
        case 't':
            tokens_arg = optarg;
            break;
        case 'f':
            tokens_file = optarg;
            break;
        case 'c':
            if (!num_opt("chunk", optarg, 0, INT_MAX, &chunk)) return 2;
            break;
        case 'd':
            dump = optarg;
            break;
        case 'g':
            if (!num_opt("greedy", optarg, 0, 1000000, &greedy)) return 2;
            break;
        case 'j':
            if (!num_opt("threads", optarg, 0, INT_MAX, &threads)) return 2;
            break;
        case 'i':
            isa = optarg;
            break;
        case 'b':
            backend = optarg;
            break;
        case 'p':
            if (!num_opt("tp", optarg, 1, 256, &tp)) return 2;
            break;
        case 'x':
            matmul = optarg;
            break;
        case 'w':
            weights = optarg;
            break;
        case 's':
            speculate = optarg;
            break;
        case 'k':
            if (!num_opt("spec-tokens", optarg, 1, ENG_DRAFT_MAX, &spec_k)) return 2;
            break;
        case 'D':
            draft_dir = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!model_dir || (!tokens_arg == !tokens_file) || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (strcmp(speculate, "off") && strcmp(speculate, "ngram") && strcmp(speculate, "draft")) {
        fprintf(stderr, "recurd-eval: --speculate must be off, ngram or draft, got '%s'\n",
                speculate);
        return 2;
    }
    if (weights && strcmp(weights, "native") && strcmp(weights, "q8") && strcmp(weights, "q4")) {
        fprintf(stderr, "recurd-eval: --weights must be native, q8 or q4, got '%s'\n", weights);
        return 2;
    }
    if (!strcmp(speculate, "draft") && !draft_dir) {
        fprintf(stderr, "recurd-eval: --speculate draft needs --draft-model DIR (a draft model of "
                        "the model's vocabulary)\n");
        return 2;
    }
    if (draft_dir && strcmp(speculate, "draft"))
        fprintf(stderr,
                "recurd-eval: --draft-model is used by --speculate draft only (--speculate is "
                "%s)\n",
                speculate);
    char err[1024] = "";
    int rc, status = 1;
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL;
    float *logits = NULL;
    wrk_model_t *m = NULL, *dm = NULL;
    wrk_backend_t *b = NULL, *dbe = NULL;
    FILE *out = NULL;
    if (tokens_file && !(text = slurp(tokens_file))) {
        fprintf(stderr, "recurd-eval: %s: %s\n", tokens_file, strerror(errno));
        goto cleanup;
    }
    if ((rc = parse_ids(tokens_arg ? tokens_arg : text, &ids, &n, err, sizeof err))) goto fail;
    if (n == 0) {
        fprintf(stderr, "recurd-eval: no tokens given\n");
        goto cleanup;
    }
    if ((rc = wrk_model_load(model_dir, &m, err, sizeof err))) goto fail;
    const wrk_model_info_t *mi = wrk_model_info(m);
    if (chunk == 0 || (size_t)chunk > n) chunk = (long)n;
    wrk_backend_opts_t bo = {.n_threads = (int)threads,
                             .n_slots = 1,
                             .max_step_tokens =
                                 (int)(chunk > WRK_SPEC_MAX_TOKENS ? chunk : WRK_SPEC_MAX_TOKENS),
                             .isa = isa,
                             .tp = (int)tp,
                             .matmul = matmul,
                             .weights = weights};
    /* Models with a KV cache (Granite 4.0-H): room for the prompt and the greedy tokens. */
    if (mi->n_kv_layers > 0 && n + (size_t)greedy <= (size_t)1 << 30)
        bo.n_kv_blocks = (int)((n + (size_t)greedy + WRK_SPEC_MAX_TOKENS + 15) / 16);
    if ((rc = wrk_backend_create_by_name(backend, m, &bo, &b, err, sizeof err))) goto fail;
    fprintf(stderr,
            "recurd-eval: %s, %d layers, vocab %d, %s weights, state %zu bytes, "
            "fingerprint %s, kernels %s\n",
            mi->architecture, mi->n_layers, mi->vocab_size, wrk_dtype_name(mi->weight_dtype),
            mi->state_bytes, mi->fingerprint_hex, wrk_backend_isa(b));
    if (tp > 1)
        fprintf(stderr, "recurd-eval: %ld tensor-parallel ranks (%s)\n", tp, wrk_backend_name(b));
    const size_t V = (size_t)mi->vocab_size;
    logits = malloc(n * V * sizeof(float));
    if (!logits) {
        fprintf(stderr, "recurd-eval: cannot allocate logits for %zu tokens\n", n);
        goto cleanup;
    }
    for (size_t pos = 0; pos < n; pos += (size_t)chunk) {
        int len = (int)(n - pos < (size_t)chunk ? n - pos : (size_t)chunk);
        wrk_seq_t s = {.slot = 0,
                       .n_tokens = len,
                       .tokens = ids + pos,
                       .n_logits = len,
                       .logits = logits + pos * V};
        if ((rc = wrk_step(b, &s, 1, err, sizeof err))) goto fail;
    }
    if (dump) {
        if (!(out = fopen(dump, "wb")) || fwrite(logits, sizeof(float), n * V, out) != n * V ||
            fclose(out)) {
            out = NULL;
            fprintf(stderr, "recurd-eval: cannot write %s: %s\n", dump, strerror(errno));
            goto cleanup;
        }
        out = NULL;
        fprintf(stderr, "recurd-eval: wrote %zu x %zu logits to %s\n", n, V, dump);
    }
    if (greedy && strcmp(speculate, "draft") == 0) {
        if ((rc = wrk_model_load(draft_dir, &dm, err, sizeof err)) ||
            (rc = eng_draft_model_check(m, model_dir, dm, draft_dir, err, sizeof err)))
            goto fail;
        wrk_backend_opts_t dbo = {.n_threads = (int)threads, .n_slots = 2, .max_step_tokens = 512};
        if (wrk_model_info(dm)->n_kv_layers > 0 && n + (size_t)greedy <= (size_t)1 << 30)
            dbo.n_kv_blocks = (int)(2 * (n + (size_t)greedy + WRK_SPEC_MAX_TOKENS + 15) / 16);
        if ((rc = wrk_cpu_backend_create(dm, &dbo, &dbe, err, sizeof err))) goto fail;
        fprintf(stderr, "recurd-eval: draft model %s (%s, %d layers, fingerprint %s)\n", draft_dir,
                wrk_model_info(dm)->architecture, wrk_model_info(dm)->n_layers,
                wrk_model_info(dm)->fingerprint_hex);
    }
    bool spec = greedy && strcmp(speculate, "off") != 0;
    if (spec && !wrk_spec_supported(b)) { /* as the daemon: plain decoding, the same ids */
        fprintf(stderr,
                "recurd-eval: speculative decoding off: the %s backend has no verify entries "
                "for %s\n",
                wrk_backend_name(b), mi->architecture);
        spec = false;
    }
    if (spec) {
        if ((rc = spec_greedy(b, ids, n, V, logits + (n - 1) * V, greedy, (int)spec_k, dbe, err,
                              sizeof err)))
            goto fail;
    } else if (greedy) {
        const float *row = logits + (n - 1) * V;
        float *next = malloc(V * sizeof(float));
        if (!next) goto cleanup;
        for (long g = 0; g < greedy; g++) {
            int32_t best = 0;
            for (size_t v = 1; v < V; v++)
                if (row[v] > row[best]) best = (int32_t)v;
            printf("%s%d", g ? "," : "", best);
            wrk_seq_t s = {
                .slot = 0, .n_tokens = 1, .tokens = &best, .n_logits = 1, .logits = next};
            if ((rc = wrk_step(b, &s, 1, err, sizeof err))) {
                free(next);
                goto fail;
            }
            row = next;
        }
        printf("\n");
        free(next);
    }
    status = 0;
    goto cleanup;
fail:
    fprintf(stderr, "recurd-eval: %s (%s)\n", err, rcd_strerror(rc));
cleanup:
    if (out) fclose(out);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    wrk_backend_destroy(dbe);
    wrk_model_free(dm);
    free(logits);
    free(ids);
    free(text);
    return status;
}
