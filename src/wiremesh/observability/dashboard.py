"""The mesh dashboard's data: one JSON document of what the mesh is and does now.

The gateway serves the page (``static/dashboard.html``, no build step, no asset from the
internet) at ``/_mesh/`` and this document at ``/_mesh/state``, to a token its
``[gateway.dashboard]`` scopes and roles accept (else a 401 or 403 problem, as every
HTTP error of the gateway). The page asks for the document every second and draws it:
services and their nodes, the mesh links between nodes and the gateway's sessions as a
graph, live rates, latency percentiles and errors per node and per service, open sessions
and dead letters, and small charts of the last minutes (the page keeps that history: the
document is always "now").

:class:`MeshState` reads the nodes from a live :class:`~wiremesh.registry.MeshView` and
their figures from each node's ``/metrics`` (the same reading as ``wiremesh top``); the
gateway adds its own counts (sessions) and the broker's (dead letters) through
``extras``, and the node of each of its sessions through ``session_nodes``, from which
the document draws the gateway's edges to the nodes (so the services) its sessions use.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.observability.scrape import Sampler

__all__ = ["DASHBOARD_ASSETS", "MeshState", "asset"]

#: file name -> content type of the page's assets, served under ``/_mesh/``
DASHBOARD_ASSETS = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

Extra = Callable[[], Awaitable[Any]]


def asset(name: str) -> bytes:
    """The bytes of one of :data:`DASHBOARD_ASSETS` (``KeyError`` for any other name)."""
    if name not in DASHBOARD_ASSETS:
        raise KeyError(name)
    return resources.files("wiremesh.observability").joinpath("static", name).read_bytes()


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


class MeshState:
    """Builds the dashboard's document; one per gateway (it keeps the last readings, so
    that rates are over the time between two requests, at least ``min_interval``).

    ``gateway_id`` is the gateway that serves the document, ``session_nodes`` yields the
    node id of each of its open sessions (one edge per node they use, counted), and
    ``home`` is the gateway's own page, if it serves one, that the dashboard links to.
    """

    def __init__(
        self,
        snapshot: Callable[[], MeshSnapshot],
        *,
        mesh: str = "",
        extras: Mapping[str, Extra] | None = None,
        min_interval: float = 0.5,
        gateway_id: str = "",
        session_nodes: Callable[[], Iterable[str]] | None = None,
        home: str | None = None,
    ) -> None:
        self._snapshot = snapshot
        self.mesh = mesh
        self.extras = dict(extras or {})
        self.min_interval = min_interval
        self.gateway_id = gateway_id
        self._session_nodes = session_nodes
        self.home = home
        self._sampler = Sampler()
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        self._lock = asyncio.Lock()

    async def document(self) -> dict[str, Any]:
        """The current document; several pages asking at once share one reading."""
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last_at < self.min_interval:
                return self._last
            self._last = await self._build()
            self._last_at = time.monotonic()
            return self._last

    async def _build(self) -> dict[str, Any]:
        snapshot = self._snapshot()
        nodes = list(snapshot.nodes)
        rows = await self._sampler.sample(nodes)
        listed: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        live = {n.node_id for n in nodes}
        for row in rows:
            node, f = row.node, row.figures
            listed.append(
                {
                    "id": node.node_id,
                    "service": node.service,
                    "address": node.address,
                    "state": node.state.value,
                    "started_at": node.started_at,
                    "groups": list(node.groups),
                    "calls_per_s": None if f is None else round(f.calls_per_s, 2),
                    "errors_per_s": None if f is None else round(f.errors_per_s, 2),
                    "p50_ms": None if f is None or f.p50 is None else _round(f.p50 * 1000),
                    "p99_ms": None if f is None or f.p99 is None else _round(f.p99 * 1000),
                    "publish_dropped": None if f is None else f.publish_dropped,
                    "link_queue": None if f is None else f.link_queued,
                    # the node's circuits to the nodes it calls that are not closed
                    "open_circuits": None if f is None else f.circuits,
                }
            )
            for peer, queued in self._sampler.peers(node.node_id).items():
                if peer in live:  # a client (a gateway, the CLI) is not drawn
                    links.append(
                        {"from": node.node_id, "to": peer, "kind": "mesh", "queued": queued}
                    )
        links.extend(self._session_links(live))
        document: dict[str, Any] = {
            "mesh": self.mesh,
            "at": time.time(),
            "version": snapshot.version,
            "gateway": self.gateway_id or None,
            "home": self.home,
            "services": _services(snapshot.services, nodes, listed),
            "nodes": sorted(listed, key=lambda n: (n["service"], n["id"])),
            "links": links,
        }
        for key, extra in self.extras.items():
            try:
                document[key] = await extra()
            except Exception as exc:  # one failing source never blanks the page
                document[key] = None
                document.setdefault("problems", []).append(f"{key}: {exc}")
        return document

    def _session_links(self, live: set[str]) -> list[dict[str, Any]]:
        """The gateway's edges: one to each live node its sessions are on, counted."""
        if self._session_nodes is None or not self.gateway_id:
            return []
        counted = Counter(self._session_nodes())
        return [
            {"from": self.gateway_id, "to": node_id, "kind": "sessions", "sessions": count}
            for node_id, count in sorted(counted.items())
            if node_id in live
        ]


def _service(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": 0,
        "serving": 0,
        "calls_per_s": None,
        "errors_per_s": None,
        "p99_ms": None,
    }


def _services(
    names: Iterable[str], nodes: Iterable[NodeInfo], listed: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per service: its nodes, how many serve, calls and errors per second
    summed over its nodes and the worst of their p99 (None while no node has figures)."""
    shown = {n["id"]: n for n in listed}
    services = {name: _service(name) for name in sorted(names)}
    for node in nodes:
        entry = services.setdefault(node.service, _service(node.service))
        entry["nodes"] += 1
        entry["serving"] += int(node.serving)
        figures = shown.get(node.node_id)
        if figures is None or figures["calls_per_s"] is None:
            continue
        for key in ("calls_per_s", "errors_per_s"):
            entry[key] = round((entry[key] or 0.0) + figures[key], 2)
        if figures["p99_ms"] is not None:
            entry["p99_ms"] = max(entry["p99_ms"] or 0.0, figures["p99_ms"])
    return list(services.values())
