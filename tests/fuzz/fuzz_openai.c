/* libFuzzer target for the OpenAI API's request bodies (daemon/dmn_openai.h): the first input
 * byte picks the endpoint (completions, chat, session create, session fork), the rest is the
 * body. Any bytes must be refused with RCD_EINVAL and a message (and the field's name when one is
 * at fault), or parse into an internal request that packs as protobuf and whose responses (the
 * whole JSON, the SSE chunks) build; a chat body is rendered through a stub template, both
 * whole and as a session's continuation. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "daemon/dmn_openai.h"

#define FZ_REQUIRE(c)                                                                              \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* "<role>content" per message: enough to exercise the sentinel rule. */
static int render(void *arg, const cJSON *messages, bool agp, char **out, size_t *out_len,
                  char *err, size_t errlen)
{
    (void)arg;
    (void)err;
    (void)errlen;
    size_t n = 1;
    for (const cJSON *m = messages->child; m; m = m->next) {
        const cJSON *r = cJSON_GetObjectItem(m, "role"), *c = cJSON_GetObjectItem(m, "content");
        n += strlen(r->valuestring) + 2 + (cJSON_IsString(c) ? strlen(c->valuestring) : 0);
    }
    char *s = malloc(n + 16), *p = s;
    if (!s) return RCD_ENOMEM;
    for (const cJSON *m = messages->child; m; m = m->next) {
        const cJSON *r = cJSON_GetObjectItem(m, "role"), *c = cJSON_GetObjectItem(m, "content");
        p += sprintf(p, "<%s>%s", r->valuestring, cJSON_IsString(c) ? c->valuestring : "");
    }
    if (agp) p += sprintf(p, "<assistant>");
    *out = s;
    *out_len = (size_t)(p - s);
    return 0;
}

static void generate(dmn_oai_kind_t kind, const char *body, size_t len)
{
    dmn_oai_req_t r;
    char param[64] = "x", err[512] = "";
    int rc = dmn_oai_parse(kind, body, len, &r, param, sizeof(param), err, sizeof(err));
    if (rc) {
        FZ_REQUIRE(rc == RCD_EINVAL || rc == RCD_ENOMEM);
        FZ_REQUIRE(err[0]);
        FZ_REQUIRE(!param[0] || strstr(err, param));
        return;
    }
    FZ_REQUIRE(r.sampling.n_stop <= DMN_OAI_MAX_STOP);
    FZ_REQUIRE(r.top_logprobs >= 0 && r.top_logprobs <= DMN_OAI_MAX_TOP_LOGPROBS);
    FZ_REQUIRE(kind == DMN_OAI_CHAT ? r.messages != NULL : (r.prompt != NULL) != (r.ids != NULL));
    if (kind == DMN_OAI_CHAT) {
        for (int cont = 0; cont < 2; cont++) {
            char *t = NULL;
            size_t n = 0;
            if (dmn_oai_chat_prompt(r.messages, cont, "</s>", render, NULL, &t, &n, err,
                                    sizeof(err)) == 0)
                FZ_REQUIRE(t && strlen(t) <= n);
            free(t);
        }
        r.gen.text = "x";
        r.gen.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT;
    }
    size_t n = protobuf_c_message_get_packed_size(&r.gen.base);
    uint8_t *b = malloc(n + 1);
    if (b) {
        protobuf_c_message_pack(&r.gen.base, b);
        Recurd__V1__GenerateRequest *u = recurd__v1__generate_request__unpack(NULL, n, b);
        FZ_REQUIRE(u != NULL);
        recurd__v1__generate_request__free_unpacked(u, NULL);
        free(b);
    }
    dmn_oai_acc_t a;
    dmn_oai_acc_init(&a, &r, "r1", 1, "m");
    Recurd__V1__GenerateResponse m = RECURD__V1__GENERATE_RESPONSE__INIT;
    Recurd__V1__Usage us = RECURD__V1__USAGE__INIT;
    m.text = "ok";
    size_t k = 0;
    char *c = dmn_oai_sse(&a, &m, 2, false, NULL, &k);
    free(c);
    m.usage = &us;
    c = dmn_oai_sse(&a, &m, 2, true, NULL, &k);
    FZ_REQUIRE(!c || strstr(c, "data: [DONE]\n\n"));
    free(c);
    dmn_oai_acc_add(&a, &m, 2, NULL);
    c = dmn_oai_response(&a);
    free(c);
    dmn_oai_acc_free(&a);
    dmn_oai_req_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    char param[64], err[300];
    cJSON *root = NULL;
    switch (data[0] % 4) {
    case 0:
        generate(DMN_OAI_COMPLETIONS, body, len);
        break;
    case 1:
        generate(DMN_OAI_CHAT, body, len);
        break;
    case 2: {
        Recurd__V1__CreateSessionRequest q;
        int rc = dmn_oai_session_create_parse(body, len, &q, &root, param, sizeof(param), err,
                                              sizeof(err));
        FZ_REQUIRE(rc == 0 || (rc == RCD_EINVAL && err[0]) || rc == RCD_ENOMEM);
        if (!rc) {
            size_t n = protobuf_c_message_get_packed_size(&q.base);
            uint8_t *b = malloc(n + 1);
            if (b) protobuf_c_message_pack(&q.base, b);
            free(b);
        }
        dmn_oai_session_msg_free(&q.base);
        break;
    }
    default: {
        Recurd__V1__ForkSessionRequest q;
        int rc = dmn_oai_session_fork_parse(body, len, &q, &root, param, sizeof(param), err,
                                            sizeof(err));
        FZ_REQUIRE(rc == 0 || (rc == RCD_EINVAL && err[0]) || rc == RCD_ENOMEM);
        dmn_oai_session_msg_free(&q.base);
        break;
    }
    }
    cJSON_Delete(root);
    return 0;
}
