"""The embedded backend across crashes: real ``wiremesh run`` processes, kill -9, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.meshes import (
    WIREMESH,
    RunningMesh,
    eventually_async,
    mesh_client,
    serving_nodes,
)
from wiremesh.client import MeshClient
from wiremesh.errors import WiremeshError

HERE = Path(__file__).resolve().parent

CONFIG = """\
[mesh]
name = "{name}"
drain_grace = 2
default_timeout = 5
python_path = ["{here}"]

[restart]
initial_backoff = 0.1
max_backoff = 0.5

[broker]
attempts = {attempts}
initial_backoff = 0.05
max_backoff = 0.2
"""


def write_config(folder: Path, services: dict[str, tuple[str, int]], attempts: int = 5) -> None:
    text = CONFIG.format(name=folder.name, here=HERE, attempts=attempts)
    for name, (target, replicas) in services.items():
        text += f'\n[services.{name}]\ntarget = "{target}"\nreplicas = {replicas}\n'
    (folder / "wiremesh.toml").write_text(text)


async def call_until(client: MeshClient, target: str, payload: object = None) -> object:
    """A call that rides over node restarts (the node may be dying right now)."""
    for _ in range(100):
        try:
            return await client.call(target, payload, timeout=5)
        except WiremeshError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{target} never answered")


async def test_the_relay_sends_what_a_crash_left_in_the_outbox(tmp_path: Path) -> None:
    write_config(
        tmp_path, {"ledger": ("svc_messaging:Ledger", 1), "opened": ("svc_messaging:Opened", 1)}
    )
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            [first] = await serving_nodes(client, "ledger", 1)
            await serving_nodes(client, "opened", 1)
            with pytest.raises(WiremeshError):  # the node dies after its commit
                await client.call("ledger.open_and_die", "ada", timeout=5)
            await mesh.line(rf"^{first.node_id}: (exited|killed|died)", 15)
            received = await eventually_async(
                lambda: call_until(client, "opened.received"), 20, "the event after the restart"
            )
            assert received == ["ada"]
            assert await call_until(client, "ledger.account_names") == ["ada"]
        finally:
            await client.close()


async def test_every_event_is_handled_once_while_consumers_are_killed(tmp_path: Path) -> None:
    total = 4_000  # emitting outlasts the four kills, 0.6 s apart
    write_config(tmp_path, {"ledger": ("svc_messaging:Ledger", 2)})
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "ledger", 2)
            limit = asyncio.Semaphore(200)

            async def emit(n: int) -> None:
                async with limit:
                    await client.emit("credits.in", f"acct-{n}")

            emitting = asyncio.gather(*(emit(n) for n in range(total)))
            killed = 0
            while killed < 4:
                await asyncio.sleep(0.6)
                nodes = [n for n in client.nodes("ledger") if n.serving]
                if nodes:
                    os.kill(nodes[killed % len(nodes)].pid, signal.SIGKILL)
                    killed += 1
            await emitting

            async def settled() -> dict[str, int] | None:
                summary = await call_until(client, "ledger.credit_summary")
                assert isinstance(summary, dict)
                return summary if summary["distinct"] >= total else None

            summary = await eventually_async(settled, 90, "every event handled")
            assert summary == {"rows": total, "distinct": total}
            restarts = mesh.matches(r"restarting|started \(pid")
            assert len(restarts) >= 4 + 2
        finally:
            await client.close()


async def test_messages_pending_when_the_mesh_stops_are_delivered_after_a_restart(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, {"sink": ("svc_messaging:Sink", 1)})
    count = 200
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "sink", 1)
            for n in range(count):
                await client.emit("sink.items", f"item-{n}")
        finally:
            await client.close()
        mesh.send(signal.SIGTERM)
        assert await mesh.exit_code() == 0
    (tmp_path / ".wiremesh" / "data" / "sink" / "open").touch()
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "sink", 1)

            async def all_in() -> bool:
                return await call_until(client, "sink.count") == count

            await eventually_async(all_in, 30, "every pending message handled")
        finally:
            await client.close()


def dlq(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WIREMESH, "dlq", *args], cwd=folder, capture_output=True, text=True, timeout=30
    )


async def test_the_dlq_commands_list_show_replay_and_purge(tmp_path: Path) -> None:
    write_config(tmp_path, {"failing": ("svc_messaging:Failing", 1)}, attempts=2)
    assert dlq(tmp_path, "list").returncode == 1  # no mesh runs here yet
    with RunningMesh(tmp_path):
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "failing", 1)
            ids = [await client.emit("doomed", n) for n in range(3)]
            broker = client.broker
            assert broker is not None

            async def all_dead() -> bool:
                return len(await broker.dead_letters()) == 3

            await eventually_async(all_dead, 15)
            listed = await asyncio.to_thread(dlq, tmp_path, "list", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = [json.loads(line) for line in listed.stdout.splitlines()]
            assert sorted(r["id"] for r in rows) == sorted(ids)
            assert {r["queue"] for r in rows} == {"failing/doomed"}
            assert all(r["attempt"] == 2 for r in rows)
            table = await asyncio.to_thread(dlq, tmp_path, "list")
            assert ids[0] in table.stdout and "failing/doomed" in table.stdout

            shown = await asyncio.to_thread(dlq, tmp_path, "show", ids[1])
            assert shown.returncode == 0, shown.stderr
            detail = json.loads(shown.stdout)
            assert detail["payload"] == 1 and detail["topic"] == "doomed"
            assert "cannot handle 1" in detail["reason"]
            missing = await asyncio.to_thread(dlq, tmp_path, "show", "0" * 32)
            assert missing.returncode == 1 and "no dead letter" in missing.stderr

            usage = await asyncio.to_thread(dlq, tmp_path, "replay")
            assert usage.returncode == 2
            replayed = await asyncio.to_thread(dlq, tmp_path, "replay", ids[0])
            assert replayed.returncode == 0 and "replayed 1" in replayed.stdout

            async def dead_again() -> bool:
                found = await broker.dead_letter(ids[0])
                return found is not None and found.envelope.attempt == 2

            await eventually_async(dead_again, 15)
            purged = await asyncio.to_thread(dlq, tmp_path, "purge", ids[2], "f" * 32)
            assert purged.returncode == 1 and "purged 1" in purged.stdout
            rest = await asyncio.to_thread(dlq, tmp_path, "purge", "--all")
            assert rest.returncode == 0 and "purged 2" in rest.stdout
            assert await broker.dead_letters() == []
        finally:
            await client.close()


async def test_the_embedded_broker_speaks_mutual_tls_when_the_mesh_does(tmp_path: Path) -> None:
    certs = tmp_path / ".wiremesh" / "certs"
    made = await asyncio.to_thread(
        subprocess.run,
        [WIREMESH, "certs", "init", "--dir", str(certs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    write_config(tmp_path, {"sink": ("svc_messaging:Sink", 1)})
    with (tmp_path / "wiremesh.toml").open("a") as config:
        config.write("\n[tls]\nenabled = true\n")
    (tmp_path / ".wiremesh" / "data" / "sink").mkdir(parents=True)
    (tmp_path / ".wiremesh" / "data" / "sink" / "open").touch()
    with RunningMesh(tmp_path):
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "sink", 1)
            for n in range(3):
                await client.emit("sink.items", f"item-{n}")

            async def all_in() -> bool:
                return await call_until(client, "sink.count") == 3

            await eventually_async(all_in, 15, "the events, over TLS")
        finally:
            await client.close()
