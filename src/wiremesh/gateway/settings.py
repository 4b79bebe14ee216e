"""The ``[gateway]`` tables of ``wiremesh.toml``: the browser gateway's settings.

Every setting has a default; a complete example with the defaults spelled out::

    [gateway]
    enabled = "auto"            # true | false | "auto": on when a service has @on_socket
    host = "127.0.0.1"          # address the gateway binds to
    port = 8080                 # 0 = any free port
    public_url = ""             # the URL browsers reach this gateway at, registered in
                                # the mesh and printed by `wiremesh run` (behind a proxy or
                                # a load balancer: "https://app.example.com"); empty: made
                                # of the scheme, the advertised host and the port
    tls = false                 # wss/https with cert and key (relative to mesh.data_dir)
    cert = "certs/node.pem"
    key = "certs/node-key.pem"
    allow_plain = false         # plain ws/http on a non-loopback host needs this
    trusted_proxies = []        # addresses or networks of reverse proxies in front: a
                                # connection from one is counted (per-IP limits, logs) by
                                # the client its X-Forwarded-For names
    origins = []                # allowed Origin values, exact ("https://app.example.com");
                                # the gateway's own origins are always allowed
    static = ""                 # a folder served at / (relative to this file's folder)
    cookie_token = true         # read the token from the wiremesh_token cookie
    query_token = false         # read it from ?token= (leaks into logs: off by default)
    refresh_before = 30.0       # seconds before expiry the browser is asked to refresh

    [gateway.auth]              # JWT; with none of secret/secret_file/public_keys/jwks_file
    secret = ""                 # on loopback `wiremesh run` makes a development secret
    secret_file = ""            # a file holding the HS256 secret
    public_keys = []            # PEM files of RS256/ES256 public keys
    jwks_file = ""              # a JWKS (JSON) file of public keys, chosen by `kid`
    audience = ""               # the `aud` a token must carry (unchecked when empty)
    issuer = ""                 # the `iss` a token must carry (unchecked when empty)
    algorithms = []             # default: HS256 with a secret, RS256 and ES256 with keys
    leeway = 0.0                # seconds of clock skew allowed on exp and nbf

    [gateway.limits]
    max_message_bytes = 65536   # largest WebSocket frame and message, either way
    compression = false         # permessage-deflate (bounded: 4 KiB window, max size)
    messages_per_second = 200.0 # per connection, a token bucket ...
    burst = 400                 # ... of this size; over it: close 4029
    connections_per_principal = 100
    connections_per_ip = 1000   # over either: 429 with Retry-After
    handshake_timeout = 10.0    # seconds to complete the opening handshake
    idle_timeout = 300.0        # seconds without a message from the browser: close 4000
                                # (0: never)
    ping_interval = 20.0        # keepalive pings (0: none); no pong within
    ping_timeout = 20.0         # ping_timeout seconds closes the connection
    max_queued = 256            # messages waiting for a slow browser ...
    max_queued_bytes = 1048576  # ... or bytes (a single message always fits); over: 4008

    [gateway.limits.channels]   # channels (docs/channels.md)
    max_subscriptions = 128     # channels one session may subscribe to; over: error 4429
    max_publish_bytes = 65536   # the largest publication a browser sends; over: error 4413
    subscribe_timeout = 10.0    # seconds to decide a subscription; over: error 4503
    presence_ttl = 15.0         # seconds a dead gateway's members stay in presence
    max_pending = 1000          # publications held for a subscription being decided;
                                # over: error 4503

    [gateway.http]              # the HTTP door: POST /rpc/<service>/<method> (docs/http.md)
    enabled = true              # serve /rpc, /openapi.json, /docs and /readyz
    docs = true                 # serve /openapi.json and /docs
    max_body = 1048576          # bytes of a request body; over it: 413
    rate = 100.0                # requests per second per principal, a token bucket ...
    burst = 200                 # ... of this size; over it: 429 with Retry-After
    concurrency = 1024          # requests in flight in this gateway, counted once their
                                # body is read; over it: 503
    concurrency_per_principal = 128  # requests of one principal in flight, its bodies
                                # being read included; over it: 429
    default_timeout = 10.0      # seconds of a call without a Wiremesh-Timeout header
    max_timeout = 60.0          # the most a Wiremesh-Timeout header gets
    body_timeout = 10.0         # seconds to send the request body; over it: 408

    [gateway.services.chat]     # access rules and limits of one service's sockets
    scopes = ["chat:write"]     # every one of these scopes is required ...
    roles = []                  # ... and one of these roles, when any is listed
    max_message_bytes = 65536   # overrides gateway.limits.max_message_bytes
    text = false                # forward text frames to the node (else: close 1003)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from wiremesh.core.defaults import (
    HOST,
    HTTP_BODY_TIMEOUT,
    HTTP_MAX_TIMEOUT,
    HTTP_TIMEOUT,
    MAX_PUBLISH_BYTES,
)

__all__ = [
    "AuthSettings",
    "DashboardSettings",
    "GatewaySettings",
    "HttpSettings",
    "LimitSettings",
    "SocketServiceSettings",
    "is_loopback",
]


def _not_empty(value: object) -> object:
    if value == "":
        from pydantic_core import PydanticCustomError

        raise PydanticCustomError("empty_path", "a path must not be empty")
    return value


_Path = Annotated[Path, BeforeValidator(_not_empty)]
_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_MessageBytes = Annotated[int, Field(ge=125, le=64 * 1024 * 1024)]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AuthSettings(BaseModel):
    """``[gateway.auth]``: how browser tokens (JWT) are checked."""

    model_config = ConfigDict(extra="forbid")

    secret: str = ""
    secret_file: str = ""
    public_keys: list[_Path] = Field(default_factory=list)
    jwks_file: str = ""
    audience: str = ""
    issuer: str = ""
    algorithms: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "ES256", "ES384"]] = (
        Field(default_factory=list)
    )
    leeway: _Seconds = 0.0

    @property
    def configured(self) -> bool:
        """Whether any key material is set (else a development secret is used)."""
        return bool(self.secret or self.secret_file or self.public_keys or self.jwks_file)


class ChannelLimits(BaseModel):
    """``[gateway.limits.channels]``: what one session may do with channels."""

    model_config = ConfigDict(extra="forbid")

    #: channels one session may be subscribed to (or subscribing to) at once
    max_subscriptions: int = Field(default=128, ge=1)
    #: the largest publication a browser may send, in bytes of JSON
    #: (at most 200 KiB: the embedded engine takes messages up to 256 KiB)
    max_publish_bytes: int = Field(default=MAX_PUBLISH_BYTES, ge=1, le=200 * 1024)
    #: seconds a subscription may take to be decided (the owner's on_subscribe, the
    #: engine's history) before it is refused with 4503
    subscribe_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    #: seconds a presence entry lives without being refreshed (the gateway refreshes its
    #: own every third of it; a dead gateway's members leave after it)
    presence_ttl: float = Field(default=15.0, ge=1, allow_inf_nan=False)
    #: publications held for one session while its subscription is being decided; past
    #: it the subscription is refused with 4503
    max_pending: int = Field(default=1000, ge=1)


class LimitSettings(BaseModel):
    """``[gateway.limits]``: sizes, rates, counts and timeouts of browser connections."""

    model_config = ConfigDict(extra="forbid")

    max_message_bytes: _MessageBytes = 64 * 1024
    compression: bool = False
    messages_per_second: float = Field(default=200.0, gt=0, allow_inf_nan=False)
    burst: int = Field(default=400, ge=1)
    connections_per_principal: int = Field(default=100, ge=1)
    connections_per_ip: int = Field(default=1000, ge=1)
    handshake_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    idle_timeout: _Seconds = 300.0
    ping_interval: _Seconds = 20.0
    ping_timeout: float = Field(default=20.0, gt=0, allow_inf_nan=False)
    max_queued: int = Field(default=256, ge=1)
    max_queued_bytes: int = Field(default=1024 * 1024, ge=1)
    channels: ChannelLimits = Field(default_factory=ChannelLimits)


class SocketServiceSettings(BaseModel):
    """``[gateway.services.<name>]``: who may open a socket to the service, and its limits."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    max_message_bytes: _MessageBytes | None = None
    text: bool = False


class DashboardSettings(BaseModel):
    """``[gateway.dashboard]``: the mesh dashboard at ``/_mesh/`` (see
    ``docs/observability.md``). Its data needs a valid token with these scopes or roles."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    scopes: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)


class HttpSettings(BaseModel):
    """``[gateway.http]``: the HTTP door (``POST /rpc/<service>/<method>``, see
    ``docs/http.md``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    docs: bool = True
    max_body: int = Field(default=1024 * 1024, ge=1, le=2**31 - 1)
    rate: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    burst: int = Field(default=200, ge=1)
    concurrency: int = Field(default=1024, ge=1)
    concurrency_per_principal: int = Field(default=128, ge=1)
    default_timeout: float = Field(default=HTTP_TIMEOUT, gt=0, allow_inf_nan=False)
    max_timeout: float = Field(default=HTTP_MAX_TIMEOUT, gt=0, allow_inf_nan=False)
    body_timeout: float = Field(default=HTTP_BODY_TIMEOUT, gt=0, allow_inf_nan=False)


class GatewaySettings(BaseModel):
    """The ``[gateway]`` table."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | Literal["auto"] = "auto"
    host: str = Field(default=HOST, min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    #: the URL browsers reach this gateway at ("": scheme, advertised host and port)
    public_url: str = ""
    tls: bool = False
    cert: _Path = Path("certs/node.pem")
    key: _Path = Path("certs/node-key.pem")
    allow_plain: bool = False
    trusted_proxies: list[str] = Field(default_factory=list)
    origins: list[str] = Field(default_factory=list)
    static: str = ""
    cookie_token: bool = True
    query_token: bool = False
    refresh_before: _Seconds = 30.0
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    services: dict[str, SocketServiceSettings] = Field(default_factory=dict)
    http: HttpSettings = Field(default_factory=HttpSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    #: Prometheus text at ``/metrics`` (no token: it names services, never payloads)
    metrics: bool = True

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL with a host "
                "(e.g. https://app.example.com)"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r}: a public URL has no query or fragment")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.0/8)"
                ) from None
        return value
