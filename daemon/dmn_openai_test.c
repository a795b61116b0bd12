/* Unit tests of the OpenAI API's pure part (dmn_openai.h): request parsing into the internal
 * GenerateRequest (every field, every refusal naming its field), the chat continuation rule,
 * the non-streaming response and the SSE chunks, the session bodies. */
#include "daemon/dmn_openai.h"
#include "tests/support/rcd_test.h"

#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"

static dmn_oai_req_t R;
static char P[64], E[512];

static int parse(dmn_oai_kind_t k, const char *body)
{
    return dmn_oai_parse(k, body, strlen(body), &R, P, sizeof(P), E, sizeof(E));
}

/* The body is refused with 400 naming `field`. */
static void refused(dmn_oai_kind_t k, const char *body, const char *field)
{
    int rc = parse(k, body);
    CHECK_MSG(rc == RCD_EINVAL, "%s: rc %d", body, rc);
    CHECK_MSG(strcmp(P, field) == 0, "%s: param '%s', want '%s' (%s)", body, P, field, E);
    CHECK_MSG(E[0] != 0, "%s: no message", body);
    if (field[0]) CHECK_MSG(strstr(E, field) != NULL, "message '%s' names no '%s'", E, field);
}

static void test_completion_fields(void)
{
    CHECK(parse(DMN_OAI_COMPLETIONS,
                "{\"model\":\"m\",\"prompt\":\"hello\",\"temperature\":0,\"top_p\":0.5,"
                "\"max_tokens\":7,\"stop\":[\"a\",\"bc\"],\"seed\":42,\"presence_penalty\":0.5,"
                "\"frequency_penalty\":-1,\"logprobs\":3,\"n\":1,\"user\":\"u1\","
                "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                "\"session_id\":\"s1\",\"expected_version\":4}") == 0);
    const Recurd__V1__GenerateRequest *g = &R.gen;
    CHECK(g->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT);
    CHECK(strcmp(g->text, "hello") == 0);
    CHECK(strcmp(g->model, "m") == 0);
    CHECK(g->sampling->_temperature_case == RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE);
    CHECK(g->sampling->temperature == 0.0f);
    CHECK(g->sampling->top_p == 0.5f);
    CHECK(g->sampling->max_tokens == 7);
    CHECK(g->sampling->n_stop == 2 && strcmp(g->sampling->stop[1], "bc") == 0);
    CHECK(g->sampling->_seed_case == RECURD__V1__SAMPLING_PARAMS___SEED_SEED);
    CHECK(g->sampling->seed == 42);
    CHECK(g->sampling->presence_penalty == 0.5f && g->sampling->frequency_penalty == -1.0f);
    CHECK(R.logprobs && R.top_logprobs == 3 && g->sampling->logprobs == 3);
    CHECK(R.stream && R.include_usage);
    CHECK(strcmp(R.user, "u1") == 0);
    CHECK(strcmp(g->session_id, "s1") == 0);
    CHECK(g->_expected_version_case && g->expected_version == 4);
    /* the internal request packs and unpacks as a gRPC client's would */
    size_t n = protobuf_c_message_get_packed_size(&g->base);
    uint8_t *b = malloc(n);
    protobuf_c_message_pack(&g->base, b);
    Recurd__V1__GenerateRequest *u = recurd__v1__generate_request__unpack(NULL, n, b);
    CHECK(u && strcmp(u->text, "hello") == 0 && u->sampling->max_tokens == 7);
    recurd__v1__generate_request__free_unpacked(u, NULL);
    free(b);
    dmn_oai_req_free(&R);
    /* stop as one string; a token-id prompt; an array of one string; logprobs 0 */
    CHECK(parse(DMN_OAI_COMPLETIONS, "{\"prompt\":[1,2,3],\"stop\":\"x\",\"logprobs\":0}") == 0);
    CHECK(R.gen.prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS);
    CHECK(R.gen.tokens->n_ids == 3 && R.gen.tokens->ids[2] == 3);
    CHECK(R.sampling.n_stop == 1 && strcmp(R.sampling.stop[0], "x") == 0);
    CHECK(R.logprobs && R.top_logprobs == 0 && R.sampling.logprobs == 1);
    dmn_oai_req_free(&R);
    CHECK(parse(DMN_OAI_COMPLETIONS, "{\"prompt\":[\"one\"],\"max_completion_tokens\":2}") == 0);
    CHECK(strcmp(R.gen.text, "one") == 0 && R.sampling.max_tokens == 2);
    CHECK(R.sampling._temperature_case == 0 && R.sampling._seed_case == 0 && !R.stream);
    dmn_oai_req_free(&R);
    /* harmless fields are ignored; nulls are unset */
    CHECK(parse(DMN_OAI_COMPLETIONS, "{\"prompt\":\"p\",\"metadata\":{\"a\":1},\"store\":false,"
                                     "\"temperature\":null,\"seed\":null,\"stop\":null}") == 0);
    CHECK(R.sampling._temperature_case == 0);
    dmn_oai_req_free(&R);
}

static void test_chat_fields(void)
{
    CHECK(parse(DMN_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
                              "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                              "{\"type\":\"text\",\"text\":\"b\"}]}],"
                              "\"logprobs\":true,\"top_logprobs\":2}") == 0);
    CHECK(cJSON_GetArraySize(R.messages) == 2);
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetArrayItem(R.messages, 1), "content");
    CHECK(cJSON_IsString(c) && strcmp(c->valuestring, "ab") == 0);
    CHECK(R.logprobs && R.top_logprobs == 2 && R.sampling.logprobs == 2);
    dmn_oai_req_free(&R);
    CHECK(parse(DMN_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                              "\"logprobs\":true}") == 0);
    CHECK(R.top_logprobs == 0 && R.sampling.logprobs == 1);
    dmn_oai_req_free(&R);
}

static void test_refusals(void)
{
    dmn_oai_kind_t C = DMN_OAI_COMPLETIONS, H = DMN_OAI_CHAT;
    refused(C, "{\"prompt\":", "");
    refused(C, "[1,2]", "");
    refused(C, "", "");
    refused(C, "{}", "prompt");
    refused(H, "{}", "messages");
    refused(C, "{\"prompt\":\"a\",\"n\":2}", "n");
    refused(C, "{\"prompt\":\"a\",\"n\":\"1\"}", "n");
    refused(C, "{\"prompt\":\"a\",\"temperature\":\"hot\"}", "temperature");
    refused(C, "{\"prompt\":\"a\",\"temperature\":2.5}", "temperature");
    refused(C, "{\"prompt\":\"a\",\"top_p\":0}", "top_p");
    refused(C, "{\"prompt\":\"a\",\"top_p\":1.5}", "top_p");
    refused(C, "{\"prompt\":\"a\",\"max_tokens\":0}", "max_tokens");
    refused(C, "{\"prompt\":\"a\",\"max_tokens\":1.5}", "max_tokens");
    refused(C, "{\"prompt\":\"a\",\"max_completion_tokens\":-3}", "max_completion_tokens");
    refused(C, "{\"prompt\":\"a\",\"stop\":5}", "stop");
    refused(C, "{\"prompt\":\"a\",\"stop\":[\"\"]}", "stop");
    refused(C,
            "{\"prompt\":\"a\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\","
            "\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
            "stop");
    refused(C, "{\"prompt\":\"a\",\"seed\":1.5}", "seed");
    refused(C, "{\"prompt\":\"a\",\"presence_penalty\":3}", "presence_penalty");
    refused(C, "{\"prompt\":\"a\",\"frequency_penalty\":-2.1}", "frequency_penalty");
    refused(C, "{\"prompt\":\"a\",\"logprobs\":true}", "logprobs");
    refused(C, "{\"prompt\":\"a\",\"logprobs\":21}", "logprobs");
    refused(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":3}", "logprobs");
    refused(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"top_logprobs\":2}",
            "top_logprobs");
    refused(H,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":true,"
            "\"top_logprobs\":21}",
            "top_logprobs");
    refused(C, "{\"prompt\":\"a\",\"stream\":1}", "stream");
    refused(C, "{\"prompt\":\"a\",\"stream_options\":{\"include_usage\":1}}", "stream_options");
    refused(C, "{\"prompt\":\"a\",\"user\":5}", "user");
    CHECK(parse(C, "{\"prompt\":\"a\",\"session_id\":\"\"}") == 0); /* "": stateless */
    CHECK(R.gen.session_id[0] == 0);
    dmn_oai_req_free(&R);
    refused(C, "{\"prompt\":\"a\",\"session_id\":7}", "session_id");
    refused(C, "{\"prompt\":\"a\",\"expected_version\":1}", "expected_version");
    refused(C, "{\"prompt\":\"a\",\"session_id\":\"s\",\"expected_version\":-1}",
            "expected_version");
    refused(C, "{\"prompt\":\"a\",\"echo\":true}", "echo");
    refused(C, "{\"prompt\":\"a\",\"best_of\":2}", "best_of");
    refused(C, "{\"prompt\":\"a\",\"logit_bias\":{}}", "logit_bias");
    refused(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[]}", "tools");
    refused(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"response_format\":{}}",
            "response_format");
    refused(C, "{\"prompt\":\"a\",\"frobnicate\":1}", "frobnicate");
    refused(C, "{\"messages\":[]}", "messages");
    refused(H, "{\"prompt\":\"a\"}", "prompt");
    refused(C, "{\"prompt\":[1,-2]}", "prompt");
    refused(C, "{\"prompt\":[\"a\",\"b\"]}", "prompt");
    refused(C, "{\"prompt\":[]}", "prompt");
    refused(H, "{\"messages\":[]}", "messages");
    refused(H, "{\"messages\":[1]}", "messages[0]");
    refused(H, "{\"messages\":[{\"content\":\"a\"}]}", "messages[0].role");
    refused(H, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content");
    refused(H,
            "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
            "\"image_url\":{}}]}]}",
            "messages[0].content");
    refused(C, "{\"model\":5,\"prompt\":\"a\"}", "model");
    refused(C, "{\"prompt\":\"a\",\"prompt\":\"b\"}", "prompt");
    refused(H, "{\"messages\":[{\"role\":\"user\"}],\"messages\":[{\"role\":\"user\"}]}",
            "messages");
    /* \u0000 would be cut by cJSON: refused; an escaped backslash before u0000 is text */
    refused(C, "{\"prompt\":\"a\\u0000\"}", "");
    CHECK(parse(C, "{\"prompt\":\"a\\\\u0000\"}") == 0);
    CHECK(strcmp(R.gen.text, "a\\u0000") == 0);
    dmn_oai_req_free(&R);
    /* a body with a NUL byte inside is not JSON past it */
    CHECK(dmn_oai_parse(C, "{\"prompt\":\"a\0\"}", 15, &R, P, sizeof(P), E, sizeof(E)) ==
          RCD_EINVAL);
}

/* A fake template: "<u>content</u>" per user message, "<a>content</a>" per assistant, the
 * generation prompt "<a>". */
static int fake_render(void *arg, const cJSON *messages, bool agp, char **out, size_t *out_len,
                       char *err, size_t errlen)
{
    (void)arg;
    (void)err;
    (void)errlen;
    char buf[1024] = "";
    for (const cJSON *m = messages->child; m; m = m->next) {
        const char *role = cJSON_GetObjectItem(m, "role")->valuestring;
        const char *c = cJSON_GetObjectItem(m, "content")->valuestring;
        char t = role[0];
        size_t n = strlen(buf);
        snprintf(buf + n, sizeof(buf) - n, "<%c>%s</%c>", t, c, t);
    }
    if (agp) strcat(buf, "<a>");
    *out = strdup(buf);
    *out_len = strlen(buf);
    return 0;
}

static void test_chat_prompt(void)
{
    cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"two\"}]");
    char *t = NULL;
    size_t n = 0;
    CHECK(dmn_oai_chat_prompt(msgs, false, NULL, fake_render, NULL, &t, &n, E, sizeof(E)) == 0);
    CHECK(strcmp(t, "<u>two</u><a>") == 0 && n == strlen(t));
    free(t);
    /* continuation: what follows the previous assistant message's content; the end-of-turn
     * text the state already holds ("</a>" here, as an EOS token) is left out */
    CHECK(dmn_oai_chat_prompt(msgs, true, "</a>", fake_render, NULL, &t, &n, E, sizeof(E)) == 0);
    CHECK_MSG(strcmp(t, "<u>two</u><a>") == 0, "got '%s'", t);
    free(t);
    CHECK(dmn_oai_chat_prompt(msgs, true, NULL, fake_render, NULL, &t, &n, E, sizeof(E)) == 0);
    CHECK(strcmp(t, "</a><u>two</u><a>") == 0);
    free(t);
    /* the whole conversation equals the first turn + the state's end + the continuation */
    cJSON_Delete(msgs);
}

static Recurd__V1__GenerateResponse delta(const char *text)
{
    Recurd__V1__GenerateResponse m = RECURD__V1__GENERATE_RESPONSE__INIT;
    m.text = (char *)text;
    return m;
}

static void test_response(void)
{
    CHECK(parse(DMN_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                              "\"session_id\":\"s9\"}") == 0);
    dmn_oai_acc_t a;
    dmn_oai_acc_init(&a, &R, "r1", 1700000000, "tiny");
    Recurd__V1__GenerateResponse m1 = delta("Hel"), m2 = delta("lo\0x");
    Recurd__V1__Usage u = RECURD__V1__USAGE__INIT;
    u.prompt_tokens = 5;
    u.completion_tokens = 2;
    m2.usage = &u;
    m2.finish_reason = RECURD__V1__FINISH_REASON__FINISH_REASON_EOS;
    m2.session_version = 3;
    m2.session_id = "s9";
    CHECK(dmn_oai_acc_add(&a, &m1, 3, NULL) == 0);
    CHECK(dmn_oai_acc_add(&a, &m2, 2, NULL) == 0);
    char *s = dmn_oai_response(&a);
    cJSON *o = cJSON_Parse(s);
    CHECK(o);
    CHECK(strcmp(cJSON_GetObjectItem(o, "id")->valuestring, "chatcmpl-r1") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion") == 0);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *msg = cJSON_GetObjectItem(ch, "message");
    CHECK(strcmp(cJSON_GetObjectItem(msg, "content")->valuestring, "Hello") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "stop") == 0);
    cJSON *us = cJSON_GetObjectItem(o, "usage");
    CHECK(cJSON_GetObjectItem(us, "total_tokens")->valuedouble == 7);
    CHECK(cJSON_GetObjectItem(o, "session_version")->valuedouble == 3);
    CHECK(strcmp(cJSON_GetObjectItem(o, "session_id")->valuestring, "s9") == 0);
    cJSON_Delete(o);
    free(s);
    dmn_oai_acc_free(&a);
    dmn_oai_req_free(&R);
}

static void test_sse(void)
{
    CHECK(parse(DMN_OAI_COMPLETIONS, "{\"prompt\":\"x\",\"stream\":true,\"logprobs\":1,"
                                     "\"stream_options\":{\"include_usage\":true}}") == 0);
    dmn_oai_acc_t a;
    dmn_oai_acc_init(&a, &R, "r2", 1, "tiny");
    Recurd__V1__GenerateResponse m = delta("ab");
    Recurd__V1__TopLogprob top = RECURD__V1__TOP_LOGPROB__INIT, *tp = &top;
    top.token_id = 9;
    top.logprob = -0.5f;
    Recurd__V1__TokenLogprob lp = RECURD__V1__TOKEN_LOGPROB__INIT, *lpp = &lp;
    lp.token_id = 9;
    lp.logprob = -0.5f;
    lp.n_top = 1;
    lp.top = &tp;
    m.n_logprobs = 1;
    m.logprobs = &lpp;
    size_t n = 0;
    char *s = dmn_oai_sse(&a, &m, 2, false, NULL, &n);
    CHECK(s && n == strlen(s));
    CHECK(strncmp(s, "data: {", 7) == 0 && strcmp(s + n - 2, "\n\n") == 0);
    CHECK(strstr(s, "[DONE]") == NULL);
    cJSON *o = cJSON_ParseWithLength(s + 6, n - 8);
    CHECK(o);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    CHECK(strcmp(cJSON_GetObjectItem(ch, "text")->valuestring, "ab") == 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")));
    cJSON *l = cJSON_GetObjectItem(ch, "logprobs");
    CHECK(strcmp(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "tokens"), 0)->valuestring, "<9>") == 0);
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "token_logprobs"), 0)->valuedouble == -0.5);
    cJSON_Delete(o);
    free(s);
    /* the final: finish reason, then the usage chunk, then [DONE] */
    Recurd__V1__GenerateResponse f = delta("");
    Recurd__V1__Usage u = RECURD__V1__USAGE__INIT;
    u.prompt_tokens = 1;
    u.completion_tokens = 4;
    f.usage = &u;
    f.finish_reason = RECURD__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    s = dmn_oai_sse(&a, &f, 0, true, NULL, &n);
    CHECK(s);
    char *first_end = strstr(s, "\n\n");
    CHECK(first_end && strstr(s, "\"finish_reason\":\"length\"") < first_end);
    char *second = first_end + 2;
    CHECK(strncmp(second, "data: {", 7) == 0 && strstr(second, "\"usage\"") &&
          strstr(second, "\"choices\":[]"));
    CHECK(strcmp(s + n - 14, "data: [DONE]\n\n") == 0);
    free(s);
    dmn_oai_acc_free(&a);
    dmn_oai_req_free(&R);
    /* without include_usage: no usage chunk */
    CHECK(parse(DMN_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                              "\"stream\":true}") == 0);
    dmn_oai_acc_init(&a, &R, "r3", 1, "tiny");
    Recurd__V1__GenerateResponse d = delta("hi");
    s = dmn_oai_sse(&a, &d, 2, false, NULL, &n);
    CHECK(strstr(s, "\"role\":\"assistant\"") && strstr(s, "\"content\":\"hi\""));
    free(s);
    s = dmn_oai_sse(&a, &d, 2, false, NULL, &n);
    CHECK(!strstr(s, "\"role\"")); /* the role goes in the first chunk only */
    free(s);
    s = dmn_oai_sse(&a, &f, 0, true, NULL, &n);
    CHECK(!strstr(s, "\"usage\"") && strstr(s, "data: [DONE]\n\n"));
    free(s);
    dmn_oai_acc_free(&a);
    dmn_oai_req_free(&R);
    /* the fast path (a text delta without logprobs) escapes like cJSON, NUL bytes included */
    CHECK(parse(DMN_OAI_COMPLETIONS, "{\"prompt\":\"x\",\"stream\":true}") == 0);
    dmn_oai_acc_init(&a, &R, "q\"1", 1, "ti\\ny");
    static const char odd[] = "a\"b\\c\nd\x01e\0f\xc3\xa9";
    Recurd__V1__GenerateResponse od = delta(odd);
    s = dmn_oai_sse(&a, &od, sizeof(odd) - 1, false, NULL, &n);
    CHECK(s && n == strlen(s) && strncmp(s, "data: {", 7) == 0 && !strcmp(s + n - 2, "\n\n"));
    o = cJSON_ParseWithLength(s + 6, n - 8);
    CHECK(o);
    CHECK(strcmp(cJSON_GetObjectItem(o, "id")->valuestring, "cmpl-q\"1") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(o, "model")->valuestring, "ti\\ny") == 0);
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    CHECK(strcmp(cJSON_GetObjectItem(ch, "text")->valuestring, "a\"b\\c\nd\x01e") == 0);
    CHECK(strstr(s, "e\\u0000f\xc3\xa9\"")); /* cJSON reads up to the NUL; the bytes are there */
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(ch, "logprobs")));
    cJSON_Delete(o);
    free(s);
    dmn_oai_acc_free(&a);
    dmn_oai_req_free(&R);
    s = dmn_oai_sse_error(409, "invalid_request_error", "aborted", "conflict", &n);
    CHECK(s && strstr(s, "\"error\"") && strstr(s, "conflict") && strstr(s, "data: [DONE]"));
    free(s);
}

static void test_sessions(void)
{
    Recurd__V1__CreateSessionRequest cr;
    cJSON *root = NULL;
    const char *b = "{\"session_id\":\"abc\",\"metadata\":{\"k\":\"v\",\"k2\":\"w\"},"
                    "\"owner\":\"o\",\"ttl_seconds\":60}";
    CHECK(dmn_oai_session_create_parse(b, strlen(b), &cr, &root, P, sizeof(P), E, sizeof(E)) == 0);
    CHECK(strcmp(cr.session_id, "abc") == 0 && cr.n_metadata == 2 && cr.ttl_seconds == 60);
    CHECK(strcmp(cr.metadata[1]->value, "w") == 0 && strcmp(cr.owner, "o") == 0);
    dmn_oai_session_msg_free(&cr.base);
    cJSON_Delete(root);
    CHECK(dmn_oai_session_create_parse("", 0, &cr, &root, P, sizeof(P), E, sizeof(E)) == 0);
    CHECK(cr.session_id[0] == 0);
    dmn_oai_session_msg_free(&cr.base);
    cJSON_Delete(root);
    b = "{\"ttl_seconds\":-1}";
    CHECK(dmn_oai_session_create_parse(b, strlen(b), &cr, &root, P, sizeof(P), E, sizeof(E)) ==
          RCD_EINVAL);
    CHECK(strcmp(P, "ttl_seconds") == 0);
    dmn_oai_session_msg_free(&cr.base);
    cJSON_Delete(root);
    b = "{\"metadata\":{\"k\":1}}";
    CHECK(dmn_oai_session_create_parse(b, strlen(b), &cr, &root, P, sizeof(P), E, sizeof(E)) ==
          RCD_EINVAL);
    CHECK(strcmp(P, "metadata") == 0);
    dmn_oai_session_msg_free(&cr.base);
    cJSON_Delete(root);
    b = "{\"metadata\":{\"k\":\"v\"},\"metadata\":{}}";
    CHECK(dmn_oai_session_create_parse(b, strlen(b), &cr, &root, P, sizeof(P), E, sizeof(E)) ==
          RCD_EINVAL);
    CHECK(strcmp(P, "metadata") == 0);
    dmn_oai_session_msg_free(&cr.base);
    cJSON_Delete(root);
    Recurd__V1__ForkSessionRequest fr;
    b = "{\"new_session_id\":\"f\",\"bogus\":1}";
    CHECK(dmn_oai_session_fork_parse(b, strlen(b), &fr, &root, P, sizeof(P), E, sizeof(E)) ==
          RCD_EINVAL);
    CHECK(strcmp(P, "bogus") == 0);
    dmn_oai_session_msg_free(&fr.base);
    cJSON_Delete(root);
    Recurd__V1__Session s = RECURD__V1__SESSION__INIT;
    s.session_id = "abc";
    s.version = 2;
    char *j = dmn_oai_session_json(&s);
    CHECK(j && strstr(j, "\"id\":\"abc\"") && strstr(j, "\"version\":2"));
    free(j);
    j = dmn_oai_models("tiny", 5, "recurd");
    CHECK(j && strstr(j, "\"object\":\"list\"") && strstr(j, "\"id\":\"tiny\""));
    free(j);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_completion_fields);
    RUN(test_chat_fields);
    RUN(test_refusals);
    RUN(test_chat_prompt);
    RUN(test_response);
    RUN(test_sse);
    RUN(test_sessions);
    return rcd_test_summary();
}
