"""The service of the many-hosts timer scenario: ``Ticker`` notes each tick it runs.

Each run appends ``<tick> <node id> <host>`` to the file ``WM_TICK_LOG`` names (every host
shares the machine's disk), one short line per write, so lines never mix.
"""

from __future__ import annotations

import os

from wiremesh import Context, Service, timer


class Ticker(Service):
    name = "ticker"

    @timer(every=1)
    async def tick(self, ctx: Context) -> None:
        assert ctx.tick is not None
        line = f"{ctx.tick.isoformat()} {self.node_id} {os.environ.get('WM_TEST_HOST', '')}\n"
        # one write(2) with O_APPEND per line (a few bytes: no blocking worth a thread)
        fd = os.open(os.environ["WM_TICK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
