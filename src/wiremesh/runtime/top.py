"""``wiremesh top``: a live view of the mesh's nodes, their rates, latencies and errors.

The nodes come from the registry (the same watch every caller has); the figures from
each node's ``/metrics`` endpoint, read every interval. A node that is gone leaves the
view; a node that does not answer its scrape shows ``-``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.table import Table

from wiremesh.observability.scrape import Row, Sampler
from wiremesh.runtime.display import format_uptime

__all__ = ["Row", "Sampler", "top_table"]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _circuits(circuits: dict[str, str]) -> str:
    """The node's circuits that are not closed: ``node`` (open) or ``node?`` (half-open)."""
    if not circuits:
        return "-"
    shown = (
        f"{node}?" if state == "half_open" else node for node, state in sorted(circuits.items())
    )
    return f"[red]{', '.join(shown)}[/red]"


def top_table(rows: Sequence[Row], *, title: str = "") -> Table:
    table = Table(title=title or None)
    columns = ("service", "node", "state", "uptime", "calls/s", "errors/s", "p50 ms", "p99 ms")
    for column in (*columns, "pub dropped", "link queue", "open circuits"):
        justify = "right" if column not in ("service", "node", "state", "open circuits") else "left"
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in sorted(rows, key=lambda r: (r.node.service, r.node.node_id)):
        node, f = row.node, row.figures
        uptime = format_uptime(time.time() - node.started_at) if node.started_at else "-"
        if f is None:
            cells = ["-"] * 7
        else:
            cells = [
                f"{f.calls_per_s:,.1f}",
                f"[red]{f.errors_per_s:,.1f}[/red]" if f.errors_per_s else "0.0",
                _ms(f.p50),
                _ms(f.p99),
                f"{f.publish_dropped:,.0f}",
                f"{f.link_queued:,.0f}",
                _circuits(f.circuits),
            ]
        table.add_row(node.service, node.node_id, node.state.value, uptime, *cells)
    return table
