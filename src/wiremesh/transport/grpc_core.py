"""Settings of grpc core that wiremesh makes, and when grpc reads them.

**Socket I/O.** Since its EventEngine, grpc core hands every socket read and write of a
channel or a server to the EventEngine's own thread pool (the ``event_engine_client`` and
``event_engine_listener`` experiments, on by default). Each message then crosses threads
twice more than when the polling thread that grpc.aio already runs does the I/O itself,
as grpc did before; for a mesh's small messages those hand-offs are a large share of
what a message costs, in latency and in CPU. :func:`prefer_loop_io` turns both
experiments off, through the environment variable ``GRPC_EXPERIMENTS``.

**When grpc reads it.** Once, as ``import grpc`` loads grpc's core: set later, even
before the first channel or server, it changes nothing in that process (measured with
grpcio 1.85: ``tests/transport/test_grpc_core.py`` checks which threads write to the
sockets). Every wiremesh module but this one imports grpc, so any ``main()`` of
wiremesh's runs after grpc has read it. Hence:

- importing wiremesh sets nothing (``import wiremesh`` imports its modules only as their
  names are used, so this module can be imported before grpc);
- the variable is inherited: the nodes and the gateway that ``wiremesh run`` starts get
  it from the supervisor, which sets it before it starts them;
- wiremesh's process entry points (``wiremesh run`` and ``wiremesh gateway``, node and
  gateway processes) call ``prefer_loop_io(restart=True)``: a process whose grpc was
  loaded without the variable runs its command again in place (``os.execv``: the same
  pid, arguments and descriptors), with it set;
- ``wiremesh.connect()`` and :class:`wiremesh.testing.TestMesh` call
  ``prefer_loop_io()``: the processes the program starts next get the variable, and a
  log line (``wiremesh.transport``, INFO, once) says when the program itself came too
  late;
- a program of one's own that wants the setting calls :func:`prefer_loop_io` before it
  imports grpc or any other wiremesh module.

A value found in the environment is kept as it is: set the variable yourself to choose
(an empty value keeps grpc's defaults).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

__all__ = [
    "ENV",
    "EXPERIMENTS",
    "KEEPALIVE",
    "OWN_SUBCHANNELS",
    "QUICK_RECONNECT",
    "prefer_loop_io",
]

log = logging.getLogger("wiremesh.transport")

ENV = "GRPC_EXPERIMENTS"
#: socket I/O on grpc's polling thread, not on the EventEngine's thread pool
EXPERIMENTS = "-event_engine_client,-event_engine_listener"

#: The channel option every channel of wiremesh's sets: connections of its own. grpc
#: otherwise shares one connection ("subchannel") per address among the channels of a
#: process, and a new channel to a node that restarted on the same address inherits the
#: old connection's reconnect backoff, failing at once with UNAVAILABLE instead of
#: connecting (seen with socket I/O on the polling thread).
OWN_SUBCHANNELS = ("grpc.use_local_subchannel_pool", 1)

#: The channel options of a client of a server the mesh restarts (the embedded registry,
#: its channel engine): no grpc retries of its own, and a server that restarts is found
#: again within about a second, not after grpc's default reconnect backoff (which grows
#: to two minutes).
QUICK_RECONNECT: tuple[tuple[str, int], ...] = (
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    OWN_SUBCHANNELS,
)

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


#: whether this module set the variable after grpc had read it: then grpc in this process
#: runs without it, whatever the environment says now
_too_late = False
#: whether that was logged already
_told = False


def prefer_loop_io(*, restart: bool = False) -> bool:
    """Set :data:`ENV` to :data:`EXPERIMENTS` unless it is set already, and say whether
    grpc in this process runs with them: it does when grpc is imported after this call,
    or when the variable was in the environment as grpc loaded (inherited from the
    process that started this one; a value found set is trusted to be what grpc read).

    Called after grpc loaded without the variable, it sets the variable for the
    processes this one starts from then on and returns False; with ``restart``, it runs
    this process's command again in place (:func:`os.execv`, POSIX only), with the
    variable set, and does not return (unless the platform cannot: then as without).
    Only a process entry point, before it has done anything, may ask for that. A value
    of the variable other than :data:`EXPERIMENTS` is kept, and False returned."""
    global _too_late, _told
    if ENV not in os.environ:
        os.environ[ENV] = EXPERIMENTS
        _too_late = "grpc" in sys.modules
    if not _too_late:
        return os.environ[ENV] == EXPERIMENTS
    if restart:
        _run_again()
    if not _told:
        _told = True
        log.info(
            "grpc was loaded before %s was set: this process keeps grpc's default socket "
            "I/O (the processes it starts get the variable); call "
            "wiremesh.transport.grpc_core.prefer_loop_io() before importing grpc to choose",
            ENV,
        )
    return False


def _run_again() -> None:
    """Replace this process by a new run of its command line, with the environment as it
    is now; nothing when the platform cannot (then the caller goes on)."""
    if os.name != "posix" or not sys.executable or not sys.orig_argv:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
