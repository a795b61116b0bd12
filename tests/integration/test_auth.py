"""recurd integration: API keys and tenants (--api-keys). The authorization matrix: every RPC
x {no key, bad key, tenant A, tenant B, admin, admin naming A with x-recurd-tenant, a user
sending x-recurd-tenant} x {own session, other tenant's session, missing session}, each cell
asserting the exact status (and NOT_FOUND messages identical for another tenant's id and an id
nobody has); forks inherit the tenant; replies show the client's own id; GenerateRequest.tenant
must be the key's; prefix snapshots are per tenant unless --share-prefix-across-tenants;
scoping survives a restart (disk) and a second daemon through Redis; SIGHUP adds and revokes
keys while a stream is open (a malformed file keeps the old keys); a malformed file stops the
start naming file:line; audit lines (create, fork, delete, expire, auth failures with their
reason) carry tenant and request id and never the prompt or a key; recurctl keys new and
--api-key."""
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

from rcd_harness import (Daemon, OwnDaemonsTest, collect, free_port, gen_request, hpb, pb,
                         recurctl_binary)

C = grpc.StatusCode
PROMPT = "Zebras quietly audit the moonlit harbour"


def digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


def new_key():
    return secrets.token_urlsafe(32)


KA, KB, KADM, KC = new_key(), new_key(), new_key(), new_key()


def keys_file(path, entries):
    with open(path, "w") as f:
        f.write("# recurd test keys\n")
        for key, tenant, role in entries:
            f.write("%s %s %s\n" % (digest(key), tenant, role))


BASE_KEYS = [(KA, "alice", "user"), (KB, "bob", "user"), (KADM, "ops", "admin")]


def md(key=None, tenant=None, rid=None):
    m = []
    if key is not None:
        m.append(("authorization", "Bearer " + key))
    if tenant is not None:
        m.append(("x-recurd-tenant", tenant))
    if rid is not None:
        m.append(("x-request-id", rid))
    return m


def call(fn, req, metadata, stream=False):
    """Returns (status code, details, reply or last stream message)."""
    try:
        if stream:
            last = None
            for m in fn(req, metadata=metadata, timeout=60):
                last = m
            return C.OK, "", last
        return C.OK, "", fn(req, metadata=metadata, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details(), None


def audit_lines(logs):
    out = []
    for line in logs.splitlines():
        if '"event":"audit_' in line:
            out.append(json.loads(line))
    return out


class Matrix(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="recurd-auth-")
        cls.keys = os.path.join(cls.tmp, "keys")
        keys_file(cls.keys, BASE_KEYS)
        cls.d = Daemon("--api-keys", cls.keys, "--default-max-tokens", "4",
                       env={"RECURD_SESSION_SWEEP_MS": "200"})
        cls.api = cls.d.api

    @classmethod
    def tearDownClass(cls):
        logs = cls.d.logs()
        rc = cls.d.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if rc != 0:
            raise AssertionError("recurd exited %d:\n%s" % (rc, logs[-4000:]))

    def create(self, sid, key, tenant=None):
        code, det, s = call(self.api.CreateSession, pb.CreateSessionRequest(session_id=sid),
                            md(key, tenant))
        self.assertEqual(code, C.OK, det)
        self.assertEqual(s.session_id, sid)  # the client's own id, never the scoped one
        return s

    # principals: (name, key, x-recurd-tenant)
    PRINCIPALS = [("none", None, None), ("bad", "not-a-key", None), ("alice", KA, None),
                  ("bob", KB, None), ("admin", KADM, None), ("admin_as_alice", KADM, "alice"),
                  ("alice_naming_bob", KA, "bob")]

    def test_stateless_rpcs(self):
        rpcs = [
            ("ListModels", lambda m: call(self.api.ListModels, pb.ListModelsRequest(), m)),
            ("Tokenize", lambda m: call(self.api.Tokenize, pb.TokenizeRequest(text="hi"), m)),
            ("Detokenize", lambda m: call(self.api.Detokenize,
                                          pb.DetokenizeRequest(token_ids=[1, 2]), m)),
            ("Generate", lambda m: call(self.api.Generate,
                                        gen_request(PROMPT, max_tokens=2), m, stream=True)),
            ("Health", lambda m: call(self.d.health.Check, hpb.HealthCheckRequest(), m)),
        ]
        want = {"none": C.UNAUTHENTICATED, "bad": C.UNAUTHENTICATED, "alice": C.OK, "bob": C.OK,
                "admin": C.OK, "admin_as_alice": C.OK, "alice_naming_bob": C.PERMISSION_DENIED}
        for rpc, fn in rpcs:
            for name, key, tenant in self.PRINCIPALS:
                with self.subTest(rpc=rpc, who=name):
                    code, det, _ = fn(md(key, tenant))
                    self.assertEqual(code, C.OK if rpc == "Health" else want[name], det)
        # missing and invalid keys answer the same message
        a = call(self.api.ListModels, pb.ListModelsRequest(), md())[1]
        b = call(self.api.ListModels, pb.ListModelsRequest(), md("wrong"))[1]
        c = call(self.api.ListModels, pb.ListModelsRequest(), [("authorization", "Basic x")])[1]
        self.assertEqual(a, b)
        self.assertEqual(a, c)

    def test_session_matrix(self):
        """Get, Fork, Delete, Generate on {own, other tenant's, missing} for each principal.
        alice owns "m-a", bob owns "m-b" (fresh copies per cell for Fork and Delete)."""
        ops = ["Get", "Fork", "Delete", "Generate"]
        # principal -> tenant whose sessions it sees (None: refused before any lookup)
        scope = {"alice": "alice", "bob": "bob", "admin": "ops", "admin_as_alice": "alice"}
        refused = {"none": C.UNAUTHENTICATED, "bad": C.UNAUTHENTICATED,
                   "alice_naming_bob": C.PERMISSION_DENIED}
        owners = {"alice": (KA, None), "bob": (KB, None), "ops": (KADM, None)}
        n = [0]

        def fresh(tenant):
            n[0] += 1
            sid = "m%d" % n[0]
            key, t = owners[tenant]
            self.create(sid, key, t)
            return sid

        def run(op, sid, m):
            if op == "Get":
                return call(self.api.GetSession, pb.GetSessionRequest(session_id=sid), m)
            if op == "Fork":
                return call(self.api.ForkSession, pb.ForkSessionRequest(session_id=sid), m)
            if op == "Delete":
                return call(self.api.DeleteSession, pb.DeleteSessionRequest(session_id=sid), m)
            return call(self.api.Generate, gen_request(PROMPT, session=sid, max_tokens=2), m,
                        stream=True)

        for op in ops:
            for name, key, tenant in self.PRINCIPALS:
                for target in ["own", "other", "missing"]:
                    with self.subTest(op=op, who=name, target=target):
                        seen = scope.get(name)
                        if target == "own":
                            sid = fresh(seen or "alice")
                        elif target == "other":
                            sid = fresh("bob" if seen == "alice" else "alice")
                        else:
                            sid = "nobody-has-%d" % n[0]
                        code, det, reply = run(op, sid, md(key, tenant))
                        if name in refused:
                            self.assertEqual(code, refused[name], det)
                        elif target == "own":
                            self.assertEqual(code, C.OK, det)
                            if op in ("Get",):
                                self.assertEqual(reply.session_id, sid)
                            if op == "Generate":
                                self.assertEqual(reply.session_id, sid)
                                self.assertEqual(reply.session_version, 1)
                        else:
                            self.assertEqual(code, C.NOT_FOUND, det)
                            # the same message as for an id nobody has
                            gone = call(self.api.GetSession if op != "Generate" else
                                        self.api.Generate,
                                        pb.GetSessionRequest(session_id="x" + sid) if op != "Generate"
                                        else gen_request(PROMPT, session="x" + sid, max_tokens=2),
                                        md(key, tenant), stream=op == "Generate")
                            if op in ("Get", "Generate"):
                                self.assertEqual(det.replace(sid, "ID"),
                                                 gone[1].replace("x" + sid, "ID"))
                            self.assertEqual(det, "session '%s' not found" % sid)

    def test_same_id_two_tenants(self):
        self.create("chat1", KA)
        self.create("chat1", KB)  # a different session, no ALREADY_EXISTS
        r = list(self.api.Generate(gen_request(PROMPT, session="chat1", max_tokens=3),
                                   metadata=md(KA)))
        self.assertEqual(r[-1].session_version, 1)
        a = self.api.GetSession(pb.GetSessionRequest(session_id="chat1"), metadata=md(KA))
        b = self.api.GetSession(pb.GetSessionRequest(session_id="chat1"), metadata=md(KB))
        self.assertEqual((a.session_id, a.version), ("chat1", 1))
        self.assertEqual((b.session_id, b.version), ("chat1", 0))
        # alice cannot create it twice in her own scope
        code, _, _ = call(self.api.CreateSession, pb.CreateSessionRequest(session_id="chat1"),
                          md(KA))
        self.assertEqual(code, C.ALREADY_EXISTS)
        # the admin reaches alice's with x-recurd-tenant, and its own scope has none
        c = self.api.GetSession(pb.GetSessionRequest(session_id="chat1"),
                                metadata=md(KADM, "alice"))
        self.assertEqual(c.version, 1)
        self.assertEqual(call(self.api.GetSession, pb.GetSessionRequest(session_id="chat1"),
                              md(KADM))[0], C.NOT_FOUND)
        # an admin naming a malformed tenant
        self.assertEqual(call(self.api.GetSession, pb.GetSessionRequest(session_id="chat1"),
                              md(KADM, "al/ice"))[0], C.INVALID_ARGUMENT)
        # a scoped-looking id is just an invalid id
        self.assertEqual(call(self.api.GetSession,
                              pb.GetSessionRequest(session_id="alice~chat1"), md(KB))[0],
                         C.INVALID_ARGUMENT)

    def test_fork_inherits_tenant(self):
        self.create("f-src", KA)
        f = self.api.ForkSession(pb.ForkSessionRequest(session_id="f-src", new_session_id="f-new"),
                                 metadata=md(KA))
        self.assertEqual((f.session_id, f.parent_session_id), ("f-new", "f-src"))
        self.assertEqual(call(self.api.GetSession, pb.GetSessionRequest(session_id="f-new"),
                              md(KB))[0], C.NOT_FOUND)
        g = self.api.GetSession(pb.GetSessionRequest(session_id="f-new"), metadata=md(KA))
        self.assertEqual(g.parent_session_id, "f-src")
        # an admin's fork for alice lands in alice's scope
        self.api.ForkSession(pb.ForkSessionRequest(session_id="f-src", new_session_id="f-adm"),
                             metadata=md(KADM, "alice"))
        self.api.GetSession(pb.GetSessionRequest(session_id="f-adm"), metadata=md(KA))

    def test_generate_tenant_field(self):
        req = gen_request(PROMPT, max_tokens=2)
        req.tenant = "bob"
        self.assertEqual(call(self.api.Generate, req, md(KA), stream=True)[0],
                         C.PERMISSION_DENIED)
        req.tenant = "alice"
        self.assertEqual(call(self.api.Generate, req, md(KA), stream=True)[0], C.OK)

    def test_prefix_per_tenant(self):
        toks = list(range(300, 500))  # 200 tokens: snapshots at 64, 128, 192

        def cached(key):
            _, _, _, last = collect(self.api.Generate(
                gen_request(tokens=toks, max_tokens=2, temperature=0, ignore_eos=True),
                metadata=md(key)))
            return last.usage.cached_prompt_tokens

        self.assertEqual(cached(KA), 0)
        self.assertEqual(cached(KB), 0)  # alice's snapshots are not bob's
        self.assertEqual(cached(KA), 192)
        self.assertEqual(cached(KB), 192)

    def test_audit(self):
        rid = "audit-rid-1"
        self.create("au1", KA)
        self.api.ForkSession(pb.ForkSessionRequest(session_id="au1", new_session_id="au2"),
                             metadata=md(KA, rid=rid))
        list(self.api.Generate(gen_request(PROMPT, session="au2", max_tokens=2),
                               metadata=md(KA)))
        self.api.DeleteSession(pb.DeleteSessionRequest(session_id="au2"), metadata=md(KA, rid=rid))
        self.api.CreateSession(pb.CreateSessionRequest(session_id="au3", ttl_seconds=1),
                               metadata=md(KB))
        call(self.api.ListModels, pb.ListModelsRequest(), md(rid="r-missing"))
        call(self.api.ListModels, pb.ListModelsRequest(), md("nope", rid="r-invalid"))
        call(self.api.ListModels, pb.ListModelsRequest(), md(KA, "bob", rid="r-forbidden"))
        deadline = time.time() + 15
        while time.time() < deadline:
            lines = audit_lines(self.d.logs())
            if any(l["event"] == "audit_session_expire" and l.get("session_id") == "au3"
                   for l in lines):
                break
            time.sleep(0.2)

        def find(event, **kw):
            return [l for l in lines if l["event"] == event and
                    all(l.get(k) == v for k, v in kw.items())]

        self.assertTrue(find("audit_session_create", tenant="alice", session_id="au1"))
        self.assertTrue(find("audit_session_fork", tenant="alice", session_id="au2",
                             request_id=rid))
        self.assertTrue(find("audit_session_delete", tenant="alice", session_id="au2",
                             request_id=rid))
        self.assertTrue(find("audit_session_expire", tenant="bob", session_id="au3"))
        self.assertTrue(find("audit_auth_failure", reason="missing", request_id="r-missing"))
        self.assertTrue(find("audit_auth_failure", reason="invalid", request_id="r-invalid"))
        self.assertTrue(find("audit_auth_failure", reason="forbidden", request_id="r-forbidden",
                             tenant="alice"))
        logs = self.d.logs()
        for l in lines:
            self.assertNotIn("Zebras", json.dumps(l))
        for k in (KA, KB, KADM):
            self.assertNotIn(k, logs)  # no key anywhere in the logs


class SharedPrefix(unittest.TestCase):
    def test_shared(self):
        tmp = tempfile.mkdtemp(prefix="recurd-auth-")
        keys = os.path.join(tmp, "keys")
        keys_file(keys, BASE_KEYS)
        d = Daemon("--ephemeral", "--api-keys", keys, "--share-prefix-across-tenants")
        try:
            toks = list(range(600, 800))
            runs = []
            for key in (KA, KB):
                _, _, _, last = collect(d.api.Generate(
                    gen_request(tokens=toks, max_tokens=2, temperature=0), metadata=md(key)))
                runs.append(last.usage.cached_prompt_tokens)
            self.assertEqual(runs, [0, 192])
        finally:
            self.assertEqual(d.stop(), 0)
            shutil.rmtree(tmp, ignore_errors=True)


class Quotas(unittest.TestCase):
    """With API keys the quotas count the key's tenant: its own sessions (whatever their owner
    label) and turns; another tenant is unaffected."""

    def test_quota_per_key_tenant(self):
        tmp = tempfile.mkdtemp(prefix="recurd-auth-")
        keys = os.path.join(tmp, "keys")
        keys_file(keys, BASE_KEYS)
        d = Daemon("--ephemeral", "--api-keys", keys, "--tenant-max-sessions", "1",
                   "--tenant-max-turns", "1")
        try:
            d.api.CreateSession(pb.CreateSessionRequest(session_id="q1", owner="someone-else"),
                                metadata=md(KA))
            with self.assertRaises(grpc.RpcError) as cm:
                d.api.CreateSession(pb.CreateSessionRequest(session_id="q2"), metadata=md(KA))
            self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED)
            self.assertIn("tenant 'alice'", cm.exception.details())
            # bob has his own quota; the admin acting for alice is counted as alice
            d.api.CreateSession(pb.CreateSessionRequest(session_id="q2"), metadata=md(KB))
            with self.assertRaises(grpc.RpcError) as cm:
                d.api.CreateSession(pb.CreateSessionRequest(session_id="q3"),
                                    metadata=md(KADM, tenant="alice"))
            self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED)
            # a GenerateRequest.tenant naming someone else cannot dodge the key's turn quota
            slow = d.api.Generate(gen_request(tokens=[1, 2, 3], max_tokens=4000, ignore_eos=True),
                                  metadata=md(KA))
            next(slow)
            with self.assertRaises(grpc.RpcError) as cm:
                collect(d.api.Generate(gen_request(tokens=[1, 2], max_tokens=2), metadata=md(KA)))
            self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED)
            collect(d.api.Generate(gen_request(tokens=[1, 2], max_tokens=2), metadata=md(KB)))
            slow.cancel()
        finally:
            self.assertEqual(d.stop(), 0)
            shutil.rmtree(tmp, ignore_errors=True)


class Restarts(OwnDaemonsTest):
    def setUp(self):
        super().setUp()
        self.keys = os.path.join(self.dir, "keys")
        keys_file(self.keys, BASE_KEYS)
        self.state = os.path.join(self.dir, "state")

    def test_disk(self):
        d = self.spawn("--state-dir", self.state, "--api-keys", self.keys)
        d.api.CreateSession(pb.CreateSessionRequest(session_id="keep"), metadata=md(KA))
        list(d.api.Generate(gen_request(PROMPT, session="keep", max_tokens=3), metadata=md(KA)))
        self.assertEqual(d.stop(), 0)
        self.assertTrue(os.path.isdir(os.path.join(self.state, "s_alice~keep")))
        d = self.spawn("--state-dir", self.state, "--api-keys", self.keys)
        self.assertEqual(d.api.GetSession(pb.GetSessionRequest(session_id="keep"),
                                          metadata=md(KA)).version, 1)
        self.assertEqual(call(d.api.GetSession, pb.GetSessionRequest(session_id="keep"),
                              md(KB))[0], C.NOT_FOUND)
        self.assertEqual(d.stop(), 0)
        # without keys the scoped sessions are out of reach (ids cannot name them)
        d = self.spawn("--state-dir", self.state)
        self.assertEqual(call(d.api.GetSession, pb.GetSessionRequest(session_id="keep"),
                              [])[0], C.NOT_FOUND)

    @unittest.skipUnless(shutil.which("redis-server"), "redis-server not installed")
    def test_redis(self):
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", self.dir],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            r = "127.0.0.1:%d" % port
            d1 = self.spawn("--api-keys", self.keys, "--redis", r)
            d1.api.CreateSession(pb.CreateSessionRequest(session_id="rs"), metadata=md(KA))
            list(d1.api.Generate(gen_request(PROMPT, session="rs", max_tokens=3),
                                 metadata=md(KA)))
            d2 = self.spawn("--api-keys", self.keys, "--redis", r)  # another state dir
            self.assertEqual(call(d2.api.GetSession, pb.GetSessionRequest(session_id="rs"),
                                  md(KB))[0], C.NOT_FOUND)
            s = d2.api.GetSession(pb.GetSessionRequest(session_id="rs"), metadata=md(KA))
            self.assertEqual((s.session_id, s.version), ("rs", 1))
        finally:
            for d in self.daemons:
                if d.proc.poll() is None:
                    self.assertEqual(d.stop(), 0)
            redis.terminate()
            redis.wait()

    def test_malformed_at_start(self):
        bad = os.path.join(self.dir, "bad")
        with open(bad, "w") as f:
            f.write("# ok\n%s alice user\n%s bob superuser\n" % (digest(KA), digest(KB)))
        with self.assertRaises(RuntimeError) as cm:
            self.spawn("--api-keys", bad)
        self.assertIn("%s:3: role must be user or admin" % bad, str(cm.exception))
        self.daemons.clear()

    def test_reload(self):
        d = self.spawn("--ephemeral", "--api-keys", self.keys)
        stream = d.api.Generate(gen_request(PROMPT, max_tokens=150, ignore_eos=True,
                                            temperature=0), metadata=md(KA))
        first = next(stream)
        # revoke alice, add carol
        keys_file(self.keys, [(KB, "bob", "user"), (KC, "carol", "user")])
        n = d.logs().count("api_keys_reload")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while d.logs().count("api_keys_reload") == n and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(call(d.api.ListModels, pb.ListModelsRequest(), md(KA))[0],
                         C.UNAUTHENTICATED)
        self.assertEqual(call(d.api.ListModels, pb.ListModelsRequest(), md(KC))[0], C.OK)
        rest = list(stream)  # the open stream carries on to its end
        self.assertEqual(rest[-1].usage.completion_tokens, 150)
        self.assertTrue(first.token_ids or first.text or rest)
        # a malformed file keeps the keys in use
        with open(self.keys, "a") as f:
            f.write("garbage\n")
        n = d.logs().count("api_keys_reload")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while d.logs().count("api_keys_reload") == n and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn(":4: expected 3 fields", d.logs())
        self.assertEqual(call(d.api.ListModels, pb.ListModelsRequest(), md(KC))[0], C.OK)
        self.assertEqual(call(d.api.ListModels, pb.ListModelsRequest(), md(KA))[0],
                         C.UNAUTHENTICATED)


class Recurctl(unittest.TestCase):
    def test_keys_new_and_api_key(self):
        ctl = recurctl_binary()
        out = subprocess.run([ctl, "keys", "new", "--tenant", "dave", "--role", "admin"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        self.assertEqual(len(out), 2)
        key, line = out
        self.assertEqual(len(key), 43)
        self.assertEqual(line, "%s dave admin" % digest(key))
        out2 = subprocess.run([ctl, "keys", "new", "--tenant", "dave"], capture_output=True,
                              text=True, check=True).stdout.splitlines()
        self.assertNotEqual(out2[0], key)
        self.assertTrue(out2[1].endswith(" dave user"))
        self.assertNotEqual(subprocess.run([ctl, "keys", "new", "--tenant", "a/b"],
                                           capture_output=True).returncode, 0)
        tmp = tempfile.mkdtemp(prefix="recurd-auth-")
        keys = os.path.join(tmp, "keys")
        with open(keys, "w") as f:
            f.write(line + "\n")
        d = Daemon("--ephemeral", "--api-keys", keys)
        try:
            base = [ctl, "--addr", d.addr]
            r = subprocess.run(base + ["models"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 16, r.stderr)  # UNAUTHENTICATED
            r = subprocess.run(base + ["--api-key", key, "session", "create", "--id", "c1"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('"session_id":"c1"', r.stdout)
            env = dict(os.environ, RECURD_API_KEY=key)
            r = subprocess.run(base + ["session", "get", "c1"], capture_output=True, text=True,
                               env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            self.assertEqual(d.stop(), 0)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
