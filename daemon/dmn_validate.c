/* daemon: request checks shared by the handlers and the request fuzz target (dmn_validate.h).
 * No server, no store, no allocation: only the message, the limits and store_check_id. */
#include "daemon/dmn_validate.h"

#include <string.h>

#include "common/rcd_error.h"
#include "statestore/store.h"

int dmn_validate_model(const char *model, const dmn_limits_t *lim, char *err, size_t errlen)
{
    if (model && model[0] && strcmp(model, lim->model_id) != 0)
        return rcd_fail(RCD_ENOTFOUND, err, errlen, "model '%s' is not loaded (have '%s')", model,
                        lim->model_id);
    return 0;
}

int dmn_validate_meta(Recurd__V1__MetadataEntry *const *md, size_t n, char *err, size_t errlen)
{
    if (n > STORE_META_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "at most %d metadata entries", STORE_META_MAX);
    for (size_t i = 0; i < n; i++)
        if (!md[i]->key[0]) return rcd_fail(RCD_EINVAL, err, errlen, "metadata key %zu is empty", i);
    return 0;
}

int dmn_validate_sampling(const Recurd__V1__SamplingParams *p, const dmn_limits_t *lim, char *err,
                          size_t errlen)
{
    if (!p) return 0;
    float t = p->_temperature_case == RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE
                  ? p->temperature
                  : 1.0f;
    if (!(t >= 0.0f && t <= 100.0f))
        return rcd_fail(RCD_EINVAL, err, errlen, "temperature must be in [0, 100]");
    if (p->top_k < 0) return rcd_fail(RCD_EINVAL, err, errlen, "top_k must be >= 0");
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return rcd_fail(RCD_EINVAL, err, errlen, "top_p must be in [0, 1]");
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return rcd_fail(RCD_EINVAL, err, errlen, "min_p must be in [0, 1]");
    if (!(p->repetition_penalty >= 0.0f && p->repetition_penalty <= 100.0f))
        return rcd_fail(RCD_EINVAL, err, errlen, "repetition_penalty must be in (0, 100]");
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f) ||
        !(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "presence_penalty and frequency_penalty must be in [-2, 2]");
    if (p->max_tokens > (uint32_t)lim->max_context)
        return rcd_fail(RCD_EINVAL, err, errlen, "max_tokens %u is over the context limit %ld",
                        p->max_tokens, lim->max_context);
    if (p->logprobs > DMN_MAX_LOGPROBS)
        return rcd_fail(RCD_EINVAL, err, errlen, "logprobs must be in [0, %d]", DMN_MAX_LOGPROBS);
    if (p->n_stop > DMN_MAX_STOPS)
        return rcd_fail(RCD_EINVAL, err, errlen, "at most %d stop strings", DMN_MAX_STOPS);
    for (size_t i = 0; i < p->n_stop; i++) {
        size_t n = strlen(p->stop[i]);
        if (n == 0 || n > DMN_MAX_STOP_BYTES)
            return rcd_fail(RCD_EINVAL, err, errlen, "stop string %zu must be 1..%d bytes", i,
                            DMN_MAX_STOP_BYTES);
    }
    if (p->n_stop_token_ids > DMN_MAX_STOP_IDS)
        return rcd_fail(RCD_EINVAL, err, errlen, "at most %d stop token ids", DMN_MAX_STOP_IDS);
    for (size_t i = 0; i < p->n_stop_token_ids; i++)
        if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= lim->vocab)
            return rcd_fail(RCD_EINVAL, err, errlen, "stop token id %d is outside [0, %d)",
                            p->stop_token_ids[i], lim->vocab);
    return 0;
}

int dmn_validate_generate(const Recurd__V1__GenerateRequest *req, size_t text_len,
                          const dmn_limits_t *lim, char *err, size_t errlen)
{
    int rc;
    if ((rc = dmn_validate_model(req->model, lim, err, errlen))) return rc;
    if ((rc = dmn_validate_sampling(req->sampling, lim, err, errlen))) return rc;
    if (req->priority >= (uint32_t)lim->priorities)
        return rcd_fail(RCD_EINVAL, err, errlen, "priority %u is outside [0, %d]", req->priority,
                        lim->priorities - 1);
    if (req->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT) {
        if (!lim->has_tokenizer)
            return rcd_fail(RCD_EPRECONDITION, err, errlen,
                            "model '%s' has no tokenizer: send token ids, not text", lim->model_id);
        if (!text_len) return rcd_fail(RCD_EINVAL, err, errlen, "prompt text is empty");
        /* Encoding runs on the loop thread: refuse text that cannot fit the token limit
         * before spending time on it (over 64 bytes per token on average is no real prompt). */
        if (text_len > (size_t)lim->max_prompt * 64)
            return rcd_fail(RCD_ETOOBIG, err, errlen, "prompt text is %zu bytes, over %ld",
                            text_len, lim->max_prompt * 64);
    } else if (req->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS) {
        size_t n = req->tokens->n_ids;
        if (n == 0) return rcd_fail(RCD_EINVAL, err, errlen, "prompt token list is empty");
        if (n > (size_t)lim->max_prompt)
            return rcd_fail(RCD_ETOOBIG, err, errlen, "prompt is %zu tokens, over the limit %ld", n,
                            lim->max_prompt);
        for (size_t i = 0; i < n; i++)
            if (req->tokens->ids[i] < 0 || req->tokens->ids[i] >= lim->vocab)
                return rcd_fail(RCD_EINVAL, err, errlen, "token id %d at %zu is outside [0, %d)",
                                req->tokens->ids[i], i, lim->vocab);
    } else {
        return rcd_fail(RCD_EINVAL, err, errlen, "prompt missing: set text or tokens");
    }
    if (req->session_id[0]) return store_check_id(req->session_id, err, errlen);
    if (req->_expected_version_case ==
        RECURD__V1__GENERATE_REQUEST___EXPECTED_VERSION_EXPECTED_VERSION)
        return rcd_fail(RCD_EINVAL, err, errlen, "expected_version needs a session_id");
    return 0;
}

int dmn_validate_create(const Recurd__V1__CreateSessionRequest *req, const dmn_limits_t *lim,
                        char *err, size_t errlen)
{
    int rc;
    if ((rc = dmn_validate_model(req->model, lim, err, errlen))) return rc;
    if ((rc = dmn_validate_meta(req->metadata, req->n_metadata, err, errlen))) return rc;
    if (strlen(req->session_id) > STORE_ID_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "session id longer than %d bytes", STORE_ID_MAX);
    return 0;
}

int dmn_validate_fork(const Recurd__V1__ForkSessionRequest *req, char *err, size_t errlen)
{
    int rc;
    if ((rc = dmn_validate_meta(req->metadata, req->n_metadata, err, errlen))) return rc;
    if ((rc = store_check_id(req->session_id, err, errlen))) return rc;
    if (strlen(req->new_session_id) > STORE_ID_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "session id longer than %d bytes", STORE_ID_MAX);
    return 0;
}

int dmn_validate_detokenize(const Recurd__V1__DetokenizeRequest *req, const dmn_limits_t *lim,
                            char *err, size_t errlen)
{
    int rc;
    if ((rc = dmn_validate_model(req->model, lim, err, errlen))) return rc;
    for (size_t i = 0; i < req->n_token_ids; i++)
        if (req->token_ids[i] < 0 || req->token_ids[i] >= lim->vocab)
            return rcd_fail(RCD_ERANGE, err, errlen, "token id %d at %zu is outside [0, %d)",
                            req->token_ids[i], i, lim->vocab);
    return 0;
}
