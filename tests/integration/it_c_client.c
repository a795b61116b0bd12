/* C integration test: starts the real recurd on a free loopback port and drives it with the
 * gRPC C core and protobuf-c — health, a two-turn session, 16 concurrent streams, a cancel
 * mid-stream, a deadline, an unknown method — then drains it with SIGTERM (exit 0). */
#include <grpc/grpc.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "rcd_client.h"
#include "recurd/v1/inference.pb-c.h"
#include "tests/support/rcd_test.h"

static grpc_channel *g_ch;
static grpc_completion_queue *g_cq;

typedef struct rpc {
    rcd_call_t c;
    intptr_t tag; /* base tag: tag+0 start, +1 status, +2 message */
} rpc_t;

static void rpc_start(rpc_t *r, intptr_t tag, const char *method, const ProtobufCMessage *req,
                      int deadline_ms)
{
    r->tag = tag;
    CHECK(rcd_call_start(&r->c, g_ch, g_cq, method, req,
                         rcd_client_deadline_ms(deadline_ms > 0 ? deadline_ms : -1), (void *)tag,
                         (void *)(tag + 1)) == 2);
    rcd_client_pluck(g_cq, (void *)tag);
}

static ProtobufCMessage *rpc_next(rpc_t *r, const ProtobufCMessageDescriptor *d)
{
    if (!rcd_call_recv(&r->c, (void *)(r->tag + 2)) ||
        !rcd_client_pluck(g_cq, (void *)(r->tag + 2)))
        return NULL;
    return rcd_call_take(&r->c, d);
}

static int rpc_finish(rpc_t *r)
{
    rcd_client_pluck(g_cq, (void *)(r->tag + 1));
    int st = (int)r->c.status;
    rcd_call_release(&r->c);
    return st;
}

/* A whole Generate: concatenated token ids into ids (cap n), the last message's version. */
typedef struct gen_out {
    int32_t ids[64];
    int n;
    uint64_t version;
    int status;
} gen_out_t;

static void gen_read(rpc_t *r, gen_out_t *o)
{
    Recurd__V1__GenerateResponse *m;
    while ((m = (Recurd__V1__GenerateResponse *)rpc_next(
                r, &recurd__v1__generate_response__descriptor))) {
        for (size_t i = 0; i < m->n_token_ids && o->n < 64; i++)
            o->ids[o->n++] = m->token_ids[i];
        if (m->usage) o->version = m->session_version;
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
    o->status = rpc_finish(r);
}

static void gen_req(Recurd__V1__GenerateRequest *req, Recurd__V1__SamplingParams *sp,
                    Recurd__V1__TokenIds *tk, int32_t *toks, size_t n, char *sid, uint32_t max)
{
    recurd__v1__generate_request__init(req);
    recurd__v1__sampling_params__init(sp);
    recurd__v1__token_ids__init(tk);
    tk->n_ids = n;
    tk->ids = toks;
    req->prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    req->tokens = tk;
    req->session_id = sid ? sid : "";
    req->sampling = sp;
    sp->_temperature_case = RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE;
    sp->temperature = 0;
    sp->max_tokens = max;
    sp->ignore_eos = 1;
}

static void test_health(void)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rpc_t r;
    rpc_start(&r, 100, "/grpc.health.v1.Health/Check", &req.base, 10000);
    Grpc__Health__V1__HealthCheckResponse *m = (Grpc__Health__V1__HealthCheckResponse *)rpc_next(
        &r, &grpc__health__v1__health_check_response__descriptor);
    CHECK(m && m->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
    CHECK(rpc_finish(&r) == GRPC_STATUS_OK);
}

static void test_session_turns(void)
{
    Recurd__V1__CreateSessionRequest cr = RECURD__V1__CREATE_SESSION_REQUEST__INIT;
    cr.session_id = "c-it-1";
    rpc_t r;
    rpc_start(&r, 200, "/recurd.v1.Inference/CreateSession", &cr.base, 10000);
    ProtobufCMessage *m = rpc_next(&r, &recurd__v1__session__descriptor);
    CHECK(m != NULL);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    CHECK(rpc_finish(&r) == GRPC_STATUS_OK);
    int32_t p1[] = {11, 22, 33, 44}, p2[] = {55, 66};
    Recurd__V1__GenerateRequest req;
    Recurd__V1__SamplingParams sp;
    Recurd__V1__TokenIds tk;
    gen_out_t o1 = {0}, o2 = {0};
    gen_req(&req, &sp, &tk, p1, 4, "c-it-1", 5);
    rpc_start(&r, 210, "/recurd.v1.Inference/Generate", &req.base, 120000);
    gen_read(&r, &o1);
    CHECK(o1.status == GRPC_STATUS_OK && o1.n == 5 && o1.version == 1);
    gen_req(&req, &sp, &tk, p2, 2, "c-it-1", 5);
    rpc_start(&r, 220, "/recurd.v1.Inference/Generate", &req.base, 120000);
    gen_read(&r, &o2);
    CHECK(o2.status == GRPC_STATUS_OK && o2.n == 5 && o2.version == 2);
    /* one stateless run over everything gives turn 2's tokens */
    int32_t all[16];
    int n = 0;
    memcpy(all + n, p1, sizeof(p1));
    n += 4;
    memcpy(all + n, o1.ids, sizeof(int32_t) * 5);
    n += 5;
    memcpy(all + n, p2, sizeof(p2));
    n += 2;
    gen_out_t ref = {0};
    gen_req(&req, &sp, &tk, all, (size_t)n, NULL, 5);
    rpc_start(&r, 230, "/recurd.v1.Inference/Generate", &req.base, 120000);
    gen_read(&r, &ref);
    CHECK(ref.status == GRPC_STATUS_OK && ref.n == 5);
    CHECK(memcmp(ref.ids, o2.ids, sizeof(int32_t) * 5) == 0);
    Recurd__V1__GetSessionRequest gr = RECURD__V1__GET_SESSION_REQUEST__INIT;
    gr.session_id = "c-it-1";
    rpc_start(&r, 240, "/recurd.v1.Inference/GetSession", &gr.base, 10000);
    Recurd__V1__Session *s = (Recurd__V1__Session *)rpc_next(&r, &recurd__v1__session__descriptor);
    CHECK(s && s->version == 2 && s->token_count == 4 + 5 + 2 + 5);
    if (s) protobuf_c_message_free_unpacked(&s->base, NULL);
    CHECK(rpc_finish(&r) == GRPC_STATUS_OK);
}

static void test_concurrent(void)
{
    enum { N = 16 };
    static rpc_t r[N];
    static gen_out_t o[N];
    int32_t p[] = {7, 8, 9};
    Recurd__V1__GenerateRequest req;
    Recurd__V1__SamplingParams sp;
    Recurd__V1__TokenIds tk;
    gen_req(&req, &sp, &tk, p, 3, NULL, 6);
    for (int i = 0; i < N; i++) /* all in flight before any is read */
        rpc_start(&r[i], 1000 + 10 * i, "/recurd.v1.Inference/Generate", &req.base, 120000);
    for (int i = 0; i < N; i++) {
        memset(&o[i], 0, sizeof(o[i]));
        gen_read(&r[i], &o[i]);
        CHECK(o[i].status == GRPC_STATUS_OK && o[i].n == 6);
        CHECK(memcmp(o[i].ids, o[0].ids, sizeof(int32_t) * 6) == 0);
    }
}

static void test_cancel_deadline_unknown(void)
{
    int32_t p[] = {1, 2, 3};
    Recurd__V1__GenerateRequest req;
    Recurd__V1__SamplingParams sp;
    Recurd__V1__TokenIds tk;
    gen_req(&req, &sp, &tk, p, 3, "c-it-1", 4000);
    rpc_t r;
    rpc_start(&r, 300, "/recurd.v1.Inference/Generate", &req.base, 120000);
    ProtobufCMessage *m = rpc_next(&r, &recurd__v1__generate_response__descriptor);
    CHECK(m != NULL);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    grpc_call_cancel(r.c.call, NULL);
    while ((m = rpc_next(&r, &recurd__v1__generate_response__descriptor)))
        protobuf_c_message_free_unpacked(m, NULL);
    CHECK(rpc_finish(&r) == GRPC_STATUS_CANCELLED);
    gen_req(&req, &sp, &tk, p, 3, NULL, 4000);
    rpc_start(&r, 310, "/recurd.v1.Inference/Generate", &req.base, 300);
    while ((m = rpc_next(&r, &recurd__v1__generate_response__descriptor)))
        protobuf_c_message_free_unpacked(m, NULL);
    CHECK(rpc_finish(&r) == GRPC_STATUS_DEADLINE_EXCEEDED);
    Recurd__V1__ListModelsRequest lm = RECURD__V1__LIST_MODELS_REQUEST__INIT;
    rpc_start(&r, 320, "/recurd.v1.Inference/Nope", &lm.base, 10000);
    CHECK(rpc_next(&r, &recurd__v1__list_models_response__descriptor) == NULL);
    CHECK(rpc_finish(&r) == GRPC_STATUS_UNIMPLEMENTED);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    const char *bin = getenv("RECURD_BIN");
    if (!bin) {
        fprintf(stderr, "set RECURD_BIN\n");
        return 1;
    }
    char dir[] = "/tmp/recurd-cit-XXXXXX", portf[600], logf[600];
    if (!mkdtemp(dir)) return 1;
    snprintf(portf, sizeof(portf), "%s/port", dir);
    snprintf(logf, sizeof(logf), "%s/recurd.log", dir);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(logf, "w", stderr)) _exit(127);
        execl(bin, bin, "--port", "0", "--port-file", portf, "--no-progress", "--threads", "2",
              "--http-port", "0", (char *)NULL);
        _exit(127);
    }
    int port = 0;
    for (int i = 0; i < 1200 && !port; i++) { /* up to 60 s */
        FILE *f = fopen(portf, "r");
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
        }
        if (!port) usleep(50000);
    }
    CHECK(port > 0);
    if (port > 0) {
        char addr[64];
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
        grpc_init();
        g_ch = rcd_client_channel(addr);
        g_cq = grpc_completion_queue_create_for_pluck(NULL);
        RUN(test_health);
        RUN(test_session_turns);
        RUN(test_concurrent);
        RUN(test_cancel_deadline_unknown);
        rcd_client_close(g_ch, g_cq, true);
        grpc_shutdown();
    }
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "recurd exit status %d (log %s)", st, logf);
    int rc = rcd_test_summary();
    if (rc == 0) { /* keep the log of a failed run */
        remove(portf);
        remove(logf);
        rmdir(dir);
    }
    return rc;
}
