"""Helpers shared by the benchmarks under ``benchmarks/``.

- statistics: :func:`median`, :func:`percentile`, :func:`ratio`;
- output: :func:`print_table` (rich when it is installed and stdout is a terminal, plain
  text otherwise) and :func:`print_result`, the machine-readable last line
  ``RESULT {json}`` (:func:`run_context`: its figures about the run itself);
- server processes: :class:`ServerProcess` spawns ``sys.executable`` with arguments, waits
  for its ``READY {json}`` line and always stops it (``stop()``, context manager, and an
  ``atexit`` hook); :func:`announce_ready` and :func:`serve_until_stopped` are the server
  side of that handshake;
- a process's resources: :func:`raise_nofile` (its descriptor limit), :func:`cpu_ticks`
  (the CPU another process has used, from ``/proc``);
- grpc's settings: importing this module calls
  ``wiremesh.transport.grpc_core.prefer_loop_io(restart=True)``, so that every process of
  a benchmark, wiremesh's and the raw peers' alike, runs grpc with its socket I/O on the
  polling thread, as wiremesh's own processes do. The server processes a benchmark
  starts inherit ``GRPC_EXPERIMENTS``; a benchmark that imported grpc before this module
  runs again in place with it set (grpc reads it only as it loads);
- event loops: :func:`run_on` runs a process's main coroutine on ``"wiremesh"`` (the loop
  wiremesh's node processes choose: uvloop when it is installed, see
  ``wiremesh.runtime.loop``), ``"gateway"`` (the gateway's: asyncio's own),
  ``"uvloop"`` (a peer's fast configuration) or ``"asyncio"`` (a peer's default one).

A benchmark is not a test: nothing here asserts timings.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from wiremesh.transport.grpc_core import prefer_loop_io

# before anything imports grpc, in every benchmark process (see the docstring)
prefer_loop_io(restart=True)

__all__ = [
    "ServerProcess",
    "announce_ready",
    "cpu_ticks",
    "install_signal_exit",
    "median",
    "percentile",
    "print_result",
    "print_table",
    "raise_nofile",
    "ratio",
    "run_context",
    "run_on",
    "serve_until_stopped",
    "wiremesh_loop",
]

#: the loops :func:`run_on` knows
LOOPS = ("wiremesh", "gateway", "uvloop", "asyncio")

READY_PREFIX = "READY "
RESULT_PREFIX = "RESULT "


# ---------------------------------------------------------------------------- statistics


def median(values: Iterable[float]) -> float:
    """The median (mean of the two middle values for an even count); NaN when empty."""
    data = sorted(values)
    n = len(data)
    if n == 0:
        return math.nan
    mid = n // 2
    return data[mid] if n % 2 else (data[mid - 1] + data[mid]) / 2


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    data = values if presorted else sorted(values)
    n = len(data)
    if n == 0:
        return math.nan
    if n == 1:
        return float(data[0])
    pos = (n - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, n - 1)
    return float(data[low] + (data[high] - data[low]) * (pos - low))


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero or either is NaN."""
    if b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


# ---------------------------------------------------------------------------- output


def _use_rich() -> bool:
    if os.environ.get("NO_RICH") or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, note: str = ""
) -> None:
    """Print a human table; the first column is left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    if _use_rich():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, caption=note or None)
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in cells:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(str(columns[i])), *(len(r[i]) for r in cells)) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(values)
        )

    print(title)
    print(line([str(c) for c in columns]))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
    if note:
        print(note)
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    return str(value)


def print_result(result: dict[str, Any]) -> None:
    """Print ``RESULT {json}``: the benchmark's last line, for programs to read."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(clean, sort_keys=True), flush=True)


def run_context(loadavg_start: float, began: float) -> dict[str, Any]:
    """The RESULT's figures about the run itself: ``cpus``, ``python``, the load average
    at its start (``loadavg_start``, read as it began) and now, ``wiremesh_loop``, and the
    ``seconds`` since ``began`` (``time.monotonic()``)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": round(loadavg_start, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "wiremesh_loop": wiremesh_loop(),
        "seconds": round(time.monotonic() - began, 1),
    }


# ---------------------------------------------------------------------------- processes

_live: set[ServerProcess] = set()


def _stop_all() -> None:
    for proc in list(_live):
        proc.stop()


atexit.register(_stop_all)


def install_signal_exit() -> None:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` so that ``finally`` blocks and atexit run."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, handler)


class ServerProcess:
    """A server subprocess: ``python <args>`` that prints ``READY {json}`` when it serves.

    Its stdin is a pipe that stays open while this object lives; a server written with
    :func:`serve_until_stopped` exits when it closes, so a server never outlives its
    benchmark, even one killed with SIGKILL.
    """

    def __init__(self, args: Sequence[str], *, name: str = "server", timeout: float = 30.0):
        self.args = [sys.executable, *args]
        self.name = name
        self.timeout = timeout
        self.info: dict[str, Any] = {}
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> dict[str, Any]:
        """Spawn and wait for the ``READY`` line; returns the JSON it carried."""
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the server's errors show in the benchmark's stderr
            text=True,
            bufsize=1,
        )
        _live.add(self)
        ready: dict[str, Any] = {}
        got = threading.Event()
        stdout = self.proc.stdout
        assert stdout is not None

        def reader() -> None:
            # read the READY line, then keep draining so the server never blocks on a pipe
            for text in stdout:
                if not got.is_set() and text.startswith(READY_PREFIX):
                    ready.update(json.loads(text[len(READY_PREFIX) :]))
                    got.set()
            got.set()

        threading.Thread(target=reader, name=f"{self.name}-stdout", daemon=True).start()
        if not got.wait(self.timeout) or not ready:
            code = self.proc.poll()
            self.stop()
            why = f"exited with {code}" if code is not None else f"not ready in {self.timeout}s"
            raise RuntimeError(f"{self.name} ({' '.join(self.args)}) {why}")
        self.info = ready
        return ready

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin, then SIGTERM, then SIGKILL: it is gone when this returns."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        for action in (None, proc.terminate, proc.kill):
            if action is not None:
                with contextlib.suppress(OSError):
                    action()
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------- resources

#: ms of CPU per tick of ``/proc/<pid>/stat``
TICK = 1000.0 / os.sysconf("SC_CLK_TCK")


def raise_nofile(wanted: int) -> int:
    """Raise this process's descriptor limit to ``wanted`` (the hard one too, if allowed);
    the soft limit it has then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):  # not root: up to the hard limit only
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_ticks(pid: int) -> int:
    """The CPU time (user + system, every thread) process ``pid`` has used, in ticks
    (:data:`TICK` ms each)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


# ---------------------------------------------------------------------------- event loops


def run_on(loop: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` (a coroutine) to completion on ``loop``, one of :data:`LOOPS`."""
    from wiremesh.runtime import loop as event_loop

    if loop == "wiremesh":
        return event_loop.run(main)
    if loop == "gateway":
        return event_loop.run_gateway(main)
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    if loop == "asyncio":
        return asyncio.run(main)
    raise ValueError(f"unknown loop {loop!r}: expected one of {', '.join(LOOPS)}")


def wiremesh_loop() -> str:
    """The loop wiremesh's processes run on here: ``"uvloop"`` or ``"asyncio"``."""
    from wiremesh.runtime import loop as event_loop

    return event_loop.loop_name()


def settle_heap() -> None:
    """``wiremesh.runtime.heap.settle``: collect, freeze what is alive, collect young
    objects less often. Every server process does it once it serves, as wiremesh's node
    and gateway processes do, and each benchmark's own process once it has connected and
    warmed up, so that every process, peer or wiremesh, collects garbage alike."""
    from wiremesh.runtime.heap import settle

    settle()


# ---------------------------------------------------------------------------- the server side


def announce_ready(info: dict[str, Any]) -> None:
    """Server side: tell the parent :class:`ServerProcess` that we serve, and where."""
    print(READY_PREFIX + json.dumps(info), flush=True)


async def serve_until_stopped(
    start: Callable[[], Awaitable[dict[str, Any]]],
    stop: Callable[[], Awaitable[None]],
) -> None:
    """Server side: ``await start()`` (returns the READY info), announce it, then wait for
    stdin to close (the parent is gone or done) or SIGTERM/SIGINT, and ``await stop()``."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, done.set)

    def watch_stdin() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.read(65536):
                pass
        loop.call_soon_threadsafe(done.set)

    try:
        info = await start()
        settle_heap()  # as wiremesh's node and gateway processes do once they serve
        announce_ready(info)
        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
        await done.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stop(), 5.0)


async def serve_nodes(*services: type) -> None:
    """Server side: an embedded registry and one node of each of ``services`` in this
    process, until stopped. READY carries ``registry``, ``node`` (the first node's
    address) and ``pid``."""
    import shutil
    import tempfile
    from pathlib import Path

    from wiremesh.registry.embedded import RegistryServer
    from wiremesh.runtime.node import Node

    data_dir = Path(tempfile.mkdtemp(prefix="wiremesh-bench-"))
    registry = RegistryServer()
    nodes: list[Node] = []

    async def start() -> dict[str, Any]:
        await registry.start()
        for service in services:
            node = Node(service, registry_address=registry.address, data_dir=data_dir)
            await node.start()
            nodes.append(node)
        return {"registry": registry.address, "node": nodes[0].address, "pid": os.getpid()}

    async def stop() -> None:
        try:
            for node in nodes:
                await node.stop(0.5)
            await registry.stop(0.2)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    await serve_until_stopped(start, stop)


async def serve_gateway(
    registry: str,
    settings: dict[str, Any],
    ready: Callable[[Any], Awaitable[dict[str, Any]]],
) -> None:
    """Server side: a gateway with ``settings`` (a ``[gateway]`` table as a dict; its port
    is free) for the mesh at ``registry``, until stopped. ``await ready(gateway)`` gives
    what READY carries, once the gateway serves."""
    import shutil
    import tempfile
    from pathlib import Path

    from wiremesh.gateway.server import Gateway
    from wiremesh.gateway.settings import GatewaySettings

    data_dir = Path(tempfile.mkdtemp(prefix="wiremesh-bench-gw-"))
    validated = GatewaySettings.model_validate({"port": 0, **settings})
    gateway = Gateway(validated, registry_address=registry, root=data_dir, data_dir=data_dir)

    async def start() -> dict[str, Any]:
        await gateway.start()
        return {**await ready(gateway), "pid": os.getpid()}

    async def stop() -> None:
        try:
            await gateway.stop(0.5)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    await serve_until_stopped(start, stop)
