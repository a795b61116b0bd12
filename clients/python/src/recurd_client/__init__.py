"""recurd-client: a typed Python client of recurd, the serving daemon for recurrent LMs with
durable sessions.

    from recurd_client import Client
    with Client("127.0.0.1:50051") as c:
        s = c.create_session()
        for d in s.turn("Once upon a time", max_tokens=40, temperature=0):
            print(d.text, end="", flush=True)

`pb` and `health_pb` are the protobuf modules generated from recurd's proto/ when the package
was built (raw messages; Client.stub and Client.health_stub are the raw gRPC stubs)."""
from ._proto import health_pb2 as health_pb
from ._proto import inference_pb2 as pb
from .client import (Client, Delta, ModelInfo, Session, SessionInfo, TokenLogprob, TopLogprob,
                     TurnResult, TurnStream, Usage)
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                     FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied,
                     RecurdError, ResourceExhausted, StreamCut, TurnConflict, Unauthenticated,
                     Unavailable, Unimplemented)

__version__ = "0.1.0"
__all__ = [
    "Client", "Session", "TurnStream", "Delta", "TurnResult", "Usage", "SessionInfo",
    "ModelInfo", "TokenLogprob", "TopLogprob", "pb", "health_pb",
    "RecurdError", "Cancelled", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated", "StreamCut",
    "TurnConflict",
]
