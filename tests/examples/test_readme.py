"""Every code block of the README runs as written (and the guide quotes the shop whole).

A block is one of three kinds, said by the comment on the line before it:

- ``<!-- file: PATH -->``: the block is that file of the repository, whole;
- ``<!-- run: FOLDER -->``: commands, run here in a copy of ``FOLDER`` while its mesh
  runs (``wiremesh run``, as the README starts it), with ``.venv/bin`` first on the
  ``PATH`` as ``source .venv/bin/activate`` puts it. A line ``$ command`` is followed by
  what the command prints, which must be what it prints (``…`` stands for any text, and
  a node id for any node of that service); a plain line must succeed.
  ``<!-- output -->`` after such a block is the JSON that its last command prints;
- no comment: commands that set things up (``make demo``, ``source .venv/bin/activate``,
  ``wiremesh run``), each one checked here as :data:`SETUP` says.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.meshes import REPO, RunningMesh, mesh_client, serving_nodes

README = REPO / "README.md"
BIN = Path(sys.executable).parent
#: the meshes the README talks to, and the nodes each runs once started
MESHES = {
    "examples/ipaas": {"connectors": 2, "flows": 1},
    "examples/shop": {"inventory": 1, "pricing": 2, "billing": 1},
}
#: a node id in an output: its service, then four hex digits that differ on every run
NODE_ID = re.compile(r"\b([a-z][a-z0-9_-]*?)-[0-9a-f]{4}\b")


@dataclass
class Block:
    line: int
    lang: str
    body: str
    marker: str

    @property
    def kind(self) -> str:
        return self.marker.split(":", 1)[0]

    @property
    def argument(self) -> str:
        return self.marker.split(":", 1)[1].strip()


def read_blocks(text: str) -> list[Block]:
    lines = text.splitlines(keepends=True)
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"```(\w*)\n", lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        before = re.fullmatch(r"<!-- (.+) -->\n", lines[index - 1]) if index else None
        marker = before.group(1) if before else ""
        body = "".join(lines[index + 1 : end])
        blocks.append(Block(index + 1, opening.group(1), body, marker))
        index = end + 1
    return blocks


BLOCKS = read_blocks(README.read_text())


def commands(block: Block) -> list[tuple[str, list[str] | None]]:
    """Each command of a shell block, with the lines it is shown to print (None: not
    shown, it must succeed)."""
    found: list[tuple[str, list[str] | None]] = []
    prompted = block.body.startswith("$ ")
    for line in block.body.splitlines():
        if prompted and line.startswith("$ "):
            found.append((line[2:], []))
        elif prompted:
            shown = found[-1][1]
            assert shown is not None
            shown.append(line)
        else:
            found.append((line.split("  #", 1)[0].strip(), None))
    return found


# ------------------------------------------------------------------------- setup commands


def make_dry_run(target: str) -> str:
    run = subprocess.run(
        ["make", "-C", str(REPO), "-n", "-B", target], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def check_make_demo() -> None:
    # it installs wiremesh alone, with its fast path; tests/hostile/test_shutdown.py runs
    # its recipe and checks that it ends with status 0 after a clean drain
    recipe = make_dry_run("demo")
    assert "pip install --quiet -e '.[speed]'\n" in recipe, recipe
    assert "[dev]" not in recipe, recipe
    assert "wiremesh run" in recipe, recipe


def check_make_test() -> None:
    recipe = make_dry_run("test")
    assert "pip install --quiet -e '.[dev]'" in recipe, recipe
    for step in ("ruff check", "mypy src", "bin/pytest"):
        assert step in recipe, recipe


def check_activate() -> None:
    # what `make demo` made: .venv/bin holds activate, wiremesh and python
    for name in ("activate", "wiremesh", "python"):
        assert (BIN / name).is_file(), f"{BIN / name} is missing"


def check_pip_install_pytest() -> None:
    # the one thing the shop's tests need besides wiremesh: the `test` extra says so
    from importlib.metadata import requires

    assert 'pytest>=8.1; extra == "test"' in (requires("wiremesh") or [])


#: the commands that are not run here, and how each is checked instead
SETUP = {
    "make demo": check_make_demo,
    "make test": check_make_test,
    "source .venv/bin/activate": check_activate,
    "pip install pytest": check_pip_install_pytest,
    # run by the run blocks' meshes, exactly so (with --plain: no live table)
    "wiremesh run": lambda: None,
}


# ------------------------------------------------------------------------- the checks


def test_every_block_is_a_file_or_commands() -> None:
    for block in BLOCKS:
        where = f"README.md:{block.line}"
        if block.lang in ("python", "toml"):
            assert block.kind == "file", f"{where}: {block.lang} that quotes no file"
        elif block.lang == "json":
            assert block.kind == "output", f"{where}: JSON that is no command's output"
        else:
            assert block.lang == "sh", f"{where}: a block of {block.lang or 'no language'}"
            assert block.kind in ("", "run"), f"{where}: {block.marker}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "file"], ids=lambda b: b.argument)
def test_a_block_that_quotes_a_file_is_the_file_whole(block: Block) -> None:
    assert block.body == (REPO / block.argument).read_text()


def test_the_guide_quotes_the_shop_whole() -> None:
    quoted = [b for b in read_blocks((REPO / "docs" / "guide.md").read_text()) if b.marker]
    assert quoted
    for block in quoted:
        assert block.kind == "file", block.marker
        assert block.body == (REPO / block.argument).read_text(), block.argument


def test_each_command_that_is_not_run_is_checked() -> None:
    for block in BLOCKS:
        if block.lang != "sh":
            continue
        for command, _ in commands(block):
            where = f"README.md:{block.line}: {command}"
            if command.startswith("cd "):
                folder = command.removeprefix("cd ")
                assert (REPO / folder / "wiremesh.toml").is_file(), where
                assert block.kind == "" or block.argument == folder, where
            elif command in SETUP:
                SETUP[command]()
            else:
                assert block.kind == "run", f"{where}: neither run nor checked"


def expected(line: str) -> re.Pattern[str]:
    """What a line shown in the README matches: itself, but any text for ``…`` and any
    node of the same service for a node id."""
    pattern, at = "", 0
    for found in re.finditer(rf"…|{NODE_ID.pattern}", line):
        pattern += re.escape(line[at : found.start()])
        is_any = found.group() == "…"
        pattern += ".*" if is_any else re.escape(found.group(1)) + "-[0-9a-f]{4}"
        at = found.end()
    return re.compile(pattern + re.escape(line[at:]))


def test_expected_output_lines_take_any_node_id_and_ellipses() -> None:
    line = "error: ServiceError: no flow (node flows-65a3) in …s"
    assert expected(line).fullmatch("error: ServiceError: no flow (node flows-0bf1) in 2.1s")
    assert not expected(line).fullmatch("error: ServiceError: no flow (node pricing-0bf1) in 2s")
    assert expected("10.0").fullmatch("10.0")
    assert not expected("10.0").fullmatch("1000")


def shape(value: Any) -> Any:
    """``value`` with what differs from run to run (node ids, times) made alike."""
    if isinstance(value, dict):
        return {
            key: NODE_ID.sub(r"\1-????", item) if key == "node" else shape(item)
            for key, item in value.items()
            if key != "ms"
        }
    if isinstance(value, list):
        return [shape(item) for item in value]
    return value


def copy_of(folder: str, into: Path) -> Path:
    copy = into / Path(folder).name
    shutil.copytree(REPO / folder, copy, ignore=shutil.ignore_patterns(".wiremesh", "__pycache__"))
    config = copy / "wiremesh.toml"
    # the gateway on any free port: 8080 may be taken on this machine
    config.write_text(config.read_text().replace("\n[gateway]\n", "\n[gateway]\nport = 0\n"))
    return copy


async def wait_until_serving(folder: Path, nodes: dict[str, int]) -> None:
    client = await mesh_client(folder)
    try:
        for service, count in nodes.items():
            await serving_nodes(client, service, count)
    finally:
        await client.close()


def run_in(folder: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("WIREMESH_MESH", None)
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("folder", sorted(MESHES))
def test_the_commands_run_as_shown(folder: str, tmp_path: Path) -> None:
    ran = [b for b in BLOCKS if b.kind == "run" and b.argument == folder]
    assert ran, f"the README runs nothing in {folder}"
    copy = copy_of(folder, tmp_path)
    with RunningMesh(copy) as mesh:
        asyncio.run(wait_until_serving(copy, MESHES[folder]))
        last = ""
        for block in BLOCKS:
            if block.kind == "output" and last:
                assert shape(json.loads(last)) == shape(json.loads(block.body)), last
                continue
            if block not in ran:
                last = ""
                continue
            for command, shown in commands(block):
                if command in SETUP or command == f"cd {folder}":
                    continue
                done = run_in(copy, command)
                where = f"README.md:{block.line}: {command}"
                last = done.stdout
                if shown is None or not shown[0].startswith("error: "):
                    assert done.returncode == 0, f"{where}\n{done.stdout}\n{mesh.output}"
                else:
                    assert done.returncode != 0, f"{where}\n{done.stdout}"
                if shown is not None:
                    lines = done.stdout.rstrip("\n").splitlines()
                    assert len(lines) == len(shown), f"{where}\n{done.stdout}"
                    for line, want in zip(lines, shown, strict=True):
                        assert expected(want).fullmatch(line), f"{where}\n{done.stdout}"
        if "broker at" in mesh.output:  # the mesh runs durable handlers: none gave up
            dead = run_in(copy, "wiremesh dlq list")
            assert "no dead letters" in dead.stdout, dead.stdout
