"""recurd integration: the Redis shared tier's security (issue 17). Real redis-server processes
on free loopback ports, certificates made with the openssl CLI at test time:
- AUTH: a password from --redis-password-file or RECURD_REDIS_PASSWORD works; a wrong or
  missing one is logged (and not retried in a tight loop) while turns still commit to disk;
- an ACL user (--redis-user) works, and its key pattern is enforced by Redis (NOPERM on keys
  outside it);
- TLS with CA verification works (a session goes through Redis to a second daemon), a wrong CA
  or a wrong server name is refused; mTLS (tls-auth-clients yes) needs --redis-tls-cert/-key;
- two daemons with different --redis-prefix on one Redis do not see each other's sessions,
  the same prefix does; keys checked in Redis directly;
- bad options (a URL, a bad prefix, TLS files without --redis-tls) stop the daemon at startup.
Skipped (exit 77) without redis-server or the openssl CLI."""
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

if not shutil.which("redis-server") or not shutil.which("openssl"):
    print("SKIP: redis-server or openssl is not installed (tools/install-deps.sh installs them)")
    sys.exit(77)

import grpc  # noqa: E402

from rcd_harness import Daemon, collect, free_port, gen_request, pb  # noqa: E402

C = grpc.StatusCode
P1, P2 = "Once upon a time, there was", " a little dog who"
PW, ALICE_PW = "s3cret-pw-8c1f", "alice-pw-77d0"


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_certs(d):
    """ca (signs server and client), other_ca (signs nothing we use)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other_ca"):
        openssl("req", "-x509", *ec, "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2",
                "-subj", "/CN=recurd test " + ca, cwd=d)
    exts = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            "client": "extendedKeyUsage=clientAuth\n"}
    for name, ext in exts.items():
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext)
        openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj",
                "/CN=recurd-" + name, cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext",
                cwd=d)


class RedisServer:
    """A redis-server on a free port; tls: a dict of certificate paths (the port is TLS only)."""

    def __init__(self, tmp, *extra, tls=None, port=None):
        self.port = port or free_port()
        self.tls = tls
        self.auth = None
        self.dir = tempfile.mkdtemp(dir=tmp)
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir]
        if tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls["cert"],
                     "--tls-key-file", tls["key"], "--tls-ca-cert-file", tls["ca"],
                     "--tls-auth-clients", tls["auth_clients"]]
        else:
            args += ["--port", str(self.port)]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                if self.cmd(b"PING").startswith((b"+PONG", b"-NOAUTH")):
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start: %s" % args)
            time.sleep(0.05)
        self.addr = "127.0.0.1:%d" % self.port

    def cmd(self, *args):
        """One RESP command (after AUTH when self.auth is set) over a fresh connection; returns
        the raw reply bytes of the last command."""
        cmds = ([(b"AUTH",) + self.auth] if self.auth else []) + [args]
        req = b"".join(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a)
                       for a in cmds)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.tls["ca"])
            if self.tls["auth_clients"] == "yes":
                ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
            s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        with s:
            s.sendall(req)
            out = b""
            while out.count(b"\r\n") < len(cmds):
                b = s.recv(1 << 16)
                if not b:
                    break
                out += b
        return out.split(b"\r\n", len(cmds) - 1)[-1]

    def exists(self, key):
        r = self.cmd(b"EXISTS", key.encode())
        assert r.startswith(b":"), r
        return r.startswith(b":1")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


OFF = "--redis-authority=off"  # write-through only: a refusing Redis never fails a turn


class RedisSecurity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="recurd-redis-sec-")
        make_certs(cls.tmp)
        p = lambda n: os.path.join(cls.tmp, n)  # noqa: E731
        cls.files = {n: p(n) for n in ("ca.pem", "other_ca.pem", "client.pem", "client.key")}
        # requirepass (the default user) and an ACL user limited to the keys tenA:*
        cls.pw = RedisServer(cls.tmp, "--requirepass", PW,
                             "--user", "alice", "on", ">" + ALICE_PW, "~tenA:*", "&*", "+@all")
        cls.pw.auth = (b"default", PW.encode())
        tls = {"cert": p("server.pem"), "key": p("server.key"), "ca": p("ca.pem"),
               "auth_clients": "no", "client_cert": p("client.pem"),
               "client_key": p("client.key")}
        cls.tls = RedisServer(cls.tmp, tls=tls)
        cls.mtls = RedisServer(cls.tmp, tls=dict(tls, auth_clients="yes"))
        cls.servers = [cls.pw, cls.tls, cls.mtls]

    @classmethod
    def tearDownClass(cls):
        for s in cls.servers:
            s.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            if d.proc.poll() is None:
                self.assertEqual(d.stop(), 0, d.logs()[-3000:])

    def start(self, *extra, env=None):
        d = Daemon(*extra, env=env)  # its own temporary --state-dir
        self.daemons.append(d)
        return d

    def secret(self, text, name):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text + "\n")
        os.chmod(path, 0o600)
        return path

    def turn(self, d, sid, text, n=4):
        toks = list(d.api.Tokenize(pb.TokenizeRequest(text=text)).token_ids)
        return collect(d.api.Generate(gen_request(tokens=toks, session=sid, max_tokens=n,
                                                  temperature=0, ignore_eos=True),
                                      timeout=120))[3]

    def session(self, d, sid):
        """Creates sid and commits one turn; the acknowledgement waits for Redis's reply. The
        tier connects in the background (TLS, AUTH, PING): until then a create is refused
        UNAVAILABLE "...unreachable; retry", and a client retries, as here (a loaded machine can
        take over a second for the handshake)."""
        deadline = time.time() + 20
        while True:
            try:
                d.api.CreateSession(pb.CreateSessionRequest(session_id=sid))
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.assertEqual(self.turn(d, sid, P1).session_version, 1)

    def wait_log(self, d, pattern, timeout=10):
        deadline = time.time() + timeout
        while not re.search(pattern, d.logs()):
            if time.time() > deadline:
                self.fail("no log line matching %r:\n%s" % (pattern, d.logs()[-3000:]))
            time.sleep(0.1)

    def assertServes(self, d, sid):
        """With --redis-authority=off (OFF) the daemon commits turns locally whatever Redis
        does. In the default authority mode a Redis that refuses us means UNAVAILABLE session
        calls instead (test_fencing.py)."""
        self.session(d, sid)
        self.assertEqual(self.turn(d, sid, P2).session_version, 2)

    # ---- AUTH ----

    def test_password_file_and_env(self):
        a = self.start("--redis", self.pw.addr, "--redis-password-file",
                       self.secret(PW, "pw_ok"))
        self.session(a, "pw1")
        self.assertTrue(self.pw.exists("recurd:ckpt:pw1"))
        # the environment variable instead of a file: a second daemon finds pw1 through Redis
        b = self.start("--redis", self.pw.addr, env={"RECURD_REDIS_PASSWORD": PW})
        self.assertEqual(b.api.GetSession(pb.GetSessionRequest(session_id="pw1")).version, 1)
        self.assertEqual(self.turn(b, "pw1", P2).session_version, 2)
        for d in (a, b):
            self.assertNotIn(PW, d.logs())
            self.assertNotIn("WRONGPASS", d.logs())

    def test_wrong_password_is_reported_and_turns_commit(self):
        d = self.start("--redis", self.pw.addr, "--redis-password-file",
                       self.secret("not-the-password", "pw_bad"), OFF)
        self.wait_log(d, r'"event":"redis".*WRONGPASS')
        self.assertServes(d, "wp")
        self.assertFalse(self.pw.exists("recurd:ckpt:wp"))
        # not retried in a tight loop: a configuration error waits 30 s before the next try
        time.sleep(2.5)
        self.assertEqual(len(re.findall(r"AUTH: WRONGPASS", d.logs())), 1, d.logs()[-3000:])
        self.assertIn("next try in 30 s", d.logs())
        self.assertNotIn("not-the-password", d.logs())

    def test_missing_password_is_reported(self):
        d = self.start("--redis", self.pw.addr, OFF)
        self.wait_log(d, r"NOAUTH.*--redis-password-file")
        self.assertServes(d, "np")
        self.assertFalse(self.pw.exists("recurd:ckpt:np"))

    def test_acl_user(self):
        alice = self.secret(ALICE_PW, "pw_alice")
        d = self.start("--redis", self.pw.addr, "--redis-user", "alice", "--redis-password-file",
                       alice, "--redis-prefix", "tenA:")
        self.session(d, "acl1")
        self.assertTrue(self.pw.exists("tenA:ckpt:acl1"))
        self.assertNotIn("NOPERM", d.logs())
        # Redis enforces the user's key pattern: outside tenA:* every write is refused (NOPERM)
        # and reported, while turns commit to disk
        e = self.start("--redis", self.pw.addr, "--redis-user", "alice", "--redis-password-file",
                       alice, OFF)
        self.assertServes(e, "acl2")
        self.assertIn("NOPERM", e.logs())
        self.assertFalse(self.pw.exists("recurd:ckpt:acl2"))
        # a wrong password for the user
        f = self.start("--redis", self.pw.addr, "--redis-user", "alice",
                       "--redis-password-file", self.secret(PW, "pw_alice_bad"), OFF)
        self.wait_log(f, r"WRONGPASS")
        self.assertServes(f, "acl3")

    # ---- TLS ----

    def tls_args(self, srv, ca="ca.pem", *extra):
        return ("--redis", srv.addr, "--redis-tls", "--redis-tls-ca", self.files[ca]) + extra

    def test_tls_verified(self):
        a = self.start(*self.tls_args(self.tls))
        self.session(a, "t1")
        self.assertTrue(self.tls.exists("recurd:ckpt:t1"))
        # a checkpoint of ~235 KB back over TLS (many records) to a second daemon
        b = self.start(*self.tls_args(self.tls, "ca.pem", "--redis-tls-server-name",
                                      "localhost"))
        self.assertEqual(self.turn(b, "t1", P2).session_version, 2)
        self.assertIn("session_fetched", b.logs())

    def test_tls_wrong_ca_refused(self):
        d = self.start(*self.tls_args(self.tls, "other_ca.pem"), OFF)
        self.wait_log(d, r"TLS handshake failed: certificate verify failed")
        self.assertServes(d, "t2")
        self.assertFalse(self.tls.exists("recurd:ckpt:t2"))

    def test_tls_wrong_name_refused(self):
        d = self.start(*self.tls_args(self.tls, "ca.pem", "--redis-tls-server-name",
                                      "redis.example.com"), OFF)
        self.wait_log(d, r"certificate verify failed")
        self.assertServes(d, "t3")
        self.assertFalse(self.tls.exists("recurd:ckpt:t3"))

    def test_plaintext_to_tls_port_fails(self):
        d = self.start("--redis", self.tls.addr, OFF)
        self.wait_log(d, r'"event":"redis".*tier is down')
        self.assertServes(d, "t4")

    def test_mtls(self):
        d = self.start(*self.tls_args(self.mtls), OFF)  # no client certificate
        self.wait_log(d, r'"event":"redis".*TLS')
        self.assertServes(d, "m1")
        self.assertFalse(self.mtls.exists("recurd:ckpt:m1"))
        e = self.start(*self.tls_args(self.mtls, "ca.pem", "--redis-tls-cert",
                                      self.files["client.pem"], "--redis-tls-key",
                                      self.files["client.key"]))
        self.session(e, "m2")
        self.assertTrue(self.mtls.exists("recurd:ckpt:m2"))

    # ---- key prefix ----

    def test_prefix_isolation(self):
        pw = ("--redis", self.pw.addr, "--redis-password-file", self.secret(PW, "pw_p"))
        a = self.start(*pw, "--redis-prefix", "depA:")
        b = self.start(*pw, "--redis-prefix", "depB:")
        self.session(a, "shared-id")
        self.assertTrue(self.pw.exists("depA:ckpt:shared-id"))
        self.assertFalse(self.pw.exists("depB:ckpt:shared-id"))
        self.assertFalse(self.pw.exists("recurd:ckpt:shared-id"))
        with self.assertRaises(grpc.RpcError) as cm:
            b.api.GetSession(pb.GetSessionRequest(session_id="shared-id"))
        self.assertEqual(cm.exception.code(), C.NOT_FOUND)
        # b's own session of the same id lives beside a's
        self.session(b, "shared-id")
        self.assertTrue(self.pw.exists("depB:ckpt:shared-id"))
        # the same prefix shares: a third daemon resumes a's session at version 1
        c = self.start(*pw, "--redis-prefix", "depA:")
        self.assertEqual(c.api.GetSession(pb.GetSessionRequest(session_id="shared-id")).version, 1)

    # ---- reconnection ----

    def test_reconnects_after_restart(self):
        """Redis goes away and comes back on the same port (with its password): session turns
        are UNAVAILABLE meanwhile (the default --redis-authority: nothing commits that Redis
        cannot fence), the tier reconnects by itself (backoff 1 s doubling to 8 s), logs
        `connected`, and the next acknowledged turn is in Redis again (this Redis kept no data:
        the session's key is missing without a tombstone, so the local copy is adopted)."""
        r = RedisServer(self.tmp, "--requirepass", PW)
        r.auth = (b"default", PW.encode())
        try:
            d = self.start("--redis", r.addr, "--redis-password-file", self.secret(PW, "pw_rc"))
            self.session(d, "rc")
            self.assertTrue(r.exists("recurd:ckpt:rc"))
            r.stop()
            self.wait_log(d, r'"event":"redis".*tier is down')
            with self.assertRaises(grpc.RpcError) as cm:
                self.turn(d, "rc", P2)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
            r2 = RedisServer(self.tmp, "--requirepass", PW, port=r.port)
            r2.auth = r.auth
            r = r2
            self.wait_log(d, r'"event":"redis".*connected, AUTH', timeout=30)
            self.assertEqual(self.turn(d, "rc", P1).session_version, 2)
            self.assertTrue(r.exists("recurd:ckpt:rc"))
        finally:
            r.stop()

    # ---- options ----

    def test_bad_options_stop_startup(self):
        cases = [
            (("--redis", "redis://user:pw@127.0.0.1:6379"), "URLs are not taken"),
            (("--redis", self.pw.addr, "--redis-prefix", "a b"), "redis key prefix 'a b'"),
            (("--redis", self.pw.addr, "--redis-prefix", "x" * 65), "redis key prefix"),
            (("--redis", self.pw.addr, "--redis-tls-ca", self.files["ca.pem"]),
             "need --redis-tls"),
            (("--redis", self.tls.addr, "--redis-tls", "--redis-tls-cert",
              self.files["client.pem"]), "go together"),
            (("--redis", self.tls.addr, "--redis-tls", "--redis-tls-ca", "/nonexistent/ca.pem"),
             "/nonexistent/ca.pem"),
            (("--redis", self.pw.addr, "--redis-password-file", "/nonexistent/pw"),
             "/nonexistent/pw"),
            (("--redis", self.pw.addr, "--redis-password-file", self.secret("", "pw_empty")),
             "empty first line"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                with self.assertRaises(RuntimeError) as cm:
                    Daemon(*args)
                self.assertIn(msg, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
