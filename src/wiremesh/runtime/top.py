"""``wiremesh top``: a live view of the mesh's nodes, their rates, latencies and errors.

The nodes come from the registry (the same watch every caller has); the figures from
each node's ``/metrics`` endpoint, read every interval. A node that is gone leaves the
view; a node that does not answer its scrape shows ``-``.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

from wiremesh.core.model import NodeInfo
from wiremesh.core.rates import Figures, Reading, figures, reading
from wiremesh.observability.metrics import METRICS_KEY
from wiremesh.runtime.display import format_uptime

__all__ = ["Row", "Sampler", "top_table"]

#: seconds a scrape may take before the node shows ``-``
SCRAPE_TIMEOUT = 2.0


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
        return reading(text, time.monotonic())


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def top_table(rows: Sequence[Row], *, title: str = "") -> Table:
    table = Table(title=title or None)
    columns = ("service", "node", "state", "uptime", "calls/s", "errors/s", "p50 ms", "p99 ms")
    for column in (*columns, "pub dropped", "link queue"):
        justify = "right" if column not in ("service", "node", "state") else "left"
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in sorted(rows, key=lambda r: (r.node.service, r.node.node_id)):
        node, f = row.node, row.figures
        uptime = format_uptime(time.time() - node.started_at) if node.started_at else "-"
        if f is None:
            cells = ["-"] * 6
        else:
            cells = [
                f"{f.calls_per_s:,.1f}",
                f"[red]{f.errors_per_s:,.1f}[/red]" if f.errors_per_s else "0.0",
                _ms(f.p50),
                _ms(f.p99),
                f"{f.publish_dropped:,.0f}",
                f"{f.link_queued:,.0f}",
            ]
        table.add_row(node.service, node.node_id, node.state.value, uptime, *cells)
    return table
