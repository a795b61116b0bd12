"""recurd integration: strings from the wire are length-delimited and may hold NUL bytes, which
protobuf-c's char * strings lose. An id, owner, metadata key or value, stop string, model or
tenant holding one is refused with INVALID_ARGUMENT naming the field, and nothing happens to
the id it would be cut to ("a\\0zz" is not session "a"); prompt text keeps every byte."""
import json
import os
import unittest

import grpc

from rcd_harness import ROOT, DaemonTest, collect, gen_request, hpb, pb

C = grpc.StatusCode


def byte_token(b):
    """The id HF's ByteLevel BPE gives a lone byte b (GPT-2's byte-to-unicode map)."""
    with open(os.path.join(ROOT, "models", "recurd-mamba-tiny", "tokenizer.json")) as f:
        vocab = json.load(f)["model"]["vocab"]
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    ch = b if b in keep else 256 + [x for x in range(256) if x not in keep].index(b)
    return vocab[chr(ch)]


class NulBytes(DaemonTest):
    daemon_args = ("--ephemeral",)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.api.CreateSession(pb.CreateSessionRequest(session_id="a"))

    def refused(self, field, fn, req):
        e = self.assertCode(C.INVALID_ARGUMENT, fn, req, timeout=60)
        self.assertIn("%s holds a NUL byte" % field, e.details())

    def assertUntouched(self):
        s = self.api.GetSession(pb.GetSessionRequest(session_id="a"))
        self.assertEqual((s.version, s.owner, len(s.metadata)), (0, "", 0))

    def assertMissing(self, sid):
        self.assertCode(C.NOT_FOUND, self.api.GetSession, pb.GetSessionRequest(session_id=sid))

    def test_session_ids(self):
        self.refused("session_id", self.api.GetSession, pb.GetSessionRequest(session_id="a\0zz"))
        self.refused("session_id", self.api.DeleteSession,
                     pb.DeleteSessionRequest(session_id="a\0zz"))
        self.refused("session_id", self.api.ForkSession,
                     pb.ForkSessionRequest(session_id="a\0zz", new_session_id="f1"))
        self.assertMissing("f1")
        self.refused("new_session_id", self.api.ForkSession,
                     pb.ForkSessionRequest(session_id="a", new_session_id="b\0x"))
        self.assertMissing("b")
        for sid in ("\0", "c\0d"):
            self.refused("session_id", self.api.CreateSession,
                         pb.CreateSessionRequest(session_id=sid))
        self.assertMissing("c")
        self.refused("session_id", self.api.Generate,
                     gen_request(tokens=[1, 2], session="a\0zz", max_tokens=1))
        self.assertUntouched()

    def test_owner_and_metadata(self):
        self.refused("owner", self.api.CreateSession,
                     pb.CreateSessionRequest(session_id="o1", owner="bob\0evil"))
        self.refused("owner", self.api.ForkSession,
                     pb.ForkSessionRequest(session_id="a", new_session_id="o2", owner="bob\0evil"))
        for k, v, field in (("k\0x", "v", "metadata.key"), ("k", "v\0x", "metadata.value")):
            md = [pb.MetadataEntry(key=k, value=v)]
            self.refused(field, self.api.CreateSession,
                         pb.CreateSessionRequest(session_id="o3", metadata=md))
            self.refused(field, self.api.ForkSession,
                         pb.ForkSessionRequest(session_id="a", new_session_id="o4", metadata=md))
        for sid in ("o1", "o2", "o3", "o4"):
            self.assertMissing(sid)
        self.assertUntouched()

    def test_other_strings(self):
        self.refused("sampling.stop", self.api.Generate,
                     gen_request(tokens=[1, 2], max_tokens=1, stop=["x", "a\0"]))
        req = gen_request(tokens=[1, 2], max_tokens=1)
        req.tenant = "t\0u"
        self.refused("tenant", self.api.Generate, req)
        self.refused("model", self.api.Tokenize, pb.TokenizeRequest(model="\0", text="a"))
        self.refused("service", self.d.health.Check, hpb.HealthCheckRequest(service="\0"))

    def test_text_keeps_nul(self):
        tok = lambda t: list(self.api.Tokenize(pb.TokenizeRequest(text=t)).token_ids)
        # ByteLevel pre-tokenizes "ab", "\0", "cd" apart: HF's ids are those of each piece
        want = tok("ab") + [byte_token(0)] + tok("cd")
        self.assertEqual(tok("ab\0cd"), want)
        self.assertEqual(tok("\0"), [byte_token(0)])
        _, _, _, last = collect(self.api.Generate(
            gen_request(prompt="ab\0cd", max_tokens=1, temperature=0, ignore_eos=True),
            timeout=60))
        self.assertEqual(last.usage.prompt_tokens, len(want))
        _, ids, _, _ = collect(self.api.Generate(  # "\0" is a prompt, not an empty one
            gen_request(prompt="\0", max_tokens=1, temperature=0, ignore_eos=True), timeout=60))
        self.assertEqual(len(ids), 1)

    def test_reply_keeps_nul(self):
        """Reply text is packed at its real length: a token that decodes to the byte 0x00
        reaches the client, in Detokenize and in Generate's stream."""
        nul = byte_token(0)
        r = self.api.Detokenize(pb.DetokenizeRequest(token_ids=[nul]))
        self.assertEqual(r.text, "\0")
        ab = list(self.api.Tokenize(pb.TokenizeRequest(text="ab")).token_ids)
        r = self.api.Detokenize(pb.DetokenizeRequest(token_ids=ab + [nul, nul] + ab))
        self.assertEqual(r.text, "ab\0\0ab")
        # A prompt of that token with repetition_penalty 0.01 (its logit x100 when positive)
        # makes the greedy model sample it (measured: 64 of them → the 5th token); a few
        # prompt lengths in case another kernel set tips the argmax elsewhere.
        found = 0
        for k in (64, 32, 128, 16, 8):
            text, ids, _, last = collect(self.api.Generate(
                gen_request(tokens=[nul] * k, max_tokens=16, temperature=0, ignore_eos=True,
                            repetition_penalty=0.01), timeout=60))
            self.assertEqual(last.usage.completion_tokens, 16)
            self.assertEqual(text, self.api.Detokenize(pb.DetokenizeRequest(token_ids=ids)).text)
            self.assertEqual(text.count("\0"), ids.count(nul))
            found += ids.count(nul)
            if found:
                break
        self.assertGreater(found, 0, "no prompt made the model sample the 0x00 token")

if __name__ == "__main__":
    unittest.main()
