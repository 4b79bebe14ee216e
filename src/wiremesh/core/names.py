"""Parsing the names users write: ``service.method`` and ``service@node-id.method``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wiremesh.errors import InvalidPayload

__all__ = [
    "SERVICE_NAME",
    "Target",
    "is_redis_url",
    "method_path",
    "parse_target",
    "redact_url",
    "split_mesh",
]

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_METHOD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TARGET = re.compile(
    r"^(?P<service>[a-z][a-z0-9_-]{0,62})(?:@(?P<node>[A-Za-z0-9_:-]+))?\.(?P<method>[A-Za-z_][A-Za-z0-9_]*)$"
)


@dataclass(frozen=True, slots=True)
class Target:
    service: str
    method: str
    node: str | None = None

    @property
    def path(self) -> str:
        return method_path(self.service, self.method)

    def __str__(self) -> str:
        where = f"{self.service}@{self.node}" if self.node else self.service
        return f"{where}.{self.method}"


def parse_target(text: str, *, node: str | None = None) -> Target:
    """``"orders.create"`` or ``"orders@orders-3f9a.create"``; ``node`` overrides the node.

    Raises :class:`InvalidPayload` with the accepted forms when the text is not one of them.
    """
    match = _TARGET.fullmatch(text)
    if match is None:
        raise InvalidPayload(
            f"bad call target {text!r}: expected 'service.method' or 'service@node-id.method'"
        )
    return Target(match["service"], match["method"], node or match["node"])


_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


def check_group(name: str) -> str:
    """``name`` if it is a valid group name, else :class:`InvalidPayload`."""
    if not isinstance(name, str) or not _GROUP.fullmatch(name):
        raise InvalidPayload(
            f"bad group name {name!r}: letters, digits, '_', '.', ':' and '-', at most 63"
        )
    return name


def method_path(service: str, method: str) -> str:
    """The gRPC method path of a service method: ``/<service>/<method>``."""
    return f"/{service}/{method}"


def is_method_name(name: str) -> bool:
    return _METHOD_NAME.fullmatch(name) is not None


def redact_url(url: str) -> str:
    """``url`` with its password hidden, for logs, errors and displays:
    ``amqp://app:secret@host/`` → ``amqp://app:***@host/``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = credentials.partition(":")
    hidden = f"{user}:***" if colon or not user else "***"
    return f"{scheme}://{hidden}@{host}{slash}{path}"


def is_redis_url(address: str) -> bool:
    return address.startswith(("redis://", "rediss://"))


def split_mesh(url: str) -> tuple[str, str | None]:
    """``redis://host/0#shop`` → (``redis://host/0``, ``"shop"``): the fragment names the
    mesh when the URL alone must find it (``wiremesh nodes --mesh``)."""
    base, _, fragment = url.partition("#")
    return base, fragment or None
