"""Tests of wiremesh.runtime.settings and wiremesh.gateway.settings: the defaults that the
documentation spells out are the models' own."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wiremesh.gateway import settings as gateway_settings
from wiremesh.runtime import config
from wiremesh.runtime.settings import MeshConfig

#: settings whose documented value is an example, not the default
EXAMPLES = {"mesh.name", "gateway.services"}


def documented(doc: str | None) -> dict[str, Any]:
    """The TOML example of a module docstring: the block after "spelled out::"."""
    assert doc is not None
    block = doc.split("spelled out::\n", 1)[1].split("\nWith ``backend", 1)[0]
    return tomllib.loads(textwrap.dedent(block))


def plain(value: Any) -> Any:
    """``value`` as TOML writes it: paths as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def differences(written: dict[str, Any], defaults: dict[str, Any], at: str) -> list[str]:
    """Each documented value that is not the default, as ``key: documented != default``."""
    found = []
    for key, value in written.items():
        where = f"{at}.{key}"
        if where in EXAMPLES:
            continue
        assert key in defaults, f"{where} is documented but is no setting"
        default = defaults[key]
        if isinstance(value, dict):
            found += differences(value, default, where)
        elif value != plain(default):
            found.append(f"{where}: {value!r} != {plain(default)!r}")
    return found


@pytest.mark.parametrize("table", ["mesh", "registry", "broker", "tls", "restart"])
def test_each_mesh_table_documents_its_defaults(table: str) -> None:
    written = documented(config.__doc__)[table]
    assert differences(written, MeshConfig().model_dump()[table], table) == []


def test_the_gateway_tables_document_their_defaults() -> None:
    written = documented(gateway_settings.__doc__)["gateway"]
    defaults = gateway_settings.GatewaySettings().model_dump()
    assert differences(written, defaults, "gateway") == []
