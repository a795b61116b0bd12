#!/usr/bin/env python3
"""Example recurd client (Python grpcio): creates a session, streams two turns that continue
each other, forks the session, and prints the session's versions.

    python3 examples/client.py [--addr 127.0.0.1:50051] [--prompt "Once upon a time"]

Needs grpcio and protobuf (Debian: python3-grpcio python3-protobuf; or pip install grpcio
protobuf) and `protoc` (or grpcio-tools); the message classes are generated from
proto/ into a temporary directory at start-up, so nothing generated is checked in."""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def load_messages():
    out = tempfile.mkdtemp(prefix="recurd-example-")
    args = ["-I", os.path.join(ROOT, "proto"), "--python_out", out, "recurd/v1/inference.proto"]
    if shutil.which("protoc"):
        subprocess.check_call(["protoc"] + args)
    else:
        from grpc_tools import protoc
        protoc.main(["protoc"] + args)
    spec = importlib.util.spec_from_file_location(
        "inference_pb2", os.path.join(out, "recurd", "v1", "inference_pb2.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pb = load_messages()


class Inference:
    """A stub for recurd.v1.Inference, built from the service descriptor. Every call that names
    a session also sends it as `x-session-id` metadata (a load balancer in front of several
    replicas hashes it: it cannot read the request body), and `authorization: Bearer KEY` when
    an API key is given."""

    def __init__(self, channel, api_key=None):
        svc = pb.DESCRIPTOR.services_by_name["Inference"]
        base = [("authorization", "Bearer " + api_key)] if api_key else []
        for m in svc.methods:
            kind = channel.unary_stream if m.server_streaming else channel.unary_unary
            fn = kind("/recurd.v1.Inference/" + m.name,
                      request_serializer=getattr(pb, m.input_type.name).SerializeToString,
                      response_deserializer=getattr(pb, m.output_type.name).FromString)
            setattr(self, m.name, self._wrap(fn, base))

    @staticmethod
    def _wrap(fn, base):
        def call(req, metadata=(), **kw):
            md = list(base) + list(metadata)
            sid = getattr(req, "session_id", "")
            if sid:
                md.append(("x-session-id", sid))
            return fn(req, metadata=md, **kw)
        return call


def turn(api, session_id, text, max_tokens):
    req = pb.GenerateRequest(session_id=session_id, text=text)
    req.sampling.max_tokens = max_tokens
    req.sampling.temperature = 0.8
    req.sampling.seed = 1234  # reproducible
    sys.stdout.write(text)
    for msg in api.Generate(req, timeout=300):
        sys.stdout.write(msg.text)
        sys.stdout.flush()
        if msg.HasField("usage"):
            print("\n  [finish=%s, %d+%d tokens, %.0f ms, session version %d]" % (
                pb.FinishReason.Name(msg.finish_reason), msg.usage.prompt_tokens,
                msg.usage.completion_tokens, msg.usage.total_ms, msg.session_version))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default=os.environ.get("RECURD_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--api-key", default=os.environ.get("RECURD_API_KEY"),
                    help="sent as authorization: Bearer KEY (a daemon run with --api-keys)")
    a = ap.parse_args()
    with grpc.insecure_channel(a.addr) as ch:
        api = Inference(ch, a.api_key)
        print(api.ListModels(pb.ListModelsRequest()).models[0])
        # The client picks the id, so that even the create is routed to the session's replica.
        s = api.CreateSession(pb.CreateSessionRequest(
            session_id="example-" + uuid.uuid4().hex,
            metadata=[pb.MetadataEntry(key="client", value="examples/client.py")]))
        print("session", s.session_id)
        turn(api, s.session_id, a.prompt, a.max_tokens)
        turn(api, s.session_id, " Then", a.max_tokens)  # continues the first turn
        # A fork is routed by its source (session_id): it is made where the source's state is.
        fork = api.ForkSession(pb.ForkSessionRequest(session_id=s.session_id))
        print("forked %s at version %d" % (fork.session_id, fork.version))
        turn(api, fork.session_id, " But", a.max_tokens)
        for sid in (s.session_id, fork.session_id):
            g = api.GetSession(pb.GetSessionRequest(session_id=sid))
            print("%s: version %d, %d tokens" % (sid, g.version, g.token_count))
            api.DeleteSession(pb.DeleteSessionRequest(session_id=sid))


if __name__ == "__main__":
    main()
