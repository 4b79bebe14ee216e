"""Reading the nodes' ``/metrics``: what ``wiremesh top`` and the mesh dashboard show.

A :class:`Sampler` keeps each node's last reading (see :mod:`wiremesh.core.rates`) and
turns the next one into figures over the time between them. A node that is gone is
forgotten; a node that does not answer its scrape has no figures.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from wiremesh.core.model import NodeInfo
from wiremesh.core.rates import Figures, Reading, figures, reading
from wiremesh.observability.metrics import METRICS_KEY

__all__ = ["SCRAPE_TIMEOUT", "Row", "Sampler", "parse"]

#: seconds a scrape may take before the node counts as not answering
SCRAPE_TIMEOUT = 2.0


def parse(text: str, at: float) -> Reading:
    """The reading of one ``/metrics`` text taken at ``at`` (seconds on any steady clock)."""
    return reading(
        (sample for family in text_string_to_metric_families(text) for sample in family.samples),
        at,
    )


@dataclass(frozen=True)
class Row:
    node: NodeInfo
    figures: Figures | None


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT) as answer:
        text: str = answer.read().decode()
        return text


class Sampler:
    """Keeps each node's last reading; :meth:`sample` gives the figures since then."""

    def __init__(self) -> None:
        self._last: dict[str, Reading] = {}

    async def sample(self, nodes: Sequence[NodeInfo]) -> list[Row]:
        readings = await asyncio.gather(*(self._read(n) for n in nodes))
        rows: list[Row] = []
        for node, now in zip(nodes, readings, strict=True):
            before = self._last.get(node.node_id)
            if now is not None:
                self._last[node.node_id] = now
            shown = figures(before, now) if before is not None and now is not None else None
            rows.append(Row(node, shown))
        live = {n.node_id for n in nodes}
        for gone in [node_id for node_id in self._last if node_id not in live]:
            del self._last[gone]
        return rows

    def peers(self, node_id: str) -> dict[str, float]:
        """The node's mesh links at its last reading: peer -> frames waiting."""
        last = self._last.get(node_id)
        return dict(last.peers) if last is not None else {}

    async def _read(self, node: NodeInfo) -> Reading | None:
        address = node.metadata.get(METRICS_KEY)
        if not address:
            return None
        try:
            text = await asyncio.to_thread(_scrape, address)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return parse(text, time.monotonic())
