"""Exceptions of recurd-client: one class per gRPC status the daemon answers, all subclasses of
RecurdError, which carries the status code, the details and the retry-after hint."""
from typing import Any, Dict, Optional, Sequence, Tuple, Type

import grpc


class RecurdError(Exception):
    """A failed call. `code` is the grpc.StatusCode, `details` the daemon's message,
    `retry_after_ms` the `retry-after-ms` trailing metadata (a quota refusal says when to try
    again) or None, `trailing_metadata` all of it, `replica` the `x-recurd-replica` that
    answered (None when unknown)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", *, code: Optional[grpc.StatusCode] = None,
                 trailing_metadata: Sequence[Tuple[str, str]] = (),
                 replica: Optional[str] = None) -> None:
        super().__init__(details)
        if code is not None:
            self.code = code
        self.details = details
        self.trailing_metadata: Tuple[Tuple[str, str], ...] = tuple(trailing_metadata or ())
        self.replica = replica
        self.retry_after_ms: Optional[int] = None
        self.attempts = 1  # how many times the call was tried (retries after UNAVAILABLE)
        for k, v in self.trailing_metadata:
            if k == "retry-after-ms":
                try:
                    self.retry_after_ms = int(v)
                except (TypeError, ValueError):
                    pass

    def __str__(self) -> str:
        s = "%s: %s" % (self.code.name, self.details)
        if self.retry_after_ms is not None:
            s += " (retry after %d ms)" % self.retry_after_ms
        return s


class Cancelled(RecurdError):
    code = grpc.StatusCode.CANCELLED


class InvalidArgument(RecurdError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RecurdError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RecurdError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RecurdError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RecurdError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RecurdError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RecurdError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RecurdError):
    code = grpc.StatusCode.ABORTED


class Unimplemented(RecurdError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RecurdError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(RecurdError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(RecurdError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(RecurdError):
    code = grpc.StatusCode.UNAUTHENTICATED


class StreamCut(Unavailable):
    """A Generate stream ended before its final message (the connection or the balancer cut
    it) and retries were used up or not allowed. For a session turn, whether it committed is
    unknown: Session.refresh() tells."""


class TurnConflict(FailedPrecondition):
    """A retried turn was refused because the session is past the version the turn was
    started on: the interrupted attempt committed (its output was lost with the stream), or
    another client turned the session meanwhile. `expected_version` is the version the turn
    was started on, `session_version` the session's version now. Never a turn applied twice."""

    def __init__(self, details: str, *, expected_version: int,
                 session_version: Optional[int], **kw: Any) -> None:
        super().__init__(details, **kw)
        self.expected_version = expected_version
        self.session_version = session_version


_BY_CODE: Dict[grpc.StatusCode, Type[RecurdError]] = {
    c.code: c for c in (Cancelled, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                        PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted,
                        Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def from_rpc_error(e: grpc.RpcError, replica: Optional[str] = None) -> RecurdError:
    """The RecurdError for a grpc.RpcError (a grpc.Call)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else str(e)) or ""
    tmd: Tuple[Tuple[str, str], ...] = ()
    try:
        md: Any = e.trailing_metadata()
        tmd = tuple((str(k), str(v)) for k, v in (md or ()))
    except Exception:  # noqa: BLE001 - a local error has no trailing metadata
        pass
    if replica is None:
        try:
            replica = dict(e.initial_metadata() or ()).get("x-recurd-replica")  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            replica = None
    cls = _BY_CODE.get(code, RecurdError)
    return cls(details, code=code, trailing_metadata=tmd, replica=replica)
