"""recurd integration: SIGTERM/SIGINT drain — health turns NOT_SERVING, new calls get
UNAVAILABLE, in-flight turns finish (or are cancelled after the grace period), exit 0."""
import signal
import threading
import time
import unittest

import grpc

from rcd_harness import Daemon, collect, gen_request, hpb, pb

C = grpc.StatusCode


class Drain(unittest.TestCase):
    def test_sigterm_finishes_stream_in_flight(self):
        d = Daemon("--drain-grace-ms", "30000")
        try:
            sid = d.api.CreateSession(pb.CreateSessionRequest()).session_id
            watch = d.health.Watch(hpb.HealthCheckRequest(), timeout=60)
            self.assertEqual(next(watch).status, hpb.HealthCheckResponse.SERVING)
            st = d.api.Generate(gen_request("Once upon a time", session=sid, max_tokens=40,
                                            temperature=0, ignore_eos=True), timeout=120)
            first = next(st)
            d.proc.send_signal(signal.SIGTERM)
            self.assertEqual(next(watch).status, hpb.HealthCheckResponse.NOT_SERVING)
            with self.assertRaises(grpc.RpcError) as cm:
                d.api.ListModels(pb.ListModelsRequest(), timeout=10)
            self.assertEqual(cm.exception.code(), C.UNAVAILABLE)
            _, ids, _, last = collect(st)
            self.assertEqual(len(first.token_ids) + len(ids), 40)
            self.assertEqual(last.finish_reason, pb.FinishReason.FINISH_REASON_LENGTH)
            self.assertEqual(last.session_version, 1)
            d.proc.wait(timeout=60)
            self.assertEqual(d.proc.returncode, 0, d.logs()[-3000:])
        finally:
            d.stop()

    def test_grace_expiry_cancels(self):
        d = Daemon("--drain-grace-ms", "300")
        try:
            st = d.api.Generate(gen_request("Once upon a time", max_tokens=8000,
                                            ignore_eos=True), timeout=120)
            next(st)
            t0 = time.time()
            d.proc.send_signal(signal.SIGINT)
            with self.assertRaises(grpc.RpcError) as cm:
                for _ in st:
                    pass
            self.assertIn(cm.exception.code(), (C.UNAVAILABLE, C.CANCELLED))
            d.proc.wait(timeout=30)
            self.assertLess(time.time() - t0, 20)
            self.assertEqual(d.proc.returncode, 0, d.logs()[-3000:])
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
