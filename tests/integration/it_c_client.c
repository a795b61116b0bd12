/* C integration test: starts the real recurd on a free loopback port and drives it with the
 * gRPC C core and protobuf-c — health, a two-turn session, 16 concurrent streams, a cancel
 * mid-stream, a deadline, an unknown method — then drains it with SIGTERM (exit 0). */
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "recurd/v1/inference.pb-c.h"
#include "tests/rcd_test.h"

static grpc_channel *g_ch;
static grpc_completion_queue *g_cq;

typedef struct rpc {
    grpc_call *call;
    grpc_metadata_array md_init, md_trail;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *send, *recv;
    intptr_t tag; /* base tag: tag+0 start, +1 status, +2 message */
} rpc_t;

static bool pluck(intptr_t t)
{
    grpc_event ev =
        grpc_completion_queue_pluck(g_cq, (void *)t, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static void rpc_start(rpc_t *r, intptr_t tag, const char *method, const ProtobufCMessage *req,
                      int deadline_ms)
{
    memset(r, 0, sizeof(*r));
    r->tag = tag;
    gpr_timespec dl = deadline_ms > 0
                          ? gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                         gpr_time_from_millis(deadline_ms, GPR_TIMESPAN))
                          : gpr_inf_future(GPR_CLOCK_REALTIME);
    r->call = grpc_channel_create_call(g_ch, NULL, GRPC_PROPAGATE_DEFAULTS, g_cq,
                                       grpc_slice_from_static_string(method), NULL, dl, NULL);
    size_t n = protobuf_c_message_get_packed_size(req);
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(sl));
    r->send = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    grpc_metadata_array_init(&r->md_init);
    grpc_metadata_array_init(&r->md_trail);
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = r->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &r->md_init;
    CHECK(grpc_call_start_batch(r->call, ops, 4, (void *)tag, NULL) == GRPC_CALL_OK);
    grpc_op st;
    memset(&st, 0, sizeof(st));
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &r->md_trail;
    st.data.recv_status_on_client.status = &r->status;
    st.data.recv_status_on_client.status_details = &r->details;
    CHECK(grpc_call_start_batch(r->call, &st, 1, (void *)(tag + 1), NULL) == GRPC_CALL_OK);
    pluck(tag);
}

static ProtobufCMessage *rpc_next(rpc_t *r, const ProtobufCMessageDescriptor *d)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &r->recv;
    r->recv = NULL;
    if (grpc_call_start_batch(r->call, &op, 1, (void *)(r->tag + 2), NULL) != GRPC_CALL_OK ||
        !pluck(r->tag + 2) || !r->recv)
        return NULL;
    grpc_byte_buffer_reader rd;
    grpc_byte_buffer_reader_init(&rd, r->recv);
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    grpc_byte_buffer_destroy(r->recv);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
    grpc_slice_unref(sl);
    return m;
}

static int rpc_finish(rpc_t *r)
{
    pluck(r->tag + 1);
    grpc_slice_unref(r->details);
    grpc_metadata_array_destroy(&r->md_init);
    grpc_metadata_array_destroy(&r->md_trail);
    grpc_byte_buffer_destroy(r->send);
    grpc_call_unref(r->call);
    return (int)r->status;
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
    grpc_call_cancel(r.call, NULL);
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
              (char *)NULL);
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
        grpc_channel_credentials *creds = grpc_insecure_credentials_create();
        g_ch = grpc_channel_create(addr, creds, NULL);
        grpc_channel_credentials_release(creds);
        g_cq = grpc_completion_queue_create_for_pluck(NULL);
        RUN(test_health);
        RUN(test_session_turns);
        RUN(test_concurrent);
        RUN(test_cancel_deadline_unknown);
        grpc_channel_destroy(g_ch);
        grpc_completion_queue_shutdown(g_cq);
        while (grpc_completion_queue_pluck(g_cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                   .type != GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(g_cq);
        grpc_shutdown();
    }
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "recurd exit status %d (log %s)", st, logf);
    (void)argc;
    (void)argv;
    int rc = rcd_test_summary();
    if (rc == 0) { /* keep the log of a failed run */
        remove(portf);
        remove(logf);
        rmdir(dir);
    }
    return rc;
}
