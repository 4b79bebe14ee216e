"""The settings models of ``wiremesh.toml``: one pydantic model per table.

:class:`MeshConfig` is the whole file: ``[mesh]`` (:class:`MeshSettings`), ``[registry]``,
``[broker]``, ``[tls]``, ``[restart]``, ``[observability]``, ``[gateway]`` (its models live
in :mod:`wiremesh.gateway.settings`), one :class:`ServiceSettings` per ``[services.<name>]``
and one :class:`HostSettings` per ``[hosts.<name>]``. Each model checks its own table (types,
ranges, the rules between its keys); a rule across tables that the file as written decides
is :func:`wiremesh.runtime.config_errors.across_tables`'s.

The file's format, with every default spelled out, and the loader are in
:mod:`wiremesh.runtime.config`; a default that other modules read too is one of
:mod:`wiremesh.core.defaults`.
"""

from __future__ import annotations

import json
import keyword
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from wiremesh.core import defaults
from wiremesh.core.balancing import BalancerName
from wiremesh.core.breaker import (
    BREAKER_FAILURE_RATE,
    BREAKER_FAILURES,
    BREAKER_MAX_OPEN_FOR,
    BREAKER_OPEN_FOR,
    BREAKER_WINDOW,
    BreakerSettings,
)
from wiremesh.core.names import SERVICE_NAME, check_group, redact_url
from wiremesh.errors import InvalidPayload
from wiremesh.gateway.settings import GatewaySettings, is_loopback
from wiremesh.observability.settings import ObservabilitySettings

__all__ = [
    "RESERVED",
    "SERVICE_NAME_PATTERN",
    "Balancer",
    "BrokerSettings",
    "GatewaySettings",
    "HostSettings",
    "MeshConfig",
    "MeshSettings",
    "ObservabilitySettings",
    "RegistrySettings",
    "RestartSettings",
    "ServiceSettings",
    "TlsSettings",
]

#: How a client spreads calls over the nodes of a service.
Balancer = BalancerName

#: What a service name must look like.
SERVICE_NAME_PATTERN = SERVICE_NAME.pattern
_SERVICE_NAME = SERVICE_NAME

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _not_empty(value: object) -> object:
    if value == "":
        raise PydanticCustomError("empty_path", "a path must not be empty")
    return value


_Path = Annotated[Path, BeforeValidator(_not_empty)]


def _check_service_name(name: str) -> str:
    if _SERVICE_NAME.fullmatch(name) is None:
        raise PydanticCustomError(
            "service_name",
            "invalid service name {name}: a service name starts with a lowercase letter, has "
            "only lowercase letters, digits, '_' and '-', and at most 63 characters",
            {"name": json.dumps(name, ensure_ascii=False)},
        )
    return name


def _check_target(target: str) -> str:
    module, sep, cls = target.partition(":")
    parts = module.split(".")
    if not sep or not all(_is_identifier(part) for part in [*parts, cls]):
        raise PydanticCustomError(
            "target",
            "target must look like 'module.path:ClassName', got {target}",
            {"target": json.dumps(target, ensure_ascii=False)},
        )
    return target


def _is_identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


ServiceName = Annotated[str, AfterValidator(_check_service_name)]


def _check_group_name(name: str) -> str:
    try:
        return check_group(name)
    except InvalidPayload:
        raise PydanticCustomError(
            "group_name",
            "invalid group name {name}: a group name has only letters, digits, '_', '.', ':' "
            "and '-', and at most 63 characters",
            {"name": json.dumps(name, ensure_ascii=False)},
        ) from None


GroupName = Annotated[str, AfterValidator(_check_group_name)]


class BreakerTable(BaseModel):
    """``[mesh.breaker]``: when a caller's circuit to a node it calls opens, and for how
    long (:mod:`wiremesh.core.breaker`); ``[services.<name>.breaker]`` changes some of
    them for the calls to one service, the others coming from ``[mesh.breaker]``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: failures in a row that open the circuit
    failures: int = Field(default=BREAKER_FAILURES, ge=1)
    #: or this share of failures over the last ``window`` calls
    failure_rate: float = Field(default=BREAKER_FAILURE_RATE, gt=0, le=1)
    window: int = Field(default=BREAKER_WINDOW, ge=1)
    #: seconds before the first probe; doubled with each failed probe, to ``max_open_for``
    open_for: _Seconds = BREAKER_OPEN_FOR
    max_open_for: _Seconds = BREAKER_MAX_OPEN_FOR

    @model_validator(mode="after")
    def _max_not_below_first(self) -> Self:
        if self.open_for > self.max_open_for:
            raise PydanticCustomError(
                "breaker_order",
                "open_for ({first}) must not be longer than max_open_for ({most})",
                {"first": self.open_for, "most": self.max_open_for},
            )
        return self

    def settings(self) -> BreakerSettings:
        """These settings as the caller takes them."""
        return BreakerSettings(**self.model_dump())

    def merged(self, override: BreakerTable | None) -> BreakerTable:
        """These settings with those ``override`` sets (a service's own table)."""
        if override is None:
            return self
        return BreakerTable.model_validate(
            {**self.model_dump(), **override.model_dump(exclude_unset=True)}
        )


class MeshSettings(BaseModel):
    """The ``[mesh]`` table: settings of the mesh as a whole."""

    model_config = ConfigDict(extra="forbid")

    #: Omitted in a :class:`MeshConfig`, it becomes the name of the config file's folder.
    name: str = Field(default=defaults.MESH_NAME, min_length=1)
    data_dir: _Path = Path(".wiremesh")
    host: str = Field(default=defaults.HOST, min_length=1)
    #: The host other hosts reach this host's nodes at; empty: :mod:`wiremesh.runtime.advertise`
    #: decides (``host`` itself, or for a wildcard the address that reaches the registry).
    advertise: str = ""
    default_timeout: _Seconds = defaults.CALL_TIMEOUT
    drain_grace: float = Field(default=defaults.DRAIN_GRACE, ge=0, allow_inf_nan=False)
    max_message_bytes: int = Field(default=defaults.MAX_MESSAGE_BYTES, gt=0, le=2**31 - 1)
    balancer: Balancer = defaults.BALANCER
    python_path: list[_Path] = Field(default_factory=lambda: [Path(".")])
    breaker: BreakerTable = Field(default_factory=BreakerTable)


def _check_registry_url(url: str) -> str:
    if url and not url.startswith(("redis://", "rediss://")):
        raise PydanticCustomError(
            "registry_url",
            'registry url must be a Redis url, "redis://[user:password@]host:6379/0" or '
            '"rediss://…", got {url}',
            {"url": json.dumps(redact_url(url), ensure_ascii=False)},
        )
    if "#" in url:
        raise PydanticCustomError(
            "registry_url",
            "the registry url names no mesh (no '#…'): mesh.name does",
        )
    return url


class RegistrySettings(BaseModel):
    """The ``[registry]`` table: where nodes register and how long they stay registered."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["embedded", "redis"] = "embedded"
    #: The Redis registry's url (``backend = "redis"`` only).
    url: Annotated[str, AfterValidator(_check_registry_url)] = ""
    port: int = Field(default=0, ge=0, le=65535)
    heartbeat_interval: _Seconds = defaults.HEARTBEAT_INTERVAL
    ttl: _Seconds = defaults.TTL

    @property
    def redis(self) -> bool:
        return self.backend == "redis"

    @model_validator(mode="after")
    def _url_with_redis_only(self) -> Self:
        if self.redis and not self.url:
            raise PydanticCustomError(
                "registry_url_missing",
                'backend = "redis" needs the url of the Redis to join, e.g. '
                'url = "redis://redis.internal:6379/0"',
                {"setting": "url"},
            )
        if not self.redis and self.url:
            raise PydanticCustomError(
                "registry_url_embedded",
                'only a Redis registry has a url: set backend = "redis", or remove the url',
                {"setting": "url"},
            )
        if self.redis and self.port:
            raise PydanticCustomError(
                "registry_port_redis",
                "a Redis registry has no port of its own (the url says where Redis is): "
                "remove registry.port",
                {"setting": "port"},
            )
        return self

    @model_validator(mode="after")
    def _ttl_exceeds_heartbeat(self) -> Self:
        if self.ttl <= self.heartbeat_interval:
            raise PydanticCustomError(
                "ttl_too_short",
                "ttl ({ttl}) must be greater than heartbeat_interval ({heartbeat_interval})",
                {"ttl": self.ttl, "heartbeat_interval": self.heartbeat_interval, "setting": "ttl"},
            )
        return self


def _check_broker_url(url: str) -> str:
    if url != "embedded" and not url.startswith(("amqp://", "amqps://")):
        raise PydanticCustomError(
            "broker_url",
            'broker url must be "embedded" or an "amqp://user:password@host:port/" url, got {url}',
            {"url": json.dumps(url, ensure_ascii=False)},
        )
    return url


def _check_store_url(url: str) -> str:
    driver = url.partition("://")[0]
    if not driver or "://" not in url:
        raise PydanticCustomError(
            "store_url",
            "store must be a SQLAlchemy async database url such as "
            '"postgresql+asyncpg://user@host/db" or "sqlite+aiosqlite:///path.db", got {url}',
            {"url": json.dumps(url, ensure_ascii=False)},
        )
    return url


class BrokerSettings(BaseModel):
    """The ``[broker]`` table: where durable messages go and how failures are retried."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, AfterValidator(_check_broker_url)] = "embedded"
    port: int = Field(default=0, ge=0, le=65535)
    prefetch: int = Field(default=defaults.PREFETCH, ge=1, le=65535)
    attempts: int = Field(default=defaults.ATTEMPTS, ge=1)
    initial_backoff: _Seconds = defaults.RETRY_INITIAL_BACKOFF
    max_backoff: _Seconds = defaults.RETRY_MAX_BACKOFF
    handler_timeout: _Seconds = defaults.HANDLER_TIMEOUT
    inbox_keep: float = Field(default=defaults.INBOX_KEEP, ge=0)
    publish_timeout: _Seconds = defaults.PUBLISH_TIMEOUT
    quorum_queues: bool = False

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        _check_backoff_order(self.initial_backoff, self.max_backoff)
        return self


def _check_backoff_order(initial: float, maximum: float) -> None:
    """A backoff that doubles from ``initial`` up to ``maximum`` needs ``maximum >= initial``
    (``[broker]`` and ``[restart]`` alike)."""
    if maximum < initial:
        raise PydanticCustomError(
            "backoff_order",
            "max_backoff ({max_backoff}) must not be less than initial_backoff ({initial_backoff})",
            {"max_backoff": maximum, "initial_backoff": initial, "setting": "max_backoff"},
        )


class TlsSettings(BaseModel):
    """The ``[tls]`` table; relative paths are relative to ``mesh.data_dir``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    ca: _Path = Path("certs/ca.pem")
    cert: _Path = Path("certs/node.pem")
    key: _Path = Path("certs/node-key.pem")


class RestartSettings(BaseModel):
    """The ``[restart]`` table: how crashed nodes are restarted."""

    model_config = ConfigDict(extra="forbid")

    initial_backoff: _Seconds = defaults.RESTART_INITIAL_BACKOFF
    max_backoff: _Seconds = defaults.RESTART_MAX_BACKOFF
    reset_after: _Seconds = defaults.RESTART_RESET_AFTER

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        _check_backoff_order(self.initial_backoff, self.max_backoff)
        return self


class ServiceSettings(BaseModel):
    """One ``[services.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    target: Annotated[str, AfterValidator(_check_target)]
    replicas: int = Field(default=1, ge=1)
    #: Overrides ``mesh.balancer`` for this service when set.
    balancer: Balancer | None = None
    #: Overrides some of ``[mesh.breaker]`` for the calls to this service.
    breaker: BreakerTable | None = None
    env: dict[str, str] = Field(default_factory=dict)
    #: Named groups every node of this service joins when it starts (see multicast).
    groups: list[GroupName] = Field(default_factory=list)
    #: The service's own database; None: a SQLite file in the service's data folder.
    store: Annotated[str, AfterValidator(_check_store_url)] | None = None
    #: Connections each node keeps open to a PostgreSQL store, and how many more it may
    #: open under load; None: the store's defaults, 5 and 10 (``wiremesh.messaging.store``
    #: ``POOL_SIZE``, ``MAX_OVERFLOW``, not imported here: reading this file must not load
    #: SQLAlchemy). SQLite ignores both.
    pool_size: int | None = Field(default=None, ge=1)
    max_overflow: int | None = Field(default=None, ge=0)


#: What a host name (a ``[hosts.<name>]`` key) may look like: a hostname or its first label.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,252})")


def _check_host_name(name: str) -> str:
    if _HOST_NAME.fullmatch(name) is None:
        raise PydanticCustomError(
            "host_name",
            "invalid host name {name}: letters, digits, '.', '_' and '-', starting with a "
            "letter or a digit",
            {"name": json.dumps(name, ensure_ascii=False)},
        )
    return name


HostName = Annotated[str, AfterValidator(_check_host_name)]


class HostSettings(BaseModel):
    """One ``[hosts.<name>]`` table: what ``wiremesh run`` runs on that host."""

    model_config = ConfigDict(extra="forbid")

    #: The services whose nodes run on this host (each one of ``[services]``).
    services: list[ServiceName] = Field(default_factory=list)
    #: Nodes per service on this host; a service not named here runs
    #: ``services.<name>.replicas`` nodes.
    replicas: dict[ServiceName, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    #: Whether the browser gateway runs on this host; None: as ``gateway.enabled`` says.
    gateway: bool | None = None


class MeshConfig(BaseModel):
    """A whole ``wiremesh.toml``, plus where it came from."""

    model_config = ConfigDict(extra="forbid")

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    restart: RestartSettings = Field(default_factory=RestartSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    services: dict[ServiceName, ServiceSettings] = Field(default_factory=dict)
    #: What runs where, when the mesh spans hosts (``wiremesh run --host``).
    hosts: dict[HostName, HostSettings] = Field(default_factory=dict)
    #: Absolute folder of the configuration file (the working directory when there is none);
    #: relative paths are resolved against it. Set by the loader, never read from the file.
    root: Path = Field(default_factory=Path.cwd)
    #: Absolute path of the file this configuration was read from, if any.
    source: Path | None = None

    @model_validator(mode="after")
    def _gateway_plain_only_on_loopback(self) -> Self:
        gateway = self.gateway
        if not gateway.tls and not gateway.allow_plain and not is_loopback(gateway.host):
            raise PydanticCustomError(
                "plain_gateway",
                "the gateway listens on {host} without TLS: set gateway.tls = true (with a "
                "certificate), or gateway.allow_plain = true if something in front of it "
                "terminates TLS",
                {"host": gateway.host, "setting": "gateway"},
            )
        return self

    @model_validator(mode="after")
    def _service_breakers_hold_with_the_mesh_s(self) -> Self:
        for name, service in self.services.items():
            if service.breaker is not None:
                try:
                    self.mesh.breaker.merged(service.breaker)
                except ValidationError as exc:
                    raise PydanticCustomError(
                        "breaker_order",
                        "services.{service}.breaker with mesh.breaker: {problem}",
                        {"service": name, "problem": exc.errors()[0]["msg"]},
                    ) from None
        return self

    def breakers(self) -> dict[str, BreakerTable]:
        """The breaker settings of each service that has its own."""
        return {
            name: self.mesh.breaker.merged(service.breaker)
            for name, service in self.services.items()
            if service.breaker is not None
        }

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, root: Path) -> Path:
        return _absolute(root)

    @model_validator(mode="after")
    def _default_name(self) -> Self:
        if "name" not in self.mesh.model_fields_set:
            name = self.root.name or defaults.MESH_NAME
            self.mesh = self.mesh.model_copy(update={"name": name})
        return self

    @property
    def data_path(self) -> Path:
        """The absolute data directory."""
        return _absolute(self.root / self.mesh.data_dir)

    def tls_paths(self) -> tuple[Path, Path, Path]:
        """The absolute paths of the CA certificate, the node certificate and its key."""
        data = self.data_path
        return (
            _absolute(data / self.tls.ca),
            _absolute(data / self.tls.cert),
            _absolute(data / self.tls.key),
        )

    def gateway_tls_paths(self) -> tuple[Path, Path]:
        """The absolute paths of the gateway's certificate and key."""
        data = self.data_path
        return _absolute(data / self.gateway.cert), _absolute(data / self.gateway.key)

    def python_paths(self) -> list[Path]:
        """The absolute folders to add to ``sys.path`` before importing targets."""
        return [_absolute(self.root / path) for path in self.mesh.python_path]


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised, without resolving symbolic links."""
    return Path(os.path.abspath(path))


#: Keys of :class:`MeshConfig` that the loader sets and the file may not.
RESERVED = ("root", "source")
