"""recurd integration: the HTTP listener (--http-port). Keep-alive; 404/405 in OpenAI's error
JSON; 413 for a body over --http-max-body-bytes; 431 for too many or too large headers;
--http-max-connections (the next connection is closed at once); the idle and request
timeouts (a keep-alive connection left idle, a slow-loris client sending its headers a line at
a time, and one sending its body a byte at a time, are all cut); a streaming client that never reads: other clients are served
meanwhile, the daemon's RSS stays flat (the queue per stream is bounded) and the reader is cut
after --http-write-timeout-ms; HTTPS with mTLS and HTTP/2 by ALPN, certificates reloaded on
SIGHUP; API keys (401 in OpenAI's shape, /health open); the drain (an open stream finishes,
/health answers 503, new connections are refused, exit 0). The streaming route is the tests'
own (/_test/stream, served with RECURD_HTTP_TEST_ROUTES=1). curl checks the raw framing."""
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from rcd_harness import Daemon, OwnDaemonsTest

TEST_ENV = {"RECURD_HTTP_TEST_ROUTES": "1"}
LIMITS = ["--ephemeral", "--http-max-body-bytes", "4096", "--http-max-headers", "20",
          "--http-max-header-bytes", "2048", "--http-max-connections", "8",
          "--http-idle-timeout-ms", "1500", "--http-request-timeout-ms", "1500",
          "--http-write-timeout-ms", "1500", "--http-max-queued-bytes", "65536"]


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def closed_within(sock, seconds):
    """True when the peer closes sock (EOF or reset) within `seconds`, reading what comes."""
    sock.settimeout(0.2)
    end = time.time() + seconds
    while time.time() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def get(port, path, headers=None, method="GET", body=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r, data


class Listener(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(*LIMITS, env=TEST_ENV)
        cls.port = cls.d.http_port

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            raise AssertionError("recurd exited %d:\n%s" % (rc, cls.d.logs()[-4000:]))

    def assertError(self, r, data, status, code=None):
        self.assertEqual(r.status, status, data)
        e = json.loads(data)["error"]
        self.assertIsInstance(e["message"], str)
        self.assertIsInstance(e["type"], str)
        self.assertIn("param", e)
        self.assertIsNone(e["param"])
        if code:
            self.assertEqual(e["code"], code)
        return e

    def test_port_logged_and_health(self):
        self.assertTrue(self.port and self.port != 8080)
        self.assertRegex(self.d.logs(), r'"event":"http_listening".*"port":"%d"' % self.port)
        r, data = get(self.port, "/health")
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(data)["status"], "SERVING")
        self.assertTrue(r.getheader("x-request-id"))

    def test_metrics_negotiation(self):
        r, data = get(self.port, "/metrics")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("content-type"), "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn(b"# TYPE recurd_build_info", data)
        r, data = get(self.port, "/metrics",
                      headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertEqual(r.getheader("content-type"),
                         "application/openmetrics-text; version=1.0.0; charset=utf-8")
        self.assertTrue(data.endswith(b"# EOF\n"))

    def test_keep_alive(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        get(self.port, "/health", conn=c)
        first = c.sock
        for _ in range(3):
            r, _ = get(self.port, "/health", conn=c)
            self.assertEqual(r.status, 200)
        self.assertIs(c.sock, first)  # one TCP connection for all four
        r, data = get(self.port, "/nope", conn=c)  # an error keeps the connection too
        self.assertEqual(r.status, 404)
        self.assertIs(c.sock, first)
        c.close()

    def test_not_found_and_method(self):
        r, data = get(self.port, "/v0/nothing")
        self.assertError(r, data, 404, "not_found")
        r, data = get(self.port, "/health", method="POST", body=b"{}")
        e = self.assertError(r, data, 405, "method_not_allowed")
        self.assertEqual(e["type"], "invalid_request_error")
        self.assertEqual(r.getheader("allow"), "GET")

    def test_body_too_large(self):
        r, _ = get(self.port, "/health", method="POST", body=b"x" * 5000)
        self.assertEqual(r.status, 413)
        r, _ = get(self.port, "/health", method="POST", body=b"x" * 4000)
        self.assertEqual(r.status, 405)  # under the limit: routed

    def test_header_limits(self):
        r, data = get(self.port, "/health", headers={"x-h%d" % i: "v" for i in range(25)})
        self.assertError(r, data, 431)
        r, data = get(self.port, "/health", headers={"x-big": "v" * 3000})
        self.assertError(r, data, 431)
        r, _ = get(self.port, "/health", headers={"x-h%d" % i: "v" for i in range(10)})
        self.assertEqual(r.status, 200)

    def open_served(self, n, seconds=10):
        """n connections, each served a /health just now. A connection an earlier test closed
        counts until the daemon's loop has seen its end (h2o may linger on one whose body it
        refused), so when one of the n is turned away, all n are closed and tried again."""
        end = time.time() + seconds
        while True:
            socks = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(n)]
            try:
                for s in socks:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                for s in socks:
                    s.settimeout(5)
                    if not s.recv(100).startswith(b"HTTP/1.1 200"):
                        raise ConnectionResetError("closed unanswered")
                return socks
            except OSError:
                for s in socks:
                    s.close()
                if time.time() > end:
                    raise
                time.sleep(0.3)

    def test_max_connections(self):
        # the 8 are served (so all 8 are open and counted), each just now: the 9th comes
        # well inside the 1.5 s idle timeout that would otherwise free a place (the probe
        # after the 9th, as this test had it, could come after that timeout under TSan)
        socks = self.open_served(8)
        try:
            extra = socket.create_connection(("127.0.0.1", self.port))
            try:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass
            self.assertTrue(closed_within(extra, 3), "the 9th connection was served")
            extra.close()
        finally:
            for s in socks:
                s.close()
        time.sleep(0.3)
        r, _ = get(self.port, "/health")  # room again
        self.assertEqual(r.status, 200)

    def test_idle_timeout(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 200"))
        t0 = time.time()
        self.assertTrue(closed_within(s, 10), "an idle keep-alive connection stayed open")
        self.assertGreater(time.time() - t0, 0.5)
        s.close()

    def test_slowloris(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        t0, cut = time.time(), False
        while time.time() - t0 < 10:  # a header line every 100 ms, never the end
            try:
                s.sendall(b"x-a: b\r\n")
            except OSError:
                cut = True
                break
            s.settimeout(0.1)
            try:
                if s.recv(100) == b"":
                    cut = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = True
                break
        self.assertTrue(cut, "a slow client kept its connection 10 s")
        self.assertLess(time.time() - t0, 8)
        s.close()

    def test_slow_body(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        t0, cut = time.time(), False
        while time.time() - t0 < 10:  # a body byte every 100 ms: 100 s for all of it
            try:
                s.sendall(b"x")
            except OSError:
                cut = True
                break
            s.settimeout(0.1)
            try:
                data = s.recv(100)
                if data == b"":
                    cut = True
                    break
                self.assertNotIn(b"405", data)  # never read whole: never routed
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = True
                break
        self.assertTrue(cut, "a slow body kept its connection 10 s")
        s.close()

    def test_stream_framing_curl(self):
        out = subprocess.run(["curl", "-sS", "-N", "--raw", "-i",
                              "http://127.0.0.1:%d/_test/stream?n=3&size=4&ms=20" % self.port],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200", head)
        self.assertIn(b"content-type: text/event-stream", head.lower())
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        # chunked framing, decoded by hand: every event is one chunk
        events, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line, 16)
            if n == 0:
                break
            events.append(rest[:n])
            rest = rest[n + 2:]
        self.assertEqual(b"".join(events), b"data: xxxx\n\n" * 3 + b"data: [DONE]\n\n")

    def test_h2c(self):
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                              "%{http_version} %{http_code}",
                              "http://127.0.0.1:%d/health" % self.port],
                             capture_output=True, timeout=30, text=True)
        self.assertEqual(out.stdout, "2 200", out.stderr)

    def test_never_reading_client(self):
        """A stream of ~4 GB to a client that never reads: the writer pauses at the bound, the
        RSS stays flat, other clients are served, and the reader is cut after the write
        timeout."""
        pid = self.d.proc.pid
        before = rss_kb(pid)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.port))
        s.sendall(b"GET /_test/stream?n=1000000&size=4000 HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.time()
        lat = []
        while time.time() - t0 < 1.0:  # others are served while it stalls
            t = time.time()
            r, _ = get(self.port, "/health")
            self.assertEqual(r.status, 200)
            lat.append(time.time() - t)
        grown = rss_kb(pid) - before
        self.assertLess(max(lat), 1.0)
        self.assertLess(grown, 64 * 1024, "RSS grew %d KiB behind a reader that never reads" % grown)
        deadline = time.time() + 10
        while "http_slow_reader" not in self.d.logs() and time.time() < deadline:
            time.sleep(0.1)
        self.assertIn("http_slow_reader", self.d.logs())
        self.assertTrue(closed_within(s, 10))
        s.close()
        r, _ = get(self.port, "/health")
        self.assertEqual(r.status, 200)


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


class Certs:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, twice (the
    second server certificate under another CN, for the reload)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="recurd-http-tls-")
        p = self.p
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"), "-out",
                p("ca.crt"), "-subj", "/CN=recurd test CA", "-days", "2")
        for name, cn, san in (("server", "localhost", "DNS:localhost,IP:127.0.0.1"),
                              ("server2", "localhost2", "DNS:localhost,IP:127.0.0.1"),
                              ("client", "client", None)):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p(name + ".key"), "-out",
                    p(name + ".csr"), "-subj", "/CN=" + cn)
            ext = p(name + ".ext")
            with open(ext, "w") as f:
                if san:
                    f.write("subjectAltName=%s\n" % san)
                else:
                    f.write("extendedKeyUsage=clientAuth\n")
            openssl("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.crt"), "-CAkey",
                    p("ca.key"), "-CAcreateserial", "-out", p(name + ".crt"), "-days", "2",
                    "-extfile", ext)

    def p(self, name):
        return os.path.join(self.dir, name)


class Https(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = Certs()
        p = cls.c.p
        shutil.copy(p("server.crt"), p("live.crt"))
        shutil.copy(p("server.key"), p("live.key"))
        cls.d = Daemon("--ephemeral", "--tls-cert", p("live.crt"), "--tls-key", p("live.key"),
                       "--tls-client-ca", p("ca.crt"), env=TEST_ENV,
                       creds=__import__("grpc").ssl_channel_credentials(
                           open(p("ca.crt"), "rb").read(), open(p("client.key"), "rb").read(),
                           open(p("client.crt"), "rb").read()))
        cls.port = cls.d.http_port

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        shutil.rmtree(cls.c.dir, ignore_errors=True)
        if rc != 0:
            raise AssertionError("recurd exited %d:\n%s" % (rc, cls.d.logs()[-4000:]))

    def ctx(self, client=True, alpn=None):
        x = ssl.create_default_context(cafile=self.c.p("ca.crt"))
        if client:
            x.load_cert_chain(self.c.p("client.crt"), self.c.p("client.key"))
        if alpn:
            x.set_alpn_protocols(alpn)
        return x

    def test_https_with_client_cert(self):
        c = http.client.HTTPSConnection("localhost", self.port, context=self.ctx(), timeout=10)
        r, data = get(self.port, "/health", conn=c)
        self.assertEqual(r.status, 200)
        c.close()

    def test_http2_by_alpn(self):
        raw = socket.create_connection(("127.0.0.1", self.port))
        s = self.ctx(alpn=["h2", "http/1.1"]).wrap_socket(raw, server_hostname="localhost")
        self.assertEqual(s.selected_alpn_protocol(), "h2")
        s.close()

    def test_no_client_cert_refused(self):
        c = http.client.HTTPSConnection("localhost", self.port, context=self.ctx(client=False),
                                        timeout=10)
        with self.assertRaises((ssl.SSLError, ConnectionResetError, BrokenPipeError,
                                http.client.RemoteDisconnected)):
            get(self.port, "/health", conn=c)
        c.close()

    def test_plaintext_refused(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        self.assertFalse(data.startswith(b"HTTP/1.1 200"))
        s.close()

    def test_reset_clients_free_their_slots(self):
        """TLS clients that reset the connection right after the handshake: H2O 2.2 would keep
        each one forever (a lost write); with 3 connection slots, 8 of them must not lock the
        port."""
        p = self.c.p
        d = Daemon("--ephemeral", "--tls-cert", p("server.crt"), "--tls-key", p("server.key"),
                   "--http-max-connections", "3", "--http-write-timeout-ms", "400",
                   creds=__import__("grpc").ssl_channel_credentials(open(p("ca.crt"), "rb").read()))
        try:
            x = ssl.create_default_context(cafile=p("ca.crt"))
            for _ in range(8):
                raw = socket.create_connection(("127.0.0.1", d.http_port))
                try:
                    s = x.wrap_socket(raw, server_hostname="localhost")
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.close()
                except (ssl.SSLError, OSError):
                    raw.close()  # a slot still held: refused, as it should be while held
                time.sleep(0.3)
            time.sleep(1.0)
            c = http.client.HTTPSConnection("localhost", d.http_port, context=x, timeout=10)
            r, _ = get(d.http_port, "/health", conn=c)
            self.assertEqual(r.status, 200)
            c.close()
        finally:
            self.assertEqual(d.stop(), 0, d.logs()[-3000:])

    def test_sighup_reloads_certificate(self):
        def peer_cn():
            raw = socket.create_connection(("127.0.0.1", self.port))
            s = self.ctx().wrap_socket(raw, server_hostname="localhost")
            cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
            s.close()
            return cn
        self.assertEqual(peer_cn(), "localhost")
        p = self.c.p
        shutil.copy(p("server2.crt"), p("live.crt"))
        shutil.copy(p("server2.key"), p("live.key"))
        self.d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "https:" not in self.d.logs() and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(peer_cn(), "localhost2")
        shutil.copy(p("server.crt"), p("live.crt"))
        shutil.copy(p("server.key"), p("live.key"))


class ApiKeys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = secrets.token_urlsafe(24)
        cls.tmp = tempfile.mkdtemp(prefix="recurd-http-keys-")
        path = os.path.join(cls.tmp, "keys")
        with open(path, "w") as f:
            f.write("%s alice user\n" % hashlib.sha256(cls.key.encode()).hexdigest())
        cls.d = Daemon("--ephemeral", "--api-keys", path, env=TEST_ENV)
        cls.port = cls.d.http_port

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if rc != 0:
            raise AssertionError("recurd exited %d:\n%s" % (rc, cls.d.logs()[-4000:]))

    def test_key_required(self):
        path = "/_test/stream?n=1&size=1"
        for hdr in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": self.key}):
            r, data = get(self.port, path, headers=hdr)
            self.assertEqual(r.status, 401, data)
            e = json.loads(data)["error"]
            self.assertEqual(e["type"], "authentication_error")
            self.assertEqual(e["code"], "unauthenticated")
            self.assertIsNone(e["param"])
        r, data = get(self.port, path, headers={"Authorization": "Bearer " + self.key})
        self.assertEqual(r.status, 200, data)
        self.assertTrue(data.endswith(b"data: [DONE]\n\n"))
        self.assertIn("audit_auth_failure", self.d.logs())

    def test_health_and_metrics_open(self):
        r, _ = get(self.port, "/health")
        self.assertEqual(r.status, 200)
        r, _ = get(self.port, "/metrics")  # scrapers have no key (--metrics-require-key: off)
        self.assertEqual(r.status, 200)

    def test_user_key_naming_tenant_forbidden(self):
        r, data = get(self.port, "/_test/stream?n=1&size=1",
                      headers={"Authorization": "Bearer " + self.key, "x-recurd-tenant": "bob"})
        self.assertEqual(r.status, 403, data)
        self.assertEqual(json.loads(data)["error"]["type"], "permission_error")


class MetricsKey(OwnDaemonsTest):
    def test_metrics_require_key(self):
        key = secrets.token_urlsafe(24)
        path = os.path.join(self.dir, "keys")
        with open(path, "w") as f:
            f.write("%s ops user\n" % hashlib.sha256(key.encode()).hexdigest())
        d = self.spawn("--ephemeral", "--api-keys", path, "--metrics-require-key")
        r, data = get(d.http_port, "/metrics")
        self.assertEqual(r.status, 401, data)
        r, _ = get(d.http_port, "/metrics", headers={"Authorization": "Bearer " + key})
        self.assertEqual(r.status, 200)
        r, _ = get(d.http_port, "/health")
        self.assertEqual(r.status, 200)


class Drain(OwnDaemonsTest):
    def test_stream_finishes_then_exit(self):
        d = self.spawn("--ephemeral", "--drain-grace-ms", "20000", env=TEST_ENV)
        port = d.http_port
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        get(port, "/health", conn=idle)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /_test/stream?n=15&size=8&ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        got = s.recv(4096)
        self.assertIn(b"200", got)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        r, _ = get(port, "/health", conn=idle)  # an open connection: readiness is false
        self.assertEqual(r.status, 503)
        with self.assertRaises(ConnectionRefusedError):  # no new connections
            socket.create_connection(("127.0.0.1", port), timeout=2)
        while b"data: [DONE]" not in got:  # the stream in flight runs to its end
            chunk = s.recv(4096)
            self.assertTrue(chunk, "stream cut during the drain: %r" % got[-200:])
            got += chunk
        self.assertEqual(got.count(b"data: xxxxxxxx"), 15)
        s.close()
        idle.close()
        d.proc.wait(timeout=30)
        self.assertEqual(d.proc.returncode, 0, d.logs()[-3000:])

    def test_grace_cuts_stream(self):
        d = self.spawn("--ephemeral", "--drain-grace-ms", "500", env=TEST_ENV)
        s = socket.create_connection(("127.0.0.1", d.http_port))
        s.sendall(b"GET /_test/stream?n=1000&size=8&ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        self.assertIn(b"200", s.recv(4096))
        t0 = time.time()
        d.proc.send_signal(signal.SIGTERM)
        self.assertTrue(closed_within(s, 10))
        d.proc.wait(timeout=30)
        self.assertLess(time.time() - t0, 10)
        self.assertEqual(d.proc.returncode, 0, d.logs()[-3000:])
        s.close()

    def test_http_off(self):
        d = self.spawn("--ephemeral", "--http-port", "-1")
        self.assertIsNone(d.http_port)
        self.assertIn("http_off", d.logs())


if __name__ == "__main__":
    unittest.main()
