"""The ``wiremesh`` command, driven as a user drives it: a process in the mesh folder."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import wiremesh
from tests.fixtures.meshes import (
    FIXTURES,
    WIREMESH,
    RunningMesh,
    mesh_client,
    serving_nodes,
    write_mesh,
)

LONG = "notification-reminders-for-subscribers"


def wiremesh_cli(
    *args: str, cwd: Path, stdin: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WIREMESH, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "80"},
    )


@dataclass
class Mesh:
    folder: Path
    running: RunningMesh
    nodes: dict[str, int]  # echo node id -> pid
    registry: str


async def _wait_ready(folder: Path) -> tuple[dict[str, int], str]:
    client = await mesh_client(folder)
    try:
        echo = await serving_nodes(client, "echo", 2)
        await serving_nodes(client, LONG, 1)
        return {n.node_id: n.pid for n in echo}, client.registry.address
    finally:
        await client.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One mesh for the module: two echo nodes and one node with a long service name."""
    folder = tmp_path_factory.mktemp("cli-mesh")
    write_mesh(
        folder,
        {"echo": {"target": "svc_echo:Echo", "replicas": 2}, LONG: "svc_echo:Reminders"},
    )
    with RunningMesh(folder) as running:
        nodes, registry = asyncio.run(_wait_ready(folder))
        yield Mesh(folder, running, nodes, registry)


# ------------------------------------------------------------------------- no mesh needed


def test_version(tmp_path: Path) -> None:
    done = wiremesh_cli("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"wiremesh {wiremesh.__version__}"


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ((), "wiremesh call flows.run"),
        (("call",), "wiremesh call connectors.list"),
        (("run",), "wiremesh run myapp.pricing:Pricing --replicas 3"),
        (("nodes",), "wiremesh nodes --json"),
    ],
    ids=["wiremesh", "call", "run", "nodes"],
)
def test_help_teaches_with_examples(tmp_path: Path, command: tuple[str, ...], example: str) -> None:
    done = wiremesh_cli(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "Examples:" in done.stdout
    assert example in done.stdout
    # a flag takes no value, and its help does not pretend it does
    assert "<bool>" not in done.stdout
    assert "--help " in done.stdout


@pytest.mark.parametrize("target", ["nodot", "a.b.c", "svc@.m", ".method"])
def test_a_bad_call_target_is_a_usage_error_before_any_mesh_is_reached(
    tmp_path: Path, target: str
) -> None:
    done = wiremesh_cli("call", target, "1", cwd=tmp_path)  # no mesh runs here
    assert done.returncode == 2
    assert f"bad call target {target!r}" in done.stderr
    assert "service.method" in done.stderr


def test_call_without_a_running_mesh_says_to_start_one(tmp_path: Path) -> None:
    done = wiremesh_cli("call", "echo.echo", '"hi"', cwd=tmp_path)
    assert done.returncode == 1
    assert "no mesh is running" in done.stderr
    assert "wiremesh run" in done.stderr
    assert done.stdout == ""


def test_a_stale_mesh_file_is_not_taken_for_a_running_mesh(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    (tmp_path / ".wiremesh").mkdir()
    (tmp_path / ".wiremesh" / "mesh.json").write_text(
        json.dumps({"registry": "127.0.0.1:1", "pid": int(gone.stdout)})
    )
    done = wiremesh_cli("nodes", cwd=tmp_path)
    assert done.returncode == 1
    assert "not running any more" in done.stderr
    assert "wiremesh run" in done.stderr


def test_run_without_a_configuration_explains_what_to_pass(tmp_path: Path) -> None:
    done = wiremesh_cli("run", "--plain", cwd=tmp_path)
    assert done.returncode == 2
    assert "no wiremesh.toml in this folder" in done.stderr


def test_run_reports_each_bad_setting_with_its_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "wiremesh.toml").write_text(
        "[mesh]\n"
        "drain_grace = 2\n"
        'colour = "blue"\n'
        "\n"
        "[services.echo]\n"
        'target = "svc_echo:Echo"\n'
        'replicas = "two"\n'
    )
    done = wiremesh_cli("run", "--plain", cwd=tmp_path)
    assert done.returncode == 2
    assert "wiremesh.toml:3: mesh.colour: unknown setting" in done.stderr
    assert "wiremesh.toml:7: services.echo.replicas:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / ".wiremesh" / "mesh.json").exists()


def test_run_reports_broken_toml_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "wiremesh.toml").write_text('[mesh]\nname = "a"\nhost = \n')
    done = wiremesh_cli("run", "--plain", cwd=tmp_path)
    assert done.returncode == 2
    assert "wiremesh.toml:3: invalid TOML" in done.stderr


async def test_run_a_single_service_target(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "svc_echo.py", tmp_path / "svc_echo.py")
    with RunningMesh(tmp_path, "svc_echo:Echo", "--replicas", "2") as running:
        client = await mesh_client(tmp_path)
        try:
            nodes = await serving_nodes(client, "echo", 2)
        finally:
            await client.close()
        done = await asyncio.to_thread(wiremesh_cli, "call", "echo.echo", '"hi"', cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == "hi"
        listed = await asyncio.to_thread(wiremesh_cli, "nodes", "--json", cwd=tmp_path)
        assert {json.loads(line)["node"] for line in listed.stdout.splitlines()} == {
            n.node_id for n in nodes
        }
        assert f"data in {tmp_path / '.wiremesh'}" in running.output
    assert (tmp_path / ".wiremesh" / "data" / "echo").is_dir()


# ------------------------------------------------------------------------- with a mesh


def test_nodes_lists_service_node_host_address_pid_and_state(mesh: Mesh) -> None:
    done = wiremesh_cli("nodes", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[1]
    for column in ("service", "node", "host", "address", "pid", "state", "uptime"):
        assert column in header
    rows = [line for line in done.stdout.splitlines() if "serving" in line]
    assert len(rows) == 3
    for node_id, pid in mesh.nodes.items():
        (row,) = [r for r in rows if node_id in r]
        assert "echo" in row
        assert str(pid) in row
        assert "127.0.0.1:" in row
    # a long service name is printed whole, even when the output is not a terminal
    assert any(LONG in row and f"{LONG}-" in row for row in rows), done.stdout


def test_nodes_json_prints_one_object_per_node(mesh: Mesh) -> None:
    done = wiremesh_cli("nodes", "--json", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    echo = {row["node"]: row for row in rows if row["service"] == "echo"}
    assert {node: row["pid"] for node, row in echo.items()} == mesh.nodes
    for row in echo.values():
        assert row["state"] == "serving"
        assert row["host"] == "127.0.0.1"
        assert row["address"].startswith("127.0.0.1:")
        assert {"echo", "slow", "whoami"} <= set(row["methods"])
        assert row["started_at"] > 0


def test_nodes_of_a_registry_address(mesh: Mesh, tmp_path: Path) -> None:
    done = wiremesh_cli("nodes", "--json", "--mesh", mesh.registry, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3


def test_call_prints_the_result_as_json(mesh: Mesh) -> None:
    payload = {"text": "héllo", "items": [1, 2.5, None, True], "nested": {"a": []}}
    done = wiremesh_cli("call", "echo.echo", json.dumps(payload), cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == payload


def test_call_another_folder_with_mesh_option(mesh: Mesh, tmp_path: Path) -> None:
    done = wiremesh_cli("call", "echo.echo", "42", "--mesh", str(mesh.folder), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 42


def test_call_one_node_with_node_option_or_in_the_target(mesh: Mesh) -> None:
    for node_id, pid in mesh.nodes.items():
        done = wiremesh_cli("call", "echo.whoami", "--node", node_id, cwd=mesh.folder)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"node": node_id, "pid": pid}
        done = wiremesh_cli("call", f"echo@{node_id}.whoami", cwd=mesh.folder)
        assert json.loads(done.stdout) == {"node": node_id, "pid": pid}


def test_call_an_unknown_node(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "echo.whoami", "--node", "echo-0000", cwd=mesh.folder)
    assert done.returncode == 1
    assert "NodeNotFound" in done.stderr
    assert "echo-0000" in done.stderr


def test_call_with_a_timeout_too_short_fails_with_deadline_exceeded(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "echo.slow", "2", "--timeout", "0.2", cwd=mesh.folder)
    assert done.returncode == 1
    assert "DeadlineExceeded" in done.stderr
    assert done.stdout == ""


def test_call_with_a_timeout_long_enough(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "echo.slow", "0.1", "--timeout", "5", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["slept"] == 0.1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("echo.refuse", '"not today"'), ["ServiceError", "svc_echo.EchoRefused", "not today"]),
        (("echo.explode",), ["InternalError", "RuntimeError", "boom"]),
        (("echo.nope",), ["MethodNotFound", "nope"]),
        (("nothing.here",), ["ServiceNotFound", "nothing"]),
        (("echo.slow", '"soon"'), ["InvalidPayload", "payload", "valid number"]),
    ],
    ids=["service-error", "handler-crash", "no-method", "no-service", "bad-payload"],
)
def test_a_failed_call_prints_the_error_type_and_message_and_exits_1(
    mesh: Mesh, args: tuple[str, ...], expected: list[str]
) -> None:
    done = wiremesh_cli("call", *args, cwd=mesh.folder)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    for text in expected:
        assert text in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("payload", ["{not json", "'single'", ""])
def test_a_payload_that_is_not_json_exits_2(mesh: Mesh, payload: str) -> None:
    done = wiremesh_cli("call", "echo.echo", payload, cwd=mesh.folder)
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr
    assert """a string is '"A-1"'""" in done.stderr  # how to quote it


def test_an_object_for_a_method_of_one_parameter_says_to_send_the_bare_value(
    mesh: Mesh,
) -> None:
    done = wiremesh_cli("call", "echo.slow", '{"seconds": 0.1}', cwd=mesh.folder)
    assert done.returncode == 1
    assert "InvalidPayload" in done.stderr
    assert "takes one parameter, seconds: send its value itself" in done.stderr
    bare = wiremesh_cli("call", "echo.slow", "0.1", cwd=mesh.folder)
    assert bare.returncode == 0, bare.stderr


def test_payload_from_a_file(mesh: Mesh, tmp_path: Path) -> None:
    body = tmp_path / "payload.json"
    body.write_text(json.dumps({"from": "file", "n": [1, 2, 3]}))
    done = wiremesh_cli("call", "echo.echo", f"@{body}", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"from": "file", "n": [1, 2, 3]}


def test_payload_from_a_missing_file_exits_2(mesh: Mesh, tmp_path: Path) -> None:
    done = wiremesh_cli("call", "echo.echo", f"@{tmp_path / 'nope.json'}", cwd=mesh.folder)
    assert done.returncode == 2
    assert "cannot read the payload file" in done.stderr


def test_payload_from_stdin(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "echo.echo", "-", cwd=mesh.folder, stdin='{"from": "stdin"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"from": "stdin"}


def test_a_second_run_in_the_same_folder_is_refused(mesh: Mesh) -> None:
    done = wiremesh_cli("run", "--plain", cwd=mesh.folder)
    assert done.returncode == 2
    assert f"a mesh already runs on {mesh.folder / '.wiremesh'}" in done.stderr
    assert f"pid {mesh.running.pid}" in done.stderr
    # the running mesh is untouched
    assert (mesh.folder / ".wiremesh" / "mesh.json").is_file()
    again = wiremesh_cli("call", "echo.echo", '"still"', cwd=mesh.folder)
    assert json.loads(again.stdout) == "still"
