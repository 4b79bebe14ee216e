"""Opening a broker by its address: ``embedded`` or ``embedded://host:port`` is the
embedded broker of a ``wiremesh run`` on one machine (:mod:`wiremesh.messaging.embedded`),
``amqp://…`` or ``amqps://…`` RabbitMQ (:mod:`wiremesh.messaging.amqp`).

The one module that names every backend: :mod:`wiremesh.messaging.base` is the interface
they implement and imports none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wiremesh.errors import ConfigError
from wiremesh.messaging.base import Broker

if TYPE_CHECKING:
    from wiremesh.transport.tls import TlsFiles

__all__ = ["open_broker"]


def open_broker(
    url: str,
    *,
    data_dir: Path,
    mesh: str,
    tls: TlsFiles | None = None,
    quorum_queues: bool = False,
) -> Broker:
    """The backend for ``url``: ``embedded://host:port`` (the embedded broker the
    supervisor hosts), ``embedded`` (the one of the mesh running in ``data_dir``,
    found through its ``mesh.json``) or ``amqp://…`` / ``amqps://…`` (RabbitMQ). ``tls``:
    the mesh's client certificates, for the embedded broker of a mesh with TLS on;
    ``quorum_queues``: RabbitMQ quorum queues (``[broker] quorum_queues``)."""
    if url.startswith(("amqp://", "amqps://")):
        from wiremesh.messaging.amqp import AmqpBroker

        broker: Broker = AmqpBroker(url, mesh=mesh, quorum_queues=quorum_queues)
        return broker
    if url == "embedded" or url.startswith("embedded://"):
        from wiremesh.messaging.embedded import EmbeddedBroker

        return EmbeddedBroker.from_url(url, data_dir=data_dir, tls=tls)
    raise ConfigError(
        f"broker url {url!r}: expected 'embedded' or an 'amqp://user:password@host:port/' url"
    )
