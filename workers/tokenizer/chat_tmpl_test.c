/* Unit tests of the chat-template interpreter: every fixture of tests/golden/chat/cases.json
 * (real templates of Granite 4.0, Qwen3, Gemma 3, Mistral v0.3 and a ChatML model, plus the
 * language features, rendered by transformers — tools/make_chat_fixtures.py) byte for byte;
 * errors (raise_exception's message, syntax positions, undefined values, unsupported
 * constructs); the render limits; the built-in default; and strftime_now's injected clock. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/rcd_error.h"
#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/tokenizer/chat_tmpl.h"

static char golden[RCD_PATH_MAX];

static int render_str(const char *tmpl, const char *ctx_json, const struct chat_tmpl_opts *o,
                      char **out, char *err, size_t errlen)
{
    chat_tmpl_t *t = NULL;
    size_t n = 0;
    *out = NULL;
    int rc = chat_tmpl_compile(tmpl, strlen(tmpl), &t, err, errlen);
    if (rc) return rc;
    cJSON *ctx = cJSON_Parse(ctx_json ? ctx_json : "{}");
    if (!ctx) {
        chat_tmpl_free(t);
        return RCD_EFORMAT;
    }
    rc = chat_tmpl_render_opts(t, ctx, o, out, &n, err, errlen);
    if (rc == 0 && strlen(*out) != n) rc = RCD_EINTERNAL;
    cJSON_Delete(ctx);
    chat_tmpl_free(t);
    return rc;
}

/* Renders tmpl with ctx and checks the output. */
static void expect(const char *tmpl, const char *ctx, const char *want)
{
    char *out = NULL, err[512] = "";
    int rc = render_str(tmpl, ctx, NULL, &out, err, sizeof(err));
    CHECK_MSG(rc == 0, "%s: %s", tmpl, err);
    CHECK_MSG(rc != 0 || strcmp(out, want) == 0, "%s: got [%s] want [%s]", tmpl, out, want);
    free(out);
}

/* Renders (or compiles) tmpl and checks the error code and that err contains `has`. */
static void expect_err(const char *tmpl, const char *ctx, int want_rc, const char *has)
{
    char *out = NULL, err[512] = "";
    int rc = render_str(tmpl, ctx, NULL, &out, err, sizeof(err));
    CHECK_MSG(rc == want_rc, "%s: rc %d (%s) want %d", tmpl, rc, err, want_rc);
    CHECK_MSG(!has || strstr(err, has), "%s: err [%s] lacks [%s]", tmpl, err, has);
    CHECK(out == NULL);
    free(out);
}

static void test_fixtures(void)
{
    char path[RCD_PATH_MAX];
    size_t len = 0;
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/cases.json", golden) == 0);
    char *text = rcd_test_read_file(path, &len);
    CHECK_MSG(text, "cannot read %s", path);
    if (!text) return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    CHECK(root);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    int n = 0, n_err = 0;
    const char *templates_seen[16];
    int n_templates = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next) {
        const cJSON *tname = cJSON_GetObjectItemCaseSensitive(c, "template");
        const cJSON *ttext = cJSON_GetObjectItemCaseSensitive(c, "template_text");
        const cJSON *conv = cJSON_GetObjectItemCaseSensitive(c, "conversation");
        const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(c, "context");
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "output");
        const cJSON *werr = cJSON_GetObjectItemCaseSensitive(c, "error");
        char *src = NULL, err[512] = "", label[256];
        size_t slen = 0;
        snprintf(label, sizeof(label), "%s/%s (agp %d)",
                 cJSON_IsString(tname) ? tname->valuestring : "feature", conv->valuestring,
                 cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")));
        if (cJSON_IsString(tname)) {
            CHECK(rcd_path_fmt(path, sizeof(path), "%s/templates/%s.jinja", golden,
                               tname->valuestring) == 0);
            src = rcd_test_read_file(path, &slen);
            CHECK_MSG(src, "cannot read %s", path);
            int seen = 0;
            for (int i = 0; i < n_templates; i++)
                seen |= strcmp(templates_seen[i], tname->valuestring) == 0;
            if (!seen && n_templates < 16) templates_seen[n_templates++] = tname->valuestring;
        } else if (cJSON_IsString(ttext)) {
            src = strdup(ttext->valuestring);
            slen = strlen(src);
        }
        if (!src) continue;
        chat_tmpl_t *t = NULL;
        char *out = NULL;
        size_t on = 0;
        int rc = chat_tmpl_compile(src, slen, &t, err, sizeof(err));
        if (rc == 0) rc = chat_tmpl_render(t, ctx, &out, &on, err, sizeof(err));
        if (werr) {
            n_err++;
            const char *type = cJSON_GetObjectItemCaseSensitive(werr, "type")->valuestring;
            const char *msg = cJSON_GetObjectItemCaseSensitive(werr, "message")->valuestring;
            CHECK_MSG(rc != 0, "%s: rendered [%s], transformers failed: %s", label, out, msg);
            /* raise_exception: the message exactly; other errors: one of ours, named */
            if (strcmp(type, "TemplateError") == 0)
                CHECK_MSG(rc == RCD_EINVAL && strcmp(err, msg) == 0, "%s: err [%s] want [%s]",
                          label, err, msg);
            else if (strcmp(type, "UndefinedError") == 0)
                CHECK_MSG(strstr(err, msg) != NULL, "%s: err [%s] want [%s]", label, err, msg);
            else
                CHECK_MSG(strstr(err, "line ") != NULL, "%s: err [%s] names no line", label, err);
        } else {
            CHECK_MSG(rc == 0, "%s: %s", label, err);
            CHECK_MSG(rc != 0 || (on == strlen(want->valuestring) &&
                                  memcmp(out, want->valuestring, on) == 0),
                      "%s:\n--- got ---\n%s\n--- want ---\n%s", label, out, want->valuestring);
        }
        n++;
        free(out);
        chat_tmpl_free(t);
        free(src);
    }
    CHECK_MSG(n >= 120, "only %d fixture cases", n);
    CHECK(n_err >= 10);
    static const char *const must[] = {
        "granite-4.0-h-micro",   "qwen3",         "gemma-3-it", "mistral-7b-instruct-v0.3",
        "openhermes-2.5-chatml", "recurd-default"};
    for (size_t i = 0; i < sizeof(must) / sizeof(must[0]); i++) {
        int seen = 0;
        for (int j = 0; j < n_templates; j++)
            seen |= strcmp(templates_seen[j], must[i]) == 0;
        CHECK_MSG(seen, "no fixture for %s", must[i]);
    }
    cJSON_Delete(root);
    free(text);
}

/* The built-in template is the committed fixture that transformers rendered. */
static void test_default_template(void)
{
    char path[RCD_PATH_MAX];
    size_t len = 0;
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/templates/recurd-default.jinja", golden) == 0);
    char *text = rcd_test_read_file(path, &len);
    CHECK(text && len == strlen(CHAT_TMPL_DEFAULT) && memcmp(text, CHAT_TMPL_DEFAULT, len) == 0);
    free(text);
    expect(CHAT_TMPL_DEFAULT,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\","
           "\"content\":null,\"tool_calls\":[]}],\"add_generation_prompt\":true}",
           "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
           "<|im_start|>assistant\n");
}

static void test_errors(void)
{
    /* raise_exception: err is the message alone */
    expect_err("{{ raise_exception('Roles must alternate') }}", NULL, RCD_EINVAL,
               "Roles must alternate");
    {
        char *out = NULL, err[128];
        CHECK(render_str("x{{ raise_exception('m' ~ 1) }}", NULL, NULL, &out, err, sizeof(err)) ==
              RCD_EINVAL);
        CHECK(strcmp(err, "m1") == 0);
    }
    /* syntax errors name line:column */
    expect_err("{% if x %}\n{{ 1 + }}\n", NULL, RCD_EINVAL, "line 2:8");
    expect_err("a\n  {% for x in y %}", NULL, RCD_EINVAL, "missing 'endfor'");
    expect_err("{% if x %}{% endfor %}", NULL, RCD_EINVAL, "line 1:");
    expect_err("{{ 'unterminated }}", NULL, RCD_EINVAL, "unterminated string");
    expect_err("{{ x", NULL, RCD_EINVAL, "unclosed");
    expect_err("{# never closed", NULL, RCD_EINVAL, "unclosed comment");
    expect_err("{{ 1 + * 2 }}", NULL, RCD_EINVAL, "line 1:8");
    expect_err("{% endif %}", NULL, RCD_EINVAL, "endif");
    /* break/continue need a loop around them (a macro's body is not inside its caller's) */
    expect_err("{% if 1 %}{% break %}{% endif %}", NULL, RCD_EINVAL, "'break' outside a for loop");
    expect_err("{% for x in [1] %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}", NULL,
               RCD_EINVAL, "'continue' outside");
    expect("{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% else %}E"
           "{% endfor %}",
           NULL, "1");
    /* what apply_chat_template always passes, when the caller leaves it out */
    expect("{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}", NULL,
           "TrueTrueFalse");
    expect("{{ tools | length }}{{ add_generation_prompt }}",
           "{\"tools\":[1],\"add_generation_prompt\":true}", "1True");
    /* a block set's body has its own scope */
    expect("{% set y = 1 %}{% set b %}{% set y = 2 %}{{ y }}{% endset %}{{ y }}{{ b }}", NULL,
           "12");
    /* outside the subset: named */
    expect_err("{{ x | wordwrap }}", NULL, RCD_EUNSUPPORTED, "wordwrap");
    expect_err("{% if x is escaped %}{% endif %}", NULL, RCD_EUNSUPPORTED, "escaped");
    expect_err("{% include 'x' %}", NULL, RCD_EUNSUPPORTED, "include");
    expect_err("{% for x in y recursive %}{% endfor %}", NULL, RCD_EUNSUPPORTED, "recursive");
    expect_err("{{ f(*args) }}", NULL, RCD_EUNSUPPORTED, "*args");
    /* undefined (jinja2's default Undefined): prints empty, iterates empty, is falsy;
     * an attribute of it, arithmetic on it, calling it: errors naming it */
    expect("[{{ nope }}]{% for x in nope %}x{% endfor %}{{ nope is defined }}{{ not nope }}", NULL,
           "[]FalseTrue");
    expect_err("{{ nope.attr }}", NULL, RCD_EINVAL, "'nope' is undefined");
    expect_err("{{ nope + 1 }}", NULL, RCD_EINVAL, "line 1:9: 'nope' is undefined");
    expect_err("{{ nope() }}", NULL, RCD_EINVAL, "'nope' is undefined");
    expect_err("{{ m.a.b }}", "{\"m\":{}}", RCD_EINVAL, "'dict object' has no attribute 'a'");
    expect_err("{{ nope | tojson }}", NULL, RCD_EINVAL, "not JSON serializable");
    /* type errors at render time name the place */
    expect_err("\n  {{ 'a' + 1 }}", NULL, RCD_EINVAL, "line 2:10: unsupported operand types");
    expect_err("{{ 1 // 0 }}", NULL, RCD_EINVAL, "division");
    expect_err("{{ 9223372036854775807 + 1 }}", NULL, RCD_ERANGE, "overflow");
    expect_err("{% set x = 1 %}{% set x.y = 2 %}", NULL, RCD_EINVAL, "namespace");
    expect_err("{{ [1].append(2) }}", NULL, RCD_EINVAL, "unsafe");
    expect_err("{{ namespace(_x=1) }}", NULL, RCD_EINVAL, "'_'");
    expect_err("{% macro f(a) %}{% endmacro %}{{ f(1, 2) }}", NULL, RCD_EINVAL, "takes 1");
    /* bad arguments to the API */
    {
        chat_tmpl_t *t = NULL;
        char err[128], *out = NULL;
        size_t n = 0;
        CHECK(chat_tmpl_compile("a\0b", 3, &t, err, sizeof(err)) == RCD_EINVAL && !t);
        CHECK(chat_tmpl_compile("", 0, &t, err, sizeof(err)) == 0 && t);
        cJSON *arr = cJSON_CreateArray();
        CHECK(chat_tmpl_render(t, arr, &out, &n, err, sizeof(err)) == RCD_EINVAL && !out);
        CHECK(chat_tmpl_render(t, NULL, &out, &n, err, sizeof(err)) == 0 && out && n == 0);
        free(out);
        cJSON_Delete(arr);
        chat_tmpl_free(t);
        chat_tmpl_free(NULL);
        CHECK(chat_tmpl_compile_file("/nonexistent/x.jinja", &t, err, sizeof(err)) ==
              RCD_ENOTFOUND);
        CHECK(strstr(err, "/nonexistent/x.jinja") != NULL);
    }
}

static void test_limits(void)
{
    struct chat_tmpl_opts o = {.max_output = 1000};
    char *out = NULL, err[256];
    /* output budget */
    CHECK(render_str("{% for i in range(200) %}0123456789{% endfor %}", NULL, &o, &out, err,
                     sizeof(err)) == RCD_ERANGE);
    CHECK(out == NULL && strstr(err, "budget"));
    CHECK(render_str("{{ 'x' * 5000 }}", NULL, &o, &out, err, sizeof(err)) == RCD_ERANGE);
    CHECK(render_str("{% for i in range(50) %}0123456789{% endfor %}", NULL, &o, &out, err,
                     sizeof(err)) == 0);
    free(out);
    /* step budget: loops that never end in practice */
    struct chat_tmpl_opts s = {.max_steps = 10000};
    CHECK(render_str("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
                     NULL, &s, &out, err, sizeof(err)) == RCD_ERANGE);
    CHECK(strstr(err, "step budget") != NULL);
    CHECK(render_str("{{ range(100000000) | length }}", NULL, NULL, &out, err, sizeof(err)) ==
          RCD_ERANGE);
    /* recursion depth */
    CHECK(render_str("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &out,
                     err, sizeof(err)) == RCD_ERANGE);
    CHECK(strstr(err, "nested deeper") != NULL);
    /* memory budget: strings doubling */
    struct chat_tmpl_opts m = {.max_memory = 1 << 20, .max_output = 64 << 20};
    CHECK(render_str("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ "
                     "ns.s %}{% endfor %}{{ ns.s | length }}",
                     NULL, &m, &out, err, sizeof(err)) == RCD_ERANGE);
    CHECK(strstr(err, "memory budget") != NULL);
    /* parse nesting */
    char deep[4096];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof(deep) - k, "{{ ");
    for (int i = 0; i < 1000; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 1000; i++)
        deep[k++] = ')';
    snprintf(deep + k, sizeof(deep) - k, " }}");
    CHECK(render_str(deep, NULL, NULL, &out, err, sizeof(err)) == RCD_ERANGE);
    k = 0;
    for (int i = 0; i < 300; i++)
        k += (size_t)snprintf(deep + k, sizeof(deep) - k, "{%% if 1 %%}");
    CHECK(render_str(deep, NULL, NULL, &out, err, sizeof(err)) == RCD_ERANGE);
    /* source size */
    chat_tmpl_t *t = NULL;
    char *big = calloc(1, CHAT_TMPL_MAX_SOURCE + 2);
    memset(big, 'a', CHAT_TMPL_MAX_SOURCE + 1);
    CHECK(chat_tmpl_compile(big, CHAT_TMPL_MAX_SOURCE + 1, &t, err, sizeof(err)) == RCD_ERANGE);
    free(big);
    /* a deep JSON context and a long conversation stay within the defaults */
    cJSON *ctx = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(ctx, "messages");
    for (int i = 0; i < 5000; i++) {
        cJSON *mm = cJSON_CreateObject();
        cJSON_AddStringToObject(mm, "role", i % 2 ? "assistant" : "user");
        cJSON_AddStringToObject(mm, "content", "some words");
        cJSON_AddItemToArray(msgs, mm);
    }
    CHECK(chat_tmpl_compile(CHAT_TMPL_DEFAULT, strlen(CHAT_TMPL_DEFAULT), &t, err, sizeof(err)) ==
          0);
    size_t n = 0;
    CHECK(chat_tmpl_render(t, ctx, &out, &n, err, sizeof(err)) == 0 && n > 5000 * 20);
    free(out);
    chat_tmpl_free(t);
    cJSON_Delete(ctx);
}

static void test_strftime_now(void)
{
    setenv("TZ", "UTC", 1);
    struct chat_tmpl_opts o = {.now = 1735689600}; /* 2025-01-01T00:00:00Z */
    char *out = NULL, err[256];
    CHECK(render_str("Today: {{ strftime_now('%d %B %Y') }}.", NULL, &o, &out, err, sizeof(err)) ==
          0);
    CHECK(out && strcmp(out, "Today: 01 January 2025.") == 0);
    free(out);
}

/* The same compiled template renders from several threads (the daemon shares one). */
static void test_reuse(void)
{
    chat_tmpl_t *t = NULL;
    char err[256], *a = NULL, *b = NULL;
    size_t an = 0, bn = 0;
    CHECK(chat_tmpl_compile(CHAT_TMPL_DEFAULT, strlen(CHAT_TMPL_DEFAULT), &t, err, sizeof(err)) ==
          0);
    cJSON *ctx = cJSON_Parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    CHECK(chat_tmpl_render(t, ctx, &a, &an, err, sizeof(err)) == 0);
    CHECK(chat_tmpl_render(t, ctx, &b, &bn, err, sizeof(err)) == 0);
    CHECK(an == bn && memcmp(a, b, an) == 0);
    free(a);
    free(b);
    cJSON_Delete(ctx);
    chat_tmpl_free(t);
}

/* One compiled template rendered by several threads at once gives every thread the same text
 * (a compiled template is read-only; each render has its own arena). */
struct thr {
    const chat_tmpl_t *t;
    const cJSON *ctx;
    const char *want;
    int bad;
};

static void *render_loop(void *arg)
{
    struct thr *a = arg;
    for (int i = 0; i < 200; i++) {
        char *out = NULL, err[128];
        size_t n = 0;
        if (chat_tmpl_render(a->t, a->ctx, &out, &n, err, sizeof(err)) != 0 ||
            strcmp(out, a->want) != 0)
            a->bad++;
        free(out);
    }
    return NULL;
}

static void test_threads(void)
{
    char path[RCD_PATH_MAX], err[256], *want = NULL;
    size_t len = 0, n = 0;
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/templates/qwen3.jinja", golden) == 0);
    char *src = rcd_test_read_file(path, &len);
    chat_tmpl_t *t = NULL;
    CHECK(src && chat_tmpl_compile(src, len, &t, err, sizeof(err)) == 0);
    cJSON *ctx = cJSON_Parse("{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
                             "{\"role\":\"user\",\"content\":\"q \u00e9\"},{\"role\":"
                             "\"assistant\",\"content\":\"<think>x</think>a\"},{\"role\":"
                             "\"user\",\"content\":\"again\"}],\"add_generation_prompt\":true}");
    CHECK(t && ctx && chat_tmpl_render(t, ctx, &want, &n, err, sizeof(err)) == 0);
    struct thr a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct thr){t, ctx, want, 0};
        CHECK(pthread_create(&th[i], NULL, render_loop, &a[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(a[i].bad == 0);
    }
    free(want);
    cJSON_Delete(ctx);
    chat_tmpl_free(t);
    free(src);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    const char *env = getenv("RCD_GOLDEN_DIR");
    CHECK(rcd_path_fmt(golden, sizeof(golden), "%s/chat", env && *env ? env : "tests/golden") == 0);
    RUN(test_fixtures);
    RUN(test_default_template);
    RUN(test_errors);
    RUN(test_limits);
    RUN(test_strftime_now);
    RUN(test_reuse);
    RUN(test_threads);
    return rcd_test_summary();
}
