/* workers/tokenizer: chat templates — the subset of Jinja that Hugging Face chat templates
 * (tokenizer_config.json's `chat_template`) use, compiled once and rendered per request. */
#ifndef RCD_CHAT_TMPL_H
#define RCD_CHAT_TMPL_H

#include <stddef.h>

#include <cjson/cJSON.h>

typedef struct chat_tmpl chat_tmpl_t;

/* Compiles template text (len bytes, may not be NUL-terminated). 0 and *out, or RCD_EINVAL
 * (syntax; err names line and column) / RCD_EUNSUPPORTED (a construct outside the subset,
 * named) / RCD_ENOMEM. */
int chat_tmpl_compile(const char *text, size_t len, chat_tmpl_t **out, char *err, size_t errlen);
void chat_tmpl_free(chat_tmpl_t *t);

/* Renders t with the variables of ctx (a cJSON object: `messages`, `add_generation_prompt`,
 * `bos_token`, `eos_token`, and any others such as `tools`; `tools` and `documents` absent
 * are none and `add_generation_prompt` absent is false, as apply_chat_template passes them).
 * 0 and *out (malloc'd, NUL-terminated, *out_len bytes), or RCD_EINVAL (raise_exception(msg)
 * → err is msg, or a type error at render time, named) / RCD_ENOMEM / RCD_ERANGE (output or
 * loop budget exceeded). */
int chat_tmpl_render(const chat_tmpl_t *t, const cJSON *ctx, char **out, size_t *out_len,
                     char *err, size_t errlen);

/* Reads and compiles a template file (the daemon's --chat-template): as chat_tmpl_compile, with
 * err naming the file; RCD_ENOTFOUND / RCD_EIO when it cannot be read. */
int chat_tmpl_compile_file(const char *path, chat_tmpl_t **out, char *err, size_t errlen);

/* The template served when neither --chat-template nor the model's tokenizer_config.json
 * gives one: ChatML (<|im_start|>ROLE\nCONTENT<|im_end|>\n per message; list content: its
 * "text" parts joined; add_generation_prompt: <|im_start|>assistant\n). */
#define CHAT_TMPL_DEFAULT                                                                          \
    "{%- for message in messages -%}\n"                                                            \
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"                                           \
    "{%- if message['content'] is string -%}\n"                                                    \
    "{{- message['content'] -}}\n"                                                                 \
    "{%- elif message['content'] is iterable -%}\n"                                                \
    "{%- for part in message['content'] if part['type'] == 'text' -%}\n"                           \
    "{{- part['text'] -}}\n"                                                                       \
    "{%- endfor -%}\n"                                                                             \
    "{%- endif -%}\n"                                                                              \
    "{{- '<|im_end|>\\n' -}}\n"                                                                    \
    "{%- endfor -%}\n"                                                                             \
    "{%- if add_generation_prompt -%}\n"                                                           \
    "{{- '<|im_start|>assistant\\n' -}}\n"                                                         \
    "{%- endif -%}\n"

/* Render limits (each 0 → the default below) and the clock strftime_now() reads. */
#define CHAT_TMPL_MAX_SOURCE (1 << 20)    /* template text bytes (compile: RCD_ERANGE) */
#define CHAT_TMPL_MAX_OUTPUT (16u << 20)  /* rendered bytes, also any string built */
#define CHAT_TMPL_MAX_STEPS 2000000u      /* statements run + loop iterations + calls */
#define CHAT_TMPL_MAX_DEPTH 64            /* nested macro calls */
#define CHAT_TMPL_MAX_MEMORY (256u << 20) /* render-time values (arena bytes) */
struct chat_tmpl_opts {
    size_t max_output;
    unsigned long long max_steps;
    int max_depth;
    size_t max_memory;
    long long now; /* Unix seconds for strftime_now (local time); 0: time(NULL) */
};

/* chat_tmpl_render with explicit limits (opts may be NULL); a limit hit is RCD_ERANGE. */
int chat_tmpl_render_opts(const chat_tmpl_t *t, const cJSON *ctx, const struct chat_tmpl_opts *opts,
                          char **out, size_t *out_len, char *err, size_t errlen);

#endif
