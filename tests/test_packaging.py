"""The wheel carries what an installed wiremesh needs besides its code."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: not part of a source tree that builds a wheel (build/ could hold what an earlier build
#: put there, and the wheel would take it)
LEFT_OUT = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".wiremesh"
)


def test_the_wheel_ships_the_javascript_client_and_the_static_files(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=LEFT_OUT)
    built = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("-w", str(tmp_path), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("wiremesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "wiremesh/gateway/static/wiremesh.js" in names  # served at /_wiremesh/wiremesh.js
    assert "wiremesh/gateway/static/docs.html" in names
    assert "wiremesh/py.typed" in names
    assert any(name.startswith("wiremesh/observability/static/") for name in names)
    shipped = zipfile.ZipFile(wheel).read("wiremesh/gateway/static/wiremesh.js")
    assert shipped == (ROOT / "clients" / "js" / "wiremesh.js").read_bytes()
