/* libFuzzer target for request decoding through each RPC's real validation path. The first
 * input byte picks the RPC (low nibble; bit 4: the model has no tokenizer); the rest is the
 * request message's wire bytes. Like dmn_call_unpack: protobuf-c unpack, then the dmn_wire scan
 * (NUL bytes, the text's real length); then the checks the handler runs (dmn_validate_*,
 * store_check_id), the prompt's encoding with the bundled tokenizer (Generate, Tokenize) and
 * the reply's packing (Detokenize). Whatever a check accepts is then held to what the handler
 * relies on. Run from the repository root (it loads models/recurd-mamba-tiny's tokenizer). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "daemon/dmn_validate.h"
#include "daemon/dmn_wire.h"
#include "grpc/health/v1/health.pb-c.h"
#include "recurd/v1/inference.pb-c.h"
#include "statestore/store.h"
#include "workers/tokenizer/tok.h"

#define MODEL_DIR "models/recurd-mamba-tiny"

static tok_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    if (tok_load(MODEL_DIR, NULL, &tok, err, sizeof(err)))
        fprintf(stderr, "fuzz_request: %s (text prompts are not encoded)\n", err);
    (void)argc;
    (void)argv;
    return 0;
}

/* A broken promise of the validation: stop here, with the input saved. */
#define MUST(cond)                                                                                 \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_request: %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_err(int rc, const char *err)
{
    MUST(rc <= 0);
    MUST(memchr(err, 0, 512) != NULL);
    if (rc) MUST(err[0]);
}

static void encode(const char *text, size_t len, const dmn_limits_t *lim)
{
    if (!tok) return;
    tok_ids_t ids = {0};
    char err[256];
    if (tok_encode(tok, text, len, 0, &ids, err, sizeof(err)) == 0)
        for (size_t i = 0; i < ids.n; i++)
            MUST(ids.v[i] >= 0 && ids.v[i] < lim->vocab);
    tok_ids_free(&ids);
}

static void generate(const Recurd__V1__GenerateRequest *r, size_t text_len, const dmn_limits_t *lim)
{
    char err[512] = {0};
    int rc = dmn_validate_generate(r, text_len, lim, err, sizeof(err));
    check_err(rc, err);
    if (rc) return;
    MUST(r->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT ||
         r->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS);
    MUST(r->priority < (uint32_t)lim->priorities);
    if (r->session_id[0]) MUST(strlen(r->session_id) <= STORE_ID_MAX);
    if (r->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS) {
        MUST(r->tokens && r->tokens->n_ids > 0 && r->tokens->n_ids <= (size_t)lim->max_prompt);
        for (size_t i = 0; i < r->tokens->n_ids; i++)
            MUST(r->tokens->ids[i] >= 0 && r->tokens->ids[i] < lim->vocab);
    } else {
        MUST(lim->has_tokenizer && text_len > 0 && text_len <= (size_t)lim->max_prompt * 64);
        encode(r->text, text_len, lim);
    }
    const Recurd__V1__SamplingParams *p = r->sampling;
    if (p) {
        MUST(p->n_stop <= DMN_MAX_STOPS && p->logprobs <= DMN_MAX_LOGPROBS);
        MUST(p->max_tokens <= (uint32_t)lim->max_context);
        for (size_t i = 0; i < p->n_stop; i++)
            MUST(strlen(p->stop[i]) >= 1 && strlen(p->stop[i]) <= DMN_MAX_STOP_BYTES);
        for (size_t i = 0; i < p->n_stop_token_ids; i++)
            MUST(p->stop_token_ids[i] >= 0 && p->stop_token_ids[i] < lim->vocab);
    }
}

static void detokenize(const Recurd__V1__DetokenizeRequest *r, const dmn_limits_t *lim)
{
    char err[512] = {0};
    int rc = dmn_validate_detokenize(r, lim, err, sizeof(err));
    check_err(rc, err);
    if (rc || !tok) return;
    tok_text_t text = {0};
    if (tok_decode(tok, r->token_ids, r->n_token_ids, r->skip_special_tokens ? TOK_SKIP_SPECIAL : 0,
                   &text, err, sizeof(err)) == 0) {
        /* the reply carries every byte, NUL bytes included (dmn_wire_pack_text) */
        Recurd__V1__DetokenizeResponse d = RECURD__V1__DETOKENIZE_RESPONSE__INIT;
        d.text = text.p ? text.p : "";
        size_t n = dmn_wire_pack_text(&d.base, text.n, NULL);
        uint8_t *buf = malloc(n ? n : 1);
        MUST(buf && dmn_wire_pack_text(&d.base, text.n, buf) == n);
        dmn_wire_t w;
        MUST(dmn_wire_scan(&recurd__v1__detokenize_response__descriptor, buf, n, &w) == 0);
        MUST(w.text_len == text.n);
        free(buf);
    }
    tok_text_free(&text);
}

static void validate(int m, const ProtobufCMessage *msg, size_t text_len, const dmn_limits_t *lim)
{
    char err[512] = {0};
    int rc = 0;
    switch (m) {
    case 0: /* ListModels: nothing to check */
    case 8: /* Health Check / Watch: an unknown service is answered, never refused */
    case 9:
        break;
    case 1: {
        const Recurd__V1__CreateSessionRequest *r = (const void *)msg;
        rc = dmn_validate_create(r, lim, err, sizeof(err));
        if (!rc) MUST(r->n_metadata <= STORE_META_MAX && strlen(r->session_id) <= STORE_ID_MAX);
        break;
    }
    case 2:
        rc = store_check_id(((const Recurd__V1__GetSessionRequest *)msg)->session_id, err,
                            sizeof(err));
        break;
    case 3: {
        const Recurd__V1__ForkSessionRequest *r = (const void *)msg;
        rc = dmn_validate_fork(r, err, sizeof(err));
        if (!rc) MUST(r->n_metadata <= STORE_META_MAX && strlen(r->new_session_id) <= STORE_ID_MAX);
        break;
    }
    case 4:
        rc = store_check_id(((const Recurd__V1__DeleteSessionRequest *)msg)->session_id, err,
                            sizeof(err));
        break;
    case 5: {
        const Recurd__V1__TokenizeRequest *r = (const void *)msg;
        rc = dmn_validate_model(r->model, lim, err, sizeof(err));
        if (!rc) encode(r->text, text_len, lim);
        break;
    }
    case 6:
        detokenize((const void *)msg, lim);
        return;
    case 7:
        generate((const void *)msg, text_len, lim);
        return;
    }
    check_err(rc, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ProtobufCMessageDescriptor *const descs[] = {
        &recurd__v1__list_models_request__descriptor,
        &recurd__v1__create_session_request__descriptor,
        &recurd__v1__get_session_request__descriptor,
        &recurd__v1__fork_session_request__descriptor,
        &recurd__v1__delete_session_request__descriptor,
        &recurd__v1__tokenize_request__descriptor,
        &recurd__v1__detokenize_request__descriptor,
        &recurd__v1__generate_request__descriptor,
        &grpc__health__v1__health_check_request__descriptor,
        &grpc__health__v1__health_check_request__descriptor,
    };
    if (size < 1) return 0;
    int m = (data[0] & 0x0f) % 10;
    dmn_limits_t lim = {.model_id = "recurd-mamba-tiny",
                        .vocab = tok ? (int)tok_vocab_size(tok) : 4096,
                        .max_context = 4096,
                        .max_prompt = 2048,
                        .priorities = 4,
                        .has_tokenizer = tok && !(data[0] & 0x10)};
    data++;
    size--;
    /* dmn_call_unpack: protobuf-c first, then the wire scan of the same bytes */
    ProtobufCMessage *msg = protobuf_c_message_unpack(descs[m], NULL, size, data);
    if (!msg) return 0;
    dmn_wire_t w;
    int rc = dmn_wire_scan(descs[m], data, size, &w);
    MUST(rc == 0 || rc == RCD_EINVAL);
    MUST(memchr(w.bad, 0, sizeof(w.bad)) != NULL);
    if (rc == 0 && !w.bad[0]) {
        MUST(w.text_len <= size);
        validate(m, msg, w.text_len, &lim);
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
}
