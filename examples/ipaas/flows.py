"""The flows service: owns flow definitions and runs them by calling ``connectors``.

A flow is a named list of connector names; running it passes the input through each
connector in turn. Every call to ``connectors`` inherits what remains of the run's
deadline, and ``connectors.invoke`` is idempotent, so a connector node that dies mid-run
costs a retry on another node, not the run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from pydantic import BaseModel, Field

from wiremesh import Context, Service, ServiceError, ServiceProxy, rpc


class FlowDef(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    steps: list[str] = Field(min_length=1)


class RunRequest(BaseModel):
    flow: str
    input: dict[str, Any] = {}


class StepResult(BaseModel):
    connector: str
    node: str
    ms: float


class RunResult(BaseModel):
    flow: str
    output: dict[str, Any]
    steps: list[StepResult]


class FlowNotFound(ServiceError):
    """No flow of that name is defined."""


SEED = [
    FlowDef(name="welcome", steps=["greeting", "shout"]),
    FlowDef(name="invoice", steps=["double", "add-tax"]),
]


class Flows(Service):
    name = "flows"
    connectors = ServiceProxy("connectors")

    async def on_start(self) -> None:
        self.db = sqlite3.connect(self.data_dir / "flows.sqlite3", check_same_thread=False)
        await asyncio.to_thread(self._migrate)

    async def on_stop(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS flows (name TEXT PRIMARY KEY, body TEXT NOT NULL)"
            )
            for seed in SEED:
                self.db.execute(
                    "INSERT OR IGNORE INTO flows VALUES (?, ?)", (seed.name, seed.model_dump_json())
                )

    @rpc(idempotent=True)
    async def list(self, ctx: Context) -> list[FlowDef]:
        rows = self.db.execute("SELECT body FROM flows ORDER BY name").fetchall()
        return [FlowDef.model_validate_json(body) for (body,) in rows]

    @rpc(idempotent=True)
    async def define(self, ctx: Context, flow: FlowDef) -> FlowDef:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO flows VALUES (?, ?)", (flow.name, flow.model_dump_json())
            )
        return flow

    @rpc
    async def run(self, ctx: Context, request: RunRequest) -> RunResult:
        row = self.db.execute("SELECT body FROM flows WHERE name = ?", (request.flow,)).fetchone()
        if row is None:
            raise FlowNotFound(f"no flow named {request.flow!r}")
        flow = FlowDef.model_validate_json(row[0])
        data = request.input
        steps = []
        for connector in flow.steps:
            started = time.perf_counter()
            result = await self.connectors.invoke({"connector": connector, "input": data})
            data = result["output"]
            elapsed = (time.perf_counter() - started) * 1000
            steps.append(StepResult(connector=connector, node=result["node"], ms=round(elapsed, 3)))
        return RunResult(flow=flow.name, output=data, steps=steps)
