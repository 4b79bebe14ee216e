"""The benchmarks run: each ``--quick`` run exits 0, prints ``RESULT {json}`` last with the
figures programs read, and leaves no server process behind. The runs go two at a time
(:class:`QuickRuns`).

A benchmark that cannot run on this machine (``multihost.py`` needs root, ``ip``, ``nft``
and ``redis-server``) says why in one line and exits 77: the test skips with that reason.

A benchmark is not a test: nothing here looks at how good a figure is, only that it was
measured.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

#: per benchmark: the keys of its RESULT line that must hold a measured, positive figure
REQUIRED = {
    "rpc.py": [
        "p50_ratio",
        "throughput_ratio",
        "wiremesh_p50_us",
        "raw_p50_us",
        "wiremesh_rps",
        "raw_rps",
    ],
    "links.py": [
        "call_p50_ratio",
        "call_throughput_ratio",
        "publish_ratio",
        "multicast_p50_vs_unicast",
        "multicast_vs_gather_unary",
        "multicast_vs_raw_fanout",
        "gather_unary_p50_us",
        "links_call_p50_us",
        "raw_call_p50_us",
        "links_call_rps",
        "raw_call_rps",
        "links_publish_mps",
        "raw_publish_mps",
        "multicast_p50_us",
        "unicast_p50_us",
        "stream_ratio",
        "bulk_transfer_ratio",
        "stream_items_per_s",
        "raw_stream_items_per_s",
        "bulk_mb_per_s",
        "raw_bulk_mb_per_s",
    ],
    "messaging.py": [
        "amqp_vs_aiopika",
        "amqp_vs_faststream",
        "amqp_msgs_per_s",
        "aiopika_msgs_per_s",
        "faststream_msgs_per_s",
        "embedded_msgs_per_s",
        "amqp_p50_us",
        "embedded_p50_us",
    ],
    "http.py": [
        "p50_ratio",
        "throughput_ratio",
        "p50_ratio_default_peer",
        "throughput_ratio_default_peer",
        "gateway_p50_us",
        "bare_p50_us",
        "bare_default_p50_us",
        "gateway_rps",
        "bare_rps",
        "bare_default_rps",
    ],
    "gateway.py": [
        "p50_ratio",
        "throughput_ratio",
        "p50_ratio_default_peer",
        "throughput_ratio_default_peer",
        "wiremesh_p50_us",
        "raw_p50_us",
        "raw_default_p50_us",
        "wiremesh_mps",
        "raw_mps",
        "raw_default_mps",
    ],
    "connections.py": ["kb_per_connection", "opened", "rss_after_kb", "raw_kb_per_connection"],
    "push.py": ["push_p50_ratio_100", "push_p50_ratio_1000", "per_session_p50_ratio_1000"],
    "channels.py": [
        "fanout_throughput_ratio",
        "delivery_p50_ms",
        "delivery_p99_ms",
        "loaded_delivery_p99_ms",
        "wiremesh_deliveries_per_s",
        "raw_deliveries_per_s",
        "raw_delivery_p99_ms",
        "recovery_p50_ms",
    ],
    "multihost.py": [
        "join_p50_ms",
        "join_p99_ms",
        "drain_p50_ms",
        "drain_p99_ms",
        "crash_detect_s",
        "ttl_s",
        "cross_host_call_p50_ratio",
        "cross_host_call_throughput_ratio",
        "redis_cmds_per_lease_beat",
        "redis_cmds_per_s_50",
        "redis_cpu_50",
        "first_view_500_ms",
    ],
}
#: per benchmark: keys that must hold a measured figure that may be zero
COUNTS = {
    "connections.py": ["lost", "raw_lost"],
    "push.py": ["lost", "raw_lost", "failed"],
    "channels.py": ["lost", "raw_lost", "failed"],
}
#: per benchmark, when not 2: the rounds a quick run makes at least
ROUNDS = {"connections.py": 1}
#: per benchmark, when not "ratio": a word of the human table printed before the result
TABLE_WORD = {"connections.py": "per connection"}

#: benchmarks that need a server running on this machine: (host, port, what)
NEEDS = {"messaging.py": ("127.0.0.1", 5672, "RabbitMQ")}
#: the exit status of a benchmark that cannot run on this machine (its last stderr line says why)
CANNOT_RUN = 77


def server_missing(script: str) -> str | None:
    """Why ``script`` cannot run here, or ``None``."""
    if script not in NEEDS:
        return None
    host, port, what = NEEDS[script]
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return f"{what} is not running on {host}:{port}"
    return None


def processes_marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


#: the longest quick runs first, so that the two lanes end about together
LONGEST_FIRST = ("multihost.py", "connections.py", "links.py", "rpc.py", "channels.py")
#: quick runs at once (the machine of the suite has two cores)
LANES = 2


class QuickRuns:
    """The ``--quick`` runs the session selected, :data:`LANES` at a time from the start
    of the first test: each test then waits for its own run (the runs share no port,
    file or process, and nothing here looks at their figures)."""

    def __init__(self, scripts: list[str]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="bench-smoke")
        order = sorted(scripts, key=lambda s: LONGEST_FIRST.index(s) if s in LONGEST_FIRST else 99)
        self._runs = {script: self._pool.submit(self._run, script) for script in order}

    @staticmethod
    def _run(script: str) -> tuple[subprocess.CompletedProcess[str], str]:
        marker = f"WIREMESH_BENCH_SMOKE={uuid.uuid4().hex}"
        name, value = marker.split("=")
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), "--quick"],
            capture_output=True,
            text=True,
            timeout=140,
            check=False,
            env={**os.environ, name: value, "NO_RICH": "1"},
        )
        return done, marker

    def result(self, script: str) -> tuple[subprocess.CompletedProcess[str], str]:
        return self._runs[script].result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="module")
def quick_runs(request: pytest.FixtureRequest) -> Iterator[QuickRuns]:
    selected = [
        item.callspec.params["script"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_a_quick_run_prints_its_result_last"
        and server_missing(item.callspec.params["script"]) is None
    ]
    runs = QuickRuns(selected)
    yield runs
    runs.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_a_quick_run_prints_its_result_last(script: str, quick_runs: QuickRuns) -> None:
    missing = server_missing(script)
    if missing:
        pytest.skip(missing)
    done, marker = quick_runs.result(script)
    if done.returncode == CANNOT_RUN:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.rstrip().splitlines()
    assert lines, done.stderr[-3000:]
    assert lines[-1].startswith("RESULT "), lines[-5:]
    result = json.loads(lines[-1][len("RESULT ") :])

    assert result["quick"] is True
    assert result["rounds"] >= ROUNDS.get(script, 2)
    for key in REQUIRED[script]:
        value = result.get(key)
        assert isinstance(value, int | float), f"{key} = {value!r}"
        assert math.isfinite(value) and value > 0, f"{key} = {value!r}"
    for key in COUNTS.get(script, []):
        value = result.get(key)
        assert isinstance(value, int) and value >= 0, f"{key} = {value!r}"
    # a human table came before it
    assert any(TABLE_WORD.get(script, "ratio") in line for line in lines[:-1])

    if Path("/proc/self/environ").exists():
        assert processes_marked(marker) == [], "server processes outlived the benchmark"
