"""The broker backends the behavioural messaging tests run on.

``broker_url`` is ``embedded`` (the broker runs in the test's event loop, data in a
temporary folder) or ``amqp`` (RabbitMQ at 127.0.0.1:5672, guest/guest; skipped with the
reason when RabbitMQ is not there or the backend does not exist yet).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
from collections.abc import Iterator

import pytest

from tests.fixtures.postgres import PG_HOST, PG_PORT, fresh_database, postgres_running

AMQP_URL = os.environ.get("WIREMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def port_open(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def amqp_backend_exists() -> bool:
    try:
        if importlib.util.find_spec("wiremesh.messaging.amqp") is None:
            return False
        module = importlib.import_module("wiremesh.messaging.amqp")
    except ImportError:
        return False
    return hasattr(module, "AmqpBroker")


@pytest.fixture(params=["embedded", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "embedded":
        return "embedded"
    if not amqp_backend_exists():
        pytest.skip("the amqp backend (wiremesh.messaging.amqp) is not there yet")
    if not port_open():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test run, dropped at the end."""
    if not postgres_running():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with fresh_database() as name:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None (the default SQLite file) or the url of a PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_database")
    return url
