"""Who may call through the HTTP door: ``Authorization: Bearer <JWT>`` and access rules.

The token is checked by the gateway's :class:`~wiremesh.gateway.auth.TokenVerifier` and
the service's rules (``[gateway.services.<name>]`` scopes and roles) by
:func:`~wiremesh.gateway.auth.check_access`: the same keys and rules as for WebSockets.
Only the ``Authorization`` header carries a token here: a cookie would let another site's
page make a browser call on its user's behalf (cross-site request forgery).

A client sends the same token on many requests; a verified token is remembered (at most
``cache_size`` of them) until it expires, so that a request pays a dictionary lookup, not
a signature check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from wiremesh.errors import Unauthenticated
from wiremesh.gateway.auth import Identity, TokenVerifier, check_access
from wiremesh.gateway.settings import SocketServiceSettings

__all__ = ["BearerCheck"]


class BearerCheck:
    """``check(authorization_header, service) -> principal``, raising ``Unauthenticated``
    (no, bad or expired token) or ``PermissionDenied`` (the service's rules refuse it)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        rules: Mapping[str, SocketServiceSettings] | None = None,
        *,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = verifier
        self.rules = dict(rules or {})
        self.cache_size = cache_size
        self.clock = clock
        self._verified: dict[str, Identity] = {}

    def __call__(self, authorization: str | None, service: str) -> str:
        identity = self.identity(authorization)
        check_access(identity.claims, self.rules.get(service))
        return identity.principal

    def identity(self, authorization: str | None) -> Identity:
        """The verified identity of an ``Authorization`` header's bearer token."""
        if authorization is None:
            raise Unauthenticated("no token: send 'Authorization: Bearer <JWT>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <JWT>'")
        now = self.clock()
        identity = self._verified.get(token)
        if identity is not None and now < identity.expires_at + self.verifier.leeway:
            return identity
        identity = self.verifier.verify(token, now=now)
        if now >= identity.expires_at + self.verifier.leeway:
            raise Unauthenticated("the token has expired")
        if len(self._verified) >= self.cache_size:
            self._verified.clear()  # simpler than an LRU; refilled at one check per token
        self._verified[token] = identity
        return identity
