"""The RabbitMQ backend (aio-pika): :class:`AmqpBroker`.

- :mod:`.topology`: names, arguments, properties and headers (no I/O);
- :mod:`.publisher`: confirmed publishing, coalesced per loop turn;
- :mod:`.consumer`: one binding's consumer and how a message is settled;
- :mod:`.dead`: the dead-letter queue for ``wiremesh dlq``;
- :mod:`.failures`: aio-pika / aiormq errors as wiremesh errors;
- :mod:`.broker`: the :class:`~wiremesh.messaging.base.Broker` itself.
"""

from __future__ import annotations

from wiremesh.messaging.amqp.broker import AmqpBroker
from wiremesh.messaging.amqp.topology import Topology

__all__ = ["AmqpBroker", "Topology"]
