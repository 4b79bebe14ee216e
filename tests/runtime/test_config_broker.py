"""The ``[broker]`` table and the per-service ``store`` of ``wiremesh.toml``."""

from __future__ import annotations

from pathlib import Path

import pytest

from wiremesh.errors import ConfigError
from wiremesh.runtime.config import config_from_text, default_config


def test_broker_defaults(tmp_path: Path) -> None:
    broker = default_config(tmp_path).broker
    assert broker.url == "embedded" and broker.embedded
    assert (broker.port, broker.prefetch, broker.attempts) == (0, 32, 5)
    assert (broker.initial_backoff, broker.max_backoff) == (0.5, 30.0)
    assert (broker.handler_timeout, broker.publish_timeout) == (60.0, 10.0)
    assert broker.quorum_queues is False
    assert broker.inbox_keep == 7 * 86400


def test_broker_and_store_settings_are_read(tmp_path: Path) -> None:
    config = config_from_text(
        """\
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/"
prefetch = 8
attempts = 2
initial_backoff = 0.1
max_backoff = 1
quorum_queues = true
inbox_keep = 0

[services.orders]
target = "shop.orders:Orders"
store = "postgresql+asyncpg://postgres@127.0.0.1/orders"
""",
        root=tmp_path,
    )
    assert not config.broker.embedded
    assert (config.broker.prefetch, config.broker.attempts) == (8, 2)
    assert config.broker.quorum_queues
    assert config.broker.inbox_keep == 0  # for ever
    assert config.services["orders"].store == "postgresql+asyncpg://postgres@127.0.0.1/orders"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[broker]\nurl = "kafka://x"\n', "wiremesh.toml:2: broker.url: broker url must be"),
        ("[broker]\nattempts = 0\n", "wiremesh.toml:2: broker.attempts:"),
        ("[broker]\ninbox_keep = -1\n", "wiremesh.toml:2: broker.inbox_keep:"),
        (
            "[broker]\ninitial_backoff = 2\nmax_backoff = 1\n",
            "wiremesh.toml:3: broker.max_backoff: max_backoff (1.0) must not be less",
        ),
        ("[broker]\nprefech = 3\n", "unknown setting (did you mean 'prefetch'?)"),
        (
            '[services.a]\ntarget = "m:A"\nstore = "orders.db"\n',
            "wiremesh.toml:3: services.a.store: store must be a SQLAlchemy async database url",
        ),
    ],
)
def test_bad_broker_settings_name_the_line(text: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    assert expected in str(caught.value)
