/* Chat-template cost (single thread): compile time of each fixture template and render time
 * over a conversation of N turns (system + N user/assistant pairs, ~60-byte messages), best of
 * 5 runs of a timed loop, with transformers' variables (tools/documents null).
 *
 *   chat_tmpl_bench [TEMPLATES_DIR] [--turns 10]
 * TEMPLATES_DIR: tests/golden/chat/templates (every *.jinja in it). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "workers/tokenizer/chat_tmpl.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = len >= 0 ? malloc((size_t)len + 1) : NULL;
    *n = b ? fread(b, 1, (size_t)len, f) : 0;
    if (b) b[*n] = 0;
    fclose(f);
    return b;
}

static cJSON *conversation(int turns)
{
    cJSON *ctx = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(ctx, "messages");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "system");
    cJSON_AddStringToObject(m, "content", "You are a helpful assistant. Answer briefly.");
    cJSON_AddItemToArray(msgs, m);
    for (int i = 0; i < turns; i++) {
        for (int r = 0; r < 2; r++) {
            m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", r ? "assistant" : "user");
            cJSON_AddStringToObject(m, "content",
                                    r ? "Here is a short answer, with \"quotes\" and é."
                                      : "Please explain this in one or two sentences, thanks.");
            cJSON_AddItemToArray(msgs, m);
        }
    }
    /* the last turn is the user's */
    cJSON_DeleteItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
    cJSON_AddNullToObject(ctx, "tools");
    cJSON_AddNullToObject(ctx, "documents");
    cJSON_AddTrueToObject(ctx, "add_generation_prompt");
    cJSON_AddStringToObject(ctx, "bos_token", "<s>");
    cJSON_AddStringToObject(ctx, "eos_token", "</s>");
    return ctx;
}

int main(int argc, char **argv)
{
    const char *dir = "tests/golden/chat/templates";
    int turns = 10;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--turns") == 0 && i + 1 < argc)
            turns = atoi(argv[++i]);
        else
            dir = argv[i];
    }
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "chat_tmpl_bench: cannot open %s\n", dir);
        return 1;
    }
    cJSON *ctx = conversation(turns);
    printf("%-32s %10s %12s %10s %12s\n", "template", "bytes", "compile us", "out bytes",
           "render us");
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        size_t nl = strlen(e->d_name);
        if (nl < 7 || strcmp(e->d_name + nl - 6, ".jinja") != 0) continue;
        char path[4096], err[512];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        size_t n = 0;
        char *src = slurp(path, &n);
        if (!src) continue;
        double best_c = 1e9, best_r = 1e9;
        size_t out_n = 0;
        for (int run = 0; run < 5; run++) {
            int iters = 200;
            chat_tmpl_t *t = NULL;
            double t0 = now_s();
            for (int k = 0; k < iters; k++) {
                chat_tmpl_free(t);
                t = NULL;
                if (chat_tmpl_compile(src, n, &t, err, sizeof(err))) {
                    fprintf(stderr, "%s: %s\n", path, err);
                    rc = 1;
                    break;
                }
            }
            double c = (now_s() - t0) / iters;
            if (!t) break;
            t0 = now_s();
            for (int k = 0; k < iters; k++) {
                char *out = NULL;
                if (chat_tmpl_render(t, ctx, &out, &out_n, err, sizeof(err))) {
                    fprintf(stderr, "%s: %s\n", path, err);
                    rc = 1;
                    break;
                }
                free(out);
            }
            double r = (now_s() - t0) / iters;
            chat_tmpl_free(t);
            best_c = c < best_c ? c : best_c;
            best_r = r < best_r ? r : best_r;
        }
        printf("%-32s %10zu %12.1f %10zu %12.1f\n", e->d_name, n, best_c * 1e6, out_n,
               best_r * 1e6);
        free(src);
    }
    closedir(d);
    cJSON_Delete(ctx);
    return rc;
}
