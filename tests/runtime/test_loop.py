"""The event loop wiremesh's processes run on (``WIREMESH_LOOP``), and the gateway's HTTP
parser (``WIREMESH_HTTP_PARSER``): what each value chooses, and the errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.fixtures.meshes import FIXTURES
from wiremesh.cli import app
from wiremesh.errors import ConfigError
from wiremesh.gateway.http_protocol import PARSER_ENV, parser_name
from wiremesh.runtime import loop as event_loop


async def which() -> str:
    return event_loop.running()


def without(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """As if the package ``missing`` were not installed."""
    found = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == missing else found(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    ("value", "chosen"),
    [("", "uvloop"), ("auto", "uvloop"), (" UVLOOP ", "uvloop"), ("asyncio", "asyncio")],
)
def test_the_loop_is_uvloop_when_installed_unless_asyncio_is_asked_for(
    value: str, chosen: str
) -> None:
    assert event_loop.loop_name({event_loop.ENV: value}) == chosen
    assert event_loop.loop_name({}) == "uvloop"  # installed with what the tests need


def test_without_uvloop_auto_is_asyncio_and_uvloop_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without(monkeypatch, "uvloop")
    assert event_loop.loop_name({}) == "asyncio"
    with pytest.raises(ConfigError, match=r"not installed: pip install 'wiremesh\[speed\]'"):
        event_loop.loop_name({event_loop.ENV: "uvloop"})


def test_an_unknown_loop_is_a_config_error_and_run_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(event_loop.ENV, "trio")
    started = False

    async def main() -> None:
        nonlocal started
        started = True

    with pytest.raises(ConfigError, match="WIREMESH_LOOP='trio': expected one of auto"):
        event_loop.run(main())
    assert not started


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_run_runs_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(event_loop.ENV, name)

    assert event_loop.run(which()) == name


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (event_loop.ENV, "WIREMESH_LOOP='curio': expected one of auto, asyncio, uvloop"),
        (PARSER_ENV, "WIREMESH_HTTP_PARSER='curio': expected one of auto, h11, httptools"),
    ],
)
def test_wiremesh_run_refuses_an_unknown_value_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, message: str
) -> None:
    (tmp_path / "wiremesh.toml").write_text(
        f'[mesh]\npython_path = ["{FIXTURES}"]\n\n[services.echo]\ntarget = "svc_echo:Echo"\n'
    )
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["run", "--plain"], env={variable: "curio"})
    assert done.exit_code == 2, done.output
    assert message in " ".join(done.output.split())
    assert not (tmp_path / ".wiremesh" / "mesh.json").exists()


@pytest.mark.parametrize(
    ("value", "chosen"), [("", "httptools"), ("auto", "httptools"), ("h11", "h11")]
)
def test_the_http_parser_is_httptools_when_installed_unless_h11_is_asked_for(
    value: str, chosen: str
) -> None:
    assert parser_name({PARSER_ENV: value}) == chosen


def test_without_httptools_auto_is_h11_and_an_unknown_parser_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without(monkeypatch, "httptools")
    assert parser_name({}) == "h11"
    with pytest.raises(ConfigError, match="httptools is not installed"):
        parser_name({PARSER_ENV: "httptools"})
    with pytest.raises(ConfigError, match="expected one of auto, h11, httptools"):
        parser_name({PARSER_ENV: "picohttp"})


def test_a_gateway_runs_on_asyncios_loop_whatever_the_variable_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its descriptor guard is in the accept() asyncio's loop calls
    (tests/hostile/test_gateway_attacks.py shows it at work)."""
    monkeypatch.setenv(event_loop.ENV, "uvloop")

    assert event_loop.run_gateway(which()) == "asyncio"
