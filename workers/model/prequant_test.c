/* Pre-quantized checkpoints (GPTQ, compressed-tensors; prequant.c): every fixture of
 * tools/gen_prequant_fixtures.py (tests/golden/prequant/<case>) loads to matrices equal bit for
 * bit to its reference model (the same model with those matrices stored as the fp32 values
 * the reference dequantizers give), the CPU backend's logits equal the reference model's bit
 * for bit, the fingerprint differs from the reference's, --weights q8 is refused, and every
 * refused quantization_config names its field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/model/model_int.h"

static char gdir[RCD_PATH_MAX];

static const char *const cases[] = {
    "gptq_w4_g32_sym",    "gptq_w4_g32_asym_actorder", "gptq_w8_chan_asym",
    "gptq_v2_w4_g32_asym", "ct_pack_w4_g32_sym",       "ct_pack_w4_g32_asym",
    "ct_pack_w8_chan_asym", "ct_int_w8_chan_sym",
};
#define N_CASES (int)(sizeof cases / sizeof cases[0])

static wrk_model_t *load(const char *dir)
{
    char err[1024] = "";
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", dir, err);
    return m;
}

static void logits(const wrk_model_t *m, const char *weights, float *out, int n)
{
    wrk_backend_opts_t o = {.n_threads = 1, .n_slots = 1, .weights = weights};
    wrk_backend_t *b = NULL;
    char err[512] = "";
    CHECK_MSG(wrk_cpu_backend_create(m, &o, &b, err, sizeof err) == 0, "%s", err);
    if (!b) return;
    const int32_t toks[5] = {5, 17, 3, 99, 42};
    wrk_seq_t s = {.slot = 0, .n_tokens = 5, .tokens = toks, .n_logits = n, .logits = out};
    CHECK_MSG(wrk_step(b, &s, 1, err, sizeof err) == 0, "%s", err);
    wrk_backend_destroy(b);
}

static void test_dequant_exact(void)
{
    for (int c = 0; c < N_CASES; c++) {
        char dir[RCD_PATH_MAX], ref[RCD_PATH_MAX];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/prequant/%s", gdir, cases[c]) == 0);
        CHECK(rcd_path_fmt(ref, sizeof ref, "%s/reference", dir) == 0);
        wrk_model_t *q = load(dir), *r = load(ref);
        if (!q || !r) {
            wrk_model_free(q);
            wrk_model_free(r);
            continue;
        }
        CHECK(q->n_mats == r->n_mats);
        int n_quant = 0;
        for (int i = 0; i < q->n_mats && i < r->n_mats; i++) {
            const wrk_mat_t *a = &q->mats[i], *b = &r->mats[i];
            CHECK(a->rows == b->rows && a->cols == b->cols && a->dt == b->dt);
            n_quant += a->data != NULL && b->dt == WRK_DT_F32 && a->cols >= 32;
            const size_t n = (size_t)a->rows * a->cols * wrk_dtype_size(a->dt);
            CHECK_MSG(memcmp(a->data, b->data, n) == 0, "%s: matrix %d (%dx%d) differs",
                      cases[c], i, a->rows, a->cols);
        }
        CHECK_MSG(n_quant == 3, "%s: %d quantized matrices", cases[c], n_quant);
        CHECK(strcmp(q->info.fingerprint_hex, r->info.fingerprint_hex) != 0);
        /* served exactly: the logits of the reference model, bit for bit */
        const int V = q->info.vocab_size;
        float *lq = calloc((size_t)2 * V, sizeof *lq), *lr = calloc((size_t)2 * V, sizeof *lr);
        logits(q, NULL, lq, 2);
        logits(r, NULL, lr, 2);
        CHECK_MSG(memcmp(lq, lr, (size_t)2 * V * sizeof *lq) == 0, "%s: logits differ", cases[c]);
        free(lq);
        free(lr);
        /* no second quantization */
        wrk_backend_opts_t o = {.n_threads = 1, .n_slots = 1, .weights = "q8"};
        wrk_backend_t *b = NULL;
        char err[512] = "";
        wrk_model_t *q2 = load(dir);
        CHECK(q2 && wrk_cpu_backend_create(q2, &o, &b, err, sizeof err) == RCD_EUNSUPPORTED);
        CHECK_MSG(strstr(err, "already quantized") && strstr(err, "--weights q8"), "%s", err);
        wrk_model_free(q2);
        wrk_model_free(q);
        wrk_model_free(r);
    }
}

/* Writes case `c`'s config.json with quantization_config edited (`key` set to the JSON
 * `val` at the path "a.b.c" under it; val NULL deletes it), the weights symlinked. */
static void make_dir(char *dir, const char *c, const char *key, const char *val)
{
    strcpy(dir, "/tmp/rcd_pq_test_XXXXXX");
    if (!mkdtemp(dir)) return;
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof path, "%s/prequant/%s/config.json", gdir, c) == 0);
    char *text = rcd_test_read_file(path, NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    char k[256];
    snprintf(k, sizeof k, "%s", key);
    char *last = k;
    for (char *dot; o && (dot = strchr(last, '.'));) {
        *dot = 0;
        o = cJSON_GetObjectItemCaseSensitive(o, last);
        last = dot + 1;
    }
    CHECK_MSG(o != NULL, "no %s in %s", key, c);
    if (o) {
        cJSON_DeleteItemFromObjectCaseSensitive(o, last);
        if (val) cJSON_AddItemToObject(o, last, cJSON_Parse(val));
    }
    if (!strcmp(key, "x")) cJSON_DeleteItemFromObject(root, "quantization_config");
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    CHECK(rcd_path_fmt(path, sizeof path, "%s/config.json", dir) == 0);
    FILE *f = fopen(path, "w");
    fputs(out, f);
    fclose(f);
    free(out);
    char src[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(src, sizeof src, "%s/prequant/%s/model.safetensors", gdir, c) == 0);
    char *abs = realpath(src, NULL);
    CHECK(rcd_path_fmt(path, sizeof path, "%s/model.safetensors", dir) == 0);
    CHECK(abs && symlink(abs, path) == 0);
    free(abs);
}

static void expect(const char *c, const char *key, const char *val, int code, const char *needle)
{
    char dir[64], err[1024] = "", path[RCD_PATH_MAX];
    make_dir(dir, c, key, val);
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == code, "%s: %s = %s: got %s (%s), want %s", c, key, val ? val : "(deleted)",
              rcd_errname(rc), err, rcd_errname(code));
    CHECK_MSG(strstr(err, needle) != NULL, "message \"%s\" lacks \"%s\"", err, needle);
    CHECK(code == 0 ? m != NULL : m == NULL);
    wrk_model_free(m);
    CHECK(rcd_path_fmt(path, sizeof path, "%s/config.json", dir) == 0);
    unlink(path);
    CHECK(rcd_path_fmt(path, sizeof path, "%s/model.safetensors", dir) == 0);
    unlink(path);
    rmdir(dir);
}

static void test_refusals(void)
{
    const char *G = "gptq_w4_g32_sym", *GA = "gptq_w4_g32_asym_actorder", *P = "ct_pack_w4_g32_sym",
               *I = "ct_int_w8_chan_sym";
    const int U = RCD_EUNSUPPORTED, F = RCD_EFORMAT;
    expect(G, "quant_method", "\"awq\"", U, "quantization_config.quant_method \"awq\"");
    expect(G, "quant_method", NULL, U, "quantization_config.quant_method");
    expect(G, "bits", "3", U, "quantization_config.bits 3");
    expect(G, "bits", "\"4\"", U, "quantization_config.bits");
    expect(G, "group_size", "0", U, "quantization_config.group_size 0");
    expect(G, "group_size", "64", U, "group_size 64");
    expect(G, "sym", "\"yes\"", U, "quantization_config.sym");
    expect(G, "desc_act", "1", U, "quantization_config.desc_act");
    expect(G, "checkpoint_format", "\"marlin\"", U, "quantization_config.checkpoint_format");
    expect(G, "format", "\"bitblas\"", U, "quantization_config.format");
    expect(G, "dynamic", "{\"-:.*in_proj\": {}}", U, "quantization_config.dynamic");
    expect(GA, "desc_act", "false", 0, ""); /* g_idx is read whenever present: loads */
    expect(G, "x", NULL, F, "qweight is quantized but config.json has no quantization_config");
    expect(P, "format", "\"float-quantized\"", U, "quantization_config.format");
    expect("ct_pack_w8_chan_asym", "format", "\"int-quantized\"", F,
           "does not belong to quantization_config");
    expect(P, "quantization_status", "\"frozen\"", U, "quantization_config.quantization_status");
    expect(P, "kv_cache_scheme", "{\"num_bits\": 8}", U, "quantization_config.kv_cache_scheme");
    expect(P, "sparsity_config", "{\"format\": \"sparse-24\"}", U,
           "quantization_config.sparsity_config");
    expect(P, "config_groups.group_1", "{}", U, "quantization_config.config_groups");
    expect(P, "config_groups.group_0.targets", "[\"Embedding\"]", U,
           "quantization_config.config_groups.group_0.targets");
    expect(P, "config_groups.group_0.input_activations", "{\"num_bits\": 8}", U,
           "config_groups.group_0.input_activations");
    expect(P, "config_groups.group_0.output_activations", "{\"num_bits\": 8}", U,
           "config_groups.group_0.output_activations");
    expect(P, "config_groups.group_0.weights.num_bits", "2", U, "weights.num_bits 2");
    expect(P, "config_groups.group_0.weights.type", "\"float\"", U, "weights.type \"float\"");
    expect(P, "config_groups.group_0.weights.strategy", "\"tensor\"", U,
           "weights.strategy \"tensor\"");
    expect(P, "config_groups.group_0.weights.dynamic", "true", U, "weights.dynamic true");
    expect(P, "config_groups.group_0.weights.actorder", "\"group\"", U,
           "weights.actorder \"group\"");
    expect(P, "config_groups.group_0.weights.group_size", "-8", U, "weights.group_size -8");
    expect(P, "config_groups.group_0.weights.symmetric", "false", RCD_ENOTFOUND,
           "weight_zero_point is missing");
    expect(I, "config_groups.group_0.weights.num_bits", "4", U, "weights.num_bits 4");
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    const char *g = getenv("RCD_GOLDEN_DIR");
    CHECK(rcd_path_fmt(gdir, sizeof gdir, "%s", g ? g : "tests/golden") == 0);
    RUN(test_dequant_exact);
    RUN(test_refusals);
    return rcd_test_summary();
}
