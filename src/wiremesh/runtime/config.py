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

    [mesh.breaker]              # each caller's circuits to the nodes it calls
    enabled = true
    failures = 5                # failures in a row that open a circuit (>= 1)
    failure_rate = 0.5          # or this share of the last `window` calls (0 < r <= 1)
    window = 20                 # calls the failure rate is measured over (>= 1)
    open_for = 5.0              # seconds before the first probe (> 0), doubled with each
    max_open_for = 60.0         # failed probe up to this (>= open_for)

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

    [services.connectors.breaker]   # optional: for the calls to this service, these
    failures = 3                    # settings, the others from [mesh.breaker]

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

Where each part lives: the models of the tables in :mod:`wiremesh.runtime.settings` (those
of ``[gateway]`` in :mod:`wiremesh.gateway.settings`), the defaults that other modules read
too in :mod:`wiremesh.core.defaults`, the wording of problems in
:mod:`wiremesh.runtime.config_errors` and the finding of their lines in
:mod:`wiremesh.runtime.toml_positions`. This module reads the file and puts them together.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wiremesh.errors import ConfigError
from wiremesh.runtime.config_errors import (
    Problem,
    across_tables,
    config_error,
    problem_at,
    unknown_setting,
    validation_problems,
)
from wiremesh.runtime.settings import (
    RESERVED,
    SERVICE_NAME_PATTERN,
    Balancer,
    BrokerSettings,
    GatewaySettings,
    HostSettings,
    MeshConfig,
    MeshSettings,
    ObservabilitySettings,
    RegistrySettings,
    RestartSettings,
    ServiceSettings,
    TlsSettings,
)
from wiremesh.runtime.toml_positions import definitions, locate

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


def load_config(path: str | os.PathLike[str]) -> MeshConfig:
    """Read and validate the configuration file at ``path``.

    Relative paths inside the file are resolved against the file's folder. Raises
    :class:`ConfigError` when the file is missing, unreadable, not TOML or not valid.
    """
    name = os.fspath(path)
    file = Path(os.path.abspath(path))
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


def _validate(
    data: dict[str, Any],
    *,
    root: Path,
    source: Path | None,
    text: str | None,
    source_name: str | None,
) -> MeshConfig:
    """``data`` (the file ``text`` as TOML read it) as a :class:`MeshConfig`, or every
    problem it has in one :class:`ConfigError`."""
    payload = dict(data)
    lines = definitions(text) if text is not None else {}
    problems: list[Problem] = []
    for reserved in RESERVED:
        if reserved in payload:
            del payload[reserved]
            problems.append(problem_at(lines, (reserved,), unknown_setting((reserved,))))
    payload["root"] = root
    payload["source"] = source
    try:
        config = MeshConfig.model_validate(payload)
    except ValidationError as exc:
        problems += validation_problems(exc, lines)
    else:
        problems += across_tables(config, data, lines)
        if not problems:
            return config
    raise config_error(problems, source_name)
