"""wiremesh ``call`` against raw grpc.aio, side by side in the same run.

    .venv/bin/python benchmarks/rpc.py            # the full run (about a minute)
    .venv/bin/python benchmarks/rpc.py --quick    # a short run (smoke test)

Two server processes, spawned with ``sys.executable`` and treated alike (one process
each, grpc.aio, on the loop wiremesh's processes choose: uvloop when it is installed,
else asyncio's default loop; this process too; the RESULT's ``loop`` says which): one
hosts an embedded registry and a wiremesh node of ``Echo``; the other a raw grpc.aio
server whose generic unary handler ``/echo.Echo/Echo`` returns the request bytes (no
(de)serializer). This process is the client of both: for 64 B and 4 KiB payloads it
measures the latency of sequential calls (p50, p99) and the throughput with 64 calls in
flight, for wiremesh (``client.call``) and raw grpc.aio (``channel.unary_unary``). Each
round measures every system in A-B-B-A slices, so that machine noise hits both alike;
every figure is the median over the rounds, every ratio (wiremesh / raw) the median of
the per-round ratios. For context, the 64 B latency is also measured for raw grpc.aio
with a deadline (every wiremesh call has one). The last line printed is ``RESULT
{json}``; see ``benchmarks/README.md``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# this folder goes last on the path: it holds http.py (the HTTP door's benchmark), which
# must not shadow the standard library's http for the libraries imported here
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

# wiremesh before grpc: grpc then runs with the settings wiremesh chooses (see
# wiremesh.transport.grpc_core) in this process and, through the environment it sets, in
# every server process this benchmark starts, the raw peers' included
import wiremesh  # noqa: E402, F401

# isort: split
import grpc  # noqa: E402
from _common import (  # noqa: E402
    ServerProcess,
    install_signal_exit,
    median,
    percentile,
    print_result,
    print_table,
    ratio,
    run_on,
    serve_nodes,
    serve_until_stopped,
    settle_heap,
    wiremesh_loop,
)

from wiremesh import Context, Service, rpc  # noqa: E402

RAW_SERVICE = "echo.Echo"
RAW_PATH = f"/{RAW_SERVICE}/Echo"
TARGET = "echo.echo"
SIZES = {"64B": 64, "4KiB": 4096}
INFLIGHT = 64

Call = Callable[[bytes], Awaitable[Any]]


class Echo(Service):
    name = "echo"

    @rpc(idempotent=True)
    async def echo(self, ctx: Context, data: bytes) -> bytes:
        return data


# ---------------------------------------------------------------------------- servers


def start_tracing() -> None:
    """Trace every call of this process, as a deployment would: spans batched by the
    OpenTelemetry SDK and handed to an exporter (one that discards them: the export itself
    is the collector's cost, not the process's)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from wiremesh.observability import tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracing.use_provider(provider)


def stop_tracing() -> None:
    from wiremesh.observability import tracing

    tracing.use_provider(None)


async def serve_wiremesh(traced: bool = False) -> None:
    if traced:
        start_tracing()
    await serve_nodes(Echo)


async def serve_raw() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                RAW_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )

    async def start() -> dict[str, Any]:
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return {"address": f"127.0.0.1:{port}", "pid": os.getpid()}

    async def stop() -> None:
        await server.stop(0.2)

    await serve_until_stopped(start, stop)


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    rounds: int
    calls: int  # sequential calls measured per system, size and round (in two slices)
    warmup_calls: int  # before each latency slice
    duration: float  # seconds counted per system, size and round (in two slices)
    warmup_seconds: float  # before each throughput slice, not counted
    budget: float  # seconds of measuring: no round starts that would likely end past it


FULL = Settings(rounds=8, calls=600, warmup_calls=30, duration=0.8, warmup_seconds=0.1, budget=75.0)
QUICK = Settings(
    rounds=2, calls=100, warmup_calls=20, duration=0.2, warmup_seconds=0.05, budget=5.0
)

#: the systems compared, and the reference of every ratio
WIREMESH, RAW = "wiremesh", "raw"
#: latency only, 64 B only: raw grpc.aio with a deadline, as every wiremesh call has one
RAW_DEADLINE = "raw_deadline"
#: 64 B only: wiremesh with tracing on in both processes (its own server process)
TRACED = "traced"
RAW_DEADLINE_TIMEOUT = 10.0  # wiremesh's default timeout


@dataclass
class Figures:
    """Per-round figures of one system at one payload size."""

    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def symmetric(names: list[str], flip: bool) -> list[str]:
    """``A B B A`` (or ``B A A B``): each system twice, so that a machine getting steadily
    busier or quieter during a round favours none of them."""
    order = list(reversed(names)) if flip else list(names)
    return order + order[::-1]


async def latency_slice(call: Call, payload: bytes, calls: int, warmup: int) -> list[int]:
    """The duration in ns of each of ``calls`` sequential calls, after ``warmup`` calls."""
    for _ in range(warmup):
        await call(payload)
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        start = clock()
        await call(payload)
        samples[i] = clock() - start
    return samples


async def throughput_slice(
    call: Call, payload: bytes, duration: float, warmup: float
) -> tuple[int, float]:
    """Calls completed, and seconds counted, with ``INFLIGHT`` calls in flight in the
    steady state: workers start, run ``warmup`` seconds uncounted, then ``duration``."""
    done = 0
    running = True

    async def worker() -> None:
        nonlocal done
        while running:
            await call(payload)
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(INFLIGHT)]
    try:
        await asyncio.sleep(warmup)
        first, start = done, time.perf_counter()
        await asyncio.sleep(duration)
        last, end = done, time.perf_counter()
    finally:
        running = False
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return last - first, end - start


@contextlib.contextmanager
def traced_if(name: str) -> Iterator[None]:
    """Tracing on in this process while ``name`` is the traced system's slice."""
    if name != TRACED:
        yield
        return
    start_tracing()
    try:
        yield
    finally:
        stop_tracing()  # flushes: outside the slice's clock


async def one_round(
    calls: dict[str, Call],
    payloads: dict[str, bytes],
    settings: Settings,
    round_no: int,
    figures: dict[tuple[str, str], Figures],
) -> None:
    for size_no, (label, payload) in enumerate(payloads.items()):
        flip = (round_no + size_no) % 2 == 1
        names = [WIREMESH, RAW] + ([RAW_DEADLINE, TRACED] if label == "64B" else [])
        samples: dict[str, list[int]] = {name: [] for name in names}
        for name in symmetric(names, flip):
            gc.collect()
            with traced_if(name):
                samples[name] += await latency_slice(
                    calls[name], payload, settings.calls // 2, settings.warmup_calls
                )
        for name, values in samples.items():
            values.sort()
            figures[name, label].p50_us.append(percentile(values, 50, presorted=True) / 1000)
            figures[name, label].p99_us.append(percentile(values, 99, presorted=True) / 1000)
        busy = [WIREMESH, RAW] + ([TRACED] if label == "64B" else [])
        counted: dict[str, tuple[int, float]] = {name: (0, 0.0) for name in busy}
        for name in symmetric(busy, flip):
            gc.collect()
            with traced_if(name):
                n, seconds = await throughput_slice(
                    calls[name], payload, settings.duration / 2, settings.warmup_seconds
                )
            total_n, total_seconds = counted[name]
            counted[name] = (total_n + n, total_seconds + seconds)
        for name, (n, seconds) in counted.items():
            figures[name, label].rps.append(n / seconds)


async def measure(
    wiremesh_info: dict[str, Any],
    raw_info: dict[str, Any],
    traced_info: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    from wiremesh.client import MeshClient

    client = MeshClient(wiremesh_info["registry"])
    await client.start()
    traced_client = MeshClient(traced_info["registry"])
    await traced_client.start()
    channel = grpc.aio.insecure_channel(raw_info["address"])
    try:
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            RAW_PATH, None, None
        )
        calls: dict[str, Call] = {
            WIREMESH: functools.partial(client.call, TARGET),
            RAW: stub,
            RAW_DEADLINE: functools.partial(stub, timeout=RAW_DEADLINE_TIMEOUT),
            TRACED: functools.partial(traced_client.call, TARGET),
        }
        payloads = {label: os.urandom(size) for label, size in SIZES.items()}
        for name, call in calls.items():  # each answers, and answers right; then warm up
            for payload in payloads.values():
                echoed = await call(payload)
                if echoed != payload:
                    raise RuntimeError(f"{name} echoed {len(echoed)} bytes, not the payload")
                for _ in range(100):
                    await call(payload)

        settle_heap()
        figures = {(name, label): Figures() for name in calls for label in SIZES}
        began = time.perf_counter()
        rounds = 0
        for round_no in range(settings.rounds):
            elapsed = time.perf_counter() - began
            if rounds >= 2 and elapsed * (rounds + 1) / rounds > settings.budget:
                print(
                    f"stopping after {rounds} rounds: the machine is slow or busy "
                    f"(budget {settings.budget:g}s)",
                    file=sys.stderr,
                    flush=True,
                )
                break
            await one_round(calls, payloads, settings, round_no, figures)
            rounds += 1
            wm, raw = figures[WIREMESH, "64B"], figures[RAW, "64B"]
            print(
                f"round {round_no + 1}/{settings.rounds}: 64B p50 "
                f"{wm.p50_us[-1]:.0f} vs {raw.p50_us[-1]:.0f} µs, "
                f"{wm.rps[-1]:,.0f} vs {raw.rps[-1]:,.0f} calls/s "
                f"({time.perf_counter() - began:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await client.close()
        await traced_client.close()
        await channel.close(None)
    return summarize(figures, settings, rounds)


def summarize(
    figures: dict[tuple[str, str], Figures], settings: Settings, rounds: int
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "rounds": rounds,
        "calls": settings.calls,
        "inflight": INFLIGHT,
        "duration_s": settings.duration,
    }
    rows: list[list[Any]] = []
    for label in SIZES:
        suffix = "" if label == "64B" else "_4k"
        wm, raw = figures[WIREMESH, label], figures[RAW, label]
        for metric, unit, key in (
            ("p50", "µs", "p50_us"),
            ("p99", "µs", "p99_us"),
            ("throughput", "calls/s", "rps"),
        ):
            ours: list[float] = getattr(wm, key)
            theirs: list[float] = getattr(raw, key)
            paired = median(ratio(a, b) for a, b in zip(ours, theirs, strict=True))
            result[f"wiremesh_{key}{suffix}"] = round(median(ours), 1)
            result[f"raw_{key}{suffix}"] = round(median(theirs), 1)
            ratio_key = "throughput_ratio" if key == "rps" else f"{metric}_ratio"
            result[f"{ratio_key}{suffix}"] = round(paired, 3)
            rows.append([f"{label} {metric} ({unit})", median(ours), median(theirs), paired])
    # context, not a target: how much of the latency gap is the deadline every call carries
    timed = figures[RAW_DEADLINE, "64B"]
    wm = figures[WIREMESH, "64B"]
    for metric, key in (("p50", "p50_us"), ("p99", "p99_us")):
        theirs = getattr(timed, key)
        paired = median(ratio(a, b) for a, b in zip(getattr(wm, key), theirs, strict=True))
        result[f"raw_deadline_{key}"] = round(median(theirs), 1)
        result[f"{metric}_ratio_vs_raw_deadline"] = round(paired, 3)
        rows.append(
            [
                f"64B {metric} (µs) [raw with a {RAW_DEADLINE_TIMEOUT:g}s deadline]",
                median(getattr(wm, key)),
                median(theirs),
                paired,
            ]
        )
    # tracing on: the share of the throughput it costs, and its latency for context
    traced, plain = figures[TRACED, "64B"], figures[WIREMESH, "64B"]
    kept = median(ratio(a, b) for a, b in zip(traced.rps, plain.rps, strict=True))
    result["traced_rps"] = round(median(traced.rps), 1)
    result["traced_p50_us"] = round(median(traced.p50_us), 1)
    result["tracing_on_overhead"] = round(1 - kept, 3)
    rows.append(
        ["64B throughput (calls/s) [tracing on]", median(traced.rps), median(plain.rps), kept]
    )
    rows.append(
        [
            "64B p50 (µs) [tracing on]",
            median(traced.p50_us),
            median(plain.p50_us),
            median(ratio(a, b) for a, b in zip(traced.p50_us, plain.p50_us, strict=True)),
        ]
    )
    print_table(
        "wiremesh call vs raw grpc.aio (loopback, one server process each)",
        ["payload / figure", "wiremesh", "raw grpc.aio", "ratio"],
        rows,
        note=(
            f"medians over {rounds} rounds, each system measured in A-B-B-A slices; "
            f"p50/p99 of {settings.calls} sequential calls per round; throughput with "
            f"{INFLIGHT} calls in flight, {settings.duration:g}s per round; "
            "ratio = median of the per-round wiremesh/raw ratios"
        ),
    )
    return result


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 20 s)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--serve", choices=("wiremesh", "traced", "raw"), help=argparse.SUPPRESS
    )  # internal: run as a server process
    args = parser.parse_args(argv)

    if args.serve == "wiremesh":
        run_on("wiremesh", serve_wiremesh())
        return 0
    if args.serve == "traced":
        run_on("wiremesh", serve_wiremesh(traced=True))
        return 0
    if args.serve == "raw":
        run_on("wiremesh", serve_raw())
        return 0

    install_signal_exit()
    settings = QUICK if args.quick else FULL
    if args.rounds:
        budget = settings.budget * args.rounds / settings.rounds
        settings = dataclasses.replace(settings, rounds=args.rounds, budget=budget)
    script = str(Path(__file__).resolve())
    wiremesh_server = ServerProcess([script, "--serve", "wiremesh"], name="wiremesh server")
    raw_server = ServerProcess([script, "--serve", "raw"], name="raw server")
    traced_server = ServerProcess([script, "--serve", "traced"], name="traced server")
    try:
        wiremesh_info = wiremesh_server.start()
        raw_info = raw_server.start()
        traced_info = traced_server.start()
        result = run_on("wiremesh", measure(wiremesh_info, raw_info, traced_info, settings))
    finally:
        wiremesh_server.stop()
        raw_server.stop()
        traced_server.stop()
    result["quick"] = bool(args.quick)
    result["loop"] = wiremesh_loop()
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
