"""``wiremesh call --all / --group / --mode``: a multicast from the command line, against
a real ``wiremesh run`` mesh whose service joins a group by configuration."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures.meshes import WIREMESH, RunningMesh, mesh_client, serving_nodes, write_mesh
from wiremesh.cli import app


def wiremesh_cli(*args: str, cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WIREMESH, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "80"},
    )


@dataclass
class Mesh:
    folder: Path
    nodes: list[str]  # the multi node ids, sorted


async def _wait_ready(folder: Path) -> list[str]:
    client = await mesh_client(folder)
    try:
        found = await serving_nodes(client, "multi", 3)
        assert all(n.groups == ("blue",) for n in found), found
        return sorted(n.node_id for n in found)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three nodes of ``multi``, in group ``blue`` by configuration."""
    folder = tmp_path_factory.mktemp("cli-multicast")
    write_mesh(folder, {"multi": {"target": "svc_multi:Multi", "replicas": 3}})
    config = folder / "wiremesh.toml"
    config.write_text(config.read_text() + 'groups = ["blue"]\n')
    with RunningMesh(folder):
        yield Mesh(folder, asyncio.run(_wait_ready(folder)))


# ------------------------------------------------------------------------- no mesh needed


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--mode", "first"), "--all or --group"),
        (("--all", "--mode", "most"), "--mode"),
        (("--all", "--node", "multi-0000"), "one or the other"),
    ],
)
def test_bad_multicast_options_exit_2(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    done = CliRunner().invoke(app, ["call", "multi.whoami", *args])
    assert done.exit_code == 2, done.output
    assert words in done.stderr
    assert done.stdout == ""


def test_call_help_shows_a_multicast_example() -> None:
    done = CliRunner().invoke(app, ["call", "--help"], env={"COLUMNS": "100"})
    assert done.exit_code == 0
    for words in ("--all", "--group", "--mode", "--group eu --mode 'quorum(2)'"):
        assert words in done.stdout


# ------------------------------------------------------------------------- against a mesh


def test_all_prints_every_nodes_result_by_node_id(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "multi.whoami", "--all", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {n: n for n in mesh.nodes}


def test_a_slow_node_gets_a_deadline_error_and_the_exit_code_is_1(mesh: Mesh) -> None:
    fast1, fast2, slow = mesh.nodes
    payload = json.dumps({slow: 20})
    started = time.monotonic()
    done = wiremesh_cli("call", "multi.nap", payload, "--all", "--timeout", "1", cwd=mesh.folder)
    assert time.monotonic() - started < 15  # the CLI's start-up, plus one second: not 20
    assert done.returncode == 1
    printed = json.loads(done.stdout)
    assert printed[fast1] == fast1 and printed[fast2] == fast2
    assert printed[slow]["error"]["type"] == "DeadlineExceeded"
    assert printed[slow]["error"]["status"] == "deadline_exceeded"
    assert "not met" in done.stderr


def test_mode_first_and_quorum(mesh: Mesh) -> None:
    fast, slow1, slow2 = mesh.nodes
    payload = json.dumps({slow1: 20, slow2: 20})
    done = wiremesh_cli("call", "multi.nap", payload, "--all", "--mode", "first", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed[fast] == fast
    assert printed[slow1]["error"]["type"] == "Cancelled"

    args = ("call", "multi.nap", payload, "--all", "--mode", "quorum(2)", "--timeout", "1")
    done = wiremesh_cli(*args, cwd=mesh.folder)
    assert done.returncode == 1  # one value in time, two were wanted
    assert json.loads(done.stdout)[fast] == fast


def test_handler_errors_are_typed_per_node(mesh: Mesh) -> None:
    refusing = mesh.nodes[0]
    done = wiremesh_cli("call", "multi.refuse", json.dumps([refusing]), "--all", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr  # mode all: every node answered
    printed = json.loads(done.stdout)
    error = printed[refusing]["error"]
    assert error["remote_type"] == "svc_multi.Refused"
    assert error["message"] == f"{refusing} refuses"
    assert all(printed[n] == n for n in mesh.nodes[1:])


def test_group_from_the_configuration(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "multi.whoami", "--group", "blue", cwd=mesh.folder)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)) == mesh.nodes

    done = wiremesh_cli("call", "multi.whoami", "--group", "red", cwd=mesh.folder)
    assert done.returncode == 1
    assert json.loads(done.stdout) == {}
    assert "group 'red'" in done.stderr


def test_a_bad_target_fails_the_whole_multicast(mesh: Mesh) -> None:
    done = wiremesh_cli("call", "multi.nothing", "--all", cwd=mesh.folder)
    assert done.returncode == 1
    assert "MethodNotFound" in done.stderr
    assert done.stdout == ""
