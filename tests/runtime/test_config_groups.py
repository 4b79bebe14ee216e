"""``groups = [...]`` of a service in wiremesh.toml: validated, and handed to its nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fixtures.meshes import LoneNode, eventually
from wiremesh.client import MeshClient
from wiremesh.core.retry import Backoff
from wiremesh.errors import ConfigError
from wiremesh.registry.embedded import RegistryServer
from wiremesh.runtime import config as config_module
from wiremesh.runtime.config import config_from_text
from wiremesh.runtime.node_process import NodeLaunch
from wiremesh.runtime.supervisor import NodeProcess, Supervisor

GROUPS = """\
[services.cache]
target = "app.cache:Cache"
replicas = 2
groups = ["eu", "hot:tier-1"]

[services.orders]
target = "app.orders:Orders"
"""


def test_groups_of_a_service_are_read_and_default_to_none(tmp_path: Path) -> None:
    config = config_from_text(GROUPS, root=tmp_path)
    assert config.services["cache"].groups == ["eu", "hot:tier-1"]
    assert config.services["orders"].groups == []


@pytest.mark.parametrize(
    ("value", "key", "words"),
    [
        ('["eu", "not ok"]', "services.cache.groups[1]", "invalid group name"),
        ('["-leading-dash"]', "services.cache.groups[0]", "invalid group name"),
        ('"eu"', "services.cache.groups", "list"),
        ("[1]", "services.cache.groups[0]", "string"),
    ],
)
def test_a_bad_group_is_reported_with_its_line_and_key(
    tmp_path: Path, value: str, key: str, words: str
) -> None:
    text = f'[services.cache]\ntarget = "app.cache:Cache"\ngroups = {value}\n'
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    message = str(caught.value)
    assert f"wiremesh.toml:3: {key}: " in message
    assert words in message


def test_the_setting_is_documented_in_the_module_docstring() -> None:
    assert config_module.__doc__ is not None
    assert "groups = [" in config_module.__doc__


def test_the_launch_of_a_node_carries_its_services_groups(tmp_path: Path) -> None:
    config = config_from_text(GROUPS, root=tmp_path)
    supervisor = Supervisor(config, echo=lambda line: None)
    supervisor.registry = SimpleNamespace(address="127.0.0.1:7400")  # type: ignore[assignment]
    launches: dict[str, Any] = {}
    for service in ("cache", "orders"):
        slot = NodeProcess(service=service, slot=0, backoff=Backoff(), node_id="x-1")
        launches[service] = supervisor.launch_of(slot)
    assert launches["cache"].groups == ["eu", "hot:tier-1"]
    assert launches["orders"].groups == []
    again = NodeLaunch.from_json(launches["cache"].to_json())
    assert again.groups == ["eu", "hot:tier-1"]


async def test_a_node_process_joins_the_groups_of_its_launch(tmp_path: Path) -> None:
    """``python -m wiremesh.runtime.node_process`` registers with the groups it was given."""
    registry = RegistryServer(ttl=1.5)
    await registry.start()
    node = LoneNode("svc_echo:Echo", "echo", registry.address, tmp_path)
    node.launch.groups = ["blue", "green"]
    client = MeshClient(registry.address)
    try:
        node.start()
        await client.start()
        found = await eventually(lambda: client.nodes("echo"), 15, "the echo node to register")
        assert found[0].groups == ("blue", "green")
    finally:
        node.stop()
        await client.close()
        await asyncio.wait_for(registry.stop(), 5)
