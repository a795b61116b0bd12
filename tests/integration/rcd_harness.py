"""Integration-test harness: generates Python message classes from proto/ at test time,
builds gRPC stubs from the service descriptors, and starts/stops a real recurd on a free
loopback port (--port 0 --port-file)."""
import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTOS = ["recurd/v1/inference.proto", "grpc/health/v1/health.proto"]

try:
    import grpc  # noqa: F401
except ImportError:  # ctest treats 77 as skipped
    print("SKIP: python grpcio is not installed (tools/install-deps.sh installs it)")
    sys.exit(77)

_gen_dir = tempfile.mkdtemp(prefix="recurd-pb-")
atexit.register(shutil.rmtree, _gen_dir, True)


def _generate():
    protoc = shutil.which("protoc")
    args = ["-I", PROTO_DIR, "--python_out", _gen_dir] + PROTOS
    if protoc:
        subprocess.check_call([protoc] + args)
    else:
        from grpc_tools import protoc as gp
        if gp.main(["protoc"] + args) != 0:
            raise RuntimeError("grpc_tools.protoc failed")


def _load(name, rel):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(_gen_dir, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_generate()
pb = _load("recurd_inference_pb2", "recurd/v1/inference_pb2.py")
# Loaded by path: the package name "grpc" is grpcio's.
hpb = _load("recurd_health_pb2", "grpc/health/v1/health_pb2.py")


class Stub:
    """One callable per method of a service, built from its descriptor."""

    def __init__(self, channel, service_desc, module):
        for m in service_desc.methods:
            path = "/%s/%s" % (service_desc.full_name, m.name)
            req = getattr(module, m.input_type.name)
            resp = getattr(module, m.output_type.name)
            kind = channel.unary_stream if m.server_streaming else channel.unary_unary
            setattr(self, m.name, kind(path, request_serializer=req.SerializeToString,
                                       response_deserializer=resp.FromString))


def _binary(env, name, folder="daemon"):
    """The program `name` at $env, else in the Release build's folder (daemon/)."""
    b = os.environ.get(env) or os.path.join(ROOT, "build", "release", folder, name)
    if not os.path.exists(b):
        raise RuntimeError("%s binary not found: set %s" % (name, env))
    return b


def daemon_binary():
    return _binary("RECURD_BIN", "recurd")


def recurctl_binary():
    return _binary("RECURCTL_BIN", "recurctl")


def eval_binary():
    return _binary("RECURD_EVAL_BIN", "recurd-eval", "tools")


def assert_shares_tokenizer(tc, model, target):
    """model's tokenizer files are target's byte for byte, with the same vocabulary and special
    ids (a draft or a second model beside the bundled one); returns model's config.json."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(model, name), "rb") as a, open(os.path.join(target, name), "rb") as b:
            tc.assertEqual(a.read(), b.read(), name)
    with open(os.path.join(model, "config.json")) as a, open(os.path.join(target, "config.json")) as b:
        m, t = json.load(a), json.load(b)
    for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
        tc.assertEqual(m[k], t[k], k)
    return m


class Daemon:
    def __init__(self, *extra, env=None, creds=None):
        """creds: grpc channel credentials for self.channel (a daemon serving TLS)."""
        self.tmp = tempfile.mkdtemp(prefix="recurd-it-")
        self.port_file = os.path.join(self.tmp, "port")
        self.http_port_file = os.path.join(self.tmp, "http_port")
        self.log_path = os.path.join(self.tmp, "recurd.log")
        self.log = open(self.log_path, "wb")
        cmd = [daemon_binary(), "--port", "0", "--port-file", self.port_file, "--no-progress",
               "--threads", "2"]
        # Sessions are durable by default: keep each daemon's checkpoints in its own temp dir
        # unless the test chooses a --state-dir (or --ephemeral) itself.
        if not any(a.startswith("--state-dir") or a == "--ephemeral" for a in extra):
            cmd += ["--state-dir", os.path.join(self.tmp, "state")]
        # Each daemon gets its own free HTTP port (tests run in parallel: never 8080), unless the
        # test picks one (--http-port N, or -1 for none).
        if not any(a.startswith("--http-port") for a in extra):
            cmd += ["--http-port", "0", "--http-port-file", self.http_port_file]
        cmd += list(extra)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        atexit.register(self._kill_if_alive)  # never leave a daemon behind a failed test
        deadline = time.time() + 120
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError("recurd exited %d:\n%s" % (self.proc.returncode, self.logs()))
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("recurd did not start:\n" + self.logs())
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read())
        self.addr = "127.0.0.1:%d" % self.port
        # the HTTP listener's port (written before the gRPC port file), None when not known
        self.http_port = None
        if os.path.exists(self.http_port_file):
            with open(self.http_port_file) as f:
                self.http_port = int(f.read())
        self.channel = (grpc.secure_channel(self.addr, creds) if creds
                        else grpc.insecure_channel(self.addr))
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.api = Stub(self.channel, pb.DESCRIPTOR.services_by_name["Inference"], pb)
        self.health = Stub(self.channel, hpb.DESCRIPTOR.services_by_name["Health"], hpb)

    def _kill_if_alive(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self):
        if not os.path.exists(self.log_path):
            return "(log removed)"
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the daemon and returns its exit code."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("recurd did not exit after signal:\n" + self.logs())
        self.exit_logs = self.logs()  # the exit-time lines (stats), after the dir is gone
        self.log.close()
        if self.proc.returncode == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.proc.returncode


def gen_request(prompt=None, tokens=None, session=None, **sampling):
    req = pb.GenerateRequest()
    if prompt is not None:
        req.text = prompt
    if tokens is not None:
        req.tokens.ids.extend(tokens)
    if session:
        req.session_id = session
    ev = sampling.pop("expected_version", None)
    if ev is not None:
        req.expected_version = ev
    stop = sampling.pop("stop", None)
    stop_ids = sampling.pop("stop_token_ids", None)
    for k, v in sampling.items():
        setattr(req.sampling, k, v)
    if stop:
        req.sampling.stop.extend(stop)
    if stop_ids:
        req.sampling.stop_token_ids.extend(stop_ids)
    return req


def collect(stream):
    """Returns (text, token_ids, logprobs, final message) of a Generate stream."""
    text, ids, lps, last = [], [], [], None
    for m in stream:
        text.append(m.text)
        ids.extend(m.token_ids)
        lps.extend(m.logprobs)
        last = m
    return "".join(text), ids, lps, last


def free_port():
    """A loopback TCP port free at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cmd(port, *args, timeout=5):
    """One RESP command to a redis-server on loopback; returns the raw reply bytes."""
    req = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        return s.recv(1 << 20)


def start_redis(port, dir, *extra):
    """redis-server on 127.0.0.1:port (no RDB saves, files in dir, then extra arguments);
    returns the process once it answers PING."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--dir", dir] + list(extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            if redis_cmd(port, b"PING").startswith(b"+PONG"):
                return proc
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def require_redis():
    """Exits 77 (ctest: skipped) without redis-server on the PATH: for a test file whose every
    test needs it (a RedisTest class alone is skipped)."""
    if not shutil.which("redis-server"):
        print("SKIP: redis-server is not installed (tools/install-deps.sh installs it)")
        sys.exit(77)


class RedisTest(unittest.TestCase):
    """A real redis-server for the test class, on a free loopback port (no RDB saves,
    `redis_args` after that; its files in a temporary directory): cls.redis (the process),
    cls.redis_port, cls.redis_addr ("127.0.0.1:port", what --redis takes), cls.redis_dir.
    Stopped and removed after the class; the class is skipped without redis-server. Put it
    before a daemon base in the bases: class T(RedisTest, OwnDaemonsTest)."""
    redis_args = ("--appendonly", "no")
    redis_prefix = "recurd-redis-"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not shutil.which("redis-server"):
            raise unittest.SkipTest("redis-server not installed")
        cls.redis_dir = tempfile.mkdtemp(prefix=cls.redis_prefix)
        cls.redis_port = free_port()
        try:
            cls.redis = start_redis(cls.redis_port, cls.redis_dir, *cls.redis_args)
        except BaseException:
            shutil.rmtree(cls.redis_dir, ignore_errors=True)
            raise
        cls.redis_addr = "127.0.0.1:%d" % cls.redis_port

    @classmethod
    def tearDownClass(cls):
        cls.redis.terminate()
        cls.redis.wait()
        shutil.rmtree(cls.redis_dir, ignore_errors=True)
        super().tearDownClass()


def run_preempted(tc, api, low_req, high, start_timeout=300):
    """A low-priority turn preempted by a high-priority one, for a daemon with one state slot:
    streams low_req on a thread; once it has streamed 3 token ids, high() runs the
    high-priority turn to its end here (high: a function returning that turn's result), then
    the low turn is awaited. Returns (low, high's result, low's end, high's end): low as
    collect() gives it (text, ids, logprobs, last message), the ends by time.monotonic().
    Checked through tc (a TestCase): the low turn streams 3 tokens within start_timeout s,
    has not ended before high() starts, and raises nothing."""
    out, errors = {}, []
    started = threading.Event()

    def low():
        try:
            text, ids, lps, last = [], [], [], None
            for m in api.Generate(low_req, timeout=300):
                text.append(m.text)
                ids.extend(m.token_ids)
                lps.extend(m.logprobs)
                last = m
                if len(ids) >= 3:
                    started.set()
            out["low"] = ("".join(text), ids, lps, last)
            out["low_end"] = time.monotonic()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        started.set()

    t = threading.Thread(target=low)
    t.start()
    tc.assertTrue(started.wait(start_timeout))
    tc.assertEqual(errors, [])
    tc.assertNotIn("low", out, "the low-priority turn ended before the high one came")
    res = high()
    high_end = time.monotonic()
    t.join(300)
    tc.assertEqual(errors, [])
    return out["low"], res, out["low_end"], high_end


PYCLIENT_DIR = os.path.join(ROOT, "clients", "python")


def pyclient():
    """The Python client package of this tree (clients/python, module recurd_client), built
    and put on sys.path: `pip install --no-build-isolation --no-deps --no-index --target DIR`
    (this Python's setuptools and protoc, nothing downloaded) of a copy of clients/python
    with proto/ copied in (an sdist's layout), so the source tree gets no build files. The
    build is cached in the temp dir by a hash of the package's and proto/'s files."""
    import hashlib
    skip = ("build", "dist", "__pycache__", "_proto", "proto")
    h = hashlib.sha256()
    for base in (PYCLIENT_DIR, PROTO_DIR):
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d not in skip and not d.endswith(".egg-info")
                             or base == PROTO_DIR)
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                h.update(os.path.relpath(p, ROOT).encode() + b"\0")
                with open(p, "rb") as fh:
                    h.update(fh.read())
    cache = os.path.join(tempfile.gettempdir(),
                         "recurd-pyclient-%d-%s" % (os.getuid(), h.hexdigest()[:16]))
    if not os.path.isdir(cache):
        work = tempfile.mkdtemp(prefix="recurd-pyclient-build-")
        try:
            src = os.path.join(work, "src")
            shutil.copytree(PYCLIENT_DIR, src, ignore=shutil.ignore_patterns(
                "build", "dist", "*.egg-info", "__pycache__", "_proto", "proto"))
            for p in PROTOS:
                os.makedirs(os.path.dirname(os.path.join(src, "proto", p)), exist_ok=True)
                shutil.copyfile(os.path.join(PROTO_DIR, p), os.path.join(src, "proto", p))
            out = os.path.join(work, "out")
            env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore",
                       PIP_DISABLE_PIP_VERSION_CHECK="1")
            r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                                "--no-build-isolation", "--no-deps", "--no-index",
                                "--target", out, src],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError("pip install clients/python failed:\n" + r.stdout + r.stderr)
            try:
                os.rename(out, cache)
            except OSError:
                pass  # another test built it meanwhile
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if cache not in sys.path:
        sys.path.insert(0, cache)
    import recurd_client
    return recurd_client


class CodeAssertions:
    """assertCode for unittest.TestCase subclasses."""

    def assertCode(self, code, fn, *args, **kw):
        with self.assertRaises(grpc.RpcError) as cm:
            r = fn(*args, **kw)
            if hasattr(r, "__iter__") and not hasattr(r, "SerializeToString"):
                for _ in r:
                    pass
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception


class DaemonTest(CodeAssertions, unittest.TestCase):
    """One daemon per test class; checks that it drains cleanly (exit 0) at the end."""
    daemon_args = ()

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(*cls.daemon_args)
        cls.api = cls.d.api

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            raise AssertionError("recurd exited %d:\n%s" % (rc, cls.d.logs()[-4000:]))

class OwnDaemonsTest(unittest.TestCase):
    """Tests that start, SIGKILL and restart their own daemons over one state directory
    (self.dir, made per test): every daemon still running at the end must drain cleanly."""
    state_prefix = "recurd-it-"

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=self.state_prefix)
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            if d.proc.poll() is None:
                rc = d.stop()
                self.assertEqual(rc, 0, d.logs()[-3000:])
        shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, *args, env=None):
        d = Daemon(*args, env=env)
        self.daemons.append(d)
        return d

    def kill(self, d):
        """SIGKILL: no drain, no flush — only what was durable survives."""
        d.channel.close()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.log.close()
        shutil.rmtree(d.tmp, ignore_errors=True)


def ckpt_payload(state_dir, sid, version):
    """The payload bytes of a session's checkpoint file (statestore/ckpt.h's header fields:
    header length at 12, payload length at 56)."""
    with open(os.path.join(state_dir, "s_" + sid, "%020d.ckpt" % version), "rb") as f:
        b = f.read()
    (hb,) = struct.unpack_from("<I", b, 12)
    (n,) = struct.unpack_from("<Q", b, 56)
    return b[hb:hb + n]


def ckpt_sections(p):
    """(state part, {name: bytes}) of a payload: its extension sections (statestore/ckpt_ext.h:
    section data, one 48-byte record per section, a 24-byte trailer ending in RCDEXT1)."""
    if len(p) < 24 or p[-8:] != b"RCDEXT1\0":
        return p, {}
    n, ver, region = struct.unpack_from("<IIQ", p, len(p) - 24)
    assert ver == 1, ver
    base = len(p) - region
    out = {}
    for i in range(n):
        rec = len(p) - 24 - 48 * (n - i)
        name = p[rec:rec + 24].rstrip(b"\0").decode()
        off, nb = struct.unpack_from("<QQ", p, rec + 24)
        out[name] = p[base + off:base + off + nb]
    return p[:base], out


def concurrently(fn, n):
    """Runs fn() on n threads at once; returns what each returned, or (status code, details)
    for a call that raised grpc.RpcError, in completion order."""
    import grpc
    res, lock = [], threading.Lock()

    def go():
        try:
            r = fn()
        except grpc.RpcError as e:
            r = (e.code(), e.details())
        with lock:
            res.append(r)

    ts = [threading.Thread(target=go) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return res
