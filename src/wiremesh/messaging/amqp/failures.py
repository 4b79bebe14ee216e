"""Foreign exceptions of aio-pika, aiormq and the socket, translated once, here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import aiormq.exceptions
import pamqp.exceptions

from wiremesh.errors import (
    BrokerUnavailable,
    ConfigError,
    PermissionDenied,
    Unauthenticated,
    WiremeshError,
)

__all__ = ["CLOSE_TIMEOUT", "DISCONNECTED", "broker_errors", "translate"]

#: seconds closing a channel or the connection (or cancelling a consumer) may take: a
#: broker that is gone never answers
CLOSE_TIMEOUT = 5.0

#: what a lost connection or channel looks like from inside aio-pika / aiormq
DISCONNECTED: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPChannelError,
    aiormq.exceptions.DeliveryError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika: "channel closed", "connection closed"
)

_FOREIGN: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    pamqp.exceptions.PAMQPException,
    *DISCONNECTED,
)


def translate(exc: BaseException, doing: str) -> WiremeshError:
    """The wiremesh error for ``exc``, raised while ``doing`` (``"declare queue q"``)."""
    if isinstance(exc, WiremeshError):
        return exc
    if isinstance(
        exc,
        aiormq.exceptions.AuthenticationError | aiormq.exceptions.ProbableAuthenticationError,
    ):
        return Unauthenticated(f"RabbitMQ refused the credentials ({doing}): {exc}")
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused | pamqp.exceptions.AMQPAccessRefused):
        return PermissionDenied(f"RabbitMQ refused access ({doing}): {exc}")
    if isinstance(
        exc,
        aiormq.exceptions.ChannelPreconditionFailed | pamqp.exceptions.AMQPPreconditionFailed,
    ):
        return ConfigError(
            f"RabbitMQ refused to {doing}: {exc}. A queue or exchange of that name exists "
            "with other arguments (durability, quorum, single active consumer): delete it, "
            "or configure the mesh as it was declared"
        )
    return BrokerUnavailable(f"RabbitMQ could not {doing}: {type(exc).__name__}: {exc}")


@contextmanager
def broker_errors(doing: str) -> Iterator[None]:
    """Run the block; any aio-pika, aiormq or socket error leaves it as a wiremesh error."""
    try:
        yield
    except WiremeshError:
        raise
    except _FOREIGN as exc:
        raise translate(exc, doing) from exc
