"""Opening a registry by its address: ``host:port`` is the embedded registry of a
``wiremesh run`` on one machine, ``redis://…`` or ``rediss://…`` a mesh that spans
machines (:mod:`wiremesh.registry.redis`)."""

from __future__ import annotations

from wiremesh.core.defaults import HEARTBEAT_INTERVAL, TTL
from wiremesh.core.names import is_redis_url
from wiremesh.registry.base import Registry
from wiremesh.transport.tls import TlsFiles

__all__ = ["open_registry"]


def open_registry(
    address: str,
    *,
    mesh: str = "",
    tls: TlsFiles | None = None,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ttl: float = TTL,
    join_secret: str | None = None,
) -> Registry:
    """The registry at ``address``; ``mesh`` names the mesh's keys in Redis (a Redis URL
    may name it in its fragment instead: ``redis://host/0#shop``). ``join_secret``: what
    admits a node to an embedded registry (Redis admits whoever may write to it: its
    AUTH, ACLs and TLS are a Redis mesh's admission)."""
    if is_redis_url(address):
        from wiremesh.registry.redis import RedisRegistry

        return RedisRegistry(
            address, mesh=mesh, tls=tls, heartbeat_interval=heartbeat_interval, ttl=ttl
        )
    from wiremesh.registry.embedded import EmbeddedRegistry

    return EmbeddedRegistry(
        address,
        credentials=tls.channel_credentials() if tls else None,
        heartbeat_interval=heartbeat_interval,
        join_secret=join_secret,
    )
