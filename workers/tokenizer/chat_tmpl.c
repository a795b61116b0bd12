/* Placeholder while the Jinja subset interpreter lands: compiles nothing, so callers can link. */
#include "workers/tokenizer/chat_tmpl.h"

#include "common/rcd_error.h"

int chat_tmpl_compile(const char *text, size_t len, chat_tmpl_t **out, char *err, size_t errlen)
{
    *out = NULL;
    return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "chat templates: not implemented yet");
}

void chat_tmpl_free(chat_tmpl_t *t)
{
    (void)t;
}

int chat_tmpl_render(const chat_tmpl_t *t, const cJSON *ctx, char **out, size_t *out_len,
                     char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "chat templates: not implemented yet");
}
