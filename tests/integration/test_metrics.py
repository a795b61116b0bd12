"""recurd integration: Prometheus metrics (GET /metrics on the HTTP listener). Known traffic over
gRPC — stateless Generate calls with exact prompt lengths and max_tokens, a session created with
two turns (the second resumed from disk: --host-cache-bytes 0), a prefix-snapshot hit, a refused
turn, a delete — then the exact counter values and histogram counts in the exposition; the live
output passes `promtool check metrics` and prometheus_client's OpenMetrics parser (each skipped
with a message when not installed). With --api-keys the token counters carry a tenant label."""
import hashlib
import http.client
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc

from rcd_harness import Daemon, OwnDaemonsTest, RedisTest, collect, gen_request, pb

OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(d, accept=None):
    """(content type, body) of GET /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)
    try:
        c.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        r = c.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body)
        return r.getheader("Content-Type"), body
    finally:
        c.close()


def samples(text):
    """{'name{labels}': value} of an exposition (labels as written, model first)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        out[key] = float(val)
    return out


def value(s, name, **labels):
    """The sample `name` whose labels include `labels` (exactly one must match)."""
    hits = []
    for key, v in s.items():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", key)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == str(w) for k, w in labels.items()):
            hits.append(v)
    assert len(hits) == 1, "%s%s: %d samples match" % (name, labels, len(hits))
    return hits[0]


def promtool_check(test, text):
    if not shutil.which("promtool"):
        print("SKIP promtool check: promtool not installed (Debian package prometheus)")
        return
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    test.assertEqual(r.returncode, 0, (r.stdout + r.stderr).decode())


def openmetrics_check(test, text):
    try:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    except ImportError:
        print("SKIP OpenMetrics parse: prometheus_client not installed "
              "(Debian package python3-prometheus-client)")
        return
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    test.assertEqual(fams["recurd_prompt_tokens"].type, "counter")
    test.assertEqual(fams["recurd_time_to_first_token_seconds"].unit, "seconds")
    return fams


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # --host-cache-bytes 0: a session's second turn reads its state from disk.
        cls.d = Daemon("--host-cache-bytes", "0", "--prefill-chunk", "96")
        cls.api = cls.d.api
        if cls.d.http_port is None:
            raise unittest.SkipTest("this build has no HTTP listener")

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            raise AssertionError("recurd exited %d:\n%s" % (rc, cls.d.logs()[-4000:]))

    def gen(self, tokens, n, session=None):
        _, ids, _, last = collect(self.api.Generate(
            gen_request(tokens=tokens, session=session, max_tokens=n, temperature=0,
                        ignore_eos=True), timeout=300))
        self.assertEqual(len(ids), n)
        return last

    def test_known_traffic(self):
        _, before = scrape(self.d)
        s0 = samples(before)
        self.assertEqual(value(s0, "recurd_prompt_tokens_total"), 0)
        self.assertEqual(value(s0, "recurd_build_info", model="recurd-mamba-tiny",
                               backend="cpu"), 1)
        # 3 stateless calls: 10 prompt tokens, 5 generated each
        for i in range(3):
            self.gen(list(range(100 + i, 110 + i)), 5)
        # a session: created, two turns of 8 prompt tokens and 4 generated
        self.api.CreateSession(pb.CreateSessionRequest(session_id="m1"), timeout=30)
        self.gen(list(range(200, 208)), 4, session="m1")
        self.gen(list(range(300, 308)), 4, session="m1")
        _, mid = scrape(self.d)
        self.assertEqual(value(samples(mid), "recurd_store_sessions"), 1)
        # one session with a committed state: one state's bytes (the model's state size)
        state_bytes = self.api.ListModels(pb.ListModelsRequest()).models[0].state_bytes
        self.assertGreater(state_bytes, 0)
        self.assertEqual(value(samples(mid), "recurd_store_state_bytes"), state_bytes)
        # a prefix hit: the same 100-token prompt twice, the second starts at the 64 snapshot
        p = list(range(400, 500))
        self.gen(p, 2)
        last = self.gen(p, 2)
        self.assertEqual(last.usage.cached_prompt_tokens, 64)
        # a refused turn: an unknown session
        with self.assertRaises(grpc.RpcError) as e:
            collect(self.api.Generate(gen_request(tokens=[1, 2], session="nope"), timeout=30))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.api.DeleteSession(pb.DeleteSessionRequest(session_id="m1"), timeout=30)

        ctype, text = scrape(self.d)
        self.assertTrue(ctype.startswith("text/plain"), ctype)
        s = samples(text)
        turns = 3 + 2 + 2
        self.assertEqual(value(s, "recurd_requests_finished_total", outcome="length"), turns)
        self.assertEqual(value(s, "recurd_requests_finished_total", outcome="error"), 1)
        self.assertEqual(value(s, "recurd_requests_finished_total", outcome="stop"), 0)
        self.assertEqual(value(s, "recurd_requests_finished_total", outcome="cancelled"), 0)
        self.assertEqual(value(s, "recurd_prompt_tokens_total"), 30 + 16 + 200)
        self.assertEqual(value(s, "recurd_generation_tokens_total"), 15 + 8 + 4)
        self.assertEqual(value(s, "recurd_time_to_first_token_seconds_count"), turns)
        self.assertEqual(value(s, "recurd_inter_token_latency_seconds_count"),
                         3 * 4 + 2 * 3 + 2 * 1)
        for h in ("e2e_request_latency", "request_queue_time", "request_prefill_time",
                  "request_decode_time"):
            self.assertEqual(value(s, "recurd_%s_seconds_count" % h), turns, h)
            self.assertEqual(value(s, "recurd_%s_seconds_bucket" % h, le="+Inf"), turns, h)
        self.assertEqual(value(s, "recurd_request_prompt_tokens_count"), turns)
        self.assertEqual(value(s, "recurd_request_prompt_tokens_sum"), 30 + 16 + 200)
        self.assertEqual(value(s, "recurd_request_prompt_tokens_bucket", le="10.0"), 5)
        self.assertEqual(value(s, "recurd_request_generation_tokens_sum"), 27)
        self.assertEqual(value(s, "recurd_request_generation_tokens_bucket", le="2.0"), 2)
        self.assertEqual(value(s, "recurd_request_generation_tokens_bucket", le="5.0"), turns)
        self.assertEqual(value(s, "recurd_session_resumes_total", source="disk"), 1)
        self.assertEqual(value(s, "recurd_session_resumes_total", source="host_cache"), 0)
        self.assertEqual(value(s, "recurd_session_resumes_total", source="redis"), 0)
        self.assertEqual(value(s, "recurd_session_resumes_total", source="slot"), 0)
        self.assertEqual(value(s, "recurd_session_resume_seconds_count", source="disk"), 1)
        self.assertEqual(value(s, "recurd_checkpoint_commit_seconds_count"), 2)
        self.assertGreaterEqual(value(s, "recurd_group_commit_size_count"), 2)
        self.assertEqual(value(s, "recurd_store_commits_total"), 2)
        self.assertEqual(value(s, "recurd_store_sessions"), 0)
        self.assertEqual(value(s, "recurd_store_state_bytes"), 0)
        self.assertEqual(value(s, "recurd_prefix_cache_lookups_total"), 2)
        self.assertEqual(value(s, "recurd_prefix_cache_hits_total"), 1)
        self.assertEqual(value(s, "recurd_prefix_cache_hit_tokens_total"), 64)
        self.assertEqual(value(s, "recurd_rpc_requests_total", method="Generate", code="OK"),
                         turns)
        self.assertEqual(value(s, "recurd_rpc_requests_total", method="Generate",
                               code="NOT_FOUND"), 1)
        self.assertEqual(value(s, "recurd_rpc_requests_total", method="CreateSession",
                               code="OK"), 1)
        self.assertEqual(value(s, "recurd_rpc_requests_total", method="DeleteSession",
                               code="OK"), 1)
        self.assertEqual(value(s, "recurd_requests_running"), 0)
        self.assertEqual(value(s, "recurd_requests_waiting"), 0)
        self.assertEqual(value(s, "recurd_requests_swapped"), 0)
        self.assertEqual(value(s, "recurd_preemptions_total"), 0)
        self.assertGreater(value(s, "recurd_engine_steps_total"), 0)
        self.assertGreater(value(s, "recurd_step_batch_size_count"), 0)
        self.assertEqual(value(s, "recurd_step_batch_size_count"),
                         value(s, "recurd_step_token_budget_ratio_count"))
        self.assertEqual(value(s, "recurd_spec_decode_draft_tokens_total"), 0)
        self.assertEqual(value(s, "recurd_kv_blocks_used"), 0)  # Mamba: no KV cache
        self.assertGreater(value(s, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(value(s, "process_open_fds"), 3)
        self.assertLess(abs(value(s, "process_start_time_seconds") - time.time()), 3600)
        self.assertNotIn("tenant=", text)  # no API keys: no tenant label
        self.assertNotIn("m1", text)       # never a session id
        promtool_check(self, text)
        # OpenMetrics when the scraper asks for it
        ctype, om = scrape(self.d, accept="application/openmetrics-text; version=1.0.0")
        self.assertEqual(ctype, OM)
        self.assertTrue(om.endswith("# EOF\n"))
        self.assertIn("# TYPE recurd_generation_tokens counter\n", om)
        self.assertEqual(value(samples(om), "recurd_generation_tokens_total"), 27)
        fams = openmetrics_check(self, om)
        if fams:
            h = fams["recurd_e2e_request_latency_seconds"]
            self.assertEqual([x.value for x in h.samples if x.name.endswith("_count")], [turns])

        # a stream the client cancels after its first message: outcome "cancelled"
        stream = self.api.Generate(gen_request(tokens=[7, 8, 9], max_tokens=4000,
                                               ignore_eos=True), timeout=300)
        next(stream)
        stream.cancel()
        deadline = time.time() + 60
        while True:
            s = samples(scrape(self.d)[1])
            if (value(s, "recurd_requests_finished_total", outcome="cancelled") == 1
                    and value(s, "recurd_requests_running") == 0):
                break
            self.assertLess(time.time(), deadline, "the cancelled turn was never counted (or "
                            "never left its slot)")
            time.sleep(0.05)
        self.assertEqual(value(s, "recurd_requests_finished_total", outcome="length"), turns)
        self.assertEqual(value(s, "recurd_e2e_request_latency_seconds_count"), turns)
        self.assertGreaterEqual(value(s, "recurd_generation_tokens_total"), 27 + 1)


def _digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


class Documented(unittest.TestCase):
    """Every family the daemon exposes is in daemon/README.md's "Metrics" table, and every
    metric the table names is exposed."""

    def test_readme_lists_every_family(self):
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "daemon",
                               "README.md")) as f:
            doc = f.read()
        section = doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
        rows = [l for l in section.splitlines() if l.startswith("| `")]
        documented = set()
        for row in rows:
            documented.update(re.findall(r"`((?:recurd|process)_[a-z0-9_]+)`", row.split("|")[1]))
        d = Daemon("--ephemeral")
        try:
            text = scrape(d)[1]
        finally:
            self.assertEqual(d.stop(), 0)
        exposed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        self.assertEqual(exposed - documented, set(), "exposed but not documented")
        self.assertEqual(documented - exposed, set(), "documented but not exposed")
        self.assertGreater(len(exposed), 40)


class Tenants(unittest.TestCase):
    """With --api-keys, the request and token counters carry the key's tenant."""

    def test_tenant_label(self):
        tmp = tempfile.mkdtemp(prefix="recurd-metrics-")
        ka, kb = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        keys = os.path.join(tmp, "keys")
        with open(keys, "w") as f:
            f.write("%s alice user\n%s bob user\n" % (_digest(ka), _digest(kb)))
        d = Daemon("--ephemeral", "--api-keys", keys)
        try:
            for key, n in ((ka, 3), (kb, 2), (ka, 1)):
                md = [("authorization", "Bearer " + key)]
                collect(d.api.Generate(gen_request(tokens=[5, 6, 7], max_tokens=n,
                                                   temperature=0, ignore_eos=True),
                                       metadata=md, timeout=120))
            _, text = scrape(d)
            s = samples(text)
            self.assertEqual(value(s, "recurd_generation_tokens_total", tenant="alice"), 4)
            self.assertEqual(value(s, "recurd_generation_tokens_total", tenant="bob"), 2)
            self.assertEqual(value(s, "recurd_prompt_tokens_total", tenant="alice"), 6)
            self.assertEqual(value(s, "recurd_requests_finished_total", tenant="bob",
                                   outcome="length"), 1)
            promtool_check(self, text)
        finally:
            rc = d.stop()
            shutil.rmtree(tmp, ignore_errors=True)
            self.assertEqual(rc, 0, d.logs()[-4000:])


class RedisResume(RedisTest, OwnDaemonsTest):
    """A session another replica committed is resumed here from Redis: source "redis"."""
    redis_prefix = "recurd-metrics-redis-"

    def test_resume_from_redis(self):
        # Redis as the authority (the default)
        a, b = (self.spawn("--redis", self.redis_addr) for _ in range(2))
        a.api.CreateSession(pb.CreateSessionRequest(session_id="r1"), timeout=30)
        for p in ([5, 6, 7], [8, 9]):
            collect(a.api.Generate(gen_request(tokens=p, session="r1", max_tokens=2,
                                               temperature=0, ignore_eos=True), timeout=120))
        last = collect(b.api.Generate(gen_request(tokens=[10, 11], session="r1",
                                                  max_tokens=2, temperature=0,
                                                  ignore_eos=True), timeout=120))[3]
        self.assertEqual(last.session_version, 3)
        sa, sb = samples(scrape(a)[1]), samples(scrape(b)[1])
        self.assertEqual(value(sa, "recurd_session_resumes_total", source="host_cache"), 1)
        self.assertEqual(value(sa, "recurd_session_resumes_total", source="redis"), 0)
        self.assertEqual(value(sb, "recurd_session_resumes_total", source="redis"), 1)
        self.assertEqual(value(sb, "recurd_session_resume_seconds_count", source="redis"), 1)
        self.assertEqual(value(sb, "recurd_session_resumes_total", source="disk"), 0)
        self.assertEqual(value(sa, "recurd_redis_errors_total"), 0)

if __name__ == "__main__":
    unittest.main()
