"""recurd integration: the metadata a load balancer routes on (issue 15, "Routing and
affinity"). A call naming a session may carry it as `x-session-id` (a proxy cannot read the
protobuf body); it must then equal the request's session_id, or the call is refused with
INVALID_ARGUMENT. Every response names the replica that served it in its initial metadata,
`x-recurd-replica` (--replica-name, else the host name). recurctl sends x-session-id."""
import os
import socket
import subprocess
import unittest

import grpc

from rcd_harness import Daemon, DaemonTest, collect, gen_request, hpb, pb, pyclient

C = grpc.StatusCode
rc = pyclient()  # the Python client package, clients/python


def replica(call):
    return dict(call.initial_metadata()).get("x-recurd-replica")


class Routing(DaemonTest):
    daemon_args = ("--ephemeral", "--replica-name", "recurd-2")

    def test_replica_named_on_every_reply(self):
        r, call = self.api.ListModels.with_call(pb.ListModelsRequest())
        self.assertEqual(replica(call), "recurd-2")
        # errors too
        with self.assertRaises(grpc.RpcError) as cm:
            self.api.GetSession(pb.GetSessionRequest(session_id="nobody"))
        self.assertEqual(cm.exception.code(), C.NOT_FOUND)
        self.assertEqual(replica(cm.exception), "recurd-2")
        # streams
        st = self.api.Generate(gen_request(tokens=[1, 2, 3], max_tokens=3))
        self.assertEqual(replica(st), "recurd-2")
        collect(st)
        _, call = self.d.health.Check.with_call(hpb.HealthCheckRequest())
        self.assertEqual(replica(call), "recurd-2")

    def test_matching_header_is_served(self):
        # the client package sends x-session-id (= the session id) on every session call
        c = rc.Client(self.d.addr, timeout=60)
        s = c.create_session("route-ok")
        r = s.turn([5, 6], max_tokens=3).collect()
        self.assertEqual((r.session_version, r.replica), (1, "recurd-2"))
        self.assertEqual(c.get_session("route-ok").version, 1)
        f = s.fork("route-f")  # routed by its source
        self.assertEqual(f.id, "route-f")
        f.delete()
        with self.assertRaises(rc.NotFound) as cm:
            c.get_session("route-f")
        self.assertEqual(cm.exception.replica, "recurd-2")
        c.close()
        # calls without a session_id field ignore the header
        md = [("x-session-id", "route-ok")]
        self.assertEqual(len(self.api.ListModels(pb.ListModelsRequest(), metadata=md).models), 1)
        self.api.Tokenize(pb.TokenizeRequest(text="hi"), metadata=md)

    def test_mismatch_is_invalid_argument(self):
        sid = "route-x"
        self.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
        bad = [("x-session-id", "someone-else")]
        for fn, req in (
                (self.api.GetSession, pb.GetSessionRequest(session_id=sid)),
                (self.api.ForkSession, pb.ForkSessionRequest(session_id=sid)),
                (self.api.DeleteSession, pb.DeleteSessionRequest(session_id=sid)),
                (self.api.CreateSession, pb.CreateSessionRequest(session_id="route-new")),
                (self.api.CreateSession, pb.CreateSessionRequest()),  # a server-picked id
        ):
            e = self.assertCode(C.INVALID_ARGUMENT, fn, req, metadata=bad)
            self.assertIn("x-session-id", e.details())
        e = self.assertCode(C.INVALID_ARGUMENT, self.api.Generate,
                            gen_request(tokens=[1], max_tokens=2, session=sid), metadata=bad)
        self.assertIn("does not match", e.details())
        # a stateless call carries no header: with one it is a mismatch too
        self.assertCode(C.INVALID_ARGUMENT, self.api.Generate,
                        gen_request(tokens=[1], max_tokens=2), metadata=bad)
        # an id that cannot be a session id
        self.assertCode(C.INVALID_ARGUMENT, self.api.GetSession,
                        pb.GetSessionRequest(session_id=sid), metadata=[("x-session-id", "a" * 129)])
        # nothing happened to the session
        s = self.api.GetSession(pb.GetSessionRequest(session_id=sid))
        self.assertEqual(s.version, 0)
        with self.assertRaises(grpc.RpcError):
            self.api.GetSession(pb.GetSessionRequest(session_id="route-new"))

    def test_recurctl_sends_the_header(self):
        """recurctl against a recording gRPC server (grpcio): each session call carries its
        id as x-session-id, the others none."""
        ctl = os.environ.get("RECURCTL_BIN")
        if not ctl:
            self.skipTest("RECURCTL_BIN not set")
        seen = []

        class Record(grpc.GenericRpcHandler):
            def service(self, details):
                md = dict(details.invocation_metadata)
                seen.append((details.method.rsplit("/", 1)[-1], md.get("x-session-id")))

                def fail(req, ctx):
                    ctx.abort(grpc.StatusCode.UNAVAILABLE, "recording only")
                return grpc.unary_unary_rpc_method_handler(fail)

        from concurrent import futures
        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[Record()])
        port = srv.add_insecure_port("127.0.0.1:0")
        srv.start()
        try:
            addr = "127.0.0.1:%d" % port
            for args in (("session", "create", "--id", "c1"), ("session", "create"),
                         ("session", "get", "g1"), ("session", "fork", "f1", "--id", "f2"),
                         ("session", "delete", "d1"), ("generate", "--session", "s1", "Hi"),
                         ("generate", "Hi"), ("models",)):
                subprocess.run([ctl, "--addr", addr, "--timeout", "10"] + list(args),
                               capture_output=True, timeout=60)
        finally:
            srv.stop(0)
        self.assertEqual(seen, [("CreateSession", "c1"), ("CreateSession", None),
                                ("GetSession", "g1"), ("ForkSession", "f1"),
                                ("DeleteSession", "d1"), ("Generate", "s1"), ("Generate", None),
                                ("ListModels", None)])


class DefaultName(unittest.TestCase):
    def test_host_name_and_bad_names(self):
        d = Daemon("--ephemeral")
        try:
            _, call = d.api.ListModels.with_call(pb.ListModelsRequest())
            self.assertEqual(replica(call), socket.gethostname())
        finally:
            self.assertEqual(d.stop(), 0)
        for bad in ("has space", "x" * 256):
            with self.assertRaises(RuntimeError) as cm:
                Daemon("--ephemeral", "--replica-name", bad)
            self.assertIn("replica-name", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
