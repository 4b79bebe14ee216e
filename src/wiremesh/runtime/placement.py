"""Which nodes one ``wiremesh run`` starts: the part of the mesh that runs on this host.

One ``wiremesh.toml`` describes the whole mesh; each host runs a part of it. The part is,
first match wins:

1. ``--services orders,billing`` (and ``--replicas orders=3``) on the command line;
2. the host table ``--host NAME`` picks, ``[hosts.NAME]``;
3. the host table named like this machine (its hostname, or the hostname's first label);
4. every service of ``[services]``.

Replicas: ``--replicas`` over the host table's ``replicas`` over
``services.<name>.replicas``. The gateway: ``--gateway`` / ``--no-gateway`` over the host
table's ``gateway`` over ``[gateway] enabled``.

No I/O here: the caller passes this machine's hostname in.

>>> from pathlib import Path
>>> from wiremesh.runtime.config import config_from_text
>>> config = config_from_text(
...     '[services.orders]\\ntarget = "shop:Orders"\\n[services.billing]\\n'
...     'target = "shop:Billing"\\n[hosts.app-1]\\nservices = ["orders"]\\n',
...     root=Path("/srv/shop"),
... )
>>> place(config, hostname="app-1.example.com").replicas
{'orders': 1}
>>> place(config, hostname="db-1", replicas=parse_replicas(["billing=3"])).replicas
{'orders': 1, 'billing': 3}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from wiremesh.errors import ConfigError
from wiremesh.runtime.settings import MeshConfig

__all__ = ["Placement", "parse_replicas", "parse_services", "place"]


@dataclass(frozen=True)
class Placement:
    """What one supervisor runs."""

    #: nodes per service, in the order of ``[services]``
    replicas: dict[str, int] = field(default_factory=dict)
    #: whether the gateway runs here; None: as ``[gateway] enabled`` says
    gateway: bool | None = None
    #: the ``[hosts.<name>]`` table this came from, if any
    host: str | None = None

    def describe(self) -> str:
        """``orders (3 nodes), billing (1 node)`` or ``no service``, for people."""
        if not self.replicas:
            return "no service"
        return ", ".join(
            f"{name} ({count} node{'s' if count > 1 else ''})"
            for name, count in self.replicas.items()
        )


def parse_services(text: str) -> list[str]:
    """``"orders, billing"`` → ``["orders", "billing"]`` (``--services``)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"--services {text!r}: service names separated by commas, e.g. a,b")
    return names


def parse_replicas(values: Iterable[str]) -> dict[str, int]:
    """``["orders=3"]`` → ``{"orders": 3}`` (``--replicas``, repeatable)."""
    counts: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError(
                f"--replicas {value!r}: expected SERVICE=N with N >= 1, e.g. --replicas orders=3"
            )
        counts[name.strip()] = int(count)
    return counts


def place(
    config: MeshConfig,
    *,
    hostname: str = "",
    host: str | None = None,
    services: Iterable[str] | None = None,
    replicas: Mapping[str, int] | None = None,
    gateway: bool | None = None,
) -> Placement:
    """The part of ``config`` this host runs (see the module docstring); a
    :class:`ConfigError` naming the option when one names what the file does not have."""
    table = None
    if host is not None:
        table = config.hosts.get(host)
        if table is None:
            listed = ", ".join(sorted(config.hosts)) or "none"
            raise ConfigError(f"--host {host}: no [hosts.{host}] table (host tables: {listed})")
    else:
        for name in (hostname, hostname.partition(".")[0]):
            if name and name in config.hosts:
                host, table = name, config.hosts[name]
                break
    if services is not None:
        chosen = list(dict.fromkeys(services))
        for name in chosen:
            if name not in config.services:
                raise ConfigError(f"--services: no service {name!r} in [services]{_known(config)}")
    elif table is not None:
        chosen = list(table.services)
    else:
        chosen = list(config.services)
    counts = {name: config.services[name].replicas for name in chosen}
    if table is not None:
        counts.update({n: c for n, c in table.replicas.items() if n in counts})
    for name, count in (replicas or {}).items():
        if name not in config.services:
            raise ConfigError(
                f"--replicas {name}={count}: no service {name!r} in [services]{_known(config)}"
            )
        if name not in counts:
            runs = ", ".join(counts) or "no service"
            raise ConfigError(
                f"--replicas {name}={count}: {name!r} does not run on this host (it runs "
                f"{runs}): add it to --services"
            )
        counts[name] = count
    ordered = {name: counts[name] for name in config.services if name in counts}
    if gateway is None and table is not None:
        gateway = table.gateway
    return Placement(ordered, gateway, host)


def _known(config: MeshConfig) -> str:
    listed = ", ".join(config.services)
    return f" (services: {listed})" if listed else " (it has none)"
