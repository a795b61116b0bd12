#!/usr/bin/env python3
"""Example recurd client, on the Python client package (clients/python, `recurd_client`):
lists the model, creates a session, streams two turns that continue each other, forks the
session, streams a turn on the fork, and prints both sessions' versions and token counts.

    pip install ./clients/python          # once (see clients/python/README.md)
    python3 examples/client.py [--addr 127.0.0.1:50051] [--prompt "Once upon a time"]

The package sends each session call's id as `x-session-id` metadata (a load balancer in front
of several replicas hashes it), picks the session ids itself so that even the create is
routed, and sends `authorization: Bearer KEY` when an API key is given."""
import argparse
import os
import sys

try:
    import recurd_client as rc
except ImportError:
    sys.exit("examples/client.py needs the recurd_client package: pip install ./clients/python "
             "(clients/python/README.md)")


def turn(session, text, max_tokens):
    sys.stdout.write(text)
    stream = session.turn(text, max_tokens=max_tokens, temperature=0.8,
                          seed=1234)  # reproducible
    for delta in stream:
        if delta.restart:  # a retried attempt (the stream was cut): start the line again
            sys.stdout.write("\n[retried] " + text)
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    r = stream.result
    print("\n  [finish=%s, %d+%d tokens, %.0f ms, session version %d]" % (
        r.finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_ms,
        r.session_version))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default=os.environ.get("RECURD_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--api-key", default=os.environ.get("RECURD_API_KEY"),
                    help="sent as authorization: Bearer KEY (a daemon run with --api-keys)")
    a = ap.parse_args()
    with rc.Client(a.addr, api_key=a.api_key, timeout=300) as client:
        print(client.list_models()[0])
        s = client.create_session(metadata={"client": "examples/client.py"})
        print("session", s.id)
        turn(s, a.prompt, a.max_tokens)
        turn(s, " Then", a.max_tokens)  # continues the first turn
        # A fork is routed by its source: it is made where the source's state is.
        fork = s.fork()
        print("forked %s at version %d" % (fork.id, fork.version))
        turn(fork, " But", a.max_tokens)
        for x in (s, fork):
            info = x.refresh()
            print("%s: version %d, %d tokens" % (x.id, info.version, info.token_count))
            x.delete()


if __name__ == "__main__":
    main()
