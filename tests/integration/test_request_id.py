"""recurd integration: the x-request-id a client sends is echoed in the initial metadata of
every reply (unary, error and streaming), whatever its length. Ids over 23 bytes do not fit
inline in a grpc_slice, so each echo is a heap slice: under ASan (detect_leaks=1) a slice
never released fails the drain at the end (LeakSanitizer: exit status not 0)."""
import unittest
import uuid

import grpc

from rcd_harness import DaemonTest, collect, gen_request, hpb, pb

C = grpc.StatusCode
RID_MAX = 39  # the daemon keeps (and echoes) at most this many bytes of an id


def echoed(call):
    return dict(call.initial_metadata()).get("x-request-id")


class RequestIds(DaemonTest):
    daemon_args = ("--ephemeral",)

    def test_uuid_ids_unary(self):
        for _ in range(200):
            rid = str(uuid.uuid4())  # 36 bytes
            r, call = self.api.ListModels.with_call(pb.ListModelsRequest(),
                                                    metadata=[("x-request-id", rid)])
            self.assertEqual(len(r.models), 1)
            self.assertEqual(echoed(call), rid)

    def test_8k_ids(self):
        for i in range(100):
            rid = ("%04d" % i) + "k" * 8188  # 8 KiB: the id kept is its first RID_MAX bytes
            r, call = self.api.ListModels.with_call(pb.ListModelsRequest(),
                                                    metadata=[("x-request-id", rid)])
            self.assertEqual(len(r.models), 1)
            self.assertEqual(echoed(call), rid[:RID_MAX])

    def test_long_ids_on_errors_and_streams(self):
        for i in range(50):
            rid = str(uuid.uuid4())
            with self.assertRaises(grpc.RpcError) as cm:  # an error reply: NOT_FOUND
                self.api.GetSession(pb.GetSessionRequest(session_id="nope-%d" % i),
                                    metadata=[("x-request-id", rid)])
            self.assertEqual(cm.exception.code(), C.NOT_FOUND)
            self.assertEqual(echoed(cm.exception), rid)
            rid = str(uuid.uuid4())
            s = self.api.Generate(gen_request(tokens=[1, 2, 3], max_tokens=2, temperature=0,
                                              ignore_eos=True),
                                  metadata=[("x-request-id", rid)], timeout=60)
            _, ids, _, _ = collect(s)
            self.assertEqual(len(ids), 2)
            self.assertEqual(echoed(s), rid)
            with self.assertRaises(grpc.RpcError) as cm:  # a stream refused before any token
                collect(self.api.Generate(gen_request(tokens=[1], max_tokens=1, top_p=2.0),
                                          metadata=[("x-request-id", rid)], timeout=60))
            self.assertEqual(cm.exception.code(), C.INVALID_ARGUMENT)
            self.assertEqual(echoed(cm.exception), rid)

    def test_still_healthy(self):
        for _ in range(20):
            r, call = self.d.health.Check.with_call(
                hpb.HealthCheckRequest(), metadata=[("x-request-id", "h" * 8192)])
            self.assertEqual(r.status, hpb.HealthCheckResponse.SERVING)
            self.assertEqual(echoed(call), "h" * RID_MAX)


if __name__ == "__main__":
    unittest.main()
