/* Model loading refusals: a checkpoint whose config.json disagrees with its tensors, or
 * that asks for what recurd does not serve, is a clear error naming the field or tensor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/wrk.h"

static char base[RCD_PATH_MAX];

/* A temp checkpoint dir: the tiny golden weights (symlinked) with config.json edited by
 * replacing `from` with `to` (or written verbatim when from is NULL). */
static void make_dir(char *dir, const char *from, const char *to, bool weights)
{
    strcpy(dir, "/tmp/rcd_model_test_XXXXXX");
    if (!mkdtemp(dir)) return;
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_join(path, sizeof(path), base, "config.json") == 0);
    char *cfg = rcd_test_read_file(path, NULL);
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/config.json", dir) == 0);
    FILE *f = fopen(path, "w");
    if (!from) {
        fputs(to, f);
    } else {
        char *p = strstr(cfg, from);
        CHECK_MSG(p != NULL, "fixture config lacks %s", from);
        if (p) {
            fwrite(cfg, 1, (size_t)(p - cfg), f);
            fputs(to, f);
            fputs(p + strlen(from), f);
        }
    }
    fclose(f);
    free(cfg);
    if (weights) {
        char src[RCD_PATH_MAX];
        CHECK(rcd_path_fmt(src, sizeof(src), "%s/model.safetensors", base) == 0);
        char *abs = realpath(src, NULL);
        CHECK(rcd_path_fmt(path, sizeof(path), "%s/model.safetensors", dir) == 0);
        CHECK(abs && symlink(abs, path) == 0);
        free(abs);
    }
}

static void rm_dir(const char *dir)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/config.json", dir) == 0);
    unlink(path);
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/model.safetensors", dir) == 0);
    unlink(path);
    rmdir(dir);
}

static void expect(const char *from, const char *to, bool weights, int code, const char *needle)
{
    char dir[64], err[1024] = "";
    make_dir(dir, from, to, weights);
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == code, "edit %s -> %s: got %s (%s), want %s", from ? from : "(config)", to,
              rcd_errname(rc), err, rcd_errname(code));
    CHECK_MSG(strstr(err, needle) != NULL, "message \"%s\" lacks \"%s\"", err, needle);
    CHECK(m == NULL);
    rm_dir(dir);
}

static void test_refusals(void)
{
    /* the unedited copy loads */
    char dir[64], err[1024];
    make_dir(dir, "\"model_type\"", "\"model_type\"", true);
    wrk_model_t *m = NULL;
    CHECK_MSG(wrk_model_load(dir, &m, err, sizeof err) == 0, "%s", err);
    wrk_model_free(m);
    rm_dir(dir);

    expect("\"model_type\": \"mamba\"", "\"model_type\": \"mamba9\"", true, RCD_EUNSUPPORTED,
           "mamba9");
    expect("\"model_type\": \"mamba\"", "\"model_typo\": \"mamba\"", true, RCD_EUNSUPPORTED,
           "model_type missing");
    expect("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", true, RCD_EUNSUPPORTED,
           "hidden_act");
    expect("\"hidden_size\": 32", "\"hidden_size\": 33", true, RCD_EFORMAT,
           "backbone.embeddings.weight has shape [256,32]");
    expect("\"state_size\": 8", "\"state_size\": 9", true, RCD_EFORMAT,
           "mixer.x_proj.weight has shape [20,64], config.json implies [22,64]");
    expect("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3", true, RCD_ENOTFOUND,
           "backbone.layers.2.norm.weight is missing");
    expect("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1", true, RCD_EFORMAT,
           "unexpected tensor backbone.layers.1.");
    expect("\"use_bias\": true", "\"use_bias\": false", true, RCD_EFORMAT,
           "unexpected tensor backbone.layers.0.mixer.in_proj.bias");
    expect("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false", true, RCD_ENOTFOUND,
           "lm_head.weight is missing");
    expect("\"intermediate_size\": 64", "\"intermediate_size\": 262144", true, RCD_EFORMAT,
           "larger model than the checkpoint holds");
    expect("\"vocab_size\": 256", "\"vocab_size\": -3", true, RCD_EFORMAT, "vocab_size");
    expect("\"layer_norm_epsilon\": 1e-05", "\"layer_norm_epsilon\": \"small\"", true,
           RCD_EFORMAT, "layer_norm_epsilon");
    expect("\"conv_kernel\": 4", "\"conv_kernel\": 4.5", true, RCD_EFORMAT, "conv_kernel");
    expect(NULL, "{\"model_type\": \"mamba\",", true, RCD_EFORMAT, "not a JSON object");
    expect(NULL, "[1, 2, 3]", true, RCD_EFORMAT, "not a JSON object");
    expect("\"model_type\"", "\"model_type\"", false, RCD_ENOTFOUND, "");
    CHECK(wrk_model_load("/nonexistent/dir", &m, err, sizeof err) == RCD_ENOTFOUND);
    CHECK(strstr(err, "/nonexistent/dir/config.json") != NULL);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    const char *g = getenv("RCD_GOLDEN_DIR");
    CHECK(rcd_path_fmt(base, sizeof(base), "%s/mamba/tiny_bias_tied", g ? g : "tests/golden") == 0);
    RUN(test_refusals);
    return rcd_test_summary();
}
