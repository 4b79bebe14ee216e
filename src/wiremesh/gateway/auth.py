"""Who may open a session: tokens (JWT), Origin, and each service's access rules.

No I/O beyond reading key files once, when the :class:`TokenVerifier` is built.

- **Tokens.** A JWT signed with HS256 (a shared secret) or RS256/ES256 (public keys, or
  a JWKS file whose keys are chosen by the token's ``kid``). ``exp`` and ``sub`` are
  required; ``exp``, ``nbf``, and when configured ``aud`` and ``iss`` are checked. The
  principal is ``sub``.
- **Carriers.** ``Sec-WebSocket-Protocol: wiremesh.v1, bearer.<token>``, the
  ``wiremesh_token`` cookie, or (only when enabled) ``?token=``; the first found wins, in
  that order. ``Authorization: Bearer <token>`` is read too, for non-browser clients.
- **Origin.** Exact matches against an allow-list; a request without ``Origin`` (not a
  browser) passes, as no browser can send one without it.
- **Access.** A service's rules list required scopes (every one) and roles (any one).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt

from wiremesh.errors import ConfigError, PermissionDenied, Unauthenticated
from wiremesh.gateway.settings import AuthSettings, SocketServiceSettings
from wiremesh.runtime.private import private_folder

__all__ = [
    "BEARER_PREFIX",
    "COOKIE_NAME",
    "SUBPROTOCOL",
    "Identity",
    "TokenVerifier",
    "check_access",
    "dev_secret",
    "find_token",
    "mint_token",
    "origin_allowed",
    "scopes_of",
]

SUBPROTOCOL = "wiremesh.v1"
BEARER_PREFIX = "bearer."
COOKIE_NAME = "wiremesh_token"
#: where ``wiremesh run`` keeps the development secret, under the data folder
DEV_SECRET_FILE = Path("gateway") / "dev-secret"


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token: its subject, its expiry (unix seconds) and every claim."""

    principal: str
    expires_at: float
    claims: Mapping[str, Any]


class TokenVerifier:
    """Checks tokens against the configured keys; :meth:`verify` raises
    :class:`~wiremesh.Unauthenticated` with the reason (never the token) in its message."""

    def __init__(
        self, auth: AuthSettings, *, root: Path = Path("."), dev_secret: str | None = None
    ) -> None:
        self.audience = auth.audience or None
        self.issuer = auth.issuer or None
        self.leeway = auth.leeway
        self._secret: str | None = None
        self._keys: list[Any] = []
        self._jwks: jwt.PyJWKSet | None = None
        self._cache: dict[str, tuple[Identity, float]] = {}
        secret = auth.secret
        if auth.secret_file:
            secret = _read(root / auth.secret_file, "gateway.auth.secret_file").strip()
        if not auth.configured and dev_secret:
            secret = dev_secret
        if secret:
            self._secret = secret
        for path in auth.public_keys:
            pem = _read(root / path, "gateway.auth.public_keys")
            self._keys.append(_public_key(pem, path))
        if auth.jwks_file:
            text = _read(root / auth.jwks_file, "gateway.auth.jwks_file")
            try:
                self._jwks = jwt.PyJWKSet.from_json(text)
            except (jwt.PyJWKSetError, ValueError) as exc:
                raise ConfigError(f"gateway.auth.jwks_file: not a usable JWKS: {exc}") from None
        algorithms: list[str] = list(auth.algorithms)
        if not algorithms:
            if self._secret:
                algorithms.append("HS256")
            if self._keys or self._jwks:
                algorithms += ["RS256", "ES256"]
        self.algorithms = algorithms
        if not (self._secret or self._keys or self._jwks):
            raise ConfigError(
                "the gateway has no key to check tokens with: set gateway.auth.secret, "
                "secret_file, public_keys or jwks_file"
            )

    #: tokens verified lately (a browser reconnecting, or opening several tabs, presents
    #: the same one): their signature is not checked again, their times are
    CACHE_SIZE = 4096

    @property
    def cached(self) -> int:
        """How many tokens are in the cache now (at most :attr:`CACHE_SIZE`)."""
        return len(self._cache)

    def verify(self, token: str, *, now: float | None = None) -> Identity:
        """The identity ``token`` proves at ``now`` (default: the clock's time)."""
        at = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is None:
            identity = self._verify(token)
            nbf = identity.claims.get("nbf")
            cached = (identity, float(nbf) if isinstance(nbf, int | float) else 0.0)
            cache = self._cache
            if len(cache) >= self.CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[token] = cached
        identity, not_before = cached
        if at >= identity.expires_at + self.leeway:
            self._cache.pop(token, None)
            raise Unauthenticated("the token has expired")
        if at < not_before - self.leeway:
            raise Unauthenticated("the token is not valid yet (nbf)")
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise Unauthenticated(f"token algorithm {algorithm!r} is not accepted")
        last: Unauthenticated | None = None
        for key in self._keys_for(algorithm, header.get("kid")):
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={
                        "require": ["exp", "sub"],
                        # checked by verify(), against its clock, for cached tokens too
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_aud": self.audience is not None,
                        "verify_iss": self.issuer is not None,
                    },
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, TypeError, ValueError):
                last = Unauthenticated("the token's signature does not verify")
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("the token has expired") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("the token is not valid yet (nbf)") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated("the token is for another audience (aud)") from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated("the token is from another issuer (iss)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(f"the token has no {exc.claim!r} claim") from None
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"the token is invalid: {type(exc).__name__}") from None
            if not isinstance(claims.get("exp"), int | float):
                raise Unauthenticated("the token's 'exp' is not a number")
            nbf = claims.get("nbf")
            if nbf is not None and not isinstance(nbf, int | float):
                raise Unauthenticated("the token's 'nbf' is not a number")
            subject = claims.get("sub")
            if not isinstance(subject, str) or not subject:
                raise Unauthenticated("the token's 'sub' is not a non-empty string")
            return Identity(subject, float(claims["exp"]), claims)
        raise last or Unauthenticated("no key can check this token")

    def _keys_for(self, algorithm: str, kid: object) -> list[Any]:
        if algorithm.startswith("HS"):
            return [self._secret] if self._secret else []
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        family: Any = rsa.RSAPublicKey if algorithm.startswith("RS") else ec.EllipticCurvePublicKey
        keys = list(self._keys)
        if self._jwks is not None:
            for jwk in self._jwks.keys:
                if kid is None or jwk.key_id == kid:
                    keys.append(jwk.key)
        return [key for key in keys if isinstance(key, family)]


def _read(path: Path, setting: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _public_key(pem: str, path: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(pem.encode())
    except ValueError:
        pass
    try:  # a certificate carries its public key too
        from cryptography.x509 import load_pem_x509_certificate

        return load_pem_x509_certificate(pem.encode()).public_key()
    except ValueError:
        raise ConfigError(
            f"gateway.auth.public_keys: {path} is not a PEM public key or certificate"
        ) from None


# ------------------------------------------------------------------------------ carriers


def find_token(
    headers: Iterable[tuple[bytes, bytes]],
    subprotocols: Sequence[str],
    query_string: bytes,
    *,
    cookie: bool = True,
    query: bool = False,
) -> str | None:
    """The token a request carries, or None."""
    for protocol in subprotocols:
        if protocol.startswith(BEARER_PREFIX) and len(protocol) > len(BEARER_PREFIX):
            return protocol[len(BEARER_PREFIX) :]
    cookie_header = ""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"cookie":
            cookie_header += value.decode("latin-1") + ";"
    if cookie and cookie_header:
        jar = SimpleCookie()
        try:
            jar.load(cookie_header)
        except CookieError:
            jar = SimpleCookie()
        morsel = jar.get(COOKIE_NAME)
        if morsel is not None and morsel.value:
            return morsel.value
    if query and query_string:
        values = parse_qs(query_string.decode("latin-1")).get("token")
        if values and values[0]:
            return values[0]
    return None


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request with this ``Origin`` header may go on (exact match; no header
    means no browser)."""
    return origin is None or origin in allowed


# ------------------------------------------------------------------------------ access


def scopes_of(claims: Mapping[str, Any]) -> set[str]:
    """The scopes a token grants: ``scope`` (space-separated) and ``scp`` (a list)."""
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        found.update(scp.split())
    elif isinstance(scp, list):
        found.update(s for s in scp if isinstance(s, str))
    return found


def _roles_of(claims: Mapping[str, Any]) -> set[str]:
    roles = claims.get("roles")
    if isinstance(roles, str):
        return set(roles.split())
    if isinstance(roles, list):
        return {r for r in roles if isinstance(r, str)}
    return set()


def check_access(claims: Mapping[str, Any], rules: SocketServiceSettings | None) -> None:
    """Raise :class:`~wiremesh.PermissionDenied` unless ``claims`` meet ``rules``."""
    if rules is None:
        return
    missing = set(rules.scopes) - scopes_of(claims)
    if missing:
        raise PermissionDenied(f"the token lacks the scope(s) {', '.join(sorted(missing))}")
    if rules.roles and not set(rules.roles) & _roles_of(claims):
        raise PermissionDenied(f"the token has none of the roles {', '.join(rules.roles)}")


# ------------------------------------------------------------------------------ minting


def dev_secret(data_dir: Path, *, create: bool = True) -> str | None:
    """The development HS256 secret under ``data_dir`` (made, mode 0600, if missing and
    ``create``)."""
    path = data_dir / DEV_SECRET_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    private_folder(path.parent)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another process
        return path.read_text().strip() or None
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def mint_token(
    secret: str,
    *,
    subject: str = "dev",
    ttl: float = 3600.0,
    scopes: Iterable[str] = (),
    roles: Iterable[str] = (),
    audience: str | None = None,
    issuer: str | None = None,
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for ``subject`` that expires ``ttl`` seconds from now."""
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {
        **(claims or {}),
        "sub": subject,
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    scope_list = list(scopes)
    if scope_list:
        payload["scope"] = " ".join(scope_list)
    role_list = list(roles)
    if role_list:
        payload["roles"] = role_list
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm="HS256")


def claims_json(claims: Mapping[str, Any]) -> str:
    """The claims as the JSON a node receives."""
    return json.dumps(claims, separators=(",", ":"), default=str)
