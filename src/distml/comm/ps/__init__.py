"""Parameter server: tensor-only wire format, sharded server loop, client with push/pull handles.

See docs/design.md §4 and docs/parameter_server.md.
"""

from distml.comm.ps.client import PSClient, PullHandle, PullResult, PushHandle
from distml.comm.ps.codec import PushDecoder, PushEncoder
from distml.comm.ps.server import ServerLoop, UpdateRule
from distml.comm.ps.wire import Header, shard_bounds

__all__ = ["Header", "PSClient", "PullHandle", "PullResult", "PushDecoder", "PushEncoder",
           "PushHandle", "ServerLoop", "UpdateRule", "shard_bounds"]
