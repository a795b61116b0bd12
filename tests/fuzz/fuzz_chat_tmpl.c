/* libFuzzer target for chat templates (workers/tokenizer/chat_tmpl.h): the input is template
 * text, compiled and, when it compiles, rendered over a fixed conversation (system, user with
 * unicode, assistant with a tool call, tool result, content parts, tools) under small limits, so
 * loops and recursion end quickly. Seeds: the fixture templates (tests/golden/chat/templates). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/tokenizer/chat_tmpl.h"

static cJSON *ctx;

static const char ctx_json[] =
    "{\"messages\":["
    "{\"role\":\"system\",\"content\":\"Be brief.\\n\"},"
    "{\"role\":\"user\",\"content\":\"Hi \\\"there\\\" \\u00e9 \\ud83d\\ude00 <|im_end|>\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"call12345\",\"type\":"
    "\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1.5,\"y\":[true,null]}}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"call12345\",\"content\":\"{\\\"ok\\\": 1}\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"},{\"type\":\"image\"}]}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\"}}}}}],"
    "\"documents\":null,\"add_generation_prompt\":true,\"bos_token\":\"<s>\","
    "\"eos_token\":\"</s>\",\"enable_thinking\":false}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ctx = cJSON_Parse(ctx_json);
    (void)argc;
    (void)argv;
    return ctx ? 0 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    chat_tmpl_t *t = NULL;
    char err[256], *out = NULL;
    size_t n = 0;
    if (chat_tmpl_compile((const char *)data, size, &t, err, sizeof(err)) != 0) return 0;
    struct chat_tmpl_opts o = {.max_output = 1 << 20,
                               .max_steps = 20000,
                               .max_depth = 16,
                               .max_memory = 32 << 20,
                               .now = 1735689600};
    if (chat_tmpl_render_opts(t, ctx, &o, &out, &n, err, sizeof(err)) == 0) {
        if (strlen(out) > n) /* NUL-terminated at n (the text may hold no NUL of its own) */
            abort();
        free(out);
    } else if (out) {
        abort(); /* errors leave *out NULL */
    }
    chat_tmpl_free(t);
    return 0;
}
