/* Writes fuzz_request's seed corpus: real encoded requests of every RPC, each file the RPC's
 * selector byte (fuzz_request.c) then the message as protobuf-c packs it, plus hand-encoded
 * ones protobuf-c cannot write (NUL bytes inside strings, text holding NUL bytes). Run once
 * from the repository root when the proto changes:
 *   build/fuzz/tests/fuzz/request_seeds tests/fuzz/corpus/request */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_path.h"
#include "grpc/health/v1/health.pb-c.h"
#include "recurd/v1/inference.pb-c.h"

static const char *dir;
static int failed;

static void put(const char *name, int m, const uint8_t *b, size_t n)
{
    char path[RCD_PATH_MAX];
    FILE *f = NULL;
    uint8_t sel = (uint8_t)m;
    if (rcd_path_join(path, sizeof(path), dir, name) || !(f = fopen(path, "wb")) ||
        fwrite(&sel, 1, 1, f) != 1 || (n && fwrite(b, 1, n, f) != n)) {
        fprintf(stderr, "request_seeds: cannot write %s\n", name);
        failed = 1;
    }
    if (f && fclose(f)) failed = 1;
}

static void seed(const char *name, int m, const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *b = malloc(n + 1);
    if (!b) exit(1);
    protobuf_c_message_pack(msg, b);
    put(name, m, b, n);
    free(b);
}

#define RAW(name, m, bytes) put(name, m, (const uint8_t *)(bytes), sizeof(bytes) - 1)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: request_seeds DIR\n");
        return 2;
    }
    dir = argv[1];
    Recurd__V1__ListModelsRequest lm = RECURD__V1__LIST_MODELS_REQUEST__INIT;
    seed("list_models", 0, &lm.base);

    Recurd__V1__MetadataEntry e1 = RECURD__V1__METADATA_ENTRY__INIT, e2 = e1;
    e1.key = "topic";
    e1.value = "weather";
    e2.key = "lang";
    e2.value = "en";
    Recurd__V1__MetadataEntry *md[2] = {&e1, &e2};
    Recurd__V1__CreateSessionRequest cs = RECURD__V1__CREATE_SESSION_REQUEST__INIT;
    cs.session_id = "chat1";
    cs.owner = "bob";
    cs.ttl_seconds = 3600;
    cs.n_metadata = 2;
    cs.metadata = md;
    seed("create", 1, &cs.base);
    cs.model = "recurd-mamba-tiny";
    cs.session_id = "";
    cs.n_metadata = 0;
    seed("create_model_noid", 1, &cs.base);

    Recurd__V1__GetSessionRequest gs = RECURD__V1__GET_SESSION_REQUEST__INIT;
    gs.session_id = "chat1";
    seed("get", 2, &gs.base);
    RAW("get_nul", 2, "\x0a\x04"
                      "a\0zz");

    Recurd__V1__ForkSessionRequest fs = RECURD__V1__FORK_SESSION_REQUEST__INIT;
    fs.session_id = "chat1";
    fs.new_session_id = "chat1-fork";
    fs.owner = "alice";
    fs.n_metadata = 1;
    fs.metadata = md;
    seed("fork", 3, &fs.base);

    Recurd__V1__DeleteSessionRequest ds = RECURD__V1__DELETE_SESSION_REQUEST__INIT;
    ds.session_id = "chat1";
    seed("delete", 4, &ds.base);

    Recurd__V1__TokenizeRequest tk = RECURD__V1__TOKENIZE_REQUEST__INIT;
    tk.text = "Once upon a time, \xe6\x97\xa5\xe6\x9c\xac";
    tk.add_special_tokens = 1;
    seed("tokenize", 5, &tk.base);
    RAW("tokenize_nul", 5, "\x12\x05"
                           "ab\0cd");

    int32_t ids[5] = {189, 72, 101, 4095, 0};
    Recurd__V1__DetokenizeRequest dk = RECURD__V1__DETOKENIZE_REQUEST__INIT;
    dk.n_token_ids = 5;
    dk.token_ids = ids;
    dk.skip_special_tokens = 1;
    seed("detokenize", 6, &dk.base);

    Recurd__V1__SamplingParams sp = RECURD__V1__SAMPLING_PARAMS__INIT;
    char *stops[2] = {"\n\n", "END"};
    int32_t stop_ids[1] = {0};
    sp._temperature_case = RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE;
    sp.temperature = 0.7f;
    sp.top_k = 40;
    sp.top_p = 0.9f;
    sp.min_p = 0.05f;
    sp.repetition_penalty = 1.1f;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = -0.5f;
    sp._seed_case = RECURD__V1__SAMPLING_PARAMS___SEED_SEED;
    sp.seed = 42;
    sp.max_tokens = 32;
    sp.n_stop = 2;
    sp.stop = stops;
    sp.n_stop_token_ids = 1;
    sp.stop_token_ids = stop_ids;
    sp.logprobs = 3;
    Recurd__V1__GenerateRequest g = RECURD__V1__GENERATE_REQUEST__INIT;
    g.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT;
    g.text = "Once upon a time";
    g.sampling = &sp;
    seed("generate_text", 7, &g.base);
    g.session_id = "chat1";
    g._expected_version_case = RECURD__V1__GENERATE_REQUEST___EXPECTED_VERSION_EXPECTED_VERSION;
    g.expected_version = 3;
    g.priority = 2;
    g.tenant = "acme";
    g.add_special_tokens = 1;
    seed("generate_session", 7, &g.base);
    Recurd__V1__TokenIds t = RECURD__V1__TOKEN_IDS__INIT;
    t.n_ids = 5;
    t.ids = ids;
    g.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    g.tokens = &t;
    g.sampling = NULL;
    g._expected_version_case = RECURD__V1__GENERATE_REQUEST___EXPECTED_VERSION__NOT_SET;
    seed("generate_tokens", 7, &g.base);
    RAW("generate_text_nul", 7, "\x1a\x05"
                                "ab\0cd"
                                "\x2a\x02\x48\x08");
    RAW("generate_stop_nul", 7, "\x1a\x02hi"
                                "\x2a\x04\x52\x02\0x");
    put("generate_no_tokenizer", 0x17, (const uint8_t *)"\x1a\x02hi", 4);

    Grpc__Health__V1__HealthCheckRequest hc = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    hc.service = "recurd.v1.Inference";
    seed("health", 8, &hc.base);
    hc.service = "";
    seed("watch", 9, &hc.base);
    return failed;
}
