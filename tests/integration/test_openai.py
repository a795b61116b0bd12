"""recurd integration: the OpenAI-compatible API (daemon/README.md "OpenAI-compatible API")
driven by the official `openai` Python client (pinned in tests/integration/requirements-openai.txt,
installed into build/openai-venv by tools/install-deps.sh) and by curl for the raw SSE framing,
against the running daemon: completions and chat, streaming and not, greedy output equal to
gRPC Generate's, sessions over HTTP (two turns, the second sends only the new message, equal
to a gRPC session fed the same text), the /v1/sessions endpoints, and every error case."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

from rcd_harness import ROOT, DaemonTest, OwnDaemonsTest, RedisTest, collect, gen_request, pb

try:
    import openai
except ImportError:
    # Debian's python3 with grpcio runs the tests; the pinned openai client lives in a venv
    # made from it (--system-site-packages), whose site-packages this interpreter can read.
    for sp in glob.glob(os.path.join(ROOT, "build", "openai-venv", "lib", "python3*",
                                     "site-packages")):
        sys.path.insert(0, sp)
    try:
        import openai
    except ImportError:
        print("test_openai: the openai package is missing (run tools/install-deps.sh)")
        sys.exit(1 if os.environ.get("CI") else 77)

# A template the test can render itself: a chat turn of a session must be what the template
# renders for the whole conversation minus what the session's state holds.
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def render(messages, gen=True):
    return "".join("<%s>%s\n" % (m["role"], m["content"]) for m in messages) + \
        ("<assistant>" if gen else "")


class OpenAI(DaemonTest):
    @classmethod
    def setUpClass(cls):
        cls.tmpl = tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False)
        cls.tmpl.write(TEMPLATE)
        cls.tmpl.close()
        cls.daemon_args = ("--chat-template", cls.tmpl.name, "--http-max-body-bytes", "65536",
                           "--max-prompt", "2000")
        super().setUpClass()
        cls.base = "http://127.0.0.1:%d" % cls.d.http_port
        cls.client = openai.OpenAI(base_url=cls.base + "/v1", api_key="unused", max_retries=0,
                                   timeout=60)
        cls.model = cls.api.ListModels(pb.ListModelsRequest()).models[0].id

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        os.unlink(cls.tmpl.name)

    # ---- helpers ----------------------------------------------------------------------------

    def post(self, path, body, method="POST", raw=False):
        """(status, parsed JSON body, or the bytes with raw) of a raw request."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data if method != "GET" else None,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                b = r.read()
                return r.status, b if raw else json.loads(b or b"null")
        except urllib.error.HTTPError as e:
            b = e.read()
            return e.code, b if raw else json.loads(b or b"null")

    def assertBad(self, status, path, body, param=None, method="POST"):
        st, j = self.post(path, body, method)
        self.assertEqual(st, status, j)
        err = j["error"]
        self.assertTrue(err["message"])
        self.assertIn("type", err)
        if param is not None:
            self.assertEqual(err["param"], param, err)
            self.assertIn(param, err["message"])
        return err

    def grpc_text(self, prompt, session=None, add_special=True, **kw):
        req = gen_request(prompt, session=session, temperature=0.0, **kw)
        req.add_special_tokens = add_special
        text, ids, _, last = collect(self.api.Generate(req, timeout=60))
        return text, ids, last

    # ---- the API ------------------------------------------------------------------------------

    def test_models(self):
        ms = self.client.models.list()
        self.assertEqual([m.id for m in ms.data], [self.model])
        self.assertEqual(ms.data[0].object, "model")

    def test_completion_equals_grpc(self):
        r = self.client.completions.create(model=self.model, prompt="The quick brown fox",
                                           max_tokens=12, temperature=0)
        text, ids, last = self.grpc_text("The quick brown fox", max_tokens=12)
        self.assertEqual(r.choices[0].text, text)
        self.assertEqual(r.usage.completion_tokens, len(ids))
        self.assertEqual(r.usage.prompt_tokens, last.usage.prompt_tokens)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + len(ids))
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.object, "text_completion")

    def test_completion_stream(self):
        chunks = list(self.client.completions.create(
            model=self.model, prompt="Once upon a time", max_tokens=10, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        whole = self.client.completions.create(model=self.model, prompt="Once upon a time",
                                               max_tokens=10, temperature=0)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices][-1], "length")
        # the usage chunk is last, with no choices
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 10)
        # without include_usage: no usage chunk
        chunks = list(self.client.completions.create(
            model=self.model, prompt="Once upon a time", max_tokens=3, temperature=0, stream=True))
        self.assertTrue(all(c.usage is None for c in chunks))

    def test_chat_equals_grpc(self):
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
        r = self.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=8,
                                                temperature=0)
        text, ids, last = self.grpc_text(render(msgs), add_special=False, max_tokens=8)
        self.assertEqual(r.choices[0].message.content, text)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertEqual(r.usage.prompt_tokens, last.usage.prompt_tokens)
        # streaming gives the same text; the role comes in the first chunk
        chunks = list(self.client.chat.completions.create(
            model=self.model, messages=msgs, max_tokens=8, temperature=0, stream=True))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks), text)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "length")

    def test_parameters(self):
        # stop (string and list), seed (same seed: same text), penalties, logprobs
        r = self.client.completions.create(model=self.model, prompt="1, 2, 3, 4,",
                                           max_tokens=30, temperature=0, stop=[" 7"])
        text, _, _ = self.grpc_text("1, 2, 3, 4,", max_tokens=30, stop=[" 7"])
        self.assertEqual(r.choices[0].text, text)
        a = self.client.completions.create(model=self.model, prompt="x", max_tokens=8,
                                           temperature=0.9, top_p=0.9, seed=7,
                                           presence_penalty=0.5, frequency_penalty=0.5)
        b = self.client.completions.create(model=self.model, prompt="x", max_tokens=8,
                                           temperature=0.9, top_p=0.9, seed=7,
                                           presence_penalty=0.5, frequency_penalty=0.5)
        self.assertEqual(a.choices[0].text, b.choices[0].text)
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            temperature=0, logprobs=True, top_logprobs=3, max_completion_tokens=4, user="u-1")
        lp = r.choices[0].logprobs.content
        self.assertEqual(len(lp), 4)
        self.assertEqual(len(lp[0].top_logprobs), 3)
        # greedy: the sampled token is the most likely one
        self.assertAlmostEqual(lp[0].logprob, lp[0].top_logprobs[0].logprob, places=4)
        r = self.client.completions.create(model=self.model, prompt="The quick brown fox",
                                           max_tokens=3, temperature=0, logprobs=2)
        self.assertEqual(len(r.choices[0].logprobs.token_logprobs), 3)
        self.assertEqual(len(r.choices[0].logprobs.top_logprobs[0]), 2)

    def test_session_turns(self):
        """Two chat turns of a session over HTTP (the second sends only its new message) equal
        a gRPC session fed the same text; the version travels in the response."""
        s = self.client.post("/sessions", body={"session_id": "oai-chat"}, cast_to=object)
        self.assertEqual((s["id"], s["version"]), ("oai-chat", 0))
        u1 = [{"role": "user", "content": "Tell me a story."}]
        r1 = self.client.chat.completions.create(
            model=self.model, messages=u1, max_tokens=6, temperature=0,
            extra_body={"session_id": "oai-chat", "expected_version": 0})
        self.assertEqual(r1.model_extra["session_version"], 1)
        u2 = [{"role": "user", "content": "And then?"}]
        chunks = list(self.client.chat.completions.create(
            model=self.model, messages=u2, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
            extra_body={"session_id": "oai-chat", "expected_version": 1}))
        t2 = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(chunks[-1].model_extra["session_version"], 2)
        # the same over gRPC: turn 1 is the rendered prompt, turn 2 what follows the state
        self.api.CreateSession(pb.CreateSessionRequest(session_id="grpc-chat"))
        g1, _, _ = self.grpc_text(render(u1), session="grpc-chat", add_special=False,
                                  max_tokens=6)
        cont = render([{"role": "assistant", "content": "X"}] + u2)[len("<assistant>X"):]
        g2, _, last = self.grpc_text(cont, session="grpc-chat", add_special=False, max_tokens=6)
        self.assertEqual(r1.choices[0].message.content, g1)
        self.assertEqual(t2, g2)
        self.assertEqual(chunks[-1].usage.prompt_tokens, last.usage.prompt_tokens)
        got = self.client.get("/sessions/oai-chat", cast_to=object)
        want = self.api.GetSession(pb.GetSessionRequest(session_id="grpc-chat"))
        self.assertEqual((got["version"], got["token_count"]), (2, want.token_count))
        # completions turns: the same tokens as gRPC's
        self.post("/v1/sessions", {"session_id": "oai-cmpl"})
        self.api.CreateSession(pb.CreateSessionRequest(session_id="grpc-cmpl"))
        for i, p in enumerate(["A list:", " and more"]):
            r = self.client.completions.create(model=self.model, prompt=p, max_tokens=5,
                                               temperature=0,
                                               extra_body={"session_id": "oai-cmpl"})
            g, _, last = self.grpc_text(p, session="grpc-cmpl", max_tokens=5)
            self.assertEqual(r.choices[0].text, g)
            self.assertEqual(r.model_extra["session_version"], i + 1)

    def test_sessions_endpoints(self):
        st, s = self.post("/v1/sessions", {"session_id": "crud", "metadata": {"k": "v"},
                                           "ttl_seconds": 600})
        self.assertEqual(st, 201)
        self.assertEqual((s["id"], s["metadata"], s["ttl_seconds"]), ("crud", {"k": "v"}, 600))
        self.assertBad(409, "/v1/sessions", {"session_id": "crud"})  # already exists
        st, f = self.post("/v1/sessions/crud/fork", {"new_session_id": "crud2"})
        self.assertEqual((st, f["id"], f["parent_session_id"]), (201, "crud2", "crud"))
        st, g = self.post("/v1/sessions/crud2", None, method="GET")
        self.assertEqual((st, g["id"]), (200, "crud2"))
        st, d = self.post("/v1/sessions/crud2", None, method="DELETE")
        self.assertEqual((st, d["deleted"]), (200, True))
        self.assertBad(404, "/v1/sessions/crud2", None, method="GET")
        self.assertBad(404, "/v1/sessions/crud2", None, method="DELETE")
        self.assertBad(404, "/v1/sessions/nope/fork", {})
        self.assertBad(400, "/v1/sessions", {"ttl_seconds": -1}, param="ttl_seconds")
        self.assertBad(400, "/v1/sessions", {"bogus": 1}, param="bogus")
        self.assertBad(400, "/v1/sessions", b"{nope")
        # a session made over HTTP is the gRPC session
        self.assertEqual(self.api.GetSession(pb.GetSessionRequest(session_id="crud")).version, 0)

    def test_errors(self):
        C, H = "/v1/completions", "/v1/chat/completions"
        msgs = [{"role": "user", "content": "a"}]
        self.assertBad(400, C, b"{\"prompt\": ")                      # bad JSON
        self.assertBad(400, C, b"[]")
        self.assertBad(400, C, {}, param="prompt")
        self.assertBad(400, H, {}, param="messages")
        self.assertBad(400, C, {"prompt": "a", "n": 2}, param="n")
        self.assertBad(400, C, {"prompt": "a", "temperature": "hot"}, param="temperature")
        self.assertBad(400, C, {"prompt": "a", "temperature": 3}, param="temperature")
        self.assertBad(400, C, {"prompt": "a", "top_p": 0}, param="top_p")
        self.assertBad(400, C, {"prompt": "a", "max_tokens": 0}, param="max_tokens")
        self.assertBad(400, C, {"prompt": "a", "stop": 3}, param="stop")
        self.assertBad(400, C, {"prompt": "a", "seed": 0.5}, param="seed")
        self.assertBad(400, C, {"prompt": "a", "presence_penalty": 9}, param="presence_penalty")
        self.assertBad(400, C, {"prompt": "a", "logprobs": 99}, param="logprobs")
        self.assertBad(400, H, {"messages": msgs, "top_logprobs": 2}, param="top_logprobs")
        self.assertBad(400, H, {"messages": msgs, "tools": []}, param="tools")
        self.assertBad(400, C, {"prompt": "a", "echo": True}, param="echo")
        self.assertBad(400, C, {"prompt": "a", "whatever": 1}, param="whatever")
        self.assertBad(400, H, {"messages": [{"content": "x"}]}, param="messages[0].role")
        self.assertBad(404, C, {"prompt": "a", "session_id": "no-such"})  # unknown session
        self.assertBad(404, C, {"prompt": "a", "model": "gpt-4o"})        # unknown model
        self.post("/v1/sessions", {"session_id": "ver"})
        e = self.assertBad(400, C, {"prompt": "a", "session_id": "ver", "expected_version": 5})
        self.assertIn("version", e["message"])                          # version conflict
        st, _ = self.post(C, {"prompt": "x" * 70000}, raw=True)          # over the body limit
        self.assertEqual(st, 413)
        e = self.assertBad(400, C, {"prompt": "word " * 2500})         # over --max-prompt
        self.assertEqual(e["code"], "context_length_exceeded")
        # the openai client raises its typed errors
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model=self.model, prompt="a", n=2)
        self.assertEqual(cm.exception.body["param"], "n")
        with self.assertRaises(openai.NotFoundError):
            self.client.chat.completions.create(model=self.model, messages=msgs,
                                                extra_body={"session_id": "no-such"})
        # an error before the first token of a stream is an HTTP status, not an event
        with self.assertRaises(openai.NotFoundError):
            list(self.client.completions.create(model=self.model, prompt="a", stream=True,
                                                extra_body={"session_id": "no-such"}))
        # the daemon is fine
        self.assertEqual(self.client.models.list().data[0].id, self.model)

    def test_client_gone(self):
        """A client that closes its connection mid-stream cancels its turn (a session turn does
        not commit) and nothing else: the daemon goes on serving (SIGPIPE is ignored)."""
        import socket
        self.post("/v1/sessions", {"session_id": "gone"})
        for i in range(3):
            body = json.dumps({"prompt": "x", "max_tokens": 4000, "temperature": 2, "seed": 1,
                               "stream": True, "session_id": "gone" if i == 0 else ""}).encode()
            s = socket.create_connection(("127.0.0.1", self.d.http_port), timeout=60)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            got = b""
            while got.count(b"data: ") < 2:
                b = s.recv(4096)
                self.assertTrue(b, got)  # the daemon must not close (or die)
                got += b
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # RST: the daemon's next write fails
        # the cut turn never commits: once the daemon has seen the client go (409 until then),
        # a turn expecting version 0 is accepted and makes version 1
        import time
        deadline = time.time() + 60
        while True:
            st, j = self.post("/v1/completions", {"prompt": "y", "max_tokens": 1,
                                                  "session_id": "gone", "expected_version": 0})
            if st != 409 or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual((st, j.get("session_version")), (200, 1), j)
        self.assertEqual(self.client.models.list().data[0].id, self.model)
        self.assertIsNone(self.d.proc.poll())

    def test_sse_framing(self):
        """curl: the raw bytes are `data: {json}\\n\\n` events ending in `data: [DONE]\\n\\n`."""
        body = json.dumps({"prompt": "Hi", "max_tokens": 4, "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}})
        out = subprocess.run(["curl", "-sS", "-N", "-i", "-H", "Content-Type: application/json",
                              "-d", body, self.base + "/v1/completions"],
                             capture_output=True, timeout=60, check=True).stdout
        head, _, events = out.partition(b"\r\n\r\n")
        self.assertIn(b"content-type: text/event-stream", head.lower())
        self.assertTrue(events.endswith(b"data: [DONE]\n\n"), events[-200:])
        parts = events.split(b"\n\n")
        self.assertEqual(parts[-1], b"")
        parts = parts[:-1]
        self.assertEqual(parts[-1], b"data: [DONE]")
        for p in parts[:-1]:
            self.assertTrue(p.startswith(b"data: {"), p)
            json.loads(p[6:])
        self.assertIn(b"\"usage\"", parts[-2])



class OpenAIKeys(DaemonTest):
    """With --api-keys: the Bearer key selects the tenant as for gRPC; sessions are per tenant
    over HTTP too, and a quota refusal is a 429 with Retry-After."""

    @classmethod
    def setUpClass(cls):
        import hashlib
        cls.keys = tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False)
        for key, tenant in (("key-a", "alice"), ("key-b", "bob")):
            cls.keys.write("%s %s user\n" % (hashlib.sha256(key.encode()).hexdigest(), tenant))
        cls.keys.close()
        cls.daemon_args = ("--ephemeral", "--api-keys", cls.keys.name, "--tenant-max-sessions",
                           "1")
        super().setUpClass()
        base = "http://127.0.0.1:%d/v1" % cls.d.http_port
        cls.a = openai.OpenAI(base_url=base, api_key="key-a", max_retries=0, timeout=60)
        cls.b = openai.OpenAI(base_url=base, api_key="key-b", max_retries=0, timeout=60)
        cls.nokey = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0, timeout=60)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        os.unlink(cls.keys.name)

    def test_tenants(self):
        with self.assertRaises(openai.AuthenticationError):
            self.nokey.completions.create(model="", prompt="a", max_tokens=1)
        s = self.a.post("/sessions", body={"session_id": "mine"}, cast_to=object)
        self.assertEqual(s["id"], "mine")
        r = self.a.completions.create(model="", prompt="Hello", max_tokens=2, temperature=0,
                                      extra_body={"session_id": "mine"})
        self.assertEqual(r.model_extra["session_version"], 1)
        # bob does not see alice's session, over either endpoint
        with self.assertRaises(openai.NotFoundError):
            self.b.completions.create(model="", prompt="Hello", max_tokens=2,
                                      extra_body={"session_id": "mine"})
        with self.assertRaises(openai.NotFoundError):
            self.b.get("/sessions/mine", cast_to=object)
        # alice is at her one-session quota: 429 with a retry hint
        with self.assertRaises(openai.RateLimitError) as cm:
            self.a.post("/sessions", body={"session_id": "second"}, cast_to=object)
        self.assertTrue(cm.exception.response.headers.get("retry-after"))



class OpenAIReplicas(RedisTest, OwnDaemonsTest):
    """A chat session's second turn on another replica (one redis-server as the authority):
    the session is looked up in Redis before the new messages are rendered, so they render as
    a continuation (not as a first turn), equal to both turns on one daemon."""
    redis_prefix = "recurd-oai-redis-"

    def test_chat_turn_on_other_replica(self):
        tmpl = tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False)
        tmpl.write(TEMPLATE)
        tmpl.close()
        self.addCleanup(os.unlink, tmpl.name)
        a, b = (self.spawn("--redis", self.redis_addr, "--chat-template", tmpl.name)
                for _ in range(2))
        ref = self.spawn("--ephemeral", "--chat-template", tmpl.name)
        u1 = [{"role": "user", "content": "Tell me a story."}]
        u2 = [{"role": "user", "content": "And then?"}]

        def chat(d, sid, msgs):
            c = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % d.http_port,
                              api_key="unused", max_retries=0, timeout=60)
            r = c.chat.completions.create(model="", messages=msgs, max_tokens=6,
                                          temperature=0, extra_body={"session_id": sid})
            return r.choices[0].message.content, r.model_extra["session_version"], r.usage

        for d, sid in ((a, "moved"), (ref, "ref")):
            d.api.CreateSession(pb.CreateSessionRequest(session_id=sid), timeout=30)
        self.assertEqual(chat(a, "moved", u1)[:2], chat(ref, "ref", u1)[:2])
        t_b, v_b, use_b = chat(b, "moved", u2)  # b has never seen the session
        t_r, v_r, use_r = chat(ref, "ref", u2)
        self.assertEqual((t_b, v_b), (t_r, v_r))
        self.assertEqual(v_b, 2)
        self.assertEqual(use_b.prompt_tokens, use_r.prompt_tokens)


class OpenAIDrain(unittest.TestCase):
    """SIGTERM with --drain-grace-ms 0 while an SSE stream runs: the stream ends with an error
    event and `data: [DONE]`, and the daemon exits 0."""

    def test_drain_cuts_stream(self):
        import http.client
        import signal
        from rcd_harness import Daemon
        d = Daemon("--ephemeral", "--drain-grace-ms", "0")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=60)
            # temperature 2: near-uniform sampling, EOS rarely comes before max_tokens
            conn.request("POST", "/v1/completions", json.dumps(
                {"prompt": "x", "max_tokens": 4000, "temperature": 2, "seed": 1,
                 "stream": True}), {"Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            events = []
            while len(events) < 3:
                line = r.readline()
                if line.startswith(b"data: "):
                    events.append(line)
            d.proc.send_signal(signal.SIGTERM)
            while True:
                line = r.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    events.append(line)
            self.assertEqual(events[-1], b"data: [DONE]\n")
            last = json.loads(events[-2][6:])
            # cut: an error event (or, on a very slow machine, the turn's own end)
            self.assertTrue("error" in last or last["choices"][0]["finish_reason"], last)
            if "error" in last:
                self.assertEqual(last["error"]["code"], "unavailable")
            conn.close()
            d.proc.wait(timeout=60)
            self.assertEqual(d.proc.returncode, 0, d.logs()[-3000:])
        finally:
            d._kill_if_alive()


if __name__ == "__main__":
    unittest.main(verbosity=2)
