"""What an idle or half-speaking client costs a node, and what a failure costs the log.

- Idle connections to a node's ``/metrics`` hold no thread and are closed after
  :data:`~wiremesh.observability.endpoint.METRICS_TIMEOUT`; ``/metrics`` answers meanwhile.
- A failing durable handler logs its traceback at the first failure and at the dead
  letter, one line per retry between; a crashing ``on_start`` logs its traceback at the
  first start of its slot, one line per restart after it.

Everything runs in real node processes under ``wiremesh run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.meshes import RunningMesh, eventually, mesh_client, serving_nodes, write_mesh
from wiremesh.core.model import NodeInfo
from wiremesh.observability import endpoint
from wiremesh.observability.endpoint import METRICS_CONNECTIONS, METRICS_TIMEOUT
from wiremesh.observability.metrics import METRICS_KEY

# ------------------------------------------------------------------ /metrics of a node


#: threads the gRPC core may start or end by itself in the meantime (its pools)
GRPC_SLACK = 2


def threads(pid: int) -> int:
    """The number of threads of process ``pid`` now."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1))


def scrape(address: str, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def closed_at(sock: socket.socket, deadline: float) -> float:
    """When the server closed ``sock`` (it reads EOF or a reset), waiting until
    ``deadline`` (monotonic) at most."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        raise AssertionError("the connection was still open at the deadline") from None
    return time.monotonic()


@pytest.fixture(scope="module")
def echo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeInfo]:
    """One node of ``svc_echo:Echo`` under ``wiremesh run``, serving /metrics."""
    folder = tmp_path_factory.mktemp("metrics-mesh")
    write_mesh(folder, {"echo": "svc_echo:Echo"})

    async def serving() -> NodeInfo:
        client = await mesh_client(folder, timeout=30)
        try:
            (node,) = await serving_nodes(client, "echo", 1, timeout=30)
            return node
        finally:
            await client.close()

    with RunningMesh(folder):
        yield asyncio.run(serving())


def test_idle_connections_to_metrics_hold_no_thread_and_are_closed_after_the_timeout(
    echo_node: NodeInfo,
) -> None:
    address = echo_node.metadata[METRICS_KEY]
    host, _, port = address.rpartition(":")
    assert scrape(address)[0] == 200  # the endpoint's rendering thread exists from now on
    before = threads(echo_node.pid)
    idle: list[tuple[socket.socket, float]] = []
    try:
        for _ in range(200):
            idle.append((socket.create_connection((host, int(port)), timeout=5), time.monotonic()))
        time.sleep(0.5)
        assert threads(echo_node.pid) <= before + GRPC_SLACK  # not 200 more
        # meanwhile /metrics answers (idle connections never lock a scraper out)
        status, text = scrape(address)
        assert status == 200
        assert "wiremesh_registry_reachable 1.0" in text
        assert threads(echo_node.pid) <= before + GRPC_SLACK
        # every idle connection is closed by the timeout; past the connection bound the
        # oldest went first, the newest stayed until the timeout
        deadline = idle[-1][1] + METRICS_TIMEOUT + 3.0
        lived = [closed_at(sock, deadline) - opened for sock, opened in idle]
        newest = lived[-(METRICS_CONNECTIONS - 1) :]
        assert min(newest) >= METRICS_TIMEOUT - 0.5, newest
        assert max(lived) <= METRICS_TIMEOUT + 3.0
    finally:
        for sock, _ in idle:
            sock.close()
    assert scrape(address)[0] == 200


def test_a_half_sent_request_to_metrics_is_closed_after_the_timeout(echo_node: NodeInfo) -> None:
    host, _, port = echo_node.metadata[METRICS_KEY].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: node\r\n")  # and never the blank line
        sock.settimeout(METRICS_TIMEOUT + 3.0)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        waited = time.monotonic() - opened
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert METRICS_TIMEOUT - 0.5 <= waited <= METRICS_TIMEOUT + 3.0


def test_metrics_answers_get_and_head_of_metrics_only(echo_node: NodeInfo) -> None:
    address = echo_node.metadata[METRICS_KEY]
    assert scrape(address, "/")[0] == 404
    assert scrape(address, "/metrics/x")[0] == 404
    request = urllib.request.Request(f"http://{address}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405
    assert refused.value.headers["Allow"] == "GET, HEAD"
    head = urllib.request.Request(f"http://{address}/metrics", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as answer:
        assert answer.status == 200
        assert int(answer.headers["Content-Length"]) > 0
        assert answer.read() == b""


def test_the_request_reader_examples_hold() -> None:
    results = doctest.testmod(endpoint)
    assert results.attempted > 0
    assert results.failed == 0


# ------------------------------------------------------------------ failures in the log

LEDGER = """\
from wiremesh import Context, Service, command


def charge_card(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


class Ledger(Service):
    name = "ledger"

    @command
    async def charge(self, ctx: Context, order: int) -> None:
        charge_card(order)
"""

BOOKS = """\
from wiremesh import Context, Service, rpc


def open_ledger(url: str) -> None:
    raise ConnectionRefusedError(f"cannot reach {url}")


class Books(Service):
    name = "books"

    async def on_start(self) -> None:
        open_ledger("db.internal:5432")

    @rpc
    async def total(self, ctx: Context) -> int:
        return 0
"""

TRACEBACK = "Traceback (most recent call last):"


def node_lines(mesh: RunningMesh, node_id: str) -> list[str]:
    """What the node process ``node_id`` wrote, as the supervisor relayed it."""
    prefix = f"{node_id} | "
    return [line.removeprefix(prefix) for line in mesh.lines if line.startswith(prefix)]


def with_module(folder: Path, name: str, source: str) -> dict[str, str]:
    """Write the module ``name`` into ``folder``: the environment that imports it."""
    (folder / f"{name}.py").write_text(source)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


async def test_a_failing_handler_logs_its_traceback_at_the_first_failure_and_the_dead_letter(
    tmp_path: Path,
) -> None:
    env = with_module(tmp_path, "svc_ledger", LEDGER)
    write_mesh(
        tmp_path,
        {"ledger": "svc_ledger:Ledger"},
        extra="[broker]\nattempts = 5\ninitial_backoff = 0.05\nmax_backoff = 0.1\n",
    )
    with RunningMesh(tmp_path, env=env) as mesh:
        client = await mesh_client(tmp_path, timeout=30)
        try:
            (node,) = await serving_nodes(client, "ledger", 1, timeout=30)
            await client.send("ledger.charge", 7)
        finally:
            await client.close()
        await mesh.line(rf"^{node.node_id} \| .* is a dead letter", timeout=30)

        def told_in_full() -> bool:  # the dead letter's line, and the traceback under it
            lines = node_lines(mesh, node.node_id)
            dead = next(i for i, line in enumerate(lines) if "is a dead letter" in line)
            return "ValueError: card declined for order 7" in lines[dead:]

        with contextlib.suppress(AssertionError):  # (the assertions below say what is not)
            await eventually(told_in_full, 10)
        lines = node_lines(mesh, node.node_id)
    retries = [i for i, line in enumerate(lines) if "failed (attempt" in line]
    (dead,) = [i for i, line in enumerate(lines) if "is a dead letter" in line]
    tracebacks = [i for i, line in enumerate(lines) if line == TRACEBACK]
    shown = "\n".join(lines)
    assert len(retries) == 4, shown
    # the traceback twice, right under the first failure and under the dead letter: the
    # retries between are one line each, with the error's type and message
    assert tracebacks == [retries[0] + 1, dead + 1], shown
    assert lines[dead + 1 :].count("ValueError: card declined for order 7") == 1, shown
    assert [lines[i].split("(attempt ")[1][:6] for i in retries] == [
        "1 of 5",
        "2 of 5",
        "3 of 5",
        "4 of 5",
    ], shown
    for i in retries:
        assert lines[i].endswith(": ValueError: card declined for order 7"), lines[i]
    assert "failed 5 time(s); last: ValueError: card declined for order 7" in lines[dead]


async def test_a_crashing_on_start_logs_its_traceback_once_over_three_restarts(
    tmp_path: Path,
) -> None:
    env = with_module(tmp_path, "svc_books", BOOKS)
    write_mesh(tmp_path, {"books": "svc_books:Books"})
    with RunningMesh(tmp_path, env=env) as mesh:
        # the first start, then three restarts: four exits
        await mesh.line(r"^books-\w+: exited with code 1; restart in", timeout=75, count=4)
        starts = [m.group(1) for m in mesh.matches(r"^(books-\w+): started \(pid \d+\)$")][:4]
        by_node = {node_id: node_lines(mesh, node_id) for node_id in starts}
        everything = mesh.output
    assert everything.count(TRACEBACK) == 1, everything
    first, *restarted = starts
    reason = "ConnectionRefusedError: cannot reach db.internal:5432"
    lines = by_node[first]
    said = lines.index(f"ERROR wiremesh.node: node {first} could not start: {reason}")
    assert lines[said + 1] == TRACEBACK, everything
    assert any("open_ledger" in line for line in lines[said:]), everything
    assert lines[said:].count(reason) == 1, everything
    for restart, node_id in enumerate(restarted, start=1):
        assert [line for line in by_node[node_id] if "could not start" in line] == [
            f"ERROR wiremesh.node: node {node_id} could not start "
            f"(restart {restart}; a traceback only at the first start): {reason}"
        ], everything
        assert not any("open_ledger" in line for line in by_node[node_id]), everything
