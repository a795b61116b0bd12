/* rcd_client: gRPC C-core + protobuf-c client plumbing (see rcd_client.h). */
#include "rcd_client.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <string.h>

/* Metadata every call sends (rcd_client_set_metadata); borrowed. */
static const grpc_metadata *g_md;
static size_t g_n_md;

void rcd_client_set_metadata(const grpc_metadata *md, size_t n)
{
    g_md = md;
    g_n_md = n;
}

grpc_channel *rcd_client_channel(const char *addr)
{
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(addr, creds, NULL);
    grpc_channel_credentials_release(creds);
    return ch;
}

grpc_channel *rcd_client_channel_tls(const char *addr, const char *ca_pem, const char *cert_pem,
                                     const char *key_pem, const char *server_name)
{
    grpc_ssl_pem_key_cert_pair pair = {key_pem, cert_pem};
    grpc_channel_credentials *creds =
        grpc_ssl_credentials_create(ca_pem, cert_pem && key_pem ? &pair : NULL, NULL, NULL);
    grpc_arg arg = {
        GRPC_ARG_STRING, GRPC_SSL_TARGET_NAME_OVERRIDE_ARG, {.string = (char *)server_name}};
    grpc_channel_args args = {server_name ? 1 : 0, &arg};
    grpc_channel *ch = grpc_channel_create(addr, creds, &args);
    grpc_channel_credentials_release(creds);
    return ch;
}

void rcd_client_close(grpc_channel *ch, grpc_completion_queue *cq, bool pluck_cq)
{
    gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
    grpc_channel_destroy(ch);
    grpc_completion_queue_shutdown(cq);
    if (pluck_cq)
        while (grpc_completion_queue_pluck(cq, NULL, inf, NULL).type != GRPC_QUEUE_SHUTDOWN)
            ;
    else
        while (grpc_completion_queue_next(cq, inf, NULL).type != GRPC_QUEUE_SHUTDOWN)
            ;
    grpc_completion_queue_destroy(cq);
}

gpr_timespec rcd_client_deadline_ms(int64_t ms)
{
    return ms >= 0
               ? gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(ms, GPR_TIMESPAN))
               : gpr_inf_future(GPR_CLOCK_REALTIME);
}

bool rcd_client_pluck(grpc_completion_queue *cq, void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

grpc_byte_buffer *rcd_client_pack(const ProtobufCMessage *m)
{
    grpc_slice sl = grpc_slice_malloc(protobuf_c_message_get_packed_size(m));
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(sl));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

ProtobufCMessage *rcd_client_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d)
{
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, bb)) return NULL;
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
    grpc_slice_unref(sl);
    return m;
}

int rcd_call_start(rcd_call_t *c, grpc_channel *ch, grpc_completion_queue *cq, const char *method,
                   const ProtobufCMessage *req, gpr_timespec deadline, void *tag_sent,
                   void *tag_status)
{
    memset(c, 0, sizeof(*c));
    c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                       grpc_slice_from_static_string(method), NULL, deadline, NULL);
    c->send = rcd_client_pack(req);
    grpc_metadata_array_init(&c->md_init);
    grpc_metadata_array_init(&c->md_trail);
    int started = 0;
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = g_n_md;
    ops[0].data.send_initial_metadata.metadata = (grpc_metadata *)g_md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->md_init;
    if (grpc_call_start_batch(c->call, ops, 4, tag_sent, NULL) == GRPC_CALL_OK) started++;
    grpc_op st;
    memset(&st, 0, sizeof(st));
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &c->md_trail;
    st.data.recv_status_on_client.status = &c->status;
    st.data.recv_status_on_client.status_details = &c->details;
    if (grpc_call_start_batch(c->call, &st, 1, tag_status, NULL) == GRPC_CALL_OK) started++;
    return started;
}

bool rcd_call_recv(rcd_call_t *c, void *tag)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv;
    c->recv = NULL;
    return grpc_call_start_batch(c->call, &op, 1, tag, NULL) == GRPC_CALL_OK;
}

ProtobufCMessage *rcd_call_take(rcd_call_t *c, const ProtobufCMessageDescriptor *d)
{
    if (!c->recv) return NULL;
    ProtobufCMessage *m = rcd_client_unpack(c->recv, d);
    grpc_byte_buffer_destroy(c->recv);
    c->recv = NULL;
    return m;
}

void rcd_call_release(rcd_call_t *c)
{
    grpc_slice_unref(c->details);
    grpc_metadata_array_destroy(&c->md_init);
    grpc_metadata_array_destroy(&c->md_trail);
    if (c->send) grpc_byte_buffer_destroy(c->send);
    if (c->recv) grpc_byte_buffer_destroy(c->recv);
    if (c->call) grpc_call_unref(c->call);
    memset(c, 0, sizeof(*c));
}
