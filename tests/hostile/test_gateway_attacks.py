"""The gateway under hostile input: each attack gets its documented answer, bounded in
what it costs, and nobody else is disturbed.

- Keep-alive slowloris: every request's head has the handshake timeout, not only a
  connection's first one; a gateway short of file descriptors refuses connections at once
  (one log line per interval), in a gateway process with a lowered descriptor limit.
- A browser that does not read is closed with 4008 past ``max_queued_bytes``, however
  few messages that is.
- One principal cannot take every place of the HTTP door: bodies that never come hold
  none of the gateway's places, and a principal holds at most
  ``concurrency_per_principal``.
- Deeply nested JSON on the control channel closes with 1003 and one log line (no reset,
  no traceback); a deeply nested HTTP body is a 400 problem; a failure of the gateway's
  own while it handles a message closes that session with 1011, never resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gateway.http_door import Shop, bearer, gateway_mesh
from tests.gateway.ws_mesh import ROOMY, Chat, Notes, closed_with, connect
from wiremesh.core import control
from wiremesh.core.socket_session import SessionRules
from wiremesh.gateway import listener
from wiremesh.gateway.listener import LOG_INTERVAL
from wiremesh.gateway.settings import HttpSettings, LimitSettings
from wiremesh.runtime.config import MeshConfig
from wiremesh.runtime.gateway_process import GatewayLaunch
from wiremesh.testing import TestMesh, gateway_settings

SECRET = "hostile-gateway-test-secret-of-32-bytes"
TRACEBACK = "Traceback (most recent call last)"

# ------------------------------------------------------------------ a gateway process

#: a gateway process whose soft descriptor limit is argv[1]; SIGUSR1 makes it take every
#: descriptor left (as a process full of connections would have none), SIGUSR2 gives them
#: back
GATEWAY_PROCESS = r"""
import os, resource, signal, sys

resource.setrlimit(
    resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
)
taken = []

def take(*_):
    while True:
        try:
            taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    print(f"took {len(taken)} descriptors", file=sys.stderr, flush=True)

def give_back(*_):
    while taken:
        os.close(taken.pop())
    print("gave them back", file=sys.stderr, flush=True)

signal.signal(signal.SIGUSR1, take)
signal.signal(signal.SIGUSR2, give_back)
from wiremesh.runtime.gateway_process import main
sys.exit(main(["-"]))
"""


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no {text!r} in the gateway's log:\n{self.log()}")
            await asyncio.sleep(0.05)


def start_gateway(
    launch: GatewayLaunch, log_path: Path, descriptors: int
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", GATEWAY_PROCESS, str(descriptors)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    assert process.stdin is not None
    process.stdin.write(launch.to_json().encode())
    process.stdin.close()
    return process


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.asynccontextmanager
async def gateway_process(
    mesh: TestMesh, folder: Path, *, descriptors: int, handshake_timeout: float = 10.0
) -> AsyncIterator[GatewayProcess]:
    """``python -m wiremesh.runtime.gateway_process`` for ``mesh``'s registry, with at most
    ``descriptors`` file descriptors."""
    config = MeshConfig.model_validate(
        {
            "gateway": {
                "port": 0,
                "auth": {"secret": SECRET},
                "limits": {"handshake_timeout": handshake_timeout},
            },
            "root": str(folder),
        }
    )
    launch = GatewayLaunch(
        config=config.model_dump_json(), registry=mesh.registry.address, gateway_id="gateway-h"
    )
    log_path = folder / "gateway.log"
    process = start_gateway(launch, log_path, descriptors)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"serving http://127\.0\.0\.1:(\d+)", log_path.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        yield GatewayProcess(process, log_path, int(found.group(1)))
    finally:
        stop_gateway(process)


async def get(port: int, timeout: float = 5.0) -> bytes:
    """The head of the answer to one ``GET /healthz`` on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        async with asyncio.timeout(timeout):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


class Refused(Exception):
    """The gateway closed the connection before answering."""


@dataclass
class Held:
    """A connection the gateway holds: its two ends here, and when it went quiet."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    since: float

    async def closed_by_the_gateway(self, deadline: float) -> float:
        """How long after ``since`` the gateway closed the connection (waiting until
        ``deadline``, loop time, at most)."""
        try:
            async with asyncio.timeout_at(deadline):
                while await self.reader.read(4096):
                    pass
        except ConnectionError:
            pass
        finally:
            self.writer.close()
        return time.monotonic() - self.since


async def half_a_second_request(port: int) -> Held:
    """A keep-alive connection: one whole request, its answer read, then half of the head
    of a second request. Raises :class:`Refused` when the gateway closes it at once, and
    ``TimeoutError`` when the connection waits for an answer (in the listen backlog)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"content-length: (\d+)", head.lower())
            assert found is not None, head
            await reader.readexactly(int(found.group(1)))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        raise Refused from None
    except BaseException:
        writer.close()
        raise
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gate")  # and never the rest
    return Held(reader, writer, time.monotonic())


async def attempts(port: int, count: int) -> tuple[list[Held], int, int]:
    """``count`` :func:`half_a_second_request` at once: those held, how many were
    refused, how many waited for an answer that did not come."""
    outcomes = await asyncio.gather(
        *(half_a_second_request(port) for _ in range(count)), return_exceptions=True
    )
    held = [o for o in outcomes if isinstance(o, Held)]
    refused = sum(isinstance(o, Refused) for o in outcomes)
    hung = sum(isinstance(o, TimeoutError) for o in outcomes)
    unexpected = [o for o in outcomes if not isinstance(o, Held | Refused | TimeoutError)]
    assert not unexpected, unexpected
    return held, refused, hung


def refusal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "refused" in line and "connection(s)" in line]


async def test_keep_alive_slowloris_is_dropped_and_a_gateway_short_of_descriptors_refuses(
    tmp_path: Path,
) -> None:
    async with (
        TestMesh() as mesh,
        gateway_process(mesh, tmp_path, descriptors=256, handshake_timeout=1.0) as gateway,
    ):
        held, refused, hung = await attempts(gateway.port, 300)
        # 300 connections do not fit in 256 descriptors: the gateway keeps its reserve and
        # refuses the rest at once; none waits in the backlog for a descriptor
        assert held and refused, (len(held), refused)
        assert hung == 0
        # each held connection sent half of its second request's head: each is dropped
        # once the handshake timeout has passed (1 s, and 1 s of the gateway's timer)
        deadline = asyncio.get_running_loop().time() + 5.0
        lived = await asyncio.gather(*(h.closed_by_the_gateway(deadline) for h in held))
        assert min(lived) >= 0.9, sorted(lived)
        assert (await get(gateway.port)).startswith(b"HTTP/1.1 200 ")
        log = gateway.log()
    # the refusals are one line (they came within LOG_INTERVAL), never a traceback
    assert len(refusal_lines(log)) == 1, log
    assert TRACEBACK not in log and "Too many open files" not in log, log


async def test_a_gateway_with_no_descriptor_left_refuses_connections_and_logs_once(
    tmp_path: Path,
) -> None:
    async with TestMesh() as mesh, gateway_process(mesh, tmp_path, descriptors=256) as gateway:
        assert (await get(gateway.port)).startswith(b"HTTP/1.1 200 ")
        gateway.process.send_signal(signal.SIGUSR1)
        await gateway.wait_for("took")
        started = time.monotonic()
        held, refused, hung = await attempts(gateway.port, 100)
        # every connection was closed at once, none left waiting (one the gateway closed
        # meanwhile may have given a descriptor back to one of them)
        assert refused >= 90 and hung == 0, (len(held), refused, hung)
        assert time.monotonic() - started < LOG_INTERVAL
        gateway.process.send_signal(signal.SIGUSR2)
        await gateway.wait_for("gave them back")
        assert (await get(gateway.port)).startswith(b"HTTP/1.1 200 ")
        log = gateway.log()
    assert len(refusal_lines(log)) == 1, log
    assert TRACEBACK not in log and "out of system resource" not in log, log


async def test_the_head_of_every_request_on_a_keep_alive_connection_has_a_deadline() -> None:
    settings = gateway_settings(limits={"handshake_timeout": 0.5})
    async with TestMesh(gateway=settings) as mesh:
        port = mesh.gateway.port
        # a client that pauses between requests is not hurried: the pause is keep-alive's
        async with httpx.AsyncClient(base_url=mesh.gateway.url) as client:
            for _ in range(3):
                assert (await client.get("/healthz")).status_code == 200
                await asyncio.sleep(0.8)
        # half of a second head is dropped after the handshake timeout
        held = await half_a_second_request(port)
        lived = await held.closed_by_the_gateway(asyncio.get_running_loop().time() + 5.0)
        assert 0.4 <= lived < 3.0
        # and so is a body still trickling after its answer was sent
        trickle, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /healthz HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\n\r\n")
        await trickle.readuntil(b"\r\n\r\n")

        async def send_slowly() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"x")
                    await asyncio.sleep(0.1)

        sender = asyncio.create_task(send_slowly())
        try:
            body = Held(trickle, writer, time.monotonic())
            lived = await body.closed_by_the_gateway(asyncio.get_running_loop().time() + 5.0)
            assert 0.4 <= lived < 3.0
        finally:
            sender.cancel()


# ------------------------------------------------------------------ slow browsers


async def test_a_browser_that_does_not_read_is_closed_with_4008_past_its_queued_bytes() -> None:
    # max_queued_bytes as by default (1 MiB), and a message count it never reaches
    limits = {**ROOMY, "max_queued": 100_000}
    async with TestMesh(Chat, gateway=gateway_settings(limits=limits)) as mesh:
        node = mesh.nodes_of("chat")[0].node_id
        async with (
            connect(mesh, node=node, max_queue=1) as slow,  # stops reading at once
            connect(mesh, node=node) as bystander,
        ):
            # 600 messages of 64 KiB: far fewer than max_queued, 37.5 MiB
            await slow.send(b"!flood 600 65536")
            for _ in range(20):
                await bystander.send(b"still here")
                assert await bystander.recv() == b"still here"
            async with asyncio.timeout(30):
                assert (await closed_with(slow))[0] == 4008
            await bystander.send(b"after")
            assert await bystander.recv() == b"after"
    assert LimitSettings().max_queued_bytes == 1024 * 1024  # the documented default


# ------------------------------------------------------------------ the HTTP door


async def body_that_never_comes(url: str, who: str) -> asyncio.StreamWriter:
    """A request to the door whose head is whole and whose body never arrives."""
    port = int(url.rpartition(":")[2])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /rpc/shop/quote HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Authorization: {bearer(who)['Authorization']}\r\n".encode()
        + b'Content-Length: 40\r\n\r\n{"sku":'
    )
    await writer.drain()
    return writer


async def test_bodies_that_never_come_hold_none_of_the_doors_places() -> None:
    async with (
        gateway_mesh(Shop, concurrency=16, body_timeout=5.0) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url) as client,
    ):
        stalled = [await body_that_never_comes(mesh.gateway.url, "mallory") for _ in range(40)]
        try:
            await asyncio.sleep(0.2)  # every stalled request is in the door by now
            for who in ("alice", "bob"):
                answer = await client.post(
                    "/rpc/shop/quote", json={"sku": "a", "qty": 1}, headers=bearer(who)
                )
                assert answer.status_code == 200, answer.text
        finally:
            for writer in stalled:
                writer.close()
    assert HttpSettings().concurrency_per_principal == 128  # the documented default


async def test_one_principal_holds_at_most_its_own_places() -> None:
    async with (
        gateway_mesh(Shop, concurrency=16, concurrency_per_principal=4) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url) as client,
    ):
        slow = [
            asyncio.create_task(client.post("/rpc/shop/slow", json=1.0, headers=bearer("mallory")))
            for _ in range(4)
        ]
        door = mesh.gateway.http
        assert door is not None
        for _ in range(200):
            if door.admission.in_flight_of("mallory") == 4:
                break
            await asyncio.sleep(0.01)
        more = await client.post("/rpc/shop/slow", json=1.0, headers=bearer("mallory"))
        assert more.status_code == 429, more.text
        assert more.headers["retry-after"] == "1"
        assert more.json()["error"] == "wiremesh.errors.RateLimited"
        answer = await client.post("/rpc/shop/quote", json={"sku": "a", "qty": 1}, headers=bearer())
        assert answer.status_code == 200, answer.text
        assert [(await task).status_code for task in slow] == [200] * 4
        assert door.admission.in_flight_of("mallory") == 0


# ------------------------------------------------------------------ deeply nested JSON

DEEP = '{"wm": ' + "[" * 60_000


async def test_a_deeply_nested_control_message_closes_with_1003_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        TestMesh(Chat, Notes, gateway=gateway_settings(limits=ROOMY)) as mesh,
        connect(mesh) as bystander,
    ):
        with caplog.at_level(logging.INFO):
            caplog.clear()
            async with connect(mesh) as ws:
                await ws.send(DEEP)
                assert await closed_with(ws) == (1003, "text messages are not accepted")
            await asyncio.sleep(0.2)
        lines = [r for r in caplog.records if r.levelno >= logging.INFO]
        about = [r for r in lines if "text message" in r.getMessage()]
        assert len(about) == 1, [r.getMessage() for r in lines]
        assert not [r for r in lines if r.exc_info], [r.getMessage() for r in lines]
        # a service that takes text gets it as text: it is no control message
        async with connect(mesh, "notes") as notes:
            await notes.send(DEEP)
            assert await notes.recv() == DEEP
        await bystander.send(b"still here")
        assert await bystander.recv() == b"still here"


async def test_a_failure_while_handling_a_message_closes_with_1011_not_a_reset(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: SessionRules, text: str, size: int, now: float) -> None:
        raise RuntimeError("a bug of the gateway's")

    monkeypatch.setattr(SessionRules, "received_text", broken)
    async with (
        TestMesh(Chat, gateway=gateway_settings(limits=ROOMY)) as mesh,
        connect(mesh) as bystander,
    ):
        with caplog.at_level(logging.INFO):
            async with connect(mesh) as ws:
                await ws.send("a text message")
                await ws.send("and another one")
                assert await closed_with(ws) == (1011, "internal error")
        failures = [r for r in caplog.records if r.exc_info]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        await bystander.send(b"still here")
        assert await bystander.recv() == b"still here"


async def test_a_deeply_nested_http_body_is_a_400_problem() -> None:
    async with (
        gateway_mesh(Shop, max_body=200_000) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer()) as client,
    ):
        for body in ("[" * 60_000 + "]" * 60_000, '{"sku": ' + "[" * 60_000):
            answer = await client.post(
                "/rpc/shop/quote", content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["type"] == "urn:wiremesh:problem:http-400"
        assert (await client.post("/rpc/shop/quote", json={"sku": "a", "qty": 1})).is_success


@pytest.mark.parametrize("text", [DEEP, '{"a": ' * 60_000, '{"wm": "refresh"', '{"a": 1}', "hi"])
def test_the_control_channel_decoder_never_raises(text: str) -> None:
    assert control.parse(text) is None
    assert doctest.testmod(control).failed == 0


def test_the_descriptor_reserve_examples_hold() -> None:
    assert doctest.testmod(listener).failed == 0
