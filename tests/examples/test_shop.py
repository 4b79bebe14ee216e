"""The shop of the README's tour (``examples/shop``): its own tests pass as its users run
them, ``pytest`` in its folder, with nothing configured for asyncio. (The README's tests,
``tests/examples/test_readme.py``, run it under ``wiremesh run``.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.meshes import REPO

SHOP = REPO / "examples" / "shop"


def test_the_shop_configures_nothing_for_asyncio() -> None:
    settings = tomllib.loads((SHOP / "pyproject.toml").read_text())
    # one setting: its services are modules of its folder, as `wiremesh run` imports them
    assert settings == {"tool": {"pytest": {"ini_options": {"pythonpath": ["."]}}}}
    assert not list(SHOP.rglob("conftest.py"))
    assert not list(SHOP.rglob("pytest.ini"))


@pytest.mark.parametrize(
    "options",
    [
        # pytest-asyncio installed, in its default (strict) mode: it leaves them alone
        [],
        # as in a project with wiremesh and pytest alone; and not one warning
        ["-p", "no:asyncio", "-W", "error"],
    ],
    ids=["beside-pytest-asyncio", "without-pytest-asyncio"],
)
def test_the_shops_own_tests_pass(options: list[str], tmp_path: Path) -> None:
    copy = tmp_path / "shop"
    shutil.copytree(SHOP, copy, ignore=shutil.ignore_patterns(".wiremesh", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *options],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tests = sum(
        len(re.findall(r"^async def test_", p.read_text(), re.M)) for p in copy.rglob("test_*.py")
    )
    assert re.search(rf"^=+ {tests} passed in ", done.stdout, re.M), done.stdout
