"""Scale-out harness (issue 15): a real redis-server, N recurd replicas (each `--redis`, its own
`--state-dir` kept across restarts, `--replica-name r<i>`, a fixed loopback port) and the real
HAProxy with the config rendered from deploy/haproxy/haproxy.cfg.tmpl, all on loopback.

    with Cluster(replicas=3) as c:          # skips (exit 77) without haproxy/redis-server
        c.api.CreateSession(..., metadata=md(sid))
        r = c.turn(sid, tokens, expected_version=v)   # retries UNAVAILABLE, see SessionClient
        c.kill(0); c.start(0); c.term(1); c.redis.restart()

Replicas are addressed by index; the balancer's ring never changes (servers are declared once,
in order), so a stopped replica's sessions move and come back when it returns. Tests that need
what only fencing guarantees (a returning replica with stale copies, split brain) build on
this module (test_scaleout.py has the ones that do not)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

if not shutil.which("haproxy") or not shutil.which("redis-server"):
    print("SKIP: haproxy or redis-server is not installed (tools/install-deps.sh installs them)")
    sys.exit(77)

import grpc  # noqa: E402

from rcd_harness import (ROOT, Stub, collect, daemon_binary, free_port, gen_request, hpb,  # noqa: E402
                         pb)

C = grpc.StatusCode
RENDER = os.path.join(ROOT, "deploy", "haproxy", "render.py")
# What a turn's client retries: UNAVAILABLE (no replica reached, or a draining one refused
# the call), and a stream the balancer cut because its replica died mid-turn: HAProxy resets
# the client's stream, which grpcio reports as UNKNOWN "Stream removed" (never UNAVAILABLE).
# Whether such a turn committed is unknown, so the retry always carries expected_version (the
# last acknowledged one): FAILED_PRECONDITION then means "it did commit", never a double turn.
RETRIABLE = (C.UNAVAILABLE,)
# Set True once the daemon checks Redis's authoritative version before trusting its own
# host-cache or disk copy (fencing): tests where a replica comes back on its own state dir
# after its sessions advanced elsewhere need it.
FENCED = True  # statestore: Redis is the authority (--redis-authority, on by default)


def broken_stream(e):
    return e.code() == C.UNKNOWN and "Stream removed" in (e.details() or "")


def retriable(e):
    return e.code() in RETRIABLE or broken_stream(e)


def md(sid):
    return [("x-session-id", sid)]


def replica_of(call):
    return dict(call.initial_metadata() or ()).get("x-recurd-replica")


def _wait_port(port, proc, what, timeout=60, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited %d%s" % (what, proc.returncode,
                                                   ":\n" + open(log).read() if log else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on %d" % (what, port))


class Redis:
    """redis-server with AOF, appendfsync always (the persistence the manifests need)."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "redis")
        os.makedirs(self.dir)
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.proc = None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()
        self.log.close()

    def restart(self, sig=signal.SIGKILL):
        self.stop(sig)
        self.start()


class Replica:
    """One recurd on a fixed loopback port and its own state dir (both kept across restarts)."""

    def __init__(self, index, tmp, redis_addr, extra=()):
        self.index = index
        self.name = "r%d" % index
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.http_port = free_port()  # the balancer's health check (closes when draining)
        self.dir = os.path.join(tmp, self.name)
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir)
        self.redis_addr = redis_addr
        self.extra = list(extra)
        self.proc = None
        self.starts = 0

    def start(self, extra=(), fresh=False):
        """fresh: on an empty state dir (a replacement pod with a new volume)."""
        if fresh:
            shutil.rmtree(self.state_dir)
            os.makedirs(self.state_dir)
        port_file = os.path.join(self.dir, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.starts += 1
        self.log_path = os.path.join(self.dir, "recurd.%d.log" % self.starts)
        self.log = open(self.log_path, "wb")
        cmd = [daemon_binary(), "--port", str(self.port), "--port-file", port_file,
               "--no-progress", "--threads", "1", "--state-dir", self.state_dir,
               "--redis", self.redis_addr, "--replica-name", self.name,
               "--drain-grace-ms", "20000", "--http-port", str(self.http_port)] + \
            self.extra + list(extra)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited %d:\n%s" % (self.name, self.proc.returncode,
                                                          self.logs()))
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("%s did not start:\n%s" % (self.name, self.logs()))
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self, sig=signal.SIGKILL):
        """SIGKILL (or SIGSTOP etc.): no drain; returns at once for a stop signal."""
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()
            self.log.close()

    def term(self, timeout=60):
        """SIGTERM: drains (in-flight turns finish); returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("%s did not drain:\n%s" % (self.name, self.logs()[-3000:]))
        self.log.close()
        return self.proc.returncode


class HAProxy:
    def __init__(self, tmp, replicas):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.cfg = os.path.join(tmp, "haproxy.cfg")
        args = [sys.executable, RENDER, "--listen", self.addr, "-o", self.cfg]
        for r in replicas:
            args += ["--server", "%s=%s/%d" % (r.name, r.addr, r.http_port)]
        subprocess.check_call(args)
        subprocess.check_call(["haproxy", "-c", "-q", "-f", self.cfg])
        self.log_path = os.path.join(tmp, "haproxy.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "haproxy", log=self.log_path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Cluster:
    """redis + N replicas + haproxy; self.api/self.health talk to the balancer."""

    def __init__(self, replicas=3, extra=()):
        self.tmp = tempfile.mkdtemp(prefix="recurd-scale-")
        self.redis = Redis(self.tmp)
        self.replicas = [Replica(i, self.tmp, self.redis.addr, extra) for i in range(replicas)]
        try:
            for r in self.replicas:
                r.start()
            self.lb = HAProxy(self.tmp, self.replicas)
            self.channel = grpc.insecure_channel(self.lb.addr)
            self.api = Stub(self.channel, pb.DESCRIPTOR.services_by_name["Inference"], pb)
            self.health = Stub(self.channel, hpb.DESCRIPTOR.services_by_name["Health"], hpb)
            self.wait_routed([r.name for r in self.replicas])
        except BaseException:
            self.close(check=False)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(check=exc[0] is None)

    def close(self, check=True):
        """Drains every live replica (exit 0 required when check), stops haproxy and redis."""
        bad = []
        if getattr(self, "channel", None):
            self.channel.close()
        for r in self.replicas:
            if r.alive():
                r.proc.send_signal(signal.SIGCONT)
                rc = r.term()
                if rc != 0:
                    bad.append("%s exited %d:\n%s" % (r.name, rc, r.logs()[-3000:]))
        if getattr(self, "lb", None):
            self.lb.stop()
        self.redis.stop()
        if bad and check:
            raise AssertionError("\n".join(bad))
        if not bad:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the balancer's view ------------------------------------------------------------

    def served_by(self, n=30):
        """Names of the replicas that served n stateless calls (round robin over the up ones)."""
        seen = []
        for _ in range(n):
            try:
                _, call = self.api.ListModels.with_call(pb.ListModelsRequest(), timeout=5)
                seen.append(replica_of(call))
            except grpc.RpcError as e:
                if e.code() not in RETRIABLE:
                    raise
        return seen

    def wait_routed(self, names, timeout=30):
        """Waits until HAProxy routes to exactly `names` (its checks marked the others down)."""
        want = set(names)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if set(self.served_by(3 * len(self.replicas))) == want:
                return
            time.sleep(0.1)
        raise AssertionError("haproxy does not route to exactly %s" % sorted(want))

    def up(self):
        return [r.name for r in self.replicas if r.alive()]

    # -- replica lifecycle ---------------------------------------------------------------

    def kill(self, i):
        self.replicas[i].kill()
        self.wait_routed(self.up())

    def term(self, i):
        rc = self.replicas[i].term()
        self.wait_routed(self.up())
        return rc

    def start(self, i, extra=(), fresh=False):
        self.replicas[i].start(extra, fresh)
        self.wait_routed(self.up())


class Turn:
    def __init__(self, replica, ids, logprobs, version, retries, broken):
        self.replica, self.ids, self.logprobs = replica, ids, logprobs
        self.version, self.retries, self.broken = version, retries, broken


def turn(api, sid, tokens, expected_version, max_tokens=6, timeout=60, deadline_s=60,
         on_retry=None):
    """One greedy session turn through the balancer, at expected_version (the last
    acknowledged version). A retriable() failure is retried (after 50 ms) with the same
    expected_version; if the failed attempt did commit, the retry's FAILED_PRECONDITION is
    returned as Turn(version=None) and the caller re-reads the session. Other errors raise."""
    retries = broken = 0
    end = time.time() + deadline_s
    while True:
        try:
            st = api.Generate(gen_request(tokens=tokens, session=sid, max_tokens=max_tokens,
                                          temperature=0, ignore_eos=True,
                                          expected_version=expected_version),
                              metadata=md(sid), timeout=timeout)
            _, ids, lps, last = collect(st)
            return Turn(replica_of(st), ids, list(lps), last.session_version, retries, broken)
        except grpc.RpcError as e:
            if e.code() == C.FAILED_PRECONDITION and retries:
                return Turn(None, None, None, None, retries, broken)
            if not retriable(e) or time.time() > end:
                raise
            retries += 1
            broken += broken_stream(e)
            if on_retry:
                on_retry(e)
            time.sleep(0.05)


def retrying(fn, deadline_s=30):
    """Calls fn() until it does not fail RETRIABLE (unary calls that are safe to repeat)."""
    end = time.time() + deadline_s
    while True:
        try:
            return fn()
        except grpc.RpcError as e:
            if e.code() not in RETRIABLE or time.time() > end:
                raise
            time.sleep(0.05)


def in_threads(fns):
    """Runs each fn on its own thread; returns their results (or raised exceptions) in order."""
    out = [None] * len(fns)

    def go(i):
        try:
            out[i] = fns[i]()
        except BaseException as e:  # noqa: B902 - reported by the caller
            out[i] = e

    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out
