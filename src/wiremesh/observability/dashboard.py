"""The mesh dashboard's data: one JSON document of what the mesh is and does now.

The gateway serves the page (``static/dashboard.html``, no build step, no asset from the
internet) at ``/_mesh/`` and this document at ``/_mesh/state``, to a token its
``[gateway.dashboard]`` scopes and roles accept (else a 401 or 403 problem, as every
HTTP error of the gateway). The page asks for the document every second and draws it:
services and their nodes, the mesh links between nodes as a graph, live rates, latency
percentiles and errors per node, open sessions and dead letters.

:class:`MeshState` reads the nodes from a live :class:`~wiremesh.registry.MeshView` and
their figures from each node's ``/metrics`` (the same reading as ``wiremesh top``); the
gateway adds its own counts (sessions) and the broker's (dead letters) through
``extras``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from wiremesh.core.model import MeshSnapshot
from wiremesh.observability.scrape import Sampler

__all__ = ["DASHBOARD_ASSETS", "MeshState", "asset"]

#: file name -> content type of the page's assets, served under ``/_mesh/``
DASHBOARD_ASSETS = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
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
    that rates are over the time between two requests, at least ``min_interval``)."""

    def __init__(
        self,
        snapshot: Callable[[], MeshSnapshot],
        *,
        mesh: str = "",
        extras: Mapping[str, Extra] | None = None,
        min_interval: float = 0.5,
    ) -> None:
        self._snapshot = snapshot
        self.mesh = mesh
        self.extras = dict(extras or {})
        self.min_interval = min_interval
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
                }
            )
            for peer, queued in self._sampler.peers(node.node_id).items():
                if peer in live:  # a client (a gateway, the CLI) is not drawn
                    links.append({"from": node.node_id, "to": peer, "queued": queued})
        services: dict[str, dict[str, Any]] = {}
        for name in sorted(snapshot.services):
            services[name] = {"name": name, "nodes": 0, "serving": 0}
        for node in nodes:
            entry = services.setdefault(
                node.service, {"name": node.service, "nodes": 0, "serving": 0}
            )
            entry["nodes"] += 1
            entry["serving"] += int(node.serving)
        document: dict[str, Any] = {
            "mesh": self.mesh,
            "at": time.time(),
            "version": snapshot.version,
            "services": list(services.values()),
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
