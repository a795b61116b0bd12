/* daemon: the OpenAI-compatible API — request bodies (JSON) to the internal GenerateRequest,
 * and the responses and Server-Sent-Event chunks back, as pure functions (no server, no I/O:
 * unit-tested in dmn_openai_test.c and fuzzed in tests/fuzz/fuzz_openai.c). The routes that
 * use them are in dmn_openai_http.c. */
#ifndef DMN_OPENAI_H
#define DMN_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "recurd/v1/inference.pb-c.h"
#include "statestore/store.h"

struct dmn_server;
struct tok;

typedef enum dmn_oai_kind {
    DMN_OAI_COMPLETIONS, /* POST /v1/completions */
    DMN_OAI_CHAT,        /* POST /v1/chat/completions */
} dmn_oai_kind_t;

#define DMN_OAI_MAX_STOP 16          /* stop strings per request */
#define DMN_OAI_MAX_TOP_LOGPROBS 20  /* OpenAI's bound */
#define DMN_OAI_MAX_BODY_IDS 1048576 /* token ids in a completions prompt */

/* A parsed request. gen is the internal request (its strings point into this struct or its
 * JSON: valid until dmn_oai_req_free); for chat, the prompt text is set later (rendered from
 * `messages` by dmn_oai_chat_prompt). */
typedef struct dmn_oai_req {
    dmn_oai_kind_t kind;
    cJSON *root;     /* the parsed body (owned) */
    cJSON *messages; /* chat: the `messages` array (in root) */
    bool stream, include_usage;
    bool logprobs;    /* the response carries logprobs */
    int top_logprobs; /* alternatives per token (0..20) */
    char model[128];
    char user[128]; /* `user`: logged only */
    char *prompt;   /* completions: the prompt text (owned; NULL with prompt ids) */
    size_t prompt_len;
    int32_t *ids; /* completions: a prompt of token ids (owned) */
    size_t n_ids;
    char *stops[DMN_OAI_MAX_STOP];
    Recurd__V1__GenerateRequest gen;
    Recurd__V1__SamplingParams sampling;
    Recurd__V1__TokenIds tokens;
} dmn_oai_req_t;

/* Parses a request body of `len` bytes (any bytes) for endpoint `kind`. 0 and *out (free it with
 * dmn_oai_req_free), or RCD_EINVAL (RCD_ENOMEM) with the message in err and the offending
 * field's name in param ("" when it is the body itself). Accepted fields: model, prompt
 * (completions: a string, an array of one string, or an array of token ids), messages (chat),
 * stream, stream_options.include_usage, temperature (0..2), top_p (0..1], max_tokens /
 * max_completion_tokens (>= 1), stop (a string or up to 16 strings), seed, presence_penalty and
 * frequency_penalty (-2..2), logprobs (chat: bool; completions: 0..20), top_logprobs (chat:
 * 0..20, needs logprobs), n (1 only), user, session_id, expected_version; ignored:
 * dmn_oai_ignored(); any other field: 400 naming it. */
int dmn_oai_parse(dmn_oai_kind_t kind, const char *body, size_t len, dmn_oai_req_t *out,
                  char *param, size_t paramlen, char *err, size_t errlen);
void dmn_oai_req_free(dmn_oai_req_t *r); /* NULL-safe */
/* The fields accepted and ignored (they do not change the output), NULL-terminated. */
extern const char *const dmn_oai_ignored[];

/* Chat: the prompt text for r's messages from a rendered template. `render(messages,
 * add_generation_prompt, out, len)` renders a JSON array of messages with the model's chat
 * template. continuation false: the whole conversation with the generation prompt.
 * continuation true (a session that already holds tokens): only what follows the state —
 * the template is rendered for [user: S1, assistant: S2] + messages and the text after the
 * sentinel S2 is taken, less a leading `eot` (the end-of-turn text the previous turn's state
 * already holds, e.g. the EOS token's text; NULL: none). 0 and *out (malloc'd), or an error
 * with err. */
typedef int (*dmn_oai_render_fn)(void *arg, const cJSON *messages, bool add_generation_prompt,
                                 char **out, size_t *out_len, char *err, size_t errlen);
int dmn_oai_chat_prompt(const cJSON *messages, bool continuation, const char *eot,
                        dmn_oai_render_fn render, void *arg, char **out, size_t *out_len, char *err,
                        size_t errlen);

/* ---- responses ------------------------------------------------------------------------- */

/* What a turn produced so far (the non-streaming response accumulates it; a stream keeps only
 * the id, the created time and whether the role was sent). */
typedef struct dmn_oai_acc {
    dmn_oai_kind_t kind;
    char id[64];     /* "chatcmpl-<rid>" / "cmpl-<rid>" */
    int64_t created; /* unix seconds */
    char model[128];
    bool include_usage, logprobs, role_sent;
    int top_logprobs;
    char *text; /* the generated text (owned) */
    size_t text_len, text_cap;
    cJSON *lp; /* logprob entries so far (chat: content[]; completions: built at the end) */
    size_t text_offset;
    int finish_reason; /* Recurd__V1__FinishReason */
    Recurd__V1__Usage usage;
    bool has_usage;
    uint64_t session_version;
    char session_id[STORE_ID_MAX + 1];
} dmn_oai_acc_t;

void dmn_oai_acc_init(dmn_oai_acc_t *a, const dmn_oai_req_t *r, const char *rid, int64_t now_s,
                      const char *model_id);
void dmn_oai_acc_free(dmn_oai_acc_t *a);
/* Adds one GenerateResponse (text_len bytes of text): text, logprobs (tok names the tokens; NULL:
 * ids as "<id>"), and from the final one the finish reason, usage and session. 0 or RCD_ENOMEM. */
int dmn_oai_acc_add(dmn_oai_acc_t *a, const Recurd__V1__GenerateResponse *m, size_t text_len,
                    const struct tok *tok);
/* The non-streaming response body (malloc'd JSON) from a finished accumulator; NULL: no memory. */
char *dmn_oai_response(const dmn_oai_acc_t *a);
/* One SSE event for a GenerateResponse delta (text_len bytes of text): `data: {chunk}\n\n`; the
 * final message adds the finish reason (and session_version / session_id), then, when asked,
 * a usage chunk, then `data: [DONE]\n\n`. malloc'd, *len bytes; NULL: no memory. */
char *dmn_oai_sse(dmn_oai_acc_t *a, const Recurd__V1__GenerateResponse *m, size_t text_len,
                  bool final, const struct tok *tok, size_t *len);
/* An SSE error event (OpenAI's error object) followed by `data: [DONE]`. */
char *dmn_oai_sse_error(int http_status, const char *type, const char *code, const char *msg,
                        size_t *len);
/* OpenAI's error body {"error":{"message","type","param","code"}} (param / code NULL: null),
 * the shape dmn_http_error writes, with the offending field in param. malloc'd; NULL: no memory. */
char *dmn_oai_error_json(const char *msg, const char *type, const char *param, const char *code);
/* OpenAI's finish_reason for ours ("stop", "length"). */
const char *dmn_oai_finish(int finish_reason);

/* GET /v1/models: the list body for the loaded model. */
char *dmn_oai_models(const char *model_id, int64_t created_s, const char *owned_by);

/* ---- sessions (/v1/sessions) ---------------------------------------------------------- */

/* POST /v1/sessions (create) and POST /v1/sessions/{id}/fork bodies (an empty body is {}):
 * session_id / new_session_id, metadata (an object of strings), owner, ttl_seconds. The
 * message's strings point into *root (free it with cJSON_Delete after the call). 0, or
 * RCD_EINVAL with err and param. fork: fills ForkSessionRequest (session_id set by the caller);
 * else CreateSessionRequest. */
int dmn_oai_session_create_parse(const char *body, size_t len, Recurd__V1__CreateSessionRequest *cr,
                                 cJSON **root, char *param, size_t paramlen, char *err,
                                 size_t errlen);
int dmn_oai_session_fork_parse(const char *body, size_t len, Recurd__V1__ForkSessionRequest *fr,
                               cJSON **root, char *param, size_t paramlen, char *err,
                               size_t errlen);
void dmn_oai_session_msg_free(ProtobufCMessage *m); /* frees the metadata arrays the parse made */
/* A Session as JSON: {"object":"session","id",...,"version",...}. */
char *dmn_oai_session_json(const Recurd__V1__Session *s);

/* Shared by dmn_openai.c and dmn_openai_resp.c: prints o unformatted and deletes it (NULL if
 * o is NULL or printing fails). */
char *dmn_oai__print_free(cJSON *o);

/* ---- routes (dmn_openai_http.c) --------------------------------------------------------- */
/* Adds the /v1 routes to the HTTP listener (before dmn_http_start). 0 or RCD_ENOMEM. */
int dmn_openai_routes(struct dmn_server *s);

#endif
