"""The connectors service: owns connector definitions and runs them.

A connector is one step of an integration: it takes a JSON object and returns one. This
demo ships three kinds that need no network: ``template`` (fill a text template from the
input), ``transform`` (change one field: upper, lower, reverse, strip) and ``math``
(add to or multiply a number field). Definitions live in this service's own SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any, Literal

from pydantic import BaseModel, Field

from wiremesh import Context, Service, ServiceError, rpc


class ConnectorDef(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    kind: Literal["template", "transform", "math"]
    config: dict[str, Any] = {}


class Invocation(BaseModel):
    connector: str
    input: dict[str, Any] = {}


class Invoked(BaseModel):
    output: dict[str, Any]
    node: str


class ConnectorNotFound(ServiceError):
    """No connector of that name is defined."""


class ConnectorFailed(ServiceError):
    """The connector could not process its input."""


SEED = [
    ConnectorDef(
        name="greeting", kind="template", config={"field": "text", "template": "Hello, {name}!"}
    ),
    ConnectorDef(name="shout", kind="transform", config={"field": "text", "op": "upper"}),
    ConnectorDef(name="double", kind="math", config={"field": "amount", "op": "mul", "by": 2}),
    ConnectorDef(name="add-tax", kind="math", config={"field": "amount", "op": "mul", "by": 1.2}),
]


class Connectors(Service):
    name = "connectors"

    async def on_start(self) -> None:
        self.db = sqlite3.connect(self.data_dir / "connectors.sqlite3", check_same_thread=False)
        await asyncio.to_thread(self._migrate)

    async def on_stop(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS connectors (name TEXT PRIMARY KEY, body TEXT NOT NULL)"
            )
            for seed in SEED:
                self.db.execute(
                    "INSERT OR IGNORE INTO connectors VALUES (?, ?)",
                    (seed.name, seed.model_dump_json()),
                )

    def _load(self, name: str) -> ConnectorDef:
        row = self.db.execute("SELECT body FROM connectors WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ConnectorNotFound(f"no connector named {name!r}")
        return ConnectorDef.model_validate_json(row[0])

    @rpc(idempotent=True)
    async def list(self, ctx: Context) -> list[ConnectorDef]:
        rows = self.db.execute("SELECT body FROM connectors ORDER BY name").fetchall()
        return [ConnectorDef.model_validate_json(body) for (body,) in rows]

    @rpc(idempotent=True)
    async def get(self, ctx: Context, name: str) -> ConnectorDef:
        return self._load(name)

    @rpc(idempotent=True)
    async def define(self, ctx: Context, connector: ConnectorDef) -> ConnectorDef:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO connectors VALUES (?, ?)",
                (connector.name, connector.model_dump_json()),
            )
        return connector

    @rpc(idempotent=True)
    async def invoke(self, ctx: Context, call: Invocation) -> Invoked:
        connector = self._load(call.connector)
        try:
            output = run_connector(connector, call.input)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConnectorFailed(f"{connector.name}: {type(exc).__name__}: {exc}") from None
        return Invoked(output=output, node=ctx.node_id)


def run_connector(connector: ConnectorDef, data: dict[str, Any]) -> dict[str, Any]:
    config = connector.config
    out = dict(data)
    field = config["field"]
    if connector.kind == "template":
        out[field] = str(config["template"]).format(**data)
    elif connector.kind == "transform":
        value = str(data[field])
        ops = {"upper": str.upper, "lower": str.lower, "strip": str.strip}
        out[field] = value[::-1] if config["op"] == "reverse" else ops[config["op"]](value)
    elif connector.kind == "math":
        value = float(data[field])
        by = float(config["by"])
        out[field] = round(value * by if config["op"] == "mul" else value + by, 6)
    return json.loads(json.dumps(out))
