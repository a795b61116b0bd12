/* Pre-quantized checkpoints (GPTQ, compressed-tensors; prequant.c): every fixture of
 * tools/gen_prequant_fixtures.py (tests/golden/prequant/<case>) loads to matrices equal bit for
 * bit to its reference model (the same model with those matrices stored as the fp32 values
 * the reference dequantizers give), the qg pack (kernels_qg.h) dequantizes to the same values
 * and its matmul is exact on every ISA, batch invariant and AVX2 = AVX-512 bit for bit, the
 * CPU backend's logits equal the reference model's within 1e-5, the fingerprint differs from
 * the reference's, --weights q8 is refused, and every refused quantization_config names its
 * field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <math.h>

#include "common/rcd_path.h"
#include "tests/support/rcd_test.h"
#include "workers/cpu/cpu_int.h"
#include "workers/cpu/kernels_qg.h"
#include "workers/model/model_int.h"

static char gdir[RCD_PATH_MAX];

static const char *const cases[] = {
    "gptq_w4_g32_sym",      "gptq_w4_g32_asym_actorder", "gptq_w8_chan_asym",
    "gptq_v2_w4_g32_asym",  "ct_pack_w4_g32_sym",        "ct_pack_w4_g32_asym",
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

static void logits_tp(const wrk_model_t *m, const char *weights, int tp, float *out, int n)
{
    wrk_backend_opts_t o = {.n_threads = tp, .n_slots = 1, .weights = weights, .tp = tp};
    wrk_backend_t *b = NULL;
    char err[512] = "";
    CHECK_MSG(wrk_cpu_backend_create(m, &o, &b, err, sizeof err) == 0, "%s", err);
    if (!b) return;
    const int32_t toks[5] = {5, 17, 3, 99, 42};
    wrk_seq_t s = {.slot = 0, .n_tokens = 5, .tokens = toks, .n_logits = n, .logits = out};
    CHECK_MSG(wrk_step(b, &s, 1, err, sizeof err) == 0, "%s", err);
    wrk_backend_destroy(b);
}

static void logits(const wrk_model_t *m, const char *weights, float *out, int n)
{
    logits_tp(m, weights, 1, out, n);
}

/* The fp32 copies: unfilled after load, filled by the first hold (the sum of the quantized
 * matrices' fp32 bytes) and kept through a nested hold, freed by the last release. */
static size_t check_holds(const wrk_model_t *m, const char *name)
{
    size_t want = 0;
    char err[256] = "";
    for (int i = 0; i < m->n_mats; i++) {
        const wrk_pq_src_t *src = wrk__pq_source(m, m->mats[i].data);
        if (src) want += (size_t)src->rows * (size_t)src->cols * sizeof(float);
    }
    CHECK_MSG(want > 0 && wrk__pq_f32_bytes(m) == 0, "%s: %zu bytes filled after load", name,
              wrk__pq_f32_bytes(m));
    CHECK(wrk__pq_f32_hold(m, err, sizeof err) == 0 && wrk__pq_f32_bytes(m) == want);
    CHECK(wrk__pq_f32_hold(m, err, sizeof err) == 0 && wrk__pq_f32_bytes(m) == want);
    wrk__pq_f32_release(m);
    CHECK(wrk__pq_f32_bytes(m) == want);
    wrk__pq_f32_release(m);
    CHECK(wrk__pq_f32_bytes(m) == 0);
    return want;
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
        const size_t f32b = check_holds(q, cases[c]);
        char herr[256] = "";
        CHECK_MSG(wrk__pq_f32_hold(q, herr, sizeof herr) == 0, "%s", herr);
        int n_quant = 0;
        for (int i = 0; i < q->n_mats && i < r->n_mats; i++) {
            const wrk_mat_t *a = &q->mats[i], *b = &r->mats[i];
            CHECK(a->rows == b->rows && a->cols == b->cols && a->dt == b->dt);
            n_quant += a->data != NULL && b->dt == WRK_DT_F32 && a->cols >= 32;
            const size_t n = (size_t)a->rows * a->cols * wrk_dtype_size(a->dt);
            CHECK_MSG(memcmp(a->data, b->data, n) == 0, "%s: matrix %d (%dx%d) differs", cases[c],
                      i, a->rows, a->cols);
        }
        CHECK_MSG(n_quant == 3, "%s: %d quantized matrices", cases[c], n_quant);
        wrk__pq_f32_release(q);
        CHECK(wrk__pq_f32_bytes(q) == 0);
        CHECK(strcmp(q->info.fingerprint_hex, r->info.fingerprint_hex) != 0);
        /* served exactly: the logits of the reference model, bit for bit */
        const int V = q->info.vocab_size;
        float *lq = calloc((size_t)2 * V, sizeof *lq), *lr = calloc((size_t)2 * V, sizeof *lr);
        logits(q, NULL, lq, 2);
        logits(r, NULL, lr, 2);
        /* the qg kernels sum per group, then scale: within fp32 rounding of the reference */
        float dmax = 0.f;
        for (int i = 0; i < 2 * V; i++)
            dmax = fmaxf(dmax, fabsf(lq[i] - lr[i]));
        CHECK_MSG(dmax <= 1e-5f, "%s: logits differ by %g", cases[c], (double)dmax);
        if (getenv("RCD_PQ_VERBOSE")) printf("%s: max |dlogit| %g\n", cases[c], (double)dmax);
        /* the CPU backend serves the codes: it never filled the fp32 copies (a read of them
         * would have faulted), and the packs hold no fp32 matrix of them */
        CHECK_MSG(wrk__pq_f32_bytes(q) == 0, "%s: the CPU backend filled the fp32 copies",
                  cases[c]);
        size_t native = 0, packed = 0, rnative = 0, rpacked = 0;
        wrk_cpu_pack_stats(q, &native, &packed);
        wrk_cpu_pack_stats(r, &rnative, &rpacked);
        CHECK_MSG(packed < rpacked && rpacked - packed >= f32b / 2, "%s: packs %zu vs %zu",
                  cases[c], packed, rpacked);
        /* TP ranks slice the values: filled while the shards are cut, freed after; the
         * shards run the same fp32 values as the reference's, bit for bit */
        memset(lq, 0, (size_t)2 * V * sizeof *lq);
        memset(lr, 0, (size_t)2 * V * sizeof *lr);
        logits_tp(q, NULL, 2, lq, 2);
        logits_tp(r, NULL, 2, lr, 2);
        CHECK_MSG(memcmp(lq, lr, (size_t)2 * V * sizeof *lq) == 0, "%s: tp 2 logits differ",
                  cases[c]);
        CHECK(wrk__pq_f32_bytes(q) == 0);
        free(lq);
        free(lr);
        /* no second quantization */
        wrk_backend_opts_t o = {.n_threads = 1, .n_slots = 1, .weights = "q8"};
        wrk_backend_t *b = NULL;
        char err[512] = "";
        wrk_model_t *q2 = load(dir);
        CHECK(q2 && wrk_cpu_backend_create(q2, &o, &b, err, sizeof err) == RCD_EUNSUPPORTED);
        CHECK_MSG(strstr(err, "already quantized") && strstr(err, "--weights q8"), "%s", err);
        /* nor under TP, where every rank would quantize its slices */
        o.tp = 2;
        o.weights = "q4";
        err[0] = 0;
        CHECK(q2 && wrk_cpu_backend_create(q2, &o, &b, err, sizeof err) == RCD_EUNSUPPORTED);
        CHECK_MSG(strstr(err, "already quantized") && strstr(err, "--weights q4"), "%s", err);
        wrk_model_free(q2);
        wrk_model_free(q);
        wrk_model_free(r);
    }
}

/* The qg pack of every quantized matrix of every case: dequantizes to the loader's fp32
 * values bit for bit; its matmul against a double reference on those values (relative 1e-5)
 * on every ISA, T = 1..19 bit-identical to T = 1 per token, row ranges off the panel edges
 * with bias and accumulate, and AVX2 = AVX-512 bit for bit. */
static void test_qg_kernels(void)
{
    static const char *const isas[] = {"portable", "avx2", "avx512"};
    for (int c = 0; c < N_CASES; c++) {
        char dir[RCD_PATH_MAX];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/prequant/%s", gdir, cases[c]) == 0);
        wrk_model_t *m = load(dir);
        if (!m) continue;
        char herr[256] = "";
        CHECK_MSG(wrk__pq_f32_hold(m, herr, sizeof herr) == 0, "%s", herr);
        wrk_pq_src_t dec;
        for (int i = 0; i < m->n_mats; i++) {
            const wrk_pq_src_t *msrc = wrk__pq_source(m, m->mats[i].data), *src = &dec;
            if (!msrc) continue;
            CHECK(!msrc->q && !msrc->s && !msrc->z); /* the model keeps no codes */
            if (wrk__pq_src_load(m, msrc, &dec)) {
                CHECK_MSG(0, "%s: cannot decode matrix %d", cases[c], i);
                continue;
            }
            const int R = src->rows, K = src->cols, TMAX = 19;
            const size_t nb = wrk_pack_qg_bytes(src);
            CHECK(nb > 0);
            void *pk = aligned_alloc(64, (nb + 63) / 64 * 64);
            CHECK(pk && wrk_pack_qg(src, pk) == 0);
            float *row = malloc((size_t)K * sizeof *row);
            for (int r = 0; r < R; r++) {
                wrk_dequant_qg_row(pk, r, row);
                CHECK_MSG(memcmp(row, src->w + (size_t)r * K, (size_t)K * 4) == 0,
                          "%s: matrix %d row %d", cases[c], i, r);
            }
            free(row);
            float *x = malloc((size_t)TMAX * K * sizeof *x), *bias = malloc((size_t)R * 4);
            float *scratch = malloc((size_t)WRK_GEMM_BLOCK_ROWS * K * sizeof *scratch);
            float *y1 = calloc((size_t)TMAX * R, 4), *yt = calloc((size_t)TMAX * R, 4);
            float *y2 = calloc((size_t)TMAX * R, 4);
            for (int j = 0; j < TMAX * K; j++)
                x[j] = sinf(0.37f * (float)j) * 1.5f;
            for (int r = 0; r < R; r++)
                bias[r] = 0.01f * (float)(r % 7);
            const wrk_mat_t W = {
                .dt = WRK_DT_F32, .data = src->w, .rows = R, .cols = K, .pk = pk, .qf = WRK_WQ_QG};
            bool have2 = false;
            for (int a = 0; a < 3; a++) {
                const wrk_kern_t *k = wrk_kern_select(isas[a]);
                if (!k) continue;
                for (int t = 0; t < TMAX; t++) /* one token at a time */
                    wrk_matmul(k, scratch, &W, 0, R, x + (size_t)t * K, K, 1, y1 + (size_t)t * R, R,
                               NULL, false);
                for (int t = 0; t < TMAX; t++)
                    for (int r = 0; r < R; r++) {
                        double ref = 0;
                        for (int j = 0; j < K; j++)
                            ref += (double)src->w[(size_t)r * K + j] * x[(size_t)t * K + j];
                        const double got = y1[(size_t)t * R + r];
                        CHECK_MSG(fabs(got - ref) <= 1e-5 * (1 + fabs(ref)) * sqrt((double)K),
                                  "%s %s matrix %d: y[%d][%d] %g vs %g", isas[a], cases[c], i, t, r,
                                  got, ref);
                    }
                for (int T = 2; T <= TMAX; T += 5) {
                    wrk_matmul(k, scratch, &W, 0, R, x, K, T, yt, R, NULL, false);
                    CHECK_MSG(memcmp(yt, y1, (size_t)T * R * 4) == 0, "%s %s: T=%d differs",
                              isas[a], cases[c], T);
                }
                /* rows 3 .. R-2 with bias, accumulated onto y1 */
                memcpy(yt, y1, (size_t)TMAX * R * 4);
                wrk_matmul(k, scratch, &W, 3, R - 2, x, K, TMAX, yt, R, bias, true);
                for (int t = 0; t < TMAX; t++)
                    for (int r = 0; r < R; r++) {
                        const float v = y1[(size_t)t * R + r];
                        const float want = r >= 3 && r < R - 2 ? v + (v + bias[r]) : v;
                        CHECK(yt[(size_t)t * R + r] == want);
                    }
                if (!strcmp(isas[a], "avx2")) {
                    memcpy(y2, y1, (size_t)TMAX * R * 4);
                    have2 = true;
                } else if (!strcmp(isas[a], "avx512") && have2) {
                    CHECK_MSG(memcmp(y2, y1, (size_t)TMAX * R * 4) == 0, "%s: avx2 != avx512",
                              cases[c]);
                }
            }
            free(x);
            free(bias);
            free(scratch);
            free(y1);
            free(yt);
            free(y2);
            free(pk);
            wrk__pq_src_done(&dec);
        }
        wrk__pq_f32_release(m);
        wrk_model_free(m);
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

/* A tensor a family reads as a plain tensor (the conv weight) stored quantized is refused
 * naming it: the fixture's safetensors header with conv1d.weight renamed conv1d.qweight. */
static void test_quantized_plain_tensor(void)
{
    char src[RCD_PATH_MAX], dir[64] = "/tmp/rcd_pq_conv_XXXXXX", path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(src, sizeof src, "%s/prequant/gptq_w4_g32_sym/model.safetensors", gdir) ==
          0);
    size_t len = 0;
    char *buf = rcd_test_read_file(src, &len);
    CHECK(buf && len > 8 && mkdtemp(dir));
    if (!buf || len <= 8) return;
    uint64_t n;
    memcpy(&n, buf, 8);
    CHECK(n < len - 8);
    const char *from = "backbone.layers.0.mixer.conv1d.weight\"";
    char *hdr = malloc(n + 2), *hit;
    memcpy(hdr, buf + 8, n);
    hdr[n] = 0;
    hit = strstr(hdr, from);
    CHECK(hit != NULL);
    if (hit) {
        CHECK(rcd_path_fmt(path, sizeof path, "%s/model.safetensors", dir) == 0);
        FILE *f = fopen(path, "wb");
        const uint64_t n2 = n + 1;
        const size_t pre = (size_t)(hit - hdr) + strlen(from) - 7;
        fwrite(&n2, 8, 1, f);
        fwrite(hdr, 1, pre, f);
        fputs("qweight", f);
        fwrite(hdr + pre + 6, 1, n - pre - 6, f);
        fwrite(buf + 8 + n, 1, len - 8 - n, f);
        fclose(f);
        char cfg[RCD_PATH_MAX];
        CHECK(rcd_path_fmt(cfg, sizeof cfg, "%s/prequant/gptq_w4_g32_sym/config.json", gdir) == 0);
        char *abs = realpath(cfg, NULL);
        CHECK(rcd_path_fmt(path, sizeof path, "%s/config.json", dir) == 0);
        CHECK(abs && symlink(abs, path) == 0);
        free(abs);
        char err[1024] = "";
        wrk_model_t *m = NULL;
        const int rc = wrk_model_load(dir, &m, err, sizeof err);
        CHECK_MSG(rc == RCD_EUNSUPPORTED, "got %s (%s)", rcd_errname(rc), err);
        CHECK_MSG(strstr(err, "conv1d.weight is stored quantized") != NULL, "%s", err);
        wrk_model_free(m);
        unlink(path);
        CHECK(rcd_path_fmt(path, sizeof path, "%s/model.safetensors", dir) == 0);
        unlink(path);
    }
    rmdir(dir);
    free(hdr);
    free(buf);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    const char *g = getenv("RCD_GOLDEN_DIR");
    CHECK(rcd_path_fmt(gdir, sizeof gdir, "%s", g ? g : "tests/golden") == 0);
    RUN(test_dequant_exact);
    RUN(test_qg_kernels);
    RUN(test_refusals);
    RUN(test_quantized_plain_tensor);
    return rcd_test_summary();
}
