"""Every problem of a configuration file in one :class:`~wiremesh.errors.ConfigError`.

Validation tells what is wrong and at which key path; this module says it in the words of
the file, at the line :mod:`wiremesh.runtime.toml_positions` finds for the key::

    wiremesh.toml:3: mesh.colour: unknown setting
    wiremesh.toml:12: services.connectors.replicas: Input should be a valid integer, ...

:func:`validation_problems` translates pydantic's errors (the one place that reads them),
:func:`across_tables` finds what no single table shows, and :func:`config_error` sorts
them all by line into the one error, whose ``details["errors"]`` holds the same problems
as ``{"line", "key", "message"}`` dictionaries.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import date, datetime, time
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from wiremesh.errors import ConfigError
from wiremesh.gateway.settings import (
    AuthSettings,
    DashboardSettings,
    GatewaySettings,
    HttpSettings,
    LimitSettings,
    SocketServiceSettings,
)
from wiremesh.runtime.settings import (
    RESERVED,
    BrokerSettings,
    HostSettings,
    MeshConfig,
    MeshSettings,
    RegistrySettings,
    RestartSettings,
    ServiceSettings,
    TlsSettings,
)
from wiremesh.runtime.toml_positions import KeyPath, dotted, line_of

__all__ = [
    "Problem",
    "across_tables",
    "config_error",
    "problem_at",
    "unknown_setting",
    "validation_problems",
]


class Problem(NamedTuple):
    """One problem of a file: its line (None: not found), its dotted key, what is wrong."""

    line: int | None
    key: str
    message: str


def problem_at(lines: dict[KeyPath, int], loc: KeyPath, message: str) -> Problem:
    """The problem ``message`` of the key path ``loc``, at its line in ``lines`` (the file's
    :func:`~wiremesh.runtime.toml_positions.definitions`)."""
    return Problem(line_of(lines, loc), dotted(loc), message)


def validation_problems(exc: ValidationError, lines: dict[KeyPath, int]) -> list[Problem]:
    """Each error of a failed validation of :class:`MeshConfig` as a :class:`Problem`.

    A model validator that rejects one key of its table names it as ``setting`` in its
    error's context; the problem is then that key's, and points at its line.
    """
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        ctx = error.get("ctx") or {}
        setting = ctx.get("setting")
        if isinstance(setting, str):
            loc = (*loc, setting)
        problems.append(problem_at(lines, loc, _describe(error, loc)))
    return problems


def across_tables(
    config: MeshConfig, data: dict[str, Any], lines: dict[KeyPath, int]
) -> list[Problem]:
    """The problems no single table shows: what a mesh across hosts needs, and host tables
    that name services the file does not have. ``data`` is the file as written."""
    problems: list[tuple[KeyPath, str]] = []
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
                        f"hosts.{dotted((host,))}.services",
                    )
                )
    return [problem_at(lines, loc, message) for loc, message in problems]


def config_error(problems: Iterable[Problem], source_name: str | None) -> ConfigError:
    """The one error that reports ``problems``, each once, sorted by line; each line of its
    message starts with ``source_name:line:`` (nothing when ``source_name`` is None)."""
    unique = list(dict.fromkeys(problems))
    ordered = sorted(unique, key=lambda p: (p.line is None, p.line or 0))
    return ConfigError(
        _report(ordered, source_name),
        details={"errors": [problem._asdict() for problem in ordered]},
    )


def unknown_setting(loc: KeyPath) -> str:
    """What to say of the key path ``loc`` that no model knows: a near name, if any."""
    known = _known_settings(loc[:-1])
    guesses = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
    if guesses:
        return f"unknown setting (did you mean {guesses[0]!r}?)"
    return "unknown setting"


def _known(names: Any) -> str:
    listed = ", ".join(sorted(names))
    return f" (services: {listed})" if listed else " (it has none)"


def _report(problems: list[Problem], source_name: str | None) -> str:
    lines: list[str] = []
    for problem in problems:
        prefix = ""
        if source_name is not None:
            prefix = f"{source_name}:{problem.line}: " if problem.line else f"{source_name}: "
        key = f"{problem.key}: " if problem.key else ""
        lines.append(f"{prefix}{key}{problem.message}")
    return "\n".join(lines)


def _describe(error: Any, loc: KeyPath) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return unknown_setting(loc)
    if kind == "missing":
        return "required setting is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {_toml_type(error['input'])}"
    if kind == "path_type":
        return f"expected a path (a string), got {_toml_type(error['input'])}"
    return str(error["msg"])


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


def _known_settings(parent: KeyPath) -> list[str]:
    if not parent:
        return [name for name in MeshConfig.model_fields if name not in RESERVED]
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
