"""The flows service: owns flow definitions and runs them by calling ``connectors``.

A flow is a named list of connector names; running it passes the input through each
connector in turn. Every call to ``connectors`` inherits what remains of the run's
deadline, and ``connectors.invoke`` is idempotent, so a connector node that dies mid-run
costs a retry on another node, not the run.

Browsers reach it too: the demo page (``web/``) opens a WebSocket to a ``flows`` node
through the gateway and sends JSON requests in the client's request/reply envelope:

- ``{"op": "hello"}`` answers ``{"node", "flows": [{"name", "steps"}]}``;
- ``{"op": "run", "flow", "input", "pace"}`` answers ``{"run", "flow", "steps", "node"}`` at
  once, then pushes the run's progress to the session as ordinary frames, one per step as
  it completes (``{"event": "step", "run", "index", "connector", "node", "ms", "output"}``),
  then ``{"event": "done", "run", "output"}`` or ``{"event": "failed", "run", "error"}``.
  ``pace`` (seconds, at most 2) waits before each step, so that a person sees it happen.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from wiremesh import (
    Context,
    Service,
    ServiceError,
    ServiceProxy,
    Session,
    WiremeshError,
    on_socket,
    rpc,
)
from wiremesh.core import envelope


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


class SocketRequest(BaseModel):
    """A request of the demo page, in the request/reply envelope."""

    op: Literal["hello", "run"]
    flow: str = ""
    input: dict[str, Any] = {}
    pace: float = Field(default=0.0, ge=0, le=2)


#: runs pushing progress at once on one node; one more is refused
MAX_LIVE_RUNS = 64


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
        self.live_runs: set[asyncio.Task[None]] = set()

    async def on_stop(self) -> None:
        for task in list(self.live_runs):
            task.cancel()
        await asyncio.gather(*self.live_runs, return_exceptions=True)
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
        return self._flows()

    @rpc(idempotent=True)
    async def define(self, ctx: Context, flow: FlowDef) -> FlowDef:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO flows VALUES (?, ?)", (flow.name, flow.model_dump_json())
            )
        return flow

    @rpc
    async def run(self, ctx: Context, request: RunRequest) -> RunResult:
        flow = self._flow(request.flow)
        output = request.input
        steps = []
        async for step, output in self._steps(flow, request.input):  # noqa: B007
            steps.append(step)
        return RunResult(flow=flow.name, output=output, steps=steps)

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        request = envelope.parse_request(frame)
        if request is None:
            return  # the page only sends requests
        try:
            command = SocketRequest.model_validate_json(request.payload)
        except ValidationError as exc:
            await session.reply_error(request.id, f"bad request: {exc.errors()[0]['msg']}")
            return
        if command.op == "hello":
            flows = [flow.model_dump() for flow in self._flows()]
            await session.reply(request.id, _json({"node": self.node_id, "flows": flows}))
            return
        try:
            flow = self._flow(command.flow)
        except FlowNotFound as exc:
            await session.reply_error(request.id, exc.message)
            return
        if len(self.live_runs) >= MAX_LIVE_RUNS:
            await session.reply_error(request.id, "too many runs in progress: try again soon")
            return
        run = secrets.token_hex(4)
        started = {"run": run, "flow": flow.name, "steps": flow.steps, "node": self.node_id}
        await session.reply(request.id, _json(started))
        task = asyncio.create_task(self._push_run(session, run, flow, command))
        self.live_runs.add(task)
        task.add_done_callback(self.live_runs.discard)

    async def _push_run(
        self, session: Session, run: str, flow: FlowDef, command: SocketRequest
    ) -> None:
        """Run ``flow`` and push each completed step to ``session`` while it lasts."""
        output = command.input
        try:
            steps = self._steps(flow, command.input, pace=command.pace)
            index = 0
            async for step, output in steps:
                if session.closed:
                    return
                event = {"event": "step", "run": run, "index": index, **step.model_dump()}
                await session.send(_json(event | {"output": output}))
                index += 1
        except WiremeshError as exc:  # a connector failed, or no connectors node answered
            await session.send(_json({"event": "failed", "run": run, "error": str(exc)}))
            return
        await session.send(_json({"event": "done", "run": run, "output": output}))

    def _flows(self) -> list[FlowDef]:
        rows = self.db.execute("SELECT body FROM flows ORDER BY name").fetchall()
        return [FlowDef.model_validate_json(body) for (body,) in rows]

    def _flow(self, name: str) -> FlowDef:
        row = self.db.execute("SELECT body FROM flows WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise FlowNotFound(f"no flow named {name!r}")
        return FlowDef.model_validate_json(row[0])

    async def _steps(
        self, flow: FlowDef, data: dict[str, Any], *, pace: float = 0.0
    ) -> AsyncIterator[tuple[StepResult, dict[str, Any]]]:
        """Each step of ``flow`` as it completes, with the data it produced."""
        for connector in flow.steps:
            if pace:
                await asyncio.sleep(pace)
            started = time.perf_counter()
            result = await self.connectors.invoke({"connector": connector, "input": data})
            data = result["output"]
            elapsed = (time.perf_counter() - started) * 1000
            yield StepResult(connector=connector, node=result["node"], ms=round(elapsed, 3)), data


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
