"""What ``wiremesh run`` shows: a live table on a terminal, plain lines otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from wiremesh.runtime.supervisor import ProcessState, Supervisor

__all__ = ["format_uptime", "live_table", "nodes_table"]

_STYLE = {
    ProcessState.SERVING: "green",
    ProcessState.STARTING: "yellow",
    ProcessState.RESTARTING: "yellow",
    ProcessState.UNRESPONSIVE: "red",
    ProcessState.FAILED: "bold red",
    ProcessState.STOPPING: "cyan",
    ProcessState.STOPPED: "dim",
}


def format_uptime(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def nodes_table(supervisor: Supervisor) -> Table:
    title = f"wiremesh · {supervisor.config.mesh.name}"
    if supervisor.registry_shown:
        title += f" · registry {supervisor.registry_shown}"
    # a reload's progress (``reloading pricing (1/2)``) under the table while it runs
    table = Table(title=title, title_justify="left", caption=supervisor.reloading, expand=False)
    for column in ("service", "node", "address", "pid", "state", "uptime", "restarts"):
        # a narrow terminal folds a cell onto two lines, never cuts a node id or address
        table.add_column(column, overflow="fold")
    for slot in supervisor.slots:
        style = _STYLE.get(slot.state, "")
        table.add_row(
            slot.service,
            slot.node_id,
            slot.address or "-",
            str(slot.pid or "-"),
            Text(slot.state.value, style=style),
            format_uptime(slot.uptime),
            str(slot.restarts),
        )
    return table


@contextlib.asynccontextmanager
async def live_table(supervisor: Supervisor, console: Console) -> AsyncIterator[None]:
    """Show the supervisor's nodes as a live table while the block runs; log lines print
    above it."""
    with Live(nodes_table(supervisor), console=console, refresh_per_second=2) as live:
        # Text, not markup=False: the live table is re-rendered with the options of each print
        supervisor.echo = lambda line: live.console.print(Text(line))

        async def refresh() -> None:
            while True:
                live.update(nodes_table(supervisor))
                await asyncio.sleep(0.5)

        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            live.update(nodes_table(supervisor))
