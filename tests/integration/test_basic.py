"""recurd integration: health, models, tokenizer, sessions, unknown methods, garbage bytes."""
import os
import shutil
import socket
import subprocess
import time
import unittest

import grpc

from rcd_harness import ROOT, DaemonTest, Daemon, daemon_binary, pb, hpb, pyclient

C = grpc.StatusCode
rc = pyclient()  # the Python client package, clients/python


class Basic(DaemonTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.c = rc.Client(cls.d.addr, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        super().tearDownClass()

    def test_health(self):
        r = self.d.health.Check(hpb.HealthCheckRequest())
        self.assertEqual(r.status, hpb.HealthCheckResponse.SERVING)
        r = self.d.health.Check(hpb.HealthCheckRequest(service="recurd.v1.Inference"))
        self.assertEqual(r.status, hpb.HealthCheckResponse.SERVING)
        self.assertCode(C.NOT_FOUND, self.d.health.Check, hpb.HealthCheckRequest(service="nope"))
        w = self.d.health.Watch(hpb.HealthCheckRequest(), timeout=5)
        self.assertEqual(next(w).status, hpb.HealthCheckResponse.SERVING)
        w.cancel()

    def test_models(self):
        models = self.c.list_models()
        self.assertEqual(len(models), 1)
        m = models[0]
        self.assertEqual(m.id, "recurd-mamba-tiny")
        self.assertEqual(m.architecture, "MambaForCausalLM")
        self.assertEqual(m.vocab_size, 4096)
        self.assertGreater(m.state_bytes, 0)
        self.assertEqual(len(m.fingerprint), 16)

    def test_tokenize_roundtrip(self):
        t = self.api.Tokenize(pb.TokenizeRequest(text="Hello world, once upon a time"))
        self.assertGreater(len(t.token_ids), 2)
        d = self.api.Detokenize(pb.DetokenizeRequest(token_ids=t.token_ids))
        self.assertEqual(d.text, "Hello world, once upon a time")
        self.assertCode(C.INVALID_ARGUMENT, self.api.Detokenize,
                        pb.DetokenizeRequest(token_ids=[1, 99999]))
        self.assertCode(C.NOT_FOUND, self.api.Tokenize, pb.TokenizeRequest(model="x", text="a"))
        raw = self.d.channel.unary_unary("/recurd.v1.Inference/Tokenize",
                                         request_serializer=lambda x: x,
                                         response_deserializer=pb.TokenizeResponse.FromString)
        self.assertCode(C.INVALID_ARGUMENT, raw, b"\x12\x03a\xc3(", timeout=10)  # bad UTF-8
        big = self.api.Tokenize(pb.TokenizeRequest(text="Once upon a time. " * 150000),
                                timeout=60)  # 2.7 MB, encoded off the loop thread
        self.assertGreater(len(big.token_ids), 150000)

    def test_sessions(self):
        s = self.c.create_session("basic-1", metadata={"user": "ann"})
        self.assertEqual((s.id, s.version, s.info.token_count), ("basic-1", 0, 0))
        self.assertGreater(s.info.created_unix_ms, 0)
        g = self.c.get_session("basic-1").info
        self.assertEqual(g.metadata, {"user": "ann"})
        self.assertEqual(g.model, "recurd-mamba-tiny")
        with self.assertRaises(rc.AlreadyExists):
            self.c.create_session("basic-1")
        with self.assertRaises(rc.InvalidArgument):
            self.c.create_session("bad id!")
        with self.assertRaises(rc.InvalidArgument):
            self.c.create_session("x" * 200)
        auto = self.api.CreateSession(pb.CreateSessionRequest())  # the server picks the id
        self.assertTrue(auto.session_id.startswith("s-"))
        f = s.fork("basic-2")
        self.assertEqual((f.id, f.info.parent_session_id), ("basic-2", "basic-1"))
        self.assertEqual(f.info.metadata, {"user": "ann"})
        with self.assertRaises(rc.NotFound):
            self.c.fork_session("nope")
        s.delete()
        with self.assertRaises(rc.NotFound):
            self.c.get_session("basic-1")
        with self.assertRaises(rc.NotFound):
            self.c.delete_session("basic-1")
        self.c.get_session("basic-2")

    def test_request_id(self):
        _, call = self.api.Tokenize.with_call(pb.TokenizeRequest(text="hi"),
                                              metadata=[("x-request-id", "abc-123")])
        self.assertIn(("x-request-id", "abc-123"), call.initial_metadata())
        req = pb.GenerateRequest(text="hi")
        req.sampling.max_tokens = 2
        st = self.api.Generate(req, metadata=[("x-request-id", "r-9")])
        last = list(st)[-1]
        self.assertEqual(last.request_id, "r-9")
        self.assertIn(("x-request-id", "r-9"), st.initial_metadata())
        _, call = self.api.ListModels.with_call(pb.ListModelsRequest())
        self.assertTrue(dict(call.initial_metadata())["x-request-id"])  # generated
        self.assertIn('"request_id":"r-9"', self.d.logs())  # the turn's log line

    def test_protoset(self):
        """recurd.protoset alone (as grpcurl uses it) describes and can call the API."""
        path = os.environ.get("RECURD_PROTOSET") or os.path.join(
            ROOT, "build", "release", "proto", "recurd.protoset")
        if not os.path.exists(path):
            self.skipTest("protoset not built")
        from google.protobuf import descriptor_pb2, descriptor_pool
        try:
            from google.protobuf.message_factory import GetMessageClass
        except ImportError:  # protobuf < 4.22
            from google.protobuf.message_factory import MessageFactory
            GetMessageClass = lambda d: MessageFactory().GetPrototype(d)  # noqa: E731
        fds = descriptor_pb2.FileDescriptorSet()
        with open(path, "rb") as f:
            fds.ParseFromString(f.read())
        pool = descriptor_pool.DescriptorPool()
        for fd in fds.file:
            pool.Add(fd)
        svc = pool.FindServiceByName("recurd.v1.Inference")
        self.assertIn("Generate", [m.name for m in svc.methods])
        pool.FindServiceByName("grpc.health.v1.Health")
        m = svc.FindMethodByName("Tokenize")
        Req, Resp = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
        call = self.d.channel.unary_unary("/recurd.v1.Inference/Tokenize",
                                          request_serializer=Req.SerializeToString,
                                          response_deserializer=Resp.FromString)
        r = call(Req(text="hello"), timeout=10)
        self.assertEqual(list(r.token_ids),
                         list(self.api.Tokenize(pb.TokenizeRequest(text="hello")).token_ids))

    def test_unknown_method(self):
        call = self.d.channel.unary_unary("/recurd.v1.Inference/NoSuchMethod",
                                          request_serializer=lambda x: x,
                                          response_deserializer=lambda x: x)
        self.assertCode(C.UNIMPLEMENTED, call, b"", timeout=10)
        call = self.d.channel.unary_unary("/other.Service/X", request_serializer=lambda x: x,
                                          response_deserializer=lambda x: x)
        self.assertCode(C.UNIMPLEMENTED, call, b"\x01\x02", timeout=10)

    def test_malformed_request(self):
        call = self.d.channel.unary_unary("/recurd.v1.Inference/GetSession",
                                          request_serializer=lambda x: x,
                                          response_deserializer=lambda x: x)
        self.assertCode(C.INVALID_ARGUMENT, call, b"\xff\xff\xff\xff", timeout=10)

    def test_message_too_big(self):
        self.assertCode(C.RESOURCE_EXHAUSTED, self.api.Tokenize,
                        pb.TokenizeRequest(text="a" * (5 << 20)), timeout=30)

    def test_garbage_bytes(self):
        for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 64,
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 4096):
            with socket.create_connection(("127.0.0.1", self.d.port), timeout=5) as s:
                try:
                    s.sendall(payload)
                    s.settimeout(2)
                    s.recv(4096)
                except (OSError, socket.timeout):
                    pass
        time.sleep(0.2)
        self.assertIsNone(self.d.proc.poll())
        r = self.d.health.Check(hpb.HealthCheckRequest(), timeout=10)
        self.assertEqual(r.status, hpb.HealthCheckResponse.SERVING)


class SecondOnSamePort(unittest.TestCase):
    def test_port_in_use(self):
        d = Daemon()
        try:
            import subprocess
            from rcd_harness import daemon_binary
            p = subprocess.run([daemon_binary(), "--port", str(d.port), "--no-progress"],
                               capture_output=True, timeout=120)
            self.assertNotEqual(p.returncode, 0)
        finally:
            self.assertEqual(d.stop(), 0)


class DefaultThreads(unittest.TestCase):
    def test_threads_follow_the_affinity_mask(self):
        """--threads 0 takes the CPUs the process may run on, not the machine's: under
        `taskset -c 0` one thread, and the ready line says why."""
        if not shutil.which("taskset"):
            self.skipTest("no taskset (util-linux)")
        p = subprocess.Popen(["taskset", "-c", "0", daemon_binary(), "--threads", "0",
                              "--ephemeral", "--port", "0", "--http-port", "-1", "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ready = ""
            deadline = time.time() + 120
            for line in p.stdout:
                if '"event":"ready"' in line:
                    ready = line
                    break
                self.assertLess(time.time(), deadline)
            self.assertIn("1 thread (affinity mask)", ready)
        finally:
            p.terminate()
            p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
