"""Which address a node, a gateway or a metrics endpoint tells the mesh to reach it at.

A process binds ``mesh.host``; other hosts must be told an address they can reach. With
``[mesh] advertise`` set, that is the answer. Otherwise a specific bind address is its own
answer, and a wildcard bind (``0.0.0.0``, ``::``) advertises the local address that
reaches the registry: the one the kernel would use to send to it (no packet is sent).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

__all__ = ["WILDCARDS", "advertised_host", "with_host"]

WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def advertised_host(bind: str, registry: str, advertise: str | None = None) -> str:
    """The host to advertise for a server bound to ``bind``, in a mesh whose registry is
    at ``registry`` (``host:port`` or a ``redis://`` URL)."""
    if advertise:
        return advertise
    if bind not in WILDCARDS:
        return bind
    host, port = _registry_host_port(registry)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))  # a UDP "connect" only picks the route
            local: str = probe.getsockname()[0]
    except OSError:
        return socket.gethostname()
    return local


def with_host(address: str, host: str) -> str:
    """``host:port`` with another host (IPv6 hosts in brackets)."""
    port = address.rpartition(":")[2]
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{shown}:{port}"


def _registry_host_port(registry: str) -> tuple[str, int]:
    if "://" in registry:
        parts = urlsplit(registry)
        return parts.hostname or "127.0.0.1", parts.port or 6379
    host, _, port = registry.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port) if port.isdigit() else 1
