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

    def test_calls_racing_the_drain_get_unavailable(self):
        """Calls racing a drain that has nothing to finish are refused UNAVAILABLE, the status a
        client retries elsewhere, never CANCELLED (the client's own cancellation, to gRPC).
        The daemon shuts its server down only once calls stopped coming (DMN_DRAIN_QUIET_MS):
        gRPC core cancels a call whose headers it read just before the shutdown. Repeated over
        several daemons: without the quiet period the window is a few microseconds wide."""
        for round_ in range(4):
            d = Daemon()
            codes, stop = [], threading.Event()
            sid = d.api.CreateSession(pb.CreateSessionRequest()).session_id

            def hammer(i):
                while not stop.is_set():
                    try:
                        if i % 2:
                            collect(d.api.Generate(gen_request(tokens=[5, 6, 7], max_tokens=1,
                                                               temperature=0), timeout=30))
                        else:
                            d.api.GetSession(pb.GetSessionRequest(session_id=sid), timeout=30)
                        codes.append(C.OK)
                    except grpc.RpcError as e:
                        codes.append(e.code())
                        return  # UNAVAILABLE: a client goes elsewhere (or backs off)
            threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
            try:
                for t in threads:
                    t.start()
                time.sleep(0.3 + 0.1 * round_)
                d.proc.send_signal(signal.SIGTERM)
                d.proc.wait(timeout=60)
                time.sleep(0.2)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
                d.stop()
            self.assertEqual(d.proc.returncode, 0, d.exit_logs[-3000:])
            bad = [c for c in codes if c not in (C.OK, C.UNAVAILABLE)]
            self.assertFalse(bad, "round %d: %d calls, not OK/UNAVAILABLE: %s\n%s"
                             % (round_, len(codes), bad, d.exit_logs[-3000:]))
            self.assertIn(C.OK, codes)

    def test_idle_drain_ends_watch_in_order(self):
        """A drain with nothing to finish shuts down at once. A Watch still hears NOT_SERVING
        first, then ends UNAVAILABLE; it is never cut off with its last status unsent (the
        shutdown once cancelled it while the NOT_SERVING message was in flight). More SIGTERMs
        until the process is gone (an impatient operator, a test harness's own stop) never
        turn the clean exit into death by signal. Repeated: the races are narrow."""
        for round_ in range(6):
            d = Daemon()
            try:
                watch = d.health.Watch(hpb.HealthCheckRequest(), timeout=60)
                self.assertEqual(next(watch).status, hpb.HealthCheckResponse.SERVING)
                d.proc.send_signal(signal.SIGTERM)
                self.assertEqual(next(watch).status, hpb.HealthCheckResponse.NOT_SERVING,
                                 "round %d" % round_)
                with self.assertRaises(grpc.RpcError) as cm:
                    next(watch)
                self.assertEqual(cm.exception.code(), C.UNAVAILABLE, "round %d" % round_)
                self.assertIn("shutting down", cm.exception.details())
                deadline = time.time() + 60
                while d.proc.poll() is None and time.time() < deadline:
                    d.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.002)
                self.assertEqual(d.proc.wait(timeout=5), 0, d.logs()[-3000:])
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
