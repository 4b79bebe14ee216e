"""Loading and validating ``wiremesh.toml``, the file that describes a mesh.

The file is TOML. Every setting has a default except each service's ``target``, so an empty
file is a valid (if service-less) mesh. A complete example, with every default spelled out::

    [mesh]
    name = "ipaas"              # default: name of the folder holding this file
    data_dir = ".wiremesh"      # state, logs, certificates; relative to this file's folder
    host = "127.0.0.1"          # address the nodes bind to ("0.0.0.0": every interface)
    advertise = ""              # the address other hosts reach this host's nodes at;
                                # empty: mesh.host, or with a wildcard host the local
                                # address that reaches the registry
    default_timeout = 10.0      # seconds; the default deadline of a call (> 0)
    drain_grace = 10.0          # seconds in-flight calls get to finish on shutdown (>= 0)
    max_message_bytes = 4194304 # largest gRPC message (> 0)
    balancer = "round_robin"    # "round_robin" | "least_outstanding"
    python_path = ["."]         # added to sys.path before importing targets; relative to
                                # this file's folder

    [registry]
    backend = "embedded"        # "embedded" (hosted by `wiremesh run`, one machine) or
                                # "redis" (many machines, every host joins through it)
    url = ""                    # redis: "redis://[user:password@]host:6379/0" or
                                # "rediss://…" (TLS); required with redis, refused with
                                # embedded
    port = 0                    # embedded: 0 = any free port; 0..65535 (not with redis)
    heartbeat_interval = 0.5    # seconds (> 0)
    ttl = 1.5                   # seconds a node stays registered without a heartbeat;
                                # must be greater than heartbeat_interval. On a real
                                # network 1.0 and 5.0 ride out a late packet (see
                                # docs/deploy.md); the defaults suit loopback and a LAN

    [broker]
    url = "embedded"            # "embedded" (hosted by `wiremesh run`, data on disk) or
                                # "amqp://user:password@host:5672/vhost" (RabbitMQ)
    port = 0                    # the embedded broker's port; 0 = any free port
    prefetch = 32               # most unacknowledged messages per handler and node (>= 1)
    attempts = 5                # deliveries of a failing message before it is a dead
                                # letter (>= 1)
    initial_backoff = 0.5       # seconds before the first retry (> 0); doubles per retry,
    max_backoff = 30.0          # up to this (>= initial_backoff), with full jitter
    handler_timeout = 60.0      # seconds a handler may run before it counts as failed (> 0)
    inbox_keep = 604800.0       # seconds a handled message's id stays in a store's inbox
                                # (redeliveries within it are dropped); 0: for ever
    publish_timeout = 10.0      # seconds emit/send wait for the broker by default (> 0)
    quorum_queues = false       # amqp: declare quorum queues instead of classic ones

    [tls]
    enabled = false
    ca = "certs/ca.pem"         # relative paths are relative to data_dir
    cert = "certs/node.pem"
    key = "certs/node-key.pem"

    [restart]
    initial_backoff = 0.5       # seconds before the first restart of a crashed node (> 0)
    max_backoff = 30.0          # the backoff doubles up to this (>= initial_backoff)
    reset_after = 30.0          # a node that ran this long resets its backoff (> 0)

    [services.connectors]       # one table per service; the key is the service name
    target = "examples.ipaas.connectors:Connectors"   # required, "module.path:ClassName"
    replicas = 2                # number of nodes (>= 1), default 1
    balancer = "least_outstanding"   # optional override of mesh.balancer
    env = { LOG_LEVEL = "debug" }    # extra environment variables of the service's nodes
    groups = ["eu", "cache"]    # named groups every node of the service joins at start
                                # (multicast can target a group; nodes may also join and
                                # leave at run time), default []
    store = "postgresql+asyncpg://app@db.internal/connectors"   # the service's own
                                # database (a SQLAlchemy async url); default: the SQLite
                                # file <data_dir>/data/<service>/store.db
    pool_size = 5               # connections each node keeps open to a PostgreSQL store
                                # (>= 1), default 5; SQLite ignores it
    max_overflow = 10           # connections a node may open beyond pool_size under
                                # load (>= 0), default 10; SQLite ignores it

    [hosts.app-1]               # optional, one table per host (the key is its name):
    services = ["connectors"]   # what `wiremesh run` runs there (services of [services])
    replicas = { connectors = 3 }   # overrides services.<name>.replicas on this host
    gateway = false             # whether the gateway runs there; default: gateway.enabled

With ``backend = "redis"`` a mesh spans machines, so some settings become errors:
``mesh.name`` must be written in the file (every host must name the same mesh),
``broker.url`` must not be ``"embedded"`` (that broker lives on one machine), and
``registry.port`` means nothing. A service with no ``store`` url fails when one of its
nodes opens its store (see :class:`wiremesh.runtime.node.StoreWithoutUrl`); a service
that never opens it needs none. Which services run on which host:
:mod:`wiremesh.runtime.placement`.

Service names match ``^[a-z][a-z0-9_-]{0,62}$``; group names are letters, digits, ``_``,
``.``, ``:`` and ``-``, at most 63 characters. Unknown settings are errors, as are values
of the wrong type or out of range. Every problem found is reported in one
:class:`~wiremesh.errors.ConfigError`, one per line, sorted by line, each naming the file,
the line and the dotted key::

    wiremesh.toml:3: mesh.colour: unknown setting
    wiremesh.toml:12: services.connectors.replicas: Input should be a valid integer, ...

The error's ``details["errors"]`` holds the same problems as ``{"line", "key", "message"}``
dictionaries.
"""

from __future__ import annotations

import bisect
import difflib
import json
import keyword
import os
import re
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self

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

from wiremesh.core.balancing import BalancerName
from wiremesh.core.delivery import INBOX_KEEP
from wiremesh.core.names import SERVICE_NAME, check_group, redact_url
from wiremesh.errors import ConfigError, InvalidPayload
from wiremesh.runtime.gateway_settings import (
    AuthSettings,
    DashboardSettings,
    GatewaySettings,
    HttpSettings,
    LimitSettings,
    SocketServiceSettings,
    is_loopback,
)

__all__ = [
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
    "config_for_target",
    "config_from_text",
    "default_config",
    "load_config",
    "locate",
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


class MeshSettings(BaseModel):
    """The ``[mesh]`` table: settings of the mesh as a whole."""

    model_config = ConfigDict(extra="forbid")

    #: Omitted in a :class:`MeshConfig`, it becomes the name of the config file's folder.
    name: str = Field(default="wiremesh", min_length=1)
    data_dir: _Path = Path(".wiremesh")
    host: str = Field(default="127.0.0.1", min_length=1)
    #: The host other hosts reach this host's nodes at; empty: :mod:`wiremesh.runtime.advertise`
    #: decides (``host`` itself, or for a wildcard the address that reaches the registry).
    advertise: str = ""
    default_timeout: _Seconds = 10.0
    drain_grace: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0, le=2**31 - 1)
    balancer: Balancer = "round_robin"
    python_path: list[_Path] = Field(default_factory=lambda: [Path(".")])


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
    heartbeat_interval: _Seconds = 0.5
    ttl: _Seconds = 1.5

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
    prefetch: int = Field(default=32, ge=1, le=65535)
    attempts: int = Field(default=5, ge=1)
    initial_backoff: _Seconds = 0.5
    max_backoff: _Seconds = 30.0
    handler_timeout: _Seconds = 60.0
    inbox_keep: float = Field(default=INBOX_KEEP, ge=0)
    publish_timeout: _Seconds = 10.0
    quorum_queues: bool = False

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max_backoff < self.initial_backoff:
            raise PydanticCustomError(
                "backoff_order",
                "max_backoff ({max_backoff}) must not be less than initial_backoff "
                "({initial_backoff})",
                {
                    "max_backoff": self.max_backoff,
                    "initial_backoff": self.initial_backoff,
                    "setting": "max_backoff",
                },
            )
        return self


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

    initial_backoff: _Seconds = 0.5
    max_backoff: _Seconds = 30.0
    reset_after: _Seconds = 30.0

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max_backoff < self.initial_backoff:
            raise PydanticCustomError(
                "backoff_order",
                "max_backoff ({max_backoff}) must not be less than initial_backoff "
                "({initial_backoff})",
                {
                    "max_backoff": self.max_backoff,
                    "initial_backoff": self.initial_backoff,
                    "setting": "max_backoff",
                },
            )
        return self


class ObservabilitySettings(BaseModel):
    """The ``[observability]`` table: metrics, tracing and logs (``docs/observability.md``)."""

    model_config = ConfigDict(extra="forbid")

    #: Each node serves Prometheus text at ``/metrics`` (on a free port, advertised in the
    #: registry; ``wiremesh top`` and ``wiremesh nodes --json`` show it).
    metrics: bool = True
    #: The host the ``/metrics`` endpoints listen on (``mesh.host`` when empty).
    metrics_host: str = ""
    #: ``none``, ``console`` (spans printed) or ``otlp`` (needs ``wiremesh[otel]``).
    tracing: Literal["none", "console", "otlp"] = "none"
    #: Where the OTLP exporter sends spans (gRPC); the exporter's default when empty.
    otlp_endpoint: str = ""
    #: ``plain`` lines or ``json`` (one object per line, with trace ids).
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ServiceSettings(BaseModel):
    """One ``[services.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    target: Annotated[str, AfterValidator(_check_target)]
    replicas: int = Field(default=1, ge=1)
    #: Overrides ``mesh.balancer`` for this service when set.
    balancer: Balancer | None = None
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

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, root: Path) -> Path:
        return _absolute(root)

    @model_validator(mode="after")
    def _default_name(self) -> Self:
        if "name" not in self.mesh.model_fields_set:
            name = self.root.name or "wiremesh"
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


# --------------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> MeshConfig:
    """Read and validate the configuration file at ``path``.

    Relative paths inside the file are resolved against the file's folder. Raises
    :class:`ConfigError` when the file is missing, unreadable, not TOML or not valid.
    """
    name = os.fspath(path)
    file = _absolute(Path(path))
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no such configuration file: {name}") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a configuration file") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{name}: cannot read the configuration file: {reason}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: the file is not valid UTF-8") from None
    return _parse(text, root=file.parent, source_name=name, source=file)


def config_from_text(text: str, *, root: Path, source_name: str = "wiremesh.toml") -> MeshConfig:
    """Validate configuration ``text`` as if read from a file named ``source_name`` in the
    folder ``root``. Error messages use ``source_name``; ``source`` of the result is None."""
    return _parse(text, root=root, source_name=source_name, source=None)


def config_for_target(
    target: str, *, root: Path, replicas: int = 1, name: str | None = None
) -> MeshConfig:
    """A default configuration with one service built from a ``module:Class`` target.

    The service is called ``name``, or the class name lowercased when ``name`` is None.
    """
    if name is None:
        name = target.rpartition(":")[2].lower()
    data = {"services": {name: {"target": target, "replicas": replicas}}}
    return _validate(data, root=root, source=None, text=None, source_name=None)


def default_config(root: Path) -> MeshConfig:
    """A configuration with every default and no services, rooted at ``root``."""
    return _validate({}, root=root, source=None, text=None, source_name=None)


def _parse(text: str, *, root: Path, source_name: str, source: Path | None) -> MeshConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = _toml_error_line(message, text)
        where = f"{source_name}:{line}" if line is not None else source_name
        raise ConfigError(f"{where}: invalid TOML: {message}") from None
    return _validate(data, root=root, source=source, text=text, source_name=source_name)


_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def _toml_error_line(message: str, text: str) -> int | None:
    match = _TOML_POSITION.search(message)
    if match is not None:
        return int(match.group(1))
    if "(at end of document)" in message:
        return max(1, len(text.splitlines()))
    return None


#: Keys of :class:`MeshConfig` that the loader sets and the file may not.
_RESERVED = ("root", "source")


class _Problem(NamedTuple):
    line: int | None
    key: str
    message: str


def _validate(
    data: dict[str, Any],
    *,
    root: Path,
    source: Path | None,
    text: str | None,
    source_name: str | None,
) -> MeshConfig:
    payload = dict(data)
    definitions = _definitions(text) if text is not None else {}
    problems: list[_Problem] = []
    for reserved in _RESERVED:
        if reserved in payload:
            del payload[reserved]
            loc: tuple[str | int, ...] = (reserved,)
            problems.append(
                _Problem(_line_of(definitions, loc), _dotted(loc), _unknown_setting(loc))
            )
    payload["root"] = root
    payload["source"] = source
    try:
        config = MeshConfig.model_validate(payload)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(part for part in error["loc"] if part != "[key]")
            ctx = error.get("ctx") or {}
            setting = ctx.get("setting")
            if isinstance(setting, str):
                loc = (*loc, setting)
            problems.append(
                _Problem(_line_of(definitions, loc), _dotted(loc), _describe(error, loc))
            )
    else:
        for loc, message in _across_tables(config, data):
            problems.append(_Problem(_line_of(definitions, loc), _dotted(loc), message))
        if not problems:
            return config
    unique = list(dict.fromkeys(problems))
    ordered = sorted(unique, key=lambda p: (p.line is None, p.line or 0))
    raise ConfigError(
        _report(ordered, source_name),
        details={"errors": [problem._asdict() for problem in ordered]},
    )


def _across_tables(
    config: MeshConfig, data: dict[str, Any]
) -> list[tuple[tuple[str | int, ...], str]]:
    """The problems no single table shows: what a mesh across hosts needs, and host tables
    that name services the file does not have. ``data`` is the file as written."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if config.registry.redis:
        written = data.get("mesh")
        if not isinstance(written, dict) or "name" not in written:
            problems.append(
                (
                    ("mesh", "name"),
                    "required with a Redis registry: every host must name the same mesh "
                    "(the name of this file's folder is not good enough across hosts)",
                )
            )
        if config.broker.embedded:
            problems.append(
                (
                    ("broker", "url"),
                    "the embedded broker lives on one machine: a mesh with a Redis registry "
                    'needs RabbitMQ, url = "amqp://user:password@host:5672/vhost"',
                )
            )
    for host, settings in config.hosts.items():
        for index, service in enumerate(settings.services):
            if service not in config.services:
                problems.append(
                    (
                        ("hosts", host, "services", index),
                        f"no service {service!r} in [services]{_known(config.services)}",
                    )
                )
        for service in settings.replicas:
            if service not in settings.services:
                problems.append(
                    (
                        ("hosts", host, "replicas", service),
                        f"{service!r} does not run on this host: add it to "
                        f"hosts.{_dotted((host,))}.services",
                    )
                )
    return problems


def _known(names: Any) -> str:
    listed = ", ".join(sorted(names))
    return f" (services: {listed})" if listed else " (it has none)"


def _report(problems: list[_Problem], source_name: str | None) -> str:
    lines: list[str] = []
    for problem in problems:
        prefix = ""
        if source_name is not None:
            prefix = f"{source_name}:{problem.line}: " if problem.line else f"{source_name}: "
        key = f"{problem.key}: " if problem.key else ""
        lines.append(f"{prefix}{key}{problem.message}")
    return "\n".join(lines)


def _describe(error: Any, loc: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_setting(loc)
    if kind == "missing":
        return "required setting is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {_toml_type(error['input'])}"
    if kind == "path_type":
        return f"expected a path (a string), got {_toml_type(error['input'])}"
    return str(error["msg"])


def _unknown_setting(loc: tuple[str | int, ...]) -> str:
    known = _known_settings(loc[:-1])
    guesses = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
    if guesses:
        return f"unknown setting (did you mean {guesses[0]!r}?)"
    return "unknown setting"


_TABLES: dict[str, type[BaseModel]] = {
    "mesh": MeshSettings,
    "registry": RegistrySettings,
    "broker": BrokerSettings,
    "tls": TlsSettings,
    "restart": RestartSettings,
    "gateway": GatewaySettings,
}
_GATEWAY_TABLES: dict[str, type[BaseModel]] = {
    "auth": AuthSettings,
    "limits": LimitSettings,
    "http": HttpSettings,
    "dashboard": DashboardSettings,
}


def _known_settings(parent: tuple[str | int, ...]) -> list[str]:
    if not parent:
        return [name for name in MeshConfig.model_fields if name not in _RESERVED]
    if len(parent) == 1 and isinstance(parent[0], str) and parent[0] in _TABLES:
        return list(_TABLES[parent[0]].model_fields)
    if len(parent) == 2 and parent[0] == "services":
        return list(ServiceSettings.model_fields)
    if len(parent) == 2 and parent[0] == "hosts":
        return list(HostSettings.model_fields)
    if len(parent) == 2 and parent[0] == "gateway" and parent[1] in _GATEWAY_TABLES:
        return list(_GATEWAY_TABLES[str(parent[1])].model_fields)
    if len(parent) == 3 and parent[:2] == ("gateway", "services"):
        return list(SocketServiceSettings.model_fields)
    return []


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    return type(value).__name__


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(loc: tuple[str | int, ...]) -> str:
    """``loc`` written as a TOML dotted key; list indexes as ``[i]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
        text = f"{text}.{key}" if text else key
    return text


# --------------------------------------------------------------------------------- locating


def locate(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of ``text`` (valid TOML) where the key path ``loc`` is defined.

    Understands ``[a.b]`` / ``[[a.b]]`` / ``[a."b c"]`` headers, ``key = value`` and dotted
    ``a.b = value`` lines, inline tables and (multi-line) arrays, whose elements are found by
    index. A path that is not defined falls back to its longest defined prefix, so a missing
    key reports the line of its table's header. None when not even the first key is found.
    """
    return _line_of(_definitions(text), loc)


def _line_of(
    definitions: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]
) -> int | None:
    for size in range(len(loc), 0, -1):
        line = definitions.get(loc[:size])
        if line is not None:
            return line
    return None


def _definitions(text: str) -> dict[tuple[str | int, ...], int]:
    """Every key path defined in ``text``, explicitly or implicitly, with its first line."""
    scanner = _Scanner(text)
    scanner.run()
    return scanner.found


class _Stop(Exception):
    """The scanner met something it does not understand; it skips to the next line."""


_SCALAR = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})?"
    r"|[^\s,\]}#]+"
)
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Scanner:
    """A forgiving TOML reader that records where keys are, not what their values are."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.found: dict[tuple[str | int, ...], int] = {}
        self._starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    def run(self) -> None:
        table: tuple[str | int, ...] = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self._line()
            try:
                if self._peek() == "[":
                    double = self.text.startswith("[[", self.pos)
                    self.pos += 2 if double else 1
                    key = self._key()
                    self._skip()
                    self._expect("]]" if double else "]")
                    table = key
                    self._define(table, line)
                else:
                    path = (*table, *self._key())
                    self._skip()
                    self._expect("=")
                    self._define(path, line)
                    self._value(path)
            except _Stop:
                pass
            self._skip_line()

    # -- helpers

    def _line(self) -> int:
        return bisect.bisect_right(self._starts, self.pos)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)

    def _skip(self, *, newlines: bool = False) -> None:
        blanks = " \t\r\n" if newlines else " \t"
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in blanks:
                self.pos += 1
            elif char == "#" and newlines:
                self._skip_line()
            else:
                return

    def _skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _define(self, path: tuple[str | int, ...], line: int) -> None:
        for size in range(1, len(path) + 1):
            self.found.setdefault(path[:size], line)

    # -- keys and values

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip()
            char = self._peek()
            if char == '"':
                parts.append(self._basic_string())
            elif char == "'":
                parts.append(self._literal_string())
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise _Stop
                parts.append(match.group())
                self.pos = match.end()
            self._skip()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1

    def _value(self, path: tuple[str | int, ...]) -> None:
        self._skip()
        char = self._peek()
        if self.text.startswith('"""', self.pos):
            self._multiline_string('"""')
        elif self.text.startswith("'''", self.pos):
            self._multiline_string("'''")
        elif char == '"':
            self._basic_string()
        elif char == "'":
            self._literal_string()
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            match = _SCALAR.match(self.text, self.pos)
            if match is None:
                raise _Stop
            self.pos = match.end()

    def _array(self, path: tuple[str | int, ...]) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip(newlines=True)
            if self._peek() == "]":
                self.pos += 1
                return
            item = (*path, index)
            self._define(item, self._line())
            self._value(item)
            index += 1
            self._skip(newlines=True)
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() == "]":
                self.pos += 1
                return
            else:
                raise _Stop

    def _inline_table(self, path: tuple[str | int, ...]) -> None:
        self.pos += 1
        self._skip()
        if self._peek() == "}":
            self.pos += 1
            return
        while True:
            line = self._line()
            key = (*path, *self._key())
            self._expect("=")
            self._define(key, line)
            self._value(key)
            self._skip()
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() == "}":
                self.pos += 1
                return
            else:
                raise _Stop

    def _basic_string(self) -> str:
        text, i = self.text, self.pos + 1
        out: list[str] = []
        while i < len(text):
            char = text[i]
            if char == '"':
                self.pos = i + 1
                return "".join(out)
            if char == "\n":
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            escape = text[i + 1 : i + 2]
            if escape in _ESCAPES:
                out.append(_ESCAPES[escape])
                i += 2
            elif escape in ("u", "U"):
                size = 4 if escape == "u" else 8
                try:
                    out.append(chr(int(text[i + 2 : i + 2 + size], 16)))
                except ValueError:
                    break
                i += 2 + size
            else:
                break
        raise _Stop

    def _literal_string(self) -> str:
        end = self.text.find("'", self.pos + 1)
        if end < 0 or "\n" in self.text[self.pos : end]:
            raise _Stop
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def _multiline_string(self, quotes: str) -> None:
        text, i = self.text, self.pos + 3
        while i < len(text):
            if quotes == '"""' and text[i] == "\\":
                i += 2
            elif text.startswith(quotes, i):
                i += 3
                extra = 0
                while extra < 2 and text.startswith(quotes[0], i):
                    i += 1
                    extra += 1
                self.pos = i
                return
            else:
                i += 1
        raise _Stop
