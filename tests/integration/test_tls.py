"""TLS and mTLS on the gRPC port, with certificates made at test time by the openssl CLI: TLS
Generate/health (Check and Watch), a plaintext client and a client trusting another CA refused;
mTLS with a good client certificate, none, and one from another CA; SIGHUP reloading the
server certificate (to one of a second CA) while a Generate stream is open — the stream
completes, the old connection keeps serving, new connections get the new certificate — and a
broken or mismatched file on SIGHUP keeping the previous one; recurctl over TLS and mTLS; bad
files and option combinations refused at startup, naming the file."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import grpc

from rcd_harness import Daemon, DaemonTest, OwnDaemonsTest, Stub, collect, daemon_binary, \
    gen_request, hpb, pb, recurctl_binary

if not shutil.which("openssl"):
    print("SKIP: the openssl command is not installed (tools/install-deps.sh installs it)")
    raise SystemExit(77)

CERTS = tempfile.mkdtemp(prefix="recurd-tls-")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=CERTS)


def _ca(name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", name + ".key", "-out", name + ".crt", "-days", "2", "-subj",
             "/CN=recurd test " + name)


def _leaf(name, ca, usage):
    ext = os.path.join(CERTS, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=%s\n" % usage)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
             "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", ext)


def setUpModule():
    for ca in ("ca1", "ca2", "clientca", "otherca"):
        _ca(ca)
    _leaf("server1", "ca1", "serverAuth")
    _leaf("server2", "ca2", "serverAuth")
    _leaf("client", "clientca", "clientAuth")
    _leaf("intruder", "otherca", "clientAuth")


def tearDownModule():
    shutil.rmtree(CERTS, ignore_errors=True)


def p(name):
    return os.path.join(CERTS, name)


def read(name):
    with open(p(name), "rb") as f:
        return f.read()


def creds(ca="ca1", client=None):
    """Channel credentials trusting `ca`, with the client certificate `client` if given."""
    if client:
        return grpc.ssl_channel_credentials(read(ca + ".crt"), read(client + ".key"),
                                            read(client + ".crt"))
    return grpc.ssl_channel_credentials(read(ca + ".crt"))


def channel(addr, c=None):
    # A channel of its own (no subchannel shared with an earlier one): a new connection and so
    # a new handshake.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    return grpc.secure_channel(addr, c, opts) if c else grpc.insecure_channel(addr, opts)


def health(ch, timeout=10):
    h = Stub(ch, hpb.DESCRIPTOR.services_by_name["Health"], hpb)
    return h.Check(hpb.HealthCheckRequest(), timeout=timeout).status


class TlsMixin:
    def assertRefused(self, ch):
        with self.assertRaises(grpc.RpcError) as cm:
            health(ch)
        self.assertEqual(cm.exception.code(), UNAVAILABLE, cm.exception.details())
        ch.close()

    def ctl(self, *args, rc=0, env=None):
        e = dict(os.environ)
        e.update(env or {})
        r = subprocess.run([recurctl_binary(), "--addr", self.d.addr, "--timeout", "30"] +
                           list(args), capture_output=True, text=True, timeout=120, env=e)
        self.assertEqual(r.returncode, rc, r.stderr)
        return r.stdout, r.stderr


class Tls(DaemonTest, TlsMixin):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--ephemeral", "--tls-cert", p("server1.crt"), "--tls-key",
                       p("server1.key"), creds=creds("ca1"))
        cls.api = cls.d.api

    def test_generate_and_health(self):
        text, ids, _, last = collect(self.api.Generate(
            gen_request("Once upon a time", max_tokens=8, temperature=0), timeout=60))
        self.assertEqual(len(ids), 8)
        self.assertEqual(last.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(self.d.health.Check(hpb.HealthCheckRequest(), timeout=10).status,
                         hpb.HealthCheckResponse.SERVING)
        w = self.d.health.Watch(hpb.HealthCheckRequest(), timeout=10)
        self.assertEqual(next(w).status, hpb.HealthCheckResponse.SERVING)
        w.cancel()
        self.assertIn("TLS", self.d.logs())
        self.assertNotIn("plaintext_listen_all", self.d.logs())

    def test_plaintext_client_refused(self):
        self.assertRefused(channel(self.d.addr))

    def test_other_ca_refused(self):
        self.assertRefused(channel(self.d.addr, creds("ca2")))

    def test_server_name(self):
        # the certificate names localhost and 127.0.0.1, nothing else
        ch = grpc.secure_channel(self.d.addr, creds("ca1"),
                                 [("grpc.ssl_target_name_override", "other.example"),
                                  ("grpc.use_local_subchannel_pool", 1)])
        self.assertRefused(ch)

    def test_recurctl(self):
        self.assertEqual(self.ctl("--tls-ca", p("ca1.crt"), "health")[0].strip(), "SERVING")
        out, _ = self.ctl("--tls-ca", p("ca1.crt"), "--tls-server-name", "localhost", "generate",
                          "--max-tokens", "4", "--temperature", "0", "Hello")  # greedy: ",\n\nThe"
        self.assertTrue(out)
        self.ctl("health", env={"RECURCTL_TLS_CA": p("ca1.crt")})
        self.ctl("health", rc=14)  # plaintext
        self.ctl("--tls-ca", p("ca2.crt"), "health", rc=14)
        self.ctl("--tls-ca", p("ca1.crt"), "--tls-server-name", "other.example", "health", rc=14)
        _, err = self.ctl("--tls-ca", p("missing.crt"), "health", rc=2)
        self.assertIn("missing.crt", err)


class Mtls(DaemonTest, TlsMixin):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--ephemeral", "--tls-cert", p("server1.crt"), "--tls-key",
                       p("server1.key"), "--tls-client-ca", p("clientca.crt"),
                       creds=creds("ca1", "client"))
        cls.api = cls.d.api

    def test_good_client_cert(self):
        _, ids, _, _ = collect(self.api.Generate(
            gen_request("Hello", max_tokens=4, temperature=0), timeout=60))
        self.assertEqual(len(ids), 4)
        ch = channel(self.d.addr, creds("ca1", "client"))
        self.assertEqual(health(ch), hpb.HealthCheckResponse.SERVING)
        ch.close()
        self.assertIn("mTLS", self.d.logs())

    def test_no_client_cert_refused(self):
        self.assertRefused(channel(self.d.addr, creds("ca1")))

    def test_client_cert_of_other_ca_refused(self):
        self.assertRefused(channel(self.d.addr, creds("ca1", "intruder")))

    def test_plaintext_refused(self):
        self.assertRefused(channel(self.d.addr))

    def test_recurctl(self):
        tls = ["--tls-ca", p("ca1.crt")]
        self.assertEqual(self.ctl(*tls, "--tls-cert", p("client.crt"), "--tls-key",
                                  p("client.key"), "health")[0].strip(), "SERVING")
        self.ctl(*tls, "health", rc=14)
        self.ctl(*tls, "--tls-cert", p("intruder.crt"), "--tls-key", p("intruder.key"),
                 "health", rc=14)
        _, err = self.ctl(*tls, "--tls-cert", p("client.crt"), "health", rc=2)
        self.assertIn("--tls-key", err)


class Reload(OwnDaemonsTest, TlsMixin):
    """SIGHUP swaps the files behind --tls-cert/--tls-key for new handshakes only."""

    def install(self, crt, key):
        for src, dst in ((crt, "server.crt"), (key, "server.key")):
            tmp = os.path.join(self.dir, dst + ".tmp")
            shutil.copyfile(src if os.path.isabs(src) else p(src), tmp)
            os.replace(tmp, os.path.join(self.dir, dst))

    def sighup(self, d, n_reload_lines):
        """Sends SIGHUP and waits for the n-th "reload" log line; returns the log."""
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while time.time() < deadline:
            logs = d.logs()
            if logs.count('"event":"reload"') >= n_reload_lines:
                return logs
            time.sleep(0.05)
        self.fail("no reload logged:\n" + d.logs()[-3000:])

    def test_sighup_reload(self):
        self.install("server1.crt", "server1.key")
        d = Daemon("--ephemeral", "--tls-cert", os.path.join(self.dir, "server.crt"),
                   "--tls-key", os.path.join(self.dir, "server.key"), creds=creds("ca1"))
        self.daemons.append(d)
        # Two streams on the first connection, open across the reloads: a long Generate, and a
        # health Watch that stays open until the drain at the end.
        watch = d.health.Watch(hpb.HealthCheckRequest(), timeout=300)
        self.assertEqual(next(watch).status, hpb.HealthCheckResponse.SERVING)
        # About 10 s of tokens at this build's speed (sanitizers are 10-50x slower), at most 3000.
        t = time.time()
        collect(d.api.Generate(gen_request("Once upon a time", max_tokens=32, ignore_eos=True),
                               timeout=120))
        want = max(64, min(3000, int(10 * 32 / (time.time() - t))))
        stream = d.api.Generate(gen_request("Once upon a time", max_tokens=want, ignore_eos=True,
                                            temperature=0), timeout=300)
        first = next(stream)
        n = len(first.token_ids)
        self.install("server2.crt", "server2.key")
        logs = self.sighup(d, 1)
        self.assertIn("server.crt", logs.split('"event":"reload"')[-1])
        # new connections: the new certificate (only CA 2 is trusted now)
        ch = channel(d.addr, creds("ca2"))
        self.assertEqual(health(ch), hpb.HealthCheckResponse.SERVING)
        ch.close()
        self.assertRefused(channel(d.addr, creds("ca1")))
        # the first connection still serves new calls with its handshake
        self.assertEqual(d.health.Check(hpb.HealthCheckRequest(), timeout=10).status,
                         hpb.HealthCheckResponse.SERVING)
        # a broken certificate file: logged as an error, the previous one stays
        with open(os.path.join(self.dir, "server.crt"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\ngarbage\n")
        logs = self.sighup(d, 2)
        self.assertRegex(logs, r'"level":"error","event":"reload".*server\.crt')
        ch = channel(d.addr, creds("ca2"))
        self.assertEqual(health(ch), hpb.HealthCheckResponse.SERVING)
        ch.close()
        self.assertRefused(channel(d.addr, creds("ca1")))
        # a key that is not the certificate's: refused too, naming the key
        self.install("server1.crt", "server2.key")
        logs = self.sighup(d, 3)
        self.assertRegex(logs, r'"level":"error","event":"reload".*server\.key does not match')
        ch = channel(d.addr, creds("ca2"))
        self.assertEqual(health(ch), hpb.HealthCheckResponse.SERVING)
        ch.close()
        # the stream opened before the first reload was never interrupted
        self.assertIsNone(d.proc.poll())
        for m in stream:
            n += len(m.token_ids)
            last = m
        self.assertEqual(n, want)
        self.assertEqual(last.finish_reason, pb.FINISH_REASON_LENGTH)
        logs = d.logs()
        self.assertLess(logs.index('"event":"reload"'), logs.rindex('"event":"turn_done"'),
                        "the turn ended before the first reload")
        # and back to the first certificate
        self.install("server1.crt", "server1.key")
        self.sighup(d, 4)
        ch = channel(d.addr, creds("ca1"))
        self.assertEqual(health(ch), hpb.HealthCheckResponse.SERVING)
        ch.close()
        self.assertRefused(channel(d.addr, creds("ca2")))
        self.assertNotIn("drain", d.logs())
        # the Watch opened before the first reload still hears the drain
        d.proc.send_signal(signal.SIGTERM)
        self.assertEqual(next(watch).status, hpb.HealthCheckResponse.NOT_SERVING)
        watch.cancel()
        self.assertEqual(d.proc.wait(timeout=60), 0)


class Startup(unittest.TestCase):
    """Bad TLS options and files: the daemon exits 1 (2 for option errors) naming the cause."""

    def start(self, *args, rc=1):
        r = subprocess.run([daemon_binary(), "--ephemeral", "--port", "0", "--no-progress"] +
                           list(args), capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, rc, r.stderr)
        return r.stderr

    def test_pairs(self):
        self.assertIn("--tls-cert needs --tls-key", self.start("--tls-cert", p("server1.crt")))
        self.assertIn("--tls-key needs --tls-cert", self.start("--tls-key", p("server1.key")))
        self.assertIn("--tls-client-ca needs --tls-cert",
                      self.start("--tls-client-ca", p("clientca.crt")))

    def test_bad_files(self):
        err = self.start("--tls-cert", p("nope.crt"), "--tls-key", p("server1.key"))
        self.assertIn("nope.crt", err)
        err = self.start("--tls-cert", p("server1.crt"), "--tls-key", p("server2.key"))
        self.assertIn("server2.key does not match", err)
        err = self.start("--tls-cert", p("server1.key"), "--tls-key", p("server1.key"))
        self.assertIn("no PEM certificate", err)
        err = self.start("--tls-cert", p("server1.crt"), "--tls-key", p("server1.key"),
                         "--tls-client-ca", p("server1.ext"))
        self.assertIn("server1.ext", err)

    def test_env(self):
        e = dict(os.environ, RECURD_TLS_CERT=p("server1.crt"))
        r = subprocess.run([daemon_binary(), "--ephemeral", "--port", "0", "--no-progress"],
                           capture_output=True, text=True, timeout=120, env=e)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--tls-cert needs --tls-key", r.stderr)

    def test_plaintext_listen_all_warns(self):
        d = Daemon("--ephemeral", "--listen-all")
        try:
            self.assertRegex(d.logs(), r'"level":"warn","event":"plaintext_listen_all"')
        finally:
            self.assertEqual(d.stop(), 0)
        d = Daemon("--ephemeral")
        try:
            self.assertNotIn("plaintext_listen_all", d.logs())
            # SIGHUP without TLS: nothing to reload, and the daemon serves on
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 20
            while '"event":"reload"' not in d.logs() and time.time() < deadline:
                time.sleep(0.05)
            self.assertIn("SIGHUP: nothing to reload", d.logs())
            self.assertEqual(d.health.Check(hpb.HealthCheckRequest(), timeout=10).status,
                             hpb.HealthCheckResponse.SERVING)
        finally:
            self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
