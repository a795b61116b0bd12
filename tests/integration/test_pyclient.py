"""recurd integration: the Python client package (clients/python, module recurd_client) against
the real daemon. The package is built from this tree by pip (rcd_harness.pyclient()). Covers
every API call, streaming, errors as exceptions (status code, details, retry-after-ms),
x-session-id on every session call (recorded by a grpcio server; the daemon refuses a
mismatch), x-recurd-replica, API keys, a new Client resuming a session by id, and retries:
a daemon SIGKILLed and restarted between calls (UNAVAILABLE retried), a stream cut before
its final message (retried, restart delta), and a turn that committed while its stream was
cut (retried with expected_version: refused, TurnConflict, never applied twice). With
--speculate ngram: usage.draft_tokens / accepted_tokens, and speculate=False (SPECULATE_OFF)
gives the same tokens with no drafts."""
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from rcd_harness import (Daemon, DaemonTest, OwnDaemonsTest, free_port,  # noqa: E402
                         gen_request, collect, pyclient)

import grpc  # noqa: E402

rc = pyclient()
C = grpc.StatusCode
KEY = "pyc-key-alice-" + "x" * 32


class CutProxy:
    """A TCP proxy on loopback in front of the daemon. hold=True keeps the daemon's bytes from
    the client (the daemon goes on and commits); cut() closes every connection (the client sees
    its stream end before the final message, as when a balancer's replica dies)."""

    def __init__(self, upstream_port):
        self.up = upstream_port
        self.hold = False
        self.conns = []
        self.all = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.up))
            with self.lock:
                self.conns += [c, u]
                self.all += [c, u]
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src, dst, from_daemon):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if from_daemon and self.hold:
                    continue  # withheld: the client never sees these bytes
                dst.sendall(b)
        except OSError:
            pass
        self._shut((src, dst))

    @staticmethod
    def _shut(socks):
        # shutdown, never close, while a pump may be in recv(): a closed fd number can be
        # reused by the next connection; close() closes them all at the end
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
        self._shut(conns)

    def close(self):
        self.ls.close()
        self.cut()
        for s in self.all:
            s.close()


class Api(DaemonTest):
    daemon_args = ("--replica-name", "py-r1")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.c = rc.Client(cls.d.addr, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        super().tearDownClass()

    def test_models_tokenize_health(self):
        models = self.c.list_models()
        raw = self.api.ListModels(rc.pb.ListModelsRequest()).models
        self.assertEqual([m.id for m in models], [m.id for m in raw])
        self.assertEqual(models[0].vocab_size, raw[0].vocab_size)
        self.assertEqual(models[0].fingerprint, raw[0].fingerprint)
        self.assertEqual(self.c.last_replica, "py-r1")
        ids = self.c.tokenize("Hello world")
        self.assertGreater(len(ids), 1)
        self.assertEqual(ids, list(self.api.Tokenize(
            rc.pb.TokenizeRequest(text="Hello world")).token_ids))
        self.assertEqual(self.c.detokenize(ids), "Hello world")
        self.assertEqual(self.c.health(), "SERVING")
        with self.assertRaises(rc.NotFound):
            self.c.health("no.such.Service")
        with self.assertRaises(rc.InvalidArgument) as cm:
            self.c.detokenize([10 ** 9])
        self.assertEqual(cm.exception.code, C.INVALID_ARGUMENT)
        self.assertIn("outside", cm.exception.details)

    def test_generate_streams(self):
        s = self.c.generate([1, 2, 3], max_tokens=12, temperature=0, ignore_eos=True,
                            logprobs=2)
        deltas = list(s)
        self.assertGreater(len(deltas), 1, "a stream of several deltas")
        r = s.result
        self.assertEqual(r.finish_reason, "length")
        self.assertEqual(len(r.token_ids), 12)
        self.assertEqual(r.token_ids, tuple(t for d in deltas for t in d.token_ids))
        self.assertEqual(r.text, "".join(d.text for d in deltas))
        self.assertEqual(len(r.logprobs), 12)
        self.assertEqual(len(r.logprobs[0].top), 2)
        self.assertEqual(r.logprobs[0].token_id, r.token_ids[0])
        self.assertEqual(r.usage.prompt_tokens, 3)
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertEqual(r.session_version, 0)
        self.assertEqual(r.replica, "py-r1")
        # the same as the raw stub
        _, ids, lps, _ = collect(self.api.Generate(gen_request(
            tokens=[1, 2, 3], max_tokens=12, temperature=0, ignore_eos=True)))
        self.assertEqual(list(r.token_ids), ids)
        t = self.c.generate("Once upon a time", max_tokens=5, temperature=0.8, seed=7,
                            stop=["zzzz"]).collect()
        t2 = self.c.generate("Once upon a time", max_tokens=5, temperature=0.8,
                             seed=7).collect()
        self.assertEqual(t.token_ids, t2.token_ids)
        with self.assertRaises(rc.InvalidArgument):
            self.c.generate("x", priority=4).collect()

    def test_session_lifecycle(self):
        s = self.c.create_session(metadata={"app": "pyclient"}, owner="team-a", ttl_seconds=600)
        self.assertTrue(s.id.startswith("s-"))
        self.assertEqual(s.version, 0)
        self.assertEqual(s.info.metadata, {"app": "pyclient"})
        self.assertEqual((s.info.owner, s.info.ttl_seconds), ("team-a", 600))
        r1 = s.turn([5, 6, 7], max_tokens=6, temperature=0, ignore_eos=True).collect()
        self.assertEqual((r1.session_version, s.version, r1.session_id), (1, 1, s.id))
        stream = s.turn([8, 9], max_tokens=6, temperature=0, ignore_eos=True)
        pieces = [d.token_ids for d in stream]
        r2 = stream.result
        self.assertEqual(s.version, 2)
        self.assertEqual(tuple(t for p in pieces for t in p), r2.token_ids)
        # turn 2 continues turn 1: one stateless run over the whole history gives its tokens
        ref = self.c.generate([5, 6, 7] + list(r1.token_ids) + [8, 9], max_tokens=6,
                              temperature=0, ignore_eos=True).collect()
        self.assertEqual(ref.token_ids, r2.token_ids)
        info = self.c.get_session(s.id).info
        self.assertEqual((info.version, info.token_count), (2, 3 + 6 + 2 + 6))
        # fork: same continuation as the source
        f = s.fork(metadata={"k": "v"})
        self.assertEqual((f.version, f.info.parent_session_id), (2, s.id))
        a = s.turn([4], max_tokens=5, temperature=0, ignore_eos=True).collect()
        b = f.turn([4], max_tokens=5, temperature=0, ignore_eos=True).collect()
        self.assertEqual(a.token_ids, b.token_ids)
        self.assertEqual((s.version, f.version), (3, 3))
        f2 = self.c.fork_session(s.id, "pyc-fork-2")
        self.assertEqual((f2.id, f2.version), ("pyc-fork-2", 3))
        for x in (s, f, f2):
            x.delete()
            with self.assertRaises(rc.NotFound):
                self.c.get_session(x.id)
        with self.assertRaises(rc.NotFound) as cm:
            self.c.delete_session(s.id)
        self.assertEqual(cm.exception.attempts, 1)

    def test_errors(self):
        s = self.c.create_session("pyc-err")
        with self.assertRaises(rc.AlreadyExists):
            self.c.create_session("pyc-err")
        with self.assertRaises(rc.NotFound):
            self.c.session("pyc-nobody").turn("hi", max_tokens=1).collect()
        # expected_version mismatch: FAILED_PRECONDITION, not a TurnConflict (first attempt)
        with self.assertRaises(rc.FailedPrecondition) as cm:
            s.turn([1], max_tokens=1, expected_version=5).collect()
        self.assertNotIsInstance(cm.exception, rc.TurnConflict)
        self.assertEqual(self.c.get_session(s.id).version, 0)
        # a second turn while one runs: ABORTED
        long = s.turn([1, 2], max_tokens=4000, ignore_eos=True, temperature=0)
        next(long)
        with self.assertRaises(rc.Aborted) as cm:
            s.turn([3], max_tokens=1).collect()
        self.assertEqual(cm.exception.code, C.ABORTED)
        long.cancel()
        with self.assertRaises(rc.Cancelled):
            for _ in long:
                pass
        time.sleep(0.2)
        self.assertEqual(s.refresh().version, 0)  # a cancelled turn commits nothing
        # a turn without expected_version (None: no check)
        r = s.turn([1], max_tokens=2, expected_version=None).collect()
        self.assertEqual(r.session_version, 1)
        s.delete()

    def test_resume_with_new_client(self):
        s = self.c.create_session()
        s.turn([11, 12, 13], max_tokens=4, temperature=0, ignore_eos=True).collect()
        ref = s.fork()
        with rc.Client(self.d.addr) as c2:
            s2 = c2.get_session(s.id)  # resumes by id on a new connection
            self.assertEqual(s2.version, 1)
            a = s2.turn([14], max_tokens=5, temperature=0, ignore_eos=True).collect()
            h = c2.session(s.id)  # a handle with no call: its turn asks for the version
            h.turn([15], max_tokens=1, temperature=0).collect()
            self.assertEqual(h.version, 3)
            c2.reconnect()  # a new channel: the handle goes on
            h.turn([16], max_tokens=1, temperature=0).collect()
            self.assertEqual((h.version, s2.refresh().version), (4, 4))
            # leaving a `with` block early cancels the turn: nothing commits
            with h.turn([1], max_tokens=4000, ignore_eos=True) as st:
                next(st)
            with self.assertRaises(rc.Cancelled):
                st.collect()
            time.sleep(0.2)
            self.assertEqual(h.refresh().version, 4)
            # so does dropping a stream part-read: the next turn is not refused ABORTED
            st = h.turn([1], max_tokens=4000, ignore_eos=True)
            next(st)
            del st
            self.assertEqual(h.turn([2], max_tokens=1).collect().session_version, 5)
            r = c2.turn(s.session_id, [3], max_tokens=1).collect()  # by id: asks the version
            self.assertEqual(r.session_version, 6)
        b = ref.turn([14], max_tokens=5, temperature=0, ignore_eos=True).collect()
        self.assertEqual(a.token_ids, b.token_ids)
        s.delete()
        ref.delete()


class Speculating(DaemonTest):
    """Speculative decoding through the client: usage.draft_tokens / accepted_tokens, and
    speculate=False (SPECULATE_OFF) with the same tokens and no drafts."""
    daemon_args = ("--ephemeral", "--speculate", "ngram", "--spec-adaptive", "off")

    def test_usage_and_speculate_off(self):
        with rc.Client(self.d.addr, timeout=120) as c:
            kw = dict(max_tokens=40, temperature=0, ignore_eos=True)
            first = c.generate("Once upon a time", speculate=False, **kw).collect()
            text = "Once upon a time" + first.text + "Once upon a time"  # copy-heavy
            on = c.generate(text, **kw).collect()
            off = c.generate(text, speculate=False, **kw).collect()
            self.assertEqual(on.token_ids, off.token_ids)
            self.assertGreater(on.usage.accepted_tokens, 0, on.usage)
            self.assertGreaterEqual(on.usage.draft_tokens, on.usage.accepted_tokens)
            self.assertEqual((off.usage.draft_tokens, off.usage.accepted_tokens), (0, 0))
            s = c.create_session()
            t = s.turn(text, speculate=False, **kw).collect()
            self.assertEqual(t.token_ids, off.token_ids)
            self.assertEqual(t.usage.draft_tokens, 0)


class Example(DaemonTest):
    daemon_args = ("--ephemeral",)

    def test_examples_client(self):
        """examples/client.py runs on the package: two turns, a fork, both versions."""
        import subprocess
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(rc.__file__)))
        r = subprocess.run([sys.executable, os.path.join(root, "examples", "client.py"),
                            "--addr", self.d.addr, "--max-tokens", "5"],
                           capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("ModelInfo(id="), lines)
        self.assertEqual(sum("session version" in ln for ln in lines), 3, r.stdout)
        self.assertTrue(any(ln.startswith("forked s-") and ln.endswith("at version 2")
                            for ln in lines), r.stdout)
        self.assertTrue(lines[-2].endswith(": version 2, %s tokens" % lines[-2].split()[-2]))
        self.assertIn(": version 3, ", lines[-1])


class Recorded(unittest.TestCase):
    """A grpcio server that records each call's metadata: the client sends x-session-id (the
    session's id; a fork's is the source's) on every session call and none otherwise, and the
    API key as authorization: Bearer."""

    def test_metadata(self):
        from concurrent import futures
        seen = []

        class Record(grpc.GenericRpcHandler):
            def service(self, details):
                md = dict(details.invocation_metadata)
                seen.append((details.method.rsplit("/", 1)[-1], md.get("x-session-id"),
                             md.get("authorization")))

                def fail(req, ctx):
                    ctx.abort(C.NOT_FOUND, "recording only")
                if details.method.endswith("/Generate"):
                    return grpc.unary_stream_rpc_method_handler(fail)
                return grpc.unary_unary_rpc_method_handler(fail)

        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[Record()])
        port = srv.add_insecure_port("127.0.0.1:0")
        srv.start()
        try:
            c = rc.Client("127.0.0.1:%d" % port, api_key="k1", retries=0, timeout=10)
            calls = [lambda: c.create_session("c1"), lambda: c.get_session("g1"),
                     lambda: c.fork_session("f1", "f2"), lambda: c.delete_session("d1"),
                     lambda: c.session("t1", 0).turn("hi").collect(),
                     lambda: c.generate("hi").collect(), lambda: c.list_models(),
                     lambda: c.tokenize("x"), lambda: c.detokenize([1]),
                     lambda: c.create_session()]
            for fn in calls:
                with self.assertRaises(rc.NotFound):
                    fn()
            c.close()
        finally:
            srv.stop(0)
        self.assertEqual([s[:2] for s in seen[:9]], [
            ("CreateSession", "c1"), ("GetSession", "g1"), ("ForkSession", "f1"),
            ("DeleteSession", "d1"), ("Generate", "t1"), ("Generate", None),
            ("ListModels", None), ("Tokenize", None), ("Detokenize", None)])
        self.assertEqual(seen[9][0], "CreateSession")
        self.assertTrue(seen[9][1].startswith("s-"))  # the client picks the id and routes it
        self.assertEqual({s[2] for s in seen}, {"Bearer k1"})


class ApiKeys(unittest.TestCase):
    def test_api_key(self):
        import hashlib
        tmp = tempfile.mkdtemp(prefix="recurd-pyc-")
        keys = os.path.join(tmp, "keys")
        with open(keys, "w") as f:
            f.write("%s alice user\n" % hashlib.sha256(KEY.encode()).hexdigest())
        d = Daemon("--ephemeral", "--api-keys", keys, "--tenant-max-sessions", "1")
        try:
            with self.assertRaises(rc.Unauthenticated):
                rc.Client(d.addr).list_models()
            with self.assertRaises(rc.Unauthenticated):
                rc.Client(d.addr, api_key="w" + KEY[1:]).list_models()
            c = rc.Client(d.addr, api_key=KEY)
            self.assertTrue(c.list_models())
            s = c.create_session()
            self.assertEqual(s.turn([1, 2], max_tokens=2).collect().session_version, 1)
            with self.assertRaises(rc.ResourceExhausted) as cm:
                c.create_session()  # quota: the hint comes as retry_after_ms
            self.assertEqual(cm.exception.retry_after_ms, 60000)
            self.assertIn("--tenant-max-sessions", cm.exception.details)
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)
            shutil.rmtree(tmp, ignore_errors=True)


@unittest.skipUnless(shutil.which("openssl"), "the openssl command is not installed")
class Tls(unittest.TestCase):
    """TLS options: a daemon with mTLS (certificates made by the openssl CLI): root
    certificates and a client certificate as paths or bytes, server_name."""

    def test_mtls(self):
        import subprocess
        tmp = tempfile.mkdtemp(prefix="recurd-pyc-tls-")

        def ossl(*a):
            subprocess.run(["openssl"] + list(a), check=True, capture_output=True, cwd=tmp)

        def pth(n):
            return os.path.join(tmp, n)

        for ca in ("ca", "clientca"):
            ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", ca + ".key", "-out", ca + ".crt", "-days", "2", "-subj",
                 "/CN=recurd pyclient " + ca)
        for name, ca, usage in (("server", "ca", "serverAuth"),
                                ("client", "clientca", "clientAuth")):
            with open(pth(name + ".ext"), "w") as f:
                f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=%s\n"
                        % usage)
            ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
            ossl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
                 "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile",
                 name + ".ext")
        with open(pth("ca.crt"), "rb") as f:
            ca_pem = f.read()
        with open(pth("client.crt"), "rb") as f:
            cert_pem = f.read()
        with open(pth("client.key"), "rb") as f:
            key_pem = f.read()
        d = Daemon("--ephemeral", "--tls-cert", pth("server.crt"), "--tls-key", pth("server.key"),
                   "--tls-client-ca", pth("clientca.crt"),
                   creds=grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem))
        local = [("grpc.use_local_subchannel_pool", 1)]  # no connection shared between cases
        try:
            c = rc.Client(d.addr, root_certificates=pth("ca.crt"),
                          certificate_chain=pth("client.crt"), private_key=pth("client.key"),
                          timeout=60, channel_options=local)
            s = c.create_session()
            self.assertEqual(s.turn("Hello", max_tokens=3).collect().session_version, 1)
            c.close()
            c = rc.Client("localhost:%d" % d.port, root_certificates=ca_pem,
                          certificate_chain=cert_pem, private_key=key_pem,
                          server_name="localhost", timeout=60, channel_options=local)
            self.assertEqual(c.health(), "SERVING")
            c.close()
            for kw in ({"root_certificates": ca_pem},  # no client certificate
                       {"root_certificates": ca_pem, "certificate_chain": cert_pem,
                        "private_key": key_pem, "server_name": "other.example"}, {}):
                c = rc.Client(d.addr, retries=0, timeout=10, channel_options=local, **kw)
                with self.assertRaises(rc.Unavailable, msg=str(kw)):
                    c.list_models()
                c.close()
            with self.assertRaises(ValueError):
                rc.Client(d.addr, certificate_chain=cert_pem)
        finally:
            self.assertEqual(d.stop(), 0)
            shutil.rmtree(tmp, ignore_errors=True)


class Retries(OwnDaemonsTest):
    def test_restart_between_calls(self):
        """SIGKILL the daemon, restart it on the same port and state dir while the client
        calls: the client retries UNAVAILABLE and the session goes on from its last
        acknowledged version."""
        port = free_port()
        state = os.path.join(self.dir, "state")
        d = self.spawn("--port", str(port), "--state-dir", state)
        self.assertEqual(d.port, port)
        c = rc.Client("127.0.0.1:%d" % port, retries=600, retry_backoff=0.05,
                      max_retry_backoff=0.2, timeout=120)
        s = c.create_session()
        r1 = s.turn([3, 4, 5], max_tokens=4, temperature=0, ignore_eos=True).collect()
        self.kill(d)
        restarted = []
        t = threading.Thread(target=lambda: (time.sleep(0.5), restarted.append(
            self.spawn("--port", str(port), "--state-dir", state))))
        t.start()
        try:
            st = s.turn([6], max_tokens=4, temperature=0, ignore_eos=True)
            r2 = st.collect()
        finally:
            t.join()
        self.assertGreater(st.attempts, 1, "the first attempt found no daemon")
        self.assertEqual((r2.session_version, s.version), (2, 2))
        ref = c.generate([3, 4, 5] + list(r1.token_ids) + [6], max_tokens=4, temperature=0,
                         ignore_eos=True).collect()
        self.assertEqual(ref.token_ids, r2.token_ids)
        self.assertEqual(c.get_session(s.id).version, 2)
        c.close()

    def test_cut_streams(self):
        d = self.spawn("--ephemeral")
        p = CutProxy(d.port)
        direct = rc.Client(d.addr, timeout=120)
        c = rc.Client(p.addr, retries=8, retry_backoff=0.05, timeout=120)
        try:
            s = c.create_session()
            s.turn([1, 2], max_tokens=3, temperature=0, ignore_eos=True).collect()
            ref = direct.fork_session(s.id)
            want = ref.turn([7, 8], max_tokens=300, temperature=0, ignore_eos=True).collect()

            # 1. cut after the first delta (300 tokens: the turn does not end before the cut reaches
            # it); the daemon sees its client gone and cancels (or,
            # rarely, has committed already); the retry carries expected_version 1
            st = s.turn([7, 8], max_tokens=300, temperature=0, ignore_eos=True)
            deltas = []
            conflict = None
            try:
                for dl in st:
                    deltas.append(dl)
                    if len(deltas) == 1:
                        p.cut()
            except rc.TurnConflict as e:
                conflict = e
            if conflict is None:
                self.assertGreaterEqual(st.attempts, 2)  # ABORTED while the cut one ends
                self.assertEqual(st.result.token_ids, want.token_ids)
                self.assertEqual(st.result.session_version, 2)
                restarts = [i for i, dl in enumerate(deltas) if dl.restart]
                self.assertEqual(len(restarts), 1, "the retried attempt's first delta restarts")
                self.assertEqual(tuple(t for dl in deltas[restarts[0]:] for t in dl.token_ids),
                                 want.token_ids)
            else:
                self.assertEqual((conflict.expected_version, conflict.session_version), (1, 2))
            self.assertEqual(direct.get_session(s.id).version, 2, "applied exactly once")
            self.assertEqual(s.version, 2)

            # 2. the turn commits while the client hears nothing, then the stream is cut:
            # the retry (same expected_version) is refused, never applied a second time
            p.hold = True
            st = s.turn([9], max_tokens=3, temperature=0, ignore_eos=True)
            got = []
            th = threading.Thread(target=lambda: got.append(self._drain(st)))
            th.start()
            deadline = time.time() + 60
            while direct.get_session(s.id).version != 3:
                self.assertLess(time.time(), deadline, "the held turn never committed")
                time.sleep(0.05)
            p.hold = False
            p.cut()
            th.join(60)
            self.assertIsInstance(got[0], rc.TurnConflict, got)
            self.assertEqual((got[0].expected_version, got[0].session_version), (2, 3))
            self.assertEqual(got[0].code, C.FAILED_PRECONDITION)
            self.assertEqual(s.version, 3)  # refreshed
            self.assertEqual(direct.get_session(s.id).version, 3, "never applied twice")

            # 3. with retries off the cut is reported as StreamCut, and the session is still
            # where it was (the version the turn started from). A fast daemon can send the whole
            # turn before the cut reaches the connection: then the turn simply completed (and
            # committed), so it is tried again, longer, until a cut lands mid-stream.
            c0 = rc.Client(p.addr, retries=0, timeout=120)
            s0 = c0.get_session(s.id)
            cut_seen = False
            for max_tokens in (200, 1000, 3000, 3000, 3000):
                v0 = s0.version
                st = s0.turn([1], max_tokens=max_tokens, temperature=0, ignore_eos=True)
                try:
                    for i, _ in enumerate(st):
                        if i == 0:
                            p.cut()
                except rc.StreamCut:
                    cut_seen = True
                    self.assertEqual(s0.version, v0)
                    self.assertEqual(direct.get_session(s.id).version, v0, "not committed")
                    break
                self.assertEqual(s0.version, v0 + 1)  # completed before the cut: committed
            self.assertTrue(cut_seen, "no cut landed mid-stream in five turns")
            c0.close()

            # 4. a stateless generate cut mid-stream is simply run again (as in 3, a stream that
            # arrived whole before the cut is tried again, longer, until a cut lands)
            retried = False
            for max_tokens in (40, 400, 3000, 3000, 3000):
                st = c.generate([5, 5], max_tokens=max_tokens, temperature=0, ignore_eos=True)
                n = 0
                for _ in st:
                    n += 1
                    if n == 1:
                        p.cut()
                self.assertEqual(len(st.result.token_ids), max_tokens)
                if st.attempts >= 2:
                    retried = True
                    break
            self.assertTrue(retried, "no cut landed mid-stream in five generates")
        finally:
            c.close()
            direct.close()
            p.close()

    @staticmethod
    def _drain(st):
        try:
            return st.collect()
        except rc.RecurdError as e:
            return e


if __name__ == "__main__":
    unittest.main()
