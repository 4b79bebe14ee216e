"""Settings of grpc core, made before grpc is first imported (it reads them only then).

Since its EventEngine, grpc core hands every socket read and write of a channel or a
server to the EventEngine's own thread pool (the ``event_engine_client`` and
``event_engine_listener`` experiments, on by default). Each message then crosses threads
twice more than when the polling thread that grpc.aio already runs does the I/O itself,
as grpc did before; for a mesh's small messages those hand-offs are a large share of
what a message costs, in latency and in CPU.

So importing wiremesh turns both off, through ``GRPC_EXPERIMENTS``, unless that variable
is set already: set it yourself (to an empty string for grpc's defaults) to choose. The
variable is inherited, so the node and gateway processes that ``wiremesh run`` starts get
it too. It takes effect only in a process that imports wiremesh before grpc.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ENV", "EXPERIMENTS", "KEEPALIVE", "OWN_SUBCHANNELS", "applied", "prepare"]

ENV = "GRPC_EXPERIMENTS"
#: socket I/O on grpc's polling thread, not on the EventEngine's thread pool
EXPERIMENTS = "-event_engine_client,-event_engine_listener"

#: The channel option every channel of wiremesh's sets: connections of its own. grpc
#: otherwise shares one connection ("subchannel") per address among the channels of a
#: process, and a new channel to a node that restarted on the same address inherits the
#: old connection's reconnect backoff, failing at once with UNAVAILABLE instead of
#: connecting (seen with socket I/O on the polling thread).
OWN_SUBCHANNELS = ("grpc.use_local_subchannel_pool", 1)

#: HTTP/2 keepalive, the same on every channel and server of wiremesh's: a ping every
#: 20 s, and a connection whose ping is not acknowledged within 10 s is closed (its calls
#: fail ``Unavailable``), so a dead connection goes within 30 s. Measured with grpcio
#: 1.85 through a relay that stops relaying:
#:
#: - the ping's deadline is ``grpc.http2.ping_timeout_ms`` (60 s by default), not
#:   ``grpc.keepalive_timeout_ms``, which only sets the sockets' TCP_USER_TIMEOUT (data
#:   left unacknowledged that long closes the connection: a real network's case);
#: - on a stream that carries no data (a quiet link), grpc sends two pings, then one a
#:   minute at most, unless ``grpc.http2.max_pings_without_data`` is 0.
#:
#: Nodes accept pings every 5 s at most (``server_options``). This is the backstop: a
#: link with calls in flight finds a silent peer within about a second
#: (``wiremesh.core.ejection``).
KEEPALIVE = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def prepare() -> bool:
    """Set :data:`ENV` unless it is set; whether grpc in this process runs with
    :data:`EXPERIMENTS` (as it does when a wiremesh process that started this one set them;
    not when the variable says otherwise, nor when grpc was imported before)."""
    os.environ.setdefault(ENV, EXPERIMENTS)
    return os.environ[ENV] == EXPERIMENTS and "grpc" not in sys.modules


#: whether grpc in this process runs with wiremesh's settings
applied = prepare()
