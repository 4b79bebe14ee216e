"""``wiremesh.transport.grpc_core``: grpc's settings, chosen as wiremesh is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from wiremesh.transport.grpc_core import ENV, EXPERIMENTS

REPORT = (
    "import json, os; from wiremesh.transport import grpc_core; "
    "print(json.dumps([os.environ.get('GRPC_EXPERIMENTS'), grpc_core.applied]))"
)


def run(code: str, **env: str) -> list[object]:
    environment = {k: v for k, v in os.environ.items() if k != ENV}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: list[object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_importing_wiremesh_moves_grpc_socket_io_to_its_polling_thread() -> None:
    assert run(f"import wiremesh; {REPORT}") == [EXPERIMENTS, True]


def test_a_setting_of_ones_own_is_kept_even_an_empty_one() -> None:
    assert run(f"import wiremesh; {REPORT}", GRPC_EXPERIMENTS="") == ["", False]
    assert run(f"import wiremesh; {REPORT}", GRPC_EXPERIMENTS="-x") == ["-x", False]


def test_a_process_started_by_a_wiremesh_process_runs_with_the_setting_it_inherits() -> None:
    assert run(f"import wiremesh; {REPORT}", GRPC_EXPERIMENTS=EXPERIMENTS) == [EXPERIMENTS, True]


def test_grpc_imported_first_keeps_its_defaults_and_says_so() -> None:
    # the variable is set all the same, for the processes this one starts
    assert run(f"import grpc; import wiremesh; {REPORT}") == [EXPERIMENTS, False]
