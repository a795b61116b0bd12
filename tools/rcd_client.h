/* rcd_client: the gRPC C-core + protobuf-c plumbing shared by recurctl, it_c_client and
 * rcd_loadgen — channel, one call (send request, half-close, status) and message pack/unpack. */
#ifndef RCD_CLIENT_H
#define RCD_CLIENT_H

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

/* One client call with a single request message. All fields are owned by the call and
 * released by rcd_call_release; status and details are valid once the status tag completes. */
typedef struct rcd_call {
    grpc_call *call;
    grpc_metadata_array md_init, md_trail;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *send, *recv; /* recv: the last message received, until rcd_call_take */
} rcd_call_t;

/* An insecure channel to addr ("host:port"); the caller owns it. grpc_init() first. */
grpc_channel *rcd_client_channel(const char *addr);
/* Metadata sent with every call started by rcd_call_start from now on (e.g. authorization);
 * md is borrowed and must outlive those calls. NULL, 0: none. */
void rcd_client_set_metadata(const grpc_metadata *md, size_t n);
/* A TLS channel to addr: ca_pem the server's CA (NULL: gRPC's default roots), cert_pem and
 * key_pem a client certificate for mTLS (both or NULL), server_name the name checked against
 * the server's certificate (NULL: addr's host). The PEM texts are copied. */
grpc_channel *rcd_client_channel_tls(const char *addr, const char *ca_pem, const char *cert_pem,
                                     const char *key_pem, const char *server_name);
/* Destroys ch, shuts cq down, drains it (pluck or next, as it was created) and destroys it. */
void rcd_client_close(grpc_channel *ch, grpc_completion_queue *cq, bool pluck_cq);
/* Absolute deadline ms from now (0: now, already past); ms < 0 means none. */
gpr_timespec rcd_client_deadline_ms(int64_t ms);
/* Waits for tag on a pluck queue; true when its batch completed successfully. */
bool rcd_client_pluck(grpc_completion_queue *cq, void *tag);

/* Packs m into a new byte buffer (the caller owns it). */
grpc_byte_buffer *rcd_client_pack(const ProtobufCMessage *m);
/* Unpacks bb (not consumed) as d; NULL on a malformed message. The caller frees the result
 * with protobuf_c_message_free_unpacked. */
ProtobufCMessage *rcd_client_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d);

/* Zeroes c, creates the call on ch/cq and starts two batches: send metadata + req + half-close
 * + receive initial metadata (tag_sent), and receive status (tag_status). Returns how many of
 * the two batches started; rcd_call_release is needed whatever it returns. */
int rcd_call_start(rcd_call_t *c, grpc_channel *ch, grpc_completion_queue *cq, const char *method,
                   const ProtobufCMessage *req, gpr_timespec deadline, void *tag_sent,
                   void *tag_status);
/* Starts receiving the next message into c->recv (NULL there at the end of the stream). */
bool rcd_call_recv(rcd_call_t *c, void *tag);
/* Unpacks and frees c->recv; NULL when there was none or it was malformed. */
ProtobufCMessage *rcd_call_take(rcd_call_t *c, const ProtobufCMessageDescriptor *d);
/* Frees everything c holds (safe on a zeroed or partly started call). */
void rcd_call_release(rcd_call_t *c);

#endif
