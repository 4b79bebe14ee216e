"""``[mesh.breaker]`` and ``[services.<name>.breaker]`` in wiremesh.toml: validated, merged
and handed to every node, whose caller breaks its circuits by them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from wiremesh.core.breaker import BreakerSettings
from wiremesh.core.retry import Backoff
from wiremesh.errors import ConfigError
from wiremesh.runtime.config import config_from_text
from wiremesh.runtime.node_process import NodeLaunch
from wiremesh.runtime.supervisor import NodeProcess, Supervisor

TEXT = """\
[mesh.breaker]
failures = 4
open_for = 2.0

[services.partners]
target = "app.partners:Partners"

[services.partners.breaker]
failures = 2

[services.orders]
target = "app.orders:Orders"
"""


def test_a_service_s_breaker_takes_what_it_sets_and_the_rest_from_the_mesh_s(
    tmp_path: Path,
) -> None:
    config = config_from_text(TEXT, root=tmp_path)
    assert config.mesh.breaker.failures == 4
    partners = config.breakers()["partners"]
    assert (partners.failures, partners.open_for, partners.window) == (2, 2.0, 20)
    assert "orders" not in config.breakers()


def test_every_node_s_launch_carries_the_breakers(tmp_path: Path) -> None:
    config = config_from_text(TEXT, root=tmp_path)
    supervisor = Supervisor(config, echo=lambda line: None)
    supervisor.registry = SimpleNamespace(address="127.0.0.1:7400")  # type: ignore[assignment]
    slot = NodeProcess(service="orders", slot=0, backoff=Backoff(), node_id="orders-1")
    launch = NodeLaunch.from_json(supervisor.launch_of(slot).to_json())
    assert BreakerSettings(**launch.breaker) == BreakerSettings(failures=4, open_for=2.0)
    assert BreakerSettings(**launch.breakers["partners"]) == BreakerSettings(
        failures=2, open_for=2.0
    )


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (
            "[mesh.breaker]\nfailures = 0\n",
            "wiremesh.toml:2: mesh.breaker.failures",
            "greater than or equal to 1",
        ),
        (
            "[mesh.breaker]\nfailure_rate = 2\n",
            "mesh.breaker.failure_rate",
            "less than or equal to 1",
        ),
        ("[mesh.breaker]\nopen_for = 90.0\n", "mesh.breaker", "max_open_for"),
        ("[mesh.breaker]\nfailures_in_a_row = 3\n", "mesh.breaker.failures_in_a_row", ""),
        (
            '[services.a]\ntarget = "a:A"\n[services.a.breaker]\nopen_for = 61\n',
            "wiremesh.toml:3: services.a.breaker",
            "open_for (61.0) must not be longer than max_open_for (60.0)",
        ),
        (  # each table holds alone; together, the service's open_for is too long
            '[mesh.breaker]\nmax_open_for = 10.0\n[services.a]\ntarget = "a:A"\n'
            "[services.a.breaker]\nopen_for = 20\n",
            "services.a.breaker with mesh.breaker",
            "open_for (20.0) must not be longer than max_open_for (10.0)",
        ),
    ],
)
def test_bad_breaker_settings_are_reported_with_their_key(
    tmp_path: Path, text: str, where: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    message = str(caught.value)
    assert where in message and words in message, message


async def test_the_gateways_http_door_breaks_its_circuits_by_the_same_settings(
    tmp_path: Path,
) -> None:
    from wiremesh.runtime.gateway_process import gateway_of

    config = config_from_text(TEXT, root=tmp_path)
    gateway = gateway_of(config, "127.0.0.1:1", "gw-test")
    assert gateway.http is not None
    try:
        breakers = gateway.http.caller.breakers
        assert breakers.default == BreakerSettings(failures=4, open_for=2.0)
        assert breakers.settings("partners") == BreakerSettings(failures=2, open_for=2.0)
        assert breakers.settings("orders") == breakers.default
    finally:
        await gateway.http.close()
