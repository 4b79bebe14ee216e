"""``wiremesh.transport.grpc_core``: grpc's socket I/O, and when grpc reads its setting.

Each case runs in a fresh interpreter, since grpc reads ``GRPC_EXPERIMENTS`` once per
process. Whether grpc honours the setting is read from Linux's per-thread counters
(``/proc/self/task/<tid>/io``): with it, grpc's EventEngine threads (named
``event_engine``) write nothing to the sockets; without it, they write each message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wiremesh.transport.grpc_core import ENV, EXPERIMENTS

CALLS = 200

#: ``ENGINE_WRITES()``: how many writes grpc's EventEngine threads make during CALLS
#: unary calls between a grpc.aio server and channel of this process
PROBE = f"""
import asyncio, os

def engine_writes_now():
    writes = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{{tid}}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{{tid}}/io") as f:
                counters = dict(line.split(": ") for line in f.read().splitlines())
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        if name == "event_engine":
            writes += int(counters["syscw"])
    return writes

async def engine_writes():
    import grpc, grpc.aio
    async def echo(request, context):
        return request
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("probe.Echo", {{"Echo": handler}})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{{port}}") as channel:
            call = channel.unary_unary("/probe.Echo/Echo")
            await call(b"x")
            before = engine_writes_now()
            for _ in range({CALLS}):
                await call(b"x")
            return engine_writes_now() - before
    finally:
        await server.stop(0)

def ENGINE_WRITES():
    return asyncio.run(engine_writes())
"""

REPORT = "print(json.dumps([os.environ.get('GRPC_EXPERIMENTS'), applied, ENGINE_WRITES()]))"

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or not Path(f"/proc/self/task/{os.getpid()}/io").exists(),
    reason="reads Linux's per-thread I/O counters",
)


def run(code: str, **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (``GRPC_EXPERIMENTS`` unset unless given);
    its output lines."""
    environment = {k: v for k, v in os.environ.items() if k != ENV}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", f"import json, os, sys\n{PROBE}\n{code}"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def result(lines: list[str]) -> tuple[str | None, bool, int]:
    variable, applied, writes = json.loads(lines[-1])
    return variable, applied, writes


def test_importing_wiremesh_sets_nothing_and_imports_no_grpc() -> None:
    lines = run(
        "import wiremesh\n"
        "from wiremesh.transport.grpc_core import prefer_loop_io\n"
        "print(json.dumps(['grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS')]))\n"
        "from wiremesh import Service, connect\n"
        "print(json.dumps(['grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS')]))"
    )
    assert [json.loads(line) for line in lines] == [[False, None], [True, None]]


@needs_proc
def test_prefer_loop_io_before_grpc_moves_socket_io_to_the_polling_thread() -> None:
    code = "from wiremesh.transport import grpc_core\napplied = grpc_core.prefer_loop_io()\n"
    variable, applied, writes = result(run(code + REPORT))
    assert (variable, applied) == (EXPERIMENTS, True)
    assert writes < CALLS // 10, f"grpc's EventEngine threads wrote {writes} times"


@needs_proc
def test_grpc_without_the_setting_writes_each_message_on_its_engine_threads() -> None:
    # the other side of the probe: what the test above tells apart
    variable, _, writes = result(run("applied = None\n" + REPORT))
    assert variable is None
    assert writes > CALLS // 2, f"grpc's EventEngine threads wrote {writes} times only"


@needs_proc
def test_set_after_grpc_is_imported_the_setting_changes_nothing_and_says_so() -> None:
    # even before the first channel or server: grpc read the variable as it loaded
    code = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "import grpc\n"
        "from wiremesh.transport import grpc_core\n"
        "applied = grpc_core.prefer_loop_io()\n"
        "applied = applied or grpc_core.prefer_loop_io()\n"  # said once
    )
    lines = run(code + REPORT)
    variable, applied, writes = result(lines)
    # set all the same, for the processes this one starts
    assert (variable, applied) == (EXPERIMENTS, False)
    assert writes > CALLS // 2, f"grpc's EventEngine threads wrote {writes} times only"
    told = [line for line in lines[:-1] if "grpc was loaded before GRPC_EXPERIMENTS" in line]
    assert len(told) == 1, lines


@needs_proc
def test_an_entry_point_that_comes_too_late_runs_again_in_place_with_the_setting() -> None:
    code = (
        "import grpc\n"
        "from wiremesh.transport import grpc_core\n"
        "print('started', os.getpid(), flush=True)\n"
        "applied = grpc_core.prefer_loop_io(restart=True)\n"
    )
    lines = run(code + REPORT)
    starts = [line for line in lines if line.startswith("started ")]
    assert len(starts) == 2 and starts[0] == starts[1]  # the same process, twice
    variable, applied, writes = result(lines)
    assert (variable, applied) == (EXPERIMENTS, True)
    assert writes < CALLS // 10, f"grpc's EventEngine threads wrote {writes} times"


@needs_proc
def test_a_process_started_with_the_variable_runs_with_it() -> None:
    # as the nodes and the gateway that `wiremesh run` starts: grpc first, no restart
    code = (
        "import grpc\n"
        "from wiremesh.transport import grpc_core\n"
        "print('started', flush=True)\n"
        "applied = grpc_core.prefer_loop_io(restart=True)\n"
    )
    lines = run(code + REPORT, GRPC_EXPERIMENTS=EXPERIMENTS)
    assert lines.count("started") == 1
    variable, applied, writes = result(lines)
    assert (variable, applied) == (EXPERIMENTS, True)
    assert writes < CALLS // 10, f"grpc's EventEngine threads wrote {writes} times"


def test_a_setting_of_ones_own_is_kept_even_an_empty_one() -> None:
    code = (
        "from wiremesh.transport import grpc_core\n"
        "print(json.dumps([grpc_core.prefer_loop_io(restart=True),"
        " os.environ['GRPC_EXPERIMENTS']]))"
    )
    assert json.loads(run(code, GRPC_EXPERIMENTS="")[-1]) == [False, ""]
    assert json.loads(run(code, GRPC_EXPERIMENTS="-x")[-1]) == [False, "-x"]
