"""``@subscribe`` and the subscriptions a :class:`ServiceSpec` reads from a service class."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

import wiremesh
from wiremesh import ConfigError, Context, InvalidPayload, Service, rpc, subscribe
from wiremesh.service import ServiceSpec


class Price(pydantic.BaseModel):
    sku: str
    amount: float


class Prices(Service):
    name = "prices"

    @subscribe("prices.*")
    async def on_price(self, ctx: Context, price: Price) -> None: ...

    @subscribe("stock.eu.#", "stock.us.*")
    async def on_stock(self, ctx: Context, level: int) -> None: ...

    @rpc
    async def quote(self, ctx: Context, sku: str) -> float:
        return 1.0

    @subscribe("audit.#")
    @subscribe("prices.*")
    async def audit(self, ctx: Context, entry: Any) -> None: ...


def test_public_api_exports_subscribe() -> None:
    assert "subscribe" in wiremesh.__all__
    assert wiremesh.subscribe is subscribe


def test_spec_lists_each_pattern_with_its_handler_in_definition_order() -> None:
    spec = ServiceSpec.of(Prices)
    assert [(pattern, sub.attribute) for pattern, sub in spec.subscriptions] == [
        ("prices.*", "on_price"),
        ("stock.eu.#", "on_stock"),
        ("stock.us.*", "on_stock"),
        # stacked decorators add up, outermost last; a pattern shared with another
        # handler is listed for both
        ("prices.*", "audit"),
        ("audit.#", "audit"),
    ]
    assert spec.patterns == ("audit.#", "prices.*", "stock.eu.#", "stock.us.*")
    # @rpc methods are untouched by @subscribe ones, and the reverse
    assert set(spec.methods) == {"quote"}


def test_handler_payload_is_typed_and_validated_like_an_rpc_payload() -> None:
    spec = ServiceSpec.of(Prices)
    on_price = next(sub for _, sub in spec.subscriptions if sub.attribute == "on_price")
    (price,), _ = on_price.shapes.arguments({"sku": "A-1", "amount": 2})
    assert price == Price(sku="A-1", amount=2.0)
    with pytest.raises(InvalidPayload, match="amount"):
        on_price.shapes.arguments({"sku": "A-1", "amount": "lots"})


def test_a_service_without_subscriptions_has_none() -> None:
    class Plain(Service):
        name = "plain"

        @rpc
        async def ping(self, ctx: Context) -> str:
            return "pong"

    spec = ServiceSpec.of(Plain)
    assert spec.subscriptions == ()
    assert spec.patterns == ()


def test_subclass_inherits_subscriptions_and_an_undecorated_override_drops_one() -> None:
    class More(Prices):
        name = "more"

        async def on_stock(self, ctx: Context, level: int) -> None:  # no longer subscribed
            ...

        @subscribe("news.#")
        async def on_news(self, ctx: Context, text: str) -> None: ...

    attributes = [sub.attribute for _, sub in ServiceSpec.of(More).subscriptions]
    assert attributes == ["on_price", "audit", "audit", "on_news"]


@pytest.mark.parametrize("pattern", ["", "prices..eu", "prices.e u", "prices.*x", "a.#b"])
def test_a_bad_pattern_fails_when_the_class_is_defined(pattern: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):

        class Bad(Service):
            name = "bad"

            @subscribe("ok.*", pattern)
            async def on_it(self, ctx: Context, value: Any) -> None: ...


def test_subscribe_without_a_pattern_says_how_to_write_it() -> None:
    async def handler(self: Any, ctx: Context, value: Any) -> None: ...

    with pytest.raises(ConfigError, match=r'@subscribe\("topic.pattern"\)'):
        subscribe(handler)  # type: ignore[arg-type]  # the mistake of a bare @subscribe


def test_a_handler_must_be_async() -> None:
    with pytest.raises(TypeError, match="async def"):

        class Sync(Service):
            name = "sync"

            @subscribe("a.b")  # type: ignore[type-var]
            def on_it(self, ctx: Context, value: Any) -> None: ...


def test_a_handler_whose_annotations_do_not_resolve_is_a_config_error() -> None:
    class Unresolved(Service):
        name = "unresolved"

        @subscribe("a.b")
        async def on_it(self, ctx: Context, value: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ConfigError, match="on_it"):
        ServiceSpec.of(Unresolved)
