#!/usr/bin/env python3
"""The soak (issue 17): a real recurd at saturation for a long time, restarted on a timer.

  bench/soak.sh [--duration 3600] [--restart-every 600] [--clients 16] [--out DIR] [-- recurd args]
  python3 bench/soak.py --summary DIR/results.json      # the markdown for bench/RESULTS.md

Starts build/release/daemon/recurd on the mamba-130m-shaped checkpoint (no tokenizer: prompts
are random token ids below --vocab) with a durable --state-dir, and runs --clients closed-loop
clients (no think time: saturation) with the mix in MIX below. Every --restart-every seconds
the daemon is restarted on the same state dir, alternately by SIGTERM (drain, must exit 0) and
SIGKILL (no drain: only what was durable survives). After each restart the clients pause and
every session the run knows is checked against the ledger of acknowledged turns; at the end a
sample of sessions is replayed (their next greedy turn must equal a stateless run of their
whole acknowledged history plus the same prompt).

Outputs under --out: samples.csv (every --sample-every s: the daemon's VmRSS, VmHWM, open fds,
threads, state dir size), events.jsonl (restarts, checks, unexpected errors), recurd-N.log (the
daemon's log per lifetime), results.json (rewritten every --print-every s, complete at the end),
and one status line per --print-every s on stdout."""
import argparse
import collections
import csv
import faulthandler
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from rcd_harness import Stub, gen_request, hpb, pb  # noqa: E402  (exits 77 without grpcio)

import grpc  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # noqa: E402
from benchlib import cpu_model  # noqa: E402

SC = grpc.StatusCode

# Operation mix: weights of the kinds a client draws for each operation (creates happen when
# a client holds no session, deletes also when a session's history passes --max-history).
MIX = {
    "stateless": 25,  # prompt 16-128 tokens, 16-64 out, no session
    "session": 30,  # a turn on one of the client's sessions (expected_version set), 8-64 in, 8-32 out
    "prefix": 10,  # stateless, one of 8 shared 256-token prefixes + 4-16 tokens: a prefix hit
    "fork": 7,  # ForkSession of one of the client's sessions
    "delete": 5,  # DeleteSession (when the client holds more than one)
    "get": 3,  # GetSession (checked against the ledger)
    "cancel": 10,  # a 256-token turn (stateless or session) cancelled queued or mid-stream
    "deadline": 10,  # a 256-token turn (stateless or session) with a 50-500 ms deadline
}
GEN_KINDS = ("stateless", "session", "prefix", "cancel", "deadline")
KINDS = ("stateless", "session", "prefix", "fork", "delete", "create", "get", "cancel",
         "deadline")
HANG_GRACE = 10.0  # s past its deadline after which the watchdog closes a call's channel
RECONNECT_GRACE = 5.0  # s after a restart in which UNAVAILABLE still counts as the restart's
OP_TIMEOUT = 60.0  # seconds; a normal operation past this is an unexpected DEADLINE_EXCEEDED
PREFIX_LEN = 256
N_PREFIXES = 8
TARGET_SESSIONS = 3  # a client forks/creates up to about this many sessions, deletes above


def now():
    return time.monotonic()


def pct(xs, q):
    """Nearest-rank percentile of a list (None when empty)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


class Stats:
    """Every finished operation, aggregated per window; errors by status and class."""

    def __init__(self, t0, window):
        self.t0, self.window = t0, window
        self.lock = threading.Lock()
        self.win = {}
        self.errors = collections.defaultdict(collections.Counter)  # status -> class -> n
        self.unexpected = []  # first 200, with details
        self.n_unexpected = 0
        self.ops = 0
        self.out_tokens = 0
        self.acked_turns = 0
        self.last_ops = 0
        self.last_tokens = 0

    def _w(self, t):
        i = int((t - self.t0) // self.window)
        w = self.win.get(i)
        if w is None:
            w = self.win[i] = {"lat": collections.defaultdict(list),
                               "ttft": collections.defaultdict(list),
                               "status": collections.Counter(), "ops": 0, "tokens": 0,
                               "prefix_ops": 0, "prefix_hits": 0, "unexpected": 0}
        return w

    def record(self, kind, status, cls, lat, ttft=None, tokens=0, cached=None, detail=None):
        t = now()
        with self.lock:
            w = self._w(t)
            w["ops"] += 1
            self.ops += 1
            w["status"][status] += 1
            if status == "OK":
                w["lat"][kind].append(lat)
                if ttft is not None:
                    w["ttft"][kind].append(ttft)
                w["tokens"] += tokens
                self.out_tokens += tokens
                if kind == "prefix":
                    w["prefix_ops"] += 1
                    w["prefix_hits"] += 1 if cached else 0
            else:
                self.errors[status][cls] += 1
            if cls == "unexpected":
                w["unexpected"] += 1
                self.n_unexpected += 1
                if len(self.unexpected) < 200:
                    self.unexpected.append({"t": round(t - self.t0, 2), "kind": kind,
                                            "status": status, "detail": detail})

    def flag(self, what, detail):
        """An unexpected finding that is not an RPC status (a version skip, a bad count)."""
        self.record(what, "CHECK", "unexpected", 0.0, detail=detail)

    def windows(self):
        out = []
        with self.lock:
            for i in sorted(self.win):
                w = self.win[i]
                row = {"window": i, "start_s": i * self.window, "ops": w["ops"],
                       "out_tokens": w["tokens"], "status": dict(w["status"]),
                       "unexpected": w["unexpected"], "prefix_ops": w["prefix_ops"],
                       "prefix_hits": w["prefix_hits"], "kinds": {}}
                for k in KINDS:
                    lat, tt = w["lat"].get(k, []), w["ttft"].get(k, [])
                    if lat:
                        row["kinds"][k] = {
                            "n": len(lat), "p50_ms": round(pct(lat, 50) * 1e3, 1),
                            "p99_ms": round(pct(lat, 99) * 1e3, 1),
                            "ttft_p50_ms": round(pct(tt, 50) * 1e3, 1) if tt else None,
                            "ttft_p99_ms": round(pct(tt, 99) * 1e3, 1) if tt else None}
                out.append(row)
        return out


class Sess:
    """One session in the ledger. acked_* move only on an acknowledgement from the daemon;
    version is what the client believes (for expected_version); history is the token ids the
    committed state absorbed, None once a commit happened that the client did not see."""

    def __init__(self, sid, version, tokens, history):
        self.id = sid
        self.acked_version = self.version = version
        self.acked_tokens = self.tokens = tokens
        self.history = history
        self.dirty = False  # a turn failed after it may have been committed: resync first
        # resynced, and that turn may still be committing: ABORTED (commit in flight) or
        # FAILED_PRECONDITION (it landed) on the next turn are expected; cleared by a success
        self.suspect = False
        self.state = "live"  # live | deleting | deleted


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.sessions = {}
        self.lost = 0  # acknowledged turns found missing
        self.lost_detail = []

    def add(self, s):
        with self.lock:
            self.sessions[s.id] = s

    def snapshot(self):
        with self.lock:
            return list(self.sessions.values())

    def check(self, s, got, stats, where):
        """got: a Session from GetSession, or None for NOT_FOUND. Returns False when the daemon
        lost something acknowledged."""
        if s.state == "deleted":
            if got is not None:
                stats.flag("check", "%s: deleted session %s exists (version %d)" %
                           (where, s.id, got.version))
                return False
            return True
        if got is None:
            n = s.acked_version
            self.note_lost(n + 1, "%s: session %s (acked version %d) is gone" %
                           (where, s.id, s.acked_version), stats)
            return False
        if got.version < s.acked_version:
            self.note_lost(s.acked_version - got.version,
                           "%s: session %s at version %d, acked %d" %
                           (where, s.id, got.version, s.acked_version), stats)
            return False
        if got.version == s.acked_version and got.token_count != s.acked_tokens:
            stats.flag("check", "%s: session %s version %d holds %d tokens, acked %d" %
                       (where, s.id, got.version, got.token_count, s.acked_tokens))
            return False
        return True

    def note_lost(self, n, detail, stats):
        with self.lock:
            self.lost += n
            if len(self.lost_detail) < 50:
                self.lost_detail.append(detail)
        stats.flag("lost", detail)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


CHANNEL_OPTS = [("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]


def stubs(addr):
    ch = grpc.insecure_channel(addr, options=CHANNEL_OPTS)
    return ch, Stub(ch, pb.DESCRIPTOR.services_by_name["Inference"], pb), \
        Stub(ch, hpb.DESCRIPTOR.services_by_name["Health"], hpb)


class Daemon:
    """recurd on a fixed loopback port and one state dir, restarted in place."""

    def __init__(self, a, out, events):
        self.a, self.out, self.events = a, out, events
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.state_dir = os.path.join(out, "state")
        self.proc = None
        self.n = 0
        self.started_at = None

    def cmd(self):
        return [self.a.recurd, "--model", self.a.model, "--state-dir", self.state_dir,
                "--port", str(self.port), "--http-port", "0", "--no-progress", "--threads", str(self.a.threads),
                "--slots", str(self.a.slots)] + self.a.daemon_args

    def start(self):
        self.n += 1
        t = now()
        log = open(os.path.join(self.out, "recurd-%d.log" % self.n), "wb")
        self.proc = subprocess.Popen(self.cmd(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = t + 300
        ch, _, health = stubs(self.addr)  # a fresh channel per start (see Soak.watchdog)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("recurd exited %d at start (see %s/recurd-%d.log)" %
                                   (self.proc.returncode, self.out, self.n))
            try:
                r = health.Check(hpb.HealthCheckRequest(), timeout=1)
                if r.status == hpb.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if now() > deadline:
                self.proc.kill()
                raise RuntimeError("recurd did not serve within 300 s")
            time.sleep(0.1)
        ch.close()
        self.started_at = now()
        return self.started_at - t

    def stop(self, sig):
        t = now()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=self.a.drain_wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            rc = "hung (killed after %d s)" % self.a.drain_wait
        return rc, now() - t

    def scan_report(self):
        """(sessions, quarantined checkpoints) from the startup scan's log line, or Nones."""
        try:
            with open(os.path.join(self.out, "recurd-%d.log" % self.n), "rb") as f:
                for line in f:
                    if b'"event":"store"' in line and b"quarantined" in line:
                        m = re.search(r"(\d+) sessions, (\d+) quarantined",
                                      json.loads(line).get("msg", ""))
                        if m:
                            return int(m.group(1)), int(m.group(2))
        except (OSError, ValueError):
            pass
        return None, None


class Soak:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        os.makedirs(self.out, exist_ok=True)
        self.events_f = open(os.path.join(self.out, "events.jsonl"), "a")
        self.events_lock = threading.Lock()
        self.t0 = now()
        self.wall0 = time.time()
        self.stats = Stats(self.t0, a.window)
        self.ledger = Ledger()
        self.d = Daemon(a, self.out, self.event)
        self.stop_flag = threading.Event()
        self.gate = threading.Event()  # set: clients may start operations
        self.up = threading.Event()  # set: the daemon is serving
        self.up_at = 0.0
        self.epoch = 0  # odd while a restart is in progress
        self.busy = 0
        self.busy_cv = threading.Condition()
        self.samples = []
        self.restarts = []
        self.verifications = []
        self.lifetimes = []  # [start_s, end_s or None, how it ended]
        rng = random.Random(a.seed)
        self.prefixes = [[rng.randrange(a.vocab) for _ in range(PREFIX_LEN)]
                         for _ in range(N_PREFIXES)]
        self.run_id = "%x" % (int(self.wall0) & 0xFFFFFF)
        self.replay = None

    # ---- bookkeeping -------------------------------------------------------------------

    def t(self):
        return round(now() - self.t0, 2)

    def event(self, kind, **kw):
        kw = dict(t=self.t(), event=kind, **kw)
        with self.events_lock:
            self.events_f.write(json.dumps(kw) + "\n")
            self.events_f.flush()

    def sampler(self):
        path = os.path.join(self.out, "samples.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "lifetime", "pid", "uptime_s", "rss_kib", "hwm_kib", "fds",
                        "threads", "state_mib", "state_files", "ops", "out_tokens"])
            while not self.stop_flag.is_set():
                s = self.sample()
                if s:
                    self.samples.append(s)
                    w.writerow([s[k] for k in ("t_s", "lifetime", "pid", "uptime_s", "rss_kib",
                                               "hwm_kib", "fds", "threads", "state_mib",
                                               "state_files", "ops", "out_tokens")])
                    f.flush()
                self.stop_flag.wait(self.a.sample_every)

    def sample(self):
        p = self.d.proc
        if p is None or p.poll() is not None or not self.up.is_set():
            return None
        st = {}
        try:
            with open("/proc/%d/status" % p.pid) as f:
                for line in f:
                    k, _, v = line.partition(":")
                    st[k] = v.split()[0] if v.split() else ""
            fds = len(os.listdir("/proc/%d/fd" % p.pid))
        except OSError:
            return None
        size = files = 0
        for dp, _, fs in os.walk(self.d.state_dir):
            for fn in fs:
                try:
                    size += os.lstat(os.path.join(dp, fn)).st_size
                    files += 1
                except OSError:
                    pass
        return {"t_s": self.t(), "lifetime": self.d.n, "pid": p.pid,
                "uptime_s": round(now() - self.d.started_at, 1),
                "rss_kib": int(st.get("VmRSS", 0)), "hwm_kib": int(st.get("VmHWM", 0)),
                "fds": fds, "threads": int(st.get("Threads", 0)),
                "state_mib": round(size / 2**20, 1), "state_files": files,
                "ops": self.stats.ops, "out_tokens": self.stats.out_tokens}

    # ---- the run -----------------------------------------------------------------------

    def run(self):
        a = self.a
        self.event("start", cmd=self.d.cmd(), clients=a.clients, duration=a.duration,
                   restart_every=a.restart_every, mix=MIX)
        st = self.d.start()
        self.lifetimes.append([self.t(), None, None])
        print("soak: recurd serving on %s after %.1f s; %d clients, %d s, restart every %d s; "
              "output in %s" % (self.d.addr, st, a.clients, a.duration, a.restart_every,
                                self.out), flush=True)
        self.up_at = now()
        self.up.set()
        self.gate.set()
        self.clients = [Client(self, i) for i in range(a.clients)]
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.watchdog, daemon=True)]
        threads += [threading.Thread(target=self.client, args=(c,), daemon=True)
                    for c in self.clients]
        for th in threads:
            th.start()
        end = self.t0 + a.duration
        next_restart = self.t0 + a.restart_every if a.restart_every > 0 else float("inf")
        next_print = self.t0 + a.print_every
        n_restart = 0
        try:
            while now() < end:
                time.sleep(max(0.0, min(end, next_restart, next_print) - now()))
                if now() >= next_restart:
                    if end - now() <= 30:  # too close to the end for a restart and its check
                        next_restart = float("inf")
                        continue
                    n_restart += 1
                    kill = a.kill_every > 0 and n_restart % a.kill_every == 0
                    self.restart(signal.SIGKILL if kill else signal.SIGTERM)
                    # a slow restart (a long pause) must not bunch the next ones together
                    next_restart = max(next_restart + a.restart_every,
                                       now() + a.restart_every / 2)
                if now() >= next_print:
                    self.status_line()
                    self.write_results()
                    next_print = max(next_print + a.print_every, now() + 1)
        finally:
            self.finish()

    def pause_clients(self, timeout=OP_TIMEOUT + 60):
        self.gate.clear()
        with self.busy_cv:
            ok = self.busy_cv.wait_for(lambda: self.busy == 0, timeout=timeout)
        if not ok:
            self.stats.flag("pause", "clients still busy %d s after the pause" % timeout)
            with open(os.path.join(self.out, "stuck-threads.txt"), "a") as f:
                f.write("t=%.1f\n" % self.t())
                faulthandler.dump_traceback(file=f, all_threads=True)

    def restart(self, sig):
        name = "SIGKILL" if sig == signal.SIGKILL else "SIGTERM"
        t_sig = self.t()
        life = self.lifetimes[-1]
        self.epoch += 1
        self.up.clear()
        rc, stop_s = self.d.stop(sig)
        life[1], life[2] = self.t(), name
        if sig == signal.SIGTERM and rc != 0:
            self.stats.flag("restart", "SIGTERM drain exited %r (expected 0)" % (rc,))
        start_s = self.d.start()
        self.epoch += 1
        self.lifetimes.append([self.t(), None, None])
        self.up_at = now()
        self.up.set()
        down_s = self.t() - t_sig
        self.pause_clients()
        v = self.verify("restart %d (%s)" % (len(self.restarts) + 1, name))
        self.gate.set()
        scanned, quarantined = self.d.scan_report()
        r = {"n": len(self.restarts) + 1, "t_s": t_sig, "signal": name, "exit": rc,
             "stop_s": round(stop_s, 2), "start_s": round(start_s, 2), "down_s": round(down_s, 2),
             "sessions_scanned": scanned, "quarantined": quarantined, "verify": v}
        if quarantined:
            self.stats.flag("restart", "startup quarantined %d checkpoint(s)" % quarantined)
        self.restarts.append(r)
        self.event("restart", **r)
        print("soak: [t=%5.0fs] restart %d by %s: exit %s after %.1f s, serving again after "
              "%.1f s (%s sessions on disk); checked %d sessions: lost %d, ahead %d, "
              "deleted still gone %d/%d" %
              (t_sig, r["n"], name, rc, stop_s, down_s, r["sessions_scanned"], v["checked"],
               v["lost_turns"], v["ahead"], v["deleted_ok"], v["deleted_checked"]), flush=True)

    def verify(self, where):
        """With the clients paused: every live session at >= its acked version (same token
        count when equal); a sample of deleted sessions still NOT_FOUND."""
        _, api, _ = stubs(self.d.addr)
        before = self.ledger.lost
        checked = ahead = dchecked = dok = bad = 0
        live = [s for s in self.ledger.snapshot() if s.state == "live"]
        dead = [s for s in self.ledger.snapshot() if s.state == "deleted"]
        random.shuffle(dead)
        for s in live + dead[:50]:
            try:
                got = api.GetSession(pb.GetSessionRequest(session_id=s.id), timeout=30)
            except grpc.RpcError as e:
                if e.code() != SC.NOT_FOUND:
                    self.stats.flag("check", "%s: GetSession %s: %s %s" %
                                    (where, s.id, e.code().name, e.details()))
                    bad += 1
                    continue
                got = None
            ok = self.ledger.check(s, got, self.stats, where)
            if s.state == "deleted":
                dchecked += 1
                dok += 1 if ok else 0
                continue
            checked += 1
            bad += 0 if ok else 1
            if got is not None and got.version > s.acked_version:
                ahead += 1
        v = {"where": where, "t_s": self.t(), "checked": checked, "ahead": ahead,
             "lost_turns": self.ledger.lost - before, "bad": bad, "deleted_checked": dchecked,
             "deleted_ok": dok}
        self.verifications.append(v)
        return v

    def finish(self):
        self.pause_clients()
        self.stop_flag.set()
        v = self.verify("end")
        print("soak: end check: %d sessions, lost %d, ahead %d, deleted still gone %d/%d" %
              (v["checked"], v["lost_turns"], v["ahead"], v["deleted_ok"],
               v["deleted_checked"]), flush=True)
        self.replay = self.replay_sample()
        print("soak: replay: %d sessions, %d equal, %d differ, %d skipped (history unknown)" %
              (self.replay["replayed"], self.replay["equal"], self.replay["differ"],
               self.replay["skipped"]), flush=True)
        last = self.sample()
        if last:
            self.samples.append(last)
        rc, stop_s = self.d.stop(signal.SIGTERM)
        self.lifetimes[-1][1:] = [self.t(), "SIGTERM (end)"]
        if rc != 0:
            self.stats.flag("restart", "final SIGTERM drain exited %r (expected 0)" % (rc,))
        self.final_exit = rc
        self.event("end", exit=rc, stop_s=round(stop_s, 2))
        self.status_line()
        self.write_results(final=True)
        print("soak: results in %s/results.json; table: python3 %s --summary %s/results.json" %
              (self.out, os.path.relpath(__file__), self.out), flush=True)

    def replay_sample(self):
        """Up to --replay sessions whose whole acknowledged history is known and still current:
        the next greedy turn on the session must equal a stateless run of history + prompt."""
        _, api, _ = stubs(self.d.addr)
        rng = random.Random(self.a.seed + 1)
        cands = [s for s in self.ledger.snapshot() if s.state == "live" and s.history is not None
                 and not s.dirty and 0 < len(s.history) <= self.a.max_history + 256]
        rng.shuffle(cands)
        res = {"replayed": 0, "equal": 0, "differ": 0, "skipped": 0, "tokens": [],
               "max_logprob_diff": 0.0, "detail": []}
        for s in cands:
            if res["replayed"] >= self.a.replay:
                break
            try:
                got = api.GetSession(pb.GetSessionRequest(session_id=s.id), timeout=30)
            except grpc.RpcError as e:
                self.stats.flag("replay", "GetSession %s: %s" % (s.id, e.code().name))
                continue
            if got.version != s.acked_version or got.token_count != len(s.history):
                res["skipped"] += 1
                continue
            probe = [rng.randrange(self.a.vocab) for _ in range(8)]
            kw = dict(max_tokens=8, temperature=0, ignore_eos=True, logprobs=1)
            try:
                a_ids, a_lp = self.collect(api.Generate(
                    gen_request(tokens=s.history + probe, **kw), timeout=600))
                b_ids, b_lp = self.collect(api.Generate(
                    gen_request(tokens=probe, session=s.id, expected_version=s.acked_version,
                                **kw), timeout=600))
            except grpc.RpcError as e:
                self.stats.flag("replay", "%s: %s %s" % (s.id, e.code().name, e.details()))
                continue
            res["replayed"] += 1
            res["tokens"].append(len(s.history))
            if a_ids == b_ids:
                res["equal"] += 1
                d = max((abs(x - y) for x, y in zip(a_lp, b_lp)), default=0.0)
                res["max_logprob_diff"] = max(res["max_logprob_diff"], d)
            else:
                res["differ"] += 1
                res["detail"].append({"session": s.id, "history": len(s.history),
                                      "stateless": a_ids, "session_turn": b_ids})
                self.stats.flag("replay", "session %s (%d tokens): turn %s != stateless %s" %
                                (s.id, len(s.history), b_ids, a_ids))
        return res

    @staticmethod
    def collect(stream):
        ids, lps = [], []
        for m in stream:
            ids.extend(m.token_ids)
            lps.extend(lp.logprob for lp in m.logprobs)
        return ids, lps

    # ---- clients -----------------------------------------------------------------------

    def client(self, c):
        while not self.stop_flag.is_set():
            if not self.gate.wait(timeout=1.0):
                continue
            with self.busy_cv:
                self.busy += 1
            try:
                if c.hung:
                    c.renew()
                c.step()
            except ValueError as e:  # the watchdog closed the channel between two calls
                if not c.hung:
                    self.stats.flag("client", "client %d: %r" % (c.i, e))
            except Exception as e:  # a bug in the soak itself: report it, keep going
                self.stats.flag("client", "client %d: %r" % (c.i, e))
                time.sleep(1)
            finally:
                c.call_until = None
                with self.busy_cv:
                    self.busy -= 1
                    self.busy_cv.notify_all()

    def watchdog(self):
        """grpcio (1.51, Debian 12) can leave a call that was started around a daemon's
        drain waiting forever, past its deadline, with no connection under it; cancel() does
        not release it, closing its channel does. Such a call is counted as CLIENT_HANG (class
        "client") and the client goes on with a new channel."""
        while not self.stop_flag.is_set():
            t = now()
            for c in self.clients:
                u = c.call_until
                if u is not None and t > u + HANG_GRACE and not c.hung:
                    c.hung = True
                    self.event("client_hang", client=c.i, over_deadline_s=round(t - u, 1))
                    c.ch.close()
            self.stop_flag.wait(1.0)

    # ---- output ------------------------------------------------------------------------

    def status_line(self):
        s = self.stats
        with s.lock:
            ops, toks = s.ops, s.out_tokens
            d_ops, d_tok = ops - s.last_ops, toks - s.last_tokens
            s.last_ops, s.last_tokens = ops, toks
            errs = {k: sum(v.values()) for k, v in s.errors.items()}
            unexp = s.n_unexpected
        smp = self.samples[-1] if self.samples else None
        ws = self.stats.windows()
        cur = ws[-1] if ws else {"kinds": {}}
        p99 = " ".join("%s %s" % (k[:4], int(cur["kinds"][k]["p99_ms"]))
                       for k in ("stateless", "session", "prefix", "fork", "get")
                       if k in cur["kinds"])
        print("soak: [t=%5.0fs] ops %d (+%d) tok/s %.0f | rss %s MiB fds %s | p99 ms (window "
              "%d): %s | errors %s | unexpected %d | acked %d lost %d" %
              (self.t(), ops, d_ops, d_tok / self.a.print_every,
               "%.0f" % (smp["rss_kib"] / 1024) if smp else "-", smp["fds"] if smp else "-",
               cur.get("window", 0), p99 or "-",
               " ".join("%s %d" % kv for kv in sorted(errs.items())) or "none", unexp,
               s.acked_turns, self.ledger.lost), flush=True)

    def write_results(self, final=False):
        a = self.a
        res = {
            "final": final,
            "started_unix": self.wall0,
            "elapsed_s": self.t(),
            "config": {"clients": a.clients, "duration_s": a.duration,
                       "restart_every_s": a.restart_every, "kill_every": a.kill_every,
                       "window_s": a.window, "warmup_s": a.warmup, "model": a.model,
                       "vocab": a.vocab, "cmd": self.d.cmd(), "mix": MIX,
                       "max_history": a.max_history, "seed": a.seed,
                       "cpu": cpu_model(), "nproc": os.cpu_count(),
                       "host": platform.node(), "kernel": platform.release()},
            "ops": self.stats.ops, "out_tokens": self.stats.out_tokens,
            "acked_turns": self.stats.acked_turns, "lost_turns": self.ledger.lost,
            "lost_detail": self.ledger.lost_detail,
            "errors": {k: dict(v) for k, v in self.stats.errors.items()},
            "unexpected": self.stats.unexpected, "n_unexpected": self.stats.n_unexpected,
            "windows": self.stats.windows(),
            "samples": self.samples,
            "lifetimes": self.lifetimes,
            "restarts": self.restarts,
            "verifications": self.verifications,
            "replay": self.replay,
            "sessions": {"tracked": len(self.ledger.sessions),
                         "live": sum(1 for s in self.ledger.snapshot() if s.state == "live")},
        }
        if final:
            res["final_exit"] = self.final_exit
            res["daemon_logs"] = log_levels(self.out, self.d.n)
            res["load_avg"] = os.getloadavg()
        tmp = os.path.join(self.out, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, os.path.join(self.out, "results.json"))


class Client:
    """One closed-loop client on its own channel (its own connection) with its own sessions."""

    def __init__(self, soak, i):
        self.s, self.i = soak, i
        self.a = soak.a
        self.rng = random.Random(soak.a.seed * 1000 + i)
        self.ch, self.api, _ = stubs(soak.d.addr)
        self.hung = False  # the watchdog closed self.ch under a call past its deadline
        self.call_until = None  # when the current call's deadline passes
        self.mine = []  # live Sess
        self.to_delete = []  # ids whose delete (or failed create/fork) is unresolved
        self.n = 0
        self.kinds = list(MIX)
        self.weights = [MIX[k] for k in self.kinds]

    def renew(self):
        self.ch, self.api, _ = stubs(self.s.d.addr)
        self.hung = False

    def rpc(self, timeout=OP_TIMEOUT):
        """Called before each RPC: arms the watchdog; returns the timeout."""
        self.call_until = now() + timeout
        return timeout

    def toks(self, lo, hi):
        return [self.rng.randrange(self.a.vocab) for _ in range(self.rng.randint(lo, hi))]

    def new_id(self):
        self.n += 1
        return "soak-%s-c%d-%d" % (self.s.run_id, self.i, self.n)

    # An operation: returns nothing; records its outcome in stats.
    def step(self):
        if self.to_delete:
            return self.op_delete(self.to_delete[0], cleanup=True)
        dirty = [x for x in self.mine if x.dirty]
        if dirty:
            return self.resync(dirty[0])
        if not self.mine:
            return self.op_create()
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "stateless":
            return self.op_generate("stateless", self.toks(16, 128), self.rng.randint(16, 64))
        if kind == "prefix":
            p = self.rng.choice(self.s.prefixes) + self.toks(4, 16)
            return self.op_generate("prefix", p, self.rng.randint(8, 16))
        if kind == "session":
            x = self.rng.choice(self.mine)
            if x.tokens > self.a.max_history:
                return self.op_delete(x.id, sess=x)
            return self.op_generate("session", self.toks(8, 64), self.rng.randint(8, 32), sess=x)
        if kind in ("cancel", "deadline"):
            x = self.rng.choice(self.mine) if self.rng.random() < 0.5 else None
            return self.op_generate(kind, self.toks(16, 64), 256, sess=x)
        if kind == "fork":
            if len(self.mine) > TARGET_SESSIONS + 2:
                return self.op_delete(self.mine[0].id, sess=self.mine[0])
            return self.op_fork(self.rng.choice(self.mine))
        if kind == "delete":
            if len(self.mine) <= 1:
                return self.op_create()
            x = self.rng.choice(self.mine)
            return self.op_delete(x.id, sess=x)
        if kind == "get":
            return self.op_get(self.rng.choice(self.mine))
        raise AssertionError(kind)

    def classify(self, kind, code, epoch0, sess=None):
        """expected: the status this operation asked for; restart: UNAVAILABLE/CANCELLED
        while the daemon was down or draining; resync: ABORTED/FAILED_PRECONDITION on a
        session whose previous turn's outcome was unknown; else unexpected."""
        if code == SC.CANCELLED and kind == "cancel":
            return "expected"
        if code == SC.DEADLINE_EXCEEDED and kind == "deadline":
            return "expected"
        restart = self.s.epoch != epoch0 or epoch0 % 2 == 1 or not self.s.up.is_set()
        if restart and code in (SC.UNAVAILABLE, SC.CANCELLED):
            return "restart"
        if code == SC.UNAVAILABLE and now() - self.s.up_at < RECONNECT_GRACE:
            return "restart"  # the channel may still be in its reconnect backoff
        if sess is not None and sess.suspect and code in (SC.ABORTED, SC.FAILED_PRECONDITION):
            return "resync"
        return "unexpected"

    def fail(self, kind, e, epoch0, t0, sess=None):
        self.call_until = None
        code = e.code()
        if self.hung:
            self.s.stats.record(kind, "CLIENT_HANG", "client", now() - t0,
                                detail="call past its deadline, channel closed")
            self.renew()
            return "client"
        cls = self.classify(kind, code, epoch0, sess)
        self.s.stats.record(kind, code.name, cls, now() - t0,
                            detail="%s%s" % (("session %s: " % sess.id) if sess else "",
                                             e.details()))
        if cls == "restart":
            self.s.up.wait(timeout=600)  # retry once the daemon serves again
        elif code == SC.UNAVAILABLE:
            time.sleep(0.2)
        return cls

    def op_generate(self, kind, prompt, max_tokens, sess=None):
        a = dict(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        if sess is not None:
            a["expected_version"] = sess.version
        req = gen_request(tokens=prompt, session=sess.id if sess else None, **a)
        timeout = OP_TIMEOUT
        cancel_after = None  # messages; 0: a timer cancels it, perhaps while queued
        if kind == "deadline":
            timeout = self.rng.uniform(0.05, 0.5)
        elif kind == "cancel":
            cancel_after = self.rng.choice((0, 1, 2, 3))
        epoch0, t0 = self.s.epoch, now()
        ttft, ids, last, timer = None, [], None, None
        try:
            call = self.api.Generate(req, timeout=self.rpc(timeout))
            if cancel_after == 0:
                timer = threading.Timer(self.rng.uniform(0.0, 0.3), call.cancel)
                timer.start()
            n = 0
            for m in call:
                if ttft is None:
                    ttft = now() - t0
                ids.extend(m.token_ids)
                last = m
                n += 1
                if cancel_after and n >= cancel_after:
                    call.cancel()
                    break
            if cancel_after:
                code = call.code()
                if code != SC.OK:
                    raise _Err(code, call.details())
        except grpc.RpcError as e:
            if timer:
                timer.cancel()
            self.fail(kind, e, epoch0, t0, sess)
            if sess is not None:
                sess.dirty = True  # it may have committed (cancel after the commit was queued)
            return
        if timer:
            timer.cancel()
        lat = now() - t0
        cached = last.usage.cached_prompt_tokens if last is not None else 0
        if last is None or last.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
            self.s.stats.record(kind, "NO_FINAL", "unexpected", lat,
                                detail="stream ended without a final message")
            if sess is not None:
                sess.dirty = True
            return
        if len(ids) != max_tokens:
            self.s.stats.flag("check", "%s: %d tokens for max_tokens %d (ignore_eos)" %
                              (kind, len(ids), max_tokens))
        if sess is not None:
            if last.session_version != sess.version + 1:
                self.s.stats.flag("check", "session %s: turn acked version %d after %d" %
                                  (sess.id, last.session_version, sess.version))
            sess.version = sess.acked_version = last.session_version
            sess.suspect = False
            sess.tokens += len(prompt) + len(ids)
            sess.acked_tokens = sess.tokens
            if sess.history is not None:
                sess.history.extend(prompt)
                sess.history.extend(ids)
            with self.s.stats.lock:
                self.s.stats.acked_turns += 1
        self.s.stats.record(kind, "OK", "ok", lat, ttft=ttft, tokens=len(ids), cached=cached)

    def resync(self, x):
        """After a turn with an unknown outcome: the session must still hold every acked turn;
        adopt the daemon's version (history unknown if it moved past what was acked)."""
        epoch0, t0 = self.s.epoch, now()
        try:
            got = self.api.GetSession(pb.GetSessionRequest(session_id=x.id), timeout=self.rpc())
        except grpc.RpcError as e:
            if e.code() == SC.NOT_FOUND and not self.hung:
                self.s.ledger.check(x, None, self.s.stats, "resync")
                self.mine.remove(x)
                x.state = "deleted"  # lost (counted), stop using it
                self.s.stats.record("get", "NOT_FOUND", "unexpected", now() - t0,
                                    detail="resync of %s" % x.id)
                return
            self.fail("get", e, epoch0, t0)
            return
        self.s.ledger.check(x, got, self.s.stats, "resync")
        if got.version != x.acked_version or got.token_count != x.acked_tokens:
            x.history = None
        x.version, x.tokens = got.version, got.token_count
        x.dirty, x.suspect = False, True
        self.s.stats.record("get", "OK", "ok", now() - t0)

    def op_get(self, x):
        epoch0, t0 = self.s.epoch, now()
        try:
            got = self.api.GetSession(pb.GetSessionRequest(session_id=x.id), timeout=self.rpc())
        except grpc.RpcError as e:
            self.fail("get", e, epoch0, t0, x)
            return
        self.s.ledger.check(x, got, self.s.stats, "get")
        if got.version != x.version:
            self.s.stats.flag("check", "session %s: GetSession version %d, client %d" %
                              (x.id, got.version, x.version))
        self.s.stats.record("get", "OK", "ok", now() - t0)

    def op_create(self):
        sid = self.new_id()
        epoch0, t0 = self.s.epoch, now()
        try:
            got = self.api.CreateSession(pb.CreateSessionRequest(session_id=sid),
                                         timeout=self.rpc())
        except grpc.RpcError as e:
            self.to_delete.append(sid)  # it may exist: clean it up
            self.fail("create", e, epoch0, t0)
            return
        x = Sess(sid, got.version, got.token_count, [])
        self.mine.append(x)
        self.s.ledger.add(x)
        self.s.stats.record("create", "OK", "ok", now() - t0)

    def op_fork(self, src):
        sid = self.new_id()
        epoch0, t0 = self.s.epoch, now()
        try:
            got = self.api.ForkSession(pb.ForkSessionRequest(session_id=src.id,
                                                             new_session_id=sid),
                                       timeout=self.rpc())
        except grpc.RpcError as e:
            self.to_delete.append(sid)
            self.fail("fork", e, epoch0, t0, src)
            return
        if got.version != src.version or got.token_count != src.tokens:
            self.s.stats.flag("check", "fork of %s at version %d/%d tokens gave %d/%d" %
                              (src.id, src.version, src.tokens, got.version, got.token_count))
        x = Sess(sid, got.version, got.token_count,
                 list(src.history) if src.history is not None else None)
        self.mine.append(x)
        self.s.ledger.add(x)
        self.s.stats.record("fork", "OK", "ok", now() - t0)

    def op_delete(self, sid, sess=None, cleanup=False):
        if sess is not None:
            sess.state = "deleting"
            self.mine.remove(sess)
            self.to_delete.append(sid)
        epoch0, t0 = self.s.epoch, now()
        try:
            self.api.DeleteSession(pb.DeleteSessionRequest(session_id=sid), timeout=self.rpc())
        except grpc.RpcError as e:
            # a retried delete (after a restart) or the cleanup of a create that never was
            if e.code() == SC.NOT_FOUND and cleanup:
                self.deleted(sid)
                self.s.stats.record("delete", "NOT_FOUND", "expected", now() - t0)
                return
            self.fail("delete", e, epoch0, t0, self.s.ledger.sessions.get(sid))
            return
        self.deleted(sid)
        self.s.stats.record("delete", "OK", "ok", now() - t0)

    def deleted(self, sid):
        self.to_delete.remove(sid)
        x = self.s.ledger.sessions.get(sid)
        if x is not None:
            x.state = "deleted"


class _Err(grpc.RpcError):
    """A status read from a call after a client-side cancel, raised like the others."""

    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details



def log_levels(out, n):
    """Counts of the daemons' log lines by level and event (warn and error lines only)."""
    c = collections.Counter()
    for i in range(1, n + 1):
        try:
            with open(os.path.join(out, "recurd-%d.log" % i), "rb") as f:
                for line in f:
                    try:
                        j = json.loads(line)
                    except ValueError:
                        c["unparsed"] += 1
                        continue
                    if j.get("level") in ("warn", "error"):
                        c["%s %s" % (j.get("level"), j.get("event"))] += 1
        except OSError:
            pass
    return dict(c)


# ---- the markdown summary ---------------------------------------------------------------

def fmt(v, nd=0):
    if v is None:
        return "—"
    return ("%%.%df" % nd) % v


def summary(path):
    with open(path) as f:
        r = json.load(f)
    c = r["config"]
    out = []
    p = out.append
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r["started_unix"]))
    p("Run of %s, %.0f s (%s), %d clients, restart every %d s (%s), %s; %s, %s vCPUs, load "
      "average at the end %s." %
      (started, r["elapsed_s"], "complete" if r["final"] else "INCOMPLETE: no final check",
       c["clients"], c["restart_every_s"],
       ("every %s restart by SIGKILL, the others by SIGTERM" % ordinal(c["kill_every"]))
       if c["kill_every"] else "all by SIGTERM",
       os.path.basename(c["model"].rstrip("/")), c["cpu"], c["nproc"],
       " / ".join("%.1f" % x for x in r.get("load_avg", [])) or "—"))
    p("")
    p("`%s`" % " ".join(os.path.relpath(x, ROOT) if x.startswith(ROOT) else x
                         for x in c["cmd"]))
    p("")
    p("Mix (weights): " + ", ".join("%s %d" % kv for kv in c["mix"].items()) + ".")
    p("")
    lost = r["lost_turns"]
    rp = r.get("replay") or {}
    p("**Acknowledged turns lost: %d** (of %d acknowledged turns; %d checks of every live "
      "session: after each restart and at the end). Replay at the end: %d sessions (%s tokens "
      "of history), %d equal to a stateless run of their history, %d differ. Unexpected "
      "errors: %d." %
      (lost, r["acked_turns"], len(r["verifications"]), rp.get("replayed", 0),
       "–".join(str(x) for x in (min(rp["tokens"]), max(rp["tokens"]))) if rp.get("tokens")
       else "—", rp.get("equal", 0), rp.get("differ", 0), r["n_unexpected"]))
    p("")
    # latencies per window
    p("Latency per %d-s window (ms, successful operations; TTFT = first streamed message):" %
      c["window_s"])
    p("")
    p("| window | ops | out tok/s | stateless p50 / p99 | TTFT p99 | session p50 / p99 | TTFT p99 | "
      "prefix p99 (hits) | fork p99 | delete p99 | create p99 | get p99 | not OK |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w in r["windows"]:
        k = w["kinds"]

        def g(kind, f):
            return fmt(k[kind][f]) if kind in k and k[kind][f] is not None else "—"
        end = min(w["start_s"] + c["window_s"], r["elapsed_s"])
        span = max(1.0, end - w["start_s"])
        errs = ", ".join("%s %d" % kv for kv in sorted(w["status"].items()) if kv[0] != "OK")
        p("| %d–%d s | %d | %.0f | %s / %s | %s | %s / %s | %s | %s (%s) | %s | %s | %s | %s | %s |" %
          (w["start_s"], end, w["ops"], w["out_tokens"] / span,
           g("stateless", "p50_ms"), g("stateless", "p99_ms"), g("stateless", "ttft_p99_ms"),
           g("session", "p50_ms"), g("session", "p99_ms"), g("session", "ttft_p99_ms"),
           g("prefix", "p99_ms"),
           "%d%%" % (100 * w["prefix_hits"] // w["prefix_ops"]) if w["prefix_ops"] else "—",
           g("fork", "p99_ms"), g("delete", "p99_ms"), g("create", "p99_ms"), g("get", "p99_ms"),
           errs + (" (%d unexpected)" % w["unexpected"] if w["unexpected"] else "") or "none"))
    p("")
    # RSS and fds per lifetime
    warm = c["warmup_s"]
    p("Daemon memory and descriptors per lifetime (sampled every few seconds; \"after warm-up\" "
      "= from %d s after each start):" % warm)
    p("")
    p("| lifetime | ran | ended by | RSS at warm-up (MiB) | RSS after warm-up min / max / last | spread | "
      "peak (VmHWM) | fds min / max | threads | state dir (MiB, files) at end |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    flat = True
    for n, life in enumerate(r["lifetimes"], 1):
        ss = [s for s in r["samples"] if s["lifetime"] == n]
        if not ss:
            continue
        post = [s for s in ss if s["uptime_s"] >= warm]
        rss = [s["rss_kib"] / 1024 for s in post]
        spread = (max(rss) - min(rss)) / min(rss) * 100 if rss else None
        if spread is not None and spread > 5:
            flat = False
        fds = [s["fds"] for s in ss]
        p("| %d | %s–%s s | %s | %s | %s | %s | %.0f | %d / %d | %d | %.0f, %d |" %
          (n, fmt(life[0]), fmt(life[1]), life[2] or "—", fmt(rss[0]) if rss else "—",
           "%.0f / %.0f / %.0f" % (min(rss), max(rss), rss[-1]) if rss else "(none)",
           "%.1f%%" % spread if spread is not None else "—", ss[-1]["hwm_kib"] / 1024,
           min(fds), max(fds), ss[-1]["threads"], ss[-1]["state_mib"], ss[-1]["state_files"]))
    allpost = [s["rss_kib"] / 1024 for s in r["samples"] if s["uptime_s"] >= warm]
    if allpost:
        p("")
        p("RSS after warm-up over the whole run: %.0f–%.0f MiB (%.1f%%); within 5%% in every "
          "lifetime: **%s**." % (min(allpost), max(allpost),
                                 (max(allpost) - min(allpost)) / min(allpost) * 100,
                                 "yes" if flat else "no"))
    p("")
    p("RSS (MiB) over time, one sample per minute: " + rss_series(r["samples"]))
    p("")
    # errors
    p("Errors by status (expected: the status the operation asked for — a cancel, a deadline, "
      "a retried delete; restart: UNAVAILABLE/CANCELLED while the daemon was down or draining; "
      "resync: ABORTED/FAILED_PRECONDITION on a session whose last turn's outcome was unknown; "
      "client: CLIENT_HANG, a grpcio call that outlived its deadline by 10 s and whose channel "
      "the soak closed — see bench/README.md):")
    p("")
    p("| status | expected | restart | resync | client | unexpected |")
    p("|---|---|---|---|---|---|")
    for st, cls in sorted(r["errors"].items()):
        p("| %s | %d | %d | %d | %d | %d |" %
          (st, cls.get("expected", 0), cls.get("restart", 0), cls.get("resync", 0),
           cls.get("client", 0), cls.get("unexpected", 0)))
    p("")
    p("Restarts:")
    p("")
    p("| # | at | signal | exit | stop s | down s | sessions on disk | checked | ahead (unacked commit) | lost | deleted still gone |")
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in r["restarts"]:
        v = x["verify"]
        p("| %d | %.0f s | %s | %s | %.1f | %.1f | %s | %d | %d | %d | %d/%d |" %
          (x["n"], x["t_s"], x["signal"], x["exit"], x["stop_s"], x["down_s"],
           x["sessions_scanned"], v["checked"], v["ahead"], v["lost_turns"], v["deleted_ok"],
           v["deleted_checked"]))
    if r.get("daemon_logs"):
        p("")
        p("Daemon warn/error log lines: " +
          ", ".join("%s %d" % kv for kv in sorted(r["daemon_logs"].items())) + ".")
    if r["unexpected"]:
        p("")
        p("Unexpected (first %d):" % min(10, len(r["unexpected"])))
        p("")
        for u in r["unexpected"][:10]:
            p("- %.0f s %s %s: %s" % (u["t"], u["kind"], u["status"], u["detail"]))
    return "\n".join(out)


def ordinal(n):
    return {1: "", 2: "second", 3: "third"}.get(n, "%dth" % n)


def rss_series(samples):
    out, last_min = [], -1
    for s in samples:
        m = int(s["t_s"] // 60)
        if m != last_min:
            out.append("%d" % (s["rss_kib"] / 1024))
            last_min = m
    return " ".join(out) or "—"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", metavar="RESULTS_JSON",
                    help="print the markdown tables of a results.json and exit")
    ap.add_argument("--duration", type=float, default=3600, help="seconds (default 3600)")
    ap.add_argument("--restart-every", type=float, default=600,
                    help="seconds between daemon restarts (0: none; default 600)")
    ap.add_argument("--kill-every", type=int, default=2,
                    help="every Nth restart is SIGKILL, the others SIGTERM (0: never; default 2)")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients (default 16)")
    ap.add_argument("--out", default="",
                    help="results folder (default bench/data/soak-YYYYmmdd-HHMMSS)")
    ap.add_argument("--recurd", default=os.environ.get("RECURD_BIN") or
                    os.path.join(ROOT, "build", "release", "daemon", "recurd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "bench", "data", "mamba130m-bf16"))
    ap.add_argument("--vocab", type=int, default=50280, help="token ids are drawn below this")
    ap.add_argument("--threads", type=int, default=0, help="recurd --threads (0: all cores)")
    ap.add_argument("--slots", type=int, default=8, help="recurd --slots")
    ap.add_argument("--window", type=float, default=300, help="latency window, s (default 300)")
    ap.add_argument("--warmup", type=float, default=120,
                    help="seconds after each start left out of the RSS flatness (default 120)")
    ap.add_argument("--sample-every", type=float, default=10, help="RSS/fd sampling period, s")
    ap.add_argument("--print-every", type=float, default=30, help="status line period, s")
    ap.add_argument("--drain-wait", type=int, default=120,
                    help="seconds to wait for a SIGTERM'd daemon to exit")
    ap.add_argument("--max-history", type=int, default=2048,
                    help="a session with more tokens than this is deleted (default 2048)")
    ap.add_argument("--replay", type=int, default=8, help="sessions replayed at the end")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("daemon_args", nargs="*", help="after --: more recurd options")
    a = ap.parse_args()
    if a.summary:
        print(summary(a.summary))
        return 0
    if not os.path.exists(a.recurd):
        ap.error("no recurd at %s (cmake --build --preset release --target recurd)" % a.recurd)
    if not os.path.exists(os.path.join(a.model, "model.safetensors")):
        ap.error("no checkpoint at %s (tools/make_bench_model.py --numpy --dtype bf16 --out %s)"
                 % (a.model, a.model))
    if not a.out:
        a.out = os.path.join(ROOT, "bench", "data",
                             time.strftime("soak-%Y%m%d-%H%M%S", time.gmtime()))
    a.out = os.path.abspath(a.out)
    a.model = os.path.abspath(a.model)
    soak = Soak(a)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        soak.run()
    except KeyboardInterrupt:
        print("soak: interrupted; results so far in %s" % a.out, flush=True)
        if soak.d.proc and soak.d.proc.poll() is None:
            soak.d.proc.kill()
        return 130
    r = json.load(open(os.path.join(a.out, "results.json")))
    ok = r["lost_turns"] == 0 and r["n_unexpected"] == 0 and r["final_exit"] == 0
    print("soak: %s" % ("PASS" if ok else "FAIL: lost %d, unexpected %d, final exit %s" %
                        (r["lost_turns"], r["n_unexpected"], r["final_exit"])), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
