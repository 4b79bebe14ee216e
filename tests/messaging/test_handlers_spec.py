"""Declaring message handlers: what ``@on_event`` and ``@command`` accept and refuse."""

from __future__ import annotations

import pytest

from wiremesh import ConfigError, Context, Service, command, on_event
from wiremesh.service import ServiceSpec


class Billing(Service):
    name = "billing"

    @on_event("orders.created", "orders.*.vip", delivery="broadcast", concurrency=2)
    async def order(self, ctx: Context, order_id: int) -> None: ...

    @command
    async def charge(self, ctx: Context, amount: int) -> None: ...

    @command(name="refund", concurrency=1)
    async def give_back(self, ctx: Context, amount: int, reason: str = "") -> None: ...


def test_the_spec_lists_every_handler() -> None:
    handlers = {h.attribute: h for h in ServiceSpec.of(Billing).handlers}
    assert set(handlers) == {"order", "charge", "give_back"}
    order = handlers["order"]
    assert (order.kind, order.patterns, order.delivery, order.concurrency) == (
        "event",
        ("orders.created", "orders.*.vip"),
        "broadcast",
        2,
    )
    assert handlers["charge"].patterns == ("billing.charge",)
    assert handlers["charge"].delivery == "pool"
    assert handlers["give_back"].patterns == ("billing.refund",)
    assert handlers["give_back"].concurrency == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: on_event("orders..x"), "bad topic pattern"),
        (lambda: on_event("a", delivery="everyone"), "delivery must be one of"),  # type: ignore[arg-type]
        (lambda: on_event("a", concurrency=0), "concurrency must be a positive integer"),
        (lambda: command(name="not-a-name"), "bad command name"),
    ],
)
def test_bad_declarations_are_config_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_a_handler_must_be_async() -> None:
    with pytest.raises(TypeError, match="must be 'async def'"):

        class Sync(Service):
            name = "sync"

            @on_event("a")  # type: ignore[type-var]
            def handle(self, ctx: Context, n: int) -> None: ...


def test_two_methods_for_one_command_are_refused() -> None:
    class Twice(Service):
        name = "twice"

        @command(name="go")
        async def one(self, ctx: Context) -> None: ...

        @command
        async def go(self, ctx: Context) -> None: ...

    with pytest.raises(ConfigError, match="both handle the command 'go'"):
        ServiceSpec.of(Twice)
