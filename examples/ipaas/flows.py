"""The flows service: owns flow definitions and runs them by calling ``connectors``.

A flow is a named list of connector names; running it passes the input through each
connector in turn. Every call to ``connectors`` inherits what remains of the run's
deadline, and ``connectors.invoke`` is idempotent, so a connector node that dies mid-run
costs a retry on another node, not the run.

Two ways to run a flow:

- ``flows.run`` runs it inside the call and answers with the result (``wiremesh call``);
- ``flows.start`` (the demo page, over the gateway's ``POST /rpc/flows/start``) answers at
  once with the run's id, and the run goes on in the background: each step, then the end,
  is published to the run's channel ``flow-run:<id>``, which the page subscribes to.

**A run outlives the node that runs it.** ``start`` records the run (in this service's
SQLite file) and sends the durable command ``flows.advance`` with its id through the
mesh's broker; one ``flows`` node executes the run in that command's handler (the broker
gives a command to one consumer at a time). If the node dies mid-run (``kill -9``), the
broker hands the unacknowledged command again to a live ``flows`` node, the one the
supervisor starts in its place at the latest. That handler
does not start the run again: a step counts as done once it is *published*, so it first
reads the run's channel history (the channel keeps a whole run: ``history_size``) and
carries on after the last step published, with that step's output. A step is thus never
lost (the page recovers what it missed while it reconnected) nor doubled (the step the
dead node published is not run again; one it had not published is run again, and
``connectors.invoke`` is idempotent). The record follows the channel, and is what the
page reloads (``flows.run_state``) when recovery is impossible (the channel engine
restarted, or the history expired). A run is one command, so it must end within the
broker's ``handler_timeout`` (60 s by default): at most ``MAX_STEPS`` steps of at most 2 s
``pace`` each.

Channel publications (JSON), in order: ``{"event": "started", "run", "flow", "steps",
"node"}``; one ``{"event": "step", "run", "index", "connector", "node", "ms", "output"}``
per step; then ``{"event": "done", "run", "output"}`` or ``{"event": "failed", "run",
"error"}``. A run's channel is open only to the principal (token subject) that started it.

The page's WebSocket to a ``flows`` node also answers ``{"op": "hello"}`` in the client's
request/reply envelope with ``{"node", "flows": [{"name", "steps"}]}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from wiremesh import (
    Context,
    Service,
    ServiceError,
    ServiceProxy,
    Session,
    Status,
    WiremeshError,
    command,
    on_socket,
    rpc,
)
from wiremesh.channels import Channel, Position, SubscribeRequest
from wiremesh.core import envelope

log = logging.getLogger("ipaas.flows")

#: the most steps a flow has: a run (one command) must end within the handler's timeout
MAX_STEPS = 20
#: the most seconds a run waits before each step, so that a person sees it happen
MAX_PACE = 2.0
#: runs one node executes at once; more wait in the broker for any node
MAX_LIVE_RUNS = 64


class FlowDef(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    steps: list[str] = Field(min_length=1, max_length=MAX_STEPS)


class RunRequest(BaseModel):
    flow: str
    input: dict[str, Any] = {}


class StartRequest(RunRequest):
    pace: float = Field(default=0.0, ge=0, le=MAX_PACE)


class StepResult(BaseModel):
    connector: str
    node: str
    ms: float


class RunResult(BaseModel):
    flow: str
    output: dict[str, Any]
    steps: list[StepResult]


class StepDone(StepResult):
    index: int
    output: dict[str, Any]


class Started(BaseModel):
    """What ``start`` answers: the run, and the position of its ``started`` publication
    (a subscription with it as ``since`` gets every step)."""

    run: str
    flow: str
    steps: list[str]
    node: str
    offset: int
    epoch: str


class RunState(BaseModel):
    """A run as this service records it (``run_state``)."""

    run: str
    flow: str
    steps: list[str]
    input: dict[str, Any]
    pace: float
    principal: str
    node: str
    state: Literal["running", "done", "failed"] = "running"
    done: list[StepDone] = []
    output: dict[str, Any] | None = None
    error: str = ""
    #: where the run's ``started`` publication is in its channel
    offset: int = 0
    epoch: str = ""

    @property
    def channel(self) -> str:
        return channel_of(self.run)


class FlowNotFound(ServiceError):
    """No flow of that name is defined."""


class RunNotFound(ServiceError):
    """No run of that id (that the caller may see)."""

    status = Status.NOT_FOUND


class SocketRequest(BaseModel):
    """A request of the demo page, in the request/reply envelope."""

    op: Literal["hello"]


SEED = [
    FlowDef(name="welcome", steps=["greeting", "shout"]),
    FlowDef(name="invoice", steps=["double", "add-tax"]),
    FlowDef(name="onboarding", steps=["greeting", "shout", "double", "add-tax"]),
]


def channel_of(run: str) -> str:
    return f"flow-run:{run}"


class Flows(Service):
    name = "flows"
    connectors = ServiceProxy("connectors")
    # a run's channel keeps the whole run (started, MAX_STEPS steps, the end), for the
    # page's recovery and for the node that resumes a run; 600 s outlasts any run
    owns_channels = {"flow-run:*": Channel(history_size=500, history_ttl=600)}

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
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
            )
            for seed in SEED:
                self.db.execute(
                    "INSERT OR IGNORE INTO flows VALUES (?, ?)", (seed.name, seed.model_dump_json())
                )

    async def on_subscribe(self, request: SubscribeRequest) -> bool:
        # a run's progress is the business of whoever started it (a real app may also let
        # in the members of the same tenant, from request.claims)
        record = self._find_run(request.channel.removeprefix("flow-run:"))
        return (
            record is not None and record.principal != "" and record.principal == request.principal
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
        for connector in flow.steps:
            step, output = await self._step(connector, output)
            steps.append(step)
        return RunResult(flow=flow.name, output=output, steps=steps)

    @rpc
    async def start(self, ctx: Context, request: StartRequest) -> Started:
        """Start a run in the background; its steps are published to ``flow-run:<id>``,
        open to the caller's principal (the gateway's ``principal`` metadata)."""
        flow = self._flow(request.flow)
        principal = ctx.metadata.get("principal", "")
        record = RunState(
            run=secrets.token_hex(4),
            flow=flow.name,
            steps=flow.steps,
            input=request.input,
            pace=request.pace,
            principal=principal if isinstance(principal, str) else "",
            node=self.node_id,
        )
        started = {"event": "started", "run": record.run, "flow": flow.name, "steps": flow.steps}
        position = await self.channels.publish(record.channel, started | {"node": self.node_id})
        record.offset, record.epoch = position.offset, position.epoch
        self._save(record)
        try:
            await ctx.send("flows.advance", record.run)
        except WiremeshError as exc:  # the broker did not take it: the run never starts
            record.state, record.error = "failed", f"could not start: {exc}"
            self._save(record)
            raise
        return Started(
            run=record.run,
            flow=flow.name,
            steps=flow.steps,
            node=self.node_id,
            offset=position.offset,
            epoch=position.epoch,
        )

    @rpc(idempotent=True)
    async def run_state(self, ctx: Context, run: str) -> RunState:
        """A run as recorded: what a page reloads when its channel cannot tell what it
        missed. Through the gateway, only the principal that started it sees it."""
        record = self._find_run(run)
        principal = ctx.metadata.get("principal")
        if record is None or (principal is not None and principal != record.principal):
            raise RunNotFound(f"no run {run!r}")
        return record

    @command(concurrency=MAX_LIVE_RUNS)
    async def advance(self, ctx: Context, run: str) -> None:
        """Execute run ``run`` to its end, from where its channel says it got to."""
        record = self._find_run(run)
        if record is None:
            log.warning("flows.advance: no run %r: nothing to do", run)
            return
        await self._catch_up(record)
        if record.state != "running":
            return  # it had ended: this is the command again after its node died
        if record.done:
            log.info("run %s resumes after step %d of %d", run, len(record.done), len(record.steps))
        data = record.done[-1].output if record.done else record.input
        for index in range(len(record.done), len(record.steps)):
            try:
                step, data = await self._step(record.steps[index], data, pace=record.pace)
            except WiremeshError as exc:  # a connector failed, or no connectors node answered
                await self.channels.publish(
                    record.channel, {"event": "failed", "run": run, "error": str(exc)}
                )
                record.state, record.error = "failed", str(exc)
                self._save(record)
                return
            done = StepDone(index=index, output=data, **step.model_dump())
            await self.channels.publish(
                record.channel, {"event": "step", "run": run, **done.model_dump()}
            )
            record.done.append(done)
            self._save(record)
        await self.channels.publish(record.channel, {"event": "done", "run": run, "output": data})
        record.state, record.output = "done", data
        self._save(record)

    async def _catch_up(self, record: RunState) -> None:
        """Bring ``record`` up to what its channel holds after the ``started`` publication:
        the steps (and the end) a node published before it died."""
        since = Position(record.offset, record.epoch)
        found = await self.channels.history(record.channel, since)
        if not found.recovered:
            # the channel forgot the run (its engine restarted): the record is all there is
            log.warning("run %s: its channel cannot tell (%s)", record.run, found.reason)
            return
        changed = False
        for publication in found.publications:
            event = json.loads(publication.data)
            if event.get("event") == "step" and event.get("index") == len(record.done):
                record.done.append(StepDone.model_validate(event))
            elif event.get("event") == "done":
                record.state, record.output = "done", event.get("output")
            elif event.get("event") == "failed":
                record.state, record.error = "failed", str(event.get("error", ""))
            else:
                continue
            changed = True
        if changed:
            self._save(record)

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        request = envelope.parse_request(frame)
        if request is None:
            return  # the page only sends requests
        try:
            SocketRequest.model_validate_json(request.payload)
        except ValidationError as exc:
            await session.reply_error(request.id, f"bad request: {exc.errors()[0]['msg']}")
            return
        flows = [flow.model_dump() for flow in self._flows()]
        await session.reply(request.id, _json({"node": self.node_id, "flows": flows}))

    def _flows(self) -> list[FlowDef]:
        rows = self.db.execute("SELECT body FROM flows ORDER BY name").fetchall()
        return [FlowDef.model_validate_json(body) for (body,) in rows]

    def _flow(self, name: str) -> FlowDef:
        row = self.db.execute("SELECT body FROM flows WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise FlowNotFound(f"no flow named {name!r}")
        return FlowDef.model_validate_json(row[0])

    def _find_run(self, run: str) -> RunState | None:
        row = self.db.execute("SELECT body FROM runs WHERE id = ?", (run,)).fetchone()
        return None if row is None else RunState.model_validate_json(row[0])

    def _save(self, record: RunState) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?)", (record.run, record.model_dump_json())
            )

    async def _step(
        self, connector: str, data: dict[str, Any], *, pace: float = 0.0
    ) -> tuple[StepResult, dict[str, Any]]:
        """One step: ``data`` through ``connector``, after ``pace`` seconds; the data it
        produced."""
        if pace:
            await asyncio.sleep(pace)
        started = time.perf_counter()
        result = await self.connectors.invoke({"connector": connector, "input": data})
        elapsed = (time.perf_counter() - started) * 1000
        step = StepResult(connector=connector, node=result["node"], ms=round(elapsed, 3))
        return step, result["output"]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
