"""The recurd client: Client (one gRPC channel), Session (a durable session by id) and
TurnStream (the streaming iterator of one Generate call). See README.md for the semantics."""
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import errors
from ._proto import health_pb2 as hpb
from ._proto import inference_pb2 as pb

Prompt = Union[str, Sequence[int]]
PathOrPem = Union[bytes, str, "os.PathLike[str]"]
_AUTO: Any = object()  # expected_version not given: the session's known version

# What a stream cut looks like besides UNAVAILABLE: a balancer (HAProxy) resetting the client's
# stream when its replica died is UNKNOWN "Stream removed"; an HTTP/2 RST_STREAM is INTERNAL.
_CUT_TEXTS = ("Stream removed", "RST_STREAM", "Socket closed", "Connection reset")


def _is_cut(e: grpc.RpcError) -> bool:
    code = e.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        d = e.details() or ""
        return any(t in d for t in _CUT_TEXTS)
    return False


def _replica(call: Any) -> Optional[str]:
    try:
        return dict(call.initial_metadata() or ()).get("x-recurd-replica")
    except Exception:  # noqa: BLE001 - a call that never reached a server has none
        return None


def _pem(x: Optional[PathOrPem]) -> Optional[bytes]:
    if x is None:
        return None
    if isinstance(x, bytes):
        return x
    with open(x, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class ModelInfo:
    """A model the daemon serves (ListModels)."""
    id: str
    architecture: str
    vocab_size: int
    n_layers: int
    hidden_size: int
    state_bytes: int
    fingerprint: str
    max_context_tokens: int
    backend: str


@dataclass(frozen=True)
class SessionInfo:
    """A session as the daemon reports it (Create/Get/ForkSession)."""
    session_id: str
    model: str
    version: int
    token_count: int
    created_unix_ms: int
    updated_unix_ms: int
    metadata: Dict[str, str]
    parent_session_id: str
    owner: str
    ttl_seconds: int
    expires_unix_ms: int

    @staticmethod
    def _of(s: Any) -> "SessionInfo":
        return SessionInfo(s.session_id, s.model, s.version, s.token_count, s.created_unix_ms,
                           s.updated_unix_ms, {m.key: m.value for m in s.metadata},
                           s.parent_session_id, s.owner, s.ttl_seconds, s.expires_unix_ms)


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's logprob and the top-n alternatives (`logprobs=n`)."""
    token_id: int
    logprob: float
    top: Tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    """One streamed piece of a turn: new text, the token ids sampled since the previous delta
    and their logprobs (when asked for). `restart` is True on the first delta of a retried
    attempt when an earlier attempt had already streamed deltas: discard what came before
    (TurnStream.result only holds the last attempt's output)."""
    text: str
    token_ids: Tuple[int, ...]
    logprobs: Tuple[TokenLogprob, ...] = ()
    restart: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    total_ms: float
    preemptions: int
    cached_prompt_tokens: int
    draft_tokens: int = 0      # speculative decoding: draft tokens verified
    accepted_tokens: int = 0   # of them, accepted


@dataclass(frozen=True)
class TurnResult:
    """A finished Generate: the whole output, why it stopped (`length`, `stop`, `eos`,
    `context`), usage, and for a session turn the session's new version."""
    text: str
    token_ids: Tuple[int, ...]
    logprobs: Tuple[TokenLogprob, ...]
    finish_reason: str
    usage: Usage
    session_id: str
    session_version: int
    request_id: str
    replica: Optional[str]
    attempts: int = 1


def _logprobs(m: Any) -> Tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(lp.token_id, lp.logprob,
                              tuple(TopLogprob(t.token_id, t.logprob) for t in lp.top))
                 for lp in m.logprobs)


class _Stub:
    """One callable per method of a service, built from its descriptor."""

    def __init__(self, channel: grpc.Channel, service: Any, module: Any) -> None:
        for m in service.methods:
            path = "/%s/%s" % (service.full_name, m.name)
            req = getattr(module, m.input_type.name)
            resp = getattr(module, m.output_type.name)
            kind = channel.unary_stream if m.server_streaming else channel.unary_unary
            setattr(self, m.name, kind(path, request_serializer=req.SerializeToString,
                                       response_deserializer=resp.FromString))


class Client:
    """A connection to one recurd (or a load balancer in front of several replicas).

    addr: "host:port". TLS is on when `tls` is True or any certificate option or
    `server_name` is given: `root_certificates` (the CA to trust; default the system's),
    `certificate_chain` + `private_key` (a client certificate, for mTLS), each PEM bytes or a
    file path, and `server_name` (the name the server's certificate must carry, when the
    address does not). `api_key` is sent as `authorization: Bearer KEY`, `tenant` as
    `x-recurd-tenant` (an admin key acting for a tenant). `timeout`: the deadline in seconds
    of every call (None: none), unless a call passes its own. `retries`: how many more times a
    call is tried after UNAVAILABLE or a cut stream (README "Retries"), waiting
    `retry_backoff` seconds, doubled each time up to `max_retry_backoff` (or the daemon's
    retry-after-ms when longer). `metadata`: more (key, value) pairs sent on every call.
    `channel_options`: extra grpc channel options."""

    def __init__(self, addr: str = "127.0.0.1:50051", *, tls: bool = False,
                 root_certificates: Optional[PathOrPem] = None,
                 certificate_chain: Optional[PathOrPem] = None,
                 private_key: Optional[PathOrPem] = None,
                 server_name: Optional[str] = None,
                 api_key: Optional[str] = None, tenant: Optional[str] = None,
                 timeout: Optional[float] = None, retries: int = 5,
                 retry_backoff: float = 0.1, max_retry_backoff: float = 2.0,
                 metadata: Sequence[Tuple[str, str]] = (),
                 channel_options: Sequence[Tuple[str, Any]] = ()) -> None:
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.addr = addr
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.max_retry_backoff = max_retry_backoff
        self._tls = bool(tls or root_certificates is not None or certificate_chain is not None
                         or server_name)
        self._creds = (grpc.ssl_channel_credentials(_pem(root_certificates), _pem(private_key),
                                                    _pem(certificate_chain))
                       if self._tls else None)
        # Reconnect soon after a daemon restarts (grpc's default backoff grows to 120 s).
        opts: List[Tuple[str, Any]] = [("grpc.initial_reconnect_backoff_ms", 100),
                                       ("grpc.min_reconnect_backoff_ms", 100),
                                       ("grpc.max_reconnect_backoff_ms", 2000)]
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        self._options = opts + list(channel_options)
        md: List[Tuple[str, str]] = []
        if api_key:
            md.append(("authorization", "Bearer " + api_key))
        if tenant:
            md.append(("x-recurd-tenant", tenant))
        self._md = md + [(k.lower(), v) for k, v in metadata]
        self.last_replica: Optional[str] = None
        self._lock = threading.Lock()
        self._connect()

    # -- connection ---------------------------------------------------------------------
    def _connect(self) -> None:
        self.channel: grpc.Channel = (
            grpc.secure_channel(self.addr, self._creds, options=self._options)
            if self._creds is not None
            else grpc.insecure_channel(self.addr, options=self._options))
        #: raw stubs (recurd.v1.Inference, grpc.health.v1.Health), messages in recurd_client.pb
        self.stub: Any = _Stub(self.channel, pb.DESCRIPTOR.services_by_name["Inference"], pb)
        self.health_stub: Any = _Stub(self.channel, hpb.DESCRIPTOR.services_by_name["Health"],
                                      hpb)

    def reconnect(self) -> None:
        """Closes the channel and opens a new one to the same address (sessions live in the
        daemon: a Session keeps working through the new channel)."""
        with self._lock:
            self.channel.close()
            self._connect()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the channel is connected (grpc.FutureTimeoutError after `timeout`)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- plumbing -----------------------------------------------------------------------
    def metadata(self, session_id: Optional[str] = None,
                 request_id: Optional[str] = None) -> List[Tuple[str, str]]:
        """The metadata of a call: the api key, tenant and extra pairs, `x-request-id`, and
        `x-session-id` for a call that names a session (what a balancer hashes)."""
        md = list(self._md)
        if request_id:
            md.append(("x-request-id", request_id))
        if session_id:
            md.append(("x-session-id", session_id))
        return md

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def _backoff(self, attempt: int, err: Optional[errors.RecurdError]) -> None:
        d = min(self.max_retry_backoff, self.retry_backoff * (2 ** (attempt - 1)))
        if err is not None and err.retry_after_ms is not None:
            d = max(d, err.retry_after_ms / 1000.0)
        time.sleep(d)

    def _unary(self, method: str, req: Any, session_id: Optional[str] = None,
               timeout: Optional[float] = None, health: bool = False) -> Tuple[Any, int]:
        """Calls a unary method, retrying UNAVAILABLE; returns (response, attempts)."""
        attempt = 0
        while True:
            fn = getattr(self.health_stub if health else self.stub, method)
            try:
                resp, call = fn.with_call(req, metadata=self.metadata(session_id),
                                          timeout=self._deadline(timeout))
                self.last_replica = _replica(call)
                return resp, attempt + 1
            except grpc.RpcError as e:
                err = errors.from_rpc_error(e)
                err.attempts = attempt + 1
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    attempt += 1
                    self._backoff(attempt, err)
                    continue
                raise err from None

    # -- stateless calls ----------------------------------------------------------------
    def list_models(self, *, timeout: Optional[float] = None) -> List[ModelInfo]:
        resp, _ = self._unary("ListModels", pb.ListModelsRequest(), timeout=timeout)
        return [ModelInfo(m.id, m.architecture, m.vocab_size, m.n_layers, m.hidden_size,
                          m.state_bytes, m.fingerprint, m.max_context_tokens, m.backend)
                for m in resp.models]

    def tokenize(self, text: str, *, add_special_tokens: bool = False, model: str = "",
                 timeout: Optional[float] = None) -> List[int]:
        resp, _ = self._unary("Tokenize", pb.TokenizeRequest(
            model=model, text=text, add_special_tokens=add_special_tokens), timeout=timeout)
        return list(resp.token_ids)

    def detokenize(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False,
                   model: str = "", timeout: Optional[float] = None) -> str:
        resp, _ = self._unary("Detokenize", pb.DetokenizeRequest(
            model=model, token_ids=list(token_ids), skip_special_tokens=skip_special_tokens),
            timeout=timeout)
        return str(resp.text)

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", ... (errors raise, e.g. NotFound
        for an unknown service)."""
        resp, _ = self._unary("Check", hpb.HealthCheckRequest(service=service),
                              timeout=timeout, health=True)
        return str(hpb.HealthCheckResponse.ServingStatus.Name(resp.status))

    def generate(self, prompt: Prompt, *, max_tokens: int = 0,
                 temperature: Optional[float] = None, top_k: int = 0, top_p: float = 0.0,
                 min_p: float = 0.0, repetition_penalty: float = 0.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 seed: Optional[int] = None, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), ignore_eos: bool = False,
                 logprobs: int = 0, speculate: bool = True, add_special_tokens: bool = False,
                 priority: int = 0, tenant: str = "", model: str = "",
                 request_id: Optional[str] = None,
                 timeout: Optional[float] = None) -> "TurnStream":
        """A stateless completion (no session): a TurnStream of Deltas. Sampling parameters as
        in the proto's SamplingParams (temperature None: 1.0, 0: greedy; seed None: random)."""
        req = _request(prompt, model=model, add_special_tokens=add_special_tokens,
                       priority=priority, tenant=tenant, max_tokens=max_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       repetition_penalty=repetition_penalty,
                       presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                       seed=seed, stop=stop, stop_token_ids=stop_token_ids,
                       ignore_eos=ignore_eos, logprobs=logprobs, speculate=_spec(speculate))
        return TurnStream(self, req, None, timeout, request_id, retry=True)

    # -- sessions -----------------------------------------------------------------------
    @staticmethod
    def new_session_id() -> str:
        """A fresh id (what create_session and fork_session use when given none)."""
        return "s-" + uuid.uuid4().hex

    def create_session(self, id: Optional[str] = None, *, ttl_seconds: int = 0,
                       metadata: Optional[Mapping[str, str]] = None, owner: str = "",
                       model: str = "", timeout: Optional[float] = None) -> "Session":
        """Creates a session. id None: the client picks one (new_session_id()), so that even
        the create carries x-session-id and a balancer routes it to the session's replica.
        A create retried after UNAVAILABLE that finds the id taken (ALREADY_EXISTS) returns
        that session: the first attempt made it."""
        sid = id if id is not None else self.new_session_id()
        req = pb.CreateSessionRequest(model=model, session_id=sid, owner=owner,
                                      ttl_seconds=ttl_seconds)
        return self._make_session("CreateSession", req, metadata, sid, sid, timeout)

    def _make_session(self, method: str, req: Any, metadata: Optional[Mapping[str, str]],
                      route_id: str, new_id: str, timeout: Optional[float]) -> "Session":
        """Create or Fork: sends req (with metadata) routed by route_id. A retry after
        UNAVAILABLE that finds new_id taken (ALREADY_EXISTS) returns that session: the first
        attempt made it."""
        for k, v in (metadata or {}).items():
            req.metadata.add(key=k, value=v)
        try:
            resp, _ = self._unary(method, req, session_id=route_id, timeout=timeout)
        except errors.AlreadyExists as e:
            if e.attempts == 1:
                raise
            return self.get_session(new_id, timeout=timeout)
        return Session(self, SessionInfo._of(resp))

    def get_session(self, id: str, *, timeout: Optional[float] = None) -> "Session":
        """The session `id` (NotFound if none): how a new Client, after a reconnect or on
        another machine, resumes a session."""
        resp, _ = self._unary("GetSession", pb.GetSessionRequest(session_id=id), session_id=id,
                              timeout=timeout)
        return Session(self, SessionInfo._of(resp))

    def fork_session(self, id: str, new_id: Optional[str] = None, *, ttl_seconds: int = 0,
                     metadata: Optional[Mapping[str, str]] = None, owner: str = "",
                     timeout: Optional[float] = None) -> "Session":
        """Forks session `id` at its committed version into `new_id` (None: the client picks
        one). Routed by the source's id (x-session-id = id)."""
        nid = new_id if new_id is not None else self.new_session_id()
        req = pb.ForkSessionRequest(session_id=id, new_session_id=nid, owner=owner,
                                    ttl_seconds=ttl_seconds)
        return self._make_session("ForkSession", req, metadata, id, nid, timeout)

    def delete_session(self, id: str, *, timeout: Optional[float] = None) -> None:
        """Deletes session `id` (NotFound if none; a delete retried after UNAVAILABLE that
        finds it gone succeeds)."""
        try:
            self._unary("DeleteSession", pb.DeleteSessionRequest(session_id=id), session_id=id,
                        timeout=timeout)
        except errors.NotFound as e:
            if e.attempts == 1:
                raise

    def turn(self, session_id: str, prompt: Prompt, **kw: Any) -> "TurnStream":
        """session(session_id).turn(prompt, **kw): a turn on a session by id (the version to
        expect is fetched first, unless expected_version is given)."""
        return self.session(session_id).turn(prompt, **kw)

    def session(self, id: str, version: Optional[int] = None) -> "Session":
        """A Session handle without a call. version None: unknown, so its first turn asks the
        daemon (GetSession) for the version to expect."""
        s = Session(self, None, id)
        s.version = version
        return s


def _spec(speculate: bool) -> int:
    """SamplingParams.speculate: SPECULATE_SERVER (the daemon's --speculate) or SPECULATE_OFF."""
    return pb.SPECULATE_SERVER if speculate else pb.SPECULATE_OFF


def _request(prompt: Prompt, *, model: str, add_special_tokens: bool, priority: int,
             tenant: str, session_id: str = "", expected_version: Optional[int] = None,
             **sampling: Any) -> Any:
    req = pb.GenerateRequest(model=model, session_id=session_id,
                             add_special_tokens=add_special_tokens, priority=priority,
                             tenant=tenant)
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.tokens.ids.extend(int(t) for t in prompt)
    if expected_version is not None:
        req.expected_version = expected_version
    s = req.sampling
    for k in ("temperature", "seed"):
        v = sampling.pop(k)
        if v is not None:
            setattr(s, k, v)
    s.stop.extend(sampling.pop("stop"))
    s.stop_token_ids.extend(sampling.pop("stop_token_ids"))
    for k, v in sampling.items():
        setattr(s, k, v)
    return req


class Session:
    """A durable session, by id. `version` is the last committed version this client knows
    (None: unknown); a turn sends it as expected_version unless told otherwise. Not meant to be
    turned from several threads at once (the daemon refuses concurrent turns: Aborted)."""

    def __init__(self, client: Client, info: Optional[SessionInfo], id: str = "") -> None:
        self.client = client
        self.info = info
        self.id: str = info.session_id if info else id
        self.version: Optional[int] = info.version if info else None

    def __repr__(self) -> str:
        return "Session(%r, version=%r)" % (self.id, self.version)

    @property
    def session_id(self) -> str:
        """The same as `id`."""
        return self.id

    def refresh(self, *, timeout: Optional[float] = None) -> SessionInfo:
        """GetSession: updates `info` and `version`."""
        s = self.client.get_session(self.id, timeout=timeout)
        self.info, self.version = s.info, s.version
        assert s.info is not None
        return s.info

    def fork(self, new_id: Optional[str] = None, **kw: Any) -> "Session":
        """fork_session(self.id, new_id, ...)."""
        return self.client.fork_session(self.id, new_id, **kw)

    def delete(self, *, timeout: Optional[float] = None) -> None:
        self.client.delete_session(self.id, timeout=timeout)

    def turn(self, prompt: Prompt, *, max_tokens: int = 0,
             temperature: Optional[float] = None, top_k: int = 0, top_p: float = 0.0,
             min_p: float = 0.0, repetition_penalty: float = 0.0,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             seed: Optional[int] = None, stop: Sequence[str] = (),
             stop_token_ids: Sequence[int] = (), ignore_eos: bool = False, logprobs: int = 0,
             speculate: bool = True, add_special_tokens: bool = False, priority: int = 0,
             tenant: str = "",
             model: str = "", expected_version: Optional[int] = _AUTO,
             request_id: Optional[str] = None,
             timeout: Optional[float] = None) -> "TurnStream":
        """A turn: the prompt (text, or token ids) continues the session's committed state.
        Returns a TurnStream of Deltas; at its end `result` holds the output, usage and the
        session's new version (also in `self.version`). expected_version: by default the
        session's known version (fetched first when unknown), which makes the turn safe to
        retry: it commits at most once. An int: that version. None: no check, and then no
        retry once the call may have reached the daemon."""
        ev = expected_version
        if ev is _AUTO:
            if self.version is None:
                self.refresh(timeout=timeout)
            ev = self.version
        req = _request(prompt, model=model, add_special_tokens=add_special_tokens,
                       priority=priority, tenant=tenant, session_id=self.id,
                       expected_version=ev, max_tokens=max_tokens, temperature=temperature,
                       top_k=top_k, top_p=top_p, min_p=min_p,
                       repetition_penalty=repetition_penalty,
                       presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                       seed=seed, stop=stop, stop_token_ids=stop_token_ids,
                       ignore_eos=ignore_eos, logprobs=logprobs, speculate=_spec(speculate))
        return TurnStream(self.client, req, self, timeout, request_id, retry=ev is not None)


_FINISH = {0: "unspecified", 1: "length", 2: "stop", 3: "eos", 4: "context"}


class TurnStream(Iterator[Delta]):
    """The stream of one Generate: iterate for Deltas; `result` (a TurnResult) once it ended
    with its final message, `collect()` to read it to the end. Retries (README "Retries"):
    UNAVAILABLE, or a stream cut before the final message, starts the call again (at most
    Client.retries times); a session turn's retry carries the same expected_version, so
    it commits at most once. `cancel()` (any thread) cancels the call: nothing commits."""

    def __init__(self, client: Client, req: Any, session: Optional[Session],
                 timeout: Optional[float], request_id: Optional[str], retry: bool) -> None:
        self._client = client
        self._req = req
        self._session = session
        self._timeout = client._deadline(timeout)
        self._request_id = request_id
        self._retry = retry
        self._call: Any = None
        self._cancelled = False
        self.result: Optional[TurnResult] = None
        self.replica: Optional[str] = None
        self.attempts = 0
        # The generator sees this object through a weak proxy: no reference cycle, so a stream
        # dropped part-read is freed at once and its generator's GeneratorExit cancels the call.
        self._gen = TurnStream._run(weakref.proxy(self))

    def __iter__(self) -> "TurnStream":
        return self

    def __next__(self) -> Delta:
        return next(self._gen)

    def collect(self) -> TurnResult:
        """Reads the stream to its end; returns the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> "TurnStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Leaving a `with` block before the stream ended cancels it."""
        if self.result is None:
            self.cancel()

    def _run(self) -> Iterator[Delta]:
        c = self._client
        sid = self._req.session_id or None
        ev: Optional[int] = (self._req.expected_version
                             if self._req.HasField("expected_version") else None)
        yielded_before = False  # an earlier attempt streamed deltas
        while True:
            self.attempts += 1
            text: List[str] = []
            ids: List[int] = []
            lps: List[TokenLogprob] = []
            restart = yielded_before
            final = None
            got_msg = False
            err: Optional[grpc.RpcError] = None
            call = c.stub.Generate(self._req, metadata=c.metadata(sid, self._request_id),
                                   timeout=self._timeout)
            self._call = call
            if self._cancelled:
                call.cancel()
            try:
                for m in call:  # a consumer that drops the stream (GeneratorExit): cancelled
                    got_msg = True
                    if self.replica is None:
                        self.replica = _replica(call)
                    d_lps = _logprobs(m)
                    if m.text or m.token_ids or d_lps:
                        text.append(m.text)
                        ids.extend(m.token_ids)
                        lps.extend(d_lps)
                        yielded_before = True
                        yield Delta(m.text, tuple(m.token_ids), d_lps, restart)
                        restart = False
                    if m.HasField("usage"):
                        final = m
            except grpc.RpcError as e:
                err = e
            except GeneratorExit:
                call.cancel()
                raise
            replica = _replica(call)
            if replica:
                self.replica = c.last_replica = replica
            if final is not None and err is None:
                u = final.usage
                self.result = TurnResult(
                    "".join(text), tuple(ids), tuple(lps), _FINISH.get(final.finish_reason,
                                                                      "unspecified"),
                    Usage(u.prompt_tokens, u.completion_tokens, u.queue_ms, u.prefill_ms,
                          u.decode_ms, u.total_ms, u.preemptions, u.cached_prompt_tokens,
                          u.draft_tokens, u.accepted_tokens),
                    final.session_id, final.session_version, final.request_id, self.replica,
                    self.attempts)
                if self._session is not None:
                    self._session.version = final.session_version
                return
            if self._cancelled:
                raise errors.Cancelled("cancelled by the client", replica=self.replica)
            retried = self.attempts > 1
            if err is not None and not _is_cut(err):
                e2 = errors.from_rpc_error(err, self.replica)
                code = err.code()
                if retried and code == grpc.StatusCode.FAILED_PRECONDITION and ev is not None:
                    # The session moved past expected_version: the interrupted attempt
                    # committed (its output went with the stream), or another client turned.
                    now: Optional[int] = None
                    if self._session is not None:
                        try:
                            now = self._session.refresh().version
                        except errors.RecurdError:
                            now = None
                    raise errors.TurnConflict(
                        "turn not retried: the session is at version %s, past the expected %d "
                        "(the interrupted attempt committed, or another client turned it): %s"
                        % (now, ev, e2.details), expected_version=ev, session_version=now,
                        code=code, trailing_metadata=e2.trailing_metadata,
                        replica=e2.replica) from None
                # ABORTED after a cut attempt: that attempt may still hold the session (running
                # or committing); the retry's expected_version keeps it at most once.
                if not (retried and code == grpc.StatusCode.ABORTED and self._retry
                        and self.attempts <= c.retries):
                    raise e2 from None
                c._backoff(self.attempts, e2)
                continue
            # UNAVAILABLE, a cut stream, or an end without the final message.
            e2 = (errors.from_rpc_error(err, self.replica) if err is not None
                  else errors.StreamCut("the stream ended before its final message",
                                        replica=self.replica))
            if not self._retry or self.attempts > c.retries:
                if not got_msg and not yielded_before and isinstance(e2, errors.Unavailable):
                    raise e2 from None
                raise errors.StreamCut(e2.details, code=e2.code,
                                       trailing_metadata=e2.trailing_metadata,
                                       replica=e2.replica) from None
            c._backoff(self.attempts, e2)


__all__ = ["Client", "Session", "TurnStream", "Delta", "TurnResult", "Usage", "SessionInfo",
           "ModelInfo", "TokenLogprob", "TopLogprob"]
