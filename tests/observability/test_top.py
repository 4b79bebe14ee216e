"""``wiremesh top``: the live view reads the nodes from the registry and their figures
from each node's /metrics, against a real mesh under a known load."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

from wiremesh import Context, Service, rpc
from wiremesh.testing import TestMesh

WIREMESH = str(Path(sys.executable).with_name("wiremesh"))


class Shop(Service):
    name = "shop"

    @rpc
    async def buy(self, ctx: Context, quantity: int) -> int:
        return quantity


class Idle(Service):
    name = "idle"

    @rpc
    async def ping(self, ctx: Context) -> None:
        return None


async def test_top_once_shows_each_node_with_its_call_rate() -> None:
    async with TestMesh(Shop, Idle) as mesh:

        async def load() -> None:
            while True:
                await mesh.call("shop.buy", 1)
                await asyncio.sleep(0.002)

        loader = asyncio.create_task(load())
        try:
            process = await asyncio.create_subprocess_exec(
                WIREMESH,
                "top",
                "--once",
                "--interval",
                "1",
                "--mesh",
                mesh.registry.address,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 30)
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        shop = mesh.client.nodes("shop")[0].node_id
        idle = mesh.client.nodes("idle")[0].node_id
    assert process.returncode == 0, err.decode()
    text = out.decode()
    for column in ("calls/s", "errors/s", "p50 ms", "p99 ms"):
        assert column in text
    assert "registry reachable" in text  # the title says whether the registry answers
    shop_row = next(line for line in text.splitlines() if shop in line)
    idle_row = next(line for line in text.splitlines() if idle in line)
    numbers = [float(n.replace(",", "")) for n in re.findall(r"\b\d[\d,]*\.\d+\b", shop_row)]
    assert numbers and numbers[0] > 0, shop_row  # calls/s, the first figure
    idle_numbers = re.findall(r"\b\d[\d,]*\.\d+\b", idle_row)
    assert idle_numbers[0] == "0.0", idle_row


def test_top_explains_itself() -> None:
    from typer.testing import CliRunner

    from wiremesh.cli import app

    result = CliRunner().invoke(app, ["top", "--help"])
    assert result.exit_code == 0
    assert "calls per second" in result.output
    assert "--once" in result.output
