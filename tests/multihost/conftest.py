"""Fixtures for tests that span real hosts (network namespaces, see ``hosts.py``).

Every fixture is function-scoped: each test builds its own network (a few ms per host) and
leaves nothing behind. Outside root, or without ``ip``/``nft``, the tests skip with the
reason and a warning at the end of the run; under ``CI=true`` a skip is a failure
(``tests/conftest.py``). The shared services are the machine's own on loopback: Redis on
6379, RabbitMQ on 5672 (guest/guest), PostgreSQL on 5432; a test that needs one skips when
it is not running.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .hosts import Network, RedisInstance, missing_requirements, redis_server_path

REDIS_PORT = 6379
RABBITMQ_PORT = 5672
POSTGRES_PORT = 5432

_skip_reasons: set[str] = set()  # shown again in the terminal summary, where nobody misses it


def _skip(reason: str) -> None:
    _skip_reasons.add(reason)
    pytest.skip(reason)


@pytest.fixture
def netns_support() -> None:
    """Skips the test, with the reason, where test networks cannot be built."""
    missing = missing_requirements()
    if missing:
        _skip(f"multihost tests need {', '.join(missing)}")


@pytest.fixture
def network(netns_support: None, tmp_path: Path) -> Iterator[Network]:
    """A fresh bridge to add hosts to; its processes' logs are under ``tmp_path``."""
    with Network(workdir=tmp_path) as network:
        yield network


def _forward_shared(network: Network, name: str, port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        _skip(f"multihost tests need {name} on 127.0.0.1:{port} (it is not running)")
    return network.forward(port)


@pytest.fixture
def shared_redis(network: Network) -> str:
    """The machine's Redis as the hosts reach it: ``"10.213.0.1:PORT"``."""
    return _forward_shared(network, "Redis", REDIS_PORT)


@pytest.fixture
def shared_rabbitmq(network: Network) -> str:
    """The machine's RabbitMQ (guest/guest) as the hosts reach it."""
    return _forward_shared(network, "RabbitMQ", RABBITMQ_PORT)


@pytest.fixture
def shared_postgres(network: Network) -> str:
    """The machine's PostgreSQL (trust) as the hosts reach it."""
    return _forward_shared(network, "PostgreSQL", POSTGRES_PORT)


@pytest.fixture
def private_redis(network: Network) -> RedisInstance:
    """A Redis of this test alone, which it may kill, pause and restart."""
    if redis_server_path() is None:
        _skip("multihost tests need redis-server (apt-get install redis-server)")
    return network.start_redis()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in sorted(_skip_reasons):
        terminalreporter.write_sep("!", f"skipped: {reason}", yellow=True, bold=True)
