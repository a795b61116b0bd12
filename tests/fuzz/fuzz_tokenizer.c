/* libFuzzer target for the tokenizer's parsers of outside bytes: tokenizer.json (tok_load),
 * prompts (tok_encode, any bytes), and ids (tok_decode and the stream, any values).
 * Built by the fuzz preset (tests/fuzz); run from the repository root, or set RCD_GOLDEN_DIR.
 * The first input byte picks the target. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rcd_path.h"
#include "workers/tokenizer/tok.h"

static tok_t *toks[8];
static size_t n_toks;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *kinds[] = {
        "neox",      "bytelevel_split", "gemma",       "llama",
        "metaspace", "feat-affixes",    "feat-splits", "feat-metaspace-always"};
    const char *env = getenv("RCD_GOLDEN_DIR");
    char path[RCD_PATH_MAX], err[256];
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (rcd_path_fmt(path, sizeof(path), "%s/tokenizer/%s", env && *env ? env : "tests/golden",
                         kinds[i]))
            snprintf(err, sizeof(err), "RCD_GOLDEN_DIR is longer than %d bytes", RCD_PATH_MAX - 1);
        else if (tok_load(path, NULL, &toks[n_toks], err, sizeof(err)) == 0)
            n_toks++;
        else
            fprintf(stderr, "tok_fuzz: %s\n", err);
    }
    (void)argc;
    (void)argv;
    return 0;
}

static void fuzz_load(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/tok_fuzz_XXXXXX", err[256];
    int fd = mkstemp(path);
    if (fd < 0) return;
    if (write(fd, data, size) == (ssize_t)size) {
        tok_t *t = NULL;
        if (tok_load(path, NULL, &t, err, sizeof(err)) == 0) {
            tok_ids_t ids = {0};
            tok_text_t text = {0};
            static const char probe[] = "Hello, world! 123 \xe6\x97\xa5\xe6\x9c\xac <s>\n\t x";
            if (tok_encode(t, probe, sizeof(probe) - 1, TOK_ADD_SPECIAL, &ids, err, sizeof(err)) ==
                0)
                tok_decode(t, ids.v, ids.n, 0, &text, err, sizeof(err));
            tok_ids_free(&ids);
            tok_text_free(&text);
            tok_free(t);
        }
    }
    close(fd);
    unlink(path);
}

static void fuzz_ids(const tok_t *t, const int32_t *v, size_t n, int flags)
{
    char err[256];
    tok_text_t text = {0};
    tok_decode(t, v, n, flags, &text, err, sizeof(err));
    tok_stream_t *s = NULL;
    if (tok_stream_new(t, flags, &s, err, sizeof(err)) == 0) {
        const char *d;
        size_t dl;
        for (size_t i = 0; i < n; i++)
            tok_stream_push(s, v[i], &d, &dl, err, sizeof(err));
        tok_stream_flush(s, &d, &dl, err, sizeof(err));
        tok_stream_free(s);
    }
    tok_text_free(&text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (mode % 3 == 2) {
        fuzz_load(data, size);
        return 0;
    }
    if (!n_toks) return 0;
    const tok_t *t = toks[(mode >> 2) % n_toks];
    if (mode % 3 == 0) {
        char err[256];
        tok_ids_t ids = {0};
        int flags = TOK_UTF8_REPLACE | ((mode & 0x20) ? TOK_ADD_SPECIAL : 0) |
                    ((mode & 0x40) ? TOK_SPLIT_SPECIAL : 0);
        if (tok_encode(t, (const char *)data, size, flags, &ids, err, sizeof(err)) == 0)
            fuzz_ids(t, ids.v, ids.n, 0);
        tok_ids_free(&ids);
        return 0;
    }
    /* raw ids: small values mostly, so that they land in the vocabulary */
    size_t n = size / 2;
    int32_t *v = malloc((n ? n : 1) * sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = (int32_t)(data[2 * i] | (data[2 * i + 1] << 8)) - 64;
    fuzz_ids(t, v, n, (mode & 0x80) ? TOK_SKIP_SPECIAL : 0);
    free(v);
    return 0;
}
