"""Run every benchmark in this folder and write ``docs/benchmarks.md``.

Each benchmark is a script that prints a human table and, as its last line,
``RESULT {json}``. This runner keeps both, adds the machine it ran on, and fails (exit 1)
when a benchmark fails or prints no RESULT line. A benchmark that cannot run on this
machine (``multihost.py`` needs root, ``ip``, ``nft`` and ``redis-server``) says why in one
line and exits 77: its section says so instead, and the others run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
#: the exit status of a benchmark that cannot run on this machine
CANNOT_RUN = 77


def benchmarks() -> list[Path]:
    return sorted(
        p for p in HERE.glob("*.py") if not p.name.startswith("_") and p != Path(__file__).resolve()
    )


def run(script: Path) -> tuple[str, dict[str, object]] | str:
    """The table and the result of ``script``, or why it cannot run here."""
    print(f"== {script.name}", flush=True)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=1800, check=False
    )
    sys.stdout.write(done.stdout)
    if done.returncode == CANNOT_RUN:
        why = done.stderr.strip().splitlines()[-1]
        print(why, flush=True)
        return why
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{script.name} failed with exit status {done.returncode}")
    lines = done.stdout.rstrip().splitlines()
    if not lines or not lines[-1].startswith("RESULT "):
        raise SystemExit(f"{script.name} printed no RESULT line last")
    return "\n".join(lines[:-1]), json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    sections = []
    for script in benchmarks():
        outcome = run(script)
        if isinstance(outcome, str):
            sections.append(
                f"## {script.stem}\n\n`python benchmarks/{script.name}`\n\nNot run: {outcome}\n"
            )
            continue
        table, result = outcome
        sections.append(
            f"## {script.stem}\n\n`python benchmarks/{script.name}`\n\n```text\n{table}\n```\n\n"
            f"```json\n{json.dumps(result, indent=2, sort_keys=True)}\n```\n"
        )
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    DOCS.write_text(
        "# Benchmarks\n\n"
        "Written by `make bench` (`benchmarks/run_all.py`); do not edit by hand. Each benchmark "
        "runs wiremesh and the peer it is compared with in the same run on the same machine; "
        "figures are medians over several interleaved rounds, ratios are wiremesh / peer.\n\n"
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}.\n\n"
        + "\n".join(sections)
    )
    print(f"wrote {DOCS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
